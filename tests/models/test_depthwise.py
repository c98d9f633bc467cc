# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Depthwise layers as fused pointwise work: the same values and gradients as the convolution."""

from __future__ import annotations

import pytest
import torch

from spark_distill.models.depthwise import Depthwise, shifted_depthwise


@pytest.mark.parametrize("stride,channels_last", [(2, False), (2, True), (1, True)])
def test_shifted_depthwise_is_the_convolution(stride: int, channels_last: bool) -> None:
    """The compiled-on-CUDA form of the backbones' depthwise layers: values and gradients of the convolution."""
    torch.manual_seed(0)
    conv = Depthwise(24, 24, 3, stride, 1, groups=24).double()
    x = torch.randn(3, 24, 17, 34, dtype=torch.double)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = conv(x1)
    got = shifted_depthwise(x2, conv.weight, conv.bias, conv.stride, conv.padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    want.backward(g)
    w_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    got.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, w_grad, rtol=1e-12, atol=1e-12)
    assert isinstance(conv, torch.nn.Conv2d) and conv(x).shape == want.shape, "eager, on a CPU: the convolution"
