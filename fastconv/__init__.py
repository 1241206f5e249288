"""fastconv: Numba CPU kernels for the einsum operations of from-scratch deep
learning, each beside its NumPy einsum reference in :mod:`fastconv.reference`."""
from . import reference
from .hadamard import batch_outer_hadamard

__all__ = ["batch_outer_hadamard", "reference"]
__version__ = "0.1.0"
