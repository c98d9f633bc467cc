# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The shipped fitted teacher means something: on a drive it never saw (another seed: its own speed, curvature,
lead, lane change and calibration), ingested and labeled by the real passes, its plan follows the path actually
driven and its ego-lane lines follow the drawn road, within stated bounds; and a geometry fault — the same frames
ingested with a wrong calibration — fails that check, so a geometry bug in ingest or labeling cannot pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_distill import contract as C
from spark_distill import shards
from spark_distill.evaluate import metrics as M
from spark_distill.evaluate.rollout import read_segment
from spark_distill.label.outputs import parse_outputs

# Bounds, m; errors are means over the frames from 1 s on (the policy is fitted from cold history buffers, so it
# needs no 5 s warm-up). Measured with the shipped pair on this drive: path 0.19 / 0.31 / 3.85 m, lane lines
# 0.24 / 0.28 / 0.67 m; with the wrong calibration the lane lines are off by 0.85 / 0.99 / 2.0 m (its path error,
# 0.21 / 0.47 / 5.45 m, barely tells the fault apart; the lane lines do, at every distance).
PATH_BOUNDS = {"1": 0.3, "2": 0.5, "4": 5.0}  # plan xy vs the path driven (dead-reckoned from the logged pose)
LANE_BOUNDS = {"10": 0.4, "20": 0.4, "50": 1.0}  # ego-lane lines' y vs the drawn lines, at 10, 20, 50 m ahead
WRONG_CALIBRATION = (0.0, 0.0, 0.03)  # rad of yaw (1.7 degrees) added to the logged calibration
FIRST_FRAME = 20  # 1 s
DRIVE = {"seconds": 7.0, "varied": True, "seed": 7, "start": "2026-09-01--12-00-00"}


@pytest.fixture(scope="module")
def labeled_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A held-out varied route, ingested and labeled twice: as logged, and with its calibration broken."""
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.fit import copy_fitted
    from spark_distill.synth.route import SynthConfig, miscalibrate, write_route

    base = tmp_path_factory.mktemp("semantic")
    truth = write_route(base / "route-good", SynthConfig(segments=1, **DRIVE))[0]
    shutil.copytree(base / "route-good", base / "route-bad")
    miscalibrate(base / "route-bad" / truth.path.name, WRONG_CALIBRATION)
    copy_fitted(base / "teacher")
    roots = {}
    for which in ("good", "bad"):
        root = base / which
        ingest(IngestConfig(inputs=(str(base / f"route-{which}"),), out=root, workers=1))
        label(LabelConfig(root=root, teacher=(base / "teacher",), name="fitted", backend="onnxruntime", batch=1,
                          device="cpu"))
        roots[which] = root
    return roots


def semantic_errors(root: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(plan vs the path driven at 1, 2, 4 s; ego-lane lines vs the drawn road at 10, 20, 50 m), m."""
    from spark_distill.synth.drive_model import vision_heads
    from spark_distill.synth.fit import scene_state
    from spark_distill.synth.route import FPS, Dynamics, SynthConfig

    name = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["segments"][0]["name"]
    seg = read_segment(root, "fitted", name)
    slices = shards.read_manifest(root / "labels" / "fitted", shards.LABELS_FORMAT)["output_slices"]
    rows = np.arange(FIRST_FRAME, len(seg.frame_ids))
    v, p = seg.teacher_vision[rows], seg.teacher_policy[rows]
    path = M.compare(v, p, v, p, slices, gt=seg.motion().future(rows))["drive"]["teacher"]["at"]
    # the drawn road's lines: the scene's geometry evaluated at the drive's true state
    cfg = SynthConfig(segments=1, **DRIVE)
    state = scene_state(Dynamics(cfg, cfg.seconds), seg.frame_ids[rows] / FPS)
    vs = {k: slice(*s) for k, s in slices["vision"].items()}
    drawn = vision_heads(torch.from_numpy(state).float(), vs).numpy()

    def ego_lines(raw: np.ndarray) -> np.ndarray:
        return parse_outputs(raw, slices["vision"])["lane_lines"]["mean"].reshape(-1, 4, C.IDX_N, 2)[:, 1:3, :, 0]

    err = np.abs(ego_lines(v) - ego_lines(drawn)).mean((0, 1))  # (33,) over X_IDXS
    lanes = {d: float(np.interp(float(d), C.X_IDXS, err)) for d in LANE_BOUNDS}
    return {h: path[h] for h in PATH_BOUNDS}, lanes


def test_fitted_teacher_follows_the_driven_path_and_the_road(labeled_pair: dict[str, Path]) -> None:
    path, lanes = semantic_errors(labeled_pair["good"])
    assert all(path[h] <= PATH_BOUNDS[h] for h in PATH_BOUNDS), path
    assert all(lanes[d] <= LANE_BOUNDS[d] for d in LANE_BOUNDS), lanes


def test_a_wrong_calibration_fails_the_check(labeled_pair: dict[str, Path]) -> None:
    path, lanes = semantic_errors(labeled_pair["bad"])
    missed = [d for d in LANE_BOUNDS if lanes[d] > LANE_BOUNDS[d]]
    assert missed == list(LANE_BOUNDS), (path, lanes)  # the lane lines miss the road at every distance
