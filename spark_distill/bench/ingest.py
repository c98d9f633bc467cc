# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench ingest`: ingest throughput against bare PyAV decoding of the same files.

Baseline: decoding the segment's camera files (road and wide, as ingest does) with PyAV on one
thread, frames discarded. Measured: the full ingest pass (decode, match, warp, pack, encode, shard
write) with one worker and one decoder thread, so both run on one core; its ratio to the baseline is
given by wall time and by this process's CPU time, which other jobs on a shared machine disturb much
less. Then one worker with `decode_threads` FFmpeg threads, and the ingest of `segments` segments
with each worker count of `workers` (speed-up against the first). Where the route has fewer
segments than asked for, its segments are repeated under new segment numbers (symlinked files), so
any route can show how ingest scales over a dataset of many segments.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import av

from spark_distill.bench import scratch_dir
from spark_distill.errors import ConfigError
from spark_distill.ingest.discover import Segment, discover_segments
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.progress import Stages
from spark_distill.synth.route import SynthConfig, write_route

TARGET_RATIO = 0.85
TARGET_SPEEDUP = 1.8  # two workers against one


def bare_decode_seconds(paths: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds to decode every frame of `paths` with PyAV on one thread, frames discarded."""
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        with av.open(str(path), format="hevc") as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for _ in container.decode(stream):
                pass
    return time.perf_counter() - start, time.process_time() - cpu


def _ingest_seconds(inputs: list[str], out: Path, *, workers: int, decode_threads: int) -> tuple[float, float, int]:
    """(wall, CPU of this process, frames) of one fresh ingest; CPU counts only inline (1-worker) runs."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = time.process_time()
    result = ingest(IngestConfig(inputs=tuple(inputs), out=out, workers=workers, decode_threads=decode_threads))
    return result.seconds, time.process_time() - cpu, result.frames_kept


def replicate_segments(segments: list[Segment], count: int, folder: Path) -> list[Path]:
    """`count` segment folders: `segments` themselves, then repeats of them under new segment numbers in
    `folder` (their files symlinked), named so that ingest sees distinct segments."""
    paths = [s.path for s in segments[:count]]
    top = max(s.number for s in segments)
    for k in range(len(paths), count):
        src = segments[k % len(segments)]
        number = top + 1 + k
        name = f"{src.dongle}_{src.route}--{number}" if src.dongle else f"{src.route}--{number}"
        dest = folder / name
        dest.mkdir(parents=True)
        for f in src.path.iterdir():
            if f.is_file():
                (dest / f.name).symlink_to(f.resolve())
        paths.append(dest)
    return paths


def parse_workers(text: str) -> list[int]:
    """`--workers 1,2` -> [1, 2]; ConfigError on anything but positive integers."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--workers takes positive worker counts separated by commas (e.g. 1,2), got {text!r}")
    return counts


def bench_ingest(*, seconds: float = 10.0, route: Path | None = None, workdir: Path | None = None,
                 decode_threads: int = 2, segments: int = 4, workers: Sequence[int] = (1, 2),
                 on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines. `on_progress(measurements done, total, the one now)`."""
    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    step = Stages(on_progress, (route is None) + 3 + (decode_threads != 1) + len(workers))
    scratch = scratch_dir(workdir, "bench-ingest-")
    try:
        if route is None:
            n = min(2, segments)
            step(f"synthesizing {n} segment(s)")
            yield f"synthesizing {n} segment(s) of {seconds:g} s, 1928x1208 road + wide ..."
            write_route(scratch / "route", SynthConfig(segments=n, seconds=seconds, device="tici"))
            route = scratch / "route"
        found = discover_segments([str(route)])
        first = found[0]
        cams = [p for p in (first.camera_file("road"), first.camera_file("wide")) if p]
        step("warm-up ingest")
        _ingest_seconds([str(first.path)], scratch / "warm", workers=1, decode_threads=1)  # JIT, caches
        step("bare PyAV decode")
        base_s, base_cpu = bare_decode_seconds(cams)
        step("ingest, 1 worker")
        one_s, one_cpu, frames = _ingest_seconds([str(first.path)], scratch / "ds1", workers=1, decode_threads=1)
        with av.open(str(cams[0]), format="hevc") as c:
            decoded = sum(1 for _ in c.decode(video=0))
        bare_fps, ingest_fps = decoded / base_s, frames / one_s
        yield f"segment: {first.name} ({decoded} frames, cameras: {', '.join(p.name for p in cams)})"
        yield f"bare PyAV decode, 1 thread:          {bare_fps:8.1f} frames/s (all cameras of a frame)"
        yield f"ingest, 1 worker, 1 decode thread:   {ingest_fps:8.1f} frames/s"
        yield f"ratio ingest / bare decode, wall:    {ingest_fps / bare_fps:8.2f}  (target >= {TARGET_RATIO})"
        yield f"ratio ingest / bare decode, CPU:     {base_cpu / decoded * frames / one_cpu:8.2f}"
        if decode_threads != 1:
            step(f"ingest, 1 worker, {decode_threads} decode threads")
            s, _, f = _ingest_seconds([str(first.path)], scratch / "dt", workers=1, decode_threads=decode_threads)
            yield f"ingest, 1 worker, {decode_threads} decode threads:  {f / s:8.1f} frames/s"
        inputs = [str(p) for p in replicate_segments(found, segments, scratch / "replicas")]
        repeated = f", {segments - len(found)} of them repeats" if segments > len(found) else ""
        yield f"ingest of {segments} segment(s){repeated}, 1 decode thread per worker:"
        first_s = None
        for count in workers:
            step(f"ingest of {segments} segment(s), {count} worker(s)")
            s, _, f = _ingest_seconds(inputs, scratch / f"w{count}", workers=count, decode_threads=1)
            first_s = first_s or s
            target = f"  (target >= {TARGET_SPEEDUP} with 2)" if count == 2 and workers[0] == 1 else ""
            yield (f"  {count:2d} worker(s): {f / s:8.1f} frames/s  {s:6.1f} s  speed-up {first_s / s:.2f}x"
                   f" vs {workers[0]}{target}")
        step.end()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
