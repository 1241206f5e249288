"""conv2d forward (cross-correlation, PyTorch semantics).

Kernel strategy by shape class (float32/float64). Where a BLAS is callable from
compiled code (:mod:`fastconv._blas`), GEMMs run single-threaded inside numba's
parallel tasks, next to the kernels that feed them, so one thread pool owns the
cores during a call; otherwise they are NumPy matmuls between parallel kernels.

* tiny problems: one serial numba call (im2col over the whole batch so the GEMM
  rows are long, GEMM, scatter to NCHW): no thread launch, no BLAS call;
* depthwise / one-channel-per-group convolutions: 3x3 stride 1 from a padded
  copy of each input plane, nine taps in one pass; others (with finite weights)
  a direct kernel (one task per output plane, rows accumulated in cache);
* 1x1 stride-1 unpadded, groups=1: ``W (O, C) @ x[n] (C, H*W)`` written straight
  into the NCHW output, pieces of each image's columns (or, for small planes, of
  its output channels) as tasks; a strided unpadded 1x1 is a stride-1 one over a
  copy of the pixels it reads;
* a window that covers the whole unpadded input (output 1x1), groups=1:
  ``x.reshape(N, -1) @ W.reshape(O, -1).T`` (im2col is a reshape there);
* 3x3 and 5x5 stride-1 undilated, enough channels per group and tiles per
  thread: Winograd F(2x2,3x3), F(4x4,3x3) or F(2x2,5x5) (:mod:`fastconv._winograd`),
  2.25-4x fewer multiplications;
  inputs with NaN, Inf or huge values take the im2col path below instead;
* everything else: im2col + GEMM in cache-sized chunks. Small output planes
  (OH*OW <= 4096): the windows of a chunk of images side by side, one wide GEMM
  per group (a per-image GEMM would be too narrow), then a copy into NCHW that
  adds the bias, one task per thread over its images; with 32 or more channels
  per group the windows are rows with channels innermost, copied in contiguous
  runs from a channels-last copy of each image (2.5x faster to build than im2col
  columns on 3x3 stride-2 layers). Where that copy's pixels, split by their phase
  modulo the stride, cover little more than the output, no windows are built:
  one GEMM per tap reads them in place (1.1-1.2x faster on 3x3 stride-2 layers of
  32-64 channels). Large planes: per-image
  stacked columns of a band of output rows, then per group a GEMM
  ``W_g (O/g, C/g*KH*KW) @ cols`` written straight into NCHW, one task per thread
  over (image, band) pairs; with groups=1 the bias rides in the GEMM as an extra
  row of ones.
"""
import numpy as np
from numba import prange

from . import _blas, _winograd, _workspace, reference
from ._args import (
    Geometry,
    accepts_dask,
    as_array,
    check_bias,
    check_ndim,
    contiguous,
    conv_groups,
    geometry,
    output,
    uses_kernel,
)
from ._blas import gemm, gemm_at
from ._config import kernel, serial_kernel, thread_count
from .columns import (
    WINDOW_CHANNELS,
    channels_first,
    chunk_views,
    im2col_into,
    im2col_serial,
    im2col_stacked_into,
    inside_columns,
    stage_rows,
    window_stages,
    window_weight,
    windows_serial,
)

__all__ = ["conv2d"]

#: Multiply-adds below which one serial pad + im2col + GEMM call beats the rest.
_SMALL_MACS = 1 << 18
#: Output planes up to this many pixels take the merged im2col + GEMM (one wide
#: GEMM over a chunk of images); larger ones the per-image stacked form.
_MERGE_PLANE = 4096
#: Stacked form: size of one chunk's column buffer (bytes), L2/L3 resident between
#: im2col and GEMM (measured on the 7x7 stride-2 stem: twice the L2 beat 8 MB by
#: 1.25x on 512 KB of L2 and 2-4 MB beat 8 MB on 1 MB of L2).
_BAND_BYTES = 2 * _workspace.CHUNK_BYTES


@kernel
def _direct(x, w, b, out, groups, sh, sw, dh, dw, pt, pl, ranges):
    """out[n, o] = b[o] + sum over the group's channels and the window (one task per plane).

    ``ranges[j] = (q0, q1)``: the output columns whose input column for kernel
    column ``j`` lies inside the image (outside it is zero padding).
    """
    n_images, channels, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    oh = out.shape[2]
    og = n_out // groups
    for task in prange(n_images * n_out):
        n = task // n_out
        o = task - n * n_out
        c_first = (o // og) * cg
        plane = out[n, o]
        bias = b[o]
        for y in range(oh):
            orow = plane[y]
            orow[:] = bias
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
                        q0, q1 = ranges[j, 0], ranges[j, 1]
                        if q1 <= q0:
                            continue
                        off = j * dw - pl
                        acc = orow[q0:q1]  # slices: no negative-index wraparound in the loop
                        if sw == 1:
                            seg = src[q0 + off:q1 + off]
                            for q in range(q1 - q0):
                                acc[q] += wv * seg[q]
                        else:
                            strided = src[q0 * sw + off:(q1 - 1) * sw + off + 1:sw]
                            for q in range(q1 - q0):
                                acc[q] += wv * strided[q]


@kernel
def _depthwise_3x3(x, w, b, out, groups, pt, pl):
    """3x3, stride 1, undilated, one input channel per group: out[n, o] from a
    zero-padded copy of its input plane, all nine taps in one pass per output row
    (one task per output plane)."""
    n_images, channels, h, wd = x.shape
    n_out = w.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    og = n_out // groups
    for task in prange(n_images * n_out):
        n = task // n_out
        o = task - n * n_out
        pad = np.zeros((oh + 2, ow + 2), x.dtype)
        for a in range(h):
            pad[pt + a, pl:pl + wd] = x[n, o // og, a]
        w0, w1, w2 = w[o, 0, 0], w[o, 0, 1], w[o, 0, 2]
        w00, w01, w02, w10, w11, w12 = w0[0], w0[1], w0[2], w1[0], w1[1], w1[2]
        w20, w21, w22, bias = w2[0], w2[1], w2[2], b[o]
        plane = out[n, o]
        for y in range(oh):
            r0, r1, r2, orow = pad[y], pad[y + 1], pad[y + 2], plane[y]
            for q in range(ow):
                orow[q] = (bias + w00 * r0[q] + w01 * r0[q + 1] + w02 * r0[q + 2]
                           + w10 * r1[q] + w11 * r1[q + 1] + w12 * r1[q + 2]
                           + w20 * r2[q] + w21 * r2[q + 1] + w22 * r2[q + 2])


def _column_ranges(geom, width):
    """(KW, 2) int64: per kernel column, the output columns [q0, q1) that read inside the image."""
    ranges = np.empty((geom.kw, 2), np.int64)
    for j in range(geom.kw):
        ranges[j] = inside_columns(j * geom.dw - geom.pl, geom.sw, geom.ow, width)
    return ranges


@serial_kernel
def _small(x, w2, b, cols, tmp, out, groups, kh, kw, sh, sw, dh, dw, pt, pl):
    """Whole small convolution in one serial call: im2col over the batch (public
    layout, rows of length N*OH*OW), GEMM with the bias, scatter to NCHW.

    Scratch (from the wrapper): cols (C*KH*KW, N*OH*OW), tmp (O, N*OH*OW);
    w2 is (O, C/groups*KH*KW).
    """
    n_images = x.shape[0]
    n_out = w2.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    ohw = oh * ow
    im2col_serial(x, cols.reshape((cols.shape[0] * n_images, ohw)), n_images, 1,
                  kh, kw, sh, sw, dh, dw, pt, pl, 0, oh, ow)
    og = n_out // groups
    rg = w2.shape[1]
    quads = rg - rg % 4
    for o in range(n_out):
        first = (o // og) * rg
        acc = tmp[o]
        acc[:] = b[o]
        # four rows of cols per pass over acc: a quarter of its loads and stores
        for k in range(0, quads, 4):
            w0, w1, w2_, w3 = w2[o, k], w2[o, k + 1], w2[o, k + 2], w2[o, k + 3]
            c0, c1 = cols[first + k], cols[first + k + 1]
            c2, c3 = cols[first + k + 2], cols[first + k + 3]
            for q in range(acc.shape[0]):
                acc[q] += w0 * c0[q] + w1 * c1[q] + w2_ * c2[q] + w3 * c3[q]
        for k in range(quads, rg):
            wv = w2[o, k]
            crow = cols[first + k]
            for q in range(acc.shape[0]):
                acc[q] += wv * crow[q]
    outf = out.ravel()
    for n in range(n_images):
        for o in range(n_out):
            dst, src = (n * n_out + o) * ohw, tmp[o, n * ohw:(n + 1) * ohw]
            for p in range(ohw):
                outf[dst + p] = src[p]


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


@kernel
def _unmerge(tmp, out, b, start):
    """out[start + m, o, :] = tmp[o, m*S:(m+1)*S] + b[o] for tmp (O, M*S), out (N, O, S)."""
    n_out, p = tmp.shape
    size = out.shape[2]
    for task in prange((p // size) * n_out):
        m = task // n_out
        o = task - m * n_out
        src = tmp[o, m * size:(m + 1) * size]
        dst = out[start + m, o]
        bias = b[o]
        for k in range(size):
            dst[k] = src[k] + bias


@kernel
def _pointwise_tasks(addr, w2, x3, out3, pieces, by_rows, transposed):
    """out3[n] = op(w2) @ x3[n], each image in ``pieces`` tasks of single-threaded
    GEMMs over its output channels (``by_rows``) or its pixel columns; op(w2) is
    w2.T where ``transposed``."""
    n, o, p = out3.shape
    size = o if by_rows else p
    for task in prange(n * pieces):
        i = task // pieces
        j = task - i * pieces
        s0, s1 = j * size // pieces, (j + 1) * size // pieces
        a, b, c = w2, x3[i], out3[i]
        if not by_rows:
            b, c = b[:, s0:s1], c[:, s0:s1]
        elif transposed:
            a, c = a[:, s0:s1], c[s0:s1]
        else:
            a, c = a[s0:s1], c[s0:s1]
        if transposed:
            gemm_at(addr, a, b, c, 0.0)
        else:
            gemm(addr, a, b, c, False, 0.0)


#: Pixels per task below which a 1x1 convolution's tasks split an image's output
#: channels rather than its pixels (measured with 49-196 pixels an image: 1.2-2.2x
#: faster; narrower GEMMs ran at a fraction of the rate).
_POINTWISE_COLUMNS = 128


def pointwise(w2, x3, out3, transposed=False):
    """out3[n] = w2 (O, C) @ x3[n] (C, P) for every image, or w2.T @ x3[n] for w2
    (C, O) where ``transposed``: one single-threaded GEMM per task on numba's pool
    where a BLAS is callable from kernels, else one batched matmul."""
    addr = _blas.address(out3.dtype)
    if addr is None:
        np.matmul(w2.T if transposed else w2, x3, out=out3)
        return
    n, o, p = out3.shape
    pieces = -(-2 * thread_count() // n)  # >= two tasks a thread
    by_rows = p < pieces * _POINTWISE_COLUMNS
    pieces = min(o if by_rows else p, pieces)
    with _blas.one_thread():
        _pointwise_tasks(addr, w2, x3, out3, pieces, by_rows, transposed, work=out3.size * x3.shape[1])


def _gemm_path(x, w, b, result, geom, groups, has_bias):
    """im2col + GEMM, in one of two forms by output plane size (see the module docstring)."""
    if geom.oh * geom.ow <= _MERGE_PLANE:
        _gemm_merged(x, w, b, result, geom, groups)
    else:
        _gemm_stacked(x, w, b, result, geom, groups, has_bias)


@kernel
def _merged_tasks(addr, x, w2, b, out3, cols, tmp, stage, blocks, starts, groups, kh, kw, sh, sw, dh, dw,
                  pt, pl, ow):
    """:func:`_gemm_merged` with one task per thread: its blocks (images side by
    side, or a band of output rows of one image; see
    :func:`fastconv._workspace.blocks`) one after another, their windows in
    ``cols[t]``, single-threaded GEMMs into ``tmp[t]``, then copied into NCHW
    with the bias.

    With an empty ``stage`` the windows are im2col columns (R, pixels), w2 is
    (O, R) and ``tmp[t]`` is (O, pixels). Else they are window rows (pixels, R),
    channels innermost, built through ``stage[t]``; w2 is (O, R/groups) with its
    taps ordered (KH, KW, C/groups), and ``tmp[t]`` is (pixels, O)."""
    threads = cols.shape[0]
    o, p = out3.shape[1], out3.shape[2]
    rows = x.shape[1] * kh * kw
    og, rg = o // groups, rows // groups
    pixel_at = np.arange(p).astype(np.uint64) * np.uint64(o)  # output pixel -> its row of tmp
    for t in prange(threads):
        for k in range(starts[t], starts[t + 1]):
            i0, count, y0 = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            y1 = y0 + blocks[k, 3]
            band = (y1 - y0) * ow  # pixels of each image in the block
            c, m = chunk_views(cols, tmp, t, count, band, rows, o)
            if stage.size:
                win, mt = c.reshape((count * band, rows)), m.reshape((count * band, o))
                windows_serial(x, i0, i0 + count, y0, y1, stage[t], win, groups, kh, kw, sh, sw, dh, dw,
                               pt, pl, ow)
                for g in range(groups):
                    gemm(addr, win[:, g * rg:(g + 1) * rg], w2[g * og:(g + 1) * og],
                         mt[:, g * og:(g + 1) * og], True, 0.0)
                for i in range(count):
                    channels_first(mt[i * band:(i + 1) * band].reshape(band * o), pixel_at[:band],
                                   out3[i0 + i], b, y0 * ow)
                continue
            im2col_serial(x[i0:i0 + count], c.reshape((rows * count, band)), count, 1,
                          kh, kw, sh, sw, dh, dw, pt, pl, y0, y1, ow)
            for g in range(groups):
                gemm(addr, w2[g * og:(g + 1) * og], c[g * rg:(g + 1) * rg], m[g * og:(g + 1) * og],
                     False, 0.0)
            for j in range(o):
                bias, row = b[j], m[j]
                for i in range(count):
                    dst, src = out3[i0 + i, j, y0 * ow:y1 * ow], row[i * band:(i + 1) * band]
                    for q in range(band):
                        dst[q] = src[q] + bias


#: Most grid pixels per output pixel for :func:`_shifted_tasks` (the grid's
#: extra columns and rows are computed and dropped).
SHIFTED_WASTE = 1.15


def shifted_grid(geom, x_shape, groups):
    """The grid of :func:`_shifted_tasks` for this layer: (columns per grid row,
    extra stage rows per block), or None where window rows pay better: fewer
    than :data:`fastconv.columns.WINDOW_CHANNELS` channels per group (short
    GEMMs), a single tap, or a grid over :data:`SHIFTED_WASTE` times the output's
    pixels (a 3x3 stride-2 layer of 256 channels on 14x14 images, 1.31 grid
    pixels an output pixel, ran 0.64x as fast as window rows)."""
    g = geom
    n, c, h, w = x_shape
    if c // groups < WINDOW_CHANNELS or g.kh * g.kw == 1:
        return None
    reach = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1
    columns = -(-max(reach, g.pl + w) // g.sw)
    extra = (g.kh - 1) * g.dh // g.sh
    if (g.oh + extra) * columns > SHIFTED_WASTE * g.oh * g.ow:
        return None
    return columns, extra


@serial_kernel
def stage_phases(x, i0, count, y0, band, extra, sh, sw, pt, pl, columns, stage):
    """Stage a block of :func:`_shifted_tasks` (images i0 to i0 + count, output
    rows y0 to y0 + band) in ``stage``: channels innermost, each image's padded
    rows split by their phase modulo the stride (phase plane p of image i holds
    the padded rows ``y0*sh + p + r*sh``, r < band + extra, planes ordered (p, i)),
    every staged row ``columns*sw`` pixels wide; then zeros for the dropped grid
    pixels to read past the end. Returns the staged block as (rows, sw*C): one
    row per grid pixel."""
    channels = x.shape[1]
    pitch = sw * channels
    plane = (band + extra) * columns * pitch
    for p in range(sh):
        for i in range(count):
            at = (p * count + i) * plane
            stage_rows(x, i0 + i, 0, channels, y0 * sh + p, band + extra, sh, pt, pl, 1, columns * sw,
                       stage[at:at + plane])
    end = sh * count * plane
    used = end + (extra + 1) * columns * pitch
    stage[end:used] = 0
    return stage[:used].reshape((used // pitch, pitch))


@serial_kernel
def tap_matrix(staged, i, j, pixels, columns, sh, sw, dh, dw, c0, c1):
    """The (pixels, c1 - c0) matrix of channels c0 to c1 of the staged pixels that
    kernel tap (i, j) reads for the first ``pixels`` grid pixels of a block staged
    by :func:`stage_phases` (``pixels`` = images x plane rows x ``columns``): its
    rows are ``sw*C`` values apart."""
    channels = staged.shape[1] // sw
    first = (i * dh) % sh * pixels + (i * dh) // sh * columns + j * dw // sw
    col = j * dw % sw * channels
    return staged[first:first + pixels, col + c0:col + c1]


@kernel
def _shifted_tasks(addr, x, w2, b, out3, stage, tmp, blocks, starts, groups, kh, kw, sh, sw, dh, dw, pt, pl,
                   ow, columns):
    """conv2d as one GEMM per kernel tap over the input itself, one task per
    thread over its blocks (as :func:`_merged_tasks`): no window matrix.

    A block is staged by :func:`stage_phases`. On a grid of ``columns`` pixels
    per row, output pixel (y, q) of tap (i, j) reads the staged pixel
    ``q*sw + j*dw`` of plane row ``y + i*dh // sh``, so the pixels a block's
    outputs read through one tap form one matrix (:func:`tap_matrix`), and
    ``tmp[t] += that @ w_tap`` sums the taps on the grid. Grid pixels beyond the
    output's columns and rows are computed and dropped. w2 is (O, KH*KW*C/groups),
    taps ordered (KH, KW, C/groups)."""
    threads = stage.shape[0]
    o = out3.shape[1]
    cg, og = x.shape[1] // groups, o // groups
    extra = (kh - 1) * dh // sh
    pixel_at = np.empty(out3.shape[2], np.uint64)  # output pixel -> its row of tmp
    for q in range(out3.shape[2]):
        pixel_at[q] = np.uint64((q // ow * columns + q % ow) * o)
    for t in prange(threads):
        for k in range(starts[t], starts[t + 1]):
            i0, count, y0, band = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
            plane = (band + extra) * columns
            staged = stage_phases(x, i0, count, y0, band, extra, sh, sw, pt, pl, columns, stage[t])
            mt = tmp[t, :count * plane * o].reshape((count * plane, o))
            for i in range(kh):
                for j in range(kw):
                    tap = i * kw + j
                    for g in range(groups):
                        gemm(addr, tap_matrix(staged, i, j, count * plane, columns, sh, sw, dh, dw, g * cg,
                                              (g + 1) * cg),
                             w2[g * og:(g + 1) * og, tap * cg:(tap + 1) * cg], mt[:, g * og:(g + 1) * og],
                             True, 0.0 if tap == 0 else 1.0)
            for i in range(count):
                channels_first(tmp[t, i * plane * o:(i + 1) * plane * o], pixel_at[:band * ow], out3[i0 + i],
                               b, y0 * ow)


def _gemm_shifted(addr, x, w, b, result, geom, groups, threads, grid):
    """:func:`_shifted_tasks` on blocks sized like the merged path's; False where
    some thread would have no image (the caller then takes window rows)."""
    n, c = x.shape[:2]
    o = w.shape[0]
    g = geom
    columns, extra = grid
    plan = image_blocks(n, g.oh, g.ow, (g.sh * g.sw * c + o) * x.itemsize, threads)
    if plan is None:
        return False
    _, blocks, starts = plan
    pixels = int((blocks[:, 1] * (blocks[:, 3] + extra)).max()) * columns  # a block's grid
    stage = (g.sh * pixels + (extra + 1) * columns) * g.sw * c
    with _workspace.scratch(x.dtype, (threads, stage), (threads, pixels * o), (o, w[0].size)) \
            as (staged, tmp, reordered), _blas.one_thread():
        _shifted_tasks(addr, x, window_weight(w, reordered), b, result.reshape(n, o, -1), staged, tmp,
                       blocks, starts, groups, *g.taps, g.ow, columns, work=result.size * w[0].size)
    return True


def image_blocks(n, oh, ow, per_pixel, threads, bands=True):
    """Blocks of output pixels for one task per thread over n images of (OH, OW)
    pixels, ``per_pixel`` bytes of windows and results each: (largest block in
    pixels, blocks, each thread's first block) as :func:`fastconv._workspace.blocks`
    makes them, or None where some thread would have no image.

    Each thread takes an equal share of the images' output rows (3 images on 2
    threads: 1.26x faster than 2 and 1), in blocks of whole images (bands that
    fit L2 ran 0.77-0.91x as fast) or of the rows of an image that a share
    splits, where every block keeps ``MIN_CHUNK_PIXELS`` (a block's GEMM packs
    the whole weight: with 98-pixel bands a (1, 128, 28, 28) stride-2 layer ran
    0.91x as fast). Else, or without ``bands``, each thread takes whole images,
    ``images_per_chunk`` at a time."""
    p, least = oh * ow, _workspace.MIN_CHUNK_PIXELS
    if bands:
        capacity, blocks, starts = _workspace.blocks(n, oh, ow, per_pixel, _workspace.CHUNK_BYTES,
                                                     max(p, least), threads)
        if (blocks[:, 1] * blocks[:, 3]).min() * ow >= least:
            return capacity, blocks, starts
    if n < threads:
        return None
    chunk = _workspace.images_per_chunk(n, per_pixel * p, p, threads)
    blocks, starts = [], [0]
    for t in range(threads):
        stop = (t + 1) * n // threads
        blocks += [(i0, min(chunk, stop - i0), 0, oh) for i0 in range(t * n // threads, stop, chunk)]
        starts.append(len(blocks))
    return chunk * p, np.array(blocks, np.int64), np.array(starts, np.int64)


def _gemm_merged(x, w, b, result, geom, groups):
    """Windows of a chunk of images side by side, one GEMM per group into a
    buffer, then a copy into NCHW that adds the bias: as one task per thread
    (an equal share of the images' output rows each) where a BLAS is callable
    from kernels, else chunk by chunk between parallel kernels."""
    n, c = x.shape[:2]
    o = w.shape[0]
    rows, ohw = c * geom.kh * geom.kw, geom.oh * geom.ow
    og, rg = o // groups, rows // groups
    per_image = (rows + o) * ohw * x.itemsize
    w2 = w.reshape(o, rg)
    out3 = result.reshape(n, o, ohw)
    addr, threads = _blas.address(x.dtype), thread_count()
    grid = shifted_grid(geom, x.shape, groups) if addr is not None else None
    if grid is not None and _gemm_shifted(addr, x, w, b, result, geom, groups, threads, grid):
        return
    plan = image_blocks(n, geom.oh, geom.ow, (rows + o) * x.itemsize, threads) if addr is not None else None
    if plan is not None:
        capacity, blocks, starts = plan
        stages = window_stages(geom, x.shape, groups, threads, reordered_weight=o)
        with _workspace.scratch(x.dtype, (threads, rows * capacity), (threads, o * capacity), stages,
                                (o, rg) if stages[1] else (0, 0)) as (cols, tmp, stage, reordered), \
                _blas.one_thread():
            if stages[1]:
                w2 = window_weight(w, reordered)
            _merged_tasks(addr, x, w2, b, out3, cols, tmp, stage, blocks, starts, groups, *geom.taps,
                          geom.ow, work=result.size * rg)
        return
    chunk = _workspace.images_per_chunk(n, per_image, ohw)
    with _workspace.scratch(x.dtype, (rows * chunk * ohw,), (o * chunk * ohw,)) as (cols_buffer, tmp_buffer):
        for start in range(0, n, chunk):
            width = (min(n, start + chunk) - start) * ohw
            cols = im2col_into(x[start:start + width // ohw], geom,
                               cols_buffer[:rows * width].reshape(rows, width))
            tmp = tmp_buffer[:o * width].reshape(o, width)
            for g in range(groups):  # (P, Rg) @ (Rg, Og) ran faster here than (Og, Rg) @ (Rg, P)
                np.matmul(cols[g * rg:(g + 1) * rg].T, w2[g * og:(g + 1) * og].T,
                          out=tmp[g * og:(g + 1) * og].T)
            _unmerge(tmp, out3, b, start, work=tmp.size)


def _gemm_stacked(x, w, b, result, geom, groups, has_bias):
    """Per image stacked columns, per group one batched GEMM written straight into NCHW.

    A chunk is a few whole images, or, where one image's columns exceed the
    budget, a band of output rows of one image (the GEMM writes that band of
    each output plane). With groups=1 the bias rides in the GEMM as a row of ones.
    Where a BLAS is callable from kernels and there are enough (image, band)
    pairs for the threads, each thread's task runs its pairs start to end.
    """
    n, c = x.shape[:2]
    o = w.shape[0]
    rows, ow = c * geom.kh * geom.kw, geom.ow
    fold_bias = has_bias and groups == 1
    stride = rows + fold_bias
    row_bytes = stride * ow * x.itemsize
    if row_bytes * geom.oh <= _BAND_BYTES:
        chunk, band = min(n, _BAND_BYTES // (row_bytes * geom.oh)), geom.oh
    else:
        chunk, band = 1, max(1, _BAND_BYTES // row_bytes)
    w2 = w.reshape(groups, o // groups, rows // groups)
    if fold_bias:
        w2 = np.concatenate([w2[0], b[:, None]], axis=1)[None]
    out3 = result.reshape(n, o, geom.oh * ow)
    addr, threads = _blas.address(x.dtype), thread_count()
    if addr is not None and n * -(-geom.oh // band) >= threads:
        band = min(band, geom.oh)  # a task is a band of one image
        with _workspace.scratch(x.dtype, (threads, stride * band * ow)) as (cols,), _blas.one_thread():
            _stacked_tasks(addr, x, w2, b, out3, cols, band, has_bias and not fold_bias, groups,
                           *geom.taps, geom.oh, ow, work=result.size * (rows // groups))
        return
    with _workspace.scratch(x.dtype, (chunk * stride * band * ow,)) as (cols,):
        _stacked_chunks(x, w2, out3, cols, geom, groups, chunk, band, stride, fold_bias)
    if has_bias and not fold_bias:
        _add_bias(out3, b, work=out3.size)


@kernel
def _stacked_tasks(addr, x, w2, b, out3, cols, band, add_bias, groups, kh, kw, sh, sw, dh, dw, pt, pl,
                   oh, ow):
    """:func:`_gemm_stacked` with one task per thread over (image, band of output
    rows) pairs: the band's columns in ``cols[t]`` (R, band*OW), below them a row of
    ones where ``w2`` carries the bias, then single-threaded GEMMs into NCHW."""
    threads, n = cols.shape[0], x.shape[0]
    og, stride = w2.shape[1], w2.shape[2] * groups
    rows = x.shape[1] * kh * kw
    bands = -(-oh // band)
    items = n * bands
    for t in prange(threads):
        for item in range(t * items // threads, (t + 1) * items // threads):
            i = item // bands
            y0 = (item - i * bands) * band
            y1 = min(oh, y0 + band)
            c = cols[t, :stride * (y1 - y0) * ow].reshape((stride, (y1 - y0) * ow))
            if stride > rows:
                c[rows:] = 1
            im2col_serial(x[i:i + 1], c, 1, stride, kh, kw, sh, sw, dh, dw, pt, pl, y0, y1, ow)
            rg = w2.shape[2]
            for g in range(groups):
                dst = out3[i, g * og:(g + 1) * og, y0 * ow:y1 * ow]
                gemm(addr, w2[g], c[g * rg:(g + 1) * rg], dst, False, 0.0)
            if add_bias:
                for k in range(out3.shape[1]):
                    out3[i, k, y0 * ow:y1 * ow] += b[k]


def _stacked_chunks(x, w2, out3, cols, geom, groups, chunk, band, stride, fold_bias):
    """The chunks of :func:`_gemm_stacked`, their columns in ``cols``."""
    n, ow = x.shape[0], geom.ow
    rows = stride - fold_bias
    og, rg = w2.shape[1], rows // groups
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        for y0 in range(0, geom.oh, band):
            y1 = min(geom.oh, y0 + band)
            buf = cols[:(stop - start) * stride * (y1 - y0) * ow].reshape(stop - start, stride, -1)
            if fold_bias:
                buf[:, rows] = 1
            im2col_stacked_into(x[start:stop], geom, buf, y0, y1)
            dst = out3[start:stop, :, y0 * ow:y1 * ow]
            if groups == 1:
                np.matmul(w2[0], buf, out=dst)
            else:
                for g in range(groups):
                    np.matmul(w2[g], buf[:, g * rg:(g + 1) * rg], out=dst[:, g * og:(g + 1) * og])


@accepts_dask
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
    result = output(func, out, (x.shape[0], weight.shape[0], geom.oh, geom.ow), dtype, inputs)
    if not uses_kernel(dtype):
        return reference.conv2d(x, weight, bias, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, out=result)
    b = None if bias is None else contiguous(bias, dtype)
    return convolve_into(contiguous(x, dtype), contiguous(weight, dtype), b, geom, groups, result)


def reads_subsample(geom):
    """Whether the window is an unpadded, strided 1x1: it reads only the pixels
    ``x[:, :, ::sh, ::sw]``, and is a stride-1 1x1 over a copy of them (measured:
    1.04-1.7x faster than im2col columns of x)."""
    g = geom
    return (g.kh, g.kw) == (1, 1) and g.pt == g.pb == g.pl == g.pr == 0 and (g.sh, g.sw) != (1, 1)


def route(x_shape, w_shape, geom, groups):
    """The kernel :func:`convolve_into` takes for these shapes: "small", "depthwise_3x3",
    "direct", "pointwise", "whole_window", "winograd" or "gemm" (im2col + GEMM).
    "direct" and "winograd" fall back to "gemm" on non-finite weights or inputs."""
    n, c = x_shape[:2]
    o, cg, kh, kw = w_shape
    g = geom
    unpadded = g.pt == g.pb == g.pl == g.pr == 0
    if n * o * g.oh * g.ow * cg * kh * kw < _SMALL_MACS:
        return "small"
    if cg == 1:
        return "depthwise_3x3" if (kh, kw) == (3, 3) and g.sh == g.sw == g.dh == g.dw == 1 else "direct"
    if groups == 1 and kh == kw == 1 and unpadded:
        return "pointwise"
    if groups == 1 and unpadded and (kh, kw) == x_shape[2:] and g.dh == g.dw == 1:
        return "whole_window"
    if _winograd.handles(g) and _winograd.worthwhile(n, cg, o // groups, g.oh, g.ow):
        return "winograd"
    return "gemm"


def convolve_into(x, w, bias, geom, groups, result):
    """conv2d's kernel dispatch on validated arrays; fills and returns ``result``.

    ``x`` (N, C, H, W) and ``w`` (O, C // groups, KH, KW) are C-contiguous in
    ``result``'s dtype, ``bias`` is (O,) or None and ``geom`` was made for x's
    plane. Package-internal: conv2d_grad_input runs its transposed convolution
    through it.
    """
    if not result.size:
        return result
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    dtype = result.dtype
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(o, dtype)
    if c == 0:
        result[...] = b[:, None, None]
        return result
    g = geom
    if reads_subsample(g):
        return convolve_into(np.ascontiguousarray(x[:, :, ::g.sh, ::g.sw]), w, bias,
                             Geometry(1, 1, 1, 1, 1, 1, 0, 0, 0, 0, g.oh, g.ow), groups, result)
    macs = result.size * cg * kh * kw
    kind = route(x.shape, w.shape, g, groups)
    if kind == "small":
        p = n * g.oh * g.ow
        _small(x, w.reshape(o, -1), b, np.empty((c * kh * kw, p), dtype), np.empty((o, p), dtype),
               result, groups, kh, kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl)
    elif kind == "depthwise_3x3":
        _depthwise_3x3(x, w, b, result, groups, g.pt, g.pl, work=macs)
    elif kind == "direct" and np.isfinite(w).all():  # the direct kernel skips taps on zero padding
        _direct(x, w, b, result, groups, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                _column_ranges(g, x.shape[3]), work=macs)
    elif kind == "pointwise":
        out3 = result.reshape(n, o, -1)
        pointwise(w.reshape(o, c), x.reshape(n, c, -1), out3)
        if has_bias:
            _add_bias(out3, b, work=result.size)
    elif kind == "whole_window":
        out2 = result.reshape(n, o)
        np.matmul(x.reshape(n, -1), w.reshape(o, -1).T, out=out2)
        if has_bias:
            out2 += b
    # Winograd declines (None) inputs with NaN, Inf or huge values: they go the exact way
    elif kind != "winograd" or _winograd.convolve(x, w, b, g, result) is None:
        _gemm_path(x, w, b, result, geom, groups, has_bias)
    return result
