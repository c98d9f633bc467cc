# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The command line under a pseudo-terminal, as a user at a terminal runs it: what its live display draws."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

# what would make rich take the pseudo-terminal for something else, or size it by the test's own terminal
_NOT_A_USERS = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM")
BAR = "━"  # rich's bar segment


def run_in_pty(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300.0,
               columns: int = 120) -> tuple[int, str]:
    """(exit code, everything written to the terminal: stdout and stderr as the user sees them) of
    `python -m spark_distill *args` run with a pseudo-terminal as its stdin, stdout and stderr."""
    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in _NOT_A_USERS} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "spark_distill", *args], stdin=terminal, stdout=terminal,
                            stderr=terminal, env=environ | (env or {}), start_new_session=True)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main_fd], [], [], 0.2)[0]:
                try:
                    data = os.read(main_fd, 1 << 16)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:  # exited, and nothing left to read
                break
        else:
            raise TimeoutError(f"spark-distill {' '.join(args)} ran past {timeout:.0f} s")
    finally:
        os.close(main_fd)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def plain(text: str) -> str:
    """The text without its escape sequences (colours, cursor movement): every redraw of a live line kept."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def screen(text: str) -> str:
    """The text as it ends up on the screen, roughly: escape sequences dropped, each line as last redrawn."""
    return "\n".join(line.rstrip("\r").split("\r")[-1] for line in plain(text).split("\n"))
