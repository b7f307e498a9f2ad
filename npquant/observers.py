"""Range calibration (observers): choose the real range ``[min_val, max_val]`` from data.

An observer sees the calibration data one batch at a time (:meth:`Observer.update`, or
calling it like PyTorch's ``forward``), keeps a summary of bounded size, and turns it into
:class:`~npquant.qparams.QParams` with :func:`~npquant.qparams.compute_qparams`
(:meth:`Observer.qparams`). Input is converted to float32 first, as PyTorch does.

* :class:`MinMaxObserver`: running min and max (2 floats kept);
* :class:`MovingAverageMinMaxObserver`: moving average of each batch's min and max;
* :class:`PerChannelMinMaxObserver`, :class:`MovingAveragePerChannelMinMaxObserver`: the
  same per channel or per group (2 floats per parameter);
* :class:`PercentileObserver`: percentiles of ``x`` or ``|x|`` (histogram);
* :class:`MSEObserver`: the clipping range of least expected quantization MSE
  (histogram);
* :class:`EntropyObserver`: least KL divergence, TensorRT's calibration (histogram of
  ``|x|``).

The four min-max observers reproduce ``torch.ao.quantization``'s observers of the same
names bit for bit (scale and zero point; PyTorch 2.13, see ``tests/test_observers.py``)
with the mapping ``quint8 -> QuantSpec(signed=False)``, ``qint8 -> QuantSpec(signed=True)``,
``per_*_symmetric -> symmetric=True``, ``ch_axis -> axis``.

``reduce_range=True`` quantizes with one bit fewer: the returned QParams' spec is
``spec.replace(bits=spec.bits - 1)`` (:attr:`Observer.effective_spec`); for 8 bits that is
PyTorch's ``[0, 127]`` (quint8) and ``[-64, 63]`` (qint8). Deliberate deviation:
PyTorch refuses ``reduce_range`` with a symmetric quint8 scheme (``NotImplementedError``);
here an unsigned symmetric spec with ``reduce_range=True`` is the 7-bit unsigned symmetric
spec, range ``[0, 127]`` with zero point 64.

Histograms (percentile, MSE, entropy) stream with memory that does not grow with the
number of batches: ``bins`` int64 counts over the window ``[lo, lo + bins * w)``, where
the bin width ``w`` is a power of two, ``lo`` a multiple of ``w``, and the window always
contains 0 (quantized ranges do). A batch outside the window makes the width the smallest
power of two (not below the current one) whose aligned window holds the occupied bins,
the batch and 0; old bins nest in new ones (``2^k`` old bins per new bin), so re-binning
is exact: no interpolation, no count is split. Binning is exact too: bin edges are exact
in float64 (and float32), and ``floor((x - lo) / w)`` is corrected against them, so every
value lands in the bin whose half-open interval holds it. The data and 0 then span about
half the bins or more. The exact observed minimum and maximum are kept besides the counts.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

from ._checks import as_float_array, check_bool, check_int, normalize_axis
from .granularity import param_shape, reduce_groups
from .qparams import QParams, QuantSpec, compute_qparams

__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
]


# ----------------------------------------------------------------------------------------
# base class


class Observer(ABC):
    """Base class: streaming calibration of a real range for ``spec``.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for.
    reduce_range : bool
        Use one bit fewer (see the module docstring).

    Notes
    -----
    Subclasses define how batches are summarised and which range is chosen. Every
    observer offers :meth:`update`, ``__call__``, :meth:`qparams`, :meth:`reset` and the
    range :attr:`min_val`, :attr:`max_val` that :meth:`qparams` uses.
    """

    def __init__(self, spec: QuantSpec, reduce_range: bool = False):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        check_bool(reduce_range, "reduce_range")
        effective = spec
        if reduce_range:
            if spec.bits < 2:
                raise ValueError("reduce_range=True needs spec.bits >= 2, got bits=1")
            try:
                effective = spec.replace(bits=spec.bits - 1)
            except ValueError as err:
                raise ValueError(f"reduce_range=True is impossible for this spec: {err}") from None
        self._spec = spec
        self._reduce_range = bool(reduce_range)
        self._effective_spec = effective
        self.reset()

    @property
    def spec(self) -> QuantSpec:
        """The spec given to the constructor."""
        return self._spec

    @property
    def reduce_range(self) -> bool:
        """Whether the range of codes is one bit narrower than ``spec``'s."""
        return self._reduce_range

    @property
    def effective_spec(self) -> QuantSpec:
        """The spec of the QParams returned: ``spec``, with one bit fewer under ``reduce_range``."""
        return self._effective_spec

    def update(self, x: npt.ArrayLike) -> Observer:
        """Observe one batch ``x`` (finite float array, non-empty); returns ``self``.

        ``x`` is converted to float32 first (as PyTorch's observers do).
        """
        self._update(as_float_array(x, "x"))
        return self

    def __call__(self, x):
        """Observe ``x`` and return it unchanged (PyTorch's ``forward``)."""
        self.update(x)
        return x

    @abstractmethod
    def reset(self) -> None:
        """Forget everything observed."""

    @property
    @abstractmethod
    def observed(self) -> bool:
        """True once at least one batch has been observed."""

    @abstractmethod
    def _update(self, x: np.ndarray) -> None:
        """Fold one validated float32 batch into the summary."""

    @abstractmethod
    def _compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated ``(min_val, max_val)`` from the summary (float32)."""

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.observed:
            raise ValueError(
                f"{type(self).__name__} has observed no data yet; call update(x) with a "
                "batch before asking for min_val, max_val or qparams()"
            )
        return self._compute_range()

    @property
    def min_val(self) -> np.ndarray:
        """Lower end of the range (float32; shape ``()`` per-tensor, the parameter shape otherwise).

        This is the range before widening to include 0; :meth:`qparams` widens it.
        """
        return np.array(self._range()[0], dtype=np.float32)

    @property
    def max_val(self) -> np.ndarray:
        """Upper end of the range (float32, same shape as :attr:`min_val`)."""
        return np.array(self._range()[1], dtype=np.float32)

    def qparams(self) -> QParams:
        """``compute_qparams(min_val, max_val, effective_spec)``: float32 scale, int32 zero point."""
        lo, hi = self._range()
        return compute_qparams(lo, hi, self._effective_spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self._spec}, reduce_range={self._reduce_range})"


def _require_per_tensor(spec: QuantSpec, cls: str) -> None:
    if isinstance(spec, QuantSpec) and spec.axis is not None:
        raise ValueError(
            f"spec.axis must be None for {cls}, a per-tensor observer, got axis={spec.axis}; "
            "use PerChannelMinMaxObserver or MovingAveragePerChannelMinMaxObserver for "
            "per-channel or per-group ranges"
        )


def _check_averaging_constant(c) -> np.float32:
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real):
        raise TypeError(f"averaging_constant must be a real number in (0, 1], got {type(c).__name__} {c!r}")
    if not (0.0 < float(c) <= 1.0):
        raise ValueError(f"averaging_constant must be in (0, 1], got {c!r}")
    # PyTorch's CPU kernels read the Python scalar as float32.
    return np.float32(c)


# ----------------------------------------------------------------------------------------
# min-max observers


class _MinMaxBase(Observer):
    """Running min/max (or their moving average) at ``spec``'s granularity, in float32."""

    _averaging: np.float32 | None = None

    def reset(self) -> None:
        self._min = None
        self._max = None

    @property
    def observed(self) -> bool:
        return self._min is not None

    def _batch_range(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = self._spec
        if spec.axis is None:
            return np.array(x.min(), np.float32), np.array(x.max(), np.float32)
        if x.ndim == 0:
            raise ValueError(f"x is a scalar but spec is {spec.granularity} (axis={spec.axis})")
        normalize_axis(spec.axis, x.ndim, "spec.axis")
        shape = param_shape(x.shape, spec.axis, spec.block_size)
        if self._min is not None and shape != self._min.shape:
            raise ValueError(
                f"x of shape {x.shape} has {spec.granularity} parameter shape {shape} "
                f"(axis={spec.axis}, block_size={spec.block_size}), but earlier batches had "
                f"{self._min.shape}; every batch must have the same channels"
            )
        lo = reduce_groups(x, np.minimum, spec.axis, spec.block_size)
        hi = reduce_groups(x, np.maximum, spec.axis, spec.block_size)
        return np.asarray(lo, np.float32), np.asarray(hi, np.float32)

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_range(x)
        if self._min is None:
            self._min, self._max = lo, hi
        elif self._averaging is None:
            self._min = np.minimum(self._min, lo)
            self._max = np.maximum(self._max, hi)
        else:
            c = self._averaging
            with np.errstate(over="ignore", invalid="ignore"):
                new_lo = np.asarray(self._min + c * (lo - self._min), np.float32)
                new_hi = np.asarray(self._max + c * (hi - self._max), np.float32)
            if not (np.all(np.isfinite(new_lo)) and np.all(np.isfinite(new_hi))):
                raise ValueError("x: the moving average of min/max overflowed float32")
            self._min, self._max = new_lo, new_hi

    def _compute_range(self):
        return self._min, self._max


class MinMaxObserver(_MinMaxBase):
    """Per-tensor range ``[min, max]`` of everything observed.

    Reproduces ``torch.ao.quantization.MinMaxObserver`` (per_tensor_affine /
    per_tensor_symmetric) bit for bit: min and max are exact in float32 and the
    QParams come from the same float32 arithmetic. Memory: two float32 numbers.
    Streaming is exact: any split into batches gives the same result.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; per-tensor (``spec.axis`` must be ``None``).
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, reduce_range: bool = False):
        _require_per_tensor(spec, "MinMaxObserver")
        super().__init__(spec, reduce_range)


class MovingAverageMinMaxObserver(_MinMaxBase):
    """Per-tensor moving average of each batch's min and max.

    The first batch sets ``min_val, max_val``; each later batch updates
    ``min_val = min_val + c * (batch_min - min_val)`` (likewise ``max_val``) with
    ``c = float32(averaging_constant)``, every operation rounded to float32. This is
    ``torch.ao.quantization.MovingAverageMinMaxObserver``'s arithmetic, reproduced bit
    for bit. The result depends on how the data is split into batches.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; per-tensor (``spec.axis`` must be ``None``).
    averaging_constant : float, default 0.01
        The weight ``c`` of each new batch, in ``(0, 1]``; rounded to float32.
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01, reduce_range: bool = False):
        _require_per_tensor(spec, "MovingAverageMinMaxObserver")
        self._averaging = _check_averaging_constant(averaging_constant)
        super().__init__(spec, reduce_range)

    @property
    def averaging_constant(self) -> float:
        """The averaging constant as used (rounded to float32)."""
        return float(self._averaging)


def _require_per_channel(spec: QuantSpec, cls: str) -> None:
    if isinstance(spec, QuantSpec) and spec.axis is None:
        raise ValueError(
            f"spec.axis must be an integer for {cls} (per-channel: axis=k; per-group: "
            "axis=k, block_size=B), got axis=None; use MinMaxObserver for per-tensor ranges"
        )


class PerChannelMinMaxObserver(_MinMaxBase):
    """Running min and max per channel (``spec.axis``) or per group (``axis`` + ``block_size``).

    Per-channel, it reproduces ``torch.ao.quantization.PerChannelMinMaxObserver``
    (``ch_axis = spec.axis``, per_channel_affine / per_channel_symmetric) bit for bit.
    Per-group (blocked) has no PyTorch counterpart; min and max are taken over each block
    of ``block_size`` elements along ``axis`` (the last block may be shorter), at every
    index of the other axes. Every batch must give the same parameter shape (same number
    of channels; per-group, the same shape). float32, exact; memory two float32 per
    parameter.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; ``spec.axis`` must be an integer (per-channel,
        or per-group with ``spec.block_size``).
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, reduce_range: bool = False):
        _require_per_channel(spec, "PerChannelMinMaxObserver")
        super().__init__(spec, reduce_range)


class MovingAveragePerChannelMinMaxObserver(_MinMaxBase):
    """Moving average of each batch's per-channel (or per-group) min and max.

    The update is :class:`MovingAverageMinMaxObserver`'s, element-wise in float32; it
    reproduces ``torch.ao.quantization.MovingAveragePerChannelMinMaxObserver`` bit for bit.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; ``spec.axis`` must be an integer (per-channel,
        or per-group with ``spec.block_size``).
    averaging_constant : float, default 0.01
        The weight ``c`` of each new batch, in ``(0, 1]``; rounded to float32.
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01, reduce_range: bool = False):
        _require_per_channel(spec, "MovingAveragePerChannelMinMaxObserver")
        self._averaging = _check_averaging_constant(averaging_constant)
        super().__init__(spec, reduce_range)

    @property
    def averaging_constant(self) -> float:
        """The averaging constant as used (rounded to float32)."""
        return float(self._averaging)


# ----------------------------------------------------------------------------------------
# streaming histogram


def _pow2_ceil(v: float) -> float:
    """Smallest power of two >= v (v > 0), exact."""
    m, e = math.frexp(v)
    return v if m == 0.5 else math.ldexp(1.0, e)


class _Histogram:
    """Counts of float32 values over ``bins`` bins of power-of-two width (see module docs).

    Bin ``j`` is ``[lo + j*w, lo + (j+1)*w)``. ``lo = k*w`` with ``|k| <= bins + 1`` and
    ``lo <= 0 < lo + bins*w``, so the edges ``(k + j) * w`` are exact in float64 (and in
    float32). ``vmin``/``vmax`` are the exact extremes seen.
    """

    __slots__ = ("bins", "counts", "lo", "width", "vmin", "vmax")

    def __init__(self, bins: int):
        self.bins = bins
        self.counts = None
        self.lo = self.width = 0.0
        self.vmin = self.vmax = 0.0

    def add(self, x: np.ndarray) -> None:
        vmin, vmax = float(x.min()), float(x.max())
        a, b = min(vmin, 0.0), max(vmax, 0.0)
        if self.counts is None:
            self.vmin, self.vmax = vmin, vmax
        else:
            self.vmin, self.vmax = min(self.vmin, vmin), max(self.vmax, vmax)
        self._cover(a, b)
        lo, w = self.lo, self.width
        x64 = x.astype(np.float64).ravel()
        idx = np.floor((x64 - lo) / w)
        # x - lo may round (tiny x far from lo); the edges lo + idx*w are exact, so fix
        # the at most one-bin error by comparing against them.
        idx -= (lo + idx * w) > x64
        idx += (lo + (idx + 1) * w) <= x64
        self.counts += np.bincount(idx.astype(np.intp), minlength=self.bins)

    def _cover(self, a: float, b: float) -> None:
        """Make the window hold ``[a, b]`` (``a <= 0 <= b``) and the occupied bins.

        The new width is the smallest power of two, not below the current one, whose
        aligned window ``[floor(A / w) w, ... + bins w)`` holds both; old bins nest in new
        ones, so their counts move exactly.
        """
        B = self.bins
        if self.counts is None:
            # Widths below float32's spacing at the data's magnitude would be meaningless.
            w = float(np.spacing(np.float32(max(-a, b))))
            old = None
        else:
            if self.lo <= a and b < self.lo + B * self.width:
                return
            w = self.width
            j0, j1 = self.occupied() if self.counts.any() else (0, -1)
            old = (j0, j1)
            if j1 >= j0:
                a = min(a, self.lo + j0 * w)
                b = max(b, self.lo + (j1 + 1) * w)
        # w >= (b - a) / (bins - 1) always fits (lo > a - w); w >= (b - a) / bins is needed.
        w = max(w, _pow2_ceil((b - a) / B) if b > a else w)
        while True:
            lo = math.floor(a / w) * w
            if b < lo + B * w:
                break
            w *= 2.0
        counts = np.zeros(B, np.int64)
        if old is not None and old[1] >= old[0]:
            j = np.arange(old[0], old[1] + 1)
            # Old bin j is new bin (shift + j) // ratio, in exact (Python) integers: both
            # lo's are multiples of the old width, and the widths' ratio is a power of two.
            shift = int(self.lo / self.width) - int(lo / self.width)
            ratio = int(w / self.width)
            q, r = divmod(shift, ratio)
            if ratio <= 1 << 40:
                new_j = q + (r + j) // ratio
            else:  # j < bins < ratio, so (r + j) // ratio is 0 or 1
                new_j = q + (j >= ratio - r)
            np.add.at(counts, new_j, self.counts[j])
        self.counts, self.lo, self.width = counts, float(lo), w

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> np.ndarray:
        return self.lo + np.arange(self.bins + 1) * self.width

    def occupied(self) -> tuple[int, int]:
        nz = np.flatnonzero(self.counts)
        return int(nz[0]), int(nz[-1])


def _order_stat(counts, left, right, ranks) -> np.ndarray:
    """Estimate the order statistics ``ranks`` (0-based ints) from binned counts.

    Within a bin the ``c`` values are taken as evenly spread over ``[left, right]``
    (the bin clipped to the observed extremes): the r-th one at
    ``left + (r + 0.5) / c * (right - left)``. Each estimate lies in the true value's
    (closed) bin, so it is off by at most one bin width. float64.
    """
    cum = np.cumsum(counts)
    j = np.searchsorted(cum, ranks, side="right")
    prev = cum[j] - counts[j]
    u = (ranks - prev + 0.5) / counts[j]
    return left[j] + u * (right[j] - left[j])


def _quantile(counts, left, right, q: float, first=None, last=None) -> float:
    """``q``-quantile (0..1) as ``np.percentile``'s linear method: between the order
    statistics ``floor(h)`` and ``floor(h) + 1``, ``h = q (n - 1)``. ``first``/``last``
    are the exact smallest/largest values when known. float64."""
    n = int(counts.sum())
    h = q * (n - 1)
    i0 = min(int(math.floor(h)), n - 1)
    i1 = min(i0 + 1, n - 1)
    est = _order_stat(counts, left, right, np.array([i0, i1]))
    for k, i in enumerate((i0, i1)):
        if i == 0 and first is not None:
            est[k] = first
        if i == n - 1 and last is not None:
            est[k] = last
    return float(est[0] + (h - i0) * (est[1] - est[0]))


class _HistogramObserver(Observer):
    """Per-tensor observer over a streaming histogram of ``x`` (of ``|x|`` for
    :class:`EntropyObserver`); see the module docstring."""

    def __init__(self, spec: QuantSpec, bins: int, reduce_range: bool):
        _require_per_tensor(spec, type(self).__name__)
        self._bins = check_int(bins, "bins", lo=2)
        super().__init__(spec, reduce_range)

    def reset(self) -> None:
        self._hist = _Histogram(self._bins)
        self._cached = None

    @property
    def observed(self) -> bool:
        return self._hist.counts is not None

    @property
    def bins(self) -> int:
        """Number of histogram bins (fixed)."""
        return self._bins

    def _update(self, x: np.ndarray) -> None:
        self._hist.add(x.ravel())
        self._cached = None

    def _check_observed(self) -> None:
        if not self.observed:
            self._range()  # raises the standard message

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)``: int64 counts of length ``bins`` and float64 edges of length
        ``bins + 1`` (bin ``j`` is ``[edges[j], edges[j+1])``; edges are exact)."""
        self._check_observed()
        return self._hist.counts.copy(), self._hist.edges()

    @property
    def bin_width(self) -> float:
        """Current bin width (a power of two)."""
        self._check_observed()
        return self._hist.width

    @property
    def count(self) -> int:
        """Number of values observed."""
        return self._hist.total if self.observed else 0

    def _compute_range(self):
        if self._cached is None:
            lo, hi = self._search()
            self._cached = (np.array(lo, np.float32), np.array(hi, np.float32))
        return self._cached

    @abstractmethod
    def _search(self) -> tuple[float, float]:
        """The chosen ``(min_val, max_val)`` from the histogram."""

    def _bin_extents(self):
        """Occupied bins ``j0..j1``: counts and extents clipped to the observed extremes."""
        h = self._hist
        j0, j1 = h.occupied()
        e = h.edges()[j0 : j1 + 2]
        counts = h.counts[j0 : j1 + 1].astype(np.float64)
        left = np.maximum(e[:-1], h.vmin)
        right = np.minimum(e[1:], h.vmax)
        return counts, left, right


# ----------------------------------------------------------------------------------------
# percentile


class PercentileObserver(_HistogramObserver):
    """Percentile range from a streaming histogram.

    Asymmetric spec: ``[P(100 - p), P(p)]`` of ``x``. Symmetric spec: ``a = P(p)`` of
    ``|x|`` (as NVIDIA's TensorRT / pytorch-quantization percentile calibration) and the
    range ``[-a, a]`` clipped to the observed ``[min, max]``.

    ``P`` follows ``np.percentile``'s default (linear) definition; from the histogram it
    is within one bin width (:attr:`bin_width`) of ``np.percentile`` of all the observed
    data, and ``P(100)`` / ``P(0)`` are the exact extremes. Histogram counts are int64,
    the estimate float64, the range returned float32.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; per-tensor (``spec.axis`` must be ``None``).
    percentile : float, default 99.99
        The percentile ``p``, a real number in ``[50, 100]``.
    bins : int, default 2048
        Number of histogram bins, at least 2 (fixed).
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048, reduce_range: bool = False):
        if isinstance(percentile, (bool, np.bool_)) or not isinstance(percentile, numbers.Real):
            raise TypeError(f"percentile must be a real number in [50, 100], got {percentile!r}")
        if not 50.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {percentile!r}")
        self._percentile = float(percentile)
        super().__init__(spec, bins, reduce_range)

    @property
    def percentile(self) -> float:
        return self._percentile

    def _search(self):
        h = self._hist
        q = self._percentile / 100.0
        if self._effective_spec.symmetric:
            counts, left, right, amax = _folded(h)
            a = _quantile(counts, left, right, q, last=amax)
            return max(-a, h.vmin), min(a, h.vmax)
        counts, left, right = self._bin_extents()
        lo = _quantile(counts, left, right, 1.0 - q, first=h.vmin, last=h.vmax)
        hi = _quantile(counts, left, right, q, first=h.vmin, last=h.vmax)
        return lo, hi


def _folded(h: _Histogram):
    """Histogram of ``|x|`` from that of ``x``: bins ``[t w, (t+1) w]``, since 0 is an edge.

    Returns counts, extents clipped to ``[0, max|x|]``, and ``max|x|``.
    """
    w = h.width
    z = int(round(-h.lo / w))  # index of the edge at 0
    pos = h.counts[z:]
    neg = h.counts[:z][::-1]
    n = max(len(pos), len(neg))
    counts = np.zeros(n, np.float64)
    counts[: len(pos)] += pos
    counts[: len(neg)] += neg
    amax = max(-h.vmin, h.vmax)
    last = int(np.flatnonzero(counts)[-1])
    counts = counts[: last + 1]
    t = np.arange(last + 2) * w
    return counts, t[:-1], np.minimum(t[1:], amax), amax


# ----------------------------------------------------------------------------------------
# MSE search


def _sq_error_integral(x, S, off, N):
    """``H(x) / S^3`` where ``H(x)`` is the integral from the lowest code's value to ``x``
    of ``(t - Q(t))^2 dt``: ``Q`` rounds to the nearest of the values ``S (k + off)``,
    ``k = 0..N``, and clamps outside them (``off = qmin - Z``). float64; ``x`` (n,),
    ``S``/``off`` (C, 1); returns (C, n).

    In units of S, with ``y = x / S - off`` and ``yc = clip(y, 0, N)``: each whole step
    contributes 1/12, a part ``f`` of a step ``f^3/3`` (f <= 1/2) or ``1/12 - (1-f)^3/3``,
    and the clipped excess ``r = y - yc`` contributes ``r^3 / 3`` (negative below).
    """
    y = x / S - off
    yc = np.clip(y, 0.0, float(N))
    r = y - yc
    k = np.floor(yc)
    d = yc - k - 0.5
    m = 0.5 - np.abs(d)
    part = 1.0 / 24.0 + np.copysign(1.0 / 24.0 - m * m * m / 3.0, d)
    return k / 12.0 + part + r * r * r / 3.0


def _expected_sq_error(counts, left, right, scale, zero_point, qmin, qmax) -> np.ndarray:
    """Total squared quantization error of binned data for C candidate qparams.

    Each bin's ``c`` values are taken as uniformly spread over ``[left, right]`` (a point
    mass where ``left == right``; consecutive bins must touch: ``left[1:] == right[:-1]``);
    a value's error is its distance to the nearest code's real value ``S (q - Z)``,
    clamped to ``[S (qmin - Z), S (qmax - Z)]``: rounding error inside the range,
    clipping error outside. Exact for that density up to float64 rounding.
    Returns shape (C,).
    """
    S = np.asarray(scale, np.float64)[:, None]
    off = (qmin - np.asarray(zero_point, np.float64))[:, None]
    N = qmax - qmin
    width = right - left
    wide = width > 0
    dens = np.where(wide, counts / np.where(wide, width, 1.0), 0.0)
    pts = np.append(left, right[-1])
    point = np.flatnonzero(~wide)
    out = np.empty(S.shape[0])
    chunk = max(1, (1 << 16) // len(pts))
    for c0 in range(0, S.shape[0], chunk):
        s, o = S[c0 : c0 + chunk], off[c0 : c0 + chunk]
        h = _sq_error_integral(pts, s, o, N)
        err = (np.diff(h, axis=1) @ dens) * s[:, 0] ** 3
        if len(point):
            y = left[point] / s - o
            e2 = (y - np.clip(np.rint(y), 0, N)) ** 2
            err += (e2 @ counts[point]) * s[:, 0] ** 2
        out[c0 : c0 + chunk] = err
    return out


class MSEObserver(_HistogramObserver):
    """Clipping range of least expected quantization MSE, from a streaming histogram.

    The expected squared error of a candidate range (clipping error outside, rounding
    error inside, with the exact float32 QParams that :func:`compute_qparams` gives for
    it) is integrated exactly over the histogram with values uniform within each bin
    (:meth:`expected_mse`). PyTorch's ``HistogramObserver`` minimises the same kind of
    estimate by greedily shrinking the range (``_non_linear_param_search``) with a
    ``2^bits``-bin approximation of the grid; the search here is:

    * symmetric spec: exhaustive over thresholds ``T`` at every multiple of the bin
      width below ``max|x|`` (bin edges, since 0 is one) and ``max|x|`` itself, range ``[-T, T]`` clipped to the data: the global
      minimum over these candidates (ties go to no clipping).
    * asymmetric spec: candidates for each end are the bin edges between the data's
      extreme and 0, and the extreme itself. (1) Every pair is scored with an O(1)
      approximation (clipping error exact from prefix sums of the bins' moments,
      rounding error ``S^2 / 12`` per value inside); (2) the 256 best pairs and min-max
      are scored exactly; (3) from the best of them, exact coordinate descent (the best
      lower end for the current upper end and vice versa, each an exhaustive scan)
      until neither end moves.

    A candidate replaces the current one only if strictly better, so the estimated
    error is never above min-max's, and the asymmetric result is a coordinate-wise
    minimum, not always the global one (an exhaustive search over all pairs can find a
    lower estimate). The range is float32.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; per-tensor (``spec.axis`` must be ``None``).
    bins : int, default 2048
        Number of histogram bins, at least 2 (fixed).
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048, reduce_range: bool = False):
        super().__init__(spec, bins, reduce_range)

    def expected_mse(self, min_val: npt.ArrayLike, max_val: npt.ArrayLike) -> np.ndarray:
        """Estimated mean squared error of the observed data quantized with
        ``compute_qparams(min_val, max_val, effective_spec)``.

        ``min_val``/``max_val`` are scalars or equal-shape 1-D arrays (several candidates
        at once); returns float64 of the same shape.
        """
        self._check_observed()
        lo = np.asarray(min_val, np.float32)
        hi = np.asarray(max_val, np.float32)
        shape = np.broadcast_shapes(lo.shape, hi.shape)
        err = self._errors(np.broadcast_to(lo, shape).ravel(), np.broadcast_to(hi, shape).ravel())
        return (err / self._hist.total).reshape(shape)

    def _errors(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Total squared error for float32 candidate ranges ``lo[i], hi[i]``."""
        spec = self._effective_spec.replace(axis=0, block_size=None)
        qp = compute_qparams(lo, hi, spec)
        counts, left, right = self._bin_extents()
        return _expected_sq_error(counts, left, right, qp.scale, qp.zero_point, spec.qmin, spec.qmax)

    def _search(self):
        h = self._hist
        edges = h.edges()
        vmin, vmax = h.vmin, h.vmax
        if self._effective_spec.symmetric:
            amax = max(-vmin, vmax)
            # 0 is an edge, so +-t*w are edges (on whichever side the window reaches)
            t = np.arange(1, math.ceil(amax / h.width) + 1) * h.width
            T = np.append(t[t < amax], amax).astype(np.float32)
            lo = np.maximum(-T, np.float32(vmin))
            hi = np.minimum(T, np.float32(vmax))
            err = self._errors(lo, hi)
            k = int(np.argmin(err))
            if err[-1] <= err[k]:  # prefer no clipping on ties
                k = len(T) - 1
            return float(lo[k]), float(hi[k])
        # Each end's candidates lie between the data's extreme and 0 (or the other end,
        # for data of one sign); the extremes themselves give min-max.
        lows = np.append(np.float32(vmin), edges[(edges > vmin) & (edges <= min(0.0, vmax))].astype(np.float32))
        highs = np.append(edges[(edges >= max(0.0, vmin)) & (edges < vmax)].astype(np.float32), np.float32(vmax))
        # 1. every pair, scored by the O(1) approximation; 2. the best few and min-max
        # scored exactly; 3. exact coordinate descent from the best of those.
        il, ih = 0, len(highs) - 1
        best = self._errors(lows[il : il + 1], highs[ih : ih + 1])[0]
        cand = self._approx_best_pairs(lows, highs, _N_EXACT)
        err = self._errors(lows[cand[:, 0]], highs[cand[:, 1]])
        k = int(np.argmin(err))
        if err[k] < best:
            (il, ih), best = cand[k], err[k]
        for _ in range(100):
            moved = False
            err = self._errors(lows, np.full(len(lows), highs[ih]))
            k = int(np.argmin(err))
            if err[k] < best:
                il, best, moved = k, err[k], True
            err = self._errors(np.full(len(highs), lows[il]), highs)
            k = int(np.argmin(err))
            if err[k] < best:
                ih, best, moved = k, err[k], True
            if not moved:
                break
        return float(lows[il]), float(highs[ih])

    def _approx_best_pairs(self, lows, highs, k: int) -> np.ndarray:
        """Indices ``(i, j)`` of the ``k`` pairs ``lows[i], highs[j]`` of least approximate
        error: clipping error exact (prefix sums of the bins' moments), rounding error
        taken as ``S^2 / 12`` per value inside the range. O(1) per pair, float64."""
        counts, left, right = self._bin_extents()
        mom = _Moments(counts, left, right)
        spec = self._effective_spec.replace(axis=0, block_size=None)
        rows = max(1, (1 << 20) // len(highs))
        keep_i, keep_j, keep_e = [], [], []
        for r0 in range(0, len(lows), rows):
            lo = np.repeat(lows[r0 : r0 + rows], len(highs))
            hi = np.tile(highs, min(rows, len(lows) - r0))
            qp = compute_qparams(lo, hi, spec)
            S = qp.scale.astype(np.float64)
            Z = qp.zero_point.astype(np.float64)
            gmin, gmax = S * (spec.qmin - Z), S * (spec.qmax - Z)
            m0a, m1a, m2a = mom.below(gmin)
            m0b, m1b, m2b = mom.below(gmax)
            t0, t1, t2 = mom.total
            err = (
                gmin * gmin * m0a
                - 2 * gmin * m1a
                + m2a
                + (t2 - m2b)
                - 2 * gmax * (t1 - m1b)
                + gmax * gmax * (t0 - m0b)
                + (m0b - m0a) * S * S / 12.0
            )
            top = np.argsort(err, kind="stable")[:k]
            keep_i.append(r0 + top // len(highs))
            keep_j.append(top % len(highs))
            keep_e.append(err[top])
        i, j, e = (np.concatenate(v) for v in (keep_i, keep_j, keep_e))
        top = np.argsort(e, kind="stable")[:k]
        return np.stack([i[top], j[top]], axis=1)


_N_EXACT = 256  # pairs of least approximate error that MSEObserver scores exactly


class _Moments:
    """Moments ``sum c x^p`` (p = 0, 1, 2) of binned data below a threshold, values taken
    as uniform within each bin ``[left, right]`` (consecutive bins touch). float64."""

    def __init__(self, counts, left, right):
        self.pts = np.append(left, right[-1])
        self.left, self.width, self.counts = left, right - left, counts
        l, r = left, right
        per = (counts, counts * (l + r) / 2.0, counts * (l * l + l * r + r * r) / 3.0)
        self.cum = [np.concatenate([[0.0], np.cumsum(m)]) for m in per]
        self.total = tuple(c[-1] for c in self.cum)

    def below(self, t):
        """The three moments of the values below each threshold in ``t`` (arrays like ``t``)."""
        t = np.asarray(t, np.float64)
        n = len(self.counts)
        i = np.searchsorted(self.pts, t, side="right")  # number of edges <= t
        inside = (i > 0) & (i <= n)  # t is inside bin i - 1, which has a positive width
        j = np.clip(i - 1, 0, n - 1)
        full = np.where(i > n, n, j)  # number of whole bins below t
        l = self.left[j]
        a = np.where(inside, t - l, 0.0)
        dens = np.divide(self.counts[j], self.width[j], out=np.zeros(t.shape), where=inside)
        tl = t + l
        c0, c1, c2 = self.cum
        m0 = c0[full] + dens * a
        m1 = c1[full] + dens * a * tl / 2.0
        m2 = c2[full] + dens * a * (t * t + t * l + l * l) / 3.0
        return m0, m1, m2


# ----------------------------------------------------------------------------------------
# entropy (KL) calibration


def _kl_candidates(counts: np.ndarray, levels: int, first: int):
    """KL divergences of TensorRT's calibration for ``i = first .. len(counts)`` kept bins.

    ``counts`` is the histogram of ``|x|`` up to its last occupied bin. For each ``i``:
    P = counts[:i] with the outliers ``sum(counts[i:])`` added to ``P[i-1]``; the
    ``i`` bins are split into ``min(levels, i)`` groups of ``max(i // levels, 1)``
    consecutive bins (the last group takes the remainder); Q gives each bin where
    ``P > 0`` its group's share of ``sum(counts[:i])`` (outliers excluded), equally
    among those bins, and 0 elsewhere. KL(P || Q) after normalising both, in float64;
    ``inf`` where some bin has ``P > 0`` and ``Q == 0``.
    Returns (i values, divergences).
    """
    c = counts.astype(np.float64)
    n = len(c)
    total = c.sum()
    cum = np.cumsum(c)
    ii = np.arange(first, n + 1)
    kl = np.empty(len(ii))
    for k, i in enumerate(ii):
        p = c[:i].copy()
        p[-1] += total - cum[i - 1]
        g = min(levels, i)
        size = max(i // levels, 1)
        starts = np.arange(g) * size
        lengths = np.diff(np.append(starts, i))
        nz = p > 0
        qsum = np.add.reduceat(c[:i], starts)
        nnz = np.add.reduceat(nz.astype(np.float64), starts)
        share = np.divide(qsum, nnz, out=np.zeros(g), where=nnz > 0)
        q = np.where(nz, np.repeat(share, lengths), 0.0)
        qt = q.sum()
        if qt == 0 or np.any(q[nz] == 0):
            kl[k] = np.inf
            continue
        pn = p[nz] / total
        qn = q[nz] / qt
        kl[k] = float(np.sum(pn * np.log(pn / qn)))
    return ii, kl


class EntropyObserver(_HistogramObserver):
    """Entropy (KL-divergence) calibration, TensorRT's algorithm (Migacz, GTC 2017).

    A streaming histogram of ``|x|`` (``bins`` bins from 0, power-of-two width ``w``,
    see the module docstring); let ``n`` be the number of bins up to the one holding
    ``max|x|`` (about half the bins or more, see the module docstring).
    For each candidate ``i`` from ``max(start_bin, levels)`` to ``n`` kept bins the
    reference distribution P (bins below ``i``, outliers folded into the last one) is
    compared with its quantization Q to ``levels`` levels (``2^(bits-1)`` for a signed
    spec, ``2^bits`` unsigned, as NVIDIA's pytorch-quantization; bits after
    ``reduce_range``); see :meth:`divergences` for the exact definition. The threshold
    is ``T = i * w`` (the upper edge of the last kept bin, capped at ``max|x|``) of the
    first ``i`` with the least divergence; ``i = n`` means no clipping.

    The range is ``[-T, T]`` clipped to the observed ``[min, max]``: for a symmetric
    spec the same QParams as ``[-T, T]``, and ``[0, T]`` after widening for
    non-negative data. Counts int64, divergences float64, range float32.
    Not done, deliberately: pytorch-quantization's replacement of the first bin's count
    by the second's, and MXNet's smoothing of zero bins.

    Parameters
    ----------
    spec : QuantSpec
        The quantization the range is for; per-tensor (``spec.axis`` must be ``None``).
    bins : int, default 2048
        Number of histogram bins (fixed); at least ``max(start_bin, levels)``.
    start_bin : int, default 128
        The fewest kept bins a candidate threshold may have, at least 1 (the first
        candidate is ``max(start_bin, levels)``).
    reduce_range : bool, default False
        Quantize with one bit fewer (see the module docstring).
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048, start_bin: int = 128, reduce_range: bool = False):
        self._start_bin = check_int(start_bin, "start_bin", lo=1)
        super().__init__(spec, bins, reduce_range)
        if self._first_candidate() > self._bins:
            raise ValueError(
                f"bins must be >= max(start_bin, levels) = {self._first_candidate()} for "
                f"{self._effective_spec.bits}-bit entropy calibration, got bins={self._bins}"
            )

    @property
    def levels(self) -> int:
        """Number of quantization levels on ``|x|``: ``2^(bits-1)`` signed, ``2^bits`` unsigned."""
        s = self._effective_spec
        return 1 << (s.bits - 1) if s.signed else 1 << s.bits

    def _first_candidate(self) -> int:
        return max(self._start_bin, self.levels)

    def reset(self) -> None:
        super().reset()
        self._vmin = self._vmax = None

    @property
    def start_bin(self) -> int:
        return self._start_bin

    def _update(self, x: np.ndarray) -> None:
        lo, hi = float(x.min()), float(x.max())
        self._hist.add(np.abs(x).ravel())
        self._vmin = lo if self._vmin is None else min(self._vmin, lo)
        self._vmax = hi if self._vmax is None else max(self._vmax, hi)
        self._cached = None

    def divergences(self) -> tuple[np.ndarray, np.ndarray]:
        """``(thresholds, kl)``: each candidate's threshold ``min(i * w, max|x|)`` (float64)
        and KL(P || Q) (float64, ``inf`` when Q misses mass of P).

        For ``i`` kept bins, P is the counts of bins ``0..i-1`` with every count from
        bin ``i`` on added to bin ``i-1``; the ``i`` bins form ``min(levels, i)`` groups
        of ``max(i // levels, 1)`` consecutive bins, the last group taking the
        remainder; Q spreads each group's total count of bins ``0..i-1`` (outliers
        excluded) equally over the group's bins where ``P > 0``. Both are normalised.
        """
        self._check_observed()
        h = self._hist
        n = h.occupied()[1] + 1
        first = min(self._first_candidate(), n)
        ii, kl = _kl_candidates(h.counts[:n], self.levels, first)
        return np.minimum(ii * h.width, h.vmax), kl

    def _search(self) -> tuple[float, float]:
        thresholds, kl = self.divergences()
        T = float(thresholds[int(np.argmin(kl))])
        return max(-T, self._vmin), min(T, self._vmax)
