# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The future path actually driven, from the logged ego motion (`pose.npy`): a ground-truth target
for the plan head (`--gt-weight`).

Dead reckoning per segment: heading integrates the yaw rate (angular velocity z, device frame), the
planar position integrates the device-frame velocity rotated by that heading, height integrates the
vertical velocity (trapezoid rule over the frames' timestamps, so encoder gaps are bridged). The
target of frame i at horizon h is the position at t_i + h (T_IDXS, interpolated) expressed in frame
i's device frame — the frame the plan head predicts in. A horizon is valid only where the segment
lasts that long and every frame in between has a finite pose; segments are never joined.
Main entry points: `SegmentMotion.from_pose(times_s, pose)` and `SegmentMotion.future(rows)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_distill.data import shards
from spark_distill.openpilot import contract as C


@dataclass(frozen=True)
class SegmentMotion:
    frame_ids: np.ndarray  # (N,) int64, increasing
    times: np.ndarray  # (N,) seconds from the segment's first frame
    xyz: np.ndarray  # (N, 3) float64, in the segment's first device frame
    heading: np.ndarray  # (N,) radians
    bad_before: np.ndarray  # (N+1,) count of frames with a non-finite pose before each index

    @classmethod
    def from_pose(cls, frame_ids: np.ndarray, times_s: np.ndarray, pose: np.ndarray) -> SegmentMotion:
        """Integrate pose rows (velocity xyz, angular velocity xyz, ...: docs/formats.md, "Columns") at `times_s`."""
        times = np.asarray(times_s, np.float64)
        pose = np.asarray(pose, np.float64)
        ok = np.isfinite(pose[:, :6]).all(1) & np.concatenate([[True], np.diff(times) > 0])
        vel = np.where(ok[:, None], pose[:, :3], 0.0)
        yaw_rate = np.where(ok, pose[:, 5], 0.0)
        dt = np.diff(times, prepend=times[:1])
        heading = np.cumsum(0.5 * (yaw_rate + np.roll(yaw_rate, 1)) * dt * (np.arange(len(dt)) > 0))
        c, s = np.cos(heading), np.sin(heading)
        world = np.stack([c * vel[:, 0] - s * vel[:, 1], s * vel[:, 0] + c * vel[:, 1], vel[:, 2]], 1)
        steps = 0.5 * (world + np.roll(world, 1, axis=0)) * dt[:, None]
        steps[0] = 0.0
        bad = np.concatenate([[0], np.cumsum(~ok)])
        return cls(np.asarray(frame_ids, np.int64), times - times[0], np.cumsum(steps, 0), heading, bad)

    def future(self, rows: np.ndarray, horizons: np.ndarray = C.T_IDXS) -> tuple[np.ndarray, np.ndarray]:
        """(positions (len(rows), H, 3) float32 in each row's device frame, valid (len(rows), H) bool)."""
        rows = np.asarray(rows, np.int64)
        t = self.times[rows, None] + horizons[None, :]  # (R, H)
        pos = np.stack([np.interp(t, self.times, self.xyz[:, k]) for k in range(3)], -1)  # (R, H, 3)
        rel = pos - self.xyz[rows, None, :]
        c, s = np.cos(self.heading[rows])[:, None], np.sin(self.heading[rows])[:, None]
        local = np.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1], rel[..., 2]], -1)
        end = np.searchsorted(self.times, t, side="left")  # first frame at or after each horizon
        valid = (t <= self.times[-1] + 1e-9) & (self.bad_before[np.minimum(end, len(self.times) - 1) + 1]
                                                 == self.bad_before[rows, None])
        return local.astype(np.float32), valid

    def rows_of(self, frame_ids: np.ndarray) -> np.ndarray:
        """Row index of each frame id (ids must belong to the segment)."""
        return np.searchsorted(self.frame_ids, np.asarray(frame_ids, np.int64))


def segment_motions(frames_folder: Path, shard_names: list[str]) -> dict[str, SegmentMotion]:
    """Every segment's motion, read from the pose and meta members only (no image is touched)."""
    from spark_distill.data.index import ShardIndex

    per_segment: dict[str, list[tuple[list[int], list[int], np.ndarray]]] = {}
    for name in shard_names:
        index = ShardIndex(frames_folder / name, shards.FRAMES_MEMBERS)
        try:
            for key in index.keys:
                s = index.read(key, ("pose.npy.zst", "meta.json"))
                meta = s["meta"]
                per_segment.setdefault(meta["segment"], []).append(
                    (meta["frame_ids"], meta["timestamps_ns"], s["pose"]))
        finally:
            index.close()
    motions = {}
    for seg, parts in per_segment.items():
        fids = np.concatenate([np.asarray(p[0], np.int64) for p in parts])
        times = np.concatenate([np.asarray(p[1], np.float64) for p in parts]) / 1e9
        order = np.argsort(fids, kind="stable")
        motions[seg] = SegmentMotion.from_pose(fids[order], times[order], np.concatenate([p[2] for p in parts])[order])
    return motions
