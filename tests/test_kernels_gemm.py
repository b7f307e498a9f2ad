"""The fast 8-bit GEMM kernels and their vector operations against NumPy, bit for bit.

Runs with the JIT (compiled kernels; the VNNI kernels only on a CPU with AVX-512 VNNI,
the AVX2 kernels only on a CPU with AVX2) and with ``NUMBA_DISABLE_JIT=1`` (the kernels
as Python; the vector operations are then their NumPy definitions, so every kernel's
tiling is tested on any CPU).
"""

import numpy as np
import pytest
from numba.core import config

from npquant import QParams, QuantSpec
from npquant._kernels import gemm as kg
from npquant._kernels import simd
from npquant.qnn.gemm import _gemm_u8s8_numpy
from npquant.qnn.linear import linear_accumulate

RUNS_VNNI = simd.HAVE_VNNI or config.DISABLE_JIT
RUNS_AVX2 = simd.HAVE_AVX2 or config.DISABLE_JIT
KERNELS = [
    pytest.param(
        kg.gemm_u8s8_vnni, id="vnni", marks=pytest.mark.skipif(not RUNS_VNNI, reason="this CPU has no AVX-512 VNNI")
    ),
    pytest.param(kg.gemm_u8s8_portable, id="portable"),
]


def _operands(rng, m, o, kp, extreme=False):
    if extreme:  # the largest products, every lane
        xu = np.full((m, kp), 255, np.uint8)
        ws = np.full((o, kp), -128, np.int8)
    else:
        xu = rng.integers(0, 256, (m, kp), dtype=np.uint8)
        ws = rng.integers(-128, 128, (o, kp), dtype=np.int8)
    dw = rng.integers(-(2**31), 2**31, o, dtype=np.int64).astype(np.int32)
    col = rng.integers(-(2**31), 2**31, o, dtype=np.int64).astype(np.int32)
    return xu, ws, dw, col


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "m, o, kp",
    [
        (0, 4, 64),
        (3, 0, 64),
        (0, 0, 64),
        (1, 1, 64),
        (1, 4, 64),
        (1, 9, 128),
        (4, 4, 64),
        (5, 7, 128),
        (9, 13, 192),
        (8, 8, 320),
    ],
)
def test_kernel_equals_twin(kernel, m, o, kp):
    rng = np.random.default_rng(m * 1000 + o * 10 + kp)
    xu, ws, dw, col = _operands(rng, m, o, kp)
    out = np.full((m, o), 7, np.int32)
    kernel(xu, ws, dw, col, out)
    np.testing.assert_array_equal(out, _gemm_u8s8_numpy(xu, ws, dw, col))


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_extreme_products_and_wrapping(kernel):
    rng = np.random.default_rng(3)
    xu, ws, dw, col = _operands(rng, 6, 5, 256, extreme=True)
    dw[:] = np.int32(2**31 - 1)  # dw * rowsum and col wrap int32
    out = np.empty((6, 5), np.int32)
    kernel(xu, ws, dw, col, out)
    np.testing.assert_array_equal(out, _gemm_u8s8_numpy(xu, ws, dw, col))


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_on_row_views(kernel):
    """Rows of a larger C-contiguous buffer (what a convolution group passes)."""
    rng = np.random.default_rng(4)
    xu, ws, dw, col = _operands(rng, 10, 12, 128)
    out = np.empty((7, 5), np.int32)
    kernel(xu[2:9], ws[4:9], dw[4:9], col[4:9], out)
    np.testing.assert_array_equal(out, _gemm_u8s8_numpy(xu[2:9], ws[4:9], dw[4:9], col[4:9]))


@pytest.mark.skipif(not RUNS_VNNI, reason="this CPU has no AVX-512 VNNI")
@pytest.mark.parametrize(
    "m, o, k",
    [
        (0, 5, 8),
        (6, 0, 4),
        (1, 1, 1),
        (5, 64, 4),
        (6, 64, 4),
        (7, 65, 12),
        (13, 130, 72),
        (12, 8, 9),
        (18, 17, 100),
        (40, 200, 36),
    ],
)
def test_packed_kernel_equals_twin(m, o, k):
    rng = np.random.default_rng(m * 1000 + o * 10 + k)
    kp = -(-k // 4) * 4 if k else 4
    xu = np.zeros((m, kp), np.uint8)
    xu[:, :k] = rng.integers(0, 256, (m, k))
    ws = rng.integers(-128, 128, (o, k), dtype=np.int8)
    _, _, dw, col = _operands(rng, 0, o, 4)
    wpad = np.zeros((o, kp), np.int8)
    wpad[:, :k] = ws
    out = np.full((m, o), 7, np.int32)
    kg.gemm_u8s8_vnni_packed(xu, kg.pack_panels(ws, kp), dw, col, out)
    np.testing.assert_array_equal(out, _gemm_u8s8_numpy(xu, wpad, dw, col))


def test_pack_panels_layout():
    rng = np.random.default_rng(8)
    ws = rng.integers(-128, 128, (70, 9), dtype=np.int8)
    wp = kg.pack_panels(ws, 12)
    assert wp.shape == (2, 12 * 64) and wp.dtype == np.int8
    for g, q, j, c, t in [(0, 0, 0, 0, 0), (0, 2, 3, 15, 0), (1, 1, 0, 5, 3), (1, 0, 0, 6, 2), (1, 2, 1, 0, 1)]:
        n, kk = 64 * g + 16 * j + c, 4 * q + t
        want = ws[n, kk] if n < 70 and kk < 9 else 0
        assert wp[g, (q * 4 + j) * 64 + c * 4 + t] == want


def _bytes(rng, n, signed):
    lo, hi = (-128, 128) if signed else (0, 256)
    return rng.integers(lo, hi, n).astype(np.int8 if signed else np.uint8)


@pytest.mark.parametrize("x_signed, w_signed", [(False, True), (True, True), (False, False), (True, False)])
@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("rows", [5, 13])  # below and above the packed kernel's 6 rows
def test_public_fast_path_equals_numpy_backend(x_signed, w_signed, k, rows):
    """Each sign pair, K around the 64-byte padding, strided and Fortran-ordered inputs."""
    rng = np.random.default_rng(k + 10 * x_signed + 20 * w_signed)
    o = 6
    x_spec = QuantSpec(bits=8, signed=x_signed)
    w_spec = QuantSpec(bits=8, signed=w_signed, axis=0)
    x_qp = QParams(np.float32(0.05), np.int32(3 if x_signed else 131), x_spec)
    w_qp = QParams(
        np.full(o, 0.01, np.float32), rng.integers(-5, 5, o).astype(np.int32) + (0 if w_signed else 128), w_spec
    )
    w = _bytes(rng, (o, k), w_signed)
    bias = rng.integers(-(10**6), 10**6, o).astype(np.int32)
    big = _bytes(rng, (rows, 2 * k), x_signed)
    for x in (big[:, ::2], np.asfortranarray(big[:, :k]), big[:1, :k]):
        ref = linear_accumulate(x, x_qp, w, w_qp, bias, backend="numpy")
        np.testing.assert_array_equal(linear_accumulate(x, x_qp, w, w_qp, bias), ref)


def test_public_fast_path_wraps_like_the_twin():
    k, o = 64, 3
    x_qp = QParams(np.float32(1.0), np.int32(0), QuantSpec(bits=8, signed=False))
    w_qp = QParams(np.float32(1.0), np.int32(0), QuantSpec(bits=8, signed=True))
    x = np.full((2, k), 255, np.uint8)
    w = np.full((o, k), 127, np.int8)
    bias = np.full(o, 2**31 - 1000, np.int32)
    ref = linear_accumulate(x, x_qp, w, w_qp, bias, overflow="wrap", backend="numpy")
    assert ref.min() < 0  # it did wrap
    np.testing.assert_array_equal(linear_accumulate(x, x_qp, w, w_qp, bias, overflow="wrap"), ref)


# ---- the vector operations -----------------------------------------------------------

if RUNS_VNNI:
    from numba import njit

    @njit
    def _dpbusd_sum(a, b):
        acc = simd.vzero()
        for k in range(0, a.shape[0], 64):
            acc = simd.vdpbusd(acc, simd.vload(a, k), simd.vload(b, k))
        return simd.vsum(acc)

    @njit
    def _reduce_store(a, out):
        r = simd.vreduce16(
            simd.vload(a[0], 0),
            simd.vload(a[1], 0),
            simd.vload(a[2], 0),
            simd.vload(a[3], 0),
            simd.vload(a[4], 0),
            simd.vload(a[5], 0),
            simd.vload(a[6], 0),
            simd.vload(a[7], 0),
            simd.vload(a[8], 0),
            simd.vload(a[9], 0),
            simd.vload(a[10], 0),
            simd.vload(a[11], 0),
            simd.vload(a[12], 0),
            simd.vload(a[13], 0),
            simd.vload(a[14], 0),
            simd.vload(a[15], 0),
        )
        simd.vstore4(out, 0, 0, r, 0)
        simd.vstore4(out, 1, 0, r, 1)
        simd.vstore4(out, 2, 0, r, 2)
        simd.vstore4(out, 3, 0, r, 3)


@pytest.mark.skipif(not RUNS_VNNI, reason="this CPU has no AVX-512 VNNI")
def test_vdpbusd_and_vsum_are_wrapped_byte_dot_products():
    rng = np.random.default_rng(5)
    for kp in (64, 128, 640):
        a = rng.integers(0, 256, kp, dtype=np.uint8)
        b = rng.integers(-128, 128, kp, dtype=np.int8)
        exact = int(a.astype(np.int64) @ b.astype(np.int64))
        assert int(_dpbusd_sum(a, b)) == exact
    # int8 bytes read as unsigned by the first operand
    a = np.full(64, -1, np.int8)
    b = np.full(64, 2, np.int8)
    assert int(_dpbusd_sum(a, b)) == 255 * 2 * 64


@pytest.mark.skipif(not RUNS_VNNI, reason="this CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("n", [-3, 0, 1, 7, 16, 40])
def test_vbcast4_and_masked_vstore16(n):
    a = np.arange(1, 13, dtype=np.uint8)
    out = np.full((2, 24), -1, np.int32)
    _bcast_store(a, out, n)
    word = int(a[4:8].view("<i4")[0])
    want = np.full((2, 24), -1, np.int32)
    want[1, 3 : 3 + min(max(n, 0), 16)] = word
    np.testing.assert_array_equal(out, want)


if RUNS_VNNI:

    @njit
    def _bcast_store(a, out, n):
        simd.vstore16(out, 1, 3, simd.vbcast4(a, 4), n)


@pytest.mark.skipif(not RUNS_VNNI, reason="this CPU has no AVX-512 VNNI")
def test_vreduce16_puts_sum_j_in_lane_j():
    rng = np.random.default_rng(6)
    rows = rng.integers(-(2**31), 2**31, (16, 16), dtype=np.int64).astype(np.int32)
    a = np.ascontiguousarray(rows).view(np.uint8)  # (16, 64) bytes, one vector a row
    out = np.zeros((4, 4), np.int32)
    _reduce_store(a, out)
    sums = rows.astype(np.int64).sum(axis=1).astype(np.int32)  # wrapped
    np.testing.assert_array_equal(out.ravel(), sums)


# ---- the AVX2 kernels: exact (vpmaddwd) and pair-saturating (vpmaddubsw) -------------


def _wrap(v):
    return (((np.asarray(v, np.int64) + 2**31) & 0xFFFFFFFF) - 2**31).astype(np.int32)


def _sat16_reference(xu, ws, dw, col):
    """sum over pairs (0,1), (2,3), ... of the int16-clamped pair sums, then the zero-point
    terms; independent of the library: int64 throughout, wrapped to int32 at the end."""
    m, kp = xu.shape
    x = xu.astype(np.int64).reshape(m, 1, kp // 2, 2)
    w = ws.astype(np.int64).reshape(1, ws.shape[0], kp // 2, 2)
    pairs = np.clip((x * w).sum(axis=3), -32768, 32767)
    s = pairs.sum(axis=2)
    return _wrap(s - xu.astype(np.int64).sum(axis=1, keepdims=True) * dw.astype(np.int64) + col.astype(np.int64))


def _pad_rows(ws, kp):
    """The layout of the portable pair-saturating kernel: rows zero-padded to kp."""
    out = np.zeros((ws.shape[0], kp), np.int8)
    out[:, : ws.shape[1]] = ws
    return out


_skip_avx2 = pytest.mark.skipif(not RUNS_AVX2, reason="this CPU has no AVX2")
AVX2_KERNELS = [  # with the portable pair-saturating kernel, which runs on any CPU
    pytest.param(
        (kg.gemm_u8s8_avx2, kg.pack_panels_avx2, kg.AVX2_K_ALIGN, _gemm_u8s8_numpy), id="avx2", marks=_skip_avx2
    ),
    pytest.param(
        (kg.gemm_u8s8_avx2_sat16, kg.pack_panels_avx2_sat16, kg.AVX2_SAT16_K_ALIGN, _sat16_reference),
        id="avx2_sat16",
        marks=_skip_avx2,
    ),
    pytest.param((kg.gemm_u8s8_pairs_portable, _pad_rows, 2, _sat16_reference), id="pairs_portable"),
]


def test_library_pairs_twin_is_the_reference():
    rng = np.random.default_rng(21)
    for m, o, kp in [(3, 5, 8), (9, 17, 66), (1, 1, 2)]:
        xu, ws, dw, col = _operands(rng, m, o, kp)
        np.testing.assert_array_equal(_gemm_u8s8_numpy(xu, ws, dw, col, pairs=True), _sat16_reference(xu, ws, dw, col))


_O = [7, 8, 9, 15, 16, 17, 65]
_K = [1, 2, 3, 4, 5, 7, 8, 9, 12, 63, 64, 65, 66]
AVX2_SHAPES = (
    [(0, 5, 8), (6, 0, 4), (0, 0, 4), (1, 1, 1), (1, 1, 2), (1, 16, 3), (2, 1, 6)]
    + [(m, _O[m % 7], _K[m - 1]) for m in range(1, 14)]
    # K over more than one K block of the tiles (512 bytes of a row)
    + [(6, 17, 300), (13, 9, 530), (1, 16, 1030), (5, 33, 257)]
)


def _run_avx2(spec, xu, ws, dw, col):
    kernel, pack, align, _ = spec
    assert xu.shape[1] % align == 0
    out = np.full((xu.shape[0], ws.shape[0]), 7, np.int32)
    kernel(xu, pack(ws, xu.shape[1]), dw, col, out)
    return out


def _padded(rng, m, o, k, align):
    kp = max(align, -(-k // align) * align)
    xu = np.zeros((m, kp), np.uint8)
    xu[:, :k] = rng.integers(0, 256, (m, k))
    ws = rng.integers(-128, 128, (o, k), dtype=np.int8)
    wpad = np.zeros((o, kp), np.int8)
    wpad[:, :k] = ws
    return xu, ws, wpad


@pytest.mark.parametrize("spec", AVX2_KERNELS)
@pytest.mark.parametrize("m, o, k", AVX2_SHAPES)
def test_avx2_kernel_equals_reference(spec, m, o, k):
    rng = np.random.default_rng(m * 10000 + o * 10 + k)
    xu, ws, wpad = _padded(rng, m, o, k, spec[2])
    _, _, dw, col = _operands(rng, 0, o, 4)
    out = _run_avx2(spec, xu, ws, dw, col)  # packs the unpadded rows: the packing pads K
    np.testing.assert_array_equal(out, spec[3](xu, wpad, dw, col))
    np.testing.assert_array_equal(_run_avx2(spec, xu, wpad, dw, col), out)


@pytest.mark.parametrize("spec", AVX2_KERNELS)
@pytest.mark.parametrize("w_value", [-128, 127])
@pytest.mark.parametrize("m, o, k", [(7, 17, 40), (1, 9, 8)])
def test_avx2_kernel_extreme_operands_and_wrapping(spec, w_value, m, o, k):
    """255 x -128 saturates every pair (-65280 -> -32768), 255 x 127 too (64770 -> 32767);
    dw and col at the int32 extremes make every zero-point term wrap."""
    xu = np.full((m, k), 255, np.uint8)
    ws = np.full((o, k), w_value, np.int8)
    dw = np.array([2**31 - 1, -(2**31), -1, 1] * o, np.int64)[:o].astype(np.int32)
    col = np.array([-(2**31), 2**31 - 1, 12345] * o, np.int64)[:o].astype(np.int32)
    out = _run_avx2(spec, xu, ws, dw, col)
    want = spec[3](xu, ws, dw, col)
    np.testing.assert_array_equal(out, want)
    exact, sat = _gemm_u8s8_numpy(xu, ws, dw, col), _sat16_reference(xu, ws, dw, col)
    assert not np.array_equal(exact, sat)  # the two products differ here
    np.testing.assert_array_equal(out, exact if spec[0] is kg.gemm_u8s8_avx2 else sat)


@pytest.mark.parametrize("spec", AVX2_KERNELS)
def test_avx2_kernel_on_row_views(spec):
    """Rows of a larger C-contiguous buffer (what a convolution group passes)."""
    rng = np.random.default_rng(14)
    xu, ws, dw, col = _operands(rng, 12, 20, 16)
    out = np.full((8, 11), 7, np.int32)
    kernel, pack, _, ref = spec
    kernel(xu[2:10], pack(ws[4:15], 16), dw[4:15], col[4:15], out)
    np.testing.assert_array_equal(out, ref(xu[2:10], ws[4:15], dw[4:15], col[4:15]))


def test_pack_panels_avx2_layout():
    rng = np.random.default_rng(9)
    ws = rng.integers(-128, 128, (20, 7), dtype=np.int8)
    wp = kg.pack_panels_avx2(ws, 8)
    assert wp.shape == (2, 8 * 16) and wp.dtype == np.int16
    for g in range(2):
        for k in range(0, 8, 2):
            for j in range(2):
                for c in range(8):
                    for t in range(2):
                        n, kk = 16 * g + 8 * j + c, k + t
                        want = ws[n, kk] if n < 20 and kk < 7 else 0
                        assert wp[g, (k // 2) * 32 + 16 * j + 2 * c + t] == want
    # the byte the kernel reads: k * 32 + 32 j + 4 c + 2 t, little-endian int16
    b = wp.view(np.uint8)
    assert b[0, 2 * 32 + 32 * 1 + 4 * 3 + 2 * 1] == ws[8 + 3, 3].view(np.uint8)
    assert b[0, 2 * 32 + 32 * 1 + 4 * 3 + 2 * 1 + 1] == (0xFF if ws[8 + 3, 3] < 0 else 0)


def test_pack_panels_avx2_sat16_layout():
    rng = np.random.default_rng(10)
    ws = rng.integers(-128, 128, (20, 7), dtype=np.int8)
    wp = kg.pack_panels_avx2_sat16(ws, 8)
    assert wp.shape == (2, 8 * 16) and wp.dtype == np.int8
    for g in range(2):
        for k in range(0, 8, 4):
            for j in range(2):
                for c in range(8):
                    for t in range(4):
                        n, kk = 16 * g + 8 * j + c, k + t
                        want = ws[n, kk] if n < 20 and kk < 7 else 0
                        assert wp[g, (k // 4) * 64 + 32 * j + 4 * c + t] == want


# ---- the 256-bit vector operations -----------------------------------------------------

if RUNS_AVX2:
    from numba import njit

    @njit
    def _maddwd_sum(a, b):
        acc = simd.v8zero()
        for k in range(0, a.shape[0], 32):
            acc = simd.v8maddwd(acc, simd.v8load(a, k), simd.v8load(b, k))
        return simd.v8sum(acc)

    @njit
    def _maddwd_lanes(c, a, b, out):
        simd.v8store(out, 0, 0, simd.v8maddwd(simd.v8load(c, 0), simd.v8load(a, 0), simd.v8load(b, 0)), 8)

    @njit
    def _maddubs_lanes(c, a, b, out):
        simd.v8store(out, 0, 0, simd.v8maddubs(simd.v8load(c, 0), simd.v8load(a, 0), simd.v8load(b, 0)), 8)

    @njit
    def _bcast_store8(a, out, n):
        simd.v8store(out, 1, 3, simd.v8bcast4(a, 4), n)

    @njit
    def _loadn_store(src, out, n):
        simd.v8store(out, 0, 0, simd.v8loadn(src, 1, 2, n), 8)


def _lanes_i32(words):
    return np.ascontiguousarray(np.asarray(words, np.int64).astype(np.int32)).view(np.uint8)


@pytest.mark.skipif(not RUNS_AVX2, reason="this CPU has no AVX2")
def test_v8maddwd_is_a_wrapped_word_dot_product():
    rng = np.random.default_rng(11)
    for kp in (32, 64, 320):
        a = rng.integers(-(2**15), 2**15, kp // 2).astype(np.int16)
        b = rng.integers(-(2**15), 2**15, kp // 2).astype(np.int16)
        exact = int(a.astype(np.int64) @ b.astype(np.int64))
        want = (exact + 2**31) % 2**32 - 2**31
        assert int(_maddwd_sum(a.view(np.uint8), b.view(np.uint8))) == want
    # per lane: c + a0 b0 + a1 b1, wrapped; lane 0 is the one case vpmaddwd itself wraps
    a = rng.integers(-(2**15), 2**15, 16).astype(np.int16)
    b = rng.integers(-(2**15), 2**15, 16).astype(np.int16)
    a[:2] = b[:2] = -(2**15)
    c = rng.integers(-(2**31), 2**31, 8, dtype=np.int64)
    c[1] = 2**31 - 1
    out = np.zeros((1, 8), np.int32)
    _maddwd_lanes(_lanes_i32(c), a.view(np.uint8), b.view(np.uint8), out)
    p = (a.astype(np.int64) * b.astype(np.int64)).reshape(8, 2).sum(axis=1)
    np.testing.assert_array_equal(out[0], _wrap(c + p))


@pytest.mark.skipif(not RUNS_AVX2, reason="this CPU has no AVX2")
def test_v8maddubs_saturates_each_byte_pair():
    rng = np.random.default_rng(12)
    for trial in range(4):
        a = rng.integers(0, 256, 32).astype(np.uint8)
        b = rng.integers(-128, 128, 32).astype(np.int8)
        if trial == 1:
            a[:] = 255
            b[::2] = -128
            b[1::2] = 127
        if trial == 2:
            a[:] = 255
            b[:16], b[16:] = -128, 127
        c = rng.integers(-(2**31), 2**31, 8, dtype=np.int64)
        c[0], c[1] = 2**31 - 1, -(2**31)
        out = np.zeros((1, 8), np.int32)
        _maddubs_lanes(_lanes_i32(c), a, b.view(np.uint8), out)
        pairs = (a.astype(np.int64) * b.astype(np.int64)).reshape(16, 2).sum(axis=1)
        want = _wrap(c + np.clip(pairs, -32768, 32767).reshape(8, 2).sum(axis=1))
        np.testing.assert_array_equal(out[0], want)


@pytest.mark.skipif(not RUNS_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("n", [-3, 0, 1, 5, 8, 12])
def test_v8bcast4_v8loadn_and_masked_v8store(n):
    a = np.arange(1, 13, dtype=np.uint8)
    out = np.full((2, 16), -1, np.int32)
    _bcast_store8(a, out, n)
    word = int(a[4:8].view("<i4")[0])
    want = np.full((2, 16), -1, np.int32)
    want[1, 3 : 3 + min(max(n, 0), 8)] = word
    np.testing.assert_array_equal(out, want)
    src = np.arange(40, dtype=np.int32).reshape(2, 20) - 5
    got = np.full((1, 8), -1, np.int32)
    _loadn_store(src, got, n)
    want = np.zeros(8, np.int32)
    want[: min(max(n, 0), 8)] = src[1, 2 : 2 + min(max(n, 0), 8)]
    np.testing.assert_array_equal(got[0], want)
