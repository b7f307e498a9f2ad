import numpy as np
import pytest

from npquant.models.io import load_state_dict, read_safetensors, save_state_dict, write_safetensors


def _state():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "a.bias": np.arange(3, dtype=np.float64),
        "n": np.array(7, np.int64),
        "m": rng.integers(0, 255, (2, 2, 2)).astype(np.uint8),
        "e": np.zeros((0, 3), np.float32),
    }


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
def test_round_trip(tmp_path, ext):
    s = _state()
    p = tmp_path / f"m.{ext}"
    save_state_dict(p, s)
    back = load_state_dict(p)
    assert set(back) == set(s)
    for k in s:
        assert back[k].dtype == s[k].dtype and back[k].shape == s[k].shape
        np.testing.assert_array_equal(back[k], s[k])


def test_safetensors_interoperates_with_the_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    s = {k: v for k, v in _state().items()}
    ours = write_safetensors(s)
    theirs = st.load(ours)
    for k in s:
        np.testing.assert_array_equal(theirs[k], s[k])
    back = read_safetensors(st.save(s))
    for k in s:
        np.testing.assert_array_equal(back[k], s[k])


def test_corrupt_safetensors():
    data = write_safetensors(_state())
    with pytest.raises(ValueError, match="shorter than"):
        read_safetensors(data[:5])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors(data[:20])
    with pytest.raises(ValueError):
        read_safetensors(data[:-1])
    with pytest.raises(ValueError, match="trailing"):
        read_safetensors(data + b"\0")
    bad = data.replace(b'"F32"', b'"F99"', 1)
    with pytest.raises(ValueError, match="dtype"):
        read_safetensors(bad)


def test_format_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        save_state_dict(tmp_path / "m.pt", _state())
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="expected an .npz"):
        load_state_dict(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="format must be"):
        load_state_dict(tmp_path / "x.npz", format="pickle")
