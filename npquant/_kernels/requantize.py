"""numba kernels of integer requantization (int32 accumulator -> output codes).

Twin: ``npquant.requant.modes._requantize_numpy``; the scalar reference of ``srdhm``,
``rdbpot`` and ``mbqm_*``: ``npquant.requant.fixedpoint.*_scalar``. Integer steps are done in int64 with
explicit casts, so that the JIT and plain Python (``NUMBA_DISABLE_JIT=1``) agree.

Speed: the per-value functions (``_one_*``) are branch-free (selects, min/max), and each
mode has its own loop, so LLVM vectorizes the loop. A row that shares one channel's
parameters (``acc3[o, c, :]``) passes them as scalars, and LLVM hoists everything computed
from them out of the loop. Short rows (a linear layer's ``(batch, out)`` output has
``n_inner == 1``) run instead over ``acc3[o]`` flattened, with the parameters repeated to
one per value, so the loop is long and still contiguous.
"""

import numpy as np

from ._jit import njit
from .modes import FP32, TFLITE, TFLITE_SINGLE, TFLITE_SINGLE_AWAY

_I32_MIN = int(np.iinfo(np.int32).min)
_I32_MAX = int(np.iinfo(np.int32).max)
_SHORT_ROW = 16  # rows shorter than this take the flattened path


@njit(cache=True, inline="always")
def wrap_int32(v):
    """Two's-complement wrap of an int64 to the int32 range (C's int32 overflow)."""
    return ((np.int64(v) + np.int64(2147483648)) & np.int64(0xFFFFFFFF)) - np.int64(2147483648)


@njit(cache=True, inline="always")
def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul of two int32 values (as int64).

    gemmlowp nudges by ``2^30`` (``ab >= 0``) or ``1 - 2^30`` and truncates toward zero;
    for ``ab < 0`` that truncation is ``ceil((ab + 1 - 2^30) / 2^31)``, which equals
    ``floor((ab + 2^30) / 2^31)``: so both signs are one arithmetic shift (ties toward +inf).
    """
    a = np.int64(a)
    b = np.int64(b)
    r = (a * b + np.int64(1 << 30)) >> np.int64(31)
    sat = (a == np.int64(_I32_MIN)) & (b == np.int64(_I32_MIN))
    return np.int64(_I32_MAX) if sat else r


@njit(cache=True, inline="always")
def rdbpot(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero (as int64)."""
    x = np.int64(x)
    e = np.int64(exponent)
    mask = (np.int64(1) << e) - np.int64(1)
    remainder = x & mask
    threshold = (mask >> np.int64(1)) - (x >> np.int64(63))  # + 1 for negative x
    return (x >> e) + np.int64(remainder > threshold)


@njit(cache=True, inline="always")
def mbqm_double(x, m0, shift):
    """TFLite MultiplyByQuantizedMultiplier, double rounding (as int64)."""
    s = np.int64(shift)
    left = max(s, np.int64(0))
    right = max(-s, np.int64(0))
    xs = wrap_int32(np.int64(x) << left)
    return rdbpot(srdhm(xs, m0), right)


@njit(cache=True, inline="always")
def mbqm_single(x, m0, shift):
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING (as int64)."""
    total = np.int64(31) - np.int64(shift)
    rnd = np.int64(1) << (total - np.int64(1))
    return (np.int64(x) * np.int64(m0) + rnd) >> total


@njit(cache=True, inline="always")
def mbqm_single_away(x, m0, shift):
    """``x * m0 / 2^(31 - shift)`` rounded once, ties away from zero (as int64); needs
    ``m0 >= 0``: the magnitude is rounded as in mbqm_single, then the sign restored."""
    total = np.int64(31) - np.int64(shift)
    rnd = np.int64(1) << (total - np.int64(1))
    p = np.int64(x) * np.int64(m0)
    sgn = p >> np.int64(63)  # 0 or -1
    r = (((p ^ sgn) - sgn) + rnd) >> total
    return (r ^ sgn) - sgn


# ---- one value of each mode: int32 acc -> clamped int64 code ------------------------------


@njit(cache=True, inline="always")
def _one_tflite(a, m0, shift, mf, zp, lo, hi):
    return min(max(mbqm_double(a, m0, shift) + zp, lo), hi)


@njit(cache=True, inline="always")
def _one_tflite_single(a, m0, shift, mf, zp, lo, hi):
    return min(max(mbqm_single(a, m0, shift) + zp, lo), hi)


@njit(cache=True, inline="always")
def _one_tflite_single_away(a, m0, shift, mf, zp, lo, hi):
    return min(max(mbqm_single_away(a, m0, shift) + zp, lo), hi)


@njit(cache=True, inline="always")
def _clamp_float(t, lo, hi):
    """Clamp an integer-valued float64 to ``[lo, hi]`` (int64) and convert it exactly."""
    t = np.float64(lo) if t < np.float64(lo) else t
    t = np.float64(hi) if t > np.float64(hi) else t
    return np.int64(t)


@njit(cache=True, inline="always")
def _one_fp32(a, m0, shift, mf, zp, lo, hi):
    r = np.rint(np.float32(np.float32(a) * np.float32(mf)))
    return _clamp_float(np.float64(r) + np.float64(zp), lo, hi)


@njit(cache=True, inline="always")
def _one_onnx(a, m0, shift, mf, zp, lo, hi):
    t = np.rint(np.float64(a) * np.float64(mf) + np.float64(zp))
    return _clamp_float(t, lo, hi)


# ---- loops: one per mode, so that the loop body has no mode branch ------------------------


@njit(cache=True)
def _row(mode, acc, m0, shift, mf, zp, lo, hi, out):
    """``out[i] = code of acc[i]`` with one channel's parameters (scalars)."""
    n = acc.shape[0]
    if mode == TFLITE:
        for i in range(n):
            out[i] = _one_tflite(acc[i], m0, shift, mf, zp, lo, hi)
    elif mode == TFLITE_SINGLE:
        for i in range(n):
            out[i] = _one_tflite_single(acc[i], m0, shift, mf, zp, lo, hi)
    elif mode == FP32:
        for i in range(n):
            out[i] = _one_fp32(acc[i], m0, shift, mf, zp, lo, hi)
    elif mode == TFLITE_SINGLE_AWAY:
        for i in range(n):
            out[i] = _one_tflite_single_away(acc[i], m0, shift, mf, zp, lo, hi)
    else:
        for i in range(n):
            out[i] = _one_onnx(acc[i], m0, shift, mf, zp, lo, hi)


@njit(cache=True)
def _row_each(mode, acc, m0, shift, mf, zp, lo, hi, out):
    """``out[i] = code of acc[i]`` with parameters ``m0[i], shift[i], mf[i]``."""
    n = acc.shape[0]
    if mode == TFLITE:
        for i in range(n):
            out[i] = _one_tflite(acc[i], m0[i], shift[i], mf[i], zp, lo, hi)
    elif mode == TFLITE_SINGLE:
        for i in range(n):
            out[i] = _one_tflite_single(acc[i], m0[i], shift[i], mf[i], zp, lo, hi)
    elif mode == FP32:
        for i in range(n):
            out[i] = _one_fp32(acc[i], m0[i], shift[i], mf[i], zp, lo, hi)
    elif mode == TFLITE_SINGLE_AWAY:
        for i in range(n):
            out[i] = _one_tflite_single_away(acc[i], m0[i], shift[i], mf[i], zp, lo, hi)
    else:
        for i in range(n):
            out[i] = _one_onnx(acc[i], m0[i], shift[i], mf[i], zp, lo, hi)


@njit(cache=True)
def requantize3(acc3, m0, shift, mult32, zp, qmin, qmax, mode, out3):
    """out3[o, c, i] = clamp(scaled(acc3[o, c, i]) + zp, qmin, qmax), parameters per ``c``
    (arrays of length 1 for per-tensor).

    ``acc3`` int32 and ``out3`` (any integer dtype holding ``[qmin, qmax]``) C-contiguous
    of one shape; ``m0``, ``shift`` int32, ``mult32`` float32. TFLITE / TFLITE_SINGLE /
    TFLITE_SINGLE_AWAY: fixed-point ``(m0, shift)``; FP32: ``rint(float32(acc) * M)`` with float32 ``M``; ONNX:
    ``rint(float64(acc) * float64(M) + zp)``; ``rint`` ties to even. The sum with the zero
    point is exact (int64 or float64), so only the clamp saturates.
    """
    n_outer, n, n_inner = acc3.shape
    zp64 = np.int64(zp)
    lo = np.int64(qmin)
    hi = np.int64(qmax)
    per_channel = m0.shape[0] > 1
    if per_channel and n_inner < _SHORT_ROW:
        m = n * n_inner
        m0_e = np.empty(m, np.int32)
        shift_e = np.empty(m, np.int32)
        mf_e = np.empty(m, np.float32)
        for c in range(n):
            for i in range(n_inner):
                m0_e[c * n_inner + i] = m0[c]
                shift_e[c * n_inner + i] = shift[c]
                mf_e[c * n_inner + i] = mult32[c]
        acc2 = acc3.reshape(n_outer, m)
        out2 = out3.reshape(n_outer, m)
        for o in range(n_outer):
            _row_each(mode, acc2[o], m0_e, shift_e, mf_e, zp64, lo, hi, out2[o])
        return
    for o in range(n_outer):
        for c in range(n):
            k = c if per_channel else 0
            _row(mode, acc3[o, c], m0[k], shift[k], mult32[k], zp64, lo, hi, out3[o, c])
