"""Each failure of issue 11, as a test: corrupt, truncated, giant, nested and duplicate
inputs to every reader, argument types, output permissions and symbolic links."""

import io
import json
import os
import stat
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from fuzz import make_zip, npy_bytes, zip_members

from npquant.compression.pipeline import LayerConfig, compress, read_compressed, write_compressed
from npquant.models.checkpoint import load_quantized, quantize_checkpoint, save_quantized
from npquant.models.io import (
    FileFormatError,
    atomic_write,
    load_reference,
    load_state_dict,
    load_weights,
    read_safetensors,
    save_state_dict,
    write_safetensors,
)
from npquant.qparams import QuantSpec


def _state():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(100, 300)).astype(np.float32), "b": np.arange(5, dtype=np.float32)}


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _peak(fn):
    """Peak traced bytes while ``fn()`` raises ValueError (it must)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            fn()
        return tracemalloc.get_traced_memory()[1], e.value
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------- npz


def test_npz_single_flipped_data_bit_is_refused(tmp_path):
    data = bytearray(_npz_bytes(_state()))
    data[len(data) // 2] ^= 0x10  # inside w's data: only the CRC-32 can tell
    p = tmp_path / "m.npz"
    p.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="m.npz.*CRC|m.npz.*corrupt"):
        load_state_dict(p)


def test_npz_shrunk_shape_is_refused_not_read_short(tmp_path):
    data = _npz_bytes(_state())
    # one flipped bit: (100, 300) -> (100, 100) ('3' ^ 0x02 == '1'), CRC left as is
    i = data.index(b"(100, 300)") + 6
    bad = data[:i] + bytes([data[i] ^ 0x02]) + data[i + 1 :]
    p = tmp_path / "m.npz"
    p.write_bytes(bad)
    with pytest.raises(FileFormatError):
        load_state_dict(p)
    # the same edit with a valid CRC: the size check refuses it
    ms = zip_members(data)
    ms = [(n, d.replace(b"(100, 300)", b"(100, 100)")) for n, d in ms]
    p.write_bytes(make_zip(ms))
    with pytest.raises(FileFormatError, match=r"declares .*\(40000 bytes\).* holds 120000"):
        load_state_dict(p)


def test_npz_giant_declared_shape_allocates_nothing(tmp_path):
    ms = zip_members(_npz_bytes({"x": np.zeros(4, np.float32)}))
    ms = [(n, d.replace(b"'shape': (4,)", b"'shape': (1099511627776,)")) for n, d in ms]
    p = tmp_path / "giant.npz"
    p.write_bytes(make_zip(ms))
    peak, err = _peak(lambda: load_state_dict(p))
    assert peak < 1 << 20 and "4398046511104 bytes" in str(err)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "expected an .npz"),
        (b"PK\x03\x04", "not a readable .npz"),
        (b"PK\x05\x06" + bytes(18), None),
    ],
)
def test_npz_empty_or_cut_files(tmp_path, content, match):
    p = tmp_path / "m.npz"
    p.write_bytes(content)
    if match is None:  # an empty zip is an empty state dict
        assert load_state_dict(p) == {}
        return
    with pytest.raises(FileFormatError, match=match):
        load_state_dict(p)


def test_npz_corrupt_npy_header_is_a_value_error(tmp_path):
    ms = zip_members(_npz_bytes({"x": np.zeros(4, np.float32)}))
    for junk in (
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,\x00",
        b"{'descr': '|O', 'fortran_order'",
        b"'''",
        b"\xff\xfe",
    ):
        bad = [(n, d[:10] + junk + d[10 + len(junk) :]) for n, d in ms]
        (tmp_path / "m.npz").write_bytes(make_zip(bad))
        with pytest.raises(FileFormatError, match="npy"):
            load_state_dict(tmp_path / "m.npz")


def test_npz_object_dtype_duplicates_and_strays_are_refused(tmp_path):
    p = tmp_path / "m.npz"
    x = npy_bytes(np.zeros(3, np.float32))
    for members, match in [
        ([("a.npy", x), ("a.npy", x)], "stored twice"),
        ([("a.npy", x), ("a", x)], "not an .npy"),
        ([("notes.txt", b"hello")], "not an .npy"),
        ([("a.npy", x.replace(b"'<f4'", b"'|O' "))], "not a plain"),
    ]:
        p.write_bytes(make_zip(members))
        with pytest.raises(FileFormatError, match=match):
            load_state_dict(p)


def test_npz_compressed_and_data_descriptor_members_read(tmp_path):
    s = _state()
    p = tmp_path / "c.npz"
    np.savez_compressed(p, **s)
    back = load_state_dict(p)
    for k in s:
        np.testing.assert_array_equal(back[k], s[k])

    class Unseekable(io.RawIOBase):  # zipfile then writes data descriptors after each member
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += b
            return len(b)

    u = Unseekable()
    with zipfile.ZipFile(u, "w") as z:
        for k, v in s.items():
            with z.open(k + ".npy", "w") as f:
                f.write(npy_bytes(v))
    p.write_bytes(bytes(u.buf))
    back = load_state_dict(p)
    for k in s:
        np.testing.assert_array_equal(back[k], s[k])


def test_npz_damaged_directory_does_not_drop_arrays(tmp_path):
    data = _npz_bytes({"a": np.zeros(3), "b": np.ones(3)})
    # an end record whose directory starts at the second entry: "a" would vanish
    cd = data.rindex(b"PK\x05\x06")
    size_cd, offset_cd = struct.unpack_from("<II", data, cd + 12)
    second = data.index(b"PK\x01\x02", offset_cd + 1)
    bad = bytearray(data)
    struct.pack_into("<HHII", bad, cd + 8, 1, 1, size_cd - (second - offset_cd), second)
    p = tmp_path / "m.npz"
    p.write_bytes(bytes(bad))
    with pytest.raises(FileFormatError, match="damaged zip directory"):
        load_state_dict(p)


# ------------------------------------------------------------------------ safetensors


def _st(header: str, body: bytes = b"") -> bytes:
    h = header.encode()
    return struct.pack("<Q", len(h)) + h + body


@pytest.mark.parametrize(
    "data, match",
    [
        (
            _st(
                '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],'
                '"data_offsets":[0,4]}}',
                bytes(4),
            ),
            "twice",
        ),
        (_st('{"__metadata__":{"x":' + "[" * 5000 + "]" * 5000 + "}}"), "nests 5002 levels"),
        (_st('{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}', bytes(4)), "bytes for shape"),
        (_st('{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}', bytes(2)), "unsupported .* 'BF16'"),
        (_st('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)), "overlap or leave holes"),
        (_st('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', bytes(4)), "not valid"),
        (_st("[]"), "JSON object"),
    ],
)
def test_safetensors_bad_headers(data, match):
    with pytest.raises(FileFormatError, match=match):
        read_safetensors(data)


def test_safetensors_arguments_and_round_trip_through_the_package(tmp_path):
    from safetensors.numpy import load, save

    with pytest.raises(TypeError, match="data must be the file's bytes"):
        read_safetensors("m.safetensors")
    s = {"w": np.arange(6, dtype=">i4").reshape(2, 3), "z": np.array(1.5), "m": np.array([True, False])}
    theirs = load(write_safetensors(s))
    for k in s:
        np.testing.assert_array_equal(theirs[k], s[k])
    back = read_safetensors(save({k: np.asarray(v, v.dtype.newbyteorder("<")) for k, v in s.items()}))
    assert back["z"].shape == () and back["w"].dtype == np.int32
    with pytest.raises(TypeError, match="complex64"):
        write_safetensors({"c": np.zeros(2, np.complex64)})


def test_content_not_extension_decides(tmp_path):
    p = tmp_path / "m.safetensors"
    save_state_dict(tmp_path / "m.npz", {"w": np.ones(2, np.float32)})
    p.write_bytes((tmp_path / "m.npz").read_bytes())
    with pytest.raises(FileFormatError, match="expected a .safetensors file, found an .npz"):
        load_state_dict(p)
    assert list(load_weights(p)) == ["w"]


# ----------------------------------------------------------------------------- NPQZ


def _npqz(comp) -> bytes:
    return comp.to_bytes(version=2)  # these tests edit version 2's JSON header


def _edit_header(data: bytes, edit, *, version=None, reserved=None) -> bytes:
    magic, v, r, hlen = struct.unpack_from("<4sHHI", data)
    header = json.loads(data[12 : 12 + hlen])
    text = edit(header)
    h = (text if isinstance(text, str) else json.dumps(header)).encode()
    return (
        struct.pack("<4sHHI", magic, v if version is None else version, r if reserved is None else reserved, len(h))
        + h
        + struct.pack("<I", zlib.crc32(h))
        + data[12 + hlen + 4 :]
    )


@pytest.fixture(scope="module")
def npqz():
    rng = np.random.default_rng(1)
    state = {"w": rng.normal(size=(32, 24)).astype(np.float32), "b": rng.normal(size=32).astype(np.float32)}
    return _npqz(compress(state, sparsity=0.5))


def test_npqz_giant_shape_is_refused_before_allocating(npqz):
    def giant(h):
        for t in h["tensors"]:
            t["shape"] = [2**33]

    peak, err = _peak(lambda: read_compressed(_edit_header(npqz, giant)))
    assert peak < 4 << 20, peak
    assert "shape" in str(err)


def test_npqz_shared_blobs_are_refused_before_decoding(npqz):
    def share(h):
        t0 = h["tensors"][0]
        h["tensors"] = [dict(t0, name=f"t{i}") for i in range(100)]

    peak, err = _peak(lambda: read_compressed(_edit_header(npqz, share)))
    assert peak < 1 << 20 and "tile the body" in str(err)


def test_npqz_duplicate_names_nesting_and_reserved(npqz):
    with pytest.raises(FileFormatError, match="appears twice"):
        read_compressed(_edit_header(npqz, lambda h: h["tensors"].append(dict(h["tensors"][0]))))
    with pytest.raises(FileFormatError, match="nests"):
        read_compressed(_edit_header(npqz, lambda h: '{"format": ' + "[" * 100000 + "]" * 100000 + "}"))
    with pytest.raises(FileFormatError, match="twice"):
        read_compressed(_edit_header(npqz, lambda h: '{"format": 1, "format": 2}'))
    with pytest.raises(FileFormatError, match="reserved field is 7"):
        read_compressed(_edit_header(npqz, lambda h: None, reserved=7))


def test_npqz_tail_rule_and_version_1(npqz, tmp_path):
    # the only weight is the first of 10000: fillers bridge the tail, and it round-trips
    w = np.zeros((100, 100), np.float32)
    w[0, 0] = 1.0
    comp = compress({"w": w}, {"w": LayerConfig(bits=2, index_bits=3)})
    back = read_compressed(comp.to_bytes(version=2))
    np.testing.assert_array_equal(back["w"], comp.rebuilt["w"])
    assert comp.header["tensors"][0]["entries"] >= 10000 // 7
    # all zeros too
    z = compress({"w": np.zeros((20, 30), np.float32)}, {"w": LayerConfig(bits=1, index_bits=2)})
    np.testing.assert_array_equal(read_compressed(z.to_bytes(version=2))["w"], 0)
    # version 1 (no tail rule) is read when the rule holds, else refused with a hint
    assert read_compressed(_edit_header(npqz, lambda h: None, version=1)).keys() == {"w", "b"}

    def longer(h):
        h["tensors"][0]["shape"] = [h["tensors"][0]["shape"][0] + 10] + h["tensors"][0]["shape"][1:]

    with pytest.raises(FileFormatError, match="version-1 file"):
        read_compressed(_edit_header(npqz, longer, version=1))


def test_read_and_write_compressed_argument_types(npqz, tmp_path):
    r, w = os.pipe()
    try:
        with pytest.raises(TypeError, match="source must be a path"):
            read_compressed(r)
        os.fstat(r)  # the descriptor is still open
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(TypeError, match="source must be a path"):
        read_compressed(None)
    with pytest.raises(TypeError, match="compressed must be"):
        write_compressed("x", tmp_path / "m.npqz")
    p = tmp_path / "m.npqz"
    p.write_bytes(npqz)
    assert read_compressed(p).keys() == read_compressed(str(p)).keys() == {"w", "b"}
    with pytest.raises(FileFormatError, match=str(p.name)):
        read_compressed(p.read_bytes()[:-1], where=str(p))


# ------------------------------------------------------------------------- checkpoint


@pytest.fixture
def ckpt(tmp_path):
    arrays, _ = quantize_checkpoint(
        {"w": _state()["w"][:8, :16], "b": np.arange(4, dtype=np.float32)}, QuantSpec(bits=4, symmetric=True, axis=0)
    )
    p = tmp_path / "q.npz"
    save_quantized(p, arrays)
    return p


def _rewrite(p, edit):
    ms = dict(zip_members(p.read_bytes()))
    edit(ms)
    p.write_bytes(make_zip(list(ms.items())))


def test_checkpoint_plain_entry_cannot_replace_a_quantized_tensor(ckpt):
    _rewrite(ckpt, lambda ms: ms.update({"w.npy": npy_bytes(np.zeros(3, np.float32))}))
    with pytest.raises(FileFormatError, match="both as a quantized tensor and as a plain entry"):
        load_quantized(ckpt)


@pytest.mark.parametrize(
    "part, value, match",
    [
        ("w.codes", np.zeros(3, np.uint8), "must be 64 uint8 bytes"),
        ("w.shape", np.array([2**33, 2**33], np.int64), "must be .* uint8 bytes"),
        ("w.shape", np.array([-1, 16], np.int64), "non-negative"),
        ("w.spec", np.array(json.dumps({"bits": 16})), "1..8 bits"),
        ("w.spec", np.array(json.dumps({"bitz": 4})), "not a valid QuantSpec"),
        ("w.spec", np.array("[" * 1000 + "]" * 1000), "nests"),
        ("w.spec", np.array(3), "JSON string"),
        ("w.scale", np.zeros(8, np.float32), "does not decode"),
        ("__format__", np.array("something else"), "not a quantized checkpoint"),
    ],
)
def test_checkpoint_bad_parts(ckpt, part, value, match):
    _rewrite(ckpt, lambda ms: ms.update({part + ".npy": npy_bytes(value)}))
    peak, err = _peak(lambda: load_quantized(ckpt))
    assert peak < 1 << 20
    assert isinstance(err, FileFormatError) and str(ckpt) in str(err)
    assert __import__("re").search(match, str(err)), str(err)


def test_checkpoint_missing_part_and_pass_through_flip(ckpt):
    data = ckpt.read_bytes()
    _rewrite(ckpt, lambda ms: ms.pop("w.scale.npy"))
    with pytest.raises(FileFormatError, match="missing its 'w.scale'"):
        load_quantized(ckpt)
    bad = bytearray(data)
    i = data.index(np.arange(4, dtype=np.float32).tobytes())  # the pass-through bias "b"
    bad[i + 5] ^= 1
    ckpt.write_bytes(bytes(bad))
    with pytest.raises(FileFormatError):
        load_quantized(ckpt)


# -------------------------------------------------------------------------- reference


def test_reference_arch_and_meta_are_checked(tmp_path):
    p = tmp_path / "r.npz"
    for arch, meta, match in [
        ("[" * 3000 + "]" * 3000, "{}", "nests"),
        ('{"layers": 3}', "{}", "architecture"),
        ('{"layers": []}', "[1]", "JSON object"),
        ('{"layers": [],', "{}", "not valid"),
    ]:
        np.savez(p, __arch__=np.array(arch), __meta__=np.array(meta))
        with pytest.raises(FileFormatError, match=match):
            load_reference(p)
    np.savez(p, __arch__=np.zeros(3))
    with pytest.raises(FileFormatError, match="JSON string"):
        load_reference(p)


# ------------------------------------------------------------------------ paths, writes


@pytest.mark.parametrize("bad", [3, None, b"m.npz", ["m.npz"]])
def test_path_arguments_are_type_checked(bad):
    for fn in (load_state_dict, load_weights, load_reference, load_quantized):
        with pytest.raises(TypeError, match="path must be a path"):
            fn(bad)


def test_missing_file_is_the_system_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "none.npz")
    with pytest.raises(IsADirectoryError):
        load_weights(tmp_path)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_state_dict(tmp_path / "a.npz", {"w": np.ones(2)})
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644
        os.umask(0o077)
        save_state_dict(tmp_path / "b.safetensors", {"w": np.ones(2)})
        assert stat.S_IMODE(os.stat(tmp_path / "b.safetensors").st_mode) == 0o600
        os.chmod(tmp_path / "a.npz", 0o640)  # an existing file keeps its mode
        save_state_dict(tmp_path / "a.npz", {"w": np.zeros(2)})
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o640
    finally:
        os.umask(old)


def test_symlink_destination_is_followed(tmp_path):
    target = tmp_path / "real.npz"
    link = tmp_path / "link.npz"
    save_state_dict(target, {"w": np.ones(2)})
    link.symlink_to(target)
    save_state_dict(link, {"w": np.zeros(3)})
    assert link.is_symlink() and load_state_dict(target)["w"].shape == (3,)
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "new.npz")
    save_state_dict(dangling, {"w": np.ones(1)})
    assert dangling.is_symlink() and (tmp_path / "new.npz").is_file()


def test_bad_destinations(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(tmp_path, lambda f: f.write(b"x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_state_dict(tmp_path / "no" / "m.npz", {"w": np.ones(1)})
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        save_state_dict(tmp_path / "file" / "m.npz", {"w": np.ones(1)})
    # a failing writer leaves the old file and no temporary behind
    save_state_dict(tmp_path / "m.npz", {"w": np.ones(1)})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "m.npz", boom)
    assert sorted(os.listdir(tmp_path)) == ["file", "m.npz"]
    assert load_state_dict(tmp_path / "m.npz")["w"].shape == (1,)


def test_an_unwritable_folder_is_named_not_the_temporary(tmp_path, monkeypatch):
    import tempfile

    def refuse(**kw):
        raise PermissionError(13, "Permission denied", os.path.join(kw["dir"], ".npquant-abc123"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores permission bits: simulate it
    with pytest.raises(PermissionError) as e:
        save_state_dict(tmp_path / "m.npz", {"w": np.ones(1)})
    assert str(e.value) == f"cannot write {str(tmp_path / 'm.npz')!r}: permission denied"
