# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""onnx2torch imported without torchvision: its torchvision ops fail with one clear line, and other libraries that
probe for torchvision (peft, transformers) still import."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib.util
from spark_distill.errors import MissingDependencyError
from spark_distill.openpilot.onnx_import import _torchvision_usable, load_onnx2torch
load_onnx2torch()
if not _torchvision_usable():
    from onnx2torch.node_converters import nms
    try:
        nms.torchvision.ops.nms(None, None, 0.5)
    except MissingDependencyError as e:
        assert "torchvision" in str(e)
    else:
        raise AssertionError("the placeholder op did not refuse")
    assert importlib.util.find_spec("torchvision") is None
import peft  # probes for torchvision with find_spec, which a module without a spec in sys.modules breaks
print("ok")
"""


def test_onnx2torch_without_torchvision_leaves_other_imports_working() -> None:
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


def test_constant_operands_are_static_and_exact() -> None:
    """Each operator onnx2torch computes from a tensor operand (Slice with steps and negative axes, Reshape with a
    0, Expand, Gather with a negative scalar and an array index, Pad constant and reflect, Split with sizes), fed
    constants (some through a folded chain: ConstantOfShape -> Mul), imports as Python values: ONNX Runtime's
    outputs, one torch.compile graph with no break."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import torch._dynamo
    from onnx import TensorProto, helper, numpy_helper

    from spark_distill.openpilot.onnx_import import onnx_to_torch

    def const(name: str, values: list, dtype=np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, dtype=dtype), name)

    nodes = [
        helper.make_node("ConstantOfShape", ["shape_of_two"], ["twos"], value=helper.make_tensor("v", TensorProto.INT64,
                                                                                               [1], [2])),
        helper.make_node("Mul", ["twos", "minus_one"], ["steps"]),  # [-2]: folded into a constant
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sliced"]),
        helper.make_node("Reshape", ["sliced", "shape"], ["reshaped"]),
        helper.make_node("Expand", ["reshaped", "expand_to"], ["expanded"]),
        helper.make_node("Gather", ["expanded", "last"], ["picked"], axis=1),
        helper.make_node("Gather", ["x", "rows"], ["gathered"], axis=-1),
        helper.make_node("Pad", ["x", "pads", "pad_value"], ["padded"], mode="constant"),
        helper.make_node("Pad", ["x", "pads"], ["reflected"], mode="reflect"),
        helper.make_node("Split", ["x", "sizes"], ["left", "right"], axis=-1),
    ]
    inits = [const("shape_of_two", [1]), const("minus_one", [-1]), const("starts", [-1]), const("ends", [-100]),
             const("axes", [-1]), const("shape", [0, -1, 2]), const("expand_to", [3, 1, 1, 1]), const("last", -1),
             const("rows", [[0, 5], [2, 2]]), const("pads", [0, 0, 1, 2, 0, 0, 3, 1]),
             const("pad_value", 1.5, np.float32), const("sizes", [2, 4])]
    outs = ["picked", "gathered", "padded", "reflected", "left", "right"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 6])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    module = onnx_to_torch(model)
    assert not [m for m in module.modules() if type(m).__name__ in (
        "OnnxSlice", "OnnxReshape", "OnnxExpand", "OnnxGather", "OnnxPadDynamic", "OnnxSplit13")]
    got = [t for out in module(torch.from_numpy(x)) for t in (out if isinstance(out, tuple) else (out,))]
    for name, a, b in zip(outs, got, want, strict=True):  # a Split's outputs come as one tuple (onnx2torch)
        np.testing.assert_array_equal(a.numpy(), b, err_msg=name)
    torch._dynamo.reset()
    assert torch._dynamo.explain(module)(torch.from_numpy(x)).graph_break_count == 0
