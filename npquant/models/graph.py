"""Graph models: named tensors, nodes in execution order, float or integer, run and saved.

A :class:`Graph` is any directed acyclic network of operations (residual blocks, adds,
concatenations, a tensor used several times), where :class:`~npquant.models.nn.Sequential` is a
chain. Each :class:`Node` names an ``op``, its input and output tensors, JSON attributes
and NumPy parameter arrays. The same class holds float graphs (``linear``, ``conv2d``,
``batchnorm2d``, ...; the layers of :mod:`npquant.models.nn`) and integer graphs (``qlinear``,
``qconv2d``, ``qadd``, ...; the layers of :mod:`npquant.qnn`, with ``quantize`` /
``dequantize`` nodes at the float boundaries); :data:`OPS` lists every op with its
inputs, attributes and parameters. The float layers are built by their layer types
(:mod:`npquant.models.registry`), and a node whose op is a registered layer type with no
op of its own (a new type) is a float op built by that type from the node's attributes
(its ``graph_attrs``) and parameters (its ``params``). A graph is validated when built: an unknown op, a
tensor used before it is defined, a cycle, a missing input, a duplicate name, an unknown
attribute, a missing parameter or a float op fed integer codes (or the reverse) is an
error naming the node.

``graph.run(inputs)`` returns the outputs by name; ``graph.run(inputs,
keep_intermediates=True)`` returns every tensor by name (inputs first, then in execution
order), so that any intermediate can be inspected, dequantized with
``graph.qparams[name]`` and dumped (``numpy.savez``).

File (:func:`save_graph`, :func:`load_graph`): an ``.npz`` whose ``__graph__`` entry is
a JSON header ``{"format": "npquant-graph", "version": 1, "name", "inputs",
"input_qparams", "outputs", "nodes": [{"name", "op", "inputs", "outputs", "attrs",
"params": [names]}]}`` and whose other entries are the parameter arrays, keyed
``"<node name>.<param>"``. It reads with NumPy alone (``json.loads(str(np.load(f)
["__graph__"]))``); :func:`load_graph` reads it through :mod:`npquant._fileio`, so a
corrupt, truncated or inconsistent file is a :class:`~npquant.models.io.FileFormatError`
naming what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import (
    as_float_array,
    check_bool,
    check_choice,
    check_int,
    check_int_array,
    check_pair,
    check_qparams,
    check_real,
)
from .._fileio import FileFormatError, atomic_write, check_path, parse_json, read_npz
from ..affine import METHODS, dequantize, quantize
from ..qnn import layers as ql
from ..qnn._common import fbgemm_mode
from ..qnn.accumulation import check_accumulation
from ..qnn.fbgemm import fma_float32
from ..qparams import QParams, QuantSpec
from . import convert as _convert
from . import nn
from . import registry as _reg

__all__ = [
    "FORMAT",
    "OPS",
    "VERSION",
    "Graph",
    "Node",
    "fold_batchnorm",
    "graph_from_arrays",
    "graph_to_arrays",
    "load_graph",
    "save_graph",
]

#: The ``format`` and ``version`` of the JSON header of a graph file.
FORMAT = "npquant-graph"
VERSION = 1

_HEADER_KEY = "__graph__"
_MAX_GEOMETRY = 1 << 16  # kernel sizes, strides, paddings and dilations are at most this
_MAX_RANK = 32
_REQUIRED = object()


# ------------------------------------------------------------------------------ nodes


def _jsonable(value, what: str):
    """``value`` as plain JSON data (QParams and QuantSpec as dicts, tuples as lists,
    NumPy scalars as Python numbers); anything else is a ``TypeError`` naming ``what``."""
    if isinstance(value, QParams):
        if value.spec.axis is not None:
            raise ValueError(f"{what} must be per-tensor qparams, got axis={value.spec.axis}")
        return {
            "scale": float(value.scale),
            "zero_point": int(value.zero_point),
            "bits": value.spec.bits,
            "signed": value.spec.signed,
        }
    if isinstance(value, QuantSpec):
        return {
            "bits": value.bits,
            "signed": value.signed,
            "symmetric": value.symmetric,
            "narrow_range": value.narrow_range,
            "axis": value.axis,
        }
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{what} has a key {k!r} that is not a string")
            out[k] = _jsonable(v, f"{what}[{k!r}]")
        return out
    raise TypeError(
        f"{what} must be JSON data (None, bool, int, float, str, list, dict), QParams or "
        f"QuantSpec, got {type(value).__name__}"
    )


def _names(value, what: str, *, allow_empty: bool = False) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of tensor names, got {type(value).__name__}")
    out = tuple(value)
    for i, v in enumerate(out):
        if not isinstance(v, str) or not v:
            raise TypeError(f"{what}[{i}] must be a non-empty string, got {v!r}")
    if not out and not allow_empty:
        raise ValueError(f"{what} is empty; at least one tensor name is required")
    return out


class Node:
    """One operation of a :class:`Graph`.

    Parameters
    ----------
    name : str
        Unique among the graph's nodes (tensors have their own namespace).
    op : str
        One of :data:`OPS` (checked when the graph is built).
    inputs : list of str
        Names of the input tensors, in the op's order; a name may appear several times.
    outputs : list of str
        Names of the output tensors (every op has one).
    attrs : dict, optional
        The op's attributes (:data:`OPS`): JSON data; per-tensor ``QParams`` and
        ``QuantSpec`` objects are accepted and stored as dicts (``{"scale",
        "zero_point", "bits", "signed"}``), tuples as lists.
    params : dict, optional
        ``{name: array}`` of the op's parameter arrays (bool, integer or float dtypes),
        stored as read-only copies. Parameter names contain no ``"."``.

    Attributes
    ----------
    name, op : str
    inputs, outputs : tuple of str
    attrs : dict
    params : dict of str to numpy.ndarray
    """

    __slots__ = ("name", "op", "inputs", "outputs", "attrs", "params")

    def __init__(
        self,
        name: str,
        op: str,
        inputs: list[str] | tuple[str, ...],
        outputs: list[str] | tuple[str, ...],
        attrs: dict | None = None,
        params: dict | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise TypeError(f"node name must be a non-empty string, got {name!r}")
        if not isinstance(op, str) or not op:
            raise TypeError(f"node {name!r}: op must be a non-empty string, got {op!r}")
        self.name, self.op = name, op
        self.inputs = _names(inputs, f"node {name!r}: inputs", allow_empty=True)
        self.outputs = _names(outputs, f"node {name!r}: outputs")
        attrs = {} if attrs is None else attrs
        if not isinstance(attrs, dict):
            raise TypeError(f"node {name!r}: attrs must be a dict, got {type(attrs).__name__}")
        self.attrs = _jsonable(attrs, f"node {name!r}: attrs")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise TypeError(f"node {name!r}: params must be a dict of name -> array, got {type(params).__name__}")
        self.params = {}
        for k, v in params.items():
            if not isinstance(k, str) or not k or "." in k:
                raise ValueError(f"node {name!r}: parameter names must be non-empty strings without '.', got {k!r}")
            a = np.array(v, copy=True)
            if a.dtype.kind not in "biuf":
                raise TypeError(
                    f"node {name!r}: parameter {k!r} must be a bool, integer or float array, got dtype {a.dtype}"
                )
            a.setflags(write=False)
            self.params[k] = a

    def __repr__(self) -> str:
        return (
            f"Node({self.name!r}, {self.op!r}, inputs={list(self.inputs)}, outputs={list(self.outputs)}"
            + (f", attrs={self.attrs}" if self.attrs else "")
            + (f", params={ {k: v.shape for k, v in self.params.items()} }" if self.params else "")
            + ")"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (
            (self.name, self.op, self.inputs, self.outputs, self.attrs)
            == (other.name, other.op, other.inputs, other.outputs, other.attrs)
            and self.params.keys() == other.params.keys()
            and all(
                self.params[k].dtype == other.params[k].dtype and np.array_equal(self.params[k], other.params[k])
                for k in self.params
            )
        )

    __hash__ = None


# -------------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class _OpDef:
    name: str
    kind: str  # "float", "int" (codes in, codes out), "quantize", "dequantize"
    arity: int | None  # number of inputs; None: one or more
    attrs: dict  # name -> default (_REQUIRED when required)
    params: tuple  # names; a trailing "?" marks an optional one
    build: object  # (node, attrs, params, input qparams) -> (callable, output QParams or None)
    doc: str


_OP_DEFS: dict = {}


def _op(name, kind, arity, attrs=None, params=(), doc=""):
    def deco(fn):
        _OP_DEFS[name] = _OpDef(name, kind, arity, dict(attrs or {}), tuple(params), fn, doc)
        return fn

    return deco


def _geometry(value, what: str, lo: int) -> tuple[int, int]:
    h, w = check_pair(value, what, lo=lo)
    if h > _MAX_GEOMETRY or w > _MAX_GEOMETRY:
        raise ValueError(f"{what} must be at most {_MAX_GEOMETRY}, got {value!r}")
    return h, w


def _act_qparams(d, what: str) -> QParams:
    """Per-tensor activation QParams from the dict form of a node attribute."""
    keys = {"scale", "zero_point", "bits", "signed"}
    if not isinstance(d, dict) or set(d) != keys:
        raise ValueError(
            f"{what} must be qparams {{'scale', 'zero_point', 'bits', 'signed'}} (or a per-tensor QParams), got {d!r}"
        )
    scale = check_real(d["scale"], f"{what}['scale']", lo=0, lo_open=True)
    spec = QuantSpec(
        bits=check_int(d["bits"], f"{what}['bits']", lo=2, hi=16), signed=check_bool(d["signed"], f"{what}['signed']")
    )
    return QParams(scale, check_int(d["zero_point"], f"{what}['zero_point']"), spec)


def _activation(value, what: str = "activation"):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2:
        return check_int(value[0], f"{what}[0]"), check_int(value[1], f"{what}[1]")
    raise ValueError(f"{what} must be None, an activation name or a [lo, hi] pair of codes, got {value!r}")


def _reshape(x: np.ndarray, shape: list) -> np.ndarray:
    target = []
    for i, d in enumerate(shape):
        if d == 0:
            if i >= x.ndim:
                raise ValueError(f"shape[{i}] = 0 copies axis {i}, but the input has shape {x.shape}")
            d = x.shape[i]
        target.append(d)
    return x.reshape(target)


def _shape_attr(value) -> list:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_RANK:
        raise ValueError(f"shape must be a list of 1 to {_MAX_RANK} sizes, got {value!r}")
    shape = [check_int(d, "shape", lo=-1) for d in value]
    if shape.count(-1) > 1:
        raise ValueError(f"shape may hold one -1 (inferred size), got {value!r}")
    return shape


# ---- float ops: the layers of npquant.models.nn, built by their layer types (npquant.models.registry)
# from the node's attributes, checked here first


def _layer(node: Node, fields: dict, p: dict) -> object:
    """The float layer of a node whose op is a registered layer type: its ``build`` with the
    node's (checked) attributes as the arch entry's fields."""
    return _reg.layer_type(node.op).build({"type": node.op, "name": node.name, **fields}, p, node.name)


@_op(
    "linear",
    "float",
    1,
    params=("weight", "bias?"),
    doc="x W^T + b: (..., in) -> (..., out); weight (out, in), bias (out,) optional; float32",
)
def _b_linear(node, a, p, qps):
    return _layer(node, {}, p), None


@_op(
    "conv2d",
    "float",
    1,
    {"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    ("weight", "bias?"),
    doc="2-D convolution, NCHW; weight (O, C/groups, kh, kw), bias (O,) optional; zero padding; float32",
)
def _b_conv2d(node, a, p, qps):
    return _layer(
        node,
        {
            "stride": _geometry(a["stride"], "stride", 1),
            "padding": _geometry(a["padding"], "padding", 0),
            "dilation": _geometry(a["dilation"], "dilation", 1),
            "groups": check_int(a["groups"], "groups", lo=1),
        },
        p,
    ), None


@_op(
    "batchnorm2d",
    "float",
    1,
    {"eps": 1e-5},
    ("weight", "bias", "running_mean", "running_var"),
    doc="inference batch norm over the channels of NCHW input (running statistics); float32",
)
def _b_batchnorm2d(node, a, p, qps):
    return _layer(node, {"eps": check_real(a["eps"], "eps", lo=0, lo_open=True)}, p), None


@_op("relu", "float", 1, doc="max(x, 0)")
def _b_relu(node, a, p, qps):
    return _layer(node, {}, p), None


@_op("relu6", "float", 1, doc="min(max(x, 0), 6)")
def _b_relu6(node, a, p, qps):
    return _layer(node, {}, p), None


def _pool_fields(a) -> dict:
    k = _geometry(a["kernel_size"], "kernel_size", 1)
    return {"kernel_size": k, "stride": k if a["stride"] is None else _geometry(a["stride"], "stride", 1)}


@_op(
    "maxpool2d",
    "float",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0},
    doc="max pooling, NCHW; stride defaults to kernel_size; padding never wins",
)
def _b_maxpool2d(node, a, p, qps):
    return _layer(node, {**_pool_fields(a), "padding": _geometry(a["padding"], "padding", 0)}, p), None


@_op(
    "avgpool2d",
    "float",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0, "count_include_pad": True},
    doc="average pooling, NCHW; count_include_pad as PyTorch (default True)",
)
def _b_avgpool2d(node, a, p, qps):
    return _layer(
        node,
        {
            **_pool_fields(a),
            "padding": _geometry(a["padding"], "padding", 0),
            "count_include_pad": check_bool(a["count_include_pad"], "count_include_pad"),
        },
        p,
    ), None


@_op("flatten", "float", 1, doc="(N, ...) -> (N, prod(...)) in C order (torch.flatten(x, 1))")
def _b_flatten(node, a, p, qps):
    return _layer(node, {}, p), None


@_op("add", "float", 2, doc="a + b, same shapes, float32")
def _b_add(node, a, p, qps):
    return nn.add, None


@_op("concat", "float", None, {"axis": 1}, doc="concatenation along axis (default 1, the channels)")
def _b_concat(node, a, p, qps):
    axis = check_int(a["axis"], "axis", lo=-_MAX_RANK, hi=_MAX_RANK - 1)
    return (lambda *xs: np.concatenate([as_float_array(x, "x") for x in xs], axis=axis)), None


@_op(
    "reshape",
    "float",
    1,
    {"shape": _REQUIRED},
    doc="reshape to shape: 0 copies the input's size on that axis (the batch), -1 is inferred",
)
def _b_reshape(node, a, p, qps):
    shape = _shape_attr(a["shape"])
    return (lambda x: _reshape(as_float_array(x, "x"), shape)), None


# ---- integer ops: the layers of npquant.qnn


@_op(
    "quantize",
    "quantize",
    1,
    {"output": _REQUIRED, "method": "divide"},
    doc="float -> codes of output (npquant.quantize; method 'torch' is torch.quantize_per_tensor)",
)
def _b_quantize(node, a, p, qps):
    qp = _act_qparams(a["output"], "output")
    method = check_choice(a["method"], "method", METHODS)
    return (lambda x: quantize(x, qp, method=method)), qp


@_op("dequantize", "dequantize", 1, doc="codes -> float32 S (q - Z) (npquant.dequantize)")
def _b_dequantize(node, a, p, qps):
    qp = qps[0]
    return (lambda q: dequantize(q, qp)), None


def _weight_qparams(p: dict, spec_attr) -> QParams:
    w = p["weight"]
    scale, zp = p["weight_scale"], p["weight_zero_point"]
    if spec_attr is None:
        if w.dtype not in (np.int8, np.uint8):
            raise ValueError(f"weight must hold int8 or uint8 codes, got dtype {w.dtype} (or give weight_spec)")
        spec = QuantSpec(signed=w.dtype == np.int8, axis=0 if scale.ndim == 1 else None)
    else:
        if not isinstance(spec_attr, dict) or not set(spec_attr) <= {
            "bits",
            "signed",
            "symmetric",
            "narrow_range",
            "axis",
        }:
            raise ValueError(
                f"weight_spec must be a dict of QuantSpec fields bits, signed, symmetric, "
                f"narrow_range, axis (or a QuantSpec), got {spec_attr!r}"
            )
        spec = QuantSpec(**spec_attr)
    return QParams(scale, zp, spec)


_QGEMM_ATTRS = {
    "output": _REQUIRED,
    "mode": "tflite",
    "activation": None,
    "accumulation": "exact",
    "form": "auto",
    "weight_spec": None,
}
_QGEMM_PARAMS = ("weight", "weight_scale", "weight_zero_point", "bias?", "bias_q?")


def _qgemm_kwargs(a, p):
    # a float "bias" is PyTorch fbgemm's: mode "fbgemm" (spelled "fp32" in files written before that mode)
    mode, bias = fbgemm_mode(a["mode"], p.get("bias_q"), p.get("bias"))
    kw = dict(
        mode=mode,
        activation=_activation(a["activation"]),
        accumulation=check_accumulation(a["accumulation"]),
        form=a["form"],
    )
    return _weight_qparams(p, a["weight_spec"]), bias, _act_qparams(a["output"], "output"), kw


@_op(
    "qlinear",
    "int",
    1,
    _QGEMM_ATTRS,
    _QGEMM_PARAMS,
    doc="integer fully connected layer (npquant.qnn.linear.QLinear): weight codes (out, in) of "
    "weight_scale/weight_zero_point (per-tensor, or per-channel along axis 0), int32 bias_q or "
    "float bias (PyTorch fbgemm's, mode 'fp32'); output qparams, requantization mode, fused "
    "activation, accumulation",
)
def _b_qlinear(node, a, p, qps):
    w_qp, bias_q, y_qp, kw = _qgemm_kwargs(a, p)
    return ql.QLinear(p["weight"], w_qp, bias_q, qps[0], y_qp, **kw), y_qp


@_op(
    "qconv2d",
    "int",
    1,
    {**_QGEMM_ATTRS, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    _QGEMM_PARAMS,
    doc="integer conv2d (npquant.qnn.conv.QConv2d), NCHW codes, padding reads Z_x; parameters and "
    "attributes as qlinear plus stride, padding ([h, w] or [top, bottom, left, right]), dilation, groups",
)
def _b_qconv2d(node, a, p, qps):
    w_qp, bias_q, y_qp, kw = _qgemm_kwargs(a, p)
    pad = a["padding"]
    padding = (
        tuple(check_int(v, "padding", lo=0, hi=_MAX_GEOMETRY) for v in pad)
        if isinstance(pad, list) and len(pad) == 4
        else _geometry(pad, "padding", 0)
    )
    return ql.QConv2d(
        p["weight"],
        w_qp,
        bias_q,
        qps[0],
        y_qp,
        stride=_geometry(a["stride"], "stride", 1),
        padding=padding,
        dilation=_geometry(a["dilation"], "dilation", 1),
        groups=check_int(a["groups"], "groups", lo=1),
        **kw,
    ), y_qp


def _nhwc(fn):
    """``fn`` applied to NCHW arrays in NHWC memory order (elementwise ops only)."""

    def run(*xs):
        xs = [np.asarray(x) for x in xs]
        for x in xs:
            if x.ndim != 4:
                raise ValueError(f"memory_format='channels_last' needs NCHW (4-D) inputs, got shape {x.shape}")
        y = fn(*(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) for x in xs))
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    return run


_MEMORY_FORMATS = ("contiguous", "channels_last")


@_op(
    "qadd",
    "int",
    2,
    {"output": _REQUIRED, "mode": "tflite", "activation": None, "memory_format": "contiguous"},
    doc="sum of two code tensors with their own qparams (npquant.qnn.layers.QAdd), fused 'relu' optional; "
    "memory_format 'channels_last' runs mode 'torch' in NHWC element order, as PyTorch does on "
    "channels-last tensors (its vector/scalar split follows memory order)",
)
def _b_qadd(node, a, p, qps):
    y_qp = _act_qparams(a["output"], "output")
    if a["mode"] == "torch" and any((qp.spec.qmin, qp.spec.qmax) != (0, 255) for qp in (*qps, y_qp)):
        raise ValueError("mode='torch' is PyTorch's quint8 add: inputs and output must be unsigned 8-bit")
    layer = ql.QAdd(qps[0], qps[1], y_qp, mode=a["mode"], activation=_activation(a["activation"]))
    fmt = check_choice(a["memory_format"], "memory_format", _MEMORY_FORMATS)
    return (layer if fmt == "contiguous" else _nhwc(layer)), y_qp


@_op(
    "qrelu",
    "int",
    1,
    {"activation": "relu", "mode": "tflite"},
    doc="ReLU or ReLU6 on codes (npquant.qnn.layers.QReLU; mode 'torch' rounds the code of 6 as "
    "PyTorch's quantized relu6); qparams unchanged",
)
def _b_qrelu(node, a, p, qps):
    return ql.QReLU(qps[0], a["activation"], mode=a["mode"]), qps[0]


@_op(
    "qmaxpool2d",
    "int",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0},
    doc="max pooling of codes (npquant.qnn.layers.MaxPool2d); padding [h, w] or [top, bottom, left, right]; "
    "qparams unchanged",
)
def _b_qmaxpool2d(node, a, p, qps):
    k = _geometry(a["kernel_size"], "kernel_size", 1)
    s = k if a["stride"] is None else _geometry(a["stride"], "stride", 1)
    return ql.MaxPool2d(k, s, _pool_padding(a["padding"])), qps[0]


@_op(
    "qavgpool2d",
    "int",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0, "mode": "tflite", "count_include_pad": False},
    doc="average pooling of codes (npquant.qnn.layers.AvgPool2d): mode 'tflite' rounds half away, "
    "'torch' half to even; count_include_pad (mode 'torch') counts padding as Z; qparams unchanged",
)
def _b_qavgpool2d(node, a, p, qps):
    k = _geometry(a["kernel_size"], "kernel_size", 1)
    s = k if a["stride"] is None else _geometry(a["stride"], "stride", 1)
    return ql.AvgPool2d(
        k,
        s,
        _geometry(a["padding"], "padding", 0),
        mode=a["mode"],
        zero_point=int(qps[0].zero_point),
        count_include_pad=check_bool(a["count_include_pad"], "count_include_pad"),
    ), qps[0]


@_op("qflatten", "int", 1, doc="NCHW codes -> (N, C*H*W) (npquant.qnn.layers.Flatten); qparams unchanged")
def _b_qflatten(node, a, p, qps):
    return ql.Flatten(), qps[0]


@_op("qreshape", "int", 1, {"shape": _REQUIRED}, doc="reshape of codes, as reshape; qparams unchanged")
def _b_qreshape(node, a, p, qps):
    shape = _shape_attr(a["shape"])

    def run(q):
        q = check_int_array(q, "x_q", what="an integer array of codes")
        return _reshape(q, shape)

    return run, qps[0]


_CAT_VECTOR = 8  # channels per vector of PyTorch's channels-last cat kernel (measured, AVX2 and AVX512)


def _requantize_torch_nhwc(q, qp: QParams, y_qp: QParams) -> np.ndarray:
    """PyTorch's channels-last ``quantized::cat`` requantization of one NCHW input: the
    first ``8 * (C // 8)`` channels through its vector path (``d = fma(q, S, float32(S *
    -Z))``, ``rint(float32(d * float32(1 / S_y))) + Z_y``: :func:`npquant.quantize` with
    ``method="mul"``), the other channels through its scalar path (exact dequantize, then
    ``method="mul_add"``); ties to even, saturating."""
    if q.ndim != 4:
        raise ValueError(f"memory_format='channels_last' needs NCHW (4-D) inputs, got shape {q.shape}")
    nv = q.shape[1] // _CAT_VECTOR * _CAT_VECTOR
    s, z = np.float32(qp.scale), int(qp.zero_point)
    out = np.empty(q.shape, y_qp.spec.dtype)
    if nv:
        d = fma_float32(q[:, :nv].astype(np.float32), s, np.float32(s * np.float32(-z)))
        out[:, :nv] = quantize(d, y_qp, method="mul")
    if nv < q.shape[1]:
        out[:, nv:] = quantize(dequantize(q[:, nv:], qp), y_qp, method="mul_add")
    return out


@_op(
    "qconcat",
    "int",
    None,
    {"output": _REQUIRED, "axis": 1, "mode": "torch", "memory_format": "contiguous"},
    doc="concatenation of code tensors, each requantized to output's qparams as PyTorch's quantized cat "
    "(mode 'torch'): exact dequantize, then torch.quantize_per_tensor's rounding (npquant.quantize, "
    "method 'torch'); memory_format 'channels_last' (4-D inputs, axis 1) reproduces its channels-last "
    "kernel instead; an input with the output's qparams is copied",
)
def _b_qconcat(node, a, p, qps):
    y_qp = _act_qparams(a["output"], "output")
    axis = check_int(a["axis"], "axis", lo=-_MAX_RANK, hi=_MAX_RANK - 1)
    check_choice(a["mode"], "mode", ("torch",))
    fmt = check_choice(a["memory_format"], "memory_format", _MEMORY_FORMATS)
    if fmt == "channels_last" and axis != 1:
        raise ValueError(f"memory_format='channels_last' is PyTorch's kernel for axis 1, got axis={axis}")
    same = [
        float(qp.scale) == float(y_qp.scale) and int(qp.zero_point) == int(y_qp.zero_point) and qp.spec == y_qp.spec
        for qp in qps
    ]

    def run(*qs):
        parts = []
        for i, (q, qp) in enumerate(zip(qs, qps)):
            q = check_int_array(q, f"input {i}", what="an integer array of codes")
            if same[i]:
                parts.append(q.astype(y_qp.spec.dtype))
            elif fmt == "channels_last":
                parts.append(_requantize_torch_nhwc(q, qp, y_qp))
            else:
                parts.append(quantize(dequantize(q, qp), y_qp, method="torch"))
        return np.concatenate(parts, axis=axis)

    return run, y_qp


# ---- ONNX importer ops (npquant.importers.onnx): begin ----------------------------
# onnxruntime's own integer kernels and graph constants; see npquant.qnn.pool and
# npquant.qnn.add (mode "onnxruntime") for the arithmetic.


def _pool_padding(value, what: str = "padding"):
    """An int, [h, w] or [top, bottom, left, right] padding as a tuple for npquant.qnn.pool."""
    if isinstance(value, list) and len(value) == 4:
        return tuple(check_int(v, what, lo=0, hi=_MAX_GEOMETRY) for v in value)
    return _geometry(value, what, 0)


@_op("constant", "float", 0, params=("value",), doc="a float32 constant tensor (no inputs)")
def _b_constant(node, a, p, qps):
    value = as_float_array(p["value"], "value", allow_empty=True)
    return (lambda: value), None


@_op(
    "qconstant",
    "int",
    0,
    {"output": _REQUIRED},
    ("value",),
    doc="a constant tensor of integer codes of output's qparams (no inputs)",
)
def _b_qconstant(node, a, p, qps):
    qp = _act_qparams(a["output"], "output")
    v = check_int_array(p["value"], "value", what="an integer array of codes")
    if v.size and (v.min() < qp.spec.qmin or v.max() > qp.spec.qmax):
        raise ValueError(f"value must hold codes in [{qp.spec.qmin}, {qp.spec.qmax}], got [{v.min()}, {v.max()}]")
    value = v.astype(qp.spec.dtype)
    return (lambda: value), qp


@_op(
    "qlinear_avgpool2d",
    "int",
    1,
    {
        "output": _REQUIRED,
        "kernel_size": _REQUIRED,
        "stride": None,
        "padding": 0,
        "count_include_pad": False,
        "mode": "onnxruntime",
    },
    doc="average pooling that requantizes to output's qparams, as onnxruntime's QLinearAveragePool "
    "(npquant.qnn.pool.onnxruntime_avg_pool2d, float32); padding [h, w] or [top, bottom, left, right]",
)
def _b_qlinear_avgpool2d(node, a, p, qps):
    from ..qnn.pool import onnxruntime_avg_pool2d

    y_qp = _act_qparams(a["output"], "output")
    check_choice(a["mode"], "mode", ("onnxruntime",))
    x_qp = qps[0]
    if np.dtype(x_qp.spec.dtype) != np.dtype(y_qp.spec.dtype) or x_qp.spec.bits != 8:
        raise ValueError("QLinearAveragePool takes and gives the same 8-bit dtype")
    k = _geometry(a["kernel_size"], "kernel_size", 1)
    s = k if a["stride"] is None else _geometry(a["stride"], "stride", 1)
    pad = _pool_padding(a["padding"])
    cip = check_bool(a["count_include_pad"], "count_include_pad")
    sx, zx, sy, zy = np.float32(x_qp.scale), int(x_qp.zero_point), np.float32(y_qp.scale), int(y_qp.zero_point)
    return (lambda q: onnxruntime_avg_pool2d(q, sx, zx, sy, zy, k, s, pad, count_include_pad=cip)), y_qp


@_op(
    "qlinear_global_avgpool2d",
    "int",
    1,
    {"output": _REQUIRED, "mode": "onnxruntime"},
    doc="global average pooling (N, C, H, W) -> (N, C, 1, 1) to output's qparams, as onnxruntime's "
    "QLinearGlobalAveragePool (npquant.qnn.pool.onnxruntime_global_avg_pool2d)",
)
def _b_qlinear_global_avgpool2d(node, a, p, qps):
    from ..qnn.pool import onnxruntime_global_avg_pool2d

    y_qp = _act_qparams(a["output"], "output")
    check_choice(a["mode"], "mode", ("onnxruntime",))
    x_qp = qps[0]
    if np.dtype(x_qp.spec.dtype) != np.dtype(y_qp.spec.dtype) or x_qp.spec.bits != 8:
        raise ValueError("QLinearGlobalAveragePool takes and gives the same 8-bit dtype")
    sx, zx, sy, zy = np.float32(x_qp.scale), int(x_qp.zero_point), np.float32(y_qp.scale), int(y_qp.zero_point)
    return (lambda q: onnxruntime_global_avg_pool2d(q, sx, zx, sy, zy)), y_qp


@_op("global_avgpool2d", "float", 1, doc="mean over H and W of NCHW input -> (N, C, 1, 1), float32")
def _b_global_avgpool2d(node, a, p, qps):
    return (lambda x: as_float_array(x, "x").mean(axis=(2, 3), keepdims=True, dtype=np.float32)), None


@_op(
    "qlinear_concat",
    "int",
    None,
    {"output": _REQUIRED, "axis": 1, "mode": "onnxruntime"},
    doc="concatenation of code tensors requantized to output's qparams as onnxruntime's QLinearConcat: "
    "exact dequantize, then ONNX QuantizeLinear's float32 x / S_y rounded half to even "
    "(npquant.quantize, method 'divide'); an input with the output's qparams is copied",
)
def _b_qlinear_concat(node, a, p, qps):
    y_qp = _act_qparams(a["output"], "output")
    axis = check_int(a["axis"], "axis", lo=-_MAX_RANK, hi=_MAX_RANK - 1)
    check_choice(a["mode"], "mode", ("onnxruntime",))
    same = [
        float(qp.scale) == float(y_qp.scale)
        and int(qp.zero_point) == int(y_qp.zero_point)
        and qp.spec.dtype == y_qp.spec.dtype
        for qp in qps
    ]

    def run(*qs):
        parts = []
        for i, (q, qp) in enumerate(zip(qs, qps)):
            q = check_int_array(q, f"input {i}", what="an integer array of codes")
            parts.append(q.astype(y_qp.spec.dtype) if same[i] else quantize(dequantize(q, qp), y_qp, method="divide"))
        return np.concatenate(parts, axis=axis)

    return run, y_qp


@_op("add_broadcast", "float", 2, doc="a + b with NumPy (ONNX multidirectional) broadcasting, float32")
def _b_add_broadcast(node, a, p, qps):
    return (lambda x, y: (as_float_array(x, "a") + as_float_array(y, "b")).astype(np.float32)), None


@_op(
    "pad2d",
    "float",
    1,
    {"padding": _REQUIRED, "value": 0.0},
    doc="constant padding of NCHW input: padding [top, bottom, left, right], value a float or '-inf'",
)
def _b_pad2d(node, a, p, qps):
    pad = a["padding"]
    if not isinstance(pad, list) or len(pad) != 4:
        raise ValueError(f"padding must be [top, bottom, left, right], got {pad!r}")
    t, b, l_, r = (check_int(v, "padding", lo=0, hi=_MAX_GEOMETRY) for v in pad)
    value = -np.inf if a["value"] == "-inf" else np.float32(check_real(a["value"], "value"))

    def run(x):
        x = as_float_array(x, "x")
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW (4-D), got shape {x.shape}")
        return np.pad(x, ((0, 0), (0, 0), (t, b), (l_, r)), constant_values=value).astype(np.float32)

    return run, None


# ---- ONNX importer ops (npquant.importers.onnx): end ------------------------------


# ---- TFLite importer ops (npquant.importers.tflite): begin ----------------------------
# Tensors of these ops are NHWC, as TFLite's; the npquant.qnn layers inside stay NCHW/OIHW
# and are converted at each op's edge. Each op names the TFLite reference kernel it
# reproduces (LiteRT 2.3, BUILTIN_REF op resolver; tests/test_import_tflite.py).


def _nhwc_codes(x, what: str = "x_q") -> np.ndarray:
    x = check_int_array(x, what, what="an integer array of codes")
    if x.ndim != 4:
        raise ValueError(f"{what} must be NHWC (4-D), got shape {x.shape}")
    return x


def _to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _tfl_activation(a, qp: QParams) -> tuple[int, int]:
    from ..qnn._common import output_range

    return output_range(_activation(a["activation"]), qp)


@_op(
    "qconv2d_nhwc",
    "int",
    1,
    {**_QGEMM_ATTRS, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    _QGEMM_PARAMS,
    doc="qconv2d on NHWC codes (TFLite's CONV_2D and, with groups = C, DEPTHWISE_CONV_2D): weight codes "
    "OIHW (the importer transposes OHWI / 1HWO), attributes and parameters as qconv2d; padding "
    "[top, bottom, left, right] for TFLite's SAME",
)
def _b_qconv2d_nhwc(node, a, p, qps):
    layer, y_qp = _b_qconv2d(node, a, p, qps)
    return (lambda x: _to_nhwc(layer(_to_nchw(_nhwc_codes(x))))), y_qp


@_op(
    "qfully_connected",
    "int",
    1,
    {"output": _REQUIRED, "mode": "tflite_single_away", "activation": None, "weight_spec": None},
    ("weight", "weight_scale", "weight_zero_point", "bias_q?"),
    doc="TFLite's FULLY_CONNECTED (keep_num_dims false): codes (..., K) read as rows (-1, K), weight codes "
    "(out, K) per-tensor or per-channel, int32 bias_q; exact int32 accumulation, then mode (any "
    "requantization mode, also npquant.requant.modes.EXTRA_REQUANT_MODES; default 'tflite_single_away', "
    "LiteRT 2.3's reference kernel) and the fused activation clamp",
)
def _b_qfully_connected(node, a, p, qps):
    from ..qnn.linear import linear_accumulate
    from ..requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES, effective_multiplier, requantize

    mode = check_choice(a["mode"], "mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
    w_qp, y_qp, x_qp = _weight_qparams(p, a["weight_spec"]), _act_qparams(a["output"], "output"), qps[0]
    w, bias = p["weight"], p.get("bias_q")
    if w.ndim != 2:
        raise ValueError(f"weight must be (out, in), got shape {w.shape}")
    lo, hi = _tfl_activation(a, y_qp)
    m = effective_multiplier(np.float32(x_qp.scale), w_qp.scale, np.float32(y_qp.scale), mode)
    axis = 1 if np.ndim(m) == 1 and np.size(m) > 1 else None
    spec = y_qp.spec

    def run(x):
        x = np.asarray(x)
        if x.size % w.shape[1]:
            raise ValueError(f"x_q has shape {x.shape}: its size is not a multiple of the {w.shape[1]} inputs")
        acc = linear_accumulate(x.reshape(-1, w.shape[1]), x_qp, w, w_qp, bias)
        y = requantize(acc, m, int(y_qp.zero_point), spec.qmin, spec.qmax, mode=mode, axis=axis)
        return np.clip(y, lo, hi).astype(spec.dtype)

    return run, y_qp


def _b_pool_nhwc(a, qps, kind):
    from ..qnn.pool import avg_pool2d, max_pool2d

    k = _geometry(a["kernel_size"], "kernel_size", 1)
    s = k if a["stride"] is None else _geometry(a["stride"], "stride", 1)
    pad = _pool_padding(a["padding"])
    lo, hi = _tfl_activation(a, qps[0])
    if kind == "avg":
        mode = check_choice(a["mode"], "mode", ("tflite", "torch"))
        pool = lambda x: avg_pool2d(x, k, s, pad, mode=mode)  # noqa: E731
    else:
        pool = lambda x: max_pool2d(x, k, s, pad)  # noqa: E731
    return (lambda x: np.clip(_to_nhwc(pool(_to_nchw(_nhwc_codes(x)))), lo, hi)), qps[0]


@_op(
    "qmaxpool2d_nhwc",
    "int",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0, "activation": None},
    doc="max pooling of NHWC codes (TFLite's MAX_POOL_2D): windows clipped to the input, padding [h, w] or "
    "[top, bottom, left, right] (SAME), then the fused activation clamp; qparams unchanged",
)
def _b_qmaxpool2d_nhwc(node, a, p, qps):
    return _b_pool_nhwc(a, qps, "max")


@_op(
    "qavgpool2d_nhwc",
    "int",
    1,
    {"kernel_size": _REQUIRED, "stride": None, "padding": 0, "activation": None, "mode": "tflite"},
    doc="average pooling of NHWC codes (TFLite's AVERAGE_POOL_2D): the mean of the valid positions of each "
    "window, rounded half away from zero (mode 'tflite'), padding as qmaxpool2d_nhwc, then the fused "
    "activation clamp; qparams unchanged",
)
def _b_qavgpool2d_nhwc(node, a, p, qps):
    return _b_pool_nhwc(a, qps, "avg")


@_op(
    "qmul",
    "int",
    2,
    {"output": _REQUIRED, "mode": "tflite", "activation": None},
    doc="element-wise product of two code tensors (NumPy broadcasting), TFLite's MUL: "
    "requantize((q1 - Z1)(q2 - Z2), S1 S2 / S_y) with mode's rounding, then the fused activation clamp",
)
def _b_qmul(node, a, p, qps):
    from ..requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES, effective_multiplier, requantize

    mode = check_choice(a["mode"], "mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
    y_qp = _act_qparams(a["output"], "output")
    (s1, z1), (s2, z2) = ((np.float32(q.scale), int(q.zero_point)) for q in qps)
    m = float(effective_multiplier(s1, s2, np.float32(y_qp.scale), mode))
    lo, hi = _tfl_activation(a, y_qp)
    spec = y_qp.spec

    def run(q1, q2):
        prod = (np.asarray(q1, np.int64) - z1) * (np.asarray(q2, np.int64) - z2)
        y = requantize(prod.astype(np.int32), m, int(y_qp.zero_point), spec.qmin, spec.qmax, mode=mode)
        return np.clip(y, lo, hi).astype(spec.dtype)

    return run, y_qp


@_op(
    "qpad",
    "int",
    1,
    {"pads": _REQUIRED},
    doc="constant padding of codes with the zero point (a real 0; TFLite's PAD): pads is one [before, after] "
    "pair per axis; qparams unchanged",
)
def _b_qpad(node, a, p, qps):
    pads = a["pads"]
    if not isinstance(pads, list) or not all(isinstance(v, list) and len(v) == 2 for v in pads):
        raise ValueError(f"pads must be a list of [before, after] pairs, one per axis, got {pads!r}")
    widths = [
        (check_int(b, "pads", lo=0, hi=_MAX_GEOMETRY), check_int(e, "pads", lo=0, hi=_MAX_GEOMETRY)) for b, e in pads
    ]
    zp = int(qps[0].zero_point)

    def run(q):
        q = np.asarray(q)
        if q.ndim != len(widths):
            raise ValueError(f"pads has {len(widths)} axes but x_q has shape {q.shape}")
        return np.pad(q, widths, constant_values=zp)

    return run, qps[0]


def _tfl_mean(q, x_qp: QParams, y_qp: QParams, axes: tuple, keep_dims: bool, rounding: str) -> np.ndarray:
    """TFLite's int8 MEAN, reference kernels (``reduce.cc``, EvalMeanReferenceOps). Over H
    and W of 4-D codes with keep_dims (``reference_integer_ops::Mean``): ``sum(q - Z_x)``
    times ``S_x / S_y`` as a fixed-point multiplier, then divided by the count ``n``
    rounding half away from zero. Otherwise (``reference_ops::QuantizedMeanOrSum``, also
    for equal qparams in LiteRT 2.3): the same sum times the multiplier with ``1 / n``
    folded in, ``m0' = (m0 << k) // n``, ``shift' = shift - k``, ``k = min(floor(log2 n),
    32, 31 + shift)``. Saturated to the output's codes."""
    from ..qnn.pool import div_round_half_away
    from ..requant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier

    spec = y_qp.spec
    (sx, zx), (sy, zy) = ((np.float32(v.scale), int(v.zero_point)) for v in (x_qp, y_qp))
    n = int(np.prod([q.shape[ax] for ax in axes], dtype=np.int64))
    acc = q.astype(np.int64).sum(axis=axes, keepdims=keep_dims) - zx * n
    m0, shift = (int(v) for v in quantize_multiplier(np.float64(sx) / np.float64(sy)))
    if keep_dims and q.ndim == 4 and sorted(axes) == [1, 2]:
        v = div_round_half_away(multiply_by_quantized_multiplier(acc, m0, shift, rounding), n) + zy
    else:
        k = min(n.bit_length() - 1, 32, 31 + shift)
        v = multiply_by_quantized_multiplier(acc, (m0 << k) // n, shift - k, rounding) + zy
    return np.clip(v, spec.qmin, spec.qmax).astype(spec.dtype)


@_op(
    "qmean",
    "int",
    1,
    {"axes": _REQUIRED, "keep_dims": False, "output": _REQUIRED, "mode": "tflite"},
    doc="mean of codes over axes (TFLite's MEAN, reference kernels): over H and W of 4-D codes with "
    "keep_dims, sum(q - Z_x) requantized by S_x / S_y with mode's rounding, then divided by the count n "
    "rounding half away; otherwise sum(q - Z_x) requantized by S_x / (n S_y) as TFLite folds 1 / n into "
    "its fixed-point multiplier",
)
def _b_qmean(node, a, p, qps):
    mode = check_choice(a["mode"], "mode", ("tflite", "tflite_single"))
    axes_attr = a["axes"]
    if not isinstance(axes_attr, list) or not axes_attr:
        raise ValueError(f"axes must be a non-empty list of axes, got {axes_attr!r}")
    y_qp = _act_qparams(a["output"], "output")
    keep = check_bool(a["keep_dims"], "keep_dims")

    def run(q):
        q = check_int_array(q, "x_q", what="an integer array of codes")
        axes = tuple(sorted({check_int(v, "axes", lo=-q.ndim, hi=q.ndim - 1) % q.ndim for v in axes_attr}))
        return _tfl_mean(q, qps[0], y_qp, axes, keep, "double" if mode == "tflite" else "single")

    return run, y_qp


@_op(
    "quantize_tflite",
    "quantize",
    1,
    {"output": _REQUIRED},
    doc="float -> codes of output as TFLite's QUANTIZE: round_half_away(float32(x) / S) + Z, saturating",
)
def _b_quantize_tflite(node, a, p, qps):
    qp0 = _act_qparams(a["output"], "output")
    qp = QParams(qp0.scale, qp0.zero_point, qp0.spec.replace(rounding="half_away"))
    return (lambda x: quantize(x, qp, method="divide")), qp0


@_op(
    "qrequantize",
    "int",
    1,
    {"output": _REQUIRED, "mode": "tflite"},
    doc="codes -> codes of output (TFLite's int8 -> int8 QUANTIZE): requantize(q - Z_x, S_x / S_y) + Z_y "
    "with mode's rounding, saturating",
)
def _b_qrequantize(node, a, p, qps):
    from ..requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES, requantize

    mode = check_choice(a["mode"], "mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
    y_qp, x_qp = _act_qparams(a["output"], "output"), qps[0]
    m = np.float64(np.float32(x_qp.scale)) / np.float64(np.float32(y_qp.scale))
    spec = y_qp.spec
    return (
        lambda q: requantize(
            (np.asarray(q, np.int64) - int(x_qp.zero_point)).astype(np.int32),
            m,
            int(y_qp.zero_point),
            spec.qmin,
            spec.qmax,
            mode=mode,
        ).astype(spec.dtype)
    ), y_qp


# ---- TFLite importer ops (npquant.importers.tflite): end ------------------------------


def _b_registered(node, a, p, qps):
    try:
        return _layer(node, a, p), None
    except KeyError as e:
        raise ValueError(f"layer type {node.op!r} needs {e} (an attribute or parameter)") from None


def _op_def(op: str) -> _OpDef | None:
    """The definition of ``op``: an op of :data:`OPS`, else a float op of the registered
    layer type of that name (its ``graph_attrs`` and ``params``, built by its ``build``),
    else None."""
    d = _OP_DEFS.get(op)
    if d is None and op in _reg.layer_types():
        kind = _reg.layer_type(op)
        d = _OpDef(
            op,
            "float",
            1,
            dict(kind.graph_attrs),
            tuple(kind.params),
            _b_registered,
            f"the layer type {op!r} (npquant.models.registry)",
        )
    return d


def op_kind(op: str) -> str:
    """What an op computes with.

    Parameters
    ----------
    op : str
        An op of :data:`OPS`, or a registered layer type (a float op).

    Returns
    -------
    str
        ``"float"``, ``"int"`` (codes in, codes out), ``"quantize"`` or ``"dequantize"``.
    """
    d = _op_def(op)
    if d is None:
        raise ValueError(f"unknown op {op!r}: not in npquant.models.graph.OPS nor a registered layer type")
    return d.kind


#: ``{op: description}`` of every op a :class:`Graph` runs, with its inputs, attributes
#: (default values) and parameters (``?``: optional). A registered layer type with no op
#: here (:mod:`npquant.models.registry`) is a float op too, built by its type.
OPS = {
    name: (
        f"[{d.kind}] {d.doc}; inputs: {'one or more' if d.arity is None else d.arity}"
        + (
            f"; attrs: {', '.join(k + ('' if v is _REQUIRED else '=' + repr(v)) for k, v in d.attrs.items())}"
            if d.attrs
            else ""
        )
        + (f"; params: {', '.join(d.params)}" if d.params else "")
    )
    for name, d in _OP_DEFS.items()
}


# ------------------------------------------------------------------------------ graph


@dataclass(frozen=True)
class _Step:
    node: Node
    fn: object
    frees: tuple  # tensors no later step reads (dropped unless kept)


def _node_error(node: Node, e: Exception) -> Exception:
    cls = TypeError if isinstance(e, TypeError) else ValueError
    return cls(f"node {node.name!r} ({node.op}): {e}")


class Graph:
    """A model as a graph of named tensors: float, integer or both.

    Parameters
    ----------
    nodes : list of Node
        In execution order: a node reads graph inputs and outputs of earlier nodes only.
    inputs : list of str
        Names of the graph's input tensors, in the order ``graph(*arrays)`` takes them.
    outputs : list of str
        Names of the tensors ``run`` returns (node outputs or inputs).
    input_qparams : dict, optional
        ``{input name: QParams}`` for inputs that are integer codes (per-tensor); the other
        inputs are float.
    name : str
        The graph's name.

    Raises
    ------
    ValueError, TypeError
        The message names the node (or tensor) and what is wrong: unknown op, a tensor
        used before it is defined, a cycle, a missing input, a duplicate node or tensor
        name, wrong number of inputs, unknown or invalid attribute, missing or invalid
        parameter, a float op fed integer codes or an integer op fed floats.

    Attributes
    ----------
    nodes : tuple of Node
    inputs, outputs : tuple of str
    name : str
    input_qparams : dict of str to QParams
    qparams : dict of str to QParams
        The qparams of every tensor that holds integer codes (inputs, and the outputs of
        ``quantize`` and integer ops), so that ``npquant.dequantize(t, graph.qparams[name])``
        gives its real values.
    tensors : tuple of str
        Every tensor: the inputs, then each node's outputs in execution order.
    """

    def __init__(
        self,
        nodes: list[Node] | tuple[Node, ...],
        inputs: list[str] | tuple[str, ...],
        outputs: list[str] | tuple[str, ...],
        *,
        input_qparams: dict | None = None,
        name: str = "graph",
    ):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        if isinstance(nodes, Node) or not isinstance(nodes, (list, tuple)):
            raise TypeError(f"nodes must be a list of Node, got {type(nodes).__name__}")
        for i, n in enumerate(nodes):
            if not isinstance(n, Node):
                raise TypeError(f"nodes[{i}] must be a Node, got {type(n).__name__}")
        self.nodes = tuple(nodes)
        self.inputs = _names(inputs, "inputs")
        self.outputs = _names(outputs, "outputs")
        iqp = {} if input_qparams is None else input_qparams
        if not isinstance(iqp, dict):
            raise TypeError(f"input_qparams must be a dict of input name -> QParams, got {type(iqp).__name__}")
        for k, qp in iqp.items():
            if k not in self.inputs:
                raise ValueError(f"input_qparams has {k!r}, which is not a graph input (inputs: {list(self.inputs)})")
            check_qparams(qp, f"input_qparams[{k!r}]", per_tensor=True)
        self.input_qparams = dict(iqp)
        self._check_names()
        self._check_order()
        self._build()

    # -- validation

    def _check_names(self):
        seen = set()
        for n in self.nodes:
            if n.name in seen:
                raise ValueError(f"duplicate node name {n.name!r}")
            seen.add(n.name)
        if len(set(self.inputs)) != len(self.inputs):
            dup = next(t for t in self.inputs if self.inputs.count(t) > 1)
            raise ValueError(f"graph input {dup!r} is listed twice")
        if len(set(self.outputs)) != len(self.outputs):
            dup = next(t for t in self.outputs if self.outputs.count(t) > 1)
            raise ValueError(f"graph output {dup!r} is listed twice")
        producer = {}
        for i, n in enumerate(self.nodes):
            for t in n.outputs:
                if t in self.inputs:
                    raise ValueError(f"node {n.name!r} outputs {t!r}, which is a graph input (duplicate tensor name)")
                if t in producer:
                    raise ValueError(
                        f"tensor {t!r} is an output of both node {self.nodes[producer[t]].name!r} "
                        f"and node {n.name!r} (duplicate tensor name)"
                    )
                producer[t] = i
        self._producer = producer

    def _cycle(self):
        """Node names of a dependency cycle, or None."""
        state = [0] * len(self.nodes)  # 0 unseen, 1 on the stack, 2 done
        deps = [[self._producer[t] for t in n.inputs if t in self._producer] for n in self.nodes]
        for start in range(len(self.nodes)):
            if state[start]:
                continue
            stack, path = [(start, iter(deps[start]))], [start]
            state[start] = 1
            while stack:
                i, it = stack[-1]
                j = next(it, None)
                if j is None:
                    state[i] = 2
                    stack.pop()
                    path.pop()
                elif state[j] == 1:
                    loop = path[path.index(j) :] + [j]
                    return [self.nodes[k].name for k in reversed(loop)]
                elif state[j] == 0:
                    state[j] = 1
                    stack.append((j, iter(deps[j])))
                    path.append(j)
        return None

    def _check_order(self):
        cycle = self._cycle()
        if cycle:
            raise ValueError(f"node {cycle[0]!r} is in a cycle: {' -> '.join(cycle)} (a graph must be acyclic)")
        defined = set(self.inputs)
        for n in self.nodes:
            for t in n.inputs:
                if t in defined:
                    continue
                if t in self._producer:
                    raise ValueError(
                        f"node {n.name!r} uses tensor {t!r} before it is defined (node "
                        f"{self.nodes[self._producer[t]].name!r} produces it later; list the nodes "
                        "in execution order)"
                    )
                raise ValueError(
                    f"node {n.name!r} has a missing input: tensor {t!r} is neither a graph input "
                    "nor the output of any node"
                )
            defined.update(n.outputs)
        for t in self.outputs:
            if t not in defined:
                raise ValueError(f"graph output {t!r} is neither a graph input nor the output of any node")

    def _build(self):
        qps = dict(self.input_qparams)  # tensor -> QParams of integer tensors
        last_use = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                last_use[t] = i
        steps = []
        self._layers = {}
        for i, n in enumerate(self.nodes):
            d = _op_def(n.op)
            if d is None:
                raise ValueError(
                    f"node {n.name!r} has unknown op {n.op!r}; known ops: {', '.join(_OP_DEFS)} "
                    "and the registered layer types (npquant.models.registry)"
                )
            if (d.arity is None and not n.inputs) or (d.arity is not None and len(n.inputs) != d.arity):
                want = "one or more" if d.arity is None else str(d.arity)
                raise ValueError(f"node {n.name!r} ({n.op}) takes {want} input(s), got {len(n.inputs)}")
            if len(n.outputs) != 1:
                raise ValueError(f"node {n.name!r} ({n.op}) has one output, got {len(n.outputs)}")
            unknown = [k for k in n.attrs if k not in d.attrs]
            if unknown:
                raise ValueError(
                    f"node {n.name!r} ({n.op}) has unknown attribute {unknown[0]!r}; "
                    f"allowed: {', '.join(d.attrs) or 'none'}"
                )
            missing = [k for k, v in d.attrs.items() if v is _REQUIRED and k not in n.attrs]
            if missing:
                raise ValueError(f"node {n.name!r} ({n.op}) needs the attribute {missing[0]!r}")
            names = [p.rstrip("?") for p in d.params]
            unknown = [k for k in n.params if k not in names]
            if unknown:
                raise ValueError(
                    f"node {n.name!r} ({n.op}) has unknown parameter {unknown[0]!r}; "
                    f"allowed: {', '.join(names) or 'none'}"
                )
            missing = [p for p in d.params if not p.endswith("?") and p not in n.params]
            if missing:
                raise ValueError(f"node {n.name!r} ({n.op}) needs the parameter {missing[0]!r}")
            in_qps = [qps.get(t) for t in n.inputs]
            wants_codes = d.kind in ("int", "dequantize")
            for t, qp in zip(n.inputs, in_qps):
                if wants_codes and qp is None:
                    raise ValueError(
                        f"node {n.name!r} ({n.op}) takes integer codes, but tensor {t!r} is float "
                        "(insert a quantize node)"
                    )
                if not wants_codes and qp is not None:
                    raise ValueError(
                        f"node {n.name!r} ({n.op}) takes float tensors, but tensor {t!r} holds "
                        "integer codes (insert a dequantize node)"
                    )
            attrs = {k: n.attrs.get(k, v) for k, v in d.attrs.items()}
            try:
                fn, out_qp = d.build(n, attrs, dict(n.params), in_qps)
            except (ValueError, TypeError) as e:
                raise _node_error(n, e) from None
            if out_qp is not None:
                qps[n.outputs[0]] = out_qp
            self._layers[n.name] = fn
            frees = tuple(t for t in set(n.inputs) if last_use.get(t) == i and t not in self.outputs)
            steps.append(_Step(n, fn, frees))
        self._steps = tuple(steps)
        self.qparams = qps
        self.tensors = self.inputs + tuple(t for n in self.nodes for t in n.outputs)

    # -- running

    @property
    def kind(self) -> str:
        """What the graph computes with.

        Returns
        -------
        str
            ``"float"`` (only float ops), ``"integer"`` (only integer ops, ``quantize`` and
            ``dequantize``), or ``"mixed"``.
        """
        kinds = {_op_def(n.op).kind == "float" for n in self.nodes}
        return "float" if kinds <= {True} else "integer" if kinds == {False} else "mixed"

    def layer(self, node_name: str) -> object:
        """The object that runs a node, prepared when the graph was built.

        Parameters
        ----------
        node_name : str

        Returns
        -------
        object
            A layer of :mod:`npquant.models.nn` or :mod:`npquant.qnn.layers` (a ``QConv2d`` with its
            ``multiplier``, ``out_range``, ``saturates_pairs``, ...), or a function.

        Raises
        ------
        KeyError
            No node has that name.
        """
        if node_name not in self._layers:
            raise KeyError(f"no node named {node_name!r}")
        return self._layers[node_name]

    def node(self, node_name: str) -> Node:
        """The node of a name.

        Parameters
        ----------
        node_name : str

        Returns
        -------
        Node

        Raises
        ------
        KeyError
            No node has that name.
        """
        for n in self.nodes:
            if n.name == node_name:
                return n
        raise KeyError(f"no node named {node_name!r}")

    def _feeds(self, inputs) -> dict:
        if isinstance(inputs, dict):
            unknown = [k for k in inputs if k not in self.inputs]
            if unknown:
                raise ValueError(f"inputs has {unknown[0]!r}, which is not a graph input ({list(self.inputs)})")
            missing = [k for k in self.inputs if k not in inputs]
            if missing:
                raise ValueError(f"inputs is missing the graph input {missing[0]!r}")
            return {k: inputs[k] for k in self.inputs}
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.inputs):
                raise ValueError(f"the graph takes {len(self.inputs)} input(s) {list(self.inputs)}, got {len(inputs)}")
            return dict(zip(self.inputs, inputs))
        if len(self.inputs) != 1:
            raise ValueError(f"the graph takes {len(self.inputs)} inputs {list(self.inputs)}: pass a dict or a list")
        return {self.inputs[0]: inputs}

    def run(self, inputs: npt.ArrayLike | list | dict, *, keep_intermediates: bool = False) -> dict:
        """Run the graph.

        Parameters
        ----------
        inputs : array, list of arrays, or dict of name to array
            One array for a graph with one input; otherwise a list in the order of
            ``graph.inputs`` or a dict by name. Float inputs: float arrays (computed in
            float32); inputs in ``input_qparams``: integer codes.
        keep_intermediates : bool
            Return every tensor, not only the outputs.

        Returns
        -------
        dict of str to numpy.ndarray
            The outputs by name (``graph.outputs`` order), or with ``keep_intermediates``
            every tensor by name: the inputs, then each node's output in execution order.
            Float tensors are float32; integer tensors are codes of their qparams' dtype
            (``graph.qparams[name]``). Each integer op rounds and saturates as its layer
            documents.
        """
        keep = check_bool(keep_intermediates, "keep_intermediates")
        env = self._feeds(inputs)
        for step in self._steps:
            n = step.node
            try:
                env[n.outputs[0]] = step.fn(*(env[t] for t in n.inputs))
            except (ValueError, TypeError, IndexError) as e:
                raise _node_error(n, e) from e
            if not keep:
                for t in step.frees:
                    env.pop(t, None)
        return env if keep else {t: env[t] for t in self.outputs}

    def __call__(self, *inputs):
        """Run the graph on positional inputs (:meth:`run`).

        Parameters
        ----------
        *inputs : numpy.ndarray
            One array per graph input, in the order of ``graph.inputs``.

        Returns
        -------
        numpy.ndarray or tuple of numpy.ndarray
            The output (float32, or codes of ``graph.qparams[name]``), or a tuple of them in
            the order of ``graph.outputs``.
        """
        out = self.run(list(inputs))
        values = tuple(out[t] for t in self.outputs)
        return values[0] if len(values) == 1 else values

    # -- inspection

    def summary(self) -> str:
        """A table of the nodes, for reading.

        Returns
        -------
        str
            One line per node: name, op, inputs -> outputs, and the qparams (scale, zero
            point, dtype) of an integer output.
        """
        rows = [("node", "op", "inputs -> outputs", "output qparams")]
        for n in self.nodes:
            qp = self.qparams.get(n.outputs[0])
            rows.append(
                (
                    n.name,
                    n.op,
                    f"{', '.join(n.inputs)} -> {', '.join(n.outputs)}",
                    "" if qp is None else f"S={float(qp.scale):.6g} Z={int(qp.zero_point)} {qp.spec.dtype}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"Graph {self.name!r}: inputs {list(self.inputs)}, outputs {list(self.outputs)}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={list(self.inputs)}, "
            f"outputs={list(self.outputs)}, kind={self.kind!r})"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (self.name, self.inputs, self.outputs, self.nodes) == (
            other.name,
            other.inputs,
            other.outputs,
            other.nodes,
        ) and {k: _jsonable(v, k) for k, v in self.input_qparams.items()} == {
            k: _jsonable(v, k) for k, v in other.input_qparams.items()
        }

    __hash__ = None


# ---------------------------------------------------------------------------- passes


def fold_batchnorm(graph: Graph) -> Graph:
    """A copy of ``graph`` with each ``batchnorm2d`` folded into the ``conv2d`` before it.

    A batch norm is folded when its input is the output of a ``conv2d`` node that nothing
    else reads and that is not a graph output; the folded conv keeps the conv's name and
    takes the batch norm's output tensor: ``W' = W * gamma / sqrt(var + eps)`` per output
    channel, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` in float32
    (:func:`npquant.models.convert.fold_batchnorm`). Other batch norms stay.

    Parameters
    ----------
    graph : Graph

    Returns
    -------
    Graph
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a Graph, got {type(graph).__name__}")
    uses = {}
    for n in graph.nodes:
        for t in n.inputs:
            uses[t] = uses.get(t, 0) + 1
    producer = {t: n for n in graph.nodes for t in n.outputs}
    out, index = [], {}
    for n in graph.nodes:
        conv = producer.get(n.inputs[0]) if n.op == "batchnorm2d" else None
        if conv is not None and conv.op == "conv2d" and uses[n.inputs[0]] == 1 and n.inputs[0] not in graph.outputs:
            folded = _convert.fold_batchnorm(nn.Sequential([graph.layer(conv.name), graph.layer(n.name)]))[0]
            out[index[conv.name]] = Node(
                conv.name, "conv2d", conv.inputs, n.outputs, conv.attrs, {"weight": folded.weight, "bias": folded.bias}
            )
            continue
        index[n.name] = len(out)
        out.append(n)
    return Graph(out, graph.inputs, graph.outputs, input_qparams=graph.input_qparams, name=graph.name)


# ------------------------------------------------------------------------------- file


def graph_to_arrays(graph: Graph) -> dict:
    """The arrays of a graph file: ``{"__graph__": JSON header, "<node>.<param>": array}``.

    Parameters
    ----------
    graph : Graph

    Returns
    -------
    dict of str to numpy.ndarray
        The header is a 0-d unicode array (module docstring); parameters keep their dtype.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a Graph, got {type(graph).__name__}")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": list(graph.inputs),
        "input_qparams": {k: _jsonable(v, k) for k, v in graph.input_qparams.items()},
        "outputs": list(graph.outputs),
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": n.attrs,
                "params": sorted(n.params),
            }
            for n in graph.nodes
        ],
    }
    arrays = {_HEADER_KEY: np.array(json.dumps(header))}
    for n in graph.nodes:
        for k, v in n.params.items():
            arrays[f"{n.name}.{k}"] = v
    return arrays


def save_graph(path: str | os.PathLike, graph: Graph) -> None:
    """Write ``graph`` as an ``.npz`` (:func:`graph_to_arrays`), atomically.

    Parameters
    ----------
    path : str or os.PathLike
    graph : Graph
    """
    p = check_path(path)
    arrays = graph_to_arrays(graph)
    atomic_write(p, lambda f: np.savez(f, **arrays))


_HEADER_KEYS = {"format", "version", "name", "inputs", "input_qparams", "outputs", "nodes"}
_NODE_KEYS = {"name", "op", "inputs", "outputs", "attrs", "params"}


def _expect(cond, where, message):
    if not cond:
        raise FileFormatError(where, message)


def _str_list(v, what, where) -> list:
    _expect(
        isinstance(v, list) and all(isinstance(s, str) and s for s in v),
        where,
        f"{what} must be a list of non-empty strings",
    )
    return v


def graph_from_arrays(arrays: dict, where: str = "<arrays>") -> Graph:
    """The :class:`Graph` of the arrays of a graph file (as :func:`graph_to_arrays` makes them).

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
    where : str
        The file named in error messages.

    Returns
    -------
    Graph

    Raises
    ------
    FileFormatError
        No header, a header that is not valid JSON of this format and version, a missing or
        unexpected array, or a graph that does not build (the message of its check).
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array, got {type(arrays).__name__}")
    data = dict(arrays)
    raw = data.pop(_HEADER_KEY, None)
    _expect(raw is not None, where, f"no {_HEADER_KEY!r} entry: not an npquant graph file")
    _expect(
        isinstance(raw, np.ndarray) and raw.ndim == 0 and raw.dtype.kind == "U",
        where,
        f"{_HEADER_KEY!r} must be a JSON string (a 0-d unicode array)",
    )
    h = parse_json(str(raw), f"the {_HEADER_KEY!r} header", where)
    _expect(isinstance(h, dict), where, f"the {_HEADER_KEY!r} header must be a JSON object")
    _expect(h.get("format") == FORMAT, where, f"the header's format must be {FORMAT!r}, got {h.get('format')!r}")
    version = h.get("version")
    _expect(
        type(version) is int and version >= 1,
        where,
        f"the header's version must be a positive integer, got {version!r}",
    )
    _expect(
        version <= VERSION,
        where,
        f"graph file version {version} is newer than this npquant reads (version {VERSION}); upgrade npquant",
    )
    _expect(
        set(h) == _HEADER_KEYS, where, f"the header must have exactly the keys {sorted(_HEADER_KEYS)}, got {sorted(h)}"
    )
    _expect(isinstance(h["name"], str) and h["name"], where, "the header's name must be a non-empty string")
    inputs, outputs = _str_list(h["inputs"], "inputs", where), _str_list(h["outputs"], "outputs", where)
    _expect(isinstance(h["input_qparams"], dict), where, "input_qparams must be an object")
    _expect(isinstance(h["nodes"], list), where, "nodes must be a list")
    used = set()
    try:
        iqp = {k: _act_qparams(v, f"input_qparams[{k!r}]") for k, v in h["input_qparams"].items()}
        nodes = []
        for i, nd in enumerate(h["nodes"]):
            _expect(
                isinstance(nd, dict) and set(nd) == _NODE_KEYS,
                where,
                f"nodes[{i}] must be an object with exactly the keys {sorted(_NODE_KEYS)}",
            )
            _expect(isinstance(nd["name"], str) and nd["name"], where, f"nodes[{i}].name must be a non-empty string")
            _expect(isinstance(nd["op"], str), where, f"node {nd['name']!r}: op must be a string")
            _str_list(nd["inputs"], f"node {nd['name']!r}: inputs", where)
            _str_list(nd["outputs"], f"node {nd['name']!r}: outputs", where)
            _expect(isinstance(nd["attrs"], dict), where, f"node {nd['name']!r}: attrs must be an object")
            pnames = _str_list(nd["params"], f"node {nd['name']!r}: params", where)
            params = {}
            for p in pnames:
                key = f"{nd['name']}.{p}"
                _expect(key in data, where, f"node {nd['name']!r} needs the array {key!r}, which is missing")
                _expect(key not in used, where, f"the array {key!r} is claimed twice")
                used.add(key)
                params[p] = data[key]
            nodes.append(Node(nd["name"], nd["op"], nd["inputs"], nd["outputs"], nd["attrs"], params))
        extra = sorted(set(data) - used)
        _expect(not extra, where, f"the array {extra[0]!r} belongs to no node" if extra else "")
        return Graph(nodes, inputs, outputs, input_qparams=iqp, name=h["name"])
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise FileFormatError(where, f"not a valid npquant graph ({type(e).__name__}: {e})") from None


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph file written by :func:`save_graph`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Graph

    Raises
    ------
    OSError
        The file is missing or unreadable.
    FileFormatError
        The file is not a valid ``.npz`` (checked by :func:`npquant._fileio.read_npz`:
        sizes before allocation, CRC-32) or not a valid graph (:func:`graph_from_arrays`).
    """
    p = check_path(path)
    return graph_from_arrays(read_npz(p), p)
