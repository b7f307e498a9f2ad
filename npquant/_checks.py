"""Argument checks shared by the public functions (private).

Every check raises ``TypeError`` or ``ValueError`` whose message names the argument
and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .qparams import QParams

#: The implementations of every kernel-backed function: ``"numba"`` (the compiled kernel)
#: and ``"numpy"`` (its readable twin); the tests assert both give the same bits.
BACKENDS = ("numba", "numpy")


def check_int(value, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as a Python int, or raise naming ``name`` and the allowed range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}], got {value}")
    return value


def check_real(
    value,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
) -> float:
    """Return the real number ``value`` as a Python float, or raise naming ``name``.

    Parameters
    ----------
    value
        A real number: a Python or NumPy int or float (not a bool, not an array).
    name : str
        The argument's name, used in the messages.
    lo, hi : float, optional
        The allowed range; ``None`` leaves that side unbounded.
    lo_open, hi_open : bool
        Exclude ``lo`` (``hi``) itself: ``lo=0, lo_open=True`` means positive.
    finite : bool
        Reject NaN and infinity (a NaN never passes a bound either).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        ``value`` is outside the range or not finite; the message says what is allowed,
        e.g. ``lr must be positive and finite, got 0`` or ``dampening must be in [0, 1],
        got 1.5``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = (
        (math.isfinite(v) or not finite)
        and (lo is None or (v > lo if lo_open else v >= lo))
        and (hi is None or (v < hi if hi_open else v <= hi))
    )
    if not ok:
        if lo is not None and hi is not None:
            allowed = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            allowed = "positive" if lo == 0 and lo_open else f"{'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            allowed = f"{'<' if hi_open else '<='} {hi:g}"
        else:
            allowed = ""
        if finite and (lo is None or hi is None):
            allowed = f"{allowed} and finite" if allowed else "finite"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return v


def check_pair(value, name: str, *, lo: int = 0) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of ints, each ``>= lo``, as a pair."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
        return check_int(value[0], name, lo=lo), check_int(value[1], name, lo=lo)
    value = check_int(value, name, lo=lo)
    return value, value


def check_scale(value, name: str = "scale") -> np.float32:
    """A real scalar (or 0-d array) that is positive and finite as float32."""
    a = np.asarray(value)
    if isinstance(value, (bool, np.bool_)) or a.dtype.kind not in "fiu" or a.ndim != 0:
        raise TypeError(f"{name} must be a real scalar, got {type(value).__name__} {value!r}")
    with np.errstate(over="ignore"):
        s = np.float32(a)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{name} must be positive and finite as float32, got {value!r}")
    return s


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    """Map a possibly negative ``axis`` into ``[0, ndim)``."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for an array with {ndim} dimension(s); allowed: {-ndim}..{ndim - 1}"
        )
    return axis % ndim


def as_float_array(x, name: str = "x", *, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a finite float32 array; integer, bool and complex input are TypeErrors."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array (float16, float32 or float64), got dtype {arr.dtype}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity; only finite values can be quantized")
    if arr.dtype != np.float32:
        with np.errstate(over="ignore"):
            arr32 = arr.astype(np.float32)
        if not np.all(np.isfinite(arr32)):
            raise ValueError(f"{name} has values outside the float32 range (|x| > 3.4e38)")
        return arr32
    return arr


# ml_dtypes' sub-byte integers (ONNX's int4/uint4/int2/uint2, one value per byte in NumPy):
# taken as the 8-bit integers that hold them, without importing ml_dtypes.
_SUB_BYTE_INTS = {"int2": np.int8, "int4": np.int8, "uint2": np.uint8, "uint4": np.uint8}


def as_int_array(q: npt.ArrayLike, name: str = "q") -> np.ndarray:
    """``q`` as a non-empty integer array (ml_dtypes' int4/uint4/int2/uint2 as int8/uint8)."""
    arr = np.asarray(q)
    if arr.dtype.kind == "V" and arr.dtype.name in _SUB_BYTE_INTS and arr.dtype.itemsize == 1:
        arr = arr.astype(_SUB_BYTE_INTS[arr.dtype.name])
    arr = check_int_array(arr, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    return arr


def check_int_array(x: npt.ArrayLike, name: str, *, what: str = "an integer array") -> np.ndarray:
    """``np.asarray(x)`` if its dtype is a NumPy integer (any width, signed or not).

    Otherwise ``TypeError: <name> must be <what>, got dtype <dtype>``; a bool array is told
    how to convert. An empty array passes (callers that need values check the size).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        hint = "; convert with .astype(np.uint8)" if arr.dtype.kind == "b" else ""
        raise TypeError(f"{name} must be {what}, got dtype {arr.dtype}{hint}")
    return arr


def brief(a: npt.ArrayLike) -> str:
    """A short text of an array for error messages: its values, or shape, min and max."""
    a = np.asarray(a)
    if a.size <= 6:
        return np.array2string(a, separator=", ")
    return f"array(shape={a.shape}, min={a.min()}, max={a.max()})"


def check_scales(value: npt.ArrayLike, name: str = "scale", *, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``value`` as a non-empty float32 array of positive, finite scales.

    ``shape`` (optional) is the shape required; a single value is broadcast to it.
    ``TypeError`` if ``value`` is not real numbers; ``ValueError`` if empty, of another
    shape, or not positive and finite once rounded to float32 (the message says
    ``<name> must be positive and finite (as float32), got ...``).
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        arr = np.array(arr, dtype=np.float32)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if shape is not None and arr.shape != tuple(shape):
        if arr.size != 1:
            raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
        arr = np.full(shape, arr.reshape(()), np.float32)
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be positive and finite (as float32), got {brief(arr)}")
    return arr


def check_qparams(value: object, name: str = "qparams", *, per_tensor: bool = False) -> QParams:
    """``value`` if it is a :class:`~npquant.qparams.QParams` (per tensor if ``per_tensor``).

    ``TypeError`` naming ``name`` otherwise; ``ValueError`` for per-channel or per-group
    qparams where one scale is required.
    """
    from .qparams import QParams  # qparams imports this module

    if not isinstance(value, QParams):
        raise TypeError(f"{name} must be a QParams, got {type(value).__name__}")
    if per_tensor and value.spec.axis is not None:
        raise ValueError(f"{name} must be per-tensor qparams (spec.axis=None), got {value.spec.granularity}")
    return value


#: NumPy's integer dtypes by width, the signed one first at each width.
_INT_DTYPES = tuple(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
)


def smallest_int_dtype(lo: int, hi: int, *, signed: bool | None = None, max_bits: int = 64) -> np.dtype:
    """The smallest NumPy integer dtype holding every integer of ``[lo, hi]``.

    ``signed=True`` (``False``) considers only int (uint) dtypes; ``None`` both, the signed
    one first at each width (``[0, 127]`` is int8, ``[0, 255]`` uint8). ``ValueError`` if
    no dtype of at most ``max_bits`` bits holds the range.
    """
    lo, hi = int(lo), int(hi)
    for dt in _INT_DTYPES:
        if dt.itemsize * 8 > max_bits:
            break
        if signed is not None and (dt.kind == "i") != signed:
            continue
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise ValueError(f"[{lo}, {hi}] does not fit an integer dtype of at most {max_bits} bits")
