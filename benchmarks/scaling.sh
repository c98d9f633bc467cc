#!/usr/bin/env bash
# Labeling and DDP training on 1..N GPUs of one host (benchmarks/scaling.md).
#   bash benchmarks/scaling.sh "1 2 4" [SEGMENTS] [SECONDS]
# Dataset: SEGMENTS synthetic segments of textured frames (bench.label.write_bench_frames), the
# EfficientNet-B2-shaped stand-in teacher (fp16, torch backend), batch 128 segments per rank.
# Training: the compact student, DoRA r16, the same global batch (64 clips) on every GPU count.
set -euo pipefail
COUNTS=${1:-"1 2"}; SEGMENTS=${2:-192}; SECONDS_PER=${3:-5}
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
nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c
launch() {  # launch N ARGS...: one process, or torchrun with N
  local n=$1; shift
  if [ "$n" = 1 ]; then python3 -m spark_distill "$@"; else torchrun --nproc-per-node "$n" -m spark_distill "$@"; fi
}
for n in $COUNTS; do
  echo "== label, $n GPU(s)"
  launch "$n" label "$WORK/ds" --teacher "$WORK/teacher" --batch 128 --workers 12 --precision fp16 --backend torch \
    --name "g$n" 2>&1 | grep -E "frames/s" || true
  if [ "$n" != 1 ]; then
    same=0; diff=0
    for f in "$WORK"/ds/labels/g1/shard-*.tar; do
      if cmp -s "$f" "$WORK/ds/labels/g$n/$(basename "$f")"; then same=$((same+1)); else diff=$((diff+1)); fi
    done
    echo "label shards identical to 1 GPU: $same, different: $diff"
  fi
done
for n in $COUNTS; do
  echo "== train, $n GPU(s), $((64 / n)) clips per rank"
  launch "$n" train "$WORK/ds" --labels g1 --student compact --max-steps 40 --workers 6 --val-fraction 0 \
    --no-mask-warmup --runs-dir "$WORK/runs" --batch-size $((64 / n)) --run-name "t$n" 2>&1 | grep -E "clips/s" || true
done
