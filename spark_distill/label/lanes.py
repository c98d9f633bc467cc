# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""B segments labeled in lockstep, one lane each, with their clips held on the device.

Main entry point: `LaneRunner.run(work)`. Each lane has two device slots for clips: the one being
labeled and the next one, uploaded as soon as a reader thread has decoded it, so a clip boundary is
a flip of the lane's slot rather than a wait. Each step gathers frame t of every lane on the device,
runs vision then policy through the modeld state, and writes the outputs into device buffers that go
back to the host (asynchronously) once per finished clip. Per-lane Python work happens only when a
clip is staged or finished, spread over the steps while the GPU computes.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spark_distill import contract as C
from spark_distill.errors import DatasetError
from spark_distill.label.backends import Backend
from spark_distill.label.plan import ClipRef, SegmentPlan
from spark_distill.label.state import ModeldState
from spark_distill.label.teachers import Teacher

RESET = -1  # gap marker: restart the lane's history before this frame


@dataclass
class _Lane:
    plan: SegmentPlan
    pending: collections.deque  # (ClipRef, Future | None), in order, not yet on the device
    restart_at: frozenset[str]
    prev_fid: int | None = None  # last frame id staged so far
    refs: list = field(default_factory=lambda: [None, None])  # ClipRef held in each slot
    staged: bool = False  # the other slot holds this lane's next clip


class _Staging:
    """Pinned host buffers for the small per-step inputs, used round-robin: a buffer is refilled only
    after the copy that last read it has run (its event), so the host never overwrites in-flight data."""

    def __init__(self, rows: int, cols: int, device: torch.device, depth: int = 4) -> None:
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

    def upload(self, values: np.ndarray) -> torch.Tensor:
        k = self._slot()
        self.bufs[k].numpy()[...] = values
        out = self.bufs[k].to(self.device, non_blocking=self.cuda)
        if self.cuda:
            self.events[k].record()
        return out

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
                 fetch: Callable[[ClipRef], dict[str, Any]], pool: cf.Executor,
                 emit: Callable[[ClipRef, np.ndarray, np.ndarray], None], segments_meta: dict[str, Any]) -> None:
        self.teacher, self.backend, self.b, self.tmax = teacher, backend, batch, clip_len
        self.fetch, self.pool, self.emit, self.segments_meta = fetch, pool, emit, segments_meta
        dev = self.dev = backend.device
        self.state = ModeldState(batch, history=teacher.history_len, device=dev, lat_delay=lat_delay)
        self.rows = torch.arange(batch, device=dev)
        self.road = torch.zeros((2, batch, clip_len, 6, 128, 256), dtype=torch.uint8, device=dev)  # 2 slots
        self.wide = torch.zeros_like(self.road)
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
        self.finished: list[tuple[list[tuple[ClipRef, int]], torch.Tensor, torch.Tensor, Any]] = []
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

    # -- segments --------------------------------------------------------------------------------
    def _refill(self) -> None:
        """Keep the first clips of the next segments in flight, so a lane never waits for one."""
        while self.queue and len(self.upcoming) < self.b:
            plan = self.queue.popleft()
            refs = [c for c in plan.clips if c.shard not in self.bad]
            if refs:
                self.upcoming.append((plan, refs, self.pool.submit(self.fetch, refs[0])))

    def _next_segment(self, i: int) -> None:
        self._refill()
        if not self.upcoming:
            self.lanes[i], self.length[i], self.t[i] = None, 0, 0
            return
        lane = self.lanes[i] = self._new_lane()
        self._stage(i, lane, wait=True)
        self._flip(i)
        self.state.reset(i)

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
        ref, fut = lane.pending[0]
        if fut is None:
            fut = self.pool.submit(self.fetch, ref)
            lane.pending[0] = (ref, fut)
        if not wait and not fut.done():
            return False
        lane.pending.popleft()
        clip = fut.result()
        if lane.pending and lane.pending[0][1] is None:  # the clip after it starts decoding now
            nxt, _ = lane.pending.popleft()
            lane.pending.appendleft((nxt, self.pool.submit(self.fetch, nxt)))
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
        for cam, buf in (("road", self.road), ("wide", self.wide)):  # pinned tensors on a GPU: asynchronous
            frames = clip[cam] if isinstance(clip[cam], torch.Tensor) else torch.from_numpy(clip[cam])
            buf[s, i, :n].copy_(frames, non_blocking=True)
        self.desire[s, i, :n] = clip["desire"]
        self.v_ego[s, i, :n] = np.nan_to_num(clip["car"][:, 0].astype(np.float32), nan=0.0)
        self.traffic[s, i] = clip["traffic"]
        self.lengths[s, i] = n
        lane.refs[s], lane.staged = ref, True
        return True

    def _flip(self, i: int) -> None:
        """Make the staged clip current."""
        lane = self.lanes[i]
        lane.refs[self.slot[i]] = None
        self.slot[i] = 1 - self.slot[i]
        lane.staged = False
        self.length[i], self.t[i] = self.lengths[self.slot[i], i], 0

    def _service(self, budget: int) -> None:
        """Stage up to `budget` next clips that readers have finished (round-robin): the lane's own next
        clip, or, when its segment has none left, the first clip of the segment it will take next."""
        for _ in range(self.b):
            if budget <= 0:
                return
            i = self.cursor = (self.cursor + 1) % self.b
            lane = self.lanes[i]
            if lane is None or lane.staged:
                continue
            if lane.pending:
                budget -= self._stage(i, lane, wait=False)
            elif self.successor[i] is None and self.upcoming and self.upcoming[0][2].done():
                self.successor[i] = self._new_lane()
                budget -= self._stage(i, self.successor[i], wait=True)

    def _finish_clips(self, done: np.ndarray) -> None:
        """Copy finished clips' outputs to the host (asynchronously on a GPU) and move the lanes on."""
        idx = self.staging.index(done)
        cuda = self.dev.type == "cuda"
        vision = torch.empty((len(done), *self.out_v.shape[1:]), dtype=torch.float16, pin_memory=cuda)
        policy = torch.empty((len(done), *self.out_p.shape[1:]), dtype=torch.float16, pin_memory=cuda)
        vision.copy_(self.out_v[idx], non_blocking=cuda)  # enqueued before the next step overwrites the rows
        policy.copy_(self.out_p[idx], non_blocking=cuda)
        event = torch.cuda.Event() if cuda else None
        if event is not None:
            event.record()
        self.finished.append(([(self.lanes[i].refs[self.slot[i]], int(self.length[i])) for i in done],
                              vision, policy, event))
        for i in done:
            lane = self.lanes[i]
            if lane.staged or lane.pending:
                self._stage(i, lane, wait=True)
                self._flip(i)
            elif self.successor[i] is not None:  # its next segment is already on the device
                self.lanes[i], self.successor[i] = self.successor[i], None
                self._flip(i)
                self.state.reset(i)
            else:
                self._next_segment(i)

    def _emit_ready(self, wait: bool = False) -> None:
        """Hand finished clips whose copies have landed to the writer."""
        while self.finished and (wait or self.finished[0][3] is None or self.finished[0][3].query()):
            refs, vision, policy, event = self.finished.pop(0)
            if event is not None:
                event.synchronize()
            v, p = vision.numpy(), policy.numpy()
            for j, (ref, n) in enumerate(refs):
                self.emit(ref, v[j, :n].copy(), p[j, :n].copy())

    # -- the step --------------------------------------------------------------------------------
    def _step(self, active: np.ndarray) -> None:
        state, rows = self.state, np.arange(self.b)
        slot = self.slot
        gaps = self.gap[slot, rows, self.t]
        for i in np.flatnonzero(gaps * active):
            if gaps[i] == RESET:
                state.reset(int(i))
            else:
                state.skip_frames(int(i), int(gaps[i]))
        packed = self.staging.upload(np.concatenate([
            slot[:, None].astype(np.float32), self.t[:, None].astype(np.float32),
            self.v_ego[slot, rows, self.t][:, None], self.traffic[slot, rows], self.desire[slot, rows, self.t]],
            axis=1))  # (B, 13) on the device
        s, t = packed[:, 0].long(), packed[:, 1].long()
        v_ego, traffic, desire = packed[:, 2], packed[:, 3:5], packed[:, 5:]
        stacks = state.vision_inputs(self.road[s, self.rows, t], self.wide[s, self.rows, t])
        vin = {n: stacks[cam].float() if n in self.float_images else stacks[cam] for n, cam in self.image_names.items()}
        vout = self.backend.vision(vin)
        state.push_features(vout[:, self.hidden])
        state.push_desire(desire)
        pout = self.backend.policy(state.policy_inputs(self.policy_names, traffic, v_ego))
        if self.curv is not None:
            state.push_curvature(pout[:, self.curv.start])  # the mean of desired_curvature
        self.out_v[self.rows, t] = vout.to(torch.float16)
        self.out_p[self.rows, t] = pout.to(torch.float16)
        self.t[active] += 1

    def run(self, work: list[SegmentPlan], bad: set[int], on_progress: Callable[[int], None] | None = None) -> int:
        """Label every clip of `work` (clips in `bad` shards skipped); returns frames labeled."""
        self.queue, self.bad = collections.deque(work), bad
        self.upcoming: collections.deque = collections.deque()
        self._refill()
        for i in range(self.b):
            self._next_segment(i)
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
            done = np.flatnonzero(active & (self.t >= self.length))
            if len(done):
                self._finish_clips(done)
            self._emit_ready()
