"""Linear (affine) quantization: ``q = clamp(round(x / S) + Z)``, ``x_hat = S * (q - Z)``.

Everything is computed in float32, as in every production stack: ``x`` is converted to
float32 first. The stacks differ in the last bit of ``x / S`` near a rounding tie, so the
arithmetic is a named ``method`` (``R = float32(1 / S)``):

============  ==================================  ==========================================
method        code before clamping                 reproduces
============  ==================================  ==========================================
``divide``    ``round(x / S) + Z``                ONNX ``QuantizeLinear`` (reference operator)
``mul``       ``round(x * R) + Z``                ``torch.fake_quantize_per_tensor_affine`` and
                                                  ``fake_quantize_per_channel_affine``
``mul_add``   ``round(float32(x * R) + Z)``       ``torch.quantize_per_channel``
``fma``       ``round(fma(x, R, Z))`` (one        ``torch.quantize_per_tensor`` (fbgemm's AVX2
              rounding)                           path)
``torch``     whichever of the above PyTorch      in :func:`quantize`: ``fma`` per-tensor,
              uses for the same call              ``mul_add`` per-channel; in
                                                  :func:`fake_quantize`: ``mul``
============  ==================================  ==========================================

These were established by comparing against PyTorch 2.13 on x86-64 (see
``tests/test_peers_torch.py``). All round with the spec's rounding mode
(:func:`npquant.rounding.round_values`) and saturate to ``[qmin, qmax]``.
Each public function runs a numba kernel (``backend="numba"``, the default) or its
readable NumPy twin in this module (``backend="numpy"``); both give identical bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._checks import BACKENDS, as_float_array, as_int_array, check_choice, check_qparams
from ._kernels import quantize as _k
from ._kernels.modes import METHOD_CODES, ROUNDING_CODES
from .granularity import params3, split3
from .qparams import QParams, QuantSpec
from .rounding import (
    _noise,
    _round_numpy,
    fma32,
    round_scalar,
    round_values,  # noqa: F401  (its old home: npquant.affine.round_values still works)
)

METHODS = ("divide", "mul", "mul_add", "fma", "torch")


def _resolve_method(method: str, spec, fake: bool = False) -> str:
    check_choice(method, "method", METHODS)
    if method != "torch":
        return method
    if spec.block_size is not None:
        raise ValueError(
            "method='torch' has no per-group form (PyTorch has no blocked quantize); "
            "use 'divide', 'mul', 'mul_add' or 'fma'"
        )
    if fake:
        return "mul"
    return "fma" if spec.axis is None else "mul_add"


def quantize(x: npt.ArrayLike, qparams: QParams, *, method: str = "divide", backend: str = "numba") -> np.ndarray:
    """Quantize a float array to integer codes.

    Parameters
    ----------
    x : array of float16/32/64, finite, non-empty
        Converted to float32 first.
    qparams : QParams
        Must fit ``x``'s shape (see :meth:`QParams.check_fits`).
    method : str
        ``"divide"`` (ONNX), ``"mul"``, ``"mul_add"``, ``"fma"`` or ``"torch"``
        (PyTorch); see the module docstring.
    backend : ``"numba"`` or ``"numpy"``

    Returns
    -------
    numpy.ndarray
        Of ``qparams.spec.dtype`` (int8/uint8 up to 8 bits, int16/uint16 above),
        ``x``'s shape, values ``clamp(round(x / S) + Z, qmin, qmax)``: saturating, rounded
        with ``qparams.spec.rounding``.
    """
    qparams = check_qparams(qparams)
    spec = qparams.spec
    method = _resolve_method(method, spec)
    check_choice(backend, "backend", BACKENDS)
    x = as_float_array(x, "x")
    qparams.check_fits(x.shape, "x")
    shape3 = split3(x.shape, spec.axis)
    x3 = np.ascontiguousarray(x).reshape(shape3)
    s3, block = params3(qparams.scale, x.shape, spec.axis, spec.block_size)
    z3, _ = params3(qparams.zero_point, x.shape, spec.axis, spec.block_size)
    mode = ROUNDING_CODES[spec.rounding]
    if spec.rounding == "stochastic":
        noise3 = _noise(x.shape, spec.seed).reshape(shape3)
    else:
        noise3 = np.zeros((1, 1, 1), np.float32)
    # x / S may overflow float32 for huge x: the result is inf and saturates, by design.
    with np.errstate(over="ignore", invalid="ignore"):
        if backend == "numpy":
            out3 = _quantize_numpy(x3, s3, z3, block, spec.qmin, spec.qmax, spec.rounding, method, noise3, spec.dtype)
        else:
            out3 = np.empty(shape3, dtype=spec.dtype)
            _k.quantize3(x3, s3, z3, block, spec.qmin, spec.qmax, mode, METHOD_CODES[method], noise3, out3)
    return out3.reshape(x.shape)


def _per_element(p3: np.ndarray, block: int, shape3) -> np.ndarray:
    """Parameters ``(o|1, nb, i|1)`` repeated to ``(outer, n, inner)`` (broadcastable)."""
    n = shape3[1]
    return np.repeat(p3, block, axis=1)[:, :n, :] if block > 1 else p3


def _quantize_numpy(x3, s3, z3, block, qmin, qmax, rounding, method, noise3, dtype):
    """NumPy twin of ``_kernels.quantize.quantize3``."""
    s = _per_element(s3, block, x3.shape)
    z = _per_element(z3, block, x3.shape).astype(np.int32)
    rcp = np.float32(1) / s
    if method in ("divide", "mul"):
        v = x3 / s if method == "divide" else x3 * rcp
        r = _round_numpy(v, rounding, noise3)
        r = np.clip(r, (qmin - z).astype(np.float32), (qmax - z).astype(np.float32))
        return (r.astype(np.int32) + z).astype(dtype)
    if method == "mul_add":
        t = x3 * rcp + z.astype(np.float32)
    else:
        t = fma32(x3, rcp, z)
    r = np.clip(_round_numpy(t, rounding, noise3), np.float32(qmin), np.float32(qmax))
    return r.astype(np.int32).astype(dtype)


def dequantize(q: npt.ArrayLike, qparams: QParams, *, backend: str = "numba") -> np.ndarray:
    """Integer codes back to real values: ``float32(q - Z) * S`` in float32.

    ``q`` must be an integer array whose values lie in ``[qmin, qmax]`` of the spec
    (a code outside is an error, not clamped). Returns float32 of ``q``'s shape. This is
    the arithmetic of ONNX ``DequantizeLinear`` and of PyTorch's ``dequantize``.

    Parameters
    ----------
    q : array_like of int
        The codes, non-empty, in ``[qmin, qmax]`` of ``qparams.spec`` (else ``ValueError``).
    qparams : QParams
        Must fit ``q``'s shape (see :meth:`QParams.check_fits`).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The numba kernel or the NumPy twin (identical bits).

    Returns
    -------
    numpy.ndarray
        float32 of ``q``'s shape: ``float32(q - Z) * S``.
    """
    qparams = check_qparams(qparams)
    check_choice(backend, "backend", BACKENDS)
    q = as_int_array(q, "q")
    spec = qparams.spec
    qparams.check_fits(q.shape, "q")
    lo, hi = q.min(), q.max()
    if lo < spec.qmin or hi > spec.qmax:
        raise ValueError(f"q has codes in [{lo}, {hi}] outside the spec's range [{spec.qmin}, {spec.qmax}]")
    shape3 = split3(q.shape, spec.axis)
    q3 = np.ascontiguousarray(q).reshape(shape3)
    s3, block = params3(qparams.scale, q.shape, spec.axis, spec.block_size)
    z3, _ = params3(qparams.zero_point, q.shape, spec.axis, spec.block_size)
    if backend == "numpy":
        out3 = _dequantize_numpy(q3, s3, z3, block)
    else:
        out3 = np.empty(shape3, dtype=np.float32)
        _k.dequantize3(q3, s3, z3, block, out3)
    return out3.reshape(q.shape)


def _dequantize_numpy(q3, s3, z3, block):
    """NumPy twin of ``_kernels.quantize.dequantize3``."""
    s = _per_element(s3, block, q3.shape)
    z = _per_element(z3, block, q3.shape)
    return (q3.astype(np.int32) - z).astype(np.float32) * s


def fake_quantize(x: npt.ArrayLike, qparams: QParams, *, method: str = "divide", backend: str = "numba") -> np.ndarray:
    """``dequantize(quantize(x))``: float32 values on the quantization grid, ``x``'s shape.

    ``method="torch"`` means what PyTorch's ``fake_quantize_per_*_affine`` do (``mul``),
    which differs from ``torch.quantize_per_*`` near ties. Idempotent for the
    round-to-nearest modes; ``floor`` and ``stochastic`` are not, since ``S * k / S`` may
    land a hair below ``k`` in floating point.

    Parameters
    ----------
    x : array_like of float
        Finite, non-empty; converted to float32 first.
    qparams : QParams
        Must fit ``x``'s shape (see :meth:`QParams.check_fits`).
    method : str, default ``"divide"``
        As in :func:`quantize`, except that ``"torch"`` means ``"mul"`` here.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The numba kernels or their NumPy twins (identical bits).

    Returns
    -------
    numpy.ndarray
        float32 of ``x``'s shape: ``x`` rounded with ``qparams.spec.rounding``, saturated
        to ``[qmin, qmax]`` and mapped back to real values.
    """
    qparams = check_qparams(qparams)
    method = _resolve_method(method, qparams.spec, fake=True)
    return dequantize(quantize(x, qparams, method=method, backend=backend), qparams, backend=backend)


@dataclass(frozen=True)
class QuantError:
    """Error metrics between a tensor and its reconstruction (float64)."""

    mse: float
    sqnr_db: float
    max_abs: float
    cosine: float

    def __str__(self) -> str:
        return f"mse={self.mse:.4g} sqnr={self.sqnr_db:.2f} dB max_abs={self.max_abs:.4g} cosine={self.cosine:.6f}"


DYNAMIC_STACKS = ("onnx", "onnxruntime")


def dynamic_quantize_linear(
    x: npt.ArrayLike, *, stack: str = "onnx", backend: str = "numba"
) -> tuple[np.ndarray, QParams]:
    """ONNX's ``DynamicQuantizeLinear``: uint8 codes of ``x`` with a per-tensor scale and
    zero point computed from ``x``'s own range, in one call.

    In float32, as the operator's definition: ``lo = min(0, min(x))``, ``hi = max(0,
    max(x))``; ``S = (hi - lo) / 255``; ``Z = rint(clamp(0 - lo / S, 0, 255))``, ties to
    even; codes ``clamp(rint(x / S) + Z, 0, 255)``, i.e. :func:`quantize` with
    ``method="divide"``. Bit for bit equal to ``onnx.reference`` and onnxruntime 1.32
    (``tests/test_peers_onnx.py``), which differ in one case: when ``x`` is all zeros
    (``hi == lo``) the reference's scale is ``1 / 255`` and onnxruntime's ``1.0`` (the codes
    and the zero point are 0 in both).

    Parameters
    ----------
    x : array_like of real numbers, any shape, not empty
        Converted to float32 first; NaN and infinity are errors.
    stack : ``"onnx"`` (default) or ``"onnxruntime"``
        Whose scale an all-zero ``x`` gets: the reference operator's ``1 / 255`` or
        onnxruntime's ``1.0``.
    backend : ``"numba"`` (default) or ``"numpy"``
        The quantize kernel or its NumPy twin (the same bits).

    Returns
    -------
    codes : numpy.ndarray of uint8, ``x``'s shape
    qparams : QParams
        The float32 scale and the zero point, with an unsigned 8-bit per-tensor spec
        (``QuantSpec(signed=False)``).
    """
    check_choice(stack, "stack", DYNAMIC_STACKS)
    x = as_float_array(x, "x")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinity")
    hi = np.float32(max(np.float32(0.0), np.max(x)))
    lo = np.float32(min(np.float32(0.0), np.min(x)))
    if hi == lo:  # x is all zeros
        scale = np.float32(1.0) if stack == "onnxruntime" else np.float32(1.0) / np.float32(255.0)
    else:
        scale = np.float32(hi - lo) / np.float32(255.0)
    zero_point = round_scalar(np.clip(np.float32(0.0) - lo / scale, np.float32(0.0), np.float32(255.0)), "half_even")
    qp = QParams(scale, zero_point, QuantSpec(signed=False))
    return quantize(x, qp, method="divide", backend=backend), qp


def quantization_error(x: npt.ArrayLike, x_hat: npt.ArrayLike) -> QuantError:
    """MSE, SQNR in dB, max absolute error and cosine similarity, in float64.

    ``SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2)``: ``inf`` for an exact reconstruction,
    ``-inf`` when ``x`` is all zero but ``x_hat`` is not. Cosine similarity is 1 when both
    are all zero and 0 when only one is.

    Parameters
    ----------
    x : array_like of real
        The reference tensor, finite and non-empty.
    x_hat : array_like of real
        Its reconstruction, finite, of ``x``'s shape.

    Returns
    -------
    QuantError
        ``mse``, ``sqnr_db``, ``max_abs`` and ``cosine`` as Python floats.
    """
    a = np.asarray(x)
    b = np.asarray(x_hat)
    for name, arr in (("x", a), ("x_hat", b)):
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinity")
    if a.shape != b.shape:
        raise ValueError(f"x shape {a.shape} differs from x_hat shape {b.shape}")
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    d = a - b
    noise = float(d @ d)
    signal = float(a @ a)
    mse = noise / a.size
    if noise == 0:
        sqnr = float("inf")
    elif signal == 0:
        sqnr = float("-inf")
    else:
        sqnr = 10.0 * np.log10(signal / noise)
    na, nb = np.sqrt(signal), np.sqrt(float(b @ b))
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(np.clip((a @ b) / (na * nb), -1.0, 1.0))
    return QuantError(mse=mse, sqnr_db=float(sqnr), max_abs=float(np.max(np.abs(d))), cosine=cos)
