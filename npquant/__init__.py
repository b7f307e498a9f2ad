"""npquant: a framework-free reference implementation of neural-network quantization."""

from ._version import __version__
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
from .linear import (
    METHODS,
    QuantError,
    dequantize,
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
from .qparams import ROUNDING_MODES, QParams, QuantSpec, compute_qparams, fit_qparams

__all__ = [
    "__version__",
    "METHODS",
    "REQUANT_MODES",
    "ROUNDING_MODES",
    "EntropyObserver",
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
    "compute_qparams",
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
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]
