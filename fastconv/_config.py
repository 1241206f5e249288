"""Numba options and thread-pool policy, decided once for the whole package.

* numba's OpenMP workers spin briefly, then sleep, once their work ends:
  fastconv sets ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=300`` at import
  where the user has set neither (the policy alone where they set the spin
  count), and takes them back out of the environment once numba's pool has
  started (on fastconv's first parallel work), so that later subprocesses keep
  their own defaults. On a 2-core VM, waking a sleeping worker cost 35-70 µs per
  parallel kernel; the short spin saves it between the kernels of one call
  ((8, 64, 56, 56) conv2d 3.06 -> 2.63 ms). Longer spins also bridge the calls of
  a loop, but take the caller's core when another process keeps the other one
  busy: with libgomp's default (about 3 ms) a (1, 64, 56, 56) conv2d ran 10x
  slower, with 1000 spins a (1, 32, 112, 112) depthwise one 2.6x, with 300
  every layer stayed within 2x of its quiet time.
  A process has one libgomp: where one is already loaded (torch imported
  first), numba runs on it with its policy, and torch imported later runs on
  this one. BLAS runs single-threaded inside numba's tasks
  (:mod:`fastconv._blas`), so the two pools never take turns within one call.
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

import numba

#: The libgomp settings fastconv made (the user had not): libgomp reads them as
#: numba's pool loads it, whoever starts the pool (fastconv's first parallel call,
#: or the user's ``numba.set_num_threads``). A spin count would override a wait
#: policy the user chose, so it is set only where they set neither.
_WAIT = {}
if "OMP_WAIT_POLICY" not in os.environ:
    _WAIT["OMP_WAIT_POLICY"] = "PASSIVE"
    if "GOMP_SPINCOUNT" not in os.environ:
        _WAIT["GOMP_SPINCOUNT"] = "300"
os.environ.update(_WAIT)
_pool_lock = threading.Lock()
_pool_started = False


def start_thread_pool():
    """Start numba's workers if no one has yet, then take fastconv's wait policy
    back out of the environment. fastconv does this on its first parallel work,
    not at import, so that a process may still fork before it (a forked child
    cannot use an OpenMP pool its parent started)."""
    global _pool_started
    if _pool_started:
        return
    with _pool_lock:
        if _pool_started:
            return
        from numba.np.ufunc import parallel
        try:
            parallel._launch_threads()
        except Exception:  # noqa: BLE001 - no threading layer: kernels then fail with numba's own error
            pass
        finally:
            for name, value in _WAIT.items():
                if os.environ.get(name) == value:
                    del os.environ[name]
        _pool_started = True


def thread_count():
    """numba's thread count, its pool started first (:func:`start_thread_pool`)."""
    start_thread_pool()
    return numba.get_num_threads()


#: Work (elements written) below which a kernel runs serially: waking the
#: sleeping workers cost ~10 µs on the machine that set it, the time a serial loop
#: needs for ~2**18 products (35-70 µs on a 2-core VM measured since).
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
    start_thread_pool()
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
        if work < self.threshold or thread_count() == 1:
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
