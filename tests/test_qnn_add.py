from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npquant.qnn.add import ADD_MODES, add, tflite_add_params, torch_add_vector_width
from npquant.requant.fixedpoint import quantize_multiplier

f32 = np.float32


def _srdhm(a, b):
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return int(Fraction(ab + nudge, 1 << 31))  # int() truncates toward zero, like C


def _rdbpot(x, e):
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def _ref_add(a, b, s1, z1, s2, z2, so, zo, lo, hi):
    """Python-int oracle of TFLite's AddFunc with constants from Prepare (float64)."""
    tm = 2.0 * max(float(s1), float(s2))
    ms = [quantize_multiplier(r) for r in (float(s1) / tm, float(s2) / tm, tm / ((1 << 20) * float(so)))]
    ms = [(int(m), int(s)) for m, s in ms]
    x = _rdbpot(_srdhm((a - z1) << 20, ms[0][0]), -ms[0][1])
    y = _rdbpot(_srdhm((b - z2) << 20, ms[1][0]), -ms[1][1])
    v = _rdbpot(_srdhm(x + y, ms[2][0]), -ms[2][1]) + zo
    return min(max(v, lo), hi)


def test_against_python_oracle_and_float():
    rng = np.random.default_rng(0)
    for _ in range(40):
        s1, s2, so = (f32(v) for v in rng.uniform(0.005, 0.2, 3))
        z1, z2, zo = (int(v) for v in rng.integers(-128, 128, 3))
        q1 = rng.integers(-128, 128, 50).astype(np.int8)
        q2 = rng.integers(-128, 128, 50).astype(np.int8)
        got = add(q1, s1, z1, q2, s2, z2, so, zo)
        assert got.dtype == np.int8
        want = [_ref_add(int(a), int(b), s1, z1, s2, z2, so, zo, -128, 127) for a, b in zip(q1, q2)]
        np.testing.assert_array_equal(got, want)
        real = ((q1 - f32(z1)) * f32(s1) + (q2 - f32(z2)) * f32(s2)).astype(np.float64) / float(so) + zo
        inside = (real > -127) & (real < 126)
        assert np.all(np.abs(got[inside] - real[inside]) <= 1.0)  # within one LSB of float math


def test_constants_and_single_rounding():
    p = tflite_add_params(0.5, 0.25, 1.0)
    assert p.left_shift == 20
    assert p.input1 == (1 << 30, 0)  # 0.5 / 1.0 = 0.5 = 2^30 * 2^(0-31)
    assert p.input2 == (1 << 30, -1)  # 0.25
    single = add(np.arange(-128, 128, dtype=np.int8), 0.1, 3, np.int8(7), 0.07, -2, 0.13, 1, mode="tflite_single")
    double = add(np.arange(-128, 128, dtype=np.int8), 0.1, 3, np.int8(7), 0.07, -2, 0.13, 1)
    assert np.max(np.abs(single.astype(int) - double.astype(int))) <= 1


@given(st.floats(0.001, 1), st.floats(0.001, 1), st.integers(-128, 127), st.integers(-128, 127))
def test_commutative_and_zero(s1, s2, a, b):
    s1, s2 = f32(s1), f32(s2)
    so = f32(2 * max(s1, s2))
    x = add(np.int8(a), s1, 0, np.int8(b), s2, 5, so, 0)
    y = add(np.int8(b), s2, 5, np.int8(a), s1, 0, so, 0)
    assert x == y
    # adding the zero code of the other tensor requantizes q alone
    z = add(np.int8(a), s1, 0, np.int8(5), s2, 5, so, 0)
    assert abs(int(z) - float(a) * float(s1) / float(so)) <= 1


def test_torch_add_vector_width():
    assert torch_add_vector_width("AVX512") == torch_add_vector_width("AVX2") == 64
    with pytest.raises(ValueError, match="capability"):
        torch_add_vector_width("DEFAULT")


def test_errors_name_arguments():
    q = np.zeros(3, np.int8)
    with pytest.raises(TypeError, match="q2"):
        add(q, 0.1, 0, q.astype(float), 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="s_out"):
        add(q, 0.1, 0, q, 0.1, 0, 1e-9, 0)
    with pytest.raises(ValueError, match="z1"):
        add(q, 0.1, 300, q, 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="mode"):
        add(q, 0.1, 0, q, 0.1, 0, 0.1, 0, mode="onnx")
    with pytest.raises(ValueError, match="qmin"):
        add(q, 0.1, 0, q, 0.1, 0, 0.1, 0, mode="torch")
    with pytest.raises(ValueError, match="s1"):
        add(q, -0.1, 0, q, 0.1, 0, 0.1, 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("threads", [1, 2])
def test_torch_quantized_add(threads):
    torch = pytest.importorskip("torch")
    # AVX512 and AVX2 are measured (the AVX2 run: test_peers_fbgemm_avx2 and the recorded
    # tests/data/x86_avx2); a build on another capability is an error, not a skip
    width = torch_add_vector_width(torch.backends.cpu.get_cpu_capability())
    old = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = "fbgemm"
    try:
        rng = np.random.default_rng(threads)
        for it in range(120):
            n = int(rng.choice([int(rng.integers(1, 300)), 64 * int(rng.integers(1, 5)), 5000]))
            s1 = f32(rng.uniform(0.01, 0.2))
            s2, so = (f32(s1 * 2), f32(s1 * 4)) if it % 3 == 0 else (f32(v) for v in rng.uniform(0.01, 0.3, 2))
            z1, z2, zo = (int(v) for v in rng.integers(0, 256, 3))
            q1, q2 = (rng.integers(0, 256, n).astype(np.uint8) for _ in range(2))
            relu = it % 2 == 1
            t1 = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q1), float(s1), z1)
            t2 = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q2), float(s2), z2)
            op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
            want = op(t1, t2, float(so), zo).int_repr().numpy()
            got = add(
                q1,
                s1,
                z1,
                q2,
                s2,
                z2,
                so,
                zo,
                qmin=0,
                qmax=255,
                mode="torch",
                act_min=zo if relu else None,
                vector_width=width,
            )
            np.testing.assert_array_equal(got, want, err_msg=f"case {it} n={n}")
    finally:
        torch.set_num_threads(old[0])
        torch.backends.quantized.engine = old[1]


def test_onnxruntime_mode_pinned_tie():
    # recorded from onnxruntime 1.32 (com.microsoft.QLinearAdd, uint8): the real sum lies a hair
    # below 189.5 codes; MLAS's fmas round it onto the tie, which goes to 190 (even), where
    # dequantize-add-quantize and TFLite's fixed point give 189
    s1, s2, so = f32(0.035838313), f32(0.055159703), f32(0.0128217265)
    q1, q2 = np.array([56], np.uint8), np.array([247], np.uint8)
    got = add(q1, s1, 125, q2, s2, 216, so, 249, qmin=0, qmax=255, mode="onnxruntime")
    assert got.dtype == np.uint8 and int(got[0]) == 190
    real = ((56 - 125) * float(s1) + (247 - 216) * float(s2)) / float(so) + 249  # float64
    assert 189.4999 < real < 189.5
    assert int(add(q1, s1, 125, q2, s2, 216, so, 249, qmin=0, qmax=255)[0]) == 189


def test_onnxruntime_mode_matches_qlinear_add():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    def run(a, b, consts, signed):
        g = helper.make_graph(
            [
                helper.make_node(
                    "QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"], domain="com.microsoft"
                )
            ],
            "g",
            [
                helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                for k, v in (("a", a), ("b", b))
            ],
            [helper.make_tensor_value_info("y", TensorProto.INT8 if signed else TensorProto.UINT8, None)],
            initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
            ["y"], {"a": a, "b": b}
        )[0]

    rng = np.random.default_rng(12)
    full = (np.repeat(np.arange(256), 64), np.tile(np.arange(0, 256, 4), 256))
    shapes = [
        ((5, 16), (16,)),
        ((5, 16), (1,)),
        ((1,), (70,)),
        ((2, 3, 4, 4), (2, 3, 4, 4)),
        ((2, 6, 1, 1), (2, 6, 5, 5)),
        ((2, 6, 5, 5), (2, 6, 1, 1)),
        ((3, 1, 5), (3, 4, 5)),
        ((257,), (257,)),
    ]
    n = 0
    for it in range(40):
        signed = it % 4 == 3
        dt, lo, hi = (np.int8, -128, 127) if signed else (np.uint8, 0, 255)
        if it < 4:
            a, b = ((v + lo).astype(dt) for v in full)
        else:
            sa_, sb_ = shapes[it % len(shapes)]
            a, b = rng.integers(lo, hi + 1, sa_).astype(dt), rng.integers(lo, hi + 1, sb_).astype(dt)
        s1, s2, so = (f32(v) for v in rng.uniform(0.005, 0.1, 3))
        z1, z2, zo = (int(v) for v in rng.integers(lo, hi + 1, 3))
        want = run(a, b, {"sa": s1, "za": dt(z1), "sb": s2, "zb": dt(z2), "sc": so, "zc": dt(zo)}, signed)
        got = add(a, s1, z1, b, s2, z2, so, zo, qmin=lo, qmax=hi, mode="onnxruntime")
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"case {it}")
        n += want.size
    assert n > 60_000


# ---- qadd: add on QParams with a fused activation (QAdd called once) ---------------------


@pytest.mark.parametrize("mode", ADD_MODES)
@pytest.mark.parametrize("activation", [None, "none", "relu", "relu6"])
def test_qadd_equals_add_and_qadd_layer(mode, activation):
    from npquant import QParams, QuantSpec
    from npquant.qnn import QAdd, activation_range, qadd

    rng = np.random.default_rng(31)
    signed_options = (False,) if mode == "torch" else (True, False)
    for signed in signed_options:
        spec = QuantSpec(bits=8, signed=signed)
        for trial in range(4):
            s1, s2 = (f32(v) for v in rng.uniform(0.005, 0.1, 2))
            so = f32(rng.uniform(0.5, 2.0) * max(s1, s2))
            z1, z2, zo = (int(v) for v in rng.integers(spec.qmin, spec.qmax + 1, 3))
            shape1, shape2 = ((3, 70), (3, 70)) if trial % 2 == 0 else ((4, 1, 5), (6, 5))
            if mode == "torch":
                shape2 = shape1  # torch mode: same-shape inputs (module docstring)
            q1 = rng.integers(spec.qmin, spec.qmax + 1, shape1).astype(spec.dtype)
            q2 = rng.integers(spec.qmin, spec.qmax + 1, shape2).astype(spec.dtype)
            qp1, qp2, y_qp = QParams(s1, z1, spec), QParams(s2, z2, spec), QParams(so, zo, spec)
            lo, hi = activation_range(activation, so, zo, spec.qmin, spec.qmax)
            ref = add(q1, s1, z1, q2, s2, z2, so, zo, qmin=spec.qmin, qmax=spec.qmax, act_min=lo, act_max=hi, mode=mode)
            got = qadd(q1, qp1, q2, qp2, y_qp, mode=mode, activation=activation)
            assert got.dtype == ref.dtype == spec.dtype
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(QAdd(qp1, qp2, y_qp, mode=mode, activation=activation)(q1, q2), ref)


def test_qadd_passes_left_shift_and_vector_width_and_checks():
    from npquant import QParams, QuantSpec
    from npquant.qnn import QAdd, qadd

    rng = np.random.default_rng(32)
    u8 = QuantSpec(bits=8, signed=False)
    q1 = rng.integers(0, 256, 100).astype(np.uint8)
    q2 = rng.integers(0, 256, 100).astype(np.uint8)
    qp1, qp2, y_qp = QParams(0.02, 120, u8), QParams(0.03, 130, u8), QParams(0.05, 128, u8)
    for kw in (dict(mode="tflite", left_shift=12), dict(mode="torch", vector_width=32)):
        ref = add(q1, 0.02, 120, q2, 0.03, 130, 0.05, 128, qmin=0, qmax=255, **kw)
        np.testing.assert_array_equal(qadd(q1, qp1, q2, qp2, y_qp, **kw), ref)
        np.testing.assert_array_equal(QAdd(qp1, qp2, y_qp, **kw)(q1, q2), ref)
    lo, hi = 130, 200
    np.testing.assert_array_equal(
        qadd(q1, qp1, q2, qp2, y_qp, activation=(lo, hi)),
        add(q1, 0.02, 120, q2, 0.03, 130, 0.05, 128, qmin=0, qmax=255, act_min=lo, act_max=hi),
    )
    with pytest.raises(ValueError, match="activation"):
        qadd(q1, qp1, q2, qp2, y_qp, activation="sigmoid")
    with pytest.raises(TypeError, match="qp1 must be a QParams"):
        qadd(q1, 0.02, q2, qp2, y_qp)
    with pytest.raises(ValueError, match="mode"):
        qadd(q1, qp1, q2, qp2, y_qp, mode="fp32")
    with pytest.raises(ValueError, match="per-tensor"):
        qadd(q1, QParams(np.full(100, 0.02, np.float32), 120, u8.replace(axis=0)), q2, qp2, y_qp)


@pytest.mark.parametrize(
    "qmin, qmax, dtype",
    [(-128, 127, np.int8), (0, 255, np.uint8), (-200, 100, np.int16), (-1, 40000, np.int32), (0, 65535, np.uint16)],
)
def test_add_output_dtype_holds_the_code_range(qmin, qmax, dtype):
    # the smallest integer dtype that holds [qmin, qmax]: (-200, 100) once came out as int8 and wrapped
    q = np.array([qmin, qmax, 0], np.int64)
    out = add(q, 1.0, 0, np.zeros(3, np.int64), 1.0, 0, 1.0, 0, qmin=qmin, qmax=qmax, left_shift=10)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, [qmin, qmax, 0])
