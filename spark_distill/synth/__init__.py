# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Synthetic inputs for tests and the demo: route segments (real cereal logs, real HEVC) and stand-in models."""
