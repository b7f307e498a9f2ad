"""npquant.models.convert.quantize_graph: post-training quantization of float graphs.

A chain graph gives the codes of quantize_model on the same Sequential; residual and concat
graphs (built by hand, and one imported from PyTorch) agree with the float graph, every
integer node agrees with its own float computation on its dequantized inputs within one
step, the add and concat nodes equal npquant.qnn.add / requantization computed directly,
the graphs round-trip through save_graph/load_graph, and what cannot be quantized is
refused naming the node.
"""

import numpy as np
import pytest
from conftest import slow_after

from npquant import QParams, QuantSpec, dequantize, fake_quantize, quantize
from npquant.models import nn
from npquant.models.convert import GRAPH_ADD_MODES, quantize_graph, quantize_model
from npquant.models.graph import Graph, Node, load_graph, save_graph
from npquant.qnn.add import add as qnn_add
from npquant.requant.modes import REQUANT_MODES


def _w(rng, *shape, s=0.3):
    return rng.normal(0, s, shape).astype(np.float32)


def _bn(rng, c):
    return dict(
        weight=rng.uniform(0.5, 1.5, c).astype(np.float32),
        bias=_w(rng, c, s=0.1),
        running_mean=_w(rng, c, s=0.1),
        running_var=rng.uniform(0.5, 2, c).astype(np.float32),
    )


# --------------------------------------------------------------------------- chain


def _chain(rng):
    """The same chain as a Sequential and as a float graph: conv+bn+relu, max pool,
    conv+relu6, avg pool counting padding, a standalone relu, flatten, linear."""
    w1, b1, bn, w2 = _w(rng, 6, 1, 3, 3), _w(rng, 6, s=0.1), _bn(rng, 6), _w(rng, 8, 6, 3, 3)
    wf, bf = _w(rng, 10, 32, s=0.2), _w(rng, 10)
    model = nn.Sequential(
        [
            nn.Conv2d(w1, b1, padding=1, name="conv1"),
            nn.BatchNorm2d(**bn, name="bn1"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w2, None, padding=1, name="conv2"),
            nn.ReLU6(),
            nn.AvgPool2d(3, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(wf, bf, name="fc"),
        ]
    )
    nodes = [
        Node("conv1", "conv2d", ["x"], ["h0"], {"padding": 1}, {"weight": w1, "bias": b1}),
        Node("bn1", "batchnorm2d", ["h0"], ["h1"], {}, bn),
        Node("relu1", "relu", ["h1"], ["h2"]),
        Node("pool1", "maxpool2d", ["h2"], ["h3"], {"kernel_size": 2}),
        Node("conv2", "conv2d", ["h3"], ["h4"], {"padding": 1}, {"weight": w2}),
        Node("relu6", "relu6", ["h4"], ["h5"]),
        Node("pool2", "avgpool2d", ["h5"], ["h6"], {"kernel_size": 3, "stride": 2, "padding": 1}),
        Node("relu2", "relu", ["h6"], ["h7"]),
        Node("flat", "flatten", ["h7"], ["h8"]),
        Node("fc", "linear", ["h8"], ["y"], {}, {"weight": wf, "bias": bf}),
    ]
    return model, Graph(nodes, ["x"], ["y"], name="chain")


CHAIN_CASES = slow_after(
    [(m, "uint8", True, 8) for m in REQUANT_MODES] + [("tflite", "int8", False, 4), ("onnx", "int8", True, 6)], 2
)


@pytest.mark.parametrize(("mode", "act_dtype", "per_channel", "bits"), CHAIN_CASES)
def test_chain_equals_quantize_model_at_every_tensor(mode, act_dtype, per_channel, bits):
    rng = np.random.default_rng(0)
    model, g = _chain(rng)
    calib = rng.normal(0, 1, (24, 1, 8, 8)).astype(np.float32)
    x = rng.normal(0, 1, (5, 1, 8, 8)).astype(np.float32)
    kw = dict(mode=mode, per_channel=per_channel, weight_bits=bits, batch_size=10)
    qm = quantize_model(model, calib, activation_signed=act_dtype == "int8", **kw)
    qg = quantize_graph(g, calib, act_dtype=act_dtype, **kw)
    assert qg.kind == "integer" and [n.op for n in qg.nodes] == [
        "quantize",
        "qconv2d",
        "qmaxpool2d",
        "qconv2d",
        "qavgpool2d",
        "qrelu",
        "qflatten",
        "qlinear",
        "dequantize",
    ]
    env = qg.run(x, keep_intermediates=True)
    h = qm.quantize_input(x)
    want = [("x_q", h)]
    for layer, t in zip(qm.layers, ["h2", "h3", "h5", "h6", "h7", "h8", "y_q"]):
        h = layer(h)
        want.append((t, h))
    for t, v in want:
        assert env[t].dtype == np.dtype(act_dtype), t
        np.testing.assert_array_equal(env[t], v, err_msg=t)
    np.testing.assert_array_equal(env["y"], qm(x))
    assert float(qg.qparams["y_q"].scale) == float(qm.output_qp.scale)


# ------------------------------------------------------------- residual and concat


def _residual_graph(rng):
    """stem conv+bn+relu (h1, read three times); residual branch conv+relu, conv; add with
    h1 and a standalone relu (h6, also a graph output); a second branch conv2d whose output
    is read by a relu and by the concat (not fused); concat, max pool, avg pool, flatten,
    linear, reshape."""
    nodes = [
        Node("stem", "conv2d", ["x"], ["h0"], {"padding": 1}, {"weight": _w(rng, 4, 3, 3, 3), "bias": _w(rng, 4)}),
        Node("bn", "batchnorm2d", ["h0"], ["h1p"], {}, _bn(rng, 4)),
        Node("stem_relu", "relu", ["h1p"], ["h1"]),
        Node("b1", "conv2d", ["h1"], ["h2"], {"padding": 1}, {"weight": _w(rng, 4, 4, 3, 3), "bias": _w(rng, 4)}),
        Node("b1_relu", "relu", ["h2"], ["h3"]),
        Node("b2", "conv2d", ["h3"], ["h4"], {"padding": 1}, {"weight": _w(rng, 4, 4, 3, 3)}),
        Node("add", "add", ["h4", "h1"], ["h5"]),
        Node("add_relu", "relu", ["h5"], ["h6"]),
        Node("c", "conv2d", ["h1"], ["c0"], {}, {"weight": _w(rng, 2, 4, 1, 1, s=0.6), "bias": _w(rng, 2)}),
        Node("c_relu6", "relu6", ["c0"], ["c1"]),
        Node("cat", "concat", ["h6", "c1", "c0"], ["k"], {"axis": 1}),
        Node("mp", "maxpool2d", ["k"], ["m"], {"kernel_size": 2}),
        Node("ap", "avgpool2d", ["m"], ["a"], {"kernel_size": 2}),
        Node("flat", "flatten", ["a"], ["f"]),
        Node("fc", "linear", ["f"], ["logits"], {}, {"weight": _w(rng, 6, 8 * 2 * 2, s=0.3), "bias": _w(rng, 6)}),
        Node("rs", "reshape", ["logits"], ["y"], {"shape": [0, 6]}),
    ]
    return Graph(nodes, ["x"], ["y", "h6"], name="residual")


def _local_float(qg, node, env):
    """The float computation of an integer node on its dequantized input codes (dequantized
    weights, bias ``b_q S_x S_w``), then quantized to its output's qparams."""
    ins = [dequantize(env[t], qg.qparams[t]) for t in node.inputs]
    out_qp = qg.qparams.get(node.outputs[0])
    layer = qg.layer(node.name)
    if node.op in ("qconv2d", "qlinear"):
        w = dequantize(layer.w_q, layer.w_qp)
        sw = np.broadcast_to(layer.w_qp.scale, (w.shape[0],)).astype(np.float32)
        b = None if layer.bias_q is None else layer.bias_q.astype(np.float32) * np.float32(layer.x_qp.scale) * sw
        if node.op == "qlinear":
            y = nn.Linear(w, b)(ins[0])
        else:
            a = node.attrs
            y = nn.Conv2d(w, b, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])(
                ins[0]
            )
        act = node.attrs["activation"]
        y = y if act is None else np.clip(y, 0, 6 if act == "relu6" else None)
    elif node.op == "qadd":
        y = ins[0] + ins[1]
    elif node.op in ("qconcat", "qlinear_concat"):
        y = np.concatenate(ins, axis=node.attrs["axis"])
    elif node.op == "qmaxpool2d":
        y = nn.MaxPool2d(2)(ins[0])
    elif node.op == "qavgpool2d":
        y = nn.AvgPool2d(2)(ins[0])
    elif node.op == "qrelu":
        y = np.clip(ins[0], 0, 6 if node.attrs["activation"] == "relu6" else None)
    elif node.op in ("qflatten", "qreshape"):
        y = ins[0].reshape(env[node.outputs[0]].shape)
    else:
        raise AssertionError(node.op)
    return quantize(y, out_qp)


MODES_DTYPES = slow_after([(m, "uint8") for m in REQUANT_MODES] + [("tflite", "int8"), ("onnx", "int8")], 1)


@pytest.mark.parametrize(("mode", "act_dtype"), MODES_DTYPES)
def test_residual_concat_graph(mode, act_dtype, tmp_path):
    rng = np.random.default_rng(1)
    g = _residual_graph(rng)
    calib = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    x = rng.normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    qg = quantize_graph(g, calib, mode=mode, act_dtype=act_dtype)
    ops = {n.name: n.op for n in qg.nodes}
    # fusion: b1+relu and stem(+bn)+relu fuse; c's output is read twice, so its relu6 stays
    assert ops["stem"] == "qconv2d" and qg.node("stem").outputs == ("h1",) and "stem_relu" not in ops
    assert qg.node("b1").attrs["activation"] == "relu" and qg.node("b1").outputs == ("h3",)
    assert qg.node("c").attrs["activation"] is None and ops["c_relu6"] == "qrelu"
    assert ops["add"] == "qadd" and qg.node("add").attrs["mode"] == GRAPH_ADD_MODES[mode]
    assert ops["cat"] == ("qlinear_concat" if mode == "onnx" else "qconcat")
    assert qg.inputs == g.inputs and qg.outputs == g.outputs

    fenv = g.run(x, keep_intermediates=True)
    env = qg.run(x, keep_intermediates=True)
    # end to end: the dequantized outputs against the float graph
    y, yq = fenv["y"], env["y"]
    err = np.abs(yq - y).max() / np.abs(y).max()
    assert err < 0.05, err
    assert (yq.argmax(1) == y.argmax(1)).mean() >= 0.9
    # every tensor's codes against the float tensor fake-quantized with its qparams, on
    # calibration inputs (no value beyond a calibrated range): weight rounding and the
    # errors of earlier layers accumulate (measured: at most 3 or 4 steps, at most 12-20% of
    # a tensor's values more than one step off, the most in the logits)
    fcal, qcal = g.run(calib[:16], keep_intermediates=True), qg.run(calib[:16], keep_intermediates=True)
    for t, qp in qg.qparams.items():
        ft = t[:-2] if t.endswith("_q") else t
        steps = np.abs(dequantize(qcal[t], qp) - fake_quantize(fcal[ft], qp)) / np.float32(qp.scale)
        assert steps.max() <= 4.01 and (steps > 1.01).mean() <= 0.25, (t, steps.max())
    # each node against its own float computation on its dequantized inputs: within 1 step
    for n in qg.nodes:
        if n.op in ("quantize", "dequantize"):
            continue
        d = np.abs(env[n.outputs[0]].astype(np.int32) - _local_float(qg, n, env).astype(np.int32))
        assert d.max() <= (0 if n.op in ("qmaxpool2d", "qrelu", "qflatten", "qreshape") else 1), (n.name, d.max())
    # save and load
    save_graph(tmp_path / "q.npz", qg)
    back = load_graph(tmp_path / "q.npz")
    assert back == qg
    env2 = back.run(x[:4], keep_intermediates=True)
    for t in env:
        np.testing.assert_array_equal(env2[t], env[t][:4], err_msg=t)


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_add_and_concat_equal_a_direct_computation(mode):
    rng = np.random.default_rng(2)
    g = _residual_graph(rng)
    qg = quantize_graph(g, rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32), mode=mode)
    env = qg.run(rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32), keep_intermediates=True)
    (a_qp, b_qp), y_qp = (qg.qparams[t] for t in ("h4", "h1")), qg.qparams["h5"]
    want = qnn_add(
        env["h4"],
        np.float32(a_qp.scale),
        int(a_qp.zero_point),
        env["h1"],
        np.float32(b_qp.scale),
        int(b_qp.zero_point),
        np.float32(y_qp.scale),
        int(y_qp.zero_point),
        qmin=0,
        qmax=255,
        mode=GRAPH_ADD_MODES[mode],
    )
    np.testing.assert_array_equal(env["h5"], want)
    k_qp = qg.qparams["k"]
    method = "divide" if mode == "onnx" else "torch"
    parts = [quantize(dequantize(env[t], qg.qparams[t]), k_qp, method=method) for t in ("h6_q", "c1", "c0")]
    np.testing.assert_array_equal(env["k"], np.concatenate(parts, axis=1))
    # c1 has c0's qparams (relu6 keeps them): its requantization is a copy
    np.testing.assert_array_equal(qg.qparams["c1"].scale, qg.qparams["c0"].scale)


@pytest.mark.slow  # a torch model end to end; the JIT-off pass runs the smaller graph tests
def test_from_torch_module_with_a_skip_connection(tmp_path):
    torch = pytest.importorskip("torch")
    from npquant.importers.torch import from_torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.c1 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.fc = torch.nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            h = torch.relu(self.bn(self.stem(x)))
            y = torch.relu(self.c2(torch.relu(self.c1(h))) + h)
            z = torch.nn.functional.max_pool2d(torch.cat([y, h], 1), 2)
            return self.fc(torch.flatten(z, 1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.1, 0.1)
        net.bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    rng = np.random.default_rng(3)
    calib = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    x = rng.normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    g = from_torch(net, torch.from_numpy(x[:2]))
    qg = quantize_graph(g, calib)
    assert {"qadd", "qconcat", "qrelu", "qconv2d", "qlinear"} <= {n.op for n in qg.nodes}
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    yq = qg(x)
    err = np.abs(yq - y).max()
    # held-out logits beyond the calibrated range saturate (measured: 9.2 steps, 7.3% of the
    # largest logit); on calibration inputs the error is rounding only (measured: 1.35 steps)
    assert err / np.abs(y).max() < 0.1
    assert (yq.argmax(1) == y.argmax(1)).mean() >= 0.9
    with torch.no_grad():
        yc = net(torch.from_numpy(calib[:16])).numpy()
    assert np.abs(qg(calib[:16]) - yc).max() <= 3 * float(qg.qparams["fc_q"].scale)
    fenv, env = g.run(x, keep_intermediates=True), qg.run(x, keep_intermediates=True)
    shared = [t for t in qg.qparams if t in fenv]
    assert len(shared) >= 6  # the intermediates compare by their torch.fx names
    for n in qg.nodes:
        if n.op not in ("quantize", "dequantize"):
            d = np.abs(env[n.outputs[0]].astype(np.int32) - _local_float(qg, n, env).astype(np.int32))
            assert d.max() <= 1, n.name
    save_graph(tmp_path / "t.npz", qg)
    np.testing.assert_array_equal(load_graph(tmp_path / "t.npz")(x), yq)


# -------------------------------------------------------------------------- errors


def test_errors_name_the_node():
    rng = np.random.default_rng(4)
    g = _residual_graph(rng)
    calib = rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"node 'add' \(add\).*act_dtype='uint8'"):
        quantize_graph(g, calib, mode="fp32", act_dtype="int8")
    with pytest.raises(ValueError, match="act_dtype"):
        quantize_graph(g, calib, act_dtype="int16")
    with pytest.raises(ValueError, match="mode"):
        quantize_graph(g, calib, mode="tflite_double")
    with pytest.raises(ValueError, match="observer"):
        quantize_graph(g, calib, observer="max")
    w = _w(rng, 3, 3, 1, 1)
    pad = Graph(
        [
            Node("c", "conv2d", ["x"], ["h"], {}, {"weight": w}),
            Node("p", "pad2d", ["h"], ["y"], {"padding": [1, 1, 1, 1]}),
        ],
        ["x"],
        ["y"],
    )
    with pytest.raises(ValueError, match=r"node 'p' \(pad2d\) cannot be quantized"):
        quantize_graph(pad, calib)
    # a batch norm whose conv output is read elsewhere does not fold
    bn = Graph(
        [
            Node("c", "conv2d", ["x"], ["h"], {}, {"weight": w}),
            Node("bn", "batchnorm2d", ["h"], ["b"], {}, _bn(rng, 3)),
            Node("add", "add", ["b", "h"], ["y"]),
        ],
        ["x"],
        ["y"],
    )
    with pytest.raises(ValueError, match=r"node 'bn' \(batchnorm2d\) cannot be quantized"):
        quantize_graph(bn, calib)
    qg = quantize_graph(g, calib)
    with pytest.raises(ValueError, match="must be a float graph"):
        quantize_graph(qg, calib)
    with pytest.raises(TypeError, match="graph must be"):
        quantize_graph(nn.Sequential([nn.ReLU()]), calib)
    two = Graph([Node("add", "add", ["a", "b"], ["y"])], ["a", "b"], ["y"])
    with pytest.raises(ValueError, match="missing the graph input 'b'"):
        quantize_graph(two, {"a": calib})
    with pytest.raises(ValueError, match="one batch size"):
        quantize_graph(two, [calib, calib[:2]])
    codes = Graph(
        [Node("r", "qrelu", ["x"], ["y"])],
        ["x"],
        ["y"],
        input_qparams={"x": QParams(np.float32(0.1), 0, QuantSpec(signed=False))},
    )
    with pytest.raises(ValueError, match="must be a float graph"):
        quantize_graph(codes, calib)
    ident = Graph([Node("r", "relu", ["x"], ["y"])], ["x"], ["y", "x"])
    with pytest.raises(ValueError, match="graph output 'x' is a graph input"):
        quantize_graph(ident, calib)


def test_two_inputs_and_names_that_collide():
    rng = np.random.default_rng(5)
    nodes = [
        Node("add", "add", ["a", "b"], ["s"]),
        Node("relu", "relu", ["s"], ["a_q"]),
        Node("cat", "concat", ["a_q", "b"], ["y"]),
    ]
    g = Graph(nodes, ["a", "b"], ["y"])
    a, b = rng.normal(0, 1, (2, 8, 3)).astype(np.float32), rng.uniform(0, 2, (8, 3)).astype(np.float32)
    qg = quantize_graph(g, {"b": b[None].repeat(2, 0), "a": a})
    assert [n.op for n in qg.nodes] == ["quantize", "quantize", "qadd", "qrelu", "qconcat", "dequantize"]
    assert qg.node("quantize_a").outputs == ("a_q_2",)  # "a_q" is a tensor of the float graph
    y = g.run([a, b[None].repeat(2, 0)])["y"]
    assert np.abs(qg(a, b[None].repeat(2, 0)) - y).max() <= 2 * float(qg.qparams["y_q"].scale)
