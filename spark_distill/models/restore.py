# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A trained student back from its run: architecture, base weights, adapters, merged.

A run folder holds `student.json` (what to build: the architecture and the output layouts),
`student.safetensors` (the base weights the adapters belong to), `config.yaml` and `checkpoints/`.
`load_trained(path)` accepts a run folder (its newest good checkpoint) or one checkpoint folder and
returns the student with its adapters merged into plain layers (export, eval, `train --student RUN`);
`build_architecture(spec)` builds the untrained network that a spec names. The run folder's files:
docs/formats.md, "Run folders".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from spark_distill.data import shards
from spark_distill.errors import ConfigError
from spark_distill.models.checkpoint import latest_checkpoint, load_checkpoint
from spark_distill.models.lora import ADAPTER_KEYS, apply_adapters, load_adapter_state, merge_adapters

SPEC_FILE = "student.json"


@dataclass
class TrainedStudent:
    student: nn.Module  # merged (plain layers only), eval mode, on the CPU
    spec: dict[str, Any]  # student.json
    run_dir: Path
    checkpoint: Path
    step: int
    adapted: list[str]  # names of the layers whose weights the adapters changed (merged)
    default_targets: list[str]  # the architecture's default adapter targets (a run continued from this one)
    base: dict[str, torch.Tensor]  # the base weights, by state-dict name (export writes changes back by value)


def _slices(layout: dict[str, list[int]]) -> dict[str, slice]:
    return {k: slice(*v) for k, v in layout.items()}


def build_architecture(arch: dict[str, Any], slices: dict[str, dict[str, list[int]]]) -> tuple[nn.Module, list[str]]:
    """(untrained student, its default adapter targets) for an architecture entry of student.json."""
    if arch["kind"] == "compact":
        from spark_distill.models.compact import DEFAULT_TARGETS, PRESETS, CompactStudent

        if arch["preset"] not in PRESETS:
            raise ConfigError(f"unknown compact preset {arch['preset']!r}")
        cfg = dataclasses.replace(PRESETS[arch["preset"]](), speed=bool(arch.get("speed", False)),
                                  plan_from_speed=bool(arch.get("plan_from_speed", False)))
        return CompactStudent(cfg, _slices(slices["vision"]), _slices(slices["policy"])), DEFAULT_TARGETS
    if arch["kind"] == "openpilot":
        from spark_distill.models import openpilot
        from spark_distill.openpilot.state import DEFAULT_LAT_DELAY, DEFAULT_LONG_DELAY

        onnx_dir = Path(arch["onnx"])
        if not onnx_dir.is_dir() or not any(onnx_dir.glob("*.onnx")):
            raise ConfigError(f"the openpilot student's ONNX models are gone from {onnx_dir}; they are needed to "
                              "rebuild it")
        # the delays the label set was made with (modeld's lateral_control_params / action_t); older runs: defaults
        student = openpilot.OpenpilotStudent.from_onnx([onnx_dir], lat_delay=float(arch.get("lat_delay",
                                                                                            DEFAULT_LAT_DELAY)),
                                                       long_delay=float(arch.get("long_delay", DEFAULT_LONG_DELAY)))
        return student, student.default_targets
    raise ConfigError(f"unknown student architecture {arch.get('kind')!r}")


def find_run(path: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder (its newest good checkpoint) or a checkpoint folder."""
    path = Path(path)
    if (path / "meta.json").exists() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if (path / SPEC_FILE).exists():
        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"{path}: no complete checkpoint (none written yet, or every one fails its checksum)")
        return path, ckpt
    raise ConfigError(f"{path}: not a training run (no {SPEC_FILE}) or checkpoint folder")


def _spec_problem(spec: Any) -> str | None:
    """What is wrong with a parsed student.json (None when load_trained can build from it)."""
    if not isinstance(spec, dict):
        return f"holds a JSON {type(spec).__name__}, not an object"
    arch = spec.get("architecture")
    if not (isinstance(arch, dict) and ((arch.get("kind") == "compact" and isinstance(arch.get("preset"), str))
                                        or (arch.get("kind") == "openpilot" and isinstance(arch.get("onnx"), str)))):
        return f"architecture is {arch!r}, expected a compact preset or an openpilot ONNX folder"
    if spec.get("adapter") not in ("none", "lora", "dora"):
        return f"adapter is {spec.get('adapter')!r}, expected none, lora or dora"
    for key in ("targets", "train_modules"):
        if not (isinstance(spec.get(key), list) and all(isinstance(t, str) for t in spec[key])):
            return f"{key} is {spec.get(key)!r}, expected a list of module-name globs"
    rank, alpha = spec.get("rank"), spec.get("alpha")
    if type(rank) is not int or rank < 1 or type(alpha) not in (int, float) or not alpha > 0:
        return f"rank {rank!r} / alpha {alpha!r} are not a positive int / number"
    return shards.output_slices_problem(spec.get("slices"))


def load_trained(path: Path, *, merge: bool = True) -> TrainedStudent:
    """The student of a run or checkpoint, adapters loaded and (by default) merged; CPU, eval mode."""
    run_dir, ckpt = find_run(path)
    try:
        spec = json.loads((run_dir / SPEC_FILE).read_text())
        base = load_file(str(run_dir / "student.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise ConfigError(f"{run_dir}: unreadable run files ({e})") from e
    if problem := _spec_problem(spec):
        raise ConfigError(f"{run_dir / SPEC_FILE}: {problem}; the file is damaged or was edited by hand")
    student, default_targets = build_architecture(spec["architecture"], spec["slices"])
    try:
        student.load_state_dict(base)
    except RuntimeError as e:
        raise ConfigError(f"{run_dir}: student.safetensors does not fit its architecture") from e
    tensors, state = load_checkpoint(ckpt)
    step = int(state["step"])
    if spec["adapter"] == "none":
        try:
            student.load_state_dict(tensors)
        except RuntimeError as e:
            raise ConfigError(f"{ckpt}: its tensors do not fit the run's student") from e
        adapted = sorted({k.rpartition(".")[0] for k in tensors})
    else:
        adapted = apply_adapters(student, targets=spec["targets"], rank=spec["rank"], alpha=spec["alpha"],
                                 dora=spec["adapter"] == "dora", train_modules=spec["train_modules"])
        load_adapter_state(student, tensors)
        adapted += sorted({k.rpartition(".")[0] for k in tensors
                           if not set(k.split(".")) & set(ADAPTER_KEYS)})  # fully trained modules
        if merge:
            merge_adapters(student)
    for p in student.parameters():
        p.requires_grad_(False)
    return TrainedStudent(student.eval(), spec, run_dir, ckpt, step, adapted, list(default_targets), base)
