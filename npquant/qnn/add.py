"""Element-wise add of two quantized tensors with different scales.

``mode="tflite"`` (and ``"tflite_single"``) is TFLite's int8/uint8 ADD
(``tensorflow/lite/kernels/add.cc`` Prepare, ``kernels/internal/reference/integer_ops/add.h``).
Constants, in float64 from the float32 scales (the products by 2 and 2^20 are exact)::

    left_shift = 20 (8-bit; 15 for int16)
    twice_max  = 2 * max(S1, S2)
    m1 = S1 / twice_max,  m2 = S2 / twice_max,  m_out = twice_max / (2^left_shift * S_out)

each turned into ``(m0, shift)`` by ``QuantizeMultiplierSmallerThanOneExp`` (needs
``m < 1``). Per element, int32::

    a_i  = MBQM((q_i - Z_i) << left_shift, m0_i, shift_i)       i = 1, 2
    code = clamp(MBQM(a_1 + a_2, m0_out, shift_out) + Z_out, act_min, act_max)

``MBQM`` is :func:`npquant.requant.fixedpoint.multiply_by_quantized_multiplier`, double rounding
by default, single rounding under ``TFLITE_SINGLE_ROUNDING`` (``mode="tflite_single"``).

``mode="torch"`` reproduces ``torch.ops.quantized.add``/``add_relu`` on quint8 tensors
(torch 2.13, fbgemm/x86 engine, measured bit for bit): elements in blocks of
``vector_width`` (:func:`torch_add_vector_width`: 64 on ATen's ``AVX512`` and ``AVX2``
paths) go through the vector path
``d_i = fma(float32(q_i), S_i, float32(S_i * -Z_i))``, ``c = d_1 + d_2``,
``code = rint(c * inv) + Z_out``; the remaining ``n % vector_width`` elements through
the scalar path ``d_i = float32((q_i - Z_i) * S_i)``, ``code = rint(float32(c * inv) +
Z_out)``; ``inv = float32(1 / S_out)``, float32 arithmetic, ties to even, ReLU as
``c = max(c, 0)``, then the clamp to [0, 255]. This holds for same-shape contiguous
inputs processed as one chunk (fewer than 32768 elements, or one thread).

``mode="onnxruntime"`` reproduces onnxruntime's ``com.microsoft.QLinearAdd`` (MLAS
``MlasQLinearAdd``, its AVX2 kernel, which also runs on AVX-512 CPUs; onnxruntime 1.32,
measured bit for bit on uint8 and int8, on an AVX-512 VNNI CPU). It is not
dequantize-add-quantize: the scale ratios and a constant are folded first, and each
element takes two fused multiply-adds (one rounding each), all in float32::

    r_i  = float32(S_i / S_out)                             i = 1, 2
    k    = float32(Z_out - fma(r_1, Z_1, float32(r_2 Z_2)))
    v    = fma(q_1, r_1, fma(q_2, r_2, k))
    code = clamp(rint(v), act_min, act_max)                 rint: ties to even

When ``q_1`` is one value broadcast along the innermost axes where ``q_2`` varies (MLAS's
scalar-A kernel), the two fmas swap: ``v = fma(q_2, r_2, fma(q_1, r_1, k))``. Near a
tie the result differs by one code from ``quantize(dequantize(q_1) + dequantize(q_2))``
and from the same formula without fma. Not reproduced: the scalar-A kernel's constant
``k`` (compiled with a different contraction) differed in 1 of about 500,000 codes
measured; CPUs without FMA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array, check_scale, smallest_int_dtype
from ..qparams import QParams
from ..requant.fixedpoint import INT32_MAX, multiply_by_quantized_multiplier, quantize_multiplier
from .fbgemm import fma_float32

ADD_MODES = ("tflite", "tflite_single", "torch", "onnxruntime")

# torch.backends.cpu.get_cpu_capability() -> elements per vector step of quantized add.
# Measured with torch 2.13: AVX512 on an AVX-512 VNNI CPU and AVX2 there with
# ATEN_CPU_CAPABILITY=avx2 (tests/test_qnn_add.py), AVX2 on an AVX2-only CPU (the recorded
# tests/data/x86_avx2/torch_add_*). The DEFAULT (non-vectorized) build computes differently
# and is not reproduced.
_TORCH_ADD_WIDTHS = {"AVX512": 64, "AVX2": 64}


def torch_add_vector_width(capability: str) -> int:
    """``vector_width`` of :func:`add` with ``mode="torch"`` for PyTorch's CPU capability.

    Parameters
    ----------
    capability : str
        ``torch.backends.cpu.get_cpu_capability()``: ``"AVX512"`` or ``"AVX2"``. A
        capability whose width was not measured is a ``ValueError``.

    Returns
    -------
    int
        Elements per vector step: 64 for ``"AVX512"`` and ``"AVX2"``.
    """
    if capability not in _TORCH_ADD_WIDTHS:
        raise ValueError(
            f"capability must be one of {', '.join(map(repr, _TORCH_ADD_WIDTHS))} (measured); got {capability!r}"
        )
    return _TORCH_ADD_WIDTHS[capability]


@dataclass(frozen=True)
class AddParams:
    """TFLite ADD constants: ``left_shift`` and ``(m0, shift)`` (Python ints) per input and output.

    Attributes
    ----------
    left_shift : int
        The input left shift.
    input1, input2 : (int, int)
        ``(m0, shift)`` of ``m1`` and ``m2`` (module docstring).
    output : (int, int)
        ``(m0, shift)`` of ``m_out``.
    """

    left_shift: int
    input1: tuple[int, int]
    input2: tuple[int, int]
    output: tuple[int, int]


def tflite_add_params(
    s1: float, s2: float, s_out: float, *, left_shift: int = 20, rounding: str = "double"
) -> AddParams:
    """The constants of TFLite's ADD Prepare (module docstring); float64 arithmetic on the
    float32 scales. ``ValueError`` if a real multiplier is not below 1 (TFLite asserts).

    Parameters
    ----------
    s1, s2 : float
        Scales of the two inputs, positive and finite as float32.
    s_out : float
        Scale of the output, positive and finite as float32; must exceed
        ``2 * max(s1, s2) / 2^left_shift`` (the output multiplier below 1).
    left_shift : int, default 20
        TFLite's input left shift, in ``[0, 30]`` (20 for 8-bit, 15 for int16).
    rounding : {"double", "single", "single_away"}, default ``"double"``
        The rounding of :func:`npquant.requant.fixedpoint.quantize_multiplier` (``"single"``
        under ``TFLITE_SINGLE_ROUNDING``).

    Returns
    -------
    AddParams
        ``left_shift`` and the ``(m0, shift)`` of ``m1``, ``m2`` and ``m_out``.
    """
    left_shift = check_int(left_shift, "left_shift", lo=0, hi=30)
    s1, s2, so = (np.float64(check_scale(v, n)) for v, n in ((s1, "s1"), (s2, "s2"), (s_out, "s_out")))
    twice_max = 2.0 * max(s1, s2)
    reals = (s1 / twice_max, s2 / twice_max, twice_max / (float(1 << left_shift) * so))
    if reals[2] >= 1.0:
        raise ValueError(
            f"s_out must exceed 2 * max(s1, s2) / 2^{left_shift} (the output multiplier must be < 1), got s_out={so}"
        )
    out = []
    for r in reals:
        m0, sh = quantize_multiplier(r, rounding)
        out.append((int(m0), int(sh)))
    return AddParams(left_shift, *out)


def add(
    q1: npt.ArrayLike,
    s1: float,
    z1: int,
    q2: npt.ArrayLike,
    s2: float,
    z2: int,
    s_out: float,
    z_out: int,
    *,
    qmin: int = -128,
    qmax: int = 127,
    act_min: int | None = None,
    act_max: int | None = None,
    mode: str = "tflite",
    left_shift: int = 20,
    vector_width: int = 64,
) -> np.ndarray:
    """Quantized ``q1 + q2`` (NumPy broadcasting) with output scale ``s_out`` and zero point
    ``z_out`` (module docstring for each ``mode``).

    This is the raw-number primitive: scales, zero points and the clamp are plain numbers.
    Use it to drive one stack's arithmetic by hand (a golden model fed from a model file's
    numbers); for a layer whose tensors carry :class:`~npquant.qparams.QParams`, with a
    named fused ``activation`` as :func:`npquant.qnn.linear.qlinear` takes it, use
    :func:`qadd` (or :class:`npquant.qnn.layers.QAdd` to prepare it once), which calls this.

    Parameters
    ----------
    q1 : integer array
        Codes of the first input, in ``[qmin, qmax]``.
    s1 : float
        Scale of ``q1``, a float32 scalar (positive and finite).
    z1 : int
        Zero point of ``q1``, in ``[qmin, qmax]``.
    q2 : integer array
        Codes of the second input, like ``q1``; the shapes broadcast as in NumPy.
    s2 : float
        Scale of ``q2``, a float32 scalar.
    z2 : int
        Zero point of ``q2``, in ``[qmin, qmax]``.
    s_out : float
        Scale of the output, a float32 scalar.
    z_out : int
        Zero point of the output, in ``[qmin, qmax]``.
    qmin, qmax : int, default -128, 127
        Code range of the inputs and the output (int8 ``-128, 127``; uint8 ``0, 255``).
    act_min, act_max : int or None, default None
        Fused-activation clamp (:func:`npquant.qnn.activation.activation_range`) within
        ``[qmin, qmax]``; None: ``qmin``, ``qmax``. With ``mode="torch"``,
        ``act_min=z_out`` is its ReLU (``add_relu``).
    mode : str, default ``"tflite"``
        One of ``ADD_MODES``: ``"tflite"``, ``"tflite_single"``, ``"torch"`` (uint8 only:
        ``qmin=0, qmax=255``), ``"onnxruntime"`` (module docstring).
    left_shift : int, default 20
        TFLite's input left shift (``"tflite"`` modes; 20 for 8-bit, 15 for int16), in
        ``[0, 30]``; ``ValueError`` when ``(q - z) << left_shift`` overflows int32.
    vector_width : int, default 64
        Elements per vector step of ``mode="torch"`` (:func:`torch_add_vector_width`),
        >= 1.

    Returns
    -------
    numpy.ndarray
        Codes of the broadcast shape, rounded as ``mode`` rounds and saturated to
        ``[act_min, act_max]``; dtype the smallest integer dtype holding ``[qmin, qmax]``,
        signed if ``qmin < 0`` (int8 or uint8 for 8-bit ranges, int16, uint16 or int32 for
        wider ones).
    """
    check_choice(mode, "mode", ADD_MODES)
    qmin = check_int(qmin, "qmin", lo=-(1 << 15))
    qmax = check_int(qmax, "qmax", lo=qmin + 1, hi=(1 << 16) - 1)
    act_min = qmin if act_min is None else check_int(act_min, "act_min", lo=qmin, hi=qmax)
    act_max = qmax if act_max is None else check_int(act_max, "act_max", lo=act_min, hi=qmax)
    zs = [check_int(z, n, lo=qmin, hi=qmax) for z, n in ((z1, "z1"), (z2, "z2"), (z_out, "z_out"))]
    arrs = []
    for q, n in ((q1, "q1"), (q2, "q2")):
        a = check_int_array(q, n, what="an integer array of codes")
        if a.size and (a.min() < qmin or a.max() > qmax):
            raise ValueError(f"{n} must lie in [{qmin}, {qmax}]")
        arrs.append(a.astype(np.int64))
    a1, a2 = np.broadcast_arrays(*arrs)
    dtype = smallest_int_dtype(qmin, qmax, signed=qmin < 0, max_bits=32)
    if mode == "torch":
        if (qmin, qmax) != (0, 255):
            raise ValueError("mode='torch' reproduces quint8 add: needs qmin=0, qmax=255")
        vector_width = check_int(vector_width, "vector_width", lo=1)
        v = _torch_add(
            a1.ravel(),
            check_scale(s1, "s1"),
            zs[0],
            a2.ravel(),
            check_scale(s2, "s2"),
            zs[1],
            check_scale(s_out, "s_out"),
            zs[2],
            act_min == zs[2],
            vector_width,
        )
        return np.clip(v, act_min, act_max).reshape(a1.shape).astype(dtype)
    if mode == "onnxruntime":
        v = _onnxruntime_add(
            a1,
            check_scale(s1, "s1"),
            zs[0],
            a2,
            check_scale(s2, "s2"),
            zs[1],
            check_scale(s_out, "s_out"),
            zs[2],
            _scalar_a(arrs[0].shape, arrs[1].shape),
        )
        return np.clip(v, act_min, act_max).astype(dtype)
    p = tflite_add_params(s1, s2, s_out, left_shift=left_shift, rounding="double" if mode == "tflite" else "single")
    rnd = "double" if mode == "tflite" else "single"
    sh1 = (a1 - zs[0]) << p.left_shift
    sh2 = (a2 - zs[1]) << p.left_shift
    if np.any(np.abs(sh1) > INT32_MAX) or np.any(np.abs(sh2) > INT32_MAX):
        raise ValueError(
            f"(q - z) << left_shift overflows int32; left_shift={p.left_shift} is too large for these codes"
        )
    r1 = multiply_by_quantized_multiplier(sh1, *p.input1, rounding=rnd)
    r2 = multiply_by_quantized_multiplier(sh2, *p.input2, rounding=rnd)
    out = multiply_by_quantized_multiplier(r1 + r2, *p.output, rounding=rnd) + zs[2]
    return np.clip(out, act_min, act_max).astype(dtype)


def qadd(
    q1: npt.ArrayLike,
    qp1: QParams,
    q2: npt.ArrayLike,
    qp2: QParams,
    y_qp: QParams,
    *,
    mode: str = "tflite",
    activation: str | tuple[int, int] | None = None,
    left_shift: int = 20,
    vector_width: int = 64,
) -> np.ndarray:
    """Quantized ``q1 + q2`` with the argument conventions of :func:`npquant.qnn.linear.qlinear`.

    The codes of two per-tensor-quantized tensors in, codes of ``y_qp`` out; the code range
    is ``y_qp.spec``'s, narrowed by a fused ``activation`` computed as ``qlinear`` computes
    it (TFLite's ``CalculateActivationRangeQuantized``). This is
    ``QAdd(qp1, qp2, y_qp, mode=..., activation=...)(q1, q2)``
    (:class:`npquant.qnn.layers.QAdd`), which calls :func:`add`: the same bits as ``add``
    given ``qp1``'s, ``qp2``'s and ``y_qp``'s numbers, ``qmin``/``qmax`` of ``y_qp.spec``
    and ``act_min``/``act_max`` of the activation. Use ``qadd`` (or ``QAdd``, to prepare
    the constants once for many calls) when the tensors carry QParams; use :func:`add`
    when you hold raw scales, zero points and clamp bounds.

    Parameters
    ----------
    q1 : integer array
        Codes of ``qp1`` in ``[y_qp.spec.qmin, y_qp.spec.qmax]``.
    qp1 : QParams
        Per-tensor qparams of ``q1`` (zero point in ``y_qp.spec``'s range).
    q2 : integer array
        Codes of ``qp2``, like ``q1``; the shapes broadcast as in NumPy.
    qp2 : QParams
        Per-tensor qparams of ``q2``.
    y_qp : QParams
        Per-tensor qparams of the output; its spec gives the code range and the dtype.
    mode : str, default ``"tflite"``
        One of ``ADD_MODES``: ``"tflite"``, ``"tflite_single"``, ``"torch"`` (uint8 only),
        ``"onnxruntime"`` (module docstring).
    activation : str, (int, int) or None, default None
        ``None`` or ``"none"``, ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"``, or a ``(lo,
        hi)`` pair of codes within ``y_qp.spec``'s range.
    left_shift : int, default 20
        TFLite's input left shift (``"tflite"`` modes; 20 for 8-bit, 15 for int16).
    vector_width : int, default 64
        Elements per vector step of ``mode="torch"`` (:func:`torch_add_vector_width`).

    Returns
    -------
    numpy.ndarray
        Codes of the broadcast shape, of ``y_qp``'s 8- or 16-bit dtype (int8/uint8 for
        8-bit specs), rounded as ``mode`` rounds and saturated to the activation's
        ``[lo, hi]`` within ``y_qp.spec``'s range.
    """
    from ._common import act_qparams as _act_qparams
    from .layers import QAdd

    for qp, name in ((qp1, "qp1"), (qp2, "qp2"), (y_qp, "y_qp")):
        _act_qparams(qp, name)  # errors name qadd's arguments
    return QAdd(qp1, qp2, y_qp, mode=mode, activation=activation, left_shift=left_shift, vector_width=vector_width)(
        q1, q2
    )


def _torch_add(a1, s1, z1, a2, s2, z2, so, zo, relu, width):
    n = a1.size
    nv = n - n % width
    f32 = np.float32
    inv = f32(1.0 / np.float64(so))
    out = np.empty(n, np.int64)
    # vector path: fused dequantize with the premultiplied -Z*S, integer add of Z_out
    d1 = fma_float32(a1[:nv].astype(f32), s1, f32(s1 * f32(-z1)))
    d2 = fma_float32(a2[:nv].astype(f32), s2, f32(s2 * f32(-z2)))
    c = (d1 + d2).astype(f32)
    if relu:
        c = np.maximum(c, f32(0))
    out[:nv] = np.rint((c * inv).astype(f32)).astype(np.int64) + zo
    # scalar tail: separate roundings, zero point added in float32 before rint
    e1 = ((a1[nv:] - z1).astype(f32) * s1).astype(f32)
    e2 = ((a2[nv:] - z2).astype(f32) * s2).astype(f32)
    c = (e1 + e2).astype(f32)
    if relu:
        c = np.maximum(c, f32(0))
    out[nv:] = np.rint(((c * inv).astype(f32) + f32(zo)).astype(f32)).astype(np.int64)
    return out


def _onnxruntime_add(a1, s1, z1, a2, s2, z2, so, zo, scalar_a=False):
    """onnxruntime's QLinearAdd (module docstring) on broadcast int64 codes; int64 codes
    before the clamp. ``scalar_a``: MLAS's scalar-A kernel (the fmas in the other order)."""
    f32 = np.float32
    r1, r2 = f32(f32(s1) / f32(so)), f32(f32(s2) / f32(so))
    k = f32(f32(zo) - fma_float32(r1, f32(z1), f32(r2 * f32(z2))))
    x1, x2 = a1.astype(f32), a2.astype(f32)
    with np.errstate(over="ignore"):
        if scalar_a:
            v = fma_float32(x2, r2, fma_float32(x1, r1, k))
        else:
            v = fma_float32(x1, r1, fma_float32(x2, r2, k))
    return np.rint(v).astype(np.int64)


def _scalar_a(shape1, shape2) -> bool:
    """Is input 1 one value over the innermost broadcast axes where input 2 varies (the
    span onnxruntime's broadcast loop hands MLAS's scalar-A kernel)?"""
    n = max(len(shape1), len(shape2))
    s1 = (1,) * (n - len(shape1)) + tuple(shape1)
    s2 = (1,) * (n - len(shape2)) + tuple(shape2)
    for d1, d2 in zip(reversed(s1), reversed(s2)):
        if max(d1, d2) > 1:
            return d1 == 1 and d2 > 1
    return False
