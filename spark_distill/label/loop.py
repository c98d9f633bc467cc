# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The labeling loop: `batch` segments labeled in lockstep, one per batch row, with their clips held on the device.

Main entry point: `LabelLoop.run(work, bad)`. Its parts: which segment and clip each row takes next
(schedule.SegmentScheduler), the rows' clip slots on the device and the copies into them (slots.ClipSlots), the
step itself (step.LabelStep), and the way out (`ClipOutputs`). One step, all rows at once:
1. state events: rows that start a segment, restart after unreadable clips or replay frames the encoder dropped
   are handled by one batched reset and one batched replay of the modeld state;
2. inputs: one packed host->device copy of the small per-frame inputs; frame t of every row is gathered on the
   device from its clip slot;
3. compute: vision, then policy through the modeld state, outputs into per-row device buffers (on CUDA one
   captured graph);
4. staging (host, while the GPU computes): decoded clips from the reader processes (workers.py) go up whole into
   each row's free device slot;
5. way out: rows that finished a clip have their outputs gathered on the device and copied back in one
   device->host copy per step into consecutive rows of the writers' shared output slab (page-locked); once
   landed, each clip's row goes to the writer process of its shard, which compresses and writes.
Nothing syncs the host with the GPU except waiting for a clip's output copy, and only once it has landed.
`report()` gives host seconds per stage and the accelerator's busy time (profile.StepProfile).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spark_distill.data.index import ClipRef, SegmentPlan
from spark_distill.label.backends import Backend
from spark_distill.label.profile import StepProfile
from spark_distill.label.schedule import RESET, Segment, SegmentScheduler
from spark_distill.label.slots import ClipSlots
from spark_distill.label.step import LabelStep
from spark_distill.label.workers import ClipReaders
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.teachers import Teacher

OutRows = Callable[[int, Callable[[], None]], tuple[int, torch.Tensor]]  # k consecutive output slab rows


class ClipOutputs:
    """The way out: the outputs of the clips that finished in a step go to the host in one copy (asynchronous on
    a GPU) into `out_rows(k, drain)` (k consecutive rows of the writers' output slab, `drain` called while they
    are still taken), and each clip goes to `emit(clip, slab row, frames)` once its copy has landed."""

    def __init__(self, step: LabelStep, out_rows: OutRows | None, emit: Callable[[ClipRef, int, int], None] | None,
                 profile: StepProfile) -> None:
        self.step, self.out_rows, self.emit, self.profile = step, out_rows, emit, profile
        self.finished: list[tuple[list[tuple[ClipRef, int]], int, Any]] = []  # (clips, first slab row, copy event)

    def copy_out(self, rows: np.ndarray, clips: list[tuple[ClipRef, int]]) -> None:
        """Copy the outputs of `rows`, whose clips `clips` (clip, frames) have finished, to the host."""
        start = time.perf_counter()
        first, host = self.out_rows(len(rows), self.emit_ready)  # (rows, T, vision + policy) fp16 slab rows
        step = self.step
        idx = step.staging.index(rows)
        out = torch.cat([step.out_v[idx], step.out_p[idx]], dim=2)  # (rows, T, vision + policy) fp16, on the device
        host.copy_(out, non_blocking=step.cuda)  # enqueued before the next step overwrites the rows
        event = torch.cuda.Event() if step.cuda else None
        if event is not None:
            event.record()
        self.profile.add("device->host", start)
        self.finished.append((clips, first, event))

    def emit_ready(self, wait: bool = False) -> None:
        """Hand finished clips whose copies have landed (all of them with `wait`) to the writer."""
        start = time.perf_counter()
        while self.finished and (wait or self.finished[0][2] is None or self.finished[0][2].query()):
            clips, first, event = self.finished.pop(0)
            if event is not None:
                event.synchronize()
            for j, (ref, n) in enumerate(clips):
                self.emit(ref, first + j, n)
        self.profile.add("hand-off to the writer", start)


class LabelLoop:
    """Labels segments with `batch` rows in lockstep: clips from `readers`, outputs into the writers' slab rows
    (`out_rows`) and to `emit`; each segment's record goes into `segments_meta` (the label manifest's "segments")
    as its clips are staged."""

    def __init__(self, *, teacher: Teacher, backend: Backend, batch: int, clip_len: int, delays: DelayChoice,
                 segment_delays: dict[str, dict[str, Any]], readers: ClipReaders, out_rows: OutRows,
                 emit: Callable[[ClipRef, int, int], None], segments_meta: dict[str, Any]) -> None:
        self.batch, self.readers, self.segments_meta = batch, readers, segments_meta
        self.segment_delays = segment_delays  # segment name -> the delays its record says were fed
        self.profile = StepProfile()
        self.step = LabelStep(teacher=teacher, backend=backend, batch=batch, clip_len=clip_len, profile=self.profile)
        self.slots = ClipSlots(self.step, readers, batch=batch, clip_len=clip_len, profile=self.profile,
                               delays=delays)
        self.scheduler = SegmentScheduler(readers, batch=batch, clip_len=clip_len, profile=self.profile)
        self.outputs = ClipOutputs(self.step, out_rows, emit, self.profile)
        self.cursor = 0  # round-robin position of the staging service

    def run(self, work: list[SegmentPlan], bad: set[int], on_progress: Callable[[int], None] | None = None) -> int:
        """Label every clip of `work` (clips in `bad` shards skipped); returns frames labeled."""
        switch = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)  # the queue and writer threads must not hold the GIL for 5 ms while a step waits
        try:
            return self._run(work, bad, on_progress)
        finally:
            sys.setswitchinterval(switch)

    def _run(self, work: list[SegmentPlan], bad: set[int], on_progress: Callable[[int], None] | None) -> int:
        with self.profile.setting_up():  # the rows' first clips: a fixed cost, not a per-step one
            self.scheduler.start(work, bad)
            for row in range(self.batch):
                self._next_segment(row)
        frames = 0
        while (active := self.slots.active()).any():
            self._step(active)  # the GPU works on this step while the host stages clips below
            frames += int(active.sum())
            if on_progress is not None:
                on_progress(frames)
            self._service(budget=max(2, self.batch // 8))
            self.profile.steps += 1
            done = self.slots.finished(active)
            if len(done):
                self.outputs.copy_out(done, self.slots.current_clips(done))
                for row in done:
                    self._next_clip(row)
            self.outputs.emit_ready()
        self.outputs.emit_ready(wait=True)
        return frames

    def _step(self, active: np.ndarray) -> None:
        """Enqueue one step of every row (the `active` ones move on a frame), after the copies queued for it."""
        packed = self.slots.packed_inputs()
        inputs_ready = self.step.upload_ahead(packed)  # with a captured step: on the copy stream, ahead of the clips
        self.slots.flush()  # timed as host->device, not as compute
        start = time.perf_counter()
        gaps = self.slots.gaps(active)
        resets = sorted(set(self.scheduler.take_started()) | set(np.flatnonzero(gaps == RESET).tolist()))
        self.step.run(packed, resets=resets, gaps=gaps, waits=self.slots.take_ready(), inputs_ready=inputs_ready)
        self.slots.stepped(active)
        self.profile.add("compute", start)

    # -- rows ----------------------------------------------------------------------------------------
    def _stage(self, row: int, segment: Segment, *, wait: bool) -> bool:
        """Queue `segment`'s next clip for the row's free slot, if it is decoded (or `wait`); whether the free slot
        holds the row's next clip now."""
        if self.slots.staged(row):
            return True
        clip = self.scheduler.next_clip(segment, wait=wait, before_wait=self.slots.flush)
        if clip is None:
            return False
        self._record(segment)
        self.slots.load(row, clip)
        return True

    def _record(self, segment: Segment) -> None:
        """The segment's entry in the label manifest, as of now (a new segment's, then after each clip staged)."""
        entry = segment.record()
        if segment.plan.name in self.segment_delays:
            entry["delays"] = self.segment_delays[segment.plan.name]
        self.segments_meta[segment.plan.name] = entry

    def _next_segment(self, row: int) -> None:
        """The row takes the next segment and flips to its first clip (or idles: none is left)."""
        segment = self.scheduler.begin(row)
        if segment is None:
            self.slots.idle(row)
            return
        self._record(segment)
        self._stage(row, segment, wait=True)
        self.slots.flip(row)

    def _next_clip(self, row: int) -> None:
        """The row finished its clip: on to its segment's next clip, or the next segment."""
        segment = self.scheduler.segments[row]
        if self.scheduler.successors[row] is not None:  # its next segment is already on the device
            self.scheduler.advance(row)
            self.slots.flip(row)
        elif self.slots.staged(row) or segment.pending:
            self._stage(row, segment, wait=True)
            self.slots.flip(row)
        else:
            self._next_segment(row)

    def _service(self, budget: int) -> None:
        """Stage up to `budget` next clips that readers have finished (round-robin): the row's own next clip, or,
        when its segment has none left, the first clip of the segment it will take next."""
        self.readers.poll()  # take every decoded clip once; Ticket.done() then costs nothing
        for _ in range(self.batch):
            if budget <= 0:
                break
            row = self.cursor = (self.cursor + 1) % self.batch
            segment = self.scheduler.segments[row]
            if segment is None or self.slots.staged(row):
                continue
            if segment.pending:
                budget -= self._stage(row, segment, wait=False)
            elif self.scheduler.successor_ready(row):
                successor = self.scheduler.take_successor(row)
                self._record(successor)
                budget -= self._stage(row, successor, wait=True)
        self.slots.flush()

    def report(self, wall: float) -> dict[str, float]:
        """The profile (profile.StepProfile.report) of the pass so far, `wall` seconds long."""
        return self.profile.report(wall, self.readers, device=self.step.device, captured=bool(self.step.graphs))
