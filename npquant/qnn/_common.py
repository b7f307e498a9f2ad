"""What the integer layers share (package-internal): argument checks, the requantization
epilogue and the base of the layer objects.

:mod:`npquant.qnn.linear` and :mod:`npquant.qnn.conv` set a layer up once, in their layer
class (:class:`QLayer` below holds the output half: mode, multiplier, output range, fused
activation), and their functions build that class. Every error message of the layers is
written here once.

The requantization of a layer is a named ``mode``: one of
:data:`npquant.requant.modes.REQUANT_MODES`, or :data:`FBGEMM`, PyTorch fbgemm's
float32 requantization with its float bias added in float32 (:mod:`npquant.qnn.fbgemm`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array, normalize_axis
from ..qparams import QParams, QuantSpec
from ..requant.fixedpoint import INT32_MAX, INT32_MIN
from ..requant.modes import FBGEMM, LAYER_REQUANT_MODES, effective_multiplier, requantize
from .activation import activation_range, normalize_activation
from .fbgemm import fbgemm_requantize

if TYPE_CHECKING:
    from .conv import ConvGeometry

#: PyTorch fbgemm's requantization as a layer mode: ``mode="fp32"``'s multiplier
#: (``float32(float32(S_x S_w) / S_y)``), with the layer's bias a float array that fbgemm adds
#: to ``float32(acc)`` in float32 (an FMA for per-tensor weights), and fbgemm's conversion
#: (an out-of-int32 product gives code 0, or ``Z_y`` with ReLU). quint8 output only; fused
#: activation none or ReLU.

# ---- error messages (written once) -------------------------------------------------------

BOTH_BIASES = "give either bias_q (int32) or float_bias (fbgemm's float bias), not both"
FLOAT_BIAS_DEPRECATED = (
    "float_bias= is deprecated and will be removed in the next release: pass "
    "mode='fbgemm' and the float bias as the bias argument (bias_q)"
)
NO_OUTPUT = (
    "this layer was built with y_qp=None: it only accumulates (call layer.accumulate(x_q)); give y_qp to requantize"
)


def linear_shape_error(x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> ValueError:
    return ValueError(f"x_q must have shape (..., {w_shape[1]}) to match w_q {tuple(w_shape)}, got {x_shape}")


def conv_channels_error(c: int, w_shape: tuple[int, ...], groups: int) -> ValueError:
    return ValueError(f"x_q has {c} channels but w_q {tuple(w_shape)} with groups={groups} needs {w_shape[1] * groups}")


def conv_groups_error(o: int, groups: int) -> ValueError:
    return ValueError(f"w_q has {o} output channels, not divisible by groups={groups}")


def conv_fit_error(kernel: tuple[int, int], geo: ConvGeometry, h: int, w: int) -> ValueError:
    return ValueError(
        f"the kernel {kernel[0]}x{kernel[1]} (dilation {geo.dilation}) does not fit the padded "
        f"input {h}x{w} with padding {geo.padding}"
    )


# ---- argument checks ----------------------------------------------------------------------


def check_qparams_type(qp: object, name: str) -> QParams:
    if not isinstance(qp, QParams):
        raise TypeError(f"{name} must be a QParams, got {type(qp).__name__}")
    return qp


def act_qparams(qp: object, name: str) -> tuple[np.float32, int]:
    """Per-tensor activation qparams: (scale, zero point)."""
    check_qparams_type(qp, name)
    if qp.spec.axis is not None:
        raise ValueError(f"{name} must be per-tensor (axis=None), got {qp.spec.granularity} axis={qp.spec.axis}")
    return np.float32(qp.scale), int(qp.zero_point)


def codes(q: npt.ArrayLike, qp: QParams, name: str, ndim: int | None = None) -> np.ndarray:
    """Integer codes inside ``qp.spec``'s range, returned as ``qp.spec.dtype``."""
    a = check_int_array(q, name, what="an integer array of codes")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    lo, hi = qp.spec.qmin, qp.spec.qmax
    info = np.iinfo(a.dtype)
    if (info.min < lo or info.max > hi) and (a.min() < lo or a.max() > hi):  # no scan if the dtype fits
        raise ValueError(f"{name} must hold codes in [{lo}, {hi}] of its spec, got values in [{a.min()}, {a.max()}]")
    return a.astype(qp.spec.dtype, copy=False)


def zero_point_qparams(
    qp: QParams | npt.ArrayLike, codes_: npt.ArrayLike, name: str, per_channel_len: int | None = None
) -> QParams:
    """``qp`` itself if a QParams, else a plain zero point made into one: an int
    (per-tensor), or for weights (``per_channel_len`` given) a 1-D integer array of that
    length (per-channel along axis 0). The code range is that of ``codes_``' dtype (8- or
    16-bit integers); the scale, never used by the accumulators, is 1."""
    if isinstance(qp, QParams):
        return qp
    z = np.asarray(qp)
    if isinstance(qp, (bool, np.bool_)) or z.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be a QParams or an integer zero point"
            + (" (an int, or a 1-D array of one per output channel)" if per_channel_len else "")
            + f", got {type(qp).__name__}"
            + (f" of dtype {z.dtype}" if z.dtype != object else "")
        )
    a = np.asarray(codes_)
    code = "w_q" if per_channel_len is not None else "x_q"
    if a.dtype.kind not in "iu" or a.dtype.itemsize > 2:
        raise TypeError(
            f"{name} is a plain zero point, so the code range comes from {code}'s dtype, which "
            f"must be an 8- or 16-bit integer type; got {a.dtype} (cast the codes or pass a QParams)"
        )
    spec = QuantSpec(bits=8 * a.dtype.itemsize, signed=a.dtype.kind == "i")
    if z.ndim == 1 and per_channel_len is not None:
        if z.shape != (per_channel_len,):
            raise ValueError(
                f"{name} must hold one zero point per output channel of {code} ({per_channel_len}), got {z.shape[0]}"
            )
        spec = spec.replace(axis=0)
    elif z.ndim != 0:
        raise ValueError(
            f"{name} must be one zero point"
            + (" or a 1-D array of one per output channel" if per_channel_len is not None else "")
            + f", got shape {z.shape}"
        )
    if z.size and (z.min() < spec.qmin or z.max() > spec.qmax):
        raise ValueError(
            f"{name} must lie in [{spec.qmin}, {spec.qmax}], the code range of {code}'s dtype "
            f"{a.dtype}, got values in [{z.min()}, {z.max()}]"
        )
    return QParams(np.ones(z.shape, np.float32), z.astype(np.int64), spec)


def accumulate_qparams(
    x_q: npt.ArrayLike, x_qp: QParams | int, w_q: npt.ArrayLike, w_qp: QParams | npt.ArrayLike
) -> tuple[QParams, QParams]:
    """The accumulate functions' ``x_qp`` and ``w_qp``: QParams, or plain zero points."""
    w = np.asarray(w_q)
    n_out = w.shape[0] if w.ndim >= 1 else 0
    return (zero_point_qparams(x_qp, x_q, "x_qp"), zero_point_qparams(w_qp, w, "w_qp", per_channel_len=n_out))


def weight_qparams(w_qp: QParams, w_shape: tuple[int, ...], name: str = "w_qp") -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-tensor or per-channel (axis 0) weight qparams as (scale (O,), Z_w (O,), per_channel)."""
    check_qparams_type(w_qp, name)
    spec = w_qp.spec
    n_out = w_shape[0]
    if spec.axis is None:
        return (np.full(n_out, w_qp.scale, np.float32), np.full(n_out, w_qp.zero_point, np.int32), False)
    if spec.block_size is not None or normalize_axis(spec.axis, len(w_shape), f"{name}.spec.axis") != 0:
        raise ValueError(
            f"{name} must be per-tensor or per-channel along axis 0 (output channels), got "
            f"{spec.granularity} axis={spec.axis} block_size={spec.block_size}"
        )
    if w_qp.scale.shape != (n_out,):
        raise ValueError(f"{name} has {w_qp.scale.size} channels but the weights have {n_out} outputs")
    return w_qp.scale.astype(np.float32), w_qp.zero_point.astype(np.int32), True


def int32_bias(bias_q: npt.ArrayLike | None, n_out: int, name: str = "bias_q") -> np.ndarray:
    """The int32 bias (zeros for None), one per output channel."""
    if bias_q is None:
        return np.zeros(n_out, np.int32)
    b = np.asarray(bias_q)
    if b.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an int32 array, got dtype {b.dtype} (a float bias is PyTorch fbgemm's: mode={FBGEMM!r})"
        )
    if b.shape != (n_out,):
        raise ValueError(f"{name} must have shape ({n_out},), one per output channel, got {b.shape}")
    if b.min() < INT32_MIN or b.max() > INT32_MAX:
        raise ValueError(f"{name} must lie in the int32 range, got [{b.min()}, {b.max()}]")
    return b.astype(np.int32)


def float_bias(bias: npt.ArrayLike | None, n_out: int, name: str = "bias_q") -> np.ndarray:
    """fbgemm's float bias as float32 (n_out,) (zeros for None: the same codes as no bias,
    as ``x + 0`` and ``fma(0, r, x)`` are ``x``)."""
    if bias is None:
        return np.zeros(n_out, np.float32)
    b = np.asarray(bias)
    if b.dtype.kind != "f":
        raise TypeError(f"with mode={FBGEMM!r}, {name} is PyTorch's float bias: a float array, got dtype {b.dtype}")
    if b.shape != (n_out,) or not np.all(np.isfinite(b)):
        raise ValueError(
            f"with mode={FBGEMM!r}, {name} must be {n_out} finite values (one per output channel), got shape {b.shape}"
        )
    return b.astype(np.float32)


def layer_biases(mode: str, bias_q: npt.ArrayLike | None, n_out: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A layer's (int32 bias, float bias): ``(int32_bias(bias_q), None)``, or with
    ``mode="fbgemm"`` (zeros, fbgemm's float bias)."""
    if mode == FBGEMM:
        return np.zeros(n_out, np.int32), float_bias(bias_q, n_out)
    return int32_bias(bias_q, n_out), None


def layer_mode(
    mode: str, bias_q: npt.ArrayLike | None, float_bias_: npt.ArrayLike | None, *, stacklevel: int
) -> tuple[str, npt.ArrayLike | None]:
    """``(mode, bias)`` with the deprecated ``float_bias=`` spelling (``mode="fp32"``)
    turned into ``mode="fbgemm"`` and the bias, with a DeprecationWarning; ``mode`` checked."""
    if float_bias_ is not None:
        warnings.warn(FLOAT_BIAS_DEPRECATED, DeprecationWarning, stacklevel=stacklevel + 1)
        if mode != "fp32":
            raise ValueError(
                f"float_bias is PyTorch fbgemm's float bias and needs mode='fp32', got mode={mode!r} "
                f"(or use mode={FBGEMM!r} with the float bias as bias_q)"
            )
        if bias_q is not None:
            raise ValueError(BOTH_BIASES)
        return FBGEMM, float_bias_
    return check_choice(mode, "mode", LAYER_REQUANT_MODES), bias_q


def fbgemm_mode(
    mode: str, bias_q: npt.ArrayLike | None, fbias: npt.ArrayLike | None
) -> tuple[str, npt.ArrayLike | None]:
    """``(mode, bias)`` of a layer stored with an int32 ``bias_q`` or a float ``fbias``
    (models.graph files): a float bias is fbgemm's, ``mode="fbgemm"``, which files written
    before that mode spell ``"fp32"``."""
    if fbias is None:
        return mode, bias_q
    if bias_q is not None:
        raise ValueError(BOTH_BIASES)
    if mode not in ("fp32", FBGEMM):
        raise ValueError(
            f"a float bias is PyTorch fbgemm's and needs mode={FBGEMM!r} (or 'fp32', its spelling "
            f"before that mode), got mode={mode!r}"
        )
    return FBGEMM, fbias


def output_range(activation: str | tuple[int, int] | None, y_qp: QParams) -> tuple[int, int]:
    """Output code range of a fused activation, as TFLite's CalculateActivationRangeQuantized.

    ``None`` or ``"none"``: the spec's range; ``"relu"``: ``[max(qmin, Z_y), qmax]``;
    ``"relu6"``: also ``hi = min(qmax, Z_y + round(6 / S_y))``; ``"relu_n1_to_1"``:
    ``[Z_y + round(-1 / S_y), Z_y + round(1 / S_y)]`` within the spec; ``round`` is half
    away from zero of the float32 quotient. A pair ``(lo, hi)`` of codes is taken as is.
    Spellings are normalized by :func:`npquant.qnn.activation.normalize_activation`.
    """
    qmin, qmax = y_qp.spec.qmin, y_qp.spec.qmax
    activation = normalize_activation(activation, allow_range=True)
    if activation is None:
        return qmin, qmax
    if isinstance(activation, tuple):
        lo = check_int(activation[0], "activation[0]", lo=qmin, hi=qmax)
        hi = check_int(activation[1], "activation[1]", lo=lo, hi=qmax)
        return lo, hi
    return activation_range(activation, np.float32(y_qp.scale), int(y_qp.zero_point), qmin, qmax)


def wrap32(v: npt.ArrayLike) -> np.ndarray:
    """int64 values wrapped to the int32 range (two's complement), as int64."""
    return ((np.asarray(v, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def frozen(a: npt.ArrayLike, copy: bool = True) -> np.ndarray:
    """A read-only private C-contiguous copy: the prepared constants must not go stale.
    ``copy=False``: ``a`` is already a new array the caller owns (made read-only in place,
    copied only if not C-contiguous)."""
    a = np.array(a, copy=True, order="C") if copy else np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


# ---- the requantization epilogue ----------------------------------------------------------


def requantize_acc(
    acc: np.ndarray,
    multiplier: float | np.ndarray,
    per_channel: bool,
    y_qp: QParams,
    out_range: tuple[int, int],
    mode: str,
    axis: int | None,
) -> np.ndarray:
    """Codes of ``y_qp`` from int32 accumulators, by a mode of :mod:`npquant.requant.fixedpoint`."""
    lo, hi = out_range
    zy = int(y_qp.zero_point)
    ax = axis if per_channel else None
    if lo <= zy <= hi:
        out = requantize(acc, multiplier, zy, lo, hi, mode=mode, axis=ax)
    else:
        # requantize wants Z_y inside [lo, hi]; clamping to the int32 range and then to
        # [lo, hi] is the same clamp
        out = np.clip(requantize(acc, multiplier, zy, INT32_MIN, INT32_MAX, mode=mode, axis=ax), lo, hi)
    return out.astype(y_qp.spec.dtype)


class QLayer:
    """The output half of :class:`~npquant.qnn.linear.QLinear` and
    :class:`~npquant.qnn.conv.QConv2d`: mode, multiplier, output range and the epilogue.

    A subclass sets ``_gemm`` (the prepared product of :mod:`npquant.qnn.gemm`) and
    ``backend``, then calls :meth:`_setup_output`.
    """

    def _setup_output(
        self,
        x_qp: QParams,
        w_scale: np.ndarray,
        per_channel: bool,
        y_qp: QParams | None,
        mode: str,
        activation: str | tuple[int, int] | None,
        fb: np.ndarray | None,
    ) -> None:
        self.float_bias = None if fb is None else frozen(fb)
        act_qparams(x_qp, "x_qp")
        activation = normalize_activation(activation, allow_range=True)
        self.x_qp, self.y_qp, self.mode, self.activation = x_qp, y_qp, mode, activation
        self._per_channel = per_channel
        self._w_scale = w_scale
        if y_qp is None:
            self.out_range = self.multiplier = None
            return
        sy, _ = act_qparams(y_qp, "y_qp")
        self.out_range = output_range(activation, y_qp)
        if mode == FBGEMM:
            if y_qp.spec.qmin != 0 or y_qp.spec.qmax != 255:
                raise ValueError(
                    f"mode={FBGEMM!r} reproduces PyTorch's fbgemm, whose output is quint8: y_qp must be unsigned 8-bit"
                )
            if activation not in (None, "relu"):
                raise ValueError(
                    f"with mode={FBGEMM!r}, activation must be None, 'none' or 'relu' (fbgemm's "
                    f"fused forms), got {activation!r}"
                )
        sw = w_scale if per_channel else w_scale[0]
        self.multiplier = effective_multiplier(np.float32(x_qp.scale), sw, sy, "fp32" if mode == FBGEMM else mode)

    @property
    def saturates_pairs(self) -> bool:
        """The accumulation resolved to int16 pair saturation (:mod:`npquant.qnn.accumulation`)."""
        return self._gemm.pairs

    def _check_x(self, x_q, ndim: int | None = None) -> np.ndarray:
        return codes(x_q, self.x_qp, "x_q", ndim=ndim)

    def _requantize(self, acc: np.ndarray, axis: int) -> np.ndarray:
        """Codes of ``y_qp`` from the accumulators ``acc`` (output channels along ``axis``)."""
        if self.y_qp is None:
            raise ValueError(NO_OUTPUT)
        if self.mode == FBGEMM:
            sw = self._w_scale if self._per_channel else self._w_scale[0]
            out = fbgemm_requantize(
                acc,
                np.float32(self.x_qp.scale),
                sw,
                np.float32(self.y_qp.scale),
                int(self.y_qp.zero_point),
                bias=self.float_bias,
                relu=self.activation == "relu",
                axis=axis,
                backend=self.backend,
            )
            return out.astype(self.y_qp.spec.dtype)
        return requantize_acc(acc, self.multiplier, self._per_channel, self.y_qp, self.out_range, self.mode, axis)
