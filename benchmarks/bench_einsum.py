"""fastconv.einsum beside NumPy's einsum (default, optimize=True) and torch.einsum
on the expressions from-scratch layers write, at working sizes and at the
seeds' tiny sizes (where only the dispatch cost shows)."""

import json
import os
import subprocess
import sys

import numpy as np

try:
    from .common import TIMER, require_torch, rng_arrays
except ImportError:  # run as a script: python benchmarks/bench_einsum.py
    from common import TIMER, require_torch, rng_arrays

try:
    import fastconv as fc
except ImportError:  # a commit before fastconv.einsum existed
    fc = None

#: name: (subscripts, operand shapes, dtype).
EINSUM = {
    "hadamard_200x300": ("ikxy,kjxy->ijxy", [(200, 1, 50, 60), (1, 300, 50, 60)], "float64"),
    "hadamard_20x30": ("ikxy,kjxy->ijxy", [(20, 1, 50, 60), (1, 30, 50, 60)], "float64"),
    "linear_dW": ("ni,no->io", [(4096, 1024), (4096, 512)], "float64"),
    "patch_conv": ("oiwh,biwh->bo", [(8, 64, 3, 3), (64, 64, 3, 3)], "float64"),
    "patch_conv_f32": ("oiwh,biwh->bo", [(256, 256, 3, 3), (2048, 256, 3, 3)], "float32"),
    "softmax_diag": ("no,oi->nio", [(256, 100), (100, 100)], "float64"),
    "softmax_outer": ("no,ni->nio", [(256, 100), (256, 100)], "float64"),
    "softmax_grad": ("nio,no->ni", [(256, 100, 100), (256, 100)], "float64"),
    "row_scale": ("o,os->os", [(2000,), (2000, 2000)], "float64"),
    "diagonals": ("nii->ni", [(2000, 60, 60)], "float64"),
    "trace": ("ii", [(3000, 3000)], "float64"),
}
#: The seeds' own sizes: milliseconds of work or less, where dispatch shows.
EINSUM_TINY = {
    "tiny_hadamard": ("ikxy,kjxy->ijxy", [(2, 1, 50, 60), (1, 3, 50, 60)], "float64"),
    "tiny_linear_dW": ("ni,no->io", [(16, 64), (16, 32)], "float64"),
    "tiny_patch_conv": ("oiwh,biwh->bo", [(3, 4, 3, 3), (8, 4, 3, 3)], "float64"),
    "tiny_softmax_diag": ("no,oi->nio", [(1, 5), (5, 5)], "float64"),
    "tiny_softmax_outer": ("no,ni->nio", [(1, 5), (1, 5)], "float64"),
    "tiny_softmax_grad": ("nio,no->ni", [(1, 5, 5), (1, 5)], "float64"),
    "tiny_row_scale": ("o,os->os", [(5,), (5, 5)], "float64"),
    "tiny_diagonals": ("nii->ni", [(5, 5, 5)], "float64"),
    "tiny_trace": ("ii", [(5, 5)], "float64"),
    "tiny_transpose": ("ij->ji", [(2, 5)], "float64"),
}
WORKLOADS = {**EINSUM, **EINSUM_TINY}
METHODS = ["fastconv", "numpy", "numpy_optimize", "torch"]


def setup_einsum(name, method):
    """A call running workload ``name`` with ``method``, warmed up."""
    subscripts, shapes, dtype = WORKLOADS[name]
    operands = rng_arrays(*shapes, dtype=np.dtype(dtype))
    if method == "fastconv":
        if fc is None or not hasattr(fc, "einsum"):
            raise NotImplementedError("fastconv.einsum is not importable at this commit")
        function, arguments, options = fc.einsum, operands, {}
    elif method in ("numpy", "numpy_optimize"):
        function, arguments, options = np.einsum, operands, {"optimize": method == "numpy_optimize"}
    else:
        torch = require_torch()
        function, arguments, options = torch.einsum, [torch.from_numpy(x) for x in operands], {}
        subscripts = subscripts.replace(" ", "")

    def run():
        return function(subscripts, *arguments, **options)

    run()  # compile or load the kernels, plan the call, touch the pages
    return run


class Einsum:
    params = [list(EINSUM), METHODS]
    param_names = ["workload", "method"]
    timer = TIMER
    repeat = (3, 10, 20.0)

    def setup(self, name, method):
        self.run = setup_einsum(name, method)

    def time_einsum(self, name, method):
        self.run()


class EinsumTiny:
    params = [list(EINSUM_TINY), ["fastconv", "numpy"]]
    param_names = ["workload", "method"]
    timer = TIMER

    def setup(self, name, method):
        self.run = setup_einsum(name, method)

    def time_einsum(self, name, method):
        self.run()


_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.bench_einsum import setup_einsum
run = setup_einsum({name!r}, {method!r})
run()
batch, times, stop = 1, [], time.perf_counter() + {seconds!r}
start = time.perf_counter(); run(); once = time.perf_counter() - start
batch = max(1, int(1e-3 / max(once, 1e-9)))  # tiny calls: time batches of about 1 ms
while len(times) < 40 and (time.perf_counter() < stop or len(times) < 5):
    start = time.perf_counter()
    for _ in range(batch):
        run()
    times.append((time.perf_counter() - start) / batch)
print(json.dumps(float(np.median(times))))
"""


def _time_in_fresh_process(root, name, method, seconds):
    code = _CHILD.format(root=root, name=name, method=method, seconds=seconds)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{name} {method}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)


def main():
    """Median time per call of every workload, each (workload, method) in its own
    fresh process (numpy imported first), methods alternated over rounds, the best
    median kept; prints the ratios the targets are stated in."""
    import argparse
    import math

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per process")
    parser.add_argument("--workloads", help="comma-separated names (default: all)")
    opts = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = opts.workloads.split(",") if opts.workloads else list(WORKLOADS)
    best = {}
    for _ in range(opts.rounds):
        for name in names:
            methods = ["fastconv", "numpy"] + ([] if name in EINSUM_TINY else ["numpy_optimize"])
            for method in methods:
                seconds = _time_in_fresh_process(root, name, method, opts.seconds)
                best[name, method] = min(best.get((name, method), math.inf), seconds)
    speedups = []
    print(f"{'workload':22} {'fastconv':>11} {'numpy':>11} {'np optimize':>11} "
          f"{'x numpy':>8} {'x best np':>9} {'+us':>6}")
    for name in names:
        fast, default = best[name, "fastconv"], best[name, "numpy"]
        optimized = best.get((name, "numpy_optimize"), math.inf)
        line = f"{name:22} {fast * 1e6:9.1f}us {default * 1e6:9.1f}us "
        line += f"{optimized * 1e6:9.1f}us " if optimized < math.inf else f"{'-':>11} "
        line += f"{default / fast:8.2f} {min(default, optimized) / fast:9.2f} {(fast - default) * 1e6:6.2f}"
        print(line)
        if name in EINSUM:
            speedups.append(default / fast)
    if speedups:
        geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
        print(f"geomean speedup over np.einsum default at working sizes: {geomean:.2f}x")


if __name__ == "__main__":
    main()
