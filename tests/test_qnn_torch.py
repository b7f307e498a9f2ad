"""npquant's integer layers against PyTorch's quantized linear and conv2d (fbgemm pinned).

Same integer weights, same float bias, same scales: ``qlinear`` / ``qconv2d`` and the
layer objects in ``mode="fbgemm"`` (float bias) and ``accumulation="fbgemm"`` must
give PyTorch's uint8 codes bit for bit, per-tensor and per-channel weights, with and
without fused ReLU, on whatever path fbgemm takes on this CPU: exact with AVX-512 VNNI
(except the depthwise kernel), int16 pair saturation without. ``test_peers_fbgemm_avx2``
runs this module again with fbgemm forced to its AVX2 kernels, so both paths are tested
live on a VNNI machine. Inputs are chosen so that many outputs land on exact rounding
ties, and activation codes span 0..255 so that pairs saturate where the path does. The
counts of compared and differing elements are printed with ``pytest -s``.
"""

import numpy as np
import pytest
from conftest import slow_after

from npquant import QParams, QuantSpec
from npquant.qnn.accumulation import host_path
from npquant.qnn.conv import QConv2d, qconv2d
from npquant.qnn.linear import QLinear, qlinear

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
f32 = np.float32


def _weights(rng, shape, per_channel, zw_range=5):
    o = shape[0]
    qw = rng.integers(-128, 128, shape).astype(np.int8)
    if per_channel:
        sw = rng.uniform(1e-3, 0.05, o).astype(f32)
        wt = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(qw), torch.from_numpy(sw.astype(np.float64)), torch.zeros(o, dtype=torch.int64), 0
        )
        return qw, QParams(sw, 0, QuantSpec(axis=0)), wt, sw
    sw = f32(rng.uniform(1e-3, 0.05))
    zw = int(rng.integers(-zw_range, zw_range + 1))
    wt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qw), float(sw), zw)
    return qw, QParams(sw, zw, QuantSpec()), wt, np.array([sw], f32)


def _output(rng, sx, sw, tie):
    """An output scale that puts many products on exact halves, or a random one."""
    if tie:
        return f32(f32(sx * sw[0]) * 2.0 ** int(rng.integers(1, 9))), int(rng.integers(0, 256))
    return f32(rng.uniform(0.01, 0.5)), int(rng.integers(0, 256))


def _bias(rng, o, sx, sw):
    ats = (f32(sx) * np.broadcast_to(sw, (o,))).astype(f32)
    k = rng.integers(-3000, 3000, o)
    return [rng.normal(0, 1, o), (k + 0.5) * ats, k * ats][int(rng.integers(0, 3))].astype(f32)


COUNTS = {}


def _count(name, got, want, exact=None):
    """Tally compared and differing outputs, and how many the exact model would get wrong."""
    c = COUNTS.setdefault(name, [0, 0, 0])
    c[0] += want.size
    c[1] += int((got != want).sum())
    if exact is not None:
        c[2] += int((exact != want).sum())


@pytest.mark.slow  # a peer check, not a kernel check: the JIT-off pass would run the GEMM in Python
def test_qlinear_fp32_equals_torch_quantized_linear(fbgemm_threads):
    rng = np.random.default_rng(7 + fbgemm_threads)
    for it in range(160):
        per_channel, relu, tie = it % 2 == 1, (it // 2) % 2 == 1, rng.random() < 0.6
        n, k, o = (int(v) for v in (rng.integers(1, 30), rng.integers(1, 150), rng.integers(1, 30)))
        sx, zx = f32(rng.uniform(1e-3, 0.1)), int(rng.integers(0, 256))
        qx = rng.integers(0, 256, (n, k)).astype(np.uint8)
        qw, w_qp, wt, sw = _weights(rng, (o, k), per_channel)
        sy, zy = _output(rng, sx, sw, tie)
        bias = _bias(rng, o, sx, sw) if it % 5 else None
        packed = torch.ops.quantized.linear_prepack(wt, None if bias is None else torch.from_numpy(bias))
        xt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), float(sx), zx)
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        want = op(xt, packed, float(sy), zy).int_repr().numpy()
        x_qp = QParams(sx, zx, QuantSpec(signed=False))
        y_qp = QParams(sy, zy, QuantSpec(signed=False))
        act = "relu" if relu else None
        got = qlinear(qx, x_qp, qw, w_qp, bias, y_qp, mode="fbgemm", activation=act, accumulation="fbgemm")
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")
        layer = QLinear(qw, w_qp, bias, x_qp, y_qp, mode="fbgemm", activation=act, form="folded", accumulation="fbgemm")
        np.testing.assert_array_equal(layer(qx), want)
        exact = qlinear(qx, x_qp, qw, w_qp, bias, y_qp, mode="fbgemm", activation=act)
        _count(
            "quantized.linear" + ("_relu" if relu else "") + (" per-channel" if per_channel else " per-tensor"),
            got,
            want,
            exact,
        )


@pytest.mark.parametrize("groups", [1, 2])
def test_qconv2d_fp32_equals_torch_quantized_conv2d(fbgemm_threads, groups):
    rng = np.random.default_rng(31 * groups + fbgemm_threads)
    for it in range(24):
        per_channel, relu, tie = it % 2 == 1, (it // 2) % 2 == 1, rng.random() < 0.6
        cin, o = 4 * groups, 3 * groups
        h, w = int(rng.integers(4, 10)), int(rng.integers(4, 10))
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        stride, pad, dil = int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
        if (h + 2 * pad - dil * (kh - 1) - 1) < 0 or (w + 2 * pad - dil * (kw - 1) - 1) < 0:
            continue
        sx, zx = f32(rng.uniform(1e-3, 0.1)), int(rng.integers(0, 256))
        qx = rng.integers(0, 256, (2, cin, h, w)).astype(np.uint8)
        qw, w_qp, wt, sw = _weights(rng, (o, cin // groups, kh, kw), per_channel, zw_range=0)
        sy, zy = _output(rng, sx, sw, tie)
        bias = _bias(rng, o, sx, sw)
        packed = torch.ops.quantized.conv2d_prepack(
            wt, torch.from_numpy(bias), [stride, stride], [pad, pad], [dil, dil], groups
        )
        xt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), float(sx), zx)
        op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
        want = op(xt, packed, float(sy), zy).int_repr().numpy()
        x_qp = QParams(sx, zx, QuantSpec(signed=False))
        y_qp = QParams(sy, zy, QuantSpec(signed=False))
        act = "relu" if relu else None
        kw_ = dict(stride=stride, padding=pad, dilation=dil, groups=groups, mode="fbgemm", activation=act)
        got = qconv2d(qx, x_qp, qw, w_qp, bias, y_qp, accumulation="fbgemm", **kw_)
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")
        layer = QConv2d(qw, w_qp, bias, x_qp, y_qp, accumulation="fbgemm", **kw_)
        np.testing.assert_array_equal(layer(qx), want)
        exact = qconv2d(qx, x_qp, qw, w_qp, bias, y_qp, **kw_)
        _count(
            "quantized.conv2d"
            + ("_relu" if relu else "")
            + (" per-channel" if per_channel else " per-tensor")
            + f" groups={groups}",
            got,
            want,
            exact,
        )


# fbgemm's depthwise kernel (groups == C, C % 8 == 0, square 3/5/7 kernel, stride 1-2, same
# padding) saturates pairs of taps even with VNNI; the other shapes take im2col + GEMM.
DEPTHWISE = [
    (8, 8, 3, 1, 1, 1),
    (16, 16, 3, 2, 1, 1),
    (8, 16, 5, 1, 2, 1),
    (8, 8, 7, 2, 3, 1),
    (24, 24, 3, 1, 1, 1),
    (8, 8, 3, 1, 0, 1),
    (8, 8, 3, 1, 1, 2),
    (4, 4, 3, 1, 1, 1),
    (8, 24, 3, 1, 1, 1),
    (8, 8, 4, 1, 1, 1),
]


@pytest.mark.parametrize("c, o, k, stride, pad, dil", slow_after(DEPTHWISE, 2))
def test_depthwise_qconv2d_equals_torch(fbgemm_threads, c, o, k, stride, pad, dil):
    rng = np.random.default_rng(c * 100 + o * 10 + k + stride + 7 * pad + 11 * dil)
    for relu in (False, True):
        sx, zx = f32(rng.uniform(1e-3, 0.1)), int(rng.integers(128, 256))  # padding taps saturate too
        qx = rng.integers(0, 256, (2, c, 11, 11)).astype(np.uint8)
        qw, w_qp, wt, sw = _weights(rng, (o, 1, k, k), True, zw_range=0)
        sy, zy = _output(rng, sx, sw, True)
        bias = _bias(rng, o, sx, sw)
        packed = torch.ops.quantized.conv2d_prepack(wt, torch.from_numpy(bias), [stride] * 2, [pad] * 2, [dil] * 2, c)
        xt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), float(sx), zx)
        op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
        want = op(xt, packed, float(sy), zy).int_repr().numpy()
        x_qp, y_qp = QParams(sx, zx, QuantSpec(signed=False)), QParams(sy, zy, QuantSpec(signed=False))
        kw_ = dict(
            stride=stride, padding=pad, dilation=dil, groups=c, mode="fbgemm", activation="relu" if relu else None
        )
        layer = QConv2d(qw, w_qp, bias, x_qp, y_qp, accumulation="fbgemm", **kw_)
        np.testing.assert_array_equal(layer(qx), want)
        exact = qconv2d(qx, x_qp, qw, w_qp, bias, y_qp, **kw_)
        fast_path = (
            c % 8 == 0 and o in (c, 2 * c) and k in (3, 5, 7) and stride <= 2 and pad == (k - 1) // 2 and dil == 1
        )
        assert layer.saturates_pairs == (fast_path or host_path("fbgemm") == "avx2")
        if layer.saturates_pairs and not relu:  # the inputs make pairs saturate: the modes differ
            assert np.sum(exact != want) > 0
        _count(f"quantized.conv2d depthwise C={c} O={o} k={k}", layer(qx), want, exact)


def test_fbgemm_path_is_what_this_process_runs():
    """npquant's prediction of fbgemm's path agrees with a probe of torch itself."""
    qx = np.full((1, 4), 255, np.uint8)
    qw = np.full((1, 4), -128, np.int8)  # every pair is -65280: saturates to -32768
    xt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), 1.0, 0)
    wt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qw), 1.0, 0)
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        y = torch.ops.quantized.linear(xt, torch.ops.quantized.linear_prepack(wt, None), 1024.0, 128)
    finally:
        torch.backends.quantized.engine = old
    saturated = int(y.int_repr()) == 128 - 64  # -65536 / 1024, not -130560 / 1024 -> 0
    assert saturated == (host_path("fbgemm") == "avx2")


def test_report_counts():
    # runs last in this module: every comparison above was exact
    print(f"fbgemm path here: {host_path('fbgemm')}")
    for name, (n, bad, exact_bad) in sorted(COUNTS.items()):
        print(f"{name}: {n} elements compared, {bad} differ (the exact model: {exact_bad})")
        assert bad == 0 and n > 0


def test_fbgemm_mode_needs_a_float_bias_quint8_and_relu_at_most():
    qw = np.zeros((2, 3), np.int8)
    w_qp = QParams(0.1, 0, QuantSpec())
    x_qp = QParams(0.1, 0, QuantSpec(signed=False))
    y8 = QParams(0.1, 0, QuantSpec(signed=False))
    x = np.zeros((1, 3), np.uint8)
    b = np.zeros(2, np.float32)
    with pytest.raises(TypeError, match="with mode='fbgemm', bias_q is PyTorch's float bias"):
        qlinear(x, x_qp, qw, w_qp, np.zeros(2, np.int32), y8, mode="fbgemm")
    with pytest.raises(TypeError, match=r"bias_q must be an int32 array.*mode='fbgemm'"):
        qlinear(x, x_qp, qw, w_qp, b, y8, mode="fp32")
    with pytest.raises(ValueError, match=r"must be 2 finite values"):
        QLinear(qw, w_qp, np.array([0.0, np.nan], np.float32), x_qp, y8, mode="fbgemm")
    with pytest.raises(ValueError, match="quint8"):
        qlinear(x, x_qp, qw, w_qp, b, QParams(0.1, 0, QuantSpec()), mode="fbgemm")
    with pytest.raises(ValueError, match="None, 'none' or 'relu'"):
        QConv2d(qw[:, :, None, None], w_qp, b, x_qp, y8, mode="fbgemm", activation="relu6")
    # the deprecated spelling: float_bias= with mode="fp32" warns, and keeps its old errors
    with pytest.warns(DeprecationWarning, match="mode='fbgemm'"), pytest.raises(ValueError, match="needs mode='fp32'"):
        qlinear(x, x_qp, qw, w_qp, None, y8, mode="tflite", float_bias=b)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="not both"):
        qlinear(x, x_qp, qw, w_qp, np.zeros(2, np.int32), y8, mode="fp32", float_bias=b)


@pytest.mark.parametrize("per_channel", [False, True])
def test_float_bias_spelling_is_mode_fbgemm(per_channel):
    """``mode="fp32", float_bias=b`` (deprecated) is ``mode="fbgemm"`` with ``b`` as the
    bias, in the functions and the layers; no bias is a zero bias."""
    rng = np.random.default_rng(5)
    qx = rng.integers(0, 256, (3, 2, 6, 6)).astype(np.uint8)
    qw, w_qp, _, sw = _weights(rng, (4, 2, 3, 3), per_channel, zw_range=0)
    sx = f32(0.02)
    sy, zy = _output(rng, sx, sw, True)
    x_qp, y_qp = QParams(sx, 7, QuantSpec(signed=False)), QParams(sy, zy, QuantSpec(signed=False))
    b = _bias(rng, 4, sx, sw)
    want = qconv2d(qx, x_qp, qw, w_qp, b, y_qp, mode="fbgemm", padding=1, activation="relu")
    with pytest.warns(DeprecationWarning, match="float_bias= is deprecated"):
        got = qconv2d(qx, x_qp, qw, w_qp, None, y_qp, mode="fp32", float_bias=b, padding=1, activation="relu")
    np.testing.assert_array_equal(got, want)
    with pytest.warns(DeprecationWarning, match="float_bias= is deprecated"):
        layer = QConv2d(qw, w_qp, None, x_qp, y_qp, mode="fp32", float_bias=b, padding=1, activation="relu")
    assert layer.mode == "fbgemm"
    np.testing.assert_array_equal(layer(qx), want)
    x2 = qx.reshape(3, -1)[:, :18]
    w2 = qw.reshape(4, -1)
    want = qlinear(x2, x_qp, w2, w_qp, b, y_qp, mode="fbgemm")
    with pytest.warns(DeprecationWarning, match="float_bias= is deprecated"):
        np.testing.assert_array_equal(qlinear(x2, x_qp, w2, w_qp, None, y_qp, mode="fp32", float_bias=b), want)
    zero = qlinear(x2, x_qp, w2, w_qp, np.zeros(4, np.float32), y_qp, mode="fbgemm")
    np.testing.assert_array_equal(qlinear(x2, x_qp, w2, w_qp, None, y_qp, mode="fbgemm"), zero)
