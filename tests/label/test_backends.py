# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Backends against ONNX Runtime: torch (CPU fp32 here, fp16/bf16 on GPU), TensorRT through its fake."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spark_distill.errors import ConfigError, UnknownTeacherError
from spark_distill.label.backends import get_backend
from spark_distill.openpilot.teachers import load_teacher, make_batch_dynamic, random_inputs
from spark_distill.synth.fit import SHIPPED
from spark_distill.synth.releases import write_release
from spark_distill.synth.teacher import write_teacher

from . import fake_tensorrt


@pytest.fixture(scope="module", params=["v1", "0.10.3", "fitted"])
def teacher(request, tmp_path_factory):
    """Random-weight stand-ins of the project's own layout and of openpilot 0.10.3 (desire_pulse, float16 history,
    pads), and the shipped fitted teacher (its clamps are `Constant`-fed `Clip`s, which onnx2torch takes only as
    initializers: the torch backend failed on it, on every GPU)."""
    if request.param == "fitted":
        return load_teacher([SHIPPED / "v1"])
    out = tmp_path_factory.mktemp(f"t-{request.param}")
    if request.param == "v1":
        write_teacher(out, seed=5)
    else:
        write_release(out, request.param, seed=5)
    return load_teacher([out])


def _compare(a_backend, b_backend, teacher, *, batch: int, rtol: float, atol: float) -> None:
    t = teacher[0]
    for role, mf in (("vision", t.vision), ("policy", t.policy)):
        feeds = {k: torch.from_numpy(v) for k, v in random_inputs(mf.inputs, batch, seed=1).items()}
        want = getattr(a_backend, role)(feeds).cpu().numpy()
        got = getattr(b_backend, role)({k: v.to(b_backend.device) for k, v in feeds.items()}).cpu().numpy()
        assert got.shape == want.shape == (batch, mf.width)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max(), err_msg=role)


def test_torch_fp32_matches_onnxruntime(teacher) -> None:
    ort_b = get_backend("onnxruntime", *teacher, batch=4)
    torch_b = get_backend("torch", *teacher, batch=4, device="cpu")
    _compare(ort_b, torch_b, teacher, batch=4, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", ["off", "on"])
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 6e-2)])
def test_torch_cuda_matches_onnxruntime(teacher, precision: str, atol: float, compile: str) -> None:
    """Stated tolerances, relative to the largest output: fp16 2%, bf16 6% (8 mantissa bits); eager and compiled."""
    ort_b = get_backend("onnxruntime", *teacher, batch=8)
    torch_b = get_backend("torch", *teacher, batch=8, precision=precision, device="cuda", compile=compile)
    assert torch_b.describe()["compiled"] == (compile == "on")
    _compare(ort_b, torch_b, teacher, batch=8, rtol=0, atol=atol)


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    fake_tensorrt.BUILDS.clear()
    return fake_tensorrt


def test_tensorrt_backend_logic_through_the_fake(teacher, fake_trt, tmp_path: Path) -> None:
    ort_b = get_backend("onnxruntime", *teacher, batch=3)
    trt_b = get_backend("tensorrt", *teacher, batch=3, device="cpu", precision="fp16", cache_dir=tmp_path)
    _compare(ort_b, trt_b, teacher, batch=3, rtol=1e-5, atol=1e-6)
    assert fake_trt.BUILDS == ["outputs", "outputs"]
    engines = sorted(p.name for p in tmp_path.glob("*.engine"))
    assert len(engines) == 2 and engines[0].startswith("policy-") and list(tmp_path.glob("timing-*.cache"))
    again = get_backend("tensorrt", *teacher, batch=3, device="cpu", precision="fp16", cache_dir=tmp_path)
    assert fake_trt.BUILDS == ["outputs", "outputs"], "a second run loads the cached engines"
    assert again.describe()["tensorrt"] == "10.99.0-fake"
    get_backend("tensorrt", *teacher, batch=4, device="cpu", precision="fp16", cache_dir=tmp_path)
    assert len(fake_trt.BUILDS) == 4, "another batch is another engine"


def test_tensorrt_missing_is_a_clear_error(teacher, monkeypatch) -> None:
    from spark_distill.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(MissingDependencyError, match="needs NVIDIA TensorRT"):
        get_backend("tensorrt", *teacher, batch=2)


def test_backend_names_and_precisions(teacher) -> None:
    with pytest.raises(UnknownTeacherError, match="available: onnxruntime, tensorrt, torch"):
        get_backend("openvino", *teacher)
    with pytest.raises(ConfigError, match="fp32 only"):
        get_backend("onnxruntime", *teacher, precision="fp16")
    with pytest.raises(ConfigError, match="--compile on applies to the torch backend"):
        get_backend("onnxruntime", *teacher, compile="on")
    with pytest.raises(ConfigError, match="choose auto, on or off"):
        get_backend("torch", *teacher, device="cpu", compile="yes")
    with pytest.raises(ConfigError, match="runs on the CPU, not cuda:1"):
        get_backend("onnxruntime", *teacher, device="cuda:1")
    with pytest.raises(ConfigError, match="on CUDA only"):
        get_backend("torch", *teacher, precision="bf16", device="cpu")


def test_batch_one_graphs_with_reshapes_are_made_batchable(tmp_path: Path) -> None:
    """openpilot graphs are exported with batch 1 and may Reshape to [1, -1]; the rewrite keeps rows apart."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from spark_distill.openpilot.teachers import check_batching

    inputs = {"x": ((1, 2, 3), "float32")}
    assert not check_batching(model, _relaxed(model), inputs), "without the rewrite rows mix"
    assert check_batching(model, make_batch_dynamic(model), inputs)
    onnx.checker.check_model(make_batch_dynamic(model))


def _relaxed(model):
    """Only the batch dim made symbolic (no Reshape rewrite), to show why the rewrite is needed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def test_imported_teachers_trace_whole_and_capture(teacher) -> None:
    """Every teacher's graphs import as one torch.compile graph (no graph break) with no tensor-held shapes left
    (onnx2torch's Slice, Reshape, Expand and Gather with constant operands: a host copy at each call, which broke
    CUDA-graph capture of the fitted teacher on an H100, and `torch.Size(tensor)`, which dynamo refuses), and give
    ONNX Runtime's outputs."""
    import onnxruntime as ort
    import torch._dynamo

    from spark_distill.openpilot.onnx_import import load_onnx2torch, onnx_to_torch

    load_onnx2torch()  # onnx2torch without torchvision (onnx_import's docstring)
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.slice import OnnxSlice

    for mf in (teacher[0].vision, teacher[0].policy):
        module = onnx_to_torch(onnx.load(str(mf.path))).eval()
        assert not [m for m in module.modules() if isinstance(m, (OnnxSlice, OnnxReshape))]
        feeds = random_inputs(mf.inputs, 1, seed=2)
        args = [torch.from_numpy(v) for v in feeds.values()]
        torch._dynamo.reset()
        assert torch._dynamo.explain(module)(*args).graph_break_count == 0, mf.path.name
        want = ort.InferenceSession(str(mf.path)).run(None, feeds)[0]
        with torch.no_grad():
            got = module(*args).float().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_teacher_torch_compile_cannot_compile_runs_uncompiled(monkeypatch, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    """Where torch.compile fails on a teacher's graph (dynamo or inductor), the backend says so once and runs the
    graphs uncompiled, with the eager backend's outputs; another error is not hidden."""
    import torch._dynamo

    teacher = load_teacher([SHIPPED / "v1"])
    eager = get_backend("torch", *teacher, batch=2, device="cpu", compile="off")

    def failing(error: Exception):
        def compile(fn, **_):
            def run(*_args):
                raise error
            return run
        return compile

    monkeypatch.setattr(torch, "compile", failing(torch._dynamo.exc.InternalTorchDynamoError(
        "TypeError: torch.Size() takes an iterable of 'int' (item 0 is 'FakeTensor')")))
    with caplog.at_level("INFO", logger="spark_distill.notes"):
        compiled = get_backend("torch", *teacher, batch=2, device="cpu", compile="on")
        assert compiled.describe()["compiled"]
        _compare(eager, compiled, teacher, batch=2, rtol=0, atol=0)
    assert caplog.text.count("torch.compile could not compile the teacher") == 1, caplog.text
    assert "InternalTorchDynamoError: TypeError: torch.Size()" in caplog.text and not compiled.describe()["compiled"]
    monkeypatch.setattr(torch, "compile", failing(ValueError("a bug of ours")))
    broken = get_backend("torch", *teacher, batch=2, device="cpu", compile="on")
    with pytest.raises(ValueError, match="a bug of ours"):
        _compare(eager, broken, teacher, batch=2, rtol=0, atol=0)
