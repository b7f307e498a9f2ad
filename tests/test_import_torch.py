"""npquant.importers.torch: PyTorch models as npquant graphs.

Float models through ``from_torch`` within 1e-5 of PyTorch at every tensor; the same models
through PyTorch's eager-mode post-training quantization (fuse_modules, prepare, calibrate on
random data, convert; fbgemm engine, activations over the full uint8 range so that int16
pairs can saturate on fbgemm's AVX2 path) through ``from_torch_quantized`` equal to PyTorch
bit for bit at the output and at every intermediate tensor, with the accumulation of the
CPU at hand (``accumulation="fbgemm"``). Run again with ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2
ATEN_CPU_CAPABILITY=avx2`` for PyTorch's AVX2 path. The counts of compared elements are
printed with ``pytest -s``.
"""

import operator
import sys

import numpy as np
import pytest

from npquant.importers import from_torch, from_torch_quantized, torch_intermediates
from npquant.importers import torch as torch_importer
from npquant.models.graph import load_graph, save_graph
from npquant.qnn.accumulation import host_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
SHAPE = (2, 3, 8, 8)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _models(torch, plus: bool = False):
    """``{name: (float module, fuse_modules list)}``; ``plus`` writes the residual add as
    ``+`` (float only) instead of a FloatFunctional."""
    nn = torch.nn
    F = torch.nn.functional
    from torch.ao.quantization import DeQuantStub, QuantStub

    class MLP(nn.Module):  # no hidden ReLU; x.view(x.size(0), -1) on a contiguous tensor
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.fc1, self.fc2 = nn.Linear(192, 16), nn.Linear(16, 10)

        def forward(self, x):
            x = self.quant(x)
            return self.dequant(self.fc2(self.fc1(x.view(x.size(0), -1))))

    class CNN(nn.Module):  # stride 2, grouped, bias-free and pointwise convs
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(inplace=True)
            self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU()
            self.conv3 = nn.Conv2d(8, 4, 1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 2 * 2, 5)

        def forward(self, x):
            x = self.relu2(self.conv2(self.relu1(self.conv1(self.quant(x)))))
            return self.dequant(self.fc(torch.flatten(self.pool(self.conv3(x)), 1)))

    class Depthwise(nn.Module):  # fbgemm's depthwise kernel, ReLU6, average pooling both ways
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.pw, self.bn1, self.r1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU6()
            self.dw, self.bn2, self.r2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6()
            self.pool1 = nn.AvgPool2d(3, stride=2, padding=1)  # count_include_pad=True
            self.pool2 = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
            self.flatten, self.fc = nn.Flatten(), nn.Linear(8 * 5 * 5, 5)

        def forward(self, x):
            x = self.r2(self.bn2(self.dw(self.r1(self.bn1(self.pw(self.quant(x)))))))
            return self.dequant(self.fc(self.flatten(self.pool2(self.pool1(x)))))

    class ResBlock(nn.Module):  # conv-bn-relu-conv-bn + skip add + relu
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.stem, self.stem_relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.conv1, self.bn1, self.relu1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.skip = torch.ao.nn.quantized.FloatFunctional()
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            x = self.stem_relu(self.stem(self.quant(x)))
            out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            out = F.relu(out + x) if plus else self.skip.add_relu(out, x)
            return self.dequant(self.fc(torch.flatten(self.pool(out), 1)))

    class Cat(nn.Module):  # channels-last cat (4 and 12 channels), then a cat of 2-D tensors
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.b1, self.b1r = nn.Conv2d(3, 4, 1), nn.ReLU()
            self.b2, self.b2r = nn.Conv2d(3, 12, 3, padding=1), nn.ReLU()
            self.cat1, self.cat2 = torch.ao.nn.quantized.FloatFunctional(), torch.ao.nn.quantized.FloatFunctional()
            self.conv = nn.Conv2d(16, 8, 3, stride=2, padding=1)
            self.fc1, self.fc2, self.fc3 = nn.Linear(128, 6), nn.Linear(128, 6), nn.Linear(12, 5)

        def forward(self, x):
            x = self.quant(x)
            y = self.cat1.cat([self.b1r(self.b1(x)), self.b2r(self.b2(x))], dim=1)
            y = torch.flatten(self.conv(y), 1)
            return self.dequant(self.fc3(self.cat2.cat([self.fc1(y), self.fc2(y)], dim=1)))

    torch.manual_seed(0)
    models = {
        "mlp": (MLP(), []),
        "cnn": (CNN(), [["conv1", "relu1"], ["conv2", "relu2"]]),
        "depthwise": (Depthwise(), [["pw", "bn1"], ["dw", "bn2"]]),
        "resblock": (ResBlock(), [["stem", "stem_relu"], ["conv1", "bn1", "relu1"], ["conv2", "bn2"]]),
        "cat": (Cat(), [["b1", "b1r"], ["b2", "b2r"]]),
    }
    g = torch.Generator().manual_seed(1)
    for model, _ in models.values():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics that make folding matter
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.uniform_(-0.3, 0.3, generator=g)
        model.eval()
    return models


def _example(torch, seed=2):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _ptq(torch, model, fuse, per_channel=True):
    """PyTorch eager-mode post-training static quantization, fbgemm engine (set by the fixture)."""
    from torch.ao.quantization import (
        MinMaxObserver,
        QConfig,
        convert,
        default_per_channel_weight_observer,
        default_weight_observer,
        fuse_modules,
        prepare,
    )

    if fuse:
        fuse_modules(model, fuse, inplace=True)
    model.qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8),
        weight=default_per_channel_weight_observer if per_channel else default_weight_observer,
    )
    prepare(model, inplace=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(SHAPE, generator=g))
    convert(model, inplace=True)
    return model


def _compare(graph, model, x, exact: bool, atol=0.0) -> int:
    """Every tensor of ``graph`` against PyTorch's tensor of the same name; elements compared."""
    got = graph.run(x.numpy(), keep_intermediates=True)
    want = torch_intermediates(model, x)
    n = 0
    for name, v in got.items():
        ref = want[name]
        assert v.dtype == ref.dtype and v.shape == ref.shape, name
        if exact:
            np.testing.assert_array_equal(v, ref, err_msg=name)
        else:
            np.testing.assert_allclose(v, ref, rtol=0, atol=atol, err_msg=name)
        n += v.size
    return n


COUNTS = {}
MODELS = ["mlp", "cnn", "depthwise", "resblock", "cat"]


@pytest.mark.parametrize("name", MODELS)
def test_float_models_within_1e_5(torch, name):
    model, _ = _models(torch)[name]
    x = _example(torch)
    g = from_torch(model, x)
    assert g.kind == "float" and "batchnorm2d" not in [n.op for n in g.nodes]
    n = _compare(g, model, x, exact=False, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(g(x.numpy()), model(x).numpy(), rtol=0, atol=1e-5)
    COUNTS[f"float {name}"] = (n, 0)


def test_float_residual_with_plus_and_functional_calls(torch):
    nn, F = torch.nn, torch.nn.functional
    model, _ = _models(torch, plus=True)["resblock"]
    x = _example(torch)
    g = from_torch(model, x)
    assert "add" in [n.op for n in g.nodes]
    COUNTS["float resblock (+)"] = (_compare(g, model, x, exact=False, atol=1e-5), 0)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2 = nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 1, padding="valid")
            self.drop, self.ident = nn.Dropout(0.5), nn.Identity()
            self.fc = nn.Linear(4 * 3 * 3 * 2, 3)

        def forward(self, x):
            a = F.relu(self.conv(x))
            b = torch.relu(self.drop(a)) + torch.add(a, self.ident(a))
            c = F.relu6(operator.add(b, a)).relu()
            c = F.avg_pool2d(F.max_pool2d(c, 2, 1), 2, count_include_pad=False)
            d = self.conv2(c)
            e = torch.cat([d, d.add(d)], dim=1)
            f = e.view(e.shape[0], -1)
            return self.fc(f.reshape(x.size(0), -1)), e.flatten(1)

    model = Functional().eval()
    g = from_torch(model, x)
    assert g.outputs == ("fc", "flatten")
    COUNTS["float functional"] = (_compare(g, model, x, exact=False, atol=1e-5), 0)
    reshapes = [n.attrs["shape"] for n in g.nodes if n.op == "reshape"]
    assert reshapes == [[0, -1], [0, -1]]  # the batch size stays symbolic
    x5 = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        y, f = model(x5)
    gy, gf = g(x5.numpy())
    np.testing.assert_allclose(gy, y.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(gf, f.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_quantized_models_bit_for_bit(torch, fbgemm_threads, name):
    model, fuse = _models(torch)[name]
    _ptq(torch, model, fuse, per_channel=name != "mlp")  # the MLP has per-tensor weights
    x = _example(torch)
    g = from_torch_quantized(model, x)
    assert g.kind == "integer"
    n = _compare(g, model, x, exact=True)
    # the exact accumulation differs from fbgemm where pairs saturate (AVX2 path, depthwise kernel)
    ge = from_torch_quantized(model, x, accumulation="exact")
    ref = torch_intermediates(model, x)
    differ = sum(int((v != ref[k]).sum()) for k, v in ge.run(x.numpy(), keep_intermediates=True).items())
    for node in g.nodes:
        if node.op in ("qconv2d", "qlinear"):
            depthwise = node.op == "qconv2d" and node.attrs["groups"] == 8 and node.params["weight"].shape[1] == 1
            assert g.layer(node.name).saturates_pairs == (host_path("fbgemm") == "avx2" or depthwise), node.name
    if host_path("fbgemm") == "avx2" or name == "depthwise":
        assert differ > 0  # pairs saturate in this model: the test tells the accumulations apart
    COUNTS[f"quantized {name} ({fbgemm_threads} thread{'s' if fbgemm_threads > 1 else ''})"] = (n, differ)


def test_quantized_graph_round_trips_through_a_file(torch, fbgemm_threads, tmp_path):
    model, fuse = _models(torch)["resblock"]
    _ptq(torch, model, fuse)
    x = _example(torch)
    g = from_torch_quantized(model, x)
    save_graph(tmp_path / "resblock.npz", g)
    back = load_graph(tmp_path / "resblock.npz")
    assert back == g
    x2 = _example(torch, seed=7)
    _compare(back, model, x2, exact=True)  # another input: nothing depends on the example


def test_quantized_backbone_with_a_float_head(torch, fbgemm_threads):
    """DeQuantStub in the middle: integer nodes, then float ones (a mixed graph); a module
    called twice gives two nodes; an in-place ReLU on quantized tensors."""
    nn = torch.nn
    from torch.ao.quantization import DeQuantStub, QuantStub

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv1, self.conv2, self.relu = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True)
            self.head = nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            x = self.relu(self.conv2(self.relu(self.conv1(self.quant(x)))))
            return self.head(torch.flatten(self.dequant(x), 1))

    torch.manual_seed(4)
    model = Mixed().eval()
    model.head.qconfig = None  # stays float
    _ptq(torch, model, [])
    x = _example(torch)
    g = from_torch_quantized(model, x)
    assert g.kind == "mixed" and [n.op for n in g.nodes] == [
        "quantize",
        "qconv2d",
        "qrelu",
        "qconv2d",
        "qrelu",
        "dequantize",
        "flatten",
        "linear",
    ]
    assert [n.name for n in g.nodes if n.op == "qrelu"] == ["relu", "relu_1"]
    got = g.run(x.numpy(), keep_intermediates=True)
    want = torch_intermediates(model, x)
    for name, v in got.items():
        if name == "head":  # float32 products summed in another order
            np.testing.assert_allclose(v, want[name], rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(v, want[name], err_msg=name)


def test_report_counts(torch):
    """The element counts of the model tests above, printed with ``pytest -s`` (the run's
    record of what was compared); it runs after them in file order."""
    print(f"\nfbgemm path here: {host_path('fbgemm')}")
    for k, (n, differ) in COUNTS.items():
        print(
            f"{k}: {n} elements compared, 0 differ"
            + (f" (accumulation='exact': {differ} differ)" if k.startswith("quantized") else "")
        )
    assert all(n > 0 for n, _ in COUNTS.values())


# ------------------------------------------------------------------- single ops vs torch


def test_qrelu6_torch_mode_equals_quantized_relu6(torch):
    from npquant import QParams, QuantSpec
    from npquant.qnn.layers import QReLU

    rng = np.random.default_rng(0)
    q = np.arange(256, dtype=np.uint8)
    scales = [np.float32(6 / (k + 0.5)) for k in range(10, 250)] + list(rng.uniform(1e-3, 0.1, 200).astype(np.float32))
    differ_tflite = 0
    for s in scales:
        z = int(rng.integers(0, 256))
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), float(s), z)
        want = torch.ops.quantized.relu6(t, False).int_repr().numpy()
        qp = QParams(s, z, QuantSpec(signed=False))
        np.testing.assert_array_equal(QReLU(qp, "relu6", mode="torch")(q), want)
        differ_tflite += int(np.any(QReLU(qp, "relu6")(q) != want))
    assert differ_tflite > 0  # the rounding of the code of 6 is what differs


def _cat_case(torch, rng, channels_last):
    f32 = np.float32
    so, zo = f32(rng.uniform(0.005, 0.1)), int(rng.integers(0, 256))
    ins = []
    for c in rng.integers(1, 20, int(rng.integers(1, 4))):
        # scales in simple ratios to the output's put many values on rounding ties
        s = f32(so * rng.choice([1.5, 0.5, 2.5, 0.75, 1.25])) if rng.random() < 0.7 else f32(rng.uniform(0.005, 0.1))
        z = int(rng.integers(0, 256))
        if rng.random() < 0.15:
            s, z = so, zo
        q = rng.integers(0, 256, (2, int(c), 3, 2)).astype(np.uint8)
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), float(s), z)
        ins.append((q, s, z, t.contiguous(memory_format=torch.channels_last) if channels_last else t))
    return so, zo, ins


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_qconcat_equals_quantized_cat(torch, channels_last):
    """Both of PyTorch's cat kernels, with inputs on rounding ties; the importer picks the
    memory format PyTorch's inputs had."""
    from npquant import QParams, QuantSpec
    from npquant.models.graph import Graph, Node

    rng = np.random.default_rng(1 + channels_last)
    compared = wrong_kernel = 0
    for _ in range(60):
        so, zo, ins = _cat_case(torch, rng, channels_last)
        want = torch.ops.quantized.cat([t for *_, t in ins], scale=float(so), zero_point=zo, dim=1).int_repr().numpy()
        names = [f"x{i}" for i in range(len(ins))]
        U = QuantSpec(signed=False)
        iqp = {k: QParams(s, z, U) for k, (_, s, z, _) in zip(names, ins)}
        outs = {}
        for fmt in ("contiguous", "channels_last"):
            g = Graph(
                [Node("cat", "qconcat", names, ["y"], {"output": QParams(so, zo, U), "memory_format": fmt})],
                names,
                ["y"],
                input_qparams=iqp,
            )
            outs[fmt] = g(*[q for q, *_ in ins])
        np.testing.assert_array_equal(outs["channels_last" if channels_last else "contiguous"], want)
        wrong_kernel += int((outs["contiguous" if channels_last else "channels_last"] != want).sum())
        compared += want.size
    assert wrong_kernel > 0  # the two kernels round differently: the attribute matters


def test_qadd_channels_last_follows_memory_order(torch):
    """A case where PyTorch's vector and scalar add paths differ (found by search): the
    element is in the vector body in NCHW order but in the scalar tail in NHWC order."""
    from npquant import QParams, QuantSpec
    from npquant.models.graph import Graph, Node

    f32 = np.float32
    sa, sb, so, za, zb, zo = f32(0.01721417), f32(0.052431397), f32(0.062142342), 182, 7, 124
    rng = np.random.default_rng(0)
    qa = rng.integers(0, 256, (1, 2, 6, 6)).astype(np.uint8)
    qb = rng.integers(0, 256, (1, 2, 6, 6)).astype(np.uint8)
    qa[0, 0, 5, 2], qb[0, 0, 5, 2] = 152, 117  # NCHW index 32 (vector), NHWC index 64 (tail of 72)
    cl = torch.channels_last
    ta = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qa), float(sa), za).contiguous(memory_format=cl)
    tb = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qb), float(sb), zb).contiguous(memory_format=cl)
    want = torch.ops.quantized.add(ta, tb, float(so), zo).int_repr().numpy()
    U = QuantSpec(signed=False)
    out = {}
    for fmt in ("contiguous", "channels_last"):
        g = Graph(
            [
                Node(
                    "add",
                    "qadd",
                    ["a", "b"],
                    ["y"],
                    {"output": QParams(so, zo, U), "mode": "torch", "memory_format": fmt},
                )
            ],
            ["a", "b"],
            ["y"],
            input_qparams={"a": QParams(sa, za, U), "b": QParams(sb, zb, U)},
        )
        out[fmt] = g(qa, qb)
    np.testing.assert_array_equal(out["channels_last"], want)
    assert out["contiguous"][0, 0, 5, 2] == 209 and want[0, 0, 5, 2] == 208


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("skip_first", [False, True], ids=["conv_plus_input", "input_plus_conv"])
def test_identity_skip_adds_tensors_of_two_memory_formats(torch, fbgemm_threads, skip_first):
    """A residual block whose skip is the quantized input itself: the input is contiguous
    (NCHW), the conv branch channels-last. PyTorch's quantized add gives its output the first
    operand's memory format and runs in that element order; 2 x 13 x 7 x 7 = 1274 elements
    end in a scalar tail after 19 vectors of 64."""
    nn = torch.nn

    class IdentitySkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
            self.conv1, self.relu1 = nn.Conv2d(13, 13, 3, padding=1), nn.ReLU()
            self.conv2 = nn.Conv2d(13, 13, 3, padding=1)
            self.add = torch.ao.nn.quantized.FloatFunctional()
            self.fc = nn.Linear(13 * 7 * 7, 5)

        def forward(self, x):
            x = self.quant(x)
            h = self.conv2(self.relu1(self.conv1(x)))
            h = self.add.add_relu(x, h) if skip_first else self.add.add_relu(h, x)
            return self.dequant(self.fc(torch.flatten(h, 1)))

    torch.manual_seed(0)
    model = IdentitySkip().eval()
    fuse = [["conv1", "relu1"]]
    shape = (2, 13, 7, 7)
    from torch.ao.quantization import MinMaxObserver, QConfig, convert, default_per_channel_weight_observer, prepare

    torch.ao.quantization.fuse_modules(model, fuse, inplace=True)
    model.qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=default_per_channel_weight_observer
    )
    prepare(model, inplace=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(shape, generator=g) * 2)
    convert(model, inplace=True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 2
    graph = from_torch_quantized(model, x)
    add = next(n for n in graph.nodes if n.op == "qadd")
    assert add.attrs["memory_format"] == ("contiguous" if skip_first else "channels_last")
    assert _compare(graph, model, x, exact=True) > 3000


def test_unsupported_and_refused(torch, fbgemm_threads):
    nn = torch.nn
    x = _example(torch)

    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.GELU()

        def forward(self, x):
            return self.act(x)

    with pytest.raises(ValueError, match=r"node 'act': module 'act' of type GELU is not supported \(from_torch: "):
        from_torch(Gelu().eval(), x)

    class Mul(nn.Module):
        def forward(self, x):
            return torch.mul(x, 2)

    with pytest.raises(ValueError, match=r"node 'mul': function mul is not supported"):
        from_torch(Mul().eval(), x)
    for pool, match in [
        (nn.MaxPool2d(2, dilation=2), "dilation=2"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True"),
        (nn.AvgPool2d(2, divisor_override=3), "divisor_override=3"),
    ]:
        with pytest.raises(ValueError, match=rf"node 'pool'.*{match} is not supported"):
            from_torch(_Wrap(torch, pool).eval(), x)
    with pytest.raises(ValueError, match="training mode"):
        from_torch(Gelu(), x)

    model, fuse = _models(torch)["cnn"]
    with pytest.raises(ValueError, match="has no quantized layer"):
        from_torch_quantized(model, x)
    from torch.ao.quantization import MinMaxObserver, QConfig, default_weight_observer, prepare

    model.qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=default_weight_observer)
    prepare(model, inplace=True)
    with pytest.raises(ValueError, match="prepared but not converted"):
        from_torch_quantized(model, x)
    model, fuse = _models(torch)["cnn"]
    _ptq(torch, model, fuse)
    with pytest.raises(
        ValueError,
        match=r"node .quant.: module .quant. of type Quantize .*use npquant\.importers\.torch\.from_torch_quantized",
    ):
        from_torch(model, x)
    with pytest.raises(ValueError, match="accumulation must be one of"):
        from_torch_quantized(model, x, accumulation="vnni")


def _Wrap(torch, pool):
    class W(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return self.pool(x)

    return W()


def test_without_torch_the_error_names_the_peers_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torch", None)
    for fn in (from_torch, from_torch_quantized, torch_intermediates):
        with pytest.raises(ImportError, match=r"npquant\[peers\]"):
            fn(object(), np.zeros((1, 3)))
    assert "peers" in torch_importer.PEERS_HINT
