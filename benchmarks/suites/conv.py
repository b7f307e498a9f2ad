"""Integer conv2d: NCHW uint8 activations x OIHW int8 weights -> int32 accumulators and codes.

npquant is timed through ``QConv2d.accumulate`` (``numba``: the range check of the input
codes, im2col, the 8-bit GEMM kernel :func:`npquant.qnn.gemm.gemm_kernel` names, the
transpose to NCHW) and through the whole layer with requantization (``numba-qconv2d``:
``mode="fbgemm"``, ``accumulation="fbgemm"``, the path torch takes in this process), with
per-channel int8 weights (zero point 0), asymmetric uint8 input (zero point 3), stride 1
and ``K // 2`` padding. Work = ``2 * N * OH * OW * O * C * K * K`` operations. Peers on
the same operands:

* ``numpy`` -- ``QConv2d(backend="numpy").accumulate``, npquant's twins (int64 matmul),
  at sizes where it takes under a few seconds;
* ``torch-qconv2d`` -- ``torch.ops.quantized.conv2d`` (fbgemm) on the same codes,
  compared with ``numba-qconv2d``.

Sizes are ``NxCxHxWxOxK`` labels (batch, input channels, height, width, output channels,
square kernel).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_shape

NAME = "conv"
PARALLEL = True  # npquant's kernels here use numba's threads
DEFAULT_SIZES = ["1x64x56x56x64x3", "1x64x56x56x64x1", "8x64x56x56x64x3"]
ZX = 3


def cases(ctx):
    from npquant import QParams, QuantSpec
    from npquant.qnn.conv import QConv2d

    rng = np.random.default_rng(ctx.seed)
    for label in ctx.sizes:
        n, c, h, wd, o, k = parse_shape(label, NAME, "NxCxHxWxOxK such as 1x64x56x56x64x3", (6, 6))
        x = rng.integers(0, 256, (n, c, h, wd), dtype=np.uint8)
        w = rng.integers(-127, 128, (o, c, k, k), dtype=np.int8)
        x_qp = QParams(np.float32(0.02), ZX, QuantSpec(bits=8, signed=False))
        w_scale = rng.uniform(0.001, 0.01, o).astype(np.float32)
        w_qp = QParams(w_scale, np.zeros(o, np.int32), QuantSpec(bits=8, signed=True, symmetric=True, axis=0))
        kk = c * k * k
        y_qp = QParams(np.float32(0.5 * kk**0.5 * 0.02 * 0.005 * 128), 128, QuantSpec(bits=8, signed=False))
        pad = k // 2
        fast = QConv2d(w, w_qp, None, x_qp, None, padding=pad)
        ref = fast.accumulate(x)
        impls = [Impl("numba", lambda: fast.accumulate(x), check="exact")]
        work = 2.0 * n * ref.shape[2] * ref.shape[3] * o * kk
        if work <= 2.5e9:
            twin = QConv2d(w, w_qp, None, x_qp, None, padding=pad, backend="numpy")
            impls.append(Impl("numpy", lambda: twin.accumulate(x), check=compare(twin.accumulate(x), ref)))
        else:
            impls.append(Impl("numpy", None, status="n/a: the int64 twin takes too long at this size"))
        bias = rng.normal(0, 0.1, o).astype(np.float32)
        qconv = QConv2d(w, w_qp, bias, x_qp, y_qp, padding=pad, mode="fbgemm", accumulation="fbgemm")
        y_ref = qconv(x)
        impls.append(Impl("numba-qconv2d", lambda: qconv(x)))
        miss = ctx.peer_impl("torch")
        if miss is None:
            run = _torch_qconv(ctx.peers["torch"], x, x_qp, w, w_qp, bias, y_qp, pad)
            impls.append(
                Impl("torch-qconv2d", run, check=compare(run().int_repr().numpy(), y_ref) + " (vs numba-qconv2d)")
            )
        else:
            impls.append(Impl("torch-qconv2d", None, status=miss.status))
        yield Case(NAME, f"N={n} C={c} {h}x{wd} O={o} {k}x{k}", work, "GOP/s", impls)


def _torch_qconv(torch, x, x_qp, w, w_qp, bias, y_qp, pad):
    torch.backends.quantized.engine = "fbgemm"
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), float(x_qp.scale), int(x_qp.zero_point))
    wq = torch._make_per_channel_quantized_tensor(
        torch.from_numpy(w),
        torch.from_numpy(w_qp.scale.astype(np.float64)),
        torch.from_numpy(w_qp.zero_point.astype(np.int64)),
        0,
    )
    packed = torch.ops.quantized.conv2d_prepack(wq, torch.from_numpy(bias), [1, 1], [pad, pad], [1, 1], 1)
    s, z = float(y_qp.scale), int(y_qp.zero_point)
    return lambda: torch.ops.quantized.conv2d(xq, packed, s, z)
