"""int8 TFLite models as npquant graphs, bit for bit with LiteRT's reference kernels.

:func:`from_tflite` reads a ``.tflite`` flatbuffer through the ``tflite`` package (the
schema's generated Python bindings) and translates its integer operators into an integer
:class:`~npquant.models.graph.Graph` whose tensors are NHWC, as TFLite's, and carry TFLite's
tensor names: ``graph.run(x, keep_intermediates=True)`` gives every tensor that LiteRT's
interpreter holds, and :func:`tflite_intermediates` runs the interpreter itself (with
``experimental_preserve_all_tensors``) and returns its values under the same names.

The translation, per TFLite operator (its graph op in brackets):

==================  =========================================================================
operator            translation
==================  =========================================================================
CONV_2D             ``qconv2d_nhwc``: OHWI weights to OIHW, per-channel (axis 0) or
                    per-tensor, int32 bias, ``groups = C_in / I``, dilation
DEPTHWISE_CONV_2D   ``qconv2d_nhwc`` with ``groups = C_in``: 1HWO weights (per-channel along
                    axis 3) to ``(C_in * multiplier, 1, kh, kw)``
FULLY_CONNECTED     ``qfully_connected``: input read as rows ``(-1, K)``; ``keep_num_dims``
                    adds a ``qreshape``
AVERAGE_POOL_2D     ``qavgpool2d_nhwc`` (mean of the valid positions, rounded half away)
MAX_POOL_2D         ``qmaxpool2d_nhwc``
ADD, MUL            ``qadd`` (TFLite's ADD, ``left_shift`` 20), ``qmul``; NumPy broadcasting
CONCATENATION       ``qconcat``: the inputs must share the output's qparams (as the
                    converter makes them), so it copies codes
RESHAPE             ``qreshape`` to the output tensor's shape (axis 0 kept when unchanged)
PAD                 ``qpad`` with the zero point
MEAN                ``qmean`` (the three cases of TFLite's reference ``MEAN``)
QUANTIZE            ``quantize_tflite`` from float32 (half away from zero), or ``qrequantize``
                    from int8
DEQUANTIZE          ``dequantize``
==================  =========================================================================

Fused activations (NONE, RELU, RELU6, RELU_N1_TO_1) are the clamps of TFLite's
``CalculateActivationRangeQuantized`` (:func:`npquant.qnn.activation.activation_range`).
SAME padding is TFLite's: ``out = ceil(in / stride)``, total padding ``max((out - 1) *
stride + (k - 1) * dilation + 1 - in, 0)``, ``total // 2`` before and the rest (one more
when odd) after (``ComputePaddingHeightWidth`` in ``tensorflow/lite/kernels/padding.h``);
VALID is no padding. Constant operands of ADD, MUL and CONCATENATION become ``qconstant``
nodes. Activations must be int8 with per-tensor qparams; weights int8.

How each operator rounds its requantization is a *profile* (:data:`PROFILES`): the
default ``"litert_ref"`` is LiteRT 2.3's reference kernels (``ai-edge-litert`` 2.3.0,
``OpResolverType.BUILTIN_REF``), measured: CONV_2D, DEPTHWISE_CONV_2D, MUL, MEAN, ADD and
an int8 QUANTIZE round twice (``"tflite"``, gemmlowp), FULLY_CONNECTED rounds once, ties
away from zero (``"tflite_single_away"``, :data:`npquant.requant.modes.EXTRA_REQUANT_MODES`).
``"tflite_single"`` is a build with ``TFLITE_SINGLE_ROUNDING`` (not measured here). A dict
``{operator: mode}`` overrides single operators.

Tensor names are the flatbuffer's, made unique (``"<name>#<index>"`` for an empty or
repeated name); node names are ``"<index>:<OPERATOR>"``. An operator this module does not
translate is a ``ValueError`` naming its index and name; a buffer that is not a valid
TFLite flatbuffer is a :class:`~npquant.models.io.FileFormatError` naming what was expected.

The ``tflite`` and ``flatbuffers`` packages are imported inside the functions (the
``tflite`` extra: ``pip install 'npquant[tflite]'``); :func:`tflite_intermediates` also
needs LiteRT's interpreter (``ai-edge-litert``, the ``litert`` extra). Importing this
module imports neither.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .._fileio import FileFormatError, read_bytes
from ..models import graph as _graph
from ..qnn.conv import same_padding
from ..qparams import QParams, QuantSpec

TFLITE_HINT = "install the tflite extra (pip install 'npquant[tflite]': the tflite and flatbuffers packages)"
LITERT_HINT = "install the litert extra (pip install 'npquant[litert]': ai-edge-litert, LiteRT's interpreter)"

#: The operators :func:`from_tflite` translates.
SUPPORTED = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "ADD",
    "MUL",
    "CONCATENATION",
    "RESHAPE",
    "PAD",
    "MEAN",
    "QUANTIZE",
    "DEQUANTIZE",
)

_REQUANTIZING = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "QUANTIZE")

#: Requantization mode of each operator, per stack (module docstring).
PROFILES = {
    # ai-edge-litert 2.3.0, OpResolverType.BUILTIN_REF (tests/test_import_tflite.py)
    "litert_ref": {
        "CONV_2D": "tflite",
        "DEPTHWISE_CONV_2D": "tflite",
        "FULLY_CONNECTED": "tflite_single_away",
        "ADD": "tflite",
        "MUL": "tflite",
        "MEAN": "tflite",
        "QUANTIZE": "tflite",
    },
    # TFLite's reference kernels as published before LiteRT: gemmlowp's double rounding throughout
    "tflite": {op: "tflite" for op in _REQUANTIZING},
    # a build with TFLITE_SINGLE_ROUNDING (MultiplyByQuantizedMultiplier rounds once, ties up)
    "tflite_single": {op: "tflite_single" for op in _REQUANTIZING},
}

_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
}
_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
_ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
# options table of each operator: (name, fields, required)
_OPTIONS = {
    "CONV_2D": (
        "Conv2DOptions",
        ("Padding", "StrideW", "StrideH", "FusedActivationFunction", "DilationWFactor", "DilationHFactor"),
        True,
    ),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        (
            "Padding",
            "StrideW",
            "StrideH",
            "DepthMultiplier",
            "FusedActivationFunction",
            "DilationWFactor",
            "DilationHFactor",
        ),
        True,
    ),
    "AVERAGE_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"),
        True,
    ),
    "MAX_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"),
        True,
    ),
    "FULLY_CONNECTED": ("FullyConnectedOptions", ("FusedActivationFunction", "WeightsFormat", "KeepNumDims"), False),
    "ADD": ("AddOptions", ("FusedActivationFunction",), False),
    "MUL": ("MulOptions", ("FusedActivationFunction",), False),
    "CONCATENATION": ("ConcatenationOptions", ("Axis", "FusedActivationFunction"), True),
    "MEAN": ("ReducerOptions", ("KeepDims",), False),
}
_MAX_TENSORS = 1 << 24
_MAX_DIM = 1 << 31


def _tflite():
    try:
        import flatbuffers  # the runtime of the generated bindings
        import tflite
    except ImportError as e:
        raise ModuleNotFoundError(f"npquant.importers.tflite needs the tflite package: {TFLITE_HINT}") from e
    if not hasattr(flatbuffers, "Builder") or not hasattr(tflite, "Model"):
        raise ModuleNotFoundError(
            f"the installed tflite or flatbuffers package is not the schema's bindings: {TFLITE_HINT}"
        )
    return tflite


# ----------------------------------------------------------------------- the flatbuffer


@dataclass
class _Tensor:
    index: int
    name: str
    shape: tuple
    dtype: str
    scale: np.ndarray | None  # float32 (n,)
    zero_point: np.ndarray | None  # int64 (n,)
    axis: int
    data: np.ndarray | None  # constant data, shaped


@dataclass
class _Op:
    index: int
    name: str
    inputs: tuple  # tensor indices, -1 for an omitted optional input
    outputs: tuple
    options: dict


class _Reader:
    """Bounds-checked reads of the flatbuffer: every failure is a FileFormatError naming
    what was being read."""

    def __init__(self, buf: bytes, where):
        self.buf, self.where = buf, where

    def fail(self, message: str):
        raise FileFormatError(self.where, message)

    def get(self, fn, what: str):
        try:
            return fn()
        except (
            IndexError,
            struct.error,
            ValueError,
            TypeError,
            OverflowError,
            AttributeError,
            UnicodeDecodeError,
            MemoryError,
        ) as e:
            raise FileFormatError(
                self.where, f"corrupt TFLite flatbuffer: cannot read {what} ({type(e).__name__})"
            ) from None

    def count(self, fn, what: str, limit: int = _MAX_TENSORS) -> int:
        n = self.get(fn, what)
        if not isinstance(n, int) or not 0 <= n <= limit or 4 * n > len(self.buf):
            self.fail(f"corrupt TFLite flatbuffer: {what} has an impossible length {n}")
        return n

    def ints(self, fn, what: str) -> tuple:
        arr = self.get(fn, what)
        if isinstance(arr, int):  # an absent vector reads as 0
            return ()
        return tuple(int(v) for v in np.asarray(arr).ravel())


def _read_model(data, where):
    """``(tensors, ops, inputs, outputs)`` of the flatbuffer's one subgraph."""
    tfl = _tflite()
    buf = bytes(data)
    r = _Reader(buf, where)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        r.fail(
            "expected a TFLite flatbuffer: the file identifier 'TFL3' at bytes 4-8 "
            f"(got {buf[4:8]!r} in {len(buf)} bytes)"
        )
    root = struct.unpack_from("<I", buf, 0)[0]
    if not 8 <= root <= len(buf) - 4:
        r.fail(f"corrupt TFLite flatbuffer: the root table offset {root} lies outside the {len(buf)} bytes")
    model = r.get(lambda: tfl.Model.GetRootAs(buf, 0), "the model table")
    version = r.get(model.Version, "the schema version")
    if version != 3:
        r.fail(f"expected TFLite schema version 3, got {version}")
    n_codes = r.count(model.OperatorCodesLength, "operator_codes")
    codes = []
    for i in range(n_codes):
        oc = r.get(lambda i=i: model.OperatorCodes(i), f"operator_codes[{i}]")
        dep = r.get(oc.DeprecatedBuiltinCode, f"operator_codes[{i}].deprecated_builtin_code")
        new = r.get(oc.BuiltinCode, f"operator_codes[{i}].builtin_code")
        code = max(int(dep), int(new))  # the schema's rule for the two fields
        custom = r.get(oc.CustomCode, f"operator_codes[{i}].custom_code")
        codes.append(
            f"CUSTOM({custom.decode('utf-8', 'replace')})" if code == 32 and custom else _builtin_name(tfl, code)
        )
    n_sub = r.count(model.SubgraphsLength, "subgraphs")
    if n_sub != 1:
        r.fail(f"expected exactly one subgraph, got {n_sub} (control flow is not supported)")
    sg = r.get(lambda: model.Subgraphs(0), "subgraphs[0]")
    n_buf = r.count(model.BuffersLength, "buffers")
    n_t = r.count(sg.TensorsLength, "tensors")
    tensors = [_read_tensor(tfl, r, model, sg, i, n_buf) for i in range(n_t)]
    n_ops = r.count(sg.OperatorsLength, "operators")
    ops = []
    for i in range(n_ops):
        op = r.get(lambda i=i: sg.Operators(i), f"operators[{i}]")
        k = r.get(op.OpcodeIndex, f"operators[{i}].opcode_index")
        if not 0 <= k < n_codes:
            r.fail(f"operator {i}: opcode_index {k} is outside the {n_codes} operator codes")
        name = codes[k]
        ins = r.ints(op.InputsAsNumpy, f"operators[{i}].inputs")
        outs = r.ints(op.OutputsAsNumpy, f"operators[{i}].outputs")
        for t in ins + outs:
            if not -1 <= t < n_t:
                r.fail(f"operator {i} ({name}): tensor index {t} is outside the {n_t} tensors")
        ops.append(_Op(i, name, ins, outs, _read_options(tfl, r, op, i, name)))
    inputs = r.ints(sg.InputsAsNumpy, "subgraph inputs")
    outputs = r.ints(sg.OutputsAsNumpy, "subgraph outputs")
    for t in inputs + outputs:
        if not 0 <= t < n_t:
            r.fail(f"subgraph input/output tensor index {t} is outside the {n_t} tensors")
    if not inputs or not outputs:
        r.fail("expected a subgraph with at least one input and one output")
    return tensors, ops, inputs, outputs


def _builtin_name(tfl, code: int) -> str:
    for k, v in vars(tfl.BuiltinOperator).items():
        if not k.startswith("_") and v == code:
            return k
    return f"BUILTIN_{code}"


def _read_tensor(tfl, r: _Reader, model, sg, i: int, n_buf: int) -> _Tensor:
    t = r.get(lambda: sg.Tensors(i), f"tensors[{i}]")
    raw = r.get(t.Name, f"tensors[{i}].name")
    name = raw.decode("utf-8", "replace") if raw else ""
    shape = r.ints(t.ShapeAsNumpy, f"tensors[{i}].shape")
    if any(not 0 <= d < _MAX_DIM for d in shape):
        r.fail(f"tensor {i} ({name!r}): expected non-negative static dimensions, got shape {list(shape)}")
    code = r.get(t.Type, f"tensors[{i}].type")
    dtype = _TYPES.get(code, f"type {code}")
    scale = zp = None
    axis = 0
    q = r.get(t.Quantization, f"tensors[{i}].quantization")
    if q is not None:
        s = r.get(q.ScaleAsNumpy, f"tensors[{i}].quantization.scale")
        z = r.get(q.ZeroPointAsNumpy, f"tensors[{i}].quantization.zero_point")
        axis = int(r.get(q.QuantizedDimension, f"tensors[{i}].quantization.quantized_dimension"))
        if not isinstance(s, int):
            scale = np.asarray(s, np.float32).copy()
            zp = np.zeros(scale.shape, np.int64) if isinstance(z, int) else np.asarray(z, np.int64).copy()
            if scale.size == 0:
                scale = zp = None
            elif zp.shape != scale.shape:
                r.fail(f"tensor {i} ({name!r}): expected one zero point per scale, got {zp.size} for {scale.size}")
    b = int(r.get(t.Buffer, f"tensors[{i}].buffer"))
    if not 0 <= b < n_buf:
        r.fail(f"tensor {i} ({name!r}): buffer index {b} is outside the {n_buf} buffers")
    data = None
    if b:
        bt = r.get(lambda: model.Buffers(b), f"buffers[{b}]")
        off, size = int(r.get(bt.Offset, f"buffers[{b}].offset")), int(r.get(bt.Size, f"buffers[{b}].size"))
        if off > 1:  # data stored after the flatbuffer (models above 2 GB)
            if off + size > len(r.buf):
                r.fail(f"buffer {b}: expected {size} bytes at offset {off}, the file has {len(r.buf)}")
            payload = r.buf[off : off + size]
        else:
            arr = r.get(bt.DataAsNumpy, f"buffers[{b}].data")
            payload = b"" if isinstance(arr, int) else np.asarray(arr, np.uint8).tobytes()
        if payload:
            if dtype not in ("float32", "float16", "int32", "uint8", "int64", "int16", "int8", "float64"):
                r.fail(f"tensor {i} ({name!r}): constant data of type {dtype} is not supported")
            dt = np.dtype(dtype).newbyteorder("<")
            n = int(np.prod(shape, dtype=np.int64))
            if len(payload) != n * dt.itemsize:
                r.fail(
                    f"tensor {i} ({name!r}): expected {n * dt.itemsize} bytes of {dtype} data for shape "
                    f"{list(shape)}, buffer {b} holds {len(payload)}"
                )
            data = np.frombuffer(payload, dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)
    return _Tensor(i, name, tuple(shape), dtype, scale, zp, axis, data)


def _read_options(tfl, r: _Reader, op, i: int, name: str) -> dict:
    spec = _OPTIONS.get(name)
    if spec is None:
        return {}
    cls_name, fields, required = spec
    cls = getattr(tfl, cls_name)
    want = getattr(tfl.BuiltinOptions, cls_name)
    typ = r.get(op.BuiltinOptionsType, f"operators[{i}].builtin_options_type")
    tab = r.get(op.BuiltinOptions, f"operators[{i}].builtin_options") if typ else None
    if tab is None:
        if required:
            r.fail(f"operator {i} ({name}): expected builtin options {cls_name}, got none")
        return {f: 0 for f in fields}
    if typ != want:
        r.fail(f"operator {i} ({name}): expected builtin options {cls_name} (type {want}), got type {typ}")
    opt = cls()
    opt.Init(tab.Bytes, tab.Pos)
    return {f: int(r.get(getattr(opt, f), f"operator {i} ({name}) option {f}")) for f in fields}


def _tensor_names(tensors) -> list:
    """Unique, non-empty graph names of the tensors (module docstring)."""
    count = {}
    for t in tensors:
        count[t.name] = count.get(t.name, 0) + 1
    return [t.name if t.name and count[t.name] == 1 else f"{t.name or 'tensor'}#{t.index}" for t in tensors]


def _source(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "<bytes>"
    return read_bytes(path_or_bytes, "path_or_bytes"), str(path_or_bytes)


# ---------------------------------------------------------------------------- translate


class _Translator:
    def __init__(self, tensors, ops, inputs, outputs, profile: dict, where):
        self.t, self.ops, self.where = tensors, ops, where
        self.names = _tensor_names(tensors)
        self.inputs, self.outputs = inputs, outputs
        self.profile = profile
        self.nodes = []
        self.defined = set(inputs)  # tensors that have a value in the graph

    # -- helpers

    def err(self, op: _Op, message: str):
        return ValueError(f"operator {op.index} ({op.name}): {message}")

    def qp(self, op: _Op, ti: int) -> QParams:
        """Per-tensor int8 QParams of activation tensor ``ti``."""
        t = self.t[ti]
        if t.dtype != "int8":
            raise self.err(
                op, f"tensor {self.names[ti]!r} must be int8, got {t.dtype} (only int8 models are supported)"
            )
        if t.scale is None or t.scale.size != 1:
            raise self.err(op, f"tensor {self.names[ti]!r} must have per-tensor quantization parameters")
        if not (np.isfinite(t.scale[0]) and t.scale[0] > 0) or not -128 <= int(t.zero_point[0]) <= 127:
            raise self.err(
                op, f"tensor {self.names[ti]!r} has an invalid scale {t.scale[0]} or zero point {t.zero_point[0]}"
            )
        return QParams(np.float32(t.scale[0]), int(t.zero_point[0]), QuantSpec(bits=8, signed=True))

    def same_qp(self, op: _Op, a: int, b: int):
        qa, qb = self.qp(op, a), self.qp(op, b)
        if float(qa.scale) != float(qb.scale) or int(qa.zero_point) != int(qb.zero_point):
            raise self.err(
                op,
                f"the output {self.names[b]!r} must have the input's qparams (scale "
                f"{float(qa.scale)}, zero point {int(qa.zero_point)}), got scale "
                f"{float(qb.scale)}, zero point {int(qb.zero_point)}",
            )

    def const(self, op: _Op, ti: int, what: str, dtype: str | None = None) -> np.ndarray:
        if ti < 0:
            raise self.err(op, f"the {what} is missing")
        t = self.t[ti]
        if t.data is None:
            raise self.err(op, f"the {what} {self.names[ti]!r} must be a constant tensor")
        if dtype is not None and t.dtype != dtype:
            raise self.err(op, f"the {what} {self.names[ti]!r} must be {dtype}, got {t.dtype}")
        return t.data

    def value(self, op: _Op, ti: int) -> str:
        """The graph name of an activation input, a ``qconstant`` node for a constant one."""
        name = self.names[ti]
        if ti in self.defined:
            return name
        t = self.t[ti]
        if t.data is None:
            raise self.err(
                op, f"input tensor {name!r} is neither a graph input, a constant nor the output of an earlier operator"
            )
        qp = self.qp(op, ti)
        self.nodes.append(
            _graph.Node(
                f"{op.index}:const:{name}", "qconstant", [], [name], {"output": qp}, {"value": t.data.astype(np.int8)}
            )
        )
        self.defined.add(ti)
        return name

    def emit(
        self,
        op: _Op,
        graph_op: str,
        inputs,
        attrs=None,
        params=None,
        out: int | None = None,
        out_name: str | None = None,
        suffix: str = "",
    ):
        o = op.outputs[0] if out is None else out
        name = out_name or self.names[o]
        self.nodes.append(
            _graph.Node(f"{op.index}:{op.name}{suffix}", graph_op, list(inputs), [name], attrs or {}, params or {})
        )
        self.defined.add(o)
        return name

    def mode(self, op: _Op) -> str:
        return self.profile[op.name]

    def activation(self, op: _Op):
        code = op.options.get("FusedActivationFunction", 0)
        if code not in _ACTIVATIONS:
            raise self.err(
                op,
                f"fused activation {_ACTIVATION_NAMES.get(code, code)} is not supported "
                "(NONE, RELU, RELU6, RELU_N1_TO_1)",
            )
        return _ACTIVATIONS[code]

    def arity(self, op: _Op, lo: int, hi: int | None = None):
        hi = lo if hi is None else hi
        if not lo <= len(op.inputs) <= hi or len(op.outputs) != 1:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.err(op, f"expected {want} inputs and 1 output, got {len(op.inputs)} and {len(op.outputs)}")
        for k in range(lo):
            if op.inputs[k] < 0:
                raise self.err(op, f"input {k} is missing")

    def shape(self, ti: int) -> tuple:
        return self.t[ti].shape

    def weight_qparams(self, op: _Op, ti: int, axis: int, n_out: int, symmetric: bool):
        t = self.t[ti]
        if t.scale is None:
            raise self.err(op, f"the weights {self.names[ti]!r} have no quantization parameters")
        if t.scale.size == 1:
            scale, zp = np.float32(t.scale[0]), np.int32(t.zero_point[0])
        else:
            if t.axis != axis or t.scale.size != n_out:
                raise self.err(
                    op,
                    f"the weights {self.names[ti]!r} must be quantized per tensor or per channel "
                    f"along axis {axis} ({n_out} channels), got {t.scale.size} scales along axis "
                    f"{t.axis}",
                )
            scale, zp = t.scale.astype(np.float32), t.zero_point.astype(np.int32)
        if not np.all(np.isfinite(scale)) or not np.all(np.asarray(scale) > 0):
            raise self.err(op, f"the weights {self.names[ti]!r} have a scale that is not positive and finite")
        if symmetric and np.any(zp != 0):
            raise self.err(
                op, f"the weights {self.names[ti]!r} must have zero points 0 (TFLite's int8 kernels ignore them)"
            )
        return scale, zp

    def bias(self, op: _Op, n_out: int):
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return {}
        b = self.const(op, op.inputs[2], "bias", "int32")
        if b.shape != (n_out,):
            raise self.err(op, f"the bias must have shape ({n_out},), got {b.shape}")
        return {"bias_q": b.astype(np.int32)}

    def pads(self, op: _Op, x_shape, kh, kw, sh, sw, dh=1, dw=1):
        if op.options["Padding"] == 1:  # VALID
            return [0, 0, 0, 0]
        if op.options["Padding"] != 0:
            raise self.err(op, f"padding must be SAME (0) or VALID (1), got {op.options['Padding']}")
        pt, pb = same_padding(x_shape[1], kh, sh, dh)
        pl, pr = same_padding(x_shape[2], kw, sw, dw)
        return [pt, pb, pl, pr]

    def strides(self, op: _Op, *names):
        vals = [op.options[n] for n in names]
        if any(v < 1 for v in vals):
            raise self.err(op, f"{', '.join(names)} must be >= 1, got {vals}")
        return vals

    # -- operators

    def op_conv(self, op: _Op):
        self.arity(op, 2, 3)
        x, y = op.inputs[0], op.outputs[0]
        xs = self.shape(x)
        w = self.const(op, op.inputs[1], "weights", "int8")
        if len(xs) != 4 or w.ndim != 4:
            raise self.err(op, f"expected NHWC input and 4-D weights, got shapes {list(xs)} and {list(w.shape)}")
        sw_, sh = self.strides(op, "StrideW", "StrideH")
        dw, dh = self.strides(op, "DilationWFactor", "DilationHFactor")
        if op.name == "CONV_2D":
            o, kh, kw, cin = w.shape
            if cin == 0 or xs[3] % cin:
                raise self.err(op, f"the input has {xs[3]} channels, not a multiple of the weights' {cin}")
            groups = xs[3] // cin
            weight = np.ascontiguousarray(w.transpose(0, 3, 1, 2))  # OHWI -> OIHW
            scale, zp = self.weight_qparams(op, op.inputs[1], 0, o, True)
        else:
            _, kh, kw, o = w.shape
            if w.shape[0] != 1 or xs[3] == 0 or o % xs[3]:
                raise self.err(
                    op,
                    f"expected 1HWO depthwise weights with O a multiple of the {xs[3]} input "
                    f"channels, got {list(w.shape)}",
                )
            mult = op.options["DepthMultiplier"]
            if mult not in (0, o // xs[3]):  # LiteRT derives the multiplier from the shapes
                raise self.err(
                    op, f"depth_multiplier {mult} does not match the weights ({o} outputs for {xs[3]} channels)"
                )
            groups = xs[3]
            weight = np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None])  # 1HWO -> (O, 1, kh, kw)
            scale, zp = self.weight_qparams(op, op.inputs[1], 3, o, True)
        attrs = {
            "output": self.qp(op, y),
            "mode": self.mode(op),
            "activation": self.activation(op),
            "stride": [sh, sw_],
            "padding": self.pads(op, xs, kh, kw, sh, sw_, dh, dw),
            "dilation": [dh, dw],
            "groups": groups,
        }
        self.qp(op, x)
        params = {"weight": weight.astype(np.int8), "weight_scale": scale, "weight_zero_point": zp, **self.bias(op, o)}
        self.emit(op, "qconv2d_nhwc", [self.value(op, x)], attrs, params)

    op_depthwise = op_conv

    def op_fully_connected(self, op: _Op):
        self.arity(op, 2, 3)
        if op.options["WeightsFormat"] != 0:
            raise self.err(op, "only the DEFAULT weights format is supported (not shuffled weights)")
        x, y = op.inputs[0], op.outputs[0]
        w = self.const(op, op.inputs[1], "weights", "int8")
        if w.ndim != 2:
            raise self.err(op, f"expected (out, in) weights, got shape {list(w.shape)}")
        o, k = w.shape
        xs = self.shape(x)
        if int(np.prod(xs, dtype=np.int64)) % k:
            raise self.err(op, f"the input {list(xs)} does not split into rows of {k}")
        scale, zp = self.weight_qparams(op, op.inputs[1], 0, o, False)
        self.qp(op, x)
        attrs = {"output": self.qp(op, y), "mode": self.mode(op), "activation": self.activation(op)}
        params = {"weight": w.astype(np.int8), "weight_scale": scale, "weight_zero_point": zp, **self.bias(op, o)}
        ys = self.shape(y)
        rows = int(np.prod(xs, dtype=np.int64)) // k
        if tuple(ys) == (rows, o):
            self.emit(op, "qfully_connected", [self.value(op, x)], attrs, params)
        else:  # keep_num_dims: the rows, then the output's shape
            tmp = self.emit(
                op, "qfully_connected", [self.value(op, x)], attrs, params, out_name=f"{self.names[y]}#rows"
            )
            self.emit(op, "qreshape", [tmp], {"shape": [int(d) for d in ys]}, suffix=":reshape")

    def op_pool(self, op: _Op):
        self.arity(op, 1)
        x, y = op.inputs[0], op.outputs[0]
        xs = self.shape(x)
        if len(xs) != 4:
            raise self.err(op, f"expected NHWC input, got shape {list(xs)}")
        self.same_qp(op, x, y)
        kw, kh = self.strides(op, "FilterWidth", "FilterHeight")
        sw_, sh = self.strides(op, "StrideW", "StrideH")
        pads = self.pads(op, xs, kh, kw, sh, sw_)
        if max(pads[:2]) > kh // 2 or max(pads[2:]) > kw // 2:
            raise self.err(op, f"padding {pads} exceeds half the {kh}x{kw} window")
        attrs = {"kernel_size": [kh, kw], "stride": [sh, sw_], "padding": pads, "activation": self.activation(op)}
        graph_op = "qavgpool2d_nhwc" if op.name == "AVERAGE_POOL_2D" else "qmaxpool2d_nhwc"
        self.emit(op, graph_op, [self.value(op, x)], attrs)

    def op_add(self, op: _Op):
        self.arity(op, 2)
        a, b = (self.value(op, t) for t in op.inputs)
        for t in op.inputs:
            self.qp(op, t)
        attrs = {"output": self.qp(op, op.outputs[0]), "mode": self.mode(op), "activation": self.activation(op)}
        self.emit(op, "qadd" if op.name == "ADD" else "qmul", [a, b], attrs)

    op_mul = op_add

    def op_concatenation(self, op: _Op):
        if not op.inputs or len(op.outputs) != 1 or min(op.inputs) < 0:
            raise self.err(op, "expected one or more inputs and one output")
        if self.activation(op) is not None:
            raise self.err(op, "a fused activation on CONCATENATION is not supported")
        y = op.outputs[0]
        rank = len(self.shape(y))
        axis = op.options["Axis"]
        if not -rank <= axis < rank:
            raise self.err(op, f"axis {axis} is outside the output's {rank} axes")
        for t in op.inputs:
            self.same_qp(op, t, y)
        ins = [self.value(op, t) for t in op.inputs]
        self.emit(op, "qconcat", ins, {"output": self.qp(op, y), "axis": axis % rank})

    def op_reshape(self, op: _Op):
        self.arity(op, 1, 2)
        x, y = op.inputs[0], op.outputs[0]
        self.same_qp(op, x, y)
        xs, ys = self.shape(x), self.shape(y)
        if int(np.prod(xs, dtype=np.int64)) != int(np.prod(ys, dtype=np.int64)):
            raise self.err(op, f"cannot reshape {list(xs)} to {list(ys)}")
        shape = [int(d) for d in ys]
        if xs and ys and xs[0] == ys[0] and len(ys) > 1:
            shape[0] = 0  # keep the batch axis (any batch size)
        self.emit(op, "qreshape", [self.value(op, x)], {"shape": shape})

    def op_pad(self, op: _Op):
        self.arity(op, 2)
        x, y = op.inputs[0], op.outputs[0]
        self.same_qp(op, x, y)
        pads = self.const(op, op.inputs[1], "paddings")
        rank = len(self.shape(x))
        if pads.dtype.kind not in "iu" or pads.shape != (rank, 2) or np.any(pads < 0):
            raise self.err(
                op, f"expected non-negative integer paddings of shape ({rank}, 2), got {pads.dtype} {list(pads.shape)}"
            )
        self.emit(op, "qpad", [self.value(op, x)], {"pads": [[int(b), int(e)] for b, e in pads]})

    def op_mean(self, op: _Op):
        self.arity(op, 2)
        x, y = op.inputs[0], op.outputs[0]
        self.qp(op, x)
        axes = self.const(op, op.inputs[1], "axis", "int32").ravel()
        rank = len(self.shape(x))
        if axes.size == 0 or np.any(axes < -rank) or np.any(axes >= rank):
            raise self.err(op, f"axes {axes.tolist()} must be non-empty and within the input's {rank} axes")
        attrs = {
            "axes": [int(v) % rank for v in axes],
            "keep_dims": bool(op.options["KeepDims"]),
            "output": self.qp(op, y),
            "mode": self.mode(op),
        }
        self.emit(op, "qmean", [self.value(op, x)], attrs)

    def op_quantize(self, op: _Op):
        self.arity(op, 1)
        x, y = op.inputs[0], op.outputs[0]
        src = self.t[x].dtype
        if src == "float32":
            self.emit(op, "quantize_tflite", [self.value_float(op, x)], {"output": self.qp(op, y)})
        elif src == "int8":
            self.qp(op, x)
            self.emit(op, "qrequantize", [self.value(op, x)], {"output": self.qp(op, y), "mode": self.mode(op)})
        else:
            raise self.err(op, f"QUANTIZE from {src} is not supported (float32 or int8)")

    def op_dequantize(self, op: _Op):
        self.arity(op, 1)
        x, y = op.inputs[0], op.outputs[0]
        if self.t[y].dtype != "float32":
            raise self.err(op, f"DEQUANTIZE to {self.t[y].dtype} is not supported (float32)")
        self.qp(op, x)
        self.emit(op, "dequantize", [self.value(op, x)])

    def value_float(self, op: _Op, ti: int) -> str:
        if ti not in self.defined:
            raise self.err(op, f"input tensor {self.names[ti]!r} must be a graph input or an earlier output")
        return self.names[ti]

    # -- the graph

    def translate(self, name: str) -> _graph.Graph:
        handlers = {
            "CONV_2D": self.op_conv,
            "DEPTHWISE_CONV_2D": self.op_depthwise,
            "FULLY_CONNECTED": self.op_fully_connected,
            "AVERAGE_POOL_2D": self.op_pool,
            "MAX_POOL_2D": self.op_pool,
            "ADD": self.op_add,
            "MUL": self.op_mul,
            "CONCATENATION": self.op_concatenation,
            "RESHAPE": self.op_reshape,
            "PAD": self.op_pad,
            "MEAN": self.op_mean,
            "QUANTIZE": self.op_quantize,
            "DEQUANTIZE": self.op_dequantize,
        }
        input_qparams = {}
        for ti in self.inputs:
            t = self.t[ti]
            if t.dtype == "int8":
                input_qparams[self.names[ti]] = self.qp(_Op(-1, "input", (), (), {}), ti)
            elif t.dtype != "float32":
                raise ValueError(f"graph input {self.names[ti]!r} must be float32 or int8, got {t.dtype}")
        for op in self.ops:
            h = handlers.get(op.name)
            if h is None:
                raise ValueError(
                    f"operator {op.index} ({op.name}) is not supported by npquant.importers.tflite; "
                    f"supported: {', '.join(SUPPORTED)}"
                )
            h(op)
        for ti in self.outputs:
            if ti not in self.defined:
                raise ValueError(f"graph output {self.names[ti]!r} is not computed by any operator")
        try:
            return _graph.Graph(
                self.nodes,
                [self.names[i] for i in self.inputs],
                [self.names[i] for i in self.outputs],
                input_qparams=input_qparams,
                name=name,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"the translated graph does not build: {e}") from e


def _profile(profile) -> dict:
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(map(repr, PROFILES))} or a dict, got {profile!r}")
        return dict(PROFILES[profile])
    if isinstance(profile, dict):
        from ..qnn.add import ADD_MODES
        from ..requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES

        allowed = {op: REQUANT_MODES + EXTRA_REQUANT_MODES for op in ("FULLY_CONNECTED", "MUL", "QUANTIZE")}
        allowed.update(
            {
                "CONV_2D": REQUANT_MODES,
                "DEPTHWISE_CONV_2D": REQUANT_MODES,
                "ADD": tuple(m for m in ADD_MODES if m.startswith("tflite")),
                "MEAN": ("tflite", "tflite_single"),
            }
        )
        out = dict(PROFILES["litert_ref"])
        for k, v in profile.items():
            if k not in _REQUANTIZING:
                raise ValueError(
                    f"profile has {k!r}, which is not an operator that requantizes ({', '.join(_REQUANTIZING)})"
                )
            if v not in allowed[k]:
                raise ValueError(
                    f"profile[{k!r}] must be a requantization mode of that operator "
                    f"({', '.join(allowed[k])}), got {v!r}"
                )
            out[k] = v
        return out
    raise TypeError(f"profile must be a profile name or a dict of operator -> mode, got {type(profile).__name__}")


def from_tflite(
    path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    profile: str | dict = "litert_ref",
    name: str = "tflite",
) -> _graph.Graph:
    """An int8 ``.tflite`` model as an integer :class:`~npquant.models.graph.Graph` (NHWC).

    Parameters
    ----------
    path_or_bytes : str, os.PathLike, bytes, bytearray or memoryview
        The ``.tflite`` file, or its contents.
    profile : str or dict
        How each operator rounds (:data:`PROFILES`): ``"litert_ref"`` (default; LiteRT
        2.3's reference kernels), ``"tflite"``, ``"tflite_single"``, or a dict
        ``{operator: mode}`` overriding ``"litert_ref"`` for single operators.
    name : str
        The graph's name.

    Returns
    -------
    Graph
        Inputs and outputs are the subgraph's (float32 inputs go through the model's
        QUANTIZE, int8 inputs are codes with ``graph.input_qparams``); every tensor keeps
        the flatbuffer's name (made unique), so ``graph.run(x, keep_intermediates=True)``
        compares tensor by tensor with :func:`tflite_intermediates`.

    Raises
    ------
    ModuleNotFoundError
        The ``tflite`` package is not installed (the ``tflite`` extra).
    FileFormatError
        The buffer is not a TFLite flatbuffer (file identifier, schema version 3, one
        subgraph, indices and buffer sizes that agree); the message names what was
        expected.
    ValueError
        An operator that is not translated (named by index and name), or one whose tensors
        are not int8 with the quantization the converter writes.
    """
    data, where = _source(path_or_bytes)
    tensors, ops, inputs, outputs = _read_model(data, where)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    return _Translator(tensors, ops, inputs, outputs, _profile(profile), where).translate(name)


def tflite_tensor_names(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview) -> list:
    """The graph name of each tensor of the model, by TFLite tensor index (as
    :func:`from_tflite` names them).

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        The ``.tflite`` file, or its bytes.

    Returns
    -------
    list of str
        ``names[i]`` is the name of TFLite tensor ``i``.
    """
    data, where = _source(path_or_bytes)
    return _tensor_names(_read_model(data, where)[0])


def tflite_intermediates(
    path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview,
    inputs: np.ndarray | list | dict,
    *,
    op_resolver: str = "BUILTIN_REF",
) -> dict:
    """LiteRT's value of every non-constant tensor, under :func:`from_tflite`'s names.

    Runs ``ai_edge_litert.interpreter.Interpreter`` with ``experimental_preserve_all_tensors``.
    Needs ``ai-edge-litert`` (the ``litert`` extra).

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        The ``.tflite`` file, or its bytes.
    inputs : numpy.ndarray, list or dict
        One array, a list in the order of the model's inputs, or a dict by tensor name; each
        of the input tensor's dtype and shape.
    op_resolver : str, default "BUILTIN_REF"
        ``"BUILTIN_REF"``: the reference kernels; ``"BUILTIN"``, ``"AUTO"``,
        ``"BUILTIN_WITHOUT_DEFAULT_DELEGATES"``: the optimized ones.

    Returns
    -------
    dict of str to numpy.ndarray
        The inputs, then every operator's output in execution order (copies).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ModuleNotFoundError(f"tflite_intermediates needs LiteRT's interpreter: {LITERT_HINT}") from e
    if not isinstance(op_resolver, str) or not hasattr(OpResolverType, op_resolver):
        raise ValueError(f"op_resolver must be one of {', '.join(OpResolverType.__members__)}, got {op_resolver!r}")
    data, where = _source(path_or_bytes)
    tensors, ops, ins, outs = _read_model(data, where)
    names = _tensor_names(tensors)
    it = Interpreter(
        model_content=data,
        experimental_op_resolver_type=getattr(OpResolverType, op_resolver),
        experimental_preserve_all_tensors=True,
    )
    it.allocate_tensors()
    if isinstance(inputs, dict):
        feeds = [inputs[names[i]] for i in ins]
    elif isinstance(inputs, (list, tuple)):
        feeds = list(inputs)
    else:
        feeds = [inputs]
    if len(feeds) != len(ins):
        raise ValueError(f"the model takes {len(ins)} input(s), got {len(feeds)}")
    for ti, v in zip(ins, feeds):
        it.set_tensor(ti, np.ascontiguousarray(v))
    it.invoke()
    out = {names[i]: it.get_tensor(i).copy() for i in ins}
    for op in ops:
        for ti in op.outputs:
            if ti >= 0:
                out[names[ti]] = it.get_tensor(ti).copy()
    return out
