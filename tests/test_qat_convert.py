"""QAT then convert (npquant.training.convert_qat): prepare_qat's structure and contract,
a short QAT fine-tune of the reference models, and the integer model convert_qat builds,
compared with the fake-quantized model it comes from.

Measured (JIT pass, this file's settings: 3 epochs of Adam at lr 1e-4, batch 32, seed 0,
from the trained reference weights), argmax agreement of the integer model with the
fake-quantized model on the 450 test images:

=====================  =======  =============  =======  =======
W8A8 minmax            tflite   tflite_single  fp32     onnx
=====================  =======  =============  =======  =======
mlp                    450/450  450/450        450/450  450/450
lenet_300_100          450/450  450/450        450/450  450/450
cnn                    450/450  450/450        450/450  450/450
=====================  =======  =============  =======  =======

(W8A8 with lsq and pact ranges: 450/450 everywhere too.) Logits: every element within
one output step of the fake-quantized logits; equal on 97-99.8% of the elements (the
double-rounding ``tflite`` mode lowest). W4A8: 449-450/450; W4A4: 447-450/450 (the slow
tests below).
"""

import numpy as np
import pytest

from npquant.affine import dequantize
from npquant.app.demo import default_models_dir
from npquant.models import nn
from npquant.models.convert import IntegerModel, quantize_model
from npquant.models.io import load_model, load_reference
from npquant.qnn import layers as ql
from npquant.qparams import QuantSpec
from npquant.requant.modes import REQUANT_MODES
from npquant.training import Adam, fit
from npquant.training.convert_qat import INPUT_FAKE_QUANT, convert_qat, freeze_bn, freeze_observers, prepare_qat
from npquant.training.fake_quant import FakeQuantize, LSQFakeQuantize, PACTFakeQuantize
from npquant.training.qat import QATConv2d, QATConvBn2d, QATLinear
from npquant.training.trainer import digits_data

MODELS = ("mlp", "lenet_300_100", "cnn")
QAT_LAYERS = (QATLinear, QATConv2d, QATConvBn2d)


def _reference(name):
    path = default_models_dir() / f"{name}.npz"
    return load_model(path), digits_data(load_reference(path).arch)


@pytest.fixture(scope="module", params=MODELS)
def reference(request):
    model, data = _reference(request.param)
    return request.param, model, data


def _observe(qat, x):
    """Set the ranges of a fresh QAT model with one training-mode forward pass (batch
    norm frozen, so its running statistics stay those of the trained model)."""
    freeze_bn(qat)
    qat.train()
    qat(x)
    qat.eval()
    freeze_bn(qat, False)
    return qat


def _compare(qat, im, x):
    """(argmax agreement, fraction of logits within one output step, fraction equal)."""
    fq = qat(x)
    li = im(x)
    steps = np.abs(li.astype(np.float64) - fq) / float(im.output_qp.scale)
    return (li.argmax(1) == fq.argmax(1)).mean(), np.mean(steps <= 1 + 1e-4), np.mean(steps <= 0.5)


# ---- prepare_qat --------------------------------------------------------------------


def test_prepare_qat_structure(reference):
    name, model, _ = reference
    qat = prepare_qat(model)
    assert isinstance(qat, nn.Sequential) and not qat.training
    kinds = [type(layer).__name__ for layer in qat]
    expected = {
        "mlp": ["FakeQuantize", "QATLinear", "QATLinear", "QATLinear"],
        "lenet_300_100": ["FakeQuantize", "QATLinear", "QATLinear", "QATLinear"],
        "cnn": ["FakeQuantize", "QATConvBn2d", "MaxPool2d", "QATConvBn2d", "MaxPool2d", "Flatten", "QATLinear"],
    }[name]
    assert kinds == expected
    assert qat[0].name == INPUT_FAKE_QUANT and qat[0].spec == QuantSpec(bits=8, signed=False)
    weighted = [layer for layer in qat if isinstance(layer, QAT_LAYERS)]
    # ReLUs fused into the layer before them, the logits layer without an activation
    assert [layer.activation for layer in weighted] == ["relu"] * (len(weighted) - 1) + [None]
    for layer in weighted:
        assert layer.weight_fake_quant.spec == QuantSpec(bits=8, signed=True, symmetric=True, axis=0)
        assert layer.act_fake_quant.spec == QuantSpec(bits=8, signed=False)
        assert layer.weight_fake_quant.reset_observer  # follows the current weights

    # the float model's state-dict keys and values; a batch norm fused with its conv is
    # under "<conv>.bn." (as in PyTorch's fused ConvBn2d)
    def key(k):
        return {"bn1": "conv1.bn", "bn2": "conv2.bn"}.get(k.split(".")[0], k.split(".")[0]) + "." + k.split(".", 1)[1]

    sd, fsd = qat.state_dict(), model.state_dict()
    assert set(sd) == {key(k) for k in fsd}
    for k, value in fsd.items():
        np.testing.assert_array_equal(sd[key(k)], value)
    assert set(qat.named_parameters()) == {key(k) for k in model.named_parameters()}


def test_prepare_qat_copies_and_follows_the_training_contract():
    model, data = _reference("cnn")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    qat = prepare_qat(model)
    fparams = list(model.named_parameters().values())
    for arr in qat.named_parameters().values():
        assert not any(np.shares_memory(arr, f) for f in fparams)
    x, y = data["x_train"][:16], data["y_train"][:16]
    qat.train()
    logits = qat(x)
    assert logits.shape == (16, 10) and logits.dtype == np.float32
    qat.zero_grad()
    g = np.zeros_like(logits)
    g[np.arange(16), y] = -1 / 16
    gx = qat.backward(g)
    assert gx.shape == x.shape
    grads, params = qat.named_grads(), qat.named_parameters()
    assert set(grads) == set(params)
    assert all(grads[k].shape == params[k].shape for k in params)
    assert any(np.any(grads[k] != 0) for k in grads)
    Adam(params, lr=1e-2).step(grads)
    assert any(np.any(qat.state_dict()[k] != before[k]) for k in params)  # the QAT model moved
    for k, v in model.state_dict().items():  # the float model did not
        np.testing.assert_array_equal(v, before[k])


def test_eval_is_deterministic_with_frozen_observers():
    model, data = _reference("mlp")
    qat = _observe(prepare_qat(model), data["x_calibration"][:64])
    qps = [layer.act_fake_quant.qparams for layer in qat if isinstance(layer, QAT_LAYERS)]
    x = data["x_test"][:32]
    a = qat(x)
    np.testing.assert_array_equal(a, qat(x))
    freeze_observers(qat)
    qat.train()
    qat(data["x_train"][:64] * 3)  # would move every moving-average range
    qat.eval()
    assert [layer.act_fake_quant.qparams for layer in qat if isinstance(layer, QAT_LAYERS)] == qps
    np.testing.assert_array_equal(qat(x), a)
    freeze_observers(qat, False)
    qat.train()
    qat(data["x_train"][:64] * 3)
    qat.eval()
    assert qat[-1].act_fake_quant.qparams != qps[-1]


def test_prepare_qat_range_methods_and_options():
    model, _ = _reference("cnn")
    lsq = prepare_qat(model, ranges="lsq", weight_bits=4, act_bits=4)
    assert isinstance(lsq[0], LSQFakeQuantize)
    for layer in lsq:
        if isinstance(layer, QAT_LAYERS):
            assert isinstance(layer.weight_fake_quant, LSQFakeQuantize)
            assert layer.weight_fake_quant.spec.bits == 4 and layer.weight_fake_quant.spec.axis == 0
            assert isinstance(layer.act_fake_quant, LSQFakeQuantize) and layer.act_fake_quant.spec.bits == 4
    keys = set(lsq.named_parameters())
    assert {
        "input_fake_quant.scale",
        "input_fake_quant.zero_point",
        "conv1.weight_fake_quant.scale",
        "conv1.act_fake_quant.scale",
        "fc.act_fake_quant.zero_point",
    } <= keys
    pact = prepare_qat(model, ranges="pact", pact_alpha=4.0)
    # PACT replaces the fused ReLUs; the input and the logits keep moving-average min-max
    assert isinstance(pact[0], FakeQuantize)
    assert isinstance(pact[1].act_fake_quant, PACTFakeQuantize) and float(pact[1].act_fake_quant.alpha) == 4.0
    assert isinstance(pact[-1].act_fake_quant, FakeQuantize)
    assert "conv1.act_fake_quant.alpha" in pact.named_parameters()
    pt = prepare_qat(model, per_channel=False, narrow_range=True, freeze_bn=True, input_bits=6)
    assert pt[1].weight_fake_quant.spec == QuantSpec(bits=8, symmetric=True, narrow_range=True)
    assert pt[1].bn_frozen and pt[0].spec.bits == 6


# ---- convert_qat --------------------------------------------------------------------


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_convert_agrees_with_the_fake_quantized_model(reference, mode):
    # Ranges from one observed batch (the fine-tuned models: the slow tests below).
    name, model, data = reference
    qat = _observe(prepare_qat(model), data["x_calibration"][:128])
    im = convert_qat(qat, mode=mode)
    x = data["x_test"][:40]
    agree, within, equal = _compare(qat, im, x)
    assert agree >= 39 / 40
    assert within >= 0.99 and equal >= 0.8
    # the input codes are the input fake quant's
    np.testing.assert_array_equal(dequantize(im.quantize_input(x), im.input_qp), qat[0](x))


def test_integer_model_is_integer_only_and_on_the_fake_quant_grid():
    model, data = _reference("cnn")
    qat = _observe(prepare_qat(model), data["x_calibration"][:128])
    im = convert_qat(qat, mode="tflite")
    assert isinstance(im, IntegerModel)
    assert [type(layer) for layer in im.layers] == [
        ql.QConv2d,
        ql.MaxPool2d,
        ql.QConv2d,
        ql.MaxPool2d,
        ql.Flatten,
        ql.QLinear,
    ]
    weighted = [layer for layer in qat if isinstance(layer, QAT_LAYERS)]
    qlayers = [layer for layer in im.layers if isinstance(layer, (ql.QLinear, ql.QConv2d))]
    for q, f in zip(qlayers, weighted):
        assert q.w_q.dtype == np.int8 and q.bias_q.dtype == np.int32
        w = f.folded_conv().weight if isinstance(f, QATConvBn2d) else f.fake_quantized_weight()
        np.testing.assert_array_equal(dequantize(q.w_q, q.w_qp), w)  # bit for bit
        wqp = f.weight_fake_quant.qparams
        assert q.w_qp.spec == wqp.spec
        np.testing.assert_array_equal(q.w_qp.scale, wqp.scale)
        np.testing.assert_array_equal(q.w_qp.zero_point, wqp.zero_point)
        assert q.y_qp == f.act_fake_quant.qparams and q.activation == f.activation
    # codes in, codes out at every layer
    h = im.quantize_input(data["x_test"][:8])
    assert h.dtype == np.uint8
    for layer in im.layers:
        h = layer(h)
        assert h.dtype.kind in "iu"
    assert h.dtype == np.uint8 and h.shape == (8, 10)


@pytest.mark.parametrize("bits", [(4, 4), (4, 8), (8, 3)], ids=["W4A4", "W4A8", "W8A3"])
def test_low_bit_activations_are_clamped_to_their_grid(bits):
    wb, ab = bits
    model, data = _reference("cnn")
    qat = _observe(prepare_qat(model, weight_bits=wb, act_bits=ab), data["x_calibration"][:128])
    im = convert_qat(qat, mode="tflite_single")
    for layer in im.layers:
        if isinstance(layer, (ql.QLinear, ql.QConv2d)):
            assert layer.w_q.min() >= -(1 << (wb - 1)) and layer.w_q.max() <= (1 << (wb - 1)) - 1
            assert layer.y_qp.spec.qmax == (1 << ab) - 1 and layer.out_range[1] <= (1 << ab) - 1
    h = im.quantize_input(data["x_test"][:40])
    for layer in im.layers:
        h = layer(h)
        if isinstance(layer, (ql.QLinear, ql.QConv2d)):
            assert h.max() <= (1 << ab) - 1
    agree, within, _ = _compare(qat, im, data["x_test"][:40])
    assert agree >= 39 / 40 and within >= 0.99


def _toy_model(rng):
    conv1 = nn.Conv2d(
        rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * 0.5,
        rng.normal(size=4).astype(np.float32) * 0.1,
        padding=1,
        name="conv1",
    )
    conv2 = nn.Conv2d(rng.normal(size=(6, 4, 3, 3)).astype(np.float32) * 0.3, None, padding=1, name="conv2")
    fc = nn.Linear(rng.normal(size=(5, 24)).astype(np.float32) * 0.3, rng.normal(size=5).astype(np.float32), name="fc")
    return nn.Sequential(
        [
            conv1,
            nn.ReLU6(),
            nn.MaxPool2d(2),
            conv2,
            nn.AvgPool2d(2, count_include_pad=False),
            nn.ReLU(),
            nn.Flatten(),
            fc,
        ]
    )


@pytest.mark.parametrize("ranges", ["minmax", "lsq", "pact"])
def test_conv_without_bn_relu6_avgpool_and_a_standalone_relu(ranges):
    rng = np.random.default_rng(1301)
    model = _toy_model(rng)
    qat = prepare_qat(model, ranges=ranges, per_channel=ranges != "lsq", pact_alpha=3.0)
    assert [type(layer).__name__ for layer in qat] == [
        "FakeQuantize" if ranges != "lsq" else "LSQFakeQuantize",
        "QATConv2d",
        "MaxPool2d",
        "QATConv2d",
        "AvgPool2d",
        "ReLU",
        "Flatten",
        "QATLinear",
    ]
    assert qat[1].activation == "relu6" and qat[3].activation is None
    x = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    _observe(qat, x)
    x = x[:24]
    for mode in REQUANT_MODES:
        im = convert_qat(qat, mode=mode)
        assert [type(layer) for layer in im.layers] == [
            ql.QConv2d,
            ql.MaxPool2d,
            ql.QConv2d,
            ql.AvgPool2d,
            ql.QReLU,
            ql.Flatten,
            ql.QLinear,
        ]
        agree, within, _ = _compare(qat, im, x)
        # the float average pool of the QAT model is off the grid the integer pool rounds to
        assert agree >= 0.95 and within >= 0.9


def test_quantize_model_takes_given_qparams():
    model, data = _reference("mlp")
    calib = data["x_calibration"]
    ptq = quantize_model(model, calib)
    given = {"input": ptq.input_qp}
    for layer, name in zip([q for q in ptq.layers if isinstance(q, ql.QLinear)], ["fc1", "fc2", "fc3"]):
        given[name], given[f"{name}.weight"] = layer.y_qp, layer.w_qp
    same = quantize_model(model, None, qparams=given)
    x = data["x_test"][:50]
    np.testing.assert_array_equal(same.run(same.quantize_input(x)), ptq.run(ptq.quantize_input(x)))
    part = quantize_model(model, calib, qparams={"fc2": given["fc2"]})  # the rest calibrated
    np.testing.assert_array_equal(part.run(part.quantize_input(x)), ptq.run(ptq.quantize_input(x)))
    with pytest.raises(ValueError, match="qparams has key 'fc9'"):
        quantize_model(model, calib, qparams={"fc9": given["fc1"]})
    with pytest.raises(TypeError, match=r"qparams\['fc1'\] must be a QParams"):
        quantize_model(model, calib, qparams={"fc1": 0.1})
    with pytest.raises(ValueError, match="per-tensor"):
        quantize_model(model, calib, qparams={"fc1": given["fc1.weight"]})


# ---- bad input ----------------------------------------------------------------------


def test_bad_input_errors():
    model, data = _reference("mlp")
    with pytest.raises(TypeError, match="model must be an npquant.models.nn.Sequential"):
        prepare_qat(list(model))
    for kw, match in [
        (dict(weight_bits=1), "weight_bits"),
        (dict(weight_bits=9), "weight_bits"),
        (dict(act_bits=0), "act_bits"),
        (dict(act_bits=16), "act_bits"),
        (dict(input_bits=9), "input_bits"),
        (dict(ranges="ema"), "ranges"),
        (dict(averaging_constant=0.0), "averaging_constant"),
        (dict(pact_alpha=-1.0), "pact_alpha"),
        (dict(lsq_init="zeros"), "lsq_init"),
    ]:
        with pytest.raises(ValueError, match=match):
            prepare_qat(model, **kw)
    with pytest.raises(TypeError, match="weight_bits"):
        prepare_qat(model, weight_bits=4.0)
    rng = np.random.default_rng(0)
    odd = nn.Sequential([model[0], nn.Residual(nn.Sequential([nn.ReLU()]), name="res"), model[2]])
    with pytest.raises(ValueError, match=r"layers\[1\] \('res'\): type Residual; supported"):
        prepare_qat(odd)
    bn = nn.BatchNorm2d(np.ones(1), np.zeros(1), np.zeros(1), np.ones(1), name="bn")
    with pytest.raises(ValueError, match="BatchNorm2d not right after a Conv2d"):
        prepare_qat(nn.Sequential([bn, nn.Flatten(), nn.Linear(rng.normal(size=(2, 4)).astype(np.float32))]))
    with pytest.raises(ValueError, match="input_fake_quant"):
        prepare_qat(nn.Sequential([nn.Linear(np.ones((2, 2), np.float32), name=INPUT_FAKE_QUANT)]))
    # convert: ranges not set yet, a foreign model, bad modes
    qat = prepare_qat(model)
    with pytest.raises(ValueError, match="no qparams yet"):
        convert_qat(qat)
    with pytest.raises(ValueError, match="no qparams yet"):
        convert_qat(prepare_qat(model, ranges="lsq"))
    _observe(qat, data["x_calibration"][:32])
    with pytest.raises(ValueError, match="mode must be one of"):
        convert_qat(qat, mode="tflite2")
    with pytest.raises(ValueError, match="accumulation"):
        convert_qat(qat, accumulation="int16")
    with pytest.raises(TypeError, match="qat_model must be an npquant.models.nn.Sequential"):
        convert_qat(list(qat))
    with pytest.raises(ValueError, match="must start with the input fake quant"):
        convert_qat(nn.Sequential(list(qat)[1:]))
    with pytest.raises(ValueError, match=r"convert_qat cannot convert layers\[2\]"):
        convert_qat(nn.Sequential([qat[0], qat[1], model[0]]))
    qat[1].act_fake_quant.disable_fake_quant()
    with pytest.raises(ValueError, match="fake quantization disabled"):
        convert_qat(qat)


# ---- QAT fine-tune of the reference models, then convert (slow: the whole test set) ----


def _finetune(model, data, **kw):
    qat = prepare_qat(model, **kw)
    fit(
        qat,
        None,
        Adam(qat.named_parameters(), lr=1e-4),
        data["x_train"],
        data["y_train"],
        epochs=3,
        batch_size=32,
        seed=0,
        progress=False,
    )
    return qat


@pytest.fixture(scope="module")
def finetuned(reference):
    name, model, data = reference
    return name, model, data, _finetune(model, data)


@pytest.mark.slow
def test_qat_finetune_keeps_accuracy(finetuned):
    # Measured test accuracy, float -> W8A8 QAT: mlp 97.11 -> 97.33, lenet_300_100 97.78 ->
    # 97.78, cnn 98.44 -> 98.67 (%).
    name, model, data, qat = finetuned
    x, y = data["x_test"], data["y_test"]
    acc_float = (model(x).argmax(1) == y).mean()
    acc_qat = (qat(x).argmax(1) == y).mean()
    assert acc_qat >= acc_float - 0.003  # the aim: within 0.3 points of float


@pytest.mark.slow
@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_finetuned_w8a8_integer_model_agrees_on_the_test_set(finetuned, mode):
    # Measured: 450/450 for every model and mode (module docstring).
    name, model, data, qat = finetuned
    im = convert_qat(qat, mode=mode)
    agree, within, equal = _compare(qat, im, data["x_test"])
    assert agree >= 0.995
    assert within >= 0.999 and equal >= 0.95
    y = data["y_test"]
    assert abs((im(data["x_test"]).argmax(1) == y).mean() - (qat(data["x_test"]).argmax(1) == y).mean()) <= 0.005


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [(4, 8, "minmax"), (4, 4, "minmax"), (4, 4, "lsq"), (4, 4, "pact"), (8, 8, "lsq"), (8, 8, "pact")],
    ids=["W4A8-minmax", "W4A4-minmax", "W4A4-lsq", "W4A4-pact", "W8A8-lsq", "W8A8-pact"],
)
def test_finetuned_low_bit_and_learned_ranges_agree(reference, config):
    # Measured agreement: W8A8 lsq/pact 450/450; W4A8 450/450; W4A4 447-450/450 (tflite
    # lowest: the double rounding moves more 4-bit codes than the single-rounding modes).
    wb, ab, ranges = config
    name, model, data = reference
    qat = _finetune(model, data, weight_bits=wb, act_bits=ab, ranges=ranges)
    for mode in REQUANT_MODES:
        agree, within, _ = _compare(qat, convert_qat(qat, mode=mode), data["x_test"])
        assert agree >= (0.995 if ab == 8 else 0.99), (mode, agree)
        assert within >= 0.995, (mode, within)
