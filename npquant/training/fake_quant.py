"""Fake quantization with a gradient: the straight-through estimators, LSQ and PACT.

Fake quantization rounds a float32 tensor onto the quantization grid and returns floats,
``y = S * (clamp(round(x / S) + Z, qmin, qmax) - Z)`` (:func:`npquant.affine.fake_quantize`,
whose arithmetic and rounding this module reuses). Rounding has zero derivative almost
everywhere, so training uses a *gradient rule* instead, named like a rounding mode:

===========  ================================================================================
rule         gradient
===========  ================================================================================
``ste``      straight-through: ``dx = dy`` everywhere (Bengio et al. 2013)
``clipped``  straight-through inside the grid, zero where the code was clamped:
             ``dx = dy * [qmin <= round(x / S) + Z <= qmax]`` -- PyTorch's rule: inclusive, and
             tested on the *rounded* code, so ``x`` up to half a step beyond
             ``S * (qmax - Z)`` still passes its gradient
``lsq``      the clipped rule for ``x`` plus a learned step size ``S`` (and optionally zero
             point) with LSQ's gradient and gradient scale (Esser et al. 2020), as
             ``torch.ao.quantization._LearnableFakeQuantize`` computes it
``pact``     a learned clipping level ``alpha``: ``y = fake_quantize(clip(x, 0, alpha))``,
             ``d alpha = sum(dy where x >= alpha)`` (Choi et al. 2018)
===========  ================================================================================

Functions (arrays in, arrays out) are the core; the layers :class:`FakeQuantize`,
:class:`LSQFakeQuantize` and :class:`PACTFakeQuantize` wrap them in the training contract
of :mod:`npquant.training` (``forward``/``backward``/``parameters``/``grads``/``train``/
``eval``). Everything is float32 except where stated: sums of parameter gradients are
accumulated in float64 and rounded once to float32.

Bit-exactness with PyTorch 2.13 (CPU; ``tests/test_qat.py``):

* ``method="mul"`` forward = ``torch.fake_quantize_per_tensor_affine`` and
  ``fake_quantize_per_channel_affine`` (values ``Z + rint(x * float32(1/S))``), and their
  gradient with respect to ``x`` = the ``clipped`` rule, bit for bit (including the sign
  of a masked zero: ``dy * 0``).
* LSQ: forward and ``dx`` equal ``_LearnableFakeQuantize`` (per-tensor and per-channel)
  bit for bit, and so does each element's contribution to ``d scale`` and
  ``d zero_point``. Torch's backward recomputes the code as ``rint(Z + x * R)`` (not the
  forward's ``Z + rint(x * R)``), and what its compiler made of that depends on the CPU
  path ATen dispatches to: on the AVX2 and AVX-512 kernels it is one fused multiply-add
  ``rint(fma(x, R, Z))`` and ``x_fq - x`` is ``fma(q - Z, S, -x)``
  (``grad_method="fma"``, the default); on the DEFAULT kernel
  (``ATEN_CPU_CAPABILITY=default``) every operation is rounded to float32
  (``grad_method="mul_add"``). The *sums* over elements differ in the last bits: torch
  adds float32 in its own order, npquant in float64 (measured: relative differences up
  to 4e-6 on 1e5 elements, where the contributions cancel).
* Torch's *per-tensor* LSQ backward rounds the zero point as ``trunc(clamp(z + 0.5))``
  while its forward uses ``rint(z)``: they disagree for every negative integer ``z``
  (``-5`` becomes ``-4``), a negative fractional one and a ``.5`` tie. npquant uses the
  forward's zero point in both passes; ``backward_zero_point="torch"`` reproduces
  torch's. The per-channel backward uses ``rint(z)`` (as npquant).

Deliberate differences from PyTorch: an observer with memory only observes in training
mode; LSQ's grad scale defaults to on (``_LearnableFakeQuantize``'s
``use_grad_scaling`` defaults to off); a symmetric unsigned spec keeps its zero point
``2^(b-1)`` (``_LearnableFakeQuantize`` forces 0 for every symmetric scheme).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array, check_bool, check_choice, check_int, check_qparams, check_scale, check_scales
from .._checks import brief as _brief
from ..affine import BACKENDS, METHODS, fake_quantize
from ..granularity import expand_params, param_shape, reduce_groups
from ..observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    Observer,
    PerChannelMinMaxObserver,
)
from ..qparams import FLOAT32_EPS, QParams, QuantSpec, fit_qparams
from ..rounding import fma32, round_values

__all__ = [
    "GRADIENTS",
    "GRAD_METHODS",
    "PACT_INITS",
    "fake_quantize_with_mask",
    "clip_mask",
    "ste_backward",
    "lsq_grad_factor",
    "lsq_forward",
    "lsq_backward",
    "pact_qparams",
    "pact_forward",
    "pact_backward",
    "FakeQuantize",
    "LSQFakeQuantize",
    "PACTFakeQuantize",
    "weight_fake_quant",
    "activation_fake_quant",
]

GRADIENTS = ("ste", "clipped", "lsq", "pact")
"""The gradient rules of fake quantization (see the module docstring)."""

GRAD_METHODS = ("fma", "mul_add")
"""Arithmetic of LSQ's backward pass: PyTorch's AVX2/AVX-512 kernels (``fma``) or its
DEFAULT kernel (``mul_add``)."""

_FAKE_METHODS = tuple(m for m in METHODS if m != "torch")


# ----------------------------------------------------------------------------------------
# argument checks


def _check_grad(grad_y, shape, name: str = "grad_y") -> np.ndarray:
    """``grad_y`` as a finite float32 array of exactly ``shape``."""
    g = np.asarray(grad_y)
    if g.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {g.dtype}")
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(g.shape)}, but the forward output had shape {tuple(shape)}")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{name} contains NaN or infinity")
    return np.asarray(g, dtype=np.float32)


def _check_spec(spec) -> QuantSpec:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    return spec


def _check_method(method: str) -> str:
    if method == "torch":
        return "mul"  # what torch.fake_quantize_per_*_affine compute
    return check_choice(method, "method", _FAKE_METHODS)


# ----------------------------------------------------------------------------------------
# fixed-range fake quantization: forward with its clip mask, straight-through backward


def clip_mask(x: npt.ArrayLike, qparams: QParams, *, method: str = "mul") -> np.ndarray:
    """Where the code of ``x`` before clamping lies in ``[qmin, qmax]`` (bool, ``x``'s shape).

    The code is computed with the arithmetic of :func:`npquant.affine.quantize`'s
    ``method`` and the spec's rounding (:func:`npquant.rounding.round_values`):
    ``Z + round(x * R)`` (``mul``, PyTorch's fake quantization), ``Z + round(x / S)``
    (``divide``), ``round(float32(x * R) + Z)`` (``mul_add``) or ``round(fma(x, R, Z))``
    (``fma``), with ``R = float32(1 / S)``. Both ends are inclusive. This is the mask of
    the ``clipped`` straight-through estimator.

    Parameters
    ----------
    x : float array
        Finite, non-empty (converted to float32).
    qparams : QParams
        Fitting ``x``.
    method : str, default ``"mul"``
        Keyword-only; ``"mul"`` (``"torch"`` is a synonym), ``"divide"``, ``"mul_add"``
        or ``"fma"``.

    Returns
    -------
    numpy.ndarray
        bool of ``x``'s shape.
    """
    qparams = check_qparams(qparams)
    method = _check_method(method)
    x = as_float_array(x, "x")
    qparams.check_fits(x.shape, "x")
    return _clip_mask(x, qparams, method)


def _clip_mask(x: np.ndarray, qparams: QParams, method: str) -> np.ndarray:
    spec = qparams.spec
    s = expand_params(qparams.scale, x.shape, spec.axis, spec.block_size)
    z = expand_params(qparams.zero_point, x.shape, spec.axis, spec.block_size)
    r = np.float32(1) / s
    with np.errstate(over="ignore", invalid="ignore"):
        if method == "mul":
            v = x * r
        elif method == "divide":
            v = x / s
        elif method == "mul_add":
            v = x * r + z.astype(np.float32)
        else:
            v = fma32(x, r, z)
        v = np.ascontiguousarray(v, dtype=np.float32)
        code = round_values(v, spec.rounding, seed=spec.seed).astype(np.float64)
    if method in ("mul", "divide"):
        code = code + z
    return (code >= spec.qmin) & (code <= spec.qmax)


def fake_quantize_with_mask(
    x: npt.ArrayLike, qparams: QParams, *, method: str = "mul", backend: str = "numba"
) -> tuple[np.ndarray, np.ndarray]:
    """Fake-quantize ``x`` and say where its gradient passes under the ``clipped`` rule.

    Parameters
    ----------
    x : float array
        Finite, non-empty (converted to float32).
    qparams : QParams
        Fitting ``x`` (per-tensor, per-channel or per-group; any bits,
        signed or not, any rounding mode).
    method : str
        ``"mul"`` (the default: PyTorch's ``fake_quantize_per_*_affine``;
        ``"torch"`` is a synonym), ``"divide"`` (ONNX), ``"mul_add"`` or ``"fma"``.
    backend : ``"numba"`` or ``"numpy"``
        Same bits.

    Returns
    -------
    y : float32 array, ``x``'s shape
        :func:`npquant.affine.fake_quantize` ``(x, qparams)``.
    mask : bool array, ``x``'s shape
        :func:`clip_mask` -- True where the unclamped code lies in ``[qmin, qmax]``.
    """
    qparams = check_qparams(qparams)
    method = _check_method(method)
    check_choice(backend, "backend", BACKENDS)
    x = as_float_array(x, "x")
    qparams.check_fits(x.shape, "x")
    y = fake_quantize(x, qparams, method=method, backend=backend)
    return y, _clip_mask(x, qparams, method)


def ste_backward(grad_y: npt.ArrayLike, mask: npt.ArrayLike, gradient: str = "clipped") -> np.ndarray:
    """Gradient of a fixed-range fake quantization with respect to its input.

    ``gradient="ste"`` passes ``grad_y`` unchanged (a float32 copy); ``"clipped"``
    returns ``grad_y * mask`` in float32 (a masked element is ``dy * 0``, so ``-0.0`` where
    ``dy < 0``, as PyTorch's ``dY * mask``). ``mask`` comes from
    :func:`fake_quantize_with_mask`; ``grad_y`` must have its shape.

    Parameters
    ----------
    grad_y : float array
        The gradient of the output, finite, of ``mask``'s shape.
    mask : bool array
        The clip mask.
    gradient : ``"ste"`` or ``"clipped"``, default ``"clipped"``
        The rule.

    Returns
    -------
    numpy.ndarray
        float32 of ``mask``'s shape.
    """
    check_choice(gradient, "gradient", ("ste", "clipped"))
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
    g = _check_grad(grad_y, mask.shape)
    if gradient == "ste":
        return g.copy()
    return g * mask.astype(np.float32)


# ----------------------------------------------------------------------------------------
# LSQ: learned step size (and zero point)


def _lsq_qp(spec: QuantSpec) -> int:
    """``Q_P`` of LSQ's gradient scale: ``qmax`` (PyTorch's ``quant_max``), at least 1."""
    return spec.qmax if spec.qmax > 0 else -spec.qmin


def lsq_grad_factor(numel: int, spec: QuantSpec) -> np.float32:
    """LSQ's gradient scale ``g = 1 / sqrt(N * Q_P)`` as PyTorch computes it.

    ``N`` is the number of elements of the fake-quantized tensor (for activations the
    whole batch, as ``_LearnableFakeQuantize(use_grad_scaling=True)`` does; the paper
    counts features), ``Q_P = qmax`` (``-qmin`` for 1-bit signed, whose ``qmax`` is 0).
    Computed as Python's ``1.0 / (N * Q_P) ** 0.5`` in float64, then rounded to float32
    as ATen's kernel receives it.

    Parameters
    ----------
    numel : int
        ``N``, >= 1.
    spec : QuantSpec
        The quantization, for ``Q_P``.

    Returns
    -------
    numpy.float32
        ``g``.
    """
    numel = check_int(numel, "numel", lo=1)
    _check_spec(spec)
    return np.float32(1.0 / (numel * _lsq_qp(spec)) ** 0.5)


def _lsq_zero_point(zero_point, spec: QuantSpec, shape, name="zero_point") -> np.ndarray:
    """The integer zero point (as float64) the forward uses: ``clamp(rint(z), qmin, qmax)``."""
    z = np.asarray(zero_point)
    if z.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {z.dtype}")
    z = np.array(z, dtype=np.float32)
    if z.shape != tuple(shape):
        if z.size == 1:
            z = np.full(shape, z.reshape(()), np.float32)
        else:
            raise ValueError(f"{name} has shape {z.shape}, expected {tuple(shape)} (the shape of scale)")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} must be finite, got {_brief(z)}")
    return np.clip(np.rint(z), spec.qmin, spec.qmax).astype(np.float64)


def _lsq_qparams(scale, zero_point, spec: QuantSpec) -> QParams:
    s = check_scales(scale, "scale")
    if spec.symmetric:
        z = spec.symmetric_zero_point
    else:
        z = _lsq_zero_point(zero_point, spec, s.shape).astype(np.int32)
    return QParams(s, z, spec)


def lsq_forward(
    x: npt.ArrayLike, scale: npt.ArrayLike, zero_point: npt.ArrayLike, spec: QuantSpec, *, backend: str = "numba"
) -> np.ndarray:
    """LSQ's forward pass: fake quantization with a float scale and zero point.

    ``scale`` (positive, float32) and ``zero_point`` (any real; ignored for a symmetric
    ``spec``, which uses its fixed zero point) have the parameter shape of ``spec``'s
    granularity. The zero point used is ``clamp(rint(zero_point), qmin, qmax)`` and the
    arithmetic is PyTorch's fake quantization (``method="mul"``): this equals
    ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``. Returns float32.

    Parameters
    ----------
    x : float array
        Finite, non-empty (converted to float32).
    scale : float array
        Positive, of the parameter shape.
    zero_point : real array
        Of the parameter shape (a single value is broadcast); ignored for a symmetric spec.
    spec : QuantSpec
        The quantization (any granularity).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        Keyword-only; same bits.

    Returns
    -------
    numpy.ndarray
        float32 of ``x``'s shape, on the grid, saturated to ``[qmin, qmax]``.
    """
    spec = _check_spec(spec)
    check_choice(backend, "backend", BACKENDS)
    x = as_float_array(x, "x")
    qp = _lsq_qparams(scale, zero_point, spec)
    qp.check_fits(x.shape, "x")
    return fake_quantize(x, qp, method="mul", backend=backend)


def lsq_backward(
    grad_y: npt.ArrayLike,
    x: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: npt.ArrayLike,
    spec: QuantSpec,
    *,
    grad_factor: float = 1.0,
    grad_method: str = "fma",
    backward_zero_point: str = "forward",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LSQ's backward pass: gradients with respect to ``x``, the scale and the zero point.

    With ``R = float32(1 / S)``, the code is recomputed from ``x`` as PyTorch's backward
    does, ``q = round(Z + x * R)`` (``grad_method`` says how: ``"fma"`` one rounding,
    ``"mul_add"`` two; the spec's rounding mode). Per element, with ``g = grad_factor``
    (:func:`lsq_grad_factor` for LSQ's scale, 1 for none):

    ============================  ================================  =====================
    where                         d scale                           d zero point
    ============================  ================================  =====================
    ``qmin <= q <= qmax``         ``dy * (x_fq - x) * R * g``       0
    ``q < qmin``                  ``dy * (qmin - Z) * g``           ``-dy * S * g``
    ``q > qmax``                  ``dy * (qmax - Z) * g``           ``-dy * S * g``
    ============================  ================================  =====================

    where ``x_fq - x`` is ``fma(q - Z, S, -x)`` (``"fma"``) or ``float32((q - Z) * S) - x``
    (``"mul_add"``); every product is float32, left to right. ``dx = dy * [qmin <= q <=
    qmax]`` (the ``clipped`` rule on this ``q``). With ``Z = 0`` inside the grid this is
    LSQ's ``round(x / S) - x / S``; at the ends it is ``-Q_N`` and ``Q_P``. Unlike the
    paper, the test is on the rounded code (PyTorch's), so ``x / S`` up to half a step
    beyond ``Q_P`` still counts as inside.

    ``backward_zero_point``: ``"forward"`` uses the forward's ``clamp(rint(z))``;
    ``"torch"`` reproduces ATen's per-tensor backward, ``trunc(clamp(z + 0.5, qmin,
    qmax))`` (it differs from ``rint`` for a fractional negative ``z`` and for ties; the
    per-channel backward uses ``rint`` either way).

    For a symmetric ``spec`` the zero point is fixed and ``d_zero_point`` is still
    returned (what it would be if it were learned).

    Parameters
    ----------
    grad_y : float array
        The gradient of the output, finite, of ``x``'s shape.
    x : float array
        The forward's input.
    scale : float array
        Positive, of the parameter shape.
    zero_point : real array
        Of the parameter shape; ignored for a symmetric spec.
    spec : QuantSpec
        The quantization (any granularity).
    grad_factor : float, default 1.0
        Keyword-only; ``g``, positive.
    grad_method : ``"fma"`` or ``"mul_add"``, default ``"fma"``
        The arithmetic (see above).
    backward_zero_point : ``"forward"`` or ``"torch"``, default ``"forward"``
        The zero point of the backward pass (see above).

    Returns
    -------
    dx : numpy.ndarray
        float32 of ``x``'s shape.
    d_scale, d_zero_point : numpy.ndarray
        float32 of ``scale``'s shape, each the float64 sum of the float32 element
        contributions rounded once.
    """
    spec = _check_spec(spec)
    check_choice(grad_method, "grad_method", GRAD_METHODS)
    check_choice(backward_zero_point, "backward_zero_point", ("forward", "torch"))
    x = as_float_array(x, "x")
    s_p = check_scales(scale, "scale")
    if spec.axis is not None and x.ndim == 0:
        raise ValueError(f"x is a scalar but spec is {spec.granularity} (axis={spec.axis})")
    expected = param_shape(x.shape, spec.axis, spec.block_size)
    if s_p.shape != expected:
        if spec.axis is None and s_p.size == 1:
            s_p = s_p.reshape(())
        else:
            raise ValueError(
                f"scale of shape {s_p.shape} does not fit x of shape {x.shape}: "
                f"{spec.granularity} with axis={spec.axis}, block_size={spec.block_size} needs {expected}"
            )
    dy = _check_grad(grad_y, x.shape)
    gf = np.float32(check_scales(grad_factor, "grad_factor"))
    if spec.symmetric:
        z_p = np.full(s_p.shape, spec.symmetric_zero_point, np.float64)
    elif backward_zero_point == "torch" and spec.axis is None:
        z_p = np.asarray(zero_point, dtype=np.float32)
        _lsq_zero_point(z_p, spec, s_p.shape)  # validates
        z_p = np.trunc(np.clip(z_p.reshape(s_p.shape) + np.float32(0.5), spec.qmin, spec.qmax)).astype(np.float64)
    else:
        z_p = _lsq_zero_point(zero_point, spec, s_p.shape)
    ax, bs = spec.axis, spec.block_size
    s = expand_params(s_p, x.shape, ax, bs)
    z = expand_params(z_p, x.shape, ax, bs)
    r = np.float32(1) / s
    z32 = z.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if grad_method == "fma":
            v = fma32(x, r, z)
        else:
            v = x * r + z32
        q = round_values(np.ascontiguousarray(v, dtype=np.float32), spec.rounding, seed=spec.seed).astype(np.float64)
    below = q < spec.qmin
    above = q > spec.qmax
    inside = ~(below | above)
    dx = dy * inside.astype(np.float32)
    k = (np.clip(q, spec.qmin, spec.qmax) - z).astype(np.float32)  # exact: |k| < 2^17
    if grad_method == "fma":
        diff = fma32(k, s, -x.astype(np.float64))
    else:
        diff = k * s - x
    with np.errstate(over="ignore", invalid="ignore"):
        ds_in = ((dy * diff) * r) * gf
        ds_lo = (dy * (np.float32(spec.qmin) - z32)) * gf
        ds_hi = (dy * (np.float32(spec.qmax) - z32)) * gf
        ds_e = np.where(inside, ds_in, np.where(below, ds_lo, ds_hi)).astype(np.float32)
        dz_e = np.where(inside, np.float32(0), ((-dy) * s) * gf).astype(np.float32)
    d_scale = _group_sum(ds_e, spec, s_p.shape)
    d_zero = _group_sum(dz_e, spec, s_p.shape)
    return dx, d_scale, d_zero


def _group_sum(e: np.ndarray, spec: QuantSpec, shape) -> np.ndarray:
    """Sum of float32 contributions over each parameter group, in float64, rounded once."""
    total = reduce_groups(e.astype(np.float64), np.add, spec.axis, spec.block_size)
    return np.asarray(total, dtype=np.float32).reshape(shape)


# ----------------------------------------------------------------------------------------
# PACT: learned clipping level


def _pact_check_spec(spec: QuantSpec) -> QuantSpec:
    spec = _check_spec(spec)
    if spec.axis is not None:
        raise ValueError(f"PACT learns one clipping level per tensor: spec.axis must be None, got {spec.axis}")
    if spec.signed:
        if not spec.symmetric:
            raise ValueError("PACT with a signed spec clips to [-alpha, alpha]: spec.symmetric must be True")
        if spec.qmax < 1:
            raise ValueError(f"PACT needs qmax >= 1; bits={spec.bits} signed has qmax={spec.qmax}")
    else:
        if spec.symmetric or spec.qmin != 0:
            raise ValueError(
                "PACT with an unsigned spec clips to [0, alpha] with zero point 0: spec must be "
                "asymmetric (symmetric=False) without narrow_range"
            )
    return spec


def _pact_alpha(alpha) -> np.float32:
    """``alpha`` (a real scalar or size-1 array) as a positive finite float32."""
    a = np.asarray(alpha)
    return check_scale(a.reshape(()) if a.ndim and a.size == 1 and a.dtype.kind in "fiu" else alpha, "alpha")


def pact_qparams(alpha: float, spec: QuantSpec) -> QParams:
    """The grid PACT quantizes onto: ``S = float32(alpha / qmax)``, ``Z = 0``.

    Parameters
    ----------
    alpha : float
        The clipping level, positive and finite (a scalar or size-1 array).
    spec : QuantSpec
        Per-tensor; unsigned asymmetric without narrow range, or signed symmetric.

    Returns
    -------
    QParams
        The grid.
    """
    spec = _pact_check_spec(spec)
    a = _pact_alpha(alpha)
    return QParams(a / np.float32(spec.qmax), 0, spec)


def pact_forward(x: npt.ArrayLike, alpha: float, spec: QuantSpec, *, backend: str = "numba") -> np.ndarray:
    """PACT: ``fake_quantize(clip(x, lo, alpha))`` on the grid of :func:`pact_qparams`.

    ``lo = 0`` for an unsigned ``spec`` (the paper's activation function, replacing ReLU)
    and ``-alpha`` for a signed symmetric one. Per-tensor only. Rounding is the spec's,
    arithmetic ``method="mul"``. Returns float32 of ``x``'s shape.

    Parameters
    ----------
    x : float array
        Finite, non-empty.
    alpha : float
        The clipping level, positive and finite.
    spec : QuantSpec
        As in :func:`pact_qparams`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        Keyword-only; same bits.

    Returns
    -------
    numpy.ndarray
        float32 of ``x``'s shape.
    """
    spec = _pact_check_spec(spec)
    check_choice(backend, "backend", BACKENDS)
    x = as_float_array(x, "x")
    a = _pact_alpha(alpha)
    lo = np.float32(0) if not spec.signed else -a
    return fake_quantize(np.clip(x, lo, a), pact_qparams(a, spec), method="mul", backend=backend)


def pact_backward(
    grad_y: npt.ArrayLike, x: npt.ArrayLike, alpha: float, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """PACT's gradients ``(dx, d_alpha)``.

    Unsigned: ``dx = dy`` where ``0 <= x < alpha``, else 0; ``d_alpha = sum(dy where x >=
    alpha)``. Signed: ``dx = dy`` where ``-alpha < x < alpha``; ``d_alpha = sum(dy where x
    >= alpha) - sum(dy where x <= -alpha)``. Rounding is straight-through, and the grid's
    dependence on ``alpha`` below the clip is ignored, as in the paper.

    Parameters
    ----------
    grad_y : float array
        The gradient of the output, finite, of ``x``'s shape.
    x : float array
        The forward's input.
    alpha : float
        The clipping level.
    spec : QuantSpec
        As in :func:`pact_qparams`.

    Returns
    -------
    dx : numpy.ndarray
        float32 of ``x``'s shape.
    d_alpha : numpy.ndarray
        A float32 scalar (0-d array), summed in float64.
    """
    spec = _pact_check_spec(spec)
    x = as_float_array(x, "x")
    a = _pact_alpha(alpha)
    dy = _check_grad(grad_y, x.shape)
    hi = x >= a
    if spec.signed:
        lo = x <= -a
        dx = dy * (~(hi | lo)).astype(np.float32)
        da = dy[hi].astype(np.float64).sum() - dy[lo].astype(np.float64).sum()
    else:
        dx = dy * ((x >= 0) & ~hi).astype(np.float32)
        da = dy[hi].astype(np.float64).sum()
    return dx, np.array(da, dtype=np.float32)


# ----------------------------------------------------------------------------------------
# layers


class _FakeQuantBase:
    """Train/eval mode, the fake-quant switch and the parameter part of the contract.

    Like the layers of :mod:`npquant.models.nn`, a fake-quant layer starts in eval mode;
    ``train()`` (or a model's) switches it to training mode.
    """

    gradient: str = ""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.training = False
        self.fake_quant_enabled = True
        self.grads: dict = {}
        self._cache = None

    def __call__(self, x: npt.ArrayLike) -> np.ndarray:
        return self.forward(x)

    def train(self, mode: bool = True) -> _FakeQuantBase:
        """Training mode (the default): forward keeps what backward needs. Returns self."""
        self.training = check_bool(mode, "mode")
        if not self.training:
            self._cache = None
        return self

    def eval(self) -> _FakeQuantBase:
        """Evaluation mode: no caching, no observation, no learning. Returns self."""
        return self.train(False)

    def enable_fake_quant(self, enabled: bool = True) -> _FakeQuantBase:
        """Fake-quantize (True) or pass ``x`` through unchanged (False). Returns self."""
        self.fake_quant_enabled = check_bool(enabled, "enabled")
        return self

    def disable_fake_quant(self) -> _FakeQuantBase:
        return self.enable_fake_quant(False)

    def parameters(self) -> dict:
        """``{name: live array}`` of the learned parameters (``{}`` without any)."""
        return {}

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g[...] = 0

    def state_dict(self) -> dict:
        """Copies of the parameters (LSQ: ``scale``, ``zero_point``; PACT: ``alpha``)."""
        return {k: v.copy() for k, v in self._state().items()}

    def _state(self) -> dict:
        return self.parameters()

    def load_state_dict(self, state: dict, *, strict: bool = True) -> _FakeQuantBase:
        """Copy ``state`` into the live arrays (in place; shapes must match). Returns self."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
        own = self._state()
        if check_bool(strict, "strict"):
            for k in own:
                if k not in state:
                    raise ValueError(f"state dict is missing {k!r}")
            for k in state:
                if k not in own:
                    raise ValueError(f"state dict has unexpected key {k!r}")
        for k, v in state.items():
            if k in own:
                a = np.asarray(v)
                if a.dtype.kind not in "fiu" or a.shape != own[k].shape or not np.all(np.isfinite(a)):
                    raise ValueError(f"{k} must be a finite real array of shape {own[k].shape}, got {_brief(a)}")
                np.copyto(own[k], a, casting="unsafe")
        self._loaded()
        return self

    def _loaded(self) -> None:
        pass

    def _need_cache(self):
        if not self.training:
            raise RuntimeError(f"{self.name}: backward needs training mode; call train() before forward")
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        return self._cache


class FakeQuantize(_FakeQuantBase):
    """Fake quantization with a range from an observer (or fixed qparams), PyTorch style.

    Parameters
    ----------
    observer : npquant Observer or None
        In training mode, with the observer enabled, each forward first shows ``x`` to the
        observer and then fake-quantizes with the qparams it returns now (PyTorch's
        ``FakeQuantize``: observe, then fake-quantize). Min-max observers reproduce
        PyTorch's; the moving-average ones track activation ranges during training.
    qparams : QParams or None
        Initial (or, without an observer, fixed) qparams.
    gradient : ``"clipped"`` (PyTorch's) or ``"ste"``
    method : str
        Fake-quantization arithmetic, ``"mul"`` (PyTorch's) by default; see
        :func:`fake_quantize_with_mask`.
    reset_observer : bool
        Forget earlier batches before each observation, so the range is the current
        tensor's (for weights: Jacob et al.'s min and max of the current weights). Such an
        observer has no memory, so it observes in eval mode too: the weights' qparams
        then follow the weights after the last optimizer step.
    backend : ``"numba"`` or ``"numpy"``
    name : str, default ``"fake_quant"``
        The layer's name.

    Notes
    -----
    Switches: :meth:`enable_observer` / :meth:`disable_observer` (freeze the range),
    :meth:`enable_fake_quant` / :meth:`disable_fake_quant` (identity). Deviation from
    PyTorch: an observer with memory (``reset_observer=False``) only sees data in training
    mode, so evaluating a model does not move its ranges (PyTorch's ``FakeQuantize``
    observes in eval mode too unless disabled). No parameters: ``parameters()`` is ``{}``.

    ``forward(x)``: float array -> float32 of ``x``'s shape. ``backward(grad_y)`` ->
    ``grad_x`` by the gradient rule.
    """

    def __init__(
        self,
        observer: Observer | None = None,
        *,
        qparams: QParams | None = None,
        gradient: str = "clipped",
        method: str = "mul",
        reset_observer: bool = False,
        backend: str = "numba",
        name: str = "fake_quant",
    ):
        super().__init__(name)
        if observer is not None and not isinstance(observer, Observer):
            raise TypeError(f"observer must be an npquant Observer, got {type(observer).__name__}")
        if qparams is not None:
            check_qparams(qparams)
        if observer is None and qparams is None:
            raise ValueError("FakeQuantize needs an observer, qparams, or both")
        if observer is not None and qparams is not None and qparams.spec != observer.effective_spec:
            raise ValueError(
                f"qparams.spec {qparams.spec} differs from the observer's effective spec {observer.effective_spec}"
            )
        self.gradient = check_choice(gradient, "gradient", ("ste", "clipped"))
        self.method = _check_method(method)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.reset_observer = check_bool(reset_observer, "reset_observer")
        self.observer = observer
        self.observer_enabled = observer is not None
        self._qparams = qparams

    @property
    def spec(self) -> QuantSpec:
        """The spec of the fake quantization (the observer's effective spec)."""
        return self.observer.effective_spec if self.observer is not None else self._qparams.spec

    @property
    def qparams(self) -> QParams | None:
        """The qparams of the last fake quantization (None before the first observation)."""
        return self._qparams

    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        """Let the observer update the range in training mode (True) or freeze it. Returns self."""
        enabled = check_bool(enabled, "enabled")
        if enabled and self.observer is None:
            raise ValueError(f"{self.name} has no observer to enable")
        self.observer_enabled = enabled
        return self

    def disable_observer(self) -> FakeQuantize:
        return self.enable_observer(False)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_float_array(x, "x")
        if self.observer_enabled and (self.training or self.reset_observer):
            if self.reset_observer:
                self.observer.reset()
            self.observer.update(x)
            self._qparams = self.observer.qparams()
        if not self.fake_quant_enabled:
            y, mask = x.copy(), None
        else:
            if self._qparams is None:
                raise RuntimeError(
                    f"{self.name} has no qparams yet: run a forward pass in training mode with "
                    "the observer enabled, or pass qparams"
                )
            y, mask = fake_quantize_with_mask(x, self._qparams, method=self.method, backend=self.backend)
        if self.training:
            self._cache = (x.shape, mask)
        return y

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        shape, mask = self._need_cache()
        if mask is None:
            return _check_grad(grad_y, shape).copy()
        return ste_backward(grad_y, mask, self.gradient)

    def __repr__(self) -> str:
        return (
            f"FakeQuantize(observer={self.observer!r}, gradient={self.gradient!r}, "
            f"method={self.method!r}, reset_observer={self.reset_observer}, name={self.name!r})"
        )


def weight_fake_quant(
    spec: QuantSpec | None = None, *, gradient: str = "clipped", name: str = "weight_fake_quant"
) -> FakeQuantize:
    """Fake quantization for weights: min-max of the current weights at each training step.

    ``spec`` defaults to ``QuantSpec(bits=8, signed=True, symmetric=True, axis=0)``
    (per output channel, symmetric int8, as PyTorch's
    ``default_per_channel_weight_fake_quant``; PyTorch averages the range with a momentum
    of 0.01, here it is the range of the current weights, as in Jacob et al. 2018). A
    per-channel or per-group spec gets a :class:`~npquant.observers.PerChannelMinMaxObserver`,
    per-tensor a :class:`~npquant.observers.MinMaxObserver`, reset before each step.

    Parameters
    ----------
    spec : QuantSpec or None, default None
        The weights' quantization (see above).
    gradient : ``"clipped"`` or ``"ste"``, default ``"clipped"``
        Keyword-only; the gradient rule.
    name : str, default ``"weight_fake_quant"``
        The layer's name.

    Returns
    -------
    FakeQuantize
        With ``reset_observer=True``.
    """
    spec = QuantSpec(bits=8, signed=True, symmetric=True, axis=0) if spec is None else _check_spec(spec)
    obs = PerChannelMinMaxObserver(spec) if spec.axis is not None else MinMaxObserver(spec)
    return FakeQuantize(obs, gradient=gradient, reset_observer=True, name=name)


def activation_fake_quant(
    spec: QuantSpec | None = None,
    *,
    averaging_constant: float = 0.01,
    gradient: str = "clipped",
    name: str = "act_fake_quant",
) -> FakeQuantize:
    """Fake quantization for activations, range tracked by a moving average of min and max.

    ``spec`` defaults to ``QuantSpec(bits=8, signed=False)`` (quint8 affine, PyTorch's
    default activation fake-quant without ``reduce_range``). The observer is
    :class:`~npquant.observers.MovingAverageMinMaxObserver` (or its per-channel twin for a
    spec with an axis) with ``averaging_constant`` (PyTorch's default 0.01).

    Parameters
    ----------
    spec : QuantSpec or None, default None
        The activations' quantization (see above).
    averaging_constant : float, default 0.01
        Keyword-only; of the observer, in (0, 1].
    gradient : ``"clipped"`` or ``"ste"``, default ``"clipped"``
        The gradient rule.
    name : str, default ``"act_fake_quant"``
        The layer's name.

    Returns
    -------
    FakeQuantize
        The fake quant.
    """
    spec = QuantSpec(bits=8, signed=False) if spec is None else _check_spec(spec)
    if spec.axis is None:
        obs = MovingAverageMinMaxObserver(spec, averaging_constant=averaging_constant)
    else:
        obs = MovingAveragePerChannelMinMaxObserver(spec, averaging_constant=averaging_constant)
    return FakeQuantize(obs, gradient=gradient, name=name)


_INITS = ("lsq", "minmax")
PACT_INITS = ("fixed", "max")
"""Initializations of :class:`PACTFakeQuantize`'s clipping level."""


class LSQFakeQuantize(_FakeQuantBase):
    """Learned step size quantization (LSQ, Esser et al. 2020), as PyTorch's
    ``_LearnableFakeQuantize`` computes it.

    Parameters
    ----------
    spec : QuantSpec
        Bits, signedness, granularity (per-tensor, per-channel or per-group), rounding.
        A symmetric spec keeps its fixed zero point; an asymmetric one may learn it.
    scale, zero_point : initial values, or None
        Arrays of the parameter shape (or scalars, broadcast). Without ``scale`` the
        first training batch initializes both (``init``).
    param_shape : tuple or None
        Shape of the parameters when ``scale`` is not given and ``spec`` has an axis
        (``(C,)`` per channel; per-group, ``x``'s shape with the blocked axis divided).
    init : ``"lsq"`` or ``"minmax"``
        ``"lsq"``: ``S = 2 mean(|x|) / sqrt(Q_P)`` per group (the paper's), zero point the
        spec's symmetric one (asymmetric: 0, or ``qmin`` if 0 is not a code);
        ``"minmax"``: :func:`~npquant.qparams.fit_qparams` of the first batch (what
        PyTorch's static estimate gives with a min-max observer on one batch).
    learn_zero_point : bool or None
        Default: learned when ``spec`` is asymmetric (PyTorch learns both).
    grad_scale : True, False or a positive float
        True: ``g = 1/sqrt(N * Q_P)`` per call (:func:`lsq_grad_factor`; PyTorch's
        ``use_grad_scaling=True``); False: ``g = 1``; a float: that ``g``.
    grad_method, backward_zero_point
        See :func:`lsq_backward`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The fake-quantization kernel or its NumPy twin; same bits.
    name : str, default ``"lsq"``
        The layer's name.

    Notes
    -----
    ``parameters()`` holds the live float32 arrays ``"scale"`` (and ``"zero_point"`` when
    learned); ``grads`` the same keys. Each training forward first clamps the scale to at
    least float32's epsilon in place, as PyTorch does after an optimizer step.
    """

    gradient = "lsq"

    def __init__(
        self,
        spec: QuantSpec,
        *,
        scale: npt.ArrayLike | None = None,
        zero_point: npt.ArrayLike | None = None,
        param_shape: tuple[int, ...] | None = None,
        init: str = "lsq",
        learn_zero_point: bool | None = None,
        grad_scale: bool | float = True,
        grad_method: str = "fma",
        backward_zero_point: str = "forward",
        backend: str = "numba",
        name: str = "lsq",
    ):
        super().__init__(name)
        self.spec = _check_spec(spec)
        self.init = check_choice(init, "init", _INITS)
        self.grad_method = check_choice(grad_method, "grad_method", GRAD_METHODS)
        self.backward_zero_point = check_choice(backward_zero_point, "backward_zero_point", ("forward", "torch"))
        self.backend = check_choice(backend, "backend", BACKENDS)
        if isinstance(grad_scale, (bool, np.bool_)):
            self.grad_scale = bool(grad_scale)
        elif isinstance(grad_scale, numbers.Real):
            self.grad_scale = float(check_scale(grad_scale, "grad_scale"))
        else:
            raise TypeError(f"grad_scale must be True, False or a positive float, got {grad_scale!r}")
        if learn_zero_point is None:
            learn_zero_point = not spec.symmetric
        self.learn_zero_point = check_bool(learn_zero_point, "learn_zero_point")
        if self.learn_zero_point and spec.symmetric:
            raise ValueError("learn_zero_point=True needs an asymmetric spec (a symmetric spec fixes the zero point)")
        if scale is not None:
            shape = np.shape(scale) if param_shape is None else tuple(param_shape)
            if spec.axis is None:
                shape = ()
            self.scale = check_scales(scale, "scale", shape=shape)
            self.initialized = True
        else:
            if param_shape is None:
                if spec.axis is not None:
                    raise ValueError(
                        f"a {spec.granularity} LSQ needs scale=<array> or param_shape=<tuple> "
                        "(the optimizer needs the parameter arrays before the first batch)"
                    )
                param_shape = ()
            shape = tuple(check_int(d, "param_shape", lo=1) for d in param_shape)
            if spec.axis is None and shape != ():
                raise ValueError(f"param_shape of a per-tensor spec must be (), got {shape}")
            self.scale = np.ones(shape, np.float32)
            self.initialized = False
        zdefault = spec.symmetric_zero_point if spec.symmetric else (0 if spec.qmin <= 0 else spec.qmin)
        if zero_point is None or spec.symmetric:
            if zero_point is not None and not np.all(np.asarray(zero_point) == spec.symmetric_zero_point):
                raise ValueError(
                    f"zero_point of a symmetric spec is fixed at {spec.symmetric_zero_point}, got {_brief(zero_point)}"
                )
            self.zero_point = np.full(self.scale.shape, zdefault, np.float32)
        else:
            zp = np.asarray(zero_point)
            _lsq_zero_point(zp, spec, self.scale.shape)  # validates dtype, shape, finiteness
            self.zero_point = np.array(np.broadcast_to(zp, self.scale.shape), dtype=np.float32)
        self.grads = {k: np.zeros_like(v) for k, v in self.parameters().items()}

    def parameters(self) -> dict:
        p = {"scale": self.scale}
        if self.learn_zero_point:
            p["zero_point"] = self.zero_point
        return p

    def _state(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point}

    def _loaded(self) -> None:
        check_scales(self.scale, f"{self.name}: scale")
        if self.spec.symmetric and np.any(self.zero_point != self.spec.symmetric_zero_point):
            raise ValueError(f"{self.name}: a symmetric spec fixes zero_point at {self.spec.symmetric_zero_point}")
        self.initialized = True

    @property
    def qparams(self) -> QParams:
        """The current grid as QParams (zero point ``clamp(rint(z))``)."""
        if not self.initialized:
            raise RuntimeError(f"{self.name} is not initialized: run a training forward pass or pass scale")
        return _lsq_qparams(np.maximum(self.scale, np.float32(FLOAT32_EPS)), self.zero_point, self.spec)

    def _initialize(self, x: np.ndarray) -> None:
        spec = self.spec
        if self.init == "minmax":
            qp = fit_qparams(x, spec)
            s0, z0 = qp.scale, qp.zero_point
        else:
            mean_abs = reduce_groups(np.abs(x.astype(np.float64)), np.add, spec.axis, spec.block_size)
            count = reduce_groups(np.ones(x.shape, np.float64), np.add, spec.axis, spec.block_size)
            s0 = np.maximum(2.0 * (mean_abs / count) / math.sqrt(_lsq_qp(spec)), FLOAT32_EPS)
            z0 = self.zero_point
        s0 = np.asarray(s0, np.float32)
        if s0.shape != self.scale.shape:
            raise ValueError(
                f"{self.name}: x of shape {x.shape} gives parameters of shape {s0.shape}, "
                f"but param_shape is {self.scale.shape}"
            )
        self.scale[...] = s0
        if not spec.symmetric:
            self.zero_point[...] = z0
        self.initialized = True

    def _grad_factor(self, numel: int) -> np.float32:
        if self.grad_scale is True:
            return lsq_grad_factor(numel, self.spec)
        if self.grad_scale is False:
            return np.float32(1)
        return np.float32(self.grad_scale)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_float_array(x, "x")
        if self.training and not self.initialized:
            self._initialize(x)
        if not self.initialized:
            raise RuntimeError(f"{self.name} is not initialized: run a training forward pass first or pass scale")
        if not np.all(np.isfinite(self.scale)):
            raise ValueError(f"{self.name}: scale contains NaN or infinity: {_brief(self.scale)}")
        if not np.all(np.isfinite(self.zero_point)):
            raise ValueError(f"{self.name}: zero_point contains NaN or infinity: {_brief(self.zero_point)}")
        if self.training:
            np.maximum(self.scale, np.float32(FLOAT32_EPS), out=self.scale)
        if not self.fake_quant_enabled:
            y = x.copy()
        else:
            y = lsq_forward(
                x, np.maximum(self.scale, np.float32(FLOAT32_EPS)), self.zero_point, self.spec, backend=self.backend
            )
        if self.training:
            self._cache = (x, self.scale.copy(), self.zero_point.copy(), self.fake_quant_enabled)
        return y

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        x, s, z, enabled = self._need_cache()
        if not enabled:
            return _check_grad(grad_y, x.shape).copy()
        dx, ds, dz = lsq_backward(
            grad_y,
            x,
            s,
            z,
            self.spec,
            grad_factor=self._grad_factor(x.size),
            grad_method=self.grad_method,
            backward_zero_point=self.backward_zero_point,
        )
        self.grads["scale"] += ds
        if self.learn_zero_point:
            self.grads["zero_point"] += dz
        return dx

    def __repr__(self) -> str:
        return (
            f"LSQFakeQuantize(spec={self.spec}, scale={_brief(self.scale)}, "
            f"zero_point={_brief(self.zero_point)}, grad_scale={self.grad_scale}, name={self.name!r})"
        )


class PACTFakeQuantize(_FakeQuantBase):
    """PACT (Choi et al. 2018): a learned clipping level ``alpha``, then fake quantization.

    ``spec`` is per-tensor, unsigned asymmetric (``y`` in ``[0, alpha]``, the paper's
    activation replacing ReLU) or signed symmetric (``[-alpha, alpha]``). ``alpha`` is the
    live parameter ``parameters()["alpha"]`` (a float32 0-d array). It starts at ``alpha``
    (the paper: 10) with ``init="fixed"``, or, with ``init="max"``, at the largest value
    (largest magnitude for a signed spec) of the first training batch, as LSQ's
    ``init="minmax"`` starts from the batch's range. Since ``d alpha`` is non-zero only
    where ``x >= alpha``, an ``alpha`` above every activation never moves down; the paper
    pulls it down with L2 weight decay on ``alpha`` (the optimizer's job), ``"max"``
    starts it where the activations end. Gradients: :func:`pact_backward`.

    Parameters
    ----------
    spec : QuantSpec
        As above.
    alpha : float, default 10.0
        Keyword-only; the initial clipping level, positive and finite.
    init : ``"fixed"`` or ``"max"``, default ``"fixed"``
        See above.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The fake-quantization kernel or its NumPy twin; same bits.
    name : str, default ``"pact"``
        The layer's name.
    """

    gradient = "pact"

    def __init__(
        self, spec: QuantSpec, *, alpha: float = 10.0, init: str = "fixed", backend: str = "numba", name: str = "pact"
    ):
        super().__init__(name)
        self.spec = _pact_check_spec(spec)
        self.alpha = np.array(_pact_alpha(alpha), dtype=np.float32)
        self.init = check_choice(init, "init", PACT_INITS)
        self.initialized = self.init == "fixed"
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.grads = {"alpha": np.zeros((), np.float32)}

    def parameters(self) -> dict:
        return {"alpha": self.alpha}

    def _loaded(self) -> None:
        self.initialized = True

    @property
    def qparams(self) -> QParams:
        if not self.initialized:
            raise RuntimeError(f"{self.name} is not initialized (init='max'): run a training forward pass first")
        return pact_qparams(self.alpha, self.spec)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_float_array(x, "x")
        if self.training and not self.initialized:
            top = np.max(np.abs(x) if self.spec.signed else x) if x.size else 0.0
            self.alpha[...] = max(np.float32(top), np.float32(FLOAT32_EPS))
            self.initialized = True
        if not self.initialized:
            raise RuntimeError(f"{self.name} is not initialized (init='max'): run a training forward pass first")
        a = np.float32(self.alpha)
        if not (np.isfinite(a) and a > 0):
            raise ValueError(
                f"{self.name}: alpha must be positive and finite, got {a} (lower the learning "
                "rate or the weight decay of alpha)"
            )
        y = pact_forward(x, a, self.spec, backend=self.backend) if self.fake_quant_enabled else x.copy()
        if self.training:
            self._cache = (x, a, self.fake_quant_enabled)
        return y

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        x, a, enabled = self._need_cache()
        if not enabled:
            return _check_grad(grad_y, x.shape).copy()
        dx, da = pact_backward(grad_y, x, a, self.spec)
        self.grads["alpha"] += da
        return dx

    def __repr__(self) -> str:
        return f"PACTFakeQuantize(spec={self.spec}, alpha={float(self.alpha)}, name={self.name!r})"
