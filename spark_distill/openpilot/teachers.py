# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Teacher loading: an openpilot driving model as a release ships it, with its metadata. Split (driving_vision.onnx +
driving_policy.onnx) or combined (one supercombo.onnx / driving_supercombo.onnx); the layout (releases.py) is
recognised from the file set and the graphs' inputs. Input names and shapes come from the graphs, output slices from
the metadata, resolved against the output's width (`pad` dropped). Main entry point: `load_teacher`.

A label set stores a teacher's outputs as two members, `vision` and `policy`. A split teacher's are its two output
vectors as they are (padding included); a combined model's one vector is split by head: the policy's heads (plan,
desire_state, desired_curvature, action) into `policy`, the rest (hidden_state included) into `vision`, each in the
model's order with the padding left out (`Teacher.member_columns` says which columns of the model's output each
member holds), so that every reader of a label set sees the same two members whatever the topology.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.errors import LabelError, MissingDependencyError
from spark_distill.openpilot import contract as C
from spark_distill.openpilot import releases as R
from spark_distill.openpilot.metadata import read_output_slices, resolve_slices, slices_to_json

IMAGE_INPUTS = R.IMAGE_INPUTS
POLICY_HEADS = ("plan", "desire_state", "desired_curvature", "action")  # a combined model's heads stored as `policy`
_ONNX_DTYPES = {1: "float32", 2: "uint8", 10: "float16", 7: "int64", 6: "int32", 11: "float64"}


@dataclass(frozen=True)
class ModelFile:
    """One ONNX model of the teacher."""

    path: Path
    sha256: str
    inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    output: str
    width: int  # the output's width, padding included
    slices: dict[str, slice]  # heads (no `pad`), resolved against `width`
    slices_from: str
    raw_slices: dict[str, list[int | None]]  # as the metadata wrote them (`pad` included)

    def describe(self) -> dict[str, Any]:
        return {"file": self.path.name, "sha256": self.sha256,
                "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
                "output": {"name": self.output, "width": self.width}, "slices_from": self.slices_from,
                "metadata_slices": self.raw_slices}


def _runs(spans: list[slice]) -> list[list[int]]:
    """Consecutive spans merged: [[start, stop], ...]."""
    out: list[list[int]] = []
    for s in sorted(spans, key=lambda s: s.start):
        if out and out[-1][1] == s.start:
            out[-1][1] = s.stop
        else:
            out.append([s.start, s.stop])
    return out


@dataclass(frozen=True)
class Teacher:
    """An openpilot driving model (split pair or one combined model), its layout and what the label pass needs to
    know about it. `vision` is the vision model, or the one model of a combined teacher (`policy` None)."""

    name: str
    vision: ModelFile
    policy: ModelFile | None
    layout: R.Layout

    @property
    def combined(self) -> bool:
        return self.policy is None

    @property
    def models(self) -> list[tuple[str, ModelFile]]:
        """(role, model) of each ONNX model the backends run: vision and policy, or the combined model as vision."""
        return [("vision", self.vision)] + ([("policy", self.policy)] if self.policy is not None else [])

    @property
    def sha256(self) -> str:
        return hashlib.sha256("".join(m.sha256 for _, m in self.models).encode()).hexdigest()

    @property
    def image_inputs(self) -> dict[str, str]:
        """image input name -> camera ('road' / 'wide'), in graph order."""
        return {n: IMAGE_INPUTS[n] for n in self.vision.inputs if n in IMAGE_INPUTS}

    @property
    def history_inputs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The inputs modeld's state fills (all but the images), in graph order: the policy's or the combined's."""
        src = self.vision if self.policy is None else self.policy
        return {n: v for n, v in src.inputs.items() if n not in IMAGE_INPUTS}

    @property
    def history_len(self) -> int:
        return self.layout.history.features

    @property
    def slices(self) -> dict[str, slice]:
        """Every head's slice in the output of its model (split: vision's and policy's together)."""
        return {**self.vision.slices, **(self.policy.slices if self.policy is not None else {})}

    def member_columns(self) -> dict[str, list[list[int]]]:
        """The columns of the model output(s) each label-set member holds, as [start, stop] runs."""
        if self.policy is not None:
            return {"vision": [[0, self.vision.width]], "policy": [[0, self.policy.width]]}
        heads = self.vision.slices
        return {"vision": _runs([s for h, s in heads.items() if h not in POLICY_HEADS]),
                "policy": _runs([s for h, s in heads.items() if h in POLICY_HEADS])}

    def member_slices(self) -> dict[str, dict[str, slice]]:
        """Every head's slice in its label-set member's vector (split: the models' own slices)."""
        if self.policy is not None:
            return {"vision": dict(self.vision.slices), "policy": dict(self.policy.slices)}
        out: dict[str, dict[str, slice]] = {}
        for member, runs in self.member_columns().items():
            offset, starts = 0, {}
            for a, b in runs:
                starts[(a, b)] = offset
                offset += b - a
            heads = {}
            for h, s in self.vision.slices.items():
                if (h in POLICY_HEADS) == (member == "policy"):
                    a, b = next(r for r in runs if r[0] <= s.start and s.stop <= r[1])
                    heads[h] = slice(starts[(a, b)] + s.start - a, starts[(a, b)] + s.stop - a)
            out[member] = heads
        return out

    @property
    def widths(self) -> dict[str, int]:
        """Width of each label-set member's vector."""
        return {m: sum(b - a for a, b in runs) for m, runs in self.member_columns().items()}

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "sha256": self.sha256, "layout": self.layout.describe(),
               "vision": self.vision.describe()}
        if self.policy is not None:
            out["policy"] = self.policy.describe()
        return out

    def output_slices(self) -> dict[str, dict[str, list[int]]]:
        """The label set's `output_slices`: each head's [start, stop] in its member's vector."""
        return {m: slices_to_json(s) for m, s in self.member_slices().items()}


def _read_model(path: Path) -> tuple[Any, ModelFile]:
    import onnx

    if not path.is_file():
        raise LabelError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as e:
        raise LabelError(f"{path}: not a readable ONNX model ({e})") from e
    initializers = {i.name for i in model.graph.initializer}
    inputs = {}
    for i in model.graph.input:
        if i.name in initializers:
            continue
        t = i.type.tensor_type
        shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim)
        inputs[i.name] = (shape, _ONNX_DTYPES.get(t.elem_type, f"onnx-type-{t.elem_type}"))
    if len(model.graph.output) != 1:
        raise R.unknown(f"{path.name} has {len(model.graph.output)} outputs "
                        f"({', '.join(o.name for o in model.graph.output)}), not one flat vector (a stateful graph?)")
    out = model.graph.output[0]
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    props = {p.key: p.value for p in model.metadata_props}
    raw, source = read_output_slices(path, props)
    known = [s.stop for s in raw.values() if s.stop is not None and s.stop > 0]
    width = dims[-1] if dims and dims[-1] > 0 else max(known, default=0)
    if not width:
        raise LabelError(f"{path}: the output's width is neither in the graph nor in the slices")
    slices = resolve_slices(raw, width, str(path))
    raw_json = {k: [s.start, s.stop] for k, s in raw.items()}
    return model, ModelFile(path, hashlib.sha256(data).hexdigest(), inputs, out.name, width, slices, source, raw_json)


def _check(teacher: Teacher) -> None:
    """What the label pass needs beyond the layout's inputs: the heads it reads."""
    heads = teacher.slices
    where = (teacher.vision if teacher.combined else teacher.policy).path.name
    if "hidden_state" not in teacher.vision.slices:
        raise LabelError(f"{teacher.vision.path.name}: the output slices have no 'hidden_state'")
    hs = teacher.vision.slices["hidden_state"]
    if hs.stop - hs.start != C.FEATURE_LEN:
        raise LabelError(f"hidden_state is {hs.stop - hs.start} wide but features_buffer wants {C.FEATURE_LEN}")
    if teacher.layout.history.prev_curv == "own" and "desired_curvature" not in heads:
        raise LabelError(f"{where}: the model takes its own prev_desired_curv but its output slices have no "
                         "'desired_curvature'")
    if "plan" not in heads:
        raise LabelError(f"{where}: the output slices have no 'plan'")
    if teacher.layout.control == "action" and "action" not in heads:
        raise LabelError(f"{where}: the output slices have no 'action' (a {teacher.layout.key} model's control)")


def load_teacher(paths: list[Path]) -> tuple[Teacher, Any, Any]:
    """A Teacher from a folder (a release's model files) or its ONNX paths (vision + policy, or one combined).

    Returns (teacher, vision or combined ModelProto, policy ModelProto or None)."""
    if len(paths) == 1 and not paths[0].exists():
        raise LabelError(f"{paths[0]}: not found (--teacher takes a folder with an openpilot release's models: "
                         "driving_vision.onnx + driving_policy.onnx, supercombo.onnx or driving_supercombo.onnx)")
    if len(paths) == 1 and paths[0].is_dir():
        topology, files = R.model_files(paths[0])
        name = paths[0].name
    elif len(paths) == 2:
        topology, files, name = "split", list(paths), paths[0].parent.name
    elif len(paths) == 1:
        topology, files, name = "combined", list(paths), paths[0].parent.name
    else:
        raise LabelError(f"--teacher takes a folder with an openpilot release's models, or their ONNX files; got "
                         f"{', '.join(map(str, paths)) or 'nothing'}")
    for p in files:
        if not p.exists():
            raise LabelError(f"{p}: not found")
    models = [_read_model(p) for p in files]
    if topology == "split":
        (vision_model, vision), (policy_model, policy) = models
        layout = R.recognise("split", vision.inputs, policy.inputs)
    else:
        (vision_model, vision), = models
        policy_model, policy = None, None
        layout = R.recognise("combined", vision.inputs)
    teacher = Teacher(name or "teacher", vision, policy, layout)
    _check(teacher)
    return teacher, vision_model, policy_model


def _history_line(layout: R.Layout) -> str:
    h = layout.history
    every = "every frame (20 Hz)" if h.stride == 1 else f"every {h.stride}th frame"
    feats = (f"{h.features} entries, {every}, " + ("including this frame (the vision ran first)" if h.includes_current
                                                     else "past frames only (the model adds this frame's own)"))
    desire = f"{h.desire} entries" + ("" if h.stride == 1 else f", each the max of {h.stride} 20 Hz pulses")
    curv = {"own": "its own previous outputs (20 Hz)", "zeros": "zeros (as modeld fed it)", "absent": None}[h.prev_curv]
    parts = [f"image pair (t-{h.pair_skip}, t)", f"features_buffer {feats}", f"desire pulses {desire}"]
    if curv:
        parts.append(f"prev_desired_curv {curv}")
    if layout.lateral_params:
        parts.append("lateral_control_params (v_ego, lateral delay)")
    if layout.action_t:
        parts.append("action_t (lateral, longitudinal delay) + 1.5 DT_MDL")
    return "; ".join(parts)


def _heads_line(model: ModelFile) -> str:
    from spark_distill.openpilot.outputs import is_mixture

    def one(name: str, s: slice) -> str:
        w = s.stop - s.start
        multi = C.HEADS.get(name, ("raw", {}))[1].get("in_n")  # plan, lead: a mixture or one Gaussian, by width
        kind = "" if not multi else " mixture" if is_mixture(name, w) else " single Gaussian"
        return f"{name} {s.start}:{s.stop} ({w}{kind})"

    end = max(s.stop for s in model.slices.values())
    pad = f"; padding {model.width - end}" if end < model.width else ""
    return f"width {model.width}{pad}: " + ", ".join(one(n, s) for n, s in sorted(model.slices.items(),
                                                                                   key=lambda kv: kv[1].start))


def teacher_rows(teacher: Teacher) -> dict[str, str]:
    """What a teacher was recognised as, one row per fact (`inspect --teacher`)."""
    lay = teacher.layout
    rows = {"layout": f"{lay.key}: openpilot {lay.releases} (row{'s' if '-' in lay.rows else ''} {lay.rows} of "
                      "openpilot_releases.md)",
            "topology": (f"{lay.topology}: " + " + ".join(m.path.name for _, m in teacher.models)),
            "controls from": {"desired_curvature": "the desired_curvature output",
                              "plan": "the plan (curvature and acceleration derived from it)",
                              "action": "the action head (curvature = action[0] / max(1, v)^2, acceleration = "
                                        "action[1])"}[lay.control],
            "history": _history_line(lay)}
    for role, model in teacher.models:
        label = "model" if teacher.combined else role
        rows[f"{label} inputs"] = ", ".join(f"{n} {list(s)} {d}" for n, (s, d) in model.inputs.items())
        rows[f"{label} heads"] = _heads_line(model)
        rows[f"{label} slices from"] = ("the ONNX's output_slices property" if model.slices_from == "onnx"
                                        else model.slices_from)
    if teacher.combined:
        rows["label-set members"] = ", ".join(f"{m} = output columns {' + '.join(f'{a}:{b}' for a, b in runs)}"
                                              for m, runs in teacher.member_columns().items())
    return rows


def make_batch_dynamic(model: Any) -> Any:
    """A copy of the model with a symbolic batch dimension, so one run serves B segments.

    openpilot graphs are exported with batch 1; Reshape targets with a leading 1 become 0 ("copy the
    input's dim"), which keeps the batch through reshapes. The label pass checks the result against
    batch-1 runs before trusting it (`check_batching`)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for value in list(m.graph.input) + list(m.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]
    consts = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in consts:
            t = consts[node.input[1]]
            shape = onnx.numpy_helper.to_array(t).copy()
            if shape.ndim == 1 and len(shape) > 1 and shape[0] == 1:
                shape[0] = 0
                t.CopyFrom(onnx.numpy_helper.from_array(shape, t.name))
    return m


def random_inputs(inputs: dict[str, tuple[tuple[int, ...], str]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the graph's shapes with batch `batch` (for parity and batching checks)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in inputs.items():
        full = (batch, *shape[1:])
        out[name] = (rng.integers(0, 256, size=full, dtype=np.uint8) if dtype == "uint8"
                     else rng.standard_normal(full).astype(dtype))
    return out


def check_batching(static_model: Any, dynamic_model: Any, inputs: dict[str, tuple[tuple[int, ...], str]],
                   *, batch: int = 3) -> bool:
    """Whether the batch-dynamic graph gives, per row, what the batch-1 graph gives (ONNX Runtime, CPU)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError("pip install onnxruntime") from e
    feeds = random_inputs(inputs, batch)
    try:
        dyn = ort.InferenceSession(dynamic_model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = dyn.run(None, feeds)[0]
    except Exception:
        return False
    ref = ort.InferenceSession(static_model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([ref.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(batch)])
    return got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-5)
