# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The whole training step as one CUDA graph: forward (`Unroll`) + masked loss + backward + gradient clipping +
AdamW, captured once for the run's fixed batch shape and replayed for every batch (`--capture`).

- `CapturedStep.captured_step(static)`: the step as one function of fixed shapes that never waits for the host:
  the loss over all B x T frames weighted by the mask (`step.masked_loss`), `clip_grad_norm_` (foreach, the
  norm stays on the device), fused AdamW reading its learning rate from a device tensor (`set_lr` fills it).
  It runs eagerly on CPU (and for any batch of another shape); on CUDA it is captured with `torch.cuda.graph`
  after WARMUP eager steps on a side stream (compiles, lazy initialisation, the optimizer's state).
- The NaN guard on the device: the optimizer's `found_inf` flag (fused AdamW's own skip, what GradScaler uses)
  is 1 when the loss is not finite or no frame took it; AdamW then leaves every weight and its whole state
  (moments, step count) untouched. The caller reads the loss afterwards for its bookkeeping, as before.
- Each batch is copied into static input buffers (the graph's fixed addresses); the outputs (loss, grad norm,
  terms) are static too: read them before the next step.
DoRA's row norms are still computed once per step (inside the graph: `lora.norms_once` is device copies).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spark_distill.cuda_graphs import hand_back_failed_capture
from spark_distill.errors import ConfigError
from spark_distill.train.losses import LossWeights
from spark_distill.train.step import masked_loss

log = logging.getLogger(__name__)
CAPTURE_MODES = ("auto", "on", "off")
WARMUP = 2  # eager steps on a side stream before the capture (torch's rule: warm up before capturing)
INPUT_KEYS = ("road", "wide", "desire", "traffic", "v_ego", "delays", "start", "vision", "policy", "mask", "gt_path",
              "gt_valid", "ctx_hidden", "ctx_desire", "ctx_curv")  # what masked_loss reads (ctx_: loader.CONTEXT_KEYS)


def use_capture(setting: str, device: torch.device, *, world: int = 1, grad_accum: int = 1
                ) -> tuple[bool, str | None]:
    """(whether the step runs as `CapturedStep`, a note where --capture on is overruled). auto: on for CUDA in a
    single process; on: also on CPU (the same fixed-shape step, eagerly: no graph there). DDP (world > 1) and
    accumulated micro-batches keep the uncaptured step."""
    if setting not in CAPTURE_MODES:
        raise ConfigError(f"--capture must be one of {', '.join(CAPTURE_MODES)}, not {setting!r}")
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return False, None
    why = ("DDP (world > 1) keeps the uncaptured step" if world > 1 else
           f"the step is split into {grad_accum} accumulated micro-batches" if grad_accum > 1 else None)
    if why:
        return False, None if setting == "auto" else f"--capture on: off, {why}"
    return True, None


def make_captured_optimizer(params: list[nn.Parameter], *, lr: float, weight_decay: float,
                            device: torch.device) -> torch.optim.Optimizer:
    """Fused AdamW (CPU and CUDA: its `found_inf` skip is the NaN guard), capturable on CUDA with the learning rate
    in a device tensor the graph reads."""
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=torch.tensor(lr, device=device) if cuda else lr, weight_decay=weight_decay,
                            fused=True, capturable=cuda)
    opt.found_inf = torch.zeros((), device=device)  # read by AdamW.step (fused): 1 skips the whole update
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of the next step: filled into the device tensor a captured step reads, else set."""
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def adopt_loaded_state(opt: torch.optim.Optimizer, options: list[dict[str, Any]]) -> None:
    """After `load_state_dict` (which takes the saved param groups whole): this optimizer's own options back (fused,
    capturable, the device lr tensor, refilled with the saved value) and step counts where fused AdamW keeps them
    (fp32 on the parameter's device): a checkpoint from an uncaptured or CPU run resumes under capture."""
    for g, mine in zip(opt.param_groups, options, strict=True):
        saved_lr = float(g["lr"])
        g.update({k: v for k, v in mine.items() if k != "params"})
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(saved_lr)
        else:
            g["lr"] = saved_lr
        for p in g["params"]:
            state = opt.state.get(p, {})
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device).reshape(())


def optimizer_options(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The param groups' options (what `adopt_loaded_state` restores), kept before a load."""
    return [dict(g) for g in opt.param_groups]


def portable_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` with a device learning rate as a plain float (the checkpoint format stays as it was)."""
    state = opt.state_dict()
    for g in state["param_groups"]:
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = float(g["lr"])
    return state


@dataclass
class StepOutput:
    """Device tensors of one step (static under a graph: read before the next step)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    terms: dict[str, torch.Tensor]


class CapturedStep:
    """One optimizer step per batch of fixed shape: eager on CPU, one CUDA graph on CUDA (module docstring).
    `graphed` says whether the graph is in use (False until captured, and for good after a failed capture in
    auto mode, which then runs the same step eagerly)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], opt: torch.optim.Optimizer, *,
                 slices: dict[str, dict[str, list[int]]], weights: LossWeights, autocast: Any, grad_clip: float,
                 device: torch.device, strict: bool = False) -> None:
        if getattr(opt, "found_inf", None) is None:
            raise ValueError("CapturedStep needs make_captured_optimizer's optimizer (fused AdamW with found_inf)")
        self.model, self.params, self.opt = model, params, opt
        self.slices, self.weights, self.autocast, self.grad_clip = slices, weights, autocast, grad_clip
        self.device, self.strict = device, strict
        self.cuda = device.type == "cuda"
        self.static: dict[str, torch.Tensor] | None = None
        self.graph: Any = None
        self.out: StepOutput | None = None
        self.warm = 0
        self.failed: str | None = None
        self.stream: Any = None

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def captured_step(self, static: dict[str, torch.Tensor]) -> StepOutput:
        """Forward, masked loss, backward, clip, AdamW: device work only, so it can be captured as one graph."""
        for p in self.params:
            p.grad = None  # backward assigns fresh gradients (in a graph: its static ones, rewritten each replay)
        loss, count, terms = masked_loss(self.model, static, self.slices, self.weights, self.autocast)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=self.cuda or None)
        self.opt.found_inf.copy_((~(torch.isfinite(loss) & (count > 0))).float())  # the NaN guard (module doc)
        self.opt.step()
        return StepOutput(loss.detach(), norm.detach(), terms)

    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        """One step on `batch` (host or device tensors); the outputs are device tensors."""
        if not self.cuda or self.failed:
            return self.captured_step(self._on_device(batch))
        if not self._stage(batch):  # another shape than the graph's (a smaller last batch): the same step, eagerly
            return self.captured_step(self._on_device(batch))
        if self.graph is None:
            if self.warm < WARMUP or not self._state_ready():
                return self._warm_up()
            self._capture()
            if self.graph is None:
                return self.captured_step(self.static)
        self.graph.replay()
        return self.out

    # ---- CUDA graph ----
    def _on_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: batch[k].to(self.device, non_blocking=True) for k in INPUT_KEYS if k in batch}

    def _stage(self, batch: dict[str, Any]) -> bool:
        """Copy the batch into the static input buffers (made from the first batch); False where it does not fit."""
        inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
        if self.static is None:
            self.static = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device) for k, v in inputs.items()}
        if inputs.keys() != self.static.keys() or any(v.shape != self.static[k].shape or v.dtype != self.static[k].dtype
                                                      for k, v in inputs.items()):
            return False
        for k, v in inputs.items():
            self.static[k].copy_(v, non_blocking=True)
        return True

    def _state_ready(self) -> bool:
        """AdamW's state exists for every parameter (created by an eager step or a loaded checkpoint): a capture
        must not allocate it, or every replay would reset it."""
        return all("step" in self.opt.state.get(p, {}) for p in self.params)

    def _side_stream(self) -> Any:
        """The one stream the warm-up steps and the capture run on. One stream for both: autograd accumulates each
        weight's gradient on the stream its AccumulateGrad node was made on, and a node that outlived a warm-up
        step on another stream would make the captured backward wait on that stream, which a capture refuses."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        return self.stream

    def _warm_up(self) -> StepOutput:
        side = self._side_stream()
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # eager warm-up of a capturable AdamW
            out = self.captured_step(self.static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warm += 1
        return out

    def _capture(self) -> None:
        """Capture the step once (it does not run: the caller replays it for the current batch). In auto mode a
        failed capture leaves the eager step in use, with a warning; with --capture on it raises."""
        graph = torch.cuda.CUDAGraph()
        side = self._side_stream()
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:  # thread_local: the loader's pin thread may call CUDA meanwhile
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                out = self.captured_step(self.static)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.strict:
                raise
        if self.failed:
            log.warning("CUDA graph capture of the training step failed (%s); the step runs uncaptured", self.failed)
            for p in self.params:
                p.grad = None
            del graph  # its memory pool goes back before the eager steps allocate
            hand_back_failed_capture(self.device)
            return
        self.graph, self.out = graph, out
