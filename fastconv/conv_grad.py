"""Gradients of conv2d: dL/dx, dL/dW and dL/db for every configuration conv2d accepts.

* grad_input is a transposed convolution. With stride 1 (and finite weights) it
  is a plain convolution of grad_out with the flipped, transposed weight, so it
  runs through conv2d's own kernels (Winograd for 3x3, depthwise, ...); an
  unpadded 1x1 is ``Wᵀ @ grad_out[n]`` per image, the GEMM transposing W.
  Otherwise, per chunk of images with their grad_out planes side by side (one
  wide GEMM, not a narrow one per image), ``Wᵀ · grad_out`` (one GEMM per group)
  gives the column gradients, which col2im scatters back into the chunk's images.
* grad_weight is a GEMM against the im2col columns: ``grad_out (O, n*OH*OW) ·
  cols (n*OH*OW, C*KH*KW)`` summed over chunks of images; for 3x3 and 5x5 stride-1
  layers with enough work, the adjoint of the Winograd forward
  (``fastconv._winograd.grad_weight``).
* Both GEMM forms run as one numba task per thread over chunks of its images,
  with single-threaded BLAS inside (per-thread dW partials, summed at the end),
  where a BLAS is callable from kernels and every thread has an image; else as
  NumPy matmuls between parallel im2col/col2im kernels. With 32 or more channels
  per group the tasks hold windows as rows with channels innermost instead of
  im2col columns (:func:`fastconv.columns.windows_serial`): built and summed back
  in contiguous runs through a channels-last copy of each image.
* Depthwise convolutions, where a GEMM has nothing to chew on, run direct loop
  kernels (one task per output plane, no shared writes), unless a NaN or Inf
  would meet the zero padding those kernels skip. Small ones (``_SMALL_MACS``)
  skip the task kernels: im2col or col2im and one NumPy matmul per chunk.
"""
import numpy as np
from numba import prange

from . import _blas, _winograd, _workspace, reference
from ._args import (
    Geometry,
    accepts_dask,
    as_array,
    check_ndim,
    contiguous,
    conv_groups,
    geometry,
    uses_kernel,
)
from ._args import input_shape as shape_argument
from ._blas import gemm, gemm_at
from ._config import kernel, serial_kernel, thread_count
from .columns import (
    add_windows_serial,
    chunk_views,
    col2im_into,
    col2im_serial,
    im2col_into,
    im2col_serial,
    window_stages,
    window_weight,
    windows_serial,
)
from .conv import convolve_into, image_blocks, pointwise, reads_subsample, route

__all__ = ["conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias"]

#: Below this many multiply-adds, im2col or col2im and a NumPy matmul per chunk
#: beat the task kernels (their launch and per-thread partials): measured 1.0-1.9x
#: faster on 8 layers of 10^4 to 2.4*10^6 multiply-adds, where the direct loops
#: that served up to 6.5*10^4 took 2-7x longer.
_SMALL_MACS = 1 << 21


@kernel
def _grad_input_direct(grad_out, w, dx, groups, sh, sw, dh, dw, pt, pl):
    """dx[n, c] = sum over the group's filters and taps of w * grad_out (one task per plane)."""
    n_images, channels, h, width = dx.shape
    o_total, cg, kh, kw = w.shape
    og = o_total // groups
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for task in prange(n_images * channels):
        n = task // channels
        c = task - n * channels
        g = c // cg
        ci = c - g * cg
        plane = dx[n, c]
        plane[:, :] = 0
        for o in range(g * og, (g + 1) * og):
            src = grad_out[n, o]
            for i in range(kh):
                for j in range(kw):
                    weight = w[o, ci, i, j]
                    for y in range(oh):
                        ih = y * sh - pt + i * dh
                        if 0 <= ih < h:
                            row = plane[ih]
                            for q in range(ow):
                                iw = q * sw - pl + j * dw
                                if 0 <= iw < width:
                                    row[iw] += weight * src[y, q]


@kernel
def _grad_weight_direct(x, grad_out, dw_out, groups, sh, sw, dh, dw, pt, pl):
    """dW[o, ci, i, j] = sum over images and positions of grad_out * x (one task per filter)."""
    n_images, channels, h, width = x.shape
    o_total, cg, kh, kw = dw_out.shape
    og = o_total // groups
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for o in prange(o_total):
        g = o // og
        for ci in range(cg):
            c = g * cg + ci
            for i in range(kh):
                for j in range(kw):
                    total = dw_out.dtype.type(0)
                    for n in range(n_images):
                        src, plane = grad_out[n, o], x[n, c]
                        for y in range(oh):
                            ih = y * sh - pt + i * dh
                            if 0 <= ih < h:
                                for q in range(ow):
                                    iw = q * sw - pl + j * dw
                                    if 0 <= iw < width:
                                        total += src[y, q] * plane[ih, iw]
                    dw_out[o, ci, i, j] = total


@serial_kernel
def _side_by_side(go, i0, i1, y0, y1, grads):
    """grads[o, (i - i0)*B + q] = grad_out[i, o, y0*OW + q] for i0 <= i < i1 and
    the B = (y1 - y0)*OW pixels of the output rows y0 <= y < y1: the images'
    gradients in the column layout of :func:`fastconv.im2col`."""
    o, ow = go.shape[1], go.shape[3]
    band = (y1 - y0) * ow
    for i in range(i0, i1):
        plane = go[i].reshape((o, go.shape[2] * ow))
        for k in range(o):
            grads[k, (i - i0) * band:(i - i0 + 1) * band] = plane[k, y0 * ow:y1 * ow]


@kernel
def _grad_weight_tasks(addr, x, go, partials, cols, grads, stage, blocks, starts, groups, kh, kw, sh, sw,
                       dh, dw, pt, pl):
    """partials[t, g] = the dW of group g over thread t's blocks (images side by
    side, or a band of output rows of one image; see
    :func:`fastconv.conv.image_blocks`; zero for a thread without blocks): their
    gradients in ``grads[t]`` (O, pixels) and their windows in ``cols[t]``, both flat.

    With an empty ``stage``, the windows are im2col columns (R, pixels) and
    partials[t, g] = cols_g @ grads_gᵀ, the transposed dW (ran 1.3x faster here
    than grads_g @ cols_gᵀ). Else they are window rows (pixels, R), channels
    innermost, built through ``stage[t]``, and partials[t, g] = grads_g @ rows_g,
    dW with its taps ordered (KH, KW, C/groups)."""
    threads = partials.shape[0]
    o, rows = go.shape[1], x.shape[1] * kh * kw
    og, rg = o // groups, rows // groups
    ow = go.shape[3]
    for t in prange(threads):
        if starts[t] == starts[t + 1]:
            partials[t] = 0
        for k in range(starts[t], starts[t + 1]):
            i0, count, y0 = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            y1 = y0 + blocks[k, 3]
            band = (y1 - y0) * ow
            beta = 0.0 if k == starts[t] else 1.0
            c, g2 = chunk_views(cols, grads, t, count, band, rows, o)
            _side_by_side(go, i0, i0 + count, y0, y1, g2)
            if stage.size:
                win = c.reshape((count * band, rows))
                windows_serial(x, i0, i0 + count, y0, y1, stage[t], win, groups, kh, kw, sh, sw, dh, dw,
                               pt, pl, ow)
                for g in range(groups):
                    gemm(addr, g2[g * og:(g + 1) * og], win[:, g * rg:(g + 1) * rg], partials[t, g],
                         False, beta)
            else:
                im2col_serial(x[i0:i0 + count], c.reshape((rows * count, band)), count, 1,
                              kh, kw, sh, sw, dh, dw, pt, pl, y0, y1, ow)
                for g in range(groups):
                    gemm(addr, c[g * rg:(g + 1) * rg], g2[g * og:(g + 1) * og], partials[t, g], True,
                         beta)


@kernel
def _grad_input_tasks(addr, go, w2, dx, cols, grads, stage, blocks, starts, groups, kh, kw, sh, sw, dh, dw,
                      pt, pl):
    """dx[i] = the column gradients W_gᵀ grad_out[i] per group, summed back into
    the image, over thread t's blocks of whole images side by side, as in
    :func:`_grad_weight_tasks`: with an empty ``stage``, w2 is (O, R) in OIHW order
    and col2im sums im2col columns; else w2 has its taps ordered (KH, KW, C/groups)
    and the window rows are summed back through ``stage[t]``."""
    threads = cols.shape[0]
    o, rg = w2.shape
    oh, ow = go.shape[2], go.shape[3]
    og, rows, p = o // groups, rg * groups, oh * ow
    for t in prange(threads):
        for k in range(starts[t], starts[t + 1]):
            i0, i1 = blocks[k, 0], blocks[k, 0] + blocks[k, 1]
            c, g2 = chunk_views(cols, grads, t, i1 - i0, p, rows, o)
            _side_by_side(go, i0, i1, 0, oh, g2)
            if stage.size:
                win = c.reshape(((i1 - i0) * p, rows))
                for g in range(groups):
                    gemm_at(addr, g2[g * og:(g + 1) * og], w2[g * og:(g + 1) * og],
                            win[:, g * rg:(g + 1) * rg], 0.0)
                add_windows_serial(win, dx, i0, i1, stage[t], groups, kh, kw, sh, sw, dh, dw, pt, pl,
                                   oh, ow)
            else:
                for g in range(groups):
                    gemm_at(addr, w2[g * og:(g + 1) * og], g2[g * og:(g + 1) * og],
                            c[g * rg:(g + 1) * rg], 0.0)
                col2im_serial(c.reshape((rows * (i1 - i0), p)), dx[i0:i1], i1 - i0, 1,
                              kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


@kernel
def _sum_partials(partials, dW, windowed):
    """dW (O, C/groups, KH, KW) = the sum over threads of :func:`_grad_weight_tasks`'
    partials (threads, groups, O/groups, Rg) with taps ordered (KH, KW, C/groups)
    where ``windowed``, else (threads, groups, Rg, O/groups) in OIHW tap order.
    One task per block of 16 filters of a group, reading the partials along their
    rows (reading one filter's column ran 6x slower)."""
    threads, groups = partials.shape[:2]
    o, cg, kh, kw = dW.shape
    og, taps = o // groups, kh * kw
    flat = dW.reshape(o, cg * taps)
    per_group = -(-og // 16)
    for block in prange(groups * per_group):
        g = block // per_group
        first = (block - g * per_group) * 16
        stop = min(og, first + 16)
        if windowed:
            for k in range(first, stop):
                for tap in range(taps):
                    for c in range(cg):
                        total = partials[0, g, k, tap * cg + c]
                        for t in range(1, threads):
                            total += partials[t, g, k, tap * cg + c]
                        flat[g * og + k, c * taps + tap] = total
        else:
            sums = np.empty(stop - first, dW.dtype)
            for r in range(cg * taps):
                sums[:] = partials[0, g, r, first:stop]
                for t in range(1, threads):
                    sums += partials[t, g, r, first:stop]
                for i in range(stop - first):
                    flat[g * og + first + i, r] = sums[i]


def _image_tasks(x_shape, o, geom, groups, dtype, reordered_weight=0, bands=False):
    """(BLAS address, threads, largest block in pixels, blocks, each thread's
    first block, stage shape) for one task per thread over blocks of its images
    (:func:`fastconv.conv.image_blocks`; bands of output rows only where
    ``bands``), or None where no BLAS is callable from kernels, some thread would
    have no image or the call is small (``_SMALL_MACS``). The stages are empty
    where the tasks use im2col columns rather than window rows
    (:func:`fastconv.columns.window_stages`)."""
    addr, threads = _blas.address(dtype), thread_count()
    n, c = x_shape[:2]
    g = geom
    macs = n * o * g.oh * g.ow * (c // groups) * g.kh * g.kw
    if addr is None or macs < _SMALL_MACS:
        return None
    plan = image_blocks(n, g.oh, g.ow, (c * g.kh * g.kw + o) * np.dtype(dtype).itemsize, threads, bands)
    if plan is None:
        return None
    return (addr, threads, *plan, window_stages(g, x_shape, groups, threads, reordered_weight))


def _transposed_geometry(geom, input_hw):
    """For stride 1, dL/dx is a convolution of grad_out with the flipped, transposed
    weight, padded by ``dilation*(K-1) - padding`` on each side: its Geometry over
    the (OH, OW) plane, or None where that padding would be negative or stride > 1."""
    g = geom
    span_h, span_w = g.dh * (g.kh - 1), g.dw * (g.kw - 1)
    pads = (span_h - g.pt, span_h - g.pb, span_w - g.pl, span_w - g.pr)
    if (g.sh, g.sw) != (1, 1) or min(pads) < 0:
        return None
    return Geometry(g.kh, g.kw, 1, 1, g.dh, g.dw, *pads, *input_hw)


def _transposed_weight(w, groups):
    """(O, C/g, KH, KW) -> (C, O/g, KH, KW): per group, in and out swapped, taps
    flipped; None where a weight is NaN or Inf. (A numba copy kernel measured
    1.3-1.4x slower at 64-128 channels and 1.1-1.3x faster at 512x256 here.)"""
    if not np.isfinite(w).all():
        return None
    o, cg, kh, kw = w.shape
    w5 = w.reshape(groups, o // groups, cg, kh, kw)[..., ::-1, ::-1]
    return np.ascontiguousarray(w5.transpose(0, 2, 1, 3, 4)).reshape(groups * cg, o // groups, kh, kw)


def _check_grad_out(func, grad_out, expected):
    if grad_out.shape != expected:
        raise ValueError(f"{func}: grad_out has shape {grad_out.shape} but the convolution's "
                         f"output has shape {expected}")


def _image_chunks(grad_out, rows):
    """Chunks of images whose columns and side-by-side gradients fit the chunk budget:
    yields ``(images, cols, grads)`` with ``images`` a slice of the batch, ``cols``
    an empty (rows, n*OH*OW) view and ``grads`` the chunk's grad_out as (O, n*OH*OW)."""
    n, o = grad_out.shape[:2]
    ohw = grad_out.shape[2] * grad_out.shape[3]
    chunk = _workspace.images_per_chunk(n, (rows + o) * ohw * grad_out.itemsize, ohw)
    with _workspace.scratch(grad_out.dtype, (rows * chunk * ohw,), (o * chunk * ohw,)) as buffers:
        cols_buffer, grad_buffer = buffers
        for start in range(0, n, chunk):
            images = slice(start, min(n, start + chunk))
            width = (images.stop - start) * ohw
            grads = grad_buffer[:o * width].reshape(o, width)
            _side_by_side(grad_out, start, images.stop, 0, grad_out.shape[2], grads)
            yield images, cols_buffer[:rows * width].reshape(rows, width), grads


@accepts_dask
def conv2d_grad_input(grad_out, weight, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`fastconv.conv2d` with respect to its input ``x``.

    Parameters
    ----------
    grad_out : array_like, shape (N, O, OH, OW)
        dL/dy for ``y = conv2d(x, weight, ...)``.
    weight : array_like, shape (O, C // groups, KH, KW)
    input_shape : tuple of 4 ints
        The shape (N, C, H, W) of ``x``.
    stride, padding, dilation, groups
        As given to :func:`fastconv.conv2d`.

    Returns
    -------
    ndarray, shape input_shape
        dL/dx, in ``np.result_type(grad_out, weight)``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.conv2d_grad_input(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), (1, 1, 3, 3))
    array([[[[1., 2., 1.],
             [2., 4., 2.],
             [1., 2., 1.]]]])
    """
    func = "conv2d_grad_input"
    grad_out, weight = as_array(func, "grad_out", grad_out), as_array(func, "weight", weight)
    check_ndim(func, "grad_out", grad_out, 4, "(N, O, OH, OW)")
    check_ndim(func, "weight", weight, 4, "(O, C // groups, KH, KW)")
    shape = shape_argument(func, "input_shape", input_shape)
    groups = conv_groups(func, shape, weight.shape, groups, x_name="input_shape")
    geom = geometry(func, shape[2:], weight.shape[2:], stride, padding, dilation)
    n, c = shape[:2]
    o = weight.shape[0]
    _check_grad_out(func, grad_out, (n, o, geom.oh, geom.ow))
    dtype = np.result_type(grad_out, weight)
    if not uses_kernel(dtype):
        return reference.conv2d_grad_input(grad_out, weight, shape, stride=stride,
                                           padding=padding, dilation=dilation, groups=groups)
    dx = np.empty(shape, dtype)
    if not dx.size:
        return dx
    if o == 0:
        dx[...] = 0
        return dx
    go, w = contiguous(grad_out, dtype), contiguous(weight, dtype)
    g = geom
    if reads_subsample(g):
        dx[...] = 0
        dx[:, :, ::g.sh, ::g.sw] = conv2d_grad_input(go, w, (n, c, g.oh, g.ow), groups=groups)
        return dx
    transposed = _transposed_geometry(g, shape[2:])
    # where the transposed convolution would be im2col + GEMM too, the column
    # gradients below skip reordering the weight; it also would multiply zero
    # padding by a NaN or Inf weight
    flipped_shape = (c, o // groups, g.kh, g.kw)
    kind = route(go.shape, flipped_shape, transposed, groups) if transposed is not None else "gemm"
    if kind == "pointwise":  # dx[n] = Wᵀ (C, O) @ grad_out[n] (O, P): BLAS transposes W
        pointwise(w.reshape(o, c), go.reshape(n, o, -1), dx.reshape(n, c, -1), transposed=True)
        return dx
    if kind == "winograd":  # flips and transposes w as it transforms it
        if _winograd.convolve(go, w, np.zeros(c, dtype), transposed, dx, adjoint=True) is not None:
            return dx
        kind = "gemm"  # NaN, Inf or huge values: the column gradients are exact
    if kind != "gemm":
        flipped = _transposed_weight(w, groups)
        if flipped is not None:
            return convolve_into(go, flipped, None, transposed, groups, dx)
    macs = go.size * w.shape[1] * g.kh * g.kw
    if w.shape[1] == 1:
        _grad_input_direct(go, w, dx, groups, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, work=macs)
        return dx
    rows = c * g.kh * g.kw
    rg, og = rows // groups, o // groups
    tasks = _image_tasks(shape, o, g, groups, dtype, reordered_weight=o)
    if tasks:
        addr, threads, width, blocks, starts, staged = tasks
        with _workspace.scratch(dtype, (threads, rows * width), (threads, o * width), staged,
                                (o, rg) if staged[1] else (0, 0)) as (cols, grads, stage, reordered), \
                _blas.one_thread():
            w2 = window_weight(w, reordered) if staged[1] else w.reshape(o, rg)
            _grad_input_tasks(addr, go, w2, dx, cols, grads, stage, blocks, starts, groups, *g.taps,
                              work=macs)
        return dx
    w3 = w.reshape(groups, og, rg)
    for images, cols, grads in _image_chunks(go, rows):
        for k in range(groups):  # colsᵀ = gradsᵀ · W_k: (P, Og) @ (Og, Rg), P = images*OH*OW
            np.matmul(grads[k * og:(k + 1) * og].T, w3[k], out=cols[k * rg:(k + 1) * rg].T)
        col2im_into(cols, geom, dx[images])
    return dx


@accepts_dask
def conv2d_grad_weight(x, grad_out, weight_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of :func:`fastconv.conv2d` with respect to its ``weight``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    grad_out : array_like, shape (N, O, OH, OW)
    weight_shape : tuple of 4 ints
        The shape (O, C // groups, KH, KW) of the weight.
    stride, padding, dilation, groups
        As given to :func:`fastconv.conv2d`.

    Returns
    -------
    ndarray, shape weight_shape
        dL/dW ``= einsum('nchwkl,nohw->ockl', windows, grad_out)`` per group.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fc.conv2d_grad_weight(x, np.ones((1, 1, 2, 2)), (1, 1, 2, 2))
    array([[[[ 8., 12.],
             [20., 24.]]]])
    """
    func = "conv2d_grad_weight"
    x, grad_out = as_array(func, "x", x), as_array(func, "grad_out", grad_out)
    check_ndim(func, "x", x, 4, "(N, C, H, W)")
    check_ndim(func, "grad_out", grad_out, 4, "(N, O, OH, OW)")
    shape = shape_argument(func, "weight_shape", weight_shape)
    groups = conv_groups(func, x.shape, shape, groups)
    geom = geometry(func, x.shape[2:], shape[2:], stride, padding, dilation)
    n, c = x.shape[:2]
    o = shape[0]
    _check_grad_out(func, grad_out, (n, o, geom.oh, geom.ow))
    dtype = np.result_type(x, grad_out)
    if not uses_kernel(dtype):
        return reference.conv2d_grad_weight(x, grad_out, shape, stride=stride, padding=padding,
                                            dilation=dilation, groups=groups)
    if reads_subsample(geom):
        return conv2d_grad_weight(x[:, :, ::geom.sh, ::geom.sw], grad_out, shape, groups=groups)
    dW = np.zeros(shape, dtype)
    if not dW.size or not x.size:
        return dW
    x, go = contiguous(x, dtype), contiguous(grad_out, dtype)
    g = geom
    macs = go.size * shape[1] * g.kh * g.kw
    # the direct kernel skips zero padding, which a NaN or Inf in grad_out turns into NaN
    if shape[1] == 1 and np.isfinite(go).all():
        _grad_weight_direct(x, go, dW, groups, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, work=macs)
        return dW
    if _winograd.handles(g) and _winograd.grad_weight_worthwhile(n, shape[1], o // groups, g.oh, g.ow) \
            and _winograd.grad_weight(x, go, g, dW) is not None:
        return dW  # else NaN, Inf or huge values: computed exactly below
    rows = c * g.kh * g.kw
    rg, og = rows // groups, o // groups
    tasks = _image_tasks(x.shape, o, g, groups, dtype, bands=True)
    if tasks:
        addr, threads, width, blocks, starts, staged = tasks
        windowed = staged[1] > 0
        partial = (og, rg) if windowed else (rg, og)
        with _workspace.scratch(dtype, (threads, rows * width), (threads, o * width), staged,
                                (threads, groups, *partial)) as (cols, grads, stage, partials), \
                _blas.one_thread():
            _grad_weight_tasks(addr, x, go, partials, cols, grads, stage, blocks, starts, groups, *g.taps,
                               work=macs)
            _sum_partials(partials, dW, windowed, work=partials.size)
        return dW
    dW3 = dW.reshape(groups, og, rg)
    for images, cols, grads in _image_chunks(go, rows):
        im2col_into(x[images], geom, cols)
        for k in range(groups):  # (Rg, K) @ (K, Og) ran 1.25x faster here than (Og, K) @ (K, Rg)
            dW3[k] += (cols[k * rg:(k + 1) * rg] @ grads[k * og:(k + 1) * og].T).T
    return dW


@accepts_dask
def conv2d_grad_bias(grad_out):
    """Gradient of :func:`fastconv.conv2d` with respect to its ``bias``: ``grad_out.sum((0, 2, 3))``.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> fc.conv2d_grad_bias(np.ones((2, 3, 4, 5)))
    array([40., 40., 40.])
    """
    func = "conv2d_grad_bias"
    grad_out = as_array(func, "grad_out", grad_out)
    check_ndim(func, "grad_out", grad_out, 4, "(N, O, OH, OW)")
    if not uses_kernel(grad_out.dtype):
        return reference.conv2d_grad_bias(grad_out)
    return grad_out.sum(axis=(0, 2, 3))
