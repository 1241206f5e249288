"""Numba options and thread-pool policy, decided once for the whole package.

* The two thread pools stop spinning once their work ends, so that each gets the
  cores right after the other: numba's OpenMP workers sleep (``OMP_WAIT_POLICY=
  PASSIVE``; spinning slowed a following OpenBLAS GEMM up to 10x) and OpenBLAS's
  workers sleep after 2**12 cycles (``OPENBLAS_THREAD_TIMEOUT=12``; their default
  ~0.1 s of spinning slowed the Winograd transforms after each GEMM 1.2-1.5x).
  Both are defaults for variables the user has not set, and OpenBLAS reads its
  variable only when numpy loads: importing fastconv first makes it count.
* Every kernel is compiled with ``cache=True`` (a second process loads it from
  disk); where no cache directory is writable, kernels compile in memory instead.
* Every loop nest is compiled twice, serial and parallel, lazily: small work runs
  serially (a parallel launch costs microseconds), large work on the thread pool.
* The ``workqueue`` threading layer is not re-entrant: parallel launches take a
  lock when numba picked it, so concurrent calls from Python threads are safe.
"""
import os
import threading
import types
from contextlib import nullcontext

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

import numba  # noqa: E402

#: Work (elements written) below which a kernel runs serially: waking the
#: sleeping workers costs ~10 µs, the time a serial loop needs for ~2**18 products.
PARALLEL_THRESHOLD = 1 << 18


def _compile(py_func, parallel):
    options = dict(nogil=True, parallel=parallel, error_model="numpy")
    if parallel:
        # numba names cache files after the function and keys them by signature,
        # not by flags: the parallel build needs a name of its own or it would
        # load the serial build from the cache.
        py_func = types.FunctionType(
            py_func.__code__, py_func.__globals__, py_func.__name__,
            py_func.__defaults__, py_func.__closure__,
        )
        py_func.__qualname__ += "_parallel"
    try:
        return numba.njit(cache=True, **options)(py_func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(py_func)


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # not initialized until the first parallel launch
        from numba.np.ufunc import parallel
        parallel._launch_threads()
        return numba.threading_layer()


_launch_lock = None


def _launch_guard():
    global _launch_lock
    if _launch_lock is None:
        _launch_lock = threading.Lock() if _threading_layer() == "workqueue" else False
    return _launch_lock or nullcontext()


class Kernel:
    """A loop nest compiled serially and in parallel; the call picks by ``work``.

    ``numba.prange`` in ``py_func`` is a plain ``range`` in the serial version.
    """

    def __init__(self, py_func, threshold=PARALLEL_THRESHOLD):
        self.py_func = py_func
        self.threshold = threshold
        self.serial = _compile(py_func, parallel=False)
        self.parallel = _compile(py_func, parallel=True)

    def __call__(self, *args, work):
        if work < self.threshold or numba.get_num_threads() == 1:
            return self.serial(*args)
        with _launch_guard():
            return self.parallel(*args)


def kernel(py_func=None, *, threshold=PARALLEL_THRESHOLD):
    """Decorator form of :class:`Kernel`."""
    if py_func is None:
        return lambda f: Kernel(f, threshold)
    return Kernel(py_func, threshold)


def serial_kernel(py_func):
    """A cached serial kernel (for helpers called from inside other kernels)."""
    return _compile(py_func, parallel=False)
