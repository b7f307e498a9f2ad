"""Fused activations as code ranges, ReLU on codes, and flatten.

A fused activation of an integer layer is a clamp of its output codes to
``[act_min, act_max]``, computed once from the output's scale ``S`` and zero point ``Z``
as TFLite's ``CalculateActivationRangeQuantizedImpl`` (``tensorflow/lite/kernels/
kernel_util.cc``) does::

    quantize(f) = Z + int32(TfLiteRound(float32(f) / float32(S)))
    none          [qmin, qmax]
    relu          [max(qmin, quantize(0)), qmax]
    relu6         [max(qmin, quantize(0)), min(qmax, quantize(6))]
    relu_n1_to_1  [max(qmin, quantize(-1)), min(qmax, quantize(1))]

The lambda takes a ``float``, so ``f / S`` is a float32 division (one rounding), and
``TfLiteRound`` is ``std::round`` of that float: round half away from zero
(``tensorflow/lite/kernels/internal/cppmath.h``). Where ``6 / S`` computed in float64
lies just below a half, float32 may round it onto the half and then away; the tests
pin such a scale.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_int, check_int_array, check_scale
from ..rounding import round_scalar

ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1")


def normalize_activation(
    activation: str | tuple[int, int] | list[int] | None, name: str = "activation", *, allow_range: bool = False
) -> str | tuple[int, int] | None:
    """The one spelling of a fused activation that every integer layer accepts.

    ``None`` and ``"none"`` both mean no activation and become ``None``; ``"relu"``,
    ``"relu6"`` and ``"relu_n1_to_1"`` are returned as they are; with ``allow_range`` a
    ``(lo, hi)`` pair of codes is returned as a tuple (its bounds are checked against the
    output range by the caller). Anything else is a ``ValueError`` naming ``name`` and
    the allowed values.

    Parameters
    ----------
    activation : str, None or (int, int)
        The activation as a caller spelled it.
    name : str, default ``"activation"``
        The argument name for error messages.
    allow_range : bool, default False
        Accept a ``(lo, hi)`` pair of codes (the layer functions and classes do).

    Returns
    -------
    None, str or (int, int)
        ``None`` for no activation, else ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"`` or
        the ``(lo, hi)`` pair.
    """
    if activation is None or (isinstance(activation, str) and activation == "none"):
        return None
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return activation
    if allow_range and isinstance(activation, (tuple, list)) and not isinstance(activation, str):
        if len(activation) != 2:
            raise ValueError(f"{name} as a range must be (lo, hi), got {activation!r}")
        return tuple(activation)
    pair = " or a (lo, hi) pair of codes" if allow_range else ""
    raise ValueError(f"{name} must be None, 'none', 'relu', 'relu6', 'relu_n1_to_1'{pair}, got {activation!r}")


def quantize_scalar_tflite(f: float, scale: float, zero_point: int) -> int:
    """TFLite's activation-range ``quantize``: ``Z + round_half_away(float32(f) / float32(S))``
    with a float32 quotient; returns a Python int (TFLite's int32 cast would overflow
    past 2^31; here the exact integer is returned and the caller clamps).

    Parameters
    ----------
    f : float
        The real value, rounded to float32 first.
    scale : float
        The output scale, positive and finite (used as float32).
    zero_point : int
        The output zero point.

    Returns
    -------
    int
        ``zero_point + round_half_away(float32(f) / float32(scale))``, not clamped.
        ``ValueError`` if the quotient overflows float32.
    """
    s = check_scale(scale, "scale")
    with np.errstate(over="ignore"):
        t = np.float32(np.float32(f) / s)
    if not np.isfinite(t):
        raise ValueError(f"{f} / scale overflows float32 (scale={scale!r})")
    return check_int(zero_point, "zero_point") + round_scalar(t, "half_away")


def activation_range(
    activation: str | None, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127
) -> tuple[int, int]:
    """``(act_min, act_max)`` codes of a fused ``activation`` (one of ``ACTIVATIONS``) for
    an output with float32 ``scale`` and integer ``zero_point`` in ``[qmin, qmax]``.

    Parameters
    ----------
    activation : str or None
        ``None`` or ``"none"`` (no activation), ``"relu"``, ``"relu6"`` or
        ``"relu_n1_to_1"`` (:func:`normalize_activation`).
    scale : float
        The output scale, positive and finite.
    zero_point : int
        The output zero point, in ``[qmin, qmax]``.
    qmin, qmax : int, default -128 and 127
        The output's code range (``qmax >= qmin``).

    Returns
    -------
    (int, int)
        ``(act_min, act_max)`` within ``[qmin, qmax]``, ``act_min <= act_max``; the
        bounds from ``quantize(f)`` are saturated to ``[qmin, qmax]``.
    """
    activation = normalize_activation(activation)
    qmin = check_int(qmin, "qmin")
    qmax = check_int(qmax, "qmax", lo=qmin)
    zero_point = check_int(zero_point, "zero_point", lo=qmin, hi=qmax)
    check_scale(scale, "scale")
    if activation is None:
        return qmin, qmax
    if activation == "relu":
        return max(qmin, quantize_scalar_tflite(0.0, scale, zero_point)), qmax
    if activation == "relu6":
        lo = max(qmin, quantize_scalar_tflite(0.0, scale, zero_point))
        return lo, max(lo, min(qmax, quantize_scalar_tflite(6.0, scale, zero_point)))
    lo = max(qmin, quantize_scalar_tflite(-1.0, scale, zero_point))
    return lo, max(lo, min(qmax, quantize_scalar_tflite(1.0, scale, zero_point)))


def clamp(q: npt.ArrayLike, act_min: int, act_max: int) -> np.ndarray:
    """Codes clamped to ``[act_min, act_max]`` (which must fit ``q``'s dtype); same dtype.

    Parameters
    ----------
    q : integer array
        The codes, any shape.
    act_min, act_max : int
        The bounds, within ``q``'s dtype range, ``act_min <= act_max``.

    Returns
    -------
    numpy.ndarray
        ``clip(q, act_min, act_max)``, of ``q``'s dtype and shape.
    """
    a = check_int_array(q, "q", what="an integer array of codes")
    info = np.iinfo(a.dtype)
    act_min = check_int(act_min, "act_min", lo=int(info.min), hi=int(info.max))
    act_max = check_int(act_max, "act_max", lo=act_min, hi=int(info.max))
    return np.clip(a, act_min, act_max).astype(a.dtype)


def relu(q: npt.ArrayLike, zero_point: int) -> np.ndarray:
    """ReLU on codes: ``max(q, zero_point)``; exact, same dtype and qparams.

    Parameters
    ----------
    q : integer array
        The codes, any shape.
    zero_point : int
        The zero point of ``q``'s qparams, within ``q``'s dtype range.

    Returns
    -------
    numpy.ndarray
        ``max(q, zero_point)``, of ``q``'s dtype and shape.
    """
    a = check_int_array(q, "q", what="an integer array of codes")
    info = np.iinfo(a.dtype)
    zp = check_int(zero_point, "zero_point", lo=int(info.min), hi=int(info.max))
    return np.maximum(a, a.dtype.type(zp))


def relu6(q: npt.ArrayLike, scale: float, zero_point: int) -> np.ndarray:
    """ReLU6 on codes: clamp to TFLite's ``relu6`` range for ``q``'s dtype range; the upper
    bound ``Z + round_half_away(float32(6) / S)`` saturates at the dtype's max.

    Parameters
    ----------
    q : integer array
        The codes, any shape.
    scale : float
        The scale of ``q``'s qparams, positive and finite.
    zero_point : int
        The zero point of ``q``'s qparams, within ``q``'s dtype range.

    Returns
    -------
    numpy.ndarray
        The clamped codes, of ``q``'s dtype and shape.
    """
    a = check_int_array(q, "q", what="an integer array of codes")
    info = np.iinfo(a.dtype)
    lo, hi = activation_range("relu6", scale, zero_point, int(info.min), int(info.max))
    return np.clip(a, lo, hi).astype(a.dtype)


def flatten(q: npt.ArrayLike) -> np.ndarray:
    """NCHW codes to ``(N, C*H*W)`` in C order (PyTorch's ``flatten(1)``): a view when
    ``q`` is contiguous, else a copy; qparams are unchanged (per-tensor only).

    Parameters
    ----------
    q : integer array (N, ...)
        The codes, at least 1-D.

    Returns
    -------
    numpy.ndarray
        Of shape ``(N, prod(rest))`` and ``q``'s dtype.
    """
    a = check_int_array(q, "q", what="an integer array of codes")
    if a.ndim < 1:
        raise ValueError(f"q must have a batch axis, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)
