# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""onnx2torch imported without torchvision: its torchvision ops fail with one clear line, and other libraries that
probe for torchvision (peft, transformers) still import."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib.util
from spark_distill.errors import MissingDependencyError
from spark_distill.openpilot.onnx_import import _torchvision_usable, load_onnx2torch
load_onnx2torch()
if not _torchvision_usable():
    from onnx2torch.node_converters import nms
    try:
        nms.torchvision.ops.nms(None, None, 0.5)
    except MissingDependencyError as e:
        assert "torchvision" in str(e)
    else:
        raise AssertionError("the placeholder op did not refuse")
    assert importlib.util.find_spec("torchvision") is None
import peft  # probes for torchvision with find_spec, which a module without a spec in sys.modules breaks
print("ok")
"""


def test_onnx2torch_without_torchvision_leaves_other_imports_working() -> None:
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
