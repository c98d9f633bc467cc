# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Training settings that adapt to the dataset, so the defaults fit a first route of one short segment as
well as a thousand hours. Entry: `resolve(cfg, data, recorded=..., memory=...) -> (cfg, notes)`, called once
in set-up (train/setup.py); it runs `sized_as` (a resumed run), `fit_to_data` and `fit_to_memory` (with what
`measure_memory` probed on the built student).

Options a user leaves at their defaults are derived here: the adapter and learning rate from the student
(a built-in student starts from random weights, so it trains fully; adapters fine-tune a trained model),
the loader's workers and the batch from what the shards can feed, the warm-up mask from how long the
segments are, the learning-rate warm-up and the logging cadence from the steps the data gives, and
micro-batches (gradient accumulation, the same optimizer steps) where a batch's activations would not fit in
memory. Every value
that differs from what was asked is reported as a one-line note. An error is left only where no training is
possible at all (fewer training shards than ranks).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spark_distill.data import shards
from spark_distill.data.pairs import ShardPair
from spark_distill.errors import ConfigError
from spark_distill.processes import on_gpu, worker_budget
from spark_distill.train.config import TrainConfig, read_config
from spark_distill.train.loader import smallest_share

MAX_WARMUP_STEPS = 100
MEMORY_SHARE = 0.5  # of the memory free at start-up, for one micro-batch's saved activations
LOG_POINTS = 40  # logged training points of a run whose --log-every is left at its default


def log_cadence(total: int) -> int:
    """Optimizer steps between logged training points: every step up to LOG_POINTS steps, then about
    LOG_POINTS/2..LOG_POINTS points over the schedule (a 10-step run's loss curve has 10 points, not 1)."""
    return max(1, math.ceil(total / LOG_POINTS))


@dataclass(frozen=True)
class TrainingData:
    """What the sizing needs to know of the dataset (all cheap: from manifests, nothing decoded)."""

    train: list[ShardPair]
    val: list[ShardPair]
    clip_len: int
    frames_kept: dict[str, int]  # segment (sanitized, as in clip keys) -> frames in the dataset
    warmup_frames: int


def _loss_frames(pairs: list[ShardPair], data: TrainingData, burn_in: int, warmup: int) -> int:
    """Frames of these clips that carry a loss (after burn-in and the warm-up mask), counted from clip indices;
    dropped frames only make the true count larger."""
    total = 0
    for key in (k for p in pairs for k in p.keys):
        segment, clip = shards.split_clip_key(key)
        start = clip * data.clip_len
        n = min(data.clip_len, data.frames_kept.get(segment, start + data.clip_len) - start)
        total += max(0, n - max(burn_in, warmup - start))
    return total


def _smallest_share(cfg: TrainConfig, data: TrainingData, *, workers: int, epoch: int) -> int:
    return smallest_share(data.train, seed=cfg.seed, epoch=epoch, world=cfg.world, workers=workers)


def fit_to_data(cfg: TrainConfig, data: TrainingData) -> tuple[TrainConfig, list[str]]:
    """The settings this run uses on this data, and a note for each one that differs from the request."""
    notes: list[str] = []
    shards_per_rank = len(data.train) // cfg.world
    if shards_per_rank < 1:
        raise ConfigError(f"{len(data.train)} training shard(s) cannot feed {cfg.world} ranks: run on at most "
                          f"{len(data.train)} GPU(s) or ingest more data")
    asked = cfg.workers or worker_budget(accelerator=on_gpu(cfg.device))
    workers = min(asked, shards_per_rank)
    if workers < cfg.workers:
        notes.append(f"--workers {cfg.workers} -> {workers}: each loader worker reads whole shards and this rank "
                     f"has {shards_per_rank}")
    smallest = min(_smallest_share(cfg, data, workers=workers, epoch=e) for e in range(min(cfg.epochs, 50)))
    batch = max(1, min(cfg.batch_size, smallest))
    if batch < cfg.batch_size:
        notes.append(f"--batch-size {cfg.batch_size} -> {batch}: a loader worker gets {smallest} training clips "
                     "per epoch")
    mask = cfg.mask_warmup
    empty = [name for name, split in (("training", data.train), ("validation", data.val))
             if split and not _loss_frames(split, data, cfg.burn_in, data.warmup_frames)]
    if mask and empty:
        mask = False
        notes.append(f"warm-up mask off: no {empty[0]} frame lies past its segment's first {data.warmup_frames} "
                     "frames, so the teacher's start-up labels are trained on (longer segments avoid this)")
    micro_per_epoch = _smallest_share(cfg, data, workers=workers, epoch=0) // batch * workers
    accum = cfg.grad_accum
    if micro_per_epoch < accum:
        accum = max(1, micro_per_epoch)
        notes.append(f"--grad-accum {cfg.grad_accum} -> {accum}: an epoch holds {micro_per_epoch} batch(es) per rank")
    per_epoch = micro_per_epoch // accum
    total = cfg.max_steps or cfg.epochs * per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(MAX_WARMUP_STEPS, max(1, total // 10))
    log_every = cfg.log_every or log_cadence(total)
    resolved = dataclasses.replace(cfg, workers=workers, batch_size=batch, grad_accum=accum, mask_warmup=mask,
                                   warmup_steps=warmup, log_every=log_every)
    return resolved, notes


def free_memory(device: torch.device) -> int:
    """Bytes free for this process's tensors: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def activation_bytes(unroll: torch.nn.Module, *, clip_len: int, device: torch.device, autocast: Any) -> int:
    """Bytes autograd saves for the backward pass of one clip: one forward of a zero clip, counted by
    saved-tensor hooks. Nothing is kept: the hook stores the byte count, not the tensor. A hook that returned the
    tensor itself made a reference cycle (a node holding its own output, as sigmoid's does) that kept the probe's
    whole graph alive for the run: its activations, and gradient accumulators made on the default stream, which
    the captured training step's backward then had to wait on, and a CUDA graph capture refuses that
    (cudaErrorStreamCaptureImplicit on the H100, benchmarks/distill.md)."""
    total = 0

    def count(t: torch.Tensor) -> int:
        nonlocal total
        total += t.numel() * t.element_size()
        return t.numel()

    def never(_: int) -> torch.Tensor:
        raise RuntimeError("the activation probe's graph is not for backward")

    frames = torch.zeros(1, clip_len, 6, 128, 256, device=device)  # (1, T, 6, 128, 256)
    with torch.autograd.graph.saved_tensors_hooks(count, never), autocast():
        unroll(frames, frames, torch.zeros(1, clip_len, 8, device=device), torch.zeros(1, 2, device=device),
               torch.zeros(1, clip_len, device=device), torch.ones(1, dtype=torch.bool, device=device))
    return total


@dataclass(frozen=True)
class Memory:
    """What the memory fit needs to know: the bytes one clip's activations take and the bytes free on the device."""

    per_clip: int
    free: int
    device: torch.device


def measure_memory(unroll: torch.nn.Module, *, clip_len: int, device: torch.device, autocast: Any) -> Memory:
    """One clip's activations (an eval-mode probe: BatchNorm statistics stay) and the memory free now."""
    was_training = unroll.training
    unroll.eval()
    try:
        per_clip = activation_bytes(unroll, clip_len=clip_len, device=device, autocast=autocast)
    finally:
        unroll.train(was_training)
    return Memory(per_clip, free_memory(device), device)


def fit_to_memory(cfg: TrainConfig, memory: Memory) -> tuple[TrainConfig, list[str]]:
    """Split each batch into accumulated micro-batches when its activations would not fit in memory."""
    fits = max(1, int(MEMORY_SHARE * memory.free // max(memory.per_clip, 1)))
    if fits >= cfg.batch_size:
        return cfg, []
    split = math.ceil(cfg.batch_size / fits)
    micro = cfg.batch_size // split  # micro x split <= the batch the data was sized for: every step fills up
    note = (f"--batch-size {cfg.batch_size} -> {micro} clips x {split} accumulated micro-batches: a clip's activations "
            f"take {memory.per_clip / 2**30:.2f} GiB and {memory.free / 2**30:.1f} GiB are free on {memory.device}")
    return dataclasses.replace(cfg, batch_size=micro, grad_accum=cfg.grad_accum * split), [note]


SIZED = ("workers", "batch_size", "grad_accum", "mask_warmup", "warmup_steps")  # what the fits may change


def sized_as(cfg: TrainConfig, config_yaml: Path) -> TrainConfig:
    """`cfg` with the sizing a run recorded in its config.yaml (a resumed run must deal batches as before)."""
    recorded = read_config(config_yaml)
    return dataclasses.replace(cfg, **{k: recorded[k] for k in SIZED if k in recorded})


def resolve(cfg: TrainConfig, data: TrainingData, *, recorded: Path | None = None, memory: Memory | None = None
            ) -> tuple[TrainConfig, list[str]]:
    """The settings this run uses, resolved once before anything is built: a resumed run's recorded sizing
    (`recorded`: its config.yaml), fitted to the data, then to the memory (`memory`: None skips that fit), and
    a note for each value that differs from the request."""
    if recorded is not None:  # the data position counts the run's own batches: keep its sizing
        cfg = sized_as(cfg, recorded)
    cfg, notes = fit_to_data(cfg, data)
    if cfg.val_fraction > 0 and not data.val:
        notes.append("no validation: the dataset has one segment of one clip (no time range to hold out)")
    if memory is not None:
        cfg, more = fit_to_memory(cfg, memory)
        notes += more
    return cfg, notes
