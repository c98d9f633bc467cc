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


def _unknown_event(schema, t: int) -> bytes:
    """An Event whose union tag is beyond the schema's (as a fork's own service reads with stock cereal)."""
    import struct

    ev = schema.Event.new_message(logMonoTime=t, valid=True)
    ev.init("liveCalibration")
    raw = bytearray(ev.to_bytes())
    # the discriminant sits discriminantOffset 16-bit words into the root struct's data section (after the
    # 8-byte segment table and the 8-byte root pointer)
    struct.pack_into("<H", raw, 16 + 2 * schema.Event.schema.node.struct.discriminantOffset, 900)
    return bytes(raw)


def test_events_the_schema_does_not_know_are_skipped_not_fatal(tmp_path: Path) -> None:
    schema = load_schema()
    cars = _events(10)  # logMonoTime 1010..1100
    path = tmp_path / "rlog"
    path.write_bytes(_unknown_event(schema, 1001) + cars[: len(cars) // 2] + _unknown_event(schema, 1050)
                     + cars[len(cars) // 2:])
    log = read_log(path, load_schema())
    assert log.events == 12 and log.unknown_events == 2
    assert len(log.streams["car"].times) == 10, "every event after an unknown one is still read"
    assert len(log.warnings) == 1 and "2 events of types this schema does not know" in log.warnings[0]


def _pose_log(kinds: tuple[str, ...]) -> bytes:
    schema = load_schema()
    out = []
    for i in range(5):
        t = 1000 + 100 * i
        for kind in kinds:
            ev = schema.Event.new_message(logMonoTime=t, valid=True)
            if kind == "liveLocationKalman":
                k = ev.init("liveLocationKalmanDEPRECATED")  # stock cereal's name of that ordinal
                for name, value in (("velocityDevice", [10.0 + i, 0.5, 0.0]), ("angularVelocityDevice", [0, 0, 0.1]),
                                    ("accelerationDevice", [0.2, 0, 0]), ("orientationNED", [0, 0.01, 1.0])):
                    m = getattr(k, name)
                    m.value, m.valid = value, True
            elif kind == "cameraOdometry":
                o = ev.init("cameraOdometry")
                o.trans, o.rot = [9.0, 0.0, 0.0], [0.0, 0.0, 0.3]
            else:
                p = ev.init("livePose")
                p.velocityDevice.x, p.velocityDevice.valid = 20.0, True
            out.append(ev.to_bytes())
    return b"".join(out)


def test_pose_from_live_location_kalman_where_no_live_pose(tmp_path: Path) -> None:
    from spark_distill.ingest.align import frame_log_arrays
    from spark_distill.ingest.logs import pose_source

    path = tmp_path / "rlog"
    path.write_bytes(_pose_log(("liveLocationKalman", "cameraOdometry")))
    log = read_log(path, load_schema())
    assert pose_source(log) == "liveLocationKalman"
    pose = frame_log_arrays(log, np.array([950, 1000, 1250]))["pose"]
    assert np.isnan(pose[0]).all(), "before the first message: no value"
    np.testing.assert_allclose(pose[2], [12.0, 0.5, 0, 0, 0, 0.1, 0.2, 0, 0, 0, 0.01, 1.0], rtol=1e-6)
    path.write_bytes(_pose_log(("livePose", "liveLocationKalman", "cameraOdometry")))
    assert pose_source(read_log(path, load_schema())) == "livePose"
    path.write_bytes(_pose_log(("cameraOdometry",)))
    assert pose_source(read_log(path, load_schema())) == "cameraOdometry"
