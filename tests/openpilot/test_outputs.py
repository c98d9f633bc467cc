# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The output parser against hand-computed values (openpilot parse_model_outputs semantics)."""

from __future__ import annotations

import math

import numpy as np
import torch

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs


def test_plan_hypotheses_weights_and_winner() -> None:
    raw = np.zeros(4955, np.float32)
    n = 33 * 15
    for k in range(5):  # hypothesis k: means k, log-stds log(k+1), logit k/2
        block = raw[k * (2 * n + 1):(k + 1) * (2 * n + 1)]
        block[:n], block[n:2 * n], block[2 * n] = k, math.log(k + 1), k / 2
    plan = parse_outputs(raw, {"plan": slice(0, 4955)})["plan"]
    logits = np.arange(5) / 2
    np.testing.assert_allclose(plan["weights"][:, 0], np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)
    assert plan["mean"].shape == (33, 15) and (plan["mean"] == 4).all(), "the most probable hypothesis"
    np.testing.assert_allclose(plan["std"], 5.0, rtol=1e-6)
    assert plan["hypotheses"].shape == (5, 33, 15) and (plan["hypotheses"][2] == 2).all()


def test_lead_selection_per_time_offset() -> None:
    raw = np.zeros(102, np.float32)
    # hypothesis 0 wins selection 0 and 2, hypothesis 1 wins selection 1
    raw[48:51] = [3.0, 0.0, 3.0]
    raw[51:51 + 24] = 7.0
    raw[51 + 48:51 + 51] = [0.0, 3.0, 0.0]
    lead = parse_outputs(raw, {"lead": slice(0, 102)})["lead"]
    assert lead["mean"].shape == (3, 6, 4)
    assert (lead["mean"][0] == 0).all() and (lead["mean"][1] == 7).all() and (lead["mean"][2] == 0).all()
    np.testing.assert_allclose(lead["weights"].sum(axis=0), 1.0, rtol=1e-6)


def test_plain_heads_sigmoid_softmax_and_safe_exp() -> None:
    sl = C.layout(C.VISION_HEADS)
    raw = np.zeros(max(s.stop for s in sl.values()), np.float32)
    raw[sl["lane_lines"]][264:] = 50.0  # huge log-stds
    raw[sl["lane_lines"].start + 264:sl["lane_lines"].stop] = 50.0
    raw[sl["lane_lines_prob"]] = [0, 2, 0, 2, 0, 2, 0, 2]
    out = parse_outputs(raw, sl)
    assert out["lane_lines"]["mean"].shape == (4, 33, 2)
    np.testing.assert_allclose(out["lane_lines"]["std"], math.exp(11.0), rtol=1e-6)  # clipped: finite in fp16 math
    np.testing.assert_allclose(out["lane_lines_prob"][1::2], 1 / (1 + math.exp(-2)), rtol=1e-6)
    np.testing.assert_allclose(out["desire_pred"].sum(axis=-1), 1.0, rtol=1e-6)
    assert out["hidden_state"].shape == (512,)


def test_numpy_and_torch_agree_with_batch_dims() -> None:
    sl = C.layout(C.POLICY_HEADS_V1)
    raw = np.random.default_rng(0).standard_normal((2, 3, 4965)).astype(np.float32)
    a = parse_outputs(raw, sl)
    b = parse_outputs(torch.from_numpy(raw), sl)
    assert a["plan"]["mean"].shape == (2, 3, 33, 15)
    np.testing.assert_allclose(b["plan"]["mean"].numpy(), a["plan"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(b["desire_state"].numpy(), a["desire_state"], rtol=1e-6)
    np.testing.assert_allclose(b["desired_curvature"]["std"].numpy(), a["desired_curvature"]["std"], rtol=1e-6)
