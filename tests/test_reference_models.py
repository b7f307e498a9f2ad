"""The golden files (npquant's package data, npquant/data/, made by reference_models/export.py):
format, consistency, and reproduction by export.py.

Without PyTorch: every file loads with NumPy (no pickle), ``__arch__`` matches the arrays,
the split is the documented one, a plain-NumPy float forward pass reproduces PyTorch's
float logits, the accuracies stated in ``__meta__`` and in the README are those of the
stored logits. With PyTorch: a fresh export into a temporary folder gives every array
bit for bit (slow: it trains three models).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npquant.app.demo import default_models_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "reference_models"  # export.py and the README (in the repository only)
REF = default_models_dir()  # the .npz files: npquant's package data, wherever it is installed
MODELS = ["mlp", "lenet_300_100", "cnn"]
FILES = ["digits_split.npz"] + [f"{m}{s}.npz" for m in MODELS for s in ("", "_ptq")]
SPLIT = {"train_index": 1078, "calibration_index": 269, "test_index": 450}


def _load(name):
    with np.load(REF / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _json(d, key):
    return json.loads(str(d[key][()]))


# ---------------------------------------------------------------------------------------
# plain NumPy float layers (float64), NCHW / OIHW as PyTorch
# ---------------------------------------------------------------------------------------
def _conv2d(x, w, b, stride, padding, dilation, groups):
    assert groups == 1 and tuple(dilation) == (1, 1)
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw]  # (n, c, oh, ow)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def _maxpool2d(x, L):
    assert L["padding"] == [0, 0] and L["kernel_size"] == L["stride"] and not L["ceil_mode"]
    kh, kw = L["kernel_size"]
    n, c, h, w = x.shape
    x = x[:, :, : h // kh * kh, : w // kw * kw]
    return x.reshape(n, c, h // kh, kh, w // kw, kw).max(axis=(3, 5))


def float_forward(arch, p, x):
    x = x.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in p.items() if v.dtype.kind == "f"}
    for L in arch["layers"]:
        t, n = L["type"], L.get("name")
        if t == "linear":
            x = x @ p[f"{n}.weight"].T + (p[f"{n}.bias"] if L["bias"] else 0)
        elif t == "conv2d":
            x = _conv2d(
                x,
                p[f"{n}.weight"],
                p.get(f"{n}.bias") if L["bias"] else None,
                L["stride"],
                L["padding"],
                L["dilation"],
                L["groups"],
            )
        elif t == "batchnorm2d":
            s = p[f"{n}.weight"] / np.sqrt(p[f"{n}.running_var"] + L["eps"])
            x = (x - p[f"{n}.running_mean"][None, :, None, None]) * s[None, :, None, None] + p[f"{n}.bias"][
                None, :, None, None
            ]
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "maxpool2d":
            x = _maxpool2d(x, L)
        elif t == "flatten":
            x = x.reshape(*x.shape[: L["start_dim"]], -1)
        else:
            raise AssertionError(f"unknown layer type {t}")
    return x


def _param_shapes(L):
    t, n = L["type"], L["name"]
    if t == "linear":
        s = {f"{n}.weight": (L["out_features"], L["in_features"])}
        if L["bias"]:
            s[f"{n}.bias"] = (L["out_features"],)
        return s
    if t == "conv2d":
        s = {f"{n}.weight": (L["out_channels"], L["in_channels"] // L["groups"], *L["kernel_size"])}
        if L["bias"]:
            s[f"{n}.bias"] = (L["out_channels"],)
        return s
    if t == "batchnorm2d":
        c = (L["num_features"],)
        return {
            f"{n}.weight": c,
            f"{n}.bias": c,
            f"{n}.running_mean": c,
            f"{n}.running_var": c,
            f"{n}.num_batches_tracked": (),
        }
    return {}


# ---------------------------------------------------------------------------------------
# without PyTorch
# ---------------------------------------------------------------------------------------
def test_files_exist_and_are_small():
    sizes = {f: (REF / f).stat().st_size for f in FILES}
    assert sum(sizes.values()) < 5 * 2**20, sizes
    assert (SCRIPTS / "export.py").is_file() and (SCRIPTS / "README.md").is_file()


def test_split_is_the_documented_one():
    from sklearn.datasets import load_digits

    s = _load("digits_split.npz")
    allidx = []
    for k, n in SPLIT.items():
        assert s[k].dtype == np.int64 and s[k].shape == (n,)
        assert np.all(np.diff(s[k]) > 0)
        allidx.append(s[k])
    np.testing.assert_array_equal(np.sort(np.concatenate(allidx)), np.arange(1797))
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    for m in MODELS:
        d = _load(f"{m}.npz")
        arch = _json(d, "__arch__")
        np.testing.assert_array_equal(d["test_inputs"].reshape(450, 64), x[s["test_index"]])
        np.testing.assert_array_equal(d["test_labels"], digits.target[s["test_index"]])
        assert d["test_inputs"].shape == (450, *arch["input_shape"])
    # stratified: every class is in every part, in proportion (within one image)
    for k, n in SPLIT.items():
        counts = np.bincount(digits.target[s[k]], minlength=10)
        expect = np.bincount(digits.target, minlength=10) * n / 1797
        assert np.all(np.abs(counts - expect) <= 1.0), (k, counts)


@pytest.mark.parametrize("model", MODELS)
def test_float_file_format(model):
    d = _load(f"{model}.npz")
    arch, meta = _json(d, "__arch__"), _json(d, "__meta__")
    assert arch["name"] == model and meta["model"] == model and meta["kind"] == "float"
    want = {}
    for L in arch["layers"]:
        want.update(_param_shapes(L))
    params = {
        k: v for k, v in d.items() if not k.startswith("__") and k not in ("test_inputs", "test_labels", "float_logits")
    }
    assert set(params) == set(want)
    for k, v in params.items():
        assert v.shape == want[k], k
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
        assert np.all(np.isfinite(v)), k
    n = len(d["test_labels"])
    assert d["test_inputs"].dtype == np.float32 and d["test_inputs"].shape == (n, *arch["input_shape"])
    assert d["test_labels"].dtype == np.int64
    assert d["float_logits"].dtype == np.float32 and d["float_logits"].shape == (n, arch["num_classes"])


@pytest.mark.parametrize("model", MODELS)
def test_numpy_forward_reproduces_float_logits(model):
    d = _load(f"{model}.npz")
    arch = _json(d, "__arch__")
    got = float_forward(arch, d, d["test_inputs"])
    np.testing.assert_allclose(got, d["float_logits"], rtol=0, atol=1e-5)


def _readme_rows():
    rows = {}
    for line in (SCRIPTS / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|.*?\|\s*([\d.]+) %\s*\|\s*([\d.]+) %\s*\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


@pytest.mark.parametrize("model", MODELS)
def test_stated_accuracy_matches_logits(model):
    d, q = _load(f"{model}.npz"), _load(f"{model}_ptq.npz")
    y = d["test_labels"]
    acc = float((d["float_logits"].argmax(1) == y).mean())
    qacc = float((q["logits_int"].argmax(1) == y).mean())
    assert _json(d, "__meta__")["test_accuracy"] == acc
    assert _json(q, "__meta__")["test_accuracy"] == qacc
    assert _json(q, "__meta__")["float_test_accuracy"] == acc
    assert _readme_rows()[model] == (f"{100 * acc:.2f}", f"{100 * qacc:.2f}")
    assert acc >= 0.95


def _f32_exact(a):
    return np.array_equal(np.asarray(a, np.float64).astype(np.float32).astype(np.float64), a)


@pytest.mark.parametrize("model", MODELS)
def test_ptq_file_format(model):
    d, q = _load(f"{model}.npz"), _load(f"{model}_ptq.npz")
    arch, farch, meta = _json(d, "__arch__"), _json(q, "__arch__"), _json(q, "__meta__")
    assert meta["quantized_engine"] == "fbgemm" and meta["kind"] == "ptq"
    assert "torch_version" in meta
    n = len(d["test_labels"])
    # fused architecture: no bn / relu layers left; folded into conv / linear
    types = [L["type"] for L in farch["layers"]]
    assert "batchnorm2d" not in types and "relu" not in types
    unfused = [L for L in arch["layers"] if L["type"] in ("linear", "conv2d")]
    fused = [L for L in farch["layers"] if L["type"] in ("linear", "conv2d")]
    assert [L["name"] for L in unfused] == [L["name"] for L in fused]

    def scalar(key, dtype):
        assert q[key].shape == () and q[key].dtype == dtype, key
        return q[key][()]

    assert _f32_exact(scalar("input.scale", np.float64)) and scalar("input.scale", np.float64) > 0
    assert 0 <= scalar("input.zero_point", np.int64) <= 255
    assert q["input_int"].dtype == np.uint8 and q["input_int"].shape == d["test_inputs"].shape
    # the input codes are PyTorch's quantization of the float test inputs
    s, z = np.float32(q["input.scale"]), int(q["input.zero_point"])
    approx = np.clip(np.round(d["test_inputs"] / s) + z, 0, 255)
    assert np.abs(approx - q["input_int"]).max() <= 1

    expected_keys = {
        "__arch__",
        "__meta__",
        "input.scale",
        "input.zero_point",
        "input_int",
        "logits_int",
        "logits.scale",
        "logits.zero_point",
        "logits_dequantized",
    }
    for L in fused:
        nm = L["name"]
        o = L["out_features"] if L["type"] == "linear" else L["out_channels"]
        wshape = _param_shapes({**L, "bias": False})[f"{nm}.weight"]
        wi = q[f"{nm}.weight_int"]
        assert wi.dtype == np.int8 and wi.shape == wshape
        ws = q[f"{nm}.weight_scale"]
        assert ws.dtype == np.float64 and ws.shape == (o,) and np.all(ws > 0) and _f32_exact(ws)
        wz = q[f"{nm}.weight_zero_point"]
        assert wz.dtype == np.int64 and wz.shape == (o,) and not wz.any()
        # symmetric per-channel, PyTorch style: scale = max|w| / 127.5, so each channel's
        # largest |w| lands on 127 or 128 (-128 is used)
        assert np.all(np.abs(wi.reshape(o, -1).astype(np.int16)).max(axis=1) >= 127)
        assert q[f"{nm}.bias"].dtype == np.float32 and q[f"{nm}.bias"].shape == (o,)
        assert _f32_exact(scalar(f"{nm}.scale", np.float64)) and q[f"{nm}.scale"] > 0
        assert 0 <= scalar(f"{nm}.zero_point", np.int64) <= 255
        out = q[f"{nm}.output_int"]
        assert out.dtype == np.uint8 and out.shape[0] == n
        if L["activation"] == "relu":
            assert q[f"{nm}.zero_point"] == 0  # ReLU output: range [0, max], zero point 0
        assert L["activation"] in (None, "relu")
        if L["type"] == "conv2d":
            assert L["fused_bn"] is True and L["bias"] is True
        expected_keys |= {
            f"{nm}.{k}"
            for k in ("weight_int", "weight_scale", "weight_zero_point", "bias", "scale", "zero_point", "output_int")
        }
        # dequantized integer weights are close to the float ones (unfused layers only)
        if not L.get("fused_bn"):
            wf = d[f"{nm}.weight"]
            deq = wi * ws.reshape(-1, *[1] * (wi.ndim - 1))
            assert np.all(np.abs(deq - wf) <= ws.reshape(-1, *[1] * (wi.ndim - 1)) / 2 * 1.0001)
    assert set(q) == expected_keys
    last = fused[-1]["name"]
    np.testing.assert_array_equal(q["logits_int"], q[f"{last}.output_int"])
    assert q["logits_int"].dtype == np.uint8 and q["logits_int"].shape == (n, farch["num_classes"])
    assert q["logits.scale"] == q[f"{last}.scale"] and q["logits.zero_point"] == q[f"{last}.zero_point"]
    deq = (q["logits_int"].astype(np.float32) - np.float32(q["logits.zero_point"])) * np.float32(q["logits.scale"])
    np.testing.assert_array_equal(q["logits_dequantized"], deq)
    # the quantized model agrees with the float one on almost every test image
    agree = (q["logits_int"].argmax(1) == d["float_logits"].argmax(1)).mean()
    assert agree >= 0.97


# ---------------------------------------------------------------------------------------
# with PyTorch
# ---------------------------------------------------------------------------------------
@pytest.mark.slow  # trains three models (about 15-25 s)
def test_fresh_export_reproduces_checked_in_files(tmp_path):
    """A fresh export equals the checked-in files bit for bit on a CPU of the class that
    made them (``__meta__["export_cpu"]``: vendor, AVX2, AVX-512, AVX-512 VNNI).

    On another class, PyTorch's results may change (MKL's and libm's code paths, and
    fbgemm's int16 pair saturation without VNNI), so the test compares precisely this:
    bit for bit, the split, the architecture, the test inputs and labels, the metadata
    but for versions, accuracies and the CPU, and every array's key, dtype and shape;
    within the export's own files, npquant's NumPy forward reproduces the fresh float
    logits (1e-5) and ``from_pytorch_ptq(accumulation="fbgemm")`` every fresh integer
    output bit for bit; and each accuracy is within 2 points of the recorded one.
    """
    torch = pytest.importorskip("torch")
    recorded = _json(_load("mlp.npz"), "__meta__")["torch_version"]
    if torch.__version__ != recorded:
        pytest.skip(f"files were exported with torch {recorded}, this is {torch.__version__}")
    # A fresh process: export.py pins the environment (ATEN_CPU_CAPABILITY, MKL_CBWR)
    # before importing torch and sets torch's global flags; neither may leak into this one.
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "export.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    same_cpu = (
        _json(_load("mlp.npz"), "__meta__")["export_cpu"]
        == _json(dict(np.load(tmp_path / "mlp.npz")), "__meta__")["export_cpu"]
    )
    volatile = (
        "sklearn_version",
        "numpy_version",
        "export_cpu",
        "test_accuracy",
        "test_correct",
        "float_test_accuracy",
    )
    for f in FILES:
        new, old = _load(tmp_path / f), _load(f)
        assert list(new) == list(old), f
        for k in old:
            if k == "__meta__":
                mo, mn = _json(old, k), _json(new, k)
                for key in volatile:
                    vo, vn = mo.pop(key, None), mn.pop(key, None)
                    if key.endswith("accuracy") and vo is not None:
                        assert abs(vo - vn) <= 0.02, (f, key, vo, vn)
                    elif same_cpu and key in ("test_correct", "export_cpu"):
                        assert vo == vn, (f, key)
                assert mo == mn, f
                continue
            assert new[k].dtype == old[k].dtype and new[k].shape == old[k].shape, (f, k)
            data = f == "digits_split.npz" or k in ("__arch__", "test_inputs", "test_labels")
            if same_cpu or data:
                np.testing.assert_array_equal(new[k], old[k], err_msg=f"{f}:{k}")
    if same_cpu:
        return
    from npquant.models.convert import from_pytorch_ptq

    for m in MODELS:  # another CPU class: the fresh files agree with themselves
        d = dict(np.load(tmp_path / f"{m}.npz"))
        got = float_forward(_json(d, "__arch__"), d, d["test_inputs"])
        np.testing.assert_allclose(got, d["float_logits"], rtol=0, atol=1e-5)
        z = dict(np.load(tmp_path / f"{m}_ptq.npz"))
        q = from_pytorch_ptq(z, accumulation="fbgemm")
        h = q.quantize_input(d["test_inputs"])
        np.testing.assert_array_equal(h, z["input_int"])
        for layer, spec in zip(q.layers, _json(z, "__arch__")["layers"]):
            h = layer(h)
            if f"{spec.get('name')}.output_int" in z:
                np.testing.assert_array_equal(h, z[f"{spec.get('name')}.output_int"], err_msg=m)
        np.testing.assert_array_equal(h, z["logits_int"])
