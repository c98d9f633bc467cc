# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench distill`: how close a distilled student comes to its teacher, and to the path driven.

Varied synthetic drives (`synth.frames`: rendered straight into model frames, with ingest's per-frame arrays;
`--ingested N` of the held-out drives also go the user's way: cameras rendered, HEVC-encoded, ingested) are
labelled by the fitted teacher through the real label pass; each built-in student is trained through the real
train for a fixed budget of steps, a snapshot of its checkpoint kept at several points along the run; the real
eval scores every snapshot on held-out drives never trained on: the plan's error at 1 / 2 / 4 s against the path
driven (and the teacher's own) and against the teacher's plan, versus training minutes and frames seen (table and
PNG). With `--driver STYLE` it also measures personalisation: drives of a driver the teacher does not know
(`synth.route.parse_driver`), the trained student fine-tuned with DoRA and the driven-path loss (`--gt-weight`)
on some of them and scored on others: its error against the path driven at 2 s against the teacher's, and its
lane lines and lead against the teacher's (nothing forgotten). `--save-student DIR` writes the first student's
final weights as a pre-trained student (`models.pretrained`). Entry point: `bench_distill(DistillBench)`, a
generator of result lines.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_distill.bench import scratch_dir
from spark_distill.data import files
from spark_distill.errors import ConfigError

HORIZONS = ("1", "2", "4")
TEACHER = "teacher"  # the label set's name in every dataset of the bench


@dataclass(frozen=True, kw_only=True)
class DistillBench:
    """What `bench distill` runs. Defaults: a few CPU minutes (the test runs smaller still)."""

    students: tuple[str, ...] = ("compact-xs", "compact")
    train_drives: int = 12
    held_drives: int = 3
    seconds: float = 12.0  # per drive; the first 5 s of each are the teacher's warm-up (no loss, not scored)
    ingested: int = 0  # of the held-out drives, also rendered as cameras, HEVC-encoded and ingested (scored apart)
    steps: int = 60
    policy_steps: int = 0  # then stage 2: each student's policy half renewed and trained alone on its frozen vision
    # (train --fresh-policy) for this many steps; its curve follows stage 1's, the saved student is the two-stage one
    evals: int = 3  # snapshots scored along each run (the last at its end), besides step 0
    batch_size: int = 8
    lr: float | None = None  # None: train's default for the adapter (full training: 1e-3)
    head_init: str = "label-mean"
    capture: str = "auto"  # the training step as one CUDA graph (train's --capture)
    loss_weights: str = ""  # the students' loss term weights, as train's --loss-weights ("" = train's defaults)
    driver: str | None = None  # personalisation: this driver's drives (synth.route.parse_driver)
    driver_drives: int = 8
    driver_held: int = 2
    tune_steps: int = 40
    tune_lr: float | None = None  # None: TUNE_LR[tune_base]
    tune_base: str = "student"  # what personalisation fine-tunes: the first student, or the teacher's own model
    gt_weight: float = 1.0
    workers: int = 0  # drive-rendering processes (0: one per core)
    device: str | None = None
    seed: int = 0
    teacher: Path | None = None  # [default: the shipped fitted teacher]
    workdir: Path | None = None  # scratch [default: a temporary folder, removed at the end]
    keep: bool = False  # keep the scratch folder (datasets, runs); a rerun on it reuses what is complete
    out: Path | None = None  # table (distill.json, distill.md) and distill.png
    save_student: Path | None = None  # write the first student's final weights here as a pre-trained student

    def __post_init__(self) -> None:
        from spark_distill.models.compact import PRESETS
        from spark_distill.synth.route import parse_driver
        from spark_distill.train.capture import CAPTURE_MODES

        if self.capture not in CAPTURE_MODES:
            raise ConfigError(f"--capture must be one of {', '.join(CAPTURE_MODES)}, not {self.capture!r}")
        if not self.students or any(s not in PRESETS for s in self.students):
            raise ConfigError(f"--student: choose among {', '.join(PRESETS)}")
        if min(self.train_drives, self.held_drives, self.steps, self.evals, self.batch_size) < 1:
            raise ConfigError("--train-drives, --held-drives, --steps, --evals and --batch-size must be >= 1")
        if self.policy_steps < 0:
            raise ConfigError("--policy-steps must be >= 0 (0: no second stage)")
        if self.seconds < 2.0:
            raise ConfigError("--seconds must be >= 2")
        if not 0 <= self.ingested <= self.held_drives:
            raise ConfigError(f"--ingested {self.ingested}: at most --held-drives ({self.held_drives})")
        from spark_distill.train.losses import LossWeights

        LossWeights.from_option(self.loss_weights)
        if self.tune_base not in TUNE_BASES:
            raise ConfigError(f"--tune-base must be one of {', '.join(TUNE_BASES)}, not {self.tune_base!r}")
        if self.driver is not None:
            parse_driver(self.driver)
            if min(self.driver_drives, self.driver_held, self.tune_steps) < 1:
                raise ConfigError("--driver-drives, --driver-held and --tune-steps must be >= 1")


TUNE_BASES = ("student", "teacher")  # teacher: openpilot's model itself as the student (train --student openpilot)
# Fine-tuning peak learning rate by base: the teacher's trained model overshoots at the student's 2e-3 (benchmarks/
# distill.md, "Personalisation of the teacher's own model": 14% below the teacher at 5e-4, 11% above at 2e-3).
TUNE_LR = {"student": 2e-3, "teacher": 5e-4}

PRESETS = {  # --preset: sized to a device's budget (see benchmarks/distill.md)
    "h200": {"train_drives": 240, "held_drives": 10, "seconds": 20.0, "ingested": 1, "steps": 2000, "evals": 4,
             "batch_size": 32, "driver": "keep-left:0.4", "driver_drives": 40, "driver_held": 8, "tune_steps": 600,
             "gt_weight": 1.0},
}


def drive_configs(n: int, seconds: float, *, base: int, driver: str | None = None) -> list:
    """`n` varied one-segment drives of seeds base, base+1, ... (kept apart from the fit's and the demo's)."""
    from spark_distill.synth.route import SynthConfig

    return [SynthConfig(segments=1, seconds=seconds, varied=True, seed=base + i, driver=driver) for i in range(n)]


def _labelled(root: Path, teacher: Path, device: str | None) -> None:
    from spark_distill.label.run import LabelConfig, label

    if not (root / "labels" / TEACHER / "manifest.json").exists():
        label(LabelConfig(root=root, teacher=(teacher,), name=TEACHER, device=device,
                          batch=64 if device != "cpu" and _cuda() else 4))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def make_dataset(root: Path, configs: list, teacher: Path, *, workers: int, device: str | None,
                 ingested: bool = False) -> float:
    """A labelled dataset of these drives at `root` (reused where complete); seconds it took."""
    from spark_distill.synth.frames import write_dataset

    start = time.perf_counter()
    if not (root / "frames" / "manifest.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        if ingested:
            from spark_distill.ingest.run import IngestConfig, ingest
            from spark_distill.synth.route import write_route

            for k, c in enumerate(configs):
                write_route(root.parent / f"{root.name}-routes" / f"r{k}", c)
            ingest(IngestConfig(inputs=(str(root.parent / f"{root.name}-routes"),), out=root, workers=workers))
            shutil.rmtree(root.parent / f"{root.name}-routes")
        else:
            write_dataset(root, configs, workers=workers)
    _labelled(root, teacher, device)
    return time.perf_counter() - start


def segments_of(root: Path) -> tuple[str, ...]:
    from spark_distill.data import shards

    return tuple(s["name"] for s in shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["segments"])


@dataclass
class Snapshot:
    """A checkpoint kept along a run: a run folder of its own (eval scores it under its folder's name)."""

    folder: Path
    step: int
    minutes: float  # since the run's first report (its set-up, validation and compiling included)
    frames: int  # frames the student has been trained on (steps x batch x clip length)


class _Snapshots:
    """train's on_progress: at each snapshot step, the checkpoint written after it is copied aside (train keeps
    only its newest three). Frames per step follow the batch the run resolved (train caps --batch-size by the clips
    a loader worker gets), read from its config.yaml."""

    def __init__(self, run_dir: Path, dest: Path, at: list[int], clip_len: int) -> None:
        self.run_dir, self.dest, self.at, self.clip_len = run_dir, dest, at, clip_len
        self.frames_per_step = 0
        self.start: float | None = None
        self.pending: list[tuple[int, float]] = []
        self.taken: list[Snapshot] = []

    def __call__(self, step: int, total: int, loss: float | None) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
            self.frames_per_step = run_batch(self.run_dir) * self.clip_len
            self.initial()
        self.collect()
        if step in self.at:
            self.pending.append((step, (now - self.start) / 60.0))

    def initial(self) -> None:
        """Step 0, before any training (the heads at the labels' mean): the run's base weights as a checkpoint."""
        from safetensors.torch import load_file

        from spark_distill.models.checkpoint import save_checkpoint

        folder = self._folder(0)
        import torch

        state = {"step": 0, "epoch": 0, "position": 0, "optimizer": {}, "torch_rng": torch.get_rng_state()}
        save_checkpoint(folder / "checkpoints", 0, load_file(str(self.run_dir / "student.safetensors")), state,
                        whole=True)
        self.taken.append(Snapshot(folder, 0, 0.0, 0))

    def _folder(self, step: int) -> Path:
        folder = self.dest / f"{self.run_dir.name}@{step}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "checkpoints").mkdir(parents=True)
        for name in ("student.json", "student.safetensors", "config.yaml"):
            shutil.copyfile(self.run_dir / name, folder / name)
        return folder

    def collect(self) -> None:
        """Copy every pending checkpoint that has landed."""
        for step, minutes in list(self.pending):
            ckpt = self.run_dir / "checkpoints" / f"step-{step:08d}"
            if not (ckpt / "meta.json").exists():
                continue
            folder = self._folder(step)
            shutil.copytree(ckpt, folder / "checkpoints" / ckpt.name)
            self.taken.append(Snapshot(folder, step, minutes, step * self.frames_per_step))
            self.pending.remove((step, minutes))

    def stopped_at(self, step: int) -> None:
        """A run stopped early (SIGTERM: it checkpoints where it stopped) is scored at that step as well."""
        if self.start is None or any(s.step == step for s in self.taken) or step < 1:
            return
        self.pending.append((step, (time.perf_counter() - self.start) / 60.0))
        self.collect()


def run_batch(run_dir: Path) -> int:
    """Clips per step the run resolved (its config.yaml)."""
    from spark_distill.train.config import read_config

    return int(read_config(run_dir / "config.yaml")["batch_size"])


def snapshot_steps(steps: int, evals: int) -> list[int]:
    """`evals` steps spread evenly over the run, the last at its end (step 0, the untrained student, is scored
    besides)."""
    return sorted({max(1, round(steps * (k + 1) / evals)) for k in range(evals)})


def stage_two(student: str) -> str:
    """The run (and curve) name of `student`'s second stage (--policy-steps)."""
    return f"{student}-policy"


def train_student(cfg: DistillBench, student: str, root: Path, runs: Path, snaps: Path, *,
                  stage_two_of: Path | None = None) -> tuple[Any, list[Snapshot]]:
    """Train `student` from scratch on `root` for cfg.steps; its snapshots. With `stage_two_of` (that student's
    stage-1 run): stage 2 instead, run `<student>-policy`, its policy half renewed and trained alone for
    cfg.policy_steps (train --fresh-policy)."""
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train
    from spark_distill.train.losses import LossWeights

    name, steps = (student, cfg.steps) if stage_two_of is None else (stage_two(student), cfg.policy_steps)
    at = snapshot_steps(steps, cfg.evals)
    shutil.rmtree(runs / name, ignore_errors=True)
    tcfg = TrainConfig(root=root, labels=TEACHER, run=name, runs_dir=runs,
                       student=student if stage_two_of is None else str(stage_two_of), adapter="none",
                       fresh_policy=stage_two_of is not None,
                       head_init=cfg.head_init, batch_size=cfg.batch_size, max_steps=steps,
                       lr=cfg.lr, val_fraction=0.05, checkpoint_every=at[0] if len(at) == 1 else _gcd(at),
                       seed=cfg.seed, device=cfg.device, capture=cfg.capture,
                       loss=LossWeights.from_option(cfg.loss_weights))
    hook = _Snapshots(runs / name, snaps, at, _clip_len(root))
    result = train(tcfg, on_progress=hook)
    hook.collect()
    if result.interrupted:
        hook.stopped_at(result.steps)
    return result, hook.taken


def _gcd(values: list[int]) -> int:
    import math

    out = 0
    for v in values:
        out = math.gcd(out, v)
    return max(1, out)


def _clip_len(root: Path) -> int:
    from spark_distill.data import shards

    return int(shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["settings"]["clip_len"])


def score(root: Path, runs: list[Path], out: Path, device: str | None) -> dict[str, dict[str, Any]]:
    """eval of these runs (or snapshots) on every segment of `root`: metrics by run name."""
    from spark_distill.evaluate.run import EvalConfig, evaluate

    return evaluate(EvalConfig(root=root, labels=TEACHER, runs=tuple(runs), segments=segments_of(root), out=out,
                               device=device or ("cuda" if _cuda() else "cpu"))).metrics


def row(m: dict[str, Any]) -> dict[str, float | None]:
    """The bench's numbers of one eval result: plan vs the path driven, the teacher's own, and vs the teacher."""
    drive, plan = m.get("drive", {}), m.get("plan", {})
    out: dict[str, float | None] = {}
    for h in HORIZONS:
        out[f"driven@{h}"] = drive.get("student", {}).get("at", {}).get(h)
        out[f"teacher_driven@{h}"] = drive.get("teacher", {}).get("at", {}).get(h)
        out[f"vs_teacher@{h}"] = plan.get("at", {}).get(h)
    out["lane_lines"] = m.get("lane_lines", {}).get("mean")
    out["lead"] = m.get("lead", {}).get("distance_error_m")
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def curve_lines(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    width = max([11, *map(len, curves)])
    head = (f"  {'student':<{width}} {'step':>6} {'minutes':>7} {'frames':>10}  " + "  ".join(
        f"{'driven@' + h:>9}" for h in HORIZONS) + "  " + "  ".join(f"{'teacher@' + h:>10}" for h in HORIZONS)
        + "  " + "  ".join(f"{'vsT@' + h:>7}" for h in HORIZONS) + "  ratio@2")
    lines = [head]
    for student, points in curves.items():
        for p in points:
            r = p["row"]
            ratio = (r["driven@2"] / r["teacher_driven@2"]) if r["driven@2"] and r["teacher_driven@2"] else None
            lines.append(f"  {student:<{width}} {p['step']:>6} {p['minutes']:>7.2f} {p['frames']:>10,}  "
                         + "  ".join(f"{_fmt(r['driven@' + h]):>9}" for h in HORIZONS) + "  "
                         + "  ".join(f"{_fmt(r['teacher_driven@' + h]):>10}" for h in HORIZONS) + "  "
                         + "  ".join(f"{_fmt(r['vs_teacher@' + h]):>7}" for h in HORIZONS)
                         + f"  {'-' if ratio is None else f'{ratio:.2f}x'}")
    return lines


def plot(path: Path, curves: dict[str, list[dict[str, Any]]]) -> Path | None:
    """distill.png: per horizon, error vs the path driven (solid; the teacher's dashed) and vs the teacher
    (dotted), against training minutes (top) and frames seen (bottom)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(HORIZONS), figsize=(5 * len(HORIZONS), 7.2), squeeze=False)
    for col, h in enumerate(HORIZONS):
        for r, (key, label) in enumerate((("minutes", "training minutes"), ("frames", "frames seen"))):
            ax = axes[r][col]
            for k, (student, points) in enumerate(curves.items()):
                x = [p[key] for p in points]
                colour = f"C{k}"
                ax.plot(x, [_nan(p["row"][f"driven@{h}"]) for p in points], "o-", color=colour,
                        label=f"{student} vs driven")
                ax.plot(x, [_nan(p["row"][f"vs_teacher@{h}"]) for p in points], "s:", color=colour,
                        label=f"{student} vs teacher")
                teacher = _nan(points[-1]["row"][f"teacher_driven@{h}"]) if points else float("nan")
                ax.axhline(teacher, color="k", ls="--", lw=1, label="teacher vs driven" if k == 0 else None)
            ax.set_title(f"plan error at {h} s (m)")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            if r == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def personalise(cfg: DistillBench, base_run: Path, root: Path, held: Path, runs: Path, out: Path
                ) -> dict[str, Any]:
    """DoRA fine-tuning of a trained student with the driven-path loss on one driver's drives; scored on others
    of the same driver: the tuned and the untuned student, and the teacher, against the path driven. `base_run`: a
    trained run, or (--tune-base teacher) the teacher's release folder, fine-tuned as `train --student openpilot`
    does (the model the user drives with, started from the history modeld had at each clip)."""
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train
    from spark_distill.train.losses import LossWeights

    name = "personalised"
    shutil.rmtree(runs / name, ignore_errors=True)
    release = cfg.tune_base == "teacher"
    tcfg = TrainConfig(root=root, labels=TEACHER, run=name, runs_dir=runs,
                       student="openpilot" if release else str(base_run),
                       student_onnx=base_run if release else None, adapter="dora",
                       batch_size=cfg.batch_size, max_steps=cfg.tune_steps,
                       lr=cfg.tune_lr if cfg.tune_lr is not None else TUNE_LR[cfg.tune_base],
                       val_fraction=0.05, checkpoint_every=cfg.tune_steps, seed=cfg.seed, device=cfg.device,
                       capture=cfg.capture, loss=LossWeights.parse("", gt=cfg.gt_weight))
    start = time.perf_counter()
    train(tcfg)
    minutes = (time.perf_counter() - start) / 60
    metrics = score(held, [base_run, runs / name], out, cfg.device)
    base, tuned = (row(m) for m in metrics.values())
    return {"driver": cfg.driver, "base_model": cfg.tune_base, "minutes": minutes, "steps": cfg.tune_steps,
            "base": base, "tuned": tuned}


def _below(drop: float) -> str:
    return f"{100 * drop:.0f}% below" if drop >= 0 else f"{-100 * drop:.0f}% above"


def personal_lines(p: dict[str, Any]) -> list[str]:
    base, tuned = p["base"], p["tuned"]
    t2 = tuned["teacher_driven@2"]
    drop = None if not t2 or tuned["driven@2"] is None else 1 - tuned["driven@2"] / t2
    base_name = "the teacher's own model" if p.get("base_model") == "teacher" else "the student"
    return [f"personalisation, driver {p['driver']}: {base_name} + DoRA + driven-path loss, {p['steps']} steps "
            f"({p['minutes']:.2f} min), held-out drives of the same driver",
            f"  {'model':<13} " + "  ".join(f"{'driven@' + h:>9}" for h in HORIZONS)
            + "  lane lines vs teacher  lead vs teacher",
            *(f"  {who:<13} " + "  ".join(f"{_fmt(r[k + '@' + h]):>9}" for h in HORIZONS)
              + f"  {_fmt(r['lane_lines']) if who != 'teacher' else '-':>21}  "
              + f"{_fmt(r['lead']) if who != 'teacher' else '-':>15}"
              for who, r, k in (("teacher", tuned, "teacher_driven"),
                                ("untuned" if p.get("base_model") == "teacher" else "student", base, "driven"),
                                ("personalised", tuned, "driven"))),
            f"  personalised vs the path driven at 2 s: {'-' if drop is None else _below(drop)} the "
            "teacher's (target >= 40%); lane lines and lead within 0.15 m of the teacher's: "
            f"{'yes' if (tuned['lane_lines'] or 0) <= 0.15 and (tuned['lead'] or 0) <= 0.15 else 'no'}"]


def bench_distill(cfg: DistillBench, *, on_progress: Callable[[int, int, str], None] | None = None
                  ) -> Iterator[str]:
    """Run the bench; yields result lines as they are measured."""
    from spark_distill.synth.fit import copy_fitted

    report = on_progress or (lambda done, total, note: None)
    stages = 3 + len(cfg.students) + (cfg.ingested > 0) + (cfg.driver is not None)
    work = cfg.workdir if cfg.keep and cfg.workdir is not None else scratch_dir(cfg.workdir, "bench-distill-")
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}
    try:
        teacher = cfg.teacher
        if teacher is None:
            teacher = work / "teacher"
            copy_fitted(teacher)
        yield f"device: {_device_line(cfg.device)}; teacher: {teacher.name}"
        report(0, stages, "rendering and labelling the training drives")
        train_root, held_root = work / "train", work / "held"
        secs = make_dataset(train_root, drive_configs(cfg.train_drives, cfg.seconds, base=40_000 + 1000 * cfg.seed),
                            teacher, workers=cfg.workers, device=cfg.device)
        report(1, stages, "rendering and labelling the held-out drives")
        held_cfgs = drive_configs(cfg.held_drives, cfg.seconds, base=50_000 + 1000 * cfg.seed)
        secs_held = make_dataset(held_root, held_cfgs, teacher, workers=cfg.workers, device=cfg.device)
        frames = cfg.train_drives * round(cfg.seconds * 20)
        yield (f"data: {cfg.train_drives} training drives ({frames:,} frames) and {cfg.held_drives} held-out drives "
               f"of {cfg.seconds:g} s, rendered and labelled in {secs:.0f} s + {secs_held:.0f} s")
        summary["data_seconds"] = secs + secs_held
        if (mem := _gpu_memory(cfg.device)) is not None:
            yield f"GPU memory after labelling: {mem}"
        curves: dict[str, list[dict[str, Any]]] = {}
        finals: dict[str, Path] = {}
        for k, student in enumerate(cfg.students):
            report(2 + k, stages, f"training {student} ({cfg.steps} steps), then eval of its snapshots")
            result, snaps = train_student(cfg, student, train_root, work / "runs", work / "snapshots")
            metrics = score(held_root, [s.folder for s in snaps], work / "eval" / student, cfg.device)
            curves[student] = [{"step": s.step, "minutes": s.minutes, "frames": s.frames, "row": row(m)}
                               for s, m in zip(snaps, metrics.values(), strict=True)]
            finals[student] = work / "runs" / student
            yield (f"{student}: {result.steps} steps of {run_batch(finals[student])} clips in "
                   f"{result.seconds / 60:.2f} min of "
                   f"training; validation loss {_fmt(result.val_before)} -> {_fmt(result.val_after)}")
            if cfg.policy_steps:
                result, snaps = train_student(cfg, student, train_root, work / "runs", work / "snapshots",
                                              stage_two_of=finals[student])
                metrics = score(held_root, [s.folder for s in snaps], work / "eval" / stage_two(student), cfg.device)
                last = curves[student][-1]  # stage 2 goes on from where stage 1 ended
                curves[stage_two(student)] = [
                    {"step": last["step"] + s.step, "minutes": last["minutes"] + s.minutes,
                     "frames": last["frames"] + s.frames, "row": row(m)}
                    for s, m in zip(snaps, metrics.values(), strict=True)]
                finals[student] = work / "runs" / stage_two(student)
                yield (f"{student}, stage 2 (policy half renewed on the frozen vision): {result.steps} steps in "
                       f"{result.seconds / 60:.2f} min; validation loss {_fmt(result.val_before)} -> "
                       f"{_fmt(result.val_after)}")
            if (mem := _gpu_memory(cfg.device)) is not None:
                yield f"GPU memory after {student}: {mem}"
        summary["curves"] = curves
        if cfg.out is not None:  # the curves now, in case a later stage does not finish (a device call's time limit)
            cfg.out.mkdir(parents=True, exist_ok=True)
            files.write_json_atomic(cfg.out / "distill.json", summary)
        yield "held-out drives: plan error (m) vs the path driven, the teacher's own, and vs the teacher's plan"
        yield from curve_lines(curves)
        if cfg.save_student is not None:
            from spark_distill.models.pretrained import save_pretrained

            first = cfg.students[0]
            final = curves[stage_two(first) if cfg.policy_steps else first][-1]
            info = save_pretrained(finals[first], cfg.save_student, teacher=teacher,
                                   provenance={"bench": summary["config"], "held_out": final})
            yield f"pre-trained student ({first}) -> {cfg.save_student} ({info['bytes'] / 1e6:.2f} MB)"
        done = 2 + len(cfg.students)
        if cfg.ingested:
            report(done, stages, "held-out drives through the camera, HEVC and ingest")
            done += 1
            ing_root = work / "held-ingested"
            make_dataset(ing_root, held_cfgs[: cfg.ingested], teacher, workers=cfg.workers, device=cfg.device,
                         ingested=True)
            metrics = score(ing_root, list(finals.values()), work / "eval" / "ingested", cfg.device)
            summary["ingested"] = {n: row(m) for n, m in metrics.items()}
            for n, r in summary["ingested"].items():
                yield (f"  {n} on {cfg.ingested} ingested held-out drive(s): driven@2 {_fmt(r['driven@2'])} "
                       f"(teacher {_fmt(r['teacher_driven@2'])}), vs teacher@2 {_fmt(r['vs_teacher@2'])}")
        if cfg.driver is not None:
            report(done, stages, f"personalisation: driver {cfg.driver}")
            base = 60_000 + 1000 * cfg.seed
            d_train, d_held = work / "driver-train", work / "driver-held"
            make_dataset(d_train, drive_configs(cfg.driver_drives, cfg.seconds, base=base, driver=cfg.driver),
                         teacher, workers=cfg.workers, device=cfg.device)
            make_dataset(d_held, drive_configs(cfg.driver_held, cfg.seconds, base=base + 500, driver=cfg.driver),
                         teacher, workers=cfg.workers, device=cfg.device)
            p = personalise(cfg, teacher if cfg.tune_base == "teacher" else finals[cfg.students[0]], d_train, d_held,
                            work / "runs", work / "eval" / "driver")
            summary["personalisation"] = p
            yield from personal_lines(p)
        report(stages, stages, "")
        if cfg.out is not None:
            cfg.out.mkdir(parents=True, exist_ok=True)
            files.write_json_atomic(cfg.out / "distill.json", summary)
            if (png := plot(cfg.out / "distill.png", curves)) is not None:
                yield f"plot: {png}"
            if (cfg.out / "distill.json").exists():
                yield f"figures: {cfg.out / 'distill.json'}"
            if cfg.driver is not None and (work / "eval" / "driver" / "driver_offset.png").exists():
                shutil.copyfile(work / "eval" / "driver" / "driver_offset.png", cfg.out / "driver_offset.png")
    finally:
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)


def _gpu_memory(device: str | None) -> str | None:
    """What the process holds on the GPU now and at its peak since the last call (None off CUDA)."""
    import torch

    if not torch.cuda.is_available() or (device is not None and not device.startswith("cuda")):
        return None
    held, peak = torch.cuda.memory_reserved() / 1e9, torch.cuda.max_memory_reserved() / 1e9
    used = torch.cuda.memory_allocated() / 1e9
    torch.cuda.reset_peak_memory_stats()
    return f"{used:.1f} GB allocated, {held:.1f} GB reserved, peak reserved {peak:.1f} GB"


def _device_line(device: str | None) -> str:
    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"
