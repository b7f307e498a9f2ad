"""The scikit-learn MLP of ``npquant demo --weights``: an ``MLPClassifier`` trained on
scikit-learn's digits, its weights as a PyTorch-style state dict, and its accuracy with
fake-quantized weights. (The model tables use the reference models of ``npquant/data/``.)

Weights follow PyTorch's ``(out, in)`` convention: scikit-learn stores ``coefs_[k]`` as
``(in, out)``, so the state dict holds ``coefs_[k].T`` under ``fc{k+1}.weight``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sklearn.neural_network import MLPClassifier

SPLIT_SEED = 0
TEST_FRACTION = 0.25


def digits_split() -> list[np.ndarray]:
    """``(X_train, X_test, y_train, y_test)``: load_digits scaled to [0, 1], stratified
    25 % test split with ``random_state=0`` (1347 / 450 images).

    Returns
    -------
    list of numpy.ndarray
        ``X_train`` (1347, 64), ``X_test`` (450, 64) float64, ``y_train``, ``y_test``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)


def train_mlp(
    hidden: Sequence[int] = (300, 100), *, seed: int = 0, max_iter: int = 200, data: Sequence[np.ndarray] | None = None
) -> tuple[MLPClassifier, Sequence[np.ndarray]]:
    """A fitted ``MLPClassifier`` (ReLU, Adam) and the split it was trained on.

    Parameters
    ----------
    hidden : sequence of int, default (300, 100)
        The hidden layer sizes.
    seed : int, default 0
        Keyword-only; the classifier's ``random_state``.
    max_iter : int, default 200
        Most training epochs (a ``ConvergenceWarning`` is silenced).
    data : sequence or None, default None
        ``(X_train, X_test, y_train, y_test)``; ``None`` is :func:`digits_split` ``()``.

    Returns
    -------
    clf : sklearn.neural_network.MLPClassifier
        The fitted classifier.
    data : sequence
        The split.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    data = digits_split() if data is None else data
    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(data[0], data[2])
    return clf, data


def state_dict(clf: MLPClassifier) -> dict:
    """``{"fc1.weight": (out, in) float32, "fc1.bias": (out,), ...}`` of a fitted MLP.

    Parameters
    ----------
    clf : sklearn.neural_network.MLPClassifier
        A fitted classifier.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 copies of its weights (transposed) and biases.
    """
    out = {}
    for k, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        out[f"fc{k + 1}.weight"] = np.ascontiguousarray(np.asarray(w, np.float32).T)
        out[f"fc{k + 1}.bias"] = np.asarray(b, np.float32).copy()
    return out


def accuracy(clf: MLPClassifier, state: dict, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Test accuracy of ``clf``'s architecture with the weights of ``state``.

    Parameters
    ----------
    clf : sklearn.neural_network.MLPClassifier
        A fitted classifier; it is not modified.
    state : dict of str to array
        Weights in the layout of :func:`state_dict`, of ``clf``'s shapes.
    X : array (n, 64)
        Inputs.
    y : array (n,)
        Labels.

    Returns
    -------
    float
        The fraction of ``X`` classified as ``y``.
    """
    m = copy.copy(clf)
    n = len(clf.coefs_)
    try:
        m.coefs_ = [np.asarray(state[f"fc{k + 1}.weight"], np.float64).T for k in range(n)]
        m.intercepts_ = [np.asarray(state[f"fc{k + 1}.bias"], np.float64) for k in range(n)]
    except KeyError as e:
        raise ValueError(f"state has no entry {e.args[0]!r} for this {n}-layer MLP") from None
    for k in range(n):
        if m.coefs_[k].shape != clf.coefs_[k].shape:
            raise ValueError(
                f"fc{k + 1}.weight has shape {m.coefs_[k].T.shape}, the model needs {clf.coefs_[k].T.shape}"
            )
    return float(m.score(X, y))
