# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""What the fuzz run found, one fixed example each, at the reader and through the CLI (exit 2, one line).

Before the fixes each of these ended in a traceback (or, through the CLI, a multi-line one)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.data import shards
from spark_distill.errors import ConfigError, DatasetError, LabelError, TrainError
from tests.fuzz import mutate as M
from tests.fuzz.harness import SEGMENTS, SHARD, TARGETS, rehash, run_example


def _copy(corpus: Path, tmp: Path, *parts: str) -> Path:
    for part in parts:
        shutil.copytree(corpus / part, tmp / part)
    return tmp


def _cli(*args: str) -> tuple[int, list[str]]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stderr.strip().splitlines()


def _one_error_line(args: tuple[str, ...], match: str, *, warnings: bool = False) -> None:
    """Exit 2 with one `error:` line (after the logged warnings of what was skipped, where `warnings`)."""
    code, lines = _cli(*args)
    assert code == 2, lines
    assert lines and lines[-1].startswith("error: ") and match in lines[-1], lines
    assert len(lines) == 1 or (warnings and lines[0].startswith("WARNING") and "Traceback" not in str(lines)), lines


# --- rlogs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [29, 231])  # a corrupt event mid-row (IndexError); logMonoTime past int64 (Overflow)
def test_raw_rlog_with_corrupt_events_keeps_the_readable_prefix(corpus: Path, seed: int) -> None:
    assert run_example(TARGETS["rlog-raw"], corpus, seed).kind in ("ok", "error")


def test_truncated_raw_rlog_keeps_exactly_a_prefix_of_the_streams(corpus: Path, tmp_path: Path) -> None:
    from spark_distill.ingest.logs import load_schema, read_log, read_log_bytes

    raw, _ = read_log_bytes(corpus / "route" / SEGMENTS[1] / "rlog.zst")
    full = read_log(corpus / "route" / SEGMENTS[1] / "rlog.zst", load_schema())
    path = tmp_path / "rlog"
    path.write_bytes(raw[: len(raw) * 2 // 3])
    cut = read_log(path, load_schema())
    assert 0 < cut.events < full.events and any("truncated" in w for w in cut.warnings)
    for name, stream in cut.streams.items():
        k = len(stream.times)
        assert (stream.times == full.streams[name].times[:k]).all()
        assert (stream.values == full.streams[name].values[:k]).all()


def test_ingest_of_a_segment_with_a_random_rlog_is_one_line(corpus: Path, tmp_path: Path) -> None:
    _copy(corpus, tmp_path, "route")
    (tmp_path / "route" / SEGMENTS[1] / "rlog.zst").write_bytes(bytes(range(256)) * 8)
    _one_error_line(("ingest", str(tmp_path / "route" / SEGMENTS[1]), "--out", str(tmp_path / "ds"), "--workers", "1"),
                    "no readable events", warnings=True)


# --- shards, manifests, the training loader ---------------------------------------------------------------------

def test_a_member_that_does_not_decode_names_sample_and_member(corpus: Path) -> None:
    raw = next(shards.iter_shard(corpus / "ds" / "frames" / SHARD, shards.FRAMES_MEMBERS))
    road = next(m for m in raw if m.startswith("road."))  # under the dataset's camera codec
    data = bytearray(raw[road])
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    with pytest.raises(DatasetError, match=rf"sample {raw['__key__']}: {road} does not decode"):
        shards.decode_sample({**raw, road: bytes(data)})
    with pytest.raises(DatasetError, match=r"meta\.json does not decode"):
        shards.decode_sample({**raw, "meta.json": b"\xff{"})


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: b"\xff\xfe" + json.dumps(m).encode(), "unreadable"),
    (lambda m: b"[]", "holds a JSON list"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "samples": {}}]}, r"shards\[0\].samples"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "name": "../../x.tar"}]}, "not a shard name"),
    (lambda m: {**m, "settings": {"clip_len": "5"}}, "clip_len"),
    (lambda m: {k: v for k, v in m.items() if k != "segments"}, "'segments' is None"),
    (lambda m: {**m, "partial": 1.5}, "partial is 1.5"),  # fuzz run example 203
])
def test_edited_frames_manifest_is_one_dataset_error(corpus: Path, tmp_path: Path, edit, match: str) -> None:
    root = _copy(corpus, tmp_path, "ds") / "ds"
    path = root / "frames" / shards.MANIFEST
    new = edit(json.loads(path.read_text()))
    path.write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
    with pytest.raises(DatasetError, match=match):
        shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    _one_error_line(("inspect", str(root)), match.replace("\\", ""))


def test_label_manifest_with_broken_output_slices_is_one_dataset_error(corpus: Path, tmp_path: Path) -> None:
    root = _copy(corpus, tmp_path, "ds") / "ds"
    path = root / "labels" / "set" / shards.MANIFEST
    m = json.loads(path.read_text())
    m["output_slices"]["vision"]["lead"] = [5]
    path.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=r"output_slices.vision.lead is \[5\]"):
        shards.read_manifest(path.parent, shards.LABELS_FORMAT)
    _one_error_line(("inspect", str(root), "--verify"), "output_slices.vision.lead")


def test_training_loader_refuses_a_sample_missing_a_member(corpus: Path, tmp_path: Path) -> None:
    from spark_distill.data.pairs import shard_pairs
    from spark_distill.train.loader import ClipStream

    work = _copy(corpus, tmp_path, "ds")
    victim = work / "ds" / "frames" / SHARD
    members = [m for m in M._members(victim.read_bytes()) if not m[0].endswith("--c00000.desire.npy.zst")]
    victim.write_bytes(M._tar(members))
    rehash(work, TARGETS["frames-train"], victim)
    pairs, manifest = shard_pairs(work / "ds", "set", split="train", val_fraction=0.0)
    stream = ClipStream(pairs, manifest, batch=1, clip_len=5, burn_in=1, seed=0, workers=1, train=False)
    with pytest.raises(DatasetError, match=r"--c00000: missing desire"):
        list(stream)


def test_a_loader_worker_error_is_one_line(corpus: Path, tmp_path: Path) -> None:
    """torch re-raises a DataLoader worker's exception with the worker's traceback as its message."""
    from spark_distill.data.pairs import shard_pairs
    from spark_distill.train.loader import ClipStream, make_loader

    work = _copy(corpus, tmp_path, "ds")
    victim = work / "ds" / "labels" / "set" / SHARD
    members = M._members(victim.read_bytes())
    victim.write_bytes(M._tar([(n, b"\x28\xb5\x2f\xfd garbage" if i == 0 else d) for i, (n, d) in enumerate(members)]))
    rehash(work, TARGETS["labels-train"], victim)
    pairs, manifest = shard_pairs(work / "ds", "set", split="train", val_fraction=0.0)
    stream = ClipStream(pairs, manifest, batch=1, clip_len=5, burn_in=1, seed=0, workers=2, train=False)
    with pytest.raises(DatasetError) as e:
        list(make_loader(stream))
    assert "\n" not in str(e.value) and str(e.value).startswith("sample ") and "does not decode" in str(e.value)


# --- teacher metadata and ONNX --------------------------------------------------------------------------------

def test_metadata_slices_of_any_type_are_one_label_error(tmp_path: Path) -> None:
    from spark_distill.openpilot.metadata import read_output_slices

    onnx_path = tmp_path / "driving_policy.onnx"
    js = tmp_path / "driving_policy_metadata.json"
    for doc, match in ((b'{"output_slices": {"plan": [[1], 2]}}', "output slice 'plan'"),
                       (b'{"output_slices": {"plan": [0, 1e40]}}', "output slice 'plan'"),
                       (b'{"output_slices": {}}', "empty"), (b"[1, 2]", "holds a JSON list"),
                       (b'{"output_slices": "\xff"}', "invalid JSON")):
        js.write_bytes(doc)
        with pytest.raises(LabelError, match=match):
            read_output_slices(onnx_path, {})


def test_metadata_pickles_that_ask_for_code_are_refused(corpus: Path, tmp_path: Path) -> None:
    from spark_distill.openpilot.teachers import load_teacher

    work = _copy(corpus, tmp_path, "teacher", "ds")
    marker = tmp_path / "pwned"
    for data, what in M.evil_pickles(str(marker)):
        (work / "teacher" / "driving_policy_metadata.pkl").write_bytes(data)
        with pytest.raises(LabelError, match="metadata pickle"):
            load_teacher([work / "teacher"])
        assert not marker.exists(), what
    _one_error_line(("label", str(work / "ds"), "--teacher", str(work / "teacher"), "--backend", "onnxruntime"),
                    "metadata pickle refused")


def test_teacher_graph_onnx_runtime_cannot_run_is_one_line(corpus: Path, tmp_path: Path) -> None:
    work = _copy(corpus, tmp_path, "teacher", "ds")
    path = work / "teacher" / "driving_policy.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE  # a wrong input type
    onnx.save(model, str(path))
    _one_error_line(("label", str(work / "ds"), "--teacher", str(work / "teacher"), "--backend", "onnxruntime",
                     "--name", "x"), "ONNX Runtime cannot", warnings=True)  # warning: "the graph does not batch"
    assert not (work / "ds" / "labels" / "x" / SHARD).exists()


# --- checkpoints and student.json ------------------------------------------------------------------------------

def test_checkpoint_meta_of_the_wrong_shape_falls_back_to_the_previous_one(corpus: Path, tmp_path: Path) -> None:
    from spark_distill.models.restore import load_trained

    run = _copy(corpus, tmp_path, "runs") / "runs" / "r"
    (run / "checkpoints" / "step-00000002" / "meta.json").write_text('{"step": 2, "sha256": 5}')
    assert load_trained(run).step == 1


def test_damaged_state_that_passes_its_checksum_is_a_train_error(corpus: Path, tmp_path: Path) -> None:
    from spark_distill.models.checkpoint import load_checkpoint

    work = _copy(corpus, tmp_path, "runs")
    ckpt = work / "runs" / "r" / "checkpoints" / "step-00000002"
    for name, data in (("state.pt", b"PK\x03\x04" + bytes(100)), ("state.pt", pickle.dumps([1, 2], protocol=2)),
                       ("weights.safetensors", b"\x08" + bytes(7) + b"{}")):
        (ckpt / name).write_bytes(data)
        rehash(work, TARGETS[f"run-{name}"], ckpt / name)
        with pytest.raises(TrainError, match=r"unreadable checkpoint|not a training state"):
            load_checkpoint(ckpt)
    _one_error_line(("export", str(ckpt), "--output", str(tmp_path / "out")), "checkpoint")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("key", "value"), [("rank", {}), ("train_modules", None), ("slices", {"vision": {}}),
                                            ("architecture", {"kind": "compact"}), ("adapter", "x")])
def test_edited_student_json_is_one_config_error(corpus: Path, tmp_path: Path, key: str, value: object) -> None:
    from spark_distill.models.restore import load_trained

    run = _copy(corpus, tmp_path, "runs") / "runs" / "r"
    spec = json.loads((run / "student.json").read_text())
    (run / "student.json").write_text(json.dumps({**spec, key: value}))
    with pytest.raises(ConfigError, match=r"student\.json: .*edited by hand"):
        load_trained(run)
    if key == "rank":
        _one_error_line(("export", str(run), "--output", str(tmp_path / "out")), "student.json")


def test_export_check_ignores_a_dataset_path_of_the_wrong_type() -> None:
    from spark_distill.export.run import _real_clip

    assert _real_clip({"root": 5, "labels": "set"}, 4) is None
    assert _real_clip({"root": "/nonexistent", "labels": ["set"]}, 4) is None
