# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The consumer check on small hand-made graphs: tinygrad agrees with ONNX Runtime, fed only the inputs a
graph declares; an op tinygrad lacks, a disagreement and a missing tinygrad are one clear error each.
The export formats themselves go through it in test_export.py."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from spark_distill.errors import ExportError, MissingDependencyError, OnnxMismatchError
from spark_distill.export import consumer


def _graph(op: str = "Gemm", weight_dtype: type = np.float32) -> bytes:
    """x [1,4] -> Gemm(W, b) -> Relu -> y [1,3] (or Det of a [2,2] input); a second input `v_ego` is unused."""
    rng = np.random.default_rng(0)
    if op == "Det":
        node = [helper.make_node("Det", ["x"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])]
        return helper.make_model(helper.make_graph(node, "det", inputs, [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]), opset_imports=[helper.make_opsetid("", 14)]
                                 ).SerializeToString()
    w = numpy_helper.from_array((rng.standard_normal((4, 3)) * 3).astype(weight_dtype), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(weight_dtype), "b")
    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=helper.np_dtype_to_tensor_dtype(np.dtype(weight_dtype))),
             helper.make_node("Gemm", ["xc", "w", "b"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, b])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _feeds(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 4)).astype(np.float32), "v_ego": np.array([3.0], np.float32)}
            for _ in range(n)]


def test_agrees_with_onnxruntime_on_declared_inputs() -> None:
    r = consumer.tinygrad_check({"g.onnx": _graph()}, {"g.onnx": _feeds()})
    assert r.version.startswith("0.14.") and r.device == "CPU:CLANG" and r.feeds == 2
    assert list(r.max_abs_diff) == ["g.onnx/y"] and r.max_abs_diff["g.onnx/y"] <= 1e-6  # an extra input is not fed
    assert r.optimizer == "NOOPT" and not r.relative and r.tolerance == consumer.FP32_TOLERANCE
    assert r.as_json()["max_abs_diff"] == r.max_abs_diff
    half = consumer.tinygrad_check({"h.onnx": _graph(weight_dtype=np.float16)}, {"h.onnx": _feeds()}, fp16=True)
    assert half.relative and half.tolerance == consumer.FP16_TOLERANCE and half.max_rel_diff <= 1e-3


def test_disagreement_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = consumer._run_tinygrad

    def off_by(name: str, data: bytes, feeds: list) -> list:
        return [[o + 1e-3 for o in outs] for outs in real(name, data, feeds)]

    monkeypatch.setattr(consumer, "_run_tinygrad", off_by)
    with pytest.raises(OnnxMismatchError, match=r"tinygrad \(CPU:CLANG, 0\.14\.\d+\) differs .* by 0\.001"):
        consumer.tinygrad_check({"g.onnx": _graph()}, {"g.onnx": _feeds(1)})
    monkeypatch.setattr(consumer, "_run_tinygrad", lambda n, d, f: [[np.full((1, 3), np.nan, np.float32)]])
    with pytest.raises(OnnxMismatchError, match="by inf"):
        consumer.tinygrad_check({"g.onnx": _graph()}, {"g.onnx": _feeds(1)})


def test_an_op_tinygrad_lacks_is_one_line() -> None:
    feed = {"x": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}
    with pytest.raises(ExportError, match=r"^tinygrad cannot run det\.onnx .*NotImplementedError: op='Det'") as e:
        consumer.tinygrad_check({"det.onnx": _graph("Det")}, {"det.onnx": [feed]})
    assert "\n" not in str(e.value)


def test_missing_tinygrad(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from spark_distill.cli import app

    monkeypatch.setitem(sys.modules, "tinygrad", None)  # import tinygrad -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'tinygrad>=0\.14,<0\.15'"):
        consumer.tinygrad_check({"g.onnx": _graph()}, {"g.onnx": _feeds(1)})
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--output", str(tmp_path / "e"), "--check", "tinygrad"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "--check tinygrad needs tinygrad: pip install 'tinygrad>=0.14,<0.15'" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--output", str(tmp_path / "e"), "--check", "onnx"])
    assert res.exit_code == 2 and "unknown --check 'onnx'; choose one of auto, tinygrad, none" in res.output
    assert not (tmp_path / "e").exists()


def test_export_check_modes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """auto notes why it could not run and goes on; tinygrad insists; none skips."""
    from dataclasses import replace

    from spark_distill.export.run import ExportConfig, ExportResult, _consumer_check

    graphs, feeds = {"g.onnx": _graph()}, {"g.onnx": _feeds(1)}
    cfg = ExportConfig(source=tmp_path, output=tmp_path)
    assert cfg.check == "auto"
    ran = ExportResult(format="combined")
    _consumer_check(cfg, ran, graphs, feeds, fp16=False)
    assert ran.tinygrad is not None and ran.tinygrad_skipped is None
    none = ExportResult(format="combined")
    _consumer_check(replace(cfg, check="none"), none, graphs, feeds, fp16=False)
    assert none.tinygrad is None and none.tinygrad_skipped == "--check none"
    monkeypatch.setitem(sys.modules, "tinygrad", None)
    auto = ExportResult(format="combined")
    _consumer_check(cfg, auto, graphs, feeds, fp16=False)
    assert auto.tinygrad is None and "pip install 'tinygrad>=0.14,<0.15'" in auto.tinygrad_skipped
    with pytest.raises(MissingDependencyError):
        _consumer_check(replace(cfg, check="tinygrad"), ExportResult(format="combined"), graphs, feeds, fp16=False)
