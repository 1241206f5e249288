"""fastconv.einsum beside NumPy's einsum (default and optimize=True) and
torch.einsum, on the expressions from-scratch layers write, at working sizes and
at the seeds' tiny sizes, where only the dispatch cost shows (benchmarks.common
describes the classes)."""
from .common import operation_suite

globals().update(operation_suite("einsum"))
