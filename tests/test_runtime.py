"""The rules every operation shares: threads, the compilation cache, running without
the JIT, the package surface, and the argument handling of fastconv._args (byte
order, window arguments beyond int64, messages)."""
import inspect
import os
import pathlib
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import fastconv as fc

from cases import every_operation
from conftest import DTYPES, assert_matches, random_array

TESTS = pathlib.Path(__file__).resolve().parent


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter; return its stdout (fails on a non-zero exit)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=300,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


CONCURRENT_CALLS = """
    import numpy as np, fastconv as fc
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    pairs = [(rng.random((30, 40, 50)), rng.random((20, 40, 50))) for _ in range(8)]
    expected = [A[:, None] * B[None] for A, B in pairs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: fc.batch_outer_hadamard(*p), pairs * 4))
    assert all(np.array_equal(r.reshape(e.shape), e) for r, e in zip(results, expected * 4))
    import numba; print(numba.threading_layer())
"""


def test_concurrent_calls_from_python_threads(rng):
    pairs = [(rng.random((30, 40, 50)), rng.random((20, 40, 50))) for _ in range(6)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: fc.batch_outer_hadamard(*p), pairs * 3))
    for result, (A, B) in zip(results, pairs * 3):
        assert np.array_equal(result, fc.reference.batch_outer_hadamard(A, B))


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_concurrent_calls_under_each_threading_layer(layer):
    """workqueue aborts the process on concurrent launches unless fastconv guards them."""
    assert run_python(CONCURRENT_CALLS, NUMBA_THREADING_LAYER=layer).strip() == layer


def test_single_thread_setting_is_honoured():
    out = run_python("""
        import numba, numpy as np, fastconv as fc
        numba.set_num_threads(1)
        A, B = np.ones((100, 1000)), np.full((100, 1000), 2.0)
        assert (fc.batch_outer_hadamard(A, B) == 2.0).all()
        print(numba.get_num_threads())
    """)
    assert out.strip() == "1"


FIRST_CALL = """
    import numpy as np, fastconv as fc
    from fastconv.hadamard import _outer_hadamard as k
    fc.batch_outer_hadamard(np.ones((2, 3)), np.ones((4, 3)))
    fc.batch_outer_hadamard(np.ones((200, 300)), np.ones((400, 300)))
    print(sum(k.serial.stats.cache_hits.values()) + sum(k.parallel.stats.cache_hits.values()),
          sum(k.serial.stats.cache_misses.values()) + sum(k.parallel.stats.cache_misses.values()))
"""


def test_second_process_loads_kernels_from_the_cache(tmp_path):
    first = run_python(FIRST_CALL, NUMBA_CACHE_DIR=str(tmp_path)).split()
    second = run_python(FIRST_CALL, NUMBA_CACHE_DIR=str(tmp_path)).split()
    assert first == ["0", "2"], f"first process: hits, misses = {first}"
    assert second == ["2", "0"], f"second process: hits, misses = {second}"


#: Runs every public operation on small float32 inputs against the reference.
EVERY_OPERATION = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(TESTS)!r})
    import numpy as np, fastconv as fc
    from cases import every_operation
    for name, (args, kwargs) in every_operation(np.random.default_rng(0)).items():
        result = getattr(fc, name)(*args, **kwargs)
        expected = getattr(fc.reference, name)(*args, **kwargs)
        pairs = zip(result, expected, strict=True) if isinstance(result, tuple) else [(result, expected)]
        for r, e in pairs:
            assert r.dtype == e.dtype == np.float32, (name, r.dtype, e.dtype)
            assert r.shape == e.shape and np.allclose(r, e, rtol=1e-4, atol=1e-5), name
        print(name)
""")
OPERATIONS = sorted(fc.reference.__all__)


def test_unwritable_cache_never_fails_a_call():
    out = run_python(textwrap.dedent("""
        import numba.core.caching as caching
        def refuse(self):
            raise PermissionError("read-only")
        caching._CacheLocator.ensure_cache_path = refuse
    """) + EVERY_OPERATION)
    assert sorted(out.split()) == OPERATIONS


def test_every_operation_runs_without_the_jit():
    assert sorted(run_python(EVERY_OPERATION, NUMBA_DISABLE_JIT="1").split()) == OPERATIONS


def test_public_functions_match_the_reference_in_name_and_signature():
    functions = [name for name in fc.__all__ if name not in ("reference", "layers")]
    assert sorted(functions) == OPERATIONS
    for name in functions:
        fast, reference = inspect.signature(getattr(fc, name)), inspect.signature(getattr(fc.reference, name))
        assert fast == reference, f"{name}{fast} != reference.{name}{reference}"


def test_layers_are_reachable_from_the_package():
    assert "layers" in fc.__all__
    assert fc.layers.Conv2d(2, 3, 3).weights.shape == (3, 2, 3, 3)


def test_thread_pool_settings_are_defaults_the_user_can_override():
    """numba's OpenMP workers spin briefly and sleep unless the user says
    otherwise, and the environment the user's other libraries and subprocesses
    see is left alone."""
    fc._config.start_thread_pool()
    if numba.threading_layer() != "omp":
        pytest.skip("numba runs on another threading layer here")
    code = ("import ctypes, os, numpy as np, fastconv; "
            "import numba; numba.set_num_threads(numba.config.NUMBA_NUM_THREADS); "  # numba starts the pool
            "fastconv.conv2d(np.ones((2, 32, 20, 20)), np.ones((32, 32, 3, 3)), padding=1); "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'), os.environ.get('GOMP_SPINCOUNT', 'unset'), "
            "os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset'), flush=True); "
            "ctypes.CDLL('libgomp.so.1').omp_display_env(1)")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean)
    assert result.stdout.split() == ["unset", "unset", "unset"], result.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr
    assert "GOMP_SPINCOUNT = '300'" in result.stderr
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(clean, OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="7"))
    assert result.stdout.split() == ["ACTIVE", "unset", "7"], result.stderr
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in result.stderr
    assert "GOMP_SPINCOUNT = '300'" not in result.stderr
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(clean, GOMP_SPINCOUNT="5"))
    assert result.stdout.split() == ["unset", "5", "unset"], result.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr and "GOMP_SPINCOUNT = '5'" in result.stderr


def test_a_process_can_fork_after_importing_fastconv():
    """Importing fastconv starts no thread pool: a child forked before the first
    call runs the parallel kernels (GNU OpenMP cannot be used in a child forked
    after its pool started)."""
    code = textwrap.dedent("""
        import multiprocessing, numpy as np, fastconv
        def child(queue):
            x = np.arange(8 * 32 * 20 * 20, dtype=np.float32).reshape(8, 32, 20, 20) % 7
            queue.put(float(fastconv.conv2d(x, np.ones((32, 32, 3, 3), np.float32), padding=1).sum()))
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,))
        process.start()
        print(queue.get(timeout=120))
        process.join()
        print(process.exitcode)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    total, exitcode = result.stdout.split()
    assert exitcode == "0" and float(total) > 0, result.stderr


# -- argument handling shared by every operation -----------------------------------

def _results(value):
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPERATIONS)
def test_non_native_byte_order_gives_native_results(name, dtype, rng):
    args, kwargs = every_operation(rng, dtype)[name]
    swapped = tuple(a.astype(a.dtype.newbyteorder("S")) if isinstance(a, np.ndarray) else a for a in args)
    assert not swapped[0].dtype.isnative
    results = _results(getattr(fc, name)(*swapped, **kwargs))
    expected = _results(getattr(fc.reference, name)(*args, **kwargs))
    assert len(results) == len(expected)
    for result, reference in zip(results, expected):
        assert result.dtype == np.dtype(dtype) and result.dtype.isnative
        assert_matches(result, reference)


def _windowed_calls(rng, stride, small_stride):
    """Every windowed operation at ``stride``, with the reference at the equivalent
    ``small_stride``: name -> (fast result, expected)."""
    x, w = random_array(rng, (2, 3, 5, 6)), random_array(rng, (4, 3, 3, 2))
    window = dict(padding=2)
    y = fc.reference.conv2d(x, w, stride=small_stride, **window)
    g = random_array(rng, y.shape)
    cols = random_array(rng, fc.reference.im2col(x, (3, 2), stride=small_stride, **window).shape)
    calls = {
        "im2col": lambda m, s: m.im2col(x, (3, 2), stride=s, **window),
        "col2im": lambda m, s: m.col2im(cols, x.shape, (3, 2), stride=s, **window),
        "conv2d": lambda m, s: m.conv2d(x, w, stride=s, **window),
        "conv2d_grad_input": lambda m, s: m.conv2d_grad_input(g, w, x.shape, stride=s, **window),
        "conv2d_grad_weight": lambda m, s: m.conv2d_grad_weight(x, g, w.shape, stride=s, **window),
    }
    return {name: (call(fc, stride), call(fc.reference, small_stride)) for name, call in calls.items()}


@pytest.mark.parametrize("stride, small_stride", [
    (2**63 - 1, 9), (10**30, 9), ((10**30, 2), (9, 2)), ((1, 2**63 - 1), (1, 9)), (2**64 + 3, 9),
], ids=["int64_max", "1e30", "pair_1e30", "pair_int64_max", "beyond_uint64"])
def test_strides_beyond_int64_give_one_output_along_their_axis(stride, small_stride, rng):
    for name, (result, expected) in _windowed_calls(rng, stride, small_stride).items():
        assert_matches(result, expected), name


@pytest.mark.parametrize("name", ["im2col", "col2im", "conv2d", "conv2d_grad_input", "conv2d_grad_weight"])
@pytest.mark.parametrize("padding", [2**62, 10**30, (0, 2**63 - 1)], ids=["2**62", "1e30", "pair_int64_max"])
def test_padding_beyond_index_arithmetic_is_a_value_error(name, padding):
    x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1))
    window = dict(stride=2**63 - 1, padding=padding)
    calls = {
        "im2col": lambda: fc.im2col(x, 1, **window),
        "col2im": lambda: fc.col2im(np.ones((1, 1)), x.shape, 1, **window),
        "conv2d": lambda: fc.conv2d(x, w, **window),
        "conv2d_grad_input": lambda: fc.conv2d_grad_input(np.ones((1, 1, 1, 1)), w, x.shape, **window),
        "conv2d_grad_weight": lambda: fc.conv2d_grad_weight(x, np.ones((1, 1, 1, 1)), w.shape, **window),
    }
    with pytest.raises(ValueError, match=rf"{name}: padding=.* too large for 64-bit index arithmetic"):
        calls[name]()


def test_the_dilation_of_a_one_tap_kernel_is_never_used(rng):
    x = random_array(rng, (2, 3, 4, 5))
    assert_matches(fc.im2col(x, (1, 2), dilation=(10**30, 2)),
                   fc.reference.im2col(x, (1, 2), dilation=(1, 2)))
    with pytest.raises(ValueError, match=r"im2col: kernel 3x3 with dilation"):
        fc.im2col(x, 3, dilation=10**30)


@pytest.mark.parametrize("call, message", [
    (lambda x, w: fc.conv2d(x, w),
     r"conv2d: weight has 3 input channels per group but x has 5 channels \(groups=1\); "
     r"x \(2, 5, 6, 3\) looks channels-last \(N, H, W, C\), but fastconv expects NCHW \(N, C, H, W\): "
     r"transpose it with \.transpose\(0, 3, 1, 2\)"),
    (lambda x, w: fc.conv2d_grad_weight(x, np.ones((2, 8, 3, 4)), w.shape),
     r"conv2d_grad_weight: weight has 3 input channels .* x \(2, 5, 6, 3\) looks channels-last"),
    (lambda x, w: fc.conv2d_grad_input(np.ones((2, 8, 3, 4)), w, x.shape),
     r"conv2d_grad_input: .* input_shape \(2, 5, 6, 3\) looks channels-last .*: pass \(N, C, H, W\)"),
    (lambda x, w: fc.conv2d(x, np.ones((8, 1, 3, 3)), groups=3),
     r"conv2d: x has 5 channels, not divisible by groups=3; x \(2, 5, 6, 3\) looks channels-last"),
], ids=["conv2d", "conv2d_grad_weight", "conv2d_grad_input", "groups"])
def test_channels_last_input_gets_a_layout_hint(call, message):
    x, w = np.ones((2, 5, 6, 3)), np.ones((8, 3, 3, 3))
    with pytest.raises(ValueError, match=message):
        call(x, w)


def test_no_layout_hint_when_the_last_axis_does_not_match():
    with pytest.raises(ValueError, match=r"x has 5 channels \(groups=1\)$"):
        fc.conv2d(np.ones((2, 5, 6, 4)), np.ones((8, 3, 3, 3)))


def test_a_positional_stride_is_explained():
    x, w = np.ones((2, 3, 5, 5)), np.ones((8, 3, 3, 3))
    message = (r"conv2d: bias must have shape \(8,\) for 8 output channels, got \(\); "
               r".*keyword-only, as in conv2d\(x, weight, stride=2\)")
    with pytest.raises(ValueError, match=message):
        fc.conv2d(x, w, 2)
    with pytest.raises(ValueError, match=r"got \(3,\)$"):
        fc.conv2d(x, w, np.ones(3))


def test_chunks_hold_enough_pixels_for_the_gemm(monkeypatch):
    """Images per chunk: as many as the cache budget holds, but at least
    MIN_CHUNK_PIXELS output pixels (small planes take several images), never more
    than a thread's share."""
    from fastconv import _workspace

    monkeypatch.setattr(_workspace, "CHUNK_BYTES", 1 << 20)
    assert _workspace.images_per_chunk(32, 1 << 20, 49, 2) == -(-_workspace.MIN_CHUNK_PIXELS // 49)
    assert _workspace.images_per_chunk(32, 1 << 20, 4096, 2) == 1
    assert _workspace.images_per_chunk(32, 1 << 16, 49, 2) == 16
    assert _workspace.images_per_chunk(3, 1 << 20, 1, 2) == 2


def test_scratch_is_bounded_and_never_shared_by_two_holders():
    """Kernel scratch: arrays carved from one buffer don't overlap, a nested or
    concurrent holder gets memory of its own, and what is kept stays under LIMIT."""
    from fastconv import _workspace

    with _workspace.scratch(np.float32, (10,), (3, 4)) as (a, b):
        assert a.shape == (10,) and b.shape == (3, 4) and b.flags.c_contiguous
        assert not np.shares_memory(a, b)
        with _workspace.scratch(np.float32, (5,)) as (c,):
            assert not np.shares_memory(c, a) and not np.shares_memory(c, b)
    with _workspace.scratch(np.float32, (_workspace.LIMIT // 4 + 1,)):
        pass
    assert all(buffer.nbytes <= _workspace.LIMIT for buffer in _workspace._kept.values())
