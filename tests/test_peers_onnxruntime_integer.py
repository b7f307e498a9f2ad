"""npquant against onnxruntime's integer kernels (MLAS), live, on the path this CPU takes.

``accumulation="mlas"`` resolves to what MLAS computes here: exact with AVX-512 VNNI or
AVX-VNNI, int16 pair saturation without (depthwise ``QLinearConv`` and ``ConvInteger``
stay exact). Activation codes span 0..255 so that pairs would saturate on a VNNI-less
CPU. The AVX2 behaviour is pinned on every CPU by ``test_fixtures_x86_avx2``.
"""

import numpy as np
import pytest

from npquant import QParams, QuantSpec
from npquant.qnn.accumulation import host_path
from npquant.qnn.conv import conv2d_accumulate, qconv2d
from npquant.qnn.linear import linear_accumulate, qlinear

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

U8 = QuantSpec(signed=False)
COUNTS = {}


def _run(node, inputs, initializers, out_type, out_name="y"):
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for k, v in inputs.items()
        ],
        [helper.make_tensor_value_info(out_name, out_type, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run([out_name], inputs)[0]


def _count(name, got, want, exact):
    c = COUNTS.setdefault(name, [0, 0, 0])
    c[0] += want.size
    c[1] += int(np.sum(got != want))
    c[2] += int(np.sum(exact != want))
    np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("m, k, n", [(1, 64, 24), (7, 33, 10), (16, 64, 24), (3, 130, 5), (40, 256, 70)])
def test_matmul_integer(m, k, n):
    rng = np.random.default_rng(m + k + n)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    za, zb = np.uint8(rng.integers(0, 256)), rng.integers(-4, 5, n).astype(np.int8)
    y = _run(
        helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"]),
        {"a": a},
        {"b": b, "za": za, "zb": zb},
        TensorProto.INT32,
    )
    x_qp = QParams(np.float32(1), int(za), U8)
    w_qp = QParams(np.ones(n, np.float32), zb.astype(np.int32), QuantSpec(axis=0))
    w = np.ascontiguousarray(b.T)
    got = linear_accumulate(a, x_qp, w, w_qp, accumulation="mlas")
    _count("MatMulInteger", got, y, linear_accumulate(a, x_qp, w, w_qp))


@pytest.mark.parametrize("m, k, n", [(7, 33, 10), (16, 64, 24), (5, 300, 9)])
def test_qlinear_matmul(m, k, n):
    rng = np.random.default_rng(10 + m + k + n)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    sa, sb = np.float32(rng.uniform(0.01, 0.05)), rng.uniform(0.002, 0.02, (1, n)).astype(np.float32)
    za, zy = np.uint8(rng.integers(0, 256)), np.uint8(rng.integers(0, 256))
    sy = np.float32(rng.uniform(0.2, 1.0))
    init = {"sa": sa, "za": za, "b": b, "sb": sb, "zb": np.zeros((1, n), np.int8), "sy": sy, "zy": zy}
    y = _run(
        helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"]),
        {"a": a},
        init,
        TensorProto.UINT8,
    )
    x_qp, y_qp = QParams(sa, int(za), U8), QParams(sy, int(zy), U8)
    w_qp = QParams(sb.ravel(), 0, QuantSpec(axis=0))
    w = np.ascontiguousarray(b.T)
    got = qlinear(a, x_qp, w, w_qp, None, y_qp, mode="fp32", accumulation="mlas")
    _count("QLinearMatMul", got, y, qlinear(a, x_qp, w, w_qp, None, y_qp, mode="fp32"))


# C, O, k, stride, pad, group: the kinds the AVX2 recordings cover (im2col, ConvSym,
# both depthwise kernels) and a pointwise one; grouped non-depthwise QLinearConv has no
# recording, so its pairing on AVX2 is not claimed
CONVS = [
    (5, 6, 3, 1, 1, 1),
    (8, 16, 3, 1, 1, 1),
    (3, 4, 5, 2, 2, 1),
    (8, 8, 3, 1, 1, 8),
    (16, 16, 3, 2, 1, 16),
    (9, 7, 1, 1, 0, 1),
]


@pytest.mark.parametrize("c, o, k, stride, pad, group", CONVS)
def test_qlinear_conv(c, o, k, stride, pad, group):
    rng = np.random.default_rng(c * 31 + o + k + group)
    x = rng.integers(0, 256, (2, c, 9, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, c // group, k, k)).astype(np.int8)
    sx, zx = np.float32(rng.uniform(0.01, 0.05)), np.uint8(rng.integers(200, 256))
    sw = rng.uniform(0.002, 0.02, o).astype(np.float32)
    sy, zy = np.float32(rng.uniform(0.1, 0.5)), np.uint8(rng.integers(0, 256))
    bias = rng.integers(-20000, 20000, o).astype(np.int32)
    init = {"sx": sx, "zx": zx, "w": w, "sw": sw, "zw": np.zeros(o, np.int8), "sy": sy, "zy": zy, "B": bias}
    node = helper.make_node(
        "QLinearConv",
        ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "B"],
        ["y"],
        strides=[stride] * 2,
        pads=[pad] * 4,
        group=group,
        kernel_shape=[k, k],
    )
    y = _run(node, {"x": x}, init, TensorProto.UINT8)
    x_qp, y_qp = QParams(sx, int(zx), U8), QParams(sy, int(zy), U8)
    w_qp = QParams(sw, 0, QuantSpec(axis=0))
    kw = dict(stride=stride, padding=pad, groups=group, mode="fp32")
    got = qconv2d(x, x_qp, w, w_qp, bias, y_qp, accumulation="mlas", **kw)
    _count("QLinearConv" + (" depthwise" if group == c else ""), got, y, qconv2d(x, x_qp, w, w_qp, bias, y_qp, **kw))


def test_conv_integer_is_exact():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 5, 7, 7)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 5, 3, 3)).astype(np.int8)
    zx = np.uint8(200)
    node = helper.make_node("ConvInteger", ["x", "w", "zx"], ["y"], pads=[1] * 4, kernel_shape=[3, 3])
    y = _run(node, {"x": x}, {"w": w, "zx": zx}, TensorProto.INT32)
    got = conv2d_accumulate(
        x, QParams(np.float32(1), int(zx), U8), w, QParams(np.float32(1), 0, QuantSpec()), padding=1
    )
    _count("ConvInteger", got, y, got)


def test_report_counts():
    print(f"MLAS path here: {host_path('mlas')}")
    for name, (n, bad, exact_bad) in sorted(COUNTS.items()):
        print(f"{name}: {n} elements compared, {bad} differ (the exact model: {exact_bad})")
        assert bad == 0 and n > 0
