"""conv2d forward against fastconv.reference (and im2col + GEMM), over one case table."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _blas, _workspace, conv, reference
from fastconv._args import geometry

from cases import CONV2D_CASES as CASES
from conftest import DTYPES, assert_matches, layouts, random_array


def _kwargs(case):
    _, _, s, p, d, g = case
    return dict(stride=s, padding=p, dilation=d, groups=g)


def _arrays(rng, case, dtype, bias=True):
    x = random_array(rng, case[0], dtype)
    w = random_array(rng, case[1], dtype)
    b = random_array(rng, (case[1][0],), dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name, dtype, bias, rng):
    case = CASES[name]
    x, w, b = _arrays(rng, case, dtype, bias)
    assert_matches(fc.conv2d(x, w, b, **_kwargs(case)), reference.conv2d(x, w, b, **_kwargs(case)))


@pytest.mark.parametrize("name", ["seed_tiny", "gemm_3x3", "gemm_pairs", "stem_small", "gemm_1x1_padded"])
def test_equals_im2col_then_gemm(name, rng):
    case = CASES[name]
    x, w, b = _arrays(rng, case, np.float64)
    kw = _kwargs(case)
    del kw["groups"]
    y = fc.conv2d(x, w, b, **kw)
    cols = fc.im2col(x, w.shape[2:], **kw)
    n, o = x.shape[0], w.shape[0]
    expected = (w.reshape(o, -1) @ cols + b[:, None]).reshape(o, n, *y.shape[2:]).transpose(1, 0, 2, 3)
    assert_matches(y, expected)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("form", ["stacked_images", "stacked_bands"])
@pytest.mark.parametrize("name", ["gemm_3x3", "gemm_pairs", "gemm_same", "gemm_groups_big", "stem_small",
                                  "gemm_wide_plane", "gemm_1x1_strided"])
@pytest.mark.parametrize("schedule", ["tasks", "matmul"])
def test_gemm_stacked_forms(name, form, bias, schedule, rng, monkeypatch):
    """im2col + GEMM with per-image stacked columns: chunks of whole images, or bands
    of output rows (budgets shrunk so that the small cases take these forms), as
    tasks with BLAS inside or as matmuls between parallel kernels."""
    if schedule == "matmul":
        monkeypatch.setattr(_blas, "address", lambda dtype: None)
    monkeypatch.setattr(conv, "_MERGE_PLANE", 0)
    monkeypatch.setattr(conv, "_BAND_BYTES", 1 if form == "stacked_bands" else 1 << 20)
    case = CASES[name]
    x, w, b = _arrays(rng, case, np.float64, bias)
    assert_matches(fc.conv2d(x, w, b, **_kwargs(case)), reference.conv2d(x, w, b, **_kwargs(case)))


@pytest.mark.parametrize("padding", [0, 1, 2, "same", (0, 2)])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_3x3_from_padded_planes(padding, multiplier, rng, monkeypatch):
    """Depthwise 3x3 stride 1 (a padded copy of each plane): every padding, a
    channel multiplier, odd planes, a NaN weight that meets the padding."""
    calls = []
    original = conv._depthwise_3x3
    monkeypatch.setattr(conv, "_depthwise_3x3", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = random_array(rng, (3, 24, 37, 29), np.float64)
    w = random_array(rng, (24 * multiplier, 1, 3, 3), np.float64)
    b = random_array(rng, (24 * multiplier,), np.float64)
    expected = reference.conv2d(x, w, b, padding=padding, groups=24)
    assert_matches(fc.conv2d(x, w, b, padding=padding, groups=24), expected)
    w[5, 0, 0, 0] = np.nan
    y = fc.conv2d(x, w, b, padding=padding, groups=24)
    expected = reference.conv2d(x, w, b, padding=padding, groups=24)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert len(calls) == 2


@pytest.mark.parametrize("schedule", ["tasks", "matmul"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 8 << 20], ids=["one_image_chunks", "default"])
@pytest.mark.parametrize("batch, channels", [(5, 16), (1, 64)], ids=["columns", "window_rows"])
def test_small_plane_gemm_schedules(schedule, groups, chunk_bytes, batch, channels, rng, monkeypatch):
    """im2col + GEMM on small planes: one task per thread over its share of the
    output rows (BLAS inside the tasks; an odd batch or a single image puts a
    thread's blocks across images or in bands of rows), or matmuls between
    parallel kernels where no BLAS is callable from kernels; stride 2, groups,
    chunks of one image, im2col columns and window rows."""
    calls = []
    original = conv._merged_tasks
    monkeypatch.setattr(conv, "_merged_tasks", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(_workspace, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
    if schedule == "matmul":
        monkeypatch.setattr(_blas, "address", lambda dtype: None)
    x = random_array(rng, (batch, channels, 21, 19), np.float32)
    w = random_array(rng, (12, channels // groups, 5, 5), np.float32)
    b = random_array(rng, (12,), np.float32)
    y = fc.conv2d(x, w, b, stride=2, padding=1, groups=groups)
    assert_matches(y, reference.conv2d(x, w, b, stride=2, padding=1, groups=groups))
    assert bool(calls) == (schedule == "tasks")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_bytes", [1, 8 << 20], ids=["bands", "default"])
@pytest.mark.parametrize("x_shape, w_shape, window", [
    ((3, 64, 17, 23), (48, 64, 3, 3), dict(stride=2, padding=1)),
    ((1, 64, 20, 15), (40, 64, 3, 3), dict(stride=1, padding=1, dilation=2)),
    ((2, 64, 19, 21), (32, 32, 5, 5), dict(stride=2, padding=2, groups=2)),
    ((2, 32, 16, 14), (24, 32, 3, 3), dict(stride=3, padding=0)),
    ((2, 32, 12, 30), (16, 32, 3, 5), dict(stride=(2, 1), padding=(1, 2))),
    ((2, 32, 9, 10), (8, 32, 2, 4), dict(padding="same")),
], ids=["s2", "dilated", "groups_5x5", "s3", "uneven", "same_even"])
def test_shifted_gemm_schedules(x_shape, w_shape, window, chunk_bytes, dtype, rng, monkeypatch):
    """One GEMM per tap over the staged input (no window matrix), for strides,
    dilation, groups, uneven and asymmetric windows, on whole images and on bands
    of rows."""
    calls = []
    original = conv._shifted_tasks
    monkeypatch.setattr(conv, "_shifted_tasks", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(conv, "SHIFTED_WASTE", 10.0)
    monkeypatch.setattr(_workspace, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype)
    y = fc.conv2d(x, w, b, **window)
    assert calls
    assert_matches(y, reference.conv2d(x, w, b, **window))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 14, 14), (8, 14, 14), (3, 7, 12), (5, 1, 9), (2, 30, 3)])
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 50_000, 1 << 30])
def test_block_plan_covers_every_row_once(shape, parts, budget):
    """The blocks (whole images, or rows of one image) cover every row of every
    image once, fit the capacity, and give the threads shares at most one row apart."""
    n, rows, width = shape
    capacity, blocks, starts = _workspace.blocks(n, rows, width, 1000, budget, 64, parts)
    covered = np.zeros((n, rows), int)
    for n0, nb, a0, ta in blocks:
        assert nb >= 1 and ta >= 1 and nb * ta * width <= capacity
        assert nb == 1 or (a0, ta) == (0, rows)
        covered[n0:n0 + nb, a0:a0 + ta] += 1
    assert (covered == 1).all()
    assert starts[0] == 0 and starts[-1] == len(blocks) and len(starts) == parts + 1
    shares = [int((blocks[starts[t]:starts[t + 1], 1] * blocks[starts[t]:starts[t + 1], 3]).sum())
              for t in range(parts)]
    assert max(shares) - min(shares) <= 1


@pytest.mark.parametrize("layout", list(layouts(np.zeros((1,)))))
@pytest.mark.parametrize("name", ["seed_tiny", "gemm_3x3", "pointwise", "depthwise_big"])
def test_layouts(name, layout, rng):
    case = CASES[name]
    x, w, b = _arrays(rng, case, np.float32)
    args = [layouts(a)[layout] for a in (x, w, b)]
    expected = reference.conv2d(*args, **_kwargs(case))  # lists are float64, like the reference
    assert_matches(fc.conv2d(*args, **_kwargs(case)), expected)


@pytest.mark.parametrize("name", ["seed_tiny", "gemm_3x3", "pointwise", "whole_window_pairs", "gemm_groups"])
def test_out_is_filled_and_returned(name, rng):
    case = CASES[name]
    x, w, b = _arrays(rng, case, np.float32)
    expected = reference.conv2d(x, w, b, **_kwargs(case))
    out = np.full(expected.shape, np.nan, np.float32)
    assert fc.conv2d(x, w, b, out=out, **_kwargs(case)) is out
    assert_matches(out, expected)


@pytest.mark.parametrize("name", ["seed_tiny", "gemm_3x3", "pointwise", "depthwise"])
def test_inputs_not_modified(name, rng):
    x, w, b = _arrays(rng, CASES[name], np.float64)
    copies = [a.copy() for a in (x, w, b)]
    fc.conv2d(x, w, b, **_kwargs(CASES[name]))
    for a, a0 in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("dtypes,expected", [
    ((np.float32, np.float64, np.float32), np.float64),
    ((np.float32, np.float32, np.float64), np.float64),
    ((np.int64, np.float32, np.float32), np.float64),
    ((np.float32, np.float32, np.float32), np.float32),
])
def test_mixed_dtypes_follow_result_type(dtypes, expected, rng):
    case = CASES["gemm_3x3"]
    x, w, b = [a.astype(t) for a, t in zip(_arrays(rng, case, np.float64), dtypes)]
    y = fc.conv2d(x, w, b, padding=1)
    assert y.dtype == np.dtype(expected)
    # computed in the result dtype (the reference would sum float32 * float32 in float32)
    assert_matches(y, reference.conv2d(*[a.astype(expected) for a in (x, w, b)], padding=1))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16])
def test_other_numeric_dtypes_take_the_reference(dtype, rng):
    case = CASES["seed_tiny"]
    x, w, b = [(a * 4).astype(dtype) for a in _arrays(rng, case, np.float64)]
    y = fc.conv2d(x, w, b, padding=1)
    expected = reference.conv2d(x, w, b, padding=1)
    assert y.dtype == expected.dtype
    np.testing.assert_array_equal(y, expected)


def test_threads_give_correct_results(rng):
    cases = ["gemm_3x3", "depthwise_big", "pointwise", "stem_small"]
    data = {name: _arrays(rng, CASES[name], np.float32) for name in cases}
    expected = {name: reference.conv2d(*data[name], **_kwargs(CASES[name])) for name in cases}
    errors = []

    def work(name):
        try:
            for _ in range(5):
                assert_matches(fc.conv2d(*data[name], **_kwargs(CASES[name])), expected[name])
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append((name, e))

    threads = [threading.Thread(target=work, args=(name,)) for name in cases * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- bad input: one test per rule -------------------------------------------------

X, W = np.zeros((2, 4, 5, 5)), np.zeros((6, 4, 3, 3))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=np.zeros((4, 5, 5))), ValueError, r"conv2d: x must be 4-D \(N, C, H, W\), got shape \(4, 5, 5\)"),
    (dict(weight=np.zeros((6, 4, 3))), ValueError, r"conv2d: weight must be 4-D .*\(6, 4, 3\)"),
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError,
     r"conv2d: weight has 3 input channels per group but x has 4 channels \(groups=1\)"),
    (dict(weight=np.zeros((6, 4, 3, 3)), groups=2), ValueError,
     r"weight has 4 input channels per group but x has 4 channels \(groups=2\)"),
    (dict(groups=3, weight=np.zeros((6, 1, 3, 3))), ValueError,
     "x has 4 channels, not divisible by groups=3"),
    (dict(groups=4, weight=np.zeros((6, 1, 3, 3))), ValueError,
     "weight has 6 output channels, not divisible by groups=4"),
    (dict(groups=0), ValueError, "groups must be >= 1"),
    (dict(groups=1.0), TypeError, "groups must be an int"),
    (dict(weight=np.zeros((6, 4, 0, 3))), ValueError, "weight has an empty kernel"),
    (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\) for 6 output channels, got \(5,\)"),
    (dict(bias=np.zeros((6, 1))), ValueError, r"bias must have shape \(6,\).*got \(6, 1\)"),
    (dict(weight=np.zeros((6, 4, 7, 7))), ValueError, r"kernel 7x7 .* larger than the padded input 5x5"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(padding=(1, 2, 3)), ValueError, "padding must be an int or a pair"),
    (dict(padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
    (dict(padding="SAME"), ValueError, "padding must be an int, a pair, 'valid' or 'same'"),
    (dict(x=np.zeros((2, 4, 5, 5), dtype="M8[s]")), TypeError, "conv2d: x has dtype datetime64"),
    (dict(weight=np.full((6, 4, 3, 3), None)), TypeError, "conv2d: weight has dtype object"),
    (dict(bias=["a"] * 6), TypeError, "conv2d: bias has dtype <U1"),
    (dict(out=np.zeros((2, 6, 5, 5))), ValueError,
     r"out has shape \(2, 6, 5, 5\) but the result has shape \(2, 6, 3, 3\)"),
    (dict(out=np.zeros((2, 6, 3, 3), np.float32)), ValueError,
     "out has dtype float32 but the result has dtype float64"),
    (dict(out=np.zeros((3, 3, 6, 2)).T), ValueError, "out must be C-contiguous"),
    (dict(out=np.zeros((2, 6, 3, 3)).tolist()), TypeError, "out must be a numpy.ndarray"),
])
def test_bad_arguments(kwargs, exc, match):
    kwargs = {"x": X, "weight": W, **kwargs}
    with pytest.raises(exc, match=match):
        fc.conv2d(**kwargs)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(stride=(1, True)), TypeError, "stride must be an int"),
    (dict(padding=(1, 1.0)), TypeError, "padding must be an int"),
    (dict(dilation=True), TypeError, "dilation must be an int"),
    (dict(padding=(1, -1)), ValueError, "padding must be >= 0"),
    (dict(stride=2, padding="same"), ValueError, "padding='same' needs stride 1"),
])
def test_bad_window_arguments_after_good_ones(kwargs, exc, match):
    # the plain-int window arguments of a call are remembered: a bool or float that
    # compares (and hashes) equal to them must still be rejected, every time
    def as_ints(value):
        return tuple(map(int, value)) if isinstance(value, tuple) else value if isinstance(value, str) \
            else int(value)

    good = {name: as_ints(value) for name, value in kwargs.items()}
    for _ in range(2):
        if exc is TypeError:
            fc.conv2d(X, W, **good)
        with pytest.raises(exc, match=match):
            fc.conv2d(X, W, **kwargs)


def test_out_overlapping_an_input():
    buf = np.zeros(216)
    with pytest.raises(ValueError, match="out shares memory with weight"):
        fc.conv2d(X, buf[:216].reshape(6, 4, 3, 3), out=buf[:108].reshape(2, 6, 3, 3))


def test_read_only_out():
    out = np.zeros((2, 6, 3, 3))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fc.conv2d(X, W, out=out)


# ---- property tests ------------------------------------------------------------------

@st.composite
def convolutions(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(0, 3))
    o = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.one_of(st.sampled_from(["valid", "same"]),
                             st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))))
    stride = 1 if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if isinstance(padding, str) else (padding, padding) if isinstance(padding, int) else padding
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * pads[0]), 10))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pads[1]), 10))
    n = draw(st.integers(0, 3))
    return ((n, c, h, w), (o, c // groups, kh, kw), stride, padding, (dh, dw), groups)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(convolutions(), st.sampled_from(DTYPES), st.booleans())
def test_property_matches_reference(case, dtype, bias):
    x, w, b = _arrays(np.random.default_rng(1), case, dtype, bias)
    assert_matches(fc.conv2d(x, w, b, **_kwargs(case)), reference.conv2d(x, w, b, **_kwargs(case)))


@st.composite
def per_tap_convolutions(draw):
    """Layers of 32 or more channels per group, as the per-tap GEMM path takes them."""
    groups = draw(st.sampled_from([1, 2]))
    c, o = groups * draw(st.sampled_from([32, 40])), groups * draw(st.integers(1, 12))
    kh, kw = draw(st.sampled_from([(1, 2), (2, 2), (3, 3), (3, 1), (4, 3)]))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * padding[0]), 16))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * padding[1]), 16))
    n = draw(st.integers(1, 3))
    return ((n, c, h, w), (o, c // groups, kh, kw), stride, padding, (dh, dw), groups)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(per_tap_convolutions(), st.sampled_from(DTYPES), st.sampled_from([1, 8 << 20]))
def test_property_per_tap_gemms_match_reference(case, dtype, chunk_bytes):
    """The per-tap GEMM path on any stride, dilation, padding and kernel (its grid
    limit lifted, and taken however small the call), on whole images and bands."""
    x, w, b = _arrays(np.random.default_rng(2), case, dtype)
    calls = []
    original = conv._shifted_tasks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "_shifted_tasks", lambda *a, **k: calls.append(1) or original(*a, **k))
        patch.setattr(conv, "route", lambda *args: "gemm")
        patch.setattr(conv, "SHIFTED_WASTE", 100.0)
        patch.setattr(_workspace, "CHUNK_BYTES", chunk_bytes)
        patch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
        y = fc.conv2d(x, w, b, **_kwargs(case))
    assert calls
    assert_matches(y, reference.conv2d(x, w, b, **_kwargs(case)))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 4])
def test_large_gemm_path(dtype, groups, rng):
    """Several im2col chunks (a multi-chunk run of the GEMM path)."""
    case = ((5, 64, 30, 29), (32, 64 // groups, 3, 3), 1, 1, 1, groups)
    x, w, b = _arrays(rng, case, dtype)
    assert_matches(fc.conv2d(x, w, b, padding=1, groups=groups),
                   reference.conv2d(x, w, b, padding=1, groups=groups))


@pytest.mark.parametrize("n", [1, 3])
def test_pointwise_tasks_split_channels_of_small_planes(n, rng):
    """A 1x1 convolution of few images with small planes splits each image's output
    channels among the tasks (unevenly here: 97 channels), forward and grad_input."""
    x = random_array(rng, (n, 64, 7, 7), np.float32)
    w = random_array(rng, (97, 64, 1, 1), np.float32)
    g = random_array(rng, (n, 97, 7, 7), np.float32)
    assert conv.route(x.shape, w.shape, geometry("t", (7, 7), (1, 1), 1, 0, 1), 1) == "pointwise"
    assert_matches(fc.conv2d(x, w), reference.conv2d(x, w))
    assert_matches(fc.conv2d_grad_input(g, w, x.shape), reference.conv2d_grad_input(g, w, x.shape))
