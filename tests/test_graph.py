"""npquant.models.graph: graphs built by hand (float and integer), run, inspected, validated, saved
and loaded, and corrupt files refused. Needs no PyTorch (tests/test_import_torch.py
checks the imported graphs against PyTorch)."""

import json
import os

import numpy as np
import pytest

from npquant import QParams, QuantSpec, dequantize, fit_qparams, quantize
from npquant.models import nn
from npquant.models.graph import (
    FORMAT,
    OPS,
    VERSION,
    Graph,
    Node,
    fold_batchnorm,
    graph_from_arrays,
    graph_to_arrays,
    load_graph,
    save_graph,
)
from npquant.models.io import FileFormatError
from npquant.qnn import layers as ql
from npquant.qnn.fbgemm import fma_float32

U8 = QuantSpec(signed=False)


def _qp(scale, zp):
    return QParams(np.float32(scale), zp, U8)


# ------------------------------------------------------------------------- float graphs


def _float_graph(rng):
    """A residual block with a projection shortcut, a concat of two branches, pools and a
    linear head: every float op, tensors read several times."""
    w = {
        k: rng.normal(0, 0.3, s).astype(np.float32)
        for k, s in [
            ("stem", (4, 3, 3, 3)),
            ("b1", (4, 4, 3, 3)),
            ("b2", (4, 2, 3, 3)),
            ("sc", (4, 3, 1, 1)),
            ("fc", (6, 8 * 2 * 2)),
        ]
    }
    bn = {
        "weight": rng.uniform(0.5, 1.5, 4),
        "bias": rng.normal(0, 0.1, 4),
        "running_mean": rng.normal(0, 0.1, 4),
        "running_var": rng.uniform(0.5, 2, 4),
    }
    nodes = [
        Node("stem", "conv2d", ["x"], ["h0"], {"stride": 1, "padding": 1}, {"weight": w["stem"], "bias": np.ones(4)}),
        Node("bn", "batchnorm2d", ["h0"], ["h1"], {"eps": 1e-5}, bn),
        Node("relu", "relu", ["h1"], ["h2"]),
        Node("b1", "conv2d", ["h2"], ["h3"], {"padding": [1, 1]}, {"weight": w["b1"]}),
        Node("b2", "conv2d", ["h3"], ["h4"], {"padding": 1, "groups": 2}, {"weight": w["b2"]}),
        Node("shortcut", "conv2d", ["x"], ["s"], {}, {"weight": w["sc"]}),
        Node("add", "add", ["h4", "s"], ["h5"]),
        Node("relu6", "relu6", ["h5"], ["h6"]),
        Node("cat", "concat", ["h6", "h2"], ["h7"], {"axis": 1}),
        Node("maxpool", "maxpool2d", ["h7"], ["h8"], {"kernel_size": 2}),
        Node(
            "avgpool",
            "avgpool2d",
            ["h8"],
            ["h9"],
            {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
        ),
        Node("flatten", "flatten", ["h9"], ["h10"]),
        Node("fc", "linear", ["h10"], ["logits"], {}, {"weight": w["fc"], "bias": np.zeros(6, np.float32)}),
        Node("reshape", "reshape", ["logits"], ["y"], {"shape": [0, 2, -1]}),
    ]
    return Graph(nodes, ["x"], ["y", "h2"], name="residual"), w, bn


def test_float_graph_equals_the_layers_and_keeps_every_tensor():
    rng = np.random.default_rng(0)
    g, w, bn = _float_graph(rng)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    h2 = nn.ReLU()(nn.BatchNorm2d(**bn)(nn.Conv2d(w["stem"], np.ones(4), padding=1)(x)))
    h4 = nn.Conv2d(w["b2"], padding=1, groups=2)(nn.Conv2d(w["b1"], padding=1)(h2))
    h6 = nn.ReLU6()(h4 + nn.Conv2d(w["sc"])(x))
    h = nn.AvgPool2d(3, 2, 1, count_include_pad=False)(nn.MaxPool2d(2)(np.concatenate([h6, h2], 1)))
    y = (h.reshape(2, -1) @ w["fc"].T).reshape(2, 2, 3)
    out = g.run(x)
    assert list(out) == ["y", "h2"]
    np.testing.assert_allclose(out["y"], y, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["h2"], h2)
    yy, hh = g(x)
    np.testing.assert_array_equal(yy, out["y"])
    np.testing.assert_array_equal(g.run({"x": x})["y"], g.run([x])["y"])
    every = g.run(x, keep_intermediates=True)
    assert (
        tuple(every)
        == g.tensors
        == ("x", "h0", "h1", "h2", "h3", "h4", "s", "h5", "h6", "h7", "h8", "h9", "h10", "logits", "y")
    )
    np.testing.assert_array_equal(every["h6"], h6)
    assert all(v.dtype == np.float32 for v in every.values())
    assert g.kind == "float" and g.qparams == {}
    assert isinstance(g.layer("b2"), nn.Conv2d) and g.node("cat").inputs == ("h6", "h2")
    assert "maxpool2d" in g.summary() and "Graph('residual'" in repr(g)


def test_fold_batchnorm_folds_into_the_conv_before():
    rng = np.random.default_rng(1)
    g, _, _ = _float_graph(rng)
    f = fold_batchnorm(g)
    assert [n.op for n in f.nodes].count("batchnorm2d") == 0 and len(f.nodes) == len(g.nodes) - 1
    assert f.node("stem").outputs == ("h1",)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(f.run(x)["y"], g.run(x)["y"], rtol=0, atol=1e-5)
    # a batch norm whose conv output is read elsewhere (or is a graph output) stays
    g2 = Graph(list(g.nodes), ["x"], ["y", "h0"])
    assert [n.op for n in fold_batchnorm(g2).nodes].count("batchnorm2d") == 1


def test_run_argument_errors():
    g, _, _ = _float_graph(np.random.default_rng(2))
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="not a graph input"):
        g.run({"x": x, "z": x})
    with pytest.raises(ValueError, match="takes 1 input"):
        g.run([x, x])
    with pytest.raises(TypeError, match="keep_intermediates"):
        g.run(x, keep_intermediates=1)
    with pytest.raises(ValueError, match=r"node 'stem' \(conv2d\): .*channels"):
        g.run(np.zeros((1, 5, 8, 8), np.float32))
    with pytest.raises(TypeError, match=r"node 'stem' \(conv2d\)"):
        g.run(np.zeros((1, 3, 8, 8), np.int32))


# ----------------------------------------------------------------------- integer graphs


def _int_graph(rng):
    """quantize -> conv(relu) -> [conv -> add_relu with the skip] and [relu6] -> concat
    (requantized) -> avg pool (padding counted) -> max pool -> flatten -> linear -> dequantize."""
    x_qp, h_qp, c_qp = _qp(0.02, 120), _qp(0.015, 3), _qp(0.03, 130)
    a_qp, cat_qp, y_qp = _qp(0.025, 0), _qp(0.028, 5), _qp(0.05, 128)
    wc = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    wc2 = rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
    wl = rng.normal(0, 0.1, (5, 8 * 2 * 2)).astype(np.float32)
    qs = {
        k: fit_qparams(v, QuantSpec(symmetric=True, narrow_range=True, axis=0))
        for k, v in [("c", wc), ("c2", wc2), ("l", wl)]
    }
    qw = {k: quantize(v, qs[k]) for k, v in [("c", wc), ("c2", wc2), ("l", wl)]}
    bias_c = rng.integers(-500, 500, 4).astype(np.int32)
    fbias = rng.normal(0, 0.2, 5).astype(np.float32)
    wp = {k: {"weight": qw[k], "weight_scale": qs[k].scale, "weight_zero_point": qs[k].zero_point} for k in qw}
    nodes = [
        Node("q", "quantize", ["x"], ["xq"], {"output": x_qp, "method": "torch"}),
        Node(
            "conv",
            "qconv2d",
            ["xq"],
            ["h"],
            {"output": h_qp, "padding": 1, "activation": "relu", "mode": "tflite"},
            {**wp["c"], "bias_q": bias_c},
        ),
        Node("conv2", "qconv2d", ["h"], ["c"], {"output": c_qp, "padding": [1, 1, 1, 1], "mode": "onnx"}, wp["c2"]),
        Node("add", "qadd", ["c", "h"], ["a"], {"output": a_qp, "mode": "torch", "activation": "relu"}),
        Node("r6", "qrelu", ["h"], ["r"], {"activation": "relu6", "mode": "torch"}),
        Node("cat", "qconcat", ["a", "r"], ["k"], {"output": cat_qp}),
        Node(
            "avg",
            "qavgpool2d",
            ["k"],
            ["p"],
            {"kernel_size": 3, "stride": 2, "padding": 1, "mode": "torch", "count_include_pad": True},
        ),
        Node("max", "qmaxpool2d", ["p"], ["m"], {"kernel_size": 2}),
        Node("flat", "qflatten", ["m"], ["f"]),
        Node(
            "fc",
            "qlinear",
            ["f"],
            ["l"],
            {"output": y_qp, "mode": "fp32", "accumulation": "int16_pairs"},
            {**wp["l"], "bias": fbias},
        ),
        Node("dq", "dequantize", ["l"], ["y"]),
    ]
    return Graph(nodes, ["x"], ["y"], name="integer"), (x_qp, h_qp, c_qp, a_qp, cat_qp, y_qp, qw, qs, bias_c, fbias)


def test_integer_graph_equals_the_layers_at_every_tensor():
    rng = np.random.default_rng(3)
    g, (x_qp, h_qp, c_qp, a_qp, cat_qp, y_qp, qw, qs, bias_c, fbias) = _int_graph(rng)
    x = rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    xq = quantize(x, x_qp, method="torch")
    h = ql.QConv2d(qw["c"], qs["c"], bias_c, x_qp, h_qp, padding=1, activation="relu")(xq)
    c = ql.QConv2d(qw["c2"], qs["c2"], None, h_qp, c_qp, padding=1, mode="onnx")(h)
    a = ql.QAdd(c_qp, h_qp, a_qp, mode="torch", activation="relu")(c, h)
    r = ql.QReLU(h_qp, "relu6", mode="torch")(h)
    k = np.concatenate([quantize(dequantize(t, qp), cat_qp, method="torch") for t, qp in ((a, a_qp), (r, h_qp))], 1)
    p = ql.AvgPool2d(3, 2, 1, mode="torch", zero_point=5, count_include_pad=True)(k)
    f = ql.MaxPool2d(2)(p).reshape(2, -1)
    lq = ql.QLinear(qw["l"], qs["l"], fbias, cat_qp, y_qp, mode="fbgemm", accumulation="int16_pairs")(f)
    every = g.run(x, keep_intermediates=True)
    for name, want in [("xq", xq), ("h", h), ("c", c), ("a", a), ("r", r), ("k", k), ("p", p), ("f", f), ("l", lq)]:
        np.testing.assert_array_equal(every[name], want, err_msg=name)
        assert every[name].dtype == np.uint8
    np.testing.assert_array_equal(every["y"], dequantize(lq, y_qp))
    assert g.kind == "integer"
    assert {t: (float(qp.scale), int(qp.zero_point)) for t, qp in g.qparams.items()} == {
        t: (float(qp.scale), int(qp.zero_point))
        for t, qp in [
            ("xq", x_qp),
            ("h", h_qp),
            ("c", c_qp),
            ("a", a_qp),
            ("r", h_qp),
            ("k", cat_qp),
            ("p", cat_qp),
            ("m", cat_qp),
            ("f", cat_qp),
            ("l", y_qp),
        ]
    }
    assert g.layer("fc").saturates_pairs and isinstance(g.layer("conv"), ql.QConv2d)
    assert "S=0.028 Z=5 uint8" in g.summary()


def test_codes_as_graph_input():
    rng = np.random.default_rng(4)
    x_qp = _qp(0.1, 10)
    g = Graph(
        [Node("relu", "qrelu", ["x"], ["r"]), Node("flat", "qreshape", ["r"], ["y"], {"shape": [0, -1]})],
        ["x"],
        ["y"],
        input_qparams={"x": x_qp},
    )
    x = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    np.testing.assert_array_equal(g(x), np.maximum(x, 10).reshape(2, -1))
    assert g.qparams["y"] is x_qp


def test_qconcat_requantizes_as_documented():
    rng = np.random.default_rng(5)
    a_qp, b_qp, y_qp = _qp(0.03, 100), _qp(0.0125, 7), _qp(0.02, 50)
    a = rng.integers(0, 256, (2, 12, 3, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 5, 3, 3)).astype(np.uint8)
    same = rng.integers(0, 256, (2, 2, 3, 3)).astype(np.uint8)

    def cat(fmt):
        g = Graph(
            [Node("cat", "qconcat", ["a", "b", "s"], ["y"], {"output": y_qp, "memory_format": fmt})],
            ["a", "b", "s"],
            ["y"],
            input_qparams={"a": a_qp, "b": b_qp, "s": y_qp},
        )
        return g(a, b, same)

    generic = cat("contiguous")
    np.testing.assert_array_equal(generic[:, :12], quantize(dequantize(a, a_qp), y_qp, method="torch"))
    np.testing.assert_array_equal(generic[:, 17:], same)  # the output's own qparams: copied
    nhwc = cat("channels_last")
    d = fma_float32(a[:, :8].astype(np.float32), np.float32(0.03), np.float32(np.float32(0.03) * np.float32(-100)))
    np.testing.assert_array_equal(nhwc[:, :8], quantize(d, y_qp, method="mul"))  # vector channels
    np.testing.assert_array_equal(nhwc[:, 8:12], quantize(dequantize(a[:, 8:], a_qp), y_qp, method="mul_add"))
    np.testing.assert_array_equal(nhwc[:, 12:17], quantize(dequantize(b, b_qp), y_qp, method="mul_add"))
    np.testing.assert_array_equal(nhwc[:, 17:], same)
    assert np.abs(nhwc.astype(int) - generic.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="axis 1"):
        Graph(
            [Node("cat", "qconcat", ["a"], ["y"], {"output": y_qp, "axis": 0, "memory_format": "channels_last"})],
            ["a"],
            ["y"],
            input_qparams={"a": a_qp},
        )


def test_qadd_channels_last_is_nhwc_element_order():
    rng = np.random.default_rng(6)
    a_qp, b_qp, y_qp = _qp(0.03, 100), _qp(0.0125, 7), _qp(0.02, 50)
    a = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    layer = ql.QAdd(a_qp, b_qp, y_qp, mode="torch")
    g = Graph(
        [Node("add", "qadd", ["a", "b"], ["y"], {"output": y_qp, "mode": "torch", "memory_format": "channels_last"})],
        ["a", "b"],
        ["y"],
        input_qparams={"a": a_qp, "b": b_qp},
    )
    nhwc = layer(a.transpose(0, 2, 3, 1).copy(), b.transpose(0, 2, 3, 1).copy()).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(g(a, b), nhwc)
    with pytest.raises(ValueError, match=r"node 'add' \(qadd\): .*4-D"):
        g(a[0], b[0])


# ---------------------------------------------------------------------------- validation


def _n(name, op, inputs, outputs, attrs=None, params=None):
    return Node(name, op, inputs, outputs, attrs, params)


W = {"weight": np.ones((2, 2), np.float32)}
BAD_GRAPHS = [
    ("unknown op", [_n("a", "gelu", ["x"], ["y"])], r"node 'a' has unknown op 'gelu'; known ops: linear"),
    (
        "used before defined",
        [_n("a", "relu", ["t"], ["y"]), _n("b", "relu", ["x"], ["t"])],
        r"node 'a' uses tensor 't' before it is defined \(node 'b' produces it later",
    ),
    (
        "cycle",
        [_n("a", "add", ["x", "t2"], ["t1"]), _n("b", "relu", ["t1"], ["t2"]), _n("c", "relu", ["t2"], ["y"])],
        r"node '(a|b)' is in a cycle: (a -> b -> a|b -> a -> b)",
    ),
    ("self loop", [_n("a", "add", ["x", "y"], ["y"])], r"node 'a' is in a cycle: a -> a"),
    ("missing input", [_n("a", "add", ["x", "z"], ["y"])], r"node 'a' has a missing input: tensor 'z'"),
    ("duplicate node", [_n("a", "relu", ["x"], ["t"]), _n("a", "relu", ["t"], ["y"])], r"duplicate node name 'a'"),
    (
        "duplicate tensor",
        [_n("a", "relu", ["x"], ["y"]), _n("b", "relu", ["x"], ["y"])],
        r"tensor 'y' is an output of both node 'a' and node 'b'",
    ),
    ("output is an input", [_n("a", "relu", ["x"], ["x"])], r"node 'a' outputs 'x', which is a graph input"),
    ("arity", [_n("a", "add", ["x"], ["y"])], r"node 'a' \(add\) takes 2 input\(s\), got 1"),
    ("two outputs", [_n("a", "relu", ["x"], ["y", "z"])], r"node 'a' \(relu\) has one output, got 2"),
    ("unknown attr", [_n("a", "relu", ["x"], ["y"], {"inplace": True})], r"node 'a' \(relu\) has unknown attribute"),
    ("missing attr", [_n("a", "maxpool2d", ["x"], ["y"])], r"node 'a' \(maxpool2d\) needs the attribute 'kernel_size'"),
    (
        "bad attr",
        [_n("a", "maxpool2d", ["x"], ["y"], {"kernel_size": "2"})],
        r"node 'a' \(maxpool2d\): kernel_size must be an integer",
    ),
    (
        "huge attr",
        [_n("a", "maxpool2d", ["x"], ["y"], {"kernel_size": 1 << 40})],
        r"node 'a' \(maxpool2d\): kernel_size must be at most 65536",
    ),
    ("missing param", [_n("a", "linear", ["x"], ["y"])], r"node 'a' \(linear\) needs the parameter 'weight'"),
    (
        "unknown param",
        [_n("a", "linear", ["x"], ["y"], {}, {**W, "scale": np.ones(2)})],
        r"node 'a' \(linear\) has unknown parameter 'scale'",
    ),
    (
        "bad param",
        [_n("a", "linear", ["x"], ["y"], {}, {"weight": np.ones(3, np.float32)})],
        r"node 'a' \(linear\): a.weight must be \(out, in\)",
    ),
    (
        "float op on codes",
        [_n("q", "quantize", ["x"], ["t"], {"output": QParams(0.1, 0, U8)}), _n("a", "linear", ["t"], ["y"], {}, W)],
        r"node 'a' \(linear\) takes float tensors, but tensor 't' holds integer codes \(insert a dequantize",
    ),
    (
        "integer op on floats",
        [_n("a", "qrelu", ["x"], ["y"])],
        r"node 'a' \(qrelu\) takes integer codes, but tensor 'x' is float \(insert a quantize",
    ),
    (
        "bad qparams",
        [_n("a", "quantize", ["x"], ["y"], {"output": {"scale": 0.1}})],
        r"node 'a' \(quantize\): output must be qparams",
    ),
    (
        "torch add of int8",
        [
            _n("q", "quantize", ["x"], ["t"], {"output": QParams(0.1, 0, QuantSpec())}),
            _n("a", "qadd", ["t", "t"], ["y"], {"output": QParams(0.1, 0, QuantSpec()), "mode": "torch"}),
        ],
        r"node 'a' \(qadd\): mode='torch' is PyTorch's quint8 add",
    ),
]


@pytest.mark.parametrize("nodes, match", [b[1:] for b in BAD_GRAPHS], ids=[b[0] for b in BAD_GRAPHS])
def test_invalid_graphs_are_refused_naming_the_node(nodes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Graph(nodes, ["x"], ["y"])


def test_other_graph_errors():
    relu = _n("a", "relu", ["x"], ["y"])
    with pytest.raises(ValueError, match="graph output 'z' is neither"):
        Graph([relu], ["x"], ["z"])
    with pytest.raises(ValueError, match="graph input 'x' is listed twice"):
        Graph([relu], ["x", "x"], ["y"])
    with pytest.raises(ValueError, match="graph output 'y' is listed twice"):
        Graph([relu], ["x"], ["y", "y"])
    with pytest.raises(TypeError, match=r"nodes\[0\] must be a Node"):
        Graph([{"op": "relu"}], ["x"], ["y"])
    with pytest.raises(ValueError, match="not a graph input"):
        Graph([relu], ["x"], ["y"], input_qparams={"q": QParams(0.1, 0, U8)})
    with pytest.raises(TypeError, match="must be a list of tensor names"):
        Node("a", "relu", "x", ["y"])
    with pytest.raises(TypeError, match="JSON data"):
        Node("a", "relu", ["x"], ["y"], {"k": object()})
    with pytest.raises(ValueError, match="finite"):
        Node("a", "relu", ["x"], ["y"], {"k": float("nan")})
    with pytest.raises(ValueError, match="without '.'"):
        Node("a", "linear", ["x"], ["y"], params={"w.x": np.ones(2)})
    with pytest.raises(TypeError, match="bool, integer or float"):
        Node("a", "linear", ["x"], ["y"], params={"w": np.array(["s"])})
    assert set(OPS) >= {
        "linear",
        "conv2d",
        "batchnorm2d",
        "relu",
        "relu6",
        "maxpool2d",
        "avgpool2d",
        "flatten",
        "add",
        "concat",
        "reshape",
        "quantize",
        "dequantize",
        "qlinear",
        "qconv2d",
        "qadd",
        "qrelu",
        "qmaxpool2d",
        "qavgpool2d",
        "qflatten",
        "qreshape",
        "qconcat",
    }
    assert "attrs: kernel_size, stride=None" in OPS["maxpool2d"]


# ---------------------------------------------------------------------------------- files


def test_round_trip_float_and_integer(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    for g in (_float_graph(rng)[0], _int_graph(rng)[0]):
        path = tmp_path / f"{g.name}.npz"
        save_graph(path, g)
        back = load_graph(path)
        assert back == g and back is not g
        for k, v in g.run(x, keep_intermediates=True).items():
            np.testing.assert_array_equal(back.run(x, keep_intermediates=True)[k], v)
        # NumPy alone reads the file: the header is JSON, the parameters are arrays
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["__graph__"]))
            assert (header["format"], header["version"]) == (FORMAT, VERSION) == ("npquant-graph", 1)
            node = header["nodes"][1]
            for p in node["params"]:
                np.testing.assert_array_equal(z[f"{node['name']}.{p}"], g.node(node["name"]).params[p])
    g = Graph([_n("relu", "qrelu", ["x"], ["y"])], ["x"], ["y"], input_qparams={"x": QParams(0.5, 3, U8)})
    save_graph(tmp_path / "codes.npz", g)
    assert load_graph(tmp_path / "codes.npz") == g
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".npquant-")]  # written atomically


def _arrays():
    return graph_to_arrays(_int_graph(np.random.default_rng(8))[0])


def _with_header(edit):
    arrays = _arrays()
    h = json.loads(str(arrays["__graph__"]))
    edit(h)
    arrays["__graph__"] = np.array(json.dumps(h))
    return arrays


BAD_HEADERS = [
    ("wrong format", lambda h: h.update(format="onnx"), r"format must be 'npquant-graph'"),
    ("newer version", lambda h: h.update(version=2), r"version 2 is newer than this npquant reads \(version 1\)"),
    ("version as text", lambda h: h.update(version="1"), r"version must be a positive integer"),
    ("missing key", lambda h: h.pop("outputs"), r"exactly the keys"),
    ("extra key", lambda h: h.update(extra=1), r"exactly the keys"),
    ("nodes not a list", lambda h: h.update(nodes={}), r"nodes must be a list"),
    ("node not an object", lambda h: h["nodes"].__setitem__(0, []), r"nodes\[0\] must be an object"),
    ("node key missing", lambda h: h["nodes"][0].pop("attrs"), r"nodes\[0\] must be an object with exactly"),
    ("inputs not names", lambda h: h.update(inputs=[1]), r"inputs must be a list of non-empty strings"),
    ("param not listed", lambda h: h["nodes"][1].update(params=["weight"]), r"the array 'conv\.bias_q' belongs to no"),
    ("param missing", lambda h: h["nodes"][1]["params"].append("bias"), r"needs the array 'conv\.bias', which is"),
    ("unknown op", lambda h: h["nodes"][2].update(op="conv3d"), r"node 'conv2' has unknown op 'conv3d'"),
    ("bad attribute", lambda h: h["nodes"][1]["attrs"].update(stride=[1, 1, 1]), r"node 'conv' \(qconv2d\): stride"),
    ("negative padding", lambda h: h["nodes"][6]["attrs"].update(padding=-1), r"node 'avg' \(qavgpool2d\): padding"),
    ("bad qparams", lambda h: h["nodes"][0]["attrs"]["output"].update(scale=-1.0), r"node 'q' \(quantize\): output"),
    ("qparams missing", lambda h: h["nodes"][0]["attrs"].update(output=[0.1, 3]), r"output must be qparams"),
    ("cycle", lambda h: h["nodes"][1].update(inputs=["f"]), r"node 'conv' is in a cycle: conv -> conv2 -> "),
    ("dangling output", lambda h: h.update(outputs=["nope"]), r"graph output 'nope' is neither"),
    ("bad input_qparams", lambda h: h.update(input_qparams={"x": 1}), r"input_qparams\['x'\] must be qparams"),
]


@pytest.mark.parametrize("edit, match", [b[1:] for b in BAD_HEADERS], ids=[b[0] for b in BAD_HEADERS])
def test_corrupt_headers_are_file_format_errors(edit, match):
    with pytest.raises(FileFormatError, match=match):
        graph_from_arrays(_with_header(edit), "g.npz")


def test_corrupt_files_are_file_format_errors(tmp_path):
    g = _int_graph(np.random.default_rng(9))[0]
    path = tmp_path / "g.npz"
    save_graph(path, g)
    data = path.read_bytes()
    cases = {
        "not a zip": b"not an npz file at all",
        "truncated": data[: len(data) // 2],
        "last byte cut": data[:-1],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(blob)
        with pytest.raises(FileFormatError, match=str(p).replace(".", r"\.")):
            load_graph(p)
    arrays = graph_to_arrays(g)
    no_header = {k: v for k, v in arrays.items() if k != "__graph__"}
    np.savez(tmp_path / "plain.npz", **no_header)
    with pytest.raises(FileFormatError, match="no '__graph__' entry: not an npquant graph file"):
        load_graph(tmp_path / "plain.npz")
    for bad, match in [
        (np.array([1, 2]), "must be a JSON string"),
        (np.array("{"), "not valid UTF-8 JSON"),
        (np.array('{"format": 1, "format": 2}'), "has the key 'format' twice"),
        (np.array("[" * 100 + "]" * 100), "nests 100 levels deep"),
        (np.array("[1]"), "must be a JSON object"),
    ]:
        with pytest.raises(FileFormatError, match=match):
            graph_from_arrays({**arrays, "__graph__": bad}, "g.npz")
    wrong = {**arrays, "conv.weight": np.zeros((4, 3, 3), np.int8)}
    with pytest.raises(FileFormatError, match=r"node 'conv' \(qconv2d\)"):
        graph_from_arrays(wrong, "g.npz")
    with pytest.raises(FileNotFoundError):
        load_graph(tmp_path / "missing.npz")


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, path + (i,))


def test_every_header_value_replaced_by_junk_is_refused_or_valid():
    """Each value of the header (at every depth) replaced by values of other types and
    sizes: the reader returns a graph or raises FileFormatError, never anything else."""
    arrays = _arrays()
    header = json.loads(str(arrays["__graph__"]))
    junk = [None, True, -1, 2**40, 1e300, "x", [1, 2], {"a": 1}]
    outcomes = {"refused": 0, "valid": 0}
    for path in list(_paths(header))[1:]:
        for j in junk:
            h = json.loads(str(arrays["__graph__"]))
            parent = h
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = j
            try:
                graph_from_arrays({**arrays, "__graph__": np.array(json.dumps(h))}, "g.npz")
                outcomes["valid"] += 1
            except FileFormatError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 400 and outcomes["valid"] > 0, outcomes
