"""Peer comparison the way asv measures: every (method, shape) in its own fresh
process, numpy imported before fastconv, methods alternated over rounds, the
best median per pair kept; prints torch time / fastconv time per shape.

    python benchmarks/isolated.py conv2d float32 --rounds 2
    python benchmarks/isolated.py conv2d_backward float32 --shapes resnet_1x64x56x56_k3
    python benchmarks/isolated.py conv2d float32 --methods fastconv --first numpy,fastconv   # import order
    python benchmarks/isolated.py conv2d float32 --busy   # with the other core kept busy
    python benchmarks/isolated.py conv2d float32 --dims "8,64,56,56,128,3,2,1;2,96,40,60,96,5,1,2"

Run it on a quiet machine (benchmark with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset where they are set: they slow a current numpy).
"""
import argparse
import json
import math
import os
import subprocess
import sys

_CHILD = """
import sys, time, json
import {first}
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.common import build, registry
workloads = registry.OPERATIONS[{args[0]!r}].workloads
for name, dims in {given!r}.items():  # shapes given with --dims
    workloads[name] = type(next(iter(workloads.values())))(name, "given on the command line", dims)
run = build(*{args!r})
times, stop = [], time.perf_counter() + 3.0
while len(times) < 30 and (time.perf_counter() < stop or len(times) < 5):
    start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
print(json.dumps(float(np.median(times))))
"""


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from benchmarks.common import registry

    shapes = {op: registry.OPERATIONS[op].workloads for op in ("conv2d", "conv2d_backward")}
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(shapes), help="the operation")
    parser.add_argument("dtype", choices=["float32", "float64"], help="the dtype")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: 2)")
    parser.add_argument("--shapes", help="comma-separated workload names, or their former names "
                                         "(default: all)")
    parser.add_argument("--dims", help="shapes of your own instead of the named workloads, separated by "
                                       "';': N,C,H,W,O,K,stride,padding, and for conv2d ,groups (default 1)")
    parser.add_argument("--methods", default="fastconv,torch", help="default: fastconv,torch")
    parser.add_argument("--first", default="numpy",
                        help="the module each process imports first: numpy, fastconv, or both "
                             "(numpy,fastconv: every method timed both ways, alternated; default: numpy)")
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy with a spinning process meanwhile")
    opts = parser.parse_args()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if opts.busy else None
    try:
        _campaign(opts, root, shapes)
    finally:
        if spinner:
            spinner.kill()


def _campaign(opts, root, shapes):
    workloads, given = shapes[opts.kind], {}
    former = {w.former: name for name, w in workloads.items()}
    names = [former.get(n, n) for n in opts.shapes.split(",")] if opts.shapes else list(workloads)
    if opts.dims:
        for text in opts.dims.split(";"):
            dims = tuple(int(v) for v in text.split(","))
            if len(dims) == 8 and opts.kind == "conv2d":
                dims += (1,)
            if len(dims) != (9 if opts.kind == "conv2d" else 8):
                raise SystemExit(f"--dims {text}: expected N,C,H,W,O,K,stride,padding"
                                 f"{'[,groups]' if opts.kind == 'conv2d' else ''}")
            given[text] = dims
        names = list(given)
    unknown = [n for n in names if n not in workloads and n not in given]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(workloads)}")
    firsts = opts.first.split(",")
    if not set(firsts) <= {"numpy", "fastconv"}:
        raise SystemExit(f"--first takes numpy, fastconv or both, got {opts.first}")
    methods = opts.methods.split(",")
    variants = [(m, f) for m in methods for f in firsts]
    best = {}
    for r in range(opts.rounds):
        for name in names:
            for method, first in variants if r % 2 == 0 else variants[::-1]:
                code = _CHILD.format(root=root, first=first, given=given,
                                     args=(opts.kind, name, method, opts.dtype))
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if done.returncode:
                    print(f"{name} {method}: skipped ({done.stderr.strip().splitlines()[-1]})")
                    continue
                key = (name, method, first)
                best[key] = min(best.get(key, math.inf), json.loads(done.stdout))
    label = (lambda m, f: f"{m} ({f} first)") if len(firsts) > 1 else (lambda m, f: m)
    ratios = []
    for name in names:
        times = {(m, f): best[name, m, f] for m, f in variants if (name, m, f) in best}
        line = "  ".join(f"{label(m, f)} {1e3 * t:.3f} ms" for (m, f), t in times.items())
        first = firsts[0]
        if ("fastconv", first) in times and ("torch", first) in times and len(firsts) == 1:
            ratios.append(times["torch", first] / times["fastconv", first])
            line += f"  torch/fastconv {ratios[-1]:.2f}x"
        elif len(firsts) == 2 and all((methods[0], f) in times for f in firsts):
            m = methods[0]
            ratios.append(times[m, firsts[1]] / times[m, firsts[0]])
            line += f"  {firsts[1]}-first/{firsts[0]}-first {ratios[-1]:.2f}"
        print(f"{name:26s} {line}")
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"geomean {geomean:.2f}x, min {min(ratios):.2f}x, max {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
