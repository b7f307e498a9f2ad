"""Golden test vectors: every integer tensor of one run of an integer model, in the files
a hardware testbench reads.

:func:`write_vectors` runs an integer model (an :class:`~npquant.models.convert.IntegerModel`,
or an integer :class:`~npquant.models.graph.Graph`) once and writes, for every layer (graph
node) in execution order, its input codes, its constants (weight codes, bias, weight zero
points, requantization multipliers), its int32 accumulators and its output codes. The
same arrays go into four forms, all in one folder:

``<layer>_<tensor>.hex``
    One file per tensor that Verilog's ``$readmemh`` reads: one element per line, C order
    (row-major, the last axis fastest), lowercase hexadecimal without ``0x``, a fixed
    number of digits per dtype (:data:`HEX_DIGITS`: 2 for int8/uint8, 4 for int16/uint16,
    8 for int32 and float32); signed values in two's complement (``-1`` in int8 is
    ``ff``), float32 values as their IEEE 754 binary32 bit pattern. The first line is a
    ``//`` comment naming the tensor, which ``$readmemh`` skips (IEEE 1364 allows both
    comment forms in its files). The values are written as numbers, so the text has no
    byte order: a line holds the value, most significant digit first.
``vectors.h``
    One C99 header: ``static const int8_t/uint8_t/int16_t/uint16_t/int32_t/float
    <layer>_<tensor>[]`` arrays in C order (float arrays as exact C99 hexadecimal
    literals), and ``#define`` lines for every shape (``<LAYER>_<TENSOR>_NDIM``,
    ``_DIM0``..., ``_LEN``), zero point, clamp, geometry, and for ``m0`` and ``shift``
    where a layer has one multiplier for all channels. It compiles with ``cc -std=c99
    -Wall -Werror``.
``vectors.npz``
    Every array under the same name as its C array (``<layer>_<tensor>``), little-endian,
    for NumPy.
``manifest.json``
    What each file holds: the format (:data:`FORMAT`, :data:`VERSION`), the model, and
    per layer in execution order its name (and the original name it was made from), op,
    requantization mode and formula, accumulation mode, clamp, zero points, scales,
    geometry, and per tensor its file, dtype, shape and layout (``NCHW`` activations,
    ``OIHW`` conv weights, ``OI`` linear weights, ``O`` per-output-channel vectors).

Names are safe file names and C identifiers: each layer name is reduced to letters,
digits and ``_`` (at most 40 characters, not starting with a digit, unique without
regard to case); the manifest maps each original name to its identifier. An
:class:`~npquant.models.convert.IntegerModel` has no layer names: its layers are named
``l<index>_<op>`` (``l00_qlinear``). The ops are those of :data:`npquant.models.graph.OPS`.

The tensors of each op:

=========================  =================================================================
op                         tensors
=========================  =================================================================
``qlinear``, ``qconv2d``   ``input``, ``weight``, ``weight_zero_point`` (O,), ``bias``
                           (int32 (O,); float32 for PyTorch's float bias, then also
                           ``bias_scale``), ``m0``, ``shift`` (int32 (O,)), ``multiplier``
                           (float32 (O,), for the float modes), ``acc`` (int32), ``output``
``qadd``                   ``input0``, ``input1``, ``output``; ``m0``, ``shift`` (int32
                           (3,): input0, input1, output) in the TFLite modes
``qconcat``                ``input0`` ... ``input<k>``, ``output``
``quantize``               ``input`` (float32), ``output``
``dequantize``             ``input``, ``output`` (float32)
other ops                  ``input``, ``output``
=========================  =================================================================

The requantization multipliers: ``m0`` and ``shift`` are always
:func:`npquant.requant.fixedpoint.quantize_multiplier` of the layer's real multiplier ``M = S_x
S_w / S_y`` as its mode computes it (``layer.multiplier``; single rounding's saturation
for ``tflite_single``), per output channel (``M = m0 * 2^(shift - 31)``). The modes
``fp32`` and ``onnx`` do not use them: they multiply by ``multiplier``, the float32 ``M``,
and the manifest's ``requantization.uses`` says which constants the mode uses, with its
formula. :func:`read_vectors` reads the hex files back strictly.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._checks import as_float_array, check_bool, check_int_array, check_pair
from ._fileio import FileFormatError, _umask, check_path, parse_json, read_bytes
from ._version import __version__
from .affine import dequantize, quantize
from .models.convert import IntegerModel
from .qnn import layers as ql
from .qnn.add import tflite_add_params
from .qnn.fbgemm import fbgemm_multipliers
from .qparams import QParams
from .requant.fixedpoint import quantize_multiplier

if TYPE_CHECKING:
    from .models import nn
    from .models.graph import Graph

__all__ = [
    "C_HEADER",
    "C_TYPES",
    "FORMAT",
    "HEX_DIGITS",
    "MANIFEST",
    "NPZ",
    "TENSORS_FORMAT",
    "TENSORS_INDEX",
    "VERSION",
    "read_manifest",
    "read_vectors",
    "write_intermediates",
    "write_vectors",
]

#: The ``format`` of ``manifest.json``.
FORMAT = "npquant-vectors"
#: The ``version`` of ``manifest.json`` this module writes and the newest it reads.
VERSION = 1
#: The manifest's file name in a vector set.
MANIFEST = "manifest.json"
#: The C header's file name in a vector set.
C_HEADER = "vectors.h"
#: The ``.npz`` file's name in a vector set.
NPZ = "vectors.npz"
#: Hexadecimal digits per element of each dtype in the ``.hex`` files.
HEX_DIGITS = {"int8": 2, "uint8": 2, "int16": 4, "uint16": 4, "int32": 8, "float32": 8}
#: The C type of each dtype in ``vectors.h``.
C_TYPES = {
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "float32": "float",
}
#: The ``format`` of the index of a folder of intermediate tensors (:func:`write_intermediates`).
TENSORS_FORMAT = "npquant-tensors"
#: The index file's name in a folder of intermediate tensors.
TENSORS_INDEX = "tensors.json"

_BIG_ENDIAN = {"int8": "i1", "uint8": "u1", "int16": ">i2", "uint16": ">u2", "int32": ">i4", "float32": ">f4"}
_MAX_IDENT = 40
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HEX_FILE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.hex")
_MAX_ELEMENTS = 1 << 32
_INT32_MIN = -(1 << 31)

_BYTE_ORDER = {
    "hex": "value-based: each line is one value written most significant digit first; the text has no "
    "byte order (two's complement for signed integers, IEEE 754 binary32 bits for float32)",
    "npz": "little-endian",
    "c_header": "values (C literals); the compiler stores them in the target's byte order",
}

_FORMULAS = {
    "tflite": "code = clamp(RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << max(shift, 0), m0), "
    "max(-shift, 0)) + Z_y, clamp_min, clamp_max); int32, the high mul rounds half toward +inf, the "
    "divide half away from zero (TFLite's MultiplyByQuantizedMultiplier, two roundings)",
    "tflite_single": "code = clamp(((acc * m0 + 2^(30 - shift)) >> (31 - shift)) + Z_y, clamp_min, clamp_max); "
    "int64 product, one rounding, ties toward +inf (TFLite with TFLITE_SINGLE_ROUNDING)",
    "fp32": "code = clamp(rint(float32(acc) * multiplier) + Z_y, clamp_min, clamp_max); float32 product, "
    "round half to even (PyTorch fbgemm's requantization)",
    "onnx": "code = clamp(rint(float64(acc) * float64(multiplier) + Z_y), clamp_min, clamp_max); float64, "
    "round half to even (ONNX reference QLinearMatMul / QLinearConv)",
    "fbgemm_float_bias": "per-channel weights: raw = float32(acc) + float32(bias / bias_scale); per-tensor "
    "weights: raw = fma(bias, float32(1 / float64(bias_scale)), float32(acc)) (one "
    "rounding); code = clamp(rint(float32(raw * multiplier)) + Z_y, clamp_min, clamp_max), "
    "round half to even, except that a product outside the int32 range gives clamp_min "
    "(PyTorch fbgemm with a float bias; npquant.qnn.fbgemm)",
}

_ADD_FORMULAS = {
    "tflite": "a_i = MBQM((q_i - Z_i) << left_shift, m0[i], shift[i]) for i = 0, 1; code = clamp(MBQM(a_0 + "
    "a_1, m0[2], shift[2]) + Z_y, clamp_min, clamp_max); MBQM is TFLite's "
    "MultiplyByQuantizedMultiplier (two roundings); TFLite's ADD",
    "tflite_single": "as tflite, with MBQM's single rounding (TFLITE_SINGLE_ROUNDING)",
    "torch": "PyTorch's quantized add in float32 (npquant.qnn.add, mode 'torch': blocks of 64 elements through "
    "its vector path, the rest through its scalar path); no integer multipliers",
}


def _qp_json(qp: QParams) -> dict:
    return {
        "scale": float(np.float32(qp.scale)),
        "zero_point": int(qp.zero_point),
        "dtype": np.dtype(qp.spec.dtype).name,
        "qmin": int(qp.spec.qmin),
        "qmax": int(qp.spec.qmax),
    }


def _dtype_name(a: np.ndarray) -> str:
    name = a.dtype.name
    if name not in HEX_DIGITS:
        raise TypeError(f"cannot write a tensor of dtype {name}; vectors hold {', '.join(HEX_DIGITS)}")
    return name


def _layout(a: np.ndarray) -> str:
    return {1: "C", 2: "NC", 4: "NCHW"}.get(a.ndim, f"{a.ndim}-D, C order")


@dataclass
class _Tensor:
    key: str
    array: np.ndarray
    layout: str
    meaning: str


@dataclass
class _Record:
    original: str
    op: str
    cls: str
    info: dict
    tensors: list
    defines: list
    inputs: list | None = None
    outputs: list | None = None
    ident: str = ""


# ---------------------------------------------------------------------------- names


def _ident(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")[:_MAX_IDENT].rstrip("_")
    if not s or not s[0].isalpha():
        s = ("n" + s)[:_MAX_IDENT]
    return s


def _unique_idents(names) -> list:
    """Identifiers of ``names``: sanitized (:func:`_ident`), unique without regard to case."""
    out, seen = [], set()
    for name in names:
        base = s = _ident(name)
        k = 2
        while s.lower() in seen:
            suffix = f"_{k}"
            s = base[: _MAX_IDENT - len(suffix)] + suffix
            k += 1
        seen.add(s.lower())
        out.append(s)
    return out


# ---------------------------------------------------------------------------- records


def _codes_in(x, qp: QParams, what: str) -> np.ndarray:
    """Integer codes of ``qp`` (checked), or float values quantized with ``qp``."""
    a = np.asarray(x)
    if a.dtype.kind == "f":
        return quantize(a, qp)
    check_int_array(a, what, what="float values or integer codes")
    if a.size == 0:
        raise ValueError(f"{what} is empty; a non-empty array is required")
    lo, hi = qp.spec.qmin, qp.spec.qmax
    if a.min() < lo or a.max() > hi:
        raise ValueError(
            f"{what} holds integer codes in [{a.min()}, {a.max()}], outside the input range "
            f"[{lo}, {hi}] of the model's input qparams"
        )
    return a.astype(qp.spec.dtype)


def _io_info(qps_in, qp_out) -> dict:
    info = {}
    if len(qps_in) == 1:
        if qps_in[0] is not None:
            info["input_qparams"] = _qp_json(qps_in[0])
    else:
        info["input_qparams"] = [None if q is None else _qp_json(q) for q in qps_in]
    if qp_out is not None:
        info["output_qparams"] = _qp_json(qp_out)
    return info


def _zp_defines(qps_in, qp_out) -> list:
    out = []
    if len(qps_in) == 1 and qps_in[0] is not None:
        out.append(("INPUT_ZERO_POINT", int(qps_in[0].zero_point)))
    elif len(qps_in) > 1:
        out += [(f"INPUT{i}_ZERO_POINT", int(q.zero_point)) for i, q in enumerate(qps_in) if q is not None]
    if qp_out is not None:
        out.append(("OUTPUT_ZERO_POINT", int(qp_out.zero_point)))
    return out


def _gemm_record(layer, x, y, op: str) -> tuple:
    conv = op == "qconv2d"
    w = np.asarray(layer.w_q)
    o = w.shape[0]
    x_qp, y_qp, w_qp = layer.x_qp, layer.y_qp, layer.w_qp
    per_channel = w_qp.spec.axis is not None
    zw = np.broadcast_to(np.asarray(w_qp.zero_point), (o,)).astype(w.dtype)
    sw = np.broadcast_to(np.asarray(w_qp.scale, np.float32), (o,))
    mode = "fp32" if layer.mode == "fbgemm" else layer.mode  # fbgemm: fp32's multiplier, uses fbgemm_float_bias
    m = np.array(np.broadcast_to(np.asarray(layer.multiplier, np.float64), (o,)))
    m0, shift = quantize_multiplier(m, "single" if mode == "tflite_single" else "double")
    acc = np.asarray(layer.accumulate(x)).astype(np.int32)
    lo, hi = (int(v) for v in layer.out_range)
    float_bias = layer.float_bias is not None
    act = layer.activation
    lay = "NCHW" if conv else _layout(x)
    tensors = [
        _Tensor("input", x, lay, "input codes"),
        _Tensor(
            "weight",
            w,
            "OIHW" if conv else "OI",
            "weight codes (out channels, in channels / groups, kh, kw)"
            if conv
            else "weight codes (out features, in features)",
        ),
        _Tensor("weight_zero_point", zw, "O", "weight zero point of each output channel"),
    ]
    if float_bias:
        s_w = np.asarray(w_qp.scale, np.float32) if per_channel else np.float32(np.asarray(w_qp.scale).ravel()[0])
        ats, _ = fbgemm_multipliers(np.float32(x_qp.scale), s_w, np.float32(y_qp.scale))
        tensors += [
            _Tensor(
                "bias",
                np.asarray(layer.float_bias, np.float32),
                "O",
                "PyTorch's float bias (fbgemm folds it in float32; not in acc)",
            ),
            _Tensor(
                "bias_scale",
                np.broadcast_to(ats, (o,)).astype(np.float32),
                "O",
                "float32(S_x * S_w[o]), fbgemm's act_times_w_scale",
            ),
        ]
        uses = "fbgemm_float_bias"
    else:
        tensors.append(
            _Tensor(
                "bias",
                np.asarray(layer.bias_q, np.int32),
                "O",
                "int32 bias at scale S_x * S_w[o], zero point 0 (included in acc)",
            )
        )
        uses = "m0_shift" if mode.startswith("tflite") else "multiplier"
    tensors += [
        _Tensor("m0", m0, "O", "fixed-point multiplier: M = m0 * 2^(shift - 31)"),
        _Tensor("shift", shift, "O", "exponent of M: a left shift when positive"),
    ]
    if uses != "m0_shift":
        tensors.append(
            _Tensor("multiplier", m.astype(np.float32), "O", "the float32 multiplier M the mode multiplies by")
        )
    tensors += [
        _Tensor("acc", acc, lay, "int32 accumulator" + ("" if float_bias else " including the bias")),
        _Tensor("output", y, lay, "output codes"),
    ]
    geo = None
    defines = [("OUT_CHANNELS", o), ("PER_CHANNEL", int(per_channel)), ("CLAMP_MIN", lo), ("CLAMP_MAX", hi)]
    defines += _zp_defines([x_qp], y_qp)
    if not per_channel:
        defines += [("WEIGHT_ZERO_POINT", int(zw[0])), ("M0", int(m0[0])), ("SHIFT", int(shift[0]))]
    if conv:
        g = layer.geometry
        kh, kw = w.shape[2:]
        geo = {
            "kernel": [kh, kw],
            "stride": list(g.stride),
            "padding": list(g.padding),
            "padding_order": "top, bottom, left, right; padded positions read the input zero point",
            "dilation": list(g.dilation),
            "groups": g.groups,
            "in_channels": w.shape[1] * g.groups,
        }
        defines += [
            ("IN_CHANNELS", w.shape[1] * g.groups),
            ("KERNEL_H", kh),
            ("KERNEL_W", kw),
            ("STRIDE_H", g.stride[0]),
            ("STRIDE_W", g.stride[1]),
            ("PAD_TOP", g.padding[0]),
            ("PAD_BOTTOM", g.padding[1]),
            ("PAD_LEFT", g.padding[2]),
            ("PAD_RIGHT", g.padding[3]),
            ("DILATION_H", g.dilation[0]),
            ("DILATION_W", g.dilation[1]),
            ("GROUPS", g.groups),
        ]
    else:
        defines.append(("IN_FEATURES", w.shape[1]))
    if uses == "fbgemm_float_bias":
        acc_text = "sum over the inputs of (x - Z_x)(w - Z_w[o]), without the bias"
    else:
        acc_text = "bias[o] + sum over the inputs of (x - Z_x)(w - Z_w[o])"
    if layer.saturates_pairs:
        acc_text += (
            "; the product sum saturates int16 pairs of raw-code products (vpmaddubsw) before "
            "the zero-point terms, as npquant.qnn.accumulation documents"
        )
    info = {
        "requantization": {
            "mode": mode,
            "uses": uses,
            "formula": _FORMULAS[uses if float_bias else mode],
            "per_channel": per_channel,
            "real_multiplier": [float(v) for v in m],
        },
        "accumulation": {
            "mode": layer.accumulation,
            "int16_pair_saturation": bool(layer.saturates_pairs),
            "form": layer.form,
            "overflow": layer.overflow,
            "acc": acc_text,
            "acc_includes_bias": not float_bias,
        },
        "activation": list(act) if isinstance(act, tuple) else act,
        "clamp": [lo, hi],
        "zero_points": {
            "input": int(x_qp.zero_point),
            "output": int(y_qp.zero_point),
            "weight": [int(v) for v in zw] if per_channel else int(zw[0]),
        },
        "scales": {
            "input": float(np.float32(x_qp.scale)),
            "output": float(np.float32(y_qp.scale)),
            "weight": [float(v) for v in sw] if per_channel else float(sw[0]),
        },
        **_io_info([x_qp], y_qp),
    }
    if geo is not None:
        info["geometry"] = geo
    return info, tensors, defines


def _pool_record(layer, x, y, op, qp) -> tuple:
    k = check_pair(layer.kernel_size, "kernel_size", lo=1)
    s = check_pair(layer.kernel_size if layer.stride is None else layer.stride, "stride", lo=1)
    p = check_pair(layer.padding, "padding", lo=0)
    pool = {
        "kernel": list(k),
        "stride": list(s),
        "padding": list(p),
        "padding_order": "height, width (each on both sides)",
    }
    defines = [
        ("KERNEL_H", k[0]),
        ("KERNEL_W", k[1]),
        ("STRIDE_H", s[0]),
        ("STRIDE_W", s[1]),
        ("PAD_H", p[0]),
        ("PAD_W", p[1]),
    ]
    if op == "qmaxpool2d":
        pool["rule"] = "the max of the valid positions of each window: padding never wins"
    else:
        pool.update(
            mode=layer.mode,
            count_include_pad=bool(layer.count_include_pad),
            zero_point=int(layer.zero_point),
            rule=(
                "sum of the window's codes / count, rounded "
                + ("half away from zero (TFLite)" if layer.mode == "tflite" else "half to even (PyTorch)")
                + (
                    "; padding counts as the zero point and in count"
                    if layer.count_include_pad
                    else "; count is the number of valid positions"
                )
            ),
        )
        defines += [("COUNT_INCLUDE_PAD", int(layer.count_include_pad)), ("POOL_ZERO_POINT", int(layer.zero_point))]
    info = {"pool": pool, **_io_info([qp], qp)}
    tensors = [_Tensor("input", x, "NCHW", "input codes"), _Tensor("output", y, "NCHW", "output codes")]
    return info, tensors, defines + _zp_defines([qp], qp)


def _simple(x, y, qps_in, qp_out, info=None) -> tuple:
    tensors = [
        _Tensor("input", x, _layout(x), "input codes" if qps_in[0] is not None else "float input"),
        _Tensor("output", y, _layout(y), "output codes" if qp_out is not None else "float output"),
    ]
    return {**(info or {}), **_io_info(qps_in, qp_out)}, tensors, _zp_defines(qps_in, qp_out)


def _add_record(ins, y, qps_in, qp_out, mode, activation) -> tuple:
    layer = ql.QAdd(qps_in[0], qps_in[1], qp_out, mode=mode, activation=activation)
    lo, hi = (int(v) for v in layer.out_range)
    tensors = [_Tensor(f"input{i}", a, _layout(a), f"codes of input {i}") for i, a in enumerate(ins)]
    info = {
        "requantization": {"mode": mode, "formula": _ADD_FORMULAS[mode]},
        "activation": list(activation) if isinstance(activation, tuple) else activation,
        "clamp": [lo, hi],
    }
    defines = [("CLAMP_MIN", lo), ("CLAMP_MAX", hi)]
    if mode != "torch":
        p = tflite_add_params(
            np.float32(qps_in[0].scale),
            np.float32(qps_in[1].scale),
            np.float32(qp_out.scale),
            rounding="double" if mode == "tflite" else "single",
        )
        m0 = np.array([p.input1[0], p.input2[0], p.output[0]], np.int32)
        sh = np.array([p.input1[1], p.input2[1], p.output[1]], np.int32)
        tensors += [
            _Tensor("m0", m0, "3: input0, input1, output", "fixed-point multipliers"),
            _Tensor("shift", sh, "3: input0, input1, output", "their exponents"),
        ]
        info["requantization"]["uses"] = "m0_shift"
        info["requantization"]["left_shift"] = p.left_shift
        defines.append(("LEFT_SHIFT", p.left_shift))
    else:
        info["requantization"]["uses"] = "scales"
    tensors.append(_Tensor("output", y, _layout(y), "output codes"))
    info.update(_io_info(qps_in, qp_out))
    return info, tensors, defines + _zp_defines(qps_in, qp_out)


def _layer_record(layer, ins, y, qps_in, qp_out, op, attrs) -> tuple:
    """``(info, tensors, defines)`` of one layer (graph node) ``op`` on inputs ``ins``."""
    x = ins[0]
    if op in ("qlinear", "qconv2d"):
        return _gemm_record(layer, x, y, op)
    if op in ("qmaxpool2d", "qavgpool2d"):
        return _pool_record(layer, x, y, op, qps_in[0])
    if op == "qrelu":
        lo, hi = (int(v) for v in layer.out_range)
        info, tensors, defines = _simple(
            x, y, qps_in, qp_out, {"activation": layer.activation, "relu_mode": layer.mode, "clamp": [lo, hi]}
        )
        return info, tensors, defines + [("CLAMP_MIN", lo), ("CLAMP_MAX", hi)]
    if op == "qadd":
        if isinstance(layer, ql.QAdd):
            mode, act = layer.mode, layer.activation
        else:
            mode, act = attrs.get("mode", "tflite"), attrs.get("activation")
            act = tuple(act) if isinstance(act, list) else act
        info, tensors, defines = _add_record(ins, y, qps_in, qp_out, mode, act)
        if "memory_format" in attrs:
            info["memory_format"] = attrs["memory_format"]
        return info, tensors, defines
    if op == "qconcat":
        tensors = [_Tensor(f"input{i}", a, _layout(a), f"codes of input {i}") for i, a in enumerate(ins)]
        tensors.append(_Tensor("output", y, _layout(y), "output codes"))
        info = {
            "axis": attrs.get("axis", 1),
            "requantization": {
                "mode": attrs.get("mode", "torch"),
                "uses": "scales",
                "formula": "each input with other qparams than the output: dequantize exactly, then quantize "
                "as torch.quantize_per_tensor (npquant.models.graph, op qconcat)",
            },
            "memory_format": attrs.get("memory_format", "contiguous"),
            **_io_info(qps_in, qp_out),
        }
        return info, tensors, _zp_defines(qps_in, qp_out)
    if op == "quantize":
        return _simple(
            x, y, qps_in, qp_out, {"method": attrs.get("method", "divide"), "rounding": qp_out.spec.rounding}
        )
    if op == "qreshape":
        return _simple(x, y, qps_in, qp_out, {"shape": attrs.get("shape")})
    return _simple(x, y, qps_in, qp_out)  # qflatten, dequantize


_CLASS_OPS = (
    (ql.QLinear, "qlinear"),
    (ql.QConv2d, "qconv2d"),
    (ql.MaxPool2d, "qmaxpool2d"),
    (ql.AvgPool2d, "qavgpool2d"),
    (ql.Flatten, "qflatten"),
    (ql.QReLU, "qrelu"),
)


def _model_op(layer, i: int) -> str:
    for cls, op in _CLASS_OPS:
        if isinstance(layer, cls):
            return op
    raise TypeError(
        f"model.layers[{i}] is a {type(layer).__name__}, which golden vectors do not describe; "
        f"supported: {', '.join(c.__name__ for c, _ in _CLASS_OPS)}"
    )


def _integer_model_records(model: IntegerModel, inputs) -> tuple:
    if isinstance(inputs, (dict, list, tuple)):
        raise TypeError(
            f"inputs of an IntegerModel must be one array (float values or integer codes), got {type(inputs).__name__}"
        )
    x = np.asarray(inputs)
    if x.dtype.kind == "f":
        x = model.quantize_input(x)
    else:
        x = _codes_in(x, model.input_qp, "inputs")
    qp = model.input_qp
    records = []
    for i, layer in enumerate(model.layers):
        op = _model_op(layer, i)
        y = layer(x)
        qp_out = layer.y_qp if op in ("qlinear", "qconv2d") else qp
        info, tensors, defines = _layer_record(layer, [x], y, [qp], qp_out, op, {})
        records.append(_Record(f"layers[{i}]", op, type(layer).__name__, info, tensors, defines))
        x, qp = y, qp_out
    idents = [f"l{i:0{max(2, len(str(len(records) - 1)))}d}_{r.op}" for i, r in enumerate(records)]
    for r, ident in zip(records, idents):
        r.ident = ident
    model_info = {
        "type": "IntegerModel",
        "kind": "integer",
        "mode": model.mode,
        "input_method": model.input_method,
        "input_qparams": _qp_json(model.input_qp),
        "output_qparams": _qp_json(model.output_qp),
    }
    return model_info, records


def _graph_class():
    from .models.graph import Graph

    return Graph


def _graph_feeds(graph, inputs) -> tuple:
    """``(feeds, checks)``: the inputs by name, ready for ``graph.run``; integer codes given
    for a float input (one that ``quantize`` nodes read) are dequantized, and ``checks``
    lists ``(tensor, codes)`` that the run must reproduce."""
    names = graph.inputs
    if isinstance(inputs, dict):
        unknown = [k for k in inputs if k not in names]
        if unknown:
            raise ValueError(f"inputs has {unknown[0]!r}, which is not a graph input ({list(names)})")
        missing = [k for k in names if k not in inputs]
        if missing:
            raise ValueError(f"inputs is missing the graph input {missing[0]!r}")
        given = dict(inputs)
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) != len(names):
            raise ValueError(f"the graph takes {len(names)} input(s) {list(names)}, inputs has {len(inputs)}")
        given = dict(zip(names, inputs))
    else:
        if len(names) != 1:
            raise ValueError(f"the graph takes {len(names)} inputs {list(names)}: pass a dict or a list")
        given = {names[0]: inputs}
    feeds, checks = {}, []
    for t in names:
        a = np.asarray(given[t])
        what = f"inputs[{t!r}]" if len(names) > 1 else "inputs"
        if t in graph.input_qparams:
            feeds[t] = _codes_in(a, graph.input_qparams[t], what)
            continue
        if a.dtype.kind == "f":
            feeds[t] = as_float_array(a, what)  # the graph computes in float32
            continue
        readers = [n for n in graph.nodes if t in n.inputs]
        qps = {}
        for n in readers:
            if n.op != "quantize":
                raise ValueError(
                    f"{what} holds integer codes, but graph input {t!r} is float and node "
                    f"{n.name!r} ({n.op}) reads it: pass float values"
                )
            qps[n.outputs[0]] = graph.qparams[n.outputs[0]]
        first = next(iter(qps.values()), None)
        if first is None or any(_qp_json(q) != _qp_json(first) for q in qps.values()):
            raise ValueError(
                f"{what} holds integer codes, but graph input {t!r} is float and is quantized "
                "with several qparams (or not at all): pass float values"
            )
        codes = _codes_in(a, first, what)
        feeds[t] = dequantize(codes, first)
        checks += [(out, codes) for out in qps]
    return feeds, checks


def _graph_records(graph, inputs) -> tuple:
    if graph.kind != "integer":
        raise ValueError(
            f"model is a {graph.kind} graph; golden vectors are of integer graphs (integer ops "
            "between quantize and dequantize nodes): quantize the model first"
        )
    feeds, checks = _graph_feeds(graph, inputs)
    env = graph.run(feeds, keep_intermediates=True)
    for t, codes in checks:
        if not np.array_equal(env[t], codes):
            raise ValueError(
                f"the integer codes given for the graph's float input do not survive its quantize node "
                f"{t!r} (dequantized and quantized again they change): pass float values"
            )
    records = []
    for n in graph.nodes:
        layer = graph.layer(n.name)
        ins = [np.asarray(env[t]) for t in n.inputs]
        y = np.asarray(env[n.outputs[0]])
        qps_in = [graph.qparams.get(t) for t in n.inputs]
        qp_out = graph.qparams.get(n.outputs[0])
        info, tensors, defines = _layer_record(layer, ins, y, qps_in, qp_out, n.op, dict(n.attrs))
        cls = "function" if isinstance(layer, types.FunctionType) else type(layer).__name__
        records.append(_Record(n.name, n.op, cls, info, tensors, defines, list(n.inputs), list(n.outputs)))
    for r, ident in zip(records, _unique_idents([r.original for r in records])):
        r.ident = ident
    model_info = {
        "type": "Graph",
        "kind": graph.kind,
        "name": graph.name,
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "input_qparams": {k: _qp_json(v) for k, v in graph.input_qparams.items()},
        "output_qparams": {t: _qp_json(graph.qparams[t]) for t in graph.outputs if t in graph.qparams},
    }
    return model_info, records


def _records(model, inputs) -> tuple:
    if isinstance(model, IntegerModel):
        return _integer_model_records(model, inputs)
    if isinstance(model, _graph_class()):
        return _graph_records(model, inputs)
    hint = ": a float model; quantize it with npquant.models.convert.quantize_model first" if callable(model) else ""
    raise TypeError(f"model must be an IntegerModel or an integer Graph, got {type(model).__name__}{hint}")


# ---------------------------------------------------------------------------- formats


def _hex_text(a: np.ndarray, dtype: str, comment: str) -> bytes:
    w = HEX_DIGITS[dtype]
    be = np.ascontiguousarray(a, dtype=_BIG_ENDIAN[dtype]).ravel()
    digits = be.tobytes().hex().encode("ascii")
    body = b"\n".join(np.frombuffer(digits, f"S{w}").tolist())
    return f"// {comment}\n".encode("ascii") + body + b"\n"


def _c_float(v: float) -> str:
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return re.sub(r"\.?0*p", "p", float(v).hex()) + "f"


def _c_literals(a: np.ndarray, dtype: str) -> list:
    flat = a.ravel().tolist()
    if dtype == "float32":
        return [_c_float(v) for v in flat]
    return ["(-2147483647 - 1)" if v == _INT32_MIN else str(v) for v in flat]


def _c_int(v: int) -> str:
    return "(-2147483647 - 1)" if v == _INT32_MIN else f"({v})" if v < 0 else str(v)


def _c_header(records, manifest) -> bytes:
    needs_math = any(
        t.array.dtype == np.float32 and not np.all(np.isfinite(t.array)) for r in records for t in r.tensors
    )
    lines = [
        f"/* {C_HEADER}: golden test vectors written by npquant {__version__} ({FORMAT} version {VERSION}).",
        " * Every array is in C order (row-major, the last index fastest); manifest.json gives each",
        " * layer's layouts, requantization and accumulation. Float arrays hold exact float32",
        " * values (C99 hexadecimal literals). Generated: do not edit. */",
        "#ifndef NPQUANT_VECTORS_H",
        "#define NPQUANT_VECTORS_H",
        "",
        "#include <stdint.h>",
    ]
    if needs_math:
        lines.append("#include <math.h>")
    lines += [
        "",
        "#if defined(__GNUC__)",
        "#define NPQ_VECTORS_UNUSED __attribute__((unused))",
        "#else",
        "#define NPQ_VECTORS_UNUSED",
        "#endif",
        "",
        f"#define NPQ_VECTORS_VERSION {VERSION}",
        f"#define NPQ_VECTORS_LAYERS {len(records)}",
    ]
    for i, r in enumerate(records):
        req = r.info.get("requantization", {})
        what = f"{r.op}" + (f", mode {req['mode']}" if "mode" in req else "")
        if r.original != r.ident:
            what += f", from {r.original!r}"
        lines += ["", f"/* ---- layer {i}: {r.ident} ({_c_comment(what)}) */"]
        up = r.ident.upper()
        lines += [f"#define {up}_{k} {_c_int(v)}" for k, v in r.defines]
        for t in r.tensors:
            dtype = _dtype_name(t.array)
            name = f"{r.ident}_{t.key}"
            dn = name.upper()
            lines.append(f"#define {dn}_NDIM {t.array.ndim}")
            lines += [f"#define {dn}_DIM{d} {n}" for d, n in enumerate(t.array.shape)]
            lines.append(f"#define {dn}_LEN {t.array.size}")
            per_line = 8 if dtype == "float32" else 16
            lits = _c_literals(t.array, dtype)
            lines.append(f"/* {t.key}: {dtype} {list(t.array.shape)} {t.layout}: {_c_comment(t.meaning)} */")
            lines.append(f"static const {C_TYPES[dtype]} {name}[{t.array.size}] NPQ_VECTORS_UNUSED = {{")
            for j in range(0, len(lits), per_line):
                lines.append("    " + ", ".join(lits[j : j + per_line]) + ",")
            lines.append("};")
    lines += ["", "#endif /* NPQUANT_VECTORS_H */", ""]
    return "\n".join(lines).encode("ascii")


def _c_comment(text: str) -> str:
    return str(text).replace("*/", "* /").encode("ascii", "replace").decode("ascii")


def _check_identifiers(records) -> None:
    """Every C identifier is unique (a guard: the suffixes are chosen so that none can clash)."""
    seen = {"NPQ_VECTORS_VERSION", "NPQ_VECTORS_LAYERS", "NPQ_VECTORS_UNUSED", "NPQUANT_VECTORS_H"}
    files = set()
    for r in records:
        names = [f"{r.ident.upper()}_{k}" for k, _ in r.defines]
        for t in r.tensors:
            name = f"{r.ident}_{t.key}"
            if name.lower() in files:
                raise RuntimeError(f"internal error: two tensors are both named {name!r}")
            files.add(name.lower())
            dn = name.upper()
            names += [name, f"{dn}_NDIM", f"{dn}_LEN"] + [f"{dn}_DIM{d}" for d in range(t.array.ndim)]
        for n in names:
            if n in seen:
                raise RuntimeError(f"internal error: the C identifier {n!r} is defined twice")
            seen.add(n)


def _manifest(model_info, records) -> dict:
    layers, files = [], []
    for i, r in enumerate(records):
        tensors = {}
        for t in r.tensors:
            dtype = _dtype_name(t.array)
            name = f"{r.ident}_{t.key}"
            files.append(f"{name}.hex")
            tensors[t.key] = {
                "file": f"{name}.hex",
                "name": name,
                "dtype": dtype,
                "shape": [int(d) for d in t.array.shape],
                "layout": t.layout,
                "hex_digits": HEX_DIGITS[dtype],
                "c_type": C_TYPES[dtype],
                "meaning": t.meaning,
            }
        entry = {"index": i, "name": r.ident, "original_name": r.original, "op": r.op, "class": r.cls}
        if r.inputs is not None:
            entry["input_tensors"], entry["output_tensors"] = r.inputs, r.outputs
        entry.update(r.info)
        entry["defines"] = {f"{r.ident.upper()}_{k}": int(v) for k, v in r.defines}
        entry["tensors"] = tensors
        layers.append(entry)
    return {
        "format": FORMAT,
        "version": VERSION,
        "npquant_version": __version__,
        "model": model_info,
        "byte_order": _BYTE_ORDER,
        "hex": {
            "digits": HEX_DIGITS,
            "order": "C (row-major, the last axis fastest), one value per line",
            "signed": "two's complement in the dtype's width",
            "float32": "IEEE 754 binary32 bit pattern",
            "case": "lowercase, no 0x prefix",
            "comment": "the first line is a // comment ($readmemh skips comments)",
            "line_end": "\\n after every line",
        },
        "c_header": C_HEADER,
        "npz": NPZ,
        "names": {r.original: r.ident for r in records},
        "files": sorted(files) + [C_HEADER, NPZ],
        "layers": layers,
    }


# ---------------------------------------------------------------------------- folders


def _out_dir(
    out_dir, overwrite: bool, marker: str, fmt: str, name: str = "out_dir", flag: str = "overwrite=True"
) -> tuple:
    """``(given, real path, kind)`` after checking ``out_dir``; kind is ``"new"``, ``"empty"``
    or ``"previous"`` (a folder holding only a previous set of ``fmt``). ``name`` and
    ``flag`` are the argument and the option named in messages."""
    given = check_path(out_dir, name)
    overwrite = check_bool(overwrite, "overwrite")
    real = os.path.realpath(given)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name} {given!r}: its parent folder {parent!r} does not exist")
    if not os.path.lexists(real):
        return given, real, "new"
    if not os.path.isdir(real):
        raise NotADirectoryError(f"{name} {given!r} exists and is not a folder")
    entries = sorted(os.listdir(real))
    if not entries:
        return given, real, "empty"
    if not overwrite:
        raise FileExistsError(
            f"{name} {given!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}): "
            f"choose a new or empty folder, or pass {flag} to replace a previous set"
        )
    foreign = _foreign_entries(real, entries, marker, fmt)
    if foreign:
        raise FileExistsError(
            f"{name} {given!r} holds {foreign[0]!r}, which is not part of a previous {fmt} set; "
            f"{flag} replaces only such a set: choose a new or empty folder"
        )
    return given, real, "previous"


def _foreign_entries(real: str, entries, marker: str, fmt: str) -> list:
    if marker not in entries:
        return entries
    try:
        with open(os.path.join(real, marker), "rb") as f:
            head = parse_json(f.read(), marker, os.path.join(real, marker))
        ok = isinstance(head, dict) and head.get("format") == fmt and isinstance(head.get("files"), list)
    except (OSError, ValueError):
        ok = False
    if not ok:
        return [marker]
    listed = {f for f in head["files"] if isinstance(f, str)} | {marker}
    return [
        e
        for e in entries
        if e not in listed or os.path.islink(os.path.join(real, e)) or not os.path.isfile(os.path.join(real, e))
    ]


def _write_folder(given: str, real: str, kind: str, files: dict) -> None:
    """Write ``files`` (name -> bytes) into a temporary folder beside ``real``, then rename it
    to ``real``: a reader sees the old set or the new one, never a part."""
    parent = os.path.dirname(real)
    try:
        tmp = tempfile.mkdtemp(prefix=".npquant-vectors-", dir=parent)
    except OSError as e:
        raise type(e)(f"cannot write out_dir {given!r}: {(e.strerror or str(e)).lower()}") from None
    old = None
    try:
        fmode = 0o666 & ~_umask()
        for name, data in files.items():
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                os.fchmod(f.fileno(), fmode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, (0o777 & ~_umask()) if kind == "new" else (os.stat(real).st_mode & 0o7777))
        if kind == "previous":
            old = tempfile.mkdtemp(prefix=".npquant-old-", dir=parent)
            os.rmdir(old)
            os.rename(real, old)
            try:
                os.rename(tmp, real)
            except BaseException:
                os.rename(old, real)
                old = None
                raise
        else:
            os.rename(tmp, real)  # replaces an empty folder; fails if one appeared meanwhile with files
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")) for k, v in arrays.items()})
    return buf.getvalue()


# ---------------------------------------------------------------------------- public


def write_vectors(
    model: IntegerModel | Graph,
    inputs: npt.ArrayLike | list | dict,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict:
    """Run ``model`` once on ``inputs`` and write the golden test vectors of every layer.

    Parameters
    ----------
    model : IntegerModel or Graph
        An integer model (:class:`npquant.models.convert.IntegerModel`, e.g. from
        :func:`~npquant.models.convert.quantize_model` or :func:`~npquant.models.convert.from_pytorch_ptq`),
        or a :class:`npquant.models.graph.Graph` of kind ``"integer"``. A float model is a
        ``TypeError`` (a float graph a ``ValueError``).
    inputs : array, or for a graph a list or dict of arrays
        Float values, quantized with the model's input qparams (``model.quantize_input``;
        a graph's ``quantize`` nodes or ``input_qparams``), or integer codes of those
        qparams (checked against their range). The batch is the leading axis, as the
        model takes it; every tensor is written for the whole batch.
    out_dir : str or os.PathLike
        The folder to write (the modules docstring lists its files). Its parent must
        exist; the folder must not exist or be empty.
    overwrite : bool
        Replace a folder that holds a previous vector set (its ``manifest.json`` and the
        files it lists, nothing else). A folder holding other files is refused even then.

    Returns
    -------
    dict
        The manifest, as written to ``manifest.json``.

    Raises
    ------
    TypeError
        ``model`` is not an integer model, or ``inputs`` has the wrong type.
    ValueError
        A float or mixed graph; input codes outside the input range.
    FileExistsError
        ``out_dir`` is not empty (and not a previous set with ``overwrite=True``).
    FileNotFoundError, NotADirectoryError
        The parent folder does not exist, or ``out_dir`` is a file.

    Notes
    -----
    Everything is computed first, then written into a temporary folder beside ``out_dir``
    and renamed to it, so that a failure leaves no part of a set behind.
    """
    given, real, kind = _out_dir(out_dir, overwrite, MANIFEST, FORMAT)
    model_info, records = _records(model, inputs)
    _check_identifiers(records)
    manifest = _manifest(model_info, records)
    files, arrays = {}, {}
    for r in records:
        for t in r.tensors:
            dtype = _dtype_name(t.array)
            name = f"{r.ident}_{t.key}"
            comment = (
                f"{FORMAT} {VERSION}: {name} {dtype} shape {list(t.array.shape)} {t.layout}, C order, "
                f"{t.array.size} values of {HEX_DIGITS[dtype]} hex digits"
            )
            files[f"{name}.hex"] = _hex_text(t.array, dtype, comment)
            arrays[name] = t.array
    files[C_HEADER] = _c_header(records, manifest)
    files[NPZ] = _npz_bytes(arrays)
    files[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    _write_folder(given, real, kind, files)
    return manifest


def _expect(cond, where, message) -> None:
    if not cond:
        raise FileFormatError(where, message)


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a vector set written by :func:`write_vectors`, checked.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder of the set.

    Returns
    -------
    dict
        The parsed ``manifest.json``: format, version, model and the layers in execution
        order, each with its ``tensors`` (file, dtype, shape, layout).

    Raises
    ------
    OSError
        The folder or its manifest is missing or unreadable.
    FileFormatError
        The manifest is not valid JSON of this format and version, or a tensor entry
        has an unsafe file name, an unknown dtype or an invalid shape.
    """
    folder = check_path(out_dir, "out_dir")
    where = os.path.join(folder, MANIFEST)
    m = parse_json(read_bytes(where), "the manifest", where)
    _expect(isinstance(m, dict), where, "the manifest must be a JSON object")
    _expect(m.get("format") == FORMAT, where, f"format must be {FORMAT!r}, got {m.get('format')!r}")
    v = m.get("version")
    _expect(type(v) is int and v >= 1, where, f"version must be a positive integer, got {v!r}")
    _expect(v <= VERSION, where, f"vector set version {v} is newer than this npquant reads ({VERSION})")
    _expect(isinstance(m.get("layers"), list), where, "layers must be a list")
    files, names = set(), set()
    for i, layer in enumerate(m["layers"]):
        _expect(isinstance(layer, dict), where, f"layers[{i}] must be an object")
        name = layer.get("name")
        _expect(
            isinstance(name, str) and _IDENT.fullmatch(name) is not None,
            where,
            f"layers[{i}].name must be an identifier (letters, digits, _), got {name!r}",
        )
        _expect(name not in names, where, f"layer name {name!r} appears twice")
        names.add(name)
        tensors = layer.get("tensors")
        _expect(isinstance(tensors, dict) and tensors, where, f"layer {name!r}: tensors must be a non-empty object")
        for key, t in tensors.items():
            what = f"layer {name!r}, tensor {key!r}"
            _expect(isinstance(t, dict), where, f"{what} must be an object")
            f = t.get("file")
            _expect(
                isinstance(f, str) and _HEX_FILE.fullmatch(f) is not None,
                where,
                f"{what}: file must be a plain .hex file name in the folder, got {f!r}",
            )
            _expect(f.lower() not in files, where, f"{what}: file {f!r} is listed twice")
            files.add(f.lower())
            _expect(
                t.get("dtype") in HEX_DIGITS,
                where,
                f"{what}: dtype must be one of {', '.join(HEX_DIGITS)}, got {t.get('dtype')!r}",
            )
            shape = t.get("shape")
            _expect(
                isinstance(shape, list) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape),
                where,
                f"{what}: shape must be a list of at most 32 sizes, got {shape!r}",
            )
            _expect(math.prod(shape) <= _MAX_ELEMENTS, where, f"{what}: shape {shape} has too many elements")
    return m


def _parse_hex(data: bytes, dtype: str, shape, where) -> np.ndarray:
    """The array of a ``.hex`` file: lines of exactly ``HEX_DIGITS[dtype]`` hex digits, and
    ``//`` comment lines; CRLF line ends and a missing final newline are accepted."""
    w = HEX_DIGITS[dtype]
    count = math.prod(shape)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        bad_line = data[: e.start].count(b"\n") + 1
        raise FileFormatError(where, f"line {bad_line}: not ASCII text") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    value = re.compile(f"[0-9A-Fa-f]{{{w}}}")
    digits = []
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.startswith("//"):
            continue
        if value.fullmatch(line) is None:
            if re.fullmatch(r"[0-9A-Fa-f]+", line):
                if len(line) > w and int(line, 16) >= 1 << (4 * w):
                    raise FileFormatError(
                        where,
                        f"line {lineno}: value {line!r} is out of range for {dtype} ({w} hex digits, 0 to {'f' * w})",
                    )
                raise FileFormatError(
                    where, f"line {lineno}: {line!r} has {len(line)} hex digits; {dtype} values have exactly {w}"
                )
            raise FileFormatError(
                where,
                f"line {lineno}: malformed line {line[:40]!r}: expected {w} hex digits "
                f"(one {dtype} value) or a // comment",
            )
        if len(digits) == count:
            raise FileFormatError(where, f"line {lineno}: more than the {count} values of shape {list(shape)}")
        digits.append(line)
    if len(digits) != count:
        raise FileFormatError(
            where, f"line {lineno + 1}: the file ends after {len(digits)} values; shape {list(shape)} needs {count}"
        )
    arr = np.frombuffer(bytes.fromhex("".join(digits)), _BIG_ENDIAN[dtype]).astype(dtype)
    return arr.reshape(shape)


def read_vectors(out_dir: str | os.PathLike) -> dict:
    """Read a vector set back from its manifest and ``.hex`` files, strictly.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder written by :func:`write_vectors`.

    Returns
    -------
    dict of str to dict of str to numpy.ndarray
        ``{layer name: {tensor: array}}`` in execution order (the manifest's layer names
        and tensor keys); each array has the manifest's dtype (``int8``, ``uint8``,
        ``int16``, ``uint16``, ``int32`` or ``float32``, native byte order) and shape.

    Raises
    ------
    OSError
        A file is missing or unreadable.
    FileFormatError
        The manifest is invalid (:func:`read_manifest`), or a ``.hex`` file has a
        malformed line, a value out of range for its dtype (more digits than the dtype
        holds) or another number of values than its shape: the message names the file and
        the line.
    """
    m = read_manifest(out_dir)
    folder = check_path(out_dir, "out_dir")
    out = {}
    for layer in m["layers"]:
        arrays = {}
        for key, t in layer["tensors"].items():
            path = os.path.join(folder, t["file"])
            arrays[key] = _parse_hex(read_bytes(path), t["dtype"], t["shape"], path)
        out[layer["name"]] = arrays
    return out


# ---------------------------------------------------------------------------- intermediates


def _float_model_tensors(model, x) -> tuple:
    h = as_float_array(x, "inputs")
    names, arrays, producers = ["input"], [h], [None]
    for i, layer in enumerate(model):
        h = layer(h)
        name = getattr(layer, "name", None) or f"layers[{i}]"
        names.append(name)
        arrays.append(np.asarray(h))
        producers.append(name)
    return {"type": type(model).__name__}, names, arrays, producers, [None] * len(names)


def write_intermediates(
    model: nn.Sequential | IntegerModel | Graph,
    inputs: npt.ArrayLike | list | dict,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict:
    """Run ``model`` on ``inputs`` and write every intermediate tensor as an ``.npy`` file.

    Parameters
    ----------
    model : nn.Sequential, IntegerModel or Graph
        A float model (:class:`npquant.models.nn.Sequential`: its input and each top-level
        layer's output), an :class:`~npquant.models.convert.IntegerModel` (the input, its codes
        and each layer's output codes) or a :class:`~npquant.models.graph.Graph` of any kind
        (every tensor, ``graph.run(..., keep_intermediates=True)``).
    inputs : array, or for a graph a list or dict of arrays
        As the model takes them (float values or integer codes; see :func:`write_vectors`).
    out_dir : str or os.PathLike
        A new or empty folder (its parent must exist).
    overwrite : bool
        Replace a folder that holds a previous set of intermediates and nothing else.

    Returns
    -------
    dict
        The index written as ``tensors.json``: ``format`` (:data:`TENSORS_FORMAT`),
        ``version``, ``model``, ``files`` and ``tensors``, a list in execution order of
        ``{"index", "name", "file", "dtype", "shape", "qparams", "producer"}`` (``qparams``
        ``{"scale", "zero_point", ...}`` of integer codes, else None; ``producer`` the
        layer or node that computed it, None for inputs). File names are
        ``<index>_<name>.npy`` with the name reduced to a safe identifier.
    """
    from .models.nn import Sequential

    given, real, kind = _out_dir(out_dir, overwrite, TENSORS_INDEX, TENSORS_FORMAT)
    if isinstance(model, IntegerModel):
        x = np.asarray(inputs)
        names, arrays, producers = ["input"], [x], [None]
        qps = [model.input_qp if x.dtype.kind in "iu" else None]
        if x.dtype.kind == "f":
            x = model.quantize_input(x)
            names.append("input_codes")
            arrays.append(x)
            producers.append("quantize_input")
            qps.append(model.input_qp)
        else:
            x = _codes_in(x, model.input_qp, "inputs")
        qp = model.input_qp
        width = max(2, len(str(len(model.layers) - 1)))
        for i, layer in enumerate(model.layers):
            op = _model_op(layer, i)
            x = layer(x)
            qp = layer.y_qp if op in ("qlinear", "qconv2d") else qp
            names.append(f"l{i:0{width}d}_{op}")
            arrays.append(x)
            producers.append(f"layers[{i}]")
            qps.append(qp)
        info = {"type": "IntegerModel", "mode": model.mode}
    elif isinstance(model, _graph_class()):
        feeds, _ = _graph_feeds(model, inputs) if model.kind == "integer" else (inputs, None)
        env = model.run(feeds, keep_intermediates=True)
        producer = {t: n.name for n in model.nodes for t in n.outputs}
        names = list(env)
        arrays = [np.asarray(env[t]) for t in names]
        producers = [producer.get(t) for t in names]
        qps = [model.qparams.get(t) for t in names]
        info = {"type": "Graph", "name": model.name, "kind": model.kind}
    elif isinstance(model, Sequential):
        info, names, arrays, producers, qps = _float_model_tensors(model, inputs)
    else:
        raise TypeError(f"model must be an nn.Sequential, an IntegerModel or a Graph, got {type(model).__name__}")
    width = max(2, len(str(len(names) - 1)))
    files, entries = {}, []
    for i, (name, ident, a, prod, qp) in enumerate(zip(names, _unique_idents(names), arrays, producers, qps)):
        fname = f"{i:0{width}d}_{ident}.npy"
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        files[fname] = buf.getvalue()
        entries.append(
            {
                "index": i,
                "name": name,
                "file": fname,
                "dtype": a.dtype.name,
                "shape": [int(d) for d in a.shape],
                "qparams": None if qp is None else _qp_json(qp),
                "producer": prod,
            }
        )
    index = {
        "format": TENSORS_FORMAT,
        "version": VERSION,
        "npquant_version": __version__,
        "model": info,
        "files": sorted(files),
        "tensors": entries,
    }
    files[TENSORS_INDEX] = (json.dumps(index, indent=1) + "\n").encode("utf-8")
    _write_folder(given, real, kind, files)
    return index
