# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Where the label pass's time goes: main-process seconds by stage of a step, and the accelerator's busy time
(a pair of CUDA events around each step's compute). `StepProfile.report` gives the numbers per step."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class StepProfile:
    """Host seconds by stage ("wait for readers", "host->device", "compute", "device->host", "hand-off to the
    writer"), the steps run, the seconds before the first step, and the compute's GPU time."""

    def __init__(self) -> None:
        self.host_s: collections.Counter[str] = collections.Counter()  # main-process seconds by stage
        self.steps = 0
        self.fill_s = 0.0  # seconds the pass waited for its rows' first clips before the first step
        self.gpu_events: list[tuple[Any, Any]] = []  # (start, end) of each step's compute, not yet summed
        self.gpu_busy = 0.0  # s, of the steps no longer in gpu_events

    def add(self, stage: str, start: float) -> None:
        """Count the seconds from `start` (time.perf_counter()) to now for `stage`."""
        self.host_s[stage] += time.perf_counter() - start

    @contextlib.contextmanager
    def setting_up(self) -> Iterator[None]:
        """The rows' first clips before the first step: a fixed cost, counted as `fill_s` and not per step."""
        start, waited = time.perf_counter(), self.host_s["wait for readers"]
        yield
        self.fill_s = time.perf_counter() - start
        self.host_s["wait for readers"] = waited

    def gpu_begin(self, stream: Any) -> None:
        """A step's compute starts on `stream` (CUDA)."""
        while len(self.gpu_events) > 64 and self.gpu_events[0][1].query():  # keep the list short
            a, b = self.gpu_events.pop(0)
            self.gpu_busy += a.elapsed_time(b) / 1000
        self.gpu_events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
        self.gpu_events[-1][0].record(stream)

    def gpu_end(self, stream: Any) -> None:
        """The step's compute is enqueued on `stream`."""
        self.gpu_events[-1][1].record(stream)

    def report(self, wall: float, readers: Any, *, device: torch.device, captured: bool) -> dict[str, float]:
        """Seconds per step by stage (main process), readers' read/decode seconds per step (summed over the
        processes), and the accelerator's busy fraction of `wall` (CUDA events; on the CPU, compute / wall)."""
        steps = max(1, self.steps)
        out = {f"{k} s/step": v / steps for k, v in self.host_s.items()}
        out.update({f"readers {k} s/step": v / steps for k, v in readers.seconds.items()})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            busy = self.gpu_busy + sum(a.elapsed_time(b) for a, b in self.gpu_events) / 1000
        else:
            busy = self.host_s["compute"]
        out["busy fraction"] = busy / wall if wall else 0.0
        out["captured step"] = float(captured)
        out["clips spilled"] = float(readers.spilled)
        out["steps"] = float(self.steps)
        return out
