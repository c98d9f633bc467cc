# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Feature-cached vs image-mode training of the openpilot student: samples/s, same run otherwise.

    python benchmarks/feature_cached.py ROOT --labels SET --student-onnx TEACHER_DIR [--device cpu] [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--student-onnx", type=Path, required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="fc-"))
    rates = {}
    for mode in ("off", "on"):
        cfg = TrainConfig(root=args.root, labels=args.labels, run=mode, runs_dir=runs, student="openpilot",
                          student_onnx=args.student_onnx, batch_size=args.batch, max_steps=args.steps, epochs=1000,
                          warmup_steps=2, burn_in=4, val_fraction=0, mask_warmup=False, workers=1, adapter_rank=16,
                          adapter_alpha=32.0, device=args.device, feature_cached=mode, checkpoint_every=10**6)
        r = train(cfg)
        rates[mode] = r.samples / r.seconds
        print(f"feature-cached {mode:3s}: {r.steps} steps, {rates[mode]:8.1f} clips/s", flush=True)
    print(f"speed-up: {rates['on'] / rates['off']:.1f}x")


if __name__ == "__main__":
    main()
