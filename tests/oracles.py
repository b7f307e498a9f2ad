"""Slow, obviously-correct versions that the kernels are checked against.

Scalars only, exact rational arithmetic (``fractions.Fraction``) wherever rounding is
decided, float32 results produced by an explicit nearest-float32 search.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def to_float32(v: Fraction) -> np.float32:
    """The float32 nearest to the exact rational ``v`` (ties to even mantissa)."""
    guess = np.float32(float(v))
    cands = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - v), _odd_mantissa(c)))
    return np.float32(best)


def _odd_mantissa(c: np.float32) -> int:
    return int(np.array(c, np.float32).view(np.uint32)) & 1


def fma32(a, b, c) -> np.float32:
    """``float32(a * b + c)`` rounded once from the exact value, with IEEE 754's signed zeros:
    a non-zero exact value that rounds to zero keeps its sign; an exact zero sum is -0 only
    when both addends (the product ``a * b`` and ``c``) are -0."""
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact != 0:
        r = to_float32(exact)
        return np.float32(-0.0) if r == 0 and exact < 0 else (np.float32(0.0) if r == 0 else r)
    product_neg_zero = (a == 0 or b == 0) and np.signbit(a) != np.signbit(b)
    return np.float32(-0.0) if product_neg_zero and c == 0 and np.signbit(c) else np.float32(0.0)


def round_exact(v: Fraction, mode: str, u: Fraction | None = None) -> int:
    """Round a rational to an integer; ``u`` is the stochastic noise in [0, 1)."""
    fl = math.floor(v)
    frac = v - fl
    half = Fraction(1, 2)
    if mode == "floor":
        return fl
    if mode == "half_up":
        return fl + (frac >= half)
    if mode == "half_even":
        if frac != half:
            return fl + (frac > half)
        return fl + (fl % 2)
    if mode == "half_away":
        if v >= 0:
            return fl + (frac >= half)
        c = math.ceil(v)
        return c - ((c - v) >= half)
    if mode == "stochastic":
        return fl + (u < frac)
    raise ValueError(mode)


def quantize_scalar(x, scale, zp, qmin, qmax, mode="half_even", method="divide", u=None) -> int:
    """One code, from the definitions (float32 arithmetic made explicit)."""
    x = Fraction(float(np.float32(x)))
    s = Fraction(float(np.float32(scale)))
    if method in ("divide", "mul"):
        if method == "divide":
            v = Fraction(float(to_float32(x / s)))
        else:
            v = Fraction(float(to_float32(x * Fraction(float(to_float32(1 / s))))))
        q = round_exact(v, mode, u) + zp
    else:
        r = Fraction(float(to_float32(1 / s)))
        if method == "mul_add":
            t = to_float32(Fraction(float(to_float32(x * r))) + zp)
        elif method == "fma":
            t = to_float32(x * r + zp)
        else:
            raise ValueError(method)
        q = round_exact(Fraction(float(t)), mode, u)
    return min(max(q, qmin), qmax)


def dequantize_scalar(q, scale, zp) -> np.float32:
    return to_float32((int(q) - int(zp)) * Fraction(float(np.float32(scale))))


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def qparams_scalar(lo, hi, qmin, qmax, symmetric, signed, eps=FLOAT32_EPS):
    """PyTorch's ``_calculate_qparams`` for one range, float32 step by step."""
    f = np.float32
    lo, hi = min(f(lo), f(0)), max(f(hi), f(0))
    if symmetric:
        amax = max(-lo, hi)
        scale = max(f(amax / f((qmax - qmin) / 2)), f(eps))
        zp = 0 if signed else (qmin + qmax + 1) // 2
    else:
        scale = max(f(f(hi - lo) / f(qmax - qmin)), f(eps))
        zp = qmin - int(np.rint(f(lo / scale)))
        zp = min(max(zp, qmin), qmax)
    return np.float32(scale), zp
