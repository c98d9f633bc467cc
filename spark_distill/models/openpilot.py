# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot's own model as a student: the release's ONNX graphs imported into torch (onnx2torch), with modeld's
histories (features, desire pulses, previous curvatures) kept as an explicit recurrent state, so fine-tuning
openpilot's model uses the same training loop as the compact student. Main entry point:
`OpenpilotStudent.from_onnx(paths)` (a folder with a release's models, recognised as the label pass recognises it).

Every supported layout (openpilot/releases.py), with the loop of its era from openpilot/state.py (the functions the
label pass's `ModeldState` uses, on an explicit state instead of in-place buffers):
- split (0.10.0 .. 0.10.3): the vision graph is stateless per frame (`encode`, run once over every frame of a clip);
  the policy step pushes this frame's hidden_state, then runs on the buffer including it (`policy_step`; the
  feature-cached mode feeds it the teacher's stored hidden_state and decodes no image);
- combined (0.9.x supercombo, 0.11 driving_supercombo): one graph takes the images and the past-only histories
  and returns every head and its own hidden_state, pushed after it ran (`forward`, frame by frame: there is no
  stateless half, so the feature-cached mode does not apply and training decodes the images). Its output is split
  into the label set's two members exactly as the label pass splits it (`Teacher.member_columns`).

The state is one flat tensor per lane: [features (full x 512) | desire pulses (20 Hz) | previous desire (8) |
previous curvatures (20 Hz)], sized by the layout's history. History inputs are fed in the graph's dtypes (0.10.x
policies take float16), as the label pass feeds them. The delays (lateral_control_params[1], action_t): each frame's
[lateral, longitudinal] pair where the caller passes `delays` (B, 2) (training and eval pass the ones the labels
were made with: openpilot/delays.py), else the student's `lat_delay` / `long_delay` for every row. DoRA targets: the
policy graph's dense layers (split), every dense layer of the one graph (combined).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.onnx_import import onnx_to_torch
from spark_distill.openpilot.state import (
    DEFAULT_LAT_DELAY,
    DEFAULT_LONG_DELAY,
    action_t,
    desire_pulse,
    policy_feeds,
    push,
    sample_indices,
)
from spark_distill.openpilot.teachers import Teacher, load_teacher, make_batch_dynamic

# DoRA targets of a split student: every Linear (ONNX Gemm) of the policy graph; onnx2torch names modules after the
# ONNX nodes. A combined student's are its dense layers, by name (`OpenpilotStudent.default_targets`).
DEFAULT_TARGETS = ["policy.*"]


class OpenpilotStudent(nn.Module):
    """A release's model (split pair or one combined graph) with modeld's loop of its layout as explicit state."""

    takes_delays = True  # forward / recurrent_step take each row's delays (train.step.Unroll, evaluate.rollout)

    def __init__(self, teacher: Teacher, vision_model: Any, policy_model: Any = None, *,
                 lat_delay: float = DEFAULT_LAT_DELAY, long_delay: float = DEFAULT_LONG_DELAY) -> None:
        super().__init__()
        self.teacher, self.layout = teacher, teacher.layout
        h = self.layout.history
        self.combined = teacher.combined
        self.pair_skip, self.stride, self.history = h.pair_skip, h.stride, h.features
        self.lat_delay, self.long_delay = lat_delay, long_delay
        if self.combined:
            self.model = onnx_to_torch(make_batch_dynamic(vision_model))
            self.input_names = list(teacher.vision.inputs)
            for member, runs in teacher.member_columns().items():
                cols = torch.cat([torch.arange(a, b) for a, b in runs])
                self.register_buffer(f"{member}_columns", cols, persistent=False)
            self.curv = teacher.vision.slices.get("desired_curvature")
        else:
            self.vision = onnx_to_torch(make_batch_dynamic(vision_model))
            self.policy = onnx_to_torch(make_batch_dynamic(policy_model))
            self.curv = teacher.policy.slices.get("desired_curvature")
        if h.prev_curv != "own":
            self.curv = None  # fed zeros or not at all: nothing to keep
        members = teacher.member_slices()
        self.vision_slices, self.policy_slices = members["vision"], members["policy"]
        self.hidden = teacher.vision.slices["hidden_state"]  # in the vision's (combined: the model's) output
        self.image_inputs = teacher.image_inputs  # image input name -> camera, in graph order
        self.history_inputs = {n: s for n, (s, _) in teacher.history_inputs.items()}
        self.policy_names = list(self.history_inputs)
        self.half = {n for n, (_, d) in teacher.history_inputs.items() if d == "float16"}
        self.full = h.full
        self.pulses = h.desire * h.stride  # 20 Hz desire pulses kept (and previous curvatures)
        self.register_buffer("idx", sample_indices(h.features, stride=h.stride, includes_current=h.includes_current),
                             persistent=False)
        self.register_buffer("action", torch.tensor([action_t(lat_delay, long_delay)]), persistent=False)
        self.sizes = (self.full * C.FEATURE_LEN, self.pulses * C.DESIRE_LEN, C.DESIRE_LEN, self.pulses)

    @classmethod
    def from_onnx(cls, paths: list[Path], **kwargs: Any) -> OpenpilotStudent:
        teacher, vision_model, policy_model = load_teacher(paths)
        return cls(teacher, vision_model, policy_model, **kwargs)

    @property
    def default_targets(self) -> list[str]:
        """The modules DoRA wraps by default: the policy's dense layers (split), the one graph's (combined)."""
        if not self.combined:
            return list(DEFAULT_TARGETS)
        return [n for n, m in self.named_modules() if isinstance(m, nn.Linear)]

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(batch, sum(self.sizes), device=device)

    @property
    def history_frames(self) -> int:
        """Frames of history its state is a function of (`state_from_history` needs this many)."""
        return max(self.full, self.pulses + 1)

    def state_from_history(self, hidden: torch.Tensor, desire: torch.Tensor, curv: torch.Tensor) -> torch.Tensor:
        """The state after the `history_frames` frames before a clip (train.loader.History: the teacher's
        hidden_state (B, N, 512), the frames' desire (B, N, 8), the teacher's desired curvature (B, N); zeros
        before a segment's start), as modeld's loop would have left it: the newest features, the desire pulses
        (rising edges) and, where the model takes its own, the previous curvatures. Zeros give the zero state."""
        n = self.history_frames
        hidden, desire, curv = hidden[:, -n:].float(), desire[:, -n:].float(), curv[:, -n:].float()
        z = torch.cat([torch.zeros_like(desire[..., :1]), desire[..., 1:]], dim=-1)  # `none` zeroed, as desire_pulse
        before = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        pulses = torch.where(z - before > 0.99, z, torch.zeros_like(z))
        own = curv if self.curv is not None else torch.zeros_like(curv)
        return self._pack(hidden[:, -self.full:], pulses[:, -self.pulses:], z[:, -1], own[:, -self.pulses:, None])

    def _unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = state.shape[0]
        feats, desire, prev, curv = state.split(self.sizes, dim=1)
        return (feats.reshape(b, self.full, C.FEATURE_LEN), desire.reshape(b, self.pulses, C.DESIRE_LEN), prev,
                curv.reshape(b, self.pulses, 1))

    def _pack(self, feats: torch.Tensor, pulses: torch.Tensor, prev: torch.Tensor, curv: torch.Tensor) -> torch.Tensor:
        return torch.cat([feats.flatten(1), pulses.flatten(1), prev, curv.flatten(1)], dim=1)

    def _feeds(self, feats: torch.Tensor, pulses: torch.Tensor, curv: torch.Tensor, traffic: torch.Tensor,
               v_ego: torch.Tensor | None, delays: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The history inputs by name, in the graph's dtypes (openpilot/state.py: the label pass's own rule)."""
        v = v_ego if v_ego is not None else torch.zeros(feats.shape[0], device=feats.device)
        feeds = policy_feeds(self.policy_names, features=feats, desire=pulses, curv=curv, traffic=traffic, v_ego=v,
                             history=self.history, idx=self.idx, lat_delay=self.lat_delay,
                             long_delay=self.long_delay, stride=self.stride, prev_curv=self.layout.history.prev_curv,
                             shapes=self.history_inputs, action=self.action, delays=delays)
        return {k: x.half() if k in self.half else x for k, x in feeds.items()}

    def encode(self, img: torch.Tensor, big_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision network of a split model, stateless per frame: (vision vector (N, Nv), its hidden_state)."""
        if self.combined:
            raise TypeError("a combined model has no stateless vision half: run it frame by frame (forward)")
        images = {"road": img, "wide": big_img}
        vision = self.vision(*(images[cam] for cam in self.image_inputs.values())).float()  # (N, Nv)
        return vision, vision[:, self.hidden]

    def forward(self, img: torch.Tensor, big_img: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor,
                state: torch.Tensor, v_ego: torch.Tensor | None = None, delays: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame: (vision member (B, Nv), policy member (B, Np), next state), as the label set stores them;
        `delays` (B, 2): each row's [lateral, longitudinal] delay (None: the student's own pair)."""
        if self.combined:
            return self._combined_step(img, big_img, desire, traffic, state, v_ego, delays)
        vision, hidden = self.encode(img, big_img)
        policy, nxt = self.policy_step(hidden, desire, traffic, state, v_ego, delays)
        return vision, policy, nxt

    def _combined_step(self, img: torch.Tensor, big_img: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor,
                       state: torch.Tensor, v_ego: torch.Tensor | None, delays: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """modeld's combined loop: desire pushed, the model run on the past-only features, its own hidden_state (and
        desired curvature, where it takes its own) pushed after."""
        feats, pulses, prev, curv = self._unpack(state)
        pulse, prev = desire_pulse(desire, prev)
        pulses = push(pulses, pulse)
        images = {"road": img, "wide": big_img}
        feeds = {**{n: images[cam] for n, cam in self.image_inputs.items()},
                 **self._feeds(feats, pulses, curv, traffic, v_ego, delays)}
        out = self.model(*(feeds[n] for n in self.input_names)).float()  # (B, width)
        feats = push(feats, out[:, self.hidden])
        if self.curv is not None:  # its own previous desired curvature, as on the car (no gradient through it)
            curv = push(curv, out[:, self.curv.start:self.curv.start + 1].detach())
        return out[:, self.vision_columns], out[:, self.policy_columns], self._pack(feats, pulses, prev, curv)

    def policy_step(self, hidden: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor, state: torch.Tensor,
                    v_ego: torch.Tensor | None = None, delays: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy half of a split model's step, from this frame's vision hidden_state (B, 512): (policy vector,
        next state). Feature-cached training feeds it the teacher's stored hidden_state and never decodes an image."""
        feats, pulses, prev, curv = self._unpack(state)
        feats = push(feats, hidden.float())
        pulse, prev = desire_pulse(desire, prev)
        pulses = push(pulses, pulse)
        feeds = self._feeds(feats, pulses, curv, traffic, v_ego, delays)
        policy = self.policy(*(feeds[n] for n in self.policy_names)).float()  # (B, Np)
        if self.curv is not None:  # its own previous desired curvature, as on the car (no gradient through it)
            curv = push(curv, policy[:, self.curv.start:self.curv.start + 1].detach())
        return policy, self._pack(feats, pulses, prev, curv)

    def recurrent_step(self, *args: Any) -> Any:
        """The recurrent part, as every student names it (train.step.Unroll): the policy step of a split model
        (hidden, desire, traffic, state, v_ego[, delays]), the whole frame of a combined one (images first)."""
        return self.forward(*args) if self.combined else self.policy_step(*args)
