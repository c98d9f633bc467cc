# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Where every clip of every segment sits in the frames shards, and random access to it.

Main entry points: `plan_segments(manifest)` (segments in order, each with its clips' shard and key)
and `ShardIndex` (member offsets of one tar, read once, then `read_clip(key)` with pread; nothing is
extracted to disk and only regular members named `<key>.<member>` are accepted).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_distill.data import shards, store
from spark_distill.errors import DatasetError


@dataclass(frozen=True)
class ClipRef:
    shard: int  # index into the frames manifest's shard list
    key: str


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    clips: tuple[ClipRef, ...]


def frames_binding(frames_manifest: dict[str, Any]) -> list[dict[str, str]]:
    """What a label set is bound to: each frames shard's name and sha256."""
    return [{"name": s["name"], "sha256": s["sha256"]} for s in frames_manifest["shards"]]


def plan_segments(manifest: dict[str, Any]) -> list[SegmentPlan]:
    """Segments of a complete frames dataset, in shard order, with each clip's shard."""
    if manifest.get("partial"):
        raise DatasetError(f"the frames dataset is incomplete: ingest stopped inside segment "
                           f"{manifest['partial']['segment']!r}; run the same ingest again to finish it")
    capacity = [s["samples"] for s in manifest["shards"]]
    plans, shard, used = [], 0, 0
    for seg in manifest["segments"]:
        refs = []
        for clip in range(seg["clips"]):
            while shard < len(capacity) and used >= capacity[shard]:
                shard, used = shard + 1, 0
            if shard >= len(capacity):
                raise DatasetError(f"frames manifest lists more clips than its shards hold (at {seg['name']})")
            refs.append(ClipRef(shard, shards.clip_key(seg["name"], clip)))
            used += 1
        plans.append(SegmentPlan(seg["name"], tuple(refs)))
    if sum(capacity) != sum(len(p.clips) for p in plans):
        raise DatasetError("frames manifest: shard sample counts and segment clip counts disagree")
    return plans


class Arena:
    """A read buffer reused from read to read (no page faults): `take(n)` gives n bytes of it, in a new, larger
    buffer when it is too small (views of the old one stay valid)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def take(self, n: int) -> memoryview:
        if n > len(self.buf):
            self.buf = bytearray(n + (n >> 2))
        return memoryview(self.buf)[:n]


class ShardIndex:
    """Member offsets of one shard; clips are read with pread, any order, from any thread."""

    def __init__(self, path: Path, members: dict[str, str | None]) -> None:
        self.path = path = store.ensure_local(path)
        self.members: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    key, _, member = info.name.partition(".")
                    if not info.isreg() or member not in members:
                        raise DatasetError(f"{path.name}: unexpected member {info.name!r}")
                    self.members.setdefault(key, {})[member] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as e:
            raise DatasetError(f"{path.name}: unreadable shard ({e})") from e
        self.keys = list(self.members)
        self.fd: int | None = os.open(path, os.O_RDONLY)

    def read_raw(self, key: str, wanted: tuple[str, ...], arena: Arena | None = None) -> dict[str, Any]:
        """Member bytes of sample `key` (those of `wanted` it has), plus `__key__`. Reopens the file if closed.
        With `arena`, plain arrays (`.npy.zst`) of over 64 KiB are read into it and returned as memoryviews of it
        (valid until the next read into the same arena): a reader that reuses its buffer takes no page faults."""
        entry = self.members.get(key)
        if entry is None:
            raise DatasetError(f"{self.path.name}: no sample {key!r} (the frames manifest and shard disagree)")
        if self.fd is None:
            self.fd = os.open(store.ensure_local(self.path), os.O_RDONLY)
        raw: dict[str, Any] = {"__key__": key}
        into = set() if arena is None else {m for m in wanted
                                            if m in entry and entry[m][1] > 65536 and m.endswith(".npy.zst")}
        view, used = (None if arena is None else arena.take(sum(entry[m][1] for m in into))), 0
        for member in wanted:
            if member in entry:
                offset, size = entry[member]
                if member in into:
                    got = os.preadv(self.fd, [view[used: used + size]], offset)
                    if got != size:
                        raise DatasetError(f"{self.path.name}: {key}.{member} is truncated")
                    raw[member], used = view[used: used + size], used + size
                else:
                    raw[member] = os.pread(self.fd, size, offset)
        return raw

    def read(self, key: str, wanted: tuple[str, ...]) -> dict[str, Any]:
        """Decoded members of sample `key` (arrays and parsed JSON), plus `__key__`."""
        return shards.decode_sample(self.read_raw(key, wanted))

    def close(self) -> None:
        """Close the file (the index stays: a later read reopens it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
