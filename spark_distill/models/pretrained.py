# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The pre-trained student: a compact student distilled from the fitted teacher, shipped with the package so that
`train --student pretrained` fine-tunes a model that already drives (DoRA by default) instead of adapting random
weights.

A pre-trained student folder holds `student.json` (the architecture and the output layouts it was distilled for,
as a run's student.json), `student.safetensors` (its merged weights in fp16; buffers as they were) and
`pretrained.json` (provenance: how it was made, the teacher's file hashes, its held-out eval figures, the sha256
of its weights). `bench distill --save-student DIR` writes one (`save_pretrained`); the package ships those of
`SHIPPED/<name>/`, and `train --student pretrained` takes the one whose output layouts are the label set's
(`find_pretrained`). Entry points: `save_pretrained`, `find_pretrained`, `load_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spark_distill.data import files
from spark_distill.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "synth" / "student"  # package data: <name>/ per teacher layout
NAME = "pretrained"  # what `train --student` calls it
FILES = ("student.json", "student.safetensors", "pretrained.json")


def save_pretrained(run: Path, dest: Path, *, teacher: Path | None = None,
                    provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the trained student of `run` (a run folder or checkpoint; adapters merged) to `dest` as a
    pre-trained student; returns pretrained.json's content (plus `bytes`, the weights' file size)."""
    from spark_distill.models.restore import load_trained

    trained = load_trained(run)
    if trained.spec["architecture"].get("kind") != "compact":
        raise ConfigError(f"{run}: only a compact student is shipped as the pre-trained one")
    dest.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in trained.student.state_dict().items()}
    tmp = dest / "student.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(dest / "student.safetensors")
    spec = {"architecture": trained.spec["architecture"], "slices": trained.spec["slices"], "adapter": "none",
            "targets": [], "rank": 1, "alpha": 1.0, "train_modules": [], "clip_len": trained.spec.get("clip_len")}
    files.write_json_atomic(dest / "student.json", spec)
    teacher_files = {}
    if teacher is not None:
        teacher_files = {p.name: files.sha256_file(p) for p in sorted(teacher.iterdir())
                         if p.suffix in (".onnx", ".pkl")}
    info = {"name": dest.name, "source_run": str(trained.run_dir), "step": trained.step,
            "teacher_files": teacher_files, "torch": torch.__version__, **(provenance or {}),
            "files": {n: files.sha256_file(dest / n) for n in ("student.json", "student.safetensors")}}
    files.write_json_atomic(dest / "pretrained.json", info)
    return {**info, "bytes": (dest / "student.safetensors").stat().st_size}


def shipped() -> list[Path]:
    """The pre-trained student folders the package holds."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p for p in SHIPPED.iterdir() if all((p / f).exists() for f in FILES))


def _layout(slices: dict[str, dict[str, list[int]]]) -> str:
    width = {side: max((b for _, b in s.values()), default=0) for side, s in slices.items()}
    return f"vision {width.get('vision', 0)} / policy {width.get('policy', 0)} wide"


def find_pretrained(slices: dict[str, dict[str, list[int]]], labels: str, folders: list[Path] | None = None) -> Path:
    """The shipped pre-trained student whose output layouts are `slices` (the label set's); one-line ConfigError
    when none is shipped or none has that layout (the user's teacher is another openpilot release)."""
    import json

    folders = shipped() if folders is None else folders
    if not folders:
        raise ConfigError("no pre-trained student is shipped with this install; make one with `spark-distill bench "
                          "distill --student compact-xs --save-student DIR` and pass --student DIR/.. or use "
                          "--student compact-xs")
    layouts = []
    for folder in folders:
        spec = json.loads((folder / "student.json").read_text())
        if spec["slices"] == slices:
            return folder
        layouts.append(_layout(spec["slices"]))
    raise ConfigError(f"--student {NAME}: the pre-trained student's outputs ({', '.join(layouts)}) are not label set "
                      f"{labels}'s ({_layout(slices)}; its teacher is another openpilot release): train a built-in "
                      "student (--student compact-xs) on it instead")


def load_pretrained(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(student in fp32 with the pre-trained weights, its student.json), checked against pretrained.json's
    hashes."""
    import json

    from spark_distill.models.restore import build_architecture

    spec = json.loads((folder / "student.json").read_text())
    info = json.loads((folder / "pretrained.json").read_text())
    weights = folder / "student.safetensors"
    if files.sha256_file(weights) != info["files"]["student.safetensors"]:
        raise ConfigError(f"{weights}: its sha256 is not the one pretrained.json records; the file is damaged")
    student, _ = build_architecture(spec["architecture"], spec["slices"])
    state = load_file(str(weights))
    reference = student.state_dict()
    student.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return student, spec
