# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass's frame arithmetic: frames the encoder dropped, restarts after long holes and unreadable clips,
and the segment's record for the manifest."""

from __future__ import annotations

import collections

import numpy as np

from spark_distill.data.index import ClipRef, SegmentPlan
from spark_distill.label.schedule import RESET, Segment, frame_gaps, reader_slots
from spark_distill.openpilot import contract as C

FULL = C.FULL_HISTORY_BUFFER_LEN


def test_frame_gaps_count_dropped_frames_and_restart_after_long_holes() -> None:
    gaps, resets = frame_gaps(np.arange(5), None, restart=False)
    assert gaps.tolist() == [0] * 5 and resets == []
    gaps, resets = frame_gaps(np.array([10, 11, 13, 16]), 9, restart=False)  # 1 and 2 frames dropped
    assert gaps.tolist() == [0, 0, 1, 2] and resets == []
    gaps, _ = frame_gaps(np.array([10, 11, 13, 16]), None, restart=False)  # a segment's first frame has no gap
    assert gaps.tolist() == [0, 0, 1, 2]
    fids = np.array([0, 1, 1 + FULL, 2 + 2 * FULL])  # a hole as long as the history is replayed; longer restarts
    gaps, resets = frame_gaps(fids, None, restart=False)
    assert gaps.tolist() == [0, 0, FULL - 1, RESET] and resets == [2 + 2 * FULL]
    gaps, resets = frame_gaps(np.array([200, 201]), 50, restart=False)  # the hole is at the clip boundary
    assert gaps.tolist() == [RESET, 0] and resets == [200]


def test_after_unreadable_clips_the_row_restarts_at_the_next_clip() -> None:
    gaps, resets = frame_gaps(np.array([20, 21, 23]), 5, restart=True)
    assert gaps.tolist() == [RESET, 0, 1] and resets == [20]


def test_a_segment_records_its_first_frame_and_every_restart() -> None:
    refs = [ClipRef(0, "s--c00000"), ClipRef(1, "s--c00001"), ClipRef(2, "s--c00002")]
    seg = Segment(SegmentPlan("s", tuple(refs)), collections.deque(), restart_at=frozenset({refs[2].key}))
    assert seg.record() == {"resets": []}, "before its first clip: no first frame yet"
    assert seg.gaps(refs[0], np.array([3, 4, 5])).tolist() == [0, 0, 0]
    assert seg.gaps(refs[1], np.array([6, 7 + FULL])).tolist() == [0, RESET]
    assert seg.gaps(refs[2], np.array([400, 401])).tolist() == [RESET, 0]
    assert seg.record() == {"resets": [7 + FULL, 400], "first_frame_id": 3}
    record = seg.record()
    record["resets"].append(1)
    assert seg.resets == [7 + FULL, 400], "the record is a copy: the manifest never aliases the segment's state"


def test_reader_slots_hold_every_rows_next_clip_and_the_first_clips_ahead() -> None:
    assert reader_slots(8, 2, accelerated=False) == 8 + 4
    assert reader_slots(64, 14, accelerated=True) == 128 + 28
