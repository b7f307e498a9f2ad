"""The training loop: :func:`fit`, :func:`evaluate`, early stopping, hooks, and training the
reference models from scratch (:func:`train_reference`).

One epoch of :func:`fit`, as a student would write it::

    optimizer.lr = schedule(epoch - 1, base_lr)   # if a schedule is given
    model.train(); hooks: on_epoch_start          # e.g. put a frozen layer back in eval mode
    order = rng.permutation(n)                    # seeded: numpy.random.default_rng(seed)
    for each batch of indices b in order:
        hooks: on_batch_start
        model.zero_grad()
        logits = model(x[b])                      # training mode
        loss, grad = loss_fn(logits, y[b])        # NaN / inf loss: FloatingPointError
        model.backward(grad)
        optimizer.step(model.named_grads())
        hooks: on_step_end                        # e.g. re-apply pruning masks
    validation loss and accuracy (eval mode), one history row
    hooks: on_epoch_end                           # e.g. freeze BN or observers after epoch k
    early stopping

A run is reproducible bit for bit on one machine: the only randomness is the epoch
shuffles, drawn from ``numpy.random.default_rng(seed)``, and NumPy's float32 arithmetic
is deterministic for fixed shapes and thread counts.

Epochs, batches and steps are counted from 1 in the history, the hook state and the error
messages; a schedule is called with the 0-based epoch index (PyTorch's ``last_epoch``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from .._checks import check_bool, check_choice, check_int, check_real

if TYPE_CHECKING:
    from .optim import Optimizer

__all__ = [
    "fit",
    "evaluate",
    "EarlyStopping",
    "Hook",
    "TrainState",
    "History",
    "TrainableModel",
    "torch_default_init",
    "digits_data",
    "train_reference",
    "ReferenceRun",
    "REFERENCE_TRAINING",
]

HOOK_EVENTS = ("on_epoch_start", "on_batch_start", "on_step_end", "on_epoch_end")


class TrainableModel(Protocol):
    """What :func:`fit` and :func:`evaluate` call on a model (a type for hints only), e.g.
    an :class:`npquant.models.nn.Sequential`: ``model(x)`` gives the logits, ``backward``
    takes their gradient, ``named_parameters()`` and ``named_grads()`` map names to arrays.
    """

    def __call__(self, x: np.ndarray) -> np.ndarray: ...
    def train(self, mode: bool = True) -> TrainableModel: ...
    def eval(self) -> TrainableModel: ...
    def zero_grad(self) -> None: ...
    def backward(self, grad_y: np.ndarray) -> np.ndarray: ...
    def named_parameters(self) -> dict: ...
    def named_grads(self) -> dict: ...
    def state_dict(self) -> dict: ...


# ---------------------------------------------------------------------------------------
# history, state, hooks, early stopping
# ---------------------------------------------------------------------------------------
class History:
    """Per-epoch records of a run: ``rows`` is a list of dicts with keys ``epoch`` (from 1),
    ``train_loss``, ``train_accuracy`` (over the epoch's batches, in training mode, before
    each batch's update), ``val_loss``, ``val_accuracy`` (eval mode, after the epoch;
    ``None`` without a validation set), ``lr`` (the epoch's learning rate) and ``time_s``
    (wall time of the epoch's training steps, validation excluded).

    ``history["val_accuracy"]`` gives one column as a list. ``best_epoch`` is the epoch
    whose weights early stopping kept (else ``None``); ``stopped_early`` says whether it
    ended the run.
    """

    COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s")

    def __init__(self):
        self.rows: list[dict] = []
        self.best_epoch: int | None = None
        self.stopped_early = False

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key: str) -> list:
        if key not in self.COLUMNS:
            raise KeyError(f"{key!r} is not a history column; the columns are {', '.join(self.COLUMNS)}")
        return [r[key] for r in self.rows]

    def table(self) -> str:
        """The rows as a fixed-width text table."""

        def cell(v, fmt):
            return "-" if v is None else format(v, fmt)

        lines = ["epoch  train loss  train acc  val loss  val acc        lr   time s"]
        for r in self.rows:
            lines.append(
                f"{r['epoch']:5d}  {cell(r['train_loss'], '10.4f')}  {cell(r['train_accuracy'], '9.4f')}  "
                f"{cell(r['val_loss'], '8.4f')}  {cell(r['val_accuracy'], '7.4f')}  {r['lr']:8.2e}  "
                f"{r['time_s']:7.3f}"
            )
        return "\n".join(lines)

    def __repr__(self):
        return f"History({len(self.rows)} epochs, best_epoch={self.best_epoch}, stopped_early={self.stopped_early})"


@dataclass
class TrainState:
    """What a hook sees (and may change): the model and optimizer, where the run is, the
    current batch, and the history so far. Setting ``stop = True`` ends the run after the
    current epoch."""

    model: object
    optimizer: object
    epochs: int
    batches: int  # batches per epoch
    epoch: int = 0  # current epoch, from 1
    batch: int = 0  # batch within the epoch, from 1
    step: int = 0  # optimizer steps taken so far in this run
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    loss: float | None = None  # the loss of the current batch (after the forward pass)
    history: History = field(default_factory=History)
    stop: bool = False


class Hook:
    """A hook made of plain functions, each called with the :class:`TrainState`.

    Any object with one or more of these methods is a hook too.

    Parameters
    ----------
    on_epoch_start : callable or None, default None
        ``on_epoch_start(state)``: at the start of each epoch, after the schedule has set
        the learning rate and ``model.train()`` has put every layer in training mode (a
        layer meant to stay frozen, e.g. a batch norm after epoch k, is put back in eval
        mode here, or better frozen by a flag of its own, as PyTorch's ``freeze_bn_stats``).
    on_batch_start : callable or None, default None
        ``on_batch_start(state)``: before each batch's forward pass (``state.x``,
        ``state.y`` hold the batch).
    on_step_end : callable or None, default None
        ``on_step_end(state)``: after each optimizer step (re-apply pruning masks, update
        observers).
    on_epoch_end : callable or None, default None
        ``on_epoch_end(state)``: after each epoch's validation and history row (freeze
        batch norm or observers after epoch k, save a checkpoint, set ``state.stop``).
    """

    def __init__(
        self,
        *,
        on_epoch_start: Callable[[TrainState], None] | None = None,
        on_batch_start: Callable[[TrainState], None] | None = None,
        on_step_end: Callable[[TrainState], None] | None = None,
        on_epoch_end: Callable[[TrainState], None] | None = None,
    ):
        for name, fn in (
            ("on_epoch_start", on_epoch_start),
            ("on_batch_start", on_batch_start),
            ("on_step_end", on_step_end),
            ("on_epoch_end", on_epoch_end),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {fn!r}")
            if fn is not None:
                setattr(self, name, fn)


class EarlyStopping:
    """Stop when the monitored validation metric has not improved for ``patience`` epochs,
    and (``restore_best=True``) put back the weights of the best epoch.

    ``monitor`` is ``"val_loss"`` (lower is better) or ``"val_accuracy"`` (higher is
    better); an epoch improves when it beats the best so far by more than ``min_delta``.
    The weights are the model's whole ``state_dict()`` (batch-norm running statistics
    included), copied at each improvement.

    Parameters
    ----------
    monitor : ``"val_loss"`` or ``"val_accuracy"``, default ``"val_loss"``
        The metric.
    patience : int, default 5
        Epochs without improvement before stopping, >= 1.
    min_delta : float, default 0.0
        Keyword-only; the least improvement that counts, >= 0.
    restore_best : bool, default True
        Put back the best epoch's weights when stopping.
    """

    def __init__(
        self, monitor: str = "val_loss", patience: int = 5, *, min_delta: float = 0.0, restore_best: bool = True
    ):
        self.monitor = check_choice(monitor, "monitor", ("val_loss", "val_accuracy"))
        self.patience = check_int(patience, "patience", lo=1)
        self.min_delta = check_real(min_delta, "min_delta", lo=0)
        self.restore_best = check_bool(restore_best, "restore_best")
        self.reset()

    def reset(self) -> None:
        self.best = None
        self.best_epoch = None
        self.best_state = None
        self.wait = 0

    def update(self, epoch: int, value: float, model: TrainableModel) -> bool:
        """Record epoch ``epoch``'s metric; return True when the run should stop."""
        better = self.best is None or (
            value < self.best - self.min_delta if self.monitor == "val_loss" else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = _snapshot(model)
            return False
        self.wait += 1
        return self.wait >= self.patience

    def __repr__(self):
        return (
            f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
            f"min_delta={self.min_delta}, restore_best={self.restore_best})"
        )


def _snapshot(model) -> dict:
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def _restore(model, snapshot: dict) -> None:
    """Put ``snapshot`` back: the parameters are copied into the model's live arrays (so an
    optimizer holding them sees the restored values); the other entries (batch-norm
    statistics) through ``model.load_state_dict`` when the model has one, else into the
    arrays its ``state_dict()`` hands out."""
    live = model.named_parameters()
    for k, a in live.items():
        np.copyto(a, snapshot[k])
    rest = {k: v for k, v in snapshot.items() if k not in live}
    if not rest:
        return
    if callable(getattr(model, "load_state_dict", None)):
        model.load_state_dict({k: np.array(v, copy=True) for k, v in snapshot.items()})
        for k, a in model.named_parameters().items():  # in case it replaced the arrays
            if a is not live[k]:
                np.copyto(live[k], a)
        return
    current = model.state_dict()
    for k, v in rest.items():
        np.copyto(current[k], v)


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _data(x, y, xname: str, yname: str):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{xname} must be a floating-point array, got dtype {x.dtype}")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{xname} must be (N, ...) with N >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{xname} contains NaN or infinity")
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise ValueError(
            f"{yname} must be integer class labels of shape ({len(x)},), got dtype {y.dtype} shape {y.shape}"
        )
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def _check_model(model) -> None:
    for attr in ("train", "eval", "zero_grad", "backward", "named_grads", "named_parameters"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"model has no {attr}(): fit needs a trainable model (the contract of npquant.training)")
    if not callable(model):
        raise TypeError("model is not callable: model(x) must return the logits")


def _check_hooks(hooks) -> list:
    if hooks is None:
        return []
    if not isinstance(hooks, (list, tuple)):
        hooks = [hooks]
    for i, h in enumerate(hooks):
        if not any(callable(getattr(h, e, None)) for e in HOOK_EVENTS):
            raise TypeError(f"hooks[{i}] has none of the methods {', '.join(HOOK_EVENTS)}: {h!r}")
    return list(hooks)


def _call(hooks, event: str, state: TrainState) -> None:
    for h in hooks:
        fn = getattr(h, event, None)
        if fn is not None:
            fn(state)


def _where(state: TrainState) -> str:
    return (
        f"epoch {state.epoch} of {state.epochs}, step {state.batch} of {state.batches} "
        f"(optimizer step {state.step + 1})"
    )


def _diverged(e: ValueError, state: TrainState) -> None:
    """Turn a "NaN or infinity" ValueError of a layer, loss or optimizer into a
    FloatingPointError that says where the run diverged."""
    if "NaN or infinity" in str(e):
        raise FloatingPointError(f"training diverged at {_where(state)} (lr={state.optimizer.lr!r}): {e}") from e


def _default_loss():
    from .losses import softmax_cross_entropy

    return softmax_cross_entropy


# ---------------------------------------------------------------------------------------
# evaluate and fit
# ---------------------------------------------------------------------------------------
def evaluate(
    model: TrainableModel,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    batch_size: int = 256,
    loss_fn: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]] | None = None,
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``(x, y)`` in eval mode.

    The loss is the mean over all samples of ``loss_fn`` (default
    :func:`npquant.training.losses.softmax_cross_entropy`, whose value is a batch mean),
    the accuracy the fraction of samples whose ``argmax(logits)`` (first index on ties)
    equals the label. The model is left in eval mode, or in training mode if it had a
    ``training`` attribute that was True.

    Parameters
    ----------
    model : callable with ``eval()`` and ``train()``
        The model, e.g. an :class:`npquant.models.nn.Sequential`.
    x : array (N, ...)
        Inputs.
    y : integer array (N,)
        Labels.
    batch_size : int, default 256
        Keyword-only; samples per forward pass, >= 1.
    loss_fn : callable or None, default None
        ``loss_fn(logits, labels) -> (loss, grad)`` with a batch-mean loss; ``None`` is
        softmax cross-entropy.

    Returns
    -------
    loss : float
        The mean loss per sample.
    accuracy : float
        The fraction of samples classified correctly.
    """
    x, y = _data(x, y, "x", "y")
    batch_size = check_int(batch_size, "batch_size", lo=1)
    loss_fn = _default_loss() if loss_fn is None else loss_fn
    was_training = getattr(model, "training", False) is True
    model.eval()
    total, correct = 0.0, 0
    try:
        for s in range(0, len(x), batch_size):
            logits = model(x[s : s + batch_size])
            loss, _ = loss_fn(logits, y[s : s + batch_size])
            total += float(loss) * len(logits)
            correct += int((np.argmax(logits, axis=1) == y[s : s + batch_size]).sum())
    finally:
        if was_training:
            model.train()
    return total / len(x), correct / len(x)


def fit(
    model: TrainableModel,
    loss_fn: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]] | None,
    optimizer: Optimizer,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    x_val: npt.ArrayLike | None = None,
    y_val: npt.ArrayLike | None = None,
    schedule: Callable[[int, float], float] | None = None,
    early_stopping: EarlyStopping | None = None,
    hooks: Hook | list[Hook] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` with mini-batches; return the :class:`History`.

    Parameters
    ----------
    model
        A trainable model (``train()``, ``eval()``, ``zero_grad()``, ``model(x)``,
        ``backward(grad)``, ``named_grads()``, ``named_parameters()``, ``state_dict()``),
        e.g. an :class:`npquant.models.nn.Sequential`.
    loss_fn : callable or None
        ``loss, grad_logits = loss_fn(logits, labels)``, the loss a batch mean
        (e.g. :func:`npquant.training.losses.softmax_cross_entropy`); ``None``: that one.
    optimizer
        An :mod:`npquant.training.optim` optimizer over the model's
        ``named_parameters()``.
    x_train, y_train
        float (N, ...) inputs (float32 is used) and int (N,) labels.
    epochs : int
        Number of passes over the training set, >= 1.
    batch_size : int
        >= 1; the last batch of an epoch holds the remaining ``N % batch_size``
        samples when that is not 0 (PyTorch's ``drop_last=False``).
    seed : int
        Seeds ``numpy.random.default_rng``, which draws each epoch's permutation.
    x_val, y_val
        A validation set, evaluated after every epoch (both or neither).
    schedule : callable, optional
        ``schedule(epoch_index, base_lr) -> lr`` (:mod:`~npquant.training.optim`
        schedules), applied at the start of every epoch; ``base_lr`` is the
        optimizer's ``lr`` when ``fit`` starts.
    early_stopping : EarlyStopping, optional
        An :class:`EarlyStopping` (needs the validation set).
    hooks : Hook or list of Hook, optional
        A hook or a list of hooks (:class:`Hook`), called in list order.
    progress : bool
        Show a tqdm progress bar on stderr (it appears only once the run has
        lasted a second).

    Returns
    -------
    History
        The model is left in eval mode, with the weights of the
        best epoch when ``early_stopping`` restores them (whether or not it stopped the run).

    Raises
    ------
    FloatingPointError
        The loss, the logits, an activation or a gradient is NaN or
        infinite (the run diverged, usually a learning rate too high); the message names
        the epoch and the step. That step's update is not applied.
    """
    _check_model(model)
    if loss_fn is None:
        loss_fn = _default_loss()
    elif not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (logits, labels) -> (loss, grad), got {loss_fn!r}")
    if not callable(getattr(optimizer, "step", None)) or not hasattr(optimizer, "lr"):
        raise TypeError(f"optimizer must have step(grads) and lr, got {optimizer!r}")
    x_train, y_train = _data(x_train, y_train, "x_train", "y_train")
    epochs = check_int(epochs, "epochs", lo=1)
    batch_size = check_int(batch_size, "batch_size", lo=1)
    seed = check_int(seed, "seed", lo=0)
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together")
    if x_val is not None:
        x_val, y_val = _data(x_val, y_val, "x_val", "y_val")
    if schedule is not None and not callable(schedule):
        raise TypeError(f"schedule must be callable (epoch, base_lr) -> lr, got {schedule!r}")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping or None, got {early_stopping!r}")
        if x_val is None:
            raise ValueError("early_stopping needs a validation set (x_val, y_val)")
        early_stopping.reset()
    hooks = _check_hooks(hooks)
    progress = check_bool(progress, "progress")

    from tqdm import tqdm

    n = len(x_train)
    batches = -(-n // batch_size)
    rng = np.random.default_rng(seed)
    base_lr = optimizer.lr
    history = History()
    state = TrainState(model=model, optimizer=optimizer, epochs=epochs, batches=batches, history=history)
    bar = tqdm(
        total=epochs * batches,
        desc="fit",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        delay=1.0,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(1, epochs + 1):
            if schedule is not None:
                optimizer.lr = schedule(epoch - 1, base_lr)
            state.epoch, state.batch = epoch, 0
            model.train()
            _call(hooks, "on_epoch_start", state)
            order = rng.permutation(n)
            loss_sum, correct = 0.0, 0
            t0 = time.perf_counter()
            for b in range(batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                state.batch, state.x, state.y, state.loss = b + 1, x_train[idx], y_train[idx], None
                _call(hooks, "on_batch_start", state)
                model.zero_grad()
                try:  # npquant's layers and losses refuse non-finite input with a ValueError
                    logits = model(state.x)
                    loss, grad = loss_fn(logits, state.y)
                except ValueError as e:
                    _diverged(e, state)
                    raise
                state.loss = loss = float(loss)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss is {loss} at {_where(state)}; lower the learning "
                        f"rate (lr={optimizer.lr!r}) or check the data"
                    )
                model.backward(grad)
                try:
                    optimizer.step(model.named_grads())
                except ValueError as e:
                    _diverged(e, state)
                    raise
                state.step += 1
                loss_sum += loss * len(idx)
                correct += int((np.argmax(logits, axis=1) == state.y).sum())
                _call(hooks, "on_step_end", state)
                bar.update(1)
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "train_accuracy": correct / n,
                "val_loss": None,
                "val_accuracy": None,
                "lr": optimizer.lr,
                "time_s": time.perf_counter() - t0,
            }
            state.x = state.y = None
            if x_val is not None:
                row["val_loss"], row["val_accuracy"] = evaluate(model, x_val, y_val, loss_fn=loss_fn)
            history.rows.append(row)
            bar.set_postfix(
                epoch=epoch,
                loss=f"{row['train_loss']:.4f}",
                acc=f"{row['train_accuracy']:.4f}",
                **({} if x_val is None else {"val_acc": f"{row['val_accuracy']:.4f}"}),
            )
            _call(hooks, "on_epoch_end", state)
            if early_stopping is not None and early_stopping.update(epoch, row[early_stopping.monitor], model):
                history.stopped_early = True
            if history.stopped_early or state.stop:
                break
    finally:
        bar.close()
    if early_stopping is not None:
        history.best_epoch = early_stopping.best_epoch
        if early_stopping.restore_best and early_stopping.best_state is not None:
            _restore(model, early_stopping.best_state)
    model.eval()
    return history


# ---------------------------------------------------------------------------------------
# from scratch: the reference models
# ---------------------------------------------------------------------------------------
# reference_models/export.py: Adam, batch 32, 60 epochs, lr 1e-3 (MLPs) and 3e-3 (CNN)
REFERENCE_TRAINING = {"mlp": {"lr": 1e-3}, "lenet_300_100": {"lr": 1e-3}, "cnn": {"lr": 3e-3}}


def torch_default_init(arch: dict, seed: int) -> dict:
    """A fresh state dict for ``arch`` with PyTorch's default initialization, drawn from
    ``numpy.random.default_rng(seed)`` (float32), each layer as its layer type's
    :meth:`~npquant.models.registry.LayerType.init_params` says, in the order of the layers:

    - linear and conv weights: ``kaiming_uniform_(a=sqrt(5))``, i.e. uniform in
      ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (gain ``sqrt(2 / (1 + 5))`` times
      ``sqrt(3 / fan_in)``), ``fan_in = in_features`` or ``in_channels / groups * kh * kw``;
    - biases: uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``;
    - batch norm: weight 1, bias 0, running mean 0, running variance 1,
      ``num_batches_tracked`` 0 (int64).

    The values are PyTorch's distributions, not PyTorch's random numbers. A layer type
    with parameters and no ``init_params`` is an error naming the layer.

    Parameters
    ----------
    arch : dict
        The architecture description (see :func:`npquant.models.nn.build_model`); linear and
        conv2d layers need their size fields (``in_features``, ``out_features``;
        ``in_channels``, ``out_channels``, ``kernel_size``), batch norms
        ``num_features``.
    seed : int
        Seed, >= 0.

    Returns
    -------
    dict of str to numpy.ndarray
        The state dict.
    """
    from ..models.nn import _layers
    from ..models.registry import layer_type

    rng = np.random.default_rng(check_int(seed, "seed", lo=0))
    state = {}
    for spec in _layers(arch):
        for k, v in layer_type(spec["type"]).init_params(spec, rng).items():
            state[f"{spec.get('name')}.{k}"] = v
    return state


def digits_data(arch: dict, models_dir: str | os.PathLike | None = None) -> dict:
    """The fixed digits split of the reference models, shaped for ``arch``:
    ``{"x_train", "y_train", "x_calibration", "y_calibration", "x_test", "y_test"}``.

    Images are ``sklearn.datasets.load_digits().data / 16`` as float32 (every pixel
    ``k / 16``), reshaped to ``(N, *arch["input_shape"])``; the indices come from
    ``digits_split.npz`` (1,078 train, 269 calibration, 450 test; see
    ``reference_models/README.md``). Labels are int64.

    Parameters
    ----------
    arch : dict
        The architecture description, with ``"input_shape"``.
    models_dir : pathlib.Path or None, default None
        The folder holding ``digits_split.npz``; ``None`` is
        :func:`npquant.app.demo.default_models_dir`.

    Returns
    -------
    dict of str to numpy.ndarray
        The six arrays named above.
    """
    from sklearn.datasets import load_digits

    from ..app.demo import default_models_dir
    from ..models.io import load_state_dict

    models_dir = default_models_dir() if models_dir is None else models_dir
    split = load_state_dict(models_dir / "digits_split.npz")
    digits = load_digits()
    x = (digits.data / 16).astype(np.float32).reshape((-1, *arch["input_shape"]))
    y = digits.target.astype(np.int64)
    out = {}
    for part, key in (("train", "train_index"), ("calibration", "calibration_index"), ("test", "test_index")):
        out[f"x_{part}"], out[f"y_{part}"] = x[split[key]], y[split[key]]
    return out


@dataclass
class ReferenceRun:
    """The result of :func:`train_reference`."""

    name: str
    model: object
    history: History
    test_accuracy: float
    torch_test_accuracy: float  # the accuracy PyTorch reached (the bundled file's __meta__)
    train_time_s: float
    seed: int


def train_reference(
    name: str,
    *,
    seed: int = 0,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float | None = None,
    progress: bool = True,
    models_dir: str | os.PathLike | None = None,
) -> ReferenceRun:
    """Train the architecture of reference model ``name`` (``mlp``, ``lenet_300_100``,
    ``cnn``) from scratch in NumPy, as ``reference_models/export.py`` trains it in PyTorch:
    PyTorch's default initialization (:func:`torch_default_init`, seeded with ``seed``),
    Adam (lr 1e-3 for the MLPs, 3e-3 for the CNN unless ``lr`` is given), batch size 32,
    60 epochs over the 1,078 training images, shuffles seeded with ``seed + 1``, softmax
    cross-entropy, no weight decay. Returns the model (eval mode), the history and the test
    accuracy next to PyTorch's.

    The random numbers are NumPy's, not PyTorch's, so the weights are not PyTorch's; the
    test accuracy is comparable, not equal.

    Parameters
    ----------
    name : str
        ``"mlp"``, ``"lenet_300_100"`` or ``"cnn"``.
    seed : int, default 0
        Keyword-only; seed of the initialization (``seed + 1`` for the shuffles), >= 0.
    epochs : int, default 60
        Training epochs.
    batch_size : int, default 32
        Mini-batch size.
    lr : float or None, default None
        Adam's learning rate; ``None`` is the one of ``REFERENCE_TRAINING``.
    progress : bool, default True
        Show a progress bar.
    models_dir : pathlib.Path or None, default None
        The folder of the reference models; ``None`` is
        :func:`npquant.app.demo.default_models_dir`.

    Returns
    -------
    ReferenceRun
        The model, the history and the test accuracies.
    """
    from ..app.demo import default_models_dir
    from ..models.io import load_reference
    from ..models.nn import build_model
    from .losses import softmax_cross_entropy
    from .optim import Adam

    check_choice(name, "name", tuple(REFERENCE_TRAINING))
    models_dir = default_models_dir() if models_dir is None else models_dir
    ref = load_reference(models_dir / f"{name}.npz")
    seed = check_int(seed, "seed", lo=0)
    model = build_model(ref.arch, torch_default_init(ref.arch, seed))
    data = digits_data(ref.arch, models_dir)
    opt = Adam(model.named_parameters(), lr=REFERENCE_TRAINING[name]["lr"] if lr is None else lr)
    t0 = time.perf_counter()
    history = fit(
        model,
        softmax_cross_entropy,
        opt,
        data["x_train"],
        data["y_train"],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed + 1,
        progress=progress,
    )
    train_time = time.perf_counter() - t0
    _, acc = evaluate(model, data["x_test"], data["y_test"])
    return ReferenceRun(
        name=name,
        model=model,
        history=history,
        test_accuracy=acc,
        torch_test_accuracy=float(ref.meta["test_accuracy"]),
        train_time_s=train_time,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m npquant.training.trainer [--seeds 0,1,2] [--epochs 60] [names...]``:
    train the reference architectures from scratch and print test accuracy vs PyTorch's.

    Parameters
    ----------
    argv : list of str or None, default None
        The command-line arguments; ``None`` reads ``sys.argv``.
    """
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0].strip("`"))
    ap.add_argument("names", nargs="*", help=f"models (default: all of {', '.join(REFERENCE_TRAINING)})")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    for n in args.names:
        if n not in REFERENCE_TRAINING:
            ap.error(f"{n!r} is not one of {', '.join(REFERENCE_TRAINING)}")
    names = args.names or list(REFERENCE_TRAINING)
    print(
        f"{'model':15s} {'seed':>4s} {'npquant acc':>11s} {'PyTorch acc':>11s} {'diff pp':>8s} "
        f"{'train s':>8s} {'s/epoch':>8s}"
    )
    for name in names:
        for seed in seeds:
            r = train_reference(name, seed=seed, epochs=args.epochs, progress=False)
            d = 100 * (r.test_accuracy - r.torch_test_accuracy)
            print(
                f"{name:15s} {seed:4d} {100 * r.test_accuracy:10.2f}% {100 * r.torch_test_accuracy:10.2f}% "
                f"{d:+8.2f} {r.train_time_s:8.1f} {r.train_time_s / args.epochs:8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
