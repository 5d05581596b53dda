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

# --wheel: also build replearn itself here, as a CPython 3.12 wheel for the GPU machine (sm_90 by
# default, ARCHS to change; portable CPU flags), so the lease is not spent on the build: gpu_check.sh
# installs .whl/replearn-*.whl instead of building when one is there. Needs python3.12 here
# (PYTHON312 to name one) and nvcc; the build environment goes to build/py312-venv.
if [ "${1:-}" = --wheel ]; then
  py312=
  for candidate in ${PYTHON312:-} python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      py312=$candidate
      break
    fi
  done
  [ -n "$py312" ] || { echo "gpu_prepare.sh --wheel: no working python3.12 found (set PYTHON312)" >&2; exit 2; }
  [ -x build/py312-venv/bin/python ] || "$py312" -m venv build/py312-venv
  build/py312-venv/bin/python -m pip install -q scikit-build-core pybind11 cmake ninja \
    "scipy-openblas32${version:+==$version}"
  rm -f .whl/replearn-*.whl
  REPLEARN_CUDA=ON REPLEARN_NATIVE_ARCH=OFF SKBUILD_CMAKE_ARGS="-DREPLEARN_CUDA_ARCHITECTURES=${ARCHS:-90}" \
    build/py312-venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w .whl .
  ls -l .whl
fi
