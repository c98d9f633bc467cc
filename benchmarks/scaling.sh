#!/usr/bin/env bash
# Labeling and DDP training on 1 and N GPUs of one host (benchmarks/scaling.md).
#   bash benchmarks/scaling.sh N [SEGMENTS] [SECONDS]
# Dataset: SEGMENTS synthetic segments of textured frames (bench.label.write_bench_frames), the
# EfficientNet-B2-shaped stand-in teacher (fp16, torch backend), batch 128 segments per rank.
# Training: the compact student, DoRA r16, the same global batch (64 clips) on 1 and N GPUs.
set -euo pipefail
N=${1:-2}; SEGMENTS=${2:-192}; SECONDS_PER=${3:-5}
WORK=${WORK:-/tmp/scaling}
rm -rf "$WORK" && mkdir -p "$WORK"
python3 - "$WORK" "$SEGMENTS" "$SECONDS_PER" <<'PY'
import sys
from pathlib import Path
from spark_distill.bench.label import write_bench_frames
from spark_distill.synth.teacher import write_teacher
work = Path(sys.argv[1])
print("frames:", write_bench_frames(work / "ds", segments=int(sys.argv[2]), seconds=float(sys.argv[3])))
write_teacher(work / "teacher", size="bench")
PY
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
L="label $WORK/ds --teacher $WORK/teacher --batch 128 --workers 12 --precision fp16 --backend torch"
python3 -m spark_distill $L --name one 2>&1 | grep -E "frames/s|frames labeled"
torchrun --nproc-per-node "$N" -m spark_distill $L --name many 2>&1 | grep -E "frames/s|frames labeled"
same=0; diff=0
for f in "$WORK"/ds/labels/one/shard-*.tar; do
  if cmp -s "$f" "$WORK/ds/labels/many/$(basename "$f")"; then same=$((same+1)); else diff=$((diff+1)); fi
done
echo "label shards identical 1 vs $N GPUs: $same, different: $diff"
T="train $WORK/ds --labels one --student compact --max-steps 40 --workers 6 --val-fraction 0 --no-mask-warmup --runs-dir $WORK/runs"
python3 -m spark_distill $T --batch-size 64 --run-name g1 2>&1 | grep -E "clips/s|│ steps "
torchrun --nproc-per-node "$N" -m spark_distill $T --batch-size $((64 / N)) --run-name "g$N" 2>&1 | grep -E "clips/s|│ steps "
