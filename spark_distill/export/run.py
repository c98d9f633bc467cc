# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill export`: a trained run (or one checkpoint) -> ONNX that openpilot can load, verified.

Formats:
- release (openpilot student; `split` is its former name, for split teachers): exactly the teacher's file set —
  `driving_vision.onnx` + `driving_policy.onnx`, `supercombo.onnx` or `driving_supercombo.onnx` — its own graphs
  with the trained tensors written back (`export.graph.write_back`), so inputs, outputs, names, shapes, dtypes and
  metadata properties (0.11's `output_slices` among them) are the teacher's; beside each, the teacher's own
  `_metadata.pkl` with only the model's name changed, where the release has one (0.11 has none). An unchanged graph
  is copied as is, so the folder works as a whole and loads as a teacher of the same recognised layout. Verified
  on random inputs and on the inputs modeld's loop of the layout builds over a clip of the run's dataset.
- combined (any student): one graph, inputs img, big_img [1,12,128,256] uint8, desire [1,8],
  traffic_convention [1,2], state [1,H] (+ v_ego [1] where the student reads it), outputs vision_outputs,
  policy_outputs, state_out; opset 14 by default.
A combined graph declares v_ego only where the student's policy uses it (0.10.0's
lateral_control_params); the exporter drops an unused input, so the graph of a student of a 0.10.1 .. 0.10.3
teacher (desire_pulse, traffic_convention, features_buffer) has none. Consumers feed
the inputs a graph declares (graph.input, or input_shapes in the metadata pkl), as openpilot's modeld and
its ONNX compile step do; so do the checks here and eval.

Verification: ONNX Runtime against the merged torch model on random inputs and on frames of the run's
own dataset (state carried through a clip on both sides), fp32 tolerance 1e-4 max abs (fp16: 1e-2
relative to the output scale); then the consumer check (`export.consumer`): tinygrad, which openpilot
compiles its models with, against ONNX Runtime on a few of the same inputs (`check`: auto runs it when
tinygrad is importable). A larger difference fails the export and leaves nothing behind. The files written,
export.json among them: docs/formats.md, "Exports".
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spark_distill.data import files, shards, store
from spark_distill.errors import ConfigError, ExportError, MissingDependencyError, OnnxMismatchError
from spark_distill.export import consumer
from spark_distill.export import graph as G
from spark_distill.models.restore import TrainedStudent, load_trained
from spark_distill.openpilot.onnx_import import cpu_session
from spark_distill.progress import Stages

log = logging.getLogger(__name__)

FORMATS = ("auto", "release", "split", "combined")  # split: release's former name (a split teacher's only)
PRECISIONS = ("fp32", "fp16")
CHECKS = ("auto", "tinygrad", "none")
CONSUMER_FEEDS = 3  # inputs per graph through tinygrad: one random, then dataset frames (~0.3 s each after the first)
FP32_TOLERANCE = 1e-4
STAGES = 5  # progress steps of both formats: merge; the graph or the vision half; verify or the policy half; tinygrad;
# latency and writing


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    source: Path  # run folder or checkpoint folder
    output: Path
    format: str = "auto"  # auto: split for the openpilot student, combined for compact ones
    opset: int = 14
    precision: str = "fp32"
    verify_frames: int = 20  # frames of the run's dataset fed through both models (0: random inputs only)
    check: str = "auto"  # consumer check: tinygrad vs ORT; auto: when tinygrad is importable (else noted, skipped)


@dataclass
class ExportResult:
    format: str
    files: dict[str, Path] = field(default_factory=dict)
    parameters: int = 0
    bytes: int = 0
    max_diff_random: float = 0.0
    max_diff_real: float | None = None
    tolerance: float = FP32_TOLERANCE
    latency_ms: float = 0.0
    op_types: dict[str, int] = field(default_factory=dict)
    written_back: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    step: int = 0
    tinygrad: consumer.TinygradResult | None = None
    tinygrad_skipped: str | None = None  # why the consumer check did not run (check auto or none)


class CombinedModel(nn.Module):
    """One student step with explicit state, float32 at the boundary whatever the weights' dtype."""

    def __init__(self, student: nn.Module, dtype: torch.dtype, with_v_ego: bool) -> None:
        super().__init__()
        self.student, self.dtype, self.with_v_ego = student, dtype, with_v_ego

    def forward(self, img: torch.Tensor, big_img: torch.Tensor, desire: torch.Tensor, traffic_convention: torch.Tensor,
                state: torch.Tensor, v_ego: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        d = self.dtype
        v, p, nxt = self.student(img, big_img, desire.to(d), traffic_convention.to(d), state.to(d),
                                 v_ego if self.with_v_ego else None)
        return v.float(), p.float(), nxt.float()


def _real_clip(spec: dict[str, Any], frames: int) -> dict[str, np.ndarray] | None:
    """The first clip of the run's validation split (else training split): road, wide, desire, traffic, v_ego."""
    from spark_distill.data.pairs import read_lockstep, shard_pairs
    from spark_distill.errors import DatasetError

    if frames <= 0 or not isinstance(spec.get("root"), str) or not isinstance(spec.get("labels"), str):
        return None  # random inputs only (a run from before these fields, or an edited student.json)
    try:
        root = store.local_root(spec["root"])
    except DatasetError:
        return None  # a remote root out of reach: random inputs only
    if not (root / "frames" / shards.MANIFEST).exists():
        return None
    try:
        pairs = None
        for split in ("val", "train"):
            try:
                pairs, _ = shard_pairs(root, spec["labels"], split=split)
                break
            except DatasetError:
                continue
        if not pairs:
            return None
        f, _ = next(read_lockstep(pairs[0]))
    except (DatasetError, StopIteration, KeyError):
        return None
    s = shards.decode_sample(f)
    n = min(frames, len(s["meta"]["frame_ids"]))
    return {"road": s["road"][:n], "wide": s["wide"][:n], "desire": s["desire"][:n], "traffic": s["traffic"],
            "v_ego": s["car"][:n, 0], "start": np.array(s["meta"]["clip"] == 0)}


def _stacks(clip: dict[str, np.ndarray], i: int, skip: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The 2-frame image stacks of frame i, `skip` frames apart, as training builds them (train.step.Unroll)."""
    out = []
    for cam in ("road", "wide"):
        x = clip[cam]
        older = x[i - skip] if i >= skip else (np.zeros_like(x[0]) if clip["start"] else x[0])
        out.append(np.concatenate([older, x[i]], 0)[None])
    return out[0], out[1]


def _latency_ms(run: Any, repeats: int = 20) -> float:
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1000


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b,
                                                                                                       strict=True))


def _export_combined(t: TrainedStudent, cfg: ExportConfig, result: ExportResult, stage: Stages) -> None:
    import onnx

    student = t.student
    openpilot = t.spec["architecture"]["kind"] == "openpilot"
    if cfg.precision == "fp16" and openpilot:
        raise ConfigError("--precision fp16 is for the compact students; the openpilot student keeps the teacher's "
                          "own dtypes")
    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    speed = openpilot or bool(t.spec["architecture"].get("speed", False))  # the policy reads v_ego
    ref = CombinedModel(student, torch.float32, speed).eval()
    model = CombinedModel(student if dtype == torch.float32 else _half_copy(student), dtype, speed).eval()
    state_len = student.initial_state(1).shape[1]
    rng = np.random.default_rng(0)
    names = ["img", "big_img", "desire", "traffic_convention", "state"] + ["v_ego"] * speed

    def random_feed() -> dict[str, np.ndarray]:
        feed = {"img": rng.integers(0, 256, (1, 12, 128, 256), dtype=np.uint8),
                "big_img": rng.integers(0, 256, (1, 12, 128, 256), dtype=np.uint8),
                "desire": np.eye(8, dtype=np.float32)[rng.integers(0, 8)][None],
                "traffic_convention": np.array([[1.0, 0.0]], np.float32),
                "state": np.zeros((1, state_len), np.float32)}
        if speed:
            feed["v_ego"] = np.array([rng.uniform(0, 30)], np.float32)
        return feed

    example = random_feed()
    stage("writing the ONNX graph")
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(example[n]) for n in names), buf, input_names=names,
                          output_names=["vision_outputs", "policy_outputs", "state_out"], opset_version=cfg.opset,
                          dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    declared = _declared_inputs(proto, {n: example[n].shape for n in names})
    G.set_property(proto, "output_slices", base64.b64encode(pickle.dumps(student.policy_slices)).decode())
    G.set_property(proto, "vision_output_slices", base64.b64encode(pickle.dumps(student.vision_slices)).decode())
    pair_skip = getattr(student, "pair_skip", 4)  # frames between the two images (1: a 20 Hz supercombo's)
    G.set_property(proto, "spark_distill", json.dumps({"run": str(t.run_dir), "step": t.step, "format": "combined",
                                                      "state_len": state_len, "precision": cfg.precision,
                                                      "pair_skip": pair_skip}))
    result.op_types = G.op_types(proto)
    data = proto.SerializeToString()
    sess = cpu_session(data)

    ort_feeds: list[dict[str, np.ndarray]] = []  # as ONNX Runtime was fed: the consumer check reuses them

    def both(feeds: list[dict[str, np.ndarray]]) -> float:
        """Outputs of torch and ORT over consecutive feeds, each side carrying its own state."""
        diffs, s_ref, s_ort = [], None, None
        for feed in feeds:
            f_ref = dict(feed, state=s_ref if s_ref is not None else feed["state"])
            f_ort = dict(feed, state=s_ort if s_ort is not None else feed["state"])
            ort_feeds.append(f_ort)
            with torch.no_grad():
                r = [x.numpy() for x in ref(*(torch.from_numpy(f_ref[n]) for n in names))]
            o = sess.run(None, {n: f_ort[n] for n in declared})
            scale = 1.0 if dtype == torch.float32 else 1.0 + max(float(np.abs(x).max()) for x in r)
            diffs.append(_max_diff(r, o) / scale)
            s_ref, s_ort = r[2], o[2]
        return max(diffs)

    result.tolerance = FP32_TOLERANCE if dtype == torch.float32 else 1e-2
    stage("ONNX Runtime vs torch")
    result.max_diff_random = both([random_feed() for _ in range(4)])
    n_random = len(ort_feeds)
    clip = _real_clip(t.spec, cfg.verify_frames)
    if clip is not None:
        feeds = []
        for i in range(len(clip["road"])):
            img, big = _stacks(clip, i, pair_skip)
            feed = {"img": img, "big_img": big, "desire": clip["desire"][i:i + 1].astype(np.float32),
                    "traffic_convention": clip["traffic"][None].astype(np.float32),
                    "state": np.zeros((1, state_len), np.float32)}
            if speed:
                feed["v_ego"] = clip["v_ego"][i:i + 1].astype(np.float32)
            feeds.append(feed)
        result.max_diff_real = both(feeds)
    _check_tolerance(result)
    stage("tinygrad vs ONNX Runtime")
    _consumer_check(cfg, result, {"driving_model.onnx": data},
                    {"driving_model.onnx": _consumer_feeds(ort_feeds[:n_random], ort_feeds[n_random:])},
                    fp16=dtype == torch.float16)
    stage("latency, writing the files")
    result.latency_ms = _latency_ms(lambda: sess.run(None, {n: example[n] for n in declared}))
    cfg.output.mkdir(parents=True, exist_ok=True)
    path = cfg.output / "driving_model.onnx"
    G.check_and_save(proto, path, data)
    meta = cfg.output / "driving_model_metadata.pkl"
    files.write_bytes_atomic(meta, G.metadata_pkl(proto, "policy_model", f"spark-distill-{t.run_dir.name}",
                                                   student.policy_slices))
    result.files = {"model": path, "metadata": meta}
    result.parameters, result.bytes = G.parameter_count(proto), len(data)


def _declared_inputs(proto: Any, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """The inputs the exported graph declares, checked against the shapes exported under their names.

    The exporter drops an input the graph has no use for (v_ego, when the teacher's policy has no
    lateral_control_params: openpilot 0.10), so a consumer feeds what the graph declares, as openpilot's
    modeld does from the metadata's input_shapes. Names are given by position: a dropped input anywhere
    but last would shift them, which the shape check catches."""
    declared = G.shapes(proto.graph.input)
    if any(n not in expected or tuple(expected[n]) != shape for n, shape in declared.items()):
        raise ExportError(f"exported graph inputs {declared} do not match the model's "
                          f"{ {n: tuple(s) for n, s in expected.items()} }")
    return list(declared)


def _half_copy(student: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(student).half()


def _check_tolerance(result: ExportResult) -> None:
    worst = max(result.max_diff_random, result.max_diff_real or 0.0)
    if not worst <= result.tolerance:  # NaN fails too
        raise OnnxMismatchError(f"ONNX Runtime differs from the torch model by {worst:.3g} (tolerance "
                                f"{result.tolerance:g}); nothing was written")


def _consumer_feeds(random: list[dict[str, np.ndarray]], real: list[dict[str, np.ndarray]]
                    ) -> list[dict[str, np.ndarray]]:
    """What tinygrad runs: one random feed, then dataset frames (else more random feeds), CONSUMER_FEEDS in all."""
    return random[:1] + real[:CONSUMER_FEEDS - 1] if real else random[:CONSUMER_FEEDS]


def _consumer_check(cfg: ExportConfig, result: ExportResult, graphs: dict[str, bytes],
                    feeds: dict[str, list[dict[str, np.ndarray]]], *, fp16: bool) -> None:
    """tinygrad against ONNX Runtime (`export.consumer`) as `cfg.check` asks; the outcome goes into `result`."""
    if cfg.check == "none":
        result.tinygrad_skipped = "--check none"
        return
    try:
        result.tinygrad = consumer.tinygrad_check(graphs, feeds, fp16=fp16)
    except MissingDependencyError as e:  # no tinygrad, or its CPU device has no clang: auto notes it and goes on
        if cfg.check != "auto":
            raise
        result.tinygrad_skipped = str(e)
        log.warning("tinygrad check skipped: %s", e)


class _Recorder(nn.Module):
    """A graph of the student that keeps the inputs it is called with (what modeld would feed the exported file)."""

    def __init__(self, graph: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.graph, self.names, self.seen = graph, names, []

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        self.seen.append({n: a.detach().cpu().numpy() for n, a in zip(self.names, args, strict=True)})
        return self.graph(*args)


def _real_graph_feeds(student: Any, clip: dict[str, np.ndarray] | None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph of the student (vision, policy or the one combined model), the inputs it gets over the run's first
    dataset clip when the student runs it with modeld's loop of its layout: images, and the histories built from
    them (as the car would feed the exported files)."""
    if clip is None:
        return {}
    roles = ["model"] if student.combined else ["vision", "policy"]
    names = {r: list((student.teacher.vision if r != "policy" else student.teacher.policy).inputs) for r in roles}
    recorders = {r: _Recorder(getattr(student, r), names[r]) for r in roles}
    for r in roles:
        setattr(student, r, recorders[r])
    try:
        state = student.initial_state(1)
        for i in range(len(clip["road"])):
            img, big = _stacks(clip, i, student.pair_skip)
            _, _, state = student(torch.from_numpy(img), torch.from_numpy(big),
                                  torch.from_numpy(clip["desire"][i:i + 1].astype(np.float32)),
                                  torch.from_numpy(clip["traffic"][None].astype(np.float32)), state,
                                  torch.from_numpy(clip["v_ego"][i:i + 1].astype(np.float32)))
    finally:
        for r in roles:
            setattr(student, r, recorders[r].graph)
    return {r: recorders[r].seen for r in roles}


def _release_metadata(src: Path, name: str) -> bytes | None:
    """The teacher's own `<stem>_metadata.pkl` (read with the restricted unpickler) with only the model's name
    changed (the key the release uses: model_checkpoint, vision_model, policy_model or model): output slices as
    shipped (`pad` included), input and output shapes, every other key kept. None where the release has none
    (0.11: the slices live in the ONNX's metadata_props, which the written-back graph keeps)."""
    from spark_distill.openpilot.metadata import safe_loads

    pkl = src.with_name(f"{src.stem}_metadata.pkl")
    if not pkl.is_file():
        return None
    meta = safe_loads(pkl.read_bytes(), source=str(pkl))
    if not isinstance(meta, dict):
        raise ExportError(f"{pkl}: the teacher's metadata is a {type(meta).__name__}, not a dict")
    keys = [k for k in ("model_checkpoint", "vision_model", "policy_model", "model") if k in meta]
    for k in keys:
        meta[k] = f"{meta[k]}+{name}"
    return pickle.dumps(meta)


def _export_release(t: TrainedStudent, cfg: ExportConfig, result: ExportResult, stage: Stages) -> None:
    """The teacher's own file set (split pair, or the one combined model) with the trained tensors written back:
    same graphs, inputs, outputs, names, shapes, dtypes and metadata properties; the `_metadata.pkl` beside each
    where the release has one."""
    import onnx

    from spark_distill.openpilot.teachers import random_inputs

    if t.spec["architecture"]["kind"] != "openpilot":
        raise ConfigError(f"--format {cfg.format} writes the teacher's own files: it needs the openpilot student (its "
                          "inputs are openpilot's history buffers); export a compact student with --format combined")
    if cfg.precision != "fp32":
        raise ConfigError(f"--format {cfg.format} keeps the teacher's own dtypes; --precision fp16 applies to "
                          "combined")
    student = t.student
    teacher = student.teacher
    if cfg.format == "split" and teacher.combined:
        raise ConfigError(f"--format split: the teacher is one combined model ({teacher.vision.path.name}); "
                          "--format release (or auto) writes it")
    roles = ([("model", teacher.vision, student.model)] if teacher.combined else
             [("vision", teacher.vision, student.vision), ("policy", teacher.policy, student.policy)])
    merged = student.state_dict()
    changes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {r: {} for r, _, _ in roles}
    for name, base in t.base.items():
        new = merged[name]
        if new.dtype.is_floating_point and not torch.equal(new, base.to(new.dtype)):
            role = name.split(".", 1)[0]
            if role not in changes:
                raise ExportError(f"trained tensor {name} belongs to none of the teacher's graphs "
                                  f"({', '.join(changes)})")
            changes[role][name] = (base.float().numpy(), new.float().numpy())
    staged: dict[str, tuple[Any, bytes, Path]] = {}  # role -> (graph, its serialized bytes, the teacher's file)
    diffs_random, diffs_real = [], []
    sessions = {}
    ort_feeds: dict[str, tuple[list, list]] = {}  # graph file -> (random, real) feeds, for the consumer check
    real_feeds = _real_graph_feeds(student, _real_clip(t.spec, cfg.verify_frames))
    for role, spec, module in roles:
        src = spec.path
        stage(f"{src.name}: trained tensors written back, ONNX Runtime vs torch")
        proto = onnx.load(str(src))
        if changes[role]:
            result.written_back += G.write_back(proto, changes[role])
            G.set_property(proto, "spark_distill", json.dumps({"run": str(t.run_dir), "step": t.step,
                                                              "source": src.name}))
        else:
            result.copied.append(src.name)
        result.op_types.update({k: result.op_types.get(k, 0) + v for k, v in G.op_types(proto).items()})
        data = proto.SerializeToString()
        staged[role] = (proto, data, src)
        sess = sessions[role] = cpu_session(data)
        for real in (False, True):
            feeds = real_feeds.get(role, []) if real else [random_inputs(spec.inputs, 1, seed=k) for k in range(3)]
            ort_feeds.setdefault(src.name, ([], []))[real].extend(feeds)
            for feed in feeds:
                with torch.no_grad():
                    r = module(*(torch.from_numpy(feed[n]) for n in spec.inputs)).float().numpy()
                o = sess.run(None, feed)[0]
                (diffs_real if real else diffs_random).append(_max_diff([r], [o]))
    result.max_diff_random = max(diffs_random)
    result.max_diff_real = max(diffs_real) if diffs_real else None
    _check_tolerance(result)
    stage("tinygrad vs ONNX Runtime")
    _consumer_check(cfg, result, {staged[r][2].name: staged[r][1] for r in staged},
                    {k: _consumer_feeds(*v) for k, v in ort_feeds.items()}, fp16=False)
    stage("latency, writing the files")
    feeds = {r: random_inputs(spec.inputs, 1) for r, spec, _ in roles}
    result.latency_ms = _latency_ms(lambda: [sessions[r].run(None, feeds[r]) for r in sessions])
    cfg.output.mkdir(parents=True, exist_ok=True)
    for role, _, _ in roles:
        proto, data, src = staged[role]
        path = cfg.output / src.name
        if src.name in result.copied:
            shutil.copyfile(src, path.with_name(path.name + ".tmp"))
            path.with_name(path.name + ".tmp").replace(path)
        else:
            G.check_and_save(proto, path, data)
        result.files[role] = path
        meta = _release_metadata(src, f"{t.run_dir.name}@{t.step}")
        if meta is not None:
            pkl = cfg.output / f"{src.stem}_metadata.pkl"
            files.write_bytes_atomic(pkl, meta)
            result.files[f"{role}_metadata"] = pkl
        result.parameters += G.parameter_count(proto)
        result.bytes += len(data)


def export(cfg: ExportConfig, *, on_progress: Callable[[int, int, str], None] | None = None) -> ExportResult:
    """Merge, export, verify; returns what was written and measured. `on_progress(stages_done, STAGES, stage)`
    as each stage begins and once at the end."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"unknown --format {cfg.format!r}; choose one of {', '.join(FORMATS)}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 11 <= cfg.opset <= 20:
        raise ConfigError(f"--opset {cfg.opset}: choose 11..20")
    if cfg.check not in CHECKS:
        raise ConfigError(f"unknown --check {cfg.check!r}; choose one of {', '.join(CHECKS)}")
    if cfg.check == "tinygrad":
        consumer.tinygrad_module()  # a missing tinygrad fails before any work
    stage = Stages(on_progress, STAGES)
    stage("merging the adapters")
    t = load_trained(cfg.source)
    openpilot = t.spec["architecture"]["kind"] == "openpilot"
    fmt = "combined" if cfg.format == "combined" or (cfg.format == "auto" and not openpilot) else "release"
    result = ExportResult(format=fmt, step=t.step)
    with torch.no_grad():
        (_export_release if fmt == "release" else _export_combined)(t, cfg, result, stage)
    files.write_json_atomic(cfg.output / "export.json", {
        "source": str(t.run_dir.resolve()), "checkpoint": str(t.checkpoint.resolve()), "step": t.step,
        "format": fmt, "layout": t.student.layout.key if openpilot else None, "precision": cfg.precision,
        "opset": cfg.opset if fmt == "combined" else None,
        "files": {k: v.name for k, v in result.files.items()}, "parameters": result.parameters,
        "max_abs_diff_random": result.max_diff_random, "max_abs_diff_real": result.max_diff_real,
        "tolerance": result.tolerance, "ort_cpu_latency_ms": result.latency_ms, "op_types": result.op_types,
        "written_back": result.written_back, "copied_unchanged": result.copied,
        "tinygrad": result.tinygrad.as_json() if result.tinygrad else {"skipped": result.tinygrad_skipped}})
    stage.end()
    return result
