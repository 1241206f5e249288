"""linear and linear_backward beside plain numpy GEMMs, torch and the einsum
references (benchmarks.common describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("linear"))
globals().update(operation_suite("linear_backward"))
