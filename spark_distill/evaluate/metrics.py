# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Student-vs-teacher and student-vs-drive metrics on raw output vectors (any number of frames).

Main entry point: `compare(student_vision, student_policy, teacher_vision, teacher_policy, slices, gt=None)`
-> a JSON-able dict. Horizons are openpilot's: T_IDXS (plan, s), X_IDXS (lane lines, m), LEAD_T_IDXS.
- plan: xy distance between the student's and the teacher's most probable plan, per T_IDXS, its mean
  (ADE) and its value at 1, 2, 4, 10 s; `best_hypothesis_agreement`: how often the student's most
  probable hypothesis is also its hypothesis closest to the teacher's plan (what WTA training aims for);
- lanes: lateral (y) error per X_IDXS weighted by the teacher's line probability; road edges unweighted;
- lead: distance and speed error of the first lead selection at t=0, weighted by the teacher's lead
  probability; lead-probability calibration: mean |p_student - p_teacher| and Brier score against the
  teacher's decision (p > 0.5);
- desire_state: agreement of the most probable desire;
- drive (with `gt`, the path actually driven from `pose.npy`): xy error per T_IDXS over valid horizons;
  horizons past the end of every segment have no value (None, and no `at` value either) and
  `longest_horizon_s` says how far the drive reaches;
- controls (with `controls`): desired curvature and acceleration derived the way the teacher's release derives
  them (openpilot.controls: the desired_curvature output, the plan, or 0.11's action head), student against
  teacher, and each one's curvature against the curvature the car drove (carState yaw rate / speed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs

REPORT_SECONDS = (1.0, 2.0, 4.0, 10.0)


def _weighted(err: np.ndarray, w: np.ndarray | None, axis: tuple[int, ...]) -> np.ndarray:
    if w is None:
        return err.mean(axis=axis)
    return (err * w).sum(axis=axis) / np.maximum(w.sum(axis=axis), 1e-9)


def horizon_summary(per_h: np.ndarray, idxs: np.ndarray, at: tuple[float, ...]) -> dict[str, Any]:
    """Mean over the horizons with a value, the value at each of `at` (interpolated between horizons; None
    outside the horizons that have one: a segment too short for 4 s has no 4 s error, not its last one
    repeated), and every horizon's value (None where there is none)."""
    finite = np.isfinite(per_h)
    covered = idxs[finite]

    def value_at(t: float) -> float | None:
        if not finite.any() or not covered[0] - 1e-9 <= t <= covered[-1] + 1e-9:
            return None
        return float(np.interp(t, covered, per_h[finite]))

    return {"mean": float(per_h[finite].mean()) if finite.any() else None,
            "at": {f"{t:g}": value_at(t) for t in at},
            "per_horizon": [None if not np.isfinite(v) else round(float(v), 6) for v in per_h]}


def plan_xy(parsed: dict[str, Any]) -> np.ndarray:
    """(N, 33, 3) positions of the most probable plan."""
    return np.asarray(parsed["plan"]["mean"]).reshape(-1, C.IDX_N, C.PLAN_WIDTH)[..., :3]


def _mae(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[ok] - b[ok]).mean()) if ok.any() else None


def control_metrics(student: np.ndarray, teacher: np.ndarray, *, control: str, driven: np.ndarray,
                    driven_from: str) -> dict[str, Any]:
    """The release's controls (openpilot.controls.model_controls (N, 2)) of student and teacher: their difference,
    and each one's curvature against the curvature the car drove."""
    (sc, sa), (tc, ta) = student.T, teacher.T
    known = np.isfinite(driven)
    return {"derived_from": control, "curvature_vs_teacher": _mae(sc, tc), "accel_vs_teacher": _mae(sa, ta),
            "driven": {"from": driven_from, "frames": int(known.sum()), "student": _mae(sc, driven),
                       "teacher": _mae(tc, driven)}}


def compare(student_vision: np.ndarray, student_policy: np.ndarray, teacher_vision: np.ndarray,
            teacher_policy: np.ndarray, slices: dict[str, dict[str, list[int]]],
            gt: tuple[np.ndarray, np.ndarray] | None = None, controls: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """`controls`: control_metrics' arguments (the student's and the teacher's model_controls, the layout's control,
    the driven curvature and where it came from), for the controls section."""
    s = {**parse_outputs(student_vision, slices["vision"]), **parse_outputs(student_policy, slices["policy"])}
    t = {**parse_outputs(teacher_vision, slices["vision"]), **parse_outputs(teacher_policy, slices["policy"])}
    out: dict[str, Any] = {"frames": len(student_policy)}
    if controls is not None:
        out["controls"] = control_metrics(**controls)
    if "plan" in s and "plan" in t:
        sp, tp = plan_xy(s), plan_xy(t)
        err = np.linalg.norm(sp[..., :2] - tp[..., :2], axis=-1)  # (N, 33)
        out["plan"] = horizon_summary(err.mean(0), C.T_IDXS, REPORT_SECONDS)
        if "hypotheses" in s["plan"]:
            hyps = np.asarray(s["plan"]["hypotheses"])[..., :3]  # (N, H, 33, 3)
            dist = np.linalg.norm(hyps - tp[:, None], axis=-1).mean(-1)  # (N, H)
            best = np.asarray(s["plan"]["weights"])[..., 0].argmax(-1)
            out["plan"]["best_hypothesis_agreement"] = float((dist.argmin(-1) == best).mean())
        if gt is not None:
            path, valid = gt
            w = valid.astype(np.float64)
            drive = {}
            for who, xy in (("student", sp), ("teacher", tp)):
                e = np.linalg.norm(xy[..., :2] - path[..., :2], axis=-1)
                per_h = np.where(w.sum(0) > 0, (e * w).sum(0) / np.maximum(w.sum(0), 1), np.nan)
                drive[who] = horizon_summary(per_h, C.T_IDXS, REPORT_SECONDS)
            drive["frames_with_future"] = int(valid.any(1).sum())
            reached = np.flatnonzero(valid.any(0))
            drive["longest_horizon_s"] = float(C.T_IDXS[reached[-1]]) if len(reached) else None
            out["drive"] = drive
    line_w = np.asarray(t["lane_lines_prob"]).reshape(-1, C.NUM_LANE_LINES, 2)[..., 1] if "lane_lines_prob" in t \
        else None
    for head, weight in (("lane_lines", line_w), ("road_edges", None)):
        if head in s and head in t:
            n = C.NUM_LANE_LINES if head == "lane_lines" else C.NUM_ROAD_EDGES
            sy = np.asarray(s[head]["mean"]).reshape(-1, n, C.IDX_N, 2)[..., 0]
            ty = np.asarray(t[head]["mean"]).reshape(-1, n, C.IDX_N, 2)[..., 0]
            w = None if weight is None else np.broadcast_to(weight[..., None], sy.shape)
            out[head] = horizon_summary(_weighted(np.abs(sy - ty), w, (0, 1)), C.X_IDXS, (10.0, 20.0, 50.0))
    if "lead" in s and "lead" in t:
        sl = np.asarray(s["lead"]["mean"]).reshape(len(student_policy), -1, len(C.LEAD_T_IDXS), 4)
        tl = np.asarray(t["lead"]["mean"]).reshape(len(student_policy), -1, len(C.LEAD_T_IDXS), 4)
        tprob = np.asarray(t["lead_prob"]).reshape(len(student_policy), -1) if "lead_prob" in t else None
        w = None if tprob is None else tprob[:, 0]
        out["lead"] = {"distance_error_m": float(_weighted(np.abs(sl[:, 0, 0, 0] - tl[:, 0, 0, 0]), w, (0,))),
                       "speed_error_mps": float(_weighted(np.abs(sl[:, 0, 0, 2] - tl[:, 0, 0, 2]), w, (0,)))}
        if tprob is not None and "lead_prob" in s:
            sprob = np.asarray(s["lead_prob"]).reshape(len(student_policy), -1)
            out["lead"]["prob_abs_diff"] = float(np.abs(sprob - tprob).mean())
            out["lead"]["prob_brier"] = float(((sprob - (tprob > 0.5)) ** 2).mean())
    if "desire_state" in s and "desire_state" in t:
        sd = np.asarray(s["desire_state"]).reshape(len(student_policy), -1)
        td = np.asarray(t["desire_state"]).reshape(len(student_policy), -1)
        out["desire_state_agreement"] = float((sd.argmax(-1) == td.argmax(-1)).mean())
    return out


def headline(m: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers of a comparison table row."""
    plan, drive, controls = m.get("plan", {}), m.get("drive", {}), m.get("controls", {})
    return {"plan ADE (m)": plan.get("mean"), "plan @2s (m)": plan.get("at", {}).get("2"),
            "plan @10s (m)": plan.get("at", {}).get("10"),
            "best hypothesis agreement": plan.get("best_hypothesis_agreement"),
            "lane lines (m)": m.get("lane_lines", {}).get("mean"),
            "road edges (m)": m.get("road_edges", {}).get("mean"),
            "lead distance (m)": m.get("lead", {}).get("distance_error_m"),
            "lead speed (m/s)": m.get("lead", {}).get("speed_error_mps"),
            "lead prob |diff|": m.get("lead", {}).get("prob_abs_diff"),
            "desire agreement": m.get("desire_state_agreement"),
            "driven path ADE (m)": drive.get("student", {}).get("mean"),
            "teacher vs driven ADE (m)": drive.get("teacher", {}).get("mean"),
            "driven path @2s (m)": drive.get("student", {}).get("at", {}).get("2"),
            "teacher vs driven @2s (m)": drive.get("teacher", {}).get("at", {}).get("2"),
            "driven path known up to (s)": drive.get("longest_horizon_s"),
            # curvature in 1/km in the table (1/m in metrics.json): 3 decimals of 1/m would show most errors as 0
            "curvature vs teacher (1/km)": _per_km(controls.get("curvature_vs_teacher")),
            "accel vs teacher (m/s2)": controls.get("accel_vs_teacher"),
            "curvature vs driven (1/km)": _per_km(controls.get("driven", {}).get("student")),
            "teacher curvature vs driven (1/km)": _per_km(controls.get("driven", {}).get("teacher"))}


def _per_km(curvature: float | None) -> float | None:
    return None if curvature is None else curvature * 1000.0
