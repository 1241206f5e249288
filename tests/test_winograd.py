"""The Winograd path of conv2d (3x3, stride 1, groups 1) and of its weight
gradient against fastconv.reference."""
import numpy as np
import pytest
from conftest import DTYPES, RTOL, assert_matches, random_array

import fastconv as fc
from fastconv import _winograd, reference
from fastconv._args import geometry

VARIANTS = {"F2": _winograd.F2, "F4": _winograd.F4}

# name -> (x shape, O, padding): odd sizes where OH/OW are not multiples of the
# tile, every padding form, small and >= 64 channels.
CASES = {
    "odd_pad1": ((2, 5, 9, 11), 7, 1),
    "valid_tiny": ((1, 3, 5, 5), 2, 0),
    "pad2_narrow": ((3, 8, 13, 6), 4, 2),
    "same": ((2, 4, 7, 9), 3, "same"),
    "valid_str": ((1, 6, 10, 12), 5, "valid"),
    "pairs": ((2, 4, 7, 9), 3, (0, 2)),
    "pairs_other": ((1, 5, 8, 5), 6, (2, 1)),
    "one_column": ((2, 3, 9, 1), 4, 1),
    "wide_channels": ((2, 64, 12, 17), 72, 1),
    "resnet_like": ((1, 64, 28, 28), 64, 1),
}


def _run_grad_weight(case, dtype, variant, rng):
    xs, o, padding = case
    x = random_array(rng, xs, dtype)
    g = geometry("test", xs[2:], (3, 3), 1, padding, 1)
    grad_out = random_array(rng, (xs[0], o, g.oh, g.ow), dtype)
    dw = np.full((o, xs[1], 3, 3), np.nan, dtype)
    assert _winograd.grad_weight_3x3(x, grad_out, g, dw, variant) is dw
    return dw, reference.conv2d_grad_weight(x, grad_out, dw.shape, padding=padding)


def _run(case, dtype, variant, rng, bias=True):
    xs, o, padding = case
    x = random_array(rng, xs, dtype)
    w = random_array(rng, (o, xs[1], 3, 3), dtype)
    b = random_array(rng, (o,), dtype) if bias else np.zeros(o, dtype)
    g = geometry("test", xs[2:], (3, 3), 1, padding, 1)
    out = np.full((xs[0], o, g.oh, g.ow), np.nan, dtype)
    _winograd.conv2d_3x3(x, w, b, g, out, variant)
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


@pytest.mark.parametrize("run", [_run, _run_grad_weight], ids=["forward", "grad_weight"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunks_of_images_and_tile_rows(variant, run, monkeypatch, rng):
    """Chunks of a few images, and bands of tile rows within one image (the weight
    gradient sums dU over them)."""
    for budget in (1, 20_000, 200_000):
        monkeypatch.setattr(_winograd, "CHUNK_BYTES", budget)
        result, expected = run(((3, 8, 23, 10), 6, 1), np.float64, VARIANTS[variant], rng)
        assert_matches(result, expected)


@pytest.mark.parametrize("data", ["normal", "uniform"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_error_well_within_tolerance(variant, data, rng):
    """C=256: the float32 error stays 5x under the test tolerance, also on
    uniform [0, 1) inputs (a large mean, the harder case for Winograd)."""
    n, c, h, o = 1, 256, 20, 32
    x = rng.random((n, c, h, h)) if data == "uniform" else rng.standard_normal((n, c, h, h))
    x, w = x.astype(np.float32), rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    g = geometry("test", (h, h), (3, 3), 1, 1, 1)
    out = np.empty((n, o, h, h), np.float32)
    _winograd.conv2d_3x3(x, w, b, g, out, VARIANTS[variant])
    exact = reference.conv2d(*(a.astype(np.float64) for a in (x, w, b)), padding=1)
    error = np.abs(out - exact).max() / np.abs(exact).max()
    assert error <= RTOL[np.dtype(np.float32)] / 5, error


@pytest.mark.parametrize("data", ["normal", "uniform"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_weight_float32_error_well_within_tolerance(variant, data, rng):
    """dW sums over every tile (here 3136 output positions): the float32 error
    stays 5x under the test tolerance on normal and on uniform [0, 1) data."""
    n, c, h, o = 4, 32, 28, 32
    draw = rng.random if data == "uniform" else rng.standard_normal
    x, grad_out = draw((n, c, h, h)), draw((n, o, h, h))
    g = geometry("test", (h, h), (3, 3), 1, 1, 1)
    dw = np.empty((o, c, 3, 3), np.float32)
    _winograd.grad_weight_3x3(x.astype(np.float32), grad_out.astype(np.float32), g, dw,
                              VARIANTS[variant])
    exact = reference.conv2d_grad_weight(x, grad_out, dw.shape, padding=1)
    error = np.abs(dw - exact).max() / np.abs(exact).max()
    assert error <= RTOL[np.dtype(np.float32)] / 5, error


def test_transform_matrices_are_exact():
    """A^T [(G g) * (B^T d)] is the 1-D correlation of d with g, for every variant."""
    rng = np.random.default_rng(0)
    for v in VARIANTS.values():
        d, g = rng.standard_normal(v.alpha), rng.standard_normal(3)
        expected = np.correlate(d, g, mode="valid")
        np.testing.assert_allclose(v.at @ ((v.g @ g) * (v.bt @ d)), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_takes_the_winograd_path(monkeypatch, rng):
    calls = []
    original = _winograd.conv2d_3x3
    monkeypatch.setattr(_winograd, "conv2d_3x3", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, (1, 64, 56, 56), np.float32)
    w = random_array(rng, (64, 64, 3, 3), np.float32)
    b = random_array(rng, (64,), np.float32)
    y = fc.conv2d(x, w, b, padding=1)
    assert calls == [1]
    assert_matches(y, reference.conv2d(x, w, b, padding=1))


def test_conv2d_grad_weight_takes_the_winograd_path(monkeypatch, rng):
    calls = []
    original = _winograd.grad_weight_3x3
    monkeypatch.setattr(_winograd, "grad_weight_3x3",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, (8, 64, 28, 28), np.float32)
    grad_out = random_array(rng, (8, 64, 28, 28), np.float32)
    dw = fc.conv2d_grad_weight(x, grad_out, (64, 64, 3, 3), padding=1)
    assert calls == [1]
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
