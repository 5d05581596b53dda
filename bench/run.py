"""Benchmarks replearn against PyTorch, family by family, and prints a markdown table.

    python bench/run.py [family ...] [--json PATH] [--repeat N] [--quick] [--malloc both|default|reuse]
                        [--filter TEXT]

Families are the modules `bench/<family>.py` (every file here not named run.py and not starting with
an underscore), each exposing `CASES: list[_harness.Case]`; with no family named, all of them run.
Adding a family is adding a file.

Method (bench/_harness.py has the details). Torch and replearn run in the same process on the same
inputs, alternating, after warm-up; each time is the median of --repeat samples (time.perf_counter,
CUDA synchronized; CUDA cases only where a GPU and replearn's CUDA kernels are present). Each case's
results are checked against torch's once before timing. The limit is the machine's copy bandwidth,
measured here and within every case's alternation: the median rate of `dst.copy_(src)` on two
256 MiB float32 tensors, counting one read and one write per element. Achieved GB/s is the case's
minimal byte count (its family documents the model) over replearn's time.

Memory reuse. glibc returns large freed blocks to the OS, so every fresh output pays first-touch page
faults; ARCHITECTURE.md asks for numbers both with the defaults and with freed memory reused
(GLIBC_TUNABLES, `_harness.REUSE_TUNABLES`), and for ratios quoted with reuse. Tunables are read when
a process starts, so each setting runs in a fresh child process of this script (`--malloc both`, the
default, runs both; a single setting runs here when the environment already matches it).

Output. A markdown table per malloc setting on stdout (progress on stderr); then, in full runs, the
goals each case declares, met or not. `--json PATH` writes one JSON row per measurement with the
fields family, op, shape, dtype, device, torch_ms, replearn_ms, speedup (torch_ms / replearn_ms),
achieved_gbps (null on per-call overhead rows), limit_gbps, achieved_gflops and torch_gflops (null
except on compute-bound rows that declare their arithmetic), torch_op_ms and scaled_us (overhead rows
only: a tiny torch.add timed beside them, and replearn's µs per call on the issue's scale, where that
op costs 2 µs; bench/_harness.py) and malloc ("default" or "reuse").
Benchmarks report; they never fail on a slow number (only on a wrong result).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import _harness

BENCH_DIR = Path(__file__).resolve().parent
FULL = {"repeat": 20, "warmup": 3}
QUICK = {"repeat": 3, "warmup": 1}


def discover() -> list[str]:
    """Family names: the bench/*.py modules that are neither this script nor private helpers."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "run" and not p.stem.startswith("_"))


def load_cases(families: list[str]) -> dict[str, list[_harness.Case]]:
    return {family: list(importlib.import_module(family).CASES) for family in families}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help=f"families to run (default: all of {', '.join(discover())})")
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list to this file")
    parser.add_argument("--repeat", type=int, help=f"timed samples per side (default {FULL['repeat']}, quick {QUICK['repeat']})")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats: a smoke test, not a measurement")
    parser.add_argument("--malloc", choices=("both", "default", "reuse"), default="both",
                        help="glibc malloc setting(s) to run under (default: both, each in its own process)")  # fmt: skip
    parser.add_argument("--filter", metavar="TEXT", help="run only the cases whose op name contains TEXT")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="run only the cases on this device (default: every available one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # measure here, as launched by a parent
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(discover()))
    if unknown:
        parser.error(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; known: {', '.join(discover())}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.families = args.families or discover()
    return args


def _environment_is(mode: str) -> bool:
    return os.environ.get("GLIBC_TUNABLES") == _harness.MALLOC_TUNABLES[mode]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def preamble(args: argparse.Namespace, argv: list[str]) -> str:
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    settings = QUICK if args.quick else FULL
    return "\n".join([
        "# replearn benchmarks" + (" (quick: smoke-test shapes, not a measurement)" if args.quick else ""),
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}{gpu}",
        f"- software: torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python bench/run.py {shlex.join(argv)}`",
        f"- method: median of {args.repeat or settings['repeat']} samples after {settings['warmup']} warm-up calls, "
        "torch, replearn and a large copy alternating in one process (overhead rows: and a tiny torch op); "
        "limit = that copy's rate (bench/_harness.py)",
        "",
    ])  # fmt: skip


class ForeignLoad:
    """The share of the machine's CPU time that other processes used while the benchmark ran.

    A shared machine's neighbours slow both sides and the copy alike, but unevenly; this says how
    much to trust a run (Linux only: busy time from /proc/stat minus this process tree's own).
    """

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        idle = ticks[3] + ticks[4]  # idle and iowait
        t = os.times()
        return (sum(ticks) - idle) / hz, sum(ticks) / hz, t.user + t.system + t.children_user + t.children_system

    def share(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        busy, total, ours = (e - s for e, s in zip(end, self.start))
        return max(0.0, busy - ours) / total


def section(mode: str, rows: list[dict]) -> str:
    setting = "glibc defaults" if mode == "default" else f"`GLIBC_TUNABLES={_harness.REUSE_TUNABLES}`"
    def limit_text(field: str, unit: str) -> str:
        limits: dict[str, list[float]] = {}
        for row in rows:
            if row.get(field) is not None:
                limits.setdefault(row["device"], []).append(row[field])
        return ", ".join(
            f"{device} median {statistics.median(v):.1f} {unit} (from {min(v):.1f} to {max(v):.1f} beside the rows)"
            for device, v in limits.items()
        ) or "not measured"

    limits = f"Copy bandwidth: {limit_text('limit_gbps', 'GB/s')}. GEMM rate: {limit_text('limit_gflops', 'GFLOP/s')}."
    return f"## malloc: {mode} ({setting})\n\n{limits}\n\n{_harness.markdown_table(rows)}\n"


def measure(args: argparse.Namespace, mode: str) -> list[dict]:
    """Runs every case of the chosen families here, under the malloc setting this process started with."""
    settings = dict(QUICK if args.quick else FULL)
    if args.repeat is not None:
        settings["repeat"] = args.repeat
    rows, failed = [], []
    for family, cases in load_cases(args.families).items():
        for case in cases:
            if not _harness.device_available(case.device) or (args.filter and args.filter not in case.op):
                continue
            if args.device and case.device != args.device:
                continue
            try:
                row = _harness.run_case(family, case, mode, settings["repeat"], settings["warmup"], args.quick)
            except Exception as error:  # one broken case must not lose every other row of the run
                failed.append(f"{family} {case.op} ({case.device}): {type(error).__name__}: {error}")
                print(f"[{mode}] {failed[-1]}", file=sys.stderr, flush=True)
                continue
            unit, scale = ("µs", 1e3) if case.overhead else ("ms", 1.0)
            print(
                f"[{mode}] {family} {case.op} {_harness.shape_text(row['shape'])} {row['device']}: torch "
                f"{row['torch_ms'] * scale:.2f} {unit}, replearn {row['replearn_ms'] * scale:.2f} {unit}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            rows.append(row)
    if failed:
        print(f"[{mode}] {len(failed)} case(s) failed and are not in the table:\n  " + "\n  ".join(failed),
              file=sys.stderr, flush=True)
    return rows


def launch(args: argparse.Namespace, mode: str, json_path: Path) -> list[dict]:
    """Runs this script for one malloc setting in a child process (tunables are read at start-up)."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if _harness.MALLOC_TUNABLES[mode] is not None:
        env["GLIBC_TUNABLES"] = _harness.MALLOC_TUNABLES[mode]
    command = [sys.executable, str(Path(__file__).resolve()), *args.families, "--malloc", mode, "--json", str(json_path), "--child"]
    if args.quick:
        command.append("--quick")
    if args.repeat is not None:
        command += ["--repeat", str(args.repeat)]
    if args.filter:
        command += ["--filter", args.filter]
    if args.device:
        command += ["--device", args.device]
    sys.stdout.flush()
    subprocess.run(command, env=env, check=True)
    return json.loads(json_path.read_text())


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")  # one row per line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    modes = ["default", "reuse"] if args.malloc == "both" else [args.malloc]
    if args.child:
        rows = measure(args, modes[0])
        print(section(modes[0], rows), flush=True)
        write_json(args.json, rows)
        return 0

    print(preamble(args, argv), flush=True)
    foreign = ForeignLoad()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in modes:
            if len(modes) == 1 and _environment_is(mode):
                mode_rows = measure(args, mode)
                print(section(mode, mode_rows), flush=True)
            else:
                mode_rows = launch(args, mode, Path(scratch) / f"{mode}.json")
            rows += mode_rows
    if not args.quick:
        cases = {
            (family, case.op, _harness.dtype_name(case.dtype), case.device): case
            for family, family_cases in load_cases(args.families).items()
            for case in family_cases
        }
        print("## Goals\n\nSpeedup and bandwidth goals with memory reuse; \"not slower\" with glibc defaults.\n")
        print(_harness.goals_table(rows, cases))
    share = foreign.share()
    if share is not None:
        print(f"\nOther processes used {100 * share:.0f}% of the machine's CPU time during this run "
              "(near 0% on a quiet machine; more skews every number above).")  # fmt: skip
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
