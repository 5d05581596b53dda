#!/usr/bin/env bash
# Checks a family's csrc/<family>/cuda.cu without a GPU: the kernels are compiled for the CPU against
# an emulation of the small part of the CUDA runtime they use (include/: one fiber per CUDA thread,
# block barriers, warp shuffles, launch-limit and barrier-uniformity checks) and compared by
# tests/cuda_emu/test_<family>_emulated.cpp with the family's CPU kernels in float64.
#
#   tests/cuda_emu/run.sh FAMILY [GRID_X_CAP] [quick]     (make test-cuda-emu runs every family)
#
# GRID_X_CAP > 0 clamps every launch's grid.x, forcing the grid-stride loops to run. The emulation
# is slow (minutes): it is a check for sessions without a GPU, not part of `make test`.
# SANITIZE=1 adds AddressSanitizer and UBSan.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
family=${1:?usage: run.sh FAMILY [GRID_X_CAP] [quick]}
shift
out=${BUILD_DIR:-$root/build/cuda-emu}/$family
mkdir -p "$out"
# Kernel launches `kernel<Args...><<<grid, block, smem, stream>>>(args)` become
# `emu::launch(kernel<Args...>, grid, block, smem, stream)(args)`.
python3 - "$root/csrc/$family/cuda.cu" "$out/cuda_emulated.cpp" <<'PY'
import re, sys
source = open(sys.argv[1]).read()
rewritten, count = re.subn(r'(\w+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>', r'emu::launch(\1, \2)', source, flags=re.S)
open(sys.argv[2], 'w').write(rewritten)
print(f"{sys.argv[1]}: launch sites rewritten: {count}")
PY
flags="-std=c++20 -O1 -g -I$here/include -I$root/csrc -w"
[ "${SANITIZE:-0}" = 1 ] && flags="$flags -fsanitize=address,undefined -fno-omit-frame-pointer"
# The core sources and every host-side source of the family (validation, CPU kernels); the CPU
# kernels' GEMM (core/gemm.cpp) links OpenBLAS from the scipy-openblas32 wheel.
sources="$(ls "$root"/csrc/core/*.cpp) $(ls "$root/csrc/$family"/*.cpp)"
python=$root/.venv/bin/python
[ -x "$python" ] || python=python3
openblas=$("$python" -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
g++ $flags -fopenmp "$out/cuda_emulated.cpp" "$here/test_${family}_emulated.cpp" $sources ${EMU_LIBS:-} \
  "$openblas/libscipy_openblas.so" -Wl,-rpath,"$openblas" -lpthread \
  -o "$out/test_emulated"
"$out/test_emulated" "$@"
