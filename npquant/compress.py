"""The Deep Compression pipeline (Han, Mao and Dally, ICLR 2016) and its file.

For every weight tensor of a state dict (2-D fully connected, 4-D conv): magnitude
pruning, k-means weight sharing of the survivors, relative (gap) indexing of their
positions, and Huffman coding of both the k-means indices and the gaps. Other tensors
(biases) are stored as raw float32. Defaults follow the paper: 8-bit codebooks and
8-bit gaps for conv, 5 and 5 for fully connected layers.

File format (version 1), all integers little-endian::

    offset  size  field
    0       4     magic b"NPQZ"
    4       2     version (1)
    6       2     reserved (0)
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
blob ``data`` (float32). The body must be exactly the sum of the blob lengths. Readers
check every length, offset and CRC before decoding; a file is written to a temporary
name and renamed, so it is never half-written.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import huffman
from ._checks import check_int
from ._table import format_table
from .io import atomic_write
from .kmeans import kmeans_quantize, reconstruct
from .prune import decode_relative, encode_relative, magnitude_mask, prune

MAGIC = b"NPQZ"
VERSION = 1
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
    codebook = np.asarray(res.codebook, "<f4").tobytes()
    values = huffman.encode(np.asarray(rs.values), alphabet_size=1 << cfg.bits)
    gaps = huffman.encode(np.asarray(rs.gaps), alphabet_size=1 << cfg.index_bits)
    blobs = {}
    for key, data in (("codebook", codebook), ("values", values), ("gaps", gaps)):
        blobs[key], offset = _blob(body, offset, data)
    entries = int(len(rs.values))
    rep = LayerReport(name=name, shape=tuple(w.shape), params=int(w.size), nnz=nnz, entries=entries,
                      bits=cfg.bits, index_bits=cfg.index_bits, codebook_bytes=len(codebook),
                      values_bytes=len(values), gaps_bytes=len(gaps),
                      huffman_bits_per_weight=8.0 * (len(values) + len(gaps)) / max(nnz, 1))
    return blobs, rep, w_hat


def write_compressed(compressed: Compressed, path) -> int:
    """Write the file atomically (temporary name in the same folder, then rename);
    returns its size in bytes."""
    data = compressed.to_bytes()
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def read_compressed(source) -> dict:
    """Rebuild the float32 tensors (name -> array) from a compressed file or its bytes.

    Every field is validated; a wrong magic or version, a truncated or corrupt header
    or body, or a stream that does not decode to its tensor is a ``ValueError`` that
    says what was expected.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read(source)
    if len(data) < _PREAMBLE.size + 4:
        raise ValueError(f"not an npquant compressed file: {len(data)} bytes, shorter than the "
                         f"{_PREAMBLE.size + 4}-byte preamble")
    magic, version, _, hlen = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not an npquant compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"unsupported compressed-file version {version}; this npquant reads version {VERSION}")
    start = _PREAMBLE.size
    if start + hlen + 4 > len(data):
        raise ValueError(f"truncated file: the header needs {hlen} + 4 bytes, {len(data) - start} remain")
    hbytes = data[start:start + hlen]
    (crc,) = struct.unpack_from("<I", data, start + hlen)
    if zlib.crc32(hbytes) != crc:
        raise ValueError("corrupt header: CRC-32 mismatch")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt header: not UTF-8 JSON ({e})") from None
    body = data[start + hlen + 4:]
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("tensors"), list):
        raise ValueError(f"corrupt header: expected format {FORMAT!r} with a list of tensors")
    total = 0
    out = {}
    for t in header["tensors"]:
        name, blobs = _tensor_meta(t)
        parts = {}
        for key, (off, length, bcrc) in blobs.items():
            if off < 0 or length < 0 or off + length > len(body):
                raise ValueError(f"truncated body: blob {name}/{key} needs bytes [{off}, {off + length}), "
                                 f"the body has {len(body)}")
            chunk = body[off:off + length]
            if zlib.crc32(chunk) != bcrc:
                raise ValueError(f"corrupt body: CRC-32 mismatch in blob {name}/{key}")
            parts[key] = chunk
            total += length
        out[name] = _rebuild(t, parts)
        if zlib.crc32(out[name].astype("<f4").tobytes()) != t.get("crc"):
            raise ValueError(f"corrupt file: tensor {name!r} does not rebuild to the checksum its header records")
    if total != len(body):
        raise ValueError(f"corrupt file: the blobs account for {total} body bytes, the body has {len(body)}")
    return out


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tensor_meta(t):
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("kind") not in ("compressed", "raw"):
        raise ValueError(f"corrupt header: bad tensor entry {str(t)[:80]}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"corrupt header: bad shape for {t['name']!r}")
    blobs = t.get("blobs")
    need = {"codebook", "values", "gaps"} if t["kind"] == "compressed" else {"data"}
    if not isinstance(blobs, dict) or set(blobs) != need or not all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(e, int) for e in v) for v in blobs.values()):
        raise ValueError(f"corrupt header: tensor {t['name']!r} needs blobs {sorted(need)}")
    return t["name"], blobs


def _rebuild(t: dict, parts: dict) -> np.ndarray:
    name, shape = t["name"], tuple(t["shape"])
    size = int(np.prod(shape)) if shape else 1
    if t["kind"] == "raw":
        if len(parts["data"]) != 4 * size:
            raise ValueError(f"corrupt body: raw tensor {name!r} has {len(parts['data'])} bytes, "
                             f"shape {shape} needs {4 * size}")
        return np.frombuffer(parts["data"], "<f4").astype(np.float32).reshape(shape)
    bits, ibits = t.get("bits"), t.get("index_bits")
    if not (isinstance(bits, int) and 1 <= bits <= 8 and isinstance(ibits, int) and 1 <= ibits <= 8):
        raise ValueError(f"corrupt header: bits/index_bits of {name!r} out of range")
    if len(parts["codebook"]) != 4 * (1 << bits):
        raise ValueError(f"corrupt body: codebook of {name!r} has {len(parts['codebook'])} bytes, "
                         f"{bits} bits need {4 << bits}")
    codebook = np.frombuffer(parts["codebook"], "<f4").astype(np.float32)
    values = huffman.decode(parts["values"])
    gaps = huffman.decode(parts["gaps"])
    if values.size != t.get("entries") or gaps.size != values.size:
        raise ValueError(f"corrupt body: {name!r} decodes {values.size} values and {gaps.size} gaps, "
                         f"the header says {t.get('entries')}")
    if values.size and int(values.max()) >= (1 << bits):
        raise ValueError(f"corrupt body: {name!r} has a k-means index beyond its {bits}-bit codebook")
    indices = decode_relative(gaps, values, shape, ibits)
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
