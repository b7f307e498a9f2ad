"""Post-training quantization of float models (:mod:`npquant.models.nn`) into integer models.

* :func:`fold_batchnorm` folds each BatchNorm2d into the conv before it.
* :func:`quantize_model` calibrates activation ranges with an observer on calibration
  data, quantizes weights (per-tensor or per-channel), biases (int32 at ``S_x S_w``) and
  builds an :class:`IntegerModel` of :mod:`npquant.qnn` layers. A ReLU/ReLU6 right after
  a linear or conv layer is fused into its output clamp. The model runs from integer
  input codes to integer logit codes with no float arithmetic in between, under any
  requantization mode.
* :func:`quantize_graph` does the same for a float :class:`~npquant.models.graph.Graph` (residual
  adds, concatenations, tensors read several times): an integer graph of ``qconv2d``,
  ``qlinear``, ``qadd``, ``qconcat``, ... with the float graph's tensor names.
* :func:`dynamic_quantize`: int8 weights, activations quantized per batch at run time
  (min-max of each batch), float output of every layer (PyTorch's dynamic quantization).
* :func:`weight_only_quantize`: weights quantized to ``bits`` (per channel or per group)
  and dequantized, float activations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .. import observers as obs
from .._checks import as_float_array, check_bool, check_choice, check_int
from ..affine import dequantize, fake_quantize, quantize
from ..qnn.accumulation import check_accumulation
from ..qparams import QParams, QuantSpec
from ..requant.modes import REQUANT_MODES
from . import nn
from . import registry as _reg

if TYPE_CHECKING:
    from . import graph as _graph

OBSERVERS = {
    "minmax": lambda spec: obs.MinMaxObserver(spec),
    "moving_average": lambda spec: obs.MovingAverageMinMaxObserver(spec),
    "percentile": lambda spec: obs.PercentileObserver(spec),
    "mse": lambda spec: obs.MSEObserver(spec),
    "entropy": lambda spec: obs.EntropyObserver(spec),
}


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` where every layer that folds the next one (its layer type's
    ``fold``, :mod:`npquant.models.registry`) is one layer: a ``Conv2d`` followed by
    ``BatchNorm2d`` becomes one conv, ``W' = W * gamma / sqrt(var + eps)`` per output
    channel and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` (float32).

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The float model.

    Returns
    -------
    npquant.models.nn.Sequential
        A new model; layers other than the folded pairs are the same objects.
    """
    out, layers, i = [], list(model), 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        kind = _reg.kind_of(layer)
        folded = None if kind is None else kind.fold(layer, nxt)
        if folded is not None:
            out.append(folded)
            i += 2
        else:
            out.append(layer)
            i += 1
    return nn.Sequential(out)


@dataclass
class IntegerModel:
    """An integer-only model: ``input_qp`` quantizes float input, ``layers`` (of
    :mod:`npquant.qnn`) map codes to codes, ``output_qp`` dequantizes the logits."""

    input_qp: QParams
    layers: list
    output_qp: QParams
    mode: str
    input_method: str = "divide"

    def quantize_input(self, x: npt.ArrayLike) -> np.ndarray:
        return quantize(x, self.input_qp, method=self.input_method)

    def run(self, x_q: npt.ArrayLike) -> np.ndarray:
        """Integer codes in, integer codes out (``output_qp``'s dtype)."""
        for layer in self.layers:
            x_q = layer(x_q)
        return x_q

    def __call__(self, x) -> np.ndarray:
        """Float input to dequantized float32 logits."""
        return dequantize(self.run(self.quantize_input(x)), self.output_qp)

    def float_twin(self, x: npt.ArrayLike) -> np.ndarray:
        """The same model in float (fake quantization): dequantized weights and int32
        biases, float products, and each activation fake-quantized with its qparams and
        clamped to its fused-activation range; float32 logits (each layer by its layer
        type's ``float_twin``). The integer model differs from it only by rounding inside
        the requantization."""
        h = fake_quantize(as_float_array(x, "x"), self.input_qp, method=self.input_method)
        for layer in self.layers:
            kind = _reg.kind_of(layer)
            if kind is None:
                raise TypeError(f"no float twin for {type(layer).__name__}")
            h = kind.float_twin(layer, h)
        return h

    def size_bytes(self, *, packed: bool = False) -> int:
        """Weights, int32 biases, float32 scales, zero points, in bytes.

        Weight codes count 1 byte each (their int8 storage), or with ``packed`` the bytes of
        each tensor's codes packed at its spec's bit width (``ceil(n * bits / 8)``, as
        :func:`npquant.compression.packing.pack_bits` stores them); the same for 8-bit weights.
        Each layer is counted by its layer type (:func:`npquant.models.registry.model_size_bytes`).
        """
        return _reg.model_size_bytes(self, packed=check_bool(packed, "packed"))


def _next_activation(layers, i) -> str | None:
    """The clamp name of the layer after ``layers[i]`` if its type fuses (``activation``), else None."""
    if i + 1 >= len(layers):
        return None
    kind = _reg.kind_of(layers[i + 1])
    return None if kind is None else kind.activation


def _given_qparams(qparams, layers) -> dict:
    """Check the ``qparams`` argument of :func:`quantize_model` against the folded layers."""
    if qparams is None:
        return {}
    if not isinstance(qparams, dict):
        raise TypeError(f"qparams must be a dict of name -> QParams or None, got {type(qparams).__name__}")
    names = [layer.name for layer in layers if _weighted(layer)]
    allowed = {"input", *names, *(f"{n}.weight" for n in names)}
    for key, qp in qparams.items():
        if key not in allowed:
            raise ValueError(
                f"qparams has key {key!r}; allowed: 'input', the linear/conv layer names {names} and '<name>.weight'"
            )
        if not isinstance(qp, QParams):
            raise TypeError(f"qparams[{key!r}] must be a QParams, got {type(qp).__name__}")
        if not key.endswith(".weight") and qp.spec.axis is not None:
            raise ValueError(f"qparams[{key!r}] must be per-tensor (an activation), got axis={qp.spec.axis}")
        if qp.spec.bits > 8:
            raise ValueError(f"qparams[{key!r}] has {qp.spec.bits} bits; the integer layers take at most 8")
    if len(set(names)) != len(names):
        raise ValueError(f"qparams are keyed by layer name, but the linear/conv names {names} repeat")
    return dict(qparams)


def _check_ptq(mode, accumulation, observer, weight_bits, batch_size, bias_method) -> tuple[int, int, str]:
    """The arguments shared by :func:`quantize_model` and :func:`quantize_graph`, checked:
    ``(weight_bits, batch_size, bias_method)`` with the bias method picked by ``mode``."""
    check_choice(mode, "mode", REQUANT_MODES)
    check_accumulation(accumulation)
    check_choice(observer, "observer", tuple(OBSERVERS))
    weight_bits = check_int(weight_bits, "weight_bits", lo=2, hi=8)
    batch_size = check_int(batch_size, "batch_size", lo=1)
    if bias_method is None:
        bias_method = "tflite" if mode.startswith("tflite") else "onnxruntime"
    return weight_bits, batch_size, bias_method


def _weighted(layer) -> bool:
    kind = _reg.kind_of(layer)
    return kind is not None and kind.weighted


def quantize_model(
    model: nn.Sequential,
    calib_x: npt.ArrayLike | None,
    *,
    mode: str = "tflite",
    observer: str = "minmax",
    per_channel: bool = True,
    weight_bits: int = 8,
    activation_signed: bool = False,
    batch_size: int = 256,
    bias_method: str | None = None,
    accumulation: str = "exact",
    qparams: dict | None = None,
) -> IntegerModel:
    """Post-training static quantization of ``model`` calibrated on ``calib_x``.

    Weights: signed symmetric narrow-range ``weight_bits`` codes (TFLite's int8
    convention, ``[-127, 127]``), per output channel or per tensor. Activations: 8-bit
    asymmetric (uint8, or int8 with ``activation_signed``), ranges from ``observer``
    (``minmax``, ``moving_average``, ``percentile``, ``mse``, ``entropy``) over the
    calibration batches. Biases: int32 at ``S_x S_w`` (``bias_method`` of
    :func:`npquant.qnn.bias.quantize_bias`; default TFLite's for the TFLite modes,
    onnxruntime's otherwise). ``accumulation`` is that of every linear and conv layer
    (:mod:`npquant.qnn.accumulation`; pair saturation needs uint8 activations).

    ``qparams`` gives quantization parameters instead of calibrating them (as a converted
    QAT model has them, :func:`npquant.training.convert_qat`): a dict with any of the keys
    ``"input"`` (per-tensor QParams of the input), ``"<name>"`` (per-tensor QParams of the
    post-activation output of the linear/conv layer named ``name``; any bits up to 8 --
    the integer layer clamps its output to that spec's ``[qmin, qmax]``) and
    ``"<name>.weight"`` (its weight QParams, per-tensor or per-channel along axis 0,
    replacing ``weight_bits`` and ``per_channel`` for that layer). Points not given are
    calibrated on ``calib_x``, which may be None when every activation point is given.

    Each layer converts as its layer type says (:mod:`npquant.models.registry`;
    ``to_integer``); a layer whose type declares no integer form is an error naming it.
    Pools work on codes with the input's qparams. Average pooling rounds ``sum / count``
    half away from zero in the ``tflite*`` modes (TFLite's AVERAGE_POOL_2D, padding not
    counted) and half to even otherwise (PyTorch's quantized ``avg_pool2d``); a pool whose
    padding counts in the divisor (``count_include_pad=True``, PyTorch's default) counts
    padded positions as real 0 (code ``Z_x``) and rounds half to even in every mode.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The float model.
    calib_x : float array (N, ...) or None
        Calibration inputs, run in batches; None only when ``qparams`` gives every
        activation point.
    mode : str, default ``"tflite"``
        The requantization rounding, one of :data:`npquant.requant.modes.REQUANT_MODES`.
    observer : str, default ``"minmax"``
        ``"minmax"``, ``"moving_average"``, ``"percentile"``, ``"mse"`` or ``"entropy"``.
    per_channel : bool, default True
        Weight scales per output channel, else per tensor.
    weight_bits : int, default 8
        Bits of the weight codes, 2..8.
    activation_signed : bool, default False
        int8 activations instead of uint8.
    batch_size : int, default 256
        Calibration batch size, >= 1.
    bias_method : str or None, default None
        ``"tflite"`` or ``"onnxruntime"``; ``None`` picks by ``mode`` as above.
    accumulation : str, default ``"exact"``
        The accumulation of every linear and conv layer.
    qparams : dict or None, default None
        Given quantization parameters, keyed as above.

    Returns
    -------
    IntegerModel
        The integer model with its input and output qparams.
    """
    weight_bits, batch_size, bias_method = _check_ptq(
        mode, accumulation, observer, weight_bits, batch_size, bias_method
    )
    layers = list(fold_batchnorm(model))
    given = _given_qparams(qparams, layers)
    act_spec = QuantSpec(bits=8, signed=bool(activation_signed))
    # quantization points: the input, and the (post-activation) output of each linear/conv
    points = {} if "input" in given else {"input": OBSERVERS[observer](act_spec)}
    for i, layer in enumerate(layers):
        if _weighted(layer) and layer.name not in given:
            points[i] = OBSERVERS[observer](act_spec)
    if points:
        calib = as_float_array(calib_x, "calib_x")
        for start in range(0, calib.shape[0], batch_size):
            x = calib[start : start + batch_size]
            if "input" in points:
                points["input"].update(x)
            for i, layer in enumerate(layers):
                x = layer(x)
                if i in points:  # observed after a fused activation (a fresh float32 clamp)
                    points[i].update(_reg.kind_of(layers[i + 1]).float_class()(x) if _next_activation(layers, i) else x)
    w_spec = QuantSpec(bits=weight_bits, symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    x_qp = given["input"] if "input" in given else points["input"].qparams()
    input_qp = x_qp
    qlayers, i = [], 0
    while i < len(layers):
        layer = layers[i]
        kind = _reg.kind_of(layer)
        if kind is None:
            raise ValueError(
                f"cannot quantize layer {i} of type {type(layer).__name__}: no registered layer type "
                "(npquant.models.registry) has that class"
            )
        ctx = _reg.QuantContext(x_qp, mode, accumulation, bias_method)
        act = None
        if kind.weighted:
            act = _next_activation(layers, i)
            ctx.y_qp = given[layer.name] if layer.name in given else points[i].qparams()
            ctx.activation, ctx.w_spec, ctx.w_qp = act, w_spec, given.get(f"{layer.name}.weight")
        qlayer, x_qp = kind.to_integer(layer, ctx)
        qlayers.append(qlayer)
        i += 2 if act else 1
    return IntegerModel(input_qp=input_qp, layers=qlayers, output_qp=x_qp, mode=mode)


#: ``mode`` of :func:`quantize_graph` -> the ``mode`` of its ``qadd`` nodes.
GRAPH_ADD_MODES = {"tflite": "tflite", "tflite_single": "tflite_single", "fp32": "torch", "onnx": "onnxruntime"}
_GRAPH_ONLY_OPS = ("reshape", "add", "concat")  # graph ops of no layer type, quantized by quantize_graph itself


def _graph_kind(op: str) -> _reg.LayerType | None:
    """The registered layer type of a float graph op whose type gives an integer graph node
    (:meth:`~npquant.models.registry.LayerType.graph_node`), else None."""
    kind = _reg.layer_types().get(op)
    return kind if kind is not None and kind.graph_quantizable else None


def _graph_ops() -> list:
    """The ops :func:`quantize_graph` takes, for messages."""
    return [n for n, t in _reg.layer_types().items() if t.graph_quantizable] + list(_GRAPH_ONLY_OPS)


def _calib_feeds(graph, calib_inputs) -> dict:
    """``calib_inputs`` as ``{input name: float32 array}`` with one batch size."""
    if isinstance(calib_inputs, dict):
        names = [k for k in calib_inputs if k not in graph.inputs]
        if names:
            raise ValueError(f"calib_inputs has {names[0]!r}, which is not a graph input ({list(graph.inputs)})")
        missing = [k for k in graph.inputs if k not in calib_inputs]
        if missing:
            raise ValueError(f"calib_inputs is missing the graph input {missing[0]!r}")
        values = [calib_inputs[k] for k in graph.inputs]
    elif isinstance(calib_inputs, (list, tuple)):
        if len(calib_inputs) != len(graph.inputs):
            raise ValueError(
                f"calib_inputs must hold {len(graph.inputs)} array(s), one per graph input "
                f"{list(graph.inputs)}, got {len(calib_inputs)}"
            )
        values = list(calib_inputs)
    elif len(graph.inputs) == 1:
        values = [calib_inputs]
    else:
        raise ValueError(
            f"the graph takes {len(graph.inputs)} inputs {list(graph.inputs)}: calib_inputs must be "
            "a list or a dict of arrays"
        )
    feeds = {k: as_float_array(v, f"calib_inputs[{k!r}]") for k, v in zip(graph.inputs, values)}
    sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"calib_inputs must be arrays with one batch size along axis 0, got shapes "
            f"{[v.shape for v in feeds.values()]}"
        )
    return feeds


def quantize_graph(
    graph: _graph.Graph,
    calib_inputs: npt.ArrayLike | list | dict,
    *,
    mode: str = "tflite",
    observer: str = "minmax",
    per_channel: bool = True,
    weight_bits: int = 8,
    act_dtype: str = "uint8",
    accumulation: str = "exact",
    bias_method: str | None = None,
    batch_size: int = 256,
    name: str | None = None,
) -> _graph.Graph:
    """Post-training static quantization of a float :class:`~npquant.models.graph.Graph`.

    The graph counterpart of :func:`quantize_model`, with its conventions for weights,
    biases, activations, observers and pools; on a chain the two give the same codes.
    Batch norms are folded (:func:`npquant.models.graph.fold_batchnorm`); the float graph runs on
    ``calib_inputs`` (``keep_intermediates=True``, in batches of ``batch_size``) and an
    observer records every tensor that gets its own qparams: each graph input, and the
    output of each linear, conv, add and concat. A node of a layer type becomes the node
    its type's :meth:`~npquant.models.registry.LayerType.graph_node` gives
    (:mod:`npquant.models.registry`); the nodes become:

    * ``linear`` / ``conv2d`` -> ``qlinear`` / ``qconv2d``. A ``relu`` or ``relu6`` that is
      the only reader of the layer's output (which is not a graph output) is fused into
      the layer's output clamp; the fused node keeps the layer's name and writes the
      activation's output tensor, and the observer sees the activated values.
    * ``add`` -> ``qadd`` with its own output qparams, in the add of the stack that
      ``mode`` names (:data:`GRAPH_ADD_MODES`): TFLite's ADD for ``"tflite"`` and
      ``"tflite_single"``, PyTorch's quantized add for ``"fp32"`` (uint8 activations only),
      onnxruntime's QLinearAdd for ``"onnx"``.
    * ``concat`` -> ``qconcat`` (``qlinear_concat`` in mode ``"onnx"``): the output has the
      qparams of its observed range and each input is requantized to them (an input that
      already has them is copied). TFLite's converter instead gives all inputs one shared
      scale; that convention is not applied here.
    * ``maxpool2d``, ``flatten``, ``reshape`` and a standalone ``relu`` / ``relu6``
      (``qrelu``, TFLite's clamp) work on codes and keep the qparams of their input;
      ``avgpool2d`` -> ``qavgpool2d`` keeps them too and rounds as in :func:`quantize_model`.
    * A ``quantize`` node (``method="divide"``) after each graph input ``x`` writes its
      codes ``x + "_q"``; a ``dequantize`` node before each graph output ``y`` reads codes
      ``y + "_q"`` and writes ``y`` in float32. Every other tensor keeps its name, so the
      intermediates of the float and the integer graph compare by name
      (``graph.qparams[name]`` dequantizes them).

    Parameters
    ----------
    graph : npquant.models.graph.Graph
        A float graph (all ops float) of the ops above and ``batchnorm2d`` after a conv.
    calib_inputs : array, list of arrays or dict of name to array
        Calibration data: one float array (N, ...) per graph input, as ``graph.run`` takes them.
    mode : str, default ``"tflite"``
        Requantization of every linear/conv layer, one of
        :data:`npquant.requant.modes.REQUANT_MODES`; it also picks the add (above).
    observer : str, default ``"minmax"``
        ``"minmax"``, ``"moving_average"``, ``"percentile"``, ``"mse"`` or ``"entropy"``.
    per_channel : bool, default True
        Weight scales per output channel, else per tensor.
    weight_bits : int, default 8
        Bits of the weight codes (signed symmetric narrow range), 2..8.
    act_dtype : str, default ``"uint8"``
        ``"uint8"`` or ``"int8"`` activation codes (8-bit asymmetric).
    accumulation : str, default ``"exact"``
        The accumulation of every linear and conv layer (:mod:`npquant.qnn.accumulation`).
    bias_method : str or None, default None
        ``"tflite"`` or ``"onnxruntime"`` (:func:`npquant.qnn.bias.quantize_bias`); ``None``
        picks TFLite's for the ``tflite*`` modes, onnxruntime's otherwise.
    batch_size : int, default 256
        Calibration batch size, >= 1.
    name : str or None, default None
        The integer graph's name (default: the float graph's).

    Returns
    -------
    npquant.models.graph.Graph
        The integer graph: float inputs and outputs under the float graph's names, integer
        codes in between.

    Raises
    ------
    ValueError
        An argument out of its choices, a graph that is not float, or a node that cannot be
        quantized (an op not listed above, a batch norm that does not fold, a graph output
        that is a graph input, a PyTorch add on int8 codes); the message names the node.
    """
    from . import graph as _graph

    weight_bits, batch_size, bias_method = _check_ptq(
        mode, accumulation, observer, weight_bits, batch_size, bias_method
    )
    check_bool(per_channel, "per_channel")
    act_dtype = check_choice(act_dtype, "act_dtype", ("uint8", "int8"))
    if not isinstance(graph, _graph.Graph):
        raise TypeError(f"graph must be an npquant.models.graph.Graph, got {type(graph).__name__}")
    if graph.kind != "float" or graph.input_qparams:
        raise ValueError(f"graph must be a float graph (float ops and inputs), got kind {graph.kind!r}")
    name = graph.name if name is None else name
    g = _graph.fold_batchnorm(graph)
    for n in g.nodes:
        if n.op == "batchnorm2d":
            raise ValueError(
                f"node {n.name!r} (batchnorm2d) cannot be quantized: it does not fold into a conv "
                "(its input is not the output of a conv2d read by it alone)"
            )
        if n.op not in _GRAPH_ONLY_OPS and _graph_kind(n.op) is None:
            raise ValueError(
                f"node {n.name!r} ({n.op}) cannot be quantized; quantize_graph takes the ops "
                f"{', '.join(_graph_ops())} (and batchnorm2d after a conv2d)"
            )
        if mode == "fp32" and n.op == "add" and act_dtype == "int8":
            raise ValueError(
                f"node {n.name!r} (add): mode='fp32' quantizes adds as PyTorch's quint8 add, "
                "which needs act_dtype='uint8'"
            )
    for t in g.outputs:
        if t in g.inputs:
            raise ValueError(f"graph output {t!r} is a graph input; quantize_graph needs a node before each output")
    readers = {}
    for n in g.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    kinds = {n.name: _graph_kind(n.op) for n in g.nodes}
    weighted = {n.name for n in g.nodes if kinds[n.name] is not None and kinds[n.name].weighted}
    fused = {}  # weighted (linear/conv) node name -> the clamp (relu/relu6) node fused into it
    for n in g.nodes:
        if n.name in weighted:
            t = n.outputs[0]
            r = readers.get(t, [])
            if (
                len(r) == 1
                and kinds[r[0].name] is not None
                and kinds[r[0].name].activation is not None
                and t not in g.outputs
            ):
                fused[n.name] = r[0]
    absorbed = {r.name for r in fused.values()}

    # calibration: each graph input and the (activated) output of each linear/conv/add/concat
    act_spec = QuantSpec(bits=8, signed=act_dtype == "int8")
    observed = list(g.inputs)
    for n in g.nodes:
        if n.name in weighted or n.op in ("add", "concat"):
            observed.append(fused[n.name].outputs[0] if n.name in fused else n.outputs[0])
    points = {t: OBSERVERS[observer](act_spec) for t in observed}
    feeds = _calib_feeds(g, calib_inputs)
    total = next(iter(feeds.values())).shape[0]
    for start in range(0, total, batch_size):
        env = g.run({k: v[start : start + batch_size] for k, v in feeds.items()}, keep_intermediates=True)
        for t, o in points.items():
            o.update(env[t])

    # the integer graph
    taken = set(g.tensors)
    node_names = {n.name for n in g.nodes}

    def fresh(base, used):
        out, k = base, 1
        while out in used:
            k += 1
            out = f"{base}_{k}"
        used.add(out)
        return out

    codes = {t: t for t in g.tensors}  # float tensor -> its codes' tensor
    for t in (*g.inputs, *g.outputs):
        codes[t] = fresh(f"{t}_q", taken)
    qps, nodes = {}, []
    for t in g.inputs:
        qps[codes[t]] = points[t].qparams()
        nodes.append(
            _graph.Node(
                fresh(f"quantize_{t}", node_names),
                "quantize",
                [t],
                [codes[t]],
                {"output": qps[codes[t]], "method": "divide"},
            )
        )
    w_spec = QuantSpec(bits=weight_bits, symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    for n in g.nodes:
        if n.name in absorbed:
            continue
        ins = [codes[t] for t in n.inputs]
        in_qps = [qps[t] for t in ins]
        out_t = fused[n.name].outputs[0] if n.name in fused else n.outputs[0]
        out = codes[out_t]
        kind = kinds[n.name]
        if kind is not None:
            ctx = _reg.QuantContext(in_qps[0], mode, accumulation, bias_method)
            if kind.weighted:
                ctx.y_qp, ctx.w_spec = points[out_t].qparams(), w_spec
                ctx.activation = kinds[fused[n.name].name].activation if n.name in fused else None
            op, attrs, params, y_qp = kind.graph_node(g.layer(n.name), ctx)
            node = _graph.Node(n.name, op, ins, [out], attrs, params)
        elif n.op == "add":
            y_qp = points[out_t].qparams()
            node = _graph.Node(n.name, "qadd", ins, [out], {"output": y_qp, "mode": GRAPH_ADD_MODES[mode]})
        elif n.op == "concat":
            y_qp = points[out_t].qparams()
            op, cat_mode = ("qlinear_concat", "onnxruntime") if mode == "onnx" else ("qconcat", "torch")
            node = _graph.Node(
                n.name, op, ins, [out], {"output": y_qp, "axis": n.attrs.get("axis", 1), "mode": cat_mode}
            )
        else:  # reshape
            y_qp = in_qps[0]
            node = _graph.Node(n.name, "qreshape", ins, [out], {"shape": n.attrs["shape"]})
        qps[out] = y_qp
        nodes.append(node)
    for t in g.outputs:
        nodes.append(_graph.Node(fresh(f"dequantize_{t}", node_names), "dequantize", [codes[t]], [t]))
    return _graph.Graph(nodes, g.inputs, g.outputs, name=name)


def dynamic_quantize(model: nn.Sequential, *, per_channel: bool = True) -> nn.Sequential:
    """Dynamic quantization: int8 symmetric weights (per channel or per tensor), uint8
    activations quantized per batch with their own min-max, float between layers.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The float model.
    per_channel : bool, default True
        Keyword-only; weight scales per output channel, else per tensor.

    Returns
    -------
    npquant.models.nn.Sequential
        The model with batch norms folded and its linear and conv layers replaced (each
        layer by its layer type's ``dynamic``; the others stay float).
    """
    spec = QuantSpec(symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    out = []
    for layer in fold_batchnorm(model):
        kind = _reg.kind_of(layer)
        out.append(layer if kind is None else kind.dynamic(layer, spec))
    return nn.Sequential(out)


def dynamic_size_bytes(model: nn.Sequential) -> int:
    """Storage of a :func:`dynamic_quantize` model: int8 weight codes, float32 scales and
    float32 biases of its quantized layers, and the float32 parameters of the layers that
    stay float (:func:`npquant.models.registry.model_size_bytes`).

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        A model returned by :func:`dynamic_quantize`.

    Returns
    -------
    int
        Bytes.
    """
    return _reg.model_size_bytes(model)


def weight_only_quantize(
    model: nn.Sequential, bits: int = 8, *, group_size: int | None = None, symmetric: bool = True
) -> tuple[nn.Sequential, int]:
    """Weights quantized to ``bits`` and dequantized (per output channel, or per group of
    ``group_size`` inputs along axis 1); activations stay float.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The float model.
    bits : int, default 8
        Bits of the weight codes, 2..8.
    group_size : int or None, default None
        Keyword-only; the group length along axis 1, or ``None`` for per output channel.
    symmetric : bool, default True
        Keyword-only; symmetric (signed, zero point 0) or asymmetric codes.

    Returns
    -------
    model : npquant.models.nn.Sequential
        The model (batch norms folded) with fake-quantized float32 weights.
    size : int
        The weight storage in bytes (codes packed at ``bits``, float32 scales, zero
        points of the code width, float32 biases) of the weighted layers (their layer
        type's ``weight_only``).
    """
    bits = check_int(bits, "bits", lo=2, hi=8)
    spec = QuantSpec(bits=bits, symmetric=symmetric, axis=0 if group_size is None else 1, block_size=group_size)
    out, size = [], 0
    for layer in fold_batchnorm(model):
        kind = _reg.kind_of(layer)
        if kind is None or not kind.weighted:
            out.append(layer)
            continue
        new, storage = kind.weight_only(layer, spec)
        out.append(new)
        size += storage.total
    return nn.Sequential(out), size


def float_size_bytes(model: nn.Sequential) -> int:
    """float32 bytes of every weight and bias.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The float model; batch-norm running statistics count too.

    Returns
    -------
    int
        ``4 *`` the number of elements of every float parameter and buffer (``weight``,
        ``bias``, ``running_mean``, ``running_var``; each layer by its layer type's
        ``float_bytes``, :func:`npquant.models.registry.model_size_bytes`).
    """
    return _reg.model_size_bytes(model)


def from_pytorch_ptq(path_or_arrays: str | os.PathLike | dict, *, accumulation: str = "exact") -> IntegerModel:
    """The integer model of a PyTorch post-training-quantized reference file
    (``npquant/data/*_ptq.npz``): PyTorch's integer weights, float biases, scales
    and zero points, in ``mode="fp32"`` with fbgemm's float-bias folding, input quantized
    as ``torch.quantize_per_tensor`` does (``method="torch"``).

    ``accumulation="fbgemm"`` gives PyTorch's quantized outputs bit for bit on the CPU at
    hand (fbgemm saturates int16 pairs without AVX-512 VNNI, and in its depthwise kernel
    always); ``"fbgemm_avx2"`` / ``"fbgemm_vnni"`` name a path;
    the default ``"exact"`` is the mathematically exact model
    (:mod:`npquant.qnn.accumulation`). The bundled files' recorded outputs equal every
    one of these (their activation codes never saturate a pair; ``tests/test_convert_reference.py``).

    Parameters
    ----------
    path_or_arrays : str, os.PathLike or dict
        The ``.npz`` file, or its arrays by name.
    accumulation : str, default ``"exact"``
        Keyword-only; the accumulation of every linear and conv layer.

    Returns
    -------
    IntegerModel
        The integer model.
    """
    from .._fileio import FileFormatError, check_path, read_npz

    check_accumulation(accumulation)

    if isinstance(path_or_arrays, dict):
        data, where = dict(path_or_arrays), "<arrays>"
    else:
        where = check_path(path_or_arrays, "path_or_arrays")
        data = read_npz(where)
    arch = _reg.read_arch(data, where, what="PyTorch PTQ reference file")
    try:

        def act_qp(prefix):
            # PyTorch holds activation scales as float64 of float32 values; quint8 codes
            return QParams(
                np.float32(data[f"{prefix}.scale"]), int(data[f"{prefix}.zero_point"]), QuantSpec(signed=False)
            )

        src = _reg.TorchPTQ(data, act_qp, accumulation)
        x_qp = input_qp = act_qp("input")
        layers = []
        for spec in arch["layers"]:
            t = spec["type"]
            kind = _reg.layer_types().get(t) if isinstance(t, str) else None
            if kind is None:
                raise ValueError(f"layer type {t!r} of {spec.get('name')!r} is not supported in a PyTorch PTQ file")
            qlayer, x_qp = kind.from_torch_ptq(spec, src, x_qp)
            layers.append(qlayer)
    except KeyError as e:
        raise FileFormatError(where, f"PyTorch PTQ file is missing {e.args[0]!r}") from None
    except (AttributeError, TypeError, IndexError, ValueError) as e:  # a malformed '__arch__' or entry
        raise FileFormatError(where, f"not a valid PyTorch PTQ file ({type(e).__name__}: {e})") from None
    return IntegerModel(input_qp=input_qp, layers=layers, output_qp=x_qp, mode="fp32", input_method="torch")
