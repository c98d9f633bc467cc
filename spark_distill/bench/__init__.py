# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Benchmarks behind `spark-distill bench …`: each prints ratios against a baseline measured in the same run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from spark_distill.errors import ConfigError


def scratch_dir(workdir: Path | None, prefix: str) -> Path:
    """A new scratch folder, inside `workdir` when given (created if missing; it must be a writable folder)."""
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: not a folder")
    try:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    except OSError as e:
        raise ConfigError(f"--workdir {workdir}: cannot create a scratch folder there ({e.strerror})") from e
