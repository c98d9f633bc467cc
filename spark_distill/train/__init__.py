# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Train: DoRA/LoRA adapters, students, losses, the streaming loader and the training loop."""
