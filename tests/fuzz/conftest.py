# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The fuzz corpus: good data from the real pipeline, built once per test run (shared by the xdist
workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.once import built_once


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fuzz.harness import build_corpus

    return built_once(tmp_path_factory, "fuzz-corpus", build_corpus)  # examples damage copies of it, never it
