"""softmax and softmax_backward against their einsum references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastconv as fc
from fastconv._registry import OPERATIONS

from cases import SOFTMAX_CASES
from conftest import (
    DTYPES,
    FLOOR,
    RTOL,
    assert_matches,
    central_difference,
    float_elements,
    layouts,
    random_array,
    relative_error,
)


def _reference_softmax_backward(s, grad_s, axis):
    """The Jacobian reference, computed in float64 and returned in the inputs' dtype:
    the closed form in float32 is compared with the exact value, not with another
    float32 summation order (the result is a small difference of products)."""
    dtype = np.result_type(s, grad_s)
    expected = fc.reference.softmax_backward(s.astype(np.float64), grad_s.astype(np.float64), axis)
    return expected.astype(dtype)


def assert_backward_matches(actual, expected, s, grad_s):
    """Tolerance override for softmax_backward: relative to max|s| * max|grad_s|, the
    size of the products whose difference the result is (s = 1/3, g = 1 gives an
    exact result of 1e-8 that float32 rounds to 0), not to max|result|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = np.abs(s).max(initial=0.0) * np.abs(grad_s).max(initial=0.0)
    error = np.abs(actual.astype(np.float64) - expected).max(initial=0.0)
    assert error <= RTOL[actual.dtype] * max(scale, FLOOR), (
        f"max error {error:.3g} > {RTOL[actual.dtype]:g} * max|s| max|g| {scale:.3g}"
    )


def _softmax_inputs(rng, shape, dtype, scale=3.0):
    x = (random_array(rng, shape) * scale).astype(dtype)
    return x, fc.reference.softmax(x, -1), random_array(rng, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", SOFTMAX_CASES, ids=str)
def test_softmax_matches_reference(shape, axis, dtype, rng):
    x, _, _ = _softmax_inputs(rng, shape, dtype)
    assert_matches(fc.softmax(x, axis=axis), fc.reference.softmax(x, axis))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", SOFTMAX_CASES, ids=str)
def test_softmax_backward_matches_reference(shape, axis, dtype, rng):
    x, _, grad_s = _softmax_inputs(rng, shape, dtype)
    s = fc.reference.softmax(x, axis)
    assert_backward_matches(fc.softmax_backward(s, grad_s, axis=axis),
                            _reference_softmax_backward(s, grad_s, axis), s, grad_s)


def test_softmax_rows_sum_to_one_at_full_size(rng):
    """The named (4096, 1000) workload: too big for the Jacobian reference, so the
    backward is held against the closed form in float64."""
    x, _, g = _softmax_inputs(rng, OPERATIONS["softmax"].workloads["imagenet_4096x1000"].dims, np.float32)
    s = fc.softmax(x)
    assert_matches(s, fc.reference.softmax(x))
    sums = s.sum(axis=-1, dtype=np.float64)
    assert np.abs(sums - 1.0).max() <= 1e-5, f"row sums in [{sums.min()}, {sums.max()}]"
    s64, g64 = s.astype(np.float64), g.astype(np.float64)
    expected = (s64 * (g64 - (s64 * g64).sum(-1, keepdims=True))).astype(np.float32)
    assert_matches(fc.softmax_backward(s, g), expected)


def test_softmax_backward_with_tiny_gradients(rng):
    """Gradients near 1e-169: the result is a difference of products far below
    float32's smallest normal number, which the tolerance floor must not round to 0."""
    x = np.array([[0.0, 1.0, 2.0], [0.5, -1.0, 3.0]])
    s = fc.softmax(x)
    g = np.array([[3e-169, 5e-169, 7e-169], [1e-169, -2e-169, 5e-170]])
    result = fc.softmax_backward(s, g)
    assert np.abs(result).max() > 0
    assert_backward_matches(result, _reference_softmax_backward(s, g, -1), s, g)


# -- layouts, dtypes, special values ---------------------------------------------------------

@pytest.mark.parametrize("layout", list(layouts(np.zeros((2, 3)))))
def test_every_input_layout_gives_the_same_result(layout, rng):
    x3, _, g3 = _softmax_inputs(rng, (3, 4, 6), np.float64)  # a list holds float64
    s3 = fc.softmax(x3, axis=1)
    for axis in (-1, 0, 1):
        assert_matches(fc.softmax(layouts(x3)[layout], axis=axis), fc.softmax(x3, axis=axis))
        assert_matches(fc.softmax_backward(layouts(s3)[layout], layouts(g3)[layout], axis=axis),
                       fc.softmax_backward(s3, g3, axis=axis))


def test_softmax_of_bool_raises_like_the_reference():
    x = np.ones((2, 3), bool)
    with pytest.raises(TypeError, match="boolean subtract"):
        fc.reference.softmax(x)
    with pytest.raises(TypeError, match="boolean subtract"):
        fc.softmax(x)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.float16])
def test_softmax_other_dtypes_follow_the_reference(dtype, rng):
    x = (random_array(rng, (3, 6)) * 3).astype(dtype)
    result, expected = fc.softmax(x, axis=0), fc.reference.softmax(x, axis=0)
    assert result.dtype == expected.dtype
    assert_matches(result, expected, rtol=1e-3)
    g = (random_array(rng, (3, 6)) * 3).astype(dtype)
    result = fc.softmax_backward(expected, g, axis=0)
    reference = fc.reference.softmax_backward(expected, g, axis=0)
    assert result.dtype == reference.dtype
    assert_matches(result, reference, rtol=1e-3)


def test_softmax_backward_mixed_dtypes(rng):
    x, _, g = _softmax_inputs(rng, (4, 9), np.float32)
    s = fc.softmax(x)
    result = fc.softmax_backward(s, g.astype(np.float64))
    assert result.dtype == np.float64
    assert_matches(result, fc.reference.softmax_backward(s.astype(np.float64), g.astype(np.float64)),
                   rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_large_logits_do_not_overflow(axis, dtype, rng):
    x = (random_array(rng, (6, 9)) * 1e4).astype(dtype)
    x[2] = 1e4  # a slice of equal large logits
    x[:, 3] = -1e4
    result = fc.softmax(x, axis=axis)
    assert np.all(np.isfinite(result))
    assert_matches(result, fc.reference.softmax(x, axis=axis))
    assert_matches(result.sum(axis=axis), np.ones(result.shape[1 - axis % 2], dtype), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_follow_the_reference(special, axis, dtype, rng):
    """softmax: a NaN or +inf makes its whole slice NaN; -inf is a zero probability;
    a slice of only -inf is NaN (0/0), as in the reference. softmax_backward: a NaN
    in grad_s makes its slice NaN; an infinite one makes its slice non-finite (the
    closed form gives inf - inf = NaN where the Jacobian sum gives +-inf)."""
    x = random_array(rng, (5, 6), dtype)
    x[1, 2] = special
    x[3, :] = x[:, 4] = -np.inf
    result, expected = fc.softmax(x, axis=axis), fc.reference.softmax(x, axis=axis)
    assert np.array_equal(np.isnan(result), np.isnan(expected))
    assert np.isnan(result).any()
    finite = ~np.isnan(expected)
    assert_matches(result[finite], expected[finite])
    s = np.where(finite, expected, 0.5).astype(dtype)
    g = random_array(rng, (5, 6), dtype)
    g[0, 1] = special
    result = fc.softmax_backward(s, g, axis=axis)
    expected = fc.reference.softmax_backward(s, g, axis=axis)
    assert np.array_equal(np.isfinite(result), np.isfinite(expected))
    assert_matches(result[np.isfinite(expected)], expected[np.isfinite(expected)])


def test_inputs_are_not_modified(rng):
    x3, s3, g3 = _softmax_inputs(rng, (3, 4, 5), np.float32)
    inputs = [x3, s3, g3]
    copies = [a.copy() for a in inputs]
    for axis in (-1, 1):
        fc.softmax(x3, axis=axis)
        fc.softmax_backward(s3, g3, axis=axis)
    for a, a0 in zip(inputs, copies):
        assert np.array_equal(a, a0)


# -- finite differences ----------------------------------------------------------------------

@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)], ids=str)
def test_softmax_backward_matches_finite_differences(shape, axis, rng):
    x, _, G = _softmax_inputs(rng, shape, np.float64, scale=1.0)

    def loss():
        return np.sum(fc.softmax(x, axis=axis) * G)

    analytic = fc.softmax_backward(fc.softmax(x, axis=axis), G, axis=axis)
    assert relative_error(analytic, central_difference(loss, x)) < 1e-6


# -- bad input: one test per rule ----------------------------------------------------------

@pytest.mark.parametrize("bad", [np.array([["a", "b"]]), np.array([[None, 1]], dtype=object),
                                 np.array([["2020-01-01"]], dtype="datetime64[D]")])
def test_non_numeric_dtype_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"softmax: x has dtype"):
        fc.softmax(bad)
    with pytest.raises(TypeError, match=r"softmax_backward: grad_s has dtype"):
        fc.softmax_backward(np.ones(bad.shape), bad)


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_softmax_axis_out_of_range(axis):
    """Checked by fastconv before any kernel or reference runs: for every dtype path
    and for empty inputs, where no kernel would look at the axis."""
    for x in (np.ones((2, 3)), np.ones((2, 3), np.float32), np.ones((2, 3), np.int64), np.ones((2, 0))):
        for name, call in (("softmax", lambda: fc.softmax(x, axis=axis)),
                           ("softmax_backward", lambda: fc.softmax_backward(x, x, axis=axis))):
            message = rf"{name}: axis {axis} is out of bounds for an input of 2 dimension"
            with pytest.raises(np.exceptions.AxisError, match=message):
                call()


@pytest.mark.parametrize("axis", [1.0, "0", None, True])
def test_softmax_axis_not_an_int(axis):
    with pytest.raises(TypeError, match=r"softmax: axis must be an int"):
        fc.softmax(np.ones((2, 3)), axis=axis)


def test_softmax_scalar_input():
    with pytest.raises(ValueError, match=r"softmax: x must have at least 1 dimension"):
        fc.softmax(1.0)


def test_softmax_backward_shape_mismatch():
    message = r"softmax_backward: s and grad_s must have the same shape, got s \(2, 3\) and grad_s \(3, 2\)"
    with pytest.raises(ValueError, match=message):
        fc.softmax_backward(np.ones((2, 3)), np.ones((3, 2)))


# -- properties --------------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_softmax_matches_reference(data, dtype):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7), label="shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = data.draw(hnp.arrays(dtype, shape, elements=float_elements(dtype, 1e4)), label="x")
    s = fc.softmax(x, axis=axis)
    assert_matches(s, fc.reference.softmax(x, axis))
    g = data.draw(hnp.arrays(dtype, shape, elements=float_elements(dtype, 10)), label="g")
    assert_backward_matches(fc.softmax_backward(s, g, axis=axis), _reference_softmax_backward(s, g, axis),
                            s, g)
