# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Where the compact student's training step spends the GPU's time (what benchmarks/train.md records).

    python benchmarks/train_profile.py --batches 128,256,384 --student compact

For each batch size: the step as `train()` runs it (compiled halves, the whole step captured as one CUDA graph,
bf16, channels-last, DoRA r16 on the default targets) on batches held in memory: ms/step and frames/s. Then, at
the last batch size, the torch profiler over a few steps of the same step uncaptured (the same compiled kernels,
launched one by one, so each shows with its own name and GPU time): GPU time by kernel (top rows), and by
family (convolution, matrix product, inductor's fused kernels, optimizer, copies), against the step's wall time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from spark_distill.bench.train import Stepper, _cycle, _full, _ours, ensure_dataset, segments_needed
from spark_distill.data.pairs import shard_pairs
from spark_distill.models.compact import PRESETS, CompactStudent
from spark_distill.train.loader import ClipStream, make_loader

FAMILIES = (("inductor fused", r"^triton_"),  # first: their names list the ops they fused (conv, copy, ...)
            ("convolution", r"conv|cudnn|implicit|depthwise|winograd|fprop|dgrad|wgrad|sm90_xmma"),
            ("matrix product", r"gemm|cutlass|ampere_|sm80_|sm90_|nvjet|splitk"),
            ("optimizer", r"adam|multi_tensor|foreach"),
            ("copy / fill", r"copy|memcpy|memset|fill|cat|index"),
            ("reduction", r"reduce|norm|sum"))


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, pattern in FAMILIES if re.search(pattern, low)), "other")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="128,256,384")
    ap.add_argument("--student", default="compact", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script (tiny sizes)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--adapter", default="dora", choices=("dora", "none"), help="none: the student trained fully")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sizes = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="train-profile-"))
    try:
        start = time.perf_counter()
        n = segments_needed(batch=max(sizes), steps=0, workers=1, seconds=args.seconds, clip_len=20)
        root, labels, _ = ensure_dataset(work, segments=n, seconds=args.seconds, clip_len=20)
        pairs, manifest = shard_pairs(root, labels, split="train", val_fraction=0)
        slices = manifest["output_slices"]
        where = torch.cuda.get_device_name(dev) if cuda else "CPU"
        print(f"device {where} | torch {torch.__version__} | {n} segments written and labeled in "
              f"{time.perf_counter() - start:.0f} s (page cache)", flush=True)
        vision = {k: slice(*v) for k, v in slices["vision"].items()}
        adapt = _full if args.adapter == "none" else lambda m: _ours(m, 16, dora=True)
        policy = {k: slice(*v) for k, v in slices["policy"].items()}
        for b in sizes:
            stream = ClipStream(pairs, manifest, batch=b, clip_len=20, burn_in=5, seed=0, mask_warmup=False)
            held = [x for _, x in zip(range(2), make_loader(stream, pin_memory=cuda), strict=False)]
            torch.manual_seed(0)
            student = adapt(CompactStudent(PRESETS[args.student](), vision, policy))
            s = Stepper(student, slices=slices, device=dev, compiled=cuda, captured=True)
            m = s.timed(_cycle(held), steps=args.steps)
            print(f"batch {b:4d}: {1000 * m.seconds / args.steps:8.1f} ms/step {m.frames / m.seconds:9.0f} frames/s "
                  f"peak {m.peak_gb or 0:.1f} GB  step {s.mode()}", flush=True)
            del s, student
            if cuda:
                torch.cuda.empty_cache()
        # the profile, at the last size: the same compiled step, uncaptured (kernels launched one by one)
        torch.manual_seed(0)
        student = adapt(CompactStudent(PRESETS[args.student](), vision, policy))
        s = Stepper(student, slices=slices, device=dev, compiled=cuda, captured=False)
        s.timed(_cycle(held), steps=1)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            start = time.perf_counter()
            for batch in [held[i % 2] for i in range(3)]:
                s(batch)
            sync()
            wall = (time.perf_counter() - start) / 3

        def spent(e: object) -> float:  # us over the 3 steps: GPU time of a kernel (on a CPU dry run: self CPU time)
            return e.device_time_total if cuda else e.self_cpu_time_total

        kernels = [e for e in prof.key_averages() if (e.device_type.name == "CUDA" or not cuda) and spent(e) > 0]
        gpu = sum(spent(e) for e in kernels) / 3 / 1000  # ms per step
        print(f"\nprofile at batch {sizes[-1]} (uncaptured compiled step): wall {1000 * wall:.1f} ms/step, "
              f"GPU kernels {gpu:.1f} ms/step ({len(kernels)} distinct kernels)")
        by_family: Counter[str] = Counter()
        for e in kernels:
            by_family[family(e.key)] += spent(e) / 3 / 1000
        for f, ms in by_family.most_common():
            print(f"  {f:16s} {ms:8.2f} ms/step  {100 * ms / gpu:5.1f}%")
        print(f"\ntop {args.top} kernels (ms/step, calls/step):")
        for e in sorted(kernels, key=lambda e: -spent(e))[: args.top]:
            print(f"  {spent(e) / 3 / 1000:8.3f} {e.count / 3:6.0f}  {e.key[:110]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
