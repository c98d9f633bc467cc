# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Set-up of a training run: `set_up(cfg) -> Setup`, everything the loop (train/loop.py) reads, in this order:
the process group and device; the dataset and label set; the run's newest good checkpoint, found once (the
run-exists check, the resumed sizing and the resumed state all use it); the student with its base weights and
adapters, in memory; the config resolved once (train/sizing.py `resolve`: a resumed run's sizing, the data fit,
the memory fit probed on that student) and from then on final; the run folder's files (student.safetensors,
student.json, config.yaml); the model, optimizer, loaders and feature cache built from the resolved config; the
resumed state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from spark_distill.data import files, shards, store
from spark_distill.data.pairs import MIN_LABELLED_FRAMES, ShardPair, shard_pairs
from spark_distill.errors import ConfigError
from spark_distill.models.checkpoint import latest_checkpoint, load_checkpoint
from spark_distill.models.compact import DEFAULT_TARGETS
from spark_distill.models.lora import apply_adapters, load_adapter_state
from spark_distill.notes import note
from spark_distill.train.cache import FeatureCache
from spark_distill.train.capture import (
    CapturedStep,
    adopt_loaded_state,
    make_captured_optimizer,
    optimizer_options,
    use_capture,
)
from spark_distill.train.config import STUDENTS, TrainConfig, write_config
from spark_distill.train.head_init import label_means
from spark_distill.train.loader import ClipStream
from spark_distill.train.sizing import TrainingData, measure_memory, resolve
from spark_distill.train.step import Unroll, make_autocast, make_optimizer, use_compile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunData:
    """What set-up reads from the dataset: the split's shard pairs, the label manifest, the clip layout."""

    pairs: list[ShardPair]
    val_pairs: list[ShardPair]
    manifest: dict[str, Any]
    frames_manifest: dict[str, Any]
    clip_len: int

    @property
    def slices(self) -> dict[str, dict[str, list[int]]]:
        return self.manifest["output_slices"]

    def sizing(self) -> TrainingData:
        """What the sizing needs of it (cheap: manifests only)."""
        kept = {shards.sanitize_segment(s["name"]): int(s["frames_kept"]) for s in self.frames_manifest["segments"]}
        return TrainingData(self.pairs, self.val_pairs, self.clip_len, kept, int(self.manifest["warmup_frames"]))


@dataclass(frozen=True)
class Student:
    """The student built in memory, before anything is written: base weights and adapters applied."""

    module: nn.Module
    arch: dict[str, Any]  # its architecture entry for student.json
    targets: list[str]  # the module globs its adapters wrap
    base: bytes | None  # the base weights for student.safetensors; None: the run folder already holds them


@dataclass(frozen=True)
class Start:
    """Where the loop starts: optimizer step, epoch, batch of the epoch, and the validation loss before training
    (all from the resumed checkpoint; zeros and None on a fresh start)."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    val_before: float | None = None


@dataclass(frozen=True)
class Setup:
    """Everything the loop uses, built once by `set_up`; `cfg` is resolved and final (what config.yaml holds)."""

    cfg: TrainConfig
    device: torch.device
    own_group: bool  # this run made the process group (and leaves it at the end)
    run_dir: Path
    student: nn.Module
    unroll: Unroll
    model: nn.Module  # the unroll, or DDP around it
    autocast: Any
    params: list[nn.Parameter]  # what trains
    opt: torch.optim.Optimizer
    captured: CapturedStep | None  # the whole step as one function of fixed shapes (one CUDA graph on CUDA)
    slices: dict[str, dict[str, list[int]]]
    stream: ClipStream
    val_stream: ClipStream | None
    cache: FeatureCache | None  # feature-cached clips held in device memory (None: streamed from the shards)
    cached: bool  # feature-cached: the policy trains from the teacher's stored vision features
    total: int  # optimizer steps of the schedule
    start: Start

    @property
    def main_rank(self) -> bool:
        return self.cfg.process_rank == 0

    @property
    def full(self) -> bool:
        """Everything trains: checkpoints hold the whole student, buffers included."""
        return self.cfg.adapter == "none"

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def set_up(options: TrainConfig) -> Setup:
    """The run, set up from its options (the order: see the module docstring). Up to `resolve` only the options
    no sizing changes are read; from there on only the resolved `cfg`."""
    own_group, device = _join(options)
    run_dir = options.runs_dir / options.run
    data = read_data(options)
    # after the dataset and label set checks: a missing label set is the problem to name, not an earlier run
    ckpt = latest_checkpoint(run_dir / "checkpoints")  # found once: the run-exists check, sizing and state use it
    if ckpt is not None and not options.resume:
        raise ConfigError(f"run {options.run!r} already has checkpoints in {run_dir}; pass --resume or another "
                          "--run")
    resume_from = ckpt if options.resume else None
    student = build_student(options, data, run_dir, main=options.process_rank == 0)
    cached = feature_cached(options, student.module, data.manifest)
    student.module.to(device)
    if device.type == "cuda":
        student.module.to(memory_format=torch.channels_last)
    unroll = Unroll(student.module, channels_last=device.type == "cuda")
    autocast = make_autocast(device, options.amp)
    memory = (None if cached or resume_from is not None  # a resumed run keeps its recorded sizing
              else measure_memory(unroll, clip_len=data.clip_len, device=device, autocast=autocast))
    recorded = None if resume_from is None else run_dir / "config.yaml"
    cfg, notes = resolve(options, data.sizing(), recorded=recorded, memory=memory)
    capture, overruled = use_capture(cfg.capture, device, world=cfg.world, grad_accum=cfg.grad_accum)
    if cfg.process_rank == 0:
        for line in [*notes, *([overruled] if overruled else [])]:
            note(line)
        _write_run(run_dir, cfg, student, data)
    model, params, opt, captured = _model(cfg, unroll, device, capture=capture, slices=data.slices)
    stream, val_stream, total = _streams(cfg, data, cached, history=getattr(student.module, "history_frames", 0))
    cache = _feature_cache(cfg, stream, device) if cached else None
    log.info("feature-cached mode: %s", "on (no image is decoded)" if cached else "off")
    start = Start()
    if resume_from is not None:
        start = _restore(resume_from, student.module, opt, captured, full=cfg.adapter == "none")
        log.info("resumed %s at step %d (epoch %d, batch %d)", cfg.run, start.step, start.epoch, start.position)
    return Setup(cfg=cfg, device=device, own_group=own_group, run_dir=run_dir, student=student.module, unroll=unroll,
                 model=model, autocast=autocast, params=params, opt=opt, captured=captured, slices=data.slices,
                 stream=stream, val_stream=val_stream, cache=cache, cached=cached, total=total, start=start)


def _join(cfg: TrainConfig) -> tuple[bool, torch.device]:
    """(whether this run made the process group, this process's device); one process per GPU under torchrun."""
    import torch.distributed as dist

    own_group = cfg.world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo",
                                init_method=cfg.init_method, rank=cfg.process_rank, world_size=cfg.world)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # allocations and streams on this process's own GPU
    return own_group, device


def read_data(cfg: TrainConfig) -> RunData:
    """The training and validation shard pairs, the manifests and the clip length; checks --burn-in against it."""
    pairs, manifest = shard_pairs(cfg.root, cfg.labels, split="train", val_fraction=cfg.val_fraction, seed=cfg.seed)
    val_pairs = (shard_pairs(cfg.root, cfg.labels, split="val", val_fraction=cfg.val_fraction, seed=cfg.seed)[0]
                 if cfg.val_fraction > 0 else [])
    labelled = manifest.get("labelled_frames")  # a label set from a log: frames with a logged model output
    if labelled is not None and labelled < min(MIN_LABELLED_FRAMES, manifest.get("frames", 0)):
        raise ConfigError(f"label set {cfg.labels}: only {labelled} of {manifest.get('frames', '?')} frames have a "
                          f"logged model output (a qlog keeps 1 in 40), too few to train on (at least "
                          f"{MIN_LABELLED_FRAMES}); label with a teacher instead (spark-distill label --teacher DIR)")
    frames_manifest = shards.read_manifest(pairs[0].frames.parent, shards.FRAMES_FORMAT)
    clip_len = int(frames_manifest["settings"]["clip_len"])
    if cfg.burn_in >= clip_len:
        raise ConfigError(f"--burn-in {cfg.burn_in} leaves no frame of a {clip_len}-frame clip to learn from")
    return RunData(pairs, val_pairs, manifest, frames_manifest, clip_len)


def is_run_path(student: str) -> bool:
    """--student names a built-in student or a trained run / checkpoint folder."""
    return student not in STUDENTS and Path(student).exists() and not is_pretrained(student)


def is_pretrained(student: str) -> bool:
    """--student names the shipped pre-trained student, or a pre-trained student's folder (models/pretrained.py)."""
    return student == "pretrained" or (student not in STUDENTS and (Path(student) / "pretrained.json").exists())


def _architecture(cfg: TrainConfig, slices: dict[str, dict[str, list[int]]], manifest: dict[str, Any]
                  ) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """(student, its default adapter targets, its architecture entry for student.json); its outputs must use
    the label set's layouts. A run folder as --student continues from that run's merged student."""
    from spark_distill.models.restore import build_architecture, load_trained

    torch.manual_seed(cfg.seed)
    if is_pretrained(cfg.student):
        from spark_distill.models.pretrained import find_pretrained, load_pretrained

        folder = find_pretrained(slices, cfg.labels, None if cfg.student == "pretrained" else [Path(cfg.student)])
        student, spec = load_pretrained(folder)
        arch, targets = spec["architecture"], list(DEFAULT_TARGETS)
    elif is_run_path(cfg.student):
        trained = load_trained(Path(cfg.student))
        arch, student, targets = trained.spec["architecture"], trained.student, trained.default_targets
    else:
        arch = ({"kind": "openpilot", "onnx": str(Path(cfg.student_onnx).resolve()),
                 # the labels' loop: an override they were made with (else each clip's own delays, fed per frame)
                 **{k: manifest[k] for k in ("lat_delay", "long_delay") if manifest.get(k) is not None}}
                if cfg.student == "openpilot" else {"kind": "compact", "preset": cfg.student, "speed": True,
                                                       "plan_from_speed": True})
        student, targets = build_architecture(arch, slices)
    vision = {k: slice(*v) for k, v in slices["vision"].items()}
    policy = {k: slice(*v) for k, v in slices["policy"].items()}
    if (student.vision_slices, student.policy_slices) != (vision, policy):
        raise ConfigError(f"student {cfg.student}: its output slices differ from label set {cfg.labels}'s; "
                          "label with a teacher of the same layout")
    return student, list(targets), arch


def build_student(cfg: TrainConfig, data: RunData, run_dir: Path, *, main: bool) -> Student:
    """The student in memory: its base weights (the run folder's where it has them; a fresh run's main rank
    starts a built-in student's heads at the labels' mean) and its adapters (or every parameter trainable)."""
    student, default_targets, arch = _architecture(cfg, data.slices, data.manifest)
    base_file = run_dir / "student.safetensors"
    base = None
    if cfg.fresh_policy and not hasattr(student, "reset_policy"):
        raise ConfigError(f"--fresh-policy renews a compact student's policy half; {cfg.student} is {arch['kind']}")
    if main and not base_file.exists():  # the base weights the adapters belong to
        if cfg.fresh_policy:
            student.reset_policy(label_means(data.pairs, data.manifest, data.clip_len)[1])
        elif (cfg.head_init == "label-mean" and arch["kind"] == "compact" and not is_run_path(cfg.student)
                and not is_pretrained(cfg.student)):
            student.init_heads(*label_means(data.pairs, data.manifest, data.clip_len))
        base = safetensors_bytes({k: v.contiguous() for k, v in student.state_dict().items()})
    elif base_file.exists():
        student.load_state_dict(load_file(str(base_file)))
    targets = list(cfg.targets or default_targets)
    if cfg.adapter == "none":  # every parameter trains, or with --fresh-policy the policy half alone
        for name, p in student.named_parameters():
            p.requires_grad_(not cfg.fresh_policy or student.in_policy_half(name))
    else:
        apply_adapters(student, targets=targets, rank=cfg.adapter_rank, alpha=cfg.adapter_alpha,
                       dora=cfg.adapter == "dora", train_modules=list(cfg.train_modules))
    return Student(student, arch, targets, base)


def _write_run(run_dir: Path, cfg: TrainConfig, student: Student, data: RunData) -> None:
    """The run folder's description: the base weights (a fresh run), student.json, and the resolved config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if student.base is not None:
        files.write_bytes_atomic(run_dir / "student.safetensors", student.base)
    spec = {"architecture": student.arch, "source": cfg.student, "slices": data.slices, "adapter": cfg.adapter,
            "targets": student.targets, "rank": cfg.adapter_rank, "alpha": cfg.adapter_alpha,
            "train_modules": list(cfg.train_modules), "labels": cfg.labels,
            "root": store.source_of(Path(cfg.root).resolve()),
            "clip_len": data.clip_len}
    files.write_json_atomic(run_dir / "student.json", spec)
    write_config(run_dir / "config.yaml", cfg)  # resolved: what this run uses


def feature_cached(cfg: TrainConfig, student: nn.Module, manifest: dict[str, Any]) -> bool:
    """Whether the run trains from the teacher's stored vision features (--feature-cached; auto: when nothing in
    the vision network trains and the student has a policy-only step); checks the label set can feed it."""
    vision_trains = any(p.requires_grad for n, p in student.named_parameters() if not n.startswith("policy"))
    if cfg.feature_cached not in ("auto", "on", "off"):
        raise ConfigError(f"--feature-cached must be auto, on or off, not {cfg.feature_cached!r}")
    cached = cfg.feature_cached == "on" or (cfg.feature_cached == "auto" and not vision_trains
                                             and hasattr(student, "policy_step")
                                             and not getattr(student, "combined", False))
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
    if cached and getattr(student, "combined", False):
        raise ConfigError("--feature-cached on: a combined openpilot model (supercombo.onnx, driving_supercombo.onnx) "
                          "has no separate vision half to skip; it trains on the images (--feature-cached auto/off)")
    if cached and (vision_trains or not hasattr(student, "policy_step")):
        raise ConfigError("--feature-cached on needs a student whose vision half does not train (--student openpilot "
                          "with adapters on its policy only)")
    return cached


def _model(cfg: TrainConfig, unroll: Unroll, device: torch.device, *, capture: bool,
           slices: dict[str, dict[str, list[int]]]
           ) -> tuple[nn.Module, list[nn.Parameter], torch.optim.Optimizer, CapturedStep | None]:
    """(the model the step runs: compiled where --compile says, DDP across processes; the parameters that train;
    the optimizer; the captured step where `capture`)."""
    if use_compile(cfg.compile, device):
        unroll.compile_halves()
    model: nn.Module = unroll
    if cfg.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(unroll, device_ids=ids)
    params = [p for p in unroll.student.parameters() if p.requires_grad]
    if not capture:
        return model, params, make_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device), None
    opt = make_captured_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    captured = CapturedStep(unroll, params, opt, slices=slices, weights=cfg.loss,
                            autocast=make_autocast(device, cfg.amp, cache=False), grad_clip=cfg.grad_clip,
                            device=device, strict=cfg.capture == "on")
    return model, params, opt, captured


def _streams(cfg: TrainConfig, data: RunData, cached: bool, *, history: int = 0
             ) -> tuple[ClipStream, ClipStream | None, int]:
    """(training stream of this rank, validation stream or None, optimizer steps of the schedule). `history`:
    frames of modeld's history each clip carries (loader.History), for a student that starts from it."""
    motions = None
    if cfg.loss.gt:
        from spark_distill.data.gt_path import segment_motions

        motions = segment_motions(data.pairs[0].frames.parent, [s["name"] for s in data.frames_manifest["shards"]])
    stream = ClipStream(data.pairs, data.manifest, batch=cfg.batch_size, clip_len=data.clip_len, burn_in=cfg.burn_in,
                        seed=cfg.seed, process_rank=cfg.process_rank, world=cfg.world, workers=cfg.workers,
                        mask_warmup=cfg.mask_warmup, images=not cached, motions=motions, history=history)
    val_batch = max(1, min(cfg.batch_size, sum(len(p.keys) for p in data.val_pairs)))
    val_stream = (ClipStream(data.val_pairs, data.manifest, batch=val_batch, clip_len=data.clip_len,
                             burn_in=cfg.burn_in, seed=cfg.seed, workers=1, train=False, mask_warmup=cfg.mask_warmup,
                             images=not cached, motions=motions, history=history)
                  if data.val_pairs else None)
    micro_per_epoch = len(stream)
    if micro_per_epoch == 0:
        raise ConfigError(f"some loader worker gets fewer than --batch-size {cfg.batch_size} clips: "
                          f"{len(data.pairs)} training shards over {cfg.world} rank(s) x {cfg.workers} worker(s); "
                          "use fewer --workers or a smaller --batch-size")
    return stream, val_stream, cfg.max_steps or cfg.epochs * micro_per_epoch // cfg.grad_accum


def _feature_cache(cfg: TrainConfig, stream: ClipStream, device: torch.device) -> FeatureCache | None:
    """The clips' policy-side arrays, decoded once for every epoch (train/cache.py); None where they stay streamed."""
    started = time.perf_counter()
    cache = FeatureCache.fill(stream, device=device, mode=cfg.feature_cache, workers=cfg.workers)
    if cache is not None:
        log.info("feature cache: %d clips, %.2f GB on %s, filled in %.1f s", len(cache.rows), cache.nbytes / 1e9,
                 device, time.perf_counter() - started)
    return cache


def _restore(ckpt: Path, student: nn.Module, opt: torch.optim.Optimizer, captured: CapturedStep | None, *,
             full: bool) -> Start:
    """The checkpoint's trainable tensors, optimizer state and RNG loaded; where the loop continues."""
    tensors, state = load_checkpoint(ckpt)
    if full:
        student.load_state_dict(tensors)
    else:
        load_adapter_state(student, tensors)
    options = optimizer_options(opt)
    opt.load_state_dict(state["optimizer"])
    if captured is not None:
        adopt_loaded_state(opt, options)
    torch.set_rng_state(state["torch_rng"])
    return Start(state["step"], state["epoch"], state["position"], state.get("val_before"))
