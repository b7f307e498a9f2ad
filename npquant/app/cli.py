"""The ``npquant`` command (also ``python -m npquant``).

Each subcommand is a pair of functions registered in :data:`COMMANDS`: ``_add_<name>``
declares its arguments on a subparser and ``_run_<name>(args) -> int`` does the work and
returns the exit status. A new subcommand is one more pair and one more line in
:data:`COMMANDS`. A runner that is a whole application lives in its own module of
``npquant.app`` (``npquant demo``'s tables: :mod:`npquant.app.demo`; its ``--weights`` job:
``_weight_demo``; ``npquant compress``: ``_compress``). Heavy imports (scikit-learn) happen
inside the runners so that ``--help`` and ``--version`` stay fast.

Exit status: 0 on success; 2 for bad arguments (argparse's convention, message on
stderr); 1 when a command fails on valid arguments: a missing, unreadable or corrupt
input, an output that cannot be written, each reported as one line
``npquant <cmd>: error: ...`` on stderr; 3 for an internal error (a bug: the traceback
is printed, with a request to report it); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .._table import format_table
from .._version import __version__
from ..qnn.accumulation import ACCUMULATIONS
from ..qparams import ROUNDING_MODES
from ..requant.modes import REQUANT_MODES
from ._weight_demo import (
    DEMO_SPLIT_SEED,
    _db,
    demo_configs,  # noqa: F401 - npquant.cli.demo_configs, the old public path
    weight_demo,
)

# ---------------------------------------------------------------------------- helpers


def _int_list(lo: int, hi: int):
    """An argparse ``type`` parsing ``"8,4,2"`` into ``[8, 4, 2]`` with each in ``[lo, hi]``."""

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
        out = []
        for t in items:
            try:
                v = int(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{t!r} is not an integer") from None
            if not lo <= v <= hi:
                raise argparse.ArgumentTypeError(f"{v} is outside the allowed range {lo}..{hi}")
            out.append(v)
        return out

    return parse


def _choice_list(choices):
    """An argparse ``type`` parsing ``"a,b"`` into ``["a", "b"]``, each one of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return items

    return parse


def _int_range(lo: int, hi: int | None = None):
    """An argparse ``type`` for one integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            allowed = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{v} must be {allowed}")
        return v

    return parse


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- demo

DEMO_QUICK_ITERS = 30
DEMO_FULL_ITERS = 300


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="every quantization method on the bundled reference models: size, test accuracy and "
        "agreement with float (--weights: the weight-error tables of a scikit-learn MLP)",
        description=(
            "The model table (the main job): for each bundled reference model (an MLP, "
            "LeNet-300-100 and a small CNN, trained in PyTorch on scikit-learn's digits and "
            "shipped in npquant/data/), every method: float, post-training int8 per tensor and "
            "per channel under each requantization mode, PyTorch's quantized model reproduced "
            "bit for bit, quantization-aware training at W8A8 and W4A4 next to post-training "
            "W4A4, dynamic quantization, and weight-only quantization at 8, 4 and 2 bits; each "
            "row gives the size in bytes, the test accuracy and the agreement with float. "
            "With --weights, another job: train scikit-learn's MLPClassifier on load_digits, "
            "quantize each weight matrix with min-max ranges at every combination of bit width, "
            "symmetric/asymmetric and per-tensor/per-channel/per-group granularity, and print "
            "the MSE, SQNR and max abs error of each and the test accuracy of the network with "
            "all its weights fake-quantized (train/test split fixed: stratified, 25% test, 450 "
            f"of 1797 images, random_state={DEMO_SPLIT_SEED}, whatever --seed is). The options "
            "of the --weights job are an error without --weights."
        ),
    )
    p.set_defaults(func=_run_demo, _parser=p)
    t = p.add_argument_group("the model table (the default job)")
    t.add_argument("--models", metavar="DIR", help="reference models folder (default: the bundled models)")
    t.add_argument(
        "--quick",
        action="store_true",
        help=f"the model table: the MLP only; with --weights: train {DEMO_QUICK_ITERS} epochs "
        "only (a smoke test; lower accuracy)",
    )
    p.add_argument_group("figures (needs matplotlib: pip install 'npquant[plot]')").add_argument(
        "--plots",
        metavar="DIR",
        help="instead of the table, write the teaching figures as PNG files into DIR "
        "(created if missing; see npquant.app.plot.DEMO_PLOTS); only --models applies",
    )
    w = p.add_argument_group("the weight-error job (--weights; its options need --weights)")
    w.add_argument(
        "--weights",
        action="store_true",
        help="instead of the model table, train scikit-learn's MLPClassifier and tabulate the "
        "quantization error of its weights",
    )
    w.add_argument(
        "--seed",
        type=_int_range(0, 2**32 - 1),
        default=None,
        help="seed of the MLP's initialization and minibatch order, and of stochastic rounding (default: 0)",
    )
    w.add_argument(
        "--bits",
        type=_int_list(2, 16),
        default=None,
        metavar="LIST",
        help="comma-separated bit widths, each 2..16 (default: 8,4,2)",
    )
    w.add_argument(
        "--group-size",
        type=_int_range(1),
        default=None,
        metavar="B",
        help="per-group block size along the input axis, axis=1 (default: 16)",
    )
    w.add_argument(
        "--hidden", type=_int_list(1, 4096), default=None, metavar="LIST", help="hidden layer sizes (default: 64,32)"
    )
    w.add_argument(
        "--max-iter",
        type=_int_range(1),
        default=None,
        metavar="N",
        help=f"training epochs at most (default: {DEMO_FULL_ITERS}, or {DEMO_QUICK_ITERS} with --quick)",
    )
    w.add_argument(
        "--rounding", choices=ROUNDING_MODES, default=None, help="rounding mode of the quantizer (default: half_even)"
    )


#: The options of ``npquant demo --weights``: ``(dest, flag, default)``; each is an error without
#: ``--weights`` (the model table does not use them).
DEMO_WEIGHT_OPTIONS = (
    ("seed", "--seed", 0),
    ("bits", "--bits", [8, 4, 2]),
    ("group_size", "--group-size", 16),
    ("hidden", "--hidden", [64, 32]),
    ("max_iter", "--max-iter", None),
    ("rounding", "--rounding", "half_even"),
)


def _usage_error(args, message: str):
    """Exit with status 2 and ``message`` on stderr, as argparse does for bad arguments."""
    args._parser.error(message)


def _run_demo_plots(args) -> int:
    """``npquant demo --plots DIR``: write the figures of npquant.app.plot.DEMO_PLOTS, print their paths."""
    others = [flag for dest, flag, _ in DEMO_WEIGHT_OPTIONS if getattr(args, dest) is not None]
    others += [flag for flag, on in (("--weights", args.weights), ("--quick", args.quick)) if on]
    if others:
        _usage_error(args, f"--plots takes only --models, not {', '.join(others)}")
    from .plot import require_matplotlib, write_demo_plots

    try:
        require_matplotlib()
    except ModuleNotFoundError as exc:
        print(f"npquant demo: error: {exc}", file=sys.stderr)
        return 1
    for path in write_demo_plots(args.plots, models_dir=args.models, progress=_progress):
        print(path)
    return 0


def _run_demo(args) -> int:
    if args.plots is not None:
        return _run_demo_plots(args)
    given = [flag for dest, flag, _ in DEMO_WEIGHT_OPTIONS if getattr(args, dest) is not None]
    if not args.weights:
        if given:
            many = len(given) > 1
            _usage_error(
                args,
                f"{', '.join(given)} {'are options' if many else 'is an option'} of the "
                f"--weights job (the weight-error tables of a scikit-learn MLP), not of the model "
                f"table: add --weights, or drop {'them' if many else 'it'}",
            )
        from .demo import MODELS, run

        print(run(args.models, models=MODELS[:1] if args.quick else MODELS, progress=_progress))
        return 0
    if args.models is not None:
        _usage_error(
            args,
            "--models is an option of the model table; the --weights job trains its own MLP: "
            "drop --models or --weights",
        )
    for dest, _, default in DEMO_WEIGHT_OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    return _run_weight_demo(args)


def _run_weight_demo(args) -> int:
    max_iter = args.max_iter or (DEMO_QUICK_ITERS if args.quick else DEMO_FULL_ITERS)
    print(
        weight_demo(
            args.hidden,
            seed=args.seed,
            max_iter=max_iter,
            bits=args.bits,
            group_size=args.group_size,
            rounding=args.rounding,
            progress=_progress,
        )
    )
    return 0


# ---------------------------------------------------------------------------- explain

_CODE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_SHOWN_TERMS = 8  # npquant.explain.SHOWN_TERMS (spelled out so that --help does not import it; a test checks)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{v} must be positive and finite")
    return v


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="trace one output element of an integer layer step by step (or the tie table)",
        description=(
            "Follow one output element of an integer linear or conv layer from its float inputs "
            "to its output code, in the notation of Jacob et al. 2018: the float x, w and b and "
            "how each became a code (scale, zero point, rounding), the zero-point corrections, "
            "the int32 accumulator summed directly and in the folded form of eq. 7, the bias, "
            "the real multiplier M = 2^-n M0 and its fixed-point form (m0, shift), each rounding "
            "of the chosen requantization mode, the zero point, the clamp, and the error against "
            "the float layer and against the exact value of the integer accumulator. Runs on a "
            "built-in seeded example (uint8 input and int8 weights, both with non-zero zero "
            "points), or, given a MODEL file, on the layer --layer of that model run on an input "
            "(--index names the output element); every printed integer is checked against "
            "npquant's integer layers. With --ties, list instead the accumulators where the "
            "requantization modes (TFLite, PyTorch fbgemm, ONNX) disagree for a multiplier."
        ),
    )
    p.set_defaults(_parser=p)
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a model file to explain a layer of: a graph file (npquant.models.graph.save_graph), or a "
        "reference model, quantized first with --mode, or a PyTorch PTQ reference (its layers "
        "are traced through fbgemm's float-bias requantization)",
    )
    p.add_argument(
        "--mode",
        choices=REQUANT_MODES,
        default=None,
        help="requantization mode (default tflite); with MODEL, the mode a reference model is quantized with",
    )
    p.add_argument(
        "--layer",
        default=None,
        metavar="LAYER",
        help="without MODEL: the built-in example, linear (default) or conv; with MODEL: a graph's "
        "node name or the position of a layer of an integer model (a linear or conv layer is "
        "traced step by step; pooling, add, concat, clamps and reshapes element by element)",
    )
    p.add_argument(
        "--index",
        default=None,
        metavar="I,J[,K,L]",
        help="with MODEL: the output element, row,col of a linear layer (leading axes flattened), "
        "n,o,i,j of a conv layer's NCHW output, the full index of another layer's output",
    )
    p.add_argument(
        "--input",
        default=None,
        metavar="X",
        help="with MODEL: the input (.npy, batch first; float values or codes); default: the file's "
        "test inputs, or seeded random codes for a graph",
    )
    p.add_argument(
        "--sample",
        type=_int_range(0),
        default=None,
        metavar="K",
        help="with MODEL: run sample K of the input alone (default: the whole --input; sample 0 of "
        "the file's test inputs)",
    )
    p.add_argument(
        "--accumulation",
        choices=ACCUMULATIONS,
        default="exact",
        help="arithmetic of the sum (default exact); int16_pairs, or fbgemm/mlas on a CPU "
        "path (fbgemm_avx2, ...), lists the int16 pair sums and marks the saturated ones",
    )
    p.add_argument("--seed", type=_int_range(0, 2**32 - 1), default=0, help="seed of the example (default 0)")
    p.add_argument(
        "--all-terms",
        action="store_true",
        help=f"list every term of the dot product (default: the first {_SHOWN_TERMS})",
    )
    t = p.add_argument_group("tie table (--ties)")
    t.add_argument("--ties", action="store_true", help="print the tie table instead of a trace")
    t.add_argument(
        "--multiplier",
        "-m",
        type=_positive_float,
        default=None,
        metavar="M",
        help="the real multiplier (default: the example layer's)",
    )
    t.add_argument("--zero-point", type=int, default=0, metavar="Z", help="output zero point (default 0)")
    t.add_argument("--dtype", choices=sorted(_CODE_RANGES), default="int8", help="output code range (default int8)")
    t.add_argument(
        "--range",
        type=_int_range(1, 1 << 25),
        default=1 << 16,
        metavar="R",
        help="accumulators in [-R, R] (default 65536)",
    )
    t.add_argument(
        "--limit",
        type=_int_range(0),
        default=20,
        metavar="N",
        help="rows to print (default 20; 0 prints only the summary)",
    )
    p.set_defaults(func=_run_explain)


def _run_explain_model(args) -> int:
    from ..explain import explain_layer
    from ._modelfile import load_model_file, random_input, read_input_file, select_sample, sniff_model_file

    if args.ties:
        _usage_error(args, "--ties prints the tie table of a multiplier, not a layer of MODEL")
    if args.layer is None or args.index is None:
        _usage_error(args, "with MODEL, --layer and --index name the layer and its output element")
    try:
        index = tuple(int(v) for v in args.index.split(","))
    except ValueError:
        _usage_error(args, f"--index must be comma-separated integers, got {args.index!r}")
    path, kind, arrays = sniff_model_file(args.model)
    if kind != "reference" and args.mode is not None:
        _usage_error(args, f"--mode quantizes a reference model; {args.model} is a {kind} file")
    mf = load_model_file(
        path,
        kind,
        arrays,
        mode=args.mode or ("tflite" if kind == "reference" else None),
        accumulation=args.accumulation,
    )
    if args.input is not None:
        x = read_input_file(args.input)
    elif mf.test_inputs is not None:
        x = mf.test_inputs if args.sample is not None else select_sample(mf.test_inputs, 0)
    else:
        x = random_input(mf, 0)
    if args.sample is not None:
        x = select_sample(x, args.sample)
    layer = args.layer
    if kind != "graph":
        layer = layer[len("layers[") : -1] if layer.startswith("layers[") and layer.endswith("]") else layer
    print(explain_layer(mf.model, x, layer, index).format(all_terms=args.all_terms))
    return 0


def _run_explain(args) -> int:
    from ..explain import builtin_example, explain_conv2d, explain_linear

    if args.model is not None:
        return _run_explain_model(args)
    for option in ("index", "input", "sample"):
        if getattr(args, option) is not None:
            _usage_error(args, f"--{option} needs a MODEL file (the built-in example has one element)")
    args.layer = "linear" if args.layer is None else args.layer
    if args.layer not in ("linear", "conv"):
        _usage_error(args, f"without MODEL, --layer is the built-in example, linear or conv; got {args.layer!r}")
    args.mode = "tflite" if args.mode is None else args.mode
    ex = builtin_example(args.layer, args.seed)
    if args.ties:
        if args.multiplier is None:
            e = (explain_linear if args.layer == "linear" else explain_conv2d)(mode="tflite", **ex)
            args.multiplier = e.multiplier  # the example element's M, as TFLite computes it
        return _print_ties(args)
    fn = explain_linear if args.layer == "linear" else explain_conv2d
    print(fn(mode=args.mode, accumulation=args.accumulation, **ex).format(all_terms=args.all_terms))
    return 0


def _print_ties(args) -> int:
    from fractions import Fraction

    from ..requant.fixedpoint import quantize_multiplier, saturating_rounding_doubling_high_mul
    from ..requant.modes import REQUANT_MODES, requantize_ties

    qmin, qmax = _CODE_RANGES[args.dtype]
    t = requantize_ties(args.multiplier, args.zero_point, qmin, qmax, acc_min=-args.range, acc_max=args.range)
    m0, shift = (int(v) for v in quantize_multiplier(args.multiplier))
    left, n = max(shift, 0), max(-shift, 0)
    out = [
        f"M = {args.multiplier!r}; tflite: m0 = {m0}, shift = {shift} "
        f"(M = m0 * 2^{shift - 31}); output {args.dtype} [{qmin}, {qmax}], zero point {args.zero_point}",
        f"{len(t['acc'])} of {2 * args.range + 1} accumulators in [-{args.range}, {args.range}] "
        "get a mode-dependent code",
    ]
    for i, a in enumerate(REQUANT_MODES):
        for b in REQUANT_MODES[i + 1 :]:
            out.append(f"  {a} vs {b}: {int((t[a] != t[b]).sum())} differ")
    if args.limit and len(t["acc"]):
        rows = []
        for k in range(min(args.limit, len(t["acc"]))):
            acc = int(t["acc"][k])
            exact = Fraction(acc) * Fraction(args.multiplier) + args.zero_point
            high = int(saturating_rounding_doubling_high_mul(acc << left, m0))  # tflite's first rounding
            rows.append(
                [
                    str(acc),
                    f"{float(exact):.6f}",
                    str(high),
                    f"{float(Fraction(high, 1 << n) + args.zero_point):.6f}",
                    *(str(int(t[m][k])) for m in REQUANT_MODES),
                ]
            )
        out += [
            "",
            f"double rounding: tflite first rounds acc*m0/2^{31 - left} to the integer high (ties up), then "
            f"high/2^{n} (ties away from zero); where high/2^{n} lands on a half (as -126.498 -> -126.5) "
            "the second rounding goes away from zero (-127) although acc*M + Z was no tie",
            format_table(["acc", "acc*M + Z", "high", f"high/2^{n} + Z", *REQUANT_MODES], rows),
        ]
        if len(t["acc"]) > args.limit:
            out.append(f"... {len(t['acc']) - args.limit} more (--limit)")
    print("\n".join(out))
    return 0


# --------------------------------------------------------------------------- compress

#: ``npquant compress --model`` choices (npquant.app.demo.MODELS, spelled out so that ``--help``
#: stays fast; a test checks them).
COMPRESS_MODELS = ("mlp", "lenet_300_100", "cnn")


def _float_list(lo: float, hi: float):
    def parse(text: str) -> list[float]:
        out = []
        for t in (t.strip() for t in text.split(",")):
            try:
                v = float(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{t!r} is not a number") from None
            if not lo <= v < hi:
                raise argparse.ArgumentTypeError(f"{v} is outside [{lo}, {hi})")
            out.append(v)
        return out

    return parse


def _add_compress(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="Deep Compression: prune, k-means quantize and Huffman-code a model into one file",
        description=(
            "Prune (magnitude), k-means quantize (weight sharing) and Huffman-code every weight "
            "matrix and conv kernel, write one compressed file, read it back, and print the "
            "per-layer report with the ratio from the actual file size. Without --input, the "
            "bundled reference LeNet-300-100 (64-300-100-10, trained in PyTorch on digits) is pruned "
            "with the paper's per-layer rates (92, 91, 74 %), with no retraining. "
            "With --retrain, the whole pipeline of the paper: prune and retrain, k-means, fine-tune "
            "the centroids, Huffman code, one file; it prints the per-stage table (ratio and test "
            "accuracy after pruning, quantization and Huffman coding, the last from the model rebuilt "
            "from the file). With --tables, the tables of the source material on the bundled models "
            "(see npquant.training.deep_compression)."
        ),
    )
    p.add_argument(
        "--input",
        metavar="FILE",
        help="the weights to compress: any model file npquant reads (a state dict as .npz or "
        ".safetensors, a reference model, a quantized checkpoint, a compressed file); "
        "with --retrain, a reference-format .npz (with its architecture) and --data",
    )
    p.add_argument(
        "--model",
        choices=COMPRESS_MODELS,
        metavar="NAME",
        help=f"a bundled model instead of --input: {', '.join(COMPRESS_MODELS)} (default: lenet_300_100)",
    )
    p.add_argument(
        "--output", "-o", metavar="FILE", help="where to write the compressed file (default: a temporary folder)"
    )
    p.add_argument(
        "--sparsity",
        type=_float_list(0.0, 1.0),
        metavar="S[,S...]",
        help="fraction of weights pruned: one value, or one per weight tensor in order "
        "(default: the paper's 0.92,0.91,0.74 for LeNet-300-100, each bundled model's "
        "own with --model (npquant.training.deep_compression.DEFAULTS), none for --input; "
        "--retrain --input needs it)",
    )
    p.add_argument("--quality", type=float, metavar="Q", help="prune |w| < Q * std(w) instead (the paper's rule)")
    p.add_argument("--fc-bits", type=_int_range(1, 8), default=None, help="k-means bits of fully connected layers (5)")
    p.add_argument(
        "--conv-bits",
        type=_int_range(1, 8),
        default=None,
        help="k-means bits of conv layers (8; the bundled CNN's default with --retrain is 5)",
    )
    p.add_argument("--fc-index-bits", type=_int_range(1, 8), default=5, help="relative index bits, fc (5)")
    p.add_argument("--conv-index-bits", type=_int_range(1, 8), default=8, help="relative index bits, conv (8)")
    p.add_argument("--seed", type=_int_range(0, 2**32 - 1), default=0, help="seed of training and k-means (0)")
    p.add_argument("--study", action="store_true", help="also print the 8/4/2-bit k-means study")
    p.add_argument("--models", metavar="DIR", help="reference models folder (default: the bundled models)")
    r = p.add_argument_group("the whole pipeline, with retraining (--retrain)")
    r.add_argument(
        "--retrain",
        action="store_true",
        help="prune and retrain, k-means, fine-tune the centroids, Huffman code (the paper's pipeline)",
    )
    r.add_argument(
        "--data",
        metavar="FILE",
        help="training data for --retrain --input: an .npz with x_train, y_train, x_test, y_test "
        "(the bundled models train on their digits split)",
    )
    r.add_argument(
        "--prune-steps", type=_int_range(1, 100), default=3, metavar="N", help="pruning steps to the sparsity (3)"
    )
    r.add_argument(
        "--prune-epochs",
        type=_int_range(0, 10000),
        default=20,
        metavar="N",
        help="retraining epochs after each pruning step (20)",
    )
    r.add_argument(
        "--finetune-epochs", type=_int_range(0, 10000), default=10, metavar="N", help="centroid fine-tuning epochs (10)"
    )
    r.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate of the retraining (1e-3)")
    r.add_argument(
        "--finetune-lr",
        type=_positive_float,
        default=1e-3,
        help="Adam learning rate of the centroid fine-tuning (1e-3)",
    )
    r.add_argument(
        "--bias-bits",
        type=_int_range(0, 8),
        default=None,
        metavar="B",
        help="biases share a B-bit codebook, fine-tuned with the weights (default 5 with --retrain); "
        "0 keeps them exact. Without --retrain: a B-bit k-means codebook (lossy; default exact)",
    )
    t = p.add_argument_group("the tables of the source material (--tables)")
    t.add_argument(
        "--tables",
        action="store_true",
        help="print the k-means / k-means QAT table (8, 4, 2 bits), the per-stage table of "
        "LeNet-300-100 and the CNN, and a sparsity x bits sweep (it retrains the models: minutes)",
    )
    t.add_argument(
        "--plots",
        metavar="DIR",
        help="with --tables: write the sweep's trade-off figure into DIR (created if missing; needs matplotlib)",
    )
    p.set_defaults(func=_run_compress)


def _check_output(path, option: str) -> str:
    """The output path, checked before any work: its folder exists and it is not a folder."""
    from .._fileio import destination

    destination(path, option)
    return path


def _run_compress(args) -> int:
    from ._compress import run_compress

    return run_compress(args)


# --------------------------------------------------------------------------- quantize


def _add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize the weight matrices and conv kernels of a model file into a bit-packed checkpoint",
        description=(
            "Quantize the weight tensors of a model file, the 2-D and 4-D float tensors of its "
            "state dict (weight matrices and conv kernels), with min-max qparams; write the "
            "bit-packed codes and their qparams to an .npz, and print a per-tensor table of size "
            "and SQNR. The other tensors of the state dict (biases, BatchNorm statistics) are "
            "copied unchanged. Of a reference model only the state dict is read: its test inputs, "
            "labels and logits are not weights and are left out. npquant.models.checkpoint.load_quantized "
            "reads the file back as dequantized weights."
        ),
    )
    p.set_defaults(_parser=p)
    p.add_argument(
        "input",
        help="the weights: any model file npquant reads (a state dict as .npz or "
        ".safetensors, a reference model, a quantized checkpoint, a compressed file)",
    )
    p.add_argument("--output", "-o", required=True, metavar="NPZ", help="where to write the quantized checkpoint")
    p.add_argument(
        "--bits", type=_int_range(1, 8), default=8, help="bits per weight, 1..8 (default 8; 1 needs --asymmetric)"
    )
    p.add_argument("--asymmetric", action="store_true", help="asymmetric (default: symmetric, signed)")
    p.add_argument(
        "--granularity",
        choices=("tensor", "channel", "group"),
        default="channel",
        help="per-tensor, per output channel (axis 0), or per group along axis 1 (default channel)",
    )
    p.add_argument("--group-size", type=_int_range(1), default=32, metavar="B", help="group size (default 32)")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args) -> int:
    from ..models.checkpoint import load_quantized, quantize_checkpoint, save_quantized
    from ..models.io import load_weights
    from ..qparams import QuantSpec

    if args.bits == 1 and not args.asymmetric:
        _usage_error(
            args,
            "--bits 1 needs --asymmetric: symmetric 1-bit codes [-1, 0] hold no positive value, and "
            "the symmetric scale 2 max|w| would round every weight to 0",
        )
    _check_output(args.output, "--output")
    state = load_weights(args.input)  # of a reference model: its state dict only
    axis = {"tensor": None, "channel": 0, "group": 1}[args.granularity]
    spec = QuantSpec(
        bits=args.bits,
        symmetric=not args.asymmetric,
        axis=axis,
        block_size=args.group_size if args.granularity == "group" else None,
    )
    arrays, reports = quantize_checkpoint(state, spec)
    if not reports:
        raise ValueError(f"{args.input} has no 2-D or 4-D float tensor to quantize")
    save_quantized(args.output, arrays)
    back = load_quantized(args.output)
    rows = [
        [
            r.name,
            "x".join(map(str, r.shape)),
            str(r.float_bytes),
            str(r.quantized_bytes),
            f"{r.float_bytes / r.quantized_bytes:.1f}x",
            _db(r.sqnr_db),
        ]
        for r in reports
    ]
    total_f = sum(r.float_bytes for r in reports)
    total_q = sum(r.quantized_bytes for r in reports)
    print(
        f"{args.bits}-bit {'asymmetric' if args.asymmetric else 'symmetric'} {args.granularity}"
        + (f" (group size {args.group_size})" if args.granularity == "group" else "")
        + f" -> {args.output}"
    )
    print(format_table(["tensor", "shape", "float32 B", "quantized B", "ratio", "SQNR dB"], rows))
    quantized = {r.name for r in reports}
    copied = [k for k in state if k not in quantized]
    if copied:
        more = f" and {len(copied) - 8} more" if len(copied) > 8 else ""
        print(f"copied unchanged: {', '.join(copied[:8])}{more}")
    print(
        f"weights: {total_f} -> {total_q} bytes ({total_f / total_q:.1f}x); file {os.path.getsize(args.output)} "
        f"bytes; {len(back)} tensors load back"
    )
    return 0


# -------------------------------------------------------------------------------- qat


def _bits_pairs(text: str) -> list[tuple[int, int]]:
    """``"W8A8,W4A4"`` -> ``[(8, 8), (4, 4)]``, each width 2..8."""
    import re

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        m = re.fullmatch(r"[Ww](\d+)[Aa](\d+)", item)
        if not m:
            raise argparse.ArgumentTypeError(f"{item!r} is not a bit setting such as W4A8")
        w, a = int(m.group(1)), int(m.group(2))
        if not (2 <= w <= 8 and 2 <= a <= 8):
            raise argparse.ArgumentTypeError(f"{item!r}: weight and activation bits must be in 2..8")
        out.append((w, a))
    if not out:
        raise argparse.ArgumentTypeError(f"expected bit settings such as W8A8,W4A4, got {text!r}")
    return out


#: ``npquant qat --methods`` choices: "ptq" and :data:`npquant.training.qat_results.RANGES_SHOWN`
#: (spelled out so that ``--help`` does not import the training package; a test checks them).
QAT_METHODS = ("ptq", "minmax", "lsq", "pact")


def _add_qat(sub) -> None:
    from .demo import MODELS

    p = sub.add_parser(
        "qat",
        help="float vs post-training quantization vs quantization-aware training of the reference models",
        description=(
            "For each reference model and bit setting (W8A8, W4A8, W4A4, and W2A8 for the MLPs), "
            "train with quantization in the loop (min-max EMA, LSQ and PACT ranges) in NumPy, "
            "convert to the integer-only model, and tabulate its test accuracy next to float and "
            "post-training quantization (min-max calibration). Seeded; computed on the spot "
            "(it trains every model at every setting: minutes). See npquant.training.qat_results for the recipe."
        ),
    )
    p.add_argument("--models", metavar="DIR", help="reference models folder (default: the bundled models)")
    p.add_argument(
        "--model",
        action="append",
        choices=MODELS,
        metavar="NAME",
        dest="names",
        help=f"a reference model ({', '.join(MODELS)}); repeat for several (default: all)",
    )
    p.add_argument(
        "--bits",
        type=_bits_pairs,
        metavar="LIST",
        help="comma-separated settings such as W8A8,W4A4 (default: each model's settings)",
    )
    p.add_argument(
        "--methods",
        type=_choice_list(QAT_METHODS),
        default=list(QAT_METHODS),
        metavar="LIST",
        help=f"comma-separated, of {','.join(QAT_METHODS)} (default: all)",
    )
    p.add_argument(
        "--seed", type=_int_range(0, 2**32 - 1), default=0, help="seed of the training shuffles (default: 0)"
    )
    p.add_argument(
        "--mode",
        choices=REQUANT_MODES,
        default="tflite",
        help="requantization mode of the integer models (default: tflite)",
    )
    p.set_defaults(func=_run_qat)


def _run_qat(args) -> int:
    from ..training.qat_results import format_results, results
    from .demo import MODELS, check_models_dir, default_models_dir

    names = tuple(dict.fromkeys(args.names)) if args.names else MODELS
    models_dir = check_models_dir(default_models_dir() if args.models is None else args.models, names)
    t0 = time.perf_counter()
    rows = results(
        names,
        bits=args.bits,
        methods=tuple(args.methods),
        seed=args.seed,
        mode=args.mode,
        models_dir=models_dir,
        progress=_progress,
    )
    print(
        "npquant qat: float vs PTQ vs QAT, integer-only models of the reference models (digits, 450 test "
        "images)\nW<w>A<a>: signed symmetric per-channel w-bit weights, unsigned per-tensor a-bit "
        "activations; input and logits 8-bit.\nint = QAT: test images where the integer model predicts what "
        f"the fake-quantized model predicts. Requantization mode {args.mode}, seed {args.seed}.\n"
    )
    print(format_results(rows))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


# ------------------------------------------------------------------------- vectors, run

_MODEL_HELP = (
    "any model file npquant runs: a PyTorch PTQ reference (npquant/data/*_ptq.npz), a graph file "
    "(npquant.models.graph.save_graph), or a reference model (npquant/data/<name>.npz)"
)


def _add_vectors(sub) -> None:
    p = sub.add_parser(
        "vectors",
        help="golden test vectors of an integer model for hardware testbenches ($readmemh hex files, a C "
        "header, an .npz and a manifest)",
        description=(
            "Run an integer model once and write, for every layer in execution order, its input codes, "
            "weight codes, bias, weight zero points, requantization multipliers (m0 and shift; the float32 "
            "multiplier too in the fp32 and onnx modes), int32 accumulators and output codes: one hex file "
            "per tensor that Verilog's $readmemh reads, one C99 header vectors.h, one vectors.npz and a "
            "manifest.json describing dtypes, shapes, layouts, requantization and accumulation "
            "(npquant.vectors). A PyTorch PTQ reference runs as PyTorch computes it; a reference model is "
            "quantized first with quantize_model (--mode, per-channel int8 weights, uint8 activations, "
            "min-max ranges on the 269 calibration images of digits_split.npz); a graph file must be an "
            "integer graph. The input: --input, or seeded random integer codes (--seed, or --shape), or else "
            "sample --index of the file's test inputs (a graph file has none: random codes with seed 0)."
        ),
    )
    p.set_defaults(func=_run_vectors, _parser=p)
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="the folder to write: new or empty (its parent must exist)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--input",
        metavar="X",
        help="input file, batch first: .npy, or .npz with one array per graph "
        "input; float values (quantized with the model's input qparams) "
        "or integer codes",
    )
    src.add_argument(
        "--seed",
        type=_int_range(0, 2**32 - 1),
        default=None,
        help="a seeded random input: uniform integer codes of the model's input qparams",
    )
    p.add_argument(
        "--index",
        type=_int_range(0),
        default=None,
        metavar="K",
        help="sample K only, of --input or of the file's test inputs (default: the whole --input, or test sample 0)",
    )
    p.add_argument(
        "--shape",
        type=_int_list(1, 1 << 16),
        default=None,
        metavar="N,C,H,W",
        help="a random input of this shape, batch first (seed: --seed, default 0); the default shape "
        "of a --seed input is one sample shaped as the file's test inputs, or for a graph one "
        "sample of its first linear layer",
    )
    p.add_argument(
        "--mode",
        choices=REQUANT_MODES,
        default=None,
        help="requantization mode of a reference model, which is quantized first (default tflite)",
    )
    p.add_argument(
        "--accumulation",
        choices=ACCUMULATIONS,
        default=None,
        help="accumulation of a reference model's or a PTQ reference's integer layers (default exact)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it holds a previous vector set and nothing else"
    )


def _model_options(args, kind: str) -> None:
    """Usage errors (exit status 2) for options that do not apply to a model file of ``kind``."""
    from ._modelfile import KIND_NAMES

    if args.mode is not None and kind != "reference":
        _usage_error(args, f"--mode quantizes a reference model; {args.model} is {KIND_NAMES[kind]}")
    if args.accumulation is not None and kind == "graph":
        _usage_error(
            args,
            f"--accumulation does not apply to a graph file: each node names its own "
            f"({args.model} is {KIND_NAMES[kind]})",
        )


def _run_vectors(args) -> int:
    from ..vectors import _out_dir, write_vectors
    from ._modelfile import load_model_file, random_input, read_input_file, select_sample, sniff_model_file

    if args.index is not None and (args.seed is not None or args.shape is not None):
        _usage_error(
            args, "--index selects a sample of --input or of the test inputs; a --seed or --shape input is random"
        )
    if args.shape is not None and args.input is not None:
        _usage_error(args, "--shape is the shape of a random input; --input has its own")
    path, kind, arrays = sniff_model_file(args.model)
    _model_options(args, kind)
    _out_dir(args.output, args.overwrite, "manifest.json", "npquant-vectors", "--output", "--overwrite")
    mf = load_model_file(
        path,
        kind,
        arrays,
        mode=args.mode or ("tflite" if kind == "reference" else None),
        accumulation=args.accumulation,
    )
    if kind == "graph" and mf.model.kind != "integer":
        raise ValueError(
            f"{args.model}: a {mf.model.kind} graph; golden vectors are of integer graphs (integer ops "
            "between quantize and dequantize nodes)"
        )
    if args.index is not None and args.input is None and mf.test_inputs is None:
        _usage_error(args, f"--index selects a sample of --input or of the file's test inputs; {args.model} has none")
    if args.input is not None:
        x = read_input_file(args.input)
        x = x if args.index is None else select_sample(x, args.index)
        where = f"{args.input}" + ("" if args.index is None else f", sample {args.index}")
    elif args.seed is not None or mf.test_inputs is None or args.shape is not None:
        seed = 0 if args.seed is None else args.seed
        x = random_input(mf, seed, args.shape)
        where = f"random codes, seed {seed}"
    else:
        index = args.index or 0
        x = select_sample(mf.test_inputs, index)
        where = f"test sample {index} of {args.model}"
    manifest = write_vectors(mf.model, x, args.output, overwrite=args.overwrite)
    rows = []
    for layer in manifest["layers"]:
        t = layer["tensors"]
        ins = [v for k, v in t.items() if k.startswith("input")]
        req = layer.get("requantization", {})
        rows.append(
            [
                str(layer["index"]),
                layer["name"],
                layer["op"],
                req.get("mode", "-") + (f" ({req['uses']})" if "uses" in req else ""),
                " + ".join("x".join(map(str, v["shape"])) + " " + v["dtype"] for v in ins),
                "x".join(map(str, t["output"]["shape"])) + " " + t["output"]["dtype"],
            ]
        )
    print(f"{args.model}: {mf.description}")
    print(f"input: {where}")
    print(format_table(["#", "layer", "op", "requantization", "input", "output"], rows))
    n_hex = sum(len(layer["tensors"]) for layer in manifest["layers"])
    print(f"wrote {n_hex} .hex files, vectors.h, vectors.npz and manifest.json to {args.output}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a model file on inputs: the top classes, the outputs, every intermediate tensor",
        description=(
            "Run a model file on the samples of --input and print, per sample, the top-K classes with their "
            "scores (the output itself for a float model; the dequantized output codes for an integer "
            "model). A reference model runs in float, or quantized first with --mode (as npquant vectors "
            "does); a PyTorch PTQ reference runs as PyTorch computes it; a graph file runs as it is. "
            "--output writes the outputs as the model returns them (float32 of a float model, integer codes "
            "of an integer model); --dump writes every intermediate tensor as .npy with an index, "
            "tensors.json (a graph: every tensor; an integer model: the input, its codes and each layer's "
            "output; a float model: the input and each layer's output)."
        ),
    )
    p.set_defaults(func=_run_run, _parser=p)
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument(
        "--input",
        required=True,
        metavar="X",
        help="input file, batch first: .npy, or .npz with one array per graph input; float values, "
        "or integer codes of an integer model's input qparams",
    )
    p.add_argument(
        "--top",
        type=_int_range(0),
        default=5,
        metavar="K",
        help="classes to print per sample (default 5; 0 prints none)",
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the outputs: .npy (a model with one output) or .npz (every output by name)",
    )
    p.add_argument("--dump", metavar="DIR", help="write every intermediate tensor as .npy into DIR (new or empty)")
    p.add_argument(
        "--overwrite", action="store_true", help="with --dump: replace DIR if it holds a previous dump and nothing else"
    )
    p.add_argument(
        "--mode",
        choices=REQUANT_MODES,
        default=None,
        help="quantize a reference model first with this requantization mode (default: run it in float)",
    )
    p.add_argument(
        "--accumulation",
        choices=ACCUMULATIONS,
        default=None,
        help="accumulation of an integer model's layers (with --mode, or of a PTQ reference; default exact)",
    )


def _run_run(args) -> int:
    import io

    import numpy as np

    from .._fileio import atomic_write
    from ..affine import dequantize
    from ..vectors import _out_dir, write_intermediates
    from ._modelfile import load_model_file, read_input_file, run_outputs, sniff_model_file

    if args.overwrite and args.dump is None:
        _usage_error(args, "--overwrite applies to --dump")
    path, kind, arrays = sniff_model_file(args.model)
    _model_options(args, kind)
    if args.accumulation is not None and kind == "reference" and args.mode is None:
        _usage_error(args, "--accumulation applies to integer layers: add --mode to quantize the reference model")
    if args.output is not None:
        if not args.output.endswith((".npy", ".npz")):
            _usage_error(args, f"--output must end in .npy or .npz, got {args.output!r}")
        _check_output(args.output, "--output")
    if args.dump is not None:
        _out_dir(args.dump, args.overwrite, "tensors.json", "npquant-tensors", "--dump", "--overwrite")
    mf = load_model_file(path, kind, arrays, mode=args.mode, accumulation=args.accumulation)
    x = read_input_file(args.input)
    outputs = run_outputs(mf, x)
    print(f"{args.model}: {mf.description}")
    for name, y, qp in outputs:
        scores = np.asarray(y if qp is None else dequantize(y, qp), np.float64)
        rows2 = scores.reshape(scores.shape[0], -1) if scores.ndim >= 2 else scores.reshape(1, -1)
        what = (
            f"{y.dtype} values"
            if qp is None
            else f"{y.dtype} codes, scores S (code - Z) with S={float(qp.scale):.6g}, Z={int(qp.zero_point)}"
        )
        print(f"output {name!r}: shape {tuple(y.shape)}, {what}")
        k = min(args.top, rows2.shape[1])
        if k:
            top = np.argsort(-rows2, axis=1, kind="stable")[:, :k]
            table = [[str(i)] + [f"{c} ({rows2[i, c]:.4g})" for c in top[i]] for i in range(rows2.shape[0])]
            print(format_table(["sample"] + [f"top-{j + 1}" for j in range(k)], table))
    if args.output is not None:
        if args.output.endswith(".npy"):
            if len(outputs) != 1:
                raise ValueError(f"the model has {len(outputs)} outputs: write them to an .npz")
            buf = io.BytesIO()
            np.save(buf, outputs[0][1], allow_pickle=False)
        else:
            buf = io.BytesIO()
            np.savez(buf, **{name: y for name, y, _ in outputs})
        atomic_write(args.output, lambda f: f.write(buf.getvalue()), "--output")
        print(f"wrote the outputs to {args.output}")
    if args.dump is not None:
        index = write_intermediates(mf.model, x, args.dump, overwrite=args.overwrite)
        print(f"wrote {len(index['tensors'])} tensors to {args.dump} (index: tensors.json)")
    return 0


# ------------------------------------------------------------------------------- main

#: Registrars of the subcommands, in the order ``--help`` lists them.
COMMANDS = [_add_demo, _add_quantize, _add_explain, _add_compress, _add_qat, _add_vectors, _add_run]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``npquant`` with every subcommand of :data:`COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        A new parser with ``--version`` and a required subcommand, registered in the
        order of :data:`COMMANDS`.
    """
    parser = argparse.ArgumentParser(
        prog="npquant",
        description="npquant: a framework-free reference implementation of neural-network "
        "quantization in NumPy, with numba kernels.",
    )
    parser.add_argument("--version", action="version", version=f"npquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``npquant`` console script; returns the exit status.

    Parameters
    ----------
    argv : list of str or None, default None
        The arguments after the program name; None parses ``sys.argv[1:]`` (argparse's
        default).

    Returns
    -------
    int
        The exit status (module docstring): the command's status, 0 on success; 1 when a
        command fails on valid arguments (``ValueError``, ``TypeError``, ``OSError``) or
        its output pipe is closed; 3 for an internal error; 130 when interrupted. Bad
        arguments, ``--help`` and ``--version`` exit through argparse's ``SystemExit``
        (status 2 for bad arguments) instead of returning.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `npquant demo | head`
        sys.stdout = open(os.devnull, "w")
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"npquant {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"npquant {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: show it, ask for a report
        import traceback

        traceback.print_exc()
        print(
            f"npquant {args.command}: internal error (a bug in npquant {__version__}): please report it "
            "with the command line and the traceback above",
            file=sys.stderr,
        )
        return 3


def _one_line(exc: BaseException) -> str:
    """The message of a user error on one line; an ``OSError`` of the system as
    ``'<file>': <reason>``."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        msg = f"{exc.filename!r}: {exc.strerror.lower()}"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
