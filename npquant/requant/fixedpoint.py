"""Integer requantization: fixed-point multipliers and the rounding of each stack.

An integer layer accumulates ``acc = sum((q_x - Z_x)(q_w - Z_w)) + bias`` in int32 at
scale ``S_x * S_w``; its output code is ``clamp(round(acc * M) + Z_y, qmin, qmax)`` with
the real multiplier ``M = S_x * S_w / S_y``. Stacks differ in how they compute
``round(acc * M)``, so that is a named ``mode``:

=================  ==========================================================  ==========================
mode               ``round(acc * M)``                                          reproduces
=================  ==========================================================  ==========================
``tflite``         ``M = m0 * 2^(shift - 31)`` (:func:`quantize_multiplier`);  TFLite reference
                   ``rdbpot(srdhm(acc << left, m0), right)``: two roundings    kernels, gemmlowp
``tflite_single``  ``(acc * m0 + 2^(30 - shift)) >> (31 - shift)``: one        TFLite with
                   rounding, ties toward +inf                                  ``TFLITE_SINGLE_ROUNDING``
``fp32``           ``rint(float32(acc) * float32(M))``, ties to even           PyTorch fbgemm
``onnx``           ``rint(float64(acc) * float64(float32(M)) + Z_y)``          ONNX reference
                                                                               QLinearMatMul/Conv
=================  ==========================================================  ==========================

``srdhm`` is gemmlowp's SaturatingRoundingDoublingHighMul (ties toward +inf),
``rdbpot`` its RoundingDivideByPOT (ties away from zero). The two roundings of ``tflite``
are why it differs from ``tflite_single`` by one at some accumulators;
:func:`requantize_ties` lists them.

A stack may round differently per op. :data:`EXTRA_REQUANT_MODES` holds the modes that
reproduce one op rather than a whole stack (outside :data:`REQUANT_MODES`, the four that
the tie tables, plots and demos compare); :func:`requantize`, :func:`requant_params`,
:func:`effective_multiplier` and :func:`requantize_ties` accept them:

======================  ======================================================  ===========================
mode                    ``round(acc * M)``                                      reproduces
======================  ======================================================  ===========================
``tflite_single_away``  ``sign(p) * ((|p| + 2^(30 - shift)) >> (31 - shift))``  LiteRT 2.3's reference
                        with ``p = acc * m0``: one rounding, ties away from     FULLY_CONNECTED (int8,
                        zero                                                    per-tensor and per-channel)
======================  ======================================================  ===========================

``tflite_single_away`` was measured on ``ai-edge-litert`` 2.3.0 with the ``BUILTIN_REF``
op resolver (``tests/test_import_tflite.py``): its FULLY_CONNECTED rounds once, ties away
from zero, where its CONV_2D, DEPTHWISE_CONV_2D, MUL and MEAN round twice (``tflite``).

Everything here works on NumPy integer arrays of any shape; scalars are accepted.

``fp32`` is fbgemm's rounding of an integer accumulator. PyTorch's quantized layers take a
float bias and fold it in float32, and fbgemm turns a product beyond int32 into code 0
rather than saturating: :mod:`npquant.qnn.fbgemm` reproduces that path bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._checks import check_choice, check_int, normalize_axis
from .._kernels import requantize as _k

REQUANT_MODES = ("tflite", "tflite_single", "fp32", "onnx")
#: Modes of a single op of a stack (module docstring), accepted besides REQUANT_MODES.
EXTRA_REQUANT_MODES = ("tflite_single_away",)
_ALL_MODES = REQUANT_MODES + EXTRA_REQUANT_MODES
_FIXED_POINT_MODES = ("tflite", "tflite_single", "tflite_single_away")
MBQM_ROUNDINGS = ("double", "single", "single_away")
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def _int_array(v, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def quantize_multiplier(real, rounding: str = "double") -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: ``real = m0 * 2^(shift - 31)``.

    ``frexp`` of the double gives ``q`` in ``[0.5, 1)``; ``m0 = round_half_away(q * 2^31)``
    lies in ``[2^30, 2^31)`` (renormalised when it reaches ``2^31``); ``shift`` is a
    left shift when positive. Multipliers below ``2^-32`` once rounded to ``m0``'s bits
    (a ``shift`` below ``-31``) flush to ``(0, 0)``, as TFLite's do;
    multipliers >= 1 are fine.

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
    # round half away from zero of q * 2^31 (exact: q has 53 bits, the product is a scaling)
    qf = q * 2.0**31
    m0 = (np.sign(qf) * np.floor(np.abs(qf) + 0.5)).astype(np.int64)
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


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul: ``round(a * b / 2^31)``, int32.

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


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2^exponent``, ties away from zero, int32.

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


def multiply_by_quantized_multiplier(x, m0, shift, rounding: str = "double") -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, m0, shift)``: about ``x * m0 * 2^(shift-31)``.

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


def effective_multiplier(s_x, s_w, s_y, mode: str) -> np.ndarray:
    """The real multiplier ``M = S_x * S_w / S_y`` computed as the stack of ``mode`` does.

    Parameters
    ----------
    s_x : float
        The input scale ``S_x``, taken as float32; positive and finite.
    s_w : float or 1-D float array (C,)
        The weight scale ``S_w``, or per-channel scales; taken as float32, positive and
        finite.
    s_y : float
        The output scale ``S_y``, taken as float32; positive and finite.
    mode : str
        One of ``REQUANT_MODES`` or ``EXTRA_REQUANT_MODES``.
        ``tflite``/``tflite_single``/``tflite_single_away``: ``double(S_x) * double(S_w) /
        double(S_y)`` from the float32 scales (TFLite's
        ``PopulateConvolutionQuantizationParams``). ``onnx``: ``float32(S_x * S_w) / S_y``
        in float32 (ONNX's reference QLinearMatMul/Conv). ``fp32``: ``float32(S_x * S_w)
        / S_y`` in float32 (fbgemm's ``act_times_w_scale`` and output multiplier in
        PyTorch's quantized linear/conv).

    Returns
    -------
    numpy.ndarray
        float64, the broadcast shape of the scales (a NumPy scalar for scalar scales),
        holding the value each stack uses.
    """
    check_choice(mode, "mode", _ALL_MODES)
    vals = []
    for name, v in (("s_x", s_x), ("s_w", s_w), ("s_y", s_y)):
        a = np.asarray(v)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
        a = a.astype(np.float32)
        if a.size == 0 or not np.all(np.isfinite(a)) or not np.all(a > 0):
            raise ValueError(f"{name} must be positive and finite float32 scales")
        vals.append(a)
    sx, sw, sy = vals
    if mode in _FIXED_POINT_MODES:
        return sx.astype(np.float64) * sw.astype(np.float64) / sy.astype(np.float64)
    return ((sx * sw) / sy).astype(np.float64)


@dataclass(frozen=True)
class RequantParams:
    """The per-mode constants of one requantization, computed once from ``M``.

    Each field is 1-D, length 1 (per-tensor) or C (per-channel).

    Attributes
    ----------
    m0 : numpy.ndarray
        int32 (1,) or (C,): the mantissas of :func:`quantize_multiplier`, for the TFLite
        modes.
    shift : numpy.ndarray
        int32 (1,) or (C,): the powers of two of :func:`quantize_multiplier`, for the
        TFLite modes.
    multiplier32 : numpy.ndarray
        float32 (1,) or (C,): ``M`` as float32, for fp32 and onnx.
    """

    m0: np.ndarray
    shift: np.ndarray
    multiplier32: np.ndarray


def requant_params(multiplier, mode: str) -> RequantParams:
    """Constants of ``mode`` for real multipliers ``M > 0`` (float64 array or scalar).

    Parameters
    ----------
    multiplier : float or 1-D float array (C,)
        The real multipliers ``M``, positive and finite (taken as float64). Modes
        ``tflite`` and ``tflite_single_away`` need ``M < 2^30``; ``fp32`` and ``onnx``
        need ``M`` finite in float32.
    mode : str
        One of ``REQUANT_MODES`` or ``EXTRA_REQUANT_MODES``.

    Returns
    -------
    RequantParams
        1-D arrays of length 1 (scalar ``multiplier``) or C: ``m0``/``shift`` of
        :func:`quantize_multiplier` (double rounding for ``tflite`` and
        ``tflite_single_away``, single for ``tflite_single``; zeros for ``fp32`` and
        ``onnx``) and ``multiplier32 = float32(M)`` in every mode.
    """
    check_choice(mode, "mode", _ALL_MODES)
    m = np.asarray(multiplier)
    if m.dtype.kind not in "fiu":
        raise TypeError(f"multiplier must be real numbers, got dtype {m.dtype}")
    m = np.atleast_1d(m.astype(np.float64))
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"multiplier must be a scalar or a 1-D array, got shape {np.shape(multiplier)}")
    if not np.all(np.isfinite(m)) or not np.all(m > 0):
        raise ValueError("multiplier must be positive and finite")
    with np.errstate(over="ignore"):
        m32 = m.astype(np.float32)
    if mode in ("fp32", "onnx") and not np.all(np.isfinite(m32)):
        raise ValueError("multiplier overflows float32")
    if mode in ("tflite", "tflite_single_away"):
        m0, shift = quantize_multiplier(m, "double")
        if np.any(shift > 30):
            raise ValueError(f"multiplier must be below 2^30 in mode {mode!r} (shift <= 30)")
    elif mode == "tflite_single":
        m0, shift = quantize_multiplier(m, "single")
    else:
        m0 = np.zeros(m.shape, np.int32)
        shift = np.zeros(m.shape, np.int32)
    return RequantParams(m0, shift, m32)


def requantize(acc, multiplier, zero_point: int, qmin: int, qmax: int, *, mode: str = "tflite",
               axis: int | None = None, backend: str = "numba") -> np.ndarray:
    """int32 accumulators to output codes: ``clamp(round(acc * M) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    acc : integer array
        Accumulators, with values in the int32 range.
    multiplier : float, or 1-D float array of per-channel multipliers along ``axis``
        The real ``M = S_x * S_w / S_y`` (float64; the fp32 and onnx modes round it to
        float32 first, as those stacks hold it).
    zero_point, qmin, qmax : int
        Output zero point and code range (e.g. ``0, -128, 127`` for int8;
        a fused ReLU is ``qmin = zero_point``).
    mode : str, default ``"tflite"``
        One of ``REQUANT_MODES`` or ``EXTRA_REQUANT_MODES`` (see the module docstring).
    axis : int or None, default None
        The channel axis of ``acc`` for per-channel multipliers (needed with more than
        one multiplier).
    backend : {"numba", "numpy"}, default ``"numba"``
        The numba kernel or its NumPy twin.

    Returns
    -------
    numpy.ndarray
        Codes of the smallest integer dtype holding ``[qmin, qmax]``, ``acc``'s shape. The
        addition of the zero point is exact; only the final clamp saturates. In ``tflite``
        mode a multiplier >= 0.5 left-shifts ``acc`` in int32 first; an overflow there is a
        ``ValueError`` (undefined behaviour in TFLite).
    """
    check_choice(mode, "mode", _ALL_MODES)
    check_choice(backend, "backend", ("numba", "numpy"))
    a = np.asarray(acc)
    if a.dtype.kind not in "iu":
        raise TypeError(f"acc must be an integer array, got dtype {a.dtype}")
    # int32 and narrower dtypes always fit: no pass over the data for them
    if (a.size and not np.can_cast(a.dtype, np.int32)
            and (a.min() < INT32_MIN or a.max() > INT32_MAX)):
        raise ValueError(f"acc must lie in the int32 range, got values in [{a.min()}, {a.max()}]")
    qmin = check_int(qmin, "qmin", lo=INT32_MIN, hi=INT32_MAX)
    qmax = check_int(qmax, "qmax", lo=qmin, hi=INT32_MAX)
    zero_point = check_int(zero_point, "zero_point", lo=qmin, hi=qmax)
    p = requant_params(multiplier, mode)
    n_ch = p.m0.size
    if n_ch > 1:
        if axis is None:
            raise ValueError(f"{n_ch} per-channel multipliers need the channel axis of acc (axis=...)")
        ax = normalize_axis(axis, a.ndim)
        if a.shape[ax] != n_ch:
            raise ValueError(f"multiplier has {n_ch} channels but acc has {a.shape[ax]} along axis {ax}")
        shape3 = (math.prod(a.shape[:ax]), n_ch, math.prod(a.shape[ax + 1:]))
    else:
        shape3 = (1, 1, a.size)
    acc3 = np.ascontiguousarray(a, dtype=np.int32).reshape(shape3)
    if mode == "tflite" and acc3.size and np.any(p.shift > 0):
        _check_left_shift(acc3, p.shift)
    dtype = _code_dtype(qmin, qmax)
    if backend == "numpy":
        out3 = _requantize_numpy(acc3, p, zero_point, qmin, qmax, mode).astype(dtype)
    else:
        out3 = np.empty(shape3, dtype)
        with np.errstate(over="ignore"):  # NUMBA_DISABLE_JIT: fp32's inf, as in the twin
            _k.requantize3(acc3, p.m0, p.shift, p.multiplier32, zero_point, qmin, qmax,
                           _ALL_MODES.index(mode), out3)
    return out3.reshape(a.shape)


def _check_left_shift(acc3: np.ndarray, shift: np.ndarray) -> None:
    """TFLite computes ``acc * 2^shift`` in int32 for multipliers >= 0.5: overflow there is
    undefined behaviour in C++, so it is an error here, not a silent wrap."""
    left = np.maximum(shift.astype(np.int64), 0)
    lo = acc3.min(axis=(0, 2)).astype(np.int64) << left
    hi = acc3.max(axis=(0, 2)).astype(np.int64) << left
    if np.any(lo < INT32_MIN) or np.any(hi > INT32_MAX):
        raise ValueError(
            "mode='tflite': acc << shift overflows int32 for a multiplier >= 0.5 (TFLite's "
            "left shift; undefined behaviour there); accumulators must stay within "
            f"+-2^{31 - int(left.max())}"
        )


def _code_dtype(qmin: int, qmax: int) -> np.dtype:
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dt)
    raise ValueError(f"[{qmin}, {qmax}] does not fit an int32 code")


def _requantize_numpy(acc3, p: RequantParams, zp: int, qmin: int, qmax: int, mode: str):
    """NumPy twin of ``_kernels.requantize.requantize3`` (int64 result)."""
    a = acc3.astype(np.int64)
    m0 = p.m0.astype(np.int64).reshape(1, -1, 1)
    shift = p.shift.astype(np.int64).reshape(1, -1, 1)
    mf = p.multiplier32.reshape(1, -1, 1)
    if mode in _FIXED_POINT_MODES:
        rounding = {"tflite": "double", "tflite_single": "single"}.get(mode, "single_away")
        v = multiply_by_quantized_multiplier(a, m0, shift, rounding) + zp
        return np.clip(v, qmin, qmax)
    if mode == "fp32":
        with np.errstate(over="ignore"):  # a product beyond float32 is inf, then clamped
            t = np.rint(a.astype(np.float32) * mf).astype(np.float64) + zp
    else:
        t = np.rint(a.astype(np.float64) * mf.astype(np.float64) + zp)
    return np.clip(t, qmin, qmax).astype(np.int64)


def requantize_ties(multiplier: float, zero_point: int = 0, qmin: int = -128, qmax: int = 127, *,
                    acc_min: int = -(1 << 16), acc_max: int = 1 << 16,
                    modes=REQUANT_MODES) -> dict:
    """Where production stacks differ by one LSB: accumulators in ``[acc_min, acc_max]``
    whose output code depends on the requantization mode.

    Parameters
    ----------
    multiplier : float
        The real multiplier ``M``, as in :func:`requantize`.
    zero_point : int, default 0
        Output zero point, as in :func:`requantize`.
    qmin, qmax : int, default -128, 127
        Output code range, as in :func:`requantize`.
    acc_min, acc_max : int, default ``-2^16``, ``2^16``
        The accumulators tried, inclusive; within the int32 range and at most ``2^26``
        apart.
    modes : sequence of str, default ``REQUANT_MODES``
        The modes compared (each of ``REQUANT_MODES`` or ``EXTRA_REQUANT_MODES``).

    Returns
    -------
    dict
        ``acc`` (int64 array of the disagreeing accumulators, ascending), ``exact``
        (``acc * M`` as float64, for reading), and for each mode of ``modes`` the int64
        array of its codes of those accumulators (as :func:`requantize` rounds and
        saturates them).
    """
    acc_min = check_int(acc_min, "acc_min", lo=INT32_MIN, hi=INT32_MAX)
    acc_max = check_int(acc_max, "acc_max", lo=acc_min, hi=INT32_MAX)
    if acc_max - acc_min > 1 << 26:
        raise ValueError("acc_max - acc_min must be at most 2^26 (a table, not a sweep)")
    modes = tuple(modes)
    for m in modes:
        check_choice(m, "modes", _ALL_MODES)
    acc = np.arange(acc_min, acc_max + 1, dtype=np.int64)
    codes = {m: requantize(acc, multiplier, zero_point, qmin, qmax, mode=m).astype(np.int64)
             for m in modes}
    first = codes[modes[0]]
    differ = np.zeros(acc.shape, bool)
    for m in modes[1:]:
        differ |= codes[m] != first
    out = {"acc": acc[differ], "exact": acc[differ] * float(multiplier)}
    out.update({m: c[differ] for m, c in codes.items()})
    return out
