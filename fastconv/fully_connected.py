"""Fully connected layer ``x @ W + b`` and its gradients.

The products are numpy's GEMMs: OpenBLAS owns the threads there, and no BLAS call
runs inside a numba ``prange``.
"""
import numpy as np

from . import reference
from ._args import accepts_dask, allocate, as_array, check_ndim, uses_kernel

__all__ = ["linear", "linear_backward"]


def _linear_operands(func, x, W, other, other_name):
    """Check x (N, I) or (I,), W (I, O) and ``other`` (N, O)/(O,) or a bias (O,)."""
    check_ndim(func, "W", W, 2, "(I, O)")
    if x.ndim not in (1, 2):
        raise ValueError(f"{func}: x must be 2-D (N, I) or 1-D (I,), got shape {x.shape}")
    if x.shape[-1] != W.shape[0]:
        raise ValueError(
            f"{func}: x has {x.shape[-1]} input features but W (I, O) has I={W.shape[0]} "
            f"(x {x.shape}, W {W.shape})"
        )
    if other is None:
        return
    if other_name == "b":
        expected = (W.shape[1],)
        layout = "(O,)"
    else:
        expected = (*x.shape[:-1], W.shape[1])
        layout = "(N, O)" if x.ndim == 2 else "(O,)"
    if other.shape != expected:
        raise ValueError(
            f"{func}: {other_name} must have shape {layout} = {expected}, got {other.shape} "
            f"(x {x.shape}, W {W.shape})"
        )


@accepts_dask
def linear(x, W, b=None):
    """Fully connected layer ``x @ W + b`` with the weight stored as (I, O).

    Parameters
    ----------
    x : array_like, shape (N, I) or (I,)
    W : array_like, shape (I, O)
    b : array_like, shape (O,), optional

    Returns
    -------
    ndarray, shape (N, O) or (O,)
        ``einsum('ni,io->no', x, W) + b`` in ``np.result_type(x, W, b)``. float32 and
        float64 use BLAS; other numeric dtypes follow :func:`fastconv.reference.linear`.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[1.0, 2.0]]); W = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    >>> fc.linear(x, W, np.array([0.5, 0.5, 0.5]))
    array([[1.5, 2.5, 3.5]])
    """
    func = "linear"
    x, W = as_array(func, "x", x), as_array(func, "W", W)
    b = None if b is None else as_array(func, "b", b)
    _linear_operands(func, x, W, b, "b")
    dtype = np.result_type(x, W, *(() if b is None else (b,)))
    if not uses_kernel(dtype):
        return reference.linear(x, W, b)
    result = allocate(func, (*x.shape[:-1], W.shape[1]), dtype)
    np.matmul(x.astype(dtype, copy=False), W.astype(dtype, copy=False), out=result)
    if b is not None:
        np.add(result, b.astype(dtype, copy=False), out=result)
    return result


@accepts_dask
def linear_backward(x, W, grad_out):
    """Gradients of :func:`linear` with respect to x, W and b.

    Parameters
    ----------
    x : array_like, shape (N, I) or (I,)
        The forward input.
    W : array_like, shape (I, O)
    grad_out : array_like, shape (N, O) or (O,)
        dL/d(output), with as many dimensions as ``x``.

    Returns
    -------
    dx : ndarray, shape like ``x``
        ``grad_out @ W.T`` in ``np.result_type(grad_out, W)``.
    dW : ndarray, shape (I, O)
        ``einsum('ni,no->io', x, grad_out)`` in ``np.result_type(x, grad_out)``.
    db : ndarray, shape (O,)
        ``grad_out.sum(axis=0)`` (``grad_out`` itself when 1-D), in ``grad_out``'s dtype.

    float32 and float64 use BLAS for dx and dW; other numeric dtypes follow
    :func:`fastconv.reference.linear_backward`.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.array([[1.0, 2.0]]); W = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    >>> dx, dW, db = fc.linear_backward(x, W, np.array([[1.0, 0.0, 2.0]]))
    >>> dx
    array([[3., 2.]])
    >>> dW
    array([[1., 0., 2.],
           [2., 0., 4.]])
    >>> db
    array([1., 0., 2.])
    """
    func = "linear_backward"
    x, W = as_array(func, "x", x), as_array(func, "W", W)
    grad_out = as_array(func, "grad_out", grad_out)
    _linear_operands(func, x, W, grad_out, "grad_out")
    dx_dtype, dW_dtype = np.result_type(grad_out, W), np.result_type(x, grad_out)
    if not all(uses_kernel(t) for t in (dx_dtype, dW_dtype, grad_out.dtype)):
        return reference.linear_backward(x, W, grad_out)
    g = grad_out if grad_out.ndim == 2 else grad_out[None]
    x2 = x if x.ndim == 2 else x[None]
    dx = allocate(func, x2.shape, dx_dtype)
    np.matmul(g.astype(dx_dtype, copy=False), W.astype(dx_dtype, copy=False).T, out=dx)
    dW = allocate(func, W.shape, dW_dtype)
    np.matmul(x2.astype(dW_dtype, copy=False).T, g.astype(dW_dtype, copy=False), out=dW)
    db = np.sum(g, axis=0)
    return (dx if x.ndim == 2 else dx[0]), dW, db
