"""k-means quantization-aware training: weight sharing fine-tuned by gradient descent (Deep
Compression, Han et al. 2016, section 3.3; the MIT lab's variant, Han's course 6.5940).

Each weight tensor ``W`` of the model (by default every 2-D or 4-D ``"<layer>.weight"``,
:func:`npquant.training.pruning.weight_names`) is replaced by a codebook of ``2**bits``
float32 centroids and a uint8 index per weight (:func:`npquant.compression.kmeans.kmeans_quantize`):
``W = codebook[indices]``. The indices stay fixed; only the centroids move. A pruned tensor
(one with exact zeros, ``keep_zeros="auto"``) reserves code 0 for zero, and that centroid is
held at exactly ``0.0`` by the optimizer's masks, so the pruned weights stay ``+0.0``.
Biases and batch-norm parameters keep training as ordinary parameters, with the same
optimizer.

Two variants (``variant``):

``"centroid"`` (Deep Compression, eq. 3)
    The codebooks are parameters of the optimizer (any of :mod:`npquant.training.optim`).
    Each step the model runs with ``W = codebook[indices]``, the backward pass gives
    ``dL/dW``, and the centroid gradient is its sum over each cluster,
    ``dL/dc_j = sum_{i: idx_i = j} dL/dW_i`` (:func:`npquant.compression.kmeans.centroid_gradient`),
    reduced as ``reduction`` says (below); the optimizer then steps the codebooks.
``"reaverage"`` (the MIT lab's)
    The optimizer steps the weights as in ordinary training (the pruned ones masked); then
    each centroid becomes the mean of its cluster's updated weights
    (:func:`npquant.compression.kmeans.reaverage_centroids`) and the weights are set back to
    ``codebook[indices]``. ``reduction`` does not apply.

The learning-rate rule (``reduction``, ``"centroid"`` variant)
--------------------------------------------------------------
Eq. 3's gradient is a *sum*: a centroid shared by ``n`` weights gets about ``n`` times the
gradient of one weight (all of it, when the weight gradients agree). Plain SGD at the
weights' learning rate then moves the centroid up to ``n`` times as far as training moves
a weight; at 2 bits ``n`` is hundreds to thousands (a third or a quarter of a tensor).
Measured on the bundled models (``tests/test_kmeans_qat.py``): SGD at lr 0.1 fine-tunes
the float MLP, LeNet-300-100 and CNN without loss, but 2-bit k-means QAT with the raw sum
at that rate collapses the MLP and LeNet-300-100 to chance (about 10 % after 3 epochs) and
the CNN to 48 % after 10 epochs (10 % at lr 1). The rule: **divide the step of each centroid by the size of
its cluster**, i.e. use the mean gradient of the cluster, which moves a centroid as far as
the average step of its weights.

* ``reduction="mean"`` (default): ``dL/dc_j`` divided by the size of cluster ``j``; with
  SGD this is eq. 3 with ``lr / n_j`` per centroid. It is stable at the learning rate that
  trains the float model: SGD at lr 0.1 ends within 1 point of float on the MLP and
  LeNet-300-100 and 3 points on the CNN.
* ``reduction="scaled_sum"``: eq. 3 divided by the tensor's mean cluster size
  ``n_mean = (weights not in the reserved zero cluster) / (clusters they use)``: eq. 3 with
  ``lr / n_mean`` per tensor, which keeps eq. 3's weighting of large clusters over small
  ones within a tensor (stable on the same runs).
* ``reduction="sum"``: eq. 3 as it is; with SGD divide ``lr`` by the largest cluster size
  yourself.

With Adam or AdamW the rule is built in: a gradient multiplied by a constant factor gives
the same Adam steps (``m / sqrt(v)`` does not change; only ``eps`` and the rounding differ),
and the cluster sizes are constant, so the three reductions take almost the same steps
(after 3 epochs on the MLP the codebooks agree within 1e-5; the centroids are 0.007 to
0.36 in magnitude). Adam at lr 1e-3 (the rate that trained the reference models) with
``"mean"``, 10 epochs, brings all three bundled models at 2 bits within 1 point of float
(MLP, LeNet-300-100) and 3 points (CNN) for seeds 0, 1 and 2, in both variants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int, check_real
from ..affine import BACKENDS
from ..compression.kmeans import (
    KMEANS_INITS,
    _centroid_grad64,
    _check_codebook,
    _check_indices,
    kmeans_quantize,
    reaverage_centroids,
)
from .pruning import OPTIMIZERS, _check_data, _check_names, _make_optimizer
from .trainer import Hook, TrainableModel, _check_model, evaluate, fit

__all__ = ["KMeansQATResult", "REDUCTIONS", "SharedWeights", "VARIANTS", "kmeans_qat"]

VARIANTS = ("centroid", "reaverage")
REDUCTIONS = ("mean", "scaled_sum", "sum")
CODEBOOK_SUFFIX = ".codebook"


class SharedWeights:
    """A model whose weight tensors are shared through codebooks: ``W = codebook[indices]``.

    It follows the training contract (:mod:`npquant.training`), so :func:`fit` and
    :func:`evaluate` train and evaluate it; :func:`kmeans_qat` builds one.

    Parameters
    ----------
    model
        The model (e.g. an :class:`npquant.models.nn.Sequential`); its weight arrays are
        overwritten in place with ``codebook[indices]``.
    codebooks : dict
        ``{weight name: float32 (k,) codebook}``; copied, the copies are the live
        parameters of the ``"centroid"`` variant.
    indices : dict
        ``{weight name: integer array of the weight's shape, values in [0, k)}``; fixed.
    reserved_zero : dict, optional
        ``{weight name: bool}``: code 0 is the pruned weights' exact zero (then
        ``codebook[0]`` must be 0.0) and stays 0.0. Default: False for every tensor.
    variant : ``"centroid"`` or ``"reaverage"``
    reduction : ``"mean"``, ``"scaled_sum"`` or ``"sum"`` (``"centroid"`` only)
    backend : ``"numba"`` or ``"numpy"``
        For the centroid sums (identical results).

    Notes
    -----
    The ``"centroid"`` variant's ``named_parameters()`` are the model's parameters but the
    shared weights, plus ``"<weight name>.codebook"`` for each codebook; its
    ``named_grads()`` the reduced centroid gradients for those. The ``"reaverage"``
    variant's are the model's own. :meth:`optimizer_masks` gives the masks that hold the
    reserved zeros, :meth:`after_step` must follow every optimizer step (re-average, write
    the weights).
    """

    def __init__(
        self,
        model: TrainableModel,
        codebooks: dict,
        indices: dict,
        *,
        reserved_zero: bool | None = None,
        variant: str = "centroid",
        reduction: str = "mean",
        backend: str = "numba",
    ):
        _check_model(model)
        self.model = model
        self.variant = check_choice(variant, "variant", VARIANTS)
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        if not isinstance(codebooks, Mapping) or not isinstance(indices, Mapping):
            raise TypeError("codebooks and indices must be dicts of weight name -> array")
        if set(codebooks) != set(indices):
            raise ValueError(
                f"codebooks and indices must name the same weights, got {sorted(codebooks)} and {sorted(indices)}"
            )
        reserved_zero = {} if reserved_zero is None else reserved_zero
        params = model.named_parameters()
        self.codebooks, self.indices, self.reserved_zero, self._scale = {}, {}, {}, {}
        for n in codebooks:
            if n not in params:
                raise ValueError(f"codebooks names {n!r}, which is not a parameter of the model")
            cb = _check_codebook(codebooks[n], name=f"codebooks[{n!r}]").copy()
            idx = _check_indices(indices[n], cb.size, name=f"indices[{n!r}]")
            if idx.shape != params[n].shape:
                raise ValueError(f"indices[{n!r}] has shape {idx.shape}, the weight has {params[n].shape}")
            res = bool(reserved_zero.get(n, False))
            if res and cb[0] != 0:
                raise ValueError(f"codebooks[{n!r}][0] must be 0.0 when reserved_zero[{n!r}] is True")
            self.codebooks[n] = cb
            self.indices[n] = np.array(idx, order="C")  # a copy: fixed from now on
            self.reserved_zero[n] = res
            counts = np.bincount(self.indices[n].ravel(), minlength=cb.size)
            used = counts[1:] if res else counts
            self._scale[n] = float(used.sum()) / max(int(np.count_nonzero(used)), 1)
        self.sync()

    # -- the training contract --------------------------------------------------------
    @property
    def training(self):
        return getattr(self.model, "training", False)

    def train(self, mode: bool = True) -> SharedWeights:
        self.model.train(mode)
        return self

    def eval(self) -> SharedWeights:
        self.model.eval()
        return self

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        if self.variant == "centroid":
            self.sync()
        return self.model(x)

    def backward(self, grad_y: npt.ArrayLike) -> np.ndarray:
        return self.model.backward(grad_y)

    def state_dict(self) -> dict:
        """The model's ``state_dict()`` (its weights are ``codebook[indices]``)."""
        self.sync()
        return self.model.state_dict()

    def named_parameters(self) -> dict:
        params = self.model.named_parameters()
        if self.variant == "reaverage":
            return params
        out = {k: v for k, v in params.items() if k not in self.codebooks}
        out.update({n + CODEBOOK_SUFFIX: cb for n, cb in self.codebooks.items()})
        return out

    def named_grads(self) -> dict:
        grads = self.model.named_grads()
        if self.variant == "reaverage":
            return grads
        out = {k: v for k, v in grads.items() if k not in self.codebooks}
        for n in self.codebooks:
            out[n + CODEBOOK_SUFFIX] = self.centroid_grad(n, grads[n])
        return out

    # -- shared weights ---------------------------------------------------------------
    def centroid_grad(self, name: str, grad_w: npt.ArrayLike) -> np.ndarray:
        """The reduced centroid gradient (float32 ``(k,)``) of weight ``name`` from
        ``grad_w = dL/dW``: the per-cluster sums (eq. 3) for ``"sum"``, means for
        ``"mean"``, sums over the tensor's mean cluster size for ``"scaled_sum"``; float64
        throughout, rounded once."""
        g = np.asarray(grad_w, np.float64)
        k = self.codebooks[name].size
        if self.reduction == "mean":
            out = _centroid_grad64(g, self.indices[name], k, "mean", self.backend)
        else:
            out = _centroid_grad64(g, self.indices[name], k, "sum", self.backend)
            if self.reduction == "scaled_sum":
                out = out / self._scale[name]
        return out.astype(np.float32)

    def optimizer_masks(self) -> dict:
        """Masks for :meth:`Optimizer.set_masks`: hold each reserved zero (the codebook's
        entry 0 for ``"centroid"``, the weights with index 0 for ``"reaverage"``)."""
        out = {}
        for n, res in self.reserved_zero.items():
            if not res:
                continue
            if self.variant == "centroid":
                m = np.ones(self.codebooks[n].size, bool)
                m[0] = False
                out[n + CODEBOOK_SUFFIX] = m
            else:
                out[n] = self.indices[n] != 0
        return out

    def after_step(self) -> None:
        """After an optimizer step: ``"reaverage"`` sets each centroid to the mean of its
        cluster's weights (an empty cluster keeps its centroid, a reserved zero stays 0.0);
        then both variants write ``codebook[indices]`` into the weights."""
        if self.variant == "reaverage":
            params = self.model.named_parameters()
            for n, cb in self.codebooks.items():
                cb[...] = reaverage_centroids(
                    params[n], self.indices[n], cb.size, cb, reserved_zero=self.reserved_zero[n], backend=self.backend
                )
        self.sync()

    def sync(self) -> None:
        """Write ``codebook[indices]`` into the model's weight arrays (in place)."""
        params = self.model.named_parameters()
        for n, cb in self.codebooks.items():
            np.take(cb, self.indices[n], out=params[n])


@dataclass
class KMeansQATResult:
    """The result of :func:`kmeans_qat`.

    Attributes
    ----------
    model
        The model given, trained in place; each shared weight is exactly
        ``codebooks[name][indices[name]]`` (bit for bit).
    codebooks : dict
        ``{name: float32 (2**bits,)}``, the fine-tuned codebooks (not sorted any
        more; ``codebook[0] == 0.0`` where ``reserved_zero``).
    indices : dict
        ``{name: uint8 array of the weight's shape}``, fixed since the k-means.
    reserved_zero : dict
        ``{name: bool}``, code 0 is the exact zero of pruned weights.
    bits : dict
        ``{name: int}``.
    history : History
        The :class:`~npquant.training.trainer.History` of the fine-tuning.
    accuracy_float, accuracy_kmeans, accuracy : float or None
        Validation accuracy of the model as given,
        after the k-means (before training) and after training (``None`` without a
        validation set).
    time_s : float
        Wall time of the whole call.
    """

    model: object
    codebooks: dict
    indices: dict
    reserved_zero: dict
    bits: dict
    history: object
    accuracy_float: float | None
    accuracy_kmeans: float | None
    accuracy: float | None
    time_s: float


def kmeans_qat(
    model: TrainableModel,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    bits: int | Mapping[str, int],
    epochs: int,
    lr: float = 1e-3,
    variant: str = "centroid",
    reduction: str = "mean",
    optimizer: str = "adam",
    optimizer_options: dict | None = None,
    batch_size: int = 32,
    seed: int = 0,
    init: str = "linear",
    keep_zeros: bool | Literal["auto"] = "auto",
    x_val: npt.ArrayLike | None = None,
    y_val: npt.ArrayLike | None = None,
    lr_schedule: Callable[[int, float], float] | None = None,
    hooks: Hook | list[Hook] | None = None,
    backend: str = "numba",
    progress: bool = True,
) -> KMeansQATResult:
    """k-means weight sharing of ``model``'s weight tensors, then quantization-aware
    fine-tuning of the centroids (module docstring).

    Parameters
    ----------
    model
        A trainable model (:func:`~npquant.training.trainer.fit`'s contract), changed in
        place: its shared weights end as ``codebook[indices]``.
    x_train, y_train
        float ``(N, ...)`` inputs (float32 is used) and int ``(N,)`` labels.
    bits : int in [1, 8] or dict
        One width for every weight tensor (:func:`~npquant.training.pruning.weight_names`),
        or ``{parameter name: bits}`` to share exactly the named tensors (the others train
        as floats).
    epochs : int >= 0
        Fine-tuning epochs (0: k-means only).
    lr : float
        The learning rate of every parameter: codebooks, biases, batch norm (positive).
    variant : ``"centroid"`` (default) or ``"reaverage"``
    reduction : ``"mean"`` (default), ``"scaled_sum"`` or ``"sum"``
        The centroid gradient (``"centroid"`` variant): the module docstring's rule.
    optimizer : ``"adam"`` (default), ``"adamw"`` or ``"sgd"``
        As in :func:`~npquant.training.pruning.prune_and_retrain`.
    optimizer_options : dict
        As in :func:`~npquant.training.pruning.prune_and_retrain`.
    batch_size : int >= 1
    seed : int >= 0
        Seeds :func:`fit`'s shuffles (and ``init="kmeans++"``).
    init : ``"linear"`` (default, Deep Compression's), ``"density"`` or ``"kmeans++"``
    keep_zeros : ``"auto"`` (default), True or False
        :func:`~npquant.compression.kmeans.kmeans_quantize`'s: ``"auto"`` reserves code 0 exactly for
        the tensors with exact zeros (pruned ones).
    x_val, y_val
        A validation set (both or neither) for the accuracies and the history.
    lr_schedule, hooks
        Passed on to :func:`fit` (the hooks run after this function's own).
    backend : ``"numba"`` or ``"numpy"``
        For the k-means and the centroid sums (identical results).
    progress : bool
        Show :func:`fit`'s progress bar.

    Returns
    -------
    KMeansQATResult
    """
    t0 = time.perf_counter()
    _check_model(model)
    epochs = check_int(epochs, "epochs", lo=0)
    lr = check_real(lr, "lr", lo=0, lo_open=True)
    check_choice(variant, "variant", VARIANTS)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(optimizer, "optimizer", tuple(OPTIMIZERS))
    check_choice(init, "init", KMEANS_INITS)
    check_choice(backend, "backend", BACKENDS)
    seed = check_int(seed, "seed", lo=0)
    x_train, y_train, x_val, y_val = _check_data(x_train, y_train, x_val, y_val)
    names = _check_names(model, bits, "bits")
    per_bits = {}
    for n in names:
        b = bits[n] if isinstance(bits, Mapping) else bits
        per_bits[n] = check_int(b, f"bits[{n!r}]" if isinstance(bits, Mapping) else "bits", lo=1, hi=8)

    def accuracy():
        return None if x_val is None else evaluate(model, x_val, y_val)[1]

    acc_float = accuracy()
    params = model.named_parameters()
    fitted = {
        n: kmeans_quantize(params[n], per_bits[n], init=init, seed=seed, keep_zeros=keep_zeros, backend=backend)
        for n in names
    }
    shared = SharedWeights(
        model,
        {n: r.codebook for n, r in fitted.items()},
        {n: r.indices for n, r in fitted.items()},
        reserved_zero={n: r.reserved_zero for n, r in fitted.items()},
        variant=variant,
        reduction=reduction,
        backend=backend,
    )
    acc_kmeans = accuracy()
    history = None
    if epochs:
        opt = _make_optimizer(shared.named_parameters(), optimizer, lr, optimizer_options)
        opt.set_masks(shared.optimizer_masks())
        own = Hook(on_step_end=lambda state: shared.after_step())
        more = [] if hooks is None else (list(hooks) if isinstance(hooks, (list, tuple)) else [hooks])
        history = fit(
            shared,
            None,
            opt,
            x_train,
            y_train,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            x_val=x_val,
            y_val=y_val,
            schedule=lr_schedule,
            hooks=[own, *more],
            progress=progress,
        )
    shared.sync()
    model.eval()
    return KMeansQATResult(
        model=model,
        codebooks=dict(shared.codebooks),
        indices={n: shared.indices[n] for n in names},
        reserved_zero=dict(shared.reserved_zero),
        bits=per_bits,
        history=history,
        accuracy_float=acc_float,
        accuracy_kmeans=acc_kmeans,
        accuracy=accuracy(),
        time_s=time.perf_counter() - t0,
    )
