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
# # 8. Deep Compression: prune, retrain, share, Huffman-code
#
# **What you will learn**, following "Deep Compression: Compressing Deep Neural Networks
# with Pruning, Trained Quantization and Huffman Coding" (Han, Mao and Dally, ICLR 2016),
# on the bundled LeNet-300-100 (here with 64 inputs: 8x8 digits):
#
# - magnitude pruning at the paper's per-layer sparsities, and why retraining is needed
#   (`npquant.training.pruning.prune_and_retrain`);
# - k-means weight sharing of the survivors, fine-tuned (`npquant.training.kmeans_qat`,
#   tutorial 7);
# - relative indexing of the non-zero positions, with filler entries (the paper's
#   Fig. 2), and Huffman coding of indices and gaps;
# - the compressed file (`npquant.compression.pipeline`) and its size after each stage
#   (`stage_sizes`): the paper's per-stage table.
#
# Every number printed is checked by an `assert` beside it: exactly, or with a margin or a
# bound where it depends on training (float rounding may differ on another CPU). Nothing
# is written to disk unless `NPQUANT_TUTORIAL_OUTPUT` names a folder.

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq
from npquant.app.demo import default_models_dir
from npquant.compression import huffman
from npquant.compression import pipeline as npc
from npquant.models.io import load_model
from npquant.training import CosineAnnealingLR, kmeans_qat, prune_and_retrain, prune_model
from npquant.training.trainer import digits_data, evaluate

OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")  # a folder for the file and figures, or None
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## The model
#
# LeNet-300-100 is three fully connected layers, `64 -> 300 -> 100 -> 10` here.

# %%
data = digits_data({"input_shape": [64]})
model = load_model(default_models_dir() / "lenet_300_100.npz")
params = model.named_parameters()
shapes = {n: p.shape for n, p in params.items() if n.endswith(".weight")}
n_params = sum(p.size for p in params.values())
_, acc_float = evaluate(model, data["x_test"], data["y_test"])
print(shapes, f"{n_params} parameters, {4 * n_params} bytes as float32; test accuracy {acc_float:.2%}")
assert shapes == {"fc1.weight": (300, 64), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}
assert n_params == 50610 and 4 * n_params == 202440 and f"{acc_float:.2%}" == "97.78%"

# %% [markdown]
# ## Pruning, and why retraining matters
#
# Magnitude pruning sets the smallest weights to zero. The paper prunes LeNet-300-100's
# layers by 92 %, 91 % and 74 %. `nq.magnitude_mask` keeps the largest `|w|` of one
# tensor; `prune_model` does it for the model in place. In one shot, without retraining:

# %%
sparsity = {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}

w3 = params["fc3.weight"]
mask3 = nq.magnitude_mask(w3, sparsity=0.74)
threshold = np.sort(np.abs(w3).ravel())[round(0.74 * w3.size)]
assert np.array_equal(mask3, np.abs(w3) >= threshold)  # keep the largest 26 %
print(f"fc3 keeps {mask3.sum()} of {w3.size} weights, those with |w| >= {threshold:.4f}")
assert mask3.sum() == 260

one_shot = load_model(default_models_dir() / "lenet_300_100.npz")
prune_model(one_shot, sparsity)
_, acc_one_shot = evaluate(one_shot, data["x_test"], data["y_test"])
print(f"pruned in one shot, no retraining: {acc_one_shot:.2%}")
assert f"{acc_one_shot:.2%}" == "67.78%"

# %% [markdown]
# 30 points lost. The paper retrains the surviving weights with the pruned ones held at
# zero, pruning in several steps with many epochs each (`prune_and_retrain`'s docstring
# gives such a run that recovers float accuracy). A short run for this tutorial: one
# step, six epochs of Adam. `prune_and_retrain` masks the gradients and the
# optimizer state, so pruned weights stay exactly `+0.0`.

# %%
result = prune_and_retrain(
    model,
    data["x_train"],
    data["y_train"],
    sparsity=sparsity,
    steps=1,
    epochs_per_step=6,
    batch_size=64,
    lr=2e-3,
    lr_schedule=CosineAnnealingLR(6),
    x_val=data["x_test"],
    y_val=data["y_test"],
    progress=False,
    seed=0,
)
print(result.table())
acc_pruned = result.history[-1]["accuracy"]
density = {n: float(np.mean(params[n] != 0)) for n in sparsity}
print("kept:", {n: f"{d:.0%}" for n, d in density.items()})
assert abs(acc_pruned - 0.9622) <= 0.005  # after training: a margin for float rounding
assert f"{result.history[-1]['sparsity']:.2%}" == "91.04%"
assert {n: f"{d:.0%}" for n, d in density.items()} == {"fc1.weight": "8%", "fc2.weight": "9%", "fc3.weight": "26%"}
assert all(np.all(params[n][~result.masks[n]] == 0) for n in sparsity)

# %% [markdown]
# ## Weight sharing
#
# Next, each pruned tensor gets a k-means codebook of 32 centroids (5 bits, the paper's
# choice for fully connected layers). The zero is reserved (index 0 = exact 0.0, since the
# tensors have exact zeros) and the other 31 centroids are fitted to the survivors and
# fine-tuned for one epoch (tutorial 7).

# %%
shared = kmeans_qat(
    model,
    data["x_train"],
    data["y_train"],
    bits=5,
    epochs=1,
    batch_size=64,
    x_val=data["x_test"],
    y_val=data["y_test"],
    progress=False,
    seed=0,
)
acc_shared = shared.accuracy
distinct = {n: len(np.unique(params[n])) for n in sparsity}
print(f"after k-means: {shared.accuracy_kmeans:.2%}, after fine-tuning: {acc_shared:.2%}")
print("distinct values per tensor (0.0 included):", distinct)
assert all(shared.reserved_zero.values()) and all(d <= 32 for d in distinct.values())
assert abs(shared.accuracy_kmeans - 0.9622) <= 0.005 and abs(acc_shared - 0.9622) <= 0.005
assert all(np.all(params[n][~result.masks[n]] == 0) for n in sparsity)  # still pruned

# %% [markdown]
# ## Relative indexing
#
# A sparse tensor stores its non-zeros with the *gap* from the previous one, in
# `index_bits` bits (the paper: 5 for fully connected layers, 8 for conv). A gap too
# large for the bits is bridged by a *filler* entry of value zero. With 3 bits (gaps up
# to 7), non-zeros at positions 1, 4 and 15 of a 16-vector are stored as the gaps
# `[1, 3, 7, 4]`, where the third entry is a filler at position 11:

# %%
v = np.zeros(16, np.float32)
v[[1, 4, 15]] = [3.4, 0.9, 1.7]
rs = nq.encode_relative(v, 3)
print("gaps", rs.gaps.tolist(), "values", rs.values.tolist(), "fillers", rs.n_fillers)
assert rs.gaps.tolist() == [1, 3, 7, 4] and rs.n_fillers == 1
assert np.array_equal(nq.decode_relative(rs), v)

rs1 = nq.encode_relative(shared.indices["fc1.weight"], 5)  # k-means indices, 0 = pruned
nnz1 = int(np.count_nonzero(params["fc1.weight"]))
print(f"fc1: {nnz1} non-zeros stored as {rs1.n_entries} entries ({rs1.n_fillers} fillers) of 5 + 5 bits")
assert rs1.n_entries == nnz1 + rs1.n_fillers and (nnz1, rs1.n_fillers) == (1536, 153)

# %% [markdown]
# ## Huffman coding
#
# The k-means indices and the gaps are far from uniform: a few centroids hold most of
# the weights. A Huffman code gives frequent symbols short codes. For `fc1`'s indices:

# %%
symbols = rs1.values.astype(np.int64)
code = huffman.HuffmanCode.from_data(symbols)
h_bits = huffman.bits_per_symbol(code, symbols)
ent = huffman.entropy_bits(symbols)
print(f"fixed 5 bits per index; Huffman {h_bits:.3f} bits; entropy (the bound) {ent:.3f} bits")
assert ent <= h_bits < ent + 1 and h_bits < 5
stream, nbits = huffman.huffman_encode(symbols, code)
assert np.array_equal(huffman.huffman_decode(stream, code, symbols.size, nbits=nbits), symbols)

# %% [markdown]
# ## The file and the per-stage sizes
#
# `npquant.compression.pipeline.compress` builds the whole file from a state dict: the tensors are
# already pruned and shared, so we give each weight tensor its 5-bit codebook and 5-bit
# gaps and no further pruning (`LayerConfig(bits=5, index_bits=5)`); the k-means it runs
# finds the 31 shared values exactly. Biases are stored exactly. `stage_sizes` gives the
# paper's table: the bytes after pruning (each entry a float32 and its gap), after
# quantization (each entry a 5-bit index and its gap, plus the codebook), and after
# Huffman coding, which is the real file.

# %%
state = model.state_dict()
configs = {n: npc.LayerConfig(bits=5, index_bits=5) for n in sparsity}
compressed = npc.compress(state, configs)
sizes = npc.stage_sizes(compressed)
for stage, total, ratio, weights, w_ratio in sizes.rows():
    print(f"{stage:26s} {total:7d} bytes ({ratio:5.1f}x)   weights alone {weights:7d} bytes ({w_ratio:5.1f}x)")
rows = sizes.rows()
assert rows[0][1] == 202440 and rows[0][3] == 4 * sum(p.size for n, p in params.items() if n in sparsity)
assert rows[1][1] > rows[2][1] > rows[3][1]  # every stage shrinks the model
for n in sparsity:  # pruned: each entry a float32 and a 5-bit gap
    entries = next(r.entries for r in compressed.reports if r.name == n)
    assert next(row for row in sizes.layers if row[0] == n)[2] == -(-entries * (32 + 5) // 8)
assert [f"{rows[k][2]:.1f}" for k in (1, 2)] == ["8.2", "24.6"]  # fixed by the pruning masks
assert 25 < rows[3][2] < 40  # the file: about 30 times smaller

file_bytes = compressed.to_bytes()
assert len(file_bytes) == sizes.huffman
rebuilt = npc.read_compressed(file_bytes)
assert all(np.array_equal(rebuilt[k], state[k]) for k in state)  # every weight, bit for bit
print(f"the file: {len(file_bytes)} bytes, read back bit for bit")
if OUT:
    npc.write_compressed(compressed, os.path.join(OUT, "08_lenet_300_100.npqz"))

# %% [markdown]
# The rebuilt weights are the model's weights bit for bit, so the decompressed model has
# the accuracy measured above. Pruning gives the first factor (about 8x here), weight
# sharing the second (32-bit values become 5-bit indices), Huffman coding the last.
# The paper reports 40x for LeNet-300-100 on MNIST (784 inputs, more weights to prune);
# the 64-input model here has relatively more of its size in biases.

# %%
from npquant.app import plot as nqplot  # noqa: E402

points = [(rows[1][2], acc_pruned, "pruned"), (rows[2][2], acc_shared, "k-means"), (rows[3][2], acc_shared, "file")]
fig = nqplot.plot_compression_tradeoff(points, float_accuracy=acc_float, title="Deep Compression of LeNet-300-100")
assert len(fig.axes[0].texts) == 3
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "08_tradeoff.png"))
fig

# %% [markdown]
# ## Exercise
#
# A row of 20 weights has non-zeros at positions 2, 3, 12 and 19. Store it with 3-bit
# relative indices (gaps up to 7, filler entries where a gap is larger). Which gaps are
# stored, and how many fillers? Check with `exercise_answer()` (not printed unless you
# call it).


# %%
def exercise_answer():
    """``(gaps, n_fillers)`` of the exercise's row at 3 index bits."""
    row_ = np.zeros(20, np.float32)
    row_[[2, 3, 12, 19]] = 1.0
    r = nq.encode_relative(row_, 3)
    return r.gaps.tolist(), r.n_fillers


my_answer = None  # your ([gap, ...], n_fillers)
if my_answer is not None:
    print("right" if (list(my_answer[0]), my_answer[1]) == exercise_answer() else "not yet")
