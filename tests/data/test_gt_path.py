# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The driven future path against closed-form motions, gaps and bad poses, and on an ingested route."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spark_distill.data import shards
from spark_distill.data.gt_path import SegmentMotion, segment_motions
from spark_distill.openpilot import contract as C


def _pose(n: int, v: float, yaw_rate: float = 0.0, vz: float = 0.0) -> np.ndarray:
    pose = np.zeros((n, 12), np.float32)
    pose[:, 0], pose[:, 2], pose[:, 5] = v, vz, yaw_rate
    return pose


def test_straight_line_at_constant_speed() -> None:
    n = 240  # 12 s at 20 Hz
    m = SegmentMotion.from_pose(np.arange(n), np.arange(n) * 0.05, _pose(n, 15.0, vz=0.5))
    path, valid = m.future(np.array([0, 100]))
    np.testing.assert_allclose(path[0, :, 0], 15.0 * C.T_IDXS, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(path[0, :, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(path[0, :, 2], 0.5 * C.T_IDXS, atol=1e-5)
    assert valid[0].all()  # 10 s fit in 12
    assert valid[1].sum() == np.sum((n - 1 - 100) * 0.05 >= C.T_IDXS)  # only the horizons the segment covers


def test_circle_in_the_current_device_frame() -> None:
    n, v, w = 400, 10.0, 0.2
    m = SegmentMotion.from_pose(np.arange(n), np.arange(n) * 0.05, _pose(n, v, yaw_rate=w))
    path, valid = m.future(np.array([150]))  # the frame is turned by 150 * 0.05 * 0.2 = 1.5 rad: rotation matters
    h = C.T_IDXS
    np.testing.assert_allclose(path[0, :, 0], v / w * np.sin(w * h), atol=2e-3)
    np.testing.assert_allclose(path[0, :, 1], v / w * (1 - np.cos(w * h)), atol=2e-3)
    assert valid.all()


def test_encoder_gap_is_bridged_and_a_bad_pose_cuts_the_horizon() -> None:
    fids = np.r_[0:50, 53:240]  # three frames dropped
    m = SegmentMotion.from_pose(fids, fids * 0.05, _pose(len(fids), 10.0))
    path, valid = m.future(m.rows_of([0]))
    np.testing.assert_allclose(path[0, :, 0], 10.0 * C.T_IDXS, atol=1e-5)
    assert valid.all()
    pose = _pose(240, 10.0)
    pose[120] = np.nan
    m = SegmentMotion.from_pose(np.arange(240), np.arange(240) * 0.05, pose)
    _, valid = m.future(np.array([100, 121]))
    assert np.array_equal(valid[0], C.T_IDXS + 5.0 <= 5.95 + 1e-9)  # past frame 119, frame 120 (bad) is needed
    assert valid[1].sum() == np.sum(C.T_IDXS <= (239 - 121) * 0.05)


def test_ingested_route_matches_the_synthetic_drive(labeled: Path, tici_route) -> None:
    from spark_distill.synth.route import Dynamics

    _, truths, cfg = tici_route
    frames = shards.read_manifest(labeled / "frames", shards.FRAMES_FORMAT)
    motions = segment_motions(labeled / "frames", [s["name"] for s in frames["shards"]])
    m = motions[truths[0].name.replace("_", "|", 1)]  # the canonical name has "|" after the dongle
    dyn = Dynamics(cfg, cfg.segments * cfg.seconds)
    path, valid = m.future(np.array([0]))
    t0 = m.frame_ids[0] * 0.05  # the synthetic camera's frame ids count 50 ms steps from the route start
    for h in np.flatnonzero(valid[0])[1:]:
        driven = dyn.distance(t0 + C.T_IDXS[h]) - dyn.distance(t0)
        assert math.isclose(path[0, h, 0], driven, rel_tol=0.02), (h, path[0, h, 0], driven)
    assert valid[0].sum() >= 10  # the 2 s segment covers the first horizons (up to ~1.9 s)
