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

from dataclasses import dataclass

import numpy as np

from .. import observers as obs
from .._checks import as_float_array, check_bool, check_choice, check_int
from ..affine import dequantize, fake_quantize, quantize
from ..qnn import layers as ql
from ..qnn.accumulation import check_accumulation
from ..qnn.conv import conv2d_accumulate
from ..qnn.gemm import linear_accumulate, quantize_bias
from ..qparams import QParams, QuantSpec, fit_qparams
from ..requant.fixedpoint import REQUANT_MODES
from . import nn

OBSERVERS = {
    "minmax": lambda spec: obs.MinMaxObserver(spec),
    "moving_average": lambda spec: obs.MovingAverageMinMaxObserver(spec),
    "percentile": lambda spec: obs.PercentileObserver(spec),
    "mse": lambda spec: obs.MSEObserver(spec),
    "entropy": lambda spec: obs.EntropyObserver(spec),
}


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` where every ``Conv2d`` followed by ``BatchNorm2d`` is one conv:
    ``W' = W * gamma / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` (float32).

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
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            scale, shift = nxt.scale_shift()
            if scale.shape[0] != layer.weight.shape[0]:
                raise ValueError(f"{nxt.name} has {scale.shape[0]} channels, {layer.name} has {layer.weight.shape[0]}")
            w = (layer.weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
            b0 = np.zeros(scale.shape, np.float32) if layer.bias is None else layer.bias
            b = (b0 * scale + shift).astype(np.float32)
            out.append(nn.Conv2d(w, b, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                 groups=layer.groups, name=layer.name))
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

    def quantize_input(self, x) -> np.ndarray:
        return quantize(x, self.input_qp, method=self.input_method)

    def run(self, x_q) -> np.ndarray:
        """Integer codes in, integer codes out (``output_qp``'s dtype)."""
        for layer in self.layers:
            x_q = layer(x_q)
        return x_q

    def __call__(self, x) -> np.ndarray:
        """Float input to dequantized float32 logits."""
        return dequantize(self.run(self.quantize_input(x)), self.output_qp)

    def float_twin(self, x) -> np.ndarray:
        """The same model in float (fake quantization): dequantized weights and int32
        biases, float products, and each activation fake-quantized with its qparams and
        clamped to its fused-activation range; float32 logits. The integer model differs
        from it only by rounding inside the requantization."""
        h = fake_quantize(as_float_array(x, "x"), self.input_qp, method=self.input_method)
        for layer in self.layers:
            if isinstance(layer, (ql.QLinear, ql.QConv2d)):
                w = dequantize(layer.w_q, layer.w_qp)
                sx = np.float32(layer.x_qp.scale)
                sw = np.broadcast_to(layer.w_qp.scale, (w.shape[0],)).astype(np.float32)
                b = layer.bias_q.astype(np.float32) * sx * sw
                if isinstance(layer, ql.QLinear):
                    y = nn.Linear(w, b)(h)
                else:
                    g = layer.geometry
                    y = nn.Conv2d(w, b, stride=g.stride, padding=(g.padding[0], g.padding[2]),
                                  dilation=g.dilation, groups=g.groups)(h)
                lo, hi = layer.out_range
                qp = layer.y_qp
                sy, zy = np.float32(qp.scale), int(qp.zero_point)
                h = np.clip(fake_quantize(y, qp), sy * (lo - zy), sy * (hi - zy)).astype(np.float32)
            elif isinstance(layer, ql.MaxPool2d):
                h = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)(h)
            elif isinstance(layer, ql.AvgPool2d):
                h = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                 count_include_pad=layer.count_include_pad)(h)
            elif isinstance(layer, ql.Flatten):
                h = nn.Flatten()(h)
            elif isinstance(layer, ql.QReLU):
                lo, hi = layer.out_range
                sy, zy = np.float32(layer.qp.scale), int(layer.qp.zero_point)
                h = np.clip(h, sy * (lo - zy), sy * (hi - zy))
            else:
                raise TypeError(f"no float twin for {type(layer).__name__}")
        return h

    def size_bytes(self, *, packed: bool = False) -> int:
        """Weights, int32 biases, float32 scales, zero points, in bytes.

        Weight codes count 1 byte each (their int8 storage), or with ``packed`` the bytes of
        each tensor's codes packed at its spec's bit width (``ceil(n * bits / 8)``, as
        :func:`npquant.compression.packing.pack_bits` stores them); the same for 8-bit weights.
        """
        packed = check_bool(packed, "packed")
        total = 0
        for layer in self.layers:
            if isinstance(layer, (ql.QLinear, ql.QConv2d)):
                n = layer.w_q.size
                codes = -(-n * layer.w_qp.spec.bits // 8) if packed else n * layer.w_q.itemsize
                total += codes + 4 * layer.w_q.shape[0]
                total += layer.w_qp.scale.size * 4 + layer.w_qp.zero_point.size * layer.w_q.itemsize
        return total


def _next_activation(layers, i):
    nxt = layers[i + 1] if i + 1 < len(layers) else None
    if isinstance(nxt, nn.ReLU):
        return "relu"
    if isinstance(nxt, nn.ReLU6):
        return "relu6"
    return None


def _given_qparams(qparams, layers) -> dict:
    """Check the ``qparams`` argument of :func:`quantize_model` against the folded layers."""
    if qparams is None:
        return {}
    if not isinstance(qparams, dict):
        raise TypeError(f"qparams must be a dict of name -> QParams or None, got {type(qparams).__name__}")
    names = [layer.name for layer in layers if isinstance(layer, (nn.Linear, nn.Conv2d))]
    allowed = {"input", *names, *(f"{n}.weight" for n in names)}
    for key, qp in qparams.items():
        if key not in allowed:
            raise ValueError(f"qparams has key {key!r}; allowed: 'input', the linear/conv layer names "
                             f"{names} and '<name>.weight'")
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


def _quantize_params(weight, bias, x_qp: QParams, w_qp: QParams | None, w_spec: QuantSpec, bias_method: str):
    """Weight codes, their QParams (fitted with ``w_spec`` unless given) and the int32 bias
    at ``S_x S_w`` (None without a bias) of a linear/conv layer."""
    if w_qp is None:
        w_qp = fit_qparams(weight, w_spec)
    w_q = quantize(weight, w_qp)
    b_q = None
    if bias is not None:
        sw = np.broadcast_to(np.asarray(w_qp.scale, np.float32), (weight.shape[0],))
        b_q = quantize_bias(bias, np.float32(x_qp.scale), sw, method=bias_method)
    return w_q, w_qp, b_q


def _avgpool_mode(layer: nn.AvgPool2d, mode: str) -> tuple[str, bool]:
    """``(mode, count_include_pad)`` of the integer average pool of ``layer``."""
    # Padding counted in the divisor (PyTorch's default) is not a TFLite option: such a
    # pool rounds as PyTorch's quantized avg_pool2d does, whatever the requantization mode.
    include_pad = bool(layer.count_include_pad and any(layer.padding))
    return ("tflite" if mode.startswith("tflite") and not include_pad else "torch"), include_pad


def quantize_model(model: nn.Sequential, calib_x, *, mode: str = "tflite", observer: str = "minmax",
                   per_channel: bool = True, weight_bits: int = 8, activation_signed: bool = False,
                   batch_size: int = 256, bias_method: str | None = None,
                   accumulation: str = "exact", qparams: dict | None = None) -> IntegerModel:
    """Post-training static quantization of ``model`` calibrated on ``calib_x``.

    Weights: signed symmetric narrow-range ``weight_bits`` codes (TFLite's int8
    convention, ``[-127, 127]``), per output channel or per tensor. Activations: 8-bit
    asymmetric (uint8, or int8 with ``activation_signed``), ranges from ``observer``
    (``minmax``, ``moving_average``, ``percentile``, ``mse``, ``entropy``) over the
    calibration batches. Biases: int32 at ``S_x S_w`` (``bias_method`` of
    :func:`npquant.qnn.gemm.quantize_bias`; default TFLite's for the TFLite modes,
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
        The requantization rounding, one of :data:`npquant.requant.fixedpoint.REQUANT_MODES`.
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
    weight_bits, batch_size, bias_method = _check_ptq(mode, accumulation, observer, weight_bits, batch_size,
                                                      bias_method)
    layers = list(fold_batchnorm(model))
    given = _given_qparams(qparams, layers)
    act_spec = QuantSpec(bits=8, signed=bool(activation_signed))
    # quantization points: the input, and the (post-activation) output of each linear/conv
    points = {} if "input" in given else {"input": OBSERVERS[observer](act_spec)}
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.name not in given:
            points[i] = OBSERVERS[observer](act_spec)
    if points:
        calib = as_float_array(calib_x, "calib_x")
        for start in range(0, calib.shape[0], batch_size):
            x = calib[start:start + batch_size]
            if "input" in points:
                points["input"].update(x)
            for i, layer in enumerate(layers):
                x = layer(x)
                if i in points:
                    act = _next_activation(layers, i)
                    points[i].update(x if act is None else (nn.ReLU() if act == "relu" else nn.ReLU6())(x))
    w_spec = QuantSpec(bits=weight_bits, symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    x_qp = given["input"] if "input" in given else points["input"].qparams()
    input_qp = x_qp
    qlayers, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            act = _next_activation(layers, i)
            y_qp = given[layer.name] if layer.name in given else points[i].qparams()
            w_q, w_qp, b_q = _quantize_params(layer.weight, layer.bias, x_qp, given.get(f"{layer.name}.weight"),
                                              w_spec, bias_method)
            if isinstance(layer, nn.Linear):
                qlayers.append(ql.QLinear(w_q, w_qp, b_q, x_qp, y_qp, mode=mode, activation=act,
                                          accumulation=accumulation))
            else:
                qlayers.append(ql.QConv2d(w_q, w_qp, b_q, x_qp, y_qp, stride=layer.stride, padding=layer.padding,
                                          dilation=layer.dilation, groups=layer.groups, mode=mode, activation=act,
                                          accumulation=accumulation))
            x_qp = y_qp
            i += 2 if act else 1
            continue
        if isinstance(layer, nn.MaxPool2d):
            qlayers.append(ql.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, nn.AvgPool2d):
            pool_mode, include_pad = _avgpool_mode(layer, mode)
            qlayers.append(ql.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, mode=pool_mode,
                                        zero_point=int(x_qp.zero_point), count_include_pad=include_pad))
        elif isinstance(layer, nn.Flatten):
            qlayers.append(ql.Flatten())
        elif isinstance(layer, (nn.ReLU, nn.ReLU6)):
            qlayers.append(ql.QReLU(x_qp, "relu" if isinstance(layer, nn.ReLU) else "relu6"))
        else:
            raise ValueError(f"cannot quantize layer {i} of type {type(layer).__name__}")
        i += 1
    return IntegerModel(input_qp=input_qp, layers=qlayers, output_qp=x_qp, mode=mode)


#: ``mode`` of :func:`quantize_graph` -> the ``mode`` of its ``qadd`` nodes.
GRAPH_ADD_MODES = {"tflite": "tflite", "tflite_single": "tflite_single", "fp32": "torch", "onnx": "onnxruntime"}
_GRAPH_OPS = ("linear", "conv2d", "relu", "relu6", "maxpool2d", "avgpool2d", "flatten", "reshape", "add", "concat")


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
            raise ValueError(f"calib_inputs must hold {len(graph.inputs)} array(s), one per graph input "
                             f"{list(graph.inputs)}, got {len(calib_inputs)}")
        values = list(calib_inputs)
    elif len(graph.inputs) == 1:
        values = [calib_inputs]
    else:
        raise ValueError(f"the graph takes {len(graph.inputs)} inputs {list(graph.inputs)}: calib_inputs must be "
                         "a list or a dict of arrays")
    feeds = {k: as_float_array(v, f"calib_inputs[{k!r}]") for k, v in zip(graph.inputs, values)}
    sizes = {v.shape[0] if v.ndim else None for v in feeds.values()}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"calib_inputs must be arrays with one batch size along axis 0, got shapes "
                         f"{[v.shape for v in feeds.values()]}")
    return feeds


def quantize_graph(graph, calib_inputs, *, mode: str = "tflite", observer: str = "minmax",
                   per_channel: bool = True, weight_bits: int = 8, act_dtype: str = "uint8",
                   accumulation: str = "exact", bias_method: str | None = None, batch_size: int = 256,
                   name: str | None = None):
    """Post-training static quantization of a float :class:`~npquant.models.graph.Graph`.

    The graph counterpart of :func:`quantize_model`, with its conventions for weights,
    biases, activations, observers and pools; on a chain the two give the same codes.
    Batch norms are folded (:func:`npquant.models.graph.fold_batchnorm`); the float graph runs on
    ``calib_inputs`` (``keep_intermediates=True``, in batches of ``batch_size``) and an
    observer records every tensor that gets its own qparams: each graph input, and the
    output of each linear, conv, add and concat. The nodes become:

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
        :data:`npquant.requant.fixedpoint.REQUANT_MODES`; it also picks the add (above).
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
        ``"tflite"`` or ``"onnxruntime"`` (:func:`npquant.qnn.gemm.quantize_bias`); ``None``
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

    weight_bits, batch_size, bias_method = _check_ptq(mode, accumulation, observer, weight_bits, batch_size,
                                                      bias_method)
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
            raise ValueError(f"node {n.name!r} (batchnorm2d) cannot be quantized: it does not fold into a conv "
                             "(its input is not the output of a conv2d read by it alone)")
        if n.op not in _GRAPH_OPS:
            raise ValueError(f"node {n.name!r} ({n.op}) cannot be quantized; quantize_graph takes the ops "
                             f"{', '.join(_GRAPH_OPS)} (and batchnorm2d after a conv2d)")
        if mode == "fp32" and n.op == "add" and act_dtype == "int8":
            raise ValueError(f"node {n.name!r} (add): mode='fp32' quantizes adds as PyTorch's quint8 add, "
                             "which needs act_dtype='uint8'")
    for t in g.outputs:
        if t in g.inputs:
            raise ValueError(f"graph output {t!r} is a graph input; quantize_graph needs a node before each output")
    readers = {}
    for n in g.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    fused = {}  # linear/conv node name -> the relu/relu6 node fused into it
    for n in g.nodes:
        if n.op in ("linear", "conv2d"):
            t = n.outputs[0]
            r = readers.get(t, [])
            if len(r) == 1 and r[0].op in ("relu", "relu6") and t not in g.outputs:
                fused[n.name] = r[0]
    absorbed = {r.name for r in fused.values()}

    # calibration: each graph input and the (activated) output of each linear/conv/add/concat
    act_spec = QuantSpec(bits=8, signed=act_dtype == "int8")
    observed = list(g.inputs)
    for n in g.nodes:
        if n.op in ("linear", "conv2d", "add", "concat"):
            observed.append(fused[n.name].outputs[0] if n.name in fused else n.outputs[0])
    points = {t: OBSERVERS[observer](act_spec) for t in observed}
    feeds = _calib_feeds(g, calib_inputs)
    total = next(iter(feeds.values())).shape[0]
    for start in range(0, total, batch_size):
        env = g.run({k: v[start:start + batch_size] for k, v in feeds.items()}, keep_intermediates=True)
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
        nodes.append(_graph.Node(fresh(f"quantize_{t}", node_names), "quantize", [t], [codes[t]],
                                 {"output": qps[codes[t]], "method": "divide"}))
    w_spec = QuantSpec(bits=weight_bits, symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    for n in g.nodes:
        if n.name in absorbed:
            continue
        ins = [codes[t] for t in n.inputs]
        in_qps = [qps[t] for t in ins]
        out_t = fused[n.name].outputs[0] if n.name in fused else n.outputs[0]
        out = codes[out_t]
        if n.op in ("linear", "conv2d"):
            layer = g.layer(n.name)
            y_qp = points[out_t].qparams()
            w_q, w_qp, b_q = _quantize_params(layer.weight, layer.bias, in_qps[0], None, w_spec, bias_method)
            params = {"weight": w_q, "weight_scale": np.asarray(w_qp.scale, np.float32),
                      "weight_zero_point": np.asarray(w_qp.zero_point)}
            if b_q is not None:
                params["bias_q"] = b_q
            attrs = {"output": y_qp, "mode": mode, "activation": fused[n.name].op if n.name in fused else None,
                     "accumulation": accumulation, "weight_spec": w_spec}
            if n.op == "conv2d":
                attrs.update(stride=list(layer.stride), padding=list(layer.padding),
                             dilation=list(layer.dilation), groups=layer.groups)
            node = _graph.Node(n.name, "q" + n.op, ins, [out], attrs, params)
        elif n.op == "add":
            y_qp = points[out_t].qparams()
            node = _graph.Node(n.name, "qadd", ins, [out], {"output": y_qp, "mode": GRAPH_ADD_MODES[mode]})
        elif n.op == "concat":
            y_qp = points[out_t].qparams()
            op, cat_mode = ("qlinear_concat", "onnxruntime") if mode == "onnx" else ("qconcat", "torch")
            node = _graph.Node(n.name, op, ins, [out], {"output": y_qp, "axis": n.attrs.get("axis", 1),
                                                        "mode": cat_mode})
        else:
            y_qp = in_qps[0]
            if n.op in ("relu", "relu6"):
                node = _graph.Node(n.name, "qrelu", ins, [out], {"activation": n.op})
            elif n.op == "maxpool2d":
                layer = g.layer(n.name)
                node = _graph.Node(n.name, "qmaxpool2d", ins, [out], {
                    "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
                    "padding": list(layer.padding)})
            elif n.op == "avgpool2d":
                layer = g.layer(n.name)
                pool_mode, include_pad = _avgpool_mode(layer, mode)
                node = _graph.Node(n.name, "qavgpool2d", ins, [out], {
                    "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
                    "padding": list(layer.padding), "mode": pool_mode, "count_include_pad": include_pad})
            elif n.op == "flatten":
                node = _graph.Node(n.name, "qflatten", ins, [out])
            else:  # reshape
                node = _graph.Node(n.name, "qreshape", ins, [out], {"shape": n.attrs["shape"]})
        qps[out] = y_qp
        nodes.append(node)
    for t in g.outputs:
        nodes.append(_graph.Node(fresh(f"dequantize_{t}", node_names), "dequantize", [codes[t]], [t]))
    return _graph.Graph(nodes, g.inputs, g.outputs, name=name)


class _DynamicLayer:
    """A linear/conv layer with int8 weights whose input is quantized per call (uint8,
    min-max of the batch); the int32 accumulator is scaled back to float32 and the float
    bias added."""

    def __init__(self, layer, w_spec: QuantSpec):
        self.layer = layer
        self.w_qp = fit_qparams(layer.weight, w_spec)
        self.w_q = quantize(layer.weight, self.w_qp)

    def size_bytes(self) -> int:
        """int8 weight codes, float32 scales (symmetric: no zero points), float32 bias."""
        bias = self.layer.bias
        return self.w_q.size + 4 * self.w_qp.scale.size + (0 if bias is None else 4 * bias.size)

    def __call__(self, x):
        x = as_float_array(x, "x")
        x_qp = fit_qparams(x, QuantSpec(signed=False))
        x_q = quantize(x, x_qp)
        lay = self.layer
        if isinstance(lay, nn.Linear):
            acc = linear_accumulate(x_q, x_qp, self.w_q, self.w_qp)
            shape = (1,) * (acc.ndim - 1) + (-1,)
        else:
            acc = conv2d_accumulate(x_q, x_qp, self.w_q, self.w_qp, stride=lay.stride, padding=lay.padding,
                                    dilation=lay.dilation, groups=lay.groups)
            shape = (1, -1, 1, 1)
        sw = np.broadcast_to(self.w_qp.scale, (self.w_q.shape[0],)).astype(np.float32)
        y = acc.astype(np.float32) * (np.float32(x_qp.scale) * sw).reshape(shape)
        return y if lay.bias is None else y + lay.bias.reshape(shape)


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
        The model with batch norms folded and its linear and conv layers replaced.
    """
    spec = QuantSpec(symmetric=True, narrow_range=True, axis=0 if per_channel else None)
    return nn.Sequential([_DynamicLayer(layer, spec) if isinstance(layer, (nn.Linear, nn.Conv2d)) else layer
                          for layer in fold_batchnorm(model)])


def dynamic_size_bytes(model: nn.Sequential) -> int:
    """Storage of a :func:`dynamic_quantize` model: int8 weight codes, float32 scales and
    float32 biases of its quantized layers.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        A model returned by :func:`dynamic_quantize`.

    Returns
    -------
    int
        Bytes.
    """
    return sum(layer.size_bytes() for layer in model if isinstance(layer, _DynamicLayer))


def weight_only_quantize(model: nn.Sequential, bits: int = 8, *, group_size: int | None = None,
                         symmetric: bool = True) -> tuple[nn.Sequential, int]:
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
        points of the code width, float32 biases).
    """
    bits = check_int(bits, "bits", lo=2, hi=8)
    out, size = [], 0
    for layer in fold_batchnorm(model):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            spec = QuantSpec(bits=bits, symmetric=symmetric, axis=0 if group_size is None else 1,
                             block_size=group_size)
            qp = fit_qparams(layer.weight, spec)
            w = fake_quantize(layer.weight, qp)
            size += -(-layer.weight.size * bits // 8) + 4 * qp.scale.size + (0 if symmetric else qp.zero_point.size)
            if layer.bias is not None:
                size += 4 * layer.bias.size
            if isinstance(layer, nn.Linear):
                out.append(nn.Linear(w, layer.bias, name=layer.name))
            else:
                out.append(nn.Conv2d(w, layer.bias, stride=layer.stride, padding=layer.padding,
                                     dilation=layer.dilation, groups=layer.groups, name=layer.name))
        else:
            out.append(layer)
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
        ``4 *`` the number of elements of every ``weight``, ``bias``, ``running_mean`` and
        ``running_var`` array.
    """
    total = 0
    for layer in model:
        for name in ("weight", "bias", "running_mean", "running_var"):
            a = getattr(layer, name, None)
            if isinstance(a, np.ndarray):
                total += 4 * a.size
    return total


def from_pytorch_ptq(path_or_arrays, *, accumulation: str = "exact") -> IntegerModel:
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
    from .._fileio import FileFormatError, check_path, parse_json, read_npz

    check_accumulation(accumulation)

    if isinstance(path_or_arrays, dict):
        data, where = dict(path_or_arrays), "<arrays>"
    else:
        where = check_path(path_or_arrays, "path_or_arrays")
        data = read_npz(where)
    if "__arch__" not in data:
        raise FileFormatError(where, "no '__arch__' entry: not a PyTorch PTQ reference file")
    arch = parse_json(str(data["__arch__"]), "'__arch__'", where)
    try:

        def act_qp(prefix):
            # PyTorch holds activation scales as float64 of float32 values; quint8 codes
            return QParams(np.float32(data[f"{prefix}.scale"]), int(data[f"{prefix}.zero_point"]),
                           QuantSpec(signed=False))

        x_qp = input_qp = act_qp("input")
        layers = []
        for spec in arch["layers"]:
            t, name = spec["type"], spec.get("name")
            if t in ("linear", "conv2d"):
                w_q = data[f"{name}.weight_int"]
                w_qp = QParams(data[f"{name}.weight_scale"].astype(np.float32), data[f"{name}.weight_zero_point"],
                               QuantSpec(axis=0))
                y_qp = act_qp(name)
                bias = data.get(f"{name}.bias")
                kw = dict(mode="fp32", activation=spec.get("activation"), float_bias=bias,
                          accumulation=accumulation)
                if t == "linear":
                    layers.append(ql.QLinear(w_q, w_qp, None, x_qp, y_qp, **kw))
                else:
                    layers.append(ql.QConv2d(w_q, w_qp, None, x_qp, y_qp, stride=spec["stride"],
                                             padding=spec["padding"], dilation=spec["dilation"],
                                             groups=spec["groups"], **kw))
                x_qp = y_qp
            elif t == "maxpool2d":
                nn._plain_pool(spec, name, ("dilation", "ceil_mode"))
                layers.append(ql.MaxPool2d(spec["kernel_size"], spec["stride"], spec["padding"]))
            elif t == "flatten":
                layers.append(ql.Flatten())
            else:
                raise ValueError(f"layer type {t!r} of {name!r} is not supported in a PyTorch PTQ file")
    except KeyError as e:
        raise FileFormatError(where, f"PyTorch PTQ file is missing {e.args[0]!r}") from None
    except (AttributeError, TypeError, IndexError, ValueError) as e:  # a malformed '__arch__' or entry
        raise FileFormatError(where, f"not a valid PyTorch PTQ file ({type(e).__name__}: {e})") from None
    return IntegerModel(input_qp=input_qp, layers=layers, output_qp=x_qp, mode="fp32", input_method="torch")
