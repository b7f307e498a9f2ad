"""The application of ``npquant compress``: Deep Compression (prune, k-means quantize,
Huffman code) of a model file or a bundled reference model into one file, with or without
the retraining of the paper (``--retrain``), and the tables of the source material
(``--tables``).

Application code of the command line: :mod:`npquant.app.cli` declares the options and calls
:func:`run_compress` with the parsed arguments; the library functions it runs are those of
:mod:`npquant.compression.pipeline` and :mod:`npquant.training.deep_compression`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .._fileio import destination
from .._table import format_table

# Deep Compression, Table 1 / 2 (Han et al. 2016): LeNet-300-100 keeps 8 %, 9 % and 26 %
# of the weights of its three layers, and compresses 40x (error 1.58 % on MNIST, after
# retraining: npquant compress --retrain).
PAPER_LENET_SPARSITY = (0.92, 0.91, 0.74)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_compress(args: argparse.Namespace) -> int:
    """Run ``npquant compress`` on its parsed arguments; print the report, return the exit status."""
    import tempfile

    import numpy as np

    from ..compression.pipeline import (
        LayerConfig,
        compress,
        format_report,
        kmeans_study,
        read_compressed,
        write_compressed,
    )

    _check_compress_options(args)
    if args.tables:
        return _run_compress_tables(args)
    if args.output is not None:
        destination(args.output, "--output")
    if args.retrain:
        return _run_compress_retrain(args)
    evaluate = None
    if args.input:
        from ..models.io import load_weights

        state = {k: v for k, v in load_weights(args.input).items() if np.asarray(v).dtype.kind == "f"}
        if not state:
            raise ValueError(f"{args.input} holds no float tensor to compress")
        sparsity = args.sparsity or [0.0]
    else:
        from ..models.nn import build_model

        name = args.model or "lenet_300_100"
        path, ref = _bundled_reference(args, name)
        state = {k: v for k, v in ref.state.items() if np.asarray(v).dtype.kind == "f"}  # not num_batches_tracked
        X_te, y_te = ref.arrays["test_inputs"], ref.arrays["test_labels"]
        _progress(f"compressing the reference {name} ({path}) ...")
        sparsity = args.sparsity or _default_sparsity(name)
        evaluate = lambda w: float(np.mean(build_model(ref.arch, w)(X_te).argmax(1) == y_te))  # noqa: E731
    weights = [k for k, v in state.items() if np.ndim(v) in (2, 4)]
    if len(sparsity) not in (1, len(weights)):
        raise ValueError(f"--sparsity needs 1 or {len(weights)} values (one per weight tensor), got {len(sparsity)}")
    configs = {}
    for i, name in enumerate(weights):
        conv = np.ndim(state[name]) == 4
        s = None if args.quality is not None else sparsity[i if len(sparsity) > 1 else 0]
        configs[name] = LayerConfig(
            sparsity=s,
            quality=args.quality,
            bits=(args.conv_bits or 8) if conv else (args.fc_bits or 5),
            index_bits=args.conv_index_bits if conv else args.fc_index_bits,
        )
    _progress(f"compressing {len(weights)} weight tensors ...")
    comp = compress(state, configs, seed=args.seed, bias_bits=args.bias_bits or None)
    out = args.output or os.path.join(tempfile.mkdtemp(prefix="npquant-"), "model.npqz")
    size = write_compressed(comp, out)
    back = read_compressed(out)
    same = all(np.array_equal(back[k], comp.rebuilt[k]) for k in comp.rebuilt)
    lines = [
        f"wrote {out} ({size} bytes); read back: weights identical to the pruned, quantized ones: "
        f"{'yes' if same else 'NO'}",
        "",
        format_report(comp, size),
    ]
    if evaluate is not None:
        acc_f, acc_q, acc_f2 = evaluate(state), evaluate(comp.rebuilt), evaluate(back)
        lines += [
            "",
            f"test accuracy ({len(y_te)} digits): float {100 * acc_f:.2f} %; pruned + quantized "
            f"{100 * acc_q:.2f} %; rebuilt from the file {100 * acc_f2:.2f} %",
            "Deep Compression (Han et al. 2016) reports 40x for LeNet-300-100 on MNIST at 1.58 % error, "
            "after retraining; without retraining accuracy drops at these rates (npquant compress "
            "--retrain retrains).",
        ]
        if args.study:
            rows = kmeans_study(state, evaluate, seed=args.seed)
            lines += [
                "",
                "k-means weight sharing (no pruning), all weight tensors:",
                format_table(
                    ["bits", "size B", "ratio", "test accuracy"],
                    [
                        [
                            "float32",
                            str(sum(4 * np.asarray(v).size for v in state.values())),
                            "1.0x",
                            f"{100 * acc_f:.2f} %",
                        ]
                    ]
                    + [
                        [str(r["bits"]), str(r["bytes"]), f"{r['ratio']:.1f}x", f"{100 * r['score']:.2f} %"]
                        for r in rows
                    ],
                ),
            ]
    if not same:
        lines.append("ERROR: the file does not rebuild the compressed weights")
    print("\n".join(lines))
    return 0 if same else 1


#: Options of ``npquant compress`` that only ``--retrain`` takes: ``(dest, flag)``.
_RETRAIN_ONLY = (
    ("data", "--data"),
    ("prune_steps", "--prune-steps"),
    ("prune_epochs", "--prune-epochs"),
    ("finetune_epochs", "--finetune-epochs"),
    ("lr", "--lr"),
    ("finetune_lr", "--finetune-lr"),
)


def _check_compress_options(args) -> None:
    """Refuse combinations of ``npquant compress`` options that do not go together."""
    defaults = {
        "prune_steps": 3,
        "prune_epochs": 20,
        "finetune_epochs": 10,
        "lr": 1e-3,
        "finetune_lr": 1e-3,
        "data": None,
    }
    if args.sparsity is not None and args.quality is not None:
        raise ValueError("give --sparsity or --quality, not both")
    if args.input and args.model:
        raise ValueError("give --input or --model, not both")
    if args.plots is not None and not args.tables:
        raise ValueError("--plots goes with --tables")
    if args.tables:
        given = [
            flag
            for dest, flag in (
                ("input", "--input"),
                ("model", "--model"),
                ("output", "--output"),
                ("sparsity", "--sparsity"),
                ("quality", "--quality"),
                ("fc_bits", "--fc-bits"),
                ("conv_bits", "--conv-bits"),
                ("bias_bits", "--bias-bits"),
            )
            if getattr(args, dest) is not None
        ]
        given += [flag for flag, on in (("--retrain", args.retrain), ("--study", args.study)) if on]
        given += [flag for dest, flag in _RETRAIN_ONLY if getattr(args, dest) != defaults[dest]]
        if given:
            raise ValueError(f"--tables takes only --seed, --models and --plots, not {', '.join(given)}")
    elif args.retrain:
        if args.quality is not None:
            raise ValueError("--quality does not go with --retrain: give --sparsity")
        if args.study:
            raise ValueError("--study does not go with --retrain (--tables prints the k-means table)")
    else:
        given = [flag for dest, flag in _RETRAIN_ONLY if getattr(args, dest) != defaults[dest]]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --retrain")


def _bundled_reference(args, name: str):
    """``(path, Reference)`` of bundled model ``name`` in ``--models`` (default: the package's)."""
    from ..models.io import load_reference
    from .demo import default_models_dir

    folder = default_models_dir() if args.models is None else args.models
    path = os.path.join(folder, f"{name}.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the reference model {path!r} does not exist" + ("" if args.models is None else " (check --models)")
        )
    return path, load_reference(path)


def _default_sparsity(name: str) -> list:
    """The per-layer sparsity of bundled model ``name``, in weight order."""
    if name == "lenet_300_100":
        return list(PAPER_LENET_SPARSITY)
    from ..training.deep_compression import DEFAULTS

    return list(DEFAULTS[name]["sparsity"].values())


def _training_data(path, arch: dict) -> dict:
    """``--data``: an .npz with float x_train, x_test ``(N, *input_shape)`` and integer
    y_train, y_test ``(N,)``, checked against the architecture's input shape."""
    from ..models.io import load_state_dict

    arrays = load_state_dict(path, format="npz")
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"--data {path}: missing {', '.join(missing)} (it needs x_train, y_train, x_test, y_test)")
    shape = tuple(arch.get("input_shape", ()))
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype.kind != "f" or x.ndim < 2 or len(x) == 0 or (shape and tuple(x.shape[1:]) != shape):
            raise ValueError(
                f"--data {path}: x_{part} must be float (N, {', '.join(map(str, shape)) or '...'}) "
                f"with N >= 1 for this model, got {x.dtype} {x.shape}"
            )
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise ValueError(
                f"--data {path}: y_{part} must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}"
            )
        classes = arch.get("num_classes")
        if classes is not None and y.size and not (0 <= int(y.min()) and int(y.max()) < classes):
            raise ValueError(
                f"--data {path}: y_{part} must lie in [0, {classes - 1}], got [{int(y.min())}, {int(y.max())}]"
            )
    return arrays


def _retrain_model(args):
    """``(label, model, data, sparsity, bits)`` for ``--retrain``: the model built from copies
    of the reference weights, its training and test data, and the pipeline's settings."""
    from pathlib import Path

    import numpy as np

    from ..models.nn import build_model
    from ..training.pruning import weight_names

    if args.input:
        from .._fileio import parse_npz, read_bytes
        from ..models.io import load_reference, sniff_format

        raw = read_bytes(args.input, "--input")
        if sniff_format(raw) != "npz" or "__arch__" not in parse_npz(raw, args.input):
            raise ValueError(
                f"--retrain needs an architecture and training data: {args.input} has no '__arch__' "
                "(a plain state dict or another file); give a reference-format .npz (with '__arch__') "
                "and --data, or a bundled --model"
            )
        if args.data is None:
            raise ValueError("--retrain --input needs --data FILE.npz (x_train, y_train, x_test, y_test)")
        if args.sparsity is None:
            raise ValueError("--retrain --input needs --sparsity (one value, or one per weight tensor)")
        ref = load_reference(args.input)
        data = _training_data(args.data, ref.arch)
        label, defaults = args.input, {"sparsity": None, "bits": {}}
    else:
        if args.data is not None:
            raise ValueError("--data goes with --retrain --input (a bundled model trains on its digits split)")
        from ..training.deep_compression import DEFAULTS
        from ..training.trainer import digits_data

        label = args.model or "lenet_300_100"
        path, ref = _bundled_reference(args, label)
        data = digits_data(ref.arch, Path(path).parent)
        defaults = DEFAULTS[label]
    model = build_model(ref.arch, {k: np.array(v, copy=True) for k, v in ref.state.items()})
    names = weight_names(model)
    params = model.named_parameters()
    if args.sparsity is None:
        sparsity = defaults["sparsity"]
    elif len(args.sparsity) == 1:
        sparsity = args.sparsity[0]
    elif len(args.sparsity) == len(names):
        sparsity = dict(zip(names, args.sparsity))
    else:
        raise ValueError(f"--sparsity needs 1 or {len(names)} values (one per weight tensor), got {len(args.sparsity)}")
    bits = dict(defaults["bits"])
    for n in names:
        given = args.conv_bits if params[n].ndim == 4 else args.fc_bits
        if given is not None:
            bits[n] = given
    return label, model, data, sparsity, bits


def _run_compress_retrain(args) -> int:
    """``npquant compress --retrain``: the whole pipeline, the per-stage table on stdout."""
    import tempfile

    from ..compression.pipeline import format_report
    from ..training.deep_compression import deep_compression

    label, model, data, sparsity, bits = _retrain_model(args)
    out = args.output or os.path.join(tempfile.mkdtemp(prefix="npquant-"), "model.npqz")
    t0 = time.perf_counter()
    _progress(f"Deep Compression of {label}, with retraining ...")
    r = deep_compression(
        model,
        data["x_train"],
        data["y_train"],
        data["x_test"],
        data["y_test"],
        sparsity=sparsity,
        bits=bits or None,
        bias_bits=5 if args.bias_bits is None else (args.bias_bits or None),
        prune_steps=args.prune_steps,
        prune_epochs=args.prune_epochs,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        seed=args.seed,
        path=out,
        progress=True,
    )
    dt = time.perf_counter() - t0
    a = r.accuracy
    print(
        "\n".join(
            [
                f"wrote {out} ({len(r.data)} bytes); read back: every tensor identical to the model in memory: yes",
                "",
                f"Deep Compression of {label} ({len(data['y_test'])} test images; seed {args.seed}; "
                f"{args.prune_steps} pruning steps x {args.prune_epochs} epochs, {args.finetune_epochs} fine-tuning epochs)",
                r.table(),
                "",
                format_report(r.compressed, len(r.data)),
                "",
                f"test accuracy: float {100 * a['float']:.2f} %; the model rebuilt from the file {100 * a['file']:.2f} % "
                f"({100 * (a['file'] - a['float']):+.2f} points); the file is {r.ratio:.1f}x smaller than float32",
                f"Deep Compression (Han et al. 2016): 40x for LeNet-300-100 on MNIST at 1.58 % error. ({dt:.1f} s)",
            ]
        )
    )
    return 0


def _run_compress_tables(args) -> int:
    """``npquant compress --tables``: the three tables of the source material."""
    from pathlib import Path

    from ..training.deep_compression import tables
    from .demo import check_models_dir, default_models_dir

    models_dir = check_models_dir(default_models_dir() if args.models is None else args.models)
    print(tables(seed=args.seed, models_dir=Path(models_dir), plots=args.plots, progress=True))
    return 0
