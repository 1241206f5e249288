"""im2col / col2im: sliding windows of an NCHW batch as GEMM-ready columns, and
the adjoint that scatter-adds columns back into images.

Two column layouts share the im2col kernel (the row of a column block is
``row_index = r * row_stride + n * image_stride`` in a 2-D ``(rows, OH*OW)``
array); col2im, its adjoint, reads the public one:

* the public layout ``(C*KH*KW, N*OH*OW)`` (``row_stride = N``, ``image_stride = 1``),
  and
* the stacked per-image layout ``(N, C*KH*KW, OH*OW)`` (``row_stride = 1``,
  ``image_stride = C*KH*KW`` or more), which is what a per-image GEMM against
  ``W.reshape(O, -1)`` wants: it writes NCHW directly, no transpose pass.

``im2col_into`` / ``col2im_into`` and ``im2col_stacked_into`` are package-internal
building blocks (conv2d and its gradients): they take validated C-contiguous arrays
and a :class:`fastconv._args.Geometry` and trust them.
"""
import numpy as np
from numba import prange

from . import reference
from ._args import accepts_dask, as_array, check_ndim, contiguous, geometry, output, uses_kernel
from ._args import input_shape as _shape_argument
from ._config import kernel, serial_kernel
from ._intrinsics import VECTOR_BYTES, transpose_add_block, transpose_block

__all__ = ["im2col", "col2im"]


@serial_kernel
def inside_columns(off, sw, ow, w):
    """The output columns [q0, q1) whose input column ``off + q*sw`` lies in [0, w)."""
    q0 = 0
    if off < 0:
        q0 = min((-off + sw - 1) // sw, ow)
    q1 = ow
    if off + (ow - 1) * sw >= w:
        q1 = max((w - off + sw - 1) // sw, q0)
    return q0, q1


#: Output rows shorter than this take :func:`_im2col`'s per-plane form.
_SHORT_ROW = 32


@kernel
def _im2col(x, out, row_stride, image_stride, kh, kw, sh, sw, dh, dw, pt, pl, y0, y1, ow):
    """out[r*row_stride + n*image_stride, (y - y0)*OW + q] = x_padded[n, c, ih, iw] for
    the output rows y in [y0, y1).

    Short output rows (OW < ``_SHORT_ROW``) take one task per input plane: the
    band of the plane the taps read is copied once into a zero-padded buffer,
    and each tap's row is gathered from it through one table of offsets (a loop
    per output row cost ~30 cycles: as much as the copying on 7-wide rows)."""
    n_images, channels, h, w = x.shape
    kk = kh * kw
    rows = channels * kk
    xf, of, width = x.ravel(), out.ravel(), out.shape[1]
    if ow < _SHORT_ROW:
        band = y1 - y0
        ph, pw = (band - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
        top = y0 * sh - pt  # the image row of the buffer's first row
        c0, c1 = min(max(pl, 0), pw), min(max(w + pl, 0), pw)  # buffer columns inside the image
        offsets = np.empty(band * ow, np.uint64)
        for y in range(band):
            for q in range(ow):
                offsets[y * ow + q] = y * sh * pw + q * sw
        for task in prange(channels * n_images):
            n = task // channels
            c = task - n * channels
            pad = np.zeros(ph * pw, x.dtype)
            for a in range(ph):
                row = top + a
                if 0 <= row < h:
                    src = ((n * channels + c) * h + row) * w - pl
                    for b in range(c0, c1):
                        pad[a * pw + b] = xf[src + b]
            for k in range(kk):
                i = k // kw
                j = k - i * kw
                base = np.uint64(((c * kk + k) * row_stride + n * image_stride) * width)
                shift = np.uint64(i * dh * pw + j * dw)
                for p in range(np.uint64(band * ow)):
                    of[base + p] = pad[shift + offsets[p]]
        return
    for task in prange(rows * n_images):
        r = task // n_images
        n = task - r * n_images
        c = r // kk
        k = r - c * kk
        i = k // kw
        j = k - i * kw
        off = j * dw - pl
        q0, q1 = inside_columns(off, sw, ow, w)
        # flat unsigned indices: no views per row and no negative-index wraparound,
        # so the row loops vectorize (slices cost ~70 ns each on 28-wide rows)
        base = np.uint64((r * row_stride + n * image_stride) * width)
        plane = ((n * channels + c) * h) * w
        u0, u1, uw, step = np.uint64(q0), np.uint64(q1), np.uint64(ow), np.uint64(sw)
        for y in range(y0, y1):
            ih = y * sh - pt + i * dh
            d = base + np.uint64((y - y0) * ow)
            if ih < 0 or ih >= h:
                for q in range(uw):
                    of[d + q] = 0
                continue
            for q in range(u0):
                of[d + q] = 0
            src = np.uint64(plane + ih * w + q0 * sw + off)  # >= 0: q0 is the first inside column
            dst = d + u0
            if sw == 1:
                for q in range(u1 - u0):
                    of[dst + q] = xf[src + q]
            else:
                for q in range(u1 - u0):
                    of[dst + q] = xf[src + q * step]
            for q in range(u1, uw):
                of[d + q] = 0


@kernel
def _col2im(cols, out, row_stride, image_stride, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    """out[n, c, ih, iw] = sum of the column entries read from there (one task per plane)."""
    n_images, channels, h, w = out.shape
    kk = kh * kw
    cf, of, width = cols.ravel(), out.ravel(), cols.shape[1]
    for task in prange(n_images * channels):
        n = task // channels
        c = task - n * channels
        plane = np.uint64((n * channels + c) * h * w)
        for p in range(np.uint64(h * w)):
            of[plane + p] = 0
        for k in range(kk):
            i = k // kw
            j = k - i * kw
            row = np.uint64(((c * kk + k) * row_stride + n * image_stride) * width)
            off = j * dw - pl
            q0, q1 = inside_columns(off, sw, ow, w)
            count, step = np.uint64(q1 - q0), np.uint64(sw)
            for y in range(oh):  # flat unsigned indices, as in _im2col
                ih = y * sh - pt + i * dh
                if ih < 0 or ih >= h:
                    continue
                src = row + np.uint64(y * ow + q0)
                dst = plane + np.uint64(ih * w + q0 * sw + off)
                if sw == 1:
                    for q in range(count):
                        of[dst + q] += cf[src + q]
                else:
                    for q in range(count):
                        of[dst + q * step] += cf[src + q]


@serial_kernel
def chunk_views(cols, results, t, images, p, rows, o):
    """Thread ``t``'s views for a chunk of ``images`` images of ``p`` output pixels,
    side by side: columns (rows, images*p) and results (o, images*p) at the start
    of its rows of the flat per-thread buffers ``cols`` and ``results``."""
    width = images * p
    return cols[t, :rows * width].reshape((rows, width)), results[t, :o * width].reshape((o, width))


#: The kernels' serial builds, for convolution tasks that run im2col or col2im on
#: their own images inside a parallel loop (package-internal).
im2col_serial, col2im_serial = _im2col.serial, _col2im.serial


#: Channels per group from which convolution tasks gather each output pixel's
#: window as a row with channels innermost (runs of that many contiguous values,
#: :func:`windows_serial`) rather than as im2col columns (measured: with 16
#: channels, runs too short to pay, (32, 16, 32, 32) -> 32 ran 1.5x slower).
WINDOW_CHANNELS = 32


def window_stages(geom, x_shape, groups, threads, reordered_weight=0):
    """Shape of the per-thread stages of :func:`windows_serial` for input ``x_shape``
    (N, C, H, W): (threads, HB, WB, C), an image zero-padded as far as the windows
    read and the image reaches; (threads, 0, 0, 0) where window rows don't pay:
    fewer than :data:`WINDOW_CHANNELS` channels per group, a single tap, fewer
    output pixels than twice ``reordered_weight``, the output channels of a
    weight the caller reorders with :func:`window_weight` (a pass over all of
    it; measured break-even on 3x3 stride-2 layers of 96-512 channels), or a
    stage larger than the window rows it feeds (wide dilation or padding, or
    strides that skip pixels)."""
    g = geom
    n, c, h, w = x_shape
    if c // groups < WINDOW_CHANNELS or g.kh * g.kw == 1 or n * g.oh * g.ow < 2 * reordered_weight:
        return threads, 0, 0, 0
    reach_h, reach_w = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1
    hb, wb = max(reach_h, g.pt + h), max(reach_w, g.pl + w)
    if hb * wb > g.oh * g.ow * g.kh * g.kw:
        return threads, 0, 0, 0
    return threads, hb, wb, c


def window_weight(w, out):
    """Filters ``w`` (O, C/groups, KH, KW) as (O, KH*KW*C/groups) in ``out``,
    each row in the order of a group's part of a :func:`windows_serial` row
    (scratch rather than a fresh array: fresh pages cost more than the copy)."""
    o, cg, kh, kw = w.shape
    np.copyto(out.reshape(o, kh, kw, cg), w.transpose(0, 2, 3, 1))
    return out


@serial_kernel
def stage_rows(x, n, c0, group, first, rows, step, pt, pl, m, phase, staged):
    """Rows ``first + i*step`` (i < rows) of image n's padded plane (zero outside
    the image), channels ``c0 <= c < c0 + group`` innermost, columns in phase
    order: padded column ``b*m + l`` (b < phase, l < m) of the i-th row at
    ``staged[(i*m*phase + l*phase + b)*group + c]``. With m = 1 the
    columns keep their order.

    Square blocks of L channels by L columns (L values fill a 64-byte vector)
    move with vector shuffles (:func:`fastconv._intrinsics.transpose_block`),
    L channels over the whole band before the next ones: the reads are L
    sequential streams, which the prefetchers follow. Where L divides neither
    count, the last block overlaps the one before. With fewer than L channels
    or columns, values are copied one at a time, a column of channels after another.
    """
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    width = m * phase
    pitch = width * group
    inner = max(0, min(wd, width - pl))  # image columns inside the band
    uhw = np.uint64(h * wd)
    xf = x.ravel()
    lanes = VECTOR_BYTES // x.itemsize
    planes = np.arange(lanes).astype(np.uint64) * uhw  # channel c0 + i at src + planes[i]
    place = np.empty(width, np.uint64)  # padded column -> its offset in a staged row
    for b in range(phase):
        for l in range(m):
            place[b * m + l] = (l * phase + b) * group
    for r in range(rows):  # zero padding: rows outside the image, columns left and right of it
        row, at = first + r * step - pt, np.uint64(r * pitch)
        if row < 0 or row >= h:
            for d in range(at, at + np.uint64(pitch)):
                staged[d] = 0
            continue
        for col in range(width):
            if col < pl or col >= pl + inner:
                for c in range(np.uint64(group)):
                    staged[at + place[col] + c] = 0
    blocked = inner >= lanes and group >= lanes
    for block in range(0, group if blocked else 0, lanes):
        block = min(block, group - lanes)  # the last block overlaps the one before
        for r in range(rows):
            row = first + r * step - pt
            if row < 0 or row >= h:
                continue
            at = np.uint64(r * pitch + block)
            src = np.uint64(((n * channels + c0 + block) * h + row) * wd)
            for col in range(0, inner, lanes):
                col = min(col, inner - lanes)
                transpose_block(xf, src + np.uint64(col), planes, staged, at,
                                place[pl + col:pl + col + lanes])
    for r in range(rows if not blocked else 0):
        row = first + r * step - pt
        if row < 0 or row >= h:
            continue
        at, src = np.uint64(r * pitch), np.uint64(((n * channels + c0) * h + row) * wd)
        for col in range(inner):
            d, e = at + place[col + pl], src + np.uint64(col)
            for c in range(np.uint64(group)):
                staged[d + c] = xf[e + c * uhw]


@serial_kernel
def _window_runs(stage, rows, m, gather, groups, kh, kw, sh, sw, dh, dw, y0, y1, ow):
    """Image m's window rows of the output rows y0 <= y < y1 (see
    :func:`windows_serial`) against its stage, whose first row is the padded
    row ``y0*sh``: copied out of it where ``gather``, else summed back into it."""
    hb, wb, channels = stage.shape
    cg = channels // groups
    sf, rf = stage.ravel(), rows.ravel()
    width = np.uint64(rows.shape[1])
    run = np.uint64(cg)
    for y in range(y0, y1):
        for q in range(ow):
            r = np.uint64((m * (y1 - y0) + y - y0) * ow + q) * width
            for g in range(groups):
                for i in range(kh):
                    for j in range(kw):
                        s = np.uint64((((y - y0) * sh + i * dh) * wb + q * sw + j * dw) * channels + g * cg)
                        if gather:
                            for k in range(run):
                                rf[r + k] = sf[s + k]
                        else:
                            for k in range(run):
                                sf[s + k] += rf[r + k]
                        r += run


@serial_kernel
def windows_serial(x, i0, i1, y0, y1, stage, out, groups, kh, kw, sh, sw, dh, dw, pt, pl, ow):
    """out[(m*(y1 - y0) + y - y0)*OW + q] = the window of output pixel (y, q),
    y0 <= y < y1, of image i0 + m, ordered (group, kernel row, kernel column,
    channel of the group): the im2col matrix transposed, channels innermost.
    The band of each image the windows read is staged once in ``stage`` (see
    :func:`window_stages`) so that every window row copies runs of C/groups
    contiguous values."""
    wb, channels = stage.shape[1], stage.shape[2]
    reach = (y1 - 1 - y0) * sh + (kh - 1) * dh + 1
    for m in range(i1 - i0):
        stage_rows(x, i0 + m, 0, channels, y0 * sh, reach, 1, pt, pl, 1, wb, stage.ravel())
        _window_runs(stage, out, m, True, groups, kh, kw, sh, sw, dh, dw, y0, y1, ow)


@serial_kernel
def add_windows_serial(rows, dx, i0, i1, stage, groups, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    """Adjoint of :func:`windows_serial`: dx[i0 + m] = the sum of image m's window
    rows at the places they were read from (zero where no window reads)."""
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    zero = np.zeros(channels, dx.dtype)
    pixel_at = np.empty(h * w, np.uint64)  # image pixel -> its channels in the stage
    for a in range(h):
        for q in range(w):
            pixel_at[a * w + q] = ((pt + a) * stage.shape[1] + pl + q) * channels
    for m in range(i1 - i0):
        stage[:] = 0
        _window_runs(stage, rows, m, False, groups, kh, kw, sh, sw, dh, dw, 0, oh, ow)
        channels_first(stage.ravel(), pixel_at, dx[i0 + m].reshape((channels, h * w)), zero, 0)


@serial_kernel
def channels_first(src, pixel_at, dst, bias, q0):
    """dst[c, q0 + q] = src[pixel_at[q] + c] + bias[c] for q < len(pixel_at):
    pixels with their channels innermost back to channel planes ``dst`` (C, P).

    Square blocks of L channels by L pixels (L values fill a 64-byte vector)
    move with vector shuffles (:func:`fastconv._intrinsics.transpose_add_block`),
    the last ones overlapping the blocks before where L divides neither count.
    With fewer than L channels or pixels, values move one at a time, a block of
    :data:`TRANSPOSE_BLOCK` pixels channel by channel (1.1-1.5x faster than every
    channel of a pixel in turn, which on planes a multiple of 4 KB apart missed
    the L1 cache on every write)."""
    channels, pitch = dst.shape
    pixels = pixel_at.shape[0]
    lanes = VECTOR_BYTES // dst.itemsize
    if channels >= lanes and pixels >= lanes:
        flat = dst.reshape(channels * pitch)
        planes = np.arange(lanes).astype(np.uint64) * np.uint64(pitch)
        for c0 in range(0, channels, lanes):
            c0 = min(c0, channels - lanes)
            for p0 in range(0, pixels, lanes):
                p0 = min(p0, pixels - lanes)
                transpose_add_block(src, np.uint64(c0), pixel_at[p0:p0 + lanes], flat,
                                    np.uint64(c0 * pitch + q0 + p0), planes, bias, c0)
        return
    for p0 in range(0, pixels, TRANSPOSE_BLOCK):
        p1 = min(pixels, p0 + TRANSPOSE_BLOCK)
        for c in range(channels):
            plane, b = dst[c], bias[c]
            for q in range(p0, p1):
                plane[q0 + q] = src[pixel_at[q] + c] + b


#: Pixels per block of :func:`channels_first`'s value-by-value copy (a 64-byte line of float32).
TRANSPOSE_BLOCK = 16


def _window(geom):
    g = geom
    return g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.oh, g.ow


def im2col_into(x, geom, out):
    """Columns of ``x`` (N, C, H, W) into ``out`` (C*KH*KW, N*OH*OW), the public layout.

    Package-internal: ``x`` and ``out`` are C-contiguous of one float dtype and
    ``geom`` was made by :func:`fastconv._args.geometry` for ``x``.
    """
    n, c = x.shape[:2]
    rows = c * geom.kh * geom.kw
    if out.size:
        _im2col(x, out.reshape(rows * n, geom.oh * geom.ow), n, 1, *geom.taps, 0, geom.oh,
                geom.ow, work=out.size)
    return out


def im2col_stacked_into(x, geom, out, y0=0, y1=None):
    """Columns of ``x`` (N, C, H, W) for the output rows ``[y0, y1)`` (default all)
    into ``out`` (N, R, (y1 - y0)*OW) with ``R >= C*KH*KW``.

    Image ``n``'s columns are ``out[n, :C*KH*KW]`` (rows beyond are left alone,
    e.g. a row of ones that folds a bias into the GEMM). Package-internal, as
    :func:`im2col_into`.
    """
    n, c = x.shape[:2]
    y1 = geom.oh if y1 is None else y1
    stride, width = out.shape[1], (y1 - y0) * geom.ow
    if out.size and c:
        _im2col(x, out.reshape(n * stride, width), 1, stride, *geom.taps, y0, y1,
                geom.ow, work=n * c * geom.kh * geom.kw * width)
    return out


def col2im_into(cols, geom, out):
    """Adjoint of :func:`im2col_into`: ``cols`` (C*KH*KW, N*OH*OW) summed into ``out`` (N, C, H, W)."""
    n, c = out.shape[:2]
    rows = c * geom.kh * geom.kw
    if out.size:
        _col2im(cols.reshape(rows * n, geom.oh * geom.ow), out, n, 1, *_window(geom),
                work=max(out.size, cols.size))
    return out


@accepts_dask
def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    """Sliding windows of an NCHW batch as the columns of a matrix.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), 'valid' or 'same'
        Zero padding, as in ``torch.nn.functional.conv2d`` ('same' needs stride 1).
    out : ndarray, shape (C*KH*KW, N*OH*OW), optional
        C-contiguous, of ``x``'s dtype, sharing no memory with ``x``.

    Returns
    -------
    ndarray, shape (C*KH*KW, N*OH*OW)
        Row ``c*KH*KW + kh*KW + kw``, column ``n*OH*OW + oh*OW + ow`` holds
        ``x_padded[n, c, oh*sh + kh*dh, ow*sw + kw*dw]``, so that
        ``W.reshape(O, -1) @ im2col(x, ...)`` is the convolution (as (O, N*OH*OW)).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import im2col
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> im2col(x, 2)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    func = "im2col"
    x = as_array(func, "x", x)
    check_ndim(func, "x", x, 4, "(N, C, H, W)")
    geom = geometry(func, x.shape[2:], kernel_size, stride, padding, dilation)
    n, c = x.shape[:2]
    shape = (c * geom.kh * geom.kw, n * geom.oh * geom.ow)
    result = output(func, out, shape, x.dtype, {"x": x})
    if not uses_kernel(x.dtype):
        return reference.im2col(x, kernel_size, stride=(geom.sh, geom.sw), padding=padding,
                                dilation=(geom.dh, geom.dw), out=result)
    return im2col_into(contiguous(x, x.dtype), geom, result)


@accepts_dask
def col2im(cols, input_shape, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    """Scatter-add columns back into an NCHW batch: the adjoint of :func:`im2col`.

    Parameters
    ----------
    cols : array_like, shape (C*KH*KW, N*OH*OW)
        Columns in :func:`im2col`'s layout.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)`` of the images the columns were taken from.
    kernel_size, stride, padding, dilation
        As for :func:`im2col`.
    out : ndarray, shape input_shape, optional
        C-contiguous, of ``cols``'s dtype, sharing no memory with ``cols``.

    Returns
    -------
    ndarray, shape (N, C, H, W)
        Every column entry added to the pixel it was read from (overlaps summed,
        entries that came from the padding dropped), so that
        ``<im2col(x), c> == <x, col2im(c)>``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import col2im
    >>> col2im(np.ones((4, 4)), (1, 1, 3, 3), 2)
    array([[[[1., 2., 1.],
             [2., 4., 2.],
             [1., 2., 1.]]]])
    """
    func = "col2im"
    cols = as_array(func, "cols", cols)
    shape = _shape_argument(func, "input_shape", input_shape)
    geom = geometry(func, shape[2:], kernel_size, stride, padding, dilation)
    n, c = shape[:2]
    expected = (c * geom.kh * geom.kw, n * geom.oh * geom.ow)
    if cols.shape != expected:
        raise ValueError(
            f"{func}: cols has shape {cols.shape} but input_shape {shape} with kernel "
            f"{geom.kh}x{geom.kw} and output {geom.oh}x{geom.ow} needs (C*KH*KW, N*OH*OW) = {expected}"
        )
    result = output(func, out, shape, cols.dtype, {"cols": cols})
    if not uses_kernel(cols.dtype):
        return reference.col2im(cols, shape, kernel_size, stride=(geom.sh, geom.sw),
                                padding=padding, dilation=(geom.dh, geom.dw), out=result)
    return col2im_into(contiguous(cols, cols.dtype), geom, result)
