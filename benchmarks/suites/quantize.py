"""float32 -> uint8 quantization, ``npquant.quantize``, per tensor and per channel (axis 0).

npquant is timed through the public function (its time includes the finite-values check
of ``x``); ``numpy`` is the same call with ``backend="numpy"``. The input is a float32
N(0, 1) matrix (rows = the largest divisor of n up to sqrt(n)) with min-max asymmetric
qparams. Each quantize method is its own case, with the peer whose arithmetic it
reproduces: ``torch.quantize_per_tensor`` / ``quantize_per_channel`` for ``method="torch"``,
onnxruntime's ``QuantizeLinear`` (opset 21) for ``method="divide"``; their codes are
compared with npquant's. Sizes are element counts, optionally with a granularity:
``1e6`` (per_tensor and per_channel), ``1e6:per_group`` (axis 1, blocks of 32).
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_count
from benchmarks.common import ort_session as _session

NAME = "quantize"
DEFAULT_SIZES = ["1e4", "1e6"]
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
BLOCK = 32


def parse_size(label: str):
    n, gran = parse_count(label, NAME, "1e6 or 1e6:per_group", GRANULARITIES)
    return n, ([gran] if gran else ["per_tensor", "per_channel"])


def tensor_shape(n: int) -> tuple[int, int]:
    """``(rows, n // rows)`` with ``rows`` the largest divisor of ``n`` up to ``sqrt(n)``."""
    rows = next(r for r in range(math.isqrt(n), 0, -1) if n % r == 0)
    return rows, n // rows


def setup(ctx):
    """Yield ``(label, x, qp, granularity)`` for every size label of ``ctx``."""
    import npquant as nq

    rng = np.random.default_rng(ctx.seed)
    for label in ctx.sizes:
        n, grans = parse_size(label)
        shape = tensor_shape(n)
        x = rng.standard_normal(shape, dtype=np.float32)
        for gran in grans:
            kw = {"per_tensor": {}, "per_channel": {"axis": 0}, "per_group": {"axis": 1, "block_size": BLOCK}}[gran]
            qp = nq.fit_qparams(x, nq.QuantSpec(bits=8, signed=False, symmetric=False, **kw))
            yield f"{gran} n={n:,} ({shape[0]}x{shape[1]})", x, qp, gran


def ort_session(ort, op, shape, qp, threads):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = qp.spec
    tin, tout = (
        (TensorProto.FLOAT, TensorProto.UINT8) if op == "QuantizeLinear" else (TensorProto.UINT8, TensorProto.FLOAT)
    )
    attrs = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size is not None:
        attrs["block_size"] = spec.block_size
    inits = [
        numpy_helper.from_array(np.asarray(qp.scale, np.float32), "scale"),
        numpy_helper.from_array(np.asarray(qp.zero_point).astype(np.uint8), "zero_point"),
    ]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "scale", "zero_point"], ["y"], **attrs)],
        "bench",
        [helper.make_tensor_value_info("x", tin, list(shape))],
        [helper.make_tensor_value_info("y", tout, list(shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return _session(ort, model, threads)


def torch_quantize(torch, x, qp):
    xt = torch.from_numpy(x)
    if qp.spec.axis is None:
        s, z = float(qp.scale), int(qp.zero_point)
        return lambda: torch.quantize_per_tensor(xt, s, z, torch.quint8)
    s = torch.from_numpy(qp.scale.astype(np.float64))
    z = torch.from_numpy(qp.zero_point.astype(np.int64))
    return lambda: torch.quantize_per_channel(xt, s, z, qp.spec.axis, torch.quint8)


def peer_impl(ctx, peer, gran, make):
    """An Impl for ``peer``: missing, n/a for blocked torch, or ``make()``'s (fn, check)."""
    miss = ctx.peer_impl(peer)
    if miss is not None:
        return miss
    if peer == "torch" and gran == "per_group":
        return Impl(peer, None, status="n/a: torch has no blocked quantize")
    try:
        fn, check = make()
    except Exception as exc:  # noqa: BLE001 - an op form the peer refuses is a result, not a crash
        return Impl(peer, None, status=f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    return Impl(peer, fn, check=check)


def cases(ctx):
    import npquant as nq

    for label, x, qp, gran in setup(ctx):
        for method, peer in (("divide", "onnxruntime"), ("torch", "torch")):
            if method == "torch" and gran == "per_group":
                continue
            ref = nq.quantize(x, qp, method=method)
            impls = [
                Impl("numba", lambda m=method: nq.quantize(x, qp, method=m)),
                Impl(
                    "numpy",
                    lambda m=method: nq.quantize(x, qp, method=m, backend="numpy"),
                    check=compare(nq.quantize(x, qp, method=method, backend="numpy"), ref),
                ),
            ]

            def make(peer=peer, ref=ref):
                if peer == "torch":
                    fn = torch_quantize(ctx.peers["torch"], x, qp)
                    return fn, compare(fn().int_repr().numpy(), ref)
                sess = ort_session(ctx.peers["onnxruntime"], "QuantizeLinear", x.shape, qp, ctx.threads)

                def run():
                    return sess.run(["y"], {"x": x})[0]

                return run, compare(run(), ref)

            impls.append(peer_impl(ctx, peer, gran, make))
            yield Case(NAME, f"{label} method={method}", float(x.size), "Mvalues/s", impls)
