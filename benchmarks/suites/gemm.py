"""int8 GEMM: uint8 activations x int8 weights -> int32 accumulators, ``x (M, K) @ w (N, K).T``.

npquant is timed through ``QLinear.accumulate`` (the integer engine's matmul as a layer
runs it: a range check of the input codes, padding K to 64, the kernel, the zero-point
terms), with per-channel int8 weights (zero point 0) and asymmetric uint8 input (zero
point 3). Work = 2*M*N*K operations. Peers and references on the same operands:

* ``numpy`` -- ``QLinear(backend="numpy")``, npquant's twin (int64 matmul);
* ``numpy-int32`` -- ``x32 @ w32.T`` on operands already widened to int32 (the obvious
  pure-NumPy way; NumPy has no BLAS for integers);
* ``numpy-float32`` -- ``xf @ wf.T`` on float32 copies (BLAS sgemm; not exact for large K);
* ``onnxruntime`` -- a one-node ``MatMulInteger`` model (A uint8 with its zero point, B
  int8 as an initializer), CPU provider, intra-op threads = the thread count;
* ``torch-qlinear`` -- ``torch.ops.quantized.linear`` (fbgemm) on the same codes, which
  also requantizes to uint8: compared with ``numba-qlinear``, npquant's ``QLinear`` in
  ``mode="fp32"`` with fbgemm's float-bias folding, which adds that step.

npquant's kernel is the one :func:`npquant.qnn.gemm.gemm_kernel` names (the fastest the
CPU runs, or ``NPQUANT_GEMM_KERNEL``; ``--isa avx2`` of the runner forces the AVX2 kernels
and puts fbgemm, ATen and OpenBLAS on their AVX2 paths too). A second case at each size,
``... int16 pairs``, times ``QLinear(accumulation="int16_pairs").accumulate`` (the
``vpmaddubsw`` product of fbgemm and MLAS on CPUs without VNNI) against the same peers.
Every output is compared, outside the timed calls, with the exact int32 product and with
the pair-saturating one, and the ``output`` column says which it equals. onnxruntime has
no switch for its kernel: on a CPU with AVX-512 VNNI or AVX-VNNI it runs (exact) VNNI
code (or AMX tiles where the CPU has them) even in an ``--isa avx2`` run, so its ratio
there is against a faster path than an AVX2-only CPU would give it, and the targets
against it (exact >= 0.5x, int16 pairs >= 0.8x) are set only where it runs the same ISA
level as npquant's kernel.

Sizes are ``MxNxK`` labels.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Case, Impl, compare, ort_session, parse_shape

NAME = "gemm"
PARALLEL = True  # npquant's kernels here use numba's threads
DEFAULT_SIZES = ["512x512x512", "64x4096x4096", "1x4096x4096"]
SCALING_AIM = 1.7
ZX = 3


def _ort_matmul_integer(ort, x, w, threads):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m, k = x.shape
    n = w.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(w.T), "B"),
            numpy_helper.from_array(np.array(ZX, np.uint8), "a_zero_point"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort_session(ort, model, threads)
    return lambda: sess.run(["Y"], {"A": x})[0]


def cases(ctx):
    from npquant import QParams, QuantSpec
    from npquant.qnn.accumulation import host_path
    from npquant.qnn.gemm import gemm_kernel
    from npquant.qnn.layers import QLinear
    from npquant.qnn.overflow import int16_pair_accumulate

    avx2 = gemm_kernel() != "vnni"
    # the ratios to onnxruntime are targets where it runs the code they are about: the same
    # ISA level as npquant's kernel (it cannot be forced off VNNI / AMX)
    ort_same_path = (host_path("mlas") == "avx2") == avx2

    rng = np.random.default_rng(ctx.seed)
    for label in ctx.sizes:
        m, n, k = parse_shape(label, NAME, "MxNxK such as 512x512x512", (3, 3))
        x = rng.integers(0, 256, (m, k), dtype=np.uint8)
        w = rng.integers(-127, 128, (n, k), dtype=np.int8)
        x_qp = QParams(np.float32(0.02), ZX, QuantSpec(bits=8, signed=False))
        w_scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
        w_qp = QParams(w_scale, np.zeros(n, np.int32), QuantSpec(bits=8, signed=True, symmetric=True, axis=0))
        y_qp = QParams(np.float32(0.5 * k**0.5 * 0.02 * 0.005 * 128), 128, QuantSpec(bits=8, signed=False))
        fast = QLinear(w, w_qp, None, x_qp, y_qp)
        twin = QLinear(w, w_qp, None, x_qp, y_qp, backend="numpy")
        ref = fast.accumulate(x)
        sat = int16_pair_accumulate(x, w).astype(np.int64) - ZX * w.astype(np.int64).sum(axis=1)
        impls = [Impl("numba", lambda: fast.accumulate(x), check=_which(ref, ref, sat) + " (exact)")]
        if 2 * m * n * k <= 2 * 512**3:
            impls.append(Impl("numpy", lambda: twin.accumulate(x), check=compare(twin.accumulate(x), ref)))
        else:
            impls.append(Impl("numpy", None, status="n/a: the int64 twin takes minutes at this size"))
        x32, w32 = x.astype(np.int32) - ZX, w.astype(np.int32)
        impls.append(Impl("numpy-int32", lambda: x32 @ w32.T, check=_which(x32 @ w32.T, ref, sat)))
        xf, wf = x32.astype(np.float32), w32.astype(np.float32)
        ff = xf @ wf.T
        exact = np.array_equal(ff.astype(np.int64), ref)
        impls.append(
            Impl(
                "numpy-float32",
                lambda: xf @ wf.T,
                check="exact here" if exact else "rounded: " + compare(ff.astype(np.int64), ref)[9:],
            )
        )
        miss = ctx.peer_impl("onnxruntime")
        ort = None if miss else Impl("onnxruntime", _ort_matmul_integer(ctx.peers["onnxruntime"], x, w, ctx.threads))
        if ort is not None:
            ort.check = _which(ort.fn(), ref, sat)
        impls.append(ort or miss)
        bias = rng.normal(0, 0.1, n).astype(np.float32)
        # fbgemm's accumulation on the path torch takes in this process (AVX2 in an --isa avx2 run)
        qlin = QLinear(w, w_qp, bias, x_qp, y_qp, mode="fbgemm", accumulation="fbgemm")
        y_ref = qlin(x)
        impls.append(Impl("numba-qlinear", lambda: qlin(x)))
        miss = ctx.peer_impl("torch")
        if miss is None:
            run = _torch_qlinear(ctx.peers["torch"], x, x_qp, w, w_qp, bias, y_qp)
            impls.append(
                Impl("torch-qlinear", run, check=compare(run().int_repr().numpy(), y_ref) + " (vs numba-qlinear)")
            )
        else:
            impls.append(Impl("torch-qlinear", None, status=miss.status))
        targets = {"numpy-int32": 40.0, "numpy-float32": 1.5 if avx2 else 1.0}
        if ort_same_path:
            targets["onnxruntime"] = 0.5
        yield Case(NAME, f"M={m} N={n} K={k}", 2.0 * m * n * k, "GOP/s", impls, targets=targets)
        pairs = QLinear(w, w_qp, None, x_qp, y_qp, accumulation="int16_pairs")
        got = pairs.accumulate(x)
        p_impls = [
            Impl("numba-int16-pairs", lambda: pairs.accumulate(x), check=_which(got, ref, sat) + " (pairs)"),
            Impl("numba", lambda: fast.accumulate(x), check="exact"),
        ]
        if ort is not None:
            p_impls.append(ort)
        yield Case(
            NAME,
            f"M={m} N={n} K={k} int16 pairs",
            2.0 * m * n * k,
            "GOP/s",
            p_impls,
            baseline="numba-int16-pairs",
            targets={"onnxruntime": 0.8} if ort is not None and host_path("mlas") == "avx2" else {},
        )


def _which(out, exact, sat) -> str:
    """Whether ``out`` equals the exact int32 product, the pair-saturating one, or both."""
    out = np.asarray(out).astype(np.int64)
    d_exact, d_sat = int(np.count_nonzero(out != exact)), int(np.count_nonzero(out != sat))
    if d_exact == 0 and d_sat == 0:
        return "bit-exact (no pair saturates here)"
    if d_exact == 0:
        return f"bit-exact: exact int32 ({d_sat} of {out.size} differ from int16 pairs)"
    if d_sat == 0:
        return f"int16 pairs ({d_exact} of {out.size} differ from exact)"
    return f"differs: {d_exact} of {out.size} from exact, {d_sat} from int16 pairs"


def _torch_qlinear(torch, x, x_qp, w, w_qp, bias, y_qp):
    torch.backends.quantized.engine = "fbgemm"
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), float(x_qp.scale), int(x_qp.zero_point))
    wq = torch._make_per_channel_quantized_tensor(
        torch.from_numpy(w),
        torch.from_numpy(w_qp.scale.astype(np.float64)),
        torch.from_numpy(w_qp.zero_point.astype(np.int64)),
        0,
    )
    packed = torch.ops.quantized.linear_prepack(wq, torch.from_numpy(bias))
    s, z = float(y_qp.scale), int(y_qp.zero_point)
    return lambda: torch.ops.quantized.linear(xq, packed, s, z)
