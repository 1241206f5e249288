"""The Winograd path of conv2d (3x3, stride 1, groups 1) and of its weight
gradient against fastconv.reference."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastconv as fc
from fastconv import _blas, _winograd, reference
from fastconv._args import geometry

from cases import WINOGRAD_CASES as CASES
from conftest import DTYPES, RTOL, assert_matches, random_array

VARIANTS = {"F2": _winograd.F2, "F4": _winograd.F4, "F2_5x5": _winograd.F2_5}


def _window(xs, r, padding):
    """The case's geometry for an r x r kernel; a case whose plane it does not fit is skipped."""
    try:
        return geometry("test", xs[2:], (r, r), 1, padding, 1)
    except ValueError:
        pytest.skip(f"a {r}x{r} kernel does not fit {xs[2:]} with padding {padding}")


def _run_grad_weight(case, dtype, variant, rng):
    xs, o, padding = case
    r = variant.r
    g = _window(xs, r, padding)
    x = random_array(rng, xs, dtype)
    grad_out = random_array(rng, (xs[0], o, g.oh, g.ow), dtype)
    dw = np.full((o, xs[1], r, r), np.nan, dtype)
    assert _winograd.grad_weight(x, grad_out, g, dw, variant) is dw
    return dw, reference.conv2d_grad_weight(x, grad_out, dw.shape, padding=padding)


def _run(case, dtype, variant, rng, bias=True):
    xs, o, padding = case
    r = variant.r
    g = _window(xs, r, padding)
    x = random_array(rng, xs, dtype)
    w = random_array(rng, (o, xs[1], r, r), dtype)
    b = random_array(rng, (o,), dtype) if bias else np.zeros(o, dtype)
    out = np.full((xs[0], o, g.oh, g.ow), np.nan, dtype)
    _winograd.convolve(x, w, b, g, out, variant)
    return out, reference.conv2d(x, w, b if bias else None, padding=padding)


@pytest.mark.parametrize("run", [_run, _run_grad_weight], ids=["forward", "grad_weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name, variant, dtype, run, rng):
    result, expected = run(CASES[name], dtype, VARIANTS[variant], rng)
    assert_matches(result, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_bias(variant, rng):
    out, expected = _run(CASES["odd_pad1"], np.float64, VARIANTS[variant], rng, bias=False)
    assert_matches(out, expected)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("groups", [2, 3])
def test_groups(groups, variant, schedule, rng):
    """Grouped convolutions: one transform over every channel, a GEMM per group,
    on both schedules."""
    r = VARIANTS[variant].r
    x = random_array(rng, (2, 6 * groups, 9, 10), np.float64)
    w = random_array(rng, (4 * groups, 6, r, r), np.float64)
    b = random_array(rng, (4 * groups,), np.float64)
    g = geometry("test", x.shape[2:], (r, r), 1, 1, 1)
    out = np.full((2, 4 * groups, g.oh, g.ow), np.nan)
    assert _winograd.convolve(x, w, b, g, out, VARIANTS[variant]) is out
    assert_matches(out, reference.conv2d(x, w, b, padding=1, groups=groups))
    grad_out = random_array(rng, out.shape, np.float64)
    dw = np.full(w.shape, np.nan)
    assert _winograd.grad_weight(x, grad_out, g, dw, VARIANTS[variant]) is dw
    assert_matches(dw, reference.conv2d_grad_weight(x, grad_out, w.shape, padding=1, groups=groups))


def test_grouped_conv2d_takes_the_winograd_path(monkeypatch, rng):
    taken = []
    real = _winograd.convolve
    monkeypatch.setattr(_winograd, "convolve", lambda *args, **kw: taken.append(1) or real(*args, **kw))
    x = random_array(rng, (4, 64, 28, 28), np.float32)
    w = random_array(rng, (64, 32, 3, 3), np.float32)
    result = fc.conv2d(x, w, padding=1, groups=2)
    assert taken
    assert_matches(result, reference.conv2d(x, w, padding=1, groups=2))


@pytest.fixture(params=["fused", "matmul"])
def schedule(request, monkeypatch):
    """The fused schedule (BLAS called from the kernels), or the fallback where
    no BLAS is callable from compiled code (NumPy matmuls between transforms)."""
    if request.param == "matmul":
        monkeypatch.setattr(_blas, "address", lambda dtype: None)
    elif _blas.address(np.float64) is None:
        pytest.skip("no BLAS callable from kernels here")
    return request.param


@pytest.mark.parametrize("run", [_run, _run_grad_weight], ids=["forward", "grad_weight"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_blocks_of_images_and_tile_rows(variant, run, schedule, monkeypatch, rng):
    """Blocks of a few images, bands of tile rows within one image, and single
    tile rows (the weight gradient sums dU over them), on both schedules."""
    monkeypatch.setattr(_winograd, "MIN_BLOCK_TILES", 1)
    for budget in (1, 20_000, 200_000):
        for constant in ("BLOCK_BYTES", "MAX_BLOCK_BYTES", "CHUNK_BYTES"):
            monkeypatch.setattr(_winograd, constant, budget)
        assert _winograd._budget(1, 1 << 30) == _winograd._budget(None, 0) == budget
        result, expected = run(((3, 8, 23, 10), 6, 1), np.float64, VARIANTS[variant], rng)
        assert_matches(result, expected)


def test_one_tile_and_blocks_across_images(monkeypatch, rng):
    """A 2x2 output (one F(2x2) tile per image) and blocks that hold several images."""
    monkeypatch.setattr(_winograd, "MIN_BLOCK_TILES", 3)
    for case in (((5, 4, 4, 4), 3, 0), ((5, 4, 7, 5), 3, 1)):
        result, expected = _run(case, np.float64, _winograd.F2, rng)
        assert_matches(result, expected)


def _blas_threads():
    return [(info["filepath"], info["num_threads"]) for info in threadpool_info()
            if info["user_api"] == "blas"]


def _held():
    """Thread counts of the BLAS libraries :func:`fastconv._blas.one_thread` holds."""
    _blas.address(np.float32)
    held = {lib.filepath for lib in _blas._controller.lib_controllers if lib.user_api == "blas"}
    return {path: n for path, n in _blas_threads() if path in held}


@pytest.fixture(params=["openblas", "threadpoolctl"])
def thread_setter(request, monkeypatch):
    """Both ways fastconv sets BLAS thread counts: OpenBLAS's own functions, and
    threadpoolctl where a BLAS is something else."""
    _blas.address(np.float32)
    if request.param == "threadpoolctl":
        monkeypatch.setattr(_blas, "_direct", None)
    elif _blas._direct is None:
        pytest.skip("a BLAS loaded here is not a pthreads OpenBLAS")


def test_blas_thread_counts_are_restored(rng, thread_setter):
    """The BLAS libraries loaded at fastconv's first product run at one thread
    inside the kernels, and the counts the user set are back after every call,
    also after a nested use."""
    x = random_array(rng, (2, 32, 20, 20), np.float32)
    w = random_array(rng, (32, 32, 3, 3), np.float32)
    fc.conv2d(x, w, padding=1)  # the libraries numba loads with the kernels are in
    assert any("numpy" in path for path in _held())  # the BLAS that np.matmul and the kernels call
    with threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        y = fc.conv2d(x, w, padding=1)
        fc.conv2d_grad_weight(x, y, w.shape, padding=1)
        fc.conv2d(x, random_array(rng, (16, 32, 1, 1), np.float32))
        assert _blas_threads() == before
        with _blas.one_thread():
            assert all(n == 1 for n in _held().values())
            with _blas.one_thread():
                pass
            assert all(n == 1 for n in _held().values())
        assert _blas_threads() == before


def test_concurrent_calls_from_python_threads(rng):
    """Calls from several Python threads at once give each caller its own exact
    result, and leave the BLAS thread counts as they were."""
    xs = [random_array(rng, (2, 32, 16 + k, 18), np.float32) for k in range(6)]
    w = random_array(rng, (32, 32, 3, 3), np.float32)
    expected = [fc.conv2d(x, w, padding=1) for x in xs]
    before = _blas_threads()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: fc.conv2d(x, w, padding=1), xs * 3))
    for got, want in zip(results, expected * 3):
        np.testing.assert_array_equal(got, want)
    assert _blas_threads() == before


@pytest.mark.parametrize("r", [3, 5])
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e37])
def test_declines_values_it_could_not_transform_exactly(value, r, rng):
    """NaN, Inf and values whose transforms could overflow are declined (None);
    conv2d then takes an exact path that agrees with the reference."""
    x = random_array(rng, (1, 32, 12, 12), np.float32)
    w = 1e-3 * random_array(rng, (32, 32, r, r), np.float32)
    x[0, 3, 5, 6] = value
    g = geometry("test", x.shape[2:], (r, r), 1, r // 2, 1)
    out = np.empty((1, 32, 12, 12), np.float32)
    assert _winograd.convolve(x, w, np.zeros(32, np.float32), g, out) is None
    y = fc.conv2d(x, w, padding=r // 2)
    expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=r // 2)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    finite = np.isfinite(expected)
    assert np.abs(y[finite] - expected[finite]).max() <= 1e-4 * np.abs(expected[finite]).max()


@pytest.mark.parametrize("data", ["normal", "uniform"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_error_well_within_tolerance(variant, data, rng):
    """C=256: the float32 error stays 5x under the test tolerance, also on
    uniform [0, 1) inputs (a large mean, the harder case for Winograd)."""
    n, c, h, o, r = 1, 256, 20, 32, VARIANTS[variant].r
    x = rng.random((n, c, h, h)) if data == "uniform" else rng.standard_normal((n, c, h, h))
    x, w = x.astype(np.float32), rng.standard_normal((o, c, r, r)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    g = geometry("test", (h, h), (r, r), 1, r // 2, 1)
    out = np.empty((n, o, h, h), np.float32)
    _winograd.convolve(x, w, b, g, out, VARIANTS[variant])
    exact = reference.conv2d(*(a.astype(np.float64) for a in (x, w, b)), padding=r // 2)
    error = np.abs(out - exact).max() / np.abs(exact).max()
    assert error <= RTOL[np.dtype(np.float32)] / 5, error


@pytest.mark.parametrize("data", ["normal", "uniform"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_weight_float32_error_well_within_tolerance(variant, data, rng):
    """dW sums over every tile (here 3136 output positions): the float32 error
    stays 5x under the test tolerance on normal and on uniform [0, 1) data."""
    n, c, h, o, r = 4, 32, 28, 32, VARIANTS[variant].r
    draw = rng.random if data == "uniform" else rng.standard_normal
    x, grad_out = draw((n, c, h, h)), draw((n, o, h, h))
    g = geometry("test", (h, h), (r, r), 1, r // 2, 1)
    dw = np.empty((o, c, r, r), np.float32)
    _winograd.grad_weight(x.astype(np.float32), grad_out.astype(np.float32), g, dw, VARIANTS[variant])
    exact = reference.conv2d_grad_weight(x, grad_out, dw.shape, padding=r // 2)
    error = np.abs(dw - exact).max() / np.abs(exact).max()
    assert error <= RTOL[np.dtype(np.float32)] / 5, error


def test_transform_matrices_are_exact():
    """A^T [(G g) * (B^T d)] is the 1-D correlation of d with g, for every variant."""
    rng = np.random.default_rng(0)
    for v in VARIANTS.values():
        d, g = rng.standard_normal(v.alpha), rng.standard_normal(v.r)
        expected = np.correlate(d, g, mode="valid")
        np.testing.assert_allclose(v.at @ ((v.g @ g) * (v.bt @ d)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("filters, channels, r", [(40, 3, 3), (16, 7, 5), (9, 30, 3), (33, 20, 3)])
def test_weight_transform(filters, channels, r, dtype):
    """U = G w G^T for every filter, and for the adjoint with channels and
    filters swapped and taps reversed: taps moved in square blocks (the last
    filters and taps overlapping the blocks before) or, with too few filters
    or too little scratch, a filter at a time."""
    rng = np.random.default_rng(filters)
    variant = _winograd.F2_5 if r == 5 else _winograd.F4
    w = rng.standard_normal((filters, channels, r, r)).astype(dtype)
    u = np.empty((variant.alpha ** 2, channels, filters), dtype)
    taps = np.full(w.size, np.nan, dtype)
    assert _winograd.weight_transform(w, variant, u, taps) == np.abs(w).max()
    expected = np.einsum("ia,ocab,jb->ijco", variant.g, w, variant.g).reshape(u.shape)
    assert_matches(u, expected.astype(dtype))
    gathered = np.empty_like(u)
    _winograd.weight_transform(w, variant, gathered, taps[:-1])
    np.testing.assert_array_equal(gathered, u)
    adjoint = np.empty((variant.alpha ** 2, filters, channels), dtype)
    _winograd.weight_transform(w, variant, adjoint, taps, adjoint=True)
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    expected = np.einsum("ia,ocab,jb->ijco", variant.g, flipped, variant.g).reshape(adjoint.shape)
    assert_matches(adjoint, expected.astype(dtype))


@pytest.mark.parametrize("terms", range(1, 13))
def test_combine_sums_any_number_of_terms(terms):
    """The transforms' building block, in passes of up to five terms, over
    several rows with strides, without touching the gaps between rows."""
    rng = np.random.default_rng(terms)
    rows, n, src_step, out_step = 3, 37, 50, 41
    src = rng.standard_normal(terms * 8 + rows * src_step + n)
    starts = rng.choice(terms * 8, terms, replace=False).astype(np.int64)
    coefs = rng.standard_normal(terms)
    out = np.full(5 + rows * out_step, np.nan)
    _winograd._combine(out, 5, out_step, src, starts, src_step, coefs, rows, n)
    for r in range(rows):
        expected = sum(c * src[s + r * src_step:s + r * src_step + n] for s, c in zip(starts, coefs))
        np.testing.assert_allclose(out[5 + r * out_step:5 + r * out_step + n], expected, rtol=1e-12)
        assert np.isnan(out[5 + r * out_step + n:5 + (r + 1) * out_step]).all()
    assert np.isnan(out[:5]).all()


@pytest.mark.parametrize("r", [3, 5])
def test_conv2d_takes_the_winograd_path(r, monkeypatch, rng):
    calls = []
    original = _winograd.convolve
    monkeypatch.setattr(_winograd, "convolve", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, (1, 64, 56, 56), np.float32)
    w = random_array(rng, (64, 64, r, r), np.float32)
    b = random_array(rng, (64,), np.float32)
    y = fc.conv2d(x, w, b, padding=r // 2)
    assert calls == [1]
    assert_matches(y, reference.conv2d(x, w, b, padding=r // 2))


@pytest.mark.parametrize("shape, filters, winograd", [
    ((2, 12, 32, 33), 10, True),  # 8-15 channels, no more out than in, 32x32 or more
    ((2, 12, 32, 33), 14, False),  # more out than in
    ((4, 12, 16, 16), 10, False),  # small planes
])
def test_few_channel_conv2d_route(shape, filters, winograd, monkeypatch, rng):
    calls = []
    original = _winograd.convolve
    monkeypatch.setattr(_winograd, "convolve", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, shape, np.float32)
    w = random_array(rng, (filters, shape[1], 3, 3), np.float32)
    assert_matches(fc.conv2d(x, w, padding=1), reference.conv2d(x, w, padding=1))
    assert calls == ([1] if winograd else [])


@pytest.mark.parametrize("filters, winograd", [(64, True), (20, True), (12, False)])
def test_conv2d_grad_weight_takes_the_winograd_path(filters, winograd, monkeypatch, rng):
    """From 32 input channels and 16 filters (20: an odd width for the GEMMs)."""
    calls = []
    original = _winograd.grad_weight
    monkeypatch.setattr(_winograd, "grad_weight",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, (8, 64, 28, 28), np.float32)
    grad_out = random_array(rng, (8, filters, 28, 28), np.float32)
    dw = fc.conv2d_grad_weight(x, grad_out, (filters, 64, 3, 3), padding=1)
    assert calls == ([1] if winograd else [])
    assert_matches(dw, reference.conv2d_grad_weight(x, grad_out, dw.shape, padding=1))


@pytest.mark.parametrize("padding", [1, "same", (0, 1), "valid"])
def test_conv2d_out_and_strided_input(padding, rng):
    """Through the public function: out= is filled and returned, a strided input
    and a Fortran-order weight give the same result."""
    x = random_array(rng, (2, 32, 19, 2 * 17), np.float64)[..., ::2]
    w = np.asfortranarray(random_array(rng, (40, 32, 3, 3), np.float64))
    b = random_array(rng, (40,), np.float64)
    expected = reference.conv2d(x, w, b, padding=padding)
    out = np.full(expected.shape, np.nan)
    assert fc.conv2d(x, w, b, padding=padding, out=out) is out
    assert_matches(out, expected)


def test_weights_changed_in_place_are_seen(rng):
    """No stale cache: a layer updates its weights in place between calls."""
    x = random_array(rng, (1, 32, 16, 16), np.float32)
    w = random_array(rng, (32, 32, 3, 3), np.float32)
    fc.conv2d(x, w, padding=1)
    w -= 0.1 * random_array(rng, w.shape, np.float32)
    assert_matches(fc.conv2d(x, w, padding=1), reference.conv2d(x, w, padding=1))


def test_blas_limit_holds_in_any_python_thread(rng, thread_setter):
    """The one-thread limit takes effect when the call comes from a thread other
    than the one that made fastconv's first call, and fastconv leaves no claim on
    the BLAS that would make a later threadpoolctl limit from another thread a no-op."""
    x = random_array(rng, (2, 32, 20, 20), np.float32)
    w = random_array(rng, (32, 32, 3, 3), np.float32)
    fc.conv2d(x, w, padding=1)
    before = _blas_threads()
    seen = []

    def in_thread():
        with _blas.one_thread():
            seen.append(list(_held().items()))
        seen.append(_blas_threads())
        fc.conv2d(x, w, padding=1)
        with threadpool_limits(1, user_api="blas"):
            seen.append(_blas_threads())

    with ThreadPoolExecutor(1) as pool:
        pool.submit(in_thread).result()
    inside, after, limited = seen
    assert all(n == 1 for _, n in inside) and all(n == 1 for _, n in limited)
    assert after == before and _blas_threads() == before
