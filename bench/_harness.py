"""What every benchmark family shares: the `Case` description, the timing loop, the machine's limit.

A family module `bench/<family>.py` exposes `CASES: list[Case]`; `bench/run.py` finds it by its file
name. A case builds one (torch, replearn) pair of zero-argument callables; the harness times them in
the same process, alternating, and reports medians.

Timing. After `warmup` untimed calls of each side, the harness picks one inner-loop count for both
sides, doubling it until one sample lasts at least `min_sample_s` (1 call for the large shapes,
thousands for the per-call overhead rows, where `time.perf_counter` would otherwise see its own
resolution and the clock's own cost), then
takes `repeat` samples of each side, alternating which side goes first so that slow drift of the
machine (frequency, a neighbour's load) falls on both alike. A sample is the wall time of the inner
loop divided by its count, with CUDA synchronized before the clock is read; the reported time is the
median of the samples. The garbage collector is off while timing. Outputs are dropped as soon as a
call returns, as in a training step, so allocator behaviour (glibc's, or torch's caching allocator on
CUDA) is part of what is measured: that is why run.py runs every case under two malloc settings.

The limit. `copy_bandwidth_gbps(device)` is the median over repeated `dst.copy_(src)` of two float32
tensors of 256 MiB each (64 MiB in quick mode), far beyond any cache, with `dst` allocated and touched
beforehand so no page fault is timed, counting 2·nbytes (one read, one write) per copy. That is the
rate torch's own best memory-bound op reaches on this machine with its threads; a norm kernel that
reads x and writes y once is bounded by it. (Neither the copy nor a kernel that stores with ordinary
writes avoids the read-for-ownership of the destination lines, so the comparison is like for like.)
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
        max_overhead_us: goal for overhead rows: replearn microseconds per call at most this.
    """

    op: str
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    build: Callable[[tuple[int, ...], torch.dtype, str], tuple[Runner, Runner]]
    bytes_moved: Callable[[tuple[int, ...], int], int] | None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    min_speedup: float | None = None
    min_fraction_of_limit: float | None = None
    max_overhead_us: float | None = None

    @property
    def overhead(self) -> bool:
        return self.bytes_moved is None


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


def _inner_count(runs: Sequence[Runner], sync: Callable[[], None], min_sample_s: float) -> int:
    """Calls per sample: doubled until the faster side's sample lasts min_sample_s (timeit's autorange).

    Growing the count, instead of extrapolating from one call, keeps a single preempted call from
    setting the count: noise can only stop the doubling early, never inflate it.
    """
    inner = 1
    while inner < 2**20:
        if min(_sample(run, inner, sync) for run in runs) * inner >= min_sample_s:
            break
        inner *= 2
    return inner


def time_pair(
    torch_run: Runner,
    replearn_run: Runner,
    device: str,
    repeat: int,
    warmup: int,
    min_sample_s: float,
) -> tuple[float, float]:
    """Median seconds per call of each side, measured alternately (see the module docstring)."""
    sync = _synchronizer(device)
    runs = (torch_run, replearn_run)
    for _ in range(warmup):
        for run in runs:
            run()
    sync()
    gc.collect()
    gc.disable()
    try:
        inner = _inner_count(runs, sync, min_sample_s)
        samples: tuple[list[float], list[float]] = ([], [])
        for i in range(repeat):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                samples[side].append(_sample(runs[side], inner, sync))
    finally:
        gc.enable()
    return statistics.median(samples[0]), statistics.median(samples[1])


# ------------------------------------------------------------------------------ passes over a spec
# Each returns a Case.build: one spec, timed as inference, as a training step, or as a forward that
# records the autograd graph (the per-call cost of the autograd path on tiny tensors).


def forward(spec: Spec) -> Callable[[tuple[int, ...], torch.dtype, str], tuple[Runner, Runner]]:
    """The forward call alone, inputs not requiring grad (the inference path)."""

    def build(shape, dtype, device):
        return spec(shape, dtype, device, "torch")[1], spec(shape, dtype, device, "replearn")[1]

    return build


def forward_recording_graph(spec: Spec) -> Callable[[tuple[int, ...], torch.dtype, str], tuple[Runner, Runner]]:
    """The forward call with every input requiring grad: the graph is recorded, then dropped."""

    def side(shape, dtype, device, name):
        inputs, call = spec(shape, dtype, device, name)
        for t in inputs:
            t.requires_grad_()
        return call

    return lambda shape, dtype, device: (side(shape, dtype, device, "torch"), side(shape, dtype, device, "replearn"))


def forward_backward(spec: Spec) -> Callable[[tuple[int, ...], torch.dtype, str], tuple[Runner, Runner]]:
    """Forward, then the gradients of every input for a fixed random output gradient.

    `torch.autograd.grad` returns the gradients instead of accumulating them into `.grad`, so every
    call does the same work (no `+=` into a gradient left by the previous call).
    """

    def side(shape, dtype, device, name):
        inputs, call = spec(shape, dtype, device, name)
        for t in inputs:
            t.requires_grad_()
        out_shape = call().shape
        grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
        return lambda: torch.autograd.grad(call(), inputs, grad_out)

    return lambda shape, dtype, device: (side(shape, dtype, device, "torch"), side(shape, dtype, device, "replearn"))


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


_copy_cache: dict[tuple[str, bool], float] = {}


def copy_bandwidth_gbps(device: str, quick: bool) -> float:
    """The machine's memory limit: median GB/s of large `dst.copy_(src)`, read+write bytes counted."""
    if (device, quick) in _copy_cache:
        return _copy_cache[(device, quick)]
    numel = (64 if quick else 256) * 2**20 // 4
    src = torch.rand(numel, device=device)
    dst = torch.zeros(numel, device=device)  # allocated and touched: no page fault is timed
    sync = _synchronizer(device)
    for _ in range(2):
        dst.copy_(src)
    sync()
    seconds = []
    for _ in range(3 if quick else 20):
        seconds.append(_sample(lambda: dst.copy_(src), 1, sync))
    gbps = 2 * numel * src.element_size() / statistics.median(seconds) / 1e9
    _copy_cache[(device, quick)] = gbps
    return gbps


def run_case(
    family: str, case: Case, malloc: str, repeat: int, warmup: int, quick: bool
) -> dict:
    """Builds, checks and times one case; returns its JSON row."""
    shape = case.quick_shape if quick else case.shape
    torch_run, replearn_run = case.build(shape, case.dtype, case.device)
    check_agree(case.op, torch_run(), replearn_run(), case.dtype)
    min_sample_s = 0.002 if quick else 0.02
    torch_s, replearn_s = time_pair(torch_run, replearn_run, case.device, repeat, warmup, min_sample_s)
    del torch_run, replearn_run
    limit = copy_bandwidth_gbps(case.device, quick)
    achieved = None
    if case.bytes_moved is not None:
        achieved = case.bytes_moved(shape, torch.empty((), dtype=case.dtype).element_size()) / replearn_s / 1e9
    return {
        "family": family,
        "op": case.op,
        "shape": list(shape),
        "dtype": dtype_name(case.dtype),
        "device": case.device,
        "torch_ms": torch_s * 1e3,
        "replearn_ms": replearn_s * 1e3,
        "speedup": torch_s / replearn_s,
        "achieved_gbps": achieved,
        "limit_gbps": limit,
        "malloc": malloc,
    }


# ---------------------------------------------------------------------------------------- output


def _time_cell(ms: float, overhead: bool) -> str:
    return f"{ms * 1e3:.2f} µs" if overhead else f"{ms:.2f} ms"


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def markdown_table(rows: list[dict]) -> str:
    """One line per row: times (µs for overhead rows), speedup, GB/s and its fraction of the limit."""
    lines = [
        "| family | op | shape | dtype | device | torch | replearn | speedup | GB/s | % of copy |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        overhead = row["achieved_gbps"] is None
        gbps = "—" if overhead else f"{row['achieved_gbps']:.1f}"
        fraction = "—" if overhead else f"{100 * row['achieved_gbps'] / row['limit_gbps']:.0f}%"
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
                us = row["replearn_ms"] * 1e3
                add(f"≤ {case.max_overhead_us:g} µs per call", row, f"{us:.2f} µs", us <= case.max_overhead_us)
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
