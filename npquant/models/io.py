"""Loading and saving weights: state dicts as ``.npz`` or ``.safetensors``, any model file
npquant ships or writes (:func:`load_weights`), and the bundled reference models.

Every reader goes through :mod:`npquant._fileio`: a file is untrusted, every size it
declares is checked against the bytes present before anything is allocated, and a
corrupt, truncated or mislabelled file is a :class:`FileFormatError` (a ``ValueError``)
naming the file and what was expected. A missing or unreadable file is the system's
``OSError``. ``.safetensors`` goes through the ``safetensors`` package (the format's
reference implementation); its JSON header is first checked here for size, nesting and
duplicate names, which that package does not refuse. Files are written atomically (see
:func:`atomic_write`).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._fileio import FileFormatError, atomic_write, check_path, parse_json, parse_npz, read_bytes, read_npz

if TYPE_CHECKING:
    from .nn import Sequential

__all__ = [
    "FileFormatError",
    "Reference",
    "atomic_write",
    "load_model",
    "load_reference",
    "load_state_dict",
    "load_weights",
    "read_safetensors",
    "save_state_dict",
    "sniff_format",
    "write_safetensors",
]

#: numpy dtype -> safetensors dtype name, for the dtypes npquant writes and reads.
_ST_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}
_ST_NUMPY = {v: k for k, v in _ST_NAMES.items()}
_ST_DTYPES = frozenset(_ST_NUMPY)
_FORMATS = ("npz", "safetensors")


def sniff_format(data: bytes) -> str | None:
    """The format of a file from its first bytes: ``"npz"`` (a zip archive),
    ``"npqz"`` (an npquant compressed file), ``"safetensors"`` (a length then a JSON
    object), or ``None``.

    Parameters
    ----------
    data : bytes
        The file's bytes (the first 10 are enough).

    Returns
    -------
    str or None
        ``"npz"``, ``"npqz"``, ``"safetensors"`` or ``None``.
    """
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if data[:4] == b"NPQZ":
        return "npqz"
    if len(data) >= 10 and data[8:9] == b"{":
        return "safetensors"
    return None


def _format(path, fmt):
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        fmt = {".npz": "npz", ".safetensors": "safetensors"}.get(ext)
        if fmt is None:
            raise ValueError(f"cannot tell the format of {path!r}: use .npz or .safetensors, or format=")
    if fmt not in _FORMATS:
        raise ValueError(f"format must be 'npz' or 'safetensors', got {fmt!r}")
    return fmt


def load_state_dict(path: str | os.PathLike, *, format: str | None = None) -> dict:
    """``{name: ndarray}`` from a ``.npz`` or ``.safetensors`` file.

    Arrays keep their stored dtype and shape. A file whose content is not the format is a
    :class:`FileFormatError` saying what it looks like.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    format : ``"npz"``, ``"safetensors"`` or None, default None
        Keyword-only; ``None`` tells the format from the extension.

    Returns
    -------
    dict of str to numpy.ndarray
        The arrays by name.
    """
    p = check_path(path)
    fmt = _format(p, format)
    data = read_bytes(p)
    found = sniff_format(data)
    if found != fmt:
        what = {
            "npz": "an .npz (zip) file",
            "safetensors": "a .safetensors file",
            "npqz": "an npquant compressed file (read it with npquant.compression.pipeline.read_compressed)",
            None: f"no known format (it starts with {data[:8]!r})",
        }[found]
        raise FileFormatError(p, f"expected {'an .npz (zip)' if fmt == 'npz' else 'a .safetensors'} file, found {what}")
    return parse_npz(data, p) if fmt == "npz" else read_safetensors(data, where=p)


def save_state_dict(path: str | os.PathLike, state: dict, *, format: str | None = None) -> None:
    """Write ``{name: array}`` as ``.npz`` or ``.safetensors`` (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    state : dict of str to array
        The arrays, by non-empty names.
    format : ``"npz"``, ``"safetensors"`` or None, default None
        Keyword-only; ``None`` tells the format from the extension.
    """
    p = check_path(path)
    fmt = _format(p, format)
    if not isinstance(state, dict) or not all(isinstance(k, str) and k for k in state):
        raise ValueError("state must be a dict with non-empty string keys")
    arrays = {k: np.asarray(v) for k, v in state.items()}
    if fmt == "npz":
        for k, a in arrays.items():
            if a.dtype.hasobject:
                raise TypeError(f"state[{k!r}] has dtype object, which .npz cannot hold without pickle")
        atomic_write(p, lambda f: np.savez(f, **arrays))
    else:
        data = write_safetensors(arrays)
        atomic_write(p, lambda f: f.write(data))


def write_safetensors(state: dict, metadata: dict | None = None) -> bytes:
    """The safetensors bytes of ``{name: array}`` (little-endian, C order), written by the
    ``safetensors`` package. Dtypes: bool, (u)int8..64, float16/32/64; anything else is a
    ``TypeError`` naming the tensor.

    Parameters
    ----------
    state : dict of str to array
        The tensors, by non-empty names other than ``"__metadata__"``.
    metadata : dict or None, default None
        Stored as the ``__metadata__`` of string keys and values (converted with ``str``).

    Returns
    -------
    bytes
        The file's contents.
    """
    from safetensors.numpy import save

    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
    arrays = {}
    for name, v in state.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"state keys must be non-empty strings other than '__metadata__', got {name!r}")
        a = np.asarray(v)
        if a.dtype.name not in _ST_NAMES:
            raise TypeError(f"state[{name!r}] has dtype {a.dtype}, which safetensors cannot hold here")
        arrays[name] = np.array(a, dtype=a.dtype.newbyteorder("<"), order="C")
    meta = None if not metadata else {str(k): str(v) for k, v in metadata.items()}
    return save(arrays, metadata=meta)


def read_safetensors(data: bytes | bytearray | memoryview, *, where: str = "<bytes>") -> dict:
    """``{name: ndarray}`` from the bytes of a safetensors file (``where`` names it in
    messages). The header must be a JSON object of at most 64 MiB with no duplicate
    name; dtypes as :func:`write_safetensors`; the tensors must tile the buffer exactly.
    Anything else is a :class:`FileFormatError`.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The file's bytes.
    where : str, default ``"<bytes>"``
        Keyword-only; names the file in messages.

    Returns
    -------
    dict of str to numpy.ndarray
        The tensors, in the header's order.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"data must be the file's bytes (bytes, bytearray or memoryview), got "
            f"{type(data).__name__}; to read a file, use load_state_dict(path)"
        )
    data = bytes(data)
    if len(data) < 8:
        raise FileFormatError(
            where, f"not a safetensors file: {len(data)} bytes, shorter than the 8-byte header length"
        )
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        raise FileFormatError(where, f"truncated safetensors file: the header needs {n} bytes, {len(data) - 8} remain")
    header = parse_json(data[8 : 8 + n], "the safetensors header", where)
    if not isinstance(header, dict):
        raise FileFormatError(where, "the safetensors header must be a JSON object")
    buf_len, spans = len(data) - 8 - n, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info.get("dtype") if isinstance(info, dict) else None
        if dt not in _ST_DTYPES:
            raise FileFormatError(
                where,
                f"safetensors entry {name!r}: unsupported or missing dtype "
                f"{str(dt)[:40]!r}; expected one of {sorted(_ST_DTYPES)}",
            )
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)):
            raise FileFormatError(where, f"safetensors entry {name!r}: shape {str(shape)[:60]} is not a list of sizes")
        if not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(type(o) is int for o in offs)
            and 0 <= offs[0] <= offs[1] <= buf_len
        ):
            raise FileFormatError(
                where, f"safetensors entry {name!r}: data_offsets {str(offs)[:60]} outside the {buf_len}-byte buffer"
            )
        nbytes = np.dtype(_ST_NUMPY[dt]).itemsize * math.prod(shape)
        if offs[1] - offs[0] != nbytes:
            raise FileFormatError(
                where,
                f"safetensors entry {name!r}: {offs[1] - offs[0]} bytes for shape {shape} of {dt} ({nbytes} bytes)",
            )
        spans.append((offs[0], offs[1], name))
    pos = 0
    for a, b, name in sorted(spans):
        if a != pos:
            raise FileFormatError(
                where, f"safetensors entry {name!r} starts at byte {a}, expected {pos}: tensors overlap or leave holes"
            )
        pos = b
    if pos != buf_len:
        raise FileFormatError(where, f"corrupt safetensors buffer: {buf_len - pos} trailing bytes")
    try:
        out = load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, OverflowError) as e:
        msg = str(e).replace("Error while deserializing header: ", "")
        raise FileFormatError(where, f"corrupt safetensors file ({msg})") from None
    return {k: out[k] for k in header if k != "__metadata__"}


def load_weights(path: str | os.PathLike) -> dict:
    """``{name: ndarray}`` of any model file npquant ships or writes, told by its content:

    - a state dict (``.npz`` or ``.safetensors``): its arrays;
    - a reference model (``.npz`` with ``__arch__``): its state dict (the test arrays left out);
    - a quantized checkpoint (:mod:`npquant.models.checkpoint`): the dequantized float32 weights;
    - a Deep Compression file (:mod:`npquant.compression.pipeline`): the rebuilt float32 weights.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of str to numpy.ndarray
        The weights by name.
    """
    p = check_path(path)
    data = read_bytes(p)
    fmt = sniff_format(data)
    if fmt == "npqz":
        from ..compression.pipeline import read_compressed

        return read_compressed(data, where=p)
    if fmt == "safetensors":
        return read_safetensors(data, where=p)
    if fmt != "npz":
        raise FileFormatError(
            p,
            f"not a model file: expected an .npz, .safetensors or npquant compressed "
            f"(NPQZ) file, it starts with {data[:8]!r}",
        )
    arrays = parse_npz(data, p)
    if "__format__" in arrays:
        from .checkpoint import dequantize_checkpoint

        return dequantize_checkpoint(arrays, p)
    if "__arch__" in arrays:
        return _reference(arrays, p).state
    return arrays


@dataclass
class Reference:
    """A reference model file: ``arch`` (dict), ``state`` (the state-dict entries the
    architecture names) and ``arrays`` (everything else: test inputs, labels, logits...)."""

    arch: dict
    state: dict
    arrays: dict
    meta: dict


def load_reference(path: str | os.PathLike) -> Reference:
    """Read a reference model file (an ``.npz`` with ``__arch__``; see
    ``reference_models/README.md``).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    Reference
        The architecture, state dict, other arrays and metadata.
    """
    p = check_path(path)
    return _reference(read_npz(p), p)


def _json_entry(data: dict, key: str, where) -> object:
    a = data.pop(key)
    if a.ndim != 0 or a.dtype.kind != "U":
        raise FileFormatError(
            where, f"{key!r} must be a JSON string (0-d text array), found {a.dtype} of shape {a.shape}"
        )
    return parse_json(str(a), f"{key!r}", where)


def _reference(data: dict, where) -> Reference:
    from .nn import expected_keys
    from .registry import read_arch

    data = dict(data)
    arch = read_arch(data, where)
    del data["__arch__"]
    meta = _json_entry(data, "__meta__", where) if "__meta__" in data else {}
    if not isinstance(meta, dict):
        raise FileFormatError(where, "'__meta__' must be a JSON object")
    keys = expected_keys(arch)
    state = {k: v for k, v in data.items() if k in keys}
    arrays = {k: v for k, v in data.items() if k not in keys}
    return Reference(arch=arch, state=state, arrays=arrays, meta=meta)


def load_model(path: str | os.PathLike) -> Sequential:
    """The float NumPy model (:class:`npquant.models.nn.Sequential`) of a reference ``.npz``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    npquant.models.nn.Sequential
        The model, built by :func:`npquant.models.nn.build_model`.
    """
    from .nn import build_model

    ref = load_reference(path)
    return build_model(ref.arch, ref.state)
