"""The weight-error job of ``npquant demo --weights``: train scikit-learn's MLPClassifier on
the digits, quantize each weight matrix at every bit width x scheme x granularity, and
tabulate the quantization error and the test accuracy of the fake-quantized network.

Application code of the command line (:mod:`npquant.app.cli` parses the options); heavy
imports (scikit-learn) happen inside :func:`weight_demo`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from .._table import format_table

DEMO_SPLIT_SEED = 0  # the split of npquant.models.sklearn_mlp.digits_split


def demo_configs(bits_list: list[int], group_size: int) -> list[tuple[tuple[str, str, str], dict]]:
    """``(labels, QuantSpec keyword arguments)`` for each bits x scheme x granularity.

    Parameters
    ----------
    bits_list : list of int
        The bit widths, in order (``--bits``, e.g. ``[8, 4, 2]``).
    group_size : int
        Block size along axis 1 of the per-group granularity (``--group-size``).

    Returns
    -------
    list of (tuple of str, dict)
        One ``(labels, kwargs)`` pair per bit width x scheme (symmetric, asymmetric) x
        granularity (per-tensor, per-channel along axis 0, per-group along axis 1), in
        that nesting order: ``labels`` is ``(bits, scheme, granularity)`` as strings and
        ``kwargs`` the keyword arguments of a signed ``QuantSpec``.
    """
    grans = [
        ("per-tensor", {}),
        ("per-channel", {"axis": 0}),
        (f"per-group({group_size})", {"axis": 1, "block_size": group_size}),
    ]
    out = []
    for bits in bits_list:
        for scheme, sym in (("symmetric", True), ("asymmetric", False)):
            for gname, kw in grans:
                out.append(((str(bits), scheme, gname), dict(bits=bits, signed=True, symmetric=sym, **kw)))
    return out


def weight_demo(
    hidden: list[int],
    *,
    seed: int,
    max_iter: int,
    bits: list[int],
    group_size: int,
    rounding: str,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The report of ``npquant demo --weights``.

    Parameters
    ----------
    hidden : list of int
        Hidden layer sizes of the MLP (``--hidden``).
    seed : int
        Seed of the MLP's initialization and minibatch order, and of stochastic rounding.
    max_iter : int
        Training epochs at most.
    bits : list of int
        Bit widths, in order (``--bits``).
    group_size : int
        Block size along axis 1 of the per-group granularity.
    rounding : str
        Rounding mode of the quantizer (one of ``npquant.qparams.ROUNDING_MODES``).
    progress : callable or None, default None
        Called with a progress message before and after training (None: silent).

    Returns
    -------
    str
        The report: the data, model and quantization settings, one error table per weight
        matrix (MSE, SQNR, max abs error per configuration) and the accuracy table.
    """
    import numpy as np

    from ..affine import fake_quantize, quantization_error
    from ..models import sklearn_mlp
    from ..qparams import QuantSpec, fit_qparams

    if progress is None:
        progress = _silent
    hidden = tuple(hidden)

    data = sklearn_mlp.digits_split()
    X_tr, X_te, y_tr, y_te = data
    y = np.concatenate([y_tr, y_te])

    t0 = time.perf_counter()
    progress(f"training MLPClassifier(hidden_layer_sizes={hidden}) for at most {max_iter} epochs ...")
    clf, _ = sklearn_mlp.train_mlp(hidden, seed=seed, max_iter=max_iter, data=data)
    converged = clf.n_iter_ < max_iter
    progress(
        f"trained in {time.perf_counter() - t0:.1f} s ({clf.n_iter_} epochs, "
        f"{'converged' if converged else 'stopped at --max-iter'}); quantizing ..."
    )
    float_acc = clf.score(X_te, y_te)

    # sklearn stores coefs_[k] as (in, out); npquant follows PyTorch's (out, in).
    weights = [np.asarray(c, dtype=np.float64).T for c in clf.coefs_]
    configs = demo_configs(bits, group_size)

    layer_rows = [[] for _ in weights]
    acc_rows = []
    for labels, kw in configs:
        spec = QuantSpec(rounding=rounding, seed=seed if rounding == "stochastic" else None, **kw)
        fq = []
        for k, w in enumerate(weights):
            w_hat = fake_quantize(w, fit_qparams(w, spec))
            err = quantization_error(w, w_hat)
            layer_rows[k].append([*labels, f"{err.mse:.3e}", _db(err.sqnr_db), f"{err.max_abs:.3e}"])
            fq.append(w_hat.astype(np.float64).T)
        qclf = copy.copy(clf)  # shallow: only coefs_ is replaced
        qclf.coefs_ = fq
        acc = qclf.score(X_te, y_te)
        acc_rows.append([*labels, f"{100 * acc:.2f} %", f"{100 * (acc - float_acc):+.2f}"])

    n_tr, n_te = len(y_tr), len(y_te)
    out = [
        "npquant demo: post-training weight quantization of an MLP trained on scikit-learn's digits",
        "",
        f"data     load_digits: {len(y)} 8x8 images, 10 classes, pixels scaled to [0, 1];",
        f"         stratified split, random_state={DEMO_SPLIT_SEED}: {n_tr} train / {n_te} test",
        f"model    MLPClassifier(hidden_layer_sizes={hidden}, relu, adam, random_state={seed}),"
        f" {clf.n_iter_} epochs{'' if converged else ' (not converged)'}",
        "weights  sklearn's coefs_[k] is (in, out); each is transposed to (out, in), PyTorch's convention",
        f"quant    signed {'/'.join(map(str, bits))}-bit codes, min-max range widened to include 0,",
        f"         float32 scales, rounding={rounding}; symmetric: zero point 0; asymmetric: fitted",
        "         per-tensor: one scale; per-channel: axis=0, one scale per output row;",
        f"         per-group({group_size}): axis=1, block_size={group_size}, one scale per "
        f"{group_size} inputs of a row",
        "         (the last block of a row may be shorter)",
        "         only weights are quantized; biases and activations stay float64",
        "",
        f"float test accuracy: {100 * float_acc:.2f} % ({n_te} test images)",
    ]
    n_layers = len(weights)
    for k, w in enumerate(weights):
        what = "output layer" if k == n_layers - 1 else f"hidden layer {k + 1}"
        out += [
            "",
            f"W{k + 1}: {what}, shape {w.shape} (out, in) = coefs_[{k}].T, {w.size} weights "
            f"in [{w.min():.4f}, {w.max():.4f}]",
            format_table(
                ["bits", "scheme", "granularity", "MSE", "SQNR dB", "max |err|"], layer_rows[k], align="rllrrr"
            ),
        ]
    out += [
        "",
        f"test accuracy with all {n_layers} weight matrices fake-quantized "
        f"(change in percentage points vs float {100 * float_acc:.2f} %)",
        format_table(["bits", "scheme", "granularity", "accuracy", "change"], acc_rows, align="rllrr"),
    ]
    return "\n".join(out)


def _silent(msg: str) -> None:
    pass


def _db(v: float) -> str:
    """A dB value with two decimals; infinities as ``inf`` and ``-inf``."""
    if v == float("inf"):
        return "inf"
    if v == float("-inf"):
        return "-inf"
    return f"{v:.2f}"
