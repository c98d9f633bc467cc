# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Losses against hand-computed values; WTA sends gradient only through the winner; fp16-safe."""

from __future__ import annotations

import math

import torch

from spark_distill.train.losses import LossWeights, distill_loss, lanes_l1, laplace_nll, plan_wta, prob_bce


def _plan(hyps: torch.Tensor, log_std: torch.Tensor, logits: torch.Tensor) -> dict:
    return {"hypotheses": hyps, "log_std_hypotheses": log_std, "logits": logits}


def test_laplace_nll_by_hand() -> None:
    got = laplace_nll(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([math.log(2.0)]))
    assert abs(float(got) - (0.5 / 2 + math.log(2 * 2))) < 1e-6


def test_wta_picks_the_closest_hypothesis_and_only_it_gets_gradient() -> None:
    target = torch.zeros(33, 15)
    hyps = torch.stack([torch.full((33, 15), v) for v in (3.0, 0.5, -2.0, 1.0, 4.0)]).requires_grad_(True)
    log_std = torch.zeros(5, 33, 15, requires_grad=True)
    logits = torch.zeros(5, 1, requires_grad=True)
    wta, ce, winner = plan_wta(_plan(hyps, log_std, logits), {"mean": target})
    assert int(winner) == 1
    assert abs(wta.item() - (0.5 + math.log(2.0))) < 1e-5  # |0 - 0.5| / 1 + log 2
    assert abs(ce.item() - math.log(5.0)) < 1e-6  # uniform logits: -log(1/5)
    (wta + ce).backward()
    grad = hyps.grad.abs().flatten(1).sum(1)
    assert grad[1] > 0 and torch.all(grad[[0, 2, 3, 4]] == 0)
    assert torch.all(log_std.grad[[0, 2, 3, 4]] == 0)
    assert logits.grad[1, 0] < 0 < logits.grad[0, 0], "CE raises the winner's logit"


def test_lane_l1_weighted_by_teacher_probability() -> None:
    student = {"mean": torch.zeros(4, 33, 2)}
    teacher = {"mean": torch.stack([torch.full((33, 2), float(i)) for i in range(4)])}
    probs = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert abs(float(lanes_l1(student, teacher, probs)) - 1.5) < 1e-6  # mean of lines 1 and 2
    assert abs(float(lanes_l1(student, teacher, None)) - 1.5) < 1e-6  # (0+1+2+3)/4


def test_bce_and_total_with_terms_logged() -> None:
    assert abs(float(prob_bce(torch.tensor([0.0]), torch.tensor([0.5]))) - math.log(2.0)) < 1e-6
    b = 2
    student = {"plan": _plan(torch.zeros(b, 5, 33, 15), torch.zeros(b, 5, 33, 15), torch.zeros(b, 5, 1)),
               "lane_lines": {"mean": torch.zeros(b, 4, 33, 2)}}
    teacher = {"plan": {"mean": torch.ones(b, 33, 15)}, "lane_lines": {"mean": torch.ones(b, 4, 33, 2)},
               "lane_lines_prob": torch.ones(b, 8)}
    total, terms = distill_loss(student, teacher, LossWeights(plan_prob=0.5))
    assert set(terms) == {"plan", "plan_prob", "lanes"}
    expected = (1 + math.log(2)) + 0.5 * math.log(5) + 1.0
    assert abs(float(total) - expected) < 1e-5


def test_finite_in_half_precision_with_extreme_log_stds() -> None:
    hyps = torch.zeros(5, 33, 15, dtype=torch.float16)
    log_std = torch.full((5, 33, 15), 80.0, dtype=torch.float16)  # exp(80) overflows fp16 without the clamp
    wta, ce, _ = plan_wta(_plan(hyps, log_std, torch.zeros(5, 1, dtype=torch.float16)),
                          {"mean": torch.ones(33, 15, dtype=torch.float16)})
    assert torch.isfinite(wta) and torch.isfinite(ce)


def test_gt_path_term_uses_valid_horizons_and_the_closest_hypothesis() -> None:
    from spark_distill.train.losses import gt_path_nll

    hyps = torch.zeros(1, 5, 33, 15)
    hyps[0, :, :, 0] = torch.tensor([3.0, 0.5, -2.0, 1.0, 4.0])[:, None]
    hyps.requires_grad_(True)
    log_std = torch.zeros(1, 5, 33, 15)
    gt = torch.zeros(1, 33, 3)
    valid = torch.zeros(1, 33, dtype=torch.bool)
    valid[0, :10] = True
    hyps_far = hyps.detach().clone()
    hyps_far[0, :, 10:, :3] = 1e3  # errors on invalid horizons must not count
    plan = {"hypotheses": hyps, "log_std_hypotheses": log_std}
    got = gt_path_nll(plan, gt, valid)
    expected = (0.5 + 3 * math.log(2.0)) / 3  # winner 1: |0.5| on x, 0 on y, z; + log 2 each; mean of xyz
    assert abs(got.item() - expected) < 1e-6
    far = gt_path_nll({"hypotheses": hyps_far, "log_std_hypotheses": log_std}, gt, valid)
    assert abs(float(far) - expected) < 1e-6
    got.backward()
    grad = hyps.grad.abs().flatten(2).sum(-1)[0]
    assert grad[1] > 0 and torch.all(grad[[0, 2, 3, 4]] == 0)
    assert gt_path_nll(plan, gt, torch.zeros_like(valid)) is None
    total, terms = distill_loss({"plan": _plan(hyps.detach(), log_std, torch.zeros(1, 5, 1))},
                                {"plan": {"mean": torch.zeros(1, 33, 15)}}, LossWeights(gt=2.0), gt=(gt, valid))
    assert "gt" in terms and abs(terms["gt"] - expected) < 1e-6
    plan = 0.5 / 15 + math.log(2.0)  # winner 1 against the teacher's zero plan: |0.5| in 1 of 15 columns
    assert abs(float(total) - (plan + 0.2 * math.log(5.0) + 2.0 * expected)) < 1e-5


def test_loss_weights_parse() -> None:
    w = LossWeights.parse("plan=2, lanes=0", gt=0.5)
    assert (w.plan, w.lanes, w.gt, w.edges) == (2.0, 0.0, 0.5, 0.5)
    import pytest

    with pytest.raises(ValueError, match="TERM=WEIGHT"):
        LossWeights.parse("nope=1")
