# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Train the same run on 1 and on N GPUs with the same global batch; compare losses and throughput.

    python benchmarks/ddp_check.py ROOT --labels SET --world 1 --batch 8
    torchrun --nproc-per-node 2 benchmarks/ddp_check.py ROOT --labels SET --world 2 --batch 4

(per-rank batch x world = the same global batch). Prints, from rank 0: steps, validation loss before
and after, samples/s.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/ddp-runs"))
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    torch.cuda.set_device(device)
    cfg = TrainConfig(root=args.root, labels=args.labels, run=f"world{args.world}", runs_dir=args.runs,
                      student="compact", batch_size=args.batch, epochs=1000, max_steps=args.steps, lr=1e-3,
                      warmup_steps=5, burn_in=4, val_fraction=0.34, mask_warmup=False, workers=1, log_every=5,
                      checkpoint_every=1000, device=device, process_rank=rank, world=args.world,
                      init_method="env://" if args.world > 1 else None)
    r = train(cfg)
    if rank == 0:
        print(f"{torch.cuda.get_device_name()} x{args.world}: {r.steps} steps, per-rank batch {args.batch}, "
              f"val loss {r.val_before:.4f} -> {r.val_after:.4f}, {r.samples * args.world / r.seconds:.1f} clips/s "
              f"({r.seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
