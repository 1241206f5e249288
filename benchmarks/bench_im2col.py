"""im2col and col2im beside the from-scratch loop im2col, torch's unfold/fold and
the einsum references (benchmarks.common describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("im2col"))
globals().update(operation_suite("col2im"))
