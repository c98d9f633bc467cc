#!/usr/bin/env bash
# The README's first command: set up, then run the pipeline on a built-in synthetic route.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-demo-out}
rm -rf "$OUT"
.venv/bin/spark-distill synth-route "$OUT/route" --segments 2 --seconds 5
.venv/bin/spark-distill ingest "$OUT/route" --out "$OUT/dataset"
.venv/bin/spark-distill synth-teacher "$OUT/teacher" --size tiny
.venv/bin/spark-distill label "$OUT/dataset" --teacher "$OUT/teacher" --batch 2
.venv/bin/spark-distill inspect "$OUT/dataset" --verify --png "$OUT/contact-sheet.png"
echo "done: dataset and label set in $OUT/dataset, contact sheet in $OUT/contact-sheet.png"
