"""numba kernels of linear quantization: float32 -> integer codes and back.

Twins: ``npquant.affine._quantize_numpy`` and ``npquant.affine._dequantize_numpy``;
:func:`fma32` is the twin of ``npquant.rounding.fma32`` and ``_round`` of
``npquant.rounding.round_values``. Mode and method codes: ``npquant._kernels.modes``.

Arrays are seen as 3-D ``(outer, n, inner)`` with the parameter axis in the middle and
parameters as ``(outer or 1, n_blocks, inner or 1)``; element ``[o, c, i]`` uses parameter
``[o or 0, c // block, i or 0]``. Every constant is float32 so that the JIT and plain
Python (``NUMBA_DISABLE_JIT=1``) compute in the same precision.
"""

import math

import numpy as np

from ._jit import njit
from .modes import DIVIDE, HALF_AWAY, HALF_EVEN, HALF_UP, MUL, MUL_ADD, STOCHASTIC

_TWO53 = 9007199254740992.0


@njit(cache=True, inline="always")
def fma32(a, b, c):
    """float32(a * b + c) with a single rounding (a fused multiply-add), for float32 ``a, b``
    and ``c`` a float32 or an integer exact in float64 (a zero point). The one kernel of
    this primitive: quantization and the optimizers (``_kernels.optim``) use it.

    ``a * b`` is exact in float64 (24 + 24 bits). The sum is rounded to odd in float64
    (TwoSum error, then a one-ulp nudge of an even result toward the error), which makes
    the final float64 -> float32 rounding correct: 53 >= 24 + 2 bits. A NaN sum is
    returned as is (no nudge).
    """
    p = np.float64(a) * np.float64(b)
    cc = np.float64(c)
    s = p + cc
    bb = s - p
    e = (p - (s - bb)) + (cc - bb)
    if e != 0.0 and not math.isnan(e):
        m, ex = math.frexp(s)
        if np.int64(m * _TWO53) & 1 == 0:
            s = s + math.copysign(math.ldexp(1.0, ex - 53), e)
    return np.float32(s)


@njit(cache=True, inline="always")
def _round(v, mode, u):
    """Round float32 ``v`` to an integral float32. ``u`` is uniform noise in [0, 1)."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    if mode == HALF_EVEN:
        return np.float32(np.rint(v))
    if mode == HALF_AWAY:
        t = np.float32(np.trunc(v))
        f = np.float32(v - t)  # exact: the fraction of a float is a float
        if f >= half:
            return np.float32(t + one)
        if f <= -half:
            return np.float32(t - one)
        return t
    fl = np.float32(np.floor(v))
    if mode == HALF_UP:
        if np.float32(v - fl) >= half:
            return np.float32(fl + one)
        return fl
    if mode == STOCHASTIC:
        if u < np.float32(v - fl):
            return np.float32(fl + one)
        return fl
    return fl  # FLOOR


@njit(cache=True, inline="always")
def _code(xv, s, z, qmin, qmax, mode, method, u):
    """One code: ``clamp(round(value), ...)`` for float32 ``xv``, ``s``, int32 ``z``."""
    one = np.float32(1.0)
    if method == DIVIDE or method == MUL:
        if method == DIVIDE:
            v = np.float32(xv / s)
        else:
            v = np.float32(xv * np.float32(one / s))
        r = _round(v, mode, u)
        lo = np.float32(np.int32(qmin) - z)
        hi = np.float32(np.int32(qmax) - z)
        zz = z
    else:
        rcp = np.float32(one / s)
        if method == MUL_ADD:
            t = np.float32(np.float32(xv * rcp) + np.float32(z))
        else:
            t = fma32(xv, rcp, z)
        r = _round(t, mode, u)
        lo = np.float32(qmin)
        hi = np.float32(qmax)
        zz = np.int32(0)
    if r < lo:
        r = lo
    elif r > hi:
        r = hi
    return np.int32(r) + zz


@njit(cache=True)
def _quantize_row(x, s, z, qmin, qmax, mode, method, noise, out):
    """One row with fixed parameters. The common cases get branch-free loops that LLVM
    vectorizes; they compute exactly what ``_code`` computes."""
    n = x.shape[0]
    if mode == HALF_EVEN and (method == DIVIDE or method == MUL or method == MUL_ADD):
        rcp = np.float32(np.float32(1.0) / s)
        if method == MUL_ADD:
            lo = np.float32(qmin)
            hi = np.float32(qmax)
            zf = np.float32(z)
            for i in range(n):
                r = np.float32(np.rint(np.float32(np.float32(x[i] * rcp) + zf)))
                out[i] = np.int32(min(max(r, lo), hi))
            return
        lo = np.float32(np.int32(qmin) - z)
        hi = np.float32(np.int32(qmax) - z)
        if method == DIVIDE:
            for i in range(n):
                r = np.float32(np.rint(np.float32(x[i] / s)))
                out[i] = np.int32(min(max(r, lo), hi)) + z
        else:
            for i in range(n):
                r = np.float32(np.rint(np.float32(x[i] * rcp)))
                out[i] = np.int32(min(max(r, lo), hi)) + z
        return
    zero = np.float32(0.0)
    for i in range(n):
        u = noise[i] if mode == STOCHASTIC else zero
        out[i] = _code(x[i], s, z, qmin, qmax, mode, method, u)


@njit(cache=True)
def quantize3(x3, scale3, zp3, block, qmin, qmax, mode, method, noise3, out3):
    """out3[o, c, i] = clamp(code, qmin, qmax); x, S float32, Z int32, all in float32.

    method DIVIDE: ``round(x / S) + Z``; MUL: ``round(x * R) + Z``; MUL_ADD:
    ``round(float32(x * R) + Z)``; FMA: ``round(fma(x, R, Z))``; ``R = float32(1 / S)``.
    ``noise3`` has x3's shape for stochastic rounding and is ignored otherwise.
    """
    n_outer, n, n_inner = x3.shape
    po = scale3.shape[0] > 1
    pi = scale3.shape[2] > 1
    zero = np.float32(0.0)
    for o in range(n_outer):
        oo = o if po else 0
        for c in range(n):
            g = c // block
            if not pi and n_inner > 1:  # a row of one parameter: the vectorizable loop
                noise = noise3[o, c] if mode == STOCHASTIC else noise3[0, 0]
                _quantize_row(
                    x3[o, c], scale3[oo, g, 0], np.int32(zp3[oo, g, 0]), qmin, qmax, mode, method, noise, out3[o, c]
                )
            else:
                for i in range(n_inner):  # one parameter a value (inner 1: the last axis)
                    ii = i if pi else 0
                    u = noise3[o, c, i] if mode == STOCHASTIC else zero
                    out3[o, c, i] = _code(
                        x3[o, c, i], scale3[oo, g, ii], np.int32(zp3[oo, g, ii]), qmin, qmax, mode, method, u
                    )


@njit(cache=True)
def dequantize3(q3, scale3, zp3, block, out3):
    """out3[o, c, i] = float32(q - Z) * S, in float32 (one rounding)."""
    n_outer, n, n_inner = q3.shape
    po = scale3.shape[0] > 1
    pi = scale3.shape[2] > 1
    for o in range(n_outer):
        oo = o if po else 0
        for c in range(n):
            g = c // block
            for i in range(n_inner):
                ii = i if pi else 0
                d = np.int32(q3[o, c, i]) - np.int32(zp3[oo, g, ii])
                out3[o, c, i] = np.float32(d) * scale3[oo, g, ii]
