"""The integer GEMM engine: ``x @ w.T + bias`` on integer codes, in int32, and which
compiled kernel runs it.

``acc[n, o] = bias[o] + sum_k (q_x[n, k] - Z_x)(q_w[o, k] - Z_w[o])`` exactly in int32:
the accumulator of :mod:`npquant.qnn.linear` and, after im2col, of
:mod:`npquant.qnn.conv`. The weights are prepared once (:func:`prepare_gemm`: the
worst-case overflow check, the folded bias, the kernels' weight layouts) and the product
run on any number of inputs (:func:`run_gemm`).

Two equal forms of the sum, which ``form`` names and the kernels follow on either backend:
``"direct"`` as written, and ``"folded"``, the expansion of Jacob et al. 2018 (eq. 7),
``sum q_x q_w - Z_w sum q_x - Z_x sum q_w + K Z_x Z_w``, whose weight terms are folded
into the bias once per layer. The default ``"auto"`` takes the fastest kernel for the
codes: with 8-bit codes on both sides the unsigned x signed byte kernels, which compute
the folded form on shifted codes (``x + 128`` for int8 inputs, ``w - 128`` for uint8
weights; :class:`_Fast`), and the direct form for wider codes. All give the same int32
bits (modular arithmetic; see :mod:`npquant._kernels.gemm`), tested for every form and
backend. The product can also be the int16 pair saturation of fbgemm's and MLAS's
kernels on CPUs without VNNI (:mod:`npquant.qnn.accumulation`), which works on raw codes
and applies the zero points afterwards, as those libraries do: a folded form, so it
takes ``form="auto"`` or ``"folded"``.

Which compiled 8-bit kernel runs is :func:`gemm_kernel`'s choice (AVX-512 VNNI, AVX2 or
portable, from the CPU, or forced with ``NPQUANT_GEMM_KERNEL`` / :func:`use_gemm_kernel`);
every kernel gives the same bits.

The worst case of ``acc`` over the actual weights, every input code and the bias is
checked against int32 when the weights are prepared (:mod:`npquant.qnn.overflow`): a
possible overflow is a ``ValueError``, or, with ``overflow="wrap"``, wraps as int32.

``qlinear``, ``linear_accumulate``, ``qmatmul`` (now in :mod:`npquant.qnn.linear`) and
``quantize_bias`` (now in :mod:`npquant.qnn.bias`) are still found here for one release,
with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._checks import BACKENDS, check_choice
from .._kernels import gemm as _k
from .._kernels.simd import HAVE_AVX2, HAVE_VNNI
from ..qparams import QParams
from . import overflow as _ovf
from ._common import wrap32 as _wrap32

#: The forms of the sum (module docstring): ``"auto"`` (the default: the fastest kernel),
#: ``"direct"`` and ``"folded"`` (that formula's kernel on every backend and code width).
FORMS = ("auto", "direct", "folded")
_BYTES = (np.dtype(np.int8), np.dtype(np.uint8))

# Names that moved out of this module, for one release: name -> new module.
_MOVED = {
    "qlinear": "linear",
    "linear_accumulate": "linear",
    "qmatmul": "linear",
    "quantize_bias": "bias",
    "BIAS_METHODS": "bias",
}


def __getattr__(name: str):
    new = _MOVED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"npquant.qnn.gemm.{name} moved to npquant.qnn.{new}.{name}; the old name will be removed in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(f"npquant.qnn.{new}"), name)


# ---- the prepared product ---------------------------------------------------------------


@dataclass(frozen=True)
class _Fast:
    """The weights of the numba backend's 8-bit kernels (``_kernels.gemm.gemm_u8s8_*``).

    The kernels multiply unsigned by signed bytes: ``xu = x + ax`` (``ax`` 128 for int8
    codes, else 0) and ``ws = w - aw`` (``aw`` 128 for uint8 weights, else 0). With
    ``cx = Z_x + ax`` and ``dw = Z_w - aw``,
    ``sum (x - Z_x)(w - Z_w) = sum xu ws - dw sum xu - cx sum ws + K cx dw``, so
    ``col = bias - cx sum ws + K cx dw`` (int32, wrapped) is all the kernels need besides
    ``dw``. Every array is per output row, so a slice of rows is a sub-product (a
    convolution group).

    No copy of the weights is kept here: ``w`` is the prepared product's own array, and
    ``ws`` is ``w`` itself for int8 weights; for uint8 weights it is made only while a
    layout is built. The one layout the running kernel takes (rows padded; 64-column
    panels; 16-column int16 panels) is built on first use and replaces the previous one:
    a layer holds at most one kernel copy of its weights.
    """

    w: np.ndarray  # (O, K) int8 or uint8 codes, C-contiguous (PreparedGemm.w, shared)
    aw: int  # 128 for uint8 weights, else 0
    dw: np.ndarray  # (O,) int32
    col: np.ndarray  # (O,) int32, wrapped
    ax: int
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def ws(self) -> np.ndarray:
        """(O, K) int8 ``w - aw``: ``w`` itself for int8 weights, else a new array (not kept)."""
        if self.aw == 0:
            return self.w
        return np.bitwise_xor(self.w, np.uint8(0x80)).view(np.int8)  # uint8 - 128 as int8: flip the sign bit

    def rows(self, sl: slice) -> _Fast:
        key = ("rows", sl.start, sl.stop)
        if key not in self._cache:
            # a run of rows of a C-contiguous array is C-contiguous: a view, no copy
            self._cache[key] = _Fast(self.w[sl], self.aw, self.dw[sl], self.col[sl], self.ax)
        return self._cache[key]

    def _layout(self, key: tuple, build) -> np.ndarray:
        """The kernel layout ``key``, built once; it replaces the layout kept before."""
        have = self._cache.get("layout")
        if have is None or have[0] != key:
            have = (key, build())
            self._cache["layout"] = have
        return have[1]

    def padded(self, kp: int | None = None) -> np.ndarray:
        """(O, kp) int8 zero-filled; ``kp`` default: the next multiple of 64 (at least 64).
        ``w`` itself when it already is (int8 weights, K == kp)."""
        o, k = self.w.shape
        kp = _round_up(k, 64) if kp is None else kp
        if kp == k and self.aw == 0:
            return self.w

        def build():
            wpad = np.zeros((o, kp), np.int8)  # the kernels read whole rows of kp bytes
            wpad[:, :k] = self.ws
            return wpad

        return self._layout(("padded", kp), build)

    def panels(self) -> np.ndarray:
        """The 64-column panels of ``_kernels.gemm.pack_panels`` (K padded to a multiple of 4)."""
        return self._layout(("panels",), lambda: _k.pack_panels(self.ws, _round_up(self.w.shape[1], 4)))

    def avx2_panels(self, kp: int, pairs: bool = False) -> np.ndarray:
        """The weight layout of the AVX2 kernel (exact, or ``pairs``: pair-saturating)."""
        pack = _k.pack_panels_avx2_sat16 if pairs else _k.pack_panels_avx2
        return self._layout(("avx2", kp, pairs), lambda: pack(self.ws, kp))


def _round_up(k: int, m: int) -> int:
    return max(m, -(-k // m) * m)


@dataclass(frozen=True)
class PreparedGemm:
    """Everything about ``x @ w.T + bias`` that does not depend on ``x`` (:func:`prepare_gemm`).

    Attributes
    ----------
    w : integer array (O, K)
        Weight codes, C-contiguous: the caller's array when it already is one (a layer
        passes its read-only copy), else a C-contiguous copy.
    zx : int
        The input zero point.
    zw : int32 array (O,)
        The weight zero points.
    bias : int32 array (O,)
        The bias.
    bias_folded : int32 array (O,)
        ``bias + K Z_x Z_w - Z_x sum_k w``, wrapped: the bias of the folded form.
    form : str
        ``"auto"``, ``"direct"`` or ``"folded"`` (module docstring).
    fits : bool
        The worst case fits int32.
    fast : object or None, default None
        The 8-bit kernels' weights (8-bit codes on both sides, form ``"auto"``), or None.
    pairs : bool, default False
        int16 pair saturation along K (accumulation ``"int16_pairs"``).
    """

    w: np.ndarray  # (O, K) codes, C-contiguous
    zx: int
    zw: np.ndarray  # (O,) int32
    bias: np.ndarray  # (O,) int32
    bias_folded: np.ndarray  # (O,) int32: bias + K Zx Zw - Zx sum_k w, wrapped
    form: str
    fits: bool  # the worst case fits int32
    fast: _Fast | None = None  # 8-bit codes on both sides: the numba backend's fast kernels
    pairs: bool = False  # int16 pair saturation along K (accumulation "int16_pairs")

    def rows(self, sl: slice) -> PreparedGemm:
        """The product restricted to output rows ``sl`` (a convolution group).

        Parameters
        ----------
        sl : slice
            Output rows, a contiguous run.

        Returns
        -------
        PreparedGemm
            The same product on those rows (views of the weights; the kernels' layouts
            are kept per slice).
        """
        return PreparedGemm(
            self.w[sl],
            self.zx,
            self.zw[sl],
            self.bias[sl],
            self.bias_folded[sl],
            self.form,
            self.fits,
            None if self.fast is None else self.fast.rows(sl),
            self.pairs,
        )


def prepare_gemm(
    w2d: np.ndarray,
    zw: np.ndarray,
    x_qp: QParams,
    bias: np.ndarray,
    form: str,
    overflow: str,
    what: str,
    pairs: bool = False,
) -> PreparedGemm:
    """Prepare ``x @ w.T + bias`` once: check the worst case, fold the bias, lay out the weights.

    The layers call this with validated arguments (:mod:`npquant.qnn.linear`,
    :mod:`npquant.qnn.conv`); ``form``, ``overflow`` and the dtypes of ``pairs`` are
    checked here. ``w2d`` is kept as it is when C-contiguous (not copied): the caller
    must not change it afterwards (the layers pass a read-only copy).

    Parameters
    ----------
    w2d : integer array (O, K)
        Weight codes, one row per output.
    zw : int32 array (O,)
        The weight zero point of each row.
    x_qp : QParams
        The input's qparams: the zero point, and the code range for the worst case.
    bias : int32 array (O,)
        The bias added to each row's sum.
    form : ``"auto"``, ``"direct"`` or ``"folded"``
        The form of the sum (module docstring); identical results. With ``pairs`` only
        ``"auto"`` and ``"folded"`` (the pair-saturating product is folded).
    overflow : ``"error"`` or ``"wrap"``
        A possible int32 overflow over all inputs is a ValueError naming ``what``, or wraps.
    what : str
        The accumulator's name in the overflow error (``"the linear accumulator"``).
    pairs : bool, default False
        The resolved accumulation is ``"int16_pairs"`` (:mod:`npquant.qnn.accumulation`):
        needs uint8 input codes and int8 weights.

    Returns
    -------
    PreparedGemm
        The prepared product.
    """
    check_choice(form, "form", FORMS)
    check_choice(overflow, "overflow", _ovf.OVERFLOW_MODES)
    if pairs and (w2d.dtype != np.int8 or np.dtype(x_qp.spec.dtype) != np.uint8):
        raise ValueError(
            "accumulation with int16 pair saturation models vpmaddubsw on uint8 activation "
            f"codes x int8 weight codes; got {np.dtype(x_qp.spec.dtype)} activations (x_qp) and "
            f"{w2d.dtype} weights (w_q): use accumulation='exact'"
        )
    if pairs and form == "direct":
        raise ValueError(
            "form='direct' cannot saturate int16 pairs: the pair-saturating product multiplies raw "
            "codes and applies the zero points afterwards (the folded form); use form='auto' or "
            "'folded', or accumulation='exact'"
        )
    zx = int(x_qp.zero_point)
    lo, hi = _ovf.accumulator_bounds(w2d, zw, x_qp.spec.qmin, x_qp.spec.qmax, zx, bias)
    fits = _ovf.check_accumulator(lo, hi, overflow, what=what)
    w = np.ascontiguousarray(w2d)  # the generic kernels take C-contiguous rows; no copy if already
    k = w.shape[1]
    wsum = w.sum(axis=1, dtype=np.int64)
    folded = bias.astype(np.int64) + k * zx * zw.astype(np.int64) - zx * wsum
    fast = None
    if (form == "auto" or pairs) and w.dtype in _BYTES and np.dtype(x_qp.spec.dtype) in _BYTES:
        ax = 128 if np.dtype(x_qp.spec.dtype) == np.int8 else 0
        aw = 128 if w.dtype == np.uint8 else 0
        cx = zx + ax
        dw = zw.astype(np.int64) - aw
        col = bias.astype(np.int64) - cx * (wsum - aw * k) + k * cx * dw  # sum ws = sum w - aw K
        fast = _Fast(w, aw, _wrap32(dw).astype(np.int32), _wrap32(col).astype(np.int32), ax)
    return PreparedGemm(w, zx, zw, bias, _wrap32(folded).astype(np.int32), form, fits, fast, pairs)


def fast_plan(g: PreparedGemm, n: int, x_dtype: np.dtype, backend: str) -> tuple[str, int] | None:
    """The 8-bit kernel :func:`run_gemm` would run on ``n`` rows of ``x_dtype`` codes, and
    the row length ``kp`` it takes (K padded with zeros), or None if it runs no 8-bit kernel
    (``backend="numpy"``, form ``"direct"`` or ``"folded"``, codes wider than 8 bits).

    Callers that make the input rows themselves (the conv's im2col) write them straight in
    the kernel's form, uint8 ``x + ax`` of length ``kp``, and call :func:`run_fast_rows`.

    Parameters
    ----------
    g : PreparedGemm
        The product.
    n : int
        The number of input rows.
    x_dtype : numpy.dtype
        The dtype of the input codes.
    backend : str
        ``"numba"`` or ``"numpy"``.

    Returns
    -------
    tuple of (str, int) or None
        ``(kernel, kp)``.
    """
    if backend != "numba" or g.fast is None or np.dtype(x_dtype) != (np.int8 if g.fast.ax else np.uint8):
        return None
    return _plan(n, g.w.shape[1], g.pairs)


def run_fast_rows(g: PreparedGemm, plan: tuple[str, int], xu: np.ndarray) -> np.ndarray:
    """int32 (N, O) accumulators of ``xu`` (N, kp) uint8, C-contiguous: input codes plus
    ``g.fast.ax`` with K zero-padded to ``kp``, by the kernel of ``plan`` (:func:`fast_plan`).

    Parameters
    ----------
    g : PreparedGemm
        The product (its ``fast`` weights).
    plan : tuple of (str, int)
        From :func:`fast_plan`.
    xu : uint8 array (N, kp)
        The input rows in the kernel's form.

    Returns
    -------
    numpy.ndarray
        int32 (N, O), as :func:`run_gemm`.
    """
    return _run_plan(g.fast, plan, xu)


def run_gemm(g: PreparedGemm, x2d: np.ndarray, backend: str = "numba") -> np.ndarray:
    """int32 (N, O) accumulators of codes ``x2d`` (N, K): ``x2d @ w.T + bias`` as prepared.

    The kernel follows ``g.form``: ``"direct"`` and ``"folded"`` run that formula's kernel
    (numba, or its NumPy twin with ``backend="numpy"``) on any code widths; ``"auto"`` runs
    8-bit codes through the unsigned x signed byte kernels (the one :func:`gemm_kernel`
    names; on ``backend="numpy"`` their twin) and wider codes through the direct form.
    Every path gives the same int32 bits. With ``g.pairs`` the product is the int16
    pair-saturating one, on either backend.

    Parameters
    ----------
    g : PreparedGemm
        The product, from :func:`prepare_gemm`.
    x2d : integer array (N, K)
        Input codes of the dtype of ``g``'s input qparams, inside their range (the layers
        check the codes; here only the shape and dtype kind are checked).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernels or their NumPy twins; identical results.

    Returns
    -------
    numpy.ndarray
        int32 (N, O), wrapped to int32 if the prepared product allows it.
    """
    check_choice(backend, "backend", BACKENDS)
    if x2d.ndim != 2 or x2d.dtype.kind not in "iu" or x2d.shape[1] != g.w.shape[1]:
        raise ValueError(f"x2d must be integer codes of shape (N, {g.w.shape[1]}), got {x2d.dtype} {x2d.shape}")
    f = g.fast
    if f is not None and x2d.dtype == (np.int8 if f.ax else np.uint8):
        if backend == "numba":
            plan = _plan(x2d.shape[0], x2d.shape[1], g.pairs)
            return _run_plan(f, plan, _to_u8(x2d, f.ax, plan[1]))
        xu = np.bitwise_xor(x2d.view(np.uint8), np.uint8(0x80)) if f.ax else x2d
        return _gemm_u8s8_numpy(xu, f.ws, f.dw, f.col, pairs=g.pairs)
    x = np.ascontiguousarray(x2d)
    if backend == "numpy":
        if g.form == "folded":
            return _gemm_folded_numpy(x, g.w, g.zw, g.bias_folded)
        return _gemm_direct_numpy(x, g.zx, g.w, g.zw, g.bias)
    out = np.empty((x.shape[0], g.w.shape[0]), np.int32)
    if g.form == "folded":
        _k.gemm_folded(x, g.w, g.zw, g.bias_folded, out)
    else:
        _k.gemm_direct(x, np.int32(g.zx), g.w, g.zw, g.bias, out)
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
        raise ValueError(
            f"{src}={name!r}: this CPU cannot run that kernel; it can run " + ", ".join(repr(k) for k in avail)
        )
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

    def __init__(self, name: str | None) -> None:
        global _forced_kernel
        if name is not None:
            gemm_kernel(name)  # validate now
        self._old, _forced_kernel = _forced_kernel, (None if name == "auto" else name)

    def restore(self) -> None:
        """Put back the choice in force before this object was made."""
        global _forced_kernel
        _forced_kernel = self._old

    def __enter__(self) -> use_gemm_kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _to_u8(x2d: np.ndarray, ax: int, kp: int) -> np.ndarray:
    """``x + ax`` as C-contiguous uint8 (N, kp), zero-padded; ``x2d`` itself when it already is.

    The one copy of the input on the 8-bit path (none for C-contiguous uint8 rows whose
    length is already the kernel's): the kernels read unsigned bytes in rows of ``kp``.
    """
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


def _plan(n: int, k: int, pairs: bool) -> tuple[str, int]:
    """(kernel, kp) for ``n`` rows of length ``k``: the kernel :func:`gemm_kernel` names
    (VNNI packed for 6 rows or more, else row-dot; AVX2; portable) and the row length it
    takes; ``pairs``: the pair-saturating product."""
    kernel = gemm_kernel()
    if pairs:
        if kernel == "portable":
            return "pairs_portable", _round_up(k, 2)
        return "avx2_sat16", _round_up(k, _k.AVX2_SAT16_K_ALIGN)
    if kernel == "vnni" and n >= _PACKED_MIN_ROWS:
        return "vnni_packed", _round_up(k, 4)
    if kernel == "avx2":
        return "avx2", _round_up(k, _k.AVX2_K_ALIGN)
    return kernel, _round_up(k, 64)


def _run_plan(f: _Fast, plan: tuple[str, int], xu: np.ndarray) -> np.ndarray:
    """int32 (N, O) accumulators of ``xu`` (N, kp) uint8 rows (``x + ax``, zero-padded to
    the ``kp`` of ``plan``) by the kernel of ``plan``."""
    kernel, kp = plan
    out = np.empty((xu.shape[0], f.w.shape[0]), np.int32)
    if kernel == "pairs_portable":
        _k.gemm_u8s8_pairs_portable(xu, f.padded(kp), f.dw, f.col, out)
    elif kernel == "avx2_sat16":
        _k.gemm_u8s8_avx2_sat16(xu, f.avx2_panels(kp, pairs=True), f.dw, f.col, out)
    elif kernel == "vnni_packed":
        _k.gemm_u8s8_vnni_packed(xu, f.panels(), f.dw, f.col, out)
    elif kernel == "avx2":
        _k.gemm_u8s8_avx2(xu, f.avx2_panels(kp), f.dw, f.col, out)
    else:
        kern = _k.gemm_u8s8_vnni if kernel == "vnni" else _k.gemm_u8s8_portable
        kern(xu, f.padded(kp), f.dw, f.col, out)
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
