"""Float layers and models in NumPy: forward passes, and backward passes for training.

Layouts follow PyTorch: linear weights ``(out, in)``, conv weights ``(O, I/groups, kh,
kw)``, activations NCHW. Arithmetic is float32 throughout (inputs are converted), so
that a model reproduces PyTorch's float32 logits to rounding error. A model is a
:class:`Sequential` of layers; :func:`build_model` makes one from an architecture
description (``__arch__`` of the reference ``.npz`` files) and a state dict.

Training (the contract of :mod:`npquant.training`). Every layer here is a :class:`Module`:

- ``y = layer(x)`` (the same as ``layer.forward(x)``). A layer starts in *eval mode*
  (``layer.training`` is False): the forward pass is pure inference and keeps nothing.
  ``layer.train()`` (returns the layer) switches to *training mode*: the forward pass
  keeps what the backward pass needs (the input, the im2col columns of a conv, the
  normalized activations of a batch norm, the argmax of each max-pool window), and a batch
  norm normalizes with the batch statistics and updates its running statistics.
  ``layer.eval()`` switches back and drops what was kept.
- ``grad_x = layer.backward(grad_y)``: ``grad_y`` is the gradient of the loss with respect
  to the output of the *last* training-mode forward pass (same shape); the result is the
  gradient with respect to that pass's input (same shape as ``x``), and the gradients of
  the parameters are *added* to ``layer.grads`` (as PyTorch's ``.grad``: a residual's
  shared input, or several backward passes through one forward pass, accumulate). The
  backward pass uses the weight arrays of the forward pass. ``layer.zero_grad()`` sets
  every gradient to zero.
- ``layer.parameters()``: ``{name: array}`` of the live parameter arrays (an optimizer
  updates them in place); ``layer.grads``: the gradients, same names and shapes. Layers
  without parameters return ``{}``. ``layer.state_dict()`` adds the buffers (a batch
  norm's running statistics) and copies; ``layer.load_state_dict(state)`` copies into the
  live arrays.
- :class:`Sequential` and :class:`Residual` hold sub-layers and follow the same contract;
  their dicts are flat, keyed ``"<layer name>.<param>"`` (``"<name>.body.<...>"`` and
  ``"<name>.shortcut.<...>"`` for a residual), the state-dict keys of the reference models.

Arithmetic is float32; ``module.astype(np.float64)`` makes a float64 copy (parameters,
buffers, inputs and gradients in float64) that runs the same code, for gradient checks
against finite differences. Gradients of the loss are checked against PyTorch's autograd
and float64 finite differences in ``tests/test_nn_backward.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array, check_bool, check_int, check_pair

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _param(a, name: str, shape) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _is_module(layer) -> bool:
    """Whether ``layer`` follows the training contract (forward/backward/parameters/...)."""
    return all(callable(getattr(layer, a, None)) for a in ("backward", "train", "parameters", "zero_grad"))


class Module:
    """What every float layer and model shares: a name, the mode (``training``), the
    compute dtype, ``__call__ = forward``, ``train``/``eval`` and ``astype``.

    Parameters
    ----------
    name : str
        Non-empty name of the layer or model.
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.training = False
        self.dtype = np.dtype(np.float32)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def _who(self) -> str:
        return f"{self.name} ({type(self).__name__})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}{', training' if self.training else ''})"

    def train(self, mode: bool = True) -> Module:
        """Training mode (``mode=True``) or eval mode; returns ``self``."""
        self.training = check_bool(mode, "mode")
        if not self.training:
            self._drop_cache()
        return self

    def eval(self) -> Module:
        """Eval mode (inference; nothing is kept for a backward pass); returns ``self``."""
        return self.train(False)

    def _drop_cache(self):
        pass

    def _check_ready(self):
        """Raise unless a backward pass can run now (training mode, after a training forward)."""
        if not self.training:
            raise RuntimeError(f"{self._who}: backward in eval mode; call train() before the forward pass")

    def astype(self, dtype: npt.DTypeLike) -> Module:
        """A copy computing in ``dtype`` (float32 or float64): parameters, buffers and
        gradients converted, inputs converted to ``dtype``, same mode. For gradient checks."""
        dt = np.dtype(dtype)
        if dt not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        new = copy.deepcopy(self)
        new._set_dtype(dt)
        return new

    def _set_dtype(self, dt):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def load_state_dict(self, state: dict, *, strict: bool = True) -> Module:
        """Copy ``state`` (keys as :meth:`state_dict`) into the live arrays, in place, so an
        optimizer holding them sees the new values; returns ``self``. Shapes must match;
        with ``strict`` (default), missing and unexpected keys are errors naming the key
        (a batch norm's ``num_batches_tracked`` may be missing)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
        self._load(state, check_bool(strict, "strict"), "")
        return self

    def _input(self, x, name: str = "x") -> np.ndarray:
        """``x`` checked (floating point, finite, non-empty) and converted to ``self.dtype``."""
        if self.dtype == np.float32:
            return as_float_array(x, name)
        arr = np.asarray(x)
        if arr.dtype.kind != "f" or arr.size == 0 or not np.all(np.isfinite(arr)):
            as_float_array(arr, name)  # raises the error that names the argument
        return arr.astype(self.dtype, copy=False)

    def _check_grad(self, grad_y, shape) -> np.ndarray:
        g = np.asarray(grad_y)
        if g.dtype.kind != "f":
            raise TypeError(f"{self._who}: grad_y must be a floating-point array, got dtype {g.dtype}")
        if g.shape != shape:
            raise ValueError(
                f"{self._who}: grad_y has shape {g.shape}, expected {shape} "
                "(the shape of the output of the last forward pass)"
            )
        return g.astype(self.dtype, copy=False)


class Layer(Module):
    """A leaf layer: its parameters are attributes named in ``_params`` (``None`` when
    absent, e.g. a conv without bias), its buffers in ``_buffers``; ``grads`` is a dict.

    Parameters
    ----------
    name : str
        Non-empty name of the layer.
    """

    _params: tuple = ()
    _buffers: tuple = ()

    def __init__(self, name: str):
        super().__init__(name)
        self._cache = None
        self._out_shape = None
        self.grads: dict = {}
        self.zero_grad()

    def parameters(self) -> dict:
        """``{name: live array}`` of the parameters (``{}`` for a layer without any)."""
        return {p: getattr(self, p) for p in self._params if getattr(self, p) is not None}

    def zero_grad(self) -> None:
        """Set every gradient in ``grads`` to zero (reallocated if a parameter's shape changed)."""
        params = self.parameters()
        for k in [k for k in self.grads if k not in params]:
            del self.grads[k]
        for k, p in params.items():
            g = self.grads.get(k)
            if g is not None and g.shape == p.shape and g.dtype == p.dtype:
                g.fill(0)
            else:
                self.grads[k] = np.zeros_like(p)

    def _accumulate(self, name: str, g):
        p = getattr(self, name)
        buf = self.grads.get(name)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
            buf = self.grads[name] = np.zeros_like(p)
        buf += g

    def state_dict(self) -> dict:
        """Parameters and buffers (copies), ``{name: array}``."""
        out = {k: v.copy() for k, v in self.parameters().items()}
        for b in self._buffers:
            v = getattr(self, b)
            if v is not None:
                out[b] = np.array(v, copy=True)
        return out

    def _load(self, state: dict, strict: bool, prefix: str):
        own = {**self.parameters(), **{b: getattr(self, b) for b in self._buffers if getattr(self, b) is not None}}
        if strict:
            missing = [k for k in own if k not in state and k not in self._optional_state]
            unexpected = [k for k in state if k not in own]
            if missing:
                raise ValueError(f"state dict is missing {prefix + missing[0]!r}")
            if unexpected:
                raise ValueError(f"state dict has unexpected key {prefix + unexpected[0]!r}")
        for k, v in state.items():
            if k in own:
                a = np.asarray(v)
                if a.dtype.kind not in "fiu":
                    raise TypeError(f"{prefix + k} must be a real array, got dtype {a.dtype}")
                if a.shape != own[k].shape:
                    raise ValueError(f"{prefix + k} has shape {a.shape}, expected {own[k].shape}")
                np.copyto(own[k], a, casting="unsafe")

    _optional_state: tuple = ()

    def _save(self, y, *cache):
        """Return ``y``; in training mode keep ``cache`` (and ``y``'s shape) for backward."""
        if self.training:
            self._cache = cache
            self._out_shape = y.shape
        return y

    def _check_ready(self):
        super()._check_ready()
        if self._cache is None:
            raise RuntimeError(f"{self._who}: backward called before a training-mode forward pass")

    def _begin_backward(self, grad_y):
        self._check_ready()
        return self._check_grad(grad_y, self._out_shape), self._cache

    def _drop_cache(self):
        self._cache = None
        self._out_shape = None

    def _set_dtype(self, dt):
        for p in self._params + self._buffers:
            v = getattr(self, p)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                setattr(self, p, v.astype(dt))
        self.dtype = dt
        self._drop_cache()
        self.grads = {}
        self.zero_grad()

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class Linear(Layer):
    """``y = x W^T + b``; ``x`` (..., in) float32 -> (..., out).

    Backward: ``grad_W += grad_y^T x``, ``grad_b += sum(grad_y)`` (over all leading axes),
    ``grad_x = grad_y W``.

    Parameters
    ----------
    weight : real array (out, in)
        ``W``, stored as float32.
    bias : real array (out,) or None, default None
        ``b``, stored as float32; ``None``: no bias.
    name : str, default ``"linear"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    _params = ("weight", "bias")

    def __init__(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, *, name: str = "linear"):
        w = np.asarray(weight)
        if w.ndim != 2:
            raise ValueError(f"{name}.weight must be (out, in), got shape {w.shape}")
        self.weight = _param(w, f"{name}.weight", w.shape)
        self.bias = None if bias is None else _param(bias, f"{name}.bias", (w.shape[0],))
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        w = self.weight
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"{self.name}: x has {x.shape[-1]} features, the layer takes {w.shape[1]}")
        y = x @ w.T
        y = y if self.bias is None else y + self.bias
        return self._save(y, x, w)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (x, w) = self._begin_backward(grad_y)
        g2 = g.reshape(-1, w.shape[0])
        self._accumulate("weight", g2.T @ x.reshape(-1, w.shape[1]))
        if self.bias is not None:
            self._accumulate("bias", g2.sum(axis=0))
        return g @ w


def _im2col(x, kh, kw, stride, padding, dilation, pad_value=0.0):
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the {kh}x{kw} window does not fit the padded {h}x{w} input")
    if ph or pw:  # the same array as np.pad(x, ..., constant_values=pad_value), faster
        xp = np.full((n, c, h + 2 * ph, w + 2 * pw), pad_value, x.dtype)
        xp[:, :, ph : ph + h, pw : pw + w] = x
    else:
        xp = x
    cols = np.empty((n, c, kh, kw, oh, ow), x.dtype)
    for a in range(kh):
        for b in range(kw):
            r, s = a * dh, b * dw
            cols[:, :, a, b] = xp[:, :, r : r + sh * (oh - 1) + 1 : sh, s : s + sw * (ow - 1) + 1 : sw]
    return cols, oh, ow


def _col2im(cols, x_shape, stride, padding, dilation):
    """The adjoint of :func:`_im2col`: ``cols`` (N, C, kh, kw, OH, OW) summed back into an
    (N, C, H, W) array; each kernel offset adds one strided slice (exact, no scatter)."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    gxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for a in range(kh):
        for b in range(kw):
            r, s = a * dh, b * dw
            gxp[:, :, r : r + sh * (oh - 1) + 1 : sh, s : s + sw * (ow - 1) + 1 : sw] += cols[:, :, a, b]
    if ph or pw:
        return np.ascontiguousarray(gxp[:, :, ph : ph + h, pw : pw + w])
    return gxp


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch), NCHW float32, with stride,
    symmetric zero padding, dilation and groups (``groups == channels``: depthwise).

    Forward: im2col and one matmul per group. Backward: ``grad_W`` is ``grad_y`` times the
    im2col columns (per group); ``grad_x`` is ``W^T grad_y`` folded back by col2im (one
    strided add per kernel offset); ``grad_b`` is ``grad_y`` summed over N, H, W.

    Parameters
    ----------
    weight : real array (O, I / groups, kh, kw)
        The kernel, stored as float32; ``O`` divisible by ``groups``.
    bias : real array (O,) or None, default None
        Stored as float32; ``None``: no bias.
    stride : int or (int, int), default 1
        Keyword-only, >= 1.
    padding : int or (int, int), default 0
        Zero padding of each side of (H, W), >= 0.
    dilation : int or (int, int), default 1
        Spacing of the kernel taps, >= 1.
    groups : int, default 1
        Number of channel groups, >= 1.
    name : str, default ``"conv"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    _params = ("weight", "bias")

    def __init__(
        self,
        weight: npt.ArrayLike,
        bias: npt.ArrayLike | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        name: str = "conv",
    ):
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
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        wt = self.weight
        o, cg, kh, kw = wt.shape
        if x.ndim != 4 or x.shape[1] != cg * self.groups:
            raise ValueError(f"{self.name}: x must be NCHW with {cg * self.groups} channels, got shape {x.shape}")
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, self.dilation)
        n = x.shape[0]
        og = o // self.groups
        out = np.empty((n, o, oh, ow), x.dtype)
        for g in range(self.groups):
            c = cols[:, g * cg : (g + 1) * cg].reshape(n, cg * kh * kw, oh * ow)
            wg = wt[g * og : (g + 1) * og].reshape(og, cg * kh * kw)
            out[:, g * og : (g + 1) * og] = np.matmul(wg, c).reshape(n, og, oh, ow)
        y = out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)
        return self._save(y, cols, x.shape, wt)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (cols, x_shape, wt) = self._begin_backward(grad_y)
        o, cg, kh, kw = wt.shape
        n, _, oh, ow = g.shape
        og, k, length = o // self.groups, cg * kh * kw, oh * ow
        gw = np.empty_like(wt)
        gcols = np.empty_like(cols)
        for grp in range(self.groups):
            gy = g[:, grp * og : (grp + 1) * og].reshape(n, og, length)
            c = cols[:, grp * cg : (grp + 1) * cg].reshape(n, k, length)
            # sum over the batch of grad_y[n] @ cols[n]^T (one small GEMM per image)
            gw[grp * og : (grp + 1) * og] = np.matmul(gy, c.transpose(0, 2, 1)).sum(axis=0).reshape(og, cg, kh, kw)
            wg = wt[grp * og : (grp + 1) * og].reshape(og, k)
            gcols[:, grp * cg : (grp + 1) * cg] = np.matmul(wg.T, gy).reshape(n, cg, kh, kw, oh, ow)
        self._accumulate("weight", gw)
        if self.bias is not None:
            self._accumulate("bias", g.sum(axis=(0, 2, 3)))
        return _col2im(gcols, x_shape, self.stride, self.padding, self.dilation)


class BatchNorm2d(Layer):
    """Batch norm over the channels of NCHW input: ``(x - mean) / sqrt(var + eps) * weight
    + bias`` per channel.

    Eval mode: ``mean``/``var`` are the running statistics (inference, as before).
    Training mode (PyTorch's convention): the batch statistics over N, H, W (biased
    variance, computed in float32 in two passes) normalize the batch, and the running
    statistics are updated in place: ``running = (1 - momentum) * running + momentum *
    batch`` with the *unbiased* batch variance for ``running_var``; ``momentum=None`` is
    the cumulative average (``momentum = 1 / num_batches_tracked``). ``num_batches_tracked``
    (int64, 0-d) counts the training batches. A training batch needs more than one value
    per channel.

    ``frozen = True`` (PyTorch: ``bn.eval()`` inside a model being trained): in training
    mode the layer normalizes with the running statistics (the eval-mode output) and leaves
    them unchanged, but still keeps what backward needs; gradients flow to ``weight``,
    ``bias`` and the input.

    Parameters
    ----------
    weight, bias : real array (C,)
        The affine parameters, stored as float32.
    running_mean, running_var : real array (C,)
        The running statistics, stored as float32.
    eps : float, default 1e-5
        Keyword-only; added to the variance, > 0.
    momentum : float or None, default 0.1
        In ``[0, 1]``; ``None``: cumulative average.
    num_batches_tracked : int, default 0
        Non-negative integer scalar, stored as 0-d int64.
    name : str, default ``"bn"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    _params = ("weight", "bias")
    _buffers = ("running_mean", "running_var", "num_batches_tracked")
    _optional_state = ("num_batches_tracked",)

    def __init__(
        self,
        weight: npt.ArrayLike,
        bias: npt.ArrayLike,
        running_mean: npt.ArrayLike,
        running_var: npt.ArrayLike,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        num_batches_tracked: int | npt.ArrayLike = 0,
        name: str = "bn",
    ):
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
        if momentum is not None:
            if isinstance(momentum, (bool, np.bool_)) or not np.isscalar(momentum) or not 0 <= float(momentum) <= 1:
                raise ValueError(f"{name}: momentum must be None or a number in [0, 1], got {momentum!r}")
            momentum = float(momentum)
        self.momentum = momentum
        nbt = np.asarray(num_batches_tracked)
        if nbt.shape != () or nbt.dtype.kind not in "iu" or int(nbt) < 0:
            raise ValueError(
                f"{name}.num_batches_tracked must be a non-negative integer scalar, got {num_batches_tracked!r}"
            )
        self.num_batches_tracked = np.array(int(nbt), np.int64)
        self.frozen = False
        super().__init__(name)

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(scale, shift)`` with ``bn(x) = x * scale + shift`` in eval mode (float32)."""
        scale = (self.weight / np.sqrt(self.running_var + np.float32(self.eps))).astype(np.float32)
        return scale, (self.bias - self.running_mean * scale).astype(np.float32)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        c = self.weight.shape[0]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"{self.name}: x must be NCHW with {c} channels, got {x.shape}")
        shape = (1, -1, 1, 1)
        eps = self.dtype.type(self.eps)
        if not self.training or self.frozen:
            std = np.sqrt(self.running_var + eps)
            xhat = (x - self.running_mean.reshape(shape)) / std.reshape(shape)
            y = xhat * self.weight.reshape(shape) + self.bias.reshape(shape)
            if not self.training:
                return y
            return self._save(y, xhat, (1 / std).astype(self.dtype), self.weight, False)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(f"{self.name}: training needs more than one value per channel, got input shape {x.shape}")
        mean = x.mean(axis=(0, 2, 3))
        xc = x - mean.reshape(shape)
        var = np.square(xc).mean(axis=(0, 2, 3))
        invstd = (1 / np.sqrt(var + eps)).astype(self.dtype)
        xhat = xc * invstd.reshape(shape)
        y = xhat * self.weight.reshape(shape) + self.bias.reshape(shape)
        self.num_batches_tracked += 1
        f = self.dtype.type(1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum)
        one = self.dtype.type(1)
        self.running_mean[...] = (one - f) * self.running_mean + f * mean
        self.running_var[...] = (one - f) * self.running_var + f * (var * self.dtype.type(m / (m - 1)))
        return self._save(y, xhat, invstd, self.weight, True)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (xhat, invstd, w, batch) = self._begin_backward(grad_y)
        shape = (1, -1, 1, 1)
        gb = g.sum(axis=(0, 2, 3))
        gw = (g * xhat).sum(axis=(0, 2, 3))
        self._accumulate("weight", gw)
        self._accumulate("bias", gb)
        scale = (w * invstd).reshape(shape)
        if not batch:
            return g * scale
        m = self.dtype.type(g.shape[0] * g.shape[2] * g.shape[3])
        return scale * (g - (gb / m).reshape(shape) - xhat * (gw / m).reshape(shape))


class ReLU(Layer):
    """``max(x, 0)``; backward passes ``grad_y`` where ``x > 0`` (0 at ``x == 0``, as PyTorch).

    Parameters
    ----------
    name : str, default ``"relu"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(self, *, name: str = "relu"):
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        y = np.maximum(x, self.dtype.type(0))
        return self._save(y, x > 0) if self.training else y

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (mask,) = self._begin_backward(grad_y)
        return np.where(mask, g, self.dtype.type(0))


class ReLU6(Layer):
    """``min(max(x, 0), 6)``; backward passes ``grad_y`` where ``0 < x < 6`` (0 at both
    ends, as PyTorch's ``hardtanh_backward``).

    Parameters
    ----------
    name : str, default ``"relu6"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(self, *, name: str = "relu6"):
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        y = np.clip(x, self.dtype.type(0), self.dtype.type(6))
        return self._save(y, (x > 0) & (x < 6)) if self.training else y

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (mask,) = self._begin_backward(grad_y)
        return np.where(mask, g, self.dtype.type(0))


class MaxPool2d(Layer):
    """Max pooling, NCHW; padding positions never win (they hold -inf).

    Backward: each window's gradient goes to its maximum; on ties, to the *first* maximum
    in row-major scan order of the window (as PyTorch's CPU ``max_pool2d``, whose scan
    keeps the first and replaces it only on a strictly greater value). Overlapping windows
    add up.

    Parameters
    ----------
    kernel_size : int or (int, int)
        Window size, >= 1.
    stride : int, (int, int) or None, default None
        Window step, >= 1; ``None`` is ``kernel_size``.
    padding : int or (int, int), default 0
        Padding of each side of (H, W), >= 0.
    name : str, default ``"maxpool"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        *,
        name: str = "maxpool",
    ):
        self.kernel_size = check_pair(kernel_size, "kernel_size", lo=1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, "stride", lo=1)
        self.padding = check_pair(padding, "padding", lo=0)
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW, got shape {x.shape}")
        kh, kw = self.kernel_size
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, (1, 1), pad_value=-np.inf)
        if not self.training:
            return cols.max(axis=(2, 3))
        n, c = x.shape[:2]
        idx = cols.reshape(n, c, kh * kw, oh, ow).argmax(axis=2)[:, :, None]  # first maximum
        return self._save(cols.max(axis=(2, 3)), idx, x.shape)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (idx, x_shape) = self._begin_backward(grad_y)
        kh, kw = self.kernel_size
        n, c, oh, ow = g.shape
        gcols = np.zeros((n, c, kh * kw, oh, ow), g.dtype)
        np.put_along_axis(gcols, idx, g[:, :, None], axis=2)
        return _col2im(gcols.reshape(n, c, kh, kw, oh, ow), x_shape, self.stride, self.padding, (1, 1))


class AvgPool2d(Layer):
    """Average pooling, NCHW; ``count_include_pad`` as PyTorch (default True).

    Backward: each window's ``grad_y / divisor`` is added to every input of the window.

    Parameters
    ----------
    kernel_size : int or (int, int)
        Window size, >= 1.
    stride : int, (int, int) or None, default None
        Window step, >= 1; ``None`` is ``kernel_size``.
    padding : int or (int, int), default 0
        Padding of each side of (H, W), >= 0.
    count_include_pad : bool, default True
        Keyword-only; whether padding positions count in the divisor (they hold 0).
    name : str, default ``"avgpool"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        *,
        count_include_pad: bool = True,
        name: str = "avgpool",
    ):
        self.kernel_size = check_pair(kernel_size, "kernel_size", lo=1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, "stride", lo=1)
        self.padding = check_pair(padding, "padding", lo=0)
        self.count_include_pad = bool(count_include_pad)
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW, got shape {x.shape}")
        kh, kw = self.kernel_size
        cols, oh, ow = _im2col(x, kh, kw, self.stride, self.padding, (1, 1))
        if self.count_include_pad:
            div = self.dtype.type(kh * kw)
        else:
            ones, _, _ = _im2col(np.ones((1, 1) + x.shape[2:], x.dtype), kh, kw, self.stride, self.padding, (1, 1))
            div = ones.sum(axis=(2, 3))
        return self._save(cols.sum(axis=(2, 3)) / div, div, x.shape)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (div, x_shape) = self._begin_backward(grad_y)
        kh, kw = self.kernel_size
        gd = g / div
        gcols = np.broadcast_to(gd[:, :, None, None], gd.shape[:2] + (kh, kw) + gd.shape[2:])
        return _col2im(gcols, x_shape, self.stride, self.padding, (1, 1))


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)) in C order, as ``torch.flatten(x, 1)``.

    Parameters
    ----------
    name : str, default ``"flatten"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(self, *, name: str = "flatten"):
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        return self._save(x.reshape(x.shape[0], -1), x.shape)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        g, (x_shape,) = self._begin_backward(grad_y)
        return g.reshape(x_shape)


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def _split_state(state: dict, prefixes) -> tuple[dict, list]:
    """``state`` split by the first matching ``"<prefix>."``; keys matching none are returned."""
    parts, rest = {p: {} for p in prefixes}, []
    for k, v in state.items():
        for p in prefixes:
            if isinstance(k, str) and k.startswith(p + "."):
                parts[p][k[len(p) + 1 :]] = v
                break
        else:
            rest.append(k)
    return parts, rest


class ChildDicts:
    """The dicts of a module made of children: ``_children()`` lists ``(prefix, child)``,
    and ``parameters()``, ``grads``, ``state_dict()`` are the children's, keys prefixed
    ``"<prefix>."`` (unprefixed for the prefix ``""``). Shared by :class:`Sequential`,
    :class:`Residual` and the QAT layers."""

    def _children(self):  # pragma: no cover - every user defines it
        raise NotImplementedError

    def _named(self, fn) -> dict:
        out = {}
        for prefix, m in self._children():
            if hasattr(m, "parameters"):
                d = fn(m)
                out.update(d if prefix == "" else _prefixed(prefix, d))
        return out

    def parameters(self) -> dict:
        """``{"<prefix>.<param>": live array}`` of every child."""
        return self._named(lambda m: m.parameters())

    named_parameters = parameters

    @property
    def grads(self) -> dict:
        """``{"<prefix>.<param>": live gradient array}`` (the keys of ``parameters()``)."""
        return self._named(lambda m: m.grads)

    def named_grads(self) -> dict:
        return self.grads

    def zero_grad(self) -> None:
        for _, m in self._children():
            if hasattr(m, "zero_grad"):
                m.zero_grad()

    def state_dict(self) -> dict:
        """Parameters and buffers of every child (copies), keys as :meth:`parameters`."""
        return self._named(lambda m: m.state_dict() if hasattr(m, "state_dict") else {})

    def _load(self, state: dict, strict: bool, prefix: str):
        """Each child with a state takes the keys under its prefix; others are unexpected."""
        children = [
            (n, m)
            for n, m in self._children()
            if hasattr(m, "load_state_dict") and hasattr(m, "state_dict") and m.state_dict()
        ]
        parts, rest = _split_state(state, [n for n, _ in children])
        if strict and rest:
            raise ValueError(f"state dict has unexpected key {prefix + str(rest[0])!r}")
        for n, m in children:
            if isinstance(m, Module):
                m._load(parts[n], strict, f"{prefix}{n}.")
            else:
                m.load_state_dict(parts[n], strict=strict)


class Sequential(ChildDicts, Module):
    """Layers applied in order; ``model(x)`` returns the last output.

    Any callable may be a layer for inference; training (``train()``, ``backward``) needs
    every layer to follow the contract (a :class:`Module`). ``backward`` runs the layers'
    backward passes in reverse order. ``parameters()`` / ``named_parameters()``,
    ``grads`` / ``named_grads()`` and ``state_dict()`` are flat dicts keyed
    ``"<layer name>.<param>"`` (layer names must be unique among layers that own arrays);
    ``state_dict()`` also holds the batch-norm buffers and copies the arrays.

    Parameters
    ----------
    layers : iterable of callable
        The layers, in order.
    name : str, default ``"sequential"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(self, layers: Iterable[Callable], *, name: str = "sequential"):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not callable(layer):
                raise TypeError(f"layers[{i}] is not callable: {layer!r}")
        super().__init__(name)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def _children(self):
        return [(getattr(layer, "name", None), layer) for layer in self.layers]

    def _untrainable(self, what: str):
        for i, layer in enumerate(self.layers):
            if not _is_module(layer):
                raise TypeError(
                    f"{self.name}: layers[{i}] ({type(layer).__name__}) has no backward pass; "
                    f"a model with it cannot {what}"
                )

    def train(self, mode: bool = True) -> Module:
        mode = check_bool(mode, "mode")
        if mode:
            self._untrainable("be trained")
        for layer in self.layers:
            if _is_module(layer):
                layer.train(mode)
        self.training = mode
        return self

    def _check_ready(self):
        self._untrainable("run backward")
        for layer in self.layers:
            if isinstance(layer, Module):
                layer._check_ready()
            elif not getattr(layer, "training", True):
                raise RuntimeError(
                    f"{type(layer).__name__}: backward in eval mode; call train() before the forward pass"
                )

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        self._check_ready()  # every layer first, so that an error leaves no gradient half-accumulated
        g = grad_y
        for layer in reversed(self.layers):
            g = layer.backward(g)
        return g

    def _named(self, fn) -> dict:
        """As :meth:`ChildDicts._named`, keyed by layer name: a layer with arrays needs a
        name no other such layer has."""
        out, owner = {}, {}
        for i, (name, layer) in enumerate(self._children()):
            if not hasattr(layer, "parameters"):
                continue
            d = fn(layer)
            if not d:
                continue
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.name}: layers[{i}] ({type(layer).__name__}) has arrays but no name")
            if name in owner:
                raise ValueError(
                    f"{self.name}: layers[{owner[name]}] and layers[{i}] are both named {name!r}; "
                    "give each layer with parameters a unique name"
                )
            owner[name] = i
            out.update(_prefixed(name, d))
        return out

    def _load(self, state: dict, strict: bool, prefix: str):
        self.state_dict()  # checks that the names are unique
        super()._load(state, strict, prefix)

    def _drop_cache(self):
        pass

    def _set_dtype(self, dt):
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Module):
                raise TypeError(f"{self.name}: layers[{i}] ({type(layer).__name__}) cannot change dtype")
            layer._set_dtype(dt)
        self.dtype = dt


class Residual(ChildDicts, Module):
    """``body(x) + shortcut(x)`` (shortcut: identity by default): a residual add.

    ``body`` and ``shortcut`` are layers or models that follow the same contract; backward
    returns ``body.backward(g) + shortcut.backward(g)`` (``+ g`` for the identity). Keys of
    ``parameters()``, ``grads`` and ``state_dict()``: ``"body.<...>"``, ``"shortcut.<...>"``.

    Parameters
    ----------
    body : callable
        The residual branch.
    shortcut : callable or None, default None
        The shortcut branch; ``None`` is the identity.
    name : str, default ``"residual"``
        Keyword-only; the layer's name, the prefix of its state-dict keys.
    """

    def __init__(self, body: Callable, shortcut: Callable | None = None, *, name: str = "residual"):
        for what, m in (("body", body), ("shortcut", shortcut)):
            if m is not None and not callable(m):
                raise TypeError(f"{what} is not callable: {m!r}")
        self.body, self.shortcut = body, shortcut
        self._out_shape = None
        super().__init__(name)

    def _children(self):
        return [("body", self.body)] + ([] if self.shortcut is None else [("shortcut", self.shortcut)])

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = self._input(x)
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if y.shape != s.shape:
            raise ValueError(f"residual add of shapes {y.shape} and {s.shape}")
        out = y + s
        if self.training:
            self._out_shape = out.shape
        return out

    def train(self, mode: bool = True) -> Module:
        mode = check_bool(mode, "mode")
        for what, m in self._children():
            if not _is_module(m):
                if mode:
                    raise TypeError(
                        f"{self._who}: {what} ({type(m).__name__}) has no backward pass; it cannot be trained"
                    )
                continue
            m.train(mode)
        self.training = mode
        if not mode:
            self._out_shape = None
        return self

    def _check_ready(self):
        super()._check_ready()
        if self._out_shape is None:
            raise RuntimeError(f"{self._who}: backward called before a training-mode forward pass")
        for what, m in self._children():
            if isinstance(m, Module):
                m._check_ready()
            elif not _is_module(m):
                raise TypeError(f"{self._who}: {what} ({type(m).__name__}) has no backward pass")

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        self._check_ready()
        g = self._check_grad(grad_y, self._out_shape)
        gx = self.body.backward(g)
        return gx + (g if self.shortcut is None else self.shortcut.backward(g))

    def _set_dtype(self, dt):
        for what, m in self._children():
            if not isinstance(m, Module):
                raise TypeError(f"{self._who}: {what} ({type(m).__name__}) cannot change dtype")
            m._set_dtype(dt)
        self.dtype = dt
        self._out_shape = None


def add(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Elementwise sum of two float32 tensors of the same shape.

    Parameters
    ----------
    a, b : array_like of float
        The tensors, finite, of the same shape (converted to float32).

    Returns
    -------
    numpy.ndarray
        ``a + b``, float32.
    """
    a, b = as_float_array(a, "a"), as_float_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"add of shapes {a.shape} and {b.shape}")
    return a + b


def expected_keys(arch: dict) -> dict:
    """``{state-dict key: required?}`` of an architecture description.

    Parameters
    ----------
    arch : dict
        The architecture description: a dict with a list ``"layers"`` of layer dicts.

    Returns
    -------
    dict of str to bool
        Every parameter and buffer key (the ``params`` of each layer's registered type,
        :mod:`npquant.models.registry`); False for the optional ones (biases of linear and
        conv2d layers, ``num_batches_tracked``). Unregistered types have no keys.
    """
    from .registry import layer_types

    types = layer_types()
    out = {}
    for spec in _layers(arch):
        t = types.get(spec["type"]) if isinstance(spec["type"], str) else None
        for p in () if t is None else t.params:
            opt = p.endswith("?")
            out[f"{spec['name']}.{p.rstrip('?')}"] = not opt
    return out


def _layers(arch) -> list:
    from .registry import arch_layers

    return arch_layers(arch)


def _plain_pool(spec: dict, name, keys) -> None:
    """Refuse pooling options npquant does not implement (rather than drop them silently)."""
    bad = None
    if "dilation" in keys and "dilation" in spec and check_pair(spec["dilation"], "dilation", lo=1) != (1, 1):
        bad = "dilation", spec["dilation"], 1
    elif "ceil_mode" in keys and spec.get("ceil_mode", False) is not False:
        bad = "ceil_mode", spec["ceil_mode"], False
    elif "divisor_override" in keys and spec.get("divisor_override") is not None:
        bad = "divisor_override", spec["divisor_override"], None
    if bad:
        raise ValueError(
            f"layer {name!r}: {spec['type']} with {bad[0]}={bad[1]!r} is not supported "
            f"(npquant's pools have {bad[0]}={bad[2]!r} only)"
        )


def build_model(arch: dict, state: dict) -> Sequential:
    """A :class:`Sequential` (in eval mode) from an architecture description and a state dict.

    Missing, unexpected and mis-shaped keys are errors naming the key. Layer types: those
    of :mod:`npquant.models.registry` (each builds its layer with ``build``): ``linear``,
    ``conv2d``, ``batchnorm2d`` (with ``momentum``, default 0.1, and the optional
    ``num_batches_tracked``), ``relu``, ``relu6``, ``maxpool2d``, ``avgpool2d``,
    ``flatten`` (fields as in ``reference_models/README.md``). Every layer takes the
    ``name`` of its entry (default: its type), so ``model.state_dict()`` has the keys of
    ``state``.

    Parameters
    ----------
    arch : dict
        The architecture description: ``"layers"`` (a list of dicts with ``"type"`` and
        the fields of that type) and an optional model ``"name"``.
    state : dict of str to array
        The parameters and buffers; keys starting with ``"__"`` are ignored.

    Returns
    -------
    Sequential
        The model, in eval mode, with float32 parameters.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
    want = expected_keys(arch)
    missing = [k for k, req in want.items() if req and k not in state]
    if missing:
        raise ValueError(
            f"state dict is missing {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = [k for k in state if k not in want and not k.startswith("__")]
    if unexpected:
        raise ValueError(f"state dict has unexpected key {unexpected[0]!r}")
    from .registry import layer_type

    layers = []
    for spec in _layers(arch):
        t = spec["type"]
        kind = layer_type(t)
        name = spec.get("name", t)
        name = name if isinstance(name, str) and name else t
        p = {k.split(".", 1)[1]: state[k] for k in state if k.startswith(name + ".")} if kind.params else {}
        layers.append(kind.build(spec, p, name))
    model_name = arch.get("name")
    return Sequential(layers, name=model_name if isinstance(model_name, str) and model_name else "sequential")
