"""The operation registry (fastconv._registry) that python -m fastconv, the asv
suite and these tests share: every operation's fast function agrees with its
reference, and every peer with both, on the registry's quick workloads."""
import numpy as np
import pytest

import fastconv as fc
from fastconv._registry import OPERATIONS, RTOL, reference_is_cheap

from conftest import assert_matches

#: peers whose result has another layout than the reference's: the conversion
LAYOUT = {("im2col", "torch"): lambda a: a.numpy().transpose(1, 0, 2).reshape(a.shape[1], -1)}
QUICK = [(op, name) for op in OPERATIONS for name, w in OPERATIONS[op].workloads.items() if w.quick]


def _results(value):
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op_name, workload", QUICK)
def test_fast_and_peers_agree_with_the_reference(op_name, workload, dtype):
    op = OPERATIONS[op_name]
    args, kwargs = op.arguments(workload, dtype)
    expected = _results(op.method("reference", args, kwargs)())
    for method in ["fastconv", *op.peers]:
        try:
            run = op.method(method, args, kwargs)
        except NotImplementedError:  # torch not installed, or too slow at this size
            continue
        convert = LAYOUT.get((op_name, method), np.asarray)
        for actual, reference in zip(_results(run()), expected):
            actual = np.asarray(convert(actual))
            assert actual.shape == reference.shape, method
            assert_matches(actual.astype(reference.dtype), reference, rtol=RTOL[reference.dtype])


def test_every_public_operation_is_registered_and_workloads_are_described():
    registered = set(OPERATIONS) - {"conv2d_backward"}
    covered = {"conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias"}
    public = {name for name in fc.__all__ if callable(getattr(fc, name))}
    assert public - covered <= registered
    for op in OPERATIONS.values():
        assert any(w.quick for w in op.workloads.values()), op.name
        for name, w in op.workloads.items():
            assert name == w.name and len(w.about) > 10
            assert op.nbytes(w.dims, 4) > 0 and op.flops(w.dims) >= 0
        assert op.baseline in op.methods()


def test_workload_arguments_are_reproducible_and_in_the_dtype():
    op = OPERATIONS["conv2d"]
    (x1, w1, b1), kw = op.arguments("tiny_4x4x5x5_k3", "float32")
    (x2, _, _), _ = op.arguments("tiny_4x4x5x5_k3", "float32")
    assert np.array_equal(x1, x2) and x1.dtype == w1.dtype == b1.dtype == np.float32
    assert x1.shape == (4, 4, 5, 5) and w1.shape == (10, 4, 3, 3) and kw["padding"] == 1


def test_a_missing_function_or_peer_is_not_implemented():
    op = OPERATIONS["conv2d"]
    args, kwargs = op.arguments("tiny_4x4x5x5_k3", "float32")
    with pytest.raises(NotImplementedError, match="no method 'nope'"):
        op.method("nope", args, kwargs)
    with pytest.raises(NotImplementedError, match="conv2d"):
        op.function(object())  # a fastconv without conv2d (an older commit)
    big = OPERATIONS["conv2d"].arguments("depthwise_1x32x112x112_k3", "float32")
    with pytest.raises(NotImplementedError, match="groups"):
        op.method("seed_im2col", *big)


def test_reference_is_timed_by_asv_only_where_it_is_cheap():
    assert reference_is_cheap(OPERATIONS["conv2d"], "resnet_1x64x56x56_k3")
    assert not reference_is_cheap(OPERATIONS["conv2d"], "resnet_16x256x14x14_k3")
    assert not reference_is_cheap(OPERATIONS["softmax_backward"], "imagenet_4096x1000")


def test_every_operation_has_its_asv_benchmarks():
    """benchmarks/bench_*.py build their classes from the registry, one
    ``operation_suite(name)`` per operation."""
    from pathlib import Path
    sources = " ".join(p.read_text() for p in (Path(__file__).parents[1] / "benchmarks").glob("bench_*.py"))
    for name in OPERATIONS:
        assert f'operation_suite("{name}")' in sources, name
