# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Progress: how a pass reports it, and how the command line shows it.

Passes take `on_progress(done, total, note="")`; a pass made of named steps of unequal length (export, a
benchmark, the teacher fit) counts them with `Stages`. The command line's display, one for every long command,
is `show(console, description, ...)`, which yields that callback.

On a terminal it is a live rich bar: done/total, rate, elapsed time, ETA and the stage's note. Anywhere else
(output piped or logged) it prints a plain line on the console every `every` seconds while the command runs
(rate, done/total, ETA; "starting" until the first report) and one when it ends, so a long piped run is
never silent. A total of 0 or None is unknown: the bar pulses and the line gives the count alone.
`stages=True` is for a command that reports steps of unequal length: no rate or ETA.

`on_interrupt`: a Ctrl-C inside the block prints this at once (what happens next), then stops the command
with `Noticed`, a KeyboardInterrupt that says the notice was given. Code inside may install its own SIGINT
handler for its own part (training stops after the current step); the block restores this one after it.
rich is imported only by the display.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

EVERY_ENV = "SPARK_DISTILL_PROGRESS_EVERY"  # seconds between plain lines when not on a terminal (0: none)
EVERY = 15.0  # a 6-minute run gets ~24 lines; a run shorter than this one line, at its end
WINDOW_S = 30.0  # rate over the last 30 s: set-up and a slow first step (compiling) fade out of it
SAMPLE_S = 0.25  # at most four samples a second are kept, however often a stage reports


class Stages:
    """Progress of a pass made of named steps of unequal length: `stages(note)` as each begins reports
    on_progress(steps done, total, note); `end()` reports all done. `total` may be corrected on the way (a step
    that turns out to be needed)."""

    def __init__(self, on_progress: Callable[[int, int, str], None] | None, total: int) -> None:
        self.on_progress, self.total, self.done = on_progress, total, -1

    def __call__(self, note: str) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, max(self.total, self.done + 1), note)

    def end(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.total, self.total, "")


class Noticed(KeyboardInterrupt):
    """Ctrl-C, after the command said what happens next."""


def clock(seconds: float) -> str:
    """0:01:05 for 65 s."""
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def number(x: float) -> str:
    """A rate with the digits that mean something: 1,234, 12.3, 0.12."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


class Meter:
    """Done/total/note of one command as reported, and its rate over the last WINDOW_S seconds (thread-safe:
    a stage may report from a worker thread while the plain-line thread reads)."""

    def __init__(self, unit: str, *, now: float | None = None) -> None:
        self.unit = unit
        self.started = time.monotonic() if now is None else now
        self.done, self.total, self.note = 0, None, ""
        self.reported_total: int | None = None
        self.reports = 0
        self.window: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()

    def update(self, done: int, total: int | None, note: str = "", *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        total = total or None
        with self.lock:
            if done < self.done or total != self.reported_total:  # a new stage, or a new estimate: a new rate
                self.window.clear()
            self.reported_total = total
            self.done, self.total, self.note = done, None if total is None else max(total, done), note
            self.reports += 1
            if len(self.window) >= 2 and now - self.window[-2][0] < SAMPLE_S:
                self.window[-1] = (now, done)  # the newest sample moves; the ones before stay SAMPLE_S apart
            else:
                self.window.append((now, done))
            while len(self.window) > 2 and self.window[1][0] < now - WINDOW_S:
                self.window.popleft()

    def rate(self) -> float | None:
        """Units per second over the window; None until two reports some time apart."""
        with self.lock:
            if len(self.window) < 2:
                return None
            (t0, d0), (t1, d1) = self.window[0], self.window[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.done:,}/{self.total:,}{unit}" if self.total else f"{self.done:,}{unit}"

    def rate_text(self) -> str:
        rate = self.rate()
        return "" if rate is None else f"{number(rate)} {self.unit}/s" if self.unit else f"{number(rate)}/s"

    def eta(self) -> float | None:
        rate = self.rate()
        if not self.total or not rate or rate <= 0 or self.done >= self.total:
            return None
        return (self.total - self.done) / rate

    def line(self, description: str, *, stages: bool, now: float | None = None) -> str:
        """The plain line for now: where it is, how fast, how long to go."""
        now = time.monotonic() if now is None else now
        elapsed = f"elapsed {clock(now - self.started)}"
        if not self.reports:
            return f"{description}: starting, {elapsed}"
        parts = [self.count() + (f" ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        if not stages:
            rate, eta = self.rate_text(), self.eta()
            parts += ([rate] if rate else []) + ([f"ETA {clock(eta)}"] if eta is not None else [])
        parts.append(elapsed)
        return f"{description}: " + ", ".join(parts + ([self.note] if self.note else []))

    def final_line(self, description: str, *, stages: bool, now: float | None = None) -> str:
        """The plain line at the end: what was done in how long, at what average rate."""
        now = time.monotonic() if now is None else now
        seconds = now - self.started
        rate = ("" if stages or not self.unit or seconds <= 0 or not self.done  # unitless: steps of several stages
                else f" ({number(self.done / seconds)} {self.unit}/s)")
        return f"{description}: {self.count()} in {clock(seconds)}{rate}" + (f", {self.note}" if self.note else "")


def live(console: Console) -> bool:
    """Whether the console takes a live display (a terminal that understands cursor movement)."""
    return console.is_terminal and not console.is_dumb_terminal


@contextlib.contextmanager
def show(console: Console, description: str, *, unit: str = "frames", stages: bool = False, every: float = EVERY,
         on_interrupt: str | None = None) -> Iterator[Callable[..., None]]:
    """The display for one command; yields `on_progress(done, total, note="")` (see the module docstring)."""
    meter = Meter(unit)
    with _interrupt_notice(console, on_interrupt):
        if live(console):
            with _bar(console, description, meter, stages) as update:
                yield update
        else:
            with _lines(console, description, meter, stages, every) as update:
                yield update


@contextlib.contextmanager
def _bar(console: Console, description: str, meter: Meter, stages: bool) -> Iterator[Callable[..., None]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    def text(field: str) -> TextColumn:  # kept whole on one line: on a narrow terminal the bar gives way first
        return TextColumn(f"{{task.fields[{field}]}}", markup=False, highlighter=None,
                          table_column=Column(no_wrap=True, overflow="ellipsis"))

    progress = Progress(TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)), BarColumn(),
                        text("count"), text("rate"), TimeElapsedColumn(table_column=Column(no_wrap=True)), text("eta"),
                        text("note"), console=console, transient=False,
                        redirect_stdout=sys.stdout.isatty())  # stdout to a file stays there, not on the terminal
    task = progress.add_task(description, total=None, count=meter.count(), rate="", eta="", note="")

    def update(done: int, total: int | None, note: str = "") -> None:
        meter.update(done, total, note)
        eta = meter.eta()
        progress.update(task, completed=done, total=meter.total, count=meter.count(),
                        rate="" if stages else meter.rate_text(),
                        eta="" if stages or eta is None else f"ETA {clock(eta)}", note=note)

    with progress:
        try:
            yield update
        except Exception:
            if not meter.reports:  # failed before its first report: an empty bar above the error says nothing
                progress.live.transient = True
            raise


@contextlib.contextmanager
def _lines(console: Console, description: str, meter: Meter, stages: bool, every: float
           ) -> Iterator[Callable[..., None]]:
    stop = threading.Event()

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    def tick() -> None:
        while not stop.wait(every):
            say(meter.line(description, stages=stages))

    thread = threading.Thread(target=tick, name="progress-lines", daemon=True) if every > 0 else None
    if thread is not None:
        thread.start()
    try:
        yield meter.update
    finally:
        stop.set()
        if thread is not None:
            thread.join()
    if meter.reports:  # reached only when the block ended normally
        say(meter.final_line(description, stages=stages))


@contextlib.contextmanager
def _interrupt_notice(console: Console, message: str | None) -> Iterator[None]:
    """SIGINT prints `message` at once and raises Noticed (the main thread only: signals go there)."""
    if message is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def notice(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, _handler(previous))  # a second Ctrl-C during the clean-up: as before
        console.print(f"Ctrl-C: {message}", highlight=False, markup=False, soft_wrap=True)
        raise Noticed

    signal.signal(signal.SIGINT, notice)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _handler(previous))


def _handler(previous: Any) -> Any:
    """A handler signal.signal takes back (None: one installed outside Python, taken as Python's default)."""
    return signal.default_int_handler if previous is None else previous
