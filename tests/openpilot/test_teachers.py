# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Teacher loading: contract variants, metadata sources, refused pickles, inputs that cannot be filled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import onnx
import pytest

from spark_distill.errors import LabelError
from spark_distill.openpilot.metadata import safe_loads
from spark_distill.openpilot.teachers import load_teacher
from spark_distill.synth.releases import write_release
from spark_distill.synth.teacher import write_teacher


@pytest.fixture(scope="module")
def v1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v1")
    write_teacher(out, contract="v1")
    return out


def test_the_own_layout_and_a_release_load_with_names_and_shapes_from_the_graphs(v1: Path, tmp_path: Path) -> None:
    t, _, _ = load_teacher([v1])
    assert list(t.policy.inputs) == ["desire", "traffic_convention", "lateral_control_params", "prev_desired_curv",
                                     "features_buffer"]
    assert t.policy.inputs["features_buffer"] == ((1, 25, 512), "float32")
    assert t.vision.inputs["img"] == ((1, 12, 128, 256), "uint8") and t.image_inputs == {"img": "road",
                                                                                          "big_img": "wide"}
    assert t.policy.slices["plan"] == slice(0, 4955) and t.vision.slices_from == "driving_vision_metadata.pkl"
    write_release(tmp_path / "r", "0.10.3")  # 0.10.1 .. 0.10.3: desire_pulse, no lateral inputs
    t2, _, _ = load_teacher([tmp_path / "r" / "driving_vision.onnx", tmp_path / "r" / "driving_policy.onnx"])
    assert list(t2.policy.inputs) == ["desire_pulse", "traffic_convention", "features_buffer"]
    assert "desired_curvature" not in t2.policy.slices and t2.sha256 != t.sha256
    assert (t.layout.key, t2.layout.key) == ("split-lateral", "split")


def test_metadata_from_json_or_the_onnx_property(v1: Path, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    shutil.copytree(v1, folder)
    meta = pickle.loads((folder / "driving_policy_metadata.pkl").read_bytes())
    (folder / "driving_policy_metadata.pkl").unlink()
    (folder / "driving_policy_metadata.json").write_text(json.dumps(
        {"output_slices": {k: [v.start, v.stop] for k, v in meta["output_slices"].items()}}))
    (folder / "driving_vision_metadata.pkl").unlink()
    t, _, _ = load_teacher([folder])
    assert t.policy.slices_from == "driving_policy_metadata.json" and t.vision.slices_from == "onnx"
    assert t.policy.slices == meta["output_slices"]


def test_a_pickle_asking_for_code_is_refused(v1: Path, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    folder = tmp_path / "t"
    shutil.copytree(v1, folder)
    (folder / "driving_vision_metadata.pkl").write_bytes(pickle.dumps({"output_slices": Evil()}))
    with pytest.raises(LabelError, match=r"refused (posix|os)\.system"):
        load_teacher([folder])
    assert not (tmp_path / "pwned").exists()
    assert safe_loads(pickle.dumps({"a": slice(1, 2), "b": (1, 2.0, "x")}), source="t") == {"a": slice(1, 2),
                                                                                           "b": (1, 2.0, "x")}


def test_an_input_no_layout_has_is_one_line_naming_what_was_found(v1: Path, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    shutil.copytree(v1, folder)
    model = onnx.load(folder / "driving_policy.onnx")
    model.graph.input[2].name = "nav_features"
    for node in model.graph.node:
        node.input[:] = ["nav_features" if i == "lateral_control_params" else i for i in node.input]
    onnx.save(model, folder / "driving_policy.onnx")
    with pytest.raises(LabelError, match=r"unsupported openpilot model layout: a split model .* policy with .*"
                                         r"nav_features\[1, 2\].*; supported: supercombo.onnx") as e:
        load_teacher([folder])
    assert "\n" not in str(e.value)


def test_missing_slices_and_files_are_clear_errors(v1: Path, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    shutil.copytree(v1, folder)
    meta = pickle.loads((folder / "driving_vision_metadata.pkl").read_bytes())
    del meta["output_slices"]["hidden_state"]
    (folder / "driving_vision_metadata.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(LabelError, match="no 'hidden_state'"):
        load_teacher([folder])
    with pytest.raises(LabelError, match="not found"):
        load_teacher([tmp_path / "nowhere"])
    with pytest.raises(LabelError, match="--teacher takes"):
        load_teacher([])
