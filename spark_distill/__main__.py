# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`python -m spark_distill` runs the CLI."""

from spark_distill.cli import app

app(prog_name="spark-distill")
