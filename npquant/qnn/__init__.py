"""Integer-only layers: int8/uint8 in, int32 accumulation, int8/uint8 out.

Every layer computes its int32 accumulator exactly, then requantizes it with a named
mode of :mod:`npquant.fixedpoint` (``tflite``, ``tflite_single``, ``fp32``, ``onnx``).
"""
