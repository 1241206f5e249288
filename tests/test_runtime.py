"""Threads, the compilation cache and the package surface: the rules DESIGN.md
sets for every function, checked on batch_outer_hadamard (every op shares them
through fastconv._config)."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv as fc


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


def test_unwritable_cache_never_fails_a_call():
    out = run_python("""
        import numba.core.caching as caching
        def refuse(self):
            raise PermissionError("read-only")
        caching._CacheLocator.ensure_cache_path = refuse
        import numpy as np, fastconv as fc
        A, B = np.ones((300, 300)), np.full((300, 300), 3.0)
        assert (fc.batch_outer_hadamard(A, B) == 3.0).all()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_public_names_match_the_reference():
    for name in fc.__all__:
        if name != "reference" and callable(getattr(fc, name)) and not isinstance(getattr(fc, name), type):
            assert hasattr(fc.reference, name), f"fastconv.reference lacks {name}"


def test_thread_pool_settings_are_defaults_the_user_can_override():
    code = "import os, fastconv; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean)
    assert result.stdout.split() == ["PASSIVE", "12"], result.stderr
    assert run_python(code, OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="7").split() == ["ACTIVE", "7"]
