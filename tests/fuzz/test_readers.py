# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Every reader of outside bytes, fed mutated files (hypothesis, a few derandomized examples per target;
`benchmarks/fuzz.py` runs the same targets for as long as you like): each returns or raises a one-line
SparkDistillError, in bounded time, and changes no file it was not handed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import TARGETS, run_example

# examples per target in the suite (the long run is benchmarks/fuzz.py): fewer where an example builds a
# student (run-*, ~1-3 s) or loads ONNX graphs / ingests a segment (~0.5 s)
_EXAMPLES = {"rlog-ingest": 3, "hevc-ingest": 3, "metadata-pkl": 3, "metadata-json": 3, "onnx-vision": 2,
             "onnx-policy": 2, "onnx-graph": 3, "frames-train": 4, "labels-train": 4} | {
    n: 2 for n in TARGETS if n.startswith("run-")}


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if not t.slow])
def test_fuzzed_reader_returns_or_fails_with_one_line(name: str, corpus: Path) -> None:
    @settings(max_examples=_EXAMPLES.get(name, 6), derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed: int) -> None:
        o = run_example(TARGETS[name], corpus, seed, timeout=30.0)
        assert not o.finding, f"{o.signature()} (example {seed}: {o.mutation})"
        assert o.kind in ("ok", "error")

    check()


def test_label_pass_skips_a_damaged_frames_shard_and_labels_the_rest(corpus: Path) -> None:
    o = run_example(TARGETS["frames-label"], corpus, 1, timeout=60.0)
    assert o.kind == "ok", o.signature()  # the target itself checks the skip is recorded and the rest labeled
