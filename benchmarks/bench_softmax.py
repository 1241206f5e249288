"""softmax and softmax_backward beside plain numpy (the closed-form backward), torch
and the einsum references (benchmarks.common describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("softmax"))
globals().update(operation_suite("softmax_backward"))
