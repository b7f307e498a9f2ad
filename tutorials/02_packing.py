# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Packing 2-bit (and 4-bit) codes into bytes
#
# **What you will learn**
#
# - why sub-byte codes must be packed to save memory: NumPy's smallest integer is a byte;
# - how four 2-bit values become one byte, by hand and with `npquant.pack_bits`, on the
#   "Quantization in Depth" course's example `[1, 0, 3, 2] -> 177`, and how to unpack;
# - bit order (least-significant bits first, as ONNX's int4) and values that straddle
#   bytes (3 bits);
# - signed codes: `pack_bits` takes unsigned patterns only, and `npquant.to_unsigned`
#   maps signed codes to them (two's complement, ONNX's int4 layout) and back.
#
# Every number printed is checked by an `assert` beside it.

# %%
import numpy as np

import npquant as nq

# %% [markdown]
# ## Four 2-bit values in one byte
#
# A 2-bit code is 0, 1, 2 or 3 (`0b00` to `0b11`). Stored one per `uint8`, six of
# every eight bits are wasted. Packing puts value `i` in bits `2i` and `2i + 1` of the
# byte: the first value in the lowest bits.
#
# For `[1, 0, 3, 2]`: `1 + (0 << 2) + (3 << 4) + (2 << 6) = 1 + 0 + 48 + 128 = 177`,
# which is `0b10_11_00_01` (read the pairs from the right: 01, 00, 11, 10).

# %%
values = [1, 0, 3, 2]

byte = 0
for i, v in enumerate(values):
    byte |= v << (2 * i)  # value i goes to bits 2i, 2i+1
print(byte, bin(byte))
assert byte == 177 and bin(byte) == "0b10110001"

packed = nq.pack_bits(np.array(values, np.uint8), bits=2)
print(packed, packed.dtype)
assert packed.tolist() == [177] and packed.dtype == np.uint8

# %% [markdown]
# ## Unpacking
#
# Unpacking shifts each value back down and masks its two bits: value `i` of a byte is
# `(byte >> 2i) & 0b11`. The course unpacks the two bytes `[177, 255]` into eight
# values. The number of values must be given (`count`), since a last byte may be only
# partly used.

# %%
data = np.array([177, 255], np.uint8)
by_hand = [(int(b) >> (2 * i)) & 0b11 for b in data for i in range(4)]
print(by_hand)
assert by_hand == [1, 0, 3, 2, 3, 3, 3, 3]

unpacked = nq.unpack_bits(data, bits=2, count=8)
assert unpacked.tolist() == by_hand

# Five values need two bytes; the unused bits of the last byte are zero padding.
five = nq.pack_bits(np.array([1, 0, 3, 2, 1], np.uint8), bits=2)
print(five, "->", nq.unpack_bits(five, bits=2, count=5))
assert five.tolist() == [177, 1]

# %% [markdown]
# ## Bit order, and values that straddle bytes
#
# Least-significant bits first (`order="lsb"`, the default) is ONNX's int4 layout and
# `numpy.packbits(bitorder="little")`. The mirror order, `order="msb"`, puts the first
# value in the top bits: `[1, 0, 3, 2]` becomes `0b01_00_11_10 = 78`. Both are correct;
# a file format names one, and reading with the other gives wrong weights silently.
#
# With 3 bits, values straddle bytes: eight 3-bit values fill exactly three bytes.
# `npquant.pack` keeps the shape and bit width with the bytes (`PackedArray`).

# %%
msb = nq.pack_bits(np.array(values, np.uint8), bits=2, order="msb")
print(msb, f"0b{int(msb[0]):08b}")
assert msb.tolist() == [78]

threes = np.arange(8, dtype=np.uint8).reshape(2, 4)  # 0..7, 3 bits each
p3 = nq.pack(threes, bits=3)
print(p3.data, p3.nbytes, "bytes for", p3.count, "values of 3 bits")
assert p3.nbytes == 3 and p3.data.tolist() == [136, 198, 250] and np.array_equal(nq.unpack(p3), threes)

# %% [markdown]
# ## Signed codes
#
# Quantized weights are usually signed: 2-bit signed codes are `-2, -1, 0, 1`. A
# pattern of 2 bits has no sign, so `pack_bits` refuses a negative value (silently
# keeping its low bits would hide a bug). `npquant.to_unsigned` maps signed codes to
# patterns explicitly: with `signed="twos"` (the default) it keeps the low `b` bits of
# the two's complement, `-1 -> 0b11 = 3`, `-2 -> 0b10 = 2`, as ONNX's int4 does;
# `npquant.from_unsigned` maps them back.

# %%
rng = np.random.default_rng(0)
w = rng.standard_normal(8).astype(np.float32)
spec = nq.QuantSpec(bits=2, symmetric=True)  # signed codes -2..1
qp = nq.fit_qparams(w, spec)
codes = nq.quantize(w, qp)
print("codes:", codes)
assert codes.tolist() == [0, 0, 1, 0, -1, 0, 1, 1]

try:
    nq.pack_bits(codes, bits=2)
except ValueError as e:
    print("pack_bits refuses signed codes:", str(e)[:70], "...")
else:
    raise AssertionError("pack_bits accepted a negative code")

patterns = nq.to_unsigned(codes, bits=2)  # two's complement, 2 bits
print("patterns:", patterns)
assert patterns.tolist() == [0, 0, 1, 0, 3, 0, 1, 1]
assert nq.to_unsigned(np.array([-2, -1, 0, 1]), bits=2).tolist() == [2, 3, 0, 1]
stored = nq.pack_bits(patterns, bits=2)
print(f"{codes.size} codes in {stored.nbytes} bytes:", stored)
assert stored.tolist() == [16, 83] and stored.nbytes == 2

back = nq.from_unsigned(nq.unpack_bits(stored, bits=2, count=codes.size), bits=2)
assert np.array_equal(back, codes)
assert np.array_equal(nq.dequantize(back, qp), nq.dequantize(codes, qp))

# The other convention adds an offset (2^(b-1)) instead: -2 -> 0, ..., 1 -> 3.
assert nq.to_unsigned(np.array([-2, -1, 0, 1]), bits=2, signed="offset").tolist() == [0, 1, 2, 3]

# %% [markdown]
# ## What it saves
#
# A weight matrix of LeNet-300-100's first layer has `300 x 784 = 235200` weights:
# 940800 bytes as float32, 235200 as int8 codes, 117600 packed at 4 bits and 58800 at 2
# bits (plus the scales: one float32 per row is 1200 bytes). `npquant.compression.packing.packed_nbytes`
# gives `ceil(n * bits / 8)`.

# %%
from npquant.compression.packing import packed_nbytes  # noqa: E402

n = 300 * 784
sizes = {bits: packed_nbytes(n, bits) for bits in (8, 4, 2)}
print("float32:", 4 * n, "bytes;", {f"{b} bits": s for b, s in sizes.items()})
assert 4 * n == 940800 and sizes == {8: 235200, 4: 117600, 2: 58800} and 4 * 300 == 1200

# %% [markdown]
# ## Exercise
#
# Pack the **signed 4-bit** codes `[-1, 7, -8, 2]` as ONNX int4 does (two's complement,
# least-significant nibble first). Which two bytes do you get? Work it out by hand, then
# check with `exercise_answer()` (not printed unless you call it).

# %%
exercise_codes = np.array([-1, 7, -8, 2], np.int8)


def exercise_answer():
    """The bytes of ``exercise_codes`` packed at 4 bits, as a list of ints."""
    return nq.pack_bits(nq.to_unsigned(exercise_codes, bits=4), bits=4).tolist()


my_answer = None  # your [byte0, byte1]
if my_answer is not None:
    print("right" if list(my_answer) == exercise_answer() else "not yet")
