import numpy as np
import pytest

from npquant import QuantSpec, dequantize, fit_qparams, quantize
from npquant.app.cli import main
from npquant.models.checkpoint import load_quantized, quantize_checkpoint, save_quantized
from npquant.models.io import save_state_dict


def _state():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(size=(10, 72)).astype(np.float32),
        "fc.bias": rng.normal(size=10).astype(np.float32),
        "step": np.array(3),
    }


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(bits=8, symmetric=True, axis=0),
        QuantSpec(bits=4, axis=1, block_size=8),
        QuantSpec(bits=2, signed=False),
        QuantSpec(bits=3, symmetric=True, axis=0),
        QuantSpec(bits=1, signed=False, axis=0),
    ],
)
def test_round_trip_gives_the_dequantized_weights(tmp_path, spec):
    state = _state()
    arrays, reports = quantize_checkpoint(state, spec)
    path = tmp_path / "q.npz"
    save_quantized(path, arrays)
    back = load_quantized(path)
    assert set(back) == set(state)
    for name in ("conv.weight", "fc.weight"):
        qp = fit_qparams(state[name], spec)
        np.testing.assert_array_equal(back[name], dequantize(quantize(state[name], qp), qp))
        # the codes are stored packed: bits per weight, not bytes
        assert arrays[f"{name}.codes"].nbytes == -(-state[name].size * spec.bits // 8)
    np.testing.assert_array_equal(back["fc.bias"], state["fc.bias"])
    assert [r.name for r in reports] == ["conv.weight", "fc.weight"]
    assert all(r.quantized_bytes < r.float_bytes for r in reports)


def test_cli_quantize_from_safetensors(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    save_state_dict(src, _state())
    out = tmp_path / "q.npz"
    assert main(["quantize", str(src), "-o", str(out), "--bits", "4"]) == 0
    text = capsys.readouterr().out
    assert "conv.weight" in text and "SQNR dB" in text and "4 tensors load back" in text

    with pytest.raises(SystemExit):
        main(["quantize", str(src), "-o", str(out), "--bits", "9"])


def test_errors(tmp_path):
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        quantize_checkpoint(_state(), {"bits": 8})
    with pytest.raises(ValueError, match="non-empty dict"):
        quantize_checkpoint({}, QuantSpec())
    np.savez(tmp_path / "x.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        load_quantized(tmp_path / "x.npz")
    arrays, _ = quantize_checkpoint(_state(), QuantSpec())
    del arrays["fc.weight.scale"]
    save_quantized(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError, match="fc.weight.*missing.*fc.weight.scale"):
        load_quantized(tmp_path / "bad.npz")
