"""conv2d forward beside its einsum reference, the classic im2col loop recipe and
torch.nn.functional.conv2d, over the named shapes of fastconv._workloads.CONV2D."""

from .common import TIMER, best_time, require_torch, rng_arrays

try:
    import fastconv as fc
    from fastconv._seeds import conv2d_im2col
    from fastconv._workloads import CONV2D
    fc.conv2d  # noqa: B018 - a commit before conv2d existed skips below
except (ImportError, AttributeError):
    fc, CONV2D = None, {"seed_tiny": (4, 4, 5, 5, 10, 3, 1, 1, 1)}

METHODS = ["fastconv", "reference", "seed_im2col", "torch"]
#: shapes where the loop recipe (or the einsum reference) would take > 10 s per call
_SLOW = {"seed_im2col": {"stem_7x7_s2"}, "reference": set()}


def _setup(shape, method, dtype):
    if fc is None:
        raise NotImplementedError("fastconv.conv2d does not exist at this commit")
    n, c, h, w, o, k, s, p, g = CONV2D[shape]
    if shape in _SLOW.get(method, ()):
        raise NotImplementedError(f"{method} takes > 10 s on {shape}")
    x, weight, bias = rng_arrays((n, c, h, w), (o, c // g, k, k), (o,), dtype=dtype)
    flops = 2.0 * n * o * c // g * k * k * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1)
    if method == "fastconv":
        return lambda: fc.conv2d(x, weight, bias, stride=s, padding=p, groups=g), flops
    if method == "reference":
        return lambda: fc.reference.conv2d(x, weight, bias, stride=s, padding=p, groups=g), flops
    if method == "seed_im2col":
        if g != 1:
            raise NotImplementedError("the loop recipe has no groups")
        return lambda: conv2d_im2col(x, weight, bias, s, p), flops
    torch = require_torch()
    F = torch.nn.functional
    tx, tw, tb = (torch.from_numpy(a) for a in (x, weight, bias))

    def run():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)
    return run, flops


class Conv2d:
    params = [list(CONV2D), METHODS, ["float32", "float64"]]
    param_names = ["shape", "method", "dtype"]
    timer = TIMER
    repeat = (3, 10, 20.0)

    def setup(self, shape, method, dtype):
        if method == "reference" and shape in {"resnet_56_n8", "stem_7x7_s2", "resnet_14", "pointwise_28"} \
                and dtype == "float32":
            raise NotImplementedError("the einsum reference is timed in float64 only on big shapes")
        self.run, self.flops = _setup(shape, method, dtype)
        self.run()  # compile or load the kernels, touch the pages

    def time_conv2d(self, shape, method, dtype):
        self.run()

    def track_gflops(self, shape, method, dtype):
        """GFLOP/s (2 * multiply-adds / best of 5 runs)."""
        best = best_time(self.run)
        return self.flops / best / 1e9

    track_gflops.unit = "GFLOP/s"


class Conv2dMemory:
    params = [["resnet_56_n8", "stem_7x7_s2"], ["fastconv", "torch"]]
    param_names = ["shape", "method"]

    def setup(self, shape, method):
        self.run, _ = _setup(shape, method, "float32")

    def peakmem_conv2d(self, shape, method):
        self.run()
