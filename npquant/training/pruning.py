"""Pruning and retraining (Deep Compression, Han et al. 2015 and 2016): magnitude masks on
a model's weight tensors, and retraining with the masks held by the optimizer.

One step of :func:`prune_and_retrain`, as a student would write it::

    masks = magnitude_masks(weights, sparsity=s_i, masks=masks)   # npquant.compression.prune
    w[~masks[name]] = 0                                           # for every pruned tensor
    opt = Adam(model.named_parameters(), lr); opt.set_masks(masks)
    fit(model, None, opt, x_train, y_train, epochs=epochs_per_step, ...)

``s_i`` is the cumulative sparsity after step ``i`` (:func:`npquant.compression.prune.sparsity_schedule`;
``steps=1`` is one-shot pruning). The masks of a step nest in those of the step before: a
pruned weight is never revived. The optimizer's masks (:meth:`Optimizer.set_masks
<npquant.training.optim.Optimizer.set_masks>`) zero the masked gradient entries before
each update and the masked weights and optimizer state (momentum buffers, Adam moments)
after it, so the pruned weights are exactly ``+0.0`` after every step of SGD (with
momentum, Nesterov, weight decay), Adam and AdamW.

Which tensors: by default the weight tensors, i.e. the parameters named ``"<layer>.weight"``
that are 2-D (linear) or 4-D (convolution) (:func:`weight_names`); biases and batch-norm
parameters (1-D) are never pruned by default and keep training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_real
from ..compression.prune import SCHEDULES, SCOPES, magnitude_masks, sparsity_schedule
from .optim import SGD, Adam, AdamW
from .trainer import Hook, TrainableModel, _check_model, _data, evaluate, fit

__all__ = ["OPTIMIZERS", "PruneRetrainResult", "prune_and_retrain", "prune_model", "weight_names"]

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def weight_names(model: TrainableModel) -> list:
    """The names of ``model``'s weight tensors, in ``named_parameters()`` order: the
    parameters named ``"<layer>.weight"`` that are 2-D (linear, ``(out, in)``) or 4-D
    (convolution, OIHW). Batch-norm weights and biases (1-D) are not among them.

    Parameters
    ----------
    model : object with ``named_parameters()``
        E.g. an :class:`npquant.models.nn.Sequential`.

    Returns
    -------
    list of str
        The names.
    """
    if not callable(getattr(model, "named_parameters", None)):
        raise TypeError(f"model has no named_parameters(), got {type(model).__name__}")
    return [n for n, p in model.named_parameters().items() if n.endswith(".weight") and np.ndim(p) in (2, 4)]


def _make_optimizer(params: dict, optimizer: str, lr, options):
    """``OPTIMIZERS[optimizer](params, lr, **options)``, the arguments checked."""
    check_choice(optimizer, "optimizer", tuple(OPTIMIZERS))
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"optimizer_options must be a dict of keyword arguments or None, got {options!r}")
    try:
        return OPTIMIZERS[optimizer](params, lr, **options)
    except TypeError as e:
        raise TypeError(f"optimizer_options for {optimizer!r}: {e}") from None


def _check_data(x_train, y_train, x_val, y_val) -> tuple:
    """The training set and the optional validation set (both or neither), checked and as
    float32 inputs and int64 labels, as :func:`fit` takes them."""
    x_train, y_train = _data(x_train, y_train, "x_train", "y_train")
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together")
    if x_val is not None:
        x_val, y_val = _data(x_val, y_val, "x_val", "y_val")
    return x_train, y_train, x_val, y_val


def _check_names(model, spec, what: str) -> list:
    """The tensors ``spec`` applies to: every weight tensor for a number, the named
    parameters (any, a bias too) for a mapping."""
    names = weight_names(model)
    if isinstance(spec, Mapping):
        params = model.named_parameters()
        for n in spec:
            if n not in params:
                raise ValueError(
                    f"{what} names {n!r}, which is not a parameter of the model; its weight tensors are {names}"
                )
        return list(spec)
    if not names:
        raise ValueError("the model has no weight tensors (2-D or 4-D '<layer>.weight' parameters)")
    return names


def _weights(model, names) -> dict:
    params = model.named_parameters()
    return {n: params[n] for n in names}


def prune_model(
    model: TrainableModel, sparsity: float | Mapping[str, float], *, scope: str = "layer", masks: dict | None = None
) -> dict:
    """Magnitude-prune ``model``'s weight tensors in place; return the masks.

    Parameters
    ----------
    model
        A model with ``named_parameters()`` (live float32 arrays), e.g. an
        :class:`npquant.models.nn.Sequential`.
    sparsity : float in [0, 1) or dict
        The fraction of weights to prune. A number prunes every weight tensor
        (:func:`weight_names`); a dict ``{parameter name: sparsity}`` prunes exactly the
        parameters it names (``scope="layer"`` only; a bias only if named), e.g.
        ``{"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}``.
    scope : ``"layer"`` or ``"global"``
        ``"layer"``: exactly ``round(sparsity * n)`` weights of each tensor;
        ``"global"``: one threshold over all the weight tensors together
        (:func:`npquant.compression.prune.magnitude_masks` states the tie rule).
    masks : dict, optional
        The masks of an earlier step: their pruned weights stay pruned (they count toward
        the sparsity), so the new masks nest in them.

    Returns
    -------
    dict
        ``{name: bool array}`` (True = kept), the weight's shape. The pruned entries of the
        model's weights are set to ``+0.0``.
    """
    check_choice(scope, "scope", SCOPES)
    names = _check_names(model, sparsity, "sparsity")
    out = magnitude_masks(_weights(model, names), sparsity=sparsity, scope=scope, masks=masks)
    params = model.named_parameters()
    for n, m in out.items():
        params[n][~m] = 0
    return out


@dataclass
class PruneRetrainResult:
    """The result of :func:`prune_and_retrain`.

    Attributes
    ----------
    model
        The pruned and retrained model (the one given, trained in place).
    masks : dict
        ``{name: bool array}``, True = kept; the model's weights are exactly ``+0.0``
        where a mask is False.
    history : list of dict
        One dict per step, from step 0 (the model as given): ``step``, ``target``
        (the step's sparsity from the schedule: a float, or ``{name: float}`` when
        ``sparsity`` was a dict), ``sparsity`` (the fraction of zero weights over all
        the pruned tensors), ``layer_sparsity`` (``{name: fraction}``), ``accuracy_pruned``
        (validation accuracy right after pruning, before retraining), ``accuracy`` and
        ``loss`` (validation, after retraining; the accuracies are ``None`` without a
        validation set), ``time_s`` (wall time of the step) and ``fit`` (the step's
        :class:`~npquant.training.trainer.History`, ``None`` for step 0 or without
        retraining).
    """

    model: object
    masks: dict
    history: list = field(default_factory=list)

    def table(self) -> str:
        """The history as a fixed-width text table (accuracies in %)."""

        def pct(v):
            return "      -" if v is None else f"{100 * v:6.2f}%"

        lines = ["step  sparsity  acc pruned  acc retrained  time s"]
        for r in self.history:
            lines.append(
                f"{r['step']:4d}  {100 * r['sparsity']:7.2f}%  {pct(r['accuracy_pruned']):>10s}  "
                f"{pct(r['accuracy']):>13s}  {r['time_s']:6.2f}"
            )
        return "\n".join(lines)


def _sparsities(model, names) -> tuple:
    params = model.named_parameters()
    zeros = {n: int(np.count_nonzero(params[n] == 0)) for n in names}
    sizes = {n: params[n].size for n in names}
    return sum(zeros.values()) / sum(sizes.values()), {n: zeros[n] / sizes[n] for n in names}


def prune_and_retrain(
    model: TrainableModel,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    sparsity: float | Mapping[str, float],
    steps: int = 1,
    epochs_per_step: int,
    scope: str = "layer",
    schedule: str = "cubic",
    lr: float = 1e-3,
    optimizer: str = "adam",
    optimizer_options: dict | None = None,
    batch_size: int = 32,
    seed: int = 0,
    x_val: npt.ArrayLike | None = None,
    y_val: npt.ArrayLike | None = None,
    lr_schedule: Callable[[int, float], float] | None = None,
    hooks: Hook | list[Hook] | None = None,
    progress: bool = True,
) -> PruneRetrainResult:
    """Prune ``model`` by magnitude in ``steps`` steps to ``sparsity``, retraining after each
    with the pruned weights held at exactly 0 (module docstring).

    Parameters
    ----------
    model
        A trainable model (:func:`~npquant.training.trainer.fit`'s contract), trained in
        place.
    x_train, y_train
        float ``(N, ...)`` inputs (float32 is used) and int ``(N,)`` labels.
    sparsity : float in [0, 1) or dict
        The final sparsity, as in :func:`prune_model`: one number for every weight tensor
        (per tensor with ``scope="layer"``, over all of them with ``"global"``) or
        ``{parameter name: sparsity}`` (``scope="layer"``).
    steps : int >= 1
        Pruning steps; step ``i`` prunes to ``sparsity_schedule(sparsity, steps,
        kind=schedule)[i - 1]`` (:func:`npquant.compression.prune.sparsity_schedule`), 1 is one-shot.
    epochs_per_step : int >= 0
        Retraining epochs after each pruning step (0: prune without retraining).
    scope : ``"layer"`` or ``"global"``
    schedule : ``"cubic"`` (default), ``"linear"`` or ``"geometric"``
    lr : float
        The learning rate of the retraining (positive).
    optimizer : ``"adam"`` (default), ``"adamw"`` or ``"sgd"``
        A fresh optimizer over ``model.named_parameters()`` for each step (its state starts
        at zero), built as ``Adam(params, lr, **optimizer_options)`` etc. with the step's
        masks set (:meth:`~npquant.training.optim.Optimizer.set_masks`).
    optimizer_options : dict, optional
        Keyword arguments of the optimizer (``momentum``, ``nesterov``, ``weight_decay``,
        ``betas``, ...).
    batch_size : int >= 1
    seed : int >= 0
        Step ``i`` shuffles with ``fit(seed=seed + i - 1)``; nothing else is random.
    x_val, y_val
        A validation set (both or neither) for the history's accuracies.
    lr_schedule
        A schedule ``(epoch, base_lr) -> lr`` applied within each step's retraining.
    hooks
        Hooks passed on to :func:`~npquant.training.trainer.fit`.
    progress : bool
        Show :func:`fit`'s progress bar.

    Returns
    -------
    PruneRetrainResult
        The model, its masks and the per-step history.

    Notes
    -----
    On the bundled LeNet-300-100 (float: 97.78 % on the test set), Deep Compression's
    per-layer sparsities ``{"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}``
    in 3 steps of 20 epochs (Adam, lr 1e-3, ``lr_schedule=CosineAnnealingLR(20)``) end
    within 0.5 points of float for seeds 0, 1 and 2 (``tests/test_prune_retrain.py``);
    pruned in one shot without retraining it falls to 67.78 %.
    """
    _check_model(model)
    check_choice(scope, "scope", SCOPES)
    check_choice(schedule, "schedule", SCHEDULES)
    check_choice(optimizer, "optimizer", tuple(OPTIMIZERS))
    steps = check_int(steps, "steps", lo=1)
    epochs_per_step = check_int(epochs_per_step, "epochs_per_step", lo=0)
    lr = check_real(lr, "lr", lo=0, lo_open=True)
    seed = check_int(seed, "seed", lo=0)
    x_train, y_train, x_val, y_val = _check_data(x_train, y_train, x_val, y_val)
    names = _check_names(model, sparsity, "sparsity")
    if scope == "global" and isinstance(sparsity, Mapping):
        raise ValueError("scope='global' takes one sparsity number, not a dict")
    targets = sparsity_schedule(sparsity, steps, kind=schedule)

    def measure():
        return (None, None) if x_val is None else evaluate(model, x_val, y_val)

    loss, acc = measure()
    total, layer = _sparsities(model, names)
    history = [
        {
            "step": 0,
            "target": 0.0,
            "sparsity": total,
            "layer_sparsity": layer,
            "accuracy_pruned": acc,
            "accuracy": acc,
            "loss": loss,
            "time_s": 0.0,
            "fit": None,
        }
    ]
    masks = None
    for i, target in enumerate(targets, start=1):
        t0 = time.perf_counter()
        masks = prune_model(model, target, scope=scope, masks=masks)
        _, acc_pruned = measure()
        fit_history = None
        if epochs_per_step:
            opt = _make_optimizer(model.named_parameters(), optimizer, lr, optimizer_options)
            opt.set_masks(masks)
            fit_history = fit(
                model,
                None,
                opt,
                x_train,
                y_train,
                epochs=epochs_per_step,
                batch_size=batch_size,
                seed=seed + i - 1,
                schedule=lr_schedule,
                hooks=hooks,
                progress=progress,
            )
        loss, acc = measure()
        total, layer = _sparsities(model, names)
        history.append(
            {
                "step": i,
                "target": target,
                "sparsity": total,
                "layer_sparsity": layer,
                "accuracy_pruned": acc_pruned,
                "accuracy": acc,
                "loss": loss,
                "time_s": time.perf_counter() - t0,
                "fit": fit_history,
            }
        )
    model.eval()
    return PruneRetrainResult(model=model, masks=masks, history=history)
