# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The one shard and manifest reader-writer used by every pass.

A dataset is a folder of WebDataset tar shards (`shard-000000.tar`, …) plus `manifest.json`.
Samples are flat dicts keyed by member extension (`road.npy.zst`, `meta.json`, …) with the
sample key under `__key__`. Arrays are `.npy` bytes compressed with zstd; camera clips may instead
be stored with a codec of data/codecs.py, named by the member's extension (`road.y6d.zst`,
`road.hevc`), and `decode_sample` decodes every one of them, so no reader special-cases a codec.
Arrays are encoded by data/arrays.py; writers go through a temporary name, fsync and rename (data/files.py);
manifests are rewritten atomically. Main entry points: `ShardWriter`, `iter_shard`, `decode_sample` (one member:
`decode_member`), `camera_members`, `encode_cameras`, `read_manifest`. The formats, member by member and field by field:
docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.data import codecs, files, store
from spark_distill.data.arrays import decode_array
from spark_distill.errors import DatasetError, first_line

FRAMES_FORMAT = "spark-distill/frames"
LABELS_FORMAT = "spark-distill/labels"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

CAMERAS = ("road", "wide")


def camera_members(cameras: tuple[str, ...] = CAMERAS) -> tuple[str, ...]:
    """Every member name a camera clip may be stored under (one per codec): what readers ask a sample for."""
    return tuple(f"{cam}.{ext}" for cam in cameras for ext in codecs.codec_exts())


# member -> dtype of the stored array (None for JSON); docs/formats.md, "Members of a frames sample". A sample holds
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


def sanitize_segment(name: str) -> str:
    """A segment name as it appears in sample keys: `|` and `/` become `_`; no `.` allowed."""
    out = name.replace("|", "_").replace("/", "_")
    if "." in out or not out:
        raise DatasetError(f"segment name {name!r} cannot form a sample key (no '.' allowed)")
    return out


def clip_key(segment: str, clip: int) -> str:
    """Sample key of clip `clip` of `segment`: `<segment>--c<clip:05d>`."""
    return f"{sanitize_segment(segment)}--c{clip:05d}"


def split_clip_key(key: str) -> tuple[str, int]:
    """Inverse of clip_key: (the sanitized segment, the clip index)."""
    segment, clip = key.rsplit("--c", 1)
    return segment, int(clip)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def encode_cameras(clips: dict[str, np.ndarray], *, codec: str, crf: int | None = None) -> dict[str, bytes]:
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


VERIFIED = ".verified.json"  # shards whose sha256 was checked, with their file's (size, mtime, inode) then


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _verified_records(record: Path) -> dict[str, Any]:
    try:
        records = json.loads(record.read_bytes())["shards"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return records if isinstance(records, dict) else {}


def verified_unchanged(folder: Path, entries: list[dict[str, Any]], records: tuple[Path, ...]) -> set[str]:
    """Names of the shards of `folder` (manifest entries) whose sha256 a record file says was checked (or
    computed as they were written) and whose file has not changed since: same size, modification time and
    inode. A stale, foreign or unreadable record only means a check. Bytes that rot in place are still caught
    when read: every array member carries a zstd content checksum."""
    known: dict[str, Any] = {}
    for record in records:
        known.update(_verified_records(record))
    out = set()
    for e in entries:
        rec = known.get(e["name"])
        if isinstance(rec, dict) and rec.get("sha256") == e["sha256"]:
            try:
                if rec.get("stamp") == _stamp(folder / e["name"]):
                    out.add(e["name"])
            except OSError:
                continue
    return out


def record_verified(record: Path, folder: Path, entries: list[dict[str, Any]]) -> None:
    """Remember in `record` that these shards of `folder` (manifest entries: name, sha256) match their sha256 as
    their files are now (the record file is rewritten only if that adds something)."""
    records = _verified_records(record)
    before = json.dumps(records, sort_keys=True)
    for e in entries:
        try:
            records[e["name"]] = {"sha256": e["sha256"], "stamp": _stamp(folder / e["name"])}
        except OSError:
            records.pop(e["name"], None)
    if json.dumps(records, sort_keys=True) != before:
        files.write_json_atomic(record, {"version": 1, "shards": records})


def intact_shards(folder: Path, entries: list[dict[str, Any]], *, record: bool = True) -> set[str]:
    """Names of the shards of `folder` (manifest entries: name, sha256) whose file is there and matches its
    sha256. A file is hashed once and remembered in `folder/.verified.json` (see `verified_unchanged`; `record`
    False: not written, for all processes of a pass but one), so a resumed pass reads only the files that changed
    since: a damaged or missing one is then written again."""
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
               and isinstance(e.get("sha256"), str) and "/" not in e["name"]]
    known = verified_unchanged(folder, entries, (folder / VERIFIED,)) | store.remote_intact(folder, entries)
    fresh = [e for e in entries if e["name"] not in known and (folder / e["name"]).is_file()
             and files.sha256_file(folder / e["name"]) == e["sha256"]]
    if fresh and record:
        record_verified(folder / VERIFIED, folder, fresh)
    return known | {e["name"] for e in fresh}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write `folder/manifest.json` atomically; in a mirror of a remote root, then publish the shards it lists
    and the manifest itself (data/store.py)."""
    files.write_json_atomic(folder / MANIFEST, manifest)
    store.publish(folder)


def read_manifest(folder: Path, fmt: str) -> dict[str, Any]:
    """Read and check `folder/manifest.json` of format `fmt`: the fields every reader relies on are there,
    with the right types (a torn or edited manifest is one DatasetError, not a crash further on)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; is {folder} a {fmt} dataset?") from None
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{path} is unreadable: {first_line(e, 120)}") from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} holds a JSON {type(manifest).__name__}, not a manifest")
    if manifest.get("format") != fmt or manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} is {manifest.get('format')!r} v{manifest.get('version')}, expected {fmt!r} v{FORMAT_VERSION}"
        )
    if problem := _manifest_problem(manifest, fmt):
        raise DatasetError(f"{path}: {problem}; the manifest is damaged or was edited by hand")
    return manifest


_SHARD_NAME_RE = re.compile(r"^shard-\d{6}\.tar$")
_SHARD_ENTRY = {"name": str, "samples": int, "frames": int, "bytes": int, "sha256": str}
_SEGMENT_ENTRY = {"name": str, "clips": int, "frames_kept": int, "frames_dropped": int, "warnings": list}
_FIELDS: dict[str, dict[str, type]] = {
    FRAMES_FORMAT: {"settings": dict, "car_columns": list, "shards": list, "segments": list},
    LABELS_FORMAT: {"frames_shards": list, "teacher": dict, "output_slices": dict, "segments": dict, "shards": list,
                    "warmup_frames": int},
}


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _entries_problem(entries: list[Any], fields: dict[str, type], where: str) -> str | None:
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"{where}[{i}] is {entry!r}, expected an object"
        for name, kind in fields.items():
            if not _is(entry.get(name), kind) or (kind is int and entry[name] < 0):
                return f"{where}[{i}].{name} is {entry.get(name)!r}, expected a {kind.__name__}"
        if "sha256" in fields and not _SHARD_NAME_RE.match(entry["name"]):
            return f"{where}[{i}].name {entry['name']!r} is not a shard name"
    return None


_MAX_WIDTH = 1 << 20  # openpilot's outputs are ~6,500 wide; the bound keeps an edited file from allocating gigabytes


def output_slices_problem(obj: Any) -> str | None:
    """What is wrong with a JSON `output_slices` ({"vision": {head: [start, stop]}, "policy": {…}}), or None."""
    for model in ("vision", "policy"):
        slices = obj.get(model) if isinstance(obj, dict) else None
        if not isinstance(slices, dict) or not slices:
            return f"output_slices.{model} is {slices!r}, expected an object of [start, stop]"
        for head, span in slices.items():
            if not (isinstance(span, list) and len(span) == 2 and all(_is(v, int) and 0 <= v <= _MAX_WIDTH
                                                                      for v in span) and span[0] <= span[1]):
                return f"output_slices.{model}.{head} is {span!r}, expected [start, stop]"
    return None


def _manifest_problem(m: dict[str, Any], fmt: str) -> str | None:
    """What is wrong with the fields of a parsed manifest (None when they are sound)."""
    for name, kind in _FIELDS[fmt].items():
        if not _is(m.get(name), kind):
            return f"{name!r} is {m.get(name)!r}, expected a {kind.__name__}"
    if problem := _entries_problem(m["shards"], _SHARD_ENTRY, "shards"):
        return problem
    if fmt == FRAMES_FORMAT:
        clip_len = m["settings"].get("clip_len")
        if not _is(clip_len, int) or clip_len < 1:
            return f"settings.clip_len is {clip_len!r}, expected a positive int"
        partial = m.get("partial")
        if partial is not None and not (isinstance(partial, dict) and _is(partial.get("segment"), str)
                                        and _is(partial.get("clips"), int)):
            return f"partial is {partial!r}, expected null or {{segment, clips}}"
        return _entries_problem(m["segments"], _SEGMENT_ENTRY, "segments")
    if problem := _entries_problem(m["frames_shards"], {"name": str, "sha256": str}, "frames_shards"):
        return problem
    if problem := output_slices_problem(m["output_slices"]):
        return problem
    if "plan" not in m["output_slices"]["policy"]:
        return "output_slices.policy has no 'plan'"
    if not all(isinstance(v, dict) and _is(v.get("first_frame_id", 0), int) for v in m["segments"].values()):
        return "segments holds an entry that is not an object with an int first_frame_id"
    return None


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

    Byte-reproducible: members are sorted, mtime/uid/names fixed, GNU tar format (the blocks
    tarfile.addfile writes, written here so the sha256 is taken as the bytes go out and a sample's
    byte span is known). `durable=False` (scratch files rebuilt on a rerun) skips fsyncs and sha256."""

    def __init__(self, folder: Path, name: str, members: dict[str, str | None], *, durable: bool = True) -> None:
        self.path = folder / name
        self.tmp = folder / (name + ".tmp")
        self.members = members
        self.durable = durable
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._hash = hashlib.sha256() if durable else None
        self.offset = 0  # bytes written so far
        self.samples = 0
        self.frames = 0

    def _put(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.offset += len(data)

    def write(self, sample: dict[str, Any], *, frames: int) -> tuple[int, int]:
        """Add one sample: `__key__` plus bytes for each member (names checked against the schema).

        Returns the sample's byte span in the shard, (start, end): `write_raw` copies it into another shard."""
        key = sample["__key__"]
        if not _KEY_RE.match(key):
            raise DatasetError(f"invalid sample key {key!r}")
        start = self.offset
        for member in sorted(k for k in sample if k != "__key__"):
            if member not in self.members:
                raise DatasetError(f"sample {key}: unexpected member {member!r}")
            data = sample[member]
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size = len(data)
            info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "spark", "spark"
            self._put(info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape"))
            self._put(data)
            if pad := -len(data) % tarfile.BLOCKSIZE:
                self._put(bytes(pad))
        self.samples += 1
        self.frames += frames
        return start, self.offset

    def write_raw(self, blocks: bytes, *, frames: int) -> None:
        """Add one sample as the bytes of a span another ShardWriter's `write` returned (copied verbatim)."""
        if len(blocks) % tarfile.BLOCKSIZE:
            raise DatasetError(f"{self.path.name}: a sample's tar blocks are {len(blocks)} bytes, not whole blocks")
        self._put(blocks)
        self.samples += 1
        self.frames += frames

    def close(self) -> ShardInfo:
        """Finish the shard: the end-of-archive blocks and record padding tarfile writes, then rename."""
        self._put(bytes(2 * tarfile.BLOCKSIZE))
        if pad := -self.offset % tarfile.RECORDSIZE:
            self._put(bytes(pad))
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        if self.durable:
            files.fsync_dir(self.path.parent)
        digest = self._hash.hexdigest() if self._hash is not None else ""
        return ShardInfo(self.path.name, self.samples, self.frames, self.offset, digest)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def iter_shard(path: Path, members: dict[str, str | None], *,
               skip: frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """Samples of one shard in order, as `{"__key__": key, member: bytes, …}`.

    Only regular-file members named `<key>.<known member>` are accepted; nothing is extracted to
    disk. A truncated or foreign tar is a DatasetError naming the shard. Members whose stem (name
    before the first dot, e.g. `road`) is in `skip` are left out and their bytes never read (the
    shard is then read by seeking past them, not as a stream)."""
    current: dict[str, Any] | None = None
    path = store.ensure_local(path)
    try:
        size = path.stat().st_size
        with tarfile.open(path, mode="r:" if skip else "r|") as tar:
            for info in tar:
                if not info.isreg():
                    raise DatasetError(f"{path.name}: unexpected non-file member {info.name!r}")
                key, _, member = info.name.partition(".")
                if member not in members or not _KEY_RE.match(key):
                    raise DatasetError(f"{path.name}: unexpected member {info.name!r}")
                if member.split(".", 1)[0] in skip:
                    if info.offset_data + info.size > size:  # seeking past a cut would look like the archive's end
                        raise DatasetError(f"{path.name}: unreadable shard (truncated in {info.name!r})")
                    if current is not None and current["__key__"] != key:
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": key}
                    continue
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


def decode_member(member: str, data: bytes) -> tuple[str, Any]:
    """(name, value) of one member: a camera clip decoded with its codec under its camera's name (`road`), an array
    under its stem (`desire`), JSON parsed (`meta`); other bytes kept under the member's name. A member that does
    not decode is a DatasetError (or a ValueError for JSON)."""
    name, _, ext = member.partition(".")
    if name in CAMERAS and ext != codecs.PLAIN_EXT and ext in codecs.codec_exts():
        return name, codecs.decode_clip(ext, data)
    if member.endswith(".npy.zst"):
        return member[: -len(".npy.zst")], decode_array(data)
    if member.endswith(".json"):
        return member[: -len(".json")], json.loads(data)
    return member, data


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A new dict with arrays decoded (camera members with their codec) and JSON parsed; `__key__` kept. A
    member that does not decode is a DatasetError naming it."""
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for member, data in sample.items():
        if member == "__key__":
            continue
        try:
            name, value = decode_member(member, data)
        except (DatasetError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DatasetError(f"sample {sample['__key__']}: {member} does not decode ({first_line(e, 120)})") from e
        out[name] = value
    return out
