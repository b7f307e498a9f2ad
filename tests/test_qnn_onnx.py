"""Integer linear and conv2d against ONNX's reference operators, bit for bit.

QLinearMatMul and QLinearConv must equal ``mode="onnx"``; MatMulInteger and ConvInteger
must equal the int32 accumulators. The reference QLinearConv adds the int32 bias to the
accumulator before scaling, computes ``acc * float32(S_x S_w / S_y) + Z_y`` in float64,
clips to the 8-bit range and then rounds half to even; clipping to integer bounds before
rounding gives what rounding first does, so this is ``mode="onnx"``.
Skipped when ``onnx`` is not installed; CI installs it.
"""

import numpy as np
import pytest

from npquant import QParams, QuantSpec
from npquant.qnn.conv import conv2d_accumulate, qconv2d
from npquant.qnn.linear import linear_accumulate, qlinear

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

ONNX_TYPES = {
    np.dtype(np.uint8): TP.UINT8,
    np.dtype(np.int8): TP.INT8,
    np.dtype(np.float32): TP.FLOAT,
    np.dtype(np.int32): TP.INT32,
}


def run_op(op, inputs, out_dtype, **attrs):
    """One node; ``inputs`` is a list of (name, array), all graph inputs."""
    vis = [helper.make_tensor_value_info(n, ONNX_TYPES[a.dtype], a.shape) for n, a in inputs]
    node = helper.make_node(op, [n for n, _ in inputs], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", vis, [helper.make_tensor_value_info("y", ONNX_TYPES[np.dtype(out_dtype)], None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, dict(inputs))[0]


def spec_of(dtype, axis=None):
    return QuantSpec(8, signed=np.dtype(dtype) == np.int8, axis=axis)


def codes(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def scalar(rng, dtype):
    return np.array(codes(rng, dtype, ()), dtype)


def out_qparams(rng, acc_real, y_t):
    """An output scale and zero point that cover most of ``acc_real`` (few saturated codes)."""
    info = np.iinfo(y_t)
    lo, hi = np.percentile(acc_real, [5, 95])
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    sy = np.float32(max(hi - lo, 1e-3) / 255 * rng.uniform(0.8, 1.2))
    zy = np.clip(np.rint(info.min - lo / sy), info.min, info.max)
    return np.array(sy, np.float32), np.array(zy, y_t)


TYPE_COMBOS = [
    (np.uint8, np.uint8, np.uint8),
    (np.int8, np.int8, np.int8),
    (np.uint8, np.int8, np.int8),
    (np.int8, np.uint8, np.uint8),
    (np.uint8, np.int8, np.uint8),
]


COUNTS = {}


def _same(op, got, ref):
    """assert_array_equal, and count the compared elements for the report."""
    np.testing.assert_array_equal(got, ref)
    c = COUNTS.setdefault(op, [0, 0])
    c[0] += np.asarray(ref).size
    c[1] += int((np.asarray(got) != np.asarray(ref)).sum())


@pytest.mark.parametrize("types", TYPE_COMBOS)
@pytest.mark.parametrize("shape", [(7, 33, 5), (1, 1, 1), (1, 64, 3), (4, 5, 1), (32, 70, 40)])
def test_qlinear_matmul(types, shape):
    a_t, b_t, y_t = types
    m, k, n = shape
    rng = np.random.default_rng(k * 7 + n)
    for _ in range(3):
        a, b = codes(rng, a_t, (m, k)), codes(rng, b_t, (k, n))
        za, zb = scalar(rng, a_t), scalar(rng, b_t)
        sa, sb = (np.array(rng.uniform(0.001, 0.05), np.float32) for _ in range(2))
        acc = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
        sy, zy = out_qparams(rng, acc * float(sa * sb), y_t)
        ref = run_op(
            "QLinearMatMul",
            [("a", a), ("sa", sa), ("za", za), ("b", b), ("sb", sb), ("zb", zb), ("sy", sy), ("zy", zy)],
            y_t,
        )
        got = qlinear(
            a,
            QParams(sa, za, spec_of(a_t)),
            b.T,
            QParams(sb, zb, spec_of(b_t)),
            None,
            QParams(sy, zy, spec_of(y_t)),
            mode="onnx",
        )
        assert got.dtype == ref.dtype
        _same("QLinearMatMul", got, ref)
        folded = qlinear(
            a,
            QParams(sa, za, spec_of(a_t)),
            b.T,
            QParams(sb, zb, spec_of(b_t)),
            None,
            QParams(sy, zy, spec_of(y_t)),
            mode="onnx",
            form="folded",
            backend="numpy",
        )
        _same("QLinearMatMul", folded, ref)


@pytest.mark.parametrize("types", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("mkn", [(6, 29, 4), (40, 97, 33)])
def test_matmul_integer(types, per_column, mkn):
    a_t, b_t = types
    rng = np.random.default_rng(11)
    m, k, n = mkn
    a, b = codes(rng, a_t, (m, k)), codes(rng, b_t, (k, n))
    za = scalar(rng, a_t)
    zb = codes(rng, b_t, (n,)) if per_column else scalar(rng, b_t)
    ref = run_op("MatMulInteger", [("a", a), ("b", b), ("za", za), ("zb", zb)], np.int32)
    w_qp = QParams(np.ones(n) if per_column else 1.0, zb, spec_of(b_t, 0 if per_column else None))
    for form in ("direct", "folded"):
        got = linear_accumulate(a, QParams(1.0, za, spec_of(a_t)), b.T, w_qp, form=form)
        assert got.dtype == ref.dtype == np.int32
        _same("MatMulInteger", got, ref)


# (name, x shape, w shape, group, strides, pads as ONNX's (top, left, bottom, right), dilations)
CONV_CASES = [
    ("plain", (2, 3, 6, 7), (4, 3, 3, 3), 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ("padded", (1, 3, 5, 5), (2, 3, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    ("asymmetric pads", (1, 2, 6, 5), (3, 2, 3, 2), 1, (1, 1), (0, 2, 1, 3), (1, 1)),
    ("strides", (2, 2, 9, 8), (3, 2, 3, 3), 1, (2, 3), (1, 0, 1, 2), (1, 1)),
    ("dilations", (1, 2, 8, 9), (2, 2, 3, 2), 1, (1, 2), (2, 1, 0, 1), (2, 3)),
    ("groups", (1, 6, 5, 5), (4, 3, 3, 3), 2, (1, 1), (1, 1, 1, 1), (1, 1)),
    ("depthwise", (2, 4, 6, 6), (4, 1, 3, 3), 4, (2, 2), (1, 1, 1, 1), (1, 1)),
    ("depthwise x2", (1, 3, 5, 4), (6, 1, 3, 3), 3, (1, 1), (2, 0, 1, 1), (2, 1)),
    ("stride > kernel", (1, 2, 9, 9), (2, 2, 2, 2), 1, (4, 3), (0, 0, 1, 1), (1, 1)),
]


def conv_attrs(group, strides, pads, dilations):
    return dict(group=group, strides=list(strides), pads=list(pads), dilations=list(dilations))


def npq_geometry(group, strides, pads, dilations):
    t, l, b, r = pads
    return dict(groups=group, stride=strides, padding=(t, b, l, r), dilation=dilations)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("types", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_conv_integer(case, types):
    _, xs, ws, group, strides, pads, dil = case
    x_t, w_t = types
    rng = np.random.default_rng(len(case[0]))
    x, w = codes(rng, x_t, xs), codes(rng, w_t, ws)
    zx, zw = scalar(rng, x_t), scalar(rng, w_t)
    ref = run_op(
        "ConvInteger", [("x", x), ("w", w), ("zx", zx), ("zw", zw)], np.int32, **conv_attrs(group, strides, pads, dil)
    )
    got = conv2d_accumulate(
        x,
        QParams(1.0, zx, spec_of(x_t)),
        w,
        QParams(1.0, zw, spec_of(w_t)),
        None,
        **npq_geometry(group, strides, pads, dil),
    )
    assert got.dtype == ref.dtype and got.shape == ref.shape
    _same("ConvInteger", got, ref)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize(
    "types", [(np.uint8, np.uint8, np.uint8), (np.int8, np.int8, np.int8), (np.uint8, np.int8, np.uint8)]
)
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv(case, types, per_channel):
    _, xs, ws, group, strides, pads, dil = case
    x_t, w_t, y_t = types
    rng = np.random.default_rng(len(case[0]) * 3 + per_channel)
    o = ws[0]
    x, w = codes(rng, x_t, xs), codes(rng, w_t, ws)
    zx = scalar(rng, x_t)
    # ONNX allows per-channel weight zero points; ONNX Runtime wants them 0 for int8
    zw = codes(rng, w_t, (o,)) if per_channel else scalar(rng, w_t)
    sx = np.array(rng.uniform(0.005, 0.05), np.float32)
    sw = rng.uniform(0.001, 0.02, (o,) if per_channel else ()).astype(np.float32)
    bias = rng.integers(-20000, 20000, o).astype(np.int32)
    acc = conv2d_accumulate(
        x,
        QParams(1.0, zx, spec_of(x_t)),
        w,
        QParams(np.ones(o), zw, spec_of(w_t, 0)),
        bias,
        **npq_geometry(group, strides, pads, dil),
    )
    sy, zy = out_qparams(rng, acc * (float(sx) * np.broadcast_to(sw, (o,))[:, None, None]), y_t)
    for use_bias in (False, True):
        inputs = [("x", x), ("sx", sx), ("zx", zx), ("w", w), ("sw", sw), ("zw", zw), ("sy", sy), ("zy", zy)]
        if use_bias:
            inputs.append(("B", bias))
        ref = run_op("QLinearConv", inputs, y_t, **conv_attrs(group, strides, pads, dil))
        w_qp = QParams(sw, zw, spec_of(w_t, 0 if per_channel else None))
        b = bias if use_bias else None
        for form in ("direct", "folded"):
            got = qconv2d(
                x,
                QParams(sx, zx, spec_of(x_t)),
                w,
                w_qp,
                b,
                QParams(sy, zy, spec_of(y_t)),
                mode="onnx",
                form=form,
                **npq_geometry(group, strides, pads, dil),
            )
            assert got.dtype == ref.dtype and got.shape == ref.shape
            _same("QLinearConv", got, ref)


def test_report_counts():
    # runs last in this module: every comparison above was exact
    for op, (n, bad) in sorted(COUNTS.items()):
        print(f"ONNX {op}: {n} elements compared, {bad} differ")
        assert bad == 0 and n > 0
