"""512- and 256-bit integer vectors for numba kernels, and the AVX-512 VNNI and AVX2 operations on them.

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

For CPUs with AVX2 but without AVX-512 VNNI there is a 256-bit type ``Vec8`` (eight int32
lanes, ``<8 x i32>``) and the two multiply-adds that such CPUs have for bytes and words:

==================  ============================================================
``v8zero()``        eight int32 zeros
``v8load(a, off)``  32 bytes of the 1-D C-contiguous uint8/int8 array ``a`` from byte
                    ``off`` (no bounds check: ``off + 32 <= a.size``), as 8 int32 lanes
``v8bcast4(a, off)``  the 4 bytes ``a[off:off+4]`` as one int32, in all 8 lanes
``v8store(out, i, j, v, n)``  the first ``n`` lanes (``n >= 8``: all) to
                    ``out[i, j:j+n]`` (int32, 2-D C-contiguous; masked, nothing past
                    ``n`` is touched; ``n <= 0`` stores nothing)
``v8loadn(a, i, j, n)``  the first ``n`` lanes from ``a[i, j:j+n]`` (int32, 2-D
                    C-contiguous), zeros in the others (masked, nothing past ``n`` is
                    read; ``n <= 0``: all zeros)
``v8sum(v)``        the wrapped int32 sum of the 8 lanes
``v8maddwd(c,a,b)`` lane ``l``: ``c[l] + sum_t s16(a)[2l+t] * s16(b)[2l+t]`` (``t`` = 0, 1),
                    wrapped to int32: ``vpmaddwd`` (exact for every operand but
                    ``a = b = -32768`` in both words of a lane, where the instruction and
                    this definition both wrap to ``-2**31``), then ``vpaddd``
``v8maddubs(c,a,b)``  lane ``l``: ``c[l] + sat16(u8(a)[4l] * s8(b)[4l] + u8(a)[4l+1] *
                    s8(b)[4l+1]) + sat16(u8(a)[4l+2] * s8(b)[4l+2] + u8(a)[4l+3] *
                    s8(b)[4l+3])``, wrapped to int32, where ``sat16`` clamps to
                    [-32768, 32767]: ``vpmaddubsw`` (which saturates each pair sum),
                    ``vpmaddwd`` by int16 ones (exact), then ``vpaddd`` -- the sequence of
                    PyTorch's fbgemm and onnxruntime's MLAS on CPUs without VNNI
==================  ============================================================

Only call these where :data:`HAVE_AVX2` is true (every AVX-512 CPU has AVX2); as above,
with ``NUMBA_DISABLE_JIT=1`` they are NumPy functions with identical results (a vector
is an int32 array of 8). Where the host CPU also has AVX-VNNI or AVX-512 VNNI, LLVM may
fuse ``vpmaddwd`` + ``vpaddd`` into ``vpdpwssd``; the result is the same bits.
"""

from __future__ import annotations

import numpy as np
from numba.core import config

from .cpu import target_features

__all__ = [
    "HAVE_VNNI",
    "vzero",
    "vload",
    "vbcast4",
    "vdpbusd",
    "vreduce16",
    "vsum",
    "vstore4",
    "vstore16",
    "HAVE_AVX2",
    "v8zero",
    "v8load",
    "v8bcast4",
    "v8store",
    "v8loadn",
    "v8sum",
    "v8maddwd",
    "v8maddubs",
]


#: The compiled kernels may use ``vpdpbusd``: the compile target (the host, see
#: ``cpu.target_features``) has AVX-512 F, BW and VNNI.
HAVE_VNNI: bool = {"avx512vnni", "avx512bw", "avx512f"} <= target_features()


#: The compiled kernels may use the ``Vec8`` operations (``vpmaddwd``, ``vpmaddubsw``,
#: ``vpmaskmovd``): the compile target has AVX2.
HAVE_AVX2: bool = {"avx2", "avx"} <= target_features()


# ---- NumPy versions (NUMBA_DISABLE_JIT=1), the definition of each operation ----------


def _np_vzero():
    return np.zeros(16, np.int32)


def _np_vload(a, off):
    return np.ascontiguousarray(a[off : off + 64]).view(np.uint8).view("<i4").astype(np.int32)


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
    out[i, j : j + 4] = v[4 * q : 4 * q + 4]


def _np_vbcast4(a, off):
    return np.full(16, np.ascontiguousarray(a[off : off + 4]).view(np.uint8).view("<i4")[0], np.int32)


def _np_vstore16(out, i, j, v, n):
    n = min(max(int(n), 0), 16)
    out[i, j : j + n] = v[:n]


def _np_v8zero():
    return np.zeros(8, np.int32)


def _np_v8load(a, off):
    return np.ascontiguousarray(a[off : off + 32]).view(np.uint8).view("<i4").astype(np.int32)


def _np_v8bcast4(a, off):
    return np.full(8, np.ascontiguousarray(a[off : off + 4]).view(np.uint8).view("<i4")[0], np.int32)


def _np_v8store(out, i, j, v, n):
    n = min(max(int(n), 0), 8)
    out[i, j : j + n] = v[:n]


def _np_v8loadn(a, i, j, n):
    n = min(max(int(n), 0), 8)
    v = np.zeros(8, np.int32)
    v[:n] = a[i, j : j + n]
    return v


def _np_v8sum(v):
    return np.int32(v.astype(np.int64).sum().astype(np.int32))


def _np_v8maddwd(c, a, b):
    sa = a.astype("<i4").view("<i2").astype(np.int64)
    sb = b.astype("<i4").view("<i2").astype(np.int64)
    s = c.astype(np.int64) + (sa * sb).reshape(8, 2).sum(axis=1)
    return s.astype(np.int32)  # the low 32 bits: the wrap


def _np_v8maddubs(c, a, b):
    ua = a.astype("<i4").view(np.uint8).astype(np.int64)
    sb = b.astype("<i4").view(np.int8).astype(np.int64)
    pairs = np.clip((ua * sb).reshape(16, 2).sum(axis=1), -32768, 32767)  # vpmaddubsw
    s = c.astype(np.int64) + pairs.reshape(8, 2).sum(axis=1)  # vpmaddwd by ones, vpaddd
    return s.astype(np.int32)


# ---- numba intrinsics ---------------------------------------------------------------
#
# Helpers of the code generators below (numba and llvmlite are imported only when the
# JIT is on and the intrinsics are made).


def _mask(idx):
    from llvmlite import ir

    i32 = ir.IntType(32)
    return ir.Constant(ir.VectorType(i32, len(idx)), idx)


def _bytes_at(a, off):
    """Typing: ``a`` a 1-D uint8/int8 array and ``off`` an integer (a byte offset)."""
    from numba.core import types

    return (
        isinstance(a, types.Array)
        and a.ndim == 1
        and a.dtype in (types.uint8, types.int8)
        and isinstance(off, types.Integer)
    )


def _byte_ptr(context, builder, sig, args, ty):
    """Pointer to byte ``args[1]`` of the 1-D array ``args[0]``, as ``ty*``."""
    from llvmlite import ir
    from numba.core import types

    arr = context.make_array(sig.args[0])(context, builder, args[0])
    base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    p = builder.gep(base, [context.cast(builder, args[1], sig.args[1], types.intp)])
    return builder.bitcast(p, ty.as_pointer())


def _elem_ptr(context, builder, aty, arr_val, idx_vals, idx_tys):
    """Pointer to element ``idx_vals`` of the array ``arr_val`` of type ``aty``."""
    from numba.core import cgutils, types

    arr = context.make_array(aty)(context, builder, arr_val)
    idx = [context.cast(builder, v, t, types.intp) for v, t in zip(idx_vals, idx_tys)]
    return cgutils.get_item_pointer2(
        context,
        builder,
        arr.data,
        cgutils.unpack_tuple(builder, arr.shape),
        cgutils.unpack_tuple(builder, arr.strides),
        aty.layout,
        idx,
    )


def _make_vector_type(lanes: int):
    """A numba type ``<lanes x i32>`` and its common operations: zero, load, 4-byte
    broadcast, masked store and load of the first ``n`` lanes, lane sum."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic, models, register_model

    class VecType(types.Type):
        def __init__(self):
            super().__init__(name=f"npquant.Vec{lanes}")

    vec = VecType()
    i32 = ir.IntType(32)
    vt = ir.VectorType(i32, lanes)
    bits = ir.VectorType(ir.IntType(1), lanes)

    @register_model(VecType)
    class _VecModel(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, vt)

    def _lanes_below(builder, nn):
        """The mask of the lanes l < nn (nn an i32)."""
        splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(vt, None), nn, ir.Constant(i32, 0)),
            ir.Constant(vt, None),
            _mask([0] * lanes),
        )
        return builder.icmp_signed("<", ir.Constant(vt, list(range(lanes))), splat)

    def _rows(a, i, j, n, v=None):
        return (
            isinstance(a, types.Array)
            and a.ndim == 2
            and a.dtype == types.int32
            and (v is None or v == vec)
            and all(isinstance(t, types.Integer) for t in (i, j, n))
        )

    @intrinsic
    def zero(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(vt, None)

        return vec(), codegen

    @intrinsic
    def load(typingctx, a, off):
        if not _bytes_at(a, off):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_byte_ptr(context, builder, sig, args, vt), align=1)

        return vec(a, off), codegen

    @intrinsic
    def bcast4(typingctx, a, off):
        if not _bytes_at(a, off):
            return None

        def codegen(context, builder, sig, args):
            word = builder.load(_byte_ptr(context, builder, sig, args, i32), align=1)
            one = builder.insert_element(ir.Constant(vt, None), word, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, one, _mask([0] * lanes))

        return vec(a, off), codegen

    @intrinsic
    def store(typingctx, out, i, j, v, n):
        if not _rows(out, i, j, n, v):
            return None

        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
            mask = _lanes_below(builder, context.cast(builder, args[4], sig.args[4], types.int32))
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, bits]),
                f"llvm.masked.store.v{lanes}i32.p0",
            )
            builder.call(fn, [args[3], builder.bitcast(p, vt.as_pointer()), ir.Constant(i32, 4), mask])
            return context.get_dummy_value()

        return types.none(out, i, j, v, n), codegen

    @intrinsic
    def loadn(typingctx, a, i, j, n):
        if not _rows(a, i, j, n):
            return None

        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vt, [vt.as_pointer(), i32, bits, vt]),
                f"llvm.masked.load.v{lanes}i32.p0",
            )
            mask = _lanes_below(builder, context.cast(builder, args[3], sig.args[3], types.int32))
            return builder.call(
                fn, [builder.bitcast(p, vt.as_pointer()), ir.Constant(i32, 4), mask, ir.Constant(vt, None)]
            )

        return vec(a, i, j, n), codegen

    @intrinsic
    def vsum(typingctx, v):
        if v != vec:
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i32, [vt]), f"llvm.vector.reduce.add.v{lanes}i32"
            )
            return builder.call(fn, [args[0]])

        return types.int32(vec), codegen

    return vec, vt, zero, load, bcast4, store, loadn, vsum


def _make_intrinsics():
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    vec16, vt, vzero, vload, vbcast4, vstore16, _, vsum = _make_vector_type(16)
    i32 = ir.IntType(32)

    @intrinsic
    def vdpbusd(typingctx, c, a, b):
        if not (c == vec16 and a == vec16 and b == vec16):
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.x86.avx512.vpdpbusd.512"
            )
            return builder.call(fn, list(args))

        return vec16(vec16, vec16, vec16), codegen

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
                    nxt.append(
                        (
                            builder.add(
                                builder.shuffle_vector(u, w, _mask(lo)), builder.shuffle_vector(u, w, _mask(hi))
                            ),
                            ids,
                        )
                    )
                items, size = nxt, half
            v, ids = items[0]
            return builder.shuffle_vector(v, v, _mask([ids.index(j) for j in range(16)]))

        return vec16(*([vec16] * 16)), codegen

    @intrinsic
    def vstore4(typingctx, out, i, j, v, q):
        if not (
            isinstance(out, types.Array)
            and out.ndim == 2
            and out.dtype == types.int32
            and v == vec16
            and isinstance(q, types.IntegerLiteral)
            and 0 <= q.literal_value < 4
        ):
            return None

        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
            k = sig.args[4].literal_value
            part = builder.shuffle_vector(args[3], args[3], _mask([4 * k + t for t in range(4)]))
            builder.store(part, builder.bitcast(p, ir.VectorType(i32, 4).as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(out, i, j, v, q), codegen

    return vzero, vload, vbcast4, vdpbusd, vsum, vreduce16, vstore4, vstore16


def _make_avx2_intrinsics():
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    vec8, vt, v8zero, v8load, v8bcast4, v8store, v8loadn, v8sum = _make_vector_type(8)
    v16i16 = ir.VectorType(ir.IntType(16), 16)
    v32i8 = ir.VectorType(ir.IntType(8), 32)

    def _pmaddwd(builder, a, b):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd"
        )
        return builder.call(fn, [builder.bitcast(a, v16i16), builder.bitcast(b, v16i16)])

    @intrinsic
    def v8maddwd(typingctx, c, a, b):
        if not (c == vec8 and a == vec8 and b == vec8):
            return None

        def codegen(context, builder, sig, args):
            return builder.add(args[0], _pmaddwd(builder, args[1], args[2]))

        return vec8(vec8, vec8, vec8), codegen

    @intrinsic
    def v8maddubs(typingctx, c, a, b):
        if not (c == vec8 and a == vec8 and b == vec8):
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw"
            )
            pairs = builder.call(fn, [builder.bitcast(args[1], v32i8), builder.bitcast(args[2], v32i8)])
            ones = ir.Constant(v16i16, [1] * 16)
            return builder.add(args[0], _pmaddwd(builder, builder.bitcast(pairs, vt), builder.bitcast(ones, vt)))

        return vec8(vec8, vec8, vec8), codegen

    return v8zero, v8load, v8bcast4, v8store, v8loadn, v8sum, v8maddwd, v8maddubs


if config.DISABLE_JIT:
    vzero, vload, vbcast4, vdpbusd, vsum = _np_vzero, _np_vload, _np_vbcast4, _np_vdpbusd, _np_vsum
    vreduce16, vstore4, vstore16 = _np_vreduce16, _np_vstore4, _np_vstore16
    v8zero, v8load, v8bcast4, v8store, v8sum = _np_v8zero, _np_v8load, _np_v8bcast4, _np_v8store, _np_v8sum
    v8loadn, v8maddwd, v8maddubs = _np_v8loadn, _np_v8maddwd, _np_v8maddubs
else:
    vzero, vload, vbcast4, vdpbusd, vsum, vreduce16, vstore4, vstore16 = _make_intrinsics()
    v8zero, v8load, v8bcast4, v8store, v8loadn, v8sum, v8maddwd, v8maddubs = _make_avx2_intrinsics()
