# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`processes.reuse_freed_memory`: a pass's freed batches are reused, not faulted in again from the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# ten times: a 63 MB frame batch (8 clips x 20 frames x 12 x 128 x 256 uint8, as train's) made fp32 and scaled;
# prints the page faults that took
_ALLOC = """
import json, resource, sys, torch
from spark_distill.processes import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(8 * 20 * 12 * 128 * 256, dtype=torch.uint8)
    y = x.float() * 2
    del x, y
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _ALLOC, mode], env=clean | env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_batches_are_reused_instead_of_faulted_in_again() -> None:
    default, reused = _faults("default"), _faults("reuse")
    assert reused["took"] is True
    # by default every tensor is a fresh mmap: 567 MB, ~138,000 faults of 4 KiB pages, each time; reused, the
    # first few times only (posix_memalign's slack leaves some freed blocks a little too small for the next)
    assert default["faults"] > 10 * 138_000 * 0.9, default
    assert reused["faults"] < 5 * 138_000, reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_malloc_setting_the_user_made_is_kept() -> None:
    assert _faults("reuse", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["took"] is False
