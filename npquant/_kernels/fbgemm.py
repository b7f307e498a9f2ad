"""numba kernel of PyTorch fbgemm's requantization (float32 multiplier, float bias).

Twin: the NumPy body of ``npquant.qnn.fbgemm.fbgemm_requantize`` (``backend="numpy"``);
the formula and its evidence are in that module's docstring.
"""

import numpy as np
from numba import prange

from ._jit import njit
from .quantize import fma32


@njit(cache=True, parallel=True)
def requantize_rows(acc, mult, bterm, rcp, use_fma, zy, lo, out):
    """uint8 ``out[i, j]`` of the int32 accumulator ``acc[i, j]`` (rows x channels).

    ``raw = fma(bterm[j], rcp, float32(acc))`` when ``use_fma`` (per-tensor weights with
    a bias), else ``float32(acc) + bterm[j]`` (``bterm = float32(bias / ats)``, or zeros);
    then ``rint(float32(raw * mult[j]))`` (half to even), INT32_MIN when that is outside
    int32 or not finite, plus ``zy``, clamped to ``[lo, 255]``. All float32 steps.
    """
    n_rows, n_ch = acc.shape
    for i in prange(n_rows):
        for j in range(n_ch):
            raw = np.float32(acc[i, j])
            if use_fma:
                raw = fma32(bterm[j], rcp, raw)
            else:
                raw = np.float32(raw + bterm[j])
            t = np.float32(np.rint(np.float32(raw * mult[j])))
            if t >= np.float32(-2147483648.0) and t < np.float32(2147483648.0):
                q = np.int64(t) + zy
            else:  # CVTPS2DQ's "integer indefinite", also for NaN
                q = np.int64(-2147483648) + zy
            out[i, j] = np.uint8(min(max(q, np.int64(lo)), np.int64(255)))
