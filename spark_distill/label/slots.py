# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Each batch row's two clip slots on the device, and the order of the copies into them against the steps that
read them.

Main entry point: `ClipSlots`. A row labels the clip in its current slot while its next clip is copied into its
other slot, so a clip boundary is a flip, not a wait. A decoded clip goes up whole (both cameras, every frame: one
copy of the reader's slab slot) on the step's copy stream; the copies queued between two steps are issued together,
with one event (`flush`). The slots live in the step's static `clips` tensor (step.LabelStep), which the captured
step reads at fixed addresses. Each slot is a `Slot`, whose transitions assert the two orderings the pass rests on:
- the step reads a slot only after the copy into it: a row's new current slot is read first by a step that waits
  for the copy's event (`Slot.first_read`), and by then the copy has been issued;
- a copy into a slot waits only for the step that last read it: a slot leaves its row with an event recorded after
  every step enqueued so far (`Slot.vacate`), which the copy into it waits for (`Slot.start_copy`), so copies
  overlap the step in flight instead of queueing behind it.
Nothing here syncs the host with the GPU. The small per-frame inputs of each slot's clip (desire, v_ego, traffic,
frame gaps) stay on the host: `packed_inputs` gathers this step's, which go up in one copy (step.LabelStep).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spark_distill.data.index import ClipRef
from spark_distill.label.profile import StepProfile
from spark_distill.label.schedule import DecodedClip
from spark_distill.label.step import LabelStep
from spark_distill.label.workers import ClipReaders, Ticket
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.delays import DelayChoice


class Copy(enum.Enum):
    """Where the copy of a slot's clip stands."""

    NONE = "no clip"
    QUEUED = "queued"  # issued by the next ClipSlots.flush
    ISSUED = "issued"  # on the copy stream; the slot's `ready` event marks it done
    READ = "read"  # a step waited for it and reads the slot


@dataclass
class Slot:
    """One of a row's two clip slots; its methods are its only transitions: fill -> (start_copy, copied) and
    make_current in either order -> first_read -> vacate."""

    events: bool  # CUDA: the copy and the steps run asynchronously, ordered by events
    ref: ClipRef | None = None  # the clip it holds; None: free
    copy: Copy = Copy.NONE
    current: bool = False  # the clip its row labels: every step reads it
    ready: Any = None  # event: the copy into it has landed (not yet waited for by a step)
    free: Any = None  # event: the steps that read its last clip have run (not yet waited for by a copy)

    def fill(self, ref: ClipRef) -> None:
        """A clip's copy into the slot is queued."""
        assert self.ref is None and not self.current, "a clip goes into its row's free slot only"
        self.ref, self.copy = ref, Copy.QUEUED

    def start_copy(self) -> Any:
        """The copy is being issued: returns what it must wait for, the event after the steps that read the slot's
        last clip (None: nothing to wait for)."""
        assert self.copy is Copy.QUEUED, f"a copy is issued once, after it was queued (slot: {self.copy.value})"
        free, self.free = self.free, None
        return free

    def copied(self, event: Any) -> None:
        """The copy is issued; `event` marks it done (None on the CPU, where it is done)."""
        assert self.copy is Copy.QUEUED and (event is not None or not self.events)
        self.copy, self.ready = Copy.ISSUED, event

    def make_current(self) -> None:
        """The row labels this slot's clip from the next step on."""
        assert self.ref is not None and not self.current, "a row flips to the slot that holds its next clip"
        self.current = True

    def first_read(self) -> Any:
        """The first step to read the slot is being enqueued: returns the event it must wait for (the copy's)."""
        assert self.current and self.copy is Copy.ISSUED, \
            f"a step reads a slot only after the copy into it was issued (copy: {self.copy.value})"
        ready, self.ready, self.copy = self.ready, None, Copy.READ
        return ready

    def vacate(self, free: Any) -> None:
        """The row flips away from the slot; `free`: an event after every step enqueued so far, which the next copy
        into the slot waits for (None before the first step, or on the CPU)."""
        assert (self.current and self.copy is Copy.READ) or (self.ref is None and self.copy is Copy.NONE), \
            "a row flips away from a slot only after a step read it"
        assert self.free is None, "the copy into the slot waited for the steps before it"
        assert free is not None or not (self.events and self.copy is Copy.READ), \
            "a slot a step read is copied into only after that step"
        self.ref, self.copy, self.current, self.free = None, Copy.NONE, False, free


class ClipSlots:
    """Two clip slots per row for `batch` rows (the device side in `step.clips`), the clips' small inputs on the
    host, and where each row stands: its current slot, the frame it labels next (`t`), its clip's length."""

    def __init__(self, step: LabelStep, readers: ClipReaders | None, *, batch: int, clip_len: int,
                 profile: StepProfile, delays: DelayChoice | None = None) -> None:
        self.clips, self.copy_stream, self.readers, self.profile = step.clips, step.copy_stream, readers, profile
        self.device = step.device
        self.cuda = self.device.type == "cuda"
        self.slots = [[Slot(self.cuda) for _ in range(batch)] for _ in range(2)]  # [slot][row]
        self.current = np.zeros(batch, np.int64)  # each row's current slot
        self.length = np.zeros(batch, np.int64)  # frames in each row's current clip; 0 = idle row
        self.t = np.zeros(batch, np.int64)  # the frame of its current clip each row labels next
        self.row_ids = np.arange(batch)
        # each slot's clip's small per-frame inputs, on the host: they go up once per step, packed
        self.desire = np.zeros((2, batch, clip_len, C.DESIRE_LEN), np.float32)
        self.v_ego = np.zeros((2, batch, clip_len), np.float32)
        self.traffic = np.zeros((2, batch, C.TRAFFIC_CONVENTION_LEN), np.float32)
        self.delays = delays or DelayChoice()
        self.delay = np.zeros((2, batch, clip_len, 2), np.float32)  # [lateral, longitudinal] per frame
        self.gap = np.zeros((2, batch, clip_len), np.int64)  # frames skipped before frame t, or schedule.RESET
        self.lengths = np.zeros((2, batch), np.int64)
        self.queued: list[tuple[Ticket, int, int]] = []  # (ticket, slot, row): copies queued, not yet issued
        self.flipped: list[tuple[int, int]] = []  # (slot, row) made current since the last step
        self.vacated: Any = None  # the event after the steps so far, for the rows that flip before the next step
        self.steps_enqueued = False

    # -- clips in ----------------------------------------------------------------------------------
    def staged(self, row: int) -> bool:
        """Whether the row's free slot holds its next clip."""
        return self.slots[1 - int(self.current[row])][row].ref is not None

    def load(self, row: int, clip: DecodedClip) -> None:
        """Queue `clip`'s copy into the row's free slot (`flush` issues it) and keep its small inputs."""
        s = 1 - int(self.current[row])
        self.slots[s][row].fill(clip.ref)
        self.readers.claim(clip.ticket)
        self.queued.append((clip.ticket, s, row))
        n = len(clip.gaps)
        gap = self.gap[s, row]
        gap[:] = 0
        gap[:n] = clip.gaps
        self.desire[s, row, :n] = clip.arrays["desire"]
        self.v_ego[s, row, :n] = np.nan_to_num(clip.arrays["car"][:, 0].astype(np.float32), nan=0.0)
        self.traffic[s, row] = clip.arrays["traffic"]
        self.delay[s, row, :n, 0], self.delay[s, row, :n, 1] = self.delays.clip(clip.arrays["meta"], n)
        self.lengths[s, row] = n

    def flush(self) -> None:
        """Issue the queued copies on the copy stream, each after the steps that read its slot's last clip, with
        one event for all of them; their reader slots are released once it has passed."""
        if not self.queued:
            return
        start = time.perf_counter()
        copies = []
        for ticket, s, row in self.queued:
            src = self.readers.slot_tensor(ticket)  # (2, T, 6, 128, 256): frames past the clip's are stale, never read
            if src is None:  # spilled out of the slab into private memory: (2, n, 6, 128, 256)
                src = torch.stack([torch.from_numpy(ticket.clip["road"]), torch.from_numpy(ticket.clip["wide"])])
            copies.append((self.clips[s, row, :, : src.shape[1]], src))
        # each copy waits only for the steps that read its slot (the slot's previous clip, finished at a flip):
        # waiting for all compute enqueued so far held every copy until the step in flight had finished, and the
        # next step's small input copy then queued behind them on the copy engine
        frees = {id(e): e for e in (self.slots[s][row].start_copy() for _, s, row in self.queued) if e is not None}
        if self.cuda:
            for event in frees.values():
                self.copy_stream.wait_event(event)
            if not self.steps_enqueued:  # before the first step: after the capture's warm-up, which read the slots
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.copy_stream):
                for dst, src in copies:
                    dst.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.copy_stream)
        else:
            for dst, src in copies:
                dst.copy_(src)
            event = None
        for ticket, s, row in self.queued:
            self.slots[s][row].copied(event)
            self.readers.release(ticket, event)
        self.queued = []
        self.profile.add("host->device", start)

    # -- rows --------------------------------------------------------------------------------------
    def flip(self, row: int) -> None:
        """Make the row's staged clip current (the next step waits for its copy); the slot it leaves may be copied
        into once the steps enqueued so far have run."""
        s = int(self.current[row])
        self.slots[s][row].vacate(self._after_steps())
        s = 1 - s
        self.current[row] = s
        self.slots[s][row].make_current()
        self.flipped.append((s, row))
        self.length[row], self.t[row] = self.lengths[s, row], 0

    def _after_steps(self) -> Any:
        """An event after every step enqueued so far, one for all the rows that flip between two steps (None
        before the first step or on the CPU)."""
        if not (self.cuda and self.steps_enqueued):
            return None
        if self.vacated is None:
            self.vacated = torch.cuda.Event()
            self.vacated.record(torch.cuda.current_stream(self.device))
        return self.vacated

    def idle(self, row: int) -> None:
        """The row has nothing left to label."""
        self.length[row], self.t[row] = 0, 0

    def active(self) -> np.ndarray:
        """(batch,) bool: the rows labeling a clip."""
        return self.length > 0

    def finished(self, active: np.ndarray) -> np.ndarray:
        """The rows among `active` that have labeled their clip's last frame."""
        return np.flatnonzero(active & (self.t >= self.length))

    def current_clips(self, rows: np.ndarray) -> list[tuple[ClipRef, int]]:
        """(clip, frames) in the current slot of each of `rows`."""
        return [(self.slots[self.current[i]][i].ref, int(self.length[i])) for i in rows]

    # -- the step's inputs -------------------------------------------------------------------------
    def packed_inputs(self) -> np.ndarray:
        """(batch, step.PACKED): every row's current slot, t, and frame t's v_ego, traffic, desire and delays."""
        slot, rows, t = self.current, self.row_ids, self.t
        return np.concatenate([
            slot[:, None].astype(np.float32), t[:, None].astype(np.float32),
            self.v_ego[slot, rows, t][:, None], self.traffic[slot, rows], self.desire[slot, rows, t],
            self.delay[slot, rows, t]], axis=1)

    def gaps(self, active: np.ndarray) -> np.ndarray:
        """(batch,): frames the encoder dropped before each active row's frame t, or schedule.RESET."""
        return np.where(active, self.gap[self.current, self.row_ids, self.t], 0)

    def take_ready(self) -> dict[int, Any]:
        """The copy events of the slots made current since the last step, which the step about to be enqueued
        reads first (by id: one event serves many)."""
        waits = {}
        for s, row in self.flipped:
            event = self.slots[s][row].first_read()
            if event is not None:
                waits[id(event)] = event
        self.flipped = []
        return waits

    def stepped(self, active: np.ndarray) -> None:
        """A step is enqueued: the active rows move on a frame."""
        self.steps_enqueued, self.vacated = True, None
        self.t[active] += 1
