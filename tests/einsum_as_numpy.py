"""pytest plugin that runs NumPy's own einsum tests against fastconv.einsum.

``python -m pytest -p einsum_as_numpy --pyargs numpy._core.tests.test_einsum``
(from the repository root, where pytest puts ``tests/`` on the path) replaces
``np.einsum`` before NumPy's test module is collected, so that its tests, and the
functions they parametrize over, call fastconv's einsum.
"""
import numpy as np

import fastconv

np.einsum = fastconv.einsum
