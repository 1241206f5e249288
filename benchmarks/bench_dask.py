"""fastconv on dask arrays beside the in-memory calls on the same data: conv2d over a
batch-chunked array on one worker (the cost of dask's blocks and scheduling), and a
sum over a batch outer-Hadamard product that is never materialized."""
import numpy as np

from .common import TIMER, median_time, registry

try:
    import dask
    import dask.array as da

    import fastconv as fc
    fc.conv2d  # noqa: B018 - a commit before conv2d existed skips below
except (ImportError, AttributeError):
    fc = da = None

#: (channels, height, width, filters, kernel, stride, padding, groups) of the layers compared.
LAYERS = {"resnet_56": (64, 56, 56, 64, 3, 1, 1, 1), "resnet_14": (256, 14, 14, 256, 3, 1, 1, 1)}

#: Images per batch in the conv2d comparison, split into chunks of CHUNKS images.
BATCH = 32
CHUNKS = [8, 16]
#: in_memory: one call on the whole batch; dask_sync: the chunks one after another in
#: the calling thread; dask_one_thread: dask's threaded scheduler with one worker thread.
METHODS = ["in_memory", "dask_sync", "dask_one_thread"]
SCHEDULERS = {"dask_sync": dict(scheduler="sync"),
              "dask_one_thread": dict(scheduler="threads", num_workers=1)}


def _arrays(*shapes):
    return registry._random(np.random.default_rng(0), np.float32, *shapes)


def _require_dask():
    if fc is None or da is None:
        raise NotImplementedError("dask or fastconv.conv2d is not installed at this commit")


class DaskConv2d:
    params = [["resnet_56", "resnet_14"], CHUNKS, METHODS]
    param_names = ["shape", "chunk", "method"]
    timer = TIMER
    repeat = (3, 10, 20.0)

    def setup(self, shape, chunk, method):
        _require_dask()
        c, h, w, o, k, s, p, g = LAYERS[shape]
        x, weight, bias = _arrays((BATCH, c, h, w), (o, c // g, k, k), (o,))
        if method == "in_memory":
            self.run = lambda: fc.conv2d(x, weight, bias, stride=s, padding=p, groups=g)
        else:
            lazy = da.from_array(x, chunks=(chunk, c, h, w))
            config = SCHEDULERS[method]

            def run():
                with dask.config.set(**config):
                    return fc.conv2d(lazy, weight, bias, stride=s, padding=p, groups=g).compute()
            self.run = run
        self.run()

    def time_conv2d(self, shape, chunk, method):
        self.run()


class DaskOuterHadamardSum:
    """``batch_outer_hadamard(A, B).sum()`` with A (na, 50, 60), B (300, 50, 60) float32,
    A in chunks of one row: the result (na*300 rows) is reduced block by block."""
    params = [[40, 400], ["in_memory", "dask_threads"]]
    param_names = ["na", "method"]
    timer = TIMER
    repeat = (3, 5, 30.0)

    def setup(self, na, method):
        _require_dask()
        A, B = _arrays((na, 50, 60), (300, 50, 60))
        self.bytes = na * 300 * 50 * 60 * 4
        if method == "in_memory":
            if na > 40:
                raise NotImplementedError("the in-memory result is timed at na=40 (144 MB)")
            self.run = lambda: fc.batch_outer_hadamard(A, B).sum()
        else:
            lazy = fc.batch_outer_hadamard(da.from_array(A, chunks=(1, 50, 60)), da.from_array(B, chunks=-1))

            def run():
                with dask.config.set(scheduler="threads", num_workers=2):
                    return lazy.sum().compute()
            self.run = run
        self.run()

    def time_sum(self, na, method):
        self.run()

    def track_result_gbps(self, na, method):
        """GB of the product's result per second (median)."""
        return self.bytes / median_time(self.run) / 1e9

    track_result_gbps.unit = "GB/s"

    def peakmem_sum(self, na, method):
        self.run()
