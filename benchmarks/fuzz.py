# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The long fuzz run over every reader of outside bytes (the suite runs a few examples of each).

    python benchmarks/fuzz.py --budget 600                 # ten minutes over all fast targets
    python benchmarks/fuzz.py --targets rlog-zst,hevc --examples 500
    python benchmarks/fuzz.py --slow --budget 1800          # also the label pass over corrupt shards

Targets and the pass rule are in tests/fuzz/harness.py: a reader must return (keeping what is readable,
recording what it skipped) or raise a one-line SparkDistillError, within --timeout, without changing any
file it was not handed. Each target runs in its own process; the parent kills one that stops reporting
(a hang in C code that SIGALRM cannot break) and carries on from the next example. Prints, per target,
the inputs tried, how they ended, and each distinct finding with the example that reproduces it
(`--targets NAME --start SEED --examples 1`). Exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.harness import TARGETS, Outcome, Tally, build_corpus, run_example


def _child(name: str, corpus: str, start: int, stop: int, deadline: float, timeout: float, keep: str | None,
           out: mp.Queue) -> None:
    import logging

    logging.disable(logging.WARNING)  # readers warn about what they skip; the tally counts it
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # ONNX Runtime's own warnings about odd graphs
    except ImportError:
        pass
    target = TARGETS[name]
    for seed in range(start, stop):
        if time.time() > deadline:
            break
        out.put(("start", seed, None))
        o = run_example(target, Path(corpus), seed, timeout=timeout, keep=Path(keep) if keep else None)
        out.put(("done", seed, asdict(o)))
    out.put(("end", None, None))


def fuzz_target(name: str, corpus: Path, *, start: int, examples: int, seconds: float, timeout: float,
                keep: Path | None) -> Tally:
    """Run examples start.. of one target in child processes until `examples` or `seconds` run out."""
    tally, ctx = Tally(), mp.get_context("spawn")
    deadline, seed, stop = time.time() + seconds, start, start + examples
    while seed < stop and time.time() < deadline:
        out = ctx.Queue()
        child = ctx.Process(target=_child, args=(name, str(corpus), seed, stop, deadline, timeout,
                                                 str(keep) if keep else None, out), daemon=True)
        child.start()
        current, last = None, time.time()
        while True:
            try:
                kind, n, payload = out.get(timeout=1.0)
            except queue.Empty:
                if child.is_alive() and time.time() - last < timeout + 60:
                    continue
                # died (a crash in C code) or stuck where SIGALRM cannot reach: count it, go on from the next one
                what = "hang" if child.is_alive() else "crash"
                child.kill()
                tally.add(Outcome(name, "(see the example number)", what, f"exit code {child.exitcode}"
                                  if what == "crash" else f"killed after {timeout + 60:g} s", current or -1))
                seed = (current if current is not None else seed) + 1
                break
            last = time.time()
            if kind == "start":
                current = n
            elif kind == "done":
                tally.add(Outcome(**payload))
                seed = n + 1
            else:
                seed = stop
                break
        child.join(5)
    return tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds in all, shared equally by the targets")
    ap.add_argument("--examples", type=int, default=10**9, help="most examples per target")
    ap.add_argument("--targets", default="", help=f"comma-separated; default all fast ones: {', '.join(TARGETS)}")
    ap.add_argument("--slow", action="store_true", help="also the slow targets (the label pass, seconds each)")
    ap.add_argument("--start", type=int, default=0, help="first example number (examples are reproducible)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one example may take")
    ap.add_argument("--corpus", type=Path, help="reuse (or build into) this folder instead of a temporary one")
    ap.add_argument("--keep", type=Path, help="save the mutated input of every finding here")
    args = ap.parse_args()
    names = [n for n in args.targets.split(",") if n] or [n for n, t in TARGETS.items() if args.slow or not t.slow]
    if unknown := [n for n in names if n not in TARGETS]:
        sys.exit(f"unknown target {unknown[0]!r}; available: {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory(prefix="fuzz-corpus-") as tmp:
        corpus = args.corpus or Path(tmp)
        if not (corpus / "runs").exists():
            t0 = time.perf_counter()
            build_corpus(corpus)
            print(f"corpus built in {time.perf_counter() - t0:.0f} s: {corpus}", flush=True)
        start, total = time.time(), {"examples": 0, "findings": 0}
        for i, name in enumerate(names):
            share = (args.budget - (time.time() - start)) / (len(names) - i)
            t = fuzz_target(name, corpus, start=args.start, examples=args.examples, seconds=max(share, 1.0),
                            timeout=args.timeout, keep=args.keep)
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t.kinds.items()))
            print(f"{name:22s} {t.examples:6d} inputs  ({kinds})  distinct findings: {len(t.findings)}", flush=True)
            for sig, o in t.findings.items():
                print(f"    {sig}\n      e.g. example {o.seed}: {o.mutation}", flush=True)
            total["examples"] += t.examples
            total["findings"] += len(t.findings)
        print(f"total: {total['examples']} inputs over {len(names)} targets in {time.time() - start:.0f} s, "
              f"{total['findings']} distinct findings")
    sys.exit(1 if total["findings"] else 0)


if __name__ == "__main__":
    main()
