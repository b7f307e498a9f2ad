"""Integer fully connected layer: kernels against twins and a Python-integer oracle; the
matmul of two activations (qmatmul) against an oracle, onnx.reference and onnxruntime.

Runs with the JIT on and with NUMBA_DISABLE_JIT=1 (arrays kept small for the latter).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npquant import QParams, QuantSpec
from npquant.qnn.activation import activation_range
from npquant.qnn.bias import quantize_bias
from npquant.qnn.gemm import FORMS
from npquant.qnn.linear import QLinear, linear_accumulate, qlinear, qmatmul
from npquant.qnn.overflow import (
    accumulator_bounds,
    check_int16_pairs,
    int16_pair_accumulate,
)
from npquant.requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES, effective_multiplier, requantize

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def wrap32(v):
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def acc_oracle(x, zx, w, zw, bias):
    """Python integers, element by element."""
    n, k = x.shape
    o = w.shape[0]
    zw = np.broadcast_to(np.asarray(zw), (o,))
    out = np.zeros((n, o), np.int64)
    for i in range(n):
        for j in range(o):
            s = 0 if bias is None else int(bias[j])
            for t in range(k):
                s += (int(x[i, t]) - int(zx)) * (int(w[j, t]) - int(zw[j]))
            out[i, j] = s
    return out


def make_layer(rng, n, k, o, x_signed, w_signed, per_channel, bias=True):
    xs = QuantSpec(8, signed=x_signed)
    ws = QuantSpec(8, signed=w_signed, axis=0 if per_channel else None)
    x_qp = QParams(rng.uniform(0.005, 0.05), rng.integers(xs.qmin, xs.qmax + 1), xs)
    nsc = o if per_channel else 1
    w_qp = QParams(
        rng.uniform(0.001, 0.02, nsc).reshape(() if not per_channel else (o,)),
        rng.integers(ws.qmin, ws.qmax + 1, nsc).reshape(() if not per_channel else (o,)),
        ws,
    )
    y_qp = QParams(rng.uniform(0.05, 0.5), rng.integers(-20, 20), QuantSpec(8))
    x = rng.integers(xs.qmin, xs.qmax + 1, (n, k)).astype(xs.dtype)
    w = rng.integers(ws.qmin, ws.qmax + 1, (o, k)).astype(ws.dtype)
    b = rng.integers(-5000, 5000, o).astype(np.int32) if bias else None
    return x, x_qp, w, w_qp, b, y_qp


def all_accumulators(x, x_qp, w, w_qp, b, **kw):
    outs = [
        linear_accumulate(x, x_qp, w, w_qp, b, form=f, backend=be, **kw) for f in FORMS for be in ("numba", "numpy")
    ]
    for a in outs:
        assert a.dtype == np.int32
        np.testing.assert_array_equal(a, outs[0])
    return outs[0]


@given(
    n=st.integers(1, 4),
    k=st.integers(1, 9),
    o=st.integers(1, 5),
    x_signed=st.booleans(),
    w_signed=st.booleans(),
    per_channel=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_forms_backends_and_oracle_agree(n, k, o, x_signed, w_signed, per_channel, bias, seed):
    rng = np.random.default_rng(seed)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, n, k, o, x_signed, w_signed, per_channel, bias)
    acc = all_accumulators(x, x_qp, w, w_qp, b)
    np.testing.assert_array_equal(acc, acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 13, 1), (1, 1, 7), (5, 1, 3), (3, 17, 1), (2, 64, 9)])
def test_edge_shapes(shape):
    n, k, o = shape
    rng = np.random.default_rng(k * 100 + o)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, n, k, o, False, True, True)
    acc = all_accumulators(x, x_qp, w, w_qp, b)
    np.testing.assert_array_equal(acc, acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b))


def test_non_contiguous_and_batched_input():
    rng = np.random.default_rng(1)
    x, x_qp, w, w_qp, b, y_qp = make_layer(rng, 6, 10, 4, True, True, False)
    big = rng.integers(-128, 128, (6, 20)).astype(np.int8)
    xs = big[:, ::2]  # strided view
    xf = np.asfortranarray(x)  # column-major
    ref = acc_oracle(xs, x_qp.zero_point, w, w_qp.zero_point, b)
    np.testing.assert_array_equal(all_accumulators(xs, x_qp, w, w_qp, b), ref)
    np.testing.assert_array_equal(
        all_accumulators(xf, x_qp, w, w_qp, b), acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b)
    )
    wt = np.ascontiguousarray(w.T).T  # non-contiguous weights
    np.testing.assert_array_equal(all_accumulators(xs, x_qp, wt, w_qp, b), ref)
    # leading batch dimensions are kept
    x3 = xs.reshape(2, 3, 10)
    y3 = qlinear(x3, x_qp, w, w_qp, b, y_qp)
    assert y3.shape == (2, 3, 4)
    np.testing.assert_array_equal(y3.reshape(6, 4), qlinear(xs, x_qp, w, w_qp, b, y_qp))


def requant_oracle(acc, x_qp, w_qp, y_qp, mode, lo, hi):
    """Column by column with scalar multipliers (requantize is checked in test_fixedpoint)."""
    sw = np.broadcast_to(w_qp.scale, (acc.shape[1],))
    cols = []
    for j in range(acc.shape[1]):
        m = effective_multiplier(x_qp.scale, sw[j], y_qp.scale, mode)
        cols.append(requantize(acc[:, j], float(m), int(y_qp.zero_point), -(1 << 31), (1 << 31) - 1, mode=mode))
    return np.clip(np.stack(cols, axis=1).astype(np.int64), lo, hi)


@pytest.mark.parametrize("mode", REQUANT_MODES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signs", [(False, True), (True, True), (False, False)])
def test_qlinear_modes(mode, per_channel, signs):
    rng = np.random.default_rng(hash((mode, per_channel, signs)) % 2**32)
    x, x_qp, w, w_qp, b, y_qp = make_layer(rng, 7, 23, 6, signs[0], signs[1], per_channel)
    acc = acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b)
    outs = [
        qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode, form=f, backend=be) for f in FORMS for be in ("numba", "numpy")
    ]
    for y in outs:
        assert y.dtype == np.int8
        np.testing.assert_array_equal(y, outs[0])
    np.testing.assert_array_equal(outs[0], requant_oracle(acc, x_qp, w_qp, y_qp, mode, -128, 127))
    layer = QLinear(w, w_qp, b, x_qp, y_qp, mode=mode)
    np.testing.assert_array_equal(layer(x), outs[0])
    np.testing.assert_array_equal(layer.accumulate(x), acc)
    # sanity: the float computation, within one LSB
    sw = np.broadcast_to(w_qp.scale, (6,)).astype(np.float64)
    real = acc * float(x_qp.scale) * sw / float(y_qp.scale) + int(y_qp.zero_point)
    assert np.all(np.abs(np.clip(np.rint(real), -128, 127) - outs[0]) <= 1)


def test_uint8_output_and_16_bit_codes():
    rng = np.random.default_rng(3)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, 3, 5, 4, False, True, False)
    y_qp = QParams(0.2, 130, QuantSpec(8, signed=False))
    y = qlinear(x, x_qp, w, w_qp, b, y_qp)
    assert y.dtype == np.uint8
    # 16-bit activations (TFLite's 16x8): int16 codes, int32 accumulators
    xs = QuantSpec(16)
    x16_qp = QParams(0.001, 0, xs)
    x16 = rng.integers(-32768, 32768, (3, 5)).astype(np.int16)
    y16_qp = QParams(0.05, 0, QuantSpec(16))
    acc = all_accumulators(x16, x16_qp, w, w_qp, b)
    np.testing.assert_array_equal(acc, acc_oracle(x16, 0, w, w_qp.zero_point, b))
    assert qlinear(x16, x16_qp, w, w_qp, b, y16_qp).dtype == np.int16


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_fused_activation_ranges(mode):
    rng = np.random.default_rng(5)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, 20, 16, 5, False, True, True)
    y_qp = QParams(0.05, -10, QuantSpec(8))
    plain = qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode).astype(int)
    relu = qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode, activation="relu")
    relu6 = qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode, activation="relu6", form="folded")
    n1 = qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode, activation="relu_n1_to_1")
    # TFLite: relu6 top is Z_y + round(6 / S_y) = -10 + 120 = 110; relu_n1_to_1 is [-30, 10]
    np.testing.assert_array_equal(relu, np.clip(plain, -10, 127))
    np.testing.assert_array_equal(relu6, np.clip(plain, -10, 110))
    np.testing.assert_array_equal(n1, np.clip(plain, -30, 10))
    assert relu.min() == -10 and plain.min() < -10 and plain.max() > 110 and relu6.max() == 110
    # a clamp range that excludes Z_y
    np.testing.assert_array_equal(
        qlinear(x, x_qp, w, w_qp, b, y_qp, mode=mode, activation=(0, 50)), np.clip(plain, 0, 50)
    )
    # relu6 is capped by qmax when 6 / S_y is large
    small = QParams(0.001, 0, QuantSpec(8))
    assert QLinear(w, w_qp, b, x_qp, small, activation="relu6").out_range == (0, 127)
    assert QLinear(w, w_qp, b, x_qp, QParams(0.04, 0, QuantSpec(8)), activation="relu6").out_range == (0, 127)
    assert QLinear(w, w_qp, b, x_qp, QParams(0.1, 0, QuantSpec(8)), activation="relu6").out_range == (0, 60)


def test_relu6_rounds_half_away():
    # S_y = 12: 6 / S_y = 0.5 exactly; TFLite's TfLiteRound (half away from zero) gives 1
    w = np.ones((1, 1), np.int8)
    wq = QParams(1.0, 0, QuantSpec(8))
    xq = QParams(1.0, 0, QuantSpec(8))
    assert QLinear(w, wq, None, xq, QParams(12.0, 0, QuantSpec(8)), activation="relu6").out_range == (0, 1)
    assert QLinear(w, wq, None, xq, QParams(4.0, -5, QuantSpec(8)), activation="relu6").out_range == (-5, -3)
    n1 = QLinear(w, wq, None, xq, QParams(2.0, 3, QuantSpec(8)), activation="relu_n1_to_1")
    assert n1.out_range == (2, 4)  # -1 / 2 = -0.5 -> -1, 1 / 2 = 0.5 -> 1


# ---- overflow --------------------------------------------------------------------------


def test_overflow_is_an_error_or_wraps():
    k = (1 << 31) // (255 * 128) + 1  # 65794: 255 * -128 * k < INT32_MIN
    xq = QParams(1.0, 0, QuantSpec(8, signed=False))
    wq = QParams(1.0, 0, QuantSpec(8))
    w = np.full((1, k), -128, np.int8)
    x = np.zeros((1, k), np.uint8)  # the actual data is harmless; the worst case is not
    with pytest.raises(ValueError, match="can overflow int32: output channel 0"):
        linear_accumulate(x, xq, w, wq)
    with pytest.raises(ValueError, match="overflow='wrap'"):
        QLinear(w, wq, None, xq, QParams(1.0, 0, QuantSpec(8)))
    x[:] = 255
    exact = 255 * -128 * k
    for form in FORMS:
        for be in ("numba", "numpy"):
            got = linear_accumulate(x, xq, w, wq, form=form, overflow="wrap", backend=be)
            assert int(got[0, 0]) == wrap32(exact) and exact < INT32_MIN
    # one fewer term fits; the bias is part of the worst case
    ok = k - 1
    lo, hi = accumulator_bounds(w[:, :ok], 0, 0, 255, 0)
    assert int(lo[0]) == -255 * 128 * ok >= INT32_MIN and hi[0] == 0
    linear_accumulate(x[:, :ok], xq, w[:, :ok], wq)
    with pytest.raises(ValueError, match="can overflow"):
        linear_accumulate(x[:, :ok], xq, w[:, :ok], wq, np.array([-(1 << 20)], np.int32))


def test_folded_form_exact_when_raw_sums_wrap():
    # Z_x = Z_w = 255: every centered term is 0 and the accumulator is the bias, but the raw
    # sum q_x q_w = 255^2 K wraps int32 for K > 33025. Modular arithmetic keeps it exact.
    k = 40000
    xq = QParams(1.0, 255, QuantSpec(8, signed=False))
    wq = QParams(1.0, 255, QuantSpec(8, signed=False))
    x = np.full((2, k), 255, np.uint8)
    x[1, :3] = 0
    w = np.full((1, k), 255, np.uint8)
    b = np.array([12345], np.int32)
    assert 255 * 255 * k > INT32_MAX
    for be in ("numba", "numpy"):
        d = linear_accumulate(x, xq, w, wq, b, form="direct", backend=be)
        f = linear_accumulate(x, xq, w, wq, b, form="folded", backend=be)
        np.testing.assert_array_equal(d, [[12345], [12345]])
        np.testing.assert_array_equal(f, d)


def test_reduce_range_int16_pairs():
    # every pair of int8 weights: (1, 2 * 256 * 256)
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
    w = np.stack([a.ravel(), b.ravel()], axis=1).reshape(1, -1).astype(np.int8)
    full = check_int16_pairs(w, 0, 255)
    assert full.saturates and full.hi == 255 * 254 and full.lo == -255 * 256
    reduced = check_int16_pairs(w, 0, 127)  # PyTorch reduce_range=True: 7-bit activations
    assert not reduced.saturates and reduced.n_saturating == 0
    assert reduced.hi == 127 * 254 <= 32767 and reduced.lo == -127 * 256 >= -32768
    # the model of vpmaddubsw: 255 * 127 + 255 * 127 = 64770 saturates to 32767
    x = np.array([[255, 255, 1]], np.uint8)
    wp = np.array([[127, 127, 1]], np.int8)
    assert int16_pair_accumulate(x, wp)[0, 0] == 32767 + 1
    assert int16_pair_accumulate(x // 2, wp)[0, 0] == 127 * 254 + 0  # exact below saturation
    # random weights and 7-bit activations: the saturating model equals the exact product
    rng = np.random.default_rng(0)
    ww = rng.integers(-128, 128, (8, 31)).astype(np.int8)
    xx = rng.integers(0, 128, (5, 31)).astype(np.uint8)
    np.testing.assert_array_equal(int16_pair_accumulate(xx, ww), xx.astype(np.int64) @ ww.T.astype(np.int64))
    assert check_int16_pairs(np.array([[1, 2]], np.int8)).saturates is False


# ---- bias ------------------------------------------------------------------------------


def test_quantize_bias_methods():
    # TFLite's quantization_utils_test (SymmetricPerLayerBiasQuantize): scales 0.5 * 0.5,
    # bias {4.0, 1.0} -> {16, 4}
    for method in ("onnxruntime", "tflite"):
        np.testing.assert_array_equal(quantize_bias(np.array([4.0, 1.0], np.float32), 0.5, 0.5, method=method), [16, 4])
    ties = np.array([0.625, -0.625, 0.375, 0.0], np.float32)  # 2.5, -2.5, 1.5 units of 0.25
    np.testing.assert_array_equal(quantize_bias(ties, 0.5, 0.5), [2, -2, 2, 0])  # half even
    np.testing.assert_array_equal(quantize_bias(ties, 0.5, 0.5, method="tflite"), [3, -3, 2, 0])  # half away
    # per-channel weight scales
    q = quantize_bias(np.array([1.0, 1.0], np.float32), 0.5, np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(q, [4, 8])
    assert q.dtype == np.int32
    with pytest.raises(ValueError, match="does not fit int32"):
        quantize_bias(np.array([1e6], np.float32), 1e-4, 1e-4)
    with pytest.raises(TypeError, match="bias must be a floating-point"):
        quantize_bias(np.array([1]), 0.5, 0.5)
    with pytest.raises(ValueError, match="s_w must be a scale or one per bias"):
        quantize_bias(np.array([1.0, 2.0]), 0.5, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="method must be one of"):
        quantize_bias(np.array([1.0]), 0.5, 0.5, method="torch")


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8), st.floats(1e-3, 1.0), st.floats(1e-3, 1.0))
def test_quantize_bias_is_within_half_a_unit(b, sx, sw):
    b = np.array(b, np.float32)
    for method in ("onnxruntime", "tflite"):
        q = quantize_bias(b, sx, sw, method=method)
        s = float(np.float32(np.float32(sx) * np.float32(sw)))
        assert np.all(np.abs(q - b.astype(np.float64) / s) <= 0.5 + 1e-5 * np.abs(b / s).max() + 1e-9)


# ---- errors ----------------------------------------------------------------------------


def _args():
    rng = np.random.default_rng(0)
    x, x_qp, w, w_qp, b, y_qp = make_layer(rng, 2, 3, 4, False, True, False)
    return dict(x_q=x, x_qp=x_qp, w_q=w, w_qp=w_qp, bias_q=b, y_qp=y_qp)


@pytest.mark.parametrize(
    "change, kw, exc, match",
    [
        ({"x_q": np.zeros((2, 3), np.float32)}, {}, TypeError, "x_q must be an integer array"),
        ({"x_q": np.full((2, 3), 300, np.int32)}, {}, ValueError, r"x_q must hold codes in \[0, 255\]"),
        ({"x_q": np.zeros((2, 4), np.uint8)}, {}, ValueError, r"x_q must have shape \(..., 3\)"),
        ({"w_q": np.zeros((4, 3, 1), np.int8)}, {}, ValueError, "w_q must have 2 dimensions"),
        ({"w_q": np.full((4, 3), 200, np.int16)}, {}, ValueError, "w_q must hold codes"),
        ({"w_qp": QParams([0.1, 0.1, 0.1], 0, QuantSpec(axis=1))}, {}, ValueError, "per-channel along axis 0"),
        ({"w_qp": QParams([0.1, 0.1], 0, QuantSpec(axis=0))}, {}, ValueError, "2 channels but the weights have 4"),
        ({"w_qp": QParams(np.ones((4, 1)), 0, QuantSpec(axis=1, block_size=2))}, {}, ValueError, "per-channel along"),
        ({"x_qp": QParams([0.1, 0.1], 0, QuantSpec(signed=False, axis=0))}, {}, ValueError, "x_qp must be per-tensor"),
        ({"y_qp": QParams([0.1], 0, QuantSpec(axis=0))}, {}, ValueError, "y_qp must be per-tensor"),
        ({"w_qp": 0.1}, {}, TypeError, "w_qp must be a QParams"),
        ({"bias_q": np.zeros(3, np.int32)}, {}, ValueError, r"bias_q must have shape \(4,\)"),
        ({"bias_q": np.zeros(4, np.float32)}, {}, TypeError, "bias_q must be an int32"),
        ({"bias_q": np.full(4, 1 << 40)}, {}, ValueError, "bias_q must lie in the int32 range"),
        ({}, {"mode": "gemmlowp"}, ValueError, "mode must be one of"),
        ({}, {"form": "fast"}, ValueError, "form must be one of"),
        ({}, {"overflow": "saturate"}, ValueError, "overflow must be one of"),
        ({}, {"activation": "gelu"}, ValueError, "activation must be None"),
        ({}, {"activation": (10, 5)}, ValueError, r"activation\[1\]"),
        ({}, {"backend": "torch"}, ValueError, "backend must be one of"),
    ],
)
def test_qlinear_rejects(change, kw, exc, match):
    args = _args()
    args.update(change)
    with pytest.raises(exc, match=match):
        qlinear(args["x_q"], args["x_qp"], args["w_q"], args["w_qp"], args["bias_q"], args["y_qp"], **kw)


def test_layer_rejects_wrong_input():
    a = _args()
    lay = QLinear(a["w_q"], a["w_qp"], a["bias_q"], a["x_qp"], a["y_qp"], mode="onnx", activation="relu")
    assert "QLinear(in_features=3, out_features=4" in repr(lay)
    np.testing.assert_array_equal(
        lay(a["x_q"]),
        qlinear(a["x_q"], a["x_qp"], a["w_q"], a["w_qp"], a["bias_q"], a["y_qp"], mode="onnx", activation="relu"),
    )
    with pytest.raises(ValueError, match=r"x_q must have shape \(..., 3\)"):
        lay(np.zeros((2, 5), np.uint8))
    with pytest.raises(TypeError, match="x_q must be an integer"):
        lay(np.zeros((2, 3)))
    # the layer holds read-only copies: changing the caller's arrays changes nothing
    before = lay(a["x_q"])
    a["w_q"][:] = 0
    a["bias_q"][:] = 0
    np.testing.assert_array_equal(lay(a["x_q"]), before)
    assert not lay.w_q.flags.writeable


def test_accumulator_bounds_rejects():
    w = np.ones((3, 4), np.int8)
    with pytest.raises(ValueError, match="w_zero_point must be a scalar or one per output channel"):
        accumulator_bounds(w, np.zeros(2, np.int32), 0, 255, 0)
    with pytest.raises(ValueError, match="bias_q must be integers of shape"):
        accumulator_bounds(w, 0, 0, 255, 0, np.zeros(2, np.int32))
    with pytest.raises(TypeError, match="w_q must be an integer array"):
        accumulator_bounds(w.astype(float), 0, 0, 255, 0)
    with pytest.raises(ValueError, match="x_zero_point must be in"):
        accumulator_bounds(w, 0, 0, 255, 300)
    lo, hi = accumulator_bounds(w, np.array([0, 1, 2]), 0, 255, 10, np.array([1, 2, 3]))
    np.testing.assert_array_equal(lo, [1 - 40, 2, 3 - 4 * 245])
    np.testing.assert_array_equal(hi, [1 + 4 * 245, 2, 3 + 40])


# ---- activation=None and "none"; plain zero points in linear_accumulate -----------------


@pytest.mark.parametrize("spelling", [None, "none"])
def test_no_activation_both_spellings(spelling):
    rng = np.random.default_rng(11)
    spec = QuantSpec(bits=8, signed=True)
    x_qp, w_qp, y_qp = QParams(0.05, 3, spec), QParams(0.02, 0, spec), QParams(0.3, -7, spec)
    x = rng.integers(-128, 128, (5, 12)).astype(np.int8)
    w = rng.integers(-127, 128, (4, 12)).astype(np.int8)
    bias = rng.integers(-500, 500, 4).astype(np.int32)
    ref = qlinear(x, x_qp, w, w_qp, bias, y_qp)
    np.testing.assert_array_equal(qlinear(x, x_qp, w, w_qp, bias, y_qp, activation=spelling), ref)
    layer = QLinear(w, w_qp, bias, x_qp, y_qp, activation=spelling)
    np.testing.assert_array_equal(layer(x), ref)
    assert layer.activation is None
    # PyTorch's float bias path (quint8 output) takes both spellings too
    u8 = QuantSpec(bits=8, signed=False)
    xu, yu = QParams(0.05, 120, u8), QParams(0.3, 100, u8)
    xq = rng.integers(0, 256, (5, 12)).astype(np.uint8)
    fb = rng.normal(size=4).astype(np.float32)
    ref = qlinear(xq, xu, w, w_qp, fb, yu, mode="fbgemm")
    got = qlinear(xq, xu, w, w_qp, fb, yu, mode="fbgemm", activation=spelling)
    np.testing.assert_array_equal(got, ref)
    got = QLinear(w, w_qp, fb, xu, yu, mode="fbgemm", activation=spelling)(xq)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_accumulate_plain_zero_points(signed, per_channel):
    rng = np.random.default_rng(12)
    spec = QuantSpec(bits=8, signed=signed)
    dt = spec.dtype
    x = rng.integers(spec.qmin, spec.qmax + 1, (6, 20)).astype(dt)
    w = rng.integers(-128, 128, (5, 20)).astype(np.int8)
    zx = int(rng.integers(spec.qmin, spec.qmax + 1))
    x_qp = QParams(0.1, zx, spec)
    if per_channel:
        zw = rng.integers(-10, 10, 5).astype(np.int32)
        w_qp = QParams(np.full(5, 0.02, np.float32), zw, QuantSpec(axis=0))
    else:
        zw = int(rng.integers(-10, 10))
        w_qp = QParams(0.02, zw, QuantSpec())
    bias = rng.integers(-1000, 1000, 5).astype(np.int32)
    ref = linear_accumulate(x, x_qp, w, w_qp, bias)
    np.testing.assert_array_equal(ref, acc_oracle(x, zx, w, zw, bias))
    for backend in ("numba", "numpy"):
        for xz, wz in ((zx, zw), (np.int64(zx), zw), (x_qp, zw), (zx, w_qp)):
            np.testing.assert_array_equal(linear_accumulate(x, xz, w, wz, bias, backend=backend), ref)
    if per_channel:
        np.testing.assert_array_equal(linear_accumulate(x, zx, w, list(map(int, zw)), bias), ref)


def test_linear_accumulate_bad_plain_zero_points():
    x = np.zeros((2, 3), np.int8)
    w = np.zeros((4, 3), np.int8)
    with pytest.raises(ValueError, match=r"x_qp must lie in \[-128, 127\]"):
        linear_accumulate(x, 200, w, 0)
    with pytest.raises(ValueError, match=r"x_qp must lie in \[0, 255\]"):
        linear_accumulate(x.astype(np.uint8), -1, w, 0)
    with pytest.raises(ValueError, match="w_qp must lie in"):
        linear_accumulate(x, 0, w, 128)
    with pytest.raises(ValueError, match="w_qp must lie in"):
        linear_accumulate(x, 0, w, np.array([0, 0, 0, -129]))
    with pytest.raises(ValueError, match=r"w_qp must hold one zero point per output channel of w_q \(4\)"):
        linear_accumulate(x, 0, w, np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="x_qp must be one zero point"):
        linear_accumulate(x, np.zeros(3, np.int32), w, 0)
    with pytest.raises(ValueError, match="w_qp must be one zero point"):
        linear_accumulate(x, 0, w, np.zeros((4, 1), np.int32))
    with pytest.raises(TypeError, match="x_qp must be a QParams or an integer zero point"):
        linear_accumulate(x, 0.5, w, 0)
    with pytest.raises(TypeError, match="w_qp must be a QParams or an integer zero point"):
        linear_accumulate(x, 0, w, True)
    with pytest.raises(TypeError, match="x_qp is a plain zero point.*int64"):
        linear_accumulate(x.astype(np.int64), 0, w, 0)
    with pytest.raises(TypeError, match="x_qp must be a QParams"):
        qlinear(x, 0, w, QParams(0.1, 0, QuantSpec()), None, QParams(0.1, 0, QuantSpec()))


# ---- qmatmul: the product of two quantized activations (ONNX QLinearMatMul, B an input) ----------

U8, S8 = QuantSpec(bits=8, signed=False), QuantSpec(bits=8, signed=True)


def _matmul_oracle(a, za, b, zb, sa, sb, sy, zy, lo, hi):
    """Python ints for the sum, exact fractions for onnx's float64 product of the float32
    multiplier: ``rint(acc * M32) + Z_y`` (ties to even), clamped."""
    m32 = float(np.float32(np.float32(np.float32(sa) * np.float32(sb)) / np.float32(sy)))
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    aa = np.broadcast_to(a, shape[:-2] + a.shape[-2:])
    bb = np.broadcast_to(b, shape[:-2] + b.shape[-2:])
    out = np.empty(shape, np.int64)
    for idx in np.ndindex(*shape):
        *lead, i, j = idx
        acc = sum((int(aa[(*lead, i, t)]) - za) * (int(bb[(*lead, t, j)]) - zb) for t in range(a.shape[-1]))
        v = acc * m32  # exact: |acc| < 2^24 and M32 has 24 bits, so the float64 product is exact
        r = math.floor(v)
        r = r + 1 if v - r > 0.5 or (v - r == 0.5 and r % 2) else r
        out[idx] = min(max(r + zy, lo), hi)
    return out


@pytest.mark.parametrize("spec", [U8, S8], ids=["uint8", "int8"])
@pytest.mark.parametrize(
    "shapes", [((4, 6), (6, 5)), ((2, 3, 7), (2, 7, 4)), ((2, 1, 3, 5), (4, 5, 2)), ((3, 4), (2, 4, 3))]
)
def test_qmatmul_against_python_int_oracle(spec, shapes):
    rng = np.random.default_rng(41)
    sa, sb, sy = 0.05, 0.04, 0.09
    za, zb, zy = (int(v) for v in rng.integers(spec.qmin, spec.qmax + 1, 3))
    a = rng.integers(spec.qmin, spec.qmax + 1, shapes[0]).astype(spec.dtype)
    b = rng.integers(spec.qmin, spec.qmax + 1, shapes[1]).astype(spec.dtype)
    a_qp, b_qp, y_qp = QParams(sa, za, spec), QParams(sb, zb, spec), QParams(sy, zy, spec)
    for activation in (None, "none", "relu", "relu6"):
        lo, hi = activation_range(activation, sy, zy, spec.qmin, spec.qmax)
        got = qmatmul(a, a_qp, b, b_qp, y_qp, activation=activation)
        assert got.dtype == spec.dtype
        assert got.shape == np.matmul(a.astype(np.int64), b.astype(np.int64)).shape
        np.testing.assert_array_equal(got, _matmul_oracle(a, za, b, zb, sa, sb, sy, zy, lo, hi))


@pytest.mark.parametrize("mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
def test_qmatmul_each_mode_is_requantize_of_the_exact_accumulator(mode):
    """Any requantization mode: ``requantize`` of the exact sum; a 2-D ``a @ b`` is also a
    fully connected layer with weights ``b.T`` and no bias."""
    rng = np.random.default_rng(42)
    a = rng.integers(-128, 128, (2, 5, 9)).astype(np.int8)
    b = rng.integers(-128, 128, (9, 4)).astype(np.int8)
    a_qp, b_qp, y_qp = QParams(0.03, 5, S8), QParams(0.02, -3, S8), QParams(0.07, 2, S8)
    acc = np.matmul(a.astype(np.int64) - 5, b.astype(np.int64) + 3)
    m = effective_multiplier(0.03, 0.02, 0.07, mode)
    for activation, (lo, hi) in ((None, (-128, 127)), ("relu", (2, 127)), ((-20, 40), (-20, 40))):
        got = qmatmul(a, a_qp, b, b_qp, y_qp, mode=mode, activation=activation)
        np.testing.assert_array_equal(got, requantize(acc, m, 2, lo, hi, mode=mode))
        if mode in REQUANT_MODES:
            ref = qlinear(a, a_qp, np.ascontiguousarray(b.T), b_qp, None, y_qp, mode=mode, activation=activation)
            np.testing.assert_array_equal(got, ref)


def test_qmatmul_overflow_is_an_error_or_wraps():
    k = 40000  # 40000 * 255 * 255 > 2^31
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), 255, np.uint8)
    qp = QParams(0.1, 0, U8)
    with pytest.raises(ValueError, match="overflows int32"):
        qmatmul(a, qp, b, qp, qp)
    got = qmatmul(a, qp, b, qp, QParams(1e6, 0, U8), overflow="wrap", mode="onnx")
    wrapped = ((k * 255 * 255 + (1 << 31)) % (1 << 32)) - (1 << 31)  # negative
    assert wrapped < 0 and got[0, 0] == 0


def test_qmatmul_argument_errors():
    a = np.zeros((2, 3), np.uint8)
    qp = QParams(0.1, 0, U8)
    with pytest.raises(ValueError, match="disagree on K"):
        qmatmul(a, qp, np.zeros((4, 2), np.uint8), qp, qp)
    with pytest.raises(ValueError, match="at least 2-D"):
        qmatmul(a, qp, np.zeros(3, np.uint8), qp, qp)
    with pytest.raises(ValueError, match="do not broadcast"):
        qmatmul(np.zeros((2, 2, 3), np.uint8), qp, np.zeros((3, 3, 2), np.uint8), qp, qp)
    with pytest.raises(TypeError, match="b_qp must be a QParams"):
        qmatmul(a, qp, np.zeros((3, 2), np.uint8), 0, qp)
    with pytest.raises(ValueError, match="a_qp must be per-tensor"):
        qmatmul(a, QParams(np.full(2, 0.1, np.float32), 0, U8.replace(axis=0)), np.zeros((3, 2), np.uint8), qp, qp)
    with pytest.raises(ValueError, match="a_q must hold codes"):
        qmatmul(np.full((2, 3), 300, np.int32), qp, np.zeros((3, 2), np.uint8), qp, qp)
    with pytest.raises(ValueError, match="mode"):
        qmatmul(a, qp, np.zeros((3, 2), np.uint8), qp, qp, mode="torch")
    with pytest.raises(ValueError, match="activation"):
        qmatmul(a, qp, np.zeros((3, 2), np.uint8), qp, qp, activation="gelu")


# ---- ONNX QLinearMatMul with B a graph input -------------------------------------------------


def _qlinear_matmul_model(spec, shape_a, shape_b, sa, za, sb, zb, sy, zy):
    from onnx import TensorProto, helper

    t = TensorProto.UINT8 if spec is U8 else TensorProto.INT8
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(v)]) for n, v in (("sa", sa), ("sb", sb), ("sy", sy))]
    inits += [helper.make_tensor(n, t, [], [int(v)]) for n, v in (("za", za), ("zb", zb), ("zy", zy))]
    node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
    graph = helper.make_graph(
        [node],
        "qlinear_matmul",
        [helper.make_tensor_value_info("a", t, list(shape_a)), helper.make_tensor_value_info("b", t, list(shape_b))],
        [helper.make_tensor_value_info("y", t, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _qmatmul_cases(spec):
    """Random scales, and a tie-heavy case: M = float32(S_a S_b) / S_y = float32(1/6), where
    float32(acc * M) lands exactly on k + 0.5 for acc = 3 (mod 6) but the float64 product
    does not: fp32 and onnx then differ by one code for even k."""
    rng = np.random.default_rng(43)
    zmid = 0 if spec.signed else 128
    for shape_a, shape_b in (((6, 16), (16, 5)), ((3, 8, 12), (3, 12, 7))):
        sa, sb = (float(v) for v in np.float32(rng.uniform(0.005, 0.1, 2)))
        sy = float(np.float32(sa * sb * rng.uniform(30, 200)))
        za, zb, zy = (int(v) for v in rng.integers(spec.qmin, spec.qmax + 1, 3))
        a = rng.integers(spec.qmin, spec.qmax + 1, shape_a).astype(spec.dtype)
        b = rng.integers(spec.qmin, spec.qmax + 1, shape_b).astype(spec.dtype)
        yield (sa, za, sb, zb, sy, zy), a, b, False
    shape_a, shape_b = (3, 24, 4), (3, 4, 24)
    a = (rng.integers(-12, 13, shape_a) + zmid).astype(spec.dtype)
    b = (rng.integers(-12, 13, shape_b) + zmid).astype(spec.dtype)
    yield (0.25, zmid, 0.25, zmid, 0.375, zmid), a, b, True


@pytest.mark.parametrize("spec", [U8, S8], ids=["uint8", "int8"])
def test_qmatmul_onnx_reference_qlinear_matmul_is_mode_onnx(spec):
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    for (sa, za, sb, zb, sy, zy), a, b, ties in _qmatmul_cases(spec):
        model = _qlinear_matmul_model(spec, a.shape, b.shape, sa, za, sb, zb, sy, zy)
        want = ReferenceEvaluator(model).run(None, {"a": a, "b": b})[0]
        qps = [QParams(s, z, spec) for s, z in ((sa, za), (sb, zb), (sy, zy))]
        got = qmatmul(a, qps[0], b, qps[1], qps[2], mode="onnx")
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        if ties:  # the case tells the modes apart
            assert np.any(qmatmul(a, qps[0], b, qps[1], qps[2], mode="fp32") != want)


@pytest.mark.parametrize("spec", [U8, S8], ids=["uint8", "int8"])
def test_qmatmul_onnxruntime_qlinear_matmul_is_mode_fp32(spec):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    for (sa, za, sb, zb, sy, zy), a, b, ties in _qmatmul_cases(spec):
        model = _qlinear_matmul_model(spec, a.shape, b.shape, sa, za, sb, zb, sy, zy)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, {"a": a, "b": b})[0]
        qps = [QParams(s, z, spec) for s, z in ((sa, za), (sb, zb), (sy, zy))]
        got = qmatmul(a, qps[0], b, qps[1], qps[2], mode="fp32")
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        if ties:
            assert np.any(qmatmul(a, qps[0], b, qps[1], qps[2], mode="onnx") != want)


def test_form_names_the_kernel_that_runs(monkeypatch):
    """``form="direct"`` / ``"folded"`` run that formula's kernel on 8-bit codes too;
    ``"auto"`` runs the byte kernels; all give the same bits."""
    import npquant._kernels.gemm as kg

    rng = np.random.default_rng(5)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, 7, 23, 6, False, True, True)
    want = acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b)
    calls = []
    for name in ("gemm_direct", "gemm_folded"):
        real = getattr(kg, name)
        monkeypatch.setattr(kg, name, lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a))[1])
    for form, ran in (("direct", ["gemm_direct"]), ("folded", ["gemm_folded"]), ("auto", [])):
        calls.clear()
        np.testing.assert_array_equal(linear_accumulate(x, x_qp, w, w_qp, b, form=form), want)
        assert calls == ran, form
    with pytest.raises(ValueError, match="form='direct' cannot saturate int16 pairs"):
        QLinear(w, w_qp, b, x_qp, None, form="direct", accumulation="int16_pairs")
    np.testing.assert_array_equal(
        QLinear(w, w_qp, b, x_qp, None, form="folded", accumulation="int16_pairs").accumulate(x),
        QLinear(w, w_qp, b, x_qp, None, accumulation="int16_pairs").accumulate(x),
    )


@pytest.mark.parametrize("w_signed", [True, False])
def test_layer_keeps_one_copy_of_the_weights(w_signed):
    """The layer's read-only ``w_q`` is the prepared product's ``w``; int8 weights are the
    byte kernels' ``ws`` as they are; one kernel layout is kept, built on first use."""
    from npquant.qnn.gemm import available_gemm_kernels, use_gemm_kernel

    rng = np.random.default_rng(6)
    x, x_qp, w, w_qp, b, _ = make_layer(rng, 9, 64, 6, False, w_signed, True)
    lay = QLinear(w, w_qp, b, x_qp, None)
    g = lay._gemm
    assert g.w is lay.w_q and not np.shares_memory(lay.w_q, w)
    assert (g.fast.ws is g.w) == w_signed
    assert "layout" not in g.fast._cache  # nothing built before the first call
    want = acc_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b)
    for kernel in available_gemm_kernels():
        with use_gemm_kernel(kernel):
            np.testing.assert_array_equal(lay.accumulate(x), want)
            np.testing.assert_array_equal(lay.accumulate(x[:2]), want[:2])
        layouts = [v for key, v in g.fast._cache.items() if key == "layout"]
        assert len(layouts) <= 1
    # a cast is the only copy: int64 codes in, one int8 / uint8 array kept
    lay64 = QLinear(w.astype(np.int64), w_qp, b, x_qp, None)
    assert lay64.w_q.dtype == w.dtype and lay64._gemm.w is lay64.w_q and not lay64.w_q.flags.writeable
    np.testing.assert_array_equal(lay64.accumulate(x), want)
