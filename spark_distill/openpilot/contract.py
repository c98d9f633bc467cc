# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot's driving-model contract: history constants, output head widths and layouts.

Sources (commaai/openpilot): selfdrive/modeld/constants.py (ModelConstants), modeld.py (history
buffers), parse_model_outputs.py (head layouts). Shared by the stand-in teachers, the label pass,
the output parser and the students. Slices are always read from a model's metadata; the layouts
here describe what the heads mean and build the stand-ins.
"""

from __future__ import annotations

import numpy as np

MODEL_FREQ = 20  # Hz, one model run per camera frame
HISTORY_FREQ = 5  # Hz, history sampling of the split-era policy
HISTORY_LEN_SECONDS = 5
TEMPORAL_SKIP = MODEL_FREQ // HISTORY_FREQ  # 4: frame pair spacing and history stride
FULL_HISTORY_BUFFER_LEN = MODEL_FREQ * HISTORY_LEN_SECONDS  # 100 frames at 20 Hz
INPUT_HISTORY_BUFFER_LEN = HISTORY_FREQ * HISTORY_LEN_SECONDS  # 25 steps fed to the policy
FEATURE_LEN = 512
DESIRE_LEN = 8
TRAFFIC_CONVENTION_LEN = 2
LATERAL_CONTROL_PARAMS_LEN = 2
PREV_DESIRED_CURV_LEN = 1
IDX_N = 33
T_IDXS = np.array([10.0 * (i / (IDX_N - 1)) ** 2 for i in range(IDX_N)])
X_IDXS = np.array([192.0 * (i / (IDX_N - 1)) ** 2 for i in range(IDX_N)])
LEAD_T_IDXS = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
LEAD_T_OFFSETS = np.array([0.0, 2.0, 4.0])
PLAN_WIDTH, PLAN_MHP_N = 15, 5
NUM_LANE_LINES, NUM_ROAD_EDGES = 4, 2
LEAD_MHP_N, LEAD_MHP_SELECTION, LEAD_TRAJ_LEN, LEAD_WIDTH = 2, 3, 6, 4
DESIRE_PRED_LEN = 4
# plan columns: position, velocity, acceleration, euler from current, orientation rate (x, y, z each)
PLAN_POSITION, PLAN_VELOCITY, PLAN_ACCELERATION = slice(0, 3), slice(3, 6), slice(6, 9)
PLAN_T_FROM_CURRENT_EULER, PLAN_ORIENTATION_RATE = slice(9, 12), slice(12, 15)

# head -> (parser kind, arguments) as parse_model_outputs.py uses them
HEADS: dict[str, tuple[str, dict]] = {
    "plan": ("mdn", {"in_n": PLAN_MHP_N, "out_n": 1, "shape": (IDX_N, PLAN_WIDTH)}),
    "lane_lines": ("mdn", {"in_n": 0, "out_n": 0, "shape": (NUM_LANE_LINES, IDX_N, 2)}),
    "road_edges": ("mdn", {"in_n": 0, "out_n": 0, "shape": (NUM_ROAD_EDGES, IDX_N, 2)}),
    "lead": ("mdn", {"in_n": LEAD_MHP_N, "out_n": LEAD_MHP_SELECTION, "shape": (LEAD_TRAJ_LEN, LEAD_WIDTH)}),
    "pose": ("mdn", {"in_n": 0, "out_n": 0, "shape": (6,)}),
    "wide_from_device_euler": ("mdn", {"in_n": 0, "out_n": 0, "shape": (3,)}),
    "road_transform": ("mdn", {"in_n": 0, "out_n": 0, "shape": (6,)}),
    "sim_pose": ("mdn", {"in_n": 0, "out_n": 0, "shape": (6,)}),
    "desired_curvature": ("mdn", {"in_n": 0, "out_n": 0, "shape": (1,)}),
    # 0.11: [desired curvature x max(1, v)^2, desired acceleration] means, then their log-stds
    "action": ("mdn", {"in_n": 0, "out_n": 0, "shape": (2,)}),
    "lane_lines_prob": ("sigmoid", {}),
    "lead_prob": ("sigmoid", {}),
    "meta": ("sigmoid", {}),
    "desire_state": ("softmax", {"shape": (DESIRE_LEN,)}),
    "desire_pred": ("softmax", {"shape": (DESIRE_PRED_LEN, DESIRE_LEN)}),
    "hidden_state": ("raw", {}),
}


def mdn_width(in_n: int, out_n: int, shape: tuple[int, ...]) -> int:
    """Raw width of a Gaussian/Laplace head: per hypothesis [means | log-stds] plus out_n logits."""
    n = int(np.prod(shape))
    return max(in_n, 1) * (2 * n + out_n) if in_n else 2 * n


def head_width(name: str, *, meta_width: int = 55) -> int:
    kind, args = HEADS[name]
    if kind == "mdn":
        return mdn_width(args["in_n"], args["out_n"], args["shape"])
    return {"lane_lines_prob": 2 * NUM_LANE_LINES, "lead_prob": LEAD_MHP_SELECTION, "meta": meta_width,
            "desire_state": DESIRE_LEN, "desire_pred": DESIRE_PRED_LEN * DESIRE_LEN,
            "hidden_state": FEATURE_LEN}[name]


VISION_HEADS = ("lane_lines", "lane_lines_prob", "road_edges", "lead", "lead_prob", "desire_pred", "meta",
                "pose", "wide_from_device_euler", "road_transform", "hidden_state")
POLICY_HEADS_V1 = ("plan", "desire_state", "desired_curvature")
POLICY_HEADS_V2 = ("plan", "desire_state")


def layout(heads: tuple[str, ...], *, meta_width: int = 55) -> dict[str, slice]:
    """Consecutive slices of the flat output vector for `heads`, in order."""
    out, start = {}, 0
    for h in heads:
        w = head_width(h, meta_width=meta_width)
        out[h] = slice(start, start + w)
        start += w
    return out
