"""fastconv's functions on dask arrays: lazy results equal to the in-memory calls,
for every chunk layout, scheduler and threading layer."""
import os
import pickle
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import fastconv as fc

from conftest import assert_matches, random_array

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

#: (N, C, H, W) chunk layouts: batch only, H chunks, H and W chunks, uneven last
#: chunks with channel chunks (merged), single rows and columns.
LAYOUTS = {
    "batch": (2, 4, 11, 9),
    "H": (5, 4, 4, 9),
    "HW": (3, 4, 4, 3),
    "uneven": (4, 3, 5, 4),
    "rows": (5, 4, 1, 2),
}
#: conv window arguments: plain, strided and padded, everything at once, 'same'.
WINDOWS = {
    "plain": dict(),
    "stride2_pad1": dict(stride=2, padding=1),
    "mixed_groups": dict(stride=(2, 3), padding=(2, 1), dilation=(2, 1), groups=2),
    "same_dilated": dict(padding="same", dilation=2),
    "big_padding": dict(padding=4, stride=3),
}


@pytest.fixture(autouse=True)
def threaded_scheduler():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def compare(lazy, expected):
    assert isinstance(lazy, da.Array)
    assert lazy.shape == expected.shape and lazy.dtype == expected.dtype
    assert_matches(lazy.compute(), expected)


def conv_case(rng, window, dtype=np.float64):
    groups = window.get("groups", 1)
    x = random_array(rng, (5, 4, 11, 9), dtype)
    w = random_array(rng, (6, 4 // groups, 3, 3), dtype)
    return x, w, random_array(rng, (6,), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("window", WINDOWS)
def test_conv2d_and_gradients(layout, window):
    rng = np.random.default_rng(0)
    kw = WINDOWS[window]
    x, w, b = conv_case(rng, kw)
    chunks = LAYOUTS[layout]
    xd = da.from_array(x, chunks=chunks)
    y = fc.conv2d(x, w, b, **kw)
    compare(fc.conv2d(xd, w, b, **kw), y)
    compare(fc.conv2d(xd, w, **kw), fc.conv2d(x, w, **kw))
    go = random_array(rng, y.shape)
    god = da.from_array(go, chunks=(chunks[0], 6, chunks[2], chunks[3]))
    compare(fc.conv2d_grad_input(god, w, x.shape, **kw), fc.conv2d_grad_input(go, w, x.shape, **kw))
    compare(fc.conv2d_grad_weight(xd, god, w.shape, **kw), fc.conv2d_grad_weight(x, go, w.shape, **kw))
    compare(fc.conv2d_grad_bias(god), fc.conv2d_grad_bias(go))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_dask_weight_and_float32(dtype):
    rng = np.random.default_rng(1)
    x, w, b = conv_case(rng, {}, dtype)
    lazy = fc.conv2d(da.from_array(x, chunks=(2, 2, 6, 9)), da.from_array(w, chunks=2), da.from_array(b),
                     stride=2, padding=1)
    compare(lazy, fc.conv2d(x, w, b, stride=2, padding=1))


def test_batch_outer_hadamard():
    rng = np.random.default_rng(2)
    A, B = random_array(rng, (7, 3, 4), np.float32), random_array(rng, (5, 3, 4), np.float32)
    expected = fc.batch_outer_hadamard(A, B)
    for a_chunks, b_chunks in [((3, 3, 4), (5, 3, 4)), ((2, 3, 2), (2, 1, 4)), ((7, 3, 4), (4, 3, 4))]:
        lazy = fc.batch_outer_hadamard(da.from_array(A, chunks=a_chunks), da.from_array(B, chunks=b_chunks))
        compare(lazy, expected)
    compare(fc.batch_outer_hadamard(A, da.from_array(B, chunks=2)), expected)


def test_outer_hadamard_blocks_are_pairs_of_chunks():
    A, B = da.ones((8, 3), chunks=2), da.ones((6, 3), chunks=6)
    lazy = fc.batch_outer_hadamard(A, B)
    assert lazy.chunks[0] == (12,) * 4  # A-chunk i x all of B is one block of rows
    assert float(lazy.sum().compute()) == 8 * 6 * 3


@pytest.mark.parametrize("layout", ["batch", "uneven"])
def test_im2col_col2im(layout):
    rng = np.random.default_rng(3)
    x = random_array(rng, (5, 4, 11, 9))
    chunks = LAYOUTS[layout]
    for kw in [dict(stride=2, padding=1), dict(dilation=2, padding=(0, 2))]:
        compare(fc.im2col(da.from_array(x, chunks=chunks), (2, 3), **kw), fc.im2col(x, (2, 3), **kw))
        cols = fc.im2col(x, (2, 3), **kw)
        lazy = fc.col2im(da.from_array(cols, chunks=(7, 13)), x.shape, (2, 3), **kw)
        compare(lazy, fc.col2im(cols, x.shape, (2, 3), **kw))


def test_linear_and_softmax():
    rng = np.random.default_rng(4)
    x, W, b, g = (random_array(rng, s) for s in [(9, 5), (5, 4), (4,), (9, 4)])
    xd, gd = da.from_array(x, chunks=(4, 2)), da.from_array(g, chunks=3)
    compare(fc.linear(xd, W, b), fc.linear(x, W, b))
    compare(fc.linear(xd[0], da.from_array(W), b), fc.linear(x[0], W, b))
    for lazy, expected in zip(fc.linear_backward(xd, W, gd), fc.linear_backward(x, W, g)):
        compare(lazy, expected)
    for lazy, expected in zip(fc.linear_backward(xd[0], W, gd[0]), fc.linear_backward(x[0], W, g[0])):
        compare(lazy, expected)
    s = random_array(rng, (6, 7, 5))
    sd = da.from_array(s, chunks=(2, 3, 2))
    compare(fc.softmax(sd, axis=1), fc.softmax(s, axis=1))
    compare(fc.softmax_backward(sd, s[::-1], axis=1), fc.softmax_backward(s, s[::-1], axis=1))


def counting_source(shape, chunks, calls):
    """A dask array whose blocks are made by a function that counts its calls."""
    rng_values = np.random.default_rng(5).standard_normal(shape)

    def block(block_info=None):
        calls.append(1)
        loc = block_info[None]["array-location"]
        return rng_values[tuple(slice(*s) for s in loc)]

    return da.map_blocks(block, chunks=chunks, dtype=np.float64, meta=np.empty((0,) * len(shape))), \
        rng_values


def test_calls_are_lazy():
    calls = []
    x, values = counting_source((4, 3, 8, 8), ((2, 2), (3,), (4, 4), (8,)), calls)
    w = np.ones((2, 3, 3, 3))
    results = [
        fc.conv2d(x, w, padding=1), fc.conv2d_grad_weight(x, fc.conv2d(x, w), w.shape),
        fc.conv2d_grad_input(x[:, :2], w, (4, 3, 10, 10)), fc.conv2d_grad_bias(x),
        fc.im2col(x, 3), fc.batch_outer_hadamard(x, x), fc.softmax(x), fc.linear(x[:, 0, 0], np.ones((8, 2))),
        *fc.linear_backward(x[:, 0, 0], np.ones((8, 2)), x[:, 0, 0, :2]),
    ]
    assert calls == []  # building the graphs read no block
    assert_matches(results[0].compute(), fc.conv2d(values, w, padding=1))
    assert len(calls) == 4


def test_bad_arguments_raise_when_called():
    x = da.ones((4, 3, 8, 8), chunks=2)
    with pytest.raises(ValueError, match=r"conv2d: weight has 2 input channels per group but x has 3"):
        fc.conv2d(x, np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: x must be 4-D"):
        fc.conv2d(x[0], np.ones((4, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"conv2d: out= is not supported with dask arrays"):
        fc.conv2d(x, np.ones((4, 3, 3, 3)), out=np.empty((4, 4, 6, 6)))
    with pytest.raises(ValueError, match=r"conv2d_grad_weight: x has 4 rows .* but grad_out has 3"):
        fc.conv2d_grad_weight(x, da.ones((3, 4, 6, 6)), (4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d_grad_input: grad_out has 4 images"):
        fc.conv2d_grad_input(da.ones((4, 4, 6, 6)), np.ones((4, 3, 3, 3)), (5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"batch_outer_hadamard: A \(na, \*S\) and B"):
        fc.batch_outer_hadamard(x, da.ones((2, 3, 8, 7)))
    with pytest.raises(TypeError, match=r"softmax: x has dtype object"):
        fc.softmax(da.from_array(np.array([[1, "a"]], dtype=object), chunks=-1))
    with pytest.raises(ValueError, match=r"softmax_backward: s and grad_s must have the same shape"):
        fc.softmax_backward(da.ones((2, 3)), da.ones((3, 3)))
    with pytest.raises(ValueError, match=r"col2im: cols has shape"):
        fc.col2im(da.ones((27, 10)), (4, 3, 8, 8), 3)


def test_tasks_share_threads_and_restore_them():
    """Two tasks at once run on one numba thread each; the scheduler's threads keep
    their own counts afterwards (numba's count is per thread)."""
    from fastconv import _dask

    seen, barrier = [], threading.Barrier(2)

    def task():
        with _dask._task_threads(2):
            barrier.wait()
            seen.append(numba.get_num_threads())
            barrier.wait()
        seen.append(("after", numba.get_num_threads()))

    before = numba.get_num_threads()
    threads = [threading.Thread(target=task) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert min(seen[:2]) == 1  # the second task in takes half of two threads
    assert all(n == numba.config.NUMBA_NUM_THREADS for _, n in seen[2:])
    assert numba.get_num_threads() == before


def test_single_task_keeps_the_callers_threads():
    from fastconv import _dask

    with _dask._task_threads(numba.config.NUMBA_NUM_THREADS):
        inside = numba.get_num_threads()
    assert inside == numba.config.NUMBA_NUM_THREADS


def test_graph_pickles_and_runs_after_a_round_trip():
    rng = np.random.default_rng(6)
    x, w, b = conv_case(rng, {})
    lazy = fc.conv2d(da.from_array(x, chunks=(2, 4, 6, 5)), w, b, padding=1)
    graph = pickle.loads(pickle.dumps(dict(lazy.__dask_graph__())))
    result = da.Array(graph, lazy.name, lazy.chunks, meta=lazy._meta).compute(scheduler="sync")
    assert_matches(result, fc.conv2d(x, w, b, padding=1))


SCRIPT = """
import numpy as np, dask, dask.array as da, fastconv as fc
x = np.random.default_rng(0).standard_normal((6, 3, 10, 10))
w = np.ones((4, 3, 3, 3))
with dask.config.set(scheduler="threads", num_workers=2):
    y = fc.conv2d(da.from_array(x, chunks=(2, 3, 5, 10)), w, padding=1).compute()
    s = fc.batch_outer_hadamard(da.from_array(x, chunks=2), da.from_array(x, chunks=3)).sum().compute()
import numba
assert numba.threading_layer() == "{layer}", numba.threading_layer()
assert np.allclose(y, fc.conv2d(x, w, padding=1)) and np.isclose(s, fc.batch_outer_hadamard(x, x).sum())
print("ok")
"""


def test_workqueue_threading_layer():
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(layer="workqueue")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_importing_fastconv_does_not_import_dask():
    code = "import sys, fastconv; assert not [m for m in sys.modules if m.split('.')[0] == 'dask'], 'dask'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.distributed
def test_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(7)
    x, w, b = conv_case(rng, dict(stride=2, padding=1))
    A, B = random_array(rng, (6, 4, 5), np.float32), random_array(rng, (4, 4, 5), np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        xd = da.from_array(x, chunks=(2, 4, 6, 9))
        y, total, grad_w, threads = client.compute([
            fc.conv2d(xd, w, b, stride=2, padding=1),
            fc.batch_outer_hadamard(da.from_array(A, chunks=2), da.from_array(B, chunks=4)).sum(),
            fc.conv2d_grad_weight(xd, fc.conv2d(xd, w, stride=2, padding=1), w.shape, stride=2, padding=1),
            # the numba thread count a fastconv task sees in a worker (a lambda: pickled by value)
            da.ones(4, chunks=1).map_blocks(lambda block: np.full(block.shape, __import__(
                "fastconv._dask").__dict__["_dask"]._run(numba.get_num_threads, 2)), dtype=int),
        ], sync=True)
    assert_matches(y, fc.conv2d(x, w, b, stride=2, padding=1))
    assert_matches(total, fc.batch_outer_hadamard(A, B).sum(), rtol=1e-5)
    go = fc.conv2d(x, w, stride=2, padding=1)
    assert_matches(grad_w, fc.conv2d_grad_weight(x, go, w.shape, stride=2, padding=1))
    assert set(threads.tolist()) == {1}


@pytest.mark.parametrize("subscripts, shapes, chunks", [
    ("ijk,kl->il", [(6, 5, 4), (4, 7)], [(2, 3, 2), (2, 3)]),
    ("ijk,kl->ijl", [(6, 5, 4), (4, 7)], [(2, 5, 4), (4, 7)]),
    ("ijk->", [(6, 5, 4)], [(4, 2, 3)]),
    ("...k,kl->...l", [(6, 5, 4), (4, 7)], [(3, 2, 2), (2, 7)]),
    ("nchw,nchw->nc", [(4, 3, 5, 5), (4, 3, 5, 5)], [(2, 3, 2, 5), (4, 1, 5, 3)]),
])
def test_einsum(subscripts, shapes, chunks):
    if not hasattr(fc, "einsum"):
        pytest.skip("fastconv.einsum is not part of this build")
    rng = np.random.default_rng(8)
    operands = [random_array(rng, shape) for shape in shapes]
    lazy = fc.einsum(subscripts, *(da.from_array(a, chunks=c) for a, c in zip(operands, chunks)))
    compare(lazy, np.einsum(subscripts, *operands))


def test_tasks_get_the_blocks_themselves(rng, monkeypatch):
    """A task receives its input block as dask holds it, not a copy (blockwise's
    concatenation of single-chunk indices would copy every block)."""
    x = random_array(rng, (6, 4, 9, 9), np.float32)
    w = random_array(rng, (5, 4, 3, 3), np.float32)
    seen = []
    original = fc.conv.conv2d

    def recording(data, *args, **kwargs):
        if data.shape[0]:
            seen.append(np.shares_memory(data, x))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(fc.conv, "conv2d", recording)
    views = [dask.delayed(lambda i: x[i:i + 2])(i) for i in range(0, 6, 2)]  # blocks viewing x
    lazy = da.concatenate([da.from_delayed(v, (2, 4, 9, 9), x.dtype) for v in views])
    with dask.config.set(scheduler="sync"):
        result = fc.conv2d(lazy, w, padding=1).compute()
    assert_matches(result, fc.reference.conv2d(x, w, padding=1))
    assert seen == [True, True, True]
