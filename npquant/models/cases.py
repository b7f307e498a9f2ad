"""A bundled case where the quantization choices matter: an outlier channel, heavy tails.

The bundled digits models are easy: every observer gives the same accuracy and 8 bits
lose nothing. :func:`outlier_mlp` builds, from a seed and in a fraction of a second (no
download, no file), a small classifier where the choices do matter:

* **data**: 8 classes in 32 dimensions, each a Gaussian prototype ``mu_k ~ N(0, I)``
  plus Student-t noise with 3 degrees of freedom (scale 0.8): most inputs are near their
  prototype, a few are far out (heavy tails). 4000 training, 512 calibration and 2000
  test samples, all drawn from ``numpy.random.default_rng(seed)``.
* **model**: ``fc1`` (32 -> 64) -> ReLU -> ``fc2`` (64 -> 8). ``fc1`` is random
  (``N(0, 1/32)`` weights), ``fc2`` is fitted in closed form by ridge regression of the
  one-hot labels on the hidden features (no training loop).
* **the outlier channel**: row 0 of ``fc1`` and its bias are multiplied by
  :data:`OUTLIER_GAIN` (16) and column 0 of ``fc2`` divided by it. Since
  ``ReLU(g z) = g ReLU(z)`` for ``g > 0``, the float model computes the same function;
  with 16, a power of two, the scaling is even exact in float32, and the float logits
  are bit-identical to those of the network without it (``gain=1``). But ``fc1`` now has
  one output channel 16 times larger than the others, and so has the hidden activation.
  Trained networks have channels of very different ranges too (batch-norm folding is one
  cause); this case makes one by construction, so that its effect can be measured.

What each choice shows. The numbers are those :func:`report` prints for seed 0 (NumPy
2.4, x86-64); ``tests/test_cases.py`` asserts the orderings with margins, not the digits.

**Per-channel beats per-tensor** (:func:`weight_errors`: ``fc1``'s weights, signed
symmetric narrow-range codes as :func:`npquant.models.convert.quantize_model` makes them). The
one per-tensor scale is set by the outlier row, so the 63 ordinary rows get a 16 times
coarser grid; at 4 bits most of their weights round to 0. Per-channel gives each row
its own scale. MSE per-tensor / per-channel: 72x at 8 bits and 28x at 4 bits over the
whole tensor, 238x and 105x on the 63 ordinary rows (SQNR 28.3 against 46.8 dB, and
6.6 against 21.1 dB). Per-group (blocks of 8 inputs of a row) is better still (49.3 and
23.6 dB). In the integer model with 4-bit weights and 8-bit activations (min-max),
per-tensor falls to 21.50 % test accuracy, near chance (12.5 %), while per-channel keeps
93.15 % (float: 94.05 %).

**The MSE and entropy observers beat min-max** (:func:`observer_errors`: the hidden
activation, ranges calibrated on the calibration inputs, errors measured on the test
inputs). At 4 bits the min-max range ``[0, 94.5]`` is set by the outlier channel and
the far-out inputs: its step is 6.3, and 96 % of the test values round to code 0. The
MSE observer clips to ``[0, 50.1]``: 1.6x lower MSE than min-max on the whole tensor,
2.4x on the 63 ordinary channels. The entropy observer (TensorRT's KL calibration)
clips to ``[0, 8.9]``: its MSE on the whole tensor is 3.5x *higher* than min-max's (the
outlier channel is clipped), but on the ordinary channels it is 41x lower, and the
accuracy follows the ordinary channels: with 4-bit hidden activations and 8-bit
per-channel weights, test accuracy is 53.70 % with min-max, 84.30 % with MSE and
92.55 % with entropy. At 8 bits clipping gains nothing here: the MSE observer's test
MSE is 11 % above min-max's, and entropy's range ``[0, 31.9]`` costs SQNR (9.8 against
28.9 dB).

**4-bit PTQ visibly hurts** (:func:`ptq`, per-channel weights, min-max): W8A8 loses 0.30
points of accuracy (logit SQNR against the float model 21.9 dB), W4A8 0.90 points
(12.5 dB), W4A4 38.60 points (2.4 dB).

Everything here is computed with the NumPy twins of the kernels (``backend="numpy"``,
the same bits as numba) where the data are large, so that the functions stay fast with
``NUMBA_DISABLE_JIT=1``; :func:`ptq` runs the integer model's kernels.

Run ``python -m npquant.models.cases`` to print the tables (a few seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array, check_bool, check_choice, check_int
from ..affine import fake_quantize, quantization_error
from ..qparams import QParams, QuantSpec, fit_qparams
from . import nn

OUTLIER_GAIN = 16.0
"""The factor of the outlier channel: row 0 of ``fc1`` (and its bias) times this, column 0
of ``fc2`` divided by it."""

OBSERVER_NAMES = ("minmax", "percentile", "mse", "entropy")
"""The observers compared by :func:`observer_errors` (names of
:data:`npquant.models.convert.OBSERVERS`)."""

_DIM, _HIDDEN, _CLASSES = 32, 64, 8
_N_TRAIN, _N_CALIB, _N_TEST = 4000, 512, 2000
_NOISE, _DOF, _RIDGE = 0.8, 3.0, 1e-2


@dataclass(frozen=True, eq=False)
class OutlierCase:
    """The model and data of :func:`outlier_mlp`.

    Attributes
    ----------
    model : npquant.models.nn.Sequential
        ``fc1`` (Linear 32 -> 64), ReLU, ``fc2`` (Linear 64 -> 8), float32.
    calib_x : float32 (512, 32)
        Calibration inputs (drawn like the test inputs; labels not needed).
    test_x : float32 (2000, 32)
        Test inputs.
    test_y : int64 (2000,)
        Test labels, 0..7.
    outlier_channel : int
        The row of ``fc1`` that was scaled (0).
    gain : float
        Its factor (:data:`OUTLIER_GAIN`).
    seed : int
        The seed everything was drawn from.
    """

    model: nn.Sequential
    calib_x: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    outlier_channel: int
    gain: float
    seed: int

    @property
    def fc1_weight(self) -> np.ndarray:
        """``fc1``'s float32 weight, shape (64, 32) (out, in); row 0 is the outlier."""
        return self.model[0].weight

    def hidden(self, x: npt.ArrayLike) -> np.ndarray:
        """The hidden activation ``ReLU(fc1(x))`` (float32, (n, 64)) of inputs ``x`` (n, 32)."""
        x = as_float_array(x, "x")
        return self.model[1](self.model[0](x))

    def accuracy(self, model: Callable[[np.ndarray], npt.ArrayLike] | None = None) -> float:
        """Fraction of the test inputs that ``model`` (a callable from float inputs to
        logits; default the float model) classifies correctly."""
        model = self.model if model is None else model
        if not callable(model):
            raise TypeError(f"model must be callable (inputs -> logits), got {type(model).__name__}")
        return float(np.mean(np.asarray(model(self.test_x)).argmax(1) == self.test_y))


def outlier_mlp(seed: int = 0, *, gain: float = OUTLIER_GAIN) -> OutlierCase:
    """Build the case (see the module docstring) from ``seed``; deterministic for a given
    NumPy version (``numpy.random.default_rng``).

    Parameters
    ----------
    seed : int >= 0
        Seed of the prototypes, the data and ``fc1``.
    gain : float >= 1
        Factor of the outlier channel; ``gain=1`` gives the same network without it (the
        same float function up to float32 rounding).

    Returns
    -------
    OutlierCase
    """
    seed = check_int(seed, "seed", lo=0)
    if isinstance(gain, (bool, np.bool_)) or not isinstance(gain, (int, float, np.floating, np.integer)):
        raise TypeError(f"gain must be a real number >= 1, got {type(gain).__name__} {gain!r}")
    gain = float(gain)
    if not (1.0 <= gain < float("inf")):
        raise ValueError(f"gain must be a finite real number >= 1, got {gain!r}")
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((_CLASSES, _DIM))

    def sample(n):
        y = rng.integers(0, _CLASSES, n)
        x = mu[y] + rng.standard_t(_DOF, (n, _DIM)) * _NOISE
        return x.astype(np.float32), y.astype(np.int64)

    x_tr, y_tr = sample(_N_TRAIN)
    x_te, y_te = sample(_N_TEST)
    x_cal, _ = sample(_N_CALIB)
    w1 = (rng.standard_normal((_HIDDEN, _DIM)) / np.sqrt(_DIM)).astype(np.float32)
    b1 = (rng.standard_normal(_HIDDEN) * 0.1).astype(np.float32)
    # fc2: ridge regression of the one-hot labels on [ReLU(fc1(x)), 1] (float64)
    h = np.maximum(x_tr.astype(np.float64) @ w1.T.astype(np.float64) + b1, 0.0)
    a = np.hstack([h, np.ones((len(h), 1))])
    sol = np.linalg.solve(a.T @ a + _RIDGE * np.eye(_HIDDEN + 1), a.T @ np.eye(_CLASSES)[y_tr])
    w2 = sol[:_HIDDEN].T.astype(np.float32)
    b2 = sol[_HIDDEN].astype(np.float32)
    c = 0
    w1[c] *= np.float32(gain)
    b1[c] *= np.float32(gain)
    w2[:, c] /= np.float32(gain)
    model = nn.Sequential([nn.Linear(w1, b1, name="fc1"), nn.ReLU(name="relu"), nn.Linear(w2, b2, name="fc2")])
    return OutlierCase(model=model, calib_x=x_cal, test_x=x_te, test_y=y_te, outlier_channel=c, gain=gain, seed=seed)


def _check_case(case) -> OutlierCase:
    if not isinstance(case, OutlierCase):
        raise TypeError(f"case must be an OutlierCase (from outlier_mlp()), got {type(case).__name__}")
    return case


def _bits_tuple(bits, name="bits", lo=2, hi=8) -> tuple:
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        bits = (bits,)
    try:
        items = tuple(bits)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(bits).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty")
    return tuple(check_int(b, name, lo=lo, hi=hi) for b in items)


def weight_spec(granularity: str, bits: int, group_size: int = 8) -> QuantSpec:
    """The weight spec of :func:`weight_errors`: signed, symmetric, narrow range (as
    :func:`npquant.models.convert.quantize_model`), ``granularity`` one of ``"per-tensor"``,
    ``"per-channel"`` (axis 0) or ``"per-group"`` (axis 1, ``group_size`` inputs).

    Parameters
    ----------
    granularity : str
        ``"per-tensor"``, ``"per-channel"`` or ``"per-group"``.
    bits : int
        Bits of the codes, 2..16.
    group_size : int, default 8
        Block size of ``"per-group"``, >= 1 (ignored otherwise).

    Returns
    -------
    QuantSpec
        The spec.
    """
    check_choice(granularity, "granularity", ("per-tensor", "per-channel", "per-group"))
    axis = {"per-tensor": None, "per-channel": 0, "per-group": 1}[granularity]
    block = check_int(group_size, "group_size", lo=1) if granularity == "per-group" else None
    return QuantSpec(
        bits=check_int(bits, "bits", lo=2, hi=16), symmetric=True, narrow_range=True, axis=axis, block_size=block
    )


def weight_errors(case: OutlierCase, bits: int | Sequence[int] = (8, 4), *, group_size: int = 8) -> list[dict]:
    """Quantization error of ``fc1``'s weight per granularity and bit width.

    Each weight tensor is fake-quantized with min-max qparams of :func:`weight_spec`.

    Parameters
    ----------
    case : OutlierCase
        The case (see :func:`outlier_mlp`).
    bits : int or sequence of int, default (8, 4)
        The bit widths, each 2..16.
    group_size : int, default 8
        Keyword-only; block size of the per-group spec.

    Returns
    -------
    list of dict
        One per (bits, granularity) in the order ``bits`` x (per-tensor, per-channel,
        per-group): ``bits``, ``granularity``, ``mse`` (whole tensor), ``mse_ordinary``
        (the rows other than the outlier), ``sqnr_db`` (whole tensor), all float64.
    """
    case = _check_case(case)
    w = case.fc1_weight
    keep = np.arange(w.shape[0]) != case.outlier_channel
    rows = []
    for b in _bits_tuple(bits, hi=16):
        for g in ("per-tensor", "per-channel", "per-group"):
            w_hat = fake_quantize(w, fit_qparams(w, weight_spec(g, b, group_size)), backend="numpy")
            err = quantization_error(w, w_hat)
            rows.append(
                {
                    "bits": b,
                    "granularity": g,
                    "mse": err.mse,
                    "mse_ordinary": quantization_error(w[keep], w_hat[keep]).mse,
                    "sqnr_db": err.sqnr_db,
                }
            )
    return rows


def _observer(name: str, bits: int):
    from .convert import OBSERVERS

    check_choice(name, "observer", tuple(OBSERVERS))
    return OBSERVERS[name](QuantSpec(bits=bits, signed=False))


def calibrate_hidden(case: OutlierCase, observer: str = "minmax", bits: int = 8) -> QParams:
    """QParams of the hidden activation (unsigned, per-tensor, ``bits`` bits) that
    ``observer`` (a name of :data:`npquant.models.convert.OBSERVERS`) calibrates on
    ``case.calib_x``.

    Parameters
    ----------
    case : OutlierCase
        The case (see :func:`outlier_mlp`).
    observer : str, default ``"minmax"``
        The observer's name.
    bits : int, default 8
        Bits of the activation codes, 2..8.

    Returns
    -------
    QParams
        The calibrated per-tensor qparams.
    """
    case = _check_case(case)
    obs = _observer(observer, check_int(bits, "bits", lo=2, hi=8))
    obs.update(case.hidden(case.calib_x))
    return obs.qparams()


def observer_errors(
    case: OutlierCase, bits: int | Sequence[int] = (8, 4), observers: str | Sequence[str] = OBSERVER_NAMES
) -> list[dict]:
    """Quantization error of the hidden activation on the test inputs, with the range each
    observer calibrated on the calibration inputs.

    Parameters
    ----------
    case : OutlierCase
        The case (see :func:`outlier_mlp`).
    bits : int or sequence of int, default (8, 4)
        The activation bit widths, each 2..8.
    observers : str or sequence of str, default ``OBSERVER_NAMES``
        Names of :data:`npquant.models.convert.OBSERVERS`.

    Returns
    -------
    list of dict
        One per (bits, observer): ``bits``, ``observer``, ``min_val`` and ``max_val``
        (the clipping range ``S (qmin - Z)``, ``S (qmax - Z)``), ``mse`` and ``sqnr_db``
        on the test activations, ``mse_ordinary`` on its channels other than the
        outlier (float64).
    """
    case = _check_case(case)
    if isinstance(observers, str):
        observers = (observers,)
    h = case.hidden(case.test_x)
    keep = np.arange(h.shape[1]) != case.outlier_channel
    rows = []
    for b in _bits_tuple(bits):
        for name in observers:
            qp = calibrate_hidden(case, name, b)
            h_hat = fake_quantize(h, qp, backend="numpy")
            err = quantization_error(h, h_hat)
            s, z = float(qp.scale), int(qp.zero_point)
            rows.append(
                {
                    "bits": b,
                    "observer": name,
                    "min_val": s * (qp.spec.qmin - z),
                    "max_val": s * (qp.spec.qmax - z),
                    "mse": err.mse,
                    "mse_ordinary": quantization_error(h[:, keep], h_hat[:, keep]).mse,
                    "sqnr_db": err.sqnr_db,
                }
            )
    return rows


@dataclass(frozen=True)
class PTQResult:
    """One post-training quantization of the case: the settings, the integer model, its
    test accuracy (fraction) and the SQNR (dB) of its logits against the float model's."""

    weight_bits: int
    act_bits: int
    per_channel: bool
    observer: str
    accuracy: float
    sqnr_db: float
    model: object


def ptq(
    case: OutlierCase,
    *,
    weight_bits: int = 8,
    act_bits: int = 8,
    per_channel: bool = True,
    observer: str = "minmax",
    mode: str = "tflite",
) -> PTQResult:
    """Post-training static quantization of the case's model into an integer model.

    :func:`npquant.models.convert.quantize_model` with ``weight_bits`` signed symmetric weights
    (per output channel or per tensor) and ``observer`` calibrating every activation on
    ``case.calib_x``. ``act_bits`` is the width of the hidden activation (``fc1``'s
    output, unsigned, calibrated by the same observer); the input and the logits stay
    8-bit.

    Parameters
    ----------
    case : OutlierCase
        The case (see :func:`outlier_mlp`).
    weight_bits : int, default 8
        Keyword-only; bits of the weight codes, 2..8.
    act_bits : int, default 8
        Bits of the hidden activation, 2..8.
    per_channel : bool, default True
        Weight scales per output channel, else per tensor.
    observer : str, default ``"minmax"``
        The observer's name.
    mode : str, default ``"tflite"``
        The requantization mode.

    Returns
    -------
    PTQResult
        The settings, the integer model, its accuracy and the SQNR of its logits.
    """
    from .convert import quantize_model

    case = _check_case(case)
    weight_bits = check_int(weight_bits, "weight_bits", lo=2, hi=8)
    act_bits = check_int(act_bits, "act_bits", lo=2, hi=8)
    per_channel = check_bool(per_channel, "per_channel")
    qparams = None if act_bits == 8 else {"fc1": calibrate_hidden(case, observer, act_bits)}
    q = quantize_model(
        case.model,
        case.calib_x,
        mode=mode,
        observer=observer,
        per_channel=per_channel,
        weight_bits=weight_bits,
        qparams=qparams,
    )
    logits = q(case.test_x)
    return PTQResult(
        weight_bits=weight_bits,
        act_bits=act_bits,
        per_channel=per_channel,
        observer=observer,
        accuracy=case.accuracy(lambda _x: logits),
        sqnr_db=quantization_error(case.model(case.test_x), logits).sqnr_db,
        model=q,
    )


#: The PTQ settings :func:`report` tabulates: (weight bits, activation bits, per-channel, observer).
REPORT_PTQ = (
    (8, 8, False, "minmax"),
    (8, 8, True, "minmax"),
    (4, 8, False, "minmax"),
    (4, 8, True, "minmax"),
    (8, 4, True, "minmax"),
    (8, 4, True, "mse"),
    (8, 4, True, "entropy"),
    (4, 4, True, "minmax"),
)


def report(case: OutlierCase | None = None, settings: Iterable[tuple] = REPORT_PTQ) -> str:
    """The case's tables as text: weight errors, observer errors, and the PTQ accuracies
    of ``settings`` (``(weight bits, activation bits, per-channel, observer)`` tuples,
    default :data:`REPORT_PTQ`).

    Parameters
    ----------
    case : OutlierCase or None, default None
        The case; ``None`` is :func:`outlier_mlp` ``()``.
    settings : iterable of tuple, default ``REPORT_PTQ``
        The PTQ settings to tabulate.

    Returns
    -------
    str
        The tables.
    """
    from .._table import format_table

    case = outlier_mlp() if case is None else _check_case(case)
    acc_f = case.accuracy()
    w_rows = [
        [str(r["bits"]), r["granularity"], f"{r['mse']:.3e}", f"{r['mse_ordinary']:.3e}", f"{r['sqnr_db']:.2f}"]
        for r in weight_errors(case)
    ]
    o_rows = [
        [
            str(r["bits"]),
            r["observer"],
            f"[{r['min_val']:.3f}, {r['max_val']:.3f}]",
            f"{r['mse']:.3e}",
            f"{r['mse_ordinary']:.3e}",
            f"{r['sqnr_db']:.2f}",
        ]
        for r in observer_errors(case)
    ]
    p_rows = []
    for wb, ab, pc, ob in settings:
        r = ptq(case, weight_bits=wb, act_bits=ab, per_channel=pc, observer=ob)
        p_rows.append(
            [
                f"W{wb}A{ab}",
                "per-channel" if pc else "per-tensor",
                ob,
                f"{100 * r.accuracy:.2f} %",
                f"{100 * (r.accuracy - acc_f):+.2f}",
                f"{r.sqnr_db:.2f}",
            ]
        )
    return "\n".join(
        [
            f"npquant.models.cases.outlier_mlp(seed={case.seed}): fc1 row {case.outlier_channel} scaled by {case.gain:g}, "
            f"Student-t inputs; float test accuracy {100 * acc_f:.2f} % ({len(case.test_y)} test inputs)",
            "",
            "fc1 weight error (signed symmetric narrow-range, min-max; per-group: 8 inputs)",
            format_table(["bits", "granularity", "MSE", "MSE other rows", "SQNR dB"], w_rows, align="rlrrr"),
            "",
            "hidden activation error on the test inputs (unsigned, range calibrated on the calibration inputs)",
            format_table(["bits", "observer", "range", "MSE", "MSE other channels", "SQNR dB"], o_rows, align="rllrrr"),
            "",
            "integer model (tflite requantization); A: bits of the hidden activation (input and logits 8-bit)",
            format_table(
                ["setting", "weights", "observer", "test acc", "change", "logit SQNR dB"], p_rows, align="lllrrr"
            ),
        ]
    )


if __name__ == "__main__":  # pragma: no cover - python -m npquant.models.cases
    print(report())
