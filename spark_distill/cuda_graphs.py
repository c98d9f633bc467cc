# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""CUDA graph capture the way torch requires it: warm-up on a side stream, then capture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def capture(fn: Callable[[], Any], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Run `fn` `warmup` times on a side stream (compiles, cuDNN plans, lazy allocations), then capture it in
    a CUDA graph; returns the graph and what `fn` returned while captured (static buffers, rewritten by every
    replay). `fn` must not sync with the host nor allocate on the host."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fn()
    return graph, out
