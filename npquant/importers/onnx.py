"""ONNX models as npquant graphs: quantized models bit for bit with onnxruntime (QOperator and QDQ).

:func:`from_onnx` reads an ONNX model (a file or a ``ModelProto``) and translates it
into a :class:`~npquant.models.graph.Graph` whose tensors keep their ONNX names. A quantized
model comes in two formats, as ``onnxruntime.quantization.quantize_static`` writes them:

* **QOperator**: integer operators (``QLinearConv``, ``QLinearMatMul``, the
  ``com.microsoft`` ``QLinearAdd``, ``QGemm``, ``QLinearAveragePool``,
  ``QLinearGlobalAveragePool``, ``QLinearConcat``; ``MaxPool``, ``Reshape`` and
  ``Flatten`` on codes) between ``QuantizeLinear`` and ``DequantizeLinear``;
* **QDQ**: float operators between ``DequantizeLinear`` and ``QuantizeLinear`` nodes.
  onnxruntime's CPU provider fuses each ``DequantizeLinear -> op -> QuantizeLinear``
  group into the integer kernel of the QOperator format (``Conv`` -> ``QLinearConv``,
  ``MatMul`` -> ``QLinearMatMul``, ``Gemm`` -> ``QGemm``, ``Add`` -> ``QLinearAdd``,
  ``AveragePool`` -> ``QLinearAveragePool``, ``GlobalAveragePool`` ->
  ``QLinearGlobalAveragePool``, ``Concat`` -> ``QLinearConcat``; ``MaxPool``, ``Reshape``
  and ``Flatten`` between equal qparams run on the codes), and runs the rest in float
  between exact quantize/dequantize (a ``Relu`` between equal qparams gives the same bits
  as a clamp of the codes, ``qrelu``).

``target`` names whose numbers the graph reproduces:

``"onnxruntime"`` (default)
    the kernels onnxruntime (1.32, CPU provider) runs: QDQ groups fused as above, each
    mapped to the npquant op that equals that kernel bit for bit (``qconv2d`` /
    ``qlinear`` with ``mode="fp32"`` and the MLAS accumulation of this CPU, ``qadd`` with
    ``mode="onnxruntime"``, ``qlinear_avgpool2d``, ``qlinear_global_avgpool2d``,
    ``qlinear_concat``, ``qmaxpool2d``, ``qreshape``, ``qflatten``, ``qrelu``);
``"reference"``
    ``onnx.reference.ReferenceEvaluator``'s reading: every QDQ group stays
    ``dequantize -> float op -> quantize`` (ops that are exact on codes, ``MaxPool``,
    ``Reshape``, ``Flatten`` and ``Relu`` between equal qparams, run on codes, which gives
    the same bits), and ``QLinearConv`` / ``QLinearMatMul`` requantize with
    ``mode="onnx"`` (float64, exact accumulation). Float ops compute in float32 in
    their own summation order, so their outputs equal the reference's to float32
    rounding only; see :func:`from_onnx`.

A float model (no quantize nodes) gives a float graph. Tensor names are ONNX's; node
names are ONNX's node names (or ``"<OpType>_<index>"`` for unnamed nodes; a fused group
takes the name of its float node). :func:`onnx_intermediates` returns onnxruntime's (or
the reference evaluator's) value of any set of tensors, to compare with ``graph.run(x,
keep_intermediates=True)``.

onnx (and onnxruntime, for :func:`onnx_intermediates`) are imported inside the functions;
without them they raise ``ModuleNotFoundError`` naming the ``peers`` extra. Importing
this module imports neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_choice
from ..affine import quantize
from ..models import graph as _graph
from ..qnn.accumulation import check_accumulation
from ..qnn.conv import same_padding
from ..qparams import QParams, QuantSpec

if TYPE_CHECKING:
    import onnx

PEERS_HINT = "install the peers extra (pip install 'npquant[peers]') for onnx and onnxruntime"

TARGETS = ("onnxruntime", "reference")

#: ONNX operators :func:`from_onnx` translates, by format.
SUPPORTED = {
    "QOperator": (
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv (grouped, depthwise, per-channel weights, int32 bias)",
        "QLinearMatMul (constant B, batched A)",
        "com.microsoft.QGemm (alpha 1, quantized output)",
        "com.microsoft.QLinearAdd",
        "com.microsoft.QLinearAveragePool",
        "com.microsoft.QLinearGlobalAveragePool",
        "com.microsoft.QLinearConcat",
        "MaxPool / Reshape / Flatten on codes",
    ),
    "QDQ": (
        "DequantizeLinear -> Conv / MatMul / Gemm / Add / AveragePool / GlobalAveragePool / Concat / "
        "MaxPool / Reshape / Flatten / Relu / Clip -> QuantizeLinear",
    ),
    "float": (
        "Conv",
        "MatMul (constant B)",
        "Gemm (alpha = beta = 1, transA = 0)",
        "Add",
        "Relu",
        "Clip (0 .. inf or 0 .. 6)",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Concat",
        "Reshape",
        "Flatten",
        "Identity",
        "Dropout (inference)",
        "Constant",
    ),
}

_MS = "com.microsoft"
_FUSABLE = ("Conv", "MatMul", "Gemm", "Add", "AveragePool", "GlobalAveragePool", "Concat")
_ON_CODES = ("MaxPool", "Reshape", "Flatten", "Relu")  # exact on codes between equal qparams
# (op type, index of the codes input, index of its scale); its zero point follows the scale
_CODE_INPUTS = {
    "QLinearConv": (0, 1),
    "QLinearMatMul": (0, 1),
    "DequantizeLinear": (0, 1),
    "QGemm": (0, 1),
    "QLinearAdd": (0, 1),
    "QLinearAveragePool": (0, 1),
    "QLinearGlobalAveragePool": (0, 1),
}


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper
    except ImportError as e:
        raise ModuleNotFoundError(f"npquant.importers.onnx needs onnx: {PEERS_HINT}") from e
    return onnx


def _load(onnx, model):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(f"model must be a path, bytes or an onnx.ModelProto, got {type(model).__name__}")


@dataclass
class _T:
    """What the importer knows of one ONNX tensor.

    ``kind``: ``"float"`` / ``"codes"`` (a tensor of the graph, float or integer codes of
    ``qp``), ``"const"`` (a float constant ``value``), ``"qconst"`` (constant codes
    ``value`` of ``qp``, possibly per axis), ``"dq"`` (``DequantizeLinear`` of the codes
    tensor ``src``, not yet in the graph: ``node`` is its node name).
    """

    kind: str
    name: str | None = None
    qp: QParams | None = None
    value: np.ndarray | None = None
    src: str | None = None
    node: str | None = None


def _qparams(scale, zero_point, axis=None, what="qparams") -> QParams:
    s = np.asarray(scale, np.float32)
    z = np.zeros(s.shape, np.uint8) if zero_point is None else np.asarray(zero_point)
    if z.dtype not in (np.int8, np.uint8, np.int32):
        raise ValueError(f"{what}: zero point of type {z.dtype} (int8, uint8 and int32 are supported)")
    if z.dtype == np.int32:
        spec = QuantSpec(bits=16, signed=True, axis=axis if s.size > 1 else None)  # a stand-in: bias codes
    else:
        spec = QuantSpec(bits=8, signed=z.dtype == np.int8, axis=axis if s.size > 1 else None)
    if s.size > 1:
        return QParams(s.ravel(), z.ravel().astype(np.int32), spec)
    return QParams(np.float32(s.reshape(())), int(z.reshape(())), spec)


def _act(qp: QParams) -> dict:
    return {
        "scale": float(np.float32(qp.scale)),
        "zero_point": int(qp.zero_point),
        "bits": 8,
        "signed": bool(qp.spec.signed),
    }


def _same_qp(a: QParams, b: QParams) -> bool:
    return (
        a.spec.axis is None
        and b.spec.axis is None
        and np.float32(a.scale) == np.float32(b.scale)
        and int(a.zero_point) == int(b.zero_point)
        and a.spec.signed == b.spec.signed
    )


def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Importer:
    def __init__(self, onnx, model, target: str, accumulation: str, shapes: dict):
        from onnx import numpy_helper

        self.onnx, self.np_helper = onnx, numpy_helper
        self.target, self.accumulation, self.shapes = target, accumulation, shapes
        g = model.graph
        self.g = g
        self.nodes = list(g.node)
        self.names = []
        used = set()
        for i, n in enumerate(self.nodes):
            nm = n.name or f"{n.op_type}_{i}"
            while nm in used:
                nm = f"{nm}_{i}"
            used.add(nm)
            self.names.append(nm)
        self.consumers = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        self.outputs = [o.name for o in g.output]
        self.env = {}
        inits = {t.name for t in g.initializer}
        for t in g.initializer:
            self.env[t.name] = _T("const", value=numpy_helper.to_array(t))
        self.out_nodes, self.inputs, self.input_qparams = [], [], {}
        self.skip = set()
        self.materialized = {}
        for vi in g.input:
            if vi.name in inits:
                continue
            self.graph_input(vi)

    # -- helpers

    def where(self, i) -> str:
        n = self.nodes[i]
        dom = f"{n.domain}." if n.domain and n.domain != "ai.onnx" else ""
        return f"node {self.names[i]!r} ({dom}{n.op_type})"

    def unsupported(self, i, why=""):
        n = self.nodes[i]
        raise ValueError(
            f"{self.where(i)} is not supported{': ' + why if why else ''} (op type {n.op_type!r}"
            f"{', domain ' + repr(n.domain) if n.domain else ''}; npquant.importers.onnx.SUPPORTED "
            "lists what from_onnx translates)"
        )

    def get(self, i, k, role="input"):
        n = self.nodes[i]
        if k >= len(n.input) or not n.input[k]:
            raise ValueError(f"{self.where(i)}: missing input {k} ({role})")
        t = n.input[k]
        if t not in self.env:
            raise ValueError(
                f"{self.where(i)}: input {k} ({role}) is tensor {t!r}, which is neither a graph input, "
                "an initializer nor the output of an earlier node"
            )
        return self.env[t]

    def const(self, i, k, role, optional=False):
        """The value of a constant input (an initializer or a Constant node's output)."""
        n = self.nodes[i]
        if k >= len(n.input) or not n.input[k]:
            if optional:
                return None
            raise ValueError(f"{self.where(i)}: missing input {k} ({role}); expected a constant initializer")
        t = n.input[k]
        e = self.env.get(t)
        if e is None or e.kind not in ("const", "qconst"):
            raise ValueError(
                f"{self.where(i)}: input {k} ({role}) must be a constant: expected an initializer or "
                f"Constant node named {t!r}, " + ("found none" if e is None else "found a computed tensor")
            )
        return e.value

    def qp_inputs(self, i, k_scale, what, axis=None):
        return _qparams(
            self.const(i, k_scale, f"{what} scale"),
            self.const(i, k_scale + 1, f"{what} zero point", optional=True),
            axis,
            what,
        )

    def emit(self, name, op, inputs, out, attrs=None, params=None):
        self.out_nodes.append(_graph.Node(name, op, inputs, [out], attrs or {}, params or {}))

    def graph_input(self, vi):
        onnx = self.onnx
        et = vi.type.tensor_type.elem_type
        if et in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            self.env[vi.name] = _T("float", vi.name)
        elif et in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            qp = None
            for j in self.consumers.get(vi.name, []):
                n = self.nodes[j]
                ks = _CODE_INPUTS.get(n.op_type)
                if ks and n.input[ks[0]] == vi.name:
                    qp = _qparams(
                        self.const(j, ks[1], "x scale"),
                        self.const(j, ks[1] + 1, "x zero point", optional=True),
                        None,
                        vi.name,
                    )
                    break
            if qp is None:
                raise ValueError(
                    f"graph input {vi.name!r} holds integer codes, but no QLinear* or DequantizeLinear "
                    "node reads it, so its scale and zero point are unknown"
                )
            self.env[vi.name] = _T("codes", vi.name, qp)
            self.input_qparams[vi.name] = qp
        else:
            raise ValueError(
                f"graph input {vi.name!r} has element type "
                f"{onnx.TensorProto.DataType.Name(et)}; float, uint8 and int8 inputs are supported"
            )
        self.inputs.append(vi.name)

    def float_ref(self, i, k):
        """A graph tensor name holding input ``k`` as float (dequantizing or emitting a constant)."""
        e = self.get(i, k)
        t = self.nodes[i].input[k]
        if e.kind == "float":
            return e.name
        if e.kind == "dq":
            if (t, "float") not in self.materialized:
                self.emit(e.node, "dequantize", [e.src], t)
                self.materialized[t, "float"] = t
            return t
        if e.kind in ("const", "qconst"):
            if (t, "float") not in self.materialized:
                name = t if (t, "codes") not in self.materialized else f"{t}_float"
                self.emit(f"{name}_constant", "constant", [], name, params={"value": self.float_value(e)})
                self.materialized[t, "float"] = name
            return self.materialized[t, "float"]
        raise ValueError(
            f"{self.where(i)}: input {k} {t!r} holds integer codes where a float op needs floats "
            "(a DequantizeLinear is missing)"
        )

    def float_value(self, e) -> np.ndarray:
        if e.kind == "const":
            v = np.asarray(e.value)
            if v.dtype.kind not in "fiub":
                raise ValueError(f"a constant of dtype {v.dtype} cannot be used as a float tensor")
            return v.astype(np.float32)
        qp = e.qp
        codes = np.asarray(e.value)
        if qp.spec.axis is not None:
            shape = [1] * codes.ndim
            shape[qp.spec.axis] = -1
            s, z = np.asarray(qp.scale, np.float32).reshape(shape), np.asarray(qp.zero_point).reshape(shape)
        else:
            s, z = np.float32(qp.scale), int(qp.zero_point)
        return ((codes.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)  # ONNX DequantizeLinear

    def codes_ref(self, i, k, qp_given=None):
        """(graph tensor name, QParams) of a codes input, checked against the node's own qparams."""
        e = self.get(i, k)
        t = self.nodes[i].input[k]
        if e.kind == "const" and qp_given is not None and np.asarray(e.value).dtype in (np.int8, np.uint8):
            e = _T("qconst", t, qp_given, np.asarray(e.value))  # QOperator: constant codes read with given qparams
        if e.kind == "qconst":
            t = e.name or t  # the codes' own tensor (an initializer, or a QuantizeLinear output)
            if e.qp.spec.axis is not None:
                raise ValueError(
                    f"{self.where(i)}: input {k} {t!r} is a per-axis constant where per-tensor codes are expected"
                )
            if (t, "codes") not in self.materialized:
                name = t if (t, "float") not in self.materialized else f"{t}_codes"
                self.emit(f"{name}_constant", "qconstant", [], name, {"output": _act(e.qp)}, {"value": e.value})
                self.materialized[t, "codes"] = name
            name, qp = self.materialized[t, "codes"], e.qp
        elif e.kind == "codes":
            name, qp = e.name, e.qp
        else:
            raise ValueError(f"{self.where(i)}: input {k} {t!r} must hold integer codes, got a float tensor")
        if qp_given is not None and not _same_qp(qp, qp_given):
            raise ValueError(
                f"{self.where(i)}: input {k} {t!r} has scale {float(qp.scale)!r} and zero point "
                f"{int(qp.zero_point)} where it was produced, but this node reads it with scale "
                f"{float(qp_given.scale)!r} and zero point {int(qp_given.zero_point)}"
            )
        return name, qp

    # -- the pass

    def run(self):
        for i, n in enumerate(self.nodes):
            if i in self.skip:
                continue
            if n.domain not in ("", "ai.onnx", _MS):
                self.unsupported(i, f"the domain {n.domain!r} is unknown")
            if n.op_type in (
                "MatMulInteger",
                "ConvInteger",
                "DynamicQuantizeLinear",
                "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul",
            ):
                self.unsupported(
                    i,
                    "dynamic quantization (int32 accumulators and scales computed at run time) is "
                    "not a static integer graph; quantize the model statically (quantize_static)",
                )
            fn = getattr(self, f"op_{n.op_type}", None)
            if fn is None or (n.domain == _MS) != n.op_type.startswith(
                ("QGemm", "QLinearAdd", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat")
            ):
                self.unsupported(i)
            if len(n.output) != 1 and n.op_type not in ("Dropout",):
                self.unsupported(i, f"{len(n.output)} outputs")
            fn(i, n, _attrs(self.onnx, n))
        outs = []
        for o in self.outputs:
            e = self.env.get(o)
            if e is None:
                raise ValueError(f"graph output {o!r} is not produced by any node")
            if e.kind == "dq" and (o, "float") not in self.materialized:
                self.emit(e.node, "dequantize", [e.src], o)
                self.materialized[o, "float"] = o
            elif e.kind in ("const", "qconst"):
                raise ValueError(f"graph output {o!r} is a constant; only computed outputs are supported")
            outs.append(o)
        return self.out_nodes, self.inputs, outs, self.input_qparams

    def fused_q(self, i):
        """The QuantizeLinear node that alone consumes node ``i``'s output, or None."""
        out = self.nodes[i].output[0]
        cons = self.consumers.get(out, [])
        if out in self.outputs or len(cons) != 1:
            return None
        j = cons[0]
        q = self.nodes[j]
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or q.input[0] != out:
            return None
        s = self.env.get(q.input[1]) if len(q.input) > 1 else None
        if s is None or s.kind != "const" or np.asarray(s.value).size != 1:
            return None
        return j

    def q_out(self, j):
        """(output name, QParams) of QuantizeLinear node ``j``."""
        q = self.nodes[j]
        return q.output[0], self.qp_inputs(j, 1, "y")

    def all_dq(self, i, ks):
        return all(self.get(i, k).kind in ("dq", "qconst") for k in ks)

    def try_fuse(self, i, ks, fuse):
        """Fuse node ``i`` (float inputs ``ks``) with the Q after it, if the inputs are DQ outputs."""
        j = self.fused_q(i)
        if j is None or not self.all_dq(i, ks):
            return False
        out, y_qp = self.q_out(j)
        if fuse(out, y_qp) is False:
            return False
        self.skip.add(j)
        self.env[out] = _T("codes", out, y_qp)
        return True

    def dq_codes(self, i, k):
        """(graph codes tensor name, QParams) behind a DQ (or constant codes) input of a fused node."""
        e = self.get(i, k)
        t = self.nodes[i].input[k]
        if e.kind == "qconst":
            return self.codes_ref(i, k)
        src = self.env[e.src]
        if not _same_qp(src.qp, e.qp):
            raise ValueError(
                f"{self.where(i)}: input {k} {t!r} dequantizes {e.src!r} with other qparams than it was quantized with"
            )
        return e.src, e.qp

    # -- quantize / dequantize

    def op_QuantizeLinear(self, i, n, a):
        x = self.get(i, 0, "x")
        axis = a.get("axis", 1)
        s = np.asarray(self.const(i, 1, "y scale"))
        zp = self.const(i, 2, "y zero point", optional=True)
        if a.get("saturate", 1) != 1 or a.get("block_size", 0):
            self.unsupported(i, "saturate=0 or block_size")
        if x.kind in ("const", "qconst"):
            v = self.float_value(x)
            qp = _qparams(s, zp, axis % max(v.ndim, 1) if s.size > 1 else None, n.output[0])
            self.env[n.output[0]] = _T("qconst", n.output[0], qp, quantize(v, qp, method="divide"))
            return
        if s.size != 1:
            self.unsupported(i, "per-axis quantization of a computed tensor")
        qp = _qparams(s, zp, None, n.output[0])
        if qp.spec.bits != 8:
            self.unsupported(i, "only int8 and uint8 outputs")
        self.emit(
            self.names[i], "quantize", [self.float_ref(i, 0)], n.output[0], {"output": _act(qp), "method": "divide"}
        )
        self.env[n.output[0]] = _T("codes", n.output[0], qp)

    def op_DequantizeLinear(self, i, n, a):
        x = self.get(i, 0, "x")
        s = np.asarray(self.const(i, 1, "x scale"))
        zp = self.const(i, 2, "x zero point", optional=True)
        if a.get("block_size", 0):
            self.unsupported(i, "block_size")
        if x.kind in ("const", "qconst"):
            codes = np.asarray(x.value)
            if codes.dtype not in (np.int8, np.uint8, np.int32):
                self.unsupported(i, f"constant codes of dtype {codes.dtype}")
            axis = a.get("axis", 1) % max(codes.ndim, 1)
            zp = np.zeros((), codes.dtype) if zp is None else np.asarray(zp)
            self.env[n.output[0]] = _T(
                "qconst",
                x.name if x.kind == "qconst" else n.input[0],
                _qparams(s, zp, axis if s.size > 1 else None, n.output[0]),
                codes,
            )
            return
        if x.kind != "codes":
            raise ValueError(f"{self.where(i)}: input 0 {n.input[0]!r} is float; DequantizeLinear needs codes")
        if s.size != 1:
            self.unsupported(i, "per-axis dequantization of a computed tensor")
        zp = np.zeros((), x.qp.spec.dtype) if zp is None else zp
        qp = _qparams(s, zp, None, n.input[0])
        if not _same_qp(qp, x.qp):
            raise ValueError(
                f"{self.where(i)}: dequantizes {n.input[0]!r} with scale {float(qp.scale)!r} and zero "
                f"point {int(qp.zero_point)}, but it holds codes of scale {float(x.qp.scale)!r} and "
                f"zero point {int(x.qp.zero_point)}"
            )
        self.env[n.output[0]] = _T("dq", qp=qp, src=x.name, node=self.names[i])

    # -- integer GEMM-like ops

    def weight_params(self, i, w_codes, w_qp, what="weight"):
        w = np.asarray(w_codes)
        if w.dtype not in (np.int8, np.uint8):
            self.unsupported(i, f"{what} codes of dtype {w.dtype} (int8 or uint8)")
        scale = np.asarray(w_qp.scale, np.float32)
        zp = np.asarray(w_qp.zero_point, np.int32)
        return {"weight": w, "weight_scale": scale, "weight_zero_point": zp}

    def gemm_attrs(self, y_qp, target_mode=None):
        mode = target_mode or ("fp32" if self.target == "onnxruntime" else "onnx")
        return {
            "output": _act(y_qp),
            "mode": mode,
            "accumulation": self.accumulation if self.target == "onnxruntime" else "exact",
        }

    def bias(self, i, b, n_out):
        if b is None:
            return {}
        v = np.asarray(b)
        if v.dtype != np.int32:
            self.unsupported(i, f"a bias of dtype {v.dtype} (int32)")
        if v.size == 1:
            v = np.full(n_out, int(v.reshape(-1)[0]), np.int32)
        return {"bias_q": v.reshape(n_out)}

    def conv_geometry(self, i, a, x_name, kernel):
        kh, kw = kernel
        if len(a.get("kernel_shape", kernel)) != 2:
            self.unsupported(i, "only 2-D convolutions")
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = self.pads(i, a, x_name, (kh, kw), strides, dil)
        return {"stride": strides, "padding": pads, "dilation": dil, "groups": int(a.get("group", 1))}

    def pads(self, i, a, x_name, kernel, strides, dil=(1, 1)):
        """ONNX pads (x1_begin, x2_begin, x1_end, x2_end) or auto_pad as [top, bottom, left, right]."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                self.unsupported(i, f"pads {p} (2-D: four values)")
            return [int(p[0]), int(p[2]), int(p[1]), int(p[3])]
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            self.unsupported(i, f"auto_pad={auto!r}")
        shape = self.shape_of(x_name)
        if shape is None:
            raise ValueError(
                f"{self.where(i)}: auto_pad={auto} needs the input's static shape; run "
                "onnx.shape_inference.infer_shapes on the model first"
            )
        extra = "after" if auto == "SAME_UPPER" else "before"
        out = [same_padding(shape[2 + d], kernel[d], strides[d], dil[d], extra=extra) for d in range(2)]
        return [out[0][0], out[0][1], out[1][0], out[1][1]]

    def shape_of(self, name):
        return self.shapes.get(name)

    def emit_qconv(self, i, x_name, x_qp, w, w_qp, b, y_qp, out, a, mode=None):
        if w_qp.spec.axis not in (None, 0):
            self.unsupported(i, f"per-channel weights along axis {w_qp.spec.axis} (0 is supported)")
        if w.ndim != 4:
            self.unsupported(i, f"a weight of shape {w.shape} (2-D convolutions only)")
        attrs = {**self.gemm_attrs(y_qp, mode), **self.conv_geometry(i, a, self.nodes[i].input[0], w.shape[2:])}
        self.emit(
            self.names[i],
            "qconv2d",
            [x_name],
            out,
            attrs,
            {**self.weight_params(i, w, w_qp), **self.bias(i, b, w.shape[0])},
        )

    def emit_qlinear(self, i, x_name, w_kn, w_qp, b, y_qp, out, mode=None, trans=False):
        """``w_kn``: (K, N) codes (ONNX MatMul's B), or (N, K) with ``trans``; per-column qparams."""
        w = np.asarray(w_kn)
        if w.ndim != 2:
            self.unsupported(i, f"a constant B of shape {w.shape} (2-D)")
        axis_n = 0 if trans else 1
        if w_qp.spec.axis is not None and w_qp.spec.axis != axis_n:
            self.unsupported(i, f"per-axis weights along axis {w_qp.spec.axis} (per output column only)")
        w_on = w if trans else w.T
        qp = w_qp
        if w_qp.spec.axis is not None:
            qp = QParams(
                np.asarray(w_qp.scale, np.float32).ravel(),
                np.asarray(w_qp.zero_point).ravel(),
                w_qp.spec.replace(axis=0),
            )
        self.emit(
            self.names[i],
            "qlinear",
            [x_name],
            out,
            self.gemm_attrs(y_qp, mode),
            {**self.weight_params(i, np.ascontiguousarray(w_on), qp), **self.bias(i, b, w_on.shape[0])},
        )

    def op_QLinearConv(self, i, n, a):
        x_qp = self.qp_inputs(i, 1, "x")
        x_name, _ = self.codes_ref(i, 0, x_qp)
        w = np.asarray(self.const(i, 3, "w"))
        w_qp = self.qp_inputs(i, 4, "w", axis=0)
        y_qp = self.qp_inputs(i, 6, "y")
        b = self.const(i, 8, "B", optional=True)
        self.emit_qconv(i, x_name, x_qp, w, w_qp, b, y_qp, n.output[0], a)
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    def op_QLinearMatMul(self, i, n, a):
        a_qp = self.qp_inputs(i, 1, "a")
        x_name, _ = self.codes_ref(i, 0, a_qp)
        if self.get(i, 3).kind not in ("const", "qconst"):
            self.unsupported(i, "a computed B (only a constant B, the weights)")
        w = np.asarray(self.const(i, 3, "b"))
        w_qp = self.qp_inputs(i, 4, "b", axis=1)
        y_qp = self.qp_inputs(i, 6, "y")
        self.emit_qlinear(i, x_name, w, w_qp, None, y_qp, n.output[0])
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    def op_QGemm(self, i, n, a):
        if len(n.input) < 8 or not n.input[7]:
            self.unsupported(i, "a float output (no y_scale)")
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0:
            self.unsupported(i, "transA=1 or alpha != 1")
        a_qp = self.qp_inputs(i, 1, "a")
        x_name, _ = self.codes_ref(i, 0, a_qp)
        trans = bool(a.get("transB", 0))
        w = np.asarray(self.const(i, 3, "B"))
        w_qp = self.qp_inputs(i, 4, "B", axis=0 if trans else 1)
        y_qp = self.qp_inputs(i, 7, "y")
        self.emit_qlinear(
            i, x_name, w, w_qp, self.const(i, 6, "C", optional=True), y_qp, n.output[0], mode="fp32", trans=trans
        )
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    def op_QLinearAdd(self, i, n, a):
        a_qp, b_qp, y_qp = self.qp_inputs(i, 1, "A"), self.qp_inputs(i, 4, "B"), self.qp_inputs(i, 6, "C")
        an, _ = self.codes_ref(i, 0, a_qp)
        bn, _ = self.codes_ref(i, 3, b_qp)
        self.emit(self.names[i], "qadd", [an, bn], n.output[0], {"output": _act(y_qp), "mode": "onnxruntime"})
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    def pool_attrs(self, i, a, x_name):
        k = list(a.get("kernel_shape", []))
        if len(k) != 2:
            self.unsupported(i, f"kernel_shape {k} (2-D pooling only)")
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("storage_order", 0):
            self.unsupported(i, "ceil_mode, dilations or storage_order")
        s = list(a.get("strides", [1, 1]))
        return {"kernel_size": k, "stride": s, "padding": self.pads(i, a, x_name, k, s)}

    def op_QLinearAveragePool(self, i, n, a):
        if a.get("channels_last", 0):
            self.unsupported(i, "channels_last=1")
        x_qp, y_qp = self.qp_inputs(i, 1, "x"), self.qp_inputs(i, 3, "y")
        x_name, _ = self.codes_ref(i, 0, x_qp)
        self.emit_avgpool(i, x_name, y_qp, n.output[0], a)

    def emit_avgpool(self, i, x_name, y_qp, out, a):
        attrs = {
            "output": _act(y_qp),
            **self.pool_attrs(i, a, self.nodes[i].input[0]),
            "count_include_pad": bool(a.get("count_include_pad", 0)),
        }
        self.emit(self.names[i], "qlinear_avgpool2d", [x_name], out, attrs)
        self.env[out] = _T("codes", out, y_qp)

    def op_QLinearGlobalAveragePool(self, i, n, a):
        if a.get("channels_last", 0):
            self.unsupported(i, "channels_last=1")
        x_qp, y_qp = self.qp_inputs(i, 1, "x"), self.qp_inputs(i, 3, "y")
        x_name, _ = self.codes_ref(i, 0, x_qp)
        self.emit(self.names[i], "qlinear_global_avgpool2d", [x_name], n.output[0], {"output": _act(y_qp)})
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    def op_QLinearConcat(self, i, n, a):
        y_qp = self.qp_inputs(i, 0, "Y")
        if (len(n.input) - 2) % 3 or len(n.input) < 5:
            raise ValueError(
                f"{self.where(i)}: expected Y_scale, Y_zero_point and (tensor, scale, zero point) "
                f"triples, got {len(n.input)} inputs"
            )
        names = []
        for k in range(2, len(n.input), 3):
            names.append(self.codes_ref(i, k, self.qp_inputs(i, k + 1, f"input {k}"))[0])
        self.emit(
            self.names[i], "qlinear_concat", names, n.output[0], {"output": _act(y_qp), "axis": int(a.get("axis", 1))}
        )
        self.env[n.output[0]] = _T("codes", n.output[0], y_qp)

    # -- float ops, fused QDQ groups, ops on codes

    def op_Conv(self, i, n, a):
        ks = [0, 1] + ([2] if len(n.input) > 2 and n.input[2] else [])
        if self.target == "onnxruntime" and self.get(i, 1).kind == "qconst":

            def fuse(out, y_qp):
                w = self.get(i, 1)
                b = self.get(i, 2) if 2 in ks else None
                if b is not None and (b.kind != "qconst" or np.asarray(b.value).dtype != np.int32):
                    return False
                x_name, x_qp = self.dq_codes(i, 0)
                self.emit_qconv(
                    i, x_name, x_qp, np.asarray(w.value), w.qp, None if b is None else b.value, y_qp, out, a
                )

            if self.try_fuse(i, ks, fuse):
                return
        w = self.float_value(self.get(i, 1))
        if w.ndim != 4:
            self.unsupported(i, "only 2-D convolutions")
        geo = self.conv_geometry(i, a, n.input[0], w.shape[2:])
        t, b_, l_, r = geo["padding"]
        x_ref = self.float_ref(i, 0)
        if t != b_ or l_ != r:  # zero padding first: the same sums
            self.emit(f"{self.names[i]}_pad", "pad2d", [x_ref], f"{n.output[0]}_padded", {"padding": geo["padding"]})
            x_ref, t, l_ = f"{n.output[0]}_padded", 0, 0
        params = {"weight": w}
        if 2 in ks:
            params["bias"] = self.float_value(self.get(i, 2)).reshape(-1)
        self.emit(
            self.names[i],
            "conv2d",
            [x_ref],
            n.output[0],
            {"stride": geo["stride"], "padding": [t, l_], "dilation": geo["dilation"], "groups": geo["groups"]},
            params,
        )
        self.env[n.output[0]] = _T("float", n.output[0])

    def gemm_like(self, i, n, w_k, b_k, trans, a):
        if self.get(i, w_k).kind not in ("const", "qconst"):
            self.unsupported(i, "a computed B (only a constant B, the weights)")
        ks = [0, w_k] + ([b_k] if b_k is not None else [])
        if self.target == "onnxruntime" and self.get(i, w_k).kind == "qconst":

            def fuse(out, y_qp):
                w = self.get(i, w_k)
                b = self.get(i, b_k) if b_k is not None else None
                if b is not None and (b.kind != "qconst" or np.asarray(b.value).dtype != np.int32):
                    return False
                x_name, _ = self.dq_codes(i, 0)
                self.emit_qlinear(i, x_name, w.value, w.qp, None if b is None else b.value, y_qp, out, trans=trans)

            if self.try_fuse(i, ks, fuse):
                return
        w = self.float_value(self.get(i, w_k))
        if w.ndim != 2:
            self.unsupported(i, f"a constant B of shape {w.shape} (2-D)")
        params = {"weight": np.ascontiguousarray(w if trans else w.T)}
        if b_k is not None:
            params["bias"] = np.broadcast_to(
                self.float_value(self.get(i, b_k)).reshape(-1), (params["weight"].shape[0],)
            ).copy()
        self.emit(self.names[i], "linear", [self.float_ref(i, 0)], n.output[0], params=params)
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_MatMul(self, i, n, a):
        self.gemm_like(i, n, 1, None, False, a)

    def op_Gemm(self, i, n, a):
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            self.unsupported(i, "transA=1, alpha != 1 or beta != 1")
        self.gemm_like(i, n, 1, 2 if len(n.input) > 2 and n.input[2] else None, bool(a.get("transB", 0)), a)

    def op_Add(self, i, n, a):
        if self.target == "onnxruntime":

            def fuse(out, y_qp):
                if any(self.get(i, k).qp.spec.bits != 8 for k in (0, 1)):
                    return False
                an, bn = self.dq_codes(i, 0)[0], self.dq_codes(i, 1)[0]
                self.emit(self.names[i], "qadd", [an, bn], out, {"output": _act(y_qp), "mode": "onnxruntime"})

            if self.try_fuse(i, [0, 1], fuse):
                return
        sa, sb = self.shape_of(n.input[0]), self.shape_of(n.input[1])
        op = "add" if sa is not None and sa == sb else "add_broadcast"
        self.emit(self.names[i], op, [self.float_ref(i, 0), self.float_ref(i, 1)], n.output[0])
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_AveragePool(self, i, n, a):
        if self.target == "onnxruntime":
            if self.try_fuse(i, [0], lambda out, y_qp: self.emit_avgpool(i, self.dq_codes(i, 0)[0], y_qp, out, a)):
                return
        p = self.pool_attrs(i, a, n.input[0])
        t, b, l_, r = p["padding"]
        if t != b or l_ != r:
            self.unsupported(i, f"asymmetric padding {p['padding']} in a float average pool")
        self.emit(
            self.names[i],
            "avgpool2d",
            [self.float_ref(i, 0)],
            n.output[0],
            {
                "kernel_size": p["kernel_size"],
                "stride": p["stride"],
                "padding": [t, l_],
                "count_include_pad": bool(a.get("count_include_pad", 0)),
            },
        )
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_GlobalAveragePool(self, i, n, a):
        if self.target == "onnxruntime":

            def fuse(out, y_qp):
                self.emit(
                    self.names[i], "qlinear_global_avgpool2d", [self.dq_codes(i, 0)[0]], out, {"output": _act(y_qp)}
                )

            if self.try_fuse(i, [0], fuse):
                return
        self.emit(self.names[i], "global_avgpool2d", [self.float_ref(i, 0)], n.output[0])
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_Concat(self, i, n, a):
        ks = list(range(len(n.input)))
        axis = int(a.get("axis", 1))
        if self.target == "onnxruntime":

            def fuse(out, y_qp):
                names = [self.dq_codes(i, k)[0] for k in ks]
                self.emit(self.names[i], "qlinear_concat", names, out, {"output": _act(y_qp), "axis": axis})

            if self.try_fuse(i, ks, fuse):
                return
        x = self.get(i, 0)
        if x.kind == "codes":  # QOperator: Concat on codes of equal qparams
            names = [self.codes_ref(i, k, x.qp)[0] for k in ks]
            self.emit(self.names[i], "qlinear_concat", names, n.output[0], {"output": _act(x.qp), "axis": axis})
            self.env[n.output[0]] = _T("codes", n.output[0], x.qp)
            return
        self.emit(self.names[i], "concat", [self.float_ref(i, k) for k in ks], n.output[0], {"axis": axis})
        self.env[n.output[0]] = _T("float", n.output[0])

    def on_codes(self, i, n, make):
        """An op that is exact on codes: on a codes input directly, or between a DQ and a Q
        of equal qparams; ``make(float: bool)`` -> (op, attrs) or None when it has no form."""
        x = self.get(i, 0)
        if x.kind == "codes":
            op, attrs = make(False)
            self.emit(self.names[i], op, [x.name], n.output[0], attrs)
            self.env[n.output[0]] = _T("codes", n.output[0], x.qp)
            return
        if x.kind == "dq":
            j = self.fused_q(i)
            if j is not None:
                out, y_qp = self.q_out(j)
                src, qp = self.dq_codes(i, 0)
                if _same_qp(qp, y_qp):
                    op, attrs = make(False)
                    self.emit(self.names[i], op, [src], out, attrs)
                    self.skip.add(j)
                    self.env[out] = _T("codes", out, y_qp)
                    return
        op, attrs = make(True)
        self.emit(self.names[i], op, [self.float_ref(i, 0)], n.output[0], attrs)
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_MaxPool(self, i, n, a):
        if len(n.output) > 1 and n.output[1]:
            self.unsupported(i, "the Indices output")
        p = self.pool_attrs(i, a, n.input[0])

        def make(flt):
            t, b, l_, r = p["padding"]
            if flt:
                if t != b or l_ != r:
                    self.unsupported(i, f"asymmetric padding {p['padding']} in a float max pool")
                return "maxpool2d", {"kernel_size": p["kernel_size"], "stride": p["stride"], "padding": [t, l_]}
            return "qmaxpool2d", {**p, "padding": [t, l_] if (t, l_) == (b, r) else p["padding"]}

        self.on_codes(i, n, make)

    def reshape_target(self, i, n, a):
        if n.op_type == "Flatten":
            axis = int(a.get("axis", 1))
            if axis == 1:
                return None
            if axis == 0:
                return [1, -1]
            self.unsupported(i, f"Flatten axis={axis} (0 or 1)")
        shape = [int(v) for v in np.asarray(self.const(i, 1, "shape")).reshape(-1)]
        if a.get("allowzero", 0) and 0 in shape:
            self.unsupported(i, "allowzero=1 with a 0 in shape")
        return shape

    def op_Reshape(self, i, n, a):
        shape = self.reshape_target(i, n, a)
        self.on_codes(i, n, lambda flt: ("reshape" if flt else "qreshape", {"shape": shape}))

    def op_Flatten(self, i, n, a):
        shape = self.reshape_target(i, n, a)
        if shape is None:
            self.on_codes(i, n, lambda flt: ("flatten" if flt else "qflatten", {}))
        else:
            self.on_codes(i, n, lambda flt: ("reshape" if flt else "qreshape", {"shape": shape}))

    def op_Relu(self, i, n, a):
        def make(flt):
            return ("relu", {}) if flt else ("qrelu", {"activation": "relu"})

        if self.get(i, 0).kind == "codes":
            self.unsupported(i, "Relu on integer codes (ONNX Relu takes floats; a DequantizeLinear is missing)")
        self.on_codes(i, n, make)

    def op_Clip(self, i, n, a):
        lo = self.const(i, 1, "min", optional=True)
        hi = self.const(i, 2, "max", optional=True)
        lo = float(np.asarray(lo)) if lo is not None else float(a.get("min", -np.inf))
        hi = float(np.asarray(hi)) if hi is not None else float(a.get("max", np.inf))
        if (lo, hi) == (0.0, np.inf):
            op = "relu"
        elif (lo, hi) == (0.0, 6.0):
            op = "relu6"
        else:
            self.unsupported(i, f"Clip to [{lo}, {hi}] (only [0, inf) and [0, 6])")
        if op == "relu" and self.get(i, 0).kind == "dq":
            self.on_codes(i, n, lambda flt: ("relu", {}) if flt else ("qrelu", {"activation": "relu"}))
            return
        self.emit(self.names[i], op, [self.float_ref(i, 0)], n.output[0])
        self.env[n.output[0]] = _T("float", n.output[0])

    def op_Identity(self, i, n, a):
        self.env[n.output[0]] = self.get(i, 0)

    def op_Dropout(self, i, n, a):
        if len(n.output) > 1 and n.output[1]:
            self.unsupported(i, "the mask output")
        self.env[n.output[0]] = self.get(i, 0)

    def op_Constant(self, i, n, a):
        if "value" not in a:
            self.unsupported(i, "a Constant without a 'value' tensor")
        self.env[n.output[0]] = _T("const", value=self.np_helper.to_array(a["value"]))


def from_onnx(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    accumulation: str | None = None,
    target: str = "onnxruntime",
    name: str | None = None,
) -> _graph.Graph:
    """An npquant :class:`~npquant.models.graph.Graph` of an ONNX model.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        A float model, or a quantized one in the QOperator or QDQ format (module
        docstring; :data:`SUPPORTED` lists the operators). 2-D NCHW convolutions and
        pools; ONNX ``pads`` (top, left, bottom, right) become npquant's (top, bottom,
        left, right); ``auto_pad`` ``SAME_UPPER`` / ``SAME_LOWER`` / ``VALID`` are resolved
        from the input's shape (the model's shape inference).
    accumulation : str, optional
        The accumulation of every ``qconv2d`` / ``qlinear`` node with
        ``target="onnxruntime"`` (:mod:`npquant.qnn.accumulation`). The default ``None`` is
        ``"mlas"``: the path onnxruntime's MLAS takes on the CPU at hand (exact with
        AVX-512 VNNI or AVX-VNNI, int16 pair saturation on AVX2 for dense and grouped
        convs and matmuls), resolved when the graph is built or loaded; ``"mlas_avx2"`` /
        ``"mlas_vnni"`` name a path, ``"exact"`` is the exact sum. With
        ``target="reference"`` the sum is exact (the reference evaluator's).
    target : ``"onnxruntime"`` or ``"reference"``
        Whose numbers to reproduce (module docstring): onnxruntime's fused integer
        kernels (default), or ``onnx.reference.ReferenceEvaluator``'s reading of the
        model, with float ops between exact quantize and dequantize nodes.
    name : str, optional
        The graph's name (default: the ONNX graph's name).

    Returns
    -------
    Graph
        Float inputs quantized by ``quantize`` nodes (``method="divide"``: ONNX's
        ``QuantizeLinear``, ties to even), integer nodes, ``dequantize`` nodes at the
        outputs. With ``target="onnxruntime"`` every integer tensor equals onnxruntime's
        (1.32, CPU provider) bit for bit on this CPU, as do the dequantized outputs; the
        tests compare every intermediate (:func:`onnx_intermediates`).

    Raises
    ------
    ModuleNotFoundError
        onnx is not installed (the message names the ``peers`` extra).
    ValueError
        An unsupported operator or attribute (naming the node, its op type and domain),
        a missing initializer or tensor (naming what was expected), or qparams that do not
        match where a tensor is read.
    """
    onnx = _onnx()
    check_choice(target, "target", TARGETS)
    accumulation = check_accumulation("mlas" if accumulation is None else accumulation)
    m = _load(onnx, model)
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shape inference is a convenience for auto_pad only
        inferred = m
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    imp = _Importer(onnx, m, target, accumulation, shapes)
    nodes, inputs, outputs, iqp = imp.run()
    return _graph.Graph(nodes, inputs, outputs, input_qparams=iqp, name=name or m.graph.name or "onnx")


def onnx_intermediates(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    tensors: _graph.Graph | dict,
    *,
    evaluator: str = "onnxruntime",
) -> dict:
    """onnxruntime's (or ``onnx.reference``'s) value of named tensors of ``model``.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
    inputs : dict of str to numpy.ndarray
        The model's inputs by name.
    tensors : Graph, or dict of str to numpy dtype
        The tensors to return: a graph from :func:`from_onnx` (its tensors that are ONNX
        tensors of ``model``), or ``{name: dtype}``.
    evaluator : ``"onnxruntime"`` or ``"reference"``
        onnxruntime's CPU provider (one thread; the requested tensors are added as graph
        outputs of a copy of the model, which keeps onnxruntime's QDQ fusions, since the
        fused kernels produce those tensors), or ``onnx.reference.ReferenceEvaluator``.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{name: value}`` for each requested tensor present in ``model``.
    """
    onnx = _onnx()
    check_choice(evaluator, "evaluator", ("onnxruntime", "reference"))
    m = _load(onnx, model)
    if isinstance(tensors, _graph.Graph):
        want = {}
        for t in tensors.tensors:
            qp = tensors.qparams.get(t)
            want[t] = np.dtype(np.float32) if qp is None else np.dtype(qp.spec.dtype)
    elif isinstance(tensors, dict):
        want = {k: np.dtype(v) for k, v in tensors.items()}
    else:
        raise TypeError(f"tensors must be a Graph or a dict of name -> dtype, got {type(tensors).__name__}")
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    names = [t for t in want if t in produced]
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    have = {o.name for o in m2.graph.output}
    for t in names:
        if t not in have:
            m2.graph.output.append(
                onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(want[t]), None)
            )
    if evaluator == "reference":
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(m2).run(names, inputs)
    else:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModuleNotFoundError(f"onnx_intermediates needs onnxruntime: {PEERS_HINT}") from e
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(m2.SerializeToString(), so, providers=["CPUExecutionProvider"])
        values = sess.run(names, inputs)
    return {t: np.asarray(v) for t, v in zip(names, values)}
