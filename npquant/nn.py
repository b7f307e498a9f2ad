"""Float layers and models in NumPy (forward only), for the reference models.

Layouts follow PyTorch: linear weights ``(out, in)``, conv weights ``(O, I/groups, kh,
kw)``, activations NCHW. Arithmetic is float32 throughout (inputs are converted), so
that a model reproduces PyTorch's float32 logits to rounding error. A model is a
:class:`Sequential` of layers; :func:`build_model` makes one from an architecture
description (``__arch__`` of the reference ``.npz`` files) and a state dict.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_float_array, check_int, check_pair


def _param(a, name: str, shape) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Linear:
    """``y = x W^T + b``; ``x`` (..., in) float32 -> (..., out)."""

    def __init__(self, weight, bias=None, *, name: str = "linear"):
        w = np.asarray(weight)
        if w.ndim != 2:
            raise ValueError(f"{name}.weight must be (out, in), got shape {w.shape}")
        self.weight = _param(w, f"{name}.weight", w.shape)
        self.bias = None if bias is None else _param(bias, f"{name}.bias", (w.shape[0],))
        self.name = name

    def __call__(self, x):
        x = as_float_array(x, "x")
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"{self.name}: x has {x.shape[-1]} features, the layer takes {self.weight.shape[1]}")
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def _im2col(x, kh, kw, stride, padding, dilation, pad_value=0.0):
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the {kh}x{kw} window does not fit the padded {h}x{w} input")
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    cols = np.empty((n, c, kh, kw, oh, ow), x.dtype)
    for a in range(kh):
        for b in range(kw):
            r, s = a * dh, b * dw
            cols[:, :, a, b] = xp[:, :, r:r + sh * (oh - 1) + 1:sh, s:s + sw * (ow - 1) + 1:sw]
    return cols, oh, ow


class Conv2d:
    """2-D convolution (cross-correlation, as PyTorch), NCHW float32, with stride,
    symmetric zero padding, dilation and groups."""

    def __init__(self, weight, bias=None, *, stride=1, padding=0, dilation=1, groups: int = 1,
                 name: str = "conv"):
        w = np.asarray(weight)
        if w.ndim != 4:
            raise ValueError(f"{name}.weight must be (O, I/groups, kh, kw), got shape {w.shape}")
        self.groups = check_int(groups, "groups", lo=1)
        if w.shape[0] % self.groups:
            raise ValueError(f"{name}: {w.shape[0]} output channels are not divisible by groups={groups}")
        self.weight = _param(w, f"{name}.weight", w.shape)
        self.bias = None if bias is None else _param(bias, f"{name}.bias", (w.shape[0],))
        self.stride = check_pair(stride, "stride", lo=1)
        self.padding = check_pair(padding, "padding", lo=0)
        self.dilation = check_pair(dilation, "dilation", lo=1)
        self.name = name

    def __call__(self, x):
        x = as_float_array(x, "x")
        o, cg, kh, kw = self.weight.shape
        if x.ndim != 4 or x.shape[1] != cg * self.groups:
            raise ValueError(f"{self.name}: x must be NCHW with {cg * self.groups} channels, got shape {x.shape}")
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, self.dilation)
        n = x.shape[0]
        og = o // self.groups
        out = np.empty((n, o, oh, ow), np.float32)
        for g in range(self.groups):
            c = cols[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, oh * ow)
            wg = self.weight[g * og:(g + 1) * og].reshape(og, cg * kh * kw)
            out[:, g * og:(g + 1) * og] = np.matmul(wg, c).reshape(n, og, oh, ow)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


class BatchNorm2d:
    """Inference batch norm: ``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel."""

    def __init__(self, weight, bias, running_mean, running_var, *, eps: float = 1e-5, name: str = "bn"):
        c = np.asarray(weight).shape
        if len(c) != 1:
            raise ValueError(f"{name}.weight must be 1-D, got shape {c}")
        self.weight = _param(weight, f"{name}.weight", c)
        self.bias = _param(bias, f"{name}.bias", c)
        self.running_mean = _param(running_mean, f"{name}.running_mean", c)
        self.running_var = _param(running_var, f"{name}.running_var", c)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps}")
        self.eps = float(eps)
        self.name = name

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(scale, shift)`` with ``bn(x) = x * scale + shift`` (float32)."""
        scale = (self.weight / np.sqrt(self.running_var + np.float32(self.eps))).astype(np.float32)
        return scale, (self.bias - self.running_mean * scale).astype(np.float32)

    def __call__(self, x):
        x = as_float_array(x, "x")
        if x.ndim != 4 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"{self.name}: x must be NCHW with {self.weight.shape[0]} channels, got {x.shape}")
        shape = (1, -1, 1, 1)
        inv = np.sqrt(self.running_var + np.float32(self.eps)).reshape(shape)
        return (x - self.running_mean.reshape(shape)) / inv * self.weight.reshape(shape) + self.bias.reshape(shape)


class ReLU:
    def __call__(self, x):
        return np.maximum(as_float_array(x, "x"), np.float32(0))


class ReLU6:
    def __call__(self, x):
        return np.clip(as_float_array(x, "x"), np.float32(0), np.float32(6))


class MaxPool2d:
    """Max pooling, NCHW; padding positions never win (they hold -inf)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = check_pair(kernel_size, "kernel_size", lo=1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, "stride", lo=1)
        self.padding = check_pair(padding, "padding", lo=0)

    def __call__(self, x):
        x = as_float_array(x, "x")
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW, got shape {x.shape}")
        kh, kw = self.kernel_size
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, (1, 1), pad_value=-np.inf)
        return cols.max(axis=(2, 3))


class AvgPool2d:
    """Average pooling, NCHW; ``count_include_pad`` as PyTorch (default True)."""

    def __init__(self, kernel_size, stride=None, padding=0, *, count_include_pad: bool = True):
        self.kernel_size = check_pair(kernel_size, "kernel_size", lo=1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, "stride", lo=1)
        self.padding = check_pair(padding, "padding", lo=0)
        self.count_include_pad = bool(count_include_pad)

    def __call__(self, x):
        x = as_float_array(x, "x")
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW, got shape {x.shape}")
        kh, kw = self.kernel_size
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, (1, 1))
        if self.count_include_pad:
            return cols.sum(axis=(2, 3)) / np.float32(kh * kw)
        ones, _, _ = _im2col(np.ones((1, 1) + x.shape[2:], np.float32), kh, kw, self.stride, self.padding, (1, 1))
        return cols.sum(axis=(2, 3)) / ones.sum(axis=(2, 3))


class Flatten:
    """(N, ...) -> (N, prod(...)) in C order, as ``torch.flatten(x, 1)``."""

    def __call__(self, x):
        x = as_float_array(x, "x")
        return x.reshape(x.shape[0], -1)


class Sequential:
    """Layers applied in order; ``model(x)`` returns the last output."""

    def __init__(self, layers):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not callable(layer):
                raise TypeError(f"layers[{i}] is not callable: {layer!r}")

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)


class Residual:
    """``body(x) + shortcut(x)`` (shortcut: identity by default): a residual add."""

    def __init__(self, body, shortcut=None):
        self.body, self.shortcut = body, shortcut

    def __call__(self, x):
        x = as_float_array(x, "x")
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if y.shape != s.shape:
            raise ValueError(f"residual add of shapes {y.shape} and {s.shape}")
        return y + s


def add(a, b):
    """Elementwise sum of two float32 tensors of the same shape."""
    a, b = as_float_array(a, "a"), as_float_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"add of shapes {a.shape} and {b.shape}")
    return a + b


_PARAMS = {
    "linear": ("weight", "bias?"),
    "conv2d": ("weight", "bias?"),
    "batchnorm2d": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked?"),
}


def expected_keys(arch: dict) -> dict:
    """``{state-dict key: required?}`` of an architecture description."""
    out = {}
    for spec in _layers(arch):
        for p in _PARAMS.get(spec["type"], ()):
            opt = p.endswith("?")
            out[f"{spec['name']}.{p.rstrip('?')}"] = not opt
    return out


def _layers(arch) -> list:
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ValueError("arch must be a dict with a list 'layers'")
    for i, spec in enumerate(arch["layers"]):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"arch layers[{i}] must be a dict with a 'type'")
        if spec["type"] in _PARAMS and not isinstance(spec.get("name"), str):
            raise ValueError(f"arch layers[{i}] ({spec['type']}) needs a 'name'")
    return arch["layers"]


def build_model(arch: dict, state: dict) -> Sequential:
    """A :class:`Sequential` from an architecture description and a state dict.

    Missing, unexpected and mis-shaped keys are errors naming the key. Layer types:
    ``linear``, ``conv2d``, ``batchnorm2d``, ``relu``, ``relu6``, ``maxpool2d``,
    ``avgpool2d``, ``flatten`` (fields as in ``reference_models/README.md``).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
    want = expected_keys(arch)
    missing = [k for k, req in want.items() if req and k not in state]
    if missing:
        raise ValueError(f"state dict is missing {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in want and not k.startswith("__")]
    if unexpected:
        raise ValueError(f"state dict has unexpected key {unexpected[0]!r}")
    layers = []
    for spec in _layers(arch):
        t, name = spec["type"], spec.get("name", spec["type"])
        p = {k.split(".", 1)[1]: state[k] for k in state if k.startswith(name + ".")} if t in _PARAMS else {}
        if t == "linear":
            w = np.asarray(p["weight"])
            shape = (spec.get("out_features", w.shape[0]), spec.get("in_features", w.shape[-1]))
            layers.append(Linear(_param(w, f"{name}.weight", shape), p.get("bias"), name=name))
        elif t == "conv2d":
            kh, kw = check_pair(spec.get("kernel_size", np.asarray(p["weight"]).shape[2:]), "kernel_size", lo=1)
            g = spec.get("groups", 1)
            shape = (spec["out_channels"], spec["in_channels"] // g, kh, kw) if "out_channels" in spec else np.shape(p["weight"])
            layers.append(Conv2d(_param(p["weight"], f"{name}.weight", shape), p.get("bias"),
                                 stride=spec.get("stride", 1), padding=spec.get("padding", 0),
                                 dilation=spec.get("dilation", 1), groups=g, name=name))
        elif t == "batchnorm2d":
            c = spec.get("num_features", np.shape(p["weight"])[0])
            for k in ("weight", "bias", "running_mean", "running_var"):
                _param(p[k], f"{name}.{k}", (c,))
            layers.append(BatchNorm2d(p["weight"], p["bias"], p["running_mean"], p["running_var"],
                                      eps=spec.get("eps", 1e-5), name=name))
        elif t == "relu":
            layers.append(ReLU())
        elif t == "relu6":
            layers.append(ReLU6())
        elif t == "maxpool2d":
            layers.append(MaxPool2d(spec["kernel_size"], spec.get("stride"), spec.get("padding", 0)))
        elif t == "avgpool2d":
            layers.append(AvgPool2d(spec["kernel_size"], spec.get("stride"), spec.get("padding", 0),
                                    count_include_pad=spec.get("count_include_pad", True)))
        elif t == "flatten":
            layers.append(Flatten())
        else:
            raise ValueError(f"unknown layer type {t!r} in arch")
    return Sequential(layers)
