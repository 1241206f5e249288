"""Drop-in layer classes in the style of the classic from-scratch NumPy layers.

Each layer has ``forward(X)`` and ``backward(dout)``; ``backward`` returns dL/dX
and stores the parameter gradients in ``.dweights`` and ``.dbiases``. Parameters
are public arrays (``layer.weights = np.ones(...)`` keeps working). Every layer
computes with ``ops``: fastconv's kernels by default, or ``fastconv.reference``
(same names and signatures) to run the same network on the einsum versions.

dtypes: the parameters keep the dtype they were created with (``dtype``, float64
by default). A layer computes in the dtype of its floating-point input (float32
in, float32 out; integer and bool inputs are cast to the parameters' dtype): the
parameters are cast to it for the call, ``backward`` casts ``dout`` to it and
returns dL/dX in it, and ``.dweights``/``.dbiases`` come back in the parameters'
dtype, ready for ``layer.weights -= lr * layer.dweights``.

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


def _compute_dtype(X, parameters):
    """The input's dtype if it is floating-point, else the parameters'."""
    return X.dtype if X.dtype.kind == "f" else parameters.dtype


class _Layer:
    """Keeps what ``forward`` saw for ``backward``."""

    def __init__(self):
        self._saved = None

    def _save(self, **values):
        self._saved = values

    def _forward_state(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward: "
                               f"run forward(X) first, backward uses its input")
        return self._saved


class Conv2d(_Layer):
    """2-D convolution (cross-correlation): ``weights`` (O, C // groups, K, K), ``biases`` (O, 1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, seed=None, dtype=np.float64, ops=fastconv):
        super().__init__()
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
        X = np.asarray(X)
        dtype = _compute_dtype(X, self.weights)
        X = X.astype(dtype, copy=False)
        self._save(X=X, dtype=dtype)
        bias = None if self.biases is None else self.biases.reshape(-1).astype(dtype, copy=False)
        return self.ops.conv2d(X, self.weights.astype(dtype, copy=False), bias, **self.options)

    def backward(self, dout):
        saved = self._forward_state()
        X, dtype = saved["X"], saved["dtype"]
        dout = np.asarray(dout).astype(dtype, copy=False)
        weights = self.weights.astype(dtype, copy=False)
        self.dweights = self.ops.conv2d_grad_weight(X, dout, weights.shape, **self.options).astype(
            self.weights.dtype, copy=False)
        if self.biases is not None:
            self.dbiases = self.ops.conv2d_grad_bias(dout).reshape(self.biases.shape).astype(
                self.biases.dtype, copy=False)
        return self.ops.conv2d_grad_input(dout, weights, X.shape, **self.options)


class Linear(_Layer):
    """Fully connected layer ``X @ weights + biases``: ``weights`` (I, O), ``biases`` (1, O)."""

    def __init__(self, input_size, output_size, *, seed=None, dtype=np.float64, ops=fastconv):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weights = (rng.standard_normal((input_size, output_size))
                        * np.sqrt(2.0 / input_size)).astype(dtype)
        self.biases = np.zeros((1, output_size), dtype)
        self.ops = ops

    def forward(self, X):
        X = np.asarray(X)
        dtype = _compute_dtype(X, self.weights)
        X = X.astype(dtype, copy=False)
        self._save(X=X, dtype=dtype)
        return self.ops.linear(X, self.weights.astype(dtype, copy=False),
                               self.biases.reshape(-1).astype(dtype, copy=False))

    def backward(self, dout):
        saved = self._forward_state()
        X, dtype = saved["X"], saved["dtype"]
        dout = np.asarray(dout).astype(dtype, copy=False)
        dX, dweights, dbiases = self.ops.linear_backward(X, self.weights.astype(dtype, copy=False), dout)
        self.dweights = dweights.astype(self.weights.dtype, copy=False)
        self.dbiases = dbiases.reshape(self.biases.shape).astype(self.biases.dtype, copy=False)
        return dX


class Softmax(_Layer):
    """Softmax along ``axis``; backward in closed form (no Jacobian)."""

    def __init__(self, axis=-1, *, ops=fastconv):
        super().__init__()
        self.axis = axis
        self.ops = ops

    def forward(self, X):
        S = self.ops.softmax(X, axis=self.axis)
        self._save(S=S)
        return S

    def backward(self, dout):
        S = self._forward_state()["S"]
        return self.ops.softmax_backward(S, np.asarray(dout).astype(S.dtype, copy=False), axis=self.axis)


class ReLU(_Layer):
    """``max(X, 0)``; the gradient passes where the input was positive."""

    def forward(self, X):
        mask = np.asarray(X) > 0
        self._save(mask=mask)
        return np.where(mask, X, 0)

    def backward(self, dout):
        return np.where(self._forward_state()["mask"], dout, 0)


class Flatten(_Layer):
    """(N, ...) -> (N, prod(...)) and back."""

    def forward(self, X):
        shape = np.shape(X)
        self._save(shape=shape)
        return np.reshape(X, (shape[0], -1))

    def backward(self, dout):
        return np.reshape(dout, self._forward_state()["shape"])
