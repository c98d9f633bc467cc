# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The fuzz corpus: good data from the real pipeline, built once per test session (per xdist worker)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fuzz.harness import build_corpus

    return build_corpus(tmp_path_factory.mktemp("fuzz-corpus"))
