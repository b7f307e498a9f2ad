"""Fixed-point primitives of integer requantization, each defined once.

A real multiplier ``M`` is held as an int32 mantissa and a power of two,
``M = m0 * 2^(shift - 31)`` (:func:`quantize_multiplier`, TFLite's ``QuantizeMultiplier``),
and ``round(acc * M)`` is computed from them with integer operations only:

- ``srdhm``: gemmlowp's SaturatingRoundingDoublingHighMul, ``round(a * b / 2^31)``, ties
  toward +inf;
- ``rdbpot``: gemmlowp's RoundingDivideByPOT, ``round(x / 2^e)``, ties away from zero;
- ``mbqm``: TFLite's MultiplyByQuantizedMultiplier, ``rdbpot(srdhm(x << left, m0),
  right)`` (two roundings) or, with ``TFLITE_SINGLE_ROUNDING``, one rounding of
  ``x * m0 / 2^(31 - shift)``.

Each primitive is written twice, as gemmlowp's ``fixedpoint.h`` keeps one readable
function per primitive:

- the **scalar reference** (``*_scalar``): Python ints, one value, line by line the C
  code it reproduces; the definition the others are tested against, and what
  :mod:`npquant.explain` prints;
- the **NumPy twin** (the names without ``_scalar``): the same arithmetic vectorized in
  int64, any shape, broadcast.

The numba kernels ``npquant._kernels.requantize`` (``srdhm``, ``rdbpot``, ``mbqm_*``) are a
third form, tested against the scalar reference bit for bit (``tests/test_fixedpoint.py``,
JIT on and off). The named modes of each stack (``tflite``, ``fp32``, ``onnx``, ...) that are
built on these primitives are in :mod:`npquant.requant.modes`; their old names here
(``REQUANT_MODES``, ``requantize``, ...; ``npquant.fixedpoint.requantize`` before the
package was grouped by stage) work for one release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array
from ..rounding import round_scalar, round_values

#: The roundings of :func:`multiply_by_quantized_multiplier` (and of :func:`quantize_multiplier`).
MBQM_ROUNDINGS = ("double", "single", "single_away")
INT32_MIN = int(np.iinfo(np.int32).min)
INT32_MAX = int(np.iinfo(np.int32).max)

# names defined in npquant.requant.modes, re-exported here (module __getattr__ below)
_MODES_NAMES = (
    "REQUANT_MODES",
    "EXTRA_REQUANT_MODES",
    "RequantParams",
    "effective_multiplier",
    "requant_params",
    "requantize",
    "requantize_ties",
)


# ---- scalar reference: Python ints ----------------------------------------------------------


def quantize_multiplier_scalar(real: float, rounding: str = "double") -> tuple[int, int]:
    """Scalar reference of :func:`quantize_multiplier`: ``real = m0 * 2^(shift - 31)``.

    TFLite's ``QuantizeMultiplier``: ``q, shift = frexp(real)`` (``0.5 <= |q| < 1``);
    ``m0 = round_half_away(q * 2^31)``; ``m0 == 2^31`` becomes ``(2^30, shift + 1)``; a
    ``shift`` below ``-31`` flushes to ``(0, 0)``. ``rounding="single"``
    (``TFLITE_SINGLE_ROUNDING``) saturates ``shift > 30`` to ``(2^31 - 1, 30)``.

    Parameters
    ----------
    real : float
        The real multiplier, finite (taken as a Python float, an IEEE double).
    rounding : {"double", "single", "single_away"}, default ``"double"``
        ``"single"`` needs ``real >= 0``.

    Returns
    -------
    m0 : int
        In ``[2^30, 2^31)`` for positive ``real`` (negated for negative), 0 for 0 and
        flushed multipliers.
    shift : int
        The power of two, at most 62 (``ValueError`` beyond).
    """
    check_choice(rounding, "rounding", MBQM_ROUNDINGS)
    r = float(real)
    if not math.isfinite(r):
        raise ValueError(f"real must be finite, got {real!r}")
    if rounding == "single" and r < 0:
        raise ValueError("real must be >= 0 for rounding='single' (TFLite's single rounding)")
    if r == 0:
        return 0, 0
    q, shift = math.frexp(r)
    m0 = round_scalar(q * 2.0**31, "half_away")  # exact: q has 53 bits, the product is a scaling
    if m0 == 1 << 31:
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if rounding == "single" and shift > 30:
        return INT32_MAX, 30
    if shift > 62:
        raise ValueError("real is too large for a 32-bit fixed-point multiplier")
    return m0, shift


def saturating_rounding_doubling_high_mul_scalar(a: int, b: int) -> int:
    """Scalar reference of gemmlowp's SaturatingRoundingDoublingHighMul (SRDHM).

    ``round(a * b / 2^31)``, ties toward +inf; the one product that does not fit,
    ``INT32_MIN * INT32_MIN``, saturates to ``INT32_MAX``.

    Parameters
    ----------
    a, b : int
        int32 values (``ValueError`` outside the int32 range).

    Returns
    -------
    int
        In the int32 range.
    """
    a = check_int(a, "a", lo=INT32_MIN, hi=INT32_MAX)
    b = check_int(b, "b", lo=INT32_MIN, hi=INT32_MAX)
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    # C's int64 division by 2^31 truncates toward zero
    n = ab + nudge
    return n >> 31 if n >= 0 else -((-n) >> 31)


def rounding_divide_by_pot_scalar(x: int, exponent: int) -> int:
    """Scalar reference of gemmlowp's RoundingDivideByPOT (RDBPOT).

    ``round(x / 2^exponent)``, ties away from zero: the remainder of the arithmetic shift
    is compared with half the divisor (one more for negative ``x``).

    Parameters
    ----------
    x : int
        An int32 value (``ValueError`` outside the int32 range).
    exponent : int
        In ``[0, 31]``.

    Returns
    -------
    int
        In the int32 range.
    """
    x = check_int(x, "x", lo=INT32_MIN, hi=INT32_MAX)
    exponent = check_int(exponent, "exponent", lo=0, hi=31)
    mask = (1 << exponent) - 1
    remainder = x & mask  # Python's & and >> on negative ints are two's complement's
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def wrap_int32(v: int) -> int:
    """``v`` wrapped to the int32 range as C's int32 arithmetic wraps it (two's complement).

    Parameters
    ----------
    v : int
        Any integer.

    Returns
    -------
    int
        ``v`` modulo ``2^32``, in ``[-2^31, 2^31)``.
    """
    return ((int(v) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def multiply_by_quantized_multiplier_scalar(x: int, m0: int, shift: int, rounding: str = "double") -> int:
    """Scalar reference of TFLite's ``MultiplyByQuantizedMultiplier``: about ``x * m0 * 2^(shift - 31)``.

    - ``"double"``: ``rdbpot(srdhm(wrap32(x << left), m0), right)`` with
      ``left = max(shift, 0)``, ``right = max(-shift, 0)``: two roundings;
    - ``"single"``: ``(x * m0 + 2^(30 - shift)) >> (31 - shift)``: one rounding, ties
      toward +inf;
    - ``"single_away"``: the same rounding of ``|x * m0|``, the sign restored: ties away
      from zero.

    Parameters
    ----------
    x : int
        An int32 value.
    m0 : int
        The int32 mantissa of :func:`quantize_multiplier_scalar`; ``m0 >= 0`` for the single
        roundings.
    shift : int
        The power of two, in ``[-31, 30]``.
    rounding : {"double", "single", "single_away"}, default ``"double"``
        As above.

    Returns
    -------
    int
        Not saturated (a single rounding can leave the int32 range).
    """
    check_choice(rounding, "rounding", MBQM_ROUNDINGS)
    x = check_int(x, "x", lo=INT32_MIN, hi=INT32_MAX)
    m0 = check_int(m0, "m0", lo=INT32_MIN, hi=INT32_MAX)
    shift = check_int(shift, "shift", lo=-31, hi=30)
    if rounding == "double":
        left, right = max(shift, 0), max(-shift, 0)
        return rounding_divide_by_pot_scalar(
            saturating_rounding_doubling_high_mul_scalar(wrap_int32(x << left), m0), right
        )
    if m0 < 0:
        raise ValueError(f"rounding={rounding!r} needs m0 >= 0")
    total = 31 - shift
    half = 1 << (total - 1)
    if rounding == "single":
        return (x * m0 + half) >> total
    p = x * m0
    magnitude = (abs(p) + half) >> total
    return magnitude if p >= 0 else -magnitude


# ---- NumPy twins: vectorized, int64 -----------------------------------------------------------


def _int_array(v, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    arr = check_int_array(v, name, what="integers")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def quantize_multiplier(real: npt.ArrayLike, rounding: str = "double") -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: ``real = m0 * 2^(shift - 31)``.

    ``frexp`` of the double gives ``q`` in ``[0.5, 1)``; ``m0 = round_half_away(q * 2^31)``
    lies in ``[2^30, 2^31)`` (renormalised when it reaches ``2^31``); ``shift`` is a
    left shift when positive. Multipliers below ``2^-32`` once rounded to ``m0``'s bits
    (a ``shift`` below ``-31``) flush to ``(0, 0)``, as TFLite's do;
    multipliers >= 1 are fine. Vectorized twin of :func:`quantize_multiplier_scalar`.

    Parameters
    ----------
    real : float or float array
        The real multipliers, any shape, finite (taken as float64). ``ValueError`` when
        one is too large for a 32-bit fixed-point multiplier.
    rounding : {"double", "single", "single_away"}, default ``"double"``
        One of ``MBQM_ROUNDINGS``. ``"single"`` also saturates ``shift > 30`` to
        ``(2^31 - 1, 30)``, as TFLite does under ``TFLITE_SINGLE_ROUNDING``, which does
        not accept negative multipliers (a ``ValueError`` here); the other two compute
        the same constants.

    Returns
    -------
    m0 : numpy.ndarray
        int32, ``real``'s shape: the rounded mantissa (0 for ``real == 0`` and flushed
        multipliers).
    shift : numpy.ndarray
        int32, ``real``'s shape: the power of two, ``real = m0 * 2^(shift - 31)``.
    """
    check_choice(rounding, "rounding", MBQM_ROUNDINGS)
    r = np.asarray(real)
    if r.dtype.kind not in "fiu":
        raise TypeError(f"real must be real numbers, got dtype {r.dtype}")
    r = r.astype(np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("real must be finite")
    if rounding == "single" and np.any(r < 0):
        raise ValueError("real must be >= 0 for rounding='single' (TFLite's single rounding)")
    q, shift = np.frexp(r)
    # exact: q has 53 bits, the product is a scaling
    m0 = round_values(q * 2.0**31, "half_away").astype(np.int64)
    top = m0 == (1 << 31)
    m0 = np.where(top, m0 // 2, m0)
    shift = np.where(top, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    m0 = np.where(tiny, 0, m0)
    shift = np.where(tiny | (r == 0), 0, shift)
    if rounding == "single":
        big = shift > 30
        m0 = np.where(big, INT32_MAX, m0)
        shift = np.where(big, 30, shift)
    if np.any(m0 > INT32_MAX) or np.any(shift > 62):
        raise ValueError("real is too large for a 32-bit fixed-point multiplier")
    return m0.astype(np.int32), shift.astype(np.int32)


def saturating_rounding_doubling_high_mul(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul: ``round(a * b / 2^31)``, int32.

    Vectorized twin of :func:`saturating_rounding_doubling_high_mul_scalar`.

    Parameters
    ----------
    a, b : int or integer array
        int32 values (``ValueError`` outside the int32 range), broadcast against each
        other.

    Returns
    -------
    numpy.ndarray
        int32, the broadcast shape: ``a * b / 2^31`` rounded half toward +infinity;
        ``INT32_MIN * INT32_MIN`` saturates to ``INT32_MAX`` (the one product that does
        not fit).
    """
    a = _int_array(a, "a")
    b = _int_array(b, "b")
    return _srdhm_numpy(a, b).astype(np.int32)


def _srdhm_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    # C's int64 division by 2^31 truncates toward zero
    res = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, res)


def rounding_divide_by_pot(x: npt.ArrayLike, exponent: npt.ArrayLike) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2^exponent``, ties away from zero, int32.

    Vectorized twin of :func:`rounding_divide_by_pot_scalar`.

    Parameters
    ----------
    x : int or integer array
        int32 values (``ValueError`` outside the int32 range).
    exponent : int or integer array
        The power of two, in ``[0, 31]``, broadcast against ``x``.

    Returns
    -------
    numpy.ndarray
        int32, the broadcast shape (a NumPy scalar for scalar inputs): ``x / 2^exponent``
        rounded half away from zero.
    """
    x = _int_array(x, "x")
    e = _int_array(exponent, "exponent", 0, 31)
    return _rdbpot_numpy(x, e).astype(np.int32)


def _rdbpot_numpy(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def multiply_by_quantized_multiplier(
    x: npt.ArrayLike, m0: npt.ArrayLike, shift: npt.ArrayLike, rounding: str = "double"
) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, m0, shift)``: about ``x * m0 * 2^(shift-31)``.

    Vectorized twin of :func:`multiply_by_quantized_multiplier_scalar`.

    Parameters
    ----------
    x : int or integer array
        int32 values (``ValueError`` outside the int32 range).
    m0 : int or integer array
        The int32 mantissa of :func:`quantize_multiplier`; ``m0 >= 0`` for the single
        roundings.
    shift : int or integer array
        The power of two of :func:`quantize_multiplier`, in ``[-31, 30]`` (TFLite's
        range; a larger left shift overflows int32 for every ``x`` but 0). ``x``, ``m0``
        and ``shift`` broadcast against each other.
    rounding : {"double", "single", "single_away"}, default ``"double"``
        ``"double"`` (TFLite's default): ``rdbpot(srdhm(x << left, m0), right)`` where
        ``left = max(shift, 0)``, ``right = max(-shift, 0)``; ``x << left`` wraps like
        C's int32 arithmetic. ``"single"``: ``(x * m0 + 2^(30-shift)) >> (31-shift)`` in
        int64, ties toward +inf. ``"single_away"``: the same single rounding of
        ``|x * m0|``, sign restored (ties away from zero; LiteRT's reference
        FULLY_CONNECTED).

    Returns
    -------
    numpy.ndarray
        int64, the broadcast shape (a NumPy scalar for scalar inputs); not saturated (the
        single-rounding result can leave the int32 range, which TFLite treats as a
        contract violation).
    """
    check_choice(rounding, "rounding", MBQM_ROUNDINGS)
    x = _int_array(x, "x")
    m0 = _int_array(m0, "m0")
    shift = _int_array(shift, "shift", -31, 30)
    if rounding == "double":
        left = np.maximum(shift, 0)
        right = np.maximum(-shift, 0)
        return _rdbpot_numpy(_srdhm_numpy(_wrap32(x << left), m0), right)
    if np.any(m0 < 0):
        raise ValueError(f"rounding={rounding!r} needs m0 >= 0")
    total = 31 - shift
    if rounding == "single_away":
        p = x * m0
        return np.sign(p) * ((np.abs(p) + (np.int64(1) << (total - 1))) >> total)
    return (x * m0 + (np.int64(1) << (total - 1))) >> total


def __getattr__(name: str):
    # the named modes moved to npquant.requant.modes; their old names here keep working
    if name in _MODES_NAMES:
        import warnings

        from . import modes

        warnings.warn(
            f"npquant.requant.fixedpoint.{name} moved to npquant.requant.modes.{name}; the old name will "
            "be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(modes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
