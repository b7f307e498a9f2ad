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
# # 3. Observers and calibration
#
# **What you will learn**
#
# - what an *observer* is: it watches activations batch by batch during calibration and
#   chooses the real range `[min, max]` that the scale and zero point are made from;
# - min-max and moving-average min-max (PyTorch's defaults, reproduced bit for bit);
# - why the range of a heavy-tailed activation should be *clipped*, and how the
#   percentile, MSE and entropy (KL, TensorRT's) observers choose where;
# - on `npquant.models.cases.outlier_mlp`, a small bundled network with heavy-tailed inputs
#   and one outlier channel, how much the choice matters at 4 bits: from 54 % to 92 %
#   test accuracy.
#
# Every number printed is checked by an `assert` beside it.

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq
from npquant.models import cases

OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")  # a folder for the figures, or None
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## An observer sees one batch at a time
#
# Calibration runs the float model on a few hundred representative inputs and records
# each activation's range. An observer keeps a small summary (for min-max, two floats),
# so calibration data never has to fit in memory at once. `MinMaxObserver` over batches
# gives exactly what `fit_qparams` gives on all the data at once:

# %%
rng = np.random.default_rng(0)
batches = [rng.normal(1.0, 1.0, 256).astype(np.float32) for _ in range(10)]
spec = nq.QuantSpec(bits=8, signed=False)  # uint8 activations, asymmetric

obs = nq.MinMaxObserver(spec)
for b in batches:
    obs.update(b)
qp = obs.qparams()
assert qp.scale == nq.fit_qparams(np.concatenate(batches), spec).scale
print(
    f"min {float(obs.min_val):.3f}, max {float(obs.max_val):.3f} -> S = {float(qp.scale):.5f}, Z = {int(qp.zero_point)}"
)
assert int(qp.zero_point) == int(np.rint(-float(obs.min_val) / float(qp.scale))) == 106
assert f"{float(obs.min_val):.3f}" == "-2.899" and f"{float(obs.max_val):.3f}" == "4.066"
assert f"{float(qp.scale):.5f}" == "0.02732"

# %% [markdown]
# `MovingAverageMinMaxObserver` (PyTorch's default during quantization-aware training)
# keeps `min <- min + c (batch_min - min)` with `c = 0.01` by default: one unusual batch
# moves the range only a little. Here the last batch holds a single value of 50:

# %%
spiky = batches[:-1] + [np.append(batches[-1], np.float32(50.0))]
mm = nq.MinMaxObserver(spec)
ema = nq.MovingAverageMinMaxObserver(spec, averaging_constant=0.01)
for b in spiky:
    mm.update(b)
    ema.update(b)
print(f"min-max max: {float(mm.max_val):.2f}; moving-average max: {float(ema.max_val):.2f}")
assert float(mm.max_val) == 50.0 and f"{float(ema.max_val):.2f}" == "4.49"

# %% [markdown]
# ## A case where the choice matters
#
# `npquant.models.cases.outlier_mlp()` builds, from a seed and in well under a second, a
# classifier `fc1 (32 -> 64) -> ReLU -> fc2 (64 -> 8)` on 8 classes whose inputs have
# Student-t noise (heavy tails: a few inputs are far out), and whose hidden channel 0
# is 16 times larger than the others (the float function is unchanged; trained
# networks have such channels too). We quantize the hidden activation, calibrating on
# `case.calib_x` (512 inputs) and measuring on `case.test_x` (2000 inputs).

# %%
case = cases.outlier_mlp(seed=0)
h_cal = case.hidden(case.calib_x)  # ReLU(fc1(x)), shape (512, 64)
h_test = case.hidden(case.test_x)  # (2000, 64)
acc_float = case.accuracy()
assert h_cal.shape == (512, 64) and h_test.shape == (2000, 64) and case.gain == 16
p99 = float(np.percentile(h_cal, 99))
print(f"float test accuracy {acc_float:.2%}")
print(
    f"hidden activation: 99 % of values below {p99:.2f}; max of channel 0 "
    f"{h_cal[:, 0].max():.2f}, max of the other 63 channels {h_cal[:, 1:].max():.2f}"
)
assert f"{acc_float:.2%}" == "94.05%"
assert f"{p99:.2f}" == "5.04" and f"{h_cal[:, 0].max():.2f}" == "94.52" and f"{h_cal[:, 1:].max():.2f}" == "12.45"

# %% [markdown]
# The range is set by very few values: the outlier channel and the far-out inputs.
# With 4-bit codes (16 levels) a min-max range of `[0, 94.5]` makes the step
# `94.5 / 15 = 6.3`, and almost every hidden value (they are mostly below 5) rounds to
# code 0. A clipped range saturates the rare large values but resolves the common ones.
#
# The histogram observers build a histogram of the calibration data (with a fixed
# number of bins, re-binned exactly when a batch falls outside it) and choose a range:
#
# - `PercentileObserver`: a percentile (99.99 % by default) of the values;
# - `MSEObserver`: the range of least expected squared quantization error, rounding and
#   clipping together;
# - `EntropyObserver`: the range whose quantized histogram is closest to the original in
#   Kullback-Leibler divergence (TensorRT's calibration).

# %%
fc2 = case.model[2]
results = {}
for bits in (8, 4):
    for name, make in (
        ("min-max", nq.MinMaxObserver),
        ("percentile", nq.PercentileObserver),
        ("MSE", nq.MSEObserver),
        ("entropy", nq.EntropyObserver),
    ):
        o = make(nq.QuantSpec(bits=bits, signed=False))
        for start in range(0, len(h_cal), 128):  # four calibration batches
            o.update(h_cal[start : start + 128])
        qp_h = o.qparams()
        h_hat = nq.fake_quantize(h_test, qp_h, backend="numpy")
        top = float(qp_h.scale) * (qp_h.spec.qmax - int(qp_h.zero_point))
        zeros = float(np.mean(nq.quantize(h_test, qp_h, backend="numpy") == qp_h.zero_point))
        err = nq.quantization_error(h_test, h_hat)
        err_ord = nq.quantization_error(h_test[:, 1:], h_hat[:, 1:])  # the 63 ordinary channels
        acc = float(np.mean(fc2(h_hat).argmax(1) == case.test_y))
        results[bits, name] = dict(
            top=top, step=float(qp_h.scale), zeros=zeros, mse=err.mse, mse_ord=err_ord.mse, acc=acc
        )
        print(
            f"{bits} bits {name:10s} range [0, {top:6.2f}]  step {float(qp_h.scale):.4f}  "
            f"code 0: {zeros:6.1%}  MSE {err.mse:.4f} (other channels {err_ord.mse:.4f})  "
            f"accuracy {acc:.2%}"
        )

r4 = {name: results[4, name] for name in ("min-max", "percentile", "MSE", "entropy")}
assert [f"{r['top']:.2f}" for r in r4.values()] == ["94.52", "82.67", "50.06", "8.87"]
assert f"{r4['min-max']['step']:.4f}" == "6.3010" and f"{r4['min-max']['zeros']:.1%}" == "96.2%"
assert [f"{r['acc']:.2%}" for r in r4.values()] == ["54.25%", "63.60%", "84.35%", "92.45%"]
assert r4["entropy"]["mse"] > r4["min-max"]["mse"] and r4["entropy"]["mse_ord"] < r4["min-max"]["mse_ord"] / 10
assert all(abs(results[8, n]["acc"] - acc_float) < 0.01 for n in r4)
relu_zeros = float(np.mean(h_test == 0))
print(f"exact zeros (ReLU) in the test activation: {relu_zeros:.1%}")
assert f"{relu_zeros:.1%}" == "50.1%"

# %% [markdown]
# At 8 bits every observer stays within a point of the float accuracy (94.05 %): 256
# levels are enough even for the min-max range. (About half of the codes are 0 at any
# width: 50.1 % of the values are exact zeros from the ReLU.) At 4 bits:
#
# - min-max keeps `[0, 94.52]`, a step of 6.3010: 96.2 % of the test values become
#   code 0, and accuracy falls to 54.25 %;
# - the percentile range (82.67) barely helps (63.60 %): the top 0.01 % of 32768 values
#   is still in the tail;
# - MSE clips at 50.06 (84.35 %); entropy clips hard, at 8.87 (92.45 %).
#
# Entropy's MSE over the *whole* tensor is the worst of the four, because it clips the
# outlier channel; on the 63 ordinary channels it is more than ten times better than
# min-max, and the accuracy follows the ordinary channels. The lesson: the best range
# depends on what the next layer needs, not only on the error of one tensor. (Per-tensor
# activation scales are what integer kernels take; the outlier channel is why LLM
# quantizers move such channels into the weights, as SmoothQuant does.)
#
# A histogram with both grids shows it (a log scale makes the tail visible):

# %%
from npquant.app import plot as nqplot  # noqa: E402

qp_minmax = nq.fit_qparams(h_cal, nq.QuantSpec(bits=4, signed=False))
ent = nq.EntropyObserver(nq.QuantSpec(bits=4, signed=False)).update(h_cal)
fig = nqplot.plot_histogram(h_cal, qp_minmax, log=True, title="hidden activation, 4-bit min-max grid")
fig2 = nqplot.plot_histogram(h_cal, ent.qparams(), log=True, title="the same, 4-bit entropy grid")
for f in (fig, fig2):  # what the figures claim: a histogram, 16 grid lines, the clipping range
    gids = {a.get_gid() for a in f.axes[0].get_children()}
    assert {"histogram", "quantization_grid", "clip_min", "clip_max"} <= gids
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "03_minmax_grid.png"))
    nqplot.save_figure(fig2, os.path.join(OUT, "03_entropy_grid.png"))
fig2

# %% [markdown]
# ## Exercise
#
# Without an observer: take the min-max range of the *calibration* hidden activation
# at 4 bits (`S = max / 15`, `Z = 0`). What fraction of the **test** hidden values
# round to code 0? (Hint: a value rounds to 0 when `h / S < 0.5`, ties to even.)
# Check your number with `exercise_answer()` (not printed unless you call it).


# %%
def exercise_answer():
    """Fraction of ``h_test`` whose 4-bit code is 0 with the min-max range of ``h_cal``."""
    qp4 = nq.fit_qparams(h_cal, nq.QuantSpec(bits=4, signed=False))
    return float(np.mean(nq.quantize(h_test, qp4, backend="numpy") == 0))


my_answer = None  # your fraction, e.g. 0.5
if my_answer is not None:
    print("right" if abs(my_answer - exercise_answer()) < 5e-4 else "not yet")
