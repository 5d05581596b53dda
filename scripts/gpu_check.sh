#!/usr/bin/env bash
# The GPU checks in one command on a lent GPU machine (ARCHITECTURE.md §8: GPU tests are marked, skip
# without a GPU, and run there with one script): build replearn with its CUDA kernels (sm_80, sm_90),
# run every test marked `gpu`, then the CUDA rows of the benchmarks, with logs under $OUT
# (./gpu-results without it). Each stage writes as it goes, so a run cut short still returns what
# finished; the exit status is the tests'.
#
#   here:        bash scripts/gpu_prepare.sh --wheel    (wheels the GPU machine lacks, and replearn's
#                                                        own, built here: saves ~100 s of the lease)
#   GPU machine: bash scripts/gpu_check.sh              (device tool: carry [".whl"], timeout_s ≤ 600)
#
# The device lease is 15 minutes including start-up, so the build targets only the GPU it runs on
# (ARCHS, default: the GPU's compute capability; CI compiles sm_80 and sm_90), the tests run in
# parallel workers (WORKERS, pytest-xdist) with a per-test timeout and the whole run bounded by PYTEST_LIMIT seconds, the benchmarks stop after
# BENCH_LIMIT seconds, BENCH=0 skips them and PYTEST_ARGS narrows the tests (e.g. "-k rnn").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
site=/tmp/replearn-gpu
stage() { echo "[gpu-check $(date +%T)] $*" | tee -a "$out/summary.txt"; }

stage "$(nvidia-smi -L 2>&1 | head -1); $("$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
deps=() prebuilt=()
for wheel in .whl/*.whl; do
  case $wheel in .whl/replearn-*) prebuilt+=("$wheel") ;; *.whl) [ -e "$wheel" ] && deps+=("$wheel") ;; esac
done
if [ ${#deps[@]} -gt 0 ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site/deps" "${deps[@]}" >"$out/deps.log" 2>&1 ||
    { stage "installing .whl/ failed"; tail -20 "$out/deps.log"; exit 2; }
fi
export PYTHONPATH="$site/pkg:$site/deps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

archs=${ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
archs=${archs:-80;90}
if [ ${#prebuilt[@]} -gt 0 ]; then
  # A wheel built beforehand (scripts/gpu_prepare.sh --wheel) saves the build's minutes of the lease.
  stage "install prebuilt ${prebuilt[*]}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site/pkg" "${prebuilt[@]}" >"$out/build.log" 2>&1 ||
    { stage "installing the prebuilt wheel failed"; tail -20 "$out/build.log"; exit 2; }
else
  stage "build (REPLEARN_CUDA=ON, sm_$archs)"
  SKBUILD_CMAKE_ARGS="-DREPLEARN_CUDA_ARCHITECTURES=$archs" CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)} REPLEARN_CUDA=ON \
    "$python" -m pip install -q --no-build-isolation --no-deps --no-index --upgrade --target "$site/pkg" . >"$out/build.log" 2>&1 ||
    { stage "build failed"; tail -40 "$out/build.log"; exit 2; }
fi
"$python" -c "import replearn._native as n; assert n.has_cuda_kernels(), 'no replearn._C_cuda'" >>"$out/build.log" 2>&1 ||
  { stage "the build made no CUDA module (replearn._C_cuda)"; tail -20 "$out/build.log"; exit 2; }
"$python" -c "import torch; assert torch.cuda.is_available(), 'no GPU'" >>"$out/build.log" 2>&1 ||
  { stage "torch sees no GPU"; exit 2; }

stage "pytest -m gpu ${PYTEST_ARGS:-}"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
parallel=()
"$python" -c "import xdist, pytest_timeout" 2>/dev/null && parallel=(-n "${WORKERS:-8}" --timeout "${TEST_TIMEOUT:-300}")
timeout "${PYTEST_LIMIT:-300}" "$python" -m pytest tests -q -m gpu -p no:cacheprovider -rfE --tb=short "${parallel[@]}" ${PYTEST_ARGS:-} \
  >"$out/pytest-gpu.log" 2>&1
status=$?
stage "pytest exit status $status: $(tail -1 "$out/pytest-gpu.log")"
crashed=$(grep -o "crashed while running 'tests/test_ops.py::test_bad_inputs\[[a-z0-9_]*" "$out/pytest-gpu.log" |
  sed 's/.*\[//' | sort -u | head -4)
if [ -n "$crashed" ]; then
  stage "segfaults in bad-input tests: scripts/gpu_crash_diag.py $(echo $crashed)"
  # shellcheck disable=SC2086  # one op per word
  timeout "${DIAG_LIMIT:-150}" "$python" scripts/gpu_crash_diag.py $crashed >/dev/null 2>&1
fi

if [ "${BENCH:-1}" != 0 ]; then
  stage "bench/run.py --device cuda --malloc reuse"
  timeout "${BENCH_LIMIT:-240}" "$python" bench/run.py --device cuda --malloc reuse --json "$out/bench-cuda.json" >"$out/bench-cuda.md" 2>"$out/bench-cuda.log" ||
    stage "benchmarks failed: $(tail -3 "$out/bench-cuda.log")"
fi
stage "done"
exit $status
