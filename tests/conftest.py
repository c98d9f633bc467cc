# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Shared fixtures: small synthetic routes, written once per test session (per xdist worker)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tici_route(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, object]:
    """Two 2-second comma 3X segments (road + wide, rlog.bz2) with a lane change across them."""
    from spark_distill.synth.route import SynthConfig, write_route  # PyAV: imported only where routes are made

    cfg = SynthConfig(segments=2, seconds=2.0, device="tici", lane_change_at=1.5)
    out = tmp_path_factory.mktemp("tici")
    return out, write_route(out, cfg), cfg


@pytest.fixture(scope="session")
def faulty_routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """One single-segment route per fault (older 1164x874 device unless the fault needs a wide camera)."""
    from spark_distill.synth.route import SynthConfig, write_route

    routes = {}
    for i, fault in enumerate(("truncated-log", "missing-encode-idx", "encoder-drops", "corrupt-video-tail",
                               "missing-wide")):
        device = "tici" if fault == "missing-wide" else "eon"
        fmt = ("zst", "raw", "bz2")[i % 3]
        cfg = SynthConfig(segments=1, seconds=2.0, device=device, log_format=fmt, faults=(fault,), seed=i,
                          start=f"2026-11-2{i}--10-00-00")
        out = tmp_path_factory.mktemp(fault)
        routes[fault] = (out, write_route(out, cfg)[0])
    return routes
