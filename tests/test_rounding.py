"""npquant.rounding: every rounding rule against an exact oracle, and the kernels that round
(npquant._kernels.quantize: ``_round`` and ``fma32``) against the NumPy definitions: ``fma32``
bit for bit, ``_round`` value for value (the sign of a zero result may differ: the codes are
integers)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from oracles import fma32 as oracle_fma32
from oracles import round_exact

import npquant as nq
from npquant import rounding
from npquant._kernels import quantize as kq
from npquant._kernels.modes import ROUNDING_CODES
from npquant.qparams import ROUNDING_MODES
from npquant.rounding import (
    _round_numpy,
    div_round_half_away,
    div_round_half_even,
    fma32,
    round_scalar,
    round_values,
)

DETERMINISTIC = ("half_even", "half_away", "half_up", "floor")
# ties, their neighbours, integers, and values where floor(v + 0.5) fails
EDGES32 = np.array(
    [
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        1.0,
        -1.0,
        np.nextafter(np.float32(0.5), np.float32(0)),
        -np.nextafter(np.float32(0.5), np.float32(0)),
        np.nextafter(np.float32(2.5), np.float32(0)),
        8388607.5,
        -8388607.5,
        8388608.0,
        1e30,
        -1e30,
        np.float32(2.0**-149),
        -np.float32(2.0**-149),
    ],
    np.float32,
)


def test_the_public_name_is_the_rounding_module():
    assert nq.round_values is round_values
    from npquant.affine import round_values as old_home

    assert old_home is round_values
    from npquant.qnn.pool import div_round_half_away as pool_away
    from npquant.qnn.pool import div_round_half_even as pool_even

    assert pool_away is div_round_half_away and pool_even is div_round_half_even
    assert rounding.ROUNDING_MODES == ROUNDING_MODES


# ---- round_values and round_scalar ---------------------------------------------------------


@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e9, 1e9, width=32)))
def test_round_scalar_equals_round_values_and_the_oracle(v):
    for mode in DETERMINISTIC:
        arr = round_values(v, mode)
        for e, r in zip(v, arr):
            want = round_exact(Fraction(float(e)), mode)
            assert round_scalar(e, mode) == want == int(r), (mode, e)


def test_round_scalar_at_the_edges():
    for mode in DETERMINISTIC:
        for e in EDGES32:
            assert round_scalar(e, mode) == round_exact(Fraction(float(e)), mode), (mode, e)
            assert round_scalar(float(e), mode) == int(round_values(np.array([e]), mode)[0])
    assert isinstance(round_scalar(np.float32(2.5), "half_away"), int)
    assert round_scalar(7, "floor") == 7
    with pytest.raises(ValueError, match="finite"):
        round_scalar(float("inf"), "half_even")
    with pytest.raises(ValueError, match="mode must be one of"):
        round_scalar(0.5, "stochastic")


@pytest.mark.parametrize("mode", ROUNDING_MODES)
def test_kernel_round_equals_the_numpy_rule(mode):
    # _kernels.quantize._round (float32, one value) against rounding._round_numpy, bit for bit
    rng = np.random.default_rng(1)
    v = np.concatenate(
        [
            EDGES32,
            rng.normal(size=300).astype(np.float32) * np.float32(40),
            (rng.integers(-64, 64, 100) / np.float32(2)).astype(np.float32),
        ]
    )
    u = rng.random(v.shape, dtype=np.float32)
    want = _round_numpy(v, mode, u)
    code = ROUNDING_CODES[mode]
    got = np.array([kq._round(np.float32(a), code, np.float32(b)) for a, b in zip(v, u)], np.float32)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)


# ---- exact integer division ----------------------------------------------------------------


@given(st.integers(-(1 << 40), 1 << 40), st.integers(1, 1 << 20))
@example(5, 2)
@example(-5, 2)
@example(7, 2)
@example(-7, 2)
@example(0, 9)
def test_div_round_match_the_exact_quotient(s, c):
    q = Fraction(s, c)
    assert int(div_round_half_away(s, c)) == round_exact(q, "half_away")
    assert int(div_round_half_even(s, c)) == round_exact(q, "half_even")


def test_div_round_broadcast_int64():
    s = np.arange(-12, 13).reshape(5, 5)
    c = np.array([1, 2, 3, 4, 8])
    a, e = div_round_half_away(s, c), div_round_half_even(s, c)
    assert a.dtype == e.dtype == np.int64 and a.shape == e.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            q = Fraction(int(s[i, j]), int(c[j]))
            assert a[i, j] == round_exact(q, "half_away") and e[i, j] == round_exact(q, "half_even")


# ---- fused multiply-add: the NumPy definition and its numba twin -----------------------------

f32s = st.floats(-(2.0**30), 2.0**30, width=32)


@given(a=f32s, b=f32s, c=f32s)
@example(a=-1e-45, b=0.5, c=0.0)  # -2^-150 rounds to -0
@example(a=1.0, b=1.0, c=-1.0)  # exact zero: +0
@example(a=-0.0, b=1.0, c=-0.0)  # -0 + -0
@example(a=1.0 + 2.0**-23, b=1.0 + 2.0**-23, c=-1.0)
def test_fma32_and_kernel_equal_the_exact_oracle(a, b, c):
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    ref = oracle_fma32(a, b, c).view(np.uint32)
    assert fma32(a, b, c)[()].view(np.uint32) == ref
    assert np.float32(kq.fma32(a, b, c)).view(np.uint32) == ref


@given(a=f32s, b=f32s, c=st.integers(-(1 << 24), 1 << 24))
def test_fma32_takes_an_integer_addend_exactly(a, b, c):
    a, b = np.float32(a), np.float32(b)
    exact = Fraction(float(a)) * Fraction(float(b)) + c
    got = fma32(a, b, np.int32(c))[()]
    if exact != 0:
        # the nearest float32 to the exact value: no float32 is strictly closer
        for nb in (np.nextafter(got, np.float32(np.inf)), np.nextafter(got, np.float32(-np.inf))):
            if math.isfinite(nb):
                assert abs(Fraction(float(nb)) - exact) >= abs(Fraction(float(got)) - exact)
    assert np.float32(kq.fma32(a, b, np.int32(c))).view(np.uint32) == got.view(np.uint32)


def test_fma32_broadcasts_to_float32():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = fma32(a, np.float32(0.1), np.array([1, 2, 3], np.int32))
    assert got.dtype == np.float32 and got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j] == oracle_fma32(a[i, j], np.float32(0.1), np.float32(j + 1))
    # a float64 a or b is rounded to float32 first
    assert fma32(0.1, 1.0, 0.0)[()] == np.float32(0.1)
