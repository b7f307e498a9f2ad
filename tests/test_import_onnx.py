"""npquant.importers.onnx: quantized ONNX models (QOperator and QDQ) against onnxruntime, bit for bit.

Float models are built here with ``onnx.helper`` (opset 21), quantized with
``onnxruntime.quantization.quantize_static`` (uint8 activations, int8 weights, per-tensor
and per-channel, a seeded calibration reader), imported with :func:`from_onnx` and run;
every tensor the graph shares with the ONNX model (the quantized input, each integer
layer's output, the dequantized output) must equal onnxruntime's on this CPU
(``accumulation="mlas"``: MLAS's path here, :func:`npquant.qnn.accumulation.host_path`).
QDQ models are also imported with ``target="reference"`` and compared with
``onnx.reference.ReferenceEvaluator`` tensor by tensor: integer codes exactly, float
tensors of float ops (another summation order) to 1e-6. Also: int8 activations (VNNI
CPUs, where MLAS's sum is exact), standalone Relu / Clip between Q/DQ, an integer graph
input, a graph file round trip, and the errors.
"""

import sys

import numpy as np
import pytest

from npquant.models.graph import load_graph, save_graph
from npquant.qnn.accumulation import host_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from npquant.importers.onnx import from_onnx, onnx_intermediates  # noqa: E402

COUNTS = {}


def _init(name, a, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(a, dtype), name)


def _model(nodes, inits, x_shape, name):
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _conv(rng, name, x, o, c, k, **kw):
    node = helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, **kw)
    return node, [_init(name + "_w", rng.normal(0, 0.3, (o, c, k, k))), _init(name + "_b", rng.normal(0, 0.1, o))]


def mlp(rng):
    """MatMul + Add + Relu twice, then Gemm (transB)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], transB=1),
    ]
    inits = [
        _init("w1", rng.normal(0, 0.3, (12, 16))),
        _init("b1", rng.normal(0, 0.1, 16)),
        _init("w2", rng.normal(0, 0.3, (16, 8))),
        _init("b2", rng.normal(0, 0.1, 8)),
        _init("w3", rng.normal(0, 0.3, (5, 8))),
        _init("b3", rng.normal(0, 0.1, 5)),
    ]
    return _model(nodes, inits, (3, 12), "mlp")


def cnn(rng, asymmetric_pool=True):
    """Stride-2 conv, grouped conv with asymmetric pads, depthwise conv (SAME_UPPER), max pool
    (asymmetric pads), average pool, Flatten, Gemm."""
    n1, i1 = _conv(rng, "c1", "x", 8, 3, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    n2, i2 = _conv(rng, "c2", "r1", 8, 4, 3, group=2, pads=[0, 1, 1, 0])
    n3, i3 = _conv(rng, "c3", "r2", 8, 1, 3, group=8, auto_pad="SAME_UPPER")
    pool = ([0, 0, 1, 1], 5) if asymmetric_pool else ([1, 1, 1, 1], 6)  # (pads, output size)
    side = (pool[1] + 2 - 3) // 2 + 1
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r1"]),
        n2,
        helper.make_node("Relu", ["c2"], ["r2"]),
        n3,
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("MaxPool", ["r3"], ["p1"], kernel_shape=[2, 2], strides=[1, 1], pads=pool[0]),
        helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = (
        i1 + i2 + i3 + [_init("fc_w", rng.normal(0, 0.2, (6, 8 * side * side))), _init("fc_b", rng.normal(0, 0.1, 6))]
    )
    return _model(nodes, inits, (2, 3, 11, 11), "cnn")


def residual(rng):
    """Conv-Relu, then Conv-Relu-Conv + the skip, Add, Relu, GlobalAveragePool, Flatten, MatMul."""
    n0, i0 = _conv(rng, "c0", "x", 6, 3, 3, pads=[1, 1, 1, 1])
    n1, i1 = _conv(rng, "c1", "r0", 6, 6, 3, pads=[1, 1, 1, 1])
    n2, i2 = _conv(rng, "c2", "r1", 6, 6, 3, pads=[1, 1, 1, 1])
    nodes = [
        n0,
        helper.make_node("Relu", ["c0"], ["r0"]),
        n1,
        helper.make_node("Relu", ["c1"], ["r1"]),
        n2,
        helper.make_node("Add", ["c2", "r0"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["y"]),
    ]
    return _model(nodes, i0 + i1 + i2 + [_init("fc_w", rng.normal(0, 0.3, (6, 4)))], (2, 3, 8, 8), "residual")


def concat(rng):
    """Two convs of one input, Concat of their outputs (different scales), Reshape, batched 3-D MatMul."""
    n1, i1 = _conv(rng, "c1", "x", 4, 3, 3, pads=[1, 1, 1, 1])
    n2, i2 = _conv(rng, "c2", "x", 5, 3, 1)
    nodes = [
        n1,
        n2,
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Concat", ["r1", "c2"], ["k"], axis=1),
        helper.make_node("Reshape", ["k", "shape"], ["rs"]),
        helper.make_node("MatMul", ["rs", "fc_w"], ["y"]),
    ]
    inits = i1 + i2 + [_init("shape", [2, 9, 36], np.int64), _init("fc_w", rng.normal(0, 0.3, (36, 7)))]
    return _model(nodes, inits, (2, 3, 6, 6), "concat")


def padding(rng):
    """auto_pad SAME_LOWER (stride 2, even kernel), SAME_UPPER and VALID pools, asymmetric
    average pool padding counted or not, Reshape to a batched MatMul."""
    n1, i1 = _conv(rng, "c1", "x", 4, 3, 4, strides=[2, 2], auto_pad="SAME_LOWER")
    n2, i2 = _conv(rng, "c2", "p1", 4, 4, 2, auto_pad="VALID")
    nodes = [
        n1,
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER"),
        n2,
        helper.make_node(
            "AveragePool", ["c2"], ["p2"], kernel_shape=[3, 2], strides=[1, 1], pads=[0, 1, 2, 0], count_include_pad=1
        ),
        helper.make_node("AveragePool", ["p2"], ["p3"], kernel_shape=[2, 2], strides=[2, 1], pads=[1, 0, 0, 1]),
        helper.make_node("Reshape", ["p3", "shape"], ["rs"]),
        helper.make_node("MatMul", ["rs", "fc_w"], ["y"]),
    ]
    inits = i1 + i2 + [_init("shape", [2, 4, -1], np.int64), _init("fc_w", rng.normal(0, 0.3, (8, 3)))]
    return _model(nodes, inits, (2, 3, 9, 9), "padding")


BUILDERS = {"mlp": mlp, "cnn": cnn, "residual": residual, "concat": concat, "padding": padding}
CASES = [(m, f, pc) for m in BUILDERS for f in ("QOperator", "QDQ") for pc in (False, True)]


def _x(model, seed):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


class _Models:
    """Float and quantized models, built once per module."""

    def __init__(self, tmp):
        self.tmp, self.cache = tmp, {}

    def float(self, name, **kw):
        key = (name, "float", tuple(sorted(kw.items())))
        if key not in self.cache:
            self.cache[key] = BUILDERS[name](np.random.default_rng(len(name)), **kw)
        return self.cache[key]

    def quantized(self, name, fmt, per_channel, activations="QUInt8", **kw):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        key = (name, fmt, per_channel, activations, tuple(sorted(kw.items())))
        if key not in self.cache:
            m = self.float(name, **kw)
            src = self.tmp / f"{name}_{len(self.cache)}_float.onnx"
            dst = self.tmp / f"{name}_{len(self.cache)}_{fmt}.onnx"
            onnx.save(m, str(src))

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.feeds = iter([{"x": _x(m, s)} for s in range(4)])

                def get_next(self):
                    return next(self.feeds, None)

            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=getattr(QuantFormat, fmt),
                per_channel=per_channel,
                activation_type=getattr(QuantType, activations),
                weight_type=QuantType.QInt8,
            )
            self.cache[key] = onnx.load(str(dst))
        return self.cache[key]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice to pre-process
    return _Models(tmp_path_factory.mktemp("onnx_models"))


def _compare(key, got, want, float_rtol=None):
    """Every tensor equal; with ``float_rtol``, float tensors (computed by float ops in
    another summation order) only to that relative tolerance, integer codes still exactly."""
    c = COUNTS.setdefault(key, [0, 0, 0, 0])
    for t, v in want.items():
        assert got[t].dtype == v.dtype, (key, t)
        if float_rtol is not None and v.dtype.kind == "f":
            np.testing.assert_allclose(got[t], v, rtol=float_rtol, atol=float_rtol, err_msg=f"{key}: tensor {t!r}")
            c[3] += int(np.sum(got[t] != v))
        else:
            np.testing.assert_array_equal(got[t], v, err_msg=f"{key}: tensor {t!r}")
        c[0] += 1
        c[1] += v.size
        c[2] += int(t != "y") * v.size


def _ort_output(model, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[
        0
    ]


@pytest.mark.parametrize("name, fmt, per_channel", CASES, ids=[f"{m}-{f}-{'pc' if p else 'pt'}" for m, f, p in CASES])
def test_against_onnxruntime(models, name, fmt, per_channel):
    q = models.quantized(name, fmt, per_channel)
    g = from_onnx(q)
    assert g.kind == "integer"
    for seed in (10, 11):
        x = _x(q, seed)
        got = g.run({"x": x}, keep_intermediates=True)
        want = onnx_intermediates(q, {"x": x}, g)
        assert "y" in want and len(want) >= 4
        _compare(f"{name} {fmt} {'per-channel' if per_channel else 'per-tensor'}", got, want)
        np.testing.assert_array_equal(got["y"], _ort_output(q, x))  # the unmodified model gives the same output


S8_CASES = [(m, f) for m in ("mlp", "cnn", "residual", "concat") for f in ("QOperator", "QDQ")]


@pytest.mark.slow
@pytest.mark.skipif(host_path("mlas") != "vnni", reason="int8 activations: MLAS's int16 pair path is not modelled")
@pytest.mark.parametrize("name, fmt", S8_CASES, ids=[f"{m}-{f}" for m, f in S8_CASES])
def test_int8_activations_against_onnxruntime(models, name, fmt):
    q = models.quantized(name, fmt, True, activations="QInt8")
    g = from_onnx(q)
    assert g.qparams[g.nodes[0].outputs[0]].spec.signed
    x = _x(q, 12)
    _compare(
        f"{name} {fmt} per-channel, int8 activations",
        g.run({"x": x}, keep_intermediates=True),
        onnx_intermediates(q, {"x": x}, g),
    )


def test_int8_activations_on_the_avx2_path_are_refused_clearly(models):
    # MLAS's AVX2 kernels pair uint8 activations with int8 weights (vpmaddubsw); int8
    # activations take another path npquant does not model: an error, never wrong codes
    q = models.quantized("mlp", "QOperator", True, activations="QInt8")
    with pytest.raises(ValueError, match=r"node 'QLinearMatMul.*int16 pair saturation.*int8 activations"):
        from_onnx(q, accumulation="mlas_avx2")
    assert from_onnx(q, accumulation="exact").kind == "integer"


def test_qdq_is_fused_by_onnxruntime(models, tmp_path):
    # the premise of target="onnxruntime": onnxruntime runs QDQ groups as QOperator kernels
    for name in BUILDERS:
        q = models.quantized(name, "QDQ", True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
        float_ops = {"Conv", "MatMul", "Gemm", "Add", "AveragePool", "GlobalAveragePool", "Concat", "Relu"}
        assert not float_ops & set(ops), (name, ops)
        assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1, (name, ops)


REFERENCE_CASES = [(m, pc) for m in ("mlp", "cnn", "residual", "concat") for pc in (False, True)]


@pytest.mark.parametrize(
    "name, per_channel", REFERENCE_CASES, ids=[f"{m}-{'pc' if p else 'pt'}" for m, p in REFERENCE_CASES]
)
def test_qdq_against_onnx_reference(models, name, per_channel):
    # onnx 1.23's reference MaxPool reads asymmetric pads in another order (its output shape
    # differs from onnxruntime's), so the CNN here pads its max pool symmetrically
    kw = {"asymmetric_pool": False} if name == "cnn" else {}
    q = models.quantized(name, "QDQ", per_channel, **kw)
    g = from_onnx(q, target="reference")
    assert g.kind == "mixed"
    x = _x(q, 20)
    got = g.run({"x": x}, keep_intermediates=True)
    want = onnx_intermediates(q, {"x": x}, g, evaluator="reference")
    assert len(want) >= 8
    _compare(
        f"{name} QDQ {'per-channel' if per_channel else 'per-tensor'} vs onnx.reference", got, want, float_rtol=1e-6
    )


def _qdq_activations_model():
    """Hand-written QDQ: Relu between equal qparams (runs on codes), Relu and Clip(0, 6)
    between different qparams (float between exact Q/DQ), Clip(0, inf), Identity."""
    s = {"s0": 0.05, "s1": 0.03, "s2": 0.02}
    inits = [_init(k, v) for k, v in s.items()] + [
        _init("z0", 128, np.uint8),
        _init("z1", 0, np.uint8),
        _init("z2", 3, np.uint8),
        _init("lo", 0.0),
        _init("hi", 6.0),
    ]

    def qdq(x, s_, z, out):
        return [
            helper.make_node("QuantizeLinear", [x, s_, z], [out + "_q"]),
            helper.make_node("DequantizeLinear", [out + "_q", s_, z], [out]),
        ]

    nodes = qdq("x", "s0", "z0", "a")
    nodes += [helper.make_node("Relu", ["a"], ["r1"], name="relu_same")] + qdq("r1", "s0", "z0", "b")
    nodes += [helper.make_node("Relu", ["b"], ["r2"], name="relu_requant")] + qdq("r2", "s1", "z1", "c")
    nodes += [helper.make_node("Clip", ["c", "lo", "hi"], ["r3"], name="clip6")] + qdq("r3", "s2", "z2", "d")
    nodes += [helper.make_node("Clip", ["d", "lo"], ["r4"], name="clip0"), helper.make_node("Identity", ["r4"], ["e"])]
    nodes += qdq("e", "s2", "z2", "y")
    return _model(nodes, inits, (2, 3, 5, 7), "activations")


@pytest.mark.parametrize("target", ["onnxruntime", "reference"])
def test_standalone_relu_and_clip(target):
    m = _qdq_activations_model()
    g = from_onnx(m, target=target)
    ops = {n.name: n.op for n in g.nodes}
    assert ops["relu_same"] == "qrelu" and ops["relu_requant"] == "relu" and ops["clip6"] == "relu6"
    x = _x(m, 1) * 4
    got = g.run({"x": x}, keep_intermediates=True)
    want = onnx_intermediates(m, {"x": x}, g, evaluator="onnxruntime" if target == "onnxruntime" else "reference")
    assert {"a_q", "b_q", "c_q", "d_q", "y_q", "y"} <= set(want)
    _compare(f"activations QDQ vs {target}", got, want)


def test_reference_target_of_qoperator_conv_uses_onnx_mode(models):
    q = models.quantized("residual", "QOperator", False)
    g = from_onnx(q, target="reference")
    convs = [n for n in g.nodes if n.op == "qconv2d"]
    assert convs and all(n.attrs["mode"] == "onnx" and n.attrs["accumulation"] == "exact" for n in convs)


def test_float_model_and_options(models, tmp_path):
    m = models.float("residual")
    g = from_onnx(m)
    assert g.kind == "float"
    x = _x(m, 3)
    np.testing.assert_allclose(g(x), _ort_output(m, x), rtol=1e-5, atol=1e-5)
    q = models.quantized("cnn", "QOperator", True)
    g = from_onnx(q, accumulation="exact", name="net")
    assert g.name == "net" and {n.attrs["accumulation"] for n in g.nodes if n.op == "qconv2d"} == {"exact"}
    # ONNX pads (top, left, bottom, right) -> npquant (top, bottom, left, right); SAME_UPPER resolved
    convs = [n for n in g.nodes if n.op == "qconv2d"]
    assert convs[1].attrs["padding"] == [0, 1, 1, 0] and convs[1].attrs["groups"] == 2
    assert convs[2].attrs["padding"] == [1, 1, 1, 1] and convs[2].attrs["groups"] == 8
    for m in (q, models.quantized("mlp", "QDQ", False)):  # qlinear_avgpool2d, qconstant, qadd...
        path = tmp_path / f"{m.graph.name}.npz"
        save_graph(path, from_onnx(m))
        x = _x(m, 5)
        np.testing.assert_array_equal(load_graph(path)(x), _ort_output(m, x))
    with pytest.raises(ValueError, match="target"):
        from_onnx(q, target="tflite")
    with pytest.raises(ValueError, match="accumulation"):
        from_onnx(q, accumulation="fast")
    with pytest.raises(TypeError, match="model"):
        from_onnx(3)


def test_integer_input_and_output():
    # a QOperator graph on codes end to end: the input's qparams come from the QLinearConv that reads it
    rng = np.random.default_rng(7)
    inits = [
        _init("sx", 0.04),
        _init("zx", 120, np.uint8),
        _init("w", rng.integers(-127, 128, (4, 3, 3, 3)), np.int8),
        _init("sw", rng.uniform(0.005, 0.02, 4)),
        _init("zw", np.zeros(4), np.int8),
        _init("sy", 0.3),
        _init("zy", 100, np.uint8),
        _init("b", rng.integers(-3000, 3000, 4), np.int32),
    ]
    node = helper.make_node(
        "QLinearConv",
        ["xq", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"],
        ["yq"],
        strides=[2, 1],
        pads=[1, 0, 2, 1],
        name="conv",
    )
    g = helper.make_graph(
        [node],
        "codes",
        [helper.make_tensor_value_info("xq", TensorProto.UINT8, [2, 3, 7, 6])],
        [helper.make_tensor_value_info("yq", TensorProto.UINT8, None)],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    gr = from_onnx(m)
    assert gr.input_qparams["xq"].zero_point == 120
    xq = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    _compare(
        "QLinearConv on integer input",
        gr.run({"xq": xq}, keep_intermediates=True),
        onnx_intermediates(m, {"xq": xq}, gr),
    )


def test_dynamic_quantization_is_refused(models, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    onnx.save(models.float("mlp"), str(tmp_path / "f.onnx"))
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "d.onnx"))
    with pytest.raises(ValueError, match="dynamic quantization"):
        from_onnx(str(tmp_path / "d.onnx"))


def test_unsupported_op_names_node_and_type():
    rng = np.random.default_rng(0)
    m = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Sigmoid", ["h"], ["y"], name="gate"),
        ],
        [_init("w", rng.normal(0, 1, (4, 3)))],
        (2, 4),
        "bad",
    )
    with pytest.raises(ValueError, match=r"node 'gate' \(Sigmoid\) is not supported.*op type 'Sigmoid'"):
        from_onnx(m)
    m = _model([helper.make_node("LayerNormalization", ["x", "w"], ["y"])], [_init("w", np.ones(4))], (2, 4), "ln")
    with pytest.raises(ValueError, match=r"node 'LayerNormalization_0' \(LayerNormalization\)"):
        from_onnx(m)


def test_malformed_model_names_what_is_expected():
    inits = [
        _init("sx", 0.1),
        _init("zx", 0, np.uint8),
        _init("sw", 0.05),
        _init("zw", 0, np.int8),
        _init("sy", 0.2),
        _init("zy", 0, np.uint8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["yq"], name="conv"),
        helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"]),
    ]
    m = _model(nodes, inits, (1, 2, 5, 5), "no_weights")  # the initializer "w" is missing
    with pytest.raises(
        ValueError,
        match=r"node 'conv' \(QLinearConv\): input 3 \(w\) must be a constant: expected an "
        r"initializer or Constant node named 'w', found none",
    ):
        from_onnx(m)
    nodes[1] = helper.make_node("QLinearConv", ["xq", "sx", "zx"], ["yq"], name="conv")
    with pytest.raises(ValueError, match=r"node 'conv' \(QLinearConv\): missing input 3"):
        from_onnx(_model(nodes, inits, (1, 2, 5, 5), "short"))
    nodes[1] = helper.make_node("QLinearConv", ["xz", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["yq"], name="conv")
    with pytest.raises(ValueError, match="tensor 'xz', which is neither a graph input"):
        from_onnx(_model(nodes, inits + [_init("w", np.ones((2, 2, 3, 3)), np.int8)], (1, 2, 5, 5), "dangling"))


def test_without_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModuleNotFoundError, match="peers"):
        from_onnx("model.onnx")


def test_report_counts():
    # runs last in this module: every comparison above was exact
    print(f"\nMLAS path here: {host_path('mlas')}")
    for key, (tensors, n, inter, ulp) in sorted(COUNTS.items()):
        print(
            f"{key}: {tensors} tensors, {n} elements ({inter} in intermediates) equal"
            + (f", except {ulp} float32 elements within 1e-6" if ulp else "")
        )
        assert n > 0
