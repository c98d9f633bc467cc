# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench ingest`: ingest throughput against bare PyAV decoding of the same files.

Baseline: decoding the segment's camera files (road and wide, as ingest does) with PyAV on one
thread, frames discarded. Measured: the full ingest pass (decode, match, warp, pack, encode, shard
write) with one worker and one decoder thread, so both run on one core; then 1 vs 2 workers, and
one worker with `decode_threads` FFmpeg threads. The one-core ratio is given twice: by wall time and
by this process's CPU time, which other jobs on a shared machine disturb much less.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import av

from spark_distill.bench import scratch_dir
from spark_distill.ingest.discover import discover_segments
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.synth.route import SynthConfig, write_route

TARGET_RATIO = 0.85


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


def bench_ingest(*, seconds: float = 10.0, route: Path | None = None, workdir: Path | None = None,
                 decode_threads: int = 2) -> Iterator[str]:
    """Run the benchmark; yields report lines."""
    scratch = scratch_dir(workdir, "bench-ingest-")
    try:
        if route is None:
            yield f"synthesizing 2 segments of {seconds:g} s, 1928x1208 road + wide ..."
            write_route(scratch / "route", SynthConfig(segments=2, seconds=seconds, device="tici"))
            route = scratch / "route"
        segments = discover_segments([str(route)])
        first = segments[0]
        cams = [p for p in (first.camera_file("road"), first.camera_file("wide")) if p]
        _ingest_seconds([str(first.path)], scratch / "warm", workers=1, decode_threads=1)  # JIT, caches
        base_s, base_cpu = bare_decode_seconds(cams)
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
            s, _, f = _ingest_seconds([str(first.path)], scratch / "dt", workers=1, decode_threads=decode_threads)
            yield f"ingest, 1 worker, {decode_threads} decode threads:  {f / s:8.1f} frames/s"
        if len(segments) >= 2:
            inputs = [str(s.path) for s in segments[:2]]
            s1, _, f1 = _ingest_seconds(inputs, scratch / "w1", workers=1, decode_threads=1)
            s2, _, f2 = _ingest_seconds(inputs, scratch / "w2", workers=2, decode_threads=1)
            yield f"ingest of 2 segments, 1 worker:      {f1 / s1:8.1f} frames/s"
            yield f"ingest of 2 segments, 2 workers:     {f2 / s2:8.1f} frames/s  (speed-up {s1 / s2:.2f}x)"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
