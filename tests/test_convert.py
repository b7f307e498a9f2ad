import numpy as np
import pytest

from npquant.models import nn, sklearn_mlp
from npquant.models.convert import (
    IntegerModel,
    dynamic_quantize,
    dynamic_size_bytes,
    float_size_bytes,
    fold_batchnorm,
    quantize_model,
    weight_only_quantize,
)
from npquant.requant.modes import REQUANT_MODES


@pytest.fixture(scope="module")
def mlp():
    clf, data = sklearn_mlp.train_mlp((64, 32), max_iter=300)
    arch = {
        "layers": [
            {"type": "linear", "name": "fc1"},
            {"type": "relu"},
            {"type": "linear", "name": "fc2"},
            {"type": "relu"},
            {"type": "linear", "name": "fc3"},
        ]
    }
    model = nn.build_model(arch, sklearn_mlp.state_dict(clf))
    X_tr, X_te, y_tr, y_te = (np.asarray(a, np.float32) if a.dtype.kind == "f" else a for a in data)
    return model, X_tr, X_te, y_te


def _cnn(rng):
    conv1 = nn.Conv2d(
        rng.normal(size=(6, 1, 3, 3)).astype(np.float32) * 0.5,
        rng.normal(size=6).astype(np.float32) * 0.1,
        padding=1,
        name="conv1",
    )
    bn1 = nn.BatchNorm2d(
        rng.uniform(0.5, 1.5, 6),
        rng.normal(size=6) * 0.1,
        rng.normal(size=6) * 0.1,
        rng.uniform(0.5, 2.0, 6),
        name="bn1",
    )
    conv2 = nn.Conv2d(rng.normal(size=(8, 6, 3, 3)).astype(np.float32) * 0.3, None, stride=1, padding=1, name="conv2")
    fc = nn.Linear(
        rng.normal(size=(10, 32)).astype(np.float32) * 0.2, rng.normal(size=10).astype(np.float32), name="fc"
    )
    return nn.Sequential([conv1, bn1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU6(), nn.AvgPool2d(2), nn.Flatten(), fc])


def test_fold_batchnorm_equals_conv_then_bn():
    rng = np.random.default_rng(0)
    model = _cnn(rng)
    x = rng.uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    folded = fold_batchnorm(model)
    assert len(folded) == len(model) - 1 and not any(isinstance(m, nn.BatchNorm2d) for m in folded)
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


# Model-level tests run whole test sets through the kernels: in the JIT pass only (slow);
# the kernels themselves are checked against their twins with the JIT off elsewhere.
@pytest.mark.slow
@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_ptq_mlp_accuracy_within_half_a_point(mlp, mode):
    model, X_tr, X_te, y_te = mlp
    q = quantize_model(model, X_tr[:300], mode=mode)
    codes = q.run(q.quantize_input(X_te))
    assert codes.dtype == np.uint8 and codes.shape == (len(y_te), 10)
    acc_f = (model(X_te).argmax(1) == y_te).mean()
    acc_q = (q(X_te).argmax(1) == y_te).mean()
    assert acc_q >= acc_f - 0.005
    twin = q.float_twin(X_te).argmax(1)
    assert (twin == q(X_te).argmax(1)).mean() >= 0.99
    assert q.size_bytes() < float_size_bytes(model) / 3


@pytest.mark.slow
def test_ptq_cnn_runs_integer_only_and_matches_its_twin():
    rng = np.random.default_rng(1)
    model = _cnn(rng)
    x = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    for observer in ("minmax", "percentile", "mse"):
        q = quantize_model(model, x[:32], observer=observer, mode="tflite")
        assert isinstance(q, IntegerModel)
        out = q.run(q.quantize_input(x))
        assert out.dtype == np.uint8
        # the twin rounds in float where the integer model rounds in fixed point: within 1 LSB
        twin = q.float_twin(x)
        lsb = float(q.output_qp.scale)
        assert np.max(np.abs(q(x) - twin)) <= 1.01 * lsb
        assert np.mean(np.abs(q(x) - model(x))) < 0.1 * np.std(model(x))


@pytest.mark.slow
def test_dynamic_and_weight_only(mlp):
    model, X_tr, X_te, y_te = mlp
    acc_f = (model(X_te).argmax(1) == y_te).mean()
    d = dynamic_quantize(model)
    assert (d(X_te).argmax(1) == y_te).mean() >= acc_f - 0.01
    # int8 codes + one float32 scale per output channel + float32 biases
    weights = [lay for lay in model if hasattr(lay, "weight")]
    assert dynamic_size_bytes(d) == sum(w.weight.size + 4 * w.weight.shape[0] + 4 * w.bias.size for w in weights)
    sizes = {}
    for b in (8, 4, 2):
        w, sizes[b] = weight_only_quantize(model, b)
        acc = (w(X_te).argmax(1) == y_te).mean()
        if b == 8:
            assert acc >= acc_f - 0.005
    assert sizes[8] > sizes[4] > sizes[2]
    g, gsize = weight_only_quantize(model, 4, group_size=16)
    assert gsize > sizes[4]  # more scales
    assert (g(X_te).argmax(1) == y_te).mean() > 0.9


def test_errors():
    # Argument errors need no trained model (the mlp fixture trains for seconds): a small random MLP.
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        [
            nn.Linear(rng.normal(size=(16, 8)).astype(np.float32), np.zeros(16, np.float32), name="fc1"),
            nn.ReLU(),
            nn.Linear(rng.normal(size=(4, 16)).astype(np.float32), np.zeros(4, np.float32), name="fc2"),
        ]
    )
    X_tr = rng.uniform(0, 1, (32, 8)).astype(np.float32)
    quantize_model(model, X_tr)  # the arguments the errors below change one at a time are valid
    with pytest.raises(ValueError, match="mode must be one of"):
        quantize_model(model, X_tr, mode="tf")
    with pytest.raises(ValueError, match="observer must be one of"):
        quantize_model(model, X_tr, observer="max")
    with pytest.raises(ValueError, match="calib_x is empty"):
        quantize_model(model, X_tr[:0])
    bad = X_tr[:10].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="calib_x contains NaN"):
        quantize_model(model, bad)
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_model(model, X_tr, weight_bits=1)


def test_quantize_model_accumulation_reaches_every_layer():
    rng = np.random.default_rng(4)
    model = _cnn(rng)
    calib = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    x = rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    exact = quantize_model(model, calib, mode="fp32")
    pairs = quantize_model(model, calib, mode="fp32", accumulation="int16_pairs")
    weighted = [la for la in pairs.layers if hasattr(la, "saturates_pairs")]
    assert len(weighted) == 3 and all(la.saturates_pairs and la.accumulation == "int16_pairs" for la in weighted)
    assert not any(la.saturates_pairs for la in exact.layers if hasattr(la, "saturates_pairs"))
    from npquant.qnn.conv import conv2d_accumulate

    conv = weighted[0]  # the layer object runs the same pair product as the function
    h = pairs.quantize_input(x)
    g = conv.geometry
    want = conv2d_accumulate(
        h,
        conv.x_qp,
        conv.w_q,
        conv.w_qp,
        conv.bias_q,
        stride=g.stride,
        padding=g.padding,
        dilation=g.dilation,
        groups=g.groups,
        accumulation="int16_pairs",
        backend="numpy",
    )
    np.testing.assert_array_equal(conv.accumulate(h), want)
    assert pairs(x).shape == exact(x).shape
    with pytest.raises(ValueError, match="uint8 activation"):
        quantize_model(model, calib, activation_signed=True, accumulation="int16_pairs")
    with pytest.raises(ValueError, match="accumulation"):
        quantize_model(model, calib, accumulation="pairs")


# ---- pooling options that the float model has and the integer model must keep ----------


def _pool_model(pool):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)
    return nn.Sequential([nn.Conv2d(w, np.zeros(4, np.float32), padding=1, name="conv"), nn.ReLU(), pool, nn.Flatten()])


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("mode", ["tflite", "onnx"])
def test_quantize_model_keeps_count_include_pad(include_pad, mode):
    # AvgPool2d(3, 2, 1): a corner window holds 4 real inputs and 5 padded ones; counting the
    # padding divides by 9 instead of 4 (the bug: the integer model always divided by 4)
    model = _pool_model(nn.AvgPool2d(3, 2, 1, count_include_pad=include_pad))
    x = np.random.default_rng(4).uniform(0, 1, (16, 2, 8, 8)).astype(np.float32)
    q = quantize_model(model, x, mode=mode)
    pool = [layer for layer in q.layers if type(layer).__name__ == "AvgPool2d"][0]
    assert pool.count_include_pad is include_pad
    y, yf = q(x), model(x)
    step = float(q.layers[0].y_qp.scale)
    assert np.max(np.abs(y - yf)) <= 2 * step  # within the grid, corners included
    # the twin pools as the integer model, in float: within the pool's rounding (half a step)
    # plus a conv code one off from requantization rounding (a quarter of a step after /4)
    assert np.max(np.abs(q.float_twin(x) - y)) <= step + 1e-6


@pytest.mark.parametrize(
    "spec, what",
    [
        (
            {
                "type": "maxpool2d",
                "name": "p",
                "kernel_size": [2, 2],
                "stride": [2, 2],
                "padding": [0, 0],
                "dilation": [2, 2],
                "ceil_mode": False,
            },
            "dilation",
        ),
        (
            {
                "type": "maxpool2d",
                "name": "p",
                "kernel_size": [2, 2],
                "stride": [2, 2],
                "padding": [0, 0],
                "dilation": [1, 1],
                "ceil_mode": True,
            },
            "ceil_mode",
        ),
        (
            {
                "type": "avgpool2d",
                "name": "p",
                "kernel_size": [2, 2],
                "stride": [2, 2],
                "padding": [0, 0],
                "ceil_mode": True,
            },
            "ceil_mode",
        ),
        ({"type": "avgpool2d", "name": "p", "kernel_size": [2, 2], "divisor_override": 3}, "divisor_override"),
    ],
)
def test_build_model_refuses_pool_options_it_would_drop(spec, what):
    arch = {"name": "m", "input_shape": [1, 8, 8], "layers": [spec]}
    with pytest.raises(ValueError, match=f"'p'.*{what}"):
        nn.build_model(arch, {})
    plain = dict(spec, **{what: {"dilation": [1, 1], "ceil_mode": False, "divisor_override": None}[what]})
    nn.build_model(dict(arch, layers=[plain]), {})  # the default value is accepted
