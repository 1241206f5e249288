"""Winograd convolution for 3x3, stride-1, undilated, ungrouped conv2d: the
forward and the weight gradient.

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

The weight gradient runs the same steps adjointly (:func:`grad_weight_3x3`):
the input transform with ``A`` in place of ``B^T`` gives ``dM = A dy A^T`` over
the output tiles, one batched np.matmul ``dM[xi] @ V[xi]^T`` sums over the tiles,
and ``G^T dU G`` maps back to the 3x3 taps.

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
    gg: np.ndarray  # (alpha**2, 9) kron(G, G): gg[i*alpha + j, k*3 + l] = G[i, k] G[j, l]


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
    return Variant(m, alpha, bt, g, at, np.kron(g, g))


#: F(2x2, 3x3): 2.25x fewer multiplications; float32 error like a direct sum.
F2 = _cook_toom([0, 1, -1])
#: F(4x4, 3x3): 4x fewer multiplications. The points 2 and -1/2 (instead of
#: Lavin's 2 and -2) cut the float32 error about 3x (Barabasz et al., 2020).
F4 = _cook_toom([0, 1, -1, 2, Fraction(-1, 2)])


@serial_kernel
def _combine(out, at, src, starts, coefs, n):
    """out[at + p] = sum_t coefs[t] * src[starts[t] + p] for p < n, up to three
    terms per pass, on flat arrays.

    Indices are unsigned: numba then emits no negative-index wraparound and the
    loops vectorize without a view per source (measured: a slice costs ~70 ns,
    the whole call on 200 elements ~25 ns)."""
    at, n = np.uint64(at), np.uint64(n)
    for t in range(0, coefs.shape[0], 3):
        terms = min(3, coefs.shape[0] - t)
        c0, s0 = coefs[t], np.uint64(starts[t])
        if terms == 1:
            if t == 0:
                for p in range(n):
                    out[at + p] = c0 * src[s0 + p]
            else:
                for p in range(n):
                    out[at + p] += c0 * src[s0 + p]
            continue
        c1, s1 = coefs[t + 1], np.uint64(starts[t + 1])
        if terms == 2:
            if t == 0:
                for p in range(n):
                    out[at + p] = c0 * src[s0 + p] + c1 * src[s1 + p]
            else:
                for p in range(n):
                    out[at + p] += c0 * src[s0 + p] + c1 * src[s1 + p]
            continue
        c2, s2 = coefs[t + 2], np.uint64(starts[t + 2])
        if t == 0:
            for p in range(n):
                out[at + p] = c0 * src[s0 + p] + c1 * src[s1 + p] + c2 * src[s2 + p]
        else:
            for p in range(n):
                out[at + p] += c0 * src[s0 + p] + c1 * src[s1 + p] + c2 * src[s2 + p]


@serial_kernel
def _zero(out, start, stop):
    """out[start:stop] = 0 without a view (see :func:`_combine`)."""
    for p in range(np.uint64(start), np.uint64(stop)):
        out[p] = 0


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
    size x size patch (``alpha, size = bt.shape``) of image ``n0 + k`` (k < nb),
    channel c, at padded row ``(a0 + a)*m`` and padded column ``b*m`` (zero
    outside the image).

    With ``bt = A`` (``size = m``) this is the adjoint of the output transform,
    ``A dy A^T`` over the m x m tiles of a gradient ``dy``."""
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    alpha, size = bt.shape
    nb = v.shape[2] // (th * tw)
    row_len = tw * nb  # one tile row of the chunk, images innermost
    phase_rows = th + (size - 1) // m  # the last patch reaches phase row th - 1 + (size - 1) // m
    span = phase_rows * row_len
    # flat offsets of the sources: q[s, l] in the row pass, r[j, i % m] shifted by
    # i // m phase rows in the column pass
    row_offsets = np.arange(size) * span
    col_offsets = (np.arange(size) % m) * span + (np.arange(size) // m) * row_len
    xf, vf = x.ravel(), v.ravel()
    tiles = v.shape[2]
    for c in prange(channels):
        starts = np.empty(size, np.int64)
        coefs = np.empty(size, x.dtype)
        # column phases q[s, l, (a*tw + b)*nb + k] = d[k][(a0 + a)*m + s, b*m + l]
        q = np.empty(m * size * span, x.dtype)
        for s in range(m):
            for a in range(phase_rows):
                row = (a0 + a) * m + s - pt
                for l in range(size):
                    dst = (s * size + l) * span + a * row_len
                    if row < 0 or row >= h:
                        _zero(q, dst, dst + row_len)
                        continue
                    first = 0
                    if l >= m:  # phase l - m one tile to the right: a contiguous copy
                        prev = np.uint64((s * size + l - m) * span + a * row_len + nb)
                        d = np.uint64(dst)
                        for p in range(np.uint64((tw - 1) * nb)):
                            q[d + p] = q[prev + p]
                        first = tw - 1
                    b0 = min(tw, max(first, (pl - l + m - 1) // m))  # tiles b0 <= b < b1 read inside
                    b1 = max(b0, min(tw, (wd + pl - l + m - 1) // m))
                    _zero(q, dst + first * nb, dst + b0 * nb)
                    _zero(q, dst + b1 * nb, dst + row_len)
                    col = b0 * m + l - pl
                    for k in range(nb):
                        src = np.uint64((((n0 + k) * channels + c) * h + row) * wd + col)
                        d = np.uint64(dst + b0 * nb + k)
                        if nb == 1:  # contiguous stores
                            for p in range(np.uint64(b1 - b0)):
                                q[d + p] = xf[src + p * np.uint64(m)]
                        else:
                            for p in range(np.uint64(b1 - b0)):
                                q[d + p * np.uint64(nb)] = xf[src + p * np.uint64(m)]
        # row pass r[j, s] = sum_l B^T[j, l] q[s, l]
        r = np.empty(alpha * m * span, x.dtype)
        for s in range(m):
            for j in range(alpha):
                st, co = _terms(bt[j], starts, coefs, row_offsets, s * size * span)
                _combine(r, (j * m + s) * span, q, st, co, span)
        # column pass: padded row (a0 + a)*m + i is phase i % m of phase row a + i // m
        for i in range(alpha):
            for j in range(alpha):
                st, co = _terms(bt[i], starts, coefs, col_offsets, j * m * span)
                _combine(vf, ((i * alpha + j) * channels + c) * tiles, r, st, co, tiles)


@kernel
def _output_transform(mm, at, bias, out, n0, a0, th, tw):
    """out[n0 + k, o, tile (a0 + a, b)] = (A^T M A)[:, o, (a*tw + b)*nb + k] + bias[o],
    clipped to the output plane."""
    m, alpha = at.shape
    n_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    tiles = mm.shape[2]
    nb = tiles // (th * tw)
    flat, outf = mm.ravel(), out.ravel()
    col_offsets = np.arange(alpha) * (alpha * n_out * tiles)  # M[i*alpha + j] over i
    row_offsets = np.arange(alpha) * tiles  # s[u, j] over j
    for o in prange(n_out):
        starts = np.empty(alpha, np.int64)
        coefs = np.empty(alpha, mm.dtype)
        # column pass s[u, j] = sum_i A^T[u, i] M[i*alpha + j, o]
        s = np.empty(m * alpha * tiles, mm.dtype)
        for u in range(m):
            for j in range(alpha):
                st, co = _terms(at[u], starts, coefs, col_offsets, (j * n_out + o) * tiles)
                _combine(s, (u * alpha + j) * tiles, flat, st, co, tiles)
        # row pass y[v] = sum_j A^T[v, j] s[u, j], then out rows (a0 + a)*m + u
        y = np.empty(m * tiles, mm.dtype)
        bo = bias[o]
        for u in range(m):
            for vv in range(m):
                st, co = _terms(at[vv], starts, coefs, row_offsets, u * alpha * tiles)
                _combine(y, vv * tiles, s, st, co, tiles)
            for k in range(nb):
                plane = ((n0 + k) * n_out + o) * oh * ow
                for a in range(th):
                    row = (a0 + a) * m + u
                    if row >= oh:
                        break
                    for vv in range(m):
                        src = np.uint64(vv * tiles + a * tw * nb + k)
                        dst = np.uint64(plane + row * ow + vv)
                        count = np.uint64(min(tw, max(0, (ow - vv + m - 1) // m)))
                        for b in range(count):
                            outf[dst + b * np.uint64(m)] = y[src + b * np.uint64(nb)] + bo


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
    ``(alpha**2, O, C)`` in ``w.dtype``, for a C-contiguous w (O, C, 3, 3): one
    GEMM with kron(G, G). Recomputed on every call: weights are often updated
    in place."""
    o, c = w.shape[:2]
    if u is None:
        u = np.empty((variant.alpha ** 2, o, c), w.dtype)
    np.matmul(variant.gg.astype(w.dtype), w.reshape(o * c, 9).T, out=u.reshape(-1, o * c))
    return u


#: Bytes of transformed input and output per chunk (V and M together).
CHUNK_BYTES = 32 << 20


def _tiles(n, oh, ow, m):
    return n * -(-oh // m) * -(-ow // m)


def worthwhile(n, c, o, oh, ow):
    """Whether Winograd beats im2col + GEMM on a 3x3 stride-1 shape (measured:
    the transforms cost a fixed overhead per channel, so they need enough tiles)."""
    return min(c, o) >= 32 and _tiles(n, oh, ow, 2) >= 64


def grad_weight_worthwhile(n, c, o, oh, ow):
    """Whether the Winograd weight gradient beats im2col + GEMM on a 3x3
    stride-1 shape (measured: from 16 channels and 16 F(2x2) tiles on, e.g.
    1.2x at (1, 32, 7, 7), 1.7x at (2, 64, 8, 8); slower below)."""
    return min(c, o) >= 16 and _tiles(n, oh, ow, 2) >= 16


def choose(n, c, o, oh, ow):
    """F(4x4,3x3) where it saves enough work over F(2x2,3x3), else F(2x2,3x3).

    F4's transforms cost more per element and its edge tiles waste more (14x14
    is covered by 16x16), so it needs >= 64 channels, >= 128 tiles and 35% less
    transformed data than F2 (measured on the resnet shapes). Both stay well
    within the float32 tolerance (F4 with its interpolation points: error
    <= 5e-6 of max|y| at C=256, against 1e-4 allowed)."""
    t2, t4 = _tiles(n, oh, ow, 2), _tiles(n, oh, ow, 4)
    return F4 if min(c, o) >= 64 and t4 >= 128 and 36 * t4 <= 0.65 * 16 * t2 else F2


def _chunks(n, th, tw, per_tile):
    """Split the ``n * th * tw`` tiles into chunks of at most ``CHUNK_BYTES`` of
    transformed data (``per_tile`` bytes each): whole images where one fits,
    else bands of tile rows of one image. Returns the chunk capacity in tiles
    and the chunks as (first image, images, first tile row, tile rows)."""
    fit = max(tw, CHUNK_BYTES // per_tile)
    if fit >= th * tw:
        images, rows = min(n, fit // (th * tw)), th
    else:
        images, rows = 1, fit // tw
    chunks = [(n0, min(images, n - n0), a0, min(rows, th - a0))
              for n0 in range(0, n, images) for a0 in range(0, th, rows)]
    return images * rows * tw, chunks


def conv2d_3x3(x, w, b, geom, out, variant=None):
    """Winograd conv2d into ``out`` (N, O, OH, OW), trusting the caller:
    x (N, C, H, W) and w (O, C, 3, 3) C-contiguous in out's dtype, b (O,),
    ``geom`` a stride-1, undilated 3x3 :class:`fastconv._args.Geometry`;
    ``variant`` defaults to :func:`choose`'s pick."""
    n, c = x.shape[:2]
    o = w.shape[0]
    if variant is None:
        variant = choose(n, c, o, geom.oh, geom.ow)
    m, alpha = variant.m, variant.alpha
    dtype = out.dtype
    th, tw = -(-geom.oh // m), -(-geom.ow // m)
    u = weight_transform(w, variant, _buffer("u", alpha * alpha * o * c, dtype).reshape(-1, o, c))
    bt, at = variant.bt.astype(dtype), variant.at.astype(dtype)
    capacity, chunks = _chunks(n, th, tw, alpha * alpha * (c + o) * dtype.itemsize)
    vbuf = _buffer("v", alpha * alpha * c * capacity, dtype)
    mbuf = _buffer("m", alpha * alpha * o * capacity, dtype)
    for n0, nb, a0, ta in chunks:
        t = nb * ta * tw
        v = vbuf[:alpha * alpha * c * t].reshape(alpha * alpha, c, t)
        mm = mbuf[:alpha * alpha * o * t].reshape(alpha * alpha, o, t)
        _input_transform(x, bt, m, geom.pt, geom.pl, n0, a0, ta, tw, v, work=v.size)
        np.matmul(u, v, out=mm)
        _output_transform(mm, at, b, out, n0, a0, ta, tw, work=mm.size)
    return out


def grad_weight_3x3(x, grad_out, geom, dw, variant=None):
    """dL/dW of the Winograd conv2d into ``dw`` (O, C, 3, 3), trusting the
    caller: x (N, C, H, W) and grad_out (N, O, OH, OW) C-contiguous in dw's
    dtype, ``geom`` as for :func:`conv2d_3x3`.

    The adjoint of the forward, transform by transform::

        dM[xi, o, t] = (A dy[n, o, tile t] A^T)[i, j]    dy zero beyond OH, OW
        dU[xi]       = sum over chunks of dM[xi] @ V[xi]^T
        dW[o, c]     = G^T dU[:, o, c] G

    with V the forward's input transform.
    """
    n, c = x.shape[:2]
    o = grad_out.shape[1]
    dtype = dw.dtype
    if variant is None:
        variant = choose(n, c, o, geom.oh, geom.ow)
    m, alpha = variant.m, variant.alpha
    xi = alpha * alpha
    th, tw = -(-geom.oh // m), -(-geom.ow // m)
    bt, a = variant.bt.astype(dtype), np.ascontiguousarray(variant.at.T, dtype)
    capacity, chunks = _chunks(n, th, tw, xi * (c + o) * dtype.itemsize)
    vbuf = _buffer("v", xi * c * capacity, dtype)
    mbuf = _buffer("m", xi * o * capacity, dtype)
    du = np.empty((xi, o, c), dtype)
    partial = np.empty_like(du) if len(chunks) > 1 else du
    for index, (n0, nb, a0, ta) in enumerate(chunks):
        t = nb * ta * tw
        v = vbuf[:xi * c * t].reshape(xi, c, t)
        dm = mbuf[:xi * o * t].reshape(xi, o, t)
        _input_transform(x, bt, m, geom.pt, geom.pl, n0, a0, ta, tw, v, work=v.size)
        _input_transform(grad_out, a, m, 0, 0, n0, a0, ta, tw, dm, work=dm.size)
        np.matmul(dm, v.transpose(0, 2, 1), out=partial if index else du)
        if index:
            du += partial
    # the adjoint of weight_transform: dW[o, c, k, l] = sum_ij G[i, k] G[j, l] dU[i*alpha + j, o, c]
    np.matmul(du.reshape(xi, o * c).T, variant.gg.astype(dtype), out=dw.reshape(o * c, 9))
    return dw
