#!/usr/bin/env bash
# Checks csrc/norm/cuda.cu without a GPU: the kernels are compiled for the CPU against an emulation
# of the small part of the CUDA runtime they use (include/: one thread per CUDA thread, block
# barriers, warp shuffles, launch-limit and barrier-uniformity checks) and compared with the CPU
# kernels in float64 for float32, float16 and bfloat16, over odd shapes, both row-kernel modes,
# empty tensors and every optional-gradient combination.
#
#   tests/cuda_emu/run.sh [GRID_X_CAP] [quick]     (make test-cuda-emu)
#
# GRID_X_CAP > 0 clamps every launch's grid.x, forcing the grid-stride loops to run. The emulation
# is slow (minutes): it is a check for sessions without a GPU, not part of `make test`.
# SANITIZE=1 adds AddressSanitizer and UBSan.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${BUILD_DIR:-$root/build/cuda-emu}
mkdir -p "$out"
# Kernel launches `k<T><<<grid, block, smem, stream>>>(args)` become `emu::launch(k<T>, grid, ...)`.
python3 - "$root/csrc/norm/cuda.cu" "$out/cuda_emulated.cpp" <<'PY'
import re, sys
source = open(sys.argv[1]).read()
rewritten, count = re.subn(r'(\w+<T>)\s*<<<(.*?)>>>', r'emu::launch(\1, \2)', source, flags=re.S)
open(sys.argv[2], 'w').write(rewritten)
print(f"launch sites rewritten: {count}")
PY
flags="-std=c++20 -O1 -g -I$here/include -I$root/csrc -w"
[ "${SANITIZE:-0}" = 1 ] && flags="$flags -fsanitize=address,undefined -fno-omit-frame-pointer"
core="$root/csrc/core/error.cpp $root/csrc/core/check.cpp $root/csrc/core/parallel.cpp $root/csrc/norm/validate.cpp $root/csrc/norm/cpu.cpp"
g++ $flags -fopenmp "$out/cuda_emulated.cpp" "$here/test_norm_emulated.cpp" $core -lpthread -o "$out/test_norm_emulated"
"$out/test_norm_emulated" "$@"
