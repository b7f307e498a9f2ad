"""Importers: a peer's model translated into npquant's own :class:`~npquant.models.graph.Graph`.

* :mod:`npquant.importers.torch`: :func:`from_torch` (a float ``torch.nn.Module``, traced
  with ``torch.fx``), :func:`from_torch_quantized` (an eager-mode quantized module, bit for
  bit with PyTorch's fbgemm engine) and :func:`torch_intermediates` (PyTorch's value of
  every tensor, to compare with ``graph.run(..., keep_intermediates=True)``).
* :mod:`npquant.importers.tflite`: :func:`from_tflite` (an int8 ``.tflite`` flatbuffer, NHWC,
  bit for bit with LiteRT's reference kernels), :func:`tflite_intermediates` (LiteRT's
  value of every tensor) and :func:`tflite_tensor_names`; the ``tflite`` extra (and
  ``litert`` for the interpreter).
* :mod:`npquant.importers.onnx`: :func:`from_onnx` (a float or quantized ONNX model, QOperator
  or QDQ, bit for bit with onnxruntime's CPU kernels, or read as ``onnx.reference`` does)
  and :func:`onnx_intermediates` (onnxruntime's or the reference's value of any tensor).

The peers are imported inside the functions that need them: importing this package never
imports torch, and a missing peer is a ``ModuleNotFoundError`` (an ``ImportError``)
naming the ``peers`` extra (``pip install 'npquant[peers]'``).
"""

from .onnx import from_onnx, onnx_intermediates
from .tflite import from_tflite, tflite_intermediates, tflite_tensor_names
from .torch import from_torch, from_torch_quantized, torch_intermediates

__all__ = [
    "from_torch",
    "from_torch_quantized",
    "torch_intermediates",
    "from_tflite",
    "tflite_intermediates",
    "tflite_tensor_names",
    "from_onnx",
    "onnx_intermediates",
]
