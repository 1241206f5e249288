"""batch_outer_hadamard beside numpy broadcasting, the from-scratch loop of products,
torch and its einsum reference (benchmarks.common describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("batch_outer_hadamard"))
