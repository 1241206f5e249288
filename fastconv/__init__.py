"""fastconv: Numba CPU kernels for the einsum operations of from-scratch deep
learning, each beside its NumPy einsum reference in :mod:`fastconv.reference`."""
from . import _config  # noqa: F401 - thread-pool settings, before numpy loads OpenBLAS
from . import reference
from .hadamard import batch_outer_hadamard
from .dense import linear, linear_backward, softmax, softmax_backward
from .im2col import im2col, col2im
from .conv import conv2d
from .conv_grad import conv2d_grad_input, conv2d_grad_weight, conv2d_grad_bias

__all__ = ["batch_outer_hadamard", "im2col", "col2im", "conv2d",
           "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "reference",
           "linear", "linear_backward", "softmax", "softmax_backward"]
__version__ = "0.1.0"
