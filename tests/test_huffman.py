"""Canonical Huffman coding: construction, canonical codes, table format, encode/decode,
the numba decoder against its pure-Python twin, and corruption of real streams.

Runs with the JIT on and with NUMBA_DISABLE_JIT=1; sizes are kept small where the
pure-Python paths run.
"""

import heapq
import itertools
import zlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npquant._kernels import huffman as kh
from npquant.compression.huffman import (
    HuffmanCode,
    _decode_python,
    _varint,
    bits_per_symbol,
    decode_blob,
    encode_blob,
    entropy_bits,
    fixed_length_bits,
    huffman_decode,
    huffman_encode,
)

encode, decode = encode_blob, decode_blob  # the blob pair, by its names in these tests
BACKENDS = ("numba", "python")


# ----------------------------------------------------------------------------- oracles


def huffman_cost(counts):
    """Total bits of an optimal prefix code: the sum of all merged weights (heapq)."""
    h = [int(c) for c in counts if c > 0]
    if len(h) == 1:
        return h[0]
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    return cost


def limited_cost_bruteforce(counts, limit):
    """Minimum total bits over all complete length vectors with lengths <= limit."""
    w = [int(c) for c in counts if c > 0]
    best = None
    for ls in itertools.product(range(1, limit + 1), repeat=len(w)):
        if sum(Fraction(1, 2**v) for v in ls) == 1:
            cost = sum(a * b for a, b in zip(w, ls))
            best = cost if best is None else min(best, cost)
    return best


def total_bits(code, counts):
    return int(np.sum(np.asarray(counts, np.int64) * code.lengths.astype(np.int64)))


def check_prefix_code(code):
    """Complete (or single 1-bit) prefix code whose codes are canonical."""
    ln = code.lengths.astype(np.int64)
    used = np.flatnonzero(ln)
    if used.size == 1:
        assert ln[used[0]] == 1 and code.codes[used[0]] == 0
        return
    assert sum(Fraction(1, 2 ** int(v)) for v in ln[used]) == 1
    # canonical: sorted by (length, symbol), code_k+1 = (code_k + 1) << (len_k+1 - len_k)
    order = used[np.lexsort((used, ln[used]))]
    c = 0
    assert code.codes[order[0]] == 0
    for a, b in zip(order[:-1], order[1:]):
        c = (c + 1) << int(ln[b] - ln[a])
        assert int(code.codes[b]) == c
    assert all(int(code.codes[s]) < 2 ** int(ln[s]) for s in used)
    # prefix-free (small alphabets)
    if used.size <= 300:
        words = [format(int(code.codes[s]), f"0{ln[s]}b") for s in used]
        words.sort()
        for a, b in zip(words[:-1], words[1:]):
            assert not b.startswith(a)


def skewed(rng, n_symbols, alphabet, kind="geometric"):
    if kind == "geometric":
        x = rng.geometric(min(0.9, 4.0 / alphabet + 0.05), n_symbols) - 1
    elif kind == "zipf":
        x = rng.zipf(1.3, n_symbols) - 1
    else:
        x = rng.integers(0, alphabet, n_symbols)
    return np.minimum(x, alphabet - 1).astype(np.int64)


def decode_both(stream, code, count, nbits=None):
    """Decode with both backends; they must agree on the array or on the error."""
    res = []
    for be in BACKENDS:
        try:
            res.append(huffman_decode(stream, code, count, nbits=nbits, backend=be))
        except ValueError as exc:
            res.append(str(exc))
    a, b = res
    if isinstance(a, str) or isinstance(b, str):
        assert a == b if isinstance(a, str) and isinstance(b, str) else False, res
        raise ValueError(a)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    return a


def roundtrip(x, code):
    s1, n1 = huffman_encode(x, code)
    s2, n2 = huffman_encode(x, code, backend="python")
    assert s1 == s2 and n1 == n2
    assert n1 == total_bits(code, np.bincount(np.ravel(x), minlength=code.alphabet_size))
    assert len(s1) == (n1 + 7) // 8
    y = decode_both(s1, code, np.size(x), nbits=n1)
    assert y.dtype == (np.uint8 if code.alphabet_size <= 256 else np.uint16)
    np.testing.assert_array_equal(y, np.ravel(x))
    np.testing.assert_array_equal(decode_both(s1, code, np.size(x)), y)
    return s1, n1


# ----------------------------------------------------------------------------- known bytes


def test_known_code_stream_and_table():
    code = HuffmanCode.from_counts([8, 4, 2, 2])
    np.testing.assert_array_equal(code.lengths, [1, 2, 3, 3])
    np.testing.assert_array_equal(code.codes, [0b0, 0b10, 0b110, 0b111])
    assert code.lengths.dtype == np.uint8 and code.codes.dtype == np.uint32
    assert (code.alphabet_size, code.max_length, code.used) == (4, 3, 4)
    # 0 10 110 111 -> 01011011 1(0000000): MSB first, zero padding
    assert huffman_encode([0, 1, 2, 3], code) == (bytes([0b01011011, 0b10000000]), 9)
    # alphabet_size - 1 (uint16 LE), format 1 = nibbles, low nibble first
    assert code.to_bytes() == b"\x03\x00\x01\x21\x33"
    blob = encode([0, 1, 2, 3, 0, 0, 0, 1], alphabet_size=4)  # 0 10 110 111 0 0 0 10
    body = (
        b"NQHF\x01"
        + (5).to_bytes(4, "little")
        + b"\x03\x00\x01\x21\x33"
        + (8).to_bytes(8, "little")
        + (14).to_bytes(8, "little")
        + b"\x5b\x88"
    )
    assert blob == body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize("alphabet", [None, 1, 300])
def test_blob_of_no_symbols(alphabet):
    blob = encode(np.zeros(0, np.int64), alphabet)
    for be in BACKENDS:
        y = decode(blob, backend=be)
        assert y.shape == (0,) and y.dtype == (np.uint16 if alphabet == 300 else np.uint8)


def test_runs_table_format():
    lengths = np.zeros(1000, np.uint8)
    lengths[[3, 500]] = 1
    code = HuffmanCode(lengths)
    # 0 x3, 1, 0 x496, 1, 0 x499: runs with LEB128 (run - 2) varints
    assert code.to_bytes() == (b"\xe7\x03\x00" + b"\x80\x01" + b"\x01" + b"\x80\xee\x03" + b"\x01" + b"\x80\xf1\x03")
    assert HuffmanCode.from_bytes(code.to_bytes()) == code


def test_varint_is_leb128():
    # shared with the version-3 compressed file (npquant.compression.pipeline)
    assert [_varint(x) for x in (0, 1, 127, 128, 300, 2**63 - 1)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\xff" * 8 + b"\x7f",
    ]


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("alphabet", [1, 2, 3, 256, 65536])
@pytest.mark.parametrize("kind", ["geometric", "zipf", "uniform"])
def test_roundtrip_alphabets(alphabet, kind):
    rng = np.random.default_rng(alphabet)
    n = 3000 if alphabet < 65536 else 800
    x = skewed(rng, n, alphabet, kind)
    code = HuffmanCode.from_data(x, alphabet)
    assert code.alphabet_size == alphabet
    check_prefix_code(code)
    counts = np.bincount(x, minlength=alphabet)
    assert total_bits(code, counts) == huffman_cost(counts)
    roundtrip(x, code)
    np.testing.assert_array_equal(decode(encode(x, alphabet)), x)


def test_large_alphabet_all_used():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 50, 65536)
    code = HuffmanCode.from_counts(counts)
    check_prefix_code(code)
    assert total_bits(code, counts) == huffman_cost(counts)
    x = rng.permutation(np.repeat(np.arange(65536), 1))[:5000]
    s, nb = huffman_encode(x, code)
    np.testing.assert_array_equal(huffman_decode(s, code, x.size, nbits=nb), x)
    assert HuffmanCode.from_bytes(code.to_bytes()) == code


@pytest.mark.parametrize("alphabet", [1, 2, 3, 256, 65536])
def test_one_symbol_gets_a_one_bit_code(alphabet):
    sym = alphabet - 1
    x = np.full(21, sym)
    code = HuffmanCode.from_data(x, alphabet)
    assert code.used == 1 and code.lengths[sym] == 1 and code.codes[sym] == 0
    s, nb = roundtrip(x, code)
    assert (s, nb) == (b"\x00\x00\x00", 21)
    assert bits_per_symbol(code, x) == 1.0 and entropy_bits(x) == 0.0
    for ml in (1, 5, 32):
        assert HuffmanCode.from_data(x, alphabet, max_length=ml) == code
    # a 1 bit is not a code
    with pytest.raises(ValueError, match="invalid code for symbol 2 of 3 at bit 2"):
        decode_both(b"\x20", code, 3, nbits=3)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 100, 256, 1000, 4096])
def test_equal_counts_give_equal_lengths(n):
    code = HuffmanCode.from_counts(np.full(n, 7))
    lo = (n - 1).bit_length() - (0 if n & (n - 1) == 0 else 1)
    assert set(np.unique(code.lengths).tolist()) <= {lo, lo + 1}
    if n & (n - 1) == 0:
        assert np.all(code.lengths == lo)
    assert np.all(np.diff(code.lengths.astype(int)) >= 0)  # ties: higher symbols longer
    check_prefix_code(code)
    assert total_bits(code, np.full(n, 7)) == huffman_cost(np.full(n, 7))


def test_zero_counts_get_no_code():
    code = HuffmanCode.from_counts([0, 5, 0, 3, 1, 0])
    np.testing.assert_array_equal(code.lengths == 0, [1, 0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match=r"symbols \[0, 5\] have no code"):
        huffman_encode([1, 0, 5, 5], code)
    with pytest.raises(ValueError, match="have no code"):
        bits_per_symbol(code, [0, 1])


def test_fibonacci_counts_reach_32_bits_and_the_limit_holds():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    code = HuffmanCode.from_counts(fib[:33])  # the optimal code is exactly 32 bits deep
    assert code.max_length == 32
    assert total_bits(code, fib[:33]) == huffman_cost(fib[:33])
    check_prefix_code(code)
    x = np.concatenate([np.arange(33), np.arange(33)[::-1], [0, 1, 0, 1]])
    roundtrip(x, code)
    for k in (34, 40):  # optimal would be deeper: the format's 32-bit ceiling applies
        code = HuffmanCode.from_counts(fib[:k])
        assert code.max_length == 32
        check_prefix_code(code)
        roundtrip(np.arange(k), code)


@pytest.mark.parametrize("max_length", [1, 2, 3, 4, 5, 8, 12, 20])
def test_max_length_is_respected(max_length):
    rng = np.random.default_rng(max_length)
    for alphabet in (2, 3, 16, 200):
        if alphabet > 2**max_length:
            continue
        x = np.concatenate([skewed(rng, 2000, alphabet, "zipf"), np.arange(alphabet)])
        counts = np.bincount(x, minlength=alphabet)
        code = HuffmanCode.from_counts(counts, max_length=max_length)
        assert code.max_length <= max_length
        check_prefix_code(code)
        assert total_bits(code, counts) >= huffman_cost(counts)
        if HuffmanCode.from_counts(counts).max_length <= max_length:  # limit does not bind
            assert total_bits(code, counts) == huffman_cost(counts)
        roundtrip(x[:300], code)


@pytest.mark.parametrize("seed", range(12))
def test_length_limited_code_is_optimal_small(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    counts = rng.integers(1, 200, n) ** int(rng.integers(1, 3))
    for limit in range(max(1, (n - 1).bit_length()), 6):
        code = HuffmanCode.from_counts(counts, max_length=limit)
        assert code.max_length <= limit
        assert total_bits(code, counts) == limited_cost_bruteforce(counts, limit)


def test_max_length_too_short_and_bad_arguments():
    with pytest.raises(ValueError, match=r"max_length=2 is too short for 5 used symbols"):
        HuffmanCode.from_counts([1, 1, 1, 1, 1], max_length=2)
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 32\], got 33"):
        HuffmanCode.from_counts([1, 2], max_length=33)
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 32\], got 0"):
        HuffmanCode.from_counts([1, 2], max_length=0)
    with pytest.raises(TypeError, match="max_length must be an integer"):
        HuffmanCode.from_counts([1, 2], max_length=2.0)
    with pytest.raises(ValueError, match="counts has no non-zero entry"):
        HuffmanCode.from_counts([0, 0])
    with pytest.raises(ValueError, match="counts must be non-negative"):
        HuffmanCode.from_counts([3, -1])
    with pytest.raises(ValueError, match="counts must be a 1-D array of length 1..65536"):
        HuffmanCode.from_counts(np.ones(65537, np.int64))
    with pytest.raises(ValueError, match="counts must be a 1-D array"):
        HuffmanCode.from_counts([])
    with pytest.raises(TypeError, match="counts must be an integer array, got dtype float64"):
        HuffmanCode.from_counts([1.0, 2.0])
    with pytest.raises(ValueError, match="counts must sum to less than 2"):
        HuffmanCode.from_counts(np.array([2**62, 2**62], np.int64))
    with pytest.raises(ValueError, match="counts must sum to less than 2"):
        HuffmanCode.from_counts(np.array([2**63, 1], np.uint64))
    with pytest.raises(ValueError, match="symbols is empty"):
        HuffmanCode.from_data([])
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 4\)"):
        HuffmanCode.from_data([0, 4], alphabet_size=4)
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 65536\)"):
        HuffmanCode.from_data([-1, 2])
    with pytest.raises(ValueError, match=r"alphabet_size must be in \[1, 65536\]"):
        HuffmanCode.from_data([0], alphabet_size=65537)


def test_code_object_validates_lengths():
    with pytest.raises(ValueError, match=r"Kraft sum 3/4 != 1"):
        HuffmanCode([1, 2, 0])
    with pytest.raises(ValueError, match=r"Kraft sum 5/4 != 1"):
        HuffmanCode([1, 2, 2, 2])
    with pytest.raises(ValueError, match="a single used symbol must have length 1, got 3"):
        HuffmanCode([0, 3])
    with pytest.raises(ValueError, match="no symbol has a code"):
        HuffmanCode([0, 0])
    with pytest.raises(ValueError, match=r"lengths must lie in 0..32, got \[0, 33\]"):
        HuffmanCode([0, 33])
    code = HuffmanCode([2, 2, 1])
    assert code == HuffmanCode(np.array([2, 2, 1], np.uint8)) and hash(code) == hash(HuffmanCode([2, 2, 1]))
    assert repr(code) == "HuffmanCode(alphabet_size=3, used=3, max_length=2)"
    with pytest.raises(ValueError):
        code.lengths[0] = 1  # read-only
    with pytest.raises(AttributeError):
        code.lengths = np.array([1, 1], np.uint8)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "alphabet,kind",
    [(2, "geometric"), (16, "geometric"), (256, "zipf"), (256, "geometric"), (4096, "zipf"), (3, "uniform")],
)
def test_bits_per_symbol_within_one_bit_of_entropy(alphabet, kind):
    x = skewed(np.random.default_rng(5), 20000, alphabet, kind)
    code = HuffmanCode.from_data(x, alphabet)
    bps, h = bits_per_symbol(code, x), entropy_bits(x)
    assert h <= bps < h + 1
    assert bps <= fixed_length_bits(int(x.max()) + 1)
    counts = np.bincount(x, minlength=alphabet)
    assert bits_per_symbol(code, counts=counts) == bps
    assert entropy_bits(counts=counts) == h
    _, nb = huffman_encode(x, code)
    assert nb == round(bps * x.size)


def test_statistics_known_values_and_errors():
    assert entropy_bits([0, 1, 2, 3]) == 2.0
    assert entropy_bits(counts=[2, 0, 1, 1]) == 1.5
    assert entropy_bits(counts=[5]) == 0.0
    code = HuffmanCode.from_counts([2, 1, 1])
    assert bits_per_symbol(code, counts=[2, 1, 1]) == 1.5
    assert bits_per_symbol(code, [0, 0, 1, 2]) == 1.5
    assert [fixed_length_bits(n) for n in (1, 2, 3, 4, 5, 256, 257, 65536)] == [1, 1, 2, 2, 3, 8, 9, 16]
    with pytest.raises(TypeError, match="exactly one of symbols"):
        entropy_bits()
    with pytest.raises(TypeError, match="exactly one of symbols"):
        entropy_bits([1], counts=[1])
    with pytest.raises(ValueError, match="counts sums to 0"):
        entropy_bits(counts=[0, 0])
    with pytest.raises(ValueError, match="symbols is empty"):
        entropy_bits([])
    with pytest.raises(ValueError, match=r"counts must have one entry per symbol \(3\), got 2"):
        bits_per_symbol(code, counts=[1, 1])
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 3\)"):
        bits_per_symbol(code, [0, 3])


# ----------------------------------------------------------------------------- table


@pytest.mark.parametrize("alphabet", [1, 2, 3, 17, 256, 1000, 65536])
def test_table_roundtrip(alphabet):
    rng = np.random.default_rng(alphabet)
    for kind, ml in (("zipf", None), ("geometric", None), ("uniform", 15), ("zipf", 32)):
        x = skewed(rng, 2000, alphabet, kind)
        code = HuffmanCode.from_data(x, alphabet, max_length=ml)
        b = code.to_bytes()
        assert int.from_bytes(b[:2], "little") == alphabet - 1 and b[2] in (0, 1)
        back = HuffmanCode.from_bytes(b)
        assert back == code
        np.testing.assert_array_equal(back.codes, code.codes)
        assert len(b) <= 3 + max(1, alphabet)  # never more than a byte per symbol


def test_table_nibble_format_when_shorter():
    code = HuffmanCode.from_data(np.arange(256))  # all 8 bits: one run beats 128 nibble bytes
    assert code.to_bytes() == b"\xff\x00\x00\x88\xfe\x01"
    counts = np.random.default_rng(0).integers(1, 1000, 256)  # lengths vary symbol by symbol
    code = HuffmanCode.from_counts(counts, max_length=15)
    b = code.to_bytes()
    assert b[2] == 1 and len(b) == 3 + 128
    assert HuffmanCode.from_bytes(b) == code
    assert HuffmanCode.from_bytes(bytearray(b)) == code
    assert HuffmanCode.from_bytes(np.frombuffer(b, np.uint8)) == code


@pytest.mark.parametrize(
    "b,msg",
    [
        (b"", "code table is truncated: the header needs 3 bytes, got 0"),
        (b"\x03\x00", "code table is truncated: the header needs 3 bytes, got 2"),
        (b"\x03\x00\x02\x00", "unknown format byte 2; expected 0 .runs. or 1 .nibbles."),
        (b"\x03\x00\x01\x21", "code table is truncated: 4 nibble-packed lengths need 2 bytes, got 1"),
        (b"\x02\x00\x01\x21\x12", "the unused last nibble must be 0, got 1"),
        (b"\x03\x00\x00\x01\x02\x03", "code table is truncated: runs cover 3 of 4 code lengths"),
        (b"\x03\x00\x00\x01\x02\x83", "code table is truncated inside a run-length varint"),
        (b"\x03\x00\x00\x01\x02\x83\x80\x00", "overlong run-length varint"),
        (b"\x03\x00\x00\x81\x80\x80\x80\x01", "run-length varint longer than 3 bytes"),
        (b"\x03\x00\x00\x01\x02\x83\x01", "a run of 3 lengths overruns the alphabet .2 left of 4."),
        (b"\x01\x00\x00\x01\x21", "bad run byte 0x21 at offset 4 .length must be 0..32"),
        (b"\x01\x00\x00\x01\x41", "bad run byte 0x41 at offset 4"),
        (b"\x03\x00\x01\x21\x43", "code table: lengths do not form a complete prefix code: Kraft sum 15/16 != 1"),
        (b"\x03\x00\x01\x11\x33", "Kraft sum 5/4 != 1"),
        (b"\x01\x00\x01\x00", "code table: lengths: no symbol has a code"),
        (b"\x01\x00\x01\x20", "a single used symbol must have length 1, got 2"),
        (b"\x03\x00\x01\x21\x33\x00", "code table: 1 trailing byte.s. after the 5-byte table"),
    ],
)
def test_table_errors(b, msg):
    with pytest.raises(ValueError, match=msg):
        HuffmanCode.from_bytes(b)


def test_table_type_errors():
    with pytest.raises(TypeError, match="b must be bytes"):
        HuffmanCode.from_bytes("\x00\x00\x01")
    with pytest.raises(TypeError, match="b must be bytes or a 1-D uint8 array"):
        HuffmanCode.from_bytes(np.zeros(3, np.int8))


# ----------------------------------------------------------------------------- decoder errors


CODE4 = HuffmanCode.from_counts([8, 4, 2, 2])  # 0, 10, 110, 111


@pytest.mark.parametrize(
    "stream,count,nbits,msg",
    [
        (b"\x5b\x80", 5, 9, "symbol 4 of 5 starts at bit 9 and does not end within the 9 bits"),
        (b"\x5b\xff", 7, None, "symbol 6 of 7 starts at bit 15 and does not end within the 16 bits"),
        (b"\x5b", 4, None, "symbol 3 of 4 starts at bit 6 and does not end within the 8 bits"),
        (b"\x5b", 4, 8, "symbol 3 of 4 starts at bit 6 and does not end within the 8 bits"),
        (b"\x5b\x80", 4, 8, "stream has 2 bytes, but nbits=8 needs exactly 1"),
        (b"\x5b", 4, 9, r"stream has 1 bytes, but nbits=9 needs exactly 2 \(stream is truncated\)"),
        (b"\x5b\x80", 4, 10, "4 symbols end at bit 9, expected nbits=10"),
        (b"\x5b\x80", 3, 9, "3 symbols end at bit 6, expected nbits=9"),
        (b"\x5b\x80", 3, None, r"3 symbols end at bit 6 \(byte 1\), but the stream has 2 bytes"),
        (b"\x5b\xc0", 4, 9, "non-zero padding bits after bit 9"),
        (b"\x5b\x81", 4, None, "non-zero padding bits after bit 9"),
        (b"\x5b\x80\x00", 4, None, r"end at bit 9 \(byte 2\), but the stream has 3 bytes"),
        (b"\x00", 9, None, "9 symbols need at least 9 bits, the stream has 8"),
        (b"", 1, None, "1 symbols need at least 1 bits, the stream has 0"),
        (b"\x00", 2**62, 8, "symbols need at least"),
    ],
)
def test_decode_errors(stream, count, nbits, msg):
    with pytest.raises(ValueError, match=msg):
        decode_both(stream, CODE4, count, nbits=nbits)


def test_decode_edge_cases_and_argument_errors():
    assert decode_both(b"", CODE4, 0).shape == (0,)
    assert decode_both(b"", CODE4, 0, nbits=0).dtype == np.uint8
    assert huffman_encode(np.zeros(0, np.int64), CODE4) == (b"", 0)
    assert huffman_encode([], CODE4, backend="python") == (b"", 0)
    np.testing.assert_array_equal(decode_both(b"\x5b\x80", CODE4, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(huffman_decode(np.frombuffer(b"\x5b\x80", np.uint8), CODE4, 4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'python'"):
        huffman_decode(b"", CODE4, 0, backend="numpy")
    with pytest.raises(ValueError, match=r"count must be in \[0, inf\]"):
        huffman_decode(b"", CODE4, -1)
    with pytest.raises(ValueError, match=r"nbits must be in \[0, inf\]"):
        huffman_decode(b"", CODE4, 0, nbits=-1)
    with pytest.raises(TypeError, match="code must be a HuffmanCode"):
        huffman_decode(b"", [1, 2], 0)
    with pytest.raises(TypeError, match="stream must be bytes"):
        huffman_decode([0, 1], CODE4, 0)
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 4\)"):
        huffman_encode([0, 4], CODE4)
    with pytest.raises(TypeError, match="symbols must be an integer array"):
        huffman_encode([0.0], CODE4)
    # 2-D symbols are read in C order
    s, nb = huffman_encode(np.array([[0, 1], [2, 3]]), CODE4)
    assert (s, nb) == (b"\x5b\x80", 9)


def test_decode_uint16_for_large_alphabets():
    code = HuffmanCode.from_counts(np.ones(257, np.int64))
    s, nb = huffman_encode([256, 0, 255], code)
    y = decode_both(s, code, 3, nbits=nb)
    assert y.dtype == np.uint16
    np.testing.assert_array_equal(y, [256, 0, 255])


def run_kernel(stream, nbits, count, code):
    """``_kernels.huffman.decode`` called directly: ((status, index, bit), symbols)."""
    info = np.zeros(3, np.int64)
    out = np.zeros(count, code.dtype)
    kh.decode(np.frombuffer(stream, np.uint8), np.int64(nbits), np.int64(count), *_kernel_tables(code), out, info)
    return tuple(info.tolist()), out


def _kernel_tables(code):
    k, lut_sym, lut_len, first, cnt, offset, syms, m_sym, m_bits, m_n = code._tables
    return (np.int64(k), lut_sym, lut_len, first, cnt, offset, syms, np.int64(code.max_length), m_sym, m_bits, m_n)


def test_kernels_return_the_same_status_as_the_twin():
    """The kernel's (status, index, bit) on invalid and truncated streams, directly."""
    code = HuffmanCode.from_counts([5])
    for stream, nbits, want in (
        (b"\x00", 8, (kh.OK, 8, 8)),
        (b"\x04", 8, (kh.INVALID, 5, 5)),
        (b"\x00", 3, (kh.TRUNCATED, 3, 3)),
    ):
        info, out = run_kernel(stream, nbits, 8, code)
        out2 = np.zeros(8, np.uint8)
        assert info == want == _decode_python(stream, nbits, 8, code, out2)
        np.testing.assert_array_equal(out[: want[1]], out2[: want[1]])


def test_kernel_status_on_long_streams():
    """Long streams take the multi-symbol path: errors far into them, or at the start of
    a group, give the twin's (status, index, bit)."""
    one = HuffmanCode.from_counts([5])  # symbol 0 = "0"; any 1 bit is an invalid code
    for flip in (0, 1, 7, 8, 100, 255, 256, 500, 793, 799):
        arr = np.zeros(100, np.uint8)
        arr[flip // 8] = 0x80 >> (flip % 8)
        stream = arr.tobytes()
        for nbits, count in ((800, 800), (800, 700), (790, 795), (800, 801)):
            info, out = run_kernel(stream, nbits, count, one)
            out2 = np.zeros(count, np.uint8)
            assert info == _decode_python(stream, nbits, count, one, out2), (flip, nbits, count)
            np.testing.assert_array_equal(out[: info[1]], out2[: info[1]])


@pytest.mark.parametrize("kind", ["uniform4", "lenet", "single", "two", "deep", "wide"])
def test_multi_symbol_table(kind):
    """Every entry of the k-bit multi-symbol table: its symbols decode its bits, each code
    lies wholly within them, and no further whole code fits (checked against the twin)."""
    counts = {
        "uniform4": [1, 1, 1, 1],
        "lenet": [40, 253, 817, 1334, 1792, 3689, 3900, 4043, 3859, 3591, 2218, 1890, 1403, 811, 293, 67],
        "single": [0, 0, 7],
        "two": [3, 5],
        "deep": np.floor(1.7 ** np.arange(25)).astype(np.int64),
        "wide": np.arange(1, 301),
    }[kind]
    code = HuffmanCode.from_counts(counts)
    k, lut_sym, lut_len, *_, m_sym, m_bits, m_n = code._tables
    assert m_sym.shape == (1 << k, kh.MULTI) and m_sym.dtype == code.dtype
    assert k * kh.GROUP <= 57
    sym_of = {format(int(code.codes[t]), f"0{code.lengths[t]}b"): int(t) for t in np.flatnonzero(code.lengths)}
    lens = sorted({len(w) for w in sym_of})

    def first_code(bits):  # (length, symbol) of the code that is a prefix of bits, or (0, 0)
        hits = [(n, sym_of[bits[:n]]) for n in lens if n <= len(bits) and bits[:n] in sym_of]
        return hits[0] if hits else (0, 0)

    for v in range(1 << k):
        bits = format(v, f"0{k}b")
        n = int(m_n[v])
        words = [format(int(code.codes[t]), f"0{code.lengths[t]}b") for t in m_sym[v, :n]]
        assert "".join(words) == bits[: int(m_bits[v])]
        assert all(m_sym[v, n:] == 0)
        if n < kh.MULTI:  # no whole code follows
            assert first_code(bits[int(m_bits[v]) :]) == (0, 0)
        assert (lut_len[v], lut_sym[v]) == first_code(bits)


def _long_cases():
    rng = np.random.default_rng(7)
    lenet = np.array(
        [40, 253, 817, 1334, 1792, 3689, 3900, 4043, 3859, 3591, 2218, 1890, 1403, 811, 293, 67], np.float64
    )
    yield "lenet", rng.choice(16, 3001, p=lenet / lenet.sum()), 16, None
    yield "single", np.full(2000, 3), 5, None
    yield "two", rng.integers(0, 2, 1999), 2, None
    yield "uniform256", rng.integers(0, 256, 1500), 256, None
    yield "uint16", rng.integers(0, 300, 1200), 300, None
    yield "geometric", skewed(rng, 2500, 40), 40, None
    yield "limited", skewed(rng, 2500, 40, "zipf"), 40, 7
    # deep codes up to 32 bits, long codes scattered among short ones
    fib = np.floor(1.7 ** np.arange(40)).astype(np.int64)
    deep = HuffmanCode.from_counts(fib)
    x = np.where(rng.random(1500) < 0.05, rng.integers(0, 40, 1500), 39 - rng.integers(0, 4, 1500))
    yield "deep", x, deep, None


@pytest.mark.parametrize("case", list(_long_cases()), ids=lambda c: c[0])
def test_long_streams_equal_the_twin(case):
    """Streams long enough for the multi-symbol path: every count near the end and every
    nbits, with and without nbits; the same symbols or the same error as the twin."""
    _, x, alphabet, ml = case
    code = alphabet if isinstance(alphabet, HuffmanCode) else HuffmanCode.from_data(x, alphabet, max_length=ml)
    if isinstance(alphabet, HuffmanCode):
        assert code.max_length == 32
    s, nb = roundtrip(x, code)
    n = x.size
    for count in (n - 40, n - 17, n - 16, n - 15, n - 1, n + 1, n + 16):
        for nbits in (None, nb, nb - 1, nb - 8):
            if nbits is not None and (nbits + 7) // 8 != len(s):
                continue
            _attempt(s, code, count, nbits)
    # fewer symbols than the stream holds: the multi-symbol path stops on the count
    for count in range(n // 2, n // 2 + 17):
        _attempt(s, code, count)
    # a shorter stream: cut after each of the last bytes
    for cut in range(max(0, len(s) - 10), len(s)):
        _attempt(s[:cut], code, n)
        _attempt(s[:cut], code, n, nbits=8 * cut)


def test_stream_as_a_non_contiguous_array():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 16, 500)
    code = HuffmanCode.from_data(x, 16)
    s, nb = huffman_encode(x, code)
    wide = np.zeros((len(s), 2), np.uint8)
    wide[:, 0] = np.frombuffer(s, np.uint8)
    view = wide[:, 0]
    assert not view.flags.c_contiguous
    for be in BACKENDS:
        np.testing.assert_array_equal(huffman_decode(view, code, x.size, nbits=nb, backend=be), x)


# ----------------------------------------------------------------------------- corruption


def _real_streams(n_streams, seed):
    rng = np.random.default_rng(seed)
    for t in range(n_streams):
        alphabet = int(rng.choice([1, 2, 3, 5, 16, 40, 256, 300]))
        n = int(rng.integers(1, 120))
        x = skewed(rng, n, alphabet, ["geometric", "zipf", "uniform"][t % 3])
        ml = None if t % 4 else int(max(1, (int(x.max())).bit_length()) + rng.integers(0, 3))
        code = HuffmanCode.from_data(x, alphabet, max_length=ml)
        if t % 5 == 4:  # deep codes (up to 32 bits): the decoder's slow path past the LUT
            k = int(rng.integers(12, 45))
            code = HuffmanCode.from_counts(
                np.floor(1.7 ** np.arange(k)).astype(np.int64), max_length=int(rng.choice([32, 20, 14]))
            )
            x = rng.integers(0, k, n)
        s, nb = huffman_encode(x, code)
        yield rng, x, code, s, nb


def _attempt(stream, code, count, nbits=None):
    """Decode a corrupted stream: a ValueError (same on both backends) or ``count``
    symbols of the right dtype. Returns the array or None."""
    try:
        y = decode_both(stream, code, count, nbits=nbits)
    except ValueError:
        return None
    assert y.shape == (count,) and y.dtype == code.dtype
    assert np.all(code.lengths[y] > 0)
    return y


def test_corrupt_streams_flip_truncate_append():
    caught = {"flip": 0, "trunc": 0, "append": 0}
    total = {"flip": 0, "trunc": 0, "append": 0}
    for rng, x, code, s, nb in _real_streams(60, 11):
        n = x.size
        arr = np.frombuffer(s, np.uint8)
        for _ in range(4):  # flip 1-3 random bits
            c = arr.copy()
            for p in rng.integers(0, nb, int(rng.integers(1, 4))):
                c[p // 8] ^= np.uint8(0x80 >> (p % 8))
            for nbits in (nb, None):
                total["flip"] += 1
                caught["flip"] += _attempt(c.tobytes(), code, n, nbits) is None
        for _ in range(3):  # truncate: with nbits, always caught
            cut = int(rng.integers(0, len(s)))
            t = s[:cut]
            with pytest.raises(ValueError):
                decode_both(t, code, n, nbits=nb)
            for nbits in (8 * cut, max(0, 8 * cut - int(rng.integers(0, 8)))):
                if (nbits + 7) // 8 == cut:
                    with pytest.raises(ValueError, match="truncated"):
                        decode_both(t, code, n, nbits=nbits)
            total["trunc"] += 1
            caught["trunc"] += _attempt(t, code, n) is None
        for _ in range(2):  # append garbage bytes
            g = s + rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
            with pytest.raises(ValueError):
                decode_both(g, code, n, nbits=nb)
            total["append"] += 1
            caught["append"] += _attempt(g, code, n) is None
        # wrong counts
        _attempt(s, code, n + 1, nb)
        assert _attempt(s, code, max(0, n - 1), nb) is None
    assert caught["append"] == total["append"]  # whole extra bytes are always seen
    assert caught["trunc"] >= total["trunc"] * 0.9


def test_corrupt_tables_and_blobs():
    for rng, x, code, s, nb in _real_streams(40, 12):
        blob = encode(x, code.alphabet_size, None)
        np.testing.assert_array_equal(decode(blob), x)
        t = code.to_bytes()
        for trial in range(8):  # corrupt the table bytes; or a valid table of other lengths
            c = bytearray(t)
            if trial < 6:
                i = int(rng.integers(0, len(c)))
                c[i] = (c[i] + int(rng.integers(1, 256))) % 256
            else:
                c = HuffmanCode(rng.permutation(code.lengths)).to_bytes()
            try:
                other = HuffmanCode.from_bytes(bytes(c))
            except ValueError:
                continue
            check_prefix_code(other)
            try:
                encoded = huffman_encode(x, other)
            except ValueError:  # a used symbol lost its code
                encoded = None
            _attempt(s, other, x.size, nb)
            _attempt(s, other, x.size)
            if encoded is not None:
                np.testing.assert_array_equal(decode_both(encoded[0], other, x.size, encoded[1]), x)
        for cut in sorted(set(rng.integers(0, len(blob), 8).tolist())):  # truncated blob
            with pytest.raises(ValueError, match="truncated|table"):
                decode(blob[:cut])
        with pytest.raises(ValueError, match="trailing byte"):
            decode(blob + b"\x00")
        for _ in range(10):  # random corruption anywhere: the CRC-32 catches it
            c = bytearray(blob)
            for i in rng.integers(0, len(c), int(rng.integers(1, 4))):
                c[i] ^= int(rng.integers(1, 256))
            if bytes(c) == blob:
                continue
            for be in BACKENDS:
                with pytest.raises(ValueError, match="blob"):
                    decode(bytes(c), backend=be)


def _blob(table, count, nbits, stream, crc=None):
    body = (
        b"NQHF\x01"
        + len(table).to_bytes(4, "little")
        + table
        + count.to_bytes(8, "little")
        + nbits.to_bytes(8, "little")
        + stream
    )
    return body + (zlib.crc32(body) if crc is None else crc).to_bytes(4, "little")


@pytest.mark.parametrize(
    "b,msg",
    [
        (b"NQHF\x01\x05\x00", "blob is truncated: the header needs 9 bytes, got 7"),
        (b"NQHX\x01\x05\x00\x00\x00", "blob does not start with the magic"),
        (b"NQHF\x02\x05\x00\x00\x00", "blob has version 2, expected 1"),
        (b"NQHF\x01\x05\x00\x00\x00\x03\x00", "blob is truncated: the code table needs 5 bytes, got 2"),
        (
            b"NQHF\x01\x05\x00\x00\x00\x03\x00\x01\x21\x33" + bytes(15),
            "blob is truncated: count and nbits need 16 bytes, got 15",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x33", 4, 9, b"\x5b\x80")[:-1],
            r"blob is truncated: the stream \(nbits=9\) and its CRC-32 need 6 bytes, got 5",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x33", 4, 9, b"\x5b\x80") + b"\x00",
            r"blob has 1 trailing byte\(s\) after the stream and its CRC-32",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x33", 4, 2**64 - 1, b""),
            "the stream .nbits=18446744073709551615. and its CRC-32 need 2305843009213693956 bytes",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x33", 4, 9, b"\x5b\x80", crc=0x12345678),
            "blob is corrupt: CRC-32 is 0x[0-9a-f]{8}, the blob says 0x12345678",
        ),
        (
            _blob(b"\x03\x00\x01\x21", 4, 9, b"\x5b\x80"),
            "blob code table is truncated: 4 nibble-packed lengths need 2 bytes, got 1",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x33\x00", 4, 9, b"\x5b\x80"),
            "blob code table: the table ends at byte 5, the header says 6",
        ),
        (
            _blob(b"\x03\x00\x01\x21\x43", 4, 9, b"\x5b\x80"),
            "blob code table: lengths do not form a complete prefix code: Kraft sum 15/16",
        ),
        (_blob(b"\x03\x00\x01\x21\x33", 2**64 - 1, 9, b"\x5b\x80"), "18446744073709551615 symbols need at least"),
        (_blob(b"\x03\x00\x01\x21\x33", 4, 9, b"\x5b\xc0"), "non-zero padding bits after bit 9"),
        (
            _blob(b"\x03\x00\x01\x21\x33", 5, 9, b"\x5b\x80"),
            "symbol 4 of 5 starts at bit 9 and does not end within the 9 bits",
        ),
    ],
)
def test_blob_errors(b, msg):
    with pytest.raises(ValueError, match=msg):
        decode(b)


# ----------------------------------------------------------------------------- properties


symbol_lists = st.integers(1, 300).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), min_size=1, max_size=60))
)


@given(data=symbol_lists, ml=st.one_of(st.none(), st.integers(1, 32)))
def test_property_roundtrip(data, ml):
    alphabet, xs = data
    x = np.array(xs)
    used = np.unique(x).size
    if ml is not None and used > 2**ml:
        with pytest.raises(ValueError, match="too short"):
            HuffmanCode.from_data(x, alphabet, max_length=ml)
        return
    code = HuffmanCode.from_data(x, alphabet, max_length=ml)
    check_prefix_code(code)
    if ml is not None:
        assert code.max_length <= ml
    counts = np.bincount(x, minlength=alphabet)
    if ml is None:
        assert total_bits(code, counts) == huffman_cost(counts)
    # more frequent symbols never get longer codes
    u = np.flatnonzero(counts)
    cu, lu = counts[u], code.lengths[u].astype(int)
    assert not np.any((cu[:, None] < cu[None, :]) & (lu[:, None] < lu[None, :]))
    # ties: the higher symbol never gets the shorter code
    assert not np.any((cu[:, None] == cu[None, :]) & (u[:, None] < u[None, :]) & (lu[:, None] > lu[None, :]))
    roundtrip(x, code)
    assert HuffmanCode.from_bytes(code.to_bytes()) == code
    np.testing.assert_array_equal(decode(encode(x, alphabet, ml), backend="python"), x)


@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_property_any_lengths_either_valid_or_rejected(lengths):
    try:
        code = HuffmanCode(lengths)
    except ValueError as exc:
        assert "lengths" in str(exc)
        return
    check_prefix_code(code)
    assert HuffmanCode.from_bytes(code.to_bytes()) == code


@given(b=st.binary(max_size=40))
def test_property_arbitrary_bytes_never_crash(b):
    for data in (b, b"NQHF\x01" + b):
        try:
            code = HuffmanCode.from_bytes(data)
        except ValueError:
            pass
        else:
            check_prefix_code(code)
        try:
            y = decode(data, backend="python")
        except ValueError:
            continue
        np.testing.assert_array_equal(decode(data), y)


@settings(max_examples=50)
@given(data=symbol_lists, seed=st.integers(0, 2**32 - 1), nflip=st.integers(1, 8), extra=st.integers(-3, 3))
def test_property_corrupt_stream(data, seed, nflip, extra):
    alphabet, xs = data
    x = np.array(xs)
    code = HuffmanCode.from_data(x, alphabet)
    s, nb = huffman_encode(x, code)
    rng = np.random.default_rng(seed)
    arr = np.frombuffer(s, np.uint8).copy()
    if nb:
        for p in rng.integers(0, nb, nflip):
            arr[p // 8] ^= np.uint8(0x80 >> (p % 8))
    c = arr.tobytes()
    for count in (x.size, max(0, x.size + extra)):
        for nbits in (nb, None, max(0, nb + extra)):
            _attempt(c, code, count, nbits)


def test_encode_and_decode_are_deprecated_names_of_the_blob_pair():
    import npquant.compression.huffman as huffman

    for old, new in (("encode", "encode_blob"), ("decode", "decode_blob")):
        with pytest.warns(DeprecationWarning, match=f"huffman.{old} is deprecated: it is now {new}"):
            assert getattr(huffman, old) is getattr(huffman, new)
    with pytest.raises(AttributeError, match="no attribute 'encode_stream'"):
        huffman.encode_stream
