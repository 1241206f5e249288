"""linear and linear_backward against their einsum references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastconv as fc

from cases import LINEAR_CASES
from conftest import (
    DTYPES,
    RTOL,
    assert_matches,
    central_difference,
    float_elements,
    layouts,
    random_array,
    relative_error,
)


def _linear_inputs(rng, case, dtype):
    n, i, o = case
    x = random_array(rng, (i,) if n is None else (n, i), dtype)
    grad_out = random_array(rng, (o,) if n is None else (n, o), dtype)
    return x, random_array(rng, (i, o), dtype), random_array(rng, (o,), dtype), grad_out


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


# -- layouts, dtypes ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", list(layouts(np.zeros((2, 3)))))
def test_every_input_layout_gives_the_same_result(layout, rng):
    x, W, b, grad_out = _linear_inputs(rng, (5, 6, 4), np.float64)
    lay = {name: layouts(a)[layout] for name, a in dict(x=x, W=W, b=b, g=grad_out).items()}
    assert_matches(fc.linear(lay["x"], lay["W"], lay["b"]), fc.linear(x, W, b))
    for actual, expected in zip(fc.linear_backward(lay["x"], lay["W"], lay["g"]),
                                fc.linear_backward(x, W, grad_out)):
        assert_matches(actual, expected)


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


def test_inputs_are_not_modified(rng):
    x, W, b, grad_out = _linear_inputs(rng, (4, 5, 3), np.float32)
    inputs = [x, W, b, grad_out]
    copies = [a.copy() for a in inputs]
    fc.linear(x, W, b)
    fc.linear_backward(x, W, grad_out)
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


# -- bad input: one test per rule ----------------------------------------------------------

@pytest.mark.parametrize("x, W, b, message", [
    (np.ones((2, 3)), np.ones(3), None, r"linear: W must be 2-D \(I, O\), got shape \(3,\)"),
    (np.ones((2, 2, 3)), np.ones((3, 4)), None,
     r"linear: x must be 2-D \(N, I\) or 1-D \(I,\), got shape \(2, 2, 3\)"),
    (np.ones(()), np.ones((3, 4)), None, r"linear: x must be 2-D .*got shape \(\)"),
    (np.ones((2, 5)), np.ones((3, 4)), None,
     r"linear: x has 5 input features but W \(I, O\) has I=3 \(x \(2, 5\), W \(3, 4\)\)"),
    (np.ones((2, 3)), np.ones((3, 4)), np.ones(3), r"linear: b must have shape \(O,\) = \(4,\), got \(3,\)"),
    (np.ones((2, 3)), np.ones((3, 4)), np.ones((1, 4)),
     r"linear: b must have shape \(O,\) = \(4,\), got \(1, 4\)"),
])
def test_linear_bad_shapes(x, W, b, message):
    with pytest.raises(ValueError, match=message):
        fc.linear(x, W, b)


@pytest.mark.parametrize("x, grad_out, message", [
    (np.ones((2, 3)), np.ones((2, 5)),
     r"linear_backward: grad_out must have shape \(N, O\) = \(2, 4\), got \(2, 5\)"),
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


# -- properties --------------------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_linear_matches_reference(data, dtype):
    n, i, o = (data.draw(st.integers(0, 9), label=name) for name in "NIO")
    x = data.draw(hnp.arrays(dtype, (n, i), elements=float_elements(dtype, 100)), label="x")
    W = data.draw(hnp.arrays(dtype, (i, o), elements=float_elements(dtype, 100)), label="W")
    b = data.draw(st.none() | hnp.arrays(dtype, (o,), elements=float_elements(dtype, 100)), label="b")
    g = data.draw(hnp.arrays(dtype, (n, o), elements=float_elements(dtype, 100)), label="grad_out")
    assert_matches(fc.linear(x, W, b), fc.reference.linear(x, W, b))
    for actual, expected in zip(fc.linear_backward(x, W, g), fc.reference.linear_backward(x, W, g)):
        assert_matches(actual, expected)
