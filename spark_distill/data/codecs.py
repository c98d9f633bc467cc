# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Storage codecs of a clip's packed camera frames (T, 6, 128, 256) uint8. Entry points: `encode_clip`,
`decode_clip`, `CODECS`.

A codec is chosen at ingest (`--codec`) and named by the shard member's extension, so every reader
decodes whatever a sample carries (shards.decode_sample): `road.npy.zst` (plain .npy + zstd, the
original format, still read), `road.y6d.zst` (lossless), `road.hevc` and `road.av1` (lossy).

- lossless (`y6d.zst`): each pixel predicted from a neighbour that is already decoded, the residual
  (mod 256) zstd-compressed as .npy. The 4 Y sub-planes are the polyphase parts of one 512x256 image
  (loadyuv.cl), so the prediction of ch1/ch2 from ch0 and of ch3 from ch1 is the vertical/horizontal
  neighbour; ch0, U and V use their left neighbour. 0.77x the bytes of plain zstd on camera-like
  frames at about the same speed; benchmarks/storage.md has the alternatives measured (ffv1, zstd
  levels, temporal deltas).
- hevc: the clip unpacked to 512x256 yuv420p and encoded with x265 (one GOP per clip, so a clip
  decodes on its own), quality `crf` (0..51, default 20). Raw HEVC elementary stream; decoded with PyAV.
- av1: the same with SVT-AV1 (one key frame per clip), quality `crf` (0..63, default 30), as a raw OBU
  stream decoded by dav1d. On the realistic synthetic frames at the same PSNR it is smaller than hevc and
  decodes ~1.5x faster (benchmarks/storage.md).
The members as stored: docs/formats.md, "Camera members".
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spark_distill.data.arrays import decode_array, encode_array
from spark_distill.errors import ConfigError, DatasetError
from spark_distill.openpilot.modelframe import FRAME_SHAPE, MODEL_H, MODEL_W, pack_yuv6, unpack_yuv6

PLAIN_EXT = "npy.zst"  # the original member format, decoded by arrays.decode_array


def _predict(clip: np.ndarray) -> np.ndarray:
    """Residuals of the lossless predictor (T, 6, 128, 256) uint8, mod 256."""
    r = np.empty_like(clip)
    for ch in (0, 4, 5):  # left neighbour within the plane (ch0: two Y pixels to the left)
        r[:, ch, :, 0] = clip[:, ch, :, 0]
        np.subtract(clip[:, ch, :, 1:], clip[:, ch, :, :-1], out=r[:, ch, :, 1:])
    np.subtract(clip[:, 1], clip[:, 0], out=r[:, 1])  # odd row from the pixel above
    np.subtract(clip[:, 2], clip[:, 0], out=r[:, 2])  # odd column from the pixel to the left
    np.subtract(clip[:, 3], clip[:, 1], out=r[:, 3])
    return r


def _unpredict(r: np.ndarray) -> np.ndarray:
    """Inverse of _predict."""
    clip = np.empty_like(r)
    for ch in (0, 4, 5):
        np.cumsum(r[:, ch], axis=-1, dtype=np.uint8, out=clip[:, ch])
    np.add(r[:, 1], clip[:, 0], out=clip[:, 1])
    np.add(r[:, 2], clip[:, 0], out=clip[:, 2])
    np.add(r[:, 3], clip[:, 1], out=clip[:, 3])
    return clip


def _encode_lossless(clip: np.ndarray, *, crf: int) -> bytes:
    return encode_array(_predict(clip))


def _decode_lossless(data: bytes) -> np.ndarray:
    r = decode_array(data)
    if r.dtype != np.uint8 or r.ndim != 4 or r.shape[1:] != FRAME_SHAPE:
        raise DatasetError(f"lossless camera member holds {r.dtype} {r.shape}, expected uint8 (T, {FRAME_SHAPE})")
    return _unpredict(r)


# one GOP per clip (keyint past any clip length), no B-frames (decode order = display order), one core
_X265_PARAMS = "log-level=none:keyint=1000:min-keyint=1000:scenecut=0:bframes=0:pools=none:frame-threads=1"
# SVT-AV1: one key frame per clip, one core (ingest runs a process per core); preset 10 encoded ~600-800
# camera frames per CPU second on the 2-core box, faster than x265 ultrafast (benchmarks/storage.md)
_SVTAV1_PARAMS = "keyint=1000:lp=1"


def _encode_video(clip: np.ndarray, *, fmt: str, encoder: str, options: dict[str, str]) -> bytes:
    """The clip unpacked to 512x256 yuv420p and encoded by `encoder` into a raw elementary stream (`fmt`)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=20)
        stream.width, stream.height, stream.pix_fmt = MODEL_W, MODEL_H, "yuv420p"
        stream.options = options
        for packed in clip:
            frame = av.VideoFrame(MODEL_W, MODEL_H, "yuv420p")
            for plane, data in zip(frame.planes, unpack_yuv6(packed), strict=True):
                if plane.line_size == data.shape[1]:
                    plane.update(np.ascontiguousarray(data))
                else:
                    rows = np.zeros((plane.height, plane.line_size), np.uint8)
                    rows[:, : data.shape[1]] = data
                    plane.update(rows)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _decode_video(data: bytes, *, decoder: str, what: str) -> np.ndarray:
    """The clip of a video member. The training loader runs this for every clip it reads, so: a bare decoder fed
    by FFmpeg's parser (no container whose stream probing decodes frames twice), and each frame's planes read in
    place into the packed clip (no intermediate arrays); ~15% less CPU than through av.open (hevc)."""
    import av

    frames = []
    try:
        ctx = av.CodecContext.create(decoder, "r")
        ctx.thread_count = 1  # readers run in worker threads/processes already
        for packet in [*ctx.parse(data), *ctx.parse(None)]:
            frames += ctx.decode(packet)
        frames += ctx.decode(None)
    except av.error.FFmpegError as e:
        raise DatasetError(f"undecodable {what} camera member ({e})") from e
    if not frames:
        raise DatasetError(f"{what} camera member holds no frames")
    clip = np.empty((len(frames), *FRAME_SHAPE), np.uint8)
    for t, frame in enumerate(frames):
        if (frame.width, frame.height, frame.format.name) != (MODEL_W, MODEL_H, "yuv420p"):
            raise DatasetError(f"{what} camera member is {frame.width}x{frame.height} {frame.format.name}, "
                               f"expected {MODEL_W}x{MODEL_H} yuv420p")
        y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in frame.planes)
        pack_yuv6(y, u, v, out=clip[t])
    return clip


def _encode_hevc(clip: np.ndarray, *, crf: int) -> bytes:
    return _encode_video(clip, fmt="hevc", encoder="libx265",
                         options={"preset": "ultrafast", "crf": str(crf), "x265-params": _X265_PARAMS})


def _decode_hevc(data: bytes) -> np.ndarray:
    return _decode_video(data, decoder="hevc", what="hevc")


def _encode_av1(clip: np.ndarray, *, crf: int) -> bytes:
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at every encoder's start
    return _encode_video(clip, fmt="obu", encoder="libsvtav1",
                         options={"preset": "10", "crf": str(crf), "svtav1-params": _SVTAV1_PARAMS})


def _decode_av1(data: bytes) -> np.ndarray:
    return _decode_video(data, decoder="libdav1d", what="av1")


@dataclass(frozen=True)
class Codec:
    """How one codec stores a clip: the member extension it is read back by, its two functions and, if lossy, its
    quality scale (`crf` 0..crf_max, lower is better and larger) and default."""

    ext: str
    lossy: bool
    encode: Callable[..., bytes]
    decode: Callable[[bytes], np.ndarray]
    crf_max: int = 0
    default_crf: int = 0
    encoder: str = ""  # for messages


CODECS: dict[str, Codec] = {
    "lossless": Codec("y6d.zst", False, _encode_lossless, _decode_lossless),
    "hevc": Codec("hevc", True, _encode_hevc, _decode_hevc, crf_max=51, default_crf=20, encoder="x265"),
    "av1": Codec("av1", True, _encode_av1, _decode_av1, crf_max=63, default_crf=30, encoder="SVT-AV1"),
}
DEFAULT_CODEC = "lossless"
_BY_EXT = {c.ext: c for c in CODECS.values()}


def get_codec(name: str) -> Codec:
    """The codec called `name`; ConfigError listing the known ones otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; available: {', '.join(sorted(CODECS))}") from None


def resolve_crf(codec: str, crf: int | None) -> int | None:
    """The quality a lossy `codec` stores at: `crf`, or the codec's default where None (None for a lossless
    codec); ConfigError where it is outside the codec's scale."""
    c = get_codec(codec)
    if not c.lossy:
        return None
    if crf is None:
        return c.default_crf
    if not 0 <= crf <= c.crf_max:
        raise ConfigError(f"--crf must be in 0..{c.crf_max} for {codec} ({c.encoder}), got {crf}")
    return crf


def codec_exts() -> tuple[str, ...]:
    """Every camera member extension a reader may meet (plain .npy.zst first)."""
    return (PLAIN_EXT, *_BY_EXT)


def encode_clip(clip: np.ndarray, codec: str, *, crf: int | None = None) -> tuple[str, bytes]:
    """(member extension, bytes) of a clip (T, 6, 128, 256) uint8 stored with `codec` (a lossy one at `crf`, default
    the codec's)."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[1:] != FRAME_SHAPE:
        raise ValueError(f"expected a uint8 clip (T, {FRAME_SHAPE}), got {clip.dtype} {clip.shape}")
    c = get_codec(codec)
    return c.ext, c.encode(np.ascontiguousarray(clip), crf=resolve_crf(codec, crf) or 0)


def decode_clip(ext: str, data: bytes) -> np.ndarray:
    """The clip (T, 6, 128, 256) uint8 stored in a camera member of extension `ext` (not plain .npy.zst)."""
    try:
        codec = _BY_EXT[ext]
    except KeyError:
        raise DatasetError(f"unknown camera member extension {ext!r}; known: {', '.join(codec_exts())}") from None
    return codec.decode(data)
