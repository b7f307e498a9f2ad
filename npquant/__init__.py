"""npquant: a framework-free reference implementation of neural-network quantization."""

from ._threads import threading_info
from ._version import __version__
from .compress import LayerConfig, read_compressed, stage_sizes, write_compressed
from .fixedpoint import (
    REQUANT_MODES,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    requantize_ties,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from .granularity import param_shape
from .graph import Graph, Node, load_graph, save_graph
from .huffman import HuffmanCode, huffman_decode, huffman_encode
from .importers import from_torch, from_torch_quantized
from .io import FileFormatError, load_model, load_reference, load_state_dict, load_weights, save_state_dict
from .kmeans import (
    KMeansResult,
    centroid_gradient,
    finetune_centroids,
    kmeans_quantize,
    reaverage_centroids,
    reconstruct,
)
from .linear import (
    METHODS,
    QuantError,
    dequantize,
    dynamic_quantize_linear,
    fake_quantize,
    quantization_error,
    quantize,
    round_values,
)
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
from .packing import PackedArray, from_unsigned, pack, pack_bits, to_unsigned, unpack, unpack_bits
from .prune import decode_relative, encode_relative, magnitude_mask, magnitude_masks, sparsity_schedule
from .qparams import ROUNDING_MODES, QParams, QuantSpec, compute_qparams, fit_qparams

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
