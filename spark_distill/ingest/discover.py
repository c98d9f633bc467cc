# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Finding route segments: identifier -> folders -> segments, one small function per step.

Accepts segment folders, route folders, parent folders and globs. Names follow openpilot:
`<dongle>|<YYYY-MM-DD--HH-MM-SS>--<n>` (tools; `|`, `_` or `/` between dongle and time),
`<route>--<n>` on the device (/data/media/0/realdata), or `<route>/<n>`. Main entry point:
`discover_segments(paths, log_kind)`.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from spark_distill.errors import IngestError

LOG_NAMES = ("rlog.zst", "rlog.bz2", "rlog")
QLOG_NAMES = ("qlog.zst", "qlog.bz2", "qlog")
CAMERA_FILES = {"road": "fcamera.hevc", "wide": "ecamera.hevc", "qroad": "qcamera.ts"}
QCAMERA = "qroad"  # qcamera.ts: the small H.264 copy of the road camera that a device uploads by default
_ROUTE = r"(?:\d{4}-\d{2}-\d{2}--\d{2}-\d{2}-\d{2}|[0-9a-f]{8}--[0-9a-f]{10})"
_SEGMENT_RE = re.compile(rf"^(?:(?P<dongle>[0-9a-f]{{16}})[|_])?(?P<route>{_ROUTE})--(?P<n>\d+)$")
_ROUTE_RE = re.compile(rf"^(?:(?P<dongle>[0-9a-f]{{16}})[|_])?(?P<route>{_ROUTE})$")
_DONGLE_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True, order=True)
class Segment:
    """One segment folder. Ordered by (dongle, route, number)."""

    dongle: str
    route: str
    number: int
    path: Path

    @property
    def name(self) -> str:
        base = f"{self.route}--{self.number}"
        return f"{self.dongle}|{base}" if self.dongle else base

    def log_file(self, kind: str) -> tuple[Path | None, str]:
        """The log to read for `kind` rlog|qlog|auto, and which kind it is."""
        order = {"rlog": (LOG_NAMES,), "qlog": (QLOG_NAMES,), "auto": (LOG_NAMES, QLOG_NAMES)}[kind]
        for names in order:
            for n in names:
                if (self.path / n).is_file():
                    return self.path / n, "qlog" if names is QLOG_NAMES else "rlog"
        return None, kind

    def camera_file(self, camera: str) -> Path | None:
        p = self.path / CAMERA_FILES[camera]
        return p if p.is_file() else None


def _is_segment_dir(path: Path) -> bool:
    return any((path / n).is_file() for n in (*LOG_NAMES, *QLOG_NAMES, *CAMERA_FILES.values()))


def segment_from_dir(path: Path) -> Segment:
    """Name a segment folder from its own name, or its parents' (`<route>/<n>`, `<dongle>/<route>--<n>`)."""
    name, parent = path.name, path.parent.name
    if m := _SEGMENT_RE.match(name):
        dongle = m["dongle"] or (parent if _DONGLE_RE.match(parent) else "")
        return Segment(dongle, m["route"], int(m["n"]), path)
    if name.isdigit() and (m := _ROUTE_RE.match(parent)):
        grand = path.parent.parent.name
        dongle = m["dongle"] or (grand if _DONGLE_RE.match(grand) else "")
        return Segment(dongle, m["route"], int(name), path)
    # not openpilot's naming: keep the folder name as the route, segment 0
    return Segment("", re.sub(r"[^A-Za-z0-9_\-]", "_", name), 0, path)


def _expand(arg: str) -> list[Path]:
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(arg))
        if not matches:
            raise IngestError(f"{arg}: the pattern matches nothing")
        return matches
    path = Path(arg)
    if not path.exists():
        raise IngestError(f"{arg}: no such file or directory")
    if not path.is_dir():
        raise IngestError(f"{arg}: not a directory (give a segment, route or parent folder)")
    return [path]


def _walk(root: Path) -> list[Path]:
    if _is_segment_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for d in list(dirnames):
            p = Path(dirpath) / d
            if _is_segment_dir(p):
                found.append(p)
                dirnames.remove(d)  # segments do not nest
    return found


def discover_segments(paths: list[str]) -> list[Segment]:
    """All segments under `paths`, deduplicated and sorted by route and number."""
    if not paths:
        raise IngestError("no input paths given")
    segments: dict[Path, Segment] = {}
    for arg in paths:
        for root in _expand(arg):
            found = _walk(root) if root.is_dir() else []
            if not found:
                raise IngestError(f"{root}: no route segments found (expected rlog.* or qlog.*, and fcamera.hevc "
                                  "or qcamera.ts)")
            for p in found:
                segments.setdefault(p.resolve(), segment_from_dir(p))
    ordered = sorted(segments.values())
    names = [s.name for s in ordered]
    if dup := {n for n in names if names.count(n) > 1}:
        raise IngestError(f"segment {sorted(dup)[0]!r} is given twice from different folders")
    return ordered
