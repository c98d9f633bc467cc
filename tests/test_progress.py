# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The progress display: the meter's rate and ETA, the live bar on a terminal (total unknown at first, as every
command starts), plain lines when piped, the Ctrl-C notice; and the command chain run under a pseudo-terminal
as a user at a terminal runs it."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from spark_distill import progress
from spark_distill.progress import Meter, Noticed, Stages, show
from tests.terminal import BAR, plain, run_in_pty, screen


def test_meter_rate_eta_and_a_new_stage() -> None:
    m = Meter("frames", now=0.0)
    assert m.line("ingest", stages=False, now=20.0) == "ingest: starting, elapsed 0:00:20"
    m.update(0, 0, now=1.0)  # total unknown (0)
    assert m.count() == "0 frames" and m.rate() is None and m.eta() is None
    m.update(100, 1000, now=2.0)
    m.update(300, 1000, now=4.0)
    assert m.rate() == pytest.approx(100.0) and m.eta() == pytest.approx(7.0)
    assert m.line("ingest", stages=False, now=4.0) == ("ingest: 300/1,000 frames (30%), 100 frames/s, ETA 0:00:07, "
                                                       "elapsed 0:00:04")
    m.update(1000, 1000, now=11.0)
    assert m.eta() is None  # done: nothing left to estimate
    assert m.final_line("ingest", stages=False, now=11.0) == "ingest: 1,000/1,000 frames in 0:00:11 (90.9 frames/s)"
    m.update(5, 50, "stage 2", now=12.0)  # a new stage: the rate starts again
    assert m.rate() is None and m.line("x", stages=False, now=12.0).endswith("elapsed 0:00:12, stage 2")
    m.update(6, 30, now=13.0)  # a done count past an estimated total raises the total
    m.update(40, 30, now=14.0)
    assert m.total == 40 and m.count() == "40/40 frames"


def test_stages_count_what_has_finished() -> None:
    seen = []
    s = Stages(lambda *a: seen.append(a), 2)
    s("first")
    s("second")
    s("third, found on the way")  # total grows rather than run past it
    s.end()
    assert seen == [(0, 2, "first"), (1, 2, "second"), (2, 3, "third, found on the way"), (2, 2, "")]


def test_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    with show(Console(file=buf, width=200), "train", unit="steps", every=0.05) as update:
        time.sleep(0.12)  # before the first report: "starting"
        for step in range(1, 4):
            update(step, 3, f"loss {1 / step:.2f}")
            time.sleep(0.12)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("train: starting, elapsed 0:00:0")
    assert any(re.fullmatch(r"train: 2/3 steps \(67%\), [\d.]+ steps/s, ETA 0:00:0\d, elapsed 0:00:0\d, loss 0.50", x)
               for x in lines), lines
    assert re.fullmatch(r"train: 3/3 steps in 0:00:0\d \([\d.]+ steps/s\), loss 0.33", lines[-1]), lines
    assert BAR not in buf.getvalue()


def test_live_bar_with_an_unknown_total_then_a_known_one() -> None:
    """Every command starts with its total unknown: rich formatted None with ',.0f' and crashed (issue 25)."""
    buf = io.StringIO()
    with show(Console(file=buf, force_terminal=True, width=120), "ingest") as update:
        time.sleep(0.25)  # a refresh while nothing is known
        update(7, 0)
        time.sleep(0.25)
        update(40, 40)
    drawn, last = plain(buf.getvalue()), screen(buf.getvalue())
    assert "ingest" in drawn and " 7 frames" in drawn, drawn  # drawn while the total was unknown
    assert BAR in last and "40/40 frames" in last, last


def _in_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")


@pytest.mark.parametrize("terminal", [True, False])
def test_ctrl_c_says_what_happens_next_at_once(terminal: bool) -> None:
    _in_main_thread()
    buf = io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    console = Console(file=buf, force_terminal=terminal, width=200)
    with pytest.raises(Noticed), show(console, "label", on_interrupt="stopping; complete shards are kept") as update:
        update(3, 10)
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)  # not reached: the notice raises at once
    assert "Ctrl-C: stopping; complete shards are kept" in screen(buf.getvalue())
    assert signal.getsignal(signal.SIGINT) is before


def test_progress_interval_from_the_environment(tmp_path: Path) -> None:
    """Piped: `SPARK_DISTILL_PROGRESS_EVERY` seconds between lines (synth-route: a frame at a time)."""
    env = os.environ | {progress.EVERY_ENV: "0.2"}
    args = [sys.executable, "-m", "spark_distill", "synth-route", str(tmp_path / "r"), "--segments", "1",
            "--seconds", "1", "--device", "eon"]
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(re.match(r"synth-route: (starting|\d+/20 frames \(\d+%\))", x) for x in lines[:-1]), lines
    assert re.match(r"synth-route: 20/20 frames in 0:00:\d\d", lines[-1]), lines
    bad = subprocess.run(args, capture_output=True, text=True, env=os.environ | {progress.EVERY_ENV: "often"})
    assert bad.returncode == 2 and "SPARK_DISTILL_PROGRESS_EVERY='often'" in bad.stderr


@pytest.mark.slow
def test_command_chain_in_a_terminal(tmp_path: Path) -> None:
    """synth-route -> ingest (and bench ingest) -> label -> train -> eval -> export in a pseudo-terminal: each
    draws its live bar to the end and exits 0 (piped, as the other tests run the commands, no bar is drawn)."""
    from spark_distill.synth.teacher import write_teacher

    root, runs = tmp_path / "ds", tmp_path / "runs"
    write_teacher(tmp_path / "teacher", seed=1)
    steps = [
        (["synth-route", str(tmp_path / "route"), "--segments", "1", "--seconds", "2", "--device", "eon"],
         "40/40 frames"),
        (["ingest", str(tmp_path / "route"), "--out", str(root), "--clip-len", "10", "--workers", "1"],
         "40/40 frames"),
        (["bench", "ingest", "--route", str(tmp_path / "route"), "--segments", "1", "--workers", "1",
          "--decode-threads", "1", "--workdir", str(tmp_path)], "4/4 measurements"),
        (["label", str(root), "--teacher", str(tmp_path / "teacher"), "--name", "set", "--backend", "onnxruntime",
          "--batch", "1", "--workers", "1"], "40/40 frames"),
        (["train", str(root), "--labels", "set", "--student", "compact-xs", "--max-steps", "2", "--batch-size", "1",
          "--workers", "1", "--burn-in", "4", "--runs-dir", str(runs), "--run", "r", "--device", "cpu"],
         "2/2 steps"),
        (["eval", str(root), "--labels", "set", "--run", str(runs / "r"), "--include-warmup", "--out",
          str(tmp_path / "eval")], "1/1 segments"),
        (["export", str(runs / "r"), "--output", str(tmp_path / "export"), "--check", "none", "--verify-frames", "2"],
         "5/5 stages"),
    ]
    for args, done in steps:
        code, text = run_in_pty(args)
        shown = screen(text)
        assert code == 0 and "Traceback" not in text, (args, shown)
        lines = shown.splitlines()
        bar = next((line for line in lines if BAR in line and done in line), None)
        assert bar is not None and bar.startswith(" ".join(args[:2]) if args[0] == "bench" else args[0]), (args, shown)
        if args[0] == "bench":  # its results, printed while the bar is live, go above it, each on its own line
            for start in ("segment: ", "bare PyAV decode", "ratio ingest / bare decode, wall:", "   1 worker(s):"):
                assert any(line.startswith(start) for line in lines), (start, shown)
