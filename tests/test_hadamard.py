import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastconv as fc
from fastconv._seeds import outer_hadamard_iter

from cases import HADAMARD_CASES as CASES
from conftest import DTYPES, layouts, random_array


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_exactly_equal_to_references(case, dtype, rng):
    na, nb, *tail = case
    A, B = random_array(rng, (na, *tail), dtype), random_array(rng, (nb, *tail), dtype)
    result = fc.batch_outer_hadamard(A, B)
    expected = fc.reference.batch_outer_hadamard(A, B)
    assert result.dtype == dtype and result.shape == expected.shape
    assert np.array_equal(result, expected)
    if na and nb:
        assert np.array_equal(result, outer_hadamard_iter(A, B))


@pytest.mark.parametrize("layout", list(layouts(np.zeros((2, 3)))))
def test_every_input_layout_gives_the_same_result(layout, rng):
    A, B = random_array(rng, (4, 6, 5)), random_array(rng, (3, 6, 5))
    expected = fc.reference.batch_outer_hadamard(A, B)
    assert np.array_equal(fc.batch_outer_hadamard(layouts(A)[layout], layouts(B)[layout]), expected)


def test_out_is_filled_and_returned(rng):
    A, B = random_array(rng, (3, 4, 5)), random_array(rng, (2, 4, 5))
    out = np.full((6, 4, 5), np.nan)
    assert fc.batch_outer_hadamard(A, B, out=out) is out
    assert np.array_equal(out, fc.reference.batch_outer_hadamard(A, B))


def test_inputs_are_not_modified(rng):
    A, B = random_array(rng, (3, 4, 5)), random_array(rng, (2, 4, 5))
    A0, B0 = A.copy(), B.copy()
    fc.batch_outer_hadamard(A, B)
    assert np.array_equal(A, A0) and np.array_equal(B, B0)


@pytest.mark.parametrize("a_dtype, b_dtype", [
    (np.float32, np.float64), (np.int64, np.float32), (np.int32, np.int64),
    (np.bool_, np.bool_), (np.uint8, np.uint8), (np.complex128, np.float64), (np.float16, np.float32),
])
def test_other_dtypes_follow_the_reference(a_dtype, b_dtype, rng):
    A = (rng.standard_normal((3, 4)) * 100).astype(a_dtype)
    B = (rng.standard_normal((2, 4)) * 100).astype(b_dtype)
    result = fc.batch_outer_hadamard(A, B)
    expected = fc.reference.batch_outer_hadamard(A, B)
    assert result.dtype == expected.dtype == np.result_type(A, B)
    assert np.array_equal(result, expected)


@pytest.mark.filterwarnings("ignore:invalid value")
def test_nan_and_inf_propagate():
    A = np.array([[np.nan, np.inf, 1.0]])
    B = np.array([[1.0, 0.0, -np.inf]])
    assert np.array_equal(fc.batch_outer_hadamard(A, B), A * B, equal_nan=True)


# -- bad input: one test per rule ------------------------------------------------

def test_mismatched_trailing_shapes():
    message = r"batch_outer_hadamard: .*same trailing shape.*\(2, 3, 4\).*\(2, 3, 5\)"
    with pytest.raises(ValueError, match=message):
        fc.batch_outer_hadamard(np.ones((2, 3, 4)), np.ones((2, 3, 5)))


def test_scalar_inputs():
    with pytest.raises(ValueError, match=r"batch_outer_hadamard: .*got A \(\) and B \(3,\)"):
        fc.batch_outer_hadamard(1.0, np.ones(3))


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([None, 1], dtype=object),
                                 np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_non_numeric_dtype_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"batch_outer_hadamard: B has dtype"):
        fc.batch_outer_hadamard(np.ones(bad.shape), bad)


@pytest.mark.parametrize("out, message", [
    (np.empty((6, 4)), r"out has shape \(6, 4\) but the result has shape \(6, 5\)"),
    (np.empty((6, 5), np.float32), r"out has dtype float32 but the result has dtype float64"),
    (np.empty((5, 6)).T, r"out must be C-contiguous"),
    ([[0.0] * 5] * 6, r"out must be a numpy.ndarray"),
])
def test_bad_out(out, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fc.batch_outer_hadamard(np.ones((2, 5)), np.ones((3, 5)), out=out)


def test_read_only_out():
    out = np.empty((6, 5))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fc.batch_outer_hadamard(np.ones((2, 5)), np.ones((3, 5)), out=out)


def test_a_result_too_large_to_allocate_is_a_memory_error():
    rows = np.broadcast_to(np.ones(1, np.float32), (2**33, 1))  # no memory behind it
    with pytest.raises(MemoryError, match=r"batch_outer_hadamard: cannot allocate the result of shape "
                                          rf"\({2**66}, 1\) and dtype float32 \({2**68} bytes\)"):
        fc.batch_outer_hadamard(rows, rows)


def test_out_overlapping_an_input():
    buffer = np.ones((8, 5))
    with pytest.raises(ValueError, match=r"out shares memory with A"):
        fc.batch_outer_hadamard(buffer[2:4], np.ones((3, 5)), out=buffer[2:])
    assert np.all(buffer == 1.0)


# -- properties -----------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_matches_reference(data, dtype):
    tail = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9), label="S")
    na, nb = data.draw(st.integers(0, 9), label="na"), data.draw(st.integers(0, 9), label="nb")
    elements = st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)
    A = data.draw(hnp.arrays(dtype, (na, *tail), elements=elements), label="A")
    B = data.draw(hnp.arrays(dtype, (nb, *tail), elements=elements), label="B")
    assert np.array_equal(fc.batch_outer_hadamard(A, B), fc.reference.batch_outer_hadamard(A, B))
