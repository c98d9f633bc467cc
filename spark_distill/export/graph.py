# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""ONNX graph helpers of the export: trained weights written back into the teacher's own graph,
checks (standard ops only, nothing of an adapter left), openpilot's metadata pkl, atomic saves.

Writing back instead of re-exporting keeps a drop-in policy exactly the teacher's graph — node for node,
names, shapes, dtypes, metadata properties — with only the tensors that training changed replaced. A
changed tensor is found by value: the initializer equal to its base weight (as stored or transposed, as
onnx2torch imports Gemm with transB=0); no match, or more than one, is an error, never a guess.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.data import files
from spark_distill.errors import ExportError

STANDARD_DOMAINS = ("", "ai.onnx")
ADAPTER_MARKS = ("lora", "magnitude", "dora")


def _fingerprint(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def write_back(model: Any, changes: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Replace, in `model` (ModelProto, in place), the initializer holding each changed tensor's base value by
    its new value; `changes`: name -> (base, new). Returns the replaced initializer names."""
    from onnx import numpy_helper

    found: dict[tuple, list[tuple[int, bool]]] = {}
    inits = list(model.graph.initializer)
    for i, init in enumerate(inits):
        a = numpy_helper.to_array(init)
        found.setdefault(_fingerprint(a), []).append((i, False))
        if a.ndim == 2:
            found.setdefault(_fingerprint(a.T), []).append((i, True))
    replaced = []
    for name, (base, new) in changes.items():
        hits = found.get(_fingerprint(base), [])
        if len(hits) != 1:
            raise ExportError(f"trained tensor {name}: {'no' if not hits else len(hits)} initializer(s) of the "
                              "original graph hold its base value; cannot write it back")
        i, transposed = hits[0]
        old = inits[i]
        dtype = numpy_helper.to_array(old).dtype
        value = (new.T if transposed else new).astype(dtype)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), old.name))
        replaced.append(old.name)
    return replaced


def op_types(model: Any) -> dict[str, int]:
    """Op type -> count; raises where a node is outside the standard ONNX domain or carries an adapter."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            raise ExportError(f"exported graph has a non-standard op {node.domain}::{node.op_type}")
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for init in model.graph.initializer:
        if any(mark in init.name.lower() for mark in ADAPTER_MARKS):
            raise ExportError(f"exported graph still holds adapter tensor {init.name}")
    return dict(sorted(counts.items()))


def parameter_count(model: Any) -> int:
    return int(sum(np.prod(i.dims) for i in model.graph.initializer))


def shapes(values: Any) -> dict[str, tuple[int, ...]]:
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in values}


def set_property(model: Any, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def metadata_pkl(model: Any, name_key: str, model_name: str, slices: dict[str, slice]) -> bytes:
    """openpilot's get_model_metadata.py output for this graph."""
    return pickle.dumps({name_key: model_name, "output_slices": dict(slices),
                         "input_shapes": shapes(model.graph.input), "output_shapes": shapes(model.graph.output)})


def check_and_save(model: Any, path: Path, data: bytes | None = None) -> None:
    """Full ONNX check, weights inline, atomic write of `data` (the model serialized, when already at hand)."""
    import onnx

    data = model.SerializeToString() if data is None else data
    if len(data) >= 2**31:
        raise ExportError(f"{path.name}: {len(data) / 1e9:.1f} GB does not fit one ONNX file without external data")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path.name}: the exported graph fails onnx.checker ({str(e).splitlines()[0]})") from e
    files.write_bytes_atomic(path, data)
