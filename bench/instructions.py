"""Per-call cost in instructions: each norm's tiny-tensor call, torch's and ours, under valgrind.

The overhead rows of `run.py` time a call in microseconds, and on a shared 2-core machine their
medians move by 2× with the neighbours' load. Instructions do not: callgrind counts them exactly, so
a change of a few hundred instructions per call (a Python attribute read, a function call level)
shows the same on every run. This script runs every statement once under callgrind in one process,
500 calls each after a warm-up, with a dump of the counters before each loop (valgrind's
`--dump-before` on `time.process_time`, called between the loops), and prints instructions per call
minus those of an empty loop. Roughly 0.17 ns per instruction on the quiet AVX2 host (34k
instructions ≈ 6 µs).

    python bench/instructions.py            # every norm, inference and recorded-graph calls
    python bench/instructions.py --filter layer_norm

Needs valgrind (`apt-get install valgrind`); takes about two minutes (importing torch under
valgrind dominates).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

SETUP = """
import torch
import replearn.ops as ops
F = torch.nn.functional
generator = torch.Generator().manual_seed(0)
def t(*shape, grad=False):
    return torch.randn(*shape, generator=generator).requires_grad_(grad)
x, w, b = t(4, 8), t(8), t(8)
xg, wg, bg = t(4, 8, grad=True), t(8, grad=True), t(8, grad=True)
running_mean, running_var = torch.zeros(8), torch.ones(8)
xc, wc, bc = t(2, 32, 2), t(32), t(32)
xcg, wcg, bcg = t(2, 32, 2, grad=True), t(32, grad=True), t(32, grad=True)
xi, xig = t(4, 8, 3), t(4, 8, 3, grad=True)
v, g, vg, gg = t(8, 4), t(8, 1), t(8, 4, grad=True), t(8, 1, grad=True)
"""

# (name, torch's call, ours): the overhead rows of bench/norm.py, without and with a recorded graph.
CALLS = [
    ("layer_norm", "F.layer_norm(x, (8,), w, b)", "ops.layer_norm(x, (8,), w, b)"),
    ("layer_norm, requires_grad", "F.layer_norm(xg, (8,), wg, bg)", "ops.layer_norm(xg, (8,), wg, bg)"),
    ("rms_norm", "F.rms_norm(x, (8,), w)", "ops.rms_norm(x, (8,), w)"),
    ("rms_norm, requires_grad", "F.rms_norm(xg, (8,), wg)", "ops.rms_norm(xg, (8,), wg)"),
    ("batch_norm", "F.batch_norm(x, running_mean, running_var, w, b, training=True)",
     "ops.batch_norm(x, running_mean, running_var, w, b, training=True)"),
    ("batch_norm, requires_grad", "F.batch_norm(xg, running_mean, running_var, wg, bg, training=True)",
     "ops.batch_norm(xg, running_mean, running_var, wg, bg, training=True)"),
    ("group_norm(G=32)", "F.group_norm(xc, 32, wc, bc)", "ops.group_norm(xc, 32, wc, bc)"),
    ("group_norm(G=32), requires_grad", "F.group_norm(xcg, 32, wcg, bcg)", "ops.group_norm(xcg, 32, wcg, bcg)"),
    ("instance_norm", "F.instance_norm(xi, weight=w, bias=b)", "ops.instance_norm(xi, weight=w, bias=b)"),
    ("instance_norm, requires_grad", "F.instance_norm(xig, weight=wg, bias=bg)",
     "ops.instance_norm(xig, weight=wg, bias=bg)"),
    ("weight_norm(dim=0)", "torch._weight_norm(v, g, 0)", "ops.weight_norm(v, g, 0)"),
    ("weight_norm(dim=0), requires_grad", "torch._weight_norm(vg, gg, 0)", "ops.weight_norm(vg, gg, 0)"),
]  # fmt: skip

CALLS_PER_LOOP = 500


def _program(statements: list[str]) -> str:
    functions = ", ".join(f"(lambda: {s})" for s in statements)
    return SETUP + f"""
import time
calls = [{functions}]
for call in calls:
    for _ in range(30):
        call()
def nothing():
    pass
time.process_time()
for _ in range({CALLS_PER_LOOP}):
    nothing()
for call in calls:
    time.process_time()
    for _ in range({CALLS_PER_LOOP}):
        call()
time.process_time()
"""


def count(statements: list[str]) -> list[float]:
    """Instructions per call of each statement, minus an empty loop's."""
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as work:
        program = os.path.join(work, "program.py")
        with open(program, "w") as f:
            f.write(_program(statements))
        out = os.path.join(work, "callgrind.out")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = ["valgrind", "--tool=callgrind", "--dump-before=time_process_time", f"--callgrind-out-file={out}"]
        run = subprocess.run([*command, sys.executable, program], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise SystemExit(run.stderr[-3000:])
        # One numbered dump per time.process_time() call, each holding what ran since the one before.
        dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        totals = []
        for path in dumps:
            with open(path) as f:
                totals.append(next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))))
    loops = totals[-(len(statements) + 1) :]  # the empty loop, then one per statement
    empty = loops[0] / CALLS_PER_LOOP
    return [total / CALLS_PER_LOOP - empty for total in loops[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", default="", help="only the rows whose name contains this text")
    args = parser.parse_args()
    rows = [row for row in CALLS if args.filter in row[0]]
    counts = count([s for _, torch_call, ours in rows for s in (torch_call, ours)])
    print("| call | torch (instructions) | replearn (instructions) | replearn / torch |")
    print("|---|---:|---:|---:|")
    for i, (name, _, _) in enumerate(rows):
        theirs, ours = counts[2 * i], counts[2 * i + 1]
        print(f"| {name} | {theirs:,.0f} | {ours:,.0f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
