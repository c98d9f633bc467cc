# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass's GPU step (torch backend: compiled, one CUDA graph) on a stand-in of each release layout,
against ONNX Runtime on the CPU over the same frames (the reference backend):

    python benchmarks/label_releases_gpu.py --releases 0.9.6,late-2024,0.10.0,0.10.3,0.11

Prints per release the layout, frames labeled and the largest difference of the fp32 GPU labels from ONNX
Runtime's (both stored as float16), then the fp16 GPU pass's frames/s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _read(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from spark_distill.data import shards

    m = shards.read_manifest(folder, shards.LABELS_FORMAT)
    out = {}
    for e in m["shards"]:
        for s in shards.iter_shard(folder / e["name"], shards.LABEL_MEMBERS):
            d = shards.decode_sample(s)
            out[s["__key__"]] = (d["vision"].astype(np.float32), d["policy"].astype(np.float32))
    return out


def main() -> None:
    from spark_distill.bench.label import write_bench_frames
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.releases import write_release

    ap = argparse.ArgumentParser()
    ap.add_argument("--releases", default="0.9.6,late-2024,0.10.0,0.10.3,0.11")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        write_bench_frames(root, segments=args.segments, seconds=args.seconds)
        for release in args.releases.split(","):
            teacher = Path(tmp) / release
            write_release(teacher, release, seed=3)
            ref = label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=args.segments,
                                    name=f"ort-{release}", workers=2))
            gpu = label(LabelConfig(root=root, teacher=(teacher,), backend="torch", precision="fp32",
                                    batch=args.segments, name=f"gpu32-{release}", workers=4))
            a, b = _read(ref.folder), _read(gpu.folder)
            err = max(float(np.abs(a[k][i] - b[k][i]).max()) for k in a for i in (0, 1))
            fast = label(LabelConfig(root=root, teacher=(teacher,), backend="torch", batch=args.segments,
                                     name=f"gpu16-{release}", workers=4))
            f16 = max(float(np.abs(a[k][i] - c[k][i]).max()) for c in (_read(fast.folder),) for k in a
                      for i in (0, 1))
            print(f"{release}: {gpu.frames} frames; fp32 GPU vs ONNX Runtime max |diff| {err:.2e}; fp16 {f16:.2e}, "
                  f"{fast.frames_per_s:.0f} frames/s; captured step {gpu.profile.get('captured step')}; "
                  f"{gpu.backend}", flush=True)


if __name__ == "__main__":
    main()
