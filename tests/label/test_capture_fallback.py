# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""CUDA-graph capture's way out (`cuda_graphs.capture_or_none`), on the CPU with torch.cuda's capture calls faked:
a forward that cannot be captured (it copies to the host at every call, as onnx2torch's operators with host-side
operands do) runs uncaptured with one note; the forward's own errors still raise."""

from __future__ import annotations

import contextlib

import pytest
import torch

from spark_distill import cuda_graphs
from spark_distill.label.backends.torch import _Graphed


class _FakeCuda:
    """torch.cuda's capture calls, recording whether a capture is under way."""

    def __init__(self) -> None:
        self.capturing = False
        self.synced = 0
        self.emptied = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        class Graph:
            def replay(self) -> None:
                pass

        @contextlib.contextmanager
        def graph(_g: Graph):
            fake.capturing = True
            try:
                yield
            finally:
                fake.capturing = False

        class Stream:
            def wait_stream(self, _other: object) -> None:
                pass

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda _s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: setattr(fake, "synced", fake.synced + 1))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: setattr(fake, "emptied", fake.emptied + 1))


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> _FakeCuda:
    fake = _FakeCuda()
    fake.install(monkeypatch)
    return fake


def test_a_capturable_forward_is_captured(cuda: _FakeCuda) -> None:
    calls = []
    out = torch.zeros(3)

    def fn() -> torch.Tensor:
        calls.append(cuda.capturing)
        return out

    got = cuda_graphs.capture_or_none(fn, "the step", print)
    assert got is not None and got[1] is out
    assert calls == [False, False, False, True]  # three warm-ups, then the capture
    assert cuda.synced == cuda.emptied == 0


def test_a_forward_that_cannot_be_captured_runs_uncaptured_with_one_note(cuda: _FakeCuda,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if cuda.capturing:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore lines")
        return x * 2

    told = []
    with caplog.at_level("INFO", logger="spark_distill.notes"):
        graphed = _Graphed(forward, {"x": torch.ones(2)}, "the teacher's vision model", lambda: told.append(1))
    assert graphed.graph is None and cuda.synced == cuda.emptied == 1, "the failed capture's memory is handed back"
    assert told == [1], "the backend is told, so that the label manifest records the graph ran uncaptured"
    notes = [r.getMessage() for r in caplog.records if r.name == "spark_distill.notes"]
    assert notes == ["the teacher's vision model could not be captured as a CUDA graph (RuntimeError: CUDA error: "
                     "operation not permitted when stream is capturing); it runs uncaptured"]
    torch.testing.assert_close(graphed({"x": torch.tensor([1.0, 3.0])}), torch.tensor([2.0, 6.0]))


def test_the_forwards_own_error_still_raises(cuda: _FakeCuda) -> None:
    def broken() -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cuda_graphs.capture_or_none(broken, "the step", print)
    assert cuda.synced == 0
