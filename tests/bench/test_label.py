# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""bench label's report of the label pass's profile."""

from __future__ import annotations

from spark_distill.bench.label import profile_lines


def test_profile_lines_give_ms_per_step_by_stage_and_the_busy_fraction() -> None:
    lines = list(profile_lines({"compute s/step": 0.0125, "readers decode s/step": 0.004, "busy fraction": 0.93,
                                "steps": 120.0, "label pass s": 2.0, "captured step": 1.0, "clips spilled": 3.0,
                                "set-up: start readers, build the step s": 2.5}))
    assert lines[0].startswith("profile over 120 steps")
    assert [line.split()[-1] for line in lines[1:5]] == ["12.50", "4.00", "0.93", "3"]
    assert lines[1].split()[0] == "compute" and lines[2].strip().startswith("readers decode")
    assert lines[4].strip().startswith("clips spilled")
    assert lines[5].strip().startswith("set-up: start readers, build the step") and lines[5].split()[-2:] == [
        "2.50", "s"]
    assert lines[6].strip() == "step: one CUDA graph per step (frame gather, modeld state, both models, outputs)"
    assert list(profile_lines({"steps": 1.0}))[-1].strip().startswith("step: uncaptured")


def test_ratio_lines_put_the_loop_against_bare_and_say_what_end_to_end_adds() -> None:
    from pathlib import Path

    from spark_distill.bench.label import ratio_lines
    from spark_distill.label.run import LabelResult

    result = LabelResult(Path("x"), frames=20_000, seconds=2.5, profile={"label pass s": 1.0})  # loop 20k/s, all 8k/s
    loop, e2e = ratio_lines(result, 25_000.0, "torch compiled")
    assert loop.split()[-4:] == ["0.80", "(target", ">=", "0.90)"]
    assert e2e.split()[e2e.split().index("compiled):") + 1] == "0.32"
    assert "1.50 s of set-up and drain in 2.50 s" in e2e
