# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Quantities as a person reads them: `format_duration(16.0)` -> "16.0 s", `format_duration(3720)` -> "1 h 02 min",
`format_size(44_308_480)` -> "44.3 MB" (decimal units, as disks and `du --si` count)."""

from __future__ import annotations

SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_duration(seconds: float) -> str:
    """Seconds below a minute, minutes and seconds below an hour, hours and minutes above."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_size(n: int) -> str:
    """Bytes with three significant figures in the largest unit that keeps the value at least 1."""
    value, unit = float(n), 0
    while value >= 999.5 and unit < len(SIZE_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    if unit == 0:
        return f"{n} B"
    decimals = 0 if value >= 99.95 else 1 if value >= 9.995 else 2
    return f"{value:.{decimals}f} {SIZE_UNITS[unit]}"
