"""The one table of test cases per operation, shared by the op tests, the
property tests' regression block and the gradient tests."""
import numpy as np

from fastconv._registry import OPERATIONS

# (na, nb, *S): the named workloads, odd sizes, 1-element axes, trailing rank 0-3,
# and few rows with long rows (the path that splits rows into blocks).
HADAMARD_CASES = [
    *[w.dims for w in OPERATIONS["batch_outer_hadamard"].workloads.values() if w.quick],
    (1, 1, 1), (1, 7, 13), (5, 1, 3, 1), (3, 2, 1, 1, 1), (7, 11, 13, 2, 3),
    (2, 3, 40_000), (13, 17), (0, 3, 4, 5), (3, 0, 4), (2, 2, 0, 5),
]

# (x shape, kernel_size, stride, padding, dilation)
IM2COL_CASES = {
    "seed_tiny": ((4, 4, 5, 5), 3, 1, 1, 1),
    "stride2_pad0": ((2, 3, 9, 9), 3, 2, 0, 1),
    "pair_args": ((2, 3, 7, 11), (2, 3), (2, 1), (1, 2), (1, 2)),
    "same_odd": ((1, 2, 5, 6), 3, 1, "same", 1),
    "same_even_kernel": ((2, 2, 7, 5), (4, 2), 1, "same", (1, 3)),
    "valid": ((2, 3, 6, 7), (3, 2), (1, 3), "valid", 1),
    "dilated": ((1, 2, 13, 11), 3, (3, 2), 2, (2, 3)),
    "kernel_is_input": ((3, 2, 4, 4), 4, 1, 0, 1),
    "size_one": ((1, 1, 1, 1), 1, 1, 0, 1),
    "size_one_padded": ((2, 1, 1, 1), 3, 1, 1, 1),
    "primes": ((3, 5, 7, 13), (5, 3), (2, 3), (2, 1), 1),
    "big_stride": ((2, 2, 8, 8), 2, 5, 0, 1),
    "padding_wider_than_kernel": ((1, 2, 3, 3), 2, 1, 3, 1),
    "empty_batch": ((0, 3, 5, 5), 3, 1, 1, 1),
    "empty_channels": ((2, 0, 5, 5), 3, 1, 1, 1),
    "empty_plane_padded": ((2, 3, 0, 4), 1, 1, (1, 0), 1),
}

# name -> (x shape, weight shape, stride, padding, dilation, groups); the comments
# name the kernel path the case exercises (see fastconv/conv.py).
CONV2D_CASES = {
    "seed_tiny": ((4, 4, 5, 5), (10, 4, 3, 3), 1, 1, 1, 1),              # direct
    "seed_patch": ((64, 64, 3, 3), (8, 64, 3, 3), 1, 0, 1, 1),          # whole window GEMM
    "gemm_3x3": ((3, 64, 6, 6), (16, 64, 3, 3), 1, 1, 1, 1),            # im2col + GEMM
    "gemm_pairs": ((2, 32, 11, 7), (24, 32, 3, 2), (2, 1), (1, 2), (2, 1), 1),
    "gemm_same": ((2, 32, 9, 10), (20, 32, 4, 3), 1, "same", (1, 2), 1),
    "gemm_valid": ((2, 48, 9, 8), (40, 48, 2, 3), (1, 2), "valid", 1, 1),
    "gemm_groups": ((2, 32, 10, 10), (32, 8, 3, 3), 2, 1, 1, 4),
    "gemm_groups_big": ((2, 32, 20, 19), (32, 8, 3, 3), 2, 1, 1, 4),   # im2col + GEMM, merged
    "gemm_wide_plane": ((1, 3, 131, 130), (8, 3, 5, 5), 2, 2, 1, 1),    # im2col + GEMM, stacked
    "gemm_1x1_strided": ((2, 128, 9, 9), (64, 128, 1, 1), 2, 0, 1, 1),
    "gemm_1x1_padded": ((2, 128, 5, 5), (64, 128, 1, 1), 1, 1, 1, 1),
    "pointwise": ((2, 128, 7, 9), (64, 128, 1, 1), 1, 0, 1, 1),         # plain GEMM
    "whole_window_pairs": ((3, 64, 4, 5), (16, 64, 4, 5), 3, 0, 1, 1),
    "depthwise": ((2, 6, 9, 7), (6, 1, 3, 3), 1, "same", 1, 6),            # small (one serial call)
    "depthwise_multiplier": ((2, 4, 9, 7), (12, 1, 3, 2), (2, 1), 1, (1, 2), 4),
    "depthwise_big": ((2, 16, 48, 45), (16, 1, 3, 3), 1, 1, 1, 16),        # direct
    "depthwise_multiplier_big": ((2, 4, 61, 50), (12, 1, 3, 2), (2, 1), 1, (1, 2), 4),
    "depthwise_same_big": ((1, 8, 64, 63), (8, 1, 4, 5), 1, "same", (2, 1), 8),
    "stem_small": ((2, 3, 30, 30), (16, 3, 7, 7), 2, 3, 1, 1),
    "direct_groups": ((2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2),
    "direct_stride_dilation": ((2, 3, 11, 10), (5, 3, 3, 2), (2, 3), (1, 0), (2, 2), 1),
    "size_one": ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0, 1, 1),
    "kernel_is_input": ((2, 3, 5, 5), (4, 3, 5, 5), 1, 0, 1, 1),
    "primes": ((3, 5, 7, 13), (11, 5, 5, 3), (2, 3), (2, 1), 1, 1),
    "padding_beyond_kernel": ((1, 2, 3, 3), (3, 2, 2, 2), 1, 3, 1, 1),
    "empty_batch": ((0, 4, 5, 5), (10, 4, 3, 3), 1, 1, 1, 1),
    "empty_out_channels": ((2, 4, 5, 5), (0, 4, 3, 3), 1, 1, 1, 1),
    "empty_in_channels": ((2, 0, 5, 5), (3, 0, 3, 3), 1, 1, 1, 1),
}

#: linear: (N, I, O); N=None is a 1-D x of shape (I,).
LINEAR_CASES = [
    *[w.dims for w in OPERATIONS["linear"].workloads.values() if w.quick],
    (None, 64, 32), (1, 1, 1), (7, 13, 5), (3, 17, 1), (2, 1, 11),
    (0, 5, 3), (3, 0, 4), (4, 3, 0), (None, 3, 0),
]

#: softmax: (shape, axis). The named workloads, odd and 1-sized axes, every axis of
#: 3-D inputs; the three paths: axis last (row kernels), few trailing elements
#: (moved last), many (strided kernels, one above the kernel's block); empty sizes.
SOFTMAX_CASES = [
    *[(w.dims, -1) for w in OPERATIONS["softmax"].workloads.values() if w.quick],
    ((64, 1000), -1), ((4, 5), 0), ((5,), 0), ((1, 1), -1), ((1, 1), 0), ((7, 13), 1),
    ((13, 7), 0), ((3, 5, 7), 0), ((3, 5, 7), 1), ((3, 5, 7), 2), ((3, 5, 7), -2),
    ((2, 3, 700), 1), ((5, 70), 0), ((2, 1, 3, 4), 2),
    ((0, 5), -1), ((0, 5), 0), ((4, 0), -1), ((2, 0, 3), 1),
]

#: conv2d configurations held against torch: (x shape, weight shape, stride, padding,
#: dilation, groups); 'same' with even kernels, pairs, dilation, groups.
TORCH_CONFIGS = [
    ((2, 4, 9, 8), (6, 2, 3, 3), 1, "same", 1, 2),
    ((1, 3, 7, 10), (4, 3, 4, 2), 1, "same", (2, 1), 1),
    ((2, 6, 11, 9), (6, 1, 3, 5), (2, 1), (1, 2), (1, 2), 6),
    ((3, 8, 12, 12), (16, 8, 3, 3), 1, 1, 1, 1),
    ((2, 3, 15, 13), (8, 3, 7, 7), 2, 3, 1, 1),
    ((1, 4, 6, 6), (2, 4, 6, 6), 1, "valid", 1, 1),
]

#: The Winograd path of conv2d and its weight gradient: name -> (x shape, O, padding);
#: odd sizes where OH/OW are not multiples of the tile, every padding form, small
#: and >= 64 channels.
WINOGRAD_CASES = {
    "odd_pad1": ((2, 5, 9, 11), 7, 1),
    "valid_tiny": ((1, 3, 5, 5), 2, 0),
    "pad2_narrow": ((3, 8, 13, 6), 4, 2),
    "same": ((2, 4, 7, 9), 3, "same"),
    "valid_str": ((1, 6, 10, 12), 5, "valid"),
    "pairs": ((2, 4, 7, 9), 3, (0, 2)),
    "pairs_other": ((1, 5, 8, 5), 6, (2, 1)),
    "one_column": ((2, 3, 9, 1), 4, 1),
    "padding_wider_than_tiles": ((1, 3, 4, 3), 2, (3, 5)),
    "wide_channels": ((2, 64, 12, 17), 72, 1),
    "resnet_like": ((1, 64, 28, 28), 64, 1),
}


#: NaN/Inf placement on every kernel path of conv2d and its gradients: name ->
#: (x shape, weight shape, stride, padding, groups). The comments name the
#: conv2d path; the gradients run on the same shapes.
NONFINITE_CASES = {
    "small": ((2, 4, 6, 6), (5, 4, 3, 3), 1, 1, 1),                 # one serial call
    "depthwise": ((2, 16, 48, 45), (16, 1, 3, 3), 1, 1, 16),         # direct, groups == C
    "pointwise_1x1": ((2, 128, 7, 9), (64, 128, 1, 1), 1, 0, 1),    # one batched GEMM
    "whole_window": ((64, 64, 3, 3), (8, 64, 3, 3), 1, 0, 1),       # x.reshape(N, -1) @ W.T
    "winograd_3x3": ((2, 64, 20, 20), (64, 64, 3, 3), 1, 1, 1),     # Winograd F(2x2,3x3)
    "winograd_3x3_large": ((2, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1),  # Winograd F(4x4,3x3)
    "gemm_5x5_s2": ((2, 16, 20, 20), (32, 16, 5, 5), 2, 2, 1),      # im2col + GEMM, merged
    "gemm_per_tap": ((2, 32, 32, 32), (16, 32, 3, 3), 2, 1, 1),     # a GEMM per tap, no windows
    "gemm_grouped": ((2, 32, 20, 19), (32, 8, 3, 3), 2, 1, 4),      # im2col + GEMM per group
    "gemm_wide_plane": ((1, 3, 131, 130), (8, 3, 5, 5), 2, 2, 1),   # im2col + GEMM, stacked
}


def every_operation(rng, dtype=np.float32):
    """One small call of every public operation: name -> (args, kwargs), the same
    for ``fastconv`` and ``fastconv.reference``."""
    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    window = dict(stride=1, padding=1)
    return {
        "batch_outer_hadamard": ((a(2, 3, 4), a(3, 3, 4)), {}),
        "im2col": ((a(2, 3, 5, 5), 3), window),
        "col2im": ((a(27, 50), (2, 3, 5, 5), 3), window),
        "conv2d": ((a(2, 3, 5, 5), a(4, 3, 3, 3), a(4)), window),
        "conv2d_grad_input": ((a(2, 4, 5, 5), a(4, 3, 3, 3), (2, 3, 5, 5)), window),
        "conv2d_grad_weight": ((a(2, 3, 5, 5), a(2, 4, 5, 5), (4, 3, 3, 3)), window),
        "conv2d_grad_bias": ((a(2, 4, 5, 5),), {}),
        "linear": ((a(2, 3), a(3, 4), a(4)), {}),
        "linear_backward": ((a(2, 3), a(3, 4), a(2, 4)), {}),
        "softmax": ((a(3, 5, 4),), dict(axis=1)),
        "softmax_backward": ((a(3, 5), a(3, 5)), {}),
        # np.einsum's interleaved form ('ni,no->io'): operands first, like every other call here
        "einsum": ((a(6, 3), [0, 1], a(6, 4), [0, 2], [1, 2]), {}),
    }
