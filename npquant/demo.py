"""The main job (``npquant demo``): every quantization method on the reference models.

For each model of ``reference_models/`` (trained in PyTorch on digits, run here without
PyTorch): float, npquant's post-training int8 quantization per tensor and per channel
under each requantization mode, PyTorch's own quantized model reproduced bit for bit,
dynamic quantization, and weight-only quantization at 8, 4 and 2 bits. Each row gives
the model size in bytes, the test accuracy and the agreement with the float model's
predictions; everything is computed on the spot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .fixedpoint import REQUANT_MODES

MODELS = ("mlp", "lenet_300_100", "cnn")


def default_models_dir() -> Path:
    """``reference_models/`` next to the ``npquant`` package (an editable install)."""
    return Path(__file__).resolve().parents[1] / "reference_models"


def calibration_inputs(models_dir: Path, name: str) -> np.ndarray:
    """The 269 calibration images of the fixed split (``digits_split.npz``), float32."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16).astype(np.float32)[np.load(models_dir / "digits_split.npz")["calibration_index"]]
    return x.reshape(-1, 1, 8, 8) if name == "cnn" else x


def model_rows(models_dir, name: str, progress=lambda msg: None) -> list[list[str]]:
    """The table rows of one reference model."""
    from .convert import (dynamic_quantize, float_size_bytes, from_pytorch_ptq, quantize_model,
                          weight_only_quantize)
    from .io import load_reference
    from .nn import build_model

    models_dir = Path(models_dir)
    ref = load_reference(models_dir / f"{name}.npz")
    model = build_model(ref.arch, ref.state)
    x, y = ref.arrays["test_inputs"], ref.arrays["test_labels"]
    pred_f = model(x).argmax(1)

    def row(method, mode, size, pred):
        return [name, method, mode, str(size), f"{100 * np.mean(pred == y):.2f} %", f"{100 * np.mean(pred == pred_f):.1f} %"]

    rows = [row("float32", "-", float_size_bytes(model), pred_f)]
    calib = calibration_inputs(models_dir, name)
    progress(f"{name}: post-training quantization ...")
    q = quantize_model(model, calib, mode="tflite", per_channel=False)
    rows.append(row("PTQ int8 per-tensor", "tflite", q.size_bytes(), q(x).argmax(1)))
    for mode in REQUANT_MODES:
        q = quantize_model(model, calib, mode=mode, per_channel=True)
        rows.append(row("PTQ int8 per-channel", mode, q.size_bytes(), q(x).argmax(1)))
    golden = np.load(models_dir / f"{name}_ptq.npz")
    pt = from_pytorch_ptq(dict(golden))
    codes = pt.run(pt.quantize_input(x))
    exact = np.array_equal(codes, golden["logits_int"])
    rows.append(row("PyTorch PTQ, reproduced" + (" (bit-exact)" if exact else " (MISMATCH)"), "fp32",
                    pt.size_bytes(), codes.argmax(1)))
    progress(f"{name}: dynamic and weight-only ...")
    d = dynamic_quantize(model)
    rows.append(row("dynamic int8", "-", q.size_bytes(), d(x).argmax(1)))
    for bits in (8, 4, 2):
        w, size = weight_only_quantize(model, bits)
        rows.append(row(f"weight-only int{bits} per-channel", "-", size, w(x).argmax(1)))
    return rows


def run(models_dir=None, *, models=MODELS, progress=lambda msg: None) -> str:
    """The demo's text: one table over the given reference models."""
    from ._table import format_table

    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if not (models_dir / "digits_split.npz").exists():
        raise ValueError(f"no reference models in {models_dir}: install npquant from a clone with "
                         "'pip install -e .', or pass --models DIR")
    t0 = time.perf_counter()
    rows = []
    for name in models:
        rows += model_rows(models_dir, name, progress)
    head = ("npquant demo: quantization of the reference models (trained in PyTorch on scikit-learn's "
            "digits; 450 test images; run without PyTorch)\n"
            "size: float32 weights; int8: weights + int32 (or float) biases + scales; weight-only: packed "
            "codes + scales + float biases. agreement: same prediction as the float model.\n")
    table = format_table(["model", "method", "mode", "size B", "test acc", "agree w/ float"], rows,
                         align="lllrrr")
    return f"{head}\n{table}\n\n({time.perf_counter() - t0:.1f} s)"
