# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass: the teacher runs once over every frame, exactly as modeld runs on the car, and
writes `<root>/labels/<set>/` (same shard names, keys and order as `frames/`). Entry: `label(cfg)`.

B segments advance in lockstep (one batch row each, each with its own modeld state, reset at the
segment's first frame), so the accelerator sees batches of B frames (loop.py). Reader processes
read and decompress clips ahead of the rows into a shared slab (workers.py); writer processes
compress and write each label shard once all its clips are labeled, and the main process records
it in the manifest (rewritten atomically every few seconds and at the end). Resumable per shard: a
rerun skips finished shards (recorded in the manifest and matching their sha256: a missing or damaged one is
labeled again) and relabels, from their first frame, only segments with unfinished
clips. An interruption (Ctrl-C, a dead reader) stops every worker process, records the shards
already written and leaves no partial shard.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_distill import __version__
from spark_distill.data import arrays, files, shards, store
from spark_distill.data.dataset import frames_dir
from spark_distill.data.index import ClipRef, SegmentPlan, frames_binding, plan_segments
from spark_distill.errors import ConfigError, LabelError
from spark_distill.label.backends import Backend, auto_backend, get_backend
from spark_distill.label.loop import LabelLoop
from spark_distill.label.schedule import reader_slots
from spark_distill.label.workers import ClipReaders, LabelWriters
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.delays import summary as delays_summary
from spark_distill.openpilot.releases import ACTION_T_FRAMES, DT_MDL
from spark_distill.openpilot.state import action_t
from spark_distill.openpilot.teachers import Teacher, load_teacher
from spark_distill.processes import on_gpu, process_group, worker_budget

log = logging.getLogger(__name__)
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
    workers: int = 0  # reader processes (tar reads + zstd decode); 0: auto (processes.worker_budget: 14 on a 16-core
    # GPU box, which a GPU at full speed needs; 2 on a CPU, where the teacher needs the cores)
    compile: str = "auto"  # torch backend: torch.compile the teacher (auto: on a GPU, where it ran 2x faster)
    # s: lateral_control_params[1] and action_t[0] - 1.5 DT_MDL; None: each segment's own from its log (liveDelay,
    # else carParams.steerActuatorDelay + 0.2, else DEFAULT_LAT_DELAY: ingest/delays.py) plus the release's smoothing
    # seconds (Layout.smooth), a value: fed as it is to every segment
    lat_delay: float | None = None
    long_delay: float | None = None  # s: action_t[1] - 1.5 DT_MDL; None: carParams', else DEFAULT_LONG_DELAY, + smooth
    device: str | None = None
    process_rank: int = 0  # this process among `world` (torchrun): segments are split across ranks, never a segment
    world: int = 1
    init_method: str | None = None  # torch.distributed init URL when world > 1 ("env://" under torchrun)

    def __post_init__(self) -> None:
        if self.batch < 1 or self.workers < 0:
            raise ConfigError("--batch must be >= 1 and --workers >= 0 (0: auto)")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name {self.name!r} is not a usable folder name")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile {self.compile!r}: choose auto, on or off")
        for flag, value in (("--lat-delay", self.lat_delay), ("--long-delay", self.long_delay)):
            if value is not None and not 0.0 <= value <= 2.0:
                raise ConfigError(f"{flag} {value}: a delay in seconds, 0 to 2")

    def delays(self, smooth: tuple[float, float] = (0.0, 0.0)) -> DelayChoice:
        """The delays this pass feeds, with the teacher's layout's smoothing seconds `smooth`."""
        return DelayChoice(self.lat_delay, self.long_delay, smooth)


@dataclass
class LabelResult:
    folder: Path
    frames: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    shards_already: int = 0
    skipped_shards: list[str] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)  # LabelLoop.report: seconds per step by stage
    delays: str = ""  # the delays fed, by source over the dataset's segments (openpilot.delays.summary)

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
        made = (m.get("lat_delay"), m.get("long_delay"))
        if made != (cfg.lat_delay, cfg.long_delay):
            raise LabelError(f"label set {folder.name} was made with {_delays_text(*made)}, not "
                             f"{_delays_text(cfg.lat_delay, cfg.long_delay)}; use --name for a new set")
        made_smooth = DelayChoice.of_labels(m).smooth
        if made_smooth != teacher.layout.smooth:
            raise LabelError(f"label set {folder.name} was made adding {made_smooth} s to the logs' delays, this "
                             f"version adds {teacher.layout.smooth} s for {teacher.layout.releases} (its modeld's "
                             "smoothing seconds); use --name for a new set")
        if (m["backend"]["name"], m["precision"]) != (backend.name, backend.precision):
            raise LabelError(f"label set {folder.name} was made with {m['backend']['name']} {m['precision']}, not "
                             f"{backend.name} {backend.precision}; use --name for a new set")
        m["frames_shards"], m["frames_manifest_sha256"] = binding, frames_sha
        return m
    return {"format": shards.LABELS_FORMAT, "version": shards.FORMAT_VERSION, "tool": f"spark-distill {__version__}",
            "name": folder.name, "frames_manifest_sha256": frames_sha, "frames_shards": binding,
            "teacher": teacher.describe(), "output_slices": teacher.output_slices(), "backend": backend.describe(),
            "precision": backend.precision, "batch": cfg.batch, "lat_delay": cfg.lat_delay,
            "long_delay": cfg.long_delay, "smooth_seconds": list(teacher.layout.smooth), "layout": teacher.layout.key,
            "loop": loop_description(teacher, cfg),
            "widths": teacher.widths, "member_columns": teacher.member_columns(),
            "history": {"temporal_skip": teacher.layout.history.pair_skip, "features": teacher.history_len,
                        "full_buffer": teacher.layout.history.full},
            "warmup_frames": WARMUP_FRAMES, "segments": {}, "shards": [], "skipped_shards": [], "throughput": {}}


def _delays_text(lat: float | None, long: float | None) -> str:
    """How a label pass's delay overrides read in a message."""
    lat_text = f"--lat-delay {lat}" if lat is not None else "the logs' lateral delays"
    return lat_text + (f" and --long-delay {long}" if long is not None else " and the logs' longitudinal delays")


def segment_delays(frames_manifest: dict[str, Any], cfg: LabelConfig) -> dict[str, dict[str, Any]]:
    """Segment name -> the delays a pass with `cfg` feeds it and where they come from (the manifest's record)."""
    return {s["name"]: cfg.delays().record(s) for s in frames_manifest["segments"]}


def loop_description(teacher: Teacher, cfg: LabelConfig) -> dict[str, Any]:
    """The modeld loop a label set was made with: the layout's history semantics and the values fed."""
    h = teacher.layout.history
    fed: dict[str, Any] = {}
    per_segment = "each segment's, from its log (segments.<name>.delays)"
    if any(teacher.layout.smooth):
        per_segment += f", plus the release's smoothing seconds {list(teacher.layout.smooth)} (smooth_seconds)"
    if teacher.layout.lateral_params:
        fed["lateral_control_params"] = ["max(v_ego, 0)", cfg.lat_delay if cfg.lat_delay is not None else per_segment]
    if teacher.layout.action_t:
        fed["action_t"] = (action_t(cfg.lat_delay, cfg.long_delay)
                           if cfg.lat_delay is not None and cfg.long_delay is not None
                           else f"[lat_delay, long_delay] + {ACTION_T_FRAMES * DT_MDL:g} s, {per_segment}")
    if h.prev_curv != "absent":
        fed["prev_desired_curv"] = "own previous outputs" if h.prev_curv == "own" else "zeros"
    return {"topology": teacher.layout.topology, "image_pair": [-h.pair_skip, 0],
            "features_buffer": {"entries": h.features, "every": h.stride, "includes_current": h.includes_current},
            "desire": {"entries": h.desire, "max_pooled_over": h.stride}, "inputs_fed": fed}


def record_shard(manifest: dict[str, Any], frames_manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """Add (or replace) a written label shard in the manifest, keeping the frames manifest's shard order."""
    done = {s["name"]: s for s in manifest["shards"]}
    done[entry["name"]] = entry
    order = {s["name"]: i for i, s in enumerate(frames_manifest["shards"])}
    manifest["shards"] = sorted(done.values(), key=lambda s: order[s["name"]])


WRITERS = 4  # label shard writer processes, at least
FRAMES_VERIFIED = ".frames-verified.json"  # under labels/: frames shards this dataset's label passes have checked
MANIFEST_EVERY_S = 2.0  # label manifest rewrites while labeling (each is an fsync on the main process)
COMPILE_S = "set-up: compile the step (counted with the teacher's build) s"  # profile key, outside end to end
FILL_S = "set-up: the lanes' first clips on the device s"  # profile key (the rows' first clips; the bench prints it)


def writer_count(readers: int) -> int:
    """Label shard writers for a pass with `readers` reader processes: at least WRITERS, and half as many as the
    readers where there are more. At a pass's end every row's last clip finishes at once and each writer
    compresses its share and writes (and fsyncs) its shards one by one while the readers sit idle: on the H200
    (14 readers, batch 256, bench set) that drain was ~0.4 s of the pass's 2.4 s with 4 writers."""
    return max(WRITERS, readers // 2)


class _Writer:
    """Hands labeled clips (rows of the writers' output slab) to the writer processes, which write each shard once
    it has all its clips; the main process records a shard in the manifest once it is on disk (`poll`, `close`)."""

    def __init__(self, folder: Path, frames_manifest: dict[str, Any], todo: set[int], manifest: dict[str, Any],
                 expected: dict[int, list[str]], writers: LabelWriters) -> None:
        self.folder, self.frames_manifest, self.todo, self.manifest = folder, frames_manifest, todo, manifest
        self.expected = expected
        self.writers = writers  # _Workers' writer processes
        self.written = 0
        self.seconds = 0.0  # in the writer processes
        self.unsaved, self.saved_at = False, -MANIFEST_EVERY_S

    def add(self, ref: ClipRef, row: int, frames: int) -> None:
        if ref.shard not in self.todo:  # finished in an earlier run
            self.writers.free(row)
            return
        self.writers.put(ref.shard, ref.key, row, frames, folder=self.folder,
                         name=self.frames_manifest["shards"][ref.shard]["name"], keys=self.expected[ref.shard])
        self.poll()

    def poll(self, *, wait: bool = False) -> None:
        """Record the shards the writers have finished (all of them with `wait`); a writer's failure is raised."""
        for shard in self.writers.take_written(wait=wait):
            record_shard(self.manifest, self.frames_manifest, shard.info)
            self.written += 1
            self.seconds += shard.seconds
            self.unsaved = True
        # the manifest (written and fsynced) at most every few seconds while labeling, and always at the end:
        # a shard on disk but not yet recorded is only labeled again by a resumed run
        if self.unsaved and (wait or time.monotonic() - self.saved_at >= MANIFEST_EVERY_S):
            shards.write_manifest(self.folder, self.manifest)
            self.unsaved, self.saved_at = False, time.monotonic()

    def close(self, *, ok: bool = True) -> None:
        """Finish (`ok`) or, after a failure or Ctrl-C, stop the writers, record what is already on disk and drop
        the rest (shards still missing clips were never started)."""
        if not ok:
            self.writers.stop()  # what they still owe is dropped: waiting below takes only what they wrote
        self.poll(wait=True)


class _Workers:
    """The pass's worker processes, started before the teacher is built so that their start-up (a spawned
    interpreter and its imports each, the slabs' pages) overlaps it: reader processes feeding the rows
    (workers.ClipReaders) and the label shard writers (workers.LabelWriters: each shard ends in an fsync, and at
    the end of a pass many shards finish at once, so there are a few)."""

    def __init__(self, cfg: LabelConfig, fdir: Path, frames_manifest: dict[str, Any], teacher: Teacher) -> None:
        self.readers: ClipReaders | None = None
        clip_len, pin = int(frames_manifest["settings"]["clip_len"]), _accelerated(cfg)
        # output rows for two batches of finished clips: one with the writers, the next landing
        self.writers = LabelWriters(workers=writer_count(cfg.workers), rows=2 * cfg.batch + 16, clip_len=clip_len,
                                    width_v=teacher.widths["vision"], width_p=teacher.widths["policy"], pin=pin)
        try:
            self.readers = ClipReaders([fdir / s["name"] for s in frames_manifest["shards"]], workers=cfg.workers,
                                       slots=reader_slots(cfg.batch, cfg.workers, accelerated=pin),
                                       clip_len=clip_len, pin=pin)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.readers is not None:
            self.readers.close()
        self.writers.close()


def _unrecorded(frames_manifest: dict[str, Any], recorded: set[str]) -> set[int]:
    """The frames shards (indexes) whose label shard is not among `recorded` (names)."""
    return {i for i, s in enumerate(frames_manifest["shards"]) if s["name"] not in recorded}


def _touching(plans: list[SegmentPlan], shard_ids: set[int]) -> list[SegmentPlan]:
    """The segments with a clip in one of `shard_ids`."""
    return [p for p in plans if any(c.shard in shard_ids for c in p.clips)]


def _first_clips(cfg: LabelConfig, work: list[SegmentPlan], frames_manifest: dict[str, Any]) -> list[ClipRef]:
    """The first clip of each segment of `work` the rows will take first: decoded while the teacher is built,
    where the loop's first step waited for them (H200, batch 256: 3.0 ms per step of the 120 steps of the bench
    set, with the GPU idle)."""
    if cfg.world > 1:
        work = assign_segments(work, frames_manifest, cfg.world)[cfg.process_rank]
    return [p.clips[0] for p in work[: cfg.batch]]


def _recorded_shards(folder: Path, *, record: bool) -> tuple[set[str], set[str]]:
    """(names of the shards an existing label manifest records, those of them whose file is there and matches its
    sha256); empty where there is no manifest or it is unreadable: `_open_label_manifest` is the one that judges
    it. A recorded shard that is missing or damaged is labeled again. `record`: remember the shards found intact
    (one rank of several writes the record)."""
    try:
        entries = json.loads((folder / shards.MANIFEST).read_bytes())["shards"]
        recorded = {e["name"] for e in entries}
    except (OSError, ValueError, KeyError, TypeError):
        return set(), set()
    intact = shards.intact_shards(folder, entries, record=record)
    for name in sorted(recorded - intact) if record else ():
        log.warning("label shard %s is missing or fails its sha256 check; labeling it again", name)
    return recorded, intact


class _Verifier:
    """sha256 checks of frames shards in threads (hashlib releases the GIL), started before the teacher is built
    so that they overlap its compile and capture; `bad(needed)` waits for the needed ones, drops the rest."""

    def __init__(self, folder: Path, frames_manifest: dict[str, Any], shard_ids: set[int], workers: int, *,
                 record: Path | None) -> None:
        self.folder, self.entries, self.record = folder, frames_manifest["shards"], record
        # shards checked before (hashed as ingest wrote them, or by an earlier label pass: its record lives under
        # labels/, the frames folder is never written) whose files have not changed since are not read again
        known = shards.verified_unchanged(folder, [self.entries[i] for i in shard_ids],
                                          (folder / shards.VERIFIED, *([record] if record else [])))
        self.known = {i for i in shard_ids if self.entries[i]["name"] in known}
        self.shard_ids = shard_ids
        self.pool = cf.ThreadPoolExecutor(workers)
        self.futures = {i: self.pool.submit(self._bad, i) for i in sorted(shard_ids - self.known)}

    def _bad(self, i: int) -> bool:
        entry = self.entries[i]
        path = self.folder / entry["name"]
        if not path.exists() and store.remote_intact(self.folder, [entry]):
            return False  # on a remote root: its sha256 is checked as it is fetched (data/store.py)
        return not path.exists() or files.sha256_file(path) != entry["sha256"]

    def bad(self, needed: set[int]) -> set[int]:
        """Indices of needed frames shards whose sha256 does not match the manifest (reported, never labeled)."""
        for i, f in self.futures.items():
            if i not in needed:
                f.cancel()
        try:
            checked = {i: (self.futures[i] if i in self.futures else self.pool.submit(self._bad, i)).result()
                       for i in sorted(needed - self.known)}
        finally:
            self.close()
        if self.record is not None:
            shards.record_verified(self.record, self.folder, [self.entries[i] for i, b in checked.items() if not b])
        return {i for i, b in checked.items() if b}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def nothing_labeled(root: Path, bad: int) -> str:
    """The one line of a label pass whose every frames shard failed its sha256 check."""
    every = "the frames shard" if bad == 1 else f"every frames shard ({bad})"
    return (f"{every} failed its sha256 check (changed on disk since ingest): nothing was labeled and no label set "
            f"written; `spark-distill inspect {shlex.quote(str(root))} --verify` names the damaged shards; ingest "
            "their routes again into a new --out and label that")


def _accelerated(cfg: LabelConfig) -> bool:
    """Whether the teacher will run on a GPU (what sizes the default number of reader processes)."""
    backend = auto_backend() if cfg.backend == "auto" else cfg.backend
    return backend != "onnxruntime" and on_gpu(cfg.device)


def label(cfg: LabelConfig, *, on_progress: Callable[[int, int], None] | None = None) -> LabelResult:
    """Run the label pass."""
    if cfg.workers == 0:
        cfg = dataclasses.replace(cfg, workers=worker_budget(accelerator=_accelerated(cfg)))
    fdir = frames_dir(cfg.root)
    frames_manifest = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    frames_sha = files.sha256_file(fdir / shards.MANIFEST)
    plans = plan_segments(frames_manifest)
    teacher, vision_model, policy_model = load_teacher(list(cfg.teacher))
    name = cfg.name or f"{teacher.name}-{teacher.sha256[:8]}"
    folder = cfg.root / "labels" / name
    # a first look at what is left, to check only that while the teacher builds
    _, intact = _recorded_shards(folder, record=cfg.process_rank == 0)
    left_shards = _unrecorded(frames_manifest, intact)
    left = _touching(plans, left_shards)
    if 0 < len(left) < cfg.batch:  # fewer segments than rows: an idle row costs as much compute as a busy one
        cfg = dataclasses.replace(cfg, batch=len(left))
    verifier = _Verifier(fdir, frames_manifest, {c.shard for p in left for c in p.clips} & left_shards,
                         cfg.workers, record=cfg.root / "labels" / FRAMES_VERIFIED if cfg.process_rank == 0 else None)
    workers = None
    try:
        if verifier.shard_ids:  # something left to label: the worker processes start while the teacher builds
            workers = _Workers(cfg, fdir, frames_manifest, teacher)
            workers.readers.prefetch(_first_clips(cfg, left, frames_manifest))
        return _label(cfg, fdir, frames_manifest, frames_sha, plans, teacher, vision_model, policy_model, folder,
                      verifier, workers, on_progress, intact=intact)
    finally:
        verifier.close()
        if workers is not None:
            workers.close()
        release_device_memory()


def release_device_memory() -> None:
    """Hand the GPU memory the pass cached back to the device: its batch buffers, CUDA graphs and the caching
    allocator's free blocks, for what the same process runs next (`bench distill` and `demo --device cuda` train
    right after labelling)."""
    import gc
    import sys

    gc.collect()  # the backend, the step and its captured graphs (reference cycles)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _label(cfg: LabelConfig, fdir: Path, frames_manifest: dict[str, Any], frames_sha: str, plans: list[SegmentPlan],
           teacher: Teacher, vision_model: Any, policy_model: Any, folder: Path, verifier: _Verifier,
           workers: _Workers | None, on_progress: Callable[[int, int], None] | None, *,
           intact: set[str]) -> LabelResult:
    """`label` once the teacher is loaded and the worker processes (if any) are starting; `intact`: the recorded
    label shards whose file matches its sha256 (the others are labeled again)."""
    backend = get_backend(cfg.backend, teacher, vision_model, policy_model, batch=cfg.batch,
                          precision=cfg.precision, device=cfg.device, cache_dir=cfg.root / "labels" / ".engines",
                          compile=cfg.compile)
    fresh = not (folder / shards.MANIFEST).exists()  # no earlier pass recorded anything in this set
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _open_label_manifest(folder, teacher, backend, frames_manifest, frames_sha, cfg)
    for p in folder.glob("*.tmp"):
        p.unlink()
    todo = _unrecorded(frames_manifest, {s["name"] for s in manifest["shards"]} & intact)
    result = LabelResult(folder, shards_already=len(frames_manifest["shards"]) - len(todo), backend=backend.describe(),
                         delays=delays_summary(segment_delays(frames_manifest, cfg).values()))
    work = _touching(plans, todo)
    start = time.perf_counter()
    bad = verifier.bad({c.shard for p in work for c in p.clips})
    verify_s = time.perf_counter() - start  # what the checks took beyond building the teacher
    todo -= bad
    if bad and not todo and not manifest["shards"]:  # nothing to label: leave no empty set for train to refuse
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise LabelError(nothing_labeled(cfg.root, len(bad)))
    for i in sorted(bad):
        name_i = frames_manifest["shards"][i]["name"]
        log.warning("frames shard %s fails its sha256 check; skipped, not labeled", name_i)
        result.skipped_shards.append(name_i)
    manifest["skipped_shards"] = result.skipped_shards
    expected: dict[int, list[str]] = collections.defaultdict(list)
    for p in plans:
        for c in p.clips:
            expected[c.shard].append(c.key)
    if not work and cfg.world == 1:  # a rerun of a finished pass
        shards.write_manifest(folder, manifest)
        return result
    if workers is None:  # the first look at the manifest saw nothing left; the manifest says otherwise
        workers = _Workers(cfg, fdir, frames_manifest, teacher)
    if cfg.world > 1:
        return _label_ranks(cfg, teacher, backend, workers, frames_manifest, folder, manifest, work, bad, todo,
                            expected, result, on_progress)
    total = sum(frames_manifest["shards"][i]["frames"] for i in {c.shard for p in work for c in p.clips} - bad)
    writer = _Writer(folder, frames_manifest, todo, manifest, expected, workers.writers)
    start = time.perf_counter()
    ok = False
    try:
        result.frames, result.profile = _run_loop(cfg, teacher, backend, workers.readers, frames_manifest, work,
                                                   bad, writer, manifest, total, on_progress)
        result.profile["set-up: verify frames shards (after the teacher is built) s"] = verify_s
        ok = True
    finally:
        writer.close(ok=ok)
    result.seconds = time.perf_counter() - start - result.profile.get(COMPILE_S, 0.0)  # compiling: the teacher's build
    result.shards_written = writer.written
    manifest["backend"] = result.backend = backend.describe()  # as it ran: a compile or capture may have fallen back
    if result.frames:
        manifest["throughput"] = {"frames": result.frames, "seconds": round(result.seconds, 3),
                                  "frames_per_s": round(result.frames_per_s, 1), "batch": cfg.batch}
    shards.write_manifest(folder, manifest)
    return result


def _run_loop(cfg: LabelConfig, teacher: Teacher, backend: Backend, readers: ClipReaders,
               frames_manifest: dict[str, Any], work: list[SegmentPlan], bad: set[int], writer: _Writer,
               manifest: dict[str, Any], total: int,
               on_progress: Callable[[int, int], None] | None) -> tuple[int, dict[str, float]]:
    """Label `work` with the reader processes feeding a LabelLoop; returns frames labeled and the profile."""
    start = time.perf_counter()
    runner = LabelLoop(teacher=teacher, backend=backend, batch=cfg.batch,
                        clip_len=int(frames_manifest["settings"]["clip_len"]),
                        delays=cfg.delays(teacher.layout.smooth),
                        segment_delays=segment_delays(frames_manifest, cfg), readers=readers,
                        out_rows=writer.writers.rows, emit=writer.add,
                        segments_meta=manifest["segments"])
    built = time.perf_counter()
    if on_progress is not None:
        on_progress(0, total)
    frames = runner.run(work, bad, None if on_progress is None else lambda n: on_progress(n, total))
    wall = time.perf_counter() - built
    writer.poll(wait=True)
    profile = runner.report(time.perf_counter() - built)
    profile["writer process s/step"] = writer.seconds / max(1.0, profile["steps"])
    profile["label pass s"] = wall - runner.profile.fill_s  # the labeling loop from its first step: set-up excluded
    profile[FILL_S] = runner.profile.fill_s
    profile["set-up: build the step s"] = built - start - runner.step.compile_s
    profile[COMPILE_S] = runner.step.compile_s
    if readers.ready_s is not None:
        profile["set-up: readers started and mapped the slab (from their start) s"] = readers.ready_s
    return frames, profile


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


def _label_ranks(cfg: LabelConfig, teacher: Teacher, backend: Backend, workers: _Workers,
                 frames_manifest: dict[str, Any], folder: Path, manifest: dict[str, Any], work: list[SegmentPlan],
                 bad: set[int], todo: set[int],
                 expected: dict[int, list[str]], result: LabelResult,
                 on_progress: Callable[[int, int], None] | None) -> LabelResult:
    """One rank of a multi-process label pass: label this rank's segments into part shards under
    `.parts/rank-R/`, then rank 0 assembles every final shard from the parts (same keys, same order, the
    same encoded bytes a single process writes) and writes the manifest once."""
    import torch.distributed as dist

    with process_group(cfg.process_rank, cfg.world, cfg.init_method):
        mine = assign_segments(work, frames_manifest, cfg.world)[cfg.process_rank]
        parts = folder / ".parts" / f"rank-{cfg.process_rank}"
        if parts.exists():
            shutil.rmtree(parts)  # left by an interrupted run: recomputed
        store.remove_tree(parts)  # the same on a remote root (its ranks may be other machines)
        parts.mkdir(parents=True)
        my_expected: dict[int, list[str]] = collections.defaultdict(list)
        my_keys = {c.key for p in mine for c in p.clips}
        for shard, keys in expected.items():
            my_expected[shard] = [k for k in keys if k in my_keys]
        my_todo = {i for i in todo if my_expected.get(i)}
        part_manifest: dict[str, Any] = {"shards": [], "segments": {}}
        writer = _Writer(parts, frames_manifest, my_todo, part_manifest, my_expected, workers.writers)
        total = sum(len(p.clips) for p in mine) * int(frames_manifest["settings"]["clip_len"])
        start = time.perf_counter()
        ok = False
        try:
            result.frames, result.profile = _run_loop(cfg, teacher, backend, workers.readers, frames_manifest, mine,
                                                       bad, writer, part_manifest, total, on_progress)
            ok = True
        finally:
            writer.close(ok=ok)
        seconds = time.perf_counter() - start - result.profile.get(COMPILE_S, 0.0)
        files.write_json_atomic(parts / "rank.json", {"segments": part_manifest["segments"], "frames": result.frames,
                                                       "seconds": seconds})
        store.push_files([parts / "rank.json"])  # the part shards went with their manifest (shards.write_manifest)
        dist.barrier()
        if cfg.process_rank == 0:
            store.pull_files(folder / ".parts")  # other machines' parts, on a remote root
            result.shards_written = _assemble(folder, frames_manifest, manifest, todo, expected, cfg.world)
            ranks = [json.loads((folder / ".parts" / f"rank-{r}" / "rank.json").read_text())
                     for r in range(cfg.world)]
            for r in ranks:
                manifest["segments"].update(r["segments"])
            manifest["backend"] = result.backend = backend.describe()  # rank 0's, as it ran
            frames, seconds = sum(r["frames"] for r in ranks), max(r["seconds"] for r in ranks)
            result.frames, result.seconds = frames, seconds
            if frames:
                manifest["throughput"] = {"frames": frames, "seconds": round(seconds, 3),
                                          "frames_per_s": round(frames / seconds, 1), "batch": cfg.batch,
                                          "ranks": cfg.world}
            shards.write_manifest(folder, manifest)
            shutil.rmtree(folder / ".parts")
            store.remove_tree(folder / ".parts")
        dist.barrier()
        return result


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
                             frames=len(arrays.decode_array(s["policy.npy.zst"])))
        except BaseException:
            writer.abort()
            raise
        record_shard(manifest, frames_manifest, writer.close().to_json())
        written += 1
    return written
