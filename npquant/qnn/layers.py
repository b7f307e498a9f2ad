"""Integer layer objects: the weights, bias and qparams of one layer, prepared once.

:class:`QLinear` and :class:`QConv2d` validate their constants, check the worst-case
accumulator against int32, fold the zero-point terms into the bias and compute the
requantization multiplier and output range at construction; calling one on input codes
only checks the codes and runs the kernels. Results equal :func:`~npquant.qnn.gemm.qlinear`
and :func:`~npquant.qnn.conv.qconv2d` bit for bit. :class:`MaxPool2d`, :class:`AvgPool2d`,
:class:`QAdd`, :class:`QReLU` and :class:`Flatten` wrap the other integer operations.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_choice, check_int
from ..affine import quantize as _quantize
from ..qparams import QParams
from ..requant.fixedpoint import REQUANT_MODES, effective_multiplier
from . import activation as _act
from . import conv as _c
from . import gemm as _g
from . import pool as _pool
from .accumulation import PAIRS, check_accumulation, resolve
from .add import ADD_MODES
from .add import add as _add_codes


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only private copy: the prepared constants must not go stale."""
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


class _QLayer:
    def _setup_output(self, x_qp, w_scale, per_channel, y_qp, mode, activation, float_bias=None):
        check_choice(mode, "mode", REQUANT_MODES)
        _g._check_float_bias(float_bias, None, mode)
        self.float_bias = None if float_bias is None else _frozen(np.asarray(float_bias, np.float32))
        _g._act_qparams(x_qp, "x_qp")
        sy, zy = _g._act_qparams(y_qp, "y_qp")
        activation = _act.normalize_activation(activation, allow_range=True)
        self.x_qp, self.y_qp, self.mode, self.activation = x_qp, y_qp, mode, activation
        self.out_range = _g._activation_range(activation, y_qp)
        sw = w_scale if per_channel else w_scale[0]
        self.multiplier = effective_multiplier(np.float32(x_qp.scale), sw, sy, mode)
        self._per_channel = per_channel
        self._w_scale = w_scale

    @property
    def saturates_pairs(self) -> bool:
        """The accumulation resolved to int16 pair saturation (:mod:`npquant.qnn.accumulation`)."""
        return self._gemm.pairs

    def _check_x(self, x_q, ndim=None):
        return _g._codes(x_q, self.x_qp, "x_q", ndim=ndim)

    def _requantize(self, acc, axis):
        if self.float_bias is not None:
            return _g._float_bias_out(acc, self.x_qp, self._w_scale, self._per_channel, self.y_qp,
                                      self.float_bias, self.activation, axis, self.backend)
        return _g._requantize_acc(acc, self.multiplier, self._per_channel, self.y_qp, self.out_range,
                                  self.mode, axis)


class QLinear(_QLayer):
    """Integer fully connected layer (see :func:`npquant.qnn.gemm.qlinear`).

    ``layer(x_q)`` maps (..., in) codes to (..., out) codes of ``y_qp.spec.dtype``;
    ``layer.accumulate(x_q)`` returns the int32 accumulators.
    Attributes: ``multiplier`` (float64, per channel or scalar, as the stack of ``mode``
    computes it), ``out_range`` (codes), ``bias_folded`` (int32, the bias of the folded
    form), ``saturates_pairs`` (whether this layer's accumulation resolved to int16 pairs).

    Parameters
    ----------
    w_q : integer array (out, in)
        Codes of ``w_qp``.
    w_qp : QParams
        The weights' qparams, per-tensor or per-channel along axis 0.
    bias_q : int32 array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0; None: no bias.
    x_qp : QParams
        The input's qparams, per-tensor.
    y_qp : QParams
        The output's qparams, per-tensor.
    mode : str, default ``"tflite"``
        The requantization rounding, one of :data:`npquant.requant.fixedpoint.REQUANT_MODES`.
    activation : str, (int, int) or None, default None
        The fused clamp, as in :func:`npquant.qnn.gemm.qlinear`.
    form : ``"direct"`` or ``"folded"``, default ``"direct"``
        As in :func:`npquant.qnn.gemm.linear_accumulate`.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        As in :func:`npquant.qnn.gemm.linear_accumulate`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernels or their NumPy twins.
    float_bias : float32 array (out,) or None, default None
        PyTorch's float bias; needs ``mode="fp32"`` and ``bias_q=None``.
    accumulation : str, default ``"exact"``
        The arithmetic of the sum (:mod:`npquant.qnn.accumulation`; ``"fbgemm"`` for
        PyTorch's bits on this CPU).
    """

    def __init__(self, w_q, w_qp: QParams, bias_q, x_qp: QParams, y_qp: QParams, *, mode: str = "tflite",
                 activation=None, form: str = "direct", overflow: str = "error", backend: str = "numba",
                 float_bias=None, accumulation: str = "exact"):
        check_choice(backend, "backend", _g.BACKENDS)
        check_accumulation(accumulation)
        if float_bias is not None and bias_q is not None:
            raise ValueError("give either bias_q (int32) or float_bias (fbgemm's float bias), not both")
        _g._act_qparams(x_qp, "x_qp")
        _g._check_qparams_type(w_qp, "w_qp")
        w = _g._codes(w_q, w_qp, "w_q", ndim=2)
        sw, zw, per_channel = _g._weight_qparams(w_qp, w.shape)
        self.w_q, self.w_qp = _frozen(w), w_qp
        self.bias_q = _frozen(_g._bias(bias_q, w.shape[0]))
        pairs = resolve(accumulation, "linear") == PAIRS
        self._gemm = _g._prepare(self.w_q, zw, x_qp, self.bias_q, form, overflow, "the linear accumulator", pairs)
        self.accumulation = accumulation
        self.bias_folded = self._gemm.bias_folded
        self.form, self.overflow, self.backend = form, overflow, backend
        self._setup_output(x_qp, sw, per_channel, y_qp, mode, activation, float_bias)

    @property
    def in_features(self) -> int:
        return self.w_q.shape[1]

    @property
    def out_features(self) -> int:
        return self.w_q.shape[0]

    def accumulate(self, x_q) -> np.ndarray:
        """int32 (..., out) accumulators of codes (..., in)."""
        x = self._check_x(x_q)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x_q must have shape (..., {self.in_features}), got {x.shape}")
        acc = _g._run(self._gemm, x.reshape(-1, x.shape[-1]), self.backend)
        return acc.reshape(x.shape[:-1] + (self.out_features,))

    def __call__(self, x_q) -> np.ndarray:
        acc = self.accumulate(x_q)
        return self._requantize(acc.reshape(-1, self.out_features), 1).reshape(acc.shape)

    def __repr__(self) -> str:
        return (f"QLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"mode={self.mode!r}, activation={self.activation!r}, form={self.form!r}, "
                f"accumulation={self.accumulation!r})")


class QConv2d(_QLayer):
    """Integer conv2d layer (see :func:`npquant.qnn.conv.qconv2d`).

    ``layer(x_q)`` maps NCHW codes to NCHW codes of ``y_qp.spec.dtype``;
    ``layer.accumulate(x_q)`` returns int32.

    Parameters
    ----------
    w_q : integer array (O, C / groups, kh, kw)
        Codes of ``w_qp``.
    w_qp : QParams
        The weights' qparams, per-tensor or per-channel along axis 0.
    bias_q : int32 array (O,) or None
        The bias at scale ``S_x S_w`` and zero point 0; None: no bias.
    x_qp : QParams
        The input's qparams, per-tensor.
    y_qp : QParams
        The output's qparams, per-tensor.
    stride, padding, dilation : int or tuple of int, default 1, 0, 1
        As in :func:`npquant.qnn.conv.conv_geometry`.
    groups : int, default 1
        As in :func:`npquant.qnn.conv.conv_geometry`; ``O`` must be divisible by it.
    mode : str, default ``"tflite"``
        The requantization rounding, one of :data:`npquant.requant.fixedpoint.REQUANT_MODES`.
    activation : str, (int, int) or None, default None
        The fused clamp, as in :func:`npquant.qnn.gemm.qlinear`.
    form : ``"direct"`` or ``"folded"``, default ``"direct"``
        As in :func:`npquant.qnn.gemm.linear_accumulate`.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        As in :func:`npquant.qnn.gemm.linear_accumulate`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernels or their NumPy twins.
    float_bias : float32 array (O,) or None, default None
        PyTorch's float bias; needs ``mode="fp32"`` and ``bias_q=None``.
    accumulation : str, default ``"exact"``
        As in :class:`QLinear`, resolved for this geometry.
    """

    def __init__(self, w_q, w_qp: QParams, bias_q, x_qp: QParams, y_qp: QParams, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, mode: str = "tflite", activation=None, form: str = "direct",
                 overflow: str = "error", backend: str = "numba", float_bias=None, accumulation: str = "exact"):
        check_choice(backend, "backend", _g.BACKENDS)
        check_accumulation(accumulation)
        if float_bias is not None and bias_q is not None:
            raise ValueError("give either bias_q (int32) or float_bias (fbgemm's float bias), not both")
        _g._act_qparams(x_qp, "x_qp")
        _g._check_qparams_type(w_qp, "w_qp")
        self.geometry = _c.conv_geometry(stride, padding, dilation, groups)
        w = _g._codes(w_q, w_qp, "w_q", ndim=4)
        if w.shape[0] % self.geometry.groups:
            raise ValueError(f"w_q has {w.shape[0]} output channels, not divisible by groups={groups}")
        sw, zw, per_channel = _g._weight_qparams(w_qp, w.shape)
        self.w_q, self.w_qp = _frozen(w), w_qp
        self.bias_q = _frozen(_g._bias(bias_q, w.shape[0]))
        self._gemm = _c._prepare_conv(self.w_q, zw, x_qp, self.bias_q, self.geometry, form, overflow,
                                      accumulation)
        self.accumulation = accumulation
        self.bias_folded = self._gemm.bias_folded
        self.form, self.overflow, self.backend = form, overflow, backend
        self._setup_output(x_qp, sw, per_channel, y_qp, mode, activation, float_bias)

    def accumulate(self, x_q) -> np.ndarray:
        """int32 (N, O, OH, OW) accumulators of NCHW codes."""
        return _c._rows_to_nchw(*self._accumulate_rows(x_q))

    def _accumulate_rows(self, x_q):
        x = self._check_x(x_q, ndim=4)
        o, cg, kh, kw = self.w_q.shape
        geo = self.geometry
        if x.shape[1] != cg * geo.groups:
            raise ValueError(f"x_q has {x.shape[1]} channels; this layer needs {cg * geo.groups}")
        oh, ow = geo.output_size(x.shape[2], x.shape[3], kh, kw)
        if oh < 1 or ow < 1:
            raise ValueError(f"the kernel {kh}x{kw} does not fit the padded input {x.shape[2]}x{x.shape[3]}")
        return _c._conv_rows(x, geo, (kh, kw), self._gemm, self.backend)

    def __call__(self, x_q) -> np.ndarray:
        acc, dims = self._accumulate_rows(x_q)  # requantized as (pixels, channels) rows, then NCHW
        return _c._rows_to_nchw(self._requantize(acc, 1), dims)

    def __repr__(self) -> str:
        o, cg, kh, kw = self.w_q.shape
        g = self.geometry
        return (f"QConv2d({cg * g.groups}, {o}, kernel=({kh}, {kw}), stride={g.stride}, padding={g.padding}, "
                f"dilation={g.dilation}, groups={g.groups}, mode={self.mode!r}, activation={self.activation!r}, "
                f"accumulation={self.accumulation!r})")


# ---- parameter-free and elementwise layers ------------------------------------------
# Thin objects over the functions of pool.py, add.py and activation.py, so that an
# integer model is a list of callables on codes. Each keeps the qparams it needs.


class MaxPool2d:
    """Max pooling of NCHW codes (:func:`npquant.qnn.pool.max_pool2d`); qparams unchanged.

    The arguments are checked when the layer is called.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, as in :func:`npquant.qnn.pool.max_pool2d`.
    stride : int, (int, int) or None, default None
        None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        As in :func:`npquant.qnn.pool.max_pool2d`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, backend: str = "numba"):
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def __call__(self, x_q) -> np.ndarray:
        return _pool.max_pool2d(x_q, self.kernel_size, self.stride, self.padding, backend=self.backend)

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AvgPool2d:
    """Average pooling of NCHW codes (:func:`npquant.qnn.pool.avg_pool2d`) with TFLite's
    (half away) or PyTorch's (half even) rounding; qparams unchanged.

    ``mode`` is checked here, the other arguments when the layer is called.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, as in :func:`npquant.qnn.pool.avg_pool2d`.
    stride : int, (int, int) or None, default None
        None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        As in :func:`npquant.qnn.pool.max_pool2d`.
    mode : ``"tflite"`` or ``"torch"``, default ``"tflite"``
        The rounding of ``sum / count``: half away from zero or half to even.
    zero_point : int, default 0
        The code that padding counts as with ``count_include_pad``.
    count_include_pad : bool, default False
        Count padding as ``zero_point`` (PyTorch's option; only with ``mode="torch"``).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, mode: str = "tflite", zero_point: int = 0,
                 count_include_pad: bool = False, backend: str = "numba"):
        check_choice(mode, "mode", _pool.AVG_POOL_MODES)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.mode, self.zero_point, self.count_include_pad, self.backend = mode, zero_point, count_include_pad, backend

    def __call__(self, x_q) -> np.ndarray:
        return _pool.avg_pool2d(x_q, self.kernel_size, self.stride, self.padding, mode=self.mode,
                                zero_point=self.zero_point, count_include_pad=self.count_include_pad,
                                backend=self.backend)

    def __repr__(self) -> str:
        return f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r})"


class QAdd:
    """Sum of two quantized tensors with their own scales (:func:`npquant.qnn.add.add`):
    ``layer(q1, q2)`` gives codes of ``y_qp``, with an optional fused activation.

    The constants are checked once; :func:`~npquant.qnn.add.qadd` is this layer called
    once. Codes are those of ``y_qp``'s spec (int8/uint8 for 8-bit specs), saturated to the
    activation's range.

    Parameters
    ----------
    a_qp, b_qp : QParams
        Per-tensor qparams of the two inputs (zero points in ``y_qp.spec``'s range).
    y_qp : QParams
        Per-tensor qparams of the output; its spec gives the code range.
    mode : str, default ``"tflite"``
        One of :data:`npquant.qnn.add.ADD_MODES`.
    activation : str, (int, int) or None, default None
        ``None`` or ``"none"``, ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"`` or a ``(lo,
        hi)`` pair of codes: the clamp of :func:`npquant.qnn.gemm.qlinear`.
    left_shift : int, default 20
        TFLite's input left shift (``"tflite"`` modes), as in :func:`~npquant.qnn.add.add`.
    vector_width : int, default 64
        Elements per vector step of ``mode="torch"``, as in :func:`~npquant.qnn.add.add`.
    """

    def __init__(self, a_qp: QParams, b_qp: QParams, y_qp: QParams, *, mode: str = "tflite", activation=None,
                 left_shift: int = 20, vector_width: int = 64):
        self.s1, self.z1 = _g._act_qparams(a_qp, "a_qp")
        self.s2, self.z2 = _g._act_qparams(b_qp, "b_qp")
        self.sy, self.zy = _g._act_qparams(y_qp, "y_qp")
        check_choice(mode, "mode", ADD_MODES)
        activation = _act.normalize_activation(activation, allow_range=True)
        self.a_qp, self.b_qp, self.y_qp, self.mode, self.activation = a_qp, b_qp, y_qp, mode, activation
        self.out_range = _g._activation_range(activation, y_qp)
        self.left_shift = check_int(left_shift, "left_shift", lo=0, hi=30)
        self.vector_width = check_int(vector_width, "vector_width", lo=1)

    def __call__(self, a_q, b_q) -> np.ndarray:
        qmin, qmax = self.y_qp.spec.qmin, self.y_qp.spec.qmax
        lo, hi = self.out_range
        return _add_codes(a_q, self.s1, self.z1, b_q, self.s2, self.z2, self.sy, self.zy, qmin=qmin,
                          qmax=qmax, act_min=lo, act_max=hi, mode=self.mode, left_shift=self.left_shift,
                          vector_width=self.vector_width)

    def __repr__(self) -> str:
        return f"QAdd(mode={self.mode!r}, activation={self.activation!r})"


class QReLU:
    """ReLU (``relu``) or ReLU6 (``relu6``) on codes of ``qp``: a clamp, qparams unchanged.

    Parameters
    ----------
    qp : QParams
        Per-tensor qparams of the codes, in and out.
    activation : ``"relu"`` or ``"relu6"``, default ``"relu"``
        The clamp: ``[Z, qmax]`` or ``[Z, code of 6]``, within ``qp.spec``'s range.
    mode : ``"tflite"`` or ``"torch"``, default ``"tflite"``
        How the code of 6 is rounded: ``"tflite"`` as TFLite's clamps
        (:func:`npquant.qnn.activation.activation_range`: ``Z + round_half_away(float32(6 /
        S))``); ``"torch"`` as PyTorch's quantized ``relu6`` / ``hardtanh``
        (``quantize_val``: ``rint(float32(float32(6 * float32(1 / S)) + Z))``, ties to
        even, i.e. :func:`npquant.quantize` with ``method="mul_add"``; measured on torch
        2.13). The lower bound is ``Z`` in both.
    """

    def __init__(self, qp: QParams, activation: str = "relu", *, mode: str = "tflite"):
        _g._act_qparams(qp, "qp")
        check_choice(activation, "activation", ("relu", "relu6"))
        check_choice(mode, "mode", ("tflite", "torch"))
        self.qp, self.activation, self.mode = qp, activation, mode
        if mode == "torch":
            qp_even = QParams(qp.scale, qp.zero_point, qp.spec.replace(rounding="half_even"))
            lo, hi = (int(v) for v in _quantize(np.array([0.0, 6.0], np.float32), qp_even, method="mul_add"))
            self.out_range = (lo, hi if activation == "relu6" else qp.spec.qmax)
        else:
            self.out_range = _g._activation_range(activation, qp)

    def __call__(self, x_q) -> np.ndarray:
        x = _g._codes(x_q, self.qp, "x_q")
        lo, hi = self.out_range
        return np.clip(x, lo, hi).astype(x.dtype)

    def __repr__(self) -> str:
        return f"QReLU({self.activation!r}, mode={self.mode!r})"


class Flatten:
    """NCHW codes to (N, C*H*W) (:func:`npquant.qnn.activation.flatten`); qparams unchanged."""

    def __call__(self, x_q) -> np.ndarray:
        return _act.flatten(x_q)

    def __repr__(self) -> str:
        return "Flatten()"
