# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The `spark-distill` command line: options -> config -> stage.run. The only place that catches
SparkDistillError: it prints `error: <message>` on stderr and exits 2 (bad input) or 1 (runtime). What every
command does alike (output streams, progress, notes, Ctrl-C, exit codes): docs/conventions.md."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from spark_distill import __version__, progress
from spark_distill.errors import ConfigError, SparkDistillError
from spark_distill.notes import NOTES
from spark_distill.processes import reuse_freed_memory


def _tidy_params(params: list[Any]) -> list[Any]:
    """typer shows flags (and --help) a `<bool>` value they do not take: give them an empty metavar. An option
    whose help says its default in words (`\\[default: one per CPU core]`) shows only that one, not also typer's
    `[default: 0]`."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        if "[default:" in (getattr(p, "help", None) or ""):
            p.show_default = False
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_params(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_params(super().get_params(ctx))


class _Typer(typer.Typer):
    """typer.Typer whose commands show flags without a value."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    cls=_Group,
    name="spark-distill",
    help="Distil and fine-tune openpilot driving models from your own routes: ingest -> label -> train -> export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = _Typer(cls=_Group, help="Benchmarks that print ratios against a baseline measured in the same run.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench", rich_help_panel="Check and compare")

console = Console(stderr=True)
out = Console()
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"spark-distill {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details (INFO).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """spark-distill: openpilot route logs -> labeled shards -> DoRA-tuned student -> ONNX."""
    _state["debug"] = debug
    reuse_freed_memory()  # a CPU pass otherwise spends much of its time faulting its freed batches back in
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=_log_handlers(), force=True)


def _is_note(record: logging.LogRecord) -> bool:
    return record.name == NOTES.name


def _log_handlers() -> list[logging.Handler]:
    """Logs on stderr above any progress bar: warnings (and INFO with -v) with their level, notes as `note: ...`."""
    logs = RichHandler(console=console, show_time=False, show_path=False)
    logs.addFilter(lambda record: not _is_note(record))
    notes = RichHandler(console=console, show_time=False, show_level=False, show_path=False)
    notes.setFormatter(logging.Formatter("note: %(message)s"))
    notes.addFilter(_is_note)
    for handler in (logs, notes):
        handler.addFilter(_urls_for_mirrors)
    return [logs, notes]


def _urls_for_mirrors(record: logging.LogRecord) -> bool:
    """A message naming a remote root's local mirror names the URL the user gave (data/store.py)."""
    from spark_distill.data.store import in_words

    message = record.getMessage()
    shown = in_words(message)
    if shown != message:
        record.msg, record.args = shown, None
    return True


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SparkDistillError into one line on stderr and its exit code (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SparkDistillError as e:
            if _state["debug"]:
                raise
            from spark_distill.data.store import in_words

            console.print(f"[bold red]error:[/] {in_words(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except progress.Noticed:  # what happens next was said when Ctrl-C came
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            console.print("interrupted; completed work is kept and a re-run resumes", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def progress_bar(description: str, unit: str = "frames", *, stages: bool = False, on_interrupt: str | None = None,
                 show: bool = True) -> contextlib.AbstractContextManager[Callable[..., None]]:
    """The progress display of a long command (spark_distill.progress), fed by on_progress(done, total[, note]): a
    live bar on a terminal, else a plain line on stderr every $SPARK_DISTILL_PROGRESS_EVERY seconds (15; 0: none)
    and at the end. Ctrl-C prints `on_interrupt` at once. `show=False` (ranks but the first): no display."""
    if not show:
        return contextlib.nullcontext(_ignore)
    every = os.environ.get(progress.EVERY_ENV, "")
    try:
        seconds = float(every) if every else progress.EVERY
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{progress.EVERY_ENV}={every!r}: give seconds between progress lines (0: none)")
    return progress.show(console, description, unit=unit, stages=stages, every=seconds, on_interrupt=on_interrupt)


def _ignore(*_: Any) -> None:
    """on_progress of a process that shows none."""


# what a Ctrl-C does, said at once (train's own, during its steps, comes from train/loop.py)
INGEST_STOP = "stopping; complete shards are kept and the same command resumes"
LABEL_STOP = "stopping; complete label shards are kept and the same command resumes"
TRAIN_STOP = "stopping; checkpoints written so far are kept and a re-run with --resume continues"
EVAL_STOP = "stopping; eval writes metrics.json and its plots at its end: run it again"
EXPORT_STOP = "stopping; export writes its files once they are verified: run it again for a complete folder"
SYNTH_STOP = "stopping; the segment being written is incomplete: run the command again"
FIT_STOP = "stopping; the fitted teacher is written only at the end of the fit"
BENCH_STOP = "stopping the benchmark; its scratch folder is removed"


def _bench_progress(description: str) -> contextlib.AbstractContextManager[Callable[..., None]]:
    """A benchmark's display: its measurements as they start (no rate or ETA: they differ in length)."""
    return progress_bar(description, unit="measurements", stages=True, on_interrupt=BENCH_STOP)


def _result_line(line: str) -> None:
    """A result line printed while the progress display runs: on stdout, unless stdout is the terminal the live
    bar is drawn on (another console writing there would cut through the bar): then above the bar."""
    (console if out.is_terminal and progress.live(console) else out).print(line, highlight=False, soft_wrap=True)


def _train_report(update: Callable[..., None], clips_per_step: int) -> Callable[[int, int, float | None], None]:
    """train's on_progress(step, total, loss) on the display, with the loss and the clips/s since the end of the
    first step (its compiling left out)."""
    marks: list[tuple[int, float]] = []  # (step, time): the report before the first step, then the first step's

    def report(step: int, total: int, loss: float | None) -> None:
        now = time.perf_counter()
        if len(marks) < 2:
            marks.append((step, now))
        rate = ""
        if len(marks) == 2 and step > marks[1][0] and now > marks[1][1]:
            rate = f"{clips_per_step * (step - marks[1][0]) / (now - marks[1][1]):,.1f} clips/s"
        update(step, total, "  ".join(t for t in (rate, "" if loss is None else f"loss {loss:.4f}") if t))

    return report


def print_table(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
    out.print(table)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@app.command(rich_help_panel="Start here")
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes (replaced if it "
                                                        "holds an earlier demo).")] = Path("demo-out"),
    minutes: Annotated[float, typer.Option(help="Length of the synthetic drive in minutes (two segments).")] = 0.6,
    student: Annotated[str, typer.Option(help="pretrained (the shipped pre-trained compact-xs, fine-tuned with "
                                              "DoRA), or compact-xs / compact from random weights (DoRA over a "
                                              "random backbone).")] = "pretrained",
    steps: Annotated[int | None, typer.Option(help="Training steps \\[default: 25 per minute of drive, at least "
                                                   "16].")] = None,
    device: Annotated[str, typer.Option(help="torch device for labeling and training.")] = "cpu",
) -> None:
    """The whole pipeline on a synthetic drive with stand-in models, on CPU, in a few minutes."""
    from spark_distill.demo import DemoConfig, run_demo, student_teacher_ratio
    from spark_distill.models.compact import PRESETS

    if student not in ("pretrained", *PRESETS):
        raise ConfigError(f"--student {student!r}: the demo trains pretrained, {' or '.join(PRESETS)}")
    n = {"stage": 0}

    def stage(text: str) -> None:
        n["stage"] += 1
        out.print(f"[bold]{n['stage']}/7[/] {text}", highlight=False, soft_wrap=True)

    r = run_demo(DemoConfig(out=out_dir, minutes=minutes, student=student, steps=steps, device=device), stage)
    trained, total = r.trainable
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print_table(f"demo finished in {r.seconds:.0f} s -> {out_dir}", {
        "frames ingested": f"{r.frames_ingested:,} ({r.ingest_frames_per_s:.1f} frames/s)",
        "labeling": f"{r.label_frames_per_s:.1f} frames/s ({r.label_backend})",
        "trainable parameters": f"{trained:,} of {total:,} ({100 * trained / max(total, 1):.2f}%, DoRA)",
        "validation loss": f"{fmt(r.val_before)} -> {fmt(r.val_after)} after {r.steps} steps",
        "export max |ORT - torch|": f"{r.export_max_diff:.2e} (ONNX Runtime {r.export_latency_ms:.2f} ms/frame on CPU)",
        **{k: str(v) for k, v in r.artifacts.items()}})
    table = Table(title="path error on the held-out segment, m (xy, mean over frames past the 5 s warm-up)",
                  title_justify="left")
    for col in ("", "1 s", "2 s", "4 s", "10 s"):
        table.add_column(col, justify="right" if col else "left")
    for name, row in r.drive_error.items():
        table.add_row(name, *("-" if v is None else f"{v:.2f}" for v in row.values()))
    out.print(table)
    if any(v is None for row in r.drive_error.values() for v in row.values()):
        out.print("-: the held-out segment ends before that horizon (no path driven to compare with)", highlight=False)
    ratio = student_teacher_ratio(r.drive_error)
    if ratio is not None:
        out.print(f"student vs teacher on the path driven at 2 s: {ratio:.1f}x the teacher's error", highlight=False)


@app.command(rich_help_panel="Pipeline")
@handles_errors
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Segment, route or parent folders, or globs (quote them).")],
    out_root: Annotated[str, typer.Option("--out", "-o", help="Dataset root, a folder or s3:// / gs:// URL; frames go "
                                                               "to ROOT/frames/.")],
    clip_len: Annotated[int, typer.Option(help="Frames per clip (20 = 1 s at 20 Hz).")] = 20,
    workers: Annotated[int, typer.Option(help="Segment worker processes (per rank under torchrun, cores shared "
                                              "between a machine's ranks) \\[default: one per CPU core].")] = 0,
    cameras: Annotated[str, typer.Option(help="Cameras to decode: road,wide or road (wide input then built "
                                              "from the road camera).")] = "road,wide",
    log: Annotated[str, typer.Option("--log", help="Log to read: auto (rlog, else qlog), rlog or qlog.")] = "auto",
    camera_source: Annotated[str, typer.Option(help="Road video: auto (fcamera.hevc, else the qcamera.ts a device "
                                                    "uploads by default), fcamera or qcamera.")] = "auto",
    schema_dir: Annotated[Path | None, typer.Option(help="Folder with a newer cereal log.capnp "
                                                         "\\[default: openpilot-logging's].")] = None,
    shard_clips: Annotated[int, typer.Option(help="Clips per shard.")] = 50,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg threads per video decoder (0 = auto).")] = 0,
    codec: Annotated[str, typer.Option(help="Camera clip storage: lossless (predictive + zstd), hevc (lossy, x265 "
                                            "at --crf; ~13x smaller) or av1 (lossy, SVT-AV1 at --crf; smaller "
                                            "than hevc and faster to decode at the same quality).")] = "lossless",
    crf: Annotated[int | None, typer.Option(help="Lossy quality (lower: better, larger): hevc x265 CRF 0..51, "
                                                 "av1 SVT-AV1 CRF 0..63 \\[default: hevc 20, av1 30].")] = None,
) -> None:
    """Decode, warp and pack route segments into WebDataset frame shards (resumable, idempotent; under torchrun the
    segments are dealt to the ranks, one manifest at the end)."""
    from spark_distill.ingest.run import IngestConfig
    from spark_distill.ingest.run import ingest as run_ingest
    from spark_distill.processes import torchrun_rank

    world, rank = torchrun_rank()
    cfg = IngestConfig(inputs=tuple(paths), out=_root(out_root, write=True), clip_len=clip_len, workers=workers,
                       cameras=_csv(cameras), log_kind=log, schema_dir=schema_dir, shard_clips=shard_clips,
                       decode_threads=decode_threads, codec=codec, crf=crf, camera_source=camera_source,
                       process_rank=rank, world=world, init_method="env://" if world > 1 else None)
    with progress_bar("ingest", on_interrupt=INGEST_STOP, show=rank == 0) as update:
        r = run_ingest(cfg, on_progress=update if rank == 0 else None)
    if rank != 0:
        return
    print_table(f"ingest -> {out_root.rstrip('/')}/frames", {
        "segments ingested": r.segments_done, "segments already present": r.segments_already,
        "segments skipped": len(r.segments_skipped), "frames kept": r.frames_kept,
        "frames dropped": r.frames_dropped, "shards written": r.shards_written,
        "MB written": r.bytes_written / 1e6, "frames/s": r.frames_per_s})
    for s in r.segments_skipped:
        console.print(f"skipped {s['name']}: {s['reason']}", highlight=False)


@app.command(rich_help_panel="Pipeline")
@handles_errors
def label(
    root: Annotated[str, typer.Argument(help="Dataset root (the --out of ingest): a folder or an s3:// or gs:// "
                                             "URL.")],
    teacher: Annotated[list[Path] | None, typer.Option(help="Folder with an openpilot release's models: "
                                                            "driving_vision.onnx + driving_policy.onnx (0.10.x), "
                                                            "supercombo.onnx (0.9.6 .. late 2024) or "
                                                            "driving_supercombo.onnx (0.11), with their metadata; or "
                                                            "the ONNX files (vision, policy: the option twice).")
                       ] = None,
    from_log: Annotated[bool, typer.Option(help="Build the label set from the car's own logged model outputs "
                                                "(modelV2, stored by ingest) instead of running a teacher.")] = False,
    name: Annotated[str | None, typer.Option(help="Label set name \\[default: <teacher>-<hash8>].")] = None,
    backend: Annotated[str, typer.Option(help="auto, tensorrt, torch or onnxruntime \\[default: fastest "
                                              "available].")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")] = "auto",
    batch: Annotated[int, typer.Option(help="Segments labeled in lockstep (the inference batch; at most the "
                                            "segments left to label).")] = 8,
    workers: Annotated[int, typer.Option(help="Reader processes (shard reads + zstd) \\[default: 0 = auto: all cores "
                                              "but two with a GPU teacher, 2 on the CPU].")] = 0,
    compile: Annotated[str, typer.Option(help="torch backend: torch.compile the teacher: auto (on a GPU), on or "
                                              "off.")] = "auto",
    lat_delay: Annotated[float | None, typer.Option(
        help="The car's lateral delay in seconds, for every segment: lateral_control_params[1] (0.9.x, 0.10.0) and "
             "action_t[0] - 0.075 (0.11) \\[default: each segment's from its log: liveDelay.lateralDelay at each "
             "frame, else carParams.steerActuatorDelay + 0.2, else 0.2].")] = None,
    long_delay: Annotated[float | None, typer.Option(
        help="The car's longitudinal actuator delay in seconds, for every segment: action_t[1] - 0.075 (0.11) "
             "\\[default: each segment's carParams.longitudinalActuatorDelay, else openpilot's 0.15; "
             "plus the release's LONG_SMOOTH_SECONDS, 0.11: 0.3].")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda:1 \\[default: cuda if present].")] = None,
) -> None:
    """Run the teacher once over every frame (stateful, like modeld) and write a label set."""
    from spark_distill.errors import ConfigError
    from spark_distill.label.run import LabelConfig
    from spark_distill.label.run import label as run_label

    if from_log:
        if teacher:
            raise ConfigError("--from-log builds labels from the log; it takes no --teacher")
        from spark_distill.label.from_log import label_from_log

        m = label_from_log(_root(root, write=True), name or "logged")
        share = m["labelled_frames"] / max(m["frames"], 1)
        qlog = " (a qlog keeps 1 modelV2 in 40)" if "qlog" in m["logs"] else ""
        print_table(f"label --from-log -> {root.rstrip('/')}/labels/{m['name']}", {
            "shards": len(m["shards"]), "frames": m["frames"],
            "frames with a logged output": f"{m['labelled_frames']:,} ({share:.1%}){qlog}; the rest absent",
            "heads from the log": ", ".join(m["available_heads"]),
            "openpilot versions that logged them": ", ".join(m["teacher"]["openpilot_versions"]) or "-"})
        from spark_distill.data.pairs import MIN_LABELLED_FRAMES

        if m["labelled_frames"] < min(MIN_LABELLED_FRAMES, m["frames"]):
            out.print(f"too few frames with a logged output to train on (at least {MIN_LABELLED_FRAMES}); label "
                      "with a teacher: spark-distill label ROOT --teacher DIR", highlight=False, soft_wrap=True)
        else:
            _next_train(root, m["name"])
        return
    if not teacher:
        raise ConfigError("label needs --teacher DIR (or --from-log)")

    world, rank, device = _torchrun(device)
    cfg = LabelConfig(root=_root(root, write=True), teacher=tuple(teacher), name=name, backend=backend,
                      precision=precision, batch=batch, workers=workers, compile=compile, lat_delay=lat_delay,
                      long_delay=long_delay,
                      device=device,
                      process_rank=rank, world=world, init_method="env://" if world > 1 else None)
    with progress_bar("label", on_interrupt=LABEL_STOP, show=rank == 0) as update:
        r = run_label(cfg, on_progress=update if rank == 0 else None)
    if rank != 0:
        return
    print_table(f"label -> {root.rstrip('/')}/labels/{r.folder.name}", {
        "backend": f"{r.backend['name']} {r.backend['precision']} on {r.backend['device']}",
        "frames labeled": r.frames, "frames/s": r.frames_per_s, "delays fed (segments)": r.delays,
        "shards written": r.shards_written, "shards already done": r.shards_already,
        "frames shards skipped (bad sha256)": len(r.skipped_shards)})
    _next_train(root, r.folder.name)


def _root(text: str, *, write: bool = False) -> Path:
    """A dataset root as given: a local folder, or an s3:// / gs:// / http(s):// URL attached to its mirror in the
    local cache (data/store.py; `write`: this pass writes into it)."""
    from spark_distill.data import store

    return store.local_root(text, write=write)


def _next_train(root: str, label_set: str) -> None:
    """The command that trains on a label set just written: what a user types next."""
    import shlex

    out.print(f"next: spark-distill train {shlex.quote(str(root))} --labels {shlex.quote(label_set)}",
              highlight=False, soft_wrap=True)


RUN_STATE_KEYS = ("root", "labels", "resume", "process_rank", "world", "init_method")  # a run's config.yaml holds
# them, but they belong to that run (arguments, --resume, torchrun's environment): --config never adopts them


def _with_yaml(ctx: typer.Context, config: Path | None, values: dict[str, Any],
               fields: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, extra fields): option values from a YAML file where the command line left them at their defaults
    (CLI wins), and the file's keys that are config `fields` with no option of their own (weight_decay, ...).
    A key that is neither is a ConfigError: a misspelt key must not be dropped silently."""
    if config is None:
        return values, {}
    from spark_distill.train.config import read_config

    loaded = read_config(config)
    aliases = {"adapter_rank": "dora_rank", "adapter_alpha": "dora_alpha"}
    out, extra, unknown = dict(values), {}, []
    for key, value in loaded.items():
        name = aliases.get(key, key).replace("-", "_")
        if name == "loss" and isinstance(value, dict):  # a resolved config.yaml: the loss weights as a mapping
            name, value = "loss_weights", ",".join(f"{k}={v}" for k, v in value.items())
        if name in RUN_STATE_KEYS:
            continue
        if name not in values:
            if key in fields:
                extra[key] = value
            else:
                unknown.append(key)
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):  # typer may vendor its own click enum
            out[name] = ",".join(value) if isinstance(value, list) else value
    if unknown:
        from spark_distill.errors import ConfigError

        raise ConfigError(f"{config}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                          f"keys are the options of `train` (dashes or underscores) and {', '.join(sorted(fields))}")
    return out, extra


@app.command(rich_help_panel="Pipeline")
@handles_errors
def train(
    ctx: typer.Context,
    root: Annotated[str, typer.Argument(help="Dataset root (frames + label sets): a folder or an s3://, gs:// or "
                                             "http(s):// URL.")],
    labels: Annotated[str, typer.Option(help="Label set name (a folder of ROOT/labels/).")],
    config: Annotated[Path | None, typer.Option(help="YAML of option values (e.g. a run's config.yaml); options "
                                                     "given on the command line win.")] = None,
    student: Annotated[str, typer.Option(help="compact or compact-xs (built in, random weights); pretrained (a "
                                              "compact-xs distilled from the fitted teacher, fine-tuned with DoRA; "
                                              "`bench distill --save-student DIR` makes another: give DIR); "
                                              "openpilot (fine-tune the ONNX pair "
                                              "given by --student-onnx); or a trained run to continue from: "
                                              "runs/<run> (its newest good checkpoint) or one checkpoint folder "
                                              "runs/<run>/checkpoints/step-N.")] = "compact",
    student_onnx: Annotated[Path | None, typer.Option(help="An openpilot release's model folder for --student "
                                                           "openpilot: driving_vision.onnx + driving_policy.onnx, "
                                                           "supercombo.onnx or driving_supercombo.onnx (+ "
                                                           "metadata).")] = None,
    run: Annotated[str | None, typer.Option("--run", "--run-name", help="Run name: runs/<run>/ \\[default: "
                                            "<labels>-<student>-<adapter>]. Under torchrun write --run-name (torchrun "
                                            "takes --run for its own --run-path).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Folder of runs.")] = Path("runs"),
    epochs: Annotated[int, typer.Option(help="Passes over the training clips.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Clips per step per rank (capped by the clips a loader worker "
                                                 "gets; split into accumulated micro-batches where memory is short)."
                                            )] = 32,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW; warm-up then cosine) \\[default: 1e-3 "
                                                  "with --adapter none, 5e-4 with dora or lora].")] = None,
    adapter: Annotated[str, typer.Option(help="auto, dora, lora, or none (train every parameter); auto: none for a "
                                              "built-in student (random weights), dora to fine-tune a trained one "
                                              "(--student pretrained, openpilot or a run).")] = "auto",
    fresh_policy: Annotated[bool, typer.Option(
        "--fresh-policy", help="Renew a trained compact student's recurrent half and policy heads (heads at the "
        "labels' mean) and train only them, on its frozen vision: openpilot's second stage, for a student whose "
        "plan did not learn (trained jointly, the lateral stays at the mean: benchmarks/distill.md).")] = False,
    head_init: Annotated[str, typer.Option(help="label-mean: a fresh built-in student's output-head biases start at "
                                                "the label set's mean output (a short run then learns the deviation "
                                                "instead of the metres); random: PyTorch's init. A trained student "
                                                "(openpilot, a run) keeps its heads.")] = "label-mean",
    dora_rank: Annotated[int, typer.Option(help="Adapter rank.")] = 16,
    dora_alpha: Annotated[float, typer.Option(help="Adapter alpha (scale = alpha / rank).")] = 32.0,
    targets: Annotated[str | None, typer.Option(help="Comma-separated module-name globs to adapt "
                                                     "\\[default: the student's: compact policy.*, gru_x, gru_h, "
                                                     "heads.*; openpilot policy.*].")] = None,
    train_modules: Annotated[str, typer.Option(help="Comma-separated globs of modules to train fully.")] = "",
    burn_in: Annotated[int, typer.Option(help="Frames per clip that only warm the recurrent state.")] = 5,
    grad_accum: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
    val_fraction: Annotated[float, typer.Option(help="Share of segments held out for validation (a dataset of one "
                                                        "segment holds out its last share of clips).")] = 0.1,
    mask_warmup: Annotated[bool, typer.Option(help="Skip labels of each segment's first 5 s (zero-history "
                                                   "teacher); turned off, with a note, where no frame would be "
                                                   "left.")] = True,
    workers: Annotated[int, typer.Option(help="DataLoader workers per rank, capped by the training shards a rank "
                                              "reads \\[default: 0 = auto: all cores of the rank's share but two "
                                              "on a GPU, 2 on the CPU].")] = 0,
    loss_weights: Annotated[str, typer.Option(help="Loss term weights, e.g. 'plan=1,lanes=0.5' (terms: plan, "
                                                   "plan_prob, lanes, edges, lead, probs, gt; others keep their "
                                                   "defaults: 1, 0.2, 1, 0.5, 0.5, 0.5, 0).")] = "",
    gt_weight: Annotated[float, typer.Option(help="Weight of the ground-truth future path from the logged ego "
                                                  "motion (pose.npy) against the student's plan (0 = off).")] = 0.0,
    feature_cached: Annotated[str, typer.Option(help="auto, on or off: train the policy from the teacher's stored "
                                                     "vision features, decoding no image (auto: when nothing in the "
                                                     "vision network trains).")] = "auto",
    feature_cache: Annotated[str, typer.Option(help="auto, on or off: in feature-cached mode, decode the training "
                                                    "clips once and hold them in device memory for every epoch "
                                                    "(auto: when they fit in 40% of the free memory; off: stream "
                                                    "them from the shards each epoch).")] = "auto",
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps of the schedule, over as many passes as "
                                                    "they take (--epochs then does not apply) \\[default: all "
                                                    "epochs].")
                         ] = None,
    stop_at: Annotated[int | None, typer.Option(help="Checkpoint and stop at this step (continue with --resume).")
                       ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its newest good checkpoint.")] = False,
    log_every: Annotated[int | None, typer.Option(help="Optimizer steps between logged training scalars "
                                                       "\\[default: every step up to 40 steps, then about 20-40 "
                                                       "points over the run].")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints (one is also written at "
                                                       "each epoch end and at the end).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the student, the split and the data order.")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device \\[default: cuda if present; cuda:LOCAL_RANK "
                                                    "under torchrun].")] = None,
    compile: Annotated[str, typer.Option("--compile", help="auto, on or off: torch.compile the student's vision "
                                                           "half and recurrent step (auto: on CUDA).")] = "auto",
    capture: Annotated[str, typer.Option("--capture", help="auto, on or off: the whole step (forward, loss, "
                                                           "backward, AdamW) as one CUDA graph for the fixed batch "
                                                           "shape (auto: on CUDA in one process; on: also on CPU, "
                                                           "run eagerly; DDP and --grad-accum > 1 stay uncaptured)."
                                         )] = "auto",
) -> None:
    """Distil a student from a label set (DoRA by default); resumable; runs under torchrun for several GPUs."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "config", "root", "labels")}  # the options only
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train as run_train
    from spark_distill.train.losses import LossWeights

    plain_fields = tuple(f.name for f in dataclasses.fields(TrainConfig)
                         if f.name not in options and f.name not in RUN_STATE_KEYS
                         and f.name not in ("adapter_rank", "adapter_alpha", "loss"))
    o, extra = _with_yaml(ctx, config, options, plain_fields)
    world, process_rank, o["device"] = _torchrun(o["device"])
    fields = {{"dora_rank": "adapter_rank", "dora_alpha": "adapter_alpha"}.get(k, k): v for k, v in o.items()
              if k not in ("loss_weights", "gt_weight")}
    fields["loss"] = LossWeights.from_option(o["loss_weights"], **({"gt": o["gt_weight"]} if o["gt_weight"] else {}))
    fields.update(root=_root(root), labels=labels, run=o["run"] or "",
                  runs_dir=Path(o["runs_dir"]), student_onnx=Path(o["student_onnx"]) if o["student_onnx"] else None,
                  targets=_csv(o["targets"]) if o["targets"] else None, train_modules=_csv(o["train_modules"]),
                  process_rank=process_rank, world=world, init_method="env://" if world > 1 else None, **extra)
    cfg = TrainConfig(**fields)
    if not cfg.run:  # named after the resolved adapter
        cfg = dataclasses.replace(cfg, run=f"{labels}-{Path(cfg.student).name}-{cfg.adapter}")
    with progress_bar("train", unit="steps", on_interrupt=TRAIN_STOP, show=process_rank == 0) as update:
        r = run_train(cfg, on_progress=_train_report(update, cfg.batch_size * cfg.grad_accum * cfg.world))
    if process_rank == 0:
        n, total = r.trainable
        print_table(f"train -> {r.run_dir}", {
            "steps": r.steps, "stopped early (resume with --resume)": r.interrupted,
            "feature-cached (no image decoded)": r.feature_cached,
            "feature cache (GB in device memory)": "-" if r.feature_cache_gb is None else f"{r.feature_cache_gb:.2f}",
            "trainable parameters": f"{n:,} of {total:,} ({100 * n / max(total, 1):.2f}%)",
            "validation loss before": "-" if r.val_before is None else f"{r.val_before:.4f}",
            "validation loss after": "-" if r.val_after is None else f"{r.val_after:.4f}",
            "clips/s (all ranks)": r.samples * cfg.world / r.seconds if r.seconds else 0.0,
            "loss curve": r.run_dir / "loss.png"})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _torchrun(device: str | None) -> tuple[int, int, str | None]:
    """(world size, rank, device) from torchrun's environment: one GPU per rank (cuda:LOCAL_RANK) unless a
    device was given; a single process without torchrun."""
    import os

    from spark_distill.processes import torchrun_rank

    world, rank = torchrun_rank()
    if world > 1 and device is None and _cuda():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return world, rank, device


@app.command(rich_help_panel="Pipeline")
@handles_errors
def export(
    source: Annotated[Path, typer.Argument(help="A training run folder (its newest good checkpoint) or one "
                                                "checkpoint folder (runs/<run>/checkpoints/step-N).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the ONNX model(s) and metadata.")],
    format: Annotated[str, typer.Option("--format", help="release: the teacher's own files, drop-in (openpilot "
                                                         "student: driving_vision.onnx + driving_policy.onnx, "
                                                         "supercombo.onnx or driving_supercombo.onnx, with their "
                                                         "metadata; split: its former name); combined: one graph "
                                                         "with the state as input and output; auto: release for "
                                                         "the openpilot student, else combined.")] = "auto",
    opset: Annotated[int, typer.Option(help="ONNX opset of a combined export (release keeps the teacher's).")] = 14,
    precision: Annotated[str, typer.Option(help="fp32, or fp16 weights (combined export of a compact student).")
                         ] = "fp32",
    verify_frames: Annotated[int, typer.Option(help="Frames of the run's dataset run through torch and ONNX "
                                                    "Runtime on top of random inputs (0: random only).")] = 20,
    check: Annotated[str, typer.Option(help="Consumer check: run the exported graph(s) in tinygrad, which openpilot "
                                            "compiles its models with, against ONNX Runtime. tinygrad: required "
                                            "(exit 2 when not installed); auto: when tinygrad is importable; none: "
                                            "skip.")] = "auto",
) -> None:
    """Merge the adapters into plain layers and write ONNX that openpilot loads; verified against torch."""
    from spark_distill.export.run import ExportConfig
    from spark_distill.export.run import export as run_export

    with progress_bar("export", unit="stages", stages=True, on_interrupt=EXPORT_STOP) as update:
        r = run_export(ExportConfig(source=source, output=output, format=format, opset=opset, precision=precision,
                                    verify_frames=verify_frames, check=check), on_progress=update)
    real = "-" if r.max_diff_real is None else f"{r.max_diff_real:.2e}"
    print_table(f"export -> {output}", {
        "format": f"{r.format} ({precision}), from step {r.step}",
        **{f"file: {k}": f"{v} ({v.stat().st_size / 1e6:.2f} MB)" for k, v in r.files.items()},
        "parameters": f"{r.parameters:,}",
        "max |ORT - torch|, random inputs": f"{r.max_diff_random:.2e} (tolerance {r.tolerance:g})",
        "max |ORT - torch|, dataset frames": real,
        "ONNX Runtime CPU latency": f"{r.latency_ms:.2f} ms/frame",
        "max |tinygrad - ORT|": _tinygrad_line(r),
        "op types": ", ".join(f"{k} x{v}" for k, v in r.op_types.items()),
        **({"tensors written back": len(r.written_back)} if r.format == "release" else {}),
        **({"copied unchanged": ", ".join(r.copied)} if r.copied else {})})


def _tinygrad_line(r: Any) -> str:
    """The consumer check in the export summary: worst output, version and device, or why it was skipped."""
    t = r.tinygrad
    if t is None:
        return f"skipped ({r.tinygrad_skipped})"
    worst = max(t.max_abs_diff.values(), default=0.0)
    rel = f", {t.max_rel_diff:.2e} relative" if t.relative else ""
    return f"{worst:.2e}{rel} (tolerance {t.tolerance:g}; tinygrad {t.version} on {t.device}, {t.feeds} inputs)"


@app.command("eval", rich_help_panel="Check and compare")
@handles_errors
def eval_command(
    root: Annotated[str, typer.Argument(help="Dataset root (frames + label sets): a folder or an s3://, gs:// or "
                                             "http(s):// URL.")],
    labels: Annotated[str, typer.Option(help="Label set of the teacher to compare with.")],
    run: Annotated[list[Path] | None, typer.Option(help="Training run folder or checkpoint (repeatable).")] = None,
    model: Annotated[list[Path] | None, typer.Option(help="Exported model: an export folder (combined or split) or "
                                                          "a driving_model.onnx (repeatable).")] = None,
    segments: Annotated[str, typer.Option(help="Comma-separated segment names \\[default: the first run's "
                                               "validation segments, else all].")] = "",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and the plots.")] = Path("eval-out"),
    include_warmup: Annotated[bool, typer.Option(help="Also score the first 5 s of each segment (the teacher's "
                                                      "zero-history labels); done anyway, with a note, where no "
                                                      "chosen segment is longer.")] = False,
    device: Annotated[str, typer.Option(help="torch device for runs (exports run in ONNX Runtime on CPU).")] = "cpu",
) -> None:
    """How good is each student: errors against the teacher per horizon, and against the path actually driven."""
    from spark_distill.evaluate.metrics import headline
    from spark_distill.evaluate.run import EvalConfig, evaluate

    with progress_bar("eval", unit="segments", on_interrupt=EVAL_STOP) as update:
        r = evaluate(EvalConfig(root=_root(root), labels=labels, runs=tuple(run or ()), models=tuple(model or ()),
                                segments=_csv(segments), out=out_dir, include_warmup=include_warmup, device=device),
                     on_progress=update)
    frames = next(iter(r.metrics.values()))["frames"]
    table = Table(title=f"eval on {len(r.segments)} segment(s), {frames} frames, against labels/{labels}",
                  title_justify="left")
    table.add_column("metric (lower is better unless 'agreement')", style="bold")
    for name in r.metrics:
        table.add_column(name, justify="right")
    rows = {name: headline(m) for name, m in r.metrics.items()}
    for key in next(iter(rows.values())):
        table.add_row(key, *("-" if rows[n][key] is None else f"{rows[n][key]:.3f}" for n in r.metrics))
    out.print(table)
    gt = r.ground_truth
    if gt.get("qlog_segments"):
        out.print(f"note: the driven path of {gt['qlog_segments']} of {len(r.segments)} segment(s) comes from a qlog "
                  f"(decimated ego motion from {', '.join(gt['pose_sources'])}): drive errors are coarser",
                  highlight=False, soft_wrap=True)
    for k, v in r.files.items():
        out.print(f"{k}: {v}", highlight=False, soft_wrap=True)


@app.command(rich_help_panel="Check and compare")
@handles_errors
def inspect(
    root: Annotated[str | None, typer.Argument(help="Dataset root (the --out of ingest): a folder or an s3://, "
                                                    "gs:// or http(s):// URL.")] = None,
    verify: Annotated[bool, typer.Option(help="Re-hash every shard (frames and label sets) and check every sample's "
                                               "keys, members and shapes.")] = False,
    png: Annotated[Path | None, typer.Option(help="Write a contact sheet of a few clips to this PNG.")] = None,
    teacher: Annotated[Path | None, typer.Option(help="Instead, what a teacher folder was recognised as: layout, "
                                                      "inputs, heads, history, where its slices came from.")] = None,
) -> None:
    """Summarize a dataset; optionally verify it end to end and draw what the model will see. With --teacher, what
    an openpilot model folder was recognised as."""
    from spark_distill.data.dataset import contact_sheet, summarize, summary_rows, verify_frames, verify_labels
    from spark_distill.errors import ConfigError, DatasetError

    if teacher is not None:
        from spark_distill.openpilot.teachers import load_teacher, teacher_rows

        if root is not None or verify or png is not None:
            raise ConfigError("inspect --teacher DIR takes no dataset root, --verify or --png")
        t, _, _ = load_teacher([teacher])
        print_table(f"teacher {teacher}", teacher_rows(t))
        return
    if root is None:
        raise ConfigError("inspect needs a dataset root (or --teacher DIR)")

    text, root = root, _root(root)
    s = summarize(root)
    print_table(f"dataset {text}", summary_rows(s))
    _print_segment_issues(s["segment_issues"])
    if png is not None:
        out.print(f"contact sheet: {contact_sheet(root, png)}")
    if verify:
        frames = verify_frames(root)
        checks = [("frames", frames)] + [(f"labels/{n}", verify_labels(root, n, damaged_frames=frames.damaged))
                                         for n in s["label_sets"]]
        problems = [p for _, v in checks for p in v.problems]
        for p in problems:
            console.print(f"  {p}", highlight=False, soft_wrap=True)
        for note in (n for _, v in checks for n in v.notes):
            console.print(f"  note: {note}", highlight=False, soft_wrap=True)
        if problems:
            raise DatasetError(f"verification found {len(problems)} problem(s)")
        for what, v in checks:
            out.print(f"verified {what}: {v.shards} shards, {v.samples} clips; hashes, keys, members and shapes match")


def _print_segment_issues(issues: list[dict[str, Any]], limit: int = 20) -> None:
    """inspect's lines for the segments that lost frames, warned or were skipped (the first `limit`)."""
    if not issues:
        return
    out.print("segments with dropped frames, warnings or skipped:", highlight=False)
    for r in issues[:limit]:
        if r["dropped"] is None:
            line = r["why"]
        else:
            line = f"{r['kept']:,} frames kept, {r['dropped']:,} dropped" + (f" ({r['why']})" if r["why"] else "")
        out.print(f"  {r['segment']}: {line}", highlight=False, soft_wrap=True)
        for w in r["warnings"]:
            out.print(f"    warning: {w}", highlight=False, soft_wrap=True)
    if len(issues) > limit:
        out.print(f"  ... and {len(issues) - limit:,} more (frames/manifest.json lists every one)", highlight=False)


@app.command("verify-labels", rich_help_panel="Check and compare")
@handles_errors
def verify_labels_command(
    root: Annotated[str, typer.Argument(help="Dataset root whose logs had modelV2 (ingest stores it): a folder or "
                                             "a URL.")],
    labels: Annotated[str, typer.Option(help="Teacher label set to check against the logged outputs.")],
    tolerance: Annotated[float, typer.Option(help="Largest mean relative difference of any field that still "
                                                  "counts as agreement.")] = 0.02,
) -> None:
    """Teacher labels vs the car's logged modelV2 of the same frames: the end-to-end fidelity check of ingest
    (warp, packing, alignment) and the label pass (histories) when the teacher is the model that drove. Also the
    controls the teacher's release derives from the labels (desired curvature and acceleration, as eval derives
    them) vs modelV2.action's, where the log has them."""
    from spark_distill.label.from_log import verify_labels

    r = verify_labels(_root(root), labels, tolerance=tolerance)
    table = Table(title=f"labels/{labels} vs logged modelV2: {r.frames} frames", title_justify="left")
    for col in ("field", "mean |diff|", "max |diff|", "mean |logged|", "relative"):
        table.add_column(col, justify="left" if col == "field" else "right")
    for name, f in r.fields.items():
        table.add_row(name, f"{f['mean_abs']:.3g}", f"{f['max_abs']:.3g}", f"{f['scale']:.3g}", f"{f['relative']:.3g}")
    out.print(table)
    plan = r.fields.get("position", {}).get("per_horizon_mean_abs")
    if plan:
        out.print("position |diff| per horizon (T_IDXS): " + " ".join(f"{v:.2g}" for v in plan), soft_wrap=True)
    if r.controls:
        table = Table(title=f"controls derived from the labels ({r.derived_from}) vs modelV2.action",
                      title_justify="left")
        for col in ("control", "frames", "mean |diff|", "max |diff|", "mean |logged|", "relative"):
            table.add_column(col, justify="left" if col == "control" else "right")
        for name, c in r.controls.items():
            table.add_row(name.removeprefix("desired_"), str(c["frames"]),
                          *(f"{c[k]:.3g}" for k in ("mean_abs", "max_abs", "scale", "relative")))
        out.print(table)
    for why in r.controls_missing.values():
        out.print(f"not compared: {why}", highlight=False, soft_wrap=True)
    if r.controls_agree is not None:
        out.print(f"controls {'agree' if r.controls_agree else 'differ'}: "
                  + ("within" if r.controls_agree else "some by more than") + f" {tolerance:g} relative (reported, "
                  "not part of the verdict: a release from 0.10 smooths the action it logs, and the car's delays may "
                  "differ from the label pass's)", highlight=False, soft_wrap=True)
    if r.agree:
        out.print(f"[green]agree[/]: every field within {tolerance:g} relative", highlight=False)
    else:
        console.print(f"[bold red]disagree[/]: some field differs by more than {tolerance:g} relative — a different "
                      "model, or a difference in ingest or labeling", highlight=False)
        raise typer.Exit(1)


@app.command("synth-route", rich_help_panel="Synthetic data")
@handles_errors
def synth_route(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the route's segment folders into.")],
    segments: Annotated[int, typer.Option(help="Number of segments.")] = 2,
    seconds: Annotated[float, typer.Option(help="Length of each segment in seconds (real ones are 60).")] = 10.0,
    device: Annotated[str, typer.Option(help="tici: comma 3/3X, 1928x1208 road + wide; eon: 1164x874 road only.")
                      ] = "tici",
    log_format: Annotated[str, typer.Option(help="rlog compression: bz2, zst or raw.")] = "bz2",
    layout: Annotated[str, typer.Option(help="Folder names: tools (<dongle>_<route>--<n>) or device "
                                             "(<route>--<n>).")] = "tools",
    lane_change_at: Annotated[float | None, typer.Option(help="Start of the left lane change, seconds from the "
                                                              "route start \\[default: the middle].")] = None,
    rhd: Annotated[bool, typer.Option(help="Log a right-hand-drive car (isRHD).")] = False,
    fault: Annotated[list[str] | None, typer.Option(
        help="Inject a fault into the last segment (repeatable): truncated-log, missing-encode-idx, "
             "missing-wide, corrupt-video-tail, encoder-drops, no-delays (no liveDelay, no carParams).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the drive's dynamics.")] = 0,
    modelv2_teacher: Annotated[Path | None, typer.Option(help="Teacher folder whose outputs over the route's "
                                                              "frames are logged as modelV2 (as a car logs its own "
                                                              "model).")] = None,
    varied: Annotated[bool, typer.Option("--varied", help="Draw the drive from --seed: speed, curvature, lead, "
                                                          "lane-change direction and time, lane width, "
                                                          "calibration.")] = False,
    upload: Annotated[str, typer.Option(help="What the device uploaded: full (rlog, fcamera.hevc, ecamera.hevc) "
                                             "or qlog (qlog decimated as a device keeps it, qcamera.ts: H.264 "
                                             "526x330 on tici, 480x360 on eon; what a device uploads by "
                                             "default).")] = "full",
    driver: Annotated[str | None, typer.Option(help="A driving style the fitted teacher does not have: "
                                                    "keep-left:M / keep-right:M (held M metres from the lane "
                                                    "centre), gap:S (the lead car S seconds ahead); join with "
                                                    "commas.")] = None,
) -> None:
    """Write a synthetic openpilot route (real cereal rlog, real HEVC) to try the tool without a car; its name is
    derived from the options, so drives of other seeds ingest into one dataset."""
    from spark_distill.synth.route import SynthConfig, write_route

    cfg = SynthConfig(segments=segments, seconds=seconds, device=device, log_format=log_format, layout=layout,
                      lane_change_at=lane_change_at, rhd=rhd, faults=tuple(fault or ()), seed=seed,
                      modelv2_teacher=modelv2_teacher, varied=varied, upload=upload, driver=driver)
    with progress_bar("synth-route", on_interrupt=SYNTH_STOP) as update:
        truths = write_route(out_dir, cfg, on_progress=update)
    for truth in truths:
        faults = f"  faults: {', '.join(truth.faults)}" if truth.faults else ""
        print(f"{truth.path}  {len(truth.frame_ids)} frames{faults}")


@app.command("synth-teacher", rich_help_panel="Synthetic data")
@handles_errors
def synth_teacher(
    out_dir: Annotated[Path, typer.Argument(help="Folder for driving_vision.onnx, driving_policy.onnx and metadata.")],
    weights: Annotated[str | None, typer.Option(help="fitted: the shipped teacher that drives (synth/fitted/"
                                                     "v1, what --fit makes with its defaults); random: seeded "
                                                     "random weights whose outputs mean nothing (tests, timing) "
                                                     "\\[default: fitted; random with --size bench or --seed].")
                      ] = None,
    size: Annotated[str, typer.Option(help="tiny (tests, CPU) or bench (EfficientNet-B2-shaped, 1.68 GFLOPs/frame, "
                                           "like the real vision model; random weights).")] = "tiny",
    release: Annotated[str | None, typer.Option(help="Instead, a random-weight stand-in with exactly a release's "
                                                     "files, inputs, dtypes and metadata: 0.9.6, 0.9.7, mid-2024, "
                                                     "late-2024, 0.10.0, 0.10.3 or 0.11.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of random weights (with --fit: of the fit's drives and "
                                                  "training) \\[default: 0].")] = None,
    fit: Annotated[bool, typer.Option("--fit", help="Fit a teacher that drives: learn the path driven, lanes, lead "
                                                    "and desire of varied synthetic drives (a few CPU minutes; "
                                                    "the package ships the result of the defaults).")] = False,
    contract: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: v1 is the default teacher's "
                                                                   "layout; v2 is gone (--release 0.10.3).")] = None,
) -> None:
    """Write a stand-in teacher with openpilot's split-model I/O (ONNX + metadata): by default the shipped one
    fitted to drive, in the project's own layout (recognised as openpilot 0.10.0's split-lateral: its inputs,
    mixture heads, no padding); --release writes a release's exact layout."""
    from spark_distill.errors import ConfigError
    from spark_distill.synth.teacher import V2_GONE

    if contract == "v2":
        raise ConfigError(V2_GONE)
    if contract not in (None, "v1"):
        raise ConfigError(f"unknown --contract {contract!r}; --release names a release's layout")
    if contract == "v1" and release is not None:
        raise ConfigError(f"--contract v1 (deprecated) and --release {release} name two layouts; drop --contract")
    if contract == "v1":
        console.print("note: --contract is deprecated: v1 is the default teacher's layout (split-lateral); drop it",
                      highlight=False, soft_wrap=True)
    if release is not None:
        from spark_distill.synth.releases import write_release

        if fit or weights not in (None, "random"):
            raise ConfigError("--release writes random weights only; drop --fit / --weights fitted")
        files = write_release(out_dir, release, size=size, seed=seed or 0)
        out.print(f"wrote a {size} stand-in of openpilot {release} with random weights (seed {seed or 0}; its "
                  f"outputs mean nothing) -> {out_dir}", highlight=False, soft_wrap=True)
        for path in files.values():
            print(path)
        return
    if fit:
        from spark_distill.synth.fit import FitConfig, fit_teacher

        if size != "tiny" or weights is not None:
            raise ConfigError("--fit makes a tiny teacher with fitted weights; drop --size and --weights")
        with progress_bar("synth-teacher --fit", unit="", on_interrupt=FIT_STOP) as update:
            result = fit_teacher(out_dir, FitConfig(seed=seed or 0), on_progress=update)
        print_table(f"fitted teacher -> {out_dir}", {
            **{f"vision RMS error, {k}": v for k, v in result.vision_error.items()},
            "policy training loss": result.policy_loss})
        return
    from spark_distill.synth.stand_in import write_stand_in

    written = write_stand_in(out_dir, weights=weights, size=size, seed=seed)
    if written.note:
        console.print(f"note: {written.note}", highlight=False, soft_wrap=True)
    out.print(f"wrote the fitted teacher, which drives (the shipped result of --fit) -> {out_dir}"
              if written.weights == "fitted" else
              f"wrote a {size} teacher with random weights (seed {seed or 0}; its outputs mean nothing) "
              f"-> {out_dir}", highlight=False, soft_wrap=True)
    for path in written.files.values():
        print(path)


@bench_app.command("ingest")
@handles_errors
def bench_ingest(
    seconds: Annotated[float, typer.Option(help="Length of each synthetic 1928x1208 segment, seconds.")] = 10.0,
    route: Annotated[Path | None, typer.Option(help="Benchmark these segments instead of synthetic ones.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg threads of the extra one-worker run "
                                                     "(1 skips it).")] = 2,
    segments: Annotated[int, typer.Option(help="Segments ingested by each worker count (the route's segments, "
                                               "repeated under new numbers where it has fewer).")] = 4,
    workers: Annotated[str, typer.Option(help="Worker counts to compare, comma-separated; speed-up against the "
                                              "first.")] = "1,2",
) -> None:
    """Bare PyAV decode vs ingest on one core (ratio, target >= 0.85), and ingest with 1, 2, ... workers."""
    from spark_distill.bench.ingest import bench_ingest as run_bench
    from spark_distill.bench.ingest import parse_workers

    if decode_threads < 1:
        raise ConfigError(f"--decode-threads must be >= 1, got {decode_threads}")
    counts = parse_workers(workers)
    with _bench_progress("bench ingest") as update:
        for line in run_bench(seconds=seconds, route=route, workdir=workdir, decode_threads=decode_threads,
                              segments=segments, workers=counts, on_progress=update):
            _result_line(line)


@bench_app.command("storage")
@handles_errors
def bench_storage(
    seconds: Annotated[float, typer.Option(help="Length of the synthetic 1928x1208 segment, seconds.")] = 10.0,
    route: Annotated[Path | None, typer.Option(help="Benchmark these segments instead of a synthetic one.")] = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher folder for the drift rows \\[default: a synthetic "
                                                      "stand-in].")] = None,
    crf: Annotated[list[int] | None, typer.Option(help="hevc CRF to measure (repeatable) \\[default: 20 and 28].")
                   ] = None,
    av1_crf: Annotated[list[int] | None, typer.Option(help="av1 CRF to measure (repeatable) \\[default: 30 and "
                                                           "40].")] = None,
    backend: Annotated[str, typer.Option(help="Backend of the fp32 reference labels.")] = "onnxruntime",
    drift: Annotated[bool, typer.Option(help="Measure the teacher drift (ingest + label per setting).")] = True,
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
) -> None:
    """Bytes per frame, speed per core and teacher drift of each camera codec (lossless, hevc at each --crf, av1 at
    each --av1-crf)."""
    from spark_distill.bench.storage import bench_storage as run_bench
    from spark_distill.data import codecs

    lossy = [("hevc", c) for c in crf or (20, 28)] + [("av1", c) for c in av1_crf or (30, 40)]
    for name, c in lossy:
        codecs.resolve_crf(name, c)
    with _bench_progress("bench storage") as update:
        for line in run_bench(seconds=seconds, route=route, teacher=teacher, lossy=tuple(lossy),
                              backend=backend, drift_check=drift, workdir=workdir, on_progress=update):
            _result_line(line)


@bench_app.command("remote")
@handles_errors
def bench_remote(
    url: Annotated[str | None, typer.Option(help="A writable store to measure (s3://bucket/prefix, gs://…; "
                                                 "credentials from the environment); a scratch prefix under it is "
                                                 "removed afterwards \\[default: an S3-API server on localhost].")
                   ] = None,
    segments: Annotated[int, typer.Option(help="Synthetic segments in the dataset.")] = 3,
    seconds: Annotated[float, typer.Option(help="Length of each segment, s.")] = 6.0,
    student: Annotated[str, typer.Option(help="Built-in student trained in the train rows.")] = "compact-xs",
    batch_size: Annotated[int, typer.Option(help="Clips per training step.")] = 4,
    shard_clips: Annotated[int, typer.Option(help="Clips per shard (more shards: more fetches).")] = 3,
    workers: Annotated[int, typer.Option(help="Ingest, label and loader worker processes.")] = 2,
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
) -> None:
    """Label and train from an object store through the local cache against the same data on local disk (wall-time
    ratios in one run), and the cache's hit rate on a second epoch, with the cache holding all or half the data."""
    from spark_distill.bench.remote import bench_remote as run_bench

    for name, value in (("--segments", segments), ("--batch-size", batch_size), ("--shard-clips", shard_clips),
                        ("--workers", workers)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    with _bench_progress("bench remote") as update:
        for line in run_bench(url=url, segments=segments, seconds=seconds, student=student, batch_size=batch_size,
                              shard_clips=shard_clips, workers=workers, workdir=workdir, on_progress=update):
            _result_line(line)


@bench_app.command("label")
@handles_errors
def bench_label(
    teacher: Annotated[Path | None, typer.Option(help="Teacher folder \\[default: a synthetic stand-in].")] = None,
    size: Annotated[str, typer.Option(help="Stand-in size when no --teacher: tiny or bench.")] = "bench",
    backend: Annotated[str, typer.Option(help="auto, tensorrt, torch or onnxruntime.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    batch: Annotated[int, typer.Option(help="Segments in lockstep (inference batch).")] = 64,
    seconds: Annotated[float, typer.Option(help="Length of each of the --batch synthetic segments, s.")] = 10.0,
    workers: Annotated[int, typer.Option(help="Reader processes of the label pass \\[default: 0 = auto, as "
                                              "label's].")] = 0,
    compile: Annotated[str, typer.Option(help="torch backend: torch.compile the teacher in the label pass: auto "
                                              "(on a GPU), on or off. Bare inference is measured both ways.")
                       ] = "auto",
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
) -> None:
    """Label pass vs bare inference of the same teacher, backend, precision and batch (target >= 0.9)."""
    from spark_distill.bench.label import bench_label as run_bench

    with _bench_progress("bench label") as update:
        for line in run_bench(teacher=teacher, size=size, backend=backend, precision=precision, batch=batch,
                              seconds=seconds, workers=workers, compile=compile, workdir=workdir,
                              on_progress=update):
            _result_line(line)


@bench_app.command("distill")
@handles_errors
def bench_distill(
    ctx: typer.Context,
    preset: Annotated[str | None, typer.Option(help="h200: the sizes of benchmarks/distill.md's GPU run (~15 min on "
                                                    "one H200); options given explicitly win.")] = None,
    student: Annotated[str, typer.Option(help="Comma-separated built-in students to train from scratch.")
                       ] = "compact-xs,compact",
    train_drives: Annotated[int, typer.Option(help="Varied synthetic drives to train on.")] = 12,
    held_drives: Annotated[int, typer.Option(help="Other drives, never trained on, to score on.")] = 3,
    seconds: Annotated[float, typer.Option(help="Length of each drive, s (the first 5 s: the teacher's warm-up).")
                       ] = 12.0,
    ingested: Annotated[int, typer.Option(help="Of the held-out drives, also rendered as cameras, HEVC-encoded and "
                                               "ingested, scored apart (the camera path).")] = 0,
    steps: Annotated[int, typer.Option(help="Training steps per student (the budget).")] = 60,
    policy_steps: Annotated[int, typer.Option(help="Then a second stage of this many steps: each student's policy "
                                                   "half renewed and trained alone on its frozen vision (train "
                                                   "--fresh-policy); 0: none.")] = 0,
    evals: Annotated[int, typer.Option(help="Checkpoints scored along each run (the last at its end).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Clips per step.")] = 8,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate \\[default: train's, 1e-3].")] = None,
    head_init: Annotated[str, typer.Option(help="label-mean or random, as train's.")] = "label-mean",
    loss_weights: Annotated[str, typer.Option(help="The students' loss term weights, as train's (e.g. "
                                                   "'plan=4,plan_prob=0.2') \\[default: train's].")] = "",
    capture: Annotated[str, typer.Option(help="auto, on or off: the training step as one CUDA graph, as train's "
                                              "--capture.")] = "auto",
    driver: Annotated[str | None, typer.Option(help="Also personalise: fine-tune a model (--tune-base) with DoRA and "
                                                    "the driven-path loss on this driver's drives (e.g. keep-left:0.4, "
                                                    "gap:2.5) and score it on others of the driver; none: not (over "
                                                    "a preset's).")] = None,
    driver_drives: Annotated[int, typer.Option(help="The driver's drives to fine-tune on.")] = 8,
    driver_held: Annotated[int, typer.Option(help="The driver's drives to score on.")] = 2,
    tune_steps: Annotated[int, typer.Option(help="Fine-tuning steps.")] = 40,
    tune_lr: Annotated[float | None, typer.Option(help="Fine-tuning peak learning rate \\[default: 2e-3 for a "
                                                       "student, 5e-4 for the teacher's model].")] = None,
    tune_base: Annotated[str, typer.Option(help="What --driver fine-tunes: student (the first student trained "
                                                "here) or teacher (the teacher's own model, as train --student "
                                                "openpilot).")] = "student",
    gt_weight: Annotated[float, typer.Option(help="Weight of the driven-path loss while fine-tuning.")] = 1.0,
    save_student: Annotated[Path | None, typer.Option(help="Write the first student's final weights here as a "
                                                           "pre-trained student (train --student DIR).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher folder \\[default: the shipped fitted one].")] = None,
    workers: Annotated[int, typer.Option(help="Drive-rendering processes (0: one per core).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the drives and the students.")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device \\[default: cuda if present].")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for distill.json and distill.png \\[default: "
                                                               "$OUT if set, else none].")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep --workdir's datasets and runs (a rerun reuses the "
                                                      "complete datasets).")] = False,
) -> None:
    """Distillation quality: a student trained for a fixed budget on varied drives the fitted teacher labelled,
    scored on held-out drives against the path driven and the teacher, versus minutes and frames (table + PNG);
    with --driver, personalisation by DoRA fine-tuning."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "preset", "student", "out_dir")}
    from spark_distill.bench.distill import PRESETS, DistillBench
    from spark_distill.bench.distill import bench_distill as run_bench

    values["students"] = _csv(student)
    values["out"] = out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
        for k, v in PRESETS[preset].items():
            source = ctx.get_parameter_source(k)
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
                values[k] = v
    if values["driver"] == "none":
        values["driver"] = None
    with _bench_progress("bench distill") as update:
        for line in run_bench(DistillBench(**values), on_progress=update):
            _result_line(line)


@bench_app.command("train")
@handles_errors
def bench_train(
    root: Annotated[Path | None, typer.Argument(help="Dataset root with a label set \\[default: write a synthetic "
                                                     "one in a scratch folder, sized for the run].")] = None,
    labels: Annotated[str | None, typer.Option(help="Label set of ROOT.")] = None,
    student_onnx: Annotated[Path | None, typer.Option(help="ONNX pair of the openpilot student rows \\[default: a "
                                                           "synthetic stand-in of --openpilot-size].")] = None,
    student: Annotated[str, typer.Option(help="Comma-separated built-in students with a DoRA row each; the last "
                                              "one also gets the eager, LoRA, PEFT, full and streaming rows.")
                       ] = "compact-xs,compact",
    batch_size: Annotated[int, typer.Option(help="Clips per step of the adapter, streaming and openpilot rows.")
                          ] = 128,
    full_batch_size: Annotated[int, typer.Option(help="Clips per step of the fully trained row (<= --batch-size).")
                               ] = 32,
    steps: Annotated[int, typer.Option(help="Timed optimizer steps per row (after 3 warm-up steps: compile, "
                                            "then capture).")] = 5,
    dora_rank: Annotated[int, typer.Option(help="Adapter rank (alpha = 2 x rank).")] = 16,
    workers: Annotated[int, typer.Option(help="DataLoader workers of the streaming and openpilot rows \\[default: "
                                              "0 = auto, as train's].")] = 0,
    segments: Annotated[int | None, typer.Option(help="Synthetic segments when no ROOT \\[default: what the "
                                                      "streaming row needs].")] = None,
    seconds: Annotated[float, typer.Option(help="Length of each synthetic segment, s.")] = 6.0,
    compile: Annotated[str, typer.Option("--compile", help="auto, on or off: torch.compile the student's halves "
                                                           "(auto: on CUDA), as train does.")] = "auto",
    capture: Annotated[str, typer.Option("--capture", help="auto, on or off: each row's whole step as one CUDA "
                                                           "graph (auto: on CUDA), as train does; the compiled, "
                                                           "uncaptured row stays for comparison.")] = "auto",
    peak_tflops: Annotated[float | None, typer.Option(help="The device's dense bf16 peak, TFLOP/s, for MFU "
                                                           "\\[default: known for H100/H200; n/a elsewhere].")] = None,
    openpilot_size: Annotated[str, typer.Option(help="Size of the synthetic openpilot stand-in: tiny or bench.")
                              ] = "bench",
    device: Annotated[str | None, typer.Option(help="torch device \\[default: cuda if present].")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Scratch folder \\[default: a temporary one].")] = None,
    streaming_only: Annotated[bool, typer.Option("--streaming-only", help="Only the last --student's DoRA row "
                                                                          "and its streaming row (e.g. to time "
                                                                          "the loader on a lossy dataset).")
                              ] = False,
    repeat: Annotated[int, typer.Option(help="Read ROOT's shards this many times over (a small dataset standing "
                                             "for a large one: every clip is still read and decoded).")] = 1,
) -> None:
    """Training throughput: frames/s, TFLOP/s and MFU per student and adapter; streaming vs in-memory (target
    >= 0.9); the openpilot student feature-cached vs image mode."""
    from spark_distill.bench.train import bench_train as run_bench

    with _bench_progress("bench train") as update:
        for line in run_bench(root=root, labels=labels, student_onnx=student_onnx, students=_csv(student),
                              batch=batch_size, full_batch=full_batch_size, steps=steps, adapter_rank=dora_rank,
                              workers=workers, segments=segments, seconds=seconds, device=device, compile=compile,
                              capture=capture, peak=peak_tflops, openpilot_size=openpilot_size, workdir=workdir,
                              streaming_only=streaming_only, repeat=repeat, on_progress=update):
            _result_line(line)
