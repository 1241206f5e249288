"""Argument normalization and validation shared by every operation.

Kernels trust their callers: every check lives here and runs before a kernel.
Messages name the function, the argument and the shapes involved.
"""
import functools
import math
import operator
import sys
from typing import NamedTuple

import numpy as np

KERNEL_TYPES = (np.float32, np.float64)
#: Window sizes (padded extents, and with them kernel, padding, dilation, stride and
#: output size) are kept below this bound so that the kernels' int64 index
#: arithmetic (sums of a few such terms) cannot overflow.
INDEX_LIMIT = 2**62


def accepts_dask(func):
    """Let ``func`` take dask arrays: a call with any dask array among its arguments
    returns the lazy result built by the function of the same name in
    :mod:`fastconv._dask`. The check is one dictionary lookup until dask.array has
    been imported, so NumPy calls pay nothing for it, and fastconv never imports dask."""
    name = func.__name__

    @functools.wraps(func)
    def dispatch(*args, **kwargs):
        if _modules.get("dask.array") is not None and _holds_dask(args, kwargs):
            from . import _dask
            return getattr(_dask, name)(*args, **kwargs)
        return func(*args, **kwargs)

    return dispatch


_modules = sys.modules
_dask_array = []  # dask.array.Array, looked up once


def _holds_dask(args, kwargs):
    if not _dask_array:
        _dask_array.append(_modules["dask.array"].Array)
    array_type = _dask_array[0]
    for value in args:
        if isinstance(value, array_type):
            return True
    for value in kwargs.values():
        if isinstance(value, array_type):
            return True
    return False


def as_array(func, name, value):
    """``value`` as an ndarray of a numeric dtype in native byte order, else ``TypeError``."""
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        raise TypeError(
            f"{func}: {name} has dtype {array.dtype}; expected a numeric array "
            f"(float32 and float64 run compiled kernels)"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def uses_kernel(dtype):
    """float32/float64 run compiled kernels; other numeric dtypes the reference."""
    return np.dtype(dtype).type in KERNEL_TYPES


def check_ndim(func, name, array, ndim, layout):
    if array.ndim != ndim:
        raise ValueError(f"{func}: {name} must be {ndim}-D {layout}, got shape {array.shape}")


def contiguous(array, dtype):
    """C-contiguous copy in ``dtype`` (native byte order), or ``array`` itself when it
    already is one."""
    if array.dtype == dtype and array.dtype.isnative and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


def allocate(func, shape, dtype):
    """``np.empty(shape, dtype)``, or a ``MemoryError`` naming ``func``, the shape and the bytes."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    try:
        return np.empty(shape, dtype)
    except (ValueError, MemoryError):  # ValueError: "Maximum allowed dimension exceeded"
        if min(shape, default=0) < 0:
            raise
        size = math.prod(shape) * dtype.itemsize
        raise MemoryError(
            f"{func}: cannot allocate the result of shape {shape} and dtype {dtype} "
            f"({size} bytes)"
        ) from None


def output(func, out, shape, dtype, inputs):
    """A new result array, or ``out`` once it is checked to fit the result exactly."""
    shape = tuple(shape)
    if out is None:
        return allocate(func, shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{func}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{func}: out has shape {out.shape} but the result has shape {shape}")
    if out.dtype != dtype:
        raise ValueError(f"{func}: out has dtype {out.dtype} but the result has dtype {np.dtype(dtype)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{func}: out must be C-contiguous (shape {out.shape}, strides {out.strides})")
    if not out.flags.writeable:
        raise ValueError(f"{func}: out is read-only")
    for name, array in inputs.items():
        if np.may_share_memory(out, array):
            raise ValueError(f"{func}: out shares memory with {name} (shape {np.shape(array)})")
    return out


def integer(func, name, value):
    """``value`` as a Python int (bools and floats are rejected)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be an int, got {value!r}") from None


def pair(func, name, value, minimum):
    """An int or a pair of ints as a ``(h, w)`` tuple, each ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{func}: {name} must be an int or a pair (h, w), got {value!r}")
        result = (integer(func, name, value[0]), integer(func, name, value[1]))
    else:
        result = (integer(func, name, value),) * 2
    if min(result) < minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}, got {value!r}")
    return result


class Geometry(NamedTuple):
    """A sliding window over an (H, W) plane: kernel, stride, dilation, padding
    (top, bottom, left, right) and the output size (PyTorch's formula)."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pb: int
    pl: int
    pr: int
    oh: int
    ow: int

    @property
    def taps(self):
        """(kh, kw, sh, sw, dh, dw, pt, pl): where each kernel tap reads, as kernels take it."""
        return self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl


def geometry(func, input_hw, kernel_size, stride, padding, dilation):
    """Validate the window arguments against an input plane and size the output.

    Arguments of plain ints, pairs of them and strings are remembered (about
    2 µs of a small call): a bool or float inside a pair would hash like an int,
    so only those types take the cache, and errors are raised on every call."""
    args = (func, tuple(input_hw), kernel_size, stride, padding, dilation)
    if all(map(_plain, args[2:])):
        return _remembered_geometry(*args)
    return _geometry(*args)


def _plain(value):
    kind = type(value)
    return kind is int or kind is str or (kind is tuple and len(value) == 2
                                          and type(value[0]) is int and type(value[1]) is int)


def _geometry(func, input_hw, kernel_size, stride, padding, dilation):
    kh, kw = pair(func, "kernel_size", kernel_size, 1)
    sh, sw = pair(func, "stride", stride, 1)
    dh, dw = pair(func, "dilation", dilation, 1)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"{func}: padding='same' needs stride 1, got stride={stride!r}")
            pt, pl = (span_h - 1) // 2, (span_w - 1) // 2
            pb, pr = span_h - 1 - pt, span_w - 1 - pl
        else:
            raise ValueError(f"{func}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        pt, pl = pair(func, "padding", padding, 0)
        pb, pr = pt, pl
    h, w = input_hw
    padded_h, padded_w = h + pt + pb, w + pl + pr
    if padded_h < span_h or padded_w < span_w:
        raise ValueError(
            f"{func}: kernel {kh}x{kw} with dilation ({dh}, {dw}) spans {span_h}x{span_w}, "
            f"larger than the padded input {padded_h}x{padded_w} (input {h}x{w})"
        )
    if max(padded_h, padded_w) >= INDEX_LIMIT:
        raise ValueError(
            f"{func}: padding={padding!r} makes the padded input {padded_h}x{padded_w} "
            f"(input {h}x{w}, kernel {kh}x{kw}, dilation ({dh}, {dw})), beyond 2**62 elements "
            f"per axis, too large for 64-bit index arithmetic"
        )
    # Every remaining value is bounded by the padded extent: a stride beyond it gives
    # one output along that axis, as does the extent itself; a 1-tap kernel never
    # uses its dilation.
    sh, sw = min(sh, padded_h), min(sw, padded_w)
    dh, dw = (1 if kh == 1 else dh), (1 if kw == 1 else dw)
    oh = (padded_h - span_h) // sh + 1
    ow = (padded_w - span_w) // sw + 1
    return Geometry(kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, oh, ow)


_remembered_geometry = functools.lru_cache(maxsize=256)(_geometry)


def input_shape(func, name, value, ndim=4):
    """A shape argument as a tuple of ``ndim`` non-negative ints."""
    try:
        shape = tuple(integer(func, name, n) for n in value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be a tuple of {ndim} ints, got {value!r}") from None
    if len(shape) != ndim or min(shape) < 0:
        raise ValueError(f"{func}: {name} must be {ndim} non-negative ints (N, C, H, W), got {value!r}")
    return shape


def _layout_hint(x_name, x_shape, channels):
    """A hint when ``x_shape`` looks channels-last: its last axis has the channel count."""
    if len(x_shape) != 4 or x_shape[-1] != channels or x_shape[1] == channels:
        return ""
    fix = "pass (N, C, H, W)" if x_name == "input_shape" else "transpose it with .transpose(0, 3, 1, 2)"
    return (f"; {x_name} {tuple(x_shape)} looks channels-last (N, H, W, C), but fastconv "
            f"expects NCHW (N, C, H, W): {fix}")


def conv_groups(func, x_shape, weight_shape, groups, x_name="x"):
    """Check a convolution's channels: x ``(N, C, H, W)`` against weight
    ``(O, C // groups, KH, KW)`` and ``groups``; return ``groups`` as an int.

    Shared by conv2d and its gradients (pass the input's shape as ``x_shape``).
    """
    groups = integer(func, "groups", groups)
    if groups < 1:
        raise ValueError(f"{func}: groups must be >= 1, got {groups}")
    c, (o, cg) = x_shape[1], weight_shape[:2]
    if c % groups:
        raise ValueError(f"{func}: {x_name} has {c} channels, not divisible by groups={groups}"
                         f"{_layout_hint(x_name, x_shape, cg * groups)}")
    if o % groups:
        raise ValueError(f"{func}: weight has {o} output channels, not divisible by groups={groups}")
    if cg != c // groups:
        raise ValueError(
            f"{func}: weight has {cg} input channels per group but {x_name} has {c} channels "
            f"(groups={groups}){_layout_hint(x_name, x_shape, cg * groups)}"
        )
    if min(weight_shape[2:]) < 1:
        raise ValueError(f"{func}: weight has an empty kernel, shape {tuple(weight_shape)}")
    return groups


def check_bias(func, bias, out_channels):
    """``bias`` must have shape ``(O,)``."""
    if bias.shape != (out_channels,):
        hint = ""
        if bias.ndim == 0:
            hint = (f"; a scalar bias is usually a stride or padding passed by position: they "
                    f"are keyword-only, as in {func}(x, weight, stride=2)")
        raise ValueError(
            f"{func}: bias must have shape ({out_channels},) for {out_channels} output channels, "
            f"got {bias.shape}{hint}"
        )
