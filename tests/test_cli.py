# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The command line: help, version, one-line errors with exit code 2, the ingest -> inspect path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_distill import __version__
from spark_distill.cli import app
from spark_distill.data import shards

runner = CliRunner()


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "ingest" in result.output and "inspect" in result.output
    for command in (["ingest"], ["inspect"], ["synth-route"], ["synth-teacher"], ["label"], ["train"],
                    ["bench", "ingest"], ["bench", "storage"], ["bench", "label"], ["bench", "train"], ["export"],
                    ["demo"]):
        sub = runner.invoke(app, [*command, "--help"])
        assert sub.exit_code == 0, command
    assert "--clip-len" in runner.invoke(app, ["ingest", "--help"]).output
    assert runner.invoke(app, ["--version"]).output.strip() == f"spark-distill {__version__}"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spark_distill", *args], capture_output=True, text=True)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, message in (
        (["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such file or directory"),
        (["ingest", str(tmp_path), "--out", str(tmp_path / "o")], "no route segments found"),
        (["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--cameras", "road,rear"], "unknown camera"),
        (["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--codec", "av2"], "unknown codec 'av2'"),
        (["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--codec", "hevc", "--crf", "60"], "--crf must"),
        (["bench", "storage", "--crf", "-1"], "--crf must be in 0..51"),
        (["inspect", str(tmp_path)], "no frames dataset here"),
        (["synth-route", str(tmp_path / "r"), "--fault", "flat-tyre"], "unknown fault 'flat-tyre'"),
        (["export", str(tmp_path), "--output", str(tmp_path / "x")], "not a training run"),
        (["export", str(tmp_path), "--output", str(tmp_path / "x"), "--format", "onnx"], "unknown --format"),
        (["demo", "--minutes", "0.01", "--out", str(tmp_path / "d")], "--minutes 0.01"),
        (["train", str(tmp_path), "--labels", "x", "--student", "nope"], "unknown --student"),
        (["train", str(tmp_path), "--labels", "x", "--head-init", "zero"], "unknown head init 'zero'"),
        (["bench", "train", "--student", "openpilot"], "choose compact"),
        (["train", str(tmp_path), "--labels", "x", "--capture", "graph"], "--capture must be one of auto, on, off"),
        (["bench", "train", "--capture", "yes"], "--capture must be one of auto, on, off"),
        (["bench", "distill", "--capture", "yes"], "--capture must be one of auto, on, off"),
        (["label", str(tmp_path), "--teacher", str(tmp_path), "--compile", "yes"], "--compile 'yes': choose auto"),
        (["bench", "label", "--compile", "maybe"], "--compile 'maybe': choose auto"),
    ):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    debug = _cli("--debug", "inspect", str(tmp_path))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_ingest_inspect_verify_and_contact_sheet(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    out = tmp_path / "ds"
    r = runner.invoke(app, ["ingest", str(route), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "frames kept" in r.output and "80" in r.output
    png = tmp_path / "sheet.png"
    r = runner.invoke(app, ["inspect", str(out), "--verify", "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "verified frames: 1 shards, 4 clips" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # corrupt a shard: verify names it and exits 2
    shard = out / "frames" / shards.shard_name(0)
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = _cli("inspect", str(out), "--verify")
    assert r.returncode == 2
    assert "shard-000000.tar: sha256 differs" in r.stderr and "error: verification found 1 problem" in r.stderr


@pytest.mark.slow
def test_synth_teacher_label_and_verify(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    out = tmp_path / "ds"
    assert runner.invoke(app, ["ingest", str(route), "--out", str(out), "--workers", "1"]).exit_code == 0
    r = runner.invoke(app, ["synth-teacher", str(tmp_path / "teacher"), "--weights", "random"])
    assert r.exit_code == 0 and "driving_policy_metadata.pkl" in r.output
    r = runner.invoke(app, ["label", str(out), "--teacher", str(tmp_path / "teacher"), "--batch", "2",
                            "--backend", "onnxruntime", "--name", "rand"])
    assert r.exit_code == 0, r.output
    assert "frames labeled" in r.output and "80" in r.output
    assert r.stdout.splitlines()[-1] == f"next: spark-distill train {out} --labels rand", "label says what comes next"
    r = runner.invoke(app, ["inspect", str(out), "--verify"])
    assert r.exit_code == 0, r.output
    assert "verified labels/rand: 1 shards, 4 clips" in r.output
    # a label shard that no longer matches its manifest is found
    shard = out / "labels" / "rand" / "shard-000000.tar"
    good = shard.read_bytes()
    data = bytearray(good)
    data[3000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = _cli("inspect", str(out), "--verify")
    assert r.returncode == 2 and "labels/rand/shard-000000.tar: sha256 differs from the manifest" in r.stderr
    assert f"Next: re-run `spark-distill label {out} --teacher TEACHER --name rand" in r.stderr
    shard.write_bytes(good)
    # a short training run from the CLI, its summary and loss curve
    r = runner.invoke(app, ["train", str(out), "--labels", "rand", "--student", "compact-xs", "--batch-size", "2",
                            "--max-steps", "2", "--val-fraction", "0.3", "--no-mask-warmup", "--workers", "1",
                            "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--burn-in", "4",
                            "--gt-weight", "0.5", "--loss-weights", "lanes=2", "--log-every", "1"])
    assert r.exit_code == 0, r.output
    run_dir = tmp_path / "runs" / "rand-compact-xs-none"  # a built-in student trains fully by default
    assert "steps" in r.output and (run_dir / "loss.png").exists()
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("gt" in x for x in logged if x["split"] == "train"), "the driven-path term is trained and logged"
    # the resolved config.yaml drives another run; options on the command line still win
    r = runner.invoke(app, ["train", str(out), "--labels", "rand", "--config", str(run_dir / "config.yaml"),
                            "--run", "again", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    import yaml

    again = yaml.safe_load((tmp_path / "runs" / "again" / "config.yaml").read_text())
    assert again["max_steps"] == 1 and again["student"] == "compact-xs" and again["burn_in"] == 4
    assert again["loss"]["gt"] == 0.5 and again["loss"]["lanes"] == 2.0
    # errors are one line and exit 2
    for args, message in ((["label", str(out), "--teacher", str(tmp_path / "none")], "not found"),
                          (["label", str(tmp_path), "--teacher", str(tmp_path / "teacher")], "no frames dataset"),
                          (["label", str(out), "--teacher", str(tmp_path / "teacher"), "--backend", "openvino"],
                           "unknown backend 'openvino'"),
                          (["train", str(out), "--labels", "nope"], "no label set 'nope' in "),
                          (["eval", str(out), "--labels", "nope", "--run", str(tmp_path)], "no label set 'nope' in "),
                          (["verify-labels", str(out), "--labels", "nope"], "no label set 'nope' in "),
                          (["train", str(out), "--labels", "rand", "--adapter", "ia3"], "unknown --adapter"),
                          (["train", str(out), "--labels", "rand", "--loss-weights", "speed=1"], "--loss-weights")):
        r = _cli(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)


def test_help_texts_read_whole() -> None:
    """Rich markup must not eat bracketed text ("[default: …]") from any option's help."""
    import click
    import typer.main
    from rich.text import Text

    def commands(cmd: click.Command) -> Iterator[click.Command]:
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from commands(sub)

    helps = [(c.name, p.help) for c in commands(typer.main.get_command(app)) for p in c.params if p.help]
    assert len(helps) > 50
    for name, text in helps:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), (name, text)
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert "[default: the student's: compact policy.*" in r.output and "<bool>" not in r.output


def _commands() -> Iterator[tuple[list[str], object]]:
    """(argv to the command, click command) of every command and bench subcommand."""
    import typer.main

    def walk(cmd, path: list[str]) -> Iterator[tuple[list[str], object]]:
        subs = getattr(cmd, "commands", {})
        if not subs:
            yield path, cmd
        for name, sub in subs.items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def test_help_shows_one_default_per_option_and_every_accepted_form() -> None:
    commands = list(_commands())
    assert len(commands) >= 14 and ["bench", "train"] in [c for c, _ in commands]
    twice = []
    for argv, _ in commands:
        r = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "2000"})  # one line per option
        assert r.exit_code == 0, argv
        twice += [(argv, line.strip()) for line in r.output.splitlines() if line.count("[default:") > 1]
    assert not twice, twice
    r = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "2000"})
    workers = next(line for line in r.output.splitlines() if "--workers" in line)
    assert "[default: one per CPU core]" in workers and "[default: 0]" not in workers
    train_help = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "2000"}).output
    student = next(line for line in train_help.splitlines() if "--student " in line)
    assert "runs/<run>" in student and "runs/<run>/checkpoints/step-N" in student
    head_init = next(line for line in train_help.splitlines() if "--head-init" in line)
    assert "[default: label-mean]" in head_init


def _run_with_a_checkpoint(runs: Path, name: str) -> None:
    import torch

    from spark_distill.models.checkpoint import save_checkpoint

    save_checkpoint(runs / name / "checkpoints", 1, {"w": torch.zeros(1)},
                    {"optimizer": {}, "torch_rng": None, "step": 1, "epoch": 0, "position": 1})


def test_train_names_a_missing_label_set_before_an_existing_run(labeled: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run_with_a_checkpoint(runs, "set-compact-none")  # what `train ROOT --labels set` would write to
    nolab = tmp_path / "nolab"  # the same frames, no label set
    (nolab / "frames").mkdir(parents=True)
    (nolab / "frames" / shards.MANIFEST).write_bytes((labeled / "frames" / shards.MANIFEST).read_bytes())
    for args, message in (
        ([str(nolab), "--labels", "set"], f"error: {nolab} has no label set yet; make one with "
                                          f"`spark-distill label {nolab} --teacher DIR` (or --from-log)"),
        ([str(labeled), "--labels", "nosuchset"], f"error: no label set 'nosuchset' in {labeled / 'labels'}; "
                                                  "label sets there: set"),
        ([str(labeled), "--labels", "set"], "error: run 'set-compact-none' already has checkpoints in"),
    ):
        r = runner.invoke(app, ["train", *args, "--runs-dir", str(runs), "--device", "cpu"])
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), (args, r.stderr)


def test_synth_teacher_writes_the_fitted_teacher_unless_asked_for_random(tmp_path: Path) -> None:
    import hashlib

    from spark_distill.synth.fit import SHIPPED

    shipped = json.loads((SHIPPED / "v1" / "fit.json").read_text())["files"]
    r = runner.invoke(app, ["synth-teacher", str(tmp_path / "fitted")])
    assert r.exit_code == 0 and r.stdout.startswith("wrote the fitted teacher, which drives"), r.output
    for name, digest in shipped.items():
        assert hashlib.sha256((tmp_path / "fitted" / name).read_bytes()).hexdigest() == digest, name
    assert (tmp_path / "fitted" / "fit.json").exists()
    for args, seed in ((["--weights", "random"], 0), (["--seed", "3"], 3)):
        r = runner.invoke(app, ["synth-teacher", str(tmp_path / f"random{seed}"), *args])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith(f"wrote a tiny teacher with random weights (seed {seed};"), r.output
        assert not (tmp_path / f"random{seed}" / "fit.json").exists()
        vision = (tmp_path / f"random{seed}" / "driving_vision.onnx").read_bytes()
        assert hashlib.sha256(vision).hexdigest() != shipped["driving_vision.onnx"]
    # --contract: a hidden, deprecated alias; v1 is the default (fitted) teacher's layout, v2 is refused
    assert "--contract" not in runner.invoke(app, ["synth-teacher", "--help"]).output
    r = runner.invoke(app, ["synth-teacher", str(tmp_path / "alias"), "--contract", "v1"])
    assert r.exit_code == 0 and r.stderr.startswith("note: --contract is deprecated: v1 is the default"), r.output
    assert r.stdout.startswith("wrote the fitted teacher, which drives"), r.output
    assert hashlib.sha256((tmp_path / "alias" / "driving_policy.onnx").read_bytes()).hexdigest() == shipped[
        "driving_policy.onnx"]
    for args, message in ((["--weights", "fitted", "--size", "bench"], "the fitted teacher is tiny"),
                          (["--weights", "fitted", "--seed", "2"], "--seed seeds random weights or a fit"),
                          (["--contract", "v2"], "--contract v2 was a layout no openpilot release shipped and is "
                                                 "gone; --release 0.10.3 writes the layout of 0.10.1 .. 0.10.3"),
                          (["--fit", "--contract", "v2"], "--contract v2 was a layout no openpilot release shipped"),
                          (["--contract", "v3"], "unknown --contract 'v3'"),
                          (["--contract", "v1", "--release", "0.10.3"], "--contract v1 (deprecated) and --release "
                                                                        "0.10.3 name two layouts; drop --contract"),
                          (["--weights", "trained"], "--weights 'trained': choose fitted or random"),
                          (["--fit", "--weights", "random"], "--fit makes a tiny teacher")):
        r = runner.invoke(app, ["synth-teacher", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {message}"), (args, r.output)
    assert not (tmp_path / "bad").exists()


def test_notes_print_as_notes_and_warnings_as_warnings() -> None:
    import logging

    from spark_distill import cli

    handlers = cli._log_handlers()
    records = [logging.LogRecord("spark_distill.notes", logging.INFO, __file__, 1, "--batch-size 32 -> 8: a loader "
                                 "worker gets 8 training clips per epoch", None, None),
               logging.LogRecord("spark_distill.train.loop", logging.WARNING, __file__, 1, "non-finite loss", None,
                                 None)]
    with cli.console.capture() as captured:
        for record in records:
            for h in handlers:
                if h.filter(record):
                    h.handle(record)
    lines = [line.rstrip() for line in captured.get().splitlines() if line.strip()]
    assert lines[0] == "note: --batch-size 32 -> 8: a loader worker gets 8 training clips per epoch", lines
    assert lines[1].startswith("WARNING") and "non-finite loss" in lines[1] and len(lines) == 2, lines
