#!/usr/bin/env bash
# One-time set-up on a fresh machine: Fashion-MNIST (Debian package), a virtualenv in .venv, and peffnet
# with the exact dependency versions of constraints.txt. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's dataset-fashion-mnist" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist'" >&2
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,export]"
echo "setup: done ($(.venv/bin/python -c 'import torch, peffnet; print("peffnet", peffnet.__version__, "torch", torch.__version__)'))" >&2
