# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Train: the run's options (`config`) and their fit to the data and memory (`sizing`), the streaming loader
(`loader`), the losses, the step (`step`, `capture`), the feature cache and the loop. Entry: `loop.train`."""
