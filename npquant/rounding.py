"""Rounding: every rule that turns a real or a quotient into an integer, defined once.

- :func:`round_values`: a float array to integral values with a named ``mode`` (one of
  ``ROUNDING_MODES``: ``half_even``, ``half_away``, ``half_up``, ``floor``,
  ``stochastic``); :func:`round_scalar` the same for one real, as a Python int.
- :func:`div_round_half_away`, :func:`div_round_half_even`: an exact integer quotient
  ``s / c`` rounded to nearest (the average pools of TFLite and PyTorch).
- :func:`fma32`: ``float32(a * b + c)`` with one rounding, IEEE 754's fused multiply-add
  in float32 (PyTorch's quantize and fbgemm's float bias on AVX2).

The integer roundings of fixed-point requantization (SRDHM, RDBPOT) are in
:mod:`npquant.requant.fixedpoint`. Each function here is NumPy; the numba kernels that
round (``npquant._kernels.quantize``: ``_round`` and ``fma32``) are tested against these
bit for bit (``tests/test_rounding.py``, ``tests/test_kernels_quantize.py``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ._checks import check_choice
from .qparams import ROUNDING_MODES


def round_values(v: npt.ArrayLike, mode: str, *, seed: int | None = None) -> np.ndarray:
    """Round a float array to integral values (same dtype) with a named ``mode``.

    ``half_even`` (banker's), ``half_away`` (ties away from zero), ``half_up`` (ties
    toward +inf), ``floor``, ``stochastic`` (up with probability equal to the fraction,
    noise from ``numpy.random.default_rng(seed)``; ``seed`` required). Exact: no
    ``floor(v + 0.5)`` shortcut, which is wrong just below a tie.

    Parameters
    ----------
    v : array_like of float
        Values to round; any floating dtype and shape (``TypeError`` for integers).
    mode : str
        One of ``ROUNDING_MODES``: ``"half_even"``, ``"half_away"``, ``"half_up"``,
        ``"floor"`` or ``"stochastic"``.
    seed : int or None, default None
        Seed of the noise of ``"stochastic"`` (keyword-only; required for that mode,
        ignored by the others).

    Returns
    -------
    numpy.ndarray
        The rounded values, of ``v``'s dtype and shape. No clamping.
    """
    check_choice(mode, "mode", ROUNDING_MODES)
    v = np.asarray(v)
    if v.dtype.kind != "f":
        raise TypeError(f"v must be a floating-point array, got dtype {v.dtype}")
    noise = None
    if mode == "stochastic":
        if seed is None:
            raise ValueError("mode='stochastic' needs seed=<int>")
        noise = _noise(v.shape, seed, v.dtype)
    with np.errstate(invalid="ignore"):  # inf - inf in the fraction of +-inf: harmless
        return _round_numpy(v, mode, noise)


def _round_numpy(v: np.ndarray, mode: str, noise) -> np.ndarray:
    """The rule of each mode (twin of ``_kernels.quantize._round``); ``noise`` is uniform
    in [0, 1), ``v``'s shape, for ``stochastic``."""
    one = v.dtype.type(1)
    half = v.dtype.type(0.5)
    if mode == "half_even":
        return np.rint(v)
    if mode == "half_away":
        t = np.trunc(v)
        f = v - t  # exact
        return t + np.where(f >= half, one, np.where(f <= -half, -one, v.dtype.type(0)))
    fl = np.floor(v)
    if mode == "half_up":
        return fl + np.where(v - fl >= half, one, v.dtype.type(0))
    if mode == "stochastic":
        return fl + np.where(noise < v - fl, one, v.dtype.type(0))
    return fl


def _noise(shape, seed: int, dtype=np.float32) -> np.ndarray:
    """Uniform [0, 1) noise of stochastic rounding, one draw per element in C order."""
    return np.random.default_rng(seed).random(shape, dtype=np.dtype(dtype).type)


def round_scalar(v: float, mode: str) -> int:
    """One real rounded to an integer with a named ``mode``, as a Python int (exact).

    The rule of :func:`round_values` for one value: a NumPy float32 is rounded as the
    float32 it is (widening it to a Python float is exact).

    Parameters
    ----------
    v : float
        A finite real (Python or NumPy float or int).
    mode : str
        ``"half_even"``, ``"half_away"``, ``"half_up"`` or ``"floor"`` (``"stochastic"``
        needs an array and a seed: :func:`round_values`).

    Returns
    -------
    int
        ``v`` rounded; not clamped.
    """
    check_choice(mode, "mode", ("half_even", "half_away", "half_up", "floor"))
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"v must be finite, got {v!r}")
    return int(_round_numpy(np.array(f), mode, None))


def div_round_half_away(s: npt.ArrayLike, c: npt.ArrayLike) -> np.ndarray:
    """``s / c`` rounded half away from zero, exactly, for int64 ``s`` and ``c > 0``
    (TFLite's ``(s +- c/2) / c`` with truncating division).

    Parameters
    ----------
    s : int or integer array
        The numerators, taken as int64.
    c : int or integer array
        The denominators, taken as int64, ``c > 0``; broadcast against ``s``.

    Returns
    -------
    numpy.ndarray
        int64, the broadcast shape.
    """
    s = np.asarray(s, np.int64)
    c = np.asarray(c, np.int64)
    return np.sign(s) * ((np.abs(s) + c // 2) // c)


def div_round_half_even(s: npt.ArrayLike, c: npt.ArrayLike) -> np.ndarray:
    """``s / c`` rounded half to even, exactly, for int64 ``s`` and ``c > 0``.

    Parameters
    ----------
    s : int or integer array
        The numerators, taken as int64.
    c : int or integer array
        The denominators, taken as int64, ``c > 0``; broadcast against ``s``.

    Returns
    -------
    numpy.ndarray
        int64, the broadcast shape.
    """
    s = np.asarray(s, np.int64)
    c = np.asarray(c, np.int64)
    fl, r = np.divmod(s, c)
    up = (2 * r > c) | ((2 * r == c) & (fl % 2 == 1))
    return fl + up


def fma32(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (IEEE 754 fused multiply-add), broadcast.

    ``a * b`` of two float32 is exact in float64; the float64 sum is made round-to-odd
    (TwoSum error term, then a one-ulp nudge of an even result toward it), so that the
    final rounding to float32 is the correct rounding of the exact ``a * b + c``. Twin
    of the kernel ``npquant._kernels.quantize.fma32``.

    Parameters
    ----------
    a, b : array_like of float
        Converted to float32 (values that already are float32 are unchanged).
    c : array_like of float or int
        Taken as float64, exactly for float32 values and integers up to ``2^53``;
        broadcast against ``a`` and ``b``.

    Returns
    -------
    numpy.ndarray
        float32, the broadcast shape: ``a * b + c`` rounded to nearest, ties to even, with
        IEEE 754's signed zeros.
    """
    a64 = np.asarray(a, np.float32).astype(np.float64)
    b64 = np.asarray(b, np.float32).astype(np.float64)
    c64 = np.asarray(c).astype(np.float64)
    p = a64 * b64
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)
    m, ex = np.frexp(s)
    even = (m * 2.0**53).astype(np.int64) & 1 == 0
    nudge = np.copysign(np.ldexp(1.0, ex - 53), e)
    return np.where((e != 0) & even, s + nudge, s).astype(np.float32)
