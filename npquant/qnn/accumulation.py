"""Accumulation as a named mode: exact int32, or int16 pair saturation as a named stack computes it.

An integer layer sums ``K`` byte products into an int32 accumulator. Mathematically the
order does not matter; on real CPUs it can. Without a fused 8-bit dot product
instruction, PyTorch's fbgemm and onnxruntime's MLAS multiply uint8 activation codes by
int8 weight codes with ``vpmaddubsw``, which adds each adjacent pair of byte products into
a *saturating* int16 lane before the pairs are widened and added in int32::

    S = sum_p sat16(x[2p] w[2p] + x[2p+1] w[2p+1])        raw codes, sat16 = clamp to int16
    acc = S - Z_x sum_k (w_k - Z_w) - Z_w sum_k x_k         zero points applied exactly

(an odd last ``k`` is alone). With 8-bit activations a pair can reach ``2 * 255 * 128 =
65280``, so outputs differ from the exact sum; with codes <= 127 nothing saturates (see
:mod:`npquant.qnn.overflow`). With AVX-512 VNNI (``vpdpbusd``) the products go straight into
int32 and the sum is exact.

``accumulation`` takes one of :data:`ACCUMULATIONS`:

``"exact"``
    the mathematically exact int32 sum (the default everywhere).
``"int16_pairs"``
    pair saturation on every layer. The reduction runs along ``K`` for linear layers; for
    conv2d, within each group, over the im2col row in (kh, kw, c) order with ``c`` fastest
    (so with an odd number of channels per group a pair spans two taps), padding taps
    carrying the code ``Z_x``. Needs uint8 activations and int8 weights.
``"fbgemm_avx2"``, ``"fbgemm_vnni"``
    PyTorch's fbgemm (torch 2.13) on a CPU path. Without VNNI every linear and conv
    saturates as ``"int16_pairs"`` (GEMM, im2col, groupwise, pointwise and depthwise
    kernels alike). With AVX-512 VNNI the GEMM-based paths are exact but the depthwise
    kernel still saturates: ``groups == C_in``, ``C_out`` in ``{C_in, 2 C_in}``, ``C_in``
    a multiple of 8, a square 3x3, 5x5 or 7x7 kernel, stride 1 or 2, dilation 1 and
    symmetric padding ``(k - 1) / 2`` (measured on torch 2.13 with fbgemm forced to each
    ISA through ``FBGEMM_ENABLE_INSTRUCTIONS``; ``tests/test_qnn_torch.py``).
``"mlas_avx2"``, ``"mlas_vnni"``
    onnxruntime's MLAS (1.32): without VNNI, ``MatMulInteger``, ``QLinearMatMul`` and
    dense or grouped ``QLinearConv`` saturate as ``"int16_pairs"``, while the depthwise
    ``QLinearConv`` kernels (one input and one output channel per group) and
    ``ConvInteger`` are exact (recorded on an AVX2 CPU: ``tests/data/x86_avx2``). With
    AVX-512 VNNI or AVX-VNNI everything is exact.
``"fbgemm"``, ``"mlas"``
    the path that library takes on *this* CPU (:func:`host_path`): fbgemm uses its VNNI
    kernels only with AVX-512 VNNI (it has no AVX-VNNI kernels) and honours
    ``FBGEMM_ENABLE_INSTRUCTIONS``; MLAS uses VNNI with AVX-512 VNNI or AVX-VNNI.

Not covered (no measurement): int8 (signed) activations, 3-D and transposed
convolutions, grouped (not depthwise) ``QLinearConv`` and ``ConvInteger`` shapes other
than the recorded ones on VNNI-less CPUs, and AVX-512 CPUs without VNNI (where both
libraries also use ``vpmaddubsw``, and the ``"avx2"`` path is assumed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from .._checks import check_choice
from .._kernels.cpu import cpu_features

ACCUMULATIONS = ("exact", "int16_pairs", "fbgemm", "fbgemm_avx2", "fbgemm_vnni", "mlas", "mlas_avx2", "mlas_vnni")
#: The two arithmetics every named accumulation resolves to.
EXACT, PAIRS = "exact", "int16_pairs"

# fbgemm's FBGEMM_ENABLE_INSTRUCTIONS values, and what a detected ISA lets it be forced to
# (fbgemm src/Utils.cc: fbgemmEnvGetIsa, isaSupportMap)
_FBGEMM_ENV = {
    "AVX2": "avx2",
    "AVX512": "avx512",
    "AVX512_E1": "avx512_vnni",
    "AVX512_256": "avx512",
    "AVX512_E1_256": "avx512_vnni",
}
_FBGEMM_ALLOWED = {"avx2": {"avx2"}, "avx512": {"avx512", "avx2"}, "avx512_vnni": {"avx512_vnni", "avx512", "avx2"}}


def host_path(library: str, features: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``"vnni"`` or ``"avx2"``: whether ``library`` (``"fbgemm"`` or ``"mlas"``) runs its
    exact VNNI kernels or its ``vpmaddubsw`` kernels on this CPU.

    ``features`` (default :func:`cpu_features`) and ``environ`` (default ``os.environ``, for
    ``FBGEMM_ENABLE_INSTRUCTIONS``, which fbgemm reads once, at its first GEMM) may be
    given to ask about another machine.

    Parameters
    ----------
    library : ``"fbgemm"`` or ``"mlas"``
        The library asked about.
    features : iterable of str or None, default None
        CPU feature flags (``"avx512vnni"``, ``"avx512bw"``, ``"avxvnni"``, ...); ``None``
        is :func:`cpu_features` of this CPU.
    environ : mapping or None, default None
        The environment fbgemm reads; ``None`` is ``os.environ``.

    Returns
    -------
    str
        ``"vnni"`` or ``"avx2"``.
    """
    check_choice(library, "library", ("fbgemm", "mlas"))
    f = cpu_features() if features is None else frozenset(features)
    if library == "mlas":
        return "vnni" if ("avx512vnni" in f and "avx512bw" in f) or "avxvnni" in f else "avx2"
    detected = (
        "avx512_vnni"
        if "avx512vnni" in f
        else "avx512"
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f
        else "avx2"
    )
    env = (os.environ if environ is None else environ).get("FBGEMM_ENABLE_INSTRUCTIONS")
    forced = _FBGEMM_ENV.get(env.strip().upper()) if env else None
    isa = forced if forced in _FBGEMM_ALLOWED[detected] else detected
    return "vnni" if isa == "avx512_vnni" else "avx2"


def check_accumulation(accumulation: str) -> str:
    """``accumulation`` if it is one of :data:`ACCUMULATIONS`, else a ``ValueError``.

    Parameters
    ----------
    accumulation : str
        The name to check.

    Returns
    -------
    str
        ``accumulation``, unchanged.
    """
    return check_choice(accumulation, "accumulation", ACCUMULATIONS)


def fbgemm_depthwise(
    c_in: int,
    c_out: int,
    groups: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> bool:
    """Does fbgemm (torch 2.13) run this conv2d through its depthwise kernel?

    ``padding`` is (top, bottom, left, right). Conditions in the module docstring.

    Parameters
    ----------
    c_in, c_out, groups : int
        Input channels, output channels and groups of the conv2d.
    kernel : (int, int)
        ``(kh, kw)``.
    stride : (int, int)
        ``(s_h, s_w)``.
    padding : (int, int, int, int)
        (top, bottom, left, right).
    dilation : (int, int)
        ``(d_h, d_w)``.

    Returns
    -------
    bool
        True if the depthwise kernel runs.
    """
    kh, kw = kernel
    return (
        groups == c_in
        and c_out in (c_in, 2 * c_in)
        and c_in % 8 == 0
        and kh == kw
        and kh in (3, 5, 7)
        and all(s in (1, 2) for s in stride)
        and tuple(dilation) == (1, 1)
        and tuple(padding) == ((kh - 1) // 2,) * 4
    )


def resolve(accumulation: str, op: str = "linear", *, conv: tuple | None = None) -> str:
    """``"exact"`` or ``"int16_pairs"``: what ``accumulation`` computes for one layer.

    Parameters
    ----------
    accumulation : str
        One of :data:`ACCUMULATIONS`.
    op : ``"linear"`` or ``"conv2d"``, default ``"linear"``
        The kind of layer.
    conv : tuple or None, default None
        Keyword-only; required for a conv2d with a library's accumulation: ``(c_in, c_out,
        groups, (kh, kw), stride, (top, bottom, left, right), dilation)``, the arguments of
        :func:`fbgemm_depthwise`.

    Returns
    -------
    str
        ``"exact"`` or ``"int16_pairs"``.
    """
    check_accumulation(accumulation)
    check_choice(op, "op", ("linear", "conv2d"))
    if accumulation in (EXACT, PAIRS):
        return accumulation
    library, _, path = accumulation.partition("_")
    path = path or host_path(library)
    if op == "conv2d" and conv is None:
        raise ValueError("a conv2d needs its geometry (conv=...) to resolve a library's accumulation")
    if library == "fbgemm":
        if path == "avx2":
            return PAIRS
        return PAIRS if op == "conv2d" and fbgemm_depthwise(*conv) else EXACT
    if path == "vnni":
        return EXACT
    if op == "conv2d":
        c_in, c_out, groups = conv[:3]
        if c_in == groups and c_out == groups:  # MLAS's depthwise kernels: exact (recorded on AVX2)
            return EXACT
    return PAIRS
