"""Smoke tests of the benchmark harness: bench/run.py runs and writes well-formed JSON rows.

Benchmarks report; they never fail the suite on a number, so nothing here asserts a timing. (A run
does fail when replearn's result differs from torch's: the harness checks that before timing.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import replearn
import replearn.ops.norm

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"
REQUIRED = {"family", "op", "shape", "dtype", "device", "torch_ms", "replearn_ms", "speedup", "achieved_gbps", "limit_gbps"}
EXTRA = {"malloc", "torch_op_ms", "scaled_us"}  # overhead rows: the tiny torch op beside them, the goal's scale
COMPUTE = {"achieved_gflops", "limit_gflops", "torch_gflops"}  # compute-bound rows (conv): GFLOP/s, no GB/s


def _run_bench(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / "rows.json"
    env = dict(os.environ)
    # The child must import the replearn under test, installed or from the source tree.
    package_root = str(Path(replearn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.pop("GLIBC_TUNABLES", None)  # glibc defaults: `--malloc default` measures in-process
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args, "--json", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"bench/run.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc.stdout


def _check_row(row: dict) -> None:
    compute_bound = "achieved_gflops" in row
    assert REQUIRED <= set(row) <= REQUIRED | EXTRA | (COMPUTE if compute_bound else set()), sorted(row)
    assert row["torch_ms"] > 0 and row["replearn_ms"] > 0, row
    if compute_bound:
        assert row["achieved_gbps"] is None and row["limit_gbps"] is None, row
        assert all(row[k] > 0 for k in COMPUTE), row
    else:
        assert row["limit_gbps"] > 0, row
    assert abs(row["speedup"] - row["torch_ms"] / row["replearn_ms"]) <= 1e-9 * row["speedup"], row
    assert row["achieved_gbps"] is None or row["achieved_gbps"] > 0, row
    overhead = row["achieved_gbps"] is None and not compute_bound
    assert ("torch_op_ms" in row) == ("scaled_us" in row) == overhead, row
    assert not overhead or (row["torch_op_ms"] > 0 and row["scaled_us"] > 0), row
    assert all(isinstance(s, int) and s > 0 for s in row["shape"]), row


def test_quick_norm_rows(tmp_path):
    rows, stdout = _run_bench(tmp_path, "norm", "--quick", "--malloc", "default")
    for row in rows:
        _check_row(row)
        assert row["family"] == "norm" and row["malloc"] == "default"
    # Every public norm op has a training-step row, and per-call overhead rows exist.
    benchmarked = {row["op"].split()[0].split("(")[0] for row in rows if row["op"].endswith("fwd+bwd")}
    assert set(replearn.ops.norm.__all__) <= benchmarked
    assert any(row["achieved_gbps"] is None for row in rows)
    assert "| norm | layer_norm fwd+bwd |" in stdout


def test_reuse_setting_runs_in_a_child_process(tmp_path):
    # The parent's environment has no tunables, so it must re-launch itself with them set.
    rows, stdout = _run_bench(tmp_path, "norm", "--quick", "--malloc", "reuse", "--filter", "layer_norm fwd", "--repeat", "2")
    assert [row["op"] for row in rows] == ["layer_norm fwd+bwd", "layer_norm fwd"]
    for row in rows:
        _check_row(row)
        assert row["malloc"] == "reuse"
    assert "glibc.malloc.mmap_threshold=2147483647" in stdout


def test_quick_pool_rows(tmp_path):
    rows, stdout = _run_bench(tmp_path, "pool", "--quick", "--malloc", "default", "--filter", "fwd+bwd", "--repeat", "2")
    for row in rows:
        _check_row(row)
        assert row["family"] == "pool" and row["achieved_gbps"] is not None
    assert {row["op"].split("(")[0] for row in rows} == {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"}
    assert "| pool | max_pool2d(3, 2, 1) fwd+bwd |" in stdout

def test_quick_attention_rows_report_gflops(tmp_path):
    rows, stdout = _run_bench(tmp_path, "attention", "--quick", "--malloc", "default", "--filter", "causal fwd vs",
                              "--repeat", "1")  # fmt: skip
    assert {row["op"] for row in rows} == {"attention causal fwd vs sdpa", "attention causal fwd vs math"}
    for row in rows:
        _check_row(row)
        assert row["achieved_gflops"] > 0 and row["torch_gflops"] > 0
    assert "GFLOP/s" in stdout


def test_quick_conv_rows_report_gflops(tmp_path):
    rows, stdout = _run_bench(tmp_path, "conv", "--quick", "--malloc", "default", "--filter", "fwd", "--repeat", "1")
    for row in rows:
        _check_row(row)
        assert "achieved_gflops" in row
    benchmarked = {row["op"].split()[0] for row in rows}
    assert {"conv2d", "conv_transpose2d", "dilated_causal_conv1d"} <= benchmarked
    assert "GEMM rate: cpu median" in stdout and "% of GEMM" in stdout


def test_instruction_count_program_runs_every_call():
    """bench/instructions.py's program (the one valgrind runs) executes, and each pair of calls gives
    the same values from torch and replearn, so the counts compare like with like."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_instructions", BENCH.parent / "instructions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    namespace: dict = {}
    exec(module.SETUP, namespace)
    for name, torch_call, ours in module.CALLS:
        expected, got = eval(torch_call, namespace), eval(ours, namespace)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=name)
    compile(module._program([c for _, t, o in module.CALLS for c in (t, o)]), "program", "exec")
