"""Requantization: the int32 accumulator of an integer layer back to output codes.

- :mod:`npquant.requant.fixedpoint`: fixed-point multipliers (``M = 2^-n M0``) and the
  integer primitives (SRDHM, RDBPOT, multiply-by-quantized-multiplier), each as a readable
  scalar reference and its NumPy twin;
- :mod:`npquant.requant.modes`: the named ``mode`` of each stack (TFLite, PyTorch fbgemm,
  ONNX) built on them, :func:`~npquant.requant.modes.requantize` and its scalar
  reference, and the tie table.
"""
