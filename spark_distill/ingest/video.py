# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Decoding openpilot camera files (raw HEVC elementary streams; qcamera.ts, H.264 in MPEG-TS) with PyAV.

Main entry point: `decode_i420(path)`, a lazy iterator of (index, I420 frame) in presentation order,
where `index` is the frame's position in the file (what `*EncodeIdx.segmentId` refers to). A corrupt
or truncated tail ends the iteration early and is reported through `VideoReport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from spark_distill.errors import UnsupportedVideoError


@dataclass
class VideoReport:
    """What decoding a file saw: frame size, frames decoded, and any warning."""

    path: Path
    width: int = 0
    height: int = 0
    frames: int = 0
    warnings: list[str] = field(default_factory=list)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), format="hevc" if path.suffix == ".hevc" else None)
    except (av.error.FFmpegError, OSError) as e:
        raise UnsupportedVideoError(f"{path}: cannot open video ({e})") from e


def count_packets(path: Path) -> int:
    """Frames in the file, by demuxing without decoding (fast; an estimate for progress bars)."""
    try:
        with _open(path) as container:
            return sum(1 for p in container.demux(video=0) if p.size)
    except (av.error.FFmpegError, UnsupportedVideoError):
        return 0


@dataclass(frozen=True)
class Planes:
    """A decoded I420 frame as zero-copy views of its Y, U, V planes (rows of `strides` bytes)."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    strides: tuple[int, int, int]
    width: int
    height: int


def _planes(frame: av.VideoFrame) -> Planes:
    views = tuple(np.frombuffer(p, dtype=np.uint8) for p in frame.planes)
    strides = tuple(p.line_size for p in frame.planes)
    return Planes(*views, strides, frame.width, frame.height)  # type: ignore[arg-type]


def decode_i420(path: Path, report: VideoReport, *, threads: int = 0) -> Iterator[tuple[int, Planes]]:
    """Yield (file index, Planes) in presentation order. `threads` 0 lets FFmpeg choose; 1 is one core.

    The planes view the decoder's buffer: use them before advancing the iterator."""
    with _open(path) as container:
        if not container.streams.video:
            raise UnsupportedVideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                if index == 0:
                    report.width, report.height = frame.width, frame.height
                elif (frame.width, frame.height) != (report.width, report.height):
                    report.warnings.append(f"{path.name}: frame size changed at frame {index}; stopped there")
                    break
                yield index, _planes(frame)
                index += 1
        except av.error.FFmpegError as e:
            report.warnings.append(f"{path.name}: undecodable after frame {index} ({type(e).__name__}); kept {index}")
        report.frames = index
    if index == 0:
        raise UnsupportedVideoError(f"{path}: no decodable frames")
