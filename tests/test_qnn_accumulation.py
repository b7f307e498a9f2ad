"""Accumulation modes: resolution per stack and CPU path, the pair-saturating product on
every kernel and backend, the forced GEMM kernels, and the explain trace.

The recorded peer outputs are in ``test_fixtures_x86_avx2``; the live peers in
``test_qnn_torch`` (and ``test_peers_fbgemm_avx2``) and ``test_peers_onnx``.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npquant import QParams, QuantSpec
from npquant.explain import explain_conv2d, explain_linear
from npquant.qnn import accumulation as acc
from npquant.qnn.conv import QConv2d, conv2d_accumulate, qconv2d
from npquant.qnn.gemm import _gemm_u8s8_numpy, available_gemm_kernels, gemm_kernel, use_gemm_kernel
from npquant.qnn.linear import QLinear, linear_accumulate, qlinear
from npquant.qnn.overflow import int16_pair_accumulate

KERNELS = available_gemm_kernels()
U8 = QuantSpec(signed=False)
VNNI = {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"}
AVX2 = {"avx2", "fma"}


def _pairs_oracle(x, w):
    """Python ints: sum over pairs (2p, 2p+1) of clamp(pair, int16), per (row, col)."""
    out = np.zeros((x.shape[0], w.shape[0]), np.int64)
    for i in range(x.shape[0]):
        for o in range(w.shape[0]):
            s = 0
            for p in range(0, x.shape[1], 2):
                v = sum(int(x[i, t]) * int(w[o, t]) for t in range(p, min(p + 2, x.shape[1])))
                s += min(max(v, -32768), 32767)
            out[i, o] = s
    return out


def test_host_path_follows_cpu_and_fbgemm_env():
    assert acc.host_path("fbgemm", VNNI, {}) == "vnni"
    assert acc.host_path("fbgemm", AVX2, {}) == "avx2"
    assert acc.host_path("fbgemm", VNNI, {"FBGEMM_ENABLE_INSTRUCTIONS": "avx2"}) == "avx2"
    assert acc.host_path("fbgemm", VNNI, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512"}) == "avx2"
    assert acc.host_path("fbgemm", AVX2, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"}) == "avx2"  # not forced up
    assert acc.host_path("fbgemm", AVX2 | {"avxvnni"}, {}) == "avx2"  # no AVX-VNNI kernels in fbgemm
    assert acc.host_path("mlas", AVX2 | {"avxvnni"}) == "vnni"
    assert acc.host_path("mlas", VNNI) == "vnni"
    assert acc.host_path("mlas", AVX2) == "avx2"
    with pytest.raises(ValueError, match="library"):
        acc.host_path("onednn")


def test_resolve_per_stack_and_op():
    dense = (5, 6, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    dw = (8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    dw_nopad = (8, 8, 8, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1))
    assert acc.resolve("exact", "conv2d", conv=dw) == "exact"
    assert acc.resolve("int16_pairs", "conv2d", conv=dw) == "int16_pairs"
    assert acc.resolve("fbgemm_vnni", "linear") == "exact"
    assert acc.resolve("fbgemm_vnni", "conv2d", conv=dense) == "exact"
    assert acc.resolve("fbgemm_vnni", "conv2d", conv=dw) == "int16_pairs"
    assert acc.resolve("fbgemm_vnni", "conv2d", conv=dw_nopad) == "exact"
    assert acc.resolve("fbgemm_avx2", "conv2d", conv=dw_nopad) == "int16_pairs"
    assert acc.resolve("mlas_avx2", "linear") == "int16_pairs"
    assert acc.resolve("mlas_avx2", "conv2d", conv=dense) == "int16_pairs"
    assert acc.resolve("mlas_avx2", "conv2d", conv=dw) == "exact"
    assert acc.resolve("mlas_vnni", "conv2d", conv=dense) == "exact"
    assert acc.resolve("fbgemm", "linear") == ("int16_pairs" if acc.host_path("fbgemm") == "avx2" else "exact")
    with pytest.raises(ValueError, match="accumulation"):
        acc.resolve("saturate")
    with pytest.raises(ValueError, match="geometry"):
        acc.resolve("fbgemm_vnni", "conv2d")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m, k, o", [(1, 1, 1), (3, 33, 10), (7, 64, 24), (6, 130, 5), (13, 7, 65), (1, 200, 17)])
def test_pairs_every_kernel_and_backend_equal_the_oracle(kernel, m, k, o):
    rng = np.random.default_rng(m * 1000 + k + o)
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    zx = int(rng.integers(0, 256))
    zw = rng.integers(-4, 5, o).astype(np.int32)
    x_qp, w_qp = QParams(np.float32(0.1), zx, U8), QParams(np.full(o, 0.01, np.float32), zw, QuantSpec(axis=0))
    raw = _pairs_oracle(x, w)
    want = raw - zx * (w.astype(np.int64) - zw[:, None]).sum(1) - zw * x.astype(np.int64).sum(1)[:, None]
    with use_gemm_kernel(kernel):
        got = linear_accumulate(x, x_qp, w, w_qp, accumulation="int16_pairs")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        linear_accumulate(x, x_qp, w, w_qp, accumulation="int16_pairs", backend="numpy"), want
    )
    np.testing.assert_array_equal(int16_pair_accumulate(x, w), raw)


@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_kernels_agree(kernel):
    rng = np.random.default_rng(5)
    for m, k, o in [(1, 5, 3), (6, 64, 64), (9, 100, 70), (2, 4096, 3)]:
        for xs, ws in [(False, True), (True, True), (False, False), (True, False)]:
            x_spec, w_spec = QuantSpec(signed=xs), QuantSpec(signed=ws, axis=0)
            x = rng.integers(x_spec.qmin, x_spec.qmax + 1, (m, k)).astype(x_spec.dtype)
            w = rng.integers(w_spec.qmin, w_spec.qmax + 1, (o, k)).astype(w_spec.dtype)
            x_qp = QParams(np.float32(0.1), int(rng.integers(x_spec.qmin, x_spec.qmax + 1)), x_spec)
            w_qp = QParams(np.full(o, 0.01, np.float32), rng.integers(w_spec.qmin, w_spec.qmax + 1, o), w_spec)
            with use_gemm_kernel(kernel):
                got = linear_accumulate(x, x_qp, w, w_qp)
            want = linear_accumulate(x, x_qp, w, w_qp, backend="numpy")
            np.testing.assert_array_equal(got, want)


@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_pairs_twin_is_the_definition(m, k, o, seed):
    rng = np.random.default_rng(seed)
    xu = rng.integers(0, 256, (m, k)).astype(np.uint8)
    ws = rng.integers(-128, 128, (o, k)).astype(np.int8)
    if seed % 3 == 0:  # every pair saturates
        xu[:] = 255
        ws[:] = -128 if seed % 2 else 127
    dw = rng.integers(-(2**31), 2**31, o).astype(np.int32)
    col = rng.integers(-(2**31), 2**31, o).astype(np.int32)
    got = _gemm_u8s8_numpy(xu, ws, dw, col, pairs=True)
    want = _pairs_oracle(xu, ws) - dw.astype(np.int64) * xu.astype(np.int64).sum(1)[:, None] + col
    np.testing.assert_array_equal(got, ((want + 2**31) % 2**32 - 2**31).astype(np.int32))


def test_pairs_conv_orders_hwc_and_pads_with_zero_point():
    """Pairs run over (kh, kw, c) with c fastest, per group; padding taps read Z_x."""
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (2, 6, 5, 5)).astype(np.uint8)
    w = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    zx = 250
    x_qp, w_qp = QParams(np.float32(0.1), zx, U8), QParams(np.float32(0.01), 0, QuantSpec())
    got = conv2d_accumulate(x, x_qp, w, w_qp, padding=1, groups=2, accumulation="int16_pairs")
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=zx)
    for n, o, i, j in [(0, 0, 0, 0), (1, 3, 4, 4), (0, 2, 2, 1), (1, 1, 0, 3)]:
        g = o // 2
        patch = xp[n, 3 * g : 3 * g + 3, i : i + 3, j : j + 3].transpose(1, 2, 0).reshape(1, -1)
        wv = w[o].transpose(1, 2, 0).reshape(1, -1)
        s = int(_pairs_oracle(patch, wv)[0, 0]) - zx * int(wv.astype(np.int64).sum())
        assert got[n, o, i, j] == s
    layer = QConv2d(
        w, w_qp, None, x_qp, QParams(np.float32(1.0), 0, U8), padding=1, groups=2, accumulation="int16_pairs"
    )
    np.testing.assert_array_equal(layer.accumulate(x), got)
    assert layer.saturates_pairs


def test_pairs_need_uint8_activations_and_int8_weights():
    x = np.zeros((2, 4), np.int8)
    w = np.zeros((3, 4), np.int8)
    with pytest.raises(ValueError, match="uint8 activation"):
        linear_accumulate(
            x,
            QParams(np.float32(0.1), 0, QuantSpec()),
            w,
            QParams(np.float32(0.1), 0, QuantSpec()),
            accumulation="int16_pairs",
        )
    with pytest.raises(ValueError, match="uint8 activation"):
        QLinear(
            w.astype(np.uint8),
            QParams(np.float32(0.1), 0, U8),
            None,
            QParams(np.float32(0.1), 0, U8),
            QParams(np.float32(0.1), 0, U8),
            accumulation="mlas_avx2",
        )
    # exact on VNNI: a library's mode is accepted where it does not saturate
    QLinear(
        w,
        QParams(np.float32(0.1), 0, QuantSpec()),
        None,
        QParams(np.float32(0.1), 0, QuantSpec()),
        QParams(np.float32(0.1), 0, QuantSpec()),
        accumulation="mlas_vnni",
    )
    with pytest.raises(ValueError, match="accumulation"):
        qlinear(
            x.astype(np.uint8),
            QParams(np.float32(0.1), 0, U8),
            w,
            QParams(np.float32(0.1), 0, QuantSpec()),
            None,
            QParams(np.float32(0.1), 0, U8),
            accumulation="vpmaddubsw",
        )


def test_gemm_kernel_is_chosen_forced_and_checked(monkeypatch):
    monkeypatch.delenv("NPQUANT_GEMM_KERNEL", raising=False)
    assert gemm_kernel() == KERNELS[0]
    monkeypatch.setenv("NPQUANT_GEMM_KERNEL", "portable")
    assert gemm_kernel() == "portable"
    with use_gemm_kernel(KERNELS[0]):
        assert gemm_kernel() == KERNELS[0]  # the context wins over the environment
    assert gemm_kernel() == "portable"
    monkeypatch.setenv("NPQUANT_GEMM_KERNEL", "sse")
    with pytest.raises(ValueError, match="NPQUANT_GEMM_KERNEL"):
        gemm_kernel()
    monkeypatch.delenv("NPQUANT_GEMM_KERNEL")
    with pytest.raises(ValueError, match="name"):
        gemm_kernel("avx1024")
    if "vnni" not in KERNELS:
        with pytest.raises(ValueError, match="cannot run"):
            use_gemm_kernel("vnni")


def test_explain_lists_pairs_and_saturation():
    x = np.array([[255, 255, 3, 4, 200]], np.uint8)
    w = np.array([[-128, -128, 5, 6, 100]], np.int8)
    x_qp, w_qp = QParams(np.float32(0.05), 7, U8), QParams(np.float32(0.01), 0, QuantSpec())
    y_qp = QParams(np.float32(20.0), 128, U8)
    e = explain_linear(x, x_qp, w, w_qp, None, y_qp, 0, 0, mode="fp32", accumulation="int16_pairs")
    assert e.acc == int(linear_accumulate(x, x_qp, w, w_qp, accumulation="int16_pairs")[0, 0])
    assert e.exact_acc == int(linear_accumulate(x, x_qp, w, w_qp)[0, 0]) != e.acc
    assert [p[1:] for p in e.pairs] == [(-65280, -32768), (39, 39), (20000, 20000)]
    text = str(e)
    assert "saturates to -32768" in text and "1 of 3 pairs saturated" in text
    assert e.code == int(qlinear(x, x_qp, w, w_qp, None, y_qp, mode="fp32", accumulation="int16_pairs")[0, 0])
    exact = explain_linear(x, x_qp, w, w_qp, None, y_qp, 0, 0, mode="fp32")
    assert not exact.pairs and "pair" not in str(exact)


def test_explain_conv_in_fbgemm_order():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (8, 1, 3, 3)).astype(np.int8)
    x_qp, w_qp = QParams(np.float32(0.05), 240, U8), QParams(np.full(8, 0.01, np.float32), 0, QuantSpec(axis=0))
    y_qp = QParams(np.float32(5.0), 128, U8)
    kw = dict(padding=1, groups=8, mode="fp32")
    for mode in ("fbgemm_vnni", "fbgemm_avx2", "mlas_avx2", "exact"):
        accs = conv2d_accumulate(x, x_qp, w, w_qp, padding=1, groups=8, accumulation=mode)
        codes = qconv2d(x, x_qp, w, w_qp, None, y_qp, accumulation=mode, **kw)
        for idx in [(0, 0, 0, 0), (0, 5, 3, 2), (0, 7, 5, 5)]:
            e = explain_conv2d(x, x_qp, w, w_qp, None, y_qp, idx, accumulation=mode, **kw)
            assert e.acc == accs[idx] and e.code == codes[idx]
            assert bool(e.pairs) == (mode in ("fbgemm_vnni", "fbgemm_avx2"))  # depthwise: fbgemm pairs taps


@pytest.mark.parametrize(
    "env, want",
    [
        (
            {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,-avx512f,-avx512vnni"},
            "('avx2', 'portable')",
        ),
        ({"NUMBA_CPU_NAME": "haswell"}, "('portable',)"),
    ],
)
def test_kernel_choice_follows_numbas_compile_target(env, want):
    """numba told to compile for another CPU: npquant picks the kernels that CPU runs,
    while a peer's path still follows the real host."""
    import os
    import subprocess
    import sys

    code = (
        "from npquant.qnn import available_gemm_kernels as a, host_path as h; "
        "from npquant._kernels.cpu import cpu_features as f; "
        "print(a()); print(h('mlas', f()) == h('mlas'))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "NPQUANT_GEMM"))}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        want = "('vnni', 'avx2', 'portable')"  # the JIT-off pass runs every kernel as Python
    assert done.stdout.split("\n")[:2] == [want, "True"]
