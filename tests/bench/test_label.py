# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""bench label's report of the label pass's profile."""

from __future__ import annotations

from spark_distill.bench.label import profile_lines


def test_profile_lines_give_ms_per_step_by_stage_and_the_busy_fraction() -> None:
    lines = list(profile_lines({"compute s/step": 0.0125, "readers decode s/step": 0.004, "busy fraction": 0.93,
                                "steps": 120.0, "label pass s": 2.0, "captured step": 1.0,
                                "set-up: start readers, build the step s": 2.5}))
    assert lines[0].startswith("profile over 120 steps")
    assert [line.split()[-1] for line in lines[1:4]] == ["12.50", "4.00", "0.93"]
    assert lines[1].split()[0] == "compute" and lines[2].strip().startswith("readers decode")
    assert lines[4].strip().startswith("set-up: start readers, build the step") and lines[4].split()[-2:] == [
        "2.50", "s"]
    assert lines[5].strip() == "step: one CUDA graph per step (frame gather, modeld state, both models, outputs)"
    assert list(profile_lines({"steps": 1.0}))[-1].strip().startswith("step: uncaptured")
