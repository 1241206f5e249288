"""Shared test machinery: tolerances (one place), input layouts, comparisons."""
import numpy as np
import pytest
from hypothesis import strategies as st

#: Relative tolerance per dtype, relative to the largest magnitude of the result
#: (summation order differs between kernels and references).
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
#: The scale below which tolerances stop shrinking, a Python float: a NumPy float32
#: scalar here would make ``rtol * FLOOR`` a float32 and round 1e-10 * FLOOR to 0.
FLOOR = float(np.finfo(np.float32).tiny)
DTYPES = [np.float32, np.float64]


def assert_matches(actual, expected, rtol=None):
    """Same shape and dtype, and max |actual - expected| <= rtol * max |expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    if rtol is None:
        rtol = RTOL.get(expected.dtype, 0.0)
    scale = float(np.abs(expected).max(initial=0.0))
    error = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0))
    assert error <= rtol * max(scale, FLOOR), (
        f"max error {error:.3g} > {rtol:g} * max|expected| {scale:.3g}"
    )


def central_difference(loss, array, step=1e-6):
    """d loss() / d array by central differences, perturbing ``array`` in place."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        up = loss()
        array[index] = saved - step
        down = loss()
        array[index] = saved
        grad[index] = (up - down) / (2 * step)
    return grad


def relative_error(actual, expected):
    """max |actual - expected| relative to max |expected|."""
    return np.abs(actual - expected).max() / np.abs(expected).max()


def random_array(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def layouts(x):
    """The same values as ``x`` in every memory layout a user may pass."""
    strided = np.zeros((*x.shape[:-1], 2 * x.shape[-1]) if x.ndim else (), x.dtype)
    if x.ndim:
        strided[..., ::2] = x
        strided = strided[..., ::2]
    flipped = np.ascontiguousarray(x[::-1])[::-1] if x.ndim else x.copy()
    readonly = x.copy()
    readonly.flags.writeable = False
    return {
        "contiguous": x,
        "fortran": np.asfortranarray(x),
        "strided": strided if x.ndim else x,
        "negative_stride": flipped,
        "readonly": readonly,
        "list": x.tolist(),
    }


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


def float_elements(dtype, bound):
    """Hypothesis elements for ``dtype`` arrays: floats in [-bound, bound]."""
    return st.floats(-bound, bound, width=np.dtype(dtype).itemsize * 8)
