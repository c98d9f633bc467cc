#!/usr/bin/env bash
# One device call (<= 10 min) for issue 28, ready to run: `run` with carry [".whl"] (the Python 3.12 wheels of av,
# pycapnp, zstandard, webdataset, braceexpand, onnx2torch, openpilot-logging; benchmarks/distill.md says how to
# make them) and command `bash benchmarks/distill_gpu_call.sh`.
# - In the background: whether the training step is captured as a CUDA graph now (train --capture on raises with
#   the whole traceback where it is not; -W always keeps the run_backward warning the H100 run of 18:04 printed
#   first), with and without torch.compile -> $OUT/diag.txt.
# - Meanwhile: bench distill, compact-xs, uncaptured (--capture off: figures whatever the capture does), 64 training
#   drives and 6 held-out of 20 s, 1500 steps of 32 clips, the keep-left:0.4 driver, and the pre-trained student
#   (--save-student) -> $OUT/bench.txt, $OUT/r/, $OUT/student/v1 (saved from the newest checkpoint if the time
#   limit cuts the bench off). TRAIN, STEPS, BENCH_S override the sizes.
# device call: diagnostic of the training-step capture (background) + bench distill (--capture off)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_SHOW_CPP_STACKTRACES=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p $OUT/student
(
  python3 -c "from pathlib import Path; from spark_distill.bench.distill import drive_configs; from spark_distill.synth.frames import write_dataset; write_dataset(Path('/tmp/ds'), drive_configs(4, 8, base=40000), workers=2)"
  python3 -m spark_distill label /tmp/ds --teacher spark_distill/synth/fitted/v1 --name teacher --compile off
  for c in auto off; do
    echo "=== capture on, compile $c"
    python3 -W always -m spark_distill train /tmp/ds --labels teacher --student compact-xs --adapter none --max-steps 4 --batch-size 8 --capture on --compile $c --runs-dir /tmp/r-$c
    echo "=== rc $?"
  done
) > $OUT/diag.txt 2>&1 &
timeout ${BENCH_S:-520} python3 -m spark_distill bench distill --student compact-xs --train-drives ${TRAIN:-64} --held-drives 6 --seconds 20 --steps ${STEPS:-1500} --evals 2 --batch-size 32 --driver keep-left:0.4 --driver-drives 12 --driver-held 3 --tune-steps 150 --workers 14 --workdir /tmp/dw --keep --out $OUT/r --save-student $OUT/student/v1 --capture off > $OUT/bench.txt 2>&1
echo "bench rc $?"
wait
tail -c 3000 $OUT/diag.txt
tail -c 5000 $OUT/bench.txt
cp /tmp/dw/runs/compact-xs/metrics.jsonl /tmp/dw/runs/compact-xs/config.yaml $OUT/ 2>/dev/null
python3 -c "
from pathlib import Path
from spark_distill.models.pretrained import save_pretrained
r, d = Path('/tmp/dw/runs/compact-xs'), Path('$OUT/student/v1')
if not (d / 'student.safetensors').exists() and any((r / 'checkpoints').glob('*')):
    print(save_pretrained(r, d, teacher=Path('/tmp/dw/teacher'), provenance={'note': 'bench cut off: latest checkpoint'}))
"
