# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""One small dataset labeled by a stand-in of one release per supported layout (synth/releases.py), built once per
test run: what the per-release student, export and eval tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.once import built_once

# one release per supported layout (openpilot/releases.py): 20 Hz supercombo with nav inputs, 5 Hz supercombo with a
# pad, 0.10.0's split with lateral inputs, 0.10.3's padded split with float16 policy inputs, 0.11's combined model
# with its slices only in the ONNX
LAYOUT_RELEASES = {"supercombo-20hz": "0.9.6", "supercombo-5hz": "late-2024", "split-lateral": "0.10.0",
                   "split": "0.10.3", "driving-supercombo": "0.11"}
CLIP_LEN = 10


def label_set(release: str) -> str:
    return f"set-{release}"


def release_datasets(tmp_path_factory: pytest.TempPathFactory, route: Path) -> Path:
    """A frames dataset of `route` (10-frame clips) with one label set per release of LAYOUT_RELEASES
    (`label_set(release)`), made by its stand-in in `<root>/teachers/<release>`."""

    def build(root: Path) -> Path:
        from spark_distill.ingest.run import IngestConfig, ingest
        from spark_distill.label.run import LabelConfig, label
        from spark_distill.synth.releases import write_release

        ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, clip_len=CLIP_LEN, shard_clips=4))
        for release in LAYOUT_RELEASES.values():
            teacher = root / "teachers" / release
            write_release(teacher, release, seed=4)
            label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=2,
                              name=label_set(release)))
        return root

    return built_once(tmp_path_factory, "releases", build)
