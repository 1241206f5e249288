"""The NumPy ``einsum`` versions of every fastconv function: same names, same
signatures, written to be obviously right rather than fast.

Nothing here imports from the fast side, so the two cannot share a bug. The
references trust their arguments (the fast functions validate them).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "batch_outer_hadamard", "im2col", "col2im", "conv2d", "conv2d_grad_input",
    "conv2d_grad_weight", "conv2d_grad_bias", "linear", "linear_backward",
    "softmax", "softmax_backward", "einsum",
]

#: ``np.einsum`` itself, bound at import: the reference of :func:`fastconv.einsum`.
einsum = np.einsum


def _finish(result, out):
    if out is None:
        return result
    out[...] = result
    return out


def batch_outer_hadamard(A, B, *, out=None):
    """``out[i*nb + j] = A[i] * B[j]`` as the einsum ``'ik...,kj...->ij...'``."""
    A, B = np.asarray(A), np.asarray(B)
    result = np.einsum("ik...,kj...->ij...", A[:, None], B[None])
    return _finish(result.reshape(A.shape[0] * B.shape[0], *A.shape[1:]), out)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _pads(padding, kernel_size, dilation):
    """((top, bottom), (left, right)); 'same' puts the odd pixel at the end, as PyTorch."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(_pair(kernel_size), _pair(dilation))]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in _pair(padding))


def _windows(x, kernel_size, stride, padding, dilation):
    """(N, C, OH, OW, KH, KW): the padded input under every kernel position."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
    padded = np.pad(x, ((0, 0), (0, 0)) + _pads(padding, kernel_size, dilation))
    spans = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    return sliding_window_view(padded, spans, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]


def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    """Columns ``(C*KH*KW, N*OH*OW)``: row ``c*KH*KW + kh*KW + kw``, column ``n*OH*OW + oh*OW + ow``."""
    windows = _windows(np.asarray(x), kernel_size, stride, padding, dilation)
    n, c, oh, ow, kh, kw = windows.shape
    result = windows.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)
    return _finish(result, out)


def col2im(cols, input_shape, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    """Adjoint of :func:`im2col`: add every column entry back where it was read from."""
    cols = np.asarray(cols)
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = _pads(padding, kernel_size, dilation)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    patches = cols.reshape(c, kh, kw, n, oh, ow)
    padded = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            padded[:, :, rows, columns] += patches[:, i, j].transpose(1, 0, 2, 3)
    return _finish(padded[:, :, pt:pt + h, pl:pl + w], out)


def _group_slices(total, groups):
    size = total // groups
    return [slice(g * size, (g + 1) * size) for g in range(groups)]


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, out=None):
    """``einsum('nchwkl,ockl->nohw', windows, weight)`` per group, plus bias."""
    weight = np.asarray(weight)
    windows = _windows(np.asarray(x), weight.shape[2:], stride, padding, dilation)
    result = np.concatenate([
        np.einsum("nchwkl,ockl->nohw", windows[:, cs], weight[os_])
        for cs, os_ in zip(_group_slices(windows.shape[1], groups), _group_slices(weight.shape[0], groups))
    ], axis=1)
    if bias is not None:
        result = result + np.asarray(bias)[None, :, None, None]
    return _finish(result, out)


def conv2d_grad_input(grad_out, weight, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """dL/dx: ``einsum('nohw,ockl->nchwkl')`` per group, scattered back like :func:`col2im`."""
    grad_out, weight = np.asarray(grad_out), np.asarray(weight)
    grad_windows = np.concatenate([
        np.einsum("nohw,ockl->nchwkl", grad_out[:, os_], weight[os_])
        for os_ in _group_slices(weight.shape[0], groups)
    ], axis=1)
    n, c, oh, ow, kh, kw = grad_windows.shape
    cols = grad_windows.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)
    return col2im(cols, input_shape, (kh, kw), stride=stride, padding=padding, dilation=dilation)


def conv2d_grad_weight(x, grad_out, weight_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """dL/dW: ``einsum('nchwkl,nohw->ockl', windows, grad_out)`` per group."""
    grad_out = np.asarray(grad_out)
    windows = _windows(np.asarray(x), weight_shape[2:], stride, padding, dilation)
    return np.concatenate([
        np.einsum("nchwkl,nohw->ockl", windows[:, cs], grad_out[:, os_])
        for cs, os_ in zip(_group_slices(windows.shape[1], groups), _group_slices(weight_shape[0], groups))
    ], axis=0)


def conv2d_grad_bias(grad_out):
    """dL/db: ``einsum('nohw->o', grad_out)``."""
    return np.einsum("nohw->o", np.asarray(grad_out))


def _rows(a):
    """``a`` as a 2-D stack of its last axis (also when some size is 0)."""
    return a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1])


def linear(x, W, b=None):
    """``einsum('...i,io->...o', x, W) + b`` with W of shape (I, O); x is (N, I) or (I,)."""
    result = np.einsum("...i,io->...o", np.asarray(x), np.asarray(W))
    return result if b is None else result + np.asarray(b)


def linear_backward(x, W, grad_out):
    """``(dx, dW, db)`` with ``dW = einsum('ni,no->io', x, grad_out)``."""
    x, W, grad_out = np.asarray(x), np.asarray(W), np.asarray(grad_out)
    dx = np.einsum("...o,io->...i", grad_out, W)
    dW = np.einsum("ni,no->io", _rows(x), _rows(grad_out))
    return dx, dW, np.einsum("no->o", _rows(grad_out))


def softmax(x, axis=-1):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``."""
    x = np.asarray(x)
    if x.shape[axis] == 0:
        return np.exp(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(s, grad_s, axis=-1):
    """dL/dx through the full Jacobian ``diag(s) - s sᵀ``, built with einsum."""
    s, grad_s = np.moveaxis(np.asarray(s), axis, -1), np.moveaxis(np.asarray(grad_s), axis, -1)
    S, G = _rows(s), _rows(grad_s)
    diag_S = np.einsum("no,oi->nio", S, np.eye(S.shape[1], dtype=S.dtype))
    SS_T = np.einsum("no,ni->nio", S, S)
    dX = np.einsum("nio,no->ni", diag_S - SS_T, G)
    return np.moveaxis(dX.reshape(s.shape), -1, axis)
