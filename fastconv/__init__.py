"""fastconv: Numba CPU kernels for the einsum operations of from-scratch deep
learning, each beside its NumPy einsum reference in :mod:`fastconv.reference`."""
# _config comes first: it decides numba's options and thread-pool policy for every kernel.
from . import _config, layers, reference  # noqa: F401 - _config is imported for its settings
from .activations import softmax, softmax_backward
from .columns import col2im, im2col
from .conv import conv2d
from .conv_grad import conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight
from .einsum import einsum
from .fully_connected import linear, linear_backward
from .hadamard import batch_outer_hadamard

__all__ = ["batch_outer_hadamard", "im2col", "col2im", "conv2d",
           "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
           "linear", "linear_backward", "softmax", "softmax_backward", "einsum", "reference", "layers"]
__version__ = "0.1.0"
