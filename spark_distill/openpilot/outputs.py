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


def single_shape(name: str) -> tuple[int, ...]:
    """The shape of a multi-hypothesis head's single-Gaussian form: one Gaussian per selection (lead: (3, 6, 4))."""
    args = HEADS[name][1]
    return (args["out_n"], *args["shape"]) if args["out_n"] > 1 else args["shape"]


def mdn_args(name: str, width: int) -> dict[str, Any]:
    """parse_mdn's arguments for a Gaussian head `width` wide, by openpilot's rule (parse_model_outputs.py, 2025+): a
    usually multi-hypothesis head (plan, lead) is a single Gaussian when its width is twice its shape's size (plan
    990 = 2 x 33 x 15; lead 144 = 2 x 3 x 6 x 4), else the mixture (plan 4955, lead 102)."""
    args = HEADS[name][1]
    if args["in_n"] and width == 2 * int(np.prod(single_shape(name))):
        return {"in_n": 0, "out_n": 0, "shape": single_shape(name)}
    return dict(args)


def is_mixture(name: str, width: int) -> bool:
    """Whether a head `width` wide is parsed as a multi-hypothesis mixture."""
    return HEADS.get(name, ("raw", {}))[0] == "mdn" and bool(mdn_args(name, width)["in_n"])


def parse_outputs(raw: Any, slices: dict[str, slice | list[int]]) -> dict[str, Any]:
    """Named outputs of one model's raw vector(s): {head: array} or {head: {mean, std, …}} for MDN heads.

    Heads this parser does not know are returned raw (a newer model's extra outputs survive)."""
    out: dict[str, Any] = {}
    for name, sl in slices.items():
        s = sl if isinstance(sl, slice) else slice(*sl)
        part = raw[..., s]
        kind, args = HEADS.get(name, ("raw", {}))
        if kind == "mdn":
            out[name] = parse_mdn(part, **mdn_args(name, part.shape[-1]))
        elif kind == "sigmoid":
            out[name] = sigmoid(part)
        elif kind == "softmax":
            out[name] = softmax(part.reshape(*part.shape[:-1], *args["shape"]), axis=-1)
        else:
            out[name] = part
    return out
