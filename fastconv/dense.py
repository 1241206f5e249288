"""Dense layers: ``linear`` (``x @ W + b``) with its gradients, ``softmax`` with its
gradient in closed form.

The GEMMs of ``linear`` and ``linear_backward`` are numpy's (OpenBLAS owns the
threads there; no BLAS call runs inside a numba ``prange``). The numba kernels
are the parts BLAS does not do: the fused, numerically stable softmax and its
closed-form backward ``s * (g - sum(s * g))``, which never builds the Jacobian.

Three small LLVM intrinsics keep those kernels vectorized without fast-math
(which would assume no NaN and break NaN propagation):

* ``_max_ignoring_nan`` is ``llvm.maxnum``, a max reduction LLVM vectorizes.
  It skips NaN, which is harmless here: a NaN in a row reaches the row's sum
  through ``exp(nan - max)`` and makes the whole row NaN, as in the reference.
* ``_add_reassoc`` is an ``fadd`` carrying only the ``reassoc`` flag, so LLVM may
  split a sum into vector lanes (a different summation order, nothing else).
* ``_exp_nonpositive`` is a vectorizable ``exp`` for arguments ``<= 0`` (plus NaN
  and -inf), Cephes' range reduction and polynomial with ``2**n`` built from the
  exponent bits; numba's ``math.exp`` is a scalar libm call here (no SVML).
"""
import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from . import reference
from ._args import as_array, check_ndim, contiguous, integer, uses_kernel
from ._config import kernel

__all__ = ["linear", "linear_backward", "softmax", "softmax_backward"]

#: Elements of the non-reduced trailing axes handled by one task of the strided
#: (``axis`` not last) softmax kernels (measured: 16-512 on (1, 1000, 4096), 512 best).
_INNER_BLOCK = 512
#: Below this many trailing elements the strided kernels vectorize poorly: the
#: reduced axis is moved last (a transposing copy) and the row kernels run instead
#: (measured on (4096 // inner, 1000, inner) float32: the copy wins up to inner=32,
#: the strided kernel from 64).
_TRANSPOSE_BELOW = 64

_FLOATS = (types.float32, types.float64)


# -- LLVM building blocks ---------------------------------------------------------

@intrinsic
def _add_reassoc(typingctx, a, b):
    """``a + b`` that LLVM may reassociate (vectorizes a sum; keeps NaN and inf)."""
    if a != b or a not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        instruction = builder.fadd(args[0], args[1])
        instruction.flags.append("reassoc")
        return instruction

    return a(a, b), codegen


@intrinsic
def _max_ignoring_nan(typingctx, a, b):
    """``llvm.maxnum``: the larger of ``a`` and ``b``; a NaN operand is ignored."""
    if a != b or a not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        function = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(function, args)

    return a(a, b), codegen


#: Types of the same width: an int's bits read as a float, and back.
_SAME_BITS = {types.int32: types.float32, types.int64: types.float64,
              types.float32: types.int32, types.float64: types.int64}


@intrinsic
def _reinterpret(typingctx, value):
    """The bits of an int32/int64 as float32/float64, and of a float as an int."""
    result = _SAME_BITS.get(value)
    if result is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(value), codegen


def _exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0``, NaN and -inf (compiled code only)."""
    raise NotImplementedError("_exp_nonpositive is only callable from compiled code")


# exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, Cephes).
# Adding 1.5 * 2**mantissa_bits + bias rounds x / ln 2 to an integer held in the low
# mantissa bits, already biased: shifted into the exponent field it is 2**n. Below
# ``low`` the result is 0 (the true value is below the smallest normal number);
# ``clamped`` maps NaN and -inf to ``low`` so that the integer part stays defined
# while ``r`` (from ``x`` itself) carries the NaN through.

@overload(_exp_nonpositive, jit_options={"cache": True})
def _exp_nonpositive_impl(x):
    if x == types.float32:
        def exp32(x):  # Cephes expf polynomial: ~1 ulp on [-87, 0]
            low, shift = np.float32(-87.0), np.float32(12582912.0 + 127.0)
            clamped = x if x > low else low
            t = clamped * np.float32(1.44269504088896341) + shift
            n = t - shift
            r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            y = p * (r * r) + r + np.float32(1.0)
            scale = _reinterpret(np.int32(_reinterpret(t) << np.int32(23)))
            return np.float32(0.0) if x < low else y * scale
        return exp32
    if x == types.float64:
        def exp64(x):  # Cephes exp (Pade form): ~1 ulp on [-708, 0]
            low, shift = -708.0, 6755399441055744.0 + 1023.0
            clamped = x if x > low else low
            t = clamped * 1.4426950408889634074 + shift
            n = t - shift
            r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
            rr = r * r
            p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1)
            q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.0
            y = 1.0 + 2.0 * (p / (q - p))
            scale = _reinterpret(_reinterpret(t) << 52)
            return 0.0 if x < low else y * scale
        return exp64
    return None


# -- kernels ------------------------------------------------------------------------

@kernel
def _softmax_rows(x, out):
    """Softmax of every row of the C-contiguous (rows, n) ``x``, n >= 1."""
    n = x.shape[1]
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for row in prange(x.shape[0]):
        xr, o = x[row], out[row]
        m = xr[0]
        for k in range(n):
            m = _max_ignoring_nan(m, xr[k])
        total = zero
        for k in range(n):
            e = _exp_nonpositive(xr[k] - m)
            o[k] = e
            total = _add_reassoc(total, e)
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
            dot = _add_reassoc(dot, sr[k] * gr[k])
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
                m[i - start] = _max_ignoring_nan(m[i - start], xj[i])
        total = np.zeros_like(m)
        for j in range(n):
            xj, oj = xp[j], op[j]
            for i in range(start, stop):
                e = _exp_nonpositive(xj[i] - m[i - start])
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


# -- linear ---------------------------------------------------------------------------

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
    result = np.empty((*x.shape[:-1], W.shape[1]), dtype)
    np.matmul(x.astype(dtype, copy=False), W.astype(dtype, copy=False), out=result)
    if b is not None:
        np.add(result, b.astype(dtype, copy=False), out=result)
    return result


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
    dx = np.empty(x2.shape, dx_dtype)
    np.matmul(g.astype(dx_dtype, copy=False), W.astype(dx_dtype, copy=False).T, out=dx)
    dW = np.empty(W.shape, dW_dtype)
    np.matmul(x2.astype(dW_dtype, copy=False).T, g.astype(dW_dtype, copy=False), out=dW)
    db = np.sum(g, axis=0)
    return (dx if x.ndim == 2 else dx[0]), dW, db


# -- softmax ----------------------------------------------------------------------------

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
    result = np.empty(x.shape, x.dtype)
    return _along_axis(_softmax_rows, _softmax_strided, [contiguous(x, x.dtype)], axis, result)


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
    result = np.empty(s.shape, dtype)
    inputs = [contiguous(s, dtype), contiguous(grad_s, dtype)]
    return _along_axis(_softmax_backward_rows, _softmax_backward_strided, inputs, axis, result)
