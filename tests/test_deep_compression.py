"""Deep Compression end to end (npquant.training.deep_compression): the pipeline's stage table
comes from the real file, the file rebuilds the fine-tuned model bit for bit, and the targets
of issue 14 (slow)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from npquant.compression.pipeline import read_compressed, stage_sizes
from npquant.models.io import FileFormatError
from npquant.models.nn import build_model
from npquant.training import evaluate
from npquant.training.deep_compression import (
    DEFAULTS,
    PAPER_LENET_RATIO,
    SWEEP_BITS,
    SWEEP_SPARSITIES,
    best_point,
    bundled,
    deep_compression,
    default_bits,
    format_kmeans_table,
    format_sweep,
)


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The MLP through the whole pipeline, one epoch per stage on 256 training images (fast
    with the JIT and without)."""
    model, data, ref = bundled("mlp")
    path = tmp_path_factory.mktemp("dc") / "mlp.npqz"
    r = deep_compression(
        model,
        data["x_train"][:256],
        data["y_train"][:256],
        data["x_test"],
        data["y_test"],
        sparsity={"fc1.weight": 0.9, "fc2.weight": 0.8},
        prune_steps=1,
        prune_epochs=1,
        bits={"fc3.weight": 3},
        finetune_epochs=1,
        seed=0,
        path=path,
        progress=False,
    )
    return r, data, ref, path


def test_the_stage_table_is_computed_from_the_real_file(small_run):
    r, data, ref, path = small_run
    assert r.path == str(path) and path.read_bytes() == r.data
    assert r.sizes == stage_sizes(r.compressed) and r.sizes.huffman == len(r.data) == path.stat().st_size
    rows = r.rows()
    assert [row[0] for row in rows] == [
        "float32",
        "pruned + retrained",
        "k-means (not fine-tuned)",
        "k-means + fine-tuned centroids",
        "Huffman coded (the file)",
    ]
    assert [row[1] for row in rows] == [
        r.sizes.original,
        r.sizes.pruned,
        r.sizes.quantized,
        r.sizes.quantized,
        len(r.data),
    ]
    assert rows[-1][2] == r.ratio == r.sizes.original / len(r.data)
    # the last accuracy: a model built from the architecture and the file read back
    back = read_compressed(path)
    acc = evaluate(build_model(ref.arch, back), data["x_test"], data["y_test"])[1]
    assert rows[-1][5] == r.accuracy["file"] == acc == r.accuracy["finetuned"]
    assert rows[0][5] == r.accuracy["float"] == pytest.approx(ref.meta["test_accuracy"])
    assert f"{100 * acc:.2f} %" in r.table() and f"{r.ratio:.1f}x" in r.table()


def test_the_file_is_the_fine_tuned_model_bit_for_bit(small_run):
    r, _, _, path = small_run
    back = read_compressed(path)
    state = r.model.state_dict()
    assert set(back) == set(state)
    for name, v in state.items():
        np.testing.assert_array_equal(_bits(back[name]), _bits(v))
        np.testing.assert_array_equal(_bits(r.file_model.state_dict()[name]), _bits(v))
    # every shared tensor, the biases included, is the fine-tuned codebook[indices]
    assert set(r.qat.codebooks) == {"fc1.weight", "fc2.weight", "fc3.weight", "fc1.bias", "fc2.bias", "fc3.bias"}
    for name, cb in r.qat.codebooks.items():
        np.testing.assert_array_equal(_bits(back[name]), _bits(cb[r.qat.indices[name]]))
    assert r.qat.bits == {
        "fc1.weight": 5,
        "fc2.weight": 5,
        "fc3.weight": 3,
        "fc1.bias": 5,
        "fc2.bias": 5,
        "fc3.bias": 5,
    }
    # pruned weights are exactly +0.0 after retraining and fine-tuning, in memory and in the file
    for name, mask in r.prune.masks.items():
        assert np.all(_bits(back[name])[~mask] == 0) and np.all(_bits(state[name])[~mask] == 0)
        assert r.qat.reserved_zero[name]
    assert np.mean(back["fc1.weight"] == 0) >= 0.9 and np.mean(back["fc2.weight"] == 0) >= 0.8
    assert not r.prune.masks.keys() - {"fc1.weight", "fc2.weight"}  # fc3 was not named: not pruned
    assert not r.qat.reserved_zero["fc3.weight"]  # nor given a reserved zero


def test_a_corrupt_or_truncated_file_is_refused(small_run):
    data = small_run[0].data
    with pytest.raises(FileFormatError, match="truncated"):
        read_compressed(data[:-7])
    for i in (10, len(data) // 2, len(data) - 2):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(FileFormatError):
            read_compressed(bytes(bad))


def test_default_bits_and_defaults():
    model, _, _ = bundled("cnn")
    assert default_bits(model) == {"conv1.weight": 8, "conv2.weight": 8, "fc.weight": 5}
    for name, d in DEFAULTS.items():
        names = list(default_bits(bundled(name)[0]))
        assert list(d["sparsity"]) == names and set(d["bits"]) <= set(names)
    assert DEFAULTS["lenet_300_100"]["sparsity"] == {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}
    assert SWEEP_SPARSITIES[1] == DEFAULTS["lenet_300_100"]["sparsity"] and len(SWEEP_BITS) == 3


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"sparsity": {"fc9.weight": 0.5}}, ValueError, "sparsity names 'fc9.weight'"),
        ({"sparsity": {"fc1.bias": 0.5}}, ValueError, "not a weight tensor"),
        ({"sparsity": 1.0}, ValueError, "sparsity must be in"),
        ({"sparsity": 0.5, "bits": 9}, ValueError, "bits must be in"),
        ({"sparsity": 0.5, "bits": {"fc1.weight": 0}}, ValueError, r"bits\['fc1.weight'\]"),
        ({"sparsity": 0.5, "bias_bits": 0}, ValueError, "bias_bits"),
        ({"sparsity": 0.5, "prune_steps": 0}, ValueError, "prune_steps"),
        ({"sparsity": 0.5, "finetune_lr": 0}, ValueError, "finetune_lr"),
        ({"sparsity": 0.5, "x_test": np.zeros((3, 64), int)}, TypeError, "x_test"),
        ({"sparsity": 0.5, "y_test": np.zeros(2, int)}, ValueError, "y_test"),
    ],
)
def test_arguments_are_checked_before_any_training(kw, exc, match):
    model, data, _ = bundled("mlp")
    args = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    with pytest.raises(exc, match=match):
        deep_compression(model, args["x_train"], args["y_train"], args["x_test"], args["y_test"], progress=False, **kw)
    with pytest.raises(TypeError, match="trainable model"):
        deep_compression(object(), args["x_train"], args["y_train"], args["x_test"], args["y_test"], sparsity=0.5)


def test_formatting_and_the_best_point():
    rows = [
        {
            "sparsity": {"a": 0.9, "b": 0.8},
            "bits": b,
            "bytes": 100 * b,
            "ratio": r,
            "weights_ratio": r + 1,
            "accuracy": a,
            "float_accuracy": 0.97,
        }
        for b, r, a in ((5, 30.0, 0.97), (4, 35.0, 0.966), (3, 40.0, 0.96))
    ]
    assert best_point(rows)["bits"] == 4 and best_point(rows, tolerance=0.0)["bits"] == 5
    assert best_point(rows, tolerance=-0.1) is None
    text = format_sweep(rows)
    assert "90/80" in text and "35.0x" in text and "-1.00" in text
    assert f"4 bits: 35.0x at 96.60 % (Deep Compression: {PAPER_LENET_RATIO}x" in text
    assert "no point is within" in format_sweep(rows[2:])
    km = [
        {
            "model": "m",
            "bits": None,
            "bytes": 400,
            "ratio": 1.0,
            "file_bytes": None,
            "file_ratio": None,
            "accuracy_kmeans": 0.9,
            "accuracy": 0.9,
        },
        {
            "model": "m",
            "bits": 2,
            "bytes": 40,
            "ratio": 10.0,
            "file_bytes": 38,
            "file_ratio": 400 / 38,
            "accuracy_kmeans": 0.5,
            "accuracy": 0.88,
        },
    ]
    text = format_kmeans_table(km)
    assert re.search(r"m\s+float32\s+400\s+1.0x\s+-\s+-\s+90.00 %\s+-", text)
    assert re.search(r"m\s+2\s+40\s+10.0x\s+38\s+10.5x\s+50.00 %\s+88.00 %", text)


# The accuracy and size targets of issue 14 are slow tests elsewhere: LeNet-300-100's (>= 30x,
# within 0.5 points) and the tables in tests/test_cli.py, through the command; 2-bit k-means
# QAT over seeds 0-2 in tests/test_kmeans_qat.py.
