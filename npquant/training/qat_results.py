"""Float vs post-training quantization vs quantization-aware training on the reference
models: the table of ``npquant qat`` (and the QAT rows of ``npquant demo``).

For each reference model (``mlp``, ``lenet_300_100``, ``cnn``, trained in PyTorch and
shipped in ``npquant/data/``) and each bit setting ``W<w>A<a>`` (weights ``w`` bits, signed
symmetric, per output channel; activations ``a`` bits, unsigned, per tensor; the input
and the logits 8 bits, as low-bit studies keep a model's ends at 8 bits), every row is an
*integer-only* model (:func:`npquant.training.convert_qat`) evaluated on the 450 test
images:

``PTQ min-max``  :func:`prepare_qat` with ``ranges="minmax"``, batch norm on its running
                 statistics, activation ranges = min and max over the 269 calibration
                 images (one training-mode forward pass of the whole calibration set: the
                 first observation of a moving-average observer is the batch's min-max),
                 no training.
``QAT <ranges>`` :func:`prepare_qat` with ``ranges`` = ``minmax`` (moving-average min-max,
                 PyTorch's default QAT), ``lsq`` (learned step size, initialized to the first
                 batch's min-max) or ``pact`` (learned clipping level, initialized to the
                 first batch's maximum), then :func:`npquant.training.fit` on the 1,078 training
                 images from the float weights: Adam, batch 32, cosine learning rate from
                 ``lr`` (default :data:`DEFAULT_LR` below 8 bits, 1e-4 at W8A8, where the
                 float model is already on the grid), ``epochs`` epochs
                 (:data:`DEFAULT_EPOCHS`); batch norm frozen (running
                 statistics) from the middle epoch, activation observers frozen for the last
                 quarter (Jacob et al. 2018's schedule).

Columns: test accuracy of the integer model; its difference to float in percentage
points; ``int = QAT`` the share of test images where the integer model predicts what the
fake-quantized float model predicts (the conversion's fidelity); the seconds the row took.
Every number is computed when the command runs, from ``seed`` (which seeds every shuffle);
on one machine a run repeats bit for bit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_choice, check_int, check_real

if TYPE_CHECKING:
    from ..models import nn

__all__ = [
    "BITS",
    "RANGES_SHOWN",
    "QATResult",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "qat_experiment",
    "reference",
    "results",
    "format_results",
    "recovery",
]

BITS = {
    "mlp": ((8, 8), (4, 8), (4, 4), (2, 8)),
    "lenet_300_100": ((8, 8), (4, 8), (4, 4), (2, 8)),
    "cnn": ((8, 8), (4, 8), (4, 4)),
}
"""The ``(weight_bits, act_bits)`` settings of each reference model (:data:`npquant.app.demo.MODELS`;
W2A8 for the MLPs only)."""

RANGES_SHOWN = ("minmax", "lsq", "pact")
"""The range methods of the QAT rows, in table order."""

DEFAULT_EPOCHS = {"mlp": 4, "lenet_300_100": 4, "cnn": 10}
"""QAT epochs per model: enough to reach the targets of ``tests/test_qat_results.py``."""

DEFAULT_LR = {"mlp": 1e-3, "lenet_300_100": 1e-3, "cnn": 5e-4}
"""Adam's learning rate below 8 bits per model (1e-4 at W8A8 for every model). The CNN's
W4A4 rows were measured over seeds 0-2 and two BLAS kernels (OpenBLAS SkylakeX and
Haswell): 6 epochs at 1e-3 left some runs at PTQ's accuracy and the integer model agreeing
on 98.9 %; 10 epochs at 5e-4 gave every run above PTQ and agreement >= 99.6 %."""


@dataclass
class QATResult:
    """One row: ``method`` is ``"float"``, ``"ptq"`` or a range method of QAT."""

    model: str
    weight_bits: int | None
    act_bits: int | None
    method: str
    accuracy: float  # test accuracy of the (integer, except "float") model
    agreement: float | None = None  # integer vs fake-quantized predictions (QAT rows)
    epochs: int = 0
    lr: float | None = None
    time_s: float = 0.0
    integer_model: object = None  # the npquant.models.convert.IntegerModel (not for "float")

    @property
    def bits(self) -> str:
        return "-" if self.weight_bits is None else f"W{self.weight_bits}A{self.act_bits}"


def reference(name: str, models_dir: str | os.PathLike | None = None) -> tuple:
    """The bundled reference model ``name`` (float :class:`npquant.models.nn.Sequential`) and its
    digits split (:func:`npquant.training.trainer.digits_data`: ``x_train``, ``y_train``,
    ``x_calibration``, ``x_test``, ``y_test``, ...), from ``models_dir`` (default: the
    bundled models).

    Parameters
    ----------
    name : str
        A model of :data:`BITS`: ``"mlp"``, ``"lenet_300_100"`` or ``"cnn"``.
    models_dir : pathlib.Path or None, default None
        The folder of the reference models; ``None``: the bundled ones.

    Returns
    -------
    model : npquant.models.nn.Sequential
        The float model.
    data : dict of str to numpy.ndarray
        Its digits split.
    """
    check_choice(name, "name", tuple(BITS))
    from ..app.demo import default_models_dir
    from ..models.io import load_reference
    from ..models.nn import build_model
    from .trainer import digits_data

    models_dir = default_models_dir() if models_dir is None else models_dir
    ref = load_reference(models_dir / f"{name}.npz")
    return build_model(ref.arch, ref.state), digits_data(ref.arch, models_dir)


def _accuracy(model, x, y) -> float:
    return float(np.mean(model(x).argmax(1) == y))


def qat_experiment(
    name: str,
    weight_bits: int,
    act_bits: int,
    method: str,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    mode: str = "tflite",
    models_dir: str | os.PathLike | None = None,
    progress: bool = False,
    model: nn.Sequential | None = None,
    data: dict | None = None,
) -> QATResult:
    """One row of the table: reference model ``name`` at ``W<weight_bits>A<act_bits>`` by
    ``method`` (``"ptq"`` or a range method of :func:`prepare_qat`), converted to the
    integer model with requantization ``mode`` and evaluated on the test images.

    ``epochs`` (default :data:`DEFAULT_EPOCHS`), ``lr`` (default :data:`DEFAULT_LR`, 1e-4 at W8A8) and
    ``seed`` (the shuffles) apply to QAT; see the module docstring for the recipe.

    ``model`` and ``data`` (both or neither) are the float model and its data, as
    :func:`reference` returns them (default: ``reference(name, models_dir)``); ``model`` is
    not modified, so one loaded pair serves many rows. ``name`` still selects the recipe's
    defaults (:data:`DEFAULT_EPOCHS`, :data:`DEFAULT_LR`).

    Parameters
    ----------
    name : str
        A model of :data:`BITS`.
    weight_bits, act_bits : int
        Bits of the weights and of the hidden activations, 2..8 (input and logits 8-bit).
    method : str
        ``"ptq"`` or one of :data:`RANGES_SHOWN`.
    epochs : int or None, default None
        Keyword-only; QAT epochs, >= 1 (see above).
    lr : float or None, default None
        Adam's learning rate, > 0 (see above).
    seed : int, default 0
        Seed of the shuffles, >= 0.
    mode : str, default ``"tflite"``
        The requantization mode of the integer model.
    models_dir : pathlib.Path or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    progress : bool, default False
        Show the training progress bar.
    model : npquant.models.nn.Sequential or None, default None
        The float model (with ``data``).
    data : dict or None, default None
        Its data (with ``model``).

    Returns
    -------
    QATResult
        The row, with the integer model.
    """
    from .convert_qat import convert_qat, freeze_bn, freeze_observers, prepare_qat
    from .losses import softmax_cross_entropy
    from .optim import Adam, CosineAnnealingLR
    from .trainer import Hook, fit

    check_choice(name, "name", tuple(BITS))
    weight_bits = check_int(weight_bits, "weight_bits", lo=2, hi=8)
    act_bits = check_int(act_bits, "act_bits", lo=2, hi=8)
    method = check_choice(method, "method", ("ptq", *RANGES_SHOWN))
    seed = check_int(seed, "seed", lo=0)
    if (model is None) != (data is None):
        raise ValueError("give both model and data, or neither (the bundled reference model)")
    if model is None:
        model, data = reference(name, models_dir)
    t0 = time.perf_counter()
    common = dict(weight_bits=weight_bits, act_bits=act_bits, input_bits=8, output_bits=8)
    if method == "ptq":
        q = prepare_qat(model, ranges="minmax", freeze_bn=True, **common)
        q.train()
        q(data["x_calibration"])  # the first observation of each observer: the min-max of the set
        q.eval()
        freeze_observers(q)
        epochs, lr = 0, None
    else:
        epochs = DEFAULT_EPOCHS[name] if epochs is None else check_int(epochs, "epochs", lo=1)
        lr = (
            (1e-4 if weight_bits == act_bits == 8 else DEFAULT_LR[name])
            if lr is None
            else check_real(lr, "lr", lo=0.0, lo_open=True)
        )
        q = prepare_qat(model, ranges=method, lsq_init="minmax", pact_init="max", **common)
        # from the middle epoch and for the last quarter; never in the first (nothing observed yet)
        freeze_bn_at, freeze_obs_at = max(epochs // 2 + 1, 2), max((3 * epochs) // 4 + 1, 2)

        def on_epoch_start(state):
            if state.epoch >= freeze_bn_at:
                freeze_bn(state.model)
            if state.epoch >= freeze_obs_at:
                freeze_observers(state.model)

        fit(
            q,
            softmax_cross_entropy,
            Adam(q.named_parameters(), lr=lr),
            data["x_train"],
            data["y_train"],
            epochs=epochs,
            batch_size=32,
            seed=seed,
            schedule=CosineAnnealingLR(epochs),
            hooks=Hook(on_epoch_start=on_epoch_start),
            progress=progress,
        )
    im = convert_qat(q, mode=mode)
    x, y = data["x_test"], data["y_test"]
    pred = im(x).argmax(1)
    agreement = None if method == "ptq" else float(np.mean(pred == q(x).argmax(1)))
    return QATResult(
        model=name,
        weight_bits=weight_bits,
        act_bits=act_bits,
        method=method,
        accuracy=float(np.mean(pred == y)),
        agreement=agreement,
        epochs=epochs,
        lr=lr,
        time_s=time.perf_counter() - t0,
        integer_model=im,
    )


def results(
    models: Iterable[str] = tuple(BITS),
    *,
    bits: list[tuple[int, int]] | None = None,
    methods: Iterable[str] = ("ptq", *RANGES_SHOWN),
    seed: int = 0,
    mode: str = "tflite",
    models_dir: str | os.PathLike | None = None,
    progress: Callable[[str], object] = lambda msg: None,
) -> list[QATResult]:
    """Every row of the table: for each model, the float row, then for each bit setting
    (``bits``: a list of ``(w, a)``, default :data:`BITS` of the model) each of ``methods``.
    ``progress(msg)`` is called before each model and bit setting.

    Parameters
    ----------
    models : iterable of str, default all of :data:`BITS`
        The models.
    bits : list of (int, int) or None, default None
        Keyword-only; the ``(w, a)`` settings.
    methods : iterable of str, default ``("ptq", *RANGES_SHOWN)``
        The methods of each setting.
    seed : int, default 0
        Seed of the shuffles.
    mode : str, default ``"tflite"``
        The requantization mode.
    models_dir : pathlib.Path or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    progress : callable, default does nothing
        Called with a message.

    Returns
    -------
    list of QATResult
        The rows.
    """
    rows = []
    for name in models:
        check_choice(name, "models", tuple(BITS))
        model, data = reference(name, models_dir)
        rows.append(
            QATResult(
                model=name,
                weight_bits=None,
                act_bits=None,
                method="float",
                accuracy=_accuracy(model, data["x_test"], data["y_test"]),
            )
        )
        for w, a in BITS[name] if bits is None else bits:
            progress(f"{name} W{w}A{a}: {', '.join(methods)} ...")
            for method in methods:
                rows.append(qat_experiment(name, w, a, method, seed=seed, mode=mode, model=model, data=data))
    return rows


def recovery(rows: list[QATResult], name: str, weight_bits: int, act_bits: int, method: str) -> float | None:
    """The share of PTQ's accuracy loss that QAT ``method`` wins back at ``W<w>A<a>`` on
    ``name``: ``(QAT - PTQ) / (float - PTQ)``; None when PTQ loses nothing.

    Parameters
    ----------
    rows : list of QATResult
        Rows of :func:`results` holding the float, PTQ and ``method`` rows.
    name : str
        The model.
    weight_bits, act_bits : int
        The setting.
    method : str
        The QAT method.

    Returns
    -------
    float or None
        The share.
    """

    def acc(m, w=weight_bits, a=act_bits):
        return next(
            r.accuracy
            for r in rows
            if r.model == name and r.method == m and (m == "float" or (r.weight_bits, r.act_bits) == (w, a))
        )

    lost = acc("float") - acc("ptq")
    return None if lost <= 0 else (acc(method) - acc("ptq")) / lost


_LABEL = {"float": "float32", "ptq": "PTQ min-max", "minmax": "QAT min-max EMA", "lsq": "QAT LSQ", "pact": "QAT PACT"}


def format_results(rows: list[QATResult]) -> str:
    """The table of ``rows`` (from :func:`results`), with a line per model on how much of
    PTQ's W4A4 loss QAT recovers.

    Parameters
    ----------
    rows : list of QATResult
        The rows, each model's float row among them.

    Returns
    -------
    str
        The table and the notes.
    """
    from .._table import format_table

    floats = {r.model: r.accuracy for r in rows if r.method == "float"}
    cells = []
    for r in rows:
        diff = "" if r.method == "float" else f"{100 * (r.accuracy - floats[r.model]):+.2f}"
        cells.append(
            [
                r.model,
                r.bits,
                _LABEL[r.method],
                f"{100 * r.accuracy:.2f} %",
                diff,
                "" if r.agreement is None else f"{100 * r.agreement:.1f} %",
                str(r.epochs) if r.epochs else "",
                "" if r.method == "float" else f"{r.time_s:.1f}",
            ]
        )
    table = format_table(
        ["model", "bits", "method", "test acc", "vs float pp", "int = QAT", "epochs", "s"], cells, align="lllrrrrr"
    )
    notes = []
    for name in floats:
        have = {(r.weight_bits, r.act_bits, r.method) for r in rows if r.model == name}
        if (4, 4, "ptq") not in have:
            continue
        parts = []
        for m in RANGES_SHOWN:
            if (4, 4, m) in have:
                rec = recovery(rows, name, 4, 4, m)
                parts.append(f"{_LABEL[m]} {'n/a' if rec is None else f'{100 * rec:.0f} %'}")
        if parts:
            notes.append(f"{name} W4A4: share of PTQ's loss recovered: " + ", ".join(parts))
    return table + ("\n\n" + "\n".join(notes) if notes else "")
