# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Frame matching and per-frame log data, as iterator stages over lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_distill.ingest.align import (
    CalibrationTrack,
    desire_onehot,
    indexed_frames,
    match_frames,
    traffic_onehot,
)
from spark_distill.ingest.logs import EncodeIndex, LogData, Stream


def test_frames_are_matched_by_encode_index_not_position() -> None:
    # file frames 0..4; the log indexes file frames 0, 1, 3, 4 with camera frame ids 100, 101, 105, 106
    index = EncodeIndex(np.array([0, 1, 3, 4]), np.array([100, 101, 105, 106]), np.array([1, 2, 3, 4]))
    counts: dict[str, int] = {}
    got = list(indexed_frames(iter([(i, f"f{i}") for i in range(5)]), index, counts))
    assert got == [(100, 1, "f0"), (101, 2, "f1"), (105, 3, "f3"), (106, 4, "f4")]
    assert counts == {"unindexed": 1}


def test_road_and_wide_are_paired_by_frame_id() -> None:
    road = [(1, 10, "r1"), (2, 20, "r2"), (4, 40, "r4"), (5, 50, "r5")]
    wide = [(0, 0, "w0"), (2, 20, "w2"), (3, 30, "w3"), (4, 40, "w4"), (6, 60, "w6")]
    counts: dict[str, int] = {}
    got = list(match_frames(iter(road), iter(wide), counts))
    assert got == [(2, 20, "r2", "w2"), (4, 40, "r4", "w4")]
    assert counts == {"unpaired": 2, "wide_only": 3}
    assert list(match_frames(iter(road[:1]), None, {})) == [(1, 10, "r1", None)]


def test_desire_follows_openpilot_desire_helper() -> None:
    nan = np.nan
    # (laneChangeState, laneChangeDirection): off, preLaneChange left, starting left, finishing right, unknown
    got = desire_onehot(np.array([[0, 0], [1, 1], [2, 1], [3, 2], [nan, nan]]))
    assert got.argmax(axis=1)[:4].tolist() == [0, 5, 3, 4]  # none, keepLeft, laneChangeLeft, laneChangeRight
    assert got[:4].sum(axis=1).tolist() == [1, 1, 1, 1]
    assert not got[4].any()


def test_traffic_convention() -> None:
    assert traffic_onehot(False).tolist() == [1.0, 0.0]
    assert traffic_onehot(True).tolist() == [0.0, 1.0]


def test_calibration_is_the_latest_message_at_or_before_each_frame() -> None:
    nan = np.nan
    calib = Stream(np.array([100, 200, 300]), np.array([[0.1, 0.2, 0.3, 1], [nan, nan, nan, 0], [0.4, 0.5, 0.6, 1]]))
    track = CalibrationTrack(LogData(Path("rlog"), {"calibration": calib}, {}))
    got = [track.at(t) for t in (99, 100, 150, 200, 299, 300, 10**12)]
    zero, first, last = (0.0, 0.0, 0.0), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    assert got == [zero, first, first, zero, zero, last, last]  # NaN message (not calibrated yet): zeros
    # the same rows as the array lookup the per-clip log arrays use
    rows = calib.at(np.array([150, 300]))[:, :3]
    assert [tuple(r) for r in rows] == [first, last]
    assert CalibrationTrack(LogData(Path("rlog"), {}, {})).at(5) == zero


def test_lane_change_from_the_densest_source() -> None:
    """modelV2 and drivingModelData merge by time (a qlog keeps 1 in 40 and 1 in 10 of them); an older release's
    lateralPlan (1 in 5 in its qlog) wins where it is denser."""
    from spark_distill.ingest.align import frame_log_arrays

    def stream(times: list[int], state: float) -> Stream:
        return Stream(np.array(times, np.int64), np.tile([state, 1.0], (len(times), 1)))

    v2, dmd = stream([0, 400], 2.0), stream([100, 200, 300], 1.0)  # laneChangeStarting / preLaneChange, left
    merged = LogData(Path("qlog"), {"lane_change_v2": v2, "lane_change": dmd}, {})
    desire = frame_log_arrays(merged, np.array([50, 250, 450]))["desire"].argmax(1)
    assert desire.tolist() == [3, 5, 3]  # laneChangeLeft, keepLeft, laneChangeLeft
    older = LogData(Path("qlog"), {"lane_change_v2": v2, "lane_change_lp": stream([0, 100, 200, 300], 1.0)}, {})
    assert frame_log_arrays(older, np.array([450]))["desire"].argmax(1).tolist() == [5]
