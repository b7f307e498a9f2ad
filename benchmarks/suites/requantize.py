"""int32 accumulators -> int8 codes, ``npquant.requantize`` per output channel (axis 1).

One case per mode and shape. ``numba`` is the public call (``backend="numba"``); for
int32 accumulators its validation reads nothing of the data (only ``mode="tflite"`` with
a multiplier >= 0.5 scans for the left-shift overflow, which these multipliers avoid),
so it is timed with the call. ``numpy`` is the same call with ``backend="numpy"``, the
NumPy twin. No peer: neither PyTorch nor onnxruntime exposes an int32 -> int8
requantization on its own (it is fused into their quantized GEMM/conv), so none is timed.

Shapes are channel-second like the layers that produce them: ``16x64x32x32`` is a conv
output (N, C, H, W), requantized in rows of H*W values with one channel's parameters;
``4096x256`` is a linear layer's (batch, out), whose rows of one value per channel run
flattened with per-value parameters. The accumulators are N(0, 2^15) int32 and the
multipliers ``M_c`` log-uniform in ``127 / (3 * 2^15) * [e^-0.5, e^0.5]``, so codes span
int8 and 1-2% saturate (``info["saturated"]``); zero point -3.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_shape

NAME = "requantize"
DEFAULT_SIZES = ["16x64x32x32", "4096x256"]
MODES = ("tflite", "fp32", "tflite_single", "onnx")
TARGETS = {"tflite": {"numpy": 5.0}, "fp32": {"numpy": 5.0}}
ZP, QMIN, QMAX = -3, -128, 127


def parse_size(label: str) -> tuple[int, ...]:
    return parse_shape(label, NAME, "16x64x32x32 or 4096x256 (the channel axis second)", (2, 8))


def cases(ctx):
    from npquant.requant.modes import requantize

    rng = np.random.default_rng(ctx.seed)
    for label in ctx.sizes:
        shape = parse_size(label)
        c = shape[1]
        acc = np.clip(np.rint(rng.standard_normal(shape) * 2.0**15), -(2**31), 2**31 - 1)
        acc = acc.astype(np.int32)
        mult = 127 / (3 * 2.0**15) * np.exp(rng.uniform(-0.5, 0.5, c))
        inner = math.prod(shape[2:])
        for mode in MODES:

            def fast(mode=mode):
                return requantize(acc, mult, ZP, QMIN, QMAX, mode=mode, axis=1)

            def twin(mode=mode):
                return requantize(acc, mult, ZP, QMIN, QMAX, mode=mode, axis=1, backend="numpy")

            ref = fast()
            saturated = float(np.mean((ref == QMIN) | (ref == QMAX)))
            yield Case(
                NAME,
                f"{mode} {label} (C={c})",
                float(acc.size),
                "Mvalues/s",
                [Impl("numba", fast), Impl("numpy", twin, check=compare(twin(), ref))],
                targets=TARGETS.get(mode, {}),
                info={"channels": c, "row": inner, "saturated": round(saturated, 4)},
            )
