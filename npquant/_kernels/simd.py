"""A 512-bit integer vector for numba kernels, and the AVX-512 VNNI operations on it.

numba has no vector type, so LLVM's loop vectorizer decides what a kernel's inner loop
becomes; for an 8-bit dot product that is at best ``vpmaddwd`` on 16-bit lanes. This module
gives kernels a value type ``Vec16`` (sixteen int32 lanes, ``<16 x i32>`` in LLVM) and a
handful of operations, so that an int8 GEMM can name ``vpdpbusd`` (64 unsigned x signed
byte products summed in fours into 16 int32 lanes per instruction) and keep its
accumulators in registers:

==================  ============================================================
``vzero()``         sixteen int32 zeros
``vload(a, off)``   64 bytes of the 1-D C-contiguous uint8/int8 array ``a`` from
                    byte ``off`` (no bounds check; the caller guarantees
                    ``off + 64 <= a.size``), as 16 int32 lanes (little-endian)
``vdpbusd(c,a,b)``  lane ``l``: ``c[l] + sum_t u8(a)[4l+t] * s8(b)[4l+t]``, wrapped to
                    int32 (the non-saturating ``vpdpbusd``)
``vreduce16(v0..v15)``  lane ``j``: the wrapped int32 sum of the 16 lanes of ``vj``
``vsum(v)``         the wrapped int32 sum of the lanes of ``v``
``vbcast4(a, off)`` the 4 bytes ``a[off:off+4]`` (1-D C-contiguous uint8/int8) as one
                    int32, in all 16 lanes (no bounds check)
``vstore16(out, i, j, v, n)``  the first ``n`` lanes (``n >= 16``: all) to
                    ``out[i, j:j+n]`` (int32, 2-D C-contiguous; masked, so nothing past
                    ``n`` is touched; ``n <= 0`` stores nothing)
``vstore4(out, i, j, v, q)``  lanes ``4q .. 4q+3`` to ``out[i, j:j+4]`` (int32, 2-D
                    C-contiguous; ``q`` a literal 0..3; no bounds check)
==================  ============================================================

Only call these where :data:`HAVE_VNNI` is true: LLVM emits the instructions as they are,
and a CPU without AVX-512 VNNI stops at the first one. With ``NUMBA_DISABLE_JIT=1`` the
same names are NumPy functions with identical results (a vector is then an int32 array of
16), so the kernels that use them run, slowly, on any CPU and are tested against their
twins that way too.
"""

from __future__ import annotations

import numpy as np
from numba.core import config

__all__ = ["HAVE_VNNI", "vzero", "vload", "vbcast4", "vdpbusd", "vreduce16", "vsum", "vstore4", "vstore16"]


def _host_has_vnni() -> bool:
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
    except Exception:  # an unknown host: never emit the instructions
        return False
    return bool(feats.get("avx512vnni") and feats.get("avx512bw") and feats.get("avx512f"))


#: The compiled kernels may use ``vpdpbusd``: the host has AVX-512 F, BW and VNNI.
HAVE_VNNI: bool = _host_has_vnni()


# ---- NumPy versions (NUMBA_DISABLE_JIT=1), the definition of each operation ----------

def _np_vzero():
    return np.zeros(16, np.int32)


def _np_vload(a, off):
    return np.ascontiguousarray(a[off:off + 64]).view(np.uint8).view("<i4").astype(np.int32)


def _np_vdpbusd(c, a, b):
    ua = a.astype("<i4").view(np.uint8).astype(np.int64)
    sb = b.astype("<i4").view(np.int8).astype(np.int64)
    s = c.astype(np.int64) + (ua * sb).reshape(16, 4).sum(axis=1)
    return s.astype(np.int32)  # int64 -> int32 keeps the low 32 bits: the wrap


def _np_vsum(v):
    return np.int32(v.astype(np.int64).sum().astype(np.int32))


def _np_vreduce16(*vs):
    return np.array([_np_vsum(v) for v in vs], np.int32)


def _np_vstore4(out, i, j, v, q):
    out[i, j:j + 4] = v[4 * q:4 * q + 4]


def _np_vbcast4(a, off):
    return np.full(16, np.ascontiguousarray(a[off:off + 4]).view(np.uint8).view("<i4")[0], np.int32)


def _np_vstore16(out, i, j, v, n):
    n = min(max(int(n), 0), 16)
    out[i, j:j + n] = v[:n]


# ---- numba intrinsics ---------------------------------------------------------------

def _make_intrinsics():
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic, models, register_model

    class Vec16Type(types.Type):
        def __init__(self):
            super().__init__(name="npquant.Vec16")

    vec16 = Vec16Type()
    i32 = ir.IntType(32)
    vt = ir.VectorType(i32, 16)

    @register_model(Vec16Type)
    class _Vec16Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, vt)

    def _mask(idx):
        return ir.Constant(ir.VectorType(i32, len(idx)), idx)

    @intrinsic
    def vzero(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(vt, None)

        return vec16(), codegen

    def _bytes_at(a, off):
        return (isinstance(a, types.Array) and a.ndim == 1 and a.dtype in (types.uint8, types.int8)
                and isinstance(off, types.Integer))

    def _byte_ptr(context, builder, sig, args, ty):
        """Pointer to byte ``args[1]`` of the 1-D array ``args[0]``, as ``ty*``."""
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        p = builder.gep(base, [context.cast(builder, args[1], sig.args[1], types.intp)])
        return builder.bitcast(p, ty.as_pointer())

    @intrinsic
    def vload(typingctx, a, off):
        if not _bytes_at(a, off):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_byte_ptr(context, builder, sig, args, vt), align=1)

        return vec16(a, off), codegen

    def _elem_ptr(context, builder, aty, arr_val, idx_vals, idx_tys):
        arr = context.make_array(aty)(context, builder, arr_val)
        idx = [context.cast(builder, v, t, types.intp) for v, t in zip(idx_vals, idx_tys)]
        return cgutils.get_item_pointer2(context, builder, arr.data, cgutils.unpack_tuple(builder, arr.shape),
                                         cgutils.unpack_tuple(builder, arr.strides), aty.layout, idx)

    @intrinsic
    def vbcast4(typingctx, a, off):
        if not _bytes_at(a, off):
            return None

        def codegen(context, builder, sig, args):
            word = builder.load(_byte_ptr(context, builder, sig, args, i32), align=1)
            one = builder.insert_element(ir.Constant(vt, None), word, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, one, _mask([0] * 16))

        return vec16(a, off), codegen

    @intrinsic
    def vstore16(typingctx, out, i, j, v, n):
        if not (isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.int32
                and v == vec16 and all(isinstance(t, types.Integer) for t in (i, j, n))):
            return None

        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
            nn = context.cast(builder, args[4], sig.args[4], types.int32)
            lanes = ir.Constant(vt, list(range(16)))
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, None), nn, ir.Constant(i32, 0)),
                                           ir.Constant(vt, None), _mask([0] * 16))
            mask = builder.icmp_signed("<", lanes, splat)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32,
                                                                ir.VectorType(ir.IntType(1), 16)]),
                "llvm.masked.store.v16i32.p0")
            builder.call(fn, [args[3], builder.bitcast(p, vt.as_pointer()), ir.Constant(i32, 4), mask])
            return context.get_dummy_value()

        return types.none(out, i, j, v, n), codegen

    @intrinsic
    def vdpbusd(typingctx, c, a, b):
        if not (c == vec16 and a == vec16 and b == vec16):
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.x86.avx512.vpdpbusd.512")
            return builder.call(fn, list(args))

        return vec16(vec16, vec16, vec16), codegen

    @intrinsic
    def vsum(typingctx, v):
        if v != vec16:
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i32, [vt]), "llvm.vector.reduce.add.v16i32")
            return builder.call(fn, [args[0]])

        return types.int32(vec16), codegen

    @intrinsic
    def vreduce16(typingctx, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15):
        vs = (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15)
        if any(v != vec16 for v in vs):
            return None

        def codegen(context, builder, sig, args):
            # A tree: each step adds the two halves of every lane block of a pair of
            # vectors into one vector (2 shuffles + 1 add a pair), tracking which
            # accumulator each block holds; a last shuffle puts the 16 sums in order.
            items = [(v, [j]) for j, v in enumerate(args)]
            size = 16
            while len(items) > 1:
                half, nxt = size // 2, []
                for (u, lu), (w, lw) in zip(items[0::2], items[1::2]):
                    lo, hi, ids = [], [], []
                    for blk in range(16 // size):
                        s0 = blk * size
                        lo += [s0 + t for t in range(half)] + [16 + s0 + t for t in range(half)]
                        hi += [s0 + half + t for t in range(half)] + [16 + s0 + half + t for t in range(half)]
                        ids += [lu[blk], lw[blk]]
                    nxt.append((builder.add(builder.shuffle_vector(u, w, _mask(lo)),
                                            builder.shuffle_vector(u, w, _mask(hi))), ids))
                items, size = nxt, half
            v, ids = items[0]
            return builder.shuffle_vector(v, v, _mask([ids.index(j) for j in range(16)]))

        return vec16(*([vec16] * 16)), codegen

    @intrinsic
    def vstore4(typingctx, out, i, j, v, q):
        if not (isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.int32
                and v == vec16 and isinstance(q, types.IntegerLiteral) and 0 <= q.literal_value < 4):
            return None

        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
            k = sig.args[4].literal_value
            part = builder.shuffle_vector(args[3], args[3], _mask([4 * k + t for t in range(4)]))
            builder.store(part, builder.bitcast(p, ir.VectorType(i32, 4).as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(out, i, j, v, q), codegen

    return vzero, vload, vbcast4, vdpbusd, vsum, vreduce16, vstore4, vstore16


if config.DISABLE_JIT:
    vzero, vload, vbcast4, vdpbusd, vsum = _np_vzero, _np_vload, _np_vbcast4, _np_vdpbusd, _np_vsum
    vreduce16, vstore4, vstore16 = _np_vreduce16, _np_vstore4, _np_vstore16
else:
    vzero, vload, vbcast4, vdpbusd, vsum, vreduce16, vstore4, vstore16 = _make_intrinsics()
