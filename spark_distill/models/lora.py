# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Low-rank adapters on Linear and Conv2d, with DoRA's magnitude as one optional branch.

Main entry points: `apply_adapters(model, targets=[patterns], rank, alpha, dora=True)` wraps matching
modules (qualified names matched with fnmatch globs) and freezes everything else; `merge_adapters(model)`
replaces every wrapper by a plain layer holding the merged fp32 weight; `adapter_state_dict` /
`load_adapter_state` move adapters alone; `trainable_fraction` reports what trains.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.models import dora as D

ADAPTER_KEYS = ("lora_a", "lora_b", "magnitude")


class LoRALayer(nn.Module):
    """A frozen Linear or Conv2d plus s·B·A (A: same kind as the base, B: 1x1), DoRA-scaled if `dora`."""

    def __init__(self, base: nn.Linear | nn.Conv2d, *, rank: int, alpha: float, dora: bool) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"adapter rank must be >= 1, got {rank}")
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        if isinstance(base, nn.Conv2d):
            self.lora_a = nn.Parameter(torch.empty(rank, base.in_channels // base.groups, *base.kernel_size,
                                                   device=w.device, dtype=w.dtype))
            self.lora_b = nn.Parameter(torch.zeros(base.out_channels, rank, 1, 1, device=w.device, dtype=w.dtype))
        else:
            self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as PEFT / nn.Linear; B = 0: identity at start
        # m = ||W0||_row in fp32, so that the wrapped layer equals the base layer at start
        self.magnitude = nn.Parameter(D.weight_norm(w)) if dora else None
        self._cache: tuple[tuple, torch.Tensor] | None = None
        # norms_once(): the row norm of the current weights held in a buffer, which a compiled graph reads as an input
        self.register_buffer("step_norm", torch.ones(w.shape[0], device=w.device) if dora else None, persistent=False)
        self.norm_in_buffer = False
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise ConfigError("adapters on grouped convolutions are not supported; exclude them from --targets")

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        if isinstance(b, nn.Conv2d):
            h = F.conv2d(x, self.lora_a, None, b.stride, b.padding, b.dilation)
            return F.conv2d(h, self.lora_b)
        return F.linear(F.linear(x, self.lora_a), self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        base_out = (F.conv2d(x, b.weight, None, b.stride, b.padding, b.dilation, b.groups)
                    if isinstance(b, nn.Conv2d) else F.linear(x, b.weight))
        out = base_out + self.scaling * self._low_rank(x)
        if self.magnitude is not None:
            norm = self._norm()
            scale = D.magnitude_scale(magnitude=self.magnitude, norm=norm).to(out.dtype)
            out = out * (scale.view(1, -1, 1, 1) if isinstance(b, nn.Conv2d) else scale)
        if b.bias is not None:
            out = out + (b.bias.view(1, -1, 1, 1) if isinstance(b, nn.Conv2d) else b.bias)
        return out

    def _norm(self) -> torch.Tensor:
        """||W0 + s·B·A||_row, computed once per change of W0, A or B: a recurrent student calls the
        layer once per unrolled step, and the weights only change at optimizer steps (in place, which
        bumps their version counters). Inside norms_once() it is the buffer filled there."""
        if self.norm_in_buffer:
            return self.step_norm
        w, a, b = self.base.weight, self.lora_a, self.lora_b
        key = (w.data_ptr(), w._version, a.data_ptr(), a._version, b.data_ptr(), b._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, D.row_norm(w0=w, lora_a=a, lora_b=b, scaling=self.scaling))
        return self._cache[1]

    def merged(self) -> nn.Linear | nn.Conv2d:
        """A plain layer with the merged fp32 weight (cast back to the base dtype); raises on non-finite values."""
        w = D.merged_weight(w0=self.base.weight, lora_a=self.lora_a, lora_b=self.lora_b, scaling=self.scaling,
                            magnitude=self.magnitude)
        if not torch.isfinite(w).all():
            raise ConfigError("merging produced non-finite weights; the adapter is corrupt")
        b = self.base
        if isinstance(b, nn.Conv2d):
            layer = nn.Conv2d(b.in_channels, b.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                              b.groups, bias=b.bias is not None, padding_mode=b.padding_mode)
        else:
            layer = nn.Linear(b.in_features, b.out_features, bias=b.bias is not None)
        layer = layer.to(device=b.weight.device, dtype=b.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(w.to(b.weight.dtype))
            if b.bias is not None:
                layer.bias.copy_(b.bias)
        return layer


@contextmanager
def norms_once(model: nn.Module) -> Iterator[None]:
    """DoRA's row norms of the current weights computed once, now, and read from each layer's `step_norm` buffer
    by everything run inside: one computation per step however often a recurrent student calls a layer, and
    no Python-side cache check inside a compiled graph."""
    layers = [m for m in model.modules() if isinstance(m, LoRALayer) and m.magnitude is not None]
    for m in layers:
        m.step_norm.copy_(D.row_norm(w0=m.base.weight, lora_a=m.lora_a, lora_b=m.lora_b, scaling=m.scaling))
        m.norm_in_buffer = True
    try:
        yield
    finally:
        for m in layers:
            m.norm_in_buffer = False


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_adapters(model: nn.Module, *, targets: list[str], rank: int = 16, alpha: float = 32.0, dora: bool = True,
                   train_modules: list[str] = ()) -> list[str]:
    """Wrap Linear/Conv2d modules whose qualified names match `targets` (fnmatch globs); freeze the rest,
    except modules matching `train_modules`, which train fully. Returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
             and any(fnmatch.fnmatchcase(n, pat) for pat in targets)]
    if not names:
        raise ConfigError(f"no Linear/Conv2d module matches --targets {', '.join(targets)}")
    for n in names:
        _set(model, n, LoRALayer(model.get_submodule(n), rank=rank, alpha=alpha, dora=dora))
    for n, m in model.named_modules():
        if any(fnmatch.fnmatchcase(n, pat) for pat in train_modules):
            for p in m.parameters():
                p.requires_grad_(True)
    return names


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every LoRALayer by its merged plain layer (in place); returns the model."""
    for n, m in list(model.named_modules()):
        if isinstance(m, LoRALayer):
            _set(model, n, m.merged())
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only (A, B, magnitude), plus fully trained modules' parameters."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load what adapter_state_dict saved; every key must exist with the same shape."""
    params = dict(model.named_parameters())
    for k, v in state.items():
        if k not in params or params[k].shape != v.shape:
            raise ConfigError(f"adapter tensor {k!r} does not fit this model (wrong student or --targets?)")
        with torch.no_grad():
            params[k].copy_(v)


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) — frozen base weights counted once."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
