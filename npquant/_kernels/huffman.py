"""numba kernels of canonical Huffman coding: bit-stream encoder and table-driven decoder.

Twins: ``npquant.huffman._encode_numpy`` (vectorized NumPy) and
``npquant.huffman._decode_python`` (bit-by-bit pure Python, a different algorithm on
purpose: it checks the lookup tables as well as the loop).

Bit order: MSB first. Stream bit ``p`` is bit ``7 - p % 8`` of byte ``p // 8``; a code is
written from its most significant bit; padding bits of the last byte are zero.

All bit arithmetic is in int64 with explicit casts, so that the JIT and plain Python
(``NUMBA_DISABLE_JIT=1``) agree. The bit accumulator never holds more than 63 bits.
"""

import numpy as np
from numba import njit

# decoder status codes, turned into ValueError by npquant.huffman
OK, TRUNCATED, INVALID = 0, 1, 2


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


@njit(cache=True)
def decode(stream, nbits, count, k, lut_sym, lut_len, first, cnt, offset, sorted_syms,
           maxlen, out, info):
    """Decode ``count`` symbols from the first ``nbits`` bits of ``stream`` into ``out``.

    Table-driven: the next ``k`` bits index ``lut_len``/``lut_sym`` (length 0 = the code is
    longer than ``k`` bits, or no code); longer codes are resolved with the canonical
    tables ``first[l]`` (first code of length ``l``), ``cnt[l]``, ``offset[l]`` (index in
    ``sorted_syms``). Peeks past the end read zeros, but a code is accepted only if all its
    bits lie before ``nbits``. Writes ``info = (status, symbol index, bit position)``:
    on error the index of the symbol being decoded and the bit where it starts, on success
    ``count`` and the bit position after the last code.
    """
    nbytes = (nbits + np.int64(7)) // np.int64(8)
    acc = np.int64(0)  # ``have`` bits, right-aligned, the next stream bit is the highest
    have = np.int64(0)
    b = np.int64(0)  # next byte to load
    pos = np.int64(0)  # bit position of the next code
    kmask = (np.int64(1) << k) - np.int64(1)
    lmask = (np.int64(1) << maxlen) - np.int64(1)
    for i in range(count):
        while have <= 55 and b < nbytes:
            acc = (acc << np.int64(8)) | np.int64(stream[b])
            b += 1
            have += 8
        if have >= k:
            v = (acc >> (have - k)) & kmask
        else:
            v = (acc << (k - have)) & kmask
        ln = np.int64(lut_len[v])
        sym = np.int64(lut_sym[v])
        if ln == 0:  # slow path: canonical search over lengths k+1..maxlen
            if have >= maxlen:
                w = (acc >> (have - maxlen)) & lmask
            else:
                w = (acc << (maxlen - have)) & lmask
            for ll in range(k + 1, maxlen + 1):
                c = w >> (maxlen - ll)
                j = c - first[ll]
                if j >= 0 and j < cnt[ll]:
                    ln = np.int64(ll)
                    sym = np.int64(sorted_syms[offset[ll] + j])
                    break
        avail = nbits - pos
        if ln == 0:
            info[0] = TRUNCATED if avail < maxlen else INVALID
            info[1] = i
            info[2] = pos
            return
        if ln > avail:
            info[0] = TRUNCATED
            info[1] = i
            info[2] = pos
            return
        out[i] = sym
        have -= ln
        acc = acc & ((np.int64(1) << have) - np.int64(1))
        pos += ln
    info[0] = OK
    info[1] = count
    info[2] = pos
