"""Integer-only layers: int8/uint8 in, int32 accumulation, int8/uint8 out.

Every layer computes its int32 accumulator (exactly, or as a named stack does on a named
CPU path: ``accumulation``), then requantizes it with a named mode: one of
:mod:`npquant.requant.fixedpoint` (``tflite``, ``tflite_single``, ``fp32``, ``onnx``), or
``fbgemm`` for linear and conv2d, PyTorch fbgemm's float32 requantization with its float
bias (:data:`LAYER_REQUANT_MODES`).

* :mod:`~npquant.qnn.linear`: ``QLinear`` (prepared weights, folded bias), ``qlinear``
  (``QLinear`` called once), ``linear_accumulate`` (its accumulators; QParams or plain
  zero points); ``qmatmul``, the product of two quantized activations (ONNX's
  QLinearMatMul with a non-constant B), NumPy matmul broadcasting
* :mod:`~npquant.qnn.conv`: ``QConv2d``, ``qconv2d``, ``conv2d_accumulate`` (stride,
  padding with the input zero point, dilation, groups, depthwise)
* :mod:`~npquant.qnn.bias`: ``quantize_bias``, a float bias to int32 (onnxruntime's or
  TFLite's rounding)
* :mod:`~npquant.qnn.gemm`: the integer GEMM engine of both, and which compiled kernel
  runs it (``gemm_kernel``, ``use_gemm_kernel``)
* :mod:`~npquant.qnn.layers`: the layer objects of the other operations (``MaxPool2d``,
  ``AvgPool2d``, ``QAdd``, ``QReLU``, ``Flatten``); ``QLinear`` and ``QConv2d`` re-exported
* :mod:`~npquant.qnn.pool`: ``max_pool2d``, ``avg_pool2d`` (TFLite's or PyTorch's rounding)
* :mod:`~npquant.qnn.add`: ``add`` of two tensors with different scales (TFLite's ADD,
  PyTorch's quantized add, onnxruntime's QLinearAdd) on raw scales and zero points, and
  ``qadd``, the same on QParams with a fused ``activation`` (``QAdd`` called once)
* :mod:`~npquant.qnn.activation`: fused clamps (ReLU, ReLU6), ``normalize_activation``
  (``None`` and ``"none"`` both mean no activation, in every layer), ``flatten``
* :mod:`~npquant.qnn.accumulation`: accumulation as a named mode (exact int32, or int16
  pair saturation as fbgemm and MLAS compute it on CPUs without VNNI), per stack and CPU
* :mod:`~npquant.qnn.overflow`: worst-case accumulator bounds, int16 pair saturation
* :mod:`~npquant.qnn.fbgemm`: PyTorch fbgemm's float-bias requantization, bit for bit
"""

from ..requant.modes import LAYER_REQUANT_MODES
from .accumulation import ACCUMULATIONS, host_path
from .activation import ACTIVATIONS, activation_range, clamp, flatten, normalize_activation, relu, relu6
from .add import ADD_MODES, add, qadd, tflite_add_params, torch_add_vector_width
from .bias import BIAS_METHODS, quantize_bias
from .conv import QConv2d, conv2d_accumulate, conv_geometry, qconv2d, same_padding
from .fbgemm import fbgemm_multipliers, fbgemm_requantize
from .gemm import GEMM_KERNELS, available_gemm_kernels, gemm_kernel, use_gemm_kernel
from .layers import AvgPool2d, Flatten, MaxPool2d, QAdd, QReLU
from .linear import QLinear, linear_accumulate, qlinear, qmatmul
from .overflow import accumulator_bounds, check_accumulator, check_int16_pairs, int16_pair_accumulate
from .pool import AVG_POOL_MODES, avg_pool2d, max_pool2d

__all__ = [
    "ACCUMULATIONS",
    "ACTIVATIONS",
    "ADD_MODES",
    "AVG_POOL_MODES",
    "BIAS_METHODS",
    "GEMM_KERNELS",
    "LAYER_REQUANT_MODES",
    "AvgPool2d",
    "Flatten",
    "MaxPool2d",
    "QAdd",
    "QConv2d",
    "QLinear",
    "QReLU",
    "accumulator_bounds",
    "activation_range",
    "add",
    "available_gemm_kernels",
    "avg_pool2d",
    "check_accumulator",
    "check_int16_pairs",
    "clamp",
    "conv2d_accumulate",
    "conv_geometry",
    "fbgemm_multipliers",
    "fbgemm_requantize",
    "flatten",
    "gemm_kernel",
    "host_path",
    "int16_pair_accumulate",
    "linear_accumulate",
    "max_pool2d",
    "normalize_activation",
    "qadd",
    "qconv2d",
    "qlinear",
    "qmatmul",
    "quantize_bias",
    "relu",
    "relu6",
    "same_padding",
    "tflite_add_params",
    "torch_add_vector_width",
    "use_gemm_kernel",
]
