"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (step, cosine, linear warm-up).

An optimizer holds a dict ``{name: array}`` of *live* float32 parameter arrays (for a
model, ``model.named_parameters()``) and updates them **in place** from a dict of
gradients with the same keys and shapes::

    opt = Adam(model.named_parameters(), lr=1e-3)
    ...
    model.zero_grad(); loss, g = loss_fn(model(x), y); model.backward(g)
    opt.step(model.named_grads())

The update formulas are PyTorch's (``torch.optim``, the single-tensor ``foreach=False``
implementation, which is what PyTorch runs on CPU tensors), operation by operation and
in the same float32 order: every intermediate array is float32, every hyperparameter is
cast to float32 where ATen casts it, and the scalar bias corrections are float64 as in
PyTorch's Python code. One detail decides the last bit: ATen's vectorized CPU kernels
(``add`` with ``alpha``, ``addcmul``, ``lerp``) compute ``a * b + c`` as a *fused*
multiply-add (one rounding) on its AVX2 and AVX-512 code paths, and as a product and a
sum (two roundings) on its portable ``default`` path. ``fused_multiply_add=True`` (the
default) follows the AVX2/AVX-512 paths, ``False`` the portable one; NumPy has no fused
multiply-add, so it is computed exactly (float64 product, round-to-odd sum, one rounding
to float32: ``npquant.rounding.fma32`` and its numba twin).

Backends: ``backend="numba"`` (default) updates each parameter in one compiled loop
(``npquant._kernels.optim``); ``backend="numpy"`` runs the vectorized NumPy twins
(``_update_numpy``), which are the readable statement of the formulas. Both give the
same bits (tested).

What is and is not bit-exact against PyTorch 2.13 (tested in ``tests/test_training.py``):
SGD in all its forms is bit for bit equal to ``torch.optim.SGD``. Adam and AdamW equal
PyTorch bit for bit in every moment and in every operation but one: PyTorch's float32
``sqrt`` is MKL's vector math (``vsSqrt``, high-accuracy mode: within 1 ulp, not always
correctly rounded; about 0.7 % of results are 1 ulp below NumPy's correctly rounded
``np.sqrt``). With PyTorch's ``sqrt`` replaced by a correctly rounded one, the parameters
are equal bit for bit; with PyTorch as it is, they differ by a few float32 ulps after a
few steps.

Pruning (Deep Compression, issue 14) needs pruned weights to stay *exactly* zero:
:meth:`Optimizer.apply_mask` zeroes the masked entries of the parameters and of every
state array (momentum buffers, Adam moments) once; :meth:`Optimizer.set_masks` makes the
masks persistent, so that every :meth:`~Optimizer.step` also zeroes the masked gradient
entries before the update and re-applies the masks after it.

Schedules are closed-form functions of the epoch, ``schedule(epoch, base_lr) -> lr``
(PyTorch's ``_get_closed_form_lr``); the training loop sets ``optimizer.lr`` from them at
the start of every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._checks import BACKENDS, check_bool, check_choice, check_int, check_real
from ..rounding import fma32 as _fma32_numpy

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR", "LinearWarmup", "BACKENDS"]


# ---------------------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------------------


def _muladd(a, b, c, fused: bool) -> np.ndarray:
    """``a * b + c`` in float32: fused (one rounding, :func:`npquant.rounding.fma32`)
    or a rounded product then a rounded sum."""
    f32 = np.float32
    if fused:
        return _fma32_numpy(np.asarray(a, f32), np.asarray(b, f32), np.asarray(c, f32))
    return np.asarray(a, f32) * np.asarray(b, f32) + np.asarray(c, f32)


def _flat(a: np.ndarray):
    """A 1-D view of ``a`` if it is C-contiguous (a kernel can update it in place), else None."""
    return a.reshape(-1) if a.flags.c_contiguous else None


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _check_params(params) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> float32 array, got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty: there is nothing to optimize")
    for k, v in params.items():
        if not isinstance(k, str):
            raise TypeError(f"params keys must be strings, got {k!r}")
        if not isinstance(v, np.ndarray) or v.dtype != np.float32:
            got = f"dtype {v.dtype}" if isinstance(v, np.ndarray) else type(v).__name__
            raise TypeError(f"params[{k!r}] must be a float32 NumPy array (updated in place), got {got}")
        if not v.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimizer updates it in place")
    return dict(params)  # our own dict of the same live arrays


def _check_same_keys(given: dict, params: dict, name: str, *, subset: bool = False) -> None:
    if not isinstance(given, dict):
        raise TypeError(f"{name} must be a dict of name -> array, got {type(given).__name__}")
    extra = [k for k in given if k not in params]
    if extra:
        raise ValueError(f"{name} has unexpected key {extra[0]!r} (not a parameter of this optimizer)")
    if not subset:
        missing = [k for k in params if k not in given]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"{name} is missing {missing[0]!r}{more}")


# ---------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------
class Optimizer:
    """What every optimizer shares: the live parameters, ``lr``, the per-parameter state,
    the step count, masks, and checked gradients. Subclasses implement ``_update_numpy`` (the
    formulas, vectorized) and ``_update_numba`` (the same in a compiled loop).

    Parameters
    ----------
    params : dict
        ``{name: float32 array}``, updated in place.
    lr : float
        Learning rate, positive and finite.
    fused_multiply_add : bool, default True
        Keyword-only; compute each multiply-add with one rounding (see the subclasses).
    backend : ``"numba"`` (default) or ``"numpy"``
        See the module docstring.

    Attributes
    ----------
    params : dict
        ``{name: float32 array}``, the arrays given, updated in place.
    state : dict
        ``{name: {state name: float32 array}}`` (PyTorch's names:
        ``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).
    step_count : int
        Number of :meth:`step` calls since construction or :meth:`zero_state`.
    masks : dict or None
        ``{name: bool array}`` set by :meth:`set_masks`, or ``None``.
    """

    def __init__(
        self, params: dict[str, np.ndarray], lr: float, *, fused_multiply_add: bool = True, backend: str = "numba"
    ):
        self.params = _check_params(params)
        self.lr = lr
        self.fused_multiply_add = check_bool(fused_multiply_add, "fused_multiply_add")
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.masks = None
        self.zero_state()

    # -- learning rate --------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of the next step (a Python float; settable, e.g. by a schedule)."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = check_real(value, "lr", lo=0, lo_open=True)

    # -- state ------------------------------------------------------------------------
    def zero_state(self) -> None:
        """Forget the optimizer state (buffers, moments) and set the step count to 0."""
        self.state = {name: {} for name in self.params}
        self.step_count = 0

    def _hyper(self) -> dict:
        return {}

    def _required_state(self) -> tuple:
        """The state arrays every parameter must have (SGD makes its buffer at step 1)."""
        return ()

    def state_dict(self) -> dict:
        """A copy of everything the next steps depend on: ``{"optimizer", "lr",
        "step_count", "hyper", "state", "masks"}`` (``state`` maps each parameter name to
        copies of its state arrays; ``masks`` is ``None`` or copies of the persistent
        masks). :meth:`load_state_dict` restores it."""
        return {
            "optimizer": type(self).__name__,
            "lr": self.lr,
            "step_count": self.step_count,
            "hyper": self._hyper(),
            "state": {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()},
            "masks": None if self.masks is None else {n: m.copy() for n, m in self.masks.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` of an optimizer of the same class and parameters
        (names and shapes; the hyperparameters are taken from it too)."""
        if not isinstance(state_dict, dict) or state_dict.get("optimizer") != type(self).__name__:
            raise ValueError(f"state_dict must come from {type(self).__name__}.state_dict()")
        state = state_dict["state"]
        _check_same_keys(state, self.params, "state_dict['state']")
        new = {}
        for n, s in state.items():
            new[n] = {}
            for k, v in s.items():
                v = np.asarray(v)
                if v.shape != self.params[n].shape:
                    raise ValueError(
                        f"state_dict['state'][{n!r}][{k!r}] has shape {v.shape}, "
                        f"the parameter has {self.params[n].shape}"
                    )
                new[n][k] = v.astype(np.float32, copy=True)
        for k, v in state_dict["hyper"].items():
            setattr(self, k, v)
        for n, s in new.items():
            missing = [k for k in self._required_state() if k not in s]
            if missing:
                raise ValueError(f"state_dict['state'][{n!r}] has no {missing[0]!r}")
        self.lr = state_dict["lr"]
        self.step_count = check_int(state_dict["step_count"], "state_dict['step_count']", lo=0)
        self.state = new
        self.masks = None
        if state_dict.get("masks") is not None:
            self.set_masks(state_dict["masks"])

    # -- masks ------------------------------------------------------------------------
    def _check_masks(self, masks) -> dict:
        _check_same_keys(masks, self.params, "masks", subset=True)
        out = {}
        for n, m in masks.items():
            m = np.asarray(m)
            if m.shape != self.params[n].shape:
                raise ValueError(f"masks[{n!r}] has shape {m.shape}, the parameter has {self.params[n].shape}")
            if m.dtype != np.bool_:
                if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                    raise ValueError(f"masks[{n!r}] must be boolean (or 0/1), got dtype {m.dtype}")
                m = m != 0
            out[n] = m
        return out

    def _zero_masked(self, masks: dict) -> None:
        for n, m in masks.items():
            self.params[n][~m] = 0
            for buf in self.state[n].values():
                buf[~m] = 0

    def apply_mask(self, masks: dict) -> None:
        """Zero, once, the entries where ``masks[name]`` is False: in the parameter *and*
        in each of its state arrays (so momentum or Adam's moments cannot revive them).

        ``masks`` maps some (not necessarily all) parameter names to boolean arrays of the
        parameter's shape (True = keep; 0/1 arrays are accepted)."""
        self._zero_masked(self._check_masks(masks))

    def set_masks(self, masks: dict | None) -> None:
        """Make ``masks`` persistent (``None`` removes them): applied now as
        :meth:`apply_mask` does, and in every later :meth:`step` the masked gradient
        entries are zeroed before the update and the masks re-applied after it, so pruned
        weights stay exactly 0 (and ``+0.0``) through momentum, Nesterov, weight decay and
        Adam. The unmasked entries are updated exactly as without masks."""
        if masks is None:
            self.masks = None
            return
        self.masks = self._check_masks(masks)
        self._zero_masked(self.masks)

    # -- the step ---------------------------------------------------------------------
    def _check_grads(self, grads) -> dict:
        _check_same_keys(grads, self.params, "grads")
        out = {}
        for n, g in grads.items():
            g = np.asarray(g)
            if g.dtype.kind != "f":
                raise TypeError(f"grads[{n!r}] must be a floating-point array, got dtype {g.dtype}")
            if g.shape != self.params[n].shape:
                raise ValueError(f"grads[{n!r}] has shape {g.shape}, the parameter has shape {self.params[n].shape}")
            g = g.astype(np.float32, copy=False)
            if not np.isfinite(g).all():
                raise ValueError(f"grads[{n!r}] contains NaN or infinity")
            if self.masks is not None and n in self.masks:
                g = np.where(self.masks[n], g, np.float32(0))
            out[n] = g
        return out

    def step(self, grads: dict) -> None:
        """One update of every parameter, in place, from ``grads`` (``{name: array}``,
        exactly the parameters' keys and shapes, finite, floating point; converted to
        float32). The gradient arrays are not modified."""
        grads = self._check_grads(grads)
        self.step_count += 1
        for name, p in self.params.items():
            self._update(name, p, grads[name], self.state[name])
        if self.masks is not None:
            self._zero_masked(self.masks)

    def _update(self, name, p, g, state) -> None:
        """One parameter's update: the numba kernel where the arrays allow it, else the twin."""
        if self.backend == "numba" and self._update_numba(p, np.ascontiguousarray(g), state):
            return
        self._update_numpy(p, g, state)

    def _update_numpy(self, p, g, state) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_numba(self, p, g, state) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({len(self.params)} params, lr={self.lr!r}, {hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and
    (coupled, L2) weight decay: ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g`` (float32; ``lr``, ``weight_decay``,
    ``momentum`` and ``1 - dampening`` are cast to float32 where used; ``b`` is the
    momentum buffer, ``state["momentum_buffer"]``)::

        g = g + weight_decay * p                  if weight_decay != 0
        b = g (a copy)                            at the first step, else
        b = momentum * b + (1 - dampening) * g    (momentum * b rounded first)
        g = g + momentum * b   if nesterov, else  g = b         (if momentum != 0)
        p = p - lr * g

    Every ``x + s * y`` here is a multiply-add: fused (one rounding) with
    ``fused_multiply_add=True``, as ATen's AVX2/AVX-512 kernels compute ``add(y,
    alpha=s)``. Bit for bit equal to PyTorch 2.13 on those paths (``False``: on its
    portable path). The state holds ``momentum_buffer`` once the first step has made it.

    Parameters
    ----------
    params : dict
        ``{name: float32 array}``, updated in place.
    lr : float
        Learning rate, positive and finite.
    momentum : float
        >= 0 (0: plain SGD, no buffer is kept).
    dampening : float
        In [0, 1].
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float
        >= 0, the L2 coefficient added to the gradient.
    fused_multiply_add : bool
        See above.
    backend : ``"numba"`` (default) or ``"numpy"``
        See the module docstring.
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        fused_multiply_add: bool = True,
        backend: str = "numba",
    ):
        self.momentum = check_real(momentum, "momentum", lo=0)
        self.dampening = check_real(dampening, "dampening", lo=0, hi=1)
        self.nesterov = check_bool(nesterov, "nesterov")
        self.weight_decay = check_real(weight_decay, "weight_decay", lo=0)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(
                f"nesterov=True needs momentum > 0 and dampening == 0, got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )
        super().__init__(params, lr, fused_multiply_add=fused_multiply_add, backend=backend)

    def _hyper(self) -> dict:
        return {
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update_numba(self, p, g, state) -> bool:
        from .._kernels.optim import sgd_update

        f32 = np.float32
        first = "momentum_buffer" not in state
        if self.momentum != 0 and first:
            state["momentum_buffer"] = np.empty_like(p)
        buf = state.get("momentum_buffer", p)  # p: a placeholder, unused without momentum
        flat = [_flat(a) for a in (p, g, buf)]
        if any(a is None for a in flat):
            if self.momentum != 0 and first:
                del state["momentum_buffer"]
            return False
        sgd_update(
            flat[0],
            flat[1],
            flat[2],
            first,
            f32(self.weight_decay),
            f32(self.momentum),
            f32(1.0 - self.dampening),
            self.nesterov,
            f32(-self.lr),
            self.fused_multiply_add,
        )
        return True

    def _update_numpy(self, p, g, state) -> None:
        f32, fused = np.float32, self.fused_multiply_add
        if self.weight_decay != 0:
            g = _muladd(p, f32(self.weight_decay), g, fused)
        if self.momentum != 0:
            b = state.get("momentum_buffer")
            if b is None:
                b = state["momentum_buffer"] = g.copy()
            else:
                b *= f32(self.momentum)
                b[...] = _muladd(g, f32(1.0 - self.dampening), b, fused)
            g = _muladd(b, f32(self.momentum), g, fused) if self.nesterov else b
        p[...] = _muladd(g, f32(-self.lr), p, fused)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with PyTorch's eps placement and bias correction, optional
    AMSGrad and coupled (L2) weight decay: ``torch.optim.Adam``.

    For each parameter ``p`` with gradient ``g`` at step ``t`` (1, 2, ...; ``m`` =
    ``exp_avg``, ``v`` = ``exp_avg_sq``, both float32 and starting at 0)::

        g  = g + weight_decay * p                     if weight_decay != 0 (Adam)
        p  = p * (1 - lr * weight_decay)              instead, for AdamW (decoupled)
        m  = lerp(m, g, 1 - beta1)     = m + (1 - beta1) * (g - m)
        v  = beta2 * v + ((1 - beta2) * g) * g        (beta2 * v rounded first)
        v' = max(v'_previous, v) if amsgrad (``max_exp_avg_sq``), else v
        bias_correction1 = 1 - beta1 ** t             (float64)
        bias_correction2 = 1 - beta2 ** t             (float64)
        step_size = lr / bias_correction1             (float64)
        denom = sqrt(v') / float32(bias_correction2 ** 0.5) + float32(eps)
        p  = p + (float32(-step_size) * m) / denom

    ``eps`` is added to ``sqrt(v') / sqrt(bias_correction2)``, *after* the second bias
    correction (not to ``sqrt(v')``), as in PyTorch. The ``lerp`` with weight ``w < 0.5``
    is ``m + w * (g - m)``, with ``w >= 0.5`` it is ``g + (w - 1) * (g - m)`` (ATen's
    form). The multiply-adds of ``weight_decay``, ``lerp`` and ``v`` are fused (one
    rounding) with ``fused_multiply_add=True``, as ATen computes them on its AVX2/AVX-512
    paths; the final ``addcdiv`` is never fused. Equal to PyTorch 2.13 bit for bit but for
    PyTorch's ``sqrt`` (module docstring).

    Parameters
    ----------
    params : dict
        ``{name: float32 array}``, updated in place.
    lr : float
        Learning rate, positive and finite (default 1e-3).
    betas : tuple of float
        ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.999)).
    eps : float
        Positive and finite (default 1e-8). (PyTorch also accepts 0, which turns a
        zero second moment into 0 / 0 = NaN.)
    weight_decay : float
        >= 0 (default 0).
    amsgrad : bool
        Keep the running maximum of ``v`` and divide by it.
    fused_multiply_add : bool
        See above.
    backend : ``"numba"`` (default) or ``"numpy"``
        See the module docstring.
    """

    decoupled_weight_decay = False

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        fused_multiply_add: bool = True,
        backend: str = "numba",
    ):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (
            check_real(betas[0], "betas[0]", lo=0, hi=1, hi_open=True),
            check_real(betas[1], "betas[1]", lo=0, hi=1, hi_open=True),
        )
        self.eps = check_real(eps, "eps", lo=0, lo_open=True)
        self.weight_decay = check_real(weight_decay, "weight_decay", lo=0)
        self.amsgrad = check_bool(amsgrad, "amsgrad")
        super().__init__(params, lr, fused_multiply_add=fused_multiply_add, backend=backend)

    def _hyper(self) -> dict:
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def _required_state(self) -> tuple:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def zero_state(self) -> None:
        super().zero_state()
        for name, p in self.params.items():
            self.state[name] = {"exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
            if self.amsgrad:
                self.state[name]["max_exp_avg_sq"] = np.zeros_like(p)

    def _update_numba(self, p, g, state) -> bool:
        from .._kernels.optim import adam_update

        f32 = np.float32
        vmax = state.get("max_exp_avg_sq", p)  # p: a placeholder, unused without amsgrad
        flat = [_flat(a) for a in (p, g, state["exp_avg"], state["exp_avg_sq"], vmax)]
        if any(a is None for a in flat):
            return False
        beta1, beta2 = self.betas
        lr, t, wd = self.lr, self.step_count, self.weight_decay
        w = f32(1 - beta1)
        small = abs(w) < 0.5
        decoupled = self.decoupled_weight_decay and wd != 0
        adam_update(
            *flat,
            self.amsgrad,
            f32(1 - lr * wd) if decoupled else f32(1),
            f32(0) if self.decoupled_weight_decay else f32(wd),
            w if small else w - f32(1),
            not small,
            f32(beta2),
            f32(1 - beta2),
            f32((1 - beta2**t) ** 0.5),
            f32(self.eps),
            f32(-(lr / (1 - beta1**t))),
            self.fused_multiply_add,
        )
        return True

    def _update_numpy(self, p, g, state) -> None:
        f32, fused = np.float32, self.fused_multiply_add
        beta1, beta2 = self.betas
        lr, t = self.lr, self.step_count
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                p *= f32(1 - lr * self.weight_decay)
            else:
                g = _muladd(p, f32(self.weight_decay), g, fused)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        w = f32(1 - beta1)  # m.lerp_(g, 1 - beta1)
        if abs(w) < 0.5:
            m[...] = _muladd(w, g - m, m, fused)
        else:
            m[...] = _muladd(w - f32(1), g - m, g, fused)
        v *= f32(beta2)  # v.mul_(beta2).addcmul_(g, g, 1 - beta2)
        v[...] = _muladd(f32(1 - beta2) * g, g, v, fused)
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        step_size = lr / bias_correction1
        denom = np.sqrt(v) / f32(bias_correction2**0.5) + f32(self.eps)
        p += (f32(-step_size) * m) / denom  # p.addcdiv_(m, denom, value=-step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): ``torch.optim.AdamW``.

    The same update as :class:`Adam` except that weight decay shrinks the parameter,
    ``p = p * float32(1 - lr * weight_decay)``, before the moments are updated, instead of
    being added to the gradient. Default ``weight_decay=1e-2`` as in PyTorch.

    Parameters
    ----------
    params : dict
        ``{name: float32 array}``, updated in place.
    lr : float
        Learning rate, positive and finite (default 1e-3).
    betas : tuple of float
        ``(beta1, beta2)``, each in [0, 1) (default (0.9, 0.999)).
    eps : float
        Positive and finite (default 1e-8).
    weight_decay : float
        >= 0 (default 1e-2), the decoupled decay coefficient.
    amsgrad : bool
        Keep the running maximum of ``v`` and divide by it (default False).
    fused_multiply_add : bool
        As in :class:`Adam` (default True).
    backend : ``"numba"`` (default) or ``"numpy"``
        See the module docstring.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        fused_multiply_add: bool = True,
        backend: str = "numba",
    ):
        super().__init__(
            params,
            lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            fused_multiply_add=fused_multiply_add,
            backend=backend,
        )


# ---------------------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------------------
class StepLR:
    """``lr = base_lr * gamma ** (epoch // step_size)``: PyTorch's ``StepLR`` in closed form.

    ``schedule(epoch, base_lr)`` returns the learning rate of epoch ``epoch`` (0-based).
    PyTorch's ``scheduler.step()`` multiplies the current lr by ``gamma`` instead, which
    can differ from the closed form in the last float64 bit.

    Parameters
    ----------
    step_size : int
        Epochs between decays, >= 1.
    gamma : float, default 0.1
        The decay factor, > 0.
    """

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = check_int(step_size, "step_size", lo=1)
        self.gamma = check_real(gamma, "gamma", lo=0, lo_open=True)

    def __call__(self, epoch, base_lr) -> float:
        epoch = check_int(epoch, "epoch", lo=0)
        return check_real(base_lr, "base_lr", lo=0, lo_open=True) * self.gamma ** (epoch // self.step_size)

    def __repr__(self):
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma})"


class CosineAnnealingLR:
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``:
    PyTorch's ``CosineAnnealingLR`` in closed form (float64, evaluated in that order).

    ``base_lr`` at epoch 0, ``eta_min`` at epoch ``T_max``; past ``T_max`` the cosine
    rises again, as in PyTorch. PyTorch's ``scheduler.step()`` uses a recursive form that
    agrees with this one to about 1e-15 relative.

    Parameters
    ----------
    T_max : int
        The epoch of the minimum, >= 1.
    eta_min : float, default 0.0
        The minimum learning rate, >= 0.
    """

    def __init__(self, T_max: int, eta_min: float = 0.0):
        self.T_max = check_int(T_max, "T_max", lo=1)
        self.eta_min = check_real(eta_min, "eta_min", lo=0)

    def __call__(self, epoch, base_lr) -> float:
        epoch = check_int(epoch, "epoch", lo=0)
        base_lr = check_real(base_lr, "base_lr", lo=0, lo_open=True)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def __repr__(self):
        return f"CosineAnnealingLR(T_max={self.T_max}, eta_min={self.eta_min})"


class LinearWarmup:
    """A linear warm-up over ``warmup_epochs`` epochs, then ``after`` (or a constant lr).

    ``lr = base_lr * (start_factor + (1 - start_factor) * epoch / warmup_epochs)`` for
    ``epoch < warmup_epochs`` (PyTorch's ``LinearLR`` with ``end_factor=1``), then
    ``after(epoch - warmup_epochs, base_lr)``, as PyTorch's
    ``SequentialLR([LinearLR, after], milestones=[warmup_epochs])``.

    Parameters
    ----------
    warmup_epochs : int
        Length of the warm-up, >= 1.
    after : callable or None, default None
        The schedule ``after(epoch, base_lr)`` that follows (its epochs counted from the
        end of the warm-up); ``None`` keeps ``base_lr``.
    start_factor : float, default 1/3
        Keyword-only; the fraction of ``base_lr`` at epoch 0, in (0, 1].
    """

    def __init__(
        self, warmup_epochs: int, after: Callable[[int, float], float] | None = None, *, start_factor: float = 1.0 / 3
    ):
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", lo=1)
        if after is not None and not callable(after):
            raise TypeError(f"after must be a schedule (callable(epoch, base_lr)) or None, got {after!r}")
        self.after = after
        self.start_factor = check_real(start_factor, "start_factor", lo=0, hi=1, lo_open=True)

    def __call__(self, epoch, base_lr) -> float:
        epoch = check_int(epoch, "epoch", lo=0)
        base_lr = check_real(base_lr, "base_lr", lo=0, lo_open=True)
        if epoch < self.warmup_epochs:
            return base_lr * (self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup_epochs)
        if self.after is None:
            return base_lr
        return self.after(epoch - self.warmup_epochs, base_lr)

    def __repr__(self):
        return f"LinearWarmup({self.warmup_epochs}, after={self.after!r}, start_factor={self.start_factor})"
