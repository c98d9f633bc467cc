# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""GPU label benchmark over several batch sizes on one dataset (what benchmarks/label.md records).

    python benchmarks/label_gpu.py --segments 256 --seconds 6 --batches 64,256 --precision fp16 --workers 14

Same measurement as `spark-distill bench label`, with the dataset built once: for each batch, bare
inference on device-resident inputs of every path the backend offers (torch: eager with CUDA graphs,
and torch.compile), then the label pass end to end (`--compile`, default auto = compiled on a GPU)
with its profile (ms per step by stage, accelerator busy fraction), and the ratio against the fastest
bare path. Compile time is printed too (the inductor cache makes the label pass's compile a reload).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    # imported here, not at the top: the label pass's reader processes are spawned and import this script as
    # their __main__, and torch there cost each of them seconds of start-up (`spark-distill label`'s do not import it)
    import torch

    from spark_distill.bench.label import bare_paths, loop_fps, profile_lines, step_graph_fps, write_bench_frames
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.openpilot.teachers import load_teacher
    from spark_distill.synth.teacher import gflops_per_frame, write_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--compile", default="auto", help="the label pass's --compile (auto, on, off)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="label-gpu-"))
    write_teacher(work / "teacher", size="bench")
    start = time.perf_counter()
    frames = write_bench_frames(work / "ds", segments=args.segments, seconds=args.seconds)
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | teacher: bench stand-in, "
          f"{gflops_per_frame('bench'):.2f} GFLOPs/frame | dataset: {frames} frames "
          f"({args.segments} segments, written in {time.perf_counter() - start:.0f} s)", flush=True)
    t, vm, pm = load_teacher([work / "teacher"])
    engines = work / "ds" / "labels" / ".engines"  # the label pass's cache folder: its compile reloads these
    for batch in (int(b) for b in args.batches.split(",")):
        start = time.perf_counter()
        bare = {}
        for path, fps in bare_paths(args.backend, t, vm, pm, batch=batch, precision=args.precision, cache_dir=engines):
            bare[path] = fps
            print(f"batch {batch:4d}: bare {path:<20} {fps:9.1f} frames/s "
                  f"(built and measured by {time.perf_counter() - start:.0f} s)", flush=True)
        best = max(bare, key=bare.__getitem__)
        fps = step_graph_fps(args.backend, t, vm, pm, batch=batch, precision=args.precision, cache_dir=engines)
        if fps:
            print(f"batch {batch:4d}: bare whole step graph   {fps:9.1f} frames/s (the label pass's captured step: "
                  "frame gather, modeld state, both models, outputs; clips already on the device)", flush=True)
        start = time.perf_counter()
        r = label(LabelConfig(root=work / "ds", teacher=(work / "teacher",), backend=args.backend,
                              precision=args.precision, batch=batch, workers=args.workers, compile=args.compile,
                              name=f"b{batch}"))
        used = "compiled" if r.backend.get("compiled") else "eager"
        print(f"batch {batch:4d}: label pass ({used}) {r.frames_per_s:9.1f} frames/s ({r.frames} frames; "
              f"{time.perf_counter() - start:.0f} s with set-up) | ratio vs {best} {r.frames_per_s / bare[best]:.2f}",
              flush=True)
        print(f"batch {batch:4d}: labeling loop alone {loop_fps(r):9.1f} frames/s | ratio vs {best} "
              f"{loop_fps(r) / bare[best]:.2f}", flush=True)
        for line in profile_lines(r.profile):
            print(line, flush=True)


if __name__ == "__main__":
    main()
