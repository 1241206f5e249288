"""fastconv's public functions on dask arrays: each builds a lazy graph whose tasks
run the in-memory function on blocks.

Imported only by :func:`fastconv._args.accepts_dask` once a dask array reaches a
public function, so importing fastconv never imports dask.

* Arguments are checked when the graph is built, by the in-memory function itself
  on empty stand-ins (batch axis of length 0), so dask calls raise the same errors
  before anything runs; nothing is computed until ``.compute()``.
* Batch chunks map block by block. For the convolutions, chunks along H and W
  become overlapping windows: each output block reads exactly the input rows and
  columns its windows cover (stride, dilation and padding applied, the border
  blocks zero-padded as the whole image is). Chunked channels, feature axes and
  softmax axes are merged into one block first.
* Gradients of weights and biases add per-block partial sums in dask's tree reduction.
* Tasks call importable module-level functions (they pickle to distributed
  workers, which load the compiled kernels from numba's cache) and run them with
  a share of numba's threads: one thread per task in a distributed worker, and the
  caller's thread count divided among the fastconv tasks running at once in a
  local scheduler, with BLAS at one thread whenever a task runs on one thread.
  numba's thread count is per Python thread, so the setting is restored after
  each task and never leaks to the scheduler's other threads.
"""
import itertools
import operator
import sys
import threading
from contextlib import contextmanager, nullcontext

import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _args, _blas, activations, columns, conv, conv_grad, fully_connected, hadamard
from ._args import check_ndim, geometry
from ._config import thread_count

_running = 0
_running_lock = threading.Lock()


def _in_distributed_worker():
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@contextmanager
def _task_threads(threads):
    """Run the block with ``threads`` numba threads shared among the fastconv tasks
    running at once (one in a distributed worker); restore this thread's count after."""
    global _running
    with _running_lock:
        _running += 1
        share = max(1, threads // _running)
    if _in_distributed_worker():
        share = 1
    previous = thread_count()
    numba.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))
    _blas.address(np.float64)  # loads threadpoolctl's view of BLAS for one_thread
    try:
        with _blas.one_thread() if share == 1 else nullcontext():
            yield
    finally:
        numba.set_num_threads(previous)
        with _running_lock:
            _running -= 1


def _run(func, threads, *args, **kwargs):
    """One task: ``func(*args, **kwargs)`` on in-memory blocks, under :func:`_task_threads`."""
    args = [_one_block(arg) for arg in args]
    with _task_threads(threads):
        return func(*args, **kwargs)


def _one_block(value):
    """The block of an argument whose indices absent from the output are single-chunk:
    blockwise passes it in one-element lists, one level per such index (concatenating
    them instead would copy every block)."""
    while isinstance(value, list):
        (value,) = value
    return value


def _map(func, out_ind, *arrays_and_indices, dtype, **kwargs):
    """``da.blockwise`` of ``func`` through :func:`_run`, with an explicit meta so
    dask never calls ``func`` to guess one. Indices absent from ``out_ind`` must be
    single-chunk (their one block is passed whole)."""
    meta = np.empty((0,) * len(out_ind), dtype)
    return da.blockwise(_run, out_ind, func, None, thread_count(), None, *arrays_and_indices,
                        concatenate=False, meta=meta, **kwargs)


# ---------------------------------------------------------------- arguments

def _is_dask(value):
    return isinstance(value, da.Array)


def _empty_batch(value):
    """An in-memory stand-in for checking a batched argument: its dtype and shape
    with an empty first axis."""
    if not _is_dask(value):
        value = np.asarray(value)
    return np.empty((0, *value.shape[1:]) if value.ndim else (), value.dtype)


def _zeros_like(value):
    """A whole in-memory stand-in for a small argument (weights, biases)."""
    return np.zeros(value.shape, value.dtype) if _is_dask(value) else value


def _whole(value):
    """An argument as a one-block dask array. An in-memory one gets a random name
    rather than a hash of its values (hashing a 2.4 MB weight took 1.2 ms, 70%
    of building a conv2d graph)."""
    if _is_dask(value):
        return value.rechunk(-1)
    value = np.asarray(value)
    return da.from_array(value, chunks=value.shape or -1, name=False)


def _lazy(value, chunks=None):
    """A batched argument as a dask array rechunked to ``chunks`` (an in-memory one
    becomes one block)."""
    if _is_dask(value):
        return value if chunks is None else value.rechunk(chunks)
    return _whole(value)


def _no_out(func, out):
    if out is not None:
        raise TypeError(f"{func}: out= is not supported with dask arrays (the result is lazy); "
                        f"store the result with dask.array.store instead")


def _same_batch(func, name_a, a, name_b, b):
    if np.shape(a)[:1] != np.shape(b)[:1]:
        raise ValueError(f"{func}: {name_a} has {np.shape(a)[0]} rows (shape {np.shape(a)}) but "
                         f"{name_b} has {np.shape(b)[0]} (shape {np.shape(b)})")


def _aligned_chunks(chunks, unit):
    """Chunk sizes near ``chunks`` whose boundaries fall on multiples of ``unit``."""
    total, bounds, stop = sum(chunks), [0], 0
    for size in chunks:
        stop += size
        edge = min(total, max(unit, round(stop / unit) * unit)) if unit else stop
        if edge > bounds[-1]:
            bounds.append(edge)
    bounds[-1] = total
    return tuple(b - a for a, b in zip(bounds, bounds[1:])) or (0,)


# ---------------------------------------------------------------- batch_outer_hadamard

def batch_outer_hadamard(A, B, *, out=None):
    func = "batch_outer_hadamard"
    _no_out(func, out)
    dtype = hadamard.batch_outer_hadamard(_empty_batch(A), _empty_batch(B)).dtype
    A, B = _lazy(A), _lazy(B)
    if B.numblocks[0] > 1:
        # rows i*nb + j of one B chunk are contiguous only for one row i of A
        A = A.rechunk({0: 1})
    B = B.rechunk((B.chunks[0], *A.chunks[1:]))
    # One task per (A chunk, B chunk, S block) writes one block of rows, with no
    # reshaping layer in between: at a few MB per block dask's cost per task counts.
    name = f"{func}-{tokenize(A, B)}"
    threads, b_blocks = thread_count(), B.numblocks[0]
    tails = list(itertools.product(*(range(n) for n in A.numblocks[1:])))
    layer = {
        (name, i * b_blocks + j, *t):
            (_run, hadamard.batch_outer_hadamard, threads, (A.name, i, *t), (B.name, j, *t))
        for i in range(A.numblocks[0]) for j in range(b_blocks) for t in tails
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[A, B])
    rows = tuple(a * b for a in A.chunks[0] for b in B.chunks[0])
    return da.Array(graph, name, (rows, *A.chunks[1:]), meta=np.empty((0,) * A.ndim, dtype))


# ---------------------------------------------------------------- im2col / col2im

def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    func = "im2col"
    _no_out(func, out)
    window = dict(stride=stride, padding=padding, dilation=dilation)
    dtype = columns.im2col(_empty_batch(x), kernel_size, **window).dtype
    x = _lazy(x, {2: -1, 3: -1})
    g = geometry(func, x.shape[2:], kernel_size, stride, padding, dilation)
    return _map(columns.im2col, "cn", x, "nchw", kernel_size, None, dtype=dtype,
                adjust_chunks={"c": lambda c: c * g.kh * g.kw, "n": lambda n: n * g.oh * g.ow}, **window)


def _col2im_block(cols, plane, kernel_size, geom, **window):
    shape = (cols.shape[1] // (geom.oh * geom.ow), cols.shape[0] // (geom.kh * geom.kw), *plane)
    return columns.col2im(cols, shape, kernel_size, **window)


def col2im(cols, input_shape, kernel_size, *, stride=1, padding=0, dilation=1, out=None):
    func = "col2im"
    _no_out(func, out)
    window = dict(stride=stride, padding=padding, dilation=dilation)
    shape = _args.input_shape(func, "input_shape", input_shape)
    if not _is_dask(cols):
        cols = np.asarray(cols)
    check_ndim(func, "cols", cols, 2, "(C*KH*KW, N*OH*OW)")
    g = geometry(func, shape[2:], kernel_size, stride, padding, dilation)
    expected = (shape[1] * g.kh * g.kw, shape[0] * g.oh * g.ow)
    if cols.shape != expected:
        raise ValueError(
            f"{func}: cols has shape {cols.shape} but input_shape {shape} with kernel "
            f"{g.kh}x{g.kw} and output {g.oh}x{g.ow} needs (C*KH*KW, N*OH*OW) = {expected}"
        )
    stand_in = np.empty((cols.shape[0], 0), cols.dtype)
    dtype = columns.col2im(stand_in, (0, *shape[1:]), kernel_size, **window).dtype
    cols = _lazy(cols)
    cols = cols.rechunk((_aligned_chunks(cols.chunks[0], g.kh * g.kw),
                         _aligned_chunks(cols.chunks[1], g.oh * g.ow)))
    return _map(_col2im_block, "nchw", cols, "cn", shape[2:], None, kernel_size, None, g, None, dtype=dtype,
                new_axes={"h": shape[2], "w": shape[3]},
                adjust_chunks={"c": lambda r: r // (g.kh * g.kw), "n": lambda p: p // (g.oh * g.ow)},
                **window)


# ---------------------------------------------------------------- windows over H/W chunks

def _bands(chunks, pad, stride, out_size):
    """Output index ranges, one per input chunk: an output row (column) goes with
    the chunk its window starts in (windows starting in the padding go with the
    first and last chunk)."""
    bounds, start = [0], 0
    for size in chunks[:-1]:
        start += size
        bounds.append(min(out_size, max(bounds[-1], -(-(start + pad) // stride))))
    bounds.append(out_size)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _window_rows(band, size, pad, stride, span):
    """The input range an output band reads: (start, stop) inside the input and the
    zero padding (before, after) that completes it."""
    lo = band[0] * stride - pad
    hi = (band[1] - 1) * stride + span - pad
    before, after = max(0, min(hi, 0) - lo), max(0, hi - max(lo, size))
    start = min(max(lo, 0), size)
    return start, start + (hi - lo - before - after), before, after


def _windows(geom, hw, chunks_hw):
    """Per (row band, column band): the output slices and the input slices and padding."""
    span_h, span_w = geom.dh * (geom.kh - 1) + 1, geom.dw * (geom.kw - 1) + 1
    rows = [(band, _window_rows(band, hw[0], geom.pt, geom.sh, span_h))
            for band in _bands(chunks_hw[0], geom.pt, geom.sh, geom.oh)]
    cols = [(band, _window_rows(band, hw[1], geom.pl, geom.sw, span_w))
            for band in _bands(chunks_hw[1], geom.pl, geom.sw, geom.ow)]
    return rows, cols


def _padded(x, pads):
    """``x`` zero-padded by (top, bottom, left, right), and the padding conv2d still
    has to apply: symmetric padding is left to the kernels, anything else is added here."""
    top, bottom, left, right = pads
    if top == bottom and left == right:
        return x, (top, left)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))), 0


def _conv2d_window(x, weight, bias=None, *, pads, **window):
    x, padding = _padded(x, pads)
    return conv.conv2d(x, weight, bias, padding=padding, **window)


def _grad_weight_window(x, grad_out, weight_shape, pads, **window):
    x, padding = _padded(x, pads)
    return conv_grad.conv2d_grad_weight(x, grad_out, weight_shape, padding=padding, **window)[None]


def _band_grid(x, geom, each):
    """``each(x_window, (row_band, col_band), pads)`` over the window bands of
    H/W-chunked ``x``, or ``None`` when x has one chunk along H and W."""
    if x.numblocks[2] == x.numblocks[3] == 1:
        return None
    rows, cols = _windows(geom, x.shape[2:], x.chunks[2:])
    grid = []
    for row_band, (r0, r1, top, bottom) in rows:
        line = []
        for col_band, (c0, c1, left, right) in cols:
            piece = x[:, :, r0:r1, c0:c1].rechunk({2: -1, 3: -1})
            line.append(each(piece, (row_band, col_band), (top, bottom, left, right)))
        grid.append(line)
    return grid


# ---------------------------------------------------------------- conv2d and its gradients

def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, out=None):
    func = "conv2d"
    _no_out(func, out)
    window = dict(stride=stride, dilation=dilation, groups=groups)
    probe = conv.conv2d(_empty_batch(x), _zeros_like(weight), _zeros_like(bias), padding=padding, **window)
    x = _lazy(x, {1: -1})
    g = geometry(func, x.shape[2:], np.shape(weight)[2:], stride, padding, dilation)
    weight = _whole(weight)
    extra = () if bias is None else (_whole(bias), "o")

    def convolve(piece, bands, pads):
        (o0, o1), (p0, p1) = bands
        return _map(_conv2d_window, "noyx", piece, "nchw", weight, "oGkl", *extra, dtype=probe.dtype,
                    new_axes={"y": o1 - o0, "x": p1 - p0}, pads=pads, **window)

    grid = _band_grid(x, g, convolve)
    if grid is None:
        return _map(conv.conv2d, "noyx", x, "nchw", weight, "oGkl", *extra, dtype=probe.dtype,
                    new_axes={"y": g.oh, "x": g.ow}, padding=padding, **window)
    return da.block(grid)


def _grad_input_block(grad_out, weight, plane, **window):
    shape = (grad_out.shape[0], weight.shape[1] * window["groups"], *plane)
    return conv_grad.conv2d_grad_input(grad_out, weight, shape, **window)


def _grad_input_window(grad_out, weight, channels, local_hw, crop, **window):
    """dx over one input band: the transposed convolution of the grad_out rows
    that touch it, on the padded input span they read, cut to the band."""
    shape = (grad_out.shape[0], channels, *local_hw)
    local = conv_grad.conv2d_grad_input(grad_out, weight, shape, padding=0, **window)
    (h0, h1, y0), (w0, w1, x0) = crop
    dx = np.zeros((shape[0], channels, h1 - h0, w1 - w0), local.dtype)
    ys, xs = slice(max(h0, y0), min(h1, y0 + local_hw[0])), slice(max(w0, x0), min(w1, x0 + local_hw[1]))
    if ys.stop > ys.start and xs.stop > xs.start:
        dx[:, :, ys.start - h0:ys.stop - h0, xs.start - w0:xs.stop - w0] = \
            local[:, :, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return dx


def _input_bands(chunks, size, pad, stride):
    """Input ranges, one per grad_out chunk (empty ones dropped)."""
    bounds, start = [0], 0
    for c in chunks[:-1]:
        start += c
        bounds.append(min(size, max(bounds[-1], start * stride - pad)))
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _touching(band, pad, stride, span, out_size):
    """The output rows whose windows touch input rows ``band``, and where the padded
    span they read starts (in input coordinates)."""
    a = max(0, -(-(band[0] + pad - span + 1) // stride))
    b = min(out_size, (band[1] - 1 + pad) // stride + 1)
    return a, max(a, b), a * stride - pad, (max(a, b) - 1 - a) * stride + span


def conv2d_grad_input(grad_out, weight, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    func = "conv2d_grad_input"
    window = dict(stride=stride, dilation=dilation, groups=groups)
    shape = _args.input_shape(func, "input_shape", input_shape)
    dtype = conv_grad.conv2d_grad_input(_empty_batch(grad_out), _zeros_like(weight), (0, *shape[1:]),
                                        padding=padding, **window).dtype
    if np.shape(grad_out)[0] != shape[0]:
        raise ValueError(f"{func}: grad_out has {np.shape(grad_out)[0]} images (shape {np.shape(grad_out)}) "
                         f"but input_shape {shape} has {shape[0]}")
    g = geometry(func, shape[2:], np.shape(weight)[2:], stride, padding, dilation)
    grad_out, weight = _lazy(grad_out, {1: -1}), _whole(weight)
    c = shape[1]
    if grad_out.numblocks[2] == grad_out.numblocks[3] == 1:
        return _map(_grad_input_block, "nchw", grad_out, "nOyx", weight, "OGkl", shape[2:], None, dtype=dtype,
                    new_axes={"c": c, "h": shape[2], "w": shape[3]}, padding=padding, **window)
    spans = (g.dh * (g.kh - 1) + 1, g.dw * (g.kw - 1) + 1)
    row_bands = _input_bands(grad_out.chunks[2], shape[2], g.pt, g.sh)
    col_bands = _input_bands(grad_out.chunks[3], shape[3], g.pl, g.sw)
    grid = []
    for rb in row_bands:
        a, b, y0, lh = _touching(rb, g.pt, g.sh, spans[0], g.oh)
        line = []
        for cb in col_bands:
            p, q, x0, lw = _touching(cb, g.pl, g.sw, spans[1], g.ow)
            if b == a or q == p:
                line.append(da.zeros((shape[0], c, rb[1] - rb[0], cb[1] - cb[0]), dtype,
                                     chunks=(grad_out.chunks[0], c, -1, -1)))
                continue
            piece = grad_out[:, :, a:b, p:q].rechunk({2: -1, 3: -1})
            crop = ((*rb, y0), (*cb, x0))
            line.append(_map(_grad_input_window, "nchw", piece, "nOyx", weight, "OGkl", c, None,
                             (lh, lw), None, crop, None, dtype=dtype,
                             new_axes={"c": c, "h": rb[1] - rb[0], "w": cb[1] - cb[0]}, **window))
        grid.append(line)
    return da.block(grid)


def conv2d_grad_weight(x, grad_out, weight_shape, *, stride=1, padding=0, dilation=1, groups=1):
    func = "conv2d_grad_weight"
    window = dict(stride=stride, dilation=dilation, groups=groups)
    shape = _args.input_shape(func, "weight_shape", weight_shape)
    dtype = conv_grad.conv2d_grad_weight(_empty_batch(x), _empty_batch(grad_out), shape,
                                         padding=padding, **window).dtype
    _same_batch(func, "x", x, "grad_out", grad_out)
    x = _lazy(x, {1: -1})
    g = geometry(func, x.shape[2:], shape[2:], stride, padding, dilation)
    grad_out = _lazy(grad_out, {0: x.chunks[0], 1: -1})

    def partials(piece, bands, pads):
        (o0, o1), (p0, p1) = bands
        go = grad_out[:, :, o0:o1, p0:p1].rechunk({2: -1, 3: -1})
        return _map(_grad_weight_window, "nOCkl", piece, "nchw", go, "nOyx", shape, None, dtype=dtype,
                    new_axes=kernel_axes, adjust_chunks={"n": 1}, pads=pads, **window)

    kernel_axes = {"C": shape[1], "k": shape[2], "l": shape[3]}
    grid = _band_grid(x, g, partials)
    if grid is None:
        parts = _map(_grad_weight_block, "nOCkl", x, "nchw", grad_out, "nOyx", shape, None, dtype=dtype,
                     new_axes=kernel_axes, adjust_chunks={"n": 1}, padding=padding, **window)
    else:
        parts = da.concatenate([block for line in grid for block in line], axis=0)
    return parts.sum(axis=0, dtype=dtype)


def _grad_weight_block(x, grad_out, weight_shape, **window):
    return conv_grad.conv2d_grad_weight(x, grad_out, weight_shape, **window)[None]


def _grad_bias_block(grad_out):
    return conv_grad.conv2d_grad_bias(grad_out)[None, :, None, None]


def conv2d_grad_bias(grad_out):
    func = "conv2d_grad_bias"
    dtype = conv_grad.conv2d_grad_bias(_empty_batch(grad_out)).dtype
    grad_out = _lazy(grad_out, {1: -1})
    check_ndim(func, "grad_out", grad_out, 4, "(N, O, OH, OW)")
    parts = _map(_grad_bias_block, "nohw", grad_out, "nohw", dtype=dtype,
                 adjust_chunks={"n": 1, "h": 1, "w": 1})
    return parts.sum(axis=(0, 2, 3), dtype=dtype)


# ---------------------------------------------------------------- linear layer

def _sample_or_batch(x):
    """Stand-in for linear's x: a single sample (I,) whole, a batch with no rows."""
    return _zeros_like(x) if np.ndim(x) == 1 else _empty_batch(x)


def linear(x, W, b=None):
    dtype = fully_connected.linear(_sample_or_batch(x), _zeros_like(W), _zeros_like(b)).dtype
    x = _lazy(x, {np.ndim(x) - 1: -1})
    extra = () if b is None else (_whole(b), "o")
    ind = "ni"[2 - x.ndim:]
    return _map(fully_connected.linear, ind[:-1] + "o", x, ind, _whole(W), "io", *extra, dtype=dtype)


def _linear_backward_block(x, W, grad_out):
    dx, dW, db = fully_connected.linear_backward(x, W, grad_out)
    return dx, dW[None], db[None]


def linear_backward(x, W, grad_out):
    func = "linear_backward"
    if np.ndim(x) == 1:  # one sample: the batch of one
        fully_connected.linear_backward(_zeros_like(x), _zeros_like(W), _zeros_like(grad_out))
        dx, dW, db = linear_backward(_lazy(x, -1)[None], W, _lazy(grad_out, -1)[None])
        return dx[0], dW, db
    dx, dW, db = fully_connected.linear_backward(_empty_batch(x), _zeros_like(W), _empty_batch(grad_out))
    _same_batch(func, "x", x, "grad_out", grad_out)
    x = _lazy(x, {1: -1})
    grad_out = _lazy(grad_out, {0: x.chunks[0], 1: -1})
    # one task per block computes all three; dx, dW and db each take their part of it
    parts = _map(_linear_backward_block, "n", x, "ni", _whole(W), "io", grad_out, "no", dtype=object)
    dx_lazy = _map(operator.getitem, "ni", parts, "n", 0, None, dtype=dx.dtype, new_axes={"i": x.shape[1]})
    dW_parts = _map(operator.getitem, "nio", parts, "n", 1, None, dtype=dW.dtype,
                    new_axes={"i": W.shape[0], "o": W.shape[1]}, adjust_chunks={"n": 1})
    db_parts = _map(operator.getitem, "no", parts, "n", 2, None, dtype=db.dtype,
                    new_axes={"o": W.shape[1]}, adjust_chunks={"n": 1})
    return dx_lazy, dW_parts.sum(axis=0, dtype=dW.dtype), db_parts.sum(axis=0, dtype=db.dtype)


# ---------------------------------------------------------------- softmax

def _along(value, axis, ndim):
    return _lazy(value, {axis % ndim: -1} if ndim else None)


def softmax(x, axis=-1):
    dtype = activations.softmax(_empty_batch(x), axis=axis).dtype
    ind = "".join(chr(ord("a") + d) for d in range(x.ndim))
    return _map(activations.softmax, ind, _along(x, axis, x.ndim), ind, dtype=dtype, axis=axis)


def softmax_backward(s, grad_s, axis=-1):
    if np.shape(s) != np.shape(grad_s):
        raise ValueError(f"softmax_backward: s and grad_s must have the same shape, got s {np.shape(s)} "
                         f"and grad_s {np.shape(grad_s)}")
    dtype = activations.softmax_backward(_empty_batch(s), _empty_batch(grad_s), axis=axis).dtype
    ind = "".join(chr(ord("a") + d) for d in range(np.ndim(s)))
    s = _along(s, axis, np.ndim(s))
    grad_s = _lazy(grad_s, s.chunks)
    return _map(activations.softmax_backward, ind, s, ind, grad_s, ind, dtype=dtype, axis=axis)


# ---------------------------------------------------------------- einsum

def _einsum_block(*operands, subscripts, contracted, kernel_dtype, **options):
    """fastconv.einsum on one combination of blocks, with a length-1 axis per
    contracted index (their partial sums are added by dask)."""
    from .einsum import einsum as in_memory_einsum

    result = in_memory_einsum(subscripts, *operands, dtype=kernel_dtype, **options)
    return result.reshape(result.shape + (1,) * contracted)


def einsum(*operands, out=None, dtype=None, order="K", casting="safe", optimize=False):
    """Blocks of every operand meet in one task per combination of chunks of the
    output and contracted indices; the contracted partial products are summed by
    dask's tree reduction (as :func:`dask.array.einsum` does with np.einsum)."""
    from dask.array.einsumfuncs import parse_einsum_input

    _no_out("einsum", out)
    inputs, output, arrays = parse_einsum_input([_lazy(a) if _is_dask(a) else a for a in operands])
    arrays = [_lazy(a) for a in arrays]
    subscripts = f"{inputs}->{output}"
    stand_ins = [np.zeros((1,) * a.ndim, a.dtype) for a in arrays]
    result_dtype = np.einsum(subscripts, *stand_ins, dtype=dtype, casting=casting).dtype
    contracted = sorted({i for term in inputs.split(",") for i in term} - set(output))
    indexed = [item for array, term in zip(arrays, inputs.split(",")) for item in (array, term)]
    blocks = _map(_einsum_block, output + "".join(contracted), *indexed, dtype=result_dtype,
                  adjust_chunks=dict.fromkeys(contracted, 1), subscripts=subscripts,
                  contracted=len(contracted), kernel_dtype=dtype, order=order, casting=casting,
                  optimize=optimize)
    if not contracted:
        return blocks
    return blocks.sum(axis=tuple(range(len(output), len(output) + len(contracted))), dtype=result_dtype)
