"""Integer layer objects, so that an integer model is a list of callables on codes.

:class:`~npquant.qnn.linear.QLinear` and :class:`~npquant.qnn.conv.QConv2d` live with
their functions (:mod:`npquant.qnn.linear`, :mod:`npquant.qnn.conv`) and are re-exported
here. This module defines the layers of the other integer operations, each a thin object
over its function (the function does the arithmetic, the object keeps its constants):
:class:`MaxPool2d`, :class:`AvgPool2d`, :class:`QAdd`, :class:`QReLU` and
:class:`Flatten`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .._checks import check_choice, check_int
from ..affine import quantize as _quantize
from ..qparams import QParams
from . import activation as _act
from . import pool as _pool
from ._common import act_qparams, codes, output_range
from .add import ADD_MODES
from .add import add as _add_codes
from .conv import QConv2d
from .linear import QLinear

__all__ = ["AvgPool2d", "Flatten", "MaxPool2d", "QAdd", "QConv2d", "QLinear", "QReLU"]


class MaxPool2d:
    """Max pooling of NCHW codes (:func:`npquant.qnn.pool.max_pool2d`); qparams unchanged.

    The arguments are checked when the layer is called.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, as in :func:`npquant.qnn.pool.max_pool2d`.
    stride : int, (int, int) or None, default None
        None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        As in :func:`npquant.qnn.pool.max_pool2d`.
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, ...] = 0,
        *,
        backend: str = "numba",
    ) -> None:
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        return _pool.max_pool2d(x_q, self.kernel_size, self.stride, self.padding, backend=self.backend)

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AvgPool2d:
    """Average pooling of NCHW codes (:func:`npquant.qnn.pool.avg_pool2d`) with TFLite's
    (half away) or PyTorch's (half even) rounding; qparams unchanged.

    ``mode`` is checked here, the other arguments when the layer is called.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, as in :func:`npquant.qnn.pool.avg_pool2d`.
    stride : int, (int, int) or None, default None
        None: ``kernel_size``.
    padding : int, (int, int) or (int, int, int, int), default 0
        As in :func:`npquant.qnn.pool.max_pool2d`.
    mode : ``"tflite"`` or ``"torch"``, default ``"tflite"``
        The rounding of ``sum / count``: half away from zero or half to even.
    zero_point : int, default 0
        The code that padding counts as with ``count_include_pad``.
    count_include_pad : bool, default False
        Count padding as ``zero_point`` (PyTorch's option; only with ``mode="torch"``).
    backend : ``"numba"`` or ``"numpy"``, default ``"numba"``
        The kernel or its NumPy twin.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, ...] = 0,
        *,
        mode: str = "tflite",
        zero_point: int = 0,
        count_include_pad: bool = False,
        backend: str = "numba",
    ) -> None:
        check_choice(mode, "mode", _pool.AVG_POOL_MODES)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.mode, self.zero_point, self.count_include_pad, self.backend = mode, zero_point, count_include_pad, backend

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        return _pool.avg_pool2d(
            x_q,
            self.kernel_size,
            self.stride,
            self.padding,
            mode=self.mode,
            zero_point=self.zero_point,
            count_include_pad=self.count_include_pad,
            backend=self.backend,
        )

    def __repr__(self) -> str:
        return f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r})"


class QAdd:
    """Sum of two quantized tensors with their own scales (:func:`npquant.qnn.add.add`):
    ``layer(q1, q2)`` gives codes of ``y_qp``, with an optional fused activation.

    The constants are checked once; :func:`~npquant.qnn.add.qadd` is this layer called
    once. Codes are those of ``y_qp``'s spec (int8/uint8 for 8-bit specs), saturated to the
    activation's range.

    Parameters
    ----------
    a_qp, b_qp : QParams
        Per-tensor qparams of the two inputs (zero points in ``y_qp.spec``'s range).
    y_qp : QParams
        Per-tensor qparams of the output; its spec gives the code range.
    mode : str, default ``"tflite"``
        One of :data:`npquant.qnn.add.ADD_MODES`.
    activation : str, (int, int) or None, default None
        ``None`` or ``"none"``, ``"relu"``, ``"relu6"``, ``"relu_n1_to_1"`` or a ``(lo,
        hi)`` pair of codes: the clamp of :class:`npquant.qnn.linear.QLinear`.
    left_shift : int, default 20
        TFLite's input left shift (``"tflite"`` modes), as in :func:`~npquant.qnn.add.add`.
    vector_width : int, default 64
        Elements per vector step of ``mode="torch"``, as in :func:`~npquant.qnn.add.add`.
    """

    def __init__(
        self,
        a_qp: QParams,
        b_qp: QParams,
        y_qp: QParams,
        *,
        mode: str = "tflite",
        activation: str | tuple[int, int] | None = None,
        left_shift: int = 20,
        vector_width: int = 64,
    ) -> None:
        self.s1, self.z1 = act_qparams(a_qp, "a_qp")
        self.s2, self.z2 = act_qparams(b_qp, "b_qp")
        self.sy, self.zy = act_qparams(y_qp, "y_qp")
        check_choice(mode, "mode", ADD_MODES)
        activation = _act.normalize_activation(activation, allow_range=True)
        self.a_qp, self.b_qp, self.y_qp, self.mode, self.activation = a_qp, b_qp, y_qp, mode, activation
        self.out_range = output_range(activation, y_qp)
        self.left_shift = check_int(left_shift, "left_shift", lo=0, hi=30)
        self.vector_width = check_int(vector_width, "vector_width", lo=1)

    def __call__(self, a_q: npt.ArrayLike, b_q: npt.ArrayLike) -> np.ndarray:
        qmin, qmax = self.y_qp.spec.qmin, self.y_qp.spec.qmax
        lo, hi = self.out_range
        return _add_codes(
            a_q,
            self.s1,
            self.z1,
            b_q,
            self.s2,
            self.z2,
            self.sy,
            self.zy,
            qmin=qmin,
            qmax=qmax,
            act_min=lo,
            act_max=hi,
            mode=self.mode,
            left_shift=self.left_shift,
            vector_width=self.vector_width,
        )

    def __repr__(self) -> str:
        return f"QAdd(mode={self.mode!r}, activation={self.activation!r})"


class QReLU:
    """ReLU (``relu``) or ReLU6 (``relu6``) on codes of ``qp``: a clamp, qparams unchanged.

    Parameters
    ----------
    qp : QParams
        Per-tensor qparams of the codes, in and out.
    activation : ``"relu"`` or ``"relu6"``, default ``"relu"``
        The clamp: ``[Z, qmax]`` or ``[Z, code of 6]``, within ``qp.spec``'s range.
    mode : ``"tflite"`` or ``"torch"``, default ``"tflite"``
        How the code of 6 is rounded: ``"tflite"`` as TFLite's clamps
        (:func:`npquant.qnn.activation.activation_range`: ``Z + round_half_away(float32(6 /
        S))``); ``"torch"`` as PyTorch's quantized ``relu6`` / ``hardtanh``
        (``quantize_val``: ``rint(float32(float32(6 * float32(1 / S)) + Z))``, ties to
        even, i.e. :func:`npquant.quantize` with ``method="mul_add"``; measured on torch
        2.13). The lower bound is ``Z`` in both.
    """

    def __init__(self, qp: QParams, activation: str = "relu", *, mode: str = "tflite") -> None:
        act_qparams(qp, "qp")
        check_choice(activation, "activation", ("relu", "relu6"))
        check_choice(mode, "mode", ("tflite", "torch"))
        self.qp, self.activation, self.mode = qp, activation, mode
        if mode == "torch":
            qp_even = QParams(qp.scale, qp.zero_point, qp.spec.replace(rounding="half_even"))
            lo, hi = (int(v) for v in _quantize(np.array([0.0, 6.0], np.float32), qp_even, method="mul_add"))
            self.out_range = (lo, hi if activation == "relu6" else qp.spec.qmax)
        else:
            self.out_range = output_range(activation, qp)

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        lo, hi = self.out_range
        return _act.clamp(codes(x_q, self.qp, "x_q"), lo, hi)

    def __repr__(self) -> str:
        return f"QReLU({self.activation!r}, mode={self.mode!r})"


class Flatten:
    """NCHW codes to (N, C*H*W) (:func:`npquant.qnn.activation.flatten`); qparams unchanged."""

    def __call__(self, x_q: npt.ArrayLike) -> np.ndarray:
        return _act.flatten(x_q)

    def __repr__(self) -> str:
        return "Flatten()"
