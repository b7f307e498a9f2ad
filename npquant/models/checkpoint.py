"""Quantized checkpoints: every weight matrix and conv kernel of a state dict quantized
with one :class:`~npquant.qparams.QuantSpec`, stored bit-packed with its qparams.

File (an ``.npz``): for a quantized tensor ``name``: ``name.codes`` (uint8, the codes
packed LSB-first at ``bits`` bits, signed codes as two's complement), ``name.scale``
(float32), ``name.zero_point`` (int32), ``name.shape`` (int64) and ``name.spec`` (JSON of
the QuantSpec); any other tensor is stored as is under ``name``. ``__format__`` names the
format and version. :func:`load_quantized` returns the dequantized float32 weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from .._fileio import FileFormatError, atomic_write, check_path, parse_json, read_npz
from ..affine import dequantize, quantization_error, quantize
from ..compression.packing import from_unsigned, pack_bits, to_unsigned, unpack_bits
from ..qparams import QParams, QuantSpec, fit_qparams
from .registry import quantized_storage

FORMAT = "npquant-quantized-checkpoint/1"


@dataclass
class TensorReport:
    """One quantized tensor of :func:`quantize_checkpoint`: its ``name`` and ``shape``, its
    ``float_bytes`` (4 per element), its ``quantized_bytes`` (packed codes, float32 scales
    and, for an asymmetric spec, 4-byte zero points: :func:`npquant.models.registry.quantized_storage`)
    and the ``sqnr_db`` of its dequantized values."""

    name: str
    shape: tuple
    float_bytes: int
    quantized_bytes: int
    sqnr_db: float


def quantize_checkpoint(state: dict, spec: QuantSpec) -> tuple[dict, list]:
    """Quantize every 2-D and 4-D float tensor of ``state`` with ``spec`` (its ``axis``
    applies to each tensor: ``0`` per output channel, ``1`` with ``block_size`` per group
    of inputs). Returns ``(arrays to save, per-tensor reports)``.

    Parameters
    ----------
    state : dict of str to array
        The tensors, non-empty; non-empty float tensors of 2 or 4 dimensions are
        quantized, the others stored as they are.
    spec : QuantSpec
        The quantization of every such tensor, 1..8 bits (the codes are bit-packed).

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        The entries of the file (module docstring), for :func:`save_quantized`.
    reports : list of TensorReport
        One per quantized tensor.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not isinstance(state, dict) or not state:
        raise ValueError("state must be a non-empty dict of name -> array")
    out, reports = {"__format__": np.array(FORMAT)}, []
    for name, v in state.items():
        a = np.asarray(v)
        if a.ndim in (2, 4) and a.dtype.kind == "f" and a.size:
            qp = fit_qparams(a, spec)
            q = quantize(a, qp)
            u = to_unsigned(q, spec.bits, signed="twos") if spec.signed else q
            packed = pack_bits(u, spec.bits)
            out[f"{name}.codes"] = packed
            out[f"{name}.scale"] = np.asarray(qp.scale, np.float32)
            out[f"{name}.zero_point"] = np.asarray(qp.zero_point, np.int32)
            out[f"{name}.shape"] = np.asarray(a.shape, np.int64)
            out[f"{name}.spec"] = np.array(json.dumps(asdict(spec)))
            # the registry's counting rule: codes packed at bits, float32 scales, int32 zero points
            qbytes = quantized_storage(a.size, qp, packed=True, zero_point_bytes=0 if spec.symmetric else 4).total
            err = quantization_error(a, dequantize(q, qp))
            reports.append(TensorReport(name, a.shape, 4 * a.size, qbytes, err.sqnr_db))
        else:
            out[name] = a
    return out, reports


def save_quantized(path: str | os.PathLike, arrays: dict) -> None:
    """Write the arrays of :func:`quantize_checkpoint` as an ``.npz`` (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    arrays : dict
        The first result of :func:`quantize_checkpoint`.
    """
    if not isinstance(arrays, dict) or str(arrays.get("__format__", "")) != FORMAT:
        raise TypeError("arrays must be the first result of quantize_checkpoint (a dict with '__format__')")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_quantized(path: str | os.PathLike) -> dict:
    """The dequantized float32 tensors (and the untouched ones) of a quantized checkpoint.

    The file is read through :mod:`npquant.models.io`'s
    checks (each member's size and CRC-32); then every quantized tensor must have its five
    entries, a valid spec, exactly the packed bytes its shape needs and qparams that fit
    it, and no plain entry may share its name. Otherwise a
    :class:`~npquant.models.io.FileFormatError` (``ValueError``) names the file and the tensor.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.

    Returns
    -------
    dict of str to numpy.ndarray
        The dequantized float32 tensors and the untouched ones, by name.
    """
    p = check_path(path)
    return dequantize_checkpoint(read_npz(p), p)


_PARTS = ("codes", "scale", "zero_point", "shape", "spec")


def dequantize_checkpoint(arrays: dict, where: str | os.PathLike = "<arrays>") -> dict:
    """:func:`load_quantized` of the arrays already read from a file named ``where``.

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
        The file's entries.
    where : str, default ``"<arrays>"``
        Names the file in messages.

    Returns
    -------
    dict of str to numpy.ndarray
        As :func:`load_quantized`.
    """
    data = dict(arrays)
    fmt = data.pop("__format__", None)
    if fmt is None or fmt.ndim != 0 or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        raise FileFormatError(where, f"not a quantized checkpoint: expected '__format__' = {FORMAT!r}")
    names = [k[: -len(".spec")] for k in data if k.endswith(".spec")]
    out = {}
    for name in names:
        if name in data:
            raise FileFormatError(where, f"{name!r} is stored both as a quantized tensor and as a plain entry")
        missing = [f"{name}.{part}" for part in _PARTS if f"{name}.{part}" not in data]
        if missing:
            raise FileFormatError(where, f"quantized tensor {name!r} is missing its {missing[0]!r} entry")
        parts = {part: data.pop(f"{name}.{part}") for part in _PARTS}
        out[name] = _dequantize_entry(name, parts, where)
    out.update(data)
    return out


def _dequantize_entry(name: str, parts: dict, where) -> np.ndarray:
    spec_text = parts["spec"]
    if spec_text.ndim != 0 or spec_text.dtype.kind != "U":
        raise FileFormatError(where, f"{name}.spec must be a JSON string")
    fields = parse_json(str(spec_text), f"{name}.spec", where)
    try:
        spec = QuantSpec(**fields) if isinstance(fields, dict) else None
    except (TypeError, ValueError) as e:
        raise FileFormatError(where, f"{name}.spec is not a valid QuantSpec ({e})") from None
    if spec is None or spec.bits > 8:
        raise FileFormatError(where, f"{name}.spec must describe a QuantSpec of 1..8 bits")
    shape_a, codes = parts["shape"], parts["codes"]
    if shape_a.ndim != 1 or shape_a.dtype.kind not in "iu" or shape_a.size > 32 or np.any(shape_a < 0):
        raise FileFormatError(where, f"{name}.shape must be a 1-D array of at most 32 non-negative sizes")
    shape = tuple(int(d) for d in shape_a)
    count = 1
    for d in shape:
        count *= d
    need = (count * spec.bits + 7) // 8
    if codes.dtype != np.uint8 or codes.ndim != 1 or codes.size != need:
        raise FileFormatError(
            where,
            f"{name}.codes must be {need} uint8 bytes ({count} codes of {spec.bits} "
            f"bits), found {codes.dtype} of shape {codes.shape}",
        )
    try:
        u = unpack_bits(codes, spec.bits, count)
        q = from_unsigned(u, spec.bits, signed="twos") if spec.signed else u
        qp = QParams(parts["scale"], parts["zero_point"], spec)
        return dequantize(q.astype(spec.dtype).reshape(shape), qp)
    except (TypeError, ValueError) as e:
        raise FileFormatError(where, f"quantized tensor {name!r} does not decode ({e})") from None
