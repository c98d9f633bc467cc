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
import logging
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
from spark_distill.errors import ConfigError, DatasetError, LabelError
from spark_distill.label.backends import Backend, get_backend
from spark_distill.label.plan import ClipRef, SegmentPlan, ShardIndex, plan_segments
from spark_distill.label.state import ModeldState
from spark_distill.label.teachers import Teacher, load_teacher

log = logging.getLogger(__name__)
_CLIP_MEMBERS = ("road.npy.zst", "wide.npy.zst", "desire.npy.zst", "traffic.npy.zst", "car.npy.zst", "meta.json")
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
    workers: int = 4  # reader threads (tar reads + zstd decode)
    lat_delay: float = 0.2  # s, lateral_control_params[1] (v1 policies): liveDelay + smoothing on the car
    device: str | None = None

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


def _binding(frames_manifest: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": s["name"], "sha256": s["sha256"]} for s in frames_manifest["shards"]]


def _open_label_manifest(folder: Path, teacher: Teacher, backend: Backend, frames_manifest: dict[str, Any],
                         frames_sha: str, cfg: LabelConfig) -> dict[str, Any]:
    binding = _binding(frames_manifest)
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


@dataclass
class _Lane:
    """One segment being labeled: its clips, the clip in hand and the position in it."""

    plan: SegmentPlan
    clips: collections.deque  # (ClipRef, Future) in order
    clip: dict[str, Any] | None = None
    ref: ClipRef | None = None
    t: int = 0
    prev_fid: int | None = None
    restart_at: frozenset[str] = frozenset()  # clips that follow a skipped (corrupt) shard
    vision: np.ndarray | None = None
    policy: np.ndarray | None = None


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
        info = writer.close()
        done = {s["name"]: s for s in self.manifest["shards"]}
        done[name] = info.to_json()
        order = [s["name"] for s in self.frames_manifest["shards"]]
        self.manifest["shards"] = sorted(done.values(), key=lambda s: order.index(s["name"]))
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
    dev = backend.device
    b = cfg.batch
    state = ModeldState(b, history=teacher.history_len, device=dev, lat_delay=cfg.lat_delay)
    image_names = teacher.image_inputs  # input name -> camera
    vision_dtype = {n: teacher.vision.inputs[n][1] for n in image_names}
    policy_names = list(teacher.policy.inputs)
    hs = teacher.vision.slices["hidden_state"]
    curv = teacher.policy.slices.get("desired_curvature")
    indexes: dict[int, ShardIndex] = {}
    pool = cf.ThreadPoolExecutor(cfg.workers, thread_name_prefix="label-reader")

    def index(i: int) -> ShardIndex:
        if i not in indexes:
            indexes[i] = ShardIndex(fdir / frames_manifest["shards"][i]["name"], shards.FRAMES_MEMBERS)
        return indexes[i]

    def fetch(ref: ClipRef) -> dict[str, Any]:
        return index(ref.shard).read(ref.key, _CLIP_MEMBERS)

    queue = collections.deque(work)
    lanes: list[_Lane | None] = [None] * b
    pinned = dev.type == "cuda"
    host = {k: torch.zeros((b, 6, 128, 256), dtype=torch.uint8, pin_memory=pinned) for k in ("road", "wide")}
    desire = torch.zeros((b, C.DESIRE_LEN), pin_memory=pinned)
    traffic = torch.zeros((b, C.TRAFFIC_CONVENTION_LEN), pin_memory=pinned)
    v_ego = torch.zeros(b, pin_memory=pinned)
    # numpy views of the (pinned) host buffers: per-lane row copies without torch's indexing overhead
    host_np = {k: v.numpy() for k, v in host.items()}
    desire_np, traffic_np, v_ego_np = desire.numpy(), traffic.numpy(), v_ego.numpy()
    frames_done = 0
    segments_meta = manifest["segments"]

    def start(lane: int) -> None:
        while queue:
            plan = queue.popleft()
            refs = [c for c in plan.clips if c.shard not in bad]
            if not refs:
                continue
            restart = frozenset(c.key for prev, c in zip(plan.clips, plan.clips[1:], strict=False)
                                if prev.shard in bad and c.shard not in bad)
            lanes[lane] = _Lane(plan, collections.deque((r, pool.submit(fetch, r)) for r in refs[:1]),
                                restart_at=restart)
            lanes[lane].clips.extend((r, None) for r in refs[1:])
            state.reset(lane)
            segments_meta[plan.name] = {"resets": []}
            return
        lanes[lane] = None

    def next_clip(lane: _Lane) -> bool:
        if not lane.clips:
            return False
        ref, fut = lane.clips.popleft()
        lane.clip = fut.result() if fut is not None else fetch(ref)
        if lane.clips and lane.clips[0][1] is None:  # prefetch the clip after this one
            r, _ = lane.clips.popleft()
            lane.clips.appendleft((r, pool.submit(fetch, r)))
        if lane.clip["__key__"] != ref.key:
            raise DatasetError(f"expected sample {ref.key}, read {lane.clip['__key__']}")
        lane.ref, lane.t = ref, 0
        if ref.key in lane.restart_at:  # the clips before it were unreadable: start over, as at a segment start
            state.reset(lanes.index(lane))
            segments_meta[lane.plan.name]["resets"].append(lane.clip["meta"]["frame_ids"][0])
            lane.prev_fid = None
        n = len(lane.clip["meta"]["frame_ids"])
        lane.vision = np.zeros((n, teacher.vision.width), np.float16)
        lane.policy = np.zeros((n, teacher.policy.width), np.float16)
        return True

    try:
        for i in range(b):
            start(i)
        while any(lane is not None for lane in lanes):
            active = []
            for i, lane in enumerate(lanes):
                while lane is not None and (lane.clip is None or lane.t >= len(lane.vision)):
                    if lane.clip is not None:
                        writer.add(lane.ref, lane.vision, lane.policy)
                        lane.clip = None
                    if not next_clip(lane):
                        start(i)
                        lane = lanes[i]
                if lane is None:
                    continue
                active.append(i)
                clip, t = lane.clip, lane.t
                fid = clip["meta"]["frame_ids"][t]
                meta_seg = segments_meta[lane.plan.name]
                if lane.prev_fid is None:
                    meta_seg.setdefault("first_frame_id", fid)
                elif fid - lane.prev_fid > C.FULL_HISTORY_BUFFER_LEN:  # a hole longer than the history: restart
                    state.reset(i)
                    meta_seg["resets"].append(fid)
                elif fid - lane.prev_fid > 1:  # frames the encoder dropped
                    state.skip_frames(i, fid - lane.prev_fid - 1)
                lane.prev_fid = fid
                host_np["road"][i] = clip["road"][t]
                host_np["wide"][i] = clip["wide"][t]
                desire_np[i] = clip["desire"][t]
                traffic_np[i] = clip["traffic"]
                v = float(clip["car"][t, 0])
                v_ego_np[i] = v if np.isfinite(v) else 0.0
            if not active:
                break
            stacks = state.vision_inputs(host["road"].to(dev, non_blocking=True),
                                         host["wide"].to(dev, non_blocking=True))
            vin = {n: stacks[cam] if vision_dtype[n] == "uint8" else stacks[cam].float()
                   for n, cam in image_names.items()}
            vout = backend.vision(vin)
            state.push_features(vout[:, hs])
            state.push_desire(desire.to(dev, non_blocking=True))
            pout = backend.policy(state.policy_inputs(policy_names, traffic.to(dev, non_blocking=True),
                                                      v_ego.to(dev, non_blocking=True)))
            if curv is not None:
                state.push_curvature(pout[:, curv.start])  # the mean of desired_curvature
            vh = vout.to(torch.float16).cpu().numpy()
            ph = pout.to(torch.float16).cpu().numpy()
            for i in active:
                lane = lanes[i]
                lane.vision[lane.t], lane.policy[lane.t] = vh[i], ph[i]
                lane.t += 1
            frames_done += len(active)
            if on_progress is not None:
                on_progress(frames_done, total)
    finally:
        pool.shutdown(cancel_futures=True)
        for idx in indexes.values():
            idx.close()
    for lane in lanes:
        assert lane is None
    return frames_done
