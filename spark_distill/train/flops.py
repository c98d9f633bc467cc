# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Counting the work of a training step: FLOPs per clip (torch.utils.flop_counter, matrix products and
convolutions, forward and backward as actually run: a frozen backbone has no backward) and the
model FLOP utilisation (MFU) against the accelerator's dense bf16 peak."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a word of torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}


def _conv_backward_flop(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any, _stride: Any, _padding: Any,
                        _dilation: Any, transposed: bool, _output_padding: Any, _groups: Any, output_mask: Any,
                        *_: Any, **__: Any) -> int:
    """A convolution's backward: its input gradient and its weight gradient each cost what its forward costs.
    (torch's own formula counts the weight gradient of a grouped convolution as if it were dense: 64x too
    much for the compact student's depthwise convolutions.)"""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions `fn()` runs (forward and any backward inside it)."""
    fixed = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=fixed) as counter:
        fn()
    return int(counter.get_total_flops())


def first_clips(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The batch cut to its first `n` clips (every per-clip tensor and the keys)."""
    return {k: v[:n] for k, v in batch.items()}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s: `override` when given, else known from the GPU's name
    (H100, H200), else None (a CPU, or a GPU this table does not know: pass --peak-tflops)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    """Achieved FLOP/s as a fraction of the peak (TFLOP/s); None without a peak."""
    return None if peak is None else flops_per_s / (peak * 1e12)
