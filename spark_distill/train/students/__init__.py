# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Students: models that map (img, big_img, desire, traffic_convention, state) to the teacher's output
layouts plus the next state. `compact` is built in; the openpilot (ONNX-imported) student comes next."""
