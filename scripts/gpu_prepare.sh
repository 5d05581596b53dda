#!/usr/bin/env bash
# Run here, before scripts/gpu_check.sh runs on a lent GPU machine: downloads into .whl/ (git-ignored)
# the wheels that machine lacks. It has python3 3.12 with torch, nvcc, CMake, ninja, pybind11,
# scikit-build-core and pytest, and no network (/work/.library/device/KINDS.md); the one build
# dependency missing there is scipy-openblas32 (core/gemm.h), taken at the version installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
version=$("$py" -m pip show scipy-openblas32 2>/dev/null | awk '/^Version:/{print $2}')
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "scipy-openblas32${version:+==$version}"
ls -l .whl
