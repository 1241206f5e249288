"""A drop-in ``np.einsum`` that runs the two-operand expressions a kernel fits on
fast kernels and hands everything else to NumPy's own einsum.

A call is planned once per *key* -- the subscripts, each operand's dtype,
number of dimensions, size-1 axes and layout class, and the ``order``,
``optimize`` and ``out`` arguments -- and the plan is cached, so that a repeated
call costs a dictionary lookup and a few shape checks before its kernel runs.
Plans take one of three routes:

* **multiply**: no label is summed (a label of size 1 everywhere counts as
  absent), as in ``'ikxy,kjxy->ijxy'`` or ``'no,ni->nio'``: a parallel numba
  kernel writes every product straight into the result.
* **matmul**: two operands, at least one label summed, every summed label in
  both operands (``'ni,no->io'``, ``'oihw,bihw->bo'``, ``'nio,no->ni'``):
  ``np.matmul`` on the operands viewed as ``(batch, rows, summed)`` and
  ``(batch, summed, columns)`` stacks.
* **numpy**: everything else -- one operand or three and more (views stay
  views), repeated labels within an operand, small problems, dtypes other
  than float32/float64, subclasses and ``__array_function__`` types, ``dtype=``,
  casting, overlapping ``out=``, and every error -- is ``np.einsum`` itself, as it
  was bound when fastconv was imported.

The layout of a fresh result (``order=``) is NumPy's: the plan runs NumPy's
einsum once on small stand-in operands of the same layout class and allocates
results with the axis order it found.
"""
import math

import numpy as np
from numba import prange

from ._args import accepts_dask
from ._config import kernel

#: NumPy's einsum, bound at import: assigning fastconv.einsum over np.einsum
#: cannot make a call come back here.
_numpy_einsum = np.einsum
try:
    from numpy._core.multiarray import c_einsum as _c_einsum
except ImportError:  # NumPy < 2
    _c_einsum = None

_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ORDERS = ("K", "A", "C", "F")
_OPTIMIZE = (False, True, "greedy", "optimal")
_CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")
#: Products (elements written, or multiply-adds) below which NumPy's einsum is
#: as fast as a kernel launch plus the plan's reshapes.
_MULTIPLY_MIN_WORK = 1 << 17
_MATMUL_MIN_WORK = 1 << 15
#: Values a task writes: fewer than 64 result rows are split into pieces this long (so
#: that they still fill the threads), short rows are grouped up to it.
_BLOCK = 1 << 14
_MAX_PLANS = 4096
_ONE = (1).__eq__


class _NumpyRoute(Exception):
    """Raised while planning: the expression goes to NumPy's einsum."""


@accepts_dask
def einsum(*operands, out=None, optimize=False, **kwargs):
    """Evaluate the Einstein summation convention on the operands, as ``np.einsum``.

    Same signature, results, result dtypes and layouts, ``out=`` semantics and
    exceptions as :func:`numpy.einsum` (values within float rounding: sums may
    be added in another order). Two-operand float32/float64 expressions that
    multiply without summing run a parallel kernel; those whose summed labels
    appear in both operands run ``np.matmul``; anything else runs NumPy's einsum.

    Parameters
    ----------
    subscripts : str
        The subscripts for summation, e.g. ``'ni,no->io'``.
    *operands : array_like
        The arrays.
    out : ndarray, optional
        The result is written here (and ``out`` returned).
    dtype, order, casting : optional
        As in :func:`numpy.einsum`.
    optimize : {False, True, 'greedy', 'optimal'} or list, optional
        As in :func:`numpy.einsum` (the contraction order of three or more operands).

    Returns
    -------
    ndarray or scalar
        The calculation based on the Einstein summation convention.

    Examples
    --------
    >>> import numpy as np, fastconv as fc
    >>> x = np.arange(6.0).reshape(3, 2); g = np.ones((3, 2))
    >>> fc.einsum('ni,no->io', x, g)
    array([[6., 6.],
           [9., 9.]])
    """
    if len(operands) == 3:
        subscripts, a, b = operands
        if (type(a) is np.ndarray and type(b) is np.ndarray and type(subscripts) is str
                and (not kwargs or _plain(kwargs, a, b))):
            if a.size * b.size >= min(_MULTIPLY_MIN_WORK, _MATMUL_MIN_WORK):  # may pay a kernel
                result = _planned(subscripts, a, b, out, optimize, kwargs)
                if result is not None:
                    return result
            if optimize is False and _c_einsum is not None:
                return _plain_einsum(operands, out, kwargs)
    elif (len(operands) == 2 and optimize is False and _c_einsum is not None
            and type(operands[0]) is str and type(operands[1]) is np.ndarray):
        return _plain_einsum(operands, out, kwargs)
    return _numpy_einsum(*operands, out=out, optimize=optimize, **kwargs)


def _plain_einsum(operands, out, kwargs):
    """What np.einsum does with optimize=False, minus its ``__array_function__``
    dispatch (the operands are base-class ndarrays)."""
    if out is not None:
        kwargs["out"] = out
    return _c_einsum(*operands, **kwargs)


def _planned(subscripts, a, b, out, optimize, kwargs):
    """The result from the call's plan, or None where NumPy's einsum is to run it."""
    order = kwargs.get("order", "K") if kwargs else "K"
    try:
        # The size-1 axes, or where there are none, the number of axes.
        key = (subscripts, a.dtype, b.dtype,
               tuple(map(_ONE, a.shape)) if 1 in a.shape else a.ndim,
               tuple(map(_ONE, b.shape)) if 1 in b.shape else b.ndim,
               "C" if a.flags.c_contiguous else _layout(a),
               "C" if b.flags.c_contiguous else _layout(b), order, optimize, out is None)
        plan = _plans[key]
    except KeyError:
        plan = _plan(key, a, b)
    except TypeError:  # an unhashable optimize (an explicit path)
        return None
    return None if plan is None else plan(a, b, out)


def _plain(kwargs, a, b):
    """True when ``dtype``/``order``/``casting`` cannot change the result of a
    float32/float64 call: no dtype, a valid order, no casting between operands."""
    for name, value in kwargs.items():
        if name == "order":
            if type(value) is not str or value not in _ORDERS:
                return False
        elif name == "casting":
            if type(value) is not str or value not in _CASTINGS or (value != "safe" and a.dtype != b.dtype):
                return False
        elif name != "dtype" or value is not None:
            return False
    return True


def _layout(array):
    """'F', or the axes by descending stride with their signs (C-contiguous
    arrays are 'C', decided by the caller)."""
    if array.flags.f_contiguous:
        return "F"
    strides = array.strides
    axes = sorted(range(array.ndim), key=lambda i: -abs(strides[i]))
    return tuple((i, strides[i] < 0) for i in axes)


_plans = {}


def _plan(key, a, b):
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    try:
        plan = _make_plan(key, a, b)
    except _NumpyRoute:
        plan = None
    except Exception:  # noqa: BLE001 - NumPy raises the right error for a bad call
        return None
    _plans[key] = plan
    return plan


def _parse(subscripts, ndims):
    """Labels of each operand and of the result; ellipsis dimensions become the
    ints 0, 1, ... (right-aligned, as they broadcast)."""
    text = subscripts.replace(" ", "")
    if text.count("->") > 1:
        raise _NumpyRoute
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ndims):
        raise _NumpyRoute
    letters = [_letters(term) for term in terms]
    ellipsis = max((ndim - len(labels) + 1 for (labels, has), ndim in zip(letters, ndims) if has),
                   default=0)
    operand_labels = []
    for (labels, has), ndim in zip(letters, ndims):
        extra = ndim - len(labels) + has
        if (extra != 0 and not has) or extra < 0:
            raise _NumpyRoute
        head, tail = (labels.split("\0") + [""])[:2] if has else (labels, "")
        operand_labels.append(tuple(head) + tuple(range(ellipsis - extra, ellipsis)) + tuple(tail))
    every = [label for labels in operand_labels for label in labels]
    if any(len(set(labels)) != len(labels) for labels in operand_labels):
        raise _NumpyRoute  # a repeated label takes a diagonal
    if arrow:
        labels, has = _letters(output)
        if ellipsis and not has:
            raise _NumpyRoute
        head, tail = (labels.split("\0") + [""])[:2] if has else (labels, "")
        result = tuple(head) + tuple(range(ellipsis)) + tuple(tail)
        if len(set(result)) != len(result) or not set(result) <= set(every):
            raise _NumpyRoute
    else:
        once = sorted(label for label in set(every) if isinstance(label, str) and every.count(label) == 1)
        result = tuple(range(ellipsis)) + tuple(once)
    return operand_labels, result


def _letters(term):
    """A term's letters with a NUL where its ellipsis was, and whether it had one."""
    has = "..." in term
    letters = term.replace("...", "\0", 1) if has else term
    if not all(c.isascii() and c.isalpha() or c == "\0" for c in letters):
        raise _NumpyRoute
    return letters, has


def _stand_in(shape, layout, dtype):
    """A small array of ``shape`` whose strides rank like those of ``layout``."""
    if layout in ("C", "F"):
        return np.zeros(shape, dtype, order=layout)
    axes = [axis for axis, _ in layout]
    padded = [shape[axis] for axis in axes]
    padded[-1] *= 2  # a gap, so that the stand-in is not contiguous either
    array = np.zeros(padded, dtype)[..., ::2].transpose(np.argsort(axes))
    flips = tuple(slice(None, None, -1) if negative else slice(None) for _, negative in sorted(layout))
    return array[flips]


def _make_plan(key, a, b):
    subscripts, dtype_a, dtype_b, _, _, layout_a, layout_b, order, optimize, fresh = key
    if optimize not in _OPTIMIZE or dtype_a not in _FAST_DTYPES or dtype_b not in _FAST_DTYPES:
        raise _NumpyRoute
    if order not in _ORDERS:
        raise _NumpyRoute
    (labels_a, labels_b), result_labels = _parse(subscripts, (a.ndim, b.ndim))
    # A label is "live" where its axis is not of size 1: size-1 axes broadcast
    # (or, where the label has size 1 everywhere, drop out of the product).
    live_a = [label for label, n in zip(labels_a, a.shape) if n != 1]
    live_b = [label for label, n in zip(labels_b, b.shape) if n != 1]
    live = set(live_a) | set(live_b)
    live_result = tuple(label for label in result_labels if label in live)
    summed = live - set(live_result)
    shared = [(labels_a.index(label), labels_b.index(label)) for label in set(live_a) & set(live_b)]

    # The layout NumPy gives a fresh result, from a run on small stand-ins.
    sizes = {label: i + 2 for i, label in enumerate(sorted(live, key=str))}
    stand_ins = [
        _stand_in(tuple(1 if n == 1 else sizes[label] for label, n in zip(labels, array.shape)), layout,
                  array.dtype)
        for labels, array, layout in ((labels_a, a, layout_a), (labels_b, b, layout_b))
    ]
    probe = _numpy_einsum(subscripts, *stand_ins, order=order, optimize=optimize)
    if not isinstance(probe, np.ndarray):
        scalar, probe = True, np.asarray(probe)
    else:
        scalar = False
    result_dtype = probe.dtype
    if fresh:
        if min(probe.strides, default=0) < 0:
            raise _NumpyRoute
        memory = sorted(range(probe.ndim), key=lambda i: (probe.shape[i] == 1, -probe.strides[i]))
        memory = [axis for axis in memory if probe.shape[axis] != 1]
    else:
        memory = [axis for axis, label in enumerate(result_labels) if label in live]
    # The live result labels in memory order (outermost first).
    memory_labels = [result_labels[axis] for axis in memory]
    if not live_result and not summed:
        raise _NumpyRoute
    context = _Context(labels_a, labels_b, result_labels, shared, memory_labels, result_dtype, scalar)
    if not summed:
        return _MultiplyPlan(context, live_a, live_b)
    if summed <= set(live_a) & set(live_b):
        return _MatmulPlan(context, live_a, live_b, summed)
    raise _NumpyRoute


class _Context:
    """What every route needs to check a call and allocate its result."""

    def __init__(self, labels_a, labels_b, result_labels, shared, memory_labels, dtype, scalar):
        self.labels_a, self.labels_b, self.result_labels = labels_a, labels_b, result_labels
        self.shared, self.memory_labels, self.dtype, self.scalar = shared, memory_labels, dtype, scalar

    def sizes(self, a, b, minimum):
        """Label sizes and the work (the product of all sizes), or None when the
        work is below ``minimum`` or the operands do not fit together (NumPy raises)."""
        bound = a.size * b.size
        if bound < minimum:
            return None
        shape_a, shape_b = a.shape, b.shape
        shared = 1
        for i, j in self.shared:
            if shape_a[i] != shape_b[j]:
                return None
            shared *= shape_a[i]
        work = bound // shared if shared else 0
        if work < minimum or work == 0:
            return None
        sizes = dict(zip(self.labels_a, shape_a))
        for label, n in zip(self.labels_b, shape_b):
            if n != 1 or label not in sizes:
                sizes[label] = n
        return sizes, work

    def result(self, sizes, out):
        """(result, buffer): the result and a C-contiguous array of it with the
        live labels in memory order (the same memory), or a buffer to copy from."""
        if out is None:
            shape = tuple(sizes[label] for label in self.result_labels)
            memory_shape = tuple(sizes[label] for label in self.memory_labels)
            buffer = np.empty(memory_shape, self.dtype)
            result = _unpermute(buffer, self.memory_labels, self.result_labels, shape)
            return result, buffer
        if not out.flags.c_contiguous:
            return out, None
        return out, out.reshape(tuple(sizes[label] for label in self.memory_labels))

    def finish(self, result, buffer, out, computed):
        if buffer is None:
            np.copyto(out, _unpermute(computed, self.memory_labels, self.result_labels, out.shape))
        if self.scalar and out is None:
            return result[()]
        return result


def _unpermute(buffer, memory_labels, result_labels, shape):
    """``buffer`` (live labels in memory order) as an array of the result's labels and ``shape``."""
    order = [memory_labels.index(label) for label in result_labels if label in memory_labels]
    return buffer.transpose(order).reshape(shape)


def _fits_out(context, out, sizes, a, b):
    """``out`` has the result's shape and dtype, is writeable and shares no memory
    with the operands; otherwise NumPy handles the call."""
    if type(out) is not np.ndarray or out.dtype != context.dtype or not out.flags.writeable:
        return False
    if out.shape != tuple(sizes[label] for label in context.result_labels):
        return False
    return not (np.may_share_memory(out, a) or np.may_share_memory(out, b))


def _arranged(array, labels, order, dtype):
    """:func:`_viewed` as a C-contiguous array."""
    return np.ascontiguousarray(_viewed(array, labels, order, dtype))


class _MultiplyPlan:
    """No summed label: ``result[row, k] = a[...] * b[...]`` over the result viewed
    as (rows, inner), inner the longest run of trailing labels (in memory) that
    each operand either has all of or none of."""

    def __init__(self, context, live_a, live_b):
        self.context = context
        memory = context.memory_labels
        self.live_a, self.live_b = set(live_a), set(live_b)
        inner = len(memory)
        pattern = None
        while inner > 0:
            label = memory[inner - 1]
            here = (label in self.live_a, label in self.live_b)
            if pattern is not None and here != pattern:
                break
            pattern = here
            inner -= 1
        self.outer_labels, self.inner_labels = memory[:inner], memory[inner:]
        self.a_inner, self.b_inner = pattern if pattern else (False, False)
        self.order_a = [label for label in memory if label in self.live_a]
        self.order_b = [label for label in memory if label in self.live_b]

    def __call__(self, a, b, out):
        context = self.context
        fit = context.sizes(a, b, _MULTIPLY_MIN_WORK)
        if fit is None:
            return None
        sizes, work = fit
        if out is not None and not _fits_out(context, out, sizes, a, b):
            return None
        result, buffer = context.result(sizes, out)
        dtype = context.dtype
        x = _arranged(a, context.labels_a, self.order_a, dtype).reshape(-1)
        y = _arranged(b, context.labels_b, self.order_b, dtype).reshape(-1)
        outer = [sizes[label] for label in self.outer_labels]
        inner = math.prod(sizes[label] for label in self.inner_labels)
        rows = math.prod(outer)
        target = buffer if buffer is not None else np.empty(
            [sizes[label] for label in context.memory_labels], dtype)
        stride_a, stride_b = self._strides(sizes, inner)
        block = inner if rows >= 64 else _BLOCK
        _multiply_rows(
            target.reshape(rows, inner), x, y, np.array(outer, np.int64), stride_a, stride_b,
            self.a_inner, self.b_inner, block, max(1, _BLOCK // block), work=work,
        )
        return context.finish(result, buffer, out, target)

    def _strides(self, sizes, inner):
        """Each operand's element stride along each outer label (0 where it lacks it)."""
        strides = []
        for live, order in ((self.live_a, self.order_a), (self.live_b, self.order_b)):
            step = inner if live & set(self.inner_labels) else 1
            by_label = {}
            for label in reversed(order):
                if label not in self.inner_labels:
                    by_label[label] = step
                    step *= sizes[label]
            strides.append(np.array([by_label.get(label, 0) for label in self.outer_labels], np.int64))
        return strides


@kernel
def _multiply_rows(out, a, b, outer, stride_a, stride_b, a_inner, b_inner, block, span):
    """out[row, k] = the product of a's and b's values at row (an index over the
    ``outer`` sizes) and k, in pieces of at most ``block`` values of a row,
    ``span`` consecutive pieces a task: a task works out its first row's offsets
    and steps the index from there (dividing per row cost more than short rows'
    products)."""
    rows, m = out.shape
    flat = out.reshape(rows * m)
    blocks_per_row = (m + block - 1) // block
    pieces = rows * blocks_per_row
    dims = outer.shape[0]
    for task in prange((pieces + span - 1) // span):
        first = task * span
        row, part = first // blocks_per_row, first % blocks_per_row
        index = np.empty(dims, np.int64)
        rest, offset_a, offset_b = row, 0, 0
        for d in range(dims - 1, -1, -1):
            index[d] = rest % outer[d]
            rest //= outer[d]
            offset_a += index[d] * stride_a[d]
            offset_b += index[d] * stride_b[d]
        for _ in range(first, min(first + span, pieces)):
            start = part * block
            count = np.uint64(min(block, m - start))
            # Unsigned offsets spare numba's negative-index checks, so LLVM
            # vectorizes the loops (rows of 100 values: 2x faster than slices).
            at = np.uint64(row * m + start)
            at_a, at_b = np.uint64(offset_a + start), np.uint64(offset_b + start)
            if a_inner and b_inner:
                for k in range(count):
                    flat[at + k] = a[at_a + k] * b[at_b + k]
            elif a_inner:
                scale = b[np.uint64(offset_b)]
                for k in range(count):
                    flat[at + k] = a[at_a + k] * scale
            else:
                scale = a[np.uint64(offset_a)]
                for k in range(count):
                    flat[at + k] = scale * b[at_b + k]
            part += 1
            if part < blocks_per_row:
                continue
            part = 0
            row += 1
            d = dims - 1  # the next row's index, last label fastest
            while d >= 0:
                index[d] += 1
                offset_a += stride_a[d]
                offset_b += stride_b[d]
                if index[d] < outer[d] or d == 0:
                    break
                offset_a -= outer[d] * stride_a[d]
                offset_b -= outer[d] * stride_b[d]
                index[d] = 0
                d -= 1


class _MatmulPlan:
    """Every summed label in both operands: ``np.matmul`` over (batch, rows, summed)
    @ (batch, summed, columns), the groups' labels in the result's memory order."""

    def __init__(self, context, live_a, live_b, summed):
        self.context = context
        memory = context.memory_labels
        self.batch = [label for label in memory if label in live_a and label in live_b]
        self.rows = [label for label in memory if label in live_a and label not in live_b]
        self.columns = [label for label in memory if label in live_b and label not in live_a]
        self.summed = sorted(summed, key=lambda label: live_a.index(label))
        # The result's memory order as one of the two matmul layouts, if it is one.
        self.direct = memory == self.batch + self.rows + self.columns
        self.swapped = not self.direct and memory == self.batch + self.columns + self.rows

    def __call__(self, a, b, out):
        context = self.context
        fit = context.sizes(a, b, _MATMUL_MIN_WORK)
        if fit is None:
            return None
        sizes, work = fit
        n_batch, n_rows, n_columns, n_summed = (
            math.prod(sizes[label] for label in group)
            for group in (self.batch, self.rows, self.columns, self.summed))
        if n_batch > 1 and min(n_rows, n_columns) == 1 and max(n_rows, n_columns) * n_summed < 256:
            # matmul loops over BLAS matrix-vector products: only from about 16x16
            # matrices on do they beat NumPy's einsum ((256, 100, 100) by (256, 100):
            # 167 against 374 µs; (1024, 10, 10): even)
            return None
        if out is not None and not _fits_out(context, out, sizes, a, b):
            return None
        result, buffer = context.result(sizes, out)
        dtype = context.dtype
        x = _viewed(a, context.labels_a, self.batch + self.rows + self.summed, dtype)
        y = _viewed(b, context.labels_b, self.batch + self.summed + self.columns, dtype)
        lead = (n_batch,) if self.batch else ()
        x = x.reshape(*lead, n_rows, n_summed)
        y = y.reshape(*lead, n_summed, n_columns)
        if buffer is not None and self.direct:
            np.matmul(x, y, out=buffer.reshape(*lead, n_rows, n_columns))
            return context.finish(result, buffer, out, buffer)
        if buffer is not None and self.swapped:
            np.matmul(np.swapaxes(y, -1, -2), np.swapaxes(x, -1, -2),
                      out=buffer.reshape(*lead, n_columns, n_rows))
            return context.finish(result, buffer, out, buffer)
        product = np.matmul(x, y).reshape([sizes[label] for label in self.batch + self.rows + self.columns])
        memory = context.memory_labels
        computed = product.transpose([(self.batch + self.rows + self.columns).index(label)
                                      for label in memory])
        if buffer is not None:
            np.copyto(buffer, computed)
            return context.finish(result, buffer, out, buffer)
        return context.finish(result, buffer, out, computed)


def _viewed(array, labels, order, dtype):
    """``array`` without its size-1 axes, its axes in ``order`` (labels), in ``dtype``;
    a view where possible (matmul takes strided operands)."""
    keep = [i for i, n in enumerate(array.shape) if n != 1]
    squeezed = array.reshape([array.shape[i] for i in keep]) if len(keep) != array.ndim else array
    rank = {labels[axis]: r for r, axis in enumerate(keep)}
    viewed = squeezed.transpose([rank[label] for label in order])
    return viewed if viewed.dtype == dtype else viewed.astype(dtype)
