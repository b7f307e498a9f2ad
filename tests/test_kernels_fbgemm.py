"""The numba kernel of fbgemm's requantization equals its NumPy twin, bit for bit.

(The formula itself is checked against PyTorch in ``test_qnn_fbgemm.py``.)
"""

import numpy as np
import pytest

from npquant.qnn.fbgemm import fbgemm_requantize


def _both(acc, *args, **kw):
    got = fbgemm_requantize(acc, *args, backend="numba", **kw)
    want = fbgemm_requantize(acc, *args, backend="numpy", **kw)
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape == np.shape(acc)
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_random_and_tie_accumulators(per_channel, with_bias, relu):
    rng = np.random.default_rng(int(per_channel) + 2 * with_bias + 4 * relu)
    c = 13
    acc = rng.integers(-40000, 40000, (37, c)).astype(np.int32)
    acc[:5] = rng.integers(-8, 8, (5, c)) * 2 + 1  # odd values: ties when M = 0.5 * 2^k
    sw = rng.uniform(1e-3, 0.05, c).astype(np.float32) if per_channel else np.float32(0.0078125)
    bias = rng.normal(0, 0.5, c).astype(np.float32) if with_bias else None
    for sy in (np.float32(0.5 * 0.02 * 0.0078125 * 64), np.float32(0.37)):
        _both(acc, np.float32(0.02), sw, sy, 7, bias=bias, relu=relu)


def test_overflow_and_extremes_give_int32_min():
    acc = np.array([[2**31 - 1, -(2**31), 0, 1, -1, 2072640]], np.int32)
    out = _both(acc, 1.0, 1.0, 1e-5, 10)
    assert out[0, 0] == 0 and out[0, 5] == 0  # beyond int32 after scaling: INT32_MIN + Z_y -> 0
    _both(acc, 1.0, 1.0, 1e-5, 10, relu=True)
    with np.errstate(over="ignore", invalid="ignore"):  # inf * 0 in plain Python (JIT off)
        _both(acc, 3.0e38, 3.0e38, 1e-30, 0)  # an infinite multiplier


@pytest.mark.parametrize("shape, axis", [((0, 4), -1), ((3, 0), 0), ((1, 1), -1), ((2, 5, 3, 3), 1), ((4, 6), 0)])
def test_shapes_and_axes(shape, axis):
    rng = np.random.default_rng(len(shape))
    acc = rng.integers(-5000, 5000, shape).astype(np.int32)
    c = shape[axis]
    sw = rng.uniform(1e-3, 0.05, c).astype(np.float32) if c else np.float32(0.01)
    bias = rng.normal(0, 0.5, c).astype(np.float32) if c else None
    _both(acc, 0.05, sw, 0.2, 128, bias=bias, axis=axis)


def test_non_contiguous_and_wider_integer_input():
    rng = np.random.default_rng(9)
    big = rng.integers(-20000, 20000, (10, 16)).astype(np.int64)
    bias = rng.normal(0, 0.5, 8).astype(np.float32)
    _both(big[::2, ::2], 0.05, np.float32(0.01), 0.3, 3, bias=bias)
    _both(np.asfortranarray(big[:, :8].astype(np.int16)), 0.05, np.float32(0.01), 0.3, 3, bias=bias)


def test_rejects_bad_backend_and_out_of_range():
    acc = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="backend"):
        fbgemm_requantize(acc, 1.0, 1.0, 1.0, 0, backend="c")
    with pytest.raises(ValueError, match="int32 range"):
        fbgemm_requantize(np.array([[2**31]], np.int64), 1.0, 1.0, 1.0, 0)
