"""What every benchmark family shares: the `Case` description, the timing loop, the machine's limit.

A family module `bench/<family>.py` exposes `CASES: list[Case]`; `bench/run.py` finds it by its file
name. A case builds one (torch, replearn) pair of zero-argument callables; the harness times them in
the same process, alternating, and reports medians.

Timing. Each case times three calls, alternately: torch's, replearn's, and the reference copy that
gives the machine's limit. After `warmup` untimed calls of each, `repeat` rounds take one sample of
each call, rotating which goes first, so that drift of the machine (clock frequency, a neighbour's
load, the host's memory traffic) falls on all three alike. On the bandwidth rows a sample is one
call: the calls before it moved far more data than the last-level cache holds, so its inputs start in
DRAM, as the copy's do (looping one call on the same input would let a 32 MiB input, the size of this
machine's L3, be served partly from cache). On the per-call overhead rows a sample loops the call,
the count doubled until the sample lasts `min_sample_s`, so that `time.perf_counter`'s resolution and
cost vanish. A sample is the wall time of its calls over their count, with CUDA synchronized before
the clock is read; the reported time is the median of the samples. The garbage collector is off
while timing. Outputs are dropped as soon as a call returns, as in a training step, so allocator
behaviour (glibc's, or torch's caching allocator on CUDA) is part of what is measured: that is why
run.py runs every case under two malloc settings.

The limit. `CopyReference` copies one float32 tensor of 256 MiB into another (64 MiB in quick mode),
far beyond any cache, `dst` allocated and touched beforehand so no page fault is timed, and counts
2·nbytes (one read, one write) per copy. On this machine `dst.copy_(src)` runs as fast as torch's
other streaming ops (`mul`/`add` with `out=` measure the same), and a norm kernel that reads x and
writes y once is bounded by the same rate. The copy stores with ordinary writes, which read each
destination line before writing it (read for ownership); replearn's CPU kernels write outputs at
least the last-level cache's size with streaming stores, which do not (core/memory.h), so a kernel
can exceed 100% of this limit: the fraction says how close a kernel comes to a plain copy, not to
the memory's raw rate.
The scale of the overhead rows. The issue states its per-call goal (10 µs) on a machine where "a torch
op costs about 2 µs". A shared machine's speed at tiny calls moves by 2× with its neighbours' load
(medians of torch's own tiny calls at twice their minima, for minutes at a time), and moves torch's
calls and ours alike. So every overhead row also times `TorchOpReference`, torch.add of two 4×8
float32 tensors, in its alternation, and the goal is judged on the issue's scale: replearn's time
× TORCH_OP_US / that torch op's time, where TORCH_OP_US = 2 µs. The ratio is taken round by round
(each round's replearn sample over the torch op's sample of the same round, which ran within a
few tens of milliseconds of it) and its median reported as `scaled_us`: a slow phase then falls on
both sides of each ratio. The row keeps the raw medians as well (`torch_op_ms` beside `replearn_ms`).
The copy is timed inside every case's alternation rather than once per run because on a shared
virtual machine the rate moves by ±20% from one second to the next (36 to 48 GB/s measured back to
back on the 2-core machine), and some hosts switch between two memory phases for minutes at a time
(~46 and ~78 GB/s on 2026-11-29's host); each row's `limit_gbps` is the median copy rate measured
beside it.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Callable, Sequence

import torch

# glibc's default hands freed blocks above the (dynamic) mmap threshold straight back to the OS, so
# every large fresh output pays first-touch page faults; these tunables keep freed memory in the heap.
REUSE_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967296"
MALLOC_TUNABLES = {"default": None, "reuse": REUSE_TUNABLES}

Runner = Callable[[], object]
# spec(shape, dtype, device, side) -> (differentiable inputs, forward): one op's inputs, built the same
# for side "torch" and side "replearn" (seeded), and a zero-argument call of that side's op on them.
Spec = Callable[[tuple[int, ...], torch.dtype, str, str], tuple[list[torch.Tensor], Callable[[], torch.Tensor]]]
# build(shape, dtype, device) -> (torch_run, replearn_run)
Build = Callable[[tuple[int, ...], torch.dtype, str], tuple[Runner, Runner]]


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked call, built for torch and for replearn with the same inputs.

    Attributes:
        op: the name shown and stored in the JSON `op` field, including the pass
            ("layer_norm fwd+bwd", "layer_norm overhead").
        shape: the main input's shape in full runs.
        quick_shape: the main input's shape under --quick (a smoke test, not a measurement).
        build: `build(shape, dtype, device) -> (torch_run, replearn_run)`; each run performs the
            call once and returns what it computed, which the harness compares once before timing.
        bytes_moved: `bytes_moved(shape, itemsize)`, the minimal bytes the call must move to and
            from memory, from which achieved GB/s is computed; None marks a per-call overhead row
            (a tiny tensor, reported in microseconds, no bandwidth).
        dtype: the inputs' dtype.
        device: "cpu" or "cuda"; CUDA cases run only where a GPU and the CUDA kernels are present.
        min_speedup: goal, with memory reuse: torch time / replearn time at least this.
        min_fraction_of_limit: goal, with memory reuse: achieved GB/s at least this fraction of the
            measured copy bandwidth.
        max_overhead_us: goal for overhead rows: replearn microseconds per call at most this, on the
            issue's scale (a tiny torch op = TORCH_OP_US; module docstring).
    """

    op: str
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    build: Build
    bytes_moved: Callable[[tuple[int, ...], int], int] | None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    min_speedup: float | None = None
    min_fraction_of_limit: float | None = None
    max_overhead_us: float | None = None
    # Compute-bound cases: `flops(shape)`, the floating-point operations of the call (a multiply-add
    # counts two); they report GFLOP/s against the machine's GEMM rate (GemmReference) instead of
    # GB/s against the copy, and leave bytes_moved None.
    flops: Callable[[tuple[int, ...]], float] | None = None

    @property
    def overhead(self) -> bool:
        return self.bytes_moved is None and self.flops is None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_available(device: str) -> bool:
    """CPU always; CUDA when torch sees a GPU and replearn was built with its CUDA kernels."""
    if device == "cpu":
        return True
    from replearn import _native

    return device == "cuda" and torch.cuda.is_available() and _native.has_cuda_kernels()


def _synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _sample(run: Runner, inner: int, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        run()
    sync()
    return (time.perf_counter() - start) / inner


def _inner_count(run: Runner, sync: Callable[[], None], min_sample_s: float) -> int:
    """Calls per sample: doubled until a sample lasts min_sample_s (timeit's autorange).

    Growing the count, instead of extrapolating from one call, keeps a single preempted call from
    setting it: noise can only stop the doubling early, never inflate the count.
    """
    inner = 1
    while inner < 2**20 and _sample(run, inner, sync) * inner < min_sample_s:
        inner *= 2
    return inner


def time_alternating(runs: Sequence[Runner], device: str, repeat: int, warmup: int, min_sample_s: float) -> list[float]:
    """Median seconds per call of each run, measured in rotating order (see the module docstring)."""
    return [statistics.median(s) for s in sample_alternating(runs, device, repeat, warmup, min_sample_s)]


def sample_alternating(
    runs: Sequence[Runner], device: str, repeat: int, warmup: int, min_sample_s: float
) -> list[list[float]]:
    """Seconds per call of each run, one sample per round; round i's samples of every run were taken
    together, in rotating order."""
    sync = _synchronizer(device)
    for _ in range(warmup):
        for run in runs:
            run()
    sync()
    gc.collect()
    gc.disable()
    try:
        inner = [_inner_count(run, sync, min_sample_s) for run in runs]
        samples: list[list[float]] = [[] for _ in runs]
        for i in range(repeat):
            for k in range(len(runs)):
                j = (i + k) % len(runs)
                samples[j].append(_sample(runs[j], inner[j], sync))
    finally:
        gc.enable()
    return samples


class CopyReference:
    """The machine's memory limit: `dst.copy_(src)` on large float32 tensors (module docstring)."""

    def __init__(self, device: str, quick: bool):
        numel = (64 if quick else 256) * 2**20 // 4
        self.src = torch.rand(numel, device=device)
        self.dst = torch.zeros(numel, device=device)  # allocated and touched: no page fault is timed
        self.bytes_moved = 2 * self.src.nbytes  # one read, one write

    def __call__(self) -> None:
        self.dst.copy_(self.src)


# What "a torch op" costs on the machine the overhead goal was stated for (issue 2).
TORCH_OP_US = 2.0


class TorchOpReference:
    """A tiny torch op, torch.add of two 4×8 float32 tensors: what "a torch op" costs right now, timed
    beside every per-call overhead row (module docstring). On the quiet 2-core host it runs 11.1k
    instructions (bench/instructions.py), ~1.9 µs."""

    def __init__(self, device: str):
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(4, 8, generator=generator).to(device)
        self.b = torch.randn(4, 8, generator=generator).to(device)

    def __call__(self) -> torch.Tensor:
        return torch.add(self.a, self.b)


class GemmReference:
    """The machine's compute limit: a float32 matrix product `torch.mm` of two 1024×1024 matrices
    (256 in quick mode) into a preallocated output, 2·n³ flops, on torch's threads and BLAS — the
    rate a convolution lowered to GEMM can at best reach. Timed beside every compute-bound case, as
    the copy is beside the bandwidth cases.
    """

    def __init__(self, device: str, quick: bool):
        n = 256 if quick else 1024
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=generator).to(device)
        self.b = torch.randn(n, n, generator=generator).to(device)
        self.c = torch.empty(n, n, device=device)
        self.flops = 2.0 * n**3

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.c)


# ------------------------------------------------------------------------------ passes over a spec
# Each returns a Case.build: one spec, timed as inference, as a training step, or as a forward that
# records the autograd graph (the per-call cost of the autograd path on tiny tensors).


def _both_sides(side: Callable[[tuple[int, ...], torch.dtype, str, str], Runner]) -> Build:
    return lambda shape, dtype, device: (side(shape, dtype, device, "torch"), side(shape, dtype, device, "replearn"))


def _requiring_grad(spec: Spec, *args) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    inputs, call = spec(*args)
    for t in inputs:
        t.requires_grad_()
    return inputs, call


def forward(spec: Spec) -> Build:
    """The forward call alone, inputs not requiring grad (the inference path)."""
    return _both_sides(lambda *args: spec(*args)[1])


def forward_recording_graph(spec: Spec) -> Build:
    """The forward call with every input requiring grad: the graph is recorded, then dropped."""
    return _both_sides(lambda *args: _requiring_grad(spec, *args)[1])


def forward_backward(spec: Spec) -> Build:
    """Forward, then the gradients of every input for a fixed random output gradient.

    `torch.autograd.grad` returns the gradients instead of accumulating them into `.grad`, so every
    call does the same work (no `+=` into a gradient left by the previous call).
    """

    def side(shape, dtype, device, name):
        inputs, call = _requiring_grad(spec, shape, dtype, device, name)
        generator = torch.Generator().manual_seed(1)
        grad_out = torch.randn(call().shape, generator=generator).to(device=device, dtype=dtype)
        return lambda: torch.autograd.grad(call(), inputs, grad_out)

    return _both_sides(side)


_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def _as_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for t in value if t is not None]


def check_agree(op: str, theirs, ours, dtype: torch.dtype) -> None:
    """Raises when replearn's result differs from torch's: a benchmark of a wrong answer is worthless.

    The bound is loose on purpose (the parity tests hold the strict one): error relative to the
    larger of 1 and the result's largest magnitude.
    """
    theirs, ours = _as_tensors(theirs), _as_tensors(ours)
    if len(theirs) != len(ours):
        raise AssertionError(f"{op}: torch returned {len(theirs)} tensors, replearn {len(ours)}")
    for i, (a, b) in enumerate(zip(theirs, ours)):
        scale = max(1.0, a.detach().double().abs().max().item())
        error = (a.detach().double() - b.detach().double()).abs().max().item() / scale
        if not error <= _TOLERANCE[dtype]:  # also catches NaN
            raise AssertionError(f"{op}: output {i} differs from torch's by {error:.3g} (relative to {scale:.3g})")


_references: dict[tuple[str, bool, bool], CopyReference | GemmReference] = {}
_torch_ops: dict[str, TorchOpReference] = {}


def run_case(family: str, case: Case, malloc: str, repeat: int, warmup: int, quick: bool) -> dict:
    """Builds, checks and times one case beside the copy reference; returns its JSON row."""
    compute_bound = case.flops is not None
    key = (case.device, quick, compute_bound)
    if key not in _references:  # one reference per device and kind, kept for the whole run
        _references[key] = (GemmReference if compute_bound else CopyReference)(case.device, quick)
    reference = _references[key]
    shape = case.quick_shape if quick else case.shape
    torch_run, replearn_run = case.build(shape, case.dtype, case.device)
    check_agree(case.op, torch_run(), replearn_run(), case.dtype)
    # Overhead rows loop their tiny call; bandwidth rows time single calls (module docstring).
    min_sample_s = (0.002 if quick else 0.02) if case.overhead else 0.0
    runs = [torch_run, replearn_run, reference]
    if case.overhead:  # and the scale of the per-call goal (module docstring)
        if case.device not in _torch_ops:
            _torch_ops[case.device] = TorchOpReference(case.device)
        runs.append(_torch_ops[case.device])
    samples = sample_alternating(runs, case.device, repeat, warmup, min_sample_s)
    torch_s, replearn_s, copy_s, *torch_op_s = [statistics.median(s) for s in samples]
    achieved = None
    if case.bytes_moved is not None:
        achieved = case.bytes_moved(shape, torch.empty((), dtype=case.dtype).element_size()) / replearn_s / 1e9
    if compute_bound:  # GFLOP/s against the GEMM rate, in place of GB/s against the copy
        return {
            "family": family, "op": case.op, "shape": list(shape), "dtype": dtype_name(case.dtype),
            "device": case.device, "torch_ms": torch_s * 1e3, "replearn_ms": replearn_s * 1e3,
            "speedup": torch_s / replearn_s, "achieved_gbps": None, "limit_gbps": None,
            "achieved_gflops": case.flops(shape) / replearn_s / 1e9, "limit_gflops": reference.flops / copy_s / 1e9,
            "torch_gflops": case.flops(shape) / torch_s / 1e9, "malloc": malloc,
        }  # fmt: skip
    row = {
        "family": family,
        "op": case.op,
        "shape": list(shape),
        "dtype": dtype_name(case.dtype),
        "device": case.device,
        "torch_ms": torch_s * 1e3,
        "replearn_ms": replearn_s * 1e3,
        "speedup": torch_s / replearn_s,
        "achieved_gbps": achieved,
        "limit_gbps": reference.bytes_moved / copy_s / 1e9,
        "malloc": malloc,
    }
    if torch_op_s:  # the scale, round by round (module docstring)
        row["torch_op_ms"] = torch_op_s[0] * 1e3
        ratios = [ours / op for ours, op in zip(samples[1], samples[3])]
        row["scaled_us"] = statistics.median(ratios) * TORCH_OP_US
    return row


# ---------------------------------------------------------------------------------------- output


def _time_cell(ms: float, overhead: bool) -> str:
    return f"{ms * 1e3:.2f} µs" if overhead else f"{ms:.2f} ms"


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def markdown_table(rows: list[dict]) -> str:
    """One line per row: times (µs for overhead rows), speedup, GB/s and its fraction of the limit."""
    lines = [
        "| family | op | shape | dtype | device | torch | replearn | speedup | rate | % of limit |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        overhead = row["achieved_gbps"] is None and "achieved_gflops" not in row
        if "achieved_gflops" in row:  # compute-bound: GFLOP/s (torch's in brackets) against the GEMM rate
            gbps = f"{row['achieved_gflops']:.1f} GFLOP/s [{row['torch_gflops']:.1f}]"
            fraction = f"{100 * row['achieved_gflops'] / row['limit_gflops']:.0f}% of GEMM"
        elif overhead and "torch_op_ms" in row:  # the torch op beside it, and the scale
            gbps = f"torch op {row['torch_op_ms'] * 1e3:.2f} µs"
            fraction = f"{row['scaled_us']:.2f} µs at a {TORCH_OP_US:g}-µs torch op"
        else:
            gbps = "—" if overhead else f"{row['achieved_gbps']:.1f} GB/s"
            fraction = "—" if overhead else f"{100 * row['achieved_gbps'] / row['limit_gbps']:.0f}% of copy"
        lines.append(
            f"| {row['family']} | {row['op']} | {shape_text(row['shape'])} | {row['dtype']} | {row['device']} "
            f"| {_time_cell(row['torch_ms'], overhead)} | {_time_cell(row['replearn_ms'], overhead)} "
            f"| {row['speedup']:.2f}× | {gbps} | {fraction} |"
        )
    return "\n".join(lines)


def goals_table(rows: list[dict], cases: dict[tuple[str, str, str, str], Case]) -> str:
    """The goals of the issue, row by row: met or not, with the measured value.

    Speedup and bandwidth goals are judged with memory reuse (ARCHITECTURE.md: ratios are quoted
    with reuse on for both sides); "not slower than torch" under the default malloc; the overhead
    bound under both. `cases` maps (family, op, dtype, device) to its Case.
    """
    lines = ["| goal | malloc | family | op | measured | met |", "|---|---|---|---|---:|---|"]

    def add(goal: str, row: dict, measured: str, met: bool) -> None:
        lines.append(f"| {goal} | {row['malloc']} | {row['family']} | {row['op']} | {measured} | {'yes' if met else '**no**'} |")

    for row in rows:
        case = cases.get((row["family"], row["op"], row["dtype"], row["device"]))
        if case is None:
            continue
        if case.overhead:
            if case.max_overhead_us is not None:
                us, scaled = row["replearn_ms"] * 1e3, row["scaled_us"]
                add(
                    f"≤ {case.max_overhead_us:g} µs per call at a {TORCH_OP_US:g}-µs torch op", row,
                    f"{scaled:.2f} µs ({us:.2f} µs beside a {row['torch_op_ms'] * 1e3:.2f}-µs torch op)",
                    scaled <= case.max_overhead_us,
                )  # fmt: skip
            continue
        if row["malloc"] == "default":
            add("not slower than torch", row, f"{row['speedup']:.2f}×", row["speedup"] >= 1.0)
        if row["malloc"] == "reuse":
            if case.min_speedup is not None:
                add(f"≥ {case.min_speedup:g}× torch", row, f"{row['speedup']:.2f}×", row["speedup"] >= case.min_speedup)
            if case.min_fraction_of_limit is not None:
                fraction = row["achieved_gbps"] / row["limit_gbps"]
                add(
                    f"≥ {100 * case.min_fraction_of_limit:.0f}% of copy bandwidth", row,
                    f"{100 * fraction:.0f}%", fraction >= case.min_fraction_of_limit,
                )  # fmt: skip
    return "\n".join(lines)
