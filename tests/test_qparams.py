import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import qparams_scalar

from npquant import QParams, QuantSpec, compute_qparams, dequantize, fit_qparams, quantize
from npquant.qparams import FLOAT32_EPS

# ---- QuantSpec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, qmin, qmax, dtype",
    [
        ({}, -128, 127, np.int8),
        ({"signed": False}, 0, 255, np.uint8),
        ({"narrow_range": True}, -127, 127, np.int8),
        ({"signed": False, "narrow_range": True}, 1, 255, np.uint8),
        ({"bits": 4}, -8, 7, np.int8),
        ({"bits": 4, "signed": False}, 0, 15, np.uint8),
        ({"bits": 2}, -2, 1, np.int8),
        ({"bits": 2, "signed": False}, 0, 3, np.uint8),
        ({"bits": 1}, -1, 0, np.int8),
        ({"bits": 1, "signed": False}, 0, 1, np.uint8),
        ({"bits": 9}, -256, 255, np.int16),
        ({"bits": 16}, -32768, 32767, np.int16),
        ({"bits": 16, "signed": False}, 0, 65535, np.uint16),
        ({"bits": 12, "signed": False}, 0, 4095, np.uint16),
    ],
)
def test_spec_ranges_and_smallest_dtype(kw, qmin, qmax, dtype):
    spec = QuantSpec(**kw)
    assert (spec.qmin, spec.qmax) == (qmin, qmax)
    assert spec.dtype == np.dtype(dtype)
    info = np.iinfo(spec.dtype)
    assert info.min <= spec.qmin and spec.qmax <= info.max


def test_spec_granularity_names():
    assert QuantSpec().granularity == "per_tensor"
    assert QuantSpec(axis=0).granularity == "per_channel"
    assert QuantSpec(axis=1, block_size=32).granularity == "per_group"


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"bits": 0}, ValueError, "bits"),
        ({"bits": 17}, ValueError, "bits"),
        ({"bits": 8.0}, TypeError, "bits"),
        ({"bits": True}, TypeError, "bits"),
        ({"signed": 1}, TypeError, "signed"),
        ({"symmetric": "yes"}, TypeError, "symmetric"),
        ({"axis": 1.0}, TypeError, "axis"),
        ({"axis": 0, "block_size": 0}, ValueError, "block_size"),
        ({"axis": 0, "block_size": -4}, ValueError, "block_size"),
        ({"block_size": 4}, ValueError, "block_size needs an axis"),
        ({"rounding": "nearest"}, ValueError, "rounding must be one of"),
        ({"rounding": "stochastic"}, ValueError, "seed"),
        ({"rounding": "stochastic", "seed": -1}, ValueError, "seed"),
        ({"bits": 1, "narrow_range": True}, ValueError, "narrow_range"),
        ({"bits": 1, "symmetric": True}, ValueError, r"bits=1 with symmetric=True .* codes \[-1, 0\]"),
        ({"bits": 1, "symmetric": True, "signed": False}, ValueError, r"codes \[0, 1\] around zero point 1"),
    ],
)
def test_spec_rejects_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        QuantSpec(**kw)


@pytest.mark.parametrize("signed", [True, False])
def test_one_bit_symmetric_is_refused_because_it_maps_everything_to_zero(signed):
    """What the error prevents: with the symmetric formula, 1 bit (codes [-1, 0] around 0,
    or [0, 1] around 1) has S = 2 max|x|, and every x / S in [-1/2, 1/2] rounds to the zero
    point. The spec is refused, naming both arguments and the alternatives."""
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    lo, hi = (-1, 0) if signed else (0, 1)
    z = 0 if signed else 1
    s = np.float32(1.0) / np.float32((hi - lo) / 2)  # the symmetric scale 2 max|x|
    assert s == 2
    codes = np.clip(np.rint(x / s) + z, lo, hi)
    assert np.all(codes == z)  # the trap: every weight would become 0
    with pytest.raises(ValueError, match="bits >= 2") as exc:
        QuantSpec(bits=1, signed=signed, symmetric=True)
    assert "symmetric=False" in str(exc.value) and "every weight would become 0" in str(exc.value)
    with pytest.raises(ValueError, match="bits=1 with symmetric=True"):
        QuantSpec(bits=2, signed=signed, symmetric=True).replace(bits=1)


@pytest.mark.parametrize("signed", [True, False])
def test_one_bit_asymmetric_keeps_a_non_zero_level(signed):
    x = np.array([-0.2, 0.1, 0.9, 1.0], np.float32)
    spec = QuantSpec(bits=1, signed=signed)
    qp = fit_qparams(x, spec)
    q = quantize(x, qp)
    grid = sorted({float(v) for v in dequantize(np.arange(spec.qmin, spec.qmax + 1).astype(spec.dtype), qp)})
    assert 0.0 in grid and len(grid) == 2 and max(grid) > 0  # {0, S}: zero exact, one positive level
    assert set(q.tolist()) == {spec.qmin, spec.qmax}  # both codes used
    # the ternary grid the error message offers
    t = fit_qparams(x, QuantSpec(bits=2, symmetric=True, narrow_range=True))
    np.testing.assert_array_equal(np.unique(quantize(np.array([-1.0, 0.0, 1.0], np.float32), t)), [-1, 0, 1])


def test_course_symmetric_scale_is_narrow_range():
    """The "Quantization in Depth" course's symmetric scale r_max / q_max = max|x| / 127
    (computed in float64 there) is narrow_range=True, as the docstrings say; the default is
    PyTorch's max|x| / 127.5."""
    import doctest

    import npquant.qparams as qparams_mod

    rng = np.random.default_rng(0)
    for _ in range(200):
        x = (rng.normal(size=(4, 4)) * rng.uniform(0.01, 100)).astype(np.float32)
        r_max = float(np.abs(x).max())  # a Python float, as the course's .item()
        narrow = fit_qparams(x, QuantSpec(symmetric=True, narrow_range=True))
        assert narrow.scale == np.float32(r_max / 127)
        wide = fit_qparams(x, QuantSpec(symmetric=True))
        assert wide.scale == np.float32(r_max / 127.5)
        # with the course's scale, the course's quantizer (float32 r / S, round, clamp to int8) gives npquant's codes
        course = np.clip(np.rint(x / narrow.scale), -128, 127)
        np.testing.assert_array_equal(quantize(x, narrow), course)
    for name in ("QuantSpec", "compute_qparams", "fit_qparams"):
        doc = getattr(qparams_mod, name).__doc__
        assert "narrow_range=True" in doc and "127" in doc, name
    results = doctest.testmod(qparams_mod)
    assert results.attempted >= 3 and results.failed == 0


def test_spec_replace_validates():
    spec = QuantSpec()
    assert spec.replace(bits=4).bits == 4
    with pytest.raises(ValueError, match="bits"):
        spec.replace(bits=20)


# ---- compute_qparams ----------------------------------------------------------------


def test_known_asymmetric_uint8():
    # range [-1, 3] over 255 steps: S = 4/255, Z = 0 - round(-1 / S) = round(63.75) = 64
    qp = compute_qparams(-1.0, 3.0, QuantSpec(signed=False))
    assert qp.scale == np.float32(4) / np.float32(255)
    assert qp.zero_point == 64
    assert qp.scale.dtype == np.float32 and qp.zero_point.dtype == np.int32
    assert qp.scale.shape == () and qp.zero_point.shape == ()


def test_known_symmetric():
    qp = compute_qparams(-2.0, 1.0, QuantSpec(symmetric=True))
    assert qp.scale == np.float32(2) / np.float32(127.5) and qp.zero_point == 0
    qp = compute_qparams(-2.0, 1.0, QuantSpec(symmetric=True, narrow_range=True))
    assert qp.scale == np.float32(2) / np.float32(127) and qp.zero_point == 0
    qp = compute_qparams(-2.0, 1.0, QuantSpec(symmetric=True, signed=False))
    assert qp.zero_point == 128


def test_range_widened_to_include_zero():
    # all-positive range: the minimum becomes 0, so Z = qmin and 0.0 maps to a code exactly
    qp = compute_qparams(2.0, 6.0, QuantSpec(signed=False))
    assert qp.zero_point == 0 and qp.scale == np.float32(6) / np.float32(255)
    qp = compute_qparams(-6.0, -2.0, QuantSpec(signed=True))
    assert qp.zero_point == 127


def test_constant_tensor_gets_valid_scale():
    for v in (0.0, 5.0, -3.0):
        qp = compute_qparams(v, v, QuantSpec())
        assert np.isfinite(qp.scale) and qp.scale > 0
    qp = compute_qparams(0.0, 0.0, QuantSpec())
    assert qp.scale == np.float32(FLOAT32_EPS)


def test_zero_point_rounded_half_even_and_clamped():
    # min / S = -0.5 * k exactly: choose a range whose zero point lands on a tie.
    spec = QuantSpec(bits=2, signed=False)  # qmax - qmin = 3
    qp = compute_qparams(-0.5, 2.5, spec)  # S = 1, Z = 0 - round(-0.5) = 0 (half even)
    assert qp.scale == 1 and qp.zero_point == 0
    qp = compute_qparams(-1.5, 1.5, spec)  # S = 1, Z = 0 - round(-1.5) = 2
    assert qp.zero_point == 2


@given(
    lo=st.floats(-1e6, 0, width=32),
    hi=st.floats(0, 1e6, width=32),
    bits=st.integers(1, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
    narrow=st.booleans(),
)
def test_matches_scalar_oracle(lo, hi, bits, signed, symmetric, narrow):
    if bits == 1 and (narrow or symmetric):
        return  # refused by QuantSpec (test_spec_rejects_bad_arguments)
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric, narrow_range=narrow)
    qp = compute_qparams(lo, hi, spec)
    s, z = qparams_scalar(lo, hi, spec.qmin, spec.qmax, symmetric, signed)
    assert qp.scale == s
    assert qp.zero_point == z
    assert spec.qmin <= qp.zero_point <= spec.qmax


def test_per_channel_shapes():
    spec = QuantSpec(axis=0)
    qp = compute_qparams([-1.0, -2.0, 0.0], [1.0, 0.5, 0.0], spec)
    assert qp.scale.shape == (3,) and qp.zero_point.shape == (3,)


@pytest.mark.parametrize(
    "lo, hi, exc, match",
    [
        (1.0, 0.0, ValueError, "min_val must be <= max_val"),
        (np.nan, 1.0, ValueError, "min_val must be finite"),
        (0.0, np.inf, ValueError, "max_val must be finite"),
        ([], [], ValueError, "min_val is empty"),
        ("a", 1.0, TypeError, "min_val"),
        ([0.0, 0.0], [1.0], ValueError, "shape"),
        (-3e38, 3e38, ValueError, "overflows"),
    ],
)
def test_compute_qparams_rejects(lo, hi, exc, match):
    with pytest.raises(exc, match=match):
        compute_qparams(lo, hi, QuantSpec())


def test_compute_qparams_needs_spec():
    with pytest.raises(TypeError, match="spec"):
        compute_qparams(0.0, 1.0, {"bits": 8})


# ---- QParams validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, zp, spec, exc, match",
    [
        (0.0, 0, QuantSpec(), ValueError, "scale must be positive"),
        (-0.1, 0, QuantSpec(), ValueError, "scale must be positive"),
        (np.inf, 0, QuantSpec(), ValueError, "scale must be positive"),
        (np.nan, 0, QuantSpec(), ValueError, "scale must be positive"),
        (1e39, 0, QuantSpec(), ValueError, "scale must be positive"),
        (1e-40, 0, QuantSpec(), ValueError, "scale must be a normal float32"),
        (0.1, 128, QuantSpec(), ValueError, r"zero_point must be in \[-128, 127\]"),
        (0.1, -1, QuantSpec(signed=False), ValueError, "zero_point must be in"),
        (0.1, 0.5, QuantSpec(), ValueError, "zero_point must hold integers"),
        (0.1, 3, QuantSpec(symmetric=True), ValueError, "symmetric spec needs zero_point=0"),
        ([0.1, 0.2], 0, QuantSpec(), ValueError, "per-tensor qparams need one scale"),
        ([[0.1, 0.2]], 0, QuantSpec(axis=0), ValueError, "per-channel qparams need 1-D"),
        ([0.1, 0.2], [0, 0, 0], QuantSpec(axis=0), ValueError, "does not match scale shape"),
        (0.1, 0, "int8", TypeError, "spec must be a QuantSpec"),
        ("x", 0, QuantSpec(), TypeError, "scale must be a real array"),
        (0.1, "z", QuantSpec(), TypeError, "zero_point must be an integer array"),
    ],
)
def test_qparams_rejects(scale, zp, spec, exc, match):
    with pytest.raises(exc, match=match):
        QParams(scale, zp, spec)


def test_qparams_is_immutable():
    qp = QParams(0.5, 3, QuantSpec())
    with pytest.raises(AttributeError):
        qp.scale = np.float32(1)
    with pytest.raises(ValueError):
        qp.scale[...] = 1


def test_check_fits():
    QParams([0.1, 0.2], [0, 0], QuantSpec(axis=1)).check_fits((5, 2))
    with pytest.raises(ValueError, match=r"needs shape \(3,\)"):
        QParams([0.1, 0.2], [0, 0], QuantSpec(axis=1)).check_fits((5, 3))
    qp = QParams(np.ones((2, 3), np.float32), 0, QuantSpec(axis=1, block_size=4))
    qp.check_fits((2, 9))
    qp.check_fits((2, 12))
    with pytest.raises(ValueError, match=r"needs shape \(2, 4\)"):
        qp.check_fits((2, 13))
    with pytest.raises(ValueError, match="axis=3 is out of range"):
        QParams([0.1], [0], QuantSpec(axis=3)).check_fits((4, 1))


# ---- fit_qparams -------------------------------------------------------------------


def test_fit_qparams_per_group_last_block_shorter():
    x = np.arange(14, dtype=np.float32).reshape(2, 7) - 5
    spec = QuantSpec(axis=1, block_size=3, signed=False)
    qp = fit_qparams(x, spec)
    assert qp.scale.shape == (2, 3)
    for r in range(2):
        for b, (s0, s1) in enumerate([(0, 3), (3, 6), (6, 7)]):
            blk = x[r, s0:s1]
            ref = compute_qparams(blk.min(), blk.max(), spec.replace(axis=None, block_size=None))
            assert qp.scale[r, b] == ref.scale and qp.zero_point[r, b] == ref.zero_point


def test_fit_qparams_per_channel_negative_axis():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    a = fit_qparams(x, QuantSpec(axis=-1))
    b = fit_qparams(x, QuantSpec(axis=2))
    np.testing.assert_array_equal(a.scale, b.scale)
    assert a.scale.shape == (5,)
    mx = np.abs(x).max(axis=(0, 1))
    ref = compute_qparams(x.min(axis=(0, 1)), x.max(axis=(0, 1)), QuantSpec(axis=2))
    np.testing.assert_array_equal(a.scale, ref.scale)
    assert np.all(a.scale > 0) and mx.shape == (5,)


@pytest.mark.parametrize(
    "x, spec, exc, match",
    [
        (np.array([1, 2, 3]), QuantSpec(), TypeError, "x must be a floating-point array"),
        (np.array([1.0, np.nan]), QuantSpec(), ValueError, "NaN or infinity"),
        (np.zeros((0, 3)), QuantSpec(), ValueError, "x is empty"),
        (np.zeros((2, 3)), QuantSpec(axis=2), ValueError, "axis=2 is out of range"),
        (np.float32(1.0), QuantSpec(axis=0), ValueError, "scalar"),
    ],
)
def test_fit_qparams_rejects(x, spec, exc, match):
    with pytest.raises(exc, match=match):
        fit_qparams(x, spec)
