# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Which segment each batch row of the label pass labels, and which clip it takes next.

Main entry point: `SegmentScheduler`. Segments go to rows in the order of the work list; each row labels one
segment from its first frame to its last, clip after clip, then takes the next one. The first clips of the
segments the rows take next are decoded ahead (`AHEAD_PER_READER` per reader process), so a row at a segment's end
never waits for one. Clips of shards that failed their check are left out: the row's modeld state starts over at
the first readable clip after them, as at a segment start. `frame_gaps` is the frame arithmetic of one clip: the
frames the encoder dropped before each frame (replayed from the newest history entry) and where a hole longer than
the history restarts the row. Each segment keeps its own record for the label manifest (`Segment.record`: its first
frame id and where it restarted); the caller writes it into the manifest.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_distill.data.index import ClipRef, SegmentPlan
from spark_distill.errors import DatasetError
from spark_distill.label.profile import StepProfile
from spark_distill.label.workers import ClipReaders, Ticket
from spark_distill.openpilot import contract as C

RESET = -1  # gap marker: restart the row's history before this frame
AHEAD_PER_READER = 2  # first clips of the segments the rows take next, decoded ahead (SegmentScheduler.refill)


def reader_slots(batch: int, readers: int, *, accelerated: bool) -> int:
    """Clip slots of the readers' slab for `batch` rows: AHEAD_PER_READER per reader for the first clips of the
    segments the rows take next, and per row its next clip, decoded while it waits for its device slot
    (the clip before it must be labeled first). With an accelerator, a second one per row: the host runs steps
    ahead of the GPU, so a next clip's slot frees only once the GPU has reached the row's clip boundary and
    copied it, and the reader of the clip after it could not start until then (H200, batch 256: readers had ~10
    of the 20 steps between boundaries to decode every row's clip, and the rows waited at each boundary)."""
    return (2 if accelerated else 1) * batch + AHEAD_PER_READER * readers


def frame_gaps(fids: np.ndarray, prev_fid: int | None, *, restart: bool) -> tuple[np.ndarray, list[int]]:
    """A clip's frame arithmetic from its frame ids `fids` (n,): per frame, how many frames the encoder dropped just
    before it, or RESET where the row's modeld state starts over; and the frame ids of those restarts. `prev_fid`:
    the segment's last frame id before this clip (None: the segment starts here, its first frame has no gap);
    `restart`: the clips before this one were unreadable, so the row starts over at its first frame."""
    n = len(fids)
    gaps = np.zeros(n, np.int64)
    resets: list[int] = []
    if restart:
        prev_fid = None
        gaps[0] = RESET
        resets.append(int(fids[0]))
    steps = np.diff(fids) if prev_fid is None else np.diff(fids, prepend=prev_fid)
    skipped = gaps[n - len(steps):]
    skipped[:] = steps - 1  # frames the encoder dropped
    long_holes = steps > C.FULL_HISTORY_BUFFER_LEN  # a hole longer than the history: restart there
    skipped[long_holes] = RESET
    resets += fids[n - len(steps):][long_holes].tolist()
    return gaps, resets


@dataclass
class Segment:
    """A segment a row labels: its clips not yet handed to the row (in order, with their reader tickets once
    submitted), the clips where it starts over after unreadable ones, and what the label manifest records of it."""

    plan: SegmentPlan
    pending: collections.deque[tuple[ClipRef, Ticket | None]]
    restart_at: frozenset[str]  # keys of the clips that follow unreadable ones
    prev_fid: int | None = None  # last frame id handed to the row so far
    first_frame_id: int | None = None
    resets: list[int] = field(default_factory=list)  # frame ids where the row's modeld state started over

    def gaps(self, ref: ClipRef, fids: np.ndarray) -> np.ndarray:
        """Clip `ref`'s gaps (frame_gaps), its restarts added to this segment's record."""
        restart = ref.key in self.restart_at
        if (restart or self.prev_fid is None) and self.first_frame_id is None:
            self.first_frame_id = int(fids[0])
        gaps, resets = frame_gaps(fids, self.prev_fid, restart=restart)
        self.resets += resets
        self.prev_fid = int(fids[-1])
        return gaps

    def record(self) -> dict[str, Any]:
        """The segment's entry in the label manifest ("segments"), as of the clips handed to the row so far."""
        entry: dict[str, Any] = {"resets": list(self.resets)}
        if self.first_frame_id is not None:
            entry["first_frame_id"] = self.first_frame_id
        return entry


@dataclass(frozen=True)
class DecodedClip:
    """A clip ready for a row's free device slot: its frames wait in the readers' slab (`ticket`), its small
    per-frame inputs are here."""

    ref: ClipRef
    ticket: Ticket
    arrays: dict[str, Any]  # the reader's result: desire, car, traffic, meta, and the frames (views of the slab)
    gaps: np.ndarray  # (frames,) frame_gaps


class SegmentScheduler:
    """The segments of `start(work, bad)` spread over `batch` rows: each row's segment (`segments`), the one it
    takes next once its first clip is on the device (`successors`), and the rows that started a segment since the
    last step (`take_started`: their modeld state resets)."""

    def __init__(self, readers: ClipReaders | None, *, batch: int, clip_len: int, profile: StepProfile) -> None:
        self.readers, self.batch, self.clip_len, self.profile = readers, batch, clip_len, profile
        self.queue: collections.deque[SegmentPlan] = collections.deque()  # not yet taken nor decoded ahead
        self.bad: set[int] = set()  # shards whose clips are left out
        self.lookahead = 0  # first clips decoded ahead at most: the slab's slots beyond the rows' own
        self.upcoming: collections.deque[tuple[SegmentPlan, list[ClipRef], Ticket]] = collections.deque()
        self.segments: list[Segment | None] = [None] * batch  # None: the row is idle (no segment left)
        self.successors: list[Segment | None] = [None] * batch  # next segment, its first clip in the row's free slot
        self.started: list[int] = []  # rows that took a new segment since the last step

    def start(self, work: list[SegmentPlan], bad: set[int]) -> None:
        """Schedule `work` (clips in `bad` shards left out); the first clips go to the readers now."""
        assert self.readers is not None, "a scheduler without readers labels nothing"
        self.queue, self.bad = collections.deque(work), bad
        self.lookahead = AHEAD_PER_READER * len(self.readers.procs)
        self.upcoming = collections.deque()
        self.refill()

    def refill(self) -> None:
        """Keep the first clips of the next segments in flight, so a row never waits for one: AHEAD_PER_READER
        per reader, the slots the slab holds beyond the rows' own clips (reader_slots). More held the slots that
        the rows' next clips needed (batch 64 on an H200: 64 first clips decoded a segment ahead), and a row that
        waited for its clip had a held one spilled to private memory first."""
        while self.queue and len(self.upcoming) < min(self.batch, self.lookahead):
            plan = self.queue.popleft()
            refs = [c for c in plan.clips if c.shard not in self.bad]
            if refs:
                self.upcoming.append((plan, refs, self.readers.submit(refs[0])))

    def _take(self) -> Segment:
        plan, refs, first = self.upcoming.popleft()
        self.refill()
        restart = frozenset(c.key for prev, c in zip(plan.clips, plan.clips[1:], strict=False)
                            if prev.shard in self.bad and c.shard not in self.bad)
        return Segment(plan, collections.deque([(refs[0], first)] + [(r, None) for r in refs[1:]]), restart)

    def begin(self, row: int) -> Segment | None:
        """Row `row` takes the next segment (None: there is none left, the row is idle from now on)."""
        self.refill()
        if not self.upcoming:
            self.segments[row] = None
            return None
        segment = self.segments[row] = self._take()
        self.started.append(row)
        return segment

    def successor_ready(self, row: int) -> bool:
        """Whether row `row`, with no clip of its segment left to stage, can take its next segment ahead (its first
        clip is decoded)."""
        return self.successors[row] is None and bool(self.upcoming) and self.upcoming[0][2].done()

    def take_successor(self, row: int) -> Segment:
        """Row `row`'s next segment, taken ahead: its first clip goes into the row's free slot now."""
        segment = self.successors[row] = self._take()
        return segment

    def advance(self, row: int) -> None:
        """Row `row` moves on to the successor taken ahead."""
        self.segments[row], self.successors[row] = self.successors[row], None
        self.started.append(row)

    def take_started(self) -> list[int]:
        """The rows that started a segment since the last call."""
        started, self.started = self.started, []
        return started

    def next_clip(self, segment: Segment, *, wait: bool, before_wait: Any) -> DecodedClip | None:
        """`segment`'s next clip once decoded (None if none is left, or if it is not decoded yet and not `wait`;
        `before_wait()` runs before blocking on it). The clip after it starts decoding now."""
        if not segment.pending:
            return None
        ref, ticket = segment.pending[0]
        if ticket is None:
            ticket = self.readers.submit(ref)
            segment.pending[0] = (ref, ticket)
        if not ticket.done():
            if not wait:
                return None
            before_wait()
        segment.pending.popleft()
        start = time.perf_counter()
        clip = ticket.result()
        self.profile.add("wait for readers", start)
        if segment.pending and segment.pending[0][1] is None:  # the clip after it starts decoding now
            nxt, _ = segment.pending.popleft()
            segment.pending.appendleft((nxt, self.readers.submit(nxt)))
        if clip["__key__"] != ref.key:
            raise DatasetError(f"expected sample {ref.key}, read {clip['__key__']}")
        fids = np.asarray(clip["meta"]["frame_ids"], np.int64)
        if len(fids) > self.clip_len:
            raise DatasetError(f"{ref.key} has {len(fids)} frames, more than the dataset's clip_len {self.clip_len}")
        return DecodedClip(ref, ticket, clip, segment.gaps(ref, fids))
