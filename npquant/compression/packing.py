"""Bit packing: unsigned values of 1 to 8 bits <-> bytes, for stored sub-byte weights.

Layout
------
``n`` values of ``bits`` bits form a stream of ``n * bits`` bits; value ``i`` occupies
stream bits ``[i * bits, (i + 1) * bits)``, so values straddle bytes when ``bits`` does not
divide 8 (3, 5, 6, 7 bits). The stream is stored in ``ceil(n * bits / 8)`` bytes; the unused
high stream bits of the last byte (padding) are zero. Two orders (:data:`PACK_ORDERS`):

``"lsb"`` (default, as ONNX INT4/UINT4 and ``numpy.packbits(bitorder="little")``)
    stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``, and a value's bit 0 is its lowest
    stream bit. The first 2-bit value sits in bits 0-1 of byte 0:
    ``[1, 2, 3, 0]`` at 2 bits -> ``0b00_11_10_01 = 0x39``.
``"msb"`` (the big-endian mirror, as ``numpy.packbits(bitorder="big")``)
    stream bit ``j`` is bit ``7 - j % 8`` of byte ``j // 8``, and a value's most
    significant bit comes first. ``[1, 2, 3, 0]`` at 2 bits -> ``0b01_10_11_00 = 0x6C``.

Nothing is masked: a value that does not fit ``bits`` is an error, and so are a short
stream, trailing bytes and non-zero padding bits when unpacking. The element count is kept
by the caller (``count``) or by :class:`PackedArray`, so padding never comes back as values.

Signed values
-------------
Packing stores unsigned patterns only. Signed integers are mapped explicitly first:
:func:`to_unsigned` with ``signed="twos"`` keeps the low ``bits`` bits of the two's
complement (``[-2^(b-1), 2^(b-1) - 1]`` -> ``[0, 2^b - 1]``, e.g. -1 -> ``2^b - 1``; this is
ONNX INT4's layout), with ``signed="offset"`` adds ``offset`` (default ``2^(b-1)``, so
``-2^(b-1)`` -> 0); :func:`from_unsigned` inverts either.

Each packing function runs a numba kernel (``backend="numba"``, the default) or its NumPy
twin in this module (``backend="numpy"``); both give identical bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import BACKENDS, check_bool, check_choice, check_int, check_int_array, smallest_int_dtype
from .._kernels import packing as _k

PACK_ORDERS = ("lsb", "msb")
SIGNED_MODES = ("twos", "offset")

__all__ = [
    "PACK_ORDERS",
    "SIGNED_MODES",
    "PackedArray",
    "from_unsigned",
    "pack",
    "pack_bits",
    "packed_nbytes",
    "to_unsigned",
    "unpack",
    "unpack_bits",
]


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that hold ``count`` values of ``bits`` bits: ``ceil(count * bits / 8)``.

    Parameters
    ----------
    count : int
        Number of values, >= 0.
    bits : int
        Bits per value, 1..8.

    Returns
    -------
    int
        ``ceil(count * bits / 8)``.
    """
    count = check_int(count, "count", lo=0)
    bits = check_int(bits, "bits", lo=1, hi=8)
    return (count * bits + 7) // 8


# ---- argument checks ---------------------------------------------------------------------


def _as_int_values(values, name: str) -> np.ndarray:
    return check_int_array(values, name)


def _where(arr: np.ndarray, flat: int) -> str:
    if arr.ndim <= 1:
        return f"[{flat}]"
    idx = tuple(int(i) for i in np.unravel_index(flat, arr.shape))
    return f"[{', '.join(map(str, idx))}] (flat index {flat})"


def _check_range(arr: np.ndarray, lo: int, hi: int, name: str, what: str, negative_hint: str = "") -> None:
    """Raise naming the first element of ``arr`` (C order) outside ``[lo, hi]``;
    ``negative_hint`` ends the message when that element is negative."""
    if arr.size == 0:
        return
    bad = (arr < lo) | (arr > hi)  # exact for any integer dtype and Python-int bounds
    if bad.any():
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        value = int(arr.reshape(-1)[flat])
        raise ValueError(
            f"{name}{_where(arr, flat)} = {value} does not fit {what}: allowed {lo}..{hi}; "
            "values are never masked" + (negative_hint if value < 0 else "")
        )


_SIGNED_HINT = (
    "; signed codes (such as quantize's with a signed QuantSpec) are mapped to unsigned "
    "patterns first with npquant.to_unsigned(values, bits) (two's complement, ONNX INT4's "
    "layout) and back after unpacking with npquant.from_unsigned(u, bits)"
)


def _as_data(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise TypeError(f"data must be a uint8 array or bytes, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"data must be 1-D, got shape {arr.shape}")
    return arr


def _check_stream(data: np.ndarray, bits: int, count: int, order: str, strict: bool) -> int:
    """Length and padding checks of a packed stream; returns the bytes it uses."""
    need = (count * bits + 7) // 8
    if data.shape[0] < need:
        raise ValueError(f"data is truncated: {count} values of {bits} bits need {need} bytes, got {data.shape[0]}")
    if strict and data.shape[0] > need:
        raise ValueError(
            f"data has {data.shape[0] - need} trailing byte(s): {count} values of {bits} bits "
            f"take exactly {need} bytes (pass strict=False to ignore trailing bytes)"
        )
    pad = need * 8 - count * bits  # 0..7 unused stream bits in the last byte
    if pad:
        last = int(data[need - 1])
        # lsb: padding is the high `pad` bits of the last byte; msb: the low `pad` bits
        pad_bits = last >> (8 - pad) if order == "lsb" else last & ((1 << pad) - 1)
        if pad_bits:
            raise ValueError(
                f"data is corrupt: non-zero padding in byte {need - 1} (0x{last:02x}): the last "
                f"{pad} stream bit(s) after {count} values of {bits} bits must be zero "
                f"(order={order!r})"
            )
    return need


# ---- pack / unpack -------------------------------------------------------------------------


def pack_bits(values: npt.ArrayLike, bits: int, *, order: str = "lsb", backend: str = "numba") -> np.ndarray:
    """Pack unsigned integers of ``bits`` bits (1..8) into bytes.

    Parameters
    ----------
    values : integer array, any shape (flattened in C order), any integer dtype
        Every value must lie in ``[0, 2^bits - 1]``; otherwise ``ValueError`` naming the
        first offending value and its index (for a negative value, the message says to map
        signed codes with :func:`to_unsigned`, exported as ``npquant.to_unsigned``).
    bits : int in 1..8
    order : ``"lsb"`` (default) or ``"msb"``; see the module docstring
    backend : ``"numba"`` or ``"numpy"``

    Returns
    -------
    uint8 array of shape ``(ceil(n * bits / 8),)``, ``n = values.size``; padding bits zero.
    """
    bits = check_int(bits, "bits", lo=1, hi=8)
    check_choice(order, "order", PACK_ORDERS)
    check_choice(backend, "backend", BACKENDS)
    arr = _as_int_values(values, "values")
    _check_range(arr, 0, (1 << bits) - 1, "values", f"in {bits} unsigned bit(s)", _SIGNED_HINT)
    v = np.ascontiguousarray(arr.reshape(-1), dtype=np.uint8)  # lossless after the check
    if backend == "numpy":
        return _pack_numpy(v, bits, order == "msb")
    out = np.empty((v.shape[0] * bits + 7) // 8, dtype=np.uint8)
    _k.pack(v, bits, order == "msb", out)
    return out


def unpack_bits(
    data: bytes | bytearray | memoryview | np.ndarray,
    bits: int,
    count: int,
    *,
    order: str = "lsb",
    strict: bool = True,
    backend: str = "numba",
) -> np.ndarray:
    """Unpack ``count`` unsigned values of ``bits`` bits (1..8) from bytes.

    Parameters
    ----------
    data : 1-D uint8 array, or ``bytes``/``bytearray``/``memoryview``
        At least ``ceil(count * bits / 8)`` bytes (else ``ValueError``: truncated); with
        ``strict=True`` (default) exactly that many (else ``ValueError``: trailing bytes),
        with ``strict=False`` later bytes are ignored. The padding bits of the last byte
        must be zero (else ``ValueError``: corrupt).
    bits : int in 1..8
    count : int >= 0, the number of values (padding is never returned)
    order : ``"lsb"`` (default) or ``"msb"``; must be the order the data was packed with
    strict : bool, default True
        Whether bytes after the last needed one are an error (see ``data``).
    backend : ``"numba"`` or ``"numpy"``

    Returns
    -------
    uint8 array of shape ``(count,)``, values in ``[0, 2^bits - 1]``.
    """
    bits = check_int(bits, "bits", lo=1, hi=8)
    count = check_int(count, "count", lo=0)
    check_choice(order, "order", PACK_ORDERS)
    strict = check_bool(strict, "strict")
    check_choice(backend, "backend", BACKENDS)
    arr = _as_data(data)
    need = _check_stream(arr, bits, count, order, strict)
    d = np.ascontiguousarray(arr[:need])
    if backend == "numpy":
        return _unpack_numpy(d, bits, count, order == "msb")
    out = np.empty(count, dtype=np.uint8)
    _k.unpack(d, bits, count, order == "msb", out)
    return out


def _stream_shifts(bits: int, msb: bool) -> np.ndarray:
    """Bit of a value that goes to each of its ``bits`` stream positions, in stream order."""
    return (np.arange(bits - 1, -1, -1) if msb else np.arange(bits)).astype(np.uint8)


def _pack_numpy(v: np.ndarray, bits: int, msb: bool) -> np.ndarray:
    """NumPy twin of ``_kernels.packing.pack``: expand to a bit stream, then ``packbits``."""
    stream = (v[:, None] >> _stream_shifts(bits, msb)) & np.uint8(1)  # (n, bits)
    return np.packbits(stream.reshape(-1), bitorder="big" if msb else "little")


def _unpack_numpy(data: np.ndarray, bits: int, count: int, msb: bool) -> np.ndarray:
    """NumPy twin of ``_kernels.packing.unpack``: ``unpackbits``, then reassemble values."""
    stream = np.unpackbits(data, count=count * bits, bitorder="big" if msb else "little")
    parts = stream.reshape(count, bits) << _stream_shifts(bits, msb)  # disjoint bits
    return np.bitwise_or.reduce(parts, axis=1).astype(np.uint8)


# ---- signed values -------------------------------------------------------------------------


def _signed_range(bits: int, signed: str, offset) -> tuple[int, int, int]:
    """``(lo, hi, offset)``: signed values ``lo..hi`` map to patterns ``0..2^bits - 1``."""
    if signed == "twos":
        if offset is not None:
            raise ValueError(f"offset is only used with signed='offset', got signed='twos' and offset={offset!r}")
        half = 1 << (bits - 1)
        return -half, half - 1, 0
    off = (1 << (bits - 1)) if offset is None else check_int(offset, "offset", lo=-(2**31), hi=2**31)
    return -off, (1 << bits) - 1 - off, off


def to_unsigned(values: npt.ArrayLike, bits: int, *, signed: str = "twos", offset: int | None = None) -> np.ndarray:
    """Map signed integers to ``bits``-bit unsigned patterns (uint8, ``values``' shape).

    ``signed="twos"``: ``[-2^(b-1), 2^(b-1) - 1]`` -> the low ``b`` bits of the two's
    complement (``v mod 2^b``). ``signed="offset"``: ``v + offset`` (``offset`` default
    ``2^(b-1)``, any integer with ``|offset| <= 2^31``), so ``values`` must lie in
    ``[-offset, 2^b - 1 - offset]``. A value outside the range is a ``ValueError`` naming
    it and its index, never wrapped.

    Parameters
    ----------
    values : integer array
        The signed values, any shape.
    bits : int
        Bit width of the patterns, 1..8.
    signed : ``"twos"`` or ``"offset"``, default ``"twos"``
        The mapping (keyword-only).
    offset : int or None, default None
        The offset of ``signed="offset"``, ``|offset| <= 2^31``; ``None`` is ``2^(b-1)``.

    Returns
    -------
    numpy.ndarray
        uint8 of ``values``' shape, patterns in ``[0, 2^bits - 1]``.
    """
    bits = check_int(bits, "bits", lo=1, hi=8)
    check_choice(signed, "signed", SIGNED_MODES)
    lo, hi, off = _signed_range(bits, signed, offset)
    arr = _as_int_values(values, "values")
    what = f"{bits}-bit two's complement" if signed == "twos" else f"{bits} bits with offset {off}"
    _check_range(arr, lo, hi, "values", what)
    v = arr.astype(np.int64)
    if signed == "twos":
        return (v & ((1 << bits) - 1)).astype(np.uint8)
    return (v + off).astype(np.uint8)


def from_unsigned(u: npt.ArrayLike, bits: int, *, signed: str = "twos", offset: int | None = None) -> np.ndarray:
    """Inverse of :func:`to_unsigned`: ``bits``-bit patterns in ``[0, 2^b - 1]`` to signed.

    ``signed="twos"``: patterns ``>= 2^(b-1)`` become ``u - 2^b``; int8. ``signed="offset"``:
    ``u - offset``, in the smallest of int8/int16/int32/int64 that holds
    ``[-offset, 2^b - 1 - offset]`` (int8 for the default offset). Shape of ``u``.

    Parameters
    ----------
    u : integer array
        The patterns, in ``[0, 2^bits - 1]`` (else ``ValueError``).
    bits : int
        Bit width of the patterns, 1..8.
    signed : ``"twos"`` or ``"offset"``, default ``"twos"``
        The mapping (keyword-only).
    offset : int or None, default None
        The offset of ``signed="offset"``, ``|offset| <= 2^31``; ``None`` is ``2^(b-1)``.

    Returns
    -------
    numpy.ndarray
        The signed values, of ``u``'s shape (dtype as above).
    """
    bits = check_int(bits, "bits", lo=1, hi=8)
    check_choice(signed, "signed", SIGNED_MODES)
    lo, hi, off = _signed_range(bits, signed, offset)
    arr = _as_int_values(u, "u")
    _check_range(arr, 0, (1 << bits) - 1, "u", f"in {bits} unsigned bit(s)")
    v = arr.astype(np.int64)
    if signed == "twos":
        half = 1 << (bits - 1)
        return np.where(v >= half, v - (1 << bits), v).astype(np.int8)
    return (v - off).astype(smallest_int_dtype(lo, hi, signed=True))


# ---- container -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PackedArray:
    """A packed array that remembers what is needed to restore it.

    ``data``: 1-D uint8, exactly ``ceil(count * bits / 8)`` bytes with zero padding
    (stored as a read-only view); ``bits``: 1..8; ``count``: number of values, equal to
    ``prod(shape)``; ``order``: ``"lsb"`` or ``"msb"``; ``shape``: the unpacked shape.
    Checked on construction. Equality compares every field and the bytes. Signedness is
    not stored: map with :func:`to_unsigned` before and :func:`from_unsigned` after.
    """

    data: np.ndarray
    bits: int
    count: int
    order: str
    shape: tuple

    def __post_init__(self):
        bits = check_int(self.bits, "bits", lo=1, hi=8)
        count = check_int(self.count, "count", lo=0)
        check_choice(self.order, "order", PACK_ORDERS)
        try:
            shape = tuple(check_int(s, "shape", lo=0) for s in self.shape)
        except TypeError as e:
            raise TypeError(f"shape must be a tuple of integers, got {self.shape!r}") from e
        if math.prod(shape) != count:
            raise ValueError(f"count={count} does not match shape {shape} ({math.prod(shape)} elements)")
        data = _as_data(self.data).view()
        data.flags.writeable = False
        _check_stream(data, bits, count, self.order, True)
        for name, value in (("data", data), ("bits", bits), ("count", count), ("shape", shape)):
            object.__setattr__(self, name, value)

    @property
    def nbytes(self) -> int:
        return int(self.data.shape[0])

    def __eq__(self, other):
        if not isinstance(other, PackedArray):
            return NotImplemented
        return (self.bits, self.count, self.order, self.shape) == (
            other.bits,
            other.count,
            other.order,
            other.shape,
        ) and np.array_equal(self.data, other.data)

    __hash__ = None


def pack(values: npt.ArrayLike, bits: int, *, order: str = "lsb", backend: str = "numba") -> PackedArray:
    """:func:`pack_bits` that keeps ``values``' shape and count in a :class:`PackedArray`.

    Parameters
    ----------
    values : integer array
        Unsigned values in ``[0, 2^bits - 1]``, any shape (packed in C order).
    bits : int
        Bits per value, 1..8.
    order : ``"lsb"`` or ``"msb"``, default ``"lsb"``
        Bit order within a byte, as in :func:`pack_bits`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        As in :func:`pack_bits`.

    Returns
    -------
    PackedArray
        The packed bytes with ``bits``, ``count``, ``order`` and ``shape``.
    """
    arr = _as_int_values(values, "values")
    data = pack_bits(arr, bits, order=order, backend=backend)
    return PackedArray(data, bits, arr.size, order, arr.shape)


def unpack(packed: PackedArray, *, backend: str = "numba") -> np.ndarray:
    """Values of a :class:`PackedArray`: uint8 of its ``shape``, in ``[0, 2^bits - 1]``.

    Parameters
    ----------
    packed : PackedArray
        The packed array.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        As in :func:`unpack_bits`.

    Returns
    -------
    numpy.ndarray
        uint8 of ``packed.shape``.
    """
    if not isinstance(packed, PackedArray):
        raise TypeError(f"packed must be a PackedArray, got {type(packed).__name__}")
    flat = unpack_bits(packed.data, packed.bits, packed.count, order=packed.order, backend=backend)
    return flat.reshape(packed.shape)
