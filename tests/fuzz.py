"""Structured mutation fuzzing of every npquant file reader.

Seed files are real files written by npquant's own writers (a state dict as ``.npz`` and
``.safetensors``, a reference model, a quantized checkpoint, a Deep Compression file in
format versions 3 and 2, a Huffman blob). Each mutation is generic (bit flips, byte edits, truncation, extension,
chunks deleted, inserted or swapped, boundary integers written over length fields) or
aware of the format (npy headers, zip members rebuilt with valid CRCs, JSON headers
edited with their CRC or length fixed so the deeper checks are reached: giant, negative,
shrunk and grown shapes, duplicate names, shared blobs, deep nesting; the binary header of
a version-3 compressed file parsed and re-encoded with its size and CRC fixed: fields,
varints, records and sections edited).

Every mutated input must end in one of:

- ``rejected``: a ``ValueError`` or ``TypeError`` (npquant's ``FileFormatError`` is one);
- ``equal``: the reader returns exactly what the seed file holds (the mutation touched
  bytes that carry no meaning, such as zip timestamps or header padding);
- ``changed``: the mutation re-encoded a well-formed file with other content (a JSON
  value edited, a member removed, data changed with its CRC-32 recomputed), and the
  reader returns something else without complaint, as it should;
- ``unchecked``: a safetensors file reads as something else, exactly what an independent
  parser of its bytes finds (that format has no checksum, so no reader can notice a
  changed name or value; every other format here is checksummed).

A mutation is strict unless it says it re-encodes a valid file: a strict mutation must be
``rejected`` or read ``equal``.

Anything else is a failure: another exception, a silently different result, an input
that takes more than ``--timeout`` seconds, or one whose reading allocates more than
``MEMORY_FACTOR`` times the larger of its own size and what the seed file needs, plus a
slack (traced with :mod:`tracemalloc`, which sees NumPy's buffers; or, with ``--memory
rss``, the growth of the resident set under a 2 GiB address-space cap, cheaper and
coarser: see :class:`RssMeter`).

The test suite runs a bounded count (``tests/test_fuzz.py``). The long run::

    python tests/fuzz.py --count 100000 --jobs 2 --memory rss   # 10^5 mutations per reader

prints a table per reader and exits non-zero on any failure, writing each failing input
to ``--save DIR`` (default ``fuzz-failures/``) for reproduction.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

#: A reading may allocate at most this many times max(input size, seed's peak) + 1 MiB.
MEMORY_FACTOR = 4
MEMORY_SLACK = 1 << 20

OUTCOMES = ("rejected", "equal", "changed", "unchecked")
VALID = "valid"  # the tag of a mutation that re-encodes a well-formed file
FAILURES = ("other_exception", "silently_wrong", "memory", "hang")


# ----------------------------------------------------------------------------- seeds


def _state() -> dict:
    rng = np.random.default_rng(0)
    return {
        "fc1.weight": rng.normal(size=(100, 30)).astype(np.float32),  # > 4 kB: the shrunk-shape case
        "fc1.bias": rng.normal(size=100).astype(np.float32),
        "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "steps": np.array(7, np.int64),
        "mask": rng.integers(0, 2, (3, 5)).astype(bool),
        "codes": rng.integers(0, 255, (2, 3, 4)).astype(np.uint8),
        "empty": np.zeros((0, 3), np.float64),
    }


def _reference_arrays() -> dict:
    rng = np.random.default_rng(1)
    arch = {
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "name": "fc1", "in_features": 16, "out_features": 8},
            {"type": "relu"},
            {"type": "linear", "name": "fc2", "in_features": 8, "out_features": 3},
        ]
    }
    return {
        "__arch__": np.array(json.dumps(arch)),
        "__meta__": np.array(json.dumps({"accuracy": 0.5, "note": "fuzz seed"})),
        "fc1.weight": rng.normal(size=(8, 16)).astype(np.float32),
        "fc1.bias": np.zeros(8, np.float32),
        "fc2.weight": rng.normal(size=(3, 8)).astype(np.float32),
        "fc2.bias": np.ones(3, np.float32),
        "test_inputs": rng.random((20, 16)).astype(np.float32),
        "test_labels": rng.integers(0, 3, 20),
    }


def _layouts_state():
    """A state dict and configs whose version-3 file holds the layouts the first seed does
    not: dense weights, skipped rows and columns, a float16 codebook, k-means biases
    (``bias_bits``) with and without a reserved zero, a float32 scalar."""
    from npquant.compression.pipeline import LayerConfig

    rng = np.random.default_rng(3)
    masked = rng.normal(size=(40, 30)).astype(np.float32)
    masked[:10] = 0
    masked[:, :8] = 0
    zb = rng.normal(size=200).astype(np.float32)
    zb[rng.random(200) < 0.95] = 0
    state = {
        "dense.weight": rng.normal(size=(8, 6)).astype(np.float32),
        "masked.weight": masked,
        "half.weight": (rng.integers(-8, 8, (12, 10)) / 4).astype(np.float32),
        "zb.bias": zb,
        "nz.bias": rng.normal(size=30).astype(np.float32),
        "scalar": np.float32(-0.0).reshape(()),
    }
    configs = {"masked.weight": LayerConfig(sparsity=0.9), "half.weight": LayerConfig(sparsity=0.3, bits=4)}
    return state, configs, {"bias_bits": 3}


def _graph():
    """A small integer graph: quantize, conv with ReLU, a residual add, flatten, linear."""
    from npquant.models.graph import Graph, Node
    from npquant.qparams import QParams, QuantSpec

    rng = np.random.default_rng(4)
    u8 = QuantSpec(signed=False)
    x_qp, h_qp, a_qp, y_qp = (
        QParams(np.float32(s), z, u8) for s, z in ((0.02, 120), (0.015, 3), (0.03, 0), (0.05, 128))
    )
    w = {
        "conv": rng.integers(-127, 128, (3, 3, 3, 3)).astype(np.int8),
        "fc": rng.integers(-127, 128, (4, 3 * 4 * 4)).astype(np.int8),
    }
    wp = {
        k: {
            "weight": v,
            "weight_scale": np.full(v.shape[0], 0.01, np.float32),
            "weight_zero_point": np.zeros(v.shape[0], np.int32),
        }
        for k, v in w.items()
    }
    nodes = [
        Node("q", "quantize", ["x"], ["xq"], {"output": x_qp}),
        Node(
            "conv",
            "qconv2d",
            ["xq"],
            ["h"],
            {"output": h_qp, "padding": 1, "activation": "relu"},
            {**wp["conv"], "bias_q": rng.integers(-500, 500, 3).astype(np.int32)},
        ),
        Node("add", "qadd", ["h", "xq"], ["a"], {"output": a_qp}),
        Node("flat", "qflatten", ["a"], ["f"]),
        Node("fc", "qlinear", ["f"], ["l"], {"output": y_qp}, wp["fc"]),
        Node("dq", "dequantize", ["l"], ["y"]),
    ]
    return Graph(nodes, ["x"], ["y"], name="residual")


@dataclass
class Case:
    """One reader and its seed file."""

    name: str
    suffix: str
    data: bytes
    read: object  # path -> result
    kind: str  # "zip", "safetensors", "npqz" (version 2), "npqz3", "huffman"
    expected: object = None
    peak: int = 0
    mutators: list = field(default_factory=list)


def _write(writer, suffix) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "seed" + suffix)
        writer(p)
        with open(p, "rb") as f:
            return f.read()


def build_cases() -> list:
    """The seed files, each written by npquant and paired with the reader under test."""
    from npquant.compression import huffman
    from npquant.compression.pipeline import compress, read_compressed, write_compressed
    from npquant.models.checkpoint import load_quantized, quantize_checkpoint, save_quantized
    from npquant.models.io import load_reference, load_state_dict, load_weights, save_state_dict
    from npquant.qparams import QuantSpec

    state = _state()
    st_state = {k: v for k, v in state.items()}
    ref = _reference_arrays()
    ckpt, _ = quantize_checkpoint(
        {k: v for k, v in state.items() if v.dtype.kind == "f"}, QuantSpec(bits=4, symmetric=True, axis=0)
    )
    comp = compress({k: state[k] for k in ("fc1.weight", "fc1.bias", "conv.weight")}, sparsity=0.8)
    layouts, layout_configs, layout_kw = _layouts_state()
    comp_b = compress(layouts, layout_configs, **layout_kw)
    rng = np.random.default_rng(2)
    symbols = np.minimum(rng.geometric(0.3, 400) - 1, 15).astype(np.uint8)

    def ref_state(p):
        r = load_reference(p)
        return {"arch": r.arch, "meta": r.meta, **r.state, **{f"arrays/{k}": v for k, v in r.arrays.items()}}

    def huff(p):
        with open(p, "rb") as f:
            return {"symbols": huffman.decode_blob(f.read())}

    cases = [
        Case(
            "load_state_dict(.npz)", ".npz", _write(lambda p: save_state_dict(p, state), ".npz"), load_state_dict, "zip"
        ),
        Case(
            "load_state_dict(.safetensors)",
            ".safetensors",
            _write(lambda p: save_state_dict(p, st_state), ".safetensors"),
            load_state_dict,
            "safetensors",
        ),
        Case("load_reference", ".npz", _write(lambda p: np.savez(p, **ref), ".npz"), ref_state, "zip"),
        Case("load_quantized", ".npz", _write(lambda p: save_quantized(p, ckpt), ".npz"), load_quantized, "zip"),
        Case(
            "read_compressed", ".npqz", _write(lambda p: write_compressed(comp, p), ".npqz"), read_compressed, "npqz3"
        ),
        Case(
            "read_compressed(layouts)",
            ".npqz",
            _write(lambda p: write_compressed(comp_b, p), ".npqz"),
            read_compressed,
            "npqz3",
        ),
        Case(
            "read_compressed(v2)",
            ".npqz",
            _write(lambda p: write_compressed(comp, p, version=2), ".npqz"),
            read_compressed,
            "npqz",
        ),
        Case(
            "load_weights(.npqz)", ".npqz", _write(lambda p: write_compressed(comp, p), ".npqz"), load_weights, "npqz3"
        ),
        Case(
            "load_weights(checkpoint)", ".npz", _write(lambda p: save_quantized(p, ckpt), ".npz"), load_weights, "zip"
        ),
        Case("huffman.decode", ".huf", huffman.encode_blob(symbols, alphabet_size=16), huff, "huffman"),
    ]
    # Models built from files, judged by every array and setting the built model holds:
    # the small reference model above, and the bundled PyTorch PTQ file of the MLP (exported
    # from PyTorch) without its recorded test activations, which the reader does not use.
    from npquant.app.demo import default_models_dir
    from npquant.models.convert import from_pytorch_ptq
    from npquant.models.io import load_model

    ptq = {
        k: v
        for k, v in np.load(default_models_dir() / "mlp_ptq.npz").items()
        if not k.endswith(("_int", "_dequantized")) or k.endswith("weight_int")
    }
    cases += [
        Case(
            "load_model",
            ".npz",
            _write(lambda p: np.savez(p, **ref), ".npz"),
            lambda p: model_arrays(load_model(p)),
            "zip",
        ),
        Case(
            "from_pytorch_ptq",
            ".npz",
            _write(lambda p: np.savez(p, **ptq), ".npz"),
            lambda p: model_arrays(from_pytorch_ptq(p)),
            "zip",
        ),
    ]
    # A graph file (npquant.models.graph): an integer residual block, judged by its arrays and header.
    from npquant.models.graph import graph_to_arrays, load_graph, save_graph

    graph = _graph()
    cases.append(
        Case(
            "load_graph",
            ".npz",
            _write(lambda p: save_graph(p, graph), ".npz"),
            lambda p: graph_to_arrays(load_graph(p)),
            "zip",
        )
    )
    for c in cases:
        c.mutators = GENERIC + FORMAT_MUTATORS.get(c.kind, [])
        c.expected, c.peak = _seed_result(c)
    return cases


def model_arrays(obj, prefix: str = "", seen=None) -> dict:
    """Every array and scalar setting reachable from a model's attributes, by path, with
    each object's class name: two models with equal results compute the same thing."""
    seen = set() if seen is None else seen
    out = {}
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    out[prefix + "__class__"] = type(obj).__name__
    items = enumerate(obj) if isinstance(obj, (list, tuple)) else vars(obj).items()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, np.ndarray):
            out[key] = v
        elif isinstance(v, (int, float, str, bool, type(None), np.generic)):
            out[key] = np.asarray(v)
        elif isinstance(v, (list, tuple)) or hasattr(v, "__dict__"):
            out.update(model_arrays(v, key + ".", seen))
    return out


class TracedMeter:
    """Peak bytes allocated during a read, as :mod:`tracemalloc` sees them (NumPy's
    buffers included): exact; a reference-model read took 15.6 ms traced, 5.3 ms not. The default, and CI's."""

    slack = MEMORY_SLACK

    def __enter__(self):
        self._own = not tracemalloc.is_tracing()
        if self._own:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if self._own:
            tracemalloc.stop()

    def start(self):
        tracemalloc.reset_peak()

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1]


class RssMeter:
    """Growth of the resident set during a read (Linux: the peak is reset through
    ``/proc/self/clear_refs``), with the address space capped 2 GiB above its start so
    that a huge untouched allocation fails: cheap, coarser (page granularity, a larger
    slack). For the long run (``--memory rss``)."""

    slack = 32 << 20

    def __enter__(self):
        import resource

        self._old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + (2 << 30), self._old[1]))
        return self

    def __exit__(self, *exc):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, self._old)

    def start(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self._base = _status("VmRSS")

    def peak(self) -> int:
        return _status("VmHWM") - self._base


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


METERS = {"traced": TracedMeter, "rss": RssMeter}


def _seed_result(case: Case, meter=None):
    with tempfile.TemporaryDirectory() as d, meter or TracedMeter() as m:
        p = os.path.join(d, "seed" + case.suffix)
        with open(p, "wb") as f:
            f.write(case.data)
        case.read(p)  # a first read compiles and loads what reading needs
        m.start()
        out = case.read(p)
        peak = m.peak()
    return out, peak


# ------------------------------------------------------------------------- mutators

_BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**32, 2**40, 2**62, 2**63, 2**64 - 1]


def m_flip(d: bytes, rng) -> bytes:
    b = bytearray(d)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def m_bytes(d: bytes, rng) -> bytes:
    b = bytearray(d)
    for _ in range(int(rng.integers(1, 5))):
        b[int(rng.integers(0, len(b)))] = int(rng.choice([0, 0xFF, int(rng.integers(0, 256))]))
    return bytes(b)


def m_truncate(d: bytes, rng) -> bytes:
    return d[: int(rng.integers(0, len(d)))]


def m_extend(d: bytes, rng) -> bytes:
    n = int(rng.choice([1, 7, 64, len(d)]))
    tail = bytes(n) if rng.random() < 0.5 else rng.integers(0, 256, n).astype(np.uint8).tobytes()
    return d + tail


def m_delete(d: bytes, rng) -> bytes:
    i = int(rng.integers(0, len(d)))
    return d[:i] + d[i + int(rng.integers(1, 65)) :]


def m_insert(d: bytes, rng) -> bytes:
    i = int(rng.integers(0, len(d) + 1))
    return d[:i] + rng.integers(0, 256, int(rng.integers(1, 65))).astype(np.uint8).tobytes() + d[i:]


def m_duplicate(d: bytes, rng) -> bytes:
    i = int(rng.integers(0, len(d)))
    j = min(len(d), i + int(rng.integers(1, 257)))
    k = int(rng.integers(0, len(d) + 1))
    return d[:k] + d[i:j] + d[k:]


def m_swap(d: bytes, rng) -> bytes:
    n = int(rng.integers(1, 33))
    if len(d) < 2 * n:
        return m_flip(d, rng)
    i, j = sorted(int(x) for x in rng.choice(len(d) - n, 2, replace=False))
    if j < i + n:
        return m_flip(d, rng)
    b = bytearray(d)
    b[i : i + n], b[j : j + n] = d[j : j + n], d[i : i + n]
    return bytes(b)


def m_integer(d: bytes, rng) -> bytes:
    """A boundary integer written little-endian (2, 4 or 8 bytes) over a length field."""
    width = int(rng.choice([2, 4, 8]))
    v = int(rng.choice(_BOUNDARY)) % (1 << (8 * width))
    i = int(rng.integers(0, max(1, len(d) - width)))
    if rng.random() < 0.5:  # favour the front, where preambles and length fields live
        i = int(rng.integers(0, min(len(d), 64)))
    return d[:i] + v.to_bytes(width, "little") + d[i + width :]


GENERIC = [m_flip, m_bytes, m_truncate, m_extend, m_delete, m_insert, m_duplicate, m_swap, m_integer]


# JSON values that a header must survive.
def _deep(n: int) -> str:
    return "[" * n + "]" * n


_JSON_SWAPS = [
    lambda rng: 2**64,
    lambda rng: 2**33,
    lambda rng: -1,
    lambda rng: 1.5,
    lambda rng: None,
    lambda rng: "x",
    lambda rng: [],
    lambda rng: {},
    lambda rng: [2**33],
    lambda rng: [2**62, 2**62],
    lambda rng: [0],
    lambda rng: [-3, 4],
    lambda rng: True,
    lambda rng: "1" * 1000,
]


def _edit_json(obj, rng, depth=0):
    """A copy of ``obj`` with one random value, key or container changed."""
    if isinstance(obj, dict) and obj and (depth == 0 or rng.random() < 0.7):
        keys = list(obj)
        k = keys[int(rng.integers(0, len(keys)))]
        out = dict(obj)
        r = rng.random()
        if r < 0.15:
            del out[k]
        elif r < 0.25:
            out[k + "_x"] = out[k]
        else:
            out[k] = _edit_json(obj[k], rng, depth + 1)
        return out
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        out = list(obj)
        i = int(rng.integers(0, len(out)))
        r = rng.random()
        if r < 0.15:
            out.append(out[i])
        elif r < 0.25:
            del out[i]
        else:
            out[i] = _edit_json(out[i], rng, depth + 1)
        return out
    if isinstance(obj, int) and not isinstance(obj, bool) and rng.random() < 0.5:
        return int(rng.choice([obj * 2, obj + 1, obj - 1, obj * 1024, 0]))
    return _JSON_SWAPS[int(rng.integers(0, len(_JSON_SWAPS)))](rng)


def _json_text(obj, rng) -> str:
    """JSON text of an edited ``obj``, sometimes with a duplicate key or deep nesting."""
    r = rng.random()
    text = json.dumps(_edit_json(obj, rng) if r < 0.8 else obj)
    if r >= 0.8 and r < 0.9 and text.startswith("{") and len(text) > 2:
        first = text[1:].split(",")[0].rstrip("}")  # '"key": value' of the first entry
        text = "{" + first + "," + text[1:]
    elif r >= 0.9:
        text = '{"deep": ' + _deep(int(rng.choice([100, 2000, 100000]))) + "}"
    return text


# zip (npz): members rebuilt with valid CRCs, so the npy-level checks are reached


def zip_members(d: bytes) -> list:
    with zipfile.ZipFile(io.BytesIO(d)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def make_zip(members: list, deflate: bool = False) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names made on purpose
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
            for name, data in members:
                z.writestr(name, data)
    return buf.getvalue()


def npy_bytes(arr) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def _npy_header_edit(npy: bytes, rng) -> bytes:
    hlen = struct.unpack("<H", npy[8:10])[0]
    header = npy[10 : 10 + hlen].decode("latin1")
    data = npy[10 + hlen :]
    choices = [
        ("'shape': (", "'shape': (1099511627776, "),
        ("'shape': (", "'shape': (-1, "),
        ("'shape': (", "'shape': (4611686018427387904, 4611686018427387904, "),
        ("'shape': (", "'shape': ('a', "),
        ("'descr': '", "'descr': '|O"),
        ("'descr': '<f4'", "'descr': '<f8'"),
        ("'descr': '<f4'", "'descr': '>f4'"),
        ("'descr': '", "'descr': '|V8"),
        ("'descr': '<f4'", "'descr': [('a', '<f4')]"),
        ("'fortran_order': False", "'fortran_order': True"),
        ("'fortran_order': False", "'fortran_order': None"),
        ("{", "{'extra': 1, "),
        ("}", ""),
        ("'shape'", "'shapes'"),
    ]
    old, new = choices[int(rng.integers(0, len(choices)))]
    if rng.random() < 0.3:  # shrink or grow one dimension, keeping the header well formed
        import re

        m = re.search(r"'shape': \(([^)]*)\)", header)
        dims = [int(x) for x in m.group(1).split(",") if x.strip()] if m else []
        if dims:
            i = int(rng.integers(0, len(dims)))
            dims[i] = int(rng.choice([dims[i] // 3, dims[i] + 1, dims[i] * 2, 0]))
            inner = ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "")
            header = header[: m.start(1)] + inner + header[m.end(1) :]
    else:
        header = header.replace(old, new, 1)
    raw = header.encode("latin1")
    out = npy[:8] + struct.pack("<H", len(raw)) + raw + data
    return out, _npy_valid(out, len(data))


def _npy_valid(npy: bytes, nbytes: int) -> bool:
    """Whether NumPy reads ``npy`` as a plain array of exactly ``nbytes`` data bytes: then
    an edited header is a well-formed file of another array (``>f4`` for ``<f4``,
    Fortran order, a zero-size shape changed), which no reader can tell apart."""
    f = io.BytesIO(npy)
    try:  # the header only: np.load itself would allocate whatever size the header declares
        np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    except Exception:  # noqa: BLE001
        return False
    return (
        not dtype.hasobject
        and dtype.kind in "biufcUS"
        and dtype.fields is None
        and dtype.itemsize * int(np.prod(shape, dtype=object)) == nbytes == len(npy) - f.tell()
    )


def mz_npy_header(d: bytes, rng):
    ms = zip_members(d)
    i = int(rng.integers(0, len(ms)))
    npy, valid = _npy_header_edit(ms[i][1], rng)
    ms[i] = (ms[i][0], npy)
    return (make_zip(ms), VALID) if valid else make_zip(ms)


def mz_member_data(d: bytes, rng) -> bytes:
    ms = zip_members(d)
    i = int(rng.integers(0, len(ms)))
    name, npy = ms[i]
    r = rng.random()
    if r < 0.4:
        npy = npy[: int(rng.integers(0, len(npy)))]
    elif r < 0.7:
        npy = npy + bytes(int(rng.choice([1, 4, 400])))
    else:
        npy = m_flip(npy, rng)  # CRC recomputed: a value (or the header) changes legitimately
        ms[i] = (name, npy)
        return make_zip(ms), VALID
    ms[i] = (name, npy)
    return make_zip(ms)


def mz_members(d: bytes, rng) -> bytes:
    ms = zip_members(d)
    i = int(rng.integers(0, len(ms)))
    r = rng.random()
    if r < 0.3:
        ms.append(ms[i])  # the same name twice
    elif r < 0.45:
        ms.append((ms[i][0][:-4], ms[i][1]))  # "x" next to "x.npy"
    elif r < 0.6:
        ms[i] = (ms[i][0][:-4] + ".txt", ms[i][1])
    elif r < 0.75:
        del ms[i]
        return make_zip(ms), VALID
    elif r < 0.85:
        return make_zip(ms, deflate=True)  # still a valid npz: must read equal
    else:
        ms.append(("junk.npy", rng.integers(0, 256, 64).astype(np.uint8).tobytes()))
    return make_zip(ms)


def mz_json_member(d: bytes, rng) -> bytes:
    """Edit a JSON text member (``__arch__``, ``__meta__``, ``*.spec``), or a checkpoint's
    shape, codes, scale or format entries, as values of the right npy form."""
    ms = zip_members(d)
    texts = [i for i, (n, _) in enumerate(ms) if n.endswith((".spec.npy", "__arch__.npy", "__meta__.npy"))]
    others = [
        i
        for i, (n, _) in enumerate(ms)
        if n.endswith((".shape.npy", ".codes.npy", ".scale.npy", ".zero_point.npy", "__format__.npy"))
    ]
    if not texts and not others:
        return mz_npy_header(d, rng)
    if texts and (not others or rng.random() < 0.5):
        i = texts[int(rng.integers(0, len(texts)))]
        obj = json.loads(str(np.load(io.BytesIO(ms[i][1]))))
        ms[i] = (ms[i][0], npy_bytes(np.array(_json_text(obj, rng))))
        return make_zip(ms), VALID
    i = others[int(rng.integers(0, len(others)))]
    arr = np.load(io.BytesIO(ms[i][1]))
    name = ms[i][0]
    r = rng.random()
    if name.endswith(".shape.npy"):
        new = [
            np.array([2**33], np.int64),
            np.array([2**40, 2**40], np.int64),
            arr * 2,
            arr[:-1],
            np.array([-1] + list(arr[1:]), np.int64),
            arr.astype(np.float64),
        ][int(rng.integers(0, 6))]
    elif name.endswith(".codes.npy"):
        new = [arr[:-1], np.concatenate([arr, arr[:1]]), arr.astype(np.int16), arr.reshape(1, -1)][
            int(rng.integers(0, 4))
        ]
    elif name.endswith("__format__.npy"):
        new = np.array("npquant-quantized-checkpoint/2") if r < 0.5 else np.array(3)
    else:  # qparams: some edits stay valid (another scale), others must be refused
        new = [arr * 0, -arr, arr * np.nan, arr.reshape(-1)[:1], arr * 2, np.repeat(arr, 2)][int(rng.integers(0, 6))]
    ms[i] = (name, npy_bytes(new))
    base = name.rsplit(".", 2)[0]
    if rng.random() < 0.3 and any(n == base + ".spec.npy" for n, _ in ms):
        ms.append((base + ".npy", npy_bytes(np.zeros(3, np.float32))))  # next to a quantized tensor: refused
        return make_zip(ms)
    return (make_zip(ms), VALID) if name.endswith((".scale.npy", ".zero_point.npy")) else make_zip(ms)


# safetensors: header JSON edited, its length field fixed


def _st_split(d: bytes):
    n = struct.unpack("<Q", d[:8])[0]
    return json.loads(d[8 : 8 + n]), d[8 + n :]


def _st_join(header_text: str, body: bytes) -> bytes:
    h = header_text.encode()
    return struct.pack("<Q", len(h)) + h + body


def ms_header(d: bytes, rng) -> bytes:
    header, body = _st_split(d)
    r = rng.random()
    if r < 0.1:  # the same name twice, textually
        text = json.dumps(header)
        k = next(k for k in header if k != "__metadata__")
        text = "{" + json.dumps(k) + ": " + json.dumps(header[k]) + ", " + text[1:]
    elif r < 0.2:
        text = json.dumps({**header, "__metadata__": {"deep": _deep(3)}}).replace(
            '"[[[]]]"', _deep(int(rng.choice([100, 5000])))
        )
    else:
        text = _json_text(header, rng)
    return _st_join(text, body)


def ms_length(d: bytes, rng) -> bytes:
    n = struct.unpack("<Q", d[:8])[0]
    v = int(rng.choice([0, n - 1, n + 1, n + 8, 2**32, 2**63, 2**64 - 1, len(d)]))
    return struct.pack("<Q", v % 2**64) + d[8:]


# NPQZ: header JSON edited with its CRC fixed, blobs re-pointed


def _npqz_split(d: bytes):
    magic, version, reserved, hlen = struct.unpack_from("<4sHHI", d)
    return (magic, version, reserved), json.loads(d[12 : 12 + hlen]), d[12 + hlen + 4 :]


def _npqz_join(pre, header_text: str, body: bytes, fix_crc: bool = True) -> bytes:
    h = header_text.encode()
    crc = zlib.crc32(h) if fix_crc else zlib.crc32(h) ^ 1
    return struct.pack("<4sHHI", *pre, len(h)) + h + struct.pack("<I", crc) + body


def mq_header(d: bytes, rng) -> bytes:
    pre, header, body = _npqz_split(d)
    tensors = header["tensors"]
    r = rng.random()
    if r < 0.15:  # giant or grown shapes
        t = tensors[int(rng.integers(0, len(tensors)))]
        t["shape"] = [
            [2**33],
            [2**20, 2**20],
            [x * 2 for x in t["shape"]],
            [x + 40 for x in t["shape"]],
            [0] * len(t["shape"]),
        ][int(rng.integers(0, 5))]
    elif r < 0.25:  # every tensor's blobs point at the first tensor's
        for t in tensors:
            if t["kind"] == tensors[0]["kind"]:
                t["blobs"] = tensors[0]["blobs"]
    elif r < 0.3:
        tensors.append(dict(tensors[0]))  # the same name twice
    elif r < 0.35:  # 100 tensors sharing one blob
        header["tensors"] = [dict(tensors[0], name=f"t{i}") for i in range(100)]
    elif r < 0.4:
        return _npqz_join(
            pre,
            '{"format": "npquant-deep-compression", "tensors": ' + _deep(int(rng.choice([100, 100000]))) + "}",
            body,
        )
    else:  # a JSON edit with the CRC fixed may be a valid file (a renamed tensor)
        fix = rng.random() < 0.9
        out = _npqz_join(pre, _json_text(header, rng), body, fix_crc=fix)
        return (out, VALID) if fix else out
    return _npqz_join(pre, json.dumps(header), body)


def mq_preamble(d: bytes, rng) -> bytes:
    (magic, version, reserved), header, body = _npqz_split(d)
    r = rng.random()
    if r < 0.3:
        version = int(rng.choice([0, 1, 3, 0xFFFF]))
    elif r < 0.6:
        reserved = int(rng.choice([1, 0x100, 0xFFFF]))
    else:
        magic = b"NPQY"
    return _npqz_join((magic, version, reserved), json.dumps(header), body)


def mq_blob(d: bytes, rng) -> bytes:
    """Corrupt one blob and fix its CRC in the header (and the header's CRC), so the
    stream decoders and the tensor checksums are what must catch it."""
    pre, header, body = _npqz_split(d)
    t = header["tensors"][int(rng.integers(0, len(header["tensors"])))]
    key = list(t["blobs"])[int(rng.integers(0, len(t["blobs"])))]
    off, length, _ = t["blobs"][key]
    blob = body[off : off + length]
    blob = m_flip(blob, rng) if blob and rng.random() < 0.7 else (blob[:-1] if blob else b"\0")
    delta = len(blob) - length
    body = body[:off] + blob + body[off + length :]
    for tt in header["tensors"]:
        for v in tt["blobs"].values():
            if v[0] > off:
                v[0] += delta
    t["blobs"][key] = [off, len(blob), zlib.crc32(blob)]
    return _npqz_join(pre, json.dumps(header), body)


# NPQZ version 3: the binary header parsed (independently of npquant), edited, and written
# back with its file size and CRC-32 fixed, so the field checks and the decoders are reached;
# the CRC-32 of the rebuilt tensors stays, so only a renamed tensor may read back changed


def _uvarint(d: bytes, pos: int):
    x = shift = 0
    while True:
        b = d[pos]
        pos += 1
        x |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return x, pos


def _v(x: int) -> bytes:
    out = bytearray()
    while True:
        out.append((x & 0x7F) | (0x80 if x >> 7 else 0))
        x >>= 7
        if not x:
            return bytes(out)


def _v3_fields(kind: int) -> int:
    return {0: 0, 1: 1, 2: 4 if kind & 4 else 2}.get(kind & 3, 0)


def _v3_section_lengths(r: dict) -> list:
    size = int(np.prod(r["dims"], dtype=object)) if r["dims"] else 1
    k, f = r["kind"] & 3, r["fields"]
    if k == 0:
        return [4 * size]
    if k == 1:
        nb = ((r["kind"] >> 2) & 1) + 23 - (r["kind"] >> 3)
        return [f[0], -(-size * nb // 8)]
    return [f[0], f[1]] + ([f[3]] if r["kind"] & 4 else [])


def v3_split(d: bytes):
    """``(records, content CRC bytes, sections)`` of a version-3 file: each record a dict
    of ``name`` (bytes), ``kind``, ``dims``, ``fields`` (the varints after the dims), and
    its sections (a list of bytes)."""
    pos = 6
    _, pos = _uvarint(d, pos)
    count, pos = _uvarint(d, pos)
    recs = []
    for _ in range(count):
        n, pos = _uvarint(d, pos)
        name = d[pos : pos + n]
        kind = d[pos + n]
        pos += n + 1
        ndim, pos = _uvarint(d, pos)
        dims = []
        for _ in range(ndim):
            x, pos = _uvarint(d, pos)
            dims.append(x)
        fields = []
        for _ in range(_v3_fields(kind)):
            x, pos = _uvarint(d, pos)
            fields.append(x)
        recs.append({"name": name, "kind": kind, "dims": dims, "fields": fields})
    crc = d[pos : pos + 4]
    pos += 4
    sections = []
    for r in recs:
        lens = _v3_section_lengths(r)
        sections.append([d[pos + sum(lens[:i]) : pos + sum(lens[: i + 1])] for i in range(len(lens))])
        pos += sum(lens)
    return recs, crc, sections


def v3_join(
    recs: list,
    crc: bytes,
    sections: list,
    *,
    size_delta: int = 0,
    fix_crc: bool = True,
    count: int | None = None,
    overlong: bool = False,
) -> bytes:
    """A version-3 file of these parts (the inverse of :func:`v3_split`), with the file
    size (plus ``size_delta``) and the final CRC-32 computed; ``count`` overrides the
    tensor count, ``overlong`` writes it with a redundant last byte 0."""
    head = _v(len(recs) if count is None else count)
    if overlong:
        head = head[:-1] + bytes([head[-1] | 0x80, 0])
    for r in recs:
        head += (
            _v(len(r["name"]))
            + r["name"]
            + bytes([r["kind"]])
            + _v(len(r["dims"]))
            + b"".join(_v(x) for x in r["dims"])
            + b"".join(_v(x) for x in r["fields"])
        )
    rest = head + crc + b"".join(b"".join(s) for s in sections)
    n = 6 + len(rest) + 4
    n += len(_v(n + 1))
    n = max(0, n + size_delta)
    data = b"NPQZ" + struct.pack("<H", 3) + _v(n) + rest
    crc32 = zlib.crc32(data) ^ (0 if fix_crc else 1)
    return data + struct.pack("<I", crc32)


_BIG = [0, 1, 2**31, 2**33, 2**40, 2**62, 2**63 - 1, 2**64 - 1, 2**70]


def m3_field(d: bytes, rng):
    """One field of one record edited: the name (a valid file of another name), the kind
    byte, ndim, a dimension, a section length or the entry count."""
    recs, crc, sections = v3_split(d)
    r = recs[int(rng.integers(0, len(recs)))]
    what = int(rng.integers(0, 5))
    if what == 0:
        names = [b"", b"\xff\xfe", r["name"] + b"x", b"x" * 300, recs[0]["name"]]
        new = names[int(rng.integers(0, len(names)))]
        valid = bool(new) and new.isascii() and all(new != q["name"] for q in recs)
        r["name"] = new
        return (v3_join(recs, crc, sections), VALID) if valid else v3_join(recs, crc, sections)
    if what == 1:
        r["kind"] = int(rng.integers(0, 256)) if rng.random() < 0.5 else r["kind"] ^ (1 << int(rng.integers(0, 8)))
        while len(r["fields"]) < _v3_fields(r["kind"]):
            r["fields"].append(int(rng.integers(0, 64)))
        del r["fields"][_v3_fields(r["kind"]) :]
    elif what == 2:
        r["dims"] = ([*r["dims"], int(rng.integers(1, 4))] if rng.random() < 0.5 else r["dims"][:-1]) or [1] * 40
    elif what == 3 and r["dims"]:
        i = int(rng.integers(0, len(r["dims"])))
        x = r["dims"][i]
        r["dims"][i] = int(rng.choice([x + 1, x - 1 if x else 0, 2 * x, x // 2, 0] + _BIG))
    elif r["fields"]:
        i = int(rng.integers(0, len(r["fields"])))
        x = r["fields"][i]
        r["fields"][i] = int(rng.choice([x + 1, max(0, x - 1), 2 * x, 0] + _BIG))
    return v3_join(recs, crc, sections)


def m3_records(d: bytes, rng) -> bytes:
    """Records duplicated, dropped, swapped, multiplied; the tensor count edited; every
    shape made giant."""
    recs, crc, sections = v3_split(d)
    i = int(rng.integers(0, len(recs)))
    r = rng.random()
    if r < 0.15:
        recs.insert(i, dict(recs[i]))
        sections.insert(i, list(sections[i]))
    elif r < 0.3:
        del recs[i], sections[i]
    elif r < 0.45 and len(recs) > 1:
        j = (i + 1) % len(recs)
        recs[i], recs[j] = recs[j], recs[i]
        sections[i], sections[j] = sections[j], sections[i]
    elif r < 0.6:  # 100 tensors and the sections of one
        recs = [dict(recs[i], name=f"t{k}".encode()) for k in range(100)]
        sections = [sections[i]]
    elif r < 0.75:
        for q in recs:
            q["dims"] = [int(rng.choice([2**33, 2**20, 2**62]))] * len(q["dims"] or [1])
    else:  # the count disagrees with the records
        return v3_join(recs, crc, sections, count=max(0, len(recs) + int(rng.choice([-1, 1, 1000, 2**40]))))
    return v3_join(recs, crc, sections)


def m3_section(d: bytes, rng) -> bytes:
    """One section corrupted, its declared length (when it has one) kept in step; or two
    sections of the same kind exchanged between tensors."""
    recs, crc, sections = v3_split(d)
    i = int(rng.integers(0, len(recs)))
    j = int(rng.integers(0, len(sections[i])))
    sec = sections[i][j]
    r = rng.random()
    if r < 0.15:
        k = int(rng.integers(0, len(recs)))
        if recs[k]["kind"] & 3 == recs[i]["kind"] & 3 and j < len(sections[k]):
            sections[i][j], sections[k][j] = sections[k][j], sections[i][j]
    elif r < 0.5 and sec:
        sec = m_flip(sec, rng)
    elif r < 0.65:
        sec = sec[:-1]
    elif r < 0.8:
        sec = sec + bytes([int(rng.integers(0, 256))])
    elif r < 0.9 and sec:
        sec = bytes(len(sec))
    else:
        sec = sec[:1] + bytes(len(sec) * 4)
    if r >= 0.15:
        sections[i][j] = sec
    for q, s in zip(recs, sections):  # declared lengths follow their sections
        k = q["kind"] & 3
        slots = {1: [0], 2: [0, 1] + ([3] if q["kind"] & 4 else [])}.get(k, [])
        for sl, ss in zip(slots, s):
            if sl < len(q["fields"]):
                q["fields"][sl] = len(ss)
    return v3_join(recs, crc, sections)


def m3_envelope(d: bytes, rng) -> bytes:
    """The file size, the CRC-32 of the rebuilt tensors, a varint written overlong, the
    version, the final CRC-32."""
    recs, crc, sections = v3_split(d)
    r = rng.random()
    if r < 0.3:
        return v3_join(recs, crc, sections, size_delta=int(rng.choice([-1, 1, -6, 2**40])))
    if r < 0.45:
        return v3_join(recs, bytes(x ^ int(rng.integers(1, 256)) for x in crc[:1]) + crc[1:], sections)
    if r < 0.55:
        return v3_join(recs, crc, sections, fix_crc=False)
    if r < 0.65:
        data = v3_join(recs, crc, sections)
        return data[:4] + struct.pack("<H", int(rng.choice([2, 4, 0x103]))) + data[6:]
    return v3_join(recs, crc, sections, overlong=True)


FORMAT_MUTATORS = {
    "zip": [mz_npy_header, mz_member_data, mz_members, mz_json_member],
    "safetensors": [ms_header, ms_header, ms_length],
    "npqz": [mq_header, mq_header, mq_preamble, mq_blob],
    "npqz3": [m3_field, m3_field, m3_records, m3_section, m3_section, m3_envelope],
}


# ---------------------------------------------------------------------------- checking


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    return a == b


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout


def classify(case: Case, mutated: bytes, path: str, timeout: float, valid: bool = False, meter=None):
    """``(outcome, detail)`` of reading ``mutated`` with ``case.read``; ``meter`` (entered)
    measures the read's memory (default: tracemalloc, which must be tracing)."""
    meter = meter or TracedMeter()
    with open(path, "wb") as f:
        f.write(mutated)
    limit = MEMORY_FACTOR * max(len(mutated), case.peak) + meter.slack
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    meter.start()
    try:
        out = case.read(path)
    except _Timeout:
        return "hang", f"more than {timeout} s"
    except (ValueError, TypeError):
        outcome, detail = "rejected", ""
    except BaseException as e:  # noqa: BLE001 - that is what the fuzzer looks for
        return "other_exception", f"{type(e).__name__}: {str(e)[:200]}"
    else:
        outcome, detail = "equal", ""
        if not _same(case.expected, out):
            if case.kind == "safetensors":
                oracle = _st_oracle(mutated)
                ok = oracle is not None and _same(oracle, out)
                outcome = "unchecked" if ok else "silently_wrong"
                detail = "" if ok else "the reader's arrays differ from an independent parse of the bytes"
            elif valid:
                outcome = "changed"
            else:
                outcome, detail = "silently_wrong", "the reader returned something else than the seed file holds"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    peak = meter.peak()
    if peak > limit:
        return "memory", f"peak {peak} bytes > limit {limit}"
    return outcome, detail


_ST_ORACLE_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _st_oracle(data: bytes):
    """An independent reading of safetensors bytes (None if malformed), for the check."""
    try:
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        buf = data[8 + n :]
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            dt = np.dtype(_ST_ORACLE_DTYPES[v["dtype"]])
            out[k] = np.frombuffer(buf[a:b], dt).reshape(v["shape"]).astype(dt.newbyteorder("="))
        return out
    except Exception:  # noqa: BLE001
        return None


@dataclass
class Tally:
    counts: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome, item=None):
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if outcome in FAILURES:
            self.failures.append(item)

    def merge(self, other: Tally):
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.failures += other.failures
        self.seconds += other.seconds


def mutate(case: Case, i: int, seed: int = 0):
    """The ``i``-th mutation of ``case``: ``(bytes, mutator name, valid)``; deterministic."""
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), i])
    fn = case.mutators[int(rng.integers(0, len(case.mutators)))]
    out = fn(case.data, rng)
    valid = isinstance(out, tuple) and out[1] == VALID
    return (out[0] if isinstance(out, tuple) else out), fn.__name__, valid


def run_case(
    case: Case,
    start: int,
    count: int,
    *,
    seed: int = 0,
    timeout: float = 10.0,
    save: str | None = None,
    memory: str = "traced",
) -> Tally:
    """Run mutations ``start .. start + count - 1`` of ``case``, memory measured by
    ``memory`` (``"traced"`` or ``"rss"``, see :data:`METERS`)."""
    tally = Tally()
    t0 = time.perf_counter()
    with METERS[memory]() as meter:
        if memory != "traced":  # the seed's peak in the same unit
            case = Case(**{**vars(case), "peak": _seed_result(case, meter)[1]})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "input" + case.suffix)
            for i in range(start, start + count):
                data, how, valid = mutate(case, i, seed)
                outcome, detail = classify(case, data, path, timeout, valid, meter)
                item = None
                if outcome in FAILURES:
                    item = (case.name, i, how, outcome, detail)
                    if save:
                        os.makedirs(save, exist_ok=True)
                        fname = f"{case.name.replace('/', '_').replace('(', '_').replace(')', '')}-{i}{case.suffix}"
                        with open(os.path.join(save, fname), "wb") as f:
                            f.write(data)
                tally.add(outcome, item)
    tally.seconds = time.perf_counter() - t0
    return tally


def _worker(args):
    name, start, count, seed, timeout, save, memory = args
    case = next(c for c in build_cases() if c.name == name)
    return name, run_case(case, start, count, seed=seed, timeout=timeout, save=save, memory=memory)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fuzz every npquant file reader with structured mutations.")
    ap.add_argument("--count", type=int, default=10000, help="mutations per reader (default 10000)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    ap.add_argument(
        "--memory",
        choices=sorted(METERS),
        default="traced",
        help="how a read's memory is measured: traced (tracemalloc, exact; default) or rss "
        "(resident-set growth and a 2 GiB address-space cap; cheaper than tracing)",
    )
    ap.add_argument("--reader", action="append", help="only these readers (repeatable; default all)")
    ap.add_argument("--save", default="fuzz-failures", help="folder for failing inputs")
    args = ap.parse_args(argv)
    cases = build_cases()
    names = [c.name for c in cases if not args.reader or c.name in args.reader]
    chunk = max(1, min(2000, args.count // max(1, args.jobs)))
    tasks = [
        (n, s, min(chunk, args.count - s), args.seed, args.timeout, args.save, args.memory)
        for n in names
        for s in range(0, args.count, chunk)
    ]
    t0 = time.perf_counter()
    totals = {n: Tally() for n in names}
    if args.jobs > 1:
        import multiprocessing as mp

        os.environ["NUMBA_NUM_THREADS"] = "1"  # the jobs are the parallelism; no threads competing

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for done, (name, tally) in enumerate(pool.imap_unordered(_worker, tasks), 1):
                totals[name].merge(tally)
                print(f"[{time.perf_counter() - t0:7.0f} s] {done}/{len(tasks)} chunks", file=sys.stderr, flush=True)
    else:
        for task in tasks:
            name, tally = _worker(task)
            totals[name].merge(tally)
    wall = time.perf_counter() - t0
    cols = OUTCOMES + FAILURES
    print(f"{'reader':32s} " + " ".join(f"{c:>15s}" for c in cols) + f" {'cpu s':>8s}")
    bad = 0
    for n in names:
        t = totals[n]
        print(f"{n:32s} " + " ".join(f"{t.counts.get(c, 0):15d}" for c in cols) + f" {t.seconds:8.1f}")
        for f in t.failures[:10]:
            print("   FAIL", f)
        bad += len(t.failures)
    print(
        f"{len(names)} readers x {args.count} mutations, {args.jobs} jobs, memory {args.memory}, {wall:.1f} s wall; "
        f"{bad} failures" + (f" (inputs in {args.save}/)" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
