"""im2col / col2im beside the reference, the classic loop recipe, torch's unfold/fold
and ``out.fill`` (the store-bandwidth ceiling for the column matrix)."""
import numpy as np

from .common import TIMER, best_time, require_torch, rng_arrays

try:
    import fastconv as fc
    from fastconv._seeds import im2col_loop
    from fastconv._workloads import IM2COL
    fc.im2col  # noqa: B018 - a commit before im2col existed skips below
except (ImportError, AttributeError):
    fc, IM2COL = None, {"seed_tiny": (4, 4, 5, 5, 3, 1, 1)}

METHODS = ["fastconv", "reference", "seed_im2col", "torch", "out_fill"]


def _setup(shape, method, dtype, adjoint=False):
    if fc is None:
        raise NotImplementedError("fastconv.im2col does not exist at this commit")
    n, c, h, w, k, s, p = IM2COL[shape]
    (x,) = rng_arrays((n, c, h, w), dtype=dtype)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((c * k * k, n * oh * ow), dtype)
    cols = rng_arrays(out.shape, dtype=dtype)[0]
    if method == "out_fill":
        return (lambda: out.fill(1.5)), out.nbytes
    if method == "torch":
        torch = require_torch()
        F = torch.nn.functional
        if adjoint:
            tc = torch.from_numpy(cols.reshape(c * k * k, n, oh * ow).transpose(1, 0, 2).copy())
            return (lambda: F.fold(tc, (h, w), k, padding=p, stride=s)), out.nbytes
        tx = torch.from_numpy(x)
        return (lambda: F.unfold(tx, k, padding=p, stride=s)), out.nbytes
    if adjoint:
        funcs = {"fastconv": lambda: fc.col2im(cols, x.shape, k, stride=s, padding=p),
                 "reference": lambda: fc.reference.col2im(cols, x.shape, k, stride=s, padding=p)}
    else:
        funcs = {"fastconv": lambda: fc.im2col(x, k, stride=s, padding=p, out=out),
                 "reference": lambda: fc.reference.im2col(x, k, stride=s, padding=p),
                 "seed_im2col": lambda: im2col_loop(x, k, s, p)}
    if method not in funcs:
        raise NotImplementedError(f"no {method} for this direction")
    return funcs[method], out.nbytes


class Im2col:
    params = [list(IM2COL), METHODS, ["float32", "float64"]]
    param_names = ["shape", "method", "dtype"]
    timer = TIMER
    repeat = (3, 10, 20.0)

    def setup(self, shape, method, dtype):
        self.run, self.nbytes = _setup(shape, method, dtype)
        self.run()

    def time_im2col(self, shape, method, dtype):
        self.run()

    def track_bandwidth(self, shape, method, dtype):
        """GB/s written into the column matrix, best of 5 runs."""
        best = best_time(self.run)
        return self.nbytes / best / 1e9

    track_bandwidth.unit = "GB/s"


class Col2im:
    params = [list(IM2COL), ["fastconv", "reference", "torch"], ["float32", "float64"]]
    param_names = ["shape", "method", "dtype"]
    timer = TIMER

    def setup(self, shape, method, dtype):
        self.run, _ = _setup(shape, method, dtype, adjoint=True)
        self.run()

    def time_col2im(self, shape, method, dtype):
        self.run()


class Im2colMemory:
    params = [["stem_7x7_s2"], ["fastconv", "reference"]]
    param_names = ["shape", "method"]

    def setup(self, shape, method):
        self.run, _ = _setup(shape, method, "float32")

    def peakmem_im2col(self, shape, method):
        self.run()
