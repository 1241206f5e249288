"""A reduction over a batch outer-Hadamard product larger than RAM, with dask.

    python examples/outer_hadamard_out_of_core.py                  # A (4000,50,60) x B (3000,50,60): 144 GB
    python examples/outer_hadamard_out_of_core.py --na 400         # a tenth of it

``fc.batch_outer_hadamard`` of two dask arrays is lazy: each task multiplies one
chunk of A's rows by one chunk of B's rows into one block of the result's rows,
and ``.sum()`` reduces every block as soon as it is made, so only a few blocks are
ever in memory. The script checks the sum against ``sum(A, 0) * sum(B, 0)`` (the
same number computed another way) and compares the rate at which the result is
produced with the in-memory kernel's write bandwidth, measured in a child
process so that this process's peak RSS is the dask computation's alone.
"""
import argparse
import multiprocessing
import resource
import time

import numpy as np


def in_memory_bandwidth(shape, rows, repeats):
    """GB/s written by the in-memory kernel: A[:rows] x B into a preallocated result."""
    import fastconv as fc

    rng = np.random.default_rng(0)
    A = rng.random((rows, *shape[1:]), dtype=np.float32)
    B = rng.random(shape, dtype=np.float32)
    out = np.empty((rows * shape[0], *shape[1:]), np.float32)
    fc.batch_outer_hadamard(A, B, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fc.batch_outer_hadamard(A, B, out=out)
        times.append(time.perf_counter() - start)
    return out.nbytes / np.median(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--na", type=int, default=4000)
    parser.add_argument("--nb", type=int, default=3000)
    parser.add_argument("--a-chunk", type=int, default=1, help="rows of A per chunk")
    parser.add_argument("--b-chunk", type=int, default=1500, help="rows of B per chunk")
    parser.add_argument("--scheduler", choices=["threads", "sync"], default="threads",
                        help="dask's threaded scheduler, or one task at a time on all numba threads")
    parser.add_argument("--workers", type=int, default=2, help="threads of dask's threaded scheduler")
    parser.add_argument("--reference-rows", type=int, default=24,
                        help="rows of A in the in-memory bandwidth measurement (24 x 3000 rows: 0.9 GB)")
    args = parser.parse_args()

    import dask
    import dask.array as da

    import fastconv as fc

    tail = (50, 60)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        reference = pool.apply(in_memory_bandwidth, ((args.nb, *tail), args.reference_rows, 5))

    A = da.random.default_rng(1).random((args.na, *tail), dtype=np.float32, chunks=(args.a_chunk, *tail))
    B = da.random.default_rng(2).random((args.nb, *tail), dtype=np.float32, chunks=(args.b_chunk, *tail))
    C = fc.batch_outer_hadamard(A, B)  # lazy: (na*nb, 50, 60), nothing computed yet
    logical = C.nbytes / 1e9
    print(f"C: shape {C.shape}, {logical:.1f} GB logical, {C.npartitions} blocks of "
          f"{C.nbytes / C.npartitions / 1e6:.1f} MB")

    start = time.perf_counter()
    with dask.config.set(scheduler=args.scheduler, num_workers=args.workers):
        total, a_sum, b_sum = dask.compute(C.sum(), A.sum(axis=0, dtype=np.float64),
                                           B.sum(axis=0, dtype=np.float64))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)
    expected = float((a_sum * b_sum).sum())
    # float32 partial sums, pairwise within a block, then a tree over blocks
    assert abs(total - expected) <= 1e-5 * abs(expected), (total, expected)

    rate = logical / seconds
    print(f"sum = {total:.6e} (sum(A, 0) * sum(B, 0) in float64 gives {expected:.6e}, "
          f"relative difference {abs(total - expected) / abs(expected):.1e})")
    print(f"dask ({args.scheduler}): {seconds:.1f} s, {rate:.2f} GB/s of result, peak RSS {peak:.2f} GB")
    print(f"in-memory kernel: {reference:.2f} GB/s written; dask / in-memory = {rate / reference:.2f}")


if __name__ == "__main__":
    main()
