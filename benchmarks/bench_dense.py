"""linear / linear_backward / softmax / softmax_backward beside the einsum
references, plain numpy (BLAS GEMMs, the closed-form softmax backward) and torch."""

import numpy as np

from .common import TIMER, best_time, require_torch, rng_arrays

try:
    import fastconv as fc
    from fastconv._workloads import LINEAR, SOFTMAX
except ImportError:  # a commit before the workloads existed
    fc = None
    LINEAR = {"seed": (16, 64, 32), "mlp": (256, 1024, 512), "classifier": (4096, 512, 1000)}
    SOFTMAX = {"seed": (4, 5), "imagenet_batch": (4096, 1000)}

METHODS = ["fastconv", "reference", "numpy", "torch"]
DTYPE = np.float32
#: Rows of the (N, O, O) Jacobian the softmax_backward reference is timed on.
JACOBIAN_ROWS = 64
#: Largest Jacobian (bytes) the reference method builds at full size.
JACOBIAN_LIMIT = 1 << 30


def _fastconv(name):
    function = getattr(fc, name, None) if fc is not None else None
    if function is None:
        raise NotImplementedError(f"fastconv.{name} does not exist at this commit")
    return function


def _stable_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def _softmax_closed_form(s, g):
    return s * (g - (s * g).sum(axis=-1, keepdims=True))


def _linear_case(shape, method):
    n, i, o = LINEAR[shape]
    x, W, b, g = rng_arrays((n, i), (i, o), (o,), (n, o), dtype=DTYPE)
    if method == "torch":
        torch = require_torch()
        tx, tW, tb, tg = (torch.from_numpy(a) for a in (x, W, b, g))
        forward = lambda: torch.addmm(tb, tx, tW)  # noqa: E731
        backward = lambda: (tg @ tW.T, tx.T @ tg, tg.sum(0))  # noqa: E731
    elif method == "numpy":
        forward = lambda: x @ W + b  # noqa: E731
        backward = lambda: (g @ W.T, x.T @ g, g.sum(axis=0))  # noqa: E731
    else:
        module = fc.reference if method == "reference" else fc
        _fastconv("linear")
        forward = lambda: module.linear(x, W, b)  # noqa: E731
        backward = lambda: module.linear_backward(x, W, g)  # noqa: E731
    return forward, backward


class Linear:
    params = [list(LINEAR), METHODS]
    param_names = ["shape", "method"]
    timer = TIMER

    def setup(self, shape, method):
        self.forward, _ = _linear_case(shape, method)
        self.forward()  # warm-up: BLAS threads, pages

    def time_linear(self, shape, method):
        self.forward()


class LinearBackward:
    params = [list(LINEAR), METHODS]
    param_names = ["shape", "method"]
    timer = TIMER

    def setup(self, shape, method):
        _, self.backward = _linear_case(shape, method)
        self.backward()

    def time_linear_backward(self, shape, method):
        self.backward()


def _softmax_case(shape, method):
    x, g = rng_arrays(SOFTMAX[shape], SOFTMAX[shape], dtype=DTYPE)
    x *= 3
    s = _stable_softmax(x)
    if method == "torch":
        torch = require_torch()
        tx, ts, tg = (torch.from_numpy(a) for a in (x, s, g))
        forward = lambda: torch.softmax(tx, -1)  # noqa: E731
        backward = lambda: torch._softmax_backward_data(tg, ts, -1, ts.dtype)  # noqa: E731
    elif method == "numpy":
        forward = lambda: _stable_softmax(x)  # noqa: E731
        backward = lambda: _softmax_closed_form(s, g)  # noqa: E731
    else:
        module = fc.reference if method == "reference" else fc
        _fastconv("softmax")
        forward = lambda: module.softmax(x)  # noqa: E731
        backward = lambda: module.softmax_backward(s, g)  # noqa: E731
    return forward, backward, s


class Softmax:
    params = [list(SOFTMAX), METHODS]
    param_names = ["shape", "method"]
    timer = TIMER

    def setup(self, shape, method):
        self.forward, _, _ = _softmax_case(shape, method)
        self.forward()

    def time_softmax(self, shape, method):
        self.forward()


class SoftmaxBackward:
    """The reference builds the (N, O, O) Jacobian: above JACOBIAN_LIMIT bytes
    (16 GB at 4096 x 1000) it is skipped here and timed on a slice of rows by
    :class:`SoftmaxBackwardJacobian`."""
    params = [list(SOFTMAX), METHODS]
    param_names = ["shape", "method"]
    timer = TIMER

    def setup(self, shape, method):
        n, o = SOFTMAX[shape]
        if method == "reference" and n * o * o * np.dtype(DTYPE).itemsize > JACOBIAN_LIMIT:
            raise NotImplementedError("the Jacobian reference needs more than 1 GB at this size")
        _, self.backward, _ = _softmax_case(shape, method)
        self.backward()

    def time_softmax_backward(self, shape, method):
        self.backward()


class SoftmaxBackwardJacobian:
    """The Jacobian reference timed on JACOBIAN_ROWS rows, scaled to the full batch,
    and its ratio to fastconv on the full batch."""
    params = [list(SOFTMAX)]
    param_names = ["shape"]
    timer = TIMER
    timeout = 300

    def setup(self, shape):
        self.fast = _fastconv("softmax_backward")
        _, _, self.s = _softmax_case(shape, "numpy")
        self.g = rng_arrays(self.s.shape, dtype=DTYPE, seed=1)[0]
        self.rows = min(JACOBIAN_ROWS, self.s.shape[0])
        self.fast(self.s, self.g)
        fc.reference.softmax_backward(self.s[:self.rows], self.g[:self.rows])

    def _reference_scaled(self):
        s, g = self.s[:self.rows], self.g[:self.rows]
        best = best_time(lambda: fc.reference.softmax_backward(s, g), repeats=3)
        return best * self.s.shape[0] / self.rows

    def track_reference_scaled_seconds(self, shape):
        return self._reference_scaled()

    track_reference_scaled_seconds.unit = "seconds"

    def track_speedup_over_reference(self, shape):
        fast = best_time(lambda: self.fast(self.s, self.g), repeats=20)
        return self._reference_scaled() / fast

    track_speedup_over_reference.unit = "x"
