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


def _slices_from(obj: Any, source: str) -> dict[str, slice]:
    if not isinstance(obj, dict):
        raise LabelError(f"{source}: output_slices is {type(obj).__name__}, expected a dict")
    out = {}
    for k, v in obj.items():
        start, stop = (v.start or 0, v.stop) if isinstance(v, slice) else (v if _pair(v) else (None, None))
        if not (_index(start) and _index(stop) and start <= stop and getattr(v, "step", None) in (None, 1)):
            raise LabelError(f"{source}: output slice {k!r} is {v!r}, expected a slice or [start, stop]")
        out[str(k)] = slice(int(start), int(stop))
    if not out:
        raise LabelError(f"{source}: output_slices is empty")
    return out


def _pair(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2


def _index(v: Any) -> bool:
    """A non-negative integer (Python or numpy), not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0


def read_output_slices(onnx_path: Path, props: dict[str, str]) -> tuple[dict[str, slice], str]:
    """Output slices of a model: from `<stem>_metadata.pkl`, `.json`, or the ONNX property; and where from."""
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
    raise LabelError(f"{onnx_path}: no output slices (no {pkl.name}, {js.name} or output_slices property)")


def slices_to_json(slices: dict[str, slice]) -> dict[str, list[int]]:
    return {k: [s.start, s.stop] for k, s in slices.items()}
