"""Accumulator overflow: worst cases over the actual weights and every possible input.

An integer layer sums ``(q_x - Z_x)(q_w - Z_w)`` over ``K`` terms plus an int32 bias.
For one output channel with weights ``d_k = q_w[k] - Z_w`` and inputs anywhere in
``[x_qmin, x_qmax]``, the largest sum is ``bias + sum_k max((x_qmax - Z_x) d_k,
(x_qmin - Z_x) d_k)`` and the smallest the same with ``min``. Both bound every partial
sum too (each term's extremes include 0, at ``q_x = Z_x``), so a layer that passes
:func:`check_accumulator` accumulates exactly in int32 in any order of summation.
Padding with the zero point adds zero terms and changes nothing.

fbgemm's AVX2 kernels have a narrower step: ``vpmaddubsw`` multiplies uint8 activation
codes by int8 weight codes and adds each adjacent pair of products into a *saturating*
int16 before widening to int32. With 8-bit activations ``255 * 127 * 2 = 64770`` does
not fit int16; with 7-bit activations (PyTorch's ``reduce_range=True``, codes in
``[0, 127]``) no pair of int8 weights can exceed ``127 * 128 * 2 = 32512``.
:func:`check_int16_pairs` reports whether that step can saturate for given weights,
:func:`int16_pair_accumulate` models it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array
from ..requant.fixedpoint import INT32_MAX, INT32_MIN

OVERFLOW_MODES = ("error", "wrap")
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1


def _weights2d(w_q: npt.ArrayLike, name: str = "w_q") -> np.ndarray:
    w = check_int_array(w_q, name)
    if w.ndim < 1 or w.size == 0:
        raise ValueError(f"{name} must be a non-empty array of shape (out, ...), got shape {w.shape}")
    return w.reshape(w.shape[0], -1).astype(np.int64)


def accumulator_bounds(
    w_q: npt.ArrayLike,
    w_zero_point: int | npt.ArrayLike,
    x_qmin: int,
    x_qmax: int,
    x_zero_point: int,
    bias_q: npt.ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest possible accumulator of each output channel.

    ``w_q`` is (out, ...) integer codes, reduced over all axes but the first;
    ``w_zero_point`` a scalar or (out,); inputs range over ``[x_qmin, x_qmax]`` with zero
    point ``x_zero_point``; ``bias_q`` (out,) or None. Returns two int64 arrays of
    shape (out,), exact (int64 holds any 16-bit layer with K < 2^31).

    Parameters
    ----------
    w_q : integer array (out, ...)
        Weight codes, non-empty.
    w_zero_point : int or integer array (out,)
        The weights' zero point(s).
    x_qmin, x_qmax : int
        The input code range, ``x_qmin <= x_qmax``.
    x_zero_point : int
        The input zero point, in ``[x_qmin, x_qmax]``.
    bias_q : integer array (out,) or None, default None
        The integer bias added to every accumulator.

    Returns
    -------
    lo, hi : numpy.ndarray
        int64 (out,): the least and greatest ``bias + sum (q_x - Z_x)(q_w - Z_w)`` over
        all inputs in the code range.
    """
    w = _weights2d(w_q)
    x_qmin = check_int(x_qmin, "x_qmin")
    x_qmax = check_int(x_qmax, "x_qmax", lo=x_qmin)
    zx = check_int(x_zero_point, "x_zero_point", lo=x_qmin, hi=x_qmax)
    zw = check_int_array(w_zero_point, "w_zero_point", what="integers").astype(np.int64).reshape(-1, 1)
    if zw.shape[0] not in (1, w.shape[0]):
        raise ValueError(
            f"w_zero_point must be a scalar or one per output channel ({w.shape[0]}), got {zw.shape[0]} values"
        )
    d = w - zw
    a, b = d * (x_qmax - zx), d * (x_qmin - zx)
    hi = np.maximum(a, b).sum(axis=1)
    lo = np.minimum(a, b).sum(axis=1)
    if bias_q is not None:
        bias = np.asarray(bias_q)
        if bias.dtype.kind not in "iu" or bias.shape != (w.shape[0],):
            raise ValueError(f"bias_q must be integers of shape ({w.shape[0]},), got {bias.dtype} {bias.shape}")
        bias = bias.astype(np.int64)
        hi, lo = hi + bias, lo + bias
    return lo, hi


def check_accumulator(
    lo: npt.ArrayLike, hi: npt.ArrayLike, overflow: str = "error", *, what: str = "the accumulator"
) -> bool:
    """Raise ``ValueError`` if ``[lo, hi]`` (from :func:`accumulator_bounds`) leaves int32.

    ``overflow="error"`` raises, naming the worst channel; ``overflow="wrap"`` accepts
    (the result then wraps as int32 two's complement, like C accumulators on real
    hardware). Returns True when the bounds fit int32.

    Parameters
    ----------
    lo, hi : array_like of int
        Accumulator bounds per output channel.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        What a possible overflow does.
    what : str, default ``"the accumulator"``
        Keyword-only; names the accumulator in the error message.

    Returns
    -------
    bool
        True if ``[lo, hi]`` lies in the int32 range (with ``"wrap"``, False otherwise).
    """
    check_choice(overflow, "overflow", OVERFLOW_MODES)
    lo = np.asarray(lo, np.int64)
    hi = np.asarray(hi, np.int64)
    fits = bool(lo.min() >= INT32_MIN and hi.max() <= INT32_MAX)
    if not fits and overflow == "error":
        c_hi, c_lo = int(np.argmax(hi)), int(np.argmin(lo))
        c = c_hi if hi[c_hi] > INT32_MAX else c_lo
        raise ValueError(
            f"{what} can overflow int32: output channel {c} can reach [{int(lo[c])}, {int(hi[c])}] "
            f"for inputs in the full code range (int32 is [{INT32_MIN}, {INT32_MAX}]); use fewer "
            "input features, narrower codes or a smaller bias, or pass overflow='wrap' to wrap "
            "as int32 two's complement"
        )
    return fits


@dataclass(frozen=True)
class Int16PairCheck:
    """Result of :func:`check_int16_pairs`.

    ``saturates``: some pair sum can leave int16; ``lo``/``hi``: the extreme pair sums
    over all pairs and inputs; ``n_pairs``: pairs checked; ``n_saturating``: pairs that
    can saturate.
    """

    saturates: bool
    lo: int
    hi: int
    n_pairs: int
    n_saturating: int


def _pairs(w: np.ndarray) -> np.ndarray:
    """(out, K) -> (out, ceil(K / 2), 2), an odd K padded with a zero weight."""
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((w.shape[0], 1), w.dtype)], axis=1)
    return w.reshape(w.shape[0], -1, 2)


def check_int16_pairs(w_q: npt.ArrayLike, x_qmin: int = 0, x_qmax: int = 255) -> Int16PairCheck:
    """Can fbgemm's AVX2 ``vpmaddubsw`` step saturate for these weights?

    ``w_q`` is (out, ...) int8 weight codes; the pairs are adjacent elements along the
    flattened trailing axes (the order in which the kernel reduces; fbgemm packs conv
    weights as (kh, kw, c), so reorder OIHW weights first to model its conv).
    Activations are *raw* uint8 codes in ``[x_qmin, x_qmax]`` (fbgemm subtracts the zero
    points afterwards, from row and column offsets). Each pair ``x_0 w_0 + x_1 w_1`` is
    bounded over all inputs and compared with int16 ``[-32768, 32767]``.

    Parameters
    ----------
    w_q : integer array (out, ...)
        Weight codes in ``[-128, 127]``, non-empty.
    x_qmin, x_qmax : int, default 0 and 255
        The range of the raw uint8 activation codes, ``0 <= x_qmin <= x_qmax <= 255``.

    Returns
    -------
    Int16PairCheck
        Whether and how often a pair sum can leave int16, and the extreme pair sums.
    """
    w = _weights2d(w_q)
    x_qmin = check_int(x_qmin, "x_qmin", lo=0, hi=255)
    x_qmax = check_int(x_qmax, "x_qmax", lo=x_qmin, hi=255)
    if w.min() < -128 or w.max() > 127:
        raise ValueError(f"w_q must hold int8 codes in [-128, 127], got [{w.min()}, {w.max()}]")
    p = _pairs(w)
    a, b = p * x_qmax, p * x_qmin
    hi = np.maximum(a, b).sum(axis=2)
    lo = np.minimum(a, b).sum(axis=2)
    bad = (hi > INT16_MAX) | (lo < INT16_MIN)
    return Int16PairCheck(bool(bad.any()), int(lo.min()), int(hi.max()), int(bad.size), int(bad.sum()))


def int16_pair_accumulate(x_q: npt.ArrayLike, w_q: npt.ArrayLike) -> np.ndarray:
    """The raw product of fbgemm's and MLAS's ``vpmaddubsw`` kernels: ``sum_p sat16(x_0 w_0 + x_1 w_1)``.

    ``x_q`` (N, K) uint8 codes, ``w_q`` (out, K) int8 codes; adjacent pairs along K
    (k = 0,1 | 2,3 | ...; an odd last k is alone) are summed with int16 saturation
    (``vpmaddubsw``), then added in int32 (``vpmaddwd`` with ones, then int32 adds).
    Returns int32 (N, out); it equals ``x_q @ w_q.T`` exactly when
    :func:`check_int16_pairs` reports no saturation (the int32 sum wraps like the
    hardware's). The NumPy definition of ``accumulation="int16_pairs"``
    (:mod:`npquant.qnn.accumulation`) and the twin of its kernels.

    Parameters
    ----------
    x_q : uint8 array (N, K)
        Raw activation codes.
    w_q : int8 array (out, K)
        Weight codes.

    Returns
    -------
    numpy.ndarray
        int32 (N, out): each pair sum saturated to int16, the pairs summed and wrapped to
        int32.
    """
    x = np.asarray(x_q)
    w = np.asarray(w_q)
    if x.dtype != np.uint8:
        raise TypeError(f"x_q must be uint8 codes, got dtype {x.dtype}")
    if w.dtype != np.int8:
        raise TypeError(f"w_q must be int8 codes, got dtype {w.dtype}")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x_q (N, K) and w_q (out, K) must share K, got shapes {x.shape} and {w.shape}")
    wp = _pairs(w.astype(np.int32))
    out = np.empty((x.shape[0], w.shape[0]), np.int32)
    step = max(1, (1 << 22) // max(1, wp.shape[0] * wp.shape[1]))  # rows a block: bounded memory
    for i in range(0, x.shape[0], step):
        xp = _pairs(x[i : i + step].astype(np.int32))
        pair = np.einsum("npt,opt->nop", xp, wp)  # |pair| <= 65280: exact in int32
        out[i : i + step] = np.clip(pair, INT16_MIN, INT16_MAX).sum(axis=2, dtype=np.int64).astype(np.int32)
    return out
