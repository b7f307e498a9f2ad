"""numba kernels of the integer matrix product (int8/uint8 codes, int32 accumulators).

Twins: ``npquant.qnn.gemm._gemm_direct_numpy`` and ``_gemm_folded_numpy``.

Accumulation is int32 two's complement: every partial sum is formed in int64 and cast
back with ``np.int32(...)``, which truncates (wraps) identically under the JIT and in
plain Python. The wrappers check that the final sums fit int32 (or ask for wrapping).
"""

import numpy as np
from numba import njit


@njit(cache=True)
def gemm_direct(x, zx, w, zw, bias, out):
    """out[i, o] = bias[o] + sum_j (x[i, j] - zx) * (w[o, j] - zw[o]), int32.

    ``x`` (N, K) and ``w`` (O, K) integer codes, C-contiguous; ``zx`` int32;
    ``zw`` and ``bias`` int32 of length O; ``out`` int32 (N, O).
    """
    n_rows, k = x.shape
    n_out = w.shape[0]
    zx64 = np.int64(zx)
    for i in range(n_rows):
        for o in range(n_out):
            zwo = np.int64(zw[o])
            acc = np.int32(bias[o])
            for j in range(k):
                a = np.int64(x[i, j]) - zx64
                b = np.int64(w[o, j]) - zwo
                acc = np.int32(np.int64(acc) + a * b)
            out[i, o] = acc


@njit(cache=True)
def gemm_folded(x, w, zw, bias_folded, out):
    """out[i, o] = bias_folded[o] - zw[o] * sum_j x[i, j] + sum_j x[i, j] * w[o, j], int32.

    The zero-point-folded product of Jacob et al. (2018), eq. 7: ``bias_folded`` holds
    ``bias + K * zx * zw - zx * sum_j w[o, j]`` (precomputed once per layer); the input
    row sums are formed here. Raw code products may wrap int32 on the way; modular
    arithmetic makes the result exact whenever the true sum fits int32.
    """
    n_rows, k = x.shape
    n_out = w.shape[0]
    for i in range(n_rows):
        xsum = np.int32(0)
        for j in range(k):
            xsum = np.int32(np.int64(xsum) + np.int64(x[i, j]))
        for o in range(n_out):
            acc = np.int32(np.int64(bias_folded[o]) - np.int64(zw[o]) * np.int64(xsum))
            for j in range(k):
                acc = np.int32(np.int64(acc) + np.int64(x[i, j]) * np.int64(w[o, j]))
            out[i, o] = acc
