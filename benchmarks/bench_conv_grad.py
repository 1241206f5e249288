"""conv2d backward (grad input + grad weight + grad bias) beside the einsum
references and torch autograd's backward of the same convolution."""

from .common import TIMER, best_time, require_torch, rng_arrays

try:
    import fastconv as fc
    from fastconv._workloads import CONV2D_BACKWARD
    fc.conv2d_grad_input  # noqa: B018 - a commit before the gradients existed skips below
except (ImportError, AttributeError):  # a commit before the gradients existed
    fc, CONV2D_BACKWARD = None, {"seed_tiny": (4, 4, 5, 5, 10, 3, 1, 1)}


def _backward(module):
    def run(x, w, grad_out, kw):
        return (module.conv2d_grad_input(grad_out, w, x.shape, **kw),
                module.conv2d_grad_weight(x, grad_out, w.shape, **kw),
                module.conv2d_grad_bias(grad_out))
    return run


def _flops(shape):
    """Multiply-adds of grad input plus grad weight, times two."""
    n, c, h, w, o, k, s, p = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 2 * 2 * n * o * oh * ow * c * k * k


class Conv2dBackward:
    params = [list(CONV2D_BACKWARD), ["fastconv", "reference", "torch"], ["float32", "float64"]]
    param_names = ["shape", "method", "dtype"]
    timer = TIMER

    def setup(self, shape, method, dtype):
        if fc is None:
            raise NotImplementedError("fastconv has no conv2d gradients at this commit")
        n, c, h, w, o, k, s, p = CONV2D_BACKWARD[shape]
        if method == "reference" and _flops(CONV2D_BACKWARD[shape]) > 4e9:
            raise NotImplementedError("the einsum reference takes many seconds here")
        x, weight = rng_arrays((n, c, h, w), (o, c, k, k), dtype=dtype)
        kw = dict(stride=s, padding=p)
        (grad_out,) = rng_arrays(fc.conv2d(x, weight, **kw).shape, dtype=dtype, seed=1)
        if method == "torch":
            torch = require_torch()
            tx, tw = (torch.from_numpy(a).requires_grad_() for a in (x, weight))
            tb = torch.zeros(o, dtype=tx.dtype, requires_grad=True)
            y = torch.nn.functional.conv2d(tx, tw, tb, **kw)
            tg = torch.from_numpy(grad_out)
            self.run = lambda: torch.autograd.grad(y, (tx, tw, tb), tg, retain_graph=True)
        else:
            run = _backward(fc if method == "fastconv" else fc.reference)
            self.run = lambda: run(x, weight, grad_out, kw)
        self.run()

    def time_conv2d_backward(self, shape, method, dtype):
        self.run()

    def track_gflops(self, shape, method, dtype):
        best = best_time(self.run)
        return _flops(CONV2D_BACKWARD[shape]) / best / 1e9

    track_gflops.unit = "GFLOP/s"
