"""npquant.requant.modes: the scalar reference of every mode equals requantize (kernel and
twin); mode names map to kernel codes through one table; the old names in
npquant.requant.fixedpoint keep working."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npquant as nq
from npquant._kernels import modes as km
from npquant._kernels import quantize as kq
from npquant._kernels import requantize as kr
from npquant.affine import METHODS
from npquant.qnn.fbgemm import fbgemm_requantize
from npquant.qparams import ROUNDING_MODES
from npquant.requant import fixedpoint, modes
from npquant.requant.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier
from npquant.requant.modes import (
    EXTRA_REQUANT_MODES,
    FBGEMM,
    LAYER_REQUANT_MODES,
    REQUANT_MODES,
    fbgemm_requantize_scalar,
    requantize,
    requantize_scalar,
)

ALL = REQUANT_MODES + EXTRA_REQUANT_MODES
PACKAGE = Path(nq.__file__).parent


# ---- one table of mode codes ---------------------------------------------------------------


def test_every_name_has_one_code():
    assert set(km.ROUNDING_CODES) == set(ROUNDING_MODES)
    assert set(km.METHOD_CODES) == set(METHODS) - {"torch"}
    assert set(km.REQUANT_CODES) == set(ALL)
    for table in (km.ROUNDING_CODES, km.METHOD_CODES, km.REQUANT_CODES):
        assert len(set(table.values())) == len(table)


def test_kernels_use_the_table_constants():
    for name in ("HALF_EVEN", "HALF_AWAY", "HALF_UP", "STOCHASTIC", "DIVIDE", "MUL", "MUL_ADD"):
        assert getattr(kq, name) == getattr(km, name)
    for name in ("TFLITE", "TFLITE_SINGLE", "FP32", "TFLITE_SINGLE_AWAY"):
        assert getattr(kr, name) == getattr(km, name)


def test_no_mode_code_by_tuple_position():
    # a mode name becomes a kernel code through npquant._kernels.modes only
    pattern = re.compile(r"(MODES|METHODS|ROUNDINGS)\w*\.index\(")
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_old_names_in_fixedpoint_are_the_modes_objects():
    for name in (
        "REQUANT_MODES",
        "EXTRA_REQUANT_MODES",
        "RequantParams",
        "effective_multiplier",
        "requant_params",
        "requantize",
        "requantize_ties",
    ):
        with pytest.warns(DeprecationWarning, match=f"fixedpoint.{name} moved to npquant.requant.modes.{name}"):
            assert getattr(fixedpoint, name) is getattr(modes, name), name
    with pytest.warns(DeprecationWarning, match="moved to npquant.requant.modes"):
        from npquant.requant.fixedpoint import requantize as old
    assert old is requantize is nq.requantize
    assert nq.REQUANT_MODES is REQUANT_MODES and nq.requantize_ties is modes.requantize_ties
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = fixedpoint.nothing
    assert LAYER_REQUANT_MODES == REQUANT_MODES + (FBGEMM,)


# ---- the scalar reference against requantize --------------------------------------------------

EXTREME_ACC = [
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
]
MULTIPLIERS = [2.0**-31, 2.0**-24, 1e-5, 0.125, 0.5 - 1e-10, 0.5, 1 - 1e-9, 1.0, 3.75, 1e6, 1e30]
RANGES = [(0, -128, 127), (-128, -128, 127), (5, 5, 255), (-7, INT32_MIN, INT32_MAX)]


def _usable(acc, m, mode):
    """TFLite's int32 left shift must not overflow (requantize refuses it), shift <= 30."""
    if mode == "tflite_single_away" and m >= 2.0**30:
        return []
    if mode == "tflite":
        if m >= 2.0**30:
            return []
        left = max(int(quantize_multiplier(m)[1]), 0)
        return [a for a in acc if -(1 << (31 - left)) <= a < (1 << (31 - left))]
    return acc


@pytest.mark.parametrize("mode", ALL)
def test_scalar_reference_equals_requantize_at_the_edges(mode):
    rng = np.random.default_rng(7)
    rand = [int(v) for v in rng.integers(INT32_MIN, INT32_MAX, 40, endpoint=True)]
    for m in MULTIPLIERS:
        acc = _usable(EXTREME_ACC + rand, m, mode)
        if not acc:
            continue
        for zp, qmin, qmax in RANGES:
            want = [requantize_scalar(a, m, zp, qmin, qmax, mode).code for a in acc]
            for backend in ("numba", "numpy"):
                got = requantize(np.array(acc, np.int64), m, zp, qmin, qmax, mode=mode, backend=backend)
                np.testing.assert_array_equal(got, want)


@given(
    acc=st.integers(-(1 << 24), 1 << 24),
    m=st.floats(2.0**-30, 4.0),
    zp=st.integers(-128, 127),
    mode=st.sampled_from(ALL),
)
def test_scalar_reference_equals_requantize(acc, m, zp, mode):
    r = requantize_scalar(acc, m, zp, -128, 127, mode)
    assert r.code == int(requantize(np.array([acc]), m, zp, -128, 127, mode=mode)[0])
    assert r.before_clamp == r.scaled + zp and r.code == min(max(r.before_clamp, -128), 127)


def test_scalar_reference_steps():
    # M = 1/4, acc = 6: 1.5 rounds to 2 in every mode (ties away, toward +inf, to even)
    r = requantize_scalar(6, 0.25, 3, -128, 127, "tflite")
    assert (r.m0, r.shift, r.shifted, r.high, r.scaled, r.before_clamp, r.code) == (1 << 30, -1, 6, 3, 2, 5, 5)
    # M = 3/4 (>= 0.5): no left shift at shift 0; 7 * 0.75 = 5.25
    r = requantize_scalar(7, 0.75, 0, -128, 127, "tflite")
    assert (r.shift, r.shifted, r.scaled) == (0, 7, 5)
    # M = 1.5: shift 1, acc shifted left once; -4.5 is rounded by SRDHM alone (toward +inf)
    r = requantize_scalar(-3, 1.5, 0, -128, 127, "tflite")
    assert (r.shift, r.shifted, r.high, r.scaled) == (1, -6, -4, -4)
    r = requantize_scalar(-18, 0.25, 0, -128, 127, "tflite_single")
    assert r.scaled == -4 and r.high is None  # -4.5, ties toward +inf
    r = requantize_scalar(-18, 0.25, 0, -128, 127, "tflite_single_away")
    assert r.scaled == -5
    r = requantize_scalar(10, 0.25, 0, -128, 127, "fp32")
    assert (r.multiplier32, r.product, r.scaled) == (0.25, 2.5, 2)  # ties to even
    r = requantize_scalar(10, 0.25, 1, -128, 127, "onnx")
    assert (r.product, r.with_zero_point, r.before_clamp, r.scaled) == (2.5, 3.5, 4, 3)  # zero point first
    # fp32: a product beyond float32 is inf and saturates
    r = requantize_scalar(INT32_MAX, 1e30, 0, -128, 127, "fp32")
    assert r.scaled == float("inf") and r.code == 127
    assert requantize(np.array([INT32_MAX]), 1e30, 0, -128, 127, mode="fp32")[0] == 127


def test_scalar_reference_rejects_like_requantize():
    with pytest.raises(ValueError, match="acc << shift overflows int32"):
        requantize_scalar(1 << 30, 0.75 * 2, 0, -128, 127, "tflite")
    with pytest.raises(ValueError, match="acc << shift overflows int32"):
        requantize(np.array([1 << 30]), 0.75 * 2, 0, -128, 127, mode="tflite")
    with pytest.raises(ValueError, match="acc must be in"):
        requantize_scalar(1 << 31, 0.5, 0, -128, 127, "fp32")
    with pytest.raises(ValueError, match="zero_point must be in"):
        requantize_scalar(1, 0.5, 200, -128, 127, "fp32")
    with pytest.raises(ValueError, match="mode must be one of"):
        requantize_scalar(1, 0.5, 0, -128, 127, "fbgemm")
    with pytest.raises(ValueError, match="one real number"):
        requantize_scalar(1, [0.5, 0.25], 0, -128, 127, "fp32")


# ---- fbgemm's float bias -----------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_fbgemm_scalar_reference_equals_fbgemm_requantize(fused):
    rng = np.random.default_rng(11)
    for _ in range(300):
        s_x, s_w, s_y = (np.float32(v) for v in rng.uniform(1e-4, 0.05, 3))
        z_y = int(rng.integers(0, 256))
        acc = int(rng.integers(-(1 << 20), 1 << 20))
        bias = np.float32(rng.normal() * 10 ** rng.uniform(-3, 9))
        relu = bool(rng.integers(2))
        lo = z_y if relu else 0
        r = fbgemm_requantize_scalar(acc, s_x, s_w, s_y, bias, z_y, lo, 255, fused=fused)
        if fused:  # per-tensor weights: the FMA path
            lib = fbgemm_requantize(np.array([[acc]]), s_x, s_w, s_y, z_y, bias=np.array([bias]), relu=relu)
        else:  # per-channel weights: bias / ats added in float32
            lib = fbgemm_requantize(
                np.array([[acc, acc]]), s_x, np.array([s_w, s_w]), s_y, z_y, bias=np.array([bias, bias]), relu=relu
            )
        assert r.code == int(lib[0, 0])
        assert r.act_times_w_scale == float(np.float32(s_x * s_w)) and r.bias == float(bias)
        assert (r.reciprocal is None) != fused and (r.bias_term is None) == fused


def test_fbgemm_scalar_reference_out_of_int32_gives_int32_min():
    r = fbgemm_requantize_scalar(0, 1e-3, 1e-3, 1e-6, 3e38, 7, 0, 255, fused=False)
    assert r.scaled == INT32_MIN and r.code == 0
    with pytest.raises(ValueError, match="bias must be finite"):
        fbgemm_requantize_scalar(0, 1e-3, 1e-3, 1e-6, float("nan"), 7, 0, 255, fused=True)
    with pytest.raises(ValueError, match="s_y must be positive"):
        fbgemm_requantize_scalar(0, 1e-3, 1e-3, 0.0, 1.0, 7, 0, 255, fused=True)
