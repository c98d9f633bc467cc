# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""onnx2torch's Slice, Reshape and Expand with their constant operands as Python ints (onnx_import.static_operands
puts them in place): the same results, without a host copy or a `torch.Size(tensor)` at every call, so that the
graph can be captured as a CUDA graph and traced by torch.compile."""

from __future__ import annotations

from typing import Any

import torch


class StaticSlice(torch.nn.Module):
    """x flipped on `flip`, then indexed with the positive-axis and negative-axis slices (onnx2torch's _do_slice)."""

    def __init__(self, flip: list[int], pos: list[Any], neg: list[Any]) -> None:
        super().__init__()
        self.flip, self.pos, self.neg = flip, pos, neg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=self.flip)
        if self.pos:
            x = x[tuple(self.pos)]
        if self.neg:
            x = x[tuple(self.neg)]
        return x


class StaticReshape(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # ONNX: a 0 copies the input's dimension
        return torch.reshape(x, tuple(x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)))


class StaticExpand(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # as onnx2torch: broadcast by multiplying with ones
        return x * torch.ones(self.shape, dtype=x.dtype, device=x.device)


class StaticGather(torch.nn.Module):
    """ONNX Gather (numpy.take) of constant indices along `axis`."""

    def __init__(self, axis: int, indices: Any) -> None:
        super().__init__()
        self.axis, self.scalar = axis, indices.ndim == 0
        self.index_shape = tuple(indices.shape)
        self.register_buffer("indices", torch.as_tensor(indices.reshape(-1), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim()
        index = self.indices % x.shape[axis]  # ONNX allows negative indices
        if self.scalar:
            return x.select(axis, 0) if x.shape[axis] == 1 else torch.index_select(x, axis, index).squeeze(axis)
        out = torch.index_select(x, axis, index)
        return out.reshape(*x.shape[:axis], *self.index_shape, *x.shape[axis + 1:])


class StaticPad(torch.nn.Module):
    """F.pad with torch's pad list (onnx2torch's conversion of ONNX pads) and the constant as a Python float."""

    def __init__(self, pads: list[int], mode: str, value: float) -> None:
        super().__init__()
        self.pads, self.mode, self.value = pads, mode, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return torch.nn.functional.pad(x, self.pads, mode="constant", value=self.value)
        return torch.nn.functional.pad(x, self.pads, mode=self.mode)
