# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Counting a step's work and its share of the device's peak."""

from __future__ import annotations

import torch

from spark_distill.train.flops import count_flops, first_clips, mfu, peak_tflops


def test_counts_forward_and_backward_matrix_products() -> None:
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    assert count_flops(lambda: layer(x)) == 2 * 8 * 64 * 32
    # backward: the input gradient and the weight gradient, one product each
    assert count_flops(lambda: layer(x.requires_grad_()).sum().backward()) == 3 * 2 * 8 * 64 * 32


def test_a_grouped_convolutions_backward_costs_twice_its_forward() -> None:
    for groups in (1, 16):
        conv = torch.nn.Conv2d(16, 16, 3, 2, 1, groups=groups)
        x = torch.randn(2, 16, 8, 8, requires_grad=True)
        forward = count_flops(lambda conv=conv, x=x: conv(x))
        assert forward == 2 * 2 * 16 * (16 // groups) * 9 * 4 * 4
        assert count_flops(lambda conv=conv, x=x: conv(x).sum().backward()) == 3 * forward


def test_peak_and_mfu() -> None:
    assert peak_tflops(torch.device("cpu")) is None and mfu(1e12, None) is None
    assert peak_tflops(torch.device("cpu"), 100.0) == 100.0
    assert mfu(50e12, 100.0) == 0.5
    batch = {"road": torch.zeros(4, 2), "keys": ["a", "b", "c", "d"]}
    cut = first_clips(batch, 1)
    assert cut["road"].shape == (1, 2) and cut["keys"] == ["a"]
