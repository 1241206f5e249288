"""Winograd convolution for 3x3 and 5x5, stride-1, undilated conv2d: the
forward and the weight gradient. With groups, the transforms run over every
channel at once and each transform coordinate's product splits into one GEMM
per group.

F(m x m, r x r) computes an m x m block of outputs from an alpha x alpha input
patch ``d`` (``alpha = m + r - 1``) with ``alpha**2`` multiplications instead
of ``r**2 m**2``::

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Summed over the input channels, the elementwise product becomes ``alpha**2``
independent GEMMs, one per transform coordinate ``xi = (i, j)``::

    U[xi, c, o] = (G g[o, c] G^T)[i, j]          weights, every call (no stale cache)
    V[xi, t, c] = (B^T d[c, t] B)[i, j]          tiles t = (tile row, tile column, image)
    M[xi]       = V[xi] @ U[xi]                  alpha**2 GEMMs per block of tiles
    y[n, o, tile t] = A^T M[:, t, o] A + bias[o] (edge tiles clipped)

Channels are innermost in V and M, so that the transforms run over contiguous
runs of channels and both GEMM operands are untransposed (a transposed operand
ran at 0.55-0.9x the rate here).

The matrices come from the Cook-Toom construction over a set of interpolation
points (:func:`_cook_toom`); one table-driven kernel serves every variant.

Schedule: each thread takes an equal share of the images' tile rows, split into
blocks (:func:`fastconv._workspace.blocks`: groups of images, or bands of tile
rows of one image, V and M of a block about ``BLOCK_BYTES``), and one numba task
per thread runs its blocks start to end: input transform, the alpha**2 GEMMs as
single-threaded BLAS calls (:mod:`fastconv._blas`), output transform, while the
block is in the core's cache. Where no BLAS is callable
from kernels, larger chunks (``CHUNK_BYTES``) alternate parallel transforms with
one batched NumPy matmul.

The transforms are separable and each pass is a linear combination of
contiguous vectors (:func:`_combine`). The input transform first copies an
image's band of padded rows with its channels innermost (the only strided
access, zero padding included), then combines whole staged rows along the
height and runs of channels along the width. The output transform combines
whole planes of M and reorders only while writing the NCHW result.

The weight gradient runs the same steps adjointly (:func:`grad_weight`):
the input transform with ``A`` in place of ``B^T`` gives ``dM = A dy A^T`` over
the output tiles, each thread sums ``dM[xi]^T @ V[xi]`` over its blocks into a
partial dU, maps it back to the r x r taps (``G^T dU G``, one GEMM with
kron(G, G)), and the threads' taps are summed.

Inputs with NaN, Inf or values large enough to overflow the transforms are
declined (the functions return None) and computed exactly by the caller.
"""
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from numba import prange

from . import _blas, _workspace
from ._blas import gemm, gemm_at
from ._config import kernel, serial_kernel, thread_count
from ._intrinsics import VECTOR_BYTES, transpose_block
from .columns import channels_first, stage_rows


class Variant(NamedTuple):
    """The transform matrices of one F(m x m, r x r) (float64)."""

    m: int
    r: int
    alpha: int
    bt: np.ndarray  # (alpha, alpha) input transform B^T
    g: np.ndarray  # (alpha, r) weight transform G
    at: np.ndarray  # (m, alpha) output transform A^T
    gg: np.ndarray  # (alpha**2, r**2) kron(G, G): gg[i*alpha + j, k*r + l] = G[i, k] G[j, l]
    growth: float  # bound on |y| / (C max|x| max|w|) through the three transforms


def _cook_toom(points, r=3):
    """F(m, r) for the finite interpolation ``points`` plus the point at infinity
    (``m = len(points) + 2 - r``), in exact rational arithmetic.

    ``A^T[i, j] = p_j**i``; ``G[j, k] = p_j**k / prod_{l != j}(p_j - p_l)``;
    row ``j`` of ``B^T`` holds the coefficients of ``prod_{l != j}(x - p_l)``
    and its last row those of ``prod_l (x - p_l)`` (Lavin and Gray, 2016).
    """
    p = [Fraction(v) for v in points]
    alpha = len(p) + 1
    m = alpha + 1 - r

    def poly(roots):  # coefficients of prod (x - root), lowest degree first
        c = [Fraction(1)]
        for root in roots:
            c = [a - root * b for a, b in zip([Fraction(0)] + c, c + [Fraction(0)])]
        return c

    at = np.zeros((m, alpha))
    g = np.zeros((alpha, r))
    bt = np.zeros((alpha, alpha))
    for j, pj in enumerate(p):
        others = p[:j] + p[j + 1:]
        scale = np.prod([pj - q for q in others])
        at[:, j] = [float(pj ** i) for i in range(m)]
        g[j] = [float(pj ** k / scale) for k in range(r)]
        bt[j, :alpha - 1] = [float(v) for v in poly(others)]
    at[m - 1, alpha - 1] = g[alpha - 1, r - 1] = 1.0
    bt[alpha - 1] = [float(v) for v in poly(p)]

    def gain(a):  # the largest amplification of the 2-D transform a d a^T
        return float(np.abs(a).sum(axis=1).max()) ** 2

    return Variant(m, r, alpha, bt, g, at, np.kron(g, g), gain(bt) * gain(g) * gain(at))


#: F(2x2, 3x3): 2.25x fewer multiplications; float32 error like a direct sum.
F2 = _cook_toom([0, 1, -1])
#: F(4x4, 3x3): 4x fewer multiplications. The points 2 and -1/2 (instead of
#: Lavin's 2 and -2) cut the float32 error about 3x (Barabasz et al., 2020).
F4 = _cook_toom([0, 1, -1, 2, Fraction(-1, 2)])
#: F(2x2, 5x5): 2.8x fewer multiplications, on F4's points (float32 error
#: 2-9e-6 of the largest output of a tile at C=256, as F4's).
F2_5 = _cook_toom([0, 1, -1, 2, Fraction(-1, 2)], r=5)


@serial_kernel
def _combine(out, at, out_step, src, starts, src_step, coefs, rows, n):
    """out[at + r*out_step + p] = sum_t coefs[t] * src[starts[t] + r*src_step + p]
    for r < rows and p < n, up to five terms per pass, on flat arrays (every row
    of F4's transforms has four or five: one pass reads each source once and
    writes the result once).

    Indices are unsigned: numba then emits no negative-index wraparound and the
    loops vectorize without a view per source (measured: a slice costs ~70 ns,
    the whole call on 200 elements ~25 ns)."""
    n = np.uint64(n)
    for r in range(rows):
        base = np.uint64(at + r * out_step)
        shift = r * src_step
        for t in range(0, coefs.shape[0], 5):
            terms = min(5, coefs.shape[0] - t)
            first = t == 0
            c0, s0 = coefs[t], np.uint64(starts[t] + shift)
            # the last four terms, right-aligned (repeating term t where there are fewer)
            i1, i2, i3 = max(t, t + terms - 4), max(t, t + terms - 3), max(t, t + terms - 2)
            c1, s1 = coefs[i1], np.uint64(starts[i1] + shift)
            c2, s2 = coefs[i2], np.uint64(starts[i2] + shift)
            c3, s3 = coefs[i3], np.uint64(starts[i3] + shift)
            c4, s4 = coefs[t + terms - 1], np.uint64(starts[t + terms - 1] + shift)
            if terms == 1:
                if first:
                    for p in range(n):
                        out[base + p] = c0 * src[s0 + p]
                else:
                    for p in range(n):
                        out[base + p] += c0 * src[s0 + p]
            elif terms == 2:
                if first:
                    for p in range(n):
                        out[base + p] = c0 * src[s0 + p] + c4 * src[s4 + p]
                else:
                    for p in range(n):
                        out[base + p] += c0 * src[s0 + p] + c4 * src[s4 + p]
            elif terms == 3:
                if first:
                    for p in range(n):
                        out[base + p] = c0 * src[s0 + p] + c3 * src[s3 + p] + c4 * src[s4 + p]
                else:
                    for p in range(n):
                        out[base + p] += c0 * src[s0 + p] + c3 * src[s3 + p] + c4 * src[s4 + p]
            elif terms == 4:
                if first:
                    for p in range(n):
                        out[base + p] = (c0 * src[s0 + p] + c2 * src[s2 + p] + c3 * src[s3 + p]
                                         + c4 * src[s4 + p])
                else:
                    for p in range(n):
                        out[base + p] += (c0 * src[s0 + p] + c2 * src[s2 + p] + c3 * src[s3 + p]
                                          + c4 * src[s4 + p])
            elif first:
                for p in range(n):
                    out[base + p] = (c0 * src[s0 + p] + c1 * src[s1 + p] + c2 * src[s2 + p]
                                     + c3 * src[s3 + p] + c4 * src[s4 + p])
            else:
                for p in range(n):
                    out[base + p] += (c0 * src[s0 + p] + c1 * src[s1 + p] + c2 * src[s2 + p]
                                      + c3 * src[s3 + p] + c4 * src[s4 + p])


@serial_kernel
def _within(values, limit):
    """Whether every value lies in [-limit, limit] (False for NaN)."""
    count = 0
    for p in range(np.uint64(values.shape[0])):
        count += not (abs(values[p]) <= limit)
    return count == 0


@serial_kernel
def _terms(row, starts, coefs, offsets, base):
    """The nonzero entries of a matrix row as (start, coef) pairs: start = base + offsets[i]."""
    count = 0
    for i in range(row.shape[0]):
        if row[i] != 0:
            starts[count] = base + offsets[i]
            coefs[count] = row[i]
            count += 1
    return starts[:count], coefs[:count]


#: Channels per parallel task where the transforms run as parallel kernels
#: between NumPy matmuls (no BLAS callable from the kernels).
GROUP = 16


@serial_kernel
def _input_channels(x, bt, m, pt, pl, n0, a0, th, tw, v, c0, c1, limit):
    """v[i*alpha + j, (k*th + a)*tw + b, c] = (B^T d B)[i, j] for channels
    c0 <= c < c1, where d is the size x size patch (``alpha, size = bt.shape``)
    of image ``n0 + k`` (k < nb), channel c, at padded row ``(a0 + a)*m`` and
    padded column ``b*m`` (zero outside the image). Returns whether every input
    value read lies within ``[-limit, limit]`` (False for NaN and Inf).

    With ``bt = A`` (``size = m``) this is the adjoint of the output transform,
    ``A dy A^T`` over the m x m tiles of a gradient ``dy``.

    Per image, the band of padded rows the tiles read is first copied with its
    channels innermost and its columns in phase order (column ``b*m + l`` at
    ``l*phase + b``; :func:`fastconv.columns.stage_rows`). Both passes are then
    linear combinations of long contiguous runs (:func:`_combine`): whole staged
    rows along the height, and along the width, per tile row, the runs of all
    tile columns of one phase."""
    alpha, size = bt.shape
    group, tiles, stride = c1 - c0, v.shape[1], v.shape[2]
    nb = tiles // (th * tw)
    phase = tw + (size - 1) // m  # tile columns of a phase: b + l // m for b < tw, l < size
    rows, pitch = th * m + size - m, m * phase * group  # the band's padded rows, one staged row
    vf = v.ravel()
    starts = np.empty(size, np.int64)
    coefs = np.empty(size, x.dtype)
    row_offsets = np.arange(size) * pitch
    col_offsets = ((np.arange(size) % m) * phase + np.arange(size) // m) * group
    staged = np.empty(rows * pitch, x.dtype)
    cols = np.empty(alpha * pitch, x.dtype)  # one tile row's column pass: cols[i, l, b, c]
    inside = True
    for k in range(nb):
        stage_rows(x, n0 + k, c0, group, a0 * m, rows, 1, pt, pl, m, phase, staged)
        inside &= _within(staged, limit)
        for a in range(th):
            # column pass cols[i] = sum_r B^T[i, r] staged[a*m + r], then row pass
            # v[i*alpha + j, tiles (k, a, :)] = sum_l B^T[j, l] cols[i, l % m, l // m:]
            for i in range(alpha):
                st, co = _terms(bt[i], starts, coefs, row_offsets, a * m * pitch)
                _combine(cols, i * pitch, 0, staged, st, 0, co, 1, pitch)
            out = ((k * th + a) * tw) * stride + c0
            for i in range(alpha):
                for j in range(alpha):
                    st, co = _terms(bt[j], starts, coefs, col_offsets, i * pitch)
                    if group == stride:
                        _combine(vf, (i * alpha + j) * tiles * stride + out, 0, cols, st, 0, co, 1,
                                 tw * group)
                    else:
                        _combine(vf, (i * alpha + j) * tiles * stride + out, stride, cols, st, group,
                                 co, tw, group)
    return inside


@serial_kernel
def _output_tiles(mm, at, bias, out, n0, a0, th, tw):
    """out[n0 + k, o, tile (a0 + a, b)] = (A^T M A)[:, (k*th + a)*tw + b, o] + bias[o]
    for every output channel, clipped to the output plane; ``mm`` is
    (alpha**2, tiles, O), channels innermost, so both passes run over whole
    planes of M and only the last step reorders."""
    m, alpha = at.shape
    n_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    tiles = mm.shape[1]
    nb = tiles // (th * tw)
    plane = tiles * n_out
    flat, outf = mm.ravel(), out.ravel()
    col_offsets = np.arange(alpha) * (alpha * plane)  # M[i*alpha + j] over i
    row_offsets = np.arange(alpha) * plane  # s[j] over j
    starts = np.empty(alpha, np.int64)
    coefs = np.empty(alpha, mm.dtype)
    step = np.uint64(n_out)  # from one tile column to the next in y
    whole = min(tw, ow // m)  # tile columns inside the plane
    # The columns of whole tiles move in square blocks with vector shuffles
    # (:func:`fastconv.columns.channels_first`) where there are at least L of
    # them and L channels; the others go one by one.
    lanes = VECTOR_BYTES // mm.itemsize
    blocked = n_out >= lanes and whole * m >= lanes
    blocked_channels = n_out if blocked else 0
    blocked_columns = whole * m if blocked else 0
    pixel_at = np.empty(blocked_columns, np.uint64)  # column of the row -> its channels in y
    for col in range(blocked_columns):
        pixel_at[col] = (col % m) * plane + (col // m) * n_out
    s = np.empty(alpha * plane, mm.dtype)
    y = np.empty(m * plane, mm.dtype)
    for u in range(m):
        # column pass s[j] = sum_i A^T[u, i] M[i*alpha + j], then row pass y[v] = sum_j A^T[v, j] s[j]
        for j in range(alpha):
            st, co = _terms(at[u], starts, coefs, col_offsets, j * plane)
            _combine(s, j * plane, 0, flat, st, 0, co, 1, plane)
        for vv in range(m):
            st, co = _terms(at[vv], starts, coefs, row_offsets, 0)
            _combine(y, vv * plane, 0, s, st, 0, co, 1, plane)
        for k in range(nb):
            for a in range(th):
                row = (a0 + a) * m + u
                if row >= oh:
                    break
                tile = (k * th + a) * tw
                dst = np.uint64((((n0 + k) * n_out) * oh + row) * ow)
                if blocked:
                    channels_first(y[tile * n_out:], pixel_at, out[n0 + k].reshape((n_out, oh * ow)), bias,
                                   row * ow)
                for o in range(n_out):  # the columns of channels not moved in blocks
                    bo = bias[o]
                    d = dst + np.uint64(o * oh * ow)
                    src = np.uint64(tile * n_out + o)
                    first = blocked_columns // m if o < blocked_channels else 0
                    if m == 4:
                        p0, p1 = src, src + np.uint64(plane)
                        p2, p3 = p1 + np.uint64(plane), p1 + np.uint64(2 * plane)
                        for b in range(np.uint64(first), np.uint64(whole)):
                            c, e = d + np.uint64(4) * b, b * step
                            outf[c] = y[p0 + e] + bo
                            outf[c + np.uint64(1)] = y[p1 + e] + bo
                            outf[c + np.uint64(2)] = y[p2 + e] + bo
                            outf[c + np.uint64(3)] = y[p3 + e] + bo
                        first = max(first, whole)
                    elif m == 2:
                        p0, p1 = src, src + np.uint64(plane)
                        for b in range(np.uint64(first), np.uint64(whole)):
                            c, e = d + np.uint64(2) * b, b * step
                            outf[c] = y[p0 + e] + bo
                            outf[c + np.uint64(1)] = y[p1 + e] + bo
                        first = max(first, whole)
                    for b in range(first, tw):
                        e = src + np.uint64(b) * step
                        for vv in range(min(m, ow - b * m)):
                            outf[d + np.uint64(b * m + vv)] = y[e + np.uint64(vv * plane)] + bo


@kernel
def _input_transform(x, bt, m, pt, pl, n0, a0, th, tw, v, limit, inside):
    """:func:`_input_channels` for every group of channels, one task per group."""
    channels = x.shape[1]
    for g in prange(-(-channels // GROUP)):
        c0 = g * GROUP
        inside[g] = _input_channels(x, bt, m, pt, pl, n0, a0, th, tw, v, c0,
                                    min(channels, c0 + GROUP), limit)


@serial_kernel
def _block_views(blocks, k, tw, vbuf, mbuf, t, c, o, alpha2):
    """Block k's (first image, images, first tile row, tile rows) and thread t's
    V (alpha2, tiles, c) and M (alpha2, tiles, o) for it."""
    n0, nb, a0, ta = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
    tiles = nb * ta * tw
    v = vbuf[t, :alpha2 * c * tiles].reshape((alpha2, tiles, c))
    mm = mbuf[t, :alpha2 * o * tiles].reshape((alpha2, tiles, o))
    return n0, a0, ta, v, mm


@kernel
def _fused_forward(x, u, bt, at, bias, out, m, pt, pl, tw, blocks, starts, addr, vbuf, mbuf, limit, inside):
    """The whole Winograd convolution, one task per thread: for each of the
    thread's blocks of tiles, the input transform into the thread's V, the
    alpha**2 GEMMs ``M[xi] = V[xi] @ U[xi]`` (single-threaded BLAS at ``addr``;
    one per group, U being (alpha**2, C/groups, O)) and the output transform,
    while V and M are in the core's cache.
    ``inside[t]`` becomes False (and thread t stops) where an input value is
    beyond ``limit``."""
    threads = vbuf.shape[0]
    alpha2, cg, n_out = u.shape
    channels = x.shape[1]
    og = n_out // (channels // cg)
    for t in prange(threads):
        for k in range(starts[t], starts[t + 1]):
            n0, a0, ta, v, mm = _block_views(blocks, k, tw, vbuf, mbuf, t, channels, n_out, alpha2)
            inside[t] &= _input_channels(x, bt, m, pt, pl, n0, a0, ta, tw, v, 0, channels, limit)
            if not inside[t]:
                break
            for xi in range(alpha2):
                for g in range(channels // cg):  # with groups, the diagonal blocks of the product
                    gemm(addr, v[xi, :, g * cg:(g + 1) * cg], u[xi, :, g * og:(g + 1) * og],
                         mm[xi, :, g * og:(g + 1) * og], False, 0.0)
            _output_tiles(mm, at, bias, out, n0, a0, ta, tw)


@kernel
def _fused_grad_weight(x, dy, bt, a, m, pt, pl, tw, blocks, starts, addr, vbuf, mbuf, du, gg, dw_parts,
                       limit, inside):
    """The Winograd weight gradient, one task per thread: for each of the
    thread's blocks, V of x and dM = A dy A^T, then ``du[t, xi] += dM[xi]^T @ V[xi]``
    per group (du being (threads, alpha**2, O, C/groups)); at the end the thread's
    dU back to the taps, ``dw_parts[t] = du[t]^T kron(G, G)`` ((O*C/groups, r*r);
    zero for a thread without blocks)."""
    threads = vbuf.shape[0]
    alpha2, n_out, cg = du.shape[1], du.shape[2], du.shape[3]
    channels = x.shape[1]
    og = n_out // (channels // cg)
    for t in prange(threads):
        first, last = starts[t], starts[t + 1]
        for k in range(first, last):
            n0, a0, ta, v, dm = _block_views(blocks, k, tw, vbuf, mbuf, t, channels, n_out, alpha2)
            inside[t] &= _input_channels(x, bt, m, pt, pl, n0, a0, ta, tw, v, 0, channels, limit)
            inside[t] &= _input_channels(dy, a, m, 0, 0, n0, a0, ta, tw, dm, 0, n_out, limit)
            if not inside[t]:
                break
            for xi in range(alpha2):
                for g in range(channels // cg):
                    gemm_at(addr, dm[xi, :, g * og:(g + 1) * og], v[xi, :, g * cg:(g + 1) * cg],
                            du[t, xi, g * og:(g + 1) * og], 0.0 if k == first else 1.0)
        if first == last:
            dw_parts[t] = 0
        elif inside[t]:
            gemm_at(addr, du[t].reshape((alpha2, n_out * cg)), gg, dw_parts[t], 0.0)


def weight_transform(w, variant, u, taps, adjoint=False):
    """U[xi, c, o] = (G w[o, c] G^T)[i, j], ``xi = i*alpha + j``, into ``u``
    ``(alpha**2, C, O)`` in ``w.dtype``, for a C-contiguous w (O, C, r, r).
    Recomputed on every call: weights are often updated in place. ``taps`` is
    scratch for the filters' taps reordered; with fewer than ``w.size`` values,
    or with ``adjoint``, each piece gathers its own.

    With ``adjoint``, ``w`` is the weight (O, C/groups, r, r) of the convolution
    whose input gradient this one computes, and U is that of its flipped
    transpose: per group, channels and filters swapped, taps reversed; ``u`` is
    (alpha**2, O/groups, C).

    Returns max|w|, NaN where w holds a NaN."""
    size = u.shape[1] * u.shape[2]
    threads = thread_count()
    pieces = max(threads, -(-size // WEIGHT_PIECE))
    w3 = w.reshape(w.shape[0], w.shape[1], -1)
    lanes = VECTOR_BYTES // w.itemsize
    if adjoint or taps.size < w.size or w.shape[0] < lanes or w3[0].size < lanes:
        taps = taps[:0]  # gathered a filter at a time
    else:
        _filter_taps(w.reshape(w.shape[0], -1), w3.shape[2], taps, threads, work=w.size)
    _weight_transform(w3, variant.g.astype(w.dtype), u, taps, pieces, threads, adjoint, work=u.size)
    return max(w.max(), -w.min())


@kernel
def _filter_taps(w2, taps_count, taps, threads):
    """taps[k*C*O + c*O + o] = w[o, c, k] for w2 (O, C*taps_count) (at least L
    rows and columns), by square blocks of L filters by L taps
    (:func:`fastconv._intrinsics.transpose_block`, the last ones overlapping).
    Gathering a filter's taps at a time took 0.6-0.8 ns a value."""
    filters, width = w2.shape
    lanes = VECTOR_BYTES // w2.itemsize
    wf = w2.ravel()
    src_rows = (np.arange(lanes) * width).astype(np.uint64)
    dst_rows = np.empty(width, np.uint64)  # tap column c*taps_count + k -> its taps row
    for j in range(width):
        dst_rows[j] = ((j % taps_count) * (width // taps_count) + j // taps_count) * filters
    blocks = -(-width // lanes)
    for t in prange(threads):
        for block in range(t * blocks // threads, (t + 1) * blocks // threads):
            j = min(block * lanes, width - lanes)
            for o in range(0, filters, lanes):
                o = min(o, filters - lanes)
                transpose_block(wf, o * width + j, src_rows, taps, o, dst_rows[j:j + lanes])


@kernel
def _weight_transform(w, g, u, taps_in, pieces, threads, adjoint):
    """:func:`weight_transform` of w (O, C/groups, r*r) as two passes of linear
    combinations (:func:`_combine`) over runs of U's (rows, columns) plane,
    ``pieces`` of them, split among ``threads`` tasks (a GEMM with a 9-long inner
    dimension ran at a tenth of the BLAS peak here), from ``taps_in`` (r*r, rows,
    columns) where it is not empty (:func:`_filter_taps`), else gathering each
    piece's taps a filter at a time. Each thread allocates its scratch once:
    allocations of ~100 KB per piece cost more than the piece."""
    channels, taps_count = w.shape[1], w.shape[2]
    alpha, r = g.shape
    rows, columns = u.shape[1], u.shape[2]
    size = rows * columns
    last = taps_count - 1
    wf, uf = w.ravel(), u.ravel()
    longest = -(-size // pieces)
    gather = taps_in.size == 0
    for t in prange(threads):
        taps = np.empty(taps_count * longest if gather else 0, w.dtype)  # taps[k, e - p0]
        half = np.empty(alpha * r * longest, w.dtype)  # (G w)[i, l] = sum_a G[i, a] w[a, l]
        starts = np.empty(r, np.int64)
        coefs = np.empty(r, w.dtype)
        for piece in range(t * pieces // threads, (t + 1) * pieces // threads):
            p0, p1 = piece * size // pieces, (piece + 1) * size // pieces
            n = p1 - p0
            for e in range(p0, p1 if gather else p0):  # no gathering where taps_in holds them
                row = e // columns
                column = e - row * columns
                if adjoint:  # w[group's filter row, channel column within the group], reversed
                    group = column // channels
                    src = np.uint64(((group * rows + row) * channels + column - group * channels)
                                    * taps_count)
                    for k in range(taps_count):
                        taps[k * n + e - p0] = wf[src + np.uint64(last - k)]
                else:  # w[filter column, channel row]
                    src = np.uint64((column * channels + row) * taps_count)
                    for k in range(taps_count):
                        taps[k * n + e - p0] = wf[src + np.uint64(k)]
            source, pitch, at = (taps, n, 0) if gather else (taps_in, size, p0)
            tap_rows, half_rows = np.arange(r) * (r * pitch), np.arange(r) * n
            for i in range(alpha):
                st, co = _terms(g[i], starts, coefs, tap_rows, at)
                _combine(half, i * r * n, n, source, st, pitch, co, r, n)
            for i in range(alpha):  # U[i, j] = sum_l G[j, l] (G w)[i, l]
                for j in range(alpha):
                    st, co = _terms(g[j], starts, coefs, half_rows, i * r * n)
                    _combine(uf, (i * alpha + j) * size + p0, 0, half, st, 0, co, 1, n)


#: Filter taps per piece of the weight transform: its scratch stays in cache.
WEIGHT_PIECE = 2048
#: Bytes of V and M per block of tiles in the fused schedule: a thread's block
#: stays in its core's cache from the input transform to the output transform
#: ((8, 64, 56, 56): 3.0 ms at 1 MB blocks, 3.3 ms at 4 MB, on 1 MB of L2 a core).
BLOCK_BYTES = 1 << 20
#: Most bytes of V and M per block, however many channels.
MAX_BLOCK_BYTES = 16 << 20
#: Fewest tiles in a block: the GEMMs' inner dimension.
MIN_BLOCK_TILES = 64
#: Bytes of V and M per chunk where the GEMMs run as NumPy matmuls between
#: parallel transforms (no BLAS callable from the kernels).
CHUNK_BYTES = 32 << 20


def _tiles(n, oh, ow, m):
    return n * -(-oh // m) * -(-ow // m)


def handles(geom):
    """Whether a window is one the Winograd variants compute: square 3x3 or 5x5,
    stride 1, undilated."""
    g = geom
    return g.kh == g.kw and g.kh in (3, 5) and g.sh == g.sw == g.dh == g.dw == 1


def worthwhile(n, c, o, oh, ow):
    """Whether Winograd beats im2col + GEMM on a 3x3 stride-1 shape (a 5x5 one
    saves more: the same rule serves it). The transforms cost a fixed overhead
    per channel and every block of tiles reads all of U, so each thread needs
    enough tiles (measured, F(2x2) tiles per thread: (4, 256, 14, 14) with 98
    ran 1.35x faster than im2col + GEMM, (16, 512, 7, 7) with 128 1.1x faster,
    (4, 512, 7, 7) with 32 1.9x slower). 16 to 31 channels need an image per
    thread too (1.1-1.5x faster at (32, 16, 32, 32) -> 32, (8, 16, 64, 64) -> 16
    and (2, 16, 112, 112) -> 32; 1.3x slower at (1, 16, 56, 56) -> 16). With 8
    to 15, the output transform must have no more channels than the input one
    and planes of 32x32 or more (1.05-1.55x faster on 8 such shapes, 8 to 16
    channels; 0.7x at (32, 8, 16, 16) -> 8; 0.67-0.94x from 3, 4, 8 or 12
    channels to twice as many)."""
    threads = thread_count()
    if n < threads and min(c, o) < 32:
        return False
    if min(c, o) < 16 and not (8 <= o <= c and oh * ow >= 1024):
        return False
    return _tiles(n, oh, ow, 2) / threads >= max(48, max(c, o) / 4)


def grad_weight_worthwhile(n, c, o, oh, ow):
    """Whether the Winograd weight gradient beats im2col + GEMM on a 3x3
    stride-1 shape: every block of tiles updates all of dU, so each thread
    needs F(2x2) tiles for half the larger channel count, or for 2/7 of it
    where the tiles cover the plane exactly (even sides). Measured on this
    2-core AVX-512 machine, Winograd against GEMM:

    * 14x14 planes at 256-512 channels with 73-147 tiles a thread: 1.16-1.24x;
      (4, 384, 14, 14) with 98: 0.84x;
    * 7x7 planes (F(2x2) computes 8x8) at 256-512 channels with 64-160 tiles a
      thread: 0.75-0.96x; (2, 256, 7, 7) to 512: 0.46x.

    It needs 32 input channels and 16 filters: with fewer filters the GEMM's
    narrow side packs slowly (1.3-1.8x faster at (8, 32, 32, 32), (4, 128, 28, 28)
    and (8, 256, 14, 14) to 16 and (16, 64, 14, 14) to 24); with 16 input
    channels it won and lost (0.74-1.16x at (32, 16, 32, 32) and (64, 16, 8, 8)
    to 32, (8, 16, 64, 64) to 16)."""
    exact = oh % 2 == 0 and ow % 2 == 0
    need = max(48, max(c, o) / (3.5 if exact else 2))
    return c >= 32 and o >= 16 and _tiles(n, oh, ow, 2) / thread_count() >= need


def choose(n, c, o, oh, ow, r=3, weight_gradient=False):
    """For 3x3 kernels, F(4x4,3x3) where it saves enough work over
    F(2x2,3x3), else F(2x2,3x3); for 5x5 kernels, F(2x2,5x5).

    F4's transforms cost more per element and its edge tiles waste more (14x14
    is covered by 16x16), so it needs >= 64 channels, >= 80 tiles and 35% less
    transformed data than F2 (measured: (2, 128, 28, 28) with 98 tiles and
    (3, 160, 17, 23) with 90 ran 1.15x faster than F2, (16, 512, 7, 7) with 64
    1.2x slower). The weight gradient's blocks each update all of dU, which F4
    makes 2.25x larger, so there each thread also needs F4 tiles for half the
    larger channel count ((3, 160, 17, 23) to 192: F4 1.05-1.12x slower than
    F2; (2, 128, 30, 30) and (4, 96, 20, 20): 0.90-0.95x). Both stay well
    within the float32 tolerance (F4 with its interpolation points: error
    <= 5e-6 of max|y| at C=256, against 1e-4 allowed)."""
    if r == 5:
        return F2_5
    t2, t4 = _tiles(n, oh, ow, 2), _tiles(n, oh, ow, 4)
    if weight_gradient and t4 / thread_count() < max(c, o) / 2:
        return F2
    return F4 if min(c, o) >= 64 and t4 >= 80 and 36 * t4 <= 0.65 * 16 * t2 else F2


def _budget(addr, u_bytes):
    """Bytes of V and M per block: every block's GEMMs read all of U (or
    update all of dU), so with many channels blocks grow until that traffic is
    at most half their own ((16, 256, 14, 14): 10.7 ms at 4 MB blocks, 9.8 ms
    at one block per thread)."""
    return min(max(BLOCK_BYTES, 2 * u_bytes), MAX_BLOCK_BYTES) if addr is not None else CHUNK_BYTES


def _plan(n, c, o, cg, geom, variant, dtype):
    """A call's tiling for the forward and the weight gradient alike: (tile rows,
    tile columns, BLAS address or None, threads, largest block in tiles, blocks,
    each thread's first block)."""
    m, xi = variant.m, variant.alpha ** 2
    th, tw = -(-geom.oh // m), -(-geom.ow // m)
    addr = _blas.address(dtype)
    threads = thread_count() if addr is not None else 1
    budget = _budget(addr, xi * o * cg * dtype.itemsize)
    capacity, blocks, starts = _workspace.blocks(n, th, tw, xi * (c + o) * dtype.itemsize, budget,
                                                 MIN_BLOCK_TILES, threads)
    return th, tw, addr, threads, capacity, blocks, starts


def _input_limit(variant, channels, wmax, dtype):
    """The largest |x| for which every transform, GEMM and sum of the forward
    stays finite (with 4x headroom): beyond it, or for NaN/Inf, an exact path
    takes the call."""
    return np.finfo(dtype).max / (4 * variant.growth * max(channels, 1) * max(wmax, 1.0))


def convolve(x, w, b, geom, out, variant=None, adjoint=False):
    """Winograd conv2d into ``out`` (N, O, OH, OW), trusting the caller:
    x (N, C, H, W) and w (O, C/groups, r, r) C-contiguous in out's dtype, b (O,),
    ``geom`` a stride-1, undilated r x r :class:`fastconv._args.Geometry` (r = 3
    or 5); ``variant`` defaults to :func:`choose`'s pick for one group.
    With ``adjoint``, w is (C, O/groups, r, r), the weight of a convolution
    from O channels to C, and this one computes that convolution's input
    gradient: it runs with w's flipped transpose (:func:`weight_transform`).

    Returns ``out``, or None (``out`` partly written) where x or w holds NaN,
    Inf or values so large that the transforms could overflow: the caller
    then computes the call exactly.
    """
    n, c = x.shape[:2]
    o = out.shape[1]
    groups = o // w.shape[1] if adjoint else c // w.shape[1]
    cg, og = c // groups, o // groups
    if variant is None:
        variant = choose(n, cg, og, geom.oh, geom.ow, w.shape[2])
    m, xi = variant.m, variant.alpha ** 2
    dtype = out.dtype
    th, tw, addr, threads, capacity, blocks, starts = _plan(n, c, o, cg, geom, variant, dtype)
    bt, at = variant.bt.astype(dtype), variant.at.astype(dtype)
    with _workspace.scratch(dtype, (xi, cg, o), (threads, xi * c * capacity),
                            (threads, xi * o * capacity)) as (u, vbuf, mbuf):
        # the filters' taps are reordered in V's space, before V is used
        wmax = weight_transform(w, variant, u, vbuf.reshape(-1)[:w.size], adjoint)
        if not np.isfinite(wmax):
            return None
        limit = dtype.type(_input_limit(variant, cg, wmax, dtype))
        if addr is not None:
            inside = np.ones(threads, np.bool_)
            with _blas.one_thread():
                _fused_forward(x, u, bt, at, b, out, m, geom.pt, geom.pl, tw, blocks, starts, addr,
                               vbuf, mbuf, limit, inside, work=out.size * cg)
            return out if inside.all() else None
        inside = np.ones(-(-c // GROUP), np.bool_)
        for n0, nb, a0, ta in blocks:
            t = nb * ta * tw
            v = vbuf[0, :xi * c * t].reshape(xi, t, c)
            mm = mbuf[0, :xi * o * t].reshape(xi, t, o)
            _input_transform(x, bt, m, geom.pt, geom.pl, n0, a0, ta, tw, v, limit, inside, work=v.size)
            if not inside.all():
                return None
            for g in range(c // cg):
                np.matmul(v[:, :, g * cg:(g + 1) * cg], u[:, :, g * og:(g + 1) * og],
                          out=mm[:, :, g * og:(g + 1) * og])
            _output_tiles(mm, at, b, out, n0, a0, ta, tw)
    return out


def grad_weight(x, grad_out, geom, dw, variant=None):
    """dL/dW of the Winograd conv2d into ``dw`` (O, C/groups, r, r), trusting
    the caller: x (N, C, H, W) and grad_out (N, O, OH, OW) C-contiguous in dw's
    dtype, ``geom`` as for :func:`convolve`. Returns ``dw``, or None where
    x or grad_out holds NaN, Inf or values large enough to overflow.

    The adjoint of the forward, transform by transform::

        dM[xi, t, o] = (A dy[n, o, tile t] A^T)[i, j]    dy zero beyond OH, OW
        dU[xi]       = sum over a thread's blocks of dM[xi]^T @ V[xi]   (per group)
        dW[o, c]     = sum over threads of G^T dU[:, o, c] G

    with V the forward's input transform.
    """
    n, c = x.shape[:2]
    o, cg = dw.shape[:2]
    og = o // (c // cg)
    dtype = dw.dtype
    if variant is None:
        variant = choose(n, cg, og, geom.oh, geom.ow, dw.shape[2], weight_gradient=True)
    m, xi = variant.m, variant.alpha ** 2
    th, tw, addr, threads, capacity, blocks, starts = _plan(n, c, o, cg, geom, variant, dtype)
    # |dU| <= tiles * growth * max|x| * max|dy|: both operands under the square root
    limit = dtype.type(np.sqrt(np.finfo(dtype).max / (4 * variant.growth * _tiles(n, *geom[-2:], m))))
    bt, a = variant.bt.astype(dtype), np.ascontiguousarray(variant.at.T, dtype)
    gg = variant.gg.astype(dtype)
    shapes = ((threads, xi, o, cg), (threads, xi * c * capacity), (threads, xi * o * capacity),
              (threads, o * cg, variant.r ** 2))
    with _workspace.scratch(dtype, *shapes) as (partials, vbuf, mbuf, parts):
        if addr is not None:
            inside = np.ones(threads, np.bool_)
            with _blas.one_thread():
                _fused_grad_weight(x, grad_out, bt, a, m, geom.pt, geom.pl, tw, blocks, starts, addr,
                                   vbuf, mbuf, partials, gg, parts, limit, inside,
                                   work=grad_out.size * cg)
            if not inside.all():
                return None
            np.sum(parts, axis=0, out=dw.reshape(o * cg, variant.r ** 2))
            return dw
        groups = -(-c // GROUP)
        inside = np.ones(groups + -(-o // GROUP), np.bool_)
        du = partials[0]
        du[...] = 0
        for n0, nb, a0, ta in blocks:
            t = nb * ta * tw
            v = vbuf[0, :xi * c * t].reshape(xi, t, c)
            dm = mbuf[0, :xi * o * t].reshape(xi, t, o)
            _input_transform(x, bt, m, geom.pt, geom.pl, n0, a0, ta, tw, v, limit, inside[:groups],
                             work=v.size)
            _input_transform(grad_out, a, m, 0, 0, n0, a0, ta, tw, dm, limit, inside[groups:],
                             work=dm.size)
            if not inside.all():
                return None
            for g in range(c // cg):
                du[:, g * og:(g + 1) * og] += (dm[:, :, g * og:(g + 1) * og].transpose(0, 2, 1)
                                               @ v[:, :, g * cg:(g + 1) * cg])
        np.matmul(du.reshape(xi, o * cg).T, gg, out=dw.reshape(o * cg, variant.r ** 2))
    return dw
