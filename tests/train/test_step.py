# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The training step: the vision half over all frames at once equals the frame-by-frame unroll; the
compiled halves equal the eager ones; the optimizer step and the --compile setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.models.compact import DEFAULT_TARGETS, CompactStudent, compact_xs
from spark_distill.models.lora import LoRALayer, apply_adapters
from spark_distill.openpilot import contract as C
from spark_distill.train.step import Unroll, frame_pairs, use_compile


def frame_by_frame(student: nn.Module, road: torch.Tensor, wide: torch.Tensor, desire: torch.Tensor,
                   traffic: torch.Tensor, v_ego: torch.Tensor, start: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unroll as it was before the vision half was batched: the whole student, one frame at a time."""
    b, t = road.shape[:2]
    state = student.initial_state(b)
    first = start.view(b, 1, 1, 1).to(road.dtype)
    vis, pol = [], []
    for i in range(t):
        if i >= C.TEMPORAL_SKIP:
            older_road, older_wide = road[:, i - C.TEMPORAL_SKIP], wide[:, i - C.TEMPORAL_SKIP]
        else:
            older_road, older_wide = road[:, 0] * (1 - first), wide[:, 0] * (1 - first)
        v, p, state = student(torch.cat([older_road, road[:, i]], 1), torch.cat([older_wide, wide[:, i]], 1),
                              desire[:, i], traffic, state, v_ego[:, i])
        vis.append(v)
        pol.append(p)
    return torch.stack(vis, 1), torch.stack(pol, 1)


def clips(b: int = 2, t: int = 7, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    road = torch.randint(0, 256, (b, t, 6, 128, 256), generator=g, dtype=torch.uint8)
    wide = torch.randint(0, 256, (b, t, 6, 128, 256), generator=g, dtype=torch.uint8)
    desire = torch.nn.functional.one_hot(torch.randint(0, 8, (b, t), generator=g), 8).float()
    traffic = torch.tensor([[1.0, 0.0]] * b)
    v_ego = torch.rand(b, t, generator=g) * 30
    start = torch.tensor([True] + [False] * (b - 1))
    return road, wide, desire, traffic, v_ego, start


def dora_student() -> CompactStudent:
    torch.manual_seed(0)
    student = CompactStudent(compact_xs(), C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V2))
    apply_adapters(student, targets=DEFAULT_TARGETS, rank=4, alpha=8.0)
    with torch.no_grad():  # adapters away from their identity start, so the DoRA norms matter
        for m in student.modules():
            if isinstance(m, LoRALayer):
                m.lora_b.normal_(0, 0.05)
    student.train()
    for m in student.modules():  # frozen BatchNorm (the adapters' default): running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return student


def test_frame_pairs_is_modelds_older_frame_stack() -> None:
    x = torch.arange(2 * 6).view(2, 6, 1, 1, 1).expand(2, 6, 6, 1, 1).to(torch.uint8) + 1
    pairs = frame_pairs(x, torch.tensor([True, False])).view(2, 6, 12)
    assert pairs[0, :4, :6].eq(0).all() and pairs[1, :4, :6].eq(7).all(), "before t-4: zeros at a start, else frame 0"
    assert pairs[0, 4:, 0].tolist() == [1, 2] and pairs[1, 5, 0] == 8, "then frame t-4"
    assert pairs[:, :, 6].flatten().tolist() == list(range(1, 13)), "frame t second"


def test_vision_over_all_frames_equals_the_frame_by_frame_unroll() -> None:
    student = dora_student()
    inputs = clips(t=6)
    ref_v, ref_p = frame_by_frame(student, *inputs)
    (ref_v.pow(2).mean() + ref_p.pow(2).mean()).backward()
    ref_grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
    student.zero_grad()
    v, p = Unroll(student)(*inputs)
    (v.pow(2).mean() + p.pow(2).mean()).backward()
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-5)
    for n, g in ref_grads.items():
        torch.testing.assert_close(dict(student.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6, msg=n)
    assert all(not m.norm_in_buffer for m in student.modules() if isinstance(m, LoRALayer)), "norms_once restored"


def test_compiled_halves_equal_eager_and_norms_are_computed_once_per_step(monkeypatch) -> None:
    from spark_distill.models import dora as D

    student = dora_student()
    inputs = clips(b=1, t=5, seed=1)
    eager = Unroll(student)
    ref_v, ref_p = eager(*inputs)
    calls = []
    real = D.row_norm
    monkeypatch.setattr(D, "row_norm", lambda **kw: calls.append(1) or real(**kw))
    compiled = Unroll(student).compile_halves(backend="aot_eager")
    v, p = compiled(*inputs)
    n_dora = sum(1 for m in student.modules() if isinstance(m, LoRALayer))
    assert len(calls) == n_dora, "one row norm per DoRA layer per forward, not one per frame"
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-5)
    p.pow(2).mean().backward()
    assert student.gru_h.magnitude.grad.abs().sum() > 0
    compiled.eval()  # evaluation runs the eager halves (no compile for another batch size or mode)
    assert not (compiled.training and compiled._step is not None)


def test_compile_setting() -> None:
    assert use_compile("auto", torch.device("cuda")) and not use_compile("auto", torch.device("cpu"))
    assert use_compile("on", torch.device("cpu")) and not use_compile("off", torch.device("cuda"))
    with pytest.raises(ConfigError, match="--compile"):
        use_compile("fast", torch.device("cpu"))
