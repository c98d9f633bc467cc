# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""GPU label benchmark over several batch sizes on one dataset (what benchmarks/label.md records).

    python benchmarks/label_gpu.py --segments 256 --seconds 3 --batches 64,128,256 --precision fp16

Same measurement as `spark-distill bench label` (bare inference on device-resident inputs vs the
label pass end to end, same teacher/backend/precision/batch), with the dataset built once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spark_distill.bench.label import bare_inference_fps, write_bench_frames
from spark_distill.label.backends import get_backend
from spark_distill.label.run import LabelConfig, label
from spark_distill.label.teachers import load_teacher
from spark_distill.synth.teacher import gflops_per_frame, write_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval, s (GIL hand-over)")
    args = ap.parse_args()
    if args.switch_interval:
        import sys

        sys.setswitchinterval(args.switch_interval)
    work = Path(tempfile.mkdtemp(prefix="label-gpu-"))
    write_teacher(work / "teacher", size="bench")
    start = time.perf_counter()
    frames = write_bench_frames(work / "ds", segments=args.segments, seconds=args.seconds)
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | teacher: bench stand-in, "
          f"{gflops_per_frame('bench'):.2f} GFLOPs/frame | dataset: {frames} frames "
          f"({args.segments} segments, written in {time.perf_counter() - start:.0f} s)", flush=True)
    t, vm, pm = load_teacher([work / "teacher"])
    for batch in (int(b) for b in args.batches.split(",")):
        be = get_backend(args.backend, t, vm, pm, batch=batch, precision=args.precision)
        bare = bare_inference_fps(be, t, batch)
        del be
        r = label(LabelConfig(root=work / "ds", teacher=(work / "teacher",), backend=args.backend,
                              precision=args.precision, batch=batch, workers=args.workers, name=f"b{batch}"))
        print(f"{args.backend} {args.precision} batch {batch:4d}: bare {bare:9.1f} frames/s | label pass "
              f"{r.frames_per_s:9.1f} frames/s ({r.frames} frames) | ratio {r.frames_per_s / bare:.2f}", flush=True)


if __name__ == "__main__":
    main()
