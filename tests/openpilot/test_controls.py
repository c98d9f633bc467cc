# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Controls as each release derives them, on outputs whose answer is known: a plan turning at constant curvature
and accelerating evenly, 0.11's action head, the 0.9.x desired_curvature output; the curvature driven from
carState, else the pose, else nothing; eval's controls section."""

from __future__ import annotations

import numpy as np
import pytest

from spark_distill.evaluate.metrics import compare
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.controls import control_of, desired_controls, driven_curvature, model_controls
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.outputs import parse_outputs
from spark_distill.openpilot.releases import DT_MDL, LAYOUTS

KAPPA, ACCEL = np.array([0.01, -0.004, 0.0]), np.array([0.5, -1.0, 0.0])
V = np.array([20.0, 10.0, 0.5])


def _plan() -> np.ndarray:
    """(3, 33, 15): yaw = kappa v t, yaw rate kappa v, speed v + a t, acceleration a."""
    plan = np.zeros((3, C.IDX_N, C.PLAN_WIDTH))
    t = C.T_IDXS[None]
    plan[:, :, 11] = KAPPA[:, None] * V[:, None] * t
    plan[:, :, 14] = (KAPPA * V)[:, None]
    plan[:, :, 3] = V[:, None] + ACCEL[:, None] * t
    plan[:, :, 6] = ACCEL[:, None]
    return plan


def test_each_release_s_rule() -> None:
    plan = {"mean": _plan()}
    curv, accel = desired_controls({"plan": plan}, "plan", V, lat_delay=0.2, long_delay=0.15)
    # the last frame at 0.5 m/s (under openpilot's 1 m/s floor) turns and accelerates nothing
    np.testing.assert_allclose(curv, [0.01, -0.004, 0.0], atol=1e-9)
    np.testing.assert_allclose(accel, ACCEL, atol=1e-9)
    action = np.stack([KAPPA * np.maximum(V, 1) ** 2, ACCEL], 1)
    curv, accel = desired_controls({"action": {"mean": action}}, "action", V, lat_delay=0.2, long_delay=0.15)
    np.testing.assert_allclose(curv, KAPPA)
    np.testing.assert_allclose(accel, ACCEL)
    out = {"plan": plan, "desired_curvature": {"mean": np.array([[0.02], [0.03], [0.04]])}}
    curv, accel = desired_controls(out, "desired_curvature", V, lat_delay=0.2, long_delay=0.15)
    np.testing.assert_allclose(curv, [0.02, 0.03, 0.04])
    np.testing.assert_allclose(accel, ACCEL, atol=1e-9)
    assert control_of({"policy": {"action": [0, 4]}}, None) == "action"
    assert control_of({"policy": {"plan": [0, 990]}}, "supercombo-5hz") == "desired_curvature"


def test_per_frame_delays_are_each_frames_own() -> None:
    """Delays per frame (each segment's own from its log) give each frame what that frame's delay alone gives; a
    plan whose yaw is not linear in time gives other curvatures at other delays."""
    plan = _plan()
    plan[:, :, 11] += 0.01 * C.T_IDXS[None] ** 2  # yaw bending: the curvature depends on when it is read
    lat, lon = np.array([0.1, 0.3, 0.5]), np.array([0.15, 0.35, 0.2])
    curv, accel = desired_controls({"plan": {"mean": plan}}, "plan", V, lat_delay=lat, long_delay=lon)
    for i in range(3):
        c, a = desired_controls({"plan": {"mean": plan[i:i + 1]}}, "plan", V[i:i + 1], lat_delay=float(lat[i]),
                                long_delay=float(lon[i]))
        assert curv[i] == pytest.approx(c[0]) and accel[i] == pytest.approx(a[0])
    other, _ = desired_controls({"plan": {"mean": plan}}, "plan", V, lat_delay=0.2, long_delay=0.15)
    assert abs(other[0] - curv[0]) > 5e-5  # 0.1 s against 0.2 s: 1e-4 1/m apart


def test_driven_curvature_sources() -> None:
    nan = np.full(3, np.nan)
    curv, source = driven_curvature(V, KAPPA * V, nan)
    assert source.startswith("carState") and np.allclose(curv[:2], KAPPA[:2])
    curv, source = driven_curvature(V, nan, 2 * KAPPA * V)
    assert source.startswith("pose") and np.allclose(curv[:2], 2 * KAPPA[:2])
    curv, source = driven_curvature(V, nan, nan)
    assert source.startswith("none") and np.isnan(curv).all()


def test_eval_controls_section() -> None:
    """A 0.10.3-like policy (single plan 990 + desire_state, pad): student equals teacher, the car drove the plan's
    curvature; a student turning harder differs by exactly the difference."""
    slices = {"vision": {"hidden_state": [0, 512]}, "policy": {"plan": [0, 990], "desire_state": [990, 998]}}
    tp = np.zeros((3, 1000), np.float32)
    tp[:, :495] = _plan().reshape(3, -1)
    tv = np.zeros((3, 512), np.float32)
    derive = {"control": "plan", "v_ego": V, "delays": np.array([[0.2, 0.15]] * 3), "smooth": None}
    ctx = {"control": "plan", "teacher": model_controls(tv, tp, slices, **derive), "driven": KAPPA.copy(),
           "driven_from": "carState.yawRate / max(vEgo, 1)"}
    same = compare(tv, tp, tv, tp, slices, controls={**ctx, "student": ctx["teacher"]})["controls"]
    assert same["derived_from"] == "plan" and same["curvature_vs_teacher"] == 0
    assert same["driven"]["teacher"] == pytest.approx(0, abs=1e-6) and same["driven"]["frames"] == 3
    sp = tp.copy()
    sp[:, 11:495:15] *= 1.5  # yaw 1.5 times: curvature 2 * 1.5 kappa - kappa = 2 kappa
    moved = compare(tv, sp, tv, tp, slices,
                    controls={**ctx, "student": model_controls(tv, sp, slices, **derive)})["controls"]
    want = float(np.mean(np.abs(KAPPA)))
    assert moved["curvature_vs_teacher"] == pytest.approx(want, rel=1e-4)
    assert moved["driven"]["student"] == pytest.approx(want, rel=1e-4)
    assert parse_outputs(sp, slices["policy"])["plan"]["mean"].shape == (3, C.IDX_N, C.PLAN_WIDTH)


def _modeld_actions(curv: np.ndarray, accel: np.ndarray, v_ego: np.ndarray, lat_tau: float, long_tau: float
                    ) -> np.ndarray:
    """modeld's get_action_from_model frame by frame (0.10.x, written out from its source): smooth_value on the
    acceleration always, on the curvature above 0.3 m/s, else the previous curvature; prev_action starts at zeros."""
    def smooth_value(val: float, prev_val: float, tau: float, dt: float = DT_MDL) -> float:
        alpha = 1 - np.exp(-dt / tau) if tau > 0 else 1
        return alpha * val + (1 - alpha) * prev_val

    prev_c = prev_a = 0.0
    out = []
    for c, a, v in zip(curv, accel, v_ego, strict=True):
        prev_a = smooth_value(a, prev_a, long_tau)
        prev_c = smooth_value(c, prev_c, lat_tau) if v > 0.3 else prev_c
        out.append((prev_c, prev_a))
    return np.array(out)


@pytest.mark.parametrize("layout", ["split", "split-lateral"])
def test_plan_controls_are_low_passed_as_modeld_does(layout: str) -> None:
    """Over consecutive frames (speeds through a stop), the smoothed controls equal modeld's loop; 0.10.1+ (split)
    lags the raw derivation, 0.10.0 (no smoothing seconds) only holds the curvature at a stop; a run carried on from
    `prev` equals the whole run."""
    rng = np.random.default_rng(0)
    n = 40
    v = np.concatenate([np.linspace(15, 0.0, n // 2), np.linspace(0.0, 12, n // 2)])
    plan = np.repeat(_plan()[:1], n, 0)
    plan[:, :, 11] *= rng.uniform(-2, 2, (n, 1))  # yaw (curvature) and speeds (acceleration) changing every frame
    plan[:, :, 3] += rng.normal(0, 0.5, (n, 1)) * C.T_IDXS[None]
    smooth = LAYOUTS[layout].smooth
    raw = np.stack(desired_controls({"plan": {"mean": plan}}, "plan", v, lat_delay=0.3, long_delay=0.45), -1)
    got = np.stack(desired_controls({"plan": {"mean": plan}}, "plan", v, lat_delay=0.3, long_delay=0.45,
                                    smooth=smooth), -1)
    np.testing.assert_allclose(got, _modeld_actions(raw[:, 0], raw[:, 1], v, *smooth), rtol=1e-12, atol=1e-15)
    stopped = v <= 0.3
    assert stopped.any()
    if layout == "split":
        assert smooth == (0.1, 0.3)
        assert np.abs(got[:, 1] - raw[:, 1]).mean() > 0.1 * np.abs(raw[:, 1]).mean()
    else:
        np.testing.assert_array_equal(got[:, 1], raw[:, 1])
        np.testing.assert_array_equal(got[~stopped, 0], raw[~stopped, 0])
    first = desired_controls({"plan": {"mean": plan[:15]}}, "plan", v[:15], lat_delay=0.3, long_delay=0.45,
                             smooth=smooth)
    rest = desired_controls({"plan": {"mean": plan[15:]}}, "plan", v[15:], lat_delay=0.3, long_delay=0.45,
                            smooth=smooth, prev=(first[0][-1], first[1][-1]))
    np.testing.assert_allclose(np.concatenate([first[0], rest[0]]), got[:, 0], rtol=1e-12)


def test_smoothing_seconds_are_added_to_the_logs_delays_only() -> None:
    """0.11 feeds carParams' delay + LONG_SMOOTH_SECONDS; an override is fed as it is; a label set made before
    smoothing seconds were recorded adds none."""
    meta = {"lat_delay": [0.25, 0.3], "long_delay": 0.35}
    lat, long = DelayChoice(smooth=LAYOUTS["driving-supercombo"].smooth).clip(meta, 2)
    np.testing.assert_allclose(lat, [0.25, 0.3], rtol=1e-6)
    assert long == pytest.approx(0.65)
    lat, long = DelayChoice(smooth=LAYOUTS["split"].smooth).clip(meta, 2)
    np.testing.assert_allclose(lat, [0.35, 0.4], rtol=1e-6)
    assert long == pytest.approx(0.65)
    lat, long = DelayChoice(0.2, 0.15, LAYOUTS["split"].smooth).clip(meta, 2)
    np.testing.assert_allclose(lat, [0.2, 0.2], rtol=1e-6)
    assert long == 0.15
    old = DelayChoice.of_labels({"lat_delay": None, "long_delay": None})
    assert old.smooth == (0.0, 0.0) and old.clip(meta, 2)[1] == 0.35
    assert DelayChoice.of_labels({"smooth_seconds": [0.0, 0.3]}).smooth == (0.0, 0.3)
    assert LAYOUTS["split-lateral"].smooth == LAYOUTS["supercombo-20hz"].smooth == (0.0, 0.0)
