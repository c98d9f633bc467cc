# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Reading openpilot logs: compression sniffed from magic bytes, truncated tails kept, the streams
ingest needs pulled out as arrays. Main entry point: `read_log(path, schema)`.

Follows openpilot tools/lib/logreader.py (file -> bytes -> Event stream); unlike it, a corrupt or
truncated tail is not fatal: the readable prefix is kept and one warning says what was lost. Logs of
other releases and forks read too: an event whose union member the schema does not know (a fork's own
service) is counted and skipped, fields the schema lacks are ignored by Cap'n Proto, and the pose comes
from `livePose`, else the older `liveLocationKalman` (the schema's `liveLocationKalmanDEPRECATED`, same
ordinal), else the vision-only `cameraOdometry` (`POSE_SOURCES`; which one: `LogData.pose_source`).

The delays modeld feeds (`segment_delays`): `liveDelay.lateralDelay` (openpilot's own estimate, lagd) and the
car's `carParams` (`steerActuatorDelay`, `longitudinalActuatorDelay`, older logs' `...UpperBound`). The schema
openpilot-logging ships predates `liveDelay` (Event @146), so the default schema is that one with `liveDelay` and
its struct added, as openpilot's cereal declares them (`LIVE_DELAY_CAPNP`).
"""

from __future__ import annotations

import bz2
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import zstandard

from spark_distill.errors import CorruptLogError, IngestError, MissingDependencyError
from spark_distill.openpilot.modelv2 import row_from_message

log = logging.getLogger(__name__)

BZ2_MAGIC = b"BZh"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

CAR_COLUMNS = ("vEgo", "aEgo", "steeringAngleDeg", "steeringRateDeg", "yawRate", "leftBlinker",
               "rightBlinker", "gasPressed", "brakePressed", "standstill")
POSE_COLUMNS = ("vel_x", "vel_y", "vel_z", "angvel_x", "angvel_y", "angvel_z",
                "acc_x", "acc_y", "acc_z", "roll", "pitch", "yaw")
GPS_COLUMNS = ("latitude", "longitude", "altitude", "speed", "bearingDeg", "accuracy")
# stream name -> the event it comes from, best first: the fused estimate of today's releases, the fused estimate of
# older ones (locationd's Kalman filter, up to ~0.9.7), the model's own vision-only odometry
POSE_SOURCES = {"pose": "livePose", "pose_llk": "liveLocationKalman", "odometry": "cameraOdometry"}

# openpilot cereal's liveDelay (lagd's lateral delay estimate, ~4 Hz), which openpilot-logging's log.capnp predates:
# added to its Event union at openpilot's ordinal, the struct as openpilot declares it
LIVE_DELAY_ORDINAL = 146
LIVE_DELAY_MEMBER = f"    liveDelay @{LIVE_DELAY_ORDINAL} :LiveDelayData;\n"
LIVE_DELAY_CAPNP = """
struct LiveDelayData {
  lateralDelay @0 :Float32;
  validBlocks @1 :Int32;
  status @2 :Status;
  lateralDelayEstimate @3 :Float32;
  points @4 :List(Float32);
  lateralDelayEstimateStd @5 :Float32;
  calPerc @6 :Int8;

  enum Status {
    unestimated @0;
    estimated @1;
    invalid @2;
  }
}
"""
# modeld's delays where the log lacks them (selfdrive/modeld/modeld.py, selfdrive/locationd/lagd.py)
LONG_DELAY_FIELDS = ("longitudinalActuatorDelay", "longitudinalActuatorDelayUpperBound")
LAGD_INITIAL_EXTRA = 0.2  # s: lagd's first estimate (and the 2024 supercombo's lat delay) = steerActuatorDelay + 0.2


def load_schema(schema_dir: Path | None = None) -> ModuleType:
    """The cereal `log` schema: openpilot-logging's, or `schema_dir/log.capnp` for newer logs."""
    return _load_schema(str(schema_dir) if schema_dir else None)


@functools.lru_cache(maxsize=4)
def _load_schema(schema_dir: str | None) -> ModuleType:
    import capnp

    if schema_dir is None:
        try:
            import openpilot_logging.cereal as cereal
        except ImportError as e:
            raise MissingDependencyError("the cereal schema is missing: pip install openpilot-logging") from e
        return _with_live_delay(Path(cereal.__file__).parent, capnp)

    path = Path(schema_dir) / "log.capnp"
    if not path.is_file():
        raise IngestError(f"--schema-dir {schema_dir}: no log.capnp there")
    try:
        # a parser of its own: loading a second copy of cereal into the global parser aborts the process
        return capnp.SchemaParser().load(str(path), imports=[schema_dir])
    except Exception as e:  # pycapnp raises KjException for parse errors
        raise IngestError(f"--schema-dir {schema_dir}: cannot load log.capnp ({e})") from e


def _with_live_delay(cereal_dir: Path, capnp: ModuleType) -> ModuleType:
    """openpilot-logging's cereal `log` schema with `liveDelay` added (a copy, parsed by a parser of its own); the
    schema as shipped where it already has a member at that ordinal."""
    text = (cereal_dir / "log.capnp").read_text()
    last = "customReserved19 @145 :Custom.CustomReserved19;\n"
    if f"@{LIVE_DELAY_ORDINAL} " in text or f"@{LIVE_DELAY_ORDINAL}:" in text or last not in text:
        return capnp.SchemaParser().load(str(cereal_dir / "log.capnp"), imports=[str(cereal_dir)])
    text = text.replace(last, last + LIVE_DELAY_MEMBER) + LIVE_DELAY_CAPNP
    with tempfile.TemporaryDirectory(prefix="spark-distill-cereal-") as tmp:
        for f in cereal_dir.iterdir():
            if f.suffix == ".capnp" or f.name == "include":
                (shutil.copytree if f.is_dir() else shutil.copy)(f, Path(tmp) / f.name)
        (Path(tmp) / "log.capnp").write_text(text)
        return capnp.SchemaParser().load(str(Path(tmp) / "log.capnp"), imports=[tmp])


def _decompress_prefix(data: bytes, kind: str) -> tuple[bytes, str | None]:
    """Decompress as much as is readable. Returns (bytes, warning or None)."""
    out: list[bytes] = []
    try:
        if kind == "bz2":
            rest = data
            while rest:  # multi-stream bz2 (pbzip2-style) concatenates streams
                dec = bz2.BZ2Decompressor()
                out.append(dec.decompress(rest))
                if not dec.eof:
                    return b"".join(out), "bz2 stream truncated; kept the readable prefix"
                rest = dec.unused_data
        else:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            out.append(dobj.decompress(data))
            if not dobj.eof:
                return b"".join(out), "zstd stream truncated; kept the readable prefix"
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as e:
        return b"".join(out), f"{kind} stream corrupt ({e}); kept the readable prefix"
    return b"".join(out), None


def read_log_bytes(path: Path) -> tuple[bytes, list[str]]:
    """Raw Event bytes of a log file, by magic bytes (not extension), and any warnings."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptLogError(f"{path}: cannot read ({e.strerror})") from e
    if data.startswith(BZ2_MAGIC):
        raw, warn = _decompress_prefix(data, "bz2")
    elif data.startswith(ZSTD_MAGIC):
        raw, warn = _decompress_prefix(data, "zstd")
    else:
        raw, warn = data, None
    return raw, [warn] if warn else []


@dataclass
class Stream:
    """One log stream: message times (logMonoTime, ns) and one row of values per message."""

    times: np.ndarray  # (N,) int64
    values: np.ndarray  # (N, K) float64

    def at(self, t: np.ndarray) -> np.ndarray:
        """Latest value at or before each time in `t`; NaN rows where none exists yet."""
        idx = np.searchsorted(self.times, t, side="right") - 1
        out = np.full((len(t), self.values.shape[1]), np.nan)
        ok = idx >= 0
        out[ok] = self.values[idx[ok]]
        return out


@dataclass
class EncodeIndex:
    """Encode-index events of one camera: which file frame (segmentId) holds which camera frame."""

    segment_id: np.ndarray  # (N,) int64, index of the frame in this segment's video file
    frame_id: np.ndarray  # (N,) int64, camera frame id
    timestamp_eof: np.ndarray  # (N,) int64, ns, same clock as logMonoTime


@dataclass
class LogData:
    """What ingest needs from one segment's log."""

    path: Path
    streams: dict[str, Stream]
    encode: dict[str, EncodeIndex]  # "road" / "wide" / "qroad" (qcamera.ts)
    device_type: str = "unknown"
    version: str = ""
    events: int = 0
    warnings: list[str] = field(default_factory=list)
    modelv2: dict[int, np.ndarray] = field(default_factory=dict)  # frameId -> modelv2 row (the car's own model)
    road_sensor: str = ""  # roadCameraState.sensor where logged (ar0231, ox03c10, os04c10, ...)
    unknown_events: int = 0  # events of union members the schema does not know (forks' own services)


def _xyz(m: object) -> list[float]:
    return [m.x, m.y, m.z] if m.valid else [np.nan] * 3  # type: ignore[attr-defined]


def _row_car(cs: object) -> list[float]:
    return [float(getattr(cs, c)) for c in CAR_COLUMNS]


def _row_pose(p: object) -> list[float]:
    return _xyz(p.velocityDevice) + _xyz(p.angularVelocityDevice) + _xyz(p.accelerationDevice) + _xyz(
        p.orientationNED)  # type: ignore[attr-defined]


def _measurement(m: object) -> list[float]:
    value = list(m.value)  # type: ignore[attr-defined]
    return value if m.valid and len(value) == 3 else [np.nan] * 3  # type: ignore[attr-defined]


def _row_kalman(k: object) -> list[float]:
    """liveLocationKalman's Measurements (value/std/valid) as the same columns as livePose."""
    return _measurement(k.velocityDevice) + _measurement(k.angularVelocityDevice) + _measurement(
        k.accelerationDevice) + _measurement(k.orientationNED)  # type: ignore[attr-defined]


def _row_odometry(o: object) -> list[float]:
    trans, rot = list(o.trans), list(o.rot)  # type: ignore[attr-defined]
    return (trans if len(trans) == 3 else [np.nan] * 3) + (rot if len(rot) == 3 else [np.nan] * 3) + [np.nan] * 6


def _row_gps(g: object) -> list[float]:
    return [g.latitude, g.longitude, g.altitude, g.speed, g.bearingDeg, g.horizontalAccuracy]  # type: ignore[attr-defined]


def _row_calib(c: object) -> list[float]:
    rpy = list(c.rpyCalib)  # type: ignore[attr-defined]
    valid = float(str(c.calStatus) == "calibrated") if len(rpy) == 3 else 0.0  # type: ignore[attr-defined]
    return (rpy if len(rpy) == 3 else [0.0, 0.0, 0.0]) + [valid]


def _row_car_params(cp: object) -> list[float]:
    """[steerActuatorDelay, longitudinal actuator delay]: `longitudinalActuatorDelay`, or the older schemas' name of
    the same field (`longitudinalActuatorDelayUpperBound`, ordinal 58, before the bounds were merged); NaN where
    the schema has neither."""
    long_delay = next((float(getattr(cp, f)) for f in LONG_DELAY_FIELDS if hasattr(cp, f)), np.nan)
    return [float(getattr(cp, "steerActuatorDelay", np.nan)), long_delay]


def _row_lane_change(meta: object) -> list[float]:
    return [float(meta.laneChangeState.raw), float(meta.laneChangeDirection.raw)]  # type: ignore[attr-defined]


# event name -> (stream name, row function); first listed source of a stream wins where several exist
_EXTRACTORS = {
    "carState": ("car", lambda e: _row_car(e.carState)),
    "livePose": ("pose", lambda e: _row_pose(e.livePose)),
    "liveLocationKalman": ("pose_llk", lambda e: _row_kalman(e.liveLocationKalman)),  # a schema of its era
    "liveLocationKalmanDEPRECATED": ("pose_llk", lambda e: _row_kalman(e.liveLocationKalmanDEPRECATED)),
    "cameraOdometry": ("odometry", lambda e: _row_odometry(e.cameraOdometry)),
    "gpsLocationExternal": ("gps", lambda e: _row_gps(e.gpsLocationExternal)),
    "gpsLocation": ("gps_internal", lambda e: _row_gps(e.gpsLocation)),
    "liveCalibration": ("calibration", lambda e: _row_calib(e.liveCalibration)),
    "liveDelay": ("live_delay", lambda e: [float(e.liveDelay.lateralDelay), float(e.liveDelay.status.raw)]),
    "carParams": ("car_params", lambda e: _row_car_params(e.carParams)),
    "driverMonitoringState": ("rhd", lambda e: [float(e.driverMonitoringState.isRHD)]),
    "drivingModelData": ("lane_change", lambda e: _row_lane_change(e.drivingModelData.meta)),
    "modelV2": ("lane_change_v2", lambda e: _row_lane_change(e.modelV2.meta)),
    "lateralPlanDEPRECATED": ("lane_change_lp", lambda e: [
        float(e.lateralPlanDEPRECATED.laneChangeState.raw),
        float(e.lateralPlanDEPRECATED.laneChangeDirection.raw)]),
}
_ENCODE = {"roadEncodeIdx": "road", "wideRoadEncodeIdx": "wide", "qRoadEncodeIdx": "qroad"}
_INT64_END = 1 << 63


def read_log(path: Path, schema: ModuleType) -> LogData:
    """Parse one log file. Raises CorruptLogError when it holds no readable event."""
    raw, warnings = read_log_bytes(path)
    rows: dict[str, tuple[list[int], list[list[float]]]] = {}
    enc: dict[str, list[tuple[int, int, int, int]]] = {cam: [] for cam in _ENCODE.values()}
    device_type, version, sensor, count, unknown = "unknown", "", "", 0, 0
    modelv2: dict[int, np.ndarray] = {}
    try:
        for ev in schema.Event.read_multiple_bytes(raw):
            count += 1
            try:
                which = ev.which()
            except Exception:  # pycapnp: a union tag beyond the schema's (a fork's or a newer release's service)
                unknown += 1
                continue
            t = ev.logMonoTime
            if which == "modelV2":
                modelv2[int(ev.modelV2.frameId)] = row_from_message(ev.modelV2)
            if t >= _INT64_END:  # uint64 on the wire; past int64 it can only be a corrupt event
                raise ValueError(f"logMonoTime {t} out of range")
            if which in _ENCODE:
                e = getattr(ev, which)
                if e.timestampEof >= _INT64_END:
                    raise ValueError(f"timestampEof {e.timestampEof} out of range")
                enc[_ENCODE[which]].append((t, e.segmentId, e.frameId, e.timestampEof))
            elif which in _EXTRACTORS:
                name, row = _EXTRACTORS[which]
                value = row(ev)  # before appending: a corrupt event that raises here must leave both lists equal
                times, values = rows.setdefault(name, ([], []))
                times.append(t)
                values.append(value)
            elif which == "initData":
                device_type, version = str(ev.initData.deviceType), ev.initData.version
            elif which == "roadCameraState" and not sensor:
                sensor = str(ev.roadCameraState.sensor)
    except Exception as e:  # pycapnp raises KjException on a truncated or corrupt message
        warnings.append(f"log truncated or corrupt after {count} events ({(str(e).splitlines() or [''])[0][:120]})")
    if count == 0:
        raise CorruptLogError(f"{path}: no readable events")
    streams: dict[str, Stream] = {}
    for name, (times, values) in rows.items():
        t = np.asarray(times, dtype=np.int64)
        order = np.argsort(t, kind="stable")  # events sorted by logMonoTime
        streams[name] = Stream(t[order], np.asarray(values, dtype=np.float64)[order])
    encode = {}
    for cam, items in enc.items():
        arr = np.asarray(sorted(items), dtype=np.int64).reshape(-1, 4)
        encode[cam] = EncodeIndex(arr[:, 1], arr[:, 2], arr[:, 3])
    if unknown:
        warnings.append(f"{unknown} events of types this schema does not know were skipped (a fork's or a newer "
                        "release's services; --schema-dir reads them if they matter)")
    for w in warnings:
        log.debug("%s: %s", path, w)
    return LogData(path, streams, encode, device_type, version, count, warnings, modelv2, road_sensor=sensor,
                   unknown_events=unknown)


def pose_source(log: LogData) -> str:
    """The event the segment's pose columns come from (`POSE_SOURCES`), or "none"."""
    return next((event for name, event in POSE_SOURCES.items() if name in log.streams), "none")
