# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Pictures: predicted path and lane lines projected onto the road image a model saw.

The road input is the calibrated medium-model frame (512 x 256, openpilot's medmodel intrinsics), so a
point (x forward, y right, z down) of the device frame lands at K @ (y, z, x) / x. The path is drawn at
the camera's height above the road (openpilot's UI does the same with the calibrated height; 1.22 m
by default); lane lines carry their own height. Entry points: `project`, `draw_overlay`, `frame_strip`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.modelframe import MEDMODEL_INTRINSICS, MODEL_H, MODEL_W, yuv6_to_rgb
from spark_distill.openpilot.outputs import parse_outputs

CAMERA_HEIGHT = 1.22  # m, openpilot's HEIGHT_INIT


def project(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (K, 2), visible (K,)) of device-frame points (K, 3) in the model frame."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    front = x > 1.0
    view = np.stack([y, z, x], 1)
    uvw = view @ MEDMODEL_INTRINSICS.T
    px = uvw[:, :2] / np.where(front, uvw[:, 2], 1.0)[:, None]
    near = (np.abs(px[:, 0] - MODEL_W / 2) < 1.5 * MODEL_W) & (np.abs(px[:, 1] - MODEL_H / 2) < 1.5 * MODEL_H)
    visible = front & near
    return px, visible


def predictions(vision: np.ndarray, policy: np.ndarray, slices: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Path (33, 3) and lane lines (4, 33, 3) with their probabilities (4,), from one frame's raw vectors."""
    v, p = parse_outputs(vision, slices["vision"]), parse_outputs(policy, slices["policy"])
    out: dict[str, Any] = {}
    if "plan" in p:
        plan = np.asarray(p["plan"]["mean"]).reshape(C.IDX_N, -1)
        out["path"] = plan[:, :3] + np.array([0.0, 0.0, CAMERA_HEIGHT])
    if "lane_lines" in v:
        yz = np.asarray(v["lane_lines"]["mean"]).reshape(C.NUM_LANE_LINES, C.IDX_N, 2)
        xs = np.broadcast_to(C.X_IDXS[None, :, None], (C.NUM_LANE_LINES, C.IDX_N, 1))
        out["lanes"] = np.concatenate([xs, yz], -1)
        probs = v.get("lane_lines_prob")
        out["lane_probs"] = (np.asarray(probs).reshape(-1)[1::2] if probs is not None
                             else np.ones(C.NUM_LANE_LINES))
    return out


def draw_overlay(ax: Any, road: np.ndarray, overlays: list[tuple[str, dict[str, Any], str]]) -> None:
    """Road frame (packed [6,128,256]) with each (label, predictions, colour) drawn on it."""
    ax.imshow(yuv6_to_rgb(road))
    for label, pred, colour in overlays:
        if "path" in pred:
            px, ok = project(pred["path"])
            ax.plot(px[ok, 0], px[ok, 1], "-", color=colour, lw=2.5, label=f"{label} path")
        for line, prob in zip(pred.get("lanes", []), pred.get("lane_probs", []), strict=False):
            px, ok = project(line)
            ax.plot(px[ok, 0], px[ok, 1], "--", color=colour, lw=1.2, alpha=float(np.clip(0.25 + prob, 0, 1)))
        if "lanes" in pred:  # one legend entry for the four lines, at full strength (each is drawn as probable)
            ax.plot([], [], "--", color=colour, lw=1.2, label=f"{label} lane lines (fainter: less probable)")
    ax.set_xlim(0, MODEL_W)
    ax.set_ylim(MODEL_H, 0)
    ax.axis("off")


def frame_strip(path: Path, roads: list[np.ndarray], overlays: list[list[tuple[str, dict[str, Any], str]]],
                titles: list[str]) -> Path | None:
    """A PNG of frames side by side (a column each) with their overlays; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(roads)
    fig, axes = plt.subplots(n, 1, figsize=(8, 4.2 * n), squeeze=False)
    for ax, road, ov, title in zip(axes[:, 0], roads, overlays, titles, strict=True):
        draw_overlay(ax, road, ov)
        ax.set_title(title, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(handles, labels, loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


MODEL_COLOURS = ("#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def segment_strip(path: Path, seg: Any, models: dict[str, tuple[np.ndarray, np.ndarray]],
                  slices: dict[str, dict[str, list[int]]]) -> Path | None:
    """Frames at 1/3 and 2/3 of a segment (the driven path needs a future to show) with the path actually driven
    (from the log), the teacher's predictions and each model's (name -> per-frame (vision, policy) vectors)."""
    motion = seg.motion()
    n = len(seg.frame_ids)
    roads, overlays, titles = [], [], []
    for i in (n // 3, 2 * n // 3):
        driven, valid = motion.future(np.array([i]))
        teacher = predictions(seg.teacher_vision[i], seg.teacher_policy[i], slices)
        overlay = [("driven (log)", {"path": driven[0][valid[0]] + np.array([0.0, 0.0, CAMERA_HEIGHT])}, "#1f77b4"),
                   ("teacher", teacher, "#2ca02c")]
        title = f"{seg.name}  frame {int(seg.frame_ids[i])}"
        for k, (name, (v, p)) in enumerate(models.items()):
            pred = predictions(v[i], p[i], slices)
            overlay.append((name, pred, MODEL_COLOURS[k % len(MODEL_COLOURS)]))
            if "path" in teacher and "path" in pred:
                title += f"  {name}: mean |path - teacher| {float(np.abs(teacher['path'] - pred['path']).mean()):.2f} m"
        roads.append(seg.road[i])
        overlays.append(overlay)
        titles.append(title)
    return frame_strip(path, roads, overlays, titles)
