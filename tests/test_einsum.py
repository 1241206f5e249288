"""fastconv.einsum against the NumPy einsum it replaces: values, dtypes, shapes,
layouts, out=, exceptions, and the route each seed expression takes."""
import importlib
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv as fc

from conftest import RTOL, assert_matches, layouts

einsum_module = importlib.import_module("fastconv.einsum")
numpy_einsum = einsum_module._numpy_einsum

#: The seed expressions with small operand shapes.
SEEDS = [
    ("ikxy,kjxy->ijxy", (4, 1, 5, 6), (1, 3, 5, 6)),
    ("ni,no->io", (9, 7), (9, 5)),
    ("oiwh,biwh->bo", (8, 4, 3, 3), (6, 4, 3, 3)),
    ("oihw,bihw->bo", (8, 4, 3, 3), (6, 4, 3, 3)),
    ("no,oi->nio", (4, 5), (5, 6)),
    ("no, ni->nio", (4, 5), (4, 6)),
    ("nio,no->ni", (4, 6, 5), (4, 5)),
    ("o,os->os", (5,), (5, 7)),
]
#: Further two-operand expressions, one per shape of plan.
MORE = [
    ("ij,jk->ki", (4, 5), (5, 6)),  # result in Fortran order
    ("ij,jk", (4, 5), (5, 6)),  # implicit output
    ("i,i", (7,), (7,)),  # a scalar
    ("bij,bjk->bik", (3, 4, 5), (3, 5, 6)),
    ("bij,bjk->ibk", (3, 4, 5), (3, 5, 6)),  # batch label between the others: a copy
    ("...i,...i->...", (2, 3, 5), (3, 5)),  # ellipsis broadcast
    ("i...,j...->ij...", (3, 1, 4), (2, 5, 4)),  # size-1 ellipsis axis
    ("ij,ij->ji", (5, 6), (5, 6)),
    ("i,j", (5,), (6,)),
    ("ij,i->ij", (5, 1), (5,)),  # a size-1 axis broadcast against a longer one
]


@contextmanager
def small_problems_on_kernels():
    """Small problems take the kernels' routes too (they go to NumPy normally)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(einsum_module, "_MULTIPLY_MIN_WORK", 0)
        patch.setattr(einsum_module, "_MATMUL_MIN_WORK", 0)
        yield


@pytest.fixture
def fast_routes():
    with small_problems_on_kernels():
        yield


def route(subscripts, *operands, **kwargs):
    """The name of the plan a call takes ('numpy' when NumPy's einsum runs it)."""
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_MultiplyPlan", "_MatmulPlan"):
            cls = getattr(einsum_module, name)

            def spy(self, *args, original=cls.__call__, name=name):
                result = original(self, *args)
                if result is not None:
                    calls.append(name)
                return result

            patch.setattr(cls, "__call__", spy)
        fc.einsum(subscripts, *operands, **kwargs)
    return calls[0] if calls else "numpy"


def assert_same(actual, expected, check_layout=True):
    """Same type (scalar or array), shape, dtype, values within the dtype's
    tolerance (exact for integers) and, for arrays, C/F contiguity."""
    assert type(actual) is type(expected), f"{type(actual)} != {type(expected)}"
    dtype = np.asarray(expected).dtype
    assert_matches(actual, expected, rtol=RTOL.get(dtype, 0.0))
    if check_layout and isinstance(expected, np.ndarray):
        assert (actual.flags.c_contiguous, actual.flags.f_contiguous) == (
            expected.flags.c_contiguous, expected.flags.f_contiguous)


def operands_for(rng, shapes, dtype):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


@pytest.mark.usefixtures("fast_routes")
@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("subscripts, shape_a, shape_b", SEEDS + MORE)
def test_matches_numpy(rng, subscripts, shape_a, shape_b, dtype, optimize):
    a, b = operands_for(rng, (shape_a, shape_b), dtype)
    expected = numpy_einsum(subscripts, a, b, optimize=optimize)
    assert_same(fc.einsum(subscripts, a, b, optimize=optimize), expected)


@pytest.mark.usefixtures("fast_routes")
@pytest.mark.parametrize("layout", ["fortran", "strided", "negative_stride", "readonly"])
@pytest.mark.parametrize("subscripts, shape_a, shape_b", SEEDS[:3] + SEEDS[4:5] + MORE[:1])
def test_layouts(rng, subscripts, shape_a, shape_b, layout):
    a, b = operands_for(rng, (shape_a, shape_b), np.float64)
    a_copy, b_copy = a.copy(), b.copy()
    x, y = layouts(a)[layout], layouts(b)[layout]
    for order in ("K", "C", "F", "A"):
        assert_same(fc.einsum(subscripts, x, y, order=order),
                    numpy_einsum(subscripts, x, y, order=order))
    np.testing.assert_array_equal(a, a_copy)
    np.testing.assert_array_equal(b, b_copy)


@pytest.mark.parametrize("subscripts, shape_a, shape_b, expected_route", [
    ("ikxy,kjxy->ijxy", (20, 1, 50, 60), (1, 30, 50, 60), "_MultiplyPlan"),
    ("ni,no->io", (256, 64), (256, 32), "_MatmulPlan"),
    ("oiwh,biwh->bo", (8, 64, 3, 3), (64, 64, 3, 3), "_MatmulPlan"),
    ("no,oi->nio", (64, 50), (50, 50), "_MultiplyPlan"),
    ("no,ni->nio", (64, 50), (64, 50), "_MultiplyPlan"),
    ("nio,no->ni", (64, 50, 50), (64, 50), "_MatmulPlan"),  # batched matrix-vector products
    ("nio,no->ni", (1024, 10, 10), (1024, 10), "numpy"),  # small matrices: NumPy's einsum is as fast
    ("o,os->os", (600,), (600, 600), "_MultiplyPlan"),
    ("ni,no->io", (2, 3), (2, 4), "numpy"),  # too small to gain
    ("ij,jk->ik", np.array([[1, 2]]), np.array([[3], [4]]), "numpy"),  # integers
])
def test_seed_routes(rng, subscripts, shape_a, shape_b, expected_route):
    if isinstance(shape_a, np.ndarray):
        a, b = shape_a, shape_b
    else:
        a, b = operands_for(rng, (shape_a, shape_b), np.float64)
    assert route(subscripts, a, b) == expected_route
    assert_same(fc.einsum(subscripts, a, b), numpy_einsum(subscripts, a, b))


@pytest.mark.parametrize("subscripts, shape", [("ii", (5, 5)), ("nii->ni", (3, 4, 4)), ("ij->ji", (3, 4))])
def test_one_operand_views(rng, subscripts, shape):
    a = rng.standard_normal(shape)
    result, expected = fc.einsum(subscripts, a), numpy_einsum(subscripts, a)
    assert_same(result, expected)
    assert np.shares_memory(result, a) == np.shares_memory(expected, a)


@pytest.mark.usefixtures("fast_routes")
@pytest.mark.parametrize("subscripts, shape_a, shape_b", [SEEDS[0], SEEDS[1], SEEDS[4], MORE[2]])
def test_out(rng, subscripts, shape_a, shape_b):
    a, b = operands_for(rng, (shape_a, shape_b), np.float64)
    expected = np.asarray(numpy_einsum(subscripts, a, b))
    for out in (np.empty_like(expected), np.empty(expected.shape, order="F"),
                np.empty(expected.shape + (2,))[..., 0]):
        result = fc.einsum(subscripts, a, b, out=out)
        assert result is out
        assert_matches(out, expected)


@pytest.mark.usefixtures("fast_routes")
def test_out_overlapping_an_input(rng):
    a = rng.standard_normal((4, 4))
    b = rng.standard_normal((4, 4))
    for subscripts in ("ij,jk->ik", "ij,ij->ij", "ij,ij->ji"):
        x, y = a.copy(), a.copy()
        expected = numpy_einsum(subscripts, x, b, out=x)
        result = fc.einsum(subscripts, y, b, out=y)
        assert result is y
        assert_matches(y, expected)


@pytest.mark.usefixtures("fast_routes")
def test_out_of_another_dtype_or_shape(rng):
    a, b = operands_for(rng, ((5, 6), (6, 7)), np.float32)
    out = np.empty((5, 7), np.float64)
    assert fc.einsum("ij,jk->ik", a, b, out=out) is out
    assert_matches(out, numpy_einsum("ij,jk->ik", a, b, out=np.empty((5, 7))))
    with pytest.raises(ValueError):
        fc.einsum("ij,jk->ik", a, b, out=np.empty((5, 6), np.float32))


@pytest.mark.usefixtures("fast_routes")
def test_dtypes_and_casting(rng):
    a32, b64 = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((6, 7))
    assert_same(fc.einsum("ij,jk->ik", a32, b64), numpy_einsum("ij,jk->ik", a32, b64))
    assert_same(fc.einsum("ij,jk->ik", a32, 2.0 * np.ones((6, 7), np.float32)),
                numpy_einsum("ij,jk->ik", a32, 2.0 * np.ones((6, 7), np.float32)))
    assert_same(fc.einsum("ij,jk->ik", a32, b64, dtype=np.float32, casting="unsafe"),
                numpy_einsum("ij,jk->ik", a32, b64, dtype=np.float32, casting="unsafe"))
    assert_same(fc.einsum("i,->i", a32[0], 3.0), numpy_einsum("i,->i", a32[0], 3.0))
    ints = np.arange(12).reshape(3, 4)
    assert_same(fc.einsum("ij,kj->ik", ints, ints), numpy_einsum("ij,kj->ik", ints, ints))
    for casting in ("no", "equiv"):
        with pytest.raises(TypeError):
            fc.einsum("ij,jk->ik", a32, b64, casting=casting)


@pytest.mark.usefixtures("fast_routes")
def test_nonfinite(rng):
    a, b = operands_for(rng, ((6, 5), (6, 4)), np.float64)
    a[1, 2], b[3, 0] = np.nan, np.inf
    for subscripts in ("ni,no->io", "ni,no->nio"):
        result, expected = fc.einsum(subscripts, a, b), numpy_einsum(subscripts, a, b)
        np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(result), np.isinf(expected))


@pytest.mark.parametrize("call", [
    lambda e: e(),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((4, 5))),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), bad_arg=1),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), order="W"),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), casting="blah"),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), optimize=["einsum_path", (0, 3)]),
    lambda e: e("ij,jk->iz", np.ones((2, 3)), np.ones((3, 5))),
    lambda e: e("ij,jk->ii", np.ones((2, 3)), np.ones((3, 5))),
    lambda e: e("ijk,jk->ik", np.ones((2, 3)), np.ones((3, 5))),
    lambda e: e("i%,jk->ik", np.ones((2, 3)), np.ones((3, 5))),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), out=np.ones((2, 5))[::-1, ::2]),
    lambda e: e("ij,jk->ik", np.ones((2, 3)), np.ones((3, 5)), out="test"),
    lambda e: e("ij,jk->ik", np.array(["a"]), np.ones((3, 5))),
])
def test_errors_as_numpy(call):
    with pytest.raises(Exception) as expected:
        call(numpy_einsum)
    with pytest.raises(expected.type):
        call(fc.einsum)


def test_no_recursion_when_assigned_over_numpy(monkeypatch, rng):
    monkeypatch.setattr(np, "einsum", fc.einsum)
    a, b = operands_for(rng, ((5, 6), (6, 7)), np.float64)
    for optimize in (False, True):
        assert_same(np.einsum("ij,jk,kl->il", a, b, b.T, optimize=optimize),
                    numpy_einsum("ij,jk,kl->il", a, b, b.T, optimize=optimize))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_subclasses_go_to_numpy(rng):
    a, b = operands_for(rng, ((50, 60), (60, 70)), np.float64)
    m = np.asmatrix(a)
    assert type(fc.einsum("ij,jk->ik", m, b)) is type(numpy_einsum("ij,jk->ik", m, b))


# Differential tests on drawn expressions: operands, labels (repeated and
# broadcast), ellipses, size-0 and size-1 axes, dtypes, layouts, out= and optimize.

LAYOUTS = ["contiguous", "fortran", "strided", "negative_stride"]


@st.composite
def einsum_calls(draw):
    sizes = {label: draw(st.sampled_from([1, 2, 3, 4, 0] if label == "d" else [1, 2, 3, 5]))
             for label in "abcd"}
    ellipsis = draw(st.lists(st.sampled_from([1, 2, 3]), max_size=2))
    n_operands = draw(st.integers(1, 3))
    dtypes = draw(st.sampled_from([("f8",), ("f4",), ("f4", "f8"), ("i8",), ("f8", "i4")]))
    terms, operands = [], []
    for i in range(n_operands):
        term = draw(st.lists(st.sampled_from("abcd"), max_size=3))
        shape = [sizes[label] if draw(st.integers(0, 5)) else 1 for label in term]
        text = "".join(term)
        if ellipsis and draw(st.booleans()):
            tail = ellipsis[len(ellipsis) - draw(st.integers(0, len(ellipsis))):]
            shape = list(tail) + shape
            text = "..." + text
        values = np.asarray(np.arange(1, 1 + int(np.prod(shape))).reshape(shape) % 7 - 3)
        array = values.astype(dtypes[i % len(dtypes)])
        terms.append(text)
        operands.append(layouts(array)[draw(st.sampled_from(LAYOUTS))])
    subscripts = ",".join(terms)
    if draw(st.booleans()):
        used = sorted({label for term in terms for label in term if label.isalpha()})
        chosen = draw(st.permutations(used)).__getitem__(slice(draw(st.integers(0, len(used)))))
        output = "".join(chosen)
        if any("..." in term for term in terms):
            output = draw(st.sampled_from(["..." + output, output + "..."]))
        subscripts += "->" + output
    kwargs = {"optimize": draw(st.sampled_from([False, True, "greedy", "optimal"]))}
    if draw(st.integers(0, 3)) == 0:
        kwargs["order"] = draw(st.sampled_from(["C", "F", "A"]))
    return subscripts, operands, kwargs, draw(st.sampled_from([None, "c", "f"]))


def check_call(subscripts, operands, kwargs, out_layout):
    try:
        expected = numpy_einsum(subscripts, *operands, **kwargs)
    except Exception as error:  # noqa: BLE001 - the same type must come from fastconv
        with pytest.raises(type(error)):
            fc.einsum(subscripts, *operands, **kwargs)
        return
    if out_layout is None or not isinstance(expected, np.ndarray):
        assert_same(fc.einsum(subscripts, *operands, **kwargs), expected)
        return
    out = np.zeros(expected.shape, expected.dtype, order=out_layout.upper())
    try:  # NumPy may refuse an out= of its own result's shape ('dd->d' on (0, 1))
        numpy_einsum(subscripts, *operands, out=out.copy(order="A"), **kwargs)
    except Exception as error:  # noqa: BLE001 - the same type must come from fastconv
        with pytest.raises(type(error)):
            fc.einsum(subscripts, *operands, out=out, **kwargs)
        return
    assert fc.einsum(subscripts, *operands, out=out, **kwargs) is out
    assert_matches(out, expected)


@settings(max_examples=60, deadline=None)
@given(einsum_calls())
def test_drawn_calls(call):
    with small_problems_on_kernels():
        check_call(*call)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(einsum_calls())
def test_drawn_calls_many(call):
    with small_problems_on_kernels():
        check_call(*call)


# Previously failed.

@pytest.mark.usefixtures("fast_routes")
def test_plans_tell_ellipsis_ndims_apart():
    """A plan made for one number of ellipsis axes served another (no size-1 axes)."""
    for shape in [(2, 3), (2,), ()]:
        a = np.full(shape, 2.0)
        assert_same(fc.einsum("...,", a, np.array(3.0)), numpy_einsum("...,", a, np.array(3.0)))
        assert_same(fc.einsum("...,...", a, a), numpy_einsum("...,...", a, a))
