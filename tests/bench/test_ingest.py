# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""bench ingest: its rows on a small route, the repeated segments of the worker rows, and option checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spark_distill.bench.ingest import bench_ingest, parse_workers, replicate_segments
from spark_distill.errors import ConfigError
from spark_distill.ingest.discover import discover_segments


def test_replicas_are_distinct_segments_with_the_same_files(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    found = discover_segments([str(route)])
    paths = replicate_segments(found, 5, tmp_path)
    assert paths[:2] == [s.path for s in found]
    again = discover_segments([str(p) for p in paths])
    assert [s.number for s in again] == [0, 1, 4, 5, 6] and len({s.name for s in again}) == 5
    assert (paths[3] / "fcamera.hevc").resolve() == (found[1].path / "fcamera.hevc").resolve()
    assert replicate_segments(found, 1, tmp_path / "one") == [found[0].path]


def test_bench_reports_the_ratio_and_each_worker_count(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    seen: list[tuple[int, int, str]] = []
    lines = list(bench_ingest(route=route, workdir=tmp_path, decode_threads=1, segments=3, workers=[1],
                              on_progress=lambda *a: seen.append(a)))
    assert seen == [(0, 4, "warm-up ingest"), (1, 4, "bare PyAV decode"), (2, 4, "ingest, 1 worker"),
                    (3, 4, "ingest of 3 segment(s), 1 worker(s)"), (4, 4, "")]
    text = "\n".join(lines)
    assert "(40 frames, cameras: fcamera.hevc, ecamera.hevc)" in text
    ratio = float(re.search(r"ratio ingest / bare decode, CPU: +([\d.]+)", text)[1])
    assert 0.2 < ratio < 2.0  # ingest decodes the same frames and does more: near, not far above, 1
    assert "ingest of 3 segment(s), 1 of them repeats" in text
    row = re.search(r" 1 worker\(s\): +([\d.]+) frames/s +([\d.]+) s +speed-up 1.00x vs 1", text)
    assert row and float(row[1]) > 0 and float(row[2]) > 0
    assert "decode threads" not in text  # --decode-threads 1 skips that row
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_worker_counts_are_checked() -> None:
    assert parse_workers("1,2, 4") == [1, 2, 4]
    for bad in ("", "0,2", "1,x", "-1"):
        with pytest.raises(ConfigError, match="--workers"):
            parse_workers(bad)
    with pytest.raises(ConfigError, match="--segments"):
        next(bench_ingest(segments=0))
