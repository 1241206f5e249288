"""``python -m fastconv``: every operation on its named workloads
(:mod:`fastconv._workloads`), beside its einsum reference and its peers,
checked for agreement and timed."""
import argparse
import sys
import time

import numpy as np

import fastconv as fc
from fastconv import _workloads as W

#: Agreement tolerance relative to max |reference| (summation order differs).
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _conv_args(rng, dtype, n, c, h, w, o, k, stride, padding, groups=1):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((o, c // groups, k, k)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    return (x, weight, bias), dict(stride=stride, padding=padding, groups=groups)


def _conv_backward(module):
    def backward(x, weight, grad_out, **kw):
        return (module.conv2d_grad_input(grad_out, weight, x.shape, **kw),
                module.conv2d_grad_weight(x, grad_out, weight.shape, **kw),
                module.conv2d_grad_bias(grad_out))
    return backward


def _jobs(rng, dtype, quick):
    """(op, workload, args, kwargs, {method: callable}) for every implemented op."""
    torch = _torch()
    T = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if torch else None
    pick = (lambda table: dict(list(table.items())[:2])) if quick else (lambda table: table)

    for name, (na, nb, nx, ny) in pick(W.HADAMARD).items():
        A = rng.standard_normal((na, nx, ny)).astype(dtype)
        B = rng.standard_normal((nb, nx, ny)).astype(dtype)
        methods = {"numpy_broadcast": lambda A=A, B=B: (A[:, None] * B[None]).reshape(-1, *A.shape[1:])}
        if torch:
            methods["torch"] = lambda A=T(A), B=T(B): (A[:, None] * B[None]).reshape(-1, *A.shape[1:])
        yield "batch_outer_hadamard", name, (A, B), {}, methods

    if hasattr(fc, "im2col"):
        for name, (n, c, h, w, k, s, p) in pick(W.IM2COL).items():
            x = rng.standard_normal((n, c, h, w)).astype(dtype)
            methods = {}
            if torch:
                unfold = torch.nn.functional.unfold
                methods["torch"] = lambda x=T(x), k=k, s=s, p=p: unfold(x, k, stride=s, padding=p)
            yield "im2col", name, (x, k), dict(stride=s, padding=p), methods

    if hasattr(fc, "conv2d"):
        for name, dims in pick(W.CONV2D).items():
            args, kw = _conv_args(rng, dtype, *dims)
            methods = {}
            if torch:
                targs = [T(a) for a in args]
                methods["torch"] = lambda targs=targs, kw=kw: torch.nn.functional.conv2d(*targs, **kw)
            yield "conv2d", name, args, kw, methods

    if hasattr(fc, "conv2d_grad_input"):
        for name, dims in pick(W.CONV2D_BACKWARD).items():
            (x, weight, _), kw = _conv_args(rng, dtype, *dims)
            grad_out = fc.conv2d(x, weight, **kw)
            methods = {}
            if torch:
                tx, tw = T(x).requires_grad_(), T(weight).requires_grad_()
                tb = torch.zeros(len(weight), dtype=tx.dtype, requires_grad=True)
                y = torch.nn.functional.conv2d(tx, tw, tb, **kw)
                methods["torch"] = lambda y=y, inputs=(tx, tw, tb), g=T(grad_out): torch.autograd.grad(
                    y, inputs, g, retain_graph=True)
            yield "conv2d_backward", name, (x, weight, grad_out), kw, methods

    if hasattr(fc, "linear"):
        for name, (n, i, o) in pick(W.LINEAR).items():
            args = tuple(rng.standard_normal(s).astype(dtype) for s in [(n, i), (i, o), (o,)])
            methods = {"numpy": lambda x=args[0], w=args[1], b=args[2]: x @ w + b}
            yield "linear", name, args, {}, methods
            grad_out = rng.standard_normal((n, o)).astype(dtype)
            methods = {"numpy": lambda x=args[0], w=args[1], g=grad_out: (g @ w.T, x.T @ g, g.sum(0))}
            yield "linear_backward", name, (args[0], args[1], grad_out), {}, methods

    if hasattr(fc, "softmax_backward"):
        for name, shape in pick(W.SOFTMAX).items():
            x = rng.standard_normal(shape).astype(dtype)
            methods = {"numpy": lambda x=x: (lambda e: e / e.sum(-1, keepdims=True))(
                np.exp(x - x.max(-1, keepdims=True)))}
            if torch:
                methods["torch"] = lambda x=T(x): torch.softmax(x, -1)
            yield "softmax", name, (x,), {}, methods
            s = fc.softmax(x)
            g = rng.standard_normal(shape).astype(dtype)
            methods = {"numpy_closed_form": lambda s=s, g=g: s * (g - (s * g).sum(-1, keepdims=True))}
            yield "softmax_backward", name, (s, g), {}, methods


def _fast(op):
    return _conv_backward(fc) if op == "conv2d_backward" else getattr(fc, op)


def _reference(op):
    return _conv_backward(fc.reference) if op == "conv2d_backward" else getattr(fc.reference, op)


#: The Jacobian reference of softmax_backward needs N*O*O memory: time it on
#: this many rows and scale to the full batch.
_REFERENCE_ROWS = {"softmax_backward": 64}


def _median_time(run, budget, compiles=True):
    """Median wall time of repeated calls within ``budget`` seconds, after a warm-up
    call. Where nothing ``compiles`` (the einsum references), a warm-up that
    already took longer than the budget is the figure; otherwise it never is:
    it may have compiled or loaded kernels."""
    start = time.perf_counter()
    result = run()
    first = time.perf_counter() - start
    if first > budget and not compiles:
        return first, result
    times = []
    while len(times) < 3 or (sum(times) < budget and len(times) < 50):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _agrees(result, expected):
    results = result if isinstance(result, tuple) else (result,)
    expecteds = expected if isinstance(expected, tuple) else (expected,)
    for r, e in zip(results, expecteds):
        r, e = np.asarray(r), np.asarray(e)
        if r.shape != e.shape:
            return False
        scale = max(float(np.abs(e).max(initial=0)), 1e-300)
        if float(np.abs(r - e).max(initial=0)) > RTOL[e.dtype] * scale:
            return False
    return True


def _format_time(seconds):
    for unit, factor in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:7.3g} {unit}"
    return f"{seconds / 1e-6:7.3g} µs"


def run(dtypes, quick, budget, log=sys.stderr):
    """Time every job (medians); one dict per (operation, workload, dtype)."""
    results = []
    rng = np.random.default_rng(0)
    jobs = [(dtype, *job) for dtype in dtypes for job in _jobs(rng, dtype, quick)]
    for number, (dtype, op, name, args, kw, peers) in enumerate(jobs, 1):
        print(f"[{number}/{len(jobs)}] {op} {name} {np.dtype(dtype).name} ...", file=log, flush=True)
        rows_limit = _REFERENCE_ROWS.get(op)
        if rows_limit and len(args[0]) > rows_limit:
            ref_args, scale = tuple(a[:rows_limit] for a in args), len(args[0]) / rows_limit
        else:
            ref_args, scale = args, 1.0
        ref_time, expected = _median_time(lambda: _reference(op)(*ref_args, **kw), budget,
                                          compiles=False)
        fast_time, result = _median_time(lambda: _fast(op)(*args, **kw), budget)
        if scale != 1.0:
            result = _fast(op)(*ref_args, **kw)
        results.append(dict(
            op=op, workload=name, dtype=np.dtype(dtype).name, reference=ref_time * scale,
            scaled=scale != 1.0, fastconv=fast_time, agrees=_agrees(result, expected),
            peers={peer: _median_time(call, budget)[0] for peer, call in peers.items()},
        ))
    return results


def _print_rows(results):
    print(f"{'operation':<22} {'workload':<15} {'dtype':<8} {'method':<20} {'time':>10} "
          f"{'speed-up':>9} {'agrees':>6}")
    for r in results:
        rows = [("reference (scaled)" if r["scaled"] else "reference", r["reference"], "-"),
                ("fastconv", r["fastconv"], "yes" if r["agrees"] else "NO"),
                *((peer, seconds, "-") for peer, seconds in r["peers"].items())]
        for method, seconds, agrees in rows:
            print(f"{r['op']:<22} {r['workload']:<15} {r['dtype']:<8} {method:<20} "
                  f"{_format_time(seconds):>10} {r['reference'] / seconds:>8.2f}x {agrees:>6}")


def _print_markdown(results):
    """One row per job; peers as 'time (fastconv's speed-up over them)'."""
    print("| operation | workload | dtype | einsum reference | fastconv | speed-up | peers | agrees |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        peers = "; ".join(f"{peer} {_format_time(seconds).strip()} ({seconds / r['fastconv']:.2f}x)"
                          for peer, seconds in r["peers"].items()) or "-"
        reference = _format_time(r["reference"]).strip() + (" (scaled)" if r["scaled"] else "")
        print(f"| {r['op']} | {r['workload']} | {r['dtype']} | {reference} | "
              f"{_format_time(r['fastconv']).strip()} | {r['reference'] / r['fastconv']:.1f}x | "
              f"{peers} | {'yes' if r['agrees'] else 'NO'} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    parser.add_argument("--threads", type=int, help="threads for fastconv (and torch); default: all cores")
    parser.add_argument("--quick", action="store_true", help="small workloads only, short timing")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
        torch = _torch()
        if torch:
            torch.set_num_threads(args.threads)
    dtypes = [np.float32, np.float64] if args.dtype == "both" else [np.dtype(args.dtype).type]
    results = run(dtypes, args.quick, budget=0.2 if args.quick else 1.0)
    (_print_markdown if args.markdown else _print_rows)(results)
    if not all(r["agrees"] for r in results):
        print("fastconv disagrees with its reference on the rows marked NO", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
