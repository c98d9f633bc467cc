# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""bench storage's codec rows: sizes per frame, ratio to the source, and the worst error of each setting."""

from __future__ import annotations

import re

from spark_distill.bench.storage import Setting, codec_rows
from spark_distill.data import arrays, codecs
from tests.data.test_codecs import camera_like_clip


def test_codec_rows_report_exact_sizes_and_errors() -> None:
    clips = [{"road": camera_like_clip(3, seed=s), "wide": camera_like_clip(3, seed=s + 9)} for s in (0, 1)]
    settings = [Setting("plain"), Setting("lossless"), Setting("hevc", 30), Setting("av1", 40)]
    rows = dict(codec_rows(clips, settings, source_bytes=60_000))
    plain = sum(len(arrays.encode_array(c[cam])) for c in clips for cam in ("road", "wide"))
    lossless = sum(len(codecs.encode_clip(c[cam], "lossless")[1]) for c in clips for cam in ("road", "wide"))
    for s, size in ((settings[0], plain), (settings[1], lossless)):
        line = rows[s]
        assert f"{size / 6 / 1e3:8.1f} kB/frame" in line and f"x{size / 60_000:5.2f} of source" in line, line
        assert line.endswith("max |error| 0")
    for s, name in ((settings[2], "hevc crf 30"), (settings[3], "av1 crf 40")):
        assert rows[s].startswith(name) and int(re.search(r"error\| (\d+)", rows[s])[1]) > 0, rows[s]
