import os
import struct
import zlib

import numpy as np
import pytest

from npquant.compress import (
    MAGIC,
    LayerConfig,
    compress,
    default_config,
    format_report,
    kmeans_study,
    read_compressed,
    write_compressed,
)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=6).astype(np.float32),
        "fc.weight": rng.normal(size=(20, 54)).astype(np.float32),
        "fc.bias": rng.normal(size=20).astype(np.float32),
    }


def test_round_trip_rebuilds_the_pruned_quantized_weights(tmp_path):
    state = _state()
    comp = compress(state, sparsity=0.8)
    path = tmp_path / "m.npqz"
    size = write_compressed(comp, path)
    assert size == os.path.getsize(path)
    back = read_compressed(path)
    assert set(back) == set(state)
    for k, v in back.items():
        assert v.dtype == np.float32 and v.shape == state[k].shape
        np.testing.assert_array_equal(v, comp.rebuilt[k])
    # biases are stored raw; weights are pruned to 80 % zeros and take at most 2^bits values
    np.testing.assert_array_equal(back["fc.bias"], state["fc.bias"])
    for name in ("conv.weight", "fc.weight"):
        w = back[name]
        assert abs(np.mean(w == 0) - 0.8) < 0.01
        bits = default_config(state[name]).bits
        assert len(np.unique(w)) <= 2 ** bits
        # a surviving weight is never zeroed, a pruned one never revived
        kept = state[name] != 0
        assert np.all((w != 0) <= kept)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".npquant-")]  # no temporary left


def test_defaults_follow_the_paper():
    s = _state()
    assert (default_config(s["conv.weight"]).bits, default_config(s["conv.weight"]).index_bits) == (8, 8)
    assert (default_config(s["fc.weight"]).bits, default_config(s["fc.weight"]).index_bits) == (5, 5)


@pytest.mark.parametrize("bits, index_bits", [(1, 1), (2, 3), (4, 4), (8, 8)])
def test_configs_per_layer(bits, index_bits):
    state = _state(1)
    cfg = LayerConfig(sparsity=0.5, bits=bits, index_bits=index_bits)
    comp = compress(state, {"fc.weight": cfg, "conv.weight": cfg})
    back = read_compressed(comp.to_bytes())
    for k in state:
        np.testing.assert_array_equal(back[k], comp.rebuilt[k])
    rep = {r.name: r for r in comp.reports}
    assert rep["fc.weight"].bits == bits and rep["fc.weight"].codebook_bytes == 4 << bits


def test_no_pruning_and_quality_threshold():
    state = _state(2)
    dense = compress(state)
    assert all(r.nnz == r.params for r in dense.reports)
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


# ---- corruption -------------------------------------------------------------------

def _blob():
    return compress(_state(3), sparsity=0.7).to_bytes()


def test_wrong_magic_version_and_truncation():
    data = _blob()
    with pytest.raises(ValueError, match="magic"):
        read_compressed(b"ZZZZ" + data[4:])
    with pytest.raises(ValueError, match="version 3"):
        read_compressed(data[:4] + struct.pack("<H", 3) + data[6:])
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


def test_random_corruption_is_always_detected():
    data = bytearray(_blob())
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
    import json

    data = _blob()
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12:12 + hlen])
    body = data[16 + hlen:]

    def rebuild(h):
        hb = json.dumps(h).encode()
        return MAGIC + struct.pack("<HHI", 1, 0, len(hb)) + hb + struct.pack("<I", zlib.crc32(hb)) + body

    for edit in (lambda h: h["tensors"][0].__setitem__("shape", [6, 3, 3, 4]),
                 lambda h: h["tensors"][0].__setitem__("entries", 1),
                 lambda h: h["tensors"][0].__setitem__("bits", 9),
                 lambda h: h["tensors"][0].__setitem__("kind", "other"),
                 lambda h: h.__setitem__("format", "zip")):
        h = json.loads(json.dumps(header))
        edit(h)
        with pytest.raises(ValueError):
            read_compressed(rebuild(h))


# ---- study and bad input -----------------------------------------------------------

def test_kmeans_study_sizes_shrink_with_bits():
    state = _state(4)
    rows = kmeans_study(state, lambda w: float(np.mean([np.abs(w[k] - state[k]).mean() for k in w])))
    assert [r["bits"] for r in rows] == [8, 4, 2]
    assert rows[0]["bytes"] > rows[1]["bytes"] > rows[2]["bytes"]
    assert rows[0]["score"] < rows[1]["score"] < rows[2]["score"]  # error grows as bits shrink
    packed = sum(4 * 2 ** 4 + -(-state[k].size * 4 // 8) for k in ("conv.weight", "fc.weight"))
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
