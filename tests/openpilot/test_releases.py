# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Teachers recognised by their files and inputs: every supported release's stand-in, the real releases' metadata
(pads, open and negative slices, slices only in the ONNX), unknown layouts and the compiled-pickle-only case as one
line each, and the heads parsed as openpilot parses them."""

from __future__ import annotations

import base64
import itertools
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from spark_distill.errors import LabelError, UnknownTeacherError
from spark_distill.openpilot.metadata import resolve_slices
from spark_distill.openpilot.outputs import is_mixture, parse_outputs
from spark_distill.openpilot.teachers import load_teacher
from spark_distill.synth.releases import RELEASES, write_release


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    out = {}
    for release in RELEASES:
        write_release(root / release, release, seed=1)
        out[release] = root / release
    return out


EXPECTED = {  # release: (layout, member widths, plan mixture, lead mixture, where the slices come from)
    "0.9.6": ("supercombo-20hz", {"vision": 1539, "policy": 4965}, True, True, "supercombo_metadata.pkl"),
    "0.9.7": ("supercombo-20hz", {"vision": 1539, "policy": 4965}, True, True, "supercombo_metadata.pkl"),
    "mid-2024": ("supercombo-20hz", {"vision": 1544, "policy": 4965}, True, True, "supercombo_metadata.pkl"),
    "late-2024": ("supercombo-5hz", {"vision": 1534, "policy": 4965}, True, True, "supercombo_metadata.pkl"),
    "0.10.0": ("split-lateral", {"vision": 1536, "policy": 4968}, True, True, "driving_vision_metadata.pkl"),
    "0.10.3": ("split", {"vision": 1576, "policy": 1000}, False, False, "driving_vision_metadata.pkl"),
    "0.11": ("driving-supercombo", {"vision": 1576, "policy": 1002}, False, False, "onnx"),
}


@pytest.mark.parametrize("release", list(RELEASES))
def test_each_release_is_recognised_from_its_files_and_inputs(stand_ins: dict[str, Path], release: str) -> None:
    teacher, _, policy = load_teacher([stand_ins[release]])
    layout, widths, plan_mhp, lead_mhp, source = EXPECTED[release]
    assert teacher.layout.key == layout and teacher.widths == widths and teacher.vision.slices_from == source
    assert (policy is None) == teacher.combined == (layout in ("supercombo-20hz", "supercombo-5hz",
                                                               "driving-supercombo"))
    heads = teacher.slices
    assert "pad" not in heads and heads["hidden_state"].stop - heads["hidden_state"].start == 512
    plan, lead = heads["plan"], heads["lead"]
    assert is_mixture("plan", plan.stop - plan.start) == plan_mhp and is_mixture("lead", lead.stop - lead.start) == \
        lead_mhp
    members = teacher.member_slices()
    assert set(members["policy"]) <= {"plan", "desire_state", "desired_curvature", "action"}
    for member, slices in members.items():  # every head fits its member and no two overlap
        spans = sorted((s.start, s.stop) for s in slices.values())
        assert spans[-1][1] <= widths[member] and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_the_real_metadata_slices_resolve_against_the_output_width() -> None:
    # 0.10.3's vision and policy (pad 0:None: no padding; -2:None), mid-2024's hidden_state 5997:-3
    vision = resolve_slices({"lead": slice(917, 1061), "hidden_state": slice(1064, 1576), "pad": slice(0, None)},
                            1576, "v")
    assert vision == {"lead": slice(917, 1061), "hidden_state": slice(1064, 1576)}
    assert resolve_slices({"plan": slice(0, 990), "desire_state": slice(990, 998), "pad": slice(-2, None)}, 1000,
                          "p") == {"plan": slice(0, 990), "desire_state": slice(990, 998)}
    assert resolve_slices({"hidden_state": slice(5997, -3), "pad": slice(-3, None)}, 6512, "s") == {
        "hidden_state": slice(5997, 6509)}
    assert resolve_slices({"hidden_state": slice(5992, None)}, 6504, "s") == {"hidden_state": slice(5992, 6504)}
    with pytest.raises(LabelError, match="'plan' is 0:1200, outside the model's output of 1000 values"):
        resolve_slices({"plan": slice(0, 1200)}, 1000, "p")


def test_slices_only_in_the_onnx_property_and_model_checkpoint_are_read(stand_ins: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    folder = tmp_path / "t"
    shutil.copytree(stand_ins["0.11"], folder)
    assert sorted(p.name for p in folder.iterdir()) == ["driving_supercombo.onnx"]
    props = {p.key: p.value for p in onnx.load(folder / "driving_supercombo.onnx").metadata_props}
    assert pickle.loads(base64.b64decode(props["output_slices"]))["pad"] == slice(-2, None)
    teacher, _, _ = load_teacher([folder])
    assert teacher.vision.slices["action"] == slice(2062, 2066) and teacher.vision.slices_from == "onnx"
    meta = pickle.loads((stand_ins["0.10.3"] / "driving_policy_metadata.pkl").read_bytes())
    assert "model_checkpoint" in meta and meta["output_slices"]["pad"] == slice(-2, None)


def test_only_a_compiled_tinygrad_pickle_is_never_loaded(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "driving_supercombo_tinygrad.pkl").write_bytes(
        b"cos\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR.")
    with pytest.raises(UnknownTeacherError, match=r"driving_supercombo_tinygrad\.pkl: a compiled tinygrad pickle "
                                                  r"is a pickle of code, never loaded") as e:
        load_teacher([folder])
    assert "\n" not in str(e.value) and not marker.exists()
    # beside an ONNX without slices: the error says why the pickle is not read
    shutil.copy(stand_ins["0.11"] / "driving_supercombo.onnx", folder)
    model = onnx.load(folder / "driving_supercombo.onnx")
    del model.metadata_props[:]
    onnx.save(model, folder / "driving_supercombo.onnx")
    with pytest.raises(LabelError, match=r"driving_supercombo_tinygrad\.pkl is a pickle of compiled code and is "
                                         r"never loaded"):
        load_teacher([folder])


def test_unknown_layouts_are_one_line_naming_what_was_found(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    three = tmp_path / "three"  # 2026: vision + on-policy + off-policy
    three.mkdir()
    for name in ("driving_vision.onnx", "driving_on_policy.onnx", "driving_off_policy.onnx"):
        shutil.copy(stand_ins["0.10.3"] / "driving_vision.onnx", three / name)
    queue = tmp_path / "queue"  # driving.onnx with a full-rate queue
    queue.mkdir()
    shutil.copy(stand_ins["0.11"] / "driving_supercombo.onnx", queue / "driving.onnx")
    stateful = tmp_path / "stateful"  # history inside the graph: a next-state output beside the flat one
    stateful.mkdir()
    model = onnx.load(stand_ins["0.11"] / "driving_supercombo.onnx")
    model.graph.output.append(onnx.helper.make_tensor_value_info("features_buffer", onnx.TensorProto.FLOAT,
                                                                  [1, 24, 512]))
    onnx.save(model, stateful / "driving_supercombo.onnx")
    renamed = tmp_path / "renamed"  # 0.11 with a 25-entry history: no layout has that
    renamed.mkdir()
    shutil.copytree(stand_ins["0.10.3"], renamed, dirs_exist_ok=True)
    policy = onnx.load(renamed / "driving_policy.onnx")
    policy.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 100
    onnx.save(policy, renamed / "driving_policy.onnx")
    for folder, found in ((three, "the 2026 three-file split"), (queue, "driving.onnx"),
                          (stateful, "has 2 outputs"), (renamed, r"desire_pulse\[1, 100, 8\]"),
                          (tmp_path, "holds no ONNX model")):
        with pytest.raises(UnknownTeacherError, match=rf"unsupported openpilot model layout: .*{found}.*; "
                                                      "supported: supercombo.onnx") as e:
            load_teacher([folder])
        assert "\n" not in str(e.value)


def test_lead_and_plan_heads_are_single_or_mixture_by_width_and_the_action_head_parses() -> None:
    rng = np.random.default_rng(0)
    single = parse_outputs(rng.standard_normal((4, 144 + 990 + 4)).astype(np.float32),
                           {"lead": slice(0, 144), "plan": slice(144, 1134), "action": slice(1134, 1138)})
    assert single["lead"]["mean"].shape == (4, 3, 6, 4) and "weights" not in single["lead"]
    assert single["plan"]["mean"].shape == (4, 33, 15) and "weights" not in single["plan"]
    raw = rng.standard_normal((4, 144)).astype(np.float32)
    lead = parse_outputs(raw, {"lead": slice(0, 144)})["lead"]
    np.testing.assert_array_equal(lead["mean"], raw[:, :72].reshape(4, 3, 6, 4))  # 72 means, then 72 log-stds
    np.testing.assert_allclose(lead["std"], np.exp(raw[:, 72:]).reshape(4, 3, 6, 4), rtol=1e-6)
    mixture = parse_outputs(rng.standard_normal((4, 102)).astype(np.float32), {"lead": slice(0, 102)})["lead"]
    assert mixture["mean"].shape == (4, 3, 6, 4) and mixture["weights"].shape == (4, 2, 3)
    action = single["action"]
    assert action["mean"].shape == (4, 2) and action["std"].shape == (4, 2)
