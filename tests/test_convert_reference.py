"""npquant on the reference models: float forward, PyTorch's PTQ reproduced bit for bit,
and npquant's own post-training quantization. Needs no PyTorch."""

import json

import numpy as np
import pytest

from npquant.app.demo import default_models_dir
from npquant.models.convert import from_pytorch_ptq, quantize_model
from npquant.models.io import load_model, load_reference

REF = default_models_dir()
MODELS = ["mlp", "lenet_300_100", "cnn"]


def _calibration(model_name):
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16).astype(np.float32)
    idx = np.load(REF / "digits_split.npz")["calibration_index"]
    x = x[idx]
    return x.reshape(-1, 1, 8, 8) if model_name == "cnn" else x


@pytest.mark.parametrize("name", MODELS)
def test_float_forward_reproduces_pytorch(name):
    ref = load_reference(REF / f"{name}.npz")
    model = load_model(REF / f"{name}.npz")
    logits = model(ref.arrays["test_inputs"])
    assert logits.dtype == np.float32
    assert np.max(np.abs(logits - ref.arrays["float_logits"])) <= 1e-5


@pytest.mark.slow  # whole test set through the integer kernels: JIT pass only
@pytest.mark.parametrize("accumulation", ["exact", "fbgemm_avx2", "fbgemm_vnni"])
@pytest.mark.parametrize("name", MODELS)
def test_pytorch_ptq_reproduced_bit_for_bit(name, accumulation):
    """The recorded outputs are fbgemm's on either CPU path: no pair of these activations
    saturates (codes calibrated to [0, 127] with ``reduce_range``; the export with fbgemm
    forced to AVX2 writes the same files)."""
    z = dict(np.load(REF / f"{name}_ptq.npz"))
    x = load_reference(REF / f"{name}.npz").arrays["test_inputs"]
    q = from_pytorch_ptq(z, accumulation=accumulation)
    h = q.quantize_input(x)
    np.testing.assert_array_equal(h, z["input_int"])
    compared = h.size
    for layer, spec in zip(q.layers, json.loads(str(z["__arch__"]))["layers"]):
        h = layer(h)
        key = f"{spec.get('name')}.output_int"
        if key in z:
            np.testing.assert_array_equal(h, z[key], err_msg=key)
            compared += h.size
    np.testing.assert_array_equal(h, z["logits_int"])
    print(f"{name}: PyTorch PTQ reproduced, {compared} codes compared (input, every layer), 0 differ")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_own_ptq_within_half_a_point_of_float(name):
    ref = load_reference(REF / f"{name}.npz")
    model = load_model(REF / f"{name}.npz")
    x, y = ref.arrays["test_inputs"], ref.arrays["test_labels"]
    q = quantize_model(model, _calibration(name), mode="tflite")
    pred_f = model(x).argmax(1)
    pred_q = q(x).argmax(1)
    acc_f, acc_q = (pred_f == y).mean(), (pred_q == y).mean()
    agree_twin = (q.float_twin(x).argmax(1) == pred_q).mean()
    print(f"{name}: float {acc_f:.4f}, npquant int8 {acc_q:.4f}, agreement with float twin {agree_twin:.4f}")
    assert acc_q >= acc_f - 0.005
    assert agree_twin >= 0.99
