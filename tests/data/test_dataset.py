# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Dataset summary and verification beyond hashes: a sample with a wrong shape is reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_distill.data import shards
from spark_distill.data.dataset import check_frames_sample, segment_issues, summarize, summary_rows, verify_frames
from spark_distill.ingest.run import IngestConfig, ingest


def test_summary_counts(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path, workers=1))
    s = summarize(tmp_path)
    assert (s["segments"], s["clips"], s["frames"], s["shards"]) == (2, 4, 80, 1)
    assert s["seconds"] == 4.0 and s["label_sets"] == [] and s["segment_issues"] == []
    rows = summary_rows(s)
    assert rows["frames"] == "80 (4.0 s at 20 Hz)" and rows["segments"] == "2" and rows["frames dropped"] == "0"
    mb = s["bytes"] / 1e6
    assert rows["size"] == (f"{mb:.1f} MB" if mb >= 10 else f"{mb:.2f} MB") and 1 < mb < 100
    assert rows["label sets"] == "none (run spark-distill label)"
    assert verify_frames(tmp_path).problems == []


def test_segment_issues_name_each_segment_and_why() -> None:
    manifest = {"segments": [
        {"name": "a|2026-01-01--00-00-00--0", "frames_kept": 1200, "frames_dropped": 0, "dropped": {}, "warnings": []},
        {"name": "a|2026-01-01--00-00-00--1", "frames_kept": 1195, "frames_dropped": 5,
         "dropped": {"encoder_gaps": 2, "unindexed": 3},
         "warnings": ["no rlog; used the qlog (decimated log streams)"]},
        {"name": "a|2026-01-01--00-00-00--2", "frames_kept": 1200, "frames_dropped": 0, "dropped": {"wide_only": 4},
         "warnings": []}],
        "skipped": [{"name": "a|2026-01-01--00-00-00--3", "reason": "fcamera.hevc: no frames"}]}
    assert segment_issues(manifest) == [
        {"segment": "a|2026-01-01--00-00-00--1", "kept": 1195, "dropped": 5,
         "why": "2 never written by the encoder, 3 without an encode-index entry",
         "warnings": ["no rlog; used the qlog (decimated log streams)"]},
        {"segment": "a|2026-01-01--00-00-00--2", "kept": 1200, "dropped": 0,
         "why": "4 wide-camera frames without a road frame (not counted as dropped)", "warnings": []},
        {"segment": "a|2026-01-01--00-00-00--3", "kept": 0, "dropped": None, "why": "skipped: fcamera.hevc: no frames",
         "warnings": []}]
    s = {"segments": 3, "skipped": 1, "shards": 1200, "clips": 12_000, "frames": 72_000, "seconds": 3600.0 + 125,
         "bytes": 44_308_480, "frames_dropped": 5, "warnings": 1, "segment_issues": segment_issues(manifest),
         "label_sets": ["a", "b"]}
    assert summary_rows(s) == {
        "segments": "3 (1 skipped, listed below)", "shards": "1,200", "clips": "12,000",
        "frames": "72,000 (1 h 02 min at 20 Hz)", "size": "44.3 MB",
        "frames dropped": "5 in 1 segment(s), listed below", "warnings": "1 in 1 segment(s), listed below",
        "label sets": "a, b"}


def test_inspect_lists_the_segments_that_lost_frames(labeled: Path, faulty_routes) -> None:
    from typer.testing import CliRunner

    from spark_distill.cli import app

    names = {fault: truth.name.replace("_", "|", 1) for fault, (_, truth) in faulty_routes.items()}
    issues = {r["segment"]: r for r in summarize(labeled)["segment_issues"]}
    no_wide = "no ecamera.hevc; wide input built from the road camera"  # an older device (eon): road camera only
    assert issues[names["encoder-drops"]] == {"segment": names["encoder-drops"], "kept": 38, "dropped": 2,
                                              "why": "2 never written by the encoder", "warnings": [no_wide]}
    assert issues[names["missing-encode-idx"]]["why"] == "3 without an encode-index entry"
    assert issues[names["missing-wide"]]["dropped"] == 0 and "ecamera" in issues[names["missing-wide"]]["warnings"][0]
    r = CliRunner().invoke(app, ["inspect", str(labeled)])
    assert r.exit_code == 0, r.output
    assert f"  {names['encoder-drops']}: 38 frames kept, 2 dropped (2 never written by the encoder)\n" in r.output
    assert f"    warning: {no_wide}" in r.output
    assert "hours" not in r.output and "bytes" not in r.output


def test_wrong_shapes_are_reported() -> None:
    t = 3
    good = {"meta": {"frame_ids": [1, 2, 3], "segment": "s", "clip": 0}, "road": np.zeros((t, 6, 128, 256), np.uint8),
            "wide": np.zeros((t, 6, 128, 256), np.uint8), "desire": np.zeros((t, 8), np.float32),
            "traffic": np.zeros(2, np.float32), "car": np.zeros((t, 10), np.float32),
            "pose": np.zeros((t, 12), np.float32), "gps": np.zeros((t, 6), np.float64)}
    assert check_frames_sample(good, 10) == []
    bad = dict(good, road=np.zeros((t, 6, 128, 255), np.uint8), gps=np.zeros((t, 6), np.float32))
    problems = check_frames_sample(bad, 10)
    assert len(problems) == 2 and "road is uint8[3, 6, 128, 255]" in problems[0] and "gps" in problems[1]
    assert set(shards.FRAMES_MEMBERS) - {"modelv2.npy.zst", *shards.camera_members()} == shards.FRAMES_REQUIRED


def test_verify_names_a_damaged_file_alone_with_its_next_step(tici_route, tmp_path: Path) -> None:
    """A truncated frames shard is the one problem, naming its segments and how to get it back (re-ingest into a
    new --out and copy it: tried here); its intact label shard is checked on its own, not blamed."""
    from typer.testing import CliRunner

    from spark_distill.cli import app
    from spark_distill.data.dataset import verify_labels
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher

    route, truths, _ = tici_route
    root = tmp_path / "ds"
    ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, shard_clips=2))  # 2 shards, a segment each
    write_teacher(tmp_path / "teacher", seed=1)
    label(LabelConfig(root=root, teacher=(tmp_path / "teacher",), backend="onnxruntime", batch=2, name="set"))
    shard = root / "frames" / "shard-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    second = truths[1].name.replace("_", "|", 1)
    frames = verify_frames(root)
    assert frames.damaged == {"shard-000001.tar"} and len(frames.problems) == 1
    assert frames.problems[0].startswith(f"frames/shard-000001.tar: sha256 differs from the manifest (damaged or "
                                         f"modified); it holds clips of {second}. Next: restore it from a copy, or "
                                         "re-run the ingest command(s)")
    for damaged in (frames.damaged, None):  # told by verify_frames, or finding it unreadable itself
        labels = verify_labels(root, "set", damaged_frames=damaged)
        assert labels.problems == [] and labels.shards == 2 and labels.samples == 4
        assert len(labels.notes) == 1 and labels.notes[0].startswith(
            "labels/set/shard-000001.tar: checked on its own (sha256, members, dtypes, widths): intact; not compared "
            "with its frames: frames/shard-000001.tar is ")
    r = CliRunner().invoke(app, ["inspect", str(root), "--verify"])
    assert r.exit_code == 2 and "verification found 1 problem(s)" in r.output
    assert "unreadable" not in r.output and "note: labels/set/shard-000001.tar: checked on its own" in r.output
    # the next step works: the same ingest into a new --out writes the shard again, byte for byte
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path / "again", workers=1, shard_clips=2))
    shard.write_bytes((tmp_path / "again" / "frames" / "shard-000001.tar").read_bytes())
    assert verify_frames(root).problems == [] and verify_labels(root, "set").problems == []
    # a damaged label shard: its own line, with the label command that writes it again
    lab = root / "labels" / "set" / "shard-000000.tar"
    lab.write_bytes(lab.read_bytes()[:-1024])
    problems = verify_labels(root, "set").problems
    digest = shards.read_manifest(root / "labels" / "set", shards.LABELS_FORMAT)["teacher"]["sha256"][:8]
    assert problems == ["labels/set/shard-000000.tar: sha256 differs from the manifest (damaged or modified). Next: "
                        f"re-run `spark-distill label {root} --teacher TEACHER --name set --backend onnxruntime "
                        f"--precision fp32` (TEACHER: the folder of teacher 'teacher', sha256 {digest}...): it labels "
                        "this shard again"]


def test_past_warmup_counts_from_the_segment_start_and_every_restart() -> None:
    from spark_distill.data.dataset import past_warmup

    fids = np.array([3, 4, 5, 6, 7, 8, 20, 21, 22, 23, 24])
    entry = {"first_frame_id": 3, "resets": [20]}
    assert past_warmup(fids, entry, 3).tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 2
    assert past_warmup(fids, {"first_frame_id": 3}, 3).tolist() == [False] * 3 + [True] * 8
    assert past_warmup(fids[6:], None, 2).tolist() == [False, False, True, True, True], "no entry: from its first"
    assert past_warmup(fids, entry, 0).all()
