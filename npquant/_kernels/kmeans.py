"""numba kernels of 1-D k-means (weight sharing).

Twins, in ``npquant.compression.kmeans``: ``_assign_numpy``, ``_cluster_sums_numpy``, ``_lloyd_numpy``.

Tie rule everywhere: a value exactly on the midpoint of two centroids goes to the lower
index. Midpoints are float64 ``(c[j] + c[j+1]) * 0.5``; values are float32 and are compared
after an exact widening to float64. Sums are float64, accumulated in element order (the
order of ``np.bincount``, or as prefix sums in the order of ``np.cumsum``), so the JIT,
plain Python and the twins agree bit for bit.
"""

import numpy as np

from ._jit import njit

_BLOCK = 512  # values per block in ``assign``


@njit(cache=True)
def assign(x, mid, reserve_zero, out):
    """out[i] = index of the nearest centroid of ``x[i]`` given the float64 midpoints ``mid``
    of sorted centroids (ties: lower index): the number of midpoints strictly below
    ``x[i]``. With ``reserve_zero`` an exact zero gets code 0 and every other value
    ``1 + `` that number. Counted one midpoint at a time over blocks of values, a loop
    without branches that compiles to SIMD compares (k is at most 256)."""
    n = x.shape[0]
    v = np.empty(_BLOCK, np.float64)
    cnt = np.empty(_BLOCK, np.int64)
    offset = np.int64(1) if reserve_zero else np.int64(0)
    for start in range(0, n, _BLOCK):
        size = min(_BLOCK, n - start)
        for t in range(size):
            v[t] = np.float64(x[start + t])
            cnt[t] = offset
        for j in range(mid.shape[0]):
            mj = mid[j]
            for t in range(size):
                cnt[t] += np.int64(v[t] > mj)
        for t in range(size):
            out[start + t] = np.uint8(0) if reserve_zero and v[t] == 0.0 else np.uint8(cnt[t])


@njit(cache=True)
def cluster_sums(v, idx, sums, counts):
    """sums[j] += float64(v[i]) and counts[j] += 1 for idx[i] == j, in element order.
    ``sums`` (float64) and ``counts`` (int64) must be zeroed by the caller."""
    for i in range(v.shape[0]):
        j = np.int64(idx[i])
        sums[j] += np.float64(v[i])
        counts[j] += 1


@njit(cache=True, inline="always")
def _upper(xs, lo, hi, v):
    """First index in ``[lo, hi)`` with ``xs[i] > v`` (``hi`` if none); ``xs`` sorted."""
    while lo < hi:
        m = (lo + hi) >> 1
        if np.float64(xs[m]) <= v:
            lo = m + 1
        else:
            hi = m
    return lo


@njit(cache=True)
def prefix_sums(xs, out):
    """out[0] = 0 and out[i + 1] = out[i] + float64(xs[i]) (float64, ``n + 1``), in order:
    ``np.cumsum``'s bits."""
    s = 0.0
    out[0] = s
    for i in range(xs.shape[0]):
        s += np.float64(xs[i])
        out[i + 1] = s


@njit(cache=True)
def lloyd_sorted(xs, c0, max_iter, thr):
    """Lloyd iterations on sorted float32 values ``xs`` from sorted float64 centroids ``c0``.

    One iteration: cluster ``j`` is the run ``xs[b[j]:b[j+1]]`` with ``b[j+1]`` = the number
    of values ``<= mid[j]`` (one binary search per midpoint, not one per value); its new
    centroid is the float64 mean of the run, its sum taken from float64 prefix sums of
    ``xs`` (computed once: ``P[b[j+1]] - P[b[j]]``), so an iteration costs O(k log n).
    Each cluster left empty takes, in turn, the value farthest from its current centroid
    among the two ends of each run (ties: lower position; zero distances never), which
    leaves the run it came from; as scikit-learn relocates. In a sorted run the farthest
    values are at its ends (exactly; after float64 rounding an inner value may tie with an
    end, and the end is taken), so a pointer pair per run finds them. The centroids are then sorted. Stops when the largest
    centroid move is ``<= thr`` (``converged``) or after ``max_iter`` iterations. Needs
    more distinct values than centroids. Returns ``(c, n_iter, converged)``.
    """
    n = xs.shape[0]
    k = c0.shape[0]
    c = c0.copy()
    psum = np.empty(n + 1, np.float64)
    prefix_sums(xs, psum)
    b = np.empty(k + 1, np.int64)
    sums = np.empty(k, np.float64)
    counts = np.empty(k, np.int64)
    lo = np.empty(k, np.int64)
    hi = np.empty(k, np.int64)
    new = np.empty(k, np.float64)
    n_iter = 0
    converged = False
    while n_iter < max_iter:
        n_iter += 1
        b[0] = 0
        for j in range(k - 1):
            mid = (c[j] + c[j + 1]) * 0.5
            b[j + 1] = _upper(xs, b[j], n, mid)
        b[k] = n
        n_empty = 0
        for j in range(k):
            sums[j] = psum[b[j + 1]] - psum[b[j]]
            counts[j] = b[j + 1] - b[j]
            new[j] = c[j]
            if counts[j] == 0:
                n_empty += 1
        if n_empty > 0:
            for r in range(k):
                lo[r] = b[r]
                hi[r] = b[r + 1] - 1
            for j in range(k):
                if b[j + 1] > b[j]:
                    continue
                best = -1
                best_r = -1
                best_d = 0.0
                for r in range(k):
                    if lo[r] > hi[r]:
                        continue
                    for p in (lo[r], hi[r]):
                        d = np.float64(xs[p]) - c[r]
                        d = d * d
                        if d > 0.0 and (best < 0 or d > best_d or (d == best_d and p < best)):
                            best = p
                            best_r = r
                            best_d = d
                if best < 0:
                    break
                v = np.float64(xs[best])
                sums[best_r] -= v
                counts[best_r] -= 1
                if best == lo[best_r]:
                    lo[best_r] += 1
                else:
                    hi[best_r] -= 1
                new[j] = v + 0.0
        for j in range(k):
            if b[j + 1] > b[j] and counts[j] > 0:
                new[j] = sums[j] / np.float64(counts[j])
        new.sort()
        shift = 0.0
        for j in range(k):
            d = abs(new[j] - c[j])
            if d > shift:
                shift = d
            c[j] = new[j]
        if shift <= thr:
            converged = True
            break
    return c, n_iter, converged
