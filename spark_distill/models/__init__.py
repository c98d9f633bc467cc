# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The models floor: students that map (img, big_img, desire, traffic_convention, state) to the teacher's output
layouts plus the next state (`compact`, built in; `openpilot`, the ONNX-imported model), their adapters (`dora`,
`lora`), and a run's weights on disk (`checkpoint`) loaded back as a merged student (`restore`). train writes
them; evaluate and export read them."""
