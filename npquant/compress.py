"""The Deep Compression pipeline (Han, Mao and Dally, ICLR 2016) and its file.

For every weight tensor of a state dict (2-D fully connected, 4-D conv): magnitude
pruning, k-means weight sharing of the survivors, relative (gap) indexing of their
positions, and Huffman coding of both the k-means indices and the gaps. Other tensors
(biases) are stored as raw float32. Defaults follow the paper: 8-bit codebooks and
8-bit gaps for conv, 5 and 5 for fully connected layers.

File format (version 2), all integers little-endian::

    offset  size  field
    0       4     magic b"NPQZ"
    4       2     version (2; version 1 is read too)
    6       2     reserved (0, checked)
    8       4     header length H
    12      H     header: UTF-8 JSON (below)
    12+H    4     CRC-32 of the header bytes
    16+H    ...   body: the blobs, in the order and at the offsets the header lists

The header is ``{"format": "npquant-deep-compression", "tensors": [...]}``; each tensor
has ``name``, ``kind`` (``"compressed"`` or ``"raw"``), ``shape``, ``crc`` (CRC-32 of the
rebuilt tensor's little-endian float32 bytes, which catches a header whose shape or
counts disagree with its streams) and ``blobs``: a map from blob name to
``[offset, length, crc32]`` relative to the body start. A compressed
tensor has ``bits``, ``index_bits``, ``nnz``, ``entries`` (non-zeros plus fillers) and the
blobs ``codebook`` (float32 ``2^bits``, entry 0 is 0.0), ``values`` and ``gaps``
(self-describing Huffman blobs of :func:`npquant.huffman.encode`). A raw tensor has the
blob ``data`` (float32). The blobs tile the body exactly, in order, without overlap.

Version 2 adds one rule: the relative-index stream covers the tensor to within
``2^index_bits - 1`` elements of its end (filler entries bridge a longer run of trailing
zeros), so a tensor's size is bounded by the streams present, and a reader checks it
before allocating. Version 1 files are read when they satisfy the rule (files whose
last non-zero weight sits further from the end must be written again).

Readers check the header (size, JSON nesting, duplicate names, reserved bytes), every
blob's place and CRC, and every declared size against the bytes present, before
decoding anything; a file is written to a temporary name and renamed, so it is never
half-written.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import huffman
from ._checks import check_int
from ._fileio import MAX_JSON_BYTES, FileFormatError, atomic_write, check_path, parse_json, read_bytes
from ._table import format_table
from .kmeans import kmeans_quantize, reconstruct
from .prune import decode_relative, encode_relative, magnitude_mask, prune

MAGIC = b"NPQZ"
VERSION = 2
#: Versions :func:`read_compressed` reads.
READ_VERSIONS = (1, 2)
FORMAT = "npquant-deep-compression"
_PREAMBLE = struct.Struct("<4sHHI")


@dataclass(frozen=True)
class LayerConfig:
    """How one weight tensor is compressed: prune by ``sparsity`` (fraction removed) or by
    ``quality`` (``|w| < quality * std(w)``), ``bits`` of k-means codebook, ``index_bits``
    of the relative position gaps."""

    sparsity: float | None = None
    quality: float | None = None
    bits: int = 5
    index_bits: int = 5


def default_config(w: np.ndarray, *, sparsity=None, quality=None) -> LayerConfig:
    """The paper's defaults: conv (4-D) 8-bit codebook and gaps, fully connected 5 and 5."""
    conv = np.ndim(w) == 4
    return LayerConfig(sparsity=sparsity, quality=quality, bits=8 if conv else 5,
                       index_bits=8 if conv else 5)


@dataclass
class LayerReport:
    name: str
    shape: tuple
    params: int
    nnz: int
    entries: int
    bits: int
    index_bits: int
    codebook_bytes: int
    values_bytes: int
    gaps_bytes: int
    huffman_bits_per_weight: float

    @property
    def compressed_bytes(self) -> int:
        return self.codebook_bytes + self.values_bytes + self.gaps_bytes


@dataclass
class Compressed:
    """A compressed state dict in memory: the file's header and body, the per-layer
    report, and the pruned, quantized weights the file rebuilds."""

    header: dict
    body: bytes
    reports: list = field(default_factory=list)
    rebuilt: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        h = json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return (_PREAMBLE.pack(MAGIC, VERSION, 0, len(h)) + h + struct.pack("<I", zlib.crc32(h))
                + self.body)


def _blob(body: list, offset: int, data: bytes) -> tuple[list, int]:
    body.append(data)
    return [offset, len(data), zlib.crc32(data)], offset + len(data)


def compress(state: dict, configs: dict | None = None, *, sparsity=None, quality=None, seed: int = 0,
             kmeans_init: str = "linear") -> Compressed:
    """Compress a state dict (name -> float array).

    Tensors of 2 or 4 dimensions are pruned, k-means quantized and Huffman coded with
    ``configs[name]`` (a :class:`LayerConfig`) or :func:`default_config` with the given
    ``sparsity``/``quality``; other tensors are stored raw (float32). The result's
    ``rebuilt`` dict holds exactly the float32 weights that :func:`read_compressed` returns.
    """
    if not isinstance(state, dict) or not state:
        raise ValueError("state must be a non-empty dict of name -> array")
    configs = {} if configs is None else dict(configs)
    unknown = set(configs) - set(state)
    if unknown:
        raise ValueError(f"configs name tensors that are not in state: {sorted(unknown)}")
    tensors, body, reports, rebuilt = [], [], [], {}
    offset = 0
    for name, value in state.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        w = np.asarray(value)
        if w.dtype.kind != "f":
            raise TypeError(f"state[{name!r}] must be a float array, got dtype {w.dtype}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"state[{name!r}] contains NaN or infinity")
        w = w.astype(np.float32)
        entry = {"name": name, "shape": list(w.shape)}
        if w.ndim in (2, 4) and w.size > 0:
            cfg = configs.get(name) or default_config(w, sparsity=sparsity, quality=quality)
            blobs, rep, w_hat = _compress_tensor(name, w, cfg, seed, kmeans_init, body, offset)
            offset = sum(b[1] for b in blobs.values()) + offset
            entry.update(kind="compressed", bits=cfg.bits, index_bits=cfg.index_bits, nnz=rep.nnz,
                         entries=rep.entries, blobs=blobs)
            reports.append(rep)
            rebuilt[name] = w_hat
        else:
            meta, offset = _blob(body, offset, w.astype("<f4").tobytes())
            entry.update(kind="raw", blobs={"data": meta})
            rebuilt[name] = w
        entry["crc"] = zlib.crc32(rebuilt[name].astype("<f4").tobytes())
        tensors.append(entry)
    header = {"format": FORMAT, "tensors": tensors}
    return Compressed(header=header, body=b"".join(body), reports=reports, rebuilt=rebuilt)


def _compress_tensor(name, w, cfg: LayerConfig, seed, init, body, offset):
    check_int(cfg.bits, f"bits of {name}", lo=1, hi=8)
    check_int(cfg.index_bits, f"index_bits of {name}", lo=1, hi=8)
    if cfg.sparsity is None and cfg.quality is None:
        mask = np.ones(w.shape, bool)
    else:
        mask = magnitude_mask(w, sparsity=cfg.sparsity, quality=cfg.quality)
    w_p = prune(w, mask)
    nnz = int(np.count_nonzero(w_p))
    res = kmeans_quantize(w_p, cfg.bits, init=init, seed=seed, keep_zeros=True)
    w_hat = reconstruct(res)
    rs = encode_relative(res.indices, cfg.index_bits, filler=0)
    rs_gaps, rs_values = _cover_tail(np.asarray(rs.gaps), np.asarray(rs.values), w.size, cfg.index_bits)
    codebook = np.asarray(res.codebook, "<f4").tobytes()
    values = huffman.encode(rs_values, alphabet_size=1 << cfg.bits)
    gaps = huffman.encode(rs_gaps, alphabet_size=1 << cfg.index_bits)
    blobs = {}
    for key, data in (("codebook", codebook), ("values", values), ("gaps", gaps)):
        blobs[key], offset = _blob(body, offset, data)
    entries = int(len(rs_values))
    rep = LayerReport(name=name, shape=tuple(w.shape), params=int(w.size), nnz=nnz, entries=entries,
                      bits=cfg.bits, index_bits=cfg.index_bits, codebook_bytes=len(codebook),
                      values_bytes=len(values), gaps_bytes=len(gaps),
                      huffman_bits_per_weight=8.0 * (len(values) + len(gaps)) / max(nnz, 1))
    return blobs, rep, w_hat


def _last_position(gaps: np.ndarray) -> int:
    """Flat position of the last relative-index entry (-1 when there is none)."""
    return int(gaps.sum(dtype=np.int64)) if gaps.size else -1


def _cover_tail(gaps: np.ndarray, values: np.ndarray, size: int, index_bits: int):
    """Append filler entries (gap ``2^b - 1``, value 0) until at most ``2^b - 1``
    elements follow the last entry: the rule of format version 2."""
    top = (1 << index_bits) - 1
    last = _last_position(gaps)
    tail = size - 1 - last
    if tail <= top:
        return gaps, values
    # Fillers land at start + top, start + 2*top, ... (a first entry's gap counts from 0).
    start = max(last, 0)
    n = max(1, -(-(size - 1 - start - top) // top))
    fill_gaps = np.full(n, top, gaps.dtype)
    return np.concatenate([gaps, fill_gaps]), np.concatenate([values, np.zeros(n, values.dtype)])


def write_compressed(compressed: Compressed, path) -> int:
    """Write the file atomically (temporary name in the same folder, then rename; see
    :func:`npquant.io.atomic_write` for permissions and symbolic links); returns its size
    in bytes."""
    if not isinstance(compressed, Compressed):
        raise TypeError(f"compressed must be the Compressed result of compress(), got {type(compressed).__name__}")
    check_path(path)
    data = compressed.to_bytes()
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def read_compressed(source, *, where: str | None = None) -> dict:
    """Rebuild the float32 tensors (name -> array) from a compressed file or its bytes.

    ``source``: a path (``str`` or ``os.PathLike``) or the file's bytes (``bytes``,
    ``bytearray``, ``memoryview``); ``where`` names the file in messages. Everything is
    checked before anything is decoded: magic, version, reserved bytes, the header's
    size, CRC, nesting and names (each once), each blob's place (the blobs tile the body)
    and CRC, and each tensor's size against its streams. A wrong or corrupt file is a
    :class:`~npquant.io.FileFormatError` (``ValueError``) saying what was expected.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), where or "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = check_path(source, "source")
        data, where = read_bytes(path), where or path
    else:
        raise TypeError(f"source must be a path (str or os.PathLike) or the file's bytes, got {type(source).__name__}")
    version, header, body = _parse_preamble(data, where)
    tensors = _check_layout(header, body, where)
    out = {}
    for t, parts in tensors:
        out[t["name"]] = _rebuild(t, parts, where, version)
        if zlib.crc32(out[t["name"]].astype("<f4").tobytes()) != t["crc"]:
            raise FileFormatError(where, f"tensor {t['name']!r} does not rebuild to the checksum its header records")
    return out


def _parse_preamble(data: bytes, where):
    if len(data) < _PREAMBLE.size + 4:
        raise FileFormatError(where, f"not an npquant compressed file: {len(data)} bytes, shorter than the "
                                     f"{_PREAMBLE.size + 4}-byte preamble")
    magic, version, reserved, hlen = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FileFormatError(where, f"not an npquant compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version not in READ_VERSIONS:
        raise FileFormatError(where, f"unsupported compressed-file version {version}; this npquant reads "
                                     f"versions {', '.join(map(str, READ_VERSIONS))}")
    if reserved != 0:
        raise FileFormatError(where, f"corrupt preamble: reserved field is {reserved}, expected 0")
    start = _PREAMBLE.size
    if hlen > MAX_JSON_BYTES:
        raise FileFormatError(where, f"corrupt preamble: a {hlen}-byte header is larger than {MAX_JSON_BYTES}")
    if start + hlen + 4 > len(data):
        raise FileFormatError(where, f"truncated file: the header needs {hlen} + 4 bytes, {len(data) - start} remain")
    hbytes = data[start:start + hlen]
    (crc,) = struct.unpack_from("<I", data, start + hlen)
    if zlib.crc32(hbytes) != crc:
        raise FileFormatError(where, "corrupt header: CRC-32 mismatch")
    header = parse_json(hbytes, "the header", where)
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("tensors"), list):
        raise FileFormatError(where, f"corrupt header: expected format {FORMAT!r} with a list of tensors")
    return version, header, data[start + hlen + 4:]


def _is_uint(v, hi=None) -> bool:
    return type(v) is int and v >= 0 and (hi is None or v <= hi)


def _check_layout(header: dict, body: bytes, where) -> list:
    """Every tensor entry and blob checked (names once, blobs tiling the body, CRCs),
    before anything is decoded; returns ``[(entry, {blob: bytes})]``."""
    seen, spans, out = set(), [], []
    for i, t in enumerate(header["tensors"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("kind") not in ("compressed", "raw"):
            raise FileFormatError(where, f"corrupt header: tensor entry {i} needs a name and a kind "
                                         "('compressed' or 'raw')")
        name = t["name"]
        if name in seen:
            raise FileFormatError(where, f"corrupt header: the tensor {name!r} appears twice")
        seen.add(name)
        shape = t.get("shape")
        if not isinstance(shape, list) or len(shape) > 32 or not all(_is_uint(d) for d in shape):
            raise FileFormatError(where, f"corrupt header: bad shape for {name!r}")
        if not _is_uint(t.get("crc"), 0xFFFFFFFF):
            raise FileFormatError(where, f"corrupt header: tensor {name!r} has no valid crc")
        blobs = t.get("blobs")
        need = {"codebook", "values", "gaps"} if t["kind"] == "compressed" else {"data"}
        if not isinstance(blobs, dict) or set(blobs) != need or not all(
                isinstance(v, list) and len(v) == 3 and all(_is_uint(e) for e in v) for v in blobs.values()):
            raise FileFormatError(where, f"corrupt header: tensor {name!r} needs blobs {sorted(need)} "
                                         "of [offset, length, crc32]")
        if t["kind"] == "compressed":
            bits, ibits, entries = t.get("bits"), t.get("index_bits"), t.get("entries")
            if not (_is_uint(bits, 8) and bits >= 1 and _is_uint(ibits, 8) and ibits >= 1 and _is_uint(entries)):
                raise FileFormatError(where, f"corrupt header: bits/index_bits/entries of {name!r} out of range")
        parts = {}
        for key, (off, length, bcrc) in blobs.items():
            if off + length > len(body):
                raise FileFormatError(where, f"truncated body: blob {name}/{key} needs bytes [{off}, {off + length}), "
                                             f"the body has {len(body)}")
            spans.append((off, off + length, f"{name}/{key}"))
            parts[key] = body[off:off + length]  # a slice of bytes: the data is present
        out.append((t, parts, blobs))
    spans.sort()
    pos = 0
    for a, b, label in spans:
        if a != pos:
            raise FileFormatError(where, f"corrupt header: blob {label} starts at {a}, expected {pos} "
                                         "(blobs must tile the body without overlap or gap)")
        pos = b
    if pos != len(body):
        raise FileFormatError(where, f"corrupt file: the blobs account for {pos} body bytes, the body has {len(body)}")
    for t, parts, blobs in out:
        for key, chunk in parts.items():
            if zlib.crc32(chunk) != blobs[key][2]:
                raise FileFormatError(where, f"corrupt body: CRC-32 mismatch in blob {t['name']}/{key}")
    return [(t, parts) for t, parts, _ in out]


def _rebuild(t: dict, parts: dict, where, version: int) -> np.ndarray:
    name, shape = t["name"], tuple(t["shape"])
    size = 1
    for d in shape:
        size *= d
    if t["kind"] == "raw":
        if len(parts["data"]) != 4 * size:
            raise FileFormatError(where, f"corrupt body: raw tensor {name!r} has {len(parts['data'])} bytes, "
                                         f"shape {shape} needs {4 * size}")
        return np.frombuffer(parts["data"], "<f4").astype(np.float32).reshape(shape)
    bits, ibits = t["bits"], t["index_bits"]
    if len(parts["codebook"]) != 4 * (1 << bits):
        raise FileFormatError(where, f"corrupt body: codebook of {name!r} has {len(parts['codebook'])} bytes, "
                                     f"{bits} bits need {4 << bits}")
    codebook = np.frombuffer(parts["codebook"], "<f4").astype(np.float32)
    try:
        values = huffman.decode(parts["values"])  # sized by its own bytes
        gaps = huffman.decode(parts["gaps"])
    except ValueError as e:
        raise FileFormatError(where, f"corrupt body: a stream of {name!r} does not decode ({e})") from None
    if values.size != t["entries"] or gaps.size != values.size:
        raise FileFormatError(where, f"corrupt body: {name!r} decodes {values.size} values and {gaps.size} gaps, "
                                     f"the header says {t['entries']}")
    if values.size and int(values.max()) >= (1 << bits):
        raise FileFormatError(where, f"corrupt body: {name!r} has a k-means index beyond its {bits}-bit codebook")
    if gaps.size and int(gaps.max()) >= (1 << ibits):
        raise FileFormatError(where, f"corrupt body: {name!r} has a gap beyond its {ibits}-bit index")
    # The streams bound the tensor: at most 2^ibits - 1 elements follow the last entry.
    tail = size - 1 - _last_position(gaps)
    if tail < 0:
        raise FileFormatError(where, f"corrupt body: the entries of {name!r} run past its {size} elements")
    if tail > (1 << ibits) - 1:
        hint = " (a version-1 file: write it again with this npquant)" if version == 1 else ""
        raise FileFormatError(where, f"corrupt header: shape {shape} of {name!r} reaches {tail} elements past "
                                     f"its last entry; at most {(1 << ibits) - 1} may follow{hint}")
    try:
        indices = decode_relative(gaps, values, shape, ibits)
    except ValueError as e:
        raise FileFormatError(where, f"corrupt body: {name!r} does not decode ({e})") from None
    return codebook[indices.astype(np.int64)].reshape(shape)


def format_report(compressed: Compressed, file_size: int) -> str:
    """The per-layer table and the total ratio against float32 bytes of every tensor."""
    rows = []
    for r in compressed.reports:
        rows.append([r.name, "x".join(map(str, r.shape)), str(r.params), f"{r.nnz} ({100 * r.nnz / r.params:.1f}%)",
                     str(r.bits), str(r.index_bits), str(r.codebook_bytes),
                     f"{r.huffman_bits_per_weight:.2f}", str(r.compressed_bytes),
                     f"{4 * r.params / r.compressed_bytes:.1f}x"])
    table = format_table(["layer", "shape", "params", "non-zeros", "w bits", "idx bits", "codebook B",
                          "Huffman bits/nz", "compressed B", "ratio"], rows)
    original = sum(4 * int(np.prod(v.shape)) for v in compressed.rebuilt.values())
    w_orig = sum(4 * r.params for r in compressed.reports)
    w_comp = sum(r.compressed_bytes for r in compressed.reports)
    w_line = (f"\nweight tensors alone: {w_orig} float32 bytes -> {w_comp} bytes of codebooks and Huffman "
              f"streams, {w_orig / w_comp:.1f}x" if w_comp else "")
    return (f"{table}\n\nfloat32 size of all tensors: {original} bytes; compressed file: {file_size} bytes "
            f"(header and raw biases included); ratio {original / file_size:.1f}x{w_line}")


def kmeans_study(state: dict, evaluate, bits=(8, 4, 2), *, seed: int = 0) -> list[dict]:
    """k-means weight sharing of every 2-D/4-D tensor at each bit width (no pruning): the
    model size (float32 codebooks, indices packed at ``b`` bits, other tensors raw
    float32) and ``evaluate(weights)`` of the reconstructed weights.

    Returns one dict per bit width: ``bits``, ``bytes``, ``ratio`` (float32 bytes /
    bytes), ``score`` (what ``evaluate`` returns, e.g. test accuracy).
    """
    from .packing import pack_bits

    original = sum(4 * np.asarray(v).size for v in state.values())
    rows = []
    for b in bits:
        b = check_int(b, "bits", lo=1, hi=8)
        size, weights = 0, {}
        for name, v in state.items():
            w = np.asarray(v, np.float32)
            if w.ndim in (2, 4) and w.size:
                res = kmeans_quantize(w, b, seed=seed, keep_zeros=False)
                weights[name] = reconstruct(res)
                size += 4 * len(res.codebook) + len(pack_bits(res.indices, b))
            else:
                weights[name] = w
                size += 4 * w.size
        rows.append({"bits": b, "bytes": size, "ratio": original / size, "score": evaluate(weights)})
    return rows
