from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from oracles import dequantize_scalar, quantize_scalar, round_exact

from npquant import (
    METHODS,
    ROUNDING_MODES,
    QParams,
    QuantSpec,
    dequantize,
    fake_quantize,
    fit_qparams,
    quantization_error,
    quantize,
    round_values,
)

NEAREST = ("half_even", "half_away", "half_up")
EXACT_METHODS = ("divide", "mul", "mul_add", "fma")

# ---- rounding modes at ties ------------------------------------------------------------

TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], np.float32)
EXPECTED_AT_TIES = {
    "half_even": [-2, -2, -0, 0, 2, 2],
    "half_away": [-3, -2, -1, 1, 2, 3],
    "half_up": [-2, -1, 0, 1, 2, 3],
    "floor": [-3, -2, -1, 0, 1, 2],
}


@pytest.mark.parametrize("mode", list(EXPECTED_AT_TIES))
def test_round_values_at_ties(mode):
    np.testing.assert_array_equal(round_values(TIES, mode), EXPECTED_AT_TIES[mode])


@pytest.mark.parametrize("mode", list(EXPECTED_AT_TIES))
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_quantize_rounds_ties_per_mode(mode, backend):
    # scale 1, zero point 0: the codes are the rounded values themselves
    qp = QParams(1.0, 0, QuantSpec(rounding=mode))
    np.testing.assert_array_equal(quantize(TIES, qp, backend=backend), EXPECTED_AT_TIES[mode])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_just_below_a_tie_is_not_rounded_up(dtype):
    # floor(v + 0.5) rounds 0.49999997 up in float32: the modes must not.
    v = np.nextafter(dtype(0.5), dtype(0))
    for mode in NEAREST:
        assert round_values(np.array([v, -v]), mode).tolist() == [0, 0], mode
    big = np.nextafter(dtype(2.5), dtype(0))
    assert round_values(np.array([big]), "half_away").tolist() == [2]
    assert round_values(np.array([big]), "half_up").tolist() == [2]


@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e5, 1e5, width=32)))
def test_round_values_match_exact_oracle(v):
    for mode in ("half_even", "half_away", "half_up", "floor"):
        got = round_values(v, mode)
        ref = [round_exact(Fraction(float(e)), mode) for e in v]
        np.testing.assert_array_equal(got, ref)


def test_stochastic_rounding_is_seeded_and_unbiased():
    v = np.full(20000, 0.25, np.float32)
    a = round_values(v, "stochastic", seed=3)
    b = round_values(v, "stochastic", seed=3)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(a.mean() - 0.25) < 0.02  # binomial sd ~0.003
    assert not np.array_equal(a, round_values(v, "stochastic", seed=4))
    with pytest.raises(ValueError, match="seed"):
        round_values(v, "stochastic")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_stochastic_rounding_at_ties(backend):
    # an exact tie goes either way with probability 1/2; an integer never moves
    v = np.repeat(TIES, 4000)
    qp = QParams(1.0, 0, QuantSpec(rounding="stochastic", seed=5))
    q = quantize(v, qp, backend=backend).astype(np.int64).reshape(len(TIES), -1)
    for row, t in zip(q, TIES):
        assert set(np.unique(row)) == {int(np.floor(t)), int(np.floor(t)) + 1}
        assert abs((row == np.floor(t) + 1).mean() - 0.5) < 0.04  # sd 0.008
    ints = np.arange(-5, 6, dtype=np.float32)
    np.testing.assert_array_equal(quantize(ints, qp, backend=backend), ints)


def test_stochastic_quantize_expectation():
    # E[dequantize(quantize(x))] = x inside the range: the point of stochastic rounding
    x = np.full(40000, 0.337, np.float32)
    qp = QParams(0.1, 0, QuantSpec(rounding="stochastic", seed=11))
    xh = fake_quantize(x, qp, backend="numpy")
    np.testing.assert_array_equal(np.unique(quantize(x, qp, backend="numpy")), [3, 4])
    assert abs(xh.mean() - 0.337) < 0.002


def test_round_values_rejects():
    with pytest.raises(ValueError, match="mode must be one of"):
        round_values(np.ones(2), "nearest")
    with pytest.raises(TypeError, match="floating-point"):
        round_values(np.ones(2, int), "floor")


# ---- quantize against the scalar oracle -------------------------------------------------


def _specs():
    return (
        st.tuples(
            st.integers(1, 16),
            st.booleans(),
            st.booleans(),
            st.sampled_from(["half_even", "half_away", "half_up", "floor"]),
        )
        .filter(lambda t: not (t[0] == 1 and t[2]))
        .map(  # 1-bit symmetric is refused
            lambda t: QuantSpec(bits=t[0], signed=t[1], symmetric=t[2], rounding=t[3])
        )
    )


@given(
    x=hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-1e4, 1e4, width=32)),
    spec=_specs(),
    method=st.sampled_from(EXACT_METHODS),
    data=st.data(),
)
def test_quantize_matches_oracle(x, spec, method, data):
    scale = data.draw(st.floats(0.0009765625, 128, width=32))
    zp = 0 if not spec.symmetric else spec.symmetric_zero_point
    if not spec.symmetric:
        zp = data.draw(st.integers(spec.qmin, spec.qmax))
    qp = QParams(scale, zp, spec)
    q = quantize(x, qp, method=method)
    assert q.dtype == spec.dtype and q.shape == x.shape
    ref = [quantize_scalar(e, scale, zp, spec.qmin, spec.qmax, spec.rounding, method) for e in x]
    np.testing.assert_array_equal(q, ref)
    xh = dequantize(q, qp)
    np.testing.assert_array_equal(xh, [dequantize_scalar(c, scale, zp) for c in q])


def test_methods_differ_near_ties_and_each_matches_its_definition():
    # x / S, x * (1/S) and fma disagree at ties: find such cases and check each method on them.
    rng = np.random.default_rng(0)
    scale = np.float32(0.062544405)
    k = rng.integers(-100, 100, 5000)
    x = ((k + 0.5) * scale).astype(np.float32)
    qp = QParams(scale, 7, QuantSpec(signed=False))
    codes = {m: quantize(x, qp, method=m) for m in EXACT_METHODS}
    for a, b in [("divide", "fma"), ("mul_add", "fma"), ("mul", "mul_add"), ("divide", "mul")]:
        assert not np.array_equal(codes[a], codes[b]), (a, b)
    differ = np.zeros(x.shape, bool)
    for m in EXACT_METHODS:
        differ |= codes[m] != codes["fma"]
    diff = np.nonzero(differ)[0]
    for i in diff[:40]:
        for m in EXACT_METHODS:
            assert codes[m][i] == quantize_scalar(x[i], scale, 7, 0, 255, "half_even", m)


def test_torch_method_resolves_by_granularity():
    x = np.linspace(-3, 3, 101, dtype=np.float32).reshape(1, 101)
    qp_t = fit_qparams(x, QuantSpec())
    np.testing.assert_array_equal(quantize(x, qp_t, method="torch"), quantize(x, qp_t, method="fma"))
    qp_c = fit_qparams(x, QuantSpec(axis=0))
    np.testing.assert_array_equal(quantize(x, qp_c, method="torch"), quantize(x, qp_c, method="mul_add"))
    with pytest.raises(ValueError, match="no per-group form"):
        quantize(x, fit_qparams(x, QuantSpec(axis=1, block_size=8)), method="torch")
    # PyTorch's fake-quantize functions use yet another arithmetic
    for qp in (qp_t, qp_c):
        np.testing.assert_array_equal(fake_quantize(x, qp, method="torch"), fake_quantize(x, qp, method="mul"))


# ---- invariants ---------------------------------------------------------------------


def _x_and_spec():
    return st.tuples(
        hnp.arrays(
            np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=st.floats(-1e3, 1e3, width=32)
        ),
        st.integers(1, 16),
        st.booleans(),
        st.booleans(),
        st.sampled_from(["tensor", "channel", "group"]),
        st.integers(1, 4),
        st.sampled_from(NEAREST),
        st.sampled_from(EXACT_METHODS),
    )


def _build(x, bits, signed, symmetric, gran, block, rounding):
    assume(not (bits == 1 and symmetric))  # refused by QuantSpec
    axis = None if gran == "tensor" else x.ndim - 1
    spec = QuantSpec(
        bits=bits,
        signed=signed,
        symmetric=symmetric,
        axis=axis,
        block_size=block if gran == "group" else None,
        rounding=rounding,
    )
    return spec, fit_qparams(x, spec)


def _per_element(qp, shape):
    from npquant.granularity import expand_params

    spec = qp.spec
    s = expand_params(qp.scale, shape, spec.axis, spec.block_size).astype(np.float64)
    z = expand_params(qp.zero_point, shape, spec.axis, spec.block_size).astype(np.int64)
    return s, z


@given(_x_and_spec())
def test_error_inside_range_at_most_half_a_step(args):
    x, bits, signed, symmetric, gran, block, rounding, method = args
    spec, qp = _build(x, bits, signed, symmetric, gran, block, rounding)
    q = quantize(x, qp, method=method).astype(np.int64)
    xh = dequantize(q, qp).astype(np.float64)
    s, z = _per_element(qp, x.shape)
    lo, hi = s * (spec.qmin - z), s * (spec.qmax - z)
    inside = (x >= lo) & (x <= hi)
    err = np.abs(x.astype(np.float64) - xh)
    # float32 arithmetic (x / S, then S * k) adds a few ulps to the ideal S / 2
    slack = 4 * np.finfo(np.float32).eps * (np.abs(x) + s)
    assert np.all(err[inside] <= 0.5 * s[inside] + slack[inside])
    # outside the range: saturated to the end codes
    assert np.all(q[x > hi] == spec.qmax)
    assert np.all(q[x < lo] == spec.qmin)


@given(_x_and_spec())
def test_zero_is_exact(args):
    x, bits, signed, symmetric, gran, block, rounding, method = args
    spec, qp = _build(x, bits, signed, symmetric, gran, block, rounding)
    zeros = np.zeros_like(x)
    q = quantize(zeros, qp, method=method)
    _, z = _per_element(qp, x.shape)
    np.testing.assert_array_equal(q, z)
    np.testing.assert_array_equal(dequantize(q, qp), zeros)


@given(
    hnp.arrays(np.float32, st.integers(2, 60), elements=st.floats(-1e3, 1e3, width=32)),
    st.integers(1, 16),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["half_even", "half_away", "half_up", "floor"]),
    st.sampled_from(EXACT_METHODS),
)
def test_monotonic(x, bits, signed, symmetric, rounding, method):
    assume(not (bits == 1 and symmetric))  # refused by QuantSpec
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric, rounding=rounding)
    qp = fit_qparams(x, spec)
    xs = np.sort(x)
    q = quantize(xs, qp, method=method).astype(np.int64)
    assert np.all(np.diff(q) >= 0)


@given(_x_and_spec())
def test_fake_quantize_idempotent(args):
    x, bits, signed, symmetric, gran, block, rounding, method = args
    _, qp = _build(x, bits, signed, symmetric, gran, block, rounding)
    once = fake_quantize(x, qp, method=method)
    np.testing.assert_array_equal(fake_quantize(once, qp, method=method), once)


def test_fake_quantize_dtype_and_grid():
    x = np.random.default_rng(1).normal(size=(4, 8))
    qp = fit_qparams(x, QuantSpec(bits=3, axis=0))
    fq = fake_quantize(x, qp)
    assert fq.dtype == np.float32 and fq.shape == x.shape
    for row in range(4):
        assert len(np.unique(fq[row])) <= 8


def test_bits_1_to_16_roundtrip_range():
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    for bits in range(1, 17):
        for signed in (True, False):
            qp = fit_qparams(x, QuantSpec(bits=bits, signed=signed))
            q = quantize(x, qp)
            assert q.min() >= qp.spec.qmin and q.max() <= qp.spec.qmax
            if bits >= 2:  # the rounded zero point may move an end by one code
                assert q.min() <= qp.spec.qmin + 1 and q.max() >= qp.spec.qmax - 1


def test_sqnr_gains_about_6db_per_bit():
    x = np.random.default_rng(2).uniform(-1, 1, 20000).astype(np.float32)
    sq = {b: quantization_error(x, fake_quantize(x, fit_qparams(x, QuantSpec(bits=b)))).sqnr_db for b in (4, 6, 8)}
    # uniform data: SQNR = 6.02 b dB (up to the range edges)
    for b, v in sq.items():
        assert abs(v - 6.02 * b) < 0.6, (b, v)


def test_per_channel_beats_per_tensor_on_unequal_rows():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 64)) * np.logspace(-3, 0, 16)[:, None]
    t = quantization_error(w, fake_quantize(w, fit_qparams(w, QuantSpec(bits=4, symmetric=True))))
    c = quantization_error(w, fake_quantize(w, fit_qparams(w, QuantSpec(bits=4, symmetric=True, axis=0))))
    g = quantization_error(w, fake_quantize(w, fit_qparams(w, QuantSpec(bits=4, symmetric=True, axis=1, block_size=8))))
    assert c.mse < t.mse and g.mse < c.mse


def test_float64_input_is_computed_in_float32():
    x64 = np.array([0.1 + 1e-12, -0.3], np.float64)
    qp = QParams(0.1, 0, QuantSpec())
    np.testing.assert_array_equal(quantize(x64, qp), quantize(x64.astype(np.float32), qp))
    np.testing.assert_array_equal(quantize(x64.astype(np.float16), qp), [1, -3])


def test_16_bit_codes():
    x = np.linspace(-1, 1, 70000, dtype=np.float32)
    qp = fit_qparams(x, QuantSpec(bits=16, signed=False))
    q = quantize(x, qp)
    assert q.dtype == np.uint16
    assert quantization_error(x, dequantize(q, qp)).max_abs <= float(qp.scale) / 2 + 1e-7


# ---- quantization_error -------------------------------------------------------------


def test_quantization_error_values():
    e = quantization_error(np.array([1.0, -2.0, 2.0]), np.array([1.0, -1.0, 2.0]))
    assert e.mse == pytest.approx(1 / 3)
    assert e.sqnr_db == pytest.approx(10 * np.log10(9 / 1))
    assert e.max_abs == 1.0
    assert e.cosine == pytest.approx(7 / (3 * np.sqrt(6)))
    exact = quantization_error(np.ones(3), np.ones(3))
    assert exact.sqnr_db == np.inf and exact.mse == 0 and exact.cosine == 1.0
    assert quantization_error(np.zeros(2), np.zeros(2)).cosine == 1.0
    z = quantization_error(np.zeros(2), np.ones(2))
    assert z.sqnr_db == -np.inf and z.cosine == 0.0
    assert "sqnr" in str(e)


@pytest.mark.parametrize(
    "a, b, exc, match",
    [
        (np.ones(3), np.ones(4), ValueError, "shape"),
        (np.ones(3), np.array([1, np.nan, 1]), ValueError, "x_hat contains NaN"),
        (np.array([]), np.array([]), ValueError, "x is empty"),
        (np.array(["a"]), np.array(["a"]), TypeError, "x must be a real array"),
    ],
)
def test_quantization_error_rejects(a, b, exc, match):
    with pytest.raises(exc, match=match):
        quantization_error(a, b)


# ---- bad input -----------------------------------------------------------------------

QP = QParams(0.1, 0, QuantSpec())


@pytest.mark.parametrize(
    "x, qp, kw, exc, match",
    [
        (np.array([1.0, np.nan]), QP, {}, ValueError, "x contains NaN or infinity"),
        (np.array([np.inf]), QP, {}, ValueError, "x contains NaN or infinity"),
        (np.array([1e39]), QP, {}, ValueError, "outside the float32 range"),
        (np.array([], np.float32), QP, {}, ValueError, "x is empty"),
        (np.array([1, 2]), QP, {}, TypeError, "x must be a floating-point array"),
        (np.array([True]), QP, {}, TypeError, "x must be a floating-point array"),
        (np.array([1j]), QP, {}, TypeError, "x must be a floating-point array"),
        (np.ones(3, np.float32), "qp", {}, TypeError, "qparams must be a QParams"),
        (np.ones(3, np.float32), QP, {"method": "round"}, ValueError, "method must be one of"),
        (np.ones(3, np.float32), QP, {"backend": "cuda"}, ValueError, "backend must be one of"),
        (
            np.ones((2, 3), np.float32),
            QParams([0.1] * 3, 0, QuantSpec(axis=0)),
            {},
            ValueError,
            r"do not fit x of shape \(2, 3\)",
        ),
        (
            np.ones((2, 3), np.float32),
            QParams([0.1] * 3, 0, QuantSpec(axis=2)),
            {},
            ValueError,
            "axis=2 is out of range",
        ),
        (np.float32(1), QParams([0.1], 0, QuantSpec(axis=0)), {}, ValueError, "scalar"),
    ],
)
def test_quantize_rejects(x, qp, kw, exc, match):
    with pytest.raises(exc, match=match):
        quantize(x, qp, **kw)


@pytest.mark.parametrize(
    "q, exc, match",
    [
        (np.array([0.5]), TypeError, "q must be an integer array"),
        (np.array([], np.int8), ValueError, "q is empty"),
        (np.array([200], np.int16), ValueError, r"outside the spec's range \[-128, 127\]"),
    ],
)
def test_dequantize_rejects(q, exc, match):
    with pytest.raises(exc, match=match):
        dequantize(q, QP)


def test_dequantize_rejects_out_of_range_subbyte_codes():
    qp = QParams(0.1, 0, QuantSpec(bits=4))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        dequantize(np.array([8], np.int8), qp)


def test_public_names():
    import npquant

    for name in npquant.__all__:
        assert hasattr(npquant, name)
    assert set(ROUNDING_MODES) == {"half_even", "half_away", "half_up", "floor", "stochastic"}
    assert "torch" in METHODS and "divide" in METHODS


@pytest.mark.parametrize(
    "name, bits, signed", [("int4", 4, True), ("uint4", 4, False), ("int2", 2, True), ("uint2", 2, False)]
)
def test_dequantize_takes_ml_dtypes_sub_byte_integers(name, bits, signed):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    spec = QuantSpec(bits=bits, signed=signed)
    codes = np.arange(spec.qmin, spec.qmax + 1)
    qp = QParams(np.float32(0.37), 1 if signed else 2, spec)
    q8 = codes.astype(np.int8 if signed else np.uint8)
    q_sub = codes.astype(getattr(ml_dtypes, name))
    np.testing.assert_array_equal(dequantize(q_sub, qp), dequantize(q8, qp))
    with pytest.raises(TypeError, match="integer array"):
        dequantize(codes.astype(ml_dtypes.float8_e4m3fn), qp)
