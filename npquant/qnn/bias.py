"""Bias quantization: a float bias to int32 codes at scale ``S_x S_w``, zero point 0.

The int32 bias of an integer layer (:mod:`npquant.qnn.linear`, :mod:`npquant.qnn.conv`) is
added to the accumulator before requantization. Each stack rounds ``bias / (S_x S_w)``
its own way (``method``). PyTorch's fbgemm keeps the bias in float instead: that is the
layers' ``mode="fbgemm"``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_scales
from ..affine import round_values
from ..requant.fixedpoint import INT32_MAX, INT32_MIN

#: The roundings of :func:`quantize_bias`.
BIAS_METHODS = ("onnxruntime", "tflite")


def quantize_bias(
    bias: npt.ArrayLike, s_x: float, s_w: float | npt.ArrayLike, *, method: str = "onnxruntime"
) -> np.ndarray:
    """Float bias to int32 codes at scale ``S_x * S_w`` with zero point 0.

    ``bias`` is a finite float array (out,); ``s_x`` a float32 scale; ``s_w`` a scale or
    (out,) per-channel scales. The bias scale is ``float32(S_x * S_w)`` in both methods:

    - ``"onnxruntime"``: ``round_half_even(float64(bias) / float64(scale))``, as
      ``onnxruntime.quantization`` (``quantize_bias_static_impl``) does;
    - ``"tflite"``: ``round_half_away(float32(float32(bias) * float32(1 / scale)))``, as
      TFLite's post-training quantizer (``tools/optimize``, ``SymmetricBiasQuantize``).

    Both stacks saturate a bias beyond int32; here that is a ``ValueError`` (the scale is
    too small for the bias). PyTorch's quantized linear/conv take a float bias instead.
    Returns int32 of ``bias``'s shape.

    Parameters
    ----------
    bias : float array (out,)
        The float bias, finite.
    s_x : float
        The input's per-tensor scale (positive, finite; used as float32).
    s_w : float or float array (out,)
        The weights' scale, or one per-channel scale per bias element (positive, finite;
        used as float32).
    method : ``"onnxruntime"`` or ``"tflite"``, default ``"onnxruntime"``
        The rounding arithmetic above (keyword-only).

    Returns
    -------
    numpy.ndarray
        int32 of ``bias``'s shape. ``ValueError`` where a code would not fit int32 (no
        saturation).
    """
    check_choice(method, "method", BIAS_METHODS)
    b = np.asarray(bias)
    if b.dtype.kind != "f":
        raise TypeError(f"bias must be a floating-point array, got dtype {b.dtype}")
    if b.size and not np.all(np.isfinite(b)):
        raise ValueError("bias contains NaN or infinity")
    sx = check_scales(s_x, "s_x")
    sw = check_scales(s_w, "s_w")
    if sx.size != 1:
        raise ValueError(f"s_x must be one per-tensor scale, got shape {sx.shape}")
    if sw.size != 1 and sw.shape != b.shape:
        raise ValueError(f"s_w must be a scale or one per bias element {b.shape}, got shape {sw.shape}")
    scale = (sx.reshape(()) * sw).astype(np.float32)
    if method == "onnxruntime":
        q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    else:
        with np.errstate(over="ignore", divide="ignore"):
            inv = (1.0 / scale.astype(np.float64)).astype(np.float32)
            q = round_values((b.astype(np.float32) * inv).astype(np.float32), "half_away")
    q = np.broadcast_to(q, b.shape)
    if q.size and (not np.all(np.isfinite(q)) or q.min() < INT32_MIN or q.max() > INT32_MAX):
        raise ValueError("bias / (s_x * s_w) does not fit int32: the bias scale is too small for this bias")
    return q.astype(np.int32)
