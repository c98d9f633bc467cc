#!/usr/bin/env bash
# One call on one H200 for benchmarks/label.md, train.md and ingest.md: the label pass against bare inference
# (batch 64 and 256; cProfile of its main process with PROFILE=1), the training bench, the GPU tests, and the
# training loader on a lossy (av1) dataset (benchmarks/loader_lossy.sh, 14 workers, ~3 min).
# Logs go to $OUT (the device tool's output folder) or /tmp/h200. Parts: PARTS="label train tests lossy"
# (default: label train tests). The label pass and its GPU parity tests (~4.5 min, what benchmarks/label.md's
# fifth-session runs were):
#   PARTS="label tests" GPU_TESTS=tests/label/test_run.py bash benchmarks/h200_round.sh
set -uo pipefail
out=${OUT:-/tmp/h200}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
parts=" ${PARTS:-label train tests} "
if [[ $parts == *" label "* ]]; then
  prof=()
  [[ ${PROFILE:-0} == 1 ]] && prof=(-m cProfile -o "$out/label.prof")
  python3 "${prof[@]}" benchmarks/label_gpu.py --segments "${SEGMENTS:-256}" \
    --seconds "${SEGMENT_SECONDS:-6}" --batches "${BATCHES:-64,256}" --precision fp16 --workers "${WORKERS:-14}" 2>&1 \
    | grep -v "W1201\|Warning" | tee "$out/label.txt"
  if [[ ${PROFILE:-0} == 1 ]]; then
    python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(30)" \
      "$out/label.prof" > "$out/label_profile.txt"
  fi
fi
if [[ $parts == *" train "* ]]; then
  python3 -m spark_distill bench train ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.txt"
fi
if [[ $parts == *" tests "* ]]; then
  python3 -m pytest -q -m gpu ${GPU_TESTS:-tests/label tests/train/test_capture.py} -p no:cacheprovider 2>&1 | tail -25 | tee "$out/gpu_tests.txt"
fi
if [[ $parts == *" lossy "* ]]; then
  WORKERS=${LOSSY_WORKERS:-14} STEPS=${LOSSY_STEPS:-4} bash benchmarks/loader_lossy.sh 2>&1 \
    | grep -v "Warning\|^WARNING" | tail -25 | tee "$out/lossy.txt"
fi
