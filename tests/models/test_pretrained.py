# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A pre-trained student folder loads with its weights (fp16 on disk, the student's dtypes in memory) and is
refused in one line when its weights are not the ones pretrained.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spark_distill.data import files
from spark_distill.errors import ConfigError
from spark_distill.models.pretrained import load_pretrained
from spark_distill.models.restore import build_architecture
from spark_distill.openpilot import contract as C

SLICES = {"vision": {k: [s.start, s.stop] for k, s in C.layout(C.VISION_HEADS, meta_width=48).items()},
          "policy": {k: [s.start, s.stop] for k, s in C.layout(C.POLICY_HEADS_V1).items()}}


def test_loads_its_weights_and_refuses_damaged_ones(tmp_path: Path) -> None:
    arch = {"kind": "compact", "preset": "compact-xs", "speed": True, "plan_from_speed": True}
    torch.manual_seed(3)
    student, _ = build_architecture(arch, SLICES)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(tmp_path / "student.safetensors"))
    (tmp_path / "student.json").write_text(json.dumps({"architecture": arch, "slices": SLICES}))
    (tmp_path / "pretrained.json").write_text(json.dumps(
        {"files": {"student.safetensors": files.sha256_file(tmp_path / "student.safetensors")}}))
    loaded, spec = load_pretrained(tmp_path)
    assert spec["slices"] == SLICES
    for k, v in loaded.state_dict().items():
        assert v.dtype == student.state_dict()[k].dtype
        torch.testing.assert_close(v, state[k].to(v.dtype), rtol=0, atol=0, msg=k)
    data = bytearray((tmp_path / "student.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "student.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"its sha256 is not the one pretrained\.json records"):
        load_pretrained(tmp_path)


def test_the_shipped_student_is_the_fitted_teacher_s_and_loads() -> None:
    """The package's pre-trained student (`train --student pretrained`, the demo's default) loads with the weights
    pretrained.json records, belongs to the shipped fitted teacher (the teacher files it was distilled from are
    those), and drives: at 20 m/s its plan at 2 s is ~40 m ahead."""
    from spark_distill.models import pretrained
    from spark_distill.synth.fit import SHIPPED as FITTED

    folders = pretrained.shipped()
    assert [f.name for f in folders] == ["v2"]
    info = json.loads((folders[0] / "pretrained.json").read_text())
    assert info["teacher_files"] == {n: files.sha256_file(FITTED / "v1" / n) for n in info["teacher_files"]}
    assert len(info["teacher_files"]) == 4 and info["made_by"]["command"] == "python benchmarks/student_v2.py"
    student, spec = load_pretrained(folders[0])
    assert spec["architecture"]["plan_from_speed"] is True
    img = torch.zeros(1, 12, 128, 256, dtype=torch.uint8) + 100
    with torch.no_grad():
        _, policy, _ = student.eval()(img, img, torch.zeros(1, 8), torch.tensor([[1.0, 0.0]]),
                                      student.initial_state(1), torch.tensor([20.0]))
    hyp = policy[0, :4955].view(5, 991)[:, :495].view(5, 33, 15)
    x2 = hyp[:, int(abs(torch.as_tensor(C.T_IDXS) - 2.0).argmin()), 0]
    assert torch.all((x2 > 30) & (x2 < 50)), x2
