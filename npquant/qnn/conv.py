"""Integer 2-D convolution: NCHW int8/uint8 codes, OIHW weights, int32 accumulation.

``acc[n, o, i, j] = bias[o] + sum_{c, u, v} (q_x[n, g C_g + c, i s_h - p_t + u d_h,
j s_w - p_l + v d_w] - Z_x)(q_w[o, c, u, v] - Z_w[o])`` for output channel ``o`` of group
``g = o // (O / groups)``; positions outside the image read ``Z_x`` (padding with the
input zero point, i.e. a real zero). Computed as im2col (``_kernels.conv``) followed by
the integer GEMM of :mod:`npquant.qnn.gemm` per group, in the ``form`` it names. Requantization (the modes, ``"fbgemm"`` included), fused activations and the
overflow check are those of :class:`npquant.qnn.linear.QLinear`.

:class:`QConv2d` sets a layer up once; :func:`qconv2d` is ``QConv2d(...)`` called once,
and :func:`conv2d_accumulate` its ``accumulate``: one code path, the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import BACKENDS, check_choice, check_int, check_pair
from .._kernels import conv as _kc
from ..qparams import QParams
from ._common import (
    QLayer,
    accumulate_qparams,
    act_qparams,
    check_qparams_type,
    codes,
    conv_channels_error,
    conv_fit_error,
    conv_groups_error,
    frozen,
    layer_biases,
    layer_mode,
    weight_qparams,
)
from .accumulation import PAIRS, check_accumulation, resolve
from .gemm import PreparedGemm, fast_plan, prepare_gemm, run_fast_rows, run_gemm


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


def same_padding(
    size: int, kernel: int, stride: int = 1, dilation: int = 1, *, extra: str = "after"
) -> tuple[int, int]:
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


def conv_geometry(
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> ConvGeometry:
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


def _im2col(
    x: np.ndarray,
    zx: int,
    geo: ConvGeometry,
    kh: int,
    kw: int,
    backend: str,
    *,
    off: int = 0,
    kp: int | None = None,
    tap_major: bool = False,
    dtype=None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """(groups, N * OH * OW, kp) patches of ``x`` (``kp`` default K = C_g * kh * kw), and (OH, OW).

    Each value is the tap plus ``off`` as ``dtype`` (default ``x``'s), taps outside the
    image read ``zx + off``, columns K .. kp-1 are 0; ``tap_major``: (kh, kw, c) column
    order instead of (c, kh, kw). The kernel pads as it goes: ``x`` is never copied.
    """
    n, c, h, w = x.shape
    oh, ow = geo.output_size(h, w, kh, kw)
    k = (c // geo.groups) * kh * kw
    kp = k if kp is None else kp
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    if backend == "numpy":
        return _im2col_numpy(x, zx, geo, kh, kw, oh, ow, off=off, kp=kp, tap_major=tap_major, dtype=dtype), (oh, ow)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geo.stride, geo.padding, geo.dilation
    out = np.empty((geo.groups, n * oh * ow, kp), dtype)
    _kc.im2col(x, zx, off, geo.groups, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, tap_major, out)
    return out, (oh, ow)


def _im2col_numpy(
    x,
    zx,
    geo: ConvGeometry,
    kh,
    kw,
    oh,
    ow,
    *,
    off: int = 0,
    kp: int | None = None,
    tap_major: bool = False,
    dtype=None,
) -> np.ndarray:
    """Twin of ``_kernels.conv.im2col``: pad with ``zx``, strided slices per tap, then
    ``+ off`` as ``dtype`` and zero columns up to ``kp``."""
    n, c, _, _ = x.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = geo.stride, geo.padding, geo.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=zx)
    taps = np.empty((n, c, kh, kw, oh, ow), x.dtype)
    for u in range(kh):
        for v in range(kw):
            r0, c0 = u * dh, v * dw
            taps[:, :, u, v] = xp[:, :, r0 : r0 + sh * (oh - 1) + 1 : sh, c0 : c0 + sw * (ow - 1) + 1 : sw]
    g = geo.groups
    cg = c // g
    k = cg * kh * kw
    taps = taps.reshape(n, g, cg, kh, kw, oh, ow)
    # -> (g, n, oh, ow, patch) with the patch in (c, kh, kw) or (kh, kw, c) order
    order = (1, 0, 5, 6, 3, 4, 2) if tap_major else (1, 0, 5, 6, 2, 3, 4)
    cols = taps.transpose(order).reshape(g, n * oh * ow, k)
    out = np.zeros((g, n * oh * ow, k if kp is None else kp), x.dtype if dtype is None else dtype)
    out[:, :, :k] = cols.astype(np.int32) + off
    return out


def _prepare_conv(
    w: np.ndarray,
    zw: np.ndarray,
    x_qp: QParams,
    bias: np.ndarray,
    geo: ConvGeometry,
    form: str,
    overflow: str,
    accumulation: str,
) -> PreparedGemm:
    """The prepared product of OIHW weights ``w``. With int16 pair saturation the
    reduction runs in (kh, kw, c) order, c fastest (fbgemm's and MLAS's im2col order), so
    the weights are laid out that way here (a copy: the order the product needs; otherwise
    the OIHW codes are used as they are, a view) and :func:`_conv_rows` orders the patches
    alike."""
    o, cg, kh, kw = w.shape
    conv = (cg * geo.groups, o, geo.groups, (kh, kw), geo.stride, geo.padding, geo.dilation)
    pairs = resolve(accumulation, "conv2d", conv=conv) == PAIRS
    w2d = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(o, -1) if pairs else w.reshape(o, -1)
    return prepare_gemm(w2d, zw, x_qp, bias, form, overflow, "the conv2d accumulator", pairs)


def _conv_rows(x, geo: ConvGeometry, kernel, prep: PreparedGemm, backend: str):
    """int32 (N * OH * OW, O) accumulators, one row an output pixel, and (N, OH, OW).

    On the numba backend's 8-bit path im2col writes the patches once, straight in the
    form the GEMM kernel reads (uint8 ``x + ax``, K zero-padded to the kernel's ``kp``,
    padding taps ``Z_x + ax``); otherwise in ``x``'s dtype for :func:`run_gemm`.
    """
    n, _, h, w = x.shape
    oh, ow = geo.output_size(h, w, kernel[0], kernel[1])
    plan = fast_plan(prep, n * oh * ow, x.dtype, backend)
    if plan is None:
        cols, _ = _im2col(x, prep.zx, geo, kernel[0], kernel[1], backend, tap_major=prep.pairs)
        run = lambda p, rows: run_gemm(p, rows, backend)  # noqa: E731
    else:
        cols, _ = _im2col(
            x,
            prep.zx,
            geo,
            kernel[0],
            kernel[1],
            backend,
            off=prep.fast.ax,
            kp=plan[1],
            tap_major=prep.pairs,
            dtype=np.uint8,
        )
        run = lambda p, rows: run_fast_rows(p, plan, rows)  # noqa: E731
    if geo.groups == 1:
        return run(prep, cols[0]), (n, oh, ow)
    o = prep.w.shape[0]
    og = o // geo.groups
    acc = np.empty((n * oh * ow, o), np.int32)
    for g in range(geo.groups):
        sl = slice(g * og, (g + 1) * og)
        # the kernels write a C-contiguous (rows, O / groups) block: one copy into its columns
        acc[:, sl] = run(prep.rows(sl), cols[g])
    return acc, (n, oh, ow)


def _rows_to_nchw(rows: np.ndarray, dims) -> np.ndarray:
    """(N * OH * OW, O) rows as NCHW: a transposing copy, needed because the GEMM writes
    one output pixel a row (the layer transposes the 1-byte output codes, not the int32)."""
    n, oh, ow = dims
    return np.ascontiguousarray(rows.reshape(n, oh, ow, rows.shape[1]).transpose(0, 3, 1, 2))


class QConv2d(QLayer):
    """Integer conv2d layer, set up once: ``layer(x_q)`` maps NCHW codes to NCHW codes of
    ``y_qp.spec.dtype``; ``layer.accumulate(x_q)`` returns int32.

    The accumulator (module docstring) is requantized per output channel (axis 1) as in
    :class:`npquant.qnn.linear.QLinear`: ``mode`` names the rounding, ``activation`` the
    fused clamp. With ``mode="fbgemm"`` and ``accumulation="fbgemm"`` it reproduces
    ``torch.ops.quantized.conv2d`` (torch 2.13: dense, grouped, pointwise and depthwise)
    bit for bit on the CPU path at hand (tested live with fbgemm's VNNI and AVX2 kernels
    and against outputs recorded on an AVX2-only CPU). Attributes as
    :class:`~npquant.qnn.linear.QLinear`'s, and ``geometry`` (:class:`ConvGeometry`).

    Parameters
    ----------
    w_q : integer array (O, C / groups, kh, kw)
        Codes of ``w_qp``; depthwise is ``groups = C`` with ``O = C * multiplier``.
    w_qp : QParams
        The weights' qparams, per-tensor or per-channel along axis 0.
    bias_q : int32 array (O,), float array (O,) or None
        The bias at scale ``S_x S_w`` and zero point 0; with ``mode="fbgemm"``, PyTorch's
        float bias. None: no bias.
    x_qp : QParams
        The input's qparams, per-tensor; its zero point is also the padding value.
    y_qp : QParams or None
        The output's qparams, per-tensor. None: a layer that only accumulates.
    stride, padding, dilation : int or tuple of int, default 1, 0, 1
        As in :func:`conv_geometry`; padding reads ``Z_x``.
    groups : int, default 1
        As in :func:`conv_geometry`; ``O`` must be divisible by it.
    mode : str, default ``"tflite"``
        The requantization, as in :class:`npquant.qnn.linear.QLinear` (``"tflite"``,
        ``"tflite_single"``, ``"fp32"``, ``"onnx"``, ``"fbgemm"``).
    activation : str, (int, int) or None, default None
        The fused clamp, as in :class:`npquant.qnn.linear.QLinear`.
    form : ``"auto"``, ``"direct"`` or ``"folded"``, default ``"auto"``
        The formula the kernel computes, as in :class:`npquant.qnn.linear.QLinear`:
        ``"auto"`` the fastest, the other two that formula on either backend; identical
        results.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        As in :class:`npquant.qnn.linear.QLinear`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernels or their NumPy twins; identical results.
    float_bias : float32 array (O,) or None, default None
        Deprecated spelling of ``mode="fbgemm"`` (with ``mode="fp32"`` and
        ``bias_q=None``); a DeprecationWarning.
    accumulation : str, default ``"exact"``
        ``"exact"``, ``"int16_pairs"`` (pairs along each group's (kh, kw, c) patch, c
        fastest, padding taps reading ``Z_x``), or a library on a CPU path (``"fbgemm"``,
        ``"mlas_avx2"``, ...), which decides per geometry (fbgemm's depthwise kernel
        saturates even with VNNI): :mod:`npquant.qnn.accumulation`.
    """

    def __init__(
        self,
        w_q: npt.ArrayLike,
        w_qp: QParams,
        bias_q: npt.ArrayLike | None,
        x_qp: QParams,
        y_qp: QParams | None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
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
        self.geometry = conv_geometry(stride, padding, dilation, groups)
        w = codes(w_q, w_qp, "w_q", ndim=4)
        if w.shape[0] % self.geometry.groups:
            raise conv_groups_error(w.shape[0], self.geometry.groups)
        sw, zw, per_channel = weight_qparams(w_qp, w.shape)
        # the layer's one copy of the codes, read-only (the prepared product uses it as is);
        # not copied again if ``codes`` already made a new array (a cast)
        self.w_q, self.w_qp = frozen(w, copy=np.may_share_memory(w, w_q)), w_qp
        bias, fb = layer_biases(mode, bias_q, w.shape[0])
        self.bias_q = frozen(bias)
        self._gemm = _prepare_conv(self.w_q, zw, x_qp, self.bias_q, self.geometry, form, overflow, accumulation)
        self.accumulation = accumulation
        self.bias_folded = self._gemm.bias_folded
        self.form, self.overflow, self.backend = form, overflow, backend
        self._setup_output(x_qp, sw, per_channel, y_qp, mode, activation, fb)

    def accumulate(self, x_q: npt.ArrayLike) -> np.ndarray:
        """int32 accumulators of NCHW input codes.

        Parameters
        ----------
        x_q : integer array (N, C, H, W)
            Codes of ``x_qp``.

        Returns
        -------
        numpy.ndarray
            int32 (N, O, OH, OW), exact (or pair-saturated; wrapped with
            ``overflow="wrap"``); ``OH = (H + p_t + p_b - d_h (kh - 1) - 1) // s_h + 1``.
            With ``mode="fbgemm"`` the bias is not included.
        """
        return _rows_to_nchw(*self._accumulate_rows(x_q))

    def _accumulate_rows(self, x_q) -> tuple[np.ndarray, tuple[int, int, int]]:
        x = self._check_x(x_q, ndim=4)
        o, cg, kh, kw = self.w_q.shape
        geo = self.geometry
        if x.shape[1] != cg * geo.groups:
            raise conv_channels_error(x.shape[1], self.w_q.shape, geo.groups)
        oh, ow = geo.output_size(x.shape[2], x.shape[3], kh, kw)
        if oh < 1 or ow < 1:
            raise conv_fit_error((kh, kw), geo, x.shape[2], x.shape[3])
        return _conv_rows(x, geo, (kh, kw), self._gemm, self.backend)

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        """NCHW output codes of NCHW input codes.

        Parameters
        ----------
        x_q : integer array (N, C, H, W)
            Codes of ``x_qp``.

        Returns
        -------
        numpy.ndarray
            (N, O, OH, OW) codes of ``y_qp.spec.dtype``, saturated to the output range.
        """
        acc, dims = self._accumulate_rows(x_q)  # requantized as (pixels, channels) rows, then NCHW
        return _rows_to_nchw(self._requantize(acc, 1), dims)

    def __repr__(self) -> str:
        o, cg, kh, kw = self.w_q.shape
        g = self.geometry
        return (
            f"QConv2d({cg * g.groups}, {o}, kernel=({kh}, {kw}), stride={g.stride}, padding={g.padding}, "
            f"dilation={g.dilation}, groups={g.groups}, mode={self.mode!r}, activation={self.activation!r}, "
            f"accumulation={self.accumulation!r})"
        )


def conv2d_accumulate(
    x_q: npt.ArrayLike,
    x_qp: QParams | int,
    w_q: npt.ArrayLike,
    w_qp: QParams | int | npt.ArrayLike,
    bias_q: npt.ArrayLike | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    form: str = "auto",
    overflow: str = "error",
    backend: str = "numba",
    accumulation: str = "exact",
) -> np.ndarray:
    """int32 accumulators of an integer conv2d (before requantization).

    ``QConv2d(w_q, w_qp, bias_q, x_qp, None, ...).accumulate(x_q)``, with plain zero
    points made into QParams first.

    Parameters
    ----------
    x_q : integer array (N, C, H, W)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams or int
        The input's qparams, or only its zero point (the scales are not used here), as in
        :func:`npquant.qnn.linear.linear_accumulate`: a plain int takes the code range from
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
        As in :func:`npquant.qnn.linear.linear_accumulate`.
    accumulation : str
        As in :class:`QConv2d`.

    Returns
    -------
    int32 array (N, O, OH, OW)
        Exact (or pair-saturated);
        ``OH = (H + p_t + p_b - d_h (kh - 1) - 1) // s_h + 1``.
    """
    check_choice(backend, "backend", BACKENDS)
    x_qp, w_qp = accumulate_qparams(x_q, x_qp, w_q, w_qp)
    return QConv2d(
        w_q,
        w_qp,
        bias_q,
        x_qp,
        None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        form=form,
        overflow=overflow,
        backend=backend,
        accumulation=accumulation,
    ).accumulate(x_q)


def qconv2d(
    x_q: npt.ArrayLike,
    x_qp: QParams,
    w_q: npt.ArrayLike,
    w_qp: QParams,
    bias_q: npt.ArrayLike | None,
    y_qp: QParams,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    mode: str = "tflite",
    activation: str | tuple[int, int] | None = None,
    form: str = "auto",
    overflow: str = "error",
    backend: str = "numba",
    float_bias: npt.ArrayLike | None = None,
    accumulation: str = "exact",
) -> np.ndarray:
    """Integer conv2d: NCHW codes in, NCHW codes of ``y_qp`` out.

    ``QConv2d(w_q, w_qp, bias_q, x_qp, y_qp, ...)(x_q)``: the formula, the modes and the
    PyTorch match of ``mode="fbgemm"`` are :class:`QConv2d`'s. Use the class to prepare
    the weights once for many inputs.

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
    bias_q : int32 array (O,), float array (O,) or None
        The bias at scale ``S_x S_w`` and zero point 0; with ``mode="fbgemm"``, PyTorch's
        float bias.
    y_qp : QParams
        The output's qparams, per-tensor.
    stride, padding, dilation, groups
        See :func:`conv_geometry`; padding reads ``Z_x``.
    mode : str, default ``"tflite"``
        The requantization, as in :class:`npquant.qnn.linear.QLinear`.
    activation : str, (int, int) or None, default None
        The fused clamp, as in :class:`npquant.qnn.linear.QLinear`.
    form, overflow, backend : str
        As in :func:`npquant.qnn.linear.linear_accumulate` (defaults ``"auto"``,
        ``"error"``, ``"numba"``).
    float_bias : float32 array (O,) or None, default None
        Deprecated spelling of ``mode="fbgemm"`` (needs ``mode="fp32"`` and
        ``bias_q=None``); a DeprecationWarning.
    accumulation : str, default ``"exact"``
        As in :class:`QConv2d`.

    Returns
    -------
    numpy.ndarray
        (N, O, OH, OW) codes of ``y_qp.spec.dtype``, saturated to the output range.
    """
    mode, bias_q = layer_mode(mode, bias_q, float_bias, stacklevel=2)
    return QConv2d(
        w_q,
        w_qp,
        bias_q,
        x_qp,
        y_qp,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        mode=mode,
        activation=activation,
        form=form,
        overflow=overflow,
        backend=backend,
        accumulation=accumulation,
    )(x_q)
