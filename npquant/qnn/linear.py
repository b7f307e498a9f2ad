"""Integer fully connected layer: int8/uint8 codes in, int32 accumulation, codes out.

``acc[n, o] = bias[o] + sum_k (q_x[n, k] - Z_x)(q_w[o, k] - Z_w[o])`` exactly in int32
(the engine of :mod:`npquant.qnn.gemm`, in the ``form`` it names, with the
``accumulation`` of :mod:`npquant.qnn.accumulation`), then
``y = clamp(round(acc * M[o]) + Z_y, lo, hi)`` with ``M = S_x S_w[o] / S_y`` and the
rounding of a named requantization ``mode``: one of
:data:`npquant.requant.modes.REQUANT_MODES` (``tflite``, ``tflite_single``, ``fp32``,
``onnx``), or ``"fbgemm"``, PyTorch fbgemm's float32 requantization with its *float*
bias (:mod:`npquant.qnn.fbgemm`). The int32 bias is at scale ``S_x S_w`` with zero point
0 (:func:`npquant.qnn.bias.quantize_bias`).

:class:`QLinear` sets a layer up once (checks, weight preparation, the worst-case
overflow check, multiplier and output range); :func:`qlinear` is ``QLinear(...)`` called
once, and :func:`linear_accumulate` its ``accumulate``: one code path, the same bits.

:func:`qmatmul` is the product of two quantized *activations* (ONNX's ``QLinearMatMul``
with a non-constant ``B``, as in attention): neither operand is a prepared weight, both
are per-tensor, and the leading axes broadcast as in :func:`numpy.matmul`::

    acc[..., m, n] = sum_k (q_a[..., m, k] - Z_a)(q_b[..., k, n] - Z_b)
    y[..., m, n]   = clamp(round(acc * S_a S_b / S_y) + Z_y, lo, hi)

Its sum is computed exactly in int64 and must fit int32 (checked on the actual values, as
no worst case over constant weights exists); the multiplier and rounding are those of
``qlinear``. ``mode="onnx"`` matches ``onnx.reference``'s QLinearMatMul; onnxruntime's
CPU kernel (float32 ``S_a S_b / S_y``, round half to even of the float32 product) is
``mode="fp32"`` (tests/test_qnn_gemm.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import BACKENDS, check_choice
from ..qparams import QParams
from ..requant.fixedpoint import INT32_MAX, INT32_MIN
from ..requant.modes import EXTRA_REQUANT_MODES, REQUANT_MODES, effective_multiplier
from . import overflow as _ovf
from ._common import (
    QLayer,
    accumulate_qparams,
    act_qparams,
    check_qparams_type,
    codes,
    frozen,
    layer_biases,
    layer_mode,
    linear_shape_error,
    output_range,
    requantize_acc,
    weight_qparams,
    wrap32,
)
from .accumulation import PAIRS, check_accumulation, resolve
from .gemm import prepare_gemm, run_gemm


class QLinear(QLayer):
    """Integer fully connected layer, set up once: ``layer(x_q)`` maps (..., in) codes to
    (..., out) codes of ``y_qp.spec.dtype``; ``layer.accumulate(x_q)`` returns the int32
    accumulators.

    ``y = clamp(round(acc * S_x S_w / S_y) + Z_y, lo, hi)`` with ``acc`` of
    :meth:`accumulate`, the multiplier of
    :func:`npquant.requant.modes.effective_multiplier` and the rounding of ``mode``
    (per output channel for per-channel weights). ``[lo, hi]`` is ``y_qp``'s code range,
    narrowed by a fused ``activation`` (``"relu"``, ``"relu6"``, ``"relu_n1_to_1"`` as
    TFLite computes them, or a ``(lo, hi)`` pair of codes); only the final clamp
    saturates. With ``mode="fbgemm"`` and ``accumulation="fbgemm"`` the result equals
    ``torch.ops.quantized.linear`` / ``linear_relu`` (torch 2.13) bit for bit on the CPU
    path at hand (tested live on AVX-512 VNNI and on fbgemm's AVX2 kernels, and against
    outputs recorded on an AVX2-only CPU); with the default ``"exact"`` accumulation it
    equals PyTorch only where fbgemm is exact (AVX-512 VNNI, or activation codes <= 127).

    Attributes: ``multiplier`` (float64, per channel or scalar, as the stack of ``mode``
    computes it), ``out_range`` (codes), ``bias_folded`` (int32, the bias of the folded
    form), ``float_bias`` (float32, with ``mode="fbgemm"``; else None),
    ``saturates_pairs`` (whether this layer's accumulation resolved to int16 pairs).

    Parameters
    ----------
    w_q : integer array (out, in)
        Codes of ``w_qp``.
    w_qp : QParams
        The weights' qparams, per-tensor or per-channel along axis 0.
    bias_q : int32 array (out,), float array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0 (see
        :func:`npquant.qnn.bias.quantize_bias`); with ``mode="fbgemm"``, PyTorch's float
        bias instead, which fbgemm adds in float32. None: no bias.
    x_qp : QParams
        The input's qparams, per-tensor.
    y_qp : QParams or None
        The output's qparams, per-tensor. None: a layer that only accumulates
        (:meth:`accumulate`); calling it is a ValueError.
    mode : str, default ``"tflite"``
        The requantization: ``"tflite"``, ``"tflite_single"``, ``"fp32"``, ``"onnx"``
        (:data:`npquant.requant.modes.REQUANT_MODES`), or ``"fbgemm"`` (PyTorch's
        fbgemm: the multiplier of ``"fp32"``, the float bias added in float32, quint8
        output, activation none or ReLU; :mod:`npquant.qnn.fbgemm`).
    activation : str, (int, int) or None, default None
        Fused clamp that narrows the output range: ``None`` or ``"none"``, ``"relu"``,
        ``"relu6"``, ``"relu_n1_to_1"``, or a ``(lo, hi)`` pair of codes.
    form : ``"auto"``, ``"direct"`` or ``"folded"``, default ``"auto"``
        The formula the kernel computes (:mod:`npquant.qnn.gemm`), on either backend:
        ``"direct"`` sums ``(q_x - Z_x)(q_w - Z_w)``; ``"folded"`` is Jacob et al. 2018's
        expansion with the weight terms folded into the bias; ``"auto"`` runs the fastest
        kernel (8-bit codes: the byte kernels, a folded form on shifted codes; wider: the
        direct form). Identical int32 results; the explicit forms run plain loops, slower.
        Pair-saturating accumulation takes ``"auto"`` or ``"folded"``.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        ``"error"``: a possible int32 overflow over all inputs is a ValueError, here;
        ``"wrap"``: int32 two's complement.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernels or their NumPy twins; identical results.
    float_bias : float32 array (out,) or None, default None
        Deprecated spelling of ``mode="fbgemm"`` (with ``mode="fp32"`` and
        ``bias_q=None``); a DeprecationWarning.
    accumulation : str, default ``"exact"``
        The arithmetic of the sum: ``"exact"``, ``"int16_pairs"``, or a library on a CPU
        path (``"fbgemm"``, ``"fbgemm_avx2"``, ``"mlas_avx2"``, ...):
        :mod:`npquant.qnn.accumulation`. Pair saturation needs uint8 input codes and int8
        weights.
    """

    def __init__(
        self,
        w_q: npt.ArrayLike,
        w_qp: QParams,
        bias_q: npt.ArrayLike | None,
        x_qp: QParams,
        y_qp: QParams | None,
        *,
        mode: str = "tflite",
        activation: str | tuple[int, int] | None = None,
        form: str = "auto",
        overflow: str = "error",
        backend: str = "numba",
        float_bias: npt.ArrayLike | None = None,
        accumulation: str = "exact",
    ) -> None:
        check_choice(backend, "backend", BACKENDS)
        check_accumulation(accumulation)
        mode, bias_q = layer_mode(mode, bias_q, float_bias, stacklevel=2)
        act_qparams(x_qp, "x_qp")
        check_qparams_type(w_qp, "w_qp")
        w = codes(w_q, w_qp, "w_q", ndim=2)
        sw, zw, per_channel = weight_qparams(w_qp, w.shape)
        # the layer's one copy of the codes, read-only (the prepared product uses it as is);
        # not copied again if ``codes`` already made a new array (a cast)
        self.w_q, self.w_qp = frozen(w, copy=np.may_share_memory(w, w_q)), w_qp
        bias, fb = layer_biases(mode, bias_q, w.shape[0])
        self.bias_q = frozen(bias)
        pairs = resolve(accumulation, "linear") == PAIRS
        self._gemm = prepare_gemm(self.w_q, zw, x_qp, self.bias_q, form, overflow, "the linear accumulator", pairs)
        self.accumulation = accumulation
        self.bias_folded = self._gemm.bias_folded
        self.form, self.overflow, self.backend = form, overflow, backend
        self._setup_output(x_qp, sw, per_channel, y_qp, mode, activation, fb)

    @property
    def in_features(self) -> int:
        """The length ``in`` of an input row."""
        return self.w_q.shape[1]

    @property
    def out_features(self) -> int:
        """The number ``out`` of outputs."""
        return self.w_q.shape[0]

    def accumulate(self, x_q: npt.ArrayLike) -> np.ndarray:
        """int32 accumulators of input codes.

        Parameters
        ----------
        x_q : integer array (..., in)
            Codes of ``x_qp``.

        Returns
        -------
        numpy.ndarray
            int32 (..., out): ``bias + sum (q_x - Z_x)(q_w - Z_w)``, exact (wrapped with
            ``overflow="wrap"``); with pair saturation, ``bias + S - Z_x sum (q_w - Z_w) -
            Z_w sum q_x`` with ``S`` the sum of the int16-saturated pair sums of raw codes
            along ``in``. With ``mode="fbgemm"`` the bias is not included.
        """
        x = self._check_x(x_q)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise linear_shape_error(x.shape, self.w_q.shape)
        acc = run_gemm(self._gemm, x.reshape(-1, x.shape[-1]), self.backend)  # a view for C-contiguous x
        return acc.reshape(x.shape[:-1] + (self.out_features,))

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        """Output codes of input codes.

        Parameters
        ----------
        x_q : integer array (..., in)
            Codes of ``x_qp``.

        Returns
        -------
        numpy.ndarray
            Codes of ``y_qp.spec.dtype``, shape (..., out), saturated to ``[lo, hi]``.
        """
        acc = self.accumulate(x_q)
        return self._requantize(acc.reshape(-1, self.out_features), 1).reshape(acc.shape)

    def __repr__(self) -> str:
        return (
            f"QLinear(in_features={self.in_features}, out_features={self.out_features}, "
            f"mode={self.mode!r}, activation={self.activation!r}, form={self.form!r}, "
            f"accumulation={self.accumulation!r})"
        )


def linear_accumulate(
    x_q: npt.ArrayLike,
    x_qp: QParams | int,
    w_q: npt.ArrayLike,
    w_qp: QParams | int | npt.ArrayLike,
    bias_q: npt.ArrayLike | None = None,
    *,
    form: str = "auto",
    overflow: str = "error",
    backend: str = "numba",
    accumulation: str = "exact",
) -> np.ndarray:
    """int32 accumulators of an integer fully connected layer (before requantization).

    ``QLinear(w_q, w_qp, bias_q, x_qp, None, ...).accumulate(x_q)``, with plain zero
    points made into QParams first.

    Parameters
    ----------
    x_q : integer array (..., in)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams or int
        The input's qparams, or only its zero point: the scales are not used here. A
        plain int takes the code range from ``x_q``'s dtype (int8, uint8, int16, uint16)
        and must lie in it; a QParams gives its spec's range.
    w_q : integer array (out, in)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0).
    w_qp : QParams, int or 1-D integer array (out,)
        The weights' qparams, or only the zero point (an int, per-tensor) or one zero
        point per output channel; a plain zero point takes the code range from ``w_q``'s
        dtype (8- or 16-bit) and must lie in it.
    bias_q : int32 array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0.
    form : ``"auto"``, ``"direct"`` or ``"folded"``
        The formula the kernel computes, as in :class:`QLinear` (default ``"auto"``, the
        fastest); identical results.
    overflow : ``"error"`` or ``"wrap"``
        ``"error"``: a possible int32 overflow over all inputs is a ValueError;
        ``"wrap"``: int32 two's complement.
    backend : ``"numba"`` or ``"numpy"``
        The kernel or its NumPy twin; identical results.
    accumulation : str
        ``"exact"`` (default), ``"int16_pairs"``, or a library on a CPU path
        (``"fbgemm"``, ``"fbgemm_avx2"``, ``"mlas_avx2"``, ...): see
        :mod:`npquant.qnn.accumulation`. Pair saturation needs uint8 ``x_q``, int8 ``w_q``.

    Returns
    -------
    int32 array (..., out)
        ``bias + sum (q_x - Z_x)(q_w - Z_w)``, exact; with pair
        saturation, ``bias + S - Z_x sum (q_w - Z_w) - Z_w sum q_x`` with ``S`` the sum of the
        int16-saturated pair sums of raw codes along ``in``.
    """
    check_choice(backend, "backend", BACKENDS)
    x_qp, w_qp = accumulate_qparams(x_q, x_qp, w_q, w_qp)
    return QLinear(
        w_q, w_qp, bias_q, x_qp, None, form=form, overflow=overflow, backend=backend, accumulation=accumulation
    ).accumulate(x_q)


def qlinear(
    x_q: npt.ArrayLike,
    x_qp: QParams,
    w_q: npt.ArrayLike,
    w_qp: QParams,
    bias_q: npt.ArrayLike | None,
    y_qp: QParams,
    *,
    mode: str = "tflite",
    activation: str | tuple[int, int] | None = None,
    form: str = "auto",
    overflow: str = "error",
    backend: str = "numba",
    float_bias: npt.ArrayLike | None = None,
    accumulation: str = "exact",
) -> np.ndarray:
    """Integer fully connected layer: codes in, codes of ``y_qp`` out.

    ``QLinear(w_q, w_qp, bias_q, x_qp, y_qp, ...)(x_q)``: the formula, the modes and the
    PyTorch match of ``mode="fbgemm"`` are :class:`QLinear`'s. Use the class to prepare
    the weights once for many inputs.

    Parameters
    ----------
    x_q : integer array (..., in)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams
        The input's qparams.
    w_q : integer array (out, in)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0).
    w_qp : QParams
        The weights' qparams.
    bias_q : int32 array (out,), float array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0 (see
        :func:`npquant.qnn.bias.quantize_bias`); with ``mode="fbgemm"``, PyTorch's float bias.
    y_qp : QParams
        The output's qparams, per-tensor.
    mode : str, default ``"tflite"``
        The requantization: ``"tflite"``, ``"tflite_single"``, ``"fp32"``, ``"onnx"``
        (see :mod:`npquant.requant.fixedpoint`) or ``"fbgemm"`` (:class:`QLinear`).
    activation : str, (int, int) or None, default None
        Fused activation that narrows the output range: ``"relu"``, ``"relu6"``,
        ``"relu_n1_to_1"``, or a ``(lo, hi)`` pair of codes.
    form : ``"auto"``, ``"direct"`` or ``"folded"``, default ``"auto"``
        As in :class:`QLinear`.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        As in :func:`linear_accumulate`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.
    float_bias : float32 array (out,) or None, default None
        Deprecated spelling of ``mode="fbgemm"`` (needs ``mode="fp32"`` and
        ``bias_q=None``); a DeprecationWarning.
    accumulation : str, default ``"exact"``
        As in :func:`linear_accumulate`.

    Returns
    -------
    numpy.ndarray
        Codes of ``y_qp.spec.dtype``, shape (..., out), saturated to ``[lo, hi]``.
    """
    mode, bias_q = layer_mode(mode, bias_q, float_bias, stacklevel=2)
    return QLinear(
        w_q,
        w_qp,
        bias_q,
        x_qp,
        y_qp,
        mode=mode,
        activation=activation,
        form=form,
        overflow=overflow,
        backend=backend,
        accumulation=accumulation,
    )(x_q)


# ---- the product of two quantized activations --------------------------------------------


def qmatmul(
    a_q: npt.ArrayLike,
    a_qp: QParams,
    b_q: npt.ArrayLike,
    b_qp: QParams,
    y_qp: QParams,
    *,
    mode: str = "onnx",
    activation: str | tuple[int, int] | None = None,
    overflow: str = "error",
) -> np.ndarray:
    """Integer ``a @ b`` of two quantized activations, codes of ``y_qp`` out.

    Parameters
    ----------
    a_q : integer array (..., M, K)
        Codes of ``a_qp``, at least 2-D.
    a_qp : QParams
        Per-tensor qparams of ``a``.
    b_q : integer array (..., K, N)
        Codes of ``b_qp``, at least 2-D; the leading axes of ``a_q`` and ``b_q``
        broadcast as in :func:`numpy.matmul`.
    b_qp : QParams
        Per-tensor qparams of ``b``.
    y_qp : QParams
        Per-tensor qparams of the output; its spec gives the code range and the dtype.
    mode : str, default ``"onnx"``
        The requantization: ``"tflite"``, ``"tflite_single"``, ``"fp32"``, ``"onnx"``, or
        ``"tflite_single_away"`` (:mod:`npquant.requant.fixedpoint`). ``"onnx"`` is ONNX's
        reference QLinearMatMul; ``"fp32"`` is onnxruntime's CPU kernel.
    activation : str, (int, int) or None, default None
        A fused clamp as in :class:`QLinear`: ``None`` or ``"none"``,
        ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"``, or a ``(lo, hi)`` pair of codes.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        A sum outside int32 is a ``ValueError``, or wraps as int32 two's complement.

    Returns
    -------
    numpy.ndarray
        Codes of ``y_qp.spec.dtype``, shape ``broadcast(a.shape[:-2], b.shape[:-2]) +
        (M, N)``: the exact int32 accumulator requantized with the rounding of ``mode``;
        only the final clamp to ``[lo, hi]`` (``y_qp.spec``'s range, narrowed by
        ``activation``) saturates.
    """
    check_choice(mode, "mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
    check_choice(overflow, "overflow", _ovf.OVERFLOW_MODES)
    sa, za = act_qparams(a_qp, "a_qp")
    sb, zb = act_qparams(b_qp, "b_qp")
    sy, _ = act_qparams(y_qp, "y_qp")
    out_range = output_range(activation, y_qp)
    a = codes(a_q, a_qp, "a_q")
    b = codes(b_q, b_qp, "b_q")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"a_q and b_q must be at least 2-D (..., M, K) and (..., K, N), got shapes {a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a_q (..., M, K) and b_q (..., K, N) disagree on K: shapes {a.shape} and {b.shape}")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"the leading axes of a_q {a.shape} and b_q {b.shape} do not broadcast") from None
    acc = _matmul_accumulate(a, za, b, zb)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        if overflow == "error":
            raise ValueError(
                f"the matmul accumulator overflows int32 (values in [{acc.min()}, {acc.max()}]); "
                "use overflow='wrap' for int32 wrap-around"
            )
        acc = wrap32(acc)
    m = effective_multiplier(sa, sb, sy, mode)
    return requantize_acc(acc.astype(np.int32), m, False, y_qp, out_range, mode, None)


def _matmul_accumulate(a: np.ndarray, za: int, b: np.ndarray, zb: int) -> np.ndarray:
    """Exact int64 ``(a - Z_a) @ (b - Z_b)`` with matmul broadcasting (each product of
    16-bit code differences is below 2^32 in magnitude, so the sum is exact for K < 2^31)."""
    if a.shape[-1] >= 1 << 31:
        raise ValueError(f"K = {a.shape[-1]} is too long for an exact int64 sum")
    return np.matmul(a.astype(np.int64) - za, b.astype(np.int64) - zb)
