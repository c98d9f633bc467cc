# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Depthwise convolutions as fused pointwise work on CUDA. Entry point: `Depthwise` (an nn.Conv2d; the compact
student's backbones are built with it).

cuDNN's grouped direct kernel for bf16/fp16 channels-last depthwise layers runs far below memory bandwidth: it
was 76% of the compact student's DoRA step on an H200 (benchmarks/train.md). Written as kh x kw strided slices
of the padded input times their per-channel taps (`shifted_depthwise`), the layer is pointwise work that
inductor fuses into one kernel with the BatchNorm and activation around it. `Depthwise` takes that form only
where it pays: compiled, on CUDA, with no gradient through it (frozen backbones, teachers); with gradients the
shifted form's backward (strided scatter-adds, per-tap weight reductions) measured slower than cuDNN's. Eager
runs, the CPU and ONNX export see the convolution: same weights, same state-dict keys, exported as a Conv.
Not for the teachers: the bench stand-in teacher (fp16, compiled) ran 15,725 frames/s with its depthwise layers
in this form against 22,447 with cuDNN's (H200, batch 256, `benchmarks/teacher_bare.py`), so the label pass's
torch backend keeps its imported convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def shifted_depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """A depthwise convolution (weight (C, 1, kh, kw), zero padding, no dilation) as strided slices of the padded
    input, each times its per-channel tap."""
    c, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    taps = weight.to(x.dtype).reshape(c, kh * kw)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] * taps[:, i * kw + j, None, None]
            out = tap if out is None else out + tap
    return out if bias is None else out + bias.to(x.dtype)[:, None, None]


class Depthwise(nn.Conv2d):
    """A depthwise nn.Conv2d that runs as `shifted_depthwise` where that is faster (see the module's docstring)."""

    def shifted(self, x: torch.Tensor) -> bool:
        grads = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return x.is_cuda and not grads and torch.compiler.is_compiling()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shifted(x):
            return shifted_depthwise(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)
