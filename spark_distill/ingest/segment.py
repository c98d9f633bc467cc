# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""One segment -> clip samples: decode, match, warp, pack, sample the log, encode members.

Main entry point: `segment_clips(segment, settings, report)`, a generator of encoded samples ready
for a ShardWriter; `report` collects what was kept, dropped and skipped. The sample's members and
meta.json: docs/formats.md, "Frames dataset".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.data import arrays, shards
from spark_distill.errors import IngestError, UnsupportedVideoError
from spark_distill.ingest.align import (
    CalibrationTrack,
    frame_log_arrays,
    indexed_frames,
    match_frames,
    traffic_onehot,
)
from spark_distill.ingest.delays import SegmentDelays
from spark_distill.ingest.discover import CAMERA_FILES, QCAMERA, Segment
from spark_distill.ingest.logs import load_schema, pose_source, read_log
from spark_distill.ingest.video import VideoReport, decode_i420
from spark_distill.openpilot.modelframe import FRAME_SHAPE, CameraModel, cameras_for, qcamera_road_camera, warp_for
from spark_distill.openpilot.modelv2 import WIDTH as MODELV2_WIDTH
from spark_distill.openpilot.modelv2 import split_blocks as split_modelv2_blocks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentSettings:
    """The ingest options that shape samples (recorded in the manifest)."""

    clip_len: int = 20
    cameras: tuple[str, ...] = ("road", "wide")
    log_kind: str = "auto"
    schema_dir: str | None = None
    decode_threads: int = 0
    codec: str = "lossless"  # storage of the camera clips (data/codecs.py)
    crf: int | None = None  # quality of a lossy codec (None: the codec's default)
    camera_source: str = "auto"  # auto (fcamera.hevc where present, else qcamera.ts) | fcamera | qcamera


CAMERA_SOURCES = ("auto", "fcamera", "qcamera")


@dataclass
class SegmentReport:
    """Manifest entry of one segment."""

    name: str
    sources: dict[str, str] = field(default_factory=dict)
    log: str = ""
    frames_kept: int = 0
    frames_dropped: int = 0
    clips: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    logged_model: dict[str, Any] | None = None  # the car's own modelV2 outputs, when the log has them
    camera: dict[str, Any] = field(default_factory=dict)  # the road video: source (fcamera|qcamera), file, size
    pose_source: str = ""  # the event the pose columns come from (logs.POSE_SOURCES), or "none"
    known_frames: dict[str, int] = field(default_factory=dict)  # frames with a logged value, per stream
    delays: dict[str, Any] = field(default_factory=dict)  # the delays modeld feeds and their source (delays.py)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "sources": self.sources, "log": self.log, "frames_kept": self.frames_kept,
               "frames_dropped": self.frames_dropped, "clips": self.clips, "dropped": self.dropped,
               "warnings": self.warnings, "camera": self.camera, "pose_source": self.pose_source,
               "known_frames": self.known_frames, "delays": self.delays}
        if self.logged_model is not None:
            out["logged_model"] = self.logged_model
        return out


def segment_clips(seg: Segment, settings: SegmentSettings, report: SegmentReport) -> Iterator[dict[str, Any]]:
    """Encoded clip samples of one segment, in order. Raises IngestError when nothing is usable."""
    log_path, kind = seg.log_file(settings.log_kind)
    if log_path is None:
        raise IngestError(f"{seg.path}: no {settings.log_kind if settings.log_kind != 'auto' else 'rlog or qlog'} file")
    road_path, source = road_video_file(seg, settings.camera_source)
    logdata = read_log(log_path, load_schema(Path(settings.schema_dir) if settings.schema_dir else None))
    report.log, report.warnings = kind, list(logdata.warnings)
    report.sources = {"log": log_path.name, "road": road_path.name}
    report.pose_source = pose_source(logdata)
    delays = SegmentDelays.from_log(logdata)
    report.delays = delays.record()
    if logdata.modelv2:
        rows = np.stack(list(logdata.modelv2.values()))
        blocks = split_modelv2_blocks(rows)
        timing = {k: float(np.nanmean(blocks[k])) for k in ("model_execution_time", "frame_drop_perc")}
        report.logged_model = {"messages": len(rows), "openpilot_version": logdata.version,
                               "mean_model_execution_time_s": timing["model_execution_time"],
                               "mean_frame_drop_perc": timing["frame_drop_perc"]}
    if kind == "qlog" and settings.log_kind == "auto":
        report.warnings.append("no rlog; used the qlog (decimated log streams)")
    road_index = logdata.encode[QCAMERA if source == "qcamera" else "road"]
    if len(road_index.segment_id) == 0:
        which = "qRoadEncodeIdx" if source == "qcamera" else "roadEncodeIdx"
        raise IngestError(f"{log_path}: no {which} events; frames cannot be matched to the log")

    # a qcamera route's wide input is built from the road camera, as on a device without one (recorded in the
    # manifest's camera and meta.json's cameras, not warned: it is what a default upload holds)
    want_wide = "wide" in settings.cameras and source == "fcamera"
    wide_path = seg.camera_file("wide") if want_wide else None
    if want_wide and wide_path is not None and len(logdata.encode["wide"].segment_id) == 0:
        report.warnings.append("no wideRoadEncodeIdx events; wide input built from the road camera")
        wide_path = None
    elif want_wide and wide_path is None:
        report.warnings.append("no ecamera.hevc; wide input built from the road camera")
    if wide_path is not None:
        report.sources["wide"] = wide_path.name

    counts: dict[str, int] = {}
    road_video = VideoReport(road_path)
    road = indexed_frames(decode_i420(road_path, road_video, threads=settings.decode_threads), road_index, counts)
    wide_video = VideoReport(wide_path) if wide_path else None
    wide = None
    if wide_path is not None:
        wide_counts: dict[str, int] = {}
        wide = indexed_frames(decode_i420(wide_path, wide_video, threads=settings.decode_threads),
                              logdata.encode["wide"], wide_counts)
    # frames are warped straight into the clip's arrays, reused from clip to clip (a sample is encoded to
    # bytes before the next frame is warped)
    road_clip = np.empty((settings.clip_len, *FRAME_SHAPE), np.uint8)
    wide_clip = np.empty_like(road_clip)
    calibration = CalibrationTrack(logdata)
    known = report.known_frames
    stamps: list[tuple[int, int]] = []  # (frameId, time) of the frames in the clip arrays
    clip = kept = 0
    cams = None
    names = {"road": road_path.name, "wide": wide_path.name if wide is not None else road_path.name}
    for fid, t, road_frame, wide_frame in match_frames(road, wide, counts):
        if cams is None:
            road_cam, wide_cam = _road_camera(road_path, road_video, source, logdata.road_sensor)
            cams = (road_cam, wide_cam if wide_frame is not None and wide_cam is not None else road_cam)
            report.camera = {"source": source, "file": road_path.name, "width": road_video.width,
                             "height": road_video.height}
        rpy = calibration.at(t)
        src_wide = wide_frame if wide_frame is not None else road_frame
        n = len(stamps)
        warp_for(rpy, cams[0], big=False, strides=road_frame.strides)(
            road_frame.y, road_frame.u, road_frame.v, out=road_clip[n])
        warp_for(rpy, cams[1], big=True, strides=src_wide.strides)(
            src_wide.y, src_wide.u, src_wide.v, out=wide_clip[n])
        stamps.append((fid, t))
        kept += 1
        if len(stamps) == settings.clip_len:
            yield _clip_sample(seg, clip, stamps, road_clip, wide_clip, logdata, names, known,
                               delays, codec=settings.codec, crf=settings.crf)
            clip, stamps = clip + 1, []
    if stamps:
        n = len(stamps)
        yield _clip_sample(seg, clip, stamps, road_clip[:n], wide_clip[:n], logdata, names, known, delays,
                           codec=settings.codec, crf=settings.crf)
        clip += 1

    index = road_index
    ids = index.frame_id
    # frames the encoder never wrote: frameId advances further than the file position (segmentId)
    order = np.argsort(index.segment_id)
    counts["encoder_gaps"] = int(np.maximum(np.diff(ids[order]) - np.diff(index.segment_id[order]), 0).sum())
    counts["undecoded"] = max(0, len(ids) - road_video.frames - counts.get("unindexed", 0))
    report.warnings += road_video.warnings + (wide_video.warnings if wide_video else [])
    report.dropped = {k: v for k, v in sorted(counts.items()) if v}
    report.frames_dropped = sum(v for k, v in counts.items() if k != "wide_only")
    report.clips = clip
    report.frames_kept = kept
    if clip == 0:
        raise IngestError(f"{road_path}: no frame could be matched to the log ({report.dropped or 'no frames'})")


def road_video_file(seg: Segment, camera_source: str) -> tuple[Path, str]:
    """(the road video to decode, "fcamera" or "qcamera") for `camera_source` auto|fcamera|qcamera: auto takes the
    full-resolution fcamera.hevc where the segment has it, else its qcamera.ts."""
    full, small = seg.camera_file("road"), seg.camera_file(QCAMERA)
    if camera_source in ("auto", "fcamera") and full is not None:
        return full, "fcamera"
    if camera_source in ("auto", "qcamera") and small is not None:
        return small, "qcamera"
    wanted = {"auto": "fcamera.hevc or qcamera.ts", "fcamera": CAMERA_FILES["road"],
              "qcamera": CAMERA_FILES[QCAMERA]}[camera_source]
    raise IngestError(f"{seg.path}: no {wanted}")


def _road_camera(path: Path, video: VideoReport, source: str, sensor: str) -> tuple[CameraModel, CameraModel | None]:
    """The road (and wide) camera models of the decoded frame size; a qcamera is its road camera scaled down."""
    try:
        if source == "qcamera":
            return qcamera_road_camera(video.width, video.height, sensor), None
        return cameras_for(video.width, video.height)
    except ValueError as e:
        raise UnsupportedVideoError(f"{path}: {e}") from None


def _clip_sample(seg: Segment, clip: int, stamps: list[tuple[int, int]], road: np.ndarray, wide: np.ndarray,
                 logdata: Any, names: dict[str, str], known: dict[str, int], delays: SegmentDelays, *, codec: str,
                 crf: int | None) -> dict[str, Any]:
    """The encoded sample of one clip: `stamps` (frameId, time) per frame, `road`/`wide` (T, 6, 128, 256), `names`
    the video files each camera input was warped from; `known` (frames with data per stream) is counted up;
    `delays` gives each frame's lateral delay and the segment's longitudinal one."""
    fids = [f for f, _ in stamps]
    times = np.array([t for _, t in stamps], dtype=np.int64)
    logged = frame_log_arrays(logdata, times)
    wide_from_road = names["wide"] == names["road"]
    flags = ["wide_from_road"] if wide_from_road else []
    if not bool(logged["calib_valid"][0]):
        flags.append("calibration_invalid")
    if np.any(np.diff(fids) != 1):
        flags.append("frame_gap")
    for k, v in logged["known"].items():
        known[k] = known.get(k, 0) + int(v.sum())
    meta = {
        "segment": seg.name, "clip": clip, "frame_ids": fids, "timestamps_ns": times.tolist(),
        "cameras": dict(names),
        "known": {k: v.tolist() for k, v in logged["known"].items()},
        "calibration": {"rpy": logged["rpy"][0].tolist(), "valid": bool(logged["calib_valid"][0]),
                        "rpy_per_frame": logged["rpy"].tolist()},
        "flags": flags,
        "lat_delay": delays.lateral_at(times), "long_delay": delays.long_delay,
    }
    return {
        "__key__": shards.clip_key(seg.name, clip),
        **shards.encode_cameras({"road": road, "wide": wide}, codec=codec, crf=crf),
        "desire.npy.zst": arrays.encode_array(logged["desire"]),
        "traffic.npy.zst": arrays.encode_array(traffic_onehot(bool(logged["rhd"][0]))),
        "car.npy.zst": arrays.encode_array(logged["car"]),
        "pose.npy.zst": arrays.encode_array(logged["pose"]),
        "gps.npy.zst": arrays.encode_array(logged["gps"].astype(np.float64)),
        **({"modelv2.npy.zst": arrays.encode_array(_modelv2_rows(logdata.modelv2, fids))} if logdata.modelv2 else {}),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


def _modelv2_rows(rows: dict[int, np.ndarray], frame_ids: list[int]) -> np.ndarray:
    """(T, WIDTH) logged model outputs of these frames, matched by frameId; NaN where a frame has none."""
    out = np.full((len(frame_ids), MODELV2_WIDTH), np.nan, np.float32)
    for i, fid in enumerate(frame_ids):
        if fid in rows:
            out[i] = rows[fid]
    return out
