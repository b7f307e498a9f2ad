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
# # 5. Where production stacks disagree
#
# **What you will learn**
#
# - the rounding modes and which stack uses which: a value halfway between two codes
#   (a *tie*) gives different codes in different stacks;
# - requantization (`round(acc * M)`, tutorial 4) in four stacks: TFLite's fixed point
#   with two roundings, its single-rounding build, PyTorch's fbgemm in float32, ONNX's
#   reference in float64; and *double rounding*, which changes codes that are not ties;
# - int16 pair saturation: without AVX-512 VNNI, PyTorch's fbgemm and onnxruntime's
#   MLAS add pairs of byte products in a saturating int16, so their int32 accumulator is
#   not the exact sum; with the exact integers, and why PyTorch uses 7-bit activations
#   (`reduce_range`).
#
# A golden model for hardware must name the stack it matches; npquant makes each choice
# a named parameter. Every number printed is checked by an `assert` beside it.

# %%
# %matplotlib inline
import os

import numpy as np

import npquant as nq
from npquant.qnn import check_int16_pairs, host_path, int16_pair_accumulate, linear_accumulate, qlinear

OUT = os.environ.get("NPQUANT_TUTORIAL_OUTPUT")  # a folder for the figures, or None
if OUT:
    os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## Rounding ties
#
# `round(2.5)` is 2 or 3 depending on whom you ask. npquant names five modes:
# `half_even` (banker's: NumPy's `rint`, PyTorch, ONNX), `half_away` (from zero: C's
# `round`, TFLite's quantizer), `half_up` (toward +inf: gemmlowp's high multiply),
# `floor`, and `stochastic` (seeded).

# %%
ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)
table = {
    mode: nq.round_values(ties, mode).astype(int).tolist() for mode in ("half_even", "half_away", "half_up", "floor")
}
print("value      ", ties.tolist())
for mode, row in table.items():
    print(f"{mode:11s}", row)
assert table == {
    "half_even": [0, 2, 2, 0, -2, -2],
    "half_away": [1, 2, 3, -1, -2, -3],
    "half_up": [1, 2, 3, 0, -1, -2],
    "floor": [0, 1, 2, -1, -2, -3],
}

# The same tie inside quantize: x = 2.5 S lands between codes 2 and 3.
S = 0.1
x = np.array([2.5 * S], np.float32)
codes = {
    mode: int(nq.quantize(x, nq.QParams(S, 0, nq.QuantSpec(rounding=mode)))[0]) for mode in ("half_even", "half_away")
}
print("x = 0.25, S = 0.1:", codes)
assert codes == {"half_even": 2, "half_away": 3}

# %% [markdown]
# (`0.25 / 0.1` happens to be exactly `2.5` in float32. Float arithmetic decides whether
# a decimal tie is a tie at all, which is why npquant also names the float32 arithmetic
# of `quantize`, its `method`, after the stacks that use each.)
#
# ## Requantization: four stacks, four roundings
#
# An integer layer turns its int32 accumulator into a code with `round(acc * M) + Z_y`.
# The stacks (`npquant.REQUANT_MODES`):
#
# | mode | how `round(acc * M)` is computed |
# |---|---|
# | `tflite` | `high = round(acc * m0 / 2^31)` (ties up), then `round(high / 2^n)` (ties away): two roundings |
# | `tflite_single` | `round(acc * m0 / 2^(31 + n))` once, ties up (TFLite built with `TFLITE_SINGLE_ROUNDING`) |
# | `fp32` | `rint(float32(acc) * float32(M))`, ties to even (PyTorch's fbgemm) |
# | `onnx` | `rint(float64(acc) * float64(float32(M)) + Z_y)`, ties to even (ONNX reference) |
#
# With `M = 0.5` every odd accumulator is a tie, and the tie rules show:

# %%
acc = np.arange(-4, 5)
print("acc            ", acc.tolist())
half = {}
for mode in nq.REQUANT_MODES:
    half[mode] = nq.requantize(acc, 0.5, 0, -128, 127, mode=mode).tolist()
    print(f"{mode:15s}", half[mode])
assert half["tflite"] == half["tflite_single"] == [-2, -1, -1, 0, 0, 1, 1, 2, 2]
assert half["fp32"] == half["onnx"] == [-2, -2, -1, 0, 0, 0, 1, 2, 2]

# %% [markdown]
# `acc = 1`: `0.5` goes up to 1 in TFLite (ties toward +inf) and to 0 with half to
# even; `acc = -3`: `-1.5` goes up to -1 in TFLite and to -2 with half to even.
#
# ## Double rounding
#
# With `M = 0.25`, TFLite holds `M = 2^-1 * 0.5`: `m0 = 2^30`, `n = 1`. For `acc = 1`
# the exact product is `0.25`, which any single rounding sends to 0. TFLite's first
# rounding computes `high = round(1 * 2^30 / 2^31) = round(0.5) = 1`, and the second
# `round(1 / 2^1) = round(0.5) = 1`: the code is 1. The first rounding *created* a tie.

# %%
m0, shift = (int(v) for v in nq.quantize_multiplier(0.25))
high = int(nq.saturating_rounding_doubling_high_mul(1, m0))
print(
    f"m0 = {m0} = 2^30, shift = {shift}; high = {high}; "
    f"rounding shift -> {int(nq.rounding_divide_by_pot(high, -shift))}"
)
assert m0 == 2**30 and shift == -1 and high == 1 and int(nq.rounding_divide_by_pot(high, 1)) == 1
quarter = {mode: nq.requantize(acc, 0.25, 0, -128, 127, mode=mode).tolist() for mode in nq.REQUANT_MODES}
print("acc            ", acc.tolist())
for mode, row in quarter.items():
    print(f"{mode:15s}", row)
assert quarter["tflite"] == [-1, -1, -1, 0, 0, 1, 1, 1, 1]
assert quarter["tflite_single"] == [-1, -1, 0, 0, 0, 0, 1, 1, 1]

# %% [markdown]
# Double rounding also changes codes where the exact value is no tie at all. With
# `M = 0.3` (`m0 = 1288490189`, `n = 1`) and `acc = -421`, the exact value is `-126.3`,
# clearly nearer -126; but `high = round(-421 * m0 / 2^31) = -253`, and `-253 / 2 =
# -126.5` is a tie that rounds away from zero, to -127. `npquant.requantize_ties` lists
# every accumulator in a range where the modes disagree:

# %%
t = nq.requantize_ties(0.3, acc_min=-1000, acc_max=1000)
i = int(np.nonzero(t["acc"] == -421)[0][0])
m0_3, shift_3 = (int(v) for v in nq.quantize_multiplier(0.3))
high_3 = int(nq.saturating_rounding_doubling_high_mul(-421, m0_3))
print(f"{len(t['acc'])} of 2001 accumulators in [-1000, 1000] get a mode-dependent code")
print(
    f"acc = -421: exact {t['exact'][i]:.1f}, high = {high_3}; codes",
    {mode: int(t[mode][i]) for mode in nq.REQUANT_MODES},
)
assert (m0_3, shift_3, high_3) == (1288490189, -1, -253) and f"{t['exact'][i]:.1f}" == "-126.3"
assert {mode: int(t[mode][i]) for mode in nq.REQUANT_MODES} == {
    "tflite": -127,
    "tflite_single": -126,
    "fp32": -126,
    "onnx": -126,
}
assert len(t["acc"]) == 196
print(f"all of them within [{t['acc'].min()}, {t['acc'].max()}]: beyond, the int8 clamp hides the difference")
assert (int(t["acc"].min()), int(t["acc"].max())) == (-421, 421)

# %% [markdown]
# 196 of 2001 accumulators, about one in ten (of those the clamp to `[-128, 127]`
# leaves visible). A hardware engineer matching TFLite must
# implement both roundings exactly as gemmlowp does. `npquant.app.plot.plot_tie_map` maps
# the disagreements over accumulators and several multipliers:

# %%
from npquant.app import plot as nqplot  # noqa: E402

tm = nqplot.tie_map((0.5, 0.25, 0.3), -32, 32)
fig = nqplot.plot_tie_map((0.5, 0.25, 0.3), -32, 32)
assert np.array_equal(fig.axes[0].images[0].get_array(), tm.pattern)
counts = (tm.pattern > 0).sum(axis=1).tolist()
print("disagreements in [-32, 32] for M = 0.5, 0.25, 0.3:", counts)
assert counts == [16, 20, 16]
if OUT:
    nqplot.save_figure(fig, os.path.join(OUT, "05_tie_map.png"))
fig

# %% [markdown]
# ## int16 pair saturation
#
# An x86 CPU without AVX-512 VNNI has no instruction that multiplies bytes straight
# into int32 sums. PyTorch's fbgemm and onnxruntime's MLAS use `vpmaddubsw`: it
# multiplies uint8 activation codes by int8 weight codes and adds *adjacent pairs* of
# products into an int16 that **saturates** at 32767. A pair of 255 * 127 products
# is 64770, far beyond it. The zero points are applied afterwards, exactly.

# %%
x_q = np.array([[255, 240, 17, 3]], np.uint8)
w_q = np.array([[127, 120, -50, 7]], np.int8)
products = x_q[0].astype(int) * w_q[0].astype(int)
pairs = [int(products[0] + products[1]), int(products[2] + products[3])]
saturated = [min(max(p, -32768), 32767) for p in pairs]
print("products", products.tolist(), "pairs", pairs, "in int16", saturated)
print("exact sum", int(products.sum()), "vpmaddubsw sum", sum(saturated))
assert pairs == [61185, -829] and saturated == [32767, -829]
assert int(products.sum()) == 60356 and sum(saturated) == 31938
assert int(int16_pair_accumulate(x_q, w_q)[0, 0]) == 31938

# %% [markdown]
# npquant names this `accumulation`: `"exact"` (the default), `"int16_pairs"`, or a
# library on a CPU path (`"fbgemm_avx2"`, `"fbgemm_vnni"`, `"mlas_avx2"`, ...; plain
# `"fbgemm"` and `"mlas"` follow what the library does on *this* CPU). In a layer, the
# output code changes:

# %%
x_qp = nq.QParams(0.02, 0, nq.QuantSpec(signed=False))
w_qp = nq.QParams(0.01, 0, nq.QuantSpec(symmetric=True))
y_qp = nq.QParams(0.1, 0, nq.QuantSpec(signed=False))
accs = {
    a: int(linear_accumulate(x_q, x_qp, w_q, w_qp, accumulation=a)[0, 0])
    for a in ("exact", "fbgemm_avx2", "fbgemm_vnni", "mlas_avx2")
}
outs = {
    a: int(qlinear(x_q, x_qp, w_q, w_qp, None, y_qp, mode="fp32", accumulation=a)[0, 0])
    for a in ("exact", "fbgemm_avx2")
}
print("accumulators:", accs)
M = 0.02 * 0.01 / 0.1
print(f"output codes (M = {M:g}):", outs)
assert f"{M:g}" == "0.002"
assert accs == {"exact": 60356, "fbgemm_avx2": 31938, "fbgemm_vnni": 60356, "mlas_avx2": 31938}
assert outs == {"exact": 121, "fbgemm_avx2": 64}
print("on this CPU fbgemm takes its", host_path("fbgemm"), "path")
assert host_path("fbgemm") in ("vnni", "avx2")

# %% [markdown]
# That is why PyTorch's x86 default quantizes activations to 7 bits
# (`reduce_range=True`, codes 0..127): a pair is then at most `2 * 127 * 128 = 32512`,
# which fits in int16. `check_int16_pairs` bounds every pair over all inputs:

# %%
full = check_int16_pairs(w_q, 0, 255)
reduced = check_int16_pairs(w_q, 0, 127)
print(f"8-bit activations: pairs up to {full.hi}, saturates: {full.saturates}")
print(f"7-bit activations: pairs up to {reduced.hi}, saturates: {reduced.saturates}")
assert (full.hi, full.saturates) == (62985, True) and (reduced.hi, reduced.saturates) == (31369, False)
assert full.hi == (127 + 120) * 255 and reduced.hi == (127 + 120) * 127
assert 2 * 127 * 128 == 32512

# %% [markdown]
# ## Exercise
#
# Activation codes `x = [200, 255, 10, 3]` (uint8) meet weight codes
# `w = [127, 100, -128, 5]` (int8). What is the exact int32 sum of the products, and
# what does `vpmaddubsw` (int16 pair saturation) give? Check with `exercise_answer()`
# (not printed unless you call it).


# %%
def exercise_answer():
    """``(exact, int16_pairs)`` sums of the exercise's products."""
    xe = np.array([[200, 255, 10, 3]], np.uint8)
    we = np.array([[127, 100, -128, 5]], np.int8)
    return int((xe.astype(np.int64) @ we.astype(np.int64).T)[0, 0]), int(int16_pair_accumulate(xe, we)[0, 0])


my_answer = None  # your (exact, saturated)
if my_answer is not None:
    print("right" if tuple(my_answer) == exercise_answer() else "not yet")
