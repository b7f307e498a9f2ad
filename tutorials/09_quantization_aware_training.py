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
# # 9. Quantization-aware training (QAT)
#
# **What you will learn**
#
# - *fake quantization*: training in float while every weight and activation is rounded
#   onto its quantization grid, so the network learns to live with the rounding;
# - the *straight-through estimator* (STE): rounding has zero derivative almost
#   everywhere, so the backward pass pretends it is the identity inside the grid;
# - the QAT workflow (as in PyTorch's documentation and Jacob et al. 2018, section 3):
#   `prepare_qat` -> `fit` -> `convert_qat` to an integer-only model;
# - learned ranges: LSQ (Esser et al. 2020) learns the step size, PACT (Choi et al.
#   2018) learns the clipping level of the activations;
# - `npquant.training.qat_results`: float against post-training quantization against
#   QAT, on a setting where PTQ loses 12 points.
#
# The bundled MLP (tutorial 6) is trained in NumPy here, a few epochs at a time.
# Numbers that depend on training are checked with a margin (float rounding can differ
# on another CPU); the others exactly.

# %%
import numpy as np

import npquant as nq
from npquant.app.demo import default_models_dir
from npquant.models.io import load_model
from npquant.training import (
    Adam,
    CosineAnnealingLR,
    Hook,
    convert_qat,
    fit,
    freeze_observers,
    prepare_qat,
    qat_results,
    softmax_cross_entropy,
)
from npquant.training.fake_quant import fake_quantize_with_mask, lsq_backward, pact_backward, ste_backward
from npquant.training.trainer import digits_data, evaluate

# %% [markdown]
# ## Fake quantization and the straight-through estimator
#
# `fake_quantize(x) = S (clamp(round(x / S) + Z, qmin, qmax) - Z)`: a float in, the
# nearest grid value out. Its graph is a staircase: flat almost everywhere, so its true
# gradient is zero and no weight would ever move. The STE replaces it by 1 where the
# code was not clamped (PyTorch's rule: tested on the rounded code) and 0 where it was.
# With 3-bit symmetric codes (`[-4, 3]`) and `S = 0.25`, the grid is `-1.0 ... 0.75`:

# %%
x = np.array([-1.3, -0.26, 0.04, 0.5, 0.74, 1.2], np.float32)
qp = nq.QParams(0.25, 0, nq.QuantSpec(bits=3, symmetric=True))
y, inside = fake_quantize_with_mask(x, qp)
grad_x = ste_backward(np.ones_like(x), inside)  # upstream gradient 1 everywhere
print("x      ", [f"{v:g}" for v in x])
print("fq(x)  ", [f"{v:g}" for v in y])
print("dL/dx  ", [f"{v:g}" for v in grad_x], "(STE, clipped)")
assert y.tolist() == [-1.0, -0.25, 0.0, 0.5, 0.75, 0.75]
assert grad_x.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]

# %% [markdown]
# `-1.3` and `1.2` are outside the grid: they saturate, and no gradient flows through
# them (moving them would not change the output). Everything else passes its gradient
# unchanged, as if rounding were not there.
#
# ## prepare_qat, fit, convert_qat
#
# `prepare_qat` copies a float model and wraps it: an input fake quant, then each linear
# layer as a `QATLinear` whose weight and output are fake-quantized (a ReLU after a
# layer is fused into it, as PyTorch's `fuse_modules` does). Weights are signed
# symmetric, per output channel; activations unsigned, with moving-average min-max
# observers. We take **2-bit weights and 8-bit activations (W2A8)**, where
# post-training quantization hurts.

# %%
data = digits_data({"input_shape": [64]})
model = load_model(default_models_dir() / "mlp.npz")
_, acc_float = evaluate(model, data["x_test"], data["y_test"])

qat = prepare_qat(model, weight_bits=2, act_bits=8)
for layer in qat:
    print(type(layer).__name__, layer.name)
assert [type(ly).__name__ for ly in qat] == ["FakeQuantize", "QATLinear", "QATLinear", "QATLinear"]

# %% [markdown]
# Before any training, one training-mode pass over the calibration images sets the
# observers' ranges: converted as it is, that is post-training quantization.

# %%
ptq = prepare_qat(model, weight_bits=2, act_bits=8)
ptq.train()
ptq(data["x_calibration"])  # observers see the calibration set once
ptq.eval()
acc_ptq = float(np.mean(convert_qat(ptq)(data["x_test"]).argmax(1) == data["y_test"]))
print(f"float {acc_float:.2%}; W2A8 post-training quantization (integer model) {acc_ptq:.2%}")
assert f"{acc_float:.2%}" == "97.11%" and f"{acc_ptq:.2%}" == "84.44%"

# %% [markdown]
# Now train the QAT model from the float weights with `fit` (Adam, 3 epochs, a cosine
# learning-rate schedule). As
# PyTorch's QAT recipe does, the activation ranges are frozen near the end
# (`freeze_observers`, here for the last epoch), so the final epoch trains against the
# ranges the integer model will use. Then `convert_qat` builds the integer-only model:
# its integer weights dequantize exactly to the fake-quantized weights.


# %%
def freeze_last_epoch(state):
    if state.epoch == 3:
        freeze_observers(state.model)


history = fit(
    qat,
    softmax_cross_entropy,
    Adam(qat.named_parameters(), lr=1e-3),
    data["x_train"],
    data["y_train"],
    epochs=3,
    batch_size=32,
    seed=0,
    schedule=CosineAnnealingLR(3),
    hooks=Hook(on_epoch_start=freeze_last_epoch),
    progress=False,
)
integer_model = convert_qat(qat, mode="tflite")
pred_int = integer_model(data["x_test"]).argmax(1)
acc_qat = float(np.mean(pred_int == data["y_test"]))
agree = float(np.mean(pred_int == qat(data["x_test"]).argmax(1)))
print(history.table())
assert len(history) == 3 and history["train_loss"][-1] < history["train_loss"][0]
print(f"W2A8 after QAT (integer model): {acc_qat:.2%}; same prediction as the fake-quantized model: {agree:.2%}")
assert abs(acc_qat - 0.9667) <= 0.005 and agree >= 0.99
w_codes = integer_model.layers[0].w_q
print("fc1's integer weight codes:", np.unique(w_codes).tolist())
assert np.unique(w_codes).tolist() == [-2, -1, 0, 1]

# %% [markdown]
# Three epochs win back almost all of the 12.67 points PTQ lost (84.44 % -> about
# 96.7 %, float 97.11 %), and the integer model agrees with the fake-quantized one on
# (nearly) every test image: the simulation was faithful. Every weight of `fc1` is
# one of four codes.

# %%
assert f"{100 * (acc_float - acc_ptq):.2f}" == "12.67"

# %% [markdown]
# ## Learned ranges: LSQ and PACT
#
# Min-max ranges follow the data; they are not trained for the loss. **LSQ** makes the
# step size `S` a parameter. Its gradient, per element, with `q = round(x / S)`:
# `dL/dS = dL/dy * (q - x / S)` inside the grid, and `dL/dy * qmin` or `dL/dy * qmax`
# where `x` saturates (times a gradient scale `1 / sqrt(N qmax)` for stability). A value
# that rounds up pulls `S` one way, one that rounds down the other, a saturated one
# pushes the range out.

# %%
spec4 = nq.QuantSpec(bits=4, symmetric=True)  # codes -8..7
xs = np.array([0.34, 1.2], np.float32)
_, d_scale, _ = lsq_backward(np.ones(2, np.float32), xs, np.float32(0.1), 0, spec4)
print(f"x / S = {[f'{v:.2f}' for v in xs / np.float32(0.1)]}: dL/dS = (3 - 3.4) + 7 = {float(d_scale):.4f}")
assert abs(float(d_scale) - 6.6) < 1e-5

# %% [markdown]
# **PACT** replaces a ReLU by `clip(x, 0, alpha)` followed by fake quantization on
# `[0, alpha]`, and learns `alpha`: its gradient is the sum of `dL/dy` over the values
# at or above `alpha` (they are clipped, so only `alpha` moves them).

# %%
xa = np.array([-0.5, 0.3, 2.0, 4.0], np.float32)
pact_spec = nq.QuantSpec(bits=4, signed=False)
dx, d_alpha = pact_backward(np.ones(4, np.float32), xa, 1.5, pact_spec)
print("dL/dx", dx.tolist(), " dL/dalpha", float(d_alpha))
assert dx.tolist() == [0.0, 1.0, 0.0, 0.0] and float(d_alpha) == 2.0

# %% [markdown]
# ## The comparison table
#
# `npquant.training.qat_results` packages the recipe above (Adam, cosine learning rate,
# batch norm then observers frozen) as `qat_experiment`, one row per model, bit
# setting and method. Three epochs per row, W2A8 on the MLP (its `minmax` row is
# exactly the run above):

# %%
rows = [qat_results.QATResult(model="mlp", weight_bits=None, act_bits=None, method="float", accuracy=acc_float)]
for method in ("ptq", "minmax", "lsq", "pact"):
    rows.append(qat_results.qat_experiment("mlp", 2, 8, method, epochs=3, model=model, data=data))
print(qat_results.format_results(rows))
acc = {r.method: r.accuracy for r in rows}
assert f"{acc['ptq']:.2%}" == "84.44%" and acc["ptq"] == acc_ptq
assert acc["minmax"] == acc_qat  # the same recipe as our run above, the same seed: the same model
assert all(abs(acc[m] - acc_float) < 0.015 for m in ("minmax", "lsq", "pact"))
assert all(r.agreement >= 0.99 for r in rows[2:])
qat_accs = [acc[m] for m in ("minmax", "lsq", "pact")]
assert max(qat_accs) - min(qat_accs) <= 0.01

# %% [markdown]
# Every QAT method lands within about a point of float, from 84.44 % after PTQ, and the
# three range methods end close to each other on this small model. `npquant qat` prints
# the full table for the three bundled models, down to W4A4.
#
# ## Exercise
#
# LSQ's scale gradient by hand: `x = [0.26, -0.9, 0.5]`, `S = 0.1`, 4-bit signed
# symmetric codes (`[-8, 7]`), `dL/dy = 1` for every element and no gradient scale.
# What is `dL/dS`? (Per element: `round(x / S) - x / S` inside the grid, `qmin` or
# `qmax` where the code saturates.) Check with `exercise_answer()` (not printed unless you
# call it).


# %%
def exercise_answer():
    """LSQ's ``dL/dS`` for the exercise (float)."""
    xe = np.array([0.26, -0.9, 0.5], np.float32)
    _, ds, _ = lsq_backward(np.ones(3, np.float32), xe, np.float32(0.1), 0, spec4)
    return float(ds)


my_answer = None  # your dL/dS
if my_answer is not None:
    print("right" if abs(my_answer - exercise_answer()) < 1e-4 else "not yet")
