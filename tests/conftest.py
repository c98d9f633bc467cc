# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Shared fixtures: small synthetic routes, written once per test run (shared by the xdist workers), and a
labeled dataset made from them once per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.once import built_once

# tinygrad (export's consumer check) reads these when imported: its CPU device (the check pins it too), and
# kernels left unoptimised, which makes a graph's first run ~4 s instead of ~20 s (same ops, same lowering).
os.environ.setdefault("DEV", "CPU:CLANG")
os.environ.setdefault("NOOPT", "1")
# xdist workers share the machine's cores, so each worker's thread pools get its share (OMP_NUM_THREADS, which
# the processes a test starts inherit). With a pool per core in each of two workers on CI's two cores, the
# workers' threads spin-wait on each other: training ran 2-4x slower (tests/train/test_loop.py with
# tests/evaluate: 210 s -> 111 s on -n 2) and labeling with ONNX Runtime ~1.5x (480 frames: 10.9 s -> 7.3 s).
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))


def pytest_configure(config: pytest.Config) -> None:
    from spark_distill.processes import reuse_freed_memory

    reuse_freed_memory()  # as the CLI does: tests call its passes in-process
    if "PYTEST_XDIST_WORKER" in os.environ and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        _share_onnxruntime_threads(int(os.environ["OMP_NUM_THREADS"]))


def _share_onnxruntime_threads(threads: int) -> None:
    """ONNX Runtime reads no environment variable for its pool (one thread per core unless a session's options
    say otherwise): sessions made in this worker default to `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        return

    class Session(ort.InferenceSession):
        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs) -> None:
            opts = sess_options if sess_options is not None else ort.SessionOptions()
            if opts.intra_op_num_threads == 0:  # 0: ORT's default
                opts.intra_op_num_threads = threads
            super().__init__(path_or_bytes, opts, *args, **kwargs)

    ort.InferenceSession = Session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow first (the order they are collected in otherwise): on two xdist workers a minutes-long
    test that starts last keeps one worker busy after the other has finished everything else."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


TEST_DONGLE = "0123456789abcdef"  # the shared routes' dongle id (given: a synthetic route's default is derived)


@pytest.fixture(scope="session")
def tici_route(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, object]:
    """Two 2-second comma 3X segments (road + wide, rlog.bz2) with a lane change across them (written once per
    run and shared by the xdist workers: tests copy a route before they damage it)."""

    def build(out: Path) -> tuple[Path, list, object]:
        from spark_distill.synth.route import SynthConfig, write_route  # PyAV: imported only where routes are made

        # named as before synthetic names were derived from the options: tests count clips per shard and the
        # validation split, which follow the segments' names
        cfg = SynthConfig(segments=2, seconds=2.0, device="tici", lane_change_at=1.5, dongle=TEST_DONGLE,
                          start="2026-11-26--12-00-00")
        return out, write_route(out, cfg), cfg

    return built_once(tmp_path_factory, "tici", build)


@pytest.fixture(scope="session")
def faulty_routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """One single-segment route per fault (older 1164x874 device unless the fault needs a wide camera); written
    once per run, like tici_route."""

    def build(folder: Path) -> dict[str, tuple[Path, object]]:
        from spark_distill.synth.route import SynthConfig, write_route

        routes = {}
        for i, fault in enumerate(("truncated-log", "missing-encode-idx", "encoder-drops", "corrupt-video-tail",
                                   "missing-wide")):
            device = "tici" if fault == "missing-wide" else "eon"
            fmt = ("zst", "raw", "bz2")[i % 3]
            cfg = SynthConfig(segments=1, seconds=2.0, device=device, log_format=fmt, faults=(fault,), seed=i,
                              dongle=TEST_DONGLE, start=f"2026-11-2{i}--10-00-00")
            out = folder / fault
            routes[fault] = (out, write_route(out, cfg)[0])
        return routes

    return built_once(tmp_path_factory, "faulty", build)


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
