# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""B segments labeled in lockstep, one lane each, with their clips held on the device.

Main entry point: `LaneRunner.run(work)`. Stages of one step, all B lanes at once:
1. state events: lanes that start a segment, restart after unreadable clips or replay frames the encoder
   dropped are handled by one batched reset and one batched replay of the modeld state (state.py);
2. inputs: one packed host->device copy of the small per-frame inputs (slot, t, v_ego, traffic, desire);
   frame t of every lane is gathered on the device from its clip slot;
3. compute (`_compute`): vision, then policy through the modeld state; outputs go into per-lane device
   buffers. Every buffer it touches is static: with a compiling backend the whole step is one inductor
   program (the gather and the image ring fuse into the vision's first kernels), and on CUDA it is one
   captured CUDA graph, replayed once per step (the host launches one graph, not hundreds of ops);
4. staging (host, while the GPU computes): decoded clips from the reader processes (workers.py) go up
   whole, both cameras in one copy each, on a side stream, into the lane's free device slot (the copies
   queued in a step are issued together, with one event);
5. way out: lanes that finished a clip have their outputs gathered on the device and copied back in
   one device->host copy per step into consecutive rows of the writers' shared output slab (page-locked);
   once landed, each clip's row goes to the writer process of its shard, which compresses and writes.
Invariants: each lane has two device slots (the clip being labeled, the next one), so a clip boundary
is a flip, not a wait; the compute stream waits for a slot's copy event before reading it, and a
copy into a slot waits only for the compute that last read it (an event recorded when its lane flipped away
from it), so copies overlap the step in flight instead of queueing behind it; nothing syncs
the host with the GPU except waiting for a clip's output copy, and only once it has landed.
`profile()` gives host seconds per stage and the accelerator's busy time (CUDA events).
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spark_distill.cuda_graphs import capture
from spark_distill.data.index import ClipRef, SegmentPlan
from spark_distill.errors import DatasetError
from spark_distill.label.backends import Backend
from spark_distill.label.workers import ClipReaders, Ticket
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.state import ModeldState
from spark_distill.openpilot.teachers import Teacher

RESET = -1  # gap marker: restart the lane's history before this frame


AHEAD_PER_READER = 2  # first clips of the segments the lanes take next, decoded ahead (LaneRunner._refill)


def reader_slots(batch: int, readers: int, *, accelerated: bool) -> int:
    """Clip slots of the readers' slab for `batch` lanes: AHEAD_PER_READER per reader for the first clips of the
    segments the lanes take next, and per lane its next clip, decoded while it waits for its device slot
    (the clip before it must be labeled first). With an accelerator, a second one per lane: the host runs steps
    ahead of the GPU, so a next clip's slot frees only once the GPU has reached the lane's clip boundary and
    copied it, and the reader of the clip after it could not start until then (H200, batch 256: readers had ~10
    of the 20 steps between boundaries to decode every lane's clip, and the lanes waited at each boundary)."""
    return (2 if accelerated else 1) * batch + AHEAD_PER_READER * readers


@dataclass
class _Lane:
    plan: SegmentPlan
    pending: collections.deque  # (ClipRef, Ticket | None), in order, not yet on the device
    restart_at: frozenset[str]
    prev_fid: int | None = None  # last frame id staged so far
    refs: list = field(default_factory=lambda: [None, None])  # ClipRef held in each slot
    staged: bool = False  # the other slot holds this lane's next clip


class _Staging:
    """Pinned host buffers for the small per-step inputs, used round-robin: a buffer is refilled only
    after the copy that last read it has run (its event), so the host never overwrites in-flight data."""

    def __init__(self, rows: int, cols: int, device: torch.device, depth: int = 16) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        self.bufs = [torch.zeros((rows, cols), pin_memory=self.cuda) for _ in range(depth)]
        self.index_bufs = [torch.zeros(rows, dtype=torch.long, pin_memory=self.cuda) for _ in range(depth)]
        self.events = [torch.cuda.Event() if self.cuda else None for _ in range(depth)]
        self.k = 0

    def _slot(self) -> int:
        self.k = (self.k + 1) % len(self.bufs)
        if self.events[self.k] is not None:
            self.events[self.k].synchronize()
        return self.k

    def upload(self, values: np.ndarray, out: torch.Tensor, *, stream: Any = None, after: Any = None) -> Any:
        """Copy `values` into the device tensor `out` (asynchronously on CUDA: on `stream`, default the current
        one, once the event `after` has passed); returns the event that marks the copy done (None on the CPU)."""
        k = self._slot()
        self.bufs[k].numpy()[...] = values
        if not self.cuda:
            out.copy_(self.bufs[k])
            return None
        with torch.cuda.stream(stream or torch.cuda.current_stream(self.device)):
            if after is not None:
                torch.cuda.current_stream(self.device).wait_event(after)
            out.copy_(self.bufs[k], non_blocking=True)
            self.events[k].record()
        return self.events[k]

    def index(self, rows: np.ndarray) -> torch.Tensor:
        k = self._slot()
        buf = self.index_bufs[k][: len(rows)]
        buf.numpy()[...] = rows
        out = buf.to(self.device, non_blocking=self.cuda)
        if self.cuda:
            self.events[k].record()
        return out


class LaneRunner:
    def __init__(self, *, teacher: Teacher, backend: Backend, batch: int, clip_len: int, lat_delay: float,
                 readers: ClipReaders, out_rows: Callable[[int, Callable[[], None]], tuple[int, torch.Tensor]],
                 emit: Callable[[ClipRef, int, int], None], segments_meta: dict[str, Any]) -> None:
        self.teacher, self.backend, self.b, self.tmax = teacher, backend, batch, clip_len
        self.readers, self.segments_meta = readers, segments_meta
        self.out_rows, self.emit = out_rows, emit  # k consecutive output rows; a clip landed in a row (row, frames)
        dev = self.dev = backend.device
        self.cuda = dev.type == "cuda"
        self.state = ModeldState(batch, history=teacher.history_len, device=dev, lat_delay=lat_delay)
        self.rows = torch.arange(batch, device=dev)
        # 2 slots per lane; a slot holds a whole clip, both cameras, laid out as a reader's slab slot (one copy)
        self.clips = torch.zeros((2, batch, 2, clip_len, 6, 128, 256), dtype=torch.uint8, device=dev)
        self.copy_stream = torch.cuda.Stream(dev) if self.cuda else None
        self.slot_ready: dict[tuple[int, int], Any] = {}  # (slot, lane) -> copy event the compute must wait for
        self.slot_free: dict[tuple[int, int], Any] = {}  # (slot, lane) -> event after the last compute that read it
        self.vacated: Any = None  # that event for the flips since the last step
        self.steps_enqueued = False
        self.flipped: list[tuple[int, int]] = []  # (slot, lane) made current since the last step
        self.uploads: list[tuple[Ticket, int, int]] = []  # clip copies queued, not yet issued
        self.resets: list[int] = []  # lanes that took a new segment since the last step
        self.host_s: collections.Counter[str] = collections.Counter()  # main-process seconds by stage
        self.gpu_events: list[tuple[Any, Any]] = []  # (start, end) of each step's compute, not yet summed
        self.gpu_busy = 0.0  # s
        # small per-frame inputs stay on the host and go up once per step, packed: slot, t, v_ego, traffic, desire
        self.desire = np.zeros((2, batch, clip_len, C.DESIRE_LEN), np.float32)
        self.v_ego = np.zeros((2, batch, clip_len), np.float32)
        self.traffic = np.zeros((2, batch, C.TRAFFIC_CONVENTION_LEN), np.float32)
        self.gap = np.zeros((2, batch, clip_len), np.int64)  # frames skipped before frame t, or RESET
        self.lengths = np.zeros((2, batch), np.int64)
        self.slot = np.zeros(batch, np.int64)
        self.length = np.zeros(batch, np.int64)  # frames in each lane's current clip; 0 = idle lane
        self.t = np.zeros(batch, np.int64)
        self.staging = _Staging(batch, 5 + C.DESIRE_LEN, dev)
        # this step's packed inputs (static: the step's graph reads them); on CUDA two buffers, one graph each, so
        # that the next step's inputs go up on the copy stream while this step runs (H200, batch 256: loop 14,123
        # vs 13,047 frames/s with one buffer uploaded on the compute stream behind the step; batch 64: 13,408 vs
        # 13,293)
        self.inputs_pair = [torch.zeros((batch, 5 + C.DESIRE_LEN), device=dev) for _ in range(2 if self.cuda else 1)]
        self.inputs_free: list[Any] = [None] * len(self.inputs_pair)  # event after the step that last read each
        self.parity = 0
        self.finished: list[tuple[list[tuple[ClipRef, int]], int, Any]] = []  # (clips, first row, copy event)
        self.out_v = torch.zeros((batch, clip_len, teacher.vision.width), dtype=torch.float16, device=dev)
        self.out_p = torch.zeros((batch, clip_len, teacher.policy.width), dtype=torch.float16, device=dev)
        self.lanes: list[_Lane | None] = [None] * batch
        self.successor: list[_Lane | None] = [None] * batch  # next segment, first clip staged
        self.image_names = teacher.image_inputs
        self.float_images = {n for n in self.image_names if teacher.vision.inputs[n][1] != "uint8"}
        self.policy_names = list(teacher.policy.inputs)
        self.hidden = teacher.vision.slices["hidden_state"]
        self.curv = teacher.policy.slices.get("desired_curvature")
        self.cursor = 0  # round-robin position of the staging service
        self.models = (backend.vision, backend.policy)
        self.step_fn: Callable[[torch.Tensor], None] = self._compute
        self.compile_s = 0.0  # compiling the step: part of building the teacher, not of labeling
        self.graphs: list[Any] = []
        self.fill_s = 0.0  # seconds the run waited for its lanes' first clips before the first step
        parts = backend.step_parts()
        if parts is not None:  # the whole step (frame gather, modeld state, both models, outputs) as one program
            self.models = (parts.vision, parts.policy)
            if parts.compile is not None:  # compile now, on zeros
                self.step_fn = parts.compile(self._compute)
                start = time.perf_counter()
                with torch.no_grad():
                    self.step_fn(self.inputs_pair[0])
                if self.cuda:
                    torch.cuda.synchronize(dev)
                self.compile_s = time.perf_counter() - start
                self.state.clear()
            if parts.capture and self.cuda:
                self.graphs = [capture(lambda buf=buf: self.step_fn(buf))[0] for buf in self.inputs_pair]
                self.state.clear()  # the warm-up ran the step on zeros: start from modeld's start-up state
                done = torch.cuda.Event()  # the first uploads into the buffers wait for the warm-up that read them
                done.record(torch.cuda.current_stream(dev))
                self.inputs_free = [done] * len(self.inputs_pair)

    # -- segments --------------------------------------------------------------------------------
    def _refill(self) -> None:
        """Keep the first clips of the next segments in flight, so a lane never waits for one: AHEAD_PER_READER
        per reader, the slots the slab holds beyond the lanes' own clips (reader_slots). More held the slots that
        the lanes' next clips needed (batch 64 on an H200: 64 first clips decoded a segment ahead), and a lane that
        waited for its clip had a held one spilled to private memory first."""
        while self.queue and len(self.upcoming) < min(self.b, self.lookahead):
            plan = self.queue.popleft()
            refs = [c for c in plan.clips if c.shard not in self.bad]
            if refs:
                self.upcoming.append((plan, refs, self.readers.submit(refs[0])))

    def _next_segment(self, i: int) -> None:
        self._refill()
        if not self.upcoming:
            self.lanes[i], self.length[i], self.t[i] = None, 0, 0
            return
        lane = self.lanes[i] = self._new_lane()
        self._stage(i, lane, wait=True)
        self._flip(i)
        self.resets.append(i)

    def _new_lane(self) -> _Lane:
        plan, refs, first = self.upcoming.popleft()
        self._refill()
        restart = frozenset(c.key for prev, c in zip(plan.clips, plan.clips[1:], strict=False)
                            if prev.shard in self.bad and c.shard not in self.bad)
        self.segments_meta[plan.name] = {"resets": []}
        return _Lane(plan, collections.deque([(refs[0], first)] + [(r, None) for r in refs[1:]]), restart)

    # -- clips -----------------------------------------------------------------------------------
    def _stage(self, i: int, lane: _Lane, *, wait: bool) -> bool:
        """Upload `lane`'s next clip into slot-pair i's free slot (if decoded, or `wait`)."""
        if lane.staged or not lane.pending:
            return lane.staged
        ref, ticket = lane.pending[0]
        if ticket is None:
            ticket = self.readers.submit(ref)
            lane.pending[0] = (ref, ticket)
        if not ticket.done():
            if not wait:
                return False
            self._flush_uploads()  # before blocking: the queued copies go ahead, and their slots free up
        lane.pending.popleft()
        start = time.perf_counter()
        clip = ticket.result()
        self.host_s["wait for readers"] += time.perf_counter() - start
        if lane.pending and lane.pending[0][1] is None:  # the clip after it starts decoding now
            nxt, _ = lane.pending.popleft()
            lane.pending.appendleft((nxt, self.readers.submit(nxt)))
        if clip["__key__"] != ref.key:
            raise DatasetError(f"expected sample {ref.key}, read {clip['__key__']}")
        fids = np.asarray(clip["meta"]["frame_ids"], np.int64)
        n = len(fids)
        if n > self.tmax:
            raise DatasetError(f"{ref.key} has {n} frames, more than the dataset's clip_len {self.tmax}")
        meta = self.segments_meta[lane.plan.name]
        s = 1 - self.slot[i]  # the free slot
        gap = self.gap[s, i]
        gap[:] = 0
        if ref.key in lane.restart_at:  # the clips before it were unreadable: start over as at a segment start
            lane.prev_fid = None
            gap[0] = RESET
            meta["resets"].append(int(fids[0]))
        if lane.prev_fid is None:
            meta.setdefault("first_frame_id", int(fids[0]))
            steps = np.diff(fids)
        else:
            steps = np.diff(fids, prepend=lane.prev_fid)
        skipped = gap[n - len(steps):n]
        skipped[:] = steps - 1  # frames the encoder dropped
        long_holes = steps > C.FULL_HISTORY_BUFFER_LEN  # a hole longer than the history: restart there
        skipped[long_holes] = RESET
        meta["resets"] += fids[n - len(steps):][long_holes].tolist()
        lane.prev_fid = int(fids[-1])
        self._upload(ticket, s, i)
        self.desire[s, i, :n] = clip["desire"]
        self.v_ego[s, i, :n] = np.nan_to_num(clip["car"][:, 0].astype(np.float32), nan=0.0)
        self.traffic[s, i] = clip["traffic"]
        self.lengths[s, i] = n
        lane.refs[s], lane.staged = ref, True
        return True

    def _upload(self, ticket: Ticket, s: int, i: int) -> None:
        """Queue a decoded clip's copy into lane i's slot s (one copy of the reader's slot: both cameras, every
        frame); `_flush_uploads` issues the queued copies together."""
        self.readers.claim(ticket)
        self.uploads.append((ticket, s, i))

    def _flush_uploads(self) -> None:
        """Issue the queued copies on the side stream, after the compute already enqueued (which may still read
        the slots' previous clips), with one event for all of them."""
        if not self.uploads:
            return
        start = time.perf_counter()
        copies = []
        for ticket, s, i in self.uploads:
            src = self.readers.slot_tensor(ticket)  # (2, T, 6, 128, 256): frames past the clip's are stale, never read
            if src is None:  # spilled out of the slab into private memory: (2, n, 6, 128, 256)
                src = torch.stack([torch.from_numpy(ticket.clip["road"]), torch.from_numpy(ticket.clip["wide"])])
            copies.append((self.clips[s, i, :, : src.shape[1]], src))
        if self.cuda:
            # each copy waits only for the compute that last read its slot (the slot's previous clip, finished
            # at a flip): waiting for all compute enqueued so far held every copy until the step in flight had
            # finished, and the next step's small input copy then queued behind them on the copy engine
            frees = {id(e): e for e in (self.slot_free.pop((s, i), None) for _, s, i in self.uploads) if e is not None}
            for event in frees.values():
                self.copy_stream.wait_event(event)
            if not self.steps_enqueued:  # before the first step: after the capture's warm-up, which read the slots
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(self.copy_stream):
                for dst, src in copies:
                    dst.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.copy_stream)
        else:
            for dst, src in copies:
                dst.copy_(src)
            event = None
        for ticket, s, i in self.uploads:
            if event is not None:
                self.slot_ready[s, i] = event
            self.readers.release(ticket, event)
        self.uploads = []
        self.host_s["host->device"] += time.perf_counter() - start

    def _flip(self, i: int) -> None:
        """Make the staged clip current (the next step's compute waits for its copy); the slot it leaves may be
        copied into once the compute enqueued so far has run."""
        lane = self.lanes[i]
        if self.cuda and self.steps_enqueued:
            if self.vacated is None:  # one event for every lane that flips between two steps
                self.vacated = torch.cuda.Event()
                self.vacated.record(torch.cuda.current_stream(self.dev))
            self.slot_free[int(self.slot[i]), i] = self.vacated
        lane.refs[self.slot[i]] = None
        self.slot[i] = 1 - self.slot[i]
        self.flipped.append((int(self.slot[i]), i))
        lane.staged = False
        self.length[i], self.t[i] = self.lengths[self.slot[i], i], 0

    def _service(self, budget: int) -> None:
        """Stage up to `budget` next clips that readers have finished (round-robin): the lane's own next
        clip, or, when its segment has none left, the first clip of the segment it will take next."""
        self.readers.poll()  # take every decoded clip once; Ticket.done() then costs nothing
        for _ in range(self.b):
            if budget <= 0:
                break
            i = self.cursor = (self.cursor + 1) % self.b
            lane = self.lanes[i]
            if lane is None or lane.staged:
                continue
            if lane.pending:
                budget -= self._stage(i, lane, wait=False)
            elif self.successor[i] is None and self.upcoming and self.upcoming[0][2].done():
                self.successor[i] = self._new_lane()
                budget -= self._stage(i, self.successor[i], wait=True)
        self._flush_uploads()

    def _finish_clips(self, done: np.ndarray) -> None:
        """Copy finished clips' outputs to the host in one copy (asynchronous on a GPU) and move the lanes on."""
        start = time.perf_counter()
        first, host = self.out_rows(len(done), self._emit_ready)  # (done, T, vision + policy) fp16 slab rows
        idx = self.staging.index(done)
        cuda = self.cuda
        out = torch.cat([self.out_v[idx], self.out_p[idx]], dim=2)  # (done, T, vision + policy) fp16, on the device
        host.copy_(out, non_blocking=cuda)  # enqueued before the next step overwrites the rows
        event = torch.cuda.Event() if cuda else None
        if event is not None:
            event.record()
        self.host_s["device->host"] += time.perf_counter() - start
        self.finished.append(([(self.lanes[i].refs[self.slot[i]], int(self.length[i])) for i in done], first, event))
        for i in done:
            lane = self.lanes[i]
            if lane.staged or lane.pending:
                self._stage(i, lane, wait=True)
                self._flip(i)
            elif self.successor[i] is not None:  # its next segment is already on the device
                self.lanes[i], self.successor[i] = self.successor[i], None
                self._flip(i)
                self.resets.append(i)
            else:
                self._next_segment(i)

    def _emit_ready(self, wait: bool = False) -> None:
        """Hand finished clips whose copies have landed to the writer."""
        start = time.perf_counter()
        while self.finished and (wait or self.finished[0][2] is None or self.finished[0][2].query()):
            refs, first, event = self.finished.pop(0)
            if event is not None:
                event.synchronize()
            for j, (ref, n) in enumerate(refs):
                self.emit(ref, first + j, n)
        self.host_s["hand-off to the writer"] += time.perf_counter() - start

    # -- the step --------------------------------------------------------------------------------
    def _step(self, active: np.ndarray) -> None:
        state, rows = self.state, np.arange(self.b)
        slot = self.slot
        packed = np.concatenate([
            slot[:, None].astype(np.float32), self.t[:, None].astype(np.float32),
            self.v_ego[slot, rows, self.t][:, None], self.traffic[slot, rows], self.desire[slot, rows, self.t]],
            axis=1)  # (B, 13): this step's small inputs
        k = self.parity
        inputs_ready = None
        if self.graphs:  # up on the copy stream, ahead of the clips queued for it
            start = time.perf_counter()
            inputs_ready = self.staging.upload(packed, self.inputs_pair[k], stream=self.copy_stream,
                                               after=self.inputs_free[k])
            self.host_s["host->device"] += time.perf_counter() - start
        self._flush_uploads()  # timed as host->device, not as compute
        start = time.perf_counter()
        gaps = np.where(active, self.gap[slot, rows, self.t], 0)
        resets = sorted(set(self.resets) | set(np.flatnonzero(gaps == RESET).tolist()))
        self.resets = []
        if resets:  # segment starts and restarts, all lanes in one go
            state.reset(self.staging.index(np.asarray(resets)))
        if (gaps > 0).any():  # encoder drops: replay the newest entries, all lanes in one go
            lanes = np.flatnonzero(gaps > 0)
            state.skip_frames(self.staging.index(lanes), gaps[lanes])
        waits = {id(e): e for e in (self.slot_ready.pop(f, None) for f in self.flipped) if e is not None}
        self.flipped = []
        if self.cuda:
            stream = torch.cuda.current_stream(self.dev)
            if inputs_ready is not None:
                waits[id(inputs_ready)] = inputs_ready
            for event in waits.values():
                stream.wait_event(event)
            while len(self.gpu_events) > 64 and self.gpu_events[0][1].query():  # keep the list short
                a, b = self.gpu_events.pop(0)
                self.gpu_busy += a.elapsed_time(b) / 1000
            self.gpu_events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.gpu_events[-1][0].record(stream)
        if inputs_ready is None:
            self.staging.upload(packed, self.inputs_pair[k])
        if self.graphs:
            self.graphs[k].replay()
            self.inputs_free[k] = torch.cuda.Event()
            self.inputs_free[k].record(stream)
            self.parity = 1 - k
        else:
            with torch.no_grad():
                self.step_fn(self.inputs_pair[k])
        self.steps_enqueued, self.vacated = True, None
        self.t[active] += 1
        if self.cuda:
            self.gpu_events[-1][1].record(torch.cuda.current_stream(self.dev))
        self.host_s["compute"] += time.perf_counter() - start

    def _compute(self, packed: torch.Tensor) -> None:
        """One frame of every lane from the packed inputs (B, 13): gather it from the clip slots, push it through
        modeld's state and both models, store the outputs. Device work only, fixed shapes, static buffers: compiled
        as one program (torch backend, compiled) and captured as one CUDA graph."""
        state = self.state
        s, t = packed[:, 0].long(), packed[:, 1].long()
        v_ego, traffic, desire = packed[:, 2], packed[:, 3:5], packed[:, 5:]
        frames = self.clips[s, self.rows, :, t]  # (B, 2, 6, 128, 256): road, wide
        stacks = state.vision_inputs(frames[:, 0], frames[:, 1])
        vin = {n: stacks[cam].float() if n in self.float_images else stacks[cam] for n, cam in self.image_names.items()}
        vision, policy = self.models
        vout = vision(vin)
        state.push_features(vout[:, self.hidden])
        state.push_desire(desire)
        pout = policy(state.policy_inputs(self.policy_names, traffic, v_ego))
        if self.curv is not None:
            state.push_curvature(pout[:, self.curv.start])  # the mean of desired_curvature
        self.out_v[self.rows, t] = vout.to(torch.float16)
        self.out_p[self.rows, t] = pout.to(torch.float16)

    def run(self, work: list[SegmentPlan], bad: set[int], on_progress: Callable[[int], None] | None = None) -> int:
        """Label every clip of `work` (clips in `bad` shards skipped); returns frames labeled."""
        switch = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)  # the queue and writer threads must not hold the GIL for 5 ms while a step waits
        try:
            return self._run(work, bad, on_progress)
        finally:
            sys.setswitchinterval(switch)

    def _run(self, work: list[SegmentPlan], bad: set[int], on_progress: Callable[[int], None] | None) -> int:
        self.queue, self.bad = collections.deque(work), bad
        self.lookahead = AHEAD_PER_READER * len(self.readers.procs)  # the slab's slots beyond the lanes' own
        self.upcoming: collections.deque = collections.deque()
        self.steps = 0
        start, waited = time.perf_counter(), self.host_s["wait for readers"]
        self._refill()
        for i in range(self.b):
            self._next_segment(i)
        self.fill_s = time.perf_counter() - start  # the lanes' first clips: a fixed cost, not a per-step one
        self.host_s["wait for readers"] = waited
        frames = 0
        while True:
            active = self.length > 0
            if not active.any():
                self._emit_ready(wait=True)
                return frames
            self._step(active)  # the GPU works on this step while the host stages clips below
            frames += int(active.sum())
            if on_progress is not None:
                on_progress(frames)
            self._service(budget=max(2, self.b // 8))
            self.steps += 1
            done = np.flatnonzero(active & (self.t >= self.length))
            if len(done):
                self._finish_clips(done)
            self._emit_ready()

    def profile(self, wall: float) -> dict[str, float]:
        """Seconds per step by stage (main process), readers' read/decode seconds per step (summed over the
        processes), and the accelerator's busy fraction of `wall` (CUDA events; on the CPU, compute / wall)."""
        steps = max(1, self.steps)
        out = {f"{k} s/step": v / steps for k, v in self.host_s.items()}
        out.update({f"readers {k} s/step": v / steps for k, v in self.readers.seconds.items()})
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            busy = self.gpu_busy + sum(a.elapsed_time(b) for a, b in self.gpu_events) / 1000
        else:
            busy = self.host_s["compute"]
        out["busy fraction"] = busy / wall if wall else 0.0
        out["captured step"] = float(bool(self.graphs))
        out["clips spilled"] = float(self.readers.spilled)
        out["steps"] = float(self.steps)
        return out
