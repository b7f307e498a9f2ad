"""1-D k-means, ``npquant.kmeans_quantize``, against scikit-learn's ``KMeans``.

The weights: ``n`` float32 values drawn (seeded) from N(0, 1), or from a Laplace(0, 1)
distribution with the size label ``1e6:laplace``. 16 clusters (4 bits,
``keep_zeros=False``: all 16 centroids are fitted). Both start from the same initial
centroids, ``npquant.initial_centroids(w, 16, init="linear")`` (evenly spaced over
``[min, max]``), passed as an array.

* ``numba``: ``kmeans_quantize(w, 4, init=c0, keep_zeros=False, max_iter=300, tol=0)``,
  the public call (validation, sort, Lloyd iterations, final assignment, inertia).
* ``numpy``: the same call with ``backend="numpy"`` (the NumPy twins), same ``n``.
* ``sklearn``: ``KMeans(16, init=c0 as float32 (16, 1), n_init=1, algorithm="lloyd",
  max_iter=300, tol=0).fit(w.reshape(-1, 1))`` on the float32 weights, inside
  ``threadpoolctl.threadpool_limits(threads)`` when threadpoolctl is importable.

Stopping rule, as close as the two can be made: ``tol=0`` in both, i.e. iterate to an
exact fixed point (npquant: no centroid moves; scikit-learn: no label changes, its
"strict convergence"), at most ``max_iter=300`` (scikit-learn's default) iterations.
What still differs: npquant iterates in float64 (centroids, sums from prefix sums of
the sorted values) and assigns by exact midpoints; scikit-learn computes in the input's
float32 (its centers and sums, and distances as ``|x|^2 - 2 x c + |c|^2``). So the two
may stop at different, nearby fixed points of the discrete problem. ``info`` therefore
also gives one un-timed scikit-learn fit on the same weights as float64, which follows
npquant's arithmetic.

``work`` is ``n``: the unit is weights clustered per second by one call (whatever the
number of iterations, which ``info`` gives). Inertias are computed the same way for
every result, outside the timed region: the float64 sum of ``(w - center[label])**2``
with each implementation's own centers and labels. Checks: ``numba``'s indices against
the nearest of its centroids (NumPy ``searchsorted`` on the midpoints), ``numpy``'s
indices and codebook against ``numba``'s, scikit-learn's labels (renumbered by ascending
center) against ``numba``'s.
"""

from __future__ import annotations

import contextlib

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_count

NAME = "kmeans"
DEFAULT_SIZES = ["1e6"]
BITS = 4
MAX_ITER = 300
TOL = 0.0
DISTS = ("normal", "laplace")


def parse_size(label: str) -> tuple[int, str]:
    n, dist = parse_count(label, NAME, "1e6 or 1e6:laplace (at least 32 weights)", DISTS, minimum=32)
    return n, dist or "normal"


def _inertia(w, centers, labels) -> float:
    d = w.astype(np.float64) - np.asarray(centers, np.float64).ravel()[labels]
    return float(np.sum(d * d))


def _sorted_labels(km) -> np.ndarray:
    """scikit-learn's labels renumbered so that its centers are in ascending order."""
    rank = np.argsort(np.argsort(km.cluster_centers_.ravel(), kind="stable"), kind="stable")
    return rank[km.labels_].astype(np.uint8)


def cases(ctx):
    from npquant.compression.kmeans import initial_centroids, kmeans_quantize

    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        KMeans, sk_missing = None, f"missing: scikit-learn not installed ({exc})"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None

    def limits():
        if threadpool_limits is None:
            return contextlib.nullcontext()
        return threadpool_limits(ctx.threads)

    k = 1 << BITS
    for label in ctx.sizes:
        n, dist = parse_size(label)
        rng = np.random.default_rng(ctx.seed)
        w = (rng.standard_normal(n) if dist == "normal" else rng.laplace(size=n)).astype(np.float32)
        c0 = initial_centroids(w, k, init="linear")

        def ours(backend="numba"):
            return kmeans_quantize(w, BITS, init=c0, keep_zeros=False, max_iter=MAX_ITER, tol=TOL, backend=backend)

        def twin():
            return ours("numpy")

        r = ours()
        r_np = twin()
        same = compare(r_np.indices, r.indices)
        if same == "bit-exact" and not np.array_equal(r_np.codebook.view(np.uint32), r.codebook.view(np.uint32)):
            same = "differs: codebook"
        cb = r.codebook.astype(np.float64)  # nearest centroid of each weight, ties low
        nearest = np.searchsorted((cb[:-1] + cb[1:]) * 0.5, w.astype(np.float64), side="left")
        impls = [
            Impl("numba", ours, check=compare(r.indices, nearest.astype(np.uint8))),
            Impl("numpy", twin, check=same),
        ]
        info = {
            "weights": f"{n:,} float32 {'N(0, 1)' if dist == 'normal' else 'Laplace(0, 1)'}",
            "clusters": k,
            "init": "linear (npquant.initial_centroids), the same array for all",
            "max_iter": MAX_ITER,
            "tol": TOL,
            "work": "n weights clustered per call",
            "numba iterations": r.n_iter,
            "numba converged": r.converged,
            "numba inertia": f"{_inertia(w, r.codebook, r.indices):.6f}",
        }
        if KMeans is None:
            impls.append(Impl("sklearn", None, status=sk_missing))
        else:
            X = w.reshape(-1, 1)
            init32 = c0.astype(np.float32).reshape(-1, 1)

            def peer():
                with limits():
                    return KMeans(
                        n_clusters=k, init=init32, n_init=1, algorithm="lloyd", max_iter=MAX_ITER, tol=TOL
                    ).fit(X)

            km = peer()
            with limits():  # the float64 run that follows npquant's arithmetic (not timed)
                km64 = KMeans(
                    n_clusters=k, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd", max_iter=MAX_ITER, tol=TOL
                ).fit(X.astype(np.float64))
            impls.append(Impl("sklearn", peer, check=f"labels {compare(_sorted_labels(km), r.indices)}"))
            sk = _inertia(w, km.cluster_centers_, km.labels_)
            ours_inertia = _inertia(w, r.codebook, r.indices)
            info.update(
                {
                    "sklearn iterations": int(km.n_iter_),
                    "sklearn inertia": f"{sk:.6f}",
                    "numba / sklearn inertia - 1": f"{ours_inertia / sk - 1.0:.2e}",
                    "sklearn float64 iterations (untimed)": int(km64.n_iter_),
                    "sklearn float64 inertia (untimed)": f"{_inertia(w, km64.cluster_centers_, km64.labels_):.6f}",
                    "sklearn float64 labels vs numba": compare(_sorted_labels(km64), r.indices),
                }
            )
        yield Case(NAME, f"k={k} n={n:,} {dist}", float(n), "Mweights/s", impls, targets={"sklearn": 10.0}, info=info)
