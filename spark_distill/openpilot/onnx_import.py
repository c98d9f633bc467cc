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
    return static_operands(load_onnx2torch().convert(fold_constants(constants_as_initializers(proto))))


FOLD_LIMIT = 1 << 16  # elements: a folded value larger than this stays computed (shape arithmetic is tiny)


def fold_constants(proto: Any) -> Any:
    """The graph with every node whose inputs are all initializers replaced by the initializer it computes
    (onnx's reference evaluator; same values). torch.onnx exports an expand or a view as a chain of
    ConstantOfShape / Equal / Where / Mul on constants (the shipped fitted teacher has 19), which onnx2torch would
    compute at every call, from tensors, in forms torch.compile cannot trace (`torch.Size(tensor)`)."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    values = {t.name: t for t in proto.graph.initializer}
    folded: dict[str, Any] = {}
    kept = []
    for node in proto.graph.node:
        names = [i for i in node.input if i]
        if (not names or any(i not in values and i not in folded for i in names) or node.domain not in ("", "ai.onnx")
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            kept.append(node)
            continue
        feeds = {i: folded[i] if i in folded else numpy_helper.to_array(values[i]) for i in names}
        try:
            results = ReferenceEvaluator(node).run(None, feeds)
        except Exception:  # an operator the reference evaluator lacks: left to run
            kept.append(node)
            continue
        if any(r.size > FOLD_LIMIT for r in results):
            kept.append(node)
            continue
        folded.update(zip(node.output, results, strict=True))
    if not folded:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    used = {i for n in kept for i in n.input} | {o.name for o in proto.graph.output}
    for name, value in folded.items():
        if name in used:
            out.graph.initializer.append(numpy_helper.from_array(value, name))
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def static_operands(module: Any) -> Any:
    """onnx2torch's Slice, Reshape, Expand, Gather, Pad and Split with constant operands (starts/ends/axes/steps, the
    shape, the indices, the pads, the split) turned into modules holding them as Python values (same results).
    onnx2torch reads those operands from tensors at every call (`.cpu().numpy()`, `.tolist()`, `torch.Size(tensor)`):
    a host copy that breaks CUDA-graph capture, and forms torch.compile cannot trace. The constant buffers stay
    registered, unused: a state dict keeps its keys (checkpoints of an openpilot student saved before load as they
    were)."""
    import numpy as np
    import torch

    load_onnx2torch()
    from onnx2torch.node_converters.expand import OnnxExpand
    from onnx2torch.node_converters.gather import OnnxGather
    from onnx2torch.node_converters.pad import OnnxPadDynamic, _onnx_padding_to_torch, _torch_padding_to_mode_format
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.slice import OnnxSlice, _get_slices
    from onnx2torch.node_converters.split import OnnxSplit, OnnxSplit13

    from spark_distill.openpilot.static_ops import StaticExpand, StaticGather, StaticPad, StaticReshape, StaticSlice

    graph = module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        target = module.get_submodule(node.target)
        operands = list(node.args[1:])
        if not operands or operands[0] is None:  # nothing held in a tensor (a Split into equal parts)
            continue
        if not isinstance(target, (OnnxSlice, OnnxReshape, OnnxExpand, OnnxGather, OnnxPadDynamic, OnnxSplit13)
                          ) or not all(
                a is None or (isinstance(a, torch.fx.Node) and a.op == "get_attr") for a in operands):
            continue
        values = [None if a is None else np.asarray(_attr(module, a.target).detach().cpu().numpy()) for a in operands]
        arrays = [None if v is None else v.astype(np.int64) for v in values]
        if isinstance(target, OnnxSlice):
            while len(arrays) < 4:
                arrays.append(None)
            starts, ends, axes, steps = arrays
            flip, pos, neg = _get_slices(starts, ends, None if axes is None else torch.from_numpy(axes),
                                         None if steps is None else torch.from_numpy(steps))
            static: torch.nn.Module = StaticSlice([int(d) for d in flip], _python_slices(pos), _python_slices(neg))
        elif isinstance(target, OnnxPadDynamic):
            value = 0.0 if len(values) < 2 or values[1] is None else float(values[1].reshape(-1)[0])
            pads = _torch_padding_to_mode_format(_onnx_padding_to_torch([int(d) for d in arrays[0]]), target.mode)
            static = StaticPad(pads, target.mode, value)
        elif isinstance(target, OnnxSplit13):
            static = OnnxSplit(num_splits=target.num_splits, axis=target.axis, split=[int(d) for d in arrays[0]])
        elif isinstance(target, OnnxGather):
            static = StaticGather(target._axis, arrays[0])
        elif isinstance(target, OnnxReshape):
            static = StaticReshape(tuple(int(d) for d in arrays[0]))
        else:
            static = StaticExpand(tuple(int(d) for d in arrays[0]))
        module.add_submodule(node.target, static)
        node.args = node.args[:1]
        changed = True
    if changed:
        graph.eliminate_dead_code()
        graph.lint()
        module.recompile()
    return module


def _attr(module: Any, target: str) -> Any:
    *path, name = target.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    return getattr(owner, name)


def _python_slices(items: list[Any]) -> list[Any]:
    return [s if s is Ellipsis else slice(*(None if v is None else int(v) for v in (s.start, s.stop, s.step)))
            for s in items]


def constants_as_initializers(proto: Any) -> Any:
    """The graph with its tensor-valued `Constant` nodes turned into initializers of the same names and trailing
    empty optional inputs dropped (same values, same graph). onnx2torch reads some operands only from
    initializers, and takes an empty name for a given one — a `Clip`'s min/max among them ("Dynamic value of
    min/max is not implemented") — while exporters write them as `Constant` nodes and `""` (torch.onnx does for a
    clamp; the shipped fitted teacher has three). The input is not changed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    constants = [n for n in proto.graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name in ("value", "value_float", "value_floats", "value_int", "value_ints")]
    trailing = [n for n in proto.graph.node if n.input and n.input[-1] == ""]
    if not constants and not trailing:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    folded = {c.output[0] for c in constants}
    kept = [n for n in out.graph.node if not (n.op_type == "Constant" and n.output[0] in folded)]
    for node in constants:
        attr = node.attribute[0]
        value = onnx.helper.get_attribute_value(attr)
        if attr.name != "value":
            value = numpy_helper.from_array(np.array(value, dtype=np.float32 if "float" in attr.name else np.int64))
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
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
