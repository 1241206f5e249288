"""``python -m fastconv``: every operation of fastconv on its named workloads,
beside its einsum reference (``fastconv.reference``) and its peers (NumPy
recipes, torch where installed), checked for agreement with the reference and
timed.

Times are steady-state medians: each method is called once untimed before its
timed calls. The first call of fastconv's kernels in a process compiles them or
loads them from numba's on-disk cache; that cost is reported per operation in
its own table, marked "cold" where kernels had to be compiled. Speed-ups are
always "how many times faster fastconv is": the other method's time over
fastconv's ("x reference", and the "(x)" after each peer's time). The einsum
reference of softmax_backward builds a Jacobian per row: on large batches it is
timed on its first rows and scaled ("scaled").
"""
import argparse
import json
import sys
import time

import numpy as np

import fastconv as fc
from fastconv._registry import OPERATIONS, RTOL


class _CompileCounter:
    """Counts numba compilations (cache loads are not compilations)."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        try:
            from numba.core import event
        except ImportError:  # no numba event API: report no compilations
            self._listener = None
            return self
        counter = self

        class Listener(event.Listener):
            def on_start(self, ev):
                counter.count += 1

            def on_end(self, ev):
                pass

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:
            from numba.core import event
            event.unregister("numba:compile", self._listener)


def _timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def steady_median(call, budget):
    """Median seconds of timed calls after one untimed call: up to 50 timed calls
    within ``budget`` seconds, and at least three unless three would take more than
    ten budgets (then one). A process's first large results land on memory the VM
    host has not yet backed: here the second 720 MB result still took 1.1 s and
    the third 0.04 s, so a single timed call is no steady state.
    Returns (median, first call seconds, result of the first call)."""
    first, result = _timed(call)
    least = 3 if first * 3 <= 10 * budget else 1
    times = []
    while len(times) < least or (len(times) < 50 and sum(times) < budget):
        times.append(_timed(call)[0])
    return float(np.median(times)), first, result


def _agrees(result, expected):
    results = result if isinstance(result, tuple) else (result,)
    expecteds = expected if isinstance(expected, tuple) else (expected,)
    for r, e in zip(results, expecteds):
        r, e = np.asarray(r), np.asarray(e)
        if r.shape != e.shape:
            return False
        scale = max(float(np.abs(e).max(initial=0)), 1e-300)
        if float(np.abs(r.astype(np.float64) - e).max(initial=0)) > RTOL[e.dtype] * scale:
            return False
    return True


def _reference_slice(op, args, kwargs):
    """The reference's arguments (the first ``reference_rows`` rows where the
    reference needs memory beyond the batch) and the factor to scale its time by."""
    rows = op.reference_rows
    if rows and len(args[0]) > rows:
        return tuple(a[:rows] for a in args), len(args[0]) / rows
    return tuple(args), 1.0


def measure(op, workload, dtype, budget, first_calls, notes):
    """One result row; adds the fastconv first-call cost to ``first_calls``."""
    args, kwargs = op.arguments(workload, dtype)
    with _CompileCounter() as compiles:
        fast_time, first, result = steady_median(op.method("fastconv", args, kwargs), budget)
    entry = first_calls.setdefault((op.name, dtype), dict(seconds=0.0, compilations=0))
    entry["seconds"] += max(first - fast_time, 0.0)
    entry["compilations"] += compiles.count

    ref_args, scale = _reference_slice(op, args, kwargs)
    ref_time, _, expected = steady_median(op.method("reference", ref_args, kwargs), budget)
    if scale != 1.0:
        result = op.method("fastconv", ref_args, kwargs)()
    peers = {}
    for peer in op.peers:
        try:
            call = op.method(peer, args, kwargs)
        except NotImplementedError as missing:
            notes.setdefault(f"{peer}: {missing}", []).append(f"{op.name} {workload}")
            continue
        seconds = steady_median(call, budget)[0]
        peers[peer] = dict(seconds=seconds, speedup=seconds / fast_time)
    dims = op.workloads[workload].dims
    return dict(
        op=op.name, workload=workload, about=op.workloads[workload].about, dtype=dtype,
        fastconv=fast_time, reference=ref_time * scale, reference_scaled=scale != 1.0,
        speedup_over_reference=ref_time * scale / fast_time, peers=peers,
        agrees=_agrees(result, expected),
        gflops=op.flops(dims) / fast_time / 1e9,
        gbytes_per_second=op.nbytes(dims, np.dtype(dtype).itemsize) / fast_time / 1e9,
    )


def run(ops, dtypes, quick, budget, log=sys.stderr):
    """Measure every (operation, workload, dtype): (rows, first calls, notes)."""
    jobs = [(dtype, op, name) for dtype in dtypes for op in ops
            for name, workload in op.workloads.items() if workload.quick or not quick]
    rows, first_calls, notes = [], {}, {}
    for number, (dtype, op, name) in enumerate(jobs, 1):
        print(f"[{number}/{len(jobs)}] {op.name} {name} {dtype} ...", file=log, flush=True)
        rows.append(measure(op, name, dtype, budget, first_calls, notes))
    first = [dict(op=op, dtype=dtype, seconds=entry["seconds"], compilations=entry["compilations"],
                  cold=entry["compilations"] > 0) for (op, dtype), entry in first_calls.items()]
    return rows, first, notes


def format_time(seconds):
    for unit, factor in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"


def _table(rows, first_calls, markdown):
    """The results as lines of text: an aligned table, or Markdown."""
    header = ["operation", "workload", "dtype", "fastconv", "einsum reference", "x reference",
              "peers: time (x)", "agrees"]
    body = []
    for r in rows:
        reference = format_time(r["reference"]) + (" scaled" if r["reference_scaled"] else "")
        peers = "; ".join(f"{name} {format_time(peer['seconds'])} ({peer['speedup']:.2f}x)"
                          for name, peer in r["peers"].items()) or "-"
        body.append([r["op"], r["workload"], r["dtype"], format_time(r["fastconv"]), reference,
                     f"{r['speedup_over_reference']:.1f}x", peers, "yes" if r["agrees"] else "NO"])
    first_header = ["operation", "dtype", "first-call overhead", "cache"]
    first_body = [[f["op"], f["dtype"], format_time(f["seconds"]),
                   f"cold: {f['compilations']} compilations" if f["cold"] else "warm"]
                  for f in first_calls]
    return _render(header, body, markdown) + [""] + _render(first_header, first_body, markdown)


def _render(header, body, markdown):
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in body)]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in [header, *body]]


def _notes(notes, markdown):
    lines = []
    for reason, where in notes.items():
        places = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        lines.append(f"{'* ' if markdown else ''}not measured - {reason} ({places})")
    return lines


def plot(rows, path):
    """A chart of fastconv's speed-up over the einsum reference and over torch,
    per workload (log scale). Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']} {r['workload']} {r['dtype']}" for r in rows]
    over_reference = [r["speedup_over_reference"] for r in rows]
    over_torch = [r["peers"]["torch"]["speedup"] if "torch" in r["peers"] else np.nan for r in rows]
    y = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.4))
    axes.barh(y - 0.2, over_reference, 0.4, label="over the einsum reference")
    axes.barh(y + 0.2, over_torch, 0.4, label="over torch")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_yticks(y, labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("fastconv's speed-up (other time / fastconv time; right of 1: fastconv faster)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastconv", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="only the small workloads, and a shorter timing budget (default: off)")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                        help="the dtype(s) to measure (default: both)")
    parser.add_argument("--ops", default=",".join(OPERATIONS),
                        help="comma-separated operations (default: all: %(default)s)")
    parser.add_argument("--threads", type=int,
                        help="threads for fastconv (numba) and torch (default: numba's default, "
                             "all cores)")
    parser.add_argument("--budget", type=float,
                        help="seconds of timed calls per method and workload (default: 1.0, "
                             "0.2 with --quick); at least three calls are timed where three take "
                             "at most ten budgets, else one")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true",
                        help="print the tables as Markdown (default: aligned text)")
    output.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout (default: off)")
    output.add_argument("--list", action="store_true",
                        help="list the operations and their workloads, measure nothing (default: off)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also save a chart of the speed-ups over the reference and torch "
                             "(needs matplotlib; default: no chart)")
    return parser


def _list_workloads():
    for op in OPERATIONS.values():
        print(f"{op.name}: peers {', '.join(op.peers) or '-'}")
        for w in op.workloads.values():
            print(f"  {w.name:<30} {'quick ' if w.quick else '      '}{w.about}")


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.list:
        _list_workloads()
        return 0
    unknown = [name for name in args.ops.split(",") if name not in OPERATIONS]
    if unknown:
        print(f"python -m fastconv: unknown operation(s) {', '.join(unknown)}; "
              f"choose from {', '.join(OPERATIONS)}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("python -m fastconv: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
    if args.threads:
        import numba

        from ._config import start_thread_pool
        start_thread_pool()  # with fastconv's wait policy, before numba would start it
        numba.set_num_threads(args.threads)
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 1.0)
    ops = [OPERATIONS[name] for name in args.ops.split(",")]
    rows, first_calls, notes = run(ops, dtypes, args.quick, budget)
    if args.json:
        print(json.dumps(dict(fastconv=fc.__version__, numpy=np.__version__, results=rows,
                              first_calls=first_calls,
                              not_measured={reason: where for reason, where in notes.items()}),
                         indent=1))
    else:
        print("\n".join(_table(rows, first_calls, args.markdown) + _notes(notes, args.markdown)))
    if args.plot:
        plot(rows, args.plot)
    if not all(r["agrees"] for r in rows):
        print("fastconv disagrees with its reference on the rows marked NO", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
