# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""B segments labeled in lockstep, one lane each, with their clips held on the device.

Main entry point: `LaneRunner.run(work)`. A lane holds one clip of its segment in device buffers
(frames, desire, speed), loaded once per clip; each step gathers frame t of every lane on the
device, runs vision then policy through the modeld state, and writes the outputs into device
buffers that go back to the host once per finished clip. Per-lane Python work happens only at clip
boundaries and frame gaps, so the host keeps up with large batches. Reader threads fetch and
decompress the next clip of every lane, and the first clips of the next segments, ahead of time.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import dataclass
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
    pending: collections.deque  # (ClipRef, Future | None), in order
    restart_at: frozenset[str]
    ref: ClipRef | None = None
    prev_fid: int | None = None


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
        self.road = torch.zeros((batch, clip_len, 6, 128, 256), dtype=torch.uint8, device=dev)
        self.wide = torch.zeros_like(self.road)
        # small per-frame inputs stay on the host and go up once per step, packed: t, v_ego, traffic(2), desire(8)
        self.desire = np.zeros((batch, clip_len, C.DESIRE_LEN), np.float32)
        self.v_ego = np.zeros((batch, clip_len), np.float32)
        self.traffic = np.zeros((batch, C.TRAFFIC_CONVENTION_LEN), np.float32)
        self.staging = _Staging(batch, 4 + C.DESIRE_LEN, dev)
        self.finished: list[tuple[list[tuple[ClipRef, int]], torch.Tensor, torch.Tensor, Any]] = []
        self.out_v = torch.zeros((batch, clip_len, teacher.vision.width), dtype=torch.float16, device=dev)
        self.out_p = torch.zeros((batch, clip_len, teacher.policy.width), dtype=torch.float16, device=dev)
        self.length = np.zeros(batch, np.int64)  # frames in each lane's clip; 0 = idle lane
        self.t = np.zeros(batch, np.int64)
        self.gap = np.zeros((batch, clip_len), np.int64)  # frames skipped before frame t, or RESET
        self.lanes: list[_Lane | None] = [None] * batch
        self.image_names = teacher.image_inputs
        self.float_images = {n for n in self.image_names if teacher.vision.inputs[n][1] != "uint8"}
        self.policy_names = list(teacher.policy.inputs)
        self.hidden = teacher.vision.slices["hidden_state"]
        self.curv = teacher.policy.slices.get("desired_curvature")

    # -- lanes and clips -------------------------------------------------------------------------
    def _next_segment(self, lane: int) -> None:
        while self.upcoming or self.queue:
            self._refill()
            plan, refs, first = self.upcoming.popleft()
            self._refill()
            restart = frozenset(c.key for prev, c in zip(plan.clips, plan.clips[1:], strict=False)
                                if prev.shard in self.bad and c.shard not in self.bad)
            pending = collections.deque([(refs[0], first)] + [(r, None) for r in refs[1:]])
            self.lanes[lane] = _Lane(plan, pending, restart)
            self.state.reset(lane)
            self.segments_meta[plan.name] = {"resets": []}
            self._load_clip(lane)
            return
        self.lanes[lane], self.length[lane], self.t[lane] = None, 0, 0
        self.gap[lane] = 0

    def _refill(self) -> None:
        """Keep the first clips of the next segments in flight, so a lane never waits for one."""
        while self.queue and len(self.upcoming) < self.lookahead:
            plan = self.queue.popleft()
            refs = [c for c in plan.clips if c.shard not in self.bad]
            if refs:
                self.upcoming.append((plan, refs, self.pool.submit(self.fetch, refs[0])))

    def _load_clip(self, i: int) -> bool:
        lane = self.lanes[i]
        if not lane.pending:
            return False
        ref, fut = lane.pending.popleft()
        clip = fut.result() if fut is not None else self.fetch(ref)
        if lane.pending and lane.pending[0][1] is None:  # the clip after this one starts loading now
            nxt, _ = lane.pending.popleft()
            lane.pending.appendleft((nxt, self.pool.submit(self.fetch, nxt)))
        if clip["__key__"] != ref.key:
            raise DatasetError(f"expected sample {ref.key}, read {clip['__key__']}")
        fids = clip["meta"]["frame_ids"]
        n = len(fids)
        if n > self.tmax:
            raise DatasetError(f"{ref.key} has {n} frames, more than the dataset's clip_len {self.tmax}")
        meta = self.segments_meta[lane.plan.name]
        if ref.key in lane.restart_at:  # the clips before it were unreadable: start over as at a segment start
            lane.prev_fid = None
            meta["resets"].append(fids[0])
        self.gap[i] = 0
        for k, fid in enumerate(fids):
            if lane.prev_fid is None:
                meta.setdefault("first_frame_id", fid)
                self.gap[i, k] = RESET if k == 0 and meta["first_frame_id"] != fid else 0
            elif fid - lane.prev_fid > C.FULL_HISTORY_BUFFER_LEN:  # a hole longer than the history
                self.gap[i, k] = RESET
                meta["resets"].append(fid)
            else:
                self.gap[i, k] = fid - lane.prev_fid - 1  # frames the encoder dropped
            lane.prev_fid = fid
        for cam, buf in (("road", self.road), ("wide", self.wide)):  # pinned tensors on a GPU: asynchronous
            frames = clip[cam] if isinstance(clip[cam], torch.Tensor) else torch.from_numpy(clip[cam])
            buf[i, :n].copy_(frames, non_blocking=True)
        self.desire[i, :n] = clip["desire"]
        self.v_ego[i, :n] = np.nan_to_num(clip["car"][:, 0].astype(np.float32), nan=0.0)
        self.traffic[i] = clip["traffic"]
        lane.ref = ref
        self.length[i], self.t[i] = n, 0
        return True

    def _finish_clips(self, done: np.ndarray) -> None:
        """Start the copy of finished clips' outputs to the host (asynchronous on a GPU), refill the lanes."""
        idx = self.staging.index(done)
        cuda = self.dev.type == "cuda"
        vision = torch.empty((len(done), *self.out_v.shape[1:]), dtype=torch.float16, pin_memory=cuda)
        policy = torch.empty((len(done), *self.out_p.shape[1:]), dtype=torch.float16, pin_memory=cuda)
        vision.copy_(self.out_v[idx], non_blocking=cuda)  # enqueued before the next step overwrites the rows
        policy.copy_(self.out_p[idx], non_blocking=cuda)
        event = torch.cuda.Event() if cuda else None
        if event is not None:
            event.record()
        self.finished.append(([(self.lanes[i].ref, int(self.length[i])) for i in done], vision, policy, event))
        for i in done:
            if not self._load_clip(i):
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
        state = self.state
        gaps = self.gap[np.arange(self.b), self.t]
        for i in np.flatnonzero(gaps):
            if gaps[i] == RESET:
                state.reset(int(i))
            else:
                state.skip_frames(int(i), int(gaps[i]))
        rows = np.arange(self.b)
        packed = self.staging.upload(np.concatenate([
            self.t[:, None].astype(np.float32), self.v_ego[rows, self.t][:, None], self.traffic,
            self.desire[rows, self.t]], axis=1))  # (B, 12) on the device
        t = packed[:, 0].long()
        v_ego, traffic, desire = packed[:, 1], packed[:, 2:4], packed[:, 4:]
        stacks = state.vision_inputs(self.road[self.rows, t], self.wide[self.rows, t])
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
        self.lookahead = max(2, self.b // 4)
        for i in range(self.b):
            self._next_segment(i)
        frames = 0
        while True:
            active = self.length > 0
            if not active.any():
                self._emit_ready(wait=True)
                return frames
            self._step(active)
            frames += int(active.sum())
            if on_progress is not None:
                on_progress(frames)
            done = np.flatnonzero(active & (self.t >= self.length))
            if len(done):
                self._finish_clips(done)
            self._emit_ready()
