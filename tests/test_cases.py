"""Tests of npquant.models.cases: the outlier case is deterministic, its float function does not
depend on the outlier scaling, and the orderings its docstring claims hold with margins
(per-channel vs per-tensor, MSE/entropy vs min-max observers, 4 vs 8 bits)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from npquant import QuantSpec, fake_quantize, fit_qparams, quantization_error
from npquant.models.cases import (
    OUTLIER_GAIN,
    OutlierCase,
    calibrate_hidden,
    observer_errors,
    outlier_mlp,
    ptq,
    report,
    weight_errors,
    weight_spec,
)


@pytest.fixture(scope="module")
def case():
    return outlier_mlp()


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


# ---------------------------------------------------------------------------- the case


def test_shapes_and_determinism(case):
    assert isinstance(case, OutlierCase)
    assert case.fc1_weight.shape == (64, 32) and case.model[2].weight.shape == (8, 64)
    assert case.calib_x.shape == (512, 32) and case.test_x.shape == (2000, 32)
    assert case.test_x.dtype == np.float32 and case.test_y.dtype == np.int64
    assert set(np.unique(case.test_y)) == set(range(8))
    again = outlier_mlp(0)
    for a, b in [
        (case.test_x, again.test_x),
        (case.calib_x, again.calib_x),
        (case.test_y, again.test_y),
        *zip(case.model.state_dict().values(), again.model.state_dict().values()),
    ]:
        np.testing.assert_array_equal(a, b)
    other = outlier_mlp(1)
    assert not np.array_equal(other.test_x, case.test_x)


def test_outlier_channel_leaves_the_float_function_unchanged(case):
    # ReLU(g z) = g ReLU(z); g = 16 is a power of two, so the scaling is exact in float32
    assert OUTLIER_GAIN == 16.0 and case.gain == 16.0 and case.outlier_channel == 0
    plain = outlier_mlp(0, gain=1)
    np.testing.assert_array_equal(case.model(case.test_x), plain.model(plain.test_x))
    np.testing.assert_array_equal(case.fc1_weight[0], 16 * plain.fc1_weight[0])
    np.testing.assert_array_equal(case.fc1_weight[1:], plain.fc1_weight[1:])
    # the outlier row dominates fc1's range, and channel 0 the hidden activation's
    row_max = np.abs(case.fc1_weight).max(axis=1)
    assert row_max[0] > 8 * row_max[1:].max()
    h = case.hidden(case.test_x)
    assert h.shape == (2000, 64) and h.min() >= 0
    assert h[:, 0].max() > 3 * h[:, 1:].max()


def test_float_accuracy(case):
    acc = case.accuracy()
    assert acc == pytest.approx(0.9405, abs=0.02)  # 94.05 % measured (seed 0)
    assert case.accuracy(lambda x: case.model(x)) == acc
    assert case.accuracy(lambda x: np.zeros((len(x), 8))) == np.mean(case.test_y == 0)


# ----------------------------------------------------------------------- the orderings


def test_per_channel_beats_per_tensor(case):
    rows = weight_errors(case, bits=(8, 4))
    assert [(r["bits"], r["granularity"]) for r in rows] == [
        (8, "per-tensor"),
        (8, "per-channel"),
        (8, "per-group"),
        (4, "per-tensor"),
        (4, "per-channel"),
        (4, "per-group"),
    ]
    w = case.fc1_weight
    for b in (8, 4):
        t = _row(rows, bits=b, granularity="per-tensor")
        c = _row(rows, bits=b, granularity="per-channel")
        g = _row(rows, bits=b, granularity="per-group")
        # the numbers are those of the library's own calls
        ref = quantization_error(w, fake_quantize(w, fit_qparams(w, weight_spec("per-channel", b))))
        assert c["mse"] == ref.mse and c["sqnr_db"] == ref.sqnr_db
        # measured: whole tensor 72x (8 bits), 28x (4 bits); other rows 238x, 105x
        assert t["mse"] > 20 * c["mse"]
        assert t["mse_ordinary"] > 80 * c["mse_ordinary"]
        assert t["sqnr_db"] < c["sqnr_db"] - 13
        assert g["mse"] <= c["mse"]
    # at 4 bits per-tensor, most of the ordinary weights round to zero
    w_hat = fake_quantize(w, fit_qparams(w, weight_spec("per-tensor", 4)))
    assert np.mean(w_hat[1:] == 0) > 0.5


def test_weight_spec():
    assert weight_spec("per-tensor", 4) == QuantSpec(bits=4, symmetric=True, narrow_range=True)
    assert weight_spec("per-channel", 8).axis == 0
    s = weight_spec("per-group", 4, group_size=8)
    assert (s.axis, s.block_size) == (1, 8)
    with pytest.raises(ValueError, match="granularity"):
        weight_spec("per-row", 4)


def test_mse_and_entropy_observers_beat_minmax_at_4_bits(case):
    rows = observer_errors(case, bits=4, observers=("minmax", "mse", "entropy"))
    mm, mse, ent = (_row(rows, observer=o) for o in ("minmax", "mse", "entropy"))
    # min-max: the range is the calibration maximum, set by the outlier channel
    assert mm["min_val"] == 0.0
    assert mm["max_val"] == pytest.approx(float(case.hidden(case.calib_x).max()), rel=1e-6)
    h = case.hidden(case.test_x)
    qp = calibrate_hidden(case, "minmax", 4)
    assert np.mean(fake_quantize(h, qp) == 0) > 0.9  # 96 % measured: the min-max step is 6.3
    # the MSE observer clips: 1.6x lower MSE on the test activations (measured)
    assert mse["max_val"] < 0.7 * mm["max_val"]
    assert mse["mse"] < mm["mse"] / 1.4
    # entropy clips harder: the worst MSE of the whole tensor (the outlier channel is
    # clipped), the best on the 63 ordinary channels (measured 40x lower than min-max)
    assert ent["max_val"] < mse["max_val"]
    assert ent["mse"] > mm["mse"]
    assert ent["mse_ordinary"] < mm["mse_ordinary"] / 10
    # the row's numbers are those of the library's own calls
    qp = calibrate_hidden(case, "mse", 4)
    assert qp.spec == QuantSpec(bits=4, signed=False)
    assert mse["mse"] == quantization_error(h, fake_quantize(h, qp)).mse


@pytest.mark.slow
def test_observers_at_8_bits_are_close(case):
    rows = observer_errors(case, bits=8, observers=("minmax", "mse"))
    mm, mse = (_row(rows, observer=o) for o in ("minmax", "mse"))
    # at 8 bits clipping gains little: within 20 % of each other (measured 11 %)
    assert abs(mse["mse"] - mm["mse"]) < 0.2 * mm["mse"]


# Model-level: the integer model runs 2000 inputs through the kernels (JIT pass only).


@pytest.fixture(scope="module")
def results(case):
    settings = [
        (8, 8, True, "minmax"),
        (4, 8, False, "minmax"),
        (4, 8, True, "minmax"),
        (8, 4, True, "minmax"),
        (8, 4, True, "mse"),
        (8, 4, True, "entropy"),
        (4, 4, True, "minmax"),
    ]
    return {s: ptq(case, weight_bits=s[0], act_bits=s[1], per_channel=s[2], observer=s[3]) for s in settings}


@pytest.mark.slow
def test_ptq_per_channel_vs_per_tensor(case, results):
    f = case.accuracy()
    per_tensor, per_channel = results[(4, 8, False, "minmax")], results[(4, 8, True, "minmax")]
    assert per_tensor.accuracy < 0.5  # 21.5 % measured: near chance (1/8)
    assert per_channel.accuracy > f - 0.03  # 93.15 % measured, float 94.05 %
    assert per_channel.sqnr_db > per_tensor.sqnr_db + 6
    r = per_channel
    assert (r.weight_bits, r.act_bits, r.per_channel, r.observer) == (4, 8, True, "minmax")
    assert r.accuracy == case.accuracy(r.model)


@pytest.mark.slow
def test_ptq_observers_at_4_bit_activations(case, results):
    mm, mse, ent = (results[(8, 4, True, o)] for o in ("minmax", "mse", "entropy"))
    # measured 53.7 %, 84.3 %, 92.55 %
    assert mm.accuracy < mse.accuracy < ent.accuracy
    assert mse.accuracy > mm.accuracy + 0.15
    assert ent.accuracy > mm.accuracy + 0.25
    assert ent.model.layers[0].y_qp.spec.bits == 4


@pytest.mark.slow
def test_4_bit_ptq_hurts_more_than_8_bit(case, results):
    f = case.accuracy()
    w8a8, w4a8, w4a4 = results[(8, 8, True, "minmax")], results[(4, 8, True, "minmax")], results[(4, 4, True, "minmax")]
    assert f - w8a8.accuracy < 0.01  # 0.30 points measured
    assert f - w4a8.accuracy > f - w8a8.accuracy
    assert f - w4a4.accuracy > 0.2  # 38.6 points measured
    assert w8a8.sqnr_db > w4a8.sqnr_db + 6 > w4a4.sqnr_db + 6  # 21.9, 12.5, 2.4 dB measured


@pytest.mark.slow
def test_report(case):
    text = report(case, settings=((4, 8, False, "minmax"),))
    for heading in ("fc1 weight error", "hidden activation error", "integer model"):
        assert heading in text
    assert re.search(r"W4A8\s+per-tensor\s+minmax\s+\d+\.\d\d %", text)
    assert f"float test accuracy {100 * case.accuracy():.2f} %" in text


# ------------------------------------------------------------------------------ errors


def test_argument_errors(case):
    with pytest.raises(ValueError, match="seed"):
        outlier_mlp(-1)
    with pytest.raises(TypeError, match="seed"):
        outlier_mlp(1.5)
    with pytest.raises(ValueError, match="gain"):
        outlier_mlp(0, gain=0.5)
    with pytest.raises(TypeError, match="gain"):
        outlier_mlp(0, gain="16")
    with pytest.raises(TypeError, match="case"):
        weight_errors("case")
    with pytest.raises(ValueError, match="bits"):
        weight_errors(case, bits=(1,))
    with pytest.raises(ValueError, match="observer"):
        calibrate_hidden(case, "median", 4)
    with pytest.raises(ValueError, match="bits"):
        calibrate_hidden(case, "minmax", 9)
    with pytest.raises(ValueError, match="weight_bits"):
        ptq(case, weight_bits=9)
    with pytest.raises(TypeError, match="per_channel"):
        ptq(case, per_channel=1)
    with pytest.raises(TypeError, match="model"):
        case.accuracy(42)
