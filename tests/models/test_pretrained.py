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
