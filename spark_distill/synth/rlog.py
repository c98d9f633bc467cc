# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Writing cereal logs as a device does: one Event message at a time (`event`) and the rlog file, compressed in
pieces as a logger streaming to disk writes it (`write_log`). Used by the synthetic route writer and by the
logged model outputs added to a written route."""

from __future__ import annotations

import bz2
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard


def event(schema: Any, t: int, which: str, fill: Callable[[Any], None] | None = None) -> tuple[int, bytes]:
    """One cereal Event at logMonoTime `t` (ns) with union member `which`, filled by `fill(builder)`: (t, bytes)."""
    ev = schema.Event.new_message(logMonoTime=t, valid=True)
    body = ev.init(which)
    if fill is not None:
        fill(body)
    return t, ev.to_bytes()


def write_log(seg: Path, fmt: str, raw: bytes, *, truncated: bool, name: str = "rlog") -> None:
    """Compress in 16 kB pieces, as a logger streaming to disk does (zstd blocks flushed, bz2 streams
    concatenated), so a truncated file keeps its complete pieces."""
    pieces = [raw[i:i + (1 << 14)] for i in range(0, len(raw), 1 << 14)]
    if fmt == "zst":
        cobj = zstandard.ZstdCompressor(level=10).compressobj()
        data = b"".join(cobj.compress(p) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for p in pieces)
        data += cobj.flush()
    elif fmt == "bz2":
        data = b"".join(bz2.compress(p, 9) for p in pieces)
    else:
        data = raw
    if truncated:  # the device lost power mid-write
        data = data[: int(len(data) * 0.7)]
    (seg / (name if fmt == "raw" else f"{name}.{fmt}")).write_bytes(data)  # name: rlog, or qlog
