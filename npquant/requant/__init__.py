"""Requantization: the int32 accumulator of an integer layer back to output codes.

- :mod:`npquant.requant.fixedpoint`: fixed-point multipliers (``M = 2^-n M0``), the
  integer primitives (SRDHM, RDBPOT, multiply-by-quantized-multiplier) and the named
  ``mode`` of each stack (TFLite, PyTorch fbgemm, ONNX), with the tie table.
"""
