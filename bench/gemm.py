"""core/gemm (float32): the native AVX-512 kernel against torch.mm and OpenBLAS, on the products the
library's layers run (docs/design.md, "GEMM").

Shapes (m, n, k; a transposed operand marked ᵀ), C (m, n) = op(A) (m, k) · op(B) (k, n):
- ResNet-18 on 32×32 images, batch 32 (issue 10): per-sample im2col products of its 3×3 layers at
  32², 16², 8², 4² positions (P): forward W (Co, Ci·9) · col (Ci·9, P); input gradient Wᵀ · dY; weight
  gradient dY · colᵀ;
- issue 4's dense conv cases: conv2d 3×3 64→64 on 56² and 256→256 on 14² (the three products each);
- issue 6's LSTM (input 256, hidden 512, batch 32, 128 steps): the input projection of all steps
  (T·B, 4H) = X (T·B, I) · W_ihᵀ, the per-step h · W_hhᵀ (B, 4H, H) whole and as one of two
  threads' halves, and backward's per-step δgates · W_hh (B, H, 4H).

Two ways to run it:
- `python bench/run.py gemm`: the harness's rows, replearn (REPLEARN_GEMM's backend, native on AVX-512)
  against torch.mm on torch's threads;
- `python bench/gemm.py [--threads N] [--repeat R] [--quick]`: the landing table: per shape, GFLOP/s
  of torch.mm, native, OpenBLAS as this environment configures it (OPENBLAS_CORETYPE pinned here), and
  in a child process without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (the unpinned AVX-512 OpenBLAS; for
  benchmarks only) native and OpenBLAS again; each ratio comes from one process's alternating samples
  (medians; with one thread of CPU time, which a shared machine's scheduling does not inflate).
  --threads 1 is how the conv and rnn kernels call GEMM (one single-threaded product per thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import _harness

# (label, m, n, k, trans_a, trans_b)
SHAPES: list[tuple[str, int, int, int, bool, bool]] = []
for _hw, _c in ((32, 64), (16, 128), (8, 256), (4, 512)):
    _p, _r = _hw * _hw, _c * 9
    SHAPES += [
        (f"r18 {_hw}² {_c}ch fwd", _c, _p, _r, False, False),
        (f"r18 {_hw}² {_c}ch dx", _r, _p, _c, True, False),
        (f"r18 {_hw}² {_c}ch dw", _c, _r, _p, False, True),
    ]
SHAPES += [
    ("conv 56² 64ch fwd", 64, 3136, 576, False, False),
    ("conv 56² 64ch dx", 576, 3136, 64, True, False),
    ("conv 56² 64ch dw", 64, 576, 3136, False, True),
    ("conv 14² 256ch fwd", 256, 196, 2304, False, False),
    ("conv 14² 256ch dx", 2304, 196, 256, True, False),
    ("conv 14² 256ch dw", 256, 2304, 196, False, True),
    ("lstm x·W_ihᵀ", 128 * 32, 4 * 512, 256, False, True),
    ("lstm h·W_hhᵀ", 32, 4 * 512, 512, False, True),
    ("lstm h·W_hhᵀ half", 32, 2 * 512, 512, False, True),
    ("lstm δg·W_hh", 32, 512, 4 * 512, False, False),
]
QUICK_SHAPES = [s for s in SHAPES if s[1] * s[2] * s[3] <= 2**24][:6]


def _operands(m: int, n: int, k: int, ta: bool, tb: bool):
    g = torch.Generator().manual_seed(0)
    a = torch.randn((k, m) if ta else (m, k), generator=g)
    b = torch.randn((n, k) if tb else (k, n), generator=g)
    return a, b, torch.empty(m, n), torch.empty(m, n)


def _runs(m: int, n: int, k: int, ta: bool, tb: bool):
    from replearn import _native

    a, b, c_torch, c_ours = _operands(m, n, k, ta, tb)
    op_a, op_b = (a.t() if ta else a), (b.t() if tb else b)

    def torch_run():
        return torch.mm(op_a, op_b, out=c_torch)

    def ours_run():
        _native._C.gemm(a, b, c_ours, ta, tb, 1.0, 0.0)
        return c_ours

    return torch_run, ours_run


def _case(label, m, n, k, ta, tb) -> _harness.Case:
    def build(shape, dtype, device):
        return _runs(*shape[:3], bool(shape[3]), bool(shape[4]))

    shape = (m, n, k, int(ta), int(tb))
    quick = (min(m, 64), min(n, 64), min(k, 64), int(ta), int(tb))
    return _harness.Case(op=f"gemm {label}", shape=shape, quick_shape=quick, build=build, bytes_moved=None,
                         flops=lambda s: 2.0 * s[0] * s[1] * s[2])  # fmt: skip


CASES = [_case(*s) for s in SHAPES]

UNPINNED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _time(runs: dict, sides: list[str], repeat: int, threads: int) -> list[float]:
    """Median seconds per call of each side, sides rotating. With one thread every side computes on
    this thread, so its CPU time (time.thread_time) is measured: on a shared machine the wall clock
    also counts the time the process waited to be scheduled. With more threads, wall time.
    """
    clock = time.thread_time if threads == 1 else time.perf_counter
    for side in sides:  # warm-up, and the inner count giving samples of ≥ 20 ms
        runs[side]()
    inner = {}
    for side in sides:
        t0 = clock()
        runs[side]()
        inner[side] = max(1, int(0.02 / max(clock() - t0, 1e-7)))
    samples = {side: [] for side in sides}
    for i in range(repeat):
        for j in range(len(sides)):
            side = sides[(i + j) % len(sides)]
            t0 = clock()
            for _ in range(inner[side]):
                runs[side]()
            samples[side].append((clock() - t0) / inner[side])
    return [statistics.median(samples[side]) for side in sides]


def _measure(shapes, sides: list[str], repeat: int, threads: int) -> list[dict]:
    """GFLOP/s of each side per shape, sides alternating in one process (median of `repeat`)."""
    from replearn import _native

    rows = []
    for label, m, n, k, ta, tb in shapes:
        torch_run, ours_run = _runs(m, n, k, ta, tb)

        def backend(name):
            def run():
                _native._C.set_gemm_backend(name)
                return ours_run()

            return run

        runs = {"torch": torch_run, "native": backend("native"), "openblas": backend("openblas")}
        want = torch_run().clone()
        for side in ("native", "openblas"):
            got = runs[side]()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3 * k**0.5)
        times = _time(runs, sides, repeat, threads)
        flops = 2.0 * m * n * k
        rows.append({"label": label, "m": m, "n": n, "k": k} | {s: flops / t / 1e9 for s, t in zip(sides, times)})
        print(f"  {label}: " + ", ".join(f"{s} {rows[-1][s]:.1f}" for s in sides), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and replearn threads (default 1, as conv/rnn call it)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from replearn import _native

    _native._sync_threads()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.child:  # unpinned OpenBLAS: native against it, same process
        print(json.dumps(_measure(shapes, ["native", "openblas"], args.repeat, args.threads)))
        return
    if not _native._C.gemm_native_supported():
        sys.exit("bench/gemm.py: this CPU has no AVX-512F, so there is no native kernel to compare")
    env_text = ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in UNPINNED)
    print(f"# core/gemm float32, {args.threads} thread(s); this environment: {env_text}\n", flush=True)
    print("pinned (this environment):", file=sys.stderr)
    pinned = _measure(shapes, ["torch", "native", "openblas"], args.repeat, args.threads)
    env = {key: value for key, value in os.environ.items() if key not in UNPINNED}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(args.threads),
               "--repeat", str(args.repeat)] + (["--quick"] if args.quick else [])  # fmt: skip
    print("unpinned (child without OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE):", file=sys.stderr)
    unpinned = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
    print("| product | m | n | k | torch.mm | native | OpenBLAS pinned | native / pinned | native (child) | "
          "OpenBLAS unpinned | native / unpinned | native / torch |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, u in zip(pinned, unpinned):
        print(f"| {p['label']} | {p['m']} | {p['n']} | {p['k']} | {p['torch']:.1f} | {p['native']:.1f} | "
              f"{p['openblas']:.1f} | {p['native'] / p['openblas']:.2f} | {u['native']:.1f} | {u['openblas']:.1f} | "
              f"{u['native'] / u['openblas']:.2f} | {p['native'] / p['torch']:.2f} |")  # fmt: skip
    print("\nGFLOP/s (2·m·n·k per product); ratios > 1: native faster. Each ratio compares samples of one process.")


if __name__ == "__main__":
    main(sys.argv[1:])
