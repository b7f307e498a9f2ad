"""The layer objects of npquant.qnn.layers: an integer CNN as a list of callables on codes."""

import numpy as np
import pytest

from npquant import QParams, QuantSpec, fit_qparams, quantize
from npquant.qnn import (
    AvgPool2d,
    Flatten,
    MaxPool2d,
    QAdd,
    QConv2d,
    QLinear,
    QReLU,
    add,
    avg_pool2d,
    max_pool2d,
    qconv2d,
    qlinear,
)


def test_small_integer_cnn_equals_the_functions():
    rng = np.random.default_rng(0)
    x_qp = QParams(0.02, 10, QuantSpec(signed=False))
    h_qp = QParams(0.05, 0, QuantSpec(signed=False))
    y_qp = QParams(0.1, 128, QuantSpec(signed=False))
    x = rng.integers(0, 256, (2, 1, 8, 8)).astype(np.uint8)
    wc = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    wc_qp = fit_qparams(wc, QuantSpec(symmetric=True, axis=0))
    wc_q = quantize(wc, wc_qp)
    wl = rng.normal(size=(10, 4 * 4 * 4)).astype(np.float32) * 0.1
    wl_qp = fit_qparams(wl, QuantSpec(symmetric=True, axis=0))
    wl_q = quantize(wl, wl_qp)
    model = [
        QConv2d(wc_q, wc_qp, None, x_qp, h_qp, padding=1, activation="relu"),
        MaxPool2d(2),
        Flatten(),
        QLinear(wl_q, wl_qp, None, h_qp, y_qp),
    ]
    out = x
    for layer in model:
        out = layer(out)
        assert repr(layer)
    h = qconv2d(x, x_qp, wc_q, wc_qp, None, h_qp, padding=1, activation="relu")
    ref = qlinear(max_pool2d(h, 2).reshape(2, -1), h_qp, wl_q, wl_qp, None, y_qp)
    np.testing.assert_array_equal(out, ref)
    assert out.shape == (2, 10) and out.dtype == np.uint8


def test_elementwise_layers():
    rng = np.random.default_rng(1)
    a_qp = QParams(0.03, -5, QuantSpec())
    b_qp = QParams(0.07, 3, QuantSpec())
    y_qp = QParams(0.08, 0, QuantSpec())
    a = rng.integers(-128, 128, (2, 3, 4, 4)).astype(np.int8)
    b = rng.integers(-128, 128, (2, 3, 4, 4)).astype(np.int8)
    got = QAdd(a_qp, b_qp, y_qp)(a, b)
    np.testing.assert_array_equal(got, add(a, 0.03, -5, b, 0.07, 3, 0.08, 0))
    relu = QAdd(a_qp, b_qp, y_qp, activation="relu")(a, b)
    np.testing.assert_array_equal(relu, np.maximum(got, 0))
    r6 = QReLU(y_qp, "relu6")(got)
    assert r6.min() >= 0 and r6.max() <= round(6 / 0.08)
    np.testing.assert_array_equal(AvgPool2d(2)(a), avg_pool2d(a, 2))
    assert Flatten()(a).shape == (2, 48)
    with pytest.raises(ValueError, match="mode must be one of"):
        AvgPool2d(2, mode="onnx")
    with pytest.raises(ValueError, match="activation must be one of"):
        QReLU(y_qp, "gelu")
    with pytest.raises(TypeError, match="x_q"):
        QReLU(y_qp)(np.ones(3))


def test_qrelu6_torch_mode_rounds_as_pytorch():
    """PyTorch's quantized relu6 rounds the code of 6 as ``rint(float32(6 * float32(1 / S)) + Z)``
    (ties to even after adding Z); TFLite's clamp rounds ``6 / S`` half away from zero. The
    expected codes were measured with ``torch.ops.quantized.relu6`` (torch 2.13)."""
    q = np.arange(256, dtype=np.uint8)
    for scale, zp, torch_hi, tflite_hi in [(np.float32(6 / 11.5), 31, 42, 43), (np.float32(6 / 10.5), 8, 18, 19)]:
        qp = QParams(scale, zp, QuantSpec(signed=False))
        torch_r6 = QReLU(qp, "relu6", mode="torch")
        assert torch_r6.out_range == (zp, torch_hi)
        assert QReLU(qp, "relu6").out_range == (zp, tflite_hi)
        np.testing.assert_array_equal(torch_r6(q), np.clip(q, zp, torch_hi))
        assert QReLU(qp, "relu", mode="torch").out_range == QReLU(qp, "relu").out_range == (zp, 255)
    with pytest.raises(ValueError, match="mode must be one of"):
        QReLU(qp, "relu6", mode="onnx")


# ---- one code path: each function is its layer object called once ------------------------


def _spy_init(monkeypatch, cls):
    """Count the objects of ``cls`` built while the spy is on."""
    built = []
    init = cls.__init__

    def spy(self, *args, **kwargs):
        built.append(cls.__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", spy)
    return built


def _lin_args(rng):
    x_qp = QParams(0.02, 10, QuantSpec(signed=False))
    w_qp = QParams(np.array([0.01, 0.02, 0.03], np.float32), 0, QuantSpec(axis=0))
    y_qp = QParams(0.1, -3, QuantSpec())
    x = rng.integers(0, 256, (4, 5)).astype(np.uint8)
    w = rng.integers(-127, 128, (3, 5)).astype(np.int8)
    b = rng.integers(-300, 300, 3).astype(np.int32)
    return x, x_qp, w, w_qp, b, y_qp


def test_the_functions_build_their_layer_object(monkeypatch):
    from npquant.qnn import conv2d_accumulate, linear_accumulate

    rng = np.random.default_rng(3)
    x, x_qp, w, w_qp, b, y_qp = _lin_args(rng)
    lin = _spy_init(monkeypatch, QLinear)
    conv = _spy_init(monkeypatch, QConv2d)
    y = qlinear(x, x_qp, w, w_qp, b, y_qp, mode="onnx", activation="relu")
    acc = linear_accumulate(x, 10, w, 0, b)
    assert lin == ["QLinear", "QLinear"] and conv == []
    layer = QLinear(w, w_qp, b, x_qp, y_qp, mode="onnx", activation="relu")
    np.testing.assert_array_equal(layer(x), y)
    np.testing.assert_array_equal(layer.accumulate(x), acc)
    xc, wc = x.reshape(4, 5, 1, 1), w.reshape(3, 5, 1, 1)
    yc = qconv2d(xc, x_qp, wc, w_qp, b, y_qp, mode="onnx", activation="relu")
    accc = conv2d_accumulate(xc, 10, wc, 0, b)
    assert conv == ["QConv2d", "QConv2d"] and len(lin) == 3
    np.testing.assert_array_equal(yc[:, :, 0, 0], y)
    np.testing.assert_array_equal(accc[:, :, 0, 0], acc)


def test_a_layer_without_y_qp_only_accumulates():
    rng = np.random.default_rng(4)
    x, x_qp, w, w_qp, b, y_qp = _lin_args(rng)
    layer = QLinear(w, w_qp, b, x_qp, None)
    np.testing.assert_array_equal(layer.accumulate(x), QLinear(w, w_qp, b, x_qp, y_qp).accumulate(x))
    assert layer.multiplier is None and layer.out_range is None
    with pytest.raises(ValueError, match="y_qp=None: it only accumulates"):
        layer(x)
    conv = QConv2d(w.reshape(3, 5, 1, 1), w_qp, b, x_qp, None)
    with pytest.raises(ValueError, match="y_qp=None"):
        conv(x.reshape(4, 5, 1, 1))


def test_old_paths_of_moved_names():
    """``npquant.qnn.layers`` re-exports the linear and conv layer classes; the names that
    left ``npquant.qnn.gemm`` are found there for one release, with a warning."""
    import npquant.qnn.bias as bias_mod
    import npquant.qnn.conv as conv_mod
    import npquant.qnn.gemm as gemm_mod
    import npquant.qnn.layers as layers_mod
    import npquant.qnn.linear as linear_mod

    assert layers_mod.QLinear is linear_mod.QLinear and layers_mod.QConv2d is conv_mod.QConv2d
    for name, mod in (
        ("qlinear", linear_mod),
        ("linear_accumulate", linear_mod),
        ("qmatmul", linear_mod),
        ("quantize_bias", bias_mod),
        ("BIAS_METHODS", bias_mod),
    ):
        with pytest.warns(DeprecationWarning, match=f"npquant.qnn.gemm.{name} moved to npquant.qnn"):
            assert getattr(gemm_mod, name) is getattr(mod, name)
    with pytest.raises(AttributeError, match="no attribute 'qconv2d'"):
        gemm_mod.qconv2d


def test_layer_modes():
    from npquant.qnn import LAYER_REQUANT_MODES
    from npquant.requant.modes import REQUANT_MODES

    assert LAYER_REQUANT_MODES == REQUANT_MODES + ("fbgemm",)
    rng = np.random.default_rng(6)
    x, x_qp, w, w_qp, b, y_qp = _lin_args(rng)
    with pytest.raises(ValueError, match="mode must be one of"):
        QLinear(w, w_qp, b, x_qp, y_qp, mode="fbgemm_fp32")
