# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The data floor: the project's files on disk and how to read them. Shards and manifests (`shards`), arrays
as shard members (`arrays`), camera clip codecs (`codecs`), atomic writes (`files`), the random-access shard
index (`index`), a clip read and decoded (`clips`), a dataset's summary and checks (`dataset`), a label set
beside its frames and the train/validation split (`pairs`), and the path actually driven (`gt_path`). The
formats: docs/formats.md. Imports only the openpilot floor and below."""
