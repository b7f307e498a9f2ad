"""Bit-exact cross-checks against ONNX ``QuantizeLinear`` / ``DequantizeLinear``.

The reference operators of the ``onnx`` package define the arithmetic: divide, round half
to even, saturate; per-tensor, per-axis and blocked (opset 21+); 16-, 8-, 4- and 2-bit
types (INT2/UINT2 since opset 25). onnxruntime is checked on the types it runs.
Skipped when ``onnx`` is not installed; CI installs it.
"""

import numpy as np
import pytest

from npquant import QuantSpec, dequantize, fit_qparams, quantize

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")

# ONNX type -> (numpy dtype for the zero point, npquant bits, signed)
TYPES = {
    "UINT8": (TP.UINT8, np.uint8, 8, False),
    "INT8": (TP.INT8, np.int8, 8, True),
    "UINT16": (TP.UINT16, np.uint16, 16, False),
    "INT16": (TP.INT16, np.int16, 16, True),
    "UINT4": (TP.UINT4, ml_dtypes.uint4, 4, False),
    "INT4": (TP.INT4, ml_dtypes.int4, 4, True),
    "UINT2": (TP.UINT2, ml_dtypes.uint2, 2, False),
    "INT2": (TP.INT2, ml_dtypes.int2, 2, True),
}


def _model(op, in_type, out_type, x_shape, p_shape, axis, block_size, opset=25, ir_version=None):
    attrs = {"axis": axis}
    if block_size:
        attrs["block_size"] = block_size
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", in_type, x_shape),
            helper.make_tensor_value_info("s", TP.FLOAT, p_shape),
            helper.make_tensor_value_info("z", out_type if op == "QuantizeLinear" else in_type, p_shape),
        ],
        [helper.make_tensor_value_info("y", out_type, x_shape)],
    )
    kw = {"ir_version": ir_version} if ir_version else {}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _cases(rng):
    """(x, spec-granularity kwargs) for per-tensor, per-axis and blocked, with ties."""
    for shape, axis, block in [
        ((37,), None, None),
        ((4, 9), 0, None),
        ((4, 9), 1, None),
        ((3, 5, 6), 1, None),
        ((4, 10), 1, 4),
        ((6, 7), 0, 3),
        ((2, 9, 3), 1, 2),
        ((3, 16), 1, 16),
    ]:
        x = (rng.normal(size=shape) * rng.uniform(0.1, 5)).astype(np.float32)
        yield x, axis, block


@pytest.mark.parametrize("tname", list(TYPES))
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_and_dequantize_linear(tname, symmetric):
    onnx_type, zdtype, bits, signed = TYPES[tname]
    rng = np.random.default_rng(bits * 2 + signed)
    for x, axis, block in _cases(rng):
        spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric, axis=axis, block_size=block)
        qp = fit_qparams(x, spec)
        # put half of the values exactly on rounding ties of the fitted grid
        from npquant.granularity import expand_params

        s_el = expand_params(qp.scale, x.shape, axis, block)
        ties = ((rng.integers(-3, 3, x.shape) + 0.5) * s_el).astype(np.float32)
        x = np.where(rng.random(x.shape) < 0.5, ties, x).astype(np.float32)
        # saturates; kept below 2^31 codes because the reference operator casts rint(x / S)
        # to int32 before clipping, so beyond that it wraps (npquant saturates)
        x.flat[0] = 4 * np.abs(x).max()
        ref_axis = 0 if axis is None else axis
        model = _model("QuantizeLinear", TP.FLOAT, onnx_type, list(x.shape), list(qp.scale.shape), ref_axis, block)
        feeds = {"x": x, "s": qp.scale, "z": qp.zero_point.astype(zdtype)}
        y = ReferenceEvaluator(model).run(None, feeds)[0]
        q = quantize(x, qp, method="divide")
        np.testing.assert_array_equal(q, y.astype(np.int32), err_msg=f"{x.shape} axis={axis} block={block}")
        dmodel = _model("DequantizeLinear", onnx_type, TP.FLOAT, list(x.shape), list(qp.scale.shape), ref_axis, block)
        d = ReferenceEvaluator(dmodel).run(
            None, {"x": q.astype(zdtype), "s": qp.scale, "z": qp.zero_point.astype(zdtype)}
        )[0]
        np.testing.assert_array_equal(dequantize(q, qp).view(np.uint32), d.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("tname", ["UINT8", "INT8"])
def test_onnxruntime_quantize_linear(tname):
    ort = pytest.importorskip("onnxruntime")
    onnx_type, zdtype, bits, signed = TYPES[tname]
    rng = np.random.default_rng(5)
    for x, axis, block in _cases(rng):
        if block is not None:
            continue
        spec = QuantSpec(bits=bits, signed=signed, axis=axis)
        qp = fit_qparams(x, spec)
        model = _model(
            "QuantizeLinear",
            TP.FLOAT,
            onnx_type,
            list(x.shape),
            list(qp.scale.shape),
            0 if axis is None else axis,
            None,
            opset=21,
            ir_version=10,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = sess.run(None, {"x": x, "s": qp.scale, "z": qp.zero_point.astype(zdtype)})[0]
        np.testing.assert_array_equal(quantize(x, qp, method="divide"), y)


def _dynamic_cases(rng):
    yield np.zeros((3, 4), np.float32)  # hi == lo: scale 1/255
    yield np.abs(rng.normal(size=50)).astype(np.float32)  # all positive: Z = 0
    yield -np.abs(rng.normal(size=50)).astype(np.float32)  # all negative: Z = 255
    yield np.array([-1.0, 0.0, 1.0, 0.5 / 255 * 2], np.float32)
    for _ in range(20):
        x = (rng.normal(size=(5, 7)) * rng.uniform(0.01, 50) + rng.uniform(-3, 3)).astype(np.float32)
        s = np.float32(max(0.0, x.max()) - min(0.0, x.min())) / np.float32(255)
        x[0, :3] = (np.arange(3) + 0.5) * s  # half-step values: ties of x / S
        yield x


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_dynamic_quantize_linear_equals_onnx_reference_and_onnxruntime(backend):
    from npquant.affine import dynamic_quantize_linear

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    rng = np.random.default_rng(11)
    for x in _dynamic_cases(rng):
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TP.FLOAT, list(x.shape))],
            [
                helper.make_tensor_value_info("y", TP.UINT8, list(x.shape)),
                helper.make_tensor_value_info("s", TP.FLOAT, []),
                helper.make_tensor_value_info("z", TP.UINT8, []),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        peers = {"onnx": ReferenceEvaluator(model).run(None, {"x": x})}
        ort = pytest.importorskip("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        peers["onnxruntime"] = sess.run(None, {"x": x})
        for stack, (y, s, z) in peers.items():
            q, qp = dynamic_quantize_linear(x, stack=stack, backend=backend)
            assert q.dtype == np.uint8 and q.shape == x.shape and qp.spec == QuantSpec(signed=False)
            np.testing.assert_array_equal(q, y)
            assert np.float32(qp.scale) == np.float32(s) and int(qp.zero_point) == int(z), stack
    # the one disagreement: an all-zero x
    zeros = np.zeros(4, np.float32)
    assert float(dynamic_quantize_linear(zeros)[1].scale) == float(np.float32(1) / np.float32(255))
    assert float(dynamic_quantize_linear(zeros, stack="onnxruntime")[1].scale) == 1.0


def test_dynamic_quantize_linear_errors():
    from npquant.affine import dynamic_quantize_linear

    with pytest.raises(ValueError, match="NaN or infinity"):
        dynamic_quantize_linear(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="x"):
        dynamic_quantize_linear(np.zeros(0, np.float32))
    with pytest.raises(TypeError, match="x"):
        dynamic_quantize_linear("1.0")
    with pytest.raises(ValueError, match="stack"):
        dynamic_quantize_linear(np.ones(3, np.float32), stack="torch")
