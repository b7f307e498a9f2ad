"""The ``npquant`` command and the benchmark runner (smoke tests; never timing assertions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npquant
from npquant.app.cli import format_table, main
from npquant.requant.fixedpoint import saturating_rounding_doubling_high_mul

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(
    r"^\s*(?P<bits>\d+)\s+(?P<scheme>symmetric|asymmetric)\s+"
    r"(?P<gran>per-tensor|per-channel|per-group\(\d+\))\s+(?P<rest>.+)$"
)


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "npquant", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def parse_demo(stdout: str):
    """``(float accuracy, {layer: {config: (mse, sqnr, max_abs)}}, {config: accuracy})``."""
    m = re.search(r"float test accuracy: ([\d.]+) %", stdout)
    assert m, stdout
    layers, acc, current = {}, {}, None
    for line in stdout.splitlines():
        if re.match(r"^W\d+: ", line):
            current = line.split(":")[0]
            layers[current] = {}
        elif line.startswith("test accuracy with all"):
            current = "acc"
        r = ROW.match(line)
        if r and current:
            key = (int(r["bits"]), r["scheme"], r["gran"])
            cells = r["rest"].split()
            if current == "acc":
                acc[key] = float(cells[0])
            else:
                layers[current][key] = tuple(float(c) for c in cells)
    return float(m.group(1)), layers, acc


@pytest.fixture(scope="module")
def quick_demo():
    return run_cli("demo", "--weights", "--quick")


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"npquant {npquant.__version__}"


def test_help_lists_commands():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    assert "demo" in res.stdout and "--version" in res.stdout
    res = run_cli("demo", "--help")
    assert res.returncode == 0 and "--group-size" in res.stdout


def test_help_texts_match_what_the_options_do():
    import npquant.app.cli as cli

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    demo = subs.choices["demo"].format_help()
    text = " ".join(demo.split())
    # the model table is the main job; --weights is its own job with its own options
    assert text.index("The model table (the main job)") < text.index("With --weights, another job")
    assert "the model table (the default job): --models DIR" in text
    assert "--quick the model table: the MLP only; with --weights: train 30 epochs only" in text
    assert "the weight-error job (--weights; its options need --weights): --weights" in text
    assert "%%" not in demo and "25% test" in text
    assert "%%" not in subs.choices["compress"].format_help()
    assert "(92, 91, 74 %)" in " ".join(subs.choices["compress"].format_help().split())
    quantize = " ".join(subs.choices["quantize"].format_help().split())
    assert "test inputs, labels and logits are not weights and are left out" in quantize
    assert "1 needs --asymmetric" in quantize
    explain = " ".join(subs.choices["explain"].format_help().split())
    assert "--all-terms list every term of the dot product (default: the first 8)" in explain
    from npquant.explain import SHOWN_TERMS

    assert cli._SHOWN_TERMS == SHOWN_TERMS


@pytest.mark.parametrize(
    "argv, named",
    [
        (["demo", "--seed", "3"], "--seed is an option"),
        (["demo", "--bits", "8,4,2"], "--bits is an option"),  # the default value, given: still the other job
        (["demo", "--quick", "--hidden", "16", "--rounding", "floor"], "--hidden, --rounding are options"),
        (["demo", "--group-size", "8"], "--group-size is an option"),
        (["demo", "--max-iter", "5"], "--max-iter is an option"),
    ],
)
def test_weight_job_options_need_weights(capsys, argv, named):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "of the --weights job" in err and "add --weights" in err


def test_models_is_not_an_option_of_the_weight_job(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--weights", "--models", "somewhere"])
    assert exc.value.code == 2
    assert "--models is an option of the model table" in capsys.readouterr().err


def test_console_script_if_installed():
    exe = Path(sys.executable).parent / ("npquant.exe" if os.name == "nt" else "npquant")
    if not exe.exists():
        pytest.skip("the npquant console script is not installed next to this interpreter")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and npquant.__version__ in res.stdout


def test_demo_prints_every_configuration(quick_demo):
    assert quick_demo.returncode == 0, quick_demo.stderr
    float_acc, layers, acc = parse_demo(quick_demo.stdout)
    assert 50 < float_acc <= 100
    expected = {
        (b, s, g)
        for b in (8, 4, 2)
        for s in ("symmetric", "asymmetric")
        for g in ("per-tensor", "per-channel", "per-group(16)")
    }
    assert list(layers) == ["W1", "W2", "W3"]
    for name, table in layers.items():
        assert set(table) == expected, name
        for (bits, scheme, gran), (mse, sqnr, max_abs) in table.items():
            assert mse >= 0 and max_abs >= 0
            if bits < 8:  # more bits, less error: a property of min-max quantization
                assert table[(bits * 2, scheme, gran)][1] > sqnr
    assert set(acc) == expected
    assert all(0 <= a <= 100 for a in acc.values())
    # the weights are reported in PyTorch's (out, in) layout
    assert "shape (64, 64) (out, in) = coefs_[0].T" in quick_demo.stdout
    assert "shape (10, 32) (out, in) = coefs_[2].T" in quick_demo.stdout
    # progress goes to stderr, not into the table
    assert "training MLP" in quick_demo.stderr and "training MLP" not in quick_demo.stdout


def test_demo_options_in_process(capsys):
    assert main(["demo", "--weights", "--quick", "--bits", "4", "--group-size", "8", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    _, layers, acc = parse_demo(out)
    assert list(layers) == ["W1", "W2"]
    assert {k[0] for k in acc} == {4}
    assert {k[2] for k in acc} == {"per-tensor", "per-channel", "per-group(8)"}


def test_demo_is_deterministic(capsys, quick_demo):
    assert main(["demo", "--weights", "--quick"]) == 0
    assert capsys.readouterr().out == quick_demo.stdout


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--bits", "3x"], "--bits"),
        (["demo", "--bits", "1"], "--bits"),
        (["demo", "--bits", ""], "--bits"),
        (["demo", "--group-size", "0"], "--group-size"),
        (["demo", "--rounding", "nearest"], "--rounding"),
        (["demo", "--no-such-option"], "unrecognized"),
        (["no-such-command"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_message(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_argument_exit_status_in_subprocess():
    res = run_cli("demo", "--group-size", "-3")
    assert res.returncode == 2
    assert "--group-size" in res.stderr and res.stdout == ""


def test_format_table_aligns_columns():
    text = format_table(["a", "bb"], [["x", "1.5"], ["yyy", "10.25"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].endswith("  1.5") and lines[3].startswith("yyy")


def test_ties_lists_disagreements(capsys):
    from npquant.requant.modes import REQUANT_MODES, requantize

    assert main(["explain", "--ties", "-m", "0.25", "--range", "8", "--limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "m0 = 1073741824, shift = -1" in out
    assert "5 of 17 accumulators" in out
    rows = [ln.split() for ln in out.splitlines() if re.match(r"^-?\d+\s+-?\d+\.\d+", ln)]
    assert len(rows) == 5
    assert "double rounding: tflite first rounds acc*m0/2^31 to the integer high" in out
    for row in rows:  # each printed row is what requantize computes, and the modes differ
        acc = int(row[0])
        assert float(row[1]) == acc * 0.25
        # high: tflite's first rounding (SRDHM, before the rounding shift by n = 1), and high / 2^n
        assert int(row[2]) == int(saturating_rounding_doubling_high_mul(acc, 1073741824))
        assert float(row[3]) == int(row[2]) / 2
        codes = [int(v) for v in row[4:]]
        expected = [int(requantize(np.array([acc]), 0.25, 0, -128, 127, mode=m)[0]) for m in REQUANT_MODES]
        assert codes == expected and len(set(codes)) > 1
    # acc = 1: acc * M = 0.25 is no tie, but high / 2 = 0.5 is, and tflite rounds it away from zero
    assert ["1", "0.250000", "1", "0.500000", "1", "0", "0", "0"] in rows


def test_ties_show_why_a_non_tie_differs(capsys):
    assert main(["explain", "--ties", "-m", "0.3", "--range", "2000", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    row = next(ln.split() for ln in out.splitlines() if ln.startswith("-421 "))
    # -421 * 0.3 = -126.3 is no tie; the first rounding gives high = -253, -253 / 2 = -126.5 is one
    assert row == ["-421", "-126.300000", "-253", "-126.500000", "-127", "-126", "-126", "-126"]


def test_ties_summary_only_and_bad_multiplier(capsys):
    assert main(["explain", "--ties", "-m", "0.0123", "--limit", "0", "--dtype", "uint8", "--zero-point", "128"]) == 0
    out = capsys.readouterr().out
    assert "tflite vs tflite_single" in out and "acc*M" not in out
    with pytest.raises(SystemExit) as e:
        main(["explain", "--ties", "-m", "0"])
    assert e.value.code == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["explain", "--ties", "-m", "0.5", "--zero-point", "300"]) == 1
    assert "zero_point" in capsys.readouterr().err


@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("mode", ["tflite", "tflite_single", "fp32", "onnx"])
def test_explain_runs_on_the_builtin_example(capsys, layer, mode):
    assert main(["explain", "--layer", layer, "--mode", mode]) == 0
    out = capsys.readouterr().out
    for needle in (
        "0. from floats to codes",
        "int32 accumulator",
        "folded form (Jacob et al. 2018, eq. 7)",
        "real multiplier",
        "clamp to",
        "float layer",
        "LSB",
        "more terms: --all-terms",
    ):
        assert needle in out
    if mode.startswith("tflite"):
        assert re.search(r"m0 = \d+ \(0x[0-9A-F]{8}\), shift = -?\d+", out)
        assert "Jacob et al.: M = 2^-n M0 with M0 in [0.5, 1)" in out
    if mode == "tflite":
        assert "high multiply" in out and "rounding shift" in out
    assert main(["explain", "--layer", layer, "--mode", mode, "--all-terms"]) == 0
    full = capsys.readouterr().out
    products = [int(ln.split()[-1]) for ln in full.splitlines() if re.match(r"^   \d+ ", ln)]
    assert len(products) == (16 if layer == "linear" else 18) and "more terms" not in full
    acc = int(re.search(r"acc = sum of the \d+ products = (-?\d+)", full).group(1))
    assert sum(products) == acc


@pytest.mark.slow  # whole models through the kernels: the JIT pass runs it
def test_explain_ties_defaults_to_the_example_multiplier(capsys):
    assert main(["explain", "--ties", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "accumulators in [-65536, 65536]" in out and "tflite vs fp32" in out


@pytest.mark.slow  # whole models through the kernels: the JIT pass runs it
def test_compress_builtin_model(capsys, tmp_path):
    out = tmp_path / "m.npqz"
    assert main(["compress", "--study", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights identical to the pruned, quantized ones: yes" in text
    size = out.stat().st_size
    assert f"compressed file: {size} bytes" in text
    acc = re.search(r"pruned \+ quantized ([\d.]+) %; rebuilt from the file ([\d.]+) %", text)
    assert acc and acc.group(1) == acc.group(2)  # the file rebuilds the quantized model exactly
    for layer in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert layer in text
    assert re.search(r"^8\s+\d+\s+[\d.]+x\s+[\d.]+ %$", text, re.M)  # the k-means study rows


def test_compress_any_state_dict(capsys, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "sd.npz"
    np.savez(
        src,
        **{
            "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
            "lin.weight": rng.normal(size=(5, 8)).astype(np.float32),
            "lin.bias": np.zeros(5, np.float32),
        },
    )
    out = tmp_path / "sd.npqz"
    assert main(["compress", "--input", str(src), "-o", str(out), "--sparsity", "0.5,0.25"]) == 0
    text = capsys.readouterr().out
    assert "identical to the pruned, quantized ones: yes" in text and "conv.weight" in text
    from npquant import read_compressed

    back = read_compressed(out)
    assert abs(np.mean(back["conv.weight"] == 0) - 0.5) < 0.02
    assert main(["compress", "--input", str(src), "-o", str(out), "--sparsity", "0.5,0.2,0.1"]) == 1
    assert "needs 1 or 2 values" in capsys.readouterr().err


def test_compress_bundled_cnn_without_retraining(capsys, tmp_path):
    from npquant.app.cli import COMPRESS_MODELS
    from npquant.app.demo import MODELS, default_models_dir

    assert COMPRESS_MODELS == MODELS
    # the batch norms' int64 num_batches_tracked is left out (a float file)
    assert main(["compress", "--model", "cnn", "-o", str(tmp_path / "c.npqz")]) == 0
    text = capsys.readouterr().out
    assert "identical to the pruned, quantized ones: yes" in text and "bn1.running_var" in text
    assert main(["compress", "--input", str(default_models_dir() / "cnn.npz"), "-o", str(tmp_path / "d.npqz")]) == 0
    assert "conv2.weight" in capsys.readouterr().out


@pytest.fixture
def retrain_files(tmp_path):
    """A reference-format model file (the bundled MLP) and --data files, good and bad."""
    import shutil

    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference
    from npquant.training.trainer import digits_data

    shutil.copy(default_models_dir() / "mlp.npz", tmp_path / "ref.npz")
    d = digits_data(load_reference(tmp_path / "ref.npz").arch)
    good = {"x_train": d["x_train"][:256], "y_train": d["y_train"][:256], "x_test": d["x_test"], "y_test": d["y_test"]}
    np.savez(tmp_path / "data.npz", **good)
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in good.items() if k != "y_test"})
    np.savez(tmp_path / "shape.npz", **{**good, "x_train": good["x_train"][:, :10]})
    np.savez(tmp_path / "labels.npz", **{**good, "y_train": good["y_train"].astype(np.float32)})
    np.savez(tmp_path / "classes.npz", **{**good, "y_test": good["y_test"] + 5})
    np.savez(tmp_path / "sd.npz", w=np.ones((4, 4), np.float32))
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        ("--input {d}/sd.npz --data {d}/data.npz", "--retrain needs an architecture and training data: "),
        ("--input {d}/ref.npz --sparsity 0.5", "needs --data FILE.npz"),
        ("--input {d}/ref.npz --data {d}/data.npz", "needs --sparsity"),
        ("--input {d}/ref.npz --data {d}/nokey.npz --sparsity 0.5", "missing y_test"),
        ("--input {d}/ref.npz --data {d}/shape.npz --sparsity 0.5", "x_train must be float (N, 64)"),
        ("--input {d}/ref.npz --data {d}/labels.npz --sparsity 0.5", "y_train must be integer labels"),
        ("--input {d}/ref.npz --data {d}/classes.npz --sparsity 0.5", "y_test must lie in [0, 9]"),
        ("--input {d}/ref.npz --data {d}/sd.safetensors --sparsity 0.5", "no such file"),
        ("--input {d}/ref.npz --data {d}/data.npz --sparsity 0.5,0.5", "needs 1 or 3 values"),
        ("--model mlp --data {d}/data.npz", "--data goes with --retrain --input"),
        ("--quality 0.5", "--quality does not go with --retrain"),
        ("--study", "--study does not go with --retrain"),
    ],
)
def test_compress_retrain_errors(retrain_files, capsys, args, message):
    argv = ["compress", "--retrain", *args.format(d=retrain_files).split()]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("npquant compress: error: ") and message in err, err


def test_compress_retrain_a_reference_file_with_data(retrain_files, capsys):
    """--retrain on any reference-format file with --data: the whole pipeline, one epoch a stage."""
    from npquant import read_compressed

    out = retrain_files / "m.npqz"
    argv = [
        "compress",
        "--retrain",
        "--input",
        str(retrain_files / "ref.npz"),
        "--data",
        str(retrain_files / "data.npz"),
        "--sparsity",
        "0.9,0.8,0.5",
        "--prune-steps",
        "1",
        "--prune-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--fc-bits",
        "4",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    text = captured.out
    size = out.stat().st_size
    assert f"wrote {out} ({size} bytes)" in text and "identical to the model in memory: yes" in text
    last = re.search(r"^Huffman coded \(the file\)\s+(\d+)\s+([\d.]+)x\s+\d+\s+[\d.]+x\s+([\d.]+) %$", text, re.M)
    assert last and int(last.group(1)) == size, text
    assert f"the model rebuilt from the file {last.group(3)} %" in text
    assert "pruning to 90/80/50 %" in captured.err  # progress on stderr
    back = read_compressed(out)
    assert abs(np.mean(back["fc1.weight"] == 0) - 0.9) < 1e-3 and len(np.unique(back["fc2.weight"])) <= 16


def test_compress_retrain_bundled_cnn_without_epochs(capsys, tmp_path):
    """The CNN through the pipeline with no retraining epochs: pruning, k-means, the file."""
    out = tmp_path / "cnn.npqz"
    argv = ["compress", "--retrain", "--model", "cnn", "--prune-epochs", "0", "--finetune-epochs", "0", "-o", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Deep Compression of cnn" in text and "conv2.weight" in text and "bn2.running_mean" in text
    assert re.search(r"conv1.weight\s+8x1x3x3\s+72\s+50 \(69.4%\)\s+5\s+8", text), text  # 30 % pruned, 5 bits


@pytest.mark.slow  # the whole pipeline with the default epochs (LeNet-300-100's targets: the tables test)
def test_compress_retrain_mlp(capsys, tmp_path):
    out = tmp_path / "mlp.npqz"
    assert main(["compress", "--retrain", "--model", "mlp", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    m = re.search(r"test accuracy: float ([\d.]+) %; the model rebuilt from the file ([\d.]+) %", text)
    assert m and float(m.group(1)) == 97.11 and float(m.group(2)) >= 97.11 - 1.0, text
    size = out.stat().st_size
    ratio = re.search(r"compressed file: (\d+) bytes .* ratio ([\d.]+)x", text)
    assert int(ratio.group(1)) == size and 68904 / size == pytest.approx(float(ratio.group(2)), abs=0.05), text


@pytest.mark.slow  # every table, computed on the spot (about a minute on 2 cores)
def test_compress_tables(capsys, tmp_path):
    assert main(["compress", "--tables", "--plots", str(tmp_path / "figs")]) == 0
    text = capsys.readouterr().out
    for head in (
        "1. k-means weight sharing and k-means QAT",
        "2. Deep Compression per stage, lenet_300_100",
        "2. Deep Compression per stage, cnn",
        "3. LeNet-300-100: sparsity",
    ):
        assert head in text
    assert len(re.findall(r"^(mlp|lenet_300_100|cnn)\s+(float32|8|4|2)\s", text, re.M)) == 12
    assert len(re.findall(r"^Huffman coded \(the file\)", text, re.M)) == 2
    # issue 14's LeNet-300-100 targets (the same run as npquant compress --retrain): the whole
    # file >= 30x smaller than float32, the model rebuilt from it within 0.5 points of float
    lenet = text[text.index("2. Deep Compression per stage, lenet_300_100") :]
    flt = re.search(r"^float32\s+202440\s+1.0x\s+\d+\s+1.0x\s+([\d.]+) %", lenet, re.M)
    last = re.search(r"^Huffman coded \(the file\)\s+(\d+)\s+([\d.]+)x\s+\d+\s+[\d.]+x\s+([\d.]+) %", lenet, re.M)
    assert flt and last, lenet
    assert 202440 / int(last.group(1)) >= 30 and float(last.group(3)) >= float(flt.group(1)) - 0.5, lenet
    assert len(re.findall(r"^\d+/\d+/\d+\s+[345]\s+\d+", text, re.M)) == 9
    assert "best point within 0.5 points of float" in text and "(Deep Compression: 40x" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot: " in text
    else:
        assert (tmp_path / "figs" / "deep_compression_tradeoff.png").stat().st_size > 1000


@pytest.mark.slow  # whole models through the kernels: the JIT pass runs it
def test_demo_model_table(capsys):
    assert main(["demo", "--quick"]) == 0  # --quick: the mlp only
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("mlp ")]
    methods = [
        "float32",
        "PTQ int8 per-tensor",
        "PTQ int8 per-channel",
        "PyTorch PTQ, reproduced (bit-exact)",
        "QAT W8A8 per-channel, min-max EMA",
        "PTQ W4A4 per-channel, min-max",
        "QAT W4A4 per-channel, LSQ",
        "dynamic int8",
        "weight-only int8",
        "weight-only int4",
        "weight-only int2",
    ]
    for m in methods:
        assert any(m in r for r in rows), m
    # float, per-tensor, 4 per-channel modes, PyTorch, 3 QAT/PTQ W4A4, dynamic, 3 weight-only
    assert len(rows) == 14
    accs = [float(re.search(r"([\d.]+) %", r).group(1)) for r in rows]  # the test-accuracy column
    assert min(accs) > 50.0 and accs[0] > 95.0
    with pytest.raises(SystemExit):
        main(["demo", "--models"])


def test_demo_missing_models_dir(capsys, tmp_path):
    assert main(["demo", "--models", str(tmp_path)]) == 1
    assert "no reference models" in capsys.readouterr().err


# ------------------------------------------------------------------ user errors: one line


@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sd.npz", w=rng.normal(size=(8, 4)).astype(np.float32), b=np.zeros(8, np.float32))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + bytes(40))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.safetensors").write_text("not safetensors at all")
    (tmp_path / "dir").mkdir()
    (tmp_path / "regular").write_bytes(b"")
    return tmp_path


CLI_USER_ERRORS = [
    ("compress --input {d}/missing.npz", "no such file"),
    ("compress --input {d}/dir", "is a directory"),
    ("compress --input {d}/bad.npz", "not a readable .npz"),
    ("compress --input {d}/empty.npz", "not a model file"),
    ("compress --input {d}/text.safetensors", "not a model file"),
    ("compress --input {d}/sd.npz -o {d}/nofolder/x.npqz", "does not exist"),
    ("compress --input {d}/sd.npz -o {d}/regular/x.npqz", "not a folder"),
    ("compress --input {d}/sd.npz -o {d}/dir", "is a directory"),
    ("compress --models {d}/nowhere", "does not exist"),
    ("compress --input {d}/sd.npz --model mlp", "give --input or --model, not both"),
    ("compress --tables -o {d}/x.npqz", "--tables takes only --seed, --models and --plots, not --output"),
    ("compress --plots {d}/figs", "--plots goes with --tables"),
    ("compress --prune-epochs 2 --lr 0.1", "--prune-epochs, --lr: only with --retrain"),
    ("compress --retrain --models {d}/nowhere", "does not exist"),
    ("quantize {d}/sd.npz -o {d}/dir", "is a directory"),
    ("quantize {d}/sd.npz -o {d}/nofolder/q.npz", "does not exist"),
    ("quantize {d}/sd.npz -o {d}/regular/q.npz", "not a folder"),
    ("quantize {d}/missing.npz -o {d}/q.npz", "no such file"),
    ("quantize {d}/bad.npz -o {d}/q.npz", "not a readable .npz"),
    ("quantize {d}/text.safetensors -o {d}/q.npz", "not a model file"),
    ("demo --models {d}/nowhere", "nowhere"),
]


@pytest.mark.parametrize("cmd, message", CLI_USER_ERRORS)
def test_user_errors_are_one_line(bad_inputs, capsys, cmd, message):
    argv = cmd.format(d=bad_inputs).split()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"npquant {argv[0]}: error: ") and message in err, err
    assert not list(bad_inputs.glob("**/.npquant-*"))  # no temporary left behind


def test_every_model_file_npquant_writes_is_accepted(bad_inputs, capsys):
    d = bad_inputs
    assert main(["compress", "--input", str(d / "sd.npz"), "-o", str(d / "m.npqz")]) == 0
    assert main(["quantize", str(d / "m.npqz"), "-o", str(d / "q.npz")]) == 0  # compressed -> quantized
    assert main(["compress", "--input", str(d / "q.npz"), "-o", str(d / "m2.npqz")]) == 0  # checkpoint
    from npquant.models.io import save_state_dict

    save_state_dict(d / "sd.safetensors", {"w": np.ones((4, 4), np.float32)})
    assert main(["quantize", str(d / "sd.safetensors"), "-o", str(d / "q2.npz")]) == 0
    from npquant.app.demo import default_models_dir

    assert main(["quantize", str(default_models_dir() / "mlp.npz"), "-o", str(d / "q3.npz")]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "test_inputs" not in out  # a reference model: its state dict only


def test_quantize_touches_only_the_weights_of_a_reference_model(tmp_path, capsys):
    from npquant.app.demo import default_models_dir
    from npquant.models.checkpoint import load_quantized
    from npquant.models.io import load_reference

    src = default_models_dir() / "cnn.npz"
    ref = load_reference(src)
    assert {"test_inputs", "test_labels", "float_logits"} <= set(ref.arrays)  # 2-D floats, but not weights
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.npz"), "--bits", "4"]) == 0
    out = capsys.readouterr().out
    table = [ln.split()[0] for ln in out.splitlines() if re.match(r"^\w[\w.]*\s+\d+(x\d+)+\s", ln)]
    assert table == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert "copied unchanged: bn1.weight, bn1.bias" in out
    stored = set(np.load(tmp_path / "q.npz").files)
    assert not stored & {"test_inputs", "test_labels", "float_logits", "__arch__"}
    back = load_quantized(tmp_path / "q.npz")
    assert set(back) == set(ref.state)
    for name, v in ref.state.items():
        if name in table:
            assert not np.array_equal(back[name], v) and back[name].shape == v.shape
        else:
            np.testing.assert_array_equal(back[name], v)  # biases and BatchNorm statistics as they were


def test_quantize_refuses_one_bit_symmetric(tmp_path, capsys):
    from npquant.app.demo import default_models_dir

    with pytest.raises(SystemExit) as exc:
        main(["quantize", str(default_models_dir() / "mlp.npz"), "-o", str(tmp_path / "q.npz"), "--bits", "1"])
    assert exc.value.code == 2
    assert "--bits 1 needs --asymmetric" in capsys.readouterr().err
    assert not (tmp_path / "q.npz").exists()
    assert (
        main(
            [
                "quantize",
                str(default_models_dir() / "mlp.npz"),
                "-o",
                str(tmp_path / "q.npz"),
                "--bits",
                "1",
                "--asymmetric",
            ]
        )
        == 0
    )
    assert "1-bit asymmetric" in capsys.readouterr().out


def test_internal_errors_show_a_traceback_and_ask_for_a_report(monkeypatch, capsys):
    import npquant.app.cli as cli

    def broken(args):
        raise RuntimeError("boom")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), broken))
    assert cli.main(["explain"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "please report it" in err


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser
