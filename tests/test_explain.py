import re
from fractions import Fraction

import numpy as np
import pytest

import npquant.explain as explain_mod
from npquant import QParams, QuantSpec, fit_qparams, quantize
from npquant.explain import (
    SHOWN_TERMS,
    ExplainConsistencyError,
    FloatInputs,
    builtin_example,
    explain_conv2d,
    explain_dot,
    explain_linear,
)
from npquant.qnn.bias import quantize_bias
from npquant.qnn.conv import conv2d_accumulate, qconv2d
from npquant.qnn.linear import linear_accumulate, qlinear
from npquant.requant.fixedpoint import (
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from npquant.requant.modes import REQUANT_MODES, effective_multiplier, requantize

CONV_INDICES = [(0, 0, 0, 0), (0, 1, 0, 2), (0, 2, 4, 4), (0, 1, 2, 3)]


def _elements(layer):
    ex = builtin_example(layer)
    if layer == "linear":
        return ex, [{"row": r, "col": c} for r in range(2) for c in range(4)]
    return ex, [{"index": idx} for idx in CONV_INDICES]


def _layer_outputs(layer, ex, mode, accumulation):
    """Accumulators (with bias) and codes of the whole layer from npquant.qnn."""
    args = (ex["x_q"], ex["x_qp"], ex["w_q"], ex["w_qp"], ex["bias_q"])
    if layer == "linear":
        return (
            linear_accumulate(*args, accumulation=accumulation),
            qlinear(*args, ex["y_qp"], mode=mode, accumulation=accumulation),
        )
    return (
        conv2d_accumulate(*args, padding=1, accumulation=accumulation),
        qconv2d(*args, ex["y_qp"], mode=mode, padding=1, accumulation=accumulation),
    )


def _printed(pattern, text):
    m = re.search(pattern, text, re.M)
    assert m, (pattern, text)
    return m


@pytest.mark.parametrize("accumulation", ["exact", "int16_pairs"])
@pytest.mark.parametrize("mode", REQUANT_MODES)
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_printed_integers_are_the_integer_layers(layer, mode, accumulation):
    """Every integer the trace prints for acc, bias, acc + bias and the code is what
    npquant.qnn computes for the same inputs, in every mode."""
    ex, elements = _elements(layer)
    accs, codes = _layer_outputs(layer, ex, mode, accumulation)
    fn = explain_linear if layer == "linear" else explain_conv2d
    for el in elements:
        e = fn(**{**ex, **el}, mode=mode, accumulation=accumulation)
        where = (el["row"], el["col"]) if layer == "linear" else tuple(el["index"])
        text = e.format(all_terms=True)
        if accumulation == "exact":
            acc = int(_printed(r"^2\. int32 accumulator  acc = sum of the \d+ products = (-?\d+)$", text)[1])
            folded = _printed(r"^     = .* = (-?\d+)$", text)
            assert int(folded[1]) == acc
        else:
            acc = int(_printed(r"^     = -?\d+ - .* = (-?\d+)$", text)[1])
        m = _printed(r"^3\. bias .* = (-?\d+);  acc \+ bias = (-?\d+) \+ \(?(-?\d+)\)? = (-?\d+)$", text)
        bias, total = int(m[1]), int(m[4])
        assert int(m[2]) == acc and acc + bias == total
        assert total == int(accs[where])
        code = int(_printed(r"^   clamp to \[(-?\d+), (-?\d+)\]: (-?\d+) -> code (-?\d+)", text)[4])
        assert code == int(codes[where]) == e.code
        assert bias == int(ex["bias_q"][where[1]])


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_builtin_examples_have_zero_points_and_floats(layer):
    ex = builtin_example(layer)
    assert int(ex["x_qp"].zero_point) != 0 and int(ex["w_qp"].zero_point) != 0
    np.testing.assert_array_equal(quantize(ex["x_float"], ex["x_qp"]), ex["x_q"])
    np.testing.assert_array_equal(quantize(ex["w_float"], ex["w_qp"]), ex["w_q"])
    np.testing.assert_array_equal(
        quantize_bias(ex["b_float"], float(ex["x_qp"].scale), float(ex["w_qp"].scale)), ex["bias_q"]
    )


def test_folded_form_prints_every_term_of_eq7():
    ex = builtin_example("linear")
    e = explain_linear(**ex)
    x, w = np.asarray(e.x), np.asarray(e.w)
    zx, zw, k = e.z_x, e.z_w, len(e.x)
    text = str(e)
    m = _printed(
        r"^     = (-?\d+) - \((-?\d+)\)\*(-?\d+) - (-?\d+)\*\(?(-?\d+)\)? "
        r"\+ (\d+)\*(-?\d+)\*\((-?\d+)\)$",
        text,
    )
    assert [int(v) for v in m.groups()] == [int(x @ w), zw, int(x.sum()), zx, int(w.sum()), k, zx, zw]
    terms = [int(x @ w), -zw * int(x.sum()), -zx * int(w.sum()), k * zx * zw]
    assert all(terms)  # every term of eq. 7 is non-zero in the built-in example
    assert sum(terms) == e.acc == int(((x - zx) * (w - zw)).sum())
    line = _printed(r"^     = (-?\d+(?: [+-] \d+){3}) = (-?\d+)$", text)
    assert eval(line[1]) == e.acc  # the printed sum of the four terms


def test_all_terms_lists_every_product():
    ex = builtin_example("linear")
    e = explain_linear(**ex)
    k = len(e.x)
    assert k > SHOWN_TERMS

    def rows(text):
        return [ln.split() for ln in text.splitlines() if re.match(r"^   \d+ ", ln)]

    short, full = rows(str(e)), rows(e.format(all_terms=True))
    assert len(short) == SHOWN_TERMS and len(full) == k
    assert f"... {k - SHOWN_TERMS} more terms: --all-terms" in str(e)
    assert "more terms" not in e.format(all_terms=True)
    # k, x, x/S_x, q_x, w, w/S_w, q_w, q_x-Z_x, q_w-Z_w, product: the sum checks by hand
    assert sum(int(r[-1]) for r in full) == e.acc
    for r in full:
        i = int(r[0])
        assert int(r[3]) == e.x[i] and int(r[6]) == e.w[i]
        assert int(r[7]) * int(r[8]) == int(r[9])
        assert int(r[3]) == round(float(r[2])) + e.z_x  # the printed rounding of x / S_x
    with pytest.raises(TypeError, match="all_terms"):
        e.format(all_terms=1)


def test_step0_shows_how_the_codes_were_made():
    ex = builtin_example("linear")
    e = explain_linear(**ex)
    text = str(e)
    sx, zx = float(ex["x_qp"].scale), int(ex["x_qp"].zero_point)
    lo, hi = float(ex["x_float"].min()), float(ex["x_float"].max())
    assert "0. from floats to codes" in text
    assert f"S_x = (max - min) / (qmax - qmin) = {hi - lo:.6g} / 255 = {sx:.9g}" in text
    assert f"Z_x = qmin - round(min / S_x) = 0 - round({lo / sx:.4f}) = {zx}" in text
    zw = int(ex["w_qp"].zero_point)
    assert "S_w = (max - min) / (qmax - qmin) = " in text and f" = {zw}" in text
    assert f"= {e.bias}  (half to even" in text
    # x / S_x of every term is float32(x) / float32(S_x), what quantize rounds
    np.testing.assert_array_equal(e.floats.x, ex["x_float"][0].astype(np.float64))
    assert e.floats.b == float(ex["b_float"][1])


def test_step0_symmetric_per_channel_weights():
    rng = np.random.default_rng(5)
    xf = rng.uniform(-1, 2, (3, 6)).astype(np.float32)
    wf = rng.normal(size=(2, 6)).astype(np.float32)
    bf = rng.normal(size=2).astype(np.float32)
    x_qp = fit_qparams(xf, QuantSpec(signed=False))
    w_qp = fit_qparams(wf, QuantSpec(symmetric=True, narrow_range=True, axis=0))
    y_qp = QParams(np.float32(0.05), 128, QuantSpec(signed=False))
    bq = quantize_bias(bf, float(x_qp.scale), w_qp.scale)
    xq, wq = quantize(xf, x_qp), quantize(wf, w_qp)
    e = explain_linear(xq, x_qp, wq, w_qp, bq, y_qp, 2, 1, x_float=xf, w_float=wf, b_float=bf)
    text = str(e)
    amax = float(np.abs(wf[1]).max())
    assert "the 6 values of output channel 1" in text
    assert f"S_w = max(|min|, |max|) / ((qmax - qmin) / 2) = {amax:.6g} / 127 = {float(w_qp.scale[1]):.9g}" in text
    assert e.code == int(qlinear(xq, x_qp, wq, w_qp, bq, y_qp)[2, 1])
    # qparams that are not the min-max fit of the floats are reported as given
    other = QParams(np.float32(0.02), 3, QuantSpec(signed=False))
    e2 = explain_linear(quantize(xf, other), other, wq, w_qp, bq, y_qp, 0, 0, x_float=xf, w_float=wf)
    assert "S_x = 0.0199999996, Z_x = 3 (given: not the min-max of the floats)" in str(e2)


def test_float_layer_error():
    ex = builtin_example("linear")
    for row in range(2):
        for col in range(4):
            e = explain_linear(**{**ex, "row": row, "col": col})
            y = (ex["x_float"].astype(np.float64) @ ex["w_float"].astype(np.float64).T + ex["b_float"])[row, col]
            assert e.float_output == pytest.approx(y, rel=1e-12, abs=1e-15)
            assert e.float_error_lsb == pytest.approx((e.dequantized - y) / e.s_y)
            assert e.reference == pytest.approx(e.s_x * e.s_w * (e.acc + e.bias), rel=1e-15)
            text = str(e)
            assert f"float layer   sum x w + b (exact, of the float x, w, b) = {y:.9g}" in text
            assert f"error {e.float_error_lsb:+.4f} LSB" in text and f"error {e.error_lsb:+.4f} LSB" in text
    plain = explain_dot([1, 2], 0, [3, 4], 0, 0, 0.1, 0.1, 0.1, 0, -128, 127)
    assert plain.float_output is None and "float layer" not in str(plain)


@pytest.mark.parametrize("mode", ["tflite", "tflite_single"])
def test_jacob_notation_and_fixed_point_steps(mode):
    ex = builtin_example("linear")
    e = explain_linear(**ex, mode=mode)
    m0, shift = (int(v) for v in quantize_multiplier(e.multiplier, "double" if mode == "tflite" else "single"))
    assert (e.m0, e.shift) == (m0, shift)
    n = -shift
    big_m0 = e.multiplier * 2.0**n
    assert 0.5 <= big_m0 < 1 and m0 == round(big_m0 * 2**31)
    text = str(e)
    assert f"Jacob et al.: M = 2^-n M0 with M0 in [0.5, 1): n = {n}, M0 = M * 2^{n} = {big_m0!r}" in text
    assert f"m0 = {m0} (0x{m0:08X}), shift = {shift}" in text
    total = e.acc + e.bias
    if mode == "tflite":
        high = int(saturating_rounding_doubling_high_mul(total, m0))
        scaled = int(rounding_divide_by_pot(high, n))
        assert f"SaturatingRoundingDoublingHighMul({total}, m0) = round({total} * m0 / 2^31)" in text
        assert re.search(rf"= round\(-?[\d.]+\) = {high}  \(first rounding", text)
        assert f"RoundingDivideByPOT({high}, {n}) = round({high} / 2^{n})" in text
    else:
        scaled = (total * m0 + (1 << (30 - shift))) >> (31 - shift)
        assert f"= {scaled}  (one rounding, ties toward +inf)" in text
    assert e.scaled == scaled
    assert f"6. + Z_y: {scaled} + {e.z_y} = {scaled + e.z_y}" in text


def test_double_rounding_is_visible_in_the_trace():
    # M = 0.5 * 0.5 / 1 = 0.25 and acc = 1: TFLite's two roundings give 1, the exact value is 0.25
    e = explain_dot([1], 0, [1], 0, 0, 0.5, 0.5, 1.0, 0, -128, 127, mode="tflite")
    assert e.code == 1
    text = str(e)
    assert "round(1 * m0 / 2^31) = round(0.500000 exactly) = 1" in text
    assert "RoundingDivideByPOT(1, 1) = round(1 / 2^1) = round(0.500000 exactly) = 1" in text
    assert "rounded once gives 0, not 1: double rounding" in text
    assert explain_dot([1], 0, [1], 0, 0, 0.5, 0.5, 1.0, 0, -128, 127, mode="tflite_single").code == 0
    assert e.error_lsb == pytest.approx(0.75)


def test_onnx_step6_adds_the_zero_point_before_rounding_and_clamps():
    ex = builtin_example("linear")
    e = explain_linear(**ex, mode="onnx")
    text = str(e)
    prod = float(_printed(r"float64 product: .* = (-?[\d.e+-]+)$", text)[1])
    m = _printed(r"\+ Z_y: (-?[\d.e+-]+) \+ \(?(-?\d+)\)? = (-?[\d.e+-]+)  \(ONNX adds", text)
    assert float(m[1]) == prod and int(m[2]) == e.z_y and float(m[3]) == prod + e.z_y
    r = int(_printed(r"round: rint\(.*\) = (-?\d+)  \(ties to even\)", text)[1])
    assert r == int(np.rint(prod + e.z_y)) == e.before_clamp
    assert f"clamp to [{e.qmin}, {e.qmax}]: {r} -> code {e.code}" in text
    assert "6. zero point: ONNX added Z_y" in text and "+ Z_y (" not in text
    # a saturating element says so
    s = explain_dot([200, 200], 0, [100, 100], 0, 0, 0.1, 0.1, 0.5, 10, 0, 255, mode="onnx")
    assert s.before_clamp == 810 and s.code == 255
    assert "clamp to [0, 255]: 810 -> code 255  (saturated: 810 > qmax)" in str(s)
    low = explain_dot([200], 0, [-100], 0, 0, 0.1, 0.1, 0.5, 10, 0, 255, mode="tflite")
    assert low.code == 0 and "(saturated: -390 < qmin)" in str(low)


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_conv_trace_gathers_the_padded_receptive_field(mode):
    ex = builtin_example("conv", seed=1)
    x = ex["x_q"].astype(np.int64)
    w = ex["w_q"].astype(np.int64)
    zx, zw = int(ex["x_qp"].zero_point), int(ex["w_qp"].zero_point)
    xp = np.pad(x - zx, ((0, 0), (0, 0), (1, 1), (1, 1)))  # padding holds Z_x: 0 after correction
    for index in CONV_INDICES:
        n, o, i, j = index
        e = explain_conv2d(**{**ex, "index": index}, mode=mode)
        assert e.acc == int((xp[n, :, i : i + 3, j : j + 3] * (w[o] - zw)).sum())
        assert len(e.x) == 2 * 3 * 3
    e = explain_conv2d(**{**ex, "index": (0, 1, 0, 2)}, mode=mode)
    pads = [k for k, label in enumerate(e.labels) if label.endswith(" pad")]
    assert len(pads) == 2 * 3  # the top row of the 3x3 window, in both channels
    assert all(e.x[k] == zx and e.floats.x[k] == 0.0 for k in pads)
    assert "x[0,0,-1,1] pad" in e.format(all_terms=True)


def test_zero_points_and_grouped_conv():
    rng = np.random.default_rng(0)
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


def test_fused_activation_range_matches_qlinear():
    ex = builtin_example("linear")
    zy = int(ex["y_qp"].zero_point)
    want = qlinear(ex["x_q"], ex["x_qp"], ex["w_q"], ex["w_qp"], ex["bias_q"], ex["y_qp"], activation=(zy, 200))
    assert want.min() == zy and want.max() == 200  # both ends clamp in this example
    for row in range(2):
        for col in range(4):
            e = explain_linear(**{**ex, "row": row, "col": col}, qmin=zy, qmax=200)  # a fused ReLU, clipped at 200
            assert e.code == int(want[row, col])


def test_a_drifting_library_is_an_error(monkeypatch):
    ex = builtin_example("linear")
    real = explain_mod.requantize
    monkeypatch.setattr(explain_mod, "requantize", lambda *a, **k: real(*a, **k) + 1)
    with pytest.raises(ExplainConsistencyError, match="a bug in npquant"):
        explain_linear(**ex)
    monkeypatch.setattr(explain_mod, "requantize", real)
    real_mbqm = explain_mod.multiply_by_quantized_multiplier
    monkeypatch.setattr(explain_mod, "multiply_by_quantized_multiplier", lambda *a: real_mbqm(*a) - 1)
    with pytest.raises(ExplainConsistencyError, match="multiply_by_quantized_multiplier"):
        explain_linear(**ex)


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


def test_explain_dot_rejects_bad_floats_and_labels():
    with pytest.raises(TypeError, match="floats must be a FloatInputs"):
        explain_dot([1], 0, [1], 0, 0, 0.1, 0.1, 0.1, 0, -128, 127, floats={"x": [0.1]})
    with pytest.raises(ValueError, match="floats.x must hold one value per term"):
        explain_dot([1], 0, [1], 0, 0, 0.1, 0.1, 0.1, 0, -128, 127, floats=FloatInputs([0.1, 0.2], [0.1]))
    with pytest.raises(TypeError, match="floats.w must be floats"):
        explain_dot([1], 0, [1], 0, 0, 0.1, 0.1, 0.1, 0, -128, 127, floats=FloatInputs([0.1], [1]))
    with pytest.raises(ValueError, match="labels must name each of the 1 terms"):
        explain_dot([1], 0, [1], 0, 0, 0.1, 0.1, 0.1, 0, -128, 127, labels=["a", "b"])


def test_explain_layers_reject_bad_indices_and_floats():
    ex = builtin_example("linear")
    with pytest.raises(ValueError, match="col"):
        explain_linear(**{**ex, "col": 99})
    cx = builtin_example("conv")
    with pytest.raises(ValueError, match="outside the output shape"):
        explain_conv2d(**{**cx, "index": (0, 0, 9, 9)})
    with pytest.raises(ValueError, match="mode must be one of"):
        explain_linear(**ex, mode="tf")
    with pytest.raises(ValueError, match="x_float does not quantize to x_q"):
        explain_linear(**{**ex, "x_float": ex["x_float"] + 0.1})
    with pytest.raises(ValueError, match="b_float does not give bias_q"):
        explain_linear(**{**ex, "b_float": ex["b_float"] + 1})
    with pytest.raises(ValueError, match="x_float and w_float go together"):
        explain_linear(**{**ex, "w_float": None})
    with pytest.raises(ValueError, match="b_float needs x_float and w_float"):
        explain_linear(**{**ex, "x_float": None, "w_float": None})
    with pytest.raises(ValueError, match="w_float must have the shape of w_q"):
        explain_conv2d(**{**cx, "w_float": cx["w_float"][:2]})


def test_effective_multiplier_of_the_trace():
    ex = builtin_example("linear")
    for mode in REQUANT_MODES:
        e = explain_linear(**ex, mode=mode)
        m = float(effective_multiplier(ex["x_qp"].scale, ex["w_qp"].scale, ex["y_qp"].scale, mode))
        assert e.multiplier == m
        assert e.code == int(requantize(np.array([e.acc + e.bias]), m, e.z_y, e.qmin, e.qmax, mode=mode)[0])
    assert e.reference == float(Fraction(e.s_x) * Fraction(e.s_w) * (e.acc + e.bias))


# ---- a layer of a whole model (explain_layer, npquant explain MODEL) ----------------------------


@pytest.fixture(scope="module")
def cnn_int():
    from npquant.app.demo import default_models_dir
    from npquant.models.convert import quantize_model
    from npquant.models.io import load_reference
    from npquant.models.nn import build_model

    ref = load_reference(default_models_dir() / "cnn.npz")
    x = ref.arrays["test_inputs"][:3]
    return quantize_model(build_model(ref.arch, ref.state), ref.arrays["test_inputs"][:64], mode="tflite"), x


def test_explain_layer_of_an_integer_model_gives_the_model_s_codes(cnn_int):
    from npquant.explain import explain_layer

    q, x = cnn_int
    h = q.quantize_input(x)
    outs = []
    for layer in q.layers:
        h = layer(h)
        outs.append(h)
    e = explain_layer(q, x, 2, (1, 5, 1, 2))  # the second conv
    assert e.code == int(outs[2][1, 5, 1, 2]) and e.mode == "tflite"
    e = explain_layer(q, x, "layers[5]", (2, 7))  # the linear head
    assert e.code == int(outs[5][2, 7])
    assert explain_layer(q, q.quantize_input(x), 0, (0, 1, 3, 3)).code == int(outs[0][0, 1, 3, 3])  # codes in


def _small_graph():
    from npquant.models.graph import Graph, Node

    rng = np.random.default_rng(8)
    u8 = QuantSpec(signed=False)
    x_qp, h_qp, y_qp = (QParams(np.float32(s), z, u8) for s, z in ((0.02, 120), (0.015, 3), (0.05, 128)))
    w_conv = rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
    w_fc = rng.integers(-127, 128, (4, 3 * 4 * 4)).astype(np.int8)

    def wp(w):
        return {
            "weight": w,
            "weight_scale": np.full(w.shape[0], 0.01, np.float32),
            "weight_zero_point": np.zeros(w.shape[0], np.int32),
        }

    nodes = [
        Node("q", "quantize", ["x"], ["xq"], {"output": x_qp}),
        Node(
            "conv",
            "qconv2d",
            ["xq"],
            ["h"],
            {"output": h_qp, "padding": [1, 0, 1, 0], "activation": "relu"},
            {**wp(w_conv), "bias_q": rng.integers(-500, 500, 3).astype(np.int32)},
        ),
        Node("pool", "qmaxpool2d", ["h"], ["p"], {"kernel_size": 1}),
        Node("flat", "qflatten", ["p"], ["f"]),
        Node("fc", "qlinear", ["f"], ["l"], {"output": y_qp, "mode": "onnx"}, wp(w_fc)),
        Node("dq", "dequantize", ["l"], ["y"]),
    ]
    return Graph(nodes, ["x"], ["y"], name="small"), rng.normal(size=(2, 2, 5, 5)).astype(np.float32)


def test_explain_layer_of_a_graph_node():
    from npquant.explain import explain_layer

    g, x = _small_graph()
    env = g.run(x, keep_intermediates=True)
    e = explain_layer(g, x, "conv", (1, 2, 0, 0))  # asymmetric padding: the corner reads Z_x
    assert e.code == int(env["h"][1, 2, 0, 0]) and e.qmin == 3  # relu: the clamp starts at Z_y
    e = explain_layer(g, x, "fc", (1, 3))
    assert e.code == int(env["l"][1, 3]) and e.mode == "onnx"


def test_explain_layer_errors(cnn_int):
    from npquant.explain import explain_layer

    q, x = cnn_int
    with pytest.raises(ValueError, match="outside"):
        explain_layer(q, x, 5, (3, 0))
    with pytest.raises(ValueError, match=r"\(row, col\)"):
        explain_layer(q, x, 5, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="layer must be the position"):
        explain_layer(q, x, "fc", (0, 0))
    with pytest.raises(ValueError, match="layer"):
        explain_layer(q, x, 9, (0, 0))
    g, xg = _small_graph()
    with pytest.raises(ValueError, match=r"layer must name a node of graph 'small' \(\['q', 'conv'"):
        explain_layer(g, xg, "nope", (0, 0))
    with pytest.raises(ValueError, match="outside the output"):
        explain_layer(g, xg, "pool", (0, 0, 9, 0))
    with pytest.raises(TypeError, match="IntegerModel or a Graph"):
        explain_layer(object(), x, 0, (0, 0))


def test_explain_command_on_a_model_file(capsys, tmp_path):
    from npquant.app.cli import main
    from npquant.app.demo import default_models_dir
    from npquant.models.graph import save_graph

    cnn = str(default_models_dir() / "cnn.npz")
    assert main(["explain", cnn, "--layer", "2", "--index", "0,5,1,1", "--mode", "onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv2d, output element (n=0, o=5, i=1, j=1)") and "mode: onnx" in out
    g, x = _small_graph()
    save_graph(tmp_path / "g.npz", g)
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "explain",
                str(tmp_path / "g.npz"),
                "--layer",
                "fc",
                "--index",
                "0,1",
                "--input",
                str(tmp_path / "x.npy"),
                "--sample",
                "1",
                "--all-terms",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "linear layer, output element [0, 1]" in out and "more terms" not in out
    for argv, msg in [
        ([cnn, "--layer", "2"], "--layer and --index"),
        ([cnn, "--layer", "2", "--index", "a,b"], "comma-separated"),
        ([cnn, "--ties"], "--ties"),
        (["--index", "0,0"], "needs a MODEL"),
        (["--layer", "dense"], "linear or conv"),
        ([str(tmp_path / "g.npz"), "--layer", "fc", "--index", "0,0", "--mode", "onnx"], "--mode"),
    ]:
        with pytest.raises(SystemExit) as ex:
            main(["explain", *argv])
        assert ex.value.code == 2 and msg in capsys.readouterr().err
    assert main(["explain", str(default_models_dir() / "mlp_ptq.npz"), "--layer", "2", "--index", "0,4"]) == 0
    assert "3. bias: PyTorch's float bias b = " in capsys.readouterr().out


@pytest.mark.slow  # whole models: run in the JIT pass
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_explain_layer_of_pytorch_ptq_models_with_float_bias(name):
    from npquant.app.demo import default_models_dir
    from npquant.explain import explain_layer
    from npquant.models.convert import from_pytorch_ptq
    from npquant.qnn import layers as ql

    path = default_models_dir() / f"{name}_ptq.npz"
    q = from_pytorch_ptq(path)
    x = np.load(path)["input_int"][:2]
    h = x
    rng = np.random.default_rng(1)
    for pos, layer in enumerate(q.layers):
        y = layer(h)
        if isinstance(layer, (ql.QLinear, ql.QConv2d)):
            assert layer.float_bias is not None
            for _ in range(12):
                idx = tuple(int(rng.integers(0, d)) for d in y.shape)
                e = explain_layer(q, x, pos, idx)
                assert e.code == int(y[idx]) and e.float_bias is not None and e.bias == 0
        h = y


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor_fma", "per_channel_add"])
def test_float_bias_trace_equals_fbgemm_requantize_on_every_output(per_channel):
    """Both of fbgemm's bias paths (an FMA for per-tensor weights, an add per channel), on
    every output of a small layer whose values sit near rounding ties."""
    from npquant.qnn import QLinear

    rng = np.random.default_rng(4)
    x_qp = QParams(np.float32(0.05), 131, QuantSpec(signed=False))
    y_qp = QParams(np.float32(0.21), 17, QuantSpec(signed=False))
    w = rng.integers(-127, 128, (6, 9)).astype(np.int8)
    scale = np.float32(0.013) if not per_channel else rng.uniform(0.005, 0.02, 6).astype(np.float32)
    w_qp = QParams(
        scale,
        0 if not per_channel else np.zeros(6, np.int32),
        QuantSpec(symmetric=True, axis=0 if per_channel else None),
    )
    fb = (rng.normal(size=6) * 0.7).astype(np.float32)
    xq = rng.integers(0, 256, (40, 9)).astype(np.uint8)
    for act in (None, "relu"):
        layer = QLinear(w, w_qp, fb, x_qp, y_qp, mode="fbgemm", activation=act)
        y = layer(xq)
        lo, hi = (int(v) for v in layer.out_range)
        for r in range(xq.shape[0]):
            for c in range(6):
                e = explain_linear(xq, x_qp, w, w_qp, None, y_qp, r, c, mode="fp32", qmin=lo, qmax=hi, float_bias=fb)
                assert e.code == int(y[r, c])
                assert ("bias, fused" if not per_channel else "bias, added") in e.format()
    with pytest.raises(ValueError, match="not both"):
        explain_linear(xq, x_qp, w, w_qp, np.zeros(6, np.int32), y_qp, 0, 0, mode="fp32", float_bias=fb)
    with pytest.raises(ValueError, match="mode='fp32'"):
        explain_linear(xq, x_qp, w, w_qp, None, y_qp, 0, 0, mode="tflite", float_bias=fb)


@pytest.mark.slow  # whole models: run in the JIT pass
def test_trace_element_of_every_other_integer_node():
    """Every node without an accumulator of a graph with add, relu6, concat, both pools,
    flatten, quantize and dequantize: the listed input elements, through the op on their real
    values, give the layer's code to within its rounding (one code), and exactly where the
    op only moves codes (max pool, flatten, relu)."""
    from test_graph import _int_graph

    from npquant.explain import ElementTrace, explain_layer

    rng = np.random.default_rng(3)
    g, _ = _int_graph(rng)
    x = rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    env = g.run(x, keep_intermediates=True)
    traced = set()
    for node in g.nodes:
        if node.op in ("qconv2d", "qlinear"):
            continue
        y = env[node.outputs[0]]
        for _ in range(6):
            idx = tuple(int(rng.integers(0, d)) for d in y.shape)
            t = explain_layer(g, x, node.name, idx)
            assert isinstance(t, ElementTrace) and t.code == (float(y[idx]) if node.op == "dequantize" else int(y[idx]))
            text = t.format()
            assert f"output element {list(idx)}" in text
            if node.op == "dequantize":
                assert t.float_result == pytest.approx(float(y[idx]), rel=1e-6)
                continue
            qp = g.qparams[node.outputs[0]]
            ideal = t.float_result / float(np.float32(qp.scale)) + int(qp.zero_point)
            lo, hi = qp.spec.qmin, qp.spec.qmax
            assert abs(min(max(ideal, lo), hi) - t.code) <= 1.0, (node.name, idx, ideal, t.code)
            if node.op in ("qmaxpool2d", "qflatten", "qrelu"):
                if node.op == "qmaxpool2d":
                    assert t.code == max(e[2] for e in t.elements)
                elif node.op == "qflatten":
                    assert t.code == t.elements[0][2]
            traced.add(node.op)
    assert traced >= {"quantize", "qadd", "qrelu", "qconcat", "qavgpool2d", "qmaxpool2d", "qflatten"}


def test_trace_element_errors():
    from npquant.explain import trace_element

    q = np.zeros((1, 2), np.uint8)
    qp = QParams(np.float32(0.1), 0, QuantSpec(signed=False))
    with pytest.raises(ValueError, match="outside the output"):
        trace_element("qrelu", {}, [q], [qp], q, qp, (0, 2))
    with pytest.raises(ValueError, match="does not trace op 'qpad'"):
        trace_element("qpad", {}, [q], [qp], q, qp, (0, 0))
