import numpy as np
import pytest

from npquant.explain import builtin_example, explain_conv2d, explain_dot, explain_linear
from npquant.fixedpoint import REQUANT_MODES, effective_multiplier, requantize


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_linear_trace_is_the_computation(mode):
    ex = builtin_example("linear", seed=3)
    x, w = ex["x_q"].astype(np.int64), ex["w_q"].astype(np.int64)
    zx = int(ex["x_qp"].zero_point)
    for row in range(x.shape[0]):
        for col in range(w.shape[0]):
            e = explain_linear(**{**ex, "row": row, "col": col}, mode=mode)
            acc = int(((x[row] - zx) * w[col]).sum())  # symmetric weights: Z_w = 0
            assert e.acc == acc == e.folded["total"]
            m = effective_multiplier(ex["x_qp"].scale, ex["w_qp"].scale[col], ex["y_qp"].scale, mode)
            yq = ex["y_qp"]
            code = requantize(np.array([acc + int(ex["bias_q"][col])]), float(m), int(yq.zero_point),
                              yq.spec.qmin, yq.spec.qmax, mode=mode)[0]
            assert e.code == code
            if e.before_clamp == e.code:  # unclamped: within one LSB (half, plus double rounding)
                assert abs(e.error_lsb) <= 1.0
            else:
                assert e.code in (yq.spec.qmin, yq.spec.qmax)
            assert "m0 = " in str(e) if mode.startswith("tflite") else "rint" in str(e)


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_conv_trace_gathers_the_padded_receptive_field(mode):
    ex = builtin_example("conv", seed=1)
    x = ex["x_q"].astype(np.int64)
    w = ex["w_q"].astype(np.int64)
    zx = int(ex["x_qp"].zero_point)
    xp = np.pad(x - zx, ((0, 0), (0, 0), (1, 1), (1, 1)))  # padding holds Z_x: 0 after correction
    for index in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 4, 4)]:
        n, o, i, j = index
        e = explain_conv2d(**{**ex, "index": index}, mode=mode)
        assert e.acc == int((xp[n, :, i:i + 3, j:j + 3] * w[o]).sum())
        assert len(e.x) == 2 * 3 * 3


def test_double_rounding_is_visible_in_the_trace():
    # M = 0.5 * 0.5 / 1 = 0.25 and acc = 1: TFLite's two roundings give 1, the exact value is 0.25
    e = explain_dot([1], 0, [1], 0, 0, 0.5, 0.5, 1.0, 0, -128, 127, mode="tflite")
    assert e.code == 1
    text = str(e)
    assert "round(1 * m0 / 2^31) = 1" in text and "RoundingDivideByPOT(., 1) = 1" in text
    assert explain_dot([1], 0, [1], 0, 0, 0.5, 0.5, 1.0, 0, -128, 127, mode="tflite_single").code == 0
    assert e.error_lsb == pytest.approx(0.75)


def test_zero_points_and_grouped_conv():
    rng = np.random.default_rng(0)
    from npquant import QParams, QuantSpec

    x = rng.integers(0, 256, (1, 4, 4, 4)).astype(np.uint8)
    w = rng.integers(-128, 128, (4, 2, 2, 2)).astype(np.int8)  # groups=2
    xq = QParams(0.02, 17, QuantSpec(signed=False))
    wq = QParams(0.01, 3, QuantSpec())
    yq = QParams(0.05, 100, QuantSpec(signed=False))
    e = explain_conv2d(x, xq, w, wq, None, yq, (0, 3, 1, 0), stride=2, padding=(0, 1, 1, 0), groups=2)
    # output channel 3 is in group 1: input channels 2, 3; top padding 0, left padding 1
    patch = []
    for c in (2, 3):
        for a in range(2):
            for b in range(2):
                r, s = 1 * 2 + a, 0 * 2 - 1 + b
                patch.append(int(x[0, c, r, s]) if 0 <= s < 4 else 17)
    assert e.x == patch
    assert e.acc == sum((p - 17) * (int(v) - 3) for p, v in zip(patch, w[3].ravel()))
    assert e.folded["total"] == e.acc


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (([1.0], 0, [1], 0, 0), TypeError, "x_codes must be integer codes"),
        (([1, 2], 0, [1], 0, 0), ValueError, "same non-zero length"),
        (([1], 0, [1], 0, 1 << 40), ValueError, "bias"),
        (([1 << 20], 0, [1 << 20], 0, 0), ValueError, "overflows int32"),
    ],
)
def test_explain_dot_rejects(args, exc, match):
    with pytest.raises(exc, match=match):
        explain_dot(*args, 0.1, 0.1, 0.1, 0, -128, 127)


def test_explain_layers_reject_bad_indices():
    ex = builtin_example("linear")
    with pytest.raises(ValueError, match="col"):
        explain_linear(**{**ex, "col": 99})
    cx = builtin_example("conv")
    with pytest.raises(ValueError, match="outside the output shape"):
        explain_conv2d(**{**cx, "index": (0, 0, 9, 9)})
    with pytest.raises(ValueError, match="mode must be one of"):
        explain_linear(**ex, mode="tf")
