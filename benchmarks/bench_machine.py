"""This machine's own limits, beside which fastconv's rates are read: the GEMM
rate of the BLAS numpy loads (the peak a convolution's multiply-adds can reach
without fewer multiplications) and the write bandwidth of a large fill."""
import numpy as np

from .common import median_time


class Gemm:
    params = [["float32", "float64"]]
    param_names = ["dtype"]

    def setup(self, dtype):
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.random((2048, 2048)).astype(dtype) for _ in range(2))
        self.c = np.empty_like(self.a)
        np.matmul(self.a, self.b, out=self.c)

    def track_gflops(self, dtype):
        """GFLOP/s of a 2048^3 matmul (median)."""
        return 2 * 2048 ** 3 / median_time(lambda: np.matmul(self.a, self.b, out=self.c)) / 1e9

    track_gflops.unit = "GFLOP/s"


class WriteBandwidth:
    def setup(self):
        self.out = np.empty(1 << 27, np.float32)  # 512 MB, far beyond the caches
        self.out.fill(1.0)

    def track_fill_gbs(self):
        """GB/s of ``fill`` into 512 MB (median)."""
        return self.out.nbytes / median_time(lambda: self.out.fill(2.0)) / 1e9

    track_fill_gbs.unit = "GB/s"
