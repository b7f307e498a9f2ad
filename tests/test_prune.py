import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant.compression.prune import (
    decode_relative,
    encode_relative,
    magnitude_mask,
    magnitude_masks,
    prune,
    reapply,
    sparsity_of,
    sparsity_schedule,
)

# ---- slow, obviously-correct oracle of the relative-index format ------------------------


def encode_oracle(w, index_bits, filler=0):
    """Walk the flat tensor; emit a filler whenever the next entry is out of reach."""
    top = 2**index_bits - 1
    gaps, values = [], []
    prev = 0  # the first gap is measured from position 0
    for p, v in enumerate(np.asarray(w).reshape(-1).tolist()):
        if v == filler:
            continue
        while p - prev > top:
            prev += top
            gaps.append(top)
            values.append(filler)
        gaps.append(p - prev)
        values.append(v)
        prev = p
    return gaps, values


def random_sparse(rng, shape, density, dtype=np.float32):
    w = rng.standard_normal(shape).astype(dtype)
    w[rng.random(shape) >= density] = 0
    return w


# ---- relative indexing: the paper's figure and edge cases -------------------------------


def test_paper_figure_example():
    # Fig. 2: 16 weights, non-zeros 3.4 at 1, 0.9 at 4, 1.7 at 15, 3-bit gaps.
    w = np.zeros(16, np.float32)
    w[[1, 4, 15]] = [3.4, 0.9, 1.7]
    rs = encode_relative(w, 3)
    # first gap from position 0 (index 1 -> diff 1); the jump 4 -> 15 is 11 > 7, so a
    # filler zero goes 7 after index 4 (at 11) and 1.7 follows with gap 4.
    np.testing.assert_array_equal(rs.gaps, [1, 3, 7, 4])
    np.testing.assert_array_equal(rs.values, np.float32([3.4, 0.9, 0.0, 1.7]))
    assert rs.gaps.dtype == np.uint8 and rs.values.dtype == np.float32
    assert rs.n_fillers == 1 and rs.n_entries == 4 and rs.shape == (16,) and rs.index_bits == 3
    np.testing.assert_array_equal(decode_relative(rs), w)
    np.testing.assert_array_equal(np.cumsum(rs.gaps), [1, 4, 11, 15])


def test_gap_of_seven_fits_three_bits_and_eight_needs_a_filler():
    for jump, fillers in ((7, 0), (8, 1), (14, 1), (15, 2)):
        w = np.zeros(20)
        w[[2, 2 + jump]] = 1.0
        rs = encode_relative(w, 3)
        assert rs.n_fillers == fillers, jump
        assert rs.gaps.max() <= 7
        np.testing.assert_array_equal(decode_relative(rs), w)


def test_first_nonzero_at_position_zero_has_gap_zero():
    rs = encode_relative(np.array([2.0, 0, 3.0]), 2)
    np.testing.assert_array_equal(rs.gaps, [0, 2])


def test_first_nonzero_far_from_the_start():
    w = np.zeros((10, 100), np.float32)
    w[9, 99] = -1.25
    rs = encode_relative(w, 3)
    assert rs.n_fillers == (999 - 1) // 7 == 142
    np.testing.assert_array_equal(rs.gaps[:-1], 7)
    assert int(rs.gaps[-1]) == 999 - 142 * 7
    np.testing.assert_array_equal(decode_relative(rs), w)


@pytest.mark.parametrize("index_bits", [1, 3, 8, 16])
def test_all_zero_dense_and_single_element(index_bits):
    z = np.zeros((3, 5), np.float32)
    rs = encode_relative(z, index_bits)
    assert rs.n_entries == 0 and rs.n_fillers == 0
    out = decode_relative(rs)
    assert out.shape == (3, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out, z)

    d = np.arange(1, 16, dtype=np.float64).reshape(3, 5)
    rs = encode_relative(d, index_bits)
    np.testing.assert_array_equal(rs.gaps, [0] + [1] * 14)
    assert rs.n_fillers == 0
    np.testing.assert_array_equal(decode_relative(rs), d)

    for one in (np.float32([0.0]), np.float32([4.5]), np.float32(4.5), np.zeros((1, 1, 1))):
        rs = encode_relative(one, index_bits)
        assert rs.n_entries == (0 if np.all(one == 0) else 1)
        out = decode_relative(rs)
        assert out.shape == one.shape and out.dtype == one.dtype
        np.testing.assert_array_equal(out, one)


def test_empty_tensor():
    rs = encode_relative(np.zeros((2, 0), np.float32), 4)
    assert rs.n_entries == 0
    assert decode_relative(rs).shape == (2, 0)


@pytest.mark.parametrize("shape", [(1,), (), (7,), (3, 4), (2, 3, 5), (4, 1, 3, 3), (64, 9)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("index_bits", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_round_trip_matches_oracle(shape, density, index_bits):
    rng = np.random.default_rng([len(shape), int(density * 100), index_bits])
    w = random_sparse(rng, shape, density)
    rs = encode_relative(w, index_bits)
    gaps, values = encode_oracle(w, index_bits)
    np.testing.assert_array_equal(rs.gaps, np.array(gaps, dtype=rs.gaps.dtype))
    np.testing.assert_array_equal(rs.values, np.array(values, dtype=np.float32))
    assert rs.gaps.dtype == (np.uint8 if index_bits <= 8 else np.uint16)
    out = decode_relative(rs)
    assert out.dtype == w.dtype and out.shape == w.shape
    np.testing.assert_array_equal(out, w)
    # the raw-parts form decodes the same
    np.testing.assert_array_equal(decode_relative(rs.gaps, rs.values, rs.shape, index_bits), w)


def test_filler_count_equals_bridged_jumps():
    rng = np.random.default_rng(0)
    for index_bits in range(1, 9):
        top = 2**index_bits - 1
        w = random_sparse(rng, 5000, 0.01)
        pos = np.flatnonzero(w)
        jumps = np.diff(pos, prepend=0)
        expected = sum((int(d) - 1) // top for d in jumps if d > 0)
        rs = encode_relative(w, index_bits)
        assert rs.n_fillers == expected == int(np.sum(rs.values == 0))
        assert rs.n_entries == pos.size + expected
        # every filler sits exactly `top` after the previous entry
        np.testing.assert_array_equal(rs.gaps[rs.values == 0], top)


def test_negative_zero_is_not_stored():
    w = np.array([0.0, -0.0, 1.0, -0.0], np.float32)
    rs = encode_relative(w, 4)
    np.testing.assert_array_equal(rs.gaps, [2])
    np.testing.assert_array_equal(decode_relative(rs), w)  # -0.0 == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32])
def test_integer_values_with_a_filler_index(dtype):
    # k-means indices: index 3 means "zero"; index 0 is an ordinary value.
    rng = np.random.default_rng(1)
    q = rng.integers(0, 8, size=(6, 40)).astype(dtype)
    q[rng.random(q.shape) < 0.8] = 3
    rs = encode_relative(q, 3, filler=3)
    assert rs.values.dtype == dtype and rs.filler == 3
    gaps, values = encode_oracle(q, 3, filler=3)
    np.testing.assert_array_equal(rs.gaps, gaps)
    np.testing.assert_array_equal(rs.values, values)
    assert 0 in rs.values.tolist() or not np.any(q == 0)
    out = decode_relative(rs)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, q)
    out2 = decode_relative(rs.gaps, rs.values, q.shape, 3, filler=3)
    np.testing.assert_array_equal(out2, q)


def test_integer_default_filler_is_zero():
    q = np.array([0, 0, 5, 0, 250], np.uint8)
    rs = encode_relative(q, 2)
    np.testing.assert_array_equal(rs.gaps, [2, 2])
    np.testing.assert_array_equal(decode_relative(rs), q)


def test_relative_sparse_is_immutable():
    rs = encode_relative(np.float32([0, 1, 0, 2]), 2)
    with pytest.raises(ValueError):
        rs.gaps[0] = 3
    with pytest.raises(ValueError):
        rs.values[0] = 3
    with pytest.raises(AttributeError):
        rs.index_bits = 4


# ---- relative indexing: errors -----------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_index_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="index_bits"):
        encode_relative(np.ones(3), bits)
    with pytest.raises(ValueError, match="index_bits"):
        decode_relative(np.uint8([1]), np.ones(1), (3,), bits)


def test_index_bits_type():
    with pytest.raises(TypeError, match="index_bits"):
        encode_relative(np.ones(3), 2.0)
    with pytest.raises(TypeError, match="index_bits"):
        encode_relative(np.ones(3), True)


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="w contains NaN"):
        encode_relative(np.array([0, np.nan]), 3)
    with pytest.raises(TypeError, match="w must be"):
        encode_relative(np.array([True, False]), 3)
    with pytest.raises(ValueError, match="filler"):
        encode_relative(np.uint8([1, 2]), 3, filler=256)
    with pytest.raises(ValueError, match="filler"):
        encode_relative(np.int8([1, 2]), 3, filler=1.5)
    with pytest.raises(ValueError, match="filler"):
        encode_relative(np.float32([1, 2]), 3, filler=0.1)  # not exact in float32
    with pytest.raises(TypeError, match="filler"):
        encode_relative(np.float32([1, 2]), 3, filler="0")


@pytest.mark.parametrize(
    "gaps, values, shape, match",
    [
        ([1, 8], [1.0, 2.0], (16,), "gap out of range: gaps\\[1\\] = 8"),  # > 2^3 - 1
        ([0, 0], [1.0, 2.0], (16,), "gap out of range: gaps\\[1\\] = 0"),
        ([-1, 2], [1.0, 2.0], (16,), "gap out of range"),
        ([7, 7, 2], [1.0, 0.0, 2.0], (16,), "past the end of the tensor"),
        ([7, 7, 1], [1.0, 0.0, 2.0], (15,), "past the end of the tensor"),
        ([1], [1.0], (1,), "past the end of the tensor"),
        ([0], [1.0], (0,), "past the end of the tensor"),
        ([1, 3, 7], [1.0, 2.0], (16,), "differ in length"),
        ([1, 3], [1.0, 2.0, 0.0], (16,), "differ in length"),
        ([1, 3], [1.0, np.inf], (16,), "values contains NaN"),
    ],
)
def test_corrupt_decode_inputs(gaps, values, shape, match):
    with pytest.raises(ValueError, match=match):
        decode_relative(np.array(gaps), np.array(values), shape, 3)


def test_corrupt_decode_types():
    with pytest.raises(TypeError, match="gaps"):
        decode_relative(np.array([1.0]), np.ones(1), (4,), 3)
    with pytest.raises(ValueError, match="gaps must be 1-D"):
        decode_relative(np.uint8([[1]]), np.ones(1), (4,), 3)
    with pytest.raises(ValueError, match="values must be 1-D"):
        decode_relative(np.uint8([1]), np.ones((1, 1)), (4,), 3)
    with pytest.raises(ValueError, match="shape"):
        decode_relative(np.uint8([1]), np.ones(1), (4, -1), 3)
    with pytest.raises(TypeError, match="missing shape, index_bits"):
        decode_relative(np.uint8([1]), np.ones(1))
    rs = encode_relative(np.ones(3), 2)
    with pytest.raises(TypeError, match="no further arguments"):
        decode_relative(rs, np.ones(3))


def test_gap_just_fits_index_bits_16():
    w = np.zeros(70000, np.float32)
    w[[65535, 69999]] = 1.0
    rs = encode_relative(w, 16)
    np.testing.assert_array_equal(rs.gaps, [65535, 4464])
    assert rs.gaps.dtype == np.uint16
    np.testing.assert_array_equal(decode_relative(rs), w)


# ---- magnitude pruning -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 10, 101, 1000])
def test_sparsity_is_exact(n):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(np.float32)
    for s in (0.0, 0.1, 0.25, 0.5, 0.55, 0.9, 0.999):
        m = magnitude_mask(w, sparsity=s)
        assert m.dtype == np.bool_ and m.shape == w.shape
        assert int(np.sum(~m)) == round(s * n), (n, s)
        if m.any() and (~m).any():
            assert np.abs(w[m]).min() >= np.abs(w[~m]).max()


def test_sparsity_ties_prune_earlier_positions_first():
    w = np.array([[1.0, -1.0, 3.0], [1.0, 0.5, -1.0]])
    m = magnitude_mask(w, sparsity=0.5)  # prune 3: 0.5, then the first two |1.0| in C order
    np.testing.assert_array_equal(m, [[False, False, True], [True, False, True]])
    m = magnitude_mask(np.ones(10, np.float32), sparsity=0.3)
    np.testing.assert_array_equal(m, [False] * 3 + [True] * 7)


def test_sparsity_rounding_rule():
    w = np.arange(1, 11, dtype=np.float32)
    assert np.sum(~magnitude_mask(w, sparsity=0.25)) == round(2.5) == 2  # half to even
    assert np.sum(~magnitude_mask(w, sparsity=0.35)) == 4
    assert np.sum(~magnitude_mask(w, sparsity=0.96)) == 10  # rounds up to all


def test_quality_threshold_by_hand():
    w = np.array([1.0, -2.0, 3.0, -4.0, 0.5], np.float32)
    # mean -0.3; squared deviations 1.69 2.89 10.89 13.69 0.64, sum 29.8; std sqrt(5.96)
    std = 5.96**0.5  # 2.44131...
    np.testing.assert_array_equal(
        magnitude_mask(w, quality=0.5),  # prune |w| < 1.2207
        [False, True, True, True, False],
    )
    np.testing.assert_array_equal(
        magnitude_mask(w, quality=1.0),  # prune |w| < 2.4413
        [False, False, True, True, False],
    )
    np.testing.assert_array_equal(magnitude_mask(w, quality=0.0), [True] * 5)
    # strict inequality: a weight exactly at the threshold is kept
    v = np.array([-1.0, 1.0])  # std 1
    np.testing.assert_array_equal(magnitude_mask(v, quality=1.0), [True, True])
    assert 1.0 / std < 0.5 < 2.0 / std


def test_mask_errors():
    w = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="exactly one of sparsity= and quality=.*neither"):
        magnitude_mask(w)
    with pytest.raises(ValueError, match="exactly one of sparsity= and quality=.*both"):
        magnitude_mask(w, sparsity=0.5, quality=1.0)
    for s in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
            magnitude_mask(w, sparsity=s)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got nan"):
        magnitude_mask(w, sparsity=float("nan"))
    with pytest.raises(TypeError, match="sparsity"):
        magnitude_mask(w, sparsity="0.5")
    with pytest.raises(ValueError, match="quality must be >= 0"):
        magnitude_mask(w, quality=-1.0)
    with pytest.raises(TypeError, match="w must be a floating-point"):
        magnitude_mask(np.ones(3, np.int8), sparsity=0.5)
    with pytest.raises(ValueError, match="w is empty"):
        magnitude_mask(np.ones(0), sparsity=0.5)
    with pytest.raises(ValueError, match="w contains NaN"):
        magnitude_mask(np.array([1.0, np.inf]), quality=1.0)


def test_prune_and_sparsity_of():
    w = np.array([[-1.5, 2.0], [-0.25, 3.0]], np.float32)
    m = magnitude_mask(w, sparsity=0.5)
    p = prune(w, m)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p, [[0.0, 2.0], [0.0, 3.0]])
    assert not np.any(np.signbit(p[~m]))  # exactly +0.0, also for negative weights
    assert sparsity_of(p) == 0.5 and sparsity_of(m) == 0.5
    assert sparsity_of(np.ones(4)) == 0.0 and sparsity_of(np.zeros(4, np.int8)) == 1.0
    np.testing.assert_array_equal(prune(np.int8([1, -2, 3]), np.array([True, False, True])), np.int8([1, 0, 3]))
    with pytest.raises(ValueError, match="mask has shape"):
        prune(w, np.ones(4, bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        prune(w, np.ones((2, 2)))
    with pytest.raises(ValueError, match="w_or_mask is empty"):
        sparsity_of(np.ones(0))


def test_masks_reapplied_after_perturbation_keep_zeros_zero():
    rng = np.random.default_rng(5)
    weights = {
        "fc1": rng.standard_normal((8, 16)).astype(np.float32),
        "fc2": rng.standard_normal((4, 8)).astype(np.float32),
        "fc2.bias": rng.standard_normal(4).astype(np.float32),
    }
    masks = magnitude_masks(weights, sparsity={"fc1": 0.9, "fc2": 0.5})
    assert set(masks) == {"fc1", "fc2"}
    pruned = reapply(weights, masks)
    for _ in range(3):  # a few "SGD steps" that touch every weight
        updated = {k: v - np.float32(0.01) * rng.standard_normal(v.shape).astype(v.dtype) for k, v in pruned.items()}
        pruned = reapply(updated, masks)
        for k, m in masks.items():
            assert np.all(pruned[k][~m] == 0) and np.all(pruned[k][m] == updated[k][m])
        np.testing.assert_array_equal(pruned["fc2.bias"], updated["fc2.bias"])  # no mask
    assert sparsity_of(pruned["fc1"]) == pytest.approx(round(0.9 * 128) / 128)
    # in place
    w = {k: v.copy() for k, v in weights.items()}
    out = reapply(w, masks, inplace=True)
    assert out["fc1"] is w["fc1"]
    assert np.all(w["fc1"][~masks["fc1"]] == 0)
    np.testing.assert_array_equal(w["fc1"], prune(weights["fc1"], masks["fc1"]))


def test_reapply_and_masks_errors():
    weights = {"a": np.ones((2, 2)), "b": np.ones(3)}
    with pytest.raises(ValueError, match=r"masks has names not in weights: \['c'\]"):
        reapply(weights, {"c": np.ones(3, bool)})
    with pytest.raises(ValueError, match=r"masks\['b'\] has shape \(4,\)"):
        reapply(weights, {"b": np.ones(4, bool)})
    with pytest.raises(TypeError, match=r"masks\['b'\] must be a boolean"):
        reapply(weights, {"b": np.ones(3)})
    with pytest.raises(TypeError, match="writable ndarray"):
        reapply({"b": [1.0, 2.0, 3.0]}, {"b": np.ones(3, bool)}, inplace=True)
    with pytest.raises(TypeError, match="weights must be a mapping"):
        reapply([np.ones(3)], {})
    with pytest.raises(ValueError, match=r"sparsity names tensors not in weights: \['z'\]"):
        magnitude_masks(weights, sparsity={"z": 0.5})
    with pytest.raises(ValueError, match="'a': sparsity must be in"):
        magnitude_masks(weights, sparsity={"a": 1.0})
    with pytest.raises(ValueError, match="exactly one"):
        magnitude_masks(weights)
    q = magnitude_masks(weights, quality=0.0)
    assert set(q) == {"a", "b"} and all(m.all() for m in q.values())


# ---- iterative and global pruning --------------------------------------------------------


def test_previous_mask_is_pruned_first_and_nests():
    w = np.array([0.0, 5.0, 3.0, 1.0], np.float32)
    prior = np.array([True, True, True, False])  # w[3] pruned before, whatever its value now
    np.testing.assert_array_equal(magnitude_mask(w, sparsity=0.25, mask=prior), prior)
    np.testing.assert_array_equal(magnitude_mask(w, sparsity=0.5, mask=prior), [False, True, True, False])
    np.testing.assert_array_equal(magnitude_mask(w, sparsity=0.25), [False, True, True, True])
    with pytest.raises(ValueError, match="fewer than the 1 the given mask has pruned"):
        magnitude_mask(w, sparsity=0.0, mask=prior)
    # quality: the old mask and the threshold together (std of w = 1.9203; 0.5 * std = 0.96)
    np.testing.assert_array_equal(magnitude_mask(w, quality=0.5, mask=prior), [False, True, True, False])
    with pytest.raises(ValueError, match="mask has shape"):
        magnitude_mask(w, sparsity=0.5, mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        magnitude_mask(w, sparsity=0.5, mask=np.ones(4))


@given(
    hnp.arrays(np.float32, st.integers(1, 120), elements=st.floats(-4, 4, width=32)),
    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=4),
)
def test_property_iterative_masks_nest_and_prune_exactly(w, sparsities):
    mask = None
    for s in sorted(sparsities):
        new = magnitude_mask(w, sparsity=s, mask=mask)
        assert int(np.sum(~new)) == round(s * w.size)
        if mask is not None:
            assert not np.any(new & ~mask)  # nested: nothing revived
            # among the weights the old mask kept, the smallest were pruned
            if np.any(new) and np.any(~new & mask):
                assert np.abs(w[new]).min() >= np.abs(w[~new & mask]).max()
        w = prune(w, new)  # as retraining would: pruned weights are zero
        mask = new


def test_global_masks_by_hand():
    w = {"a": np.array([1.0, -1.0, 3.0]), "b": np.array([[1.0, 0.5], [-1.0, 2.0]])}
    # 7 weights, round(3.5) = 4 pruned: 0.5, then three of the four |1.0| in the order
    # a[0], a[1], b[0, 0], b[1, 0] (mapping order, then C order)
    m = magnitude_masks(w, sparsity=0.5, scope="global")
    np.testing.assert_array_equal(m["a"], [False, False, True])
    np.testing.assert_array_equal(m["b"], [[False, False], [True, True]])
    # the other mapping order prunes the other ties
    m = magnitude_masks({"b": w["b"], "a": w["a"]}, sparsity=0.5, scope="global")
    np.testing.assert_array_equal(m["a"], [False, True, True])
    np.testing.assert_array_equal(m["b"], [[False, False], [False, True]])
    # a layer of small weights can lose all of them
    m = magnitude_masks({"small": np.full(4, 0.01), "big": np.arange(1.0, 5.0)}, sparsity=0.5, scope="global")
    assert not m["small"].any() and m["big"].all()
    # previous masks rank first
    prior = {"b": np.array([[True, True], [True, False]])}
    m = magnitude_masks(w, sparsity=1 / 7, scope="global", masks=prior)
    np.testing.assert_array_equal(m["b"], prior["b"])
    assert m["a"].all()
    assert magnitude_masks({}, sparsity=0.5, scope="global") == {}


@given(
    st.lists(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-2, 2, width=32)), min_size=1, max_size=4),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_property_global_masks_are_one_threshold(arrays, s):
    weights = {f"t{i}": a for i, a in enumerate(arrays)}
    m = magnitude_masks(weights, sparsity=s, scope="global")
    keep = np.concatenate([m[k] for k in weights])
    allw = np.concatenate(arrays)
    assert int(np.sum(~keep)) == round(s * allw.size)
    np.testing.assert_array_equal(keep, magnitude_mask(allw, sparsity=s))  # one tensor, one rule
    if keep.any() and (~keep).any():
        assert np.abs(allw[keep]).min() >= np.abs(allw[~keep]).max()


def test_masks_with_previous_masks_and_errors():
    rng = np.random.default_rng(1)
    weights = {"a": rng.standard_normal(20), "b": rng.standard_normal((3, 5))}
    first = magnitude_masks(weights, sparsity={"a": 0.3, "b": 0.2})
    second = magnitude_masks(weights, sparsity=0.6, masks=first)
    for k in weights:
        assert not np.any(second[k] & ~first[k]) and np.sum(~second[k]) == round(0.6 * weights[k].size)
    with pytest.raises(ValueError, match=r"masks names tensors not in weights: \['z'\]"):
        magnitude_masks(weights, sparsity=0.5, masks={"z": np.ones(3, bool)})
    with pytest.raises(TypeError, match="masks must be a mapping"):
        magnitude_masks(weights, sparsity=0.5, masks=[np.ones(20, bool)])
    with pytest.raises(ValueError, match="'b': the sparsity asks to prune 0"):
        magnitude_masks(weights, sparsity={"b": 0.0}, masks=first)
    with pytest.raises(ValueError, match="scope='global' takes one sparsity"):
        magnitude_masks(weights, quality=1.0, scope="global")
    with pytest.raises(ValueError, match="scope='global' takes one sparsity"):
        magnitude_masks(weights, sparsity={"a": 0.5}, scope="global")
    with pytest.raises(ValueError, match="scope must be one of 'layer', 'global'"):
        magnitude_masks(weights, sparsity=0.5, scope="model")
    with pytest.raises(ValueError, match=r"weights\['a'\] contains NaN"):
        magnitude_masks({"a": np.array([1.0, np.nan])}, sparsity=0.5, scope="global")
    with pytest.raises(ValueError, match=r"masks\['a'\] has shape"):
        magnitude_masks(weights, sparsity=0.5, scope="global", masks={"a": np.ones(3, bool)})


def test_sparsity_schedules_by_hand():
    assert sparsity_schedule(0.8, 1) == [0.8]
    assert sparsity_schedule(0.8, 4, kind="linear") == [0.2, 0.4, 0.6000000000000001, 0.8]
    cubic = sparsity_schedule(0.8, 4)  # 0.8 * (1 - (1 - i/4)^3): 0.8 * 37/64, 0.8 * 7/8, 0.8 * 63/64
    assert cubic == pytest.approx([0.4625, 0.7, 0.7875, 0.8], abs=1e-15) and cubic[-1] == 0.8
    geo = sparsity_schedule(0.75, 2, kind="geometric")  # keep 1/2, then 1/4
    assert geo == [0.5, 0.75]
    per = sparsity_schedule({"fc1": 0.9, "fc2": 0.5}, 2, kind="linear")
    assert per == [{"fc1": 0.45, "fc2": 0.25}, {"fc1": 0.9, "fc2": 0.5}]
    with pytest.raises(ValueError, match="steps must be in"):
        sparsity_schedule(0.5, 0)
    with pytest.raises(ValueError, match="kind must be one of 'cubic', 'linear', 'geometric'"):
        sparsity_schedule(0.5, 2, kind="exp")
    with pytest.raises(ValueError, match=r"target must be in \[0, 1\)"):
        sparsity_schedule(1.0, 2)
    with pytest.raises(ValueError, match="'fc2': target must be"):
        sparsity_schedule({"fc1": 0.5, "fc2": -0.1}, 2)


@given(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 30), st.sampled_from(["cubic", "linear", "geometric"]))
def test_property_schedules_rise_to_the_target(target, steps, kind):
    s = sparsity_schedule(target, steps, kind=kind)
    assert len(s) == steps and s[-1] == target
    assert all(0.0 <= a <= b <= target for a, b in zip([0.0, *s], s))


# ---- properties --------------------------------------------------------------------------

sparse_arrays = st.tuples(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32]),
)


def _make(shape, density, seed, dtype):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return random_sparse(rng, shape, density, dtype)
    w = rng.integers(1, 100, size=shape).astype(dtype)
    w[rng.random(shape) >= density] = 0
    return w


@given(sparse_arrays, st.integers(1, 16))
def test_property_round_trip(arr_spec, index_bits):
    w = _make(*arr_spec)
    rs = encode_relative(w, index_bits)
    top = 2**index_bits - 1
    assert rs.gaps.size == rs.values.size
    if rs.n_entries:
        assert rs.gaps.max() <= top and (rs.gaps.size < 2 or rs.gaps[1:].min() >= 1)
    assert rs.n_entries - rs.n_fillers == np.count_nonzero(w)
    out = decode_relative(rs)
    assert out.dtype == w.dtype and out.shape == w.shape
    np.testing.assert_array_equal(out, w)
    gaps, values = encode_oracle(w, index_bits)
    np.testing.assert_array_equal(rs.gaps, np.array(gaps, dtype=np.int64))
    np.testing.assert_array_equal(rs.values, np.array(values, dtype=w.dtype))


@given(
    hnp.arrays(
        np.float32, st.integers(1, 200), elements=st.floats(-4, 4, width=32).filter(lambda x: x != 0) | st.just(0.5)
    ),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_property_magnitude_mask_sparsity(w, s):
    m = magnitude_mask(w, sparsity=s)
    k = round(s * w.size)
    assert int(np.sum(~m)) == k
    if 0 < k < w.size:
        assert np.abs(w[m]).min() >= np.abs(w[~m]).max()
    # deterministic and idempotent on the pruned tensor's support
    np.testing.assert_array_equal(m, magnitude_mask(w.copy(), sparsity=s))
    p = prune(w, m)
    assert np.count_nonzero(p == 0) >= k
    np.testing.assert_array_equal(decode_relative(encode_relative(p, 3)), p)


@given(hnp.arrays(np.float64, st.integers(1, 100), elements=st.floats(-10, 10)), st.floats(0.0, 3.0))
def test_property_quality_threshold(w, q):
    m = magnitude_mask(w, quality=q)
    thr = q * np.std(w)
    np.testing.assert_array_equal(m, np.abs(w) >= thr)
