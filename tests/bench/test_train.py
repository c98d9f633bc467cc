# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench train` end to end at a tiny size: every measurement reports a figure (the rows with the
captured step, which runs eagerly on CPU, and the uncaptured one beside them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_distill.cli import app

ROW = r"^\s+compact-xs ({}) +(\d+) +([\d.]+) +(\d+) +([\d.]+) +([\d.]+) +(\S+) +CPU +(\S.*)$"


@pytest.mark.slow
def test_bench_train_reports_every_measurement(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "train", "--segments", "6", "--seconds", "4", "--steps", "1",
                                 "--batch-size", "2", "--full-batch-size", "1", "--workers", "2", "--student",
                                 "compact-xs", "--dora-rank", "4", "--device", "cpu", "--openpilot-size", "tiny",
                                 "--capture", "on", "--workdir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = {m[0]: m[1:] for m in re.findall(ROW.format("our DoRA|our LoRA|PEFT DoRA|full \\(none\\)"), r.output, re.M)}
    assert set(rows) == {"our DoRA", "our LoRA", "PEFT DoRA", "full (none)"}, r.output
    clips, ms, fps, gflop, _, util, _ = rows["our DoRA"]
    assert clips == "2" and float(ms) > 0 and int(fps) > 0 and util == "n/a", "no MFU without a known peak"
    assert rows["full (none)"][0] == "1"
    # full training runs the backbones' backward too: more work per clip than DoRA on the policy and heads
    assert float(rows["full (none)"][3]) > 1.5 * float(gflop) > 0
    assert "compile off | capture on" in r.output
    assert {v[-1] for v in rows.values()} == {"fixed, no graph"}, "the captured step, eagerly on CPU"
    assert re.search(ROW.format("our DoRA eager"), r.output, re.M)[8] == "eager", "the uncaptured step for comparison"
    assert re.search(r"streaming \(2 workers\): +[\d.]+ clips/s; in memory: +[\d.]+ clips/s; ratio [\d.]+", r.output)
    assert re.search(r"image mode +[\d.]+ clips/s, feature-cached +[\d.]+ clips/s: [\d.]+x", r.output)
    assert "failed" not in r.output
    # piped, the progress ends in one line: the dataset, 5 rows above (DoRA with its streaming run), openpilot's 2
    assert re.search(r"^bench train: 8/8 measurements in \d:\d\d:\d\d$", r.output, re.M), r.output
    assert not list(tmp_path.iterdir()), "the scratch dataset is removed"
    r = CliRunner().invoke(app, ["bench", "train", "--segments", "2", "--seconds", "2", "--steps", "5",
                                 "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "needs 8" in r.output


@pytest.mark.slow
def test_bench_train_repeat_reads_a_small_dataset_over(tmp_path: Path) -> None:
    from spark_distill.bench.train import ensure_dataset

    root, labels, _ = ensure_dataset(tmp_path / "scratch", segments=2, seconds=2, clip_len=20)  # 4 clips, 1 shard
    args = ["bench", "train", str(root), "--labels", labels, "--steps", "1", "--batch-size", "2",
            "--full-batch-size", "1", "--workers", "2", "--student", "compact-xs", "--dora-rank", "4", "--device",
            "cpu", "--streaming-only", "--compile", "off", "--capture", "off", "--workdir", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "gives 0 batches of 2 clips to 2 workers" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--repeat", "3"])  # 3 shards dealt to 2 workers: 2 batches each
    assert r.exit_code == 0, r.output
    assert "its shards read 3 times over" in r.output
    assert re.search(r"streaming \(2 workers\): +[\d.]+ clips/s; in memory: +[\d.]+ clips/s; ratio [\d.]+", r.output)
    assert CliRunner().invoke(app, [*args, "--repeat", "0"]).exit_code == 2
