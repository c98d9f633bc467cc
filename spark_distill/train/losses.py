# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Distillation losses on parsed model outputs (`openpilot.outputs.parse_outputs`), teacher -> student.

Main entry point: `distill_loss(student, teacher, weights)` -> (total, {term: value}). Terms:
- plan: Laplacian NLL with winner-takes-all over the student's hypotheses against the teacher's most
  probable plan, plus cross-entropy of the student's hypothesis logits to the winner (the recipe
  openpilot's own multi-hypothesis heads are trained with; mbalesni/openpilot-pipeline found it beats KL); a
  single-Gaussian plan (0.10.1+, 990 wide): Laplacian NLL of its mean and log-std against the teacher's mean;
- lanes / edges: L1 on lane lines weighted by the teacher's line probabilities, and on road edges;
- lead: Huber on the lead trajectories, weighted by the teacher's lead probabilities;
- probs: binary cross-entropy of the student's lane-line and lead probabilities to the teacher's;
- gt (off by default): Laplacian NLL, winner-takes-all, of the student's plan positions against the
  future path actually driven (`data.gt_path`), on the horizons the log covers.
Every term is a mean over its elements, so weights are comparable; a term whose head either side
lacks is skipped. Log-stds are clamped before exp, so the loss stays finite in fp16/bf16.

Frame weights: with `frame_w` (N,) of 0/1 over the leading frame axis, every term is the same mean over the
frames it selects (normalised by their count, clamped >= 1), computed over all N frames: a loss of fixed
shape, with no host sync, equal to the term on the selected frames alone (what a captured step needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOG_STD_MIN, LOG_STD_MAX = -7.0, 11.0  # exp(11) is fp16-safe (openpilot's safe_exp bound)


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Weight of each term (0 turns it off)."""

    plan: float = 1.0
    plan_prob: float = 0.2  # hypothesis cross-entropy; smaller: the NLL carries the geometry
    lanes: float = 1.0
    edges: float = 0.5
    lead: float = 0.5
    probs: float = 0.5
    gt: float = 0.0  # ground-truth future path from pose.npy (--gt-weight)

    @classmethod
    def parse(cls, text: str, **overrides: float) -> LossWeights:
        """From 'plan=1,lanes=0.5' (unnamed terms keep their defaults), then `overrides`."""
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = item.partition("=")
            if not eq or name.strip() not in cls.__dataclass_fields__:
                raise ValueError(f"loss weight {item!r}: expected TERM=WEIGHT with TERM one of "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            values[name.strip()] = float(value)
        return cls(**{**values, **overrides})

    @classmethod
    def from_option(cls, text: str, **overrides: float) -> LossWeights:
        """`parse` of a --loss-weights value; ConfigError (one line, exit 2) where it is malformed."""
        from spark_distill.errors import ConfigError

        try:
            return cls.parse(text, **overrides)
        except ValueError as e:
            raise ConfigError(f"--loss-weights: {e}") from e


def laplace_nll(target: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise -log Laplace(target | mean, b), b = exp(log_std) (clamped)."""
    log_b = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    return (target - mean).abs() * torch.exp(-log_b) + log_b + math.log(2.0)


def frame_mean(x: torch.Tensor, frame_w: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (N, ...) over all its elements, or over those of the frames frame_w (N,) selects."""
    if frame_w is None:
        return x.mean()
    w = frame_w.view(-1, *([1] * (x.dim() - 1)))
    return (x * w).sum() / (frame_w.sum().clamp(min=1) * (x[0].numel() if x.dim() > 1 else 1))


def _weighted(err: torch.Tensor, w: torch.Tensor, frame_w: torch.Tensor | None) -> torch.Tensor:
    """sum(err * w) / sum(w) (clamped), err and w (N, k), over the frames frame_w selects."""
    if frame_w is not None:
        w = w * frame_w.unsqueeze(-1)
    return (err * w).sum() / w.sum().clamp(min=1e-6)


def plan_wta(student: dict, teacher: dict, frame_w: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL of the winning hypothesis, CE of the hypothesis logits to it, winner index).

    student: parsed 'plan' with hypotheses (…, H, 33, 15), log_std_hypotheses, logits (…, H, 1);
    teacher: parsed 'plan' with mean (…, 33, 15). Only the winner gets NLL gradient."""
    target = teacher["mean"].unsqueeze(-3).float()  # (…, 1, 33, 15)
    nll = laplace_nll(target, student["hypotheses"].float(), student["log_std_hypotheses"].float())
    per_hyp = nll.flatten(-2).mean(-1)  # (…, H)
    winner = per_hyp.detach().argmin(-1)  # (…,)
    wta = frame_mean(per_hyp.gather(-1, winner.unsqueeze(-1)).squeeze(-1), frame_w)
    logits = student["logits"][..., 0].float()  # (…, H)
    if frame_w is None:
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), winner.reshape(-1))
    else:
        ce = frame_mean(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), winner.reshape(-1), reduction="none"),
                        frame_w)
    return wta, ce, winner


def plan_nll(student: dict, teacher: dict, frame_w: torch.Tensor | None = None) -> torch.Tensor:
    """Laplacian NLL of a single-Gaussian plan (openpilot 0.10.1+: 990 wide, no hypotheses): student mean and
    log_std (…, 33, 15) against the teacher's mean."""
    nll = laplace_nll(teacher["mean"].float(), student["mean"].float(), student["log_std"].float())
    return frame_mean(nll.flatten(-2).mean(-1), frame_w)


def lanes_l1(student: dict, teacher: dict, line_prob: torch.Tensor | None,
             frame_w: torch.Tensor | None = None) -> torch.Tensor:
    """L1 on lane lines (…, 4, 33, 2), weighted per line by the teacher's probability (…, 4)."""
    err = (student["mean"].float() - teacher["mean"].float()).abs().mean(dim=(-1, -2))  # (…, 4)
    if line_prob is None:
        return frame_mean(err, frame_w)
    return _weighted(err, line_prob.float().detach(), frame_w)


def lead_huber(student: dict, teacher: dict, lead_prob: torch.Tensor | None,
               frame_w: torch.Tensor | None = None) -> torch.Tensor:
    """Huber on the lead trajectories (…, 3, 6, 4), weighted per time offset by the teacher's lead_prob (…, 3)."""
    err = F.huber_loss(student["mean"].float(), teacher["mean"].float(), reduction="none").mean(dim=(-1, -2))
    if lead_prob is None:
        return frame_mean(err, frame_w)
    return _weighted(err, lead_prob.float().detach(), frame_w)


def prob_bce(student_logits: torch.Tensor, teacher_prob: torch.Tensor,
             frame_w: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of student logits to the teacher's probabilities (soft targets)."""
    if frame_w is None:
        return F.binary_cross_entropy_with_logits(student_logits.float(), teacher_prob.float().detach())
    return frame_mean(F.binary_cross_entropy_with_logits(student_logits.float(), teacher_prob.float().detach(),
                                                         reduction="none"), frame_w)


def gt_path_nll(student: dict, gt: torch.Tensor, valid: torch.Tensor,
                frame_w: torch.Tensor | None = None) -> torch.Tensor | None:
    """Winner-takes-all Laplacian NLL of the student's plan positions (…, H, 33, 0:3) against the driven
    path gt (…, 33, 3) on the valid horizons (…, 33); None when no horizon is valid (with `frame_w`: 0, and no
    host sync to find out)."""
    w = valid.float()
    if frame_w is not None:
        w = w * frame_w.unsqueeze(-1)
    elif not w.any():
        return None
    nll = laplace_nll(gt.unsqueeze(-3).float(), student["hypotheses"][..., :3].float(),
                      student["log_std_hypotheses"][..., :3].float()).mean(-1)  # (…, H, 33)
    per_hyp = (nll * w.unsqueeze(-2)).sum(-1) / w.sum(-1, keepdim=True).clamp(min=1)  # (…, H)
    best = per_hyp.detach().argmin(-1, keepdim=True)
    frames = w.any(-1).float()
    return (per_hyp.gather(-1, best).squeeze(-1) * frames).sum() / frames.sum().clamp(min=1)


def distill_loss(student: dict, teacher: dict, weights: LossWeights, *, student_raw: dict | None = None,
                 gt: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms both sides can form, and each term's value.

    `student_raw` holds the student's raw (pre-sigmoid) probability heads by name, for the BCE terms;
    `gt` the driven future path and its valid horizons, for the gt term."""
    total, terms = loss_terms(student, teacher, weights, student_raw=student_raw, gt=gt)
    return total, {k: float(v) for k, v in terms.items()}


def loss_terms(student: dict, teacher: dict, weights: LossWeights, *, student_raw: dict | None = None,
               gt: tuple[torch.Tensor, torch.Tensor] | None = None, frame_w: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`distill_loss` with each term a detached device tensor (no host sync), over the frames `frame_w` selects
    where given (module docstring)."""
    terms: dict[str, torch.Tensor] = {}
    if weights.plan and "plan" in student and "plan" in teacher and "hypotheses" in student["plan"]:
        terms["plan"], ce, _ = plan_wta(student["plan"], teacher["plan"], frame_w)
        if weights.plan_prob:
            terms["plan_prob"] = ce
    elif weights.plan and "plan" in student and "plan" in teacher and "log_std" in student["plan"]:
        terms["plan"] = plan_nll(student["plan"], teacher["plan"], frame_w)  # a single-Gaussian plan (0.10.1+)
    line_prob = teacher["lane_lines_prob"][..., 1::2] if "lane_lines_prob" in teacher else None
    if weights.lanes and "lane_lines" in student and "lane_lines" in teacher:
        terms["lanes"] = lanes_l1(student["lane_lines"], teacher["lane_lines"], line_prob, frame_w)
    if weights.edges and "road_edges" in student and "road_edges" in teacher:
        terms["edges"] = lanes_l1(student["road_edges"], teacher["road_edges"], None, frame_w)
    if weights.lead and "lead" in student and "lead" in teacher:
        terms["lead"] = lead_huber(student["lead"], teacher["lead"], teacher.get("lead_prob"), frame_w)
    if weights.probs and student_raw is not None:
        probs = [prob_bce(student_raw[h], teacher[h], frame_w) for h in ("lane_lines_prob", "lead_prob")
                 if h in student_raw and h in teacher]
        if probs:
            terms["probs"] = torch.stack(probs).mean()
    if weights.gt and gt is not None and "plan" in student and "hypotheses" in student["plan"]:
        term = gt_path_nll(student["plan"], *gt, frame_w)
        if term is not None:
            terms["gt"] = term
    if not terms:
        raise ValueError("no loss term applies: student and teacher share no head")
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
