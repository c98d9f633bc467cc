# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench ingest`: ingest throughput against bare PyAV decoding of the same files.

Baseline: decoding the segment's camera files (road and wide, as ingest does) with PyAV on one
thread, frames discarded. Measured: the full ingest pass (decode, match, warp, pack, zstd, shard
write) with one worker and one decoder thread, so both run on one core; then 1 vs 2 workers.
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


def bare_decode_seconds(paths: list[Path]) -> float:
    """Seconds to decode every frame of `paths` with PyAV on one thread, frames discarded."""
    start = time.perf_counter()
    for path in paths:
        with av.open(str(path), format="hevc") as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for _ in container.decode(stream):
                pass
    return time.perf_counter() - start


def _ingest_seconds(inputs: list[str], out: Path, *, workers: int, decode_threads: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    result = ingest(IngestConfig(inputs=tuple(inputs), out=out, workers=workers, decode_threads=decode_threads))
    return result.seconds, result.frames_kept


def bench_ingest(*, seconds: float = 10.0, route: Path | None = None, workdir: Path | None = None) -> Iterator[str]:
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
        base_s = bare_decode_seconds(cams)
        one_s, frames = _ingest_seconds([str(first.path)], scratch / "ds1", workers=1, decode_threads=1)
        with av.open(str(cams[0]), format="hevc") as c:
            decoded = sum(1 for _ in c.decode(video=0))
        bare_fps, ingest_fps = decoded / base_s, frames / one_s
        yield f"segment: {first.name} ({decoded} frames, cameras: {', '.join(p.name for p in cams)})"
        yield f"bare PyAV decode, 1 thread:          {bare_fps:8.1f} frames/s (all cameras of a frame)"
        yield f"ingest, 1 worker, 1 decode thread:   {ingest_fps:8.1f} frames/s"
        yield f"ratio ingest / bare decode:          {ingest_fps / bare_fps:8.2f}  (target >= 0.70)"
        if len(segments) >= 2:
            inputs = [str(s.path) for s in segments[:2]]
            s1, f1 = _ingest_seconds(inputs, scratch / "w1", workers=1, decode_threads=1)
            s2, f2 = _ingest_seconds(inputs, scratch / "w2", workers=2, decode_threads=1)
            yield f"ingest of 2 segments, 1 worker:      {f1 / s1:8.1f} frames/s"
            yield f"ingest of 2 segments, 2 workers:     {f2 / s2:8.1f} frames/s  (speed-up {s1 / s2:.2f}x)"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
