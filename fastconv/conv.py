"""conv2d forward (cross-correlation, PyTorch semantics).

Kernel strategy by shape class (float32/float64):

* tiny problems and depthwise / one-channel-per-group convolutions: a direct
  numba kernel (one task per output plane, rows accumulated in cache);
* 1x1 stride-1 unpadded, groups=1: one batched GEMM ``W (O, C) @ x[n] (C, H*W)``
  written straight into the NCHW output;
* a window that covers the whole unpadded input (output 1x1), groups=1:
  ``x.reshape(N, -1) @ W.reshape(O, -1).T`` (im2col is a reshape there);
* everything else: im2col of a few images at a time into a buffer that stays in
  cache (per-image stacked layout), then per group one batched GEMM
  ``W_g (O/g, C/g*KH*KW) @ cols[n]`` written straight into NCHW; with groups=1
  the bias rides in the GEMM as an extra row of ones.
"""
import numpy as np
from numba import prange

from . import reference
from ._args import (
    as_array, check_bias, check_ndim, contiguous, conv_groups, geometry, output, uses_kernel,
)
from ._config import kernel
from .im2col import im2col_stacked_into

__all__ = ["conv2d"]

#: Multiply-adds below which the direct kernel beats im2col + GEMM.
_DIRECT_MACS = 1 << 18
#: Target size of one im2col buffer (bytes): a few images' columns, cache resident.
_CHUNK_BYTES = 8 << 20


@kernel
def _direct(x, w, b, out, groups, sh, sw, dh, dw, pt, pl):
    """out[n, o] = b[o] + sum over the group's channels and the window (one task per plane)."""
    n_images, channels, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    og = n_out // groups
    for task in prange(n_images * n_out):
        n = task // n_out
        o = task - n * n_out
        c_first = (o // og) * cg
        plane = out[n, o]
        bias = b[o]
        for y in range(oh):
            orow = plane[y]
            for q in range(ow):
                orow[q] = bias
            for ci in range(cg):
                xs = x[n, c_first + ci]
                wo = w[o, ci]
                for i in range(kh):
                    ih = y * sh - pt + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    src = xs[ih]
                    for j in range(kw):
                        wv = wo[i, j]
                        off = j * dw - pl
                        q0 = 0
                        if off < 0:
                            q0 = min((-off + sw - 1) // sw, ow)
                        q1 = ow
                        if off + (ow - 1) * sw >= wd:
                            q1 = max((wd - off + sw - 1) // sw, q0)
                        if sw == 1:
                            for q in range(q0, q1):
                                orow[q] += wv * src[q + off]
                        else:
                            for q in range(q0, q1):
                                orow[q] += wv * src[q * sw + off]


@kernel
def _add_bias(out, b):
    """out[n, o, :] += b[o] for out (N, O, P)."""
    n_images, n_out, p = out.shape
    for task in prange(n_images * n_out):
        n = task // n_out
        o = task - n * n_out
        row = out[n, o]
        bias = b[o]
        for k in range(p):
            row[k] += bias


def _gemm_path(x, w, b, result, geom, groups, has_bias):
    """im2col a chunk of images into a cached buffer, then per-group batched GEMMs."""
    n, c = x.shape[:2]
    o = w.shape[0]
    kk = geom.kh * geom.kw
    rows, ohw = c * kk, geom.oh * geom.ow
    fold_bias = has_bias and groups == 1
    stride = rows + fold_bias
    chunk = max(1, min(n, _CHUNK_BYTES // (stride * ohw * x.itemsize)))
    cols = np.empty((chunk, stride, ohw), x.dtype)
    w2 = w.reshape(groups, o // groups, rows // groups)
    if fold_bias:
        cols[:, rows] = 1
        w2 = np.concatenate([w2[0], b[:, None]], axis=1)[None]
    out3 = result.reshape(n, o, ohw)
    og, rg = o // groups, rows // groups
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        buf = cols[:stop - start]
        im2col_stacked_into(x[start:stop], geom, buf)
        if groups == 1:
            np.matmul(w2[0], buf, out=out3[start:stop])
        else:
            for g in range(groups):
                np.matmul(w2[g], buf[:, g * rg:(g + 1) * rg], out=out3[start:stop, g * og:(g + 1) * og])
    if has_bias and not fold_bias:
        _add_bias(out3, b, work=out3.size)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, out=None):
    """2-D cross-correlation of an NCHW batch with OIHW filters, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    weight : array_like, shape (O, C // groups, KH, KW)
    bias : array_like, shape (O,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), 'valid' or 'same'
        Zero padding; 'same' needs stride 1 and puts an odd extra pixel at the
        bottom/right, as PyTorch does.
    groups : int
        ``C`` and ``O`` are split into ``groups`` independent convolutions
        (``groups == C`` is a depthwise convolution).
    out : ndarray, shape (N, O, OH, OW), optional
        C-contiguous, of the result's dtype, sharing no memory with the inputs.

    Returns
    -------
    ndarray, shape (N, O, OH, OW)
        ``OH = (H + pt + pb - dh*(KH-1) - 1) // sh + 1`` (likewise OW), in
        ``np.result_type(x, weight, bias)``; equal to
        ``einsum('nchwkl,ockl->nohw', windows, weight) + bias`` per group.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2))
    >>> fc.conv2d(x, w, np.array([0.5]), stride=2)
    array([[[[10.5, 18.5],
             [42.5, 50.5]]]])
    """
    func = "conv2d"
    x = as_array(func, "x", x)
    weight = as_array(func, "weight", weight)
    check_ndim(func, "x", x, 4, "(N, C, H, W)")
    check_ndim(func, "weight", weight, 4, "(O, C // groups, KH, KW)")
    groups = conv_groups(func, x.shape, weight.shape, groups)
    inputs = {"x": x, "weight": weight}
    if bias is not None:
        bias = as_array(func, "bias", bias)
        check_bias(func, bias, weight.shape[0])
        inputs["bias"] = bias
    geom = geometry(func, x.shape[2:], weight.shape[2:], stride, padding, dilation)
    dtype = np.result_type(*inputs.values())
    n, c = x.shape[:2]
    o, cg, kh, kw = weight.shape
    result = output(func, out, (n, o, geom.oh, geom.ow), dtype, inputs)
    if not uses_kernel(dtype):
        return reference.conv2d(x, weight, bias, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, out=result)
    if not result.size:
        return result
    has_bias = bias is not None
    b = contiguous(bias, dtype) if has_bias else np.zeros(o, dtype)
    if c == 0:
        result[...] = b[:, None, None]
        return result
    x = contiguous(x, dtype)
    w = contiguous(weight, dtype)
    g = geom
    macs = result.size * cg * kh * kw
    unpadded = g.pt == g.pb == g.pl == g.pr == 0
    if cg == 1 or macs < _DIRECT_MACS:
        _direct(x, w, b, result, groups, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, work=macs)
    elif groups == 1 and kh == kw == 1 and g.sh == g.sw == 1 and unpadded:
        out3 = result.reshape(n, o, -1)
        np.matmul(w.reshape(o, c), x.reshape(n, c, -1), out=out3)
        if has_bias:
            _add_bias(out3, b, work=result.size)
    elif groups == 1 and unpadded and (kh, kw) == x.shape[2:] and g.dh == g.dw == 1:
        out2 = result.reshape(n, o)
        np.matmul(x.reshape(n, -1), w.reshape(o, -1).T, out=out2)
        if has_bias:
            out2 += b
    else:
        _gemm_path(x, w, b, result, geom, groups, has_bias)
    return result
