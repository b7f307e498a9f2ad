import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant.granularity import expand_params, param_shape, params3, reduce_groups, split3


def test_param_shapes():
    assert param_shape((4, 9)) == ()
    assert param_shape((4, 9), axis=0) == (4,)
    assert param_shape((4, 9), axis=-1) == (9,)
    assert param_shape((4, 9), axis=1, block_size=4) == (4, 3)  # last block has 1 element
    assert param_shape((8, 3, 5, 5), axis=1, block_size=2) == (8, 2, 5, 5)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        param_shape((4, 9), axis=2)
    with pytest.raises(ValueError, match="block_size"):
        param_shape((4, 9), axis=1, block_size=0)


def test_split3():
    assert split3((2, 3, 4), None) == (1, 1, 24)
    assert split3((2, 3, 4), 1) == (2, 3, 4)
    assert split3((2, 3, 4), -1) == (6, 4, 1)


@given(
    x=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=7), elements=st.floats(-100, 100, width=32)
    ),
    block=st.integers(1, 8),
    data=st.data(),
)
def test_reduce_and_expand_agree_with_explicit_loops(x, block, data):
    axis = data.draw(st.integers(0, x.ndim - 1))
    for b in (None, block):
        mn = reduce_groups(x, np.minimum, axis, b)
        assert mn.shape == param_shape(x.shape, axis, b)
        full = expand_params(mn, x.shape, axis, b)
        assert full.shape == x.shape
        moved = np.moveaxis(x, axis, 0)
        fmoved = np.moveaxis(full, axis, 0)
        n = x.shape[axis]
        if b is None:  # a channel is one index along the axis, all other positions together
            for c in range(n):
                assert np.all(fmoved[c] == moved[c].min())
        else:  # a group is a run of b indices along the axis, at one position of the others
            for start in range(0, n, b):
                grp = moved[start : start + b]
                np.testing.assert_array_equal(fmoved[start : start + b], np.broadcast_to(grp.min(axis=0), grp.shape))
        # params3 indexing reproduces expand_params
        p3, blk = params3(mn, x.shape, axis, b)
        o, nn, i = split3(x.shape, axis)
        c = np.arange(nn) // blk
        idx_o = np.arange(o)[:, None, None] if p3.shape[0] > 1 else 0
        idx_i = np.arange(i)[None, None, :] if p3.shape[2] > 1 else 0
        got = np.broadcast_to(p3[idx_o, c[None, :, None], idx_i], (o, nn, i))
        np.testing.assert_array_equal(got.reshape(x.shape), full)


def test_per_tensor():
    x = np.arange(6.0).reshape(2, 3)
    assert reduce_groups(x, np.maximum) == 5
    np.testing.assert_array_equal(expand_params(np.float32(2), x.shape), np.full((2, 3), 2))
    p3, blk = params3(np.float32(2), x.shape)
    assert p3.shape == (1, 1, 1) and blk == 1
