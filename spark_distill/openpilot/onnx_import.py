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
    return load_onnx2torch().convert(constants_as_initializers(proto))


def constants_as_initializers(proto: Any) -> Any:
    """The graph with its tensor-valued `Constant` nodes turned into initializers of the same names and trailing
    empty optional inputs dropped (same values, same graph). onnx2torch reads some operands only from
    initializers, and takes an empty name for a given one — a `Clip`'s min/max among them ("Dynamic value of
    min/max is not implemented") — while exporters write them as `Constant` nodes and `""` (torch.onnx does for a
    clamp; the shipped fitted teacher has three). A `ConstantOfShape` of a constant shape becomes the initializer it
    makes: onnx2torch builds it with torch.full(torch.Size(tensor)), which torch.compile cannot trace (the fitted
    teacher's policy has four, from torch.onnx's export of an expand). The input is not changed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    constants = [n for n in proto.graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name in ("value", "value_float", "value_floats", "value_int", "value_ints")]
    trailing = [n for n in proto.graph.node if n.input and n.input[-1] == ""]
    known = {c.output[0] for c in constants} | {t.name for t in proto.graph.initializer}
    filled = [n for n in proto.graph.node if n.op_type == "ConstantOfShape" and n.input[0] in known]
    if not constants and not trailing and not filled:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    folded = {c.output[0] for c in constants} | {n.output[0] for n in filled}
    kept = [n for n in out.graph.node if not (n.op_type in ("Constant", "ConstantOfShape") and n.output[0] in folded)]
    for node in constants:
        attr = node.attribute[0]
        value = onnx.helper.get_attribute_value(attr)
        if attr.name != "value":
            value = numpy_helper.from_array(np.array(value, dtype=np.float32 if "float" in attr.name else np.int64))
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
    values = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for node in filled:  # ONNX: value defaults to float32 0
        fill = (numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)).reshape(-1)
        array = np.full(tuple(int(d) for d in values[node.input[0]].reshape(-1)), fill[0], dtype=fill.dtype)
        out.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
    for node in kept:
        while node.input and node.input[-1] == "":
            node.input.pop()
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def cpu_session(model: bytes | str | Path) -> Any:
    """An ONNX Runtime CPU session of a serialized model or a file, warnings off (verification and eval runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
