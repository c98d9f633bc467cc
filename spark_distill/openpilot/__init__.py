# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot floor: what every stage needs to speak openpilot's language. Its model contract (`contract`),
the model frame and its warp (`modelframe`, `warpkernel`), the car's logged outputs (`modelv2`), the output
parser (`outputs`), modeld's history buffers for a batch of segments (`state`), teachers loaded from their
ONNX files and metadata (`teachers`, `metadata`) and ONNX graphs imported into torch (`onnx_import`).
Imports nothing of the project but `errors`."""
