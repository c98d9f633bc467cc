# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Export: merged ONNX equals the torch model (both students, both formats), the split export is a drop-in
teacher (same contract, loads through the teacher loader, labels with it), bad checkpoints are refused.
Every format also runs in tinygrad, as openpilot compiles it, against ONNX Runtime (the default check):
tolerance 1e-4 max abs for fp32 graphs, 1e-2 of the output scale for fp16 weights (measured: <= 5e-6)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spark_distill.data import arrays
from spark_distill.errors import ConfigError, TrainError
from spark_distill.export.consumer import TinygradResult
from spark_distill.export.run import ExportConfig, export
from spark_distill.label.run import LabelConfig, label
from spark_distill.openpilot.metadata import safe_loads
from spark_distill.openpilot.teachers import load_teacher
from spark_distill.train.config import TrainConfig
from spark_distill.train.loop import train


def _train(root: Path, runs: Path, run: str, **kw) -> Path:
    args = dict(root=root, labels="set", run=run, runs_dir=runs, student="compact-xs", adapter="dora", batch_size=2,
                max_steps=3, lr=1e-2, warmup_steps=1, burn_in=4, val_fraction=0.25, mask_warmup=False, workers=1,
                adapter_rank=4, adapter_alpha=8.0, device="cpu", checkpoint_every=100)
    train(TrainConfig(**(args | kw)))
    return runs / run


def _agrees_in_tinygrad(t: TinygradResult | None, graphs: list[str], export_json: Path) -> None:
    """The consumer check ran on every graph's outputs and recorded itself in export.json."""
    assert t is not None and t.version.startswith("0.14.") and t.device == "CPU:CLANG" and t.feeds >= 3
    assert sorted({k.split("/")[0] for k in t.max_abs_diff}) == sorted(graphs)
    if t.relative:
        assert t.tolerance == 1e-2 and t.max_rel_diff <= 1e-2
    else:
        assert t.tolerance == 1e-4 and max(t.max_abs_diff.values()) <= 1e-4
    assert json.loads(export_json.read_text())["tinygrad"] == json.loads(json.dumps(t.as_json()))


@pytest.fixture(scope="module")
def runs(labeled: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {"compact": _train(labeled, folder, "cx"),
            "openpilot": _train(labeled, folder, "op", student="openpilot", student_onnx=labeled / "teacher")}


@pytest.mark.slow
def test_compact_combined_fp32_and_fp16(runs: dict[str, Path], tmp_path: Path) -> None:
    r = export(ExportConfig(source=runs["compact"], output=tmp_path / "fp32"))
    assert r.format == "combined" and r.max_diff_random <= 1e-4 and r.max_diff_real is not None
    assert r.max_diff_real <= 1e-4 and r.latency_ms > 0 and r.parameters > 100_000
    model = onnx.load(str(r.files["model"]))
    names = [i.name for i in model.graph.input]
    assert names == ["img", "big_img", "desire", "traffic_convention", "state", "v_ego"]  # the student reads speed
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 12, 128, 256] and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["vision_outputs", "policy_outputs", "state_out"]
    assert model.opset_import[0].version == 14 and "Gemm" in r.op_types
    assert not any("lora" in i.name or "magnitude" in i.name for i in model.graph.initializer)
    assert not any(onnx.external_data_helper.uses_external_data(i) for i in model.graph.initializer)
    meta = json.loads((tmp_path / "fp32" / "export.json").read_text())
    assert meta["step"] == 3 and meta["max_abs_diff_real"] == r.max_diff_real
    assert Path(meta["source"]).is_absolute() and Path(meta["source"]) == runs["compact"].resolve()
    _agrees_in_tinygrad(r.tinygrad, ["driving_model.onnx"], tmp_path / "fp32" / "export.json")
    assert set(r.tinygrad.max_abs_diff) == {f"driving_model.onnx/{o}" for o in ("vision_outputs", "policy_outputs",
                                                                               "state_out")}
    half = export(ExportConfig(source=runs["compact"], output=tmp_path / "fp16", precision="fp16", opset=17))
    assert half.tolerance == 1e-2 and half.max_diff_random <= 1e-2
    _agrees_in_tinygrad(half.tinygrad, ["driving_model.onnx"], tmp_path / "fp16" / "export.json")
    assert half.tinygrad.relative
    assert half.files["model"].stat().st_size < 0.6 * r.files["model"].stat().st_size  # fp16 weights


def test_openpilot_split_is_a_drop_in_teacher(labeled: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "split"
    r = export(ExportConfig(source=runs["openpilot"], output=out))
    assert r.format == "release" and r.written_back and r.copied == ["driving_vision.onnx"]
    assert r.max_diff_random <= 1e-4 and r.max_diff_real is not None and r.max_diff_real <= 1e-4
    _agrees_in_tinygrad(r.tinygrad, ["driving_policy.onnx", "driving_vision.onnx"], out / "export.json")
    teacher_dir = labeled / "teacher"
    for half in ("vision", "policy"):
        a, b = onnx.load(str(teacher_dir / f"driving_{half}.onnx")), onnx.load(str(out / f"driving_{half}.onnx"))
        assert [(i.name, i.type) for i in a.graph.input] == [(i.name, i.type) for i in b.graph.input]
        assert [(o.name, o.type) for o in a.graph.output] == [(o.name, o.type) for o in b.graph.output]
        props = lambda m: {p.key: p.value for p in m.metadata_props}  # noqa: E731
        assert props(a)["output_slices"] == props(b)["output_slices"]
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
        changed = [x.name for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True)
                   if not np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))]
        assert (half == "policy") == bool(changed)
        assert sorted(changed) == sorted(r.written_back) or half == "vision"
        meta = safe_loads((out / f"driving_{half}_metadata.pkl").read_bytes(), source="test")
        ref = pickle.loads((teacher_dir / f"driving_{half}_metadata.pkl").read_bytes())
        assert meta["output_slices"] == ref["output_slices"] and meta["input_shapes"] == ref["input_shapes"]
    load_teacher([out])  # the same loader the label pass uses
    # round trip: the exported pair labels the dataset; vision outputs equal the teacher's, policy outputs moved
    label(LabelConfig(root=labeled, teacher=(out,), backend="onnxruntime", batch=4, name="exported"))
    from spark_distill.data import shards

    first = sorted((labeled / "labels" / "set").glob("shard-*.tar"))[0].name
    a = next(shards.iter_shard(labeled / "labels" / "set" / first, shards.LABEL_MEMBERS))
    b = next(shards.iter_shard(labeled / "labels" / "exported" / first, shards.LABEL_MEMBERS))
    va, vb = arrays.decode_array(a["vision.npy.zst"]), arrays.decode_array(b["vision.npy.zst"])
    pa, pb = arrays.decode_array(a["policy.npy.zst"]), arrays.decode_array(b["policy.npy.zst"])
    assert np.array_equal(va, vb) and not np.array_equal(pa, pb)
    shutil.rmtree(labeled / "labels" / "exported")


def test_openpilot_combined(runs: dict[str, Path], tmp_path: Path) -> None:
    r = export(ExportConfig(source=runs["openpilot"], output=tmp_path, format="combined"))
    assert r.max_diff_random <= 1e-4 and r.max_diff_real <= 1e-4
    model = onnx.load(str(r.files["model"]))
    assert [i.name for i in model.graph.input][-1] == "v_ego"  # the v1 policy's lateral_control_params use it
    _agrees_in_tinygrad(r.tinygrad, ["driving_model.onnx"], tmp_path / "export.json")


@pytest.fixture(scope="module")
def pulse_run(labeled: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The openpilot student of openpilot 0.10.3's layout (desire_pulse, no lateral_control_params)."""
    from spark_distill.synth.releases import write_release

    teacher = tmp_path_factory.mktemp("teacher-0.10.3")
    write_release(teacher, "0.10.3", seed=2)
    label(LabelConfig(root=labeled, teacher=(teacher,), backend="onnxruntime", batch=4, name="r0103"))
    yield _train(labeled, tmp_path_factory.mktemp("runs-0.10.3"), "op2", labels="r0103", student="openpilot",
                 student_onnx=teacher, max_steps=1)
    shutil.rmtree(labeled / "labels" / "r0103")


def test_openpilot_combined_without_v_ego(pulse_run: Path, tmp_path: Path) -> None:
    """The graph drops v_ego, which a 0.10.1+ policy has no use for; the checks feed what the graph declares."""
    from typer.testing import CliRunner

    from spark_distill.cli import app

    out = tmp_path / "e"
    res = CliRunner().invoke(app, ["export", str(pulse_run), "--output", str(out), "--format", "combined",
                                   "--check", "tinygrad", "--verify-frames", "4"])
    assert res.exit_code == 0, res.output
    assert "max |tinygrad - ORT|" in res.output
    model = onnx.load(str(out / "driving_model.onnx"))
    assert [i.name for i in model.graph.input] == ["img", "big_img", "desire", "traffic_convention", "state"]
    meta = safe_loads((out / "driving_model_metadata.pkl").read_bytes(), source="test")
    assert list(meta["input_shapes"]) == ["img", "big_img", "desire", "traffic_convention", "state"]
    record = json.loads((out / "export.json").read_text())
    assert record["max_abs_diff_real"] <= 1e-4 and record["tinygrad"]["device"] == "CPU:CLANG"
    assert max(record["tinygrad"]["max_abs_diff"].values()) <= 1e-4 and record["tinygrad"]["feeds"] == 3


def test_bad_sources_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format split"):
        export(ExportConfig(source=runs["compact"], output=tmp_path / "x", format="split"))
    with pytest.raises(ConfigError, match="not a training run"):
        export(ExportConfig(source=tmp_path, output=tmp_path / "x"))
    bad = tmp_path / "torn"
    shutil.copytree(runs["compact"], bad)
    for ckpt in (bad / "checkpoints").glob("step-*"):
        (ckpt / "adapter.safetensors").write_bytes(b"torn")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        export(ExportConfig(source=bad, output=tmp_path / "x"))
    with pytest.raises(TrainError, match="checksum"):
        export(ExportConfig(source=next((bad / "checkpoints").glob("step-*")), output=tmp_path / "x"))
    other = tmp_path / "other"
    shutil.copytree(runs["compact"], other)
    spec = json.loads((other / "student.json").read_text())
    spec["architecture"]["preset"] = "compact"  # the weights are compact-xs
    (other / "student.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="does not fit"):
        export(ExportConfig(source=other, output=tmp_path / "x"))
    assert not (tmp_path / "x").exists(), "a refused export writes nothing"
