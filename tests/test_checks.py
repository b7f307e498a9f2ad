"""The shared argument checks of npquant._checks: what passes, what is returned, and that
every error names the argument."""

from __future__ import annotations

import numpy as np
import pytest

from npquant._checks import (
    as_int_array,
    brief,
    check_int_array,
    check_qparams,
    check_scales,
    smallest_int_dtype,
)
from npquant.qparams import QParams, QuantSpec


# --------------------------------------------------------------------------- integer arrays
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_check_int_array_accepts_every_integer_dtype(dtype):
    a = np.arange(3, dtype=dtype)
    out = check_int_array(a, "q")
    assert out is a  # no copy


def test_check_int_array_accepts_lists_and_empty_arrays():
    assert check_int_array([1, 2], "q").dtype.kind == "i"
    assert check_int_array(np.zeros(0, np.int8), "q").size == 0


@pytest.mark.parametrize(
    "value, dtype",
    [(np.array([0.5]), "float64"), ([0.5], "float64"), (np.array(["1"]), "<U1"), (np.array([1 + 0j]), "complex128")],
)
def test_check_int_array_rejects_other_dtypes_naming_the_argument(value, dtype):
    with pytest.raises(TypeError, match=f"^indices must be an integer array, got dtype {dtype}$"):
        check_int_array(value, "indices")


def test_check_int_array_says_how_to_convert_a_bool_array_and_takes_the_wording():
    with pytest.raises(TypeError, match=r"^m must be an integer array, got dtype bool; convert with \.astype"):
        check_int_array(np.array([True]), "m")
    with pytest.raises(TypeError, match="^labels must be class indices, got dtype float32$"):
        check_int_array(np.zeros(2, np.float32), "labels", what="class indices")


def test_as_int_array_also_requires_values():
    assert as_int_array([3], "q").tolist() == [3]
    with pytest.raises(ValueError, match="q is empty"):
        as_int_array(np.zeros(0, np.int8), "q")
    with pytest.raises(TypeError, match="q must be an integer array, got dtype float64"):
        as_int_array([1.0], "q")


# --------------------------------------------------------------------------- scales
def test_check_scales_returns_float32():
    s = check_scales([0.5, 0.25], "scale")
    assert s.dtype == np.float32 and s.tolist() == [0.5, 0.25]
    s0 = check_scales(np.float64(0.1), "s_x")
    assert s0.shape == () and s0 == np.float32(0.1)
    assert check_scales(3, "s").dtype == np.float32  # integers are real numbers too


def test_check_scales_broadcasts_one_value_to_the_shape():
    s = check_scales(0.5, "scale", shape=(3,))
    assert s.shape == (3,) and np.all(s == np.float32(0.5))
    assert check_scales([1.0, 2.0], "scale", shape=(2,)).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"scale has shape \(2,\), expected \(3,\)"):
        check_scales([1.0, 2.0], "scale", shape=(3,))


@pytest.mark.parametrize("value", [0.0, -0.1, np.inf, np.nan, 1e39, [0.1, 0.0], [1e-3, -1.0]])
def test_check_scales_rejects_scales_that_are_not_positive_and_finite_in_float32(value):
    with pytest.raises(ValueError, match=r"^s_w must be positive and finite \(as float32\), got "):
        check_scales(value, "s_w")


@pytest.mark.parametrize("value", ["0.1", True, np.array([True]), None, np.array([1j])])
def test_check_scales_rejects_non_real_values(value):
    with pytest.raises(TypeError, match="^alpha must be a real array, got dtype "):
        check_scales(value, "alpha")


def test_check_scales_rejects_empty():
    with pytest.raises(ValueError, match="^scale is empty$"):
        check_scales(np.zeros(0, np.float32), "scale")


def test_brief_shows_small_arrays_whole_and_large_ones_by_range():
    assert brief(np.array([1.5, 2.0])) == "[1.5, 2. ]"
    assert brief(np.arange(10)) == "array(shape=(10,), min=0, max=9)"


# --------------------------------------------------------------------------- qparams
def test_check_qparams():
    qp = QParams(0.1, 0, QuantSpec())
    assert check_qparams(qp, "x_qp") is qp
    assert check_qparams(qp, "x_qp", per_tensor=True) is qp
    with pytest.raises(TypeError, match="^x_qp must be a QParams, got float$"):
        check_qparams(0.1, "x_qp")
    with pytest.raises(TypeError, match="^qparams must be a QParams, got NoneType$"):
        check_qparams(None)
    per_channel = QParams([0.1, 0.2], [0, 0], QuantSpec(axis=0))
    assert check_qparams(per_channel, "w_qp") is per_channel
    with pytest.raises(ValueError, match=r"^w_qp must be per-tensor qparams \(spec\.axis=None\), got per_channel"):
        check_qparams(per_channel, "w_qp", per_tensor=True)


# --------------------------------------------------------------------------- smallest dtype
@pytest.mark.parametrize(
    "lo, hi, signed, expected",
    [
        (-128, 127, None, np.int8),
        (0, 127, None, np.int8),
        (0, 255, None, np.uint8),
        (-1, 128, None, np.int16),
        (0, 65535, None, np.uint16),
        (-(2**31), 2**31 - 1, None, np.int32),
        (0, 2**32 - 1, None, np.uint32),
        (0, 2**64 - 1, None, np.uint64),
        (0, 127, False, np.uint8),
        (0, 255, True, np.int16),
        (-8, 7, True, np.int8),
        (0, 15, False, np.uint8),
        (0, 65535, True, np.int32),
        (-(2**31) - 1, 0, True, np.int64),
    ],
)
def test_smallest_int_dtype(lo, hi, signed, expected):
    assert smallest_int_dtype(lo, hi, signed=signed) == np.dtype(expected)


def test_smallest_int_dtype_agrees_with_a_search_over_all_dtypes():
    """For ranges around every power of two, the result holds the range and no smaller
    (or, at the same width, signed-first) dtype does."""
    order = [np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)]
    edges = sorted({s * (2**k) + d for k in range(0, 64) for s in (1, -1) for d in (-1, 0, 1)} | {0, 2**64 - 1})
    edges = [e for e in edges if -(2**63) <= e <= 2**64 - 1]
    for lo in edges[::7]:
        for hi in edges[::5]:
            if hi < lo:
                continue
            fits = [d for d in order if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
            if not fits:
                with pytest.raises(ValueError):
                    smallest_int_dtype(lo, hi)
                continue
            assert smallest_int_dtype(lo, hi) == fits[0], (lo, hi)


def test_smallest_int_dtype_limits_the_width():
    assert smallest_int_dtype(0, 2**31 - 1, max_bits=32) == np.int32
    with pytest.raises(ValueError, match=r"^\[0, 4294967296\] does not fit an integer dtype of at most 32 bits$"):
        smallest_int_dtype(0, 2**32, max_bits=32)
    with pytest.raises(ValueError, match="does not fit"):
        smallest_int_dtype(-1, 2**64 - 1)


def test_quant_spec_dtype_is_the_smallest_of_its_signedness():
    for bits in range(1, 17):
        for signed in (True, False):
            spec = QuantSpec(bits=bits, signed=signed)
            expected = (np.int8 if bits <= 8 else np.int16) if signed else (np.uint8 if bits <= 8 else np.uint16)
            assert spec.dtype == np.dtype(expected), (bits, signed)
