# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""modeld's state updates keep every buffer in place: what lets the label pass capture its step in a CUDA graph
(a replay reads and writes the addresses seen at capture; a buffer re-bound to a new tensor would go stale)."""

from __future__ import annotations

import numpy as np
import torch

from spark_distill.openpilot.state import ModeldState


def _addresses(state: ModeldState) -> dict[str, int]:
    return {k: v.data_ptr() for k, v in vars(state).items() if isinstance(v, torch.Tensor)} | {
        f"images.{k}": v.data_ptr() for k, v in state.images.items()}


def test_every_update_is_in_place_and_clear_returns_to_start_up() -> None:
    state = ModeldState(3, device=torch.device("cpu"))
    before = _addresses(state)
    g = torch.Generator().manual_seed(0)
    for t in range(7):
        frames = torch.randint(0, 255, (2, 3, 6, 128, 256), dtype=torch.uint8, generator=g)
        stacks = state.vision_inputs(frames[0], frames[1])
        assert torch.equal(stacks["road"][:, 6:], frames[0])
        state.push_features(torch.full((3, 512), float(t + 1)))
        state.push_desire(torch.eye(8)[[1, 2, 3]])
        state.policy_inputs(["features_buffer", "desire", "prev_desired_curv"], torch.zeros(3, 2), torch.ones(3))
        state.push_curvature(torch.full((3,), 0.5))
    assert state.features[:, -1, 0].tolist() == [7.0] * 3 and int(state.newest[0]) == 7 % 5
    state.skip_frames(torch.tensor([0, 2]), np.array([2, 1]))
    state.reset(torch.tensor([1]))
    assert _addresses(state) == before, "a buffer was re-bound instead of updated in place"
    assert state.features[1].abs().sum() == 0 and state.features[0].abs().sum() > 0
    state.clear()
    assert _addresses(state) == before and int(state.newest.abs().sum()) == 0
    assert all(float(v.abs().sum()) == 0 for k, v in vars(state).items()
               if isinstance(v, torch.Tensor) and k not in ("rows", "sample_idx", "action_t"))
    assert all(int(v.sum()) == 0 for v in state.images.values())
