# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot modeld's recurrent inputs, for B segments advancing in lockstep (one batch row each), for every
supported layout (releases.History says which semantics a layout has).

Mirrors selfdrive/modeld/modeld.py of each era and models/commonmodel.cc:
- images: a 20 Hz ring of `pair_skip` + 1 frames per camera; the model sees [oldest, newest] as 12 channels
  (frames t-1 and t in the 20 Hz supercombos, t-4 and t from late 2024 on);
- features: the hidden_state of every frame in a 20 Hz buffer; the model gets every `stride`-th entry: a split
  policy's end at this frame (the vision ran first: t-96, …, t), a combined model's are past only (its own
  hidden_state is pushed after it ran: t-96, …, t-4 at 5 Hz, t-99, …, t-1 at 20 Hz);
- desire: one-hot with `none` zeroed, turned into rising-edge pulses, kept at 20 Hz including this frame; the model
  gets the max over each group of `stride` (any pulse in each 200 ms bin; no pooling at 20 Hz);
- prev_desired_curv: the model's own previous desired curvatures (20 Hz supercombos), or zeros (0.10.0's modeld fed
  `0*self.full_prev_desired_curv[...]`; late 2024 taken to be the same);
- lateral_control_params [max(v_ego, 0), lateral delay]; action_t [lateral, longitudinal delay] + 1.5 DT_MDL, the
  delays per row and frame (`delays` (B, 2): the segment's own, from its log, ingest/delays.py) or one pair for all;
  0.9.6's nav_features / nav_instructions zeros (modeld without navigation).
All buffers start at zero (modeld's start-up) and are reset per row at each segment start. Every update
is in place (the buffers keep their addresses), so a step can be captured in a CUDA graph. Main
entry points: `ModeldState.vision_inputs`, `.push_features`, `.push_desire`, `.policy_inputs`, `.push_curvature`.
"""

from __future__ import annotations

import numpy as np
import torch

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.releases import (
    ACTION_T_FRAMES,
    DEFAULT_LAT_DELAY,
    DEFAULT_LONG_DELAY,
    DT_MDL,
    SPLIT_LATERAL,
    History,
)

__all__ = ["DEFAULT_LAT_DELAY", "DEFAULT_LONG_DELAY", "ModeldState", "action_t", "policy_feeds"]


def sample_indices(history: int, device: torch.device | None = None, *, stride: int = C.TEMPORAL_SKIP,
                   includes_current: bool = True) -> torch.Tensor:
    """modeld's temporal indices into a 20 Hz buffer of `history * stride` entries: every `stride`-th entry, ending
    at the newest (a split policy's, pushed before it runs) or `stride - 1` before it (a combined model's past-only
    buffer, whose newest entry is the previous frame's)."""
    full = history * stride
    first = full - 1 - stride * (history - 1) if includes_current else 0
    return torch.arange(first, full, stride, device=device)


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


def action_t(lat_delay: float, long_delay: float) -> list[float]:
    """0.11's action_t input: the times the controls act at, [lateral, longitudinal delay] + 1.5 DT_MDL."""
    return [lat_delay + ACTION_T_FRAMES * DT_MDL, long_delay + ACTION_T_FRAMES * DT_MDL]


def policy_feeds(names: list[str], *, features: torch.Tensor, desire: torch.Tensor, curv: torch.Tensor,
                 traffic: torch.Tensor, v_ego: torch.Tensor, history: int, idx: torch.Tensor,
                 lat_delay: float, long_delay: float = DEFAULT_LONG_DELAY, stride: int = C.TEMPORAL_SKIP,
                 prev_curv: str = "zeros", shapes: dict[str, tuple[int, ...]] | None = None,
                 action: torch.Tensor | None = None, delays: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The history inputs by name from the 20 Hz buffers (`features` sampled at `idx`; `desire` pulses including
    this frame, pooled over `stride`; `curv` the model's previous outputs, fed where `prev_curv` is "own"). The
    delays: `delays` (B, 2) [lateral, longitudinal] per row where given, else `lat_delay` / `long_delay` (`action`:
    their action_t, made once) for every row."""
    b = features.shape[0]
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "features_buffer":
            out[name] = features[:, idx]  # (B, T, 512), newest last
        elif name in ("desire", "desire_pulse"):
            out[name] = desire.reshape(b, -1, stride, C.DESIRE_LEN).amax(dim=2)
        elif name == "traffic_convention":
            out[name] = traffic.float()
        elif name == "lateral_control_params":
            lat = delays[:, 0].float() if delays is not None else torch.full_like(v_ego.float(), lat_delay)
            out[name] = torch.stack([v_ego.float().clamp(min=0.0), lat], dim=1)
        elif name == "prev_desired_curv":
            out[name] = (curv[:, stride - 1::stride] if prev_curv == "own"
                         else torch.zeros_like(curv[:, stride - 1::stride]))
        elif name == "action_t":
            if delays is not None:
                out[name] = delays.float() + ACTION_T_FRAMES * DT_MDL
                continue
            if action is None:
                action = torch.tensor([action_t(lat_delay, long_delay)], device=features.device)
            out[name] = action.expand(b, 2)
        elif name in ("nav_features", "nav_instructions"):  # 0.9.6 without navigation: zeros, as modeld fed them
            out[name] = torch.zeros((b, *(shapes or {}).get(name, (1, 1))[1:]), device=features.device)
    return out


class ModeldState:
    def __init__(self, rows: int, *, history: History = SPLIT_LATERAL.history, device: torch.device,
                 lat_delay: float = DEFAULT_LAT_DELAY, long_delay: float = DEFAULT_LONG_DELAY,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.semantics, self.device = history, device
        self.lat_delay, self.long_delay, self.shapes = lat_delay, long_delay, shapes
        self.history, self.stride, self.slots = history.features, history.stride, history.pair_skip + 1
        self.full = history.full
        z = dict(device=device)
        # image rings (written in place: shifting 5 frames per row per step is the largest copy there is)
        self.images = {cam: torch.zeros(rows, self.slots, 6, 128, 256, dtype=torch.uint8, **z)
                       for cam in ("road", "wide")}
        self.newest = torch.zeros(rows, dtype=torch.long, device=device)  # ring slot of each row's newest frame
        self.rows = torch.arange(rows, device=device)
        self.features = torch.zeros(rows, self.full, C.FEATURE_LEN, **z)
        self.desire = torch.zeros(rows, history.desire * history.stride, C.DESIRE_LEN, **z)
        self.prev_desire = torch.zeros(rows, C.DESIRE_LEN, **z)
        self.curv = torch.zeros(rows, history.desire * history.stride, 1, **z)
        self.sample_idx = sample_indices(history.features, device, stride=history.stride,
                                         includes_current=history.includes_current)
        self.action_t = torch.tensor([action_t(lat_delay, long_delay)], device=device)  # made once: no copy in a step

    def reset(self, rows: torch.Tensor) -> None:
        """A new segment starts in `rows` (a (k,) index tensor on the device): every history back to zeros."""
        for buf in (*self.images.values(), self.features, self.desire, self.prev_desire, self.curv):
            buf.index_fill_(0, rows, 0)

    def clear(self) -> None:
        """Every row back to modeld's start-up state (all buffers zero)."""
        self.reset(self.rows)
        self.newest.zero_()

    def _advance_images(self) -> None:
        self.newest.add_(1).remainder_(self.slots)

    def vision_inputs(self, road: torch.Tensor, wide: torch.Tensor) -> dict[str, torch.Tensor]:
        """Push this frame of each camera (B, 6, 128, 256) uint8; return the 2-frame stacks (B, 12, 128, 256)."""
        self._advance_images()
        oldest = (self.newest + 1) % self.slots
        stacks = {}
        for cam, frame in (("road", road), ("wide", wide)):
            ring = self.images[cam]
            ring[self.rows, self.newest] = frame
            stacks[cam] = torch.cat([ring[self.rows, oldest], frame], dim=1)  # older frame first, as commonmodel.cc
        return stacks

    def push_features(self, hidden: torch.Tensor) -> None:
        self.features.copy_(push(self.features, hidden.float()))

    def push_desire(self, desire: torch.Tensor) -> None:
        """desire (B, 8) one-hot for this frame -> a rising-edge pulse into the 20 Hz buffer."""
        pulse, prev = desire_pulse(desire, self.prev_desire)
        self.prev_desire.copy_(prev)
        self.desire.copy_(push(self.desire, pulse))

    def policy_inputs(self, names: list[str], traffic: torch.Tensor, v_ego: torch.Tensor,
                      delays: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The history inputs by name, for this frame (split: after push_features and push_desire; combined: after
        push_desire, before the model runs and its hidden_state is pushed); `delays` (B, 2) each row's [lateral,
        longitudinal] delay, else the state's one pair."""
        return policy_feeds(names, features=self.features, desire=self.desire, curv=self.curv, traffic=traffic,
                            v_ego=v_ego, history=self.history, idx=self.sample_idx, lat_delay=self.lat_delay,
                            long_delay=self.long_delay, stride=self.stride, prev_curv=self.semantics.prev_curv,
                            shapes=self.shapes, action=self.action_t, delays=delays)

    def push_curvature(self, curvature: torch.Tensor) -> None:
        self.curv.copy_(push(self.curv, curvature.reshape(-1, 1).float()))

    def skip_frames(self, which: torch.Tensor, counts: np.ndarray) -> None:
        """Frames the log saw but the video lacks (encoder drops): keep 20 Hz timing by repeating the
        newest entry of every buffer `counts[j]` times in row `which[j]`, with no desire pulse (all rows
        in one batched update per repeated frame)."""
        for k in range(int(counts.max(initial=0))):
            rows = which if (counts > k).all() else which[torch.from_numpy(np.flatnonzero(counts > k)).to(which.device)]
            prev = self.newest[rows]
            nxt = (prev + 1) % self.slots
            self.newest[rows] = nxt
            for ring in self.images.values():
                ring[rows, nxt] = ring[rows, prev]
            for name in ("features", "curv"):
                buf = getattr(self, name)
                buf[rows] = torch.cat([buf[rows, 1:], buf[rows, -1:]], dim=1)
            self.desire[rows] = torch.cat([self.desire[rows, 1:], torch.zeros_like(self.desire[rows, -1:])], dim=1)
