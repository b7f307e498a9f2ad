"""Integer fully connected layer: int8/uint8 codes in, int32 accumulation, codes out.

``acc[n, o] = bias[o] + sum_k (q_x[n, k] - Z_x)(q_w[o, k] - Z_w[o])`` exactly in int32,
then ``y = clamp(round(acc * M[o]) + Z_y, lo, hi)`` with ``M = S_x S_w[o] / S_y`` and the
rounding of a named requantization ``mode`` (:mod:`npquant.requant.fixedpoint`). The bias is
int32 at scale ``S_x S_w`` with zero point 0 (:func:`quantize_bias`).

Two equal forms of the sum (``form``): ``"direct"`` as written, and ``"folded"``, the
expansion of Jacob et al. 2018 (eq. 7), ``sum q_x q_w - Z_w sum q_x - Z_x sum q_w +
K Z_x Z_w``, whose weight terms are folded into the bias once per layer. They give the
same int32 bits (modular arithmetic; see :mod:`npquant._kernels.gemm`). ``accumulation``
names the arithmetic of the sum: exact (the default), or the int16 pair saturation of
fbgemm's and MLAS's kernels on CPUs without VNNI (:mod:`npquant.qnn.accumulation`), which
works on raw codes and applies the zero points afterwards, as those libraries do.

Which compiled 8-bit kernel runs is :func:`gemm_kernel`'s choice (AVX-512 VNNI, AVX2 or
portable, from the CPU, or forced with ``NPQUANT_GEMM_KERNEL`` / :func:`use_gemm_kernel`);
every kernel gives the same bits.

The worst case of ``acc`` over the actual weights, every input code and the bias is
checked against int32 before anything runs (:mod:`npquant.qnn.overflow`): a possible
overflow is a ``ValueError``, or, with ``overflow="wrap"``, wraps as int32.

:func:`qmatmul` is the product of two quantized *activations* (ONNX's ``QLinearMatMul``
with a non-constant ``B``, as in attention): neither operand is a prepared weight, both
are per-tensor, and the leading axes broadcast as in :func:`numpy.matmul`::

    acc[..., m, n] = sum_k (q_a[..., m, k] - Z_a)(q_b[..., k, n] - Z_b)
    y[..., m, n]   = clamp(round(acc * S_a S_b / S_y) + Z_y, lo, hi)

Its sum is computed exactly in int64 and must fit int32 (checked on the actual values, as
no worst case over constant weights exists); the multiplier and rounding are those of
``qlinear``. ``mode="onnx"`` matches ``onnx.reference``'s QLinearMatMul; onnxruntime's
CPU kernel (float32 ``S_a S_b / S_y``, round half to even of the float32 product) is
``mode="fp32"`` (tests/test_qnn_gemm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._checks import BACKENDS, check_choice, check_int, normalize_axis
from .._kernels import gemm as _k
from .._kernels.simd import HAVE_AVX2, HAVE_VNNI
from ..affine import round_values
from ..qparams import QParams, QuantSpec
from ..requant.fixedpoint import (
    EXTRA_REQUANT_MODES,
    INT32_MAX,
    INT32_MIN,
    REQUANT_MODES,
    effective_multiplier,
    requantize,
)
from . import accumulation as _acc
from . import overflow as _ovf
from .activation import activation_range, normalize_activation
from .fbgemm import fbgemm_requantize

FORMS = ("direct", "folded")
ACTIVATIONS = ("relu", "relu6", "relu_n1_to_1")  # besides None / "none" (activation.normalize_activation)
BIAS_METHODS = ("onnxruntime", "tflite")
_BYTES = (np.dtype(np.int8), np.dtype(np.uint8))


# ---- argument checks shared with conv.py and layers.py ----------------------------------

def _check_qparams_type(qp, name: str) -> QParams:
    if not isinstance(qp, QParams):
        raise TypeError(f"{name} must be a QParams, got {type(qp).__name__}")
    return qp


def _act_qparams(qp, name: str) -> tuple[np.float32, int]:
    """Per-tensor activation qparams: (scale, zero point)."""
    _check_qparams_type(qp, name)
    if qp.spec.axis is not None:
        raise ValueError(f"{name} must be per-tensor (axis=None), got {qp.spec.granularity} axis={qp.spec.axis}")
    return np.float32(qp.scale), int(qp.zero_point)


def _codes(q, qp: QParams, name: str, ndim: int | None = None) -> np.ndarray:
    """Integer codes inside ``qp.spec``'s range, returned as ``qp.spec.dtype``."""
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of codes, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    lo, hi = qp.spec.qmin, qp.spec.qmax
    info = np.iinfo(a.dtype)
    if (info.min < lo or info.max > hi) and (a.min() < lo or a.max() > hi):  # no scan if the dtype fits
        raise ValueError(f"{name} must hold codes in [{lo}, {hi}] of its spec, got values in "
                         f"[{a.min()}, {a.max()}]")
    return a.astype(qp.spec.dtype, copy=False)


def _zero_point_qparams(qp, codes, name: str, per_channel_len: int | None = None) -> QParams:
    """``qp`` itself if a QParams, else a plain zero point made into one: an int
    (per-tensor), or for weights (``per_channel_len`` given) a 1-D integer array of that
    length (per-channel along axis 0). The code range is that of ``codes``' dtype (8- or
    16-bit integers); the scale, never used by the accumulators, is 1."""
    if isinstance(qp, QParams):
        return qp
    z = np.asarray(qp)
    if isinstance(qp, (bool, np.bool_)) or z.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a QParams or an integer zero point"
                        + (" (an int, or a 1-D array of one per output channel)" if per_channel_len else "")
                        + f", got {type(qp).__name__}" + (f" of dtype {z.dtype}" if z.dtype != object else ""))
    a = np.asarray(codes)
    code = "w_q" if per_channel_len is not None else "x_q"
    if a.dtype.kind not in "iu" or a.dtype.itemsize > 2:
        raise TypeError(f"{name} is a plain zero point, so the code range comes from {code}'s dtype, which "
                        f"must be an 8- or 16-bit integer type; got {a.dtype} (cast the codes or pass a QParams)")
    spec = QuantSpec(bits=8 * a.dtype.itemsize, signed=a.dtype.kind == "i")
    if z.ndim == 1 and per_channel_len is not None:
        if z.shape != (per_channel_len,):
            raise ValueError(f"{name} must hold one zero point per output channel of {code} "
                             f"({per_channel_len}), got {z.shape[0]}")
        spec = spec.replace(axis=0)
    elif z.ndim != 0:
        raise ValueError(f"{name} must be one zero point" + (" or a 1-D array of one per output channel"
                         if per_channel_len is not None else "") + f", got shape {z.shape}")
    if z.size and (z.min() < spec.qmin or z.max() > spec.qmax):
        raise ValueError(f"{name} must lie in [{spec.qmin}, {spec.qmax}], the code range of {code}'s dtype "
                         f"{a.dtype}, got values in [{z.min()}, {z.max()}]")
    return QParams(np.ones(z.shape, np.float32), z.astype(np.int64), spec)


def _weight_qparams(w_qp, w_shape, name: str = "w_qp") -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-tensor or per-channel (axis 0) weight qparams as (scale (O,), Z_w (O,), per_channel)."""
    _check_qparams_type(w_qp, name)
    spec = w_qp.spec
    n_out = w_shape[0]
    if spec.axis is None:
        return (np.full(n_out, w_qp.scale, np.float32), np.full(n_out, w_qp.zero_point, np.int32), False)
    if spec.block_size is not None or normalize_axis(spec.axis, len(w_shape), f"{name}.spec.axis") != 0:
        raise ValueError(f"{name} must be per-tensor or per-channel along axis 0 (output channels), got "
                         f"{spec.granularity} axis={spec.axis} block_size={spec.block_size}")
    if w_qp.scale.shape != (n_out,):
        raise ValueError(f"{name} has {w_qp.scale.size} channels but the weights have {n_out} outputs")
    return w_qp.scale.astype(np.float32), w_qp.zero_point.astype(np.int32), True


def _bias(bias_q, n_out: int, name: str = "bias_q") -> np.ndarray:
    if bias_q is None:
        return np.zeros(n_out, np.int32)
    b = np.asarray(bias_q)
    if b.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an int32 array, got dtype {b.dtype}")
    if b.shape != (n_out,):
        raise ValueError(f"{name} must have shape ({n_out},), one per output channel, got {b.shape}")
    if b.min() < INT32_MIN or b.max() > INT32_MAX:
        raise ValueError(f"{name} must lie in the int32 range, got [{b.min()}, {b.max()}]")
    return b.astype(np.int32)


def _activation_range(activation, y_qp: QParams) -> tuple[int, int]:
    """Output code range of a fused activation, as TFLite's CalculateActivationRangeQuantized.

    ``None`` or ``"none"``: the spec's range; ``"relu"``: ``[max(qmin, Z_y), qmax]``;
    ``"relu6"``: also ``hi = min(qmax, Z_y + round(6 / S_y))``; ``"relu_n1_to_1"``:
    ``[Z_y + round(-1 / S_y), Z_y + round(1 / S_y)]`` within the spec; ``round`` is half
    away from zero of the float32 quotient. A pair ``(lo, hi)`` of codes is taken as is.
    Spellings are normalized by :func:`npquant.qnn.activation.normalize_activation`.
    """
    qmin, qmax = y_qp.spec.qmin, y_qp.spec.qmax
    activation = normalize_activation(activation, allow_range=True)
    if activation is None:
        return qmin, qmax
    if isinstance(activation, tuple):
        lo = check_int(activation[0], "activation[0]", lo=qmin, hi=qmax)
        hi = check_int(activation[1], "activation[1]", lo=lo, hi=qmax)
        return lo, hi
    return activation_range(activation, np.float32(y_qp.scale), int(y_qp.zero_point), qmin, qmax)


def _float_bias_out(acc, x_qp: QParams, w_scale: np.ndarray, per_channel: bool, y_qp: QParams,
                    float_bias, activation, axis: int, backend: str = "numba") -> np.ndarray:
    """PyTorch fbgemm's output from the bias-free accumulator and its float bias."""
    if y_qp.spec.qmin != 0 or y_qp.spec.qmax != 255:
        raise ValueError("float_bias reproduces PyTorch's fbgemm, whose output is quint8: y_qp must be "
                         "unsigned 8-bit")
    activation = normalize_activation(activation, allow_range=True)
    if activation not in (None, "relu"):
        raise ValueError(f"with float_bias, activation must be None, 'none' or 'relu' (fbgemm's fused forms), "
                         f"got {activation!r}")
    sw = w_scale if per_channel else w_scale[0]
    out = fbgemm_requantize(acc, np.float32(x_qp.scale), sw, np.float32(y_qp.scale), int(y_qp.zero_point),
                            bias=float_bias, relu=activation == "relu", axis=axis, backend=backend)
    return out.astype(y_qp.spec.dtype)


def _check_float_bias(float_bias, bias_q, mode: str) -> None:
    if float_bias is None:
        return
    if mode != "fp32":
        raise ValueError(f"float_bias is PyTorch fbgemm's float bias and needs mode='fp32', got mode={mode!r}")
    if bias_q is not None:
        raise ValueError("give either bias_q (int32) or float_bias (fbgemm's float bias), not both")


# ---- bias ----------------------------------------------------------------------------

def quantize_bias(bias, s_x, s_w, *, method: str = "onnxruntime") -> np.ndarray:
    """Float bias to int32 codes at scale ``S_x * S_w`` with zero point 0.

    ``bias`` is a finite float array (out,); ``s_x`` a float32 scale; ``s_w`` a scale or
    (out,) per-channel scales. The bias scale is ``float32(S_x * S_w)`` in both methods:

    - ``"onnxruntime"``: ``round_half_even(float64(bias) / float64(scale))``, as
      ``onnxruntime.quantization`` (``quantize_bias_static_impl``) does;
    - ``"tflite"``: ``round_half_away(float32(float32(bias) * float32(1 / scale)))``, as
      TFLite's post-training quantizer (``tools/optimize``, ``SymmetricBiasQuantize``).

    Both stacks saturate a bias beyond int32; here that is a ``ValueError`` (the scale is
    too small for the bias). PyTorch's quantized linear/conv take a float bias instead.
    Returns int32 of ``bias``'s shape.

    Parameters
    ----------
    bias : float array (out,)
        The float bias, finite.
    s_x : float
        The input's per-tensor scale (positive, finite; used as float32).
    s_w : float or float array (out,)
        The weights' scale, or one per-channel scale per bias element (positive, finite;
        used as float32).
    method : ``"onnxruntime"`` or ``"tflite"``, default ``"onnxruntime"``
        The rounding arithmetic above (keyword-only).

    Returns
    -------
    numpy.ndarray
        int32 of ``bias``'s shape. ``ValueError`` where a code would not fit int32 (no
        saturation).
    """
    check_choice(method, "method", BIAS_METHODS)
    b = np.asarray(bias)
    if b.dtype.kind != "f":
        raise TypeError(f"bias must be a floating-point array, got dtype {b.dtype}")
    if b.size and not np.all(np.isfinite(b)):
        raise ValueError("bias contains NaN or infinity")
    sx = np.asarray(s_x, dtype=np.float32)
    sw = np.asarray(s_w, dtype=np.float32)
    for name, s in (("s_x", sx), ("s_w", sw)):
        if s.size == 0 or not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise ValueError(f"{name} must be positive and finite float32 scales")
    if sx.size != 1:
        raise ValueError(f"s_x must be one per-tensor scale, got shape {sx.shape}")
    if sw.size != 1 and sw.shape != b.shape:
        raise ValueError(f"s_w must be a scale or one per bias element {b.shape}, got shape {sw.shape}")
    scale = (sx.reshape(()) * sw).astype(np.float32)
    if method == "onnxruntime":
        q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    else:
        with np.errstate(over="ignore", divide="ignore"):
            inv = (1.0 / scale.astype(np.float64)).astype(np.float32)
            q = round_values((b.astype(np.float32) * inv).astype(np.float32), "half_away")
    q = np.broadcast_to(q, b.shape)
    if q.size and (not np.all(np.isfinite(q)) or q.min() < INT32_MIN or q.max() > INT32_MAX):
        raise ValueError("bias / (s_x * s_w) does not fit int32: the bias scale is too small for this bias")
    return q.astype(np.int32)


# ---- the prepared product ---------------------------------------------------------------

@dataclass(frozen=True)
class _Fast:
    """The weights of the numba backend's 8-bit kernels (``_kernels.gemm.gemm_u8s8_*``).

    The kernels multiply unsigned by signed bytes: ``xu = x + ax`` (``ax`` 128 for int8
    codes, else 0) and ``ws = w - aw`` (``aw`` 128 for uint8 weights, else 0). With
    ``cx = Z_x + ax`` and ``dw = Z_w - aw``,
    ``sum (x - Z_x)(w - Z_w) = sum xu ws - dw sum xu - cx sum ws + K cx dw``, so
    ``col = bias - cx sum ws + K cx dw`` (int32, wrapped) is all the kernels need besides
    ``dw``. The kernels' weight layouts (rows padded to 64 bytes; 64-column panels) are
    built on first use and kept. Every array is per output row, so a slice of rows is
    a sub-product (a convolution group).
    """

    ws: np.ndarray   # (O, K) int8, C-contiguous
    dw: np.ndarray   # (O,) int32
    col: np.ndarray  # (O,) int32, wrapped
    ax: int
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def rows(self, sl: slice) -> _Fast:
        key = ("rows", sl.start, sl.stop)
        if key not in self._cache:
            self._cache[key] = _Fast(np.ascontiguousarray(self.ws[sl]), self.dw[sl], self.col[sl], self.ax)
        return self._cache[key]

    def padded(self, kp: int | None = None) -> np.ndarray:
        """(O, kp) int8 zero-filled; ``kp`` default: the next multiple of 64 (at least 64)."""
        o, k = self.ws.shape
        kp = _round_up(k, 64) if kp is None else kp
        key = ("padded", kp)
        if key not in self._cache:
            wpad = np.zeros((o, kp), np.int8)
            wpad[:, :k] = self.ws
            self._cache[key] = wpad
        return self._cache[key]

    def panels(self) -> np.ndarray:
        """The 64-column panels of ``_kernels.gemm.pack_panels`` (K padded to a multiple of 4)."""
        if "panels" not in self._cache:
            self._cache["panels"] = _k.pack_panels(self.ws, _round_up(self.ws.shape[1], 4))
        return self._cache["panels"]

    def avx2_panels(self, kp: int, pairs: bool = False) -> np.ndarray:
        """The weight layout of the AVX2 kernel (exact, or ``pairs``: pair-saturating)."""
        key = ("avx2", kp, pairs)
        if key not in self._cache:
            pack = _k.pack_panels_avx2_sat16 if pairs else _k.pack_panels_avx2
            self._cache[key] = pack(self.ws, kp)
        return self._cache[key]


def _round_up(k: int, m: int) -> int:
    return max(m, -(-k // m) * m)


@dataclass(frozen=True)
class _Gemm:
    """Everything about ``x @ w.T + bias`` that does not depend on ``x``."""

    w: np.ndarray            # (O, K) codes, C-contiguous
    zx: int
    zw: np.ndarray           # (O,) int32
    bias: np.ndarray         # (O,) int32
    bias_folded: np.ndarray  # (O,) int32: bias + K Zx Zw - Zx sum_k w, wrapped
    form: str
    fits: bool               # the worst case fits int32
    fast: _Fast | None = None  # 8-bit codes on both sides: the numba backend's fast kernels
    pairs: bool = False      # int16 pair saturation along K (accumulation "int16_pairs")

    def rows(self, sl: slice) -> _Gemm:
        """The product restricted to output rows ``sl`` (a convolution group)."""
        return _Gemm(self.w[sl], self.zx, self.zw[sl], self.bias[sl], self.bias_folded[sl], self.form,
                     self.fits, None if self.fast is None else self.fast.rows(sl), self.pairs)


def _prepare(w2d: np.ndarray, zw: np.ndarray, x_qp: QParams, bias: np.ndarray, form: str,
             overflow: str, what: str, pairs: bool = False) -> _Gemm:
    """``pairs``: the resolved accumulation is ``"int16_pairs"`` (:mod:`.accumulation`)."""
    check_choice(form, "form", FORMS)
    check_choice(overflow, "overflow", _ovf.OVERFLOW_MODES)
    if pairs and (w2d.dtype != np.int8 or np.dtype(x_qp.spec.dtype) != np.uint8):
        raise ValueError("accumulation with int16 pair saturation models vpmaddubsw on uint8 activation "
                         f"codes x int8 weight codes; got {np.dtype(x_qp.spec.dtype)} activations (x_qp) and "
                         f"{w2d.dtype} weights (w_q): use accumulation='exact'")
    zx = int(x_qp.zero_point)
    lo, hi = _ovf.accumulator_bounds(w2d, zw, x_qp.spec.qmin, x_qp.spec.qmax, zx, bias)
    fits = _ovf.check_accumulator(lo, hi, overflow, what=what)
    w = np.ascontiguousarray(w2d)
    k = w.shape[1]
    folded = bias.astype(np.int64) + k * zx * zw.astype(np.int64) - zx * w.astype(np.int64).sum(axis=1)
    fast = None
    if w.dtype in _BYTES and np.dtype(x_qp.spec.dtype) in _BYTES:
        ax = 128 if np.dtype(x_qp.spec.dtype) == np.int8 else 0
        aw = 128 if w.dtype == np.uint8 else 0
        ws = (w.astype(np.int16) - aw).astype(np.int8)
        cx = zx + ax
        dw = zw.astype(np.int64) - aw
        col = bias.astype(np.int64) - cx * ws.astype(np.int64).sum(axis=1) + k * cx * dw
        fast = _Fast(ws, _wrap32(dw).astype(np.int32), _wrap32(col).astype(np.int32), ax)
    return _Gemm(w, zx, zw, bias, _wrap32(folded).astype(np.int32), form, fits, fast, pairs)


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _run(g: _Gemm, x2d: np.ndarray, backend: str) -> np.ndarray:
    """int32 (N, O) accumulators of codes ``x2d`` (N, K).

    The numba backend runs 8-bit codes through the unsigned x signed byte kernels (the
    one :func:`gemm_kernel` names); other widths, and ``backend="numpy"``, use the form's
    own kernel. Every path gives the same int32 bits. With ``g.pairs`` the product is the
    int16 pair-saturating one, on either backend.
    """
    if g.pairs:
        if backend == "numpy":
            f = g.fast
            return _gemm_u8s8_numpy(x2d, f.ws, f.dw, f.col, pairs=True)
        return _run_fast(g.fast, x2d, pairs=True)
    if backend == "numba" and g.fast is not None and x2d.dtype == (np.int8 if g.fast.ax else np.uint8):
        return _run_fast(g.fast, x2d)
    x = np.ascontiguousarray(x2d)
    if backend == "numpy":
        if g.form == "direct":
            return _gemm_direct_numpy(x, g.zx, g.w, g.zw, g.bias)
        return _gemm_folded_numpy(x, g.w, g.zw, g.bias_folded)
    out = np.empty((x.shape[0], g.w.shape[0]), np.int32)
    if g.form == "direct":
        _k.gemm_direct(x, np.int32(g.zx), g.w, g.zw, g.bias, out)
    else:
        _k.gemm_folded(x, g.w, g.zw, g.bias_folded, out)
    return out


# ---- which compiled 8-bit kernel runs --------------------------------------------------

#: Kernel names for :func:`gemm_kernel` and ``NPQUANT_GEMM_KERNEL``.
GEMM_KERNELS = ("auto", "vnni", "avx2", "portable")
_KERNEL_ENV = "NPQUANT_GEMM_KERNEL"
_forced_kernel: str | None = None


def available_gemm_kernels() -> tuple[str, ...]:
    """The kernels this CPU can run, fastest first (all of them with ``NUMBA_DISABLE_JIT=1``,
    where the vector operations are their NumPy definitions).

    Returns
    -------
    tuple of str
        Names from ``GEMM_KERNELS`` (without ``"auto"``), always ending with ``"portable"``.
    """
    from numba.core import config

    out = []
    if HAVE_VNNI or config.DISABLE_JIT:
        out.append("vnni")
    if HAVE_AVX2 or config.DISABLE_JIT:
        out.append("avx2")
    return tuple(out) + ("portable",)


def gemm_kernel(name: str | None = None) -> str:
    """The 8-bit GEMM kernel that runs: ``name``, else :func:`use_gemm_kernel`'s choice,
    else the environment variable ``NPQUANT_GEMM_KERNEL``, else ``"auto"``; ``"auto"`` is
    the fastest this CPU can run (``"vnni"`` with AVX-512 VNNI, ``"avx2"``, ``"portable"``).

    Forcing a kernel lets one machine test and benchmark every path it can run (an
    AVX-512 VNNI CPU runs the AVX2 kernels too). The exact kernels give identical bits;
    the pair-saturating product (``accumulation``) always runs the AVX2 kernel, or the
    portable one when ``"portable"`` is chosen or the CPU has no AVX2. A kernel the CPU
    cannot run is a ``ValueError``.

    Parameters
    ----------
    name : str or None, default None
        One of ``GEMM_KERNELS`` (``"auto"``, ``"vnni"``, ``"avx2"``, ``"portable"``), or
        ``None`` for the forced or environment choice.

    Returns
    -------
    str
        The kernel that runs: ``"vnni"``, ``"avx2"`` or ``"portable"``.
    """
    import os

    src = "name"
    if name is None:
        name, src = _forced_kernel, "use_gemm_kernel"
    if name is None:
        name, src = os.environ.get(_KERNEL_ENV, "auto").strip().lower() or "auto", _KERNEL_ENV
    check_choice(name, src, GEMM_KERNELS)
    avail = available_gemm_kernels()
    if name == "auto":
        return avail[0]
    if name not in avail:
        raise ValueError(f"{src}={name!r}: this CPU cannot run that kernel; it can run "
                         + ", ".join(repr(k) for k in avail))
    return name


class use_gemm_kernel:
    """Force the 8-bit GEMM kernel in a ``with`` block (or until :meth:`restore`):
    ``with use_gemm_kernel("avx2"): ...``. ``None`` or ``"auto"`` lifts the choice.

    Parameters
    ----------
    name : str or None
        One of ``GEMM_KERNELS``, validated at once by :func:`gemm_kernel` (a kernel the
        CPU cannot run is a ``ValueError``).
    """

    def __init__(self, name: str | None):
        global _forced_kernel
        if name is not None:
            gemm_kernel(name)  # validate now
        self._old, _forced_kernel = _forced_kernel, (None if name == "auto" else name)

    def restore(self) -> None:
        global _forced_kernel
        _forced_kernel = self._old

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _to_u8(x2d: np.ndarray, ax: int, kp: int) -> np.ndarray:
    """``x + ax`` as C-contiguous uint8 (N, kp), zero-padded; ``x2d`` itself when it already is."""
    n, k = x2d.shape
    if ax == 0 and k == kp and x2d.flags.c_contiguous:
        return x2d
    xu = np.empty((n, kp), np.uint8)
    if ax:  # int8 + 128 as uint8: flip the sign bit
        np.bitwise_xor(x2d.view(np.uint8), np.uint8(0x80), out=xu[:, :k])
    else:
        xu[:, :k] = x2d
    xu[:, k:] = 0
    return xu


_PACKED_MIN_ROWS = 6  # the packed kernel's tile height; fewer rows use the row-dot kernel


def _run_fast(f: _Fast, x2d: np.ndarray, pairs: bool = False) -> np.ndarray:
    """int32 (N, O) accumulators by the kernel :func:`gemm_kernel` names: VNNI packed
    (6 rows or more) or row-dot, AVX2, or portable; ``pairs``: the pair-saturating product."""
    n, k = x2d.shape
    out = np.empty((n, f.ws.shape[0]), np.int32)
    kernel = gemm_kernel()
    if pairs:
        if kernel == "portable":
            kp = _round_up(k, 2)
            _k.gemm_u8s8_pairs_portable(_to_u8(x2d, 0, kp), f.padded(kp), f.dw, f.col, out)
        else:
            kp = _round_up(k, _k.AVX2_SAT16_K_ALIGN)
            _k.gemm_u8s8_avx2_sat16(_to_u8(x2d, 0, kp), f.avx2_panels(kp, pairs=True), f.dw, f.col, out)
    elif kernel == "vnni" and n >= _PACKED_MIN_ROWS:
        _k.gemm_u8s8_vnni_packed(_to_u8(x2d, f.ax, _round_up(k, 4)), f.panels(), f.dw, f.col, out)
    elif kernel == "avx2":
        kp = _round_up(k, _k.AVX2_K_ALIGN)
        _k.gemm_u8s8_avx2(_to_u8(x2d, f.ax, kp), f.avx2_panels(kp), f.dw, f.col, out)
    else:
        kern = _k.gemm_u8s8_vnni if kernel == "vnni" else _k.gemm_u8s8_portable
        kern(_to_u8(x2d, f.ax, _round_up(k, 64)), f.padded(), f.dw, f.col, out)
    return out


def _gemm_u8s8_numpy(xu, ws, dw, col, pairs: bool = False) -> np.ndarray:
    """Twin of ``_kernels.gemm.gemm_u8s8_*``: ``xu @ ws.T - dw * rowsum(xu) + col``, wrapped;
    ``pairs``: the product is ``sum_p sat16(...)`` of :func:`.overflow.int16_pair_accumulate`
    (twin of ``gemm_u8s8_avx2_sat16`` and ``gemm_u8s8_pairs_portable``)."""
    x64 = xu.astype(np.int64)
    if pairs:
        prod = _ovf.int16_pair_accumulate(xu, ws).astype(np.int64)
    else:
        prod = x64 @ ws.astype(np.int64).T
    acc = prod - x64.sum(axis=1, keepdims=True) * dw.astype(np.int64)
    return _wrap32(acc + col).astype(np.int32)


def _gemm_direct_numpy(x, zx, w, zw, bias) -> np.ndarray:
    """Twin of ``_kernels.gemm.gemm_direct``: exact in int64, then wrapped to int32."""
    acc = (x.astype(np.int64) - zx) @ (w.astype(np.int64) - zw.astype(np.int64)[:, None]).T
    return _wrap32(acc + bias).astype(np.int32)


def _gemm_folded_numpy(x, w, zw, bias_folded) -> np.ndarray:
    """Twin of ``_kernels.gemm.gemm_folded``."""
    x64 = x.astype(np.int64)
    acc = x64 @ w.astype(np.int64).T - x64.sum(axis=1, keepdims=True) * zw.astype(np.int64)
    return _wrap32(acc + bias_folded).astype(np.int32)


def _requantize_out(acc, x_qp: QParams, w_scale: np.ndarray, per_channel: bool, y_qp: QParams,
                    mode: str, activation, axis: int) -> np.ndarray:
    check_choice(mode, "mode", REQUANT_MODES)
    sy, _ = _act_qparams(y_qp, "y_qp")
    sw = w_scale if per_channel else w_scale[0]
    m = effective_multiplier(np.float32(x_qp.scale), sw, sy, mode)
    return _requantize_acc(acc, m, per_channel, y_qp, _activation_range(activation, y_qp), mode, axis)


def _requantize_acc(acc, multiplier, per_channel: bool, y_qp: QParams, out_range, mode: str,
                    axis: int) -> np.ndarray:
    lo, hi = out_range
    zy = int(y_qp.zero_point)
    ax = axis if per_channel else None
    if lo <= zy <= hi:
        out = requantize(acc, multiplier, zy, lo, hi, mode=mode, axis=ax)
    else:
        # requantize wants Z_y inside [lo, hi]; clamping to the int32 range and then to
        # [lo, hi] is the same clamp
        out = np.clip(requantize(acc, multiplier, zy, INT32_MIN, INT32_MAX, mode=mode, axis=ax), lo, hi)
    return out.astype(y_qp.spec.dtype)


# ---- public functions ------------------------------------------------------------------

def _accumulate_qparams(x_q, x_qp, w_q, w_qp) -> tuple[QParams, QParams]:
    """The accumulate functions' ``x_qp`` and ``w_qp``: QParams, or plain zero points."""
    w = np.asarray(w_q)
    n_out = w.shape[0] if w.ndim >= 1 else 0
    return (_zero_point_qparams(x_qp, x_q, "x_qp"), _zero_point_qparams(w_qp, w, "w_qp", per_channel_len=n_out))


def _linear_setup(x_q, x_qp, w_q, w_qp, bias_q, form, overflow, accumulation="exact"):
    _act_qparams(x_qp, "x_qp")
    _check_qparams_type(w_qp, "w_qp")
    w = _codes(w_q, w_qp, "w_q", ndim=2)
    x = _codes(x_q, x_qp, "x_q")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x_q must have shape (..., {w.shape[1]}) to match w_q {w.shape}, got {x.shape}")
    sw, zw, per_channel = _weight_qparams(w_qp, w.shape)
    bias = _bias(bias_q, w.shape[0])
    pairs = _acc.resolve(accumulation, "linear") == _acc.PAIRS
    g = _prepare(w, zw, x_qp, bias, form, overflow, "the linear accumulator", pairs)
    return x, g, sw, per_channel


def linear_accumulate(x_q, x_qp, w_q, w_qp, bias_q=None, *, form: str = "direct",
                      overflow: str = "error", backend: str = "numba", accumulation: str = "exact") -> np.ndarray:
    """int32 accumulators of an integer fully connected layer (before requantization).

    Parameters
    ----------
    x_q : integer array (..., in)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams or int
        The input's qparams, or only its zero point: the scales are not used here. A
        plain int takes the code range from ``x_q``'s dtype (int8, uint8, int16, uint16)
        and must lie in it; a QParams gives its spec's range.
    w_q : integer array (out, in)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0).
    w_qp : QParams, int or 1-D integer array (out,)
        The weights' qparams, or only the zero point (an int, per-tensor) or one zero
        point per output channel; a plain zero point takes the code range from ``w_q``'s
        dtype (8- or 16-bit) and must lie in it.
    bias_q : int32 array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0.
    form : ``"direct"`` or ``"folded"``
        ``"folded"`` is Jacob et al. 2018's (see the module docstring); identical results.
    overflow : ``"error"`` or ``"wrap"``
        ``"error"``: a possible int32 overflow over all inputs is a ValueError;
        ``"wrap"``: int32 two's complement.
    backend : ``"numba"`` or ``"numpy"``
        The kernel or its NumPy twin; identical results.
    accumulation : str
        ``"exact"`` (default), ``"int16_pairs"``, or a library on a CPU path
        (``"fbgemm"``, ``"fbgemm_avx2"``, ``"mlas_avx2"``, ...): see
        :mod:`npquant.qnn.accumulation`. Pair saturation needs uint8 ``x_q``, int8 ``w_q``.

    Returns
    -------
    int32 array (..., out)
        ``bias + sum (q_x - Z_x)(q_w - Z_w)``, exact; with pair
        saturation, ``bias + S - Z_x sum (q_w - Z_w) - Z_w sum q_x`` with ``S`` the sum of the
        int16-saturated pair sums of raw codes along ``in``.
    """
    check_choice(backend, "backend", BACKENDS)
    x_qp, w_qp = _accumulate_qparams(x_q, x_qp, w_q, w_qp)
    x, g, _, _ = _linear_setup(x_q, x_qp, w_q, w_qp, bias_q, form, overflow, accumulation)
    acc = _run(g, x.reshape(-1, x.shape[-1]), backend)
    return acc.reshape(x.shape[:-1] + (g.w.shape[0],))


def qlinear(x_q, x_qp: QParams, w_q, w_qp: QParams, bias_q, y_qp: QParams, *, mode: str = "tflite",
            activation=None, form: str = "direct", overflow: str = "error",
            backend: str = "numba", float_bias=None, accumulation: str = "exact") -> np.ndarray:
    """Integer fully connected layer: codes in, codes of ``y_qp`` out.

    ``y = clamp(round(acc * S_x S_w / S_y) + Z_y, lo, hi)`` with ``acc`` from
    :func:`linear_accumulate`, the multiplier of :func:`npquant.requant.fixedpoint.effective_multiplier`
    and the rounding of ``mode`` (``tflite``, ``tflite_single``, ``fp32``, ``onnx``;
    per output channel for per-channel weights). ``[lo, hi]`` is ``y_qp``'s code range,
    narrowed by a fused ``activation`` (``"relu"``, ``"relu6"``, ``"relu_n1_to_1"`` as
    TFLite computes them, or a ``(lo, hi)`` pair of codes). ``y_qp`` is per-tensor.
    Returns (..., out) codes of ``y_qp.spec.dtype``; only the final clamp saturates.
    ``float_bias`` (float32 (out,), with ``mode="fp32"`` and ``bias_q=None``) is PyTorch's
    float bias, folded as fbgemm does (:mod:`npquant.qnn.fbgemm`). ``accumulation`` as
    in :func:`linear_accumulate`. With ``float_bias`` and ``accumulation="fbgemm"`` the
    result equals ``torch.ops.quantized.linear`` / ``linear_relu`` (torch 2.13) bit for
    bit on the CPU path at hand (tested live on AVX-512 VNNI and on fbgemm's AVX2
    kernels, and against outputs recorded on an AVX2-only CPU); with the default
    ``"exact"`` it equals PyTorch only where fbgemm is exact (AVX-512 VNNI, or activation
    codes <= 127).

    Parameters
    ----------
    x_q : integer array (..., in)
        Codes of ``x_qp`` (per-tensor).
    x_qp : QParams
        The input's qparams.
    w_q : integer array (out, in)
        Codes of ``w_qp`` (per-tensor or per-channel along axis 0).
    w_qp : QParams
        The weights' qparams.
    bias_q : int32 array (out,) or None
        The bias at scale ``S_x S_w`` and zero point 0 (see :func:`quantize_bias`).
    y_qp : QParams
        The output's qparams, per-tensor.
    mode : str, default ``"tflite"``
        The requantization rounding: ``"tflite"``, ``"tflite_single"``, ``"fp32"`` or
        ``"onnx"`` (see :mod:`npquant.requant.fixedpoint`).
    activation : str, (int, int) or None, default None
        Fused activation that narrows the output range: ``"relu"``, ``"relu6"``,
        ``"relu_n1_to_1"``, or a ``(lo, hi)`` pair of codes.
    form : ``"direct"`` or ``"folded"``, default ``"direct"``
        As in :func:`linear_accumulate`.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        As in :func:`linear_accumulate`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin; identical results.
    float_bias : float32 array (out,) or None, default None
        PyTorch's float bias; needs ``mode="fp32"`` and ``bias_q=None``.
    accumulation : str, default ``"exact"``
        As in :func:`linear_accumulate`.

    Returns
    -------
    numpy.ndarray
        Codes of ``y_qp.spec.dtype``, shape (..., out), saturated to ``[lo, hi]``.
    """
    check_choice(backend, "backend", BACKENDS)
    check_choice(mode, "mode", REQUANT_MODES)
    _check_float_bias(float_bias, bias_q, mode)
    _act_qparams(y_qp, "y_qp")
    _activation_range(activation, y_qp)
    x, g, sw, per_channel = _linear_setup(x_q, x_qp, w_q, w_qp, bias_q, form, overflow, accumulation)
    acc = _run(g, x.reshape(-1, x.shape[-1]), backend)
    if float_bias is not None:
        y = _float_bias_out(acc, x_qp, sw, per_channel, y_qp, float_bias, activation, axis=1, backend=backend)
    else:
        y = _requantize_out(acc, x_qp, sw, per_channel, y_qp, mode, activation, axis=1)
    return y.reshape(x.shape[:-1] + (g.w.shape[0],))


# ---- the product of two quantized activations --------------------------------------------

def qmatmul(a_q, a_qp, b_q, b_qp, y_qp, *, mode: str = "onnx", activation=None,
            overflow: str = "error") -> np.ndarray:
    """Integer ``a @ b`` of two quantized activations, codes of ``y_qp`` out.

    Parameters
    ----------
    a_q : integer array (..., M, K)
        Codes of ``a_qp``, at least 2-D.
    a_qp : QParams
        Per-tensor qparams of ``a``.
    b_q : integer array (..., K, N)
        Codes of ``b_qp``, at least 2-D; the leading axes of ``a_q`` and ``b_q``
        broadcast as in :func:`numpy.matmul`.
    b_qp : QParams
        Per-tensor qparams of ``b``.
    y_qp : QParams
        Per-tensor qparams of the output; its spec gives the code range and the dtype.
    mode : str, default ``"onnx"``
        The requantization: ``"tflite"``, ``"tflite_single"``, ``"fp32"``, ``"onnx"``, or
        ``"tflite_single_away"`` (:mod:`npquant.requant.fixedpoint`). ``"onnx"`` is ONNX's
        reference QLinearMatMul; ``"fp32"`` is onnxruntime's CPU kernel.
    activation : str, (int, int) or None, default None
        A fused clamp as in :func:`npquant.qnn.gemm.qlinear`: ``None`` or ``"none"``,
        ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"``, or a ``(lo, hi)`` pair of codes.
    overflow : ``"error"`` or ``"wrap"``, default ``"error"``
        A sum outside int32 is a ``ValueError``, or wraps as int32 two's complement.

    Returns
    -------
    numpy.ndarray
        Codes of ``y_qp.spec.dtype``, shape ``broadcast(a.shape[:-2], b.shape[:-2]) +
        (M, N)``: the exact int32 accumulator requantized with the rounding of ``mode``;
        only the final clamp to ``[lo, hi]`` (``y_qp.spec``'s range, narrowed by
        ``activation``) saturates.
    """
    check_choice(mode, "mode", REQUANT_MODES + EXTRA_REQUANT_MODES)
    check_choice(overflow, "overflow", _ovf.OVERFLOW_MODES)
    sa, za = _act_qparams(a_qp, "a_qp")
    sb, zb = _act_qparams(b_qp, "b_qp")
    sy, _ = _act_qparams(y_qp, "y_qp")
    out_range = _activation_range(activation, y_qp)
    a = _codes(a_q, a_qp, "a_q")
    b = _codes(b_q, b_qp, "b_q")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"a_q and b_q must be at least 2-D (..., M, K) and (..., K, N), got shapes "
                         f"{a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a_q (..., M, K) and b_q (..., K, N) disagree on K: shapes {a.shape} and {b.shape}")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"the leading axes of a_q {a.shape} and b_q {b.shape} do not broadcast") from None
    acc = _matmul_accumulate(a, za, b, zb)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        if overflow == "error":
            raise ValueError(f"the matmul accumulator overflows int32 (values in [{acc.min()}, {acc.max()}]); "
                             "use overflow='wrap' for int32 wrap-around")
        acc = _wrap32(acc)
    m = effective_multiplier(sa, sb, sy, mode)
    return _requantize_acc(acc.astype(np.int32), m, False, y_qp, out_range, mode, None)


def _matmul_accumulate(a: np.ndarray, za: int, b: np.ndarray, zb: int) -> np.ndarray:
    """Exact int64 ``(a - Z_a) @ (b - Z_b)`` with matmul broadcasting (each product of
    16-bit code differences is below 2^32 in magnitude, so the sum is exact for K < 2^31)."""
    if a.shape[-1] >= 1 << 31:
        raise ValueError(f"K = {a.shape[-1]} is too long for an exact int64 sum")
    return np.matmul(a.astype(np.int64) - za, b.astype(np.int64) - zb)
