"""PyTorch fbgemm's requantization of quantized linear/conv2d, pinned bit for bit.

Established empirically with torch 2.13 (CPU wheel, ``torch.backends.quantized.engine =
"fbgemm"``; the default engine ``"x86"`` gives the same codes for linear), uint8
activations, qint8 weights, float bias, 1 and 2 threads, AVX-512 VNNI machine; zero
mismatches in ``tests/test_qnn_fbgemm.py`` (about 190,000 linear outputs with
constructed ties, plus dense and grouped conv) and ``tests/test_qnn_torch.py``, on
fbgemm's VNNI and AVX2 kernels, and in the outputs recorded on an AVX2-only CPU
(``tests/test_fixtures_x86_avx2.py``). For an int32 accumulator
``acc = sum((q_x - Z_x)(q_w - Z_w))`` of output channel ``j``::

    ats_j  = float32(S_x * S_w[j])                      act_times_w_scale
    M_j    = float32(ats_j / float32(S_y))              the output multiplier
    raw_f  = float32(acc)                                no bias
           = fma(bias_j, float32(1 / ats), float32(acc)) per-tensor weights, float bias
           = float32(acc) + float32(bias_j / ats_j)      per-channel weights, float bias
    code   = clamp(cvt(float32(raw_f * M_j)) + Z_y, Z_y if relu else 0, 255)

``cvt`` is CVTPS2DQ: round half to even, and any result outside the int32 range becomes
INT32_MIN, so an overflowing product gives code 0 (``Z_y`` with ReLU), not 255.

Evidence for the less obvious steps: fbgemm's ``requantizeOutputProcessingAvx2``
(``src/QuantUtilsAvx2.cc``) multiplies the bias by the broadcast reciprocal
``1.0 / act_times_w_scale`` for per-tensor weights and divides by ``act_times_w_scale``
per channel; the compiler fuses the per-tensor multiply with the following add into one
FMA (a separate multiply and add mismatches about 1 in 10^5 outputs at ties, the FMA
none). ``M`` computed as ``float32(S_x * S_w / S_y)`` in float64 also mismatches at
ties; ``float32(float32(S_x * S_w) / S_y)`` (= :func:`npquant.requant.modes.effective_multiplier`
with ``mode="fp32"``) does not.

The accumulator is fbgemm's own arithmetic, which depends on the CPU path: exact with
AVX-512 VNNI except in the depthwise kernel, int16 pair-saturated (``vpmaddubsw``)
without VNNI. :mod:`npquant.qnn.accumulation` names it (``accumulation="fbgemm"`` in the
layers); the requantization here is the same on every path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_bool, check_choice, check_int, check_int_array, check_scales, normalize_axis
from .._kernels import fbgemm as _kf
from ..requant.fixedpoint import INT32_MAX, INT32_MIN
from ..rounding import fma32


def _scales(v: npt.ArrayLike, name: str) -> np.ndarray:
    a = np.atleast_1d(check_scales(v, name))
    if a.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array of scales, got shape {a.shape}")
    return a


def fma_float32(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> np.ndarray:
    """``a * b + c`` with one rounding to float32 (IEEE fma), broadcast, float32 result.

    :func:`npquant.rounding.fma32` with ``c`` rounded to float32 first, as fbgemm's
    ``_mm256_fmadd_ps`` takes it.

    Parameters
    ----------
    a, b, c : array_like of float
        The operands, converted to float32 and broadcast together.

    Returns
    -------
    numpy.ndarray
        float32 of the broadcast shape: ``float32(a * b + c)`` rounded once, to nearest even.
    """
    return fma32(a, b, np.asarray(c, np.float32))


def fbgemm_multipliers(s_x: float, s_w: float | npt.ArrayLike, s_y: float) -> tuple[np.ndarray, np.ndarray]:
    """``(act_times_w_scale, multiplier)``: float32 arrays of length 1 (per-tensor ``s_w``)
    or C (per-channel): ``float32(S_x * S_w)`` and ``float32(that / float32(S_y))``.

    Parameters
    ----------
    s_x : float
        The input scale, per-tensor (positive, finite as float32).
    s_w : float or 1-D float array (C,)
        The weight scale(s), positive, finite as float32.
    s_y : float
        The output scale, per-tensor (positive, finite as float32).

    Returns
    -------
    act_times_w_scale, multiplier : numpy.ndarray
        float32 arrays of length 1 or C.
    """
    sx = _scales(s_x, "s_x")
    sw = _scales(s_w, "s_w")
    sy = _scales(s_y, "s_y")
    if sx.size != 1 or sy.size != 1:
        raise ValueError("s_x and s_y must be per-tensor scalars")
    ats = (sx[0] * sw).astype(np.float32)
    return ats, (ats / sy[0]).astype(np.float32)


def fbgemm_requantize(
    acc: npt.ArrayLike,
    s_x: float,
    s_w: float | npt.ArrayLike,
    s_y: float,
    z_y: int,
    *,
    bias: npt.ArrayLike | None = None,
    relu: bool = False,
    axis: int = -1,
    backend: str = "numba",
) -> np.ndarray:
    """uint8 output codes of PyTorch's fbgemm quantized linear/conv2d from the exact int32
    accumulator (module docstring for the formula and its evidence).

    Parameters
    ----------
    acc : integer array, int32 range
        ``sum((q_x - Z_x)(q_w - Z_w))`` without bias.
    s_x : float32 scalar
        The input scale.
    s_w : scalar (per-tensor) or 1-D of length C (per-channel)
        The weight scales.
    s_y : float32 scalar
        The output scale.
    z_y : int
        Output zero point in [0, 255].
    bias : None or float32 array of length C
        The float bias given to ``*_prepack``.
    relu : bool
        Fused ReLU (``linear_relu``/``conv2d_relu``): the lower clamp is ``z_y``.
    axis : int
        The output-channel axis of ``acc`` (-1 for linear (N, C), 1 for NCHW conv).
    backend : ``"numba"`` or ``"numpy"``
        The kernel of :mod:`npquant._kernels.fbgemm`, or the twin below; identical codes.

    Returns
    -------
    uint8 array of ``acc``'s shape
        Rounding half to even; saturation to [0, 255]
        except that a scaled value outside int32 gives INT32_MIN (code 0 / ``z_y``).
    """
    a = check_int_array(acc, "acc")
    if a.ndim == 0:
        raise ValueError("acc must have a channel axis")
    if a.dtype.itemsize > 4 or a.dtype == np.uint32:
        if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
            raise ValueError("acc must lie in the int32 range")
    z_y = check_int(z_y, "z_y", lo=0, hi=255)
    check_bool(relu, "relu")
    check_choice(backend, "backend", ("numba", "numpy"))
    ax = normalize_axis(axis, a.ndim)
    n_ch = a.shape[ax]
    ats, mult = fbgemm_multipliers(s_x, s_w, s_y)
    per_channel = ats.size > 1
    if per_channel and ats.size != n_ch:
        raise ValueError(f"s_w has {ats.size} channels but acc has {n_ch} along axis {ax}")
    b = None
    if bias is not None:
        b = np.asarray(bias)
        if b.dtype.kind != "f":
            raise TypeError(f"bias must be a float array (fbgemm's float bias), got dtype {b.dtype}")
        b = b.astype(np.float32)
        if b.ndim != 1 or b.size != n_ch or not np.all(np.isfinite(b)):
            raise ValueError(f"bias must be {n_ch} finite values (one per output channel), got shape {b.shape}")
    lo = z_y if relu else 0
    if backend == "numpy":
        return _fbgemm_requantize_numpy(a, ats, mult, b, z_y, lo, ax)
    rows = np.moveaxis(a, ax, -1)
    acc2 = rows.reshape(-1, n_ch).astype(np.int32, copy=False)
    use_fma = b is not None and not per_channel
    if b is None:
        bterm = np.zeros(n_ch, np.float32)
    elif per_channel:
        bterm = (b / ats).astype(np.float32)
    else:
        bterm = b
    rcp = np.float32(1.0 / np.float64(ats[0]))
    out = np.empty(acc2.shape, np.uint8)
    _kf.requantize_rows(acc2, np.broadcast_to(mult, (n_ch,)).astype(np.float32), bterm, rcp, use_fma, z_y, lo, out)
    return np.moveaxis(out.reshape(rows.shape), -1, ax)


def _fbgemm_requantize_numpy(a, ats, mult, b, z_y: int, lo: int, ax: int) -> np.ndarray:
    """Twin of ``_kernels.fbgemm.requantize_rows`` (validated arguments, channel axis ``ax``)."""
    shape = [1] * a.ndim
    shape[ax] = -1
    raw = a.astype(np.float32)
    if b is not None:
        b = b.reshape(shape)
        if ats.size > 1:
            raw = raw + (b / ats.reshape(shape)).astype(np.float32)
        else:
            rcp = np.float32(1.0 / np.float64(ats[0]))
            raw = fma_float32(b, rcp, raw)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.rint((raw.astype(np.float32) * mult.reshape(shape)).astype(np.float32)).astype(np.float64)
    t = np.where(np.isfinite(t) & (t >= -(2.0**31)) & (t < 2.0**31), t, float(INT32_MIN))
    return np.clip(t.astype(np.int64) + z_y, lo, 255).astype(np.uint8)
