"""fbgemm's requantization (npquant.qnn.fbgemm) against torch.ops.quantized linear/conv2d.

The accumulator is npquant's own (``linear_accumulate`` / ``conv2d_accumulate`` with
``accumulation="fbgemm"``: exact where fbgemm is exact on this CPU, int16 pair-saturated
where it is not); the formula under test is only the requantization.
"""

import numpy as np
import pytest

from npquant import QParams, QuantSpec
from npquant.qnn.conv import conv2d_accumulate
from npquant.qnn.fbgemm import fbgemm_multipliers, fbgemm_requantize, fma_float32
from npquant.qnn.linear import linear_accumulate
from npquant.requant.modes import effective_multiplier

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
f32, f64 = np.float32, np.float64


def _weights(rng, shape, per_channel, tie):
    o = shape[0]
    qw = rng.integers(-128, 128, shape).astype(np.int8)
    if per_channel:
        base = f32(rng.uniform(1e-3, 0.05))
        sw = (base * 2.0 ** rng.integers(-3, 3, o)).astype(f32) if tie else rng.uniform(1e-3, 0.05, o).astype(f32)
        zw = np.zeros(o, np.int64)
        wq = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(qw), torch.from_numpy(sw.astype(f64)), torch.from_numpy(zw), 0
        )
        return qw, sw, zw, wq, base
    sw = f32(rng.uniform(1e-3, 0.05))
    zw = int(rng.integers(-5, 6)) if len(shape) == 2 else 0
    wq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qw), float(sw), zw)
    return qw, sw, zw, wq, sw


def _case_params(rng, sx, base, ats, o, tie, use_bias):
    """Output scale and bias chosen so that many outputs land on exact halves."""
    sy = f32(f32(sx * base) * 2.0 ** rng.integers(1, 9)) if tie else f32(rng.uniform(0.01, 0.5))
    bias = None
    if use_bias:
        k = rng.integers(-3000, 3000, o)
        bias = [rng.normal(0, 1, o), (k + 0.5) * ats, k * ats][int(rng.integers(0, 3))].astype(f32)
    return sy, int(rng.integers(0, 256)), bias


@pytest.mark.slow  # torch comparisons: run in the JIT pass
def test_linear_matches_torch(fbgemm_threads):
    rng = np.random.default_rng(100 + fbgemm_threads)
    total = 0
    for it in range(240):
        per_channel, relu, use_bias, tie = it % 2 == 1, (it // 2) % 2 == 1, it % 7 != 0, rng.random() < 0.6
        n, k, o = (int(v) for v in (rng.integers(1, 40), rng.integers(1, 200), rng.integers(1, 40)))
        sx, zx = f32(rng.uniform(1e-3, 0.1)), int(rng.integers(0, 256))
        qx = rng.integers(0, 256, (n, k)).astype(np.uint8)
        qw, sw, zw, wq, base = _weights(rng, (o, k), per_channel, tie)
        ats = np.broadcast_to(f32(sx) * np.atleast_1d(sw).astype(f32), (o,)).astype(f32)
        sy, zy, bias = _case_params(rng, sx, base, ats, o, tie, use_bias)
        packed = torch.ops.quantized.linear_prepack(wq, None if bias is None else torch.from_numpy(bias))
        xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), float(sx), zx)
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        want = op(xq, packed, float(sy), zy).int_repr().numpy()
        acc = linear_accumulate(qx, _x_qp(zx), qw, _w_qp(zw, o), accumulation="fbgemm")
        got = fbgemm_requantize(acc, sx, sw, sy, zy, bias=bias, relu=relu, axis=-1)
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")
        total += want.size
    print(f"fbgemm_requantize vs torch quantized.linear: {total} elements compared, 0 differ")
    assert total > 50_000


def _x_qp(zx):
    return QParams(f32(1.0), zx, QuantSpec(signed=False))


def _w_qp(zw, o):
    """Unit-scale qparams of the weights' zero points (scales do not enter the accumulator)."""
    if np.ndim(zw) == 0:
        return QParams(f32(1.0), int(zw), QuantSpec())
    return QParams(np.ones(o, f32), np.asarray(zw, np.int32), QuantSpec(axis=0))


@pytest.mark.slow  # torch comparisons: run in the JIT pass
@pytest.mark.parametrize("kind", ["dense", "grouped"])
def test_conv2d_matches_torch(fbgemm_threads, kind):
    rng = np.random.default_rng(200 + fbgemm_threads + 10 * (kind == "grouped"))
    for it in range(80):
        per_channel, relu, use_bias, tie = it % 2 == 1, (it // 2) % 2 == 1, it % 5 != 0, rng.random() < 0.6
        k = int(rng.choice([1, 3, 5]))
        stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1))
        n, h, w = 1 + it % 2, int(rng.integers(k, 11)), int(rng.integers(k, 11))
        if kind == "dense":
            groups, c, o = 1, int(rng.integers(1, 17)), int(rng.integers(1, 17))
        else:
            groups = int(rng.integers(2, 5))
            c, o = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        sx, zx = f32(rng.uniform(1e-3, 0.1)), int(rng.integers(0, 256))
        qx = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
        qw, sw, zw, wq, base = _weights(rng, (o, c // groups, k, k), per_channel, tie)
        ats = np.broadcast_to(f32(sx) * np.atleast_1d(sw).astype(f32), (o,)).astype(f32)
        sy, zy, bias = _case_params(rng, sx, base, ats, o, tie, use_bias)
        packed = torch.ops.quantized.conv2d_prepack(
            wq, None if bias is None else torch.from_numpy(bias), [stride] * 2, [pad] * 2, [1, 1], groups
        )
        xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), float(sx), zx)
        op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
        want = op(xq, packed, float(sy), zy).int_repr().numpy()
        acc = conv2d_accumulate(
            qx, _x_qp(zx), qw, _w_qp(zw, o), stride=stride, padding=pad, groups=groups, accumulation="fbgemm"
        )
        got = fbgemm_requantize(acc, sx, sw, sy, zy, bias=bias, relu=relu, axis=1)
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")


def test_overflowing_product_gives_int32_min(fbgemm_threads):
    qx = np.full((2, 64), 255, np.uint8)
    qw = np.full((4, 64), 127, np.int8)
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), 1.0, 0)
    wq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qw), 1.0, 0)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    acc = qx.astype(np.int64) @ qw.astype(np.int64).T
    for sy, relu in ((1e-3, False), (1e-5, False), (1e-5, True)):
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        want = op(xq, packed, sy, 10).int_repr().numpy()
        np.testing.assert_array_equal(fbgemm_requantize(acc, 1.0, 1.0, sy, 10, relu=relu), want)
    assert fbgemm_requantize(acc, 1.0, 1.0, 1e-5, 10)[0, 0] == 0  # 2072640 * 1e5 > 2^31: not 255


def test_multiplier_is_effective_multiplier_fp32():
    rng = np.random.default_rng(3)
    sx, sy = f32(0.0173), f32(0.0911)
    sw = rng.uniform(1e-3, 0.05, 50).astype(f32)
    ats, m = fbgemm_multipliers(sx, sw, sy)
    np.testing.assert_array_equal(ats, (sx * sw).astype(f32))
    np.testing.assert_array_equal(m.astype(f64), effective_multiplier(sx, sw, sy, "fp32"))


def test_fma_float32_is_single_rounding():
    from fractions import Fraction

    rng = np.random.default_rng(4)
    a = (rng.normal(size=3000) * 1e3).astype(f32)
    b = rng.normal(size=3000).astype(f32)
    c = np.rint(rng.normal(size=3000) * 1e3).astype(f32)
    got = fma_float32(a, b, c)
    for i in range(0, 3000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        cands = [np.nextafter(got[i], f32(-np.inf)), got[i], np.nextafter(got[i], f32(np.inf))]
        errs = [abs(Fraction(float(v)) - exact) for v in cands]
        assert errs[1] == min(errs)


def test_errors_name_arguments():
    acc = np.zeros((2, 3), np.int32)
    with pytest.raises(TypeError, match="acc"):
        fbgemm_requantize(acc.astype(float), 1.0, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="z_y"):
        fbgemm_requantize(acc, 1.0, 1.0, 1.0, 300)
    with pytest.raises(ValueError, match="s_w"):
        fbgemm_requantize(acc, 1.0, np.ones(4), 1.0, 0)
    with pytest.raises(ValueError, match="bias"):
        fbgemm_requantize(acc, 1.0, 1.0, 1.0, 0, bias=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="s_x"):
        fbgemm_multipliers(-1.0, 1.0, 1.0)
