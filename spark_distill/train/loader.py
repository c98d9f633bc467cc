# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Streaming frames and labels in lockstep, for training. Entry points: `ClipStream` (an IterableDataset
of batches) and `make_loader(stream, workers)`.

The pipeline is webdataset's shape, iterator -> iterator stages over tar shards: the epoch's shard
order (seeded by seed and epoch) is split across ranks, then across DataLoader workers; each worker
reads its frames shard and the matching label shard with one tar iterator each, checks that every
sample has the same key on both sides (a mismatch names the shard), drops clips of the other split
(validation is chosen by segment — or, in a dataset of one segment, as the segment's last seconds —
never clip by clip), shuffles through a seeded buffer, decodes and
batches. Everything is a pure function of (seed, epoch, process_rank, world, workers, batch): every worker
yields the same number of batches and the DataLoader takes them round-robin, so batch j of an epoch is
logical worker j % W's (j // W)-th batch, every rank runs the same number of steps (no DDP hang on
uneven shards), and resuming at batch p re-deals the logical workers and has each skip its share of p
batches before decoding — the resumed run sees exactly the samples the uninterrupted one would have.
Each clip is seen at most once per epoch; the remainder of each worker's share (fewer than `batch`
clips) is dropped.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from spark_distill.data.clips import decode_clip
from spark_distill.data.dataset import check_frames_sample, check_label_sample, label_widths, past_warmup, state_start
from spark_distill.data.pairs import ShardPair, read_lockstep
from spark_distill.errors import DatasetError, SparkDistillError
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.processes import reuse_freed_memory


def deal_shards(pairs: list[ShardPair], *, seed: int, epoch: int, process_rank: int, world: int, worker: int,
                workers: int, shuffle: bool = True) -> list[ShardPair]:
    """The shards one loader worker of one rank reads in an epoch (the epoch's seeded order, dealt round-robin
    to ranks, then to workers)."""
    order = list(pairs)
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[process_rank::world][worker::workers]


def smallest_share(pairs: list[ShardPair], *, seed: int, epoch: int, world: int, workers: int,
                   shuffle: bool = True) -> int:
    """Clips in the smallest share of any worker of any rank this epoch."""
    return min(sum(len(p.keys) for p in deal_shards(pairs, seed=seed, epoch=epoch, process_rank=r, world=world,
                                                    worker=w, workers=workers, shuffle=shuffle))
               for r in range(world) for w in range(workers))


def shuffled(items: Iterator[Any], *, size: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle buffer (webdataset's shuffle stage, deterministic)."""
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    while buf:
        yield buf.pop(rng.randrange(len(buf)))


CONTEXT_KEYS = ("ctx_hidden", "ctx_desire", "ctx_curv")  # a clip's history arrays (`History`)


class History:
    """The history modeld had when each clip starts, read from the label set: for the `frames` frame ids before
    the clip's first, the teacher's hidden_state, the frame's desire and the teacher's desired curvature. Frame ids
    the video lacks repeat the frame before (modeld's skip: no new desire pulse); frames before the segment's first
    or the label pass's last restart are zeros (modeld's zero start). Where a shard starts in the middle of a
    segment, the shard before it (`before`) is read for that segment's preceding clips (no image is read).

    What it is for: a student whose state is a fixed window of these (the openpilot student) starts a mid-segment
    clip where modeld would be, not from the zero history modeld has only at a segment's start."""

    def __init__(self, frames: int, label_manifest: dict[str, Any]) -> None:
        slices = label_manifest["output_slices"]
        self.frames = frames
        self.hidden = slice(*slices["vision"]["hidden_state"])
        curv = slices["policy"].get("desired_curvature")
        self.curv = None if curv is None else curv[0]
        self.segments = label_manifest["segments"]

    def attach(self, samples: Iterator[tuple[dict, dict]], wanted: set[str],
               before: Callable[[], Iterator[tuple[dict, dict]]] | None = None
               ) -> Iterator[tuple[dict, dict, dict, dict]]:
        """(frames sample, labels sample, history arrays, the clip decoded without images) of the `wanted` clips of
        `samples` (a shard's clips in order, `read_lockstep(every=True)`); `before`: the clips of the shard before
        it, read only if needed."""
        seen: dict[str, list[tuple[np.ndarray, ...]]] = {}
        for f, lab in samples:
            d = decode_clip(f, lab, images=False)
            meta = d["meta"]
            fids = np.asarray(meta["frame_ids"], np.int64)
            if meta["segment"] not in seen:
                seen[meta["segment"]] = []
                if meta.get("clip", 0) > 0 and before is not None:  # the segment began in an earlier shard
                    for fb, lb in before():
                        db = decode_clip(fb, lb, images=False)
                        if db["meta"]["segment"] == meta["segment"]:
                            self._keep(seen[meta["segment"]], db)
            known = seen[meta["segment"]]
            if f["__key__"] in wanted:
                yield f, lab, self._window(known, int(fids[0]), self.segments.get(meta["segment"])), d
            self._keep(known, d)

    def _keep(self, known: list[tuple[np.ndarray, ...]], d: dict[str, Any]) -> None:
        """A decoded clip's history rows, appended; clips that no window can reach any more, dropped."""
        fids = np.asarray(d["meta"]["frame_ids"], np.int64)
        curv = (np.zeros(len(fids), np.float32) if self.curv is None
                else np.nan_to_num(d["policy"][:, self.curv].astype(np.float32)))
        known.append((fids, np.nan_to_num(d["vision"][:, self.hidden]), d["desire"].astype(np.float32), curv))
        while sum(len(k[0]) for k in known[1:]) >= self.frames:
            known.pop(0)

    def _window(self, known: list[tuple[np.ndarray, ...]], first: int, segment: dict[str, Any] | None
                ) -> dict[str, np.ndarray]:
        n = self.frames
        want = np.arange(first - n, first)
        start = int(state_start(np.array([first]), segment)[0])
        hidden = np.zeros((n, self.hidden.stop - self.hidden.start), np.float16)
        desire = np.zeros((n, 8), np.float32)
        curv = np.zeros(n, np.float32)
        if known:
            fids = np.concatenate([k[0] for k in known])
            at = np.searchsorted(fids, want, side="right") - 1  # the newest frame at or before each id
            ok = (at >= 0) & (want >= start) & (fids[np.clip(at, 0, None)] >= start)
            rows = at[ok]
            hidden[ok] = np.concatenate([k[1] for k in known])[rows]
            desire[ok] = np.concatenate([k[2] for k in known])[rows]
            curv[ok] = np.concatenate([k[3] for k in known])[rows]
        return {"ctx_hidden": hidden, "ctx_desire": desire, "ctx_curv": curv}


class ClipStream(IterableDataset):
    """Batches of clips for one rank and one epoch; set `epoch` and `skip` (batches) before iterating."""

    def __init__(self, pairs: list[ShardPair], label_manifest: dict[str, Any], *, batch: int, clip_len: int,
                 burn_in: int, seed: int, process_rank: int = 0, world: int = 1, workers: int = 1, shuffle: int = 64,
                 train: bool = True, mask_warmup: bool = True, images: bool = True,
                 motions: dict[str, Any] | None = None, history: int = 0) -> None:
        self.pairs, self.batch, self.clip_len, self.burn_in = pairs, batch, clip_len, burn_in
        self.seed, self.process_rank, self.world, self.workers = seed, process_rank, world, workers
        self.shuffle, self.train, self.images = shuffle, train, images  # images=False: feature-cached training
        # labels of a segment's first 5 s come from start-up (zero) histories; short synthetic routes may keep them
        self.warmup = int(label_manifest["warmup_frames"]) if mask_warmup else 0
        self.segments = label_manifest["segments"]  # first frame and modeld restarts, per segment
        self.plan = slice(*label_manifest["output_slices"]["policy"]["plan"])  # NaN plan: a frame the log lacks
        self.widths = label_widths(label_manifest)
        self.motions = motions  # segment -> gt_path.SegmentMotion: batches carry the driven future path
        self.delays = DelayChoice.of_labels(label_manifest)  # each frame's delays, as the labels were made with
        # `history` > 0: each clip carries the history modeld had at its start (`History`; the openpilot student)
        self.history = History(history, label_manifest) if history else None
        self.epoch, self.skip = 0, 0

    def samples(self, pair: ShardPair) -> Iterator[tuple[dict, dict, dict | None, dict | None]]:
        """The pair's wanted clips in shard order, as `clip_arrays` takes them: (frames sample, labels sample,
        history arrays or None, the clip decoded without images or None)."""
        if self.history is None:
            return ((f, lab, None, None) for f, lab in read_lockstep(pair, images=self.images))
        at = next(i for i, p in enumerate(self.pairs) if p.name == pair.name)
        before = self.pairs[at - 1] if at > 0 else None  # the pairs are in the dataset's shard order
        return self.history.attach(read_lockstep(pair, images=self.images, every=True), set(pair.keys),
                                   None if before is None else lambda: read_lockstep(before, images=False, every=True))

    def _shards(self, epoch: int, process_rank: int, worker: int) -> list[ShardPair]:
        return deal_shards(self.pairs, seed=self.seed, epoch=epoch, process_rank=process_rank, world=self.world,
                           worker=worker, workers=self.workers, shuffle=self.train)

    def batches_per_worker(self, epoch: int) -> int:
        """Equal for every worker of every rank: the smallest share decides."""
        return smallest_share(self.pairs, seed=self.seed, epoch=epoch, world=self.world, workers=self.workers,
                              shuffle=self.train) // self.batch

    def __len__(self) -> int:
        return self.batches_per_worker(self.epoch) * self.workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        loader_worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.workers:
            raise DatasetError("ClipStream was built for a different number of DataLoader workers")
        n = self.batches_per_worker(self.epoch)
        # The DataLoader always starts with its worker 0, so after `skip` batches its worker d plays the role of
        # logical worker (skip + d) % W, whose first batch still to come is number (skip + d) // W.
        worker = (self.skip + loader_worker) % self.workers
        skip = (self.skip + loader_worker) // self.workers
        stream = self._ordered((s for pair in self._shards(self.epoch, self.process_rank, worker)
                                for s in self.samples(pair)), self.epoch, worker)
        pending: list[tuple[dict, dict, dict | None, dict | None]] = []
        done = 0
        if n == 0:  # some worker of some rank has less than a batch this epoch: nobody yields (equal steps)
            return
        for sample in stream:
            pending.append(sample)
            if len(pending) < self.batch:
                continue
            if done >= skip:
                yield self._collate(pending)
            pending, done = [], done + 1
            if done >= n:
                return

    def _ordered(self, items: Iterator[Any], epoch: int, worker: int) -> Iterator[Any]:
        """A logical worker's clips in the order it batches them: through the seeded shuffle buffer when training
        (the same order for samples and for their keys alone)."""
        if not self.train:
            return items
        rng = random.Random(f"{self.seed}:{epoch}:{self.process_rank}:{worker}")
        return shuffled(items, size=self.shuffle, rng=rng)

    def key_batches(self, epoch: int, skip: int = 0) -> Iterator[list[str]]:
        """The keys of the batches that iterating a loader over this stream yields for `epoch` after `skip`
        batches, in the same order (batch j is logical worker j % W's (j // W)-th), computed without reading a
        shard: what a cache of decoded clips (train/cache.py) replays."""
        n = self.batches_per_worker(epoch)
        local: dict[int, list[list[str]]] = {}
        for j in range(skip, n * self.workers):
            w = j % self.workers
            if w not in local:
                order = list(self._ordered((k for pair in self._shards(epoch, self.process_rank, w) for k in pair.keys),
                                           epoch, w))
                local[w] = [order[i * self.batch:(i + 1) * self.batch] for i in range(n)]
            yield local[w][j // self.workers]

    def _collate(self, samples: list[tuple[dict, dict, dict | None, dict | None]]) -> dict[str, torch.Tensor]:
        return stack_clips([self.clip_arrays(*sample) for sample in samples])

    def clip_arrays(self, f_raw: dict, l_raw: dict, history: dict[str, np.ndarray] | None = None,
                    decoded: dict[str, Any] | None = None) -> dict[str, Any]:
        """One clip of a batch, decoded, checked and padded to the clip length (`stack_clips` makes the batch);
        `history`: its `History` arrays, carried as they are; `decoded`: the clip already decoded without images
        (by `History`), used as it is where no image is wanted."""
        t = self.clip_len
        # images=False: frames never decompressed
        f = lab = (decoded if decoded is not None and not self.images
                   else decode_clip(f_raw, l_raw, images=self.images))
        n = len(f["meta"]["frame_ids"]) if isinstance(f.get("meta"), dict) else 0
        problems = check_frames_sample(f, None, images=self.images) + check_label_sample(lab, n, self.widths)
        if problems or n > t:
            raise DatasetError(f"sample {f_raw['__key__']}: {(problems or [f'{n} frames, clips hold {t}'])[0]}; "
                               "run spark-distill inspect --verify")
        fids = np.asarray(f["meta"]["frame_ids"])
        mask = np.zeros(t, bool)
        # frames within the warm-up of the segment or of a restart carry zero-history labels; burn-in frames warm
        # the student
        mask[:n] = past_warmup(fids, self.segments.get(f["meta"]["segment"]), self.warmup)
        mask[: self.burn_in] = False
        mask[:n] &= np.isfinite(lab["policy"][:, self.plan]).all(1)  # labels from a log can miss frames
        arrays = [(n, f[n]) for n in ("road", "wide") if self.images] + [
            # before a log's first carState: v_ego 0, as modeld reads it (and as the label pass fed the teacher)
            ("desire", f["desire"]), ("v_ego", np.nan_to_num(f["car"][:, 0], nan=0.0)), ("pose", f["pose"]),
            # each frame's [lateral, longitudinal] delay the label pass fed (the openpilot student takes them)
            ("delays", self.delays.per_frame(f["meta"])), ("vision", lab["vision"]),
            ("policy", lab["policy"])]
        if self.motions is not None:
            motion = self.motions[f["meta"]["segment"]]
            path, valid = motion.future(motion.rows_of(fids))
            arrays += [("gt_path", path), ("gt_valid", valid)]
        out: dict[str, Any] = {}
        for name, arr in arrays:
            padded = np.zeros((t, *arr.shape[1:]), arr.dtype)
            padded[:n] = arr
            out[name] = padded
        out["traffic"], out["mask"] = f["traffic"], mask
        if history is not None:
            out.update(history)
        out["start"] = f["meta"]["clip"] == 0  # its first frame is the segment's: histories start at zero
        out["key"] = f_raw["__key__"]
        return out


def stack_clips(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of `ClipStream.clip_arrays` clips: one tensor per array name, `start` and `keys`."""
    names = [k for k in clips[0] if k not in ("start", "key")]
    batch: dict[str, Any] = {k: torch.from_numpy(np.stack([c[k] for c in clips])) for k in names}
    batch["start"] = torch.tensor([c["start"] for c in clips])
    batch["keys"] = [c["key"] for c in clips]
    return batch


class _Loader(DataLoader):
    """A DataLoader whose worker errors read as the worker raised them: torch re-raises a worker's exception
    with the worker's traceback as its message; a SparkDistillError gets its own one-line message back."""

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from super().__iter__()
        except SparkDistillError as e:
            lines = str(e).strip().splitlines()
            if len(lines) < 2:
                raise
            raise type(e)(lines[-1].partition(": ")[2] or lines[-1]) from None


def worker_context() -> Any:
    """Where loader workers start: forked from a single-threaded fork server, not from the training process.
    A fork of the training process copies locks that its other threads (TensorBoard's event writer, the progress
    display, gloo, the pin-memory thread) may hold at that instant; a worker that then needs one waits forever,
    and the DataLoader with it. The server imports torch and this module once; each epoch's workers fork from it
    (~0.1 s, as cheap as forking the trainer) with nothing but the stream pickled to them."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__])
    return ctx


def make_loader(stream: IterableDataset, *, pin_memory: bool = False, workers: int | None = None) -> DataLoader:
    """A DataLoader over the stream's own batches (in order, round-robin over its workers; `workers`: that many
    instead of a ClipStream's own)."""
    workers = stream.workers if workers is None else workers
    workers = workers if workers > 1 else 0
    return _Loader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                   prefetch_factor=2 if workers else None, persistent_workers=False,
                   multiprocessing_context=worker_context() if workers else None,
                   worker_init_fn=functools.partial(_worker_start, environ=dict(os.environ)) if workers else None)


def _worker_start(_worker: int, environ: dict[str, str]) -> None:
    """A loader worker takes the trainer's environment as it is now: the fork server it comes from started with the
    environment of its own time (an earlier pass in the same process), and a dataset at a URL is fetched with the
    credentials, endpoint and cache the pass was given. (Handed over the DataLoader's pipe, never written down.)

    It also ignores Ctrl-C: the trainer stops at the end of its step and then shuts them down. A worker that died
    of the SIGINT sent to the whole process group left the trainer's next batch unreadable (its shared memory
    handle pointed at the dead worker: FileNotFoundError instead of a checkpoint and exit code 0)."""
    import signal

    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reuse_freed_memory()
