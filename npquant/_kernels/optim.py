"""numba kernels of the optimizers: one SGD or Adam update of a flat float32 parameter.

Twins: ``npquant.training.optim.SGD._update_numpy`` and ``Adam._update_numpy``, which
state the formulas (PyTorch's); the fused multiply-add is ``_kernels.quantize.fma32``
(twin: ``npquant.rounding.fma32``).
A kernel does, element by element, the same float32 operations in the same order as its
twin, so both give the same bits (with the JIT and with ``NUMBA_DISABLE_JIT=1``). Every
scalar argument is already float32 (or a flag); the arrays are 1-D, C-contiguous,
float32, updated in place. Kernels never validate.
"""

import numpy as np

from ._jit import njit
from .quantize import fma32


@njit(cache=True, inline="always")
def _muladd(a, b, c, fused):
    """float32 ``a * b + c``: one rounding (``fused``) or two."""
    if fused:
        return fma32(a, b, c)
    return np.float32(np.float32(a * b) + c)


@njit(cache=True)
def sgd_update(p, g, buf, first, weight_decay, momentum, one_minus_dampening, nesterov, neg_lr, fused):
    """``torch.optim.SGD`` on one parameter. ``buf`` is the momentum buffer (ignored when
    ``momentum == 0``); ``first``: this is its first step (the buffer becomes ``g``)."""
    zero = np.float32(0.0)
    for i in range(p.size):
        gi = g[i]
        if weight_decay != zero:
            gi = _muladd(p[i], weight_decay, gi, fused)
        if momentum != zero:
            if first:
                b = gi
            else:
                b = _muladd(gi, one_minus_dampening, np.float32(buf[i] * momentum), fused)
            buf[i] = b
            if nesterov:
                gi = _muladd(b, momentum, gi, fused)
            else:
                gi = b
        p[i] = _muladd(gi, neg_lr, p[i], fused)


@njit(cache=True)
def adam_update(
    p,
    g,
    m,
    v,
    vmax,
    amsgrad,
    decay,
    weight_decay,
    lerp_coef,
    lerp_from_g,
    beta2,
    one_minus_beta2,
    bias_correction2_sqrt,
    eps,
    neg_step_size,
    fused,
):
    """``torch.optim.Adam`` / ``AdamW`` on one parameter.

    ``decay``: AdamW's factor ``1 - lr * weight_decay`` (1 for Adam); ``weight_decay``:
    Adam's coupled coefficient (0 for AdamW); ``lerp_coef`` and ``lerp_from_g``: the
    ``lerp(m, g, 1 - beta1)`` of ATen, ``m + w * (g - m)`` (``lerp_coef = w``, flag False)
    or ``g + (w - 1) * (g - m)`` (``lerp_coef = w - 1``, flag True); ``vmax``: the AMSGrad
    maximum (ignored unless ``amsgrad``)."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if decay != one:
            pi = np.float32(pi * decay)
        if weight_decay != zero:
            gi = _muladd(pi, weight_decay, gi, fused)
        mi = m[i]
        d = np.float32(gi - mi)
        if lerp_from_g:
            mi = _muladd(lerp_coef, d, gi, fused)
        else:
            mi = _muladd(lerp_coef, d, mi, fused)
        m[i] = mi
        vi = _muladd(np.float32(one_minus_beta2 * gi), gi, np.float32(v[i] * beta2), fused)
        v[i] = vi
        if amsgrad:
            if vi > vmax[i]:
                vmax[i] = vi
            vi = vmax[i]
        denom = np.float32(np.float32(np.sqrt(vi) / bias_correction2_sqrt) + eps)
        p[i] = np.float32(pi + np.float32(np.float32(neg_step_size * mi) / denom))
