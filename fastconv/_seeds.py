"""The from-scratch code people write today, with loops and einsum: what fastconv
replaces. Shared by the tests (exact layout checks) and the benchmarks (as peers)."""
import itertools

import numpy as np


def outer_hadamard_iter(A, B):
    """The seed's iterative batch outer-Hadamard product: one product per pair."""
    return np.stack([a * b for a, b in itertools.product(A, B)])


def im2col_loop(X, k, s, p):
    """The classic loop im2col: columns ``(C*k*k, batch*out_h*out_w)``."""
    batch, channels, h, w = X.shape
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    padded_X = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)))
    X_col = np.zeros((channels * k * k, batch, out_h * out_w), X.dtype)
    for i in range(out_h):
        for j in range(out_w):
            patch = padded_X[:, :, i * s:i * s + k, j * s:j * s + k]
            X_col[:, :, i * out_w + j] = patch.reshape(batch, -1).T
    return X_col.reshape(channels * k * k, -1)


def conv2d_im2col(X, W, b, s, p):
    """The classic conv2d: loop im2col, one GEMM, a transpose to NCHW (groups=1)."""
    batch, _, h, w = X.shape
    O, _, k, _ = W.shape
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = W.reshape(O, -1) @ im2col_loop(X, k, s, p) + b.reshape(O, 1)
    return out.reshape(O, batch, out_h, out_w).transpose(1, 0, 2, 3)
