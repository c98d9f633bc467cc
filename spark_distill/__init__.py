# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""spark-distill: distil and fine-tune openpilot driving models from your own routes."""

__version__ = "0.1.0"
