import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant._kernels import requantize as _k
from npquant.requant.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from npquant.requant.modes import REQUANT_MODES, effective_multiplier, requantize, requantize_ties

int32s = st.integers(INT32_MIN, INT32_MAX)


# ---- scalar oracles, from the definitions, in Python integers / floats ----------------


def srdhm_ref(a, b):
    if a == b == INT32_MIN:
        return INT32_MAX
    return math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))  # ties toward +inf


def rdbpot_ref(x, e):
    v = Fraction(x, 1 << e)
    return int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v))  # ties away from 0


def wrap32(v):
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def mbqm_ref(x, m0, shift, rounding):
    if rounding == "double":
        return rdbpot_ref(srdhm_ref(wrap32(x << max(shift, 0)), m0), max(-shift, 0))
    return math.floor(Fraction(x * m0, 1 << (31 - shift)) + Fraction(1, 2))


def requant_ref(acc, m, zp, qmin, qmax, mode):
    if mode in ("tflite", "tflite_single"):
        rounding = "double" if mode == "tflite" else "single"
        m0, shift = (int(v) for v in quantize_multiplier(m, rounding))
        v = mbqm_ref(acc, m0, shift, rounding) + zp
    elif mode == "fp32":
        v = int(np.rint(np.float32(np.float32(acc) * np.float32(m)))) + zp
    else:
        v = round(float(acc) * float(np.float32(m)) + zp)  # Python floats are IEEE doubles; round is half-even
    return min(max(v, qmin), qmax)


# ---- quantize_multiplier: TFLite's published vectors ------------------------------------
# Source: tensorflow/lite/kernels/internal/quantization_util_test.cc (QuantizeMultiplier
# SmallerThanOneExp, GreaterThanOne, Underflow, Array). Same (m0, shift) convention.

TFLITE_MULTIPLIERS = [
    (0.25, 1073741824, -1),
    (0.50 - 5e-9, 2147483627, -1),
    (0.50 - 1e-10, 1073741824, 0),
    (0.50, 1073741824, 0),
    (0.75, 1610612736, 0),
    (1 - 1e-9, 2147483646, 0),
    (1 + 1e-11, 1073741824, 1),
    (1.25, 1342177280, 1),
    (1.50, 1610612736, 1),
    (1.75, 1879048192, 1),
    (2 - 1e-9, 2147483647, 1),
    (2 - 1e-11, 1073741824, 2),
    (2.0, 1073741824, 2),
    (2.0**-31, 1073741824, -30),
    (2.0**-32, 1073741824, -31),
    (float(np.float32(0.99)) * 2.0**-32, 0, 0),
    (2.0**-33, 0, 0),
    (0.0, 0, 0),
    (0.125, 1073741824, -2),
    (4.0, 1073741824, 3),
    (-4.0, -1073741824, 3),
    (-0.125, -1073741824, -2),
]


@pytest.mark.parametrize("real, m0, shift", TFLITE_MULTIPLIERS)
def test_quantize_multiplier_tflite_vectors(real, m0, shift):
    got = quantize_multiplier(real)
    assert (int(got[0]), int(got[1])) == (m0, shift)


def test_quantize_multiplier_single_rounding_saturates_large_shift():
    # TFLITE_SINGLE_ROUNDING: shift > 30 becomes (2^31 - 1, 30)
    assert tuple(int(v) for v in quantize_multiplier(2.0**31, "single")) == (INT32_MAX, 30)
    assert tuple(int(v) for v in quantize_multiplier(2.0**31, "double")) == (1 << 30, 32)
    with pytest.raises(ValueError, match="real must be >= 0"):
        quantize_multiplier(-0.5, "single")


@given(st.floats(2.0**-31, 2.0**30, allow_nan=False))
def test_quantize_multiplier_represents_the_real(real):
    m0, shift = (int(v) for v in quantize_multiplier(real))
    assert (1 << 30) <= m0 < (1 << 31)
    approx = Fraction(m0) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(real)) <= Fraction(2) ** (shift - 32)  # half a unit of m0


def test_quantize_multiplier_is_vectorized_and_rejects():
    m0, shift = quantize_multiplier(np.array([[0.5, 0.25]]))
    assert m0.shape == (1, 2) and m0.dtype == np.int32 and shift.dtype == np.int32
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier(np.inf)
    with pytest.raises(TypeError, match="real"):
        quantize_multiplier("0.5")
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize_multiplier(0.5, "triple")


# ---- gemmlowp primitives ----------------------------------------------------------------


def test_srdhm_special_cases():
    # gemmlowp fixedpoint.h: the only overflow, INT32_MIN * INT32_MIN, saturates
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX
    # Q31 0.5 * 0.5 = 0.25; exact halves: +0.5 -> 1, -0.5 -> 0, -1.5 -> -1 (toward +inf)
    assert saturating_rounding_doubling_high_mul(1 << 30, 1 << 30) == 1 << 29
    assert saturating_rounding_doubling_high_mul(1, 1 << 30) == 1
    assert saturating_rounding_doubling_high_mul(-1, 1 << 30) == 0
    assert saturating_rounding_doubling_high_mul(-3, 1 << 30) == -1
    assert saturating_rounding_doubling_high_mul(INT32_MAX, INT32_MAX) == INT32_MAX - 1


@given(int32s, int32s)
def test_srdhm_matches_definition(a, b):
    assert saturating_rounding_doubling_high_mul(a, b) == srdhm_ref(a, b)


def test_rdbpot_ties_away_from_zero():
    x = np.array([-7, -6, -5, -3, -2, -1, 1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(rounding_divide_by_pot(x, 1), [-4, -3, -3, -2, -1, -1, 1, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(rounding_divide_by_pot([INT32_MIN, INT32_MAX], 31), [-1, 1])
    np.testing.assert_array_equal(rounding_divide_by_pot([5, -5], 0), [5, -5])


@given(int32s, st.integers(0, 31))
def test_rdbpot_matches_definition(x, e):
    assert rounding_divide_by_pot(x, e) == rdbpot_ref(x, e)


# ---- MultiplyByQuantizedMultiplier: TFLite's published vectors --------------------------
# Source: quantization_util_test.cc, MultiplyByQuantizedMultiplierInt32 (both roundings
# for non-negative multipliers; negative multipliers in double rounding only).


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize(
    "x, real, expected",
    [
        (0, 0.1, 0),
        (1, 0.0, 0),
        (10000, 0.00097656, 10),
        (-10000, 0.00097656, -10),
        (INT32_MIN, 0.00001, -21475),
        (INT32_MAX, 0.00001, 21475),
    ],
)
def test_mbqm_tflite_vectors(rounding, x, real, expected):
    m0, shift = quantize_multiplier(real, rounding)
    assert multiply_by_quantized_multiplier(x, m0, shift, rounding) == expected


@pytest.mark.parametrize(
    "x, real, expected",
    [(10000, -0.00097656, -10), (-10000, -0.00097656, 10), (INT32_MIN, -0.00001, 21475), (INT32_MAX, -0.00001, -21475)],
)
def test_mbqm_tflite_negative_multiplier_vectors(x, real, expected):
    m0, shift = quantize_multiplier(real)
    assert multiply_by_quantized_multiplier(x, m0, shift) == expected


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_mbqm_max_operands(rounding):
    # quantization_util_test.cc: x = m0 = INT32_MAX, shift = -3 gives round(x * m0 / 2^34)
    x = INT32_MAX
    expected = round(x * INT32_MAX / 2.0**34)
    assert multiply_by_quantized_multiplier(x, INT32_MAX, -3, rounding) == expected
    assert multiply_by_quantized_multiplier(-x, INT32_MAX, -3, rounding) == -expected


@given(int32s, st.integers(0, INT32_MAX), st.integers(-31, 30), st.sampled_from(["double", "single"]))
def test_mbqm_matches_definition(x, m0, shift, rounding):
    assert multiply_by_quantized_multiplier(x, m0, shift, rounding) == mbqm_ref(x, m0, shift, rounding)


# ---- requantize ---------------------------------------------------------------------


@given(
    acc=hnp.arrays(np.int32, st.integers(1, 40), elements=int32s),
    m=st.floats(2.0**-24, 4.0),
    zp=st.integers(-128, 127),
    mode=st.sampled_from(REQUANT_MODES),
)
def test_requantize_matches_oracle(acc, m, zp, mode):
    if m >= 0.5:  # TFLite shifts acc left first: keep it inside int32 (see the overflow test)
        acc = acc >> 3
    got = requantize(acc, m, zp, -128, 127, mode=mode)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, [requant_ref(int(a), m, zp, -128, 127, mode) for a in acc])


@given(
    acc=hnp.arrays(
        np.int32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), elements=st.integers(-(1 << 24), 1 << 24)
    ),
    mode=st.sampled_from(REQUANT_MODES),
    data=st.data(),
)
def test_requantize_kernel_equals_twin(acc, mode, data):
    axis = data.draw(st.integers(0, acc.ndim - 1))
    c = acc.shape[axis]
    mult = np.array(data.draw(st.lists(st.floats(1e-5, 2.0), min_size=c, max_size=c)))
    zp = data.draw(st.integers(0, 255))
    for m, ax in ((mult, axis if c > 1 else None), (float(mult[0]), None)):
        a = requantize(acc, m, zp, 0, 255, mode=mode, axis=ax, backend="numba")
        b = requantize(acc, m, zp, 0, 255, mode=mode, axis=ax, backend="numpy")
        assert a.dtype == b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


EXTREME_ACC = np.array(
    [
        INT32_MIN,
        INT32_MIN + 1,
        -(1 << 30) - 1,
        -(1 << 30),
        -65537,
        -1,
        0,
        1,
        65536,
        (1 << 30) - 1,
        1 << 30,
        INT32_MAX - 1,
        INT32_MAX,
    ],
    np.int64,
)
# multipliers at the edges: TFLite's smallest shift, m0 near 2^31, just under and at 0.5 and 1
# (where the left shift starts), large ones (fp32 products beyond int32 and float32)
EDGE_MULTIPLIERS = [2.0**-31, 2.0**-24, 1e-5, 0.5 - 1e-10, 0.5, 1 - 1e-9, 1.0, 3.75, 1e6, 1e30]


def _kernel_and_twin(acc, m, zp, qmin, qmax, mode, axis=None):
    a = requantize(acc, m, zp, qmin, qmax, mode=mode, axis=axis, backend="numba")
    b = requantize(acc, m, zp, qmin, qmax, mode=mode, axis=axis, backend="numpy")
    assert a.dtype == b.dtype and a.shape == b.shape == np.shape(acc)
    np.testing.assert_array_equal(a, b)
    return a


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_requantize_kernel_equals_twin_at_the_edges(mode):
    rng = np.random.default_rng(3)
    rand = rng.integers(INT32_MIN, INT32_MAX, 50, endpoint=True)
    for m in EDGE_MULTIPLIERS:
        if mode == "tflite" and m >= 2.0**30:
            continue  # shift > 30: an error in this mode
        acc = np.concatenate([EXTREME_ACC, rand])
        if mode == "tflite" and m >= 0.5:  # keep TFLite's int32 left shift defined
            left = int(quantize_multiplier(m)[1])
            acc = np.clip(acc, -(1 << (31 - left)), (1 << (31 - left)) - 1)
        for zp, qmin, qmax in (
            (0, -128, 127),
            (-128, -128, 127),
            (5, 5, 255),
            (0, 0, 65535),
            (-7, INT32_MIN, INT32_MAX),
        ):
            got = _kernel_and_twin(acc, m, zp, qmin, qmax, mode)
            if len(acc) == len(EXTREME_ACC) + 50 and m in (1e-5, 0.5):
                ref = [requant_ref(int(a), m, zp, qmin, qmax, mode) for a in acc]
                np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_requantize_kernel_equals_twin_per_channel_layouts(mode):
    # rows shorter than the kernel's cut-off (a linear layer's (batch, out), n_inner = 1)
    # run flattened with one parameter set per value; longer ones per (outer, channel) row
    rng = np.random.default_rng(4)
    for shape, axis in (
        ((7, 5), 1),
        ((5, 7), 0),
        ((1, 9), 1),
        ((9, 1), 0),
        ((2, 3, 15), 1),
        ((2, 3, 16), 1),
        ((2, 3, 17), 1),
        ((3, 2, 5, 7), 1),
        ((2, 3, 4, 5), 3),
        ((0, 4), 1),
        ((4, 0, 3), 0),
    ):
        acc = rng.integers(-(1 << 24), 1 << 24, shape, endpoint=True).astype(np.int32)
        if acc.size:
            acc.reshape(-1)[:3] = (INT32_MIN >> 5, INT32_MAX >> 5, 0)
        c = shape[axis]
        mult = rng.choice(EDGE_MULTIPLIERS[:6] + [0.75, 2.5], c)
        out = _kernel_and_twin(acc, mult, 3, -128, 127, mode, axis)
        for k in range(c):  # per channel is per tensor on each slice
            sl = (slice(None),) * axis + (k,)
            np.testing.assert_array_equal(out[sl], requantize(acc[sl], float(mult[k]), 3, -128, 127, mode=mode))


def test_requantize_input_dtypes_and_strides():
    rng = np.random.default_rng(5)
    base = rng.integers(-30000, 30000, (6, 4, 10)).astype(np.int64)
    mult = np.array([0.01, 0.002, 0.3, 0.04])
    for mode in REQUANT_MODES:
        ref = requantize(np.ascontiguousarray(base, np.int32), mult, 0, -128, 127, mode=mode, axis=1)
        for dt in (np.int16, np.int32, np.int64, np.uint32):
            acc = np.abs(base).astype(dt) if dt == np.uint32 else base.astype(dt)
            want = (
                ref
                if dt != np.uint32
                else requantize(np.abs(base).astype(np.int32), mult, 0, -128, 127, mode=mode, axis=1)
            )
            np.testing.assert_array_equal(_kernel_and_twin(acc, mult, 0, -128, 127, mode, 1), want)
        big = np.zeros((6, 8, 20), np.int32)
        big[:, ::2, ::2] = base
        view = big[:, ::2, ::2]
        np.testing.assert_array_equal(_kernel_and_twin(view, mult, 0, -128, 127, mode, 1), ref)
        t = np.ascontiguousarray(base.transpose(2, 1, 0)).transpose(2, 1, 0)  # F-ordered
        np.testing.assert_array_equal(_kernel_and_twin(t, mult, 0, -128, 127, mode, 1), ref)
    with pytest.raises(ValueError, match="int32 range"):
        requantize(np.array([1 << 31], np.uint32), 0.5, 0, -128, 127)
    with pytest.raises(ValueError, match="int32 range"):
        requantize(np.array([INT32_MIN - 1], np.int64), 0.5, 0, -128, 127)


@given(
    st.sampled_from([int(v) for v in EXTREME_ACC]) | int32s,
    st.sampled_from([INT32_MIN, INT32_MAX, 0, 1, -1, 1 << 30]) | int32s,
)
def test_kernel_srdhm_matches_definition(a, b):
    assert _k.srdhm(np.int32(a), np.int32(b)) == srdhm_ref(a, b)


def test_kernel_primitives_at_the_edges():
    vals = [int(v) for v in EXTREME_ACC] + [-3, -2, 2, 3, (1 << 29), -(1 << 29) - 1]
    for a in vals:
        for b in vals:
            assert _k.srdhm(np.int32(a), np.int32(b)) == srdhm_ref(a, b), (a, b)
        for e in range(32):
            assert _k.rdbpot(np.int32(a), np.int32(e)) == rdbpot_ref(a, e), (a, e)
            half = (1 << e) >> 1
            for x in (half, -half, half - 1, -half + 1, 3 * half, -3 * half):
                if not INT32_MIN <= x <= INT32_MAX:
                    continue
                assert _k.rdbpot(np.int32(x), np.int32(e)) == rdbpot_ref(x, e), (x, e)


def test_requantize_per_channel_equals_per_tensor_slices():
    rng = np.random.default_rng(0)
    acc = rng.integers(-50000, 50000, size=(4, 3, 5)).astype(np.int32)
    mult = np.array([0.001, 0.0123, 0.3])
    for mode in REQUANT_MODES:
        out = requantize(acc, mult, -3, -128, 127, mode=mode, axis=1)
        for c in range(3):
            np.testing.assert_array_equal(out[:, c], requantize(acc[:, c], mult[c], -3, -128, 127, mode=mode))


def test_requantize_edges():
    acc = np.array([INT32_MIN, -1, 0, 1, INT32_MAX], np.int64)
    for mode in REQUANT_MODES:
        out = requantize(acc, 0.25, 0, -128, 127, mode=mode)
        np.testing.assert_array_equal(out, [requant_ref(int(a), 0.25, 0, -128, 127, mode) for a in acc])
        assert out[0] == -128 and out[-1] == 127 and out[2] == 0
        # a fused ReLU is a clamp at the zero point
        relu = requantize(acc, 0.25, 5, 5, 127, mode=mode)
        assert relu[0] == relu[1] == relu[2] == 5 and relu[-1] == 127
        small = np.array([-1000, -1, 0, 1, 1000])
        np.testing.assert_array_equal(requantize(small, 1.0, 0, -128, 127, mode=mode), [-128, -1, 0, 1, 127])
        assert requantize(np.zeros((0, 3), np.int32), 0.5, 0, -128, 127, mode=mode).shape == (0, 3)
    # int16 and int32 code ranges pick their dtype
    assert requantize(acc, 0.25, 0, -32768, 32767).dtype == np.int16
    assert requantize(acc, 0.25, 0, INT32_MIN, INT32_MAX).dtype == np.int32


def test_tflite_left_shift_overflow_is_an_error():
    # M = 1.0 is m0 = 2^30, shift = 1: TFLite doubles acc in int32 first
    ok = np.array([-(1 << 30), (1 << 30) - 1], np.int32)
    requantize(ok, 1.0, 0, -128, 127, mode="tflite")
    for bad in ([1 << 30], [-(1 << 30) - 1]):
        with pytest.raises(ValueError, match="overflows int32"):
            requantize(np.array(bad, np.int32), 1.0, 0, -128, 127, mode="tflite")
    # per channel: only the channel with a large multiplier is limited
    acc = np.array([[1 << 27, 1 << 27]], np.int32)
    requantize(acc, [0.4, 4.0], 0, -128, 127, axis=1, mode="tflite")  # 2^27 << 3 fits
    with pytest.raises(ValueError, match="overflows"):
        requantize(acc, [0.4, 16.0], 0, -128, 127, axis=1, mode="tflite")  # << 5 does not
    # the other modes have no such step
    requantize(np.array([1 << 30]), 1.0, 0, -128, 127, mode="tflite_single")


def test_double_rounding_of_a_quarter():
    # M = 0.25 is m0 = 2^30, shift = -1: srdhm(1, 2^30) = round(0.5) = 1 (toward +inf), then
    # rdbpot(1, 1) = round(0.5) = 1 (away from zero): TFLite gives 1 for 1 * 0.25.
    acc = np.array([1, -1, 2, 3])
    np.testing.assert_array_equal(requantize(acc, 0.25, 0, -128, 127, mode="tflite"), [1, 0, 1, 1])
    np.testing.assert_array_equal(requantize(acc, 0.25, 0, -128, 127, mode="tflite_single"), [0, 0, 1, 1])
    np.testing.assert_array_equal(requantize(acc, 0.25, 0, -128, 127, mode="fp32"), [0, 0, 0, 1])


def test_double_rounding_example():
    # M = 0.0123 = m0 * 2^-37: srdhm rounds -10284 * m0 / 2^31 = -8095.56 to -8096 = -126.5 * 2^6,
    # and rdbpot then rounds that tie away from zero: -127, where acc * M = -126.49.
    acc = np.array([-10284])
    assert requantize(acc, 0.0123, 0, -128, 127, mode="tflite")[0] == -127
    for mode in ("tflite_single", "fp32", "onnx"):
        assert requantize(acc, 0.0123, 0, -128, 127, mode=mode)[0] == -126


def test_requantize_ties_lists_exactly_the_disagreements():
    t = requantize_ties(0.0123, 3, -128, 127, acc_min=-20000, acc_max=20000)
    acc = np.arange(-20000, 20001)
    codes = {m: requantize(acc, 0.0123, 3, -128, 127, mode=m) for m in REQUANT_MODES}
    differ = np.zeros(acc.shape, bool)
    for m in REQUANT_MODES:
        differ |= codes[m] != codes["tflite"]
    np.testing.assert_array_equal(t["acc"], acc[differ])
    assert len(t["acc"]) > 0
    for m in REQUANT_MODES:
        np.testing.assert_array_equal(t[m], codes[m][differ])
    # every disagreement is within one LSB, near a tie of acc * M
    stacked = np.stack([t[m] for m in REQUANT_MODES]).astype(int)
    assert np.all(stacked.max(axis=0) - stacked.min(axis=0) == 1)
    frac = np.abs(np.abs(t["exact"]) % 1 - 0.5)
    assert np.all(frac < 0.02)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"acc": np.array([1.5])}, TypeError, "acc must be an integer array"),
        ({"acc": np.array([1 << 40])}, ValueError, "int32 range"),
        ({"multiplier": 0.0}, ValueError, "positive"),
        ({"multiplier": np.nan}, ValueError, "positive and finite"),
        ({"multiplier": [[0.1]]}, ValueError, "1-D"),
        ({"multiplier": [0.1, 0.2]}, ValueError, "need the channel axis"),
        ({"multiplier": [0.1, 0.2], "axis": 0}, ValueError, "2 channels but acc has 3"),
        ({"zero_point": 300}, ValueError, "zero_point"),
        ({"qmin": 10, "qmax": 5}, ValueError, "qmax"),
        ({"mode": "tf"}, ValueError, "mode must be one of"),
        ({"multiplier": 1e39, "mode": "fp32"}, ValueError, "overflows float32"),
        ({"multiplier": 2.0**31}, ValueError, "below 2"),
    ],
)
def test_requantize_rejects(kw, exc, match):
    args = dict(acc=np.array([1, 2, 3], np.int32), multiplier=0.1, zero_point=0, qmin=-128, qmax=127)
    args.update(kw)
    mode = args.pop("mode", "tflite")
    axis = args.pop("axis", None)
    with pytest.raises(exc, match=match):
        requantize(
            args["acc"], args["multiplier"], args["zero_point"], args["qmin"], args["qmax"], mode=mode, axis=axis
        )


# ---- the onnx mode against ONNX's reference QLinearMatMul -----------------------------


def test_onnx_mode_matches_qlinear_matmul_reference():
    pytest.importorskip("onnx")
    from onnx import TensorProto as TP
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(7)
    for a_t, b_t, y_t, lo, hi in [
        (np.uint8, np.uint8, np.uint8, 0, 255),
        (np.int8, np.int8, np.int8, -128, 127),
        (np.uint8, np.int8, np.int8, -128, 127),
    ]:
        M_, K, N = 7, 33, 5
        a = rng.integers(np.iinfo(a_t).min, np.iinfo(a_t).max + 1, size=(M_, K)).astype(a_t)
        b = rng.integers(np.iinfo(b_t).min, np.iinfo(b_t).max + 1, size=(K, N)).astype(b_t)
        za, zb, zy = (np.array(rng.integers(np.iinfo(t).min, np.iinfo(t).max + 1), t) for t in (a_t, b_t, y_t))
        sa, sb, sy = (np.array(rng.uniform(0.001, 0.05), np.float32) for _ in range(3))
        names = ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"]
        types = [a_t, np.float32, a_t, b_t, np.float32, b_t, np.float32, y_t]
        tp = {np.uint8: TP.UINT8, np.int8: TP.INT8, np.float32: TP.FLOAT}
        inputs = [helper.make_tensor_value_info(n, tp[t], None) for n, t in zip(names, types)]
        node = helper.make_node("QLinearMatMul", names, ["y"])
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", tp[y_t], None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        ref = ReferenceEvaluator(model).run(None, dict(zip(names, [a, sa, za, b, sb, zb, sy, zy])))[0]
        acc = (a.astype(np.int32) - za.astype(np.int32)) @ (b.astype(np.int32) - zb.astype(np.int32))
        m = float(sa * sb / sy)  # the reference's float32 arithmetic
        got = requantize(acc, m, int(zy), lo, hi, mode="onnx")
        np.testing.assert_array_equal(got, ref)


def test_effective_multiplier_per_stack():
    sx, sw, sy = np.float32(0.0123), np.array([0.002, 0.0031], np.float32), np.float32(0.077)
    t = effective_multiplier(sx, sw, sy, "tflite")
    np.testing.assert_array_equal(t, float(sx) * sw.astype(np.float64) / float(sy))
    o = effective_multiplier(sx, sw, sy, "onnx")
    np.testing.assert_array_equal(o, ((sx * sw) / sy).astype(np.float64))
    assert o.dtype == np.float64 and np.all(o == o.astype(np.float32))
    assert np.all(np.abs(t - o) <= 1e-7 * t)
    with pytest.raises(ValueError, match="s_y must be positive"):
        effective_multiplier(0.1, 0.1, 0.0, "tflite")


def test_mbqm_rejects_shift_outside_tflite_range():
    for shift in (31, -32):
        with pytest.raises(ValueError, match=r"shift must lie in \[-31, 30\]"):
            multiply_by_quantized_multiplier(1, 1 << 30, shift)
    with pytest.raises(ValueError, match="m0 >= 0"):
        multiply_by_quantized_multiplier(1, -5, 0, "single")


# ---- gemmlowp's fixed-point test values ---------------------------------------------
# Source: gemmlowp test/test_fixedpoint.cc, main(): (1 << i) + {-2..2} and their negatives
# for i < 31, INT32_MIN..MIN+2, INT32_MAX-2..MAX, and 1000 values of the LCG
# random = random * 1664525 + 1013904223 (mod 2^32) from random = 1, cast to int32.


def gemmlowp_testvals():
    vals = []
    for i in range(31):
        for d in (-2, -1, 0, 1, 2):
            vals.append(wrap32((1 << i) + d))
            vals.append(wrap32(-(1 << i) + d))
    vals += [INT32_MIN, INT32_MIN + 1, INT32_MIN + 2, INT32_MAX - 2, INT32_MAX - 1, INT32_MAX]
    r = 1
    for _ in range(1000):
        r = (r * 1664525 + 1013904223) % (1 << 32)
        vals.append(wrap32(r))
    return np.array(sorted(vals), np.int64)


def test_srdhm_on_gemmlowp_values():
    # test_mul<0, 0>: the Q0.31 product is within one unit of round(a * b / 2^31) computed
    # in double; here also equal to the exact definition (ties toward +inf)
    v = gemmlowp_testvals()
    a, b = np.meshgrid(v, v[::7])
    got = saturating_rounding_doubling_high_mul(a, b).astype(np.int64)
    expected_double = np.clip(np.round(a.astype(np.float64) * b.astype(np.float64) / 2.0**31), INT32_MIN, INT32_MAX)
    assert np.all(np.abs(got - expected_double) <= 1)
    for i in range(0, a.size, 97):
        assert got.flat[i] == srdhm_ref(int(a.flat[i]), int(b.flat[i]))


@pytest.mark.parametrize("exponent", [1, 3, 9, 31])
def test_rdbpot_on_gemmlowp_values(exponent):
    # test_Rescale<4, 5> divides by 2 with the rounding of ToFixedPoint (std::round: ties
    # away from zero); the other exponents extend it
    v = gemmlowp_testvals()
    got = rounding_divide_by_pot(v, exponent)
    np.testing.assert_array_equal(got, [rdbpot_ref(int(x), exponent) for x in v])


def test_quantize_multiplier_flushes_below_two_to_minus_32():
    # frexp(2^-32) = (0.5, -31): kept; a smaller multiplier has exponent -32 and flushes, as
    # TFLite's, unless m0 rounds up to 2^31 and renormalises to 2^-32 (TFLite's order too)
    assert tuple(map(int, quantize_multiplier(2.0**-32))) == (1 << 30, -31)
    assert tuple(map(int, quantize_multiplier(np.nextafter(2.0**-32, 0)))) == (1 << 30, -31)
    assert tuple(map(int, quantize_multiplier(0.75 * 2.0**-32))) == (0, 0)
    assert tuple(map(int, quantize_multiplier(2.0**-31))) == (1 << 30, -30)


# ---- tflite_single_away (EXTRA_REQUANT_MODES): LiteRT 2.3's reference FULLY_CONNECTED ----------


def _single_away_ref(acc, m, zp, qmin, qmax):
    m0, shift = (int(v) for v in quantize_multiplier(m, "double"))
    v = Fraction(acc * m0, 1 << (31 - shift))
    return min(max(int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v)) + zp, qmin), qmax)


def test_single_away_is_an_extra_mode():
    from npquant.requant.modes import EXTRA_REQUANT_MODES

    assert EXTRA_REQUANT_MODES == ("tflite_single_away",)
    assert "tflite_single_away" not in REQUANT_MODES  # the tie tables compare the four stacks
    np.testing.assert_array_equal(
        effective_multiplier(0.5, [0.25, 0.5], 0.125, "tflite_single_away"),
        effective_multiplier(0.5, [0.25, 0.5], 0.125, "tflite"),
    )


def test_single_away_rounds_ties_away_from_zero():
    # M = 1/8: acc = +-4 is +-0.5, acc = +-12 is +-1.5; one rounding, away from zero
    acc = np.array([-12, -4, -3, 3, 4, 12, 5, -5])
    np.testing.assert_array_equal(
        requantize(acc, 0.125, 0, -128, 127, mode="tflite_single_away"), [-2, -1, 0, 0, 1, 2, 1, -1]
    )
    np.testing.assert_array_equal(
        requantize(acc, 0.125, 0, -128, 127, mode="tflite_single"), [-1, 0, 0, 0, 1, 2, 1, -1]
    )  # ties toward +inf
    np.testing.assert_array_equal(
        multiply_by_quantized_multiplier(acc, 1 << 30, -2, "single_away"), [-2, -1, 0, 0, 1, 2, 1, -1]
    )
    # one rounding: M = 1/4 maps 1 to 0, where double rounding gives 1 (README)
    assert requantize(np.array([1]), 0.25, 0, -128, 127, mode="tflite_single_away")[0] == 0
    with pytest.raises(ValueError, match="single_away"):
        multiply_by_quantized_multiplier(1, -5, 0, "single_away")
    t = requantize_ties(0.125, acc_min=-16, acc_max=16, modes=("tflite_single", "tflite_single_away"))
    np.testing.assert_array_equal(t["acc"], [-12, -4])


@given(
    acc=hnp.arrays(np.int32, st.integers(1, 40), elements=int32s),
    m=st.floats(2.0**-24, 4.0),
    zp=st.integers(-128, 127),
)
def test_single_away_matches_oracle(acc, m, zp):
    got = requantize(acc, m, zp, -128, 127, mode="tflite_single_away")
    np.testing.assert_array_equal(got, [_single_away_ref(int(a), m, zp, -128, 127) for a in acc])
    np.testing.assert_array_equal(got, requantize(acc, m, zp, -128, 127, mode="tflite_single_away", backend="numpy"))


def test_single_away_kernel_equals_twin_at_the_edges_and_per_channel():
    rng = np.random.default_rng(5)
    acc = np.concatenate([EXTREME_ACC, rng.integers(INT32_MIN, INT32_MAX, 50, endpoint=True)])
    for m in EDGE_MULTIPLIERS[:-2]:
        for zp, qmin, qmax in ((0, -128, 127), (5, 5, 255), (-7, INT32_MIN, INT32_MAX)):
            got = _kernel_and_twin(acc, m, zp, qmin, qmax, "tflite_single_away")
            if m in (1e-5, 0.5):
                np.testing.assert_array_equal(got, [_single_away_ref(int(a), m, zp, qmin, qmax) for a in acc])
    with pytest.raises(ValueError, match="below 2\\^30"):
        requantize(np.array([1]), 2.0**31, 0, -128, 127, mode="tflite_single_away")
    for shape, axis in (((7, 5), 1), ((2, 3, 17), 1), ((2, 3, 4, 5), 3)):
        a = rng.integers(-(1 << 24), 1 << 24, shape, endpoint=True).astype(np.int32)
        mult = rng.choice([2.0**-24, 1e-5, 0.0123, 0.75, 2.5], shape[axis])
        out = _kernel_and_twin(a, mult, 3, -128, 127, "tflite_single_away", axis)
        for k in range(shape[axis]):
            sl = (slice(None),) * axis + (k,)
            np.testing.assert_array_equal(
                out[sl], requantize(a[sl], float(mult[k]), 3, -128, 127, mode="tflite_single_away")
            )


# ---- the scalar reference: the definition, the NumPy twin and the kernel agree ----------------

from npquant.requant.fixedpoint import (  # noqa: E402
    multiply_by_quantized_multiplier_scalar,
    quantize_multiplier_scalar,
    rounding_divide_by_pot_scalar,
    saturating_rounding_doubling_high_mul_scalar,
    wrap_int32,
)

EDGE_INT32 = [int(v) for v in EXTREME_ACC] + [-3, -2, 2, 3, (1 << 29), -(1 << 29) - 1]


@pytest.mark.parametrize("real, m0, shift", TFLITE_MULTIPLIERS)
def test_quantize_multiplier_scalar_tflite_vectors(real, m0, shift):
    assert quantize_multiplier_scalar(real) == (m0, shift)


@given(
    st.floats(-(2.0**40), 2.0**40, allow_nan=False)
    | st.sampled_from([2.0**-32, 2.0**-33, 0.75 * 2.0**-32, 2.0**31, 2.0**62 - 2.0**9, 2.0**62]),
    st.sampled_from(["double", "single", "single_away"]),
)
def test_quantize_multiplier_twin_equals_scalar(real, rounding):
    try:
        want = quantize_multiplier_scalar(real, rounding)
    except ValueError as e:  # negative for "single", or too large: the twin refuses too
        with pytest.raises(ValueError, match=str(e)[:20]):
            quantize_multiplier(real, rounding)
        return
    m0, shift = quantize_multiplier(real, rounding)
    assert (int(m0), int(shift)) == want


def test_quantize_multiplier_scalar_rejects():
    assert quantize_multiplier_scalar(2.0**31, "single") == (INT32_MAX, 30)
    with pytest.raises(ValueError, match="real must be >= 0"):
        quantize_multiplier_scalar(-0.5, "single")
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier_scalar(float("nan"))
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier_scalar(2.0**70)


@given(int32s, int32s)
def test_srdhm_scalar_is_the_definition_and_the_twin_and_kernel_equal_it(a, b):
    ref = saturating_rounding_doubling_high_mul_scalar(a, b)
    assert ref == srdhm_ref(a, b)
    assert int(saturating_rounding_doubling_high_mul(a, b)) == ref
    assert int(_k.srdhm(np.int32(a), np.int32(b))) == ref


@given(int32s, st.integers(0, 31))
def test_rdbpot_scalar_is_the_definition_and_the_twin_and_kernel_equal_it(x, e):
    ref = rounding_divide_by_pot_scalar(x, e)
    assert ref == rdbpot_ref(x, e)
    assert int(rounding_divide_by_pot(x, e)) == ref
    assert int(_k.rdbpot(np.int32(x), np.int32(e))) == ref


@given(
    int32s,
    st.integers(0, INT32_MAX) | st.sampled_from([0, 1 << 30, INT32_MAX]),
    st.integers(-31, 30),
    st.sampled_from(["double", "single", "single_away"]),
)
# |x * m0 / 2^(31 - shift)| above 2^53: the oracle once rounded through a float and was 1 off
@example(x=1_172_664_239, m0=2_147_482_635, shift=23, rounding="single_away")
def test_mbqm_scalar_is_the_definition_and_the_twin_and_kernels_equal_it(x, m0, shift, rounding):
    ref = multiply_by_quantized_multiplier_scalar(x, m0, shift, rounding)
    if rounding != "single_away":
        assert ref == mbqm_ref(x, m0, shift, rounding)
    else:  # round half away from zero, exactly in integers
        v = Fraction(x * m0, 1 << (31 - shift))
        q = math.floor(abs(v) + Fraction(1, 2))
        assert ref == (q if v >= 0 else -q)
    assert int(multiply_by_quantized_multiplier(x, m0, shift, rounding)) == ref
    kernel = {"double": _k.mbqm_double, "single": _k.mbqm_single, "single_away": _k.mbqm_single_away}[rounding]
    assert int(kernel(np.int32(x), np.int32(m0), np.int32(shift))) == ref


def test_scalar_primitives_at_the_edges():
    for a in EDGE_INT32:
        assert wrap_int32(a) == a and wrap_int32(a + (1 << 32)) == a
        for b in EDGE_INT32:
            ref = saturating_rounding_doubling_high_mul_scalar(a, b)
            assert ref == srdhm_ref(a, b) == int(_k.srdhm(np.int32(a), np.int32(b))), (a, b)
        for e in range(32):
            ref = rounding_divide_by_pot_scalar(a, e)
            assert ref == rdbpot_ref(a, e) == int(_k.rdbpot(np.int32(a), np.int32(e))), (a, e)
        for m0 in (0, 1, 1 << 30, INT32_MAX):
            for shift in (-31, -5, 0, 1, 30):
                for rounding in MBQM:
                    ref = multiply_by_quantized_multiplier_scalar(a, m0, shift, rounding)
                    assert ref == int(multiply_by_quantized_multiplier(a, m0, shift, rounding)), (a, m0, shift)


MBQM = ("double", "single", "single_away")


def test_scalar_primitives_reject():
    with pytest.raises(ValueError, match="a must be in"):
        saturating_rounding_doubling_high_mul_scalar(1 << 31, 1)
    with pytest.raises(TypeError, match="b must be an integer"):
        saturating_rounding_doubling_high_mul_scalar(1, 0.5)
    with pytest.raises(ValueError, match="exponent must be in"):
        rounding_divide_by_pot_scalar(1, 32)
    with pytest.raises(ValueError, match="shift must be in"):
        multiply_by_quantized_multiplier_scalar(1, 1 << 30, 31)
    with pytest.raises(ValueError, match="m0 >= 0"):
        multiply_by_quantized_multiplier_scalar(1, -5, 0, "single")
    with pytest.raises(ValueError, match="rounding must be one of"):
        multiply_by_quantized_multiplier_scalar(1, 5, 0, "triple")
