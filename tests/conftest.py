# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Shared fixtures: small synthetic routes, written once per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tinygrad (export's consumer check) reads these when imported: its CPU device (the check pins it too), and
# kernels left unoptimised, which makes a graph's first run ~4 s instead of ~20 s (same ops, same lowering).
os.environ.setdefault("DEV", "CPU:CLANG")
os.environ.setdefault("NOOPT", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow first (the order they are collected in otherwise): on two xdist workers a minutes-long
    test that starts last keeps one worker busy after the other has finished everything else."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="session")
def labeled(tici_route, faulty_routes, tmp_path_factory) -> Path:
    """Seven segments (two comma 3X, five older-device ones with faults), 10-frame clips, 3 clips per shard,
    label set 'set' from a tiny stand-in teacher."""
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher

    root = tmp_path_factory.mktemp("trainds")
    inputs = [str(tici_route[0])] + [str(r) for r, _ in faulty_routes.values()]
    ingest(IngestConfig(inputs=tuple(inputs), out=root, workers=1, clip_len=10, shard_clips=3))
    write_teacher(root / "teacher", seed=1)
    label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=4, name="set"))
    return root
