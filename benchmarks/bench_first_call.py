"""Import + first call of each operation in a fresh process, kernels loaded from
the on-disk cache (the cost a script pays on every start)."""
import subprocess
import sys

from .common import TIMER

PRELUDE = "import numpy as np, fastconv as fc; f4 = np.float32; "
CALLS = {
    "batch_outer_hadamard": "fc.batch_outer_hadamard(np.ones((2, 3, 4)), np.ones((3, 3, 4)))",
    "conv2d": "fc.conv2d(np.ones((2, 8, 9, 9), f4), np.ones((8, 8, 3, 3), f4), padding=1)",
    "conv2d_backward": ("x, w, g = np.ones((2, 8, 9, 9), f4), np.ones((8, 8, 3, 3), f4), "
                        "np.ones((2, 8, 9, 9), f4); fc.conv2d_grad_input(g, w, x.shape, padding=1); "
                        "fc.conv2d_grad_weight(x, g, w.shape, padding=1)"),
    "softmax": "x = np.ones((3, 4), f4); fc.softmax_backward(fc.softmax(x), x)",
}


class FirstCall:
    params = [list(CALLS)]
    param_names = ["operation"]
    timeout = 300

    def setup(self, operation):
        try:
            self._run(operation)  # fill the cache
        except subprocess.CalledProcessError:
            raise NotImplementedError(f"{operation} is not available at this commit") from None

    def _run(self, operation):
        subprocess.run([sys.executable, "-c", PRELUDE + CALLS[operation]], check=True,
                       capture_output=True)

    def track_import_and_first_call(self, operation):
        start = TIMER()
        self._run(operation)
        return TIMER() - start

    track_import_and_first_call.unit = "seconds"
