"""Train the reference models on scikit-learn's digits and export them as .npz golden files.

    python reference_models/export.py            # rewrite the package data, npquant/data/
    python reference_models/export.py --out DIR  # write them into DIR instead

The files are the package data of npquant (``npquant/data/`` of this clone, shipped in the
wheel and found at run time through ``npquant.app.demo.default_models_dir()``); this script,
which needs PyTorch, stays in the repository.

Writes, for each model NAME in ``MODELS``:

- ``NAME.npz``      the float model: weights under their PyTorch state-dict names, the
                    architecture (``__arch__``), the test inputs and labels, PyTorch's float
                    logits, and ``__meta__``;
- ``NAME_ptq.npz``  PyTorch's own post-training-quantized model (eager mode, fbgemm engine,
                    ``get_default_qconfig("fbgemm")``, BN fused into conv, calibrated on the
                    calibration split): integer weights, scales, zero points, float biases,
                    every quantized layer's uint8 outputs, the quantized logits;

and once ``digits_split.npz``, the indices of the fixed train / calibration / test split.
The format is documented in ``reference_models/README.md``.

Determinism: everything is seeded, torch runs on one thread with deterministic algorithms,
and the environment below pins the CPU code paths (ATen's kernels at their portable
``default`` level, MKL in its conditional-numerical-reproducibility mode, oneDNN and
NNPACK off, so that convolutions are im2col + MKL GEMM). The .npz files are written with
fixed zip timestamps, so the same arrays give the same bytes. The environment is set
before torch is imported; run this file as a script (or in a fresh process).
"""

import os
import sys

# Must be set before torch (and MKL inside it) is loaded.
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
if "torch" in sys.modules:  # pragma: no cover - only when imported into a live session
    print(
        "warning: torch was imported before export.py; the pinned environment "
        "(ATEN_CPU_CAPABILITY, MKL_CBWR) does not apply",
        file=sys.stderr,
    )
os.environ.update(PINNED_ENV)

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch_arch import build  # noqa: E402  (this folder is on sys.path when run as a script)


# ---------------------------------------------------------------------------------------
# The fixed split. load_digits: 1,797 images of 8x8 pixels with values 0..16.
# Inputs are pixels / 16 as float32. Two stratified train_test_split calls:
#   1. all 1,797 -> rest (1,347) + test (450),          stratify=labels,       random_state=0
#   2. rest      -> train (1,078) + calibration (269),  stratify=rest labels,  random_state=0
# Each index array is then sorted ascending, so test_inputs are in dataset order.
# ---------------------------------------------------------------------------------------
def export_cpu() -> dict:
    """The CPU class of this export: vendor and the ISA extensions that choose PyTorch's
    fbgemm and MKL code paths (Linux ``/proc/cpuinfo``; ``"unknown"`` elsewhere). The
    fresh-export test compares bit for bit only on the same class."""
    info = {"vendor": "unknown", "avx2": False, "avx512f": False, "avx512_vnni": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "vendor_id":
            info["vendor"] = val.strip()
        elif key.strip() == "flags":
            flags = set(val.split())
            for f in ("avx2", "avx512f", "avx512_vnni"):
                info[f] = f in flags
            break
    return info


SPLIT_SEED = 0
N_TEST = 450
N_CALIBRATION = 269
N_TRAIN = 1078
PIXEL_SCALE = 16.0

# Training: the same for every model except where MODELS says otherwise.
TORCH_SEED = 0  # torch.manual_seed before building each model
SHUFFLE_SEED = 1  # seeds the torch.Generator that shuffles the training set each epoch
BATCH_SIZE = 32
ENGINE = "fbgemm"
QCONFIG_NAME = ENGINE  # torch.ao.quantization.get_default_qconfig(QCONFIG_NAME)
FORMAT_VERSION = 1


def _linear(name, i, o):
    return {"type": "linear", "name": name, "in_features": i, "out_features": o, "bias": True}


def _conv(name, i, o):
    return {
        "type": "conv2d",
        "name": name,
        "in_channels": i,
        "out_channels": o,
        "kernel_size": [3, 3],
        "stride": [1, 1],
        "padding": [1, 1],
        "dilation": [1, 1],
        "groups": 1,
        "bias": False,
    }


def _bn(name, c):
    return {"type": "batchnorm2d", "name": name, "num_features": c, "eps": 1e-05, "momentum": 0.1}


def _pool(name):
    return {
        "type": "maxpool2d",
        "name": name,
        "kernel_size": [2, 2],
        "stride": [2, 2],
        "padding": [0, 0],
        "dilation": [1, 1],
        "ceil_mode": False,
    }


def _relu(name):
    return {"type": "relu", "name": name}


MODELS = OrderedDict(
    [
        (
            "mlp",
            {
                "arch": {
                    "name": "mlp",
                    "input_shape": [64],
                    "num_classes": 10,
                    "layers": [
                        _linear("fc1", 64, 128),
                        _relu("relu1"),
                        _linear("fc2", 128, 64),
                        _relu("relu2"),
                        _linear("fc3", 64, 10),
                    ],
                },
                "epochs": 60,
                "lr": 1e-3,
            },
        ),
        (
            "lenet_300_100",
            {
                "arch": {
                    "name": "lenet_300_100",
                    "input_shape": [64],
                    "num_classes": 10,
                    "layers": [
                        _linear("fc1", 64, 300),
                        _relu("relu1"),
                        _linear("fc2", 300, 100),
                        _relu("relu2"),
                        _linear("fc3", 100, 10),
                    ],
                },
                "epochs": 60,
                "lr": 1e-3,
            },
        ),
        (
            "cnn",
            {
                "arch": {
                    "name": "cnn",
                    "input_shape": [1, 8, 8],
                    "num_classes": 10,
                    "layers": [
                        _conv("conv1", 1, 8),
                        _bn("bn1", 8),
                        _relu("relu1"),
                        _pool("pool1"),
                        _conv("conv2", 8, 16),
                        _bn("bn2", 16),
                        _relu("relu2"),
                        _pool("pool2"),
                        {"type": "flatten", "name": "flatten", "start_dim": 1},
                        _linear("fc", 64, 10),
                    ],
                },
                "epochs": 60,
                "lr": 3e-3,
            },
        ),
    ]
)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def load_split():
    """(x, y, split): x float32 (1797, 64) in [0, 1], y int64, split dict of sorted indices."""
    digits = load_digits()
    x = (digits.data / PIXEL_SCALE).astype(np.float32)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=N_TEST, stratify=y, random_state=SPLIT_SEED)
    train, cal = train_test_split(rest, test_size=N_CALIBRATION, stratify=y[rest], random_state=SPLIT_SEED)
    split = {
        "train_index": np.sort(train).astype(np.int64),
        "calibration_index": np.sort(cal).astype(np.int64),
        "test_index": np.sort(test).astype(np.int64),
    }
    assert [len(split[k]) for k in ("train_index", "calibration_index", "test_index")] == [
        N_TRAIN,
        N_CALIBRATION,
        N_TEST,
    ]
    return x, y, split


def _inputs(x, arch):
    return x.reshape((len(x), *arch["input_shape"]))


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def train(arch, cfg, xtr, ytr):
    torch.manual_seed(TORCH_SEED)
    model = build(arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(SHUFFLE_SEED)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), BATCH_SIZE):
            b = perm[s : s + BATCH_SIZE]
            opt.zero_grad()
            loss_fn(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    return model


def fusion_groups(arch):
    """[[conv, bn(, relu)], [linear, relu], ...] in the order of the layers."""
    layers, groups, i = arch["layers"], [], 0
    while i < len(layers):
        t = layers[i]["type"]
        if t in ("linear", "conv2d"):
            g = [layers[i]["name"]]
            j = i + 1
            if t == "conv2d" and j < len(layers) and layers[j]["type"] == "batchnorm2d":
                g.append(layers[j]["name"])
                j += 1
            if j < len(layers) and layers[j]["type"] == "relu":
                g.append(layers[j]["name"])
                j += 1
            if len(g) > 1:
                groups.append(g)
            i = j
        else:
            i += 1
    return groups


def fused_arch(arch):
    """The architecture after fusion: bn and relu folded into the layer before them."""
    out, layers, i = [], arch["layers"], 0
    while i < len(layers):
        L = dict(layers[i])
        i += 1
        if L["type"] in ("linear", "conv2d"):
            if L["type"] == "conv2d":
                L["fused_bn"] = False
                if i < len(layers) and layers[i]["type"] == "batchnorm2d":
                    L["fused_bn"], L["bias"] = True, True
                    i += 1
            L["activation"] = None
            if i < len(layers) and layers[i]["type"] == "relu":
                L["activation"] = "relu"
                i += 1
        elif L["type"] in ("relu", "batchnorm2d"):
            raise ValueError(f"cannot fuse {L['name']}: no linear/conv before it")
        out.append(L)
    return {"name": arch["name"], "input_shape": arch["input_shape"], "num_classes": arch["num_classes"], "layers": out}


def quantize_ptq(model, arch, xcal):
    """PyTorch eager-mode PTQ; returns the converted model (quant stub, layers, dequant)."""
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, fuse_modules, get_default_qconfig, prepare

    m = copy.deepcopy(model).eval()
    fuse_modules(m, fusion_groups(arch), inplace=True)
    q = nn.Sequential(OrderedDict([("quant", QuantStub()), *m.named_children(), ("dequant", DeQuantStub())]))
    q.eval()
    q.qconfig = get_default_qconfig(QCONFIG_NAME)
    prepare(q, inplace=True)
    with torch.no_grad():
        q(torch.from_numpy(xcal))  # one calibration batch: the whole calibration split
    convert(q, inplace=True)
    return q


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------
def _json(obj):
    return np.array(json.dumps(obj, sort_keys=False, separators=(",", ":")))


def write_npz(path, arrays):
    """np.savez_compressed-compatible, but byte-reproducible: fixed zip timestamps, and
    atomic: written to a temporary name in the same folder, then renamed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for key, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=9)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _f64(v):
    return np.float64(float(v))


def _i64(v):
    return np.int64(int(v))


def export_model(name, cfg, x, y, split, out_dir):
    arch = cfg["arch"]
    xtr = _inputs(x[split["train_index"]], arch)
    xcal = _inputs(x[split["calibration_index"]], arch)
    xte = _inputs(x[split["test_index"]], arch)
    ytr, yte = y[split["train_index"]], y[split["test_index"]]

    t0 = time.perf_counter()
    model = train(arch, cfg, xtr, ytr)
    t_train = time.perf_counter() - t0
    with torch.no_grad():
        logits = model(torch.from_numpy(xte)).numpy().astype(np.float32)
    acc = float((logits.argmax(1) == yte).mean())

    sd = model.state_dict()
    float_meta = {
        "format_version": FORMAT_VERSION,
        "kind": "float",
        "model": name,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "sklearn_version": sklearn.__version__,
        "dataset": "sklearn.datasets.load_digits, pixels / 16, float32",
        "split": {
            "seed": SPLIT_SEED,
            "train": N_TRAIN,
            "calibration": N_CALIBRATION,
            "test": N_TEST,
            "file": "digits_split.npz",
        },
        "training": {
            "optimizer": "Adam",
            "lr": cfg["lr"],
            "epochs": cfg["epochs"],
            "batch_size": BATCH_SIZE,
            "loss": "CrossEntropyLoss",
            "torch_seed": TORCH_SEED,
            "shuffle_seed": SHUFFLE_SEED,
            "threads": 1,
        },
        "pinned_env": PINNED_ENV,
        "export_cpu": export_cpu(),
        "test_accuracy": acc,
        "test_correct": int((logits.argmax(1) == yte).sum()),
    }
    arrays = OrderedDict([("__arch__", _json(arch)), ("__meta__", _json(float_meta))])
    for k, v in sd.items():
        arrays[k] = v.detach().numpy().copy()
    arrays["test_inputs"] = xte
    arrays["test_labels"] = yte
    arrays["float_logits"] = logits
    write_npz(Path(out_dir) / f"{name}.npz", arrays)

    # ---- PyTorch PTQ -------------------------------------------------------------------
    # Quantized ops refuse use_deterministic_algorithms (quantized_resize_cpu_ would fill
    # fresh memory); on one thread they are deterministic, so the flag is lifted here.
    torch.use_deterministic_algorithms(False)
    q = quantize_ptq(model, arch, xcal)
    farch = fused_arch(arch)
    qlayers = [L["name"] for L in farch["layers"] if L["type"] in ("linear", "conv2d")]
    outs = {}
    hooks = [
        getattr(q, n).register_forward_hook(lambda mod, inp, out, n=n: outs.__setitem__(n, out))
        for n in ["quant", *qlayers]
    ]
    with torch.no_grad():
        deq = q(torch.from_numpy(xte))
    for h in hooks:
        h.remove()
    torch.use_deterministic_algorithms(True)
    qlog = outs[qlayers[-1]]
    logits_int = qlog.int_repr().numpy()
    ptq_acc = float((logits_int.argmax(1) == yte).mean())

    from torch.ao.quantization import get_default_qconfig

    qconfig = get_default_qconfig(QCONFIG_NAME)
    ptq_meta = {
        "format_version": FORMAT_VERSION,
        "kind": "ptq",
        "model": name,
        "torch_version": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "workflow": "eager mode: torch.ao.quantization fuse_modules, prepare, convert",
        "qconfig": f"torch.ao.quantization.get_default_qconfig({QCONFIG_NAME!r})",
        "qconfig_repr": repr(qconfig),
        "activation": "quint8, per-tensor affine, HistogramObserver(reduce_range=True): "
        "scale chosen for codes [0, 127], outputs stored in [0, 255]",
        "weight": "qint8, per-channel symmetric along axis 0, PerChannelMinMaxObserver, "
        "codes [-128, 127], zero points 0",
        "calibration": f"calibration split ({N_CALIBRATION} images), one forward pass, one batch",
        "fusion_groups": fusion_groups(arch),
        "threads": 1,
        "pinned_env": PINNED_ENV,
        "export_cpu": export_cpu(),
        "float_test_accuracy": acc,
        "test_accuracy": ptq_acc,
        "test_correct": int((logits_int.argmax(1) == yte).sum()),
    }
    qa = OrderedDict([("__arch__", _json(farch)), ("__meta__", _json(ptq_meta))])
    qa["input.scale"] = _f64(q.quant.scale)
    qa["input.zero_point"] = _i64(q.quant.zero_point)
    qa["input_int"] = outs["quant"].int_repr().numpy()
    for n in qlayers:
        mod = getattr(q, n)
        w = mod.weight()
        # The observer is per_channel_symmetric; the quantized tensor reports
        # per_channel_affine with all zero points 0.
        assert w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        assert w.q_per_channel_axis() == 0 and w.dtype == torch.qint8
        assert not w.q_per_channel_zero_points().any()
        qa[f"{n}.weight_int"] = w.int_repr().numpy()
        qa[f"{n}.weight_scale"] = w.q_per_channel_scales().numpy().astype(np.float64)
        qa[f"{n}.weight_zero_point"] = w.q_per_channel_zero_points().numpy().astype(np.int64)
        qa[f"{n}.bias"] = mod.bias().detach().numpy().astype(np.float32)
        qa[f"{n}.scale"] = _f64(mod.scale)
        qa[f"{n}.zero_point"] = _i64(mod.zero_point)
        qa[f"{n}.output_int"] = outs[n].int_repr().numpy()
    qa["logits_int"] = logits_int
    qa["logits.scale"] = _f64(qlog.q_scale())
    qa["logits.zero_point"] = _i64(qlog.q_zero_point())
    qa["logits_dequantized"] = deq.numpy().astype(np.float32)
    write_npz(Path(out_dir) / f"{name}_ptq.npz", qa)
    return acc, ptq_acc, t_train


def main(argv=None):
    # The package data of the clone this script is in (not of an installed npquant).
    data = Path(__file__).resolve().parents[1] / "npquant" / "data"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=data, help="output folder (default: %(default)s)")
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="export only these models")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    torch.backends.quantized.engine = ENGINE

    t0 = time.perf_counter()
    x, y, split = load_split()
    write_npz(
        args.out / "digits_split.npz",
        OrderedDict(
            [
                (
                    "__meta__",
                    _json(
                        {
                            "format_version": FORMAT_VERSION,
                            "dataset": "sklearn.datasets.load_digits",
                            "pixel_scale": PIXEL_SCALE,
                            "seed": SPLIT_SEED,
                            "sklearn_version": sklearn.__version__,
                            "method": "train_test_split(all, test_size=450, stratify, random_state=0) then "
                            "train_test_split(rest, test_size=269, stratify, random_state=0); "
                            "indices sorted",
                        }
                    ),
                ),
                *split.items(),
            ]
        ),
    )
    print(f"split: train {N_TRAIN}, calibration {N_CALIBRATION}, test {N_TEST} (seed {SPLIT_SEED})")
    print(f"{'model':15s} {'float acc':>9s} {'PTQ acc':>9s} {'train s':>8s} {'float KB':>9s} {'ptq KB':>8s}")
    for name, cfg in MODELS.items():
        if args.only and name not in args.only:
            continue
        acc, pacc, tt = export_model(name, cfg, x, y, split, args.out)
        s1 = (args.out / f"{name}.npz").stat().st_size / 1024
        s2 = (args.out / f"{name}_ptq.npz").stat().st_size / 1024
        print(f"{name:15s} {100 * acc:8.2f}% {100 * pacc:8.2f}% {tt:8.1f} {s1:9.1f} {s2:8.1f}")
    total = sum(p.stat().st_size for p in args.out.glob("*.npz"))
    print(f"total .npz size {total / 1024:.1f} KB; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
