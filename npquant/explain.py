"""Step-by-step traces of the integer arithmetic of one output element, for teaching.

:func:`explain_dot` follows one output of an integer linear or conv layer from its codes
to its output code, in the notation of Jacob et al. 2018 ("Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference"):

0. (when the float tensors are given) the float inputs, weights and bias, the scale and
   zero point of each, and the rounding of every value to its code;
1. every term: the codes, the zero-point corrections and the product;
2. the int32 accumulator, summed directly and in the folded form of eq. 7;
3. the int32 bias;
4. the real multiplier ``M = S_x S_w / S_y``, as ``2^-n M0`` with ``M0`` in
   ``[0.5, 1)`` (Jacob et al.) and as npquant's and TFLite's int32 ``m0`` and ``shift``;
5. every rounding of the requantization ``mode``, each value computed by the scalar
   reference of that mode (:func:`npquant.requant.modes.requantize_scalar`, built on the
   primitives of :mod:`npquant.requant.fixedpoint`);
6. the output zero point and the clamp;
7. the output code dequantized, and its error against the float layer and against the
   real value of the integer accumulator.

Every rounding is computed by the library's own functions (the scalar references of
:mod:`npquant.requant.modes` and :mod:`npquant.requant.fixedpoint`,
:func:`npquant.affine.quantize`, :func:`npquant.qnn.bias.quantize_bias`), and the result
is checked against :func:`npquant.requant.modes.requantize` (the kernel); :func:`explain_linear` and
:func:`explain_conv2d` also check the accumulator and the code against the integer layers
(:func:`npquant.qnn.linear.qlinear`, :func:`npquant.qnn.conv.qconv2d`), so a trace cannot
drift from the arithmetic it explains. All integers are Python ints (exact); reals are
printed from float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._checks import check_bool, check_choice, check_int, check_int_array, check_qparams
from ._table import format_table
from .qnn.accumulation import PAIRS, check_accumulation, resolve
from .qnn.conv import conv_geometry
from .qnn.overflow import INT16_MAX, INT16_MIN
from .qparams import QParams
from .requant.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_scalar,
)
from .requant.modes import (
    REQUANT_MODES,
    effective_multiplier,
    fbgemm_requantize_scalar,
    requantize,
    requantize_scalar,
)
from .rounding import round_scalar

if TYPE_CHECKING:
    from .models.convert import IntegerModel
    from .models.graph import Graph

#: Terms of the dot product that ``str(explanation)`` lists (all with ``format(all_terms=True)``).
SHOWN_TERMS = 8

_MODE_NOTES = {
    "tflite": "TFLite reference kernels and gemmlowp: fixed-point m0, shift; two roundings",
    "tflite_single": "TFLite built with TFLITE_SINGLE_ROUNDING: fixed-point m0, shift; one rounding",
    "fp32": "PyTorch fbgemm: float32 multiply, round half to even",
    "onnx": "ONNX reference QLinearMatMul/QLinearConv: float64 multiply, zero point, round half to even",
}


class ExplainConsistencyError(AssertionError):
    """A trace disagrees with the library computation it explains: a bug in npquant."""


@dataclass
class FloatInputs:
    """The float values behind one output element: step 0 of a trace.

    ``x`` and ``w`` are the float inputs and weights of the terms, in the order of the
    codes (padding taps of a convolution hold 0.0); ``b`` is the float bias (0.0 for
    none); ``notes`` are lines saying how the scales and zero points were found (they
    are printed as they are). ``x_rounding`` and ``w_rounding`` name the rounding modes
    of the specs that made the codes.
    """

    x: list
    w: list
    b: float = 0.0
    notes: list = field(default_factory=list)
    x_rounding: str = "half_even"
    w_rounding: str = "half_even"


@dataclass
class Explanation:
    """The steps of one output element; ``str()`` formats them for reading, and
    :meth:`format` with ``all_terms=True`` lists every term of the dot product."""

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
    steps: list = field(default_factory=list)  # (label, text) pairs of the requantization
    z_y: int = 0
    qmin: int = -128
    qmax: int = 127
    scaled: int = 0  # round(acc * M) before the zero point (onnx: rint(acc * M + Z_y) - Z_y)
    before_clamp: int = 0
    code: int = 0
    dequantized: float = 0.0
    reference: float = 0.0  # S_x S_w (acc + bias), the real value of the integer accumulator
    error_lsb: float = 0.0  # (dequantized - reference) / S_y
    accumulation: str = "exact"
    pairs: list = field(default_factory=list)  # (k, exact pair sum, int16 value) with int16 pairs
    exact_acc: int = 0  # the exact sum, when the accumulation saturates pairs
    m0: int | None = None  # the int32 fixed-point multiplier (tflite modes)
    shift: int | None = None
    floats: FloatInputs | None = None
    float_output: float | None = None  # the float layer: sum x w + b, exact from the float32 values, as float64
    float_error_lsb: float | None = None  # (dequantized - float_output) / S_y
    labels: list | None = None  # a name for each term (conv: channel and kernel position)
    float_bias: float | None = None  # PyTorch fbgemm's float bias (then bias is 0), added in step 5

    def __str__(self) -> str:
        return self.format()

    def format(self, all_terms: bool = False) -> str:
        """The trace as text; ``all_terms`` lists every term (else the first
        :data:`SHOWN_TERMS`)."""
        all_terms = check_bool(all_terms, "all_terms")
        lines = [self.title, f"  mode: {self.mode} ({_MODE_NOTES[self.mode]})", ""]
        if self.floats is not None:
            lines += self._float_lines()
        lines += self._term_lines(all_terms)
        lines += self._pair_lines() if self.pairs else self._acc_lines()
        if self.float_bias is None:
            lines += [
                f"3. bias (int32, scale S_x S_w, zero point 0) = {self.bias};  "
                f"acc + bias = {self.acc} + {_paren(self.bias)} = {self.acc + self.bias}"
            ]
        else:
            lines += [
                f"3. bias: PyTorch's float bias b = {self.float_bias!r}, not an int32 code: fbgemm adds "
                "b / (S_x S_w) to float32(acc) in step 5"
            ]
        lines += self._multiplier_lines()
        lines += [f"5. rounding of mode {self.mode}"]
        lines += [f"   {label}: {text}" for label, text in self.steps]
        lines += self._clamp_lines()
        lines += self._result_lines()
        return "\n".join(lines)

    # ---- the parts of the text

    def _float_lines(self) -> list:
        f = self.floats
        lines = ["0. from floats to codes: q = clamp(round(r / S) + Z, qmin, qmax)  (npquant.quantize)"]
        lines += [f"   {n}" for n in f.notes]
        s_b = float(np.float32(np.float32(self.s_x) * np.float32(self.s_w)))
        if self.bias or f.b:
            ratio = float(f.b) / s_b
            lines.append(
                f"   bias: q_b = round(b / float32(S_x S_w)) = round({_g(f.b)} / {_g(s_b)}) "
                f"= round({ratio:.4f}) = {self.bias}  (half to even, in float64; int32, zero point 0)"
            )
        return lines

    def _term_lines(self, all_terms: bool) -> list:
        k = len(self.x)
        show = k if all_terms else min(k, SHOWN_TERMS)
        f = self.floats
        head = "1. the terms: codes, zero-point corrections and products"
        lines = [f"{head} ({k} terms{'' if show == k else f', {show} shown'})"]
        headers = ["k"]
        if f is not None:
            headers += ["x", "x/S_x", "q_x", "w", "w/S_w", "q_w"]
        else:
            headers += ["q_x", "q_w"]
        headers += ["q_x-Z_x", "q_w-Z_w", "product"]
        rows = []
        for i in range(show):
            a, b = self.x[i], self.w[i]
            name = str(i) if self.labels is None else f"{i} {self.labels[i]}"
            row = [name]
            if f is not None:
                row += [
                    _g6(f.x[i]),
                    f"{_over(f.x[i], self.s_x):.3f}",
                    str(a),
                    _g6(f.w[i]),
                    f"{_over(f.w[i], self.s_w):.3f}",
                    str(b),
                ]
            else:
                row += [str(a), str(b)]
            row += [str(a - self.z_x), str(b - self.z_w), str((a - self.z_x) * (b - self.z_w))]
            rows.append(row)
        table = format_table(headers, rows, align="l" + "r" * (len(headers) - 1))
        lines += ["   " + ln for ln in table.splitlines()]
        if f is not None:
            lines.append(
                f"   (q_x = round(x/S_x) + Z_x, Z_x = {self.z_x}, rounding {f.x_rounding}; "
                f"q_w = round(w/S_w) + Z_w, Z_w = {self.z_w}, rounding {f.w_rounding})"
            )
        else:
            lines.append(f"   (Z_x = {self.z_x}, Z_w = {self.z_w})")
        if show < k:
            lines.append(f"   ... {k - show} more terms: --all-terms (format(all_terms=True)) prints every one")
        return lines

    def _acc_lines(self) -> list:
        k = len(self.x)
        fo = self.folded
        t = [fo["sum_xw"], -self.z_w * fo["sum_x"], -self.z_x * fo["sum_w"], k * self.z_x * self.z_w]
        return [
            f"2. int32 accumulator  acc = sum of the {k} products = {self.acc}",
            "   folded form (Jacob et al. 2018, eq. 7): acc = sum q_x q_w - Z_w sum q_x - Z_x sum q_w + K Z_x Z_w",
            f"     = {fo['sum_xw']} - {_paren(self.z_w)}*{_paren(fo['sum_x'])} - {_paren(self.z_x)}*"
            f"{_paren(fo['sum_w'])} + {k}*{_paren(self.z_x)}*{_paren(self.z_w)}",
            f"     = {_signed_sum(t)} = {fo['total']}",
            f"   (K = {k}; sum q_w = {fo['sum_w']} and K Z_x Z_w depend on the weights only: a kernel folds "
            "them into the bias once, then sums q_x q_w and q_x)",
        ]

    def _pair_lines(self) -> list:
        k = len(self.x)
        sat = [(i, p, v) for i, p, v in self.pairs if p != v]
        s = sum(v for _, _, v in self.pairs)
        lines = [
            f"2. int16 pair saturation ({self.accumulation}): raw codes in pairs k = 0,1 | 2,3 | ...,"
            " each pair sum clamped to [-32768, 32767] (vpmaddubsw), then added in int32",
        ]
        for i, p, v in self.pairs:
            pair = f"{self.x[i]}*{_paren(self.w[i])}" + (
                f" + {self.x[i + 1]}*{_paren(self.w[i + 1])}" if i + 1 < k else ""
            )
            mark = f" -> saturates to {v}" if p != v else ""
            lines.append(f"   k={i:<3d} {pair} = {p}{mark}")
        lines += [
            f"   {len(sat)} of {len(self.pairs)} pairs saturated;  S = sum of the int16 pair sums = {s}",
            "   zero points applied afterwards, exactly: acc = S - Z_x sum (q_w - Z_w) - Z_w sum q_x",
            f"     = {s} - {_paren(self.z_x)}*{_paren(self.folded['sum_w'] - k * self.z_w)} - "
            f"{_paren(self.z_w)}*{_paren(self.folded['sum_x'])} = {self.acc}",
            f"   (the exact sum((q_x - Z_x)(q_w - Z_w)) is {self.exact_acc}: "
            f"{'equal' if self.exact_acc == self.acc else f'off by {self.acc - self.exact_acc}'})",
        ]
        return lines

    def _multiplier_lines(self) -> list:
        how = (
            "float64 from the float32 scales, as TFLite"
            if self.mode.startswith("tflite")
            else "float32(S_x S_w) / S_y in float32, as " + ("fbgemm" if self.mode == "fp32" else "ONNX")
        )
        lines = [
            f"4. real multiplier M = S_x S_w / S_y = {self.s_x!r} * {self.s_w!r} / {self.s_y!r}"
            f" = {self.multiplier!r}  ({how})"
        ]
        if self.m0 == 0:
            lines.append("   M < 2^-32: TFLite flushes it to m0 = 0, shift = 0 (every output is the zero point)")
        elif self.m0 is not None:
            m0, shift = self.m0, self.shift
            n = -shift
            big_m0 = Fraction(m0, 1 << 31)
            lines += [
                f"   Jacob et al.: M = 2^-n M0 with M0 in [0.5, 1): n = {n}, M0 = M * 2^{n} = "
                f"{float(Fraction(self.multiplier) * Fraction(2) ** n)!r}",
                "   npquant / TFLite: M0 held as the int32 m0 = round(M0 * 2^31), and shift = -n:",
                f"   m0 = {m0} (0x{m0:08X}), shift = {shift}: M ~ m0 * 2^(shift - 31) = "
                f"{float(big_m0 * Fraction(2) ** shift)!r}  (M0 ~ m0 / 2^31 = {float(big_m0)!r})",
            ]
        return lines

    def _clamp_lines(self) -> list:
        sat = ""
        if self.before_clamp > self.qmax:
            sat = f"  (saturated: {self.before_clamp} > qmax)"
        elif self.before_clamp < self.qmin:
            sat = f"  (saturated: {self.before_clamp} < qmin)"
        if self.mode == "onnx":
            first = (
                f"6. zero point: ONNX added Z_y = {self.z_y} before rounding (step 5), so {self.before_clamp} "
                "is already the code before the clamp"
            )
        else:
            first = f"6. + Z_y: {self.scaled} + {_paren(self.z_y)} = {self.before_clamp}"
        return [first, f"   clamp to [{self.qmin}, {self.qmax}]: {self.before_clamp} -> code {self.code}{sat}"]

    def _result_lines(self) -> list:
        lines = [
            f"7. dequantized  S_y (code - Z_y) = {self.s_y!r} * {_paren(self.code - self.z_y)} = {self.dequantized:.9g}"
        ]
        if self.float_output is not None:
            ideal = self.float_output / self.s_y + self.z_y
            lines.append(
                f"   float layer   sum x w + b (exact, of the float x, w, b) = {self.float_output:.9g}"
                f"   error {self.float_error_lsb:+.4f} LSB  (ideal code y / S_y + Z_y = {ideal:.4f})"
            )
        what = "S_x S_w acc + b" if self.float_bias is not None else "S_x S_w (acc + bias)"
        lines.append(
            f"   integer acc   {what}, its exact real value = {self.reference:.9g}   error {self.error_lsb:+.4f} LSB"
        )
        lines.append(
            "   (LSB = S_y, one output step. Against the integer accumulator the error is the "
            "requantization's rounding and clamp; against the float layer it also holds the rounding "
            "of x, w and b to codes)"
            if self.float_output is not None
            else "   (LSB = S_y, one output step; the error is the requantization's rounding and clamp)"
        )
        return lines


def _g(v) -> str:
    return f"{float(v):.9g}"


def _g6(v) -> str:
    return f"{float(v):.6g}"


def _over(r, s) -> float:
    """``float32(r) / float32(s)``: the value :func:`npquant.quantize` rounds (method
    ``divide``)."""
    return float(np.float32(r) / np.float32(s))


def _paren(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def _signed_sum(terms) -> str:
    out = str(terms[0])
    for t in terms[1:]:
        out += f" - {-t}" if t < 0 else f" + {t}"
    return out


def _decimal(fr: Fraction, digits: int = 6) -> str:
    """An exact rational as a decimal with ``digits`` places, followed by ``exactly`` when
    that decimal is the rational itself."""
    text = f"{float(fr):.{digits}f}"
    return text + (" exactly" if Fraction(text) == fr else "")


def _ints(a, name: str) -> list:
    return [int(v) for v in check_int_array(a, name, what="integer codes").ravel()]


def _floats(a, name: str, n: int) -> list:
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be floats, got dtype {arr.dtype}")
    if arr.size != n:
        raise ValueError(f"{name} must hold one value per term ({n}), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return [float(v) for v in arr.astype(np.float32).ravel()]


def explain_dot(
    x_codes: npt.ArrayLike,
    z_x: int,
    w_codes: npt.ArrayLike,
    z_w: int,
    bias: int,
    s_x: float,
    s_w: float,
    s_y: float,
    z_y: int,
    qmin: int,
    qmax: int,
    *,
    mode: str = "tflite",
    title: str = "one output element",
    accumulation: str = "exact",
    floats: FloatInputs | None = None,
    labels: Sequence[str] | None = None,
    float_bias: float | None = None,
    float_bias_fma: bool = True,
) -> Explanation:
    """Explain ``clamp(requantize(sum((q_x - Z_x)(q_w - Z_w)) + bias) + Z_y)`` step by step.

    Parameters
    ----------
    x_codes : integer vector
        The receptive field of one output, in the order the kernel reduces it.
    z_x : int
        Zero point of the input.
    w_codes : integer vector of ``x_codes``' length
        The weights of that output, in the same order.
    z_w : int
        Zero point of the weights.
    bias : int
        int32 bias at scale ``S_x S_w``, zero point 0.
    s_x, s_w, s_y : float
        Scales of the input, the weights and the output (taken as float32, as every
        stack holds them).
    z_y : int
        Zero point of the output.
    qmin, qmax : int
        The output code range (narrowed for a fused activation).
    mode : one of :data:`npquant.requant.modes.REQUANT_MODES`
    title : str, default ``"one output element"``
        The heading of the explanation.
    accumulation : ``"exact"`` or ``"int16_pairs"``
        With ``"int16_pairs"`` (uint8 ``x``, int8 ``w``) the trace lists every pair sum
        and marks the saturated ones (:mod:`npquant.qnn.accumulation`).
    floats : FloatInputs, optional
        The float values behind the codes: adds step 0 and the error against the float
        layer ``sum x w + b`` (exact from the float32 values, rounded to float64).
    labels : list of str, optional
        A name for each term, printed beside its index.
    float_bias : float or None, default None
        PyTorch fbgemm's float bias of this output channel (``mode="fp32"``, ``bias=0``): the
        requantization is then fbgemm's (:mod:`npquant.qnn.fbgemm`), ``float32(acc)`` plus the
        bias divided by ``float32(S_x S_w)``, times ``M``, rounded half to even.
    float_bias_fma : bool, default True
        How fbgemm adds the float bias: one fused multiply-add by ``float32(1 / (S_x S_w))``
        (per-tensor weights, True) or a float32 add of ``float32(b / (S_x S_w))``
        (per-channel weights, False).

    Returns
    -------
    Explanation
        ``code`` equals :func:`npquant.requant.modes.requantize` of ``acc + bias``; a
        disagreement raises :class:`ExplainConsistencyError` (a bug in npquant). ``acc +
        bias`` beyond int32 is a ``ValueError``.
    """
    check_choice(mode, "mode", REQUANT_MODES)
    check_choice(accumulation, "accumulation", ("exact", PAIRS))
    x = _ints(x_codes, "x_codes")
    w = _ints(w_codes, "w_codes")
    if len(x) != len(w) or not x:
        raise ValueError(f"x_codes and w_codes must have the same non-zero length, got {len(x)} and {len(w)}")
    z_x = check_int(z_x, "z_x")
    z_w = check_int(z_w, "z_w")
    bias = check_int(bias, "bias", lo=INT32_MIN, hi=INT32_MAX)
    qmin = check_int(qmin, "qmin")
    qmax = check_int(qmax, "qmax", lo=qmin)
    z_y = check_int(z_y, "z_y", lo=qmin, hi=qmax)
    k = len(x)
    if floats is not None:
        if not isinstance(floats, FloatInputs):
            raise TypeError(f"floats must be a FloatInputs, got {type(floats).__name__}")
        floats = FloatInputs(
            _floats(floats.x, "floats.x", k),
            _floats(floats.w, "floats.w", k),
            float(np.float32(floats.b)),
            list(floats.notes),
            floats.x_rounding,
            floats.w_rounding,
        )
    if labels is not None:
        labels = [str(v) for v in labels]
        if len(labels) != k:
            raise ValueError(f"labels must name each of the {k} terms, got {len(labels)}")
    acc = sum((a - z_x) * (b - z_w) for a, b in zip(x, w))
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
    if not INT32_MIN <= total <= INT32_MAX:
        raise ValueError(f"acc + bias = {total} overflows int32")
    if float_bias is not None:
        return _explain_float_bias(locals())
    m = float(effective_multiplier(s_x, s_w, s_y, mode).reshape(-1)[0])
    # the library's result first: it also refuses what the stack cannot compute (tflite's left shift)
    code = int(requantize(np.array([total], np.int64), m, z_y, qmin, qmax, mode=mode)[0])
    r = requantize_scalar(total, m, z_y, qmin, qmax, mode)
    steps = _requant_steps(r)
    scaled, before = r.scaled, r.before_clamp
    if code != r.code:
        raise ExplainConsistencyError(
            f"the trace (npquant.requant.modes.requantize_scalar) gives code {r.code} but "
            f"npquant.requant.modes.requantize gives {code} for acc + bias = {total}, M = {m!r}, mode={mode!r}: "
            "a bug in npquant, please report it"
        )
    s_x32, s_w32, s_y32 = (float(np.float32(v)) for v in (s_x, s_w, s_y))
    deq = s_y32 * (code - z_y)
    ref = float(Fraction(s_x32) * Fraction(s_w32) * total)
    y_float = f_err = None
    if floats is not None:
        y_float = float(sum(Fraction(a) * Fraction(b) for a, b in zip(floats.x, floats.w)) + Fraction(floats.b))
        f_err = (deq - y_float) / s_y32
    return Explanation(
        title=title,
        mode=mode,
        x=x,
        z_x=z_x,
        w=w,
        z_w=z_w,
        acc=acc,
        folded=folded,
        bias=bias,
        s_x=s_x32,
        s_w=s_w32,
        s_y=s_y32,
        multiplier=m,
        steps=steps,
        z_y=z_y,
        qmin=qmin,
        qmax=qmax,
        scaled=scaled,
        before_clamp=before,
        code=code,
        dequantized=deq,
        reference=ref,
        error_lsb=(deq - ref) / s_y32,
        accumulation=accumulation,
        pairs=pairs,
        exact_acc=exact_acc,
        m0=r.m0,
        shift=r.shift,
        floats=floats,
        float_output=y_float,
        float_error_lsb=f_err,
        labels=labels,
    )


def _explain_float_bias(v: dict) -> Explanation:
    """The rest of :func:`explain_dot` for PyTorch fbgemm's float bias (its local variables ``v``)."""
    from .qnn.fbgemm import fbgemm_requantize

    mode, bias, acc, z_y, qmin, qmax = v["mode"], v["bias"], v["acc"], v["z_y"], v["qmin"], v["qmax"]
    if mode != "fp32" or bias != 0:
        raise ValueError(
            f"float_bias is PyTorch fbgemm's bias: it needs mode='fp32' and bias=0, got mode={mode!r} and bias={bias}"
        )
    if not (0 <= z_y <= 255 and 0 <= qmin <= qmax <= 255):
        raise ValueError("float_bias reproduces fbgemm, whose output is uint8: z_y, qmin and qmax in [0, 255]")
    fma = check_bool(v["float_bias_fma"], "float_bias_fma")
    b = np.float32(v["float_bias"])
    if not np.isfinite(b):
        raise ValueError(f"float_bias must be finite, got {v['float_bias']!r}")
    r = fbgemm_requantize_scalar(acc, v["s_x"], v["s_w"], v["s_y"], b, z_y, qmin, qmax, fused=fma)
    steps = [
        ("act_times_w_scale", f"ats = float32(S_x S_w) = {r.act_times_w_scale!r}"),
        ("multiplier", f"M = float32(ats / float32(S_y)) = {r.multiplier32!r}"),
    ]
    if fma:
        steps.append(
            (
                "bias, fused",
                f"fma(b, float32(1 / ats), float32(acc)) = fma({r.bias!r}, {r.reciprocal!r}, "
                f"{acc}) = {r.raw!r}  (one rounding: fbgemm's per-tensor path)",
            )
        )
    else:
        steps.append(
            (
                "bias, added",
                f"float32(acc) + float32(b / ats) = {acc} + {r.bias_term!r} = {r.raw!r}  (fbgemm's per-channel path)",
            )
        )
    steps.append(("float32 product", f"float32({r.raw!r} * M) = {r.product!r}"))
    if np.isfinite(r.product) and r.scaled == round_scalar(r.product, "half_even"):
        steps.append(("round", f"rint({r.product!r}) = {r.scaled}  (ties to even)"))
    else:
        steps.append(
            ("round", f"outside int32: CVTPS2DQ gives INT32_MIN = {INT32_MIN}, so the code is the lower bound")
        )
    scaled, before, code, mult = r.scaled, r.before_clamp, r.code, r.multiplier32
    width = 2 if fma else 3  # one channel for the per-tensor (FMA) path; several for the per-channel path
    s_w_arr = np.float32(v["s_w"]) if fma else np.full(width, np.float32(v["s_w"]))
    lib = fbgemm_requantize(
        np.full((1, width if not fma else 1), acc, np.int64),
        np.float32(v["s_x"]),
        s_w_arr,
        np.float32(v["s_y"]),
        z_y,
        bias=np.full(1 if fma else width, b, np.float32),
        relu=qmin == z_y and qmin > 0,
    )
    lib_code = min(max(int(lib.reshape(-1)[0]), qmin), qmax)
    if lib_code != code:
        raise ExplainConsistencyError(
            f"the trace gives code {code} but npquant.qnn.fbgemm.fbgemm_requantize gives {lib_code} for acc = {acc}, "
            f"b = {float(b)!r}: a bug in npquant, please report it"
        )
    s_x32, s_w32, s_y32 = (float(np.float32(t)) for t in (v["s_x"], v["s_w"], v["s_y"]))
    deq = s_y32 * (code - z_y)
    ref = float(Fraction(s_x32) * Fraction(s_w32) * acc + Fraction(float(b)))
    return Explanation(
        title=v["title"],
        mode=mode,
        x=v["x"],
        z_x=v["z_x"],
        w=v["w"],
        z_w=v["z_w"],
        acc=acc,
        folded=v["folded"],
        bias=0,
        s_x=s_x32,
        s_w=s_w32,
        s_y=s_y32,
        multiplier=float(mult),
        steps=steps,
        z_y=z_y,
        qmin=qmin,
        qmax=qmax,
        scaled=scaled,
        before_clamp=before,
        code=code,
        dequantized=deq,
        reference=ref,
        error_lsb=(deq - ref) / s_y32,
        accumulation=v["accumulation"],
        pairs=v["pairs"],
        exact_acc=v["exact_acc"],
        labels=v["labels"],
        float_bias=float(b),
    )


def _requant_steps(r) -> list:
    """The ``(label, text)`` steps of mode ``r.mode`` from the scalar reference's values ``r``
    (:func:`npquant.requant.modes.requantize_scalar`); the fixed-point result is also checked
    against the NumPy twin :func:`npquant.requant.fixedpoint.multiply_by_quantized_multiplier`."""
    total, steps = r.acc, []
    if r.mode == "fp32":
        steps.append(
            ("float32 product", f"float32(acc + bias) * float32(M) = {total} * {r.multiplier32!r} = {r.product!r}")
        )
        steps.append(("round", f"rint({r.product!r}) = {r.scaled}  (ties to even)"))
        return steps
    if r.mode == "onnx":
        steps.append(
            (
                "float64 product",
                f"float64(acc + bias) * float64(float32(M)) = {total} * {r.multiplier32!r} = {r.product!r}",
            )
        )
        steps.append(
            (
                "+ Z_y",
                f"{r.product!r} + {_paren(r.before_clamp - r.scaled)} = {r.with_zero_point!r}  "
                "(ONNX adds the zero point before rounding)",
            )
        )
        steps.append(("round", f"rint({r.with_zero_point!r}) = {r.before_clamp}  (ties to even)"))
        return steps
    m0, shift, scaled = r.m0, r.shift, r.scaled
    if r.mode == "tflite":
        left, right = max(shift, 0), max(-shift, 0)
        shifted, high = r.shifted, r.high
        steps.append(
            (
                "left shift",
                f"(acc + bias) << {left} = {shifted}"
                + ("  (M >= 0.5: left shift first)" if left else "  (none: M < 0.5)"),
            )
        )
        steps.append(
            (
                "high multiply",
                f"SaturatingRoundingDoublingHighMul({shifted}, m0) = "
                f"round({shifted} * m0 / 2^31) = round({_decimal(Fraction(shifted * m0, 1 << 31))}) = {high}"
                "  (first rounding, ties toward +inf)",
            )
        )
        steps.append(
            (
                "rounding shift",
                f"RoundingDivideByPOT({high}, {right}) = round({high} / 2^{right}) = "
                f"round({_decimal(Fraction(high, 1 << right))}) = {scaled}"
                "  (second rounding, ties away from zero)",
            )
        )
        exact = Fraction(total * m0, 1 << (31 - shift))
        once = multiply_by_quantized_multiplier_scalar(total, m0, shift, "single")
        same = "the same" if once == scaled else f"{once}, not {scaled}: double rounding"
        steps.append(
            (
                "double rounding",
                f"(acc + bias) * m0 / 2^{31 - shift} = {_decimal(exact)} rounded once "
                f"gives {same}  (explain --ties lists every such accumulator)",
            )
        )
        rounding = "double"
    else:
        tot = 31 - shift
        steps.append(
            (
                "single rounding",
                f"((acc + bias) * m0 + 2^{tot - 1}) >> {tot} = round({total} * m0 / 2^{tot}) "
                f"= round({_decimal(Fraction(total * m0, 1 << tot))}) = {scaled}"
                "  (one rounding, ties toward +inf)",
            )
        )
        rounding = "single"
    lib = int(multiply_by_quantized_multiplier(total, m0, shift, rounding))
    if lib != scaled:
        raise ExplainConsistencyError(
            f"the trace gives {scaled} but npquant.requant.fixedpoint.multiply_by_quantized_multiplier gives {lib} for "
            f"{total}, m0={m0}, shift={shift}: a bug in npquant, please report it"
        )
    return steps


def _channel(qp: QParams, o: int):
    if qp.spec.axis is None:
        return float(qp.scale), int(qp.zero_point)
    if qp.spec.block_size is not None or qp.scale.ndim != 1:
        raise ValueError("w_qp must be per-tensor or per-channel (axis=0), not per-group")
    return float(qp.scale[o]), int(qp.zero_point[o])


def _per_tensor(qp, name: str):
    qp = check_qparams(qp, name, per_tensor=True)
    return float(qp.scale), int(qp.zero_point)


def _check_codes(r, q, qp: QParams, rname: str, qname: str) -> np.ndarray:
    """``r`` as float32 after checking that :func:`npquant.quantize` turns it into ``q``."""
    from .affine import quantize

    r = np.asarray(r)
    if r.dtype.kind != "f":
        raise TypeError(f"{rname} must be a float array, got dtype {r.dtype}")
    if r.shape != np.shape(q):
        raise ValueError(f"{rname} must have the shape of {qname} {np.shape(q)}, got {r.shape}")
    if not np.array_equal(quantize(r, qp), q):
        raise ValueError(
            f"{rname} does not quantize to {qname} with its qparams (npquant.quantize, "
            "method='divide'): pass the float tensor the codes were made from"
        )
    return r.astype(np.float32)


def _qparam_notes(r: np.ndarray, qp: QParams, what: str, sub: str, channel: int | None) -> list:
    """How ``S`` and ``Z`` of ``qp`` follow from the min-max of ``r`` (or that they were given)."""
    from .qparams import fit_qparams

    spec = qp.spec
    kind = (
        f"{'signed' if spec.signed else 'unsigned'} {spec.bits}-bit "
        f"{'symmetric' if spec.symmetric else 'asymmetric'}"
        f"{', narrow range' if spec.narrow_range else ''}, "
        f"{'per-tensor' if spec.axis is None else 'per-channel'}; codes [{spec.qmin}, {spec.qmax}]"
    )
    s, z = _channel(qp, channel) if channel is not None else _per_tensor(qp, what)
    fit = fit_qparams(r, spec)
    if not (np.array_equal(fit.scale, qp.scale) and np.array_equal(fit.zero_point, qp.zero_point)):
        return [f"{what} ({kind}): S_{sub} = {_g(s)}, Z_{sub} = {z} (given: not the min-max of the floats)"]
    part = r if spec.axis is None else np.take(r, channel, axis=spec.axis)
    lo, hi = float(part.min()), float(part.max())
    where = (
        f"all {r.size} values of {what}" if spec.axis is None else f"the {part.size} values of output channel {channel}"
    )
    rng = f"min-max over {where}: [{_g6(lo)}, {_g6(hi)}]"
    if lo > 0 or hi < 0:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        rng += f", widened to include 0: [{_g6(lo)}, {_g6(hi)}]"
    lines = [f"{what} ({kind})", f"  {rng}"]
    if spec.symmetric:
        half = (spec.qmax - spec.qmin) / 2
        lines.append(
            f"  S_{sub} = max(|min|, |max|) / ((qmax - qmin) / 2) = {_g6(max(-lo, hi))} / {half:g} = {_g(s)};"
            f"  Z_{sub} = {z} (fixed by the symmetric spec)"
        )
    else:
        lines.append(f"  S_{sub} = (max - min) / (qmax - qmin) = {_g6(hi - lo)} / {spec.qmax - spec.qmin} = {_g(s)}")
        ratio = np.float32(lo) / np.float32(s)  # float32, as compute_qparams
        raw = spec.qmin - round_scalar(ratio, "half_even")
        clamp = f", clamped to {z}" if raw != z else ""
        lines.append(
            f"  Z_{sub} = qmin - round(min / S_{sub}) = {spec.qmin} - round({float(ratio):.4f}) = {raw}{clamp}"
        )
    return lines


def _float_inputs(x_float, x_q, x_qp, w_float, w_q, w_qp, b_float, bias_q, channel, gather) -> tuple:
    """Check the float tensors against the codes; ``(FloatInputs, ...)`` pieces for one output.

    ``gather(x_float32, w_float32)`` returns the float x and w terms of the output."""
    from .qnn.bias import quantize_bias

    x32 = _check_codes(x_float, x_q, x_qp, "x_float", "x_q")
    w32 = _check_codes(w_float, w_q, w_qp, "w_float", "w_q")
    b = 0.0
    if b_float is not None:
        if bias_q is None:
            raise ValueError("b_float needs bias_q (the int32 codes of the bias)")
        s_w = w_qp.scale if w_qp.spec.axis is not None else float(w_qp.scale)
        bq = quantize_bias(np.asarray(b_float), float(x_qp.scale), s_w)
        if not np.array_equal(bq, np.asarray(bias_q).reshape(bq.shape)):
            raise ValueError(
                "b_float does not give bias_q with npquant.qnn.quantize_bias (round half to even of "
                "b / float32(S_x S_w)): pass the float bias the codes were made from"
            )
        b = float(np.asarray(b_float, np.float32).reshape(-1)[channel])
    notes = _qparam_notes(x32, x_qp, "input x", "x", None) + _qparam_notes(
        w32, w_qp, "weights w", "w", channel if w_qp.spec.axis is not None else None
    )
    xs, ws = gather(x32, w32)
    return FloatInputs(xs, ws, b, notes, x_qp.spec.rounding, w_qp.spec.rounding)


def explain_linear(
    x_q: npt.ArrayLike,
    x_qp: QParams,
    w_q: npt.ArrayLike,
    w_qp: QParams,
    bias_q: npt.ArrayLike | None,
    y_qp: QParams,
    row: int,
    col: int,
    *,
    mode: str = "tflite",
    qmin: int | None = None,
    qmax: int | None = None,
    accumulation: str = "exact",
    x_float: npt.ArrayLike | None = None,
    w_float: npt.ArrayLike | None = None,
    b_float: npt.ArrayLike | None = None,
    float_bias: npt.ArrayLike | None = None,
) -> Explanation:
    """Explain output ``[row, col]`` of an integer linear layer.

    Parameters
    ----------
    x_q : integer array (N, in)
        Codes of the per-tensor ``x_qp``.
    x_qp : QParams
        The input's qparams.
    w_q : integer array (out, in)
        Codes of ``w_qp`` (per-tensor, or per-channel along axis 0).
    w_qp : QParams
        The weights' qparams.
    bias_q : int32 array (out,) or None
        The bias at scale ``S_x S_w``.
    y_qp : QParams
        Per-tensor output qparams; ``qmin``/``qmax`` narrow its range (a fused activation).
    row, col : int
        The output element.
    mode : str
        The requantization mode.
    qmin, qmax : int or None, default None
        The output code range of a fused activation; ``None``: ``y_qp``'s ``qmin`` /
        ``qmax``.
    accumulation : str
        As in :func:`npquant.qnn.linear.linear_accumulate`.
    x_float, w_float, b_float : float arrays of the shapes of ``x_q``, ``w_q``, ``bias_q``, optional
        The floats the codes were made from (they must quantize to them): adds step 0
        (how each value became its code) and the error against the float layer.
    float_bias : float array (out,), optional
        PyTorch fbgemm's float bias, instead of ``bias_q`` (``mode="fp32"``; the output
        range none or ReLU): the requantization traced is fbgemm's
        (:func:`npquant.qnn.fbgemm.fbgemm_requantize`).

    Returns
    -------
    Explanation
        Its ``acc + bias`` and ``code`` are checked against
        :func:`npquant.qnn.linear.linear_accumulate` and :func:`npquant.qnn.linear.qlinear`
        (:class:`ExplainConsistencyError` if they differ: a bug).
    """
    from .qnn.linear import linear_accumulate, qlinear

    check_accumulation(accumulation)
    x = np.asarray(x_q)
    w = np.asarray(w_q)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x_q (N, in) and w_q (out, in) do not fit: {x.shape} and {w.shape}")
    row = check_int(row, "row", lo=0, hi=x.shape[0] - 1)
    col = check_int(col, "col", lo=0, hi=w.shape[0] - 1)
    s_x, z_x = _per_tensor(x_qp, "x_qp")
    s_y, z_y = _per_tensor(y_qp, "y_qp")
    check_qparams(w_qp, "w_qp")
    s_w, z_w = _channel(w_qp, col)
    b = 0 if bias_q is None else int(np.asarray(bias_q).reshape(-1)[col])
    lo = y_qp.spec.qmin if qmin is None else qmin
    hi = y_qp.spec.qmax if qmax is None else qmax
    floats = None
    if x_float is not None or w_float is not None:
        if x_float is None or w_float is None:
            raise ValueError("x_float and w_float go together (b_float is optional)")
        floats = _float_inputs(
            x_float, x, x_qp, w_float, w, w_qp, b_float, bias_q, col, lambda xf, wf: (xf[row], wf[col])
        )
    elif b_float is not None:
        raise ValueError("b_float needs x_float and w_float")
    acc_mode = resolve(accumulation, "linear")
    fb, fma, act = _float_bias_args(float_bias, bias_q, floats, w_qp, y_qp, col, qmin, qmax, lo, hi)
    e = explain_dot(
        x[row],
        z_x,
        w[col],
        z_w,
        b,
        s_x,
        s_w,
        s_y,
        z_y,
        lo,
        hi,
        mode=mode,
        title=f"linear layer, output element [{row}, {col}]",
        accumulation=acc_mode,
        floats=floats,
        float_bias=fb,
        float_bias_fma=fma,
    )
    xr = x[row : row + 1]
    lib_acc = int(linear_accumulate(xr, x_qp, w, w_qp, bias_q, overflow="wrap", accumulation=accumulation)[0, col])
    lib_code = int(
        qlinear(
            xr,
            x_qp,
            w,
            w_qp,
            bias_q if float_bias is None else float_bias,
            y_qp,
            mode=mode if float_bias is None else "fbgemm",
            activation=act,
            overflow="wrap",
            accumulation=accumulation,
        )[0, col]
    )
    _check_layer(e, lib_acc, lib_code, "npquant.qnn.linear.qlinear")
    return e


def _float_bias_args(float_bias, bias_q, floats, w_qp: QParams, y_qp: QParams, channel: int, qmin, qmax, lo, hi):
    """``(float bias of the channel or None, fbgemm's FMA path?, activation for the library layer)``."""
    act = None if (qmin is None and qmax is None) else (lo, hi)
    if float_bias is None:
        return None, True, act
    if bias_q is not None:
        raise ValueError("give either bias_q (int32) or float_bias (fbgemm's float bias), not both")
    if floats is not None:
        raise ValueError("x_float and w_float (step 0) are traced with an int32 bias, not with float_bias")
    fb = np.asarray(float_bias)
    if fb.dtype.kind != "f" or fb.ndim != 1:
        raise TypeError(f"float_bias must be a 1-D float array (one per output channel), got {fb.dtype} {fb.shape}")
    if act is not None:  # fbgemm's fused forms: none, or relu (lower clamp Z_y)
        z_y = int(y_qp.zero_point)
        if (lo, hi) == (y_qp.spec.qmin, y_qp.spec.qmax):
            act = None
        elif (lo, hi) == (z_y, y_qp.spec.qmax):
            act = "relu"
        else:
            raise ValueError(f"with float_bias the output range is fbgemm's, none or relu; got [{lo}, {hi}]")
    return float(fb.reshape(-1)[channel]), np.asarray(w_qp.scale).size == 1, act


def _check_layer(e: Explanation, lib_acc: int, lib_code: int, where: str) -> None:
    if lib_acc != e.acc + e.bias or lib_code != e.code:
        raise ExplainConsistencyError(
            f"the trace gives acc + bias = {e.acc + e.bias} and code {e.code}, {where} gives {lib_acc} and "
            f"{lib_code}: a bug in npquant, please report it"
        )


def explain_conv2d(
    x_q: npt.ArrayLike,
    x_qp: QParams,
    w_q: npt.ArrayLike,
    w_qp: QParams,
    bias_q: npt.ArrayLike | None,
    y_qp: QParams,
    index: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    mode: str = "tflite",
    qmin: int | None = None,
    qmax: int | None = None,
    accumulation: str = "exact",
    x_float: npt.ArrayLike | None = None,
    w_float: npt.ArrayLike | None = None,
    b_float: npt.ArrayLike | None = None,
    float_bias: npt.ArrayLike | None = None,
) -> Explanation:
    """Explain output ``index = (n, o, i, j)`` of an integer conv2d: x NCHW codes, w OIHW.

    The receptive field is gathered explicitly, padding positions holding ``Z_x`` (so
    they contribute 0 after the correction; their float value is 0.0), and the dot
    product is traced, in (c, kh, kw) order, or (kh, kw, c) when ``accumulation``
    resolves to int16 pairs for this geometry (the order fbgemm and MLAS pair in).
    ``x_float``, ``w_float``, ``b_float`` and the checks against
    :func:`npquant.qnn.conv.qconv2d` are as in :func:`explain_linear`.

    Parameters
    ----------
    x_q : integer array (N, C, H, W)
        Codes of the per-tensor ``x_qp``.
    x_qp : QParams
        The input's qparams.
    w_q : integer array (O, C / groups, kh, kw)
        Codes of ``w_qp`` (per-tensor, or per-channel along axis 0).
    w_qp : QParams
        The weights' qparams.
    bias_q : int32 array (O,) or None
        The bias at scale ``S_x S_w``.
    y_qp : QParams
        Per-tensor output qparams.
    index : (int, int, int, int)
        The output element ``(n, o, i, j)``.
    stride, padding, dilation, groups
        As in :func:`npquant.qnn.conv.conv_geometry`.
    mode : str, default ``"tflite"``
        The requantization mode.
    qmin, qmax : int or None, default None
        The output code range of a fused activation; ``None``: ``y_qp``'s ``qmin`` /
        ``qmax``.
    accumulation : str, default ``"exact"``
        As in :func:`npquant.qnn.conv.conv2d_accumulate`.
    x_float, w_float, b_float : float arrays of the shapes of ``x_q``, ``w_q``, ``bias_q``, optional
        As in :func:`explain_linear`.
    float_bias : float array (out,), optional
        As in :func:`explain_linear`.

    Returns
    -------
    Explanation
        The trace, checked against :func:`npquant.qnn.conv.conv2d_accumulate` and
        :func:`npquant.qnn.conv.qconv2d` (:class:`ExplainConsistencyError` if they differ).
    """
    from .qnn.conv import conv2d_accumulate, qconv2d

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
    check_qparams(w_qp, "w_qp")
    s_w, z_w = _channel(w_qp, o)
    g = o // (w.shape[0] // groups)
    acc_mode = resolve(
        accumulation, "conv2d", conv=(x.shape[1], w.shape[0], groups, (kh, kw), geo.stride, geo.padding, geo.dilation)
    )

    def gather(src, pad_value):
        patch = np.empty((cin_g, kh, kw), src.dtype if src.dtype.kind == "f" else np.int64)
        names = np.empty((cin_g, kh, kw), object)
        for c in range(cin_g):
            for a in range(kh):
                for b in range(kw):
                    r = i * sh - pt + a * dh
                    s = j * sw_ - pl + b * dw
                    inside = 0 <= r < src.shape[2] and 0 <= s < src.shape[3]
                    patch[c, a, b] = src[n, g * cin_g + c, r, s] if inside else pad_value
                    names[c, a, b] = f"x[{n},{g * cin_g + c},{r},{s}]" + ("" if inside else " pad")
        return patch, names

    patch, names = gather(x, z_x)
    wo = w[o]
    order = (lambda t: t.transpose(1, 2, 0)) if acc_mode == PAIRS else (lambda t: t)  # (kh, kw, c), c fastest
    floats = None
    if x_float is not None or w_float is not None:
        if x_float is None or w_float is None:
            raise ValueError("x_float and w_float go together (b_float is optional)")
        floats = _float_inputs(
            x_float,
            x,
            x_qp,
            w_float,
            w,
            w_qp,
            b_float,
            bias_q,
            o,
            lambda xf, wf: (order(gather(xf, np.float32(0))[0]).ravel(), order(wf[o]).ravel()),
        )
    elif b_float is not None:
        raise ValueError("b_float needs x_float and w_float")
    b = 0 if bias_q is None else int(np.asarray(bias_q).reshape(-1)[o])
    lo = y_qp.spec.qmin if qmin is None else qmin
    hi = y_qp.spec.qmax if qmax is None else qmax
    fb, fma, act = _float_bias_args(float_bias, bias_q, floats, w_qp, y_qp, o, qmin, qmax, lo, hi)
    e = explain_dot(
        order(patch).ravel(),
        z_x,
        order(wo).ravel(),
        z_w,
        b,
        s_x,
        s_w,
        s_y,
        z_y,
        lo,
        hi,
        mode=mode,
        title=f"conv2d, output element (n={n}, o={o}, i={i}, j={j})",
        accumulation=acc_mode,
        floats=floats,
        labels=list(order(names).ravel()),
        float_bias=fb,
        float_bias_fma=fma,
    )
    kw_conv = dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups, overflow="wrap", accumulation=accumulation
    )
    xn = x[n : n + 1]
    lib_acc = int(conv2d_accumulate(xn, x_qp, w, w_qp, bias_q, **kw_conv)[0, o, i, j])
    lib_code = int(
        qconv2d(
            xn,
            x_qp,
            w,
            w_qp,
            bias_q if float_bias is None else float_bias,
            y_qp,
            mode=mode if float_bias is None else "fbgemm",
            activation=act,
            **kw_conv,
        )[0, o, i, j]
    )
    _check_layer(e, lib_acc, lib_code, "npquant.qnn.conv.qconv2d")
    return e


def explain_layer(
    model: IntegerModel | Graph, inputs: npt.ArrayLike | dict | list, layer: int | str, index: Sequence[int]
) -> Explanation | ElementTrace:
    """Explain one output element of any integer layer inside an integer model.

    The model runs on ``inputs`` up to ``layer``. For a linear or conv layer, the layer's
    input codes, weights, bias, qparams, requantization ``mode``, fused clamp and
    ``accumulation`` then go to :func:`explain_linear` or :func:`explain_conv2d`, which check
    the traced code against the layer itself. Any other integer layer (pooling, add,
    concat, a clamp, a reshape, quantize and dequantize) is traced by :func:`trace_element`:
    the input elements the output element is made of, the float result of the operation
    on their real values, and the layer's output code with its error.

    Parameters
    ----------
    model : npquant.models.convert.IntegerModel or npquant.models.graph.Graph
        An integer model (for example from :func:`npquant.models.convert.quantize_model`,
        :func:`npquant.models.convert.from_pytorch_ptq` or an importer), or an integer graph.
    inputs : array_like, or a dict or list of arrays for a graph with several inputs
        Float inputs (quantized by the model's input qparams) or input codes, batch first.
    layer : int or str
        A graph's node name, or the position of the layer in ``model.layers`` of an
        :class:`~npquant.models.convert.IntegerModel`.
    index : tuple of int
        The output element: ``(row, col)`` of a linear layer's output (its leading axes
        flattened into rows), ``(n, o, i, j)`` of a conv layer's NCHW output, the full index
        of any other layer's output.

    Returns
    -------
    Explanation or ElementTrace
        The steps; ``str()`` prints them.

    Raises
    ------
    ValueError
        ``layer`` names no layer, or a float node, or an op explain does not trace (a
        graph's ``qpad``, ``qmean``, global pooling), or ``index`` is outside the output.

    Notes
    -----
    A layer with PyTorch fbgemm's float bias (from :func:`npquant.models.convert.from_pytorch_ptq`
    or :func:`npquant.importers.from_torch_quantized`) is traced through fbgemm's
    requantization (:mod:`npquant.qnn.fbgemm`): the float bias added to ``float32(acc)``, by
    a fused multiply-add for per-tensor weights.
    """
    from .models.convert import IntegerModel
    from .qnn import layers as ql

    if isinstance(model, IntegerModel):
        if isinstance(layer, str) and layer.startswith("layers[") and layer.endswith("]"):
            layer = layer[len("layers[") : -1]
        try:
            pos = int(layer)
        except (TypeError, ValueError):
            raise ValueError(
                f"layer must be the position of a layer of the IntegerModel (0 to "
                f"{len(model.layers) - 1}), got {layer!r}"
            ) from None
        pos = check_int(pos, "layer", lo=0, hi=len(model.layers) - 1)
        x = np.asarray(inputs)
        x = model.quantize_input(x) if x.dtype.kind == "f" else x
        for lyr in model.layers[:pos]:
            x = lyr(x)
        obj, what = model.layers[pos], f"model.layers[{pos}]"
    else:
        from .models.graph import Graph

        if not isinstance(model, Graph):
            raise TypeError(f"model must be an IntegerModel or a Graph, got {type(model).__name__}")
        if not isinstance(layer, str) or layer not in {n.name for n in model.nodes}:
            names = [n.name for n in model.nodes]
            raise ValueError(f"layer must name a node of graph {model.name!r} ({names}), got {layer!r}")
        node = model.node(layer)
        env = model.run(inputs, keep_intermediates=True)
        x, obj, what = np.asarray(env[node.inputs[0]]), model.layer(layer), f"node {layer!r} ({node.op})"
    if not isinstance(obj, (ql.QLinear, ql.QConv2d)):
        index = tuple(int(i) for i in index)
        if isinstance(model, IntegerModel):
            op, attrs = _layer_op(obj, what)
            qp_in = model.input_qp
            for lyr in model.layers[:pos]:
                qp_in = getattr(lyr, "y_qp", qp_in)
            y = np.asarray(obj(x))
            return trace_element(op, attrs, [x], [qp_in], y, getattr(obj, "y_qp", qp_in), index, name=what)
        from .models.graph import op_kind

        if op_kind(node.op) == "float":
            raise ValueError(f"{what} is a float op: explain traces the integer nodes of a graph")
        return trace_element(
            node.op,
            dict(node.attrs),
            [np.asarray(env[t]) for t in node.inputs],
            [model.qparams.get(t) for t in node.inputs],
            np.asarray(env[node.outputs[0]]),
            model.qparams.get(node.outputs[0]),
            index,
            name=what,
        )
    index = tuple(int(i) for i in index)
    lo, hi = (int(v) for v in obj.out_range)
    mode = "fp32" if obj.mode == "fbgemm" else obj.mode  # explain_* spell fbgemm's path mode="fp32", float_bias=
    common = dict(mode=mode, qmin=lo, qmax=hi, accumulation=obj.accumulation, float_bias=obj.float_bias)
    bias_q = None if obj.float_bias is not None else obj.bias_q  # (a float-bias layer holds zeros there)
    if isinstance(obj, ql.QLinear):
        if len(index) != 2:
            raise ValueError(f"index of a linear layer is (row, col), got {index}")
        x2 = x.reshape(-1, x.shape[-1])
        rows, cols = x2.shape[0], obj.out_features
        if not (0 <= index[0] < rows and 0 <= index[1] < cols):
            raise ValueError(f"index {index} is outside the output ({rows}, {cols})")
        return explain_linear(x2, obj.x_qp, obj.w_q, obj.w_qp, bias_q, obj.y_qp, index[0], index[1], **common)
    if len(index) != 4:
        raise ValueError(f"index of a conv layer is (n, o, i, j), got {index}")
    g = obj.geometry
    return explain_conv2d(
        x,
        obj.x_qp,
        obj.w_q,
        obj.w_qp,
        bias_q,
        obj.y_qp,
        index,
        stride=g.stride,
        padding=g.padding,
        dilation=g.dilation,
        groups=g.groups,
        **common,
    )


def _layer_op(obj, what: str) -> tuple[str, dict]:
    """The graph op name and attributes of an IntegerModel layer without an accumulator."""
    from .qnn import layers as ql

    if isinstance(obj, ql.MaxPool2d):
        return "qmaxpool2d", {"kernel_size": obj.kernel_size, "stride": obj.stride, "padding": obj.padding}
    if isinstance(obj, ql.AvgPool2d):
        return "qavgpool2d", {
            "kernel_size": obj.kernel_size,
            "stride": obj.stride,
            "padding": obj.padding,
            "count_include_pad": obj.count_include_pad,
            "mode": obj.mode,
        }
    if isinstance(obj, ql.Flatten):
        return "qflatten", {}
    if isinstance(obj, ql.QReLU):
        return "qrelu", {"activation": obj.activation}
    raise ValueError(f"{what} is a {type(obj).__name__}, which explain does not trace")


@dataclass
class ElementTrace:
    """One output element of a layer without an accumulator (pooling, add, concat, a clamp,
    a reshape, a quantize or dequantize step): the input elements it is made of, their codes
    and real values, the float result of the layer's operation on those real values, and the
    output code with its error against that float result. ``str()`` formats it."""

    title: str
    rule: str
    elements: list  # (tensor label, index, code or float, QParams or None, real value)
    float_result: float
    code: int | float
    out_qp: QParams | None
    note: str = ""

    def format(self, all_terms: bool = False) -> str:
        """The trace as text (``all_terms`` is accepted for symmetry with :class:`Explanation`).

        Parameters
        ----------
        all_terms : bool, default False
            Ignored: every input element is listed.

        Returns
        -------
        str
        """
        check_bool(all_terms, "all_terms")
        lines = [self.title, f"  {self.rule}", "", f"1. the input elements ({len(self.elements)})"]
        rows = []
        for label, idx, v, qp, real in self.elements:
            if qp is None:
                rows.append([label, str(list(idx)), "-", "-", "-", _g(real)])
            else:
                rows.append([label, str(list(idx)), str(v), _g(qp.scale), str(int(qp.zero_point)), _g(real)])
        table = format_table(["tensor", "index", "code", "S", "Z", "real S (q - Z)"], rows, align="llrrrr")
        lines += ["   " + ln for ln in table.splitlines()]
        lines.append(
            f"2. the operation on the real values = {_g(self.float_result)}" + (f"  ({self.note})" if self.note else "")
        )
        if self.out_qp is None:
            lines.append(f"3. output (float) = {_g(self.code)}")
            return "\n".join(lines)
        s_y, z_y = float(np.float32(self.out_qp.scale)), int(self.out_qp.zero_point)
        ideal = self.float_result / s_y + z_y
        deq = s_y * (int(self.code) - z_y)
        lines += [
            f"3. ideal code  result / S_y + Z_y = {_g(self.float_result)} / {_g(s_y)} + {z_y} = {ideal:.4f}",
            f"   output code {int(self.code)} (the layer's), dequantized S_y (code - Z_y) = {_g(deq)}; "
            f"error {(deq - self.float_result) / s_y:+.4f} LSB (LSB = S_y; its rounding and clamp)",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


_ELEMENTWISE = {
    "qadd": "sum",
    "qmul": "product",
    "qrelu": "clamp",
    "quantize": "identity",
    "quantize_tflite": "identity",
    "dequantize": "identity",
    "qrequantize": "identity",
}
_POOLS = {
    "qmaxpool2d": ("max", False),
    "qavgpool2d": ("avg", False),
    "qlinear_avgpool2d": ("avg", False),
    "qmaxpool2d_nhwc": ("max", True),
    "qavgpool2d_nhwc": ("avg", True),
}


def _pair2(v, what: str) -> tuple[int, int]:
    t = (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or two ints, got {v!r}")
    return t


def _pads(v) -> tuple[int, int, int, int]:
    if np.ndim(v) == 0:
        return (int(v),) * 4
    t = tuple(int(a) for a in v)
    return (t[0], t[0], t[1], t[1]) if len(t) == 2 else t


def trace_element(
    op: str,
    attrs: dict,
    inputs: list,
    in_qps: list,
    output: np.ndarray,
    out_qp: QParams | None,
    index: Sequence[int],
    *,
    name: str = "layer",
) -> ElementTrace:
    """Trace one output element of a layer without an accumulator from the codes of a run.

    Parameters
    ----------
    op : str
        The graph op (:data:`npquant.models.graph.OPS`): ``qadd``, ``qmul``, ``qrelu``, the pools
        (``qmaxpool2d``, ``qavgpool2d``, their ``_nhwc`` forms, ``qlinear_avgpool2d``),
        ``qflatten``, ``qreshape``, ``qconcat``, ``qlinear_concat``, ``quantize``,
        ``dequantize``, ``qrequantize``.
    attrs : dict
        The node's attributes (kernel, stride, padding, axis, activation, ...).
    inputs : list of numpy.ndarray
        The layer's input tensors of the run (codes, or floats for ``quantize``).
    in_qps : list of QParams or None
        Their qparams (None for a float tensor).
    output : numpy.ndarray
        The layer's output of the run.
    out_qp : QParams or None
        The output's qparams (None for ``dequantize``).
    index : tuple of int
        The output element.
    name : str, default "layer"
        The layer's name, for the title.

    Returns
    -------
    ElementTrace
    """
    index = tuple(int(i) for i in index)
    if len(index) != output.ndim or any(not 0 <= i < d for i, d in zip(index, output.shape)):
        raise ValueError(f"index {index} is outside the output of shape {output.shape}")

    def real(k, idx):
        v = inputs[k][idx]
        qp = in_qps[k]
        r = float(np.float32(v)) if qp is None else float(np.float32(qp.scale)) * (int(v) - int(qp.zero_point))
        return (f"input {k}" if len(inputs) > 1 else "input", idx, v if qp is None else int(v), qp, r)

    code = output[index]
    code = float(code) if out_qp is None else int(code)
    if op in _ELEMENTWISE:
        elems = []
        for k, a in enumerate(inputs):  # broadcasting: a size-1 axis reads index 0
            off = output.ndim - a.ndim
            elems.append(real(k, tuple(0 if a.shape[d] == 1 else index[off + d] for d in range(a.ndim))))
        vals = [e[4] for e in elems]
        kind = _ELEMENTWISE[op]
        result = sum(vals) if kind == "sum" else float(np.prod(vals)) if kind == "product" else vals[0]
        act = attrs.get("activation")
        note = ""
        if kind == "clamp" or act in ("relu", "relu6", "relu_n1_to_1"):
            a = act or "relu"
            lo_hi = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0)}[a]
            result = min(max(result, lo_hi[0]), lo_hi[1])
            note = f"then {a}"
        rule = {
            "sum": "the sum of the inputs' real values",
            "product": "the product of the inputs' real values",
            "clamp": "a clamp of the codes (ReLU / ReLU6 on the real values)",
            "identity": "the value itself, quantized (or dequantized) to the output's grid",
        }[kind]
        return ElementTrace(
            f"{op}: {name}, output element {list(index)}",
            f"{rule}; mode {attrs.get('mode', '-')}",
            elems,
            float(result),
            code,
            out_qp,
            note,
        )
    if op in _POOLS:
        kind, nhwc = _POOLS[op]
        kh, kw = _pair2(attrs["kernel_size"], "kernel_size")
        sh, sw = (kh, kw) if attrs.get("stride") is None else _pair2(attrs["stride"], "stride")
        pt, pb, pl, pr = _pads(attrs.get("padding", 0))
        x = inputs[0]
        n, c, i, j = (index[0], index[3], index[1], index[2]) if nhwc else index
        h_in, w_in = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        elems, pad = [], 0
        for a in range(kh):
            for b in range(kw):
                r, t = i * sh - pt + a, j * sw - pl + b
                if 0 <= r < h_in and 0 <= t < w_in:
                    elems.append(real(0, (n, r, t, c) if nhwc else (n, c, r, t)))
                else:
                    pad += 1
        vals = [e[4] for e in elems]
        include = bool(attrs.get("count_include_pad", False))
        if kind == "max":
            result, rule = max(vals), "the largest real value of the window (padding excluded)"
        else:
            count = len(vals) + (pad if include else 0)
            result = sum(vals) / count
            rule = (
                f"the mean of the window: sum / {count} ({'padding counted' if include else 'padding excluded'}"
                f"); rounding {attrs.get('mode', 'tflite')}"
            )
        return ElementTrace(
            f"{op}: {name}, output element {list(index)}",
            rule,
            elems,
            float(result),
            code,
            out_qp,
            f"{pad} padding position(s)" if pad else "",
        )
    if op in ("qflatten", "qreshape"):
        flat = int(np.ravel_multi_index(index, output.shape))
        src = tuple(int(v) for v in np.unravel_index(flat, inputs[0].shape))
        e = real(0, src)
        return ElementTrace(
            f"{op}: {name}, output element {list(index)}",
            f"the same element in C order (flat position {flat}); qparams unchanged",
            [e],
            e[4],
            code,
            out_qp,
        )
    if op in ("qconcat", "qlinear_concat"):
        axis = int(attrs.get("axis", 1)) % output.ndim
        off = index[axis]
        for k, a in enumerate(inputs):
            if off < a.shape[axis]:
                e = real(k, index[:axis] + (off,) + index[axis + 1 :])
                return ElementTrace(
                    f"{op}: {name}, output element {list(index)}",
                    f"element {off} of input {k} along axis {axis}, requantized to the output's "
                    f"qparams; mode {attrs.get('mode', '-')}",
                    [e],
                    e[4],
                    code,
                    out_qp,
                )
            off -= a.shape[axis]
    raise ValueError(f"{name}: explain does not trace op {op!r}")


def builtin_example(layer: str = "linear", seed: int = 0) -> dict:
    """A small quantized layer made from seeded float data, for ``npquant explain``.

    uint8 asymmetric input (floats in ``[-0.4, 1)``, so ``Z_x`` is not 0), int8
    asymmetric per-tensor weights (skewed to positive values, so ``Z_w`` is not 0: the
    folded form of Jacob et al.'s eq. 7 has every term), int32 bias at ``S_x S_w``
    (:func:`npquant.qnn.bias.quantize_bias`), uint8 output whose range is calibrated on
    the float output. Returns the keyword arguments of :func:`explain_linear` /
    :func:`explain_conv2d` (without ``mode``), the float tensors included: linear layer
    (2, 16) -> (2, 4), element ``[0, 1]``; conv 3x3, padding 1, (1, 2, 5, 5) -> (1, 3,
    5, 5), element ``(0, 1, 0, 2)`` on the top border (three padding taps).

    Parameters
    ----------
    layer : ``"linear"`` or ``"conv"``, default ``"linear"``
        The kind of layer.
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` for the float data.

    Returns
    -------
    dict
        Keyword arguments of :func:`explain_linear` or :func:`explain_conv2d`.
    """
    from .affine import quantize
    from .qnn.bias import quantize_bias
    from .qparams import QuantSpec, compute_qparams, fit_qparams

    check_choice(layer, "layer", ("linear", "conv"))
    rng = np.random.default_rng(seed)
    if layer == "linear":
        x = rng.uniform(-0.4, 1, (2, 16)).astype(np.float32)
        w = (rng.normal(size=(4, 16)) * 0.3 + 0.1).astype(np.float32)
        b = (rng.normal(size=4) * 0.1).astype(np.float32)
        y = x @ w.T + b
    else:
        x = rng.uniform(-0.4, 1, (1, 2, 5, 5)).astype(np.float32)
        w = (rng.normal(size=(3, 2, 3, 3)) * 0.3 + 0.1).astype(np.float32)
        b = (rng.normal(size=3) * 0.1).astype(np.float32)
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y = np.zeros((1, 3, 5, 5), np.float32)
        for i in range(5):
            for j in range(5):
                y[0, :, i, j] = np.tensordot(w, xp[0, :, i : i + 3, j : j + 3], axes=3) + b
    x_qp = fit_qparams(x, QuantSpec(signed=False))
    w_qp = fit_qparams(w, QuantSpec())
    y_qp = compute_qparams(y.min(), y.max(), QuantSpec(signed=False))
    bias_q = quantize_bias(b, float(x_qp.scale), float(w_qp.scale))
    out = dict(
        x_q=quantize(x, x_qp),
        x_qp=x_qp,
        w_q=quantize(w, w_qp),
        w_qp=w_qp,
        bias_q=bias_q,
        y_qp=y_qp,
        x_float=x,
        w_float=w,
        b_float=b,
    )
    if layer == "conv":
        out.update(index=(0, 1, 0, 2), padding=1)
    else:
        out.update(row=0, col=1)
    return out
