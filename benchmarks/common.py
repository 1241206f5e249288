"""Shared pieces of the asv suite: peers that may be missing, thread settings."""
import os
import timeit

import numpy as np

#: Wall-clock timer: the kernels are parallel, process time would count both cores.
TIMER = timeit.default_timer
#: Threads for fastconv and for the torch peer (the machine has 2 cores).
THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))


def require_torch():
    """The torch module set to THREADS threads, or NotImplementedError (asv skips)."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    torch.set_num_threads(THREADS)
    return torch


def best_time(run, repeats=5):
    """Best wall time of ``repeats`` calls of ``run`` (for the ``track_`` rates)."""
    best = float("inf")
    for _ in range(repeats):
        start = TIMER()
        run()
        best = min(best, TIMER() - start)
    return best


def rng_arrays(*shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def shape_id(shape):
    return "x".join(str(n) for n in shape)
