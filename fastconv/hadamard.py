"""Batch outer-Hadamard product: ``out[i*nb + j] = A[i] * B[j]``."""
import math

import numpy as np
from numba import prange

from . import reference
from ._args import accepts_dask, as_array, contiguous, output, uses_kernel
from ._config import kernel

_FUNC = "batch_outer_hadamard"
#: Elements per task when a row is split so that few rows still fill the threads.
_BLOCK = 1 << 14


@kernel
def _outer_hadamard(A, B, out, block):
    nb, m = B.shape[0], A.shape[1]
    blocks_per_row = (m + block - 1) // block
    for task in prange(out.shape[0] * blocks_per_row):
        row = task // blocks_per_row
        start = (task % blocks_per_row) * block
        stop = min(start + block, m)
        # Slices, not offsets: indices from 0 let LLVM drop the negative-index
        # wraparound and vectorize the loop (4x faster).
        a, b, o = A[row // nb, start:stop], B[row % nb, start:stop], out[row, start:stop]
        for k in range(o.shape[0]):
            o[k] = a[k] * b[k]


@accepts_dask
def batch_outer_hadamard(A, B, *, out=None):
    """Batch outer-Hadamard product of two stacks of equally shaped arrays.

    Parameters
    ----------
    A : array_like, shape (na, *S)
    B : array_like, shape (nb, *S)
    out : ndarray, shape (na*nb, *S), optional
        C-contiguous, of the result's dtype, sharing no memory with A or B.

    Returns
    -------
    ndarray, shape (na*nb, *S)
        ``result[i*nb + j] = A[i] * B[j]``, in ``np.result_type(A, B)``; equal to
        ``np.einsum('ik...,kj...->ij...', A[:, None], B[None]).reshape(na*nb, *S)``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> A = np.arange(4.0).reshape(2, 2); B = np.array([[1.0, 10.0]])
    >>> fc.batch_outer_hadamard(A, B)
    array([[ 0., 10.],
           [ 2., 30.]])
    """
    A, B = as_array(_FUNC, "A", A), as_array(_FUNC, "B", B)
    if A.ndim < 1 or A.shape[1:] != B.shape[1:] or B.ndim < 1:
        raise ValueError(
            f"{_FUNC}: A (na, *S) and B (nb, *S) need the same trailing shape S, "
            f"got A {A.shape} and B {B.shape}"
        )
    dtype = np.result_type(A, B)
    na, nb, tail = A.shape[0], B.shape[0], A.shape[1:]
    result = output(_FUNC, out, (na * nb, *tail), dtype, {"A": A, "B": B})
    if not uses_kernel(dtype):
        return reference.batch_outer_hadamard(A, B, out=result)
    if result.size:
        m = math.prod(tail)
        rows_fill_threads = na * nb >= 64
        _outer_hadamard(
            contiguous(A, dtype).reshape(na, m), contiguous(B, dtype).reshape(nb, m),
            result.reshape(na * nb, m), m if rows_fill_threads else _BLOCK, work=result.size,
        )
    return result
