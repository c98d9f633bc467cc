# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass: the teacher runs once over every frame, exactly as modeld runs on the car, and
writes `<root>/labels/<set>/` (same shard names, keys and order as `frames/`). Entry: `label(cfg)`.

B segments advance in lockstep (one lane each, each with its own modeld state, reset at the
segment's first frame), so the accelerator sees batches of B frames. Reader threads fetch and
decompress clips ahead of the lanes; a writer thread compresses and writes each label shard once
all its clips are labeled, then the manifest is rewritten atomically. Resumable per shard: a rerun
skips finished shards and relabels, from their first frame, only segments with unfinished clips.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spark_distill import __version__, shards
from spark_distill import contract as C
from spark_distill.dataset import frames_dir
from spark_distill.errors import ConfigError, LabelError
from spark_distill.label.backends import Backend, get_backend
from spark_distill.label.lanes import LaneRunner
from spark_distill.label.plan import ClipRef, SegmentPlan, ShardIndex, frames_binding, plan_segments
from spark_distill.label.teachers import Teacher, load_teacher

log = logging.getLogger(__name__)
_CLIP_MEMBERS = (*shards.camera_members(), "desire.npy.zst", "traffic.npy.zst", "car.npy.zst", "meta.json")
WARMUP_FRAMES = C.FULL_HISTORY_BUFFER_LEN  # frames whose history still holds start-up zeros


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """Options of `spark-distill label`."""

    root: Path
    teacher: tuple[Path, ...]
    name: str | None = None  # default: <teacher folder>-<first 8 hex of the teacher hash>
    backend: str = "auto"
    precision: str = "auto"  # fp16 on GPUs, fp32 on the CPU
    batch: int = 8  # segments in lockstep; a GPU wants 64-256, the CPU reference 4-16
    workers: int = 8  # reader threads (tar reads + zstd decode); a GPU at full speed wants 12+
    lat_delay: float = 0.2  # s, lateral_control_params[1] (v1 policies): liveDelay + smoothing on the car
    device: str | None = None
    rank: int = 0  # this process among `world` (torchrun): segments are split across ranks, never a segment
    world: int = 1
    init_method: str | None = None  # torch.distributed init URL when world > 1 ("env://" under torchrun)

    def __post_init__(self) -> None:
        if self.batch < 1 or self.workers < 1:
            raise ConfigError("--batch and --workers must be >= 1")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name {self.name!r} is not a usable folder name")


@dataclass
class LabelResult:
    folder: Path
    frames: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    shards_already: int = 0
    skipped_shards: list[str] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def _open_label_manifest(folder: Path, teacher: Teacher, backend: Backend, frames_manifest: dict[str, Any],
                         frames_sha: str, cfg: LabelConfig) -> dict[str, Any]:
    binding = frames_binding(frames_manifest)
    if (folder / shards.MANIFEST).exists():
        m = shards.read_manifest(folder, shards.LABELS_FORMAT)
        if m["frames_shards"] != binding[: len(m["frames_shards"])]:
            raise LabelError(f"label set {folder.name} is bound to another frames dataset "
                             f"(frames manifest {m['frames_manifest_sha256'][:12]}…); use --name for a new set")
        if m["teacher"]["sha256"] != teacher.sha256:
            raise LabelError(f"label set {folder.name} was made by another teacher "
                             f"({m['teacher']['sha256'][:12]}…); use --name for a new set")
        if (m["backend"]["name"], m["precision"]) != (backend.name, backend.precision):
            raise LabelError(f"label set {folder.name} was made with {m['backend']['name']} {m['precision']}, not "
                             f"{backend.name} {backend.precision}; use --name for a new set")
        m["frames_shards"], m["frames_manifest_sha256"] = binding, frames_sha
        return m
    return {"format": shards.LABELS_FORMAT, "version": shards.FORMAT_VERSION, "tool": f"spark-distill {__version__}",
            "name": folder.name, "frames_manifest_sha256": frames_sha, "frames_shards": binding,
            "teacher": teacher.describe(), "output_slices": teacher.output_slices(), "backend": backend.describe(),
            "precision": backend.precision, "batch": cfg.batch, "lat_delay": cfg.lat_delay,
            "history": {"temporal_skip": C.TEMPORAL_SKIP, "features": teacher.history_len,
                        "full_buffer": C.FULL_HISTORY_BUFFER_LEN},
            "warmup_frames": WARMUP_FRAMES, "segments": {}, "shards": [], "skipped_shards": [], "throughput": {}}


def record_shard(manifest: dict[str, Any], frames_manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """Add (or replace) a written label shard in the manifest, keeping the frames manifest's shard order."""
    done = {s["name"]: s for s in manifest["shards"]}
    done[entry["name"]] = entry
    order = {s["name"]: i for i, s in enumerate(frames_manifest["shards"])}
    manifest["shards"] = sorted(done.values(), key=lambda s: order[s["name"]])


class _Writer:
    """Collects labeled clips per shard and writes a shard once it is complete (on a writer thread)."""

    def __init__(self, folder: Path, frames_manifest: dict[str, Any], todo: set[int], manifest: dict[str, Any],
                 expected: dict[int, list[str]]) -> None:
        self.folder, self.frames_manifest, self.todo, self.manifest = folder, frames_manifest, todo, manifest
        self.expected = expected
        self.pending: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = collections.defaultdict(dict)
        self.pool = cf.ThreadPoolExecutor(1, thread_name_prefix="label-writer")
        self.futures: list[cf.Future] = []
        self.written = 0

    def add(self, ref: ClipRef, vision: np.ndarray, policy: np.ndarray) -> None:
        if ref.shard not in self.todo:
            return  # finished in an earlier run
        got = self.pending[ref.shard]
        got[ref.key] = (vision, policy)
        if len(got) == len(self.expected[ref.shard]):
            self.futures.append(self.pool.submit(self._write, ref.shard, self.pending.pop(ref.shard)))

    def _write(self, shard: int, clips: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        name = self.frames_manifest["shards"][shard]["name"]
        writer = shards.ShardWriter(self.folder, name, shards.LABEL_MEMBERS)
        try:
            for key in self.expected[shard]:  # same keys, same order as the frames shard
                vision, policy = clips[key]
                writer.write({"__key__": key, "vision.npy.zst": shards.encode_array(vision),
                              "policy.npy.zst": shards.encode_array(policy)}, frames=len(vision))
        except BaseException:
            writer.abort()
            raise
        record_shard(self.manifest, self.frames_manifest, writer.close().to_json())
        shards.write_json_atomic(self.folder / shards.MANIFEST, self.manifest)
        self.written += 1

    def close(self) -> None:
        for f in self.futures:
            f.result()  # re-raise a writer failure here
        self.pool.shutdown()


def _verify_frames(folder: Path, frames_manifest: dict[str, Any], needed: set[int], workers: int) -> set[int]:
    """Indices of needed frames shards whose sha256 does not match the manifest (reported, never labeled)."""
    entries = frames_manifest["shards"]

    def bad(i: int) -> bool:
        path = folder / entries[i]["name"]
        return not path.exists() or shards.sha256_file(path) != entries[i]["sha256"]

    with cf.ThreadPoolExecutor(workers) as pool:
        return {i for i, b in zip(sorted(needed), pool.map(bad, sorted(needed)), strict=True) if b}


def label(cfg: LabelConfig, *, on_progress: Callable[[int, int], None] | None = None) -> LabelResult:
    """Run the label pass."""
    fdir = frames_dir(cfg.root)
    frames_manifest = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    frames_sha = shards.sha256_file(fdir / shards.MANIFEST)
    plans = plan_segments(frames_manifest)
    teacher, vision_model, policy_model = load_teacher(list(cfg.teacher))
    backend = get_backend(cfg.backend, teacher, vision_model, policy_model, batch=cfg.batch,
                          precision=cfg.precision, device=cfg.device, cache_dir=cfg.root / "labels" / ".engines")
    name = cfg.name or f"{teacher.name}-{teacher.sha256[:8]}"
    folder = cfg.root / "labels" / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _open_label_manifest(folder, teacher, backend, frames_manifest, frames_sha, cfg)
    for p in folder.glob("*.tmp"):
        p.unlink()
    done_names = {s["name"] for s in manifest["shards"]}
    all_shards = range(len(frames_manifest["shards"]))
    todo = {i for i in all_shards if frames_manifest["shards"][i]["name"] not in done_names}
    result = LabelResult(folder, shards_already=len(all_shards) - len(todo), backend=backend.describe())
    work = [p for p in plans if any(c.shard in todo for c in p.clips)]
    bad = _verify_frames(fdir, frames_manifest, {c.shard for p in work for c in p.clips}, cfg.workers)
    for i in sorted(bad):
        name_i = frames_manifest["shards"][i]["name"]
        log.warning("frames shard %s fails its sha256 check; skipped, not labeled", name_i)
        result.skipped_shards.append(name_i)
    manifest["skipped_shards"] = result.skipped_shards
    todo -= bad
    expected: dict[int, list[str]] = collections.defaultdict(list)
    for p in plans:
        for c in p.clips:
            expected[c.shard].append(c.key)
    if cfg.world > 1:
        return _label_ranks(cfg, teacher, backend, fdir, frames_manifest, folder, manifest, work, bad, todo,
                            expected, result, on_progress)
    total = sum(frames_manifest["shards"][i]["frames"] for i in {c.shard for p in work for c in p.clips} - bad)
    writer = _Writer(folder, frames_manifest, todo, manifest, expected)
    start = time.perf_counter()
    try:
        result.frames = _run_lanes(cfg, teacher, backend, fdir, frames_manifest, work, bad, writer, manifest,
                                   total, on_progress)
    finally:
        writer.close()
    result.seconds = time.perf_counter() - start
    result.shards_written = writer.written
    if result.frames:
        manifest["throughput"] = {"frames": result.frames, "seconds": round(result.seconds, 3),
                                  "frames_per_s": round(result.frames_per_s, 1), "batch": cfg.batch}
    shards.write_json_atomic(folder / shards.MANIFEST, manifest)
    return result


def _run_lanes(cfg: LabelConfig, teacher: Teacher, backend: Backend, fdir: Path, frames_manifest: dict[str, Any],
               work: list[SegmentPlan], bad: set[int], writer: _Writer, manifest: dict[str, Any], total: int,
               on_progress: Callable[[int, int], None] | None) -> int:
    indexes: dict[int, ShardIndex] = {}
    lock = threading.Lock()
    pin = backend.device.type == "cuda"

    def fetch(ref: ClipRef) -> dict[str, Any]:
        """Read and decode one clip (on a reader thread); on a GPU, frames land in pinned memory so the
        main thread's host-to-device copies are asynchronous."""
        with lock:
            if ref.shard not in indexes:
                indexes[ref.shard] = ShardIndex(fdir / frames_manifest["shards"][ref.shard]["name"],
                                                shards.FRAMES_MEMBERS)
            idx = indexes[ref.shard]
        clip = idx.read(ref.key, _CLIP_MEMBERS)
        if pin:
            for cam in ("road", "wide"):
                pinned = torch.empty(clip[cam].shape, dtype=torch.uint8, pin_memory=True)
                np.copyto(pinned.numpy(), clip[cam])
                clip[cam] = pinned
        return clip

    pool = cf.ThreadPoolExecutor(cfg.workers, thread_name_prefix="label-reader")
    runner = LaneRunner(teacher=teacher, backend=backend, batch=cfg.batch,
                        clip_len=int(frames_manifest["settings"]["clip_len"]), lat_delay=cfg.lat_delay,
                        fetch=fetch, pool=pool, emit=writer.add, segments_meta=manifest["segments"])
    try:
        return runner.run(work, bad, None if on_progress is None else lambda n: on_progress(n, total))
    finally:
        pool.shutdown(cancel_futures=True)
        for idx in indexes.values():
            idx.close()


def assign_segments(work: list[SegmentPlan], frames_manifest: dict[str, Any], world: int) -> list[list[SegmentPlan]]:
    """Whole segments to ranks, balanced by frames (largest first onto the least loaded; ties by rank)."""
    per_clip = {s["name"]: s["frames_kept"] / max(1, s["clips"]) for s in frames_manifest["segments"]}
    load, out = [0.0] * world, [[] for _ in range(world)]
    for plan in sorted(work, key=lambda p: (-len(p.clips) * per_clip.get(p.name, 1.0), p.name)):
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(plan)
        load[r] += len(plan.clips) * per_clip.get(plan.name, 1.0)
    order = {p.name: i for i, p in enumerate(work)}
    return [sorted(ws, key=lambda p: order[p.name]) for ws in out]


def _label_ranks(cfg: LabelConfig, teacher: Teacher, backend: Backend, fdir: Path, frames_manifest: dict[str, Any],
                 folder: Path, manifest: dict[str, Any], work: list[SegmentPlan], bad: set[int], todo: set[int],
                 expected: dict[int, list[str]], result: LabelResult,
                 on_progress: Callable[[int, int], None] | None) -> LabelResult:
    """One rank of a multi-process label pass: label this rank's segments into part shards under
    `.parts/rank-R/`, then rank 0 assembles every final shard from the parts (same keys, same order, the
    same encoded bytes a single process writes) and writes the manifest once."""
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", init_method=cfg.init_method, rank=cfg.rank, world_size=cfg.world)
    try:
        mine = assign_segments(work, frames_manifest, cfg.world)[cfg.rank]
        parts = folder / ".parts" / f"rank-{cfg.rank}"
        if parts.exists():
            shutil.rmtree(parts)  # left by an interrupted run: recomputed
        parts.mkdir(parents=True)
        my_expected: dict[int, list[str]] = collections.defaultdict(list)
        my_keys = {c.key for p in mine for c in p.clips}
        for shard, keys in expected.items():
            my_expected[shard] = [k for k in keys if k in my_keys]
        my_todo = {i for i in todo if my_expected.get(i)}
        part_manifest: dict[str, Any] = {"shards": [], "segments": {}}
        writer = _Writer(parts, frames_manifest, my_todo, part_manifest, my_expected)
        total = sum(len(p.clips) for p in mine) * int(frames_manifest["settings"]["clip_len"])
        start = time.perf_counter()
        try:
            result.frames = _run_lanes(cfg, teacher, backend, fdir, frames_manifest, mine, bad, writer,
                                       part_manifest, total, on_progress)
        finally:
            writer.close()
        shards.write_json_atomic(parts / "rank.json", {"segments": part_manifest["segments"], "frames": result.frames,
                                                       "seconds": time.perf_counter() - start})
        dist.barrier()
        if cfg.rank == 0:
            result.shards_written = _assemble(folder, frames_manifest, manifest, todo, expected, cfg.world)
            ranks = [json.loads((folder / ".parts" / f"rank-{r}" / "rank.json").read_text())
                     for r in range(cfg.world)]
            for r in ranks:
                manifest["segments"].update(r["segments"])
            frames, seconds = sum(r["frames"] for r in ranks), max(r["seconds"] for r in ranks)
            result.frames, result.seconds = frames, seconds
            if frames:
                manifest["throughput"] = {"frames": frames, "seconds": round(seconds, 3),
                                          "frames_per_s": round(frames / seconds, 1), "batch": cfg.batch,
                                          "ranks": cfg.world}
            shards.write_json_atomic(folder / shards.MANIFEST, manifest)
            shutil.rmtree(folder / ".parts")
        dist.barrier()
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def _assemble(folder: Path, frames_manifest: dict[str, Any], manifest: dict[str, Any], todo: set[int],
              expected: dict[int, list[str]], world: int) -> int:
    """Final label shards from the ranks' part shards; returns how many were written."""
    written = 0
    for i in sorted(todo):
        name = frames_manifest["shards"][i]["name"]
        samples: dict[str, dict[str, Any]] = {}
        for r in range(world):
            part = folder / ".parts" / f"rank-{r}" / name
            if part.exists():
                for sample in shards.iter_shard(part, shards.LABEL_MEMBERS):
                    samples[sample["__key__"]] = sample
        if set(samples) != set(expected[i]):
            raise LabelError(f"{name}: the ranks labeled {len(samples)} of its {len(expected[i])} clips")
        writer = shards.ShardWriter(folder, name, shards.LABEL_MEMBERS)
        try:
            for key in expected[i]:
                s = samples[key]
                writer.write({"__key__": key, **{m: s[m] for m in shards.LABEL_MEMBERS}},
                             frames=len(shards.decode_array(s["policy.npy.zst"])))
        except BaseException:
            writer.abort()
            raise
        record_shard(manifest, frames_manifest, writer.close().to_json())
        written += 1
    return written
