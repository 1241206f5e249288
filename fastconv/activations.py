"""Softmax along an axis, numerically stable, and its gradient in closed form
``s * (g - sum(s * g))``, which never builds the Jacobian.

The kernels are fused loops over rows (axis last) or over blocks of the
contiguous trailing axes (axis elsewhere); the scalar building blocks in
``fastconv._intrinsics`` keep them vectorized without fast-math.
"""
import math

import numpy as np
from numba import prange

from . import reference
from ._args import accepts_dask, allocate, as_array, contiguous, integer, uses_kernel
from ._config import kernel
from ._intrinsics import add_reassoc, exp_nonpositive, max_ignoring_nan

__all__ = ["softmax", "softmax_backward"]

#: Elements of the non-reduced trailing axes handled by one task of the strided
#: (``axis`` not last) softmax kernels (measured: 16-512 on (1, 1000, 4096), 512 best).
_INNER_BLOCK = 512
#: Below this many trailing elements the strided kernels vectorize poorly: the
#: reduced axis is moved last (a transposing copy) and the row kernels run instead
#: (measured on (4096 // inner, 1000, inner) float32: the copy wins up to inner=32,
#: the strided kernel from 64).
_TRANSPOSE_BELOW = 64


@kernel
def _softmax_rows(x, out):
    """Softmax of every row of the C-contiguous (rows, n) ``x``, n >= 1."""
    n = x.shape[1]
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for row in prange(x.shape[0]):
        xr, o = x[row], out[row]
        m = xr[0]
        for k in range(n):
            m = max_ignoring_nan(m, xr[k])
        total = zero
        for k in range(n):
            e = exp_nonpositive(xr[k] - m)
            o[k] = e
            total = add_reassoc(total, e)
        scale = one / total
        for k in range(n):
            o[k] *= scale


@kernel
def _softmax_backward_rows(s, g, out):
    """``s * (g - sum(s * g))`` along every row of the C-contiguous (rows, n) inputs."""
    n = s.shape[1]
    for row in prange(s.shape[0]):
        sr, gr, o = s[row], g[row], out[row]
        dot = s.dtype.type(0)
        for k in range(n):
            dot = add_reassoc(dot, sr[k] * gr[k])
        for k in range(n):
            o[k] = sr[k] * (gr[k] - dot)


@kernel
def _softmax_strided(x, out, block):
    """Softmax along axis 1 of the C-contiguous (outer, n, inner) ``x``, n >= 1:
    the loops run along the contiguous inner axis, ``block`` elements per task."""
    outer, n, inner = x.shape
    blocks = (inner + block - 1) // block
    one = x.dtype.type(1)
    for task in prange(outer * blocks):
        p = task // blocks
        start = (task % blocks) * block
        stop = min(start + block, inner)
        xp, op = x[p], out[p]
        m = xp[0, start:stop].copy()
        for j in range(1, n):
            xj = xp[j]
            for i in range(start, stop):
                m[i - start] = max_ignoring_nan(m[i - start], xj[i])
        total = np.zeros_like(m)
        for j in range(n):
            xj, oj = xp[j], op[j]
            for i in range(start, stop):
                e = exp_nonpositive(xj[i] - m[i - start])
                oj[i] = e
                total[i - start] += e
        for i in range(stop - start):
            total[i] = one / total[i]
        for j in range(n):
            oj = op[j]
            for i in range(start, stop):
                oj[i] *= total[i - start]


@kernel
def _softmax_backward_strided(s, g, out, block):
    """``s * (g - sum(s * g))`` along axis 1 of C-contiguous (outer, n, inner) inputs."""
    outer, n, inner = s.shape
    blocks = (inner + block - 1) // block
    for task in prange(outer * blocks):
        p = task // blocks
        start = (task % blocks) * block
        stop = min(start + block, inner)
        sp, gp, op = s[p], g[p], out[p]
        dot = np.zeros(stop - start, s.dtype)
        for j in range(n):
            sj, gj = sp[j], gp[j]
            for i in range(start, stop):
                dot[i - start] += sj[i] * gj[i]
        for j in range(n):
            sj, gj, oj = sp[j], gp[j], op[j]
            for i in range(start, stop):
                oj[i] = sj[i] * (gj[i] - dot[i - start])


def _axis(func, axis, ndim):
    axis = integer(func, "axis", axis)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(
            f"{func}: axis {axis} is out of bounds for an input of {ndim} dimension(s)"
        )
    return axis % ndim


def _float_input(func, name, value):
    array = as_array(func, name, value)
    if array.ndim == 0:
        raise ValueError(f"{func}: {name} must have at least 1 dimension, got a scalar")
    return array


def _split(shape, axis):
    """(outer, n, inner) sizes around ``axis``."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _along_axis(rows_kernel, strided_kernel, inputs, axis, result):
    """Run a softmax kernel along ``axis`` of the C-contiguous ``inputs`` into ``result``.

    The row kernels want ``axis`` last; a short trailing extent (< _TRANSPOSE_BELOW)
    is moved there by a transposing copy, a long one runs the strided kernels.
    """
    outer, n, inner = _split(result.shape, axis)
    if result.size == 0:
        return result
    if inner == 1:
        rows_kernel(*(a.reshape(outer, n) for a in inputs), result.reshape(outer, n), work=result.size)
    elif inner < _TRANSPOSE_BELOW:
        moved = [np.ascontiguousarray(np.moveaxis(a, axis, -1)) for a in inputs]
        moved_result = np.empty(moved[0].shape, result.dtype)
        rows_kernel(*(a.reshape(-1, n) for a in moved), moved_result.reshape(-1, n), work=result.size)
        np.copyto(result, np.moveaxis(moved_result, -1, axis))
    else:
        strided_kernel(*(a.reshape(outer, n, inner) for a in inputs), result.reshape(outer, n, inner),
                       _INNER_BLOCK, work=result.size)
    return result


@accepts_dask
def softmax(x, axis=-1):
    """Numerically stable softmax ``exp(x - max) / sum(exp(x - max))`` along ``axis``.

    Parameters
    ----------
    x : array_like, at least 1-D
    axis : int, default -1

    Returns
    -------
    ndarray, shape of ``x``
        In ``x``'s dtype for float32/float64; other numeric dtypes follow
        :func:`fastconv.reference.softmax`. Large logits do not overflow; a NaN
        makes its whole slice along ``axis`` NaN, as in the reference.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.softmax(np.array([[0.0, np.log(3.0)], [1e4, 1e4]])).round(6)
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    func = "softmax"
    x = _float_input(func, "x", x)
    axis = _axis(func, axis, x.ndim)
    if not uses_kernel(x.dtype):
        return reference.softmax(x, axis=axis)
    result = allocate(func, x.shape, x.dtype)
    return _along_axis(_softmax_rows, _softmax_strided, [contiguous(x, x.dtype)], axis, result)


@accepts_dask
def softmax_backward(s, grad_s, axis=-1):
    """Gradient of :func:`softmax` in closed form: ``s * (grad_s - sum(s * grad_s, axis))``.

    The Jacobian ``diag(s) - s sᵀ`` that the reference builds is never formed.

    Parameters
    ----------
    s : array_like
        The softmax output (forward result) along ``axis``.
    grad_s : array_like, shape of ``s``
        dL/ds.
    axis : int, default -1

    Returns
    -------
    ndarray, shape of ``s``
        dL/dx in ``np.result_type(s, grad_s)``; float32/float64 run the fused kernel,
        other numeric dtypes follow :func:`fastconv.reference.softmax_backward`.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> s = np.array([[0.25, 0.75]])
    >>> fc.softmax_backward(s, np.array([[1.0, 0.0]]))
    array([[ 0.1875, -0.1875]])
    """
    func = "softmax_backward"
    s = _float_input(func, "s", s)
    grad_s = as_array(func, "grad_s", grad_s)
    if s.shape != grad_s.shape:
        raise ValueError(f"{func}: s and grad_s must have the same shape, got s {s.shape} "
                         f"and grad_s {grad_s.shape}")
    axis = _axis(func, axis, s.ndim)
    dtype = np.result_type(s, grad_s)
    if not uses_kernel(dtype):
        return reference.softmax_backward(s, grad_s, axis=axis)
    result = allocate(func, s.shape, dtype)
    inputs = [contiguous(s, dtype), contiguous(grad_s, dtype)]
    return _along_axis(_softmax_backward_rows, _softmax_backward_strided, inputs, axis, result)
