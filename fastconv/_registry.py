"""The table of operations: for each one, the fast function, its einsum
reference, its peers (other ways people compute the same thing), the named
workloads it is measured on and their flop and byte counts.

``python -m fastconv``, the asv suite (``benchmarks/``) and the agreement tests
(``tests/test_registry.py``) all read this table. Adding an operation is adding
one :class:`Operation` to :data:`OPERATIONS`.

This module imports nothing from fastconv when it loads: the asv suite loads it
from the source tree by path while an older fastconv, which may lack the
functions or this very module, is installed. Functions are looked up when a
method is built, and a missing one raises ``NotImplementedError`` (asv's
"skipped").
"""
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Agreement tolerance per dtype, relative to max |reference| (summation order
#: differs between a kernel and its reference).
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

#: Largest flop count on which the asv suite times an einsum reference
#: (about 2 s here); ``python -m fastconv`` times every workload.
REFERENCE_FLOPS_LIMIT = 2e9


def _load_beside(name):
    """A module from this file's directory, loaded by path (see the module docstring)."""
    key = f"_fastconv_source_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


if __package__:
    from . import _seeds
else:  # loaded by path by the asv suite
    _seeds = _load_beside("_seeds")


@dataclass(frozen=True)
class Workload:
    """A named problem size. ``dims`` is read by the operation's ``make``."""
    name: str
    about: str
    dims: tuple
    #: in ``python -m fastconv --quick`` and in the agreement tests
    quick: bool = False
    #: the name this workload had before (``benchmarks/isolated.py`` accepts both)
    former: str = ""


def _table(*workloads):
    return {w.name: w for w in workloads}


@dataclass(frozen=True)
class Operation:
    """One row of the registry.

    * ``fast(module)``: the operation as a callable, built from ``fastconv`` or
      ``fastconv.reference`` (the two share names and signatures);
    * ``make(rng, dtype, dims)``: ``(args, kwargs)`` for one workload;
    * ``peers[name](args, kwargs)``: a callable computing the same result another
      way, or ``NotImplementedError`` where it cannot (not installed, too slow);
    * ``flops(dims)``/``nbytes(dims, itemsize)``: the work and the memory traffic
      (inputs read plus results written) of one call;
    * ``baseline``: the method the asv suite reports fastconv's speed-up over,
      timed in the same process (cheap enough for every workload);
    * ``reference_rows``: the einsum reference needs memory beyond the batch
      (a Jacobian per row): it is timed on this many rows and scaled.
    """
    name: str
    fast: Callable
    make: Callable
    workloads: dict
    flops: Callable
    nbytes: Callable
    peers: dict = field(default_factory=dict)
    baseline: str = "reference"
    reference_rows: int = 0

    def function(self, module):
        """The operation built from ``module``; NotImplementedError where it lacks it."""
        try:
            return self.fast(module)
        except AttributeError as missing:
            raise NotImplementedError(f"{self.name}: {missing}") from None

    def arguments(self, workload, dtype, seed=0):
        """``(args, kwargs)`` of the named workload, in ``dtype``."""
        return self.make(np.random.default_rng(seed), np.dtype(dtype), self.workloads[workload].dims)

    def method(self, name, args, kwargs):
        """A no-argument callable running ``name`` ('fastconv', 'reference' or a
        peer) on the given arguments. Raises NotImplementedError where the method
        does not exist (here, or in the installed fastconv)."""
        if name in ("fastconv", "reference"):
            module = importlib.import_module("fastconv")
            if name == "reference":
                module = module.reference
            function = self.function(module)
            return lambda: function(*args, **kwargs)
        if name not in self.peers:
            raise NotImplementedError(f"{self.name} has no method {name!r}")
        return self.peers[name](args, kwargs)

    def methods(self):
        return ["fastconv", "reference", *self.peers]


def torch_module():
    """torch, or NotImplementedError where it is not installed."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    return torch


def _torch_args(args):
    torch = torch_module()
    return torch, [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
                   for a in args]


def _no_grad(torch, call):
    def run():
        with torch.no_grad():
            return call()
    return run


def _random(rng, dtype, *shapes):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def _output_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


# ---------------------------------------------------------------- batch_outer_hadamard

def _hadamard_make(rng, dtype, dims):
    na, nb, nx, ny = dims
    return _random(rng, dtype, (na, nx, ny), (nb, nx, ny)), {}


def _hadamard_broadcast(args, kwargs):
    A, B = args
    return lambda: (A[:, None] * B[None]).reshape(len(A) * len(B), *A.shape[1:])


def _hadamard_itertools(args, kwargs):
    A, B = args
    if len(A) * len(B) > 1000:
        raise NotImplementedError("the loop of products takes seconds at this size")
    return lambda: _seeds.outer_hadamard_iter(A, B)


def _hadamard_torch(args, kwargs):
    torch, (A, B) = _torch_args(args)
    return lambda: (A[:, None] * B[None]).reshape(len(A) * len(B), *A.shape[1:])


HADAMARD = Operation(
    name="batch_outer_hadamard",
    fast=lambda m: m.batch_outer_hadamard,
    make=_hadamard_make,
    workloads=_table(
        Workload("pairs_2x3_of_50x60", "6 products of 50x60 planes (72 KB out in float64)",
                 (2, 3, 50, 60), quick=True, former="seed_tiny"),
        Workload("pairs_20x30_of_50x60", "600 products (14 MB out in float64: fits the L3 cache)",
                 (20, 30, 50, 60), quick=True, former="l3_resident"),
        Workload("pairs_200x300_of_50x60", "60000 products (1.44 GB out in float64: memory bound)",
                 (200, 300, 50, 60), former="seed_large"),
    ),
    flops=lambda d: d[0] * d[1] * d[2] * d[3],
    nbytes=lambda d, itemsize: (d[0] + d[1] + d[0] * d[1]) * d[2] * d[3] * itemsize,
    peers={"numpy_broadcast": _hadamard_broadcast, "itertools": _hadamard_itertools,
           "torch": _hadamard_torch},
    baseline="numpy_broadcast",
)

# ---------------------------------------------------------------- im2col / col2im


def _columns_shape(dims):
    n, c, h, w, k, s, p = dims
    return c * k * k, n * _output_size(h, k, s, p) * _output_size(w, k, s, p)


def _im2col_make(rng, dtype, dims):
    n, c, h, w, k, s, p = dims
    return _random(rng, dtype, (n, c, h, w)) + [k], dict(stride=s, padding=p)


def _im2col_loop(args, kwargs):
    x, k = args
    return lambda: _seeds.im2col_loop(x, k, kwargs["stride"], kwargs["padding"])


def _im2col_torch(args, kwargs):
    torch, (x, k) = _torch_args(args)
    unfold = torch.nn.functional.unfold
    return lambda: unfold(x, k, stride=kwargs["stride"], padding=kwargs["padding"])


def _col2im_make(rng, dtype, dims):
    n, c, h, w, k, s, p = dims
    return _random(rng, dtype, _columns_shape(dims)) + [(n, c, h, w), k], dict(stride=s, padding=p)


def _col2im_torch(args, kwargs):
    cols, (n, c, h, w), k = args
    torch = torch_module()
    # torch's fold takes (N, C*K*K, L): the columns regrouped per image
    per_image = torch.from_numpy(cols.reshape(len(cols), n, -1).transpose(1, 0, 2).copy())
    fold = torch.nn.functional.fold
    return lambda: fold(per_image, (h, w), k, stride=kwargs["stride"], padding=kwargs["padding"])


IM2COL_WORKLOADS = _table(
    Workload("tiny_4x4x5x5_k3", "4 images of 4 channels 5x5, 3x3 windows, padding 1",
             (4, 4, 5, 5, 3, 1, 1), quick=True, former="seed_tiny"),
    Workload("resnet_8x64x28x28_k3", "a ResNet stage: 8 images of 64 channels 28x28, 3x3, padding 1",
             (8, 64, 28, 28, 3, 1, 1), quick=True, former="resnet_28_n8"),
    Workload("stem_8x3x224x224_k7s2", "an ImageNet stem: 8 RGB 224x224 images, 7x7 stride 2, padding 3",
             (8, 3, 224, 224, 7, 2, 3), former="stem_7x7_s2"),
)

IM2COL = Operation(
    name="im2col",
    fast=lambda m: m.im2col,
    make=_im2col_make,
    workloads=IM2COL_WORKLOADS,
    flops=lambda d: 0,
    nbytes=lambda d, itemsize: (np.prod(d[:4]) + np.prod(_columns_shape(d))) * itemsize,
    peers={"seed_loop": _im2col_loop, "torch": _im2col_torch},
    baseline="seed_loop",
)

COL2IM = Operation(
    name="col2im",
    fast=lambda m: m.col2im,
    make=_col2im_make,
    workloads=IM2COL_WORKLOADS,
    flops=lambda d: np.prod(_columns_shape(d)),
    nbytes=lambda d, itemsize: (np.prod(d[:4]) + np.prod(_columns_shape(d))) * itemsize,
    peers={"torch": _col2im_torch},
)

# ---------------------------------------------------------------- conv2d forward and backward


def _conv_output(dims):
    n, c, h, w, o, k, s, p = dims[:8]
    return n, o, _output_size(h, k, s, p), _output_size(w, k, s, p)


def _conv_flops(dims):
    """Twice the multiply-adds of the forward pass."""
    n, c, h, w, o, k, s, p = dims[:8]
    groups = dims[8] if len(dims) > 8 else 1
    return 2 * np.prod(_conv_output(dims)) * (c // groups) * k * k


def _conv_nbytes(dims, itemsize):
    n, c, h, w, o, k = dims[:6]
    groups = dims[8] if len(dims) > 8 else 1
    return (n * c * h * w + o * c // groups * k * k + np.prod(_conv_output(dims))) * itemsize


def _conv2d_make(rng, dtype, dims):
    n, c, h, w, o, k, s, p, g = dims
    args = _random(rng, dtype, (n, c, h, w), (o, c // g, k, k), (o,))
    return args, dict(stride=s, padding=p, groups=g)


def _conv2d_seed(args, kwargs):
    x, weight, bias = args
    if kwargs["groups"] != 1:
        raise NotImplementedError("the loop recipe has no groups")
    if x.shape[2] * x.shape[3] * weight.shape[2] * weight.shape[3] > 1 << 20:
        raise NotImplementedError("the loop recipe takes > 10 s on planes this large")
    return lambda: _seeds.conv2d_im2col(x, weight, bias, kwargs["stride"], kwargs["padding"])


def _conv2d_torch(args, kwargs):
    torch, targs = _torch_args(args)
    conv = torch.nn.functional.conv2d
    return _no_grad(torch, lambda: conv(*targs, **kwargs))


def _conv_backward(module):
    """conv2d's three gradients as one call: ``(dx, dweight, dbias)``."""
    grad_input, grad_weight, grad_bias = (module.conv2d_grad_input, module.conv2d_grad_weight,
                                          module.conv2d_grad_bias)

    def backward(x, weight, grad_out, **kwargs):
        return (grad_input(grad_out, weight, x.shape, **kwargs),
                grad_weight(x, grad_out, weight.shape, **kwargs), grad_bias(grad_out))
    return backward


def _conv2d_backward_make(rng, dtype, dims):
    n, c, h, w, o, k, s, p = dims
    return _random(rng, dtype, (n, c, h, w), (o, c, k, k), _conv_output(dims)), dict(stride=s, padding=p)


def _conv2d_backward_torch(args, kwargs):
    torch, (x, weight, grad_out) = _torch_args(args)
    x, weight = x.requires_grad_(), weight.requires_grad_()
    bias = torch.zeros(len(weight), dtype=x.dtype, requires_grad=True)
    y = torch.nn.functional.conv2d(x, weight, bias, **kwargs)
    return lambda: torch.autograd.grad(y, (x, weight, bias), grad_out, retain_graph=True)


CONV2D = Operation(
    name="conv2d",
    fast=lambda m: m.conv2d,
    make=_conv2d_make,
    workloads=_table(
        Workload("tiny_4x4x5x5_k3", "4 images of 4 channels 5x5 -> 10 channels, 3x3, padding 1",
                 (4, 4, 5, 5, 10, 3, 1, 1, 1), quick=True, former="seed_tiny"),
        Workload("patch_64x64x3x3_k3", "64 patches of 64 channels 3x3 -> 8 channels, one 3x3 window each",
                 (64, 64, 3, 3, 8, 3, 1, 0, 1), quick=True, former="seed_patch"),
        Workload("resnet_1x64x56x56_k3", "a ResNet layer, batch 1: 64 -> 64 channels 56x56, 3x3",
                 (1, 64, 56, 56, 64, 3, 1, 1, 1), former="resnet_56_n1"),
        Workload("resnet_8x64x56x56_k3", "the same layer at batch 8",
                 (8, 64, 56, 56, 64, 3, 1, 1, 1), former="resnet_56_n8"),
        Workload("stem_8x3x224x224_k7s2", "an ImageNet stem: 8 RGB 224x224 -> 64 channels, 7x7 stride 2",
                 (8, 3, 224, 224, 64, 7, 2, 3, 1), former="stem_7x7_s2"),
        Workload("resnet_16x256x14x14_k3", "a deep ResNet layer: 256 -> 256 channels 14x14, 3x3, batch 16",
                 (16, 256, 14, 14, 256, 3, 1, 1, 1), former="resnet_14"),
        Workload("pointwise_8x256x28x28_k1", "a 1x1 layer: 256 -> 256 channels 28x28, batch 8",
                 (8, 256, 28, 28, 256, 1, 1, 0, 1), former="pointwise_28"),
        Workload("depthwise_1x32x112x112_k3", "a MobileNet depthwise layer: 32 channels 112x112, 3x3",
                 (1, 32, 112, 112, 32, 3, 1, 1, 32), former="depthwise_112"),
        Workload("strided_8x64x64x64_k3s2", "a downsampling layer on 64x64 planes (float32 planes 16 KB "
                 "apart): 64 -> 64 channels, 3x3 stride 2", (8, 64, 64, 64, 64, 3, 2, 1, 1)),
    ),
    flops=_conv_flops,
    nbytes=_conv_nbytes,
    peers={"seed_im2col": _conv2d_seed, "torch": _conv2d_torch},
    baseline="seed_im2col",
)

CONV2D_BACKWARD = Operation(
    name="conv2d_backward",
    fast=_conv_backward,
    make=_conv2d_backward_make,
    workloads=_table(
        Workload("tiny_4x4x5x5_k3", "4 images of 4 channels 5x5 -> 10 channels, 3x3, padding 1",
                 (4, 4, 5, 5, 10, 3, 1, 1), quick=True, former="seed_tiny"),
        Workload("resnet_1x64x56x56_k3", "a ResNet layer, batch 1: 64 -> 64 channels 56x56, 3x3",
                 (1, 64, 56, 56, 64, 3, 1, 1), former="resnet_56_n1"),
        Workload("resnet_8x64x28x28_k3", "a ResNet layer, batch 8: 64 -> 64 channels 28x28, 3x3",
                 (8, 64, 28, 28, 64, 3, 1, 1), former="resnet_28_n8"),
        Workload("resnet_16x128x14x14_k3s2", "a downsampling layer: 128 -> 128 channels, 3x3 stride 2",
                 (16, 128, 14, 14, 128, 3, 2, 1), former="resnet_14_s2"),
        Workload("stem_8x3x64x64_k5s2", "a small stem: 8 RGB 64x64 -> 32 channels, 5x5 stride 2",
                 (8, 3, 64, 64, 32, 5, 2, 2), quick=True, former="stem_5x5_s2"),
        Workload("narrow_8x32x32x32_k3", "a layer narrowing 32 -> 16 channels on 32x32 planes, 3x3",
                 (8, 32, 32, 32, 16, 3, 1, 1)),
        Workload("odd_3x160x17x23_k3", "few images on an odd, non-square plane: 3 x 160 channels "
                 "17x23 -> 192, 3x3", (3, 160, 17, 23, 192, 3, 1, 1)),
    ),
    flops=lambda d: 2 * _conv_flops(d),  # grad input and grad weight
    nbytes=lambda d, itemsize: 2 * _conv_nbytes(d, itemsize),
    peers={"torch": _conv2d_backward_torch},
)

# ---------------------------------------------------------------- linear and softmax

LINEAR_WORKLOADS = _table(
    Workload("tiny_16x64_to_32", "16 rows, 64 -> 32 features", (16, 64, 32), quick=True, former="seed"),
    Workload("mlp_256x1024_to_512", "an MLP layer: 256 rows, 1024 -> 512 features", (256, 1024, 512),
             quick=True, former="mlp"),
    Workload("classifier_4096x512_to_1000", "a classifier head: 4096 rows, 512 -> 1000 classes",
             (4096, 512, 1000), former="classifier"),
)


def _linear_make(rng, dtype, dims):
    n, i, o = dims
    return _random(rng, dtype, (n, i), (i, o), (o,)), {}


def _linear_backward_make(rng, dtype, dims):
    n, i, o = dims
    return _random(rng, dtype, (n, i), (i, o), (n, o)), {}


def _linear_numpy(args, kwargs):
    x, W, b = args
    return lambda: x @ W + b


def _linear_torch(args, kwargs):
    torch, (x, W, b) = _torch_args(args)
    return lambda: torch.addmm(b, x, W)


def _linear_backward_numpy(args, kwargs):
    x, W, g = args
    return lambda: (g @ W.T, x.T @ g, g.sum(axis=0))


def _linear_backward_torch(args, kwargs):
    torch, (x, W, g) = _torch_args(args)
    return lambda: (g @ W.T, x.T @ g, g.sum(0))


LINEAR = Operation(
    name="linear", fast=lambda m: m.linear, make=_linear_make, workloads=LINEAR_WORKLOADS,
    flops=lambda d: 2 * d[0] * d[1] * d[2],
    nbytes=lambda d, itemsize: (d[0] * d[1] + d[1] * d[2] + d[2] + d[0] * d[2]) * itemsize,
    peers={"numpy": _linear_numpy, "torch": _linear_torch}, baseline="numpy",
)

LINEAR_BACKWARD = Operation(
    name="linear_backward", fast=lambda m: m.linear_backward, make=_linear_backward_make,
    workloads=LINEAR_WORKLOADS,
    flops=lambda d: 4 * d[0] * d[1] * d[2],
    nbytes=lambda d, itemsize: 2 * (d[0] * d[1] + d[1] * d[2] + d[0] * d[2]) * itemsize,
    peers={"numpy": _linear_backward_numpy, "torch": _linear_backward_torch}, baseline="numpy",
)

SOFTMAX_WORKLOADS = _table(
    Workload("tiny_4x5", "4 rows of 5 logits", (4, 5), quick=True, former="seed"),
    Workload("imagenet_4096x1000", "a batch of 4096 rows of 1000 ImageNet logits", (4096, 1000),
             former="imagenet_batch"),
)


def _softmax_make(rng, dtype, dims):
    return [3 * _random(rng, dtype, dims)[0]], {}


def _softmax_backward_make(rng, dtype, dims):
    logits, grad = _random(rng, dtype, dims, dims)
    e = np.exp(3 * logits - (3 * logits).max(axis=-1, keepdims=True))
    return [(e / e.sum(axis=-1, keepdims=True)).astype(dtype), grad], {}


def _softmax_numpy(args, kwargs):
    (x,) = args

    def softmax():
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return e
    return softmax


def _softmax_torch(args, kwargs):
    torch, (x,) = _torch_args(args)
    return lambda: torch.softmax(x, -1)


def _softmax_backward_closed_form(args, kwargs):
    s, g = args
    return lambda: s * (g - (s * g).sum(axis=-1, keepdims=True))


def _softmax_backward_torch(args, kwargs):
    torch, (s, g) = _torch_args(args)
    return lambda: torch._softmax_backward_data(g, s, -1, s.dtype)


SOFTMAX = Operation(
    name="softmax", fast=lambda m: m.softmax, make=_softmax_make, workloads=SOFTMAX_WORKLOADS,
    flops=lambda d: 4 * d[0] * d[1],  # max, exp, sum, divide
    nbytes=lambda d, itemsize: 2 * d[0] * d[1] * itemsize,
    peers={"numpy": _softmax_numpy, "torch": _softmax_torch}, baseline="numpy",
)

SOFTMAX_BACKWARD = Operation(
    name="softmax_backward", fast=lambda m: m.softmax_backward, make=_softmax_backward_make,
    workloads=SOFTMAX_WORKLOADS,
    flops=lambda d: 4 * d[0] * d[1],
    nbytes=lambda d, itemsize: 3 * d[0] * d[1] * itemsize,
    peers={"numpy_closed_form": _softmax_backward_closed_form, "torch": _softmax_backward_torch},
    baseline="numpy_closed_form", reference_rows=64,
)

# ---------------------------------------------------------------- einsum

EINSUM_WORKLOADS = _table(
    Workload("hadamard_200x300_of_50x60", "the seed's outer-Hadamard product 'ikxy,kjxy->ijxy'",
             ("ikxy,kjxy->ijxy", (200, 1, 50, 60), (1, 300, 50, 60))),
    Workload("hadamard_20x30_of_50x60", "'ikxy,kjxy->ijxy' on 20 x 30 planes of 50x60",
             ("ikxy,kjxy->ijxy", (20, 1, 50, 60), (1, 30, 50, 60))),
    Workload("linear_dW_4096x1024x512", "a linear layer's weight gradient 'ni,no->io'",
             ("ni,no->io", (4096, 1024), (4096, 512))),
    Workload("patch_conv_8x64x3x3", "the seed's per-pixel conv 'oiwh,biwh->bo' on 64 patches",
             ("oiwh,biwh->bo", (8, 64, 3, 3), (64, 64, 3, 3))),
    Workload("patch_conv_256x256x3x3", "'oiwh,biwh->bo' with 256 filters on 2048 patches",
             ("oiwh,biwh->bo", (256, 256, 3, 3), (2048, 256, 3, 3))),
    Workload("softmax_diag_256x100", "the softmax Jacobian's diagonal part 'no,oi->nio'",
             ("no,oi->nio", (256, 100), (100, 100))),
    Workload("softmax_outer_256x100", "the softmax Jacobian's outer part 'no,ni->nio'",
             ("no,ni->nio", (256, 100), (256, 100))),
    Workload("softmax_grad_256x100", "the Jacobian applied to the gradient 'nio,no->ni'",
             ("nio,no->ni", (256, 100, 100), (256, 100))),
    Workload("row_scale_2000x2000", "rows scaled by a vector 'o,os->os'",
             ("o,os->os", (2000,), (2000, 2000))),
    Workload("diagonals_2000x60x60", "the diagonals of a stack of matrices 'nii->ni' (a view)",
             ("nii->ni", (2000, 60, 60))),
    Workload("trace_3000", "the trace 'ii' of a 3000x3000 matrix", ("ii->", (3000, 3000))),
    Workload("tiny_hadamard_2x3_of_50x60", "the seed's outer-Hadamard product at its own tiny size",
             ("ikxy,kjxy->ijxy", (2, 1, 50, 60), (1, 3, 50, 60)), quick=True),
    Workload("tiny_linear_dW_16x64x32", "'ni,no->io' at the seed's size (dispatch cost shows)",
             ("ni,no->io", (16, 64), (16, 32)), quick=True),
    Workload("tiny_softmax_diag_1x5", "'no,oi->nio' at the seed's size", ("no,oi->nio", (1, 5), (5, 5)),
             quick=True),
    Workload("tiny_trace_5", "'ii' of a 5x5 matrix", ("ii->", (5, 5)), quick=True),
)


def _einsum_make(rng, dtype, dims):
    subscripts, *shapes = dims
    return [subscripts, *_random(rng, dtype, *shapes)], {}


def _einsum_sizes(dims):
    """Each label's size, and the elements of the result."""
    subscripts, *shapes = dims
    inputs, output = subscripts.split("->")
    sizes = {label: n for term, shape in zip(inputs.split(","), shapes) for label, n in zip(term, shape)}
    return sizes, math.prod(sizes[label] for label in output)


def _einsum_flops(dims):
    sizes, _ = _einsum_sizes(dims)
    return 2 * math.prod(sizes.values()) if len(dims) > 2 else 0


def _einsum_nbytes(dims, itemsize):
    _, result = _einsum_sizes(dims)
    return (sum(math.prod(shape) for shape in dims[1:]) + result) * itemsize


def _einsum_numpy(optimize):
    def peer(args, kwargs):
        return lambda: np.einsum(*args, optimize=optimize)
    return peer


def _einsum_torch(args, kwargs):
    torch, operands = _torch_args(args[1:])
    return lambda: torch.einsum(args[0], *operands)


EINSUM = Operation(
    name="einsum", fast=lambda m: m.einsum, make=_einsum_make, workloads=EINSUM_WORKLOADS,
    flops=_einsum_flops, nbytes=_einsum_nbytes,
    peers={"numpy": _einsum_numpy(False), "numpy_optimize": _einsum_numpy(True), "torch": _einsum_torch},
    baseline="numpy",
)

#: Every operation, in the order the tables list them.
OPERATIONS = {op.name: op for op in (HADAMARD, IM2COL, COL2IM, CONV2D, CONV2D_BACKWARD, LINEAR,
                                     LINEAR_BACKWARD, SOFTMAX, SOFTMAX_BACKWARD, EINSUM)}


def reference_is_cheap(op, workload):
    """Whether the asv suite times the einsum reference on this workload at all."""
    dims = op.workloads[workload].dims
    return op.flops(dims) <= REFERENCE_FLOPS_LIMIT and not (op.reference_rows and dims[0] > op.reference_rows)


__all__ = ["OPERATIONS", "Operation", "Workload", "RTOL", "reference_is_cheap", "torch_module"]
