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
from dataclasses import asdict, dataclass

import numpy as np

from .io import atomic_write
from .linear import dequantize, quantization_error, quantize
from .packing import from_unsigned, pack_bits, to_unsigned, unpack_bits
from .qparams import QParams, QuantSpec, fit_qparams

FORMAT = "npquant-quantized-checkpoint/1"


@dataclass
class TensorReport:
    name: str
    shape: tuple
    float_bytes: int
    quantized_bytes: int
    sqnr_db: float


def quantize_checkpoint(state: dict, spec: QuantSpec) -> tuple[dict, list]:
    """Quantize every 2-D and 4-D float tensor of ``state`` with ``spec`` (its ``axis``
    applies to each tensor: ``0`` per output channel, ``1`` with ``block_size`` per group
    of inputs). Returns ``(arrays to save, per-tensor reports)``."""
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
            qbytes = packed.nbytes + 4 * qp.scale.size + (0 if spec.symmetric else 4 * qp.zero_point.size)
            err = quantization_error(a, dequantize(q, qp))
            reports.append(TensorReport(name, a.shape, 4 * a.size, qbytes, err.sqnr_db))
        else:
            out[name] = a
    return out, reports


def save_quantized(path, arrays: dict) -> None:
    """Write the arrays of :func:`quantize_checkpoint` as an ``.npz`` (atomically)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_quantized(path) -> dict:
    """The dequantized float32 tensors (and the untouched ones) of a quantized checkpoint."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if str(data.pop("__format__", "")) != FORMAT:
        raise ValueError(f"{path!s} is not a quantized checkpoint of format {FORMAT!r}")
    names = {k[: -len(".spec")] for k in data if k.endswith(".spec")}
    out = {}
    for name in names:
        try:
            spec = QuantSpec(**json.loads(str(data.pop(f"{name}.spec"))))
            shape = tuple(int(d) for d in data.pop(f"{name}.shape"))
            codes = data.pop(f"{name}.codes")
            scale, zp = data.pop(f"{name}.scale"), data.pop(f"{name}.zero_point")
        except KeyError as e:
            raise ValueError(f"quantized tensor {name!r} is missing its {e.args[0]!r} entry") from None
        u = unpack_bits(codes, spec.bits, int(np.prod(shape)))
        q = from_unsigned(u, spec.bits, signed="twos") if spec.signed else u
        out[name] = dequantize(q.astype(spec.dtype).reshape(shape), QParams(scale, zp, spec))
    out.update(data)
    return out
