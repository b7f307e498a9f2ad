"""numba kernels of canonical Huffman coding: bit-stream encoder and table-driven decoder
(several symbols per table lookup).

Twins: ``npquant.compression.huffman._encode_numpy`` (vectorized NumPy) and
``npquant.compression.huffman._decode_python`` (bit-by-bit pure Python, a different algorithm on
purpose: it checks the lookup tables as well as the loop).

Bit order: MSB first. Stream bit ``p`` is bit ``7 - p % 8`` of byte ``p // 8``; a code is
written from its most significant bit; padding bits of the last byte are zero.

All bit arithmetic has explicit casts (int64, and uint64 for the decoder's 64-bit bit
buffer), so that the JIT and plain Python (``NUMBA_DISABLE_JIT=1``) agree. The encoder's
accumulator never holds more than 63 bits.
"""

import numpy as np

from ._jit import njit

# decoder status codes, turned into ValueError by npquant.compression.huffman
OK, TRUNCATED, INVALID = 0, 1, 2

# multi-symbol decoding: each lookup of the k-bit table (k <= 14) decodes up to MULTI whole
# symbols; one 64-bit big-endian load at a byte boundary feeds GROUP lookups (GROUP * k
# bits <= 57, the bits left after skipping up to 7 in the first byte)
MULTI = 4
GROUP = 4


@njit(cache=True)
def encode(symbols, lengths, codes, out):
    """Write the codes of ``symbols`` (int64) into ``out`` (uint8, ``ceil(bits / 8)``
    bytes, MSB first, zero padding). Returns the number of bits written."""
    acc = np.int64(0)  # pending bits, right-aligned; fewer than 8 between symbols
    nacc = np.int64(0)
    o = np.int64(0)
    total = np.int64(0)
    for i in range(symbols.shape[0]):
        s = symbols[i]
        ln = np.int64(lengths[s])
        acc = (acc << ln) | np.int64(codes[s])
        nacc += ln
        total += ln
        while nacc >= 8:
            nacc -= 8
            out[o] = np.uint8((acc >> nacc) & np.int64(0xFF))
            o += 1
        acc = acc & ((np.int64(1) << nacc) - np.int64(1))
    if nacc > 0:
        out[o] = np.uint8((acc << (np.int64(8) - nacc)) & np.int64(0xFF))
    return total


@njit(cache=True, inline="always")
def _load_be64(stream, b):
    """Bytes ``stream[b:b + 8]`` as a big-endian uint64 (the caller checks the bounds;
    ``b`` is uint64 so that no negative-index wraparound is compiled)."""
    u = np.uint64
    return (
        (u(stream[b]) << u(56))
        | (u(stream[b + u(1)]) << u(48))
        | (u(stream[b + u(2)]) << u(40))
        | (u(stream[b + u(3)]) << u(32))
        | (u(stream[b + u(4)]) << u(24))
        | (u(stream[b + u(5)]) << u(16))
        | (u(stream[b + u(6)]) << u(8))
        | u(stream[b + u(7)])
    )


@njit(cache=True, inline="always")
def _peek(stream, nbytes, pos, width):
    """Stream bits ``pos .. pos + width - 1`` (``width`` 1..32) as an int64, MSB first;
    bits at or past byte ``nbytes`` read as zero."""
    b = pos >> np.int64(3)
    acc = np.int64(0)
    for t in range(5):  # 40 bits cover the 32 + 7 needed
        acc = acc << np.int64(8)
        if b + t < nbytes:
            acc = acc | np.int64(stream[b + t])
    return (acc >> (np.int64(40) - (pos & np.int64(7)) - width)) & ((np.int64(1) << width) - np.int64(1))


@njit(cache=True)
def _decode_fast(stream, pos, i, pos_lim, i_lim, shift, multi_sym, multi_bits, multi_n, out):
    """The fast path of :func:`decode` from bit ``pos``, symbol ``i``, while
    ``pos <= pos_lim`` and ``i <= i_lim``; stops early at a table entry of no symbol.
    Returns the new ``(i, pos)``."""
    u = np.uint64  # unsigned indices: no negative-index wraparound in the loop
    while pos <= pos_lim and i <= i_lim:
        buf = _load_be64(stream, u(pos >> np.int64(3))) << u(pos & np.int64(7))
        for _ in range(GROUP):
            v = buf >> shift
            n = np.int64(multi_n[v])
            if n == 0:
                return i, pos
            used = multi_bits[v]  # loaded before the stores to ``out``, which may alias
            ui = u(i)
            for j in range(MULTI):
                out[ui + u(j)] = multi_sym[v, u(j)]
            i += n
            pos += np.int64(used)
            buf = buf << u(used)
    return i, pos


@njit(cache=True)
def decode(
    stream,
    nbits,
    count,
    k,
    lut_sym,
    lut_len,
    first,
    cnt,
    offset,
    sorted_syms,
    maxlen,
    multi_sym,
    multi_bits,
    multi_n,
    out,
    info,
):
    """Decode ``count`` symbols from the first ``nbits`` bits of ``stream`` into ``out``.

    Fast path, while 8 whole bytes remain from bit ``pos``'s byte and ``GROUP * MULTI``
    symbols remain to decode: the next ``k`` bits index ``multi_n`` (the whole symbols they
    hold, up to ``MULTI``; 0 when the first code is longer than ``k`` bits or invalid),
    ``multi_bits`` (their total length) and ``multi_sym`` (``(2**k, MULTI)``, the symbols;
    all ``MULTI`` are stored and the extra ones overwritten later). Otherwise one symbol
    at a time: ``lut_len``/``lut_sym`` (first symbol of the ``k`` bits; length 0 = longer
    or no code), then the canonical tables ``first[l]`` (first code of length ``l``),
    ``cnt[l]``, ``offset[l]`` (index in ``sorted_syms``) for lengths ``k+1..maxlen``.
    Bits past the last byte read as zero, but a code is accepted only if all its bits lie
    before ``nbits``. Writes ``info = (status, symbol index, bit position)``: on error
    the index of the symbol being decoded and the bit where it starts, on success
    ``count`` and the bit position after the last code. Never reads outside ``stream``.
    """
    nbytes = (nbits + np.int64(7)) // np.int64(8)
    # from pos <= pos_lim the 8-byte load stays inside the stream, and the 57 bits it
    # gives after the first (pos & 7) all lie before nbits (nbits > 8 * nbytes - 8)
    pos_lim = np.int64(8) * (nbytes - np.int64(8))
    i_lim = count - GROUP * MULTI
    shift = np.uint64(np.int64(64) - k)
    i = np.int64(0)
    pos = np.int64(0)  # bit position of the next code
    while i < count:
        i, pos = _decode_fast(stream, pos, i, pos_lim, i_lim, shift, multi_sym, multi_bits, multi_n, out)
        if i >= count:
            break
        # one symbol, with every check
        v = _peek(stream, nbytes, pos, k)
        ln = np.int64(lut_len[v])
        sym = np.int64(lut_sym[v])
        if ln == 0:  # canonical search over lengths k+1..maxlen
            w = _peek(stream, nbytes, pos, maxlen)
            for ll in range(k + 1, maxlen + 1):
                j = (w >> (maxlen - ll)) - first[ll]
                if j >= 0 and j < cnt[ll]:
                    ln = np.int64(ll)
                    sym = np.int64(sorted_syms[offset[ll] + j])
                    break
        avail = nbits - pos
        if ln == 0 or ln > avail:
            info[0] = TRUNCATED if ln > 0 or avail < maxlen else INVALID
            info[1] = i
            info[2] = pos
            return
        out[i] = sym
        i += 1
        pos += ln
    info[0] = OK
    info[1] = count
    info[2] = pos
