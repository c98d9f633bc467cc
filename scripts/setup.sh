#!/usr/bin/env bash
# Creates .venv and installs spark-distill with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# clang: tinygrad's CPU device compiles with it (export's tinygrad check, the way openpilot compiles its
# models, and its tests). Debian's package, installed only where clang is missing; needs root (CI is root).
if ! command -v clang >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang >/dev/null
  else
    echo "note: clang is missing and this is not root: run 'sudo apt-get install clang' for the tinygrad check" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first: a CPU build where one is offered locally (2.13), never a surprise CUDA download
# from a dependency. A torch that is already installed and in range is kept.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==2.13.0" || $PIP install -q "torch>=2.4,<2.15"
# onnx2torch declares torchvision, which would replace the torch above with a CUDA build; it
# needs torchvision only for NMS/RoIAlign, which openpilot's models do not use.
$PIP install -q --no-deps "onnx2torch==1.5.15"
$PIP install -q -e ".[test]"
echo "(a pip notice that onnx2torch requires torchvision is expected: onnx2torch is installed without it, see docs/install.md)"
.venv/bin/python -c "import torch, av, capnp, webdataset, importlib.metadata as m; from spark_distill.openpilot.onnx_import import load_onnx2torch; load_onnx2torch(); print('spark-distill environment ready: torch', torch.__version__, '| av', av.__version__, '| tinygrad', m.version('tinygrad'))"
