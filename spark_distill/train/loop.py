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
from safetensors.torch import load_file, save_file
from torch import nn

from spark_distill.data import files, shards
from spark_distill.data.pairs import shard_pairs
from spark_distill.errors import ConfigError, TrainError
from spark_distill.models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from spark_distill.models.lora import adapter_state_dict, apply_adapters, load_adapter_state, trainable_fraction
from spark_distill.notes import note
from spark_distill.train.cache import FeatureCache
from spark_distill.train.capture import (
    CapturedStep,
    adopt_loaded_state,
    make_captured_optimizer,
    optimizer_options,
    portable_state,
    set_lr,
    use_capture,
)
from spark_distill.train.config import STUDENTS, TrainConfig, write_config
from spark_distill.train.head_init import label_means
from spark_distill.train.loader import ClipStream, make_loader
from spark_distill.train.losses import LossWeights
from spark_distill.train.sizing import TrainingData, fit_to_data, fit_to_memory, sized_as
from spark_distill.train.step import (
    Unroll,
    loss_step,
    make_optimizer,
    on_device,
    optimizer_step,
    use_compile,
)
from spark_distill.train.step import freeze_norms as _freeze_norms
from spark_distill.train.step import make_autocast as _autocast

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


def is_run_path(student: str) -> bool:
    """--student names a built-in student or a trained run / checkpoint folder."""
    return student not in STUDENTS and Path(student).exists()


def build_student(cfg: TrainConfig, slices: dict[str, dict[str, list[int]]]
                  ) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """(student, its default adapter targets, its architecture entry for student.json); its outputs must use
    the label set's layouts. A run folder as --student continues from that run's merged student."""
    from spark_distill.models.restore import build_architecture, load_trained

    torch.manual_seed(cfg.seed)
    if is_run_path(cfg.student):
        trained = load_trained(Path(cfg.student))
        arch, student, targets = trained.spec["architecture"], trained.student, trained.default_targets
    else:
        arch = ({"kind": "openpilot", "onnx": str(Path(cfg.student_onnx).resolve())} if cfg.student == "openpilot"
                else {"kind": "compact", "preset": cfg.student})
        student, targets = build_architecture(arch, slices)
    vision = {k: slice(*v) for k, v in slices["vision"].items()}
    policy = {k: slice(*v) for k, v in slices["policy"].items()}
    if (student.vision_slices, student.policy_slices) != (vision, policy):
        raise ConfigError(f"student {cfg.student}: its output slices differ from label set {cfg.labels}'s; "
                          "label with a teacher of the same layout")
    return student, list(targets), arch


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


@dataclass
class _Data:
    """What set-up reads from the dataset: the split's shard pairs, the label manifest, the clip layout."""

    pairs: list
    val_pairs: list
    manifest: dict[str, Any]
    frames_manifest: dict[str, Any]
    clip_len: int
    slices: dict[str, dict[str, list[int]]]


class Recipe:
    """One training run, in the shape of a recipe: set-up (`__init__`: process group, data and its sizing, the
    student and its adapters, model, optimizer, loaders, resume), `train_step` (one batch: loss, backward,
    the NaN guard; an optimizer step every --grad-accum batches), `evaluate`, `checkpoint`, and `run`, the
    epoch loop over them, which ends in `finish`. `train(cfg)` is `Recipe(cfg).run()`."""

    def __init__(self, cfg: TrainConfig, *, on_progress: Any = None) -> None:
        self.on_progress = on_progress
        self._setup_process(cfg)
        data = self._setup_data(cfg)  # self.cfg from here on: sized to the data (and to memory in _setup_model)
        self._setup_student(data)
        self._setup_model(data)
        self._setup_streams(data)
        self._resume()

    # ---- set-up ----
    def _setup_process(self, cfg: TrainConfig) -> None:
        import torch.distributed as dist

        self.cfg = cfg
        self.own_group = cfg.world > 1 and not dist.is_initialized()
        if self.own_group:
            dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo",
                                    init_method=cfg.init_method, rank=cfg.process_rank, world_size=cfg.world)
        self.main_rank = cfg.process_rank == 0
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # one process per GPU (torchrun): allocations and streams on its own
        self.run_dir = cfg.runs_dir / cfg.run
        self.ckpt_dir = self.run_dir / "checkpoints"

    def _setup_data(self, cfg: TrainConfig) -> _Data:
        pairs, manifest = shard_pairs(cfg.root, cfg.labels, split="train", val_fraction=cfg.val_fraction,
                                      seed=cfg.seed)
        val_pairs = (shard_pairs(cfg.root, cfg.labels, split="val", val_fraction=cfg.val_fraction, seed=cfg.seed)[0]
                     if cfg.val_fraction > 0 else [])
        frames_manifest = shards.read_manifest(pairs[0].frames.parent, shards.FRAMES_FORMAT)
        clip_len = int(frames_manifest["settings"]["clip_len"])
        if cfg.burn_in >= clip_len:
            raise ConfigError(f"--burn-in {cfg.burn_in} leaves no frame of a {clip_len}-frame clip to learn from")
        # after the dataset and label set checks: a missing label set is the problem to name, not an earlier run
        if self.run_dir.exists() and not cfg.resume and latest_checkpoint(self.ckpt_dir) is not None:
            raise ConfigError(f"run {cfg.run!r} already has checkpoints in {self.run_dir}; pass --resume or another "
                              "--run")
        self.resuming = cfg.resume and latest_checkpoint(self.ckpt_dir) is not None
        if self.resuming:  # the data position counts the run's own batches: keep its sizing
            cfg = sized_as(cfg, self.run_dir / "config.yaml")
        kept = {shards.sanitize_segment(s["name"]): int(s["frames_kept"]) for s in frames_manifest["segments"]}
        cfg, self.notes = fit_to_data(cfg, TrainingData(pairs, val_pairs, clip_len, kept,
                                                        int(manifest["warmup_frames"])))
        if cfg.val_fraction > 0 and not val_pairs:
            self.notes.append("no validation: the dataset has one segment of one clip (no time range to hold out)")
        self.cfg = cfg
        return _Data(pairs, val_pairs, manifest, frames_manifest, clip_len, manifest["output_slices"])

    def _setup_student(self, data: _Data) -> None:
        """The student with its base weights and adapters; whether it trains feature-cached."""
        cfg = self.cfg
        student, default_targets, arch = build_student(cfg, data.slices)
        targets = list(cfg.targets or default_targets)
        base_file = self.run_dir / "student.safetensors"
        if self.main_rank:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not base_file.exists():  # the base weights the adapters belong to
                if cfg.head_init == "label-mean" and arch["kind"] == "compact" and not is_run_path(cfg.student):
                    student.init_heads(*label_means(data.pairs, data.manifest, data.clip_len))
                save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(base_file))
            spec = {"architecture": arch, "source": cfg.student, "slices": data.slices, "adapter": cfg.adapter,
                    "targets": targets, "rank": cfg.adapter_rank, "alpha": cfg.adapter_alpha,
                    "train_modules": list(cfg.train_modules), "labels": cfg.labels,
                    "root": str(Path(cfg.root).resolve()), "clip_len": data.clip_len}
            files.write_json_atomic(self.run_dir / "student.json", spec)
        if base_file.exists():
            student.load_state_dict(load_file(str(base_file)))
        if cfg.adapter == "none":
            for p in student.parameters():
                p.requires_grad_(True)
        else:
            apply_adapters(student, targets=targets, rank=cfg.adapter_rank, alpha=cfg.adapter_alpha,
                           dora=cfg.adapter == "dora", train_modules=list(cfg.train_modules))
        self.student = student
        self.cached = feature_cached(cfg, student, data.manifest)

    def _setup_model(self, data: _Data) -> None:
        """The unrolled student on its device (compiled where --compile says), DDP, the optimizer."""
        cfg, device, student = self.cfg, self.device, self.student
        student.to(device)
        if device.type == "cuda":
            student.to(memory_format=torch.channels_last)
        self.unroll = Unroll(student, channels_last=device.type == "cuda")
        self.autocast = _autocast(device, cfg.amp)
        if not self.cached and not self.resuming:
            cfg, more = fit_to_memory(cfg, self.unroll, clip_len=data.clip_len, device=device, autocast=self.autocast)
            self.notes += more
            self.cfg = cfg
        captured, overruled = use_capture(cfg.capture, device, world=cfg.world, grad_accum=cfg.grad_accum)
        self.notes += [overruled] if overruled else []
        if self.main_rank:
            for line in self.notes:
                note(line)
            write_config(self.run_dir / "config.yaml", cfg)  # resolved: what this run uses
        if use_compile(cfg.compile, device):
            self.unroll.compile_halves()
        self.model: nn.Module = self.unroll
        if cfg.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.unroll, device_ids=ids)
        self.full = cfg.adapter == "none"  # everything trains: checkpoints hold the whole student, buffers included
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.slices = data.slices
        self.captured: CapturedStep | None = None
        if captured:  # the whole step as one function of fixed shapes (one CUDA graph on CUDA)
            self.opt = make_captured_optimizer(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
            self.captured = CapturedStep(self.unroll, self.params, self.opt, slices=data.slices, weights=cfg.loss,
                                         autocast=_autocast(device, cfg.amp, cache=False), grad_clip=cfg.grad_clip,
                                         device=device, strict=cfg.capture == "on")
        else:
            self.opt = make_optimizer(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)

    def _setup_streams(self, data: _Data) -> None:
        cfg = self.cfg
        motions = None
        if cfg.loss.gt:
            from spark_distill.data.gt_path import segment_motions

            motions = segment_motions(data.pairs[0].frames.parent, [s["name"] for s in data.frames_manifest["shards"]])
        self.stream = ClipStream(data.pairs, data.manifest, batch=cfg.batch_size, clip_len=data.clip_len,
                                 burn_in=cfg.burn_in, seed=cfg.seed, process_rank=cfg.process_rank, world=cfg.world,
                                 workers=cfg.workers, mask_warmup=cfg.mask_warmup, images=not self.cached,
                                 motions=motions)
        val_batch = max(1, min(cfg.batch_size, sum(len(p.keys) for p in data.val_pairs)))
        self.val_stream = (ClipStream(data.val_pairs, data.manifest, batch=val_batch, clip_len=data.clip_len,
                                      burn_in=cfg.burn_in, seed=cfg.seed, workers=1, train=False,
                                      mask_warmup=cfg.mask_warmup, images=not self.cached, motions=motions)
                           if data.val_pairs else None)
        micro_per_epoch = len(self.stream)
        if micro_per_epoch == 0:
            raise ConfigError(f"some loader worker gets fewer than --batch-size {cfg.batch_size} clips: "
                              f"{len(data.pairs)} training shards over {cfg.world} rank(s) x {cfg.workers} worker(s); "
                              "use fewer --workers or a smaller --batch-size")
        self.total = cfg.max_steps or cfg.epochs * micro_per_epoch // cfg.grad_accum
        self.cache = None
        if self.cached:  # the clips' policy-side arrays, decoded once for every epoch (train/cache.py)
            started = time.perf_counter()
            self.cache = FeatureCache.fill(self.stream, device=self.device, mode=cfg.feature_cache,
                                           workers=cfg.workers)
            if self.cache is not None:
                log.info("feature cache: %d clips, %.2f GB on %s, filled in %.1f s", len(self.cache.rows),
                         self.cache.nbytes / 1e9, self.device, time.perf_counter() - started)

    def _resume(self) -> None:
        """Position (step, epoch, batch) and state of the newest good checkpoint, or a fresh start."""
        cfg = self.cfg
        self.result = TrainResult(self.run_dir, trainable=trainable_fraction(self.student),
                                  feature_cached=self.cached,
                                  feature_cache_gb=None if self.cache is None else self.cache.nbytes / 1e9)
        log.info("feature-cached mode: %s", "on (no image is decoded)" if self.cached else "off")
        self.step, self.epoch, self.position, self.bad_steps = 0, 0, 0, 0
        if cfg.resume and (ckpt := latest_checkpoint(self.ckpt_dir)) is not None:
            tensors, state = load_checkpoint(ckpt)
            if self.full:
                self.student.load_state_dict(tensors)
            else:
                load_adapter_state(self.student, tensors)
            options = optimizer_options(self.opt)
            self.opt.load_state_dict(state["optimizer"])
            if self.captured is not None:
                adopt_loaded_state(self.opt, options)
            torch.set_rng_state(state["torch_rng"])
            self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
            self.result.val_before = state.get("val_before")
            log.info("resumed %s at step %d (epoch %d, batch %d)", cfg.run, self.step, self.epoch, self.position)

    # ---- one step, evaluation, checkpoints, metrics ----
    def train_step(self, batch: dict[str, Any]) -> bool:
        """One batch: loss, backward, then the NaN guard (the step's one host sync; under DDP every rank skips
        together); every --grad-accum batches an optimizer step. True when an optimizer step was taken."""
        import torch.distributed as dist

        cfg = self.cfg
        if self.captured is not None:
            return self._captured_step(batch)
        loss, terms = loss_step(self.model, batch, self.slices, cfg.loss, self.device, self.autocast)
        self.position += 1
        self.result.samples += len(batch["keys"])
        if loss is not None:  # backward before the check: the GPU is not left idle while the host looks
            (loss / cfg.grad_accum).backward()
        value = None if loss is None else float(loss.detach())
        finite = value is None or math.isfinite(value)
        if cfg.world > 1:  # skip together: every rank has run backward (DDP), none steps on a bad gradient
            ok = torch.tensor(float(finite), device=self.device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            finite = bool(ok.item())
        if not self._guard(finite):
            self.opt.zero_grad(set_to_none=True)  # this batch's gradient and what was accumulated with it
            return False
        if self.position % cfg.grad_accum:
            return False
        grad_norm = optimizer_step(self.opt, self.params, lr=lr_at(self.step, cfg, self.total),
                                   grad_clip=cfg.grad_clip)
        self._stepped(value, terms, grad_norm)
        return True

    def _captured_step(self, batch: dict[str, Any]) -> bool:
        """`train_step` as one captured step (train/capture.py): the update is skipped on the device when the loss
        is not finite; the host then reads the loss (the step's one sync, after all of it is queued)."""
        set_lr(self.opt, lr_at(self.step, self.cfg, self.total))
        out = self.captured(batch)
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
        cfg = self.cfg
        self.step += 1
        if self.on_progress is not None and self.main_rank:
            self.on_progress(self.step, self.total, value)
        if self.step % cfg.log_every == 0 and value is not None:
            self.record("train", {"loss": value, **{k: float(v) for k, v in terms.items()},
                                  "lr": float(self.opt.param_groups[0]["lr"]), "grad_norm": float(grad_norm),
                                  "samples_per_s": self.result.samples / (time.perf_counter() - self.started)})

    def evaluate(self) -> float | None:
        """Validation loss on the main rank (None without validation clips, or when a stop request cut the pass
        short: a part of the clips is no validation loss), recorded."""
        if self.val_stream is None or not self.main_rank:
            return None
        batches = itertools.takewhile(lambda _: not self.stop["flag"], make_loader(self.val_stream))
        loss = evaluate(self.unroll, batches, self.slices, self.cfg.loss, self.device, self.autocast)
        if self.stop["flag"]:
            return None
        if loss is not None:
            self.record("val", {"loss": loss})
        return loss

    def checkpoint(self) -> None:
        """Adapters (or the whole student), optimizer, RNG and loader position; every rank waits for it."""
        import torch.distributed as dist

        if self.main_rank:
            save_checkpoint(self.ckpt_dir, self.step,
                            self.student.state_dict() if self.full else adapter_state_dict(self.student),
                            {"optimizer": portable_state(self.opt), "torch_rng": torch.get_rng_state(),
                             "step": self.step, "epoch": self.epoch, "position": self.position,
                             "val_before": self.result.val_before}, whole=self.full)
        if self.cfg.world > 1:
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
        if self.cfg.world > 1:
            t = torch.tensor(float(flag), device=self.device)  # NCCL reduces device tensors only
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def _stop_requested(self) -> bool:
        """A signal arrived on any rank, or --stop-at was reached."""
        return self._signalled() or self.step == self.cfg.stop_at

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT or SIGTERM: stop after the current step and its checkpoint, said at once (the step and the
        checkpoint may take a while); a second Ctrl-C stops at once (the newest checkpoint stays)."""
        if self.stop["flag"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.stop["flag"] and self.main_rank:
            ctrl_c = signum == signal.SIGINT
            who = "Ctrl-C" if ctrl_c else signal.Signals(signum).name
            again = " (Ctrl-C again stops at once)" if ctrl_c else ""
            note(f"{who}: stopping after the current step{again}; a re-run with --resume continues")
        self.stop["flag"] = True

    # ---- the loop ----
    def run(self) -> TrainResult:
        """Train to the end of the schedule (or a stop request); evaluate before and after; checkpoint along."""
        cfg = self.cfg
        self.metrics = (self.run_dir / "metrics.jsonl").open("a") if self.main_rank else None
        self.board = _tensorboard(self.run_dir) if self.main_rank else None
        self.stop = {"flag": False}
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.on_progress is not None and self.main_rank:
            self.on_progress(self.step, self.total, None)  # the schedule's length, before the first validation
        self.started = time.perf_counter()
        try:
            if self.step == 0 and self.main_rank:
                self.result.val_before = self.evaluate()
            self.started = time.perf_counter()
            self.model.train()
            _freeze_norms(self.student)
            if self._signalled():  # during the first validation: nothing trained, nothing to checkpoint
                self.result.interrupted = True
                return self.result
            while self.step < self.total and self.epoch < cfg.epochs:
                if self._epoch():
                    return self.result
                if self.step >= self.total:
                    break
            self.result.val_after = self.evaluate()
            self.result.interrupted = self.stop["flag"]  # during the last validation: a re-run validates again
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self.finish()
        return self.result

    def _epoch(self) -> bool:
        """The rest of the current epoch; True when the run pauses (signal or --stop-at)."""
        self.stream.epoch, self.stream.skip = self.epoch, self.position
        batches = (self.cache.batches(self.epoch, self.position) if self.cache is not None
                   else make_loader(self.stream, pin_memory=self.device.type == "cuda"))
        for batch in on_device(batches, self.device):
            if not self.train_step(batch):
                continue
            pause = self._stop_requested()
            if pause or self.step % self.cfg.checkpoint_every == 0 or self.step >= self.total:
                self.checkpoint()
            if pause:
                self.result.interrupted = True
                return True
            if self.step >= self.total:
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
            loss_curve(self.run_dir)
        if self.board is not None:
            self.board.close()
        if self.own_group:
            dist.destroy_process_group()


def feature_cached(cfg: TrainConfig, student: nn.Module, manifest: dict[str, Any]) -> bool:
    """Whether the run trains from the teacher's stored vision features (--feature-cached; auto: when nothing in
    the vision network trains and the student has a policy-only step); checks the label set can feed it."""
    vision_trains = any(p.requires_grad for n, p in student.named_parameters() if not n.startswith("policy"))
    if cfg.feature_cached not in ("auto", "on", "off"):
        raise ConfigError(f"--feature-cached must be auto, on or off, not {cfg.feature_cached!r}")
    cached = cfg.feature_cached == "on" or (cfg.feature_cached == "auto" and not vision_trains
                                             and hasattr(student, "policy_step"))
    available = manifest.get("available_heads")  # label sets from a log carry only some heads
    if available is not None:
        if cached:
            raise ConfigError(f"label set {cfg.labels} has no vision hidden_state (built from a log); feature-cached "
                              "training needs a teacher label set (--feature-cached off)")
        needs = {"plan": "plan", "plan_prob": "plan", "lanes": "lane_lines", "edges": "road_edges", "lead": "lead"}
        missing = sorted({h for term, h in needs.items() if getattr(cfg.loss, term) and h not in available})
        if missing:
            raise ConfigError(f"label set {cfg.labels} lacks {', '.join(missing)} (built from a log); set those "
                              "terms to 0 with --loss-weights")
    if cached and (vision_trains or not hasattr(student, "policy_step")):
        raise ConfigError("--feature-cached on needs a student whose vision half does not train (--student openpilot "
                          "with adapters on its policy only)")
    return cached


def train(cfg: TrainConfig, *, on_progress: Any = None) -> TrainResult:
    """Run (or resume) a training run; returns its summary. `on_progress(step, total, loss)` once before the first
    step (loss None) and after each step."""
    return Recipe(cfg, on_progress=on_progress).run()
