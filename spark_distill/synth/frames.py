# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Synthetic drives written straight as a frames dataset: the model frames rendered as the fitted teacher's fit
renders them (`synth.fit.model_frame_renderers`: the calibrated frames ingest's warp makes of any calibration,
~30x cheaper than rendering cameras, encoding HEVC, decoding and warping), with the per-frame arrays ingest
writes from the log a route of the same drive holds (desire, car state, pose, traffic convention, GPS, meta).
Segment names, sample keys, members, shards and the manifest are ingest's (docs/formats.md, "Frames dataset"),
so label, train and eval read the result as any ingested dataset. Drives render in parallel, one process per
drive at a time; the shards are the same whatever the worker count.
Entry point: `write_dataset(root, configs, workers=...)`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill import __version__
from spark_distill.data import arrays, codecs, shards
from spark_distill.errors import ConfigError
from spark_distill.ingest.align import desire_onehot, traffic_onehot
from spark_distill.ingest.logs import CAR_COLUMNS, GPS_COLUMNS, POSE_COLUMNS
from spark_distill.openpilot.modelv2 import columns as modelv2_columns
from spark_distill.synth.route import FPS, FRAME_NS, T0_NS, Dynamics, SynthConfig, route_name

LANE_STATES = {"off": 0, "preLaneChange": 1, "laneChangeStarting": 2, "laneChangeFinishing": 3}
DIRECTIONS = {"none": 0, "left": 1, "right": 2}
EOF_NS = 20_000_000  # a frame's timestampEof after its start of frame, as synth.route logs it
LOGGED_AFTER_NS = 3_000_000  # livePose / drivingModelData (20 Hz): the message a frame's time samples
CAR_AFTER_NS = 13_000_000  # carState (100 Hz): the last message before the frame's timestampEof


@dataclass(frozen=True, kw_only=True)
class FramesConfig:
    """How the dataset is cut and stored (ingest's settings of the same names)."""

    clip_len: int = 20
    shard_clips: int = 50
    codec: str = codecs.DEFAULT_CODEC

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.shard_clips < 1:
            raise ConfigError("clip length and clips per shard must be >= 1")
        codecs.get_codec(self.codec)


def segment_names(cfg: SynthConfig) -> list[str]:
    """The segments' names as ingest records them for the route `write_route(cfg)` writes."""
    dongle, start = route_name(cfg)
    return [f"{dongle}|{start}--{n}" for n in range(cfg.segments)]


def logged_arrays(dyn: Dynamics, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame arrays as ingest samples them from the route's log at frame times `t` (s from the route start):
    desire (N, 8), car (N, 10), pose (N, 12), gps (N, 6)."""
    rows_lc, car, pose, gps = [], [], [], []
    for x in t:
        tl = float(x) + LOGGED_AFTER_NS / 1e9
        state, direction = dyn.lane_change_state(tl)
        rows_lc.append([LANE_STATES[state], DIRECTIONS[direction]])
        tc = float(x) + CAR_AFTER_NS / 1e9
        sc, dc = dyn.lane_change_state(tc)
        v, kappa = dyn.speed(tc), dyn.curvature(tc)
        car.append([v, dyn.accel(tc), math.degrees(kappa * 2.7 * 15.0), 0.0, v * kappa, sc != "off" and dc == "left",
                    sc != "off" and dc == "right", 0.0, 0.0, 0.0])
        v, kappa, a = dyn.speed(tl), dyn.curvature(tl), dyn.accel(tl)
        pose.append([v, dyn.lateral_velocity(tl), 0.0, 0.0, 0.0, v * kappa, a, v * v * kappa, 0.0, 0.0, 0.0, 0.0])
        tg = math.floor(float(x) * 10) / 10 + LOGGED_AFTER_NS / 1e9  # gps at 10 Hz
        gps.append([37.0 + dyn.distance(tg) / 111_000.0, -122.0, 10.0, dyn.speed(tg), 0.0, 3.0])
    return {"desire": desire_onehot(np.array(rows_lc, np.float64)), "car": np.array(car, np.float32),
            "pose": np.array(pose, np.float32), "gps": np.array(gps, np.float64)}


def drive_samples(cfg: SynthConfig, settings: FramesConfig) -> list[tuple[str, list[tuple[dict[str, Any], int]]]]:
    """Per segment of the drive: (segment name, [(encoded sample, frames)]) — a worker's task."""
    from spark_distill.synth.fit import model_frame_renderers, render_model_frame

    renderers = model_frame_renderers()
    route_s = cfg.segments * cfg.seconds
    dyn = Dynamics(cfg, route_s)
    per = round(cfg.seconds * FPS)
    traffic = traffic_onehot(cfg.rhd)
    out = []
    for n, seg in enumerate(segment_names(cfg)):
        fids = np.arange(n * per, (n + 1) * per)
        t = fids / FPS
        logged = logged_arrays(dyn, t)
        frames = {cam: np.stack([render_model_frame(r, dyn.pose(float(x))) for x in t]) for cam, r in renderers.items()}
        stamps = (T0_NS + fids * FRAME_NS + EOF_NS).astype(np.int64)
        samples = []
        for clip, lo in enumerate(range(0, per, settings.clip_len)):
            hi = min(lo + settings.clip_len, per)
            meta = {"segment": seg, "clip": clip, "frame_ids": fids[lo:hi].tolist(),
                    "timestamps_ns": stamps[lo:hi].tolist(), "cameras": {"road": "fcamera.hevc",
                                                                           "wide": "ecamera.hevc"},
                    "calibration": {"rpy": list(dyn.rpy), "valid": True, "rpy_per_frame": [list(dyn.rpy)] * (hi - lo)},
                    "flags": ["rendered"]}
            sample = {"__key__": shards.clip_key(seg, clip),
                      **shards.encode_cameras({cam: frames[cam][lo:hi] for cam in ("road", "wide")},
                                              codec=settings.codec),
                      "desire.npy.zst": arrays.encode_array(logged["desire"][lo:hi]),
                      "traffic.npy.zst": arrays.encode_array(traffic),
                      "car.npy.zst": arrays.encode_array(logged["car"][lo:hi]),
                      "pose.npy.zst": arrays.encode_array(logged["pose"][lo:hi]),
                      "gps.npy.zst": arrays.encode_array(logged["gps"][lo:hi]),
                      "meta.json": json.dumps(meta, sort_keys=True).encode()}
            samples.append((sample, hi - lo))
        out.append((seg, samples))
    return out


def _task(args: tuple[SynthConfig, FramesConfig]) -> list[tuple[str, list[tuple[dict[str, Any], int]]]]:
    return drive_samples(*args)


def _manifest(settings: FramesConfig) -> dict[str, Any]:
    return {"format": shards.FRAMES_FORMAT, "version": shards.FORMAT_VERSION, "tool": f"spark-distill {__version__}",
            "settings": {"clip_len": settings.clip_len, "cameras": ["road", "wide"], "log_kind": "auto",
                         "shard_clips": settings.shard_clips, "codec": settings.codec, "crf": None},
            "car_columns": list(CAR_COLUMNS), "pose_columns": list(POSE_COLUMNS), "gps_columns": list(GPS_COLUMNS),
            "modelv2_columns": modelv2_columns(), "shards": [], "segments": [], "skipped": [], "partial": None,
            "source": "rendered (spark_distill.synth.frames)"}


def write_dataset(root: Path, configs: list[SynthConfig], *, settings: FramesConfig = FramesConfig(),
                  workers: int = 1, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Render the drives of `configs` into `root/frames/` (shards + manifest, as ingest writes them) and return
    the manifest. `workers` processes render drives in parallel (0: one per core); `on_progress(drives done,
    drives)`. The folder must not hold a dataset already."""
    folder = root / "frames"
    if (folder / shards.MANIFEST).exists():
        raise ConfigError(f"{folder} holds a dataset already; choose another folder")
    names = [n for c in configs for n in segment_names(c)]
    if len(set(names)) != len(names):
        raise ConfigError("two of the drives share a segment name (same options and seed)")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(settings)
    workers = min(len(configs), workers or os.cpu_count() or 1)
    writer: shards.ShardWriter | None = None
    written: list[shards.ShardInfo] = []

    def close() -> None:
        nonlocal writer
        if writer is not None:
            info = writer.close()
            written.append(info)
            manifest["shards"].append(info.to_json())
            writer = None

    jobs = [(c, settings) for c in configs]
    if on_progress is not None:
        on_progress(0, len(configs))
    results = _results(jobs, workers)
    for done, drive in enumerate(results, 1):
        for seg, samples in drive:
            for sample, frames in samples:
                if writer is None:
                    writer = shards.ShardWriter(folder, shards.shard_name(len(manifest["shards"])),
                                                shards.FRAMES_MEMBERS)
                writer.write(sample, frames=frames)
                if writer.samples >= settings.shard_clips:
                    close()
            kept = sum(f for _, f in samples)
            manifest["segments"].append({"name": seg, "sources": {"rendered": "model frames"}, "log": "rendered",
                                         "frames_kept": kept, "frames_dropped": 0, "clips": len(samples),
                                         "dropped": {}, "warnings": []})
        if on_progress is not None:
            on_progress(done, len(configs))
    close()
    shards.write_manifest(folder, manifest)
    shards.record_verified(folder / shards.VERIFIED, folder, [{"name": i.name, "sha256": i.sha256} for i in written])
    return manifest


def _results(jobs: list[tuple[SynthConfig, FramesConfig]], workers: int) -> Any:
    if workers <= 1:
        yield from map(_task, jobs)
        return
    import multiprocessing as mp

    from spark_distill.processes import child_init

    with mp.get_context("spawn").Pool(workers, initializer=child_init, initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_task, jobs)
