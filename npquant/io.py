"""Loading and saving weights: state dicts as ``.npz`` or ``.safetensors``, and the
reference models of ``reference_models/``.

The safetensors format is read and written here directly (it is small: a little-endian
uint64 header length, a JSON header mapping each name to ``dtype``, ``shape`` and
``data_offsets`` into the byte buffer that follows), so npquant needs no extra package.
Every length, offset and dtype is validated; files are written to a temporary name and
renamed.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass

import numpy as np

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
_ST_NAMES = {np.dtype(v).str.lstrip("<|"): k for k, v in _ST_DTYPES.items()}


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it to
    ``path``: a reader never sees a half-written file, and a failure leaves no temporary."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".npquant-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _format(path, fmt):
    if fmt is None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        fmt = {".npz": "npz", ".safetensors": "safetensors"}.get(ext)
        if fmt is None:
            raise ValueError(f"cannot tell the format of {os.fspath(path)!r}: use .npz or .safetensors, or format=")
    if fmt not in ("npz", "safetensors"):
        raise ValueError(f"format must be 'npz' or 'safetensors', got {fmt!r}")
    return fmt


def load_state_dict(path, *, format: str | None = None) -> dict:
    """``{name: ndarray}`` from a ``.npz`` or ``.safetensors`` file."""
    fmt = _format(path, format)
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise ValueError(f"{os.fspath(path)!r} is not a readable .npz file ({e})") from None
    with open(path, "rb") as f:
        return read_safetensors(f.read())


def save_state_dict(path, state: dict, *, format: str | None = None) -> None:
    """Write ``{name: array}`` as ``.npz`` or ``.safetensors`` (atomically)."""
    fmt = _format(path, format)
    if not isinstance(state, dict) or not all(isinstance(k, str) and k for k in state):
        raise ValueError("state must be a dict with non-empty string keys")
    arrays = {k: np.asarray(v) for k, v in state.items()}
    if fmt == "npz":
        atomic_write(path, lambda f: np.savez(f, **arrays))
    else:
        data = write_safetensors(arrays)
        atomic_write(path, lambda f: f.write(data))


def write_safetensors(state: dict, metadata: dict | None = None) -> bytes:
    """The safetensors bytes of ``{name: array}`` (little-endian, C order)."""
    header, chunks, offset = {}, [], 0
    for name, a in state.items():
        a = np.asarray(a)  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        key = a.dtype.str.lstrip("<|=>")
        if key not in _ST_NAMES or (a.dtype.byteorder == ">"):
            raise TypeError(f"state[{name!r}] has dtype {a.dtype}, which safetensors cannot hold here")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_NAMES[key], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)  # align the buffer to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def read_safetensors(data: bytes) -> dict:
    """``{name: ndarray}`` from safetensors bytes; every field is checked."""
    if len(data) < 8:
        raise ValueError(f"not a safetensors file: {len(data)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        raise ValueError(f"truncated safetensors file: the header needs {n} bytes, {len(data) - 8} remain")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt safetensors header: not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("corrupt safetensors header: expected a JSON object")
    buf = memoryview(data)[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
            raise ValueError(f"safetensors entry {name!r}: unsupported or missing dtype {info!r:.60}")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ValueError(f"safetensors entry {name!r}: bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1] <= len(buf)):
            raise ValueError(f"safetensors entry {name!r}: data_offsets {offs!r} outside the {len(buf)}-byte buffer")
        dt = np.dtype(_ST_DTYPES[info["dtype"]])
        if offs[1] - offs[0] != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"safetensors entry {name!r}: {offs[1] - offs[0]} bytes for shape {shape} of {info['dtype']}")
        out[name] = np.frombuffer(buf[offs[0]:offs[1]], dt).reshape(shape).astype(dt.newbyteorder("="))
        spans.append(tuple(offs))
    spans.sort()
    pos = 0
    for a, b in spans:
        if a != pos:
            raise ValueError("corrupt safetensors buffer: tensors overlap or leave holes")
        pos = b
    if pos != len(buf):
        raise ValueError(f"corrupt safetensors buffer: {len(buf) - pos} trailing bytes")
    return out


@dataclass
class Reference:
    """A reference model file: ``arch`` (dict), ``state`` (the state-dict entries the
    architecture names) and ``arrays`` (everything else: test inputs, labels, logits...)."""

    arch: dict
    state: dict
    arrays: dict
    meta: dict


def load_reference(path) -> Reference:
    """Read a ``reference_models/*.npz`` file (see ``reference_models/README.md``)."""
    from .nn import expected_keys

    data = load_state_dict(path, format="npz")
    if "__arch__" not in data:
        raise ValueError(f"{os.fspath(path)!r} has no '__arch__' entry: not a reference model file")
    try:
        arch = json.loads(str(data.pop("__arch__")))
    except json.JSONDecodeError as e:
        raise ValueError(f"'__arch__' of {os.fspath(path)!r} is not JSON ({e})") from None
    meta = json.loads(str(data.pop("__meta__"))) if "__meta__" in data else {}
    keys = expected_keys(arch)
    state = {k: v for k, v in data.items() if k in keys}
    arrays = {k: v for k, v in data.items() if k not in keys}
    return Reference(arch=arch, state=state, arrays=arrays, meta=meta)


def load_model(path):
    """The float NumPy model (:class:`npquant.nn.Sequential`) of a reference ``.npz``."""
    from .nn import build_model

    ref = load_reference(path)
    return build_model(ref.arch, ref.state)
