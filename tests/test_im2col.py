"""im2col / col2im against fastconv.reference, the classic loop recipe and each other."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import fastconv as fc
from fastconv import reference
from fastconv._args import geometry
from fastconv._intrinsics import TRANSPOSE_LANES, transpose_add_block, transpose_block
from fastconv._seeds import im2col_loop
from fastconv.columns import im2col_stacked_into, stage_rows

from cases import IM2COL_CASES as CASES
from conftest import DTYPES, assert_matches, layouts, random_array


def _kwargs(case):
    _, k, s, p, d = case
    return dict(kernel_size=k, stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_im2col_and_col2im_match_reference(name, dtype, rng):
    case = CASES[name]
    x = random_array(rng, case[0], dtype)
    kw = _kwargs(case)
    cols = fc.im2col(x, **kw)
    assert_matches(cols, reference.im2col(x, **kw), rtol=0)
    c = random_array(rng, cols.shape, dtype)
    assert_matches(fc.col2im(c, x.shape, **kw), reference.col2im(c, x.shape, **kw))


@pytest.mark.parametrize("name", CASES)
def test_adjoint(name, rng):
    case = CASES[name]
    x = random_array(rng, case[0])
    kw = _kwargs(case)
    cols = fc.im2col(x, **kw)
    c = random_array(rng, cols.shape)
    lhs, rhs = np.vdot(cols, c), np.vdot(x, fc.col2im(c, x.shape, **kw))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs), float(np.abs(cols).sum() * np.abs(c).max(initial=0)))


@pytest.mark.parametrize("shape,k,s,p", [
    ((4, 4, 5, 5), 3, 1, 1), ((2, 3, 9, 7), 3, 2, 0), ((3, 2, 8, 8), 5, 3, 2), ((1, 1, 4, 4), 4, 1, 0),
])
def test_layout_equals_loop_recipe(shape, k, s, p, rng):
    x = random_array(rng, shape, np.float32)
    np.testing.assert_array_equal(fc.im2col(x, k, stride=s, padding=p), im2col_loop(x, k, s, p))


@pytest.mark.parametrize("layout", list(layouts(np.zeros((1,)))))
def test_layouts(layout, rng):
    x = random_array(rng, (2, 3, 6, 5))
    kw = dict(kernel_size=(3, 2), stride=(1, 2), padding=1)
    expected = reference.im2col(x, **kw)
    assert_matches(fc.im2col(layouts(x)[layout], **kw), expected, rtol=0)
    c = random_array(rng, expected.shape)
    assert_matches(fc.col2im(layouts(c)[layout], x.shape, **kw), reference.col2im(c, x.shape, **kw))


def test_out_is_filled_and_returned(rng):
    x = random_array(rng, (2, 3, 6, 5), np.float32)
    out = np.full((27, 2 * 6 * 5), np.nan, np.float32)
    assert fc.im2col(x, 3, padding=1, out=out) is out
    assert_matches(out, reference.im2col(x, 3, padding=1), rtol=0)
    back = np.full(x.shape, np.nan, np.float32)
    assert fc.col2im(out, x.shape, 3, padding=1, out=back) is back
    assert_matches(back, reference.col2im(out, x.shape, 3, padding=1))


def test_inputs_not_modified(rng):
    x = random_array(rng, (2, 3, 6, 5))
    x0 = x.copy()
    cols = fc.im2col(x, 3, padding=1)
    c0 = cols.copy()
    fc.col2im(cols, x.shape, 3, padding=1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(cols, c0)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex128])
def test_other_numeric_dtypes_take_the_reference(dtype, rng):
    x = (random_array(rng, (2, 2, 4, 4)) * 10).astype(dtype)
    cols = fc.im2col(x, 3, padding=1)
    assert cols.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cols, reference.im2col(x, 3, padding=1))
    np.testing.assert_array_equal(fc.col2im(cols, x.shape, 3, padding=1),
                                  reference.col2im(cols, x.shape, 3, padding=1))


@pytest.mark.parametrize("width", [6, 40], ids=["short_rows", "long_rows"])
def test_stacked_helpers(width, rng):
    """The per-image layout for conv2d and its gradients: (N, R >= C*KH*KW, OH*OW),
    whole planes and bands of output rows, in both forms of the column kernel."""
    x = random_array(rng, (3, 2, 7, width))
    geom = geometry("test", x.shape[2:], (3, 2), (2, 1), 1, 1)
    rows, ohw = 2 * 3 * 2, geom.oh * geom.ow
    stacked = np.full((3, rows + 1, ohw), 7.0)
    im2col_stacked_into(x, geom, stacked)
    public = reference.im2col(x, (3, 2), stride=(2, 1), padding=1)
    np.testing.assert_array_equal(stacked[:, :rows], public.reshape(rows, 3, ohw).transpose(1, 0, 2))
    assert (stacked[:, rows] == 7.0).all()
    band = np.full((3, rows, 2 * geom.ow), 7.0)
    im2col_stacked_into(x, geom, band, 1, 3)
    np.testing.assert_array_equal(band, stacked[:, :rows, geom.ow:3 * geom.ow])


# ---- bad input: one test per rule -------------------------------------------------

X = np.zeros((2, 3, 5, 5))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=np.zeros((3, 5, 5)), kernel_size=3), ValueError, r"im2col: x must be 4-D .*\(3, 5, 5\)"),
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size must be an int or a pair"),
    (dict(kernel_size=2.0), TypeError, "kernel_size must be an int"),
    (dict(kernel_size=3, stride=0), ValueError, "stride must be >= 1"),
    (dict(kernel_size=3, stride=(1, -1)), ValueError, "stride must be >= 1"),
    (dict(kernel_size=3, dilation=0), ValueError, "dilation must be >= 1"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding must be >= 0"),
    (dict(kernel_size=3, padding="same", stride=2), ValueError, "'same' needs stride 1"),
    (dict(kernel_size=3, padding="full"), ValueError, "padding must be an int, a pair, 'valid' or 'same'"),
    (dict(kernel_size=6), ValueError, r"kernel 6x6 .* larger than the padded input 5x5"),
    (dict(kernel_size=3, dilation=3), ValueError, r"spans 7x7, larger than the padded input 5x5"),
    (dict(x=np.array([["a"]] * 4, dtype=object).reshape(1, 1, 2, 2), kernel_size=1), TypeError,
     "x has dtype object"),
    (dict(kernel_size=3, out=np.zeros((27, 49))), ValueError,
     r"out has shape \(27, 49\) but the result has shape \(27, 18\)"),
    (dict(kernel_size=3, out=np.zeros((27, 18), np.float32)), ValueError, "out has dtype float32"),
    (dict(kernel_size=3, out=np.zeros((18, 27)).T), ValueError, "out must be C-contiguous"),
    (dict(kernel_size=3, out=[[0.0]]), TypeError, "out must be a numpy.ndarray"),
])
def test_im2col_bad_arguments(kwargs, exc, match):
    kwargs = {"x": X, **kwargs}
    with pytest.raises(exc, match=match):
        fc.im2col(**kwargs)


def test_im2col_result_too_large_to_allocate_is_a_memory_error():
    side = 2 * 2**40 + 1
    message = rf"im2col: cannot allocate the result of shape \(1, {side * side}\)"
    with pytest.raises(MemoryError, match=message):
        fc.im2col(np.ones((1, 1, 1, 1)), 1, padding=2**40)


def test_im2col_out_overlapping_input():
    buf = np.zeros(27 * 18)
    x = buf[:150].reshape(2, 3, 5, 5)
    with pytest.raises(ValueError, match="out shares memory with x"):
        fc.im2col(x, 3, out=buf.reshape(27, 18))


def test_im2col_read_only_out():
    out = np.zeros((27, 18))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fc.im2col(X, 3, out=out)


@pytest.mark.parametrize("args,exc,match", [
    ((np.zeros((27, 18)), (2, 3, 5)), ValueError, r"input_shape must be 4 non-negative ints"),
    ((np.zeros((27, 18)), (2, 3, 5, -5)), ValueError, r"input_shape must be 4 non-negative ints"),
    ((np.zeros((27, 18)), 5), TypeError, r"input_shape must be a tuple of 4 ints"),
    ((np.zeros((27, 18)), (2, 3, 5.0, 5)), TypeError, r"input_shape must be a tuple of 4 ints"),
    ((np.zeros((27, 17)), (2, 3, 5, 5)), ValueError,
     r"cols has shape \(27, 17\) but input_shape \(2, 3, 5, 5\)"),
    ((np.zeros((27, 18)), (2, 3, 2, 2)), ValueError, "larger than the padded input 2x2"),
    ((np.zeros((27, 18), dtype="U1"), (2, 3, 5, 5)), TypeError, "cols has dtype <U1"),
])
def test_col2im_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        fc.col2im(*args, 3)


def test_col2im_bad_out():
    with pytest.raises(ValueError, match=r"out has shape \(2, 3, 5\)"):
        fc.col2im(np.zeros((27, 18)), (2, 3, 5, 5), 3, out=np.zeros((2, 3, 5)))


# ---- property tests ------------------------------------------------------------------

@st.composite
def windows(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.sampled_from(["valid", "same"]),
                             st.tuples(st.integers(0, 3), st.integers(0, 3))))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if isinstance(padding, str) else padding
    h = draw(st.integers(max(0, dh * (kh - 1) + 1 - 2 * pads[0]), 12))
    w = draw(st.integers(max(0, dw * (kw - 1) + 1 - 2 * pads[1]), 12))
    n, c = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return (n, c, h, w), dict(kernel_size=(kh, kw), stride=stride, padding=padding, dilation=(dh, dw))


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(windows(), st.sampled_from(DTYPES))
def test_property_matches_reference_and_adjoint(case, dtype):
    shape, kw = case
    rng = np.random.default_rng(0)
    x = random_array(rng, shape, dtype)
    cols = fc.im2col(x, **kw)
    assert_matches(cols, reference.im2col(x, **kw), rtol=0)
    c = random_array(rng, cols.shape, dtype)
    back = fc.col2im(c, shape, **kw)
    assert_matches(back, reference.col2im(c, shape, **kw))
    lhs, rhs = np.vdot(cols.astype(np.float64), c), np.vdot(x.astype(np.float64), back)
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, float(np.abs(cols).sum() * np.abs(c).max(initial=0)))


@njit
def _moved(src, src_rows, dst_size, dst_rows, add):
    """transpose_block and transpose_add_block from src[7:] into dst[5:] of two
    arrays of NaN."""
    plain, added = np.full(dst_size, np.nan, src.dtype), np.full(dst_size, np.nan, src.dtype)
    transpose_block(src, 7, src_rows, plain, np.uint64(5), dst_rows)
    transpose_add_block(src, 7, src_rows, added, 5, dst_rows, add, 2)
    return plain, added


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offsets", [np.int64, np.uint64, np.int32])
def test_transpose_block_moves_a_square_block(offsets, dtype):
    """L rows of L values anywhere in the source become L columns anywhere in
    the destination (L values fill 64 bytes), with or without a value added to
    each destination row; nothing else is written."""
    lanes = TRANSPOSE_LANES[np.dtype(dtype)]
    rng = np.random.default_rng(lanes)
    src, add = rng.standard_normal(40 * lanes).astype(dtype), rng.standard_normal(lanes + 2).astype(dtype)
    src_rows = rng.permutation(np.arange(lanes) * 2 * lanes + 3).astype(offsets)
    dst_rows = rng.permutation(np.arange(lanes + 2) * 3 * lanes)[:lanes].astype(offsets)
    plain, added = _moved(src, src_rows, 5 + 3 * lanes * (lanes + 2), dst_rows, add)
    expected = np.full_like(plain, np.nan)
    block = np.stack([src[7 + int(r):][:lanes] for r in src_rows])  # (i, j) = src[7 + src_rows[i] + j]
    for j, r in enumerate(dst_rows):
        expected[5 + int(r):][:lanes] = block[:, j]
    np.testing.assert_array_equal(plain, expected)
    for j, r in enumerate(dst_rows):
        expected[5 + int(r):][:lanes] += add[2 + j]
    np.testing.assert_array_equal(added, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("width, group", [(70, 19), (21, 19), (9, 19), (21, 5)])
def test_stage_rows_copies_a_band_channels_last(width, group, step, dtype):
    """The channels-last copy under the window rows, the per-tap GEMMs and the
    Winograd input transform: every ``step``-th padded row of a band of a channel
    range, columns in phase order, zero outside the image; square blocks of
    channels and columns (the last ones overlapping) where there are enough of
    both, value by value where not."""
    rng = np.random.default_rng(width)
    x = rng.standard_normal((2, 23, 9, width)).astype(dtype)
    n, c0, first, rows, pt, pl, m = 1, 3, 2, 8, 3, 2, 2
    phase = -(-(width + pl + 1) // m)
    staged = np.full(rows * m * phase * group, np.nan, dtype)
    stage_rows(x, n, c0, group, first, rows, step, pt, pl, m, phase, staged)
    padded = np.zeros((group, x.shape[2] + 2 * pt + rows * step, m * phase), dtype)
    padded[:, pt:pt + x.shape[2], pl:pl + width] = x[n, c0:c0 + group]
    band = padded[:, first:first + rows * step:step]  # (group, rows, columns)
    expected = band.reshape(group, rows, phase, m).transpose(1, 3, 2, 0)  # column b*m + l at l*phase + b
    np.testing.assert_array_equal(staged.reshape(rows, m, phase, group), expected)
