# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The car's logged modelV2: written by the synthetic route from a stand-in teacher, stored by ingest,
turned into a label set (`label --from-log`), and compared with teacher label sets (`verify-labels`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.data import arrays, files, shards
from spark_distill.label.from_log import label_from_log, verify_labels
from spark_distill.openpilot import contract as C
from spark_distill.openpilot import modelv2 as M

runner = CliRunner()
SLICES = {"vision": {k: [s.start, s.stop] for k, s in C.layout(C.VISION_HEADS, meta_width=48).items()},
          "policy": {k: [s.start, s.stop] for k, s in C.layout(C.POLICY_HEADS_V1).items()}}


def test_rows_and_raw_vectors_round_trip() -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal((40, max(b for _, b in SLICES["vision"].values()))).astype(np.float32)
    p = rng.standard_normal((40, max(b for _, b in SLICES["policy"].values()))).astype(np.float32)
    rows = M.rows_from_outputs(v, p, SLICES)
    assert rows.shape == (40, M.WIDTH)
    blocks = {b: (a, z) for b, a, z in M.columns()}
    assert np.isnan(rows[:, slice(*blocks["model_execution_time"])]).all()  # not a model output
    back = M.rows_from_outputs(*M.outputs_from_rows(rows, SLICES), SLICES)
    np.testing.assert_allclose(back, rows, atol=1e-5, equal_nan=True)  # leads included (2 hypotheses, 3 picks)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spark_distill.synth.teacher import write_teacher

    root = tmp_path_factory.mktemp("logged")
    write_teacher(root / "t1", seed=1)
    write_teacher(root / "t2", seed=2)
    assert runner.invoke(app, ["synth-route", str(root / "route"), "--segments", "2", "--seconds", "2",
                               "--modelv2-teacher", str(root / "t1")]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(root / "route"), "--out", str(root / "ds"), "--workers", "1",
                            "--clip-len", "10"])
    assert r.exit_code == 0, r.output
    for t in ("t1", "t2"):
        r = runner.invoke(app, ["label", str(root / "ds"), "--teacher", str(root / t), "--name", t, "--batch", "2",
                                "--backend", "onnxruntime"])
        assert r.exit_code == 0, r.output
    return root / "ds"


def test_ingest_stores_the_logged_model_per_frame(logged: Path) -> None:
    frames = shards.read_manifest(logged / "frames", shards.FRAMES_FORMAT)
    assert frames["modelv2_columns"] == M.columns()
    for seg in frames["segments"]:
        assert seg["logged_model"]["messages"] == 40 and seg["logged_model"]["mean_model_execution_time_s"] > 0
    sample = next(shards.iter_shard(logged / "frames" / "shard-000000.tar", shards.FRAMES_MEMBERS))
    rows = arrays.decode_array(sample["modelv2.npy.zst"])
    blocks = {b: (a, z) for b, a, z in M.columns()}
    acc = blocks["desired_acceleration"][0]
    assert rows.shape == (10, M.WIDTH) and np.isfinite(np.delete(rows, acc, 1)).all()
    assert np.isnan(rows[:, acc]).all(), "openpilot-logging's cereal has no action.desiredAcceleration"
    # the logged rows are what modeld would have filled from the teacher's outputs of these frames
    lab = next(shards.iter_shard(logged / "labels" / "t1" / "shard-000000.tar", shards.LABEL_MEMBERS))
    slices = shards.read_manifest(logged / "labels" / "t1", shards.LABELS_FORMAT)["output_slices"]
    mine = M.rows_from_outputs(arrays.decode_array(lab["vision.npy.zst"]).astype(np.float32),
                               arrays.decode_array(lab["policy.npy.zst"]).astype(np.float32), slices)
    keep = slice(0, blocks["model_execution_time"][0])
    np.testing.assert_allclose(mine[:, keep], rows[:, keep], rtol=1e-6, atol=1e-6)


def test_verify_labels_agrees_with_the_model_that_drove_and_catches_another(logged: Path) -> None:
    same = verify_labels(logged, "t1")
    assert same.agree and same.frames == 80 and max(f["relative"] for f in same.fields.values()) < 1e-6
    # the controls split-lateral (0.10.0) derives from the plan, against the logged action.desiredCurvature
    curv = same.controls["desired_curvature"]
    assert same.derived_from == "plan" and same.controls_agree and curv["frames"] == 80
    assert curv["relative"] < 1e-5 and curv["scale"] > 2e-4, curv  # a real curvature, matched, not two zeros
    assert list(same.controls) == ["desired_curvature"]
    assert "no modelV2.action.desiredAcceleration" in same.controls_missing["desired_acceleration"]
    other = verify_labels(logged, "t2")
    assert not other.agree and other.fields["position"]["relative"] > 0.1
    assert len(other.fields["position"]["per_horizon_mean_abs"]) == C.IDX_N
    assert other.controls_agree is False and other.controls["desired_curvature"]["relative"] > 0.1
    cli = subprocess.run([sys.executable, "-m", "spark_distill", "verify-labels", str(logged), "--labels", "t2"],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "disagree" in cli.stderr and "controls differ" in cli.stdout
    r = runner.invoke(app, ["verify-labels", str(logged), "--labels", "t1"])
    assert r.exit_code == 0 and "controls agree" in r.output and "│ curvature " in r.output
    assert "not compared: desired acceleration: the log has no modelV2.action.desiredAcceleration" in r.output


def test_label_from_log_trains_like_any_label_set(logged: Path, tmp_path: Path) -> None:
    m = label_from_log(logged, "fromlog")
    assert m["source"] == "log" and m["warmup_frames"] == 0 and "plan" in m["available_heads"]
    lab = next(shards.iter_shard(logged / "labels" / "fromlog" / "shard-000000.tar", shards.LABEL_MEMBERS))
    frames = next(shards.iter_shard(logged / "frames" / "shard-000000.tar", shards.FRAMES_MEMBERS))
    rows = M.rows_from_outputs(arrays.decode_array(lab["vision.npy.zst"]).astype(np.float32),
                               arrays.decode_array(lab["policy.npy.zst"]).astype(np.float32), m["output_slices"])
    logged_rows = arrays.decode_array(frames["modelv2.npy.zst"])
    blocks = {b: (a, z) for b, a, z in M.columns()}
    a, z = blocks["position"]
    np.testing.assert_allclose(rows[:, a:z], logged_rows[:, a:z], rtol=2e-3, atol=2e-3)  # float16 storage
    assert label_from_log(logged, "fromlog")["shards"] == m["shards"], "a rerun changes nothing"
    shard = logged / "labels" / "fromlog" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2048])  # damaged on disk: a rerun writes it again
    assert label_from_log(logged, "fromlog")["shards"] == m["shards"]
    assert files.sha256_file(shard) == m["shards"][0]["sha256"]
    r = runner.invoke(app, ["label", str(logged), "--from-log", "--name", "fromlog"])
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == f"next: spark-distill train {logged} --labels fromlog"
    r = runner.invoke(app, ["train", str(logged), "--labels", "fromlog", "--student", "compact-xs", "--batch-size",
                            "2", "--max-steps", "2", "--workers", "1", "--burn-in", "4", "--val-fraction", "0.5",
                            "--runs-dir", str(tmp_path), "--device", "cpu", "--log-every", "1"])
    assert r.exit_code == 0, r.output
    logged_metrics = [json.loads(x) for x in (tmp_path / "fromlog-compact-xs-none" / "metrics.jsonl").read_text()
                      .splitlines()]
    assert all(np.isfinite(x["loss"]) for x in logged_metrics)
    # the default head init takes each head's mean over the values the log has (its other heads are NaN)
    from safetensors.torch import load_file

    base = load_file(str(tmp_path / "fromlog-compact-xs-none" / "student.safetensors"))
    plan = base["heads.policy_plan.bias"]
    assert bool(plan.isfinite().all()) and plan.abs().max() > 1.0, "the logged plan's mean, metres from zero"
    r = runner.invoke(app, ["train", str(logged), "--labels", "fromlog", "--student", "openpilot", "--student-onnx",
                            str(logged.parent / "t1"), "--feature-cached", "on", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2


def test_from_log_without_logged_model_is_refused(labeled: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "spark_distill", "label", str(labeled), "--from-log"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no segment's log has modelV2" in r.stderr


def test_verify_labels_follows_the_smoothing_of_0_10_3(tmp_path: Path) -> None:
    """0.10.3's modeld logs curvature low-passed over frames (LAT_SMOOTH_SECONDS 0.1) at liveDelay + 0.1 s:
    verify-labels derives the same through clips of 10 frames (the low-pass carried from clip to clip) and agrees,
    where the derivation without the smoothing is far off."""
    from spark_distill.openpilot.controls import desired_controls
    from spark_distill.openpilot.outputs import parse_outputs
    from spark_distill.synth.releases import write_release

    write_release(tmp_path / "t", "0.10.3", seed=3)
    assert runner.invoke(app, ["synth-route", str(tmp_path / "route"), "--segments", "1", "--seconds", "3",
                               "--modelv2-teacher", str(tmp_path / "t")]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(tmp_path / "route"), "--out", str(tmp_path / "ds"), "--workers", "1",
                               "--clip-len", "10"]).exit_code == 0
    r = runner.invoke(app, ["label", str(tmp_path / "ds"), "--teacher", str(tmp_path / "t"), "--name", "t",
                            "--batch", "2", "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    labels = shards.read_manifest(tmp_path / "ds" / "labels" / "t", shards.LABELS_FORMAT)
    assert labels["layout"] == "split" and labels["smooth_seconds"] == [0.1, 0.3]
    same = verify_labels(tmp_path / "ds", "t")
    curv = same.controls["desired_curvature"]
    assert same.controls_agree and curv["frames"] == 60 and curv["relative"] < 1e-5, curv
    # the same labels without modeld's low-pass and smoothing seconds: not what the car logged
    slices, logged, raw = labels["output_slices"], [], []
    for e in shards.read_manifest(tmp_path / "ds" / "frames", shards.FRAMES_FORMAT)["shards"]:
        for f, lab in zip(shards.iter_shard(tmp_path / "ds" / "frames" / e["name"], shards.FRAMES_MEMBERS),
                          shards.iter_shard(tmp_path / "ds" / "labels" / "t" / e["name"], shards.LABEL_MEMBERS),
                          strict=True):
            f, lab = shards.decode_sample(f), shards.decode_sample(lab)
            parsed = {**parse_outputs(lab["vision"].astype(np.float32), slices["vision"]),
                      **parse_outputs(lab["policy"].astype(np.float32), slices["policy"])}
            raw.append(desired_controls(parsed, "plan", np.nan_to_num(f["car"][:, 0]),
                                        lat_delay=np.asarray(f["meta"]["lat_delay"]), long_delay=0.15)[0])
            logged.append(M.split_blocks(M.widen(f["modelv2"]))["desired_curvature"][:, 0])
    raw_c, logged_c = np.concatenate(raw), np.concatenate(logged)
    assert np.abs(raw_c - logged_c).mean() > 100 * curv["mean_abs"] and np.abs(raw_c - logged_c).mean() > 1e-5
