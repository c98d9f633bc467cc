# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot modeld's recurrent inputs, for B segments advancing in lockstep (one batch row each).

Mirrors selfdrive/modeld/modeld.py (split era) and models/commonmodel.cc:
- images: a 20 Hz ring of TEMPORAL_SKIP + 1 frames per camera; the model sees [oldest, newest]
  (frames t-4 and t) as 12 channels;
- features: the vision hidden_state of every frame in a 20 Hz buffer of 100; the policy gets every
  4th entry ending at the newest (frames t-96, t-92, …, t);
- desire: one-hot with `none` zeroed, turned into rising-edge pulses, kept at 20 Hz; the policy gets
  the max over each group of 4 (any pulse in each 200 ms bin);
- prev_desired_curv (v1): the policy's own previous desired curvature, sampled like the features.
All buffers start at zero (modeld's start-up) and are reset per row at each segment start. Every update
is in place (the buffers keep their addresses), so a step can be captured in a CUDA graph. Main
entry points: `ModeldState.vision_inputs`, `.push_features`, `.policy_inputs`, `.push_curvature`.
"""

from __future__ import annotations

import numpy as np
import torch

from spark_distill.openpilot import contract as C


def sample_indices(history: int, device: torch.device | None = None) -> torch.Tensor:
    """modeld's temporal_idxs: every TEMPORAL_SKIP-th entry of the 20 Hz buffer, ending at the newest."""
    full = history * C.TEMPORAL_SKIP
    return torch.arange(full - 1 - C.TEMPORAL_SKIP * (history - 1), full, C.TEMPORAL_SKIP, device=device)


def push(buf: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Shift a (B, N, …) buffer by one and append `new` (B, …) as the newest entry (modeld's shifting)."""
    return torch.cat([buf[:, 1:], new.unsqueeze(1)], dim=1)


def desire_pulse(desire: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pulse, new prev): one-hot desire with `none` zeroed, kept only on its rising edge (modeld)."""
    desire = desire.float()
    # `none` zeroed by concatenation, not `desire[:, 0] = 0`: that exports as ScatterND, which tinygrad 0.14
    # (openpilot's ONNX runner) cannot run on this graph ("can't setitem on a tensor with other uses")
    desire = torch.cat([torch.zeros_like(desire[:, :1]), desire[:, 1:]], dim=1)
    return torch.where(desire - prev > 0.99, desire, torch.zeros_like(desire)), desire


def policy_feeds(names: list[str], *, features: torch.Tensor, desire: torch.Tensor, curv: torch.Tensor,
                 traffic: torch.Tensor, v_ego: torch.Tensor, history: int, idx: torch.Tensor,
                 lat_delay: float) -> dict[str, torch.Tensor]:
    """The policy's inputs by name from the 20 Hz buffers (features and desire include this frame; curv holds
    previous outputs only)."""
    b = features.shape[0]
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "features_buffer":
            out[name] = features[:, idx]  # (B, 25, 512), newest last
        elif name in ("desire", "desire_pulse"):
            out[name] = desire.reshape(b, history, C.TEMPORAL_SKIP, C.DESIRE_LEN).amax(dim=2)
        elif name == "traffic_convention":
            out[name] = traffic.float()
        elif name == "lateral_control_params":
            out[name] = torch.stack([v_ego.float().clamp(min=0.0), torch.full_like(v_ego.float(), lat_delay)], dim=1)
        elif name == "prev_desired_curv":
            out[name] = curv[:, idx]
    return out


class ModeldState:
    def __init__(self, rows: int, *, history: int = C.INPUT_HISTORY_BUFFER_LEN, device: torch.device,
                 lat_delay: float = 0.2) -> None:
        self.history, self.device, self.lat_delay = history, device, lat_delay
        full = history * C.TEMPORAL_SKIP
        self.full = full
        z = dict(device=device)
        # image rings (written in place: shifting 5 frames per row per step is the largest copy there is)
        self.images = {cam: torch.zeros(rows, C.TEMPORAL_SKIP + 1, 6, 128, 256, dtype=torch.uint8, **z)
                       for cam in ("road", "wide")}
        self.newest = torch.zeros(rows, dtype=torch.long, device=device)  # ring slot of each row's newest frame
        self.rows = torch.arange(rows, device=device)
        self.features = torch.zeros(rows, full, C.FEATURE_LEN, **z)
        self.desire = torch.zeros(rows, full, C.DESIRE_LEN, **z)
        self.prev_desire = torch.zeros(rows, C.DESIRE_LEN, **z)
        self.curv = torch.zeros(rows, full, 1, **z)
        self.sample_idx = sample_indices(history, device)

    def reset(self, rows: torch.Tensor) -> None:
        """A new segment starts in `rows` (a (k,) index tensor on the device): every history back to zeros."""
        for buf in (*self.images.values(), self.features, self.desire, self.prev_desire, self.curv):
            buf.index_fill_(0, rows, 0)

    def clear(self) -> None:
        """Every row back to modeld's start-up state (all buffers zero)."""
        self.reset(self.rows)
        self.newest.zero_()

    def _advance_images(self) -> None:
        self.newest.add_(1).remainder_(C.TEMPORAL_SKIP + 1)

    def vision_inputs(self, road: torch.Tensor, wide: torch.Tensor) -> dict[str, torch.Tensor]:
        """Push this frame of each camera (B, 6, 128, 256) uint8; return the 2-frame stacks (B, 12, 128, 256)."""
        self._advance_images()
        oldest = (self.newest + 1) % (C.TEMPORAL_SKIP + 1)
        stacks = {}
        for cam, frame in (("road", road), ("wide", wide)):
            ring = self.images[cam]
            ring[self.rows, self.newest] = frame
            stacks[cam] = torch.cat([ring[self.rows, oldest], frame], dim=1)  # oldest (t-4) first, as commonmodel.cc
        return stacks

    def push_features(self, hidden: torch.Tensor) -> None:
        self.features.copy_(push(self.features, hidden.float()))

    def push_desire(self, desire: torch.Tensor) -> None:
        """desire (B, 8) one-hot for this frame -> a rising-edge pulse into the 20 Hz buffer."""
        pulse, prev = desire_pulse(desire, self.prev_desire)
        self.prev_desire.copy_(prev)
        self.desire.copy_(push(self.desire, pulse))

    def policy_inputs(self, names: list[str], traffic: torch.Tensor, v_ego: torch.Tensor) -> dict[str, torch.Tensor]:
        """The policy's inputs by name, for this frame (after push_features and push_desire)."""
        return policy_feeds(names, features=self.features, desire=self.desire, curv=self.curv, traffic=traffic,
                            v_ego=v_ego, history=self.history, idx=self.sample_idx, lat_delay=self.lat_delay)

    def push_curvature(self, curvature: torch.Tensor) -> None:
        self.curv.copy_(push(self.curv, curvature.reshape(-1, 1).float()))

    def skip_frames(self, which: torch.Tensor, counts: np.ndarray) -> None:
        """Frames the log saw but the video lacks (encoder drops): keep 20 Hz timing by repeating the
        newest entry of every buffer `counts[j]` times in row `which[j]`, with no desire pulse (all rows
        in one batched update per repeated frame)."""
        slots = C.TEMPORAL_SKIP + 1
        for k in range(int(counts.max(initial=0))):
            rows = which if (counts > k).all() else which[torch.from_numpy(np.flatnonzero(counts > k)).to(which.device)]
            prev = self.newest[rows]
            nxt = (prev + 1) % slots
            self.newest[rows] = nxt
            for ring in self.images.values():
                ring[rows, nxt] = ring[rows, prev]
            for name in ("features", "curv"):
                buf = getattr(self, name)
                buf[rows] = torch.cat([buf[rows, 1:], buf[rows, -1:]], dim=1)
            self.desire[rows] = torch.cat([self.desire[rows, 1:], torch.zeros_like(self.desire[rows, -1:])], dim=1)
