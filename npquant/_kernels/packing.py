"""numba kernels of bit packing: unsigned ``bits``-bit values <-> a byte stream.

Twins: ``npquant.packing._pack_numpy`` and ``npquant.packing._unpack_numpy``.

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
which LLVM unrolls, with one compiled body for all widths (speed is for ``benchmarks/``
to measure; none is claimed here).
The last group may be short: its missing values count as zero, so padding bits are zero,
and only the bytes that hold its bits are written or read.

Every operand is cast to int64 so that the JIT and ``NUMBA_DISABLE_JIT=1`` compute the
same bits. Inputs are 1-D C-contiguous uint8 arrays whose values fit ``bits`` (the
wrappers check).
"""

import numpy as np
from numba import njit

_8 = np.int64(8)
_FF = np.int64(0xFF)


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
