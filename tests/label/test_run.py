# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass against a plain frame-by-frame reference loop, resume, binding and bad shards."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from spark_distill.data import files, shards
from spark_distill.data.index import plan_segments
from spark_distill.errors import LabelError
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.label.run import COMPILE_S, LabelConfig, label
from spark_distill.openpilot.teachers import load_teacher
from spark_distill.synth.releases import write_release
from spark_distill.synth.teacher import write_teacher
from tests.procs import children, running


@pytest.fixture(scope="module")
def dataset(tici_route, faulty_routes, tmp_path_factory) -> Path:
    """Two tici segments plus an older-device segment with encoder drops (frame-id gaps)."""
    root = tmp_path_factory.mktemp("labelds")
    route, _, _ = tici_route
    drops, _ = faulty_routes["encoder-drops"]
    ingest(IngestConfig(inputs=(str(route), str(drops)), out=root, workers=1, clip_len=15, shard_clips=2))
    return root


@pytest.fixture(scope="module", params=["v1", "0.10.3"])
def teacher(request, tmp_path_factory) -> Path:
    """The project's own layout (0.10.0's inputs) and openpilot 0.10.3's (desire_pulse, float16 history, pads)."""
    out = tmp_path_factory.mktemp(f"teacher-{request.param}")
    if request.param == "v1":
        write_teacher(out, seed=3)
    else:
        write_release(out, request.param, seed=3)
    return out


def reference_labels(root: Path, teacher_dir: Path, lat_delay: float | None = None) -> dict[str, tuple]:
    """modeld written out as simply as possible: one segment at a time, one frame at a time, numpy
    buffers shifted like modeld's, ONNX Runtime on the original batch-1 graphs. `lat_delay`: fed every frame
    (None: each frame's own, the liveDelay in force as ingest stored it)."""
    vision = ort.InferenceSession(str(teacher_dir / "driving_vision.onnx"))
    policy = ort.InferenceSession(str(teacher_dir / "driving_policy.onnx"))
    vs = json.loads(json.dumps({k: [v.start, v.stop] for k, v in __import__("pickle").loads(
        (teacher_dir / "driving_vision_metadata.pkl").read_bytes())["output_slices"].items()}))
    ps = {k: [v.start, v.stop] for k, v in __import__("pickle").loads(
        (teacher_dir / "driving_policy_metadata.pkl").read_bytes())["output_slices"].items()}
    names = [i.name for i in policy.get_inputs()]
    dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in policy.get_inputs()}
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    samples = [shards.decode_sample(s) for e in manifest["shards"]
               for s in shards.iter_shard(root / "frames" / e["name"], shards.FRAMES_MEMBERS)]
    out, segment = {}, None
    for s in samples:
        if s["meta"]["segment"] != segment:  # a new segment: every buffer back to zeros
            segment = s["meta"]["segment"]
            road_buf = np.zeros((5, 6, 128, 256), np.uint8)
            wide_buf = np.zeros((5, 6, 128, 256), np.uint8)
            feats = np.zeros((100, 512), np.float32)
            desire_buf = np.zeros((100, 8), np.float32)
            curv_buf = np.zeros((100, 1), np.float32)
            prev_desire = np.zeros(8, np.float32)
            prev_fid = None
        vis_rows, pol_rows = [], []
        for t, fid in enumerate(s["meta"]["frame_ids"]):
            for _ in range(0 if prev_fid is None else fid - prev_fid - 1):  # dropped frames: repeat, no pulse
                road_buf = np.concatenate([road_buf[1:], road_buf[-1:]])
                wide_buf = np.concatenate([wide_buf[1:], wide_buf[-1:]])
                feats = np.concatenate([feats[1:], feats[-1:]])
                curv_buf = np.concatenate([curv_buf[1:], curv_buf[-1:]])
                desire_buf = np.concatenate([desire_buf[1:], np.zeros((1, 8), np.float32)])
            prev_fid = fid
            road_buf = np.concatenate([road_buf[1:], s["road"][t][None]])
            wide_buf = np.concatenate([wide_buf[1:], s["wide"][t][None]])
            img = np.concatenate([road_buf[0], road_buf[-1]])[None]
            big = np.concatenate([wide_buf[0], wide_buf[-1]])[None]
            v = vision.run(None, {"img": img, "big_img": big})[0][0]
            feats = np.concatenate([feats[1:], v[slice(*vs["hidden_state"])][None]])
            d = s["desire"][t].copy()
            d[0] = 0
            pulse = np.where(d - prev_desire > 0.99, d, 0).astype(np.float32)
            prev_desire = d
            desire_buf = np.concatenate([desire_buf[1:], pulse[None]])
            lat = s["meta"]["lat_delay"][t] if lat_delay is None else lat_delay  # modeld: sm["liveDelay"] each frame
            feeds = {"features_buffer": feats[3::4][None], "traffic_convention": s["traffic"][None],
                     "desire": desire_buf.reshape(25, 4, 8).max(axis=1)[None],
                     "desire_pulse": desire_buf.reshape(25, 4, 8).max(axis=1)[None],
                     "lateral_control_params": np.array([[max(float(s["car"][t, 0]), 0.0), lat]], np.float32),
                     "prev_desired_curv": 0 * curv_buf[3::4][None]}  # 0.10.0 fed zeros: `0*...`
            p = policy.run(None, {n: feeds[n].astype(dtypes[n]) for n in names})[0][0]
            if "desired_curvature" in ps:
                curv_buf = np.concatenate([curv_buf[1:], [[p[ps["desired_curvature"][0]]]]]).astype(np.float32)
            vis_rows.append(v)
            pol_rows.append(p)
        out[s["__key__"]] = (np.array(vis_rows), np.array(pol_rows))
    return out


def read_labels(folder: Path) -> dict[str, tuple]:
    manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
    out = {}
    for e in manifest["shards"]:
        for s in shards.iter_shard(folder / e["name"], shards.LABEL_MEMBERS):
            d = shards.decode_sample(s)
            out[s["__key__"]] = (d["vision"], d["policy"])
    return out


def test_label_pass_equals_the_reference_loop(dataset: Path, teacher: Path) -> None:
    cfg = LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=f"ort-{teacher.name}")
    result = label(cfg)
    assert result.frames == 80 + 38 and result.shards_written == 5
    got = read_labels(dataset / "labels" / f"ort-{teacher.name}")
    want = reference_labels(dataset, teacher)
    frames_keys = [k for e in shards.read_manifest(dataset / "frames", shards.FRAMES_FORMAT)["shards"]
                   for k in (s["__key__"] for s in shards.iter_shard(dataset / "frames" / e["name"],
                                                                      shards.FRAMES_MEMBERS))]
    assert list(got) == frames_keys == list(want), "same keys, same order as the frames shards"
    for key, (vision, policy) in want.items():
        assert got[key][0].dtype == np.float16 and got[key][0].shape == vision.shape
        # stored as float16; batching may reorder float sums, so allow an ulp of fp16 beyond the rounding
        np.testing.assert_allclose(got[key][0].astype(np.float32), vision, rtol=2e-3, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(got[key][1].astype(np.float32), policy, rtol=2e-3, atol=1e-3, err_msg=key)
    manifest = shards.read_manifest(dataset / "labels" / f"ort-{teacher.name}", shards.LABELS_FORMAT)
    frames_sha = files.sha256_file(dataset / "frames" / shards.MANIFEST)
    assert manifest["frames_manifest_sha256"] == frames_sha and manifest["warmup_frames"] == 100
    assert manifest["output_slices"]["vision"]["hidden_state"][1] - manifest["output_slices"]["vision"][
        "hidden_state"][0] == 512
    assert manifest["throughput"]["frames_per_s"] > 0 and manifest["backend"]["name"] == "onnxruntime"


def test_a_batch_larger_than_the_dataset_runs_one_lane_per_segment(dataset: Path, teacher: Path) -> None:
    name = f"wide-{teacher.name}"
    result = label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=16, name=name))
    manifest = shards.read_manifest(dataset / "labels" / name, shards.LABELS_FORMAT)
    assert manifest["batch"] == 3 and manifest["throughput"]["batch"] == 3, "3 segments: 3 lanes, not 16"
    assert result.frames == 80 + 38 and result.profile["steps"] == 40  # the longest segment's frames
    got, want = read_labels(dataset / "labels" / name), reference_labels(dataset, teacher)
    for key, (vision, policy) in want.items():
        np.testing.assert_allclose(got[key][0].astype(np.float32), vision, rtol=2e-3, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(got[key][1].astype(np.float32), policy, rtol=2e-3, atol=1e-3, err_msg=key)


def test_torch_backend_labels_match_onnxruntime(dataset: Path, teacher: Path) -> None:
    for backend in ("onnxruntime", "torch"):
        label(LabelConfig(root=dataset, teacher=(teacher,), backend=backend, precision="fp32", batch=3,
                          name=f"{backend}-{teacher.name}"))
    a = read_labels(dataset / "labels" / f"onnxruntime-{teacher.name}")
    b = read_labels(dataset / "labels" / f"torch-{teacher.name}")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k][0].astype(np.float32), b[k][0].astype(np.float32), rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(a[k][1].astype(np.float32), b[k][1].astype(np.float32), rtol=2e-3, atol=1e-3)


def test_compiled_on_the_cpu_the_pass_labels_as_the_reference_loop(dataset: Path, teacher: Path) -> None:
    """--compile on, on the CPU: the models compiled apart (the whole step as one program only on CUDA)."""
    name = f"cpu-compiled-{teacher.name}"
    result = label(LabelConfig(root=dataset, teacher=(teacher,), backend="torch", precision="fp32", batch=3,
                               compile="on", name=name, device="cpu"))
    assert result.frames == 80 + 38 and result.backend["compiled"] and not result.backend["step_compiled"]
    assert result.profile["captured step"] == 0.0 and result.profile[COMPILE_S] == 0.0
    got, want = read_labels(dataset / "labels" / name), reference_labels(dataset, teacher)
    assert list(got) == list(want)
    for key, (vision, policy) in want.items():
        np.testing.assert_allclose(got[key][0].astype(np.float32), vision, rtol=2e-3, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(got[key][1].astype(np.float32), policy, rtol=2e-3, atol=1e-3, err_msg=key)


def test_the_manifest_records_the_backend_as_it_ran(dataset: Path, teacher: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher torch.compile could not compile ran uncompiled: the label set's manifest (and the result) say so,
    not the compiled backend the pass set out with."""
    import torch._dynamo

    def compile(fn, **_):
        def run(*_args):
            raise torch._dynamo.exc.InternalTorchDynamoError("TypeError: torch.Size() takes an iterable of 'int'")
        return run

    monkeypatch.setattr(torch, "compile", compile)
    name = f"fell-back-{teacher.name}"
    result = label(LabelConfig(root=dataset, teacher=(teacher,), backend="torch", precision="fp32", batch=3,
                               compile="on", name=name, device="cpu"))
    recorded = json.loads((dataset / "labels" / name / shards.MANIFEST).read_text())["backend"]
    assert result.frames == 80 + 38 and recorded == result.backend
    assert recorded["name"] == "torch" and recorded["compiled"] is False and recorded["cuda_graphs"] is False


def test_the_step_compiled_as_one_program_computes_what_the_eager_step_does(teacher: Path) -> None:
    """The CUDA default (frame gather, modeld state and both models as one inductor program), run on the CPU: the
    same outputs and the same modeld state as the step run op by op, over steps that cross a clip boundary."""
    from spark_distill.label.backends import get_backend
    from spark_distill.label.step import DELAY_COLS, DESIRE_COLS, LabelStep

    t, vm, pm = load_teacher([teacher])
    runners = []
    for fuse in (False, True):
        be = get_backend("torch", t, vm, pm, batch=2, precision="fp32", device="cpu", compile="on", fuse_step=fuse)
        r = LabelStep(teacher=t, backend=be, batch=2, clip_len=4)
        assert (r.compile_s > 0) == fuse and not r.graphs
        r.clips.copy_(torch.randint(0, 255, r.clips.shape, generator=torch.Generator().manual_seed(1),
                                    dtype=torch.uint8))
        runners.append(r)
    for step in range(6):
        for r in runners:
            packed = r.inputs_pair[0]
            packed[:, 0], packed[:, 1], packed[:, 2] = step // 4, step % 4, 10.0 + step  # slot, t, v_ego
            packed[:, 3:5] = torch.tensor([1.0, 0.0])
            packed[:, DESIRE_COLS] = 0.0
            packed[:, 5 + (step // 2) % 3] = 1.0  # desire changes: pulses
            packed[:, DELAY_COLS] = torch.tensor([[0.2, 0.15], [0.3, 0.25]])  # each row its own delays
            with torch.no_grad():
                r.step_fn(packed)
        eager, fused = runners
        np.testing.assert_allclose(fused.out_v.float().numpy(), eager.out_v.float().numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(fused.out_p.float().numpy(), eager.out_p.float().numpy(), rtol=1e-3, atol=1e-3)
        for name in ("features", "desire", "curv", "newest"):
            np.testing.assert_allclose(getattr(fused.state, name).float().numpy(),
                                       getattr(eager.state, name).float().numpy(), rtol=1e-4, atol=1e-5)
        assert torch.equal(fused.state.images["road"], eager.state.images["road"])
    assert eager.state.features.abs().sum() > 0 and eager.out_p.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", ["off", "on"])
def test_the_captured_step_on_cuda_labels_as_the_reference_loop(dataset: Path, teacher: Path, compile: str) -> None:
    """On CUDA the whole step (frame gather, modeld state, both models, outputs) replays as one CUDA graph:
    fp32 (TF32 off), eager and compiled, against the frame-by-frame ONNX Runtime loop."""
    name = f"cuda-{compile}-{teacher.name}"
    result = label(LabelConfig(root=dataset, teacher=(teacher,), backend="torch", precision="fp32", batch=3,
                               compile=compile, name=name))
    assert result.profile["captured step"] == 1.0 and result.frames == 80 + 38
    assert (result.profile[COMPILE_S] > 0.0) == (compile == "on")
    got, want = read_labels(dataset / "labels" / name), reference_labels(dataset, teacher)
    assert list(got) == list(want)
    for key, (vision, policy) in want.items():
        np.testing.assert_allclose(got[key][0].astype(np.float32), vision, rtol=2e-3, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(got[key][1].astype(np.float32), policy, rtol=2e-3, atol=1e-3, err_msg=key)


def test_rerun_and_resume(dataset: Path, teacher: Path) -> None:
    cfg = LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=f"resume-{teacher.name}")
    label(cfg)
    folder = dataset / "labels" / f"resume-{teacher.name}"
    digests = {p.name: files.sha256_file(p) for p in folder.glob("shard-*.tar")}
    again = label(cfg)
    assert again.frames == 0 and again.shards_already == 5
    # lose the last shard (as if killed before writing it): the rerun relabels only its segment (40 frames)
    manifest = json.loads((folder / "manifest.json").read_text())
    lost = [manifest["shards"][4]["name"]]
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] not in lost]
    files.write_json_atomic(folder / "manifest.json", manifest)
    for name in lost:
        (folder / name).unlink()
    resumed = label(cfg)
    assert resumed.shards_written == 1 and resumed.frames == 40
    assert {p.name: files.sha256_file(p) for p in folder.glob("shard-*.tar")} == digests
    # recorded shards damaged on disk (the first cut short, the second deleted; the manifest still lists both):
    # the rerun writes just those again, from the first frames of the segments with clips in them
    first, second = folder / "shard-000000.tar", folder / "shard-000001.tar"
    first.write_bytes(first.read_bytes()[:4096])
    second.unlink()
    frames = shards.read_manifest(dataset / "frames", shards.FRAMES_FORMAT)
    touched = {p.name for p in plan_segments(frames) if {c.shard for c in p.clips} & {0, 1}}
    healed = label(cfg)
    assert (healed.shards_written, healed.shards_already) == (2, 3) and len(touched) == 2
    assert healed.frames == sum(s["frames_kept"] for s in frames["segments"] if s["name"] in touched) == 78
    assert {p.name: files.sha256_file(p) for p in folder.glob("shard-*.tar")} == digests
    assert label(cfg).frames == 0, "intact again: nothing left"


def test_label_set_is_bound_to_its_frames_and_teacher(dataset: Path, teacher: Path, tmp_path: Path) -> None:
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=f"bound-{teacher.name}"))
    other = tmp_path / "other-teacher"
    write_teacher(other, seed=99)
    with pytest.raises(LabelError, match="made by another teacher"):
        label(LabelConfig(root=dataset, teacher=(other,), backend="onnxruntime", name=f"bound-{teacher.name}"))
    manifest = json.loads((dataset / "labels" / f"bound-{teacher.name}" / "manifest.json").read_text())
    manifest["frames_shards"][0]["sha256"] = "0" * 64
    files.write_json_atomic(dataset / "labels" / f"bound-{teacher.name}" / "manifest.json", manifest)
    with pytest.raises(LabelError, match="bound to another frames dataset"):
        label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", name=f"bound-{teacher.name}"))


def test_delay_overrides_are_fed_recorded_and_bound(dataset: Path, teacher: Path) -> None:
    """By default each frame gets its segment's logged delays (the reference loop reads them from meta.json, the
    liveDelay in force); --lat-delay feeds one value to every segment, the manifest records which per segment, and
    resuming the set with other overrides is refused."""
    frames = shards.read_manifest(dataset / "frames", shards.FRAMES_FORMAT)
    logged = [s["delays"]["lat_delay"] for s in frames["segments"]]
    assert len(set(logged)) == 2 and 0.2 not in logged  # segments 0 and 1 of a route log different liveDelay values
    name = f"delay-{teacher.name}"
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=name, lat_delay=0.5))
    got, want = read_labels(dataset / "labels" / name), reference_labels(dataset, teacher, lat_delay=0.5)
    for key, (_, policy) in want.items():
        np.testing.assert_allclose(got[key][1].astype(np.float32), policy, rtol=2e-3, atol=1e-3, err_msg=key)
    manifest = shards.read_manifest(dataset / "labels" / name, shards.LABELS_FORMAT)
    assert (manifest["lat_delay"], manifest["long_delay"]) == (0.5, None)
    lateral = load_teacher([teacher])[0].layout.lateral_params  # v1 takes lateral_control_params, 0.10.3 not
    assert manifest["loop"]["inputs_fed"].get("lateral_control_params") == (["max(v_ego, 0)", 0.5] if lateral
                                                                            else None)
    for seg in frames["segments"]:
        assert manifest["segments"][seg["name"]]["delays"] == {
            "lat_delay": {"value": 0.5, "source": "--lat-delay"},
            "long_delay": {"value": seg["delays"]["long_delay"], "source": "carParams.longitudinalActuatorDelay"}}
    with pytest.raises(LabelError, match=r"was made with --lat-delay 0.5 and the logs' longitudinal delays, not the "
                                         r"logs' lateral delays"):
        label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=name))
    # what a pass without overrides records: each segment's own, from its log
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=3, name=f"{name}-log"))
    default = shards.read_manifest(dataset / "labels" / f"{name}-log", shards.LABELS_FORMAT)
    assert (default["lat_delay"], default["long_delay"]) == (None, None)
    for seg in frames["segments"]:
        lat = default["segments"][seg["name"]]["delays"]["lat_delay"]
        assert lat["source"] == "liveDelay.lateralDelay" and lat["value"] == seg["delays"]["lat_delay"]
    # the release's smoothing seconds are recorded; a set made before they were (none added) is not resumed with them
    smooth = list(load_teacher([teacher])[0].layout.smooth)
    assert default["smooth_seconds"] == smooth == ([0.0, 0.0] if lateral else [0.1, 0.3])
    if any(smooth):
        del default["smooth_seconds"]
        files.write_json_atomic(dataset / "labels" / f"{name}-log" / "manifest.json", default)
        with pytest.raises(LabelError, match=r"was made adding \(0.0, 0.0\) s to the logs' delays, this version "
                                             r"adds \(0.1, 0.3\) s for 0.10.1 .. 0.10.3"):
            label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=3, name=f"{name}-log"))


def test_tensorrt_backend_through_the_label_pass(dataset: Path, teacher: Path, monkeypatch) -> None:
    """The tensorrt backend's engine build, cache and execution path, run through the fake of its API."""
    import sys

    from . import fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    fake_tensorrt.BUILDS.clear()
    cfg = LabelConfig(root=dataset, teacher=(teacher,), backend="tensorrt", batch=3, name=f"trt-{teacher.name}")
    label(cfg)
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=3, name=f"o-{teacher.name}"))
    a = read_labels(dataset / "labels" / f"trt-{teacher.name}")
    b = read_labels(dataset / "labels" / f"o-{teacher.name}")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
    manifest = shards.read_manifest(dataset / "labels" / f"trt-{teacher.name}", shards.LABELS_FORMAT)
    assert manifest["backend"]["tensorrt"] == "10.99.0-fake" and manifest["precision"] == "fp16"
    assert len(fake_tensorrt.BUILDS) == 2 and len(list((dataset / "labels" / ".engines").glob("*.engine"))) >= 2


def test_corrupt_frames_shard_is_reported_and_skipped(dataset: Path, teacher: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    """Also: a frames shard is read for its sha256 check once, then trusted while its file is unchanged (size,
    mtime, inode); ingest's own shards count as checked (hashed as written)."""
    import shutil

    entries = shards.read_manifest(dataset / "frames", shards.FRAMES_FORMAT)["shards"]
    names = {e["name"] for e in entries}
    ingested = (dataset / "frames" / shards.VERIFIED,)
    assert shards.verified_unchanged(dataset / "frames", entries, ingested) == names, "ingest records what it hashed"
    root = tmp_path / "copy"
    shutil.copytree(dataset / "frames", root / "frames")
    assert shards.verified_unchanged(root / "frames", entries, (root / "frames" / shards.VERIFIED,)) == set(), \
        "a copy (new inodes) is checked again"
    hashed: list[str] = []
    sha256_file = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: (hashed.append(Path(p).name), sha256_file(p))[1])
    label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=2, name="clean"))
    assert sorted(n for n in hashed if n.endswith(".tar")) == sorted(names)
    shard = root / "frames" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[4000] ^= 0xFF
    shard.write_bytes(bytes(data))
    hashed.clear()
    result = label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=2, name="bad"))
    assert [n for n in hashed if n.endswith(".tar")] == ["shard-000001.tar"], "only the changed file is read"
    frames_record = (root / "frames" / shards.VERIFIED).read_bytes()
    assert frames_record == (dataset / "frames" / shards.VERIFIED).read_bytes(), "label never writes into frames/"
    assert result.skipped_shards == ["shard-000001.tar"]
    clean, bad = root / "labels" / "clean", root / "labels" / "bad"
    assert sorted(p.name for p in bad.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000002.tar",
                                                                "shard-000003.tar", "shard-000004.tar"]
    # shards whose segments never touch the bad one are unchanged; the segment that lost its first clip
    # restarts its history at the next clip, as at a segment start (recorded in the manifest)
    for name in ("shard-000000.tar", "shard-000003.tar", "shard-000004.tar"):
        assert files.sha256_file(bad / name) == files.sha256_file(clean / name)
    manifest = shards.read_manifest(bad, shards.LABELS_FORMAT)
    assert manifest["skipped_shards"] == ["shard-000001.tar"]
    assert any(seg["resets"] for seg in manifest["segments"].values())


def test_a_pass_whose_every_frames_shard_fails_its_checksum_exits_2_and_leaves_no_label_set(
        dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spark_distill.cli import app

    root = tmp_path / "copy"
    shutil.copytree(dataset / "frames", root / "frames")
    write_teacher(tmp_path / "t", seed=3)
    shard_names = sorted(p.name for p in (root / "frames").glob("shard-*.tar"))
    for name in shard_names:
        data = bytearray((root / "frames" / name).read_bytes())
        data[4000] ^= 0xFF
        (root / "frames" / name).write_bytes(bytes(data))
    with pytest.raises(LabelError, match=rf"^every frames shard \({len(shard_names)}\) failed its sha256 check"):
        label(LabelConfig(root=root, teacher=(tmp_path / "t",), backend="onnxruntime", batch=2, name="c1"))
    assert not (root / "labels" / "c1").exists(), "no empty label set for train to refuse later"
    r = CliRunner().invoke(app, ["label", str(root), "--teacher", str(tmp_path / "t"), "--name", "c2", "--backend",
                                 "onnxruntime"])
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(errors) == 1, r.output  # the error alone: no warning per shard before it
    assert errors[0].startswith(f"error: every frames shard ({len(shard_names)}) failed its sha256 check") and \
        f"spark-distill inspect {root} --verify" in errors[0] and "ingest" in errors[0], errors
    assert "next:" not in r.output and not (root / "labels" / "c2").exists()
    assert sorted(p.name for p in (root / "labels").iterdir() if not p.name.startswith(".")) == []


def test_killed_label_pass_resumes_to_the_same_shards(dataset: Path, teacher: Path, tmp_path: Path) -> None:
    import shutil
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "copy"
    shutil.copytree(dataset / "frames", root / "frames")
    args = [sys.executable, "-m", "spark_distill", "label", str(root), "--teacher", str(teacher), "--batch", "1",
            "--backend", "onnxruntime", "--name", "k"]
    label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=1, name="ref"))
    manifest = root / "labels" / "k" / shards.MANIFEST

    def recorded() -> int:  # shards the manifest lists (the writer process renames a shard before it is recorded)
        try:
            return len(json.loads(manifest.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    for _attempt in range(3):  # a pass that ended before the kill landed (this process descheduled for the ~0.3 s
        # the tiny pass takes, on a loaded box): start it again
        shutil.rmtree(root / "labels" / "k", ignore_errors=True)
        # stderr to a file, not a pipe: a worker process outliving the killed pass would hold a pipe open forever
        err_file = (tmp_path / "stderr").open("w+")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        # killed as soon as its first label shard is on disk (renamed by a writer; the manifest may not list it
        # yet: a resumed run labels it again): the pass has 7 of its 9 clips left then, so it is killed mid-way
        # (waiting for a recorded shard raced the pass's end, whose manifest lists every shard)
        deadline = time.monotonic() + 120
        while (not list((root / "labels" / "k").glob("shard-*.tar")) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.005)
        workers = children(proc.pid)  # readers, writers (and multiprocessing's resource tracker)
        if proc.poll() is not None:  # it ended before the kill: nothing to kill
            err_file.close()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err_file.seek(0)
        err = err_file.read()
        err_file.close()
        assert list((root / "labels" / "k").glob("shard-*.tar")), f"no label shard before it was killed: {err[-2000:]}"
        deadline = time.monotonic() + 10  # writers die with it (PR_SET_PDEATHSIG), readers within their 1 s poll
        while (alive := [p for p in workers if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers and not alive, f"worker processes outlived the killed label pass: {workers}, {alive}"
        if recorded() < 5:
            break
    assert recorded() < 5, "killed before it finished, three times"
    subprocess.run(args, check=True, capture_output=True)
    got = {p.name: files.sha256_file(p) for p in (root / "labels" / "k").glob("shard-*.tar")}
    want = {p.name: files.sha256_file(p) for p in (root / "labels" / "ref").glob("shard-*.tar")}
    assert got == want and len(got) == 5


def _label_rank(rank: int, root: Path, url: str) -> None:
    from spark_distill.label.run import LabelConfig, label

    label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=4, name="two",
                      process_rank=rank, world=2, init_method=url))


def test_two_ranks_split_segments_and_write_the_same_shards(labeled: Path) -> None:
    """torchrun-style: each rank labels whole segments; rank 0 assembles shards identical to one process's."""
    import socket

    import torch.multiprocessing as mp

    from spark_distill.data.index import plan_segments
    from spark_distill.label.run import assign_segments

    frames = shards.read_manifest(labeled / "frames", shards.FRAMES_FORMAT)
    split = assign_segments(plan_segments(frames), frames, 2)
    assert all(split) and sorted(p.name for ps in split for p in ps) == sorted(s["name"] for s in frames["segments"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_label_rank, args=(labeled, f"tcp://127.0.0.1:{port}"), nprocs=2)
    one, two = labeled / "labels" / "set", labeled / "labels" / "two"
    names = sorted(p.name for p in one.glob("shard-*.tar"))
    assert names == sorted(p.name for p in two.glob("shard-*.tar")) and not (two / ".parts").exists()
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    manifest = shards.read_manifest(two, shards.LABELS_FORMAT)
    assert manifest["throughput"]["ranks"] == 2 and len(manifest["shards"]) == len(names)
    assert set(manifest["segments"]) == set(shards.read_manifest(one, shards.LABELS_FORMAT)["segments"])
    shutil.rmtree(two)


def _stop_and_check(cfg: LabelConfig, interrupt) -> Exception:
    """Run `cfg` with `interrupt(half_done)` called on progress until it raises; check what it left: no worker
    process, only complete shards, each recorded in the manifest. Returns what stopped it."""
    import multiprocessing as mp

    with pytest.raises((KeyboardInterrupt, LabelError)) as stopped:
        label(cfg, on_progress=lambda n, total: interrupt(n >= total // 2))
    assert not mp.active_children(), "every reader and writer process stopped"
    folder = cfg.root / "labels" / cfg.name
    written = (folder / shards.MANIFEST).exists()  # the manifest appears with the first shard written
    listed = {s["name"] for s in shards.read_manifest(folder, shards.LABELS_FORMAT)["shards"]} if written else set()
    assert {p.name for p in folder.glob("shard-*")} == listed, "no half-written shard, every written shard recorded"
    assert len(listed) < len(list((cfg.root / "frames").glob("shard-*.tar")))
    return stopped.value


def test_a_dead_reader_or_ctrl_c_stops_every_process_and_leaves_a_resumable_set(labeled: Path, tmp_path: Path
                                                                               ) -> None:
    import multiprocessing as mp

    def kill_readers(half_done: bool) -> None:
        if half_done:
            for p in mp.active_children():
                if p.name.startswith("label-reader"):
                    p.kill()

    def ctrl_c(half_done: bool) -> None:
        if half_done:
            raise KeyboardInterrupt

    root = tmp_path / "copy"
    shutil.copytree(labeled / "frames", root / "frames")
    cfg = LabelConfig(root=root, teacher=(labeled / "teacher",), backend="onnxruntime", batch=4, workers=2, name="set")
    error = _stop_and_check(cfg, kill_readers)
    assert isinstance(error, LabelError) and "\n" not in str(error)
    assert re.search(r"reader process label-reader-\d died \(exit code -9\) while reading shard-\d{6}\.tar", str(error))
    assert isinstance(_stop_and_check(cfg, ctrl_c), KeyboardInterrupt)  # the resumed run, stopped by Ctrl-C
    label(cfg)
    folder = root / "labels" / "set"
    for p in (labeled / "labels" / "set").glob("shard-*.tar"):
        assert (folder / p.name).read_bytes() == p.read_bytes(), p.name


def test_the_pass_hands_its_gpu_memory_back(dataset: Path, teacher: Path, tmp_path: Path, monkeypatch) -> None:
    """The label pass hands the GPU memory it cached back to the device when it ends, also on an error (bench
    distill trains in the same process next: on an H100 it ran out of memory with 69 GB still reserved by the
    pass); without CUDA in use nothing is asked of it."""
    import torch

    from spark_distill.label import run as label_run

    release = label_run.release_device_memory
    calls, freed = [], []
    monkeypatch.setattr(label_run, "release_device_memory", lambda: calls.append(True))
    name = f"mem-{teacher.name}"
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=2, name=name))
    other = tmp_path / "other"
    write_teacher(other, seed=98)
    with pytest.raises(LabelError, match="made by another teacher"):
        label(LabelConfig(root=dataset, teacher=(other,), backend="onnxruntime", name=name))
    assert calls == [True, True]
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    release()
    assert freed == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    release()
    assert freed == [True]
