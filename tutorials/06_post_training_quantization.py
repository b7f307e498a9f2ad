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
# # 6. Post-training quantization of a model
#
# **What you will learn**
#
# - the three post-training recipes of PyTorch's quantization documentation, on a
#   bundled reference model (an MLP trained in PyTorch on scikit-learn's digits):
#   - **static**: weights *and* activations quantized, activation ranges calibrated
#     once on sample data, integer-only inference (`npquant.models.convert.quantize_model`);
#   - **dynamic**: int8 weights, activations quantized per batch at run time from
#     their own min-max, float between layers (`dynamic_quantize`);
#   - **weight-only**: weights stored in few bits, dequantized to float for the
#     computation (`weight_only_quantize`), the usual choice for LLM weights;
# - what an integer model is made of, its size, its accuracy, and how it compares with
#   its float simulation;
# - that 8 bits are nearly free on an easy model, and where fewer bits hurt.
#
# Every number printed is checked by an `assert` beside it.

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq
from npquant.app.demo import default_models_dir
from npquant.models import cases, convert
from npquant.models.io import load_model
from npquant.training.trainer import digits_data

OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")  # a folder for the figures, or None
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## The float model
#
# `npquant/data/mlp.npz` holds the float weights (trained in PyTorch) and the
# architecture `fc1 (64 -> 128) -> ReLU -> fc2 (128 -> 64) -> ReLU -> fc3 (64 -> 10)`.
# `digits_data` gives the fixed split it was trained on: 1078 training, 269
# calibration and 450 test images of 8x8 pixels.

# %%
model = load_model(default_models_dir() / "mlp.npz")  # npquant.models.nn.Sequential, float32
data = digits_data({"input_shape": [64]})
x, y, calib = data["x_test"], data["y_test"], data["x_calibration"]
pred_float = model(x).argmax(1)
acc_float = float(np.mean(pred_float == y))
size_float = convert.float_size_bytes(model)
print(f"{len(x)} test images, {len(calib)} calibration images")
print(f"float32: {size_float} bytes, test accuracy {acc_float:.2%}")
assert (len(data["x_train"]), len(calib), len(x)) == (1078, 269, 450)
assert size_float == 68904 and f"{acc_float:.2%}" == "97.11%"

rows = [("float32", size_float, acc_float, 1.0)]


def report(label, size, pred):
    acc, agree = float(np.mean(pred == y)), float(np.mean(pred == pred_float))
    rows.append((label, size, acc, agree))
    print(f"{label:28s} {size:6d} bytes  accuracy {acc:.2%}  same prediction as float {agree:.2%}")
    return acc


# %% [markdown]
# ## Static quantization
#
# `quantize_model` does what a converter does: it runs the float model on the
# calibration images with an observer at the input and after each linear layer (after
# its ReLU, which is fused into the layer as a clamp), quantizes the weights to int8
# symmetric codes in `[-127, 127]` (per tensor or per output channel), the biases to
# int32 at `S_x S_w`, and builds an `IntegerModel`: integer codes in, integer codes
# out, no float arithmetic in between (tutorial 4's arithmetic in every layer).

# %%
static = {}
for per_channel in (False, True):
    q = convert.quantize_model(model, calib, mode="tflite", observer="minmax", per_channel=per_channel)
    static[per_channel] = q
    label = "static int8 " + ("per-channel" if per_channel else "per-tensor")
    report(label, q.size_bytes(), q(x).argmax(1))
assert [f"{r[3]:.2%}" for r in rows[1:]] == ["99.78%", "100.00%"]
assert [f"{r[2]:.2%}" for r in rows[1:]] == ["96.89%", "97.11%"]
assert [r[1] for r in rows[1:]] == [17847, 18842]

# %% [markdown]
# Inside the integer model: the input's qparams, then one `QLinear` per layer holding
# int8 weight codes, int32 biases and its output qparams. `run` maps input codes to
# logit codes; calling the model quantizes the float input first and dequantizes the
# logits at the end.

# %%
q = static[True]
print("input:", f"S = {float(q.input_qp.scale):.6f}, Z = {int(q.input_qp.zero_point)}")
for layer in q.layers:
    print(
        f"{type(layer).__name__}: weights {layer.w_q.dtype} {layer.w_q.shape}, bias {layer.bias_q.dtype}, "
        f"output S = {float(layer.y_qp.scale):.5f}, Z = {int(layer.y_qp.zero_point)}, "
        f"clamp {layer.out_range}"
    )
codes = q.run(q.quantize_input(x))
print("logit codes of the first image:", codes[0].tolist())
assert codes[0].tolist() == [51, 214, 109, 129, 135, 97, 76, 105, 158, 145]
assert [f"{float(ly.y_qp.scale):.5f}" for ly in q.layers] == ["0.01195", "0.04067", "0.19137"]
assert [int(ly.y_qp.zero_point) for ly in q.layers] == [0, 0, 152]
assert [ly.out_range for ly in q.layers] == [(0, 255)] * 3
assert codes.dtype == np.uint8 and np.array_equal(nq.dequantize(codes, q.output_qp), q(x))
assert int(q.input_qp.zero_point) == 0 and q.input_qp.scale == np.float32(1) / np.float32(255)
assert [ly.w_q.dtype for ly in q.layers] == [np.int8] * 3

# %% [markdown]
# The input range is `[0, 1]` (pixels `k / 16`), so `S = 1 / 255`, `Z = 0`. The
# outputs of `fc1` and `fc2` follow a ReLU: their ranges start at 0, so their zero
# point is 0, and the fused ReLU is the clamp `[Z, 255] = [0, 255]`. The logits of
# `fc3` are signed, hence `Z = 152`: uint8 code 152 is the real 0.
#
# `float_twin` runs the same model in float with every tensor fake-quantized (the
# simulation that QAT trains, tutorial 9). It differs from the integer model only by the
# rounding inside requantization, so they nearly always predict alike:

# %%
agree_twin = float(np.mean(q.float_twin(x).argmax(1) == codes.argmax(1)))
print(f"integer model and its float simulation agree on {agree_twin:.2%} of the test images")
assert agree_twin >= 0.99

# %% [markdown]
# ## Dynamic quantization
#
# PyTorch's `quantize_dynamic`: weights are stored as int8, and each layer quantizes
# *its input batch* with that batch's own min-max at run time, accumulates in int32 and
# returns float32. No calibration; the ranges always fit the data, at the cost of
# computing them on every call.

# %%
dyn = convert.dynamic_quantize(model)
report("dynamic int8 per-channel", convert.dynamic_size_bytes(dyn), dyn(x).argmax(1))
assert f"{rows[-1][2]:.2%}" == "96.89%" and rows[-1][1] == 18640 and f"{rows[-1][3]:.2%}" == "99.78%"

# %% [markdown]
# ## Weight-only quantization
#
# Weights quantized per output channel to `bits`, packed, and dequantized to float32 for
# the computation; activations stay float. It saves memory (and memory bandwidth, which
# is what limits LLM inference), not arithmetic.

# %%
for bits in (8, 4, 2):
    wo, size = convert.weight_only_quantize(model, bits)
    report(f"weight-only int{bits} per-channel", size, wo(x).argmax(1))
assert [f"{r[2]:.2%}" for r in rows[-3:]] == ["97.11%", "96.67%", "84.89%"]
assert [r[1] for r in rows[-3:]] == [18640, 10128, 5872]
assert [f"{r[3]:.2%}" for r in rows[-3:]] == ["100.00%", "99.56%", "87.33%"]

# %% [markdown]
# On this easy model 8 bits lose nothing or almost nothing (96.89 % to 97.11 %, from
# 97.11 % in float) at about a quarter of the size (18842 of 68904 bytes), and 4-bit
# weights lose 0.44 points.
# 2-bit weights cost 12 points: 4 levels per channel are too few without retraining
# (tutorials 7 and 9 win much of it back).
#
# A trade-off plot of size against accuracy (the 8-bit recipes all sit near 3.7x and
# 97 %; one of them stands for all):

# %%
from npquant.app import plot as nqplot  # noqa: E402

short = {
    "static int8 per-channel": "int8 static",
    "weight-only int4 per-channel": "int4 weights",
    "weight-only int2 per-channel": "int2 weights",
}
points = [(size_float / size, acc, short[label]) for label, size, acc, _ in rows if label in short]
fig = nqplot.plot_compression_tradeoff(points, float_accuracy=acc_float, title="mlp on digits: PTQ")
offsets = [c for c in fig.axes[0].collections if c.get_gid() == "tradeoff"][0].get_offsets()
assert np.allclose(offsets[:, 0], [p[0] for p in points])
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "06_ptq_tradeoff.png"))
fig

# %% [markdown]
# ## Where the choices matter
#
# The digits MLP is easy. `npquant.models.cases.outlier_mlp` (tutorial 3) has an outlier
# channel in `fc1`'s weights and heavy-tailed inputs. `cases.ptq` quantizes it with
# `quantize_model` and reports the integer model's accuracy (`W8A4`: 8-bit weights,
# 4-bit hidden activation):

# %%
case = cases.outlier_mlp(seed=0)
acc_case = case.accuracy()
print(f"float: {acc_case:.2%}")
ptq_rows = {}
for wb, ab, pc in ((8, 8, True), (4, 8, False), (4, 8, True), (4, 4, True)):
    r = cases.ptq(case, weight_bits=wb, act_bits=ab, per_channel=pc)
    key = f"W{wb}A{ab} " + ("per-channel" if pc else "per-tensor")
    ptq_rows[key] = r.accuracy
    print(f"{key:22s} accuracy {r.accuracy:.2%}  ({100 * (r.accuracy - acc_case):+.2f} points)")
assert f"{acc_case:.2%}" == "94.05%"
assert [f"{100 * (v - acc_case):+.2f}" for v in ptq_rows.values()] == ["-0.30", "-72.55", "-0.90", "-38.60"]
assert [f"{v:.2%}" for v in ptq_rows.values()] == ["93.75%", "21.50%", "93.15%", "55.45%"]

# %% [markdown]
# With 4-bit weights, one scale per tensor is set by the outlier row and the other rows
# round mostly to zero: 21.50 %, near chance (12.5 %). One scale per output channel keeps
# 93.15 %. And 4-bit activations with min-max ranges lose 38.6 points (tutorial 3 shows
# how the MSE and entropy observers win most of that back).

# %%
assert f"{100 * (ptq_rows['W4A4 per-channel'] - acc_case):.1f}" == "-38.6"

# %% [markdown]
# ## Exercise
#
# Per-group scales (tutorial 1) cost storage. How many bytes does
# `weight_only_quantize(model, 4, group_size=16)` report for the MLP? Work it out from
# the layer shapes: 4-bit codes packed, one float32 scale per group of 16 inputs of each
# output row (symmetric: no zero points), and float32 biases. Check with
# `exercise_answer()` (not printed unless you call it).


# %%
def exercise_answer():
    """The weight storage in bytes of the 4-bit weight-only MLP with groups of 16."""
    return convert.weight_only_quantize(model, 4, group_size=16)[1]


my_answer = None  # your number of bytes
if my_answer is not None:
    print("right" if my_answer == exercise_answer() else "not yet")
