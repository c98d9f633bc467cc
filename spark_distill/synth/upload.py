# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""What a comma device uploads by default, for synthetic routes written in that form (`SynthConfig.upload`
"qlog"): `qlog.bz2`, the log with each service decimated as loggerd keeps it for the qlog, and `qcamera.ts`, the
road camera scaled to a small H.264 video in MPEG-TS, indexed by `qRoadEncodeIdx`.

Sources (commaai/openpilot): cereal/services.py, each service's (should_log, frequency, qlog decimation), the
qlog keeping 1 in `decimation` messages from the first; system/loggerd/loggerd.h, the qcamera encoder
(526x330 on comma 3/3X, 480x360 on EON, MAIN_FPS 20, H.264). A real comma 3 qlog of FrogPilot 0.9.7 (61.6 s)
shows the same rates: liveCalibration 59, carState 573 (10 Hz), cameraOdometry 229 (4 Hz), modelV2 29 (1 in
40), roadEncodeIdx / qRoadEncodeIdx / wideRoadEncodeIdx 1200 each (every frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av

from spark_distill.openpilot.modelframe import CAMERAS, QCAMERA_SIZES, CameraModel, scaled_camera
from spark_distill.synth.rlog import event

UPLOADS = ("full", "qlog")  # full: rlog + fcamera.hevc (+ ecamera.hevc); qlog: qlog + qcamera.ts
QCAMERA_FILE = "qcamera.ts"
QCAMERA_BITRATE = 256_000  # bit/s, loggerd's qcam bitrate in the releases of the 526x330 era
# cereal/services.py qlog decimation: keep 1 in n messages of each service; services not listed keep all
# (encode indices and initData: 1). Where a service's decimation changed between releases the current one is used,
# except modelV2: 1 in 40 as in the releases up to ~0.9.7 (the FrogPilot 0.9.7 qlog: 29 in 61.6 s); copies of
# newer services.py (0.10-era forks) keep no modelV2 in the qlog at all, only drivingModelData (1 in 10).
QLOG_DECIMATION = {"carState": 10, "livePose": 4, "liveLocationKalman": 5, "cameraOdometry": 5,
                   "liveCalibration": 4, "drivingModelData": 10, "modelV2": 40, "gpsLocationExternal": 10,
                   "driverMonitoringState": 10, "roadCameraState": 20, "wideRoadCameraState": 20}


def qcamera_camera(device: str) -> CameraModel:
    """The road camera of `device` (tici, eon) as qcamera.ts holds it: scaled as a whole to the qcamera's size."""
    size = next(s for s, d in QCAMERA_SIZES.items() if d == device)
    full = {"tici": (1928, 1208), "eon": (1164, 874)}[device]
    return scaled_camera(CAMERAS[full][0], *size)


def qcamera_encoder(path: Path, camera: CameraModel, fps: int) -> tuple[Any, Any]:
    """An H.264 encoder writing MPEG-TS at `path`, at the qcamera's size and bitrate."""
    out = av.open(str(path), "w", format="mpegts")
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = camera.width, camera.height, "yuv420p"
    stream.bit_rate = QCAMERA_BITRATE
    stream.options = {"preset": "ultrafast",
                      "x264-params": "keyint=20:min-keyint=20:scenecut=0:bframes=0:log-level=none"}
    return out, stream


def odometry_events(schema: Any, dyn: Any, t_start: int, frames: int, frame_ns: int, t0_ns: int
                    ) -> list[tuple[int, bytes]]:
    """cameraOdometry at 20 Hz (modeld's vision-only ego motion: device-frame velocity and angular rate), as
    every release logs it; the qlog keeps 1 in 5. `t0_ns`: logMonoTime of the drive's t = 0."""
    events = []
    for i in range(frames):
        tn = t_start + i * frame_ns + 30_000_000
        t = (tn - t0_ns) / 1e9

        def fill(b: Any, t: float = t) -> None:
            v = dyn.speed(t)
            b.trans = [v, dyn.lateral_velocity(t), 0.0]
            b.rot = [0.0, 0.0, v * dyn.curvature(t)]

        events.append(event(schema, tn, "cameraOdometry", fill))
    return events


def decimated(schema: Any, events: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """`events` (sorted by time) as a qlog keeps them: 1 in QLOG_DECIMATION[service], from each one's first."""
    seen: dict[str, int] = {}
    kept = []
    for t, raw in events:
        with schema.Event.from_bytes(raw) as ev:
            which = ev.which()
        n = seen.get(which, 0)
        seen[which] = n + 1
        if n % QLOG_DECIMATION.get(which, 1) == 0:
            kept.append((t, raw))
    return kept
