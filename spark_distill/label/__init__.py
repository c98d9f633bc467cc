# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Label: run the teacher once over every frame and write pseudo-label shards. Entry: `run.label`."""
