# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench distill` at a tiny size on the CPU: the student gets closer to the teacher than where it
started (heads at PyTorch's init, so that 8 steps show it; seed 6: held-out speeds like the training drives'),
personalisation runs and is reported, and the pre-trained student it saves is what `train --student pretrained`
fine-tunes (DoRA), refused in one line for a label set of another layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.errors import ConfigError
from spark_distill.models import pretrained


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("distill")
    r = CliRunner().invoke(app, ["bench", "distill", "--student", "compact-xs", "--train-drives", "2",
                                 "--held-drives", "1", "--seconds", "7", "--steps", "8", "--evals", "1",
                                 "--batch-size", "2", "--lr", "0.003", "--head-init", "random", "--seed", "6",
                                 "--driver", "keep-left:0.4",
                                 "--driver-drives", "1", "--driver-held", "1", "--tune-steps", "4", "--workers", "1",
                                 "--device", "cpu", "--workdir", str(work), "--keep", "--out", str(work / "out"),
                                 "--save-student", str(work / "pre")])
    assert r.exit_code == 0, r.output
    return work, r.output


@pytest.mark.slow
def test_student_gets_closer_to_the_teacher(bench: tuple[Path, str]) -> None:
    work, output = bench
    summary = json.loads((work / "out" / "distill.json").read_text())
    points = summary["curves"]["compact-xs"]
    assert [p["step"] for p in points] == [0, 8] and points[-1]["frames"] == 8 * 2 * 20
    first, last = points[0]["row"], points[-1]["row"]
    assert last["vs_teacher@1"] < first["vs_teacher@1"], (first, last)
    assert last["teacher_driven@1"] == first["teacher_driven@1"] > 0  # the same held-out frames
    assert re.search(r"^\s+compact-xs\s+8\s+[\d.]+\s+320\s", output, re.M), output
    assert (work / "out" / "distill.png").stat().st_size > 10_000
    assert (work / "out" / "driver_offset.png").stat().st_size > 5_000
    p = summary["personalisation"]
    assert p["driver"] == "keep-left:0.4" and p["tuned"]["driven@1"] is not None
    assert "personalised vs the path driven at 2 s" in output


@pytest.mark.slow
def test_pretrained_student_is_fine_tuned_with_dora(bench: tuple[Path, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    work, output = bench
    pre = work / "pre"
    info = json.loads((pre / "pretrained.json").read_text())
    size = (pre / "student.safetensors").stat().st_size
    assert 3e6 < size < 5e6, "compact-xs in fp16: a few MB"
    assert info["files"]["student.safetensors"] and info["teacher_files"]["driving_policy.onnx"]
    assert f"({size / 1e6:.2f} MB)" in output
    shipped = tmp_path / "shipped"
    shutil.copytree(pre, shipped / "v1")
    monkeypatch.setattr(pretrained, "SHIPPED", shipped)
    r = CliRunner().invoke(app, ["train", str(work / "driver-train"), "--labels", "teacher", "--student",
                                 "pretrained", "--runs-dir", str(tmp_path / "runs"), "--max-steps", "1",
                                 "--batch-size", "1", "--workers", "1", "--device", "cpu", "--val-fraction", "0.5"])
    assert r.exit_code == 0, r.output
    spec = json.loads((tmp_path / "runs" / "teacher-pretrained-dora" / "student.json").read_text())
    assert spec["adapter"] == "dora" and spec["source"] == "pretrained"
    assert spec["architecture"] == {"kind": "compact", "preset": "compact-xs", "speed": True,
                                    "plan_from_speed": True}
    slices = spec["slices"]
    other = {"vision": slices["vision"], "policy": {**slices["policy"], "pad": [9000, 9010]}}
    with pytest.raises(ConfigError, match="another openpilot release") as e:
        pretrained.find_pretrained(other, "op")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(pretrained, "SHIPPED", tmp_path / "none")
    r = CliRunner().invoke(app, ["train", str(work / "driver-train"), "--labels", "teacher", "--student",
                                 "pretrained", "--runs-dir", str(tmp_path / "runs2"), "--device", "cpu"])
    assert r.exit_code == 2 and "no pre-trained student is shipped" in r.output


def test_personalisation_can_fine_tune_the_teacher_s_own_model(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--tune-base teacher: the driver's drives fine-tune `train --student openpilot` on the teacher's folder (DoRA,
    the driven-path loss), and eval scores the teacher's folder as the untuned model; a base it does not know is
    refused. (The bench's real run with it: benchmarks/distill.md.)"""
    import dataclasses

    from spark_distill.bench import distill

    seen: dict = {}
    monkeypatch.setattr("spark_distill.train.loop.train", lambda cfg: seen.setdefault("train", cfg))
    row = {"drive": {"student": {"at": {"1": 0.1, "2": 0.2, "4": 0.4}}, "teacher": {"at": {"1": 0.1, "2": 0.3}}},
           "plan": {"at": {}}, "lane_lines": {"mean": 0.01}, "lead": {"distance_error_m": 0.02}}
    monkeypatch.setattr(distill, "score", lambda held, runs, out, device: seen.setdefault("runs", runs) and
                        {str(r): row for r in runs})
    cfg = distill.DistillBench(students=("compact-xs",), driver="keep-left:0.4", tune_base="teacher", device="cpu")
    teacher = tmp_path / "teacher"
    p = distill.personalise(cfg, teacher, tmp_path / "d", tmp_path / "h", tmp_path / "runs", tmp_path / "out")
    tcfg = seen["train"]
    assert (tcfg.student, tcfg.student_onnx, tcfg.adapter, tcfg.loss.gt) == ("openpilot", teacher, "dora", 1.0)
    assert tcfg.lr == 5e-4, "the teacher's trained model overshoots at the student's 2e-3"
    del seen["train"]
    distill.personalise(dataclasses.replace(cfg, tune_lr=1e-3), teacher, tmp_path / "d", tmp_path / "h",
                        tmp_path / "runs", tmp_path / "out")
    assert seen["train"].lr == 1e-3, "--tune-lr given wins"
    assert seen["runs"] == [teacher, tmp_path / "runs" / "personalised"]
    assert p["base_model"] == "teacher" and p["tuned"]["driven@2"] == 0.2
    assert "the teacher's own model + DoRA" in distill.personal_lines(p)[0]
    with pytest.raises(ConfigError, match="--tune-base"):
        distill.DistillBench(tune_base="mine")


@pytest.mark.slow
def test_a_run_stopped_early_is_scored_where_it_stopped(bench: tuple[Path, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A device call's time limit stops training by SIGTERM, which checkpoints: that step joins the curve (the
    GPU run that stopped at step 617 of 1500 had only step 0 scored), with frames at the batch the run resolved."""
    import functools

    from spark_distill.bench import distill
    from spark_distill.train import config

    work, _ = bench
    monkeypatch.setattr(config, "TrainConfig", functools.partial(config.TrainConfig, stop_at=3))
    cfg = distill.DistillBench(students=("compact-xs",), train_drives=2, held_drives=1, seconds=7, steps=8, evals=1,
                               batch_size=64, device="cpu")
    result, snaps = distill.train_student(cfg, "compact-xs", work / "train", tmp_path / "runs",
                                          tmp_path / "snaps")
    assert result.interrupted and result.steps == 3
    batch = distill.run_batch(tmp_path / "runs" / "compact-xs")
    assert batch < 64, "capped by the clips a loader worker gets"
    assert [(s.step, s.frames) for s in snaps] == [(0, 0), (3, 3 * batch * 20)]
    assert (snaps[-1].folder / "checkpoints" / "step-00000003" / "meta.json").exists()


def test_students_train_with_the_loss_weights_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--loss-weights reaches the students' training as train's does (terms named keep the rest at their
    defaults); a bad one is refused before anything is rendered."""
    import types

    from spark_distill.bench import distill

    seen: dict = {}
    monkeypatch.setattr("spark_distill.train.loop.train",
                        lambda cfg, on_progress=None: seen.setdefault("cfg", cfg)
                        and types.SimpleNamespace(interrupted=False, steps=cfg.max_steps))
    monkeypatch.setattr(distill, "_clip_len", lambda root: 20)
    cfg = distill.DistillBench(students=("compact-xs",), loss_weights="plan=4,lead=0", device="cpu")
    distill.train_student(cfg, "compact-xs", tmp_path, tmp_path / "runs", tmp_path / "snaps")
    loss = seen["cfg"].loss
    assert (loss.plan, loss.lead, loss.lanes, loss.plan_prob) == (4.0, 0.0, 1.0, 0.2)
    with pytest.raises(ConfigError, match="--loss-weights"):
        distill.DistillBench(loss_weights="plan=heavy")
    with pytest.raises(ConfigError, match="--loss-weights"):
        distill.DistillBench(loss_weights="lateral=2")


@pytest.mark.slow
def test_stage_two_renews_the_policy_half_and_continues_the_curve(bench: tuple[Path, str], tmp_path: Path) -> None:
    """--policy-steps: after each student, its policy half renewed and trained alone on its frozen vision (train
    --fresh-policy); the curve goes on from stage 1's last point, and the saved student is the two-stage one."""
    from spark_distill.bench import distill
    from spark_distill.models.restore import load_trained

    work, _ = bench
    for data in ("teacher", "train", "held"):  # the rendered, labelled drives: reused, not made again
        shutil.copytree(work / data, tmp_path / "w" / data)
    cfg = distill.DistillBench(students=("compact-xs",), train_drives=2, held_drives=1, seconds=7, steps=2,
                               policy_steps=3, evals=1, batch_size=2, seed=6, workers=1, device="cpu",
                               teacher=tmp_path / "w" / "teacher", workdir=tmp_path / "w", keep=True,
                               out=tmp_path / "out", save_student=tmp_path / "pre")
    output = "\n".join(distill.bench_distill(cfg))
    curves = json.loads((tmp_path / "out" / "distill.json").read_text())["curves"]
    assert [(p["step"], p["frames"]) for p in curves["compact-xs"]] == [(0, 0), (2, 80)]
    assert [(p["step"], p["frames"]) for p in curves["compact-xs-policy"]] == [(2, 80), (5, 200)]
    assert re.search(r"^\s+compact-xs-policy\s+5\s", output, re.M), output
    one, two = (load_trained(tmp_path / "w" / "runs" / r).student.state_dict() for r in ("compact-xs",
                                                                                          "compact-xs-policy"))
    for k in one:
        frozen = not k.startswith(("policy.", "gru_x", "gru_h", "heads.policy_"))
        assert torch.equal(one[k], two[k]) == frozen, k
    info = json.loads((tmp_path / "pre" / "pretrained.json").read_text())
    assert info["source_run"].endswith("compact-xs-policy") and info["held_out"]["step"] == 5
    with pytest.raises(ConfigError, match="--policy-steps"):
        distill.DistillBench(policy_steps=-1)
