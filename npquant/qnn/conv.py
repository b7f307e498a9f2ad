"""Integer 2-D convolution: NCHW int8/uint8 codes, OIHW weights, int32 accumulation.

``acc[n, o, i, j] = bias[o] + sum_{c, u, v} (q_x[n, g C_g + c, i s_h - p_t + u d_h,
j s_w - p_l + v d_w] - Z_x)(q_w[o, c, u, v] - Z_w[o])`` for output channel ``o`` of group
``g = o // (O / groups)``; positions outside the image read ``Z_x`` (padding with the
input zero point, i.e. a real zero). Computed as im2col (``_kernels.conv``) followed by
the integer GEMM of :mod:`npquant.qnn.gemm` per group, in its ``direct`` or ``folded``
form. Requantization, fused activations and the overflow check are those of
:func:`npquant.qnn.gemm.qlinear`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_choice, check_int, check_pair
from .._kernels import conv as _kc
from ..qparams import QParams
from ..requant.fixedpoint import REQUANT_MODES
from . import accumulation as _acc
from . import gemm as _g


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding (top, bottom, left, right), dilation and groups of a conv2d."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    def output_size(self, h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
        """``(H + p_t + p_b - d_h (kh - 1) - 1) // s_h + 1`` and likewise for the width."""
        (sh, sw), (pt, pb, pl, pr), (dh, dw) = self.stride, self.padding, self.dilation
        return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1, *,
                 extra: str = "after") -> tuple[int, int]:
    """The ``(before, after)`` padding of one spatial axis for TensorFlow's and ONNX's SAME.

    The output has ``ceil(size / stride)`` positions; the total padding is
    ``max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``, split in two
    halves with the odd one at the end (TensorFlow and TFLite's SAME, ONNX's
    ``SAME_UPPER``) or at the start (ONNX's ``SAME_LOWER``). For example 112 with a 3x3
    kernel and stride 2 pads 0 before and 1 after.

    Parameters
    ----------
    size : int
        The input's length on this axis, >= 1.
    kernel : int
        The kernel's length on this axis, >= 1.
    stride : int, default 1
        >= 1.
    dilation : int, default 1
        >= 1.
    extra : ``"after"`` (default) or ``"before"``
        Where an odd total's extra row or column goes: ``"after"`` for TensorFlow, TFLite
        and ONNX ``SAME_UPPER``, ``"before"`` for ONNX ``SAME_LOWER``.

    Returns
    -------
    tuple of int
        ``(before, after)``, each >= 0.
    """
    size = check_int(size, "size", lo=1)
    kernel = check_int(kernel, "kernel", lo=1)
    stride = check_int(stride, "stride", lo=1)
    dilation = check_int(dilation, "dilation", lo=1)
    check_choice(extra, "extra", ("after", "before"))
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if extra == "after" else (total - small, small)


def conv_geometry(stride=1, padding=0, dilation=1, groups: int = 1) -> ConvGeometry:
    """Validate and normalize conv2d arguments.

    ``stride``, ``dilation``: int or (h, w), >= 1. ``padding``: int (all sides), (h, w)
    (symmetric), or (top, bottom, left, right) (asymmetric; note ONNX orders its
    ``pads`` as (top, left, bottom, right)), >= 0. ``groups`` >= 1.

    Parameters
    ----------
    stride : int or (int, int), default 1
        Step of the kernel, >= 1.
    padding : int, (int, int) or (int, int, int, int), default 0
        Padding of all sides, of (h, w), or (top, bottom, left, right); >= 0.
    dilation : int or (int, int), default 1
        Spacing of the kernel taps, >= 1.
    groups : int, default 1
        Number of channel groups, >= 1.

    Returns
    -------
    ConvGeometry
        ``stride`` and ``dilation`` as (h, w), ``padding`` as (top, bottom, left, right),
        ``groups``.
    """
    s = check_pair(stride, "stride", lo=1)
    d = check_pair(dilation, "dilation", lo=1)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        p = tuple(check_int(v, "padding", lo=0) for v in padding)
    elif isinstance(padding, (tuple, list)) and len(padding) != 2:
        raise ValueError(f"padding must be an int, (h, w) or (top, bottom, left, right), got {padding!r}")
    else:
        ph, pw = check_pair(padding, "padding", lo=0)
        p = (ph, ph, pw, pw)
    return ConvGeometry(s, p, d, check_int(groups, "groups", lo=1))


def _im2col(x: np.ndarray, zx: int, geo: ConvGeometry, kh: int, kw: int, backend: str):
    """(groups, N * OH * OW, C_g * kh * kw) patches of ``x``'s dtype, and (OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = geo.output_size(h, w, kh, kw)
    if backend == "numpy":
        return _im2col_numpy(x, zx, geo, kh, kw, oh, ow), (oh, ow)
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = geo.stride, geo.padding, geo.dilation
    out = np.empty((geo.groups, n * oh * ow, (c // geo.groups) * kh * kw), x.dtype)
    if pt or pb or pl or pr:
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=zx)
    else:
        xp = np.ascontiguousarray(x)
    _kc.im2col(xp, geo.groups, kh, kw, sh, sw, dh, dw, oh, ow, out)
    return out, (oh, ow)


def _im2col_numpy(x, zx, geo: ConvGeometry, kh, kw, oh, ow) -> np.ndarray:
    """Twin of ``_kernels.conv.im2col``: pad with ``zx``, then strided slices per tap."""
    n, c, _, _ = x.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = geo.stride, geo.padding, geo.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=zx)
    taps = np.empty((n, c, kh, kw, oh, ow), x.dtype)
    for u in range(kh):
        for v in range(kw):
            r0, c0 = u * dh, v * dw
            taps[:, :, u, v] = xp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw]
    g = geo.groups
    cols = taps.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, g, (c // g) * kh * kw)
    return np.ascontiguousarray(cols.transpose(1, 0, 2))


def _prepare_conv(w: np.ndarray, zw, x_qp: QParams, bias, geo: ConvGeometry, form: str, overflow: str,
                  accumulation: str) -> _g._Gemm:
    """The prepared product of OIHW weights ``w``. With int16 pair saturation the
    reduction runs in (kh, kw, c) order, c fastest (fbgemm's and MLAS's im2col order), so
    the weights are laid out that way here and :func:`_conv_rows` orders the patches alike."""
    o, cg, kh, kw = w.shape
    conv = (cg * geo.groups, o, geo.groups, (kh, kw), geo.stride, geo.padding, geo.dilation)
    pairs = _acc.resolve(accumulation, "conv2d", conv=conv) == _acc.PAIRS
    w2d = w.transpose(0, 2, 3, 1).reshape(o, -1) if pairs else w.reshape(o, -1)
    return _g._prepare(w2d, zw, x_qp, bias, form, overflow, "the conv2d accumulator", pairs)


def _conv_setup(x_q, x_qp, w_q, w_qp, bias_q, stride, padding, dilation, groups, form, overflow,
                accumulation="exact"):
    _g._act_qparams(x_qp, "x_qp")
    _g._check_qparams_type(w_qp, "w_qp")
    geo = conv_geometry(stride, padding, dilation, groups)
    w = _g._codes(w_q, w_qp, "w_q", ndim=4)
    x = _g._codes(x_q, x_qp, "x_q", ndim=4)
    o, cg, kh, kw = w.shape
    if o % geo.groups:
        raise ValueError(f"w_q has {o} output channels, not divisible by groups={geo.groups}")
    if x.shape[1] != cg * geo.groups:
        raise ValueError(f"x_q has {x.shape[1]} channels but w_q {w.shape} with groups={geo.groups} "
                         f"needs {cg * geo.groups}")
    oh, ow = geo.output_size(x.shape[2], x.shape[3], kh, kw)
    if oh < 1 or ow < 1:
        raise ValueError(f"the kernel {kh}x{kw} (dilation {geo.dilation}) does not fit the padded input "
                         f"{x.shape[2]}x{x.shape[3]} with padding {geo.padding}")
    sw, zw, per_channel = _g._weight_qparams(w_qp, w.shape)
    bias = _g._bias(bias_q, o)
    prep = _prepare_conv(w, zw, x_qp, bias, geo, form, overflow, accumulation)
    return x, geo, (kh, kw), prep, sw, per_channel


def _conv_rows(x, geo: ConvGeometry, kernel, prep: _g._Gemm, backend: str):
    """int32 (N * OH * OW, O) accumulators, one row an output pixel, and (N, OH, OW)."""
    n = x.shape[0]
    cols, (oh, ow) = _im2col(x, prep.zx, geo, kernel[0], kernel[1], backend)
    if prep.pairs:  # (c, kh, kw) -> (kh, kw, c) within each group, as _prepare_conv laid out w
        g_, rows, kk = cols.shape
        t = kernel[0] * kernel[1]
        cols = np.ascontiguousarray(cols.reshape(g_, rows, kk // t, t).transpose(0, 1, 3, 2)).reshape(g_, rows, kk)
    if geo.groups == 1:
        return _g._run(prep, cols[0], backend), (n, oh, ow)
    o = prep.w.shape[0]
    og = o // geo.groups
    acc = np.empty((n * oh * ow, o), np.int32)
    for g in range(geo.groups):
        sl = slice(g * og, (g + 1) * og)
        acc[:, sl] = _g._run(prep.rows(sl), cols[g], backend)
    return acc, (n, oh, ow)


def _rows_to_nchw(rows: np.ndarray, dims) -> np.ndarray:
    n, oh, ow = dims
    return np.ascontiguousarray(rows.reshape(n, oh, ow, rows.shape[1]).transpose(0, 3, 1, 2))


def _conv_run(x, geo: ConvGeometry, kernel, prep: _g._Gemm, backend: str) -> np.ndarray:
    """int32 (N, O, OH, OW) accumulators."""
    return _rows_to_nchw(*_conv_rows(x, geo, kernel, prep, backend))


def conv2d_accumulate(x_q, x_qp, w_q, w_qp, bias_q=None, *, stride=1, padding=0,
                      dilation=1, groups: int = 1, form: str = "direct", overflow: str = "error",
                      backend: str = "numba", accumulation: str = "exact") -> np.ndarray:
    """int32 accumulators of an integer conv2d (before requantization).

    Parameters
    ----------
    x_q : integer array (N, C, H, W)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams or int
        The input's qparams, or only its zero point (the scales are not used here), as in
        :func:`npquant.qnn.gemm.linear_accumulate`: a plain int takes the code range from
        ``x_q``'s 8- or 16-bit dtype and must lie in it; it is also the padding value.
    w_q : integer array (O, C / groups, kh, kw)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0); depthwise is
        ``groups = C`` with ``O = C * multiplier``.
    w_qp : QParams, int or 1-D integer array (O,)
        The weights' qparams, or only the zero point (an int) or one per output channel;
        a plain zero point takes the code range from ``w_q``'s 8- or 16-bit dtype.
    bias_q : int32 array (O,) or None
        The bias at scale ``S_x S_w`` and zero point 0.
    stride, padding, dilation, groups
        See :func:`conv_geometry`; padding reads ``Z_x``.
    form, overflow, backend : str
        As in :func:`npquant.qnn.gemm.linear_accumulate`.
    accumulation : str
        ``"exact"`` (default), ``"int16_pairs"`` (pairs along each group's
        (kh, kw, c) patch, c fastest, padding taps reading ``Z_x``), or a library on a CPU
        path (``"fbgemm"``, ``"mlas_avx2"``, ...), which decides per geometry (fbgemm's
        depthwise kernel saturates even with VNNI): :mod:`npquant.qnn.accumulation`.

    Returns
    -------
    int32 array (N, O, OH, OW)
        Exact (or pair-saturated);
        ``OH = (H + p_t + p_b - d_h (kh - 1) - 1) // s_h + 1``.
    """
    check_choice(backend, "backend", _g.BACKENDS)
    x_qp, w_qp = _g._accumulate_qparams(x_q, x_qp, w_q, w_qp)
    x, geo, kernel, prep, _, _ = _conv_setup(x_q, x_qp, w_q, w_qp, bias_q, stride, padding, dilation,
                                             groups, form, overflow, accumulation)
    return _conv_run(x, geo, kernel, prep, backend)


def qconv2d(x_q, x_qp: QParams, w_q, w_qp: QParams, bias_q, y_qp: QParams, *, stride=1, padding=0,
            dilation=1, groups: int = 1, mode: str = "tflite", activation=None, form: str = "direct",
            overflow: str = "error", backend: str = "numba", float_bias=None,
            accumulation: str = "exact") -> np.ndarray:
    """Integer conv2d: NCHW codes in, NCHW codes of ``y_qp`` out.

    The accumulator of :func:`conv2d_accumulate`, requantized per output channel (axis
    1) as in :func:`npquant.qnn.gemm.qlinear`: ``mode`` names the rounding,
    ``activation`` the fused clamp. Returns (N, O, OH, OW) codes of ``y_qp.spec.dtype``.
    ``float_bias`` with ``mode="fp32"`` and ``accumulation="fbgemm"`` reproduces
    ``torch.ops.quantized.conv2d`` (torch 2.13: dense, grouped, pointwise and depthwise) bit
    for bit on the CPU path at hand (tested live with fbgemm's VNNI and AVX2 kernels and
    against outputs recorded on an AVX2-only CPU); ``accumulation`` as in
    :func:`conv2d_accumulate`.

    Parameters
    ----------
    x_q : integer array (N, C, H, W)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams
        The input's qparams.
    w_q : integer array (O, C / groups, kh, kw)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0).
    w_qp : QParams
        The weights' qparams.
    bias_q : int32 array (O,) or None
        The bias at scale ``S_x S_w`` and zero point 0.
    y_qp : QParams
        The output's qparams, per-tensor.
    stride, padding, dilation, groups
        See :func:`conv_geometry`; padding reads ``Z_x``.
    mode : str, default ``"tflite"``
        The requantization rounding, as in :func:`npquant.qnn.gemm.qlinear`.
    activation : str, (int, int) or None, default None
        The fused clamp, as in :func:`npquant.qnn.gemm.qlinear`.
    form, overflow, backend : str
        As in :func:`npquant.qnn.gemm.linear_accumulate` (defaults ``"direct"``,
        ``"error"``, ``"numba"``).
    float_bias : float32 array (O,) or None, default None
        PyTorch's float bias; needs ``mode="fp32"`` and ``bias_q=None``.
    accumulation : str, default ``"exact"``
        As in :func:`conv2d_accumulate`.

    Returns
    -------
    numpy.ndarray
        (N, O, OH, OW) codes of ``y_qp.spec.dtype``, saturated to the output range.
    """
    check_choice(backend, "backend", _g.BACKENDS)
    check_choice(mode, "mode", REQUANT_MODES)
    _g._check_float_bias(float_bias, bias_q, mode)
    _g._act_qparams(y_qp, "y_qp")
    _g._activation_range(activation, y_qp)
    x, geo, kernel, prep, sw, per_channel = _conv_setup(x_q, x_qp, w_q, w_qp, bias_q, stride, padding,
                                                        dilation, groups, form, overflow, accumulation)
    acc, dims = _conv_rows(x, geo, kernel, prep, backend)  # requantized as rows, then NCHW
    if float_bias is not None:
        y = _g._float_bias_out(acc, x_qp, sw, per_channel, y_qp, float_bias, activation, axis=1,
                               backend=backend)
    else:
        y = _g._requantize_out(acc, x_qp, sw, per_channel, y_qp, mode, activation, axis=1)
    return _rows_to_nchw(y, dims)
