import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npquant.qnn.pool import (
    avg_pool2d,
    div_round_half_away,
    div_round_half_even,
    max_pool2d,
    onnxruntime_avg_pool2d,
    onnxruntime_global_avg_pool2d,
)


def _ref(q, k, s, p, op, mode="tflite", zp=0, cip=False):
    """Slow oracle with Python integers: loops over valid window positions."""
    n, c, h, w = q.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow), np.int64)
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        vals = [
            int(q[b, ch, y, x])
            for y in range(i * s - p, i * s - p + k)
            for x in range(j * s - p, j * s - p + k)
            if 0 <= y < h and 0 <= x < w
        ]
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
            avg_pool2d(q, k, s, p, mode=mode, zero_point=5, count_include_pad=cip, backend="numpy"), av
        )


def test_rounding_ties_differ_between_modes():
    q = np.array([[[[1, 2], [-1, -2]]]], np.int8)
    # windows of 1x2: sums 3 and -3 over count 2 -> 1.5 and -1.5
    assert avg_pool2d(q, (1, 2), mode="tflite").ravel().tolist() == [2, -2]  # half away
    assert avg_pool2d(q, (1, 2), mode="torch").ravel().tolist() == [2, -2]  # even: 2, -2
    q = np.array([[[[0, 1, 2, 3]]]], np.int8)
    assert avg_pool2d(q, (1, 2), mode="tflite").ravel().tolist() == [1, 3]  # 0.5->1, 2.5->3
    assert avg_pool2d(q, (1, 2), mode="torch").ravel().tolist() == [0, 2]  # 0.5->0, 2.5->2


@given(st.integers(-(10**9), 10**9), st.integers(1, 1000))
def test_integer_division_rounding(s, c):
    from fractions import Fraction

    v = Fraction(s, c)
    away = int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v))
    assert int(div_round_half_away(s, c)) == away
    assert int(div_round_half_even(s, c)) == round(v)


@given(
    hnp.arrays(np.int8, st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(3, 8), st.integers(3, 8))),
    st.sampled_from(GEOMS[:5]),
)
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


def _ref_asym(q, k, s, pads, op):
    """Oracle with (top, bottom, left, right) padding: TFLite's clipped windows."""
    pt, pb, pl, pr = pads
    n, c, h, w = q.shape
    oh, ow = (h + pt + pb - k) // s + 1, (w + pl + pr - k) // s + 1
    out = np.zeros((n, c, oh, ow), np.int64)
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        vals = [
            int(q[b, ch, y, x])
            for y in range(i * s - pt, i * s - pt + k)
            for x in range(j * s - pl, j * s - pl + k)
            if 0 <= y < h and 0 <= x < w
        ]
        if op == "max":
            out[b, ch, i, j] = max(vals)
        else:
            tot, cnt = sum(vals), len(vals)
            out[b, ch, i, j] = int(math.copysign((abs(tot) + cnt // 2) // cnt, tot))
    return out


@pytest.mark.parametrize(
    "k,s,pads,hw",
    [
        (3, 2, (0, 1, 0, 1), (7, 6)),
        (3, 2, (1, 1, 0, 1), (6, 7)),
        (2, 2, (0, 1, 0, 0), (5, 4)),
        (4, 1, (1, 2, 2, 1), (5, 5)),
    ],
)
def test_asymmetric_padding(k, s, pads, hw):
    # TFLite's SAME padding puts the odd pixel at the bottom/right: 3x3 stride 2 on 7 pads (0, 1)
    rng = np.random.default_rng(sum(pads) + k)
    q = rng.integers(-128, 128, (2, 3) + hw).astype(np.int8)
    q[0, 0] = -128
    for backend in ("numba", "numpy"):
        np.testing.assert_array_equal(max_pool2d(q, k, s, pads, backend=backend), _ref_asym(q, k, s, pads, "max"))
        np.testing.assert_array_equal(avg_pool2d(q, k, s, pads, backend=backend), _ref_asym(q, k, s, pads, "avg"))
    sym = (pads[0], pads[0], pads[2], pads[2])  # a 4-tuple with equal sides is the pair form
    np.testing.assert_array_equal(max_pool2d(q, k, s, sym), max_pool2d(q, k, s, (pads[0], pads[2])))
    with pytest.raises(ValueError, match="padding"):
        avg_pool2d(q, k, s, (0, k, 0, 0))
    with pytest.raises(ValueError, match="padding"):
        max_pool2d(q, k, s, (0, -1, 0, 0))


def _ort_avg_oracle(q, sx, zx, sy, zy, k, s, pads, cip):
    """Per-window loop with explicit float32 steps, as onnxruntime's QLinearPool2DTask."""
    f32 = np.float32
    pt, pb, pl, pr = pads
    n, c, h, w = q.shape
    oh, ow = (h + pt + pb - k[0]) // s[0] + 1, (w + pl + pr - k[1]) // s[1] + 1
    info = np.iinfo(q.dtype)
    out = np.zeros((n, c, oh, ow), q.dtype)
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        hs, ws = i * s[0] - pt, j * s[1] - pl
        he, we, hs, ws = min(hs + k[0], h), min(ws + k[1], w), max(hs, 0), max(ws, 0)
        acc = f32(0)
        for y in range(hs, he):
            for x in range(ws, we):
                acc = f32(acc + f32(f32(sx) * f32(int(q[b, ch, y, x]) - zx)))
        cnt = k[0] * k[1] if cip else (he - hs) * (we - ws)
        v = np.rint(f32(f32(f32(acc / f32(cnt)) / f32(sy)) + f32(zy)))
        out[b, ch, i, j] = min(max(int(v), info.min), info.max)
    return out


def test_onnxruntime_pools_against_oracle():
    rng = np.random.default_rng(4)
    for it in range(12):
        dt = np.int8 if it % 3 == 2 else np.uint8
        info = np.iinfo(dt)
        q = rng.integers(info.min, info.max + 1, (2, 2, 6, 7)).astype(dt)
        k = (int(rng.integers(1, 4)), int(rng.integers(2, 4)))
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pads = (
            int(rng.integers(0, k[0])),
            int(rng.integers(0, k[0])),
            int(rng.integers(0, k[1])),
            int(rng.integers(0, k[1])),
        )
        sx, sy = (np.float32(v) for v in rng.uniform(0.01, 0.1, 2))
        zx, zy = (int(v) for v in rng.integers(info.min, info.max + 1, 2))
        got = onnxruntime_avg_pool2d(q, sx, zx, sy, zy, k, s, pads, count_include_pad=it % 2 == 1)
        np.testing.assert_array_equal(got, _ort_avg_oracle(q, sx, zx, sy, zy, k, s, pads, it % 2 == 1))
        g = onnxruntime_global_avg_pool2d(q, sx, zx, sy, zy)
        acc = q.astype(np.int64).sum(axis=(2, 3)) - zx * 42
        m = np.float32(sx / np.float32(sy * np.float32(42)))
        want = np.clip(np.rint((acc.astype(np.float32) * m).astype(np.float32)) + zy, info.min, info.max)
        assert g.shape == (2, 2, 1, 1) and g.dtype == dt
        np.testing.assert_array_equal(g[:, :, 0, 0], want)
    with pytest.raises(ValueError, match="padding"):
        onnxruntime_avg_pool2d(q, 0.1, 0, 0.1, 0, 2, 1, (0, 2, 0, 0))
    with pytest.raises(TypeError, match="q"):
        onnxruntime_global_avg_pool2d(q.astype(np.int16), 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="range"):
        onnxruntime_global_avg_pool2d(q, 1.0, 0, 1e-9, 0)


def test_onnxruntime_pools_match_onnxruntime():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    def run(op, x, consts, **attrs):
        ty = TensorProto.INT8 if x.dtype == np.int8 else TensorProto.UINT8
        g = helper.make_graph(
            [helper.make_node(op, ["x", "sx", "zx", "sy", "zy"], ["y"], domain="com.microsoft", **attrs)],
            "g",
            [helper.make_tensor_value_info("x", ty, list(x.shape))],
            [helper.make_tensor_value_info("y", ty, None)],
            initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[
            0
        ]

    rng = np.random.default_rng(2)
    n = 0
    for it in range(60):
        dt = np.int8 if it % 5 == 4 else np.uint8
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max + 1, (2, 3, 7, 8)).astype(dt)
        k = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        s = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        p = [
            int(rng.integers(0, k[0])),
            int(rng.integers(0, k[1])),
            int(rng.integers(0, k[0])),
            int(rng.integers(0, k[1])),
        ]  # ONNX order: top, left, bottom, right
        sx, sy = (np.float32(v) for v in rng.uniform(0.01, 0.1, 2))
        zx, zy = (dt(v) for v in rng.integers(info.min, info.max + 1, 2))
        consts = {"sx": sx, "zx": zx, "sy": sy, "zy": zy}
        want = run("QLinearAveragePool", x, consts, kernel_shape=k, strides=s, pads=p, count_include_pad=it % 2)
        got = onnxruntime_avg_pool2d(
            x, sx, int(zx), sy, int(zy), k, s, (p[0], p[2], p[1], p[3]), count_include_pad=it % 2 == 1
        )
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")
        want = run("QLinearGlobalAveragePool", x, consts)
        np.testing.assert_array_equal(onnxruntime_global_avg_pool2d(x, sx, int(zx), sy, int(zy)), want)
        n += want.size + got.size
    assert n > 10_000
