"""PyTorch modules as npquant graphs: float models traced with torch.fx, eager-mode quantized models bit for bit.

:func:`from_torch` traces a float ``torch.nn.Module`` with ``torch.fx.symbolic_trace``
and translates each call into a float :class:`~npquant.models.graph.Graph` node (batch norms
folded into the conv before them). :func:`from_torch_quantized` does the same for a
module quantized in PyTorch's eager mode (``QuantStub``/``DeQuantStub``, ``fuse_modules``,
``prepare``, calibration, ``convert``): its quantized layers become integer nodes that
reproduce PyTorch's fbgemm engine bit for bit, at the output and at every intermediate
tensor. Both run the module once on ``example_input`` (through ``torch.fx.Interpreter``)
to learn which tensors are quantized, their shapes and memory formats, and to check that
the qparams npquant derives for each integer tensor are PyTorch's.

Tensor names are the names of the ``torch.fx`` nodes that produce them (``"x"``,
``"conv1"``, ``"add_relu"``, ...); node names are the module paths (``"layer1.0.conv1"``)
or the fx names. :func:`torch_intermediates` returns PyTorch's value of every tensor under
the same names (integer codes of quantized tensors), to compare with ``graph.run(x,
keep_intermediates=True)``.

torch is imported inside the functions; without it they raise ``ModuleNotFoundError``
naming the ``peers`` extra. Importing this module never imports torch.
"""

from __future__ import annotations

import operator
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_bool
from ..models import graph as _graph
from ..models import nn as _nn
from ..qnn.accumulation import check_accumulation

if TYPE_CHECKING:
    import torch

PEERS_HINT = "install the peers extra (pip install 'npquant[peers]') for PyTorch"

#: What :func:`from_torch` translates (module types, functions and tensor methods).
FLOAT_SUPPORTED = (
    "nn.Linear",
    "nn.Conv2d",
    "nn.BatchNorm2d",
    "nn.ReLU",
    "nn.ReLU6",
    "nn.MaxPool2d",
    "nn.AvgPool2d",
    "nn.Flatten",
    "nn.Identity",
    "nn.Dropout*",
    "QuantStub",
    "DeQuantStub",
    "F.relu",
    "torch.relu",
    "F.relu6",
    "F.max_pool2d",
    "F.avg_pool2d",
    "F.dropout",
    "+ / operator.add / torch.add / Tensor.add",
    "torch.cat",
    "torch.flatten / Tensor.flatten",
    "Tensor.view / Tensor.reshape / torch.reshape",
    "Tensor.size / Tensor.shape",
    "Tensor.relu",
    "Tensor.contiguous",
)
#: What :func:`from_torch_quantized` translates besides :data:`FLOAT_SUPPORTED`.
QUANTIZED_SUPPORTED = (
    "nnq.Quantize (QuantStub)",
    "nnq.DeQuantize (DeQuantStub)",
    "nnq.Linear",
    "nniq.LinearReLU",
    "nnq.Conv2d",
    "nniq.ConvReLU2d",
    "nnq.ReLU6",
    "nn.ReLU / F.relu on quantized tensors",
    "F.relu6 on quantized tensors",
    "nn.MaxPool2d / nn.AvgPool2d on quantized tensors",
    "flatten / view / reshape of quantized tensors",
    "quantized::add, quantized::add_relu (FloatFunctional / QFunctional add, add_relu)",
    "quantized::cat (QFunctional cat), torch.cat of quantized tensors",
    "torch.quantize_per_tensor",
    "Tensor.dequantize",
)

_ADD_ONE_CHUNK = 32768  # elements torch's quantized add processes as one chunk (npquant.qnn.add)


def _torch():
    try:
        import torch
        import torch.fx
    except ImportError as e:
        raise ModuleNotFoundError(f"npquant.importers.torch needs PyTorch: {PEERS_HINT}") from e
    return torch


def _example(torch, example_input) -> tuple:
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    out = []
    for i, v in enumerate(items):
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            raise TypeError(
                f"example_input must be a tensor, an array, or a tuple of them; item {i} is {type(v).__name__}"
            )
        out.append(v)
    if not out:
        raise ValueError("example_input is empty; give one tensor per input of forward()")
    return tuple(out)


def _trace(torch, module, example_input, snapshot: dict | None = None):
    """``(GraphModule, {fx node name: value})`` of ``module`` run on ``example_input``;
    ``snapshot`` (a dict) also receives a NumPy copy of each tensor as it is computed (an
    in-place op later in the module changes the tensor objects, not the copies)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if module.training:
        raise ValueError(
            f"{type(module).__name__} is in training mode; call module.eval() first (dropout and "
            "batch norm differ in training)"
        )
    args = _example(torch, example_input)
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    for path, m in module.named_modules():
        if isinstance(m, (ObserverBase, FakeQuantizeBase)):
            raise ValueError(
                f"module {path!r} is an observer ({type(m).__name__}): {type(module).__name__} is "
                "prepared but not converted; call torch.ao.quantization.convert(model) first"
            )
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:
        raise ValueError(
            f"torch.fx cannot trace {type(module).__name__} ({type(e).__name__}: {e}); forward() "
            "must not branch on tensor values"
        ) from e
    values = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            values[n.name] = v
            if snapshot is not None and isinstance(v, torch.Tensor):
                d = v.detach()
                snapshot[n.name] = (d.int_repr() if d.is_quantized else d).contiguous().numpy().copy()
            return v

    try:
        with torch.no_grad():
            _Recorder(gm).run(*args)
    except Exception as e:
        raise ValueError(
            f"{type(module).__name__} fails on example_input ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    return gm, values


def _pair(v) -> list:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _qop(target) -> str | None:
    """``"quantized::add"`` for ``torch.ops.quantized.add`` (packet or overload), else None."""
    name = getattr(target, "_qualified_op_name", None)
    if name is None and hasattr(target, "_overloadpacket"):
        name = getattr(target._overloadpacket, "_qualified_op_name", None)
    return name


def _bind(n, names, defaults):
    """The arguments of fx node ``n`` as a dict over ``names`` (positional, then keyword)."""
    out = dict(defaults)
    if len(n.args) > len(names):
        raise ValueError(f"node {n.name!r}: {len(n.args)} positional arguments, expected at most {len(names)}")
    out.update(zip(names, n.args))
    for k, v in n.kwargs.items():
        if k not in names:
            raise ValueError(f"node {n.name!r}: unsupported keyword argument {k!r}")
        out[k] = v
    missing = [k for k in names if k not in out]
    if missing:
        raise ValueError(f"node {n.name!r}: missing argument {missing[0]!r}")
    return out


class _Converter:
    """One pass over a traced module's fx graph, emitting :class:`~npquant.models.graph.Node`."""

    def __init__(self, torch, gm, values, *, quantized: bool, accumulation: str):
        self.torch, self.gm, self.values = torch, gm, values
        self.quantized, self.accumulation = quantized, accumulation
        self.modules = dict(gm.named_modules())
        self.nodes, self.names, self.alias = [], set(), {}
        self.inputs, self.outputs = [], []
        self.dims = {}  # fx name -> (tensor fx name, axis) of x.size(i) / x.shape[i]
        self.shapes = {}  # fx name -> tensor fx name of x.size() / x.shape

    # -- helpers

    def is_tensor(self, a) -> bool:
        return isinstance(a, self.torch.fx.Node) and isinstance(self.values.get(a.name), self.torch.Tensor)

    def ref(self, n, a) -> str:
        if not self.is_tensor(a):
            raise ValueError(
                f"node {n.name!r} ({self.what(n)}): argument {a!r} is not a tensor; only tensor "
                "arguments are supported here"
            )
        return self.alias.get(a.name, a.name)

    def value(self, a):
        return self.values[a.name]

    def is_q(self, a) -> bool:
        return self.value(a).is_quantized

    def const(self, n, a):
        """A non-tensor argument: a constant, or the value an fx node had on the example."""
        if isinstance(a, self.torch.fx.Node):
            if self.is_tensor(a):
                raise ValueError(f"node {n.name!r} ({self.what(n)}): a tensor where a constant is expected")
            return self.values[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.const(n, v) for v in a)
        return a

    def what(self, n) -> str:
        if n.op == "call_module":
            return f"module {n.target!r} of type {type(self.modules[n.target]).__name__}"
        if n.op == "call_method":
            return f"method Tensor.{n.target}"
        return f"function {getattr(n.target, '__name__', None) or n.target}"

    def unsupported(self, n, why: str = ""):
        raise ValueError(
            f"node {n.name!r}: {self.what(n)} is not supported{': ' + why if why else ''} "
            f"(from_torch: {', '.join(FLOAT_SUPPORTED)}"
            + (f"; from_torch_quantized also: {', '.join(QUANTIZED_SUPPORTED)}" if self.quantized else "")
            + ")"
        )

    def need_quantized(self, n):
        if not self.quantized:
            raise ValueError(
                f"node {n.name!r}: {self.what(n)} works on quantized tensors; use "
                "npquant.importers.torch.from_torch_quantized for a quantized module"
            )

    def emit(self, n, op, inputs, attrs=None, params=None, name=None):
        name = name if name and name not in self.names else n.name
        if name in self.names:  # a module path may equal an fx name used before
            name = f"{name}_{len(self.nodes)}"
        self.names.add(name)
        self.nodes.append(_graph.Node(name, op, inputs, [n.name], attrs or {}, params or {}))

    def same(self, n, a):
        """Node ``n`` passes its tensor argument ``a`` through unchanged."""
        self.alias[n.name] = self.ref(n, a)

    @staticmethod
    def act_qp(scale, zero_point, dtype_is_signed: bool) -> dict:
        return {
            "scale": float(np.float32(scale)),
            "zero_point": int(zero_point),
            "bits": 8,
            "signed": bool(dtype_is_signed),
        }

    def qp_of(self, v) -> dict:
        return self.act_qp(v.q_scale(), v.q_zero_point(), v.dtype == self.torch.qint8)

    def channels_last(self, tensors) -> bool:
        cl = self.torch.channels_last
        return all(t.dim() == 4 and t.is_contiguous(memory_format=cl) for t in tensors)

    # -- the pass

    def run(self):
        torch = self.torch
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if not self.is_tensor(n):
                    raise ValueError(f"input {n.name!r} of forward() got no tensor from example_input")
                if self.is_q(n):
                    raise ValueError(
                        f"input {n.name!r} is a quantized tensor; give float input (the module "
                        "quantizes it with a QuantStub)"
                    )
                self.inputs.append(n.name)
            elif n.op == "output":
                outs = n.args[0]
                outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
                for a in outs:
                    self.outputs.append(self.ref(n, a))
            elif n.op == "get_attr":
                if isinstance(self.values.get(n.name), torch.Tensor):
                    raise ValueError(
                        f"node {n.name!r}: forward() reads the tensor {n.target!r} directly; only "
                        "module calls and the functions listed in from_torch's docstring are "
                        "supported"
                    )
            elif not isinstance(self.values.get(n.name), torch.Tensor):
                self.non_tensor(n)
            elif n.op == "call_module":
                self.module(n, self.modules[n.target])
            elif n.op == "call_function":
                self.function(n)
            else:
                self.method(n)
        return self.nodes, self.inputs, self.outputs

    def non_tensor(self, n):
        """Shape arithmetic (``x.size(0)``, ``x.shape[1]``): no node; its example value is used."""
        v = self.values.get(n.name)
        plain = (int, float, bool, self.torch.Size, type(None))
        if not (isinstance(v, plain) or (isinstance(v, (tuple, list)) and all(isinstance(e, int) for e in v))):
            self.unsupported(n, f"it returns {type(v).__name__}, not a tensor")
        if n.op == "call_method" and n.target == "size" and self.is_tensor(n.args[0]):
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if dim is None:
                self.shapes[n.name] = n.args[0].name
            else:
                self.dims[n.name] = (n.args[0].name, int(dim) % self.value(n.args[0]).dim())
        elif (
            n.op == "call_function"
            and n.target is getattr
            and len(n.args) == 2
            and n.args[1] == "shape"
            and self.is_tensor(n.args[0])
        ):
            self.shapes[n.name] = n.args[0].name
        elif (
            n.op == "call_function"
            and n.target is operator.getitem
            and isinstance(n.args[0], self.torch.fx.Node)
            and n.args[0].name in self.shapes
            and isinstance(n.args[1], int)
        ):
            t = self.shapes[n.args[0].name]
            self.dims[n.name] = (t, n.args[1] % self.values[t].dim())

    # -- modules

    def module(self, n, m):
        torch = self.torch
        nn, nnq = torch.nn, torch.ao.nn.quantized
        from torch.ao.quantization import DeQuantStub, QuantStub

        x = n.args[0] if n.args else None
        if len(n.args) != 1 or n.kwargs:
            self.unsupported(n, "only modules called on one tensor are supported")
        if isinstance(m, nnq.Quantize):
            self.need_quantized(n)
            self.emit(
                n,
                "quantize",
                [self.ref(n, x)],
                {"output": self.act_qp(float(m.scale), int(m.zero_point), m.dtype == torch.qint8), "method": "torch"},
                name=n.target,
            )
        elif isinstance(m, nnq.DeQuantize):
            self.need_quantized(n)
            self.emit(n, "dequantize", [self.ref(n, x)], name=n.target)
        elif isinstance(m, (nnq.dynamic.Linear,)):
            self.unsupported(n, "dynamic quantization (float activations) is not an integer model")
        elif isinstance(m, (nnq.Linear, nnq.Conv2d)):
            self.need_quantized(n)
            self.quantized_gemm(n, m, x)
        elif isinstance(m, nnq.ReLU6):
            self.need_quantized(n)
            self.emit(n, "qrelu", [self.ref(n, x)], {"activation": "relu6", "mode": "torch"}, name=n.target)
        elif type(m).__module__.startswith(
            ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized")
        ):
            self.unsupported(n)
        elif isinstance(m, nn.Linear):
            self.emit(n, "linear", [self.ref(n, x)], params=self.float_params(m, "weight", "bias"), name=n.target)
        elif isinstance(m, nn.Conv2d):
            self.emit(
                n,
                "conv2d",
                [self.ref(n, x)],
                self.conv_attrs(n, m),
                self.float_params(m, "weight", "bias"),
                name=n.target,
            )
        elif isinstance(m, nn.BatchNorm2d):
            if m.running_mean is None or m.running_var is None:
                self.unsupported(n, "a batch norm without running statistics (track_running_stats=False)")
            c = m.num_features
            params = {
                "weight": m.weight if m.affine else torch.ones(c),
                "bias": m.bias if m.affine else torch.zeros(c),
                "running_mean": m.running_mean,
                "running_var": m.running_var,
            }
            self.emit(
                n,
                "batchnorm2d",
                [self.ref(n, x)],
                {"eps": float(m.eps)},
                {k: v.detach().cpu().numpy().astype(np.float32) for k, v in params.items()},
                name=n.target,
            )
        elif isinstance(m, nn.ReLU6) or (type(m) is nn.Hardtanh and (m.min_val, m.max_val) == (0.0, 6.0)):
            self.relu(n, x, "relu6", name=n.target)
        elif isinstance(m, nn.ReLU):
            self.relu(n, x, "relu", name=n.target)
        elif isinstance(m, nn.MaxPool2d):
            self.pool(
                n,
                x,
                "max",
                dict(
                    kernel_size=m.kernel_size,
                    stride=m.stride,
                    padding=m.padding,
                    dilation=m.dilation,
                    ceil_mode=m.ceil_mode,
                    return_indices=m.return_indices,
                ),
                name=n.target,
            )
        elif isinstance(m, nn.AvgPool2d):
            self.pool(
                n,
                x,
                "avg",
                dict(
                    kernel_size=m.kernel_size,
                    stride=m.stride,
                    padding=m.padding,
                    ceil_mode=m.ceil_mode,
                    count_include_pad=m.count_include_pad,
                    divisor_override=m.divisor_override,
                ),
                name=n.target,
            )
        elif isinstance(m, nn.Flatten):
            self.flatten(n, x, m.start_dim, m.end_dim, name=n.target)
        elif isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd, QuantStub, DeQuantStub)):
            self.same(n, x)
        else:
            self.unsupported(n)

    @staticmethod
    def float_params(m, *names) -> dict:
        return {
            k: getattr(m, k).detach().cpu().numpy().astype(np.float32) for k in names if getattr(m, k, None) is not None
        }

    def conv_attrs(self, n, m) -> dict:
        if m.padding_mode != "zeros":
            self.unsupported(n, f"padding_mode={m.padding_mode!r} (only 'zeros')")
        pad = m.padding
        if isinstance(pad, str):
            k = _pair(m.kernel_size)
            d = _pair(m.dilation)
            total = [d[i] * (k[i] - 1) for i in range(2)]
            if pad == "valid":
                pad = (0, 0)
            elif all(t % 2 == 0 for t in total):
                pad = (total[0] // 2, total[1] // 2)
            else:
                self.unsupported(n, "padding='same' that pads one side more than the other")
        return {
            "stride": _pair(m.stride),
            "padding": _pair(pad),
            "dilation": _pair(m.dilation),
            "groups": int(m.groups),
        }

    def quantized_gemm(self, n, m, x):
        torch = self.torch
        nniq = torch.ao.nn.intrinsic.quantized
        w = m.weight()
        scheme = w.qscheme()
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale, zp = np.array(w.q_scale(), np.float32), np.array(w.q_zero_point(), np.int32)
        elif scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            if w.q_per_channel_axis() != 0:
                self.unsupported(n, f"per-channel weights along axis {w.q_per_channel_axis()} (only 0)")
            scale = w.q_per_channel_scales().numpy().astype(np.float32)
            zp = w.q_per_channel_zero_points().numpy().astype(np.int32)
        else:
            self.unsupported(n, f"weight quantization scheme {scheme}")
        if w.dtype != torch.qint8:
            self.unsupported(n, f"weights of dtype {w.dtype} (fbgemm takes qint8)")
        params = {"weight": w.int_repr().numpy(), "weight_scale": scale, "weight_zero_point": zp}
        bias = m.bias()
        if bias is not None:
            params["bias"] = bias.detach().numpy().astype(np.float32)
        relu = isinstance(m, (nniq.LinearReLU, nniq.ConvReLU2d))
        out = self.value(n)
        attrs = {
            "output": self.act_qp(m.scale, m.zero_point, out.dtype == torch.qint8),
            "mode": "fp32",
            "activation": "relu" if relu else None,
            "accumulation": self.accumulation,
        }
        if isinstance(m, torch.ao.nn.quantized.Conv2d):
            if type(m).__name__ not in ("Conv2d", "ConvReLU2d"):
                self.unsupported(n)
            attrs.update(self.conv_attrs(n, m))
            self.emit(n, "qconv2d", [self.ref(n, x)], attrs, params, name=n.target)
        else:
            if type(m).__name__ not in ("Linear", "LinearReLU"):
                self.unsupported(n)
            self.emit(n, "qlinear", [self.ref(n, x)], attrs, params, name=n.target)

    def relu(self, n, x, kind, name=None):
        if self.is_q(x):
            self.need_quantized(n)
            self.emit(n, "qrelu", [self.ref(n, x)], {"activation": kind, "mode": "torch"}, name=name)
        else:
            self.emit(n, kind, [self.ref(n, x)], name=name)

    def pool(self, n, x, kind, a, name=None):
        spec = {"type": f"{kind}pool2d", **a}
        keys = ("dilation", "ceil_mode") if kind == "max" else ("ceil_mode", "divisor_override")
        if a.get("return_indices"):
            self.unsupported(n, "return_indices=True")
        try:
            _nn._plain_pool(spec, name or n.name, keys)
        except ValueError as e:
            raise ValueError(f"node {n.name!r}: {e}") from None
        k = _pair(a["kernel_size"])
        attrs = {
            "kernel_size": k,
            "stride": k if a["stride"] in (None, []) else _pair(a["stride"]),
            "padding": _pair(a["padding"]),
        }
        if self.is_q(x):
            self.need_quantized(n)
            if kind == "avg":
                attrs.update(mode="torch", count_include_pad=bool(a["count_include_pad"]))
            self.emit(n, f"q{kind}pool2d", [self.ref(n, x)], attrs, name=name)
        else:
            if kind == "avg":
                attrs["count_include_pad"] = bool(a["count_include_pad"])
            self.emit(n, f"{kind}pool2d", [self.ref(n, x)], attrs, name=name)

    def flatten(self, n, x, start, end, name=None):
        ndim = self.value(x).dim()
        if ndim < 2 or start % ndim != 1 or end % ndim != ndim - 1:
            self.unsupported(
                n, f"flatten(start_dim={start}, end_dim={end}) of a {ndim}-D tensor (only start_dim=1 to the last axis)"
            )
        self.emit(n, "qflatten" if self.is_q(x) else "flatten", [self.ref(n, x)], name=name)

    def reshape(self, n, x, shape):
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        target = []
        for i, d in enumerate(shape):
            src = self.dims.get(d.name) if isinstance(d, self.torch.fx.Node) else None
            if i == 0 and src is not None and src[1] == 0 and self.values[src[0]].shape[0] == self.value(x).shape[0]:
                target.append(0)  # the batch size (axis 0 of a tensor with the input's batch): kept symbolic
            else:
                v = self.const(n, d)
                if not isinstance(v, int):
                    self.unsupported(n, f"shape entry {v!r}")
                target.append(v)
        if 0 in target[1:]:
            self.unsupported(n, "a size of 0")
        self.emit(n, "qreshape" if self.is_q(x) else "reshape", [self.ref(n, x)], {"shape": target})

    def add(self, n, a, b, relu=False, out_qp=None):
        if not (self.is_tensor(a) and self.is_tensor(b)):
            self.unsupported(n, "adding a constant (only tensor + tensor)")
        va, vb = self.value(a), self.value(b)
        if va.shape != vb.shape:
            self.unsupported(n, f"broadcasting add of shapes {tuple(va.shape)} and {tuple(vb.shape)}")
        if not va.is_quantized:
            self.emit(n, "add", [self.ref(n, a), self.ref(n, b)])
            return
        self.need_quantized(n)
        # PyTorch's output takes the first operand's memory format, and its loop runs in the
        # output's element order (mixed formats included: measured, torch 2.13)
        if self.channels_last([va]) and not va.is_contiguous():
            fmt = "channels_last"
        elif va.is_contiguous():
            fmt = "contiguous"
        else:
            self.unsupported(n, "a quantized add whose first operand is neither contiguous nor channels-last")
        if va.numel() >= _ADD_ONE_CHUNK and self.torch.get_num_threads() > 1:
            warnings.warn(
                f"node {n.name!r}: PyTorch splits a quantized add of {va.numel()} elements across "
                f"{self.torch.get_num_threads()} threads, which moves its vector/scalar boundary; npquant "
                "reproduces the one-thread result (torch.set_num_threads(1))",
                RuntimeWarning,
                stacklevel=4,
            )
        self.emit(
            n,
            "qadd",
            [self.ref(n, a), self.ref(n, b)],
            {"output": out_qp, "mode": "torch", "activation": "relu" if relu else None, "memory_format": fmt},
        )

    def cat(self, n, tensors, dim, out_qp=None):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            self.unsupported(n, "cat of something other than a list of tensors")
        refs = [self.ref(n, t) for t in tensors]
        vals = [self.value(t) for t in tensors]
        dim = int(self.const(n, dim)) % vals[0].dim()
        qs = {v.is_quantized for v in vals}
        if qs == {False}:
            self.emit(n, "concat", refs, {"axis": dim})
            return
        if qs != {True}:
            self.unsupported(n, "cat of float and quantized tensors")
        self.need_quantized(n)
        fmt = "channels_last" if dim == 1 and self.channels_last(vals) else "contiguous"
        self.emit(
            n,
            "qconcat",
            refs,
            {"output": out_qp or self.qp_of(self.value(n)), "axis": dim, "mode": "torch", "memory_format": fmt},
        )

    # -- functions and methods

    def function(self, n):
        torch = self.torch
        F = torch.nn.functional
        t = n.target
        q = _qop(t)
        if q in ("quantized::add", "quantized::add_relu"):
            self.need_quantized(n)
            a = _bind(n, ("qa", "qb", "scale", "zero_point"), {})
            out = self.value(n)
            self.add(
                n,
                a["qa"],
                a["qb"],
                relu=q.endswith("relu"),
                out_qp=self.act_qp(a["scale"], a["zero_point"], out.dtype == torch.qint8),
            )
        elif q == "quantized::cat":
            self.need_quantized(n)
            a = _bind(n, ("qx", "dim", "scale", "zero_point"), {"scale": None, "zero_point": None})
            out = self.value(n)
            self.cat(n, a["qx"], a["dim"], out_qp=self.qp_of(out))
        elif q is not None:
            self.unsupported(n)
        elif t in (operator.add, operator.iadd, torch.add):
            a = _bind(n, ("input", "other", "alpha"), {"alpha": 1})
            if self.const(n, a["alpha"]) != 1:
                self.unsupported(n, "alpha != 1")
            self.add(n, a["input"], a["other"])
        elif t in (F.relu, torch.relu, torch.relu_):
            self.relu(n, _bind(n, ("input", "inplace"), {"inplace": False})["input"], "relu")
        elif t is F.relu6:
            self.relu(n, _bind(n, ("input", "inplace"), {"inplace": False})["input"], "relu6")
        elif t is F.max_pool2d:
            a = _bind(
                n,
                ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
            )
            self.pool(n, a.pop("input"), "max", {k: self.const(n, v) for k, v in a.items()})
        elif t is F.avg_pool2d:
            a = _bind(
                n,
                ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
            )
            self.pool(n, a.pop("input"), "avg", {k: self.const(n, v) for k, v in a.items()})
        elif t is torch.flatten:
            a = _bind(n, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(n, a["input"], self.const(n, a["start_dim"]), self.const(n, a["end_dim"]))
        elif t in (torch.cat, torch.concat, torch.concatenate):
            a = _bind(n, ("tensors", "dim"), {"dim": 0})
            self.cat(n, a["tensors"], a["dim"])
        elif t is torch.reshape:
            a = _bind(n, ("input", "shape"), {})
            self.reshape(n, a["input"], [a["shape"]])
        elif t in (F.dropout, F.dropout2d, torch.dropout):
            a = _bind(n, ("input", "p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False})
            if self.const(n, a["training"]):
                self.unsupported(n, "dropout in training mode")
            self.same(n, a["input"])
        elif t is torch.quantize_per_tensor:
            self.need_quantized(n)
            a = _bind(n, ("input", "scale", "zero_point", "dtype"), {})
            self.emit(
                n,
                "quantize",
                [self.ref(n, a["input"])],
                {
                    "output": self.act_qp(
                        self.const(n, a["scale"]),
                        self.const(n, a["zero_point"]),
                        self.const(n, a["dtype"]) == torch.qint8,
                    ),
                    "method": "torch",
                },
            )
        else:
            self.unsupported(n)

    def method(self, n):
        m = n.target
        x = n.args[0]
        if m in ("view", "reshape"):
            self.reshape(n, x, list(n.args[1:]))
        elif m == "flatten":
            a = _bind(n, ("self", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(n, x, self.const(n, a["start_dim"]), self.const(n, a["end_dim"]))
        elif m in ("relu", "relu_"):
            self.relu(n, x, "relu")
        elif m in ("add", "add_"):
            a = _bind(n, ("self", "other", "alpha"), {"alpha": 1})
            if self.const(n, a["alpha"]) != 1:
                self.unsupported(n, "alpha != 1")
            self.add(n, x, a["other"])
        elif m == "contiguous":
            self.same(n, x)
        elif m == "dequantize":
            self.need_quantized(n)
            self.emit(n, "dequantize", [self.ref(n, x)])
        else:
            self.unsupported(n)


def _check_against_torch(torch, g, values):
    """Every tensor of ``g`` is quantized exactly where PyTorch's is, with PyTorch's qparams."""
    for t in g.tensors:
        v = values.get(t)
        if not isinstance(v, torch.Tensor):
            continue
        qp = g.qparams.get(t)
        if v.is_quantized != (qp is not None):
            raise ValueError(
                f"tensor {t!r}: PyTorch's is {'quantized' if v.is_quantized else 'float'}, npquant's "
                f"{'integer codes' if qp is not None else 'float'}"
            )
        if qp is not None and (
            np.float32(v.q_scale()) != np.float32(qp.scale) or int(v.q_zero_point()) != int(qp.zero_point)
        ):
            raise ValueError(
                f"tensor {t!r}: npquant derives scale {float(qp.scale)!r} and zero point "
                f"{int(qp.zero_point)}, PyTorch has {v.q_scale()!r} and {v.q_zero_point()}"
            )


def _convert_module(
    module, example_input, *, quantized: bool, accumulation: str = "fbgemm", fold_batchnorm: bool = True, name=None
):
    torch = _torch()
    gm, values = _trace(torch, module, example_input)
    conv = _Converter(torch, gm, values, quantized=quantized, accumulation=accumulation)
    nodes, inputs, outputs = conv.run()
    if not quantized:
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.is_quantized:
                raise ValueError(
                    f"node {k!r} produces a quantized tensor; use from_torch_quantized for a quantized module"
                )
    g = _graph.Graph(nodes, inputs, outputs, name=name or type(module).__name__)
    _check_against_torch(torch, g, values)
    if quantized and g.kind == "float":
        raise ValueError(
            f"{type(module).__name__} has no quantized layer: is it converted "
            "(torch.ao.quantization.convert)? Use from_torch for a float module"
        )
    return _graph.fold_batchnorm(g) if fold_batchnorm else g


def from_torch(
    module: torch.nn.Module,
    example_input: torch.Tensor | np.ndarray | tuple,
    *,
    fold_batchnorm: bool = True,
    name: str | None = None,
) -> _graph.Graph:
    """A float :class:`~npquant.models.graph.Graph` of a float PyTorch module.

    The module is traced with ``torch.fx.symbolic_trace`` and run once on
    ``example_input``. Translated (:data:`FLOAT_SUPPORTED`): ``nn.Linear``, ``nn.Conv2d``
    (stride, padding incl. ``'valid'`` and symmetric ``'same'``, dilation, groups, bias
    optional; ``padding_mode='zeros'``), ``nn.BatchNorm2d`` (eval statistics), ``nn.ReLU`` /
    ``F.relu`` / ``torch.relu``, ``nn.ReLU6`` / ``F.relu6``, ``nn.MaxPool2d`` /
    ``F.max_pool2d`` and ``nn.AvgPool2d`` / ``F.avg_pool2d`` (``dilation != 1``,
    ``ceil_mode=True`` and ``divisor_override`` are refused), ``nn.Flatten`` /
    ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)`` and other reshapes (a first size
    read from axis 0 of a tensor with the same batch size, ``x.size(0)`` or ``x.shape[0]``,
    stays symbolic: the batch; other sizes are fixed at their example value),
    tensor ``+`` tensor (``operator.add``, ``torch.add``, ``FloatFunctional.add``, same
    shapes), ``torch.cat``, ``nn.Identity``, ``nn.Dropout`` (identity in eval),
    ``QuantStub`` / ``DeQuantStub`` (identity in a float model).

    Parameters
    ----------
    module : torch.nn.Module
        In eval mode.
    example_input : torch.Tensor, numpy.ndarray, or tuple of them
        One input per argument of ``forward``; its shapes fix the reshapes' non-batch sizes.
    fold_batchnorm : bool
        Fold each batch norm into the conv before it (:func:`npquant.models.graph.fold_batchnorm`);
        the folded conv's output takes the batch norm's tensor name.
    name : str, optional
        The graph's name (default: the module's class name).

    Returns
    -------
    Graph
        Float32 computation; its outputs equal PyTorch's to float32 rounding (within
        1e-5 on the tested models). Tensor names are the ``torch.fx`` node names.

    Raises
    ------
    ModuleNotFoundError
        torch is not installed (the message names the ``peers`` extra).
    ValueError
        A call that is not supported (the message names the fx node and the module,
        function or method), a module in training mode, or a quantized module.
    """
    check_bool(fold_batchnorm, "fold_batchnorm")
    return _convert_module(module, example_input, quantized=False, fold_batchnorm=fold_batchnorm, name=name)


def from_torch_quantized(
    module: torch.nn.Module,
    example_input: torch.Tensor | np.ndarray | tuple,
    *,
    accumulation: str = "fbgemm",
    name: str | None = None,
) -> _graph.Graph:
    """An integer :class:`~npquant.models.graph.Graph` of a PyTorch eager-mode quantized module.

    ``module`` is the result of ``torch.ao.quantization.convert`` (after
    ``fuse_modules``, ``prepare`` and calibration). Translated, besides the float calls of
    :func:`from_torch` (:data:`QUANTIZED_SUPPORTED`): ``QuantStub`` (``nnq.Quantize``, as
    ``torch.quantize_per_tensor``: ``quantize`` with ``method="torch"``), ``DeQuantStub``,
    quantized ``Linear`` / ``LinearReLU`` / ``Conv2d`` / ``ConvReLU2d`` (int8 weights
    per tensor or per channel, float bias: ``mode="fp32"`` with fbgemm's float-bias
    requantization), ``nnq.ReLU6`` and ``nn.ReLU`` / ``F.relu`` / ``F.relu6`` on quantized
    tensors (``qrelu`` with PyTorch's rounding of the code of 6), ``nn.MaxPool2d`` /
    ``nn.AvgPool2d`` on quantized tensors (PyTorch's half-to-even average,
    ``count_include_pad`` either way), ``FloatFunctional`` ``add`` / ``add_relu``
    (``quantized::add``; in NHWC element order for channels-last tensors, as PyTorch
    iterates them) and ``cat`` (``quantized::cat``, generic or channels-last kernel as
    PyTorch picks it from the example's memory formats), flatten and reshapes.

    Parameters
    ----------
    module : torch.nn.Module
        A converted quantized module, in eval mode.
    example_input : torch.Tensor, numpy.ndarray, or tuple of them
        Float input(s); it decides the memory formats PyTorch uses (channels-last after a
        quantized conv) and the fixed sizes of reshapes.
    accumulation : str
        The accumulation of every linear and conv node (:mod:`npquant.qnn.accumulation`):
        the default ``"fbgemm"`` is the path fbgemm takes on the CPU at hand (exact with
        AVX-512 VNNI except its depthwise kernel, int16 pair saturation without VNNI,
        following ``FBGEMM_ENABLE_INSTRUCTIONS``), resolved when the graph is built or
        loaded; ``"fbgemm_avx2"`` / ``"fbgemm_vnni"`` name a path; ``"exact"`` is the
        mathematically exact sum.
    name : str, optional
        The graph's name (default: the module's class name).

    Returns
    -------
    Graph
        Float input, ``quantize`` node(s), integer nodes on uint8 codes, ``dequantize``
        node(s). With the ``accumulation`` of the CPU and fbgemm as PyTorch's quantized
        engine, every integer tensor equals PyTorch's ``int_repr()`` bit for bit and every
        dequantized output its float32 values (torch 2.13; quantized adds of fewer than
        32768 elements or on one torch thread).

    Raises
    ------
    ModuleNotFoundError
        torch is not installed (the message names the ``peers`` extra).
    ValueError
        An unsupported call (naming the fx node and the module, function or method), a
        prepared but not converted module, a module without quantized layers, or qparams
        that differ from PyTorch's for some tensor.
    """
    check_accumulation(accumulation)
    return _convert_module(
        module, example_input, quantized=True, accumulation=accumulation, fold_batchnorm=False, name=name
    )


def torch_intermediates(module: torch.nn.Module, example_input: torch.Tensor | np.ndarray | tuple) -> dict:
    """PyTorch's value of every tensor of ``module`` run on ``example_input``, by the names
    :func:`from_torch` and :func:`from_torch_quantized` give the graph's tensors.

    Parameters
    ----------
    module : torch.nn.Module
        In eval mode.
    example_input : torch.Tensor, numpy.ndarray, or tuple of them

    Returns
    -------
    dict of str to numpy.ndarray
        ``{fx node name: value}`` for every node whose value is a tensor, copied as it is
        computed (before any in-place op of the module changes it): the integer codes
        (``int_repr()``, uint8 / int8) of a quantized tensor, the values of a float one.
        The graph's tensors are a subset (nodes that pass a tensor through, such as
        ``nn.Identity``, have the same value under their own name).
    """
    torch = _torch()
    out = {}
    _trace(torch, module, example_input, snapshot=out)
    return out
