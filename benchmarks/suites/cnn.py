"""The integer CNN end to end: the reference CNN (``npquant/data/cnn_ptq.npz``) on a batch.

conv1 3x3 (1 -> 8) + ReLU, max pool, conv2 3x3 (8 -> 16) + ReLU, max pool, fc (64 -> 10),
8x8 digits. Both sides run the same integer model, from float32 input images to the
uint8 codes of the logits:

* ``numba`` -- ``npquant.models.convert.from_pytorch_ptq`` (``mode="fp32"`` with fbgemm's float
  bias, ``accumulation="fbgemm"``: the path torch takes in this process),
  ``model.run(model.quantize_input(x))``, numba backend;
* ``numpy`` -- the same model with every layer on ``backend="numpy"`` (the twins);
* ``torch`` -- PyTorch's quantized modules (``ConvReLU2d``, ``MaxPool2d``, ``Linear``,
  fbgemm engine) built from the same integer weights, scales and zero points, after
  ``torch.quantize_per_tensor`` of the input; its codes are compared with npquant's.

Sizes are batch sizes; images are the reference test digits, repeated when the batch is
larger than the 450 test images.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.common import Case, Impl, compare, parse_count

NAME = "cnn"
PARALLEL = True  # npquant's kernels here use numba's threads
DEFAULT_SIZES = ["256"]


def _model_file(name: str) -> str:
    """A file of npquant's bundled reference models (``npquant/data/``); npquant is imported
    only when a case runs."""
    from npquant.app.demo import default_models_dir

    return str(default_models_dir() / name)


def _batch(label: str) -> int:
    return parse_count(label, NAME, "a batch size such as 256")[0]


def _numpy_twin(model):
    import copy

    twin = copy.copy(model)
    twin.layers = []
    for layer in model.layers:
        t = copy.copy(layer)
        if hasattr(t, "backend"):
            t.backend = "numpy"
        twin.layers.append(t)
    return twin


def _torch_model(torch, data):
    from torch.ao.nn import intrinsic as nni
    from torch.ao.nn import quantized as nnq

    torch.backends.quantized.engine = "fbgemm"
    arch = json.loads(str(data["__arch__"]))
    mods = []
    for spec in arch["layers"]:
        t, name = spec["type"], spec.get("name")
        if t in ("conv2d", "linear"):
            w = data[f"{name}.weight_int"]
            wq = torch._make_per_channel_quantized_tensor(
                torch.from_numpy(w),
                torch.from_numpy(data[f"{name}.weight_scale"]),
                torch.from_numpy(data[f"{name}.weight_zero_point"]),
                0,
            )
            bias = torch.from_numpy(data[f"{name}.bias"])
            relu = spec.get("activation") == "relu"
            if t == "conv2d":
                cls = nni.quantized.ConvReLU2d if relu else nnq.Conv2d
                m = cls(
                    w.shape[1] * spec["groups"],
                    w.shape[0],
                    tuple(spec["kernel_size"]),
                    stride=tuple(spec["stride"]),
                    padding=tuple(spec["padding"]),
                    dilation=tuple(spec["dilation"]),
                    groups=spec["groups"],
                )
            else:
                cls = nni.quantized.LinearReLU if relu else nnq.Linear
                m = cls(w.shape[1], w.shape[0])
            m.set_weight_bias(wq, bias)
            m.scale = float(data[f"{name}.scale"])
            m.zero_point = int(data[f"{name}.zero_point"])
        elif t == "maxpool2d":
            m = torch.nn.MaxPool2d(tuple(spec["kernel_size"]), tuple(spec["stride"]), tuple(spec["padding"]))
        elif t == "flatten":
            m = torch.nn.Flatten(spec["start_dim"])
        else:
            raise ValueError(f"layer type {t!r} is not in this benchmark's torch builder")
        mods.append(m)
    model = torch.nn.Sequential(*mods).eval()
    s, z = float(data["input.scale"]), int(data["input.zero_point"])
    return model, s, z


def cases(ctx):
    from npquant.models.convert import from_pytorch_ptq

    with np.load(_model_file("cnn_ptq.npz"), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    with np.load(_model_file("cnn.npz"), allow_pickle=False) as z:
        images = z["test_inputs"]
    model = from_pytorch_ptq(data, accumulation="fbgemm")
    twin = _numpy_twin(model)
    for label in ctx.sizes:
        n = _batch(label)
        x = np.ascontiguousarray(np.resize(images, (n,) + images.shape[1:]))

        def run_numba():
            return model.run(model.quantize_input(x))

        def run_numpy():
            return twin.run(twin.quantize_input(x))

        ref = run_numba()
        impls = [Impl("numba", run_numba), Impl("numpy", run_numpy, check=compare(run_numpy(), ref))]
        miss = ctx.peer_impl("torch")
        if miss is None:
            torch = ctx.peers["torch"]
            tm, s, zp = _torch_model(torch, data)
            xt = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    return tm(torch.quantize_per_tensor(xt, s, zp, torch.quint8))

            impls.append(Impl("torch", run_torch, check=compare(run_torch().int_repr().numpy(), ref)))
        else:
            impls.append(miss)
        acc = float((ref.argmax(axis=1) == np.resize(_labels(), n)).mean())
        yield Case(
            NAME,
            f"batch {n}",
            float(n),
            "images/s",
            impls,
            targets={"torch": 0.5},
            info={"top-1 on these images": f"{acc:.4f}"},
        )


def _labels():
    with np.load(_model_file("cnn.npz"), allow_pickle=False) as z:
        return z["test_labels"]
