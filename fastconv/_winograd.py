"""Winograd convolution for 3x3, stride-1, undilated, ungrouped conv2d forward.

F(m x m, 3x3) computes an m x m block of outputs from an (m+2) x (m+2) input
patch ``d`` with ``alpha**2`` multiplications instead of ``9 m**2``
(``alpha = m + 2``)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Summed over the input channels, the elementwise product becomes ``alpha**2``
independent GEMMs, one per transform coordinate ``xi = (i, j)``::

    U[xi, o, c] = (G g[o, c] G^T)[i, j]          weights, every call (no stale cache)
    V[xi, c, t] = (B^T d[c, t] B)[i, j]          tiles t = (tile row, tile column, image)
    M[xi]       = U[xi] @ V[xi]                  one batched np.matmul per chunk
    y[n, o, tile t] = A^T M[:, o, t] A + bias[o] (edge tiles clipped)

The matrices come from the Cook-Toom construction over a set of interpolation
points (:func:`_cook_toom`); one table-driven kernel serves every variant.

The transforms are separable. One task per channel (input) or output channel
(output) runs each pass over all tiles of a chunk at once, images innermost, so
the passes are linear combinations of long contiguous vectors (:func:`_combine`):
the input is first split into column phases ``q[s, l, t] = d[a*m + s, b*m + l]``
(the only strided access; zero padding handled by bounds, no padded copy), after
which a shift by one tile row is a fixed offset into the flat tile run.

Chunks (of images, or of tile rows of one image) keep V and M under
``CHUNK_BYTES``; the buffers are kept per Python thread between calls.
"""
import threading
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from numba import prange

from ._config import kernel, serial_kernel


class Variant(NamedTuple):
    """The transform matrices of one F(m x m, 3x3) (float64)."""

    m: int
    alpha: int
    bt: np.ndarray  # (alpha, alpha) input transform B^T
    g: np.ndarray  # (alpha, 3) weight transform G
    at: np.ndarray  # (m, alpha) output transform A^T


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
    return Variant(m, alpha, bt, g, at)


#: F(2x2, 3x3): 2.25x fewer multiplications; float32 error like a direct sum.
F2 = _cook_toom([0, 1, -1])
#: F(4x4, 3x3): 4x fewer multiplications. The points 2 and -1/2 (instead of
#: Lavin's 2 and -2) cut the float32 error about 3x (Barabasz et al., 2020).
F4 = _cook_toom([0, 1, -1, 2, Fraction(-1, 2)])


@serial_kernel
def _combine(out, src, starts, coefs):
    """out[p] = sum_t coefs[t] * src[starts[t] + p], up to three terms per pass."""
    n = out.shape[0]
    for t in range(0, coefs.shape[0], 3):
        terms = min(3, coefs.shape[0] - t)
        c0, s0 = coefs[t], src[starts[t]:starts[t] + n]  # slices: no wraparound checks
        if terms == 1:
            if t == 0:
                for p in range(n):
                    out[p] = c0 * s0[p]
            else:
                for p in range(n):
                    out[p] += c0 * s0[p]
            continue
        c1, s1 = coefs[t + 1], src[starts[t + 1]:starts[t + 1] + n]
        if terms == 2:
            if t == 0:
                for p in range(n):
                    out[p] = c0 * s0[p] + c1 * s1[p]
            else:
                for p in range(n):
                    out[p] += c0 * s0[p] + c1 * s1[p]
            continue
        c2, s2 = coefs[t + 2], src[starts[t + 2]:starts[t + 2] + n]
        if t == 0:
            for p in range(n):
                out[p] = c0 * s0[p] + c1 * s1[p] + c2 * s2[p]
        else:
            for p in range(n):
                out[p] += c0 * s0[p] + c1 * s1[p] + c2 * s2[p]


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


@kernel
def _input_transform(x, bt, m, pt, pl, n0, a0, th, tw, v):
    """v[i*alpha + j, c, (a*tw + b)*nb + k] = (B^T d B)[i, j] where d is the
    alpha x alpha patch of image ``n0 + k`` (k < nb), channel c, at padded row
    ``(a0 + a)*m`` and padded column ``b*m`` (zero outside the image)."""
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    alpha = bt.shape[0]
    nb = v.shape[2] // (th * tw)
    row_len = tw * nb  # one tile row of the chunk, images innermost
    span = (th + 1) * row_len  # phase rows a = 0..th reach padded row (a0 + th + 1) * m
    tiles = th * row_len
    # flat offsets of the sources: q[s, l] in the row pass, r[j, i % m] shifted by
    # i // m phase rows in the column pass
    row_offsets = np.arange(alpha) * span
    col_offsets = (np.arange(alpha) % m) * span + (np.arange(alpha) // m) * row_len
    for c in prange(channels):
        starts = np.empty(alpha, np.int64)
        coefs = np.empty(alpha, x.dtype)
        # column phases q[s, l, (a*tw + b)*nb + k] = d[k][(a0 + a)*m + s, b*m + l]
        q = np.empty((m, alpha, span), x.dtype)
        for s in range(m):
            for a in range(th + 1):
                row = (a0 + a) * m + s - pt
                for l in range(alpha):
                    dst = q[s, l, a * row_len:(a + 1) * row_len]
                    if row < 0 or row >= h:
                        dst[:] = 0
                        continue
                    b0 = min(tw, max(0, (pl - l + m - 1) // m))  # tiles b0 <= b < b1 read inside
                    b1 = max(b0, min(tw, (wd + pl - l + m - 1) // m))
                    dst[:b0 * nb] = 0
                    dst[b1 * nb:] = 0
                    col = b0 * m + l - pl
                    for k in range(nb):
                        src = x[n0 + k, c, row, col:]  # a view indexed from 0: no wraparound checks
                        d = dst[b0 * nb + k:b1 * nb:nb]
                        for p in range(b1 - b0):
                            d[p] = src[p * m]
        # row pass r[j, s] = sum_l B^T[j, l] q[s, l]
        r = np.empty((alpha, m * span), x.dtype)
        for s in range(m):
            qs = q[s].ravel()
            for j in range(alpha):
                st, co = _terms(bt[j], starts, coefs, row_offsets, 0)
                _combine(r[j, s * span:(s + 1) * span], qs, st, co)
        # column pass: padded row (a0 + a)*m + i is phase i % m of phase row a + i // m
        for i in range(alpha):
            st, co = _terms(bt[i], starts, coefs, col_offsets, 0)
            for j in range(alpha):
                _combine(v[i * alpha + j, c], r[j], st, co)


@kernel
def _output_transform(mm, at, bias, out, n0, a0, th, tw):
    """out[n0 + k, o, tile (a0 + a, b)] = (A^T M A)[:, o, (a*tw + b)*nb + k] + bias[o],
    clipped to the output plane."""
    m, alpha = at.shape
    n_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    tiles = mm.shape[2]
    nb = tiles // (th * tw)
    flat = mm.ravel()
    col_offsets = np.arange(alpha) * (alpha * n_out * tiles)  # M[i*alpha + j] over i
    row_offsets = np.arange(alpha) * tiles  # s[u, j] over j
    for o in prange(n_out):
        starts = np.empty(alpha, np.int64)
        coefs = np.empty(alpha, mm.dtype)
        # column pass s[u, j] = sum_i A^T[u, i] M[i*alpha + j, o]
        s = np.empty((m, alpha * tiles), mm.dtype)
        for u in range(m):
            for j in range(alpha):
                st, co = _terms(at[u], starts, coefs, col_offsets, (j * n_out + o) * tiles)
                _combine(s[u, j * tiles:(j + 1) * tiles], flat, st, co)
        # row pass y[v] = sum_j A^T[v, j] s[u, j], then out rows (a0 + a)*m + u
        y = np.empty((m, tiles), mm.dtype)
        bo = bias[o]
        for u in range(m):
            for vv in range(m):
                st, co = _terms(at[vv], starts, coefs, row_offsets, 0)
                _combine(y[vv], s[u], st, co)
            for k in range(nb):
                plane = out[n0 + k, o]
                for a in range(th):
                    row = (a0 + a) * m + u
                    if row >= oh:
                        break
                    dst = plane[row]
                    for vv in range(m):
                        src = y[vv, a * tw * nb + k:(a + 1) * tw * nb:nb]
                        d = dst[vv::m]
                        for b in range(min(tw, d.shape[0])):
                            d[b] = src[b] + bo


@kernel
def _weight_transform(w, g, u):
    """u[i*alpha + j, o, c] = (G w[o, c] G^T)[i, j], summed in float64."""
    n_out, channels = w.shape[0], w.shape[1]
    alpha = g.shape[0]
    for o in prange(n_out):
        wo = w[o]
        gw = np.empty((alpha, 3, channels))  # (G w)[i, l] per channel
        for i in range(alpha):
            for l in range(3):
                acc = gw[i, l]
                g0, g1, g2 = g[i, 0], g[i, 1], g[i, 2]
                for c in range(channels):
                    acc[c] = g0 * wo[c, 0, l] + g1 * wo[c, 1, l] + g2 * wo[c, 2, l]
        for i in range(alpha):
            for j in range(alpha):
                dst = u[i * alpha + j, o]
                g0, g1, g2 = g[j, 0], g[j, 1], g[j, 2]
                s0, s1, s2 = gw[i, 0], gw[i, 1], gw[i, 2]
                for c in range(channels):
                    dst[c] = g0 * s0[c] + g1 * s1[c] + g2 * s2[c]


_scratch = threading.local()


def _buffer(name, size, dtype):
    """A flat scratch array of ``size`` elements, kept per Python thread between
    calls: a fresh buffer of several MB costs more in page faults than the
    transform that fills it."""
    key = (name, np.dtype(dtype).char)
    buf = getattr(_scratch, "buffers", {}).get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        _scratch.buffers = {**getattr(_scratch, "buffers", {}), key: buf}
    return buf[:size]


def weight_transform(w, variant, u=None):
    """U[xi, o, c] = (G w[o, c] G^T)[i, j], ``xi = i*alpha + j``, shape
    ``(alpha**2, O, C)`` in ``w.dtype`` (summed in float64, rounded once).
    Recomputed on every call: weights are often updated in place."""
    o, c = w.shape[:2]
    if u is None:
        u = np.empty((variant.alpha ** 2, o, c), w.dtype)
    _weight_transform(w, variant.g, u, work=u.size)
    return u


#: Bytes of transformed input and output per chunk (V and M together).
CHUNK_BYTES = 32 << 20


def _tiles(n, oh, ow, m):
    return n * -(-oh // m) * -(-ow // m)


def worthwhile(n, c, o, oh, ow):
    """Whether Winograd beats im2col + GEMM on a 3x3 stride-1 shape (measured:
    the transforms cost a fixed overhead per channel, so they need enough tiles)."""
    return min(c, o) >= 32 and _tiles(n, oh, ow, 2) >= 64


def choose(dtype, n, c, o, oh, ow):
    """F(4x4,3x3) where it saves enough work over F(2x2,3x3), else F(2x2,3x3).

    F4's transforms cost more per element and its edge tiles waste more (14x14
    is covered by 16x16), so it needs >= 64 channels, >= 128 tiles and 35% less
    transformed data than F2 (measured on the resnet shapes). Both stay well
    within the float32 tolerance (F4 with its interpolation points: error
    <= 5e-6 of max|y| at C=256, against 1e-4 allowed)."""
    t2, t4 = _tiles(n, oh, ow, 2), _tiles(n, oh, ow, 4)
    return F4 if min(c, o) >= 64 and t4 >= 128 and 36 * t4 <= 0.65 * 16 * t2 else F2


def conv2d_3x3(x, w, b, geom, out, variant=None):
    """Winograd conv2d into ``out`` (N, O, OH, OW), trusting the caller:
    x (N, C, H, W) and w (O, C, 3, 3) C-contiguous in out's dtype, b (O,),
    ``geom`` a stride-1, undilated 3x3 :class:`fastconv._args.Geometry`;
    ``variant`` defaults to :func:`choose`'s pick."""
    n, c = x.shape[:2]
    o = w.shape[0]
    if variant is None:
        variant = choose(out.dtype, n, c, o, geom.oh, geom.ow)
    m, alpha = variant.m, variant.alpha
    dtype = out.dtype
    th, tw = -(-geom.oh // m), -(-geom.ow // m)
    u = weight_transform(w, variant, _buffer("u", alpha * alpha * o * c, dtype).reshape(-1, o, c))
    bt, at = variant.bt.astype(dtype), variant.at.astype(dtype)
    per_tile = alpha * alpha * (c + o) * dtype.itemsize
    fit = max(tw, CHUNK_BYTES // per_tile)  # tiles per chunk
    if fit >= th * tw:
        images, rows = min(n, fit // (th * tw)), th
    else:
        images, rows = 1, fit // tw
    tiles = images * rows * tw
    vbuf = _buffer("v", alpha * alpha * c * tiles, dtype)
    mbuf = _buffer("m", alpha * alpha * o * tiles, dtype)
    for n0 in range(0, n, images):
        nb = min(images, n - n0)
        for a0 in range(0, th, rows):
            ta = min(rows, th - a0)
            t = nb * ta * tw
            v = vbuf[:alpha * alpha * c * t].reshape(alpha * alpha, c, t)
            mm = mbuf[:alpha * alpha * o * t].reshape(alpha * alpha, o, t)
            _input_transform(x, bt, m, geom.pt, geom.pl, n0, a0, ta, tw, v, work=v.size)
            np.matmul(u, v, out=mm)
            _output_transform(mm, at, b, out, n0, a0, ta, tw, work=mm.size)
    return out
