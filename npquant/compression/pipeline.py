"""The Deep Compression pipeline (Han, Mao and Dally, ICLR 2016) and its file.

For every weight tensor of a state dict (2-D fully connected, 4-D conv): magnitude
pruning, k-means weight sharing of the survivors, relative (gap) indexing of their
positions, and Huffman coding of both the k-means indices and the gaps. Other tensors
(biases) are stored exactly, or with their own small k-means codebook when asked
(``bias_bits``, lossy: :attr:`Compressed.rebuilt` holds what the file rebuilds). Defaults
follow the paper: 8-bit codebooks and 8-bit gaps for conv, 5 and 5 for fully connected
layers. :func:`stage_sizes` gives the paper's per-stage sizes (after pruning, after
quantization, after Huffman coding: the real file).

File format, version 3
----------------------
What :func:`write_compressed` writes. Integers are little-endian; ``v`` is an unsigned
LEB128 varint (7 bits a byte, low first, at most 10 bytes, no redundant last byte 0)::

    size  field
    4     magic b"NPQZ"
    2     version (3)
    v     file size: every byte of the file, this field and the final CRC included
    v     number of tensors T
    ...   T tensor records (below), in the order of the state dict
    4     CRC-32 of the rebuilt tensors: for each, in record order, its ndim and dimensions
          (varints, as in its record) and its little-endian float32 bytes
    ...   body: the sections of every tensor, in record order; they tile it exactly
    4     CRC-32 (zlib.crc32) of every byte before it

    tensor record
    v     name length, then the name: UTF-8, non-empty, each name once
    1     kind byte: bits 0-1 the kind (0, 1, 2), bits 2-7 its flags (below)
    v     ndim (0..32), then each dimension (v)
    kind 0  float32       (flags 0)          sections: data, 4 * size bytes (float32)
    kind 1  float split   v exponents length sections: exponents, mantissas
            flags: bit 2 = sign bits stored; bits 3-7 = t (0..23), low mantissa bits
            dropped (zero in every value)
    kind 2  k-means       v codebook length, v values length, and when sparse:
                          v entries (gap symbols), v gaps length
            flags: bit 2 sparse, bit 3 transposed scan, bit 4 reserved zero, bit 5 rows
            skipped, bit 6 columns skipped, bit 7 zero
                                             sections: codebook, values, [gaps]

Sections hold bit fields MSB first (as the Huffman streams), each padded with zero bits
to a whole byte; ``gamma(x)`` (x >= 1) is Elias gamma: ``bit_length(x) - 1`` zero bits,
then x in ``bit_length(x)`` bits::

    codebook   2 bits coding, gamma(n + 1) stored centroids n, then
               0: n float32 (32 bits each)   1: n float16 (16 bits each, used when every
               centroid is exactly a float16)   2: sorted keys: the first key (32 bits), k
               (5 bits), and n - 1 key differences d, each gamma((d >> k) + 1) then its
               low k bits; key(x) = bits(x) | 2^31 for a clear sign bit, ~bits(x)
               otherwise (ascending with x). The writer keeps the smallest that applies.
    values     length table (alphabet: n + 1 with a reserved zero, else n), padding, and
               the Huffman stream (:mod:`npquant.compression.huffman`, ends in its last byte)
    gaps       8 bits M - 1 (M = 1..255), the skip list of rows (when skipped), the skip
               list of columns (when skipped), then when entries > 0 a length table
               (alphabet M + 1), padding, and the Huffman stream of the entries gap symbols
    skip list  gamma(k), k skipped indices: gamma(first + 1), then gamma of each difference
               to the one before; 1 <= k <= the number of indices kept
    exponents  length table (alphabet 256), padding, and the stream of size symbols: the
               8-bit exponent field of each value
    mantissas  size * (s + 23 - t) bits, s = 1 when sign bits are stored: per value its
               sign bit, then its mantissa >> t; length implied, ceil(bits / 8)

    length table: the code lengths of a canonical Huffman code (nothing else is stored)
    gamma(lo + 1), gamma(hi - lo + 1)  the first and last symbols with a code
    5 bits         length of lo, minus 1; then for each symbol after lo up to hi:
    1              the same length as the last coded symbol
    01 s           that length +1 (s = 0) or -1 (s = 1)
    001 s gamma    that length +-(g + 1), g >= 1 the gamma value
    000 gamma      run: this many symbols have no code (never two runs in a row, never
                   reaching hi); lengths are 1..32 and form a complete prefix code

A k-means tensor is ``centroids[symbols]``: the stored centroids, after an implicit +0.0 at
index 0 when the zero is reserved. Only the centroids some weight uses are stored, in
ascending order of value (symbols renumbered so; a codebook fine-tuned by k-means QAT is
no longer sorted, and sorting lets the sorted-keys coding apply). A tensor without a
reserved zero (not pruned) is stored in the dense layout. **Dense** layout: one value
symbol per element, C order. **Sparse** layout (needs the reserved zero): the tensor is viewed as the matrix
``(shape[0], size / shape[0])``; skipped rows and columns are all zero and left out; the
rest is scanned in C order, or with the transposed flag column by column, and its
non-zero elements are coded: before each, a gap symbol r < M says that r zeros precede
it, and a symbol M (an escape) stands for M zeros and no element; at the end, escapes
until fewer than M zeros remain. Value symbols of a sparse tensor are >= 1. So the
streams bound the tensor: a reader checks ``0 <= rows kept * columns kept - covered < M``
before it allocates, and as at most half the rows and half the columns are skipped, a
tensor has at most 4 times the elements its gaps cover. The writer tries the dense
layout and the sparse one with both scans, with and without the empty rows and columns
skipped, and M = 1, 3, 7, ..., 255, refines the best M by a local search, and keeps the
smallest. The paper's filler entries are not stored: an escape costs one gap symbol and
no value. The paper's ``index_bits`` are not in the file (they define the size after
quantization in :func:`stage_sizes` and the version-2 file).

A float-split tensor stores the exponent fields Huffman coded and the sign and mantissa
bits as they are: exact for any float32. The writer keeps it when it is smaller than
float32 (biases: their exponents span a few values).

On the bundled LeNet-300-100 pruned as the paper does (92, 91, 74 %, 5-bit codebooks),
version 3 takes 6706 bytes where version 2 took 8745 (30.2x instead of 23.1x the float32
model; 38.6x instead of 33.2x for the weight tensors alone), with every tensor exact.

Version 2
---------
Read, and written by ``Compressed.to_bytes(version=2)`` and ``write_compressed(...,
version=2)``::

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
(self-describing Huffman blobs of :func:`npquant.compression.huffman.encode_blob`). A raw tensor has the
blob ``data`` (float32). The blobs tile the body exactly, in order, without overlap.

Version 2 adds one rule to version 1: the relative-index stream covers the tensor to
within ``2^index_bits - 1`` elements of its end (filler entries bridge a longer run of
trailing zeros), so a tensor's size is bounded by the streams present, and a reader
checks it before allocating. Version 1 files are read when they satisfy the rule (files
whose last non-zero weight sits further from the end must be written again).

Readers check everything before decoding: the magic, the version, the declared file size
against the bytes present, the CRC-32, every varint and field, names (each once), the
sections tiling the body, and each tensor's size against its streams; then the rebuilt
tensors against their CRC-32. A wrong, corrupt or truncated file is a
:class:`~npquant.models.io.FileFormatError` saying what was expected. A file is written to a
temporary name and renamed, so it is never half-written.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_int, check_int_array
from .._fileio import MAX_JSON_BYTES, FileFormatError, atomic_write, check_path, parse_json, read_bytes
from .._table import format_table
from . import huffman
from .huffman import _varint
from .kmeans import kmeans_quantize, reconstruct
from .prune import decode_relative, encode_relative, magnitude_mask, prune

MAGIC = b"NPQZ"
VERSION = 3
#: Versions :func:`read_compressed` reads, and the ones :func:`write_compressed` writes.
READ_VERSIONS = (1, 2, 3)
WRITE_VERSIONS = (2, 3)
FORMAT = "npquant-deep-compression"
_PREAMBLE = struct.Struct("<4sHHI")

# version 3
KIND_FLOAT32, KIND_SPLIT, KIND_KMEANS = 0, 1, 2
CODEBOOK_FLOAT32, CODEBOOK_FLOAT16, CODEBOOK_KEYS = 0, 1, 2
_SPARSE, _TRANSPOSED, _RESERVED, _SKIP_ROWS, _SKIP_COLS = 4, 8, 16, 32, 64
_MAX_NDIM = 32
_GAP_LIMITS = (1, 3, 7, 15, 31, 63, 127, 255)


@dataclass(frozen=True)
class LayerConfig:
    """How one weight tensor is compressed: prune by ``sparsity`` (fraction removed) or by
    ``quality`` (``|w| < quality * std(w)``), ``bits`` of k-means codebook, ``index_bits``
    of the relative position gaps (the paper's fixed-width indices: they define the size
    after quantization, :func:`stage_sizes`, and the version-2 file; version 3 picks its
    own gap code, see the module docstring)."""

    sparsity: float | None = None
    quality: float | None = None
    bits: int = 5
    index_bits: int = 5


def default_config(w: np.ndarray, *, sparsity: float | None = None, quality: float | None = None) -> LayerConfig:
    """The paper's defaults: conv (4-D) 8-bit codebook and gaps, fully connected 5 and 5.

    Parameters
    ----------
    w : numpy.ndarray
        The weight tensor; only its number of dimensions is used.
    sparsity : float or None, default None
        Keyword-only; stored in the config as given.
    quality : float or None, default None
        Keyword-only; stored in the config as given.

    Returns
    -------
    LayerConfig
        ``bits = index_bits = 8`` for a 4-D ``w``, else 5.
    """
    conv = np.ndim(w) == 4
    return LayerConfig(sparsity=sparsity, quality=quality, bits=8 if conv else 5, index_bits=8 if conv else 5)


@dataclass
class LayerReport:
    """One weight tensor: its configuration, and the bytes of its sections in the
    version-3 file (``codebook_bytes``, ``values_bytes``, ``gaps_bytes``; the Huffman
    tables are inside the values and gaps sections). ``entries``: the paper's stored
    entries at ``index_bits`` (non-zeros plus fillers). ``layout``: ``"sparse"`` or
    ``"dense"``; ``scan``: ``"C"`` or ``"transposed"``; ``gap_limit``: the escape M of
    the gap code (0 when dense); ``codebook_coding``: ``"float32"``, ``"float16"`` or
    ``"sorted keys"``; ``skipped``: the empty rows and columns the scan skips."""

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
    layout: str = "sparse"
    scan: str = "C"
    gap_limit: int = 0
    codebook_coding: str = "float32"
    skipped: tuple = (0, 0)

    @property
    def compressed_bytes(self) -> int:
        return self.codebook_bytes + self.values_bytes + self.gaps_bytes


@dataclass
class TensorReport:
    """A tensor that is not a weight matrix or conv kernel (a bias): how the version-3
    file stores it (``"float32"``, ``"float split"`` (exact), ``"k-means b bits"``
    (lossy, with ``bias_bits``) or ``"shared b bits"`` (the codebook and indices given by
    ``shared``, rebuilt exactly)) and in how many body bytes."""

    name: str
    shape: tuple
    params: int
    stored_as: str
    bytes: int
    bits: int = 0


@dataclass
class _Entry:
    """One tensor as :func:`compress` made it: float32 ``data`` (stored exactly) or
    k-means ``indices`` (uint8) into ``codebook`` (float32, ``2^bits``)."""

    name: str
    shape: tuple
    data: np.ndarray | None = None
    indices: np.ndarray | None = None
    codebook: np.ndarray | None = None
    bits: int = 0
    index_bits: int = 0
    reserved_zero: bool = False


@dataclass
class _V3:
    data: bytes
    sections: dict  # name -> list of section byte counts
    choices: dict  # name -> dict of what the writer chose


@dataclass
class Compressed:
    """A compressed state dict in memory: what is stored of each tensor (``tensors``, in
    the state dict's order: k-means indices and codebook, or float32 data), the per-layer
    reports, the reports of the tensors that are not weight matrices or conv kernels
    (``others``), the pruned, quantized weights the file rebuilds (``rebuilt``), and the
    file itself (:meth:`to_bytes`). ``header`` is the version-2 JSON header (a readable
    summary of every tensor)."""

    tensors: list
    reports: list = field(default_factory=list)
    rebuilt: dict = field(default_factory=dict)
    others: list = field(default_factory=list)
    _v3: _V3 | None = field(default=None, repr=False)

    @functools.cached_property
    def _v2(self) -> tuple[dict, bytes]:
        return _encode_v2(self.tensors, self.rebuilt)

    @property
    def header(self) -> dict:
        """The version-2 header (``{"format": ..., "tensors": [...]}``)."""
        return self._v2[0]

    @property
    def body(self) -> bytes:
        """The version-2 body (its blobs)."""
        return self._v2[1]

    def to_bytes(self, version: int = VERSION) -> bytes:
        """The bytes of the file in format ``version``: 3 (the default) is what
        :func:`write_compressed` writes; 2 is the JSON-header format."""
        version = check_int(version, "version", lo=min(WRITE_VERSIONS), hi=max(WRITE_VERSIONS))
        if version == 3:
            return self._v3.data
        header, body = self._v2
        h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return _PREAMBLE.pack(MAGIC, version, 0, len(h)) + h + struct.pack("<I", zlib.crc32(h)) + body


# --------------------------------------------------------------------------- compress


def compress(
    state: dict,
    configs: dict | None = None,
    *,
    sparsity: float | None = None,
    quality: float | None = None,
    seed: int = 0,
    kmeans_init: str = "linear",
    bias_bits: int | None = None,
    shared: dict | None = None,
) -> Compressed:
    """Compress a state dict (name -> float array).

    Tensors of 2 or 4 dimensions are pruned, k-means quantized and Huffman coded with
    ``configs[name]`` (a :class:`LayerConfig`) or :func:`default_config` with the given
    ``sparsity``/``quality``. The k-means reserves code 0 for the exact zero only when the
    pruned tensor has an exact zero (``keep_zeros="auto"`` of
    :func:`~npquant.compression.kmeans.kmeans_quantize`): a tensor that is not pruned keeps all
    ``2^bits`` codes for its values (stored in the dense layout). Other tensors (biases)
    are stored exactly as float32 (``bias_bits=None``, the default), or, with ``bias_bits``
    = 1..8, replaced by their own k-means codebook of ``2^bias_bits`` centroids (lossy;
    index 0 reserved for exact zeros when the tensor has one) and Huffman coded. The
    result's ``rebuilt`` dict holds exactly the float32 tensors that
    :func:`read_compressed` returns, bit for bit.

    ``shared`` gives the codebooks and indices of tensors already weight-shared, e.g. by
    k-means quantization-aware training (:func:`npquant.training.kmeans_qat`, whose
    fine-tuned codebooks a new k-means would not give back): ``{name: (codebook, indices,
    reserved_zero)}``, or ``{name: obj}`` with those attributes (a
    :class:`~npquant.compression.kmeans.KMeansResult`). ``codebook`` is float32 ``(2^b,)`` with ``b``
    in 1..8, ``indices`` an integer array of ``state[name]``'s shape with values below
    ``2^b``, ``reserved_zero`` a bool (True: code 0 is the exact zero of pruned weights,
    ``codebook[0]`` is ``+0.0``), and ``state[name]`` must equal ``codebook[indices]``.
    These tensors are neither pruned nor clustered again: the file stores the codebook
    and the indices and rebuilds ``codebook[indices]`` bit for bit. ``configs[name]``, if
    given, sets the ``index_bits`` of such a tensor; its ``bits`` must be ``b`` and it
    must not prune (the ``sparsity`` and ``quality`` arguments do not apply to them).

    Parameters
    ----------
    state : dict of str to float array
        The tensors, non-empty, finite.
    configs : dict of str to LayerConfig or None, default None
        Per-tensor configurations of 2-D/4-D tensors; every name must be in ``state``.
    sparsity, quality : float or None, default None
        Keyword-only; passed to :func:`default_config` for tensors without a config.
    seed : int, default 0
        Seed of the k-means initialisation.
    kmeans_init : str, default ``"linear"``
        The ``init`` of :func:`~npquant.compression.kmeans.kmeans_quantize`.
    bias_bits : int or None, default None
        1..8: k-means codebook bits of the other tensors; ``None`` stores them exactly.
    shared : dict or None, default None
        Tensors already weight-shared, as described above.

    Returns
    -------
    Compressed
        The file's contents, the per-layer reports and the ``rebuilt`` tensors.
    """
    if not isinstance(state, dict) or not state:
        raise ValueError("state must be a non-empty dict of name -> array")
    configs = {} if configs is None else dict(configs)
    unknown = set(configs) - set(state)
    if unknown:
        raise ValueError(f"configs name tensors that are not in state: {sorted(unknown)}")
    if bias_bits is not None:
        bias_bits = check_int(bias_bits, "bias_bits", lo=1, hi=8)
    shared = _check_shared(shared, state)
    tensors, reports, rebuilt = [], [], {}
    for name, value in state.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        w = np.asarray(value)
        if w.dtype.kind != "f":
            raise TypeError(f"state[{name!r}] must be a float array, got dtype {w.dtype}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"state[{name!r}] contains NaN or infinity")
        w = w.astype(np.float32)
        if name in shared:
            entry, rep = _shared_weight(name, w, shared[name], configs.get(name))
            if rep is not None:
                reports.append(rep)
        elif w.ndim in (2, 4) and w.size > 0:
            cfg = configs.get(name) or default_config(w, sparsity=sparsity, quality=quality)
            entry, rep = _quantize_weight(name, w, cfg, seed, kmeans_init)
            reports.append(rep)
        elif bias_bits is not None and w.ndim >= 1 and w.size > 0:
            res = kmeans_quantize(w, bias_bits, init=kmeans_init, seed=seed, keep_zeros=bool(np.any(w == 0)))
            entry = _Entry(
                name,
                tuple(w.shape),
                indices=np.asarray(res.indices),
                codebook=np.asarray(res.codebook),
                bits=bias_bits,
                index_bits=8,
                reserved_zero=bool(res.reserved_zero),
            )
        else:
            entry = _Entry(name, tuple(w.shape), data=w)
        tensors.append(entry)
        rebuilt[name] = entry.data if entry.data is not None else entry.codebook[entry.indices]
    v3 = _encode_v3(tensors, rebuilt)
    weights = {r.name for r in reports}
    others = [
        TensorReport(
            e.name,
            e.shape,
            int(math.prod(e.shape)),
            v3.choices[e.name]["stored_as"]
            if e.indices is None
            else f"{'shared' if e.name in shared else 'k-means'} {e.bits} bits",
            sum(v3.sections[e.name]),
            e.bits,
        )
        for e in tensors
        if e.name not in weights
    ]
    for r in reports:
        sec, ch = v3.sections[r.name], v3.choices[r.name]
        r.codebook_bytes, r.values_bytes = sec[0], sec[1]
        r.gaps_bytes = sec[2] if len(sec) > 2 else 0
        r.layout, r.scan, r.gap_limit, r.codebook_coding = ch["layout"], ch["scan"], ch["gap_limit"], ch["codebook"]
        r.skipped = ch["skipped"]
        r.huffman_bits_per_weight = 8.0 * (r.values_bytes + r.gaps_bytes) / max(r.nnz, 1)
    return Compressed(tensors=tensors, reports=reports, rebuilt=rebuilt, others=others, _v3=v3)


def _quantize_weight(name, w, cfg: LayerConfig, seed, init):
    check_int(cfg.bits, f"bits of {name}", lo=1, hi=8)
    check_int(cfg.index_bits, f"index_bits of {name}", lo=1, hi=8)
    if cfg.sparsity is None and cfg.quality is None:
        mask = np.ones(w.shape, bool)
    else:
        mask = magnitude_mask(w, sparsity=cfg.sparsity, quality=cfg.quality)
    w_p = prune(w, mask)
    res = kmeans_quantize(w_p, cfg.bits, init=init, seed=seed, keep_zeros="auto")
    return _weight_entry(
        name,
        np.asarray(res.indices),
        np.asarray(res.codebook),
        cfg.bits,
        cfg.index_bits,
        bool(res.reserved_zero),
        int(np.count_nonzero(w_p)),
    )


def _weight_entry(name, indices, codebook, bits, index_bits, reserved_zero, nnz):
    """The entry and report of a k-means weight tensor. ``entries``: with a reserved zero,
    the paper's relative-index entries (non-zero codes and fillers); without one, every
    weight (nothing is pruned, no relative index is needed)."""
    if reserved_zero:
        rs = encode_relative(indices, index_bits, filler=0)
        gaps, _ = _cover_tail(np.asarray(rs.gaps), np.asarray(rs.values), indices.size, index_bits)
        entries = int(gaps.size)
    else:
        entries = int(indices.size)
    entry = _Entry(
        name,
        tuple(indices.shape),
        indices=indices,
        codebook=codebook,
        bits=bits,
        index_bits=index_bits,
        reserved_zero=reserved_zero,
    )
    rep = LayerReport(
        name=name,
        shape=tuple(indices.shape),
        params=int(indices.size),
        nnz=nnz,
        entries=entries,
        bits=bits,
        index_bits=index_bits,
        codebook_bytes=0,
        values_bytes=0,
        gaps_bytes=0,
        huffman_bits_per_weight=0.0,
    )
    return entry, rep


def _check_shared(shared, state: dict) -> dict:
    """``shared`` as ``{name: (codebook float32, indices uint8, reserved_zero bool)}``,
    every item checked against ``state``."""
    if shared is None:
        return {}
    if not isinstance(shared, Mapping):
        raise TypeError(
            f"shared must be a dict of name -> (codebook, indices, reserved_zero), got {type(shared).__name__}"
        )
    out = {}
    for name, item in shared.items():
        if name not in state:
            raise ValueError(f"shared names {name!r}, which is not in state")
        what = f"shared[{name!r}]"
        if isinstance(item, (tuple, list)):
            if len(item) != 3:
                raise ValueError(f"{what} must be (codebook, indices, reserved_zero), got {len(item)} items")
            cb, idx, res = item
        elif all(hasattr(item, a) for a in ("codebook", "indices", "reserved_zero")):
            cb, idx, res = item.codebook, item.indices, item.reserved_zero
        else:
            raise TypeError(
                f"{what} must be (codebook, indices, reserved_zero) or have those attributes, got {type(item).__name__}"
            )
        cb = np.asarray(cb)
        if cb.dtype != np.float32 or cb.ndim != 1:
            raise TypeError(
                f"{what}: the codebook must be a 1-D float32 array (the file stores float32), got "
                f"dtype {cb.dtype} shape {cb.shape}"
            )
        bits = int(cb.size).bit_length() - 1
        if cb.size != 1 << bits or not 1 <= bits <= 8:
            raise ValueError(f"{what}: the codebook must hold 2^b centroids, b in 1..8, got {cb.size}")
        if not np.all(np.isfinite(cb)):
            raise ValueError(f"{what}: the codebook contains NaN or infinity")
        idx = check_int_array(idx, f"{what}: the indices")
        w = np.asarray(state[name])
        if idx.shape != w.shape or idx.size == 0:
            raise ValueError(
                f"{what}: the indices have shape {idx.shape}, state[{name!r}] has {w.shape} (non-empty, the same shape)"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= cb.size:
            raise ValueError(
                f"{what}: the indices must lie in [0, {cb.size - 1}], got values in "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        if not isinstance(res, (bool, np.bool_)):
            raise TypeError(f"{what}: reserved_zero must be a bool, got {type(res).__name__}")
        if res and int(cb[:1].view(np.uint32)[0]) != 0:
            raise ValueError(f"{what}: with reserved_zero, codebook[0] must be +0.0, got {cb[0]!r}")
        idx = idx.astype(np.uint8)
        if w.dtype.kind == "f" and not np.array_equal(w, cb[idx]):
            raise ValueError(
                f"state[{name!r}] is not codebook[indices] of {what}: pass the weights the "
                "codebook and indices make (e.g. the model's state_dict() after kmeans_qat)"
            )
        out[name] = (cb, idx, bool(res))
    return out


def _shared_weight(name, w, item, cfg):
    """The entry (and for a 2-D or 4-D tensor the report) of a tensor given by ``shared``."""
    cb, idx, res = item
    bits = int(cb.size).bit_length() - 1
    if w.ndim not in (2, 4):
        entry = _Entry(name, tuple(w.shape), indices=idx, codebook=cb, bits=bits, index_bits=8, reserved_zero=res)
        return entry, None
    index_bits = default_config(w).index_bits
    if cfg is not None:
        if cfg.sparsity is not None or cfg.quality is not None:
            raise ValueError(
                f"configs[{name!r}] prunes, but shared[{name!r}] gives its codebook and indices: "
                "prune before the weight sharing"
            )
        if cfg.bits != bits:
            raise ValueError(
                f"configs[{name!r}].bits is {cfg.bits}, shared[{name!r}] has a {bits}-bit codebook "
                f"({cb.size} centroids)"
            )
        index_bits = check_int(cfg.index_bits, f"index_bits of {name}", lo=1, hi=8)
    return _weight_entry(name, idx, cb, bits, index_bits, res, int(np.count_nonzero(cb[idx])))


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


# --------------------------------------------------------------------------- stage sizes


@dataclass(frozen=True)
class StageSizes:
    """Bytes after each stage of Deep Compression, for the whole model and for the weight
    tensors alone (``weights_*``); ``layers`` has one row per weight tensor:
    ``(name, original, pruned, quantized, huffman)``.

    - ``original``: float32, 4 bytes a parameter.
    - ``pruned``: each stored entry (non-zeros plus the paper's fillers at
      ``index_bits``) as a float32 value and an ``index_bits`` relative index; a tensor
      without a reserved zero (not pruned) stores every weight, without relative index.
    - ``quantized``: each entry as a ``bits`` k-means index and its relative index, plus
      the float32 codebook (``2^bits`` centroids).
    - ``huffman``: the real version-3 file; a layer's share is its body sections.

    Other tensors (biases) count as float32 until the Huffman stage, or with ``bias_bits``
    as packed ``bits`` indices plus their codebook from the quantization stage on.
    """

    original: int
    pruned: int
    quantized: int
    huffman: int
    weights_original: int
    weights_pruned: int
    weights_quantized: int
    weights_huffman: int
    layers: tuple = ()

    def rows(self) -> list:
        """``[(stage, bytes, ratio, weight bytes, weight ratio)]`` in pipeline order; a
        ratio is float32 bytes over the stage's bytes (None when there are none)."""
        out = []
        for stage, a, b in (
            ("float32", self.original, self.weights_original),
            ("pruned", self.pruned, self.weights_pruned),
            ("quantized", self.quantized, self.weights_quantized),
            ("Huffman coded (the file)", self.huffman, self.weights_huffman),
        ):
            out.append((stage, a, self.original / a if a else None, b, self.weights_original / b if b else None))
        return out


def stage_sizes(compressed: Compressed) -> StageSizes:
    """The sizes behind Deep Compression's per-stage table (ratio after pruning, after
    quantization, after Huffman coding), the last from the real file; see
    :class:`StageSizes` for what each stage stores.

    Parameters
    ----------
    compressed : Compressed
        The result of :func:`compress`.

    Returns
    -------
    StageSizes
        Bytes of the whole model and of the weights alone after each stage, and per layer.
    """
    if not isinstance(compressed, Compressed):
        raise TypeError(f"compressed must be the Compressed result of compress(), got {type(compressed).__name__}")
    v3 = compressed._v3
    reports = {r.name: r for r in compressed.reports}
    total = [0, 0, 0]
    weights = [0, 0, 0]
    layers = []
    for e in compressed.tensors:
        size = int(math.prod(e.shape))
        body = sum(v3.sections[e.name])
        if e.name in reports:
            r = reports[e.name]
            ib = r.index_bits if e.reserved_zero else 0  # not pruned: no relative index
            row = (4 * size, -(-r.entries * (32 + ib) // 8), -(-r.entries * (r.bits + ib) // 8) + (4 << r.bits))
            layers.append((e.name, *row, body))
            weights = [a + b for a, b in zip(weights, row)]
        elif e.indices is not None:
            row = (4 * size, 4 * size, -(-size * e.bits // 8) + (4 << e.bits))
        else:
            row = (4 * size,) * 3
        total = [a + b for a, b in zip(total, row)]
    w_huff = sum(r[4] for r in layers)
    return StageSizes(
        original=total[0],
        pruned=total[1],
        quantized=total[2],
        huffman=len(v3.data),
        weights_original=weights[0],
        weights_pruned=weights[1],
        weights_quantized=weights[2],
        weights_huffman=w_huff,
        layers=tuple(layers),
    )


# --------------------------------------------------------------------------- write / read


def write_compressed(compressed: Compressed, path: str | os.PathLike, *, version: int = VERSION) -> int:
    """Write the file atomically (temporary name in the same folder, then rename; see
    :func:`npquant.models.io.atomic_write` for permissions and symbolic links); returns its size
    in bytes.

    Parameters
    ----------
    compressed : Compressed
        The result of :func:`compress`.
    path : str or os.PathLike
        The file to write.
    version : int, default 3
        Keyword-only; the file format version, 3 or 2.

    Returns
    -------
    int
        The file's size in bytes.
    """
    if not isinstance(compressed, Compressed):
        raise TypeError(f"compressed must be the Compressed result of compress(), got {type(compressed).__name__}")
    check_path(path)
    data = compressed.to_bytes(version)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def read_compressed(source: str | os.PathLike | bytes | bytearray | memoryview, *, where: str | None = None) -> dict:
    """Rebuild the float32 tensors (name -> array) from a compressed file or its bytes.

    ``source``: a path (``str`` or ``os.PathLike``) or the file's bytes (``bytes``,
    ``bytearray``, ``memoryview``); ``where`` names the file in messages. Versions 1, 2
    and 3 are read. Everything is checked before anything is decoded (magic, version,
    sizes, CRCs, fields, names, each tensor's size against its streams) and the rebuilt
    tensors against their CRC-32. A wrong or corrupt file is a
    :class:`~npquant.models.io.FileFormatError` (``ValueError``) saying what was expected.

    Parameters
    ----------
    source : str, os.PathLike, bytes, bytearray or memoryview
        A path, or the file's bytes.
    where : str or None, default None
        Keyword-only; names the file in messages (default: the path, or ``"<bytes>"``).

    Returns
    -------
    dict of str to numpy.ndarray
        The rebuilt float32 tensors by name.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), where or "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = check_path(source, "source")
        data, where = read_bytes(path), where or path
    else:
        raise TypeError(f"source must be a path (str or os.PathLike) or the file's bytes, got {type(source).__name__}")
    if len(data) >= 6 and data[:4] == MAGIC and data[4:6] == struct.pack("<H", 3):
        return _read_v3(data, where)
    version, header, body = _parse_preamble(data, where)
    tensors = _check_layout(header, body, where)
    out = {}
    for t, parts in tensors:
        out[t["name"]] = _rebuild(t, parts, where, version)
        if zlib.crc32(out[t["name"]].astype("<f4").tobytes()) != t["crc"]:
            raise FileFormatError(where, f"tensor {t['name']!r} does not rebuild to the checksum its header records")
    return out


# --------------------------------------------------------------------------- version 3: bits


class _Bits:
    """MSB-first bit writer (small sections: tables and codebooks)."""

    def __init__(self):
        self.acc, self.n = 0, 0

    def put(self, value: int, nbits: int):
        self.acc = (self.acc << nbits) | value
        self.n += nbits

    def gamma(self, x: int):
        nb = x.bit_length()
        self.put(x, 2 * nb - 1)  # nb - 1 zeros, then x in nb bits

    def to_bytes(self) -> bytes:
        pad = -self.n % 8
        return (self.acc << pad).to_bytes((self.n + pad) // 8, "big")


class _BitReader:
    """MSB-first reads from ``buf`` with bounds checks; errors name ``what``."""

    def __init__(self, buf: bytes, where, what: str):
        self.buf, self.pos, self.nbits = buf, 0, 8 * len(buf)
        self.where, self.what = where, what

    def fail(self, msg: str):
        raise FileFormatError(self.where, f"corrupt body: {self.what}: {msg}")

    def get(self, nbits: int) -> int:
        if nbits == 0:
            return 0
        end = self.pos + nbits
        if end > self.nbits:
            self.fail(f"truncated: needs bit {end}, the section has {self.nbits}")
        a, b = self.pos >> 3, (end + 7) >> 3
        v = int.from_bytes(self.buf[a:b], "big") >> (8 * b - end)
        self.pos = end
        return v & ((1 << nbits) - 1)

    def gamma(self, limit: int = 40) -> int:
        zeros = 0
        while self.get(1) == 0:
            zeros += 1
            if zeros > limit:
                self.fail(f"an Elias-gamma number longer than {limit} bits")
        return (1 << zeros) | self.get(zeros)

    def align(self) -> int:
        """Skip the zero padding to the next byte; returns the byte offset."""
        pad = -self.pos % 8
        if self.get(pad):
            self.fail("non-zero padding bits")
        return self.pos >> 3


class _Cursor:
    """Reads the header of a version-3 file: bytes and varints, bounds-checked."""

    def __init__(self, data: bytes, pos: int, end: int, where):
        self.data, self.pos, self.end, self.where = data, pos, end, where

    def fail(self, msg: str):
        raise FileFormatError(self.where, f"corrupt header: {msg}")

    def byte(self, what: str) -> int:
        if self.pos >= self.end:
            self.fail(f"truncated: {what} needs a byte at {self.pos}, the header ends at {self.end}")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            self.fail(f"truncated: {what} needs {n} bytes at {self.pos}, {self.end - self.pos} remain")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, what: str, hi: int = (1 << 63) - 1) -> int:
        x, shift = 0, 0
        for i in range(10):
            b = self.byte(what)
            x |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i > 0:
                    self.fail(f"{what}: overlong varint (a last byte 0)")
                break
        else:
            self.fail(f"{what}: varint longer than 10 bytes")
        if x > hi:
            self.fail(f"{what} is {x}, at most {hi} allowed")
        return x


# --------------------------------------------------------------------------- version 3: tables


def _table_bits(lengths: np.ndarray) -> _Bits:
    """The length table of a code (format in the module docstring)."""
    ln = lengths.tolist()
    used = np.flatnonzero(lengths)
    lo, hi = int(used[0]), int(used[-1])
    w = _Bits()
    w.gamma(lo + 1)
    w.gamma(hi - lo + 1)
    w.put(ln[lo] - 1, 5)
    prev, s = ln[lo], lo + 1
    while s <= hi:
        if ln[s] == 0:
            r = s
            while ln[r] == 0:
                r += 1
            w.put(0, 3)
            w.gamma(r - s)
            s = r
            continue
        d = ln[s] - prev
        if d == 0:
            w.put(1, 1)
        elif abs(d) == 1:
            w.put(0b010 | (d < 0), 3)
        else:
            w.put(0b0010 | (d < 0), 4)
            w.gamma(abs(d) - 1)
        prev = ln[s]
        s += 1
    return w


def _read_table(r: _BitReader, n: int) -> huffman.HuffmanCode:
    """Parse a length table of alphabet ``n`` at the reader's position."""
    lo = r.gamma() - 1
    count = r.gamma()
    if lo + count > n:
        r.fail(f"the code table covers symbols {lo}..{lo + count - 1}, the alphabet has {n}")
    hi = lo + count - 1
    lengths = np.zeros(n, np.uint8)
    prev = r.get(5) + 1
    lengths[lo] = prev
    s, after_run = lo + 1, False
    while s <= hi:
        if r.get(1):
            d = 0
        elif r.get(1):
            d = -1 if r.get(1) else 1
        elif r.get(1):
            sign = r.get(1)
            d = r.gamma() + 1
            d = -d if sign else d
        else:
            if after_run:
                r.fail("two runs of unused symbols in a row in a code table")
            run = r.gamma()
            if s + run > hi:
                r.fail(f"a run of {run} unused symbols reaches past the last coded symbol {hi}")
            s += run
            after_run = True
            continue
        prev += d
        if not 1 <= prev <= huffman.MAX_CODE_LENGTH:
            r.fail(f"code length {prev} of symbol {s}, expected 1..{huffman.MAX_CODE_LENGTH}")
        lengths[s] = prev
        s += 1
        after_run = False
    try:
        return huffman.HuffmanCode(lengths)
    except ValueError as e:
        r.fail(f"the code table is not a valid code ({e})")


def _stream_section(symbols: np.ndarray, alphabet: int, head: _Bits | None = None) -> bytes:
    """``head`` bits, the length table of the symbols' Huffman code, padding, the stream."""
    w = head or _Bits()
    if symbols.size:
        code = huffman.HuffmanCode.from_counts(np.bincount(symbols, minlength=alphabet))
        t = _table_bits(code.lengths)
        w.put(t.acc, t.n)
        stream, _ = huffman.huffman_encode(symbols, code)
        return w.to_bytes() + stream
    return w.to_bytes()


def _section_size(counts: np.ndarray, head_bits: int = 0) -> int:
    """Bytes of :func:`_stream_section` for symbols with these counts, without coding them."""
    if not counts.any():
        return -(-head_bits // 8)
    code = huffman.HuffmanCode.from_counts(counts)
    stream = int(np.dot(counts.astype(np.int64), code.lengths.astype(np.int64)))
    return -(-(head_bits + _table_bits(code.lengths).n) // 8) + -(-stream // 8)


def _decode_stream(buf: bytes, start: int, code, count: int, where, what: str) -> np.ndarray:
    try:
        return huffman.huffman_decode(buf[start:], code, count)
    except ValueError as e:
        raise FileFormatError(where, f"corrupt body: {what} does not decode ({e})") from None


# --------------------------------------------------------------------------- version 3: codebooks, floats


def _key_array(cb: np.ndarray) -> np.ndarray:
    """int64 sort keys of float32 values (ascending with the value; -0.0 before +0.0)."""
    u = cb.astype("<f4").view("<u4").astype(np.int64)
    return np.where(u >= 1 << 31, 0xFFFFFFFF - u, u | (1 << 31))


def _keys(cb: np.ndarray) -> list:
    return _key_array(cb).tolist()


def _codebook_section(cb: np.ndarray, codings=(CODEBOOK_FLOAT32, CODEBOOK_FLOAT16, CODEBOOK_KEYS)):
    """The smallest exact coding of the stored centroids ``cb`` (float32) among
    ``codings``: ``(bytes, name of the coding)``."""
    n = int(cb.size)
    best = None
    for coding in codings:
        w = _Bits()
        w.put(coding, 2)
        w.gamma(n + 1)
        if coding == CODEBOOK_FLOAT32:
            for u in cb.astype("<f4").view("<u4").tolist():
                w.put(u, 32)
        elif coding == CODEBOOK_FLOAT16:
            with np.errstate(over="ignore"):
                h = cb.astype(np.float16)
            if not np.array_equal(h.astype(np.float32).view(np.uint32), cb.astype(np.float32).view(np.uint32)):
                continue
            for u in h.view("<u2").tolist():
                w.put(u, 16)
        else:
            keys = _keys(cb)
            d = np.diff(keys).tolist() if n else []
            if any(x < 0 for x in d) or n == 0:
                continue
            k = min(range(32), key=lambda k: sum(2 * ((x >> k) + 1).bit_length() - 1 for x in d) + k * len(d))
            w.put(keys[0], 32)
            w.put(k, 5)
            for x in d:
                w.gamma((x >> k) + 1)
                w.put(x & ((1 << k) - 1), k)
        if best is None or w.n < best[0].n:
            best = (w, coding)
    return best[0].to_bytes(), ("float32", "float16", "sorted keys")[best[1]]


def _read_codebook(buf: bytes, reserved: bool, where, name) -> np.ndarray:
    r = _BitReader(buf, where, f"the codebook of {name!r}")
    coding = r.get(2)
    n = r.gamma() - 1
    if n + reserved > 256:
        r.fail(f"{n} centroids{' and the reserved zero' if reserved else ''}, at most 256")
    if coding == CODEBOOK_FLOAT32:
        u = np.array([r.get(32) for _ in range(n)], np.uint32)
        cb = u.view(np.float32)
    elif coding == CODEBOOK_FLOAT16:
        cb = np.array([r.get(16) for _ in range(n)], np.uint16).view(np.float16).astype(np.float32)
    elif coding == CODEBOOK_KEYS:
        if n == 0:
            r.fail("sorted keys need at least one centroid")
        key = r.get(32)
        k = r.get(5)
        keys = [key]
        for _ in range(n - 1):
            key += ((r.gamma() - 1) << k) | r.get(k)
            if key > 0xFFFFFFFF:
                r.fail("a centroid key beyond 32 bits")
            keys.append(key)
        kk = np.array(keys, np.int64)
        cb = np.where(kk >= 1 << 31, kk - (1 << 31), 0xFFFFFFFF - kk).astype(np.uint32).view(np.float32)
    else:
        r.fail(f"codebook coding {coding}, expected 0 (float32), 1 (float16) or 2 (sorted keys)")
    if r.align() != len(buf):
        r.fail(f"{len(buf) - r.align()} bytes after the {n} centroids")
    if reserved:
        cb = np.concatenate([np.zeros(1, np.float32), cb])
    return cb


def _split_float(x: np.ndarray):
    """Exponents (uint8), sign flag, t, and the packed sign+mantissa section of float32 ``x``."""
    u = x.astype("<f4").reshape(-1).view("<u4")
    sign = u >> np.uint32(31)
    exps = ((u >> np.uint32(23)) & np.uint32(0xFF)).astype(np.uint8)
    mant = u & np.uint32(0x7FFFFF)
    nz = mant[mant != 0]
    t = 23 if nz.size == 0 else min(23, int(np.bitwise_and(nz, -nz.astype(np.int64)).min()).bit_length() - 1)
    signs = bool(sign.any())
    nb = int(signs) + 23 - t
    vals = (mant >> np.uint32(t)).astype(np.uint32)
    if signs:
        vals = vals | (sign << np.uint32(23 - t))
    return exps, signs, t, _pack(vals, nb)


def _pack(vals: np.ndarray, nb: int, chunk: int = 8192) -> bytes:
    """``nb``-bit values (0..24 bits), MSB first, zero padding."""
    if nb == 0 or vals.size == 0:
        return b""
    shifts = np.arange(nb - 1, -1, -1, dtype=np.uint32)
    bits = np.concatenate(
        [
            ((vals[a : a + chunk, None] >> shifts) & np.uint32(1)).astype(np.uint8).ravel()
            for a in range(0, vals.size, chunk)
        ]
    )
    return np.packbits(bits).tobytes()


def _unpack(buf: bytes, count: int, nb: int, chunk: int = 8192) -> np.ndarray:
    """Inverse of :func:`_pack` (the caller checked ``len(buf) == ceil(count * nb / 8)``)."""
    out = np.zeros(count, np.uint32)
    if nb == 0:
        return out
    b = np.frombuffer(buf + b"\0\0\0\0", np.uint8)
    for a in range(0, count, chunk):
        off = np.arange(a, min(count, a + chunk), dtype=np.int64) * nb
        i = off >> 3
        word = (
            (b[i].astype(np.uint64) << np.uint64(24))
            | (b[i + 1].astype(np.uint64) << np.uint64(16))
            | (b[i + 2].astype(np.uint64) << np.uint64(8))
            | b[i + 3].astype(np.uint64)
        )
        sh = (np.int64(32 - nb) - (off & 7)).astype(np.uint64)
        out[a : a + off.size] = ((word >> sh) & np.uint64((1 << nb) - 1)).astype(np.uint32)
    return out


# --------------------------------------------------------------------------- version 3: k-means tensors


def _runs(flat: np.ndarray):
    """Zeros before each non-zero of ``flat`` (int64) and the zeros after the last one."""
    pos = np.flatnonzero(flat)
    r = np.diff(pos, prepend=np.int64(-1)) - 1
    tail = flat.size - 1 - (int(pos[-1]) if pos.size else -1)
    return r.astype(np.int64), tail


def _gap_counts(r: np.ndarray, tail: int, m: int) -> np.ndarray:
    counts = np.bincount(r % m, minlength=m + 1).astype(np.int64)
    counts[m] += int((r // m).sum()) + tail // m
    return counts


def _gap_symbols(r: np.ndarray, tail: int, m: int) -> np.ndarray:
    reps = r // m + 1
    syms = np.full(int(reps.sum()) + tail // m, m, np.int64)
    syms[np.cumsum(reps) - 1] = r % m
    return syms


def _skip_bits(w: _Bits, skipped: np.ndarray):
    """A skip list: gamma(k), then gamma(first + 1) and gamma of each later difference."""
    w.gamma(int(skipped.size))
    prev = -1
    for i in skipped.tolist():
        w.gamma(i - prev)
        prev = i


#: What the version-3 writer tries (private: the measurements of each choice turn them off).
_WRITER = {
    "gap_limits": _GAP_LIMITS,
    "refine": True,
    "scans": (False, True),
    "skips": True,
    "codebooks": (0, 1, 2),
    "dense": True,
    "split": True,
    "used_only": True,
    "sort": True,
}


def _best_gap_limit(r: np.ndarray, tail: int, limits, refine: bool, head_bits: int) -> tuple[int, int]:
    """``(bytes, M)`` of the smallest gaps section among ``limits``, then (``refine``) a
    local search around it: steps of M // 4, halved until no neighbour is smaller."""
    sizes = {}

    def size(m):
        if m not in sizes:
            sizes[m] = _section_size(_gap_counts(r, tail, m), head_bits)
        return sizes[m]

    m = min(limits, key=lambda m: (size(m), m))
    step = max(1, m // 4) if refine else 0
    while step:
        better = [c for c in (m - step, m + step) if 1 <= c <= 255 and size(c) < size(m)]
        if better:
            m = better[0]
        else:
            step //= 2
    return size(m), m


def _encode_kmeans(e: _Entry, opts: dict):
    """Sections (codebook, values[, gaps]), kind byte, fields and choices of a k-means
    tensor: the smallest of the dense layout and the sparse one over both scans, the
    skipped empty rows and columns, and M."""
    idx = e.indices.reshape(-1).astype(np.int64)
    used = np.flatnonzero(np.bincount(idx, minlength=1 << e.bits)) if opts["used_only"] else np.arange(1 << e.bits)
    reserved = e.reserved_zero and int(e.codebook[:1].astype("<f4").view("<u4")[0]) == 0
    if reserved:
        used = used[used > 0]
    if opts["sort"]:  # ascending values: a fine-tuned codebook is not sorted any more
        used = used[np.argsort(_key_array(e.codebook[used]), kind="stable")]
    lut = np.zeros(1 << e.bits, np.int64)
    lut[used] = np.arange(used.size) + int(reserved)
    alphabet = used.size + int(reserved)
    cb_section, cb_coding = _codebook_section(e.codebook[used].astype(np.float32), opts["codebooks"])
    sym = lut[idx]
    choice = {"layout": "dense", "scan": "C", "gap_limit": 0, "codebook": cb_coding, "skipped": (0, 0)}
    dense = _section_size(np.bincount(sym, minlength=alphabet))
    best, cands = (dense if opts["dense"] or not reserved else math.inf), []
    if reserved:
        values = _section_size(np.bincount(sym[sym > 0], minlength=alphabet))
        view = sym.reshape(e.shape[0], -1)
        nz = view != 0
        empty = [np.flatnonzero(~nz.any(1)), np.flatnonzero(~nz.any(0))]
        two_d = len(e.shape) >= 2
        skips = [(False, False)]
        if two_d and opts["skips"]:
            ok = [0 < x.size <= n - x.size for x, n in zip(empty, view.shape)]
            skips += [sk for sk in ((True, False), (False, True), (True, True)) if all(o for o, s in zip(ok, sk) if s)]
        for sk in skips:
            head = _Bits()
            head.put(0, 8)
            for s_, x in zip(sk, empty):
                if s_:
                    _skip_bits(head, x)
            rows = np.setdiff1d(np.arange(view.shape[0]), empty[0]) if sk[0] else slice(None)
            cols = np.setdiff1d(np.arange(view.shape[1]), empty[1]) if sk[1] else slice(None)
            sub = view[rows][:, cols]
            for transposed in opts["scans"] if two_d else (False,):
                r, tail = _runs(sub.T.reshape(-1) if transposed else sub.reshape(-1))
                size, m = _best_gap_limit(r, tail, opts["gap_limits"], False, head.n)
                cands.append((values + size, sk, transposed, head, r, tail, m))
    if cands:
        size, sk, transposed, head, r, tail, m = min(cands, key=lambda c: c[0])
        if opts["refine"]:
            size, m = _best_gap_limit(r, tail, [m], True, head.n)
            size += values
    if not cands or size >= best:
        values = _stream_section(sym, alphabet)
        return [cb_section, values], KIND_KMEANS | (_RESERVED if reserved else 0), [], choice
    head.acc |= (m - 1) << (head.n - 8)  # M - 1 in the first 8 bits
    gsyms = _gap_symbols(r, tail, m)
    view = sym.reshape(e.shape[0], -1)
    flat = view.T.reshape(-1) if transposed else view.reshape(-1)
    sections = [cb_section, _stream_section(flat[flat > 0], alphabet), _stream_section(gsyms, m + 1, head)]
    choice.update(
        layout="sparse",
        scan="transposed" if transposed else "C",
        gap_limit=m,
        skipped=tuple(int(x.size) if s_ else 0 for s_, x in zip(sk, empty)),
    )
    kind = (
        KIND_KMEANS
        | _SPARSE
        | _RESERVED
        | (_TRANSPOSED if transposed else 0)
        | (_SKIP_ROWS if sk[0] else 0)
        | (_SKIP_COLS if sk[1] else 0)
    )
    return sections, kind, [int(gsyms.size)], choice


def _encode_v3(entries: list, rebuilt: dict, opts: dict | None = None) -> _V3:
    opts = {**_WRITER, **(opts or {})}
    records, body, sections, choices = [], [], {}, {}
    crc = 0
    for e in entries:
        name = e.name.encode("utf-8")
        dims = _varint(len(e.shape)) + b"".join(_varint(d) for d in e.shape)
        if e.indices is not None:
            secs, kind, fields, choice = _encode_kmeans(e, opts)
            lens = [len(secs[0]), len(secs[1])] + (fields + [len(secs[2])] if kind & _SPARSE else [])
            extra = b"".join(_varint(x) for x in lens)
        else:
            size = int(math.prod(e.shape))
            exps, signs, t, mant = _split_float(e.data) if size else (None, False, 0, b"")
            exp_sec = _stream_section(exps.astype(np.int64), 256) if size else b""
            if opts["split"] and size and len(exp_sec) + len(mant) + len(_varint(len(exp_sec))) < 4 * size:
                secs, kind, extra = [exp_sec, mant], KIND_SPLIT | (4 if signs else 0) | (t << 3), _varint(len(exp_sec))
                choice = {"stored_as": "float split"}
            else:
                secs, kind, extra = [e.data.astype("<f4").tobytes()], KIND_FLOAT32, b""
                choice = {"stored_as": "float32"}
        records.append(_varint(len(name)) + name + bytes([kind]) + dims + extra)
        body += secs
        sections[e.name] = [len(s) for s in secs]
        choices[e.name] = choice
        crc = zlib.crc32(rebuilt[e.name].astype("<f4").tobytes(), zlib.crc32(dims, crc))
    rest = _varint(len(records)) + b"".join(records) + struct.pack("<I", crc) + b"".join(body)
    fixed = 6 + len(rest) + 4
    width = 1
    while len(_varint(fixed + width)) != width:  # the size field counts its own bytes
        width += 1
    data = MAGIC + struct.pack("<H", 3) + _varint(fixed + width) + rest
    return _V3(data + struct.pack("<I", zlib.crc32(data)), sections, choices)


# --------------------------------------------------------------------------- version 3: reading


def _read_v3(data: bytes, where) -> dict:
    cur = _Cursor(data, 6, len(data), where)
    declared = cur.varint("the file size")
    if declared != len(data):
        what = "truncated file" if declared > len(data) else "corrupt file"
        raise FileFormatError(where, f"{what}: the header declares {declared} bytes, the file has {len(data)}")
    if len(data) < cur.pos + 8:
        raise FileFormatError(where, f"truncated file: {len(data)} bytes, too short for a tensor count and two CRC-32s")
    stored = struct.unpack_from("<I", data, len(data) - 4)[0]
    if zlib.crc32(data[:-4]) != stored:
        raise FileFormatError(
            where, "corrupt file: CRC-32 mismatch (the last 4 bytes hold the CRC-32 of the bytes before them)"
        )
    cur.end = len(data) - 4
    count = cur.varint("the tensor count")
    records, seen = [], set()
    for i in range(count):
        rec = _read_record(cur, i, where)
        if rec["name"] in seen:
            cur.fail(f"the tensor {rec['name']!r} appears twice")
        seen.add(rec["name"])
        records.append(rec)
    crc = struct.unpack("<I", cur.take(4, "the CRC-32 of the rebuilt tensors"))[0]
    pos = cur.pos
    for rec in records:  # the sections tile the body, checked before decoding anything
        parts = []
        for what, n in rec["sections"]:
            if n > cur.end - pos:
                raise FileFormatError(
                    where, f"truncated body: {what} of {rec['name']!r} needs {n} bytes at {pos}, {cur.end - pos} remain"
                )
            parts.append(data[pos : pos + n])
            pos += n
        rec["parts"] = parts
    if pos != cur.end:
        raise FileFormatError(
            where,
            f"corrupt file: the sections account for {pos - cur.pos} body bytes, the body has {cur.end - cur.pos}",
        )
    out, check = {}, 0
    for rec in records:
        t = _rebuild_v3(rec, where)
        out[rec["name"]] = t
        dims = _varint(t.ndim) + b"".join(_varint(d) for d in t.shape)
        check = zlib.crc32(t.astype("<f4").tobytes(), zlib.crc32(dims, check))
    if check != crc:
        raise FileFormatError(where, "corrupt file: the rebuilt tensors do not match the CRC-32 the header records")
    return out


def _read_record(cur: _Cursor, i: int, where) -> dict:
    n = cur.varint(f"the name length of tensor {i}", hi=cur.end - cur.pos)
    if n == 0:
        cur.fail(f"tensor {i} has an empty name")
    try:
        name = cur.take(n, f"the name of tensor {i}").decode("utf-8")
    except UnicodeDecodeError:
        cur.fail(f"the name of tensor {i} is not UTF-8")
    kind = cur.byte(f"the kind of {name!r}")
    ndim = cur.varint(f"ndim of {name!r}", hi=_MAX_NDIM)
    shape = tuple(cur.varint(f"dimension {d} of {name!r}") for d in range(ndim))
    size = math.prod(shape)
    rec = {"name": name, "kind": kind & 3, "flags": kind >> 2, "shape": shape, "size": size}
    if kind & 3 == KIND_FLOAT32:
        if kind >> 2:
            cur.fail(f"kind byte 0x{kind:02x} of {name!r}: a float32 tensor has no flags")
        rec["sections"] = [("the float32 data", 4 * size)]
    elif kind & 3 == KIND_SPLIT:
        t = kind >> 3
        if t > 23:
            cur.fail(f"kind byte 0x{kind:02x} of {name!r}: {t} dropped mantissa bits, at most 23")
        if size == 0:
            cur.fail(f"the float-split tensor {name!r} is empty")
        rec["nb"] = ((kind >> 2) & 1) + 23 - t
        rec["sections"] = [
            ("the exponents", cur.varint(f"the exponents length of {name!r}")),
            ("the mantissas", -(-size * rec["nb"] // 8)),
        ]
    elif kind & 3 == KIND_KMEANS:
        if kind & 0x80:
            cur.fail(f"kind byte 0x{kind:02x} of {name!r}: bit 7 must be 0")
        if size == 0:
            cur.fail(f"the k-means tensor {name!r} is empty")
        if kind & (_TRANSPOSED | _SKIP_ROWS | _SKIP_COLS) and not kind & _SPARSE:
            cur.fail(
                f"kind byte 0x{kind:02x} of {name!r}: a transposed scan or skipped rows or columns need "
                "the sparse layout"
            )
        if kind & (_TRANSPOSED | _SKIP_ROWS | _SKIP_COLS) and ndim < 2:
            cur.fail(
                f"{name!r} has a transposed scan or skipped rows or columns and {ndim} dimension(s); "
                "they need 2 or more"
            )
        if kind & _SPARSE and not kind & _RESERVED:
            cur.fail(f"the sparse tensor {name!r} has no reserved zero")
        rec["sections"] = [
            ("the codebook", cur.varint(f"the codebook length of {name!r}")),
            ("the values", cur.varint(f"the values length of {name!r}")),
        ]
        if kind & _SPARSE:
            rec["entries"] = cur.varint(f"the entries of {name!r}")
            rec["sections"].append(("the gaps", cur.varint(f"the gaps length of {name!r}")))
    else:
        cur.fail(f"kind byte 0x{kind:02x} of {name!r}: kind 3 is not defined (0 float32, 1 float split, 2 k-means)")
    return rec


def _rebuild_v3(rec: dict, where) -> np.ndarray:
    name, shape, size, parts = rec["name"], rec["shape"], rec["size"], rec["parts"]
    if rec["kind"] == KIND_FLOAT32:
        return np.frombuffer(parts[0], "<f4").astype(np.float32).reshape(shape)
    if rec["kind"] == KIND_SPLIT:
        r = _BitReader(parts[0], where, f"the exponents of {name!r}")
        code = _read_table(r, 256)
        exps = _decode_stream(parts[0], r.align(), code, size, where, f"the exponents of {name!r}")
        nb = rec["nb"]
        vals = _unpack(parts[1], size, nb)
        t = 23 - nb + (rec["flags"] & 1)
        signs = (vals >> np.uint32(nb - 1)) << np.uint32(31) if rec["flags"] & 1 else np.uint32(0)
        mant = (vals & np.uint32((1 << (23 - t)) - 1)) << np.uint32(t)
        u = signs | (exps.astype(np.uint32) << np.uint32(23)) | mant
        return u.astype(np.uint32).view(np.float32).reshape(shape)
    flags = rec["flags"] << 2
    cb = _read_codebook(parts[0], bool(flags & _RESERVED), where, name)
    alphabet = cb.size
    if flags & _SPARSE:
        pos, count = _read_gaps(rec, parts[2], where)
    else:
        count = size
    if (count == 0) != (len(parts[1]) == 0):
        raise FileFormatError(
            where, f"corrupt body: the values section of {name!r} holds {len(parts[1])} bytes for {count} values"
        )
    if count:
        v = _BitReader(parts[1], where, f"the values of {name!r}")
        vcode = _read_table(v, max(alphabet, 1))
        vals = _decode_stream(parts[1], v.align(), vcode, count, where, f"the values of {name!r}")
        if flags & _SPARSE and int(vals.min()) == 0:
            raise FileFormatError(where, f"corrupt body: {name!r} stores a zero as an entry")
        if int(vals.max()) >= alphabet:
            raise FileFormatError(where, f"corrupt body: {name!r} has a centroid index beyond its {alphabet} centroids")
    else:
        vals = np.zeros(0, np.uint8)
    if not flags & _SPARSE:
        return cb[vals].reshape(shape)
    flat = np.zeros(size, np.float32)
    flat[pos] = cb[vals]
    return flat.reshape(shape)


def _read_skips(g: _BitReader, n: int, what: str) -> np.ndarray:
    """A skip list of indices below ``n``: at least one, at most as many as are kept."""
    k = g.gamma()
    if k > n - k:
        g.fail(f"{k} skipped {what} of {n}: at most as many may be skipped as are kept")
    out, prev = [], -1
    for _ in range(k):
        prev += g.gamma()
        if prev >= n:
            g.fail(f"a skipped {what[:-1]} {prev} beyond the {n} {what}")
        out.append(prev)
    return np.array(out, np.int64)


def _read_gaps(rec: dict, buf: bytes, where) -> tuple[np.ndarray, int]:
    """Flat positions (C order) of the entries of a sparse tensor and their count, with
    the tensor's size checked against what its gaps cover before anything is allocated."""
    name, shape, size, flags = rec["name"], rec["shape"], rec["size"], rec["flags"] << 2
    g = _BitReader(buf, where, f"the gaps of {name!r}")
    m = g.get(8) + 1
    rows, cols = shape[0], size // shape[0]
    skip_r = _read_skips(g, rows, "rows") if flags & _SKIP_ROWS else np.zeros(0, np.int64)
    skip_c = _read_skips(g, cols, "columns") if flags & _SKIP_COLS else np.zeros(0, np.int64)
    kept_r, kept_c = rows - skip_r.size, cols - skip_c.size
    entries = rec["entries"]
    if entries:
        gcode = _read_table(g, m + 1)
        gsyms = _decode_stream(buf, g.align(), gcode, entries, where, f"the gaps of {name!r}")
    else:
        if g.align() != len(buf):
            g.fail("bytes after the header of a gap section without entries")
        gsyms = np.zeros(0, np.uint8)
    esc = gsyms == m
    ends = np.cumsum(np.where(esc, np.int64(m), gsyms.astype(np.int64) + 1))
    covered = int(ends[-1]) if ends.size else 0
    # at most M - 1 zeros after the last symbol; skipping at most half the rows and
    # columns, the tensor is at most 4 times what the gaps cover
    if not 0 <= kept_r * kept_c - covered < m:
        raise FileFormatError(
            where,
            f"corrupt header: shape {shape} of {name!r} does not fit its gaps: they "
            f"cover {covered} of the {kept_r} x {kept_c} elements scanned, fewer than {m} "
            "may follow",
        )
    p = ends[~esc] - 1
    if flags & _TRANSPOSED:
        i, j = p % kept_r, p // kept_r
    else:
        i, j = p // kept_c, p % kept_c
    if skip_r.size:
        i = np.delete(np.arange(rows), skip_r)[i]
    if skip_c.size:
        j = np.delete(np.arange(cols), skip_c)[j]
    return i * cols + j, int(p.size)


# --------------------------------------------------------------------------- version 2


def _encode_v2(entries: list, rebuilt: dict) -> tuple[dict, bytes]:
    tensors, body = [], []
    offset = 0

    def blob(data: bytes):
        nonlocal offset
        body.append(data)
        offset += len(data)
        return [offset - len(data), len(data), zlib.crc32(data)]

    for e in entries:
        entry = {"name": e.name, "shape": list(e.shape)}
        if e.indices is not None:
            rs = encode_relative(e.indices, e.index_bits, filler=0)
            gaps, values = _cover_tail(np.asarray(rs.gaps), np.asarray(rs.values), e.indices.size, e.index_bits)
            blobs = {
                "codebook": blob(np.asarray(e.codebook, "<f4").tobytes()),
                "values": blob(huffman.encode_blob(values, alphabet_size=1 << e.bits)),
                "gaps": blob(huffman.encode_blob(gaps, alphabet_size=1 << e.index_bits)),
            }
            entry.update(
                kind="compressed",
                bits=e.bits,
                index_bits=e.index_bits,
                nnz=int(np.count_nonzero(e.indices)),
                entries=int(values.size),
                blobs=blobs,
            )
        else:
            entry.update(kind="raw", blobs={"data": blob(e.data.astype("<f4").tobytes())})
        entry["crc"] = zlib.crc32(rebuilt[e.name].astype("<f4").tobytes())
        tensors.append(entry)
    return {"format": FORMAT, "tensors": tensors}, b"".join(body)


def _parse_preamble(data: bytes, where):
    if len(data) < _PREAMBLE.size + 4:
        raise FileFormatError(
            where,
            f"not an npquant compressed file: {len(data)} bytes, shorter than the {_PREAMBLE.size + 4}-byte preamble",
        )
    magic, version, reserved, hlen = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FileFormatError(where, f"not an npquant compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version not in READ_VERSIONS:
        raise FileFormatError(
            where,
            f"unsupported compressed-file version {version}; this npquant reads "
            f"versions {', '.join(map(str, READ_VERSIONS))}",
        )
    if reserved != 0:
        raise FileFormatError(where, f"corrupt preamble: reserved field is {reserved}, expected 0")
    start = _PREAMBLE.size
    if hlen > MAX_JSON_BYTES:
        raise FileFormatError(where, f"corrupt preamble: a {hlen}-byte header is larger than {MAX_JSON_BYTES}")
    if start + hlen + 4 > len(data):
        raise FileFormatError(where, f"truncated file: the header needs {hlen} + 4 bytes, {len(data) - start} remain")
    hbytes = data[start : start + hlen]
    (crc,) = struct.unpack_from("<I", data, start + hlen)
    if zlib.crc32(hbytes) != crc:
        raise FileFormatError(where, "corrupt header: CRC-32 mismatch")
    header = parse_json(hbytes, "the header", where)
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("tensors"), list):
        raise FileFormatError(where, f"corrupt header: expected format {FORMAT!r} with a list of tensors")
    return version, header, data[start + hlen + 4 :]


def _is_uint(v, hi=None) -> bool:
    return type(v) is int and v >= 0 and (hi is None or v <= hi)


def _check_layout(header: dict, body: bytes, where) -> list:
    """Every tensor entry and blob checked (names once, blobs tiling the body, CRCs),
    before anything is decoded; returns ``[(entry, {blob: bytes})]``."""
    seen, spans, out = set(), [], []
    for i, t in enumerate(header["tensors"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("kind") not in ("compressed", "raw"):
            raise FileFormatError(
                where, f"corrupt header: tensor entry {i} needs a name and a kind ('compressed' or 'raw')"
            )
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
        if (
            not isinstance(blobs, dict)
            or set(blobs) != need
            or not all(isinstance(v, list) and len(v) == 3 and all(_is_uint(e) for e in v) for v in blobs.values())
        ):
            raise FileFormatError(
                where, f"corrupt header: tensor {name!r} needs blobs {sorted(need)} of [offset, length, crc32]"
            )
        if t["kind"] == "compressed":
            bits, ibits, entries = t.get("bits"), t.get("index_bits"), t.get("entries")
            if not (_is_uint(bits, 8) and bits >= 1 and _is_uint(ibits, 8) and ibits >= 1 and _is_uint(entries)):
                raise FileFormatError(where, f"corrupt header: bits/index_bits/entries of {name!r} out of range")
        parts = {}
        for key, (off, length, _crc) in blobs.items():
            if off + length > len(body):
                raise FileFormatError(
                    where,
                    f"truncated body: blob {name}/{key} needs bytes [{off}, {off + length}), the body has {len(body)}",
                )
            spans.append((off, off + length, f"{name}/{key}"))
            parts[key] = body[off : off + length]  # a slice of bytes: the data is present
        out.append((t, parts, blobs))
    spans.sort()
    pos = 0
    for a, b, label in spans:
        if a != pos:
            raise FileFormatError(
                where,
                f"corrupt header: blob {label} starts at {a}, expected {pos} "
                "(blobs must tile the body without overlap or gap)",
            )
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
            raise FileFormatError(
                where,
                f"corrupt body: raw tensor {name!r} has {len(parts['data'])} bytes, shape {shape} needs {4 * size}",
            )
        return np.frombuffer(parts["data"], "<f4").astype(np.float32).reshape(shape)
    bits, ibits = t["bits"], t["index_bits"]
    if len(parts["codebook"]) != 4 * (1 << bits):
        raise FileFormatError(
            where,
            f"corrupt body: codebook of {name!r} has {len(parts['codebook'])} bytes, {bits} bits need {4 << bits}",
        )
    codebook = np.frombuffer(parts["codebook"], "<f4").astype(np.float32)
    try:
        values = huffman.decode_blob(parts["values"])  # sized by its own bytes
        gaps = huffman.decode_blob(parts["gaps"])
    except ValueError as e:
        raise FileFormatError(where, f"corrupt body: a stream of {name!r} does not decode ({e})") from None
    if values.size != t["entries"] or gaps.size != values.size:
        raise FileFormatError(
            where,
            f"corrupt body: {name!r} decodes {values.size} values and {gaps.size} gaps, the header says {t['entries']}",
        )
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
        raise FileFormatError(
            where,
            f"corrupt header: shape {shape} of {name!r} reaches {tail} elements past "
            f"its last entry; at most {(1 << ibits) - 1} may follow{hint}",
        )
    try:
        indices = decode_relative(gaps, values, shape, ibits)
    except ValueError as e:
        raise FileFormatError(where, f"corrupt body: {name!r} does not decode ({e})") from None
    return codebook[indices.astype(np.int64)].reshape(shape)


# --------------------------------------------------------------------------- reports


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def format_report(compressed: Compressed, file_size: int) -> str:
    """The per-layer table, the other tensors, Deep Compression's per-stage table (from
    :func:`stage_sizes`) and the total ratio against float32 bytes of every tensor.

    Parameters
    ----------
    compressed : Compressed
        The result of :func:`compress`.
    file_size : int
        The bytes of the file written.

    Returns
    -------
    str
        The tables and the summary lines.
    """
    rows = []
    for r in compressed.reports:
        coding = (
            f"{r.layout}"
            if r.layout == "dense"
            else f"{'T' if r.scan == 'transposed' else 'C'}, M={r.gap_limit}"
            + "".join(f", -{n} {w}" for n, w in zip(r.skipped, ("rows", "cols")) if n)
        )
        rows.append(
            [
                r.name,
                "x".join(map(str, r.shape)),
                str(r.params),
                f"{r.nnz} ({100 * r.nnz / r.params:.1f}%)",
                str(r.bits),
                str(r.index_bits),
                coding,
                str(r.codebook_bytes),
                f"{r.huffman_bits_per_weight:.2f}",
                str(r.compressed_bytes),
                f"{4 * r.params / r.compressed_bytes:.1f}x",
            ]
        )
    table = format_table(
        [
            "layer",
            "shape",
            "params",
            "non-zeros",
            "w bits",
            "idx bits",
            "gap code",
            "codebook B",
            "Huffman bits/nz",
            "compressed B",
            "ratio",
        ],
        rows,
    )
    parts = [table]
    if compressed.others:
        parts.append(
            format_table(
                ["other tensor", "shape", "params", "stored as", "bytes", "float32 B"],
                [
                    [
                        o.name,
                        "x".join(map(str, o.shape)) or "scalar",
                        str(o.params),
                        o.stored_as,
                        str(o.bytes),
                        str(4 * o.params),
                    ]
                    for o in compressed.others
                ],
            )
        )
    st = stage_sizes(compressed)
    parts.append(
        format_table(
            ["stage", "model B", "ratio", "weights B", "weights ratio"],
            [[s, str(a), _x(ra), str(b), _x(rb)] for s, a, ra, b, rb in st.rows()],
        )
    )
    original = st.original
    w_orig = sum(4 * r.params for r in compressed.reports)
    w_comp = sum(r.compressed_bytes for r in compressed.reports)
    lossy = [o.name for o in compressed.others if o.stored_as.startswith("k-means")]
    w_line = (
        f"\nweight tensors alone: {w_orig} float32 bytes -> {w_comp} bytes of codebooks, Huffman tables "
        f"and streams, {w_orig / w_comp:.1f}x"
        if w_comp
        else ""
    )
    given = [o.name for o in compressed.others if o.stored_as.startswith("shared")]
    bias = f"; {', '.join(lossy)} replaced by k-means codebooks (lossy)" if lossy else ""
    bias += f"; {', '.join(given)} stored as the codebooks and indices given" if given else ""
    bias = bias or "; other tensors exact"
    return (
        "\n\n".join(parts) + f"\n\nfloat32 size of all tensors: {original} bytes; compressed file: {file_size} "
        f"bytes (header and biases included{bias}); ratio {original / file_size:.1f}x{w_line}"
    )


def kmeans_study(
    state: dict, evaluate: Callable[[dict], float], bits: Iterable[int] = (8, 4, 2), *, seed: int = 0
) -> list[dict]:
    """k-means weight sharing of every 2-D/4-D tensor at each bit width (no pruning): the
    model size (float32 codebooks, indices packed at ``b`` bits, other tensors raw
    float32) and ``evaluate(weights)`` of the reconstructed weights.

    Parameters
    ----------
    state : dict of str to array
        The tensors by name.
    evaluate : callable
        Called with a dict of the reconstructed float32 tensors; its result is the score.
    bits : iterable of int, default (8, 4, 2)
        The bit widths, each 1..8.
    seed : int, default 0
        Keyword-only; seed of the k-means initialisation.

    Returns
    -------
    list of dict
        One per bit width: ``bits``, ``bytes``, ``ratio`` (float32 bytes / bytes),
        ``score`` (what ``evaluate`` returns, e.g. test accuracy).
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
