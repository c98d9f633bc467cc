# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The fitted stand-in teacher's networks: openpilot's split-model contract around a small scene state.

Vision: a conv net reads the 2-frame road stack (frame t and its difference to frame t-4) and a pooled
wide frame and estimates the scene state s = (lateral position on the road, road curvature, lead
distance, lead closing rate, speed, lane width). The heads are openpilot's outputs computed from s with the
geometry the synthetic road is built on (lane lines and road edges as parabolas in the calibrated
frame, the lead in the middle lane); s itself, scaled to O(1), is the start of `hidden_state`, so the
policy's 5 s `features_buffer` is the history of s. Policy: an MLP from that history, the desire
pulses, the traffic convention (and v1's lateral_control_params, prev_desired_curv) to the plan, the
desire state (and v1's desired curvature). Both are fitted by `synth.fit`; the export is plain ONNX.
Entry points: `DriveVision`, `DrivePolicy`, `STATE`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spark_distill.openpilot import contract as C
from spark_distill.synth.scene import CAMERA_HEIGHT

# scene state: name -> scale that makes it O(1) in hidden_state
STATE = {"lateral": 1.0, "curvature": 1000.0, "lead_distance": 0.1, "lead_rate": 0.5, "speed": 0.1, "lane_width": 1.0}
STATE_LEN = len(STATE)
EDGE_PAST_LINES = 0.3  # m: scene.py paints the asphalt's edge this far past the outer lines
LINE_OFFSETS = (-1.5, -0.5, 0.5, 1.5)  # lane lines, in lanes from the ego-lane centre (openpilot's order)
PAINTED = 1.5  # the scene paints lines out to +-1.5 lanes from the middle lane's centre
LOG_STD = {"lane_lines": -2.0, "road_edges": -1.5, "lead": -0.5, "pose": -2.0, "other": -3.0, "plan": -1.0,
           "desired_curvature": -7.0}
PLAN_COLUMNS = 15


class ImageNet(nn.Module):
    """Road stack (B, 12, 128, 256) uint8 and wide stack -> normalised scene state (B, STATE_LEN)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.convs = nn.Sequential(  # rows 16.. of 128 (the road is below the horizon, row ~24)
            nn.Conv2d(8, width, 4, 4), nn.ReLU(),  # (B, w, 28, 64)
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),  # (B, 2w, 14, 32)
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),  # (B, 4w, 7, 16)
        )
        self.wide_pool = nn.AvgPool2d(16)  # (B, 4, 8, 16) of the wide frame's Y
        self.fc = nn.Sequential(nn.Linear(4 * width * 7 * 16 + 4 * 8 * 16, 64), nn.ReLU(), nn.Linear(64, STATE_LEN))

    @staticmethod
    def planes(img: torch.Tensor, big_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the net reads, float in uint8 units: the 4 Y sub-planes of road frames t-4 and t below row 16
        (B, 4, 112, 256) each, and of the wide frame t (B, 4, 128, 256)."""
        return img[:, 0:4, 16:].float(), img[:, 6:10, 16:].float(), big_img[:, 6:10].float()

    def head(self, y_old: torch.Tensor, y_new: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        y_old, y_new = y_old * (1.0 / 255.0) - 0.5, y_new * (1.0 / 255.0) - 0.5  # openpilot feeds raw uint8
        road = self.convs(torch.cat([y_new, y_new - y_old], 1)).flatten(1)
        return self.fc(torch.cat([road, self.wide_pool(wide * (1.0 / 255.0) - 0.5).flatten(1)], 1))

    def forward(self, img: torch.Tensor, big_img: torch.Tensor) -> torch.Tensor:
        return self.head(*self.planes(img, big_img))


def _scale() -> torch.Tensor:
    return torch.tensor(list(STATE.values()))


def _fill(n: int, value: float, like: torch.Tensor) -> torch.Tensor:
    """(B, n) filled with value, B taken from `like` (B, ...) as a graph op, so the export batches."""
    return (like[:, :1] * 0.0 + value).expand(-1, n)


def vision_heads(s: torch.Tensor, slices: dict[str, slice]) -> torch.Tensor:
    """openpilot's vision output vector (B, N) from physical scene states s (B, STATE_LEN)."""
    lat, kappa, dist, rate, speed, width = (s[:, i:i + 1] for i in range(STATE_LEN))
    x = torch.tensor(C.X_IDXS, dtype=s.dtype)[None]  # (1, 33)
    bend = 0.5 * kappa * x * x - lat  # (B, 33): a road-frame line at lateral 0, in the calibrated frame
    lane = torch.round(lat / width)  # (B, 1) the lane the car is in (0: the middle one)
    height = _fill(C.IDX_N, CAMERA_HEIGHT, s)
    offsets = torch.tensor(LINE_OFFSETS, dtype=s.dtype)[None]  # (1, 4)
    lines = [torch.stack([(lane + j) * width + bend, height], -1) for j in LINE_OFFSETS]  # (B, 33, 2) each
    painted = torch.clamp(24.0 * (PAINTED + 0.25 - torch.abs(lane + offsets)), -6.0, 6.0)  # (B, 4) logits
    edge = PAINTED * width + EDGE_PAST_LINES  # (B, 1) the asphalt's edge right of the middle lane's centre
    edges = [torch.stack([e + bend, height], -1) for e in (-edge, edge)]
    t = torch.tensor(C.LEAD_T_IDXS, dtype=s.dtype)[None]  # (1, 6)
    lead_y = 0.5 * kappa * dist * dist - lat  # the lead drives in the middle lane
    lead = torch.stack([torch.clamp(dist + rate * t, min=0.0), lead_y.expand(-1, 6), (speed + rate).expand(-1, 6),
                        _fill(6, 0.0, s)], -1).flatten(1)  # (B, 24)
    lead_logits = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=s.dtype)
    lead_hyps = [torch.cat([lead, _fill(24, LOG_STD["lead"], s), _fill(3, 0.0, s) + lead_logits[h]], 1)
                 for h in (0, 1)]
    lead_prob = torch.clamp(4.0 * (0.5 * width - 0.05 - torch.abs(lead_y)), -6.0, 6.0).expand(-1, C.LEAD_MHP_SELECTION)
    zeros = speed * 0.0  # not zeros_like: with static input shapes the export folds that to batch 1
    pose = torch.cat([speed, zeros, zeros, zeros, zeros, speed * kappa], 1)
    desire_pred = torch.tensor([4.0] + [0.0] * (C.DESIRE_LEN - 1), dtype=s.dtype).repeat(C.DESIRE_PRED_LEN)
    parts = {
        "lane_lines": torch.cat([torch.stack(lines, 1).flatten(1), _fill(4 * 33 * 2, LOG_STD["lane_lines"], s)], 1),
        "lane_lines_prob": torch.stack([-painted, painted], -1).flatten(1),
        "road_edges": torch.cat([torch.stack(edges, 1).flatten(1), _fill(2 * 33 * 2, LOG_STD["road_edges"], s)], 1),
        "lead": torch.cat(lead_hyps, 1),
        "lead_prob": lead_prob,
        "desire_pred": _fill(desire_pred.numel(), 0.0, s) + desire_pred,
        "pose": torch.cat([pose, _fill(6, LOG_STD["pose"], s)], 1),
        "hidden_state": torch.cat([s * _scale(), _fill(C.FEATURE_LEN - STATE_LEN, 0.0, s)], 1),
    }
    out = []
    for name, sl in sorted(slices.items(), key=lambda kv: kv[1].start):
        width = sl.stop - sl.start
        if name in parts:
            out.append(parts[name])
        elif name == "meta":
            out.append(_fill(width, -5.0, s))
        else:  # wide_from_device_euler, road_transform: zero means, small stds
            half = width // 2
            out.append(torch.cat([_fill(half, 0.0, s), _fill(width - half, LOG_STD["other"], s)], 1))
    return torch.cat(out, 1)


class DriveVision(nn.Module):
    """img, big_img (B, 12, 128, 256) uint8 -> openpilot's vision output vector."""

    def __init__(self, slices: dict[str, slice]) -> None:
        super().__init__()
        self.net = ImageNet()
        self.slices = slices

    def state(self, img: torch.Tensor, big_img: torch.Tensor) -> torch.Tensor:
        """Physical scene state (B, STATE_LEN)."""
        return self.net(img, big_img) / _scale()

    def forward(self, img: torch.Tensor, big_img: torch.Tensor) -> torch.Tensor:
        return vision_heads(self.state(img, big_img), self.slices)


def policy_in_features(inputs: dict[str, tuple[int, ...]]) -> int:
    """Width of the policy MLP's input for a contract's inputs."""
    n = 0
    for name, shape in inputs.items():
        n += shape[1] * STATE_LEN if name == "features_buffer" else int(np.prod(shape[1:]))
    return n


class DrivePolicy(nn.Module):
    """openpilot's policy inputs (by name, graph order) -> the policy output vector (plan, desire state, ...)."""

    def __init__(self, inputs: dict[str, tuple[int, ...]], slices: dict[str, slice], width: int = 256) -> None:
        super().__init__()
        self.names, self.slices = list(inputs), slices
        self.mlp = nn.Sequential(nn.Linear(policy_in_features(inputs), width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, C.IDX_N * PLAN_COLUMNS + C.DESIRE_LEN + 1))
        # the plan is predicted standardised per (horizon, column); the fit sets these from its targets
        self.register_buffer("plan_mean", torch.zeros(C.IDX_N, PLAN_COLUMNS))
        self.register_buffer("plan_scale", torch.ones(C.IDX_N, PLAN_COLUMNS))

    def features(self, *args: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.names, args, strict=True))
        parts = []
        for name in self.names:
            v = x[name]
            if name == "features_buffer":
                v = v[..., :STATE_LEN]  # (B, 25, STATE_LEN): the history of the scene state
            elif name == "lateral_control_params":
                v = v * torch.tensor([0.1, 1.0])  # v_ego to O(1)
            elif name == "prev_desired_curv":  # the policy's own past outputs: fed back at label time, a loop
                v = v * 0.0  # that drifts; the input stays in the graph (the contract), unused
            parts.append(v.flatten(1))
        return torch.cat(parts, 1)

    def raw(self, *args: torch.Tensor) -> torch.Tensor:
        """(B, 33*15 + 8 + 1): plan residuals (standardised), desire-state logits, desired curvature (1/km)."""
        return self.mlp(self.features(*args))

    def baseline(self, *args: torch.Tensor) -> torch.Tensor:
        """(B, 33, 15) constant speed and curvature from the newest scene state (v1: the car's own speed): the
        kinematics the MLP only corrects (acceleration, changing curvature, lane changes)."""
        x = dict(zip(self.names, args, strict=True))
        hist = x["features_buffer"][..., :STATE_LEN]  # (B, 25, S), scaled
        speed = hist[:, -3:, 4].mean(1, keepdim=True) / STATE["speed"]  # (B, 1), m/s
        if "lateral_control_params" in x:
            speed = x["lateral_control_params"][:, :1]
        kappa = hist[:, -1:, 1] / STATE["curvature"]  # (B, 1)
        t = torch.tensor(C.T_IDXS, dtype=hist.dtype)[None]  # (1, 33)
        dist = speed * t
        zero = dist * 0.0  # (B, 33); not zeros_like (folded to batch 1 in the export)
        cols = [dist, 0.5 * kappa * dist * dist, zero, speed + zero, zero, zero, zero, speed * speed * kappa
                + zero, zero, zero, zero, kappa * dist, zero, zero, speed * kappa + zero]
        return torch.stack(cols, -1)  # (B, 33, 15)

    def plan(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(plan (B, 33, 15) in device-frame units, raw MLP output)."""
        r = self.raw(*args)
        n = C.IDX_N * PLAN_COLUMNS
        resid = r[:, :n].reshape(-1, C.IDX_N, PLAN_COLUMNS) * self.plan_scale + self.plan_mean
        return self.baseline(*args) + resid, r

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        plan, r = self.plan(*args)
        n = C.IDX_N * PLAN_COLUMNS
        hyp = torch.cat([plan.flatten(1), _fill(n, LOG_STD["plan"], r)], 1)
        hyps = [torch.cat([hyp, _fill(1, 3.0 if h == 0 else 0.0, r)], 1) for h in range(C.PLAN_MHP_N)]
        parts = {"plan": torch.cat(hyps, 1), "desire_state": r[:, n:n + C.DESIRE_LEN],
                 "desired_curvature": torch.cat([r[:, -1:] * 1e-3, _fill(1, LOG_STD["desired_curvature"], r)],
                                                1)}
        return torch.cat([parts[name] for name, _ in sorted(self.slices.items(), key=lambda kv: kv[1].start)], 1)
