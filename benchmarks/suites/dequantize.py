"""uint8 -> float32 dequantization, ``npquant.dequantize``, per tensor and per channel (axis 0).

The codes are npquant's ``divide`` quantization of the quantize suite's input (same sizes
and labels); npquant's time includes the range check of the codes. Peers:
``Tensor.dequantize()`` of PyTorch's own quantized tensor (compared with npquant's
dequantization of the same codes) and onnxruntime's ``DequantizeLinear`` (opset 21).
"""

from __future__ import annotations

from benchmarks.common import Case, Impl, compare
from benchmarks.suites import quantize as _q

NAME = "dequantize"
DEFAULT_SIZES = _q.DEFAULT_SIZES


def cases(ctx):
    import npquant as nq

    for label, x, qp, gran in _q.setup(ctx):
        q = nq.quantize(x, qp)
        ref = nq.dequantize(q, qp)
        impls = [
            Impl("numba", lambda: nq.dequantize(q, qp)),
            Impl(
                "numpy",
                lambda: nq.dequantize(q, qp, backend="numpy"),
                check=compare(nq.dequantize(q, qp, backend="numpy"), ref),
            ),
        ]

        def make_torch():
            qt = _q.torch_quantize(ctx.peers["torch"], x, qp)()
            return qt.dequantize, compare(qt.dequantize().numpy(), nq.dequantize(qt.int_repr().numpy(), qp))

        def make_ort():
            sess = _q.ort_session(ctx.peers["onnxruntime"], "DequantizeLinear", x.shape, qp, ctx.threads)

            def run():
                return sess.run(["y"], {"x": q})[0]

            return run, compare(run(), ref)

        impls.append(_q.peer_impl(ctx, "torch", gran, make_torch))
        impls.append(_q.peer_impl(ctx, "onnxruntime", gran, make_ort))
        yield Case(NAME, label, float(x.size), "Mvalues/s", impls)
