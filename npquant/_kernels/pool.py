"""numba kernels of 2-D pooling on integer codes, NCHW.

Twins: ``npquant.qnn.pool._max_pool_numpy`` and ``_sum_pool_numpy``. Padding positions
are skipped (never read), so they cannot win a max; sums and counts cover valid
positions only. Accumulation is int64 with explicit casts.
"""

import numpy as np
from numba import prange

from ._jit import njit


@njit(cache=True, inline="always")
def _span(o, stride, pad, k, size):
    """The valid input positions ``[lo, hi)`` of output position ``o``'s window."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@njit(cache=True, parallel=True)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, out):
    """out[n, c, i, j] = max of the valid positions of the window (at least one exists)."""
    n_b, n_c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for b in prange(n_b):  # images in parallel
        for c in range(n_c):
            for i in range(oh):
                ya, yb = _span(i, sh, ph, kh, h)
                for j in range(ow):
                    xa, xb = _span(j, sw, pw, kw, w)
                    m = np.int64(x[b, c, ya, xa])
                    for y in range(ya, yb):
                        for xx in range(xa, xb):
                            v = np.int64(x[b, c, y, xx])
                            if v > m:
                                m = v
                    out[b, c, i, j] = m


@njit(cache=True, parallel=True)
def sum_pool2d(x, kh, kw, sh, sw, ph, pw, out_sum, out_count):
    """Sum (int64) and number of the valid positions of each window."""
    n_b, n_c, h, w = x.shape
    oh, ow = out_sum.shape[2], out_sum.shape[3]
    for b in prange(n_b):  # images in parallel
        for c in range(n_c):
            for i in range(oh):
                ya, yb = _span(i, sh, ph, kh, h)
                for j in range(ow):
                    xa, xb = _span(j, sw, pw, kw, w)
                    s = np.int64(0)
                    for y in range(ya, yb):
                        for xx in range(xa, xb):
                            s += np.int64(x[b, c, y, xx])
                    out_sum[b, c, i, j] = s
                    out_count[b, c, i, j] = np.int64((yb - ya) * (xb - xa))
