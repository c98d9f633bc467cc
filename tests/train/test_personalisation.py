# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Personalisation on the CPU at small size (issue 28): the openpilot student (the shipped fitted teacher's own
weights) fine-tuned with DoRA and the driven-path loss on two drives of a driver who keeps 0.4 m left of the lane
centre comes closer than the teacher to the path that driver drove on a third drive it never saw, and forgets
nothing (its lane lines and lead stay the teacher's). Each clip starts from the history modeld had
(loader.History): from a zero history the same fine-tuning moved the plan the wrong way (benchmarks/distill.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_distill.bench.distill import TEACHER, drive_configs, make_dataset, row, score
from spark_distill.synth.fit import copy_fitted
from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train
from spark_distill.train.losses import LossWeights

DRIVER = "keep-left:0.4"


@pytest.mark.slow
def test_fine_tuning_learns_the_drivers_path(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    copy_fitted(teacher)
    drives, held = tmp_path / "drives", tmp_path / "held"
    make_dataset(drives, drive_configs(2, 10, base=60_000, driver=DRIVER), teacher, workers=2, device="cpu")
    make_dataset(held, drive_configs(1, 10, base=60_500, driver=DRIVER), teacher, workers=1, device="cpu")
    cfg = TrainConfig(root=drives, labels=TEACHER, run="me", runs_dir=tmp_path / "runs", student="openpilot",
                      student_onnx=teacher, adapter="dora", batch_size=4, max_steps=60, epochs=1000, lr=5e-4,
                      val_fraction=0.05, checkpoint_every=60, seed=0, device="cpu", loss=LossWeights.parse("", gt=1.0))
    result = train(cfg)
    assert result.feature_cached and result.steps == 60
    tuned = row(next(iter(score(held, [tmp_path / "runs" / "me"], tmp_path / "eval", "cpu").values())))
    # the teacher 0.32 m off the driver's path at 2 s, the personalised student 0.24 (measured on this box)
    assert tuned["driven@2"] < 0.9 * tuned["teacher_driven@2"], tuned
    assert tuned["driven@1"] < 0.9 * tuned["teacher_driven@1"], tuned
    assert tuned["lane_lines"] <= 0.15 and tuned["lead"] <= 0.15, tuned
