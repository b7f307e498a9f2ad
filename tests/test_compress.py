import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from fuzz import v3_join, v3_split
from hypothesis import given, settings
from hypothesis import strategies as st

from npquant.compression import huffman
from npquant.compression import pipeline as C
from npquant.compression.pipeline import (
    MAGIC,
    LayerConfig,
    compress,
    default_config,
    format_report,
    kmeans_study,
    read_compressed,
    stage_sizes,
    write_compressed,
)
from npquant.models.io import FileFormatError


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=6).astype(np.float32),
        "fc.weight": rng.normal(size=(20, 54)).astype(np.float32),
        "fc.bias": rng.normal(size=20).astype(np.float32),
    }


def _same_bits(a, b):
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def _round_trips(comp, names):
    for version in (2, 3):
        back = read_compressed(comp.to_bytes(version))
        assert list(back) == list(names)
        for k in names:
            _same_bits(back[k], comp.rebuilt[k])


def test_round_trip_rebuilds_the_pruned_quantized_weights(tmp_path):
    state = _state()
    comp = compress(state, sparsity=0.8)
    path = tmp_path / "m.npqz"
    size = write_compressed(comp, path)
    assert size == os.path.getsize(path) == len(comp.to_bytes(3))
    data = path.read_bytes()
    assert data[:6] == MAGIC + struct.pack("<H", 3)  # the writer's default is version 3
    back = read_compressed(path)
    assert list(back) == list(state)
    for k, v in back.items():
        _same_bits(v, comp.rebuilt[k])
    # biases are stored exactly; weights are pruned to 80 % zeros and take at most 2^bits values
    _same_bits(back["fc.bias"], state["fc.bias"])
    for name in ("conv.weight", "fc.weight"):
        w = back[name]
        assert abs(np.mean(w == 0) - 0.8) < 0.01
        bits = default_config(state[name]).bits
        assert len(np.unique(w)) <= 2**bits
        # a surviving weight is never zeroed, a pruned one never revived
        kept = state[name] != 0
        assert np.all((w != 0) <= kept)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".npquant-")]  # no temporary left
    # version 2 is still written on request and read
    assert write_compressed(comp, tmp_path / "v2.npqz", version=2) == len(comp.to_bytes(version=2))
    for k, v in read_compressed(tmp_path / "v2.npqz").items():
        _same_bits(v, comp.rebuilt[k])
    with pytest.raises(ValueError, match="version"):
        write_compressed(comp, tmp_path / "v4.npqz", version=4)


def test_defaults_follow_the_paper():
    s = _state()
    assert (default_config(s["conv.weight"]).bits, default_config(s["conv.weight"]).index_bits) == (8, 8)
    assert (default_config(s["fc.weight"]).bits, default_config(s["fc.weight"]).index_bits) == (5, 5)


@pytest.mark.parametrize("bits, index_bits", [(1, 1), (2, 3), (4, 4), (8, 8)])
def test_configs_per_layer(bits, index_bits):
    state = _state(1)
    cfg = LayerConfig(sparsity=0.5, bits=bits, index_bits=index_bits)
    comp = compress(state, {"fc.weight": cfg, "conv.weight": cfg})
    _round_trips(comp, state)
    rep = {r.name: r for r in comp.reports}
    assert rep["fc.weight"].bits == bits and rep["fc.weight"].index_bits == index_bits
    t = {t["name"]: t for t in comp.header["tensors"]}["fc.weight"]  # version 2: float32 codebook
    assert (t["bits"], t["index_bits"], t["blobs"]["codebook"][1]) == (bits, index_bits, 4 << bits)
    assert rep["fc.weight"].codebook_bytes <= 1 + (4 << bits)


def test_no_pruning_and_quality_threshold():
    state = _state(2)
    dense = compress(state)
    assert all(r.nnz == r.params for r in dense.reports)
    assert all(r.layout == "dense" for r in dense.reports)  # no gaps to code: the dense layout is smaller
    _round_trips(dense, state)
    q = compress(state, quality=0.5)
    for r in q.reports:
        w = state[r.name]
        assert r.nnz == int(np.sum(np.abs(w) >= 0.5 * w.std()))


def test_report_uses_the_actual_file_size(tmp_path):
    comp = compress(_state(), sparsity=0.9)
    size = write_compressed(comp, tmp_path / "m.npqz")
    text = format_report(comp, size)
    original = sum(4 * v.size for v in _state().values())
    assert f"compressed file: {size} bytes" in text
    assert f"ratio {original / size:.1f}x" in text
    for r in comp.reports:
        assert r.compressed_bytes == r.codebook_bytes + r.values_bytes + r.gaps_bytes
        assert r.name in text
    for o in comp.others:
        assert o.name in text and o.stored_as in ("float32", "float split")
    assert "Huffman coded (the file)" in text and "other tensors exact" in text


def test_stage_sizes_by_hand():
    """The paper's three stages for a hand-checkable layer: 2 non-zeros of 20, 2-bit codebook,
    3-bit indices; the gap of 17 needs 2 fillers at 3 bits (7 + 7 + 3)."""
    w = np.zeros((4, 5), np.float32)
    w[0, 1], w[3, 3] = 1.5, -2.0
    b = np.arange(3, dtype=np.float32)
    comp = compress({"w": w, "b": b}, {"w": LayerConfig(bits=2, index_bits=3)})
    r = comp.reports[0]
    assert (r.nnz, r.entries) == (2, 4)
    s = stage_sizes(comp)
    assert (s.weights_original, s.weights_pruned, s.weights_quantized) == (80, -(-4 * 35 // 8), -(-4 * 5 // 8) + 16)
    assert (s.original, s.pruned, s.quantized) == (92, 18 + 12, 3 + 16 + 12)
    assert s.huffman == len(comp.to_bytes(3)) and s.weights_huffman == r.compressed_bytes
    assert s.layers == (("w", 80, 18, 19, r.compressed_bytes),)
    rows = s.rows()
    assert [x[0] for x in rows][:3] == ["float32", "pruned", "quantized"] and rows[0][2] == 1.0
    assert rows[-1][1:3] == (s.huffman, 92 / s.huffman)
    with pytest.raises(TypeError, match="Compressed"):
        stage_sizes({"w": w})
    empty = compress({"e": np.zeros((0, 3), np.float32)})
    assert stage_sizes(empty).rows()[0][1:] == (0, None, 0, None)
    assert "ratio 0.0x" in format_report(empty, len(empty.to_bytes(3)))


def test_biases_with_their_own_codebook_are_lossy_and_rebuilt_exactly():
    state = _state(5)
    state["zb"] = np.where(np.arange(40) % 5 == 0, np.linspace(-1, 1, 40), 0).astype(np.float32)
    comp = compress(state, sparsity=0.5, bias_bits=3)
    others = {o.name: o for o in comp.others}
    assert others["fc.bias"].stored_as == "k-means 3 bits"
    assert len(np.unique(comp.rebuilt["fc.bias"])) <= 8
    assert not np.array_equal(comp.rebuilt["fc.bias"], state["fc.bias"])  # lossy, and said so
    np.testing.assert_array_equal(comp.rebuilt["zb"] == 0, state["zb"] == 0)  # zeros stay exact zeros
    _round_trips(comp, state)
    assert "replaced by k-means codebooks (lossy)" in format_report(comp, len(comp.to_bytes(3)))
    s = stage_sizes(comp)
    assert s.quantized == s.weights_quantized + sum(-(-o.params * 3 // 8) + 32 for o in comp.others)
    with pytest.raises(ValueError, match="bias_bits"):
        compress(state, bias_bits=9)


def test_version_3_layouts():
    rng = np.random.default_rng(7)
    masked = rng.normal(size=(40, 30)).astype(np.float32)
    masked[:12] = 0
    masked[:, 20:] = 0
    cols = rng.normal(size=(30, 64)).astype(np.float32)
    cols[:, rng.random(64) < 0.8] = 0  # dense columns: the transposed scan is shorter
    state = {
        "masked": masked,
        "cols": cols,
        "half": (rng.integers(-8, 8, (12, 10)) / 4).astype(np.float32),
        "tiny": np.float32([0.1]),
        "scalar": np.float32(3.0).reshape(()),
        "empty": np.zeros((0, 3), np.float32),
        "odd": np.tile(np.array([-0.0, 0.0, 1e-45, -3e38, 1.0, 2.0, -0.5, 0.7], np.float32), 8),
        "zeros": np.zeros(64, np.float32),
    }
    comp = compress(
        state, {"masked": LayerConfig(sparsity=0.7), "cols": LayerConfig(sparsity=0.0), "half": LayerConfig(bits=4)}
    )
    rep = {r.name: r for r in comp.reports}
    assert rep["masked"].layout == "sparse" and rep["masked"].skipped == (12, 10)
    assert rep["cols"].scan == "transposed"
    assert rep["half"].codebook_coding == "float16" and rep["masked"].codebook_coding == "sorted keys"
    others = {o.name: o.stored_as for o in comp.others}
    assert others == {
        "tiny": "float32",
        "scalar": "float32",
        "empty": "float32",
        "odd": "float split",
        "zeros": "float split",
    }
    assert {o.name: o.bytes for o in comp.others}["zeros"] < 16  # 64 exact zeros: one exponent, no mantissa
    _round_trips(comp, state)


def test_a_lone_weight_and_all_zeros():
    w = np.zeros((100, 100), np.float32)
    w[0, 0] = 1.0
    comp = compress({"w": w}, {"w": LayerConfig(bits=2, index_bits=3)})
    _round_trips(comp, ["w"])
    assert comp.reports[0].gaps_bytes < 20  # 9999 zeros after it: 39 escapes of 255, coded in few bits
    z = compress(
        {"w": np.zeros((20, 30), np.float32), "v": np.zeros(7, np.float32)},
        {"w": LayerConfig(bits=1, index_bits=2)},
        bias_bits=2,
    )
    _round_trips(z, ["w", "v"])
    assert not read_compressed(z.to_bytes(3))["w"].any()


_floats = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    sparsity=st.sampled_from([None, 0.0, 0.5, 0.9, 0.99]),
    bits=st.integers(1, 8),
    index_bits=st.integers(1, 8),
    bias_bits=st.sampled_from([None, 1, 4]),
    bias=st.lists(_floats, min_size=0, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(rows, cols, sparsity, bits, index_bits, bias_bits, bias, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) < 0.3] = 0
    state = {"w": w, "k": rng.normal(size=(2, 1, 2, rows)).astype(np.float32), "b": np.array(bias, np.float32)}
    cfg = LayerConfig(sparsity=sparsity, bits=bits, index_bits=index_bits)
    comp = compress(state, {"w": cfg, "k": cfg}, bias_bits=bias_bits)
    _round_trips(comp, state)


# ---- version-3 building blocks ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=300).filter(any))
def test_length_tables_round_trip(counts):
    code = huffman.HuffmanCode.from_counts(np.array(counts))
    w = C._table_bits(code.lengths)
    r = C._BitReader(w.to_bytes(), "<t>", "a table")
    assert C._read_table(r, len(counts)) == code
    assert r.align() == len(w.to_bytes())


def test_length_table_extremes_and_errors():
    long = np.array(list(range(1, 33)) + [32], np.uint8)  # a complete code up to 32 bits
    for lengths in (long, long[::-1], np.array([0, 0, 1, 0]), np.array([2, 0, 0, 0, 0, 2, 2, 0, 2])):
        w = C._table_bits(lengths)
        assert np.array_equal(C._read_table(C._BitReader(w.to_bytes(), "<t>", "t"), len(lengths)).lengths, lengths)

    def table(*parts):
        w = C._Bits()
        for value, n in parts:
            w.put(value, n) if n else w.gamma(value)
        return C._BitReader(w.to_bytes() + b"\0" * 8, "<t>", "a table")

    cases = [
        (table((1, 0), (5, 0)), 4, "covers symbols 0..4"),
        (table((1, 0), (3, 0), (0, 5), (0, 3), (1, 0), (0, 3), (1, 0)), 8, "two runs"),
        (table((1, 0), (3, 0), (0, 5), (0, 3), (5, 0)), 8, "reaches past"),
        (table((1, 0), (2, 0), (31, 5), (0b0010, 4), (1, 0)), 4, "code length 34"),
        (table((1, 0), (2, 0), (0, 5), (0b011, 3)), 4, "code length 0"),
        (table((1, 0), (2, 0), (1, 5), (1, 1)), 4, "not a valid code"),
        (table((0, 41)), 4, "Elias-gamma"),
    ]
    for reader, n, match in cases:
        with pytest.raises(FileFormatError, match=match):
            C._read_table(reader, n)
    with pytest.raises(FileFormatError, match="truncated"):
        C._read_table(C._BitReader(b"", "<t>", "t"), 4)


@pytest.mark.parametrize(
    "values, coding",
    [
        ([0.25, 0.5, -2.0, 0.0, -0.0, 2.0**-24, 65504.0], "float16"),
        ([-3.5, -1e-3, -1e-40, 0.0, 1e-40, 0.1, 0.2, 3e38], "sorted keys"),
        ([0.3, 0.1, 0.2], "float32"),  # not sorted: keys do not apply
        ([0.1], "float32"),
        ([], "float32"),
    ],
)
def test_codebook_codings_are_exact(values, coding):
    cb = np.array(values, np.float32)
    data, name = C._codebook_section(cb)
    assert name == coding
    for reserved in (False, True):
        back = C._read_codebook(data, reserved, "<t>", "x")
        _same_bits(back[int(reserved) :], cb)
        if reserved:
            assert back[0].view(np.uint32) == 0
    if cb.size:
        assert len(data) <= 1 + 4 * cb.size
        with pytest.raises(FileFormatError, match="after the"):
            C._read_codebook(data + b"\0", False, "<t>", "x")
        with pytest.raises(FileFormatError, match="truncated"):
            C._read_codebook(data[:-1], False, "<t>", "x")


@pytest.mark.parametrize("nb", [0, 1, 7, 8, 13, 23, 24])
def test_pack_unpack(nb):
    rng = np.random.default_rng(nb)
    for count in (0, 1, 5, 8193):
        v = rng.integers(0, 1 << nb, count, dtype=np.uint64).astype(np.uint32)
        data = C._pack(v, nb, chunk=1000)
        assert len(data) == -(-count * nb // 8)
        np.testing.assert_array_equal(C._unpack(data, count, nb, chunk=777), v)


def test_split_floats_keep_every_bit():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32).view(np.float32)  # NaNs too
    for arr in (x, np.float32([-0.0, 0.0]), np.float32([1.0, 2.0, 4.0]), np.float32([0.5, 0.75]) * -1):
        exps, signs, t, mant = C._split_float(arr)
        rec = {
            "name": "x",
            "shape": arr.shape,
            "size": arr.size,
            "kind": 1,
            "flags": int(signs) | t << 1,
            "nb": int(signs) + 23 - t,
            "parts": [C._stream_section(exps.astype(np.int64), 256), mant],
        }
        _same_bits(C._rebuild_v3(rec, "<t>"), arr)


# ---- corruption -------------------------------------------------------------------


def _blob(version=2):
    return compress(_state(3), sparsity=0.7).to_bytes(version)


def test_wrong_magic_version_and_truncation():
    data = _blob()
    with pytest.raises(ValueError, match="magic"):
        read_compressed(b"ZZZZ" + data[4:])
    with pytest.raises(ValueError, match="version 4"):
        read_compressed(data[:4] + struct.pack("<H", 4) + data[6:])
    with pytest.raises(ValueError, match="reserved field is 1"):
        read_compressed(data[:6] + struct.pack("<H", 1) + data[8:])
    with pytest.raises(ValueError, match="preamble"):
        read_compressed(data[:10])
    with pytest.raises(ValueError, match="truncated"):
        read_compressed(data[:40])
    for cut in (len(data) - 1, len(data) - 100, len(data) // 2):
        with pytest.raises(ValueError):
            read_compressed(data[:cut])
    with pytest.raises(ValueError, match="body"):
        read_compressed(data + b"\0")
    with pytest.raises(TypeError, match="source must be a path"):
        read_compressed(3)
    with pytest.raises(TypeError, match="source must be a path"):
        read_compressed(None)


def test_version_3_truncation_and_extension_name_what_was_expected():
    data = _blob(3)
    for cut in (len(data) - 1, len(data) // 2, 9):
        with pytest.raises(
            FileFormatError, match=f"truncated file: the header declares {len(data)} bytes, the file has {cut}"
        ):
            read_compressed(data[:cut])
    with pytest.raises(FileFormatError, match="corrupt file: the header declares"):
        read_compressed(data + b"\0")
    with pytest.raises(FileFormatError, match="CRC-32 mismatch"):
        read_compressed(data[:-1] + bytes([data[-1] ^ 1]))
    for short in (data[:6], data[:7]):
        with pytest.raises(FileFormatError):
            read_compressed(short)


@pytest.mark.parametrize("version", [2, 3])
def test_random_corruption_is_always_detected(version):
    data = bytearray(_blob(version))
    rng = np.random.default_rng(0)
    for _ in range(200):
        bad = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(bad)))
            bad[i] ^= int(rng.integers(1, 256))
        with pytest.raises(ValueError):
            read_compressed(bytes(bad))


def test_consistent_but_wrong_header_is_caught():
    # a header edited together with its CRC: the decoders must still refuse it
    data = _blob()
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12 : 12 + hlen])
    body = data[16 + hlen :]

    def rebuild(h):
        hb = json.dumps(h).encode()
        return MAGIC + struct.pack("<HHI", 1, 0, len(hb)) + hb + struct.pack("<I", zlib.crc32(hb)) + body

    for edit in (
        lambda h: h["tensors"][0].__setitem__("shape", [6, 3, 3, 4]),
        lambda h: h["tensors"][0].__setitem__("entries", 1),
        lambda h: h["tensors"][0].__setitem__("bits", 9),
        lambda h: h["tensors"][0].__setitem__("kind", "other"),
        lambda h: h.__setitem__("format", "zip"),
    ):
        h = json.loads(json.dumps(header))
        edit(h)
        with pytest.raises(ValueError):
            read_compressed(rebuild(h))


def _edited(data, edit):
    recs, crc, sections = v3_split(data)
    edit(recs, sections)
    return v3_join(recs, crc, sections)


def test_version_3_fields_edited_with_the_crc_fixed_are_refused():
    comp = compress(_state(3), {"fc.weight": LayerConfig(sparsity=0.7)}, sparsity=0.0)
    data = comp.to_bytes(3)
    recs, _, _ = v3_split(data)
    kinds = [r["kind"] for r in recs]
    assert [k & 7 for k in kinds] == [2, 0, 6, 5]  # conv.weight dense, conv.bias float32, fc.weight sparse,
    # fc.bias float split
    assert v3_join(*v3_split(data)) == data

    def setter(i, key, value):
        return lambda recs, secs: recs[i].__setitem__(key, value)

    def field(i, j, value):
        return lambda recs, secs: recs[i]["fields"].__setitem__(j, value)

    cases = [
        (setter(2, "dims", [20, 54, 1]), "rebuilt tensors do not match"),  # the shapes are checksummed
        (setter(2, "dims", [20, 55]), "does not fit its gaps"),
        (setter(2, "dims", [2**40, 54]), "does not fit its gaps"),
        (setter(0, "dims", [6, 3, 3, 4]), "does not decode"),
        (setter(1, "dims", [7]), "truncated body|corrupt file"),
        (setter(3, "dims", [2**62]), "truncated body"),
        (setter(2, "dims", [2] * 33), "at most 32"),
        (setter(1, "name", b"fc.weight"), "appears twice"),
        (setter(1, "name", b""), "empty name"),
        (setter(1, "name", b"\xff"), "not UTF-8"),
        (setter(0, "kind", 3), "kind 3"),
        (setter(0, "kind", 2 | 128), "bit 7"),
        (setter(0, "kind", 2 | 8 | 16), "need the sparse layout"),
        (setter(3, "kind", 1 | 4 | 24 << 3), "at most 23"),
        (setter(3, "kind", 4), "no flags"),
        (field(2, 2, 1), "does not decode|does not fit"),
        (field(2, 0, 1), "truncated|corrupt"),
    ]
    for edit, match in cases:
        with pytest.raises(FileFormatError, match=match):
            read_compressed(_edited(data, edit))

    def sparse_without_zero(recs, secs):
        recs[2]["kind"] &= ~16

    with pytest.raises(FileFormatError, match="no reserved zero"):
        read_compressed(_edited(data, sparse_without_zero))
    v = compress({"b": np.where(np.arange(50) % 9 == 0, 1.0, 0).astype(np.float32)}, bias_bits=2).to_bytes(3)
    assert v3_split(v)[0][0]["kind"] & 4  # a sparse 1-D tensor

    def transposed(recs, secs):
        recs[0]["kind"] |= 8

    with pytest.raises(FileFormatError, match="need 2 or more"):
        read_compressed(_edited(v, transposed))


def test_version_3_varints_and_skip_lists():
    data = compress({"w": np.eye(8, dtype=np.float32)}).to_bytes(3)
    with pytest.raises(FileFormatError, match="overlong varint"):
        read_compressed(v3_join(*v3_split(data), overlong=True))
    with pytest.raises(FileFormatError, match="corrupt header: the name length of tensor 1"):
        read_compressed(v3_join(*v3_split(data), count=2))
    eleven = data[:6] + b"\xff" * 10 + b"\x01" + data[7:]
    with pytest.raises(FileFormatError, match="longer than 10 bytes"):
        read_compressed(eleven)

    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 12)).astype(np.float32)
    w[3:6] = 0
    w[:, 2] = 0
    comp = compress({"w": w}, {"w": LayerConfig(sparsity=0.5, bits=2)})
    assert comp.reports[0].skipped == (3, 1)
    _round_trips(comp, ["w"])
    # skipped rows beyond the tensor, or more than are kept: the gap section rebuilt by hand
    recs, crc, secs = v3_split(comp.to_bytes(3))
    for rows, match in (([9, 10], "beyond the 10 rows"), (list(range(6)), "at most as many")):
        g = C._Bits()
        g.put(comp.reports[0].gap_limit - 1, 8)
        C._skip_bits(g, np.array(rows))
        secs[0][2] = g.to_bytes() + b"\0" * 40
        recs[0]["fields"][3] = len(secs[0][2])
        with pytest.raises(FileFormatError, match=match):
            read_compressed(v3_join(recs, crc, secs))


def test_giant_declared_sizes_are_refused_before_allocating():
    w = np.random.default_rng(0).normal(size=(32, 24)).astype(np.float32)
    data = compress({"w": w, "b": np.ones(5, np.float32)}, {"w": LayerConfig(sparsity=0.9)}).to_bytes(3)
    assert v3_split(data)[0][0]["kind"] & 4  # sparse
    tracemalloc.start()
    try:
        for dims in ([2**33, 24], [2**20, 2**20], [32, 2**40]):
            tracemalloc.reset_peak()
            with pytest.raises(FileFormatError):
                read_compressed(_edited(data, lambda recs, secs, d=dims: recs[0].__setitem__("dims", d)))
            assert tracemalloc.get_traced_memory()[1] < 1 << 20
        tracemalloc.reset_peak()
        with pytest.raises(FileFormatError, match="gaps of .w. does not decode"):  # more than the stream holds
            read_compressed(_edited(data, lambda recs, secs: recs[0]["fields"].__setitem__(2, 2**40)))
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


# ---- study and bad input -----------------------------------------------------------


def test_kmeans_study_sizes_shrink_with_bits():
    state = _state(4)
    rows = kmeans_study(state, lambda w: float(np.mean([np.abs(w[k] - state[k]).mean() for k in w])))
    assert [r["bits"] for r in rows] == [8, 4, 2]
    assert rows[0]["bytes"] > rows[1]["bytes"] > rows[2]["bytes"]
    assert rows[0]["score"] < rows[1]["score"] < rows[2]["score"]  # error grows as bits shrink
    packed = sum(4 * 2**4 + -(-state[k].size * 4 // 8) for k in ("conv.weight", "fc.weight"))
    assert rows[1]["bytes"] == packed + 4 * (6 + 20)


@pytest.mark.parametrize(
    "state, kw, exc, match",
    [
        ({}, {}, ValueError, "non-empty dict"),
        ({"w": np.ones((2, 2), int)}, {}, TypeError, "float array"),
        ({"w": np.array([[np.nan, 1.0]])}, {}, ValueError, "NaN"),
        ({"w": np.ones((2, 2))}, {"configs": {"v": LayerConfig()}}, ValueError, "not in state"),
        ({"w": np.ones((2, 2))}, {"configs": {"w": LayerConfig(bits=9)}}, ValueError, "bits of w"),
        ({"w": np.ones((2, 2))}, {"configs": {"w": LayerConfig(index_bits=0)}}, ValueError, "index_bits of w"),
    ],
)
def test_compress_rejects(state, kw, exc, match):
    with pytest.raises(exc, match=match):
        compress(state, **kw)


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    comp = compress(_state(), sparsity=0.5)
    path = tmp_path / "m.npqz"
    write_compressed(comp, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_compressed(compress(_state(9), sparsity=0.1), path)
    assert path.read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".npquant-")]


# ---- weight sharing given (k-means QAT) and unpruned tensors --------------------------


def _shared_state(seed=0):
    """A pruned weight with a fine-tuned-like codebook (unsorted, not float16-exact, code 0 the
    reserved zero), an unpruned one without reserved zero, and a shared bias."""
    rng = np.random.default_rng(seed)
    cb_p = np.concatenate([[0.0], rng.normal(size=31)]).astype(np.float32)
    idx_p = rng.integers(1, 32, (30, 40)).astype(np.uint8)
    idx_p[rng.random((30, 40)) < 0.85] = 0  # pruned: exact zeros
    cb_d = rng.normal(size=4).astype(np.float32)
    idx_d = rng.integers(0, 4, (4, 3, 3, 3)).astype(np.uint8)
    cb_b = rng.normal(size=8).astype(np.float32)
    idx_b = rng.integers(0, 8, 30).astype(np.uint8)
    shared = {"fc.weight": (cb_p, idx_p, True), "conv.weight": (cb_d, idx_d, False), "fc.bias": (cb_b, idx_b, False)}
    state = {
        "conv.weight": cb_d[idx_d],
        "fc.weight": cb_p[idx_p],
        "fc.bias": cb_b[idx_b],
        "other": rng.normal(size=5).astype(np.float32),
    }
    return state, shared


def test_shared_codebooks_round_trip_bit_for_bit():
    state, shared = _shared_state()
    comp = compress(state, shared=shared, sparsity=0.5)  # sparsity does not apply to shared tensors
    for name, (cb, idx, _) in shared.items():
        _same_bits(comp.rebuilt[name], cb[idx])
    _round_trips(comp, state)  # versions 2 and 3 rebuild codebook[indices] bit for bit
    rep = {r.name: r for r in comp.reports}
    assert rep["fc.weight"].nnz == np.count_nonzero(shared["fc.weight"][1]) and rep["fc.weight"].layout == "sparse"
    assert rep["conv.weight"].layout == "dense" and rep["conv.weight"].bits == 2
    assert {o.name: o.stored_as for o in comp.others}["fc.bias"] == "shared 3 bits"
    assert "fc.bias stored as the codebooks and indices given" in format_report(comp, len(comp.to_bytes(3)))
    # the order of the centroids does not matter: the writer stores the used ones sorted
    cb, idx, res = shared["fc.weight"]
    perm = np.concatenate([[0], 1 + np.random.default_rng(1).permutation(31)])
    inv = np.argsort(perm).astype(np.uint8)
    permuted = compress(state, shared={**shared, "fc.weight": (cb[perm], inv[idx], res)})
    assert permuted.to_bytes(3) == comp.to_bytes(3)
    assert rep["fc.weight"].codebook_coding == "sorted keys"


def test_shared_kmeans_result_and_config():
    """A KMeansResult is accepted as it is; the config sets the paper's index bits."""
    from npquant.compression.kmeans import kmeans_quantize

    w = np.random.default_rng(3).normal(size=(12, 10)).astype(np.float32)
    res = kmeans_quantize(w, 3)
    wq = res.codebook[res.indices]
    comp = compress({"w": wq}, {"w": LayerConfig(bits=3, index_bits=2)}, shared={"w": res})
    _same_bits(read_compressed(comp.to_bytes(3))["w"], wq)
    assert (comp.reports[0].bits, comp.reports[0].index_bits, comp.reports[0].entries) == (3, 2, w.size)


@pytest.mark.parametrize(
    "edit, exc, match",
    [
        (lambda st, sh: sh.update(nope=sh["fc.bias"]), ValueError, "shared names 'nope'"),
        (
            lambda st, sh: sh.update({"fc.bias": sh["fc.bias"][:2]}),
            ValueError,
            r"shared\['fc.bias'\] must be \(codebook",
        ),
        (lambda st, sh: sh.update({"fc.bias": object()}), TypeError, r"shared\['fc.bias'\] must be"),
        (
            lambda st, sh: sh.update({"fc.bias": (sh["fc.bias"][0].astype(np.float64),) + sh["fc.bias"][1:]}),
            TypeError,
            "float32",
        ),
        (
            lambda st, sh: sh.update({"fc.bias": (sh["fc.bias"][0][:6],) + sh["fc.bias"][1:]}),
            ValueError,
            "2.b centroids",
        ),
        (lambda st, sh: sh.update({"fc.bias": (sh["fc.bias"][0], sh["fc.bias"][1][:5], False)}), ValueError, "shape"),
        (
            lambda st, sh: sh.update({"fc.bias": (sh["fc.bias"][0], sh["fc.bias"][1].astype(float), False)}),
            TypeError,
            "integer",
        ),
        (
            lambda st, sh: sh.update({"fc.bias": (sh["fc.bias"][0], sh["fc.bias"][1] + 8, False)}),
            ValueError,
            r"lie in \[0, 7\]",
        ),
        (lambda st, sh: sh.update({"fc.bias": sh["fc.bias"][:2] + (1,)}), TypeError, "reserved_zero must be a bool"),
        (lambda st, sh: sh.update({"conv.weight": sh["conv.weight"][:2] + (True,)}), ValueError, r"must be \+0.0"),
        (
            lambda st, sh: (
                st.update(other=st["other"] + 1) or sh.update(other=(np.float32([0, 1]), np.zeros(5, int), True))
            ),
            ValueError,
            r"state\['other'\] is not codebook\[indices\]",
        ),
    ],
)
def test_shared_rejects(edit, exc, match):
    state, shared = _shared_state()
    edit(state, shared)
    with pytest.raises(exc, match=match):
        compress(state, shared=shared)


def test_shared_rejects_a_config_that_prunes_or_disagrees():
    state, shared = _shared_state()
    with pytest.raises(ValueError, match="prunes"):
        compress(state, {"fc.weight": LayerConfig(sparsity=0.5)}, shared=shared)
    with pytest.raises(ValueError, match="5-bit codebook"):
        compress(state, {"fc.weight": LayerConfig(bits=4)}, shared=shared)
    with pytest.raises(TypeError, match="shared must be a dict"):
        compress(state, shared=[1])


def test_unpruned_tensors_keep_every_code():
    """No exact zero, no pruning: no code is reserved for zero (kmeans_quantize's "auto"),
    the dense layout, and the paper's stages count no relative index."""
    from npquant.compression.kmeans import kmeans_quantize

    state = _state(6)
    comp = compress(state, {"fc.weight": LayerConfig(bits=2)})
    for e in comp.tensors:
        if e.indices is not None:
            assert not e.reserved_zero
    ref = kmeans_quantize(state["fc.weight"], 2, keep_zeros=False)
    _same_bits(comp.rebuilt["fc.weight"], ref.codebook[ref.indices])
    assert len(np.unique(comp.rebuilt["fc.weight"])) == 4  # all four codes hold values
    _round_trips(comp, state)
    s = stage_sizes(comp)
    assert s.layers[1][2:4] == (4 * 20 * 54, -(-20 * 54 * 2 // 8) + 16)  # fc: pruned = float32, quantized = packed


def test_unpruned_lenet_at_2_bits_is_not_hurt_by_a_reserved_zero():
    """The trap of issue 14: a reserved zero on unpruned weights cost LeNet-300-100 at 2 bits
    5 points (91.56 % instead of 96.44 %). compress() now reserves it only for pruned tensors."""
    from npquant.app.demo import default_models_dir
    from npquant.compression.kmeans import kmeans_quantize
    from npquant.models.io import load_reference
    from npquant.models.nn import build_model

    ref = load_reference(default_models_dir() / "lenet_300_100.npz")
    x, y = ref.arrays["test_inputs"], ref.arrays["test_labels"]

    def acc(w):
        return float(np.mean(build_model(ref.arch, w)(x).argmax(1) == y))

    cfg = {k: LayerConfig(bits=2) for k, v in ref.state.items() if v.ndim == 2}
    comp = compress(ref.state, cfg)
    back = read_compressed(comp.to_bytes(3))
    forced = {k: (reconstruct_reserved(v) if v.ndim == 2 else v) for k, v in ref.state.items()}
    assert acc(back) == pytest.approx(0.9644, abs=5e-4)
    assert acc(forced) == pytest.approx(0.9156, abs=5e-4)
    for k in cfg:
        r = kmeans_quantize(ref.state[k], 2, keep_zeros=False)
        _same_bits(back[k], r.codebook[r.indices])


def reconstruct_reserved(w):
    from npquant.compression.kmeans import kmeans_quantize

    r = kmeans_quantize(w, 2, keep_zeros=True)
    return r.codebook[r.indices]
