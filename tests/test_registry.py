"""The layer registry (npquant.models.registry): every layer type of the reference models
is registered, sizes agree with a hand count, and a new layer type is one class here,
built, quantized (or refused), loaded, counted, run in a graph, prepared for QAT (or
refused) and initialized without editing any other module."""

import json

import numpy as np
import pytest

from npquant import QParams, QuantSpec
from npquant.app.demo import default_models_dir
from npquant.models import convert, nn, registry
from npquant.models.checkpoint import quantize_checkpoint
from npquant.models.graph import Graph, Node, load_graph, save_graph
from npquant.models.io import FileFormatError, load_model, load_reference, load_state_dict
from npquant.training import convert_qat, prepare_qat
from npquant.training.trainer import torch_default_init

REF = default_models_dir()
BUILTIN = ("linear", "conv2d", "batchnorm2d", "relu", "relu6", "maxpool2d", "avgpool2d", "flatten")


def test_builtin_types_are_registered_in_order():
    assert tuple(registry.layer_types())[: len(BUILTIN)] == BUILTIN
    for name, kind in registry.layer_types().items():
        assert kind.name == name and registry.layer_type(name) is kind


@pytest.mark.parametrize("name", ["mlp", "lenet_300_100", "cnn"])
def test_every_layer_type_of_the_reference_models_is_registered(name):
    ref = load_reference(REF / f"{name}.npz")
    ptq = load_state_dict(REF / f"{name}_ptq.npz")
    types = registry.layer_types()
    arch_ptq = registry.read_arch(ptq, "ptq")
    for entry in ref.arch["layers"] + arch_ptq["layers"]:
        assert entry["type"] in types, entry
    model = load_model(REF / f"{name}.npz")
    for layer, entry in zip(model, ref.arch["layers"]):
        assert registry.kind_of(layer) is types[entry["type"]]
    for layer, entry in zip(convert.from_pytorch_ptq(ptq).layers, arch_ptq["layers"]):
        assert registry.kind_of(layer) is types[entry["type"]]


# ---- sizes against a hand count ----------------------------------------------------------


def _small_model():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(rng.normal(0, 0.5, (4, 2, 3, 3)), rng.normal(0, 0.1, 4), padding=1, name="conv")
    bn = nn.BatchNorm2d(
        rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4), rng.normal(0, 0.1, 4), rng.uniform(0.5, 2, 4), name="bn"
    )
    fc = nn.Linear(rng.normal(0, 0.3, (3, 16)), rng.normal(0, 0.1, 3), name="fc")
    model = nn.Sequential([conv, bn, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), fc])
    return model, rng.uniform(0, 1, (32, 2, 4, 4)).astype(np.float32)


def test_sizes_agree_with_a_hand_count():
    model, x = _small_model()
    # float32: conv 72 + 4, batch norm 4 x 4 (num_batches_tracked is int64: not counted), fc 48 + 3
    assert convert.float_size_bytes(model) == registry.model_size_bytes(model) == 4 * (72 + 4 + 16 + 48 + 3)

    # PTQ int8 per channel: codes 1 byte each, int32 bias, float32 scale and 1-byte zero
    # point per output channel; conv (batch norm folded) 72 + 16 + 16 + 4, fc 48 + 12 + 12 + 3
    q = convert.quantize_model(model, x)
    assert q.size_bytes() == registry.model_size_bytes(q) == 108 + 75
    conv_q = q.layers[0]
    assert registry.kind_of(conv_q).storage(conv_q) == registry.Storage(codes=72, scales=16, zero_points=4, bias=16)
    # 4-bit weights packed: ceil(72 * 4 / 8) = 36 and 24 code bytes
    q4 = convert.quantize_model(model, x, weight_bits=4)
    assert q4.size_bytes(packed=True) == (36 + 36) + (24 + 27)
    assert q4.size_bytes() == 183  # unpacked, int8 storage of the 4-bit codes

    # dynamic int8 (symmetric, no zero points): codes, float32 scales, float32 bias
    d = convert.dynamic_quantize(model)
    assert convert.dynamic_size_bytes(d) == registry.model_size_bytes(d) == (72 + 16 + 16) + (48 + 12 + 12)

    # weight-only 4 bits per channel: packed codes + float32 scales (+ 1-byte zero points if
    # asymmetric) + float32 bias
    assert convert.weight_only_quantize(model, 4)[1] == (36 + 16 + 16) + (24 + 12 + 12)
    assert convert.weight_only_quantize(model, 4, symmetric=False)[1] == (36 + 16 + 4 + 16) + (24 + 12 + 3 + 12)
    # per group of 8 along axis 1: the conv's 2 input channels are one group at each of its
    # 4 x 3 x 3 other positions (36 scales); fc has 16 inputs, 2 groups per row (6 scales)
    assert convert.weight_only_quantize(model, 4, group_size=8)[1] == (36 + 4 * 36 + 16) + (24 + 4 * 6 + 12)

    # a checkpoint: packed codes, float32 scales, int32 zero points if asymmetric
    state = {"conv.weight": model[0].weight, "fc.weight": model[5].weight}
    _, reports = quantize_checkpoint(state, QuantSpec(bits=4, axis=0))
    assert [(r.float_bytes, r.quantized_bytes) for r in reports] == [(288, 36 + 16 + 16), (192, 24 + 12 + 12)]
    _, reports = quantize_checkpoint(state, QuantSpec(bits=4, symmetric=True))
    assert [r.quantized_bytes for r in reports] == [36 + 4, 24 + 4]


def test_quantized_storage_rule():
    qp = QParams(np.ones(3, np.float32), np.zeros(3, np.int32), QuantSpec(bits=3, axis=0))
    s = registry.quantized_storage(10, qp, zero_point_bytes=4, bias_bytes=12)
    assert s == registry.Storage(codes=4, scales=12, zero_points=12, bias=12) and s.total == 40
    assert registry.quantized_storage(10, qp, packed=False, code_bytes=2).total == 20 + 12
    with pytest.raises(TypeError, match="packed"):
        registry.quantized_storage(10, qp, packed="yes")


# ---- a new layer type: one class, here ----------------------------------------------------


class Scale(nn.Layer):
    """``y = a * x`` with a learnt scalar ``a`` (a toy layer)."""

    _params = ("a",)

    def __init__(self, a, *, name="scale"):
        self.a = np.asarray(a, np.float32).reshape(())
        super().__init__(name)

    def forward(self, x):
        x = self._input(x)
        return self._save(x * self.a.astype(self.dtype))

    def backward(self, grad_y):
        g, _ = self._begin_backward(grad_y)
        return g * self.a


class QScale:
    """The integer form of ``Scale`` with ``a > 0``: the codes are unchanged, only their
    scale is (``S_y = a S_x``); nothing to compute, one float32 scale to store."""

    def __init__(self, x_qp, a):
        self.a = np.float32(a)
        self.y_qp = QParams(np.float32(self.a * np.float32(x_qp.scale)), x_qp.zero_point, x_qp.spec)

    def __call__(self, x_q):
        return np.array(x_q, copy=True)


class Square(nn.Layer):
    """``y = x * x``, a toy layer with no integer form."""

    def __init__(self, *, name="square"):
        super().__init__(name)

    def forward(self, x):
        x = self._input(x)
        return x * x


@pytest.fixture
def toy_types():
    """Register ``scale`` (with an integer form) and ``square`` (without) for one test."""

    @registry.register("scale")
    class ScaleType(registry.LayerType):
        float_class = Scale
        int_classes = (QScale,)
        params = ("a",)

        def build(self, entry, params, name):
            return Scale(params["a"], name=name)

        def to_integer(self, layer, ctx):
            if not layer.a > 0:
                raise ValueError(f"layer {layer.name!r}: the integer scale needs a > 0, got {layer.a}")
            q = QScale(ctx.x_qp, layer.a)
            return q, q.y_qp

        def float_twin(self, qlayer, h):
            return (h * qlayer.a).astype(np.float32)

        def storage(self, qlayer, *, packed=False):
            return registry.Storage(scales=4)

        qat_passes = True  # QAT: stays float between the fake quants, converts by to_integer

        def init_params(self, entry, rng):
            return {"a": np.array(entry.get("init", 1.0), np.float32)}

    @registry.register("square")
    class SquareType(registry.LayerType):
        float_class = Square

        def build(self, entry, params, name):
            return Square(name=name)

    yield ScaleType, SquareType
    registry.unregister("scale")
    registry.unregister("square")
    assert "scale" not in registry.layer_types() and "square" not in registry.layer_types()


def _toy_arch(middle):
    return {
        "name": "toy",
        "layers": [
            {"type": "linear", "name": "fc1", "in_features": 6, "out_features": 5},
            {"type": "relu", "name": "relu1"},
            middle,
            {"type": "linear", "name": "fc2", "in_features": 5, "out_features": 3},
        ],
    }


def _toy_state(rng):
    return {
        "fc1.weight": rng.normal(0, 0.5, (5, 6)).astype(np.float32),
        "fc1.bias": np.zeros(5, np.float32),
        "fc2.weight": rng.normal(0, 0.5, (3, 5)).astype(np.float32),
        "fc2.bias": np.ones(3, np.float32),
        "s.a": np.array(2.5, np.float32),
    }


def test_a_new_layer_type_is_one_class(toy_types, tmp_path):
    rng = np.random.default_rng(5)
    arch, state = _toy_arch({"type": "scale", "name": "s"}), _toy_state(rng)
    assert nn.expected_keys(arch)["s.a"] is True
    model = nn.build_model(arch, state)  # nn: built from its arch entry
    assert isinstance(model[2], Scale) and model.state_dict()["s.a"] == np.float32(2.5)
    x = rng.uniform(0, 1, (64, 6)).astype(np.float32)
    np.testing.assert_array_equal(model(x), model[3](model[1](model[0](x)) * np.float32(2.5)))

    # io: a model file with the new type loads, its parameter in the state dict
    p = tmp_path / "toy.npz"
    np.savez(p, __arch__=np.array(json.dumps(arch)), test_inputs=x, **state)
    ref = load_reference(p)
    assert set(ref.state) == set(state) and set(ref.arrays) == {"test_inputs"}
    np.testing.assert_array_equal(load_model(p)(x), model(x))

    # convert: its integer form, its output qparams carried to the next layer, its float twin
    q = convert.quantize_model(model, x)
    assert isinstance(q.layers[1], QScale)  # fc1 with its ReLU fused, then the scale
    assert q.layers[2].x_qp == q.layers[1].y_qp
    assert np.max(np.abs(q(x) - model(x))) < 0.1 * np.ptp(model(x))
    assert np.max(np.abs(q(x) - q.float_twin(x))) <= 1.01 * float(q.output_qp.scale)

    # size reports: 4 float32 bytes of a in the float and dynamic models, one float32 scale
    # in the integer model; weight-only leaves it float and does not count it
    fc_bytes = 4 * (30 + 5 + 15 + 3)
    assert convert.float_size_bytes(model) == fc_bytes + 4
    assert q.size_bytes() == (30 + 20 + 20 + 5) + (15 + 12 + 12 + 3) + 4
    d = convert.dynamic_quantize(model)
    assert d[2] is model[2] and convert.dynamic_size_bytes(d) == (30 + 20 + 20) + (15 + 12 + 12) + 4
    w, size = convert.weight_only_quantize(model, 8)
    assert w[2] is model[2] and size == (30 + 20 + 20) + (15 + 12 + 12)


def test_a_layer_type_without_integer_form_is_refused_by_name(toy_types):
    rng = np.random.default_rng(6)
    state = {k: v for k, v in _toy_state(rng).items() if k != "s.a"}
    model = nn.build_model(_toy_arch({"type": "square", "name": "sq"}), state)
    x = rng.uniform(0, 1, (16, 6)).astype(np.float32)
    np.testing.assert_array_equal(model[2](x), x * x)
    with pytest.raises(ValueError, match="layer 'sq' \\(type 'square'\\) has no integer form"):
        convert.quantize_model(model, x)
    neg = nn.build_model(_toy_arch({"type": "scale", "name": "s"}), {**state, "s.a": np.array(-1.0, np.float32)})
    with pytest.raises(ValueError, match="layer 's': the integer scale needs a > 0"):
        convert.quantize_model(neg, x)
    assert convert.dynamic_quantize(model)[2] is model[2]  # stays float


def test_toy_types_are_gone_after_the_fixture():
    assert "scale" not in registry.layer_types()
    with pytest.raises(ValueError, match="unknown layer type 'scale'"):
        nn.build_model({"layers": [{"type": "scale", "name": "s"}]}, {})


# ---- registration and the arch format -----------------------------------------------------


def test_register_errors():
    with pytest.raises(ValueError, match="'linear' is already registered"):
        registry.register("linear")
    with pytest.raises(TypeError, match="non-empty string"):
        registry.register("")
    with pytest.raises(TypeError, match="LayerType subclass"):
        registry.register("not_a_type")(dict)
    assert "not_a_type" not in registry.layer_types()
    with pytest.raises(ValueError, match="'nope' is not registered"):
        registry.unregister("nope")
    with pytest.raises(ValueError, match="unknown layer type 'gelu'"):
        registry.layer_type("gelu")
    assert registry.kind_of(object()) is None
    assert registry.kind_of(nn.ReLU6()) is registry.layer_type("relu6")


def test_read_arch():
    good = {"layers": [{"type": "linear", "name": "fc"}, {"type": "relu"}]}
    assert registry.read_arch({"__arch__": np.array(json.dumps(good))}) == good
    for data, match in [
        ({}, "no '__arch__' entry: not a reference model file"),
        ({"__arch__": np.zeros(3)}, "JSON string"),
        ({"__arch__": np.array("{")}, "not valid"),
        ({"__arch__": np.array('{"layers": 3}')}, "not a valid architecture"),
        ({"__arch__": np.array('{"layers": [{"type": "linear"}]}')}, "needs a 'name'"),
    ]:
        with pytest.raises(FileFormatError, match=match):
            registry.read_arch(data, "f.npz")
    with pytest.raises(FileFormatError, match="not a PyTorch PTQ reference file"):
        convert.from_pytorch_ptq({})


# ---- the new layer type in a graph, in QAT and in the default initialization ----------------


def _toy_graph(state, middle_op, middle_params):
    return Graph(
        [
            Node("fc1", "linear", ["x"], ["h1"], params={"weight": state["fc1.weight"], "bias": state["fc1.bias"]}),
            Node("relu1", "relu", ["h1"], ["h2"]),
            Node("s", middle_op, ["h2"], ["h3"], params=middle_params),
            Node("fc2", "linear", ["h3"], ["y"], params={"weight": state["fc2.weight"], "bias": state["fc2.bias"]}),
        ],
        ["x"],
        ["y"],
        name="toy",
    )


def test_a_new_layer_type_runs_in_a_graph(toy_types, tmp_path):
    rng = np.random.default_rng(7)
    state = _toy_state(rng)
    model = nn.build_model(_toy_arch({"type": "scale", "name": "s"}), state)
    g = _toy_graph(state, "scale", {"a": state["s.a"]})  # a float node built by the registry
    assert g.kind == "float" and isinstance(g.layer("s"), Scale) and g.layer("s").name == "s"
    x = rng.uniform(0, 1, (32, 6)).astype(np.float32)
    np.testing.assert_array_equal(g(x), model(x))
    p = tmp_path / "toy_graph.npz"
    save_graph(p, g)  # the graph file format is unchanged: the op is the type's name
    assert load_graph(p) == g
    np.testing.assert_array_equal(load_graph(p)(x), model(x))
    # no graph attributes declared: an attribute is refused; the parameter is required
    with pytest.raises(ValueError, match="node 's' \\(scale\\) has unknown attribute 'k'"):
        Graph([Node("s", "scale", ["x"], ["y"], {"k": 1}, {"a": 1.0})], ["x"], ["y"])
    with pytest.raises(ValueError, match="node 's' \\(scale\\) needs the parameter 'a'"):
        Graph([Node("s", "scale", ["x"], ["y"])], ["x"], ["y"])
    # no integer graph node declared: quantize_graph refuses it by name
    with pytest.raises(
        ValueError, match="node 's' \\(scale\\) cannot be quantized; quantize_graph takes the ops linear, conv2d"
    ):
        convert.quantize_graph(g, x)
    np.testing.assert_array_equal(
        _toy_graph(state, "square", {})(x),
        nn.build_model(_toy_arch({"type": "square", "name": "s"}), {k: v for k, v in state.items() if k != "s.a"})(x),
    )


def test_a_graph_of_an_unregistered_type_does_not_load(tmp_path):
    state = _toy_state(np.random.default_rng(7))
    with pytest.raises(ValueError, match="node 's' has unknown op 'scale'"):
        _toy_graph(state, "scale", {"a": state["s.a"]})


def test_a_new_layer_type_in_qat(toy_types):
    rng = np.random.default_rng(8)
    state = _toy_state(rng)
    model = nn.build_model(_toy_arch({"type": "scale", "name": "s"}), state)
    x = rng.uniform(0, 1, (256, 6)).astype(np.float32)
    qat = prepare_qat(model)
    assert [type(layer).__name__ for layer in qat] == ["FakeQuantize", "QATLinear", "Scale", "QATLinear"]
    assert qat[2] is not model[2] and qat[2].a == model[2].a and qat[1].activation == "relu"
    qat.train()
    qat(x)
    qat.eval()
    im = convert_qat(qat)
    assert isinstance(im.layers[1], QScale) and im.layers[2].x_qp == im.layers[1].y_qp
    step = float(im.output_qp.scale)
    assert np.max(np.abs(im(x) - qat(x))) <= 2 * step  # rounding of S_y = a S_x apart, the same grid
    # a type that declares no QAT form is refused, naming the layer and the types that have one
    sq = nn.build_model(_toy_arch({"type": "square", "name": "sq"}), {k: v for k, v in state.items() if k != "s.a"})
    with pytest.raises(
        ValueError,
        match="prepare_qat cannot convert layers\\[2\\] \\('sq'\\): its layer type "
        "'square' declares no QAT form \\(prepare_qat\\); supported: linear, conv2d",
    ):
        prepare_qat(sq)


def test_a_new_layer_type_in_the_default_initialization(toy_types):
    arch = _toy_arch({"type": "scale", "name": "s", "init": 0.5})
    for k in ("in_features", "out_features"):
        assert all(k in e for e in arch["layers"] if e["type"] == "linear")
    state = torch_default_init(arch, 3)
    assert list(state) == ["fc1.weight", "fc1.bias", "s.a", "fc2.weight", "fc2.bias"]
    assert state["s.a"] == np.float32(0.5) and state["s.a"].dtype == np.float32
    # it draws no random numbers: the layers around it get what they get without it
    plain = torch_default_init(_toy_arch({"type": "relu", "name": "r"}), 3)
    for k, v in plain.items():
        np.testing.assert_array_equal(state[k], v)
    nn.build_model(arch, state)
    # no parameters: nothing to initialize; parameters and no init_params: refused by name
    assert list(torch_default_init(_toy_arch({"type": "square", "name": "sq"}), 3)) == list(plain)

    @registry.register("offset")
    class OffsetType(registry.LayerType):
        params = ("b",)

    try:
        with pytest.raises(
            ValueError, match="layer 'o' \\(type 'offset'\\) has parameters, but its layer type declares no init_params"
        ):
            torch_default_init(_toy_arch({"type": "offset", "name": "o"}), 3)
    finally:
        registry.unregister("offset")
