# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The one shard and manifest reader-writer used by every pass.

A dataset is a folder of WebDataset tar shards (`shard-000000.tar`, …) plus `manifest.json`.
Samples are flat dicts keyed by member extension (`road.npy.zst`, `meta.json`, …) with the
sample key under `__key__`. Arrays are `.npy` bytes compressed with zstd; camera clips may instead
be stored with a codec of spark_distill.codecs, named by the member's extension (`road.y6d.zst`,
`road.hevc`), and `decode_sample` decodes every one of them, so no reader special-cases a codec.
Writers go through a temporary name, fsync and rename; manifests are rewritten atomically. Main
entry points: `ShardWriter`, `iter_shard`, `encode_array` / `decode_array`, `decode_sample`,
`camera_members`, `encode_cameras`, `write_json_atomic`, `read_manifest`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from spark_distill import codecs
from spark_distill.errors import DatasetError

FRAMES_FORMAT = "spark-distill/frames"
LABELS_FORMAT = "spark-distill/labels"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

CAMERAS = ("road", "wide")


def camera_members(cameras: tuple[str, ...] = CAMERAS) -> tuple[str, ...]:
    """Every member name a camera clip may be stored under (one per codec): what readers ask a sample for."""
    return tuple(f"{cam}.{ext}" for cam in cameras for ext in codecs.codec_exts())


# member -> dtype of the stored array (None for JSON); DESIGN.md "Frames dataset". A sample holds
# exactly one of the camera members of each camera (see camera_members / encode_cameras).
FRAMES_MEMBERS: dict[str, str | None] = {
    **dict.fromkeys(camera_members(), "uint8"),
    "desire.npy.zst": "float32",
    "traffic.npy.zst": "float32",
    "car.npy.zst": "float32",
    "pose.npy.zst": "float32",
    "gps.npy.zst": "float64",
    "modelv2.npy.zst": "float32",
    "meta.json": None,
}
FRAMES_REQUIRED = frozenset(FRAMES_MEMBERS) - {"modelv2.npy.zst", *camera_members()}  # and one member per camera
LABEL_MEMBERS: dict[str, str | None] = {"vision.npy.zst": "float16", "policy.npy.zst": "float16"}

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+--c\d{5}$")
# level 1: on packed camera clips it compressed within 2% of level 3 at twice the speed (575 vs 313 MB/s)
_ZSTD_LEVEL = 1


def sanitize_segment(name: str) -> str:
    """A segment name as it appears in sample keys: `|` and `/` become `_`; no `.` allowed."""
    out = name.replace("|", "_").replace("/", "_")
    if "." in out or not out:
        raise DatasetError(f"segment name {name!r} cannot form a sample key (no '.' allowed)")
    return out


def clip_key(segment: str, clip: int) -> str:
    """Sample key of clip `clip` of `segment`: `<segment>--c<clip:05d>`."""
    return f"{sanitize_segment(segment)}--c{clip:05d}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def encode_array(arr: np.ndarray, *, level: int = _ZSTD_LEVEL) -> bytes:
    """`.npy` bytes of `arr`, zstd-compressed."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return zstandard.ZstdCompressor(level=level).compress(buf.getvalue())


def decode_array(data: bytes) -> np.ndarray:
    """Inverse of encode_array; never unpickles. Decompresses straight into the array's memory."""
    dctx = zstandard.ZstdDecompressor()
    size = zstandard.frame_content_size(data)
    if size < 0:  # no size in the frame header (another writer): decompress, then copy
        raw = np.frombuffer(bytearray(dctx.decompress(data)), np.uint8)
    else:
        raw = np.empty(size, np.uint8)
        view, filled = memoryview(raw), 0
        with dctx.stream_reader(data) as reader:
            while filled < size and (n := reader.readinto(view[filled:])):
                filled += n
        if filled != size:
            raise ValueError("truncated zstd frame")
    buf = io.BytesIO(raw[:256].tobytes())  # the .npy header sits in the first bytes
    version = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(buf)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    count = int(np.prod(shape))
    arr = raw[buf.tell(): buf.tell() + count * dtype.itemsize].view(dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def encode_cameras(clips: dict[str, np.ndarray], *, codec: str, crf: int) -> dict[str, bytes]:
    """Camera members of a sample: {camera: clip (T, 6, 128, 256) uint8} -> {member name: bytes}."""
    out = {}
    for cam, clip in clips.items():
        ext, data = codecs.encode_clip(clip, codec, crf=crf)
        out[f"{cam}.{ext}"] = data
    return out


def missing_members(sample: dict[str, Any]) -> list[str]:
    """Required members a raw frames sample lacks (a camera counts as present under any codec)."""
    names = set(sample)
    missing = sorted(FRAMES_REQUIRED - names)
    for cam in CAMERAS:
        held = [m for m in camera_members((cam,)) if m in names]
        if len(held) != 1:
            missing.append(f"exactly one of {', '.join(camera_members((cam,)))} (has {len(held)})")
    return missing


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to `<path>.tmp`, fsync, rename over `path`, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_manifest(folder: Path, fmt: str) -> dict[str, Any]:
    """Read and check `folder/manifest.json` of format `fmt`."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; is {folder} a {fmt} dataset?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is unreadable: {e}") from e
    if manifest.get("format") != fmt or manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} is {manifest.get('format')!r} v{manifest.get('version')}, expected {fmt!r} v{FORMAT_VERSION}"
        )
    return manifest


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard, as listed in a manifest."""

    name: str
    samples: int
    frames: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ShardWriter:
    """Writes one shard to `<name>.tmp`; `close()` fsyncs, renames and returns its ShardInfo.

    Byte-reproducible: members are sorted, mtime/uid/names fixed, GNU tar format."""

    def __init__(self, folder: Path, name: str, members: dict[str, str | None]) -> None:
        self.path = folder / name
        self.tmp = folder / (name + ".tmp")
        self.members = members
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self.samples = 0
        self.frames = 0

    def write(self, sample: dict[str, Any], *, frames: int) -> None:
        """Add one sample: `__key__` plus bytes for each member (names checked against the schema)."""
        key = sample["__key__"]
        if not _KEY_RE.match(key):
            raise DatasetError(f"invalid sample key {key!r}")
        for member in sorted(k for k in sample if k != "__key__"):
            if member not in self.members:
                raise DatasetError(f"sample {key}: unexpected member {member!r}")
            data = sample[member]
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size = len(data)
            info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "spark", "spark"
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.frames += frames

    def close(self, *, durable: bool = True) -> ShardInfo:
        """Finish the shard. `durable=False` (scratch files rebuilt on a rerun) skips the fsyncs and the sha256."""
        self._tar.close()
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())
        self._file.close()
        digest = sha256_file(self.tmp) if durable else ""
        size = self.tmp.stat().st_size
        os.replace(self.tmp, self.path)
        if durable:
            fsync_dir(self.path.parent)
        return ShardInfo(self.path.name, self.samples, self.frames, size, digest)

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def iter_shard(path: Path, members: dict[str, str | None]) -> Iterator[dict[str, Any]]:
    """Samples of one shard in order, as `{"__key__": key, member: bytes, …}`.

    Only regular-file members named `<key>.<known member>` are accepted; nothing is extracted to
    disk. A truncated or foreign tar is a DatasetError naming the shard."""
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    raise DatasetError(f"{path.name}: unexpected non-file member {info.name!r}")
                key, _, member = info.name.partition(".")
                if member not in members or not _KEY_RE.match(key):
                    raise DatasetError(f"{path.name}: unexpected member {info.name!r}")
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                if member in current:
                    raise DatasetError(f"{path.name}: duplicate member {info.name!r}")
                current[member] = data
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{path.name}: unreadable shard ({e})") from e
    if current is not None:
        yield current


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A new dict with arrays decoded (camera members with their codec) and JSON parsed; `__key__` kept."""
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for member, data in sample.items():
        if member == "__key__":
            continue
        name, _, ext = member.partition(".")
        if name in CAMERAS and ext != codecs.PLAIN_EXT and ext in codecs.codec_exts():
            out[name] = codecs.decode_clip(ext, data)
        elif member.endswith(".npy.zst"):
            out[member[: -len(".npy.zst")]] = decode_array(data)
        elif member.endswith(".json"):
            out[member[: -len(".json")]] = json.loads(data)
        else:
            out[member] = data
    return out
