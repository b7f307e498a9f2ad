"""2-D max and average pooling on integer codes (NCHW), bit-exact against TFLite and PyTorch.

Pooling keeps the quantization parameters: TFLite's int8 AVERAGE_POOL_2D/MAX_POOL_2D and
PyTorch's quantized ``avg_pool2d``/``max_pool2d`` output the input's scale and zero
point, so both work on codes directly.

Padding never wins a max: TFLite clips the window to the input
(``reference_integer_ops/pooling.h``), PyTorch pads with -inf; both take the max of the
valid positions, as here. Average pooling sums the codes of the window and divides by
a count, with an integer rounding that is the ``mode``:

``tflite``  ``sum`` of the valid codes, ``count`` = number of valid positions;
            ``(sum + count/2) / count`` if ``sum > 0`` else ``(sum - count/2) / count``
            with C's truncating division: round half away from zero
            (``tensorflow/lite/kernels/internal/reference/integer_ops/pooling.h``).
``torch``   round half to even of ``sum / count``; with ``count_include_pad=True``
            (PyTorch's default) padding counts as code ``zero_point`` (real 0) and
            ``count`` is the window size. Matches ``torch.nn.functional.avg_pool2d`` on
            quint8 tensors, NCHW and channels-last, for windows up to 8x8 (measured,
            torch 2.13; its float32 arithmetic equals this exact rule there).

onnxruntime's ``com.microsoft.QLinearAveragePool`` and ``QLinearGlobalAveragePool``
change the qparams and compute in float32; :func:`onnxruntime_avg_pool2d` and
:func:`onnxruntime_global_avg_pool2d` reproduce them (onnxruntime 1.32, measured bit
for bit, uint8 and int8).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_bool, check_choice, check_int, check_int_array, check_pair, check_scale
from .._kernels import pool as _k
from ..requant.fixedpoint import INT32_MAX, INT32_MIN
from ..rounding import div_round_half_away, div_round_half_even

AVG_POOL_MODES = ("tflite", "torch")


def _geometry(q, kernel_size, stride, padding):
    a = check_int_array(q, "q", what="an integer array of codes")
    if a.ndim != 4:
        raise ValueError(f"q must be NCHW (4-D), got shape {a.shape}")
    kh, kw = check_pair(kernel_size, "kernel_size", lo=1)
    sh, sw = check_pair(kernel_size if stride is None else stride, "stride", lo=1)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:  # (top, bottom, left, right)
        pt, pb, pl, pr = (check_int(v, "padding", lo=0) for v in padding)
    else:
        pt, pl = check_pair(padding, "padding", lo=0)
        pb, pr = pt, pl
    if max(pt, pb) > kh // 2 or max(pl, pr) > kw // 2:
        raise ValueError(
            f"padding must be at most half the kernel_size (as in PyTorch), got "
            f"padding={padding!r} for kernel_size=({kh}, {kw})"
        )
    h, w = a.shape[2], a.shape[3]
    if h + pt + pb < kh or w + pl + pr < kw:
        raise ValueError(f"kernel_size ({kh}, {kw}) is larger than the padded input ({h + pt + pb}, {w + pl + pr})")
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    # the kernels clip each window to the input, so they need the leading padding only
    return a, (kh, kw, sh, sw, pt, pl), (a.shape[0], a.shape[1], oh, ow), (pb, pr)


def max_pool2d(
    q: npt.ArrayLike,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, ...] = 0,
    *,
    backend: str = "numba",
) -> np.ndarray:
    """Max pooling of codes ``q`` (N, C, H, W), any integer dtype.

    No ceil mode, no dilation. A fused TFLite activation is a clamp afterwards
    (:func:`npquant.qnn.activation.clamp`).

    Parameters
    ----------
    q : integer array (N, C, H, W)
        The codes, any integer dtype.
    kernel_size : int or (int, int)
        The window ``k``, as ``(kh, kw)`` or one int for both.
    stride : int, (int, int) or None, default None
        The step ``s``; None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        ``p``: int, (h, w), or (top, bottom, left, right) (asymmetric, as TFLite's SAME
        padding); at most ``k // 2`` on each side. Padding is excluded from the max.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.

    Returns
    -------
    numpy.ndarray
        ``q``'s dtype, shape (N, C, OH, OW) with ``OH = floor((H + 2p - k) / s) + 1``
        (``floor((H + p_t + p_b - k) / s) + 1`` for asymmetric padding), likewise ``OW``.
        Exact, no rounding or saturation.
    """
    check_choice(backend, "backend", ("numba", "numpy"))
    a, g, oshape, after = _geometry(q, kernel_size, stride, padding)
    if backend == "numpy":
        return _max_pool_numpy(a, *g, *after).astype(a.dtype)
    out = np.empty(oshape, a.dtype)
    _k.max_pool2d(np.ascontiguousarray(a), *g, out)
    return out


def avg_pool2d(
    q: npt.ArrayLike,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, ...] = 0,
    *,
    mode: str = "tflite",
    zero_point: int = 0,
    count_include_pad: bool = False,
    backend: str = "numba",
) -> np.ndarray:
    """Average pooling of codes ``q`` (N, C, H, W), int8/uint8/int16 (any integer dtype).

    Parameters
    ----------
    q : integer array (N, C, H, W)
        The codes, int8/uint8/int16 (any integer dtype).
    kernel_size : int or (int, int)
        The window, as in :func:`max_pool2d`.
    stride : int, (int, int) or None, default None
        The step; None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        As in :func:`max_pool2d` (asymmetric for TFLite's SAME).
    mode : ``"tflite"`` or ``"torch"``, default ``"tflite"``
        The rounding of ``sum / count`` (module docstring): ``tflite`` rounds half away
        from zero, ``torch`` half to even.
    zero_point : int, default 0
        The code that padding counts as with ``count_include_pad=True``; in the int32
        range.
    count_include_pad : bool, default False
        ``True`` (PyTorch's default; not in TFLite, so only with ``mode="torch"``)
        counts padding as code ``zero_point`` and ``count`` is the window size.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.

    Returns
    -------
    numpy.ndarray
        ``q``'s dtype, shape (N, C, OH, OW) as in :func:`max_pool2d`, rounded as ``mode``
        rounds. The result lies between the window's min and max codes, so it never
        saturates.
    """
    check_choice(mode, "mode", AVG_POOL_MODES)
    check_choice(backend, "backend", ("numba", "numpy"))
    check_bool(count_include_pad, "count_include_pad")
    zero_point = check_int(zero_point, "zero_point", lo=INT32_MIN, hi=INT32_MAX)
    if count_include_pad and mode == "tflite":
        raise ValueError("count_include_pad=True is not a TFLite option; use mode='torch'")
    a, g, oshape, after = _geometry(q, kernel_size, stride, padding)
    if backend == "numpy":
        s, c = _sum_pool_numpy(a, *g, *after)
    else:
        s = np.empty(oshape, np.int64)
        c = np.empty(oshape, np.int64)
        _k.sum_pool2d(np.ascontiguousarray(a), *g, s, c)
    if count_include_pad:
        window = g[0] * g[1]
        s = s + np.int64(zero_point) * (window - c)
        c = np.full_like(c, window)
    return (div_round_half_away(s, c) if mode == "tflite" else div_round_half_even(s, c)).astype(a.dtype)


def _windows(a, kh, kw, sh, sw, ph, pw, fill, pb=None, pr=None):
    pb, pr = ph if pb is None else pb, pw if pr is None else pr
    p = np.pad(a, ((0, 0), (0, 0), (ph, pb), (pw, pr)), constant_values=fill)
    v = np.lib.stride_tricks.sliding_window_view(p, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw]


def _max_pool_numpy(a, kh, kw, sh, sw, ph, pw, pb=None, pr=None):
    """NumPy twin of ``_kernels.pool.max_pool2d``: padding holds a value below every code;
    ``pb``, ``pr``: bottom and right padding (default ``ph``, ``pw``)."""
    x = a.astype(np.int64)
    fill = np.iinfo(np.int64).min
    return _windows(x, kh, kw, sh, sw, ph, pw, fill, pb, pr).max(axis=(-1, -2))


def _sum_pool_numpy(a, kh, kw, sh, sw, ph, pw, pb=None, pr=None):
    """NumPy twin of ``_kernels.pool.sum_pool2d``: (sum, count) of the valid positions."""
    x = a.astype(np.int64)
    s = _windows(x, kh, kw, sh, sw, ph, pw, 0, pb, pr).sum(axis=(-1, -2))
    c = _windows(np.ones_like(x), kh, kw, sh, sw, ph, pw, 0, pb, pr).sum(axis=(-1, -2))
    return s, c


# ---- onnxruntime's QLinearAveragePool / QLinearGlobalAveragePool ---------------------


def _ort_codes(q, name="q"):
    a = np.asarray(q)
    if a.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"{name} must be int8 or uint8 codes, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4-D), got shape {a.shape}")
    return a


def onnxruntime_avg_pool2d(
    q: npt.ArrayLike,
    s_x: float,
    z_x: int,
    s_y: float,
    z_y: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, ...] = 0,
    *,
    count_include_pad: bool = False,
) -> np.ndarray:
    """onnxruntime's ``QLinearAveragePool`` (2-D, NCHW) on int8/uint8 codes ``q``.

    No ceil mode, no dilation. As onnxruntime computes it
    (``contrib_ops/cpu/quantization/qlinear_pool.cc``), in float32: each code dequantized
    ``d = float32(S_x * (q - Z_x))``; the valid positions of the window summed in
    row-major order; divided by the count (the window size with ``count_include_pad``,
    else the number of valid positions); then
    ``clamp(rint(float32(float32(avg / S_y) + Z_y)))``, ties to even.

    Parameters
    ----------
    q : int8 or uint8 array (N, C, H, W)
        The input codes.
    s_x : float
        The input scale, positive and finite as float32.
    z_x : int
        The input zero point, within ``q``'s dtype range.
    s_y : float
        The output scale, positive and finite as float32.
    z_y : int
        The output zero point, within ``q``'s dtype range.
    kernel_size : int or (int, int)
        The window ``(kh, kw)``, or one int for both.
    stride : int, (int, int) or None, default None
        The step; None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        int, (h, w) or (top, bottom, left, right), each side below the kernel size
        (ONNX's ``pads`` are (top, left, bottom, right)).
    count_include_pad : bool, default False
        Divide by the window size instead of the number of valid positions.

    Returns
    -------
    numpy.ndarray
        ``q``'s dtype, shape (N, C, OH, OW) with ``OH = floor((H + p_t + p_b - kh) / sh)
        + 1``, likewise ``OW``: codes of ``(s_y, z_y)``, rounded ties to even and
        saturated to the dtype's range.
    """
    a = _ort_codes(q)
    info = np.iinfo(a.dtype)
    check_bool(count_include_pad, "count_include_pad")
    kh, kw = check_pair(kernel_size, "kernel_size", lo=1)
    sh, sw = check_pair(kernel_size if stride is None else stride, "stride", lo=1)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pt, pb, pl, pr = (check_int(v, "padding", lo=0) for v in padding)
    else:
        pt, pl = check_pair(padding, "padding", lo=0)
        pb, pr = pt, pl
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise ValueError(
            f"padding must be smaller than the kernel_size on each side, got padding={padding!r} "
            f"for kernel_size=({kh}, {kw})"
        )
    n, c, h, w = a.shape
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel_size ({kh}, {kw}) is larger than the padded input ({h + pt + pb}, {w + pl + pr})")
    f32 = np.float32
    sx, sy = f32(check_scale(s_x, "s_x")), f32(check_scale(s_y, "s_y"))
    zx = check_int(z_x, "z_x", lo=int(info.min), hi=int(info.max))
    zy = check_int(z_y, "z_y", lo=int(info.min), hi=int(info.max))
    d = (sx * (a.astype(np.int32) - zx).astype(f32)).astype(f32)
    d = np.pad(d, ((0, 0), (0, 0), (pt, pb), (pl, pr)))  # adding a padded 0.0 leaves a float32 sum as is
    acc = np.zeros((n, c, oh, ow), f32)
    for u in range(kh):
        for v in range(kw):
            acc = (acc + d[:, :, u : u + sh * (oh - 1) + 1 : sh, v : v + sw * (ow - 1) + 1 : sw]).astype(f32)
    if count_include_pad:
        count = np.full((oh, ow), kh * kw, np.int64)
    else:
        r0 = np.arange(oh) * sh - pt
        c0 = np.arange(ow) * sw - pl
        rows = np.minimum(r0 + kh, h) - np.maximum(r0, 0)
        cols = np.minimum(c0 + kw, w) - np.maximum(c0, 0)
        count = rows[:, None] * cols[None, :]
    avg = (acc / count.astype(f32)).astype(f32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.rint(((avg / sy).astype(f32) + f32(zy)).astype(f32))
    return np.clip(y, info.min, info.max).astype(a.dtype)


def onnxruntime_global_avg_pool2d(q: npt.ArrayLike, s_x: float, z_x: int, s_y: float, z_y: int) -> np.ndarray:
    """onnxruntime's ``QLinearGlobalAveragePool`` (NCHW) on int8/uint8 codes ``q``.

    As MLAS computes it (``MlasQLinearGlobalAveragePoolNchw``): the exact int32 sum
    ``acc = sum q - Z_x H W``, the float32 scale ``m = float32(S_x / float32(S_y *
    float32(H W)))``, then ``clamp(rint(float32(float32(acc) m)) + Z_y)``, ties to even.
    MLAS refuses ``m`` outside ``[2^-32, 256)`` and images of ``2^24`` pixels or more;
    so does this (``ValueError``).

    Parameters
    ----------
    q : int8 or uint8 array (N, C, H, W)
        The input codes.
    s_x : float
        The input scale, positive and finite as float32.
    z_x : int
        The input zero point, within ``q``'s dtype range.
    s_y : float
        The output scale, positive and finite as float32.
    z_y : int
        The output zero point, within ``q``'s dtype range.

    Returns
    -------
    numpy.ndarray
        (N, C, 1, 1) codes of ``(s_y, z_y)``, ``q``'s dtype, saturated to the dtype's
        range.
    """
    a = _ort_codes(q)
    info = np.iinfo(a.dtype)
    f32 = np.float32
    sx, sy = f32(check_scale(s_x, "s_x")), f32(check_scale(s_y, "s_y"))
    zx = check_int(z_x, "z_x", lo=int(info.min), hi=int(info.max))
    zy = check_int(z_y, "z_y", lo=int(info.min), hi=int(info.max))
    hw = a.shape[2] * a.shape[3]
    if hw >= 1 << 24:
        raise ValueError(f"the image has {hw} pixels; MLAS takes fewer than 2^24")
    m = f32(sx / f32(sy * f32(hw)))
    if not 2.0**-32 <= m < 256:
        raise ValueError(f"s_x / (s_y * H * W) = {m} is outside MLAS's range [2^-32, 256)")
    acc = a.astype(np.int64).sum(axis=(2, 3), keepdims=True) - zx * hw
    y = np.rint((acc.astype(f32) * m).astype(f32)).astype(np.int64) + zy
    return np.clip(y, info.min, info.max).astype(a.dtype)
