"""Figures for learning quantization (matplotlib, from the ``plot`` extra).

``pip install "npquant[plot]"`` installs matplotlib. It is imported inside the functions
that draw, never by ``import npquant`` nor by ``import npquant.app.plot``; a function that
needs it and does not find it raises ``ModuleNotFoundError`` naming the extra.

Each ``plot_*`` function computes what it shows with the library (``fit_qparams``,
``fake_quantize``, ``quantization_error``, ``requantize``...) and returns the matplotlib
``Figure``. Figures are made with ``matplotlib.figure.Figure``, not ``pyplot``, so no
window opens and no global figure list grows. The functions that draw one panel take
``ax=``, an Axes of your own (for example from ``matplotlib.pyplot.subplots()`` in a
notebook): they draw into it and return its figure. :func:`save_figure` writes a PNG
with matplotlib's Agg renderer.

* :func:`plot_histogram`: a tensor's histogram with the quantization grid (the
  dequantized levels), the clipping range and a k-means codebook;
* :func:`plot_error_heatmaps`: ``|w - fq(w)|`` of a weight matrix for each option
  (per-tensor, per-channel, per-group, symmetric, asymmetric), on one colour scale;
* :func:`plot_sqnr_vs_bits`: SQNR against bits for each option, and accuracy when given;
* :func:`plot_tie_map`: where the requantization modes of :mod:`npquant.requant.fixedpoint`
  give different codes, over accumulators and multipliers;
* :func:`plot_compression_tradeoff`: accuracy against compression ratio;
* :func:`write_demo_plots`: all of them, on the bundled models and on
  :func:`npquant.models.cases.outlier_mlp`, as PNG files (``npquant demo --plots DIR``).

Artists that tests and programs look for carry a ``gid`` (``"quantization_grid"``,
``"clip_min"``, ``"clip_max"``, ``"codebook"``, ``"histogram"``, ``"sqnr:<label>"``,
``"accuracy:<label>"``, ``"tradeoff"``).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array, check_bool, check_choice, check_int, check_qparams
from ..qparams import QParams, QuantSpec
from ..requant.fixedpoint import INT32_MAX, INT32_MIN
from ..requant.modes import REQUANT_MODES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..compression.kmeans import KMeansResult

PLOT_EXTRA_HINT = "install npquant[plot] (pip install 'npquant[plot]') for matplotlib"

TIE_MULTIPLIERS = (0.5, 0.25, 0.375, 1 / 3, 0.3, 0.2, 0.1, 0.9)
"""Default multipliers of :func:`tie_map`. 0.5, 0.25 and 0.375 make exact ties
(``acc * M = k + 1/2``) at every 2nd, 4th and 8th accumulator; 1/3 never makes one, yet
TFLite's double rounding differs from the others; 0.3, 0.2, 0.1 and 0.9 tie in decimal
but not as binary numbers, so each mode's own representation of ``M`` (31-bit ``m0``,
float32) decides."""


def require_matplotlib() -> None:
    """Raise ``ModuleNotFoundError`` naming the ``plot`` extra unless matplotlib imports."""
    _matplotlib()


def _matplotlib():
    """Import matplotlib's Figure and Axes, or raise ModuleNotFoundError naming the extra."""
    try:
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ModuleNotFoundError(f"npquant.app.plot needs matplotlib: {PLOT_EXTRA_HINT}") from exc
    return Figure, Axes


def _figure_and_axes(ax, figsize):
    Figure, Axes = _matplotlib()
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def _new_figure(figsize):
    Figure, _ = _matplotlib()
    return Figure(figsize=figsize, layout="constrained")


def _check_title(title):
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    return title


def _check_fraction(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1] (a fraction), got {type(v).__name__} {v!r}")
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (a fraction, not a percentage), got {v!r}")
    return v


def _check_qparams_per_tensor(qparams, name="qparams") -> QParams:
    qparams = check_qparams(qparams, name)
    if qparams.spec.axis is not None:
        raise ValueError(
            f"{name} must be per-tensor (spec.axis=None) to draw one grid, got "
            f"{qparams.spec.granularity} with axis={qparams.spec.axis}; plot one channel "
            "with its own per-tensor qparams"
        )
    return qparams


def grid_levels(qparams: QParams) -> np.ndarray:
    """Every value the per-tensor ``qparams`` can represent: ``dequantize(q)`` for each
    code ``q`` from ``qmin`` to ``qmax``, float32, ascending, ``qmax - qmin + 1`` values.

    Parameters
    ----------
    qparams : QParams
        Per-tensor qparams.

    Returns
    -------
    numpy.ndarray
        float32 ``(qmax - qmin + 1,)``.
    """
    from ..affine import dequantize

    qp = _check_qparams_per_tensor(qparams)
    spec = qp.spec
    codes = np.arange(spec.qmin, spec.qmax + 1).astype(spec.dtype)
    return dequantize(codes, qp)


# ----------------------------------------------------------------------------- histogram


def plot_histogram(
    x: npt.ArrayLike,
    qparams: QParams | None = None,
    *,
    codebook: npt.ArrayLike | KMeansResult | None = None,
    bins: int = 100,
    log: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    label: str = "values",
) -> Figure:
    """Histogram of a tensor with its quantization grid, clipping range and k-means codebook.

    Parameters
    ----------
    x : float array, finite, non-empty, any shape
        Flattened; converted to float32.
    qparams : QParams, per-tensor, optional
        Draws one thin vertical line per level (``qmax - qmin + 1`` lines, the values of
        :func:`grid_levels`, gid ``"quantization_grid"``) and two dashed lines at the
        clipping range ``[S (qmin - Z), S (qmax - Z)]`` (gids ``"clip_min"``,
        ``"clip_max"``): values outside it saturate to the end levels.
    codebook : 1-D float array or KMeansResult, optional
        k-means centroids (``KMeansResult.codebook``), one dotted line each (gid
        ``"codebook"``).
    bins : int >= 1
        Histogram bins over the span of the data and the clipping range.
    log : bool
        Logarithmic count axis (for heavy-tailed data).
    ax : matplotlib Axes, optional
        Draw into it; default a new figure.
    title, label : str
        Axes title; legend label of the histogram.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ..compression.kmeans import KMeansResult

    fig, ax = _figure_and_axes(ax, (7.0, 4.0))
    x = as_float_array(x, "x").ravel()
    bins = check_int(bins, "bins", lo=1)
    log = check_bool(log, "log")
    title = _check_title(title)
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")
    levels = None if qparams is None else grid_levels(_check_qparams_per_tensor(qparams))
    cb = None
    if codebook is not None:
        cb = codebook.codebook if isinstance(codebook, KMeansResult) else codebook
        cb = as_float_array(cb, "codebook")
        if cb.ndim != 1:
            raise ValueError(f"codebook must be 1-D (the centroids), got shape {cb.shape}")
    lo, hi = float(x.min()), float(x.max())
    for extra in (levels, cb):
        if extra is not None:
            lo, hi = min(lo, float(extra.min())), max(hi, float(extra.max()))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    ax.stairs(counts, edges, fill=True, alpha=0.5, color="C0", label=f"{label} ({x.size} values)", gid="histogram")
    trans = ax.get_xaxis_transform()
    if levels is not None:
        spec = qparams.spec
        kind = "symmetric" if spec.symmetric else "asymmetric"
        ax.vlines(
            levels,
            0,
            1,
            transform=trans,
            colors="C1",
            linewidth=0.6,
            alpha=0.7,
            label=f"{spec.bits}-bit {kind} grid ({len(levels)} levels)",
            gid="quantization_grid",
        )
        ax.axvline(
            float(levels[0]),
            color="C3",
            linestyle="--",
            linewidth=1.5,
            gid="clip_min",
            label=f"clipping range [{float(levels[0]):.4g}, {float(levels[-1]):.4g}]",
        )
        ax.axvline(float(levels[-1]), color="C3", linestyle="--", linewidth=1.5, gid="clip_max")
    if cb is not None:
        ax.vlines(
            cb,
            0,
            1,
            transform=trans,
            colors="C2",
            linewidth=1.4,
            linestyles=":",
            label=f"k-means codebook ({len(cb)} centroids)",
            gid="codebook",
        )
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper right")
    return fig


# ------------------------------------------------------------------------- error heatmaps


def error_options(bits: int = 4, group_size: int = 16) -> dict:
    """The options the course compares, as ``{label: QuantSpec}`` (signed, min-max):
    per-tensor symmetric, per-tensor asymmetric, per-channel symmetric (axis 0) and
    per-group symmetric (axis 1, ``group_size`` inputs of a row).

    Parameters
    ----------
    bits : int, default 4
        Bits of every spec, 2..16.
    group_size : int, default 16
        Block size of the per-group option, >= 1.

    Returns
    -------
    dict of str to QuantSpec
        The four options, by label.
    """
    bits = check_int(bits, "bits", lo=2, hi=16)
    group_size = check_int(group_size, "group_size", lo=1)
    return {
        "per-tensor symmetric": QuantSpec(bits=bits, symmetric=True),
        "per-tensor asymmetric": QuantSpec(bits=bits),
        "per-channel symmetric": QuantSpec(bits=bits, symmetric=True, axis=0),
        f"per-group({group_size}) symmetric": QuantSpec(bits=bits, symmetric=True, axis=1, block_size=group_size),
    }


def _check_options(options, name="options") -> dict:
    if not isinstance(options, dict) or not options:
        raise TypeError(f"{name} must be a non-empty dict of label -> QuantSpec, got {type(options).__name__}")
    for k, v in options.items():
        if not isinstance(k, str):
            raise TypeError(f"{name} keys must be str labels, got {type(k).__name__} {k!r}")
        if not isinstance(v, QuantSpec):
            raise TypeError(f"{name}[{k!r}] must be a QuantSpec, got {type(v).__name__}")
    return options


def _fake_quantized(w: np.ndarray, options, method: str) -> dict:
    from ..affine import fake_quantize
    from ..qparams import fit_qparams

    return {
        label: fake_quantize(w, fit_qparams(w, spec), method=method) for label, spec in _check_options(options).items()
    }


def plot_error_heatmaps(
    w: npt.ArrayLike,
    options: dict | None = None,
    *,
    method: str = "divide",
    ncols: int | None = None,
    cmap: str = "viridis",
    title: str | None = None,
) -> Figure:
    """The quantization error ``|w - fq(w)|`` of a weight matrix as a heatmap per option.

    Parameters
    ----------
    w : float array of 2 or more dimensions, ``(out, in, ...)``
        Shown as ``(out, rest)``: row ``i`` is output channel ``i``.
    options : dict of label -> QuantSpec, optional
        Default :func:`error_options` (4 bits). Min-max qparams from
        :func:`~npquant.qparams.fit_qparams`, then :func:`~npquant.affine.fake_quantize`
        with ``method``.
    method : str, default ``"divide"``
        The ``method`` of :func:`~npquant.affine.fake_quantize`.
    ncols : int, optional
        Panels per row (default: all in one row up to 3, else 2).
    cmap, title : str
        Colour map (one colour scale, from 0 to the largest error of all options), and
        the figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        One image per option (``Axes.images[0].get_array()`` is the error, float32
        ``(out, rest)``), titled with the label, the MSE and the SQNR; one colour bar.
    """
    from ..affine import quantization_error

    w = as_float_array(w, "w")
    if w.ndim < 2:
        raise ValueError(f"w must have 2 or more dimensions (out, in, ...), got shape {w.shape}")
    options = error_options() if options is None else _check_options(options)
    title = _check_title(title)
    fqs = _fake_quantized(w, options, method)
    errs = {label: np.abs(w - fq) for label, fq in fqs.items()}
    n = len(errs)
    ncols = (n if n <= 3 else 2) if ncols is None else check_int(ncols, "ncols", lo=1)
    nrows = math.ceil(n / ncols)
    rows2d = w.shape[0]
    aspect_w = min(6.0, 2.0 + 4.0 * w[0].size / max(w[0].size, rows2d))
    fig = _new_figure((aspect_w * ncols + 1.0, 3.2 * nrows + (0.4 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmax = max(float(e.max()) for e in errs.values()) or 1.0
    im = None
    for k, (label, err) in enumerate(errs.items()):
        ax = axes.flat[k]
        e2 = err.reshape(rows2d, -1)
        im = ax.imshow(e2, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        q = quantization_error(w, fqs[label])
        ax.set_title(f"{label}\nMSE {q.mse:.3g}, SQNR {q.sqnr_db:.1f} dB", fontsize="medium")
        ax.set_xlabel("input index" if w.ndim == 2 else "input x kernel index")
        ax.set_ylabel("output channel")
    for ax in list(axes.flat)[n:]:
        ax.remove()
    fig.colorbar(im, ax=[a for a in axes.flat[:n]], label="|w - fq(w)|", shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------- SQNR vs bits


def _bits_list(bits, name="bits") -> list:
    try:
        items = [check_int(b, name, lo=2, hi=16) for b in bits]
    except TypeError as exc:
        if "must be an integer" in str(exc):
            raise
        raise TypeError(f"{name} must be a sequence of ints in [2, 16], got {type(bits).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty")
    return items


def sqnr_vs_bits(
    x: npt.ArrayLike, options: dict | None = None, bits: Iterable[int] = range(2, 9), *, method: str = "divide"
) -> dict:
    """SQNR (dB) of ``x`` fake-quantized at each bit width, for each option.

    ``options`` maps labels to QuantSpecs whose ``bits`` is replaced by each of ``bits``
    (default :func:`error_options`); min-max qparams (:func:`~npquant.qparams.fit_qparams`).

    Parameters
    ----------
    x : float array
        The tensor, finite, non-empty.
    options : dict of str to QuantSpec, optional
        Default :func:`error_options` ``()``.
    bits : sequence of int, default ``range(2, 9)``
        The bit widths, each 2..16.
    method : str, default ``"divide"``
        Keyword-only; the ``method`` of :func:`~npquant.affine.fake_quantize`.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{label: float64 array of len(bits)}`` (``inf`` for an exact reconstruction).
    """
    from ..affine import fake_quantize, quantization_error
    from ..qparams import fit_qparams

    x = as_float_array(x, "x")
    options = error_options() if options is None else _check_options(options)
    bits = _bits_list(bits)
    out = {}
    for label, spec in options.items():
        vals = []
        for b in bits:
            s = spec.replace(bits=b)
            vals.append(quantization_error(x, fake_quantize(x, fit_qparams(x, s), method=method)).sqnr_db)
        out[label] = np.array(vals, dtype=np.float64)
    return out


def _bits_panel(ax, bits, series: dict, gid: str, ylabel: str, title: str) -> None:
    """One line per series against ``bits`` (gid ``"<gid>:<label>"``), labelled axes."""
    for label, v in series.items():
        ax.plot(bits, v, marker="o", label=label, gid=f"{gid}:{label}")
    ax.set_xlabel("bits")
    ax.set_ylabel(ylabel)
    ax.set_xticks(bits)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)


def plot_sqnr_vs_bits(
    x: npt.ArrayLike,
    options: dict | None = None,
    bits: Iterable[int] = range(2, 9),
    *,
    accuracy: dict | None = None,
    float_accuracy: float | None = None,
    method: str = "divide",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """SQNR against bit width for several options, and accuracy when given.

    Parameters
    ----------
    x : float array
        The tensor (e.g. a weight matrix); see :func:`sqnr_vs_bits` for ``options``,
        ``bits`` and ``method``. One line per option (gid ``"sqnr:<label>"``), its y data
        the SQNR values in dB.
    options : dict of str to QuantSpec, optional
        As in :func:`sqnr_vs_bits`.
    bits : sequence of int, default ``range(2, 9)``
        As in :func:`sqnr_vs_bits`.
    accuracy : dict of label -> sequence of fractions, optional
        One value in [0, 1] per bit width, e.g. the test accuracy of a model quantized
        with that option; drawn in percent on a second panel (gid ``"accuracy:<label>"``).
    float_accuracy : float in [0, 1], optional
        Drawn as a dashed line on the accuracy panel.
    method : str, default ``"divide"``
        As in :func:`sqnr_vs_bits`.
    ax : matplotlib Axes, optional
        Only without ``accuracy`` (which needs two panels).
    title : str, optional
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    bits_l = _bits_list(bits)
    title = _check_title(title)
    acc = None
    if accuracy is not None:
        if not isinstance(accuracy, dict) or not accuracy:
            raise TypeError(f"accuracy must be a non-empty dict of label -> sequence, got {type(accuracy).__name__}")
        acc = {}
        for label, vals in accuracy.items():
            vals = list(vals)
            if len(vals) != len(bits_l):
                raise ValueError(f"accuracy[{label!r}] has {len(vals)} values; bits has {len(bits_l)}")
            acc[str(label)] = np.array([_check_fraction(v, f"accuracy[{label!r}]") for v in vals])
        if ax is not None:
            raise ValueError("ax must be None when accuracy is given (the figure has two panels)")
    if float_accuracy is not None:
        if acc is None:
            raise ValueError("float_accuracy needs accuracy= (it is drawn on the accuracy panel)")
        float_accuracy = _check_fraction(float_accuracy, "float_accuracy")
    values = sqnr_vs_bits(x, options, bits_l, method=method)
    if acc is None:
        fig, ax_s = _figure_and_axes(ax, (6.0, 4.0))
    else:
        fig = _new_figure((11.0, 4.0))
        ax_s, ax_a = fig.subplots(1, 2)
    _bits_panel(ax_s, bits_l, values, "sqnr", "SQNR (dB)", "signal-to-quantization-noise ratio")
    if acc is not None:
        if float_accuracy is not None:
            ax_a.axhline(
                100 * float_accuracy,
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"float ({100 * float_accuracy:.2f} %)",
                gid="float_accuracy",
            )
        _bits_panel(ax_a, bits_l, {k: 100 * v for k, v in acc.items()}, "accuracy", "accuracy (%)", "accuracy")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------ tie map


@dataclass(frozen=True)
class TieMap:
    """Where the requantization modes disagree, from :func:`tie_map`.

    multipliers : float64 (m,); acc : int64 (n,); modes : tuple of mode names;
    codes : int64 (len(modes), m, n), the output code of each mode;
    pattern : int64 (m, n), 0 where every mode gives the same code, else ``k + 1`` for
    ``patterns[k]``; patterns : tuple of tuples, each the codes of the modes minus their
    minimum (e.g. ``(1, 1, 0, 0)``: the first two modes give one code more);
    labels : tuple of str, one per pattern (e.g. ``"fp32 = onnx < tflite = tflite_single"``).
    """

    multipliers: np.ndarray
    acc: np.ndarray
    modes: tuple
    codes: np.ndarray
    pattern: np.ndarray
    patterns: tuple
    labels: tuple


def _pattern_label(modes, key) -> str:
    groups = {}
    for m, k in zip(modes, key):
        groups.setdefault(k, []).append(m)
    return " < ".join(" = ".join(groups[k]) for k in sorted(groups))


def tie_map(
    multipliers: float | Sequence[float] = TIE_MULTIPLIERS,
    acc_min: int = -64,
    acc_max: int = 64,
    *,
    zero_point: int = 0,
    qmin: int = INT32_MIN,
    qmax: int = INT32_MAX,
    modes: str | Sequence[str] = REQUANT_MODES,
) -> TieMap:
    """The output code of every requantization mode for each accumulator in
    ``[acc_min, acc_max]`` and each multiplier, and where they disagree.

    Codes come from :func:`npquant.requant.modes.requantize` (``zero_point``, ``qmin``,
    ``qmax`` as there; the default int32 range shows rounding alone, no saturation).
    At most 2^20 accumulators per multiplier and 256 multipliers.

    Parameters
    ----------
    multipliers : float or sequence of float, default ``TIE_MULTIPLIERS``
        1 to 256 positive, finite multipliers.
    acc_min, acc_max : int, default -64 and 64
        The accumulator range, inclusive, in int32, fewer than 2^20 apart.
    zero_point : int, default 0
        Keyword-only; the output zero point.
    qmin, qmax : int, default the int32 range
        Keyword-only; the output code range.
    modes : str or sequence of str, default ``REQUANT_MODES``
        At least two requantization modes.

    Returns
    -------
    TieMap
        The codes per mode, multiplier and accumulator, and the disagreement patterns.
    """
    from ..requant.modes import requantize

    m = np.atleast_1d(np.asarray(multipliers))
    if m.dtype.kind not in "fiu":
        raise TypeError(f"multipliers must be real numbers, got dtype {m.dtype}")
    m = m.astype(np.float64)
    if m.ndim != 1 or not 1 <= m.size <= 256:
        raise ValueError(f"multipliers must be 1 to 256 values, got shape {np.shape(multipliers)}")
    if not np.all(np.isfinite(m)) or not np.all(m > 0):
        raise ValueError("multipliers must be positive and finite")
    acc_min = check_int(acc_min, "acc_min", lo=INT32_MIN, hi=INT32_MAX)
    acc_max = check_int(acc_max, "acc_max", lo=acc_min, hi=INT32_MAX)
    if acc_max - acc_min >= 1 << 20:
        raise ValueError(f"acc_max - acc_min must be below 2^20 (a map, not a sweep), got {acc_max - acc_min}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if len(modes) < 2:
        raise ValueError(f"modes must name at least two of {REQUANT_MODES}, got {modes!r}")
    for mode in modes:
        check_choice(mode, "modes", REQUANT_MODES)
    acc = np.arange(acc_min, acc_max + 1, dtype=np.int64)
    codes = np.stack(
        [
            np.stack([requantize(acc, float(mult), zero_point, qmin, qmax, mode=mode).astype(np.int64) for mult in m])
            for mode in modes
        ]
    )
    low = codes.min(axis=0)
    rel = codes - low
    differ = np.any(codes != codes[0], axis=0)
    pattern = np.zeros(differ.shape, np.int64)
    keys = {}
    for i, j in zip(*np.nonzero(differ)):
        key = tuple(int(v) for v in rel[:, i, j])
        pattern[i, j] = keys.setdefault(key, len(keys) + 1)
    patterns = tuple(sorted(keys, key=keys.get))
    return TieMap(
        multipliers=m,
        acc=acc,
        modes=modes,
        codes=codes,
        pattern=pattern,
        patterns=patterns,
        labels=tuple(_pattern_label(modes, k) for k in patterns),
    )


def plot_tie_map(
    multipliers: float | Sequence[float] = TIE_MULTIPLIERS,
    acc_min: int = -64,
    acc_max: int = 64,
    *,
    zero_point: int = 0,
    qmin: int = INT32_MIN,
    qmax: int = INT32_MAX,
    modes: str | Sequence[str] = REQUANT_MODES,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Map of where the requantization modes give different codes (see :func:`tie_map`).

    One row per multiplier (labelled with it and its number of disagreements), one column
    per accumulator; white where every mode agrees, one colour per pattern of
    disagreement, named in the legend by the order of the modes' codes (``a < b`` means
    mode ``a``'s code is lower). ``Axes.images[0].get_array()`` is
    :attr:`TieMap.pattern`.

    Parameters
    ----------
    multipliers, acc_min, acc_max, zero_point, qmin, qmax, modes
        As in :func:`tie_map`.
    ax : matplotlib Axes, optional
        Draw into it; default a new figure.
    title : str, optional
        The title; default one naming what is drawn.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    title = _check_title(title)
    t = tie_map(multipliers, acc_min, acc_max, zero_point=zero_point, qmin=qmin, qmax=qmax, modes=modes)
    fig, ax = _figure_and_axes(ax, (10.0, 1.2 + 0.45 * len(t.multipliers) + 0.25 * max(1, len(t.patterns))))
    palette = matplotlib.colormaps["tab10"].colors
    colors = ["white"] + [palette[k % len(palette)] for k in range(len(t.patterns))]
    ax.imshow(
        t.pattern,
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=len(colors) - 0.5,
        aspect="auto",
        interpolation="nearest",
        extent=(t.acc[0] - 0.5, t.acc[-1] + 0.5, len(t.multipliers) - 0.5, -0.5),
    )
    counts = (t.pattern > 0).sum(axis=1)
    ax.set_yticks(range(len(t.multipliers)))
    ax.set_yticklabels([f"M={mult:.6g} ({c})" for mult, c in zip(t.multipliers, counts)])
    ax.set_xlabel("accumulator")
    ax.set_ylabel("multiplier (disagreements)")
    handles = [Patch(facecolor=colors[k + 1], edgecolor="0.5", label=lab) for k, lab in enumerate(t.labels)]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.18),
            ncol=2,
            fontsize="small",
            title="codes where modes disagree (a < b: a's code is lower)",
        )
    ax.set_title(
        title or f"requantization: round(acc * M) + {zero_point} by mode; white: all {len(t.modes)} modes agree"
    )
    return fig


# -------------------------------------------------------------------------- compression


def plot_compression_tradeoff(
    points: Iterable[tuple[float, float, str]],
    *,
    float_accuracy: float | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Accuracy against compression ratio, one labelled point per configuration.

    Parameters
    ----------
    points : iterable of ``(ratio, accuracy, label)``
        ``ratio`` > 0 (original bytes / compressed bytes), ``accuracy`` a fraction in
        [0, 1], ``label`` a str. Drawn as one scatter (gid ``"tradeoff"``, offsets
        ``(ratio, 100 * accuracy)``) on a logarithmic ratio axis, each point annotated
        with its label.
    float_accuracy : float in [0, 1], optional
        The uncompressed model's accuracy, a dashed line.
    ax : matplotlib Axes, optional
        Draw into it; default a new figure.
    title : str, optional
        The axes' title; none by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure_and_axes(ax, (7.0, 4.5))
    title = _check_title(title)
    rows = []
    for i, p in enumerate(points):
        try:
            ratio, acc, label = p
        except (TypeError, ValueError):
            raise TypeError(f"points[{i}] must be a (ratio, accuracy, label) triple, got {p!r}") from None
        if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, numbers.Real):
            raise TypeError(f"points[{i}] ratio must be a positive number, got {ratio!r}")
        if not (0 < float(ratio) < float("inf")):
            raise ValueError(f"points[{i}] ratio must be positive and finite, got {ratio!r}")
        if not isinstance(label, str):
            raise TypeError(f"points[{i}] label must be a str, got {type(label).__name__}")
        rows.append((float(ratio), _check_fraction(acc, f"points[{i}] accuracy"), label))
    if not rows:
        raise ValueError("points is empty")
    r = np.array([p[0] for p in rows])
    a = np.array([100 * p[1] for p in rows])
    ax.scatter(r, a, zorder=3, gid="tradeoff")
    for ratio, acc, label in rows:
        ax.annotate(label, (ratio, 100 * acc), textcoords="offset points", xytext=(5, 4), fontsize="small")
    if float_accuracy is not None:
        fa = _check_fraction(float_accuracy, "float_accuracy")
        ax.axhline(
            100 * fa, color="k", linestyle="--", linewidth=1, label=f"float32 ({100 * fa:.2f} %)", gid="float_accuracy"
        )
        ax.legend(fontsize="small", loc="lower left")
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    # room on the right for the labels of the last points
    ax.set_xlim(r.min() / 1.15, r.max() * 1.8)
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}x")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
    ax.set_xlabel("compression ratio (original bytes / compressed bytes)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------- files


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG of ``figsize * dpi`` pixels with matplotlib's Agg renderer.

    The file is written to a temporary name and renamed (never half-written); its folder
    must exist.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or os.PathLike
        The PNG file to write.
    dpi : int, default 100
        Keyword-only; dots per inch, 10..1000.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from .._fileio import atomic_write

    Figure, _ = _matplotlib()
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    dpi = check_int(dpi, "dpi", lo=10, hi=1000)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, backend="agg"), "path")
    return Path(path)


#: The figures of :func:`write_demo_plots`: file name -> what it shows.
DEMO_PLOTS = {
    "lenet_fc1_histogram.png": "LeNet-300-100 fc1 weights, the 4-bit symmetric per-tensor grid, its clipping "
    "range and the 4-bit k-means codebook",
    "lenet_fc2_error_heatmaps.png": "|w - fq(w)| of LeNet-300-100 fc2 at 4 bits: per-tensor symmetric and "
    "asymmetric, per-channel, per-group(16)",
    "lenet_sqnr_accuracy_vs_bits.png": "SQNR of LeNet-300-100 fc2 and test accuracy of the weight-only quantized "
    "model (all weights) against bits, 2 to 8, per option",
    "requant_tie_map.png": "where the requantization modes (tflite, tflite_single, fp32, onnx) disagree, "
    "accumulators -64..64, eight multipliers",
    "lenet_compression_tradeoff.png": "LeNet-300-100 test accuracy against compression ratio: k-means at 8/4/2 "
    "bits, pruning + k-means + Huffman (no retraining)",
    "case_fc1_error_heatmaps.png": "npquant.models.cases.outlier_mlp: |w - fq(w)| of fc1 (outlier row 0) at 4 bits, "
    "per-tensor vs per-channel vs per-group(8)",
    "case_hidden_histogram.png": "npquant.models.cases.outlier_mlp: the hidden activation (log counts) with the 4-bit "
    "grid of the min-max, MSE and entropy observers",
    "case_sqnr_accuracy_vs_bits.png": "npquant.models.cases.outlier_mlp: SQNR of fc1 and integer-model test accuracy "
    "against weight bits, per-tensor vs per-channel",
}


def _weight_only(state: dict, spec: QuantSpec) -> dict:
    """``state`` with every 2-D/4-D tensor fake-quantized with min-max qparams of ``spec``."""
    from ..affine import fake_quantize
    from ..qparams import fit_qparams

    return {k: fake_quantize(v, fit_qparams(v, spec)) if v.ndim in (2, 4) else v for k, v in state.items()}


def write_demo_plots(
    directory: str | os.PathLike,
    *,
    names: Iterable[str] | None = None,
    models_dir: str | os.PathLike | None = None,
    dpi: int = 100,
    progress: Callable[[str], object] | None = None,
) -> list:
    """Compute and write the figures of :data:`DEMO_PLOTS` as PNG files into ``directory``.

    Parameters
    ----------
    directory : str or path
        Created (with its parents) if missing; files of the same names are replaced.
    names : iterable of str, optional
        A subset of :data:`DEMO_PLOTS`' keys (default: all).
    models_dir : str or path, optional
        Folder of ``lenet_300_100.npz`` (default: the bundled reference models).
    dpi : int
        Pixels per inch: each PNG is its figure size (inches) times ``dpi``.
    progress : callable, optional
        Called with a message before each figure.

    Returns
    -------
    list of pathlib.Path
        The files written, in :data:`DEMO_PLOTS`' order.

    Raises
    ------
    ModuleNotFoundError
        matplotlib is missing (checked before any work); the message names the extra.
    """
    _matplotlib()
    if names is None:
        wanted = set(DEMO_PLOTS)
    else:
        wanted = {names} if isinstance(names, str) else set(names)
        unknown = sorted(str(n) for n in wanted - set(DEMO_PLOTS))
        if unknown or not wanted:
            raise ValueError(
                f"names must be a non-empty subset of {', '.join(DEMO_PLOTS)}; got "
                f"{', '.join(unknown) if unknown else 'nothing'}"
            )
    progress = progress or (lambda msg: None)
    if not callable(progress):
        raise TypeError(f"progress must be callable or None, got {type(progress).__name__}")
    dpi = check_int(dpi, "dpi", lo=10, hi=1000)
    ctx = _DemoData(models_dir)
    if any(n.startswith("lenet_") for n in wanted):
        ctx.check()
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"directory {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = []
    todo = [n for n in DEMO_PLOTS if n in wanted]
    for k, name in enumerate(todo):
        progress(f"plot {k + 1}/{len(todo)}: {name} ...")
        fig = _DEMO_BUILDERS[name](ctx)
        written.append(save_figure(fig, out / name, dpi=dpi))
    progress(f"wrote {len(written)} figures into {out} ({time.perf_counter() - t0:.1f} s)")
    return written


class _DemoData:
    """The data of the demo figures, loaded when first needed: LeNet-300-100 from the
    reference models and the outlier case."""

    def __init__(self, models_dir):
        from .demo import default_models_dir

        folder = default_models_dir() if models_dir is None else Path(models_dir)
        self.ref_path = Path(folder) / "lenet_300_100.npz"
        self.given = models_dir is not None

    def check(self) -> None:
        if not self.ref_path.is_file():
            raise FileNotFoundError(
                f"the reference model {str(self.ref_path)!r} does not exist"
                + (" (check models_dir, or npquant demo --models)" if self.given else "")
            )

    @functools.cached_property
    def lenet(self):
        from ..models.io import load_reference

        self.check()
        ref = load_reference(self.ref_path)
        state = {k: np.asarray(v, np.float32) for k, v in ref.state.items()}
        return ref, state

    @property
    def state(self) -> dict:
        return self.lenet[1]

    def evaluate(self, weights) -> float:
        """Test accuracy of LeNet-300-100 with ``weights`` (450 digits)."""
        from ..models.nn import build_model

        ref = self.lenet[0]
        x, y = ref.arrays["test_inputs"], ref.arrays["test_labels"]
        return float(np.mean(build_model(ref.arch, weights)(x).argmax(1) == y))

    @functools.cached_property
    def float_accuracy(self) -> float:
        return self.evaluate(self.state)

    @functools.cached_property
    def case(self):
        from ..models.cases import outlier_mlp

        return outlier_mlp()

    @property
    def case_options(self) -> dict:
        from ..models.cases import weight_spec

        return {g: weight_spec(g, 4, 8) for g in ("per-tensor", "per-channel", "per-group")}


def _demo_histogram(d: _DemoData):
    from ..compression.kmeans import kmeans_quantize
    from ..qparams import fit_qparams

    w = d.state["fc1.weight"]
    return plot_histogram(
        w,
        fit_qparams(w, QuantSpec(bits=4, symmetric=True)),
        codebook=kmeans_quantize(w, 4),
        bins=120,
        label="fc1.weight",
        title="LeNet-300-100 fc1: 4-bit symmetric per-tensor grid vs 4-bit k-means",
    )


def _demo_heatmaps(d: _DemoData):
    return plot_error_heatmaps(
        d.state["fc2.weight"], error_options(4, 16), title="LeNet-300-100 fc2 (100 x 300), 4 bits"
    )


def _demo_bits(d: _DemoData):
    bits = list(range(2, 9))
    acc = {
        label: [d.evaluate(_weight_only(d.state, spec.replace(bits=b))) for b in bits]
        for label, spec in error_options(4, 16).items()
    }
    return plot_sqnr_vs_bits(
        d.state["fc2.weight"],
        error_options(4, 16),
        bits,
        accuracy=acc,
        float_accuracy=d.float_accuracy,
        title="LeNet-300-100: SQNR of fc2; test accuracy with every weight matrix quantized (weight-only)",
    )


def _demo_ties(d: _DemoData):
    return plot_tie_map()


def _demo_tradeoff(d: _DemoData):
    from ..compression.pipeline import compress, kmeans_study

    points = [(r["ratio"], r["score"], f"k-means {r['bits']} bits") for r in kmeans_study(d.state, d.evaluate)]
    original = sum(4 * v.size for v in d.state.values())
    for sparsity in (0.5, 0.7):
        comp = compress(d.state, sparsity=sparsity)
        points.append(
            (
                original / len(comp.to_bytes(3)),
                d.evaluate(comp.rebuilt),
                f"prune {int(100 * sparsity)} % + k-means + Huffman",
            )
        )
    return plot_compression_tradeoff(
        points, float_accuracy=d.float_accuracy, title="LeNet-300-100 on digits: compression without retraining"
    )


def _demo_case_heatmaps(d: _DemoData):
    return plot_error_heatmaps(
        d.case.fc1_weight, d.case_options, title="outlier case fc1 (64 x 32, row 0 is 16x larger), 4-bit symmetric"
    )


def _demo_case_histogram(d: _DemoData):
    from ..models.cases import calibrate_hidden

    case = d.case
    h = case.hidden(case.test_x)
    fig = _new_figure((15.0, 4.0))
    axes = fig.subplots(1, 3, sharey=True)
    for a, ob in zip(axes, ("minmax", "mse", "entropy")):
        qp = calibrate_hidden(case, ob, 4)
        plot_histogram(
            h,
            qp,
            bins=150,
            log=True,
            ax=a,
            label="hidden activation",
            title=f"observer {ob}: 4-bit range [0, {float(grid_levels(qp)[-1]):.3g}]",
        )
    fig.suptitle("outlier case: hidden activation on the test inputs (channel 0 is 16x larger, Student-t inputs)")
    return fig


def _demo_case_bits(d: _DemoData):
    from ..models.cases import ptq

    case, bits = d.case, list(range(2, 9))
    acc = {
        g: [ptq(case, weight_bits=b, per_channel=(g == "per-channel")).accuracy for b in bits]
        for g in ("per-tensor", "per-channel")
    }
    return plot_sqnr_vs_bits(
        case.fc1_weight,
        d.case_options,
        bits,
        accuracy=acc,
        float_accuracy=case.accuracy(),
        title="outlier case: SQNR of fc1; integer model accuracy (8-bit activations, min-max)",
    )


_DEMO_BUILDERS = dict(
    zip(
        DEMO_PLOTS,
        (
            _demo_histogram,
            _demo_heatmaps,
            _demo_bits,
            _demo_ties,
            _demo_tradeoff,
            _demo_case_heatmaps,
            _demo_case_histogram,
            _demo_case_bits,
        ),
    )
)
