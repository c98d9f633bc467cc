# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A labeled synthetic dataset shared by the training tests (ingested and labeled once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.label.run import LabelConfig, label
from spark_distill.synth.teacher import write_teacher


@pytest.fixture(scope="session")
def labeled(tici_route, faulty_routes, tmp_path_factory) -> Path:
    """Seven segments (two comma 3X, five older-device ones with faults), 10-frame clips, 3 clips per shard,
    label set 'set' from a tiny stand-in teacher."""
    root = tmp_path_factory.mktemp("trainds")
    inputs = [str(tici_route[0])] + [str(r) for r, _ in faulty_routes.values()]
    ingest(IngestConfig(inputs=tuple(inputs), out=root, workers=1, clip_len=10, shard_clips=3))
    write_teacher(root / "teacher", seed=1)
    label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=4, name="set"))
    return root
