"""Single-threaded BLAS matrix products called from inside numba kernels.

Convolutions run each parallel task's GEMMs on the task's own core, between the
numba transforms that feed them, so that one thread pool (numba's) owns the
cores and each task's data stays in its cache. The GEMM is the Fortran ?gemm
of the OpenBLAS that NumPy loads where it has one (found through threadpoolctl),
else SciPy's (``scipy.linalg.cython_blas``, a stable C API), reached through its
function address; the address is a run-time argument, so the kernels that call
it stay cacheable. While such kernels run, :func:`one_thread` holds every loaded
BLAS at one thread and then restores the thread counts the user had.

Where neither can be found, threadpoolctl is missing, or ``NUMBA_DISABLE_JIT``
is set, :func:`address` returns None and callers take their NumPy ``matmul`` path.
"""
import threading
from contextlib import contextmanager

import numpy as np
from llvmlite import ir
from numba import config, types
from numba.extending import intrinsic

from ._config import serial_kernel

_NAMES = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}
_addresses = {}
_controller = None
_direct = None
_lock = threading.Lock()
_depth = 0
_saved = None


def address(dtype):
    """The BLAS ``?gemm`` for ``dtype`` (float32/float64) as an int64 array
    ``[function address, bytes of its integer arguments]``, or None where no
    BLAS can be called from compiled code."""
    dtype = np.dtype(dtype)
    if dtype not in _addresses:
        _addresses[dtype] = _find(dtype)
    return _addresses[dtype]


#: The names NumPy's bundled OpenBLAS exports ?gemm under (64-bit integers
#: first), with the bytes of their integer arguments.
_NUMPY_SYMBOLS = (("scipy_{}_64_", 8), ("{}_64_", 8), ("scipy_{}_", 4), ("{}_", 4))


def _find(dtype):
    global _controller, _direct
    if config.DISABLE_JIT or dtype not in _NAMES:
        return None
    try:
        from threadpoolctl import ThreadpoolController
        found = _numpy_gemm(_NAMES[dtype])
        if found is None:
            import scipy.linalg.cython_blas  # noqa: F401 - loads the BLAS the address points into
            from numba.extending import get_cython_function_address
            found = get_cython_function_address("scipy.linalg.cython_blas", _NAMES[dtype]), 4
        if _controller is None:
            _controller = ThreadpoolController()
            _direct = _openblas_thread_functions(_controller)
    except (ImportError, ValueError):
        return None
    return np.array(found, np.int64)


def _numpy_gemm(name):
    """(address, integer bytes) of ?gemm in the OpenBLAS that NumPy loads (it
    calls it for ``matmul``), or None where NumPy's BLAS is something else.
    Measured on 64x64 by 64x196 products: 25% faster than SciPy's older OpenBLAS."""
    import ctypes
    from pathlib import Path

    from threadpoolctl import threadpool_info
    numpy_dir = Path(np.__file__).resolve().parent
    for info in threadpool_info():
        path = Path(info["filepath"]).resolve()
        if info["internal_api"] != "openblas" or not path.parent.name.startswith(numpy_dir.name):
            continue
        library = ctypes.CDLL(str(path))
        for symbol, width in _NUMPY_SYMBOLS:
            function = getattr(library, symbol.format(name), None)
            if function is not None:
                return ctypes.cast(function, ctypes.c_void_p).value, width
    return None


def _openblas_thread_functions(controller):
    """(get, set) of each loaded BLAS's process-wide thread count through ctypes,
    where every one is a pthreads OpenBLAS, else None (threadpoolctl then sets
    them). A pair of calls costs under a microsecond, threadpoolctl's 10-40 µs."""
    import ctypes
    import itertools

    functions = []
    for lib in controller.lib_controllers:
        if lib.user_api != "blas":
            continue
        if lib.internal_api != "openblas" or getattr(lib, "threading_layer", None) != "pthreads":
            return None
        for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes, set_.restype = ctypes.c_int, [ctypes.c_int], None
                functions.append((get, set_))
                break
        else:
            return None
    return functions


@contextmanager
def one_thread():
    """Hold every BLAS library loaded at the first :func:`address` call (NumPy's
    among them) at one thread while in the block (re-entrant and shared between
    Python threads); the outermost exit restores the user's counts.

    The first Python thread in sets the limit and the last one out restores it,
    whichever threads those are."""
    global _depth, _saved
    with _lock:
        if _depth == 0 and _controller is not None:
            _saved = _thread_counts()
            _set_threads([1] * len(_saved))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                _set_threads(_saved)
                _saved = None


def _thread_counts():
    if _direct is not None:
        return [get() for get, _ in _direct]
    return [lib.num_threads for lib in _controller.lib_controllers]


def _set_threads(counts):
    """Set each BLAS library's (process-wide) thread count from this Python thread.

    threadpoolctl lets only one Python thread at a time limit a pthreads
    OpenBLAS and ignores the others; fastconv serializes its own changes under
    ``_lock``, and either calls OpenBLAS directly or releases that claim before
    and after, so its limits take effect whichever thread makes them."""
    if _direct is not None:
        for (_, set_), count in zip(_direct, counts):
            set_(count)
        return
    import threadpoolctl

    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    for lib, count in zip(_controller.lib_controllers, counts):
        if lib.user_api == "blas":
            lib.set_num_threads(count)
    if release is not None:
        release(force=True)


@intrinsic
def _fortran_gemm(typingctx, addr, chars, ints, scalars, a, b, c):
    """Call the Fortran ``?gemm`` at ``addr``: chars = (transa, transb),
    ints = (m, n, k, lda, ldb, ldc), scalars = (alpha, beta), a, b, c arrays."""
    sig = types.void(addr, chars, ints, scalars, a, b, c)

    def codegen(context, builder, signature, args):
        voidp = ir.IntType(8).as_pointer()

        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        def element(i, k):
            return builder.bitcast(builder.gep(data(i), [ir.Constant(ir.IntType(64), k)]), voidp)

        fnty = ir.FunctionType(ir.VoidType(), [voidp] * 13)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [
            element(1, 0), element(1, 1), element(2, 0), element(2, 1), element(2, 2),
            element(3, 0), builder.bitcast(data(4), voidp), element(2, 3),
            builder.bitcast(data(5), voidp), element(2, 4), element(3, 1),
            builder.bitcast(data(6), voidp), element(2, 5),
        ])
        return context.get_dummy_value()

    return sig, codegen


@serial_kernel
def gemm(blas, a, b, c, transpose_b, beta):
    """``c = a @ op(b) + beta * c`` for row-major 2-D arrays with unit column
    stride: a (M, K), op(b) = b (K, N) or, with ``transpose_b``, b.T for b (N, K)."""
    _gemm(blas, a, b, c, False, transpose_b, beta)


@serial_kernel
def gemm_at(blas, a, b, c, beta):
    """``c = a.T @ b + beta * c`` for a (K, M) and b (K, N), as :func:`gemm`."""
    _gemm(blas, a, b, c, True, False, beta)


@serial_kernel
def _gemm(blas, a, b, c, transpose_a, transpose_b, beta):
    """Row-major ``c = op(a) @ op(b) + beta * c`` is column-major
    ``c.T = op(b).T @ op(a).T``: the Fortran call takes b first."""
    m, n = c.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    size = a.itemsize
    chars = np.empty(2, np.uint8)
    chars[0] = 84 if transpose_b else 78  # 'T' / 'N'
    chars[1] = 84 if transpose_a else 78
    ints = np.empty(6, np.int64)
    ints[0], ints[1], ints[2] = n, m, k
    ints[3], ints[4], ints[5] = b.strides[0] // size, a.strides[0] // size, c.strides[0] // size
    scalars = np.empty(2, c.dtype)
    scalars[0], scalars[1] = 1, beta
    if blas[1] == 8:
        _fortran_gemm(blas[0], chars, ints, scalars, b, a, c)
    else:
        _fortran_gemm(blas[0], chars, ints.astype(np.int32), scalars, b, a, c)
