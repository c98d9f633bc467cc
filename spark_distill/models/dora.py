# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""DoRA's magnitude math (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"), nothing else.

For a frozen weight W0 (rows = output channels), low-rank update s·B·A and magnitude m:
    V = W0 + s·B·A,   y = (m / ||V||_row) ⊙ (W0·x + s·B·(A·x)) + b
with ||V||_row over all input dims, detached from the graph (the paper's §4.3: it saves memory and
barely changes the gradient). B·A is never materialised: with W0 flattened to [out, k] and A to [r, k],
    ||V||²_row = ||W0||²_row + 2s·Σ_r B ⊙ (W0·Aᵀ) + s²·Σ_r (B·(A·Aᵀ)) ⊙ B,
which costs one [out, k] x [k, r] product and holds nothing of size [out, k].
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-6  # floor on the row norm: an all-zero row gives finite outputs and gradients (PEFT gives NaN)


def weight_norm(w0: torch.Tensor) -> torch.Tensor:
    """||W0|| per output row, fp32 [out] (DoRA's initial magnitude)."""
    return w0.detach().float().flatten(1).norm(dim=1)


@torch.no_grad()
def row_norm(*, w0: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W0 + s·B·A||_row in fp32 [out], detached, floored at NORM_EPS; W0 [out, …], A [r, …], B [out, r, …]."""
    with torch.autocast(device_type=w0.device.type, enabled=False):  # fp32 even inside AMP
        w = w0.float().flatten(1)  # (out, k)
        w0_sq = w.pow(2).sum(dim=1)
        a = lora_a.float().flatten(1)  # (r, k)
        b = lora_b.float().flatten(1)  # (out, r)
        cross = (b * (w @ a.T)).sum(dim=1)  # Σ_j W0_ij (BA)_ij
        lora_sq = ((b @ (a @ a.T)) * b).sum(dim=1)  # ||BA||² per row
        sq = w0_sq + 2.0 * scaling * cross + scaling * scaling * lora_sq
    return sq.clamp(min=0.0).sqrt().clamp(min=NORM_EPS)


def magnitude_scale(*, magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """m / ||V||: the per-output-channel factor applied to (W0·x + s·B·A·x), fp32 [out]."""
    return magnitude / norm


def merged_weight(*, w0: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
                  magnitude: torch.Tensor | None) -> torch.Tensor:
    """The merged weight in fp32, shaped like W0: V (LoRA) or diag(m / ||V||)·V (DoRA)."""
    w = w0.float().flatten(1)
    v = w + scaling * (lora_b.float().flatten(1) @ lora_a.float().flatten(1))
    if magnitude is not None:
        norm = v.norm(dim=1).clamp(min=NORM_EPS)
        v = v * (magnitude.float() / norm)[:, None]
    return v.reshape(w0.shape)
