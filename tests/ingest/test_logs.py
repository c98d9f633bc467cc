# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Log reading: formats by magic bytes, truncated tails, extracted streams, schema override."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import numpy as np
import pytest
import zstandard

from spark_distill.errors import CorruptLogError, IngestError
from spark_distill.ingest.logs import Stream, load_schema, read_log, read_log_bytes


def _events(n: int = 50) -> bytes:
    schema = load_schema()
    out = []
    for i in range(n):
        ev = schema.Event.new_message(logMonoTime=1000 + 10 * (n - i))  # written out of order
        cs = ev.init("carState")
        cs.vEgo = float(n - i)
        out.append(ev.to_bytes())
    return b"".join(out)


@pytest.mark.parametrize("fmt", ["bz2", "zst", "raw"])
def test_format_is_sniffed_from_magic_bytes_not_the_name(tmp_path: Path, fmt: str) -> None:
    raw = _events()
    data = {"bz2": bz2.compress(raw), "zst": zstandard.ZstdCompressor().compress(raw), "raw": raw}[fmt]
    path = tmp_path / "rlog.misnamed"
    path.write_bytes(data)
    log = read_log(path, load_schema())
    assert log.events == 50 and not log.warnings
    car = log.streams["car"]
    assert np.all(np.diff(car.times) > 0), "events are sorted by logMonoTime"
    np.testing.assert_allclose(car.values[:, 0], np.arange(1, 51))


@pytest.mark.parametrize("fmt", ["bz2", "zst", "raw"])
def test_truncated_log_keeps_the_readable_prefix(tmp_path: Path, fmt: str) -> None:
    raw = _events(8000)
    # bz2 can only recover whole blocks: level 1 uses 100 kB blocks (real rlogs span many 900 kB blocks)
    data = {"bz2": bz2.compress(raw, 1), "zst": zstandard.ZstdCompressor().compress(raw), "raw": raw}[fmt]
    path = tmp_path / "rlog"
    path.write_bytes(data[: int(len(data) * 0.6) + 7])  # +7: cut inside a message, not between two
    log = read_log(path, load_schema())
    assert 0.3 * 8000 < log.events < 8000
    assert log.warnings and ("truncated" in log.warnings[0] or "corrupt" in log.warnings[0])


def test_multistream_bz2_is_read_whole(tmp_path: Path) -> None:
    raw = _events(20)
    path = tmp_path / "rlog.bz2"
    path.write_bytes(bz2.compress(raw[:len(raw) // 2]) + bz2.compress(raw[len(raw) // 2:]))
    data, warnings = read_log_bytes(path)
    assert data == raw and not warnings


def test_unreadable_logs_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "rlog").write_bytes(b"\x00" * 3)
    with pytest.raises(CorruptLogError, match="no readable events"):
        read_log(tmp_path / "rlog", load_schema())
    with pytest.raises(CorruptLogError, match="cannot read"):
        read_log(tmp_path / "missing", load_schema())


def test_schema_dir_override(tmp_path: Path) -> None:
    import openpilot_logging

    src = Path(openpilot_logging.__file__).parent / "cereal"
    shutil.copytree(src, tmp_path / "cereal")
    schema = load_schema(tmp_path / "cereal")
    assert hasattr(schema, "Event")
    with pytest.raises(IngestError, match=r"no log\.capnp"):
        load_schema(tmp_path)


def test_stream_sampling_takes_latest_at_or_before() -> None:
    s = Stream(np.array([10, 20, 30]), np.array([[1.0], [2.0], [3.0]]))
    got = s.at(np.array([5, 10, 19, 20, 100]))
    assert np.isnan(got[0, 0])
    np.testing.assert_array_equal(got[1:, 0], [1, 1, 2, 3])
