# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Child processes of a pass, for the tests that kill it (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def _stat(path: Path) -> list[str] | None:
    """A /proc/<pid>/stat's fields after the command name (state, parent pid, ...), or None once it is gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is `pid`."""
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat") if (f := _stat(p)) and int(f[1]) == pid]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper)."""
    return (f := _stat(Path(f"/proc/{pid}/stat"))) is not None and f[0] != "Z"
