# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A device clip slot's transitions: the step reads a slot only after the copy into it, and a copy into a slot
waits for the steps that read its last clip."""

from __future__ import annotations

import pytest

from spark_distill.data.index import ClipRef
from spark_distill.label.slots import Copy, Slot

A, B = ClipRef(0, "a--c00000"), ClipRef(0, "a--c00001")


def test_a_slot_cycles_through_copy_read_and_vacate_handing_on_its_events() -> None:
    slot = Slot(events=True)
    slot.vacate(None)  # a row's first flip leaves a slot that never held a clip
    slot.fill(A)
    assert slot.start_copy() is None, "nothing read it yet"
    copied, after_steps = object(), object()
    slot.copied(copied)
    slot.make_current()
    assert slot.first_read() is copied and slot.copy is Copy.READ
    slot.vacate(after_steps)
    slot.fill(B)
    assert slot.start_copy() is after_steps, "the copy of its next clip waits for the steps that read this one"
    assert slot.free is None


def test_a_row_may_flip_to_a_slot_before_its_copy_is_issued_but_no_step_reads_it_until_then() -> None:
    slot = Slot(events=True)
    slot.fill(A)
    slot.make_current()
    with pytest.raises(AssertionError, match="only after the copy into it"):
        slot.first_read()


def test_slot_misuse_is_an_assertion() -> None:
    slot = Slot(events=True)
    slot.fill(A)
    with pytest.raises(AssertionError, match="free slot only"):
        slot.fill(B)  # it holds a clip already
    slot.start_copy()
    slot.copied(object())
    slot.make_current()
    with pytest.raises(AssertionError, match="only after a step read it"):
        slot.vacate(object())
    slot.first_read()
    with pytest.raises(AssertionError, match="only after that step"):
        slot.vacate(None)  # on CUDA a slot a step read needs the event after that step
    cpu = Slot(events=False)
    cpu.fill(A)
    cpu.start_copy()
    cpu.copied(None)
    cpu.make_current()
    cpu.first_read()
    cpu.vacate(None)  # on the CPU every copy and step is done when it returns
