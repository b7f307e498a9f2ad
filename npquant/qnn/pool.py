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
"""

from __future__ import annotations

import numpy as np

from .._checks import check_bool, check_choice, check_int, check_pair
from .._kernels import pool as _k
from ..fixedpoint import INT32_MAX, INT32_MIN

AVG_POOL_MODES = ("tflite", "torch")


def _geometry(q, kernel_size, stride, padding):
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        raise TypeError(f"q must be an integer array of codes, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"q must be NCHW (4-D), got shape {a.shape}")
    kh, kw = check_pair(kernel_size, "kernel_size", lo=1)
    sh, sw = check_pair(kernel_size if stride is None else stride, "stride", lo=1)
    ph, pw = check_pair(padding, "padding", lo=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding must be at most half the kernel_size (as in PyTorch), got "
                         f"padding=({ph}, {pw}) for kernel_size=({kh}, {kw})")
    h, w = a.shape[2], a.shape[3]
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"kernel_size ({kh}, {kw}) is larger than the padded input ({h + 2 * ph}, {w + 2 * pw})")
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    return a, (kh, kw, sh, sw, ph, pw), (a.shape[0], a.shape[1], oh, ow)


def max_pool2d(q, kernel_size, stride=None, padding=0, *, backend: str = "numba") -> np.ndarray:
    """Max pooling of codes ``q`` (N, C, H, W), any integer dtype; ``stride`` defaults to
    ``kernel_size``; output size ``floor((H + 2p - k) / s) + 1`` (no ceil mode, no
    dilation). Padding (at most ``k // 2``) is excluded from the max. Exact, no
    rounding or saturation; returns ``q``'s dtype. A fused TFLite activation is a
    clamp afterwards (:func:`npquant.qnn.activation.clamp`).
    """
    check_choice(backend, "backend", ("numba", "numpy"))
    a, g, oshape = _geometry(q, kernel_size, stride, padding)
    if backend == "numpy":
        return _max_pool_numpy(a, *g).astype(a.dtype)
    out = np.empty(oshape, a.dtype)
    _k.max_pool2d(np.ascontiguousarray(a), *g, out)
    return out


def avg_pool2d(q, kernel_size, stride=None, padding=0, *, mode: str = "tflite", zero_point: int = 0,
               count_include_pad: bool = False, backend: str = "numba") -> np.ndarray:
    """Average pooling of codes ``q`` (N, C, H, W), int8/uint8/int16 (any integer dtype).

    ``mode`` picks the rounding of ``sum / count`` (module docstring): ``tflite`` rounds
    half away from zero, ``torch`` half to even. ``count_include_pad=True`` (PyTorch's
    default; not in TFLite, so only with ``mode="torch"``) counts padding as code
    ``zero_point``. The result lies between the window's min and max codes, so it never
    saturates; returns ``q``'s dtype.
    """
    check_choice(mode, "mode", AVG_POOL_MODES)
    check_choice(backend, "backend", ("numba", "numpy"))
    check_bool(count_include_pad, "count_include_pad")
    zero_point = check_int(zero_point, "zero_point", lo=INT32_MIN, hi=INT32_MAX)
    if count_include_pad and mode == "tflite":
        raise ValueError("count_include_pad=True is not a TFLite option; use mode='torch'")
    a, g, oshape = _geometry(q, kernel_size, stride, padding)
    if backend == "numpy":
        s, c = _sum_pool_numpy(a, *g)
    else:
        s = np.empty(oshape, np.int64)
        c = np.empty(oshape, np.int64)
        _k.sum_pool2d(np.ascontiguousarray(a), *g, s, c)
    if count_include_pad:
        window = g[0] * g[1]
        s = s + np.int64(zero_point) * (window - c)
        c = np.full_like(c, window)
    return (div_round_half_away(s, c) if mode == "tflite" else div_round_half_even(s, c)).astype(a.dtype)


def div_round_half_away(s, c) -> np.ndarray:
    """``s / c`` rounded half away from zero, exactly, for int64 ``s`` and ``c > 0``
    (TFLite's ``(s +- c/2) / c`` with truncating division)."""
    s = np.asarray(s, np.int64)
    c = np.asarray(c, np.int64)
    return np.sign(s) * ((np.abs(s) + c // 2) // c)


def div_round_half_even(s, c) -> np.ndarray:
    """``s / c`` rounded half to even, exactly, for int64 ``s`` and ``c > 0``."""
    s = np.asarray(s, np.int64)
    c = np.asarray(c, np.int64)
    fl, r = np.divmod(s, c)
    up = (2 * r > c) | ((2 * r == c) & (fl % 2 == 1))
    return fl + up


def _windows(a, kh, kw, sh, sw, ph, pw, fill):
    p = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    v = np.lib.stride_tricks.sliding_window_view(p, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw]


def _max_pool_numpy(a, kh, kw, sh, sw, ph, pw):
    """NumPy twin of ``_kernels.pool.max_pool2d``: padding holds a value below every code."""
    x = a.astype(np.int64)
    fill = np.iinfo(np.int64).min
    return _windows(x, kh, kw, sh, sw, ph, pw, fill).max(axis=(-1, -2))


def _sum_pool_numpy(a, kh, kw, sh, sw, ph, pw):
    """NumPy twin of ``_kernels.pool.sum_pool2d``: (sum, count) of the valid positions."""
    x = a.astype(np.int64)
    s = _windows(x, kh, kw, sh, sw, ph, pw, 0).sum(axis=(-1, -2))
    c = _windows(np.ones_like(x), kh, kw, sh, sw, ph, pw, 0).sum(axis=(-1, -2))
    return s, c
