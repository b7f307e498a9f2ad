"""Magnitude pruning and relative-index sparse storage (Deep Compression, Han et al. 2016).

Pruning
-------
:func:`magnitude_mask` keeps the largest weights of one tensor, either to a target
``sparsity`` (exactly ``round(sparsity * n)`` weights pruned) or by the paper's threshold
``|w| < quality * std(w)``. :func:`magnitude_masks` does it for several named tensors, per
layer or with one global threshold over all of them (``scope="global"``). Given the
previous mask, both prune iteratively: the pruned weights stay pruned and the new mask
nests in the old one; :func:`sparsity_schedule` gives the sparsity of each step. Masks are
boolean arrays (True = kept); :func:`prune` applies one, :func:`reapply` applies a dict of
them to a dict of weights after an update, so that pruned weights stay zero during
retraining (:mod:`npquant.training.pruning` retrains with an optimizer that holds them).

Relative indexing (the paper's Fig. 2)
--------------------------------------
A tensor is flattened in C order and each stored entry keeps the *gap* from the position
of the previous entry, in ``b = index_bits`` bits, plus its value. Conventions:

* The first gap is measured from position 0, as in the figure, where the first non-zero,
  at index 1, is stored with diff 1. A non-zero at position 0 therefore has gap 0, and
  gap 0 is legal only for the first entry; every later gap lies in ``[1, 2^b - 1]``.
  Position of entry ``i`` = ``gaps[0] + ... + gaps[i]``.
* A jump larger than ``M = 2^b - 1`` (the largest ``b``-bit number) is bridged with
  filler entries placed ``M`` positions apart, each stored with gap ``M`` and value
  ``filler`` (0 by default) and counted as a stored entry: a jump ``d`` needs
  ``(d - 1) // M`` fillers. With 3 bits a gap of 8 needs one filler. (The figure draws
  its filler at a span of 8 = 2^3, which 3 bits cannot hold; here every stored gap fits
  ``b`` bits.)
* Trailing zeros cost nothing: the tensor's shape gives its length. So a shape that is
  too large cannot be told from the gaps; a container must protect the shape itself.
* An entry is "zero" when it equals ``filler``; for floats ``-0.0 == 0.0``, so a negative
  zero is not stored and decodes as ``+0.0`` (equal, not the same bits). Values keep the
  input's dtype, so k-means indices (integers) can be stored with ``filler`` set to the
  index that means zero.

Both directions are vectorized NumPy with no per-element Python loop, so there is no numba
kernel.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array, check_real

__all__ = [
    "RelativeSparse",
    "decode_relative",
    "encode_relative",
    "magnitude_mask",
    "magnitude_masks",
    "prune",
    "reapply",
    "sparsity_of",
    "sparsity_schedule",
    "SCHEDULES",
    "SCOPES",
]

SCOPES = ("layer", "global")
SCHEDULES = ("cubic", "linear", "geometric")


# ---- argument helpers --------------------------------------------------------------------


def _check_sparsity(sparsity, name: str = "sparsity") -> float:
    return check_real(sparsity, name, lo=0.0, hi=1.0, hi_open=True)


def _check_quality(quality, name: str = "quality") -> float:
    return check_real(quality, name, lo=0.0)


def _as_numeric(x, name: str) -> np.ndarray:
    """``x`` as an array of float or integer dtype; floats must be finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a floating-point or integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _as_mask(mask, name: str, shape) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array (True = kept), got dtype {m.dtype}")
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, the weights have shape {tuple(shape)}")
    return m


# ---- pruning -----------------------------------------------------------------------------


def _check_weights(w, name: str) -> np.ndarray:
    arr = np.asarray(w)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _one_of(sparsity, quality) -> None:
    if (sparsity is None) == (quality is None):
        raise ValueError(
            "give exactly one of sparsity= and quality=, got " + ("both" if sparsity is not None else "neither")
        )


def _keep_largest(mag: np.ndarray, k: int, prior) -> np.ndarray:
    """1-D keep-mask pruning the ``k`` smallest of the float64 magnitudes ``mag``, the
    entries already pruned by ``prior`` (1-D bool or None) first; ties by position."""
    if prior is not None:
        n_prior = int(mag.size - np.count_nonzero(prior))
        if k < n_prior:
            raise ValueError(
                f"the sparsity asks to prune {k} weight(s), fewer than the {n_prior} the given "
                "mask has pruned already; a mask can only grow"
            )
        mag = np.where(prior, mag, -1.0)  # magnitudes are >= 0: the pruned ones rank first
    keep = np.ones(mag.size, dtype=bool)
    keep[np.argsort(mag, kind="stable")[:k]] = False
    return keep


def magnitude_mask(
    w: npt.ArrayLike, *, sparsity: float | None = None, quality: float | None = None, mask: npt.ArrayLike | None = None
) -> np.ndarray:
    """Boolean mask of ``w``'s shape keeping the largest-magnitude weights (True = kept).

    Give exactly one of ``sparsity`` and ``quality``.

    Parameters
    ----------
    w : float array
        The weights, any shape; non-empty and finite.
    sparsity : float in [0, 1), optional
        Prune exactly ``k = round(sparsity * n)`` weights (Python's ``round``: half to
        even, of the float64 product), the ``k`` smallest ``|w|``. Ties in ``|w|`` are
        broken by position in C order: the earlier weight is pruned first. ``k`` may
        reach ``n`` (e.g. 0.96 of 10 weights).
    quality : float >= 0, optional
        The paper's threshold: prune ``|w| < quality * std(w)``, with the population
        standard deviation (``ddof=0``, over all of ``w``) and the comparison in float64.
        0 prunes nothing.
    mask : bool array of ``w``'s shape, optional
        A previous mask (iterative pruning): its pruned entries (False) stay pruned,
        whatever their value. With ``sparsity`` they are counted in ``k`` and pruned
        before any other weight (``k`` below their number is a ValueError), so the new
        mask prunes exactly ``k`` weights and nests in ``mask``; with ``quality`` the
        result is ``mask & (|w| >= quality * std(w))``.

    Returns
    -------
    numpy.ndarray
        bool of ``w``'s shape, True where the weight is kept.
    """
    _one_of(sparsity, quality)
    arr = _check_weights(w, "w")
    prior = None if mask is None else _as_mask(mask, "mask", arr.shape).reshape(-1)
    mag = np.abs(arr.astype(np.float64)).reshape(-1)
    if sparsity is not None:
        s = _check_sparsity(sparsity)
        keep = _keep_largest(mag, round(s * arr.size), prior)
    else:
        q = _check_quality(quality)
        thr = q * float(np.std(arr.astype(np.float64)))
        keep = ~(mag < thr)
        if prior is not None:
            keep &= prior
    return keep.reshape(arr.shape)


def magnitude_masks(
    weights: Mapping,
    *,
    sparsity: float | None = None,
    quality: float | None = None,
    masks: Mapping | None = None,
    scope: str = "layer",
) -> dict:
    """Magnitude masks for several named tensors, per layer (as in the paper) or global.

    Parameters
    ----------
    weights : mapping of name to float array
        The tensors, each non-empty and finite.
    sparsity, quality
        Exactly one. ``scope="layer"``: one number for every tensor in ``weights`` or a
        mapping from name to number; with a mapping, only the named tensors get a mask
        (every name must be in ``weights``); each tensor is pruned by
        :func:`magnitude_mask`. ``scope="global"``: ``sparsity`` only, one number.
    masks : mapping of name to bool array, optional
        Previous masks (iterative pruning), passed on as :func:`magnitude_mask`'s ``mask``
        (per layer) or ranked first (global); names not in ``weights`` are an error.
    scope : ``"layer"`` or ``"global"``
        ``"global"``: one threshold over all the tensors of ``weights``. Their magnitudes
        (float64) are ranked together and the ``k = round(sparsity * N)`` smallest are
        pruned, ``N`` the total number of weights; the entries already pruned by
        ``masks`` rank first. Ties in ``|w|`` are broken by position in the tensors
        concatenated in C order, in the iteration order of ``weights``: the earlier
        weight is pruned first. So a layer of small weights can lose more than
        ``sparsity`` of them, or all of them.

    Returns
    -------
    dict
        ``{name: bool mask}`` (True = kept), the shape of each tensor.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to array, got {type(weights).__name__}")
    _one_of(sparsity, quality)
    check_choice(scope, "scope", SCOPES)
    if masks is not None:
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a mapping of name to boolean array, got {type(masks).__name__}")
        unknown = [n for n in masks if n not in weights]
        if unknown:
            raise ValueError(f"masks names tensors not in weights: {unknown}")
    masks = {} if masks is None else masks
    if scope == "global":
        if quality is not None or isinstance(sparsity, Mapping):
            raise ValueError("scope='global' takes one sparsity= number (not quality=, not a mapping)")
        s = _check_sparsity(sparsity)
        if not weights:
            return {}
        arrs, priors = {}, []
        for name, w in weights.items():
            arrs[name] = _check_weights(w, f"weights[{name!r}]")
            prior = masks.get(name)
            priors.append(
                np.ones(arrs[name].size, bool)
                if prior is None
                else _as_mask(prior, f"masks[{name!r}]", arrs[name].shape).reshape(-1)
            )
        mag = np.concatenate([np.abs(a.astype(np.float64)).reshape(-1) for a in arrs.values()])
        keep = _keep_largest(mag, round(s * mag.size), np.concatenate(priors) if masks else None)
        out, start = {}, 0
        for name, a in arrs.items():
            out[name] = keep[start : start + a.size].reshape(a.shape)
            start += a.size
        return out
    key, spec = ("sparsity", sparsity) if sparsity is not None else ("quality", quality)
    if isinstance(spec, Mapping):
        unknown = [n for n in spec if n not in weights]
        if unknown:
            raise ValueError(f"{key} names tensors not in weights: {unknown}")
        per = dict(spec)
    else:
        per = {n: spec for n in weights}
    out = {}
    for name, value in per.items():
        try:
            out[name] = magnitude_mask(weights[name], mask=masks.get(name), **{key: value})
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name!r}: {e}") from None
    return out


def sparsity_schedule(target: float | Mapping[str, float], steps: int, *, kind: str = "cubic") -> list:
    """The cumulative sparsity after each step of iterative pruning, ending at ``target``.

    Han et al. (2015) prune and retrain repeatedly, each time removing more of the small
    weights, but fix no schedule; these are three common ones. For step ``i = 1..steps``
    (``t = i / steps``):

    * ``"cubic"`` (Zhu & Gupta 2017, with initial sparsity 0): ``target * (1 - (1 - t)**3)``:
      large steps first, small ones near the target, where each weight matters more;
    * ``"linear"``: ``target * t``;
    * ``"geometric"``: ``1 - (1 - target)**t``: each step prunes the same fraction of the
      weights still kept (the lottery-ticket papers' rounds, Frankle & Carbin 2019).

    Parameters
    ----------
    target : float in [0, 1), or a mapping of name to such floats
        The final sparsity (per tensor with a mapping).
    steps : int >= 1
        ``steps=1`` is one-shot pruning: ``[target]``.
    kind : ``"cubic"``, ``"linear"`` or ``"geometric"``

    Returns
    -------
    list
        ``steps`` Python floats (or, for a mapping, ``steps`` dicts of the same names),
        non-decreasing, in ``[0, target]``; the last is ``target`` exactly (float64
        arithmetic, the last value set to ``target``).
    """
    steps = check_int(steps, "steps", lo=1)
    check_choice(kind, "kind", SCHEDULES)
    if isinstance(target, Mapping):
        per = {}
        for n, v in target.items():
            try:
                per[n] = sparsity_schedule(v, steps, kind=kind)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{n!r}: {e}") from None
        return [{n: per[n][i] for n in per} for i in range(steps)]
    s = _check_sparsity(target, "target")
    out = []
    for i in range(1, steps + 1):
        t = i / steps
        v = {"cubic": s * (1.0 - (1.0 - t) ** 3), "linear": s * t, "geometric": 1.0 - (1.0 - s) ** t}[kind]
        out.append(min(max(v, out[-1] if out else 0.0), s))
    out[-1] = s
    return out


def prune(w: npt.ArrayLike, mask: npt.ArrayLike) -> np.ndarray:
    """``w`` with the entries where ``mask`` is False set to exactly +0.0 (or 0).

    Parameters
    ----------
    w : float or integer array
        The weights.
    mask : bool array of ``w``'s shape
        True where the weight is kept (no broadcasting).

    Returns
    -------
    numpy.ndarray
        A new array of ``w``'s dtype and shape.
    """
    arr = _as_numeric(w, "w")
    m = _as_mask(mask, "mask", arr.shape)
    return np.where(m, arr, arr.dtype.type(0))


def sparsity_of(w_or_mask: npt.ArrayLike) -> float:
    """Fraction of zeros: of False entries for a boolean mask, of ``== 0`` entries otherwise.

    Parameters
    ----------
    w_or_mask : numeric or bool array
        Non-empty; NaN counts as non-zero.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    arr = np.asarray(w_or_mask)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"w_or_mask must be a numeric or boolean array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError("w_or_mask is empty; its sparsity is undefined")
    kept = np.count_nonzero(arr)  # NaN counts as non-zero
    return 1.0 - kept / arr.size


def reapply(weights: Mapping, masks: Mapping, *, inplace: bool = False) -> dict:
    """Apply ``masks`` to ``weights`` again, e.g. after a gradient step during retraining.

    Every name in ``masks`` must be in ``weights`` and each mask must be boolean with its
    weight's shape; weights without a mask pass through unchanged. Returns a new dict of
    new arrays, or with ``inplace=True`` zeroes the pruned entries of the given arrays
    (which must then be writable NumPy arrays) and returns a dict of those same arrays.

    Parameters
    ----------
    weights : mapping of str to array
        The weights by name.
    masks : mapping of str to bool array
        The masks by name (True = kept), a subset of ``weights``' names.
    inplace : bool, default False
        Keyword-only; zero the pruned entries of the given arrays instead of copying.

    Returns
    -------
    dict
        Name to array, for every name in ``weights``.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to array, got {type(weights).__name__}")
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping of name to boolean array, got {type(masks).__name__}")
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    unknown = [n for n in masks if n not in weights]
    if unknown:
        raise ValueError(f"masks has names not in weights: {unknown}")
    checked = {}
    for name, mask in masks.items():
        w = weights[name]
        if inplace and not (isinstance(w, np.ndarray) and w.flags.writeable):
            raise TypeError(f"weights[{name!r}] must be a writable ndarray for inplace=True")
        arr = _as_numeric(w, f"weights[{name!r}]")
        checked[name] = (arr, _as_mask(mask, f"masks[{name!r}]", arr.shape))
    out = dict(weights)
    for name, (arr, m) in checked.items():
        if inplace:
            arr[~m] = 0
        else:
            out[name] = np.where(m, arr, arr.dtype.type(0))
    return out


# ---- relative indexing -------------------------------------------------------------------


def _gap_dtype(index_bits: int):
    return np.uint8 if index_bits <= 8 else np.uint16


def _filler_scalar(filler, dtype: np.dtype, name: str = "filler"):
    """``filler`` (None = 0) as an exact scalar of ``dtype``."""
    if filler is None:
        return dtype.type(0)
    if isinstance(filler, (bool, np.bool_)) or not isinstance(filler, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(filler).__name__} {filler!r}")
    if dtype.kind in "iu":
        if not isinstance(filler, numbers.Integral):
            if not float(filler).is_integer():
                raise ValueError(f"{name}={filler!r} is not an integer; the values are {dtype}")
        info = np.iinfo(dtype)
        if not info.min <= int(filler) <= info.max:
            raise ValueError(f"{name}={filler!r} does not fit {dtype} [{info.min}, {info.max}]")
        return dtype.type(int(filler))
    f = dtype.type(filler)
    if not np.isfinite(f) or float(f) != float(filler):
        raise ValueError(f"{name}={filler!r} is not exactly representable in {dtype}")
    return f


@dataclass(frozen=True, eq=False)
class RelativeSparse:
    """A tensor in relative-index form (see the module docstring for the conventions).

    Attributes
    ----------
    gaps : 1-D uint8 array (``index_bits`` <= 8) or uint16 array (9..16)
        ``gaps[0]`` in ``[0, 2^b - 1]``, later gaps in ``[1, 2^b - 1]``.
    values : 1-D array of the tensor's dtype
        One per gap; filler entries hold ``filler``.
    shape : tuple
        The dense tensor's shape (flattened in C order).
    index_bits : int
        1..16.
    filler
        The value meaning "zero" (default 0 of the values' dtype).
    n_fillers : int
        Number of entries holding ``filler`` (computed; for an encoding made by
        :func:`encode_relative`, the number of bridged jumps).

    Notes
    -----
    Construction validates everything and stores read-only copies, so a corrupt stream
    raises ``ValueError`` here instead of decoding to a wrong array.
    """

    gaps: np.ndarray
    values: np.ndarray
    shape: tuple
    index_bits: int
    filler: object = None
    n_fillers: int = field(init=False)

    def __post_init__(self):
        b = check_int(self.index_bits, "index_bits", lo=1, hi=16)
        shape = _check_shape(self.shape)
        values = _as_numeric(self.values, "values")
        if values.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {values.shape}")
        fill = _filler_scalar(self.filler, values.dtype)
        gaps = _check_gaps(self.gaps, b, math.prod(shape))
        if gaps.size != values.size:
            raise ValueError(f"gaps and values differ in length: {gaps.size} gaps, {values.size} values")
        values = values.copy()
        values.setflags(write=False)
        for name, v in (
            ("gaps", gaps),
            ("values", values),
            ("shape", shape),
            ("index_bits", b),
            ("filler", fill),
            ("n_fillers", int(np.count_nonzero(values == fill))),
        ):
            object.__setattr__(self, name, v)

    @property
    def n_entries(self) -> int:
        """Stored entries, fillers included."""
        return int(self.gaps.size)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __repr__(self) -> str:
        return (
            f"RelativeSparse(shape={self.shape}, index_bits={self.index_bits}, "
            f"n_entries={self.n_entries}, n_fillers={self.n_fillers}, "
            f"dtype={self.values.dtype}, filler={self.filler!r})"
        )


def _check_shape(shape) -> tuple:
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of non-negative integers, got {shape!r}") from None
    for d in dims:
        check_int(d, "shape entries", lo=0)
    return tuple(int(d) for d in dims)


def _check_gaps(gaps, index_bits: int, n: int) -> np.ndarray:
    """Range-checked read-only copy of ``gaps`` in the canonical dtype."""
    g = check_int_array(gaps, "gaps")
    if g.ndim != 1:
        raise ValueError(f"gaps must be 1-D, got shape {g.shape}")
    top = (1 << index_bits) - 1
    if g.size:
        lo, hi = int(g.min()), int(g.max())
        if lo < 0 or hi > top:
            bad = int(np.flatnonzero((g < 0) | (g > top))[0])
            raise ValueError(
                f"gap out of range: gaps[{bad}] = {int(g[bad])}, index_bits={index_bits} "
                f"allows [0, {top}] for the first gap and [1, {top}] after it"
            )
        zero_later = np.flatnonzero(g[1:] == 0)
        if zero_later.size:
            i = int(zero_later[0]) + 1
            raise ValueError(
                f"gap out of range: gaps[{i}] = 0; only the first gap may be 0 (two entries at one position)"
            )
        last = int(g.astype(np.int64).sum())
        if last >= n:
            raise ValueError(
                f"gaps run past the end of the tensor: the last entry is at position {last}, "
                f"the tensor has {n} element(s)"
            )
    out = g.astype(_gap_dtype(index_bits))
    out.setflags(write=False)
    return out


def encode_relative(w: npt.ArrayLike, index_bits: int, *, filler: float | None = None) -> RelativeSparse:
    """Relative-index form of ``w`` (any shape, flattened in C order).

    Entries equal to ``filler`` (default 0; give the index meaning zero for k-means
    indices) are skipped; every other entry is stored with its gap in ``index_bits``
    (1..16) bits, with filler entries bridging jumps larger than ``2^index_bits - 1``.
    ``w`` is a float (finite) or integer array; values keep its dtype. Exact inverse:
    :func:`decode_relative`.

    Parameters
    ----------
    w : float or integer array
        The tensor, any shape.
    index_bits : int
        Bits per gap, 1..16.
    filler : number or None, default None
        Keyword-only; the value that is skipped, exactly representable in ``w``'s dtype;
        ``None`` is 0.

    Returns
    -------
    RelativeSparse
        The gaps, values, shape, ``index_bits`` and filler.
    """
    b = check_int(index_bits, "index_bits", lo=1, hi=16)
    arr = _as_numeric(w, "w")
    fill = _filler_scalar(filler, arr.dtype)
    flat = np.ascontiguousarray(arr).reshape(-1)
    pos = np.flatnonzero(flat != fill)
    gaps, values = _encode_numpy(pos, flat[pos], b, fill)
    return RelativeSparse(gaps, values, arr.shape, b, fill)


def _encode_numpy(pos: np.ndarray, nz: np.ndarray, index_bits: int, fill):
    """Gaps and values for non-filler ``nz`` at increasing flat positions ``pos``."""
    top = (1 << index_bits) - 1
    pos = pos.astype(np.int64)
    jump = np.diff(pos, prepend=np.int64(0))  # first jump measured from position 0
    n_fill = np.maximum(jump - 1, 0) // top  # fillers bridging each jump
    slot = np.cumsum(n_fill + 1) - 1  # where each real entry lands
    total = int(slot[-1]) + 1 if pos.size else 0
    gaps = np.full(total, top, dtype=_gap_dtype(index_bits))
    gaps[slot] = jump - n_fill * top
    values = np.full(total, fill, dtype=nz.dtype)
    values[slot] = nz
    return gaps, values


def decode_relative(
    rs: RelativeSparse | npt.ArrayLike,
    values: npt.ArrayLike | None = None,
    shape: tuple[int, ...] | None = None,
    index_bits: int | None = None,
    *,
    filler: float | None = None,
) -> np.ndarray:
    """Dense array from relative-index form: ``decode_relative(rs)`` for a
    :class:`RelativeSparse`, or ``decode_relative(gaps, values, shape, index_bits,
    filler=...)`` from raw parts (validated as :class:`RelativeSparse` does).

    Returns a new array of ``shape`` and the values' dtype, ``filler`` everywhere no
    entry lands. Gaps out of range, gaps running past the end of the tensor, and gaps and
    values of different lengths raise ``ValueError``.

    Parameters
    ----------
    rs : RelativeSparse or 1-D integer array
        The encoding, or its gaps.
    values : 1-D array or None, default None
        The values, one per gap (raw parts only).
    shape : tuple of int or None, default None
        The dense shape (raw parts only).
    index_bits : int or None, default None
        Bits per gap, 1..16 (raw parts only).
    filler : number or None, default None
        Keyword-only; the filler (raw parts only); ``None`` is 0.

    Returns
    -------
    numpy.ndarray
        The dense tensor.
    """
    if isinstance(rs, RelativeSparse):
        if values is not None or shape is not None or index_bits is not None or filler is not None:
            raise TypeError("decode_relative(rs) takes no further arguments when rs is a RelativeSparse")
        # Re-validate: the object may come from elsewhere (its arrays are read-only copies).
        rs = RelativeSparse(rs.gaps, rs.values, rs.shape, rs.index_bits, rs.filler)
    else:
        missing = [n for n, v in (("values", values), ("shape", shape), ("index_bits", index_bits)) if v is None]
        if missing:
            raise TypeError(f"decode_relative(gaps, values, shape, index_bits): missing {', '.join(missing)}")
        rs = RelativeSparse(rs, values, shape, index_bits, filler)
    return _decode_numpy(rs.gaps, rs.values, rs.shape, rs.filler)


def _decode_numpy(gaps, values, shape, fill) -> np.ndarray:
    out = np.full(math.prod(shape), fill, dtype=values.dtype)
    out[np.cumsum(gaps, dtype=np.int64)] = values
    return out.reshape(shape)
