"""conv2d forward beside the from-scratch im2col recipe, torch.nn.functional.conv2d
and the einsum reference (benchmarks.common describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("conv2d"))
