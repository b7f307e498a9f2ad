"""k-means weight sharing (Deep Compression, Han et al. 2016, section 3).

A weight tensor is replaced by a per-tensor codebook of ``k = 2**bits`` float32 centroids
(``bits`` = 1..8) and, per weight, a uint8 index: the reconstruction is
``codebook[indices]``.

**Zeros** (``keep_zeros``): with a reserved zero, index 0 means the exact value 0.0 and
``codebook[0] == 0.0``; exact zeros (pruned weights) get index 0 and are not clustered, and
the other ``k - 1`` centroids, ``codebook[1:]``, are fitted to the non-zero values. So a
pruned weight reconstructs to exactly 0.0, at the price of one of the ``k`` codes. Without
it, all ``k`` centroids are fitted to all values, zeros included. ``keep_zeros="auto"`` (the
default) reserves the zero exactly when the tensor has an exact zero (``w == 0``, so
``-0.0`` too), i.e. when it was pruned; ``True`` reserves it always, even for a tensor
without zeros, and ``False`` never. Reserving a code on an unpruned tensor costs accuracy
at few bits: 2 bits then leave 3 centroids instead of 4 (``True`` was the default before
``"auto"``; on the bundled LeNet-300-100 at 2 bits it gave 91.56 % against 96.44 % without
the reserved code). ``KMeansResult.reserved_zero`` says which it was. The fitted part of
the codebook is sorted ascending.

**Fitting** runs on the values converted to float32. The initial centroids are
``"linear"`` (evenly spaced over ``[min, max]``, Deep Compression's choice: it keeps the
rare large weights), ``"density"`` (the values at the quantiles ``(j + 1/2) / k`` of their
distribution), ``"kmeans++"`` (D^2 sampling, Arthur & Vassilvitskii 2007, seeded with
``numpy.random.default_rng(seed)``), or an explicit array. Lloyd iterations follow on the
sorted values: each cluster is a run of them between two midpoints, found by one binary
search per midpoint, and its centroid (float64 while iterating) is the mean of the run
(its sum a difference of two float64 prefix sums of the sorted values, so an iteration
costs O(k log n) after one O(n) pass).
An empty cluster takes the value farthest from its current centroid (an end of some run),
which leaves its old cluster: scikit-learn's rule. The loop stops when no centroid moves
by more than ``tol * (max - min)`` (``converged=True``; ``tol=0`` means an exact fixed
point) or after ``max_iter`` iterations. The centroids are then rounded to float32 and every value
is assigned to its nearest float32 centroid (ties to the lower index), so the indices
are optimal for the returned codebook. Everything is deterministic; only ``"kmeans++"``
uses ``seed``.

**Fewer distinct values than centroids**: when the values to cluster have at most as many
distinct values as there are centroids to fit, the codebook holds those values exactly
(inertia 0; Lloyd is skipped: ``n_iter=0``, ``converged=True``) and the unused entries
repeat the largest value. Equal entries are then allowed; the indices use the first of
them. When there is nothing to cluster (every weight is zero and ``keep_zeros=True``), the
codebook is all zeros. Never an error, never NaN.

**Fine-tuning** (Deep Compression, eq. 3): with the index of every weight fixed, the
gradient of a centroid is the sum of the gradients of the weights that share it
(:func:`centroid_gradient`, :func:`finetune_centroids`); ``reduction="mean"`` divides it by
the cluster's size, which is eq. 3 with the learning rate divided by the cluster size (the
stable choice for plain SGD: :mod:`npquant.training.kmeans_qat`).
:func:`reaverage_centroids` is the simpler alternative that sets each centroid to the mean
of its current weights.

Each function runs numba kernels (``backend="numba"``) or their NumPy twins in this
module (``backend="numpy"``); both give identical bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array, as_int_array, check_bool, check_choice, check_int, check_real
from .._kernels import kmeans as _k
from ..affine import BACKENDS

KMEANS_INITS = ("linear", "density", "kmeans++")


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """A fitted codebook and the index of every weight.

    Attributes
    ----------
    codebook : float32 array ``(2**bits,)``
        ``codebook[r:]`` sorted ascending with ``r = 1`` if
        ``reserved_zero`` (then ``codebook[0] == 0.0``) else ``r = 0``.
    indices : uint8 array
        The shape of the weights.
    bits : int
        1..8.
    inertia : float
        float64 sum of squared errors ``sum((w - codebook[indices])**2)``, which is
        the sum over the clustered values (reserved zeros contribute nothing).
    n_iter : int
        Lloyd iterations run.
    converged : bool
        The tolerance was met.
    reserved_zero : bool
        Index 0 is the reserved exact zero (``keep_zeros=True``, or ``"auto"``
        and the tensor had an exact zero).

    Notes
    -----
    The arrays are read-only views.
    """

    codebook: np.ndarray
    indices: np.ndarray
    bits: int
    inertia: float
    n_iter: int
    converged: bool
    reserved_zero: bool = False

    def __post_init__(self):
        for name in ("codebook", "indices"):
            view = np.asarray(getattr(self, name)).view()
            view.flags.writeable = False
            object.__setattr__(self, name, view)


def reconstruct(result: KMeansResult) -> np.ndarray:
    """``result.codebook[result.indices]``: float32, the weights' shape.

    Parameters
    ----------
    result : KMeansResult
        A fitted codebook and indices.

    Returns
    -------
    numpy.ndarray
        float32 of ``result.indices``' shape.
    """
    if not isinstance(result, KMeansResult):
        raise TypeError(f"result must be a KMeansResult, got {type(result).__name__}")
    return result.codebook[result.indices]


# ---------------------------------------------------------------------------- checks


def _check_indices(indices, k: int, name: str = "indices") -> np.ndarray:
    idx = as_int_array(indices, name)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{name} must lie in [0, {k - 1}] (k={k}), got values in [{lo}, {hi}]")
    return idx


def _check_grad(grad, shape, name: str = "grad") -> np.ndarray:
    """A finite float array of ``shape``, as float64 (exact for float16/32/64)."""
    g = np.asarray(grad)
    if g.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {g.dtype}")
    if g.shape != tuple(shape):
        raise ValueError(f"{name} has shape {g.shape}, expected the indices' shape {tuple(shape)}")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{name} contains NaN or infinity")
    return g.astype(np.float64)


def _check_codebook(codebook, k: int | None = None, name: str = "codebook") -> np.ndarray:
    cb = as_float_array(codebook, name)
    if cb.ndim != 1 or (k is not None and cb.shape[0] != k):
        want = "(k,)" if k is None else f"({k},)"
        raise ValueError(f"{name} must have shape {want}, got {cb.shape}")
    return cb


def _reserved(reserved_zero, codebook) -> bool:
    if reserved_zero is None:
        return codebook is not None and bool(codebook[0] == 0.0)
    return check_bool(reserved_zero, "reserved_zero")


# ---------------------------------------------------------------------------- init


def initial_centroids(x: npt.ArrayLike, k: int, *, init: str = "linear", seed: int = 0) -> np.ndarray:
    """The initial centroids :func:`kmeans_quantize` starts from: float64 ``(k,)``, sorted.

    Centroids may repeat when ``x`` has fewer than ``k`` distinct values.

    Parameters
    ----------
    x : array_like of float
        The values to cluster (finite floats, any shape, converted to float32; zeros
        are ordinary values here).
    k : int
        Number of centroids, 1..65536.
    init : str, default ``"linear"``
        ``"linear"`` (``linspace(min, max, k)``; the midrange for ``k = 1``),
        ``"density"`` (the ``floor((2j + 1) n / 2k)``-th smallest value, j = 0..k-1),
        ``"kmeans++"`` (first centroid uniform, each next one drawn with probability
        proportional to the squared distance to the nearest chosen one; O(n k)).
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` for ``"kmeans++"``, >= 0.

    Returns
    -------
    numpy.ndarray
        float64 ``(k,)``, sorted ascending.
    """
    k = check_int(k, "k", lo=1, hi=65536)
    check_choice(init, "init", KMEANS_INITS)
    seed = check_int(seed, "seed", lo=0)
    x = as_float_array(x, "x")
    return _init(np.sort(x.ravel()), k, init, seed)


def _init(xs: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Initial centroids from sorted float32 ``xs`` (float64, sorted)."""
    n = xs.shape[0]
    lo, hi = float(xs[0]), float(xs[-1])
    if init == "linear":
        return np.array([(lo + hi) * 0.5]) if k == 1 else np.linspace(lo, hi, k)
    if init == "density":
        return xs[(2 * np.arange(k, dtype=np.int64) + 1) * n // (2 * k)].astype(np.float64)
    rng = np.random.default_rng(seed)
    x64 = xs.astype(np.float64)
    c = np.empty(k, np.float64)
    c[0] = x64[int(rng.integers(n))]
    d = x64 - c[0]
    d2 = d * d
    for j in range(1, k):
        cum = np.cumsum(d2)
        if not cum[-1] > 0.0:  # fewer distinct values than k: repeat
            c[j:] = c[j - 1]
            break
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        if i >= n:  # u rounded up to the total
            i = int(np.flatnonzero(d2 > 0.0)[-1])
        c[j] = x64[i]
        d = x64 - c[j]
        d2 = np.minimum(d2, d * d)
    return np.sort(c)


# ---------------------------------------------------------------------------- twins


def _assign_numpy(x, mid, reserve_zero):
    """NumPy twin of ``_kernels.kmeans.assign``."""
    idx = np.searchsorted(mid, x, side="left")  # compared in float64
    if reserve_zero:
        idx = np.where(x == 0, 0, idx + 1)
    return idx.astype(np.uint8)


def _cluster_sums_numpy(v, idx, k):
    """NumPy twin of ``_kernels.kmeans.cluster_sums``: (float64 sums, int64 counts)."""
    idx = idx.astype(np.intp)
    sums = np.bincount(idx, weights=v.astype(np.float64), minlength=k)
    counts = np.bincount(idx, minlength=k).astype(np.int64)
    return sums, counts


def _lloyd_numpy(xs, c0, max_iter, thr):
    """NumPy twin of ``_kernels.kmeans.lloyd_sorted``."""
    n = xs.shape[0]
    x64 = xs.astype(np.float64)
    psum = np.cumsum(np.concatenate(([0.0], x64)))  # from 0.0, as the kernel: 0.0 + -0.0 is +0.0
    c = c0.copy()
    n_iter, converged = 0, False
    while n_iter < max_iter:
        n_iter += 1
        mid = (c[:-1] + c[1:]) * 0.5
        b = np.concatenate(([0], np.searchsorted(xs, mid, side="right"), [n]))
        counts = np.diff(b)
        sums = psum[b[1:]] - psum[b[:-1]]
        new = c.copy()
        empty = np.flatnonzero(counts == 0)
        left = counts.copy()
        lo, hi = b[:-1].copy(), b[1:] - 1  # the ends of each run still in it
        for j in empty:
            runs = np.flatnonzero(lo <= hi)
            ends = np.concatenate((lo[runs], hi[runs]))
            runs = np.concatenate((runs, runs))
            d = x64[ends] - c[runs]
            d2 = d * d
            if not np.any(d2 > 0.0):
                break
            i = np.lexsort((ends, -d2))[0]  # farthest end, then lowest position
            p, r = ends[i], runs[i]
            sums[r] -= x64[p]
            left[r] -= 1
            if p == lo[r]:
                lo[r] += 1
            else:
                hi[r] -= 1
            new[j] = x64[p] + 0.0
        ok = (counts > 0) & (left > 0)
        new[ok] = sums[ok] / left[ok]
        new.sort()
        shift = np.max(np.abs(new - c))
        c = new
        if shift <= thr:
            converged = True
            break
    return c, n_iter, converged


def _sums(v, idx, k, backend):
    if backend == "numpy":
        return _cluster_sums_numpy(v, idx, k)
    sums = np.zeros(k, np.float64)
    counts = np.zeros(k, np.int64)
    _k.cluster_sums(v, idx, sums, counts)
    return sums, counts


# ---------------------------------------------------------------------------- fitting


def kmeans_quantize(
    w: npt.ArrayLike,
    bits: int,
    *,
    init: str | npt.ArrayLike = "linear",
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    keep_zeros: bool | Literal["auto"] = "auto",
    backend: str = "numba",
) -> KMeansResult:
    """Fit a ``2**bits``-entry codebook to ``w`` by 1-D k-means; see the module docstring.

    Parameters
    ----------
    w : float array
        Finite, non-empty, any shape; converted to float32 first.
    bits : int
        1..8.
    init : str or array
        ``"linear"``, ``"density"``, ``"kmeans++"`` or an array of the initial centroids
        to fit (``2**bits - 1`` of them when the zero is reserved, else ``2**bits``; with
        ``keep_zeros="auto"`` that depends on whether ``w`` has an exact zero; sorted here).
    max_iter : int
        Lloyd iterations at most (0: the initial centroids as they are).
    tol : float
        Stop when no centroid moves by more than ``tol * (max - min)`` of the clustered
        values; 0 waits for an exact fixed point.
    seed : int
        For ``"kmeans++"``.
    keep_zeros : ``"auto"`` (default), True or False
        Reserve index 0 for exact zeros
        (pruned weights), which then stay exactly 0.0: ``True`` always, ``False`` never,
        ``"auto"`` when ``w`` has an exact zero (``w == 0``), so that an unpruned tensor
        keeps all ``2**bits`` codes for its values (module docstring).
    backend : ``"numba"`` or ``"numpy"``
        Identical results.

    Returns
    -------
    KMeansResult
        ``indices`` is uint8 of ``w``'s shape.
    """
    bits = check_int(bits, "bits", lo=1, hi=8)
    max_iter = check_int(max_iter, "max_iter", lo=0)
    tol = check_real(tol, "tol", lo=0.0)
    seed = check_int(seed, "seed", lo=0)
    if isinstance(keep_zeros, str):
        check_choice(keep_zeros, "keep_zeros", ("auto",))
    else:
        check_bool(keep_zeros, "keep_zeros")
    check_choice(backend, "backend", BACKENDS)
    w = as_float_array(w, "w")
    keep_zeros = bool(np.any(w == 0)) if keep_zeros == "auto" else bool(keep_zeros)
    k = 1 << bits
    k_fit = k - 1 if keep_zeros else k
    c_init = None
    if isinstance(init, str):
        check_choice(init, "init", KMEANS_INITS)
    else:
        c_init = np.asarray(init)
        if c_init.dtype.kind not in "fiu" or c_init.shape != (k_fit,):
            raise ValueError(
                f"init must be one of {', '.join(map(repr, KMEANS_INITS))} or a real array of "
                f"shape ({k_fit},) (2**bits{' - 1' if keep_zeros else ''} centroids), got "
                f"{c_init.dtype} {c_init.shape}"
            )
        c_init = np.sort(c_init.astype(np.float64))
        if not np.all(np.isfinite(c_init)):
            raise ValueError("init contains NaN or infinity")

    flat = np.ascontiguousarray(w).ravel()
    xs = np.sort(flat[flat != 0] if keep_zeros else flat)
    n_iter, converged = 0, True
    if xs.size == 0:
        c = np.zeros(k_fit, np.float64)
    else:
        new_value = np.concatenate(([True], xs[1:] != xs[:-1]))
        if np.count_nonzero(new_value) <= k_fit:
            distinct = xs[new_value]
            c = np.pad(distinct.astype(np.float64), (0, k_fit - distinct.size), mode="edge")
        else:
            c0 = _init(xs, k_fit, init, seed) if c_init is None else c_init
            thr = tol * (float(xs[-1]) - float(xs[0]))
            if backend == "numpy":
                c, n_iter, converged = _lloyd_numpy(xs, c0, max_iter, thr)
            else:
                c, n_iter, converged = _k.lloyd_sorted(xs, c0, max_iter, thr)
            n_iter, converged = int(n_iter), bool(converged)
    fitted = c.astype(np.float32) + np.float32(0.0)  # + 0: no -0.0 entries
    codebook = np.concatenate((np.zeros(1, np.float32), fitted)) if keep_zeros else fitted

    f64 = fitted.astype(np.float64)
    mid = (f64[:-1] + f64[1:]) * 0.5  # exact midpoints of float32 centroids
    if backend == "numpy":
        indices = _assign_numpy(flat, mid, keep_zeros)
    else:
        indices = np.empty(flat.shape, np.uint8)
        _k.assign(flat, mid, keep_zeros, indices)
    d = flat.astype(np.float64) - codebook.astype(np.float64)[indices]
    return KMeansResult(
        codebook=codebook,
        indices=indices.reshape(w.shape),
        bits=bits,
        inertia=float(np.sum(d * d)),
        n_iter=n_iter,
        converged=converged,
        reserved_zero=keep_zeros,
    )


# ---------------------------------------------------------------------------- fine-tuning


REDUCTIONS = ("sum", "mean")


def _centroid_grad64(grad, idx, k, reduction, backend) -> np.ndarray:
    """float64 ``(k,)``: per-index sums of ``grad`` (float64, checked), or their means
    (0 for an unused index)."""
    sums, counts = _sums(grad.ravel(), np.ascontiguousarray(idx).ravel(), k, backend)
    if reduction == "mean":
        sums = np.divide(sums, counts, out=np.zeros(k), where=counts > 0)
    return sums


def centroid_gradient(
    grad: npt.ArrayLike, indices: npt.ArrayLike, k: int, *, reduction: str = "sum", backend: str = "numba"
) -> np.ndarray:
    """Gradient of the loss with respect to each centroid (Deep Compression, eq. 3).

    Summed in float64 in element order, divided in float64, rounded once.

    Parameters
    ----------
    grad : float array
        dL/dW for the reconstructed weights ``W = codebook[indices]``, finite, of the
        indices' shape.
    indices : integer array
        The index of each weight, in ``[0, k - 1]``.
    k : int
        Number of centroids, 1..65536.
    reduction : ``"sum"`` or ``"mean"``, default ``"sum"``
        ``"sum"`` (eq. 3, the exact gradient): entry ``j`` is the sum of ``grad`` over
        the weights with index ``j``; ``"mean"``: that sum divided by the number of those
        weights (the mean gradient of the cluster, eq. 3 scaled by ``1 / cluster size``).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.

    Returns
    -------
    numpy.ndarray
        float32 ``(k,)``; 0 for an unused index.
    """
    k = check_int(k, "k", lo=1, hi=65536)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(backend, "backend", BACKENDS)
    idx = _check_indices(indices, k)
    g = _check_grad(grad, idx.shape)
    return _centroid_grad64(g, idx, k, reduction, backend).astype(np.float32)


def finetune_centroids(
    codebook: npt.ArrayLike,
    grad: npt.ArrayLike,
    indices: npt.ArrayLike,
    lr: float,
    *,
    reserved_zero: bool | None = None,
    reduction: str = "sum",
    backend: str = "numba",
) -> np.ndarray:
    """One gradient step on the shared weights: ``codebook - lr * centroid_gradient``.

    Computed in float64 from the float64 gradient sums (or means, ``reduction`` as in
    :func:`centroid_gradient`) and rounded once to float32. With ``"sum"`` a centroid
    shared by ``n`` weights moves about ``n`` times as far as one weight would at the same
    ``lr``: divide ``lr`` by the cluster size, or use ``"mean"``, which does just that per
    cluster (:mod:`npquant.training.kmeans_qat` shows the difference). The indices do not
    change, so the result need not be sorted.

    Parameters
    ----------
    codebook : float array (k,)
        The current centroids.
    grad : float array
        dL/dW for ``codebook[indices]``, finite, of the indices' shape.
    indices : integer array
        The index of each weight, in ``[0, k - 1]``.
    lr : float
        The learning rate.
    reserved_zero : bool or None, default None
        Hold ``codebook[0]`` at 0.0 (the pruned weights' code); ``None`` means "if
        ``codebook[0]`` is exactly 0.0", which is always the case for a
        :func:`kmeans_quantize` result with ``reserved_zero``.
    reduction : ``"sum"`` or ``"mean"``, default ``"sum"``
        As in :func:`centroid_gradient`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.

    Returns
    -------
    numpy.ndarray
        float32 ``(k,)``; an update that overflows float32 is a ValueError.
    """
    cb = _check_codebook(codebook)
    k = cb.shape[0]
    lr = check_real(lr, "lr")
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(backend, "backend", BACKENDS)
    idx = _check_indices(indices, k)
    g = _check_grad(grad, idx.shape)
    reserved = _reserved(reserved_zero, cb)
    sums = _centroid_grad64(g, idx, k, reduction, backend)
    with np.errstate(over="ignore"):
        new = (cb.astype(np.float64) - lr * sums).astype(np.float32)
    if not np.all(np.isfinite(new)):
        raise ValueError(f"lr={lr} makes the codebook overflow float32")
    if reserved:
        new[0] = 0.0
    return new


def reaverage_centroids(
    w: npt.ArrayLike,
    indices: npt.ArrayLike,
    k: int,
    codebook: npt.ArrayLike | None = None,
    *,
    reserved_zero: bool | None = None,
    backend: str = "numba",
) -> np.ndarray:
    """Each centroid becomes the mean of the current weights ``w`` that share it.

    ``w`` (float, converted to float32) and ``indices`` have the same shape. Means are
    float64 sums over counts, rounded once to float32. An empty cluster keeps
    ``codebook[j]`` (pass the old codebook) or becomes 0.0 when ``codebook`` is None.
    ``reserved_zero`` as in :func:`finetune_centroids` (``None``: if ``codebook`` is given
    and ``codebook[0] == 0.0``). Returns float32 ``(k,)``.

    Parameters
    ----------
    w : float array
        The current weights (converted to float32), of the indices' shape.
    indices : integer array
        The index of each weight, in ``[0, k - 1]``.
    k : int
        Number of centroids, 1..65536.
    codebook : float array (k,) or None, default None
        The old codebook, whose entries empty clusters keep.
    reserved_zero : bool or None, default None
        Keyword-only; hold entry 0 at 0.0 (see above).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.

    Returns
    -------
    numpy.ndarray
        float32 ``(k,)``.
    """
    k = check_int(k, "k", lo=1, hi=65536)
    check_choice(backend, "backend", BACKENDS)
    w = as_float_array(w, "w")
    idx = _check_indices(indices, k)
    if w.shape != idx.shape:
        raise ValueError(f"w has shape {w.shape}, expected the indices' shape {idx.shape}")
    cb = None if codebook is None else _check_codebook(codebook, k)
    reserved = _reserved(reserved_zero, cb)
    sums, counts = _sums(np.ascontiguousarray(w).ravel(), np.ascontiguousarray(idx).ravel(), k, backend)
    out = np.zeros(k, np.float32) if cb is None else cb.copy()
    full = counts > 0
    out[full] = (sums[full] / counts[full]).astype(np.float32)
    if reserved:
        out[0] = 0.0
    return out
