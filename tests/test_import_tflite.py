"""npquant.importers.tflite against LiteRT's interpreter, tensor by tensor.

TensorFlow's converter is not installed, so each model is written here as the converter
writes int8 models (tests/tflite_builder.py): int8 activations with zero points, int8
symmetric per-channel weights, int32 biases at scale S_x S_w, CONCATENATION inputs with
the output's qparams, a Keras-style flatten as RESHAPE. Each runs in LiteRT (ai-edge-litert
2.3.0) with the reference kernels (OpResolverType.BUILTIN_REF) and every tensor it holds
is compared with npquant's graph, exactly. The optimized kernels (BUILTIN and AUTO, with
LiteRT's default XNNPACK delegate, and BUILTIN_WITHOUT_DEFAULT_DELEGATES) are compared op
by op, and the operators that match them are asserted (OPTIMIZED_MATCHES).
"""

import numpy as np
import pytest

pytest.importorskip("tflite")

from tflite_builder import TFLiteBuilder, act_qparams, bias, weights

from npquant.importers import tflite as imp
from npquant.models.io import FileFormatError

# ---- the models --------------------------------------------------------------------------


class _Maker:
    """Tensors with qparams and shapes, and layers with the converter's constants. Output
    scales come from the expected spread of the accumulator, so codes use the range."""

    def __init__(self, seed):
        self.b = TFLiteBuilder()
        self.rng = np.random.default_rng(seed)
        self.q = {}
        self.shape = {}

    def act(self, name, shape, scale, zp, dtype="int8"):
        i = self.b.tensor(
            name,
            shape,
            dtype,
            scale=None if dtype == "float32" else scale,
            zero_point=None if dtype == "float32" else zp,
        )
        self.q[i], self.shape[i] = (np.float32(scale), zp), tuple(shape)
        return i

    def out_scale(self, x, k, s_w, spread=35.0):
        return np.float32(self.q[x][0] * float(np.mean(s_w)) * 45 * 50 * np.sqrt(k) / spread)

    def conv(self, x, cout, k, stride, padding, act=None, name="conv", out_q=None, depthwise_mult=None, dil=1):
        n, h, w, c = self.shape[x]
        if depthwise_mult:
            cout = c * depthwise_mult
            wq, sw = weights(self.rng, (1, k, k, cout), 3)
            kk = k * k
        else:
            wq, sw = weights(self.rng, (cout, k, k, c), 0)
            kk = k * k * c
        sx = self.q[x][0]
        bq, bs = bias(self.rng, cout, sx, sw, 40 * 50 * np.sqrt(kk) / 4)
        eff = (k - 1) * dil + 1
        oh, ow = (
            ((h + stride - 1) // stride, (w + stride - 1) // stride)
            if padding == "same"
            else ((h - eff) // stride + 1, (w - eff) // stride + 1)
        )
        sy, zy = out_q or (self.out_scale(x, kk, sw), -100 if act else 3)
        wi = self.b.tensor(
            f"{name}/w", wq.shape, scale=sw, zero_point=np.zeros(cout, int), axis=3 if depthwise_mult else 0, data=wq
        )
        bi = self.b.tensor(f"{name}/b", (cout,), "int32", scale=bs, zero_point=np.zeros(cout, int), data=bq)
        y = self.act(name, (n, oh, ow, cout), sy, zy)
        if depthwise_mult:
            self.b.op(
                "DEPTHWISE_CONV_2D",
                [x, wi, bi],
                [y],
                "DepthwiseConv2DOptions",
                Padding=padding,
                StrideW=stride,
                StrideH=stride,
                DepthMultiplier=depthwise_mult,
                activation=act,
                DilationWFactor=dil,
                DilationHFactor=dil,
            )
        else:
            self.b.op(
                "CONV_2D",
                [x, wi, bi],
                [y],
                "Conv2DOptions",
                Padding=padding,
                StrideW=stride,
                StrideH=stride,
                activation=act,
                DilationWFactor=dil,
                DilationHFactor=dil,
            )
        return y

    def fc(self, x, o, act=None, per_channel=True, name="fc"):
        k = self.shape[x][-1]
        wq, sw = weights(self.rng, (o, k), 0)
        if not per_channel:  # the converter's default for FULLY_CONNECTED: one scale
            wf = wq.astype(np.float32) * sw[:, None]
            sw = np.float32(np.abs(wf).max() / 127)
            wq = np.clip(np.round(wf / sw), -127, 127).astype(np.int8)
        sx = self.q[x][0]
        bq, bs = bias(self.rng, o, sx, sw, 40 * 50 * np.sqrt(k) / 4)
        sy, zy = self.out_scale(x, k, sw), -100 if act else 7
        nz = np.zeros(np.size(sw), int)
        wi = self.b.tensor(f"{name}/w", wq.shape, scale=sw, zero_point=nz, data=wq)
        bi = self.b.tensor(f"{name}/b", (o,), "int32", scale=bs, zero_point=nz, data=bq)
        y = self.act(name, (self.shape[x][0], o), sy, zy)
        self.b.op("FULLY_CONNECTED", [x, wi, bi], [y], "FullyConnectedOptions", activation=act)
        return y


def mlp_model():
    """QUANTIZE, FULLY_CONNECTED x3 (RELU, RELU; per-tensor, per-channel, per-tensor), DEQUANTIZE."""
    m = _Maker(1)
    xf = m.act("input", (8, 20), 1.0, 0, dtype="float32")
    sx, zx = act_qparams(-3.0, 5.0)
    xq = m.act("input_int8", (8, 20), sx, zx)
    m.b.op("QUANTIZE", [xf], [xq])
    h1 = m.fc(xq, 24, "relu", per_channel=False, name="dense")
    h2 = m.fc(h1, 16, "relu", per_channel=True, name="dense_1")
    h3 = m.fc(h2, 5, None, per_channel=False, name="dense_2")
    yf = m.act("output", (8, 5), 1.0, 0, dtype="float32")
    m.b.op("DEQUANTIZE", [h3], [yf])
    x = np.random.default_rng(11).uniform(-4, 6, (8, 20)).astype(np.float32)
    x[0, :6] = (np.arange(6) - 2.5) * sx  # exact halves of the scale: QUANTIZE's ties
    return m.b.build([xf], [yf]), x


def cnn_model():
    """CONV_2D 3x3 stride 2 SAME on 12x10 (padding (0, 1) both ways), DEPTHWISE_CONV_2D x2
    RELU6, AVERAGE_POOL_2D 2x2 stride 1 SAME, MAX_POOL_2D 3x3 stride 2 SAME on 6x5,
    RESHAPE (flatten), FULLY_CONNECTED."""
    m = _Maker(2)
    sx, zx = act_qparams(-1.0, 1.5)
    x = m.act("image", (2, 12, 10, 3), sx, zx)
    c1 = m.conv(x, 6, 3, 2, "same", "relu", name="conv")
    s6 = np.float32(6.5 / 255)  # RELU6 clamps inside the code range
    d1 = m.conv(c1, None, 3, 1, "same", "relu6", name="depthwise", depthwise_mult=2, out_q=(s6, -128))
    ap = m.act("avg_pool", (2, 6, 5, 12), *m.q[d1])
    m.b.op(
        "AVERAGE_POOL_2D",
        [d1],
        [ap],
        "Pool2DOptions",
        Padding="same",
        StrideW=1,
        StrideH=1,
        FilterWidth=2,
        FilterHeight=2,
    )
    mp = m.act("max_pool", (2, 3, 3, 12), *m.q[d1])
    m.b.op(
        "MAX_POOL_2D", [ap], [mp], "Pool2DOptions", Padding="same", StrideW=2, StrideH=2, FilterWidth=3, FilterHeight=3
    )
    fl = m.act("flatten", (2, 108), *m.q[d1])
    shape = m.b.tensor("flatten/shape", (2,), "int32", data=np.array([-1, 108], np.int32))
    m.b.op("RESHAPE", [mp, shape], [fl], "ReshapeOptions", NewShape=[-1, 108])
    y = m.fc(fl, 10, None, per_channel=True, name="logits")
    xs = np.random.default_rng(12).integers(-128, 128, (2, 12, 10, 3)).astype(np.int8)
    return m.b.build([x], [y]), xs


def residual_model():
    """CONV_2D 3x3 RELU, CONV_2D 1x1, ADD(input, conv) RELU; then a depthwise conv with
    dilation 2 and multiplier 1, VALID."""
    m = _Maker(3)
    sx, zx = act_qparams(-2.0, 2.5)
    x = m.act("x", (1, 7, 7, 8), sx, zx)
    c1 = m.conv(x, 8, 3, 1, "same", "relu", name="block/conv1")
    c2 = m.conv(c1, 8, 1, 1, "valid", None, name="block/conv2")
    so, zo = act_qparams(0.0, 4.0)
    s = m.act("block/add", (1, 7, 7, 8), so, zo)
    m.b.op("ADD", [x, c2], [s], "AddOptions", activation="relu")
    y = m.conv(s, None, 3, 1, "valid", None, name="head", depthwise_mult=1, dil=2)
    xs = np.random.default_rng(13).integers(-128, 128, (1, 7, 7, 8)).astype(np.int8)
    return m.b.build([x], [y]), xs


def concat_model():
    """CONV_2D 1x1 to the concatenation's qparams, CONCATENATION on channels, PAD, MUL by a
    per-channel constant (broadcast, RELU_N1_TO_1), MEAN over H, W with keep_dims (TFLite's
    4-D kernel), MEAN without keep_dims (the general kernel), MEAN with the input's qparams,
    QUANTIZE int8 -> int8."""
    m = _Maker(4)
    sc, zc = act_qparams(-2.0, 2.0)
    x = m.act("x", (2, 5, 6, 4), sc, zc)
    a = m.conv(x, 4, 1, 1, "valid", None, name="branch", out_q=(sc, zc))
    cat = m.act("concat", (2, 5, 6, 8), sc, zc)
    m.b.op("CONCATENATION", [x, a], [cat], "ConcatenationOptions", Axis=3)
    pads = m.b.tensor("pad/paddings", (4, 2), "int32", data=np.array([[0, 0], [1, 1], [2, 1], [0, 0]], np.int32))
    p = m.act("pad", (2, 7, 9, 8), sc, zc)
    m.b.op("PAD", [cat, pads], [p])
    cq = m.rng.integers(-127, 128, (1, 1, 1, 8)).astype(np.int8)
    const = m.b.tensor("mul/scale", (1, 1, 1, 8), scale=np.float32(0.02), zero_point=0, data=cq)
    sm = np.float32(2.4 / 255)
    mul = m.act("mul", (2, 7, 9, 8), sm, 3)
    m.b.op("MUL", [p, const], [mul], "MulOptions", activation="relu_n1_to_1")
    axes = m.b.tensor("mean/axes", (2,), "int32", data=np.array([1, 2], np.int32))
    mean1 = m.act("mean_keep", (2, 1, 1, 8), np.float32(sm * 0.37), -5)
    m.b.op("MEAN", [mul, axes], [mean1], "ReducerOptions", KeepDims=True)
    mean2 = m.act("mean_flat", (2, 8), np.float32(sm * 0.41), 2)
    m.b.op("MEAN", [mul, axes], [mean2], "ReducerOptions", KeepDims=False)
    axes_w = m.b.tensor("mean/axes_w", (1,), "int32", data=np.array([2], np.int32))
    mean3 = m.act("mean_same", (2, 7, 8), sm, 3)
    m.b.op("MEAN", [mul, axes_w], [mean3], "ReducerOptions", KeepDims=False)
    rq = m.act("requantized", (2, 8), np.float32(sm * 0.23), -9)
    m.b.op("QUANTIZE", [mean2], [rq])
    xs = np.random.default_rng(14).integers(-128, 128, (2, 5, 6, 4)).astype(np.int8)
    return m.b.build([x], [mean1, rq, mean3]), xs


MODELS = {"mlp": mlp_model, "cnn": cnn_model, "residual": residual_model, "concat": concat_model}


@pytest.fixture(scope="module")
def built():
    return {k: f() for k, f in MODELS.items()}


# ---- LiteRT's reference kernels: every tensor, bit for bit ----------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_matches_litert_reference_kernels(built, name):
    pytest.importorskip("ai_edge_litert")
    model, x = built[name]
    ref = imp.tflite_intermediates(model, x)
    graph = imp.from_tflite(model)
    got = graph.run(x, keep_intermediates=True)
    assert set(ref) <= set(got)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    outs = graph.run(x)
    assert list(outs) == list(graph.outputs)
    # the comparisons are not vacuous: codes spread over the range
    inner = [v for k, v in ref.items() if v.dtype == np.int8 and k not in graph.inputs]
    assert all(len(np.unique(v)) > 3 for v in inner)


def test_graph_ops_and_layout(built):
    g = imp.from_tflite(built["cnn"][0])
    assert [n.op for n in g.nodes] == [
        "qconv2d_nhwc",
        "qconv2d_nhwc",
        "qavgpool2d_nhwc",
        "qmaxpool2d_nhwc",
        "qreshape",
        "qfully_connected",
    ]
    conv, dw = g.nodes[0], g.nodes[1]
    assert conv.attrs["padding"] == [0, 1, 0, 1] and conv.attrs["stride"] == [2, 2]  # 12 -> 6, 10 -> 5
    assert dw.attrs["groups"] == 6 and dw.params["weight"].shape == (12, 1, 3, 3)
    assert g.node("3:MAX_POOL_2D").attrs["padding"] == [0, 1, 1, 1]  # 6 -> 3, 5 -> 3
    assert g.node("2:AVERAGE_POOL_2D").attrs["padding"] == [0, 1, 0, 1]
    assert g.nodes[-1].attrs["mode"] == "tflite_single_away" and conv.attrs["mode"] == "tflite"
    assert g.node("4:RESHAPE").attrs["shape"] == [0, 108]
    out = g.run(built["cnn"][1], keep_intermediates=True)
    assert out["conv"].shape == (2, 6, 5, 6)  # NHWC
    assert imp.from_tflite(built["cnn"][0], profile={"FULLY_CONNECTED": "tflite"}).nodes[-1].attrs["mode"] == "tflite"


def test_graph_saves_and_loads(built, tmp_path):
    from npquant.models.graph import load_graph, save_graph

    model, x = built["concat"]
    g = imp.from_tflite(model)
    save_graph(tmp_path / "g.npz", g)
    g2 = load_graph(tmp_path / "g.npz")
    assert g2 == g
    a, b = g.run(x), g2.run(x)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ---- FULLY_CONNECTED rounds once, ties away from zero (a per-op profile) -----------------------


def _fc_ties_model(per_channel):
    """K = 1, w = 1, power-of-two scales: acc * M hits exact halves, both signs."""
    b = TFLiteBuilder()
    sw = np.array([2**-6, 2**-6, 2**-5, 2**-7], np.float32) if per_channel else np.float32(2**-6)
    nz = np.zeros(np.size(sw), int)
    x = b.tensor("x", (200, 1), scale=np.float32(2**-4), zero_point=0)
    w = b.tensor("w", (4, 1), scale=sw, zero_point=nz, data=np.ones((4, 1), np.int8))
    bb = b.tensor("b", (4,), "int32", scale=np.float32(2**-4) * sw, zero_point=nz, data=np.zeros(4, np.int32))
    y = b.tensor("y", (200, 4), scale=np.float32(2**-3), zero_point=0)
    b.op("FULLY_CONNECTED", [x, w, bb], [y], "FullyConnectedOptions")
    return b.build([x], [y]), np.arange(-100, 100, dtype=np.int8).reshape(200, 1)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fully_connected_rounds_once_ties_away(per_channel):
    pytest.importorskip("ai_edge_litert")
    model, x = _fc_ties_model(per_channel)
    ref = imp.tflite_intermediates(model, x)["y"]
    np.testing.assert_array_equal(imp.from_tflite(model).run(x)["y"], ref)
    for mode in ("tflite", "tflite_single"):  # double rounding, and ties toward +inf, both differ
        other = imp.from_tflite(model, profile={"FULLY_CONNECTED": mode}).run(x)["y"]
        assert np.sum(other != ref) >= 4


def _ties_model():
    """CONV_2D 1x1, DEPTHWISE_CONV_2D 1x1 and MUL by 1 with power-of-two scales: M = 2^-7,
    so acc * M passes through the ties of both roundings."""
    b = TFLiteBuilder()
    s = np.float32
    x = b.tensor("x", (1, 10, 20, 1), scale=s(2**-4), zero_point=0)
    one = np.ones((1, 1, 1, 1), np.int8)
    w = b.tensor("w", (1, 1, 1, 1), scale=s(2**-6), zero_point=0, data=one)
    bb = b.tensor("b", (1,), "int32", scale=s(2**-10), zero_point=0, data=np.zeros(1, np.int32))
    wd = b.tensor("wd", (1, 1, 1, 1), scale=s(2**-6), zero_point=0, axis=3, data=one)
    c = b.tensor("conv", (1, 10, 20, 1), scale=s(2**-3), zero_point=0)
    d = b.tensor("depthwise", (1, 10, 20, 1), scale=s(2**-3), zero_point=0)
    m = b.tensor("mul", (1, 10, 20, 1), scale=s(2**-3), zero_point=0)
    b.op("CONV_2D", [x, w, bb], [c], "Conv2DOptions", Padding="valid", StrideW=1, StrideH=1)
    b.op(
        "DEPTHWISE_CONV_2D",
        [x, wd, bb],
        [d],
        "DepthwiseConv2DOptions",
        Padding="valid",
        StrideW=1,
        StrideH=1,
        DepthMultiplier=1,
    )
    b.op("MUL", [x, w], [m], "MulOptions")
    return b.build([x], [c, d, m]), np.arange(-100, 100, dtype=np.int8).reshape(1, 10, 20, 1)


def test_conv_depthwise_and_mul_round_twice():
    pytest.importorskip("ai_edge_litert")
    model, x = _ties_model()
    ref = imp.tflite_intermediates(model, x)
    got = imp.from_tflite(model).run(x)
    for op, t in (("CONV_2D", "conv"), ("DEPTHWISE_CONV_2D", "depthwise"), ("MUL", "mul")):
        np.testing.assert_array_equal(got[t], ref[t], err_msg=t)
        for mode in ("tflite_single", "fp32"):  # single rounding ties up, and float32 ties to even, differ
            assert np.sum(imp.from_tflite(model, profile={op: mode}).run(x)[t] != ref[t]) >= 2, (op, mode)
    with pytest.raises(ValueError, match="CONV_2D"):
        imp.from_tflite(model, profile={"CONV_2D": "tflite_single_away"})  # an FC rounding, not a conv's


# ---- LiteRT's optimized kernels ------------------------------------------------------------------

# Operators (node names) whose npquant output equals LiteRT's optimized kernels when both
# read LiteRT's inputs to that operator, measured with ai-edge-litert 2.3.0 on an x86-64 CPU
# with AVX-512. BUILTIN (= AUTO) runs LiteRT's default XNNPACK delegate;
# BUILTIN_WITHOUT_DEFAULT_DELEGATES the optimized builtin kernels alone. Not listed (they
# differ in a few elements): XNNPACK's DEPTHWISE_CONV_2D (cnn), MUL and one-axis MEAN
# (concat); both paths' 1x1 CONV_2D (residual "1:CONV_2D") and QUANTIZE from float at exact
# ties (mlp, which rounds them half to even); the builtin DEQUANTIZE (mlp). Fully
# connected layers match on these inputs but not at exact ties (test_fully_connected_ties_
# in_optimized_kernels).
_ALL = {
    "mlp": ["1:FULLY_CONNECTED", "2:FULLY_CONNECTED", "3:FULLY_CONNECTED", "4:DEQUANTIZE"],
    "cnn": ["0:CONV_2D", "2:AVERAGE_POOL_2D", "3:MAX_POOL_2D", "4:RESHAPE", "5:FULLY_CONNECTED"],
    "residual": ["0:CONV_2D", "2:ADD", "3:DEPTHWISE_CONV_2D"],
    "concat": ["0:CONV_2D", "1:CONCATENATION", "2:PAD", "4:MEAN", "5:MEAN", "7:QUANTIZE"],
}
OPTIMIZED_MATCHES = {
    "BUILTIN": _ALL,
    "AUTO": _ALL,
    "BUILTIN_WITHOUT_DEFAULT_DELEGATES": {
        "mlp": _ALL["mlp"][:3],
        "cnn": _ALL["cnn"] + ["1:DEPTHWISE_CONV_2D"],
        "residual": _ALL["residual"],
        "concat": _ALL["concat"] + ["3:MUL", "6:MEAN"],
    },
}


def _measured_cpu():
    """The optimized kernels pick their micro-kernels (and with them their rounding) by the
    CPU's features: the lists above hold on an AVX-512 CPU like the one they were measured on."""
    from npquant._kernels.cpu import cpu_features

    if not {"avx512f", "avx512bw", "avx512vl"} <= cpu_features():
        pytest.skip(
            "LiteRT's optimized kernels were measured on an AVX-512 CPU; this CPU takes other "
            "micro-kernels (the reference kernels are compared on every CPU)"
        )


def per_op_mismatches(model, x, op_resolver):
    """{node: (elements that differ, elements)}: each operator of npquant's graph run on
    LiteRT's values of its inputs and compared with LiteRT's output."""
    ref = imp.tflite_intermediates(model, x, op_resolver=op_resolver)
    g = imp.from_tflite(model)
    full = g.run(x, keep_intermediates=True)  # constants
    out = {}
    for n in g.nodes:
        if n.outputs[0] in ref:
            y = g.layer(n.name)(*[ref.get(t, full[t]) for t in n.inputs])
            r = ref[n.outputs[0]]
            out[n.name] = (int(np.sum(y != r)) if y.shape == r.shape else r.size, r.size)
    return out


@pytest.mark.parametrize("resolver", list(OPTIMIZED_MATCHES))
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_optimized_kernels(built, name, resolver):
    pytest.importorskip("ai_edge_litert")
    model, x = built[name]
    got = per_op_mismatches(model, x, resolver)
    assert per_op_mismatches(model, x, "BUILTIN_REF") == {k: (0, v[1]) for k, v in got.items()}
    _measured_cpu()
    for node in OPTIMIZED_MATCHES[resolver][name]:
        assert got[node][0] == 0, (node, got[node])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fully_connected_ties_in_optimized_kernels():
    # at exact ties XNNPACK's FULLY_CONNECTED rounds as mode "fp32" (float32 product, ties to
    # even); the builtin optimized kernel matches none of the named modes there
    pytest.importorskip("ai_edge_litert")
    _measured_cpu()
    model, x = _fc_ties_model(True)
    ref = imp.tflite_intermediates(model, x, op_resolver="BUILTIN")["y"]
    np.testing.assert_array_equal(imp.from_tflite(model, profile={"FULLY_CONNECTED": "fp32"}).run(x)["y"], ref)
    assert np.any(imp.from_tflite(model).run(x)["y"] != ref)


# ---- errors ----------------------------------------------------------------------------------------


def test_unsupported_operator_is_named(built):
    b = TFLiteBuilder()
    x = b.tensor("x", (1, 4), scale=0.1, zero_point=0)
    y = b.tensor("y", (1, 4), scale=1 / 256, zero_point=-128)
    b.op("SOFTMAX", [x], [y], "SoftmaxOptions", Beta=1.0)
    with pytest.raises(ValueError, match=r"operator 0 \(SOFTMAX\) is not supported"):
        imp.from_tflite(b.build([x], [y]))


@pytest.mark.parametrize("cut", [0, 3, 7, 16, 40, 100, 200, 400, 800, -1])
def test_malformed_buffers_name_what_was_expected(built, cut):
    model = built["cnn"][0]
    data = model[:cut] if cut >= 0 else b"\0\0\0\0NOPE" + model[8:]
    with pytest.raises(FileFormatError, match="expected|corrupt"):
        imp.from_tflite(data)


def test_corrupted_buffers_never_raise_index_errors(built):
    model = built["residual"][0]
    rng = np.random.default_rng(0)
    for _ in range(300):
        data = bytearray(model)
        for pos in rng.integers(8, len(data), 4):
            data[pos] = rng.integers(0, 256)
        try:
            imp.from_tflite(bytes(data))
        except (FileFormatError, ValueError):
            pass


def test_bad_arguments(built, tmp_path):
    with pytest.raises(TypeError, match="path_or_bytes"):
        imp.from_tflite(3)
    with pytest.raises(ValueError, match="profile"):
        imp.from_tflite(built["mlp"][0], profile="tf")
    with pytest.raises(ValueError, match="mode"):
        imp.from_tflite(built["mlp"][0], profile={"FULLY_CONNECTED": "round"})
    p = tmp_path / "m.tflite"
    p.write_bytes(built["mlp"][0])
    assert imp.from_tflite(p) == imp.from_tflite(built["mlp"][0])
    assert imp.tflite_tensor_names(p)[:2] == ["input", "input_int8"]


def test_missing_package_names_the_extra(built, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tflite", None)  # import tflite raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"npquant\[tflite\]"):
        imp.from_tflite(built["mlp"][0])
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModuleNotFoundError, match=r"npquant\[litert\]"):
        imp.tflite_intermediates(built["mlp"][0], built["mlp"][1])


def test_every_truncation_is_a_format_error(built):
    model = built["concat"][0]
    for cut in range(0, len(model), 7):
        with pytest.raises(FileFormatError):
            imp.from_tflite(model[:cut])


def test_operator_errors_name_the_operator():
    b = TFLiteBuilder()  # a pooling layer whose output has other qparams than its input
    x = b.tensor("x", (1, 4, 4, 2), scale=0.1, zero_point=0)
    y = b.tensor("y", (1, 2, 2, 2), scale=0.2, zero_point=0)
    b.op("MAX_POOL_2D", [x], [y], "Pool2DOptions", Padding="valid", StrideW=2, StrideH=2, FilterWidth=2, FilterHeight=2)
    with pytest.raises(ValueError, match=r"operator 0 \(MAX_POOL_2D\): the output 'y' must have the input's"):
        imp.from_tflite(b.build([x], [y]))
    b = TFLiteBuilder()  # a float model
    x = b.tensor("x", (1, 4), "float32")
    w = b.tensor("w", (3, 4), "float32", data=np.ones((3, 4)))
    y = b.tensor("y", (1, 3), "float32")
    b.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    with pytest.raises(ValueError, match=r"operator 0 \(FULLY_CONNECTED\): the weights 'w' must be int8"):
        imp.from_tflite(b.build([x], [y]))


def test_graph_ops_check_their_arguments():
    from npquant.models.graph import Graph, Node
    from npquant.qparams import QParams, QuantSpec

    qp = QParams(np.float32(0.1), 3, QuantSpec())
    with pytest.raises(ValueError, match="pads"):
        Graph([Node("p", "qpad", ["x"], ["y"], {"pads": [1, 2]})], ["x"], ["y"], input_qparams={"x": qp})
    with pytest.raises(ValueError, match="axes"):
        Graph([Node("m", "qmean", ["x"], ["y"], {"axes": [], "output": qp})], ["x"], ["y"], input_qparams={"x": qp})
    with pytest.raises(ValueError, match="value"):
        Graph(
            [Node("c", "qconstant", [], ["y"], {"output": qp}, {"value": np.array([300], np.int32)})],
            ["x"],
            ["y"],
            input_qparams={"x": qp},
        )
    g = Graph([Node("p", "qpad", ["x"], ["y"], {"pads": [[0, 0], [1, 2]]})], ["x"], ["y"], input_qparams={"x": qp})
    np.testing.assert_array_equal(g(np.ones((1, 2), np.int8)), [[3, 1, 1, 3, 3]])  # padded with Z = 3
    with pytest.raises(ValueError, match="NHWC"):
        Graph([Node("m", "qmaxpool2d_nhwc", ["x"], ["y"], {"kernel_size": 2})], ["x"], ["y"], input_qparams={"x": qp})(
            np.zeros((2, 2), np.int8)
        )


def test_explain_traces_nhwc_pools_and_mul(built):
    """npquant.explain.explain_layer on the NHWC nodes: the window (or the two operands) it
    lists give the node's code through the op on their real values, to within one code."""
    from npquant.explain import explain_layer

    rng = np.random.default_rng(5)
    seen = set()
    for name in ("cnn", "concat"):
        model, x = built[name]
        g = imp.from_tflite(model)
        env = g.run(x, keep_intermediates=True)
        for node in g.nodes:
            if node.op not in ("qmaxpool2d_nhwc", "qavgpool2d_nhwc", "qmul"):
                continue
            y = env[node.outputs[0]]
            qp = g.qparams[node.outputs[0]]
            for _ in range(5):
                idx = tuple(int(rng.integers(0, d)) for d in y.shape)
                t = explain_layer(g, x, node.name, idx)
                ideal = t.float_result / float(np.float32(qp.scale)) + int(qp.zero_point)
                assert t.code == int(y[idx]) and abs(min(max(ideal, qp.spec.qmin), qp.spec.qmax) - t.code) <= 1.0
                if node.op == "qmaxpool2d_nhwc":
                    assert min(
                        max(max(e[2] for e in t.elements), qp.spec.qmin), qp.spec.qmax
                    ) == t.code or node.attrs.get("activation") not in (None, "none")
            seen.add(node.op)
    assert seen == {"qmaxpool2d_nhwc", "qavgpool2d_nhwc", "qmul"}
