"""Granularity: how parameters (scale, zero point, min, max) map onto a tensor.

ONNX's words are used throughout:

* ``axis=None`` -- per-tensor: one parameter, shape ``()``.
* ``axis=k`` -- per-channel: one parameter per index along ``k``, shape ``(x.shape[k],)``.
* ``axis=k, block_size=B`` -- per-group (blocked): one parameter for each run of ``B``
  elements along ``k``; the parameter has ``x``'s rank with dimension ``k`` replaced by
  ``ceil(x.shape[k] / B)``, and the last block may be shorter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._checks import check_int, normalize_axis


def granularity_name(axis: int | None, block_size: int | None) -> str:
    """``"per_tensor"``, ``"per_channel"`` or ``"per_group"``.

    Parameters
    ----------
    axis : int or None
        The parameter axis; ``None`` is per-tensor (``block_size`` is then not looked at).
    block_size : int or None
        ``None`` is per-channel, an int per-group.

    Returns
    -------
    str
        The name of the granularity.
    """
    if axis is None:
        return "per_tensor"
    return "per_channel" if block_size is None else "per_group"


def param_shape(x_shape: Sequence[int], axis: int | None = None, block_size: int | None = None) -> tuple[int, ...]:
    """Shape of the parameter array for a tensor of shape ``x_shape``.

    Parameters
    ----------
    x_shape : sequence of int
        Shape of the tensor.
    axis : int or None, default None
        The parameter axis (negative counts from the end); ``None`` is per-tensor.
    block_size : int or None, default None
        Length of the runs along ``axis`` that share a parameter (per-group); ``None`` is
        per-channel.

    Returns
    -------
    tuple of int
        ``()`` per-tensor, ``(x_shape[axis],)`` per-channel, and per-group ``x_shape`` with
        dimension ``axis`` replaced by ``ceil(x_shape[axis] / block_size)``.
    """
    x_shape = tuple(int(d) for d in x_shape)
    if axis is None:
        return ()
    ax = normalize_axis(axis, len(x_shape))
    if block_size is None:
        return (x_shape[ax],)
    block_size = check_int(block_size, "block_size", lo=1)
    shape = list(x_shape)
    shape[ax] = math.ceil(x_shape[ax] / block_size)
    return tuple(shape)


def split3(x_shape: Sequence[int], axis: int | None) -> tuple[int, int, int]:
    """``(outer, n, inner)``: ``x`` seen as a 3-D array with the parameter axis in the middle.

    Per-tensor (``axis=None``) is ``(1, 1, size)``, so that kernels run one long inner loop.

    Parameters
    ----------
    x_shape : sequence of int
        Shape of the tensor.
    axis : int or None
        The parameter axis (negative counts from the end); ``None`` is per-tensor.

    Returns
    -------
    tuple of (int, int, int)
        The product of the dimensions before ``axis``, ``x_shape[axis]``, and the product
        of those after it.
    """
    x_shape = tuple(int(d) for d in x_shape)
    if axis is None:
        return 1, 1, math.prod(x_shape)
    ax = normalize_axis(axis, len(x_shape))
    return math.prod(x_shape[:ax]), x_shape[ax], math.prod(x_shape[ax + 1 :])


def params3(
    p: np.ndarray, x_shape: Sequence[int], axis: int | None = None, block_size: int | None = None
) -> tuple[np.ndarray, int]:
    """The parameter array as 3-D ``(outer or 1, n_blocks, inner or 1)`` and the block length.

    An element ``x3[o, c, i]`` uses ``p3[o or 0, c // block, i or 0]``.

    Parameters
    ----------
    p : numpy.ndarray
        Parameter array of :func:`param_shape` ``(x_shape, axis, block_size)``.
    x_shape : sequence of int
        Shape of the tensor.
    axis : int or None, default None
        The parameter axis (negative counts from the end); ``None`` is per-tensor.
    block_size : int or None, default None
        Length of the runs along ``axis`` that share a parameter (per-group); ``None`` is
        per-channel.

    Returns
    -------
    p3 : numpy.ndarray
        ``p`` reshaped (C-contiguous, a copy only if ``p`` was not) to ``(1, 1, 1)``
        per-tensor, ``(1, n, 1)`` per-channel, ``(outer, n_blocks, inner)`` per-group.
    block : int
        ``block_size`` per-group, else 1.
    """
    outer, n, inner = split3(x_shape, axis)
    if axis is None:
        return np.ascontiguousarray(p).reshape(1, 1, 1), 1
    if block_size is None:
        return np.ascontiguousarray(p).reshape(1, n, 1), 1
    nb = math.ceil(n / block_size)
    return np.ascontiguousarray(p).reshape(outer, nb, inner), int(block_size)


def expand_params(
    p: np.ndarray, x_shape: Sequence[int], axis: int | None = None, block_size: int | None = None
) -> np.ndarray:
    """``p`` broadcast (per-channel) or repeated (per-group) to ``x_shape``.

    Parameters
    ----------
    p : array_like
        Parameter array of :func:`param_shape` ``(x_shape, axis, block_size)``.
    x_shape : sequence of int
        Shape of the tensor.
    axis : int or None, default None
        The parameter axis (negative counts from the end); ``None`` is per-tensor.
    block_size : int or None, default None
        Length of the runs along ``axis`` that share a parameter (per-group); ``None`` is
        per-channel.

    Returns
    -------
    numpy.ndarray
        Of ``x_shape``, one parameter per element of the tensor: a read-only broadcast
        view per-tensor and per-channel, a new array per-group.
    """
    x_shape = tuple(int(d) for d in x_shape)
    p = np.asarray(p)
    if axis is None:
        return np.broadcast_to(p.reshape(()), x_shape)
    ax = normalize_axis(axis, len(x_shape))
    if block_size is None:
        shape = [1] * len(x_shape)
        shape[ax] = x_shape[ax]
        return np.broadcast_to(p.reshape(shape), x_shape)
    rep = np.repeat(p, block_size, axis=ax)
    return np.take(rep, np.arange(x_shape[ax]), axis=ax)


def reduce_groups(x: np.ndarray, ufunc: np.ufunc, axis: int | None = None, block_size: int | None = None) -> np.ndarray:
    """Reduce ``x`` with ``ufunc`` (e.g. ``np.minimum``) over each parameter group.

    Parameters
    ----------
    x : array_like
        The tensor, non-empty.
    ufunc : numpy.ufunc
        A binary ufunc with ``reduce`` and ``reduceat``, e.g. ``np.minimum``, ``np.maximum``.
    axis : int or None, default None
        The parameter axis (negative counts from the end); ``None`` is per-tensor.
    block_size : int or None, default None
        Length of the runs along ``axis`` that share a parameter (per-group); ``None`` is
        per-channel.

    Returns
    -------
    numpy.ndarray
        The reduction of each parameter group, of :func:`param_shape` and ``x``'s dtype (a
        NumPy scalar per-tensor).
    """
    x = np.asarray(x)
    if axis is None:
        return ufunc.reduce(x, axis=None)
    ax = normalize_axis(axis, x.ndim)
    if block_size is None:
        other = tuple(d for d in range(x.ndim) if d != ax)
        return ufunc.reduce(x, axis=other) if other else x.copy()
    starts = np.arange(0, x.shape[ax], block_size)
    return ufunc.reduceat(x, starts, axis=ax)
