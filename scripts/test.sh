#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check spark_distill tests benchmarks
.venv/bin/lint-imports  # the floors and no circles (pyproject.toml, docs/architecture.md)
.venv/bin/python -m pytest -n 2 -q "$@"
