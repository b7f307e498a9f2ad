"""Canonical Huffman coding of integer symbols (the last stage of Deep Compression).

A code is defined by its code *lengths* alone, one per symbol of the alphabet
``0..n-1`` (``n <= 65536``; length 0 = the symbol has no code). Codes are *canonical*:
symbols sorted by (length, symbol value) get consecutive codes, and the first code of
each length is ``(first code of the previous length + its count) << 1``.

Construction (:meth:`HuffmanCode.from_counts`) is the package-merge algorithm
(Larmore & Hirschberg 1990), which gives a minimum-redundancy prefix code under a length
limit ``L``: ``L = max_length``, or 32 when no limit is given (the format's ceiling; an
unconstrained Huffman code longer than 32 bits needs at least ~15 million symbols with
Fibonacci-like counts). When the limit does not bind, the result is an optimal (Huffman)
code. Ties between equal counts are broken by symbol value: the higher symbol gets the
longer (or equal) code. A single used symbol gets the 1-bit code ``0``.

Bit order (streams): **MSB first**. Stream bit ``p`` is bit ``7 - p % 8`` of byte
``p // 8``; each code is written from its most significant bit; padding bits in the last
byte are zero. (This differs from the LSB-first order of sub-byte *packing*: canonical
decoding reads codes as big-endian integers.)

Code table format (:meth:`HuffmanCode.to_bytes`)::

    uint16 LE   alphabet_size - 1
    uint8       format: 0 = runs, 1 = nibbles
    format 1    ceil(n / 2) bytes; symbol 2k in the low nibble of byte k, 2k+1 in the high
                nibble (an unused last high nibble is 0). Only when every length <= 15.
    format 0    runs until exactly n lengths: a byte with the length in bits 0-5 (0..32),
                bit 6 zero, bit 7 = 0 for a run of one, 1 when a LEB128 varint (1-3 bytes,
                no overlong form) follows holding run_length - 2.

:meth:`HuffmanCode.to_bytes` writes whichever format is shorter (runs on a tie).

Two levels, two pairs of functions: :func:`huffman_encode` / :func:`huffman_decode` write
and read a bare bit stream under a code you hold (the caller keeps the code, the count and
the bit length); :func:`encode_blob` / :func:`decode_blob` make and read one
self-describing blob that carries all of them. (``encode`` / ``decode``, the blob pair's
first names, still work for one release with a ``DeprecationWarning``.)

Self-describing blob (:func:`encode_blob` / :func:`decode_blob`)::

    4 bytes     magic b"NQHF"
    uint8       version (1)
    uint32 LE   table size T
    T bytes     code table
    uint64 LE   symbol count
    uint64 LE   number of valid bits B
    ceil(B/8)   stream bytes
    uint32 LE   CRC-32 (zlib.crc32) of all the bytes before it; ends the blob

Decoding runs a numba table-driven kernel (``backend="numba"``: a 12-bit table whose
entries hold up to 4 whole symbols, fed from a 64-bit bit buffer) or its pure-Python
bit-by-bit twin (``backend="python"``); both give the same symbols and the same errors.
Every corrupt or truncated input is a ``ValueError`` naming what was expected. A bare
stream has no redundancy (a complete code decodes every bit string), so a flipped bit in
it may decode to other symbols of the right count; the blob's CRC-32 catches those.
"""

from __future__ import annotations

import functools
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_int_array
from .._kernels import huffman as _k

MAX_ALPHABET = 65536
MAX_CODE_LENGTH = 32
BACKENDS = ("numba", "python")
LUT_BITS = 12  # lookup-table width of the numba decoder (at most 14: see _kernels.huffman)
MAGIC = b"NQHF"
VERSION = 1
_MAX_TOTAL = 1 << 56  # counts are summed in int64 over up to 32 levels


def _symbol_dtype(alphabet_size: int) -> np.dtype:
    return np.dtype(np.uint8) if alphabet_size <= 256 else np.dtype(np.uint16)


def _int_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
        return arr.astype(np.int64)
    return check_int_array(arr, name)


# --------------------------------------------------------------------------- the code


@dataclass(frozen=True, eq=False)
class HuffmanCode:
    """A canonical prefix code over the alphabet ``0..alphabet_size-1``.

    ``lengths``: uint8, one per symbol, 0 = no code, at most 32. ``codes``: uint32, the
    canonical code of each symbol (its low ``lengths[s]`` bits; 0 where unused).
    Construction validates: at least one used symbol; a single used symbol has length 1;
    two or more form a complete prefix code (Kraft sum exactly 1).
    """

    lengths: np.ndarray
    codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        lengths = _check_lengths(self.lengths, "lengths")
        lengths.flags.writeable = False
        codes = _canonical_codes(lengths)
        codes.flags.writeable = False
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "codes", codes)

    @property
    def alphabet_size(self) -> int:
        return int(self.lengths.shape[0])

    @functools.cached_property
    def max_length(self) -> int:
        """The longest code length in use."""
        return int(self.lengths.max())

    @functools.cached_property
    def _min_length(self) -> int:
        """The shortest code length in use."""
        return int(self.lengths[self.lengths > 0].min())

    @property
    def used(self) -> int:
        """Number of symbols that have a code."""
        return int(np.count_nonzero(self.lengths))

    @functools.cached_property
    def dtype(self) -> np.dtype:
        """Dtype of decoded symbols: uint8 for alphabets up to 256, else uint16."""
        return _symbol_dtype(self.alphabet_size)

    def __eq__(self, other):
        if not isinstance(other, HuffmanCode):
            return NotImplemented
        return np.array_equal(self.lengths, other.lengths)

    def __hash__(self):
        return hash(self.lengths.tobytes())

    def __repr__(self):
        return f"HuffmanCode(alphabet_size={self.alphabet_size}, used={self.used}, max_length={self.max_length})"

    # ---- constructors

    @classmethod
    def from_counts(cls, counts: npt.ArrayLike, max_length: int | None = None) -> HuffmanCode:
        """Minimum-redundancy code for symbol ``counts`` (non-negative integers, one per
        symbol, ``1 <= len(counts) <= 65536``; zero-count symbols get no code).

        ``max_length`` (1..32) limits code lengths; it needs ``2**max_length`` to be at least
        the number of used symbols. Package-merge: optimal under the limit.
        """
        counts = _int_array(counts, "counts")
        if counts.ndim != 1 or not 1 <= counts.shape[0] <= MAX_ALPHABET:
            raise ValueError(
                f"counts must be a 1-D array of length 1..{MAX_ALPHABET} (one count per "
                f"symbol of the alphabet), got shape {counts.shape}"
            )
        if counts.min() < 0:
            raise ValueError(f"counts must be non-negative, got a minimum of {counts.min()}")
        if counts.dtype == np.uint64 and counts.max() >= _MAX_TOTAL:
            raise ValueError(f"counts must sum to less than 2**56, got max {counts.max()}")
        counts = counts.astype(np.int64)
        used = np.flatnonzero(counts)
        if used.size == 0:
            raise ValueError("counts has no non-zero entry; at least one symbol needs a code")
        total = sum(counts[used].tolist())
        if total >= _MAX_TOTAL:
            raise ValueError(f"counts must sum to less than 2**56, got {total}")
        limit = MAX_CODE_LENGTH
        if max_length is not None:
            limit = check_int(max_length, "max_length", lo=1, hi=MAX_CODE_LENGTH)
            if used.size > (1 << limit):
                raise ValueError(
                    f"max_length={limit} is too short for {used.size} used symbols: a prefix "
                    f"code needs 2**max_length >= {used.size}"
                )
        lengths = np.zeros(counts.shape[0], np.uint8)
        if used.size == 1:
            lengths[used[0]] = 1
        else:
            lengths[used] = _package_merge(counts[used], min(limit, used.size - 1))
        return cls(lengths)

    @classmethod
    def from_data(
        cls, symbols: npt.ArrayLike, alphabet_size: int | None = None, max_length: int | None = None
    ) -> HuffmanCode:
        """Code for the symbol frequencies of ``symbols`` (integers in
        ``[0, alphabet_size)``; ``alphabet_size`` defaults to ``max(symbols) + 1``)."""
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            raise ValueError("symbols is empty; a code needs at least one symbol")
        n = int(s.max()) + 1 if alphabet_size is None else alphabet_size
        return cls.from_counts(np.bincount(s, minlength=n), max_length)

    # ---- compact table

    def to_bytes(self) -> bytes:
        """The compact code table (format in the module docstring)."""
        n = self.alphabet_size
        head = (n - 1).to_bytes(2, "little")
        runs = _runs_bytes(self.lengths)
        if self.max_length <= 15 and (n + 1) // 2 < len(runs):
            ln = np.zeros(n + (n & 1), np.uint8)
            ln[:n] = self.lengths
            return head + b"\x01" + (ln[0::2] | (ln[1::2] << 4)).astype(np.uint8).tobytes()
        return head + b"\x00" + runs

    @classmethod
    def from_bytes(cls, b: bytes | bytearray | memoryview | np.ndarray) -> HuffmanCode:
        """Parse and validate a table written by :meth:`to_bytes`; the whole of ``b``
        must be the table. ValueError names what is wrong."""
        buf = _as_buffer(b, "b")
        code, end = _parse_table(buf, 0, "code table")
        if end != len(buf):
            raise ValueError(f"code table: {len(buf) - end} trailing byte(s) after the {end}-byte table")
        return code

    # ---- decoder tables (cached)

    @functools.cached_property
    def _tables(self):
        """Decoder tables: ``(k, lut_sym, lut_len, first, cnt, offset, sorted_syms,
        multi_sym, multi_bits, multi_n)``, see ``_kernels.huffman.decode``.

        ``k = LUT_BITS``. Entry ``v`` of the single-symbol table is the symbol whose code
        is a prefix of the ``k``-bit string ``v`` (length 0: none of ``<= k`` bits). The
        multi-symbol table holds the symbols decoded one after another from ``v`` for as
        long as each code lies wholly within the ``k`` bits, up to ``MULTI`` of them:
        ``multi_n`` (uint8) of them, ``multi_bits`` (uint8) bits in all, the symbols in
        ``multi_sym`` (``(2**k, MULTI)``, the symbol dtype, zero-filled).
        """
        lengths = self.lengths.astype(np.int64)
        maxlen = self.max_length
        used = np.flatnonzero(lengths)
        order = used[np.lexsort((used, lengths[used]))]
        cnt = np.bincount(lengths[used], minlength=maxlen + 1).astype(np.int64)
        cnt[0] = 0
        first = np.zeros(maxlen + 2, np.int64)
        offset = np.zeros(maxlen + 2, np.int64)
        c = 0
        for ln in range(1, maxlen + 1):
            c = (c + int(cnt[ln - 1])) << 1 if ln > 1 else 0
            first[ln] = c
            offset[ln] = offset[ln - 1] + cnt[ln - 1] if ln > 1 else 0
        cnt = np.concatenate([cnt, [0]])
        k = LUT_BITS
        lut_len = np.zeros(1 << k, np.uint8)
        lut_sym = np.zeros(1 << k, self.dtype)
        short = used[lengths[used] <= k]
        if short.size:
            span = np.int64(1) << (k - lengths[short])
            start = self.codes[short].astype(np.int64) << (k - lengths[short])
            idx = np.repeat(start, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
            lut_len[idx] = np.repeat(lengths[short], span)
            lut_sym[idx] = np.repeat(short, span)
        # multi-symbol table: decode from every k-bit string at once, symbol after symbol;
        # the bits still unread are moved to the top and zero-filled: a code found there
        # is real if it is no longer than the unread bits
        v = np.arange(1 << k, dtype=np.int64)
        mask = (1 << k) - 1
        multi_sym = np.zeros((1 << k, _k.MULTI), self.dtype)
        multi_bits = np.zeros(1 << k, np.int64)
        multi_n = np.zeros(1 << k, np.int64)
        going = np.ones(1 << k, bool)
        for j in range(_k.MULTI):
            rest = (v << multi_bits) & mask
            ln = lut_len[rest].astype(np.int64)
            going &= (ln > 0) & (ln <= k - multi_bits)
            multi_sym[:, j] = np.where(going, lut_sym[rest], 0)
            multi_bits += np.where(going, ln, 0)
            multi_n += going
        return (
            k,
            lut_sym,
            lut_len,
            first,
            cnt,
            offset,
            order.astype(np.int64),
            multi_sym,
            multi_bits.astype(np.uint8),
            multi_n.astype(np.uint8),
        )


def _check_lengths(lengths, name: str) -> np.ndarray:
    arr = _int_array(lengths, name)
    if arr.ndim != 1 or not 1 <= arr.shape[0] <= MAX_ALPHABET:
        raise ValueError(f"{name} must be a 1-D array of length 1..{MAX_ALPHABET}, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > MAX_CODE_LENGTH:
        raise ValueError(f"{name} must lie in 0..{MAX_CODE_LENGTH}, got [{arr.min()}, {arr.max()}]")
    arr = arr.astype(np.uint8)
    nz = arr[arr > 0].astype(np.int64)
    if nz.size == 0:
        raise ValueError(f"{name}: no symbol has a code (all lengths are 0)")
    if nz.size == 1:
        if nz[0] != 1:
            raise ValueError(f"{name}: a single used symbol must have length 1, got {nz[0]}")
        return arr
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LENGTH - nz)))  # exact: < 2**49
    if kraft != 1 << MAX_CODE_LENGTH:
        raise ValueError(
            f"{name} do not form a complete prefix code: Kraft sum {Fraction(kraft, 1 << MAX_CODE_LENGTH)} != 1"
        )
    return arr


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (uint32) from valid lengths: by length, then symbol value."""
    ln = lengths.astype(np.int64)
    maxlen = int(ln.max())
    bl = np.bincount(ln, minlength=maxlen + 1)
    bl[0] = 0
    next_code = [0] * (maxlen + 1)
    c = 0
    for i in range(1, maxlen + 1):
        c = (c + int(bl[i - 1])) << 1
        next_code[i] = c
    used = np.flatnonzero(ln)
    order = used[np.lexsort((used, ln[used]))]
    lo = ln[order]
    # rank within each length = position in ``order`` minus the start of its length group
    starts = np.searchsorted(lo, lo, side="left")
    codes = np.zeros(ln.shape[0], np.uint32)
    codes[order] = (np.asarray(next_code, np.int64)[lo] + np.arange(order.size) - starts).astype(np.uint32)
    return codes


def _package_merge(w: np.ndarray, limit: int) -> np.ndarray:
    """Optimal code lengths (uint8) for weights ``w > 0`` (``len(w) >= 2``) under
    ``max length <= limit``, ``2**limit >= len(w)``.

    Leaves sorted ascending are merged with the pairwise packages of the level below, for
    ``limit`` levels; the first ``2n - 2`` items of the top level are chosen, and each
    chosen package asks for its two items one level down. Within a level the chosen items
    are a prefix of the sorted list, whose leaves are the ``m`` lightest: each of them
    gets one more bit.
    """
    n = w.shape[0]
    # lightest first; among equal weights the higher symbol first (gets the longer code)
    order = np.lexsort((-np.arange(n), w))
    leaves = w[order].astype(np.int64)
    is_leaf = [None] * (limit + 1)  # per level (1 = top), which sorted items are leaves
    cur = leaves
    is_leaf[limit] = np.ones(n, bool)
    for level in range(limit - 1, 0, -1):
        m2 = cur.shape[0] // 2 * 2
        packages = cur[0:m2:2] + cur[1:m2:2]
        merged = np.concatenate([leaves, packages])
        idx = np.argsort(merged, kind="stable")  # leaves before packages on ties
        cur = merged[idx]
        is_leaf[level] = idx < n
    sorted_len = np.zeros(n, np.int64)
    k = 2 * n - 2
    for level in range(1, limit + 1):
        m = int(np.count_nonzero(is_leaf[level][:k]))
        sorted_len[:m] += 1
        k = 2 * (k - m)
        if k == 0:
            break
    out = np.empty(n, np.uint8)
    out[order] = sorted_len
    return out


def _runs_bytes(lengths: np.ndarray) -> bytes:
    ln = lengths.astype(np.int64)
    change = np.flatnonzero(np.diff(ln)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [ln.shape[0]]])
    out = bytearray()
    for s, e in zip(starts.tolist(), ends.tolist()):
        v, run = int(ln[s]), e - s
        if run == 1:
            out.append(v)
            continue
        out.append(v | 0x80)
        out += _varint(run - 2)
    return bytes(out)


def _varint(x: int) -> bytes:
    """``x >= 0`` as an unsigned LEB128 varint: 7 bits a byte, low first, the high bit set
    on every byte but the last (no redundant last byte 0)."""
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if not x:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _as_buffer(b, name: str) -> bytes:
    if isinstance(b, np.ndarray):
        if b.dtype != np.uint8 or b.ndim != 1:
            raise TypeError(f"{name} must be bytes or a 1-D uint8 array, got {b.dtype} {b.shape}")
        return b.tobytes()
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(b).__name__}")
    return bytes(b)


def _parse_table(buf: bytes, start: int, what: str) -> tuple[HuffmanCode, int]:
    """Parse a code table at ``buf[start:]``; return the code and the end offset."""
    if len(buf) - start < 3:
        raise ValueError(f"{what} is truncated: the header needs 3 bytes, got {len(buf) - start}")
    n = int.from_bytes(buf[start : start + 2], "little") + 1
    fmt = buf[start + 2]
    p = start + 3
    if fmt == 1:
        nb = (n + 1) // 2
        if len(buf) - p < nb:
            raise ValueError(f"{what} is truncated: {n} nibble-packed lengths need {nb} bytes, got {len(buf) - p}")
        raw = np.frombuffer(buf, np.uint8, nb, p)
        ln = np.empty(2 * nb, np.uint8)
        ln[0::2] = raw & 0x0F
        ln[1::2] = raw >> 4
        if n & 1 and ln[-1] != 0:
            raise ValueError(f"{what}: the unused last nibble must be 0, got {ln[-1]}")
        lengths = ln[:n]
        p += nb
    elif fmt == 0:
        lengths = np.empty(n, np.uint8)
        filled = 0
        while filled < n:
            if p >= len(buf):
                raise ValueError(f"{what} is truncated: runs cover {filled} of {n} code lengths")
            byte = buf[p]
            p += 1
            v = byte & 0x3F
            if byte & 0x40 or v > MAX_CODE_LENGTH:
                raise ValueError(
                    f"{what}: bad run byte 0x{byte:02x} at offset {p - 1 - start} (length "
                    f"must be 0..{MAX_CODE_LENGTH}, bit 6 must be 0)"
                )
            run = 1
            if byte & 0x80:
                r, shift, nbytes = 0, 0, 0
                while True:
                    if p >= len(buf):
                        raise ValueError(f"{what} is truncated inside a run-length varint")
                    vb = buf[p]
                    p += 1
                    nbytes += 1
                    r |= (vb & 0x7F) << shift
                    shift += 7
                    if not vb & 0x80:
                        if vb == 0 and nbytes > 1:
                            raise ValueError(f"{what}: overlong run-length varint")
                        break
                    if nbytes == 3:
                        raise ValueError(f"{what}: run-length varint longer than 3 bytes")
                run = r + 2
            if run > n - filled:
                raise ValueError(f"{what}: a run of {run} lengths overruns the alphabet ({n - filled} left of {n})")
            lengths[filled : filled + run] = v
            filled += run
    else:
        raise ValueError(f"{what}: unknown format byte {fmt}; expected 0 (runs) or 1 (nibbles)")
    try:
        code = HuffmanCode(lengths)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return code, p


# --------------------------------------------------------------------------- encoding


def _check_symbols(symbols, alphabet_size) -> np.ndarray:
    """Flattened (C order) int64 symbols, checked against ``[0, alphabet_size)``."""
    s = _int_array(symbols, "symbols").ravel()
    if alphabet_size is not None:
        alphabet_size = check_int(alphabet_size, "alphabet_size", lo=1, hi=MAX_ALPHABET)
    hi = MAX_ALPHABET if alphabet_size is None else alphabet_size
    if s.size and (s.min() < 0 or s.max() >= hi):
        raise ValueError(f"symbols must lie in [0, {hi}) (alphabet_size={alphabet_size}), got [{s.min()}, {s.max()}]")
    return s.astype(np.int64)


def _check_code(code) -> HuffmanCode:
    if not isinstance(code, HuffmanCode):
        raise TypeError(f"code must be a HuffmanCode, got {type(code).__name__}")
    return code


def huffman_encode(symbols: npt.ArrayLike, code: HuffmanCode, *, backend: str = "numba") -> tuple[bytes, int]:
    """Encode integer ``symbols`` (any shape, read in C order) with ``code``.

    ValueError if a symbol is outside the alphabet or has no code.

    Parameters
    ----------
    symbols : integer array
        Symbols in ``[0, code.alphabet_size)``, each with a code.
    code : HuffmanCode
        The code.
    backend : ``"numba"`` or ``"python"``, default ``"numba"``
        The kernel or its NumPy twin; identical bytes.

    Returns
    -------
    stream : bytes
        ``ceil(nbits / 8)`` bytes, MSB first, zero padding.
    nbits : int
        Number of code bits in ``stream``.
    """
    code = _check_code(code)
    check_choice(backend, "backend", BACKENDS)
    s = _check_symbols(symbols, code.alphabet_size)
    if s.size and np.any(code.lengths[s] == 0):
        bad = np.unique(s[code.lengths[s] == 0])
        raise ValueError(
            f"symbols {bad[:8].tolist()}{'...' if bad.size > 8 else ''} have no code "
            f"(zero count when the code was built)"
        )
    if backend == "python":
        return _encode_numpy(s, code.lengths, code.codes)
    total = int(code.lengths[s].astype(np.int64).sum())
    out = np.zeros((total + 7) // 8, np.uint8)
    nbits = _k.encode(s, code.lengths, code.codes, out)
    return out.tobytes(), int(nbits)


def _encode_numpy(s: np.ndarray, lengths: np.ndarray, codes: np.ndarray, chunk: int = 1 << 16) -> tuple[bytes, int]:
    """NumPy twin of ``_kernels.huffman.encode``: every code expanded to bits, then
    ``np.packbits`` (MSB first, zero padding), in chunks to bound memory."""
    parts = []
    for a in range(0, s.shape[0], chunk):
        ss = s[a : a + chunk]
        ls = lengths[ss].astype(np.int64)
        cs = codes[ss].astype(np.int64)
        owner = np.repeat(np.arange(ss.shape[0]), ls)  # symbol of each bit
        j = np.arange(owner.shape[0]) - np.repeat(np.cumsum(ls) - ls, ls)  # bit in its code
        parts.append(((cs[owner] >> (ls[owner] - 1 - j)) & 1).astype(np.uint8))
    bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return np.packbits(bits).tobytes(), int(bits.shape[0])


# --------------------------------------------------------------------------- decoding


def huffman_decode(
    stream: bytes | bytearray | memoryview | np.ndarray,
    code: HuffmanCode,
    count: int,
    *,
    nbits: int | None = None,
    backend: str = "numba",
) -> np.ndarray:
    """Decode exactly ``count`` symbols (1-D, uint8 for alphabets up to 256, else uint16).

    ``stream``: bytes (or a 1-D uint8 array), MSB first. With ``nbits`` the stream must be
    exactly ``ceil(nbits / 8)`` bytes and the codes must end exactly at bit ``nbits``;
    without it they must end in the last byte. Padding bits after the end must be zero.
    ValueError on a truncated stream, an invalid code, a wrong end or non-zero padding.
    Never reads outside ``stream``; every step consumes at least one bit.

    Parameters
    ----------
    stream : bytes or 1-D uint8 array
        The encoded bits, MSB first.
    code : HuffmanCode
        The code the stream was written with.
    count : int
        Number of symbols to decode, >= 0.
    nbits : int or None, default None
        Keyword-only; the exact number of code bits (see above).
    backend : ``"numba"`` or ``"python"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.

    Returns
    -------
    numpy.ndarray
        1-D, ``count`` symbols: uint8 for alphabets up to 256, else uint16.
    """
    code = _check_code(code)
    check_choice(backend, "backend", BACKENDS)
    buf = _as_buffer(stream, "stream")
    count = check_int(count, "count", lo=0)
    avail = 8 * len(buf)
    if nbits is not None:
        nbits = check_int(nbits, "nbits", lo=0)
        if (nbits + 7) // 8 != len(buf):
            raise ValueError(
                f"stream has {len(buf)} bytes, but nbits={nbits} needs exactly "
                f"{(nbits + 7) // 8}" + (" (stream is truncated)" if avail < nbits else "")
            )
        avail = nbits
    minlen = code._min_length
    if count * minlen > avail:
        raise ValueError(
            f"stream is truncated: {count} symbols need at least {count * minlen} bits, the stream has {avail}"
        )
    out = np.empty(count, code.dtype)
    if backend == "python":
        status, i, pos = _decode_python(buf, avail, count, code, out)
    else:
        k, lut_sym, lut_len, first, cnt, offset, syms, m_sym, m_bits, m_n = code._tables
        info = np.zeros(3, np.int64)
        _k.decode(
            np.frombuffer(buf, np.uint8),
            np.int64(avail),
            np.int64(count),
            np.int64(k),
            lut_sym,
            lut_len,
            first,
            cnt,
            offset,
            syms,
            np.int64(code.max_length),
            m_sym,
            m_bits,
            m_n,
            out,
            info,
        )
        status, i, pos = info.tolist()
    if status == _k.TRUNCATED:
        raise ValueError(
            f"stream is truncated: symbol {i} of {count} starts at bit {pos} and does not "
            f"end within the {avail} bits available"
        )
    if status == _k.INVALID:
        raise ValueError(f"stream is corrupt: invalid code for symbol {i} of {count} at bit {pos}")
    if nbits is not None and pos != nbits:
        raise ValueError(f"stream is corrupt: {count} symbols end at bit {pos}, expected nbits={nbits}")
    if (pos + 7) // 8 != len(buf):
        raise ValueError(
            f"stream is corrupt: {count} symbols end at bit {pos} (byte {(pos + 7) // 8}), "
            f"but the stream has {len(buf)} bytes"
        )
    if pos % 8 and buf[-1] & ((1 << (8 - pos % 8)) - 1):
        raise ValueError(f"stream is corrupt: non-zero padding bits after bit {pos}")
    return out


def _decode_python(buf: bytes, nbits: int, count: int, code: HuffmanCode, out) -> tuple:
    """Pure-Python twin of ``_kernels.huffman.decode``: one bit at a time, canonical
    tables (first code, count and offset per length). Returns (status, index, bit)."""
    ln = code.lengths.tolist()
    maxlen = code.max_length
    first, cnt, offset = [0] * (maxlen + 1), [0] * (maxlen + 1), [0] * (maxlen + 1)
    for ll in range(1, maxlen + 1):
        cnt[ll] = ln.count(ll)
        if ll > 1:
            first[ll] = (first[ll - 1] + cnt[ll - 1]) << 1
            offset[ll] = offset[ll - 1] + cnt[ll - 1]
    syms = sorted((v, s) for s, v in enumerate(ln) if v)
    syms = [s for _, s in syms]
    pos = 0
    for i in range(count):
        start, c, ll = pos, 0, 0
        while True:
            if ll == maxlen:
                return _k.INVALID, i, start
            if pos >= nbits:
                return _k.TRUNCATED, i, start
            c = (c << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
            ll += 1
            j = c - first[ll]
            if 0 <= j < cnt[ll]:
                out[i] = syms[offset[ll] + j]
                break
    return _k.OK, count, pos


# --------------------------------------------------------------------------- blob


_HEAD = len(MAGIC) + 1 + 4


def encode_blob(symbols: npt.ArrayLike, alphabet_size: int | None = None, max_length: int | None = None) -> bytes:
    """One self-describing blob: magic, version, table, count, nbits, stream, CRC-32
    (format in the module docstring). The code is built from ``symbols`` (flattened,
    C order). Empty ``symbols`` are allowed: the table then gives symbol 0 a 1-bit code.

    Parameters
    ----------
    symbols : integer array
        Symbols in ``[0, alphabet_size)``, any shape.
    alphabet_size : int or None, default None
        Size of the alphabet, 1..65536; ``None`` is ``max(symbols) + 1`` (1 when empty).
    max_length : int or None, default None
        Longest code length allowed, 1..32; ``None`` is 32.

    Returns
    -------
    bytes
        The blob.
    """
    s = _check_symbols(symbols, alphabet_size)
    if s.size == 0:
        counts = np.zeros(1 if alphabet_size is None else alphabet_size, np.int64)
        counts[0] = 1
        code = HuffmanCode.from_counts(counts, max_length)
    else:
        code = HuffmanCode.from_data(s, alphabet_size, max_length)
    table = code.to_bytes()
    stream, nbits = huffman_encode(s, code)
    body = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            len(table).to_bytes(4, "little"),
            table,
            s.size.to_bytes(8, "little"),
            nbits.to_bytes(8, "little"),
            stream,
        ]
    )
    return body + zlib.crc32(body).to_bytes(4, "little")


def decode_blob(blob: bytes | bytearray | memoryview | np.ndarray, *, backend: str = "numba") -> np.ndarray:
    """Decode a blob written by :func:`encode_blob`: 1-D uint8 (alphabet <= 256) or uint16.

    The sizes are checked first (a short part is named), then the CRC-32, then the table
    and the stream. Any corruption is a ValueError (the checksum catches the flips that
    still decode: a Huffman stream itself has no redundancy).

    Parameters
    ----------
    blob : bytes or 1-D uint8 array
        The blob.
    backend : ``"numba"`` or ``"python"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.

    Returns
    -------
    numpy.ndarray
        1-D symbols, uint8 (alphabet <= 256) or uint16.
    """
    buf = _as_buffer(blob, "blob")
    check_choice(backend, "backend", BACKENDS)
    if len(buf) < _HEAD:
        raise ValueError(f"blob is truncated: the header needs {_HEAD} bytes, got {len(buf)}")
    if buf[:4] != MAGIC:
        raise ValueError(f"blob does not start with the magic {MAGIC!r}, got {buf[:4]!r}")
    if buf[4] != VERSION:
        raise ValueError(f"blob has version {buf[4]}, expected {VERSION}")
    tlen = int.from_bytes(buf[5:9], "little")
    end = _HEAD + tlen
    if len(buf) < end:
        raise ValueError(f"blob is truncated: the code table needs {tlen} bytes, got {len(buf) - _HEAD}")
    if len(buf) - end < 16:
        raise ValueError(f"blob is truncated: count and nbits need 16 bytes, got {len(buf) - end}")
    count = int.from_bytes(buf[end : end + 8], "little")
    nbits = int.from_bytes(buf[end + 8 : end + 16], "little")
    need = (nbits + 7) // 8 + 4
    have = len(buf) - end - 16
    if have < need:
        raise ValueError(f"blob is truncated: the stream (nbits={nbits}) and its CRC-32 need {need} bytes, got {have}")
    if have > need:
        raise ValueError(f"blob has {have - need} trailing byte(s) after the stream and its CRC-32")
    stored = int.from_bytes(buf[-4:], "little")
    crc = zlib.crc32(buf[:-4])
    if stored != crc:
        raise ValueError(f"blob is corrupt: CRC-32 is 0x{crc:08x}, the blob says 0x{stored:08x}")
    code, tend = _parse_table(buf[:end], _HEAD, "blob code table")
    if tend != end:
        raise ValueError(f"blob code table: the table ends at byte {tend - _HEAD}, the header says {tlen}")
    return huffman_decode(buf[end + 16 : -4], code, count, nbits=nbits, backend=backend)


# --------------------------------------------------------------------------- statistics


def _counts_of(symbols, counts, name: str) -> np.ndarray:
    if (symbols is None) == (counts is None):
        raise TypeError(f"{name}: give exactly one of symbols (positional) or counts=")
    if counts is not None:
        c = _int_array(counts, "counts")
        if c.ndim != 1 or c.size == 0:
            raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
        if c.min() < 0:
            raise ValueError(f"counts must be non-negative, got a minimum of {c.min()}")
        if c.sum() == 0:
            raise ValueError("counts sums to 0; there is no symbol")
        return c.astype(np.int64)
    s = _int_array(symbols, "symbols").ravel()
    if s.size == 0:
        raise ValueError("symbols is empty")
    if s.min() < 0:
        raise ValueError(f"symbols must be non-negative, got a minimum of {s.min()}")
    return np.bincount(s.astype(np.int64))


def entropy_bits(symbols: npt.ArrayLike | None = None, *, counts: npt.ArrayLike | None = None) -> float:
    """Shannon entropy ``-sum p log2 p`` in bits per symbol (float64), of ``symbols``
    (integers >= 0) or of ``counts=`` (one count per symbol). Lower bound of any
    symbol-by-symbol code.

    Parameters
    ----------
    symbols : integer array or None, default None
        Symbols (integers >= 0, any shape); give either these or ``counts``.
    counts : integer array or None, default None
        Keyword-only; one non-negative count per symbol, not all zero.

    Returns
    -------
    float
        Bits per symbol, >= 0.
    """
    c = _counts_of(symbols, counts, "entropy_bits")
    c = c[c > 0].astype(np.float64)
    p = c / c.sum()
    return float(max(0.0, -np.sum(p * np.log2(p))))


def bits_per_symbol(
    code: HuffmanCode, symbols: npt.ArrayLike | None = None, *, counts: npt.ArrayLike | None = None
) -> float:
    """Mean code length in bits (float64) of ``code`` over ``symbols`` or ``counts=``
    (length ``code.alphabet_size``). Excludes the table. ValueError for a symbol with
    no code.

    Parameters
    ----------
    code : HuffmanCode
        The code.
    symbols : integer array or None, default None
        Symbols in ``[0, code.alphabet_size)``; give either these or ``counts``.
    counts : integer array or None, default None
        Keyword-only; one count per symbol, of length ``code.alphabet_size``.

    Returns
    -------
    float
        Mean code length in bits.
    """
    code = _check_code(code)
    c = _counts_of(symbols, counts, "bits_per_symbol")
    if counts is not None and c.shape[0] != code.alphabet_size:
        raise ValueError(f"counts must have one entry per symbol ({code.alphabet_size}), got {c.shape[0]}")
    if c.shape[0] > code.alphabet_size:
        raise ValueError(f"symbols must lie in [0, {code.alphabet_size}), got a maximum of {c.shape[0] - 1}")
    ln = code.lengths[: c.shape[0]].astype(np.int64)
    if np.any((c > 0) & (ln == 0)):
        raise ValueError("some symbols with non-zero count have no code")
    return float(np.sum(c * ln) / np.sum(c))


def fixed_length_bits(alphabet_size: int) -> int:
    """Bits per symbol of a fixed-length code for the alphabet: ``ceil(log2 n)``, at
    least 1.

    Parameters
    ----------
    alphabet_size : int
        Number of symbols ``n``, 1..65536.

    Returns
    -------
    int
        ``max(1, ceil(log2 n))``.
    """
    n = check_int(alphabet_size, "alphabet_size", lo=1, hi=MAX_ALPHABET)
    return max(1, (n - 1).bit_length())


_RENAMED = {"encode": "encode_blob", "decode": "decode_blob"}


def __getattr__(name: str):
    """The blob pair's first names, ``encode`` and ``decode``: deprecated for one release."""
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"npquant.compression.huffman.{name} is deprecated: it is now {new} (the self-describing "
            f"blob; huffman_encode / huffman_decode handle a bare stream)",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
