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
# # 7. k-means quantization (weight sharing)
#
# **What you will learn**
#
# - k-means weight sharing (Deep Compression, Han, Mao and Dally, ICLR 2016, section 3):
#   a tensor becomes a small codebook of `2^bits` float centroids and one `bits`-wide
#   index per weight, on the paper's 4x4 example;
# - why k-means fits a bell-shaped weight distribution better than an evenly spaced
#   linear grid;
# - the table of the MIT efficient-ML lab (course 6.5940, Fall 2023, lab 2, k-means part): model
#   accuracy and size with 8-, 4- and 2-bit k-means, before and after k-means
#   quantization-aware training (`npquant.training.kmeans_qat`), here on the bundled
#   digits MLP.
#
# Every number printed is checked by an `assert` beside it (those that depend on
# training with a margin: float rounding may differ on another CPU).

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq
from npquant.app.demo import default_models_dir
from npquant.models.io import load_model
from npquant.training import kmeans_qat
from npquant.training.trainer import digits_data, evaluate

OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")  # a folder for the figures, or None
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## The paper's example
#
# Figure 3 of Deep Compression clusters a 4x4 weight matrix into 4 shared values. Each
# weight keeps only the 2-bit index of its cluster, and the cluster's value (its
# *centroid*) is stored once, in float32.
#
# k-means (Lloyd's algorithm) alternates two steps until nothing moves: assign every
# weight to its nearest centroid, then move each centroid to the mean of its weights.
# Deep Compression starts from centroids spaced evenly over `[min, max]` ("linear"
# initialization), which keeps the rare large weights represented.

# %%
w = np.array(
    [[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12], [-0.91, 1.92, 0.00, -1.03], [1.87, 0.00, 1.53, 1.49]],
    np.float32,
)

# by hand: linear initialization, then Lloyd iterations in float64
c = np.linspace(w.min(), w.max(), 4).astype(np.float64)
for _ in range(10):
    idx = np.argmin(np.abs(w[..., None] - c), axis=-1)
    c = np.array([w[idx == j].mean() for j in range(4)])
print("centroids by hand:", np.round(c, 2))
assert np.round(c, 2).tolist() == [-1.0, 0.0, 1.5, 2.0]

# npquant (keep_zeros=False: see below)
km = nq.kmeans_quantize(w, bits=2, keep_zeros=False)
print("codebook:", np.round(km.codebook, 2), "after", km.n_iter, "iterations")
print("indices:\n", km.indices)
assert np.array_equal(km.indices, idx) and np.allclose(km.codebook, c, atol=1e-6)
assert np.array_equal(nq.reconstruct(km), km.codebook[km.indices])

# %% [markdown]
# The centroids are the paper's `2.00, 1.50, 0.00, -1.00`. Storage: 16 indices of 2
# bits (4 bytes) and 4 float32 centroids (16 bytes), 20 bytes instead of 64: 3.2 times
# smaller, and far more on a real layer, where the codebook is negligible.
#
# `keep_zeros`: a *pruned* tensor (tutorial 8) has many exact zeros that must stay
# exactly zero. With `keep_zeros=True` index 0 is reserved for 0.0 and only `2^bits - 1`
# centroids are fitted; `"auto"`, the default, does so whenever the tensor has an exact
# zero, as this one does, which costs one centroid here:

# %%
auto = nq.kmeans_quantize(w, bits=2)  # keep_zeros="auto": w has exact zeros
print("reserved zero:", auto.reserved_zero, "codebook:", np.round(auto.codebook, 2))
assert auto.reserved_zero and auto.codebook[0] == 0.0
assert [f"{v:.2f}" for v in auto.codebook] == ["0.00", "-1.00", "0.00", "1.79"]
assert 4 * 2 // 8 * 4 + 4 * 4 == 20 and f"{64 / 20:.1f}" == "3.2"

# %% [markdown]
# ## k-means against a linear grid
#
# A linear grid spaces its levels evenly; trained weights are bell-shaped, most of them
# near zero. k-means puts its centroids where the weights are. On the first layer of
# the bundled MLP (8192 weights), both with one set of levels per tensor:

# %%
model = load_model(default_models_dir() / "mlp.npz")
w1 = model[0].weight
sqnr = {}
for bits in (8, 4, 2):
    lin = nq.fake_quantize(w1, nq.fit_qparams(w1, nq.QuantSpec(bits=bits)))
    kmq = nq.reconstruct(nq.kmeans_quantize(w1, bits))
    sqnr[bits] = (nq.quantization_error(w1, lin).sqnr_db, nq.quantization_error(w1, kmq).sqnr_db)
    print(f"{bits} bits: linear {sqnr[bits][0]:5.2f} dB, k-means {sqnr[bits][1]:5.2f} dB")
assert w1.size == 8192
assert {b: (f"{a:.2f}", f"{k:.2f}") for b, (a, k) in sqnr.items()} == {
    8: ("41.39", "44.00"),
    4: ("16.70", "19.78"),
    2: ("3.02", "9.37"),
}
gain = {b: k - a for b, (a, k) in sqnr.items()}
print("k-means gains", {b: f"{g:.1f} dB" for b, g in gain.items()})
assert [f"{gain[b]:.1f}" for b in (8, 4, 2)] == ["2.6", "3.1", "6.3"]

# %% [markdown]
# k-means gains 2.6, 3.1 and 6.3 dB at 8, 4 and 2 bits (6 dB is worth one bit), the most
# where levels are scarcest. The price is a lookup instead of
# an affine map: integer matrix multiply hardware cannot use the indices directly, so
# k-means quantization saves *storage*, and the weights are decoded to float (or to a
# linear grid) for the arithmetic.

# %%
from npquant.app import plot as nqplot  # noqa: E402

km4 = nq.kmeans_quantize(w1, 4)
fig = nqplot.plot_histogram(
    w1,
    nq.fit_qparams(w1, nq.QuantSpec(bits=4)),
    codebook=km4,
    title="fc1 weights: 4-bit linear grid and k-means codebook",
)
assert len([c for c in fig.axes[0].collections if c.get_gid() == "codebook"][0].get_segments()) == 16
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "07_kmeans_codebook.png"))
fig

# %% [markdown]
# ## The MIT lab's table: k-means on a whole model, then QAT
#
# The lab quantizes every weight tensor of a model with k-means at 8, 4 and 2 bits and
# reports accuracy and size; then it fine-tunes the centroids (k-means
# quantization-aware training) to win back what 2 bits lose. `kmeans_qat` does both:
# it replaces each weight tensor by `codebook[indices]`, keeps the indices fixed, and
# trains the centroids, whose gradient is the sum (here: the mean, the stable choice)
# of the gradients of the weights that share them (Deep Compression, eq. 3).
#
# Size of a k-means model: each weight tensor as `bits`-wide indices plus a float32
# codebook of `2^bits` entries; biases stay float32.

# %%
data = digits_data({"input_shape": [64]})


def kmeans_size(m, bits):
    total = 0
    for name, p in m.named_parameters().items():
        if name.endswith(".weight"):
            total += -(-p.size * bits // 8) + 4 * 2**bits
        else:
            total += 4 * p.size
    return total


float_size = sum(4 * p.size for p in model.named_parameters().values())
_, acc_float = evaluate(model, data["x_test"], data["y_test"])
print(f"float32: {float_size} bytes, accuracy {acc_float:.2%}")
table = {}
for bits in (8, 4, 2):
    m = load_model(default_models_dir() / "mlp.npz")  # a fresh copy: kmeans_qat trains in place
    res = kmeans_qat(
        m,
        data["x_train"],
        data["y_train"],
        bits=bits,
        epochs=3,
        lr=1e-3,
        x_val=data["x_test"],
        y_val=data["y_test"],
        progress=False,
        seed=0,
    )
    table[bits] = (kmeans_size(m, bits), res.accuracy_kmeans, res.accuracy)
    distinct = len(np.unique(m[0].weight))
    print(
        f"{bits}-bit k-means: {table[bits][0]:6d} bytes ({float_size / table[bits][0]:4.1f}x), "
        f"accuracy {res.accuracy_kmeans:.2%} before QAT, {res.accuracy:.2%} after 3 epochs "
        f"(fc1 holds {distinct} distinct values)"
    )
    assert distinct <= 2**bits
assert f"{acc_float:.2%}" == "97.11%" and float_size == 68904
assert {b: (s, f"{a:.2%}") for b, (s, a, q) in table.items()} == {
    8: (20904, "97.11%"),
    4: (9512, "97.11%"),
    2: (5112, "94.44%"),
}
# after training: checked with a margin (float rounding may differ on another CPU)
assert all(abs(table[b][2] - want) <= 0.005 for b, want in ((8, 0.9733), (4, 0.9756), (2, 0.9689)))
assert [f"{float_size / table[b][0]:.1f}" for b in (8, 4, 2)] == ["3.3", "7.2", "13.5"]

# %% [markdown]
# As in the lab: 8 and 4 bits lose nothing on their own; 2 bits lose 2.67 points
# (97.11 % to 94.44 %), and three epochs of fine-tuning the centroids bring the model
# back to about 96.9 %, at 13.5 times smaller than float32. Only the centroids moved: every
# weight of `fc1` is still one of its `2^bits` shared values.

# %%
assert f"{100 * (acc_float - table[2][1]):.2f}" == "2.67"

# %% [markdown]
# ## Exercise
#
# Cluster `v = [-1.2, -1.0, -0.1, 0.1, 0.9, 1.1, 2.0, 2.2]` into 4 centroids (2 bits) by
# hand: which centroids do you get? (The linear initialization already puts each pair of
# values in its own cluster.) Check with `exercise_answer()` (not printed unless you
# call it).


# %%
def exercise_answer():
    """The 2-bit k-means codebook of the exercise's values (sorted, float32)."""
    v = np.array([-1.2, -1.0, -0.1, 0.1, 0.9, 1.1, 2.0, 2.2], np.float32)
    return nq.kmeans_quantize(v, 2).codebook.tolist()


my_answer = None  # your four centroids, ascending
if my_answer is not None:
    print("right" if np.allclose(my_answer, exercise_answer(), atol=1e-6) else "not yet")
