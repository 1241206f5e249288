"""conv2d backward (grad input + grad weight + grad bias) beside torch autograd's
backward of the same convolution and the einsum references (benchmarks.common
describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("conv2d_backward"))
