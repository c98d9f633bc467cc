# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""One training step at the accelerator's pace: what `train()` and `bench train` both run.

- `Unroll`: the student over a batch of clips. Its vision half is stateless per frame, so it runs once
  over all B x T frames (one large call instead of T small ones); only the recurrent half steps frame
  by frame. `compile_halves()` compiles both halves (torch.compile: fused kernels, no Python per op).
- `loss_step`: the distillation loss on the frames that take one, indexed without a host sync;
  `masked_loss`: the same loss over all B x T frames weighted by the device mask (fixed shapes, no host
  read at all: what the captured step of train/capture.py runs).
- `make_optimizer` (AdamW, fused on CUDA) and `optimizer_step` (clip, step, zero; the grad norm stays
  on the device until someone logs it).
DoRA's row norms are computed once per forward (`lora.norms_once`), outside any compiled graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.models.lora import norms_once
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs
from spark_distill.train.loader import CONTEXT_KEYS
from spark_distill.train.losses import LossWeights, loss_terms

COMPILE_MODES = ("auto", "on", "off")


def use_compile(setting: str, device: torch.device) -> bool:
    """--compile: on, off, or auto (on for CUDA, where `bench train` measures it faster; off on CPU, where
    compiling costs more than the run saves)."""
    if setting not in COMPILE_MODES:
        raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def frame_pairs(x: torch.Tensor, start: torch.Tensor, skip: int = C.TEMPORAL_SKIP) -> torch.Tensor:
    """(B, T, 6, H, W) camera frames -> (B*T, 12, H, W): each frame with the one `skip` earlier in front (modeld's
    [t-4, t] stack; [t-1, t] in the 20 Hz supercombos). Before that frame exists: zeros at a segment start (modeld's
    empty ring), else the clip's first frame."""
    b, t = x.shape[:2]
    first = start.view(b, 1, 1, 1, 1).to(x.dtype)  # 1 where the clip starts its segment
    head = (x[:, :1] * (1 - first)).expand(b, min(t, skip), *x.shape[2:])
    older = torch.cat([head, x[:, : max(0, t - skip)]], dim=1)
    return torch.cat([older, x], dim=2).flatten(0, 1)


class Unroll(nn.Module):
    """The student run over a clip, as one forward (what DDP wraps): from the zero state, or from the history
    modeld had at the clip's start where the batch carries it and the student can build its state from it."""

    def __init__(self, student: nn.Module, *, channels_last: bool = False) -> None:
        super().__init__()
        self.student = student
        self.channels_last = channels_last  # image stacks in NHWC, as cuDNN's fastest convolutions want them
        self._encode: Callable[..., Any] | None = None
        self._step: Callable[..., Any] | None = None

    def compile_halves(self, *, backend: str = "inductor", mode: str | None = None) -> Unroll:
        """Compile the vision half and the recurrent step (fixed shapes); used in training mode only, so
        evaluation (eval mode, other batch sizes) never waits for a compile."""
        self._encode = torch.compile(self._encode_clips, backend=backend, mode=mode, dynamic=False)
        self._step = torch.compile(self.student.recurrent_step, backend=backend, mode=mode, dynamic=False)
        return self

    def _encode_clips(self, road: torch.Tensor, wide: torch.Tensor, start: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision half over every frame of (B, T) clips: image stacks built here, so that compiled, the stacks'
        gathers and layout change fuse into the kernels that read them (no B x T x 12-channel copy per camera)."""
        skip = getattr(self.student, "pair_skip", C.TEMPORAL_SKIP)
        img, big = frame_pairs(road, start, skip), frame_pairs(wide, start, skip)
        if self.channels_last:
            img, big = (x.contiguous(memory_format=torch.channels_last) for x in (img, big))
        return self.student.encode(img, big)

    def forward(self, road: torch.Tensor | None, wide: torch.Tensor | None, desire: torch.Tensor,
                traffic: torch.Tensor, v_ego: torch.Tensor, start: torch.Tensor | None,
                hidden: torch.Tensor | None = None, delays: torch.Tensor | None = None,
                history: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(vision (B, T, Nv) or None, policy (B, T, Np)). With `hidden` (B, T, 512), the teacher's stored
        vision features, only the policy runs (feature-cached mode): `road` and `wide` are not used. `delays`
        (B, T, 2): each frame's [lateral, longitudinal] delay, fed to a student that takes them (openpilot's).
        `history` (the batch's `loader.CONTEXT_KEYS` arrays): the clips start from the state modeld had there,
        for a student that can build it (`state_from_history`), instead of from zero."""
        compiled = self.training and self._step is not None
        encode = self._encode if compiled else self._encode_clips
        step = self._step if compiled else self.student.recurrent_step
        if delays is None or not getattr(self.student, "takes_delays", False):
            delays = None
        with norms_once(self.student):
            if getattr(self.student, "combined", False):  # one graph (a combined openpilot model): frame by frame
                return self._frame_by_frame(step, road, wide, desire, traffic, v_ego, start, delays, history)
            vision = None
            if hidden is not None:
                b, t = hidden.shape[:2]
                feats = hidden
            else:
                b, t = road.shape[:2]
                vision, feats = encode(road, wide, start)  # every frame of every clip in one call
                vision, feats = vision.unflatten(0, (b, t)), feats.unflatten(0, (b, t))
            state = self._start_state(b, feats.device, history)
            if compiled and torch.is_grad_enabled():  # every frame's state then needs a gradient alike: one graph
                state.requires_grad_()
            policy = []
            for i in range(t):
                p, state = step(feats[:, i], desire[:, i], traffic, state, v_ego[:, i],
                                *(() if delays is None else (delays[:, i],)))
                policy.append(p)
        return vision, torch.stack(policy, 1)  # (B, T, Nv), (B, T, Np)

    def _start_state(self, b: int, device: torch.device, history: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        if history is not None and hasattr(self.student, "state_from_history"):
            return self.student.state_from_history(*history).to(device)
        return self.student.initial_state(b, device)

    def _frame_by_frame(self, step: Callable[..., Any], road: torch.Tensor, wide: torch.Tensor, desire: torch.Tensor,
                        traffic: torch.Tensor, v_ego: torch.Tensor, start: torch.Tensor | None,
                        delays: torch.Tensor | None = None, history: tuple[torch.Tensor, ...] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """A student without a stateless vision half: images and histories into one step per frame."""
        b, t = road.shape[:2]
        start = start if start is not None else torch.zeros(b, dtype=torch.bool, device=road.device)
        skip = self.student.pair_skip
        img, big = (frame_pairs(x, start, skip).unflatten(0, (b, t)) for x in (road, wide))
        state = self._start_state(b, road.device, history)
        vision, policy = [], []
        for i in range(t):
            v, p, state = step(img[:, i], big[:, i], desire[:, i], traffic, state, v_ego[:, i],
                               *(() if delays is None else (delays[:, i],)))
            vision.append(v)
            policy.append(p)
        return torch.stack(vision, 1), torch.stack(policy, 1)


HOST_KEYS = ("mask", "keys")  # what loss_step reads on the host (mask: the frames' indices, without a device sync)


def on_device(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any]]:
    """The batches with their tensors moved to `device` one batch ahead, on a side CUDA stream: the host-to-device
    copy of batch i+1 (pinned memory) overlaps step i. On a CPU device the batches pass through unchanged."""
    if device.type != "cuda":
        yield from batches
        return
    side = torch.cuda.Stream(device)

    def move(batch: dict[str, Any]) -> dict[str, Any]:
        with torch.cuda.stream(side):
            return {k: v if k in HOST_KEYS or not isinstance(v, torch.Tensor) else v.to(device, non_blocking=True)
                    for k, v in batch.items()}

    ahead = None
    for batch in batches:
        moved = move(batch)
        if ahead is not None:
            yield _ready(ahead, side)
        ahead = moved
    if ahead is not None:
        yield _ready(ahead, side)


def _ready(batch: dict[str, Any], side: torch.cuda.Stream) -> dict[str, Any]:
    """The batch usable on the current stream: wait for its copy; its memory stays allocated until that stream
    is done with it."""
    current = torch.cuda.current_stream(side.device)
    current.wait_stream(side)
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.is_cuda:
            v.record_stream(current)
    return batch


def loss_step(model: nn.Module, batch: dict[str, Any], slices: dict[str, dict[str, list[int]]],
              weights: LossWeights, device: torch.device, autocast: Any) -> tuple[torch.Tensor | None, dict]:
    """Unroll the student over the batch's clips; the distillation loss on the frames that take one.

    A batch without images (feature-cached) runs the policy on the teacher's stored hidden_state; the
    vision terms then compare the teacher with itself and carry no gradient. The frames are picked by
    indices computed from the host-side mask, so the device never stops for a boolean index."""
    mask = batch["mask"].cpu()
    synced = isinstance(model, nn.parallel.DistributedDataParallel)
    if not mask.any() and not synced:
        return None, {}
    teacher_vision = batch["vision"].to(device, non_blocking=True)
    cached = "road" not in batch
    hidden = teacher_vision[..., slice(*slices["vision"]["hidden_state"])].float() if cached else None
    history = tuple(batch[k].to(device, non_blocking=True) for k in CONTEXT_KEYS) if CONTEXT_KEYS[0] in batch else None
    with autocast():
        v, p = model(*(batch[k].to(device, non_blocking=True) if k in batch else None
                       for k in ("road", "wide", "desire", "traffic", "v_ego", "start")), hidden=hidden,
                  delays=batch["delays"].to(device, non_blocking=True) if "delays" in batch else None,
                  history=history)
    if not mask.any():  # under DDP every rank must run backward: a zero loss that still touches every output
        return sum(x.float().sum() for x in (v, p) if x is not None) * 0.0, {}
    rows = mask.flatten().nonzero().squeeze(1).to(device, non_blocking=True)

    def pick(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (frames that take a loss, ...), as x[mask]
        return x.flatten(0, 1).index_select(0, rows)

    tv, tp = pick(teacher_vision).float(), pick(batch["policy"].to(device, non_blocking=True)).float()
    gt = (pick(batch["gt_path"].to(device)), pick(batch["gt_valid"].to(device))) if "gt_path" in batch else None
    loss, terms = _compare(None if v is None else pick(v.float()), pick(p.float()), tv, tp, gt, slices, weights)
    return loss, {k: float(x) for k, x in terms.items()}


def masked_loss(model: nn.Module, batch: dict[str, torch.Tensor], slices: dict[str, dict[str, list[int]]],
                weights: LossWeights, autocast: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`loss_step` of fixed shape: the loss over all B x T frames weighted by the 0/1 mask and normalised by its
    count (clamped >= 1), every tensor of `batch` (mask included) already on the model's device. (loss, frames
    that took it, {term: value}), all device tensors: nothing here waits for the device. A batch without a loss
    frame gives a zero loss with zero gradients. The labels of frames outside the mask (which may be NaN in a
    label set built from a log) are zeroed before use, so they cannot reach the loss or its gradient."""
    mask = batch["mask"].flatten()
    frame_w = mask.float()

    def known(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B*T, ...), zero outside the mask
        x = x.flatten(0, 1)
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, x.new_zeros(()))

    teacher_vision = batch["vision"]
    hidden = None if "road" in batch else teacher_vision[..., slice(*slices["vision"]["hidden_state"])].float()
    with autocast():
        v, p = model(*(batch.get(k) for k in ("road", "wide", "desire", "traffic", "v_ego", "start")), hidden=hidden,
                     delays=batch.get("delays"),
                     history=tuple(batch[k] for k in CONTEXT_KEYS) if CONTEXT_KEYS[0] in batch else None)
    tv, tp = known(teacher_vision).float(), known(batch["policy"]).float()
    gt = (known(batch["gt_path"]), known(batch["gt_valid"])) if "gt_path" in batch else None
    loss, terms = _compare(None if v is None else v.float().flatten(0, 1), p.float().flatten(0, 1), tv, tp, gt,
                           slices, weights, frame_w)
    return loss, frame_w.sum(), terms


def _compare(v: torch.Tensor | None, p: torch.Tensor, tv: torch.Tensor, tp: torch.Tensor,
             gt: tuple[torch.Tensor, torch.Tensor] | None, slices: dict[str, dict[str, list[int]]],
             weights: LossWeights, frame_w: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The distillation loss of student outputs (frames, Nv) / (frames, Np) against the teacher's; a student
    without vision outputs (feature-cached) is compared on the teacher's own vision vector."""
    v = tv if v is None else v
    student = {**parse_outputs(v, slices["vision"]), **parse_outputs(p, slices["policy"])}
    teacher = {**parse_outputs(tv, slices["vision"]), **parse_outputs(tp, slices["policy"])}
    raw = {h: v[..., slice(*slices["vision"][h])] for h in ("lane_lines_prob", "lead_prob") if h in slices["vision"]}
    return loss_terms(student, teacher, weights, student_raw=raw, gt=gt, frame_w=frame_w)


def make_autocast(device: torch.device, amp: str, *, cache: bool = True) -> Callable[[], Any]:
    """bf16 autocast where asked (or auto on CUDA GPUs that have it), else a disabled one. `cache=False` for a
    step captured in a CUDA graph (torch's rule: autocast's weight-cast cache must be off inside a capture)."""
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return lambda: torch.autocast(device.type, enabled=False)


def freeze_norms(student: nn.Module) -> None:
    """BatchNorm layers whose parameters are frozen keep their running statistics: eval mode."""
    for m in student.modules():
        if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def make_optimizer(params: list[nn.Parameter], *, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW; on CUDA the fused implementation (one kernel set for all parameters)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda" or None)


def optimizer_step(opt: torch.optim.Optimizer, params: Iterable[nn.Parameter], *, lr: float,
                   grad_clip: float) -> torch.Tensor:
    """Set the learning rate, clip, step, zero the gradients; the pre-clip gradient norm (a device tensor:
    reading it is the caller's choice, and a host sync)."""
    for g in opt.param_groups:
        g["lr"] = lr
    norm = torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norm.detach()
