# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Segment discovery and openpilot's naming forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_distill.errors import IngestError
from spark_distill.ingest.discover import discover_segments, segment_from_dir

DONGLE = "a2a0ccea32023010"


def _segment(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "rlog.bz2").write_bytes(b"BZh")
    (path / "fcamera.hevc").write_bytes(b"")
    return path


@pytest.mark.parametrize("rel, name", [
    (f"{DONGLE}|2023-07-27--13-01-19--4", f"{DONGLE}|2023-07-27--13-01-19--4"),
    (f"{DONGLE}_2023-07-27--13-01-19--4", f"{DONGLE}|2023-07-27--13-01-19--4"),
    (f"{DONGLE}/2023-07-27--13-01-19--4", f"{DONGLE}|2023-07-27--13-01-19--4"),
    ("2023-07-27--13-01-19--12", "2023-07-27--13-01-19--12"),
    ("0000002a--8f1c0a2b3d--3", "0000002a--8f1c0a2b3d--3"),
    (f"{DONGLE}|2023-07-27--13-01-19/7", f"{DONGLE}|2023-07-27--13-01-19--7"),
])
def test_segment_names(tmp_path: Path, rel: str, name: str) -> None:
    assert segment_from_dir(_segment(tmp_path / rel)).name == name


def test_discovery_sorts_by_route_and_number_and_accepts_globs(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        _segment(tmp_path / "data" / f"2023-07-27--13-01-19--{n}")
    _segment(tmp_path / "data" / "2023-07-26--08-00-00--0")
    segs = discover_segments([str(tmp_path / "data")])
    assert [s.name for s in segs] == ["2023-07-26--08-00-00--0", "2023-07-27--13-01-19--1",
                                      "2023-07-27--13-01-19--2", "2023-07-27--13-01-19--10"]
    globbed = discover_segments([str(tmp_path / "data" / "2023-07-27--13-01-19--1*")])
    assert [s.number for s in globbed] == [1, 10]
    both = discover_segments([str(tmp_path / "data"), str(segs[0].path)])
    assert len(both) == 4, "a segment given twice is listed once"


def test_log_choice(tmp_path: Path) -> None:
    seg = segment_from_dir(_segment(tmp_path / "2023-07-27--13-01-19--0"))
    (seg.path / "qlog.zst").write_bytes(b"")
    assert seg.log_file("auto") == (seg.path / "rlog.bz2", "rlog")
    assert seg.log_file("qlog") == (seg.path / "qlog.zst", "qlog")
    (seg.path / "rlog.bz2").unlink()
    assert seg.log_file("auto") == (seg.path / "qlog.zst", "qlog")
    assert seg.log_file("rlog")[0] is None


def test_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file or directory"):
        discover_segments([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no route segments found"):
        discover_segments([str(tmp_path / "empty")])
    with pytest.raises(IngestError, match="matches nothing"):
        discover_segments([str(tmp_path / "x*")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(IngestError, match="not a directory"):
        discover_segments([str(tmp_path / "file")])
