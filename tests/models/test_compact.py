# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The compact student: the teacher's output layouts, DoRA on its default targets, unrolled gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spark_distill.models.compact import DEFAULT_TARGETS, CompactStudent, compact_s, compact_xs
from spark_distill.models.lora import LoRALayer, apply_adapters, trainable_fraction
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs


def test_outputs_follow_the_teacher_layout_and_parse() -> None:
    vs, ps = C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V1)
    model = CompactStudent(compact_xs(), vs, ps)
    img = torch.randint(0, 255, (2, 12, 128, 256), dtype=torch.uint8)
    vision, policy, state = model(img, img, torch.zeros(2, 8), torch.tensor([[1.0, 0.0]] * 2),
                                  model.initial_state(2))
    assert vision.shape == (2, max(s.stop for s in vs.values())) and policy.shape == (2, 4965)
    assert state.shape == (2, 128)
    parsed = parse_outputs(policy, ps)
    assert parsed["plan"]["hypotheses"].shape == (2, 5, 33, 15)
    assert parse_outputs(vision, vs)["lane_lines"]["mean"].shape == (2, 4, 33, 2)


def test_dora_on_default_targets_trains_a_small_fraction() -> None:
    model = CompactStudent(compact_s(), C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V2))
    wrapped = apply_adapters(model, targets=DEFAULT_TARGETS, rank=16, alpha=32.0)
    assert {"gru_x", "gru_h", "policy.0", "heads.policy_plan"} <= set(wrapped)
    assert not any(n.startswith(("road", "wide")) for n in wrapped), "the backbone is not a default target"
    n, total = trainable_fraction(model)
    print(f"compact_s, DoRA r16 on {len(wrapped)} modules: {n} of {total} parameters ({100 * n / total:.2f}%)")
    assert 0 < n / total < 0.1


def test_unrolled_gradients_reach_adapters_through_the_state() -> None:
    model = CompactStudent(compact_xs(), C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V2))
    apply_adapters(model, targets=["gru_h"], rank=2, alpha=4.0)
    state = model.initial_state(1)
    img = torch.randint(0, 255, (1, 12, 128, 256), dtype=torch.uint8)
    outs = []
    for _ in range(3):
        _, policy, state = model(img, img, torch.zeros(1, 8), torch.tensor([[1.0, 0.0]]), state)
        outs.append(policy)
    outs[-1].pow(2).mean().backward()
    gru_h: LoRALayer = model.gru_h
    assert gru_h.lora_a.grad is not None and gru_h.magnitude.grad.abs().sum() > 0


def test_init_heads_starts_every_head_at_the_given_means() -> None:
    vs, ps = C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V1)
    model = CompactStudent(compact_xs(), vs, ps)
    v_mean = torch.linspace(-3, 3, max(s.stop for s in vs.values()))
    p_mean = torch.linspace(0, 200, max(s.stop for s in ps.values()))
    model.init_heads(v_mean, p_mean)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.zero_()  # the output is then the bias alone
    img = torch.randint(0, 255, (1, 12, 128, 256), dtype=torch.uint8)
    vision, policy, _ = model(img, img, torch.zeros(1, 8), torch.tensor([[1.0, 0.0]]), model.initial_state(1))
    assert torch.allclose(policy[0], p_mean)
    hidden = vs["hidden_state"]  # the features themselves, no head
    keep = torch.ones(len(v_mean), dtype=torch.bool)
    keep[hidden] = False
    assert torch.allclose(vision[0][keep], v_mean[keep]) and not torch.allclose(vision[0][hidden], v_mean[hidden])


@pytest.mark.parametrize("plan_width", [4955, 990], ids=["mixture", "single-gaussian"])
def test_plan_from_speed_adds_the_constant_speed_plan_at_the_car_s_speed(plan_width: int) -> None:
    """Each hypothesis's mean plan is the heads' residual plus v_ego * t in x position and v_ego in x velocity;
    init_heads takes out of the label mean the constant-speed plan of each hypothesis's own speed at t = 0, so
    a fresh student at speed v predicts the mean plan moved to v, and nothing else of the vector moves."""
    vs = C.layout(C.VISION_HEADS)
    ps = {"plan": slice(0, plan_width), "desire_state": slice(plan_width, plan_width + 8)}
    cfg = dataclasses.replace(compact_xs(), speed=True, plan_from_speed=True)
    model = CompactStudent(cfg, vs, ps)
    assert "speed_prior" not in model.state_dict(), "built from the layout, not stored"
    torch.manual_seed(0)
    v_mean, p_mean = torch.randn(max(s.stop for s in vs.values())), torch.randn(plan_width + 8)
    hyps = 5 if plan_width == 4955 else 1
    rows, n = plan_width // hyps, 33 * 15
    for h in range(hyps):  # each hypothesis's mean plan at its own speed
        p_mean[h * rows: h * rows + n].view(33, 15)[0, 3] = 18.0 + h
    model.init_heads(v_mean, p_mean)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.zero_()
    img = torch.randint(0, 255, (1, 12, 128, 256), dtype=torch.uint8)
    _, policy, _ = model(img, img, torch.zeros(1, 8), torch.tensor([[1.0, 0.0]]), model.initial_state(1),
                         torch.tensor([25.0]))
    got, want = parse_outputs(policy, ps), parse_outputs(p_mean[None], ps)
    t = torch.as_tensor(C.T_IDXS, dtype=torch.float32)
    key = "hypotheses" if hyps > 1 else "mean"
    for h in range(hyps):
        g, w = (got["plan"][key][0, h], want["plan"][key][0, h]) if hyps > 1 else (got["plan"][key][0],
                                                                                   want["plan"][key][0])
        assert torch.allclose(g[:, 0], w[:, 0] + (25.0 - (18.0 + h)) * t, atol=1e-4)  # x position
        assert torch.allclose(g[:, 3], w[:, 3] + (25.0 - (18.0 + h)), atol=1e-5)  # x velocity
        assert torch.allclose(g[:, 1:3], w[:, 1:3]) and torch.allclose(g[:, 4:], w[:, 4:])
    moved = torch.zeros(plan_width + 8, dtype=torch.bool)
    for h in range(hyps):
        moved[h * rows: h * rows + n].view(33, 15)[:, [0, 3]] = True
    assert torch.allclose(policy[0][~moved], p_mean[~moved]), "log-stds, logits and other heads stay the mean's"


def test_plan_from_speed_adds_the_prior_in_fp32_under_bf16_autocast() -> None:
    """Under bf16 autocast the heads' residual is small and bf16, but the plan of a car at 30 m/s runs to 300 m
    where bf16 steps by 2 m: the constant-speed plan is added in fp32, so the plan matches the fp32 student's."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(compact_xs(), speed=True, plan_from_speed=True)
    ps = C.layout(C.POLICY_HEADS_V2)
    model = CompactStudent(cfg, C.layout(C.VISION_HEADS), ps).eval()
    img = torch.randint(0, 255, (2, 12, 128, 256), dtype=torch.uint8)
    args = (img, img, torch.zeros(2, 8), torch.tensor([[1.0, 0.0]] * 2), model.initial_state(2),
            torch.tensor([30.3, 17.1]))
    with torch.no_grad():
        _, want, _ = model(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, got, _ = model(*args)
    assert got.dtype == torch.float32
    x = slice(0, 33 * 15, 15)  # first hypothesis's x positions
    assert want[:, x].abs().max() > 250.0, "the check needs plans long enough for bf16 to round by metres"
    assert (got[:, x] - want[:, x]).abs().max() < 0.1


def test_plan_from_speed_needs_the_speed_input() -> None:
    with pytest.raises(ValueError, match="needs speed"):
        CompactStudent(dataclasses.replace(compact_xs(), plan_from_speed=True), C.layout(C.VISION_HEADS),
                       C.layout(C.POLICY_HEADS_V1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_backbone_on_cuda_matches_eager() -> None:
    """Compiled on CUDA the depthwise layers take the shifted form: the vision half's outputs match the eager (cuDNN)
    student within fp32 rounding."""
    torch.manual_seed(0)
    student = CompactStudent(compact_xs(), C.layout(C.VISION_HEADS), C.layout(C.POLICY_HEADS_V2)).cuda().eval()
    img = torch.randint(0, 255, (4, 12, 128, 256), dtype=torch.uint8, device="cuda")
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False  # the reference in fp32
    try:
        want = student.encode(img, img)
        got = torch.compile(student.encode, dynamic=False)(img, img)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
