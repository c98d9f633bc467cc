# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Checkpoints: written atomically, verified on load, with a fall-back to the previous good one.

A checkpoint is a folder `step-NNNNNNNN/` holding the trainable tensors, named for what they hold:
`weights.safetensors` (the whole student, when every parameter trains: `--adapter none`) or
`adapter.safetensors` (the adapters, and any modules trained fully beside them); `state.pt` (optimizer,
scaler, RNG states, loader position; plain tensors and containers, loadable with `weights_only=True`) and
`meta.json` (step, sha256 of both files). Runs written before the whole student got its own name keep it in
`adapter.safetensors`: `meta.json` names the file, and either name loads. It is written under a temporary
name and renamed, so a half-written checkpoint is never seen as one; a torn or edited one fails its
checksum and the previous one is used. Entry points: `save_checkpoint`, `latest_checkpoint`, `load_checkpoint`.
The files: docs/formats.md, "Checkpoints".
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from spark_distill.data import files
from spark_distill.errors import TrainError

log = logging.getLogger(__name__)
KEEP = 3  # checkpoints kept; older ones are deleted after a new one lands


WEIGHTS = "weights.safetensors"  # the whole student (every parameter and buffer trains: --adapter none)
ADAPTER = "adapter.safetensors"  # adapters, and modules trained fully beside them (also old runs' whole students)
STATE = "state.pt"


def save_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], *,
                    whole: bool = False) -> Path:
    """Write checkpoint `step` into `folder` atomically (the tensors as WEIGHTS when they are the `whole`
    student, else ADAPTER); prune to the newest KEEP."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    name = WEIGHTS if whole else ADAPTER
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
    torch.save(state, tmp / STATE)
    meta = {"step": step, "sha256": {n: files.sha256_file(tmp / n) for n in (name, STATE)}}
    files.write_json_atomic(tmp / "meta.json", meta)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    files.fsync_dir(folder)
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _tensor_file(path: Path) -> str | None:
    """The name of the checkpoint's tensor file (WEIGHTS or ADAPTER) when both its files pass their checksums."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        hashes = meta["sha256"]
        if not isinstance(hashes, dict):
            return None
        name = next((n for n in (WEIGHTS, ADAPTER) if set(hashes) == {n, STATE}), None)
        return name if name and all(files.sha256_file(path / n) == h for n, h in hashes.items()) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _valid(path: Path) -> bool:
    return _tensor_file(path) is not None


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that passes its checksum (a torn newest one is skipped with a warning)."""
    for path in sorted(folder.glob("step-*"), reverse=True):
        if _valid(path):
            return path
        log.warning("checkpoint %s fails its checksum; using an older one", path.name)
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable tensors, state) of a checkpoint folder, verified."""
    name = _tensor_file(path)
    if name is None:
        raise TrainError(f"{path}: not a complete checkpoint (missing files or checksum mismatch)")
    try:
        tensors = load_file(str(path / name))
        state = torch.load(path / STATE, weights_only=True)
    except Exception as e:  # a damaged file: torch.load and safetensors raise many types (zip, pickle, header)
        first = (str(e).splitlines() or [""])[0][:120]
        raise TrainError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(state, dict) or not set(state) >= _STATE_KEYS or not all(
            isinstance(state[k], int) and not isinstance(state[k], bool) and state[k] >= 0
            for k in ("step", "epoch", "position")):
        raise TrainError(f"{path}: state.pt is not a training state ({', '.join(sorted(_STATE_KEYS))})")
    return tensors, state


_STATE_KEYS = frozenset({"optimizer", "torch_rng", "step", "epoch", "position"})
