"""The integer code of every named mode a kernel takes, defined once.

The Python side names a mode with a string (``"half_even"``, ``"tflite"``, ``"fma"``);
a kernel takes an integer. Each table below maps the names to their codes, and the
kernels import the constants from here, so a name and its code are never paired by the
position of the name in a tuple.

numba's cache (``cache=True``) is invalidated by a change to the kernel's own source
file only: after changing a code here, clear ``__pycache__`` of ``npquant/_kernels``.
"""

# ---- rounding of a float to an integral value: npquant.qparams.ROUNDING_MODES ---------------
HALF_EVEN = 0
HALF_AWAY = 1
HALF_UP = 2
FLOOR = 3
STOCHASTIC = 4

ROUNDING_CODES = {
    "half_even": HALF_EVEN,
    "half_away": HALF_AWAY,
    "half_up": HALF_UP,
    "floor": FLOOR,
    "stochastic": STOCHASTIC,
}

# ---- arithmetic of float -> code: npquant.affine.METHODS ("torch" resolves to one of these) --
DIVIDE = 0
MUL = 1
MUL_ADD = 2
FMA = 3

METHOD_CODES = {
    "divide": DIVIDE,
    "mul": MUL,
    "mul_add": MUL_ADD,
    "fma": FMA,
}

# ---- requantization: npquant.requant.modes.REQUANT_MODES + EXTRA_REQUANT_MODES --------------
TFLITE = 0
TFLITE_SINGLE = 1
FP32 = 2
ONNX = 3
TFLITE_SINGLE_AWAY = 4

REQUANT_CODES = {
    "tflite": TFLITE,
    "tflite_single": TFLITE_SINGLE,
    "fp32": FP32,
    "onnx": ONNX,
    "tflite_single_away": TFLITE_SINGLE_AWAY,
}
