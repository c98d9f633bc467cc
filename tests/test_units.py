# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Durations and sizes in the units a person reads."""

from __future__ import annotations

import pytest

from spark_distill.units import format_duration, format_size


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0.0 s"), (16.0, "16.0 s"), (59.96, "1 min 00 s"), (125.4, "2 min 05 s"), (3599.4, "59 min 59 s"),
    (3599.6, "1 h 00 min"), (3720.0, "1 h 02 min"), (100_000.0, "27 h 47 min")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.00 kB"), (999_499, "999 kB"), (999_500, "1.00 MB"),
    (9_995_000, "10.0 MB"), (44_308_480, "44.3 MB"), (1_000_000_000, "1.00 GB"), (123 * 10**15, "123 PB")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
