"""QAT then convert: build a quantization-aware model from a float model, and turn the
trained QAT model into npquant's integer-only model.

* :func:`prepare_qat` -- a float :class:`npquant.models.nn.Sequential` (linear, conv2d,
  batchnorm2d, relu, relu6, maxpool2d, avgpool2d, flatten) becomes a QAT
  :class:`~npquant.models.nn.Sequential`: an input fake quant, then each linear/conv (with the
  batch norm after it as :class:`~npquant.training.qat.QATConvBn2d`, and a ReLU/ReLU6
  after that fused as the layer's activation, as PyTorch's ``fuse_modules`` does) with a
  fake-quantized weight and a fake-quantized output. Pools and flatten pass through
  (copies). Every array is copied: training the QAT model leaves the float model as it was.
  Each layer converts as its layer type says (:meth:`npquant.models.registry.LayerType.prepare_qat`,
  ``qat_passes``); a layer of a type with no QAT form is an error naming it.
* :func:`convert_qat` -- the integer model (:class:`npquant.models.convert.IntegerModel`) with the
  QAT model's qparams: input codes from the input fake quant, weight codes on exactly the
  weight fake quant's grid (so ``dequantize(w_q, w_qp)`` equals the fake-quantized float
  weight bit for bit; batch norm folded as :meth:`QATConvBn2d.folded_conv` does), int32
  biases at ``S_x S_w``, output codes of each layer's output fake quant (clamped to its
  ``act_bits`` grid and its fused activation), requantized in any mode of
  :data:`npquant.requant.modes.REQUANT_MODES`. Between the integer input codes and the
  integer logit codes there is no float arithmetic (the ``fp32`` mode's multiplier is
  float32 by definition of that mode, as fbgemm's).
* :func:`freeze_observers`, :func:`freeze_bn`: the switches of a QAT schedule (ranges
  frozen, batch norm on its running statistics), usable as hooks of
  :func:`npquant.training.fit`.

Range methods (``ranges``):

``minmax``  activations: :func:`~npquant.training.fake_quant.activation_fake_quant`
            (moving-average min-max, ``averaging_constant`` 0.01, PyTorch's default QAT
            qconfig); weights: min-max of the current weights at each step
            (:func:`~npquant.training.fake_quant.weight_fake_quant`; PyTorch averages the
            weight range with a momentum of 0.01, Jacob et al. take the current one).
``lsq``     :class:`~npquant.training.fake_quant.LSQFakeQuantize` for weights (per channel
            unless ``per_channel=False``) and activations, initialized on the first
            training batch (``lsq_init``: ``"minmax"`` by default, a lossless start from
            trained weights; ``"lsq"`` the paper's ``2 mean|x| / sqrt(Q_P)``).
``pact``    :class:`~npquant.training.fake_quant.PACTFakeQuantize` (learned clipping level,
            initial ``pact_alpha``) on the outputs of layers with a fused ReLU/ReLU6 -- PACT
            replaces that activation; every other point (the input, the logits) and the
            weights use ``minmax``'s fake quants.

Activations are unsigned (uint8 codes up to 8 bits, ``act_bits`` wide); the input is
quantized to ``input_bits`` (default 8). Weights are signed symmetric ``weight_bits``
codes, full range (``[-128, 127]`` for 8 bits, PyTorch's ``qint8``; ``narrow_range=True``
for TFLite's ``[-127, 127]``).

Average pooling: the QAT model pools in float, the integer model pools codes and rounds
to the input grid (as TFLite and PyTorch's quantized ``avg_pool2d`` do); the two differ by
at most half a step there. The reference models have no average pooling.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_bool, check_choice, check_int, check_real
from ..affine import dequantize
from ..models import nn
from ..models import registry as _reg
from ..models.convert import IntegerModel
from ..qnn import layers as ql
from ..qnn.accumulation import check_accumulation
from ..qparams import QuantSpec
from ..requant.modes import REQUANT_MODES
from .fake_quant import (
    PACT_INITS,
    FakeQuantize,
    LSQFakeQuantize,
    PACTFakeQuantize,
    _FakeQuantBase,
    activation_fake_quant,
    weight_fake_quant,
)
from .qat import QATConv2d, QATConvBn2d, QATLinear

__all__ = ["RANGES", "INPUT_FAKE_QUANT", "prepare_qat", "convert_qat", "freeze_observers", "freeze_bn"]

RANGES = ("minmax", "lsq", "pact")
"""Range methods of :func:`prepare_qat`."""

INPUT_FAKE_QUANT = "input_fake_quant"
"""Name of the input fake quant, the first layer of a :func:`prepare_qat` model."""


def prepare_qat(
    model: nn.Sequential,
    *,
    weight_bits: int = 8,
    act_bits: int = 8,
    ranges: str = "minmax",
    per_channel: bool = True,
    input_bits: int = 8,
    narrow_range: bool = False,
    averaging_constant: float = 0.01,
    lsq_init: str = "minmax",
    pact_alpha: float = 10.0,
    pact_init: str = "fixed",
    freeze_bn: bool = False,
    output_bits: int | None = None,
) -> nn.Sequential:
    """A quantization-aware copy of the float ``model`` (see the module docstring).

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        Of Linear, Conv2d, BatchNorm2d (right after a Conv2d),
        ReLU, ReLU6, MaxPool2d, AvgPool2d, Flatten (float32, e.g. from
        :func:`npquant.models.io.load_model`); it is not modified and shares no array with the result.
    weight_bits : int, 2..8
        Signed symmetric weight codes (per output channel with
        ``per_channel``, else per tensor).
    act_bits : int, 2..8
        Unsigned activation codes of every layer output.
    ranges : ``"minmax"``, ``"lsq"`` or ``"pact"``
    per_channel : bool
        Weight scales per output channel, else per tensor.
    input_bits : int, 2..8
        Unsigned codes of the input.
    narrow_range : bool
        Weights in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (TFLite) instead of the full range.
    averaging_constant : float
        Of the moving-average observers (PyTorch's 0.01).
    lsq_init : ``"minmax"`` or ``"lsq"``
        ``"lsq"``: LSQ's initialization on the first training batch.
    pact_alpha : float
        PACT's initial clipping level (``pact_init="fixed"``).
    pact_init : ``"fixed"`` or ``"max"``
        Start at ``pact_alpha``, or at the largest output of
        the first training batch (:class:`~npquant.training.fake_quant.PACTFakeQuantize`).
    freeze_bn : bool
        Start every QATConvBn2d with frozen batch norm (running statistics).
    output_bits : int, 2..8, optional
        Codes of the last linear/conv layer's output (the logits of a
        classifier); default ``act_bits``. Low-bit studies keep the model's ends at 8 bits
        (Esser et al. 2020 keep the first and last layers at 8 bits): with 4-bit logits,
        ten classes share 16 levels and the argmax often ties.

    Returns
    -------
    npquant.models.nn.Sequential
        In eval mode: ``[FakeQuantize "input_fake_quant", QATLinear /
        QATConv2d / QATConvBn2d (named as the float linear/conv), pools, flatten, ...]``. It
        follows the training contract (``train``, ``eval``, ``backward``, ``named_parameters``,
        ``named_grads``, ``state_dict`` with the float model's keys plus the fake quants'
        learned ranges). Its activation ranges are set by the first training-mode forward
        pass (observers, LSQ initialization); :func:`convert_qat` needs them set.

    Raises
    ------
    TypeError
        ``model`` is not an npquant.models.nn.Sequential.
    ValueError
        A layer it cannot convert (naming the layer: no registered layer type, or one
        with no QAT form), bits out of range, an unknown ``ranges``.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an npquant.models.nn.Sequential, got {type(model).__name__}")
    weight_bits = check_int(weight_bits, "weight_bits", lo=2, hi=8)
    act_bits = check_int(act_bits, "act_bits", lo=2, hi=8)
    input_bits = check_int(input_bits, "input_bits", lo=2, hi=8)
    output_bits = act_bits if output_bits is None else check_int(output_bits, "output_bits", lo=2, hi=8)
    ranges = check_choice(ranges, "ranges", RANGES)
    per_channel = check_bool(per_channel, "per_channel")
    narrow_range = check_bool(narrow_range, "narrow_range")
    averaging_constant = check_real(averaging_constant, "averaging_constant", lo=0.0, hi=1.0, lo_open=True)
    lsq_init = check_choice(lsq_init, "lsq_init", ("minmax", "lsq"))
    pact_alpha = check_real(pact_alpha, "pact_alpha", lo=0.0, lo_open=True)
    pact_init = check_choice(pact_init, "pact_init", PACT_INITS)
    freeze_bn = check_bool(freeze_bn, "freeze_bn")

    w_spec = QuantSpec(
        bits=weight_bits, signed=True, symmetric=True, narrow_range=narrow_range, axis=0 if per_channel else None
    )
    a_spec = QuantSpec(bits=act_bits, signed=False)

    def wfq(name, n_out):
        fq_name = f"{name}.weight_fake_quant"
        if ranges == "lsq":
            return LSQFakeQuantize(w_spec, param_shape=(n_out,) if per_channel else None, init=lsq_init, name=fq_name)
        return weight_fake_quant(w_spec, name=fq_name)

    def afq(name, act, spec=a_spec):
        if ranges == "lsq":
            return LSQFakeQuantize(spec, init=lsq_init, name=name)
        if ranges == "pact" and act is not None:
            return PACTFakeQuantize(spec, alpha=pact_alpha, init=pact_init, name=name)
        return activation_fake_quant(spec, averaging_constant=averaging_constant, name=name)

    layers = list(model)
    kinds = [_reg.kind_of(layer) for layer in layers]
    weighted = [i for i, kind in enumerate(kinds) if kind is not None and kind.weighted]
    for i, layer in enumerate(layers):
        if getattr(layer, "name", None) == INPUT_FAKE_QUANT:
            raise ValueError(f"layers[{i}] is named {INPUT_FAKE_QUANT!r}, the name of the input fake quant")
    ctx = _reg.QATContext(
        wfq, afq, a_spec, QuantSpec(bits=output_bits, signed=False), weighted[-1] if weighted else None, freeze_bn
    )
    out = [afq(INPUT_FAKE_QUANT, None, QuantSpec(bits=input_bits, signed=False))]
    i = 0
    while i < len(layers):
        if kinds[i] is None:
            raise ValueError(
                f"prepare_qat cannot convert layers[{i}] ({getattr(layers[i], 'name', '?')!r}): "
                f"type {type(layers[i]).__name__}; supported: {_reg.qat_type_names()}"
            )
        q, count = kinds[i].prepare_qat(layers, i, ctx)
        out.append(q)
        i += count
    return nn.Sequential(out, name=model.name).eval()


def _passes(layer) -> bool:
    """A float layer of a QAT model that :func:`convert_qat` hands to ``quantize_model`` as it
    is: one whose layer type has ``qat_passes`` (pools, flatten, a clamp not fused); its
    type's ``to_integer`` converts it."""
    kind = _reg.kind_of(layer)
    return kind is not None and kind.qat_passes and isinstance(layer, kind.float_class)


def _fake_quants(model):
    for layer in model:
        if isinstance(layer, _FakeQuantBase):
            yield layer
        elif isinstance(layer, (QATLinear, QATConv2d, QATConvBn2d)):
            yield layer.weight_fake_quant
            if layer.act_fake_quant is not None:
                yield layer.act_fake_quant


def freeze_observers(model: nn.Sequential, frozen: bool = True) -> nn.Sequential:
    """Freeze (``frozen=True``) or release the activation ranges of a QAT model: the
    observers of its moving-average fake quants stop (or resume) updating in training
    mode. Weight fake quants that follow the current weights (min-max reset at each step)
    keep following them: their grid is a function of the weight, not a running statistic.
    Learned ranges (LSQ scales, PACT clipping levels) are parameters: to freeze them,
    build the optimizer without them. Returns ``model``.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        A :func:`prepare_qat` model.
    frozen : bool, default True
        Freeze, or release.

    Returns
    -------
    npquant.models.nn.Sequential
        ``model``, changed in place.
    """
    frozen = check_bool(frozen, "frozen")
    for fq in _fake_quants(model):
        if isinstance(fq, FakeQuantize) and fq.observer is not None and not fq.reset_observer:
            fq.enable_observer(not frozen)
    return model


def freeze_bn(model: nn.Sequential, frozen: bool = True) -> nn.Sequential:
    """Batch norm of every :class:`QATConvBn2d` on (and keeping) its running statistics
    (``frozen=True``), or back to batch statistics in training mode. Returns ``model``.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        A :func:`prepare_qat` model.
    frozen : bool, default True
        Freeze, or release.

    Returns
    -------
    npquant.models.nn.Sequential
        ``model``, changed in place.
    """
    frozen = check_bool(frozen, "frozen")
    for layer in model:
        if isinstance(layer, QATConvBn2d):
            layer.freeze_bn(frozen)
    return model


def _qparams_of(fq, what: str):
    if isinstance(fq, FakeQuantize):
        qp = fq.qparams
    else:
        try:
            qp = fq.qparams
        except RuntimeError:
            qp = None
    if qp is None:
        raise ValueError(
            f"{what} ({fq.name}) has no qparams yet: run the QAT model in training mode "
            "(fine-tune or calibrate it) before convert_qat"
        )
    if not fq.fake_quant_enabled:
        raise ValueError(f"{what} ({fq.name}) has fake quantization disabled; enable it before convert_qat")
    return qp


def _weight_grid(layer):
    """(float weight on the grid, its QParams, bias) of a QAT layer, as its eval forward uses them."""
    fq = layer.weight_fake_quant
    if isinstance(layer, QATConvBn2d):
        conv = layer.folded_conv()  # runs weight_fake_quant on W s: refreshes a reset observer's qparams
        w, bias = conv.weight, conv.bias
    else:
        w, bias = layer.fake_quantized_weight(), layer.bias
    qp = _qparams_of(fq, f"{layer.name}: the weight fake quant")
    return w, qp, None if bias is None else np.array(bias, np.float32)


def convert_qat(
    qat_model: nn.Sequential, *, mode: str = "tflite", accumulation: str = "exact", bias_method: str | None = None
) -> IntegerModel:
    """The integer-only model of a QAT model made by :func:`prepare_qat` (after training).

    Parameters
    ----------
    qat_model : npquant.models.nn.Sequential
        Starting with an input fake quant, of QATLinear,
        QATConv2d, QATConvBn2d (each with an output fake quant), ReLU, ReLU6, MaxPool2d,
        AvgPool2d, Flatten; its ranges set (a training-mode forward pass has run).
    mode : str
        Requantization mode, one of :data:`npquant.requant.modes.REQUANT_MODES`.
    accumulation : str
        Of every linear/conv layer (:mod:`npquant.qnn.accumulation`).
    bias_method : str or None
        Rounding of the int32 biases (:func:`npquant.qnn.bias.quantize_bias`);
        default TFLite's for the ``tflite*`` modes, onnxruntime's otherwise.

    Returns
    -------
    npquant.models.convert.IntegerModel
        ``quantize_input`` gives the input fake quant's codes
        (``method="mul"``, PyTorch's arithmetic, so they are exactly the QAT model's);
        ``layers`` are :mod:`npquant.qnn` layers (QLinear, QConv2d with int8 weight codes and
        int32 biases, MaxPool2d, AvgPool2d, Flatten, QReLU) mapping codes to codes; ``run``
        returns the logit codes of the last layer's output fake quant (``output_qp``).

    Notes
    -----
    The QAT model is evaluated as in eval mode (weight fake quants that follow the
    current weights recompute their grid from the current weights, as the eval forward
    does); nothing else in it changes.
    """
    from ..models.convert import quantize_model

    check_choice(mode, "mode", REQUANT_MODES)
    check_accumulation(accumulation)
    if not isinstance(qat_model, nn.Sequential):
        raise TypeError(
            f"qat_model must be an npquant.models.nn.Sequential (from prepare_qat), got {type(qat_model).__name__}"
        )
    layers = list(qat_model)
    if not layers or not isinstance(layers[0], _FakeQuantBase):
        raise ValueError("qat_model must start with the input fake quant (a model from prepare_qat)")
    qparams = {"input": _qparams_of(layers[0], "the input fake quant")}
    float_layers = []
    for i, layer in enumerate(layers[1:], start=1):
        if isinstance(layer, (QATLinear, QATConv2d, QATConvBn2d)):
            if layer.act_fake_quant is None:
                raise ValueError(
                    f"layers[{i}] ({layer.name!r}) has no output fake quant (act_fake_quant=None); "
                    "the integer model needs the qparams of every linear/conv output"
                )
            w, w_qp, bias = _weight_grid(layer)
            qparams[layer.name] = _qparams_of(layer.act_fake_quant, f"{layer.name}: the output fake quant")
            qparams[f"{layer.name}.weight"] = w_qp
            if isinstance(layer, QATLinear):
                float_layers.append(nn.Linear(w, bias, name=layer.name))
            else:
                c = layer.conv if isinstance(layer, QATConvBn2d) else layer.layer
                float_layers.append(
                    nn.Conv2d(
                        w,
                        bias,
                        stride=c.stride,
                        padding=c.padding,
                        dilation=c.dilation,
                        groups=c.groups,
                        name=layer.name,
                    )
                )
            if layer.activation == "relu":
                float_layers.append(nn.ReLU())
            elif layer.activation == "relu6":
                float_layers.append(nn.ReLU6())
        elif _passes(layer):
            float_layers.append(layer)
        else:
            raise ValueError(
                f"convert_qat cannot convert layers[{i}] ({getattr(layer, 'name', '?')!r}) of type "
                f"{type(layer).__name__}; a prepare_qat model holds the input fake quant, QATLinear, "
                f"QATConv2d, QATConvBn2d, relu, relu6, maxpool2d, avgpool2d, flatten"
            )
    im = quantize_model(
        nn.Sequential(float_layers),
        None,
        mode=mode,
        accumulation=accumulation,
        bias_method=bias_method,
        qparams=qparams,
    )
    im.input_method = "mul"
    # the contract: integer weights dequantize to the fake-quantized weights, bit for bit
    weighted = iter(fl for fl in float_layers if isinstance(fl, (nn.Linear, nn.Conv2d)))
    for ql_layer in im.layers:
        if isinstance(ql_layer, (ql.QLinear, ql.QConv2d)):
            fl = next(weighted)
            if not np.array_equal(dequantize(ql_layer.w_q, ql_layer.w_qp), fl.weight):
                raise RuntimeError(
                    f"{fl.name}: the integer weights do not dequantize to the fake-quantized "
                    "weights (a rounding mode that is not idempotent?)"
                )
    return im
