# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The training loop: `train(cfg) -> TrainResult`, a `Recipe` (set-up, one step, evaluate, checkpoint, finish)
over the step of train/step.py; the teacher is never imported: its outputs come from the label set.
Multi-process through torch.distributed (DDP; torchrun or an explicit init URL).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark_distill.errors import TrainError
from spark_distill.models.checkpoint import save_checkpoint
from spark_distill.models.lora import adapter_state_dict, trainable_fraction
from spark_distill.notes import note
from spark_distill.train.capture import portable_state, set_lr
from spark_distill.train.config import TrainConfig
from spark_distill.train.loader import make_loader
from spark_distill.train.losses import LossWeights
from spark_distill.train.setup import Setup, set_up
from spark_distill.train.step import freeze_norms as _freeze_norms
from spark_distill.train.step import loss_step, on_device, optimizer_step

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    run_dir: Path
    steps: int = 0
    val_before: float | None = None
    val_after: float | None = None
    trainable: tuple[int, int] = (0, 0)
    interrupted: bool = False
    feature_cached: bool = False
    feature_cache_gb: float | None = None  # device memory the feature cache holds (None: streamed from the shards)
    seconds: float = 0.0
    samples: int = 0


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, slices: dict, weights: LossWeights, device: torch.device,
             autocast: Any) -> float | None:
    """Mean validation loss over the loader (None when no frame takes a loss)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for batch in loader:
        loss, _ = loss_step(model, batch, slices, weights, device, autocast)
        if loss is not None:
            total, n = total + float(loss), n + 1
    if was_training:
        model.train()
        _freeze_norms(model)
    return total / n if n else None


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer, or None (with a warning) where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_losses(ax: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Draw each split's loss of metrics.jsonl rows as points joined by lines (a split with one point is drawn
    too); returns the splits drawn, the only ones that get a legend entry."""
    drawn = []
    for split, marker in (("train", "."), ("val", "o")):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, linestyle="-", label=split)
            drawn.append(split)
    return drawn


def loss_curve(run_dir: Path) -> Path | None:
    """PNG of train and validation loss from metrics.jsonl (None where matplotlib is missing or no point exists)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = plot_losses(ax, rows)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("distillation loss")
    ax.set_title(run_dir.name)
    if drawn:
        ax.legend()
    ax.grid(alpha=0.3)
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


class Recipe:
    """One training run, in the shape of a recipe: set-up (`set_up(cfg)`, train/setup.py: the resolved config,
    model, optimizer, loaders and where to start, as one `Setup`), `train_step` (one batch: loss, backward, the
    NaN guard; an optimizer step every --grad-accum batches), `evaluate`, `checkpoint`, and `run`, the epoch
    loop over them, which ends in `finish`. `train(cfg)` is `Recipe(set_up(cfg)).run()`."""

    def __init__(self, setup: Setup, *, on_progress: Any = None) -> None:
        self.setup = setup
        self.on_progress = on_progress  # (step, total, loss): on the main rank only
        self.result = TrainResult(setup.run_dir, trainable=trainable_fraction(setup.student),
                                  feature_cached=setup.cached, val_before=setup.start.val_before,
                                  feature_cache_gb=None if setup.cache is None else setup.cache.nbytes / 1e9)
        self.step, self.epoch, self.position = setup.start.step, setup.start.epoch, setup.start.position
        self.bad_steps = 0  # non-finite losses in a row
        self.stop = {"flag": False}  # a stop signal arrived (set by the signal handler)
        self.started = time.perf_counter()

    # ---- one step, evaluation, checkpoints, metrics ----
    def train_step(self, batch: dict[str, Any]) -> bool:
        """One batch: loss, backward, then the NaN guard (the step's one host sync; under DDP every rank skips
        together); every --grad-accum batches an optimizer step. True when an optimizer step was taken."""
        import torch.distributed as dist

        s, cfg = self.setup, self.setup.cfg
        if s.captured is not None:
            return self._captured_step(batch)
        loss, terms = loss_step(s.model, batch, s.slices, cfg.loss, s.device, s.autocast)
        self.position += 1
        self.result.samples += len(batch["keys"])
        if loss is not None:  # backward before the check: the GPU is not left idle while the host looks
            (loss / cfg.grad_accum).backward()
        value = None if loss is None else float(loss.detach())
        finite = value is None or math.isfinite(value)
        if cfg.world > 1:  # skip together: every rank has run backward (DDP), none steps on a bad gradient
            ok = torch.tensor(float(finite), device=s.device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            finite = bool(ok.item())
        if not self._guard(finite):
            s.opt.zero_grad(set_to_none=True)  # this batch's gradient and what was accumulated with it
            return False
        if self.position % cfg.grad_accum:
            return False
        grad_norm = optimizer_step(s.opt, s.params, lr=lr_at(self.step, cfg, s.total), grad_clip=cfg.grad_clip)
        self._stepped(value, terms, grad_norm)
        return True

    def _captured_step(self, batch: dict[str, Any]) -> bool:
        """`train_step` as one captured step (train/capture.py): the update is skipped on the device when the loss
        is not finite; the host then reads the loss (the step's one sync, after all of it is queued)."""
        s = self.setup
        set_lr(s.opt, lr_at(self.step, s.cfg, s.total))
        out = s.captured(batch)
        self.position += 1
        self.result.samples += len(batch["keys"])
        value = float(out.loss) if bool(batch["mask"].any()) else None  # no loss frame: a step without an update
        if not self._guard(value is None or math.isfinite(value)):
            return False
        self._stepped(value, out.terms, out.grad_norm)
        return True

    def _guard(self, finite: bool) -> bool:
        """The NaN guard's bookkeeping: False (and a warning; an error after 5 in a row) for a skipped step."""
        if finite:
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        log.warning("non-finite loss at step %d; step skipped", self.step)
        if self.bad_steps > 5:
            raise TrainError(f"loss was not finite for {self.bad_steps} steps in a row at step {self.step}; "
                             "lower --lr or check the label set")
        return False

    def _stepped(self, value: float | None, terms: dict[str, Any], grad_norm: torch.Tensor) -> None:
        """After an optimizer step: count it, report progress, log the scalars every --log-every steps."""
        s = self.setup
        self.step += 1
        if self.on_progress is not None and s.main_rank:
            self.on_progress(self.step, s.total, value)
        if self.step % s.cfg.log_every == 0 and value is not None:
            self.record("train", {"loss": value, **{k: float(v) for k, v in terms.items()},
                                  "lr": float(s.opt.param_groups[0]["lr"]), "grad_norm": float(grad_norm),
                                  "samples_per_s": self.result.samples / (time.perf_counter() - self.started)})

    def evaluate(self) -> float | None:
        """Validation loss on the main rank (None without validation clips, or when a stop request cut the pass
        short: a part of the clips is no validation loss), recorded."""
        s = self.setup
        if s.val_stream is None or not s.main_rank:
            return None
        batches = itertools.takewhile(lambda _: not self.stop["flag"], make_loader(s.val_stream))
        loss = evaluate(s.unroll, batches, s.slices, s.cfg.loss, s.device, s.autocast)
        if self.stop["flag"]:
            return None
        if loss is not None:
            self.record("val", {"loss": loss})
        return loss

    def checkpoint(self) -> None:
        """Adapters (or the whole student), optimizer, RNG and loader position; every rank waits for it."""
        import torch.distributed as dist

        s = self.setup
        if s.main_rank:
            save_checkpoint(s.ckpt_dir, self.step, s.student.state_dict() if s.full else adapter_state_dict(s.student),
                            {"optimizer": portable_state(s.opt), "torch_rng": torch.get_rng_state(),
                             "step": self.step, "epoch": self.epoch, "position": self.position,
                             "val_before": self.result.val_before}, whole=s.full)
        if s.cfg.world > 1:
            dist.barrier()

    def record(self, split: str, values: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps({"step": self.step, "split": split, **values}) + "\n")
            self.metrics.flush()
        if self.board is not None:
            for k, v in values.items():
                self.board.add_scalar(f"{split}/{k}", v, self.step)

    def _signalled(self) -> bool:
        """A stop signal arrived on any rank (every rank stops at the same step)."""
        import torch.distributed as dist

        flag = self.stop["flag"]
        if self.setup.cfg.world > 1:
            t = torch.tensor(float(flag), device=self.setup.device)  # NCCL reduces device tensors only
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def _stop_requested(self) -> bool:
        """A signal arrived on any rank, or --stop-at was reached."""
        return self._signalled() or self.step == self.setup.cfg.stop_at

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT or SIGTERM: stop after the current step and its checkpoint, said at once (the step and the
        checkpoint may take a while); a second Ctrl-C stops at once (the newest checkpoint stays)."""
        if self.stop["flag"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.stop["flag"] and self.setup.main_rank:
            ctrl_c = signum == signal.SIGINT
            who = "Ctrl-C" if ctrl_c else signal.Signals(signum).name
            again = " (Ctrl-C again stops at once)" if ctrl_c else ""
            note(f"{who}: stopping after the current step{again}; a re-run with --resume continues")
        self.stop["flag"] = True

    # ---- the loop ----
    def run(self) -> TrainResult:
        """Train to the end of the schedule (or a stop request); evaluate before and after; checkpoint along."""
        s = self.setup
        self.metrics = (s.run_dir / "metrics.jsonl").open("a") if s.main_rank else None
        self.board = _tensorboard(s.run_dir) if s.main_rank else None
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.on_progress is not None and s.main_rank:
            self.on_progress(self.step, s.total, None)  # the schedule's length, before the first validation
        self.started = time.perf_counter()
        try:
            if self.step == 0 and s.main_rank:
                self.result.val_before = self.evaluate()
            self.started = time.perf_counter()
            s.model.train()
            _freeze_norms(s.student)
            if self._signalled():  # during the first validation: nothing trained, nothing to checkpoint
                self.result.interrupted = True
                return self.result
            # --max-steps is the whole schedule, over as many passes as it takes; otherwise --epochs passes
            while self.step < s.total and (s.cfg.max_steps is not None or self.epoch < s.cfg.epochs):
                if self._epoch():
                    return self.result
                if self.step >= s.total:
                    break
            self.result.val_after = self.evaluate()
            self.result.interrupted = self.stop["flag"]  # during the last validation: a re-run validates again
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.finish()
        return self.result

    def _epoch(self) -> bool:
        """The rest of the current epoch; True when the run pauses (signal or --stop-at)."""
        s = self.setup
        s.stream.epoch, s.stream.skip = self.epoch, self.position
        batches = (s.cache.batches(self.epoch, self.position) if s.cache is not None
                   else make_loader(s.stream, pin_memory=s.device.type == "cuda"))
        for batch in on_device(batches, s.device):
            if not self.train_step(batch):
                continue
            pause = self._stop_requested()
            if pause or self.step % s.cfg.checkpoint_every == 0 or self.step >= s.total:
                self.checkpoint()
            if pause:
                self.result.interrupted = True
                return True
            if self.step >= s.total:
                return False
        self.epoch, self.position = self.epoch + 1, 0
        self.checkpoint()
        return False

    def finish(self) -> None:
        """Close the metrics, draw the loss curve, leave the process group this run made."""
        import torch.distributed as dist

        self.result.steps, self.result.seconds = self.step, time.perf_counter() - self.started
        if self.metrics is not None:
            self.metrics.close()
            loss_curve(self.setup.run_dir)
        if self.board is not None:
            self.board.close()
        if self.setup.own_group:
            dist.destroy_process_group()


def train(cfg: TrainConfig, *, on_progress: Any = None) -> TrainResult:
    """Run (or resume) a training run; returns its summary. `on_progress(step, total, loss)` once before the first
    step (loss None) and after each step."""
    return Recipe(set_up(cfg), on_progress=on_progress).run()
