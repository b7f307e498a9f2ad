"""Deep Compression end to end (Han, Mao and Dally, ICLR 2016), and the tables of the source
material reproduced on the bundled models.

:func:`deep_compression` runs the paper's three stages on a trainable model, then writes
one file and reads it back::

    prune_and_retrain(model, sparsity=..., steps=prune_steps,          # 1. pruning, with
                      epochs_per_step=prune_epochs)                    #    retraining, masks held
    qat = kmeans_qat(model, bits=..., epochs=finetune_epochs)          # 2. k-means weight sharing,
                                                                       #    centroids fine-tuned
    comp = compress(model.state_dict(), shared=qat's codebooks and indices)  # 3. Huffman coding
    back = read_compressed(comp.to_bytes())                            # the file, read back
    file_model = copy of model with back loaded                        # evaluated: the last row

The retraining uses Adam (batch 32) at ``lr`` with a cosine schedule within each pruning
step (:class:`~npquant.training.optim.CosineAnnealingLR`); the fine-tuning Adam at
``finetune_lr``, cosine too, with the mean centroid gradient (the learning-rate rule of
:mod:`npquant.training.kmeans_qat`). Every weight tensor is shared (5-bit codebooks for
fully connected layers, 8-bit for conv, the paper's), and by default the bias of each of
their layers too (``bias_bits=5``, fine-tuned with the weights, so the file stores what
the model computes with). The file keeps the fine-tuned codebooks and indices as they are
(``compress(shared=...)``): clustering the fine-tuned weights again is not guaranteed to
give them back. The per-stage table (:meth:`DeepCompressionResult.table`)
gives the bytes and ratio after pruning, after quantization and after Huffman coding
(:func:`npquant.compression.pipeline.stage_sizes`; the last is the real file) and the test accuracy
after each stage; the last accuracy is that of the model rebuilt from the file read back,
checked equal (bit for bit in every tensor) to the model in memory. The test set is used
only to report: nothing is chosen on it.

Tables (:func:`tables`, ``npquant compress --tables``):

1. the MIT lab's k-means table (:func:`kmeans_table`): each bundled model at 8, 4 and 2
   bits, no pruning: size (float32 codebooks and packed indices, the lab's accounting; and
   the npquant file), test accuracy after k-means only and after k-means QAT;
2. Deep Compression's per-stage table (:func:`deep_compression` with :data:`DEFAULTS`) for
   LeNet-300-100 and the CNN;
3. a sweep of sparsity x bits on LeNet-300-100 (:func:`sweep`): file ratio and accuracy,
   with the best point (the largest ratio within 0.5 points of float) against the
   paper's 40x, and a plot (:func:`npquant.app.plot.plot_compression_tradeoff`).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .._checks import check_bool, check_int, check_real
from .._table import format_table
from ..compression.pipeline import (
    Compressed,
    LayerConfig,
    StageSizes,
    compress,
    read_compressed,
    stage_sizes,
    write_compressed,
)
from .kmeans_qat import KMeansQATResult, kmeans_qat
from .optim import CosineAnnealingLR
from .pruning import PruneRetrainResult, _check_data, _check_names, prune_and_retrain, weight_names
from .trainer import _check_model, _data, evaluate

if TYPE_CHECKING:
    from ..models import nn

__all__ = [
    "DEFAULTS",
    "PAPER_LENET_RATIO",
    "SWEEP_BITS",
    "SWEEP_SPARSITIES",
    "DeepCompressionResult",
    "best_point",
    "bundled",
    "deep_compression",
    "default_bits",
    "format_kmeans_table",
    "format_sweep",
    "kmeans_table",
    "run_bundled",
    "sweep",
    "tables",
]

PAPER_LENET_RATIO = 40
"""Deep Compression's ratio for LeNet-300-100 on MNIST (Han et al. 2016, Table 1)."""

DEFAULTS = {
    "mlp": {"sparsity": {"fc1.weight": 0.9, "fc2.weight": 0.85, "fc3.weight": 0.6}, "bits": {}},
    "lenet_300_100": {"sparsity": {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}, "bits": {}},
    "cnn": {
        "sparsity": {"conv1.weight": 0.3, "conv2.weight": 0.5, "fc.weight": 0.7},
        "bits": {"conv1.weight": 5, "conv2.weight": 5},
    },
}
"""The :func:`deep_compression` settings of each bundled model: per-layer ``sparsity`` and
``bits`` over :func:`default_bits`. LeNet-300-100: the paper's rates (92, 91, 74 %) and
5-bit codebooks. The MLP (64-128-64-10) is narrower and pruned less (90, 85, 60 %). The
CNN: conv layers pruned less, as the paper prunes conv layers (30 % of conv1's 72
weights, 50 % of conv2's 1,152; 70 % of the fully connected layer), and 5-bit codebooks
for the conv layers too: a paper-sized 8-bit codebook holds 256 float32 centroids (1,024
bytes, more than conv1's 288 bytes of float32 weights)."""


def default_bits(model: nn.Sequential) -> dict:
    """``{weight name: bits}``: 8 for a conv kernel (4-D), 5 for a fully connected weight
    (2-D), Deep Compression's defaults.

    Parameters
    ----------
    model : npquant.models.nn.Sequential
        The model (see :func:`npquant.training.pruning.weight_names`).

    Returns
    -------
    dict of str to int
        The bits of each weight.
    """
    params = model.named_parameters()
    return {n: 8 if params[n].ndim == 4 else 5 for n in weight_names(model)}


@dataclass
class DeepCompressionResult:
    """The result of :func:`deep_compression`.

    Attributes
    ----------
    model
        The model given, pruned, retrained and weight-shared in place.
    file_model
        A copy of it with every tensor of the file read back loaded (the
        architecture is the model's; the tensors are the file's).
    compressed : Compressed
        The :class:`~npquant.compression.pipeline.Compressed` result.
    data : bytes
        The file's bytes (version 3).
    path : str or None
        Where it was written (``None``: not written).
    sizes : StageSizes
        :func:`~npquant.compression.pipeline.stage_sizes` of it (``sizes.huffman == len(data)``).
    accuracy : dict
        Test accuracies, ``{"float", "pruned"`` (after the last retraining),
        ``"kmeans"`` (k-means, before fine-tuning), ``"finetuned"``, ``"file"`` (the model
        rebuilt from the file)``}``, fractions in [0, 1].
    prune, qat : PruneRetrainResult or None, KMeansQATResult
        The :class:`~npquant.training.pruning.PruneRetrainResult` and
        :class:`~npquant.training.kmeans_qat.KMeansQATResult` of the two training stages.
    time_s : dict
        Wall seconds, ``{"prune", "quantize", "huffman", "total"}``.
    """

    model: object
    file_model: object
    compressed: Compressed
    data: bytes
    path: str | None
    sizes: StageSizes
    accuracy: dict
    prune: PruneRetrainResult | None
    qat: KMeansQATResult
    time_s: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """float32 bytes of every tensor stored / bytes of the file."""
        return self.sizes.original / len(self.data)

    def rows(self) -> list:
        """``[(stage, bytes, ratio, weight bytes, weight ratio, accuracy)]``, the paper's
        stages in order; ratios are float32 bytes over the stage's bytes."""
        s, a = self.sizes, self.accuracy

        def row(stage, total, weights, acc):
            return (stage, total, s.original / total, weights, s.weights_original / weights if weights else None, acc)

        return [
            row("float32", s.original, s.weights_original, a["float"]),
            row("pruned + retrained", s.pruned, s.weights_pruned, a["pruned"]),
            row("k-means (not fine-tuned)", s.quantized, s.weights_quantized, a["kmeans"]),
            row("k-means + fine-tuned centroids", s.quantized, s.weights_quantized, a["finetuned"]),
            row("Huffman coded (the file)", s.huffman, s.weights_huffman, a["file"]),
        ]

    def table(self) -> str:
        """The per-stage table as fixed-width text (accuracies in %)."""

        def x(r):
            return "-" if r is None else f"{r:.1f}x"

        return format_table(
            ["stage", "model B", "ratio", "weights B", "weights ratio", "test accuracy"],
            [[st, str(b), x(r), str(wb), x(wr), f"{100 * acc:.2f} %"] for st, b, r, wb, wr, acc in self.rows()],
        )


def _per_weight(spec, names: list, what: str, check) -> dict:
    """``spec`` (a value, or ``{name: value}`` over some of ``names``) as ``{name: value}``."""
    if isinstance(spec, Mapping):
        unknown = [n for n in spec if n not in names]
        if unknown:
            raise ValueError(
                f"{what} names {unknown[0]!r}, which is not a weight tensor of the model; they are {names}"
            )
        return {n: check(v, f"{what}[{n!r}]") for n, v in spec.items()}
    return {n: check(spec, what) for n in names}


def _note(progress, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def deep_compression(
    model: nn.Sequential,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    *,
    sparsity: float | Mapping[str, float],
    prune_steps: int = 3,
    prune_epochs: int = 20,
    bits: int | Mapping[str, int] | None = None,
    bias_bits: int | None = 5,
    finetune_epochs: int = 10,
    lr: float = 1e-3,
    finetune_lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    progress: bool = True,
) -> DeepCompressionResult:
    """Prune, retrain, k-means quantize, fine-tune the centroids, Huffman code: one file.

    Parameters
    ----------
    model
        A trainable model with ``state_dict()`` (e.g. an :class:`npquant.models.nn.Sequential`),
        changed in place. Its float tensors go into the file; other entries (a batch
        norm's int64 ``num_batches_tracked``, which inference does not use) do not.
    x_train, y_train, x_test, y_test
        float ``(N, ...)`` inputs (float32 is used) and int ``(N,)`` labels; the test set
        only measures the accuracies.
    sparsity : float in [0, 1) or dict
        The fraction of weights pruned: one number for every weight tensor, or
        ``{weight name: fraction}`` (the tensors not named are not pruned).
    prune_steps : int >= 1
        Pruning steps to ``sparsity`` (cubic schedule; 1 is one shot).
    prune_epochs : int >= 0
        Retraining epochs after each pruning step.
    bits : int in [1, 8] or dict, optional
        k-means bits: one for every weight tensor, or ``{weight name: bits}`` over
        :func:`default_bits` (8 for conv, 5 for fully connected layers; the default).
    bias_bits : int in [1, 8] or None
        The ``"<layer>.bias"`` of every layer with a weight tensor shares a codebook of
        this many bits, fine-tuned with the weights (default 5); ``None`` keeps the biases
        as trained, stored exactly.
    finetune_epochs : int >= 0
        Centroid fine-tuning epochs (0: k-means only).
    lr, finetune_lr : float
        Adam's learning rates of the retraining and of the fine-tuning, positive, each
        cosine-annealed (within each pruning step; over the fine-tuning).
    batch_size : int >= 1
    seed : int >= 0
        Seeds the shuffles of every training epoch; the run is reproducible.
    path : str or os.PathLike, optional
        Write the file there (atomically) and read it back from there; ``None``: read
        back its bytes.
    progress : bool
        Progress bars of the training (stderr) and one line per stage.

    Returns
    -------
    DeepCompressionResult

    Raises
    ------
    RuntimeError
        The model rebuilt from the file differs from the model in memory (a bug).
    """
    t0 = time.perf_counter()
    _check_model(model)
    prune_steps = check_int(prune_steps, "prune_steps", lo=1)
    prune_epochs = check_int(prune_epochs, "prune_epochs", lo=0)
    finetune_epochs = check_int(finetune_epochs, "finetune_epochs", lo=0)
    lr = check_real(lr, "lr", lo=0, lo_open=True)
    finetune_lr = check_real(finetune_lr, "finetune_lr", lo=0, lo_open=True)
    batch_size = check_int(batch_size, "batch_size", lo=1)
    seed = check_int(seed, "seed", lo=0)
    progress = check_bool(progress, "progress")
    x_train, y_train, _, _ = _check_data(x_train, y_train, None, None)
    x_test, y_test = _data(x_test, y_test, "x_test", "y_test")
    names = weight_names(model)
    _check_names(model, sparsity, "sparsity")
    _per_weight(sparsity, names, "sparsity", lambda v, n: check_real(v, n, lo=0, hi=1, hi_open=True))
    per_bits = {
        **default_bits(model),
        **_per_weight({} if bits is None else bits, names, "bits", lambda v, n: check_int(v, n, lo=1, hi=8)),
    }
    if bias_bits is not None:
        per_bits.update(_bias_bits(model, check_int(bias_bits, "bias_bits", lo=1, hi=8)))
    acc_float = evaluate(model, x_test, y_test)[1]
    pr = _prune(
        model, x_train, y_train, x_test, y_test, sparsity, prune_steps, prune_epochs, lr, batch_size, seed, progress
    )
    t_prune = time.perf_counter() - t0
    result = _share_and_code(
        model,
        x_train,
        y_train,
        x_test,
        y_test,
        per_bits,
        finetune_epochs,
        finetune_lr,
        batch_size,
        seed,
        path,
        progress,
    )
    result.prune = pr
    result.accuracy.update(float=acc_float, pruned=pr.history[-1]["accuracy"])
    result.time_s.update(prune=t_prune, total=time.perf_counter() - t0)
    return result


def _bias_bits(model, bits: int) -> dict:
    """``{bias name: bits}`` for the ``"<layer>.bias"`` of every layer whose weight is shared."""
    params = model.named_parameters()
    return {b: bits for b in (n[: -len("weight")] + "bias" for n in weight_names(model)) if b in params}


def _prune(model, x_train, y_train, x_test, y_test, sparsity, steps, epochs, lr, batch_size, seed, progress):
    """Stage 1: :func:`prune_and_retrain` with Adam and a cosine schedule in each step."""
    _note(progress, f"pruning to {_describe(sparsity)} in {steps} step(s), {epochs} epoch(s) of retraining each ...")
    return prune_and_retrain(
        model,
        x_train,
        y_train,
        sparsity=sparsity,
        steps=steps,
        epochs_per_step=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        lr_schedule=CosineAnnealingLR(epochs) if epochs else None,
        x_val=x_test,
        y_val=y_test,
        progress=progress,
    )


def _describe(sparsity) -> str:
    if isinstance(sparsity, Mapping):
        return "/".join(f"{100 * v:g}" for v in sparsity.values()) + " %"
    return f"{100 * sparsity:g} %"


def _share_and_code(
    model,
    x_train,
    y_train,
    x_test,
    y_test,
    per_bits: dict,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    path,
    progress: bool,
) -> DeepCompressionResult:
    """Stages 2 and 3 on a (pruned) model: k-means QAT, the file, the model rebuilt from it."""
    t0 = time.perf_counter()
    _note(
        progress,
        f"k-means weight sharing ({', '.join(f'{n} {b} bits' for n, b in per_bits.items())}), "
        f"{epochs} epoch(s) of centroid fine-tuning ...",
    )
    qat = kmeans_qat(
        model,
        x_train,
        y_train,
        bits=per_bits,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        x_val=x_test,
        y_val=y_test,
        progress=progress,
        lr_schedule=CosineAnnealingLR(epochs) if epochs else None,
    )
    t1 = time.perf_counter()
    state = {k: v for k, v in model.state_dict().items() if np.asarray(v).dtype.kind == "f"}
    params = model.named_parameters()
    configs = {
        n: LayerConfig(bits=b, index_bits=8 if params[n].ndim == 4 else 5)
        for n, b in per_bits.items()
        if params[n].ndim in (2, 4)
    }
    shared = {n: (qat.codebooks[n], qat.indices[n], qat.reserved_zero[n]) for n in per_bits}
    comp = compress(state, configs, shared=shared)
    data = comp.to_bytes()
    if path is not None:
        write_compressed(comp, path)
        back = read_compressed(path)
    else:
        back = read_compressed(data)
    for n, v in state.items():  # the file holds the model in memory, bit for bit
        if n not in back or not np.array_equal(
            np.asarray(back[n]).view(np.uint32), np.asarray(v, np.float32).view(np.uint32)
        ):
            raise RuntimeError(f"the file does not rebuild {n!r} of the model bit for bit")
    file_model = copy.deepcopy(model)
    file_model.load_state_dict(back)
    acc_file = evaluate(file_model, x_test, y_test)[1]
    acc_mem = evaluate(model, x_test, y_test)[1]
    if acc_file != acc_mem:
        raise RuntimeError(f"the model rebuilt from the file scores {acc_file}, the model in memory {acc_mem}")
    sizes = stage_sizes(comp)
    _note(
        progress,
        f"the file: {len(data)} bytes, {sizes.original / len(data):.1f}x smaller than float32; test "
        f"accuracy {100 * acc_file:.2f} %",
    )
    return DeepCompressionResult(
        model=model,
        file_model=file_model,
        compressed=comp,
        data=data,
        path=None if path is None else str(path),
        sizes=sizes,
        accuracy={"kmeans": qat.accuracy_kmeans, "finetuned": qat.accuracy, "file": acc_file},
        prune=None,
        qat=qat,
        time_s={"quantize": t1 - t0, "huffman": time.perf_counter() - t1},
    )


# ---------------------------------------------------------------------------------------
# the bundled models and the tables
# ---------------------------------------------------------------------------------------
def bundled(name: str, models_dir: str | os.PathLike | None = None) -> tuple:
    """``(model, data, reference)`` of bundled model ``name`` (``mlp``, ``lenet_300_100``,
    ``cnn``): a fresh :class:`npquant.models.nn.Sequential` built from copies of the reference
    weights (training it leaves the reference untouched), the digits split
    (:func:`~npquant.training.trainer.digits_data`) and the :class:`~npquant.models.io.Reference`.

    Parameters
    ----------
    name : str
        The model.
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None``: the bundled ones.

    Returns
    -------
    tuple
        ``(model, data, reference)``.
    """
    from pathlib import Path

    from .._checks import check_choice
    from ..app.demo import MODELS, default_models_dir
    from ..models.io import load_reference
    from ..models.nn import build_model
    from .trainer import digits_data

    check_choice(name, "name", MODELS)
    models_dir = default_models_dir() if models_dir is None else Path(models_dir)
    ref = load_reference(models_dir / f"{name}.npz")
    model = build_model(ref.arch, {k: np.array(v, copy=True) for k, v in ref.state.items()})
    return model, digits_data(ref.arch, models_dir), ref


def run_bundled(
    name: str,
    *,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    progress: bool = True,
    **options,
) -> DeepCompressionResult:
    """:func:`deep_compression` of bundled model ``name`` on the digits split, with its
    :data:`DEFAULTS` (``options`` override them and the other keywords of
    :func:`deep_compression`; ``bits`` given as a dict updates the model's per-layer
    defaults).

    Parameters
    ----------
    name : str
        ``"mlp"``, ``"lenet_300_100"`` or ``"cnn"``.
    seed : int, default 0
        Keyword-only; passed to :func:`deep_compression`.
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    path : str, os.PathLike or None, default None
        Passed to :func:`deep_compression`.
    progress : bool, default True
        Passed to :func:`deep_compression`.
    **options
        Other keywords of :func:`deep_compression`.

    Returns
    -------
    DeepCompressionResult
        The result.
    """
    model, d, _ = bundled(name, models_dir)
    defaults = DEFAULTS[name]
    options.setdefault("sparsity", defaults["sparsity"])
    bits = options.pop("bits", None)
    if bits is None or isinstance(bits, Mapping):
        bits = {**defaults["bits"], **(bits or {})} or None
    return deep_compression(
        model,
        d["x_train"],
        d["y_train"],
        d["x_test"],
        d["y_test"],
        bits=bits,
        seed=seed,
        path=path,
        progress=progress,
        **options,
    )


def kmeans_table(
    models: Iterable[str] | None = None,
    bits: Iterable[int] = (8, 4, 2),
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> list:
    """The MIT lab's k-means table on the bundled models: every weight tensor k-means
    quantized at each of ``bits`` (no pruning, biases exact), then ``epochs`` epochs of
    k-means QAT (:func:`~npquant.training.kmeans_qat.kmeans_qat`: Adam at ``lr``, cosine
    schedule, mean centroid gradient).

    Parameters
    ----------
    models : iterable of str or None, default None
        The models; ``None`` is every bundled model.
    bits : iterable of int, default (8, 4, 2)
        The bit widths, each 1..8.
    epochs : int, default 10
        Keyword-only; k-means QAT epochs.
    lr : float, default 1e-3
        Adam's learning rate.
    seed : int, default 0
        Seed of the k-means and the shuffles.
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    progress : bool, default False
        Show progress.

    Returns
    -------
    list of dict
        One dict per model and setting: ``model``, ``bits`` (``None`` for the float
        row), ``bytes`` and ``ratio`` (the lab's size: float32 codebooks, indices packed at
        ``bits``, other tensors float32; :attr:`StageSizes.quantized
        <npquant.compression.pipeline.StageSizes>`), ``file_bytes`` and ``file_ratio`` (the npquant file,
        Huffman coded), ``accuracy_kmeans`` (test accuracy after k-means only), ``accuracy``
        (after k-means QAT, from the model rebuilt from the file), ``time_s``.
    """
    from ..app.demo import MODELS

    models = MODELS if models is None else tuple(models)
    rows = []
    for name in models:
        model, d, _ = bundled(name, models_dir)
        acc = evaluate(model, d["x_test"], d["y_test"])[1]
        original = sum(4 * np.asarray(v).size for v in model.state_dict().values() if np.asarray(v).dtype.kind == "f")
        rows.append(
            {
                "model": name,
                "bits": None,
                "bytes": original,
                "ratio": 1.0,
                "file_bytes": None,
                "file_ratio": None,
                "accuracy_kmeans": acc,
                "accuracy": acc,
                "time_s": 0.0,
            }
        )
        for b in bits:
            b = check_int(b, "bits", lo=1, hi=8)
            t0 = time.perf_counter()
            m = copy.deepcopy(model)
            r = _share_and_code(
                m,
                d["x_train"],
                d["y_train"],
                d["x_test"],
                d["y_test"],
                {n: b for n in weight_names(m)},
                epochs,
                lr,
                32,
                seed,
                None,
                progress,
            )
            rows.append(
                {
                    "model": name,
                    "bits": b,
                    "bytes": r.sizes.quantized,
                    "ratio": r.sizes.original / r.sizes.quantized,
                    "file_bytes": len(r.data),
                    "file_ratio": r.ratio,
                    "accuracy_kmeans": r.accuracy["kmeans"],
                    "accuracy": r.accuracy["file"],
                    "time_s": time.perf_counter() - t0,
                }
            )
    return rows


def format_kmeans_table(rows: list) -> str:
    """:func:`kmeans_table`'s rows as fixed-width text.

    Parameters
    ----------
    rows : list of dict
        The rows of :func:`kmeans_table`.

    Returns
    -------
    str
        The table.
    """

    def pct(v):
        return f"{100 * v:.2f} %"

    return format_table(
        ["model", "bits", "size B", "ratio", "file B", "file ratio", "k-means", "k-means QAT"],
        [
            [
                r["model"],
                "float32" if r["bits"] is None else str(r["bits"]),
                str(r["bytes"]),
                f"{r['ratio']:.1f}x",
                "-" if r["file_bytes"] is None else str(r["file_bytes"]),
                "-" if r["file_ratio"] is None else f"{r['file_ratio']:.1f}x",
                pct(r["accuracy_kmeans"]),
                "-" if r["bits"] is None else pct(r["accuracy"]),
            ]
            for r in rows
        ],
    )


SWEEP_SPARSITIES = (
    {"fc1.weight": 0.85, "fc2.weight": 0.85, "fc3.weight": 0.6},
    DEFAULTS["lenet_300_100"]["sparsity"],
    {"fc1.weight": 0.95, "fc2.weight": 0.95, "fc3.weight": 0.8},
)
"""The sparsities of :func:`sweep`: lighter than the paper's, the paper's, heavier."""

SWEEP_BITS = (5, 4, 3)
"""The bit widths of :func:`sweep` (weights and biases)."""


def sweep(
    name: str = "lenet_300_100",
    sparsities: Iterable = SWEEP_SPARSITIES,
    bits: Iterable[int] = SWEEP_BITS,
    *,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **options,
) -> list:
    """Deep Compression of a bundled model at each sparsity x bit width: the trade-off
    between the file's ratio and the test accuracy.

    Each sparsity is pruned and retrained once (as :func:`deep_compression`); each bit
    width then starts from a copy of that model: weights and biases k-means shared at
    ``bits``, fine-tuned, coded. ``options``: ``prune_steps``, ``prune_epochs``,
    ``finetune_epochs``, ``lr``, ``finetune_lr`` (defaults of :func:`deep_compression`).

    Parameters
    ----------
    name : str, default ``"lenet_300_100"``
        The bundled model.
    sparsities : iterable, default ``SWEEP_SPARSITIES``
        The sparsities (each a float or a dict of weight name to float).
    bits : iterable of int, default ``SWEEP_BITS``
        The bit widths, each 1..8.
    seed : int, default 0
        Keyword-only; seed of the k-means and the shuffles.
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    progress : bool, default False
        Show progress.
    **options
        ``prune_steps`` (3), ``prune_epochs`` (20), ``finetune_epochs`` (10), ``lr``
        (1e-3), ``finetune_lr`` (1e-3); any other is a ``TypeError``.

    Returns
    -------
    list of dict
        One dict per point: ``sparsity`` (the dict), ``bits``, ``bytes`` (the file),
        ``ratio``, ``weights_ratio``, ``accuracy`` (of the model rebuilt from the file),
        ``float_accuracy``.
    """
    steps = check_int(options.pop("prune_steps", 3), "prune_steps", lo=1)
    epochs = check_int(options.pop("prune_epochs", 20), "prune_epochs", lo=0)
    ft_epochs = check_int(options.pop("finetune_epochs", 10), "finetune_epochs", lo=0)
    lr = check_real(options.pop("lr", 1e-3), "lr", lo=0, lo_open=True)
    ft_lr = check_real(options.pop("finetune_lr", 1e-3), "finetune_lr", lo=0, lo_open=True)
    if options:
        raise TypeError(f"sweep() got an unexpected keyword argument {next(iter(options))!r}")
    rows = []
    for sp in sparsities:
        model, d, _ = bundled(name, models_dir)
        data = (d["x_train"], d["y_train"], d["x_test"], d["y_test"])
        acc_float = evaluate(model, d["x_test"], d["y_test"])[1]
        _prune(model, *data, sp, steps, epochs, lr, 32, seed, progress)
        for b in bits:
            b = check_int(b, "bits", lo=1, hi=8)
            m = copy.deepcopy(model)
            per_bits = {**{n: b for n in weight_names(m)}, **_bias_bits(m, b)}
            r = _share_and_code(m, *data, per_bits, ft_epochs, ft_lr, 32, seed, None, progress)
            rows.append(
                {
                    "sparsity": sp,
                    "bits": b,
                    "bytes": len(r.data),
                    "ratio": r.ratio,
                    "weights_ratio": r.sizes.weights_original / r.sizes.weights_huffman,
                    "accuracy": r.accuracy["file"],
                    "float_accuracy": acc_float,
                }
            )
    return rows


def best_point(rows: list, tolerance: float = 0.005) -> dict | None:
    """The row of :func:`sweep` with the largest ratio among those within ``tolerance``
    (a fraction: 0.005 is half a point) of float accuracy; ``None`` if there is none.

    Parameters
    ----------
    rows : list of dict
        The rows of :func:`sweep`.
    tolerance : float, default 0.005
        The accuracy loss allowed.

    Returns
    -------
    dict or None
        The row.
    """
    ok = [r for r in rows if r["accuracy"] >= r["float_accuracy"] - tolerance]
    return max(ok, key=lambda r: r["ratio"]) if ok else None


def _sp(sp) -> str:
    return "/".join(f"{100 * v:g}" for v in sp.values()) if isinstance(sp, Mapping) else f"{100 * sp:g}"


def format_sweep(rows: list) -> str:
    """:func:`sweep`'s rows as fixed-width text, and the best point against the paper's
    40x.

    Parameters
    ----------
    rows : list of dict
        The rows of :func:`sweep`.

    Returns
    -------
    str
        The table and a line on the best point.
    """
    table = format_table(
        ["sparsity %", "bits", "file B", "ratio", "weights ratio", "test accuracy", "vs float"],
        [
            [
                _sp(r["sparsity"]),
                str(r["bits"]),
                str(r["bytes"]),
                f"{r['ratio']:.1f}x",
                f"{r['weights_ratio']:.1f}x",
                f"{100 * r['accuracy']:.2f} %",
                f"{100 * (r['accuracy'] - r['float_accuracy']):+.2f}",
            ]
            for r in rows
        ],
    )
    best = best_point(rows)
    if best is None:
        return table + "\nno point is within 0.5 points of float accuracy"
    return (
        table + f"\nbest point within 0.5 points of float ({100 * best['float_accuracy']:.2f} %): sparsity "
        f"{_sp(best['sparsity'])} %, {best['bits']} bits: {best['ratio']:.1f}x at {100 * best['accuracy']:.2f} % "
        f"(Deep Compression: {PAPER_LENET_RATIO}x on MNIST, whose first layer has 784 inputs, not 64)"
    )


def tables(
    *,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
    plots: str | os.PathLike | None = None,
    progress: bool = True,
) -> str:
    """The three tables (module docstring) as text, computed on the spot; with ``plots``
    (a folder), also the sweep's trade-off figure ``deep_compression_tradeoff.png`` when
    matplotlib is installed (else a note in the text).

    Parameters
    ----------
    seed : int, default 0
        Keyword-only; the seed of every run.
    models_dir : str, os.PathLike or None, default None
        The folder of the reference models; ``None``: the bundled ones.
    plots : str, os.PathLike or None, default None
        The folder of the figure (created if missing); ``None``: no figure.
    progress : bool, default True
        Print progress notes.

    Returns
    -------
    str
        The tables.
    """
    from pathlib import Path

    if plots is not None:
        Path(plots).mkdir(parents=True, exist_ok=True)  # before the work, not after it
    t0 = t = time.perf_counter()
    parts = []

    def took() -> str:
        nonlocal t
        dt, t = time.perf_counter() - t, time.perf_counter()
        return f"({dt:.0f} s)"

    _note(progress, "table 1: k-means and k-means QAT at 8, 4 and 2 bits ...")
    km = kmeans_table(seed=seed, models_dir=models_dir, progress=progress)
    parts.append(
        "1. k-means weight sharing and k-means QAT (the MIT lab's table; no pruning, biases exact; "
        "size: float32 codebooks and packed indices; file: npquant's, Huffman coded; test accuracy, "
        f"450 digits) {took()}\n" + format_kmeans_table(km)
    )
    for name in ("lenet_300_100", "cnn"):
        _note(progress, f"table 2: Deep Compression of {name} ...")
        r = run_bundled(name, seed=seed, models_dir=models_dir, progress=progress)
        parts.append(
            f"2. Deep Compression per stage, {name} (sparsity {_sp(DEFAULTS[name]['sparsity'])} %, "
            f"bits {_bits_text(r)}) {took()}\n" + r.table()
        )
    _note(progress, "table 3: sparsity x bits on lenet_300_100 ...")
    sw = sweep(seed=seed, models_dir=models_dir, progress=progress)
    parts.append(
        "3. LeNet-300-100: sparsity (fc1/fc2/fc3) x bits (weights and biases), the file's ratio and test "
        f"accuracy {took()}\n" + format_sweep(sw)
    )
    if plots is not None:
        parts.append(_plot_sweep(sw, plots))
    parts.append(f"seed {seed}; computed in {time.perf_counter() - t0:.0f} s")
    return "\n\n".join(parts)


def _bits_text(r: DeepCompressionResult) -> str:
    return ", ".join(f"{n.rsplit('.', 1)[0]} {b}" for n, b in r.qat.bits.items() if n.endswith(".weight"))


def _plot_sweep(rows: list, directory) -> str:
    """Write the sweep's trade-off figure into ``directory``; a line saying where, or why not."""
    from pathlib import Path

    from ..app.plot import plot_compression_tradeoff, require_matplotlib, save_figure

    try:
        require_matplotlib()
    except ModuleNotFoundError as e:
        return f"no plot: {e}"
    points = [(r["ratio"], r["accuracy"], f"{_sp(r['sparsity']).split('/')[0]} % {r['bits']}b") for r in rows]
    fig = plot_compression_tradeoff(
        points,
        float_accuracy=rows[0]["float_accuracy"],
        title="LeNet-300-100 on digits, Deep Compression with retraining\n(labels: sparsity of fc1, bits)",
    )
    # points of equal accuracy sit on one line: put every other label below its point
    by_acc = {}
    for ann, (ratio, acc, _) in zip(fig.axes[0].texts, points):
        by_acc.setdefault(acc, []).append((ratio, ann))
    for group in by_acc.values():
        for i, (_, ann) in enumerate(sorted(group, key=lambda g: g[0])):
            if i % 2:
                ann.xyann = (5, -12)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.06 * (hi - lo), hi)  # room for a label below the lowest point
    path = save_figure(fig, Path(directory) / "deep_compression_tradeoff.png")
    return f"plot: {path}"
