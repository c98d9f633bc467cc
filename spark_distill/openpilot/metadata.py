# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Reading openpilot model metadata safely: `*_metadata.pkl`, `*_metadata.json`, or the ONNX
`output_slices` property (base64 pickle, as openpilot's get_model_metadata.py writes it).

A pickle is never loaded with a bare `pickle.load`: `safe_loads` accepts only plain containers,
slices and numpy dtypes/arrays, and refuses anything else with a one-line error."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.errors import LabelError

_ALLOWED = {
    ("builtins", n) for n in ("slice", "dict", "list", "tuple", "set", "frozenset", "int", "float", "str",
                              "bytes", "bool", "complex")
} | {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
} | {("numpy", "dtype"), ("numpy", "ndarray"), ("collections", "OrderedDict")} | {
    (m, n) for m in ("numpy.dtypes",) for n in ("Float32DType", "Float16DType", "Int64DType", "UInt8DType",
                                               "Int32DType", "Float64DType", "BoolDType")
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}")


def safe_loads(data: bytes, *, source: str) -> Any:
    """Unpickle plain metadata; anything that asks for other classes is refused."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise LabelError(f"{source}: metadata pickle {e}; only plain containers, slices and numpy "
                         "arrays are accepted") from None
    except Exception as e:
        raise LabelError(f"{source}: unreadable metadata pickle ({e})") from e


def _bound(v: Any) -> bool:
    """A slice bound as the metadata may hold it: None or an integer (negative counts from the end), not a bool."""
    return v is None or (isinstance(v, int | np.integer) and not isinstance(v, bool))


def _slices_from(obj: Any, source: str) -> dict[str, slice]:
    """The slices as written (bounds may be None or negative: `resolve_slices` fixes them against the width)."""
    if not isinstance(obj, dict):
        raise LabelError(f"{source}: output_slices is {type(obj).__name__}, expected a dict")
    out = {}
    for k, v in obj.items():
        start, stop, step = (v.start, v.stop, v.step) if isinstance(v, slice) else (
            (*v, None) if _pair(v) else (None, None, "bad"))
        if not (_bound(start) and _bound(stop) and step in (None, 1)):
            raise LabelError(f"{source}: output slice {k!r} is {v!r}, expected a slice or [start, stop]")
        out[str(k)] = slice(None if start is None else int(start), None if stop is None else int(stop))
    if not out:
        raise LabelError(f"{source}: output_slices is empty")
    return out


def _pair(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2


PAD = "pad"  # openpilot's padding of the output to a multiple of 4: never a head


def resolve_slices(raw: dict[str, slice], width: int, source: str) -> dict[str, slice]:
    """The heads' slices as [start, stop) positions in an output `width` wide: `pad` dropped (whatever its form:
    absent, -2:None, 0:None), None and negative bounds resolved as Python slices resolve them."""
    out = {}
    for name, s in raw.items():
        if name == PAD:
            continue
        start, stop, _ = s.indices(width)
        if stop <= start or (s.stop is not None and s.stop > width) or (s.start is not None and s.start > width):
            raise LabelError(f"{source}: output slice {name!r} is {s.start}:{s.stop}, outside the model's output "
                             f"of {width} values")
        out[name] = slice(start, stop)
    if not out:
        raise LabelError(f"{source}: output_slices name no head (only {PAD!r})")
    return out


def read_output_slices(onnx_path: Path, props: dict[str, str]) -> tuple[dict[str, slice], str]:
    """Output slices of a model as written (see `resolve_slices`): from `<stem>_metadata.pkl` (any other keys, e.g.
    2025's `model_checkpoint`, are ignored), `.json`, or the ONNX's `output_slices` property; and where from. A
    compiled `<stem>_tinygrad.pkl` is never read: it is a pickle of code, and loading it would run it."""
    stem = onnx_path.with_suffix("")
    pkl, js = Path(f"{stem}_metadata.pkl"), Path(f"{stem}_metadata.json")
    if pkl.is_file():
        meta = safe_loads(pkl.read_bytes(), source=str(pkl))
        if not isinstance(meta, dict) or "output_slices" not in meta:
            raise LabelError(f"{pkl}: no 'output_slices' in the metadata")
        return _slices_from(meta["output_slices"], str(pkl)), pkl.name
    if js.is_file():
        try:
            meta = json.loads(js.read_bytes())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise LabelError(f"{js}: invalid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise LabelError(f"{js}: holds a JSON {type(meta).__name__}, expected an object with output_slices")
        return _slices_from(meta.get("output_slices"), str(js)), js.name
    if "output_slices" in props:
        try:
            raw = base64.b64decode(props["output_slices"])
        except ValueError as e:
            raise LabelError(f"{onnx_path}: output_slices property is not base64") from e
        return _slices_from(safe_loads(raw, source=f"{onnx_path} output_slices"), str(onnx_path)), "onnx"
    compiled = Path(f"{stem}_tinygrad.pkl")
    also = (f"; {compiled.name} is a pickle of compiled code and is never loaded (loading it would run it), so "
            "its metadata cannot be read: use the release's ONNX with its output_slices property or _metadata.pkl"
            if compiled.is_file() else "")
    raise LabelError(f"{onnx_path}: no output slices (no {pkl.name}, {js.name} or output_slices property){also}")


def slices_to_json(slices: dict[str, slice]) -> dict[str, list[int]]:
    return {k: [s.start, s.stop] for k, s in slices.items()}
