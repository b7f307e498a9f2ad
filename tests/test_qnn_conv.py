"""Integer conv2d: im2col + GEMM kernels against twins and a Python-integer oracle.

Runs with the JIT on and with NUMBA_DISABLE_JIT=1 (arrays kept small for the latter).
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npquant import QParams, QuantSpec
from npquant.qnn.conv import QConv2d, conv2d_accumulate, conv_geometry, qconv2d
from npquant.qnn.gemm import FORMS
from npquant.qnn.linear import linear_accumulate, qlinear
from npquant.requant.modes import REQUANT_MODES, effective_multiplier, requantize


def conv_oracle(x, zx, w, zw, bias, stride, pads, dilation, groups):
    """Explicit padding by the zero point, then nested loops over Python integers."""
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.full((n, c, h + pt + pb, wd + pl + pr), int(zx), np.int64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    zw = np.broadcast_to(np.asarray(zw), (o,))
    og = o // groups
    out = np.zeros((n, o, oh, ow), np.int64)
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    s = 0 if bias is None else int(bias[oc])
                    for ci in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                xv = int(xp[b, g * cg + ci, i * sh + u * dh, j * sw + v * dw])
                                s += (xv - int(zx)) * (int(w[oc, ci, u, v]) - int(zw[oc]))
                    out[b, oc, i, j] = s
    return out


def make_conv(rng, n, c, h, wd, o, cg, kh, kw, x_signed=False, w_signed=True, per_channel=True):
    xs = QuantSpec(8, signed=x_signed)
    ws = QuantSpec(8, signed=w_signed, axis=0 if per_channel else None)
    x_qp = QParams(rng.uniform(0.005, 0.05), rng.integers(xs.qmin, xs.qmax + 1), xs)
    shape = (o,) if per_channel else ()
    w_qp = QParams(rng.uniform(0.001, 0.02, shape), rng.integers(ws.qmin, ws.qmax + 1, shape), ws)
    y_qp = QParams(rng.uniform(0.05, 0.5), rng.integers(-20, 20), QuantSpec(8))
    x = rng.integers(xs.qmin, xs.qmax + 1, (n, c, h, wd)).astype(xs.dtype)
    w = rng.integers(ws.qmin, ws.qmax + 1, (o, cg, kh, kw)).astype(ws.dtype)
    b = rng.integers(-5000, 5000, o).astype(np.int32)
    return x, x_qp, w, w_qp, b, y_qp


def all_accumulators(x, x_qp, w, w_qp, b, **geo):
    outs = [
        conv2d_accumulate(x, x_qp, w, w_qp, b, form=f, backend=be, **geo) for f in FORMS for be in ("numba", "numpy")
    ]
    for a in outs:
        assert a.dtype == np.int32
        np.testing.assert_array_equal(a, outs[0])
    return outs[0]


def check(x, x_qp, w, w_qp, b, stride=1, padding=0, dilation=1, groups=1):
    geo = conv_geometry(stride, padding, dilation, groups)
    acc = all_accumulators(x, x_qp, w, w_qp, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref = conv_oracle(x, x_qp.zero_point, w, w_qp.zero_point, b, geo.stride, geo.padding, geo.dilation, groups)
    np.testing.assert_array_equal(acc, ref)
    return acc


@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    cg=st.integers(1, 2),
    og=st.integers(1, 2),
    h=st.integers(1, 6),
    wd=st.integers(1, 6),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
    x_signed=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv_forms_backends_and_oracle_agree(
    n, groups, cg, og, h, wd, kh, kw, stride, dilation, pads, x_signed, per_channel, seed
):
    geo = conv_geometry(stride, pads, dilation, groups)
    oh, ow = geo.output_size(h, wd, kh, kw)
    assume(oh >= 1 and ow >= 1)
    rng = np.random.default_rng(seed)
    x, x_qp, w, w_qp, b, _ = make_conv(
        rng, n, groups * cg, h, wd, groups * og, cg, kh, kw, x_signed=x_signed, per_channel=per_channel
    )
    check(x, x_qp, w, w_qp, b, stride, pads, dilation, groups)


@pytest.mark.parametrize(
    "case",
    [
        dict(name="depthwise x2", c=4, o=8, cg=1, groups=4, k=3, padding=1),
        dict(name="depthwise strided", c=3, o=3, cg=1, groups=3, k=3, stride=2, padding=(0, 1, 1, 0)),
        dict(name="stride > kernel", c=2, o=3, cg=2, groups=1, k=2, stride=(3, 4)),
        dict(name="padding > kernel", c=2, o=2, cg=2, groups=1, k=2, padding=(3, 4, 5, 2)),
        dict(name="dilation", c=2, o=4, cg=1, groups=2, k=3, dilation=(2, 3), padding=2),
        dict(name="1x1", c=5, o=3, cg=5, groups=1, k=1),
        dict(name="kernel = image", c=2, o=2, cg=2, groups=1, k=5),
    ],
)
def test_conv_edge_cases(case):
    rng = np.random.default_rng(len(case["name"]))
    geo = {k: case[k] for k in ("stride", "padding", "dilation") if k in case}
    x, x_qp, w, w_qp, b, _ = make_conv(rng, 2, case["c"], 5, 6, case["o"], case["cg"], case["k"], case["k"])
    acc = check(x, x_qp, w, w_qp, b, groups=case["groups"], **geo)
    if case["name"] == "padding > kernel":
        # output positions that see only padding hold exactly the bias
        np.testing.assert_array_equal(acc[:, :, 0, 0], np.broadcast_to(b, (2, 2)))


def test_conv_1x1_equals_linear_and_non_contiguous_input():
    rng = np.random.default_rng(2)
    x, x_qp, w, w_qp, b, y_qp = make_conv(rng, 2, 6, 4, 3, 5, 6, 1, 1)
    acc = conv2d_accumulate(x, x_qp, w, w_qp, b)
    x_rows = x.transpose(0, 2, 3, 1).reshape(-1, 6)
    lin = linear_accumulate(x_rows, x_qp, w.reshape(5, 6), w_qp, b)
    np.testing.assert_array_equal(acc.transpose(0, 2, 3, 1).reshape(-1, 5), lin)
    y = qconv2d(x, x_qp, w, w_qp, b, y_qp, mode="tflite_single")
    ylin = qlinear(x_rows, x_qp, w.reshape(5, 6), w_qp, b, y_qp, mode="tflite_single")
    np.testing.assert_array_equal(y.transpose(0, 2, 3, 1).reshape(-1, 5), ylin)
    # NHWC storage seen as NCHW (non-contiguous), and a strided view
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not x_nhwc.flags.c_contiguous
    np.testing.assert_array_equal(all_accumulators(x_nhwc, x_qp, w, w_qp, b), acc)
    big = np.repeat(x, 2, axis=3)[:, :, :, ::2]
    np.testing.assert_array_equal(all_accumulators(big, x_qp, w, w_qp, b), acc)


@pytest.mark.parametrize("mode", REQUANT_MODES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_qconv2d_modes(mode, per_channel):
    rng = np.random.default_rng(REQUANT_MODES.index(mode) * 2 + per_channel)
    x, x_qp, w, w_qp, b, y_qp = make_conv(rng, 2, 4, 5, 5, 6, 2, 3, 3, per_channel=per_channel)
    geo = dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    acc = check(x, x_qp, w, w_qp, b, **geo)
    outs = [
        qconv2d(x, x_qp, w, w_qp, b, y_qp, mode=mode, form=f, backend=be, **geo)
        for f in FORMS
        for be in ("numba", "numpy")
    ]
    for y in outs:
        assert y.dtype == np.int8 and y.shape == acc.shape
        np.testing.assert_array_equal(y, outs[0])
    sw = np.broadcast_to(w_qp.scale, (6,))
    for oc in range(6):
        m = float(effective_multiplier(x_qp.scale, sw[oc], y_qp.scale, mode))
        ref = requantize(acc[:, oc], m, int(y_qp.zero_point), -128, 127, mode=mode)
        np.testing.assert_array_equal(outs[0][:, oc], ref)
    layer = QConv2d(w, w_qp, b, x_qp, y_qp, mode=mode, **geo)
    np.testing.assert_array_equal(layer(x), outs[0])
    np.testing.assert_array_equal(layer.accumulate(x), acc)
    real = acc * float(x_qp.scale) * sw.astype(np.float64)[:, None, None] / float(y_qp.scale) + int(y_qp.zero_point)
    assert np.all(np.abs(np.clip(np.rint(real), -128, 127) - outs[0]) <= 1)
    relu6 = qconv2d(x, x_qp, w, w_qp, b, y_qp, mode=mode, activation="relu6", **geo)
    lo, hi = int(y_qp.zero_point), min(127, int(y_qp.zero_point) + int(np.floor(6 / np.float32(y_qp.scale) + 0.5)))
    np.testing.assert_array_equal(relu6, np.clip(outs[0], lo, hi))


def test_conv_overflow():
    # 258 input channels, 16x16 kernel: K = 66048 terms of up to 255 * 128 (> 2^31 in all)
    xq = QParams(1.0, 0, QuantSpec(8, signed=False))
    wq = QParams(1.0, 0, QuantSpec(8))
    w = np.full((1, 258, 16, 16), -128, np.int8)
    x = np.full((1, 258, 16, 16), 255, np.uint8)
    with pytest.raises(ValueError, match="conv2d accumulator can overflow int32"):
        conv2d_accumulate(x, xq, w, wq)
    exact = -255 * 128 * 66048
    for form in FORMS:
        for be in ("numba", "numpy"):
            got = conv2d_accumulate(x, xq, w, wq, overflow="wrap", form=form, backend=be)
            assert int(got[0, 0, 0, 0]) == ((exact + (1 << 31)) % (1 << 32)) - (1 << 31)


def _args():
    rng = np.random.default_rng(0)
    x, x_qp, w, w_qp, b, y_qp = make_conv(rng, 1, 4, 5, 5, 4, 2, 3, 3)
    return dict(x_q=x, x_qp=x_qp, w_q=w, w_qp=w_qp, bias_q=b, y_qp=y_qp), dict(groups=2)


@pytest.mark.parametrize(
    "change, kw, exc, match",
    [
        ({}, {"groups": 3}, ValueError, "not divisible by groups=3"),
        ({}, {"groups": 1}, ValueError, "x_q has 4 channels but w_q"),
        ({"x_q": np.zeros((1, 4, 5), np.uint8)}, {}, ValueError, "x_q must have 4 dimensions"),
        ({"x_q": np.zeros((1, 4, 5, 5), np.float32)}, {}, TypeError, "x_q must be an integer"),
        ({"w_q": np.zeros((4, 2, 3), np.int8)}, {}, ValueError, "w_q must have 4 dimensions"),
        ({}, {"dilation": 3}, ValueError, "does not fit the padded input"),
        ({}, {"stride": 0}, ValueError, "stride must be in"),
        ({}, {"padding": -1}, ValueError, "padding must be in"),
        ({}, {"padding": (1, 2, 3)}, ValueError, r"padding must be an int, \(h, w\)"),
        ({}, {"stride": (1, 2, 3)}, ValueError, "stride must be an int or a pair"),
        ({}, {"groups": 0}, ValueError, "groups must be in"),
        ({"w_qp": QParams(np.full(2, 0.1), 0, QuantSpec(axis=1))}, {}, ValueError, "per-channel along axis 0"),
        ({"bias_q": np.zeros(2, np.int32)}, {}, ValueError, r"bias_q must have shape \(4,\)"),
        ({}, {"mode": "x"}, ValueError, "mode must be one of"),
    ],
)
def test_qconv2d_rejects(change, kw, exc, match):
    args, geo = _args()
    args.update(change)
    geo.update(kw)
    with pytest.raises(exc, match=match):
        qconv2d(args["x_q"], args["x_qp"], args["w_q"], args["w_qp"], args["bias_q"], args["y_qp"], **geo)


def test_layer_checks_input():
    args, geo = _args()
    lay = QConv2d(args["w_q"], args["w_qp"], args["bias_q"], args["x_qp"], args["y_qp"], padding=1, **geo)
    assert lay(args["x_q"]).shape == (1, 4, 5, 5)
    assert "QConv2d(4, 4, kernel=(3, 3)" in repr(lay)
    with pytest.raises(ValueError, match="x_q has 2 channels"):
        lay(args["x_q"][:, :2])
    with pytest.raises(ValueError, match="does not fit"):
        QConv2d(args["w_q"], args["w_qp"], None, args["x_qp"], args["y_qp"], dilation=4, **geo)(args["x_q"])
    with pytest.raises(ValueError, match="not divisible by groups=3"):
        QConv2d(args["w_q"], args["w_qp"], None, args["x_qp"], args["y_qp"], groups=3)


def test_same_padding():
    from npquant.qnn.conv import same_padding

    # out = ceil(in / s); the odd row of the total goes after (TensorFlow, TFLite, ONNX SAME_UPPER)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(113, 3, 2) == (1, 1)
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(6, 2, 1) == (0, 1)
    assert same_padding(7, 3, 1, 2) == (2, 2)
    assert same_padding(4, 1, 3) == (0, 0)
    assert same_padding(112, 3, 2, extra="before") == (1, 0)  # ONNX SAME_LOWER
    for size in range(1, 20):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                b, a = same_padding(size, k, s)
                assert (size + b + a - k) // s + 1 == -(-size // s) and 0 <= a - b <= 1
    with pytest.raises(ValueError, match="stride"):
        same_padding(5, 3, 0)
    with pytest.raises(ValueError, match="extra"):
        same_padding(5, 3, 1, extra="middle")


# ---- activation=None and "none"; plain zero points in conv2d_accumulate -----------------


@pytest.mark.parametrize("spelling", [None, "none"])
def test_no_activation_both_spellings(spelling):
    rng = np.random.default_rng(21)
    spec = QuantSpec()
    x_qp, w_qp, y_qp = QParams(0.05, -4, spec), QParams(0.02, 0, spec), QParams(0.4, 6, spec)
    x = rng.integers(-128, 128, (1, 3, 6, 6)).astype(np.int8)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ref = qconv2d(x, x_qp, w, w_qp, None, y_qp, padding=1)
    np.testing.assert_array_equal(qconv2d(x, x_qp, w, w_qp, None, y_qp, padding=1, activation=spelling), ref)
    layer = QConv2d(w, w_qp, None, x_qp, y_qp, padding=1, activation=spelling)
    np.testing.assert_array_equal(layer(x), ref)


@pytest.mark.parametrize("groups", [1, 3])
def test_conv2d_accumulate_plain_zero_points(groups):
    rng = np.random.default_rng(22)
    x = rng.integers(0, 256, (2, 6, 5, 5)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 6 // groups, 3, 3)).astype(np.int8)
    zx, zw = 131, rng.integers(-5, 5, 6).astype(np.int32)
    x_qp = QParams(0.1, zx, QuantSpec(signed=False))
    w_qp = QParams(np.full(6, 0.01, np.float32), zw, QuantSpec(axis=0))
    bias = rng.integers(-300, 300, 6).astype(np.int32)
    kw = dict(stride=2, padding=(1, 0, 2, 1), groups=groups)
    ref = conv2d_accumulate(x, x_qp, w, w_qp, bias, **kw)
    geo = conv_geometry(**kw)
    np.testing.assert_array_equal(ref, conv_oracle(x, zx, w, zw, bias, geo.stride, geo.padding, geo.dilation, groups))
    for backend in ("numba", "numpy"):
        np.testing.assert_array_equal(conv2d_accumulate(x, zx, w, zw, bias, backend=backend, **kw), ref)
        np.testing.assert_array_equal(conv2d_accumulate(x, x_qp, w, zw, bias, backend=backend, **kw), ref)
        np.testing.assert_array_equal(conv2d_accumulate(x, zx, w, w_qp, bias, backend=backend, **kw), ref)
    w_t = QParams(0.01, 2, QuantSpec())
    np.testing.assert_array_equal(
        conv2d_accumulate(x, zx, w, 2, bias, **kw), conv2d_accumulate(x, x_qp, w, w_t, bias, **kw)
    )


def test_conv2d_accumulate_bad_plain_zero_points():
    x = np.zeros((1, 2, 4, 4), np.uint8)
    w = np.zeros((3, 2, 3, 3), np.int8)
    with pytest.raises(ValueError, match=r"x_qp must lie in \[0, 255\]"):
        conv2d_accumulate(x, 256, w, 0)
    with pytest.raises(ValueError, match=r"w_qp must lie in \[-128, 127\]"):
        conv2d_accumulate(x, 0, w, -200)
    with pytest.raises(ValueError, match=r"w_qp must hold one zero point per output channel of w_q \(3\)"):
        conv2d_accumulate(x, 0, w, [0, 1])
