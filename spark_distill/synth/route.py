# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Synthetic openpilot route segments: real cereal logs and really encoded HEVC of a rendered road.

Main entry point: `write_route(out, SynthConfig(...))`, which returns what was written (including
the ground truth per camera frame, for tests). Faults a real drive shows can be injected into the
last segment: a truncated log, missing encode-index events, no wide camera, a corrupt HEVC tail,
frames dropped by the encoder. A route is named (dongle id, start) from the options that shape it
(`route_name`), unless the config names it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from spark_distill.errors import ConfigError
from spark_distill.ingest.logs import load_schema
from spark_distill.openpilot.modelframe import CAMERAS
from spark_distill.synth.logged_model import add_logged_model
from spark_distill.synth.rlog import event, write_log
from spark_distill.synth.scene import LANE_WIDTH, CarPose, SceneRenderer
from spark_distill.synth.upload import (
    QCAMERA_FILE,
    UPLOADS,
    decimated,
    odometry_events,
    qcamera_camera,
    qcamera_encoder,
)

log = logging.getLogger(__name__)

FPS = 20
FRAME_NS = 50_000_000
T0_NS = 10_000_000_000  # logMonoTime of the route's first frame
DEVICES = {"tici": (1928, 1208), "eon": (1164, 874)}
FAULTS = ("truncated-log", "missing-encode-idx", "missing-wide", "corrupt-video-tail", "encoder-drops", "no-delays")
LOG_FORMATS = ("bz2", "zst", "raw")
LANE_CHANGE_SECONDS = 4.0  # laneChangeStarting 2 s + laneChangeFinishing 2 s
PRE_LANE_CHANGE_SECONDS = 1.0
# the car's delays, as a car logs them: carParams once per segment (the car's constants), liveDelay 4 Hz (lagd's
# estimate, a little different in each segment and drifting within it, so a reader can tell which value it used)
STEER_ACTUATOR_DELAY = 0.12  # s, carParams.steerActuatorDelay
LONG_ACTUATOR_DELAY = 0.35  # s, carParams.longitudinalActuatorDelay (openpilot's default is 0.15)


def live_lateral_delay(n: int, fraction: float) -> float:
    """liveDelay.lateralDelay logged in segment `n` at `fraction` (0..1) of it: 0.30 s + 0.04 s per segment, rising
    0.02 s over the segment."""
    return 0.30 + 0.04 * n + 0.02 * fraction


LANE_WIDTHS = (3.2, 4.0)  # m, a varied drive's lane width is drawn from this range (city lanes to motorways)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What to synthesize. Defaults: a 2-segment comma 3X route with a lane change."""

    segments: int = 2
    seconds: float = 10.0  # per segment; real segments are 60 s
    device: str = "tici"  # tici: 1928x1208 road + wide; eon: 1164x874 road only
    log_format: str = "bz2"
    lane_change_at: float | None = None  # s from route start; None: the middle of the route
    rhd: bool = False  # right-hand drive (driverMonitoringState.isRHD)
    rpy: tuple[float, float, float] = (0.0, 0.03, -0.02)  # liveCalibration.rpyCalib, rad
    # the route's name; None: derived from the options that shape the drive (`route_name`), so drives made with other
    # seeds or options can be ingested into one dataset, and the same options always give the same name
    dongle: str | None = None  # 16 hex digits
    start: str | None = None  # YYYY-MM-DD--HH-MM-SS
    layout: str = "tools"  # tools: <dongle>_<start>--<n>; device: <start>--<n>
    faults: tuple[str, ...] = ()  # injected into the last segment
    seed: int = 0
    crf: int = 28  # x265 quality
    modelv2_teacher: Path | None = None  # log modelV2 from this teacher run over the route (as a car logs its model)
    varied: bool = False  # draw the drive (curvature, speed, lead, lane change, lane width, calibration) from the seed
    # what the device uploaded (synth/upload.py): full (rlog + fcamera.hevc + ecamera.hevc) or qlog (qlog + qcamera.ts,
    # what a device uploads by default)
    upload: str = "full"
    driver: str | None = None  # a driving style the teacher does not have (`parse_driver`): keep-left:0.4, gap:2.5

    def __post_init__(self) -> None:
        if self.upload not in UPLOADS:
            raise ConfigError(f"unknown upload {self.upload!r}; choose one of {', '.join(UPLOADS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"unknown log format {self.log_format!r}; choose one of {', '.join(LOG_FORMATS)}")
        if bad := [f for f in self.faults if f not in FAULTS]:
            raise ConfigError(f"unknown fault {bad[0]!r}; choose from {', '.join(FAULTS)}")
        if self.segments < 1 or self.seconds < 1.0:
            raise ConfigError("need at least 1 segment of at least 1 s")
        if self.layout not in ("tools", "device"):
            raise ConfigError(f"unknown layout {self.layout!r}; choose tools or device")
        if self.dongle is not None and not re.fullmatch(r"[0-9a-f]{16}", self.dongle):
            raise ConfigError(f"dongle {self.dongle!r}: a dongle id is 16 lowercase hex digits")
        if self.start is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}--\d{2}-\d{2}-\d{2}", self.start):
            raise ConfigError(f"start {self.start!r}: write it as YYYY-MM-DD--HH-MM-SS")
        if self.driver is not None:
            parse_driver(self.driver)


@dataclass(frozen=True)
class DriverStyle:
    """How a synthetic driver differs from the drives the fitted teacher learnt: where in the lane the car is held
    (`offset`, m right of the lane centre; negative: left) and the lead car's distance as a time gap (`gap`, s at
    the car's speed; None: the drive's own lead distance)."""

    offset: float = 0.0
    gap: float | None = None


DRIVER_FORMS = "keep-left:M, keep-right:M (metres from the lane centre, 0..1), gap:S (seconds behind the lead, 0.5..4)"


def parse_driver(spec: str) -> DriverStyle:
    """`keep-left:0.4` (held 0.4 m left of the lane centre), `keep-right:0.3`, `gap:2.5` (the lead 2.5 s ahead);
    several joined by commas (`keep-left:0.4,gap:2.5`). ConfigError on anything else."""
    offset, gap = 0.0, None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, value = part.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if kind in ("keep-left", "keep-right") and 0.0 <= number <= 1.0:
            offset = -number if kind == "keep-left" else number
        elif kind == "gap" and 0.5 <= number <= 4.0:
            gap = number
        else:
            raise ConfigError(f"--driver {spec!r}: {part!r} is not one of {DRIVER_FORMS}")
    if not spec.strip():
        raise ConfigError(f"--driver is empty; give one of {DRIVER_FORMS}")
    return DriverStyle(offset, gap)


def route_name(cfg: SynthConfig) -> tuple[str, str]:
    """(dongle id, start) of a synthetic route: those `cfg` gives, else derived from a digest of every option that
    changes what is written (seed, varied, device, faults, segments, seconds, lane change, calibration, log format,
    quality, the logged teacher's files; not the folder layout). Two drives that differ never share a segment name;
    the same options give the same name on every run."""
    teacher = None
    if cfg.modelv2_teacher is not None:
        files = sorted(cfg.modelv2_teacher.glob("*.onnx")) if cfg.modelv2_teacher.is_dir() else []
        teacher = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] or str(cfg.modelv2_teacher)
    options = {"segments": cfg.segments, "seconds": float(cfg.seconds), "device": cfg.device,
               "log_format": cfg.log_format, "rhd": cfg.rhd, "rpy": [float(a) for a in cfg.rpy],
               "lane_change_at": None if cfg.lane_change_at is None else float(cfg.lane_change_at),
               "faults": sorted(set(cfg.faults)), "seed": cfg.seed, "crf": cfg.crf, "varied": cfg.varied,
               "modelv2_teacher": teacher, "dongle": cfg.dongle, "start": cfg.start}
    if cfg.upload != "full":  # only then: the names of full-upload drives stay what they were
        options["upload"] = cfg.upload
    if cfg.driver is not None:  # only when set: the names of drives without one stay what they were
        options["driver"] = dataclasses.asdict(parse_driver(cfg.driver))
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    start = datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=int(digest[16:28], 16) % (365 * 86400))
    return cfg.dongle or digest[:16], cfg.start or start.strftime("%Y-%m-%d--%H-%M-%S")


@dataclass(frozen=True)
class Drive:
    """The numbers of a drive: speed v0 + dv sin(wv t), road curvature k sin(wk t), a lateral wiggle, the lead
    car at d0 + dd sin(wd t) in the middle lane, one lane change (direction -1 left, +1 right)."""

    v0: float = 20.0  # m/s
    dv: float = 5.0
    wv: float = 0.1  # rad/s
    k: float = 0.002  # 1/m
    wk: float = 0.15
    wiggle: float = 0.3  # m
    d0: float = 25.0  # m
    dd: float = 8.0
    wd: float = 0.3
    direction: int = -1
    lane_width: float = LANE_WIDTH  # m


def varied_drive(rng: np.random.Generator) -> Drive:
    """A drive drawn from ranges that hold the classic one (Drive()): what the fitted teacher learns from."""
    return Drive(v0=rng.uniform(14.0, 28.0), dv=rng.uniform(0.0, 5.0), wv=rng.uniform(0.05, 0.15),
                 k=rng.uniform(0.0, 0.003), wk=rng.uniform(0.05, 0.3), wiggle=rng.uniform(0.0, 0.4),
                 d0=rng.uniform(15.0, 45.0), dd=rng.uniform(0.0, 10.0), wd=rng.uniform(0.1, 0.5),
                 direction=int(rng.choice([-1, 1])))


def varied_rpy(rng: np.random.Generator) -> tuple[float, float, float]:
    """Calibration angles (rad) as mounted devices show them: a little roll, a few degrees of pitch and yaw."""
    return (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05)))


def resolved(cfg: SynthConfig) -> tuple[Drive, tuple[float, float, float], float | None]:
    """(drive, calibration rpy, lane-change start or None for the middle) that `cfg` stands for."""
    if not cfg.varied:
        return Drive(), cfg.rpy, cfg.lane_change_at
    rng = np.random.default_rng([cfg.seed, 17])  # its own stream: the phases below keep cfg.seed's
    drive, rpy = varied_drive(rng), varied_rpy(rng)
    # drawn last, so the numbers above stay what they were before lane widths varied
    drive = dataclasses.replace(drive, lane_width=float(rng.uniform(*LANE_WIDTHS)))
    return drive, rpy, cfg.lane_change_at


class Dynamics:
    """The drive as smooth functions of time t (s from the route start)."""

    def __init__(self, cfg: SynthConfig, route_seconds: float) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.phase = rng.uniform(0, 2 * math.pi, size=4)
        self.drive, self.rpy, at = resolved(cfg)
        if at is None and cfg.varied:  # anywhere that leaves the whole manoeuvre inside the route
            at = float(rng.uniform(0.15, 0.85) * max(route_seconds - LANE_CHANGE_SECONDS, 0.0))
        self.lc = at if at is not None else route_seconds / 2
        self.style = parse_driver(cfg.driver) if cfg.driver is not None else DriverStyle()

    def speed(self, t: float) -> float:
        d = self.drive
        return d.v0 + d.dv * math.sin(d.wv * t + self.phase[0])

    def accel(self, t: float) -> float:
        d = self.drive
        return d.dv * d.wv * math.cos(d.wv * t + self.phase[0])

    def distance(self, t: float) -> float:
        d = self.drive
        return d.v0 * t - d.dv / d.wv * (math.cos(d.wv * t + self.phase[0]) - math.cos(self.phase[0]))

    def curvature(self, t: float) -> float:
        return self.drive.k * math.sin(self.drive.wk * t + self.phase[1])

    def lane_change_progress(self, t: float) -> float:
        x = min(max((t - self.lc) / LANE_CHANGE_SECONDS, 0.0), 1.0)
        return x * x * (3 - 2 * x)  # smoothstep

    def lateral(self, t: float) -> float:
        d = self.drive
        return (d.direction * d.lane_width * self.lane_change_progress(t) + d.wiggle * math.sin(0.4 * t + self.phase[2])
                + self.style.offset)

    def lateral_velocity(self, t: float, dt: float = 1e-3) -> float:
        return (self.lateral(t + dt) - self.lateral(t - dt)) / (2 * dt)

    def lead_distance(self, t: float) -> float:
        d = self.drive
        base = d.d0 if self.style.gap is None else self.style.gap * self.speed(t)
        return base + d.dd * math.sin(d.wd * t + self.phase[3])

    def lead_rate(self, t: float) -> float:
        """d/dt of the lead distance: the lead's speed relative to ours, m/s."""
        d = self.drive
        held = 0.0 if self.style.gap is None else self.style.gap * self.accel(t)
        return held + d.dd * d.wd * math.cos(d.wd * t + self.phase[3])

    def lane_change_state(self, t: float) -> tuple[str, str]:
        """(laneChangeState, laneChangeDirection) as openpilot's DesireHelper would log them."""
        dt = t - self.lc
        direction = "left" if self.drive.direction < 0 else "right"
        if -PRE_LANE_CHANGE_SECONDS <= dt < 0:
            return "preLaneChange", direction
        if 0 <= dt < LANE_CHANGE_SECONDS / 2:
            return "laneChangeStarting", direction
        if LANE_CHANGE_SECONDS / 2 <= dt < LANE_CHANGE_SECONDS:
            return "laneChangeFinishing", direction
        return "off", "none"

    def pose(self, t: float) -> CarPose:
        return CarPose(self.distance(t), self.lateral(t), self.curvature(t), self.lead_distance(t),
                       self.drive.lane_width)

    def lane_width(self, t: float) -> float:
        """m; constant over a drive (a function of t like the rest of the scene state)."""
        return self.drive.lane_width


@dataclass
class SegmentTruth:
    """What a segment holds, per camera frame (encoded or not), for tests."""

    name: str
    path: Path
    frame_ids: list[int] = field(default_factory=list)
    t_eof: list[int] = field(default_factory=list)
    in_video: list[bool] = field(default_factory=list)  # encoded into fcamera.hevc
    indexed: list[bool] = field(default_factory=list)  # has a roadEncodeIdx event
    has_wide: bool = True
    faults: tuple[str, ...] = ()


def segment_dir_name(cfg: SynthConfig, n: int) -> str:
    dongle, start = route_name(cfg)
    return f"{dongle}_{start}--{n}" if cfg.layout == "tools" else f"{start}--{n}"


def _encoder(path: Path, width: int, height: int, crf: int) -> tuple[av.container.OutputContainer, av.VideoStream]:
    out = av.open(str(path), "w", format="hevc")
    stream = out.add_stream("libx265", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": str(crf),
                      "x265-params": "log-level=none:keyint=20:min-keyint=20:scenecut=0:bframes=0"}
    return out, stream


def _video_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """An I420 VideoFrame from planes (works for odd chroma heights, e.g. 1164x874, unlike from_ndarray)."""
    frame = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v), strict=True):
        rows = np.zeros((plane.height, plane.line_size), np.uint8)
        rows[:, : data.shape[1]] = data
        plane.update(rows.tobytes())
    return frame


def write_segment(out: Path, cfg: SynthConfig, n: int, dyn: Dynamics, faults: tuple[str, ...] = (), *,
                  on_frame: Callable[[], None] | None = None) -> SegmentTruth:
    """Write segment n of the route into out/<segment dir> and return its truth; `on_frame()` after each frame."""
    schema = load_schema()
    width, height = DEVICES[cfg.device]
    road_cam, wide_cam = CAMERAS[(width, height)]
    has_wide = wide_cam is not None and "missing-wide" not in faults
    qlog = cfg.upload == "qlog"  # the road camera as qcamera.ts only; the log decimated as a qlog
    seg = out / segment_dir_name(cfg, n)
    seg.mkdir(parents=True, exist_ok=True)
    truth = SegmentTruth(name=seg.name, path=seg, has_wide=has_wide and not qlog, faults=faults)
    frames = round(cfg.seconds * FPS)
    first = n * frames  # route-wide camera frame id
    renderers = {"road": SceneRenderer(qcamera_camera(cfg.device) if qlog else road_cam, dyn.rpy)}
    if has_wide and not qlog:
        renderers["wide"] = SceneRenderer(wide_cam, dyn.rpy)
    encoders = {cam: _encoder(seg / ("fcamera.hevc" if cam == "road" else "ecamera.hevc"), width, height, cfg.crf)
                for cam in renderers} if not qlog else {"road": qcamera_encoder(seg / QCAMERA_FILE,
                                                                                 renderers["road"].camera, FPS)}
    # encoder drops: the camera produced the frame, the encoder never wrote it
    dropped = {first + 7, first + 8} if "encoder-drops" in faults else set()
    unindexed = {first + 12, first + 13, first + 14} if "missing-encode-idx" in faults else set()
    events: list[tuple[int, bytes]] = []
    t_start = T0_NS + first * FRAME_NS

    def init(b):
        b.deviceType = "neo" if cfg.device == "eon" else cfg.device
        b.version = "0.10.1-synth"
        b.dongleId = route_name(cfg)[0]

    events.append(event(schema, t_start - 1_000_000, "initData", init))
    segment_ids = dict.fromkeys(renderers, 0)
    for i in range(frames):
        fid = first + i
        sof = T0_NS + fid * FRAME_NS
        eof = sof + 20_000_000
        t = (sof - T0_NS) / 1e9
        truth.frame_ids.append(fid)
        truth.t_eof.append(eof)
        truth.in_video.append(fid not in dropped)
        truth.indexed.append(fid not in dropped and fid not in unindexed)
        pose = dyn.pose(t)
        for cam, renderer in renderers.items():
            state = "roadCameraState" if cam == "road" else "wideRoadCameraState"

            def cam_state(b, fid=fid, sof=sof, eof=eof):
                b.frameId, b.timestampSof, b.timestampEof = fid, sof, eof
                b.sensor = "ox03c10" if cfg.device == "tici" else "unknown"

            events.append(event(schema, eof + 1_000_000, state, cam_state))
            if fid in dropped:
                continue
            container, stream = encoders[cam]
            frame = _video_frame(*renderer.render(pose))
            for packet in stream.encode(frame):
                container.mux(packet)
            sid = segment_ids[cam]
            segment_ids[cam] += 1
            if fid in unindexed:
                continue

            def enc(b, fid=fid, sid=sid, sof=sof, eof=eof):
                b.frameId, b.segmentNum, b.segmentId, b.segmentIdEncode = fid, n, sid, sid
                b.encodeId, b.timestampSof, b.timestampEof, b.type = fid, sof, eof, "fullHEVC"

            which = "roadEncodeIdx" if cam == "road" else "wideRoadEncodeIdx"
            events.append(event(schema, eof + 5_000_000, which, enc))
            if qlog:  # the full-resolution encoders still ran (their indices are in the qlog); the qcamera's own
                for other in ("wideRoadEncodeIdx",) if has_wide else ():
                    events.append(event(schema, eof + 5_000_000, other, enc))

                def qenc(b, fid=fid, sid=sid, sof=sof, eof=eof):
                    enc(b, fid, sid, sof, eof)
                    b.type = "qcameraH264"

                events.append(event(schema, eof + 6_000_000, "qRoadEncodeIdx", qenc))
        if on_frame is not None:
            on_frame()
    for container, stream in encoders.values():
        for packet in stream.encode():
            container.mux(packet)
        container.close()
    events += _state_events(schema, cfg, dyn, t_start, frames)
    if "no-delays" not in faults:  # a log of a release (or fork) without lagd, from a car without carParams logged
        events += _delay_events(schema, n, t_start, frames)
    if qlog:
        events += odometry_events(schema, dyn, t_start, frames, FRAME_NS, T0_NS)
    events.sort(key=lambda e: e[0])
    if qlog:
        events = decimated(schema, events)
    write_log(seg, cfg.log_format, b"".join(b for _, b in events), truncated="truncated-log" in faults,
              name="qlog" if qlog else "rlog")
    if "corrupt-video-tail" in faults:
        _corrupt_tail(seg / (QCAMERA_FILE if qlog else "fcamera.hevc"), cfg.seed)
    return truth


def _state_events(schema, cfg: SynthConfig, dyn: Dynamics, t_start: int, frames: int) -> list[tuple[int, bytes]]:
    """carState 100 Hz, livePose/drivingModelData 20 Hz, gps 10 Hz, calibration and DM 4 Hz."""
    events = []
    span = frames * FRAME_NS
    for k in range(0, span, 10_000_000):
        tn = t_start + k + 3_000_000
        t = (tn - T0_NS) / 1e9
        state, direction = dyn.lane_change_state(t)

        def car(b, t=t, state=state, direction=direction):
            v = dyn.speed(t)
            b.vEgo, b.aEgo = v, dyn.accel(t)
            b.steeringAngleDeg = math.degrees(dyn.curvature(t) * 2.7 * 15.0)
            b.steeringRateDeg = 0.0
            b.yawRate = v * dyn.curvature(t)
            b.leftBlinker = state != "off" and direction == "left"
            b.rightBlinker = state != "off" and direction == "right"
            b.gasPressed = b.brakePressed = b.standstill = False

        events.append(event(schema, tn, "carState", car))
        if k % 50_000_000 == 0:
            def pose(b, t=t):
                v, kappa = dyn.speed(t), dyn.curvature(t)
                for name, xyz in (("velocityDevice", (v, dyn.lateral_velocity(t), 0.0)),
                                  ("angularVelocityDevice", (0.0, 0.0, v * kappa)),
                                  ("accelerationDevice", (dyn.accel(t), v * v * kappa, 0.0)),
                                  ("orientationNED", (0.0, 0.0, 0.0))):
                    m = getattr(b, name)
                    m.x, m.y, m.z = xyz
                    m.valid = True

            def dmd(b, state=state, direction=direction):
                b.meta.laneChangeState, b.meta.laneChangeDirection = state, direction

            events.append(event(schema, tn + 1_000_000, "livePose", pose))
            events.append(event(schema, tn + 2_000_000, "drivingModelData", dmd))
        if k % 100_000_000 == 0:
            def gps(b, t=t):
                b.latitude = 37.0 + dyn.distance(t) / 111_000.0
                b.longitude, b.altitude = -122.0, 10.0
                b.speed, b.bearingDeg, b.horizontalAccuracy = dyn.speed(t), 0.0, 3.0

            events.append(event(schema, tn + 4_000_000, "gpsLocationExternal", gps))
        if k % 250_000_000 == 0:
            def calib(b):
                b.rpyCalib = list(dyn.rpy)
                b.calStatus = "calibrated"

            def dm(b):
                b.isRHD = cfg.rhd

            events.append(event(schema, tn + 5_000_000, "liveCalibration", calib))
            events.append(event(schema, tn + 6_000_000, "driverMonitoringState", dm))
    return events


def _delay_events(schema, n: int, t_start: int, frames: int) -> list[tuple[int, bytes]]:
    """carParams at the segment's start, liveDelay 4 Hz (`live_lateral_delay`)."""
    def params(b):
        b.steerActuatorDelay, b.longitudinalActuatorDelay = STEER_ACTUATOR_DELAY, LONG_ACTUATOR_DELAY

    events = [event(schema, t_start - 500_000, "carParams", params)]
    span = frames * FRAME_NS
    for k in range(0, span, 250_000_000):
        def delay(b, k=k):
            b.lateralDelay = live_lateral_delay(n, k / span)
            b.status = "estimated"

        events.append(event(schema, t_start + k + 7_000_000, "liveDelay", delay))
    return events


def _corrupt_tail(path: Path, seed: int) -> None:
    data = path.read_bytes()
    cut = int(len(data) * 0.85)
    garbage = np.random.default_rng(seed).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    path.write_bytes(data[:cut] + garbage)


def miscalibrate(segment: Path, error: tuple[float, float, float]) -> None:
    """Add `error` (rad) to every logged liveCalibration of a written segment: the frames stay as rendered, so
    ingest warps them with a wrong calibration (a geometry fault the fitted teacher's eval must catch)."""
    from spark_distill.ingest.logs import read_log_bytes

    schema = load_schema()
    log_path = next(p for p in segment.iterdir() if p.name.startswith("rlog"))
    raw, _ = read_log_bytes(log_path)
    events = []
    for reader in schema.Event.read_multiple_bytes(raw):
        ev = reader.as_builder()
        if ev.which() == "liveCalibration":
            ev.liveCalibration.rpyCalib = [a + e for a, e in zip(ev.liveCalibration.rpyCalib, error, strict=True)]
        events.append(ev.to_bytes())
    fmt = {"rlog": "raw", "rlog.bz2": "bz2", "rlog.zst": "zst"}[log_path.name]
    write_log(segment, fmt, b"".join(events), truncated=False)


def _write_one(out: Path, cfg: SynthConfig, n: int, on_frame: Callable[[], None] | None = None) -> SegmentTruth:
    """Segment n of the route (a worker process's task: the drive is rebuilt from cfg, a pure function of it)."""
    faults = cfg.faults if n == cfg.segments - 1 else ()
    return write_segment(out, cfg, n, Dynamics(cfg, cfg.segments * cfg.seconds), faults, on_frame=on_frame)


def write_route(out: Path, cfg: SynthConfig, *, workers: int = 1,
                on_progress: Callable[[int, int, str], None] | None = None) -> list[SegmentTruth]:
    """Write cfg.segments segments under `out`; faults go into the last one. `workers` > 1 renders and encodes
    segments in that many processes (0: one per core); every segment is the same whatever the count.
    `on_progress(frames_written, frames, note)`: after each frame (each segment with workers)."""
    import os

    out.mkdir(parents=True, exist_ok=True)
    workers = min(cfg.segments, workers or os.cpu_count() or 1)
    per_segment = round(cfg.seconds * FPS)
    total, done = cfg.segments * per_segment, [0]

    def frame_written() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], total, "")

    if on_progress is not None:
        on_progress(0, total, "")
    if workers > 1:
        import multiprocessing as mp

        from spark_distill.processes import child_init

        with mp.get_context("spawn").Pool(workers, initializer=child_init, initargs=(os.getpid(),)) as pool:
            truths = []
            for truth in pool.imap(functools.partial(_write_one, out, cfg), range(cfg.segments)):
                truths.append(truth)
                done[0] += per_segment - 1
                frame_written()
    else:
        truths = [_write_one(out, cfg, n, frame_written) for n in range(cfg.segments)]
    for t in truths:
        log.info("wrote %s", t.path)
    if cfg.modelv2_teacher is not None:

        if on_progress is not None:
            on_progress(total, total, "logging the teacher's outputs as modelV2")
        add_logged_model(out, truths, cfg, cfg.modelv2_teacher)
        if on_progress is not None:
            on_progress(total, total, "")
    return truths
