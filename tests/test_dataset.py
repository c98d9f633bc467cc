# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Dataset summary and verification beyond hashes: a sample with a wrong shape is reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_distill import shards
from spark_distill.dataset import check_frames_sample, summarize, verify_frames
from spark_distill.ingest.run import IngestConfig, ingest


def test_summary_counts(tici_route, tmp_path: Path) -> None:
    route, _, _ = tici_route
    ingest(IngestConfig(inputs=(str(route),), out=tmp_path, workers=1))
    s = summarize(tmp_path)
    assert (s["segments"], s["clips"], s["frames"], s["shards"]) == (2, 4, 80, 1)
    assert abs(s["hours"] - 80 / 20 / 3600) < 1e-9 and s["label_sets"] == []
    assert verify_frames(tmp_path).problems == []


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
