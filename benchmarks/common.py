"""Shared pieces of the asv suite: the operation table, thread pinning, warm-up,
and the benchmark classes every ``bench_<operation>.py`` file builds from it.

asv runs this suite against every commit of the project's history, so nothing
here depends on the fastconv under test. The table is ``fastconv/_registry.py``
of the source tree holding this directory, loaded by path: its workloads and
methods, hence every parameter list, are the same whichever commit asv
installed. A function the installed fastconv lacks, or an argument it does not
support yet, raises ``NotImplementedError`` in ``setup``, which asv reports as
skipped.

Per operation (``Conv2d`` stands for any):

* ``Conv2d.time_conv2d`` - fastconv, steady state (kernels compiled or loaded
  and pages touched in ``setup``), per workload and dtype;
* ``Conv2dRelative.track_relative_time`` - fastconv's time as a fraction of the
  operation's baseline (a plain NumPy recipe or the einsum reference; lower is
  better, as asv assumes), both timed in alternating batches of calls in one
  process, so that a slower or busier machine moves both and the ratio stays;
* ``Conv2dPeers.time_conv2d`` - the peers (torch, the from-scratch recipes);
* ``Conv2dReference.time_conv2d`` - the einsum reference, on the workloads where
  it takes at most a few seconds;
* ``Conv2dMemory.track_peak_memory`` - the memory one call adds at its peak
  (resident set high-water mark reset just before the call), per method, on the
  workload with the most bytes, in float32.
"""
import ctypes
import ctypes.util
import gc
import importlib
import importlib.util
import os
import statistics
import sys
import timeit
from pathlib import Path

#: Threads for fastconv (numba), BLAS and torch alike (the machine has 2 cores).
THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))
# Before numpy or numba load (every benchmark module imports this one first), so
# their pools start at this size.
for _variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = str(THREADS)


# asv forks each benchmark from a server process that imported this suite: what
# is imported here is paid once, not in every benchmark. Each is optional (an old
# commit's environment may lack it). fastconv and torch are not among them: each
# loads in the benchmarks that time it, so that a process timing one never runs
# on the other's OpenMP runtime (the first one loaded serves both, with its
# policy: torch's workers spin, fastconv's sleep).
for _module in ("numpy", "numba", "threadpoolctl"):
    try:
        importlib.import_module(_module)
    except ImportError:
        pass

#: Processes per fastconv benchmark (asv's default is 2): a parallel call's time
#: depends on the process it runs in (where its threads land, how long a sleeping
#: worker takes to wake), so more processes, not more calls, steady the figure.
ROUNDS = 4
#: Wall-clock timer: the kernels are parallel, process time would count both cores.
TIMER = timeit.default_timer
DTYPES = ["float32", "float64"]


def _load_registry():
    path = Path(__file__).resolve().parents[1] / "fastconv" / "_registry.py"
    spec = importlib.util.spec_from_file_location("_fastconv_source__registry", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


registry = _load_registry()


def pin_threads():
    """numba's and BLAS's threads to THREADS (asv forks each benchmark from a
    server process; the settings are per process and per thread)."""
    try:
        import numba
        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(THREADS)
    except ImportError:
        pass


def build(op_name, workload, method, dtype, seed=0):
    """A no-argument callable running ``method`` on the named workload (arrays
    drawn from ``seed``), after a warm-up. NotImplementedError where the method or
    its arguments do not exist at this commit."""
    op = registry.OPERATIONS[op_name]
    args, kwargs = op.arguments(workload, dtype, seed)
    run = op.method(method, args, kwargs)  # imports the method's library before any pool starts
    pin_threads()
    if method == "torch":
        registry.torch_module().set_num_threads(THREADS)
    try:
        run()  # compiles or loads the kernels
    except (TypeError, ValueError) as unsupported:  # an older fastconv without this case
        if method not in ("fastconv", "reference"):
            raise
        raise NotImplementedError(f"{method} does not support this case here: {unsupported}") from None
    warm_up(run)
    return run


def warm_up(run, calls=2, seconds=0.2):
    """A few more calls (pages touched, caches and thread pools awake)."""
    stop = TIMER() + seconds
    for _ in range(calls):
        run()
        if TIMER() > stop:
            break


def median_time(run, min_seconds=0.02, calls=3):
    """Median seconds per call of ``calls`` timings of enough calls to last ``min_seconds``."""
    start = TIMER()
    run()
    once = TIMER() - start
    number = max(1, int(min_seconds / max(once, 1e-9)))
    times = []
    for _ in range(calls):
        start = TIMER()
        for _ in range(number):
            run()
        times.append((TIMER() - start) / number)
    return statistics.median(times)


def relative_time(pairs, seconds=0.5, least=15, batch_seconds=1e-2):
    """Median of paired ratios fast time / baseline time: a batch of fast calls,
    then a batch of baseline calls as long (at least ``batch_seconds`` each: with
    1 ms batches the 20x30 outer-Hadamard ratio spread over 0.50-0.90 between
    processes, with 10 ms over 0.52-0.60), over and over for ``seconds`` and at
    least ``least`` pairs, cycling through ``pairs`` of (fast, baseline) built on
    separately allocated arrays (the arrays' alignment moves both times). A pair
    is timed back to back, so a busy stretch of a shared machine moves both of
    its times (timing each method for a whole round instead left the ratio of
    small outer-Hadamard products spread over 0.32-0.76 between processes)."""
    batches = []
    for fast, baseline in pairs:
        counts = []
        for run in (fast, baseline):
            start = TIMER()
            run()
            counts.append(max(1, int(batch_seconds / max(TIMER() - start, 1e-9))))
        batches.append((fast, baseline, max(counts)))
    ratios = []
    stop = TIMER() + seconds
    while len(ratios) < least or TIMER() < stop:
        fast, baseline, count = batches[len(ratios) % len(batches)]
        start = TIMER()
        for _ in range(count):
            fast()
        middle = TIMER()
        for _ in range(count):
            baseline()
        ratios.append((middle - start) / (TIMER() - middle))
    return statistics.median(ratios)


def _memory_status():
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def map_large_allocations():
    """glibc serves every allocation above 128 KB with its own mapping, returned to
    the system when freed (a fixed threshold: glibc otherwise raises it after the
    first large free and keeps later arrays in its heap, where they stay resident
    and a call reusing them would seem to need no memory)."""
    _libc().mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def peak_memory(run):
    """Bytes a call adds to the resident set at its peak: freed memory is returned
    to the system and the high-water mark reset just before the call, so setup and
    earlier calls do not count."""
    gc.collect()
    _libc().malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the resident set's high-water mark (Linux)
    except OSError:
        raise NotImplementedError("the peak resident set cannot be reset here") from None
    before = _memory_status()["VmRSS"]
    run()
    return _memory_status()["VmHWM"] - before


def _class_name(op_name):
    return "".join(part.capitalize() for part in op_name.split("_"))


def operation_suite(op_name):
    """The benchmark classes of one operation (see the module docstring), by name."""
    op = registry.OPERATIONS[op_name]
    name = _class_name(op_name)
    workloads = list(op.workloads)
    peers = list(op.peers)
    timed = f"time_{op_name}"
    largest = max(workloads, key=lambda w: op.nbytes(op.workloads[w].dims, 4))

    def time_call(self, *params):
        self.run()

    class Fast:
        params = [workloads, DTYPES]
        param_names = ["workload", "dtype"]
        timer = TIMER
        rounds = ROUNDS

        def setup(self, workload, dtype):
            self.run = build(op_name, workload, "fastconv", dtype)

    class Relative:
        params = [workloads, DTYPES]
        param_names = ["workload", "dtype"]
        timeout = 120
        rounds = ROUNDS

        def setup(self, workload, dtype):
            if op.baseline == "reference" and not registry.reference_is_cheap(op, workload):
                raise NotImplementedError("the einsum reference takes seconds here")
            self.pairs = [(build(op_name, workload, "fastconv", dtype, seed),
                           build(op_name, workload, op.baseline, dtype, seed)) for seed in range(3)]

        def track_relative_time(self, workload, dtype):
            return relative_time(self.pairs)

        track_relative_time.unit = f"fastconv time / {op.baseline} time"

    class Peers:
        params = [workloads, peers, DTYPES]
        param_names = ["workload", "method", "dtype"]
        timer = TIMER
        timeout = 120

        def setup(self, workload, method, dtype):
            self.run = build(op_name, workload, method, dtype)

    class Reference:
        params = [workloads, DTYPES]
        param_names = ["workload", "dtype"]
        timer = TIMER
        timeout = 180
        number = 1
        repeat = (1, 3, 20.0)
        warmup_time = 0

        def setup(self, workload, dtype):
            if not registry.reference_is_cheap(op, workload):
                raise NotImplementedError("the einsum reference takes many seconds here")
            self.run = build(op_name, workload, "reference", dtype)

    class Memory:
        params = [[largest], ["fastconv", "reference", *peers]]
        param_names = ["workload", "method"]
        timeout = 120

        def setup(self, workload, method):
            if method == "reference" and not registry.reference_is_cheap(op, workload):
                raise NotImplementedError("the einsum reference takes many seconds here")
            map_large_allocations()
            self.run = build(op_name, workload, method, "float32")

        def track_peak_memory(self, workload, method):
            return peak_memory(self.run)

        track_peak_memory.unit = "bytes"

    for cls in (Fast, Peers, Reference):
        setattr(cls, timed, time_call)
    suite = {"": Fast, "Relative": Relative, "Peers": Peers, "Reference": Reference, "Memory": Memory}
    classes = {}
    for suffix, cls in suite.items():
        cls.__name__ = cls.__qualname__ = name + suffix
        classes[cls.__name__] = cls
    return classes
