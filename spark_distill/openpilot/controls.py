# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The controls a release derives from its model's outputs, the way its modeld does, and the curvature the car
actually drove. Entry points: `desired_controls(parsed, control, v_ego, ...)`, `model_controls(vision, policy,
slices, ...)` (the same from raw outputs) and `driven_curvature(...)`.

Per layout (releases.Layout.control; ../shared/openpilot_releases.md):
- "desired_curvature" (0.9.x supercombos): the model's `desired_curvature` output (its mean); acceleration from
  the plan (openpilot's get_accel_from_plan, as every era computes it);
- "plan" (0.10.x): curvature from the plan's yaw and yaw rate (get_curvature_from_plan: 2 psi(t) / (v t) -
  psi_rate(0) / v at t = lateral delay + DT_MDL, v at least 1 m/s) and acceleration from its speeds
  (2 (v(t) - v(0)) / t - a(0) at t = longitudinal delay + DT_MDL);
- "action" (0.11): curvature = action[0] / max(1, v)^2, acceleration = action[1].
The delays given are the ones modeld feeds (the log's plus the release's smoothing seconds: openpilot.delays). A plan
layout's modeld (get_action_from_model, 0.10.0+) then low-passes both controls from frame to frame, each with its
smoothing seconds as time constant (smooth_value: alpha = 1 - exp(-DT_MDL / tau), none at tau 0), and holds the
previous curvature at or below 0.3 m/s; `desired_controls(..., smooth=, prev=)` does the same over a run of frames.
Driven curvature: carState.yawRate / max(vEgo, 1) where the log has carState's yaw rate, else the pose's yaw rate
(livePose / cameraOdometry angular velocity z, as ingest stores it) over the same speed; NaN where neither.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs
from spark_distill.openpilot.releases import DT_MDL

MIN_SPEED = 1.0  # m/s: openpilot's floor under v in the curvature formulas
MIN_LAT_CONTROL_SPEED = 0.3  # m/s: at or below it modeld holds the previous curvature


def _mean(head: Any) -> np.ndarray:
    return np.asarray(head["mean"] if isinstance(head, dict) else head, dtype=np.float64)


def _per_frame(action_t: float | np.ndarray, n: int) -> np.ndarray:
    """`action_t` (one time, or one per frame) as (n,) seconds."""
    return np.broadcast_to(np.asarray(action_t, dtype=np.float64), (n,))


def curvature_from_plan(plan: np.ndarray, v_ego: np.ndarray, action_t: float | np.ndarray) -> np.ndarray:
    """openpilot 0.10's get_curvature_from_plan over frames: plan (N, 33, 15) means, v_ego (N,), `action_t` one time
    or one per frame (each frame's lateral delay + DT_MDL)."""
    yaw = plan[:, :, C.PLAN_T_FROM_CURRENT_EULER][:, :, 2]
    yaw_rate0 = plan[:, 0, C.PLAN_ORIENTATION_RATE][:, 2]
    action_t = _per_frame(action_t, len(plan))
    psi = np.array([np.interp(t, C.T_IDXS, row) for t, row in zip(action_t, yaw, strict=True)])
    v = np.maximum(v_ego, MIN_SPEED)
    return 2 * psi / (v * action_t) - yaw_rate0 / v


def accel_from_plan(plan: np.ndarray, action_t: float | np.ndarray) -> np.ndarray:
    """openpilot's get_accel_from_plan over frames (its target acceleration; shouldStop left out); `action_t` one
    time or one per frame."""
    speeds = plan[:, :, C.PLAN_VELOCITY][:, :, 0]
    accels = plan[:, :, C.PLAN_ACCELERATION][:, :, 0]
    action_t = _per_frame(action_t, len(plan))
    v_target = np.array([np.interp(t, C.T_IDXS, row) for t, row in zip(action_t, speeds, strict=True)])
    return 2 * (v_target - speeds[:, 0]) / action_t - accels[:, 0]


def smoothed(curv: np.ndarray, accel: np.ndarray, v_ego: np.ndarray, smooth: tuple[float, float],
             prev: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """modeld's get_action_from_model over consecutive frames: each control low-passed toward its new value
    (smooth_value with the (lateral, longitudinal) time constants `smooth`), the curvature held at or below
    MIN_LAT_CONTROL_SPEED; `prev` the (curvature, acceleration) before the first frame (modeld starts at zeros)."""
    alpha = [1.0 - np.exp(-DT_MDL / tau) if tau > 0 else 1.0 for tau in smooth]
    out_c, out_a = np.empty(len(curv)), np.empty(len(accel))
    c, a = prev
    for i in range(len(curv)):
        a = alpha[1] * accel[i] + (1 - alpha[1]) * a
        if v_ego[i] > MIN_LAT_CONTROL_SPEED:
            c = alpha[0] * curv[i] + (1 - alpha[0]) * c
        out_c[i], out_a[i] = c, a
    return out_c, out_a


def desired_controls(parsed: dict[str, Any], control: str, v_ego: np.ndarray, *, lat_delay: float | np.ndarray,
                     long_delay: float | np.ndarray, smooth: tuple[float, float] | None = None,
                     prev: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(desired curvature (N,) 1/m, desired acceleration (N,) m/s^2) from a model's parsed outputs, as the
    release's modeld derives them (module docstring); `control` is the layout's; the delays fed one value or one per
    frame (N,) (each segment's own, as the labels were made with). `smooth`: a plan layout's smoothing seconds, the
    N frames then consecutive frames of one run of modeld that began at `prev` (None: each frame on its own)."""
    v = np.asarray(v_ego, dtype=np.float64)
    if control == "action":
        action = _mean(parsed["action"]).reshape(len(v), -1)
        return action[:, 0] / np.maximum(v, MIN_SPEED) ** 2, action[:, 1]
    plan = _mean(parsed["plan"]).reshape(len(v), C.IDX_N, C.PLAN_WIDTH)
    accel = accel_from_plan(plan, long_delay + DT_MDL)
    if control == "desired_curvature":
        return _mean(parsed["desired_curvature"]).reshape(len(v), -1)[:, 0], accel
    curv = curvature_from_plan(plan, v, lat_delay + DT_MDL)
    return (curv, accel) if smooth is None else smoothed(curv, accel, v, smooth, prev)


def model_controls(vision: np.ndarray, policy: np.ndarray, slices: dict[str, dict[str, list[int]]], *, control: str,
                   v_ego: np.ndarray, delays: np.ndarray, smooth: tuple[float, float] | None,
                   prev: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(N, 2) [curvature, acceleration] a model's raw outputs give over consecutive frames of one segment, as the
    release's modeld derives them (`desired_controls`; `delays` (N, 2) those fed, `smooth` its smoothing seconds,
    `prev` the controls before the first frame)."""
    parsed = {**parse_outputs(vision, slices["vision"]), **parse_outputs(policy, slices["policy"])}
    return np.stack(desired_controls(parsed, control, v_ego, lat_delay=delays[:, 0].astype(np.float64),
                                     long_delay=delays[:, 1].astype(np.float64), smooth=smooth, prev=prev), -1)


def control_of(slices: dict[str, dict[str, Any]], layout: str | None) -> str:
    """The layout's control source; a label set from before layouts were recorded: from its heads."""
    from spark_distill.openpilot.releases import LAYOUTS

    if layout in LAYOUTS:
        return LAYOUTS[layout].control
    heads = {h for member in slices.values() for h in member}
    return "action" if "action" in heads else "desired_curvature" if "desired_curvature" in heads else "plan"


def driven_curvature(v_ego: np.ndarray, yaw_rate: np.ndarray, pose_yaw_rate: np.ndarray) -> tuple[np.ndarray, str]:
    """(curvature the car drove (N,), NaN where unknown; what it came from)."""
    v = np.maximum(np.asarray(v_ego, dtype=np.float64), MIN_SPEED)
    if np.isfinite(yaw_rate).any():
        return np.asarray(yaw_rate, dtype=np.float64) / v, "carState.yawRate / max(vEgo, 1)"
    if np.isfinite(pose_yaw_rate).any():
        return np.asarray(pose_yaw_rate, dtype=np.float64) / v, "pose angular velocity z / max(vEgo, 1) (no carState)"
    return np.full(len(v), np.nan), "none (the log has neither carState nor a pose)"
