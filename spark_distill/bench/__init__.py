# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Benchmarks behind `spark-distill bench …`: each prints ratios against a baseline measured in the same run."""
