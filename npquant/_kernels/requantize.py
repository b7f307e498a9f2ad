"""numba kernels of integer requantization (int32 accumulator -> output codes).

Twin: ``npquant.fixedpoint._requantize_numpy``. Integer steps are done in int64 with
explicit casts, so that the JIT and plain Python (``NUMBA_DISABLE_JIT=1``) agree.
"""

import numpy as np
from numba import njit

# mode codes, in the order of npquant.fixedpoint.REQUANT_MODES
TFLITE, TFLITE_SINGLE, FP32, ONNX = 0, 1, 2, 3

_I32_MIN = -2147483648
_I32_MAX = 2147483647


@njit(cache=True, inline="always")
def wrap_int32(v):
    """Two's-complement wrap of an int64 to the int32 range (C's int32 overflow)."""
    return ((np.int64(v) + np.int64(2147483648)) & np.int64(0xFFFFFFFF)) - np.int64(2147483648)


@njit(cache=True, inline="always")
def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul of two int32 values (as int64)."""
    a = np.int64(a)
    b = np.int64(b)
    if a == _I32_MIN and b == _I32_MIN:
        return np.int64(_I32_MAX)
    ab = a * b
    if ab >= 0:
        return (ab + np.int64(1 << 30)) >> np.int64(31)
    # C's division truncates toward zero
    n = ab + np.int64(1 - (1 << 30))
    return -((-n) >> np.int64(31))


@njit(cache=True, inline="always")
def rdbpot(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero (as int64)."""
    x = np.int64(x)
    e = np.int64(exponent)
    mask = (np.int64(1) << e) - np.int64(1)
    remainder = x & mask
    threshold = (mask >> np.int64(1)) + (np.int64(1) if x < 0 else np.int64(0))
    return (x >> e) + (np.int64(1) if remainder > threshold else np.int64(0))


@njit(cache=True, inline="always")
def mbqm_double(x, m0, shift):
    """TFLite MultiplyByQuantizedMultiplier, double rounding (as int64)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    xs = wrap_int32(np.int64(x) * (np.int64(1) << np.int64(left)))
    return rdbpot(srdhm(xs, m0), right)


@njit(cache=True, inline="always")
def mbqm_single(x, m0, shift):
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING (as int64)."""
    total = np.int64(31 - shift)
    rnd = np.int64(1) << (total - np.int64(1))
    return (np.int64(x) * np.int64(m0) + rnd) >> total


@njit(cache=True)
def requantize3(acc3, m0, shift, mult32, zp, qmin, qmax, mode, out3):
    """out3[o, c, i] = clamp(scaled(acc3[o, c, i]) + zp, qmin, qmax), parameters per ``c``
    (arrays of length 1 for per-tensor).

    TFLITE / TFLITE_SINGLE: fixed-point ``(m0, shift)``; FP32: ``rint(float32(acc) * M)``
    with float32 ``M``; ONNX: ``rint(float64(acc) * float64(M) + zp)``. The sum with the
    zero point is exact (int64), so only the clamp saturates.
    """
    n_outer, n, n_inner = acc3.shape
    per_channel = m0.shape[0] > 1
    zp64 = np.int64(zp)
    lo = np.int64(qmin)
    hi = np.int64(qmax)
    for o in range(n_outer):
        for c in range(n):
            k = c if per_channel else 0
            m = m0[k]
            s = shift[k]
            mf = mult32[k]
            for i in range(n_inner):
                a = acc3[o, c, i]
                if mode == TFLITE:
                    v = mbqm_double(a, m, s) + zp64
                elif mode == TFLITE_SINGLE:
                    v = mbqm_single(a, m, s) + zp64
                else:
                    if mode == FP32:
                        r = np.rint(np.float32(np.float32(a) * mf))
                        t = np.float64(r) + np.float64(zp64)
                    else:
                        t = np.rint(np.float64(a) * np.float64(mf) + np.float64(zp64))
                    if t < np.float64(lo):
                        t = np.float64(lo)
                    elif t > np.float64(hi):
                        t = np.float64(hi)
                    v = np.int64(t)
                if v < lo:
                    v = lo
                elif v > hi:
                    v = hi
                out3[o, c, i] = v
