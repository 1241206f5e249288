"""Drop-in layer classes in the style of the classic from-scratch NumPy layers.

Each layer has ``forward(X)`` and ``backward(dout)``; ``backward`` returns dL/dX
and stores the parameter gradients in ``.dweights`` and ``.dbiases``. Parameters
are public arrays (``layer.weights = np.ones(...)`` keeps working). Every layer
computes with ``ops``: fastconv's kernels by default, or ``fastconv.reference``
(same names and signatures) to run the same network on the einsum versions.

Examples
--------
>>> import numpy as np
>>> from fastconv.layers import Conv2d, ReLU, Flatten, Linear, Softmax
>>> net = [Conv2d(1, 4, 3, padding=1, seed=0), ReLU(), Flatten(), Linear(4 * 8 * 8, 3, seed=0), Softmax()]
>>> X = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
>>> for layer in net:
...     X = layer.forward(X)
>>> X.shape, bool(np.allclose(X.sum(axis=1), 1.0))
((2, 3), True)
"""
import numpy as np

import fastconv


class Conv2d:
    """2-D convolution (cross-correlation): ``weights`` (O, C // groups, K, K), ``biases`` (O, 1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, seed=None, dtype=np.float64, ops=fastconv):
        kh, kw = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels={in_channels} and out_channels={out_channels} "
                             f"must both be divisible by groups={groups}")
        fan_in = in_channels // groups * kh * kw
        rng = np.random.default_rng(seed)
        self.weights = (rng.standard_normal((out_channels, in_channels // groups, kh, kw))
                        * np.sqrt(2.0 / fan_in)).astype(dtype)
        self.biases = np.zeros((out_channels, 1), dtype) if bias else None
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.ops = ops

    def forward(self, X):
        self.X = np.asarray(X)
        bias = None if self.biases is None else self.biases.reshape(-1)
        return self.ops.conv2d(self.X, self.weights, bias, **self.options)

    def backward(self, dout):
        self.dweights = self.ops.conv2d_grad_weight(self.X, dout, self.weights.shape, **self.options)
        if self.biases is not None:
            self.dbiases = self.ops.conv2d_grad_bias(dout).reshape(self.biases.shape)
        return self.ops.conv2d_grad_input(dout, self.weights, self.X.shape, **self.options)


class Linear:
    """Fully connected layer ``X @ weights + biases``: ``weights`` (I, O), ``biases`` (1, O)."""

    def __init__(self, input_size, output_size, *, seed=None, dtype=np.float64, ops=fastconv):
        rng = np.random.default_rng(seed)
        self.weights = (rng.standard_normal((input_size, output_size))
                        * np.sqrt(2.0 / input_size)).astype(dtype)
        self.biases = np.zeros((1, output_size), dtype)
        self.ops = ops

    def forward(self, X):
        self.X = np.asarray(X)
        return self.ops.linear(self.X, self.weights, self.biases.reshape(-1))

    def backward(self, dout):
        dX, self.dweights, dbiases = self.ops.linear_backward(self.X, self.weights, dout)
        self.dbiases = dbiases.reshape(self.biases.shape)
        return dX


class Softmax:
    """Softmax along ``axis``; backward in closed form (no Jacobian)."""

    def __init__(self, axis=-1, *, ops=fastconv):
        self.axis = axis
        self.ops = ops

    def forward(self, X):
        self.S = self.ops.softmax(X, axis=self.axis)
        return self.S

    def backward(self, dout):
        return self.ops.softmax_backward(self.S, dout, axis=self.axis)


class ReLU:
    """``max(X, 0)``; the gradient passes where the input was positive."""

    def forward(self, X):
        self.mask = np.asarray(X) > 0
        return np.where(self.mask, X, 0)

    def backward(self, dout):
        return np.where(self.mask, dout, 0)


class Flatten:
    """(N, ...) -> (N, prod(...)) and back."""

    def forward(self, X):
        self.shape = np.shape(X)
        return np.reshape(X, (self.shape[0], -1))

    def backward(self, dout):
        return np.reshape(dout, self.shape)
