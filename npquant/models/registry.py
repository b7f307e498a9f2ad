"""The layer registry: each layer type of the architecture format declared once.

A model file's ``__arch__`` (see ``reference_models/README.md``) lists layers by ``type``
(``"linear"``, ``"conv2d"``, ...). Each type is one :class:`LayerType` subclass,
registered under that name with :func:`register`; it declares

- the float layer: :attr:`~LayerType.float_class` (a :mod:`npquant.models.nn` class),
  :attr:`~LayerType.params` (its state-dict entries) and :meth:`~LayerType.build` (the
  layer from an arch entry and its parameters), used by
  :func:`npquant.models.nn.build_model` and :func:`npquant.models.nn.expected_keys`;
- its integer form: :attr:`~LayerType.int_classes` (the :mod:`npquant.qnn` classes),
  :meth:`~LayerType.to_integer` (post-training quantization,
  :func:`npquant.models.convert.quantize_model`), :meth:`~LayerType.float_twin` (the
  integer layer in float, :meth:`npquant.models.convert.IntegerModel.float_twin`),
  :meth:`~LayerType.from_torch_ptq` (a layer of a PyTorch PTQ reference file); what
  calibration needs (:attr:`~LayerType.weighted`: quantized weights, an output with its
  own calibrated qparams) and folding (:meth:`~LayerType.fold`: absorb the next layer,
  :attr:`~LayerType.activation`: a clamp fused into the weighted layer before it);
- dynamic and weight-only quantization (:meth:`~LayerType.dynamic`,
  :meth:`~LayerType.weight_only`), for the types that support them;
- its storage: :meth:`~LayerType.float_bytes` (float32 bytes of the float layer) and
  :meth:`~LayerType.storage` (a :class:`Storage` of the integer layer: codes at their bit
  width, scales, zero points, bias), summed by :func:`model_size_bytes` for every size
  report (:mod:`npquant.models.convert`, :mod:`npquant.app.demo`);
  :func:`quantized_storage` is the one counting rule (also of
  :mod:`npquant.models.checkpoint`);
- training: :meth:`~LayerType.init_params` (PyTorch's default initialization of its
  parameters, :func:`npquant.training.trainer.torch_default_init`) and
  :meth:`~LayerType.prepare_qat` (its quantization-aware form,
  :func:`npquant.training.prepare_qat`);
- graphs: a node whose ``op`` is the type's name is built by :meth:`~LayerType.build`
  from the node's attributes (:attr:`~LayerType.graph_attrs`) and parameters
  (:class:`npquant.models.graph.Graph`; the built-in types keep the attribute checks of
  their graph ops); :meth:`~LayerType.graph_node` gives its node in an integer graph
  (:func:`npquant.models.convert.quantize_graph`).

A method a type does not override keeps the default of :class:`LayerType`: no parameters,
no integer form (quantizing a model with such a layer is an error naming the layer), not
dynamic-quantized (it stays float), no storage beyond its float parameters, no QAT form
(:func:`npquant.training.prepare_qat` refuses it naming the layer; with
:attr:`~LayerType.qat_passes` it stays float there), no default initialization if it has
parameters (an error naming the layer), no graph attributes and no integer graph node
(:func:`npquant.models.convert.quantize_graph` refuses it naming the node).
:func:`read_arch` is the one reader of the ``__arch__`` entry (:mod:`npquant.models.io`,
:func:`npquant.models.convert.from_pytorch_ptq`).

Adding a layer type is one class in one place::

    from npquant.models import nn, registry

    class Scale(nn.Layer):                      # the float layer: y = a * x
        _params = ("a",)

        def __init__(self, a, *, name="scale"):
            self.a = np.asarray(a, np.float32).reshape(())
            super().__init__(name)

        def forward(self, x):
            return self._input(x) * self.a

    @registry.register("scale")
    class ScaleType(registry.LayerType):
        float_class = Scale
        params = ("a",)

        def build(self, entry, params, name):
            return Scale(params["a"], name=name)

``nn.build_model`` then builds ``{"type": "scale", "name": "s"}`` with the state-dict key
``"s.a"``, and a graph node ``Node("s", "scale", ["h"], ["y"], params={"a": 2.5})``
runs it; without a :meth:`~LayerType.to_integer`, ``quantize_model`` refuses it with an
error naming the layer. ``tests/test_registry.py`` registers such a type with an integer
form, a QAT form and a default initialization too. :func:`unregister` removes a type (for tests).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .._checks import as_float_array, check_bool, check_pair
from .._fileio import FileFormatError, parse_json
from ..affine import fake_quantize, quantize
from ..qnn import AvgPool2d as QAvgPool2d
from ..qnn import Flatten as QFlatten
from ..qnn import MaxPool2d as QMaxPool2d
from ..qnn import QConv2d, QLinear, QReLU, conv2d_accumulate, linear_accumulate, quantize_bias
from ..qparams import QParams, QuantSpec, fit_qparams
from . import nn

__all__ = [
    "AvgPool2dType",
    "BatchNorm2dType",
    "Conv2dType",
    "FlattenType",
    "LayerType",
    "LinearType",
    "MaxPool2dType",
    "QATContext",
    "QuantContext",
    "ReLU6Type",
    "ReLUType",
    "Storage",
    "TorchPTQ",
    "arch_layers",
    "kind_of",
    "layer_type",
    "layer_types",
    "model_size_bytes",
    "qat_type_names",
    "quantize_params",
    "quantized_storage",
    "read_arch",
    "register",
    "unregister",
]

_TYPES: dict[str, LayerType] = {}


# ----------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Storage:
    """Bytes of one stored layer or tensor, by part: ``codes`` (weight codes), ``scales``,
    ``zero_points``, ``bias`` and ``floats`` (parameters kept in float32)."""

    codes: int = 0
    scales: int = 0
    zero_points: int = 0
    bias: int = 0
    floats: int = 0

    @property
    def total(self) -> int:
        """The sum of the parts, in bytes."""
        return self.codes + self.scales + self.zero_points + self.bias + self.floats


def quantized_storage(
    count: int, qp: QParams, *, packed: bool = True, code_bytes: int = 1, zero_point_bytes: int = 0, bias_bytes: int = 0
) -> Storage:
    """Storage of ``count`` weight codes with their qparams: the one counting rule.

    Parameters
    ----------
    count : int
        Number of codes.
    qp : QParams
        Their qparams; ``qp.spec.bits`` is the packed width, one float32 scale per scale.
    packed : bool, default True
        Keyword-only; codes packed at ``bits`` (``ceil(count * bits / 8)`` bytes, as
        :func:`npquant.compression.packing.pack_bits` stores them), else ``code_bytes`` each.
    code_bytes : int, default 1
        Keyword-only; bytes of one unpacked code (its dtype's itemsize).
    zero_point_bytes : int, default 0
        Keyword-only; bytes of one stored zero point (0: not stored, a symmetric spec).
    bias_bytes : int, default 0
        Keyword-only; bytes of the bias (int32 or float32, 4 per output channel).

    Returns
    -------
    Storage
        ``codes``, ``scales`` (4 per scale), ``zero_points`` and ``bias``.
    """
    codes = -(-int(count) * qp.spec.bits // 8) if check_bool(packed, "packed") else int(count) * code_bytes
    return Storage(
        codes=codes,
        scales=4 * int(np.size(qp.scale)),
        zero_points=zero_point_bytes * int(np.size(qp.zero_point)),
        bias=int(bias_bytes),
    )


def _float_elements(layer: object) -> int:
    """Elements of the float parameters and buffers of ``layer`` (its float state dict;
    for an object without one, its ``weight``, ``bias``, ``running_mean``, ``running_var``)."""
    state = (
        layer.state_dict()
        if callable(getattr(layer, "state_dict", None))
        else {k: getattr(layer, k, None) for k in ("weight", "bias", "running_mean", "running_var")}
    )
    return sum(int(np.size(v)) for v in state.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f")


# ----------------------------------------------------------------------------- contexts


@dataclass
class QuantContext:
    """What :meth:`LayerType.to_integer` gets from :func:`npquant.models.convert.quantize_model`.

    ``x_qp``: the qparams of the input codes; ``mode``, ``accumulation``, ``bias_method``:
    as that function's arguments; for a weighted type, ``y_qp`` (its calibrated or given
    output qparams), ``activation`` (the fused clamp, or None), ``w_spec`` (the weight
    spec) and ``w_qp`` (given weight qparams, or None).
    """

    x_qp: QParams
    mode: str
    accumulation: str = "exact"
    bias_method: str = "tflite"
    y_qp: QParams | None = None
    activation: str | None = None
    w_spec: QuantSpec | None = None
    w_qp: QParams | None = None


@dataclass
class TorchPTQ:
    """What :meth:`LayerType.from_torch_ptq` reads: ``data`` (the file's arrays by name),
    ``act_qp`` (``prefix`` -> the quint8 QParams stored as ``prefix.scale`` /
    ``prefix.zero_point``) and ``accumulation``."""

    data: dict
    act_qp: Callable[[str], QParams]
    accumulation: str = "exact"


@dataclass
class QATContext:
    """What :meth:`LayerType.prepare_qat` gets from :func:`npquant.training.prepare_qat`.

    ``weight_fake_quant(name, n_out)``: a new weight fake quant of a layer ``name`` with
    ``n_out`` output channels; ``act_fake_quant(name, activation, spec)``: a new output fake
    quant of codes ``spec`` (``activation``: the fused clamp name, or None); ``act_spec``:
    the spec of layer outputs; ``output_spec``: that of the last weighted layer (index
    ``last`` of the float layers, None without one); ``freeze_bn``: start batch norms
    frozen.
    """

    weight_fake_quant: Callable[[str, int], object]
    act_fake_quant: Callable[[str, str | None, QuantSpec], object]
    act_spec: QuantSpec
    output_spec: QuantSpec
    last: int | None = None
    freeze_bn: bool = False


# ----------------------------------------------------------------------------- the base


class LayerType:
    """One layer type of the architecture format; subclass it and :func:`register` it.

    Class attributes: ``name`` (set by :func:`register`), ``float_class`` (the float
    layer's class), ``int_classes`` (classes of its integer form, for the look-up of an
    integer layer), ``params`` (state-dict entries, a trailing ``"?"`` marks an optional
    one), ``weighted`` (a weight to quantize and an output with its own calibrated
    qparams), ``activation`` (the clamp name when it fuses into the weighted layer
    before it, else None), ``qat_passes`` (the layer stays float in a QAT model, between
    the fake quants of the layers around it, and converts by :meth:`to_integer`) and
    ``graph_attrs`` (the attributes of a graph node of this type, name -> default, passed
    to :meth:`build` as the arch entry's fields).
    """

    name: str = ""
    float_class: type | None = None
    int_classes: tuple = ()
    params: tuple = ()
    weighted: bool = False
    activation: str | None = None
    qat_passes: bool = False
    graph_attrs: dict = {}

    def build(self, entry: dict, params: dict, name: str) -> object:
        """The float layer of an arch entry.

        Parameters
        ----------
        entry : dict
            The arch entry (``"type"``, ``"name"`` and the type's fields).
        params : dict of str to array
            Its state-dict entries, keyed without the ``"<name>."`` prefix.
        name : str
            The layer's name.

        Returns
        -------
        object
            The float layer (a :class:`npquant.models.nn.Layer`).
        """
        raise NotImplementedError(f"layer type {self.name!r} declares no build")

    def fold(self, layer: object, nxt: object) -> object | None:
        """``layer`` with the layer after it (``nxt``) folded in, or None if it does not fold.

        Parameters
        ----------
        layer : object
            A float layer of this type.
        nxt : object or None
            The layer after it.

        Returns
        -------
        object or None
            The folded float layer, or None.
        """
        return None

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        """The integer form of ``layer`` for post-training quantization.

        Parameters
        ----------
        layer : object
            A float layer of this type.
        ctx : QuantContext
            The input qparams and the conversion's settings.

        Returns
        -------
        qlayer : object
            The integer layer (codes in, codes out).
        y_qp : QParams
            The qparams of its output codes.
        """
        raise ValueError(
            f"layer {getattr(layer, 'name', '?')!r} (type {self.name!r}) has no integer form: "
            f"its layer type declares no to_integer, so the model cannot be quantized"
        )

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        """The integer layer ``qlayer`` computed in float on ``h`` (fake quantization).

        Parameters
        ----------
        qlayer : object
            An integer layer of this type.
        h : numpy.ndarray
            Its float32 input.

        Returns
        -------
        numpy.ndarray
            Its float32 output.
        """
        raise TypeError(f"no float twin for {type(qlayer).__name__}")

    def from_torch_ptq(self, entry: dict, src: TorchPTQ, x_qp: QParams) -> tuple[object, QParams]:
        """The integer layer of an entry of a PyTorch PTQ reference file.

        Parameters
        ----------
        entry : dict
            The fused-architecture entry.
        src : TorchPTQ
            The file's arrays.
        x_qp : QParams
            The qparams of the input codes.

        Returns
        -------
        qlayer : object
            The integer layer.
        y_qp : QParams
            The qparams of its output codes.
        """
        raise ValueError(f"layer type {self.name!r} of {entry.get('name')!r} is not supported in a PyTorch PTQ file")

    def dynamic(self, layer: object, w_spec: QuantSpec) -> object:
        """The layer of a dynamic-quantized model (:func:`npquant.models.convert.dynamic_quantize`);
        by default ``layer`` itself (it stays float).

        Parameters
        ----------
        layer : object
            A float layer of this type.
        w_spec : QuantSpec
            The weight spec.

        Returns
        -------
        object
            The layer to run.
        """
        return layer

    def weight_only(self, layer: object, spec: QuantSpec) -> tuple[object, Storage]:
        """The layer with fake-quantized weights and its storage
        (:func:`npquant.models.convert.weight_only_quantize`); by default unchanged, with
        its float32 parameters as storage.

        Parameters
        ----------
        layer : object
            A float layer of this type.
        spec : QuantSpec
            The weight spec.

        Returns
        -------
        layer : object
            The layer to run.
        storage : Storage
            Its storage.
        """
        return layer, Storage(floats=self.float_bytes(layer))

    def float_bytes(self, layer: object) -> int:
        """float32 bytes of the float layer: 4 per element of its float parameters and buffers.

        Parameters
        ----------
        layer : object
            A float layer of this type.

        Returns
        -------
        int
            Bytes.
        """
        return 4 * _float_elements(layer)

    def storage(self, qlayer: object, *, packed: bool = False) -> Storage:
        """Storage of an integer layer of this type; by default nothing.

        Parameters
        ----------
        qlayer : object
            An integer layer of this type.
        packed : bool, default False
            Keyword-only; weight codes packed at their bit width.

        Returns
        -------
        Storage
            Its bytes, by part.
        """
        return Storage()

    def init_params(self, entry: dict, rng: np.random.Generator) -> dict:
        """Fresh parameters of an arch entry: PyTorch's default initialization, drawn from
        ``rng`` (:func:`npquant.training.trainer.torch_default_init`); by default none, and
        an error naming the layer for a type with parameters.

        Parameters
        ----------
        entry : dict
            The arch entry, with the size fields of its type.
        rng : numpy.random.Generator
            The random numbers, drawn in the order of the model's layers.

        Returns
        -------
        dict of str to numpy.ndarray
            State-dict entries keyed without the ``"<name>."`` prefix.
        """
        if self.params:
            raise ValueError(
                f"layer {entry.get('name')!r} (type {self.name!r}) has parameters, but its layer type "
                "declares no init_params: no default initialization"
            )
        return {}

    def prepare_qat(self, layers: list, i: int, ctx: QATContext) -> tuple[object, int]:
        """The quantization-aware form of ``layers[i]`` (:func:`npquant.training.prepare_qat`),
        with the layers after it that it absorbs; by default an error naming the layer.

        Parameters
        ----------
        layers : list
            The float model's layers.
        i : int
            The index of a layer of this type.
        ctx : QATContext
            The fake quant factories and settings.

        Returns
        -------
        qat_layer : object
            A new layer (sharing no array with ``layers``): with :attr:`qat_passes`, an
            eval-mode copy of ``layers[i]``.
        count : int
            How many float layers it replaces, >= 1.
        """
        if self.qat_passes:
            return copy.deepcopy(layers[i]).eval(), 1
        raise ValueError(
            f"prepare_qat cannot convert layers[{i}] ({getattr(layers[i], 'name', '?')!r}): its layer "
            f"type {self.name!r} declares no QAT form (prepare_qat); supported: {qat_type_names()}"
        )

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        """The integer graph node of a float layer of this type
        (:func:`npquant.models.convert.quantize_graph`); by default none (an error).

        Parameters
        ----------
        layer : object
            The float layer of the graph node.
        ctx : QuantContext
            As for :meth:`to_integer`.

        Returns
        -------
        op : str
            The integer op (:data:`npquant.models.graph.OPS`).
        attrs : dict
            Its attributes.
        params : dict of str to numpy.ndarray
            Its parameters.
        y_qp : QParams
            The qparams of its output codes.
        """
        raise ValueError(
            f"layer {getattr(layer, 'name', '?')!r} (type {self.name!r}) has no integer graph node: "
            "its layer type declares no graph_node"
        )

    @property
    def graph_quantizable(self) -> bool:
        """Whether :meth:`graph_node` is declared (overridden).

        Returns
        -------
        bool
            True if it is.
        """
        return type(self).graph_node is not LayerType.graph_node

    def __repr__(self) -> str:
        return f"<layer type {self.name!r}>"


# ----------------------------------------------------------------------------- registration


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`LayerType` subclass under the arch type ``name``.

    Parameters
    ----------
    name : str
        The ``"type"`` of its arch entries; not registered yet.

    Returns
    -------
    callable
        The decorator; it sets the class's ``name`` and returns the class.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if name in _TYPES:
        raise ValueError(f"layer type {name!r} is already registered ({type(_TYPES[name]).__name__})")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, LayerType)):
            raise TypeError(f"@register({name!r}) takes a LayerType subclass, got {cls!r}")
        if name in _TYPES:
            raise ValueError(f"layer type {name!r} is already registered ({type(_TYPES[name]).__name__})")
        cls.name = name
        _TYPES[name] = cls()
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove the layer type ``name`` (a test's clean-up).

    Parameters
    ----------
    name : str
        A registered type.
    """
    if name not in _TYPES:
        raise ValueError(f"layer type {name!r} is not registered")
    del _TYPES[name]


def layer_types() -> dict[str, LayerType]:
    """The registered layer types, ``{arch type name: LayerType instance}``, in registration order.

    Returns
    -------
    dict of str to LayerType
        A copy.
    """
    return dict(_TYPES)


def layer_type(name: str) -> LayerType:
    """The layer type registered under ``name``.

    Parameters
    ----------
    name : str
        The arch ``"type"``.

    Returns
    -------
    LayerType
        Its instance; ``ValueError`` naming the type if there is none.
    """
    try:
        return _TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown layer type {name!r} in arch (registered: {', '.join(_TYPES)})") from None


def kind_of(layer: object) -> LayerType | None:
    """The layer type of a float layer (by :attr:`LayerType.float_class`) or of an integer
    layer (by :attr:`LayerType.int_classes`; a class shared by several types, as
    :class:`~npquant.qnn.QReLU` by ``relu`` and ``relu6``, gives the first registered).

    Parameters
    ----------
    layer : object
        A layer.

    Returns
    -------
    LayerType or None
        Its type, or None for a layer of no registered class.
    """
    for cls in type(layer).__mro__:
        for t in _TYPES.values():
            if t.float_class is cls or cls in t.int_classes:
                return t
    return None


def qat_type_names() -> str:
    """The registered layer types with a QAT form (:meth:`LayerType.prepare_qat`), for messages.

    Returns
    -------
    str
        Their names, comma-separated, in registration order.
    """
    return ", ".join(n for n, t in _TYPES.items() if t.qat_passes or type(t).prepare_qat is not LayerType.prepare_qat)


# ----------------------------------------------------------------------------- the arch format


def arch_layers(arch: object) -> list:
    """The layer entries of an architecture description, checked: ``arch`` is a dict with
    a list ``"layers"`` of dicts with a ``"type"``, and the entries of types with
    parameters have a string ``"name"``. Unregistered types pass (:func:`layer_type`
    refuses them when the model is built).

    Parameters
    ----------
    arch : object
        The architecture description.

    Returns
    -------
    list of dict
        ``arch["layers"]``.
    """
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ValueError("arch must be a dict with a list 'layers'")
    for i, entry in enumerate(arch["layers"]):
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"arch layers[{i}] must be a dict with a 'type'")
        t = _TYPES.get(entry["type"]) if isinstance(entry["type"], str) else None
        if t is not None and t.params and not isinstance(entry.get("name"), str):
            raise ValueError(f"arch layers[{i}] ({entry['type']}) needs a 'name'")
    return arch["layers"]


def read_arch(data: dict, where: object = "<arrays>", *, what: str = "reference model file") -> dict:
    """The ``__arch__`` entry of a model file's arrays: a 0-d text array holding JSON,
    checked by :func:`arch_layers`.

    Parameters
    ----------
    data : dict of str to numpy.ndarray
        The file's arrays.
    where : object, default ``"<arrays>"``
        Names the file in messages.
    what : str, default ``"reference model file"``
        Keyword-only; what the file should be, for the message when ``__arch__`` is missing.

    Returns
    -------
    dict
        The architecture; a :class:`~npquant.models.io.FileFormatError` names the file and
        the fault otherwise.
    """
    if "__arch__" not in data:
        raise FileFormatError(where, f"no '__arch__' entry: not a {what}")
    a = np.asarray(data["__arch__"])
    if a.ndim != 0 or a.dtype.kind != "U":
        raise FileFormatError(
            where, f"'__arch__' must be a JSON string (0-d text array), found {a.dtype} of shape {a.shape}"
        )
    arch = parse_json(str(a), "'__arch__'", where)
    try:
        arch_layers(arch)
    except (ValueError, TypeError) as e:
        raise FileFormatError(where, f"'__arch__' is not a valid architecture ({e})") from None
    return arch


# ----------------------------------------------------------------------------- size reports


def model_size_bytes(model: Iterable | object, *, packed: bool = False) -> int:
    """Storage of a model in bytes, each layer counted by its layer type: an integer layer
    by :meth:`LayerType.storage`, a float layer by :meth:`LayerType.float_bytes`, a
    dynamic-quantized layer by its own ``storage()``.

    Parameters
    ----------
    model : iterable of layers, or an object with ``layers``
        A float or dynamic-quantized :class:`~npquant.models.nn.Sequential`, or an
        :class:`~npquant.models.convert.IntegerModel`.
    packed : bool, default False
        Keyword-only; weight codes of integer layers packed at their bit width.

    Returns
    -------
    int
        Bytes. A layer of no registered type counts its float ``weight``, ``bias`` and
        running statistics (a callable without them: 0).
    """
    packed = check_bool(packed, "packed")
    layers = getattr(model, "layers", model)
    total = 0
    for layer in layers:
        if isinstance(layer, _DynamicLayer):
            total += layer.storage().total
            continue
        t = kind_of(layer)
        if t is None:
            total += 4 * _float_elements(layer)
        elif t.float_class is not None and isinstance(layer, t.float_class):
            total += t.float_bytes(layer)
        else:
            total += t.storage(layer, packed=packed).total
    return total


# ----------------------------------------------------------------------------- weighted layers


def quantize_params(
    weight: np.ndarray,
    bias: np.ndarray | None,
    x_qp: QParams,
    w_qp: QParams | None,
    w_spec: QuantSpec | None,
    bias_method: str,
) -> tuple[np.ndarray, QParams, np.ndarray | None]:
    """Weight codes, their qparams and the int32 bias of a weighted layer.

    Parameters
    ----------
    weight : float32 array (out, ...)
        The weight.
    bias : float32 array (out,) or None
        The bias.
    x_qp : QParams
        The input's qparams (the bias is quantized at ``S_x S_w``, zero point 0).
    w_qp : QParams or None
        Given weight qparams, or None to fit them with ``w_spec``.
    w_spec : QuantSpec or None
        The weight spec (when ``w_qp`` is None).
    bias_method : str
        As in :func:`npquant.qnn.bias.quantize_bias`.

    Returns
    -------
    w_q : numpy.ndarray
        The weight codes.
    w_qp : QParams
        Their qparams.
    b_q : int32 numpy.ndarray (out,) or None
        The bias, None without one.
    """
    if w_qp is None:
        w_qp = fit_qparams(weight, w_spec)
    w_q = quantize(weight, w_qp)
    b_q = None
    if bias is not None:
        sw = np.broadcast_to(np.asarray(w_qp.scale, np.float32), (weight.shape[0],))
        b_q = quantize_bias(bias, np.float32(x_qp.scale), sw, method=bias_method)
    return w_q, w_qp, b_q


class _DynamicLayer:
    """A weighted layer with weight codes whose input is quantized per call (uint8,
    min-max of the batch); the int32 accumulator is scaled back to float32 and the float
    bias added (PyTorch's dynamic quantization).

    Parameters
    ----------
    kind : LayerType
        The layer's type (a weighted one).
    layer : object
        The float layer.
    w_spec : QuantSpec
        The weight spec.
    """

    def __init__(self, kind: _Weighted, layer: object, w_spec: QuantSpec):
        self.kind, self.layer = kind, layer
        self.name = getattr(layer, "name", kind.name)
        self.w_qp = fit_qparams(layer.weight, w_spec)
        self.w_q = quantize(layer.weight, self.w_qp)

    def storage(self) -> Storage:
        """Weight codes (their itemsize each), float32 scales, zero points if asymmetric
        (their itemsize each), float32 bias.

        Returns
        -------
        Storage
            Its bytes, by part.
        """
        bias = self.layer.bias
        zp_bytes = 0 if self.w_qp.spec.symmetric else self.w_q.itemsize
        return quantized_storage(
            self.w_q.size,
            self.w_qp,
            packed=False,
            code_bytes=self.w_q.itemsize,
            zero_point_bytes=zp_bytes,
            bias_bytes=0 if bias is None else 4 * bias.size,
        )

    def size_bytes(self) -> int:
        """``storage().total``.

        Returns
        -------
        int
            Bytes.
        """
        return self.storage().total

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array(x, "x")
        x_qp = fit_qparams(x, QuantSpec(signed=False))
        x_q = quantize(x, x_qp)
        acc = self.kind.accumulate(self.layer, x_q, x_qp, self.w_q, self.w_qp)
        shape = self.kind.channel_shape(acc.ndim)
        sw = np.broadcast_to(self.w_qp.scale, (self.w_q.shape[0],)).astype(np.float32)
        y = acc.astype(np.float32) * (np.float32(x_qp.scale) * sw).reshape(shape)
        bias = self.layer.bias
        return y if bias is None else y + bias.reshape(shape)

    def __repr__(self) -> str:
        return f"_DynamicLayer({self.kind.name!r}, name={self.name!r})"


class _Weighted(LayerType):
    """A layer with a weight (output channels along axis 0) and an optional bias: its
    weight is quantized, its output gets calibrated qparams, an activation after it fuses
    into its clamp. Subclasses give the float and integer constructors and the accumulator."""

    params = ("weight", "bias?")
    weighted = True

    # ---- what a subclass gives
    def rebuild(self, layer: object, weight: np.ndarray, bias: np.ndarray | None) -> object:
        """``layer`` with another weight and bias (same geometry and name)."""
        raise NotImplementedError

    def make_int(
        self, w_q: np.ndarray, w_qp: QParams, b_q: np.ndarray | None, x_qp: QParams, y_qp: QParams, **kw: object
    ) -> object:
        """The integer layer from its codes and qparams; ``kw`` are the options of the
        integer layer's class (``mode``, ``activation``, the geometry of :meth:`geometry`...)."""
        raise NotImplementedError

    def geometry(self, layer: object) -> dict:
        """The geometry options of the integer layer of a float layer, or of an arch entry (a dict)."""
        return {}

    def twin_of(self, qlayer: object, weight: np.ndarray, bias: np.ndarray) -> object:
        """The float layer computing ``qlayer`` with float ``weight`` and ``bias``."""
        raise NotImplementedError

    def accumulate(self, layer: object, x_q: np.ndarray, x_qp: QParams, w_q: np.ndarray, w_qp: QParams) -> np.ndarray:
        """The int32 accumulator of ``layer``'s geometry on input codes (no bias)."""
        raise NotImplementedError

    def channel_shape(self, ndim: int) -> tuple:
        """The shape that broadcasts a per-output-channel vector over an output of ``ndim`` axes."""
        raise NotImplementedError

    def weight_shape(self, entry: dict) -> tuple[tuple, int]:
        """The weight shape and the fan-in of an arch entry, from its size fields."""
        raise NotImplementedError

    def qat_absorbs(self, nxt: object) -> bool:
        """Whether the layer after a layer of this type joins its QAT layer; by default no."""
        return False

    def qat_layer(self, layer: object, absorbed: object | None, kw: dict, ctx: QATContext) -> object:
        """The QAT layer of a copy of ``layer`` (and of the copy of the layer it absorbs, or
        None); ``kw``: its ``weight_fake_quant``, ``act_fake_quant`` and ``activation``."""
        raise NotImplementedError

    # ---- shared
    def init_params(self, entry: dict, rng: np.random.Generator) -> dict:
        """PyTorch's default initialization: the weight uniform in ``[-1/sqrt(fan_in),
        1/sqrt(fan_in)]`` (``kaiming_uniform_(a=sqrt(5))``: gain ``sqrt(2 / (1 + 5))`` times
        ``sqrt(3 / fan_in)``), then the bias (unless ``"bias": false``) uniform in the same
        bounds; float32."""
        shape, fan_in = self.weight_shape(entry)
        bound = math.sqrt(1.0 / 3.0) * math.sqrt(3.0 / fan_in)
        out = {"weight": rng.uniform(-bound, bound, shape).astype(np.float32)}
        if entry.get("bias", True):
            b = 1.0 / math.sqrt(fan_in)
            out["bias"] = rng.uniform(-b, b, shape[0]).astype(np.float32)
        return out

    def prepare_qat(self, layers: list, i: int, ctx: QATContext) -> tuple[object, int]:
        """A QAT layer with a weight fake quant and an output fake quant, absorbing the layer
        after it if :meth:`qat_absorbs` says so, then a clamp that fuses (``activation``)."""
        layer, j = layers[i], i + 1
        absorbed = None
        if j < len(layers) and self.qat_absorbs(layers[j]):
            absorbed = copy.deepcopy(layers[j]).eval()
            j += 1
        nxt = kind_of(layers[j]) if j < len(layers) else None
        act = None if nxt is None else nxt.activation
        spec = ctx.act_spec if i != ctx.last else ctx.output_spec
        kw = dict(
            weight_fake_quant=ctx.weight_fake_quant(layer.name, layer.weight.shape[0]),
            act_fake_quant=ctx.act_fake_quant(f"{layer.name}.act_fake_quant", act, spec),
            activation=act,
        )
        return self.qat_layer(copy.deepcopy(layer).eval(), absorbed, kw, ctx), j - i + (1 if act else 0)

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        w_q, w_qp, b_q = quantize_params(layer.weight, layer.bias, ctx.x_qp, ctx.w_qp, ctx.w_spec, ctx.bias_method)
        q = self.make_int(
            w_q,
            w_qp,
            b_q,
            ctx.x_qp,
            ctx.y_qp,
            **self.geometry(layer),
            mode=ctx.mode,
            activation=ctx.activation,
            accumulation=ctx.accumulation,
        )
        return q, ctx.y_qp

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        from ..affine import dequantize

        w = dequantize(qlayer.w_q, qlayer.w_qp)
        sx = np.float32(qlayer.x_qp.scale)
        sw = np.broadcast_to(qlayer.w_qp.scale, (w.shape[0],)).astype(np.float32)
        b = qlayer.bias_q.astype(np.float32) * sx * sw
        y = self.twin_of(qlayer, w, b)(h)
        lo, hi = qlayer.out_range
        qp = qlayer.y_qp
        sy, zy = np.float32(qp.scale), int(qp.zero_point)
        return np.clip(fake_quantize(y, qp), sy * (lo - zy), sy * (hi - zy)).astype(np.float32)

    def from_torch_ptq(self, entry: dict, src: TorchPTQ, x_qp: QParams) -> tuple[object, QParams]:
        name, data = entry.get("name"), src.data
        w_q = data[f"{name}.weight_int"]
        w_qp = QParams(
            data[f"{name}.weight_scale"].astype(np.float32), data[f"{name}.weight_zero_point"], QuantSpec(axis=0)
        )
        y_qp = src.act_qp(name)
        # PyTorch's float bias, added in float32 by fbgemm's requantization
        q = self.make_int(
            w_q,
            w_qp,
            data.get(f"{name}.bias"),
            x_qp,
            y_qp,
            **self.geometry(entry),
            mode="fbgemm",
            activation=entry.get("activation"),
            accumulation=src.accumulation,
        )
        return q, y_qp

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        w_q, w_qp, b_q = quantize_params(layer.weight, layer.bias, ctx.x_qp, ctx.w_qp, ctx.w_spec, ctx.bias_method)
        params = {
            "weight": w_q,
            "weight_scale": np.asarray(w_qp.scale, np.float32),
            "weight_zero_point": np.asarray(w_qp.zero_point),
        }
        if b_q is not None:
            params["bias_q"] = b_q
        attrs = {
            "output": ctx.y_qp,
            "mode": ctx.mode,
            "activation": ctx.activation,
            "accumulation": ctx.accumulation,
            "weight_spec": ctx.w_spec,
            **self.graph_geometry(layer),
        }
        return "q" + self.name, attrs, params, ctx.y_qp

    def graph_geometry(self, layer: object) -> dict:
        """The geometry attributes of the integer graph node of a float layer; by default none."""
        return {}

    def dynamic(self, layer: object, w_spec: QuantSpec) -> object:
        return _DynamicLayer(self, layer, w_spec)

    def weight_only(self, layer: object, spec: QuantSpec) -> tuple[object, Storage]:
        qp = fit_qparams(layer.weight, spec)
        w = fake_quantize(layer.weight, qp)
        bias = layer.bias
        storage = quantized_storage(
            layer.weight.size,
            qp,
            packed=True,
            zero_point_bytes=0 if spec.symmetric else 1,
            bias_bytes=0 if bias is None else 4 * bias.size,
        )
        return self.rebuild(layer, w, bias), storage

    def storage(self, qlayer: object, *, packed: bool = False) -> Storage:
        """Weight codes (their itemsize each, or packed at the spec's bits), int32 bias per
        output channel, float32 scales, zero points (the codes' itemsize each)."""
        w_q, w_qp = qlayer.w_q, qlayer.w_qp
        return quantized_storage(
            w_q.size,
            w_qp,
            packed=packed,
            code_bytes=w_q.itemsize,
            zero_point_bytes=w_q.itemsize,
            bias_bytes=4 * w_q.shape[0],
        )


@register("linear")
class LinearType(_Weighted):
    """``linear``: :class:`~npquant.models.nn.Linear`, integer form :class:`~npquant.qnn.QLinear`.
    Fields: ``in_features``, ``out_features`` (checked against the weight)."""

    float_class = nn.Linear
    int_classes = (QLinear,)

    def build(self, entry: dict, params: dict, name: str) -> object:
        w = np.asarray(params["weight"])
        if ("out_features" in entry or "in_features" in entry) and w.ndim:
            w = nn._param(
                w, f"{name}.weight", (entry.get("out_features", w.shape[0]), entry.get("in_features", w.shape[-1]))
            )
        return nn.Linear(w, params.get("bias"), name=name)

    def weight_shape(self, entry: dict) -> tuple[tuple, int]:
        return (entry["out_features"], entry["in_features"]), entry["in_features"]

    def qat_layer(self, layer: object, absorbed: object | None, kw: dict, ctx: QATContext) -> object:
        from ..training.qat import QATLinear

        return QATLinear(layer, **kw)

    def rebuild(self, layer: object, weight: np.ndarray, bias: np.ndarray | None) -> object:
        return nn.Linear(weight, bias, name=layer.name)

    def make_int(
        self, w_q: np.ndarray, w_qp: QParams, b_q: np.ndarray | None, x_qp: QParams, y_qp: QParams, **kw: object
    ) -> object:
        return QLinear(w_q, w_qp, b_q, x_qp, y_qp, **kw)

    def twin_of(self, qlayer: object, weight: np.ndarray, bias: np.ndarray) -> object:
        return nn.Linear(weight, bias)

    def accumulate(self, layer: object, x_q: np.ndarray, x_qp: QParams, w_q: np.ndarray, w_qp: QParams) -> np.ndarray:
        return linear_accumulate(x_q, x_qp, w_q, w_qp)

    def channel_shape(self, ndim: int) -> tuple:
        return (1,) * (ndim - 1) + (-1,)


@register("conv2d")
class Conv2dType(_Weighted):
    """``conv2d``: :class:`~npquant.models.nn.Conv2d`, integer form :class:`~npquant.qnn.QConv2d`.
    Fields: ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``,
    ``dilation``, ``groups``. A ``batchnorm2d`` right after it folds into it."""

    float_class = nn.Conv2d
    int_classes = (QConv2d,)

    def build(self, entry: dict, params: dict, name: str) -> object:
        w, g = params["weight"], entry.get("groups", 1)
        if "kernel_size" in entry or "out_channels" in entry:
            kh, kw = check_pair(entry.get("kernel_size", np.shape(w)[2:]), "kernel_size", lo=1)
            if "out_channels" in entry:
                w = nn._param(w, f"{name}.weight", (entry["out_channels"], entry["in_channels"] // g, kh, kw))
        return nn.Conv2d(
            w,
            params.get("bias"),
            stride=entry.get("stride", 1),
            padding=entry.get("padding", 0),
            dilation=entry.get("dilation", 1),
            groups=g,
            name=name,
        )

    def weight_shape(self, entry: dict) -> tuple[tuple, int]:
        kh, kw = check_pair(entry["kernel_size"], "kernel_size", lo=1)
        cg = entry["in_channels"] // entry.get("groups", 1)
        return (entry["out_channels"], cg, kh, kw), cg * kh * kw

    def qat_absorbs(self, nxt: object) -> bool:
        return isinstance(nxt, nn.BatchNorm2d)

    def graph_geometry(self, layer: object) -> dict:
        return {
            "stride": list(layer.stride),
            "padding": list(layer.padding),
            "dilation": list(layer.dilation),
            "groups": layer.groups,
        }

    def qat_layer(self, layer: object, absorbed: object | None, kw: dict, ctx: QATContext) -> object:
        from ..training.qat import QATConv2d, QATConvBn2d

        if absorbed is None:
            return QATConv2d(layer, **kw)
        q = QATConvBn2d(layer, absorbed, **kw)
        if ctx.freeze_bn:
            q.freeze_bn()
        return q

    def fold(self, layer: object, nxt: object) -> object | None:
        """A conv followed by a batch norm: ``W' = W * gamma / sqrt(var + eps)`` per output
        channel and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta`` (float32)."""
        if not isinstance(nxt, nn.BatchNorm2d):
            return None
        scale, shift = nxt.scale_shift()
        if scale.shape[0] != layer.weight.shape[0]:
            raise ValueError(f"{nxt.name} has {scale.shape[0]} channels, {layer.name} has {layer.weight.shape[0]}")
        w = (layer.weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        b0 = np.zeros(scale.shape, np.float32) if layer.bias is None else layer.bias
        return self.rebuild(layer, w, (b0 * scale + shift).astype(np.float32))

    def rebuild(self, layer: object, weight: np.ndarray, bias: np.ndarray | None) -> object:
        return nn.Conv2d(
            weight,
            bias,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            name=layer.name,
        )

    def make_int(
        self, w_q: np.ndarray, w_qp: QParams, b_q: np.ndarray | None, x_qp: QParams, y_qp: QParams, **kw: object
    ) -> object:
        return QConv2d(w_q, w_qp, b_q, x_qp, y_qp, **kw)

    def geometry(self, layer: object) -> dict:
        keys = ("stride", "padding", "dilation", "groups")
        if isinstance(layer, dict):  # an arch entry (a PyTorch PTQ file): every field required
            return {k: layer[k] for k in keys}
        return {k: getattr(layer, k) for k in keys}

    def twin_of(self, qlayer: object, weight: np.ndarray, bias: np.ndarray) -> object:
        g = qlayer.geometry
        return nn.Conv2d(
            weight, bias, stride=g.stride, padding=(g.padding[0], g.padding[2]), dilation=g.dilation, groups=g.groups
        )

    def accumulate(self, layer: object, x_q: np.ndarray, x_qp: QParams, w_q: np.ndarray, w_qp: QParams) -> np.ndarray:
        return conv2d_accumulate(
            x_q,
            x_qp,
            w_q,
            w_qp,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )

    def channel_shape(self, ndim: int) -> tuple:
        return (1, -1, 1, 1)


# ----------------------------------------------------------------------------- the other layers


@register("batchnorm2d")
class BatchNorm2dType(LayerType):
    """``batchnorm2d``: :class:`~npquant.models.nn.BatchNorm2d` (fields ``num_features``,
    ``eps``, ``momentum``); no integer form of its own: it folds into the conv before it."""

    float_class = nn.BatchNorm2d
    params = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked?")

    def build(self, entry: dict, params: dict, name: str) -> object:
        if "num_features" in entry:
            for k in ("weight", "bias", "running_mean", "running_var"):
                nn._param(params[k], f"{name}.{k}", (entry["num_features"],))
        return nn.BatchNorm2d(
            params["weight"],
            params["bias"],
            params["running_mean"],
            params["running_var"],
            eps=entry.get("eps", 1e-5),
            momentum=entry.get("momentum", 0.1),
            num_batches_tracked=params.get("num_batches_tracked", 0),
            name=name,
        )

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        raise ValueError(
            f"layer {layer.name!r} (batchnorm2d) cannot be quantized on its own: it folds only into "
            "a conv2d right before it"
        )

    def init_params(self, entry: dict, rng: np.random.Generator) -> dict:
        """PyTorch's: weight 1, bias 0, running mean 0, running variance 1 (float32),
        ``num_batches_tracked`` 0 (int64); no random numbers."""
        c = entry["num_features"]
        return {
            "weight": np.ones(c, np.float32),
            "bias": np.zeros(c, np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.ones(c, np.float32),
            "num_batches_tracked": np.zeros((), np.int64),
        }

    def prepare_qat(self, layers: list, i: int, ctx: QATContext) -> tuple[object, int]:
        raise ValueError(
            f"prepare_qat cannot convert layers[{i}] ({getattr(layers[i], 'name', '?')!r}): a "
            f"BatchNorm2d not right after a Conv2d; supported: {qat_type_names()}"
        )


class _Clamp(LayerType):
    """ReLU / ReLU6: fused into the weighted layer before it, else a clamp of the codes
    (:class:`~npquant.qnn.QReLU`) that keeps the input's qparams."""

    int_classes = (QReLU,)
    qat_passes = True

    def build(self, entry: dict, params: dict, name: str) -> object:
        return self.float_class(name=name)

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        return QReLU(ctx.x_qp, self.activation), ctx.x_qp

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        lo, hi = qlayer.out_range
        sy, zy = np.float32(qlayer.qp.scale), int(qlayer.qp.zero_point)
        return np.clip(h, sy * (lo - zy), sy * (hi - zy))

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        return "qrelu", {"activation": self.activation}, {}, ctx.x_qp


@register("relu")
class ReLUType(_Clamp):
    """``relu``: :class:`~npquant.models.nn.ReLU`."""

    float_class = nn.ReLU
    activation = "relu"


@register("relu6")
class ReLU6Type(_Clamp):
    """``relu6``: :class:`~npquant.models.nn.ReLU6`."""

    float_class = nn.ReLU6
    activation = "relu6"


@register("maxpool2d")
class MaxPool2dType(LayerType):
    """``maxpool2d``: :class:`~npquant.models.nn.MaxPool2d` (``kernel_size``, ``stride``,
    ``padding``; ``dilation`` 1 and ``ceil_mode`` false only); on codes,
    :class:`~npquant.qnn.MaxPool2d` with the input's qparams."""

    float_class = nn.MaxPool2d
    int_classes = (QMaxPool2d,)
    qat_passes = True

    def build(self, entry: dict, params: dict, name: str) -> object:
        nn._plain_pool(entry, name, ("dilation", "ceil_mode"))
        return nn.MaxPool2d(entry["kernel_size"], entry.get("stride"), entry.get("padding", 0), name=name)

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        return QMaxPool2d(layer.kernel_size, layer.stride, layer.padding), ctx.x_qp

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        return nn.MaxPool2d(qlayer.kernel_size, qlayer.stride, qlayer.padding)(h)

    def from_torch_ptq(self, entry: dict, src: TorchPTQ, x_qp: QParams) -> tuple[object, QParams]:
        nn._plain_pool(entry, entry.get("name"), ("dilation", "ceil_mode"))
        return QMaxPool2d(entry["kernel_size"], entry["stride"], entry["padding"]), x_qp

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        return (
            "qmaxpool2d",
            {"kernel_size": list(layer.kernel_size), "stride": list(layer.stride), "padding": list(layer.padding)},
            {},
            ctx.x_qp,
        )


@register("avgpool2d")
class AvgPool2dType(LayerType):
    """``avgpool2d``: :class:`~npquant.models.nn.AvgPool2d` (``kernel_size``, ``stride``,
    ``padding``, ``count_include_pad``; ``ceil_mode`` false and no ``divisor_override``);
    on codes, :class:`~npquant.qnn.AvgPool2d` with the input's qparams, rounding as
    :meth:`int_mode` says."""

    float_class = nn.AvgPool2d
    int_classes = (QAvgPool2d,)
    qat_passes = True

    def build(self, entry: dict, params: dict, name: str) -> object:
        nn._plain_pool(entry, name, ("ceil_mode", "divisor_override"))
        return nn.AvgPool2d(
            entry["kernel_size"],
            entry.get("stride"),
            entry.get("padding", 0),
            count_include_pad=entry.get("count_include_pad", True),
            name=name,
        )

    @staticmethod
    def int_mode(layer: object, mode: str) -> tuple[str, bool]:
        """``(mode, count_include_pad)`` of the integer pool of ``layer`` under the
        requantization ``mode``: TFLite's rounding (half away) in the ``tflite*`` modes,
        PyTorch's (half even) otherwise and whenever padding counts in the divisor (not a
        TFLite option).

        Parameters
        ----------
        layer : npquant.models.nn.AvgPool2d
            The float pool.
        mode : str
            The requantization mode.

        Returns
        -------
        tuple of (str, bool)
            The :class:`~npquant.qnn.AvgPool2d` ``mode`` and ``count_include_pad``.
        """
        include_pad = bool(layer.count_include_pad and any(layer.padding))
        return ("tflite" if mode.startswith("tflite") and not include_pad else "torch"), include_pad

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        pool_mode, include_pad = self.int_mode(layer, ctx.mode)
        return QAvgPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            mode=pool_mode,
            zero_point=int(ctx.x_qp.zero_point),
            count_include_pad=include_pad,
        ), ctx.x_qp

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        return nn.AvgPool2d(
            qlayer.kernel_size, qlayer.stride, qlayer.padding, count_include_pad=qlayer.count_include_pad
        )(h)

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        pool_mode, include_pad = self.int_mode(layer, ctx.mode)
        return (
            "qavgpool2d",
            {
                "kernel_size": list(layer.kernel_size),
                "stride": list(layer.stride),
                "padding": list(layer.padding),
                "mode": pool_mode,
                "count_include_pad": include_pad,
            },
            {},
            ctx.x_qp,
        )


@register("flatten")
class FlattenType(LayerType):
    """``flatten``: :class:`~npquant.models.nn.Flatten`; on codes, :class:`~npquant.qnn.Flatten`."""

    float_class = nn.Flatten
    int_classes = (QFlatten,)
    qat_passes = True

    def build(self, entry: dict, params: dict, name: str) -> object:
        return nn.Flatten(name=name)

    def to_integer(self, layer: object, ctx: QuantContext) -> tuple[object, QParams]:
        return QFlatten(), ctx.x_qp

    def float_twin(self, qlayer: object, h: np.ndarray) -> np.ndarray:
        return nn.Flatten()(h)

    def from_torch_ptq(self, entry: dict, src: TorchPTQ, x_qp: QParams) -> tuple[object, QParams]:
        return QFlatten(), x_qp

    def graph_node(self, layer: object, ctx: QuantContext) -> tuple[str, dict, dict, QParams]:
        return "qflatten", {}, {}, ctx.x_qp
