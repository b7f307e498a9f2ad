"""numba kernels of npquant._kernels.quantize against their NumPy twins, bit for bit.

The suite runs twice in CI: with the JIT on, and with NUMBA_DISABLE_JIT=1 (the kernels
then run as plain Python on NumPy scalars, which must give the same bits).
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from oracles import fma32 as oracle_fma32

from npquant import QParams, QuantSpec, dequantize, fit_qparams, quantize
from npquant._kernels.quantize import fma32
from npquant.rounding import fma32 as _fma32_numpy

MODES = ("half_even", "half_away", "half_up", "floor", "stochastic")
METHODS = ("divide", "mul", "mul_add", "fma")


def _spec(bits, signed, symmetric, axis, block, rounding):
    return QuantSpec(
        bits=bits,
        signed=signed,
        symmetric=symmetric,
        axis=axis,
        block_size=block,
        rounding=rounding,
        seed=7 if rounding == "stochastic" else None,
    )


def _both(x, qp, method):
    a = quantize(x, qp, method=method, backend="numba")
    b = quantize(x, qp, method=method, backend="numpy")
    assert a.dtype == b.dtype == qp.spec.dtype
    np.testing.assert_array_equal(a, b)
    da = dequantize(a, qp, backend="numba")
    db = dequantize(a, qp, backend="numpy")
    assert da.dtype == db.dtype == np.float32
    np.testing.assert_array_equal(da.view(np.uint32), db.view(np.uint32))
    return a


@given(
    x=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), elements=st.floats(-1e4, 1e4, width=32)
    ),
    bits=st.integers(1, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
    gran=st.sampled_from(["tensor", "channel", "group"]),
    block=st.integers(1, 6),
    rounding=st.sampled_from(MODES),
    method=st.sampled_from(METHODS),
    data=st.data(),
)
def test_quantize_kernel_equals_twin(x, bits, signed, symmetric, gran, block, rounding, method, data):
    assume(not (bits == 1 and symmetric))  # refused by QuantSpec
    axis = None if gran == "tensor" else data.draw(st.integers(-x.ndim, x.ndim - 1))
    spec = _spec(bits, signed, symmetric, axis, block if gran == "group" else None, rounding)
    _both(x, fit_qparams(x, spec), method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rounding", MODES)
def test_ties_and_saturation_edges(method, rounding):
    # exact ties of x / S, huge values, signed zeros and the smallest subnormals
    scale = np.float32(0.1)
    k = np.arange(-300, 300, dtype=np.float32)
    x = np.concatenate(
        [(k + np.float32(0.5)) * scale, k * scale, np.array([3e38, -3e38, 0.0, -0.0, 1e-45, -1e-45], np.float32)]
    )
    for spec in (_spec(8, True, False, None, None, rounding), _spec(4, False, False, None, None, rounding)):
        zp = (spec.qmin + spec.qmax) // 2
        q = _both(x, QParams(scale, zp, spec), method)
        assert q[-6] == spec.qmax and q[-5] == spec.qmin


@pytest.mark.parametrize(
    "shape, axis, block",
    [
        ((0,), None, None),
        ((1, 7), 0, None),
        ((7, 1), 1, None),
        ((3, 5, 2), 1, 2),
        ((1,), 0, 5),
        ((4, 9), 1, 9),
        ((4, 9), 1, 20),
        ((2, 3, 4, 5), -3, 2),
    ],
)
def test_edge_shapes(shape, axis, block):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if x.size == 0:
        with pytest.raises(ValueError, match="x is empty"):
            quantize(x, QParams(1.0, 0, QuantSpec()))
        return
    for rounding in MODES:
        _both(x, fit_qparams(x, _spec(8, True, False, axis, block, rounding)), "divide")


def test_non_contiguous_input():
    base = np.random.default_rng(1).normal(size=(6, 10, 4)).astype(np.float32)
    for x in (base[:, ::3, :], base.transpose(2, 0, 1), base[::-1, :, 1]):
        assert not x.flags.c_contiguous
        qp = fit_qparams(x, QuantSpec(axis=1, rounding="half_away"))
        q = _both(x, qp, "mul_add")
        np.testing.assert_array_equal(q, quantize(np.ascontiguousarray(x), qp))
        qnc = np.asfortranarray(q)
        np.testing.assert_array_equal(dequantize(qnc, qp), dequantize(q, qp, backend="numpy"))


def test_stochastic_noise_is_the_same_in_both_backends():
    x = np.random.default_rng(2).normal(size=(8, 33)).astype(np.float32)
    qp = fit_qparams(x, QuantSpec(bits=3, axis=0, rounding="stochastic", seed=123))
    a = _both(x, qp, "divide")
    np.testing.assert_array_equal(a, quantize(x, qp))  # same seed, same result


# ---- the fused multiply-add emulation --------------------------------------------------


def _fma_oracle(a, b, c):
    return oracle_fma32(a, b, c)


@given(
    a=st.floats(-(2.0**20), 2.0**20, width=32),
    b=st.floats(2.0**-20, 2.0**20, width=32),
    c=st.integers(-65536, 65535),
)
def test_fma32_is_correctly_rounded(a, b, c):
    a, b = np.float32(a), np.float32(b)
    ref = _fma_oracle(a, b, c)
    got = np.float32(fma32(a, b, c))
    assert got.view(np.uint32) == ref.view(np.uint32)
    tw = _fma32_numpy(np.array([a]), np.array([b]), np.array([c]))[0]
    assert tw.view(np.uint32) == ref.view(np.uint32)


@given(
    a=st.floats(-(2.0**20), 2.0**20, width=32),
    b=st.floats(2.0**-20, 2.0**20, width=32),
    c=st.floats(-(2.0**20), 2.0**20, width=32),
)
@example(a=-1.401298464324817e-45, b=0.5, c=0.0)  # -2^-150 exactly: rounds to -0, not +0
@example(a=-0.0, b=1.0, c=-0.0)  # an exact zero sum of two -0 addends is -0
@example(a=1.0, b=1.0, c=-1.0)  # an exact zero sum otherwise is +0
def test_fma32_is_correctly_rounded_with_a_float32_addend(a, b, c):
    # the optimizers' use (_kernels.optim imports this kernel): c is any float32
    from npquant._kernels import optim

    assert optim.fma32 is fma32
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    ref = oracle_fma32(a, b, c)
    assert np.float32(fma32(a, b, c)).view(np.uint32) == ref.view(np.uint32)


def test_fma32_nan_and_overflow():
    nan = np.float32("nan")
    assert np.isnan(fma32(nan, np.float32(1), 0)) and np.isnan(fma32(np.float32(1), np.float32(1), nan))
    big = np.float32(3e38)
    with np.errstate(over="ignore"):  # NUMBA_DISABLE_JIT=1: NumPy's float32 cast warns
        assert fma32(big, np.float32(2), np.float32(0)) == np.float32("inf")
        assert fma32(-big, np.float32(2), np.float32(0)) == np.float32("-inf")


def test_fma32_on_near_ties():
    # products that land within 2^-33 of a float32 midpoint after adding c
    rng = np.random.default_rng(3)
    scale = rng.uniform(1e-3, 0.1, 4000).astype(np.float32)
    rcp = np.float32(1) / scale
    k = rng.integers(-120, 120, 4000)
    a = ((k + 0.5) * scale).astype(np.float32)
    c = rng.integers(-128, 256, 4000)
    twin = _fma32_numpy(a, rcp, c)
    for i in range(a.size):
        ref = _fma_oracle(a[i], rcp[i], int(c[i]))
        assert np.float32(fma32(a[i], rcp[i], int(c[i]))) == ref
        assert twin[i] == ref


@pytest.mark.parametrize("j", [0, 3, 7, 12])
@pytest.mark.parametrize("sign", [1, -1])
def test_fma32_where_float64_double_rounding_fails(j, sign):
    # a * b = 2^(j-24) + 2^(j-57) exactly, so a * b + 2^j is just above the float32 midpoint
    # 2^j (1 + 2^-24): correct rounding goes up, float64-then-float32 lands on the tie and
    # rounds to even (down).
    a = np.float32(sign * 2.0 ** (j - 24) * (1 + 2.0**-11))
    b = np.float32(1 - 2.0**-11 + 2.0**-22)
    c = sign * 2**j
    exact = Fraction(float(a)) * Fraction(float(b)) + c
    assert exact == sign * (Fraction(2) ** j + Fraction(2) ** (j - 24) + Fraction(2) ** (j - 57))
    ref = _fma_oracle(a, b, c)
    assert ref == np.float32(sign * 2.0**j * (1 + 2.0**-23))
    naive = np.float32(np.float64(a) * np.float64(b) + c)
    assert naive != ref  # the trap is real
    assert np.float32(fma32(a, b, c)) == ref
    assert _fma32_numpy(np.array([a]), np.array([b]), np.array([c]))[0] == ref
