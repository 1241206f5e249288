"""NaN and Inf land where the reference puts them, on every kernel path of conv2d
and its gradients; finite inputs whose exact result is finite give finite results."""
import numpy as np
import pytest

import fastconv as fc

from cases import NONFINITE_CASES as CASES
from conftest import DTYPES, assert_matches, random_array

SPECIALS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


def _operands(op, case, rng, dtype):
    """The two array operands of ``op`` on ``case`` and a call ``f(module, a, b)``."""
    x_shape, w_shape, stride, padding, groups = case
    kw = dict(stride=stride, padding=padding, groups=groups)
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    y_shape = fc.reference.conv2d(x[:1], w, **kw).shape[1:]
    grad_out = random_array(rng, (x_shape[0], *y_shape), dtype)
    if op == "conv2d":
        b = random_array(rng, (w_shape[0],), dtype)
        return x, w, lambda m, a, c: m.conv2d(a, c, b, **kw)
    if op == "grad_input":
        return grad_out, w, lambda m, a, c: m.conv2d_grad_input(a, c, x_shape, **kw)
    return x, grad_out, lambda m, a, c: m.conv2d_grad_weight(a, c, w_shape, **kw)


def _inject(array, operand, value):
    """``array`` with ``value`` at one position: for the image-like first operand a
    pixel on the right border halfway down the last image, for the second operand
    (a weight or grad_out) its first element of the last filter or image."""
    a = array.copy()
    n, c, h, w = a.shape
    index = (n - 1, c // 2, h // 2, w - 1) if operand == "first" else (n - 1, 0, 0, 0)
    a[index] = value
    return a


def _masks(result):
    return {"nan": np.isnan(result), "+inf": result == np.inf, "-inf": result == -np.inf}


@pytest.mark.filterwarnings("ignore:invalid value", "ignore:overflow")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("operand", ["first", "second"])
@pytest.mark.parametrize("op", ["conv2d", "grad_input", "grad_weight"])
@pytest.mark.parametrize("name", CASES)
def test_nan_and_inf_land_where_the_reference_puts_them(name, op, operand, special, dtype, rng):
    first, second, call = _operands(op, CASES[name], rng, dtype)
    if operand == "first":
        first = _inject(first, operand, SPECIALS[special])
    else:
        second = _inject(second, operand, SPECIALS[special])
    expected = call(fc.reference, first, second)
    actual = call(fc, first, second)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    for kind, mask in _masks(expected).items():
        wrong = np.count_nonzero(_masks(actual)[kind] != mask)
        assert wrong == 0, (f"{kind}: {wrong} positions differ from the reference "
                            f"({np.count_nonzero(_masks(actual)[kind])} vs {np.count_nonzero(mask)})")
    finite = np.isfinite(expected)
    assert_matches(actual[finite], expected[finite])


@pytest.mark.parametrize("op", ["conv2d", "grad_input", "grad_weight"])
@pytest.mark.parametrize("name", CASES)
def test_huge_finite_float32_inputs_give_finite_results(name, op, rng):
    """|first operand| ~ 1e37 times a second operand ~ 1e-3: the exact result is far
    below float32's maximum (3.4e38), so no intermediate may overflow."""
    first, second, call = _operands(op, CASES[name], rng, np.float32)
    first = (first * np.float32(1e37)).astype(np.float32)
    second = (second * np.float32(1e-3)).astype(np.float32)
    expected = call(fc.reference, first.astype(np.float64), second.astype(np.float64))
    assert np.abs(expected).max() < 1e37
    actual = call(fc, first, second)
    assert actual.dtype == np.float32
    assert np.isfinite(actual).all(), f"{np.count_nonzero(~np.isfinite(actual))} non-finite outputs"
    assert_matches(actual.astype(np.float64), expected, rtol=1e-4)
