#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the whole test suite in two pytest-xdist workers
# (a test file stays on one worker, so its module-scoped runs are made once, and the files that read one shared
# tiny run share a worker: tests/conftest.py's scheduler), one OpenMP thread each unless OMP_NUM_THREADS says
# otherwise. Arguments go to pytest after these: `-m "not slow"` is the fast tier, `-n 0` runs in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
