import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npquant.qnn.activation import activation_range, clamp, flatten, quantize_scalar_tflite, relu, relu6


def _find_float32_tie_scale():
    """A scale where float32(6 / S) is exactly k + 0.5 but the exact quotient is not."""
    rng = np.random.default_rng(0)
    for s in rng.uniform(0.01, 0.1, 200000).astype(np.float32):
        t = np.float32(np.float32(6) / s)
        if t == np.floor(t) + 0.5 and 6.0 / float(s) < float(t):
            return s, float(t)
    raise AssertionError("no tie scale found")


def test_tflite_ranges():
    assert activation_range("none", 0.1, 3) == (-128, 127)
    assert activation_range("relu", 0.1, -5) == (-5, 127)
    assert activation_range("relu", 0.1, 5, 0, 255) == (5, 255)
    # 6 / 0.05 = 120 (float32 quotient 120.0): Z + 120 clipped to 127
    assert activation_range("relu6", 0.05, -128) == (-128, -8)
    assert activation_range("relu6", 0.05, 10) == (10, 127)
    assert activation_range("relu_n1_to_1", 1 / 64, 0) == (-64, 64)


def test_float32_quotient_and_half_away():
    s, t = _find_float32_tie_scale()
    lo, hi = activation_range("relu6", s, 0, -32768, 32767)
    # the exact quotient is below k + 0.5, float32 rounds it onto the half, and
    # TfLiteRound goes away from zero: k + 1 where float64 arithmetic gives k
    assert hi == math.floor(t) + 1
    assert round(6.0 / float(s)) == math.floor(t)
    assert quantize_scalar_tflite(-1.0, 0.4, 0) == -3  # -2.5 -> -3 (away from zero)
    assert quantize_scalar_tflite(1.0, 0.4, 0) == 3


@given(st.floats(1e-4, 10), st.integers(-128, 127))
def test_range_is_ordered_and_contains_zero_point(scale, zp):
    for act in ("relu", "relu6", "relu_n1_to_1"):
        lo, hi = activation_range(act, scale, zp)
        assert -128 <= lo <= hi <= 127
    lo, hi = activation_range("relu", scale, zp)
    assert lo == zp


def test_relu_relu6_clamp_flatten():
    q = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(relu(q, 3), np.maximum(q, 3))
    assert relu(q, 3).dtype == np.int8
    lo, hi = activation_range("relu6", 0.05, 3)
    np.testing.assert_array_equal(relu6(q, 0.05, 3), np.clip(q, lo, hi))
    np.testing.assert_array_equal(clamp(q, -3, 4), np.clip(q, -3, 4))
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    f = flatten(x)
    assert f.shape == (2, 60) and np.shares_memory(f, x)
    np.testing.assert_array_equal(f[1], x[1].ravel())


def test_errors_name_arguments():
    with pytest.raises(ValueError, match="activation"):
        activation_range("tanh", 0.1, 0)
    with pytest.raises(ValueError, match="scale"):
        activation_range("relu", -1.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        activation_range("relu", 0.1, 200)
    with pytest.raises(TypeError, match="q"):
        relu(np.zeros(3), 0)
    with pytest.raises(ValueError, match="act_max"):
        clamp(np.zeros(3, np.int8), 0, 300)


# ---- None and "none" are one spelling (normalize_activation) -----------------------------


def test_normalize_activation_spellings():
    from npquant.qnn.activation import normalize_activation

    assert normalize_activation(None) is None
    assert normalize_activation("none") is None
    for a in ("relu", "relu6", "relu_n1_to_1"):
        assert normalize_activation(a) == a
    assert normalize_activation((3, 9), allow_range=True) == (3, 9)
    with pytest.raises(ValueError, match="activation"):
        normalize_activation((3, 9))
    with pytest.raises(ValueError, match="fused_act"):
        normalize_activation("sigmoid", "fused_act")
    with pytest.raises(ValueError, match="activation"):
        normalize_activation("None")


@pytest.mark.parametrize("spelling", [None, "none"])
def test_activation_range_accepts_none_and_none_string(spelling):
    assert activation_range(spelling, 0.1, 3) == (-128, 127)
    assert activation_range(spelling, 0.1, 3, 0, 255) == (0, 255)
