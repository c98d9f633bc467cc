# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A student run over whole segments the way the car runs it: from each segment's first frame, state
carried frame to frame, the 2-frame image stack from the segment's own frames (zeros before frame 4,
as modeld's empty ring). Entry points: `read_segment` (frames + teacher labels of one segment, in frame
order), `rollout_torch(student, segment)` and `OnnxStep(path).rollout(segment)` for a combined export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spark_distill.data import shards, store
from spark_distill.data.gt_path import SegmentMotion
from spark_distill.data.index import ShardIndex, plan_segments
from spark_distill.errors import DatasetError
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.onnx_import import cpu_session

POSE_YAW_RATE = 5  # angvel_z in ingest's pose columns (vel xyz, angvel xyz, ...)
FRAME_MEMBERS = (*shards.camera_members(), "desire.npy.zst", "traffic.npy.zst", "car.npy.zst",
                 "pose.npy.zst", "meta.json")


@dataclass
class Segment:
    name: str
    frame_ids: np.ndarray  # (N,)
    timestamps_ns: np.ndarray  # (N,)
    road: np.ndarray  # (N, 6, 128, 256) uint8
    wide: np.ndarray
    desire: np.ndarray  # (N, 8)
    traffic: np.ndarray  # (2,)
    v_ego: np.ndarray  # (N,)
    delays: np.ndarray  # (N, 2) each frame's [lateral, longitudinal] delay, as the labels were made with
    pose: np.ndarray  # (N, 12)
    teacher_vision: np.ndarray  # (N, Nv) float32
    teacher_policy: np.ndarray  # (N, Np) float32
    yaw_rate: np.ndarray  # (N,) carState.yawRate, NaN where the log has no carState
    pose_yaw_rate: np.ndarray  # (N,) the pose's angular velocity z, NaN where the log has no pose

    def motion(self) -> SegmentMotion:
        """The logged ego motion, integrated: the path actually driven from any frame."""
        return SegmentMotion.from_pose(self.frame_ids, self.timestamps_ns / 1e9, self.pose)


def read_segment(root: Path, label_set: str, name: str) -> Segment:
    """One segment's frames and its labels from `label_set`, concatenated over its clips."""
    frames = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    plan = next((p for p in plan_segments(frames) if p.name == name), None)
    if plan is None:
        raise DatasetError(f"no segment {name!r} in {root}")
    ldir = root / "labels" / label_set
    choice = DelayChoice.of_labels(shards.read_manifest(ldir, shards.LABELS_FORMAT))
    parts: dict[str, list] = {}
    indexes: dict[tuple[str, int], ShardIndex] = {}
    try:
        for clip in plan.clips:
            shard = frames["shards"][clip.shard]["name"]
            for side, folder, members in (("f", root / "frames", shards.FRAMES_MEMBERS),
                                          ("l", ldir, shards.LABEL_MEMBERS)):
                if (side, clip.shard) not in indexes:
                    if not store.ensure_local(folder / shard).exists():
                        raise DatasetError(f"{folder / shard}: missing (label set {label_set} incomplete?)")
                    indexes[side, clip.shard] = ShardIndex(folder / shard, members)
            f = indexes["f", clip.shard].read(clip.key, FRAME_MEMBERS)
            lab = indexes["l", clip.shard].read(clip.key, tuple(shards.LABEL_MEMBERS))
            for k, v in (("frame_ids", f["meta"]["frame_ids"]), ("timestamps_ns", f["meta"]["timestamps_ns"]),
                         ("road", f["road"]), ("wide", f["wide"]), ("desire", f["desire"]),
                         # before a log's first carState: v_ego 0, as modeld reads it
                         ("v_ego", np.nan_to_num(f["car"][:, 0], nan=0.0)), ("car", f["car"]), ("pose", f["pose"]),
                         ("delays", choice.per_frame(f["meta"])),
                         ("teacher_vision", lab["vision"]), ("teacher_policy", lab["policy"])):
                parts.setdefault(k, []).append(np.asarray(v))
            parts["traffic"] = [f["traffic"]]
    finally:
        for index in indexes.values():
            index.close()
    cat = {k: np.concatenate(v) if k != "traffic" else v[0] for k, v in parts.items()}
    columns, car = frames.get("car_columns", []), cat.pop("car")
    cat["yaw_rate"] = (car[:, columns.index("yawRate")].astype(np.float64) if "yawRate" in columns
                       else np.full(len(car), np.nan))
    cat["pose_yaw_rate"] = cat["pose"][:, POSE_YAW_RATE].astype(np.float64)
    for k in ("teacher_vision", "teacher_policy"):
        cat[k] = cat[k].astype(np.float32)
    return Segment(name=name, **cat)


def image_stack(frames: np.ndarray, i: int, skip: int = C.TEMPORAL_SKIP) -> np.ndarray:
    """(1, 12, 128, 256): frame i-4 (i-1 for a 20 Hz supercombo; zeros before it exists) and frame i, as modeld
    stacks them."""
    older = frames[i - skip] if i >= skip else np.zeros_like(frames[i])
    return np.concatenate([older, frames[i]], 0)[None]


@torch.no_grad()
def rollout_torch(student: torch.nn.Module, seg: Segment, *, device: str = "cpu",
                  frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vision (N, Nv), policy (N, Np)) of a torch student over the segment from a zero state."""
    dev = torch.device(device)
    student = student.to(dev).eval()
    state = student.initial_state(1, dev)
    traffic = torch.from_numpy(seg.traffic[None].astype(np.float32)).to(dev)
    skip = getattr(student, "pair_skip", C.TEMPORAL_SKIP)
    vis, pol = [], []
    for i in range(len(seg.frame_ids) if frames is None else min(frames, len(seg.frame_ids))):
        img = torch.from_numpy(image_stack(seg.road, i, skip)).to(dev)
        big = torch.from_numpy(image_stack(seg.wide, i, skip)).to(dev)
        desire = torch.from_numpy(seg.desire[i:i + 1].astype(np.float32)).to(dev)
        v_ego = torch.tensor([float(seg.v_ego[i])], device=dev)
        extra = (torch.from_numpy(seg.delays[i:i + 1]).to(dev),) if getattr(student, "takes_delays", False) else ()
        v, p, state = student(img, big, desire, traffic, state, v_ego, *extra)
        vis.append(v.float().cpu().numpy()[0])
        pol.append(p.float().cpu().numpy()[0])
    return np.stack(vis), np.stack(pol)


class OnnxStep:
    """A combined export (`driving_model.onnx`) through ONNX Runtime, one frame at a time."""

    def __init__(self, path: Path) -> None:
        self.session = cpu_session(path)
        self.inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if "state" not in self.inputs:
            raise DatasetError(f"{path}: not a combined export (no 'state' input)")
        self.state_len = int(self.inputs["state"][1])
        props = self.session.get_modelmeta().custom_metadata_map
        try:  # the image pair's spacing the student was exported with (older exports: modeld's 4)
            self.pair_skip = int(json.loads(props.get("spark_distill", "{}")).get("pair_skip", C.TEMPORAL_SKIP))
        except (ValueError, TypeError, AttributeError):
            self.pair_skip = C.TEMPORAL_SKIP

    def rollout(self, seg: Segment, frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        state = np.zeros((1, self.state_len), np.float32)
        vis, pol = [], []
        for i in range(len(seg.frame_ids) if frames is None else min(frames, len(seg.frame_ids))):
            skip = self.pair_skip
            feed = {"img": image_stack(seg.road, i, skip), "big_img": image_stack(seg.wide, i, skip),
                    "desire": seg.desire[i:i + 1].astype(np.float32),
                    "traffic_convention": seg.traffic[None].astype(np.float32), "state": state}
            if "v_ego" in self.inputs:
                feed["v_ego"] = np.array([seg.v_ego[i]], np.float32)
            v, p, state = self.session.run(None, feed)
            vis.append(v[0])
            pol.append(p[0])
        return np.stack(vis), np.stack(pol)
