# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""DoRA vs LoRA vs PEFT on a policy-sized stack: step time and peak memory (benchmarks/dora.md).

    python benchmarks/dora_gpu.py --batch 256 --unroll 10 --rank 16

The stack follows a PEFT measurement made before this project (benchmarks/dora.md): a d=1024 MLP with
GRU-style projections (input and hidden, 3*d each) unrolled over 10 steps, plan (4955) and lane (528) heads,
bf16 autocast, AdamW on the adapter parameters only, no dropout. All four variants run in this process on the
same weights.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from spark_distill.models.lora import apply_adapters

TARGETS = ["inp", "mlp.*", "gru_x", "gru_h", "plan", "lanes"]


class PolicyStack(nn.Module):
    def __init__(self, d: int = 1024) -> None:
        super().__init__()
        self.d = d
        self.inp = nn.Linear(512 + 8 + 2, d)
        self.mlp = nn.Sequential(*[nn.Linear(d, d) for _ in range(4)])
        self.gru_x, self.gru_h = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d)
        self.plan, self.lanes = nn.Linear(d, 4955), nn.Linear(d, 528)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 522)
        h = torch.zeros(x.shape[0], self.d, device=x.device, dtype=x.dtype)
        loss = 0.0
        for t in range(x.shape[1]):
            z = self.inp(x[:, t])
            for layer in self.mlp:
                z = torch.relu(layer(z))
            gx, gh = self.gru_x(z).chunk(3, -1), self.gru_h(h).chunk(3, -1)
            r, u = torch.sigmoid(gx[0] + gh[0]), torch.sigmoid(gx[1] + gh[1])
            h = (1 - u) * torch.tanh(gx[2] + r * gh[2]) + u * h
            loss = loss + self.plan(h).float().pow(2).mean() + self.lanes(h).float().pow(2).mean()
        return loss


def measure(model: nn.Module, x: torch.Tensor, steps: int) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000, torch.cuda.max_memory_allocated() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = PolicyStack().cuda()
    x = torch.randn(args.batch, args.unroll, 522, device="cuda")
    results = {}
    for name, dora in (("spark-distill LoRA", False), ("spark-distill DoRA", True)):
        m = copy.deepcopy(base)
        apply_adapters(m, targets=TARGETS, rank=args.rank, alpha=2.0 * args.rank, dora=dora)
        results[name] = measure(m, x, args.steps)
    try:
        import peft

        for name, dora in (("PEFT LoRA", False), ("PEFT DoRA", True)):
            cfg = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, use_dora=dora,
                                  target_modules=["inp", "mlp.0", "mlp.1", "mlp.2", "mlp.3", "gru_x", "gru_h", "plan",
                                                  "lanes"])
            results[name] = measure(peft.get_peft_model(copy.deepcopy(base), cfg), x, args.steps)
    except ImportError:
        print("peft not installed: PEFT rows skipped")
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | batch {args.batch} x {args.unroll} "
          f"steps unrolled, rank {args.rank}, bf16 autocast, AdamW")
    lora = results["spark-distill LoRA"][0]
    for name, (ms, gb) in results.items():
        print(f"{name:20s} {ms:8.1f} ms/step  {gb:6.2f} GB peak  {ms / lora:5.2f}x our LoRA")


if __name__ == "__main__":
    main()
