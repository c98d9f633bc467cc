# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass on a stand-in of each supported openpilot release against a reference loop per era, written out
plainly from that era's selfdrive/modeld/modeld.py (numpy buffers, one frame at a time, ONNX Runtime on the
batch-1 graphs); nothing of openpilot/state.py is reused."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from spark_distill.data import shards
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.label.run import LabelConfig, label
from spark_distill.synth.releases import write_release

ERA = {"0.9.6": "20hz", "0.9.7": "20hz", "mid-2024": "20hz", "late-2024": "5hz", "0.10.0": "split",
       "0.10.3": "split", "0.11": "0.11"}
COMBINED_FILE = {"20hz": "supercombo.onnx", "5hz": "supercombo.onnx", "0.11": "driving_supercombo.onnx"}


@pytest.fixture(scope="module")
def dataset(faulty_routes, tmp_path_factory) -> Path:
    """One segment with encoder drops (frames the video lacks), 15-frame clips."""
    root = tmp_path_factory.mktemp("releaseds")
    drops, _ = faulty_routes["encoder-drops"]
    ingest(IngestConfig(inputs=(str(drops),), out=root, workers=1, clip_len=15, shard_clips=2))
    return root


def _slices(path: Path) -> dict[str, slice]:
    """A model's heads as openpilot slices its output (pad left out), from the pkl or the ONNX property."""
    import base64

    import onnx

    pkl = Path(str(path.with_suffix("")) + "_metadata.pkl")
    if pkl.exists():
        raw = pickle.loads(pkl.read_bytes())["output_slices"]
    else:
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        raw = pickle.loads(base64.b64decode(props["output_slices"]))
    return {k: v for k, v in raw.items() if k != "pad"}


def _shift(buf: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.concatenate([buf[1:], new[None]])


def reference(root: Path, teacher: Path, era: str) -> dict[str, dict[str, np.ndarray]]:
    """{clip key: {head: (frames, width)}}: modeld of `era` over every segment of the dataset."""
    split = era == "split"
    files = ["driving_vision.onnx", "driving_policy.onnx"] if split else [COMBINED_FILE[era]]
    sessions = [ort.InferenceSession(str(teacher / f)) for f in files]
    slices = [_slices(teacher / f) for f in files]
    dtypes = [{i.name: (np.float16 if i.type == "tensor(float16)" else np.float32 if "float" in i.type else np.uint8)
               for i in s.get_inputs()} for s in sessions]
    skip = 1 if era == "20hz" else 4
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    samples = [shards.decode_sample(s) for e in manifest["shards"]
               for s in shards.iter_shard(root / "frames" / e["name"], shards.FRAMES_MEMBERS)]
    out, segment = {}, None
    for s in samples:
        if s["meta"]["segment"] != segment:  # modeld's start-up: every buffer zero
            segment = s["meta"]["segment"]
            road_buf = np.zeros((skip + 1, 6, 128, 256), np.uint8)
            wide_buf = np.zeros((skip + 1, 6, 128, 256), np.uint8)
            feats = np.zeros((100 if split else 99, 512), np.float32)
            desire_20hz = np.zeros((100, 8), np.float32)
            curv_20hz = np.zeros((100, 1), np.float32)
            prev_desire = np.zeros(8, np.float32)
            prev_fid = None
        rows: dict[str, list[np.ndarray]] = {}
        for t, fid in enumerate(s["meta"]["frame_ids"]):
            for _ in range(0 if prev_fid is None else fid - prev_fid - 1):  # frames the video lacks: repeat, no pulse
                road_buf, wide_buf = _shift(road_buf, road_buf[-1]), _shift(wide_buf, wide_buf[-1])
                feats, curv_20hz = _shift(feats, feats[-1]), _shift(curv_20hz, curv_20hz[-1])
                desire_20hz = _shift(desire_20hz, np.zeros(8, np.float32))
            prev_fid = fid
            road_buf, wide_buf = _shift(road_buf, s["road"][t]), _shift(wide_buf, s["wide"][t])
            img = np.concatenate([road_buf[0], road_buf[-1]])[None]  # frames t-skip and t
            big = np.concatenate([wide_buf[0], wide_buf[-1]])[None]
            desire = s["desire"][t].copy()
            desire[0] = 0
            desire_20hz = _shift(desire_20hz, np.where(desire - prev_desire > 0.99, desire, 0).astype(np.float32))
            prev_desire = desire
            v_ego = max(float(np.nan_to_num(s["car"][t, 0])), 0.0)
            # modeld: sm["liveDelay"].lateralDelay in force at this frame, CP.longitudinalActuatorDelay (as ingest
            # stored them; tests/ingest checks them against the log)
            lat, lon = s["meta"]["lat_delay"][t], s["meta"]["long_delay"]
            if era == "0.11":  # its modeld: long_delay = CP.longitudinalActuatorDelay + LONG_SMOOTH_SECONDS (0.3),
                lon += 0.3  # lat_delay = liveDelay.lateralDelay + LAT_SMOOTH_SECONDS (0.0)
            if era == "20hz":  # 0.9.6 modeld: the 20 Hz buffers as they are; features and curvature past only
                feeds = {"desire": desire_20hz[None], "features_buffer": feats[None],
                         "prev_desired_curv": curv_20hz[None], "nav_features": np.zeros((1, 256)),
                         "nav_instructions": np.zeros((1, 150))}
            else:  # 5 Hz context: desire pooled over 4
                pooled = desire_20hz.reshape(25, 4, 8).max(axis=1)[None]
                feeds = {"desire": pooled, "desire_pulse": pooled, "prev_desired_curv": np.zeros((1, 25, 1))}
                if not split:  # late 2024 / 0.11: past only, np.arange(-4, -100, -4)[::-1]
                    feeds["features_buffer"] = feats[np.arange(-4, -100, -4)[::-1]][None]
            feeds |= {"traffic_convention": s["traffic"][None],
                      "lateral_control_params": np.array([[v_ego, lat]]),
                      "action_t": np.array([[lat + 0.075, lon + 0.075]]),
                      "input_imgs": img, "big_input_imgs": big, "img": img, "big_img": big}
            if split:
                v = sessions[0].run(None, {n: feeds[n] for n in dtypes[0]})[0][0]
                feats = _shift(feats, v[slices[0]["hidden_state"]])
                feeds["features_buffer"] = feats[np.arange(-1, -100, -4)[::-1]][None]  # including this frame
                p = sessions[1].run(None, {n: feeds[n].astype(d) for n, d in dtypes[1].items()})[0][0]
                heads = {k: v[sl] for k, sl in slices[0].items()} | {k: p[sl] for k, sl in slices[1].items()}
            else:
                o = sessions[0].run(None, {n: feeds[n].astype(d) for n, d in dtypes[0].items()})[0][0]
                feats = _shift(feats, o[slices[0]["hidden_state"]])
                if era == "20hz":
                    curv_20hz = _shift(curv_20hz, o[slices[0]["desired_curvature"]][:1])
                heads = {k: o[sl] for k, sl in slices[0].items()}
            for k, x in heads.items():
                rows.setdefault(k, []).append(x)
        out[s["__key__"]] = {k: np.array(x) for k, x in rows.items()}
    return out


@pytest.mark.parametrize("release", ["0.9.6", "late-2024", "0.10.0", "0.10.3", "0.11"])  # one per era (0.9.7 and
# mid-2024 differ from 0.9.6 only in inputs and slices: tests/openpilot/test_releases.py)
def test_labels_equal_the_modeld_loop_of_each_era(dataset: Path, release: str, tmp_path: Path) -> None:
    teacher = tmp_path / f"teacher-{release}"
    write_release(teacher, release, seed=5)
    name = f"r-{release}"
    label(LabelConfig(root=dataset, teacher=(teacher,), backend="onnxruntime", batch=1, workers=1,
                      name=name))
    folder = dataset / "labels" / name
    manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
    want = reference(dataset, teacher, ERA[release])
    got = {}
    for e in manifest["shards"]:
        for raw in shards.iter_shard(folder / e["name"], shards.LABEL_MEMBERS):
            got[raw["__key__"]] = shards.decode_sample(raw)
    assert list(got) == list(want)
    for key, heads in want.items():
        for member in ("vision", "policy"):
            assert got[key][member].shape[1] == manifest["widths"][member]
        for head, x in heads.items():
            member = next(m for m in ("vision", "policy") if head in manifest["output_slices"][m])
            stored = got[key][member][:, slice(*manifest["output_slices"][member][head])].astype(np.float32)
            np.testing.assert_allclose(stored, x, rtol=2e-3, atol=2e-3, err_msg=f"{key} {head}")
    assert "pad" not in manifest["output_slices"]["vision"] and "pad" not in manifest["output_slices"]["policy"]
    assert manifest["layout"] == {"20hz": "supercombo-20hz", "5hz": "supercombo-5hz", "0.11": "driving-supercombo",
                                  "split": "split-lateral" if release == "0.10.0" else "split"}[ERA[release]]
    assert manifest["loop"]["image_pair"] == [-1 if ERA[release] == "20hz" else -4, 0]
    # the delays came from the route's log, not the defaults (0.2 s, 0.15 s)
    (delays,) = [s["delays"] for s in manifest["segments"].values()]
    assert delays["lat_delay"]["source"] == "liveDelay.lateralDelay" and delays["lat_delay"]["per_frame"]
    assert 0.29 < delays["lat_delay"]["range"][0] < delays["lat_delay"]["range"][1] < 0.33
    assert delays["long_delay"] == {"value": pytest.approx(0.35), "source": "carParams.longitudinalActuatorDelay"}
    assert manifest["lat_delay"] is None and manifest["long_delay"] is None
    assert manifest["smooth_seconds"] == {"0.10.3": [0.1, 0.3], "0.11": [0.0, 0.3]}.get(release, [0.0, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("release", ["0.10.3", "0.11"])
def test_a_real_release_layout_works_from_the_cli(dataset: Path, release: str, tmp_path: Path) -> None:
    """0.10.3's metadata as shipped (pads, 0:None, a policy padded to 1000) and 0.11's slices only in its ONNX:
    synth-teacher, inspect --teacher, label, inspect --verify and a short training run, default options."""
    from typer.testing import CliRunner

    from spark_distill.cli import app

    runner = CliRunner()
    teacher = tmp_path / "teacher"
    r = runner.invoke(app, ["synth-teacher", str(teacher), "--release", release])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", "--teacher", str(teacher)])
    assert r.exit_code == 0, r.output
    text = re.sub(r"[\s│]+", " ", r.output)  # the table's wrapped cells as one line
    assert ("padding 2: plan 0:990 (990 single Gaussian)" if release == "0.10.3" else
            "the ONNX's output_slices property") in text, text
    name = f"cli-{release}"
    r = runner.invoke(app, ["label", str(dataset), "--teacher", str(teacher), "--backend", "onnxruntime",
                            "--name", name])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(dataset), "--verify"])
    assert r.exit_code == 0 and f"verified labels/{name}" in r.output, r.output
    r = runner.invoke(app, ["train", str(dataset), "--labels", name, "--student", "compact-xs", "--batch-size", "2",
                            "--max-steps", "1", "--workers", "1", "--runs-dir", str(tmp_path / "runs"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
