# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Every supported layout end to end from the CLI, default options: a release stand-in's label set -> `train
--student openpilot --max-steps 2` -> `export` (the tinygrad check included) -> `eval`. The export is exactly the
teacher's file set and metadata, loads as a teacher of the same layout and agrees with the torch student; eval
reports the release's controls, the same for the run (torch) and its export (ONNX Runtime)."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.openpilot.metadata import safe_loads
from spark_distill.openpilot.releases import LAYOUTS
from spark_distill.openpilot.teachers import load_teacher
from tests.releases import LAYOUT_RELEASES, label_set, release_datasets

# the 20 Hz supercombo's 99-frame history makes its steps the slowest; the others run in the default selection too
SLOW = {"supercombo-20hz", "supercombo-5hz"}


@pytest.fixture(scope="module")
def root(tici_route, tmp_path_factory) -> Path:
    return release_datasets(tmp_path_factory, tici_route[0])


def _cli(*argv: str) -> str:
    r = CliRunner().invoke(app, list(argv))
    assert r.exit_code == 0, r.output
    return r.output


def _props(m: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in m.metadata_props}


@pytest.mark.parametrize("layout", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k
                                    for k in LAYOUT_RELEASES])
def test_train_export_eval(root: Path, layout: str, tmp_path: Path) -> None:
    release = LAYOUT_RELEASES[layout]
    teacher_dir, labels = root / "teachers" / release, label_set(release)
    run, out = tmp_path / "runs" / "r", tmp_path / "export"
    _cli("train", str(root), "--labels", labels, "--student", "openpilot", "--student-onnx", str(teacher_dir),
         "--max-steps", "2", "--batch-size", "1", "--runs-dir", str(tmp_path / "runs"), "--run", "r",
         "--device", "cpu", "--val-fraction", "0.5", "--lr", "1e-2")
    spec = json.loads((run / "student.json").read_text())
    # labels made with each segment's own delays: the student takes them per frame, no override in its spec
    assert json.loads((root / "labels" / labels / "manifest.json").read_text())["lat_delay"] is None
    assert "lat_delay" not in spec["architecture"] and "long_delay" not in spec["architecture"]
    printed = _cli("export", str(run), "-o", str(out), "--check", "tinygrad")
    assert "release (fp32)" in printed
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "release" and info["layout"] == layout and info["written_back"]
    assert info["max_abs_diff_random"] <= 1e-4 and info["max_abs_diff_real"] <= 1e-4
    assert max(info["tinygrad"]["max_abs_diff"].values()) <= 1e-4
    # exactly the teacher's file set: the same ONNX files and, where the release has them, the same pkls
    shipped = sorted(p.name for p in teacher_dir.iterdir())
    assert sorted(p.name for p in out.iterdir() if p.name != "export.json") == shipped
    assert set(info["tinygrad"]["max_abs_diff"]) == {f"{n}/outputs" for n in shipped if n.endswith(".onnx")}
    for name in (n for n in shipped if n.endswith(".onnx")):
        a, b = onnx.load(str(teacher_dir / name)), onnx.load(str(out / name))
        assert [(i.name, i.type) for i in a.graph.input] == [(i.name, i.type) for i in b.graph.input]
        assert [(o.name, o.type) for o in a.graph.output] == [(o.name, o.type) for o in b.graph.output]
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
        assert _props(a)["output_slices"] == _props(b)["output_slices"]
        if release == "0.11":  # its slices live only in the ONNX, with the pad as shipped
            assert pickle.loads(base64.b64decode(_props(b)["output_slices"]))["pad"] == slice(-2, None)
    for name in (n for n in shipped if n.endswith("_metadata.pkl")):
        ref = pickle.loads((teacher_dir / name).read_bytes())
        got = safe_loads((out / name).read_bytes(), source=name)
        assert got.keys() == ref.keys() and got["output_slices"] == ref["output_slices"]  # pad entries as shipped
        assert got["input_shapes"] == ref["input_shapes"] and got["output_shapes"] == ref["output_shapes"]
        changed = [k for k in ref if got[k] != ref[k]]
        assert len(changed) == 1 and got[changed[0]].startswith(ref[changed[0]] + "+r@")
    exported, _, _ = load_teacher([out])  # the label pass's own loader
    assert exported.layout is LAYOUTS[layout] and exported.layout.topology == ("combined" if len(
        [n for n in shipped if n.endswith(".onnx")]) == 1 else "split")
    # eval: the run in torch and its export in ONNX Runtime, with the release's controls
    ev = tmp_path / "eval"
    printed = _cli("eval", str(root), "--labels", labels, "--run", str(run), "--model", str(out), "--out", str(ev),
                   "--include-warmup")
    assert "curvature vs driven (1/km)" in printed
    models = json.loads((ev / "metrics.json").read_text())["models"]
    assert list(models) == ["r", f"export ({layout})"]
    torch_side, onnx_side = (models[k]["controls"] for k in models)
    assert torch_side["derived_from"] == LAYOUTS[layout].control
    assert torch_side["driven"]["from"].startswith("carState.yawRate") and torch_side["driven"]["frames"] > 0
    for key in ("curvature_vs_teacher", "accel_vs_teacher"):
        assert np.isfinite(torch_side[key]) and torch_side[key] == pytest.approx(onnx_side[key], rel=1e-3, abs=1e-6)
    assert torch_side["driven"]["student"] == pytest.approx(onnx_side["driven"]["student"], rel=1e-3, abs=1e-6)
    assert torch_side["driven"]["teacher"] == onnx_side["driven"]["teacher"] and np.isfinite(
        torch_side["driven"]["teacher"])
