#!/usr/bin/env bash
# The README's first command: set up, then run the whole pipeline on a built-in synthetic drive
# (synthesize -> ingest -> label -> train -> export -> verify -> report and pictures), on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/spark-distill demo --out "${1:-demo-out}"
