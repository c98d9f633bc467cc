# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Eval: metrics against hand-made differences; checkpoint and exported ONNX give the same numbers
(compact combined, openpilot split); side-by-side table, metrics.json and plots from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.evaluate.metrics import compare, headline, plan_xy
from spark_distill.export.run import ExportConfig, export
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs
from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train

SLICES = {"vision": {k: [s.start, s.stop] for k, s in C.layout(C.VISION_HEADS, meta_width=48).items()},
          "policy": {k: [s.start, s.stop] for k, s in C.layout(C.POLICY_HEADS_V1).items()}}


def _vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = lambda side: max(b for _, b in SLICES[side].values())  # noqa: E731
    return (rng.standard_normal((n, width("vision"))).astype(np.float32),
            rng.standard_normal((n, width("policy"))).astype(np.float32))


def test_metrics_by_hand() -> None:
    tv, tp = _vectors(6)
    same = compare(tv, tp, tv, tp, SLICES)
    assert same["plan"]["mean"] == 0 and same["lane_lines"]["mean"] == 0 and same["desire_state_agreement"] == 1
    assert same["lead"]["distance_error_m"] == 0
    sp = tp.copy()
    a, b = SLICES["policy"]["plan"]
    plan = sp[:, a:b].reshape(6, C.PLAN_MHP_N, -1)
    means = plan[:, :, : C.IDX_N * C.PLAN_WIDTH].reshape(6, C.PLAN_MHP_N, C.IDX_N, C.PLAN_WIDTH)
    means[..., 1] += 1.0  # every hypothesis 1 m further right
    sp[:, a:b] = plan.reshape(6, -1)
    moved = compare(tv, sp, tv, tp, SLICES)
    assert moved["plan"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert moved["plan"]["at"]["2"] == pytest.approx(1.0, abs=1e-5) and moved["lane_lines"]["mean"] == 0
    # the driven path is the teacher's plan: the teacher scores 0, the shifted student 1 m, on valid horizons
    path = plan_xy(parse_outputs(tp, SLICES["policy"])).astype(np.float32)
    valid = np.zeros((6, C.IDX_N), bool)
    valid[:, :12] = True
    drive = compare(tv, sp, tv, tp, SLICES, gt=(path, valid))["drive"]
    assert drive["teacher"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert drive["student"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert drive["student"]["per_horizon"][12] is None and drive["frames_with_future"] == 6
    # horizons past the last one with a value have none (not the last value repeated): 12 horizons reach 1.18 s
    assert drive["longest_horizon_s"] == pytest.approx(C.T_IDXS[11]) == pytest.approx(1.1816, abs=1e-4)
    assert drive["student"]["at"] == {"1": pytest.approx(1.0, abs=1e-5), "2": None, "4": None, "10": None}
    assert drive["teacher"]["at"]["2"] is None and json.loads(json.dumps(drive))["student"]["at"]["10"] is None


def test_checkpoint_and_exports_agree_from_the_cli(labeled: Path, tmp_path: Path) -> None:
    base = dict(root=labeled, labels="set", runs_dir=tmp_path / "runs", batch_size=2, max_steps=3, lr=1e-2,
                warmup_steps=1, burn_in=4, val_fraction=0.25, mask_warmup=False, workers=1, adapter_rank=4,
                adapter_alpha=8.0, device="cpu", checkpoint_every=100)
    train(TrainConfig(run="a", student="compact-xs", adapter="dora", **base))
    train(TrainConfig(run="b", student="openpilot", student_onnx=labeled / "teacher", **base))
    stages: dict[str, list[tuple[int, int, str]]] = {"a": [], "b": []}
    for run in stages:
        export(ExportConfig(source=tmp_path / "runs" / run, output=tmp_path / f"{run}-onnx", check="none"),
               on_progress=lambda *a, run=run: stages[run].append(a))
    # export's progress: each stage as it begins, then all done; the same count for both formats
    assert [n for _, _, n in stages["a"]] == ["merging the adapters", "writing the ONNX graph", "ONNX Runtime vs torch",
                                              "tinygrad vs ONNX Runtime", "latency, writing the files", ""]
    assert [n.split(":")[0] for _, _, n in stages["b"]][1:3] == ["driving_vision.onnx", "driving_policy.onnx"]
    assert [(d, t) for d, t, _ in stages["b"]] == [(k, 5) for k in range(6)] == [(d, t) for d, t, _ in stages["a"]]
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", str(labeled), "--labels", "set", "--run", str(tmp_path / "runs" / "a"),
                                 "--model", str(tmp_path / "a-onnx"), "--run", str(tmp_path / "runs" / "b"),
                                 "--model", str(tmp_path / "b-onnx"), "--include-warmup", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    n = len(m["segments"])
    assert re.search(rf"^eval: {n}/{n} segments in \d:\d\d:\d\d", r.output, re.M), r.output  # piped: a line
    models = m["models"]
    assert list(models) == ["a", "b", "a-onnx/driving_model.onnx", "b-onnx (split-lateral)"]
    assert m["segments"], "the runs' validation segments"
    for run, onnx_name in (("a", "a-onnx/driving_model.onnx"), ("b", "b-onnx (split-lateral)")):
        x, y = models[run], models[onnx_name]
        for key in ("plan", "lane_lines", "road_edges"):
            np.testing.assert_allclose(x[key]["per_horizon"], y[key]["per_horizon"], rtol=1e-4, atol=1e-5)
        assert x["frames"] == y["frames"] > 0
    assert models["a"]["plan"]["mean"] != models["b"]["plan"]["mean"]
    assert "drive" in models["a"] and "plan ADE (m)" in r.output
    row = headline(models["a"])  # the table's rows: the path driven at 2 s, the student's and the teacher's
    assert row["teacher vs driven @2s (m)"] == models["a"]["drive"]["teacher"]["at"]["2"]
    assert row["driven path @2s (m)"] == models["a"]["drive"]["student"]["at"]["2"]
    for png in ("errors_vs_horizon.png", "frames.png", "driver_offset.png"):
        assert (out / png).stat().st_size > 5000
    # default options on 2 s segments (all inside the teacher's 5 s warm-up): scored with the warm-up, one note
    plain = CliRunner().invoke(app, ["eval", str(labeled), "--labels", "set", "--run", str(tmp_path / "runs" / "a"),
                                     "--out", str(tmp_path / "eval-plain")])
    assert plain.exit_code == 0, plain.output
    assert plain.output.count("note: warm-up included") == 1, plain.output
    m_plain = json.loads((tmp_path / "eval-plain" / "metrics.json").read_text())
    assert m_plain["warmup_frames"] == 0 and m_plain["segments"] == m["segments"]
    assert m_plain["models"]["a"]["frames"] == models["a"]["frames"]
    np.testing.assert_allclose(m_plain["models"]["a"]["plan"]["per_horizon"], models["a"]["plan"]["per_horizon"])
    bad = CliRunner().invoke(app, ["eval", str(labeled), "--labels", "set", "--model", str(tmp_path)])
    assert bad.exit_code == 2 and "not a training run" in bad.output


def test_an_export_finds_its_run_or_says_it_cannot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An export names its training run (absolute since exports record it so; relative ones, as older exports
    wrote them, are looked up beside the export); a run that cannot be found is a note, not a silent switch to
    every segment."""
    from spark_distill.evaluate.run import _source_run

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    for name, source in (("abs", str(run)), ("rel", "runs/a"), ("lost", "/nowhere/runs/a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "export.json").write_text(json.dumps({"source": source}))
    assert _source_run(tmp_path / "abs") == run
    assert _source_run(tmp_path / "rel" / "driving_model.onnx") == tmp_path / "runs" / "a"
    with caplog.at_level("INFO", logger="spark_distill.notes"):
        assert _source_run(tmp_path / "lost") is None
    assert "/nowhere/runs/a is not found" in caplog.text and "every segment" in caplog.text
