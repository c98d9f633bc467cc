# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Ingest: openpilot route segments (rlog + HEVC) into WebDataset frame shards. Entry: `run.ingest`."""
