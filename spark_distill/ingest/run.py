# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The ingest pass: segments -> `<root>/frames/` shards + manifest. Entry point: `ingest(cfg)`.

Workers (one process per segment) write each segment's clips to a staging tar; the main process
copies them, in segment order, into shards of `shard_clips` clips. A shard is written to a
temporary name and renamed; the manifest is rewritten atomically after each shard and says which
segments are complete and how many clips of the next one are already in shards. So an ingest
killed at any moment and run again produces exactly the shards of an uninterrupted run, and a
re-run on the same inputs changes nothing. The manifest's fields: docs/formats.md, "frames/manifest.json".

Over several processes or machines (torchrun, or `process_rank`/`world`/`init_method`), the pending segments are
dealt in turn (the i-th to rank i % world); each rank stages its own under `.staging/rank-R/<i>/` (the tar and
`staged.json`: the segment's report and the tar's sample spans), pushed to the remote root when the root is a
bucket; after a barrier rank 0 pulls them one segment at a time and packs them exactly as one process does, so the
shards and the manifest are byte for byte those of a one-process ingest, and a killed run resumes with any number
of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import multiprocessing as mp
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

from spark_distill import __version__
from spark_distill.data import codecs, files, shards, store
from spark_distill.errors import ConfigError, IngestError, first_line
from spark_distill.ingest.discover import Segment, discover_segments
from spark_distill.ingest.logs import CAR_COLUMNS, GPS_COLUMNS, POSE_COLUMNS
from spark_distill.ingest.segment import (
    CAMERA_SOURCES,
    SegmentReport,
    SegmentSettings,
    road_video_file,
    segment_clips,
)
from spark_distill.ingest.video import count_packets
from spark_distill.openpilot.modelv2 import columns as modelv2_columns
from spark_distill.processes import child_init, core_share, process_group

log = logging.getLogger(__name__)

CAMERAS = ("road", "wide")
LOG_KINDS = ("auto", "rlog", "qlog")
STAGING = ".staging"
STAGED = "staged.json"  # beside a rank's staging tar: what rank 0 needs to pack it (report, spans)
OWNER = "run.txt"  # in the staging folder of a multi-rank run: rank 0's token, which ranks on a local root must see
RANK_WAIT = datetime.timedelta(hours=12)  # how long ranks wait at a barrier for the slowest one to stage its share
# settings that change sample contents: a dataset must keep them across runs
_SHAPE_SETTINGS = ("clip_len", "cameras", "log_kind", "shard_clips", "codec", "crf")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Options of `spark-distill ingest`."""

    inputs: tuple[str, ...]
    out: Path
    clip_len: int = 20  # frames per clip: 1 s at 20 Hz
    workers: int = 0  # segment worker processes; 0 = one per CPU core
    cameras: tuple[str, ...] = CAMERAS
    log_kind: str = "auto"  # rlog if present, else qlog
    schema_dir: Path | None = None
    shard_clips: int = 50  # clips per shard: ~1000 frames, a few hundred MB of real video
    decode_threads: int = 0  # FFmpeg threads per decoder; 0 = FFmpeg's choice
    codec: str = codecs.DEFAULT_CODEC  # camera clip storage: lossless, or hevc / av1 (lossy, 13-24x smaller)
    crf: int | None = None  # lossy quality, lower is better and larger [default: the codec's: hevc 20, av1 30]
    camera_source: str = "auto"  # auto: fcamera.hevc where a segment has it, else qcamera.ts; fcamera; qcamera
    process_rank: int = 0  # this process among `world` (torchrun's RANK): it stages every world-th pending segment
    world: int = 1
    init_method: str | None = None  # torch.distributed init URL when world > 1 ("env://" under torchrun)

    def __post_init__(self) -> None:
        if not 0 <= self.process_rank < self.world:
            raise ConfigError(f"rank {self.process_rank} is not one of {self.world} process(es)")
        if self.clip_len < 1:
            raise ConfigError(f"--clip-len must be >= 1, got {self.clip_len}")
        if self.shard_clips < 1:
            raise ConfigError(f"--shard-clips must be >= 1, got {self.shard_clips}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.decode_threads < 0:
            raise ConfigError(f"--decode-threads must be >= 0, got {self.decode_threads}")
        if bad := [c for c in self.cameras if c not in CAMERAS]:
            raise ConfigError(f"unknown camera {bad[0]!r}; choose from {', '.join(CAMERAS)}")
        if "road" not in self.cameras:
            raise ConfigError("--cameras must include road (the model's main input)")
        object.__setattr__(self, "crf", codecs.resolve_crf(self.codec, self.crf))  # the codec's default if None
        if self.camera_source not in CAMERA_SOURCES:
            raise ConfigError(f"unknown --camera-source {self.camera_source!r}; "
                              f"choose from {', '.join(CAMERA_SOURCES)}")
        if self.log_kind not in LOG_KINDS:
            raise ConfigError(f"unknown --log {self.log_kind!r}; choose from {', '.join(LOG_KINDS)}")

    @property
    def settings(self) -> SegmentSettings:
        return SegmentSettings(self.clip_len, tuple(self.cameras), self.log_kind,
                               str(self.schema_dir) if self.schema_dir else None, self.decode_threads,
                               self.codec, self.crf, self.camera_source)

    def manifest_settings(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "cameras": list(self.cameras), "log_kind": self.log_kind,
                "shard_clips": self.shard_clips, "codec": self.codec,
                "crf": self.crf, "camera_source": self.camera_source}


@dataclass
class IngestResult:
    """What a run did (its summary)."""

    root: Path
    segments_done: int = 0
    segments_skipped: list[dict[str, str]] = field(default_factory=list)
    segments_already: int = 0
    frames_kept: int = 0
    frames_dropped: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames_kept / self.seconds if self.seconds else 0.0


def _new_manifest(cfg: IngestConfig) -> dict[str, Any]:
    return {"format": shards.FRAMES_FORMAT, "version": shards.FORMAT_VERSION, "tool": f"spark-distill {__version__}",
            "settings": cfg.manifest_settings(), "car_columns": list(CAR_COLUMNS),
            "pose_columns": list(POSE_COLUMNS), "gps_columns": list(GPS_COLUMNS), "modelv2_columns": modelv2_columns(),
            "shards": [], "segments": [], "skipped": [], "partial": None}


def open_manifest(folder: Path, cfg: IngestConfig) -> dict[str, Any]:
    """The existing manifest (checked against cfg's settings) or a new one."""
    if not (folder / shards.MANIFEST).exists():
        return _new_manifest(cfg)
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    old, new = manifest["settings"], cfg.manifest_settings()
    old = {"codec": "npy.zst", "crf": None, **old}  # datasets from before --codec stored plain .npy.zst
    for key in _SHAPE_SETTINGS:
        if old.get(key) != new[key]:
            raise ConfigError(f"{folder} was ingested with {key}={old.get(key)!r}, not {new[key]!r}; "
                              "use the same setting or another --out")
    return manifest


def _clean_leftovers(folder: Path, manifest: dict[str, Any]) -> None:
    """Remove temp files and shards a killed run left beyond the manifest, and its staging (on a remote root too:
    what the ranks of a killed multi-machine run pushed there)."""
    listed = {s["name"] for s in manifest["shards"]}
    for p in folder.iterdir():
        if p.name.endswith(".tmp") or (p.name.startswith("shard-") and p.name not in listed):
            p.unlink()
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    store.remove_tree(folder / STAGING)


@dataclass
class _StagedSegment:
    report: SegmentReport
    staging: Path | None
    error: str | None = None
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # per clip: (start, end) in staging, frames


def _stage_segment(args: tuple[Segment, SegmentSettings, Path, Any]) -> _StagedSegment:
    """Worker: write one segment's clips to a staging tar (in a process of the pool, or inline)."""
    seg, settings, staging_dir, progress = args
    report = SegmentReport(seg.name)
    path = staging_dir / f"{seg.number:05d}-{shards.sanitize_segment(seg.name)}.tar"
    writer = shards.ShardWriter(staging_dir, path.name, shards.FRAMES_MEMBERS, durable=False)
    spans = []
    try:
        for sample in segment_clips(seg, settings, report):
            frames = _frames_in(sample)
            spans.append((*writer.write(sample, frames=frames), frames))
            if progress is not None:
                progress.put(frames)
    except IngestError as e:
        writer.abort()
        return _StagedSegment(report, None, str(e))
    writer.close()  # staging is scratch: a rerun rebuilds it, and the shards get hashed
    return _StagedSegment(report, path, spans=spans)


def _frames_in(sample: dict[str, Any]) -> int:
    return len(json.loads(sample["meta.json"])["frame_ids"])


class _ShardSink:
    """Copies samples into shards of `per_shard` clips and commits the manifest after each."""

    def __init__(self, folder: Path, manifest: dict[str, Any], per_shard: int) -> None:
        self.folder, self.manifest, self.per_shard = folder, manifest, per_shard
        self.writer: shards.ShardWriter | None = None
        self.finished: list[dict[str, Any]] = []  # segments whose clips all sit in the open shard
        self.open_segment: str | None = None
        self.open_clips = 0  # clips of open_segment already written into shards (closed or open)
        self.written: list[shards.ShardInfo] = []

    def add(self, blocks: bytes, segment: str, frames: int) -> None:
        """One sample, as the tar blocks its staging writer wrote (copied, not parsed again)."""
        if self.writer is None:
            name = shards.shard_name(len(self.manifest["shards"]))
            self.writer = shards.ShardWriter(self.folder, name, shards.FRAMES_MEMBERS)
        if segment != self.open_segment:
            self.open_segment, self.open_clips = segment, 0
        self.writer.write_raw(blocks, frames=frames)
        self.open_clips += 1
        if self.writer.samples >= self.per_shard:
            self.close_shard()

    def segment_done(self, report: SegmentReport) -> None:
        self.finished.append(report.to_json())
        self.open_segment, self.open_clips = None, 0
        if self.writer is None:  # its last clip closed a shard already
            self._commit()

    def close_shard(self) -> None:
        if self.writer is not None:
            info = self.writer.close()
            self.writer = None
            self.manifest["shards"].append(info.to_json())
            self.written.append(info)
        self._commit()

    def _commit(self) -> None:
        self.manifest["segments"] += self.finished
        self.finished = []
        self.manifest["partial"] = ({"segment": self.open_segment, "clips": self.open_clips}
                                    if self.open_segment else None)
        shards.write_manifest(self.folder, self.manifest)


def _staged(jobs: list[tuple], workers: int) -> Iterator[_StagedSegment]:
    if workers <= 1:
        yield from map(_stage_segment, jobs)
        return
    with mp.get_context("spawn").Pool(workers, initializer=child_init, initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_stage_segment, jobs)


def ingest(cfg: IngestConfig, *, on_progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Run the ingest pass. `on_progress(frames_done, frames_total_estimate)` is called as clips land (with
    several ranks: as rank 0's own segments are staged). With several ranks, rank 0's result is the whole pass's;
    the other ranks' are empty."""
    segments = discover_segments(list(cfg.inputs))
    folder = cfg.out / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = open_manifest(folder, cfg)
    if cfg.world > 1:
        return _ingest_ranks(cfg, segments, folder, manifest, on_progress)
    _clean_leftovers(folder, manifest)
    pending, result = _plan(cfg, segments, manifest)
    if not pending:
        return result
    staging = folder / STAGING
    staging.mkdir()
    workers = min(cfg.workers or core_share(), len(pending))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, staging, True)
        queue = _progress_queue(stack, pending, workers, on_progress, cfg.camera_source)
        jobs = [(seg, cfg.settings, staging, queue) for seg in pending]
        sink = _pack(cfg, folder, manifest, pending, _staged(jobs, workers), result)
    return _finish(folder, sink, result, start)


def _plan(cfg: IngestConfig, segments: list[Segment], manifest: dict[str, Any]) -> tuple[list[Segment], IngestResult]:
    """(the segments the manifest does not list as done, in order; the result that counts the others)."""
    done = {s["name"] for s in manifest["segments"]}
    pending = [s for s in segments if s.name not in done]
    return pending, IngestResult(cfg.out, segments_already=len(segments) - len(pending))


def _pack(cfg: IngestConfig, folder: Path, manifest: dict[str, Any], pending: list[Segment],
          staged_segments: Iterator[_StagedSegment], result: IngestResult) -> _ShardSink:
    """Copy the staged segments, in segment order, into shards (skipping the clips a killed run already put
    into shards) and record them, and the segments that failed, in the manifest."""
    partial = manifest.get("partial") or {}
    manifest["skipped"] = [s for s in manifest.get("skipped", [])  # older ingests wrote no `skipped`
                           if s["name"] not in {p.name for p in pending}]
    sink = _ShardSink(folder, manifest, cfg.shard_clips)
    for seg, staged in zip(pending, staged_segments, strict=True):
        if staged.error is not None:
            if len(pending) > 1:  # a lone segment's failure is the error raised below: said once
                log.warning("skipped %s: %s", seg.name, staged.error)
            manifest["skipped"].append({"name": seg.name, "reason": staged.error})
            result.segments_skipped.append({"name": seg.name, "reason": staged.error})
            continue
        for w in staged.report.warnings:
            log.warning("%s: %s", seg.name, w)
        skip = partial.get("clips", 0) if partial.get("segment") == seg.name else 0
        sink.open_segment, sink.open_clips = seg.name, skip
        with open(staged.staging, "rb") as f:
            for begin, end, frames in staged.spans[skip:]:
                f.seek(begin)
                if len(blocks := f.read(end - begin)) != end - begin:
                    raise IngestError(f"{staged.staging}: staging file cut short (removed while ingesting?)")
                sink.add(blocks, seg.name, frames)
        staged.staging.unlink()
        sink.segment_done(staged.report)
        result.segments_done += 1
        result.frames_kept += staged.report.frames_kept
        result.frames_dropped += staged.report.frames_dropped
    sink.close_shard()
    return sink


def _finish(folder: Path, sink: _ShardSink, result: IngestResult, start: float) -> IngestResult:
    # hashed as they were written: label need not read them again to check them while they stay unchanged
    shards.record_verified(folder / shards.VERIFIED, folder, [{"name": i.name, "sha256": i.sha256}
                                                             for i in sink.written])
    if result.segments_done == 0 and result.segments_skipped:
        raise IngestError(result.segments_skipped[0]["reason"])
    result.seconds = time.perf_counter() - start
    result.shards_written = len(sink.written)
    result.bytes_written = sum(s.bytes for s in sink.written)
    return result


# ---- several ranks -------------------------------------------------------------------------------------------


def _ingest_ranks(cfg: IngestConfig, segments: list[Segment], folder: Path, manifest: dict[str, Any],
                  on_progress: Callable[[int, int], None] | None) -> IngestResult:
    """One rank of a multi-process ingest: stage this rank's dealt segments, then (rank 0) pack them all."""
    import torch.distributed as dist

    rank, world = cfg.process_rank, cfg.world
    staging = folder / STAGING
    with process_group(rank, world, cfg.init_method, timeout=RANK_WAIT):
        pending, result = _plan(cfg, segments, manifest)
        seen: list[Any] = [None] * world
        dist.all_gather_object(seen, [s.name for s in pending])
        if odd := [r for r in range(world) if seen[r] != seen[0]]:
            raise IngestError(f"rank {odd[0]} has {len(seen[odd[0]])} segments to ingest, rank 0 {len(seen[0])}: "
                              "every rank must be given the same inputs (at the same paths) and the same --out")
        if not pending:
            return result
        _agree_on_staging(staging, rank, world, lambda: _clean_leftovers(folder, manifest))
        start = time.perf_counter()
        mine = [(i, seg) for i, seg in enumerate(pending) if i % world == rank]
        problem = None
        try:
            _stage_share(cfg, staging / f"rank-{rank}", mine, on_progress if rank == 0 else None)
        except BaseException as e:  # said by this rank (raised on) and by rank 0; the others stop waiting
            problem = f"rank {rank}: {first_line(e) or type(e).__name__}"
            raise
        finally:
            problems: list[Any] = [None] * world
            dist.all_gather_object(problems, problem)
        if failed := [p for p in problems if p]:
            if rank == 0:
                raise IngestError(failed[0])
            return result
        if rank != 0:
            dist.barrier()  # rank 0 has packed (or failed and said so)
            return result
        try:
            sink = _pack(cfg, folder, manifest, pending, _gathered(staging, pending, world), result)
            shutil.rmtree(staging, ignore_errors=True)
            store.remove_tree(staging)
            return _finish(folder, sink, result, start)
        finally:
            dist.barrier()


def _agree_on_staging(staging: Path, rank: int, world: int, clean: Callable[[], None]) -> None:
    """Rank 0 clears a killed run's leftovers (here and on the remote root) before any rank stages anew; on a local
    root every rank checks that it sees rank 0's staging folder (a folder the machines share), before hours of
    decoding that rank 0 could not read."""
    import torch.distributed as dist

    token = [None]
    if rank == 0:
        clean()
        staging.mkdir(parents=True)
        token[0] = uuid.uuid4().hex
        (staging / OWNER).write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    try:
        shared = store.is_mirrored(staging) or (staging / OWNER).read_text() == token[0]
    except OSError:
        shared = False
    seen: list[Any] = [None] * world
    dist.all_gather_object(seen, shared)
    if not all(seen):
        raise IngestError(f"{staging.parent.parent}: rank {seen.index(False)} does not see rank 0's folder; with "
                          "several machines --out must be a bucket (s3://, gs://) or a folder they all share")


def _stage_share(cfg: IngestConfig, own: Path, mine: list[tuple[int, Segment]],
                 on_progress: Callable[[int, int], None] | None) -> None:
    """Stage this rank's segments under `own/<i>/` (i: the segment's place among the pending ones), each with its
    `staged.json`; on a remote root, push them there (rank 0's stay where it packs them) and drop the local copy."""
    shutil.rmtree(own, ignore_errors=True)
    workers = min(cfg.workers or core_share(), len(mine))
    push = cfg.process_rank != 0 and store.is_mirrored(own)
    with contextlib.ExitStack() as stack:
        queue = _progress_queue(stack, [seg for _, seg in mine], workers, on_progress, cfg.camera_source)
        jobs = []
        for i, seg in mine:
            (own / f"{i:05d}").mkdir(parents=True)
            jobs.append((seg, cfg.settings, own / f"{i:05d}", queue))
        for (i, _), staged in zip(mine, _staged(jobs, workers), strict=True):
            where = own / f"{i:05d}"
            files.write_json_atomic(where / STAGED, {
                "tar": None if staged.staging is None else staged.staging.name, "error": staged.error,
                "report": staged.report.to_json(), "spans": staged.spans})
            if push:
                store.push_files(sorted(where.iterdir()))
                shutil.rmtree(where)


def _gathered(staging: Path, pending: list[Segment], world: int) -> Iterator[_StagedSegment]:
    """The ranks' staged segments in segment order (rank 0: pulling each from the remote root as it comes)."""
    for i, seg in enumerate(pending):
        where = staging / f"rank-{i % world}" / f"{i:05d}"
        if i % world:
            store.pull_files(where)
        try:
            staged = json.loads((where / STAGED).read_bytes())
        except FileNotFoundError:
            raise IngestError(f"{where}: rank {i % world} staged {seg.name} elsewhere; with several machines --out "
                              "must be a bucket (s3://, gs://) or a folder they all share") from None
        yield _StagedSegment(SegmentReport(**staged["report"]), staged["tar"] and where / staged["tar"],
                             staged["error"], [tuple(span) for span in staged["spans"]])


def _progress_queue(stack: contextlib.ExitStack, pending: list[Segment], workers: int,
                    on_progress: Callable[[int, int], None] | None, camera_source: str) -> Any:
    """Where workers report frames done: a Manager queue drained by a thread, or in-process."""
    if on_progress is None:
        return None
    total = sum(count_packets(_road_file(s, camera_source)) for s in pending)
    on_progress(0, total)
    if workers <= 1:
        return _LocalQueue(on_progress, total)
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(child_init, (os.getpid(),))
    queue = stack.enter_context(manager).Queue()

    def pump() -> None:
        done = 0
        while (n := queue.get()) is not None:
            done += n
            on_progress(done, total)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(queue.put, None)
    return queue


def _road_file(seg: Segment, camera_source: str) -> Path:
    try:
        return road_video_file(seg, camera_source)[0]
    except IngestError:
        return seg.path / "missing"  # the segment's worker says why; count_packets counts 0 here


class _LocalQueue:
    """In-process stand-in for the progress queue when segments run inline."""

    def __init__(self, on_progress: Callable[[int, int], None], total: int) -> None:
        self.on_progress, self.total, self.done = on_progress, total, 0

    def put(self, n: int) -> None:
        self.done += n
        self.on_progress(self.done, self.total)
