# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill eval`: students (runs or exported ONNX) against the teacher's labels and the drive.

Every model is run over whole held-out segments as the car runs it (`evaluate.rollout`); a run from
its merged checkpoint in torch, an export through ONNX Runtime (combined: `driving_model.onnx`; release: the
drop-in files of any supported layout, with modeld's loop of that layout kept by the same code the openpilot
student uses). Controls are derived the way the label set's release derives them (openpilot.controls) and compared
with the teacher's and with the curvature the car drove.
Segments: `--segments`, else the validation split of the first run (or of the run an export came from),
else every segment. Frames inside each segment's teacher warm-up (zero-history labels) are left out
unless `include_warmup`, or unless no chosen segment is longer than the warm-up (then they are scored, with a
note, as train does). Entry point: `evaluate(EvalConfig) -> EvalResult`. metrics.json, key by key:
docs/formats.md, "Eval output".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spark_distill.data import files, shards, store
from spark_distill.data.dataset import frames_dir, label_set_dir, past_warmup
from spark_distill.errors import ConfigError
from spark_distill.evaluate import metrics as M
from spark_distill.evaluate.rollout import OnnxStep, Segment, read_segment, rollout_torch
from spark_distill.notes import note
from spark_distill.openpilot.controls import control_of, driven_curvature, model_controls
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.onnx_import import cpu_session


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    root: Path
    labels: str
    runs: tuple[Path, ...] = ()
    models: tuple[Path, ...] = ()
    segments: tuple[str, ...] = ()
    out: Path = Path("eval-out")
    include_warmup: bool = False
    device: str = "cpu"


@dataclass
class EvalResult:
    segments: list[str]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> metrics
    files: dict[str, Path] = field(default_factory=dict)
    ground_truth: dict[str, Any] = field(default_factory=dict)  # where the driven path came from (logs, pose)


def ground_truth_sources(segments: list[dict[str, Any]], chosen: list[str]) -> dict[str, Any]:
    """Which logs (rlog, qlog) and pose sources the evaluated segments' driven path came from: a qlog's ego motion is
    decimated (livePose 5 Hz, cameraOdometry 4 Hz, held between messages), so its path is coarser."""
    picked = [s for s in segments if s["name"] in chosen]
    logs = sorted({s.get("log") or "rlog" for s in picked})
    poses = sorted({s.get("pose_source") or "unrecorded" for s in picked})
    return {"logs": logs, "pose_sources": poses, "qlog_segments": sum(s.get("log") == "qlog" for s in picked)}


class _OrtGraph(nn.Module):
    """An ONNX graph through ONNX Runtime with a torch-module face (inputs in graph order)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.session = cpu_session(path)
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        feed = {n: a.detach().cpu().numpy() for n, a in zip(self.names, args, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _release_student(folder: Path) -> nn.Module:
    """An exported release folder (split pair or one combined model) as an openpilot student whose graphs run in
    ONNX Runtime, with modeld's loop of its recognised layout (the same code the openpilot student uses)."""
    from spark_distill.models.openpilot import OpenpilotStudent

    student = OpenpilotStudent.from_onnx([folder])
    if student.combined:
        student.model = _OrtGraph(student.teacher.vision.path)
    else:
        student.vision = _OrtGraph(student.teacher.vision.path)
        student.policy = _OrtGraph(student.teacher.policy.path)
    return student


def _is_release_folder(path: Path) -> bool:
    from spark_distill.openpilot.releases import COMBINED_FILES, SPLIT_FILES

    return path.is_dir() and (all((path / n).exists() for n in SPLIT_FILES)
                              or any((path / n).exists() for n in COMBINED_FILES))


def _source_run(path: Path) -> Path | None:
    """The training run a run folder or an export folder came from."""
    if (path / "student.json").exists():
        return path
    folder = path if path.is_dir() else path.parent
    export_json = folder / "export.json"
    if not export_json.exists():
        return None
    src = Path(json.loads(export_json.read_text())["source"])
    # exports written before the paths were absolute hold them relative to where `export` ran: try the export's
    # own neighbourhood too
    for candidate in (src, folder.parent / src, folder.parent.parent / src):
        if (candidate / "config.yaml").exists():
            return candidate
    note(f"{path}: its training run {src} is not found, so its validation segments are unknown; evaluating "
         "every segment (pass --segments to choose)")
    return None


def _model_runner(path: Path, device: str) -> tuple[str, Any]:
    """(display name, segment -> (vision, policy)) for a run, a checkpoint, or an export."""
    from spark_distill.models.restore import load_trained

    if (path / "student.json").exists() or (path / "meta.json").exists():
        t = load_trained(path)
        name = t.run_dir.name + (f"@{t.step}" if (path / "meta.json").exists() else "")
        return name, lambda seg: rollout_torch(t.student, seg, device=device)
    onnx_file = path / "driving_model.onnx" if path.is_dir() else path
    if onnx_file.suffix == ".onnx" and onnx_file.exists():
        step = OnnxStep(onnx_file)
        return f"{onnx_file.parent.name}/{onnx_file.name}", step.rollout
    if _is_release_folder(path):
        student = _release_student(path)
        return f"{path.name} ({student.layout.key})", lambda seg: rollout_torch(student, seg, device="cpu")
    raise ConfigError(f"{path}: not a training run, a checkpoint, a combined driving_model.onnx or an export folder "
                      "of an openpilot release's files (driving_vision.onnx + driving_policy.onnx, supercombo.onnx "
                      "or driving_supercombo.onnx)")


def _choose_segments(cfg: EvalConfig, names: list[str]) -> list[str]:
    if cfg.segments:
        missing = sorted(set(cfg.segments) - set(names))
        if missing:
            raise ConfigError(f"--segments: no segment {missing[0]!r} in {cfg.root}")
        return list(cfg.segments)
    import yaml

    from spark_distill.data.pairs import val_segments

    for src in filter(None, (_source_run(p) for p in (*cfg.runs, *cfg.models))):
        conf = yaml.safe_load((src / "config.yaml").read_text())
        held = val_segments(names, fraction=float(conf.get("val_fraction", 0.1)), seed=int(conf.get("seed", 0)))
        if held:
            return [n for n in names if n in held]
    return names


def evaluate(cfg: EvalConfig, *, on_progress: Callable[[int, int, str], None] | None = None) -> EvalResult:
    """Score every model on the chosen segments; `on_progress(segments_done, segments, segment_now)` before each
    segment and once at the end."""
    report = on_progress or (lambda done, total, note: None)
    if not cfg.runs and not cfg.models:
        raise ConfigError("give at least one --run or --model to evaluate")
    frames_segments = shards.read_manifest(frames_dir(cfg.root), shards.FRAMES_FORMAT)["segments"]
    names = [s["name"] for s in frames_segments]
    labels = shards.read_manifest(label_set_dir(cfg.root, cfg.labels), shards.LABELS_FORMAT)
    slices = labels["output_slices"]
    plan = slice(*slices["policy"]["plan"])
    chosen = _choose_segments(cfg, names)
    runners = [_model_runner(Path(p), cfg.device) for p in (*cfg.runs, *cfg.models)]
    if len({n for n, _ in runners}) != len(runners):
        runners = [(f"{i + 1}:{n}", r) for i, (n, r) in enumerate(runners)]
    warmup = 0 if cfg.include_warmup else int(labels["warmup_frames"])
    outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n, _ in runners}
    teacher_v, teacher_p, gt_path, gt_valid, kept_segments = [], [], [], [], []
    derived: dict[str, list[np.ndarray]] = {n: [] for n, _ in runners}  # each model's controls, kept frames
    teacher_derived, driven, driven_from = [], [], set()
    control = control_of(slices, labels.get("layout"))
    smooth = DelayChoice.of_labels(labels).smooth

    def controls_of(vision: np.ndarray, policy: np.ndarray, seg: Segment) -> np.ndarray:
        return model_controls(vision, policy, slices, control=control, v_ego=seg.v_ego, delays=seg.delays,
                              smooth=smooth)  # over the whole segment: modeld's low-pass runs from its start

    picture: tuple[Segment, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
    short: list[tuple[Segment, np.ndarray]] = []  # (segment, its labelled frames) with no frame past the warm-up:
    # scored with it if no segment has one (short segments: cheap to hold)

    def score(seg: Segment, keep: np.ndarray) -> None:
        nonlocal picture
        kept_segments.append(seg.name)
        per_model = {}
        for name, run in runners:
            v, p = run(seg)
            per_model[name] = (v, p)
            outputs[name].append((v[keep], p[keep]))
            derived[name].append(controls_of(v, p, seg)[keep])
        teacher_v.append(seg.teacher_vision[keep])
        teacher_p.append(seg.teacher_policy[keep])
        teacher_derived.append(controls_of(seg.teacher_vision, seg.teacher_policy, seg)[keep])
        path, valid = seg.motion().future(np.flatnonzero(keep))
        gt_path.append(path)
        gt_valid.append(valid)
        curv, source = driven_curvature(seg.v_ego, seg.yaw_rate, seg.pose_yaw_rate)
        driven.append(curv[keep])
        driven_from.add(source)
        if picture is None:
            picture = (seg, per_model)

    for i, seg_name in enumerate(chosen):
        report(i, len(chosen), seg_name)
        seg = read_segment(cfg.root, cfg.labels, seg_name)
        labelled = np.isfinite(seg.teacher_policy[:, plan]).all(1)  # a label set from a log: only labelled frames
        keep = past_warmup(seg.frame_ids, labels["segments"].get(seg_name), warmup) & labelled
        if keep.any():
            score(seg, keep)
        elif labelled.any():
            short.append((seg, labelled))
    if not kept_segments and short:  # as train does: short segments are scored with the warm-up, said once
        note(f"warm-up included: no frame of the chosen segments lies past its segment's first {warmup} frames "
             "(the teacher's start-up labels); longer segments avoid this")
        warmup = 0
        for seg, labelled in short:
            score(seg, labelled)
    report(len(chosen), len(chosen), "")
    if not kept_segments:
        raise ConfigError("no labelled frame to score in the chosen segments")
    tv, tp = np.concatenate(teacher_v), np.concatenate(teacher_p)
    gt = (np.concatenate(gt_path), np.concatenate(gt_valid))
    result = EvalResult(kept_segments)
    controls = {"control": control, "teacher": np.concatenate(teacher_derived), "driven": np.concatenate(driven),
                "driven_from": "; ".join(sorted(driven_from))}
    for name, parts in outputs.items():
        sv, sp = np.concatenate([v for v, _ in parts]), np.concatenate([p for _, p in parts])
        result.metrics[name] = M.compare(sv, sp, tv, tp, slices, gt=gt,
                                         controls={**controls, "student": np.concatenate(derived[name])})
    cfg.out.mkdir(parents=True, exist_ok=True)
    result.ground_truth = ground_truth_sources(frames_segments, kept_segments)
    files.write_json_atomic(cfg.out / "metrics.json", {"root": store.source_of(cfg.root), "labels": cfg.labels,
                                                        "segments": kept_segments, "warmup_frames": warmup,
                                                        "ground_truth": result.ground_truth,
                                                        "models": result.metrics})
    result.files["metrics"] = cfg.out / "metrics.json"
    result.files.update(_plots(cfg.out, result, picture, slices))
    return result


def errors_figure(metrics: dict[str, dict[str, Any]]) -> Any:
    """The matplotlib figure of errors_vs_horizon.png: per model, error against the teacher's plan, the path
    driven (with the teacher's own, dashed) and the teacher's lane lines, per horizon; a horizon without a
    value (past the end of every segment) is not drawn."""
    import matplotlib.pyplot as plt

    from spark_distill.openpilot import contract as C

    panels = [("plan", "plan vs teacher (m)", C.T_IDXS, "horizon (s)"),
              ("drive", "plan vs driven path (m)", C.T_IDXS, "horizon (s)"),
              ("lane_lines", "lane lines vs teacher (m)", C.X_IDXS, "distance ahead (m)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (key, title, idxs, xlabel) in zip(axes, panels, strict=True):
        for name, m in metrics.items():
            entry = m.get(key)
            if key == "drive" and entry is not None:
                entry = entry["student"]
            if entry is not None:
                y = np.array([np.nan if v is None else v for v in entry["per_horizon"]])
                ax.plot(idxs, y, "o-", ms=3, label=name)
        if key == "drive":
            first = next(iter(metrics.values())).get("drive")
            if first is not None:
                y = np.array([np.nan if v is None else v for v in first["teacher"]["per_horizon"]])
                ax.plot(idxs, y, "k--", label="teacher")
                reach = first.get("longest_horizon_s")
                if reach is not None and reach < idxs[-1]:
                    title += f"; the drive reaches {reach:.1f} s"
        ax.set_xlim(0, float(idxs[-1]) * 1.03)  # every panel spans its horizons: a line stops where data does
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plots(out: Path, result: EvalResult, picture: Any, slices: dict) -> dict[str, Path]:
    try:
        import matplotlib
    except ImportError:
        return {}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spark_distill.evaluate.draw import segment_strip

    files = {}
    fig = errors_figure(result.metrics)
    files["errors"] = out / "errors_vs_horizon.png"
    fig.savefig(files["errors"], dpi=100)
    plt.close(fig)
    if picture is not None:
        strip = segment_strip(out / "frames.png", *picture, slices)
        if strip is not None:
            files["frames"] = strip
        fig = offset_figure(*picture, slices)
        files["offset"] = out / "driver_offset.png"
        fig.savefig(files["offset"], dpi=100)
        plt.close(fig)
    return files


def offset_figure(seg: Segment, per_model: dict[str, tuple[np.ndarray, np.ndarray]], slices: dict) -> Any:
    """driver_offset.png: over the first scored segment, where each plan puts the car 2 s ahead, sideways (m,
    right of the car now), against the path the driver actually drove there: a driver with a style of their own
    (synth-route --driver) shows as a gap between the teacher's line and the driven one, which a personalised
    student closes."""
    import matplotlib.pyplot as plt

    from spark_distill.openpilot import contract as C
    from spark_distill.openpilot.outputs import parse_outputs

    h = int(np.argmin(np.abs(C.T_IDXS - 2.0)))
    rows = np.arange(len(seg.frame_ids))
    t = (seg.timestamps_ns - seg.timestamps_ns[0]) / 1e9
    path, valid = seg.motion().future(rows)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ok = valid[:, h]
    ax.plot(t[ok], path[ok, h, 1], "k-", lw=2, label="driven")
    lines = {"teacher": seg.teacher_policy, **{n: p for n, (_, p) in per_model.items()}}
    for k, (name, policy) in enumerate(lines.items()):
        y = M.plan_xy(parse_outputs(policy, slices["policy"]))[:, h, 1]
        ax.plot(t, y, "--" if name == "teacher" else "-", color="tab:gray" if name == "teacher" else f"C{k}",
                label=name)
    ax.set_xlabel("time in segment (s)")
    ax.set_ylabel("lateral at 2 s ahead (m)")
    ax.set_title(f"plan vs path driven, 2 s ahead: {seg.name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
