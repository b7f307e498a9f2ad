"""npquant.vectors (golden test vectors) and the commands ``npquant vectors`` and ``npquant run``.

Every vector set is read back twice, with :func:`read_vectors` and with the small parser
below (which knows only the documented format), and checked against the model's own run;
then each layer is recomputed from its vectors alone, with the formula its manifest
names, and must give the output vectors bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from npquant.affine import dequantize, quantize
from npquant.app.cli import main
from npquant.app.demo import calibration_inputs, default_models_dir
from npquant.models import nn
from npquant.models.convert import from_pytorch_ptq, quantize_model
from npquant.models.io import FileFormatError, load_model, load_reference
from npquant.qnn import avg_pool2d, max_pool2d
from npquant.qparams import QParams, QuantSpec
from npquant.requant.fixedpoint import multiply_by_quantized_multiplier
from npquant.vectors import (
    C_HEADER,
    HEX_DIGITS,
    MANIFEST,
    NPZ,
    read_manifest,
    read_vectors,
    write_intermediates,
    write_vectors,
)

REF = default_models_dir()
CC = shutil.which("cc")


# ---------------------------------------------------------------------------- helpers


def tiny_hex(path, dtype, shape):
    """A parser written from the format's description only: // lines are comments, every
    other line is one value of exactly HEX_DIGITS[dtype] digits, two's complement."""
    bits = 4 * {"int8": 2, "uint8": 2, "int16": 4, "uint16": 4, "int32": 8, "float32": 8}[dtype]
    vals = []
    with open(path, encoding="ascii") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("//"):
                continue
            assert len(line) == bits // 4, (path, line)
            v = int(line, 16)
            if dtype.startswith("int") and v >= 1 << (bits - 1):
                v -= 1 << bits
            vals.append(v)
    if dtype == "float32":
        return np.array(vals, np.uint32).view(np.float32).reshape(shape)
    return np.array(vals, dtype).reshape(shape)


def check_set(folder):
    """Read a vector set three ways (read_vectors, the tiny parser, the npz) and check the
    manifest against the folder; returns (manifest, arrays)."""
    m = read_manifest(folder)
    got = read_vectors(folder)
    npz = dict(np.load(os.path.join(folder, NPZ)))
    assert m["format"] == "npquant-vectors" and m["version"] == 1
    assert m["byte_order"]["npz"] == "little-endian" and "value-based" in m["byte_order"]["hex"]
    assert sorted(os.listdir(folder)) == sorted(m["files"] + [MANIFEST])
    assert list(got) == [layer["name"] for layer in m["layers"]]
    names = set()
    for layer in m["layers"]:
        assert list(got[layer["name"]]) == list(layer["tensors"])
        for key, t in layer["tensors"].items():
            a = got[layer["name"]][key]
            assert a.dtype == np.dtype(t["dtype"]) and list(a.shape) == t["shape"]
            assert t["file"] == t["name"] + ".hex" and t["hex_digits"] == HEX_DIGITS[t["dtype"]]
            np.testing.assert_array_equal(tiny_hex(os.path.join(folder, t["file"]), t["dtype"], t["shape"]), a)
            assert npz[t["name"]].dtype.byteorder in "<|=" and npz[t["name"]].dtype == a.dtype
            np.testing.assert_array_equal(npz[t["name"]], a)
            names.add(t["name"])
    assert names == set(npz)
    return m, got


def conv_acc(x, zx, w, zw, bias, stride, pad, dilation, groups):
    """int64 conv accumulator written out directly (padding reads zx)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    t, b, left, r = pad
    xp = np.full((n, c, h + t + b, wd + left + r), zx, np.int64)
    xp[:, :, t : t + h, left : left + wd] = x
    oh = (h + t + b - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + left + r - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    wc = w.astype(np.int64) - zw.astype(np.int64)[:, None, None, None]
    acc = np.zeros((n, o, oh, ow), np.int64) + bias.astype(np.int64)[None, :, None, None]
    og = o // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = (
                    xp[
                        :,
                        g * cg : (g + 1) * cg,
                        i * dilation[0] : i * dilation[0] + stride[0] * (oh - 1) + 1 : stride[0],
                        j * dilation[1] : j * dilation[1] + stride[1] * (ow - 1) + 1 : stride[1],
                    ]
                    - zx
                )
                acc[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wc[g * og : (g + 1) * og, :, i, j])
    return acc


def requantize_from(layer, v, acc):
    """Output codes from the accumulator and the layer's vectors, by the manifest's formula."""
    req = layer["requantization"]
    lo, hi = layer["clamp"]
    zy = layer["zero_points"]["output"]
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if req["uses"] == "m0_shift":
        rounding = "single" if req["mode"] == "tflite_single" else "double"
        t = multiply_by_quantized_multiplier(acc, v["m0"].reshape(shape), v["shift"].reshape(shape), rounding)
        return np.clip(t + zy, lo, hi)
    mult = v["multiplier"].reshape(shape)
    if req["uses"] == "multiplier" and req["mode"] == "fp32":
        return np.clip(np.rint(acc.astype(np.float32) * mult).astype(np.int64) + zy, lo, hi)
    if req["uses"] == "multiplier":
        assert req["mode"] == "onnx"
        return np.clip(np.rint(acc.astype(np.float64) * mult.astype(np.float64) + zy), lo, hi).astype(np.int64)
    assert req["uses"] == "fbgemm_float_bias" and req["per_channel"]
    raw = (acc.astype(np.float32) + (v["bias"] / v["bias_scale"]).astype(np.float32).reshape(shape)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.rint((raw * mult).astype(np.float32)).astype(np.float64)
    t = np.where(np.abs(t) < 2.0**31, t, -(2.0**31))
    return np.clip(t.astype(np.int64) + zy, lo, hi)


def recompute(layer, v):
    """The output of one layer from its vectors and manifest entry alone."""
    op = layer["op"]
    if op in ("qlinear", "qconv2d"):
        x, w, zw = v["input"].astype(np.int64), v["weight"], v["weight_zero_point"]
        zx = layer["zero_points"]["input"]
        bias = v["bias"] if layer["accumulation"]["acc_includes_bias"] else np.zeros(w.shape[0], np.int64)
        if op == "qlinear":
            acc = (x - zx) @ (w.astype(np.int64) - zw.astype(np.int64)[:, None]).T + bias.astype(np.int64)
        else:
            g = layer["geometry"]
            acc = conv_acc(x, zx, w, zw, bias, g["stride"], g["padding"], g["dilation"], g["groups"])
        np.testing.assert_array_equal(acc, v["acc"], err_msg=f"{layer['name']}: accumulator")
        return requantize_from(layer, v, v["acc"].astype(np.int64))
    if op == "qmaxpool2d":
        p = layer["pool"]
        return max_pool2d(v["input"], p["kernel"], p["stride"], p["padding"], backend="numpy")
    if op == "qavgpool2d":
        p = layer["pool"]
        return avg_pool2d(
            v["input"],
            p["kernel"],
            p["stride"],
            p["padding"],
            mode=p["mode"],
            zero_point=p["zero_point"],
            count_include_pad=p["count_include_pad"],
            backend="numpy",
        )
    if op == "qrelu":
        return np.clip(v["input"], *layer["clamp"])
    if op == "qflatten":
        return v["input"].reshape(v["input"].shape[0], -1)
    if op == "qadd":
        req = layer["requantization"]
        assert req["uses"] == "m0_shift"
        rounding = "single" if req["mode"] == "tflite_single" else "double"
        qps = layer["input_qparams"]
        a = [
            multiply_by_quantized_multiplier(
                (v[f"input{i}"].astype(np.int64) - qps[i]["zero_point"]) << req["left_shift"],
                v["m0"][i],
                v["shift"][i],
                rounding,
            )
            for i in range(2)
        ]
        t = multiply_by_quantized_multiplier(a[0] + a[1], v["m0"][2], v["shift"][2], rounding)
        return np.clip(t + layer["output_qparams"]["zero_point"], *layer["clamp"])
    if op == "quantize":
        qp = layer["output_qparams"]
        spec = QuantSpec(bits=8, signed=qp["dtype"] == "int8")
        return quantize(v["input"], QParams(np.float32(qp["scale"]), qp["zero_point"], spec), method=layer["method"])
    if op == "dequantize":
        qp = layer["input_qparams"]
        return dequantize(
            v["input"],
            QParams(np.float32(qp["scale"]), qp["zero_point"], QuantSpec(bits=8, signed=qp["dtype"] == "int8")),
        )
    raise AssertionError(f"no recomputation for op {op}")


def check_recomputed(m, got):
    for layer in m["layers"]:
        v = got[layer["name"]]
        out = recompute(layer, v)
        np.testing.assert_array_equal(
            np.asarray(out).astype(v["output"].dtype),
            v["output"],
            err_msg=f"{layer['name']} ({layer['op']}) recomputed from its vectors",
        )


def check_against_model(q, x_codes, got, m):
    """Every vector equals what the IntegerModel's layers compute and hold."""
    h = x_codes
    for layer, entry in zip(q.layers, m["layers"]):
        v = got[entry["name"]]
        np.testing.assert_array_equal(v["input"], h)
        y = layer(h)
        np.testing.assert_array_equal(v["output"], y)
        if entry["op"] in ("qlinear", "qconv2d"):
            np.testing.assert_array_equal(v["weight"], layer.w_q)
            np.testing.assert_array_equal(v["acc"], layer.accumulate(h))
            if layer.float_bias is not None:
                np.testing.assert_array_equal(v["bias"], layer.float_bias)
            else:
                np.testing.assert_array_equal(v["bias"], layer.bias_q)
            assert entry["clamp"] == list(layer.out_range)
            assert entry["requantization"]["mode"] == ("fp32" if layer.mode == "fbgemm" else layer.mode)
            assert entry["accumulation"]["mode"] == layer.accumulation
            assert entry["tensors"]["weight"]["layout"] == ("OIHW" if entry["op"] == "qconv2d" else "OI")
        h = y
    return h


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mlp_ptq():
    z = dict(np.load(REF / "mlp_ptq.npz"))
    return from_pytorch_ptq(REF / "mlp_ptq.npz"), z


@pytest.fixture(scope="module")
def cnn_float():
    ref = load_reference(REF / "cnn.npz")
    return load_model(REF / "cnn.npz"), calibration_inputs(REF, "cnn"), ref.arrays["test_inputs"]


def small_float_model(seed=0):
    """conv -> avg pool -> relu -> flatten -> linear: exercises QAvgPool2d and QReLU."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        [
            nn.Conv2d(
                rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32),
                rng.normal(0, 0.1, 4).astype(np.float32),
                padding=1,
                name="conv",
            ),
            nn.AvgPool2d(2, 2, name="pool"),
            nn.ReLU(name="relu"),
            nn.Flatten(name="flat"),
            nn.Linear(
                rng.normal(0, 0.3, (3, 16)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32), name="fc"
            ),
        ]
    )


def residual_graph(seed=0):
    """quantize -> conv(relu) -> conv -> add(skip) -> max pool -> flatten -> linear -> dequantize."""
    from npquant.models.graph import Graph, Node

    rng = np.random.default_rng(seed)

    def qp(scale, zp):
        return {"scale": scale, "zero_point": zp, "bits": 8, "signed": False}

    def conv(name, src, dst, out, act=None):
        w = rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)
        return Node(
            name,
            "qconv2d",
            [src],
            [dst],
            {"output": out, "padding": 1, "activation": act},
            {
                "weight": w,
                "weight_scale": rng.uniform(0.002, 0.01, 4).astype(np.float32),
                "weight_zero_point": np.zeros(4, np.int64),
                "bias_q": rng.integers(-500, 500, 4).astype(np.int32),
            },
        )

    w_fc = rng.integers(-127, 128, (3, 16)).astype(np.int8)
    nodes = [
        Node("in/quant", "quantize", ["x"], ["xq"], {"output": qp(0.02, 3)}),
        conv("block1/conv.0", "xq", "c1", qp(0.05, 0), "relu"),
        conv("block1/conv.1", "c1", "c2", qp(0.06, 120)),
        Node("block1/add", "qadd", ["c2", "xq"], ["s"], {"output": qp(0.07, 60), "activation": "relu"}),
        Node("pool", "qmaxpool2d", ["s"], ["p"], {"kernel_size": 2}),
        Node("flatten", "qflatten", ["p"], ["f"]),
        Node(
            "fc",
            "qlinear",
            ["f"],
            ["logits_q"],
            {"output": qp(0.1, 128), "mode": "tflite_single"},
            {
                "weight": w_fc,
                "weight_scale": np.float32(0.01),
                "weight_zero_point": np.int64(0),
                "bias_q": np.arange(3, dtype=np.int32),
            },
        ),
        Node("out", "dequantize", ["logits_q"], ["logits"]),
    ]
    return Graph(nodes, ["x"], ["logits"], name="residual")


# ---------------------------------------------------------------------------- write + read


def test_pytorch_ptq_mlp_vectors(tmp_path, mlp_ptq):
    q, z = mlp_ptq
    x = z["input_int"][:2]
    m = write_vectors(q, x, tmp_path / "v")
    m2, got = check_set(tmp_path / "v")
    assert m == m2
    out = check_against_model(q, x, got, m)
    np.testing.assert_array_equal(out, z["logits_int"][:2])  # PyTorch's own codes
    for entry, name in zip(m["layers"], ("fc1", "fc2", "fc3")):
        np.testing.assert_array_equal(got[entry["name"]]["output"], z[f"{name}.output_int"][:2])
        np.testing.assert_array_equal(got[entry["name"]]["weight"], z[f"{name}.weight_int"])
        req = entry["requantization"]
        assert req["mode"] == "fp32" and req["uses"] == "fbgemm_float_bias" and req["per_channel"]
        assert entry["tensors"]["multiplier"]["dtype"] == "float32"
        assert entry["tensors"]["m0"]["dtype"] == "int32" and entry["tensors"]["shift"]["layout"] == "O"
        assert not entry["accumulation"]["acc_includes_bias"]
    assert m["model"]["type"] == "IntegerModel" and m["names"] == {f"layers[{i}]": f"l0{i}_qlinear" for i in range(3)}
    check_recomputed(m, got)
    # float input gives the same vectors (quantized as PyTorch does)
    x_float = load_reference(REF / "mlp.npz").arrays["test_inputs"][:2]
    write_vectors(q, x_float, tmp_path / "f")
    np.testing.assert_array_equal(read_vectors(tmp_path / "f")["l02_qlinear"]["output"], z["logits_int"][:2])


def test_pytorch_ptq_cnn_vectors(tmp_path):
    q = from_pytorch_ptq(REF / "cnn_ptq.npz")
    z = np.load(REF / "cnn_ptq.npz")
    m = write_vectors(q, z["input_int"][5:6], tmp_path)
    m, got = check_set(tmp_path)
    check_against_model(q, z["input_int"][5:6], got, m)
    check_recomputed(m, got)
    np.testing.assert_array_equal(got[m["layers"][-1]["name"]]["output"], z["logits_int"][5:6])
    conv = m["layers"][0]
    assert conv["tensors"]["input"]["layout"] == "NCHW" and conv["tensors"]["acc"]["layout"] == "NCHW"
    assert conv["geometry"]["padding"] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    "mode, per_channel", [("tflite", True), ("tflite_single", True), ("fp32", False), ("onnx", True)]
)
def test_quantized_cnn_vectors_every_mode(tmp_path, cnn_float, mode, per_channel):
    model, calib, x = cnn_float
    q = quantize_model(model, calib, mode=mode, per_channel=per_channel)
    m = write_vectors(q, x[:1], tmp_path)
    m, got = check_set(tmp_path)
    check_against_model(q, q.quantize_input(x[:1]), got, m)
    check_recomputed(m, got)
    for entry in m["layers"]:
        if entry["op"] in ("qlinear", "qconv2d"):
            req = entry["requantization"]
            assert req["uses"] == ("m0_shift" if mode.startswith("tflite") else "multiplier")
            assert ("multiplier" in entry["tensors"]) == (mode in ("fp32", "onnx"))
            assert req["per_channel"] == per_channel
            assert entry["accumulation"]["acc_includes_bias"]
            up = entry["name"].upper()
            assert (f"{up}_M0" in entry["defines"]) == (not per_channel)


def test_avg_pool_relu_and_signed_activations(tmp_path):
    model = small_float_model()
    calib = np.random.default_rng(1).normal(0, 1, (32, 2, 4, 4)).astype(np.float32)
    q = quantize_model(model, calib, mode="tflite", activation_signed=True)
    m = write_vectors(q, calib[:2], tmp_path)
    assert [e["op"] for e in m["layers"]] == ["qconv2d", "qavgpool2d", "qrelu", "qflatten", "qlinear"]
    m, got = check_set(tmp_path)
    assert got["l00_qconv2d"]["input"].dtype == np.int8
    check_against_model(q, q.quantize_input(calib[:2]), got, m)
    check_recomputed(m, got)
    assert m["layers"][1]["pool"]["mode"] == "tflite"


def test_residual_graph_vectors(tmp_path):
    g = residual_graph()
    x = np.random.default_rng(2).uniform(-0.05, 4.0, (2, 4, 4, 4)).astype(np.float32)
    m = write_vectors(g, x, tmp_path / "g")
    m, got = check_set(tmp_path / "g")
    env = g.run(x, keep_intermediates=True)
    assert m["names"] == {
        "in/quant": "in_quant",
        "block1/conv.0": "block1_conv_0",
        "block1/conv.1": "block1_conv_1",
        "block1/add": "block1_add",
        "pool": "pool",
        "flatten": "flatten",
        "fc": "fc",
        "out": "out",
    }
    for entry, node in zip(m["layers"], g.nodes):
        v = got[entry["name"]]
        assert entry["original_name"] == node.name and entry["op"] == node.op
        assert entry["input_tensors"] == list(node.inputs)
        keys = ["input"] if len(node.inputs) == 1 else [f"input{i}" for i in range(len(node.inputs))]
        for k, t in zip(keys, node.inputs):
            np.testing.assert_array_equal(v[k], env[t])
        np.testing.assert_array_equal(v["output"], env[node.outputs[0]])
    add = m["layers"][3]
    assert add["requantization"]["uses"] == "m0_shift" and add["requantization"]["left_shift"] == 20
    check_recomputed(m, got)
    # the same input as codes of the float input's quantize node: the same vectors
    write_vectors(g, got["in_quant"]["output"], tmp_path / "c")
    again = read_vectors(tmp_path / "c")
    for name in got:
        if name != "in_quant":
            for k in got[name]:
                np.testing.assert_array_equal(again[name][k], got[name][k])


def test_graph_of_other_integer_ops(tmp_path):
    """Integer input codes (input_qparams), PyTorch-mode relu6, average pool, add (channels
    last) and concat, reshape: the vectors are the run's tensors; the ops with integer
    formulas are recomputed."""
    from npquant.models.graph import Graph, Node

    def qp(scale, zp):
        return {"scale": scale, "zero_point": zp, "bits": 8, "signed": False}

    nodes = [
        Node("relu6", "qrelu", ["x"], ["r"], {"activation": "relu6", "mode": "torch"}),
        Node(
            "avg",
            "qavgpool2d",
            ["r"],
            ["a"],
            {"kernel_size": 2, "mode": "torch", "padding": 1, "count_include_pad": True},
        ),
        Node(
            "add", "qadd", ["a", "a"], ["s"], {"output": qp(0.1, 3), "mode": "torch", "memory_format": "channels_last"}
        ),
        Node("cat", "qconcat", ["s", "a"], ["c"], {"output": qp(0.2, 5)}),
        Node("reshape", "qreshape", ["c"], ["f"], {"shape": [0, -1]}),
        Node("deq", "dequantize", ["f"], ["y"]),
    ]
    x_qp = QParams(np.float32(0.05), 10, QuantSpec(signed=False))
    g = Graph(nodes, ["x"], ["y"], input_qparams={"x": x_qp})
    x = np.random.default_rng(5).integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    m = write_vectors(g, x, tmp_path)
    m, got = check_set(tmp_path)
    env = g.run(x, keep_intermediates=True)
    for entry in m["layers"]:
        np.testing.assert_array_equal(got[entry["name"]]["output"], env[entry["output_tensors"][0]])
        if entry["op"] in ("qrelu", "qavgpool2d", "dequantize"):
            np.testing.assert_array_equal(recompute(entry, got[entry["name"]]), got[entry["name"]]["output"])
    assert m["layers"][2]["requantization"]["uses"] == "scales" and m["layers"][2]["memory_format"] == "channels_last"
    assert m["layers"][0]["clamp"] == [10, 130] and m["layers"][0]["relu_mode"] == "torch"
    # float values for the code input are quantized with its input_qparams
    xf = np.random.default_rng(6).uniform(0, 5, (1, 3, 4, 4))
    write_vectors(g, xf, tmp_path, overwrite=True)
    np.testing.assert_array_equal(read_vectors(tmp_path)["relu6"]["input"], quantize(xf.astype(np.float32), x_qp))


# ---------------------------------------------------------------------------- C header


def _c_dump_program(m) -> str:
    lines = [
        "#include <stdio.h>",
        "#include <string.h>",
        '#include "vectors.h"',
        "int main(void) {",
        "    size_t i; uint32_t u;",
    ]
    for layer in m["layers"]:
        for t in layer["tensors"].values():
            n, up = t["name"], t["name"].upper()
            lines.append(f'    printf("{n} %d\\n", (int){up}_LEN);')
            if t["dtype"] == "float32":
                lines.append(
                    f"    for (i = 0; i < {up}_LEN; i++) {{ memcpy(&u, &{n}[i], 4); "
                    'printf("%lu\\n", (unsigned long)u); }'
                )
            else:
                lines.append(f'    for (i = 0; i < {up}_LEN; i++) printf("%ld\\n", (long){n}[i]);')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")
def test_c_header_compiles_and_holds_the_values(tmp_path, mlp_ptq):
    q, z = mlp_ptq
    g = residual_graph()
    x = np.random.default_rng(3).uniform(0, 4.0, (1, 4, 4, 4)).astype(np.float32)
    for name, model, inp in (("ptq", q, z["input_int"][:1]), ("graph", g, x)):
        folder = tmp_path / name
        m = write_vectors(model, inp, folder)
        header = folder / C_HEADER
        for flags in (["-std=c99", "-Wall", "-Werror"], ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]):
            res = subprocess.run(
                [CC, *flags, "-x", "c", "-c", str(header), "-o", os.devnull], capture_output=True, text=True
            )
            assert res.returncode == 0, res.stderr
        prog = tmp_path / f"{name}.c"
        prog.write_text(_c_dump_program(m))
        exe = tmp_path / f"{name}.out"
        res = subprocess.run(
            [CC, "-std=c99", "-Wall", "-Werror", f"-I{folder}", str(prog), "-o", str(exe)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
        npz = np.load(folder / NPZ)
        pos = 0
        for layer in m["layers"]:
            for t in layer["tensors"].values():
                n, count = out[pos].split()
                assert n == t["name"] and int(count) == np.prod(t["shape"])
                vals = np.array([int(v) for v in out[pos + 1 : pos + 1 + int(count)]], np.int64)
                pos += 1 + int(count)
                want = npz[t["name"]].ravel()
                if t["dtype"] == "float32":
                    want = want.view(np.uint32)
                np.testing.assert_array_equal(vals, want.astype(np.int64), err_msg=t["name"])


# ---------------------------------------------------------------------------- refusals


@pytest.fixture()
def small_set(tmp_path, mlp_ptq):
    q, z = mlp_ptq
    write_vectors(q, z["input_int"][:1], tmp_path / "v")
    return tmp_path / "v"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: lines.__setitem__(3, "zz"), "line 4: malformed line 'zz'"),
        (lambda lines: lines.__setitem__(2, "1ff"), "line 3: value '1ff' is out of range for int8"),
        (lambda lines: lines.__setitem__(5, "f"), "line 6: 'f' has 1 hex digits; int8 values have exactly 2"),
        (lambda lines: lines.__setitem__(4, " 0f"), "line 5: malformed line"),
        (lambda lines: lines.pop(), "line 8193: the file ends after 8191 values; shape [128, 64] needs 8192"),
        (lambda lines: lines.append("00"), "line 8194: more than the 8192 values"),
        (lambda lines: lines.__setitem__(7, "\u00e9e"), "line 8: not ASCII text"),
        (lambda lines: lines.insert(9, ""), "line 10: malformed line ''"),
    ],
)
def test_corrupt_hex_is_refused_naming_file_and_line(small_set, edit, message):
    path = small_set / "l00_qlinear_weight.hex"
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    edit(lines)
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    with pytest.raises(FileFormatError) as e:
        read_vectors(small_set)
    assert str(e.value).startswith(str(path) + ": ") and message in str(e.value)


def test_hex_reader_accepts_comments_crlf_and_no_final_newline(small_set):
    path = small_set / "l02_qlinear_bias.hex"
    want = read_vectors(small_set)["l02_qlinear"]["bias"]
    lines = path.read_text().split("\n")[:-1]
    path.write_text("// edited\r\n" + "\r\n".join(lines[:3]) + "\r\n// a note\n" + "\n".join(lines[3:]).upper())
    np.testing.assert_array_equal(read_vectors(small_set)["l02_qlinear"]["bias"], want)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("file", "../escape.hex", "file must be a plain .hex file name"),
        ("dtype", "int64", "dtype must be one of"),
        ("shape", [2, -1], "shape must be a list"),
    ],
)
def test_invalid_manifest_is_refused(small_set, field, value, message):
    path = small_set / MANIFEST
    m = json.loads(path.read_text())
    m["layers"][0]["tensors"]["weight"][field] = value
    path.write_text(json.dumps(m))
    with pytest.raises(FileFormatError, match=message):
        read_vectors(small_set)


def test_refuses_float_models_and_bad_inputs(tmp_path, cnn_float):
    model, calib, x = cnn_float
    with pytest.raises(TypeError, match="model must be an IntegerModel or an integer Graph, got Sequential.*float"):
        write_vectors(model, x[:1], tmp_path / "a")
    from npquant.models.graph import Graph, Node

    fg = Graph([Node("fc", "linear", ["x"], ["y"], params={"weight": np.ones((2, 3), np.float32)})], ["x"], ["y"])
    with pytest.raises(ValueError, match="model is a float graph"):
        write_vectors(fg, np.ones((1, 3), np.float32), tmp_path / "a")
    q = quantize_model(small_float_model(), np.ones((4, 2, 4, 4), np.float32) * np.arange(4).reshape(4, 1, 1, 1))
    with pytest.raises(ValueError, match=r"inputs holds integer codes in \[0, 300\]"):
        write_vectors(q, np.array([[[[0, 300]]]]), tmp_path / "a")
    with pytest.raises(TypeError, match="inputs of an IntegerModel must be one array"):
        write_vectors(q, [x[:1]], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_refuses_non_empty_folders_and_replaces_a_previous_set(tmp_path, mlp_ptq):
    q, z = mlp_ptq
    out = tmp_path / "out"
    out.mkdir()
    write_vectors(q, z["input_int"][:1], out)  # an empty folder is fine
    with pytest.raises(FileExistsError, match="out_dir .* is not empty .*overwrite=True"):
        write_vectors(q, z["input_int"][1:2], out)
    write_vectors(q, z["input_int"][1:2], out, overwrite=True)
    np.testing.assert_array_equal(read_vectors(out)["l02_qlinear"]["output"], z["logits_int"][1:2])
    # a different model replaces every old file
    g = residual_graph()
    write_vectors(g, np.ones((1, 4, 4, 4), np.float32), out, overwrite=True)
    assert not any(f.startswith("l0") for f in os.listdir(out))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds 'notes.txt', which is not part of a previous"):
        write_vectors(q, z["input_int"][:1], out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("")
    with pytest.raises(FileExistsError, match="holds 'x', which is not part of a previous npquant-vectors set"):
        write_vectors(q, z["input_int"][:1], other, overwrite=True)
    with pytest.raises(FileNotFoundError, match="parent folder"):
        write_vectors(q, z["input_int"][:1], tmp_path / "missing" / "v")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        write_vectors(q, z["input_int"][:1], other / "x")
    with pytest.raises(TypeError, match="out_dir must be a path"):
        write_vectors(q, z["input_int"][:1], 3)


def test_a_failed_write_leaves_nothing(tmp_path, mlp_ptq, monkeypatch):
    q, z = mlp_ptq
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_vectors(q, z["input_int"][:1], tmp_path / "v")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    write_vectors(q, z["input_int"][:1], tmp_path / "v")
    calls.clear()
    monkeypatch.setattr(os, "fsync", failing_fsync)
    before = sorted(os.listdir(tmp_path / "v"))
    old = read_vectors(tmp_path / "v")
    with pytest.raises(OSError):
        write_vectors(q, z["input_int"][1:2], tmp_path / "v", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["v"] and sorted(os.listdir(tmp_path / "v")) == before
    np.testing.assert_array_equal(read_vectors(tmp_path / "v")["l00_qlinear"]["input"], old["l00_qlinear"]["input"])


def test_write_intermediates(tmp_path, mlp_ptq):
    q, z = mlp_ptq
    x = load_reference(REF / "mlp.npz").arrays["test_inputs"][:3]
    index = write_intermediates(q, x, tmp_path / "d")
    assert [t["name"] for t in index["tensors"]] == [
        "input",
        "input_codes",
        "l00_qlinear",
        "l01_qlinear",
        "l02_qlinear",
    ]
    files = {t["name"]: np.load(tmp_path / "d" / t["file"]) for t in index["tensors"]}
    np.testing.assert_array_equal(files["input_codes"], z["input_int"][:3])
    np.testing.assert_array_equal(files["l01_qlinear"], z["fc2.output_int"][:3])
    np.testing.assert_array_equal(files["l02_qlinear"], z["logits_int"][:3])
    assert index["tensors"][-1]["qparams"]["zero_point"] == int(z["logits.zero_point"])
    g = residual_graph()
    index = write_intermediates(g, np.ones((1, 4, 4, 4), np.float32), tmp_path / "g")
    assert [t["name"] for t in index["tensors"]] == list(g.tensors)
    assert [t["producer"] for t in index["tensors"]][:3] == [None, "in/quant", "block1/conv.0"]
    with pytest.raises(FileExistsError):
        write_intermediates(g, np.ones((1, 4, 4, 4), np.float32), tmp_path / "g")


# ---------------------------------------------------------------------------- commands


def test_cli_vectors_ptq_reference(tmp_path, capsys):
    z = np.load(REF / "mlp_ptq.npz")
    assert main(["vectors", str(REF / "mlp_ptq.npz"), "-o", str(tmp_path / "v"), "--index", "2"]) == 0
    out = capsys.readouterr().out
    assert "test sample 2 of" in out and "fp32 (fbgemm_float_bias)" in out and "l02_qlinear" in out
    m, got = check_set(tmp_path / "v")
    np.testing.assert_array_equal(got["l00_qlinear"]["input"], z["input_int"][2:3])
    np.testing.assert_array_equal(got["l02_qlinear"]["output"], z["logits_int"][2:3])
    # a non-empty folder: one error line, status 1; --overwrite replaces the set
    assert main(["vectors", str(REF / "mlp_ptq.npz"), "-o", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npquant vectors: error: --output ") and "--overwrite" in err and err.count("\n") == 1
    assert (
        main(
            [
                "vectors",
                str(REF / "mlp_ptq.npz"),
                "-o",
                str(tmp_path / "v"),
                "--overwrite",
                "--seed",
                "4",
                "--accumulation",
                "fbgemm_avx2",
            ]
        )
        == 0
    )
    assert "random codes, seed 4" in capsys.readouterr().out
    m = read_manifest(tmp_path / "v")
    assert m["layers"][0]["accumulation"]["mode"] == "fbgemm_avx2"
    assert m["layers"][0]["accumulation"]["int16_pair_saturation"] is True
    assert "vpmaddubsw" in m["layers"][0]["accumulation"]["acc"]


def test_cli_vectors_reference_model_and_input_file(tmp_path, capsys):
    x = load_reference(REF / "mlp.npz").arrays["test_inputs"][:4]
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "vectors",
                str(REF / "mlp.npz"),
                "-o",
                str(tmp_path / "v"),
                "--mode",
                "onnx",
                "--input",
                str(tmp_path / "x.npy"),
                "--index",
                "1",
            ]
        )
        == 0
    )
    assert "quantized by quantize_model: mode onnx" in capsys.readouterr().out
    m, got = check_set(tmp_path / "v")
    assert {e["requantization"]["mode"] for e in m["layers"]} == {"onnx"}
    check_recomputed(m, got)
    q = quantize_model(load_model(REF / "mlp.npz"), calibration_inputs(REF, "mlp"), mode="onnx")
    np.testing.assert_array_equal(got["l00_qlinear"]["input"], q.quantize_input(x[1:2]))
    np.testing.assert_array_equal(got["l02_qlinear"]["output"], q.run(q.quantize_input(x[1:2])))


def test_cli_vectors_graph_file(tmp_path, capsys):
    from npquant.models.graph import save_graph

    save_graph(tmp_path / "g.npz", residual_graph())
    assert main(["vectors", str(tmp_path / "g.npz"), "-o", str(tmp_path / "v")]) == 1
    assert "pass --shape N,C,H,W" in capsys.readouterr().err
    assert (
        main(["vectors", str(tmp_path / "g.npz"), "-o", str(tmp_path / "v"), "--shape", "1,4,4,4", "--seed", "9"]) == 0
    )
    m, got = check_set(tmp_path / "v")
    check_recomputed(m, got)
    assert m["model"]["type"] == "Graph" and m["model"]["name"] == "residual"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mode", "fp32"], "--mode quantizes a reference model; .* is a PyTorch PTQ reference"),
        (["--seed", "1", "--index", "2"], "--index selects a sample"),
        (["--shape", "1,64", "--index", "2"], "--index selects a sample"),
        (["--shape", "1,64", "--input", "x.npy"], "--shape is the shape of a random input"),
        (["--seed", "1", "--input", "x.npy"], "not allowed with argument"),
    ],
)
def test_cli_vectors_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["vectors", str(REF / "mlp_ptq.npz"), "-o", str(tmp_path / "v"), *argv])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "v").exists()


def test_cli_vectors_refuses_weights_only_files_and_float_graphs(tmp_path, capsys):
    assert main(["vectors", str(REF / "digits_split.npz"), "-o", str(tmp_path / "v")]) == 1
    assert "a state dict (weights without an architecture)" in capsys.readouterr().err
    from npquant.models.graph import Graph, Node, save_graph

    fg = Graph([Node("fc", "linear", ["x"], ["y"], params={"weight": np.ones((2, 3), np.float32)})], ["x"], ["y"])
    save_graph(tmp_path / "f.npz", fg)
    assert main(["vectors", str(tmp_path / "f.npz"), "-o", str(tmp_path / "v")]) == 1
    assert "a float graph; golden vectors are of integer graphs" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_cli_run(tmp_path, capsys):
    z = np.load(REF / "mlp_ptq.npz")
    x = load_reference(REF / "mlp.npz").arrays["test_inputs"][:3]
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "run",
                str(REF / "mlp_ptq.npz"),
                "--input",
                str(tmp_path / "x.npy"),
                "--top",
                "3",
                "-o",
                str(tmp_path / "y.npy"),
                "--dump",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "top-3" in out and "top-4" not in out and "uint8 codes, scores S (code - Z)" in out
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), z["logits_int"][:3])
    index = json.loads((tmp_path / "d" / "tensors.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "d" / index["tensors"][-1]["file"]), z["logits_int"][:3])
    # the float reference model, and its top classes
    assert (
        main(
            [
                "run",
                str(REF / "mlp.npz"),
                "--input",
                str(tmp_path / "x.npy"),
                "--top",
                "1",
                "-o",
                str(tmp_path / "f.npz"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    logits = load_model(REF / "mlp.npz")(x)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npz")["output"], logits)
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [(int(r[0]), int(r[1])) for r in rows] == list(enumerate(logits.argmax(1)))
    # a graph file
    from npquant.models.graph import save_graph

    save_graph(tmp_path / "g.npz", residual_graph())
    np.save(tmp_path / "gx.npy", np.ones((2, 4, 4, 4), np.float32))
    assert (
        main(["run", str(tmp_path / "g.npz"), "--input", str(tmp_path / "gx.npy"), "--dump", str(tmp_path / "gd")]) == 0
    )
    assert "output 'logits': shape (2, 3), float32 values" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "gd")) == len(residual_graph().tensors) + 1


def test_cli_run_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    assert main(["run", str(REF / "mlp.npz"), "--input", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npquant run: error: ") and "64" in err
    (tmp_path / "bad.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, "
        b"'shape': (1000000, 64), }" + b" " * 51 + b"\n" + b"\0" * 8
    )
    assert main(["run", str(REF / "mlp.npz"), "--input", str(tmp_path / "bad.npy")]) == 1
    assert "declares <f4 of shape (1000000, 64)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", str(REF / "mlp.npz"), "--input", str(tmp_path / "x.npy"), "--accumulation", "fbgemm"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["run", str(REF / "mlp.npz"), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.txt")])
    assert e.value.code == 2


def test_cli_help_describes_the_options():
    import npquant.app.cli as cli

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    vectors = " ".join(subs.choices["vectors"].format_help().split())
    for text in (
        "--input X",
        "--seed SEED",
        "--index K",
        "--shape N,C,H,W",
        "--mode",
        "--overwrite",
        "$readmemh",
        "manifest.json",
        "default tflite",
        "test sample 0",
        "seed 0",
    ):
        assert text in vectors, text
    run = " ".join(subs.choices["run"].format_help().split())
    for text in ("--input X", "--top K", "--dump DIR", "tensors.json", "default 5", ".npy", ".npz"):
        assert text in run, text
