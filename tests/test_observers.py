"""Tests of npquant.observers: PyTorch parity of the min-max observers, the optimum each
histogram observer claims, streaming, bounded memory, and argument errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant import QuantSpec, compute_qparams, dequantize, quantization_error, quantize
from npquant.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    PerChannelMinMaxObserver,
)

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mse(x, qp) -> float:
    """Actual quantization MSE (NumPy backend: fast also with NUMBA_DISABLE_JIT=1)."""
    q = quantize(x, qp, backend="numpy")
    return quantization_error(x, dequantize(q, qp, backend="numpy")).mse


def _heavy_tailed(rng, n=20000):
    """Student-t (3 dof) with a few large outliers, float32."""
    x = rng.standard_t(3, n)
    x[rng.integers(0, n, 10)] *= 20
    return x.astype(np.float32)


def _feed(obs, batches):
    for b in batches:
        obs.update(b)
    return obs


# ----------------------------------------------------------------------------------------
# data for the PyTorch comparisons: several batches of varied scales and signs


def _torch_sequences():
    rng = np.random.default_rng(1234)
    seqs = {}
    shape = (4, 6, 5)

    def normal(scale, shift=0.0):
        return ((rng.standard_normal(shape) + shift) * scale).astype(np.float32)

    seqs["varied_scales"] = [normal(10.0 ** rng.uniform(-3, 3), rng.normal()) for _ in range(6)]
    seqs["all_positive"] = [np.abs(normal(s)) + np.float32(0.5 * s) for s in (0.1, 3.0, 0.7, 40.0)]
    seqs["all_negative"] = [-np.abs(normal(s)) - np.float32(s) for s in (2.0, 0.01, 9.0)]
    seqs["zero_batch"] = [normal(1.0), np.zeros(shape, np.float32), normal(0.2, 3.0)]
    seqs["only_zeros"] = [np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    seqs["extreme"] = [normal(1e-30), normal(1e25), normal(1e-3, -2.0)]
    seqs["float64_input"] = [rng.standard_normal(shape) * 3.3, rng.standard_normal(shape) + 1]
    seqs["one_sided_then_both"] = [np.abs(normal(1.0)), -np.abs(normal(2.0)), normal(0.5)]
    return seqs


TORCH_SEQS = _torch_sequences()


@pytest.fixture(scope="module")
def tobs():
    torch = pytest.importorskip("torch")
    from torch.ao.quantization import observer

    return torch, observer


def _torch_dtype(torch, signed):
    return torch.qint8 if signed else torch.quint8


def _run_torch(torch, obs, batches):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in batches:
            obs(torch.from_numpy(np.ascontiguousarray(b)))
        scale, zp = obs.calculate_qparams()
    return (scale.numpy().astype(np.float32), zp.numpy().astype(np.int64), obs.min_val.numpy(), obs.max_val.numpy())


def _assert_same(ours, theirs, shape):
    scale, zp, lo, hi = theirs
    qp = ours.qparams()
    assert qp.scale.dtype == np.float32
    np.testing.assert_array_equal(qp.scale, scale.reshape(shape))
    np.testing.assert_array_equal(qp.zero_point.astype(np.int64), zp.reshape(shape))
    np.testing.assert_array_equal(ours.min_val, lo.reshape(shape))
    np.testing.assert_array_equal(ours.max_val, hi.reshape(shape))


PER_TENSOR_CASES = [
    (signed, symmetric, reduce_range)
    for signed in (False, True)
    for symmetric in (False, True)
    for reduce_range in (False, True)
    if not (symmetric and reduce_range and not signed)  # PyTorch refuses this one
]


@pytest.mark.parametrize("seq", sorted(TORCH_SEQS))
@pytest.mark.parametrize("signed,symmetric,reduce_range", PER_TENSOR_CASES)
def test_minmax_matches_torch(tobs, seq, signed, symmetric, reduce_range):
    torch, ob = tobs
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    batches = TORCH_SEQS[seq]
    spec = QuantSpec(signed=signed, symmetric=symmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ob.MinMaxObserver(dtype=_torch_dtype(torch, signed), qscheme=qscheme, reduce_range=reduce_range)
    theirs = _run_torch(torch, t, batches)
    ours = _feed(MinMaxObserver(spec, reduce_range=reduce_range), batches)
    _assert_same(ours, theirs, ())


@pytest.mark.parametrize("c", [0.01, 0.3])
@pytest.mark.parametrize("seq", sorted(TORCH_SEQS))
@pytest.mark.parametrize("signed,symmetric,reduce_range", PER_TENSOR_CASES)
def test_moving_average_matches_torch(tobs, seq, signed, symmetric, reduce_range, c):
    torch, ob = tobs
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    batches = TORCH_SEQS[seq]
    spec = QuantSpec(signed=signed, symmetric=symmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ob.MovingAverageMinMaxObserver(
            averaging_constant=c, dtype=_torch_dtype(torch, signed), qscheme=qscheme, reduce_range=reduce_range
        )
    theirs = _run_torch(torch, t, batches)
    ours = _feed(MovingAverageMinMaxObserver(spec, averaging_constant=c, reduce_range=reduce_range), batches)
    _assert_same(ours, theirs, ())


@pytest.mark.parametrize("moving", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("seq", sorted(TORCH_SEQS))
@pytest.mark.parametrize("signed,symmetric,reduce_range", PER_TENSOR_CASES)
def test_per_channel_matches_torch(tobs, seq, axis, signed, symmetric, reduce_range, moving):
    torch, ob = tobs
    qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    batches = TORCH_SEQS[seq]
    spec = QuantSpec(signed=signed, symmetric=symmetric, axis=axis)
    kw = dict(ch_axis=axis, dtype=_torch_dtype(torch, signed), qscheme=qscheme, reduce_range=reduce_range)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if moving:
            t = ob.MovingAveragePerChannelMinMaxObserver(averaging_constant=0.01, **kw)
        else:
            t = ob.PerChannelMinMaxObserver(**kw)
    theirs = _run_torch(torch, t, batches)
    if moving:
        ours = MovingAveragePerChannelMinMaxObserver(spec, averaging_constant=0.01, reduce_range=reduce_range)
    else:
        ours = PerChannelMinMaxObserver(spec, reduce_range=reduce_range)
    _feed(ours, batches)
    _assert_same(ours, theirs, (batches[0].shape[axis],))


@HYP
@given(
    batches=st.lists(
        hnp.arrays(
            np.float32, st.integers(1, 30), elements=st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True)
        ),
        min_size=1,
        max_size=4,
    ),
    signed=st.booleans(),
    symmetric=st.booleans(),
)
def test_minmax_and_moving_average_match_torch_on_arbitrary_floats(tobs, batches, signed, symmetric):
    torch, ob = tobs
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    spec = QuantSpec(signed=signed, symmetric=symmetric)
    dt = _torch_dtype(torch, signed)
    for ours, t in (
        (MinMaxObserver(spec), ob.MinMaxObserver(dtype=dt, qscheme=qscheme)),
        (MovingAverageMinMaxObserver(spec), ob.MovingAverageMinMaxObserver(dtype=dt, qscheme=qscheme)),
    ):
        _assert_same(_feed(ours, batches), _run_torch(torch, t, batches), ())


def test_reduce_range_ranges():
    """8-bit reduce_range gives PyTorch's [0, 127] and [-64, 63]; symmetric unsigned is
    the 7-bit unsigned symmetric spec (zero point 64), which PyTorch refuses."""
    x = np.linspace(-1, 3, 50, dtype=np.float32)
    qp = MinMaxObserver(QuantSpec(signed=False), reduce_range=True).update(x).qparams()
    assert (qp.spec.qmin, qp.spec.qmax) == (0, 127)
    qp = MinMaxObserver(QuantSpec(signed=True), reduce_range=True).update(x).qparams()
    assert (qp.spec.qmin, qp.spec.qmax) == (-64, 63)
    obs = MinMaxObserver(QuantSpec(signed=False, symmetric=True), reduce_range=True)
    qp = obs.update(x).qparams()
    assert (qp.spec.qmin, qp.spec.qmax) == (0, 127)
    assert int(qp.zero_point) == 64
    assert qp.scale == np.float32(3) / np.float32(63.5)
    assert obs.effective_spec == QuantSpec(bits=7, signed=False, symmetric=True)
    assert obs.spec == QuantSpec(signed=False, symmetric=True)
    # histogram observers search with the reduced spec
    for obs in (
        PercentileObserver(QuantSpec(), bins=64, reduce_range=True),
        MSEObserver(QuantSpec(), bins=64, reduce_range=True),
        EntropyObserver(QuantSpec(), bins=256, reduce_range=True),
    ):
        assert obs.update(x).qparams().spec == QuantSpec(bits=7)
    assert EntropyObserver(QuantSpec(), reduce_range=True).levels == 64


# ----------------------------------------------------------------------------------------
# per-group (no PyTorch counterpart): against plain NumPy


def _group_minmax_numpy(x, block):
    """Per-row blocks of `block` columns (axis=1): (rows, nblocks) min and max, loops."""
    rows, cols = x.shape
    nb = math.ceil(cols / block)
    lo = np.empty((rows, nb), np.float32)
    hi = np.empty((rows, nb), np.float32)
    for r in range(rows):
        for b in range(nb):
            seg = x[r, b * block : (b + 1) * block]
            lo[r, b], hi[r, b] = seg.min(), seg.max()
    return lo, hi


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_group_min_max_and_moving_average_against_numpy(symmetric):
    rng = np.random.default_rng(5)
    spec = QuantSpec(bits=4, signed=True, symmetric=symmetric, axis=1, block_size=4)
    batches = [(rng.standard_normal((3, 10)) * s).astype(np.float32) for s in (1.0, 5.0, 0.1)]
    lo = hi = None
    mlo = mhi = None
    c = np.float32(0.01)
    for b in batches:
        blo, bhi = _group_minmax_numpy(b, 4)
        if lo is None:
            lo, hi, mlo, mhi = blo, bhi, blo, bhi
        else:
            lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
            mlo = mlo + c * (blo - mlo)
            mhi = mhi + c * (bhi - mhi)
    obs = _feed(PerChannelMinMaxObserver(spec), batches)
    ref = compute_qparams(lo, hi, spec)
    np.testing.assert_array_equal(obs.min_val, lo)
    np.testing.assert_array_equal(obs.qparams().scale, ref.scale)
    np.testing.assert_array_equal(obs.qparams().zero_point, ref.zero_point)
    mov = _feed(MovingAveragePerChannelMinMaxObserver(spec), batches)
    ref = compute_qparams(mlo, mhi, spec)
    np.testing.assert_array_equal(mov.max_val, mhi)
    np.testing.assert_array_equal(mov.qparams().scale, ref.scale)
    np.testing.assert_array_equal(mov.qparams().zero_point, ref.zero_point)
    assert obs.qparams().scale.shape == (3, 3)


# ----------------------------------------------------------------------------------------
# min-max properties


float_batches = st.lists(
    hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6), elements=st.floats(-1e6, 1e6, width=32)
    ),
    min_size=1,
    max_size=5,
)


@HYP
@given(batches=float_batches, signed=st.booleans(), symmetric=st.booleans())
def test_minmax_streaming_equals_concatenated(batches, signed, symmetric):
    spec = QuantSpec(signed=signed, symmetric=symmetric)
    streamed = _feed(MinMaxObserver(spec), batches).qparams()
    whole = MinMaxObserver(spec).update(np.concatenate([b.ravel() for b in batches])).qparams()
    np.testing.assert_array_equal(streamed.scale, whole.scale)
    np.testing.assert_array_equal(streamed.zero_point, whole.zero_point)


@HYP
@given(batches=float_batches, signed=st.booleans(), symmetric=st.booleans(), bits=st.integers(2, 8))
def test_minmax_range_covers_data_and_zero(batches, signed, symmetric, bits):
    """min_val <= 0 <= max_val after widening: every observed value is within half a
    step of the grid (no clipping), and real 0 is a code."""
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric)
    qp = _feed(MinMaxObserver(spec), batches).qparams()
    s = np.float64(qp.scale)
    z = int(qp.zero_point)
    lo, hi = s * (spec.qmin - z), s * (spec.qmax - z)
    assert lo <= 0 <= hi
    x = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    tol = s / 2 + 1e-6 * np.abs(x).max()
    assert np.all(x >= lo - tol) and np.all(x <= hi + tol)


@HYP
@given(
    batches=st.lists(hnp.arrays(np.float32, (3, 4), elements=st.floats(-100, 100, width=32)), min_size=1, max_size=4),
    axis=st.sampled_from([0, 1, -1]),
)
def test_per_channel_streaming_equals_concatenated(batches, axis):
    spec = QuantSpec(signed=False, axis=axis)
    streamed = _feed(PerChannelMinMaxObserver(spec), batches)
    whole = PerChannelMinMaxObserver(spec).update(np.concatenate(batches, axis=1 - (axis % 2)))
    np.testing.assert_array_equal(streamed.min_val, whole.min_val)
    np.testing.assert_array_equal(streamed.qparams().zero_point, whole.qparams().zero_point)


def test_call_returns_input_unchanged_and_reset():
    x = np.array([1.0, -2.0], np.float64)
    obs = MinMaxObserver(QuantSpec())
    assert obs(x) is x
    assert obs.observed and obs.min_val == np.float32(-2)
    obs.reset()
    assert not obs.observed
    assert obs.update(np.float32([3.0])) is obs
    assert obs.min_val == np.float32(3) and obs.min_val.shape == ()
    assert isinstance(obs, Observer)


# ----------------------------------------------------------------------------------------
# streaming histogram: exact binning, exact re-binning, bounded memory


@pytest.mark.parametrize("bins", [2, 5, 64, 2048])
def test_histogram_counts_are_exact_through_growth(bins):
    """Every value is counted in the bin [e_j, e_j+1) holding it, after any number of
    window changes (re-binning adds whole bins)."""
    rng = np.random.default_rng(bins)
    obs = PercentileObserver(QuantSpec(), bins=bins)
    seen = []
    for k in range(30):
        scale = 10.0 ** rng.uniform(-40, 30)
        x = (rng.standard_normal(int(rng.integers(1, 40))) * scale + rng.choice([-3, 0, 2]) * scale).astype(np.float32)
        if k == 7:
            x = np.append(x, np.float32(-1e-45))  # tiny value next to the 0 edge
        obs.update(x)
        seen.append(x)
        counts, edges = obs.histogram
        allx = np.concatenate(seen).astype(np.float64)
        ref = np.searchsorted(edges, allx, side="right") - 1
        assert ref.min() >= 0 and ref.max() < bins
        np.testing.assert_array_equal(counts, np.bincount(ref, minlength=bins))
        w = obs.bin_width
        assert math.frexp(w)[0] == 0.5  # a power of two
        assert edges[0] <= 0 < edges[-1]


def test_histogram_memory_is_bounded():
    """Histogram length is constant after many batches with growing ranges."""
    rng = np.random.default_rng(0)
    obs = MSEObserver(QuantSpec(), bins=128)
    ent = EntropyObserver(QuantSpec(), bins=256)
    n = 0
    for k in range(300):
        x = (rng.standard_normal(50) * 1.1**k).astype(np.float32)
        obs.update(x)
        ent.update(x)
        n += x.size
        assert obs.histogram[0].shape == (128,) and ent.histogram[0].shape == (256,)
    assert obs.count == n and ent.count == n
    counts, edges = obs.histogram
    assert counts.dtype == np.int64 and edges.shape == (129,)
    # the data and 0 span about half of the window or more
    span = max(edges[np.flatnonzero(counts)[-1] + 1], 0) - min(edges[np.flatnonzero(counts)[0]], 0)
    assert span >= 0.45 * (edges[-1] - edges[0])


# ----------------------------------------------------------------------------------------
# percentile


@pytest.mark.parametrize("p", [50.0, 90.0, 99.9, 99.99])
@pytest.mark.parametrize("bins", [64, 2048])
def test_percentile_within_one_bin_of_numpy(p, bins):
    rng = np.random.default_rng(int(p * 100) + bins)
    x = _heavy_tailed(rng, 30000) + np.float32(0.7)
    asym = _feed(PercentileObserver(QuantSpec(), percentile=p, bins=bins), np.array_split(x, 7))
    lo, hi = np.percentile(x.astype(np.float64), [100 - p, p])
    w = asym.bin_width
    assert abs(float(asym.min_val) - lo) <= w
    assert abs(float(asym.max_val) - hi) <= w
    sym = _feed(PercentileObserver(QuantSpec(symmetric=True), percentile=p, bins=bins), np.array_split(x, 7))
    a = np.percentile(np.abs(x.astype(np.float64)), p)
    assert abs(max(float(sym.max_val), -float(sym.min_val)) - a) <= sym.bin_width


@HYP
@given(
    batches=st.lists(
        hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e4, 1e4, width=32)), min_size=1, max_size=5
    ),
    p=st.floats(50, 100),
    bins=st.sampled_from([8, 33, 256]),
)
def test_percentile_property(batches, p, bins):
    obs = _feed(PercentileObserver(QuantSpec(), percentile=p, bins=bins), batches)
    x = np.concatenate(batches).astype(np.float64)
    lo, hi = np.percentile(x, [100 - p, p])
    w = obs.bin_width
    assert abs(float(obs.min_val) - lo) <= w * (1 + 1e-9)
    assert abs(float(obs.max_val) - hi) <= w * (1 + 1e-9)


def test_percentile_100_is_min_max():
    rng = np.random.default_rng(3)
    batches = [_heavy_tailed(rng, 500) for _ in range(4)]
    for spec in (QuantSpec(), QuantSpec(symmetric=True, signed=False)):
        p = _feed(PercentileObserver(spec, percentile=100), batches).qparams()
        m = _feed(MinMaxObserver(spec), batches).qparams()
        np.testing.assert_array_equal(p.scale, m.scale)
        np.testing.assert_array_equal(p.zero_point, m.zero_point)


def test_histogram_streaming_without_growth_equals_one_batch():
    """When the first batch holds the extremes the window never changes, so streaming
    gives exactly the histogram, and every result, of one batch."""
    rng = np.random.default_rng(11)
    x = _heavy_tailed(rng, 8000)
    i, j = int(np.argmin(x)), int(np.argmax(x))
    first = np.concatenate([x[[i, j]], x[:100]])
    rest = np.array_split(np.delete(x, [i, j])[100:], 5)
    whole = np.concatenate([first] + rest)
    for make in (
        lambda: PercentileObserver(QuantSpec(), bins=256),
        lambda: MSEObserver(QuantSpec(bits=4), bins=128),
        lambda: EntropyObserver(QuantSpec(), bins=512),
    ):
        a = _feed(make(), [first] + rest)
        b = make().update(whole)
        np.testing.assert_array_equal(a.histogram[0], b.histogram[0])
        np.testing.assert_array_equal(a.qparams().scale, b.qparams().scale)
        np.testing.assert_array_equal(a.qparams().zero_point, b.qparams().zero_point)


def test_histogram_streaming_with_growth_stays_close():
    """Batches of growing range: percentile within a bin width of one batch; the MSE
    choice within 1 % of the one-batch optimum in actual MSE; the entropy threshold
    within a few (coarser) bins."""
    rng = np.random.default_rng(12)
    batches = [(_heavy_tailed(rng, 2000) * s) for s in (0.01, 0.1, 1.0, 1.0, 1.0)]
    whole = np.concatenate(batches)
    a = _feed(PercentileObserver(QuantSpec(), percentile=99.9, bins=512), batches)
    b = PercentileObserver(QuantSpec(), percentile=99.9, bins=512).update(whole)
    w = max(a.bin_width, b.bin_width)
    assert abs(float(a.max_val) - float(b.max_val)) <= w
    assert abs(float(a.min_val) - float(b.min_val)) <= w
    spec = QuantSpec(bits=4)
    a = _feed(MSEObserver(spec, bins=256), batches)
    b = MSEObserver(spec, bins=256).update(whole)
    assert _mse(whole, a.qparams()) <= 1.01 * _mse(whole, b.qparams())
    a = _feed(EntropyObserver(QuantSpec(), bins=1024), batches)
    b = EntropyObserver(QuantSpec(), bins=1024).update(whole)
    assert abs(float(a.max_val) - float(b.max_val)) <= 4 * max(a.bin_width, b.bin_width)


# ----------------------------------------------------------------------------------------
# MSE


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("signed,symmetric", [(True, False), (True, True), (False, False), (False, True)])
def test_mse_observer_beats_min_max_on_heavy_tails(bits, signed, symmetric):
    """Student-t (3 dof): clipping pays a little at 8 bits and a lot at 4 bits. (With a
    few huge isolated outliers min-max can be nearly optimal: their clipping error
    dominates.)"""
    rng = np.random.default_rng(bits * 10 + 2 * signed + symmetric)
    x = rng.standard_t(3, 20000).astype(np.float32)
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric)
    batches = np.array_split(x, 4)
    mse = _feed(MSEObserver(spec, bins=512), batches)
    mm = _feed(MinMaxObserver(spec), batches)
    assert float(mse.max_val) < float(mm.max_val) or float(mse.min_val) > float(mm.min_val)
    ours, base = _mse(x, mse.qparams()), _mse(x, mm.qparams())
    assert ours < (0.99 if bits == 8 else 0.5) * base
    # the estimate it minimised is close to the real thing
    assert mse.expected_mse(mse.min_val, mse.max_val) == pytest.approx(ours, rel=0.05)


def _numeric_expected_mse(obs, lo, hi, per_bin=400):
    """Slow oracle: quantize `per_bin` evenly spaced points of every occupied bin
    (clipped to the observed extremes) with the candidate's qparams."""
    counts, edges = obs.histogram
    qp = compute_qparams(lo, hi, obs.effective_spec)
    s, z = float(qp.scale), int(qp.zero_point)
    qmin, qmax = obs.effective_spec.qmin, obs.effective_spec.qmax
    vmin, vmax = obs._hist.vmin, obs._hist.vmax
    total = 0.0
    for j in np.flatnonzero(counts):
        a, b = max(edges[j], vmin), min(edges[j + 1], vmax)
        pts = a + (np.arange(per_bin) + 0.5) / per_bin * (b - a)
        q = np.clip(np.rint(pts / s) + z, qmin, qmax)
        total += counts[j] * np.mean((pts - s * (q - z)) ** 2)
    return total / counts.sum()


@pytest.mark.parametrize("bits,symmetric", [(8, False), (4, True), (3, False)])
def test_expected_mse_matches_numeric_integration(bits, symmetric):
    rng = np.random.default_rng(bits)
    x = _heavy_tailed(rng, 5000)
    obs = MSEObserver(QuantSpec(bits=bits, symmetric=symmetric), bins=48).update(x)
    for lo, hi in ((x.min(), x.max()), (-3.0, 2.5), (-0.5, 7.0), (0.0, 0.0)):
        got = float(obs.expected_mse(lo, hi))
        assert got == pytest.approx(_numeric_expected_mse(obs, lo, hi), rel=2e-3)
    many = obs.expected_mse(np.float32([-1, -2, -3]), np.float32([1, 2, 3]))
    assert many.shape == (3,)


@pytest.mark.parametrize("seed", range(4))
def test_mse_symmetric_is_global_minimum(seed):
    rng = np.random.default_rng(seed)
    x = _heavy_tailed(rng, 5000) - np.float32(seed * 0.5)
    if seed % 2:
        x = -np.abs(x) + np.float32(0.3)  # mostly negative: the window's long side is < 0
    obs = MSEObserver(QuantSpec(bits=4, symmetric=True), bins=64).update(x)
    w = obs.bin_width
    amax = float(np.abs(x).max())
    T = np.arange(1, 200) * w
    T = np.append(T[T < amax], amax).astype(np.float32)
    errs = [float(obs.expected_mse(max(-t, x.min()), min(t, x.max()))) for t in T]
    assert float(obs.expected_mse(obs.min_val, obs.max_val)) == pytest.approx(min(errs), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_mse_asymmetric_search_is_near_global(seed, bits):
    """Brute force over all (low, high) edge pairs on a small histogram: the result is
    no worse than min-max, a coordinate-wise minimum, and within 2 % of the global one."""
    rng = np.random.default_rng(100 + seed)
    kind = seed % 3
    if kind == 0:
        x = rng.standard_t(1.5, 4000)
    elif kind == 1:
        x = rng.laplace(size=4000) + (rng.random(4000) < 0.01) * rng.normal(0, 30, 4000)
    else:
        x = np.exp(rng.normal(0, 1.5, 4000)) - 0.3
    x = x.astype(np.float32)
    obs = MSEObserver(QuantSpec(bits=bits, signed=bool(seed % 2)), bins=64).update(x)
    edges = obs.histogram[1]
    vmin, vmax = float(x.min()), float(x.max())
    lows = np.append(vmin, edges[(edges > vmin) & (edges <= min(0, vmax))]).astype(np.float32)
    highs = np.append(edges[(edges >= max(0, vmin)) & (edges < vmax)], vmax).astype(np.float32)
    L, H = np.meshgrid(lows, highs, indexing="ij")
    grid = obs.expected_mse(L.ravel(), H.ravel()).reshape(L.shape)
    got = float(obs.expected_mse(obs.min_val, obs.max_val))
    il = int(np.flatnonzero(lows == obs.min_val)[0])
    ih = int(np.flatnonzero(highs == obs.max_val)[0])
    assert got <= grid[0, -1]  # min-max
    assert got <= grid[:, ih].min() * (1 + 1e-12)
    assert got <= grid[il, :].min() * (1 + 1e-12)
    assert got <= 1.02 * grid.min()


# ----------------------------------------------------------------------------------------
# entropy


def _kl_oracle(counts, levels, first):
    """TensorRT's KL calibration, written out with plain loops (see EntropyObserver)."""
    counts = [int(c) for c in counts]
    n = len(counts)
    out = {}
    for i in range(first, n + 1):
        p = counts[:i]
        p[-1] += sum(counts[i:])
        ngroups = min(levels, i)
        size = max(i // levels, 1)
        q = [0.0] * i
        for g in range(ngroups):
            start = g * size
            stop = i if g == ngroups - 1 else start + size
            mass = sum(counts[start:stop])
            nonzero = [b for b in range(start, stop) if p[b] > 0]
            for b in nonzero:
                q[b] = mass / len(nonzero)
        ps, qs = sum(p), sum(q)
        kl = 0.0
        for pb, qb in zip(p, q):
            if pb > 0:
                if qb == 0:
                    kl = math.inf
                    break
                kl += pb / ps * math.log((pb / ps) / (qb / qs))
        out[i] = kl
    return out


@pytest.mark.parametrize("bits,signed,bins", [(8, True, 512), (8, False, 1024), (4, True, 512)])
def test_entropy_choice_is_kl_minimiser(bits, signed, bins):
    rng = np.random.default_rng(bits + signed)
    x = _heavy_tailed(rng, 20000)
    if not signed:
        x = np.abs(x)
    obs = _feed(EntropyObserver(QuantSpec(bits=bits, signed=signed), bins=bins), np.array_split(x, 3))
    counts, edges = obs.histogram
    n = int(np.flatnonzero(counts)[-1]) + 1
    levels = 1 << (bits - 1 + (not signed))
    assert obs.levels == levels
    first = min(max(128, levels), n)
    oracle = _kl_oracle(counts[:n], levels, first)
    thresholds, kl = obs.divergences()
    assert len(kl) == len(oracle)
    np.testing.assert_allclose(kl, [oracle[i] for i in sorted(oracle)], rtol=1e-9, atol=1e-15)
    best_i = min(sorted(oracle), key=lambda i: oracle[i])
    amax = float(np.abs(x).max())
    T = min(best_i * obs.bin_width, amax)
    assert T < amax  # heavy tails get clipped
    assert float(obs.max_val) == np.float32(min(T, float(x.max())))
    if signed:
        assert float(obs.min_val) == np.float32(max(-T, float(x.min())))
    else:
        assert float(obs.min_val) == float(x.min()) >= 0  # [0, T] after widening


def test_entropy_without_outliers_and_all_zero():
    x = np.zeros(100, np.float32)
    obs = EntropyObserver(QuantSpec()).update(x)
    assert (float(obs.min_val), float(obs.max_val)) == (0.0, 0.0)
    qp = obs.qparams()
    assert float(qp.scale) == np.finfo(np.float32).eps and int(qp.zero_point) == -128
    # few values: fewer occupied bins than the first candidate, so no clipping
    x = np.float32([-1.0, 0.25, 3.0])
    obs = EntropyObserver(QuantSpec(), bins=256).update(x)
    assert (float(obs.min_val), float(obs.max_val)) == (-1.0, 3.0)


# ----------------------------------------------------------------------------------------
# errors


ALL_PER_TENSOR = [
    lambda: MinMaxObserver(QuantSpec()),
    lambda: MovingAverageMinMaxObserver(QuantSpec()),
    lambda: PercentileObserver(QuantSpec(), bins=16),
    lambda: MSEObserver(QuantSpec(), bins=16),
    lambda: EntropyObserver(QuantSpec(), bins=256),
]
ALL = ALL_PER_TENSOR + [
    lambda: PerChannelMinMaxObserver(QuantSpec(axis=0)),
    lambda: MovingAveragePerChannelMinMaxObserver(QuantSpec(axis=0)),
]


@pytest.mark.parametrize("make", ALL)
def test_bad_input_errors(make):
    obs = make()
    with pytest.raises(ValueError, match="update"):
        obs.qparams()
    with pytest.raises(ValueError, match="update"):
        obs.min_val
    with pytest.raises(ValueError, match="x contains NaN"):
        obs.update(np.float32([1.0, np.nan]))
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        obs.update(np.float32([1.0, np.inf]))
    with pytest.raises(ValueError, match="x is empty"):
        obs.update(np.zeros((0, 3), np.float32))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        obs.update(np.arange(4))
    with pytest.raises(ValueError, match="outside the float32 range"):
        obs.update(np.float64([1e300]))
    assert not obs.observed  # nothing was half-recorded


@pytest.mark.parametrize("cls", [PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver])
def test_per_channel_errors(cls):
    with pytest.raises(ValueError, match="spec.axis must be an integer"):
        cls(QuantSpec())
    obs = cls(QuantSpec(axis=2))
    with pytest.raises(ValueError, match="spec.axis=2 is out of range"):
        obs.update(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="x is a scalar"):
        obs.update(np.float32(1.0))
    obs = cls(QuantSpec(axis=1)).update(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x of shape \(2, 5\).*earlier batches had \(4,\)"):
        obs.update(np.zeros((2, 5), np.float32))
    obs.update(np.ones((7, 4), np.float32))  # other axes may differ per-channel
    grp = cls(QuantSpec(axis=1, block_size=2)).update(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="earlier batches"):
        grp.update(np.zeros((3, 4), np.float32))


@pytest.mark.parametrize(
    "cls", [MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver, EntropyObserver]
)
def test_per_tensor_observer_rejects_axis(cls):
    with pytest.raises(ValueError, match="spec.axis must be None"):
        cls(QuantSpec(axis=0))


def test_constructor_errors():
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        MinMaxObserver("int8")
    with pytest.raises(TypeError, match="reduce_range must be True or False"):
        MinMaxObserver(QuantSpec(), reduce_range=1)
    with pytest.raises(ValueError, match="reduce_range=True needs spec.bits >= 2"):
        MinMaxObserver(QuantSpec(bits=1), reduce_range=True)
    with pytest.raises(ValueError, match="reduce_range=True is impossible"):
        MinMaxObserver(QuantSpec(bits=2, narrow_range=True), reduce_range=True)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="averaging_constant must be in"):
            MovingAverageMinMaxObserver(QuantSpec(), averaging_constant=bad)
    for bad in ("0.1", True, None):
        with pytest.raises(TypeError, match="averaging_constant must be a real number"):
            MovingAveragePerChannelMinMaxObserver(QuantSpec(axis=0), averaging_constant=bad)
    with pytest.raises(ValueError, match="bins must be in"):
        MSEObserver(QuantSpec(), bins=1)
    with pytest.raises(TypeError, match="bins must be an integer"):
        PercentileObserver(QuantSpec(), bins=20.0)
    for bad in (49.0, 100.5):
        with pytest.raises(ValueError, match="percentile must be in"):
            PercentileObserver(QuantSpec(), percentile=bad)
    with pytest.raises(TypeError, match="percentile must be a real number"):
        PercentileObserver(QuantSpec(), percentile="99")
    with pytest.raises(ValueError, match="bins must be >= max"):
        EntropyObserver(QuantSpec(), bins=100)
    with pytest.raises(ValueError, match="start_bin must be in"):
        EntropyObserver(QuantSpec(), start_bin=0)
    with pytest.raises(ValueError, match="histogram|update"):
        MSEObserver(QuantSpec()).histogram
