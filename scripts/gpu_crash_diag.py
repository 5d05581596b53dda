"""Which bad-input case of an op crashes the process on CUDA, and a native backtrace of it.

    python scripts/gpu_crash_diag.py OP [OP ...]      (gpu_check.sh runs it when a test segfaults)

Runs each op's `bad_inputs` cases on CUDA in a child process per op, printing every case before it
calls it, so the last case printed by a child that died is the one that crashed; then reruns the
first two crashing cases under cuda-gdb for a backtrace. Writes $OUT/diag.txt (./diag.txt without
OUT). This found the iostream crash of the first H200 run (bench/RESULTS.md).
"""
import os
import subprocess
import sys

CHILD = r'''
import sys, faulthandler, torch, replearn
faulthandler.enable()
name, only = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
info = replearn.ops.op_info(name)
for case in info.bad_inputs(torch.device("cuda")):
    if only and case.name != only:
        continue
    print("CASE", name, repr(case.name), flush=True)
    try:
        info.public(*case.args, **case.kwargs)
        print("  NO ERROR", flush=True)
    except Exception as e:
        print("  raised", type(e).__name__, str(e)[:160], flush=True)
torch.cuda.synchronize()
print("END", name, flush=True)
'''
out = os.environ.get("OUT", ".")
ops = sys.argv[1:]
procs = {op: subprocess.Popen([sys.executable, "-c", CHILD, op], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for op in ops}
crashed = []
with open(f"{out}/diag.txt", "w") as log:
    for op, p in procs.items():
        try:
            text, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        lines = [l for l in text.splitlines() if l.startswith(("CASE", "  ", "END", "Fatal", "  File"))]
        log.write(f"==== {op}: rc {p.returncode}\n" + "\n".join(lines[:60]) + "\n")
        log.flush()
        if p.returncode != 0:
            last = [l for l in text.splitlines() if l.startswith("CASE")]
            crashed.append((op, eval(last[-1].split(" ", 2)[2]) if last else None))
    log.write(f"crashed: {crashed}\n")
    print(f"crashed: {crashed}", flush=True)
    for op, case in crashed[:2]:
        if case is None:
            continue
        cmd = ["timeout", "100", "cuda-gdb", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
               "--args", sys.executable, "-c", CHILD, op, case]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(f"==== cuda-gdb {op} {case!r}: rc {r.returncode}\n" + r.stdout[-6000:] + "\n")
        log.flush()
