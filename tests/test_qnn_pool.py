import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant.qnn.pool import avg_pool2d, div_round_half_away, div_round_half_even, max_pool2d


def _ref(q, k, s, p, op, mode="tflite", zp=0, cip=False):
    """Slow oracle with Python integers: loops over valid window positions."""
    n, c, h, w = q.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow), np.int64)
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        vals = [int(q[b, ch, y, x]) for y in range(i * s - p, i * s - p + k) for x in range(j * s - p, j * s - p + k)
                if 0 <= y < h and 0 <= x < w]
        if op == "max":
            out[b, ch, i, j] = max(vals)
            continue
        tot, cnt = sum(vals), len(vals)
        if cip:
            tot, cnt = tot + zp * (k * k - cnt), k * k
        if mode == "tflite":  # C: (tot +- cnt/2) / cnt, truncating division
            v = (tot + cnt // 2) if tot > 0 else (tot - cnt // 2)
            out[b, ch, i, j] = int(v / cnt) if abs(v) < 2**52 else None
        else:
            out[b, ch, i, j] = round(__import__("fractions").Fraction(tot, cnt))  # half even
    return out


GEOMS = [(1, 1, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1), (5, 2, 2), (4, 3, 2)]


@pytest.mark.parametrize("k,s,p", GEOMS)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_against_oracle_and_twin(k, s, p, dtype):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, int(info.max) + 1, (2, 3, 7, 6)).astype(dtype)
    q[0, 0] = info.min  # all-minimum plane: padding must not win the max
    mx = max_pool2d(q, k, s, p)
    assert mx.dtype == dtype
    np.testing.assert_array_equal(mx, _ref(q, k, s, p, "max"))
    np.testing.assert_array_equal(max_pool2d(q, k, s, p, backend="numpy"), mx)
    for mode, cip in (("tflite", False), ("torch", False), ("torch", True)):
        av = avg_pool2d(q, k, s, p, mode=mode, zero_point=5, count_include_pad=cip)
        assert av.dtype == dtype
        np.testing.assert_array_equal(av, _ref(q, k, s, p, "avg", mode, 5, cip))
        np.testing.assert_array_equal(
            avg_pool2d(q, k, s, p, mode=mode, zero_point=5, count_include_pad=cip, backend="numpy"), av)


def test_rounding_ties_differ_between_modes():
    q = np.array([[[[1, 2], [-1, -2]]]], np.int8)
    # windows of 1x2: sums 3 and -3 over count 2 -> 1.5 and -1.5
    assert avg_pool2d(q, (1, 2), mode="tflite").ravel().tolist() == [2, -2]  # half away
    assert avg_pool2d(q, (1, 2), mode="torch").ravel().tolist() == [2, -2]  # even: 2, -2
    q = np.array([[[[0, 1, 2, 3]]]], np.int8)
    assert avg_pool2d(q, (1, 2), mode="tflite").ravel().tolist() == [1, 3]  # 0.5->1, 2.5->3
    assert avg_pool2d(q, (1, 2), mode="torch").ravel().tolist() == [0, 2]   # 0.5->0, 2.5->2


@given(st.integers(-10**9, 10**9), st.integers(1, 1000))
def test_integer_division_rounding(s, c):
    from fractions import Fraction
    v = Fraction(s, c)
    away = int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v))
    assert int(div_round_half_away(s, c)) == away
    assert int(div_round_half_even(s, c)) == round(v)


@given(hnp.arrays(np.int8, st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(3, 8), st.integers(3, 8))),
       st.sampled_from(GEOMS[:5]))
def test_pool_bounds(q, geom):
    k, s, p = geom
    mx = max_pool2d(q, k, s, p).astype(int)
    for mode in ("tflite", "torch"):
        av = avg_pool2d(q, k, s, p, mode=mode).astype(int)
        assert np.all(av <= mx)
        assert np.all(av >= -max_pool2d((-q.astype(np.int16)), k, s, p).astype(int))
    np.testing.assert_array_equal(max_pool2d(q, k, s, p), max_pool2d(q, k, s, p, backend="numpy"))


def test_errors_name_arguments():
    q = np.zeros((1, 1, 4, 4), np.int8)
    with pytest.raises(TypeError, match="q"):
        max_pool2d(q.astype(float), 2)
    with pytest.raises(ValueError, match="NCHW"):
        max_pool2d(q[0], 2)
    with pytest.raises(ValueError, match="padding"):
        avg_pool2d(q, 2, 1, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        max_pool2d(q, 9)
    with pytest.raises(ValueError, match="mode"):
        avg_pool2d(q, 2, mode="onnx")
    with pytest.raises(ValueError, match="count_include_pad"):
        avg_pool2d(q, 2, count_include_pad=True)
    with pytest.raises(ValueError, match="stride"):
        max_pool2d(q, 2, 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_avg_pool2d_matches_mode_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for it in range(150):
        h, w = (int(v) for v in rng.integers(2, 10, 2))
        k = int(rng.integers(1, min(h, w, 8) + 1))
        s, p, cip = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1)), bool(it % 2)
        zx = int(rng.integers(0, 256))
        q = rng.integers(0, 256, (2, 3, h, w)).astype(np.uint8)
        if it % 3 == 0:
            q = (zx + rng.integers(-3, 4, q.shape)).clip(0, 255).astype(np.uint8)
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), 0.05, zx)
        if it % 4 >= 2:
            t = t.contiguous(memory_format=torch.channels_last)
        want = torch.nn.functional.avg_pool2d(t, k, s, p, count_include_pad=cip).int_repr().numpy()
        np.testing.assert_array_equal(avg_pool2d(q, k, s, p, mode="torch", zero_point=zx, count_include_pad=cip), want)
        mx = torch.nn.functional.max_pool2d(t, k, s, p).int_repr().numpy()
        np.testing.assert_array_equal(max_pool2d(q, k, s, p), mx)
