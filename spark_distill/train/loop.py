# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The training loop: `train(cfg) -> TrainResult`. One readable function over a few helpers
(build_student, loss_step, lr_at, checkpoints); the teacher is never imported: its outputs come from
the label set. Multi-process through torch.distributed (DDP; torchrun or an explicit init URL).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spark_distill import shards
from spark_distill.errors import ConfigError, TrainError
from spark_distill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from spark_distill.train.data import ClipStream, make_loader, shard_pairs
from spark_distill.train.lora import adapter_state_dict, apply_adapters, load_adapter_state, trainable_fraction
from spark_distill.train.losses import LossWeights
from spark_distill.train.sizing import LR, TrainingData, default_adapter, fit_to_data, fit_to_memory, sized_as
from spark_distill.train.step import COMPILE_MODES, Unroll, loss_step, make_optimizer, optimizer_step, use_compile
from spark_distill.train.step import freeze_norms as _freeze_norms
from spark_distill.train.step import make_autocast as _autocast
from spark_distill.train.students.compact import PRESETS

log = logging.getLogger(__name__)
ADAPTERS = ("dora", "lora", "none")  # "auto" resolves to one of them (sizing.default_adapter)
STUDENTS = (*PRESETS, "openpilot")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of `spark-distill train`."""

    root: Path
    labels: str
    run: str
    runs_dir: Path = Path("runs")
    student: str = "compact"  # compact, compact-xs (built in) or openpilot (the ONNX pair in student_onnx)
    student_onnx: Path | None = None  # folder with driving_vision.onnx + driving_policy.onnx (openpilot student)
    adapter: str = "auto"  # auto: none for a built-in student (random weights), dora to fine-tune a trained one
    rank: int = 16  # >32 rarely helps DoRA on heads and projections (the DoRA paper's rank sweeps)
    alpha: float = 32.0
    targets: tuple[str, ...] | None = None  # module-name globs; None: the student's defaults
    train_modules: tuple[str, ...] = ()
    epochs: int = 10
    batch_size: int = 32  # clips per optimizer step; capped by the clips a loader worker gets, split into
    # accumulated micro-batches where its activations would not fit in memory (train/sizing.py)
    grad_accum: int = 1
    lr: float | None = None  # None: 1e-3 training fully, 5e-4 with adapters (train/sizing.py LR)
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: 10% of the schedule, at most 100 steps
    grad_clip: float = 1.0
    burn_in: int = 5  # frames per clip that only warm the recurrent state (>= the 4-frame image skip)
    val_fraction: float = 0.1
    mask_warmup: bool = True  # drop labels from each segment's first 5 s (zero-history teacher outputs)
    workers: int = 2  # capped by the training shards this rank reads
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    feature_cached: str = "auto"  # auto: on when nothing in the vision network trains (openpilot student)
    max_steps: int | None = None  # optimizer steps of the whole schedule [default: epochs of data]
    stop_at: int | None = None  # checkpoint and stop at this step without changing the schedule (resume later)
    resume: bool = False
    device: str | None = None
    amp: str = "auto"  # auto: bf16 on CUDA GPUs that have it, else fp32
    compile: str = "auto"  # torch.compile the student's two halves; auto: on CUDA (train.step.use_compile)
    rank_id: int = 0
    world: int = 1
    init_method: str | None = None  # torch.distributed init URL when world > 1 ("env://" under torchrun)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.adapter == "auto":
            object.__setattr__(self, "adapter", default_adapter(self.student))
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"unknown --adapter {self.adapter!r}; choose one of {', '.join(ADAPTERS)}")
        if self.student not in STUDENTS and not Path(self.student).exists():
            raise ConfigError(f"unknown --student {self.student!r}; choose one of {', '.join(STUDENTS)} "
                              "or give a trained run's folder")
        if (self.student == "openpilot") != (self.student_onnx is not None):
            raise ConfigError("--student openpilot takes --student-onnx DIR (the ONNX pair to fine-tune), and only it")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", LR[self.adapter])
        if min(self.epochs, self.batch_size, self.grad_accum, self.rank, self.workers) < 1 or self.lr <= 0:
            raise ConfigError("--epochs, --batch-size, --grad-accum, --dora-rank and --workers must be >= 1, --lr > 0")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int = 0
    val_before: float | None = None
    val_after: float | None = None
    trainable: tuple[int, int] = (0, 0)
    interrupted: bool = False
    feature_cached: bool = False
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
    from spark_distill.train.restore import build_architecture, load_trained

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


def write_config(path: Path, cfg: TrainConfig) -> None:
    """The resolved configuration as YAML (what `--config` reads back)."""
    import yaml

    plain = json.loads(json.dumps(asdict(cfg), default=str))
    shards.write_bytes_atomic(path, yaml.safe_dump(plain, sort_keys=False).encode())


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer, or None (with a warning) where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


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
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=split)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("distillation loss")
    ax.set_title(run_dir.name)
    ax.legend()
    ax.grid(alpha=0.3)
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def train(cfg: TrainConfig, *, on_progress: Any = None) -> TrainResult:
    """Run (or resume) a training run; returns its summary. `on_progress(step, total, loss)` after each step."""
    import torch.distributed as dist

    own_group = cfg.world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo",
                                init_method=cfg.init_method, rank=cfg.rank_id, world_size=cfg.world)
    main_rank = cfg.rank_id == 0
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one process per GPU (torchrun): allocations and streams on its own GPU
    run_dir = cfg.runs_dir / cfg.run
    ckpt_dir = run_dir / "checkpoints"
    if run_dir.exists() and not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise ConfigError(f"run {cfg.run!r} already has checkpoints in {run_dir}; pass --resume or another --run")
    pairs, manifest = shard_pairs(cfg.root, cfg.labels, split="train", val_fraction=cfg.val_fraction, seed=cfg.seed)
    val_pairs = (shard_pairs(cfg.root, cfg.labels, split="val", val_fraction=cfg.val_fraction, seed=cfg.seed)[0]
                 if cfg.val_fraction > 0 else [])
    frames_manifest = shards.read_manifest(pairs[0].frames.parent, shards.FRAMES_FORMAT)
    frames_settings = frames_manifest["settings"]
    clip_len, slices = int(frames_settings["clip_len"]), manifest["output_slices"]
    if cfg.burn_in >= clip_len:
        raise ConfigError(f"--burn-in {cfg.burn_in} leaves no frame of a {clip_len}-frame clip to learn from")
    resuming = cfg.resume and latest_checkpoint(ckpt_dir) is not None
    if resuming:  # the data position counts the run's own batches: keep its sizing
        cfg = sized_as(cfg, run_dir / "config.yaml")
    kept = {shards.sanitize_segment(s["name"]): int(s["frames_kept"]) for s in frames_manifest["segments"]}
    cfg, notes = fit_to_data(cfg, TrainingData(pairs, val_pairs, clip_len, kept, int(manifest["warmup_frames"])))
    if cfg.val_fraction > 0 and not val_pairs:
        notes.append("no validation: the dataset has one segment of one clip (no time range to hold out)")
    student, default_targets, arch = build_student(cfg, slices)
    targets = list(cfg.targets or default_targets)
    base_file = run_dir / "student.safetensors"
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not base_file.exists():  # the base weights the adapters belong to
            save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(base_file))
        spec = {"architecture": arch, "source": cfg.student, "slices": slices, "adapter": cfg.adapter,
                "targets": targets, "rank": cfg.rank, "alpha": cfg.alpha, "train_modules": list(cfg.train_modules),
                "labels": cfg.labels, "root": str(Path(cfg.root).resolve()), "clip_len": clip_len}
        shards.write_json_atomic(run_dir / "student.json", spec)
    if base_file.exists():
        student.load_state_dict(load_file(str(base_file)))
    if cfg.adapter == "none":
        for p in student.parameters():
            p.requires_grad_(True)
    else:
        apply_adapters(student, targets=targets, rank=cfg.rank, alpha=cfg.alpha,
                       dora=cfg.adapter == "dora",
                       train_modules=list(cfg.train_modules))
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
    student.to(device)
    if device.type == "cuda":
        student.to(memory_format=torch.channels_last)
    unroll = Unroll(student, channels_last=device.type == "cuda")
    autocast = _autocast(device, cfg.amp)
    if not cached and not resuming:
        cfg, more = fit_to_memory(cfg, unroll, clip_len=clip_len, device=device, autocast=autocast)
        notes += more
    if main_rank:
        for note in notes:
            log.warning("note: %s", note)
        write_config(run_dir / "config.yaml", cfg)  # resolved: what this run uses
    if use_compile(cfg.compile, device):
        unroll.compile_halves()
    model: nn.Module = unroll
    if cfg.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(unroll, device_ids=ids)
    full = cfg.adapter == "none"  # everything trains: checkpoints hold the whole student, buffers included
    params = [p for p in student.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    motions = None
    if cfg.loss.gt:
        from spark_distill.train.gt_path import segment_motions

        motions = segment_motions(pairs[0].frames.parent, [s["name"] for s in frames_manifest["shards"]])
    stream = ClipStream(pairs, manifest, batch=cfg.batch_size, clip_len=clip_len, burn_in=cfg.burn_in, seed=cfg.seed,
                        rank=cfg.rank_id, world=cfg.world, workers=cfg.workers, mask_warmup=cfg.mask_warmup,
                        images=not cached, motions=motions)
    val_batch = max(1, min(cfg.batch_size, sum(len(p.keys) for p in val_pairs)))
    val_stream = (ClipStream(val_pairs, manifest, batch=val_batch, clip_len=clip_len, burn_in=cfg.burn_in,
                             seed=cfg.seed, workers=1, train=False, mask_warmup=cfg.mask_warmup, images=not cached,
                             motions=motions)
                  if val_pairs else None)
    micro_per_epoch = len(stream)
    if micro_per_epoch == 0:
        raise ConfigError(f"some loader worker gets fewer than --batch-size {cfg.batch_size} clips: {len(pairs)} "
                          f"training shards over {cfg.world} rank(s) x {cfg.workers} worker(s); use fewer --workers "
                          "or a smaller --batch-size")
    total = cfg.max_steps or cfg.epochs * micro_per_epoch // cfg.grad_accum
    result = TrainResult(run_dir, trainable=trainable_fraction(student), feature_cached=cached)
    log.info("feature-cached mode: %s", "on (no image is decoded)" if cached else "off")
    step, epoch, position = 0, 0, 0
    if cfg.resume and (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        tensors, state = load_checkpoint(ckpt)
        if full:
            student.load_state_dict(tensors)
        else:
            load_adapter_state(student, tensors)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        result.val_before = state.get("val_before")
        log.info("resumed %s at step %d (epoch %d, batch %d)", cfg.run, step, epoch, position)
    metrics = (run_dir / "metrics.jsonl").open("a") if main_rank else None
    board = _tensorboard(run_dir) if main_rank else None

    def record(split: str, values: dict[str, float]) -> None:
        if metrics is not None:
            metrics.write(json.dumps({"step": step, "split": split, **values}) + "\n")
            metrics.flush()
        if board is not None:
            for k, v in values.items():
                board.add_scalar(f"{split}/{k}", v, step)

    def checkpoint() -> None:
        if main_rank:
            save_checkpoint(ckpt_dir, step, student.state_dict() if full else adapter_state_dict(student),
                            {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                             "epoch": epoch, "position": position, "val_before": result.val_before})
        if cfg.world > 1:
            dist.barrier()

    stop = {"flag": False}
    handlers = {s: signal.signal(s, lambda *_: stop.__setitem__("flag", True)) for s in (signal.SIGINT, signal.SIGTERM)}
    if step == 0 and val_stream is not None and main_rank:
        result.val_before = evaluate(unroll, make_loader(val_stream), slices, cfg.loss, device, autocast)
        if result.val_before is not None:
            record("val", {"loss": result.val_before})
    start, bad_steps = time.perf_counter(), 0
    model.train()
    _freeze_norms(student)
    try:
        while step < total and epoch < cfg.epochs:
            stream.epoch, stream.skip = epoch, position
            for batch in make_loader(stream, pin_memory=device.type == "cuda"):
                loss, terms = loss_step(model, batch, slices, cfg.loss, device, autocast)
                position += 1
                result.samples += len(batch["keys"])
                finite = loss is None or bool(torch.isfinite(loss))
                if cfg.world > 1:  # skip together: a rank that skips backward alone would hang the others
                    ok = torch.tensor(float(finite), device=device)
                    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
                    finite = bool(ok.item())
                if not finite:
                    bad_steps += 1
                    opt.zero_grad(set_to_none=True)
                    log.warning("non-finite loss at step %d; step skipped", step)
                    if bad_steps > 5:
                        raise TrainError(f"loss was not finite for {bad_steps} steps in a row at step {step}; "
                                         "lower --lr or check the label set")
                    continue
                bad_steps = 0
                if loss is not None:
                    (loss / cfg.grad_accum).backward()
                if position % cfg.grad_accum:
                    continue
                grad_norm = optimizer_step(opt, params, lr=lr_at(step, cfg, total), grad_clip=cfg.grad_clip)
                step += 1
                if on_progress is not None and main_rank:
                    on_progress(step, total, None if loss is None else float(loss.detach()))
                if step % cfg.log_every == 0 and loss is not None:
                    record("train", {"loss": float(loss.detach()), **terms, "lr": opt.param_groups[0]["lr"],
                                     "grad_norm": float(grad_norm),
                                     "samples_per_s": result.samples / (time.perf_counter() - start)})
                flag = torch.tensor(float(stop["flag"]), device=device)  # NCCL reduces device tensors only
                if cfg.world > 1:
                    dist.all_reduce(flag)  # every rank stops at the same step
                pause = bool(flag.item()) or step == cfg.stop_at
                if pause or step % cfg.checkpoint_every == 0 or step >= total:
                    checkpoint()
                if pause:
                    result.interrupted = True
                    return result
                if step >= total:
                    break
            else:
                epoch, position = epoch + 1, 0
                checkpoint()
                continue
            break
        if val_stream is not None and main_rank:
            result.val_after = evaluate(unroll, make_loader(val_stream), slices, cfg.loss, device, autocast)
            if result.val_after is not None:
                record("val", {"loss": result.val_after})
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        result.steps, result.seconds = step, time.perf_counter() - start
        if metrics is not None:
            metrics.close()
            loss_curve(run_dir)
        if board is not None:
            board.close()
        if own_group:
            dist.destroy_process_group()
    return result
