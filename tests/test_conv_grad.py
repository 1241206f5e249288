"""conv2d_grad_input / _weight / _bias against the references, finite differences
and the adjoint identities, over conv2d's case table."""
import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _blas, _workspace, columns, conv_grad, reference
from fastconv._args import geometry

from cases import CONV2D_CASES as CASES
from conftest import DTYPES, assert_matches, central_difference, layouts, random_array, relative_error

NONEMPTY = [name for name in CASES if not name.startswith("empty")]


def _setup(rng, name, dtype):
    x_shape, w_shape, s, p, d, g = CASES[name]
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    grad_out = random_array(rng, reference.conv2d(x, w, **kw).shape, dtype)
    return x, w, grad_out, kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_grads_match_reference(name, dtype, rng):
    x, w, grad_out, kw = _setup(rng, name, dtype)
    assert_matches(fc.conv2d_grad_input(grad_out, w, x.shape, **kw),
                   reference.conv2d_grad_input(grad_out, w, x.shape, **kw))
    assert_matches(fc.conv2d_grad_weight(x, grad_out, w.shape, **kw),
                   reference.conv2d_grad_weight(x, grad_out, w.shape, **kw))
    assert_matches(fc.conv2d_grad_bias(grad_out), reference.conv2d_grad_bias(grad_out))


@pytest.mark.parametrize("name", ["gemm_pairs", "gemm_groups_big", "stem_small", "gemm_1x1_strided"])
def test_grads_in_one_image_chunks(name, rng, monkeypatch):
    """The GEMM + col2im / im2col + GEMM paths over several chunks of images."""
    monkeypatch.setattr(conv_grad, "_SMALL_MACS", 0)
    monkeypatch.setattr(_workspace, "CHUNK_BYTES", 1)
    monkeypatch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
    x, w, grad_out, kw = _setup(rng, name, np.float64)
    assert_matches(fc.conv2d_grad_input(grad_out, w, x.shape, **kw),
                   reference.conv2d_grad_input(grad_out, w, x.shape, **kw))
    assert_matches(fc.conv2d_grad_weight(x, grad_out, w.shape, **kw),
                   reference.conv2d_grad_weight(x, grad_out, w.shape, **kw))


@pytest.mark.parametrize("name", NONEMPTY)
def test_adjoint_identities(name, rng):
    """<conv2d(x, w), G> == <x, grad_input(G, w)> == <w, grad_weight(x, G)>."""
    x, w, G, kw = _setup(rng, name, np.float64)
    forward = np.vdot(fc.conv2d(x, w, **kw), G)
    scale = np.abs(fc.conv2d(x, w, **kw)).sum() * np.abs(G).max() + 1e-300
    assert abs(forward - np.vdot(x, fc.conv2d_grad_input(G, w, x.shape, **kw))) <= 1e-12 * scale
    assert abs(forward - np.vdot(w, fc.conv2d_grad_weight(x, G, w.shape, **kw))) <= 1e-12 * scale


#: small cases: every entry of x and W is perturbed twice through the einsum reference
FINITE_DIFFERENCE_CASES = {
    **{name: CASES[name] for name in ["seed_tiny", "direct_groups", "direct_stride_dilation",
                                      "depthwise", "primes"]},
    "same_even_kernel": ((1, 3, 6, 7), (4, 3, 4, 3), 1, "same", (1, 2), 1),
}


@pytest.mark.parametrize("name", FINITE_DIFFERENCE_CASES)
def test_finite_differences(name, rng):
    x_shape, w_shape, s, p, d, g = FINITE_DIFFERENCE_CASES[name]
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    x, w = random_array(rng, (1, *x_shape[1:])), random_array(rng, w_shape)
    b = random_array(rng, (w_shape[0],))
    G = random_array(rng, fc.conv2d(x, w, b, **kw).shape)

    def loss():
        return np.vdot(reference.conv2d(x, w, b, **kw), G)

    for analytic, array in [(fc.conv2d_grad_input(G, w, x.shape, **kw), x),
                            (fc.conv2d_grad_weight(x, G, w.shape, **kw), w),
                            (fc.conv2d_grad_bias(G), b)]:
        assert relative_error(analytic, central_difference(loss, array)) < 1e-6


@pytest.mark.parametrize("layout", list(layouts(np.zeros((1,)))))
def test_layouts(layout, rng):
    x, w, G, kw = _setup(rng, "gemm_3x3", np.float64)
    expected_input = reference.conv2d_grad_input(G, w, x.shape, **kw)
    expected_weight = reference.conv2d_grad_weight(x, G, w.shape, **kw)
    assert_matches(fc.conv2d_grad_input(layouts(G)[layout], layouts(w)[layout], x.shape, **kw),
                   expected_input)
    assert_matches(fc.conv2d_grad_weight(layouts(x)[layout], layouts(G)[layout], w.shape, **kw),
                   expected_weight)
    assert_matches(fc.conv2d_grad_bias(layouts(G)[layout]), reference.conv2d_grad_bias(G))


def test_inputs_are_not_modified(rng):
    x, w, G, kw = _setup(rng, "gemm_groups", np.float32)
    copies = [a.copy() for a in (x, w, G)]
    fc.conv2d_grad_input(G, w, x.shape, **kw)
    fc.conv2d_grad_weight(x, G, w.shape, **kw)
    fc.conv2d_grad_bias(G)
    assert all(np.array_equal(a, c) for a, c in zip((x, w, G), copies))


def test_mixed_and_integer_dtypes(rng):
    x, w, G, kw = _setup(rng, "seed_tiny", np.float64)
    assert fc.conv2d_grad_input(G.astype(np.float32), w, x.shape, **kw).dtype == np.float64
    xi, Gi = (x * 10).astype(np.int64), (G * 10).astype(np.int64)
    assert np.array_equal(fc.conv2d_grad_weight(xi, Gi, w.shape, **kw),
                          reference.conv2d_grad_weight(xi, Gi, w.shape, **kw))


# -- bad input: one test per rule ------------------------------------------------

def test_grad_out_shape_must_match_the_convolution():
    with pytest.raises(ValueError, match=r"conv2d_grad_input: grad_out has shape \(2, 3, 4, 4\) "
                                         r"but the convolution's output has shape \(2, 3, 3, 3\)"):
        fc.conv2d_grad_input(np.ones((2, 3, 4, 4)), np.ones((3, 4, 3, 3)), (2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d_grad_weight: grad_out has shape \(2, 5, 3, 3\)"):
        fc.conv2d_grad_weight(np.ones((2, 4, 5, 5)), np.ones((2, 5, 3, 3)), (3, 4, 3, 3))


def test_channels_per_group_must_match():
    with pytest.raises(ValueError, match=r"conv2d_grad_input: weight has 3 input channels per group "
                                         r"but input_shape has 4 channels \(groups=1\)"):
        fc.conv2d_grad_input(np.ones((1, 2, 3, 3)), np.ones((2, 3, 3, 3)), (1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d_grad_weight: .*not divisible by groups=3"):
        fc.conv2d_grad_weight(np.ones((1, 4, 5, 5)), np.ones((1, 2, 3, 3)), (2, 1, 3, 3), groups=3)


@pytest.mark.parametrize("shape", [(1, 4, 5), (1, 4, 5, 5, 1), "abcd", (1, -4, 5, 5)])
def test_bad_shape_arguments(shape):
    with pytest.raises((ValueError, TypeError), match=r"conv2d_grad_input: input_shape must be"):
        fc.conv2d_grad_input(np.ones((1, 2, 3, 3)), np.ones((2, 4, 3, 3)), shape)


def test_wrong_ranks():
    message = r"conv2d_grad_weight: grad_out must be 4-D \(N, O, OH, OW\), got shape \(2, 3\)"
    with pytest.raises(ValueError, match=message):
        fc.conv2d_grad_weight(np.ones((1, 4, 5, 5)), np.ones((2, 3)), (2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d_grad_bias: grad_out must be 4-D"):
        fc.conv2d_grad_bias(np.ones(3))


def test_bad_window_arguments():
    with pytest.raises(ValueError, match=r"conv2d_grad_input: padding='same' needs stride 1"):
        fc.conv2d_grad_input(np.ones((1, 2, 3, 3)), np.ones((2, 4, 3, 3)), (1, 4, 5, 5),
                             stride=2, padding="same")
    with pytest.raises(ValueError, match=r"conv2d_grad_weight: stride must be >= 1"):
        fc.conv2d_grad_weight(np.ones((1, 4, 5, 5)), np.ones((1, 2, 3, 3)), (2, 4, 3, 3), stride=0)


def test_non_numeric_dtype():
    with pytest.raises(TypeError, match=r"conv2d_grad_bias: grad_out has dtype <U1"):
        fc.conv2d_grad_bias(np.array([[[["a"]]]]))


# -- properties -----------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3), groups=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), pad=st.integers(0, 2),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), dtype=st.sampled_from(DTYPES))
def test_property_grads_match_reference(n, groups, cg, og, h, w, kh, kw, stride, pad, dilation, dtype):
    assume(h + 2 * pad >= dilation[0] * (kh - 1) + 1 and w + 2 * pad >= dilation[1] * (kw - 1) + 1)
    rng = np.random.default_rng(0)
    kwargs = dict(stride=stride, padding=pad, dilation=dilation, groups=groups)
    x = random_array(rng, (n, groups * cg, h, w), dtype)
    weight = random_array(rng, (groups * og, cg, kh, kw), dtype)
    G = random_array(rng, reference.conv2d(x, weight, **kwargs).shape, dtype)
    assert_matches(fc.conv2d_grad_input(G, weight, x.shape, **kwargs),
                   reference.conv2d_grad_input(G, weight, x.shape, **kwargs))
    assert_matches(fc.conv2d_grad_weight(x, G, weight.shape, **kwargs),
                   reference.conv2d_grad_weight(x, G, weight.shape, **kwargs))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 3), groups=st.integers(1, 2), cg=st.integers(32, 34), og=st.integers(8, 20),
       h=st.integers(6, 16), w=st.integers(6, 16), kh=st.integers(1, 5), kw=st.integers(1, 5),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), dtype=st.sampled_from(DTYPES))
def test_property_wide_channels_match_reference(n, groups, cg, og, h, w, kh, kw, stride, pad, dilation,
                                                dtype):
    """32+ channels per group: the shapes whose tasks may gather window rows."""
    assume(h + 2 * pad[0] >= dilation[0] * (kh - 1) + 1 and w + 2 * pad[1] >= dilation[1] * (kw - 1) + 1)
    rng = np.random.default_rng(0)
    kwargs = dict(stride=stride, padding=pad, dilation=dilation, groups=groups)
    x = random_array(rng, (n, groups * cg, h, w), dtype)
    weight = random_array(rng, (groups * og, cg, kh, kw), dtype)
    G = random_array(rng, reference.conv2d(x, weight, **kwargs).shape, dtype)
    assert_matches(fc.conv2d(x, weight, **kwargs), reference.conv2d(x, weight, **kwargs))
    assert_matches(fc.conv2d_grad_input(G, weight, x.shape, **kwargs),
                   reference.conv2d_grad_input(G, weight, x.shape, **kwargs))
    assert_matches(fc.conv2d_grad_weight(x, G, weight.shape, **kwargs),
                   reference.conv2d_grad_weight(x, G, weight.shape, **kwargs))


@pytest.mark.parametrize("schedule", ["tasks", "matmul"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 8 << 20], ids=["one_image_chunks", "default"])
@pytest.mark.parametrize("batch, channels", [(5, 16), (1, 64)], ids=["columns", "window_rows"])
def test_strided_gradient_schedules(schedule, groups, chunk_bytes, batch, channels, rng, monkeypatch):
    """Strided gradients on im2col + GEMM: one task per thread over blocks of its
    images (per-thread dW partials; for dW, a share of the output rows that may
    split an image, for dx whole images), or matmuls between parallel kernels
    where no BLAS is callable from kernels; im2col columns and window rows."""
    calls = []
    for name in ("_grad_input_tasks", "_grad_weight_tasks"):
        original = getattr(conv_grad, name)
        monkeypatch.setattr(conv_grad, name,
                            lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    monkeypatch.setattr(conv_grad, "_SMALL_MACS", 0)
    monkeypatch.setattr(_workspace, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
    if schedule == "matmul":
        monkeypatch.setattr(_blas, "address", lambda dtype: None)
    x = random_array(rng, (batch, channels, 15, 13), np.float64)
    w = random_array(rng, (12, channels // groups, 3, 3), np.float64)
    kw = dict(stride=2, padding=1, groups=groups)
    g = random_array(rng, reference.conv2d(x, w, **kw).shape, np.float64)
    assert_matches(fc.conv2d_grad_input(g, w, x.shape, **kw),
                   reference.conv2d_grad_input(g, w, x.shape, **kw))
    assert_matches(fc.conv2d_grad_weight(x, g, w.shape, **kw),
                   reference.conv2d_grad_weight(x, g, w.shape, **kw))
    expected = []
    if schedule == "tasks":
        expected = ["_grad_input_tasks"] * (batch >= numba.get_num_threads()) + ["_grad_weight_tasks"]
    assert calls == expected


def test_weight_gradient_tasks_with_more_threads_than_rows(rng, monkeypatch):
    """A single output row leaves every thread but one without blocks: their dW
    partials are zero, not stale scratch."""
    calls = []
    original = conv_grad._grad_weight_tasks
    monkeypatch.setattr(conv_grad, "_grad_weight_tasks", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(conv_grad, "_SMALL_MACS", 0)
    monkeypatch.setattr(_workspace, "MIN_CHUNK_PIXELS", 1)
    with _workspace.scratch(np.float64, (1 << 16,)) as (kept,):
        kept[:] = np.nan  # the scratch the call below reuses
    for _ in range(2):
        x = random_array(rng, (1, 64, 2, 13), np.float64)
        w = random_array(rng, (8, 64, 3, 3), np.float64)
        kw = dict(stride=2, padding=1)
        g = random_array(rng, reference.conv2d(x, w, **kw).shape, np.float64)
        assert g.shape[2] == 1
        assert_matches(fc.conv2d_grad_weight(x, g, w.shape, **kw),
                       reference.conv2d_grad_weight(x, g, w.shape, **kw))
    assert len(calls) == (2 if _blas.address(np.float64) is not None else 0)


#: shapes whose convolution tasks gather windows as rows with channels innermost
WINDOW_CASES = {
    "strided": ((4, 32, 15, 13), (24, 32, 3, 3), dict(stride=2, padding=1)),
    "groups_dilated": ((3, 64, 12, 11), (32, 32, 3, 3), dict(stride=(2, 1), padding=(2, 0), dilation=2,
                                                             groups=2)),
    "5x3_same": ((2, 32, 9, 14), (8, 32, 5, 3), dict(padding="same")),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", WINDOW_CASES)
def test_window_rows(name, dtype, rng, monkeypatch):
    """conv2d (small planes), grad_input and grad_weight through window rows match
    the references, a NaN in x or grad_out included."""
    monkeypatch.setattr(conv_grad, "_SMALL_MACS", 0)
    x_shape, w_shape, kw = WINDOW_CASES[name]
    groups = kw.get("groups", 1)
    geom = geometry("test", x_shape[2:], w_shape[2:], kw.get("stride", 1), kw["padding"],
                             kw.get("dilation", 1))
    assert columns.window_stages(geom, x_shape, groups, 2, reordered_weight=w_shape[0])[1] > 0
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    g = random_array(rng, reference.conv2d(x, w, **kw).shape, dtype)
    x[1, 3, 4, 5] = g[0, 2, 1, 1] = np.nan
    pairs = [(fc.conv2d(x, w, **kw), reference.conv2d(x, w, **kw)),
             (fc.conv2d_grad_input(g, w, x.shape, **kw), reference.conv2d_grad_input(g, w, x.shape, **kw)),
             (fc.conv2d_grad_weight(x, g, w.shape, **kw), reference.conv2d_grad_weight(x, g, w.shape, **kw))]
    for actual, expected in pairs:
        nan = np.isnan(expected)
        assert nan.any() and not nan.all()
        np.testing.assert_array_equal(np.isnan(actual), nan)
        assert_matches(np.where(nan, 0, actual), np.where(nan, 0, expected))


def test_window_rows_never_stage_more_than_they_feed():
    """A wide dilation over a small output takes im2col columns: a channels-last
    copy of its padded input would be 400x the window rows."""
    geom = geometry("test", (10, 10), (3, 3), 1, 1000, 1000)
    assert (geom.oh, geom.ow) == (10, 10)
    assert columns.window_stages(geom, (2, 32, 10, 10), 1, 2) == (2, 0, 0, 0)
    geom = geometry("test", (14, 14), (3, 3), 2, 1, 1)
    assert columns.window_stages(geom, (2, 32, 14, 14), 1, 2) == (2, 15, 15, 32)


@pytest.mark.parametrize("groups", [1, 2])
def test_stride_one_grad_input_without_flipped_weight(groups, rng, monkeypatch):
    """Stride 1 where the transposed convolution would be im2col + GEMM (the column
    gradients run directly) or Winograd (which flips and transposes the weight as
    it transforms it): no flipped copy of the weight, and the results match,
    a NaN weight included. A depthwise one makes the copy."""
    flips = []
    original = conv_grad._transposed_weight
    monkeypatch.setattr(conv_grad, "_transposed_weight", lambda *a: flips.append(1) or original(*a))
    kw = dict(padding=1, groups=groups)
    x_shape, w = (2, 40, 6, 7), random_array(rng, (48, 40 // groups, 3, 3), np.float64)
    g = random_array(rng, (2, 48, 6, 7), np.float64)
    transposed = conv_grad._transposed_geometry(geometry("test", (6, 7), (3, 3), 1, 1, 1), (6, 7))
    assert conv_grad.route(g.shape, (40, 48 // groups, 3, 3), transposed, groups) == "gemm"
    assert_matches(fc.conv2d_grad_input(g, w, x_shape, **kw),
                   reference.conv2d_grad_input(g, w, x_shape, **kw))
    big, big_shape = random_array(rng, (4, 48, 16, 16), np.float64), (4, 40, 16, 16)
    transposed = conv_grad._transposed_geometry(geometry("test", (16, 16), (3, 3), 1, 1, 1), (16, 16))
    assert conv_grad.route(big.shape, (40, 48 // groups, 3, 3), transposed, groups) == "winograd"
    assert_matches(fc.conv2d_grad_input(big, w, big_shape, **kw),
                   reference.conv2d_grad_input(big, w, big_shape, **kw))
    w[5, 3, 0, 2] = np.nan
    actual = fc.conv2d_grad_input(big, w, big_shape, **kw)
    expected = reference.conv2d_grad_input(big, w, big_shape, **kw)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    assert_matches(np.nan_to_num(actual), np.nan_to_num(expected))
    assert not flips
    depthwise = random_array(rng, (40, 1, 3, 3), np.float64)
    assert_matches(fc.conv2d_grad_input(big[:, :40], depthwise, big_shape, padding=1, groups=40),
                   reference.conv2d_grad_input(big[:, :40], depthwise, big_shape, padding=1, groups=40))
    assert flips


@pytest.mark.parametrize("groups", [1, 3])
def test_strided_1x1_reads_a_subsample(groups, rng):
    """An unpadded strided 1x1 runs as a stride-1 1x1 on the pixels it reads: the
    forward and both gradients match, NaN in the pixels read or skipped included."""
    kw = dict(stride=(2, 3), groups=groups)
    x = random_array(rng, (3, 12, 11, 10), np.float64)
    w = random_array(rng, (9, 12 // groups, 1, 1), np.float64)
    x[0, 1, 2, 3] = x[1, 2, 1, 1] = np.nan  # read (2, 3) and skipped (1, 1)
    g = random_array(rng, (3, 9, 6, 4), np.float64)
    pairs = [(fc.conv2d(x, w, **kw), reference.conv2d(x, w, **kw)),
             (fc.conv2d_grad_input(g, w, x.shape, **kw), reference.conv2d_grad_input(g, w, x.shape, **kw)),
             (fc.conv2d_grad_weight(x, g, w.shape, **kw), reference.conv2d_grad_weight(x, g, w.shape, **kw))]
    for actual, expected in pairs:
        assert actual.shape == expected.shape
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        assert_matches(np.nan_to_num(actual), np.nan_to_num(expected))
    assert np.isnan(pairs[0][1]).any() and np.isnan(pairs[2][1]).any()


def test_pointwise_grad_input_transposes_in_blas(rng, monkeypatch):
    """A 1x1 stride-1 grad_input is Wᵀ @ grad_out per image, W transposed by the
    GEMM itself; a NaN weight spreads over its input channel as in the reference."""
    calls = []
    original = conv_grad.pointwise
    monkeypatch.setattr(conv_grad, "pointwise", lambda *a, **k: calls.append(k) or original(*a, **k))
    w = random_array(rng, (48, 40, 1, 1), np.float32)
    w[3, 5] = np.nan
    g = random_array(rng, (3, 48, 12, 11), np.float32)
    actual = fc.conv2d_grad_input(g, w, (3, 40, 12, 11))
    expected = reference.conv2d_grad_input(g, w, (3, 40, 12, 11))
    assert calls == [{"transposed": True}]
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    assert np.isnan(expected[:, 5]).all()
    assert_matches(np.nan_to_num(actual), np.nan_to_num(expected))


@pytest.mark.parametrize("stride", [1, 2])
def test_channel_transposes_on_planes_4k_apart(stride, rng):
    """Planes a multiple of 4 KB apart (24 columns of 40 channels 12 KB apart)
    are staged channels-last in square blocks, the last of the channels and of
    the columns overlapping the one before, and output rows go back to planes in
    blocks of 16 pixels (the last one partial): the forward and both gradients
    match."""
    kw = dict(stride=stride, padding=1)
    x = random_array(rng, (2, 40, 128, 24), np.float32)
    w = random_array(rng, (36, 40, 3, 3), np.float32)
    oh, ow = (128 - 1) // stride + 1, (24 - 1) // stride + 1
    g = random_array(rng, (2, 36, oh, ow), np.float32)
    pairs = [(fc.conv2d(x, w, **kw), reference.conv2d(x, w, **kw)),
             (fc.conv2d_grad_input(g, w, x.shape, **kw), reference.conv2d_grad_input(g, w, x.shape, **kw)),
             (fc.conv2d_grad_weight(x, g, w.shape, **kw), reference.conv2d_grad_weight(x, g, w.shape, **kw))]
    for actual, expected in pairs:
        assert_matches(actual, expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_small_gradients_skip_the_task_kernels(stride, rng, monkeypatch):
    """Below ``_SMALL_MACS`` the gradients run as im2col or col2im and one matmul,
    without the task kernels, and a NaN in grad_out meets the zero padding as in
    the reference."""
    calls = []
    for name in ("_grad_input_tasks", "_grad_weight_tasks", "_grad_input_direct", "_grad_weight_direct"):
        original = getattr(conv_grad, name)
        monkeypatch.setattr(conv_grad, name,
                            lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    kw = dict(stride=stride, padding=1)
    x, w = random_array(rng, (3, 5, 7, 6), np.float32), random_array(rng, (4, 5, 3, 3), np.float32)
    g = random_array(rng, reference.conv2d(x, w, **kw).shape, np.float32)
    g[1, 2, 0, 0] = np.nan
    pairs = [(fc.conv2d_grad_input(g, w, x.shape, **kw), reference.conv2d_grad_input(g, w, x.shape, **kw)),
             (fc.conv2d_grad_weight(x, g, w.shape, **kw), reference.conv2d_grad_weight(x, g, w.shape, **kw))]
    for actual, expected in pairs:
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        assert_matches(np.nan_to_num(actual), np.nan_to_num(expected))
    assert np.isnan(pairs[1][1]).any() and not calls
