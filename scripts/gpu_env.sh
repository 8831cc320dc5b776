#!/usr/bin/env bash
# Build .venv-gpu: peffnet under the GPU machine's versions (constraints-gpu.txt: torch 2.11, torchvision 0.26; the
# rest of constraints.txt), with Python 3.12 when this machine has it (the GPU machine's), then run the device
# check's dry run there. Usage: bash scripts/gpu_env.sh [device_check.py arguments, default: the dry run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the GPU machine's Python 3.12 if this machine has one (on PATH, or under pyenv)
    for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 python3; do
        if "$candidate" -c "" 2>/dev/null; then PY=$candidate; break; fi
    done
fi
if [ ! -x .venv-gpu/bin/python ]; then
    "$PY" -m venv .venv-gpu
fi
# constraints.txt's pins, with the GPU machine's overriding those it names
merged=$(mktemp)
trap 'rm -f "$merged"' EXIT
grep -v -E "^($(grep -oE '^[A-Za-z0-9_.-]+' constraints-gpu.txt | paste -sd'|'))==" constraints.txt > "$merged"
grep -E '^[A-Za-z0-9_.-]+==' constraints-gpu.txt >> "$merged"
.venv-gpu/bin/python -m pip install -q --upgrade pip
.venv-gpu/bin/python -m pip install -q -c "$merged" -e ".[dev,export]"
.venv-gpu/bin/python -c 'import sys, torch, torchvision; print("gpu_env: python", sys.version.split()[0], "torch",
      torch.__version__, "torchvision", torchvision.__version__)' >&2
if [ $# -eq 0 ]; then
    set -- --device cpu --quick --out "$(mktemp -d)/device_check"
fi
exec .venv-gpu/bin/python scripts/device_check.py "$@"
