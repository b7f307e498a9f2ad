"""Losses and metrics for classification: softmax cross-entropy with its gradient.

A loss is a function ``loss, grad_logits = loss_fn(logits, labels)``: ``loss`` a Python
float, ``grad_logits`` the gradient of ``loss`` with respect to ``logits`` (same shape,
float32), ready for ``model.backward(grad_logits)``.

Logits are ``(N, C)`` floating-point arrays (converted to float32; float64 stays float64,
for gradient checks), labels ``(N,)`` integer class indices in ``[0, C)``. NaN or infinity
in the logits is an error naming ``logits`` (a diverged model stops here, not silently).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int_array, normalize_axis

__all__ = ["log_softmax", "softmax", "softmax_cross_entropy", "accuracy", "REDUCTIONS"]

#: ``mean`` over the batch (PyTorch's default) or ``sum``.
REDUCTIONS = ("mean", "sum")


def _logits(x, name: str, *, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (N, C), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; a non-empty array is required")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")
    return a if a.dtype == np.float64 else a.astype(np.float32)


def log_softmax(x: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """``x - logsumexp(x)`` along ``axis``, computed stably: with ``z = x - max(x)`` (so
    ``exp`` never overflows and the largest ``z`` is 0), ``logsumexp(z) = log1p(r)`` where
    ``r`` sums ``exp(z)`` over all entries but the (first) largest. ``log1p`` keeps the
    precision of a confident prediction, whose log-probability is close to 0 (``log(1 + r)``
    would round ``1 + r`` first). float32 (float64 for float64 input).

    Parameters
    ----------
    x : float array
        Finite, non-empty; float32 unless float64.
    axis : int, default -1
        The axis of the classes.

    Returns
    -------
    numpy.ndarray
        The log-probabilities, of ``x``'s shape.
    """
    x = _logits(x, "x")
    axis = normalize_axis(axis, x.ndim)
    top = x.argmax(axis=axis)
    z = x - np.expand_dims(np.take_along_axis(x, np.expand_dims(top, axis), axis).squeeze(axis), axis)
    e = np.exp(z)
    np.put_along_axis(e, np.expand_dims(top, axis), 0, axis)
    return z - np.log1p(e.sum(axis=axis, keepdims=True))


def softmax(x: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """``exp(log_softmax(x))`` along ``axis``: non-negative, sums to 1 up to rounding.

    Parameters
    ----------
    x : float array
        Finite, non-empty; float32 unless float64.
    axis : int, default -1
        The axis of the classes.

    Returns
    -------
    numpy.ndarray
        The probabilities, of ``x``'s shape and dtype as :func:`log_softmax`.
    """
    return np.exp(log_softmax(x, axis))


def _labels(labels, n: int, c: int) -> np.ndarray:
    y = check_int_array(labels, "labels", what="an integer array of class indices")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per row of logits), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= c):
        bad = y[(y < 0) | (y >= c)][0]
        raise ValueError(f"labels must be class indices in [0, {c - 1}], got {bad}")
    return y.astype(np.intp)


def softmax_cross_entropy(
    logits: npt.ArrayLike, labels: npt.ArrayLike, *, reduction: str = "mean"
) -> tuple[float, np.ndarray]:
    """Cross-entropy of the softmax of ``logits`` against integer ``labels``, and its gradient.

    ``loss = -sum_i log_softmax(logits)[i, labels[i]]`` divided by ``N`` for
    ``reduction="mean"`` (``torch.nn.functional.cross_entropy``) or not for ``"sum"``.
    The per-sample terms are float32 (float64 for float64 logits); their sum is taken in
    float64 and returned as a Python float. ``grad_logits = (softmax(logits) - onehot(labels))``
    (divided by ``N`` for ``"mean"``), float32 (float64 for float64 logits); the label's
    entry ``p - 1`` is ``expm1(log p)``, exact to float32 rounding even when ``p`` rounds to 1.

    Parameters
    ----------
    logits : float array (N, C)
        Finite.
    labels : integer array (N,)
        Class indices in ``[0, C)``.
    reduction : ``"mean"`` or ``"sum"``, default ``"mean"``
        Keyword-only; divide the loss and the gradient by ``N``, or not.

    Returns
    -------
    loss : float
        The loss.
    grad_logits : numpy.ndarray
        Its gradient with respect to ``logits``, ``(N, C)``.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    x = _logits(logits, "logits", ndim=2)
    n, c = x.shape
    y = _labels(labels, n, c)
    logp = log_softmax(x, axis=1)
    rows = np.arange(n)
    total = -float(np.sum(logp[rows, y], dtype=np.float64))
    grad = np.exp(logp)
    grad[rows, y] = np.expm1(logp[rows, y])  # p - 1 without cancellation when p is close to 1
    if reduction == "mean":
        grad /= x.dtype.type(n)
        return total / n, grad
    return total, grad


def accuracy(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The fraction of rows whose argmax (first index on ties) equals the label, in [0, 1].

    Parameters
    ----------
    logits : float array (N, C)
        Finite scores.
    labels : integer array (N,)
        Class indices in ``[0, C)``.

    Returns
    -------
    float
        The accuracy.
    """
    x = _logits(logits, "logits", ndim=2)
    y = _labels(labels, x.shape[0], x.shape[1])
    return float(np.mean(x.argmax(axis=1) == y))
