"""numba kernels of bit packing: unsigned ``bits``-bit values <-> a byte stream.

Twins: ``npquant.compression.packing._pack_numpy`` and ``npquant.compression.packing._unpack_numpy``.

Value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``. Eight values of ``bits``
bits fill exactly ``bits`` bytes, so the stream is a sequence of independent words: group
``g`` (values ``8g .. 8g + 7``) is bytes ``g * bits .. g * bits + bits - 1``. A kernel
gathers one group in an int64 accumulator (at most 56 bits for ``bits <= 7``) and then
scatters it; this is one loop for every ``bits`` (8 bits is a plain copy).

- ``msb=False`` (order ``"lsb"``): value ``j`` of a group sits at accumulator bits
  ``[j * bits, (j + 1) * bits)``; byte ``t`` of the group is accumulator bits
  ``8t .. 8t + 7`` (a little-endian word).
- ``msb=True`` (order ``"msb"``): value ``j`` sits at ``[(7 - j) * bits, (8 - j) * bits)``;
  byte ``t`` is accumulator bits ``8 (bits - 1 - t) .. 8 (bits - t) - 1`` (a big-endian word).

Full groups use loops of constant trip count 8 (the byte loop guarded by ``t < bits``),
which LLVM unrolls, with one compiled body for all widths.

For 1, 2 and 4 bits, :func:`unpack` treats a group as one unsigned word (uint8, uint16,
uint32 read in memory order) and spreads it to eight output bytes (one uint64) in three
halving steps, each moving the upper half of every lane to the next lane: data of
``4 * bits``, ``2 * bits`` and ``bits`` bits end up in lanes of 32, 16 and 8 bits. Within a
byte (``f < 8``) order ``"msb"`` moves the lower half up instead. The loop is branch-free
shifts and masks, which LLVM vectorizes. It needs a little-endian host (checked at import;
elsewhere the group loop runs).

The last group may be short: its missing values count as zero, so padding bits are zero,
and only the bytes that hold its bits are written or read.

Every operand is cast to int64 (uint64 in the spread) so that the JIT and
``NUMBA_DISABLE_JIT=1`` compute the same bits. Inputs are 1-D C-contiguous uint8 arrays
whose values fit ``bits`` (the wrappers check); they need not be aligned.
"""

import sys

import numpy as np

from ._jit import njit

_8 = np.int64(8)
_FF = np.int64(0xFF)
_LITTLE_ENDIAN = sys.byteorder == "little"


@njit(cache=True)
def _value_shift(j, b, msb):
    """Accumulator position of value ``j`` (0..7) of a group."""
    return (np.int64(7) - np.int64(j)) * b if msb else np.int64(j) * b


@njit(cache=True)
def _byte_shift(t, b, msb):
    """Accumulator position of byte ``t`` (0..b-1) of a group."""
    return (b - np.int64(1) - np.int64(t)) * _8 if msb else np.int64(t) * _8


@njit(cache=True)
def _pack_tail(values, start, b, msb, out, o):
    """The short last group: values ``start ..`` (fewer than 8) into bytes ``o ..``."""
    m = np.int64(values.shape[0]) - start
    acc = np.int64(0)
    for j in range(m):
        acc |= np.int64(values[start + j]) << _value_shift(j, b, msb)
    for t in range((m * b + np.int64(7)) // _8):  # bytes that hold the group's bits
        out[o + t] = np.uint8((acc >> _byte_shift(t, b, msb)) & _FF)


@njit(cache=True)
def _unpack_tail(data, o, b, count, msb, out, start):
    """The short last group: values ``start .. count - 1`` from bytes ``o ..``."""
    m = np.int64(count) - start
    acc = np.int64(0)
    for t in range((m * b + np.int64(7)) // _8):
        acc |= np.int64(data[o + t]) << _byte_shift(t, b, msb)
    mask = (np.int64(1) << b) - np.int64(1)
    for j in range(m):
        out[start + j] = np.uint8((acc >> _value_shift(j, b, msb)) & mask)


@njit(cache=True)
def pack(values, bits, msb, out):
    """Pack uint8 ``values`` (n,) of ``bits`` bits (1..8) into uint8 ``out`` (ceil(n bits / 8),)."""
    n = np.int64(values.shape[0])
    if bits == 8:
        for i in range(n):
            out[i] = values[i]
        return
    b = np.int64(bits)
    full = n // _8
    for g in range(full):
        start = np.int64(g) * _8
        acc = np.int64(0)
        for j in range(8):
            acc |= np.int64(values[start + j]) << _value_shift(j, b, msb)
        o = np.int64(g) * b
        for t in range(8):
            if t < b:
                out[o + t] = np.uint8((acc >> _byte_shift(t, b, msb)) & _FF)
    if full * _8 < n:
        _pack_tail(values, full * _8, b, msb, out, full * b)


@njit(cache=True, inline="always")
def _spread_step(x, lo, hi, mask, lane):
    """One halving step: lane ``2 * lane`` -> ``(x >> lo) & mask`` low, ``(x >> hi) & mask`` up."""
    return ((x >> lo) & mask) | (((x >> hi) & mask) << lane)


@njit(cache=True)
def _step(b, s, msb):
    """``(lo, hi, mask, lane)`` of halving step ``s`` (0, 1, 2) for ``b``-bit values."""
    f = np.int64(b) << np.int64(2 - s)  # data bits per output lane: 4b, 2b, b
    lane = np.int64(32) >> np.int64(s)  # lane width: 32, 16, 8
    field = (np.int64(1) << f) - np.int64(1)
    mask = np.int64(0)
    for t in range(np.int64(64) // lane):
        mask |= field << (np.int64(t) * lane)
    swap = msb and f < _8  # inside a byte the msb order puts the high half first
    lo = f if swap else np.int64(0)
    hi = np.int64(0) if swap else f
    return np.uint64(lo), np.uint64(hi), np.uint64(mask), np.uint64(lane)


@njit(cache=True)
def _spread(words, b, msb, out):
    """``out[k]`` (uint64): the 8 values of ``b``-bit (1, 2, 4) group ``words[k]``, one a byte."""
    lo0, hi0, m0, w0 = _step(b, 0, msb)
    lo1, hi1, m1, w1 = _step(b, 1, msb)
    lo2, hi2, m2, w2 = _step(b, 2, msb)
    for k in range(words.shape[0]):
        x = np.uint64(words[k])
        x = _spread_step(x, lo0, hi0, m0, w0)
        x = _spread_step(x, lo1, hi1, m1, w1)
        out[k] = _spread_step(x, lo2, hi2, m2, w2)


@njit(cache=True)
def _unpack_spread(data, b, count, msb, out, word_type):
    """1, 2 or 4 bits: full groups through :func:`_spread`, then the short last group."""
    n = np.int64(count)
    full = n // _8
    words = data[: full * b].view(word_type)
    _spread(words, b, msb, out[: full * _8].view(np.uint64))
    if full * _8 < n:
        _unpack_tail(data, full * b, b, count, msb, out, full * _8)


@njit(cache=True)
def unpack(data, bits, count, msb, out):
    """Unpack ``count`` values of ``bits`` bits (1..8) from uint8 ``data`` into uint8 ``out``.

    ``data`` must hold at least ``ceil(count * bits / 8)`` bytes; later bytes are not read,
    and padding bits are ignored (the wrapper checks both).
    """
    n = np.int64(count)
    if bits == 8:
        for i in range(n):
            out[i] = data[i]
        return
    b = np.int64(bits)
    if _LITTLE_ENDIAN and bits == 1:
        _unpack_spread(data, b, count, msb, out, np.uint8)
        return
    if _LITTLE_ENDIAN and bits == 2:
        _unpack_spread(data, b, count, msb, out, np.uint16)
        return
    if _LITTLE_ENDIAN and bits == 4:
        _unpack_spread(data, b, count, msb, out, np.uint32)
        return
    mask = (np.int64(1) << b) - np.int64(1)
    full = n // _8
    for g in range(full):
        o = np.int64(g) * b
        acc = np.int64(0)
        for t in range(8):
            if t < b:
                acc |= np.int64(data[o + t]) << _byte_shift(t, b, msb)
        start = np.int64(g) * _8
        for j in range(8):
            out[start + j] = np.uint8((acc >> _value_shift(j, b, msb)) & mask)
    if full * _8 < n:
        _unpack_tail(data, full * b, b, count, msb, out, full * _8)
