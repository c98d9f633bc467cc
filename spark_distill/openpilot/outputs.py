# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Raw output vectors -> named arrays, following openpilot's selfdrive/modeld/parse_model_outputs.py.

Main entry point: `parse_outputs(raw, slices)`: a pure function from a [..., N] array (any leading
batch/time dims) and the model's output slices to a dict of named arrays. Gaussian/Laplace heads
are [means | log-stds | hypothesis logits] per hypothesis; stds come from a clipped exp (openpilot's
safe_exp: exp(min(x, 11)), finite in fp16). Multi-hypothesis heads keep the hypotheses, their
weights (softmax over hypotheses per selection) and, per selection, the most probable hypothesis.
Used by training, evaluation and tests; numpy or torch in, the same kind out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_distill.openpilot.contract import HEADS

SAFE_EXP_MAX = 11.0


def _xp(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def safe_exp(x: Any) -> Any:
    xp = _xp(x)
    return xp.exp(xp.clip(x, None, SAFE_EXP_MAX) if xp is np else x.clamp(max=SAFE_EXP_MAX))


def softmax(x: Any, axis: int) -> Any:
    xp = _xp(x)
    if xp is np:
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    return x.softmax(dim=axis)


def sigmoid(x: Any) -> Any:
    xp = _xp(x)
    return 1.0 / (1.0 + np.exp(-x)) if xp is np else x.sigmoid()


def _take_along(x: Any, idx: Any) -> Any:
    """x (..., H, *rest), idx (..., S) -> (..., S, *rest): the hypotheses chosen per selection."""
    xp = _xp(x)
    rest = x.shape[idx.ndim:]
    expanded = idx.reshape(*idx.shape, *([1] * len(rest)))
    if xp is np:
        return np.take_along_axis(x, np.broadcast_to(expanded, (*idx.shape, *rest)), axis=idx.ndim - 1)
    return x.gather(idx.ndim - 1, expanded.expand(*idx.shape, *rest))


def parse_mdn(raw: Any, *, in_n: int, out_n: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """A Gaussian/Laplace head (openpilot parse_mdn). raw (..., W)."""
    lead = raw.shape[:-1]
    n = int(np.prod(shape))
    hyps = max(in_n, 1)
    r = raw.reshape(*lead, hyps, -1)  # (..., H, 2n + out_n)
    mu = r[..., :n].reshape(*lead, hyps, *shape)
    log_std = r[..., n:2 * n].reshape(*lead, hyps, *shape)
    out: dict[str, Any] = {}
    if in_n == 0:
        log_std = log_std.reshape(*lead, *shape)
        return {"mean": mu.reshape(*lead, *shape), "std": safe_exp(log_std), "log_std": log_std}
    logits = r[..., 2 * n:]  # (..., H, out_n)
    weights = softmax(logits, axis=-2)  # softmax over hypotheses, one per selection
    best = weights.argmax(-2)  # (..., out_n)
    out["hypotheses"], out["stds_hypotheses"] = mu, safe_exp(log_std)
    out["log_std_hypotheses"], out["logits"], out["weights"] = log_std, logits, weights
    out["mean"] = _take_along(mu, best)  # (..., out_n, *shape)
    out["std"] = _take_along(out["stds_hypotheses"], best)
    if out_n == 1:  # one selection: drop its axis, as openpilot does
        out["mean"], out["std"] = out["mean"].reshape(*lead, *shape), out["std"].reshape(*lead, *shape)
    return out


def parse_outputs(raw: Any, slices: dict[str, slice | list[int]]) -> dict[str, Any]:
    """Named outputs of one model's raw vector(s): {head: array} or {head: {mean, std, …}} for MDN heads.

    Heads this parser does not know are returned raw (a newer model's extra outputs survive)."""
    out: dict[str, Any] = {}
    for name, sl in slices.items():
        s = sl if isinstance(sl, slice) else slice(*sl)
        part = raw[..., s]
        kind, args = HEADS.get(name, ("raw", {}))
        if kind == "mdn":
            if args["in_n"] and part.shape[-1] == 2 * int(np.prod(args["shape"])):
                args = {**args, "in_n": 0, "out_n": 0}  # a non-MHP variant of a usually MHP head (2025 plan)
            out[name] = parse_mdn(part, **args)
        elif kind == "sigmoid":
            out[name] = sigmoid(part)
        elif kind == "softmax":
            out[name] = softmax(part.reshape(*part.shape[:-1], *args["shape"]), axis=-1)
        else:
            out[name] = part
    return out
