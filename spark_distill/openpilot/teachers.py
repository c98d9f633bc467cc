# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Teacher loading: openpilot's split model pair (driving_vision.onnx + driving_policy.onnx) with
its metadata. Input names and shapes come from the graphs, output slices from the metadata; an input
the label pass cannot fill, or a slice it needs, is a clear error. Main entry point: `load_teacher`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.errors import LabelError, MissingDependencyError
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.metadata import read_output_slices, slices_to_json

IMAGE_INPUTS = {"img": "road", "input_imgs": "road", "big_img": "wide", "big_input_imgs": "wide"}
POLICY_INPUTS = frozenset({"desire", "desire_pulse", "traffic_convention", "lateral_control_params",
                           "prev_desired_curv", "features_buffer"})
_ONNX_DTYPES = {1: "float32", 2: "uint8", 10: "float16", 7: "int64", 6: "int32", 11: "float64"}


@dataclass(frozen=True)
class ModelFile:
    """One ONNX model of the pair."""

    path: Path
    sha256: str
    inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    output: str
    width: int
    slices: dict[str, slice]
    slices_from: str

    def describe(self) -> dict[str, Any]:
        return {"file": self.path.name, "sha256": self.sha256,
                "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
                "output": {"name": self.output, "width": self.width}, "slices_from": self.slices_from}


@dataclass(frozen=True)
class Teacher:
    """A vision + policy pair and what the label pass needs to know about it."""

    name: str
    vision: ModelFile
    policy: ModelFile

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.vision.sha256 + self.policy.sha256).encode()).hexdigest()

    @property
    def image_inputs(self) -> dict[str, str]:
        """vision input name -> camera ('road' / 'wide')."""
        return {n: IMAGE_INPUTS[n] for n in self.vision.inputs}

    @property
    def history_len(self) -> int:
        return self.policy.inputs["features_buffer"][0][1]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "vision": self.vision.describe(),
                "policy": self.policy.describe()}

    def output_slices(self) -> dict[str, dict[str, list[int]]]:
        return {"vision": slices_to_json(self.vision.slices), "policy": slices_to_json(self.policy.slices)}


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
        raise LabelError(f"{path}: expected one flat output, found {len(model.graph.output)}")
    out = model.graph.output[0]
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    props = {p.key: p.value for p in model.metadata_props}
    slices, source = read_output_slices(path, props)
    width = dims[-1] if dims and dims[-1] > 0 else max(s.stop for s in slices.values())
    if max(s.stop for s in slices.values()) > width:
        raise LabelError(f"{path}: output slices reach {max(s.stop for s in slices.values())} but the output "
                         f"has {width} values")
    return model, ModelFile(path, hashlib.sha256(data).hexdigest(), inputs, out.name, width, slices, source)


def _check(teacher: Teacher) -> None:
    for name, (shape, _dtype) in teacher.vision.inputs.items():
        if name not in IMAGE_INPUTS:
            raise LabelError(f"vision input {name!r} cannot be filled by the label pass "
                             f"(known: {', '.join(sorted(IMAGE_INPUTS))})")
        if shape[1:] != (12, 128, 256):
            raise LabelError(f"vision input {name!r} has shape {list(shape)}, expected [1, 12, 128, 256]")
    if sorted(teacher.image_inputs.values()) != ["road", "wide"]:
        raise LabelError(f"vision inputs {sorted(teacher.vision.inputs)} must be one road and one wide image")
    for name in teacher.policy.inputs:
        if name not in POLICY_INPUTS:
            raise LabelError(f"policy input {name!r} cannot be filled by the label pass "
                             f"(known: {', '.join(sorted(POLICY_INPUTS))})")
    if "features_buffer" not in teacher.policy.inputs:
        raise LabelError("the policy has no features_buffer input; not an openpilot split policy")
    hist = teacher.policy.inputs["features_buffer"][0]
    if hist[2] != C.FEATURE_LEN or hist[1] * C.TEMPORAL_SKIP > C.FULL_HISTORY_BUFFER_LEN:
        raise LabelError(f"features_buffer has shape {list(hist)}, expected [1, <=25, {C.FEATURE_LEN}]")
    if "hidden_state" not in teacher.vision.slices:
        raise LabelError(f"{teacher.vision.path.name}: the output slices have no 'hidden_state'")
    hs = teacher.vision.slices["hidden_state"]
    if hs.stop - hs.start != hist[2]:
        raise LabelError(f"hidden_state is {hs.stop - hs.start} wide but features_buffer wants {hist[2]}")
    if "prev_desired_curv" in teacher.policy.inputs and "desired_curvature" not in teacher.policy.slices:
        raise LabelError("the policy takes prev_desired_curv but its output slices have no 'desired_curvature'")
    if "plan" not in teacher.policy.slices:
        raise LabelError(f"{teacher.policy.path.name}: the output slices have no 'plan'")


def load_teacher(paths: list[Path]) -> tuple[Teacher, Any, Any]:
    """A Teacher from a folder (driving_vision.onnx + driving_policy.onnx) or the two ONNX paths.

    Returns (teacher, vision ModelProto, policy ModelProto)."""
    if len(paths) == 1 and not paths[0].exists():
        raise LabelError(f"{paths[0]}: not found (--teacher takes a folder with driving_vision.onnx and "
                         "driving_policy.onnx)")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        vision_path, policy_path = folder / "driving_vision.onnx", folder / "driving_policy.onnx"
        name = folder.name
    elif len(paths) == 2:
        vision_path, policy_path = paths
        name = vision_path.parent.name
    else:
        raise LabelError(f"--teacher takes a folder with driving_vision.onnx and driving_policy.onnx, or those two "
                         f"files; got {', '.join(map(str, paths)) or 'nothing'}")
    for p in (vision_path, policy_path):
        if not p.exists():
            raise LabelError(f"{p}: not found")
    vision_model, vision = _read_model(vision_path)
    policy_model, policy = _read_model(policy_path)
    teacher = Teacher(name or "teacher", vision, policy)
    _check(teacher)
    return teacher, vision_model, policy_model


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
