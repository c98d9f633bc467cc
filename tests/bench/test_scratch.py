# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Every bench's --workdir: a folder that does not exist yet is created (with its parents), one that is a file is
refused in one line, and the scratch folder lies inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_distill.bench import scratch_dir
from spark_distill.errors import ConfigError


def test_a_missing_workdir_is_created_and_a_file_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "new" / "deeper"
    scratch = scratch_dir(work, "bench-x-")
    assert scratch.is_dir() and scratch.parent == work and scratch.name.startswith("bench-x-")
    assert scratch_dir(work, "bench-x-") != scratch, "each run its own scratch folder"
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ConfigError, match="not a folder"):
        scratch_dir(tmp_path / "file", "bench-x-")
    assert (tmp_path / "file").read_text() == "keep"
    with pytest.raises(ConfigError, match="cannot create a scratch folder"):
        scratch_dir(tmp_path / "file" / "below", "bench-x-")
