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
    model = [QConv2d(wc_q, wc_qp, None, x_qp, h_qp, padding=1, activation="relu"),
             MaxPool2d(2), Flatten(), QLinear(wl_q, wl_qp, None, h_qp, y_qp)]
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
