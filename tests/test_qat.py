"""Fake quantization with a gradient (npquant.training.fake_quant): straight-through
estimators, LSQ and PACT; cross-checked bit for bit against PyTorch where it defines the
same thing (skipped without torch), against float64 finite differences where the rule is a
true derivative, and by Hypothesis properties."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import skip_torch_threads_without_jit
from hypothesis import given
from hypothesis import strategies as st

from npquant import QParams, QuantSpec, dequantize, fake_quantize, quantize
from npquant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from npquant.qparams import fit_qparams
from npquant.training.fake_quant import (
    GRADIENTS,
    FakeQuantize,
    LSQFakeQuantize,
    PACTFakeQuantize,
    activation_fake_quant,
    clip_mask,
    fake_quantize_with_mask,
    lsq_backward,
    lsq_forward,
    lsq_grad_factor,
    pact_backward,
    pact_forward,
    pact_qparams,
    ste_backward,
    weight_fake_quant,
)

F32 = np.float32


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _assert_bits(a, b):
    np.testing.assert_array_equal(_bits(a), _bits(b))


def _tie_data(rng, shape, scale, zp, spec):
    """Values on exact ties of x / S, a few ulps off ties, on and beyond the clip ends."""
    s = np.broadcast_to(np.asarray(scale, np.float32), shape)
    z = np.broadcast_to(np.asarray(zp), shape)
    k = rng.integers(spec.qmin - 3, spec.qmax + 4, size=shape) - z
    x = ((k + 0.5) * s).astype(np.float32)
    n = x.size
    flat = x.reshape(-1)
    flat += (rng.integers(-2, 3, size=n) * np.spacing(flat)).astype(np.float32)
    m = rng.random(n)
    sf, zf = s.reshape(-1), z.reshape(-1)
    edge = rng.choice([spec.qmin - 0.5, spec.qmin, spec.qmax, spec.qmax + 0.5], size=n)
    flat[m < 0.2] = ((edge - zf) * sf).astype(np.float32)[m < 0.2]
    gauss = (rng.normal(size=n) * sf * (spec.qmax - spec.qmin) / 3).astype(np.float32)
    flat[m > 0.8] = gauss[m > 0.8]
    return x


# ========================================================================================
# fixed-range fake quantization: forward and mask


def test_gradients_named():
    assert GRADIENTS == ("ste", "clipped", "lsq", "pact")


@pytest.mark.parametrize("method", ["mul", "divide", "mul_add", "fma"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_forward_is_linear_fake_quantize_and_mask_matches_codes(method, backend):
    rng = np.random.default_rng(1)
    for spec in [
        QuantSpec(bits=8, signed=False),
        QuantSpec(bits=4, symmetric=True),
        QuantSpec(bits=3, axis=1),
        QuantSpec(bits=5, signed=False, axis=1, block_size=3),
        QuantSpec(bits=16),
        QuantSpec(bits=1, signed=False),
    ]:
        x = (rng.normal(size=(4, 7, 3)) * 3).astype(np.float32)
        qp = fit_qparams(x * F32(0.7), spec)  # a range narrower than x: some values clip
        y, mask = fake_quantize_with_mask(x, qp, method=method, backend=backend)
        _assert_bits(y, fake_quantize(x, qp, method=method, backend=backend))
        q = quantize(x, qp, method=method)
        inner = (q > spec.qmin) & (q < spec.qmax)
        assert np.all(mask[inner])  # strictly inside: never clipped
        assert mask.dtype == np.bool_ and mask.shape == x.shape
        np.testing.assert_array_equal(clip_mask(x, qp, method=method), mask)


def test_mask_boundary_is_on_the_rounded_code_inclusive():
    # PyTorch's rule: the gradient passes while Z + rint(x / S) is in [qmin, qmax], i.e. up
    # to half a step beyond the representable range, ties deciding by half-even rounding.
    spec = QuantSpec(bits=4, signed=False)  # codes 0..15
    s, z = F32(0.25), 3  # exact binary scale: x * R is exact
    qp = QParams(s, z, spec)
    top = (spec.qmax - z) * s  # 3.0, the largest representable value
    x = np.array([top, top + 0.125 - 2**-20, top + 0.125, top + 0.125 + 2**-20, top + 0.25 * 1.5], np.float32)
    # x / S = 12, 12.49.., 12.5 (tie -> 12, even: inside), 12.50.. (-> 13: clipped), 13.5
    _, mask = fake_quantize_with_mask(x, qp)
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    bottom = (spec.qmin - z) * s  # -0.75
    x = np.array([bottom, bottom - 0.125, bottom - 0.125 - 2**-20, bottom - 0.375], np.float32)
    # x / S = -3, -3.5 (tie -> -4: Z - 4 = -1 < qmin: clipped), ...
    _, mask = fake_quantize_with_mask(x, qp)
    np.testing.assert_array_equal(mask, [True, False, False, False])
    # -2.5 rounds to -2 (even): inside
    x = np.array([bottom + 0.125], np.float32)
    assert fake_quantize_with_mask(x, qp)[1].all()


def test_mask_follows_the_rounding_mode():
    spec = QuantSpec(bits=4, signed=False, rounding="half_away")
    qp = QParams(F32(0.25), 3, spec)
    x = np.array([3.125], np.float32)  # x / S = 12.5: half_away -> 13 + 3 > 15: clipped
    assert not fake_quantize_with_mask(x, qp)[1][0]
    qp = QParams(F32(0.25), 3, spec.replace(rounding="half_even"))
    assert fake_quantize_with_mask(x, qp)[1][0]


@pytest.mark.parametrize("method", ["mul", "divide", "mul_add", "fma"])
@pytest.mark.parametrize("rounding", ["half_even", "half_away", "half_up", "floor", "stochastic"])
def test_mask_equals_codes_of_a_wider_spec(method, rounding):
    # Oracle: the 4-bit mask says whether the 12-bit code with the same scale and zero
    # point (the unclamped 4-bit code) lies in [-8, 7]; same rounding, same noise.
    rng = np.random.default_rng(13)
    seed = 5 if rounding == "stochastic" else None
    narrow = QuantSpec(bits=4, rounding=rounding, seed=seed, axis=0)
    wide = narrow.replace(bits=12)
    scale = rng.uniform(0.05, 0.2, size=3).astype(np.float32)
    zp = rng.integers(-3, 4, size=3)
    x = _tie_data(rng, (3, 200), scale[:, None], zp[:, None], narrow)
    x[:, :10] *= 50  # far outside
    q12 = quantize(x, QParams(scale, zp, wide), method=method)
    _, mask = fake_quantize_with_mask(x, QParams(scale, zp, narrow), method=method)
    np.testing.assert_array_equal(mask, (q12 >= -8) & (q12 <= 7))
    assert mask.any() and not mask.all()


def test_per_group_mask_equals_per_element_oracle():
    rng = np.random.default_rng(7)
    spec = QuantSpec(bits=3, axis=1, block_size=4)
    x = (rng.normal(size=(3, 10)) * 2).astype(np.float32)
    qp = fit_qparams(x * F32(0.6), spec)
    _, mask = fake_quantize_with_mask(x, qp)
    for i in range(3):
        for j in range(10):
            b = j // 4
            one = QParams(qp.scale[i, b], qp.zero_point[i, b], spec.replace(axis=None, block_size=None))
            v = fake_quantize_with_mask(x[i : i + 1, j], one)
            assert v[1][0] == mask[i, j]
            assert _bits(v[0][0]) == _bits(fake_quantize(x, qp)[i, j])


def test_ste_backward_rules():
    mask = np.array([True, False, True, False])
    g = np.array([1.5, -2.0, -0.0, 3.0], np.float32)
    _assert_bits(ste_backward(g, mask, "clipped"), np.array([1.5, -0.0, -0.0, 0.0], np.float32))
    out = ste_backward(g, mask, "ste")
    _assert_bits(out, g)
    assert out is not g
    assert ste_backward(g.astype(np.float64), mask).dtype == np.float32


# ---------------------------------------------------------------------------------------
# Hypothesis properties


@st.composite
def _case(draw):
    bits = draw(st.integers(1, 16))
    signed = draw(st.booleans())
    symmetric = draw(st.booleans()) and bits >= 2  # 1-bit symmetric is refused (QuantSpec)
    narrow = draw(st.booleans()) and bits >= 2
    rounding = draw(st.sampled_from(["half_even", "half_away", "half_up"]))
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric, narrow_range=narrow, rounding=rounding)
    scale = F32(draw(st.floats(1e-4, 10.0)))
    zp = spec.symmetric_zero_point if symmetric else draw(st.integers(spec.qmin, spec.qmax))
    n = draw(st.integers(1, 40))
    span = float(F32(float(scale) * (spec.qmax - spec.qmin + 8)))
    x = np.array(draw(st.lists(st.floats(-span, span, width=32), min_size=n, max_size=n)), np.float32)
    return x, QParams(scale, zp, spec)


@given(_case())
def test_property_output_on_grid_and_idempotent(case):
    x, qp = case
    y, _ = fake_quantize_with_mask(x, qp)
    # on the grid: y is exactly the dequantization of a code in [qmin, qmax]
    q = quantize(y, qp, method="mul")
    _assert_bits(dequantize(q, qp), y)
    # idempotent (round-to-nearest modes)
    y2, mask2 = fake_quantize_with_mask(y, qp)
    _assert_bits(y2, y)
    assert mask2.all()  # a grid value is never clipped


@given(_case(), st.integers(0, 2**32 - 1))
def test_property_gradient_zero_exactly_where_clipped(case, seed):
    x, qp = case
    spec = qp.spec
    s, z = float(qp.scale), int(qp.zero_point)
    y, mask = fake_quantize_with_mask(x, qp)
    g = np.random.default_rng(seed).uniform(0.5, 2.0, x.shape).astype(np.float32)
    dx = ste_backward(g, mask, "clipped")
    np.testing.assert_array_equal(dx == 0, ~mask)
    np.testing.assert_array_equal(dx[mask], g[mask])
    # inside the representable range: always passes; more than half a step (plus float32
    # slack) beyond it: never passes
    lo, hi = s * (spec.qmin - z), s * (spec.qmax - z)
    x64 = x.astype(np.float64)
    assert mask[(x64 >= lo) & (x64 <= hi)].all()
    slack = s * (0.5 + 1e-5) + 1e-6 * np.abs(x64)
    assert not mask[(x64 > hi + slack) | (x64 < lo - slack)].any()
    # where the gradient is zero the value was clamped to an end of the grid
    ends = np.float32([s * (spec.qmin - z), s * (spec.qmax - z)])
    assert np.all(np.isin(y[~mask], (np.float32(spec.qmin - z) * qp.scale, np.float32(spec.qmax - z) * qp.scale))), ends
    np.testing.assert_array_equal(ste_backward(g, mask, "ste"), g)


# ---------------------------------------------------------------------------------------
# float64 finite differences


def _fq64(x, s, z, qmin, qmax):
    """Fake quantization in float64 with a real (not rounded) zero point."""
    return s * (np.clip(np.rint(x / s + z), qmin, qmax) - z)


def test_finite_differences_true_derivative_is_zero_off_the_steps_and_ste_is_the_clamp_surrogate():
    # Off the rounding steps the true derivative of fake quantization is 0; the clipped
    # STE replaces it by the derivative of clamp(x, S(qmin - Z - 1/2), S(qmax - Z + 1/2)).
    rng = np.random.default_rng(3)
    spec = QuantSpec(bits=4, signed=False)
    s, z = 0.1, 5
    qp = QParams(F32(s), z, spec)
    x = rng.uniform(-1.5, 2.0, 400).astype(np.float32)
    u = x.astype(np.float64) / F32(s) + z
    away = np.abs(u - np.floor(u) - 0.5) > 1e-3  # not near a tie
    x = x[away]
    h = 1e-6
    x64 = x.astype(np.float64)
    fd = (_fq64(x64 + h, s, z, 0, 15) - _fq64(x64 - h, s, z, 0, 15)) / (2 * h)
    np.testing.assert_array_equal(fd, 0.0)
    lo, hi = s * (spec.qmin - z - 0.5), s * (spec.qmax - z + 0.5)
    surrogate = lambda v: np.clip(v, lo, hi)  # noqa: E731
    fd_s = (surrogate(x64 + h) - surrogate(x64 - h)) / (2 * h)
    _, mask = fake_quantize_with_mask(x, qp)
    np.testing.assert_allclose(fd_s, ste_backward(np.ones_like(x), mask), atol=1e-6)


def test_finite_differences_lsq_scale_and_zero_point_where_clipped():
    # Where x is clipped, x_fq = S (qmax - Z): LSQ's gradients are the true derivatives
    # (qmax - Z, resp. qmin - Z, and -S).
    rng = np.random.default_rng(4)
    spec = QuantSpec(bits=4, signed=True)  # -8..7
    s, z = 0.05, -2.0
    x = np.concatenate([rng.uniform(0.6, 2, 30), rng.uniform(-2, -0.4, 30)]).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx, ds, dz = lsq_backward(dy, x, F32(s), F32(z), spec)
    assert np.all(dx == 0)
    h = 1e-7
    L = lambda s_, z_: float(np.dot(dy.astype(np.float64), _fq64(x.astype(np.float64), s_, z_, -8, 7)))  # noqa: E731
    fd_s = (L(s + h, z) - L(s - h, z)) / (2 * h)
    fd_z = (L(s, z + h) - L(s, z - h)) / (2 * h)
    assert abs(float(ds) - fd_s) <= 1e-5 * max(1, abs(fd_s))
    assert abs(float(dz) - fd_z) <= 1e-5 * max(1, abs(fd_z))


def test_finite_differences_pact_alpha_where_clipped():
    rng = np.random.default_rng(5)
    for spec in (QuantSpec(bits=4, signed=False), QuantSpec(bits=4, signed=True, symmetric=True)):
        a = 1.5
        x = rng.uniform(1.6, 4, 50).astype(np.float32)
        if spec.signed:
            x[::2] *= -1
        dy = rng.normal(size=x.shape).astype(np.float32)
        dx, da = pact_backward(dy, x, a, spec)
        assert np.all(dx == 0)
        lo = -1.0 if spec.signed else 0.0

        def L(a_, spec=spec, x=x, lo=lo, dy=dy):
            st_ = a_ / spec.qmax
            v = np.clip(x.astype(np.float64), lo * a_, a_)
            return float(np.dot(dy, st_ * np.rint(v / st_)))

        h = 1e-7
        fd = (L(a + h) - L(a - h)) / (2 * h)
        assert abs(float(da) - fd) <= 1e-5 * max(1, abs(fd))


# ========================================================================================
# LSQ and PACT without torch


def test_lsq_inside_gradient_is_the_paper_formula():
    # symmetric, Z = 0: d scale = round(x / S) - x / S inside, -Q_N / Q_P at the ends
    spec = QuantSpec(bits=3, signed=True, symmetric=True)  # -4..3
    s = F32(0.5)
    x = np.array([0.3, -0.8, 1.2, 5.0, -7.0], np.float32)
    dx, ds, dz = lsq_backward(np.ones_like(x), x, s, 0, spec)
    v = x.astype(np.float64) / 0.5
    per = np.where(v > 3.5, 3, np.where(v < -4.5, -4, np.rint(v) - v))
    assert abs(float(ds) - per.sum()) < 1e-6
    np.testing.assert_array_equal(dx, [1, 1, 1, 0, 0])


def test_lsq_grad_factor():
    spec = QuantSpec(bits=8, signed=False)
    assert lsq_grad_factor(1000, spec) == F32(1.0 / (1000 * 255) ** 0.5)
    assert lsq_grad_factor(10, QuantSpec(bits=1, signed=True)) == F32(1 / math.sqrt(10))


def test_lsq_per_group_sums_over_blocks():
    rng = np.random.default_rng(8)
    spec = QuantSpec(bits=4, axis=1, block_size=3)
    x = rng.normal(size=(2, 7)).astype(np.float32)
    s = rng.uniform(0.05, 0.2, size=(2, 3)).astype(np.float32)
    z = rng.integers(-3, 3, size=(2, 3)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx, ds, dz = lsq_backward(dy, x, s, z, spec)
    assert ds.shape == dz.shape == (2, 3)
    for i in range(2):
        for b in range(3):
            sl = slice(3 * b, min(3 * b + 3, 7))
            one = spec.replace(axis=None, block_size=None)
            dxi, dsi, dzi = lsq_backward(dy[i, sl], x[i, sl], s[i, b], z[i, b], one)
            _assert_bits(dxi, dx[i, sl])
            _assert_bits(dsi, ds[i, b])
            _assert_bits(dzi, dz[i, b])
    y = lsq_forward(x, s, z, spec)
    _assert_bits(y, fake_quantize(x, QParams(s, z.astype(int), spec), method="mul"))


@pytest.mark.slow  # training: run in the JIT pass
def test_lsq_layer_learns_a_better_step_than_a_bad_start():
    rng = np.random.default_rng(9)
    x = rng.normal(size=4000).astype(np.float32)
    spec = QuantSpec(bits=3, signed=True, symmetric=True)
    layer = LSQFakeQuantize(spec, scale=2.0, grad_scale=False).train()
    mse = []
    for _ in range(300):
        layer.zero_grad()
        y = layer(x)
        d = y - x
        mse.append(float(np.mean(d.astype(np.float64) ** 2)))
        dx = layer.backward(2 * d / x.size)
        layer.scale -= F32(0.05) * layer.grads["scale"]
    assert mse[-1] < 0.35 * mse[0]
    # the LSQ optimum for 3-bit Gaussian data is near 0.5 (step of the MSE-optimal grid)
    assert 0.3 < float(layer.scale) < 0.7
    assert dx.shape == x.shape


def test_lsq_layer_contract_and_init():
    rng = np.random.default_rng(10)
    x = (rng.normal(size=(16, 5)) + 1).astype(np.float32)
    spec = QuantSpec(bits=4, signed=False)
    layer = LSQFakeQuantize(spec)
    assert not layer.training  # layers start in eval mode, as npquant.models.nn's
    layer.train()
    params = layer.parameters()
    assert set(params) == {"scale", "zero_point"} == set(layer.grads)
    scale_arr = params["scale"]
    assert scale_arr.shape == () and scale_arr.dtype == np.float32
    layer(x)  # the first training batch initializes in place
    assert layer.parameters()["scale"] is scale_arr
    want = F32(max(2 * np.mean(np.abs(x.astype(np.float64))) / math.sqrt(15), 0))
    assert float(scale_arr) == pytest.approx(float(want), rel=1e-6)
    assert float(layer.zero_point) == 0
    mm = LSQFakeQuantize(spec, init="minmax").train()
    mm(x)
    qp = fit_qparams(x, spec)
    assert mm.scale == qp.scale and mm.zero_point == qp.zero_point
    # gradients accumulate and zero_grad resets them
    dy = rng.normal(size=x.shape).astype(np.float32)
    layer(x)
    layer.backward(dy)
    g1 = layer.grads["scale"].copy()
    layer.backward(dy)
    _assert_bits(layer.grads["scale"], 2 * g1)
    layer.zero_grad()
    assert layer.grads["scale"] == 0 and layer.grads["zero_point"] == 0
    # a step that makes the scale negative is clamped to eps (in place), as PyTorch does
    scale_arr[...] = -1.0
    layer(x)
    assert float(scale_arr) == np.finfo(np.float32).eps
    # symmetric: only the scale is a parameter
    sym = LSQFakeQuantize(QuantSpec(bits=4, symmetric=True), scale=0.1)
    assert set(sym.parameters()) == {"scale"}
    # per-channel needs the parameter shape up front
    pc = LSQFakeQuantize(QuantSpec(bits=4, symmetric=True, axis=1), param_shape=(5,)).train()
    pc(x)
    assert pc.scale.shape == (5,)
    # eval mode: no init, no caching
    fresh = LSQFakeQuantize(spec).eval()
    with pytest.raises(RuntimeError, match="not initialized"):
        fresh(x)
    layer.eval()
    layer(x)
    with pytest.raises(RuntimeError, match="train"):
        layer.backward(dy)


def test_pact_forward_and_backward():
    spec = QuantSpec(bits=2, signed=False)  # 0..3
    x = np.array([-1.0, 0.0, 0.4, 1.0, 2.9, 3.0, 5.0], np.float32)
    y = pact_forward(x, 3.0, spec)
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 3, 3, 3])
    assert float(pact_qparams(3.0, spec).scale) == 1.0
    dy = np.arange(1, 8, dtype=np.float32)
    dx, da = pact_backward(dy, x, 3.0, spec)
    np.testing.assert_array_equal(dx, [0, 2, 3, 4, 5, 0, 0])
    assert float(da) == 6 + 7
    sspec = QuantSpec(bits=3, signed=True, symmetric=True)  # grid step alpha / 3
    dx, da = pact_backward(dy, x * 2 - 3, 3.0, sspec)  # -5, -3, -2.2, -1, 2.8, 3, 7
    np.testing.assert_array_equal(dx, [0, 0, 3, 4, 5, 0, 0])
    assert float(da) == 6 + 7 - 1 - 2
    ys = pact_forward(x * 2 - 3, 3.0, sspec)
    np.testing.assert_array_equal(ys, [-3, -3, -2, -1, 3, 3, 3])
    layer = PACTFakeQuantize(spec, alpha=3.0).train()
    a = layer.parameters()["alpha"]
    layer(x)
    layer.backward(dy)
    assert float(layer.grads["alpha"]) == 13
    a -= F32(1.0)
    np.testing.assert_array_equal(layer(x), pact_forward(x, 2.0, spec))


# ========================================================================================
# observer-driven FakeQuantize layer


def test_fake_quantize_layer_observes_in_training_only_and_freezes():
    rng = np.random.default_rng(11)
    fq = activation_fake_quant(averaging_constant=0.5).train()
    assert isinstance(fq.observer, MovingAverageMinMaxObserver)
    x1 = rng.uniform(0, 4, (8, 3)).astype(np.float32)
    x2 = rng.uniform(0, 8, (8, 3)).astype(np.float32)
    y1 = fq(x1)
    qp1 = fq.qparams
    obs = MovingAverageMinMaxObserver(QuantSpec(signed=False), averaging_constant=0.5)
    assert qp1.scale == obs.update(x1).qparams().scale
    _assert_bits(y1, fake_quantize(x1, qp1, method="mul"))
    fq(x2)
    qp2 = fq.qparams
    assert qp2.scale == obs.update(x2).qparams().scale != qp1.scale
    fq.eval()
    fq(x1 * 10)  # eval: no observation
    assert fq.qparams is qp2
    fq.train().disable_observer()
    fq(x1 * 10)  # frozen
    assert fq.qparams is qp2
    fq.disable_fake_quant()
    _assert_bits(fq(x1), x1)
    g = rng.normal(size=x1.shape).astype(np.float32)
    _assert_bits(fq.backward(g), g)
    fq.enable_fake_quant()
    y = fq(x1 * 3)
    _, mask = fake_quantize_with_mask(x1 * 3, qp2)
    _assert_bits(fq.backward(g), g * mask)
    assert fq.parameters() == {} and fq.grads == {}
    _assert_bits(y, fake_quantize(x1 * 3, qp2, method="mul"))


def test_weight_fake_quant_follows_the_current_weights():
    rng = np.random.default_rng(12)
    fq = weight_fake_quant().train()
    assert isinstance(fq.observer, PerChannelMinMaxObserver) and fq.reset_observer
    w = rng.normal(size=(4, 6)).astype(np.float32)
    fq(w * 10)
    fq(w)
    qp = fit_qparams(w, QuantSpec(bits=8, symmetric=True, axis=0))
    np.testing.assert_array_equal(fq.qparams.scale, qp.scale)
    per_tensor = weight_fake_quant(QuantSpec(bits=4, symmetric=True))
    assert isinstance(per_tensor.observer, MinMaxObserver)
    grouped = weight_fake_quant(QuantSpec(bits=4, symmetric=True, axis=1, block_size=4)).train()
    _assert_bits(grouped(w), fake_quantize(w, fit_qparams(w, grouped.spec), method="mul"))
    assert isinstance(
        activation_fake_quant(QuantSpec(signed=False, axis=1)).observer, MovingAveragePerChannelMinMaxObserver
    )


def test_fake_quantize_layer_fixed_qparams_and_errors():
    qp = QParams(F32(0.1), 0, QuantSpec(bits=4))
    fq = FakeQuantize(qparams=qp, gradient="ste").train()
    x = np.array([5.0, -5.0], np.float32)
    fq(x)
    _assert_bits(fq.backward(np.ones(2, np.float32)), [1, 1])
    with pytest.raises(ValueError, match="observer"):
        fq.enable_observer()
    nothing = FakeQuantize(MinMaxObserver(QuantSpec())).eval()
    with pytest.raises(RuntimeError, match="no qparams"):
        nothing(x)
    with pytest.raises(RuntimeError, match="before forward"):
        FakeQuantize(qparams=qp).train().backward(x)
    with pytest.raises(ValueError, match="grad_y has shape"):
        fq.backward(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="grad_y contains NaN"):
        fq.backward(np.array([1, np.nan], np.float32))
    with pytest.raises(ValueError, match="FakeQuantize needs"):
        FakeQuantize()
    with pytest.raises(ValueError, match="gradient must be one of"):
        FakeQuantize(qparams=qp, gradient="lsq")
    with pytest.raises(ValueError, match="method must be one of"):
        FakeQuantize(qparams=qp, method="round")
    with pytest.raises(TypeError, match="observer must be"):
        FakeQuantize(object())
    with pytest.raises(ValueError, match="effective spec"):
        FakeQuantize(MinMaxObserver(QuantSpec(bits=8)), qparams=qp)


# ========================================================================================
# bad input


def test_bad_input_errors_name_the_argument():
    x = np.array([0.5, -1.0], np.float32)
    spec = QuantSpec(bits=4)
    for bits in (0, 17):
        with pytest.raises(ValueError, match="bits must be in"):
            weight_fake_quant(QuantSpec(bits=bits))
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="scale must be positive"):
            lsq_forward(x, bad, 0, spec)
        with pytest.raises(ValueError, match="scale must be positive"):
            LSQFakeQuantize(spec, scale=bad)
        with pytest.raises(ValueError, match="scale must be positive"):
            lsq_backward(x, x, bad, 0, spec)
        with pytest.raises(ValueError, match="alpha must be positive"):
            pact_forward(x, bad, QuantSpec(bits=4, signed=False))
    with pytest.raises(ValueError, match="zero_point must be finite"):
        lsq_forward(x, 0.1, np.nan, spec)
    nan_x = np.array([0.5, np.nan], np.float32)
    layers = [
        FakeQuantize(qparams=QParams(F32(0.1), 0, spec)),
        activation_fake_quant(),
        weight_fake_quant(QuantSpec(bits=4, symmetric=True)),
        LSQFakeQuantize(spec, scale=0.1),
        PACTFakeQuantize(QuantSpec(bits=4, signed=False)),
    ]
    for layer in layers:
        layer.train()
        with pytest.raises(ValueError, match="x contains NaN"):
            layer(nan_x)
        with pytest.raises(TypeError, match="x must be a floating-point"):
            layer(np.array([1, 2]))
    with pytest.raises(ValueError, match="x contains NaN"):
        fake_quantize_with_mask(nan_x, QParams(F32(0.1), 0, spec))
    with pytest.raises(ValueError, match="grad_y has shape"):
        lsq_backward(np.ones(3, np.float32), x, 0.1, 0, spec)
    with pytest.raises(ValueError, match="grad_method must be one of"):
        lsq_backward(x, x, 0.1, 0, spec, grad_method="fast")
    with pytest.raises(ValueError, match="grad_factor must be positive"):
        lsq_backward(x, x, 0.1, 0, spec, grad_factor=0.0)
    with pytest.raises(ValueError, match="scale of shape"):
        lsq_backward(x, x, np.ones(3, np.float32), 0, QuantSpec(bits=4, axis=0))
    with pytest.raises(ValueError, match="param_shape"):
        LSQFakeQuantize(QuantSpec(bits=4, axis=0))
    with pytest.raises(ValueError, match="learn_zero_point"):
        LSQFakeQuantize(QuantSpec(bits=4, symmetric=True), learn_zero_point=True)
    with pytest.raises(ValueError, match="init must be one of"):
        LSQFakeQuantize(spec, init="kmeans")
    with pytest.raises(ValueError, match="symmetric"):
        PACTFakeQuantize(QuantSpec(bits=4, signed=True))
    with pytest.raises(ValueError, match="axis must be None"):
        PACTFakeQuantize(QuantSpec(bits=4, signed=False, axis=0))
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        LSQFakeQuantize(8)
    with pytest.raises(TypeError, match="qparams must be a QParams"):
        fake_quantize_with_mask(x, 0.1)
    with pytest.raises(TypeError, match="mask must be a bool"):
        ste_backward(x, np.ones(2))
    layer = LSQFakeQuantize(spec, scale=0.1).train()
    layer.scale[...] = np.nan
    with pytest.raises(ValueError, match="scale contains NaN"):
        layer(x)
    p = PACTFakeQuantize(QuantSpec(bits=4, signed=False))
    p.alpha[...] = -1
    with pytest.raises(ValueError, match="alpha must be positive"):
        p(x)


# ========================================================================================
# PyTorch: bit-exact forward and backward


def _torch():
    torch = pytest.importorskip("torch")
    return torch


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    skip_torch_threads_without_jit(request.param)
    torch = _torch()
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


SPECS = [
    QuantSpec(bits=8, signed=False),
    QuantSpec(bits=8, signed=True),
    QuantSpec(bits=4, signed=True),
    QuantSpec(bits=2, signed=False),
    QuantSpec(bits=1, signed=False),
    QuantSpec(bits=1, signed=True),
    QuantSpec(bits=16, signed=True),
    QuantSpec(bits=16, signed=False),
    QuantSpec(bits=7, signed=True, narrow_range=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{'s' if s.signed else 'u'}{s.bits}")
def test_torch_fake_quantize_per_tensor_forward_and_grad(spec, threads):
    torch = _torch()
    rng = np.random.default_rng(100 + spec.bits + threads)
    for n in (1, 9, 1000, 40000):
        scale = F32(rng.uniform(1e-3, 0.1))
        zp = int(rng.integers(spec.qmin, spec.qmax + 1))
        x = _tie_data(rng, (n,), scale, zp, spec)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        yt = torch.fake_quantize_per_tensor_affine(xt, float(scale), zp, spec.qmin, spec.qmax)
        dy = rng.normal(size=n).astype(np.float32)
        yt.backward(torch.from_numpy(dy))
        qp = QParams(scale, zp, spec)
        y, mask = fake_quantize_with_mask(x, qp)
        _assert_bits(y, yt.detach().numpy())
        _assert_bits(ste_backward(dy, mask), xt.grad.numpy())
        # the tensor-qparams overload (what torch's FakeQuantize module calls)
        xt2 = torch.from_numpy(x.copy()).requires_grad_()
        yt2 = torch.fake_quantize_per_tensor_affine(
            xt2, torch.tensor(float(scale)), torch.tensor(zp, dtype=torch.int32), spec.qmin, spec.qmax
        )
        yt2.backward(torch.from_numpy(dy))
        _assert_bits(y, yt2.detach().numpy())
        _assert_bits(ste_backward(dy, mask), xt2.grad.numpy())


@pytest.mark.parametrize("spec", SPECS[:4] + SPECS[6:7], ids=lambda s: f"{'s' if s.signed else 'u'}{s.bits}")
def test_torch_fake_quantize_per_channel_forward_and_grad(spec, threads):
    torch = _torch()
    rng = np.random.default_rng(200 + spec.bits + threads)
    for shape in [(5,), (3, 17), (4, 3, 9), (2, 3, 4, 5), (64, 300)]:
        for axis in range(len(shape)):
            c = shape[axis]
            scale = rng.uniform(1e-3, 0.1, size=c).astype(np.float32)
            zp = rng.integers(spec.qmin, spec.qmax + 1, size=c)
            bshape = [1] * len(shape)
            bshape[axis] = c
            x = _tie_data(rng, shape, scale.reshape(bshape), zp.reshape(bshape), spec)
            xt = torch.from_numpy(x.copy()).requires_grad_()
            yt = torch.fake_quantize_per_channel_affine(
                xt, torch.from_numpy(scale), torch.from_numpy(zp.astype(np.int32)), axis, spec.qmin, spec.qmax
            )
            dy = rng.normal(size=shape).astype(np.float32)
            yt.backward(torch.from_numpy(dy))
            qp = QParams(scale, zp, spec.replace(axis=axis))
            y, mask = fake_quantize_with_mask(x, qp)
            _assert_bits(y, yt.detach().numpy())
            _assert_bits(ste_backward(dy, mask), xt.grad.numpy())


def test_torch_fake_quantize_module_with_moving_average_observer():
    torch = _torch()
    from torch.ao.quantization import FakeQuantize as TFQ
    from torch.ao.quantization import MovingAverageMinMaxObserver as TMA
    from torch.ao.quantization import MovingAveragePerChannelMinMaxObserver as TMAC

    rng = np.random.default_rng(300)
    cases = [
        (
            TFQ(
                observer=TMA,
                quant_min=0,
                quant_max=255,
                dtype=torch.quint8,
                qscheme=torch.per_tensor_affine,
                averaging_constant=0.1,
            ),
            activation_fake_quant(QuantSpec(bits=8, signed=False), averaging_constant=0.1),
        ),
        (
            TFQ(observer=TMA, quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
            activation_fake_quant(QuantSpec(bits=8, signed=True, symmetric=True)),
        ),
        (
            TFQ(
                observer=TMAC,
                quant_min=-128,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric,
                ch_axis=1,
            ),
            activation_fake_quant(QuantSpec(bits=8, signed=True, symmetric=True, axis=1)),
        ),
    ]
    for tfq, fq in cases:
        tfq.train()
        fq.train()
        for step in range(6):
            x = (rng.normal(size=(8, 6)) * (1 + step) + step * 0.3).astype(np.float32)
            xt = torch.from_numpy(x.copy()).requires_grad_()
            yt = tfq(xt)
            dy = rng.normal(size=x.shape).astype(np.float32)
            yt.backward(torch.from_numpy(dy))
            y = fq(x)
            _assert_bits(y, yt.detach().numpy())
            _assert_bits(fq.backward(dy), xt.grad.numpy())
            _assert_bits(fq.qparams.scale, tfq.scale.numpy().reshape(fq.qparams.scale.shape))
            np.testing.assert_array_equal(
                fq.qparams.zero_point, tfq.zero_point.numpy().reshape(fq.qparams.zero_point.shape)
            )


def test_torch_fake_quantize_module_weights_per_channel_min_max():
    torch = _torch()
    from torch.ao.quantization import FakeQuantize as TFQ
    from torch.ao.quantization import PerChannelMinMaxObserver as TPC

    rng = np.random.default_rng(301)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    tfq = TFQ(
        observer=TPC, quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0
    )
    wt = torch.from_numpy(w.copy()).requires_grad_()
    yt = tfq(wt)
    dy = rng.normal(size=w.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    fq = weight_fake_quant().train()  # per output channel, symmetric int8
    _assert_bits(fq(w), yt.detach().numpy())
    _assert_bits(fq.backward(dy), wt.grad.numpy())


def _grad_method(torch):
    """The LSQ backward arithmetic of the ATen kernels dispatched on this CPU."""
    return "mul_add" if torch.backends.cpu.get_cpu_capability() == "DEFAULT" else "fma"


def _torch_lsq_per_tensor(torch, x, s, z, spec, gf, dy):
    xt = torch.from_numpy(np.array(x, np.float32)).requires_grad_()
    st_ = torch.tensor([float(s)], requires_grad=True)
    zt = torch.tensor([float(z)], requires_grad=True)
    yt = torch._fake_quantize_learnable_per_tensor_affine(xt, st_, zt, spec.qmin, spec.qmax, float(gf))
    yt.backward(torch.from_numpy(np.array(dy, np.float32)))
    return yt.detach().numpy(), xt.grad.numpy(), st_.grad.numpy()[0], zt.grad.numpy()[0]


LSQ_SPECS = [
    QuantSpec(bits=8, signed=False),
    QuantSpec(bits=8, signed=True),
    QuantSpec(bits=4, signed=True),
    QuantSpec(bits=3, signed=False),
    QuantSpec(bits=16, signed=True),
]


def _lsq_ids(s):
    return f"{'s' if s.signed else 'u'}{s.bits}"


def _rel(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


@pytest.mark.parametrize("spec", LSQ_SPECS, ids=_lsq_ids)
def test_torch_lsq_per_tensor(spec):
    torch = _torch()
    rng = np.random.default_rng(400 + spec.bits)
    for n in (1, 300, 5000):
        scale = F32(rng.uniform(1e-3, 0.1))
        zp = float(rng.integers(spec.qmin, spec.qmax + 1))
        x = _tie_data(rng, (n,), scale, int(zp), spec)
        dy = rng.normal(size=n).astype(np.float32)
        gf = lsq_grad_factor(n, spec)
        y_t, dx_t, ds_t, dz_t = _torch_lsq_per_tensor(torch, x, scale, zp, spec, gf, dy)
        _assert_bits(lsq_forward(x, scale, zp, spec), y_t)
        dx, ds, dz = lsq_backward(
            dy, x, scale, zp, spec, grad_factor=gf, backward_zero_point="torch", grad_method=_grad_method(torch)
        )
        _assert_bits(dx, dx_t)
        # the sums: float64 here, float32 in torch's order there
        assert _rel(ds, ds_t) < 1e-5
        assert _rel(dz, dz_t) < 1e-5 or abs(dz - dz_t) < 1e-6 * abs(float(scale))
    # each element's contribution, bit for bit (one element per torch call)
    scale = F32(0.0123457)
    zp = float((spec.qmin + spec.qmax + 1) // 2)
    x = _tie_data(rng, (250,), scale, int(zp), spec)
    dy = rng.normal(size=x.shape).astype(np.float32)
    for i in range(x.size):
        _, dx_t, ds_t, dz_t = _torch_lsq_per_tensor(torch, x[i : i + 1], scale, zp, spec, 0.37, dy[i : i + 1])
        dx, ds, dz = lsq_backward(
            dy[i : i + 1],
            x[i : i + 1],
            scale,
            zp,
            spec,
            grad_factor=0.37,
            backward_zero_point="torch",
            grad_method=_grad_method(torch),
        )
        _assert_bits(dx, dx_t)
        _assert_bits(ds, ds_t)
        _assert_bits(dz, dz_t)


def _torch_lsq_per_channel(torch, x, s, z, axis, spec, gf, dy):
    xt = torch.from_numpy(np.array(x, np.float32)).requires_grad_()
    st_ = torch.from_numpy(np.array(s, np.float32)).requires_grad_()
    zt = torch.from_numpy(np.array(z, np.float32)).requires_grad_()
    yt = torch._fake_quantize_learnable_per_channel_affine(xt, st_, zt, axis, spec.qmin, spec.qmax, float(gf))
    yt.backward(torch.from_numpy(np.array(dy, np.float32)))
    return yt.detach().numpy(), xt.grad.numpy(), st_.grad.numpy(), zt.grad.numpy()


def _per_element_channel_case(rng, spec, n=20000):
    """x of shape (n, 1) with one channel per element: torch's sums are then exact."""
    s = rng.uniform(1e-3, 0.1, size=n).astype(np.float32)
    z = rng.integers(spec.qmin, spec.qmax + 1, size=n).astype(np.float32)
    # fractional zero points too: torch and npquant both use rint(z)
    z[::3] += rng.uniform(-0.49, 0.49, size=z[::3].size).astype(np.float32)
    z = np.clip(z, spec.qmin, spec.qmax).astype(np.float32)
    x = _tie_data(rng, (n, 1), s[:, None], np.rint(z)[:, None].astype(int), spec)
    dy = rng.normal(size=(n, 1)).astype(np.float32)
    return x, s, z, dy


@pytest.mark.parametrize("spec", LSQ_SPECS[1:3], ids=_lsq_ids)
def test_torch_lsq_per_channel(spec):
    torch = _torch()
    rng = np.random.default_rng(500 + spec.bits)
    aspec = spec.replace(axis=0)
    x, s, z, dy = _per_element_channel_case(rng, spec)
    y_t, dx_t, ds_t, dz_t = _torch_lsq_per_channel(torch, x, s, z, 0, spec, 0.3, dy)
    _assert_bits(lsq_forward(x, s, z, aspec), y_t)
    dx, ds, dz = lsq_backward(dy, x, s, z, aspec, grad_factor=0.3, grad_method=_grad_method(torch))
    _assert_bits(dx, dx_t)
    _assert_bits(ds, ds_t)
    _assert_bits(dz, dz_t)
    # whole tensors: sums agree to rounding
    for shape, axis in [((4, 3, 9), 1), ((64, 30), 0), ((2, 3, 4, 5), 3)]:
        c = shape[axis]
        s = rng.uniform(1e-3, 0.1, size=c).astype(np.float32)
        z = rng.integers(spec.qmin, spec.qmax + 1, size=c).astype(np.float32)
        bshape = [1] * len(shape)
        bshape[axis] = c
        x = _tie_data(rng, shape, s.reshape(bshape), z.reshape(bshape).astype(int), spec)
        dy = rng.normal(size=shape).astype(np.float32)
        gf = lsq_grad_factor(x.size, spec)
        y_t, dx_t, ds_t, dz_t = _torch_lsq_per_channel(torch, x, s, z, axis, spec, gf, dy)
        cspec = spec.replace(axis=axis)
        _assert_bits(lsq_forward(x, s, z, cspec), y_t)
        dx, ds, dz = lsq_backward(dy, x, s, z, cspec, grad_factor=gf, grad_method=_grad_method(torch))
        _assert_bits(dx, dx_t)
        np.testing.assert_allclose(ds, ds_t, rtol=1e-5, atol=1e-6 * np.abs(ds_t).max())
        np.testing.assert_allclose(dz, dz_t, rtol=1e-5, atol=1e-6 * np.abs(dz_t).max() + 1e-12)


def test_torch_lsq_grad_method_distinction_is_real():
    # On ties the two arithmetics give different codes; torch on this CPU path is "fma"
    # (AVX2/AVX-512 kernels); "mul_add" is its DEFAULT kernel (tested in a subprocess).
    torch = _torch()
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        pytest.skip(f"ATen runs its {cap} kernels here")
    rng = np.random.default_rng(600)
    spec = QuantSpec(bits=8, signed=True)
    x, s, z, dy = _per_element_channel_case(rng, spec)
    z = np.rint(z)
    _, _, ds_t, _ = _torch_lsq_per_channel(torch, x, s, z, 0, spec, 1.0, dy)
    _, ds_other, _ = lsq_backward(dy, x, s, z, spec.replace(axis=0), grad_method="mul_add")
    assert np.any(_bits(ds_other) != _bits(ds_t))


_DEFAULT_KERNEL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    d = np.load(sys.argv[1])
    xt = torch.from_numpy(d["x"]).requires_grad_()
    st = torch.from_numpy(d["s"]).requires_grad_()
    zt = torch.from_numpy(d["z"]).requires_grad_()
    yt = torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, 0, -128, 127, 0.3)
    yt.backward(torch.from_numpy(d["dy"]))
    np.savez(sys.argv[2], y=yt.detach().numpy(), dx=xt.grad.numpy(), ds=st.grad.numpy(),
             dz=zt.grad.numpy())
""")


@pytest.mark.slow  # a torch subprocess: run in the JIT pass
def test_torch_lsq_default_cpu_kernel_is_mul_add(tmp_path):
    _torch()
    rng = np.random.default_rng(601)
    spec = QuantSpec(bits=8, signed=True)
    x, s, z, dy = _per_element_channel_case(rng, spec)
    np.savez(tmp_path / "in.npz", x=x, s=s, z=z, dy=dy)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run(
        [sys.executable, "-c", _DEFAULT_KERNEL_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        env=env,
        timeout=300,
    )
    t = np.load(tmp_path / "out.npz")
    aspec = spec.replace(axis=0)
    _assert_bits(lsq_forward(x, s, z, aspec), t["y"])
    dx, ds, dz = lsq_backward(dy, x, s, z, aspec, grad_factor=0.3, grad_method="mul_add")
    _assert_bits(dx, t["dx"])
    _assert_bits(ds, t["ds"])
    _assert_bits(dz, t["dz"])
    _, ds_fma, _ = lsq_backward(dy, x, s, z, aspec, grad_factor=0.3, grad_method="fma")
    assert np.any(_bits(ds_fma) != _bits(t["ds"]))


def test_torch_lsq_fractional_zero_point_backward():
    # ATen's per-tensor backward rounds the zero point as trunc(clamp(z + 0.5)); its
    # forward (and the per-channel backward) use rint(z). They differ for a negative
    # fractional z and for every negative *integer* z (trunc(-5 + 0.5) = -4).
    torch = _torch()
    spec = QuantSpec(bits=8, signed=True)
    rng = np.random.default_rng(602)
    s = F32(0.02)
    for z in (-3.3, -2.5, 2.5, 4.7, -127.8, -5.0, 3.0):
        x = _tie_data(rng, (64,), s, int(np.rint(z)), spec)
        dy = rng.normal(size=x.shape).astype(np.float32)
        dys = [dy[i : i + 1] for i in range(x.size)]
        res = [_torch_lsq_per_tensor(torch, x[i : i + 1], s, z, spec, 1.0, dys[i]) for i in range(x.size)]
        y_t = np.concatenate([r[0] for r in res])
        _assert_bits(lsq_forward(x, s, z, spec), y_t)
        for i in range(x.size):
            dx, ds, dz = lsq_backward(
                dys[i], x[i : i + 1], s, F32(z), spec, backward_zero_point="torch", grad_method=_grad_method(torch)
            )
            _assert_bits(dx, res[i][1])
            _assert_bits(ds, res[i][2])
            _assert_bits(dz, res[i][3])
        _, ds_f, _ = lsq_backward(dy, x, s, F32(z), spec)
        _, ds_t, _ = lsq_backward(dy, x, s, F32(z), spec, backward_zero_point="torch")
        # trunc(-2.8) = -2 but rint(-3.3) = -3; trunc(-4.5) = -4 but z = -5; trunc(3.0) = 3
        # but rint(2.5) = 2 (half-even); -2.5, 4.7 and 3.0 agree
        assert (ds_f != ds_t) == (z in (-3.3, -5.0, -127.8, 2.5))


def test_torch_learnable_fake_quantize_module():
    torch = _torch()
    from torch.ao.quantization import MovingAverageMinMaxObserver as TMA
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    rng = np.random.default_rng(700)
    x = (rng.normal(size=(32, 10)) * 2).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    tq = _LearnableFakeQuantize(
        observer=TMA,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        use_grad_scaling=True,
        scale=0.05,
        zero_point=100.0,
    )
    tq.enable_param_learning()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = tq(xt)
    yt.backward(torch.from_numpy(dy))
    lq = LSQFakeQuantize(
        QuantSpec(bits=8, signed=False), scale=0.05, zero_point=100.0, grad_method=_grad_method(torch)
    ).train()
    y = lq(x)
    dx = lq.backward(dy)
    _assert_bits(y, yt.detach().numpy())
    _assert_bits(dx, xt.grad.numpy())
    assert _rel(lq.grads["scale"], tq.scale.grad.numpy()[0]) < 1e-5
    assert _rel(lq.grads["zero_point"], tq.zero_point.grad.numpy()[0]) < 1e-5


# ========================================================================================
# QAT layers (npquant.training.qat)

from npquant.models import nn  # noqa: E402
from npquant.training.qat import QATConv2d, QATConvBn2d, QATLinear  # noqa: E402


def _linear(rng, i, o, name="fc"):
    return nn.Linear(
        (rng.normal(size=(o, i)) / np.sqrt(i)).astype(np.float32),
        (rng.normal(size=o) * 0.1).astype(np.float32),
        name=name,
    )


def _conv(rng, cin, cout, k, groups=1, bias=True, name="conv", **kw):
    w = (rng.normal(size=(cout, cin // groups, k, k)) / np.sqrt(cin * k * k / groups)).astype(np.float32)
    b = (rng.normal(size=cout) * 0.1).astype(np.float32) if bias else None
    return nn.Conv2d(w, b, groups=groups, name=name, **kw)


def test_qat_linear_forward_is_the_composition_and_contract():
    rng = np.random.default_rng(800)
    fc = _linear(rng, 6, 4)
    q = QATLinear(fc, activation="relu")
    assert q.name == "fc" and not q.training
    q.train()
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = q(x)
    wq = fake_quantize(fc.weight, fit_qparams(fc.weight, QuantSpec(bits=8, symmetric=True, axis=0)), method="mul")
    pre = np.maximum(x @ wq.T + fc.bias, F32(0))
    _assert_bits(y, fake_quantize(pre, q.act_fake_quant.qparams, method="mul"))
    assert set(q.parameters()) == {"weight", "bias"} == set(q.grads)
    assert q.parameters()["weight"] is fc.weight
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx = q.backward(dy)
    assert dx.shape == x.shape
    g1 = q.grads["weight"].copy()
    q.backward(dy)
    np.testing.assert_allclose(q.grads["weight"], 2 * g1, rtol=1e-6)
    q.zero_grad()
    assert not q.grads["weight"].any()
    sd = q.state_dict()
    assert set(sd) == {"weight", "bias"}
    q.eval()
    with pytest.raises(RuntimeError, match="train"):
        q.backward(dy)
    # a learned range adds its parameter under the fake quant's prefix
    lsq = QATLinear(
        _linear(rng, 6, 4),
        weight_fake_quant=LSQFakeQuantize(QuantSpec(bits=4, symmetric=True, axis=0), param_shape=(4,)),
        act_fake_quant=PACTFakeQuantize(QuantSpec(bits=4, signed=False), alpha=2.0),
    )
    assert set(lsq.parameters()) == {"weight", "bias", "weight_fake_quant.scale", "act_fake_quant.alpha"}
    lsq.train()
    lsq(x)
    lsq.backward(dy)
    assert lsq.grads["act_fake_quant.alpha"] != 0 and np.any(lsq.grads["weight_fake_quant.scale"] != 0)
    sd = lsq.state_dict()
    lsq2 = QATLinear(
        _linear(rng, 6, 4),
        weight_fake_quant=LSQFakeQuantize(QuantSpec(bits=4, symmetric=True, axis=0), param_shape=(4,)),
        act_fake_quant=None,
    )
    lsq2.load_state_dict(sd, strict=False)
    _assert_bits(lsq2.weight, lsq.weight)
    _assert_bits(lsq2.weight_fake_quant.scale, lsq.weight_fake_quant.scale)
    with pytest.raises(TypeError, match="layer must be"):
        QATLinear(_conv(rng, 2, 2, 1))
    with pytest.raises(ValueError, match="activation must be"):
        QATLinear(fc, activation="gelu")
    with pytest.raises(TypeError, match="weight_fake_quant must be"):
        QATLinear(fc, weight_fake_quant=None)


def _torch_fq_from(torch, t, qp):
    """torch fake quantization of tensor t with npquant qparams (autograd: the clipped STE)."""
    spec = qp.spec
    if spec.axis is None:
        return torch.fake_quantize_per_tensor_affine(t, float(qp.scale), int(qp.zero_point), spec.qmin, spec.qmax)
    return torch.fake_quantize_per_channel_affine(
        t, torch.from_numpy(qp.scale.copy()), torch.from_numpy(qp.zero_point.copy()), spec.axis, spec.qmin, spec.qmax
    )


def test_torch_qat_linear_and_conv_gradients():
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(801)
    cases = [
        (QATLinear(_linear(rng, 12, 7), activation="relu6"), (16, 12)),
        (QATConv2d(_conv(rng, 4, 6, 3, stride=2, padding=1), activation="relu"), (3, 4, 9, 9)),
        (QATConv2d(_conv(rng, 6, 6, 3, groups=6, bias=False, dilation=2)), (2, 6, 8, 8)),
    ]
    for q, shape in cases:
        q.train()
        x = rng.normal(size=shape).astype(np.float32)
        y = q(x)
        dy = rng.normal(size=y.shape).astype(np.float32)
        dx = q.backward(dy)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        wt = torch.from_numpy(q.weight.copy()).requires_grad_()
        bt = None if q.bias is None else torch.from_numpy(q.bias.copy()).requires_grad_()
        wq = _torch_fq_from(torch, wt, q.weight_fake_quant.qparams)
        if isinstance(q, QATLinear):
            yt = F.linear(xt, wq, bt)
        else:
            c = q.layer
            yt = F.conv2d(xt, wq, bt, stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
        if q.activation == "relu":
            yt = F.relu(yt)
        elif q.activation == "relu6":
            yt = F.relu6(yt)
        yt = _torch_fq_from(torch, yt, q.act_fake_quant.qparams)
        yt.backward(torch.from_numpy(dy))
        step = float(q.act_fake_quant.qparams.scale)
        # a code may flip where the float output differs by an ulp at a tie
        assert np.mean(np.abs(y - yt.detach().numpy()) > 1e-5) < 0.002
        assert np.max(np.abs(y - yt.detach().numpy())) <= step * 1.001
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(dx).max())
        gw = q.grads["weight"]
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(gw).max())
        if bt is not None:
            np.testing.assert_allclose(q.grads["bias"], bt.grad.numpy(), rtol=1e-4, atol=1e-4)


def _torch_convbn(torch, conv, bn, freeze=False):
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import FakeQuantize as TFQ
    from torch.ao.quantization import MovingAverageMinMaxObserver as TMA
    from torch.ao.quantization import PerChannelMinMaxObserver as TPC
    from torch.ao.quantization import QConfig

    qconfig = QConfig(
        activation=TFQ.with_args(observer=TMA, quant_min=0, quant_max=255, dtype=torch.quint8),
        weight=TFQ.with_args(
            observer=TPC,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        ),
    )
    o, cg, kh, kw = conv.weight.shape
    m = nniqat.ConvBn2d(
        cg * conv.groups,
        o,
        (kh, kw),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        eps=bn.eps,
        momentum=bn.momentum,
        freeze_bn=freeze,
        qconfig=qconfig,
    )
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(conv.weight))
        if conv.bias is not None:
            m.bias.copy_(torch.from_numpy(conv.bias))
        m.bn.weight.copy_(torch.from_numpy(bn.weight))
        m.bn.bias.copy_(torch.from_numpy(bn.bias))
        m.bn.running_mean.copy_(torch.from_numpy(bn.running_mean))
        m.bn.running_var.copy_(torch.from_numpy(bn.running_var))
    return m


def _bn(rng, c, name="bn"):
    return nn.BatchNorm2d(
        rng.uniform(0.5, 1.5, c).astype(np.float32),
        (rng.normal(size=c) * 0.1).astype(np.float32),
        (rng.normal(size=c) * 0.1).astype(np.float32),
        rng.uniform(0.5, 2, c).astype(np.float32),
        name=name,
    )


@pytest.mark.parametrize("bias", [True, False])
def test_torch_qat_conv_bn_folding(bias):
    torch = _torch()
    rng = np.random.default_rng(802 + bias)
    conv = _conv(rng, 3, 5, 3, padding=1, bias=bias)
    bn = _bn(rng, 5)
    tm = _torch_convbn(torch, conv, bn)
    tm.train()
    q = QATConvBn2d(
        conv,
        bn,
        weight_fake_quant=FakeQuantize(PerChannelMinMaxObserver(QuantSpec(bits=8, symmetric=True, axis=0))),
        act_fake_quant=None,
    )
    q.train()
    keys = {"weight", "bn.weight", "bn.bias"} | ({"bias"} if bias else set())
    assert set(q.parameters()) == keys
    assert set(q.state_dict()) == keys | {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}

    def step(k):
        x = (rng.normal(size=(4, 3, 6, 6)) + 0.2 * k).astype(np.float32)
        dy = rng.normal(size=(4, 5, 6, 6)).astype(np.float32)
        q.zero_grad()
        tm.zero_grad()
        y = q(x)
        dx = q.backward(dy)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        yt = tm(xt)
        yt.backward(torch.from_numpy(dy))
        # the folded weight's grid: the same bits while the running variances are (same
        # float32 arithmetic for s); npquant.models.nn's batch variance may differ by an ulp later
        if k == 0:
            _assert_bits(q.weight_fake_quant.qparams.scale, tm.weight_fake_quant.scale.numpy())
        np.testing.assert_allclose(q.weight_fake_quant.qparams.scale, tm.weight_fake_quant.scale.numpy(), rtol=1e-6)
        # measured: ~1e-6 of the largest value (conv and batch-statistics arithmetic order)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-5, atol=2e-5 * np.abs(y).max())
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=2e-5 * np.abs(dx).max())
        for key, tp in [("weight", tm.weight), ("bn.weight", tm.bn.weight), ("bn.bias", tm.bn.bias)] + (
            [("bias", tm.bias)] if bias else []
        ):
            g = q.grads[key]
            # the conv bias before a batch-statistics BN has gradient 0 (rounding noise in both)
            atol = 1e-5 if key == "bias" else 2e-5 * np.abs(g).max()
            np.testing.assert_allclose(g, tp.grad.numpy(), rtol=2e-5, atol=atol, err_msg=key)
        np.testing.assert_allclose(bn.running_mean, tm.bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var, tm.bn.running_var.numpy(), rtol=1e-5, atol=1e-6)

    step(0)
    step(1)
    # frozen: running statistics, no update (Jacob et al.'s second phase)
    tm.freeze_bn_stats()
    q.freeze_bn()
    rm = bn.running_mean.copy()
    step(2)
    _assert_bits(bn.running_mean, rm)
    # the frozen forward is the folded conv of inference
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    y = q(x)
    q.weight_fake_quant.disable_observer()
    np.testing.assert_allclose(q.folded_conv()(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="bn must be"):
        QATConvBn2d(conv, conv)


@pytest.mark.slow  # training: run in the JIT pass
def test_qat_model_trains_in_a_sequential():
    # A two-layer QAT MLP (W4A8, LSQ weights) in npquant.models.nn.Sequential learns a toy task.
    rng = np.random.default_rng(803)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    labels = (x[:, :4].sum(axis=1) > x[:, 4:].sum(axis=1)).astype(int)
    model = nn.Sequential(
        [
            QATLinear(
                _linear(rng, 8, 16, name="fc1"),
                activation="relu",
                weight_fake_quant=LSQFakeQuantize(
                    QuantSpec(bits=4, symmetric=True, axis=0), param_shape=(16,), init="minmax"
                ),
            ),
            QATLinear(_linear(rng, 16, 2, name="fc2"), act_fake_quant=None),
        ]
    )
    model.train()
    params = model.parameters()
    assert set(params) == {"fc1.weight", "fc1.bias", "fc1.weight_fake_quant.scale", "fc2.weight", "fc2.bias"}
    losses = []
    for _ in range(150):
        model.zero_grad()
        logits = model(x)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        losses.append(float(-np.log(p[np.arange(len(x)), labels]).mean()))
        g = p.copy()
        g[np.arange(len(x)), labels] -= 1
        model.backward((g / len(x)).astype(np.float32))
        grads = model.grads
        for k, v in params.items():
            v -= F32(0.5 if "scale" not in k else 0.01) * grads[k]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    acc = np.mean(model(x).argmax(axis=1) == labels)
    assert acc > 0.9


def test_qat_activations_and_the_deprecated_name():
    import npquant.training.qat as qat
    from npquant.qnn import ACTIVATIONS as INTEGER_CLAMPS

    assert qat.QAT_ACTIVATIONS == (None, "relu", "relu6")
    assert {"none" if a is None else a for a in qat.QAT_ACTIVATIONS} <= set(INTEGER_CLAMPS)
    with pytest.warns(DeprecationWarning, match="qat.ACTIVATIONS is deprecated: it is now QAT_ACTIVATIONS"):
        assert qat.ACTIVATIONS is qat.QAT_ACTIVATIONS
    with pytest.raises(AttributeError, match="no attribute 'ACTIVATION'"):
        qat.ACTIVATION
