"""Step-by-step traces of the integer arithmetic of one output element, for teaching.

:func:`explain_dot` follows one output of an integer linear or conv layer from its codes
to its output code: zero-point corrections, the int32 accumulator (direct and folded),
the bias, the real multiplier and its fixed-point form, every rounding of the chosen
requantization mode, the zero point and the clamp, and the error against the exact real
result. :func:`explain_linear` and :func:`explain_conv2d` pick that element out of a
layer. All integers are Python ints (exact); reals are printed from float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ._checks import check_choice, check_int
from .fixedpoint import (
    REQUANT_MODES,
    effective_multiplier,
    quantize_multiplier,
    requant_params,
    requantize,
)
from .qnn.accumulation import PAIRS, check_accumulation, resolve
from .qnn.conv import conv_geometry
from .qnn.overflow import INT16_MAX, INT16_MIN
from .qparams import QParams


@dataclass
class Explanation:
    """The steps of one output element; ``str()`` formats them for reading."""

    title: str
    mode: str
    x: list
    z_x: int
    w: list
    z_w: int
    acc: int
    folded: dict
    bias: int
    s_x: float
    s_w: float
    s_y: float
    multiplier: float
    steps: list = field(default_factory=list)  # (label, value) pairs of the requantization
    z_y: int = 0
    qmin: int = -128
    qmax: int = 127
    before_clamp: int = 0
    code: int = 0
    dequantized: float = 0.0
    reference: float = 0.0
    error_lsb: float = 0.0
    accumulation: str = "exact"
    pairs: list = field(default_factory=list)  # (k, exact pair sum, int16 value) with int16 pairs
    exact_acc: int = 0  # the exact sum, when the accumulation saturates pairs

    def __str__(self) -> str:
        k = len(self.x)
        show = min(k, 8)

        def vec(v):
            s = ", ".join(str(int(e)) for e in v[:show])
            return f"[{s}{', ...' if k > show else ''}]"

        dx = [a - self.z_x for a in self.x]
        dw = [b - self.z_w for b in self.w]
        lines = [
            self.title,
            f"  mode: {self.mode}",
            "",
            f"1. codes ({k} terms)",
            f"   q_x = {vec(self.x)}   Z_x = {self.z_x}",
            f"   q_w = {vec(self.w)}   Z_w = {self.z_w}",
            "2. zero-point corrections",
            f"   q_x - Z_x = {vec(dx)}",
            f"   q_w - Z_w = {vec(dw)}",
            f"   products  = {vec([a * b for a, b in zip(dx, dw)])}",
        ]
        if self.pairs:
            lines += self._pair_lines()
        else:
            lines += [
                f"3. int32 accumulator  acc = sum((q_x - Z_x)(q_w - Z_w)) = {self.acc}",
                "   folded form (Jacob et al. 2018): sum q_x q_w - Z_w sum q_x - Z_x sum q_w + K Z_x Z_w",
                f"     = {self.folded['sum_xw']} - {self.z_w}*{self.folded['sum_x']} - {self.z_x}*{self.folded['sum_w']}"
                f" + {k}*{self.z_x}*{self.z_w} = {self.folded['total']}",
            ]
        lines += [
            f"4. bias (int32, scale S_x S_w, zero point 0) = {self.bias};  acc + bias = {self.acc + self.bias}",
            f"5. real multiplier M = S_x S_w / S_y = {self.s_x!r} * {self.s_w!r} / {self.s_y!r}"
            f" = {self.multiplier!r}",
        ]
        lines += [f"   {label}: {value}" for label, value in self.steps]
        lines += [
            f"6. + Z_y ({self.z_y}) = {self.before_clamp};  clamp to [{self.qmin}, {self.qmax}] -> code {self.code}",
            f"7. dequantized  S_y (code - Z_y) = {self.dequantized:.9g}",
            f"   exact real   S_x S_w (acc + bias) = {self.reference:.9g}",
            f"   error        {self.error_lsb:+.4f} LSB (of S_y)",
        ]
        return "\n".join(lines)

    def _pair_lines(self) -> list:
        k = len(self.x)
        sat = [(i, p, v) for i, p, v in self.pairs if p != v]
        s = sum(v for _, _, v in self.pairs)
        lines = [
            f"3. int16 pair saturation ({self.accumulation}): raw codes in pairs k = 0,1 | 2,3 | ...,"
            " each pair sum clamped to [-32768, 32767] (vpmaddubsw), then added in int32",
        ]
        for i, p, v in self.pairs:
            pair = f"{self.x[i]}*{self.w[i]}" + (f" + {self.x[i + 1]}*{self.w[i + 1]}" if i + 1 < k else "")
            mark = f" -> saturates to {v}" if p != v else ""
            lines.append(f"   k={i:<3d} {pair} = {p}{mark}")
        lines += [
            f"   {len(sat)} of {len(self.pairs)} pairs saturated;  S = sum of the int16 pair sums = {s}",
            "   zero points applied afterwards, exactly: acc = S - Z_x sum (q_w - Z_w) - Z_w sum q_x",
            f"     = {s} - {self.z_x}*{self.folded['sum_w'] - k * self.z_w} - {self.z_w}*{self.folded['sum_x']}"
            f" = {self.acc}",
            f"   (the exact sum((q_x - Z_x)(q_w - Z_w)) is {self.exact_acc}: "
            f"{'equal' if self.exact_acc == self.acc else f'off by {self.acc - self.exact_acc}'})",
        ]
        return lines


def _ints(a, name: str) -> list:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer codes, got dtype {arr.dtype}")
    return [int(v) for v in arr.ravel()]


def explain_dot(x_codes, z_x: int, w_codes, z_w: int, bias: int, s_x: float, s_w: float,
                s_y: float, z_y: int, qmin: int, qmax: int, *, mode: str = "tflite",
                title: str = "one output element", accumulation: str = "exact") -> Explanation:
    """Explain ``clamp(requantize(sum((q_x - Z_x)(q_w - Z_w)) + bias) + Z_y)`` step by step.

    ``x_codes`` and ``w_codes`` are equal-length integer vectors (the receptive field and
    the weights of one output, in the order the kernel reduces them); scales are float32
    values; ``bias`` is int32. ``accumulation`` is ``"exact"`` or ``"int16_pairs"`` (uint8
    ``x``, int8 ``w``): then the trace lists every pair sum and marks the saturated ones
    (:mod:`npquant.qnn.accumulation`).
    """
    check_choice(mode, "mode", REQUANT_MODES)
    check_choice(accumulation, "accumulation", ("exact", PAIRS))
    x = _ints(x_codes, "x_codes")
    w = _ints(w_codes, "w_codes")
    if len(x) != len(w) or not x:
        raise ValueError(f"x_codes and w_codes must have the same non-zero length, got {len(x)} and {len(w)}")
    z_x = check_int(z_x, "z_x")
    z_w = check_int(z_w, "z_w")
    bias = check_int(bias, "bias", lo=-(1 << 31), hi=(1 << 31) - 1)
    qmin = check_int(qmin, "qmin")
    qmax = check_int(qmax, "qmax", lo=qmin)
    z_y = check_int(z_y, "z_y", lo=qmin, hi=qmax)
    acc = sum((a - z_x) * (b - z_w) for a, b in zip(x, w))
    k = len(x)
    folded = {"sum_xw": sum(a * b for a, b in zip(x, w)), "sum_x": sum(x), "sum_w": sum(w)}
    folded["total"] = folded["sum_xw"] - z_w * folded["sum_x"] - z_x * folded["sum_w"] + k * z_x * z_w
    exact_acc, pairs = acc, []
    if accumulation == PAIRS:
        if min(x) < 0 or max(x) > 255 or min(w) < -128 or max(w) > 127:
            raise ValueError("accumulation='int16_pairs' needs uint8 x_codes and int8 w_codes")
        for i in range(0, k, 2):
            p = sum(x[t] * w[t] for t in range(i, min(i + 2, k)))
            pairs.append((i, p, min(max(p, INT16_MIN), INT16_MAX)))
        acc = sum(v for _, _, v in pairs) - z_x * (folded["sum_w"] - k * z_w) - z_w * folded["sum_x"]
    total = acc + bias
    if not -(1 << 31) <= total < (1 << 31):
        raise ValueError(f"acc + bias = {total} overflows int32")
    m = float(effective_multiplier(s_x, s_w, s_y, mode).reshape(-1)[0])
    steps = []
    if mode in ("tflite", "tflite_single"):
        m0, shift = (int(v) for v in quantize_multiplier(m, "double" if mode == "tflite" else "single"))
        steps.append(("fixed point", f"m0 = {m0} (0x{m0:08X}), shift = {shift}: "
                                     f"M ~ m0 * 2^{shift - 31} = {float(Fraction(m0) * Fraction(2) ** (shift - 31))!r}"))
        if mode == "tflite":
            left, right = max(shift, 0), max(-shift, 0)
            shifted = total << left
            steps.append(("left shift", f"(acc + bias) << {left} = {shifted}"))
            high = _srdhm(shifted, m0)
            steps.append(("high multiply", f"SaturatingRoundingDoublingHighMul(., m0) = round({shifted} * m0 / 2^31)"
                                           f" = {high}  (ties toward +inf)"))
            scaled = _rdbpot(high, right)
            steps.append(("rounding shift", f"RoundingDivideByPOT(., {right}) = {scaled}  (ties away from zero)"))
        else:
            tot = 31 - shift
            scaled = (total * m0 + (1 << (tot - 1))) >> tot
            steps.append(("single rounding", f"({total} * m0 + 2^{tot - 1}) >> {tot} = {scaled}  (ties toward +inf)"))
    else:
        p = requant_params(m, mode)
        m32 = float(p.multiplier32[0])
        if mode == "fp32":
            prod = float(np.float32(np.float32(total) * np.float32(m32)))
            scaled = int(np.rint(prod))
            steps.append(("float32 product", f"float32(acc + bias) * float32(M) = {prod!r}"))
            steps.append(("round", f"rint(.) = {scaled}  (ties to even)"))
        else:
            prod = float(total) * m32 + z_y
            steps.append(("float64", f"float64(acc + bias) * float64(float32(M)) + Z_y = {prod!r}"))
            steps.append(("round", f"rint(.) = {int(np.rint(prod))}  (ties to even); the zero point is already in"))
            scaled = int(np.rint(prod)) - z_y
    before = scaled + z_y
    code = int(requantize(np.array([total]), m, z_y, qmin, qmax, mode=mode)[0])
    assert code == min(max(before, qmin), qmax)  # the trace is the computation
    deq = float(s_y) * (code - z_y)
    ref = float(Fraction(float(np.float32(s_x))) * Fraction(float(np.float32(s_w))) * total)
    return Explanation(title=title, mode=mode, x=x, z_x=z_x, w=w, z_w=z_w, acc=acc, folded=folded, bias=bias,
                       s_x=float(np.float32(s_x)), s_w=float(np.float32(s_w)), s_y=float(np.float32(s_y)),
                       multiplier=m, steps=steps, z_y=z_y, qmin=qmin, qmax=qmax, before_clamp=before, code=code,
                       dequantized=deq, reference=ref, error_lsb=(deq - ref) / float(np.float32(s_y)),
                       accumulation=accumulation, pairs=pairs, exact_acc=exact_acc)


def _srdhm(a: int, b: int) -> int:
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    n = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return n >> 31 if n >= 0 else -((-n) >> 31)


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def _channel(qp: QParams, o: int):
    if qp.spec.axis is None:
        return float(qp.scale), int(qp.zero_point)
    return float(qp.scale[o]), int(qp.zero_point[o])


def _per_tensor(qp, name: str):
    if not isinstance(qp, QParams):
        raise TypeError(f"{name} must be a QParams, got {type(qp).__name__}")
    if qp.spec.axis is not None:
        raise ValueError(f"{name} must be per-tensor")
    return float(qp.scale), int(qp.zero_point)


def explain_linear(x_q, x_qp: QParams, w_q, w_qp: QParams, bias_q, y_qp: QParams, row: int, col: int,
                   *, mode: str = "tflite", qmin: int | None = None, qmax: int | None = None,
                   accumulation: str = "exact") -> Explanation:
    """Explain output ``[row, col]`` of a linear layer: x (N, in) codes, w (out, in);
    ``accumulation`` as in :func:`npquant.qnn.gemm.linear_accumulate`."""
    check_accumulation(accumulation)
    x = np.asarray(x_q)
    w = np.asarray(w_q)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x_q (N, in) and w_q (out, in) do not fit: {x.shape} and {w.shape}")
    row = check_int(row, "row", lo=0, hi=x.shape[0] - 1)
    col = check_int(col, "col", lo=0, hi=w.shape[0] - 1)
    s_x, z_x = _per_tensor(x_qp, "x_qp")
    s_y, z_y = _per_tensor(y_qp, "y_qp")
    if not isinstance(w_qp, QParams):
        raise TypeError(f"w_qp must be a QParams, got {type(w_qp).__name__}")
    s_w, z_w = _channel(w_qp, col)
    b = 0 if bias_q is None else int(np.asarray(bias_q).reshape(-1)[col])
    lo = y_qp.spec.qmin if qmin is None else qmin
    hi = y_qp.spec.qmax if qmax is None else qmax
    return explain_dot(x[row], z_x, w[col], z_w, b, s_x, s_w, s_y, z_y, lo, hi, mode=mode,
                       title=f"linear layer, output element [{row}, {col}]",
                       accumulation=resolve(accumulation, "linear"))


def explain_conv2d(x_q, x_qp: QParams, w_q, w_qp: QParams, bias_q, y_qp: QParams, index, *,
                   stride=1, padding=0, dilation=1, groups: int = 1, mode: str = "tflite",
                   qmin: int | None = None, qmax: int | None = None, accumulation: str = "exact") -> Explanation:
    """Explain output ``index = (n, o, i, j)`` of a conv2d: x NCHW codes, w OIHW.

    The receptive field is gathered explicitly, padding positions holding ``Z_x`` (so
    they contribute 0 after the correction), and the dot product is traced, in (c, kh,
    kw) order, or (kh, kw, c) when ``accumulation`` resolves to int16 pairs for this
    geometry (the order fbgemm and MLAS pair in).
    """
    check_accumulation(accumulation)
    x = np.asarray(x_q)
    w = np.asarray(w_q)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"x_q must be NCHW and w_q OIHW, got shapes {x.shape} and {w.shape}")
    geo = conv_geometry(stride, padding, dilation, groups)
    groups = geo.groups
    (sh, sw_), (pt, pb, pl, pr), (dh, dw) = geo.stride, geo.padding, geo.dilation
    n, o, i, j = (int(v) for v in index)
    cin_g = w.shape[1]
    if x.shape[1] != cin_g * groups or w.shape[0] % groups:
        raise ValueError(f"channels do not fit groups={groups}: x {x.shape}, w {w.shape}")
    kh, kw = w.shape[2:]
    oh = (x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw_ + 1
    if not (0 <= n < x.shape[0] and 0 <= o < w.shape[0] and 0 <= i < oh and 0 <= j < ow):
        raise ValueError(f"index {tuple(index)} is outside the output shape {(x.shape[0], w.shape[0], oh, ow)}")
    s_x, z_x = _per_tensor(x_qp, "x_qp")
    s_y, z_y = _per_tensor(y_qp, "y_qp")
    s_w, z_w = _channel(w_qp, o)
    g = o // (w.shape[0] // groups)
    acc_mode = resolve(accumulation, "conv2d", conv=(x.shape[1], w.shape[0], groups, (kh, kw), geo.stride,
                                                     geo.padding, geo.dilation))
    patch = np.empty((cin_g, kh, kw), np.int64)
    for c in range(cin_g):
        for a in range(kh):
            for b in range(kw):
                r = i * sh - pt + a * dh
                s = j * sw_ - pl + b * dw
                inside = 0 <= r < x.shape[2] and 0 <= s < x.shape[3]
                patch[c, a, b] = int(x[n, g * cin_g + c, r, s]) if inside else z_x
    wo = w[o]
    if acc_mode == PAIRS:  # (kh, kw, c), c fastest
        patch, wo = patch.transpose(1, 2, 0), wo.transpose(1, 2, 0)
    b = 0 if bias_q is None else int(np.asarray(bias_q).reshape(-1)[o])
    lo = y_qp.spec.qmin if qmin is None else qmin
    hi = y_qp.spec.qmax if qmax is None else qmax
    return explain_dot(patch.ravel(), z_x, wo.ravel(), z_w, b, s_x, s_w, s_y, z_y, lo, hi, mode=mode,
                       title=f"conv2d, output element (n={n}, o={o}, i={i}, j={j})", accumulation=acc_mode)


def builtin_example(layer: str = "linear", seed: int = 0) -> dict:
    """A small quantized layer made from seeded float data, for ``npquant explain``.

    uint8 asymmetric input, int8 symmetric per-channel weights, int32 bias at
    ``S_x S_w``, uint8 output whose range is calibrated on the float output. Returns the
    keyword arguments of :func:`explain_linear` / :func:`explain_conv2d` (without ``mode``).
    """
    from .linear import quantize
    from .qparams import QuantSpec, compute_qparams, fit_qparams

    check_choice(layer, "layer", ("linear", "conv"))
    rng = np.random.default_rng(seed)
    if layer == "linear":
        x = rng.uniform(0, 1, (2, 16)).astype(np.float32)
        w = (rng.normal(size=(4, 16)) * 0.3).astype(np.float32)
        b = (rng.normal(size=4) * 0.1).astype(np.float32)
        y = x @ w.T + b
    else:
        x = rng.uniform(0, 1, (1, 2, 5, 5)).astype(np.float32)
        w = (rng.normal(size=(3, 2, 3, 3)) * 0.3).astype(np.float32)
        b = (rng.normal(size=3) * 0.1).astype(np.float32)
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y = np.zeros((1, 3, 5, 5), np.float32)
        for i in range(5):
            for j in range(5):
                y[0, :, i, j] = np.tensordot(w, xp[0, :, i:i + 3, j:j + 3], axes=3) + b
    x_qp = fit_qparams(x, QuantSpec(signed=False))
    w_qp = fit_qparams(w, QuantSpec(symmetric=True, axis=0))
    y_qp = compute_qparams(y.min(), y.max(), QuantSpec(signed=False))
    bias_q = np.round(b.astype(np.float64) / (float(x_qp.scale) * w_qp.scale.astype(np.float64))).astype(np.int32)
    out = dict(x_q=quantize(x, x_qp), x_qp=x_qp, w_q=quantize(w, w_qp), w_qp=w_qp, bias_q=bias_q, y_qp=y_qp)
    if layer == "conv":
        out.update(index=(0, 1, 2, 3), padding=1)
    else:
        out.update(row=0, col=1)
    return out
