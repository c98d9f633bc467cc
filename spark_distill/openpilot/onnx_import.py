# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""ONNX graphs imported into torch with onnx2torch. Entry point: `onnx_to_torch(model)`.

onnx2torch imports torchvision at import time, but uses it only for the NonMaxSuppression and
RoIAlign converters, which openpilot's driving models do not contain. torchvision pins torch
builds tightly (pip swaps a CPU torch for a multi-GB CUDA one to satisfy it), so spark-distill
installs onnx2torch without it. Where torchvision is missing or broken, a placeholder module is
registered while onnx2torch is imported (and removed after: other libraries probing for torchvision see it
absent); converting a graph that does use those ops is a clear error.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

from spark_distill.errors import MissingDependencyError

_NEEDS_TORCHVISION = frozenset({"NonMaxSuppression", "RoiAlign"})


def _torchvision_usable() -> bool:
    try:
        importlib.import_module("torchvision.ops")
        return True
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def _placeholder_torchvision() -> None:
    def unavailable(*_: Any, **__: Any) -> Any:
        raise MissingDependencyError("this ONNX graph uses NonMaxSuppression/RoIAlign, which need torchvision: "
                                     "pip install torchvision matching your torch")

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops


def load_onnx2torch() -> types.ModuleType:
    """The onnx2torch module, importable with or without a working torchvision."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    placeholder = not _torchvision_usable()
    if placeholder:
        _placeholder_torchvision()
    try:
        return importlib.import_module("onnx2torch")
    except ImportError as e:
        raise MissingDependencyError("onnx2torch is missing: pip install --no-deps onnx2torch") from e
    finally:
        if placeholder:  # onnx2torch keeps its references; to everyone else torchvision stays absent (peft and
            # transformers probe for it with importlib.util.find_spec, which fails on a module without a spec)
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.ops", None)


def onnx_to_torch(model: Any) -> Any:
    """An onnx.ModelProto (or path) as a torch.fx.GraphModule."""
    import onnx

    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    used = {n.op_type for n in proto.graph.node} & _NEEDS_TORCHVISION
    if used and "torchvision.ops" in sys.modules and not hasattr(sys.modules["torchvision"], "__file__"):
        raise MissingDependencyError(f"the ONNX graph uses {sorted(used)}, which need torchvision: "
                                     "pip install torchvision matching your torch")
    return load_onnx2torch().convert(proto)


def cpu_session(model: bytes | str | Path) -> Any:
    """An ONNX Runtime CPU session of a serialized model or a file, warnings off (verification and eval runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
