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
# # 1. Linear quantization of a tensor
#
# **What you will learn**
#
# - the affine map `r = S (q - Z)` between real values `r` and integer codes `q`, with
#   a scale `S` and a zero point `Z`;
# - how to choose `S` and `Z` from a tensor's range, by hand and with npquant, on the
#   3x3 tensor worked through in the "Quantization in Depth" course (DeepLearning.AI and
#   Hugging Face);
# - symmetric against asymmetric quantization, and why the course's `max|r| / 127` is
#   `narrow_range=True` in npquant;
# - per-tensor, per-channel and per-group scales, and the error of each.
#
# Every number printed below is checked by an `assert` next to it, so this text cannot
# drift from what the code computes. Run it as a script
# (`python tutorials/01_linear_quantization.py`) or open it as a notebook with jupytext.

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq

# Figures are written only when this names a folder (a notebook shows them anyway).
OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## The affine map
#
# An integer code `q` stands for the real value `r = S (q - Z)`. Going the other way,
# quantization rounds and saturates: `q = clamp(round(r / S) + Z, qmin, qmax)`. For
# signed 8-bit codes `qmin = -128` and `qmax = 127`.
#
# The course starts with an arbitrary choice, `S = 3.5` and `Z = -70`, on this tensor:

# %%
r = np.array([[191.6, -13.5, 728.6], [92.14, 295.5, -184.0], [0.0, 684.6, 245.5]], dtype=np.float32)

S, Z = 3.5, -70
q_by_hand = np.clip(np.rint(r / np.float32(S)) + Z, -128, 127).astype(np.int8)
print(q_by_hand)

# npquant: the same codes from a QParams (scale, zero point) and a QuantSpec (int8 here)
qp = nq.QParams(S, Z, nq.QuantSpec(bits=8))
q = nq.quantize(r, qp)
assert np.array_equal(q, q_by_hand)
assert q.tolist() == [[-15, -74, 127], [-44, 14, -123], [-70, 126, 0]]

# %% [markdown]
# `728.6 / 3.5 - 70 = 138.2` does not fit: it saturates to 127. Dequantizing shows
# what that costs: `3.5 * (127 + 70) = 689.5` instead of 728.6, an error of 39.1, and
# a mean squared error (MSE) over the tensor of 170.88.

# %%
r_hat = nq.dequantize(q, qp)  # float32: S * (q - Z)
print(r_hat)
err = nq.quantization_error(r, r_hat)
print(f"MSE {err.mse:.2f}, largest error {err.max_abs:.1f}")
assert np.array_equal(r_hat, np.float32(3.5) * (q.astype(np.float32) + 70)) and r_hat[0, 2] == 689.5
assert f"{err.mse:.2f}" == "170.88" and f"{err.max_abs:.1f}" == "39.1"

# %% [markdown]
# ## Scale and zero point from the range
#
# Map the tensor's range `[r_min, r_max]` onto the code range `[qmin, qmax]`:
#
# - `S = (r_max - r_min) / (qmax - qmin)`
# - `Z = qmin - round(r_min / S)`, so that `r_min` lands on `qmin` and, above all,
#   **real zero lands exactly on the integer `Z`**: zero padding and ReLU outputs
#   must stay exactly zero. (npquant always widens the range to include 0.)
#
# By hand, in float64: `S = (728.6 + 184) / 255 = 3.5788...` and
# `Z = -128 - round(-184 / 3.5788...) = -128 - round(-51.41) = -77`.

# %%
r_min, r_max = -184.0, 728.6
S_hand = (r_max - r_min) / (127 - (-128))
Z_hand = -128 - round(r_min / S_hand)
print(f"by hand: S = {S_hand:.6f}, Z = {Z_hand}, r_min / S = {r_min / S_hand:.2f}")
assert f"{S_hand:.6f}" == "3.578824" and Z_hand == -77 and f"{r_min / S_hand:.2f}" == "-51.41"

qp = nq.fit_qparams(r, nq.QuantSpec(bits=8))  # min-max of r, asymmetric by default
print(f"npquant: S = {float(qp.scale):.7f} (float32), Z = {int(qp.zero_point)}")
assert int(qp.zero_point) == Z_hand
# npquant computes in float32, as PyTorch's observers do: one float32 step from S_hand
f32 = np.float32
assert qp.scale == (f32(728.6) - f32(-184.0)) / f32(255)
assert abs(float(qp.scale) - S_hand) <= float(np.spacing(f32(S_hand)))

q = nq.quantize(r, qp)
r_hat = nq.dequantize(q, qp)
err_asym = nq.quantization_error(r, r_hat)
print(q)
print(f"MSE {err_asym.mse:.4f}")
assert q.tolist() == [[-23, -81, 127], [-51, 6, -128], [-77, 114, -8]]
assert f"{err_asym.mse:.4f}" == "1.5730"
assert r_hat[2, 0] == 0.0  # r = 0 -> q = Z -> exactly 0.0

# %% [markdown]
# The MSE drops from 170.88 to 1.5730: nothing saturates any more, and every value is
# within half a step `S / 2` of its code's value. Real zero became code -77 and came
# back as exactly 0.0.
#
# ## Symmetric quantization
#
# Symmetric quantization fixes `Z = 0` (no zero-point arithmetic in the integer
# kernels, which is why weights are usually symmetric) and takes
# `S = max|r| / qmax`. The course's formula, `S = r_max / q_max = 728.6 / 127`, maps
# the largest magnitude to code 127 and never uses -128: the codes are `[-127, 127]`.
# In npquant that is `symmetric=True, narrow_range=True` (TFLite's int8 weights too).
# The default `symmetric=True` is PyTorch's `max|r| / 127.5`, which uses all 256 codes.

# %%
course = nq.QuantSpec(bits=8, symmetric=True, narrow_range=True)
print("narrow range codes:", course.qmin, "...", course.qmax)
qp_sym = nq.fit_qparams(r, course)
q_sym = nq.quantize(r, qp_sym)
err_sym = nq.quantization_error(r, nq.dequantize(q_sym, qp_sym))
print(f"S = {float(qp_sym.scale):.4f}, Z = {int(qp_sym.zero_point)}, MSE {err_sym.mse:.4f}")
print(q_sym)
assert (course.qmin, course.qmax) == (-127, 127)
# the course's float64 r_max / q_max (r_max read from the float32 tensor), rounded to float32
assert qp_sym.scale == np.float32(float(np.abs(r).max()) / 127) and f"{float(qp_sym.scale):.4f}" == "5.7370"
assert q_sym.tolist() == [[33, -2, 127], [16, 52, -32], [0, 119, 43]]
assert f"{err_sym.mse:.4f}" == "2.5092"

torch_style = nq.fit_qparams(r, nq.QuantSpec(bits=8, symmetric=True))
ratio = float(qp_sym.scale / qp.scale)
print(f"the symmetric step is {ratio:.2f} times the asymmetric one")
assert f"{ratio:.2f}" == "1.60"
print(f"PyTorch's symmetric scale: {float(torch_style.scale):.4f} = 728.6 / 127.5")
assert torch_style.scale == np.float32(np.float32(728.6) / np.float32(127.5))
assert f"{float(torch_style.scale):.4f}" == "5.7145"

# %% [markdown]
# Symmetric costs accuracy here (MSE 2.5092 against 1.5730): the tensor is lopsided,
# `-184` to `728.6`, so the codes below -32 are never used and the step is 1.60 times as large.
# Signed symmetric codes suit tensors centred on zero, such as weights; asymmetric codes
# suit activations after a ReLU, which are all non-negative.
#
# ## Per-tensor, per-channel, per-group
#
# One scale for the whole tensor lets one large value coarsen the grid for all the
# others. npquant names the granularity with ONNX's words: `axis=None` is per-tensor,
# `axis=k` gives one scale per index along axis `k` (per-channel; for a `(out, in)`
# weight matrix, `axis=0` is one scale per output row), and `axis=k, block_size=B`
# gives one scale per run of `B` elements along `k` (per-group, as LLM weight formats
# use). On the course's tensor, symmetric narrow-range as above:

# %%
for name, axis in (("per-tensor", None), ("per-row (axis=0)", 0), ("per-column (axis=1)", 1)):
    spec = nq.QuantSpec(bits=8, symmetric=True, narrow_range=True, axis=axis)
    qp_g = nq.fit_qparams(r, spec)
    mse = nq.quantization_error(r, nq.fake_quantize(r, qp_g)).mse
    scales = ", ".join(f"{v:.4f}" for v in np.atleast_1d(qp_g.scale))
    print(f"{name:20s} scales [{scales}]  MSE {mse:.4f}")
    assert f"{mse:.4f}" == {None: "2.5092", 0: "1.8084", 1: "1.0781"}[axis]
    if axis == 1:
        finer = float(qp_sym.scale / qp_g.scale[0])
        print(f"column 0's scale is {finer:.1f} times finer than the per-tensor scale")
        assert f"{finer:.1f}" == "3.8"

# %% [markdown]
# Per-row scales bring the MSE from 2.5092 down to 1.8084 and per-column ones to
# 1.0781 (column 0 holds only small values, so its scale is about 3.8 times finer).
#
# The effect is larger at 4 bits on a weight matrix whose rows have very different
# magnitudes, as trained layers do. Here one row also holds an outlier weight (4.0):

# %%
rng = np.random.default_rng(0)
w = (rng.standard_normal((8, 32)) * np.exp(rng.uniform(-2, 1, (8, 1)))).astype(np.float32)
w[3, 5] = 4.0

options = {
    "per-tensor": nq.QuantSpec(bits=4, symmetric=True),
    "per-channel": nq.QuantSpec(bits=4, symmetric=True, axis=0),
    "per-group of 8": nq.QuantSpec(bits=4, symmetric=True, axis=1, block_size=8),
}
sqnr, n_scales = {}, {}
for name, spec in options.items():
    qp_w = nq.fit_qparams(w, spec)
    n_scales[name] = qp_w.scale.size
    e = nq.quantization_error(w, nq.fake_quantize(w, qp_w))
    sqnr[name] = e.sqnr_db
    print(f"{name:15s} {qp_w.scale.size:3d} scales  MSE {e.mse:.5f}  SQNR {e.sqnr_db:5.2f} dB")
assert [f"{v:.2f}" for v in sqnr.values()] == ["13.49", "18.97", "22.42"]
assert list(n_scales.values()) == [1, 8, 32] and w.size * 4 // 8 == 128 and 4 * 32 == 128

# %% [markdown]
# SQNR (signal to quantization noise ratio, `10 log10(sum w^2 / sum (w - w_hat)^2)`)
# rises from 13.49 dB per tensor to 18.97 dB per channel and 22.42 dB per group of 8.
# The price is storage: 1, 8 and 32 float32 scales for 256 weights of 4 bits (128
# bytes), so per-group adds 128 bytes of scales here; real layers have far more weights
# per group, which is why groups of 32 to 128 are common.
#
# `npquant.app.plot` draws the same comparison as heatmaps of `|w - fq(w)|` on one colour
# scale: the outlier's row lights up in every option, but only per-tensor spreads the
# damage over the other rows.

# %%
from npquant.app import plot as nqplot  # noqa: E402  (matplotlib is imported when drawing)

fig = nqplot.plot_error_heatmaps(w, options, title="4-bit symmetric, three granularities")
assert len([a for a in fig.axes if a.images]) == 3  # one heatmap per option
fig2 = nqplot.plot_histogram(w, nq.fit_qparams(w, options["per-tensor"]), title="w with the 4-bit per-tensor grid")
assert len(nqplot.grid_levels(nq.fit_qparams(w, options["per-tensor"]))) == 16
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "01_error_heatmaps.png"))
    nqplot.save_figure(fig2, os.path.join(OUT, "01_histogram.png"))
fig

# %% [markdown]
# ## Exercise
#
# Quantize `x = [-0.5, 0.0, 0.25, 1.5]` to **unsigned 8-bit asymmetric** codes
# (`QuantSpec(signed=False)`, codes 0..255) by hand: what are `S`, `Z` and the four
# codes? Write your answer below, then compare with `exercise_answer()`, which
# computes it with npquant (it is not printed unless you call it).

# %%
x_exercise = np.array([-0.5, 0.0, 0.25, 1.5], dtype=np.float32)


def exercise_answer():
    """``(S, Z, codes)`` of ``x_exercise`` at ``QuantSpec(signed=False)``."""
    qp_x = nq.fit_qparams(x_exercise, nq.QuantSpec(signed=False))
    return float(qp_x.scale), int(qp_x.zero_point), nq.quantize(x_exercise, qp_x).tolist()


my_answer = None  # your (S, Z, [q0, q1, q2, q3])
if my_answer is not None:
    s_ok = abs(my_answer[0] - exercise_answer()[0]) < 1e-6
    print("right" if s_ok and list(my_answer[1:]) == list(exercise_answer()[1:]) else "not yet")
