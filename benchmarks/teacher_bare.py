# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Bare inference of the bench stand-in teacher through the torch backend, eager (CUDA graphs) against compiled
(inductor), each with its vision outputs against ONNX Runtime's fp32 on the CPU (the parity test's measure:
largest difference over the largest output). Quicker than `benchmarks/label_gpu.py` when only the teacher's
kernels change (it measured spark_distill/depthwise.py's form on the teacher: slower there, so not used).

    python benchmarks/teacher_bare.py --batches 64,256 --precision fp16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from spark_distill.bench.label import bare_inference_fps
from spark_distill.label.backends import get_backend
from spark_distill.openpilot.onnx_import import cpu_session
from spark_distill.openpilot.teachers import load_teacher, make_batch_dynamic, random_inputs
from spark_distill.synth.teacher import write_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teacher-bare-"))
    write_teacher(work / "t", size="bench")
    teacher, vision_model, policy_model = load_teacher([work / "t"])
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device {where} | torch {torch.__version__} | bench stand-in teacher | {args.precision}", flush=True)
    reference = cpu_session(make_batch_dynamic(vision_model).SerializeToString())
    for batch in (int(b) for b in args.batches.split(",")):
        for compile_ in ("off", "on"):
            be = get_backend("torch", teacher, vision_model, policy_model, batch=batch, precision=args.precision,
                             compile=compile_)
            fps = bare_inference_fps(be, teacher, batch, seconds=args.seconds)
            x = random_inputs(teacher.vision.inputs, batch, seed=1)
            got = be.vision({k: torch.from_numpy(v).to(be.device) for k, v in x.items()}).float().cpu().numpy()
            want = reference.run(None, x)[0]
            rel = float(np.abs(got - want).max() / np.abs(want).max())
            print(f"batch {batch:4d} {'compiled' if compile_ == 'on' else 'eager':9s} {fps:9.0f} frames/s   vision "
                  f"vs ONNX Runtime fp32: max |diff| / max |out| = {rel:.4f}", flush=True)
            del be
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
