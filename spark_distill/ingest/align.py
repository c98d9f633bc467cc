# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Log streams sampled at camera-frame times, and the frame matching of road and wide cameras.

Main entry points: `frame_log_arrays(log, times)` (per-frame desire, car state, pose, GPS,
calibration, traffic convention) and `match_frames(...)` (road and wide frames joined by frameId
through the encode-index events, never by position in the file).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import TypeVar

import numpy as np

from spark_distill.ingest.logs import POSE_SOURCES, EncodeIndex, LogData, Stream

F = TypeVar("F")  # a decoded frame, whatever the decoder yields

DESIRE_LEN = 8
# cereal log.capnp Desire enum: none, turnLeft, turnRight, laneChangeLeft, laneChangeRight, keepLeft, keepRight
DESIRE_NONE, LANE_CHANGE_LEFT, LANE_CHANGE_RIGHT, KEEP_LEFT, KEEP_RIGHT = 0, 3, 4, 5, 6
# openpilot selfdrive/controls/lib/desire_helper.py DESIRES[direction][state];
# LaneChangeState off=0 preLaneChange=1 laneChangeStarting=2 laneChangeFinishing=3; direction none=0 left=1 right=2
_DESIRES = {
    (1, 1): KEEP_LEFT, (1, 2): LANE_CHANGE_LEFT, (1, 3): LANE_CHANGE_LEFT,
    (2, 1): KEEP_RIGHT, (2, 2): LANE_CHANGE_RIGHT, (2, 3): LANE_CHANGE_RIGHT,
}


def desire_onehot(lane_change: np.ndarray) -> np.ndarray:
    """(N, 2) [laneChangeState, laneChangeDirection] (NaN = unknown) -> (N, 8) one-hot, zeros where unknown."""
    out = np.zeros((len(lane_change), DESIRE_LEN), dtype=np.float32)
    for i, (state, direction) in enumerate(lane_change):
        if np.isnan(state):
            continue
        out[i, _DESIRES.get((int(direction), int(state)), DESIRE_NONE)] = 1.0
    return out


def _first(log: LogData, *names: str) -> Stream | None:
    return next((log.streams[n] for n in names if n in log.streams), None)


def _merged(log: LogData, *names: str) -> Stream | None:
    """The streams `names` as one, by time: where a qlog keeps each of them decimated (drivingModelData 1 in 10,
    modelV2 1 in 40), together they are denser than either."""
    found = [log.streams[n] for n in names if n in log.streams]
    if len(found) < 2:
        return found[0] if found else None
    times = np.concatenate([s.times for s in found])
    order = np.argsort(times, kind="stable")
    return Stream(times[order], np.concatenate([s.values for s in found])[order])


def _lane_change_stream(log: LogData) -> Stream | None:
    """Lane-change state and direction: drivingModelData and modelV2 carry the same modeld state (merged by time);
    lateralPlan (older releases) where it is denser, as in their qlogs (4 Hz against modelV2's 1 in 40)."""
    modeld, planner = _merged(log, "lane_change", "lane_change_v2"), log.streams.get("lane_change_lp")
    if modeld is None or (planner is not None and len(planner.times) > len(modeld.times)):
        return planner
    return modeld


def _sample(stream: Stream | None, t: np.ndarray, width: int) -> np.ndarray:
    return stream.at(t) if stream is not None else np.full((len(t), width), np.nan)


def frame_log_arrays(log: LogData, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame log data at frame times `t` (ns, logMonoTime clock): latest message at or before, in an rlog and a
    qlog alike (a qlog's decimated streams hold each value longer). Before a stream's first message a frame has no
    value (NaN rows); `known` says per frame which streams had one (docs/formats.md, "meta.json")."""
    calib = _sample(log.streams.get("calibration"), t, 4)
    rhd = _sample(log.streams.get("rhd"), t, 1)[:, 0]
    lane_change = _sample(_lane_change_stream(log), t, 2)
    car = _sample(log.streams.get("car"), t, 10).astype(np.float32)
    pose = _sample(_first(log, *POSE_SOURCES), t, 12).astype(np.float32)
    gps = _sample(_first(log, "gps", "gps_internal"), t, 6)
    known = {"car": np.isfinite(car[:, 0]), "pose": np.isfinite(pose[:, :6]).all(1),
             "gps": np.isfinite(gps[:, 0]), "desire": np.isfinite(lane_change[:, 0]),
             "calibration": np.isfinite(calib[:, 0])}
    return {
        "desire": desire_onehot(lane_change),
        "car": car,
        "pose": pose,
        "gps": gps,
        "rpy": np.nan_to_num(calib[:, :3], nan=0.0),
        "calib_valid": np.nan_to_num(calib[:, 3], nan=0.0) > 0.5,
        "rhd": np.nan_to_num(rhd, nan=0.0) > 0.5,
        "known": known,
    }


class CalibrationTrack:
    """liveCalibration rpyCalib by time, one frame at a time (ingest asks once per frame).

    `at(t)` is the row of the latest message at or before t, zeros before the first one (modeld's
    start-up value) and where the log has no calibration; the same values as `Stream.at`, without
    its per-call arrays."""

    def __init__(self, log: LogData) -> None:
        stream = log.streams.get("calibration")
        self.times: list[int] = stream.times.tolist() if stream is not None else []
        rows = stream.values[:, :3].tolist() if stream is not None else []
        self.rows = [(0.0, 0.0, 0.0) if math.isnan(r[0]) else (float(r[0]), float(r[1]), float(r[2])) for r in rows]

    def at(self, t: int) -> tuple[float, float, float]:
        i = bisect.bisect_right(self.times, t) - 1
        return self.rows[i] if i >= 0 else (0.0, 0.0, 0.0)


def traffic_onehot(rhd: bool) -> np.ndarray:
    """[left-hand drive, right-hand drive] one-hot (openpilot modeld traffic_convention)."""
    out = np.zeros(2, dtype=np.float32)
    out[int(rhd)] = 1.0
    return out


def indexed_frames(frames: Iterator[tuple[int, F]], index: EncodeIndex, counts: dict[str, int]
                   ) -> Iterator[tuple[int, int, F]]:
    """(frameId, timestamp_eof, frame) for decoded frames that have an encode-index entry.

    Frames without one are dropped and counted in counts["unindexed"]."""
    by_sid = {int(s): (int(f), int(t)) for s, f, t in zip(index.segment_id, index.frame_id, index.timestamp_eof,
                                                          strict=True)}
    for sid, frame in frames:
        hit = by_sid.get(sid)
        if hit is None:
            counts["unindexed"] = counts.get("unindexed", 0) + 1
            continue
        yield hit[0], hit[1], frame


def match_frames(road: Iterator[tuple[int, int, F]], wide: Iterator[tuple[int, int, F]] | None,
                 counts: dict[str, int]) -> Iterator[tuple[int, int, F, F | None]]:
    """Join road and wide frames on frameId (both ascending).

    Road frames with no wide partner are dropped and counted in counts["unpaired"], wide frames with
    no road partner in counts["wide_only"]. Without a wide stream every road frame passes with None."""
    if wide is None:
        for fid, t, frame in road:
            yield fid, t, frame, None
        return
    w = next(wide, None)
    for fid, t, frame in road:
        while w is not None and w[0] < fid:
            counts["wide_only"] = counts.get("wide_only", 0) + 1
            w = next(wide, None)
        if w is not None and w[0] == fid:
            yield fid, t, frame, w[2]
            w = next(wide, None)
        else:
            counts["unpaired"] = counts.get("unpaired", 0) + 1
    while w is not None:
        counts["wide_only"] = counts.get("wide_only", 0) + 1
        w = next(wide, None)
