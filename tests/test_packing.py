"""Bit packing (npquant.compression.packing): layout, kernel == twin, peers, errors, signed maps.

Runs with the JIT on and with NUMBA_DISABLE_JIT=1 (the kernels then run as plain Python,
so the arrays here stay small).
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant._kernels import packing as _kernels
from npquant.compression.packing import (
    PACK_ORDERS,
    PackedArray,
    _unpack_numpy,
    from_unsigned,
    pack,
    pack_bits,
    packed_nbytes,
    to_unsigned,
    unpack,
    unpack_bits,
)

BITS = range(1, 9)
BACKENDS = ("numba", "numpy")
LENGTHS = (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 101, 1000)


def _oracle_pack(values, bits, order):
    """The layout definition, one bit at a time."""
    n = len(values)
    out = [0] * ((n * bits + 7) // 8)
    for i, v in enumerate(int(x) for x in values):
        for k in range(bits):  # bit k of the value
            j = i * bits + (k if order == "lsb" else bits - 1 - k)  # its stream position
            if (v >> k) & 1:
                out[j // 8] |= 1 << (j % 8 if order == "lsb" else 7 - j % 8)
    return np.array(out, dtype=np.uint8)


def _both_pack(values, bits, order):
    a = pack_bits(values, bits, order=order, backend="numba")
    b = pack_bits(values, bits, order=order, backend="numpy")
    assert a.dtype == b.dtype == np.uint8 and a.ndim == 1
    np.testing.assert_array_equal(a, b)
    return a


def _both_unpack(data, bits, count, order, **kw):
    a = unpack_bits(data, bits, count, order=order, backend="numba", **kw)
    b = unpack_bits(data, bits, count, order=order, backend="numpy", **kw)
    assert a.dtype == b.dtype == np.uint8 and a.shape == (count,)
    np.testing.assert_array_equal(a, b)
    return a


# ---- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, bits, lsb, msb",
    [
        # the example: the first 2-bit value sits in bits 0-1 of byte 0
        ([1, 2, 3, 0], 2, [0b00_11_10_01], [0b01_10_11_00]),  # 0x39 and 0x6C
        ([0xA, 0x5], 4, [0x5A], [0xA5]),
        ([0xA, 0x5, 0x3], 4, [0x5A, 0x03], [0xA5, 0x30]),
        # 3 bits straddle bytes: stream 101 011 111 (+ 7 zero padding bits)
        ([5, 3, 7], 3, [0b11_011_101, 0b0000000_1], [0b101_011_11, 0b1_0000000]),
        ([1, 0, 0, 0, 0, 0, 0, 0, 1], 1, [0x01, 0x01], [0x80, 0x80]),
        ([1], 7, [0x01], [0x02]),
        ([0x7F, 0x01], 7, [0xFF, 0x00], [0xFE, 0x04]),
        ([0x1F, 0x01], 5, [0x3F, 0x00], [0xF8, 0x40]),
        ([0x2A, 0x15], 6, [0x6A, 0x05], [0xA9, 0x50]),
        ([200, 7], 8, [200, 7], [200, 7]),
        ([], 3, [], []),
    ],
)
def test_byte_layout_examples(values, bits, lsb, msb):
    for order, expected in (("lsb", lsb), ("msb", msb)):
        np.testing.assert_array_equal(_oracle_pack(values, bits, order), expected)
        got = _both_pack(np.array(values, dtype=np.int64), bits, order)
        np.testing.assert_array_equal(got, np.array(expected, dtype=np.uint8))
        np.testing.assert_array_equal(_both_unpack(got, bits, len(values), order), values)
    assert pack_bits(np.array(values, np.int64), bits).tolist() == lsb  # lsb is the default


@pytest.mark.parametrize("order", PACK_ORDERS)
@pytest.mark.parametrize("bits", BITS)
def test_round_trip_and_oracle_every_width(bits, order):
    rng = np.random.default_rng(bits)
    for n in LENGTHS:
        v = rng.integers(0, 1 << bits, n).astype(np.uint8)
        v[: min(n, 3)] = (1 << bits) - 1  # extremes
        data = _both_pack(v, bits, order)
        assert data.shape == (packed_nbytes(n, bits),) == ((n * bits + 7) // 8,)
        if n <= 101:
            np.testing.assert_array_equal(data, _oracle_pack(v, bits, order))
        np.testing.assert_array_equal(_both_unpack(data, bits, n, order), v)
        np.testing.assert_array_equal(_both_unpack(data.tobytes(), bits, n, order), v)


@pytest.mark.parametrize("order", PACK_ORDERS)
@pytest.mark.parametrize("bits", BITS)
def test_unpack_kernel_equals_twin_on_any_bytes(bits, order):
    # every byte value, in words of every alignment, and counts that end anywhere in a
    # group; the kernel ignores padding bits (the wrapper checks them), as does the twin
    rng = np.random.default_rng(10 + bits)
    data = np.concatenate([np.arange(256), rng.integers(0, 256, 3 * 64 + 5)]).astype(np.uint8)
    msb = order == "msb"
    for count in (0, 1, 7, 8, 9, 63, 64, 65, 8 * 37 + 5, data.size * 8 // bits):
        d = data[: (count * bits + 7) // 8]
        out = np.empty(count, np.uint8)
        _kernels.unpack(d, bits, count, msb, out)
        np.testing.assert_array_equal(out, _unpack_numpy(d, bits, count, msb))
    # every byte value at every position of a 1-, 2- or 4-bit group, checked value by value
    if 8 % bits == 0:
        per = 8 // bits
        u = unpack_bits(np.arange(256, dtype=np.uint8), bits, 256 * per, order=order)
        shifts = [8 - bits - j * bits if msb else j * bits for j in range(per)]
        want = [(d >> s) & ((1 << bits) - 1) for d in range(256) for s in shifts]
        np.testing.assert_array_equal(u, want)


@pytest.mark.parametrize("bits", BITS)
def test_unpack_unaligned_and_strided_data(bits):
    rng = np.random.default_rng(20 + bits)
    v = rng.integers(0, 1 << bits, 8 * 50 + 3).astype(np.uint8)
    for order in PACK_ORDERS:
        data = pack_bits(v, bits, order=order)
        for off in range(1, 8):  # word reads at every byte offset
            buf = np.zeros(data.size + off, np.uint8)
            buf[off:] = data
            np.testing.assert_array_equal(_both_unpack(buf[off:], bits, v.size, order), v)
        spread = np.zeros(2 * data.size, np.uint8)
        spread[::2] = data
        np.testing.assert_array_equal(_both_unpack(spread[::2], bits, v.size, order), v)
        np.testing.assert_array_equal(_both_unpack(np.ascontiguousarray(data[::-1])[::-1], bits, v.size, order), v)


@pytest.mark.parametrize("order", PACK_ORDERS)
def test_orders_are_mirrors(order):
    # msb is lsb with every byte bit-reversed and every value bit-reversed
    rng = np.random.default_rng(5)
    for bits in BITS:
        v = rng.integers(0, 1 << bits, 37)
        rev = np.array([int(format(int(x), f"0{bits}b")[::-1], 2) for x in v])
        lsb = pack_bits(rev, bits, order="lsb")
        msb = pack_bits(v, bits, order="msb")
        byte_rev = np.array([int(format(int(x), "08b")[::-1], 2) for x in lsb], np.uint8)
        np.testing.assert_array_equal(msb, byte_rev)


def test_input_dtypes_shapes_and_strides():
    rng = np.random.default_rng(6)
    base = rng.integers(0, 8, (6, 10))
    ref = pack_bits(np.ascontiguousarray(base).reshape(-1).astype(np.uint8), 3)
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
        np.testing.assert_array_equal(_both_pack(base.astype(dt), 3, "lsb"), ref)
    np.testing.assert_array_equal(pack_bits(base.tolist(), 3), ref)
    for view in (base[:, ::3], base.T, base[::-1, 1], np.asfortranarray(base)):
        assert view is not base
        flat = np.ascontiguousarray(view).reshape(-1)
        for order in PACK_ORDERS:
            np.testing.assert_array_equal(_both_pack(view, 3, order), _oracle_pack(flat, 3, order))
    np.testing.assert_array_equal(pack_bits(np.int64(5), 3), [5])  # 0-d: one value
    # non-contiguous packed data
    data = pack_bits(base, 3)
    spread = np.zeros(2 * data.size, np.uint8)
    spread[::2] = data
    assert not spread[::2].flags.c_contiguous
    np.testing.assert_array_equal(_both_unpack(spread[::2], 3, base.size, "lsb"), base.reshape(-1))
    np.testing.assert_array_equal(unpack_bits(bytearray(data.tobytes()), 3, base.size), base.reshape(-1))


# ---- peers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 333])
def test_one_bit_matches_numpy_packbits(n):
    v = np.random.default_rng(n).integers(0, 2, n).astype(np.uint8)
    for order, bitorder in (("lsb", "little"), ("msb", "big")):
        data = _both_pack(v, 1, order)
        np.testing.assert_array_equal(data, np.packbits(v, bitorder=bitorder))
        np.testing.assert_array_equal(_both_unpack(data, 1, n, order), np.unpackbits(data, count=n, bitorder=bitorder))


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_matches_onnx_sub_byte_tensors(n):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(n)
    cases = [(TP.UINT4, 4, False), (TP.INT4, 4, True)]
    if hasattr(TP, "UINT2"):
        cases += [(TP.UINT2, 2, False), (TP.INT2, 2, True)]
    for ttype, bits, signed in cases:
        if signed:
            vals = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n)
            u = to_unsigned(vals, bits, signed="twos")
        else:
            vals = rng.integers(0, 1 << bits, n)
            u = vals
        ours = _both_pack(u, bits, "lsb")
        # make_tensor stores the packed bytes one per int32_data entry, first value low
        t = helper.make_tensor("t", ttype, [n], vals.tolist())
        np.testing.assert_array_equal(np.array(t.int32_data, dtype=np.uint8), ours)
        # and a tensor built from our bytes reads back as the values
        raw = helper.make_tensor("r", ttype, [n], ours.tobytes(), raw=True)
        np.testing.assert_array_equal(numpy_helper.to_array(raw).astype(np.int64), vals)
        back = _both_unpack(ours, bits, n, "lsb")
        if signed:
            back = from_unsigned(back, bits, signed="twos")
        np.testing.assert_array_equal(back, vals)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    vals = rng.integers(0, 16, n)
    t = onnx.numpy_helper.from_array(vals.astype(ml_dtypes.uint4))
    assert t.raw_data == pack_bits(vals, 4).tobytes()


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_out_of_range_is_an_error(backend):
    with pytest.raises(ValueError, match=r"values\[3\] = 4 does not fit in 2 unsigned bit"):
        pack_bits([0, 1, 3, 4, 9], 2, backend=backend)
    with pytest.raises(ValueError, match=r"values\[1\] = -1 .*allowed 0\.\.7"):
        pack_bits(np.array([0, -1, 2], np.int8), 3, backend=backend)
    with pytest.raises(ValueError, match=r"values\[1, 2\] \(flat index 5\) = 256"):
        pack_bits(np.array([[0, 1, 2], [3, 4, 256]]), 8, backend=backend)
    with pytest.raises(ValueError, match="= 18446744073709551615"):
        pack_bits(np.array([2**64 - 1], np.uint64), 8, backend=backend)
    with pytest.raises(ValueError, match="values"):
        pack(np.full((2, 2), 2), 1, backend=backend)


def test_signed_codes_point_to_to_unsigned():
    """pack_bits(quantize(...)) with a signed spec: the error names the exported helper,
    and following it round-trips the codes."""
    import npquant

    x = np.array([-1.0, -0.3, 0.2, 1.0], np.float32)
    qp = npquant.fit_qparams(x, npquant.QuantSpec(bits=4, symmetric=True))
    q = npquant.quantize(x, qp)
    assert q.min() < 0
    with pytest.raises(
        ValueError,
        match=r"values\[0\] = -7 does not fit.*npquant\.to_unsigned\(values, bits\)"
        r".*npquant\.from_unsigned",
    ):
        npquant.pack_bits(q, 4)
    with pytest.raises(ValueError, match="to_unsigned"):
        npquant.pack(q, 4)
    packed = npquant.pack_bits(npquant.to_unsigned(q, 4), 4)
    back = npquant.from_unsigned(npquant.unpack_bits(packed, 4, q.size), 4)
    np.testing.assert_array_equal(back, q)
    assert {"to_unsigned", "from_unsigned"} <= set(npquant.__all__)
    # a too-large unsigned value is not told to map signed codes
    with pytest.raises(ValueError) as exc:
        npquant.pack_bits([16], 4)
    assert "to_unsigned" not in str(exc.value)


@pytest.mark.parametrize(
    "values, exc, match",
    [
        (np.array([0.0, 1.0]), TypeError, "values must be an integer array, got dtype float64"),
        ([0.5], TypeError, "values must be an integer array"),
        (np.array([True, False]), TypeError, "astype"),
        (np.array(["1"]), TypeError, "values must be an integer array"),
    ],
)
def test_non_integer_values_are_type_errors(values, exc, match):
    with pytest.raises(exc, match=match):
        pack_bits(values, 4)
    with pytest.raises(exc, match=match):
        to_unsigned(values, 4)


def test_bad_arguments():
    v = np.array([1, 0, 1], np.uint8)
    for bits in (0, 9, -1):
        with pytest.raises(ValueError, match=r"bits must be in \[1, 8\]"):
            pack_bits(v, bits)
        with pytest.raises(ValueError, match=r"bits must be in \[1, 8\]"):
            unpack_bits(b"\x05", bits, 1)
    for bits in (2.0, True, "4", None):
        with pytest.raises(TypeError, match="bits must be an integer"):
            pack_bits(v, bits)
    for order in ("little", "LSB", None):
        with pytest.raises(ValueError, match="order must be one of 'lsb', 'msb'"):
            pack_bits(v, 1, order=order)
        with pytest.raises(ValueError, match="order must be one of"):
            unpack_bits(b"\x05", 1, 3, order=order)
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'numpy'"):
        pack_bits(v, 1, backend="c")
    with pytest.raises(ValueError, match="backend must be one of"):
        unpack_bits(b"\x05", 1, 3, backend="torch")
    with pytest.raises(ValueError, match=r"count must be in \[0, inf\]"):
        unpack_bits(b"", 1, -1)
    with pytest.raises(TypeError, match="count must be an integer"):
        unpack_bits(b"\x05", 1, 3.0)
    with pytest.raises(TypeError, match="data must be a uint8 array or bytes, got dtype int64"):
        unpack_bits(np.array([5]), 1, 3)
    with pytest.raises(ValueError, match=r"data must be 1-D, got shape \(1, 1\)"):
        unpack_bits(np.array([[5]], np.uint8), 1, 3)
    with pytest.raises(TypeError, match="strict must be True or False"):
        unpack_bits(b"\x05", 1, 3, strict=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_and_trailing_data(backend):
    data = pack_bits(np.arange(8), 3)  # 3 bytes
    with pytest.raises(ValueError, match="data is truncated: 8 values of 3 bits need 3 bytes, got 2"):
        unpack_bits(data[:2], 3, 8, backend=backend)
    with pytest.raises(ValueError, match="need 1 bytes, got 0"):
        unpack_bits(b"", 3, 1, backend=backend)
    longer = np.concatenate([data, [0xFF]]).astype(np.uint8)
    with pytest.raises(ValueError, match=r"data has 1 trailing byte\(s\).*strict=False"):
        unpack_bits(longer, 3, 8, backend=backend)
    np.testing.assert_array_equal(unpack_bits(longer, 3, 8, strict=False, backend=backend), np.arange(8))
    np.testing.assert_array_equal(unpack_bits(longer, 3, 0, strict=False, backend=backend), [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", PACK_ORDERS)
def test_non_zero_padding_is_corrupt(order, backend):
    for bits in (1, 2, 3, 5, 6, 7):
        for n in (1, 3, 9):
            pad = (n * bits + 7) // 8 * 8 - n * bits
            if pad == 0:
                continue
            data = pack_bits(np.zeros(n, np.uint8), bits, order=order)
            for p in range(pad):  # each padding bit alone
                bad = data.copy()
                bad[-1] |= np.uint8(1 << (7 - p) if order == "lsb" else 1 << p)
                with pytest.raises(ValueError, match="corrupt: non-zero padding"):
                    unpack_bits(bad, bits, n, order=order, backend=backend)
                with pytest.raises(ValueError, match="corrupt: non-zero padding"):
                    PackedArray(bad, bits, n, order, (n,))
            # the last value bit is not padding
            ok = data.copy()
            ok[-1] |= np.uint8(1 << (7 - pad) if order == "lsb" else 1 << pad)
            assert unpack_bits(ok, bits, n, order=order, backend=backend)[-1] != 0


# ---- signed values -------------------------------------------------------------------------


def test_signed_examples():
    np.testing.assert_array_equal(to_unsigned([-8, -1, 0, 7], 4), [8, 15, 0, 7])
    np.testing.assert_array_equal(to_unsigned([-8, -1, 0, 7], 4, signed="offset"), [0, 7, 8, 15])
    np.testing.assert_array_equal(to_unsigned([-1, 0], 1), [1, 0])
    np.testing.assert_array_equal(to_unsigned([-128, 127], 8), [128, 127])
    np.testing.assert_array_equal(to_unsigned([-3, 12], 4, signed="offset", offset=3), [0, 15])
    np.testing.assert_array_equal(to_unsigned([10, 25], 4, signed="offset", offset=-10), [0, 15])
    s = from_unsigned(np.array([8, 15, 0, 7], np.uint8), 4)
    assert s.dtype == np.int8 and s.tolist() == [-8, -1, 0, 7]
    s = from_unsigned([0, 255], 8, signed="offset")
    assert s.dtype == np.int8 and s.tolist() == [-128, 127]
    s = from_unsigned([0, 255], 8, signed="offset", offset=0)
    assert s.dtype == np.int16 and s.tolist() == [0, 255]
    assert from_unsigned([0, 15], 4, signed="offset", offset=-10).tolist() == [10, 25]
    u = to_unsigned(np.array([[-2, 1], [0, -1]], np.int16), 2)
    assert u.dtype == np.uint8 and u.shape == (2, 2)


@pytest.mark.parametrize("signed", ["twos", "offset"])
@pytest.mark.parametrize("bits", BITS)
def test_signed_round_trips_through_packing(bits, signed):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = np.arange(lo, hi + 1).repeat(3)
    np.random.default_rng(bits).shuffle(v)
    for order in PACK_ORDERS:
        u = to_unsigned(v, bits, signed=signed)
        assert u.dtype == np.uint8 and u.min() >= 0 and u.max() < (1 << bits)
        back = from_unsigned(_both_unpack(_both_pack(u, bits, order), bits, v.size, order), bits, signed=signed)
        assert back.dtype == np.int8
        np.testing.assert_array_equal(back, v)
    if signed == "twos":  # two's complement is the low bits of the int8 pattern
        np.testing.assert_array_equal(u, v.astype(np.int8).view(np.uint8) & ((1 << bits) - 1))


def test_signed_errors():
    with pytest.raises(ValueError, match=r"values\[1\] = 8 does not fit 4-bit two's complement: allowed -8..7"):
        to_unsigned([0, 8], 4)
    with pytest.raises(ValueError, match=r"values\[0\] = -9 .*allowed -8\.\.7"):
        to_unsigned([-9], 4, signed="offset")
    with pytest.raises(ValueError, match=r"offset 2: allowed -2\.\.13"):
        to_unsigned([14], 4, signed="offset", offset=2)
    with pytest.raises(ValueError, match="offset is only used with signed='offset'"):
        to_unsigned([1], 4, offset=8)
    with pytest.raises(ValueError, match="offset is only used"):
        from_unsigned([1], 4, offset=8)
    with pytest.raises(ValueError, match="signed must be one of 'twos', 'offset'"):
        to_unsigned([1], 4, signed="sign_magnitude")
    with pytest.raises(ValueError, match=r"u\[0\] = 16 does not fit in 4 unsigned bit"):
        from_unsigned([16], 4)
    with pytest.raises(ValueError, match=r"u\[1\] = -1"):
        from_unsigned([0, -1], 4, signed="offset")
    with pytest.raises(TypeError, match="u must be an integer array"):
        from_unsigned([1.0], 4)
    with pytest.raises(TypeError, match="offset must be an integer"):
        to_unsigned([1], 4, signed="offset", offset=1.5)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 8\]"):
        to_unsigned([1], 9)


# ---- container -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_array_keeps_shape_and_count(backend):
    rng = np.random.default_rng(9)
    for shape in [(3, 5, 2), (7,), (), (0, 4), (1, 1)]:
        for bits in (1, 3, 4, 8):
            for order in PACK_ORDERS:
                v = rng.integers(0, 1 << bits, shape).astype(np.int16)
                p = pack(v, bits, order=order, backend=backend)
                assert (p.bits, p.count, p.order, p.shape) == (bits, v.size, order, shape)
                assert p.data.dtype == np.uint8 and p.nbytes == packed_nbytes(v.size, bits)
                np.testing.assert_array_equal(p.data, pack_bits(v, bits, order=order))
                out = unpack(p, backend=backend)
                assert out.dtype == np.uint8 and out.shape == shape
                np.testing.assert_array_equal(out, v)
                other = "numpy" if backend == "numba" else "numba"
                assert p == pack(v, bits, order=order, backend=other)


def test_packed_array_is_immutable_and_checked():
    p = pack(np.arange(6).reshape(2, 3), 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.bits = 4
    with pytest.raises(ValueError, match="read-only"):
        p.data[0] = 0
    assert p == PackedArray(p.data.tobytes(), 3, 6, "lsb", (2, 3))
    assert p != pack(np.arange(6).reshape(3, 2), 3)
    assert p != pack(np.arange(6).reshape(2, 3), 3, order="msb")
    assert p != pack(np.arange(6).reshape(2, 3), 4)
    with pytest.raises(TypeError):
        hash(p)
    with pytest.raises(ValueError, match=r"count=5 does not match shape \(2, 3\)"):
        PackedArray(p.data, 3, 5, "lsb", (2, 3))
    with pytest.raises(ValueError, match="data is truncated"):
        PackedArray(p.data[:2], 3, 6, "lsb", (2, 3))
    with pytest.raises(ValueError, match="trailing byte"):
        PackedArray(np.zeros(4, np.uint8), 3, 6, "lsb", (2, 3))
    with pytest.raises(ValueError, match="order must be one of"):
        PackedArray(p.data, 3, 6, "big", (2, 3))
    with pytest.raises(TypeError, match="shape must be a tuple of integers"):
        PackedArray(p.data, 3, 6, "lsb", (2.0, 3))
    with pytest.raises(TypeError, match="packed must be a PackedArray"):
        unpack(p.data)


# ---- properties ----------------------------------------------------------------------------


@st.composite
def _values(draw, max_len=120):
    bits = draw(st.integers(1, 8))
    v = draw(hnp.arrays(np.uint8, st.integers(0, max_len), elements=st.integers(0, (1 << bits) - 1)))
    return v, bits


@given(vb=_values(), order=st.sampled_from(PACK_ORDERS))
def test_property_round_trip_and_twin(vb, order):
    v, bits = vb
    data = _both_pack(v, bits, order)
    assert data.size == (v.size * bits + 7) // 8
    np.testing.assert_array_equal(_both_unpack(data, bits, v.size, order), v)
    np.testing.assert_array_equal(data, _oracle_pack(v, bits, order))


@given(a=_values(), k=st.integers(0, 5), order=st.sampled_from(PACK_ORDERS), data=st.data())
def test_property_streams_concatenate_at_group_boundaries(a, k, order, data):
    # 8 values of b bits are exactly b bytes: packing splits at multiples of 8 values
    v, bits = a
    cut = min(8 * k, v.size // 8 * 8)
    whole = pack_bits(v, bits, order=order)
    parts = np.concatenate([pack_bits(v[:cut], bits, order=order), pack_bits(v[cut:], bits, order=order)])
    np.testing.assert_array_equal(whole, parts)


@given(
    v=hnp.arrays(np.int64, st.integers(0, 60), elements=st.integers(-200, 200)),
    bits=st.integers(1, 8),
    signed=st.sampled_from(["twos", "offset"]),
    offset=st.one_of(st.none(), st.integers(-300, 300)),
)
def test_property_signed_maps_invert_or_refuse(v, bits, signed, offset):
    if signed == "twos":
        offset = None
    off = (1 << (bits - 1)) if offset is None else offset
    lo, hi = -off, (1 << bits) - 1 - off  # the same formula for both modes
    fits = bool(np.all((v >= lo) & (v <= hi)))
    if not fits:
        with pytest.raises(ValueError, match="does not fit"):
            to_unsigned(v, bits, signed=signed, offset=offset)
        return
    u = to_unsigned(v, bits, signed=signed, offset=offset)
    assert u.size == 0 or int(u.max()) < (1 << bits)
    np.testing.assert_array_equal(from_unsigned(u, bits, signed=signed, offset=offset), v)
