"""The main job (``npquant demo``): every quantization method on the reference models.

For each reference model (trained in PyTorch on digits by the repository's
``reference_models/export.py``, shipped as package data in ``npquant/data/``, run here without
PyTorch): float, npquant's post-training int8 quantization per tensor and per channel
under each requantization mode, PyTorch's own quantized model reproduced bit for bit,
quantization-aware training in NumPy at W8A8 and W4A4 next to post-training W4A4 (the
rows of :data:`QAT_ROWS`; ``npquant qat`` gives the full table), dynamic quantization,
and weight-only quantization at 8, 4 and 2 bits. Each row gives
the model size in bytes, the test accuracy and the agreement with the float model's
predictions; everything is computed on the spot.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from ..requant.modes import REQUANT_MODES

MODELS = ("mlp", "lenet_300_100", "cnn")

QAT_ROWS = (
    (8, 8, "minmax", "QAT W8A8 per-channel, min-max EMA"),
    (4, 4, "ptq", "PTQ W4A4 per-channel, min-max"),
    (4, 4, "lsq", "QAT W4A4 per-channel, LSQ"),
)
"""The quantization-aware training rows of each model: ``(weight_bits, act_bits, method, label)``
of :func:`npquant.training.qat_results.qat_experiment` (``npquant qat`` prints the full table)."""


def data_files(models: Iterable[str] = MODELS) -> list[str]:
    """The files the demo reads for ``models``: the split, and each model's float and
    PyTorch-quantized files.

    Parameters
    ----------
    models : iterable of str, default ``MODELS``
        Model names.

    Returns
    -------
    list of str
        ``"digits_split.npz"``, then ``NAME.npz`` and ``NAME_ptq.npz`` of each model.
    """
    return ["digits_split.npz", *(f"{m}{s}.npz" for m in models for s in ("", "_ptq"))]


def default_models_dir() -> Path:
    """The folder of the bundled reference models: the package data ``npquant/data/``, found
    through :mod:`importlib.resources`, a real directory (in a wheel install, in an editable
    install, and in a clone alike).

    If npquant is imported from a zip file, the files are copied once into a temporary
    folder, removed when the interpreter exits.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    data = resources.files("npquant") / "data"
    if isinstance(data, Path):
        return data
    return _extracted(data)  # pragma: no cover - npquant imported from a zip


@functools.cache
def _extracted(data) -> Path:  # pragma: no cover - npquant imported from a zip
    import atexit
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="npquant-data-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for f in data.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def check_models_dir(models_dir: str | os.PathLike, models: Iterable[str] = MODELS) -> Path:
    """``models_dir`` as a ``Path``, after checking that it holds every file ``models`` need
    (``digits_split.npz``, ``NAME.npz`` and ``NAME_ptq.npz``); else ``ValueError`` naming the
    folder and each missing file (the command prints it and exits with status 1).

    Parameters
    ----------
    models_dir : str or os.PathLike
        The folder of the reference models.
    models : iterable of str, default ``MODELS``
        Model names.

    Returns
    -------
    pathlib.Path
        ``models_dir``.
    """
    models_dir = Path(models_dir)
    missing = [f for f in data_files(models) if not (models_dir / f).is_file()]
    if missing:
        where = (
            "npquant's package data is incomplete: reinstall npquant"
            if models_dir == default_models_dir()
            else "pass --models with a folder that holds them"
        )
        raise ValueError(f"no reference models in {models_dir}: missing {', '.join(missing)} ({where})")
    return models_dir


def calibration_inputs(models_dir: Path, name: str) -> np.ndarray:
    """The 269 calibration images of the fixed split (``digits_split.npz``), float32.

    Parameters
    ----------
    models_dir : pathlib.Path
        The folder holding ``digits_split.npz``.
    name : str
        The model; ``"cnn"`` gets images, the others flat vectors.

    Returns
    -------
    numpy.ndarray
        float32 in [0, 1]: ``(269, 1, 8, 8)`` for ``"cnn"``, else ``(269, 64)``.
    """
    from sklearn.datasets import load_digits

    from ..models.io import load_state_dict

    index = load_state_dict(models_dir / "digits_split.npz")["calibration_index"]
    x = (load_digits().data / 16).astype(np.float32)[index]
    return x.reshape(-1, 1, 8, 8) if name == "cnn" else x


def model_rows(
    models_dir: str | os.PathLike, name: str, progress: Callable[[str], object] = lambda msg: None
) -> list[list[str]]:
    """The table rows of one reference model.

    Parameters
    ----------
    models_dir : str or os.PathLike
        The folder of the reference models.
    name : str
        The model, one of ``MODELS``.
    progress : callable, default does nothing
        Called with a one-line message before each slow step.

    Returns
    -------
    list of list of str
        One row per method: model, method, mode, size in bytes (of that row's own model,
        each layer counted by its layer type: :func:`npquant.models.registry.model_size_bytes`;
        weight-only: as :func:`npquant.models.convert.weight_only_quantize` counts it), test
        accuracy and agreement with the float model.
    """
    from ..models.convert import dynamic_quantize, from_pytorch_ptq, quantize_model, weight_only_quantize
    from ..models.io import load_reference, load_state_dict
    from ..models.nn import build_model
    from ..models.registry import model_size_bytes as size_of

    models_dir = Path(models_dir)
    ref = load_reference(models_dir / f"{name}.npz")
    model = build_model(ref.arch, ref.state)
    x, y = ref.arrays["test_inputs"], ref.arrays["test_labels"]
    pred_f = model(x).argmax(1)

    def row(method, mode, size, pred):
        return [
            name,
            method,
            mode,
            str(size),
            f"{100 * np.mean(pred == y):.2f} %",
            f"{100 * np.mean(pred == pred_f):.1f} %",
        ]

    rows = [row("float32", "-", size_of(model), pred_f)]
    calib = calibration_inputs(models_dir, name)
    progress(f"{name}: post-training quantization ...")
    q = quantize_model(model, calib, mode="tflite", per_channel=False)
    rows.append(row("PTQ int8 per-tensor", "tflite", size_of(q), q(x).argmax(1)))
    for mode in REQUANT_MODES:
        q = quantize_model(model, calib, mode=mode, per_channel=True)
        rows.append(row("PTQ int8 per-channel", mode, size_of(q), q(x).argmax(1)))
    golden = load_state_dict(models_dir / f"{name}_ptq.npz")
    pt = from_pytorch_ptq(dict(golden))
    codes = pt.run(pt.quantize_input(x))
    exact = np.array_equal(codes, golden["logits_int"])
    rows.append(
        row(
            "PyTorch PTQ, reproduced" + (" (bit-exact)" if exact else " (MISMATCH)"),
            "fp32",
            size_of(pt),
            codes.argmax(1),
        )
    )
    progress(f"{name}: quantization-aware training ...")
    from ..training.qat_results import qat_experiment
    from ..training.trainer import digits_data

    data = digits_data(ref.arch, models_dir)
    for w, a, method, label in QAT_ROWS:
        r = qat_experiment(name, w, a, method, model=model, data=data)
        rows.append(row(label, "tflite", size_of(r.integer_model, packed=True), r.integer_model(x).argmax(1)))
    progress(f"{name}: dynamic and weight-only ...")
    d = dynamic_quantize(model)
    rows.append(row("dynamic int8", "-", size_of(d), d(x).argmax(1)))  # the dynamic model's own layers
    for bits in (8, 4, 2):
        w, size = weight_only_quantize(model, bits)
        rows.append(row(f"weight-only int{bits} per-channel", "-", size, w(x).argmax(1)))
    return rows


def run(
    models_dir: str | os.PathLike | None = None,
    *,
    models: Iterable[str] = MODELS,
    progress: Callable[[str], object] = lambda msg: None,
) -> str:
    """The demo's text: one table over the given reference models.

    Parameters
    ----------
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None`` is :func:`default_models_dir`.
    models : iterable of str, default ``MODELS``
        Keyword-only; the models to run.
    progress : callable, default does nothing
        Called with a one-line message before each slow step.

    Returns
    -------
    str
        The heading, the table and the time taken.
    """
    from .._table import format_table

    models_dir = check_models_dir(default_models_dir() if models_dir is None else models_dir, models)
    t0 = time.perf_counter()
    rows = []
    for name in models:
        rows += model_rows(models_dir, name, progress)
    head = (
        "npquant demo: quantization of the reference models (trained in PyTorch on scikit-learn's "
        "digits; 450 test images; run without PyTorch)\n"
        "size: float32 weights; int8: weights + int32 (or float) biases + scales; W4A4 and weight-only: "
        "packed codes + scales + biases. agreement: same prediction as the float model.\n"
        "W<w>A<a>: w-bit weights, a-bit activations (input and logits 8-bit); QAT: a few epochs of "
        "quantization-aware training in NumPy from the float weights (npquant qat: the full table).\n"
    )
    table = format_table(["model", "method", "mode", "size B", "test acc", "agree w/ float"], rows, align="lllrrr")
    return f"{head}\n{table}\n\n({time.perf_counter() - t0:.1f} s)"
