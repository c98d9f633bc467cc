#!/usr/bin/env bash
# One device call (<= 10 min) for issue 28: `run` with carry [".whl"] (the Python 3.12 wheels of av, pycapnp,
# zstandard, webdataset, braceexpand, onnx2torch, openpilot-logging; benchmarks/distill.md says how to make them)
# and command `bash benchmarks/distill_gpu_call.sh`.
# bench distill, compact-xs (CAPTURE: --capture auto by default, falls back to the uncaptured step; the probe that
# kept a graph on the default stream is fixed, benchmarks/distill.md "H100, 21:48"), TRAIN training drives and 4
# held-out of 20 s, STEPS steps of 32 clips, and the pre-trained student (--save-student) -> $OUT/bench.txt, $OUT/r/,
# $OUT/student/v1. DRIVER (default none; keep-left:0.4) adds personalisation of TUNE_BASE (default teacher: the
# teacher's own model, train --student openpilot) over TUNE_STEPS DoRA steps on DRIVES drives (DRIVER_HELD held out).
# Personalisation alone: TRAIN=1 HELD=1 STEPS=1 DRIVER=keep-left:0.4. LOSS: the students' --loss-weights
# (e.g. LOSS=plan=4 for the plan's lateral, benchmarks/distill.md "H100, 2026-12-08"). POLICY_STEPS: stage 2's steps
# (--policy-steps: the policy half renewed and trained on the frozen vision; the saved student is the two-stage one).
# A SIGTERM at STOP_S seconds ends training early (it checkpoints; the bench then scores and saves what it has);
# a SIGKILL at KILL_S, and the student is then saved from the newest checkpoint.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_DISABLE_ADDR2LINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p $OUT/student
python3 -m spark_distill bench distill --student compact-xs --train-drives ${TRAIN:-48} --held-drives ${HELD:-4} \
  --seconds 20 --steps ${STEPS:-800} --evals 2 --batch-size 32 --driver ${DRIVER:-none} --driver-drives ${DRIVES:-12} \
  --driver-held ${DRIVER_HELD:-3} --tune-steps ${TUNE_STEPS:-150} --tune-base ${TUNE_BASE:-teacher} --workers 14 --workdir /tmp/dw --keep --out $OUT/r \
  --save-student $OUT/student/v1 --capture ${CAPTURE:-auto} --loss-weights "${LOSS:-}" --policy-steps ${POLICY_STEPS:-0} > $OUT/bench.txt 2>&1 &
bench=$!
( sleep ${STOP_S:-480}; kill -TERM $bench 2>/dev/null; sleep $(( ${KILL_S:-560} - ${STOP_S:-480} )); kill -KILL $bench 2>/dev/null ) &
wait $bench
echo "bench rc $?"
grep -v "^bench distill: .*elapsed" $OUT/bench.txt | tail -c 6000
cp /tmp/dw/runs/compact-xs/metrics.jsonl /tmp/dw/runs/compact-xs/config.yaml $OUT/ 2>/dev/null
python3 -c "
from pathlib import Path
from spark_distill.models.pretrained import save_pretrained
r, d = Path('/tmp/dw/runs/compact-xs'), Path('$OUT/student/v1')
if not (d / 'student.safetensors').exists() and any((r / 'checkpoints').glob('*')):
    print(save_pretrained(r, d, teacher=Path('/tmp/dw/teacher'), provenance={'note': 'bench cut off: latest checkpoint'}))
"
