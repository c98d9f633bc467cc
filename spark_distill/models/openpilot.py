# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot's own split model as a student: the teacher-format ONNX pair imported into torch
(onnx2torch), with the policy's histories (20 Hz features, desire pulses, previous curvature) kept as an
explicit recurrent state, so fine-tuning openpilot's model uses the same training loop as the compact
student. Main entry point: `OpenpilotStudent.from_onnx(paths)`.

The state is one flat tensor per lane: [features (100 x 512) | desire pulses (100 x 8) | previous desire
(8) | previous curvature (100)], advanced exactly as modeld advances its buffers (openpilot/state.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.onnx_import import onnx_to_torch
from spark_distill.openpilot.state import desire_pulse, policy_feeds, push, sample_indices
from spark_distill.openpilot.teachers import Teacher, load_teacher, make_batch_dynamic

# DoRA targets: every Linear (ONNX Gemm) of the policy graph; onnx2torch names modules after the ONNX nodes
DEFAULT_TARGETS = ["policy.*"]


class OpenpilotStudent(nn.Module):
    def __init__(self, teacher: Teacher, vision_model: Any, policy_model: Any, *, lat_delay: float = 0.2) -> None:
        if teacher.combined:
            raise ConfigError(f"--student openpilot fine-tunes a split model (driving_vision.onnx + "
                              f"driving_policy.onnx); {teacher.vision.path.name} ({teacher.layout.key}) is one "
                              "combined model, which it does not take yet: use a built-in student")
        super().__init__()
        self.vision = onnx_to_torch(make_batch_dynamic(vision_model))
        self.policy = onnx_to_torch(make_batch_dynamic(policy_model))
        self.teacher = teacher
        self.image_inputs = teacher.image_inputs  # vision input name -> camera, in graph order
        self.policy_names = list(teacher.policy.inputs)
        self.vision_slices, self.policy_slices = teacher.vision.slices, teacher.policy.slices
        self.hidden = teacher.vision.slices["hidden_state"]
        self.curv = teacher.policy.slices.get("desired_curvature")
        self.history, self.lat_delay = teacher.history_len, lat_delay
        self.full = self.history * C.TEMPORAL_SKIP
        self.register_buffer("idx", sample_indices(self.history), persistent=False)
        f = self.full
        self.sizes = (f * C.FEATURE_LEN, f * C.DESIRE_LEN, C.DESIRE_LEN, f)

    @classmethod
    def from_onnx(cls, paths: list[Path], **kwargs: Any) -> OpenpilotStudent:
        teacher, vision_model, policy_model = load_teacher(paths)
        return cls(teacher, vision_model, policy_model, **kwargs)

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(batch, sum(self.sizes), device=device)

    def _unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = state.shape[0]
        feats, desire, prev, curv = state.split(self.sizes, dim=1)
        return (feats.reshape(b, self.full, C.FEATURE_LEN), desire.reshape(b, self.full, C.DESIRE_LEN), prev,
                curv.reshape(b, self.full, 1))

    def encode(self, img: torch.Tensor, big_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision network, stateless per frame: (vision vector (N, Nv), its hidden_state (N, 512))."""
        images = {"road": img, "wide": big_img}
        vision = self.vision(*(images[cam] for cam in self.image_inputs.values())).float()  # (N, Nv)
        return vision, vision[:, self.hidden]

    def forward(self, img: torch.Tensor, big_img: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor,
                state: torch.Tensor, v_ego: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vision, hidden = self.encode(img, big_img)
        policy, nxt = self.policy_step(hidden, desire, traffic, state, v_ego)
        return vision, policy, nxt

    def policy_step(self, hidden: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor, state: torch.Tensor,
                    v_ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy half of a step, from this frame's vision hidden_state (B, 512): (policy vector, next state).
        Feature-cached training feeds it the teacher's stored hidden_state and never decodes an image."""
        feats, pulses, prev, curv = self._unpack(state)
        feats = push(feats, hidden.float())
        pulse, prev = desire_pulse(desire, prev)
        pulses = push(pulses, pulse)
        v = v_ego if v_ego is not None else torch.zeros(hidden.shape[0], device=hidden.device)
        feeds = policy_feeds(self.policy_names, features=feats, desire=pulses, curv=curv, traffic=traffic, v_ego=v,
                             history=self.history, idx=self.idx, lat_delay=self.lat_delay)
        policy = self.policy(*(feeds[n] for n in self.policy_names)).float()  # (B, Np)
        if self.curv is not None:  # its own previous desired curvature, as on the car (no gradient through it)
            curv = push(curv, policy[:, self.curv.start:self.curv.start + 1].detach())
        return policy, torch.cat([feats.flatten(1), pulses.flatten(1), prev, curv.flatten(1)], dim=1)

    recurrent_step = policy_step  # the recurrent half, as every student names it (train.step.Unroll)
