"""Quantization-aware training layers: float layers of :mod:`npquant.models.nn` whose weights
(and outputs) are fake-quantized in the forward pass, trained through the gradient rules
of :mod:`npquant.training.fake_quant`.

* :class:`QATLinear`, :class:`QATConv2d`: ``y = act_fq(activation(op(x, weight_fq(W)) + b))``
  -- the float layer's weight goes through a weight fake-quant (default
  :func:`~npquant.training.fake_quant.weight_fake_quant`: per output channel, symmetric
  int8, range of the current weights), an optional fused ReLU/ReLU6, and an optional output
  fake-quant (default :func:`~npquant.training.fake_quant.activation_fake_quant`: uint8,
  moving-average range). ``act_fake_quant=None`` leaves the output float (PyTorch's QAT
  modules quantize weights only and put the activation fake-quant after them).
* :class:`QATConvBn2d`: a conv followed by batch norm, with the batch norm folded into the
  weights for their fake quantization, as Jacob et al. 2018 (section 3.2) and
  Krishnamoorthi 2018 (section 3.2.2, the form ``torch.ao.nn.intrinsic.qat.ConvBn2d``
  computes) describe. With ``s = gamma / sqrt(running_var + eps)`` per output channel::

      y = bn((conv(x, weight_fq(W * s)) / s) + b)

  In training mode the batch norm normalizes with the *batch* statistics and updates its
  running statistics (the division by ``s`` undoes the running-statistics scaling, so
  the output is that of conv + BN trained with batch statistics, up to the weight's
  quantization); after :meth:`QATConvBn2d.freeze_bn` it uses the frozen running
  statistics and the output is exactly the folded conv ``conv(x, weight_fq(W s)) + (b -
  mean) s + beta`` that inference runs. Gradients flow to ``W``, ``b``, ``gamma``
  (through the batch norm *and* through ``s``) and ``beta``.

Every layer follows the contract of :mod:`npquant.training` (``forward``/``backward``/
``parameters``/``grads``/``zero_grad``/``train``/``eval``/``state_dict``), starts in eval
mode like :mod:`npquant.models.nn`'s, and keeps the float layer's name, so that a
:class:`~npquant.models.nn.Sequential` of QAT layers has the float model's state-dict keys
(``"<name>.weight"``, ``"<name>.bias"``; learned ranges add
``"<name>.weight_fake_quant.scale"`` and the like). Float32 throughout.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt

from .._checks import check_bool
from ..models import nn
from .fake_quant import (
    FakeQuantize,
    LSQFakeQuantize,
    PACTFakeQuantize,
    _FakeQuantBase,
    activation_fake_quant,
    weight_fake_quant,
)

__all__ = ["QATLinear", "QATConv2d", "QATConvBn2d", "QAT_ACTIVATIONS"]

QAT_ACTIVATIONS = (None, "relu", "relu6")
"""Activations a QAT layer can fuse before its output fake-quant (float, in training).
Not :data:`npquant.qnn.ACTIVATIONS`, the names of the clamps an integer layer applies to
its codes (``"none"``, ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"``)."""

_DEFAULT = object()


def _check_fq(fq, name: str, allow_none: bool):
    if fq is None and allow_none:
        return None
    if not isinstance(fq, _FakeQuantBase):
        raise TypeError(
            f"{name} must be a FakeQuantize, LSQFakeQuantize or PACTFakeQuantize"
            f"{' or None' if allow_none else ''}, got {type(fq).__name__}"
        )
    return fq


class _QATBase(nn.ChildDicts):
    """Mode, parameter/gradient dicts and state dicts of a QAT layer: the float layer's
    arrays (``weight``, ``bias``; a batch norm's under ``bn.``) and the learned ranges
    (``weight_fake_quant.scale``, ...), from :class:`npquant.models.nn.ChildDicts`."""

    def __init__(
        self,
        name: str,
        weight_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None,
        act_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None,
        activation: str | None,
    ):
        self.name = name
        self.training = False
        self.weight_fake_quant = _check_fq(weight_fake_quant, "weight_fake_quant", False)
        self.act_fake_quant = _check_fq(act_fake_quant, "act_fake_quant", True)
        if activation not in QAT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {QAT_ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self._act_mask = None
        self._out_shape = None

    # the float layers and the fake quants, with the prefixes of their keys
    def _owners(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _fqs(self):
        out = [("weight_fake_quant", self.weight_fake_quant)]
        if self.act_fake_quant is not None:
            out.append(("act_fake_quant", self.act_fake_quant))
        return out

    def _children(self):
        return self._owners() + self._fqs()

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, weight_fake_quant={self.weight_fake_quant!r}, "
            f"act_fake_quant={self.act_fake_quant!r}, activation={self.activation!r})"
        )

    def train(self, mode: bool = True) -> _QATBase:
        """Training mode for the layer and its fake quants; returns self."""
        mode = check_bool(mode, "mode")
        for _, m in self._children():
            m.train(mode)
        self._op.train(mode)
        self.training = mode
        if not mode:
            self._act_mask = None
            self._out_shape = None
        return self

    def eval(self) -> _QATBase:
        return self.train(False)

    def load_state_dict(self, state: dict, *, strict: bool = True) -> _QATBase:
        """Copy ``state`` into the live arrays; with ``strict=False`` keys may be missing
        (a float model's state dict loads into a QAT model with learned ranges)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
        strict = check_bool(strict, "strict")
        children = self._children()
        parts, rest = nn._split_state(state, [p for p, _ in children if p])
        parts[""] = {k: state[k] for k in rest}  # the float layer's own keys carry no prefix
        for p, m in children:
            part = parts[p]
            if not strict:
                own = m.state_dict()
                part = {k: v for k, v in part.items() if k in own}
                if not part:
                    continue
                part = {**own, **part}
            m.load_state_dict(part, strict=strict)
        return self

    # fused activation
    def _activate(self, y):
        if self.activation is None:
            return y
        hi = np.float32(6) if self.activation == "relu6" else None
        if self.training:
            # PyTorch: relu passes where y > 0; relu6 (hardtanh) where 0 < y < 6
            self._act_mask = (y > 0) if hi is None else ((y > 0) & (y < hi))
        return np.maximum(y, np.float32(0)) if hi is None else np.clip(y, np.float32(0), hi)

    def _activate_backward(self, g):
        if self.activation is None:
            return g
        return np.where(self._act_mask, g, np.float32(0))

    def _finish_forward(self, y):
        y = self._activate(y)
        if self.act_fake_quant is not None:
            y = self.act_fake_quant(y)
        if self.training:
            self._out_shape = y.shape
        return y

    def _start_backward(self, grad_y):
        if not self.training:
            raise RuntimeError(f"{self.name}: backward needs training mode; call train() before forward")
        if self._out_shape is None:
            raise RuntimeError(f"{self.name}: backward called before a training-mode forward pass")
        g = np.asarray(grad_y)
        if g.dtype.kind != "f":
            raise TypeError(f"{self.name}: grad_y must be a floating-point array, got dtype {g.dtype}")
        if g.shape != self._out_shape:
            raise ValueError(f"{self.name}: grad_y has shape {g.shape}, expected {self._out_shape}")
        g = g.astype(np.float32, copy=False)
        if self.act_fake_quant is not None:
            g = self.act_fake_quant.backward(g)
        return self._activate_backward(g)


def _default_fqs(weight_fq, act_fq, name):
    if weight_fq is _DEFAULT:
        weight_fq = weight_fake_quant(name=f"{name}.weight_fake_quant")
    if act_fq is _DEFAULT:
        act_fq = activation_fake_quant(name=f"{name}.act_fake_quant")
    return weight_fq, act_fq


class _QATWeighted(_QATBase):
    """Linear or conv: the float layer owns the weights, ``_op`` runs with the fake-quantized ones."""

    _kind: type = nn.Layer

    def __init__(
        self,
        layer: nn.Linear | nn.Conv2d,
        *,
        weight_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None = _DEFAULT,
        act_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None = _DEFAULT,
        activation: str | None = None,
        name: str | None = None,
    ):
        if not isinstance(layer, self._kind):
            raise TypeError(f"layer must be an npquant.models.nn.{self._kind.__name__}, got {type(layer).__name__}")
        name = layer.name if name is None else name
        wfq, afq = _default_fqs(weight_fake_quant, act_fake_quant, name)
        super().__init__(name, wfq, afq, activation)
        self.layer = layer
        self._op = self._make_op(layer)

    def _owners(self):
        return [("", self.layer)]

    @property
    def weight(self) -> np.ndarray:
        return self.layer.weight

    @property
    def bias(self):
        return self.layer.bias

    def fake_quantized_weight(self) -> np.ndarray:
        """The weight as the forward pass uses it (float32 on the weight's grid)."""
        return self.weight_fake_quant(self.layer.weight)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        wq = self.weight_fake_quant(self.layer.weight)
        self._op.weight = wq
        self._op.bias = self.layer.bias
        return self._finish_forward(self._op(x))

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g = self._start_backward(grad_y)
        self._op.zero_grad()
        gx = self._op.backward(g)
        self.layer.grads["weight"] += self.weight_fake_quant.backward(self._op.grads["weight"])
        if self.layer.bias is not None:
            self.layer.grads["bias"] += self._op.grads["bias"]
        return gx


class QATLinear(_QATWeighted):
    """:class:`npquant.models.nn.Linear` with a fake-quantized weight (and output).

    ``x`` (..., in) float32 -> (..., out). ``layer`` keeps the float weights (the live
    parameters ``weight``, ``bias``); ``weight_fake_quant`` (default per-channel symmetric
    int8 of the current weights; any FakeQuantize, LSQ or PACT layer), ``activation``
    (None, ``"relu"``, ``"relu6"``, fused before the output fake-quant) and
    ``act_fake_quant`` (default uint8 moving-average; None for a float output).
    """

    _kind = nn.Linear

    @staticmethod
    def _make_op(layer):
        return nn.Linear(layer.weight, layer.bias, name=layer.name)


class QATConv2d(_QATWeighted):
    """:class:`npquant.models.nn.Conv2d` with a fake-quantized weight (and output); NCHW in and
    out, the conv's stride, padding, dilation and groups. Arguments as :class:`QATLinear`."""

    _kind = nn.Conv2d

    @staticmethod
    def _make_op(layer):
        return nn.Conv2d(
            layer.weight,
            layer.bias,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            name=layer.name,
        )


class QATConvBn2d(_QATBase):
    """Conv2d + BatchNorm2d trained with the batch norm folded into the fake-quantized
    weights (see the module docstring for the arithmetic).

    ``conv`` (:class:`npquant.models.nn.Conv2d`, bias optional) and ``bn``
    (:class:`npquant.models.nn.BatchNorm2d`) keep their live arrays: ``parameters()`` are
    ``weight``, ``bias`` (if the conv has one), ``bn.weight``, ``bn.bias``;
    ``state_dict()`` adds ``bn.running_mean``, ``bn.running_var``,
    ``bn.num_batches_tracked``. :meth:`freeze_bn` switches to the running statistics (and
    stops updating them) -- Jacob et al.'s "frozen" phase; :meth:`unfreeze_bn` back.
    :meth:`folded_conv` returns the float conv that inference runs.

    Parameters
    ----------
    conv : npquant.models.nn.Conv2d
        The convolution, bias optional.
    bn : npquant.models.nn.BatchNorm2d
        Its batch norm, one channel per output of ``conv``.
    weight_fake_quant : optional
        Keyword-only; as in :class:`QATLinear` (default per-channel symmetric int8).
    act_fake_quant : optional
        As in :class:`QATLinear` (default uint8 moving-average; None for a float output).
    activation : None, ``"relu"`` or ``"relu6"``, default None
        Fused before the output fake-quant.
    name : str or None, default None
        The layer's name; ``None`` is ``conv.name``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        *,
        weight_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None = _DEFAULT,
        act_fake_quant: FakeQuantize | LSQFakeQuantize | PACTFakeQuantize | None = _DEFAULT,
        activation: str | None = None,
        name: str | None = None,
    ):
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an npquant.models.nn.Conv2d, got {type(conv).__name__}")
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be an npquant.models.nn.BatchNorm2d, got {type(bn).__name__}")
        if bn.weight.shape[0] != conv.weight.shape[0]:
            raise ValueError(f"bn has {bn.weight.shape[0]} channels, conv has {conv.weight.shape[0]} outputs")
        name = conv.name if name is None else name
        wfq, afq = _default_fqs(weight_fake_quant, act_fake_quant, name)
        super().__init__(name, wfq, afq, activation)
        self.conv = conv
        self.bn = bn
        self._op = nn.Conv2d(
            conv.weight,
            None,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            name=conv.name,
        )
        self._cache = None

    def _owners(self):
        return [("", self.conv), ("bn", self.bn)]

    @property
    def bn_frozen(self) -> bool:
        return bool(self.bn.frozen)

    def freeze_bn(self, frozen: bool = True) -> QATConvBn2d:
        """Use (and keep) the running statistics in training mode. Returns self."""
        self.bn.frozen = check_bool(frozen, "frozen")
        return self

    def unfreeze_bn(self) -> QATConvBn2d:
        return self.freeze_bn(False)

    def _scale_factor(self):
        std = np.sqrt(self.bn.running_var + np.float32(self.bn.eps))
        return (self.bn.weight / std).astype(np.float32), std.astype(np.float32)

    def fake_quantized_weight(self) -> np.ndarray:
        """``weight_fq(W * s)``: the folded weight on its grid (float32)."""
        s, _ = self._scale_factor()
        return self.weight_fake_quant(self.conv.weight * s.reshape(-1, 1, 1, 1))

    def folded_conv(self) -> nn.Conv2d:
        """The float conv of inference: weight ``weight_fq(W s)``, bias ``(b - mean) s +
        beta`` with the running statistics (float32; a fresh layer in eval mode)."""
        s, _ = self._scale_factor()
        wq = self.fake_quantized_weight()
        b0 = np.zeros_like(s) if self.conv.bias is None else self.conv.bias
        bias = ((b0 - self.bn.running_mean) * s + self.bn.bias).astype(np.float32)
        c = self.conv
        return nn.Conv2d(
            wq, bias, stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups, name=c.name
        )

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        if np.any(self.bn.weight == 0):
            raise ValueError(f"{self.name}: bn.weight has a zero; the fold divides by gamma / sqrt(var + eps)")
        s, std = self._scale_factor()
        ws = self.conv.weight * s.reshape(-1, 1, 1, 1)
        self._op.weight = self.weight_fake_quant(ws)
        y0 = self._op(x)
        y = y0 / s.reshape(1, -1, 1, 1)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        out = self.bn(y)
        if self.training:
            self._cache = (s, std, y0)
        return self._finish_forward(out)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g = self._start_backward(grad_y)
        s, std, y0 = self._cache
        g_y = self.bn.backward(g)  # accumulates bn.weight, bn.bias
        if self.conv.bias is not None:
            self.conv.grads["bias"] += g_y.sum(axis=(0, 2, 3))
        s4 = s.reshape(1, -1, 1, 1)
        g0 = g_y / s4
        # y = y0 / s: d s = -sum(g_y * y0 / s^2) over N, H, W
        d_s = -(g_y * (y0 / (s4 * s4))).sum(axis=(0, 2, 3))
        self._op.zero_grad()
        gx = self._op.backward(g0)
        g_ws = self.weight_fake_quant.backward(self._op.grads["weight"])
        w = self.conv.weight
        self.conv.grads["weight"] += g_ws * s.reshape(-1, 1, 1, 1)
        d_s = d_s + (g_ws * w).sum(axis=(1, 2, 3))
        # s = gamma / std (std from the running variance: no gradient)
        self.bn.grads["weight"] += (d_s / std).astype(np.float32)
        return gx


def __getattr__(name: str):
    """``ACTIVATIONS``, the first name of :data:`QAT_ACTIVATIONS`: deprecated for one release."""
    if name == "ACTIVATIONS":
        warnings.warn(
            "npquant.training.qat.ACTIVATIONS is deprecated: it is now QAT_ACTIVATIONS (what a QAT "
            "layer fuses; npquant.qnn.ACTIVATIONS are the integer clamps)",
            DeprecationWarning,
            stacklevel=2,
        )
        return QAT_ACTIVATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
