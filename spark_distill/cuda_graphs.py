# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""CUDA graph capture the way torch requires it: warm-up on a side stream, then capture (`capture_or_none`), with a
way out: a model whose forward copies to the host at every call (an ONNX operator that onnx2torch
computes from host-side values, which the static import does not cover) cannot be captured, and runs uncaptured
with one message (the label pass makes it a note) instead of ending the pass."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch


def _warm(fn: Callable[[], Any], warmup: int) -> None:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)


def _capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fn()
    return graph, out


def capture_or_none(fn: Callable[[], Any], what: str, on_failure: Callable[[str], None], warmup: int = 3
                    ) -> tuple[torch.cuda.CUDAGraph, Any] | None:
    """Run `fn` `warmup` times on a side stream (compiles, cuDNN plans, lazy allocations), then capture it in a
    CUDA graph; returns the graph and what `fn` returned while captured (static buffers, rewritten by every
    replay). `fn` must not sync with the host nor allocate on the host. None when the capture itself fails, after
    one `on_failure(message)` naming `what` and the error (the warm-up's errors are `fn`'s own and raise): the
    caller then runs `fn` uncaptured."""
    _warm(fn, warmup)
    try:
        return _capture(fn)
    except RuntimeError as error:  # torch.AcceleratorError too: "operation not permitted when stream is capturing"
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:200]
        message = f"{what} could not be captured as a CUDA graph ({type(error).__name__}: {reason}); it runs uncaptured"
    hand_back_failed_capture()  # with the error gone, nothing holds the graph
    on_failure(message)
    return None


def hand_back_failed_capture(device: torch.device | None = None) -> None:
    """After a capture that failed: wait for the device, then give the dropped graph's memory pool back to it, so
    that the uncaptured steps that follow find the memory free (a failed capture of the training step on an H100
    left 69 GB reserved but unallocated, and the first eager step ran out of memory). The caller drops its
    references to the graph first."""
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
