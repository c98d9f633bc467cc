# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Session fixtures' inputs built once per test run, not once per xdist worker."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """`build(folder)`'s result, built once per run: under xdist, the first worker to ask builds it in the run's
    shared temporary folder while any other waits, then every worker reads it from there. Only for data that no
    test changes in place (tests copy before they damage)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = shared / f"{name}.pickle"
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker whose build failed
            folder.mkdir()
            value = pickle.dumps(build(folder))
            (shared / f"{name}.pickle.tmp").write_bytes(value)
            (shared / f"{name}.pickle.tmp").replace(done)
        return pickle.loads(done.read_bytes())
