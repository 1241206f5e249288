"""linear, linear_backward, softmax, softmax_backward against their einsum references."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fastconv as fc
from fastconv._workloads import LINEAR, SOFTMAX

from conftest import DTYPES, RTOL, assert_matches, central_difference, layouts, random_array, relative_error

# -- one table of cases -----------------------------------------------------------------

#: linear: (N, I, O); N=None is the seed's 1-D x of shape (I,).
LINEAR_CASES = [
    *[shape for name, shape in LINEAR.items() if name != "classifier"],
    (None, 64, 32), (1, 1, 1), (7, 13, 5), (3, 17, 1), (2, 1, 11),
    (0, 5, 3), (3, 0, 4), (4, 3, 0), (None, 3, 0),
]

#: softmax: (shape, axis). The seed shape, odd and 1-sized axes, every axis of 3-D
#: inputs; the three paths: axis last (row kernels), few trailing elements (moved
#: last), many (strided kernels, one above the kernel's block); empty sizes.
SOFTMAX_CASES = [
    *[(shape, -1) for name, shape in SOFTMAX.items() if name != "imagenet_batch"],
    ((64, 1000), -1), ((4, 5), 0), ((5,), 0), ((1, 1), -1), ((1, 1), 0), ((7, 13), 1),
    ((13, 7), 0), ((3, 5, 7), 0), ((3, 5, 7), 1), ((3, 5, 7), 2), ((3, 5, 7), -2),
    ((2, 3, 700), 1), ((5, 70), 0), ((2, 1, 3, 4), 2), ((0, 5), -1), ((0, 5), 0), ((4, 0), -1), ((2, 0, 3), 1),
]


def _linear_inputs(rng, case, dtype):
    n, i, o = case
    x = random_array(rng, (i,) if n is None else (n, i), dtype)
    grad_out = random_array(rng, (o,) if n is None else (n, o), dtype)
    return x, random_array(rng, (i, o), dtype), random_array(rng, (o,), dtype), grad_out


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
    assert error <= RTOL[actual.dtype] * max(scale, np.finfo(np.float32).tiny), (
        f"max error {error:.3g} > {RTOL[actual.dtype]:g} * max|s| max|g| {scale:.3g}"
    )


def _softmax_inputs(rng, shape, dtype, scale=3.0):
    x = (random_array(rng, shape) * scale).astype(dtype)
    return x, fc.reference.softmax(x, -1), random_array(rng, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_matches_reference(case, bias, dtype, rng):
    x, W, b, _ = _linear_inputs(rng, case, dtype)
    b = b if bias else None
    assert_matches(fc.linear(x, W, b), fc.reference.linear(x, W, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_backward_matches_reference(case, dtype, rng):
    x, W, _, grad_out = _linear_inputs(rng, case, dtype)
    for actual, expected in zip(fc.linear_backward(x, W, grad_out),
                                fc.reference.linear_backward(x, W, grad_out), strict=True):
        assert_matches(actual, expected)


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
    x, _, g = _softmax_inputs(rng, SOFTMAX["imagenet_batch"], np.float32)
    s = fc.softmax(x)
    assert_matches(s, fc.reference.softmax(x))
    s64, g64 = s.astype(np.float64), g.astype(np.float64)
    expected = (s64 * (g64 - (s64 * g64).sum(-1, keepdims=True))).astype(np.float32)
    assert_matches(fc.softmax_backward(s, g), expected)


# -- layouts, dtypes, special values ---------------------------------------------------------

@pytest.mark.parametrize("layout", list(layouts(np.zeros((2, 3)))))
def test_every_input_layout_gives_the_same_result(layout, rng):
    x, W, b, grad_out = _linear_inputs(rng, (5, 6, 4), np.float64)
    lay = {name: layouts(a)[layout] for name, a in dict(x=x, W=W, b=b, g=grad_out).items()}
    assert_matches(fc.linear(lay["x"], lay["W"], lay["b"]), fc.linear(x, W, b))
    for actual, expected in zip(fc.linear_backward(lay["x"], lay["W"], lay["g"]),
                                fc.linear_backward(x, W, grad_out)):
        assert_matches(actual, expected)
    x3, _, g3 = _softmax_inputs(rng, (3, 4, 6), np.float64)  # a list holds float64
    s3 = fc.softmax(x3, axis=1)
    for axis in (-1, 0, 1):
        assert_matches(fc.softmax(layouts(x3)[layout], axis=axis), fc.softmax(x3, axis=axis))
        assert_matches(fc.softmax_backward(layouts(s3)[layout], layouts(g3)[layout], axis=axis),
                       fc.softmax_backward(s3, g3, axis=axis))


@pytest.mark.parametrize("dtypes", [
    (np.float32, np.float64, np.float32), (np.int64, np.float32, np.float32),
    (np.int64, np.int64, np.int64), (np.int32, np.float32, np.float64),
    (np.float16, np.float16, np.float16), (np.bool_, np.bool_, np.bool_),
])
def test_linear_mixed_and_other_dtypes_follow_the_reference(dtypes, rng):
    x, W, b, grad_out = (
        (random_array(rng, shape) * 4).astype(dt)
        for shape, dt in zip([(3, 5), (5, 4), (4,), (3, 4)], [*dtypes, dtypes[2]])
    )
    result, expected = fc.linear(x, W, b), fc.reference.linear(x, W, b)
    assert result.dtype == expected.dtype
    assert_matches(result, expected, rtol=RTOL.get(expected.dtype, 1e-3))
    for actual, reference in zip(fc.linear_backward(x, W, grad_out),
                                 fc.reference.linear_backward(x, W, grad_out), strict=True):
        assert actual.dtype == reference.dtype
        assert_matches(actual, reference, rtol=RTOL.get(reference.dtype, 1e-3))


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
    x, W, b, grad_out = _linear_inputs(rng, (4, 5, 3), np.float32)
    x3, s3, g3 = _softmax_inputs(rng, (3, 4, 5), np.float32)
    inputs = [x, W, b, grad_out, x3, s3, g3]
    copies = [a.copy() for a in inputs]
    fc.linear(x, W, b)
    fc.linear_backward(x, W, grad_out)
    for axis in (-1, 1):
        fc.softmax(x3, axis=axis)
        fc.softmax_backward(s3, g3, axis=axis)
    for a, a0 in zip(inputs, copies):
        assert np.array_equal(a, a0)


# -- finite differences ----------------------------------------------------------------------

@pytest.mark.parametrize("case", [(3, 4, 5), (None, 4, 3)], ids=str)
def test_linear_backward_matches_finite_differences(case, rng):
    x, W, b, G = _linear_inputs(rng, case, np.float64)

    def loss():
        return np.sum(fc.linear(x, W, b) * G)

    dx, dW, db = fc.linear_backward(x, W, G)
    for analytic, variable in [(dx, x), (dW, W), (db, b)]:
        assert relative_error(analytic, central_difference(loss, variable)) < 1e-6


@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)], ids=str)
def test_softmax_backward_matches_finite_differences(shape, axis, rng):
    x, _, G = _softmax_inputs(rng, shape, np.float64, scale=1.0)

    def loss():
        return np.sum(fc.softmax(x, axis=axis) * G)

    analytic = fc.softmax_backward(fc.softmax(x, axis=axis), G, axis=axis)
    assert relative_error(analytic, central_difference(loss, x)) < 1e-6


# -- bad input: one test per rule ----------------------------------------------------------

@pytest.mark.parametrize("x, W, b, message", [
    (np.ones((2, 3)), np.ones(3), None, r"linear: W must be 2-D \(I, O\), got shape \(3,\)"),
    (np.ones((2, 2, 3)), np.ones((3, 4)), None, r"linear: x must be 2-D \(N, I\) or 1-D \(I,\), got shape \(2, 2, 3\)"),
    (np.ones(()), np.ones((3, 4)), None, r"linear: x must be 2-D .*got shape \(\)"),
    (np.ones((2, 5)), np.ones((3, 4)), None, r"linear: x has 5 input features but W \(I, O\) has I=3 \(x \(2, 5\), W \(3, 4\)\)"),
    (np.ones((2, 3)), np.ones((3, 4)), np.ones(3), r"linear: b must have shape \(O,\) = \(4,\), got \(3,\)"),
    (np.ones((2, 3)), np.ones((3, 4)), np.ones((1, 4)), r"linear: b must have shape \(O,\) = \(4,\), got \(1, 4\)"),
])
def test_linear_bad_shapes(x, W, b, message):
    with pytest.raises(ValueError, match=message):
        fc.linear(x, W, b)


@pytest.mark.parametrize("x, grad_out, message", [
    (np.ones((2, 3)), np.ones((2, 5)), r"linear_backward: grad_out must have shape \(N, O\) = \(2, 4\), got \(2, 5\)"),
    (np.ones((2, 3)), np.ones((3, 4)), r"grad_out must have shape \(N, O\) = \(2, 4\), got \(3, 4\)"),
    (np.ones(3), np.ones((1, 4)), r"grad_out must have shape \(O,\) = \(4,\), got \(1, 4\)"),
    (np.ones((2, 5)), np.ones((2, 4)), r"linear_backward: x has 5 input features but W \(I, O\) has I=3"),
])
def test_linear_backward_bad_shapes(x, grad_out, message):
    with pytest.raises(ValueError, match=message):
        fc.linear_backward(x, np.ones((3, 4)), grad_out)


@pytest.mark.parametrize("bad", [np.array([["a", "b"]]), np.array([[None, 1]], dtype=object),
                                 np.array([["2020-01-01"]], dtype="datetime64[D]")])
def test_non_numeric_dtype_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"linear: W has dtype"):
        fc.linear(np.ones((1, 1)), bad[:, :1])
    with pytest.raises(TypeError, match=r"linear_backward: grad_out has dtype"):
        fc.linear_backward(np.ones((1, 1)), np.ones((1, 1)), bad[:, :1])
    with pytest.raises(TypeError, match=r"softmax: x has dtype"):
        fc.softmax(bad)
    with pytest.raises(TypeError, match=r"softmax_backward: grad_s has dtype"):
        fc.softmax_backward(np.ones(bad.shape), bad)


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_softmax_axis_out_of_range(axis):
    for call in (lambda: fc.softmax(np.ones((2, 3)), axis=axis),
                 lambda: fc.softmax_backward(np.ones((2, 3)), np.ones((2, 3)), axis=axis)):
        with pytest.raises(np.exceptions.AxisError, match=rf"softmax(_backward)?: axis {axis} is out of bounds for an input of 2"):
            call()
    assert issubclass(np.exceptions.AxisError, ValueError)


@pytest.mark.parametrize("axis", [1.0, "0", None, True])
def test_softmax_axis_not_an_int(axis):
    with pytest.raises(TypeError, match=r"softmax: axis must be an int"):
        fc.softmax(np.ones((2, 3)), axis=axis)


def test_softmax_scalar_input():
    with pytest.raises(ValueError, match=r"softmax: x must have at least 1 dimension"):
        fc.softmax(1.0)


def test_softmax_backward_shape_mismatch():
    with pytest.raises(ValueError, match=r"softmax_backward: s and grad_s must have the same shape, got s \(2, 3\) and grad_s \(3, 2\)"):
        fc.softmax_backward(np.ones((2, 3)), np.ones((3, 2)))


# -- properties --------------------------------------------------------------------------------

def _elements(dtype, bound):
    return st.floats(-bound, bound, width=np.dtype(dtype).itemsize * 8)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_softmax_matches_reference(data, dtype):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7), label="shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = data.draw(hnp.arrays(dtype, shape, elements=_elements(dtype, 1e4)), label="x")
    s = fc.softmax(x, axis=axis)
    assert_matches(s, fc.reference.softmax(x, axis))
    g = data.draw(hnp.arrays(dtype, shape, elements=_elements(dtype, 10)), label="g")
    assert_backward_matches(fc.softmax_backward(s, g, axis=axis), _reference_softmax_backward(s, g, axis), s, g)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_linear_matches_reference(data, dtype):
    n, i, o = (data.draw(st.integers(0, 9), label=name) for name in "NIO")
    x = data.draw(hnp.arrays(dtype, (n, i), elements=_elements(dtype, 100)), label="x")
    W = data.draw(hnp.arrays(dtype, (i, o), elements=_elements(dtype, 100)), label="W")
    b = data.draw(st.none() | hnp.arrays(dtype, (o,), elements=_elements(dtype, 100)), label="b")
    g = data.draw(hnp.arrays(dtype, (n, o), elements=_elements(dtype, 100)), label="grad_out")
    assert_matches(fc.linear(x, W, b), fc.reference.linear(x, W, b))
    for actual, expected in zip(fc.linear_backward(x, W, g), fc.reference.linear_backward(x, W, g)):
        assert_matches(actual, expected)
