# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Where the label pass's step spends its time: the step as the pass builds it (torch backend, compiled on CUDA:
frame gather, modeld state and both models as one inductor program), replayed from its CUDA graph on clips
already on the device, and with `--profile` the GPU time by kernel of the same step run uncaptured (torch
profiler). Random clips, modeld state from zeros.

    python benchmarks/step_profile.py --batches 64,256 --profile

On the CPU it times the uncompiled step (there is nothing to capture) unless `--compile on`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    import torch

    from spark_distill.bench.label import rate
    from spark_distill.label.backends import get_backend
    from spark_distill.label.step import DELAY_COLS, LabelStep
    from spark_distill.openpilot.releases import DEFAULT_LAT_DELAY, DEFAULT_LONG_DELAY
    from spark_distill.openpilot.teachers import load_teacher
    from spark_distill.synth.teacher import write_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="bench", help="stand-in teacher size (tiny, bench)")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--compile", default="auto", help="auto (on CUDA), on, off")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--profile", action="store_true", help="GPU time by kernel of the uncaptured step")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="step-profile-"))
    write_teacher(work / "teacher", size=args.size)
    t, vm, pm = load_teacher([work / "teacher"])
    for batch in (int(b) for b in args.batches.split(",")):
        be = get_backend("torch", t, vm, pm, batch=batch, precision="fp16" if cuda else "fp32",
                         cache_dir=work / "cache", compile=args.compile)
        label_step = LabelStep(teacher=t, backend=be, batch=batch, clip_len=20)
        g = torch.Generator().manual_seed(0)
        label_step.clips.copy_(torch.randint(0, 255, label_step.clips.shape, generator=g, dtype=torch.uint8))
        packed = label_step.inputs_pair[0]
        packed[:, 2], packed[:, 3], packed[:, 5] = 20.0, 1.0, 1.0  # v_ego, traffic (RHD off), desire none
        packed[:, DELAY_COLS] = torch.tensor([DEFAULT_LAT_DELAY, DEFAULT_LONG_DELAY])

        def one_step(label_step: LabelStep = label_step, packed: torch.Tensor = packed) -> None:
            if label_step.graphs:
                label_step.graphs[0].replay()
            else:
                with torch.no_grad():
                    label_step.step_fn(packed)

        fps = rate(one_step, label_step.device, batch, seconds=args.seconds)
        how = ("captured" if label_step.graphs else "uncaptured") + (", compiled" if be.compiled else ", eager")
        print(f"batch {batch:4d}: whole step ({how}) {fps:10.1f} frames/s; "
              f"compiling it took {label_step.compile_s:.1f} s", flush=True)
        if args.profile and cuda:
            from torch.profiler import ProfilerActivity, profile

            with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    label_step.step_fn(packed)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=80))


if __name__ == "__main__":
    main()
