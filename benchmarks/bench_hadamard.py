"""batch_outer_hadamard beside the seed's einsum and iterative versions, numpy
broadcasting, torch, and ``out.fill`` (the store-bandwidth ceiling for out=)."""

import numpy as np

from .common import TIMER, best_time, require_torch, rng_arrays

try:
    import fastconv as fc
    from fastconv._seeds import outer_hadamard_iter
    from fastconv._workloads import HADAMARD
except ImportError:  # a commit before the workloads existed
    fc, HADAMARD = None, {"seed_tiny": (2, 3, 50, 60), "l3_resident": (20, 30, 50, 60),
                          "seed_large": (200, 300, 50, 60)}


def _methods(A, B, out):
    na, nb = len(A), len(B)
    methods = {
        "fastconv": lambda: fc.batch_outer_hadamard(A, B),
        "fastconv_out": lambda: fc.batch_outer_hadamard(A, B, out=out),
        "reference": lambda: fc.reference.batch_outer_hadamard(A, B),
        "itertools": lambda: outer_hadamard_iter(A, B),
        "numpy_broadcast": lambda: (A[:, None] * B[None]).reshape(na * nb, *A.shape[1:]),
        "out_fill": lambda: out.fill(1.5),
    }
    return methods


def _setup(shape, method, dtype):
    if fc is None:
        raise NotImplementedError("fastconv is not importable at this commit")
    na, nb, nx, ny = HADAMARD[shape]
    A, B = rng_arrays((na, nx, ny), (nb, nx, ny), dtype=dtype)
    out = np.empty((na * nb, nx, ny), dtype)
    if method == "torch":
        torch = require_torch()
        tA, tB = torch.from_numpy(A), torch.from_numpy(B)
        return lambda: (tA[:, None] * tB[None]).reshape(na * nb, nx, ny), out
    if method == "itertools" and na * nb > 1000:
        raise NotImplementedError("itertools takes seconds at this size")
    return _methods(A, B, out)[method], out


METHODS = ["fastconv", "fastconv_out", "reference", "itertools", "numpy_broadcast", "torch", "out_fill"]


class BatchOuterHadamard:
    params = [list(HADAMARD), METHODS, ["float64", "float32"]]
    param_names = ["shape", "method", "dtype"]
    timer = TIMER
    repeat = (3, 10, 20.0)

    def setup(self, shape, method, dtype):
        self.run, self.out = _setup(shape, method, dtype)
        self.run()  # compile or load the kernels, touch the pages

    def time_batch_outer_hadamard(self, shape, method, dtype):
        self.run()

    def track_output_bandwidth(self, shape, method, dtype):
        """GB/s written into the (na*nb, nx, ny) result, best of 5 runs."""
        best = best_time(self.run)
        return self.out.nbytes / best / 1e9

    track_output_bandwidth.unit = "GB/s"


class BatchOuterHadamardMemory:
    params = [["seed_large"], ["fastconv", "reference", "numpy_broadcast"]]
    param_names = ["shape", "method"]

    def setup(self, shape, method):
        self.run, self.out = _setup(shape, method, "float64")
        del self.out

    def peakmem_batch_outer_hadamard(self, shape, method):
        self.run()
