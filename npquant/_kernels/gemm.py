"""numba kernels of the integer matrix product (int8/uint8 codes, int32 accumulators).

Twins: ``npquant.qnn.gemm._gemm_direct_numpy`` and ``_gemm_folded_numpy`` (any integer
codes), ``_gemm_u8s8_numpy`` (the fast 8-bit kernels below: ``gemm_u8s8_vnni``,
``gemm_u8s8_vnni_packed``, ``gemm_u8s8_portable`` and ``gemm_u8s8_avx2``), and
``_gemm_u8s8_numpy(..., pairs=True)`` (``gemm_u8s8_avx2_sat16`` and ``gemm_u8s8_pairs_portable``,
int16 pair saturation).

Accumulation is int32 two's complement: every partial sum is formed in int64 and cast
back with ``np.int32(...)``, or added by ``vpdpbusd`` in int32 lanes, which wraps
identically under the JIT and in plain Python. The wrappers check that the final sums
fit int32 (or ask for wrapping).
"""

import numpy as np
from numba import prange

from ._jit import njit
from .simd import (
    v8bcast4,
    v8load,
    v8loadn,
    v8maddubs,
    v8maddwd,
    v8store,
    v8zero,
    vbcast4,
    vdpbusd,
    vload,
    vreduce16,
    vstore4,
    vstore16,
    vsum,
    vzero,
)


@njit(cache=True)
def gemm_direct(x, zx, w, zw, bias, out):
    """out[i, o] = bias[o] + sum_j (x[i, j] - zx) * (w[o, j] - zw[o]), int32.

    ``x`` (N, K) and ``w`` (O, K) integer codes, C-contiguous; ``zx`` int32;
    ``zw`` and ``bias`` int32 of length O; ``out`` int32 (N, O).
    """
    n_rows, k = x.shape
    n_out = w.shape[0]
    zx64 = np.int64(zx)
    for i in range(n_rows):
        for o in range(n_out):
            zwo = np.int64(zw[o])
            acc = np.int32(bias[o])
            for j in range(k):
                a = np.int64(x[i, j]) - zx64
                b = np.int64(w[o, j]) - zwo
                acc = np.int32(np.int64(acc) + a * b)
            out[i, o] = acc


@njit(cache=True)
def gemm_folded(x, w, zw, bias_folded, out):
    """out[i, o] = bias_folded[o] - zw[o] * sum_j x[i, j] + sum_j x[i, j] * w[o, j], int32.

    The zero-point-folded product of Jacob et al. (2018), eq. 7: ``bias_folded`` holds
    ``bias + K * zx * zw - zx * sum_j w[o, j]`` (precomputed once per layer); the input
    row sums are formed here. Raw code products may wrap int32 on the way; modular
    arithmetic makes the result exact whenever the true sum fits int32.
    """
    n_rows, k = x.shape
    n_out = w.shape[0]
    for i in range(n_rows):
        xsum = np.int32(0)
        for j in range(k):
            xsum = np.int32(np.int64(xsum) + np.int64(x[i, j]))
        for o in range(n_out):
            acc = np.int32(np.int64(bias_folded[o]) - np.int64(zw[o]) * np.int64(xsum))
            for j in range(k):
                acc = np.int32(np.int64(acc) + np.int64(x[i, j]) * np.int64(w[o, j]))
            out[i, o] = acc


# ---- the fast 8-bit path: unsigned x signed byte products ------------------------------
#
# ``xu`` (M, Kp) uint8 and ``ws`` (O, Kp) int8, C-contiguous, Kp a multiple of 64 (the
# wrapper pads both with zero bytes, which add nothing; the packed kernel further down
# takes Kp a multiple of 4 and its own weight layout). Every kernel computes
#
#     out[i, o] = sum_k xu[i, k] * ws[o, k] - dw[o] * sum_k xu[i, k] + col[o]
#
# in int32 two's complement (every step wraps, so the result is the exact value mod
# 2**32). The wrapper (``npquant.qnn.gemm``) chooses ``dw`` and ``col`` so that this
# equals the layer's accumulator; twin: ``npquant.qnn.gemm._gemm_u8s8_numpy``.
# The two kernels here split output columns over numba's threads in blocks of four.


@njit(cache=True, inline="always")
def _dp4(c0, c1, c2, c3, a, b0, b1, b2, b3):
    """Four ``vpdpbusd`` of one input vector ``a`` against four weight vectors."""
    return vdpbusd(c0, a, b0), vdpbusd(c1, a, b1), vdpbusd(c2, a, b2), vdpbusd(c3, a, b3)


@njit(cache=True)
def _tile4x4_vnni(xu, i, ws, o, out):
    """out[i:i+4, o:o+4] = raw products of 4 rows by 4 columns, with vpdpbusd."""
    x0, x1, x2, x3 = xu[i], xu[i + 1], xu[i + 2], xu[i + 3]
    w0, w1, w2, w3 = ws[o], ws[o + 1], ws[o + 2], ws[o + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero()
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = vzero()
    for k in range(0, xu.shape[1], 64):
        b0, b1, b2, b3 = vload(w0, k), vload(w1, k), vload(w2, k), vload(w3, k)
        a00, a01, a02, a03 = _dp4(a00, a01, a02, a03, vload(x0, k), b0, b1, b2, b3)
        a10, a11, a12, a13 = _dp4(a10, a11, a12, a13, vload(x1, k), b0, b1, b2, b3)
        a20, a21, a22, a23 = _dp4(a20, a21, a22, a23, vload(x2, k), b0, b1, b2, b3)
        a30, a31, a32, a33 = _dp4(a30, a31, a32, a33, vload(x3, k), b0, b1, b2, b3)
    s = vreduce16(a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)
    vstore4(out, i, o, s, 0)
    vstore4(out, i + 1, o, s, 1)
    vstore4(out, i + 2, o, s, 2)
    vstore4(out, i + 3, o, s, 3)


@njit(cache=True)
def _tile1x4_vnni(xu, i, ws, o, out):
    x0 = xu[i]
    w0, w1, w2, w3 = ws[o], ws[o + 1], ws[o + 2], ws[o + 3]
    a0 = a1 = a2 = a3 = vzero()
    for k in range(0, xu.shape[1], 64):
        a0, a1, a2, a3 = _dp4(a0, a1, a2, a3, vload(x0, k), vload(w0, k), vload(w1, k), vload(w2, k), vload(w3, k))
    out[i, o], out[i, o + 1], out[i, o + 2], out[i, o + 3] = vsum(a0), vsum(a1), vsum(a2), vsum(a3)


@njit(cache=True)
def _dot_vnni(x, w):
    a = vzero()
    for k in range(0, x.shape[0], 64):
        a = vdpbusd(a, vload(x, k), vload(w, k))
    return vsum(a)


@njit(cache=True, parallel=True)
def _epilogue(xu, dw, col, row_sum, out):
    """out[i, o] += col[o] - dw[o] * row_sum[i], wrapped to int32."""
    m, n_out = out.shape
    for i in prange(m):
        r = np.int64(row_sum[i])
        for o in range(n_out):
            out[i, o] = np.int32(np.int64(out[i, o]) + np.int64(col[o]) - np.int64(dw[o]) * r)


@njit(cache=True, parallel=True)
def gemm_u8s8_vnni(xu, ws, dw, col, out):
    """The fast 8-bit product (see above) with AVX-512 VNNI: only where ``simd.HAVE_VNNI``.

    Tiles of 4 rows x 4 columns keep 16 vector accumulators in registers; each step
    loads 8 vectors of 64 bytes and issues 16 ``vpdpbusd`` (1,024 multiply-adds).
    """
    m, n_out = out.shape
    ones = np.ones(xu.shape[1], np.int8)
    row_sum = np.empty(m, np.int32)
    for i in prange(m):
        row_sum[i] = _dot_vnni(xu[i], ones)
    m4 = m - m % 4
    for ob in prange(n_out // 4):
        o = ob * 4
        for i in range(0, m4, 4):
            _tile4x4_vnni(xu, i, ws, o, out)
        for i in range(m4, m):
            _tile1x4_vnni(xu, i, ws, o, out)
    for i in prange(m):
        for o in range(n_out - n_out % 4, n_out):
            out[i, o] = _dot_vnni(xu[i], ws[o])
    _epilogue(xu, dw, col, row_sum, out)


@njit(cache=True, parallel=True)
def gemm_u8s8_portable(xu, ws, dw, col, out):
    """The fast 8-bit product (see above) in plain numba, for any CPU.

    4 x 4 register tiles; LLVM vectorizes the k loop (``vpmaddwd`` or ``vpdpwssd`` where
    the CPU has them). ``NPQUANT_GEMM_KERNEL=portable python -m benchmarks --kernels gemm``
    times it against the others.
    """
    m, n_out = out.shape
    kp = xu.shape[1]
    row_sum = np.empty(m, np.int32)
    for i in prange(m):
        s = np.int32(0)
        for k in range(kp):
            s = np.int32(s + np.int32(xu[i, k]))
        row_sum[i] = s
    m4 = m - m % 4
    for ob in prange((n_out + 3) // 4):
        o0 = ob * 4
        if o0 + 4 <= n_out:
            w0, w1, w2, w3 = ws[o0], ws[o0 + 1], ws[o0 + 2], ws[o0 + 3]
            for i in range(0, m4, 4):
                x0, x1, x2, x3 = xu[i], xu[i + 1], xu[i + 2], xu[i + 3]
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.int32(0)
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.int32(0)
                for k in range(kp):
                    p0, p1, p2, p3 = np.int32(x0[k]), np.int32(x1[k]), np.int32(x2[k]), np.int32(x3[k])
                    q0, q1, q2, q3 = np.int32(w0[k]), np.int32(w1[k]), np.int32(w2[k]), np.int32(w3[k])
                    a00, a01 = np.int32(a00 + np.int32(p0 * q0)), np.int32(a01 + np.int32(p0 * q1))
                    a02, a03 = np.int32(a02 + np.int32(p0 * q2)), np.int32(a03 + np.int32(p0 * q3))
                    a10, a11 = np.int32(a10 + np.int32(p1 * q0)), np.int32(a11 + np.int32(p1 * q1))
                    a12, a13 = np.int32(a12 + np.int32(p1 * q2)), np.int32(a13 + np.int32(p1 * q3))
                    a20, a21 = np.int32(a20 + np.int32(p2 * q0)), np.int32(a21 + np.int32(p2 * q1))
                    a22, a23 = np.int32(a22 + np.int32(p2 * q2)), np.int32(a23 + np.int32(p2 * q3))
                    a30, a31 = np.int32(a30 + np.int32(p3 * q0)), np.int32(a31 + np.int32(p3 * q1))
                    a32, a33 = np.int32(a32 + np.int32(p3 * q2)), np.int32(a33 + np.int32(p3 * q3))
                out[i, o0], out[i, o0 + 1], out[i, o0 + 2], out[i, o0 + 3] = a00, a01, a02, a03
                out[i + 1, o0], out[i + 1, o0 + 1], out[i + 1, o0 + 2], out[i + 1, o0 + 3] = a10, a11, a12, a13
                out[i + 2, o0], out[i + 2, o0 + 1], out[i + 2, o0 + 2], out[i + 2, o0 + 3] = a20, a21, a22, a23
                out[i + 3, o0], out[i + 3, o0 + 1], out[i + 3, o0 + 2], out[i + 3, o0 + 3] = a30, a31, a32, a33
            first = m4
        else:
            first = 0
        for i in range(first, m):
            for o in range(o0, min(o0 + 4, n_out)):
                s = np.int32(0)
                for k in range(kp):
                    s = np.int32(s + np.int32(np.int32(xu[i, k]) * np.int32(ws[o, k])))
                out[i, o] = s
    _epilogue(xu, dw, col, row_sum, out)


# ---- the VNNI kernel on packed weights (M >= 6) ----------------------------------------
#
# ``wp`` (G, kp * 64) int8 holds the weights in panels of 64 output columns: byte
# ``(q * 4 + j) * 64 + c * 4 + t`` of panel ``g`` is ``ws[64 g + 16 j + c, 4 q + t]`` (zero
# beyond N or K), so one 64-byte load gives 16 columns x 4 k. ``xu`` (M, kp) has kp a
# multiple of 4. A 6 x 64 tile keeps 24 accumulators in registers: per 4 k it loads 4
# weight vectors, broadcasts 4 input bytes of each of the 6 rows, and issues 24
# ``vpdpbusd``; nothing is reduced across lanes, each lane is one output.


def pack_panels(ws, kp4):
    """``wp`` of the packed kernel from ``ws`` (N, >= K) int8 rows (NumPy; once per layer)."""
    n, k = ws.shape[0], min(ws.shape[1], kp4)
    g = (n + 63) // 64
    buf = np.zeros((g * 64, kp4), np.int8)
    buf[:n, :k] = ws[:, :k]
    # (G, 4, 16, Q, 4) -> (G, Q, 4, 16, 4)
    panels = buf.reshape(g, 4, 16, kp4 // 4, 4).transpose(0, 3, 1, 2, 4)
    return np.ascontiguousarray(panels).reshape(g, kp4 * 64)


@njit(cache=True)
def _tile6x64(xu, i, wp, g, out):
    x0, x1, x2, x3, x4, x5 = xu[i], xu[i + 1], xu[i + 2], xu[i + 3], xu[i + 4], xu[i + 5]
    p = wp[g]
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = vzero()
    c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = vzero()
    for k in range(0, xu.shape[1], 4):
        o = k * 64
        w0, w1, w2, w3 = vload(p, o), vload(p, o + 64), vload(p, o + 128), vload(p, o + 192)
        c00, c01, c02, c03 = _dp4(c00, c01, c02, c03, vbcast4(x0, k), w0, w1, w2, w3)
        c10, c11, c12, c13 = _dp4(c10, c11, c12, c13, vbcast4(x1, k), w0, w1, w2, w3)
        c20, c21, c22, c23 = _dp4(c20, c21, c22, c23, vbcast4(x2, k), w0, w1, w2, w3)
        c30, c31, c32, c33 = _dp4(c30, c31, c32, c33, vbcast4(x3, k), w0, w1, w2, w3)
        c40, c41, c42, c43 = _dp4(c40, c41, c42, c43, vbcast4(x4, k), w0, w1, w2, w3)
        c50, c51, c52, c53 = _dp4(c50, c51, c52, c53, vbcast4(x5, k), w0, w1, w2, w3)
    j = g * 64
    n = out.shape[1] - j  # columns left from j: the stores past N are masked off
    _store4(out, i, j, n, c00, c01, c02, c03)
    _store4(out, i + 1, j, n, c10, c11, c12, c13)
    _store4(out, i + 2, j, n, c20, c21, c22, c23)
    _store4(out, i + 3, j, n, c30, c31, c32, c33)
    _store4(out, i + 4, j, n, c40, c41, c42, c43)
    _store4(out, i + 5, j, n, c50, c51, c52, c53)


@njit(cache=True)
def _store4(out, i, j, n, v0, v1, v2, v3):
    vstore16(out, i, j, v0, n)
    vstore16(out, i, j + 16, v1, n - 16)
    vstore16(out, i, j + 32, v2, n - 32)
    vstore16(out, i, j + 48, v3, n - 48)


@njit(cache=True)
def _tile4x64(xu, i, wp, g, out):
    x0, x1, x2, x3 = xu[i], xu[i + 1], xu[i + 2], xu[i + 3]
    p = wp[g]
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = vzero()
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = vzero()
    for k in range(0, xu.shape[1], 4):
        o = k * 64
        w0, w1, w2, w3 = vload(p, o), vload(p, o + 64), vload(p, o + 128), vload(p, o + 192)
        c00, c01, c02, c03 = _dp4(c00, c01, c02, c03, vbcast4(x0, k), w0, w1, w2, w3)
        c10, c11, c12, c13 = _dp4(c10, c11, c12, c13, vbcast4(x1, k), w0, w1, w2, w3)
        c20, c21, c22, c23 = _dp4(c20, c21, c22, c23, vbcast4(x2, k), w0, w1, w2, w3)
        c30, c31, c32, c33 = _dp4(c30, c31, c32, c33, vbcast4(x3, k), w0, w1, w2, w3)
    j = g * 64
    n = out.shape[1] - j
    _store4(out, i, j, n, c00, c01, c02, c03)
    _store4(out, i + 1, j, n, c10, c11, c12, c13)
    _store4(out, i + 2, j, n, c20, c21, c22, c23)
    _store4(out, i + 3, j, n, c30, c31, c32, c33)


@njit(cache=True)
def _tile1x64(xu, i, wp, g, out):
    x0 = xu[i]
    p = wp[g]
    c0 = c1 = c2 = c3 = vzero()
    for k in range(0, xu.shape[1], 4):
        o = k * 64
        c0, c1, c2, c3 = _dp4(
            c0, c1, c2, c3, vbcast4(x0, k), vload(p, o), vload(p, o + 64), vload(p, o + 128), vload(p, o + 192)
        )
    _store4(out, i, g * 64, out.shape[1] - g * 64, c0, c1, c2, c3)


_ROW_TILES = 64  # 6-row tiles per parallel task (384 rows); smaller tasks measured worse on 2 threads


@njit(cache=True, parallel=True)
def gemm_u8s8_vnni_packed(xu, wp, dw, col, out):
    """The fast 8-bit product (see the top of this section) on packed weights, with
    AVX-512 VNNI: only where ``simd.HAVE_VNNI``. ``xu`` (M, kp) uint8, kp % 4 == 0;
    ``wp`` from :func:`pack_panels`; ``out`` (M, N) int32.
    """
    m = out.shape[0]
    n_g = wp.shape[0]
    tiles = m // 6
    chunks = (tiles + _ROW_TILES - 1) // _ROW_TILES
    tail = 1 if m % 6 else 0  # one more chunk: the last m % 6 rows
    n_c = chunks + tail
    # panel-major task order: numba splits the range into one contiguous run a thread,
    # so each thread gets whole panels (equal work) and reuses each panel across chunks
    for t in prange(n_c * n_g):
        g, chunk = t // n_c, t % n_c
        if chunk < chunks:
            for it in range(chunk * _ROW_TILES, min((chunk + 1) * _ROW_TILES, tiles)):
                _tile6x64(xu, it * 6, wp, g, out)
        else:  # the last m % 6 rows: a 4-row tile if 4 or more, then single rows
            i = tiles * 6
            if m - i >= 4:
                _tile4x64(xu, i, wp, g, out)
                i += 4
            for r in range(i, m):
                _tile1x64(xu, r, wp, g, out)
    _epilogue_rowsum(xu, dw, col, out)


@njit(cache=True, parallel=True)
def _epilogue_rowsum(xu, dw, col, out):
    """out[i, o] += col[o] - dw[o] * sum_k xu[i, k], wrapped to int32."""
    m, n_out = out.shape
    for i in prange(m):
        s = np.int32(0)
        for k in range(xu.shape[1]):
            s = np.int32(s + np.int32(xu[i, k]))
        r = np.int64(s)
        for o in range(n_out):
            out[i, o] = np.int32(np.int64(out[i, o]) + np.int64(col[o]) - np.int64(dw[o]) * r)


# ---- AVX2 kernels on packed weights: exact (vpmaddwd) and pair-saturating (vpmaddubsw) ----
#
# For CPUs with AVX2 but without AVX-512 VNNI (call them only where ``simd.HAVE_AVX2``).
# Both compute ``out = S - dw * rowsum(xu) + col`` (int32, wrapped) like the kernels above,
# from ``xu`` (M, kp) uint8 with kp a multiple of the kernel's K alignment (the caller
# pads with zeros) and weights packed once per layer in panels of 16 output columns. A
# 6 x 16 tile keeps 12 ``<8 x i32>`` accumulators in registers (of the 16 ymm registers
# AVX2 has): per step it loads 2 weight vectors, broadcasts one 32-bit word of each of the
# 6 rows and issues 12 multiply-adds; every lane is one output, nothing is reduced across
# lanes. Fewer rows take tiles of 4, 2 and 1 rows (one row: a matrix-vector product,
# bound by reading the weights).
#
# ``gemm_u8s8_avx2`` is exact: ``S = sum_k xu[i, k] * ws[o, k]``. It multiplies int16 by
# int16 with ``vpmaddwd`` (two products summed into an int32 lane, exact here): the
# weights are widened to int16 in the packing, the input rows once per call into a
# scratch array (M x kp int16; under 2% of a call at the benchmark sizes; widening the
# broadcast word inside the loop instead would cost a shuffle per row per step -- not
# measured). A step covers 2 k: byte ``k * 32 + 32 j + 4 c + 2 t`` of panel ``g`` of
# :func:`pack_panels_avx2` holds (as a little-endian int16) ``ws[16 g + 8 j + c, k + t]``.
#
# ``gemm_u8s8_avx2_sat16`` is the product of PyTorch's fbgemm and onnxruntime's MLAS on
# AVX2: ``S = sum_p sat16(xu[i, 2p] ws[o, 2p] + xu[i, 2p+1] ws[o, 2p+1])``, each pair sum
# clamped to [-32768, 32767] by ``vpmaddubsw`` before the int32 sum. A step covers 4 k on
# the bytes as they are: byte ``k * 16 + 32 j + 4 c + t`` of panel ``g`` of
# :func:`pack_panels_avx2_sat16` is ``ws[16 g + 8 j + c, k + t]``. Its 6 x 16 tile needs
# 17 vector registers (12 sums, 2 weights, the broadcast, the int16 pairs, the int16
# ones): compiled for an AVX2-only CPU, LLVM keeps one sum on the stack; on this
# project's AVX-512 machine all fit (ymm16-31).
#
# Tasks are (panel, chunk of rows) pairs; each runs K in blocks of 512 bytes of a row
# (8 KiB of the panel, which stays in L1 across the chunk's tiles), adding each block's
# sums to ``out`` (``v8loadn``); the gemm suite of benchmarks/ times it.

#: ``xu.shape[1]`` of :func:`gemm_u8s8_avx2` is a multiple of this (one step: 2 k).
AVX2_K_ALIGN = 2
#: ``xu.shape[1]`` of :func:`gemm_u8s8_avx2_sat16` is a multiple of this (one step: 4 k).
AVX2_SAT16_K_ALIGN = 4


def _pack16(ws, kp, step, dtype):
    n, k = ws.shape[0], min(ws.shape[1], kp)
    g = (n + 15) // 16
    buf = np.zeros((g * 16, kp), dtype)
    buf[:n, :k] = ws[:, :k]
    # (G, 2, 8, kp/step, step) -> (G, kp/step, 2, 8, step)
    panels = buf.reshape(g, 2, 8, kp // step, step).transpose(0, 3, 1, 2, 4)
    return np.ascontiguousarray(panels).reshape(g, kp * 16)


def pack_panels_avx2(ws, kp):
    """``wp`` (G, kp * 16) int16 of :func:`gemm_u8s8_avx2` from ``ws`` (N, >= K) int8
    (NumPy; once per layer). ``G = ceil(N / 16)``; ``kp`` (a multiple of
    :data:`AVX2_K_ALIGN`) is ``xu.shape[1]``; element ``(k // 2) * 32 + 16 j + 2 c + t``
    (k even) of panel ``g`` is ``ws[16 g + 8 j + c, k + t]``, zero beyond N and K."""
    return _pack16(ws, kp, 2, np.int16)


def pack_panels_avx2_sat16(ws, kp):
    """``wp`` (G, kp * 16) int8 of :func:`gemm_u8s8_avx2_sat16` from ``ws`` (N, >= K) int8
    (NumPy; once per layer). ``G = ceil(N / 16)``; ``kp`` (a multiple of
    :data:`AVX2_SAT16_K_ALIGN`) is ``xu.shape[1]``; byte ``(k // 4) * 64 + 32 j + 4 c + t``
    (k a multiple of 4) of panel ``g`` is ``ws[16 g + 8 j + c, k + t]``, zero beyond N and K."""
    return _pack16(ws, kp, 4, np.int8)


@njit(cache=True, inline="always")
def _madd2(sat, c0, c1, b, w0, w1):
    """Two multiply-adds of the broadcast input ``b`` into 16 columns: ``vpmaddubsw``
    pairs (``sat``: raw bytes, pair-saturating) or ``vpmaddwd`` (int16 words, exact).
    ``sat`` is the same for a whole call; one set of tiles with this test timed as fast as
    two separate sets, within this VM's noise (not checked in the generated code)."""
    if sat:
        return v8maddubs(c0, b, w0), v8maddubs(c1, b, w1)
    return v8maddwd(c0, b, w0), v8maddwd(c1, b, w1)


@njit(cache=True, inline="always")
def _store2(out, i, j, n, v0, v1):
    """Columns j .. j+15 of row i, masked past ``n`` columns (a whole panel: plain stores)."""
    if n >= 16:
        v8store(out, i, j, v0, 8)
        v8store(out, i, j + 8, v1, 8)
    else:
        v8store(out, i, j, v0, n)
        v8store(out, i, j + 8, v1, n - 8)


@njit(cache=True, inline="always")
def _init2(out, i, j, n, first):
    """Two accumulators of columns j .. j+15 of row i: zero for the first K block, else
    the sums so far in ``out`` (masked past ``n`` columns)."""
    if first:
        return v8zero(), v8zero()
    if n >= 16:
        return v8loadn(out, i, j, 8), v8loadn(out, i, j + 8, 8)
    return v8loadn(out, i, j, n), v8loadn(out, i, j + 8, n - 8)


# The tiles: rows ``i ..`` of ``xb`` by panel ``g`` of ``wb``, byte columns ``k0 .. k1``
# of a row. Exact: ``xb`` (M, 2 kp) the bytes of the int16 rows, ``wb`` (G, 32 kp) the
# bytes of the int16 panels, a step of 4 bytes is 2 k. Pair-saturating: ``xb`` = ``xu``
# and ``wb`` the int8 panels as they are, a step of 4 bytes is 4 k. Either way a step
# reads 4 bytes of a row and 64 of the panel.


@njit(cache=True)
def _tile6x16(xb, i, wb, g, out, k0, k1, first, sat):
    x0, x1, x2, x3, x4, x5 = xb[i], xb[i + 1], xb[i + 2], xb[i + 3], xb[i + 4], xb[i + 5]
    p = wb[g]
    j = g * 16
    n = out.shape[1] - j  # columns left from j: loads and stores past N are masked off
    c00, c01 = _init2(out, i, j, n, first)
    c10, c11 = _init2(out, i + 1, j, n, first)
    c20, c21 = _init2(out, i + 2, j, n, first)
    c30, c31 = _init2(out, i + 3, j, n, first)
    c40, c41 = _init2(out, i + 4, j, n, first)
    c50, c51 = _init2(out, i + 5, j, n, first)
    for k in range(k0, k1, 4):
        o = k * 16
        w0, w1 = v8load(p, o), v8load(p, o + 32)
        c00, c01 = _madd2(sat, c00, c01, v8bcast4(x0, k), w0, w1)
        c10, c11 = _madd2(sat, c10, c11, v8bcast4(x1, k), w0, w1)
        c20, c21 = _madd2(sat, c20, c21, v8bcast4(x2, k), w0, w1)
        c30, c31 = _madd2(sat, c30, c31, v8bcast4(x3, k), w0, w1)
        c40, c41 = _madd2(sat, c40, c41, v8bcast4(x4, k), w0, w1)
        c50, c51 = _madd2(sat, c50, c51, v8bcast4(x5, k), w0, w1)
    _store2(out, i, j, n, c00, c01)
    _store2(out, i + 1, j, n, c10, c11)
    _store2(out, i + 2, j, n, c20, c21)
    _store2(out, i + 3, j, n, c30, c31)
    _store2(out, i + 4, j, n, c40, c41)
    _store2(out, i + 5, j, n, c50, c51)


@njit(cache=True)
def _tile4x16(xb, i, wb, g, out, k0, k1, first, sat):
    x0, x1, x2, x3 = xb[i], xb[i + 1], xb[i + 2], xb[i + 3]
    p = wb[g]
    j = g * 16
    n = out.shape[1] - j
    c00, c01 = _init2(out, i, j, n, first)
    c10, c11 = _init2(out, i + 1, j, n, first)
    c20, c21 = _init2(out, i + 2, j, n, first)
    c30, c31 = _init2(out, i + 3, j, n, first)
    for k in range(k0, k1, 4):
        o = k * 16
        w0, w1 = v8load(p, o), v8load(p, o + 32)
        c00, c01 = _madd2(sat, c00, c01, v8bcast4(x0, k), w0, w1)
        c10, c11 = _madd2(sat, c10, c11, v8bcast4(x1, k), w0, w1)
        c20, c21 = _madd2(sat, c20, c21, v8bcast4(x2, k), w0, w1)
        c30, c31 = _madd2(sat, c30, c31, v8bcast4(x3, k), w0, w1)
    _store2(out, i, j, n, c00, c01)
    _store2(out, i + 1, j, n, c10, c11)
    _store2(out, i + 2, j, n, c20, c21)
    _store2(out, i + 3, j, n, c30, c31)


@njit(cache=True)
def _tile2x16(xb, i, wb, g, out, k0, k1, first, sat):
    x0, x1 = xb[i], xb[i + 1]
    p = wb[g]
    j = g * 16
    n = out.shape[1] - j
    c00, c01 = _init2(out, i, j, n, first)
    c10, c11 = _init2(out, i + 1, j, n, first)
    for k in range(k0, k1, 4):
        o = k * 16
        w0, w1 = v8load(p, o), v8load(p, o + 32)
        c00, c01 = _madd2(sat, c00, c01, v8bcast4(x0, k), w0, w1)
        c10, c11 = _madd2(sat, c10, c11, v8bcast4(x1, k), w0, w1)
    _store2(out, i, j, n, c00, c01)
    _store2(out, i + 1, j, n, c10, c11)


@njit(cache=True)
def _tile1x16(xb, i, wb, g, out, k0, k1, first, sat):
    x0 = xb[i]
    p = wb[g]
    j = g * 16
    n = out.shape[1] - j
    c0, c1 = _init2(out, i, j, n, first)
    for k in range(k0, k1, 4):
        o = k * 16
        c0, c1 = _madd2(sat, c0, c1, v8bcast4(x0, k), v8load(p, o), v8load(p, o + 32))
    _store2(out, i, j, n, c0, c1)


_ROW_TILES16 = 64  # 6-row tiles per parallel task (384 rows)
_K_BLOCK16 = 512  # bytes of an input row per K block (256 k exact, 512 k saturating): 8 KiB of a panel


@njit(cache=True, parallel=True)
def _panels16(xb, wb, out, sat):
    """out = S of the exact (``sat`` False: ``xb`` the bytes of the int16 rows) or the
    pair-saturating (``sat`` True: ``xb`` = ``xu``) tiles, over all rows and panels.

    Each task is one panel and a chunk of rows; it runs K in blocks (8 KiB of the panel,
    which stays in the L1 cache across the chunk's tiles), adding each block's sums to
    ``out``.
    """
    m = out.shape[0]
    n_g = wb.shape[0]
    row_bytes = xb.shape[1]
    n_kb = max(1, (row_bytes + _K_BLOCK16 - 1) // _K_BLOCK16)
    tiles = m // 6
    chunks = (tiles + _ROW_TILES16 - 1) // _ROW_TILES16
    tail = 1 if m % 6 else 0  # one more chunk: the last m % 6 rows
    n_c = chunks + tail
    # panel-major task order, as in gemm_u8s8_vnni_packed: each thread gets whole panels
    # and keeps each panel in cache across its row chunks
    for t in prange(n_c * n_g):
        g, chunk = t // n_c, t % n_c
        for kb in range(n_kb):
            k0 = kb * _K_BLOCK16
            k1 = min(k0 + _K_BLOCK16, row_bytes)
            first = kb == 0
            if chunk < chunks:
                for it in range(chunk * _ROW_TILES16, min((chunk + 1) * _ROW_TILES16, tiles)):
                    _tile6x16(xb, it * 6, wb, g, out, k0, k1, first, sat)
            else:  # the last m % 6 rows: tiles of 4, 2 and 1 rows
                i = tiles * 6
                if m - i >= 4:
                    _tile4x16(xb, i, wb, g, out, k0, k1, first, sat)
                    i += 4
                if m - i >= 2:
                    _tile2x16(xb, i, wb, g, out, k0, k1, first, sat)
                    i += 2
                if m - i >= 1:
                    _tile1x16(xb, i, wb, g, out, k0, k1, first, sat)


@njit(cache=True, parallel=True)
def _widen_rows(xu, xw, row_sum):
    """xw = xu as int16; row_sum[i] = sum_k xu[i, k] (int32)."""
    m, kp = xu.shape
    for i in prange(m):
        s = np.int32(0)
        for k in range(kp):
            v = xu[i, k]
            xw[i, k] = np.int16(v)
            s = np.int32(s + np.int32(v))
        row_sum[i] = s


@njit(cache=True)
def gemm_u8s8_avx2(xu, wp, dw, col, out):
    """The fast 8-bit product, exact, with AVX2 ``vpmaddwd``: only where ``simd.HAVE_AVX2``.

    ``xu`` (M, kp) uint8, C-contiguous, kp a multiple of :data:`AVX2_K_ALIGN`; ``wp`` from
    :func:`pack_panels_avx2` with the same kp; ``dw``, ``col`` int32 (N,); ``out`` int32
    (M, N). Twin: ``npquant.qnn.gemm._gemm_u8s8_numpy``.
    """
    m, kp = xu.shape
    xw = np.empty((m, kp), np.int16)
    row_sum = np.empty(m, np.int32)
    _widen_rows(xu, xw, row_sum)
    _panels16(xw.view(np.uint8), wp.view(np.uint8), out, False)
    _epilogue(xu, dw, col, row_sum, out)


@njit(cache=True)
def gemm_u8s8_avx2_sat16(xu, wp, dw, col, out):
    """The fast 8-bit product with int16 pair saturation (``vpmaddubsw``), as fbgemm and
    MLAS compute it on AVX2: only where ``simd.HAVE_AVX2``.

    ``xu`` (M, kp) uint8, C-contiguous, kp a multiple of :data:`AVX2_SAT16_K_ALIGN`; ``wp``
    from :func:`pack_panels_avx2_sat16` with the same kp; ``dw``, ``col`` int32 (N,);
    ``out`` int32 (M, N). Twin: ``npquant.qnn.gemm._gemm_u8s8_numpy(..., pairs=True)``.
    """
    _panels16(xu, wp, out, True)
    _epilogue_rowsum(xu, dw, col, out)


@njit(cache=True, parallel=True)
def gemm_u8s8_pairs_portable(xu, ws, dw, col, out):
    """The pair-saturating product in plain numba, for any CPU (one row a task):
    ``out[i, o] = sum_p sat16(xu[i, 2p] ws[o, 2p] + xu[i, 2p+1] ws[o, 2p+1]) - dw[o] *
    sum_k xu[i, k] + col[o]``, wrapped; ``xu`` (M, kp) uint8 and ``ws`` (O, kp) int8
    rows, kp even. Twin: ``npquant.qnn.gemm._gemm_u8s8_numpy(..., pairs=True)``.
    """
    m, n_out = out.shape
    kp = xu.shape[1]
    for i in prange(m):
        x = xu[i]
        rs = np.int32(0)
        for k in range(kp):
            rs = np.int32(rs + np.int32(x[k]))
        r = np.int64(rs)
        for o in range(n_out):
            w = ws[o]
            s = np.int32(0)
            for k in range(0, kp, 2):
                v = np.int32(x[k]) * np.int32(w[k]) + np.int32(x[k + 1]) * np.int32(w[k + 1])
                s = np.int32(s + np.int32(min(max(v, -32768), 32767)))
            out[i, o] = np.int32(np.int64(s) + np.int64(col[o]) - np.int64(dw[o]) * r)
