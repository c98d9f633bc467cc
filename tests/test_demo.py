# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The README's first command, end to end at a reduced size: every stage runs and reports real figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_distill.cli import app

TEACHER_BOUND_2S = 1.5  # m; measured 0.64 on this held-out segment (the demo's drive, never fitted on)
# the pre-trained student fine-tuned (the demo's default): its 2 s error against the path driven over the teacher's
# measured 1.05 at this size (1.22 at the default size; benchmarks/demo.md); the bound is 1.5
STUDENT_FACTOR_2S = 1.5


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--minutes", "0.4", "--steps", "16"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "demo.json").read_text())
    assert report["frames_ingested"] == 480  # 2 segments x 12 s x 20 Hz
    # the pre-trained student starts trained (its NLL below zero) and 16 DoRA steps on this drive lower it further
    # (-0.51 -> -0.56 measured on this held-out segment); the drive table below checks what it drives
    assert math.isfinite(report["val_before"]) and report["val_after"] < report["val_before"] < 0, report
    assert report["export_max_diff"] <= 1e-4 and report["steps"] == 16
    for name in ("loss curve", "validation frame", "errors vs horizon", "eval", "export"):
        path = Path(report["artifacts"][name])
        assert path.exists() and path.stat().st_size > 1000, name
    assert re.search(r"validation loss\s+│ -?[\d.]+ -> -?[\d.]+ after 16 steps", r.output)
    # the eval table: the shipped teacher drives this held-out segment (never fitted on)
    table = report["drive_error_m"]
    assert set(table) == {"student vs driven path", "teacher vs driven path", "student vs teacher"}
    assert table["teacher vs driven path"]["2"] <= TEACHER_BOUND_2S, table
    # 12 s segments leave 7 s past the warm-up: no frame has a 10 s future, so no 10 s error (not the 4 s one again)
    assert table["student vs driven path"]["10"] is None and table["student vs driven path"]["4"] is not None
    assert "ends before that horizon" in r.output
    # the demo's student drives too: its vision and its plan, lateral included (v2's policy half, --fresh-policy)
    assert report["student_over_teacher_2s"] <= STUDENT_FACTOR_2S, table
    assert "x the teacher's error" in r.output
    assert "teacher vs driven path" in r.output
    # a second run replaces the earlier demo; a folder that is not a demo is refused, untouched
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.txt").write_text("keep")
    r = CliRunner().invoke(app, ["demo", "--out", str(other)])
    assert r.exit_code == 2 and "not a demo folder" in r.output and (other / "data.txt").read_text() == "keep"
