"""The requantization mode of each stack: int32 accumulators back to output codes.

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
``rdbpot`` its RoundingDivideByPOT (ties away from zero), both in
:mod:`npquant.requant.fixedpoint`. The two roundings of ``tflite`` are why it differs from
``tflite_single`` by one at some accumulators; :func:`requantize_ties` lists them.

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

``fp32`` is fbgemm's rounding of an integer accumulator. PyTorch's quantized layers take a
float bias and fold it in float32, and fbgemm turns a product beyond int32 into code 0
rather than saturating: that is the layer mode :data:`FBGEMM`, whose scalar reference is
:func:`fbgemm_requantize_scalar` and whose arrays :mod:`npquant.qnn.fbgemm` computes.

:func:`requantize` works on NumPy integer arrays of any shape (a numba kernel, or its NumPy
twin with ``backend="numpy"``); :func:`requantize_scalar` is the readable scalar reference
of every mode, one accumulator, Python ints, built on the scalar primitives of
:mod:`npquant.requant.fixedpoint`, with each intermediate value (what :mod:`npquant.explain`
prints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import (
    check_bool,
    check_choice,
    check_int,
    check_int_array,
    check_scale,
    check_scales,
    normalize_axis,
    smallest_int_dtype,
)
from .._kernels import requantize as _k
from .._kernels.modes import REQUANT_CODES
from ..rounding import fma32, round_scalar, round_values
from .fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_scalar,
    quantize_multiplier,
    rounding_divide_by_pot_scalar,
    saturating_rounding_doubling_high_mul_scalar,
)

REQUANT_MODES = ("tflite", "tflite_single", "fp32", "onnx")
#: Modes of a single op of a stack (module docstring), accepted besides REQUANT_MODES.
EXTRA_REQUANT_MODES = ("tflite_single_away",)
#: PyTorch fbgemm's requantization as a layer mode: ``fp32``'s multiplier, the layer's float
#: bias added to ``float32(acc)`` in float32 (one FMA for per-tensor weights), an
#: out-of-int32 product giving ``INT32_MIN`` (:func:`fbgemm_requantize_scalar`). It needs the
#: bias and the scales, so :func:`requantize` (accumulators and ``M`` only) does not take it.
FBGEMM = "fbgemm"
#: The modes of an integer layer: :data:`REQUANT_MODES` and :data:`FBGEMM`.
LAYER_REQUANT_MODES = REQUANT_MODES + (FBGEMM,)
_ALL_MODES = REQUANT_MODES + EXTRA_REQUANT_MODES
# the rounding of multiply_by_quantized_multiplier in each fixed-point mode
_MBQM_ROUNDING = {"tflite": "double", "tflite_single": "single", "tflite_single_away": "single_away"}


def effective_multiplier(s_x: npt.ArrayLike, s_w: npt.ArrayLike, s_y: npt.ArrayLike, mode: str) -> np.ndarray:
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
    sx, sw, sy = (check_scales(v, name) for name, v in (("s_x", s_x), ("s_w", s_w), ("s_y", s_y)))
    if mode in _MBQM_ROUNDING:
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


def requant_params(multiplier: npt.ArrayLike, mode: str) -> RequantParams:
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


def _check_out_range(zero_point: int, qmin: int, qmax: int) -> tuple[int, int, int]:
    qmin = check_int(qmin, "qmin", lo=INT32_MIN, hi=INT32_MAX)
    qmax = check_int(qmax, "qmax", lo=qmin, hi=INT32_MAX)
    zero_point = check_int(zero_point, "zero_point", lo=qmin, hi=qmax)
    return zero_point, qmin, qmax


def _left_shift_error(left: int) -> ValueError:
    return ValueError(
        "mode='tflite': acc << shift overflows int32 for a multiplier >= 0.5 (TFLite's "
        "left shift; undefined behaviour there); accumulators must stay within "
        f"+-2^{31 - left}"
    )


def requantize(
    acc: npt.ArrayLike,
    multiplier: npt.ArrayLike,
    zero_point: int,
    qmin: int,
    qmax: int,
    *,
    mode: str = "tflite",
    axis: int | None = None,
    backend: str = "numba",
) -> np.ndarray:
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
    a = check_int_array(acc, "acc")
    # int32 and narrower dtypes always fit: no pass over the data for them
    if a.size and not np.can_cast(a.dtype, np.int32) and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        raise ValueError(f"acc must lie in the int32 range, got values in [{a.min()}, {a.max()}]")
    zero_point, qmin, qmax = _check_out_range(zero_point, qmin, qmax)
    p = requant_params(multiplier, mode)
    n_ch = p.m0.size
    if n_ch > 1:
        if axis is None:
            raise ValueError(f"{n_ch} per-channel multipliers need the channel axis of acc (axis=...)")
        ax = normalize_axis(axis, a.ndim)
        if a.shape[ax] != n_ch:
            raise ValueError(f"multiplier has {n_ch} channels but acc has {a.shape[ax]} along axis {ax}")
        shape3 = (math.prod(a.shape[:ax]), n_ch, math.prod(a.shape[ax + 1 :]))
    else:
        shape3 = (1, 1, a.size)
    acc3 = np.ascontiguousarray(a, dtype=np.int32).reshape(shape3)
    if mode == "tflite" and acc3.size and np.any(p.shift > 0):
        _check_left_shift(acc3, p.shift)
    dtype = smallest_int_dtype(qmin, qmax, max_bits=32)  # [qmin, qmax] lies in int32: checked above
    if backend == "numpy":
        out3 = _requantize_numpy(acc3, p, zero_point, qmin, qmax, mode).astype(dtype)
    else:
        out3 = np.empty(shape3, dtype)
        with np.errstate(over="ignore"):  # NUMBA_DISABLE_JIT: fp32's inf, as in the twin
            _k.requantize3(acc3, p.m0, p.shift, p.multiplier32, zero_point, qmin, qmax, REQUANT_CODES[mode], out3)
    return out3.reshape(a.shape)


def _check_left_shift(acc3: np.ndarray, shift: np.ndarray) -> None:
    """TFLite computes ``acc * 2^shift`` in int32 for multipliers >= 0.5: overflow there is
    undefined behaviour in C++, so it is an error here, not a silent wrap."""
    left = np.maximum(shift.astype(np.int64), 0)
    lo = acc3.min(axis=(0, 2)).astype(np.int64) << left
    hi = acc3.max(axis=(0, 2)).astype(np.int64) << left
    if np.any(lo < INT32_MIN) or np.any(hi > INT32_MAX):
        raise _left_shift_error(int(left.max()))


def _requantize_numpy(acc3, p: RequantParams, zp: int, qmin: int, qmax: int, mode: str):
    """NumPy twin of ``_kernels.requantize.requantize3`` (int64 result)."""
    a = acc3.astype(np.int64)
    m0 = p.m0.astype(np.int64).reshape(1, -1, 1)
    shift = p.shift.astype(np.int64).reshape(1, -1, 1)
    mf = p.multiplier32.reshape(1, -1, 1)
    if mode in _MBQM_ROUNDING:
        v = multiply_by_quantized_multiplier(a, m0, shift, _MBQM_ROUNDING[mode]) + zp
        return np.clip(v, qmin, qmax)
    if mode == "fp32":
        with np.errstate(over="ignore"):  # a product beyond float32 is inf, then clamped
            t = round_values(a.astype(np.float32) * mf, "half_even").astype(np.float64) + zp
    else:
        t = round_values(a.astype(np.float64) * mf.astype(np.float64) + zp, "half_even")
    return np.clip(t, qmin, qmax).astype(np.int64)


def requantize_ties(
    multiplier: float,
    zero_point: int = 0,
    qmin: int = -128,
    qmax: int = 127,
    *,
    acc_min: int = -(1 << 16),
    acc_max: int = 1 << 16,
    modes: Sequence[str] = REQUANT_MODES,
) -> dict:
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
    codes = {m: requantize(acc, multiplier, zero_point, qmin, qmax, mode=m).astype(np.int64) for m in modes}
    first = codes[modes[0]]
    differ = np.zeros(acc.shape, bool)
    for m in modes[1:]:
        differ |= codes[m] != first
    out = {"acc": acc[differ], "exact": acc[differ] * float(multiplier)}
    out.update({m: c[differ] for m, c in codes.items()})
    return out


# ---- scalar reference of every mode -----------------------------------------------------------


@dataclass(frozen=True)
class RequantSteps:
    """One accumulator requantized by the scalar reference, with every intermediate value.

    Fields that a mode does not compute are None.

    Attributes
    ----------
    mode : str
        The mode (one of ``REQUANT_MODES``, ``EXTRA_REQUANT_MODES`` or :data:`FBGEMM`).
    acc : int
        The int32 accumulator (the int32 bias included; ``fbgemm``: without the bias).
    scaled : int or float
        ``round(acc * M)`` before the zero point (``onnx``: ``before_clamp - Z_y``;
        ``fp32``: ``+-inf`` when the float32 product overflows).
    before_clamp : int or float
        ``scaled + Z_y``.
    code : int
        ``before_clamp`` clamped to ``[qmin, qmax]``.
    m0, shift : int or None
        The fixed-point multiplier (the TFLite modes).
    multiplier32 : float or None
        ``float32(M)`` (``fp32``, ``onnx``, ``fbgemm``).
    shifted : int or None
        ``tflite``: ``acc << max(shift, 0)``.
    high : int or None
        ``tflite``: ``srdhm(shifted, m0)``, the first rounding.
    product : float or None
        ``fp32`` and ``fbgemm``: the float32 product; ``onnx``: the float64 product.
    with_zero_point : float or None
        ``onnx``: ``product + Z_y`` (ONNX adds the zero point before rounding).
    act_times_w_scale : float or None
        ``fbgemm``: ``float32(S_x S_w)``.
    bias : float or None
        ``fbgemm``: the float32 bias.
    reciprocal : float or None
        ``fbgemm``, fused: ``float32(1 / act_times_w_scale)``.
    bias_term : float or None
        ``fbgemm``, not fused: ``float32(bias / act_times_w_scale)``.
    raw : float or None
        ``fbgemm``: ``float32(acc)`` with the bias added, in float32.
    """

    mode: str
    acc: int
    scaled: int | float
    before_clamp: int | float
    code: int
    m0: int | None = None
    shift: int | None = None
    multiplier32: float | None = None
    shifted: int | None = None
    high: int | None = None
    product: float | None = None
    with_zero_point: float | None = None
    act_times_w_scale: float | None = None
    bias: float | None = None
    reciprocal: float | None = None
    bias_term: float | None = None
    raw: float | None = None


def requantize_scalar(
    acc: int, multiplier: float, zero_point: int, qmin: int, qmax: int, mode: str = "tflite"
) -> RequantSteps:
    """Scalar reference of :func:`requantize`: one accumulator, Python ints, every step kept.

    ``tflite``: ``rdbpot(srdhm(acc << left, m0), right)``; ``tflite_single`` and
    ``tflite_single_away``: :func:`~npquant.requant.fixedpoint.multiply_by_quantized_multiplier_scalar`
    with one rounding; ``fp32``: ``rint(float32(float32(acc) * float32(M)))``; ``onnx``:
    ``rint(float64(acc) * float64(float32(M)) + Z_y)``; ``rint`` ties to even. Then
    ``+ Z_y`` (exact) and the clamp.

    Parameters
    ----------
    acc : int
        The accumulator, in the int32 range.
    multiplier : float
        The real ``M``, as in :func:`requantize` (constants from :func:`requant_params`).
    zero_point, qmin, qmax : int
        Output zero point and code range, as in :func:`requantize`.
    mode : str, default ``"tflite"``
        One of ``REQUANT_MODES`` or ``EXTRA_REQUANT_MODES``.

    Returns
    -------
    RequantSteps
        ``code`` equals :func:`requantize` of ``[acc]``; ``ValueError`` where it refuses
        (``tflite``'s left shift overflowing int32).
    """
    check_choice(mode, "mode", _ALL_MODES)
    acc = check_int(acc, "acc", lo=INT32_MIN, hi=INT32_MAX)
    zero_point, qmin, qmax = _check_out_range(zero_point, qmin, qmax)
    if np.ndim(multiplier) != 0:
        raise ValueError(f"multiplier must be one real number, got shape {np.shape(multiplier)}")
    p = requant_params(multiplier, mode)
    m0, shift, m32 = int(p.m0[0]), int(p.shift[0]), p.multiplier32[0]
    extra = {}
    if mode == "tflite":
        left, right = max(shift, 0), max(-shift, 0)
        shifted = acc << left
        if not INT32_MIN <= shifted <= INT32_MAX:
            raise _left_shift_error(left)
        high = saturating_rounding_doubling_high_mul_scalar(shifted, m0)
        scaled = rounding_divide_by_pot_scalar(high, right)
        before = scaled + zero_point
        extra = dict(m0=m0, shift=shift, shifted=shifted, high=high)
    elif mode in _MBQM_ROUNDING:
        scaled = multiply_by_quantized_multiplier_scalar(acc, m0, shift, _MBQM_ROUNDING[mode])
        before = scaled + zero_point
        extra = dict(m0=m0, shift=shift)
    elif mode == "fp32":
        with np.errstate(over="ignore"):
            product = np.float32(np.float32(acc) * m32)
        scaled = round_scalar(product, "half_even") if np.isfinite(product) else float(product)
        before = scaled + zero_point
        extra = dict(multiplier32=float(m32), product=float(product))
    else:
        product = float(acc) * float(m32)  # Python floats are IEEE doubles
        with_zp = product + zero_point
        before = round_scalar(with_zp, "half_even")
        scaled = before - zero_point
        extra = dict(multiplier32=float(m32), product=product, with_zero_point=with_zp)
    code = int(min(max(before, qmin), qmax))
    return RequantSteps(mode=mode, acc=acc, scaled=scaled, before_clamp=before, code=code, **extra)


def fbgemm_requantize_scalar(
    acc: int, s_x: float, s_w: float, s_y: float, bias: float, zero_point: int, qmin: int, qmax: int, *, fused: bool
) -> RequantSteps:
    """Scalar reference of PyTorch fbgemm's requantization with a float bias (:data:`FBGEMM`).

    In float32: ``ats = float32(S_x S_w)``, ``M = float32(ats / S_y)``; the bias added to
    ``float32(acc)``, fused (``fma(b, float32(1 / ats), float32(acc))``, one rounding:
    fbgemm's per-tensor path) or not (``float32(acc) + float32(b / ats)``: its per-channel
    path); ``rint(float32(raw * M))`` ties to even, a product outside int32 (or not finite)
    giving ``INT32_MIN`` as x86's ``cvtps2dq`` does; then ``+ Z_y`` and the clamp.
    :mod:`npquant.qnn.fbgemm` computes the same on arrays.

    Parameters
    ----------
    acc : int
        The int32 accumulator, without the bias.
    s_x, s_w, s_y : float
        The input, weight (of this output channel) and output scales, positive and
        finite as float32.
    bias : float
        The float bias of this output channel, finite as float32.
    zero_point, qmin, qmax : int
        Output zero point and code range.
    fused : bool
        The per-tensor path (one fused multiply-add) or the per-channel path.

    Returns
    -------
    RequantSteps
        With ``act_times_w_scale``, ``multiplier32``, ``bias``, ``reciprocal`` (fused) or
        ``bias_term``, ``raw`` and ``product``.
    """
    acc = check_int(acc, "acc", lo=INT32_MIN, hi=INT32_MAX)
    zero_point, qmin, qmax = _check_out_range(zero_point, qmin, qmax)
    fused = check_bool(fused, "fused")
    sx, sw, sy = check_scale(s_x, "s_x"), check_scale(s_w, "s_w"), check_scale(s_y, "s_y")
    with np.errstate(over="ignore"):
        b = np.float32(bias)
    if not np.isfinite(b):
        raise ValueError(f"bias must be finite as float32, got {bias!r}")
    ats = np.float32(sx * sw)
    mult = np.float32(ats / sy)
    extra = {}
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow: inf, then INT32_MIN below
        if fused:
            rcp = np.float32(1.0 / np.float64(ats))
            raw = fma32(b, rcp, np.float32(acc))[()]
            extra["reciprocal"] = float(rcp)
        else:
            bias_term = np.float32(b / ats)
            raw = np.float32(np.float32(acc) + bias_term)
            extra["bias_term"] = float(bias_term)
        product = np.float32(raw * mult)
    scaled = round_scalar(product, "half_even") if np.isfinite(product) else INT32_MIN
    if not INT32_MIN <= scaled <= INT32_MAX:
        scaled = INT32_MIN
    before = scaled + zero_point
    return RequantSteps(
        mode=FBGEMM,
        acc=acc,
        scaled=scaled,
        before_clamp=before,
        code=min(max(before, qmin), qmax),
        multiplier32=float(mult),
        product=float(product),
        act_times_w_scale=float(ats),
        bias=float(b),
        raw=float(raw),
        **extra,
    )
