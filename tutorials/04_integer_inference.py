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
# # 4. Integer-only inference (Jacob et al. 2018)
#
# **What you will learn**, following "Quantization and Training of Neural Networks for
# Efficient Integer-Arithmetic-Only Inference" (Jacob et al., CVPR 2018), section 2:
#
# - why a quantized layer needs no float arithmetic: the output code follows from the
#   input and weight codes, an int32 accumulator and one real multiplier `M`;
# - eq. 7: folding the zero points so the inner loop is a plain sum of `q_x q_w`;
# - the int32 bias at scale `S_x S_w`;
# - `M = 2^-n M0` with `M0` in `[0.5, 1)` held as a 32-bit integer, and the fixed-point
#   requantization that TFLite and gemmlowp run;
# - how to read `npquant.explain`, which traces one output element through every step.
#
# Every number printed is checked by an `assert` beside it, and `explain` checks its
# own trace against npquant's integer layers.

# %%
import math

import numpy as np

import npquant as nq
from npquant import explain
from npquant.qnn import linear_accumulate, qlinear, quantize_bias

# %% [markdown]
# ## A small float layer and its codes
#
# `explain.builtin_example()` makes a seeded linear layer `y = x W^T + b` with 2 inputs
# of 16 features and 4 outputs, and quantizes it as a TFLite-style converter would:
# input `x` uint8 asymmetric (`Z_x != 0`), weights int8 asymmetric (`Z_w != 0`, so
# that every term of eq. 7 shows; the paper's weights are uint8 with a zero point too),
# output uint8 with a range calibrated on the float outputs.

# %%
ex = explain.builtin_example("linear", seed=0)
x_q, x_qp, w_q, w_qp, y_qp = ex["x_q"], ex["x_qp"], ex["w_q"], ex["w_qp"], ex["y_qp"]
S_x, Z_x = float(x_qp.scale), int(x_qp.zero_point)
S_w, Z_w = float(w_qp.scale), int(w_qp.zero_point)
S_y, Z_y = float(y_qp.scale), int(y_qp.zero_point)
print(f"S_x = {S_x:.7f}, Z_x = {Z_x};  S_w = {S_w:.7f}, Z_w = {Z_w};  S_y = {S_y:.7f}, Z_y = {Z_y}")
assert (Z_x, Z_w, Z_y) == (73, -15, 5)
assert np.array_equal(x_q, nq.quantize(ex["x_float"], x_qp))  # the codes of the float input

# %% [markdown]
# ## From reals to integers
#
# Write each real as `S (q - Z)`. One output of the layer is
#
# `S_y (q_y - Z_y) = sum_k S_x (q_x[k] - Z_x) * S_w (q_w[k] - Z_w) + b`
#
# so, with the bias quantized as `q_b = round(b / (S_x S_w))` (int32, zero point 0):
#
# `q_y = Z_y + M * (acc + q_b)`, where `acc = sum_k (q_x[k] - Z_x)(q_w[k] - Z_w)` and
# `M = S_x S_w / S_y`.
#
# `acc` is an exact integer sum (int32 is wide enough: each product is below 2^16), and
# `M` is the only real number left: it is known before inference runs. Here is output
# element `[0, 1]` (input row 0, output channel 1):

# %%
row, col = 0, 1
xr = x_q[row].astype(np.int64)
wc = w_q[col].astype(np.int64)
K = xr.size
acc = int(np.sum((xr - Z_x) * (wc - Z_w)))
q_b = quantize_bias(ex["b_float"], S_x, S_w)
print(f"acc = {acc}, int32 bias = {int(q_b[col])} (b = {ex['b_float'][col]:.6f} / S_x S_w)")
assert acc == 49696 and int(q_b[col]) == -2167 and np.array_equal(q_b, ex["bias_q"])
assert int(linear_accumulate(x_q, x_qp, w_q, w_qp, q_b)[row, col]) == acc + int(q_b[col])

# %% [markdown]
# ## Eq. 7: folding the zero points
#
# Multiplying out the product gives Jacob et al.'s eq. 7:
#
# `acc = sum q_x q_w - Z_w sum q_x - Z_x sum q_w + K Z_x Z_w`
#
# `sum q_w` and `K Z_x Z_w` depend on the weights only, so a kernel adds them to the
# bias once per layer. At run time it computes the plain integer dot product
# `sum q_x q_w` (the fast part, what `vpdpbusd` and friends do) and `Z_w sum q_x`, one
# sum per input row (zero when the weights are symmetric, which is why they usually are).

# %%
sum_xw, sum_x, sum_w = int(xr @ wc), int(xr.sum()), int(wc.sum())
folded = sum_xw - Z_w * sum_x - Z_x * sum_w + K * Z_x * Z_w
print(f"{sum_xw} - ({Z_w})*{sum_x} - {Z_x}*{sum_w} + {K}*{Z_x}*({Z_w}) = {folded}")
assert (sum_xw, sum_x, sum_w) == (46193, 2078, 139) and folded == acc

bias_folded = int(q_b[col]) - Z_x * sum_w + K * Z_x * Z_w  # once per layer
assert sum_xw - Z_w * sum_x + bias_folded == acc + int(q_b[col])  # per input row
# npquant's kernels compute either form and give the same bits
assert np.array_equal(
    linear_accumulate(x_q, x_qp, w_q, w_qp, q_b, form="folded"),
    linear_accumulate(x_q, x_qp, w_q, w_qp, q_b, form="direct"),
)

# %% [markdown]
# ## `M = 2^-n M0`: a real multiplier in integers
#
# `M` is a small positive real, here about 0.00345. The paper writes it as
# `M = 2^-n M0` with `M0` in `[0.5, 1)` and holds `M0` as a 32-bit fixed-point number,
# `m0 = round(M0 * 2^31)`: an int32 between `2^30` and `2^31`. Multiplying by `M` then
# becomes an integer multiply, keeping the high 32 bits of the 64-bit product, and a
# rounding right shift by `n`. TFLite stores `m0` and `shift = -n`
# (`npquant.quantize_multiplier`).

# %%
M = S_x * S_w / S_y  # float64 from the float32 scales, as TFLite
M0, exponent = math.frexp(M)  # M = M0 * 2^exponent, M0 in [0.5, 1)
n = -exponent
m0, shift = (int(v) for v in nq.quantize_multiplier(M))
print(f"M = {M:.10f} = 2^-{n} * {M0:.10f};  m0 = {m0} = round(M0 * 2^31), shift = {shift}")
assert f"{M:.10f}" == "0.0034484091" and n == 8 and f"{M0:.10f}" == "0.8827927205"
assert m0 == round(M0 * 2**31) == 1895782932 and shift == -n
assert 2**30 <= m0 < 2**31

# %% [markdown]
# Requantization, TFLite's way (gemmlowp's `MultiplyByQuantizedMultiplier`):
#
# 1. `high = round(a * m0 / 2^31)` where `a = acc + q_b`: the saturating rounding
#    doubling high multiply (`SaturatingRoundingDoublingHighMul`, ties toward +inf);
# 2. `round(high / 2^n)`: a rounding right shift (`RoundingDivideByPOT`, ties away
#    from zero);
# 3. add `Z_y`, clamp to `[0, 255]`.
#
# Two roundings: tutorial 5 shows when that differs from rounding `a * M` once.

# %%
a = acc + int(q_b[col])
high = int(nq.saturating_rounding_doubling_high_mul(a, m0))
scaled = int(nq.rounding_divide_by_pot(high, n))
code = min(max(scaled + Z_y, 0), 255)
print(f"a = {a}; high = {high}; high / 2^{n} -> {scaled}; + Z_y -> code {code}")
print(f"real value: a * M = {a * M:.4f}")
assert (a, high, scaled, code) == (47529, 41958, 164, 169)
assert f"{a * M:.4f}" == "163.8994"

# the whole layer: npquant.qnn.qlinear gives the same code for this element
y_q = qlinear(x_q, x_qp, w_q, w_qp, q_b, y_qp, mode="tflite")
print(y_q)
assert int(y_q[row, col]) == code and y_q.tolist() == [[183, 169, 0, 114], [255, 61, 160, 135]]

# %% [markdown]
# Dequantized, code 169 is `S_y (169 - 5) = 1.2848`, and the float layer gives
# `1.2847`: an error of 0.016 of one output step.

# %%
y_float = ex["x_float"] @ ex["w_float"].T + ex["b_float"]
y_deq = S_y * (code - Z_y)
print(
    f"integer layer {y_deq:.4f}, float layer {y_float[row, col]:.4f}, "
    f"error {(y_deq - y_float[row, col]) / S_y:+.3f} LSB"
)
assert f"{y_deq:.4f}" == "1.2848" and f"{y_float[row, col]:.4f}" == "1.2847"
assert f"{(y_deq - y_float[row, col]) / S_y:+.3f}" == "+0.016"

# %% [markdown]
# ## `npquant.explain`: the whole trace
#
# `explain_linear` prints every step above for one output element: step 0 turns the
# floats into codes, steps 1-2 list the terms and both forms of the accumulator, 3 the
# bias, 4 the multiplier in Jacob et al.'s notation and as `m0`, `shift`, 5 each
# rounding of the chosen mode, 6 the zero point and clamp, 7 the error against the
# float layer. (The command line has it too: `npquant explain --all-terms`.)
# Every integer in it is computed by npquant's own functions and checked against
# `qlinear`: a trace cannot disagree with the layer it explains.

# %%
e = explain.explain_linear(mode="tflite", **ex)
print(e.format(all_terms=True))
assert (e.acc, e.bias, e.m0, e.shift, e.code) == (acc, int(q_b[col]), m0, shift, code)
assert e.folded == {"sum_xw": sum_xw, "sum_x": sum_x, "sum_w": sum_w, "total": acc}

# %% [markdown]
# The other requantization modes compute `round(a * M)` differently: PyTorch's fbgemm
# in float32 (`fp32`), ONNX's reference in float64 with the zero point added before
# rounding (`onnx`). For this element they all agree on code 169; tutorial 5 finds
# where they do not.

# %%
codes = {mode: explain.explain_linear(mode=mode, **ex).code for mode in nq.REQUANT_MODES}
print(codes)
assert set(codes.values()) == {169}

# %% [markdown]
# ## Exercise
#
# Take output element `[1, 2]` (input row 1, output channel 2) of the same layer. By
# hand (NumPy on the codes is fine, but no `qlinear` or `explain`): what are
# `a = acc + q_b`, and the output code after TFLite's requantization? Check with
# `exercise_answer()` (not printed unless you call it).


# %%
def exercise_answer():
    """``(acc + bias, code)`` of output element ``[1, 2]`` in mode ``tflite``."""
    t = explain.explain_linear(mode="tflite", **{**ex, "row": 1, "col": 2})
    return t.acc + t.bias, t.code


my_answer = None  # your (a, code)
if my_answer is not None:
    print("right" if tuple(my_answer) == exercise_answer() else "not yet")
