# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The ingest pass end to end, against the known contents of synthetic routes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spark_distill.data import files, shards
from spark_distill.errors import ConfigError, IngestError
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.synth.route import FRAME_NS, T0_NS, Dynamics
from spark_distill.synth.scene import SKY
from tests.procs import children, running


def read_all(root: Path) -> tuple[dict, list[dict]]:
    folder = root / "frames"
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    samples = [shards.decode_sample(s) for e in manifest["shards"]
               for s in shards.iter_shard(folder / e["name"], shards.FRAMES_MEMBERS)]
    return manifest, samples


def shard_digests(root: Path) -> list[tuple[str, str]]:
    return sorted((p.name, files.sha256_file(p)) for p in (root / "frames").glob("shard-*.tar"))


def test_ingest_matches_the_synthetic_drive(tici_route, tmp_path: Path) -> None:
    route, truths, cfg = tici_route
    result = ingest(IngestConfig(inputs=(str(route),), out=tmp_path, clip_len=15, workers=1, shard_clips=4))
    manifest, samples = read_all(tmp_path)
    assert result.segments_done == 2 and result.frames_kept == 80 and result.frames_dropped == 0
    assert 0 < result.seconds < 600 and result.frames_per_s > 0.1
    assert [s["name"] for s in manifest["segments"]] == [t.name.replace("_", "|", 1) for t in truths]
    assert [s["samples"] for s in manifest["shards"]] == [4, 2]
    assert all(e["sha256"] == files.sha256_file(tmp_path / "frames" / e["name"]) for e in manifest["shards"])
    # clips of 15, 15, 10 per segment, keys in order
    assert [len(s["meta"]["frame_ids"]) for s in samples] == [15, 15, 10] * 2
    assert samples[3]["__key__"] == "0123456789abcdef_2026-11-26--12-00-00--1--c00000"
    dyn = Dynamics(cfg, cfg.segments * cfg.seconds)
    for s in samples:
        fids = np.array(s["meta"]["frame_ids"])
        np.testing.assert_array_equal(s["meta"]["timestamps_ns"], T0_NS + fids * FRAME_NS + 20_000_000)
        # latest carState at or before each frame's end of exposure was written 13 ms after its start
        t_car = fids * 0.05 + 0.013
        np.testing.assert_allclose(s["car"][:, 0], [dyn.speed(t) for t in t_car], rtol=1e-6)
        # livePose (20 Hz) is logged 1 ms after the instant it describes, 3 ms after each frame start
        np.testing.assert_allclose(s["pose"][:, 0], [dyn.speed(t) for t in fids * 0.05 + 0.003], rtol=1e-6)
        expected_desire = []
        for fid in fids:
            state, _ = dyn.lane_change_state(fid * 0.05 + 0.003)  # drivingModelData at +3 ms
            expected_desire.append({"off": 0, "preLaneChange": 5, "laneChangeStarting": 3,
                                    "laneChangeFinishing": 3}[state])
        assert s["desire"].argmax(axis=1).tolist() == expected_desire
        assert s["traffic"].tolist() == [1.0, 0.0]
        np.testing.assert_allclose(s["meta"]["calibration"]["rpy"], cfg.rpy, atol=1e-7)
        assert s["meta"]["calibration"]["valid"] and s["meta"]["flags"] == []
        assert np.isfinite(s["gps"]).all() and s["road"].shape == (len(fids), 6, 128, 256)
    # the calibrated warp puts the horizon at medmodel's principal row 47.6 and sbigmodel's 151.8:
    # sky above it, road below (with the logged pitch of 0.03 rad it would sit ~27 rows off uncalibrated)
    # (means over a few pixels: the rendered frames carry sensor noise, vignetting and a sky gradient)
    y_road = samples[0]["road"][0, 0].astype(float)  # Y sub-plane: row r, column c is model pixel (2c, 2r)
    assert abs(y_road[19:22, 15:25].mean() - SKY[0]) <= 25 and abs(y_road[27:30, 15:25].mean() - SKY[0]) > 35
    y_wide = samples[0]["wide"][0, 0].astype(float)
    assert abs(y_wide[71:74, 15:25].mean() - SKY[0]) <= 25 and abs(y_wide[78:81, 15:25].mean() - SKY[0]) > 35


def test_faults_are_survived_and_recorded(faulty_routes, tmp_path: Path) -> None:
    inputs = tuple(str(route) for route, _ in faulty_routes.values())
    ingest(IngestConfig(inputs=inputs, out=tmp_path, workers=1))
    manifest, samples = read_all(tmp_path)
    segs = {s["name"].split("|")[1][:10]: s for s in manifest["segments"]}
    by_fault = {fault: segs[f"2026-11-2{i}"] for i, fault in enumerate(faulty_routes)}
    assert not manifest["skipped"]
    trunc = by_fault["truncated-log"]
    assert 0 < trunc["frames_kept"] < 40 and any("truncated" in w for w in trunc["warnings"])
    missing = by_fault["missing-encode-idx"]
    assert missing["frames_kept"] == 37 and missing["dropped"] == {"unindexed": 3}
    drops = by_fault["encoder-drops"]
    assert drops["frames_kept"] == 38 and drops["dropped"] == {"encoder_gaps": 2}
    corrupt = by_fault["corrupt-video-tail"]
    assert corrupt["frames_kept"] < 40 or corrupt["warnings"]
    wide = by_fault["missing-wide"]
    assert wide["frames_kept"] == 40 and any("ecamera" in w for w in wide["warnings"])
    fids = {s["meta"]["segment"][:31]: [] for s in samples}
    for s in samples:
        fids[s["meta"]["segment"][:31]] += s["meta"]["frame_ids"]
    assert 7 not in fids["0123456789abcdef|2026-11-22--10"] and "frame_gap" in json.dumps(
        [s["meta"]["flags"] for s in samples if "2026-11-22" in s["meta"]["segment"]])
    assert {12, 13, 14}.isdisjoint(fids["0123456789abcdef|2026-11-21--10"])
    wide_samples = [s for s in samples if "2026-11-24" in s["meta"]["segment"]]
    assert all("wide_from_road" in s["meta"]["flags"] for s in wide_samples)


def test_rerun_is_a_no_op_and_new_segments_append(tici_route, tmp_path: Path) -> None:
    route, truths, _ = tici_route
    ingest(IngestConfig(inputs=(str(truths[0].path),), out=tmp_path, workers=1))
    first = shard_digests(tmp_path)
    manifest_before = (tmp_path / "frames" / "manifest.json").read_bytes()
    again = ingest(IngestConfig(inputs=(str(truths[0].path),), out=tmp_path, workers=1))
    assert again.segments_done == 0 and again.segments_already == 1
    assert shard_digests(tmp_path) == first
    assert (tmp_path / "frames" / "manifest.json").read_bytes() == manifest_before
    written = json.loads((tmp_path / "frames" / "manifest.json").read_text())
    del written["skipped"]  # as ingests before the key was added wrote it: appending to one must work too
    (tmp_path / "frames" / "manifest.json").write_text(json.dumps(written))
    more = ingest(IngestConfig(inputs=(str(route),), out=tmp_path, workers=1))
    assert more.segments_done == 1 and more.segments_already == 1
    assert shard_digests(tmp_path)[0] == first[0] and len(shard_digests(tmp_path)) == 2
    with pytest.raises(ConfigError, match="clip_len=20, not 10"):
        ingest(IngestConfig(inputs=(str(route),), out=tmp_path, clip_len=10))


def test_shards_are_identical_for_any_worker_count(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path / "w1", workers=1, shard_clips=1))
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path / "w2", workers=2, shard_clips=1))
    assert shard_digests(tmp_path / "w1") == shard_digests(tmp_path / "w2")


def test_killed_ingest_resumes_to_the_same_shards(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    args = ["ingest", str(route), "--workers", "2", "--clip-len", "2", "--shard-clips", "1"]
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path / "ref", workers=1, clip_len=2, shard_clips=1))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "spark_distill", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "frames" / "shard-000003.tar").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = children(proc.pid)  # the segment pool, the progress queue's manager (and the resource tracker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while (alive := [p for p in workers if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers and not alive, f"worker processes outlived the killed ingest: {workers}, {alive}"
    manifest = json.loads((out / "frames" / "manifest.json").read_text())
    assert len(manifest["shards"]) < 40, "the run was killed before it finished"
    subprocess.run([sys.executable, "-m", "spark_distill", *args, "--out", str(out)], check=True,
                   capture_output=True)
    assert shard_digests(out) == shard_digests(tmp_path / "ref")
    assert not list((out / "frames").glob("*.tmp"))


def test_bad_segment_is_skipped_and_recorded(tici_route, tmp_path: Path, caplog) -> None:
    route, truths, _ = tici_route
    bad = tmp_path / "in" / "2026-01-01--00-00-00--0"
    shutil.copytree(truths[0].path, bad)
    (bad / "rlog.bz2").write_bytes(b"BZh9 not really")
    result = ingest(IngestConfig(inputs=(str(route), str(bad.parent)), out=tmp_path / "out", workers=1))
    assert result.segments_done == 2 and len(result.segments_skipped) == 1
    manifest, _ = read_all(tmp_path / "out")
    assert manifest["skipped"][0]["name"] == "2026-01-01--00-00-00--0"
    assert "no readable events" in manifest["skipped"][0]["reason"]
    assert "no readable events" in caplog.text, "the skipped segment is reported while the others go on"
    caplog.clear()
    with pytest.raises(IngestError, match=r"rlog\.bz2: no readable events"):
        ingest(IngestConfig(inputs=(str(bad),), out=tmp_path / "only-bad", workers=1))
    assert "no readable events" not in caplog.text, "a lone segment's reason is said once, by the error"


def test_torchrun_ranks_ingest_what_one_process_does(tici_route, tmp_path: Path) -> None:
    """Two ranks (torchrun) on a shared folder: segments dealt by rank, one manifest, the shards and the manifest a
    single process writes (a bad segment's failure staged by its rank and recorded by rank 0), one summary."""
    route, truths, _ = tici_route
    bad = tmp_path / "in" / "2026-01-01--00-00-00--0"
    shutil.copytree(truths[0].path, bad)
    (bad / "rlog.bz2").write_bytes(b"BZh9 not really")
    inputs = [str(route), str(bad.parent)]
    ingest(IngestConfig(inputs=tuple(inputs), out=tmp_path / "one", workers=1, clip_len=10, shard_clips=3))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "spark_distill", "ingest", *inputs, "--out", str(tmp_path / "two"), "--workers", "1", "--clip-len", "10",
            "--shard-clips", "3"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("segments ingested") == 1  # the summary (and the warning and the skipped line) once
    assert r.stderr.count("skipped 2026-01-01--00-00-00--0: ") == 2, r.stderr
    assert shard_digests(tmp_path / "two") == shard_digests(tmp_path / "one")
    manifest = (tmp_path / "two" / "frames" / "manifest.json").read_bytes()
    assert manifest == (tmp_path / "one" / "frames" / "manifest.json").read_bytes()
    assert "no readable events" in json.loads(manifest)["skipped"][0]["reason"]
    assert sorted(p.name for p in (tmp_path / "two" / "frames").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "frames").iterdir())  # no staging left


def test_missing_encode_index_events_are_a_clear_error(tici_route, tmp_path: Path) -> None:
    from spark_distill.ingest.logs import load_schema, read_log_bytes

    _, truths, _ = tici_route
    seg = tmp_path / "2026-01-02--00-00-00--0"
    shutil.copytree(truths[0].path, seg)
    raw, _ = read_log_bytes(seg / "rlog.bz2")
    schema = load_schema()
    kept = b"".join(ev.as_builder().to_bytes() for ev in schema.Event.read_multiple_bytes(raw)
                    if ev.which() not in ("roadEncodeIdx", "wideRoadEncodeIdx"))
    (seg / "rlog.bz2").unlink()
    (seg / "rlog").write_bytes(kept)
    with pytest.raises(IngestError, match="no roadEncodeIdx events"):
        ingest(IngestConfig(inputs=(str(seg),), out=tmp_path / "out", workers=1))
