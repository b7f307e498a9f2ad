"""k-means weight sharing (npquant.compression.kmeans) and its kernels (npquant._kernels.kmeans).

Runs with the JIT on and with NUMBA_DISABLE_JIT=1; with the JIT off the numba kernels are
plain Python loops, so arrays given to them are kept small.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numba import config as numba_config

from npquant._kernels import kmeans as _k
from npquant.compression.kmeans import (
    KMEANS_INITS,
    KMeansResult,
    _assign_numpy,
    _cluster_sums_numpy,
    _lloyd_numpy,
    centroid_gradient,
    finetune_centroids,
    initial_centroids,
    kmeans_quantize,
    reaverage_centroids,
    reconstruct,
)

JIT = not numba_config.DISABLE_JIT
# the backend for tests about the algorithm rather than the kernels: numba == numpy is
# tested separately, and the numpy twin is fast with the JIT off too
FAST = "numba" if JIT else "numpy"
F32 = np.float32


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _same(r1: KMeansResult, r2: KMeansResult):
    np.testing.assert_array_equal(_bits(r1.codebook), _bits(r2.codebook))
    np.testing.assert_array_equal(r1.indices, r2.indices)
    assert r1.indices.dtype == r2.indices.dtype == np.uint8
    assert (r1.inertia, r1.n_iter, r1.converged) == (r2.inertia, r2.n_iter, r2.converged)


def _mean32(*v):
    return F32(np.mean(np.array(v, F32).astype(np.float64)))


# ---------------------------------------------------------------------------- hand-computed


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_hand_computed_one_bit(backend):
    w = np.array([0.1, 0.2, 0.9, 1.0], F32)
    r = kmeans_quantize(w, 1, keep_zeros=False, backend=backend)
    # linear init [0.1, 1.0], midpoint 0.55: {0.1, 0.2} and {0.9, 1.0}; unchanged next time
    np.testing.assert_array_equal(_bits(r.codebook), _bits([_mean32(0.1, 0.2), _mean32(0.9, 1.0)]))
    np.testing.assert_array_equal(r.indices, [0, 0, 1, 1])
    assert r.n_iter == 2 and r.converged and not r.reserved_zero
    d = w.astype(np.float64) - r.codebook.astype(np.float64)[r.indices]
    assert r.inertia == float(np.sum(d * d))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_hand_computed_reserved_zero_and_ties(backend):
    w = np.array([[0.0, 0.5, -0.5], [0.0, 1.0, -1.0]], F32)
    r = kmeans_quantize(w, 2, backend=backend)
    # 3 centroids for {-1, -0.5, 0.5, 1}; linear init [-1, 0, 1], midpoints -0.5 and 0.5:
    # both values on a midpoint go to the lower index -> {-1, -0.5}, {0.5}, {1}
    np.testing.assert_array_equal(r.codebook, F32([0.0, -0.75, 0.5, 1.0]))
    np.testing.assert_array_equal(r.indices, [[0, 2, 1], [0, 3, 1]])
    assert r.indices.shape == w.shape and r.indices.dtype == np.uint8
    assert r.inertia == 0.125 and r.n_iter == 2 and r.converged and r.reserved_zero
    with pytest.raises(ValueError, match="read-only"):
        r.codebook[0] = 1.0
    np.testing.assert_array_equal(reconstruct(r), F32([[0, 0.5, -0.75], [0, 1, -0.75]]))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_assign_tie_goes_to_lower_index(backend):
    mid = np.array([0.5, 1.5])  # centroids 0, 1, 2
    x = np.array([0.5, 0.50000006, 1.5, -3.0, 7.0, 0.0], F32)
    want = [0, 1, 1, 0, 2, 0]
    if backend == "numpy":
        got = _assign_numpy(x, mid, False)
    else:
        got = np.empty(x.size, np.uint8)
        _k.assign(x, mid, False, got)
    np.testing.assert_array_equal(got, want)


def test_fewer_distinct_values_than_centroids():
    w = np.array([3.0, 1.0, 2.0, 2.0, 1.0], F32)
    r = kmeans_quantize(w, 3, keep_zeros=False, backend=FAST)
    np.testing.assert_array_equal(r.codebook, F32([1, 2, 3, 3, 3, 3, 3, 3]))
    np.testing.assert_array_equal(r.indices, [2, 0, 1, 1, 0])  # first of equal entries
    np.testing.assert_array_equal(reconstruct(r), w)
    assert r.inertia == 0.0 and r.n_iter == 0 and r.converged
    # exactly as many distinct values as centroids: also exact
    r = kmeans_quantize(np.array([0.0, -2.0, 5.0, 5.0], F32), 2, backend=FAST)
    np.testing.assert_array_equal(r.codebook, F32([0, -2, 5, 5]))
    np.testing.assert_array_equal(r.indices, [0, 1, 2, 2])


def test_all_zero_and_single_value():
    r = kmeans_quantize(np.zeros((3, 4), F32), 4, backend=FAST)
    np.testing.assert_array_equal(r.codebook, np.zeros(16, F32))
    np.testing.assert_array_equal(r.indices, np.zeros((3, 4)))
    assert r.inertia == 0.0 and r.converged
    r = kmeans_quantize(np.zeros(5), 1, keep_zeros=False, backend=FAST)
    np.testing.assert_array_equal(r.codebook, [0, 0])
    r = kmeans_quantize(np.array([-0.25]), 8, keep_zeros=True, backend=FAST)
    assert r.codebook[0] == 0 and np.all(r.codebook[1:] == F32(-0.25)) and r.indices[0] == 1
    r = kmeans_quantize(np.array([-0.25]), 8, backend=FAST)  # "auto": no zero, no reserved code
    assert np.all(r.codebook == F32(-0.25)) and r.indices[0] == 0 and not r.reserved_zero


# ---------------------------------------------------------------------------- pruned weights


@pytest.mark.parametrize("bits", range(1, 9))
def test_pruned_weights_stay_exactly_zero(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(0, 0.05, (40, 25)).astype(F32)
    w[np.abs(w) < 0.04] = 0.0
    w[0, 0] = -0.0
    r = kmeans_quantize(w, bits, backend=FAST)
    assert r.codebook.dtype == np.float32 and r.codebook.shape == (2**bits,)
    assert r.indices.dtype == np.uint8 and r.indices.shape == w.shape
    assert r.codebook[0] == 0.0 and r.reserved_zero
    assert np.all(np.diff(r.codebook[1:]) >= 0)
    rec = reconstruct(r)
    assert rec.dtype == np.float32
    np.testing.assert_array_equal(rec[w == 0], 0.0)
    np.testing.assert_array_equal(r.indices[w == 0], 0)
    assert np.all(r.indices[w != 0] >= 1) and int(r.indices.max()) < 2**bits


def test_keep_zeros_auto_reserves_only_for_tensors_with_zeros():
    w = np.random.default_rng(3).normal(0, 1, 300).astype(F32)
    for bits in (1, 2, 4):
        auto = kmeans_quantize(w, bits, backend=FAST)
        assert not auto.reserved_zero and len(np.unique(auto.indices)) == 2**bits  # every code a value
        _same(auto, kmeans_quantize(w, bits, keep_zeros=False, backend=FAST))
        forced = kmeans_quantize(w, bits, keep_zeros=True, backend=FAST)
        assert forced.reserved_zero and forced.codebook[0] == 0 and not np.any(forced.indices == 0)
        assert forced.inertia > auto.inertia  # the unused zero code costs accuracy
        for zero in (0.0, -0.0):  # one exact zero (either sign) makes it a pruned tensor
            v = w.copy()
            v[7] = zero
            auto = kmeans_quantize(v, bits, backend=FAST)
            assert auto.reserved_zero and auto.indices[7] == 0 and reconstruct(auto)[7] == 0
            _same(auto, kmeans_quantize(v, bits, keep_zeros=True, backend=FAST))


def test_keep_zeros_trap_on_the_bundled_lenet():
    """Forcing the zero code on unpruned weights: LeNet-300-100 at 2 bits drops to 91.56 %;
    "auto" (no zeros, 4 centroids) keeps 96.44 %, the same as keep_zeros=False."""
    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference
    from npquant.models.nn import build_model
    from npquant.training import evaluate
    from npquant.training.trainer import digits_data

    ref = load_reference(default_models_dir() / "lenet_300_100.npz")
    data = digits_data(ref.arch)
    acc = {}
    for kz in (True, "auto", False):
        state = {
            k: (
                reconstruct(kmeans_quantize(v, 2, keep_zeros=kz, backend=FAST))
                if np.ndim(v) == 2
                else np.array(v, copy=True)
            )
            for k, v in ref.state.items()
        }
        acc[kz] = evaluate(build_model(ref.arch, state), data["x_test"], data["y_test"])[1]
    assert round(100 * acc[True], 2) == 91.56
    assert round(100 * acc["auto"], 2) == round(100 * acc[False], 2) == 96.44


@pytest.mark.parametrize("bits", range(1, 9))
def test_bits_without_reserved_zero(bits):
    w = np.random.default_rng(10 + bits).laplace(0, 1, 500).astype(F32)
    r = kmeans_quantize(w, bits, keep_zeros=False, backend=FAST)
    assert r.codebook.shape == (2**bits,) and r.indices.dtype == np.uint8
    assert np.all(np.diff(r.codebook) > 0) and not r.reserved_zero
    assert len(np.unique(r.indices)) == 2**bits  # 500 distinct values: every code used
    d = w.astype(np.float64) - r.codebook.astype(np.float64)[r.indices]
    assert r.inertia == float(np.sum(d * d))


# ---------------------------------------------------------------------------- inits, seeds


def test_initial_centroids():
    x = np.random.default_rng(0).normal(size=1001).astype(F32)
    xs = np.sort(x).astype(np.float64)
    lin = initial_centroids(x, 8, init="linear")
    assert lin.dtype == np.float64 and lin[0] == xs[0] and lin[-1] == xs[-1]
    np.testing.assert_allclose(np.diff(lin), (xs[-1] - xs[0]) / 7, rtol=1e-12)
    assert initial_centroids(x, 1, init="linear")[0] == (xs[0] + xs[-1]) / 2
    den = initial_centroids(x, 4, init="density")
    np.testing.assert_array_equal(den, xs[[125, 375, 625, 875]])  # floor((2j+1) n / 2k)
    pp = initial_centroids(x, 16, init="kmeans++", seed=3)
    assert np.all(np.diff(pp) > 0) and np.all(np.isin(pp, xs))
    np.testing.assert_array_equal(pp, initial_centroids(x, 16, init="kmeans++", seed=3))
    assert not np.array_equal(pp, initial_centroids(x, 16, init="kmeans++", seed=4))
    # fewer distinct values than centroids: repeats, never NaN
    rep = initial_centroids(np.array([1.0, 1.0, 2.0], F32), 4, init="kmeans++")
    assert set(rep) == {1.0, 2.0}


@pytest.mark.parametrize("init", KMEANS_INITS)
def test_each_init_and_determinism(init):
    w = np.random.default_rng(5).normal(0, 0.1, (30, 30)).astype(F32)  # no zeros: reserved by hand
    r1 = kmeans_quantize(w, 3, init=init, seed=11, keep_zeros=True, backend=FAST)
    r2 = kmeans_quantize(w, 3, init=init, seed=11, keep_zeros=True, backend=FAST)
    _same(r1, r2)
    assert r1.converged and r1.n_iter >= 1
    # the same result from the same centroids passed explicitly
    c0 = initial_centroids(w[w != 0], 7, init=init, seed=11)
    _same(r1, kmeans_quantize(w, 3, init=c0, seed=999, keep_zeros=True, backend=FAST))
    # k-means improves on its start
    r0 = kmeans_quantize(w, 3, init=c0, max_iter=0, keep_zeros=True, backend=FAST)
    np.testing.assert_array_equal(r0.codebook[1:], c0.astype(F32))
    assert r0.n_iter == 0 and not r0.converged
    assert r1.inertia <= r0.inertia


def test_seed_only_matters_for_kmeanspp():
    w = np.random.default_rng(6).normal(size=300).astype(F32)
    _same(kmeans_quantize(w, 4, seed=1, backend=FAST), kmeans_quantize(w, 4, seed=2, backend=FAST))
    a = kmeans_quantize(w, 4, init="kmeans++", seed=1, max_iter=0, backend=FAST)
    b = kmeans_quantize(w, 4, init="kmeans++", seed=2, max_iter=0, backend=FAST)
    assert not np.array_equal(a.codebook, b.codebook)


def test_convergence_flag():
    w = np.random.default_rng(7).normal(size=2000).astype(F32)
    r = kmeans_quantize(w, 4, keep_zeros=False, max_iter=1, backend=FAST)
    assert r.n_iter == 1 and not r.converged
    loose = kmeans_quantize(w, 4, keep_zeros=False, tol=1e-2, backend=FAST)
    exact = kmeans_quantize(w, 4, keep_zeros=False, tol=0.0, max_iter=10_000, backend=FAST)
    assert loose.converged and exact.converged and loose.n_iter < exact.n_iter
    assert exact.inertia <= loose.inertia
    # an exact fixed point: one more round changes nothing, and re-averaging is a no-op
    again = kmeans_quantize(w, 4, init=exact.codebook.astype(np.float64), keep_zeros=False, tol=0.0, backend=FAST)
    np.testing.assert_array_equal(again.codebook, exact.codebook)
    np.testing.assert_array_equal(
        reaverage_centroids(w, exact.indices, 16, exact.codebook, backend=FAST), exact.codebook
    )


# ---------------------------------------------------------------------------- kernel == twin

_values = hnp.arrays(
    F32,
    st.integers(1, 60 if JIT else 25),
    elements=st.one_of(st.just(0.0), st.sampled_from([-1.0, 0.5, 2.0]), st.floats(-100, 100, width=32)),
)


@given(
    w=_values,
    bits=st.integers(1, 8),
    keep_zeros=st.sampled_from([True, False, "auto"]),
    init=st.sampled_from(KMEANS_INITS),
    seed=st.integers(0, 3),
    tol=st.sampled_from([0.0, 1e-3]),
)
def test_backends_identical(w, bits, keep_zeros, init, seed, tol):
    kw = dict(init=init, seed=seed, tol=tol, keep_zeros=keep_zeros)
    a = kmeans_quantize(w, bits, backend="numba", **kw)
    b = kmeans_quantize(w, bits, backend="numpy", **kw)
    _same(a, b)
    assert a.reserved_zero == b.reserved_zero == (bool(np.any(w == 0)) if keep_zeros == "auto" else keep_zeros)
    if keep_zeros == "auto":  # "auto" is exactly the explicit choice it makes
        _same(a, kmeans_quantize(w, bits, backend="numpy", **{**kw, "keep_zeros": a.reserved_zero}))
    keep_zeros = a.reserved_zero
    # invariants: never NaN, zeros exact, every value at a nearest fitted centroid
    r = 1 if keep_zeros else 0
    assert np.all(np.isfinite(a.codebook)) and np.all(np.diff(a.codebook[r:]) >= 0)
    rec = reconstruct(a)
    if keep_zeros:
        assert a.codebook[0] == 0 and np.all(rec[w == 0] == 0)
    mask = w != 0 if keep_zeros else np.ones(w.shape, bool)
    vals = w[mask].astype(np.float64)
    if vals.size:
        dist = np.abs(vals[:, None] - a.codebook[r:].astype(np.float64)[None, :])
        np.testing.assert_array_equal(np.abs(vals - rec[mask]), dist.min(axis=1))
    d = w.astype(np.float64) - rec
    assert a.inertia == float(np.sum(d * d))


def _lloyd_both(xs, c0, max_iter, thr):
    a = _k.lloyd_sorted(xs, c0, max_iter, thr)
    b = _lloyd_numpy(xs, c0, max_iter, thr)
    np.testing.assert_array_equal(a[0].view(np.uint64), b[0].view(np.uint64))
    assert (int(a[1]), bool(a[2])) == (b[1], b[2])
    return b


def test_lloyd_relocates_empty_clusters():
    xs = np.sort(np.array([0, 0.1, 0.2, 5, 5.1, 5.2, 9, 9.5, 10, 10.2], F32))
    # five centroids far above the data: four start empty and are moved onto far values
    c, n_iter, conv = _lloyd_both(xs, np.array([20.0, 21, 22, 23, 24]), 100, 0.0)
    assert conv and np.all(np.diff(c) > 0)
    # duplicate start centroids: the upper copy is empty (ties go low) and is relocated
    c2, _, conv2 = _lloyd_both(xs, np.array([5.0, 5.0, 5.0, 5.0, 5.0]), 100, 0.0)
    assert conv2 and np.all(np.diff(c2) > 0)
    for cc in (c, c2):
        lab = np.searchsorted((cc[1:] + cc[:-1]) / 2, xs)
        assert len(np.unique(lab)) == 5


def test_lloyd_relocation_tie_within_a_run():
    """Hypothesis found it: in the run ``[-1, -0.5, 0, 1.86e-35]`` with centroid -0.5 the
    values 0 and 1.86e-35 are at the same float64 squared distance (0.25) once -1 has
    left. Relocation takes the farther *end* of a run (the kernel's pointer pair), so the
    emptied cluster gets 1.86e-35; the twin once ranked every value and took 0."""
    xs = np.sort(np.array([0, 1, -0.5, 1.8591308e-35, -1, 2, 2, 2, 2], F32))
    c, _, _ = _lloyd_both(xs, np.zeros(5), 2, 0.0)
    assert c[2] == np.float64(F32(1.8591308e-35))


@given(xs=hnp.arrays(F32, st.integers(3, 40), elements=st.floats(-10, 10, width=32)), data=st.data())
def test_lloyd_kernel_equals_twin(xs, data):
    xs = np.sort(xs)
    n_distinct = len(np.unique(xs))
    if n_distinct < 2:
        return
    k = data.draw(st.integers(1, n_distinct - 1))
    c0 = np.sort(np.array(data.draw(st.lists(st.floats(-12, 12), min_size=k, max_size=k))))
    thr = data.draw(st.sampled_from([0.0, 1e-6, 0.1]))
    _lloyd_both(xs, c0, data.draw(st.integers(0, 50)), thr)


@given(
    x=hnp.arrays(F32, st.integers(1, 50), elements=st.floats(-5, 5, width=32)),
    c=st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=16),
    reserve=st.booleans(),
)
def test_assign_and_sums_kernels_equal_twins(x, c, reserve):
    cb = np.sort(np.array(c, F32)).astype(np.float64)
    mid = (cb[1:] + cb[:-1]) * 0.5
    got = np.empty(x.size, np.uint8)
    _k.assign(x, mid, reserve, got)
    np.testing.assert_array_equal(got, _assign_numpy(x, mid, reserve))
    k = len(c) + 1
    sums, counts = np.zeros(k), np.zeros(k, np.int64)
    _k.cluster_sums(x, got, sums, counts)
    s2, c2 = _cluster_sums_numpy(x, got, k)
    np.testing.assert_array_equal(sums.view(np.uint64), s2.view(np.uint64))
    np.testing.assert_array_equal(counts, c2)


@pytest.mark.parametrize("n", [0, 1, 511, 512, 513, 1025])
@pytest.mark.parametrize("n_mid", [0, 1, 14, 255] if JIT else [0, 1, 14])
def test_assign_kernel_equals_twin_across_blocks(n, n_mid):
    """Sizes around the kernel's block of values, up to 255 midpoints, values on the
    midpoints, zeros, a non-contiguous input; with and without the reserved zero."""
    rng = np.random.default_rng(n * 1000 + n_mid)
    c = np.sort(rng.standard_normal(n_mid + 1).astype(F32)).astype(np.float64)
    mid = (c[1:] + c[:-1]) * 0.5
    x = rng.standard_normal(2 * n).astype(F32)
    if n_mid and n:
        x[::7] = mid[rng.integers(0, n_mid, x[::7].size)].astype(F32)  # near the ties
        x[::5] = np.nextafter(x[::5], F32(np.inf))
        x[::11] = 0.0
    x = x[::2]  # non-contiguous
    for reserve in (False, True):
        got = np.empty(n, np.uint8)
        _k.assign(x, mid, reserve, got)
        np.testing.assert_array_equal(got, _assign_numpy(x, mid, reserve))


@pytest.mark.parametrize("dist", ["normal", "clumps"])
def test_lloyd_kernel_equals_twin_on_thousands(dist):
    """Prefix-sum Lloyd on a few thousand values, with empty clusters to relocate."""
    rng = np.random.default_rng(5)
    n = 3000 if JIT else 600
    if dist == "normal":
        xs = np.sort(rng.standard_normal(n).astype(F32))
        c0 = np.linspace(-1.0, 1.0, 15)
    else:  # three clumps, 15 centroids piled on one side: most start empty
        xs = np.sort(np.concatenate([rng.normal(m, 0.01, n // 3) for m in (-5, 0, 5)]).astype(F32))
        c0 = np.linspace(6.0, 7.0, 15)
    for max_iter, thr in ((1, 0.0), (7, 0.0), (300, 0.0), (300, 1e-4)):
        c, n_iter, _ = _lloyd_both(xs, c0, max_iter, thr)
        assert n_iter <= max_iter and np.all(np.diff(c) >= 0)


# ---------------------------------------------------------------------------- vs scikit-learn


def _sklearn_inertia(x, c0, seed):
    from sklearn.cluster import KMeans

    X = x.astype(np.float64).reshape(-1, 1)
    km = KMeans(
        n_clusters=c0.size, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0, max_iter=300, random_state=seed
    ).fit(X)
    centers = np.sort(km.cluster_centers_.ravel())
    d = np.abs(X - centers[None, :]).min(axis=1)  # best labels for sklearn's centers
    return min(float(d @ d), float(km.inertia_))


_DISTS = {
    "normal": lambda rng, n: rng.normal(0, 0.05, n),
    "laplace": lambda rng, n: rng.laplace(0, 0.02, n),
    "uniform": lambda rng, n: rng.uniform(-1, 1, n),
    "bimodal": lambda rng, n: np.concatenate([rng.normal(-1, 0.1, n // 3), rng.normal(0.5, 0.3, n - n // 3)]),
    "pruned": lambda rng, n: (lambda v: v[np.abs(v) > 0.03])(rng.normal(0, 0.05, n)),
}


@pytest.mark.parametrize("dist", sorted(_DISTS))
@pytest.mark.parametrize("init", KMEANS_INITS)
def test_inertia_never_worse_than_sklearn(dist, init):
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        x = _DISTS[dist](rng, 1500).astype(F32)
        for bits in (2, 4):
            k = 2**bits
            c0 = initial_centroids(x, k, init=init, seed=seed)
            ours = kmeans_quantize(x, bits, init=c0, keep_zeros=False, tol=0.0, max_iter=300, backend=FAST)
            theirs = _sklearn_inertia(x, c0, seed)
            assert ours.inertia <= theirs * (1 + 1e-9), (seed, bits, ours.inertia, theirs)


def test_inertia_never_worse_than_sklearn_with_reserved_zero():
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.05, (40, 50)).astype(F32)
    w[np.abs(w) < 0.03] = 0.0  # pruned: the zero code is reserved, 15 centroids fitted
    nz = w[w != 0]
    for init in KMEANS_INITS:
        c0 = initial_centroids(nz, 15, init=init, seed=1)
        ours = kmeans_quantize(w, 4, init=c0, tol=0.0, max_iter=300, backend=FAST)
        assert ours.inertia <= _sklearn_inertia(nz, c0, 1) * (1 + 1e-9)


# ---------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_centroid_gradient_hand_computed(backend):
    g = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, -8.0]], F32)
    idx = np.array([[0, 1], [0, 2], [2, 2]], np.uint8)
    cg = centroid_gradient(g, idx, 4, backend=backend)
    assert cg.dtype == np.float32 and cg.shape == (4,)
    np.testing.assert_array_equal(cg, [4.0, 2.0, -3.5, 0.0])  # index 3 unused


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_centroid_gradient_mean_hand_computed(backend):
    g = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, -8.0]], F32)
    idx = np.array([[0, 1], [0, 2], [2, 2]], np.uint8)
    cg = centroid_gradient(g, idx, 4, reduction="mean", backend=backend)
    assert cg.dtype == np.float32
    # sums 4, 2, -3.5 over 2, 1, 3 weights; -3.5 / 3 divided in float64, rounded once
    np.testing.assert_array_equal(cg, F32([2.0, 2.0, -3.5 / 3, 0.0]))
    cb = F32([0.0, -0.5, 0.25, 1.0])
    new = finetune_centroids(cb, g, idx, 0.5, reduction="mean", reserved_zero=False, backend=backend)
    np.testing.assert_array_equal(new, F32([-1.0, -1.5, 0.25 + 0.5 * 3.5 / 3, 1.0]))


@given(g=hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e3, 1e3)), data=st.data())
def test_centroid_gradient_mean_is_the_sum_over_the_cluster_size(g, data):
    k = data.draw(st.integers(1, 9))
    idx = data.draw(hnp.arrays(np.uint8, g.shape, elements=st.integers(0, k - 1)))
    mean = centroid_gradient(g, idx, k, reduction="mean", backend=FAST)
    np.testing.assert_array_equal(mean, centroid_gradient(g, idx, k, reduction="mean", backend="numpy"))
    for j in range(k):
        sel = g[idx == j]
        want = math.fsum(sel) / sel.size if sel.size else 0.0
        np.testing.assert_allclose(mean[j], F32(want), rtol=1e-6, atol=1e-9 * np.abs(g).sum())


def test_centroid_gradient_finite_differences():
    rng = np.random.default_rng(0)
    n, k = 50, 6
    idx = rng.integers(0, k - 1, n).astype(np.uint8)  # index k-1 unused
    x, y = rng.normal(size=n), rng.normal(size=n)
    cb = rng.normal(size=k)

    def loss(c):  # L = sum((c[idx] * x - y)^2), reconstructed weight W_i = c[idx_i]
        return float(np.sum((c[idx] * x - y) ** 2))

    grad_w = 2 * (cb[idx] * x - y) * x  # dL/dW
    cg = centroid_gradient(grad_w, idx, k, backend=FAST)
    h = 1e-6
    fd = np.array([(loss(cb + h * e) - loss(cb - h * e)) / (2 * h) for e in np.eye(k)])
    np.testing.assert_allclose(cg, fd, rtol=1e-5, atol=1e-6)
    assert cg[k - 1] == 0.0
    np.testing.assert_array_equal(centroid_gradient(grad_w, idx, k, backend="numpy"), cg)


def test_finetune_centroids():
    cb = F32([0.0, -0.5, 0.25, 1.0])
    g = np.array([1.0, 2.0, 3.0, -4.0, 0.5])
    idx = np.array([0, 1, 1, 2, 0], np.uint8)
    new = finetune_centroids(cb, g, idx, 0.1)  # codebook[0] == 0: held
    np.testing.assert_array_equal(new, F32([0.0, -0.5 - 0.5, 0.25 + 0.4, 1.0]))
    moved = finetune_centroids(cb, g, idx, 0.1, reserved_zero=False, backend="numpy")
    np.testing.assert_array_equal(moved, F32([-0.15, -1.0, 0.65, 1.0]))
    assert finetune_centroids(cb, g, idx, 0.0).tobytes() == cb.tobytes()
    # a kmeans_quantize result: the pruned weights stay exactly zero after the step
    w = np.array([0.0, 0.3, -0.2, 0.0, 0.9], F32)
    r = kmeans_quantize(w, 2, backend=FAST)
    new = finetune_centroids(r.codebook, np.ones(5), r.indices, 0.01)
    assert new[0] == 0.0 and np.all(new[r.indices][w == 0] == 0)


def test_reaverage_centroids():
    w = np.array([1.0, 2.0, 4.0, 0.0, 0.5], F32)
    idx = np.array([1, 1, 2, 0, 2], np.uint8)
    np.testing.assert_array_equal(reaverage_centroids(w, idx, 4), F32([0.0, 1.5, 2.25, 0.0]))
    old = F32([0.0, 9.0, 9.0, 7.0])  # codebook[0] == 0 -> held; empty cluster 3 keeps 7
    np.testing.assert_array_equal(reaverage_centroids(w, idx, 4, old, backend="numpy"), F32([0.0, 1.5, 2.25, 7.0]))
    w2 = w.copy()
    w2[3] = 0.125  # a pruned weight that drifted: held at 0 only when reserved
    np.testing.assert_array_equal(reaverage_centroids(w2, idx, 4, old)[0], 0.0)
    assert reaverage_centroids(w2, idx, 4, old, reserved_zero=False)[0] == F32(0.125)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(bits=0), ValueError, "bits"),
        (dict(bits=9), ValueError, "bits"),
        (dict(bits=2.0), TypeError, "bits"),
        (dict(init="random"), ValueError, "init"),
        (dict(init=np.zeros(5)), ValueError, "init"),
        (dict(init=np.zeros(3)), ValueError, r"shape \(4,\)"),  # "auto", no zero: 4 centroids
        (dict(init=np.zeros(4), keep_zeros=True), ValueError, r"shape \(3,\)"),
        (dict(init=[0.0, np.nan, 1.0, 2.0], keep_zeros=False), ValueError, "init"),
        (dict(max_iter=-1), ValueError, "max_iter"),
        (dict(tol=-1e-3), ValueError, "tol"),
        (dict(tol=float("nan")), ValueError, "tol"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(keep_zeros=1), TypeError, "keep_zeros"),
        (dict(keep_zeros="yes"), ValueError, "keep_zeros must be one of 'auto'"),
        (dict(keep_zeros=None), TypeError, "keep_zeros"),
        (dict(backend="torch"), ValueError, "backend"),
    ],
)
def test_bad_arguments(kwargs, exc, words):
    kwargs = {"bits": 2, **kwargs}
    with pytest.raises(exc, match=words):
        kmeans_quantize(np.linspace(-1, 1, 10), **kwargs)


@pytest.mark.parametrize(
    "w, exc",
    [
        (np.array([0.1, np.nan]), ValueError),
        (np.array([0.1, np.inf]), ValueError),
        (np.array([], F32), ValueError),
        (np.arange(5), TypeError),
        (np.array([True, False]), TypeError),
    ],
)
def test_bad_weights(w, exc):
    with pytest.raises(exc, match="w "):
        kmeans_quantize(w, 2)


def test_bad_finetune_arguments():
    idx = np.array([0, 1, 3], np.uint8)
    g = np.ones(3)
    with pytest.raises(ValueError, match="indices"):
        centroid_gradient(g, idx, 3)
    with pytest.raises(TypeError, match="indices"):
        centroid_gradient(g, idx.astype(F32), 4)
    with pytest.raises(ValueError, match="grad"):
        centroid_gradient(np.ones(4), idx, 4)
    with pytest.raises(TypeError, match="grad"):
        centroid_gradient(np.ones(3, np.int64), idx, 4)
    with pytest.raises(ValueError, match="grad"):
        centroid_gradient(np.array([1.0, np.nan, 0.0]), idx, 4)
    with pytest.raises(ValueError, match="k"):
        centroid_gradient(g, idx, 0)
    with pytest.raises(ValueError, match="reduction must be one of 'sum', 'mean'"):
        centroid_gradient(g, idx, 4, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        finetune_centroids(F32([0, 1, 2, 3]), g, idx, 0.1, reduction="max")
    with pytest.raises(ValueError, match="lr"):
        finetune_centroids(F32([0, 1, 2, 3]), g, idx, float("inf"))
    with pytest.raises(ValueError, match="overflow"):
        finetune_centroids(F32([0, 1, 2, 3]), g, idx, 1e39)
    with pytest.raises(ValueError, match="codebook"):
        reaverage_centroids(F32([1, 2, 3]), idx, 4, F32([0, 1]))
    with pytest.raises(ValueError, match="w has shape"):
        reaverage_centroids(F32([1, 2]), idx, 4)
    with pytest.raises(TypeError, match="result"):
        reconstruct((np.zeros(2), np.zeros(2, np.uint8)))


def test_lloyd_kernel_and_twin_agree_on_negative_zero():
    # a run holding only -0.0: both start their prefix sums at +0.0, so its mean is +0.0
    _lloyd_both(np.array([-0.0, 1.0, 2.0], F32), np.array([0.0, 0.0]), 1, 0.0)
