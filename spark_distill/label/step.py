# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass's step: one frame of every batch row through modeld's state and both teacher models.

Main entry point: `LabelStep`. It owns every device buffer the step reads or writes, all static: the rows' clip slots
(`clips`: 2 per row, filled by slots.ClipSlots), the modeld state, this step's packed small inputs (slot, t, v_ego,
traffic, desire, lateral and longitudinal delay per row) and the outputs of the rows' clips (`out_v`, `out_p`).
`_compute` is device work only, fixed shapes: frame t of every row is gathered from its clip slot on the device, and
with a compiling backend the whole step is one inductor program (the gather and the image ring fuse into the vision's
first kernels); on CUDA it is one captured CUDA graph, replayed once per step (the host launches one graph, not hundreds
of ops). On CUDA the packed inputs are double-buffered, one graph per buffer, so the next step's inputs go up on the
copy stream while this step runs (`upload_ahead`); a buffer is rewritten only after the step that last read it (its
`inputs_free` event).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spark_distill.cuda_graphs import capture_or_none
from spark_distill.label.backends import Backend
from spark_distill.label.profile import StepProfile
from spark_distill.notes import note
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.state import ModeldState
from spark_distill.openpilot.teachers import Teacher

PACKED = 5 + C.DESIRE_LEN + 2  # a row's packed small inputs: slot, t, v_ego, traffic (2), desire (8), delays (2)
DESIRE_COLS = slice(5, 5 + C.DESIRE_LEN)
DELAY_COLS = slice(5 + C.DESIRE_LEN, PACKED)  # [lateral, longitudinal] delay of the row's segment at this frame


class PinnedRing:
    """Pinned host buffers for the small per-step inputs, used round-robin: a buffer is refilled only
    after the copy that last read it has run (its event), so the host never overwrites in-flight data."""

    def __init__(self, batch: int, cols: int, device: torch.device, depth: int = 16) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        self.bufs = [torch.zeros((batch, cols), pin_memory=self.cuda) for _ in range(depth)]
        self.index_bufs = [torch.zeros(batch, dtype=torch.long, pin_memory=self.cuda) for _ in range(depth)]
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
        """`rows` (k,) as an index tensor on the device."""
        k = self._slot()
        buf = self.index_bufs[k][: len(rows)]
        buf.numpy()[...] = rows
        out = buf.to(self.device, non_blocking=self.cuda)
        if self.cuda:
            self.events[k].record()
        return out


class LabelStep:
    """The step over `batch` rows with clips of up to `clip_len` frames: built (compiled, captured) at once, then
    `run` once per step. `profile` counts its host and GPU seconds."""

    def __init__(self, *, teacher: Teacher, backend: Backend, batch: int, clip_len: int,
                 profile: StepProfile | None = None) -> None:
        dev = self.device = backend.device
        self.cuda = dev.type == "cuda"
        self.profile = profile or StepProfile()
        # the delays come per row and frame in the packed inputs (DELAY_COLS), never from the state's one pair
        self.state = ModeldState(batch, history=teacher.layout.history, device=dev,
                                 shapes={k: s for k, (s, _) in teacher.history_inputs.items()})
        self.rows = torch.arange(batch, device=dev)
        # 2 slots per row; a slot holds a whole clip, both cameras, laid out as a reader's slab slot (one copy)
        self.clips = torch.zeros((2, batch, 2, clip_len, 6, 128, 256), dtype=torch.uint8, device=dev)
        self.copy_stream = torch.cuda.Stream(dev) if self.cuda else None  # clips and packed inputs go up on it
        self.staging = PinnedRing(batch, PACKED, dev)
        # this step's packed inputs (static: the step's graph reads them); on CUDA two buffers, one graph each, so
        # that the next step's inputs go up on the copy stream while this step runs (H200, batch 256: loop 14,123
        # vs 13,047 frames/s with one buffer uploaded on the compute stream behind the step; batch 64: 13,408 vs
        # 13,293)
        self.inputs_pair = [torch.zeros((batch, PACKED), device=dev) for _ in range(2 if self.cuda else 1)]
        self.inputs_free: list[Any] = [None] * len(self.inputs_pair)  # event after the step that last read each
        self.parity = 0  # the buffer this step's inputs go into
        widths = teacher.widths
        self.out_v = torch.zeros((batch, clip_len, widths["vision"]), dtype=torch.float16, device=dev)
        self.out_p = torch.zeros((batch, clip_len, widths["policy"]), dtype=torch.float16, device=dev)
        self.combined = teacher.combined
        # a combined model's output split into the label set's two members (teachers.Teacher.member_columns)
        self.columns = {m: torch.cat([torch.arange(a, b) for a, b in runs]).to(dev)
                        for m, runs in teacher.member_columns().items()}
        self.image_names = teacher.image_inputs
        self.float_images = {n for n in self.image_names if teacher.vision.inputs[n][1] != "uint8"}
        self.policy_names = list(teacher.history_inputs)
        self.input_order = list(teacher.vision.inputs)  # a combined model's inputs, in graph order
        self.half = {n for n, (_, d) in teacher.history_inputs.items() if d == "float16"}  # fed as the graph wants
        self.hidden = teacher.vision.slices["hidden_state"]
        self.curv = teacher.slices.get("desired_curvature") if teacher.layout.history.prev_curv == "own" else None
        self.models = (backend.vision, backend.policy)
        self.step_fn: Callable[[torch.Tensor], None] = self._compute
        self.compile_s = 0.0  # compiling the step: part of building the teacher, not of labeling
        self.graphs: list[Any] = []  # one captured step per inputs buffer (CUDA), else none
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
                for buf in self.inputs_pair:
                    if (captured := capture_or_none(lambda buf=buf: self.step_fn(buf), "the label step", note)) is None:
                        self.graphs = []  # runs uncaptured
                        parts.uncaptured()
                        break
                    self.graphs.append(captured[0])
                self.state.clear()  # the warm-up ran the step on zeros: start from modeld's start-up state
                done = torch.cuda.Event()  # the first uploads into the buffers wait for the warm-up that read them
                done.record(torch.cuda.current_stream(dev))
                self.inputs_free = [done] * len(self.inputs_pair)

    def upload_ahead(self, packed: np.ndarray) -> Any:
        """With a captured step, this step's packed inputs (batch, PACKED) go up now on the copy stream, ahead of
        the clips queued for it, into the buffer the step after the last one reads; returns the copy's event (the
        step waits for it). None without a captured step: `run` uploads them on the compute stream."""
        if not self.graphs:
            return None
        start = time.perf_counter()
        k = self.parity
        ready = self.staging.upload(packed, self.inputs_pair[k], stream=self.copy_stream, after=self.inputs_free[k])
        self.profile.add("host->device", start)
        return ready

    def run(self, packed: np.ndarray, *, resets: list[int], gaps: np.ndarray, waits: dict[int, Any],
            inputs_ready: Any) -> None:
        """Enqueue one step: the modeld state of the rows in `resets` back to zeros, the frames the encoder dropped
        replayed (`gaps` (batch,): frames skipped before this frame, per row), then, once the events `waits` (the
        copies of clip slots the step reads for the first time) and `inputs_ready` (upload_ahead) have passed, the
        step itself on `packed`."""
        state, k = self.state, self.parity
        if resets:  # segment starts and restarts, all rows in one go
            state.reset(self.staging.index(np.asarray(resets)))
        if (gaps > 0).any():  # encoder drops: replay the newest entries, all rows in one go
            rows = np.flatnonzero(gaps > 0)
            state.skip_frames(self.staging.index(rows), gaps[rows])
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            if inputs_ready is not None:
                waits[id(inputs_ready)] = inputs_ready
            for event in waits.values():
                stream.wait_event(event)
            self.profile.gpu_begin(stream)
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
        if self.cuda:
            self.profile.gpu_end(torch.cuda.current_stream(self.device))

    def _compute(self, packed: torch.Tensor) -> None:
        """One frame of every row from the packed inputs (batch, PACKED): gather it from the clip slots, push it
        through modeld's state and both models, store the outputs. Device work only, fixed shapes, static buffers:
        compiled as one program (torch backend, compiled) and captured as one CUDA graph."""
        state = self.state
        s, t = packed[:, 0].long(), packed[:, 1].long()
        v_ego, traffic, desire, delays = packed[:, 2], packed[:, 3:5], packed[:, DESIRE_COLS], packed[:, DELAY_COLS]
        frames = self.clips[s, self.rows, :, t]  # (batch, 2, 6, 128, 256): road, wide
        stacks = state.vision_inputs(frames[:, 0], frames[:, 1])
        vin = {n: stacks[cam].float() if n in self.float_images else stacks[cam] for n, cam in self.image_names.items()}
        vision, policy = self.models
        if self.combined:  # one model: images and histories (past hidden states only) in, its own hidden_state out
            state.push_desire(desire)
            feeds = {**vin, **self._history(state.policy_inputs(self.policy_names, traffic, v_ego, delays))}
            out = vision({n: feeds[n] for n in self.input_order})
            state.push_features(out[:, self.hidden])
            if self.curv is not None:
                state.push_curvature(out[:, self.curv.start])  # the mean of desired_curvature
            self.out_v[self.rows, t] = out[:, self.columns["vision"]].to(torch.float16)
            self.out_p[self.rows, t] = out[:, self.columns["policy"]].to(torch.float16)
            return
        vout = vision(vin)
        state.push_features(vout[:, self.hidden])
        state.push_desire(desire)
        pout = policy(self._history(state.policy_inputs(self.policy_names, traffic, v_ego, delays)))
        if self.curv is not None:
            state.push_curvature(pout[:, self.curv.start])  # the mean of desired_curvature
        self.out_v[self.rows, t] = vout.to(torch.float16)
        self.out_p[self.rows, t] = pout.to(torch.float16)

    def _history(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The history inputs in the dtypes of the graph (0.10.x policies take float16)."""
        return {k: v.half() if k in self.half else v for k, v in feeds.items()}
