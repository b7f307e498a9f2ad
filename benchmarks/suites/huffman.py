"""Huffman decoding, ``npquant.huffman_decode``, against ``zlib.decompress`` on the same
symbols: the 4-bit k-means indices of a real weight tensor.

The symbols: the largest weight of the reference LeNet-300-100
(``npquant/data/lenet_300_100.npz``, ``fc2.weight``, 100 x 300 = 30,000 weights; its
``fc1.weight`` is 300 x 64, the models take 8 x 8 digits) clustered by
``npquant.kmeans_quantize(w, 4, keep_zeros=False)`` into 16 clusters (linear init,
defaults otherwise), one uint8 index per weight. The Huffman code is built from their
counts (``HuffmanCode.from_data``), the stream by ``huffman_encode``.

* ``numba`` is the public call a user makes to decode a stream with a known code,
  ``huffman_decode(stream, code, n, nbits=nbits)``: its validation is O(1) (the
  decoder tables are cached on the code), so it is timed with the call. It allocates
  its output.
* ``numba.kernel`` is the raw kernel writing into an output allocated once outside the
  timed region (so it leaves out the wrapper's checks and the allocation).
* ``python`` is the pure-Python bit-by-bit twin through the same public call
  (``backend="python"``); slow, it runs on the same symbols.
* ``zlib`` is ``zlib.decompress`` of the same uint8 symbols (one byte each) compressed
  by ``zlib.compress(symbols.tobytes(), 6)``. Single-threaded, as every implementation.

Every output is compared with the original symbols outside the timed region. ``info``
gives the entropy of the symbols, the Huffman stream's and zlib's bits per symbol
(``8 * len(compressed) / n``; neither counts a table or header, zlib's includes its own
2-byte header and 4-byte Adler-32).

Sizes: ``lenet`` (the tensor above), or a symbol count like ``1e6``: that many symbols
drawn i.i.d. (seeded) with the frequencies of the lenet indices. Both run by default.
"""

from __future__ import annotations

import zlib

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_count

NAME = "huffman"
DEFAULT_SIZES = ["lenet", "1e6"]
ZLIB_LEVEL = 6


def lenet_symbols() -> tuple[np.ndarray, str]:
    """The 4-bit k-means indices (uint8, C order) of the largest weight of LeNet-300-100,
    and the tensor's name."""
    from npquant.app.demo import default_models_dir
    from npquant.compression.kmeans import kmeans_quantize
    from npquant.models.io import load_reference

    state = load_reference(default_models_dir() / "lenet_300_100.npz").state
    name = max((k for k in state if k.endswith(".weight")), key=lambda k: state[k].size)
    res = kmeans_quantize(state[name], 4, keep_zeros=False)
    return np.ascontiguousarray(res.indices).ravel(), f"lenet_300_100 {name} {state[name].shape}"


def parse_size(label: str) -> int | None:
    """None for ``lenet``, else a symbol count."""
    if label == "lenet":
        return None
    return parse_count(label, NAME, "'lenet' or a symbol count like 1e6")[0]


def cases(ctx):
    from npquant._kernels import huffman as kernels
    from npquant.compression.huffman import HuffmanCode, entropy_bits, huffman_decode, huffman_encode

    base, tensor = lenet_symbols()
    for label in ctx.sizes:
        n = parse_size(label)
        if n is None:
            symbols, source = base, tensor
        else:
            rng = np.random.default_rng(ctx.seed)
            p = np.bincount(base, minlength=16) / base.size
            symbols = rng.choice(16, n, p=p).astype(np.uint8)
            source = f"{n:,} i.i.d. symbols with the frequencies of {tensor}"
        n = int(symbols.size)
        code = HuffmanCode.from_data(symbols, 16)
        stream, nbits = huffman_encode(symbols, code)
        blob = zlib.compress(symbols.tobytes(), ZLIB_LEVEL)
        k, lut_sym, lut_len, first, cnt, offset, syms, m_sym, m_bits, m_n = code._tables
        arr = np.frombuffer(stream, np.uint8)
        out = np.empty(n, code.dtype)
        info_out = np.zeros(3, np.int64)

        def public():
            return huffman_decode(stream, code, n, nbits=nbits)

        def kernel():
            kernels.decode(
                arr,
                np.int64(nbits),
                np.int64(n),
                np.int64(k),
                lut_sym,
                lut_len,
                first,
                cnt,
                offset,
                syms,
                np.int64(code.max_length),
                m_sym,
                m_bits,
                m_n,
                out,
                info_out,
            )
            return out

        def twin():
            return huffman_decode(stream, code, n, nbits=nbits, backend="python")

        def peer():
            return zlib.decompress(blob)

        kernel_check = compare(kernel(), symbols)
        if info_out[0] != kernels.OK:
            kernel_check = f"differs: status {info_out.tolist()}"
        impls = [
            Impl("numba", public, check=compare(public(), symbols)),
            Impl("numba.kernel", kernel, check=kernel_check),
            Impl("python", twin, check=compare(twin(), symbols)),
            Impl("zlib", peer, check=compare(np.frombuffer(peer(), np.uint8), symbols)),
        ]
        entropy = entropy_bits(symbols)
        huff = nbits / n
        info = {
            "symbols": source,
            "count": n,
            "alphabet": 16,
            "code lengths": " ".join(str(int(v)) for v in code.lengths),
            "entropy bits/symbol": round(entropy, 4),
            "huffman bits/symbol": round(huff, 4),
            "huffman - entropy": round(huff - entropy, 4),
            "zlib bits/symbol": round(8 * len(blob) / n, 4),
            "zlib level": ZLIB_LEVEL,
            "stream bytes": len(stream),
            "zlib bytes": len(blob),
        }
        yield Case(
            NAME,
            f"{'lenet' if label == 'lenet' else 'iid'} n={n:,}",
            float(n),
            "Msymbols/s",
            impls,
            targets={"zlib": 1.0},
            info=info,
        )
