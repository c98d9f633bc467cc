# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Routes as a device uploads them by default: qlog + qcamera.ts (synth-route --upload qlog)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from spark_distill.errors import IngestError
from spark_distill.ingest.logs import load_schema, read_log_bytes
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.openpilot.modelframe import unpack_yuv6
from spark_distill.synth.rlog import write_log
from spark_distill.synth.route import T0_NS, SynthConfig, write_route
from tests.ingest.test_run import read_all


def _route(out: Path, device: str = "tici", upload: str = "qlog") -> Path:
    write_route(out, SynthConfig(segments=1, seconds=2.0, device=device, upload=upload, seed=3))
    return next(out.iterdir())


def _counts(log: Path) -> dict[str, int]:
    raw, _ = read_log_bytes(log)
    counts: dict[str, int] = {}
    for ev in load_schema().Event.read_multiple_bytes(raw):
        counts[ev.which()] = counts.get(ev.which(), 0) + 1
    return counts


@pytest.mark.parametrize("device, size", [("tici", (526, 330)), ("eon", (480, 360))])
def test_qcamera_route_ingests_like_the_full_one(tmp_path: Path, device: str, size: tuple[int, int]) -> None:
    seg = _route(tmp_path / "q", device)
    assert sorted(p.name for p in seg.iterdir()) == ["qcamera.ts", "qlog.bz2"]
    # the rates of a device's qlog (cereal/services.py decimation; the real comma 3 qlog): carState 10 Hz,
    # liveCalibration 1 Hz, cameraOdometry 4 Hz, every frame's encode indices
    counts = _counts(seg / "qlog.bz2")
    assert counts["carState"] == 20 and counts["liveCalibration"] == 2 and counts["cameraOdometry"] == 8
    assert counts["qRoadEncodeIdx"] == counts["roadEncodeIdx"] == 40
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "qds", workers=1))
    manifest, samples = read_all(tmp_path / "qds")
    entry = manifest["segments"][0]
    assert entry["camera"] == {"source": "qcamera", "file": "qcamera.ts", "width": size[0], "height": size[1]}
    assert entry["log"] == "qlog" and entry["frames_kept"] == 40 and entry["pose_source"] == "livePose"
    assert samples[0]["meta"]["cameras"] == {"road": "qcamera.ts", "wide": "qcamera.ts"}
    assert "wide_from_road" in samples[0]["meta"]["flags"]

    # the same drive written in full resolution: the qcamera's warped road frames land where the full ones do
    full = _route(tmp_path / "f", device, upload="full")
    ingest(IngestConfig(inputs=(str(full),), out=tmp_path / "fds", workers=1))
    _, full_samples = read_all(tmp_path / "fds")
    yq = unpack_yuv6(samples[1]["road"][5])[0].astype(float)
    yf = unpack_yuv6(full_samples[1]["road"][5])[0].astype(float)
    errors = {(dx, dy): np.abs(np.roll(yq, (dy, dx), (0, 1)) - yf)[8:-8, 8:-8].mean()
              for dx in (-2, 0, 2) for dy in (-2, 0, 2)}
    assert min(errors, key=errors.get) == (0, 0), errors
    assert errors[(0, 0)] < 8.0  # noise and a quarter of the resolution, no misplacement
    # the qlog's 10 Hz carState holds each value up to 100 ms longer: the same drive, sampled the same way
    np.testing.assert_allclose(samples[1]["car"], full_samples[1]["car"], atol=0.1)


def test_full_resolution_files_win_unless_told_otherwise(tmp_path: Path) -> None:
    seg = _route(tmp_path / "f", upload="full")
    qseg = _route(tmp_path / "q")
    shutil.copy(qseg / "qcamera.ts", seg / "qcamera.ts")  # a route with both (qRoadEncodeIdx is in its qlog only)
    shutil.copy(qseg / "qlog.bz2", seg / "qlog.bz2")
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "auto", workers=1))
    assert read_all(tmp_path / "auto")[0]["segments"][0]["camera"]["source"] == "fcamera"
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "q", workers=1, camera_source="qcamera", log_kind="qlog"))
    assert read_all(tmp_path / "q")[0]["segments"][0]["camera"]["file"] == "qcamera.ts"
    with pytest.raises(IngestError, match=r"no fcamera\.hevc"):
        ingest(IngestConfig(inputs=(str(qseg),), out=tmp_path / "none", workers=1, camera_source="fcamera"))


def test_frames_before_a_streams_first_message_are_marked(tmp_path: Path) -> None:
    """The issue's real qlog: its first carState came 2.8 s in. Frames before it have no car state and no pose:
    NaN in the arrays, False in meta.json's `known`, counted in the manifest."""
    seg = _route(tmp_path / "q")
    schema = load_schema()
    raw, _ = read_log_bytes(seg / "qlog.bz2")
    late = T0_NS + 1_000_000_000
    kept = [ev.as_builder().to_bytes() for ev in schema.Event.read_multiple_bytes(raw)
            if not (ev.which() in ("carState", "livePose") and ev.logMonoTime < late)]
    write_log(seg, "bz2", b"".join(kept), truncated=False, name="qlog")
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "ds", workers=1))
    manifest, samples = read_all(tmp_path / "ds")
    known = np.concatenate([s["meta"]["known"]["car"] for s in samples])
    car = np.concatenate([s["car"] for s in samples])
    first = int(np.argmax(known))
    assert 18 <= first <= 21 and known[first:].all()
    assert np.isnan(car[:first]).all() and np.isfinite(car[first:]).all()
    assert manifest["segments"][0]["known_frames"]["car"] == 40 - first
    assert manifest["segments"][0]["known_frames"]["pose"] == int(np.concatenate(
        [s["meta"]["known"]["pose"] for s in samples]).sum()) < 40


@pytest.mark.slow
def test_qlog_route_end_to_end(tmp_path: Path) -> None:
    """synth-route --upload qlog -> ingest -> label (a teacher; and --from-log, 1 frame in 40) -> train -> eval,
    each with its default options where a 4-second drive allows (training: a few steps of the smallest student)."""
    import json

    from typer.testing import CliRunner

    from spark_distill.cli import app
    from spark_distill.synth.teacher import write_teacher
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    cli = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        r = cli.invoke(app, [str(a) for a in args])
        assert r.exit_code == code, r.output
        return r.output

    write_teacher(tmp_path / "teacher", seed=1)
    route, ds = tmp_path / "route", tmp_path / "ds"
    run("synth-route", route, "--segments", 2, "--seconds", 2, "--upload", "qlog", "--modelv2-teacher",
        tmp_path / "teacher")
    run("ingest", route, "--out", ds)
    assert "qcamera.ts 526x330 (2 segments)" in run("inspect", ds)
    out = run("label", ds, "--from-log")
    # frames 0 and 40 of each 40-frame segment's log (1 modelV2 in 40): 2 of 80; the rest absent
    assert "2 (2.5%) (a qlog keeps 1 modelV2 in" in out and "too few frames with a logged output" in out, out
    logged = json.loads((ds / "labels" / "logged" / "manifest.json").read_text())
    assert (logged["labelled_frames"], logged["frames"], logged["logs"]) == (2, 80, ["qlog"])
    refused = cli.invoke(app, ["train", str(ds), "--labels", "logged", "--runs-dir", str(tmp_path / "runs")])
    assert refused.exit_code == 2 and "only 2 of 80 frames have a logged model output" in refused.output
    run("label", ds, "--teacher", tmp_path / "teacher", "--name", "set")
    train(TrainConfig(root=ds, labels="set", run="r", runs_dir=tmp_path / "runs", student="compact-xs",
                      batch_size=2, max_steps=2, warmup_steps=1, burn_in=4, val_fraction=0.5, mask_warmup=False,
                      workers=1, device="cpu", checkpoint_every=100))
    out = run("eval", ds, "--labels", "set", "--run", tmp_path / "runs" / "r", "--include-warmup", "--out",
              tmp_path / "eval")
    assert "comes from a qlog" in " ".join(out.split()), out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["ground_truth"]["logs"] == ["qlog"] and metrics["ground_truth"]["pose_sources"] == ["livePose"]
    assert metrics["models"]["r"]["drive"]["frames_with_future"] > 0


def test_an_older_forks_log_ingests(tmp_path: Path) -> None:
    """A log as an older release or a fork writes it: the pose as liveLocationKalman (no livePose), and services
    the schema does not know. It ingests; the pose columns are the same numbers from the other source."""
    from tests.ingest.test_logs import _unknown_event

    seg = _route(tmp_path / "q")
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "before", workers=1))
    schema = load_schema()
    raw, _ = read_log_bytes(seg / "qlog.bz2")
    events = []
    for ev in schema.Event.read_multiple_bytes(raw):
        if ev.which() == "livePose":
            old = schema.Event.new_message(logMonoTime=ev.logMonoTime, valid=True)
            k = old.init("liveLocationKalmanDEPRECATED")
            for name in ("velocityDevice", "angularVelocityDevice", "accelerationDevice", "orientationNED"):
                src, dst = getattr(ev.livePose, name), getattr(k, name)
                dst.value, dst.valid = [src.x, src.y, src.z], src.valid
            events.append(old.to_bytes())
            events.append(_unknown_event(schema, ev.logMonoTime + 1))  # a fork's own service beside it
        else:
            events.append(ev.as_builder().to_bytes())
    write_log(seg, "bz2", b"".join(events), truncated=False, name="qlog")
    ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "after", workers=1))
    (before, a), (after, b) = read_all(tmp_path / "before"), read_all(tmp_path / "after")
    entry = after["segments"][0]
    assert entry["pose_source"] == "liveLocationKalman" and entry["frames_kept"] == before["segments"][0][
        "frames_kept"] == 40
    assert any("events of types this schema does not know were skipped" in w for w in entry["warnings"])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["pose"], y["pose"], rtol=1e-6)
        np.testing.assert_array_equal(x["road"], y["road"])
