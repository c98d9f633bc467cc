# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench train` end to end at a tiny size: every measurement reports a figure."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from spark_distill.cli import app


def test_bench_train_reports_all_three_measurements(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "train", "--segments", "6", "--seconds", "4", "--steps", "2",
                                 "--batch-size", "2", "--workers", "2", "--student", "compact-xs", "--dora-rank", "4",
                                 "--device", "cpu", "--workdir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = dict(re.findall(r"^\s+(our LoRA|our DoRA|PEFT LoRA|PEFT DoRA)\s+([\d.]+) ms/step", r.output, re.M))
    assert set(rows) == {"our LoRA", "our DoRA", "PEFT LoRA", "PEFT DoRA"} and all(float(v) > 0 for v in rows.values())
    assert re.search(r"streaming \(2 workers\): +[\d.]+ clips/s; in memory: +[\d.]+ clips/s; ratio [\d.]+", r.output)
    assert re.search(r"feature-cached +[\d.]+ clips/s: [\d.]+x", r.output)
    assert not list(tmp_path.iterdir()), "the scratch dataset is removed"
    r = CliRunner().invoke(app, ["bench", "train", "--segments", "2", "--seconds", "2", "--steps", "5",
                                 "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "needs 7" in r.output
