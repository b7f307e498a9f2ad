"""npquant: a framework-free reference implementation of neural-network quantization.

The package is grouped by stage of the quantization pipeline:

- top level: quantization parameters (:mod:`~npquant.qparams`), granularity,
  affine quantization (:mod:`~npquant.affine`), rounding (:mod:`~npquant.rounding`) and
  observers;
- :mod:`npquant.requant`: fixed-point multipliers and the requantization mode of each stack;
- :mod:`npquant.qnn`: integer-only layers (the GEMM engine, one module per layer kind);
- :mod:`npquant.models`: float layers, the layer registry, conversion to integer models,
  graphs and model files;
- :mod:`npquant.importers`: models from PyTorch, ONNX and TFLite;
- :mod:`npquant.training`: training, quantization-aware training, retraining with pruning;
- :mod:`npquant.compression`: Deep Compression (pruning, k-means, Huffman, packing, the file);
- :mod:`npquant.explain` and :mod:`npquant.vectors`: step-by-step traces and golden vectors;
- :mod:`npquant.app`: the ``npquant`` command and its demos;
- ``npquant._kernels``: the numba kernels (private; each has a NumPy twin).

The names below are the most used ones, re-exported from the module that defines each.
"""

from . import _compat
from ._threads import threading_info
from ._version import __version__
from .affine import (
    METHODS,
    QuantError,
    dequantize,
    dynamic_quantize_linear,
    fake_quantize,
    quantization_error,
    quantize,
)
from .compression.huffman import HuffmanCode, huffman_decode, huffman_encode
from .compression.kmeans import (
    KMeansResult,
    centroid_gradient,
    finetune_centroids,
    kmeans_quantize,
    reaverage_centroids,
    reconstruct,
)
from .compression.packing import PackedArray, from_unsigned, pack, pack_bits, to_unsigned, unpack, unpack_bits
from .compression.pipeline import LayerConfig, read_compressed, stage_sizes, write_compressed
from .compression.prune import decode_relative, encode_relative, magnitude_mask, magnitude_masks, sparsity_schedule
from .granularity import param_shape
from .importers import from_torch, from_torch_quantized
from .models.graph import Graph, Node, load_graph, save_graph
from .models.io import FileFormatError, load_model, load_reference, load_state_dict, load_weights, save_state_dict
from .observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    PerChannelMinMaxObserver,
)
from .qparams import ROUNDING_MODES, QParams, QuantSpec, compute_qparams, fit_qparams
from .requant.fixedpoint import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from .requant.modes import REQUANT_MODES, requantize, requantize_ties
from .rounding import round_values

__all__ = [
    "FileFormatError",
    "Graph",
    "Node",
    "from_torch",
    "from_torch_quantized",
    "load_graph",
    "save_graph",
    "threading_info",
    "dynamic_quantize_linear",
    "magnitude_masks",
    "sparsity_schedule",
    "stage_sizes",
    "__version__",
    "METHODS",
    "REQUANT_MODES",
    "ROUNDING_MODES",
    "EntropyObserver",
    "HuffmanCode",
    "KMeansResult",
    "LayerConfig",
    "PackedArray",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "MSEObserver",
    "Observer",
    "PercentileObserver",
    "PerChannelMinMaxObserver",
    "QParams",
    "QuantError",
    "QuantSpec",
    "centroid_gradient",
    "compute_qparams",
    "decode_relative",
    "encode_relative",
    "finetune_centroids",
    "from_unsigned",
    "huffman_decode",
    "huffman_encode",
    "kmeans_quantize",
    "load_model",
    "load_reference",
    "load_state_dict",
    "load_weights",
    "magnitude_mask",
    "pack",
    "pack_bits",
    "read_compressed",
    "reaverage_centroids",
    "reconstruct",
    "unpack",
    "unpack_bits",
    "write_compressed",
    "dequantize",
    "fake_quantize",
    "fit_qparams",
    "multiply_by_quantized_multiplier",
    "param_shape",
    "quantization_error",
    "quantize",
    "quantize_multiplier",
    "requantize",
    "requantize_ties",
    "round_values",
    "to_unsigned",
    "save_state_dict",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]

_compat.install()


def __getattr__(name):
    return _compat.moved_attribute(name)
