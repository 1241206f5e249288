"""Building blocks that numba's loops do not vectorize by themselves.

Scalar ones keep the softmax kernels vectorized without fast-math (which would
assume no NaN and break NaN propagation):

* :func:`max_ignoring_nan` is ``llvm.maxnum``, a max reduction LLVM vectorizes.
  It skips NaN, which is harmless in softmax: a NaN in a row reaches the row's sum
  through ``exp(nan - max)`` and makes the whole row NaN, as in the reference.
* :func:`add_reassoc` is an ``fadd`` carrying only the ``reassoc`` flag, so LLVM may
  split a sum into vector lanes (a different summation order, nothing else).
* :func:`exp_nonpositive` is a vectorizable ``exp`` for arguments ``<= 0`` (plus NaN
  and -inf): Cephes' range reduction and polynomial with ``2**n`` built from the
  exponent bits; numba's ``math.exp`` is a scalar libm call (no SVML).

:func:`transpose_block` moves a square block of values between a channels-first
and a channels-last layout with vector shuffles (0.04 ns a float32 value against
0.37 copied one at a time on an AVX-512 machine).

Each is also a plain Python function with the same result, which is what runs
under ``NUMBA_DISABLE_JIT=1``.
"""
import numpy as np
from llvmlite import ir
from numba import config, types
from numba.extending import intrinsic, overload

__all__ = ["add_reassoc", "max_ignoring_nan", "exp_nonpositive", "transpose_block",
           "transpose_add_block", "TRANSPOSE_LANES", "VECTOR_BYTES"]

_FLOATS = (types.float32, types.float64)


@intrinsic
def _add_reassoc(typingctx, a, b):
    if a != b or a not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        instruction = builder.fadd(args[0], args[1])
        instruction.flags.append("reassoc")
        return instruction

    return a(a, b), codegen


@intrinsic
def _max_ignoring_nan(typingctx, a, b):
    if a != b or a not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        function = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(function, args)

    return a(a, b), codegen


def _add_python(a, b):
    """``a + b`` that LLVM may reassociate (vectorizes a sum; keeps NaN and inf)."""
    return a + b


def _max_python(a, b):
    """The larger of ``a`` and ``b``; a NaN operand is ignored (``llvm.maxnum``)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a >= b else b


if config.DISABLE_JIT:
    add_reassoc, max_ignoring_nan = _add_python, _max_python
else:
    add_reassoc, max_ignoring_nan = _add_reassoc, _max_ignoring_nan


#: Types of the same width: an int's bits read as a float, and back.
_SAME_BITS = {types.int32: types.float32, types.int64: types.float64,
              types.float32: types.int32, types.float64: types.int64}


@intrinsic
def _reinterpret(typingctx, value):
    """The bits of an int32/int64 as float32/float64, and of a float as an int."""
    result = _SAME_BITS.get(value)
    if result is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(value), codegen


def exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0``, NaN and -inf, in ``x``'s float type."""
    return np.exp(x)


# exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, Cephes).
# Adding 1.5 * 2**mantissa_bits + bias rounds x / ln 2 to an integer held in the low
# mantissa bits, already biased: shifted into the exponent field it is 2**n. Below
# ``low`` the result is 0 (the true value is below the smallest normal number);
# ``clamped`` maps NaN and -inf to ``low`` so that the integer part stays defined
# while ``r`` (from ``x`` itself) carries the NaN through.
# Not cached on its own (a cache=True overload fails where no cache directory is
# writable): it is compiled into, and cached with, the kernels that call it.

@overload(exp_nonpositive)
def _exp_nonpositive_impl(x):
    if x == types.float32:
        def exp32(x):  # Cephes expf polynomial: ~1 ulp on [-87, 0]
            low, shift = np.float32(-87.0), np.float32(12582912.0 + 127.0)
            clamped = x if x > low else low
            t = clamped * np.float32(1.44269504088896341) + shift
            n = t - shift
            r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            y = p * (r * r) + r + np.float32(1.0)
            scale = _reinterpret(np.int32(_reinterpret(t) << np.int32(23)))
            return np.float32(0.0) if x < low else y * scale
        return exp32
    if x == types.float64:
        def exp64(x):  # Cephes exp (Pade form): ~1 ulp on [-708, 0]
            low, shift = -708.0, 6755399441055744.0 + 1023.0
            clamped = x if x > low else low
            t = clamped * 1.4426950408889634074 + shift
            n = t - shift
            r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
            rr = r * r
            p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1)
            q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.0
            y = 1.0 + 2.0 * (p / (q - p))
            scale = _reinterpret(_reinterpret(t) << 52)
            return 0.0 if x < low else y * scale
        return exp64
    return None


#: Bytes of the vectors :func:`transpose_block` moves (AVX-512's width; LLVM
#: splits them where the machine's vectors are narrower).
VECTOR_BYTES = 64
#: Values of each dtype that fill a vector: the side of the square block
#: :func:`transpose_block` moves (``VECTOR_BYTES // itemsize`` in the kernels).
TRANSPOSE_LANES = {np.dtype(t): VECTOR_BYTES // np.dtype(t).itemsize for t in (np.float32, np.float64)}


def _transpose_python(src, s0, src_rows, dst, d0, dst_rows, add=None, a0=0):
    lanes = TRANSPOSE_LANES[src.dtype]
    for i in range(lanes):
        for j in range(lanes):
            value = src[s0 + src_rows[i] + j]
            dst[d0 + dst_rows[j] + i] = value if add is None else value + add[a0 + j]


def _transpose_signature(src, s0, src_rows, dst, d0, dst_rows, add=None, a0=None):
    arrays = (src, dst) if add is None else (src, dst, add)
    if not (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                and a.dtype == src.dtype for a in arrays)
            and src.dtype in _FLOATS and dst.mutable
            and all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                    and a.dtype in types.integer_domain for a in (src_rows, dst_rows))
            and all(isinstance(a, types.Integer) for a in (s0, d0) + ((a0,) if add is not None else ()))):
        return None
    extra = () if add is None else (add, a0)
    return types.void(src, s0, src_rows, dst, d0, dst_rows, *extra)


def _transpose_codegen(context, builder, signature, args):
    """The body of :func:`transpose_block` (and of :func:`transpose_add_block`
    where ``signature`` has the two extra arguments)."""
    dtype = signature.args[0].dtype
    lanes = VECTOR_BYTES * 8 // dtype.bitwidth
    index = ir.IntType(64)

    def data(i):
        return context.make_array(signature.args[i])(context, builder, args[i]).data

    def start(i):  # &array i [args[i + 1]]
        return builder.gep(data(i), [context.cast(builder, args[i + 1], signature.args[i + 1], types.int64)])

    def offset(i, k):  # the k-th value of the offsets array i, as a 64-bit index
        value = builder.load(builder.gep(data(i), [ir.Constant(index, k)]))
        return builder.sext(value, index) if value.type.width < 64 else value

    vector = ir.VectorType(context.get_value_type(dtype), lanes)
    align = dtype.bitwidth // 8
    src = start(0)
    rows = [builder.load(builder.bitcast(builder.gep(src, [offset(2, i)]), vector.as_pointer()),
                         align=align) for i in range(lanes)]
    # Swap the off-diagonal d x d blocks of every 2d x 2d block, d = lanes/2 ... 1.
    mask = ir.VectorType(ir.IntType(32), lanes)
    d = lanes // 2
    while d:
        low = ir.Constant(mask, [lane if not lane & d else lanes + lane - d for lane in range(lanes)])
        high = ir.Constant(mask, [lane + d if not lane & d else lanes + lane for lane in range(lanes)])
        for i in range(lanes):
            if not i & d:
                a, b = rows[i], rows[i + d]
                rows[i], rows[i + d] = builder.shuffle_vector(a, b, low), builder.shuffle_vector(a, b, high)
        d //= 2
    dst = start(3)
    add = start(6) if len(args) > 6 else None
    for j in range(lanes):
        row = rows[j]
        if add is not None:
            value = builder.load(builder.gep(add, [ir.Constant(index, j)]))
            splat = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(index, 0))
            row = builder.fadd(row, builder.shuffle_vector(splat, splat, ir.Constant(mask, [0] * lanes)))
        builder.store(row, builder.bitcast(builder.gep(dst, [offset(5, j)]), vector.as_pointer()),
                      align=align)
    return context.get_dummy_value()


@intrinsic
def _transpose_block(typingctx, src, s0, src_rows, dst, d0, dst_rows):
    signature = _transpose_signature(src, s0, src_rows, dst, d0, dst_rows)
    return None if signature is None else (signature, _transpose_codegen)


@intrinsic
def _transpose_add_block(typingctx, src, s0, src_rows, dst, d0, dst_rows, add, a0):
    signature = _transpose_signature(src, s0, src_rows, dst, d0, dst_rows, add, a0)
    return None if signature is None else (signature, _transpose_codegen)


def transpose_block(src, s0, src_rows, dst, d0, dst_rows):
    """``dst[d0 + dst_rows[j] + i] = src[s0 + src_rows[i] + j]`` for ``i, j < L``,
    L = ``TRANSPOSE_LANES[dtype]``: L rows of L contiguous values, anywhere in
    ``src``, become L columns. Unchecked: every index must lie in its array.
    ``src`` and ``dst`` are 1-D C-contiguous float arrays of one dtype and the
    offsets 1-D C-contiguous integer arrays of at least L values."""
    _transpose_python(src, s0, src_rows, dst, d0, dst_rows)


def transpose_add_block(src, s0, src_rows, dst, d0, dst_rows, add, a0):
    """:func:`transpose_block` that adds ``add[a0 + j]`` to the values of row j."""
    _transpose_python(src, s0, src_rows, dst, d0, dst_rows, add, a0)


if not config.DISABLE_JIT:
    transpose_block, transpose_add_block = _transpose_block, _transpose_add_block  # noqa: F811
