# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Feature-cached training from memory: every training clip's policy-side arrays (the teacher's vision outputs
with its hidden state, desire, speed, pose, policy labels, mask) decoded once and held on the training device;
each epoch's batches are gathered there. Entry point: `FeatureCache.fill(stream, ...)`, then
`cache.batches(epoch, skip)`.

Why: in feature-cached mode no image is decoded and the step is the recurrent policy alone, a few milliseconds
on a GPU, while the loader still decompresses every clip's labels every epoch: the loader, not the GPU, set
the pace (benchmarks/train.md). A label set is reused across many epochs and experiments, and its policy-side
arrays are small (~5 kB per frame with openpilot's output widths: 1 GB holds about 55 hours of driving at
20 Hz), so they are decoded once per run, by the loader's own workers and its own per-clip code.

The batches are exactly the stream's: `ClipStream.key_batches` gives the keys of the batches a loader over the
stream yields for (epoch, skip), so training, exact mid-epoch resume and DDP's equal steps are unchanged
(tests/train/test_cache.py compares cached batches with streamed ones, tensor for tensor).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from spark_distill.data.pairs import ShardPair
from spark_distill.errors import ConfigError
from spark_distill.notes import note
from spark_distill.train.loader import ClipStream, make_loader, stack_clips
from spark_distill.train.step import HOST_KEYS

MODES = ("auto", "on", "off")
SHARE = 0.4  # of the device's free memory (the host's available memory on a CPU) that auto may take
CHUNK = 64  # clips per hand-over from a filling worker


class _Fill(IterableDataset):
    """Every clip of the stream's shards once, decoded by `ClipStream.clip_arrays`, in chunks; shards dealt to
    the loader's workers round-robin."""

    def __init__(self, stream: ClipStream, workers: int) -> None:
        self.stream, self.workers = stream, workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        me, n = (info.id, info.num_workers) if info is not None else (0, 1)
        pairs: list[ShardPair] = self.stream.pairs[me::n]
        chunk: list[dict[str, Any]] = []
        for pair in pairs:
            for sample in self.stream.samples(pair):
                chunk.append(self.stream.clip_arrays(*sample))
                if len(chunk) == CHUNK:
                    yield stack_clips(chunk)
                    chunk = []
        if chunk:
            yield stack_clips(chunk)


def _budget(device: torch.device) -> int:
    """Bytes auto may give the cache: a share of what is free on the device (on a CPU, of MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(SHARE * free)
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(SHARE * avail)


class FeatureCache:
    """The decoded training clips of a feature-cached stream, one tensor per array on `device` (the mask, which the
    step reads on the host, on the host)."""

    def __init__(self, stream: ClipStream, rows: dict[str, int], arrays: dict[str, torch.Tensor]) -> None:
        self.stream, self.rows, self.arrays = stream, rows, arrays

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.arrays.values())

    @classmethod
    def fill(cls, stream: ClipStream, *, device: torch.device, mode: str = "auto", workers: int = 1,
             budget: int | None = None) -> FeatureCache | None:
        """Decode every clip of `stream` (feature-cached: no image) into device memory with `workers` loader
        workers. None when mode is off, or when auto finds that it would take more than its share of memory
        (`budget` bytes; default: `SHARE` of the free memory); mode on then raises a ConfigError."""
        if mode not in MODES:
            raise ConfigError(f"--feature-cache must be one of {', '.join(MODES)}, not {mode!r}")
        if stream.images:
            raise ConfigError("the feature cache holds feature-cached clips (no images)")
        if mode == "off":
            return None
        total = sum(len(p.keys) for p in stream.pairs)
        budget = _budget(device) if budget is None else budget
        workers = max(1, min(workers, len(stream.pairs)))
        loader = make_loader(_Fill(stream, workers), workers=workers)
        rows: dict[str, int] = {}
        arrays: dict[str, torch.Tensor] = {}
        for chunk in loader:
            if not arrays:  # sized by the first chunk: every clip has the same shapes
                need = sum(total * v[0].numel() * v.element_size() for v in chunk.values()
                           if isinstance(v, torch.Tensor))
                if need > budget:
                    message = (f"the feature cache needs {need / 1e9:.2f} GB for {total} clips, more than "
                               f"{budget / 1e9:.2f} GB ({SHARE:.0%} of the free memory)")
                    if mode == "on":
                        raise ConfigError(message + "; use --feature-cache auto or off")
                    note(f"{message}: streaming from the shards instead")
                    return None
                arrays = {k: torch.empty((total, *v.shape[1:]), dtype=v.dtype,
                                         device="cpu" if k in HOST_KEYS else device)
                          for k, v in chunk.items() if isinstance(v, torch.Tensor)}
            at = slice(len(rows), len(rows) + len(chunk["keys"]))
            for key in chunk["keys"]:
                rows[key] = len(rows)
            for k, t in arrays.items():
                t[at] = chunk[k].to(t.device)
        if len(rows) != total:
            raise ConfigError(f"the feature cache read {len(rows)} clips of {total}")  # a stream/shard mismatch
        return cls(stream, rows, arrays)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """The batches a loader over the stream yields for `epoch` after `skip` batches, gathered in memory."""
        for keys in self.stream.key_batches(epoch, skip):
            idx = torch.tensor([self.rows[k] for k in keys])
            on = {t.device: idx.to(t.device) for t in self.arrays.values()}  # the rows, once per device
            batch: dict[str, Any] = {k: t.index_select(0, on[t.device]) for k, t in self.arrays.items()}
            batch["keys"] = keys
            yield batch
