# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Worker processes that never outlive the pass that started them. Entry point: `child_init` (every pool,
manager and reader process runs it first)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def child_init(parent: int | None = None) -> None:
    """Ignore Ctrl-C (the main process stops its workers) and die with the main process `parent`, even when it
    is killed (-9, out of memory): such an orphan would otherwise wait on its task queue forever, holding its
    memory and the pass's stderr. A parent killed while this process was still starting (before
    PR_SET_PDEATHSIG took hold) is seen as a changed parent pid."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
