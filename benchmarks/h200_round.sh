#!/usr/bin/env bash
# One call on one H200 for benchmarks/label.md and benchmarks/train.md: the label pass against bare inference
# (batch 64 and 256) with a cProfile of its main process, the training bench, and the GPU tests.
# Logs go to $OUT (the device tool's output folder) or /tmp/h200. Parts: PARTS="label train tests" (default all).
set -uo pipefail
out=${OUT:-/tmp/h200}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
parts=" ${PARTS:-label train tests} "
if [[ $parts == *" label "* ]]; then
  python3 -m cProfile -o "$out/label.prof" benchmarks/label_gpu.py --segments "${SEGMENTS:-256}" \
    --seconds "${SEGMENT_SECONDS:-6}" --batches "${BATCHES:-64,256}" --precision fp16 --workers "${WORKERS:-14}" 2>&1 \
    | grep -v "W1201\|Warning" | tee "$out/label.txt"
  python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(30)" \
    "$out/label.prof" > "$out/label_profile.txt"
fi
if [[ $parts == *" train "* ]]; then
  python3 -m spark_distill bench train ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.txt"
fi
if [[ $parts == *" tests "* ]]; then
  python3 -m pytest -q -m gpu ${GPU_TESTS:-tests/label tests/train/test_capture.py} -p no:cacheprovider 2>&1 | tail -25 | tee "$out/gpu_tests.txt"
fi
