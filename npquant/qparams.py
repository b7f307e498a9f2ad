"""Quantization specs, parameters and their computation from a real range.

The affine mapping is ``r = S * (q - Z)`` with a float32 scale ``S > 0`` and an integer
zero point ``Z`` in ``[qmin, qmax]``. Ranges are widened to include 0, so that real zero
is exactly representable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ._checks import brief as _brief
from ._checks import check_bool, check_choice, check_int, check_int_array, check_scales, smallest_int_dtype
from .granularity import granularity_name, param_shape, reduce_groups

ROUNDING_MODES = ("half_even", "half_away", "half_up", "floor", "stochastic")
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class QuantSpec:
    """What a quantized tensor looks like.

    Parameters
    ----------
    bits : int, 1..16
        Bit width of the integer codes. ``bits=1`` needs ``symmetric=False`` (below).
    signed : bool
        Signed codes ``[-2^(b-1), 2^(b-1) - 1]`` or unsigned ``[0, 2^b - 1]``.
    symmetric : bool
        Symmetric: zero point fixed (0 when signed, ``2^(b-1)`` when unsigned) and
        ``S = max(|min|, |max|) / ((qmax - qmin) / 2)``, PyTorch's formula: for int8
        that is ``max|x| / 127.5``. The formula of the "Quantization in Depth" course,
        ``S = r_max / q_max = max|x| / 127`` (also TFLite's for int8 weights), is
        ``symmetric=True, narrow_range=True``: codes ``[-127, 127]``, ``(qmax - qmin) / 2
        = 127``.
        Asymmetric: ``S = (max - min) / (qmax - qmin)``, ``Z = qmin - round(min / S)``.

        ``bits=1, symmetric=True`` is a ``ValueError``: its codes ``[-1, 0]`` (or ``[0, 1]``
        with zero point 1) hold no non-zero value on one side of zero, and the scale
        ``2 max|x|`` puts every ``x / S`` in ``[-1/2, 1/2]``, which rounding to nearest
        sends to the zero point: every weight would become 0. 1-bit asymmetric
        quantization is allowed: its grid is ``{0, S}`` or ``{-S, 0}``; a ternary grid
        ``{-S, 0, S}`` is ``bits=2, symmetric=True, narrow_range=True``.
    narrow_range : bool
        Drop the lowest code: signed ``[-2^(b-1) + 1, 2^(b-1) - 1]``, unsigned
        ``[1, 2^b - 1]`` (as TensorFlow's ``narrow_range``).
    axis, block_size : int or None
        Granularity in ONNX's words (see :mod:`npquant.granularity`).
    rounding : str
        One of ``ROUNDING_MODES``: ``half_even``, ``half_away`` (from zero), ``half_up``
        (toward +inf), ``floor``, ``stochastic`` (needs ``seed``).
    seed : int or None
        Seed of the stochastic rounding noise; required for ``stochastic``.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    narrow_range: bool = False
    axis: int | None = None
    block_size: int | None = None
    rounding: str = "half_even"
    seed: int | None = None

    def __post_init__(self):
        check_int(self.bits, "bits", lo=1, hi=16)
        check_bool(self.signed, "signed")
        check_bool(self.symmetric, "symmetric")
        check_bool(self.narrow_range, "narrow_range")
        if self.axis is not None:
            check_int(self.axis, "axis")
        if self.block_size is not None:
            check_int(self.block_size, "block_size", lo=1)
            if self.axis is None:
                raise ValueError("block_size needs an axis: per-group quantization is axis=k, block_size=B")
        check_choice(self.rounding, "rounding", ROUNDING_MODES)
        if self.seed is not None:
            check_int(self.seed, "seed", lo=0)
        if self.rounding == "stochastic" and self.seed is None:
            raise ValueError("rounding='stochastic' needs seed=<int> so that results are reproducible")
        if self.qmax <= self.qmin:
            raise ValueError(
                f"bits={self.bits} with narrow_range=True leaves a single code; use more bits or narrow_range=False"
            )
        if self.symmetric and self.bits == 1:
            raise ValueError(
                f"bits=1 with symmetric=True cannot hold a non-zero value on both sides of zero: "
                f"codes [{self.qmin}, {self.qmax}] around zero point {self.symmetric_zero_point}, and "
                "the symmetric scale 2 * max|x| puts every x / S in [-1/2, 1/2], which rounding to "
                "nearest sends to the zero point (every weight would become 0); use bits >= 2 (bits=2 with narrow_range=True is the ternary grid "
                "-S, 0, S) or symmetric=False (1-bit asymmetric: the grid {0, S} or {-S, 0})"
            )

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        lo = -(1 << (self.bits - 1)) if self.signed else 0
        return lo + 1 if self.narrow_range else lo

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def dtype(self) -> np.dtype:
        """Smallest NumPy integer dtype that holds ``[qmin, qmax]``."""
        return smallest_int_dtype(self.qmin, self.qmax, signed=self.signed)

    @property
    def granularity(self) -> str:
        """``"per_tensor"``, ``"per_channel"`` or ``"per_group"``."""
        return granularity_name(self.axis, self.block_size)

    @property
    def symmetric_zero_point(self) -> int:
        """The fixed zero point of symmetric quantization: 0 signed, ``2^(b-1)`` unsigned."""
        return 0 if self.signed else 1 << (self.bits - 1)

    def replace(self, **changes) -> QuantSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


class QParams:
    """Scale (float32) and zero point (int32) arrays together with their :class:`QuantSpec`.

    Shapes follow the granularity: ``()`` per-tensor, ``(C,)`` per-channel, and for
    per-group ``x``'s rank with the blocked axis of length ``ceil(n / block_size)``.
    The arrays are read-only.

    Parameters
    ----------
    scale : array_like of float
        Scale(s), stored as float32 with the shape of ``spec``'s granularity (a scalar or
        any size-1 array per-tensor, 1-D per-channel, ``x``'s rank per-group). Each must
        be positive, finite and a normal float32 (``>= 1.18e-38``), else ``ValueError``.
    zero_point : array_like of int
        Zero point(s), stored as int32; floats are accepted if they hold integers. Each
        must lie in ``[spec.qmin, spec.qmax]``, and equal ``spec.symmetric_zero_point`` for
        a symmetric spec. A single value is broadcast to ``scale``'s shape when ``spec``
        has an axis.
    spec : QuantSpec
        The quantization spec these parameters belong to.
    """

    __slots__ = ("scale", "zero_point", "spec")

    def __init__(self, scale: npt.ArrayLike, zero_point: npt.ArrayLike, spec: QuantSpec):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        scale = check_scales(scale, "scale")
        if np.any(scale < np.finfo(np.float32).tiny):
            raise ValueError(
                f"scale must be a normal float32 (>= 1.18e-38, so that 1 / scale is finite), got {_brief(scale)}"
            )
        zp = np.asarray(zero_point)
        if zp.dtype.kind == "f":
            if not np.all(np.isfinite(zp)) or not np.all(zp == np.round(zp)):
                raise ValueError(f"zero_point must hold integers, got {_brief(zp)}")
        else:
            check_int_array(zp, "zero_point")
        if np.any(zp < spec.qmin) or np.any(zp > spec.qmax):
            raise ValueError(f"zero_point must be in [{spec.qmin}, {spec.qmax}] for this spec, got {_brief(zp)}")
        zp = np.array(zp, dtype=np.int32)
        if spec.symmetric and np.any(zp != spec.symmetric_zero_point):
            raise ValueError(f"symmetric spec needs zero_point={spec.symmetric_zero_point}, got {_brief(zp)}")
        if spec.axis is None:
            if scale.size != 1 or zp.size != 1:
                raise ValueError(
                    f"per-tensor qparams need one scale and one zero point, got shapes {scale.shape} and {zp.shape}"
                )
            scale, zp = scale.reshape(()), zp.reshape(())
        else:
            if zp.shape != scale.shape:
                if zp.size == 1:
                    zp = np.full(scale.shape, zp.reshape(()), dtype=np.int32)
                else:
                    raise ValueError(f"zero_point shape {zp.shape} does not match scale shape {scale.shape}")
            if spec.block_size is None and scale.ndim != 1:
                raise ValueError(f"per-channel qparams need 1-D scale and zero_point, got shape {scale.shape}")
            if spec.block_size is not None and scale.ndim == 0:
                raise ValueError("per-group qparams need scale with the rank of x, got a scalar")
        scale.setflags(write=False)
        zp.setflags(write=False)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "spec", spec)

    def __setattr__(self, name, value):
        raise AttributeError("QParams is immutable")

    def __repr__(self) -> str:
        return f"QParams(scale={_brief(self.scale)}, zero_point={_brief(self.zero_point)}, spec={self.spec})"

    def check_fits(self, shape: tuple[int, ...], name: str = "x") -> None:
        """Raise ``ValueError`` unless these qparams apply to a tensor of ``shape``."""
        shape = tuple(int(d) for d in shape)
        if self.spec.axis is not None and len(shape) == 0:
            raise ValueError(f"{name} is a scalar but the qparams are {self.spec.granularity}")
        expected = param_shape(shape, self.spec.axis, self.spec.block_size)
        if self.scale.shape != expected:
            raise ValueError(
                f"qparams of shape {self.scale.shape} do not fit {name} of shape {shape}: "
                f"{self.spec.granularity} with axis={self.spec.axis}, "
                f"block_size={self.spec.block_size} needs shape {expected}"
            )


def compute_qparams(
    min_val: npt.ArrayLike, max_val: npt.ArrayLike, spec: QuantSpec, *, eps: float = FLOAT32_EPS
) -> QParams:
    """Scale and zero point for the real range ``[min_val, max_val]``.

    ``min_val`` and ``max_val`` have the parameter shape of ``spec``'s granularity. The
    arithmetic is float32, as in PyTorch's observers, so that the results match them bit
    for bit: the range is widened to include 0; the scale is floored at ``eps`` (a
    constant-zero tensor gets scale ``eps``); the asymmetric zero point
    ``qmin - round_half_even(min / S)`` is clamped to ``[qmin, qmax]``.

    Symmetric specs use ``S = max(|min|, |max|) / ((qmax - qmin) / 2)``: ``max|x| / 127.5``
    for int8 (PyTorch's observers). The symmetric scale ``max|x| / 127`` of the
    "Quantization in Depth" course and of TFLite is ``narrow_range=True`` (codes
    ``[-127, 127]``); it equals the course's float64 ``r_max / q_max`` rounded to float32.

    Parameters
    ----------
    min_val, max_val : array_like of float
        Lower and upper ends of the real range, finite, of equal shape (the parameter
        shape of ``spec``'s granularity), with ``min_val <= max_val``; converted to
        float32 (``ValueError`` if outside the float32 range).
    spec : QuantSpec
        Bit width, signedness, symmetry, range and granularity of the codes.
    eps : float, default float32 machine epsilon
        Smallest scale, keyword-only; must be positive and finite.

    Returns
    -------
    QParams
        The float32 scale and int32 zero point, of ``min_val``'s shape, with ``spec``.
        ``ValueError`` if the scale overflows float32.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    lo = _range_bound(min_val, "min_val")
    hi = _range_bound(max_val, "max_val")
    if lo.shape != hi.shape:
        raise ValueError(f"min_val shape {lo.shape} differs from max_val shape {hi.shape}")
    if np.any(lo > hi):
        raise ValueError(f"min_val must be <= max_val, got min_val={_brief(lo)} max_val={_brief(hi)}")
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    f32 = np.float32
    zero = f32(0)
    lo = np.minimum(lo, zero)
    hi = np.maximum(hi, zero)
    qmin, qmax = spec.qmin, spec.qmax
    with np.errstate(over="ignore"):
        if spec.symmetric:
            amax = np.maximum(-lo, hi)
            scale = amax / f32((qmax - qmin) / 2)
            scale = np.maximum(scale, f32(eps))
            zp = np.full(scale.shape, spec.symmetric_zero_point, dtype=np.int32)
        else:
            scale = (hi - lo) / f32(qmax - qmin)
            scale = np.maximum(scale, f32(eps))
            zp = qmin - np.rint(lo / scale)
            zp = np.clip(zp, qmin, qmax).astype(np.int32)
    if not np.all(np.isfinite(scale)):
        raise ValueError("the range [min_val, max_val] is too wide: its scale overflows float32")
    return QParams(scale, zp, spec)


def _range_bound(v, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_brief(arr)}")
    with np.errstate(over="ignore"):
        arr32 = np.array(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr32)):
        raise ValueError(f"{name} is outside the float32 range")
    return arr32


def fit_qparams(x: npt.ArrayLike, spec: QuantSpec) -> QParams:
    """Min-max qparams for ``x`` at ``spec``'s granularity (one-shot calibration).

    ``x`` is a finite float array; the min and max of each parameter group are taken
    in float32 and passed to :func:`compute_qparams`.

    For the course's symmetric int8 scale ``max|x| / 127`` pass
    ``QuantSpec(symmetric=True, narrow_range=True)``; the default ``narrow_range=False``
    gives PyTorch's ``max|x| / 127.5`` (see :class:`QuantSpec`).

    Parameters
    ----------
    x : array_like of float
        The tensor to calibrate on, finite; at least 1-D when ``spec`` has an axis.
    spec : QuantSpec
        The spec; its ``axis`` and ``block_size`` choose the parameter groups.

    Returns
    -------
    QParams
        The qparams of :func:`compute_qparams` for the groups' minima and maxima.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([-0.5, 0.25, 1.27], np.float32)
    >>> float(fit_qparams(x, QuantSpec(symmetric=True, narrow_range=True)).scale)  # 1.27 / 127
    0.009999999776482582
    >>> float(fit_qparams(x, QuantSpec(symmetric=True)).scale)  # 1.27 / 127.5
    0.009960784576833248
    """
    from ._checks import as_float_array

    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    x = as_float_array(x, "x")
    if spec.axis is not None and x.ndim == 0:
        raise ValueError(f"x is a scalar but spec is {spec.granularity} (axis={spec.axis})")
    lo = reduce_groups(x, np.minimum, spec.axis, spec.block_size)
    hi = reduce_groups(x, np.maximum, spec.axis, spec.block_size)
    return compute_qparams(lo, hi, spec)
