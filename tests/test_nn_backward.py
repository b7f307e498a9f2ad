"""Backward passes of the float layers (npquant.models.nn), training mode, state dicts, and the
softmax cross-entropy loss (npquant.training.losses).

Three kinds of checks:

- against float64 central finite differences, without PyTorch: each layer is copied to
  float64 with ``astype(np.float64)`` (the same code, computing in float64) and the
  gradient of ``L = sum(r * layer(x))`` (``r`` fixed, random) with respect to the input and
  every parameter is compared with ``(L(p + h) - L(p - h)) / 2h``, ``h = 1e-6`` (relative
  error with the denominator floored at 1e-2, below which the differences are rounding); the
  float32 layer's gradients are then compared with the float64 layer's. Exact adjoint
  identities (Hypothesis) for the linear maps (conv, pools);
- against PyTorch's autograd (skipped without torch) on the same weights and batch, for
  every layer configuration and the three reference models, with float32 and with float64
  PyTorch as the reference;
- errors: backward before forward, in eval mode, wrong gradient shape, and bad loss input.

Relative error, used everywhere: ``max|a - b| / max(max|b|, tiny)`` (``b`` the reference).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npquant.app import demo
from npquant.models import io, nn
from npquant.training.losses import accuracy, log_softmax, softmax, softmax_cross_entropy

TINY = np.finfo(np.float32).tiny
TOL = 1e-5  # float32 against the reference (PyTorch float32 or float64, or our float64)
FD_TOL = 1e-6  # float64 layer against float64 central differences
MODELS = demo.MODELS


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY)) if b.size else 0.0


def _rng(seed=0):
    return np.random.default_rng(seed)


def _f32(rng, *shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------
# layer configurations, shared by the finite-difference and the PyTorch tests
# (factory, input shape); each factory builds a fresh layer from a seed


def _linear(bias=True):
    def make(rng):
        return nn.Linear(_f32(rng, 6, 7, scale=0.5), _f32(rng, 6) if bias else None, name="fc")

    return make


def _conv(cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    kh, kw = (k, k) if isinstance(k, int) else k

    def make(rng):
        return nn.Conv2d(
            _f32(rng, cout, cin // groups, kh, kw, scale=0.4),
            _f32(rng, cout) if bias else None,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            name="conv",
        )

    return make


def _bn(c=4, momentum=0.1):
    def make(rng):
        return nn.BatchNorm2d(
            rng.uniform(0.5, 1.5, c), _f32(rng, c), _f32(rng, c), rng.uniform(0.5, 2, c), momentum=momentum, name="bn"
        )

    return make


def _res(shortcut):
    def make(rng):
        if shortcut:
            body = nn.Sequential([_conv(4, 6, 3, stride=2, padding=1, bias=False)(rng), _bn(6)(rng), nn.ReLU()])
            proj = nn.Conv2d(_f32(rng, 6, 4, 1, 1, scale=0.5), None, stride=2, name="proj")
            return nn.Residual(body, proj, name="res")
        return nn.Residual(
            nn.Sequential([_conv(4, 4, 3, padding=1, bias=False)(rng), _bn(4)(rng), nn.ReLU()]), name="res"
        )

    return make


def _small_cnn(rng):
    """Every layer type in one model, with a residual block inside."""
    return nn.Sequential(
        [
            _conv(3, 4, 3, padding=1, bias=False)(rng),
            _bn(4)(rng),
            nn.ReLU6(name="act0"),
            nn.Residual(
                nn.Sequential(
                    [nn.Conv2d(_f32(rng, 4, 1, 3, 3, scale=0.5), None, padding=1, groups=4, name="dw"), nn.ReLU()]
                ),
                name="res1",
            ),
            nn.MaxPool2d(2, name="pool"),
            nn.AvgPool2d(3, 1, 1, count_include_pad=False, name="avg"),
            nn.Flatten(),
            nn.Linear(_f32(rng, 5, 4 * 3 * 3, scale=0.3), _f32(rng, 5), name="fc"),
        ]
    )


LAYERS = {
    "linear": (_linear(True), (5, 7)),
    "linear_3d_input": (_linear(True), (2, 3, 7)),
    "linear_nobias": (_linear(False), (5, 7)),
    "conv_s1": (_conv(4, 6, 3), (2, 4, 7, 6)),
    "conv_s2_p1": (_conv(4, 6, 3, stride=2, padding=1), (2, 4, 7, 6)),
    "conv_p2_d2": (_conv(4, 6, 3, padding=2, dilation=2), (2, 4, 7, 6)),
    "conv_g2": (_conv(4, 6, 3, padding=1, groups=2), (2, 4, 7, 6)),
    "conv_depthwise": (_conv(4, 4, 3, padding=1, groups=4), (2, 4, 7, 6)),
    "conv_depthwise_x2": (_conv(4, 8, 3, stride=2, padding=1, groups=4), (2, 4, 7, 6)),
    "conv_nobias_3x2_mixed": (
        _conv(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False),
        (2, 3, 8, 7),
    ),
    "conv_1x1": (_conv(4, 3, 1, bias=False), (3, 4, 5, 5)),
    "bn": (_bn(4), (3, 4, 5, 6)),
    "bn_momentum_none": (_bn(4, None), (3, 4, 5, 6)),
    "relu": (lambda rng: nn.ReLU(), (3, 4, 5, 6)),
    "relu6": (lambda rng: nn.ReLU6(), (3, 4, 5, 6)),
    "maxpool_2": (lambda rng: nn.MaxPool2d(2), (2, 3, 6, 7)),
    "maxpool_3_s2_p1": (lambda rng: nn.MaxPool2d(3, 2, 1), (2, 3, 7, 6)),
    "maxpool_3_s1_p1": (lambda rng: nn.MaxPool2d(3, 1, 1), (2, 3, 6, 5)),
    "avgpool_2": (lambda rng: nn.AvgPool2d(2), (2, 3, 6, 7)),
    "avgpool_3_s2_p1_incl": (lambda rng: nn.AvgPool2d(3, 2, 1, count_include_pad=True), (2, 3, 7, 6)),
    "avgpool_3_s2_p1_excl": (lambda rng: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 7, 6)),
    "avgpool_3_s1_p1_excl": (lambda rng: nn.AvgPool2d(3, 1, 1, count_include_pad=False), (2, 3, 6, 5)),
    "flatten": (lambda rng: nn.Flatten(), (2, 3, 4, 5)),
    "residual_identity": (_res(False), (2, 4, 6, 5)),
    "residual_conv_shortcut": (_res(True), (2, 4, 6, 5)),
    "sequential_all_layers": (_small_cnn, (3, 3, 6, 6)),
}


def _input(name, shape, rng):
    x = _f32(rng, *shape, scale=4.0 if name == "relu6" else 1.0)
    if name in ("relu", "relu6"):  # the boundaries, where the gradient is 0 (as PyTorch)
        x.flat[::7] = 0.0
        if name == "relu6":
            x.flat[3::11] = 6.0
    return x


# ---------------------------------------------------------------------------------------
# float64 finite differences (no PyTorch)


def _fd_subset(a, rng, k):
    return rng.choice(a.size, size=min(k, a.size), replace=False)


def _check_fd(model, x, rng, *, h=1e-6, k=24):
    """The float64 copy of ``model``: analytic gradients of sum(r * model(x)) against
    central differences at ``k`` random entries of the input and of every parameter."""
    m = model.astype(np.float64).train()
    x = x.astype(np.float64)
    y = m(x)
    r = rng.normal(size=y.shape)
    m.zero_grad()
    gx = m.backward(r)
    grads = {k_: v.copy() for k_, v in m.grads.items()}
    assert set(grads) == set(m.parameters())

    def loss():
        return float(np.sum(m(x) * r))

    errs = {}
    for key, arr, g in [("x", x, gx)] + [(k_, p, grads[k_]) for k_, p in m.parameters().items()]:
        idx = _fd_subset(arr, rng, k)
        fd = np.empty(idx.size)
        flat = arr.reshape(-1)
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + h
            lp = loss()
            flat[i] = old - h
            lm = loss()
            flat[i] = old
            fd[j] = (lp - lm) / (2 * h)
        # floor 1e-2: a conv bias before a batch norm has gradient 0, its differences are rounding
        errs[key] = float(np.max(np.abs(g.reshape(-1)[idx] - fd)) / max(np.max(np.abs(fd)), 1e-2))
    assert max(errs.values()) <= FD_TOL, errs
    return gx, grads


def _check_f32_vs_f64(model, x, rng):
    """The float32 layer's gradients equal its float64 copy's to float32 rounding."""
    m64 = model.astype(np.float64).train()
    m32 = model.train()
    y32 = m32(x)
    r = rng.normal(size=y32.shape).astype(np.float32)
    gx32 = m32.backward(r)
    y64 = m64(x.astype(np.float64))
    gx64 = m64.backward(r.astype(np.float64))
    assert y32.dtype == gx32.dtype == np.float32
    assert all(v.dtype == np.float32 for v in m32.grads.values())
    errs = {"y": rel_err(y32, y64), "x": rel_err(gx32, gx64)}
    errs.update({k: rel_err(m32.grads[k], m64.grads[k]) for k in m64.grads})
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_match_float64_finite_differences(name):
    factory, shape = LAYERS[name]
    rng = _rng(1)
    layer, x = factory(rng), _input(name, shape, rng)
    if name in ("relu", "relu6"):  # away from the kinks for differences; the kinks are tested below
        x = np.where(np.abs(x) < 1e-3, 0.5, x)
        x = np.where(np.abs(x - 6) < 1e-3, 5.5, x).astype(np.float32)
    _check_fd(layer, x, rng)
    _check_f32_vs_f64(layer, x, rng)


def test_relu_gradient_is_zero_at_the_kinks():
    x = np.array([[-1.0, 0.0, 1e-30, 3.0, 6.0, 7.0]], np.float32)
    g = np.arange(1, 7, dtype=np.float32)[None]
    relu, relu6 = nn.ReLU().train(), nn.ReLU6().train()
    relu(x)
    relu6(x)
    np.testing.assert_array_equal(relu.backward(g), [[0, 0, 3, 4, 5, 6]])
    np.testing.assert_array_equal(relu6.backward(g), [[0, 0, 3, 4, 0, 0]])


@pytest.mark.parametrize("name", MODELS)
def test_reference_model_gradients_match_finite_differences(name):
    ref = io.load_reference(demo.default_models_dir() / f"{name}.npz")
    rng = _rng(2)
    model = io.load_model(demo.default_models_dir() / f"{name}.npz")
    # the digits have many equal pixels: equal values in a max-pool window are a kink of
    # the loss where differences are one-sided; a little noise makes every window's max unique
    x = ref.arrays["test_inputs"][:6] + _f32(rng, 6, *ref.arrays["test_inputs"].shape[1:], scale=0.01)
    _check_fd(model, x, rng, k=8)
    _check_f32_vs_f64(io.load_model(demo.default_models_dir() / f"{name}.npz"), x, rng)


def test_loss_gradient_matches_finite_differences():
    rng = _rng(3)
    logits = rng.normal(size=(5, 7)) * 3
    labels = np.array([0, 6, 3, 3, 1])
    for reduction in ("mean", "sum"):
        loss, g = softmax_cross_entropy(logits, labels, reduction=reduction)
        assert g.dtype == np.float64
        h, fd = 1e-6, np.empty_like(logits)
        for i in np.ndindex(logits.shape):
            lp, lm = logits.copy(), logits.copy()
            lp[i] += h
            lm[i] -= h
            fd[i] = (
                softmax_cross_entropy(lp, labels, reduction=reduction)[0]
                - softmax_cross_entropy(lm, labels, reduction=reduction)[0]
            ) / (2 * h)
        assert rel_err(g, fd) <= FD_TOL
    loss32, g32 = softmax_cross_entropy(logits.astype(np.float32), labels)
    loss64, g64 = softmax_cross_entropy(logits.astype(np.float32).astype(np.float64), labels)
    assert g32.dtype == np.float32 and isinstance(loss32, float)
    assert abs(loss32 - loss64) <= TOL * abs(loss64) and rel_err(g32, g64) <= TOL


# ---------------------------------------------------------------------------------------
# exact identities (Hypothesis): a linear map's backward is its adjoint


@st.composite
def _conv_geometry(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    return dict(
        groups=groups,
        cin=cin,
        cout=cout,
        k=(kh, kw),
        s=(sh, sw),
        p=(ph, pw),
        d=(dh, dw),
        x=(draw(st.integers(1, 3)), cin, h, w),
        seed=draw(st.integers(0, 2**16)),
    )


@given(_conv_geometry())
def test_conv_backward_is_the_adjoint(geo):
    """``<conv(x), g> = <x, grad_x> = <W, grad_W>`` (no bias: conv is linear in x and in W)."""
    rng = _rng(geo["seed"])
    conv = nn.Conv2d(
        rng.normal(size=(geo["cout"], geo["cin"] // geo["groups"], *geo["k"])),
        None,
        stride=geo["s"],
        padding=geo["p"],
        dilation=geo["d"],
        groups=geo["groups"],
    ).astype(np.float64)
    x = rng.normal(size=geo["x"])
    y = conv.train()(x)
    g = rng.normal(size=y.shape)
    gx = conv.backward(g)
    ref = np.sum(y * g)
    assert np.isclose(np.sum(x * gx), ref, rtol=1e-10, atol=1e-10)
    assert np.isclose(np.sum(conv.weight * conv.grads["weight"]), ref, rtol=1e-10, atol=1e-10)


@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 1),
    st.booleans(),
    st.integers(3, 7),
    st.integers(3, 7),
    st.integers(0, 2**16),
)
def test_pool_backward_is_the_adjoint(k, s, p, cip, h, w, seed):
    """Average pooling is linear; max pooling picks ``x[argmax]``: both satisfy
    ``<pool(x), g> = <x, grad_x>`` for the backward of the same forward pass."""
    p = min(p, k // 2)
    rng = _rng(seed)
    x = rng.normal(size=(2, 2, h, w))
    for layer in (nn.AvgPool2d(k, s, p, count_include_pad=cip), nn.MaxPool2d(k, s, p)):
        layer = layer.astype(np.float64).train()
        y = layer(x)
        g = rng.normal(size=y.shape)
        assert np.isclose(np.sum(x * layer.backward(g)), np.sum(y * g), rtol=1e-10, atol=1e-10)


def test_maxpool_ties_go_to_the_first_maximum_in_scan_order():
    x = np.array([[[[1, 1, 0, 2], [1, 1, 2, 1], [5, 3, 4, 4], [3, 5, 4, 4]]]], np.float32)
    pool = nn.MaxPool2d(2).train()
    np.testing.assert_array_equal(pool(x), [[[[1, 2], [5, 4]]]])
    gx = pool.backward(np.array([[[[1, 2], [3, 4]]]], np.float32))
    np.testing.assert_array_equal(gx, [[[[1, 0, 0, 2], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]]])
    # overlapping windows (stride 1): one input that is the maximum of several windows
    pool = nn.MaxPool2d(2, 1).train()
    pool(x)
    gx = pool.backward(np.ones((1, 1, 3, 3), np.float32))
    np.testing.assert_array_equal(gx, [[[[1, 0, 0, 1], [0, 0, 1, 0], [2, 0, 3, 0], [0, 1, 0, 0]]]])


# ---------------------------------------------------------------------------------------
# PyTorch autograd (lazy; skipped without torch)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _to_torch(torch, layer):
    """A torch.nn module computing what ``layer`` computes, and {npquant key: torch key}."""
    tnn = torch.nn
    if isinstance(layer, nn.Sequential):
        subs = [_to_torch(torch, sub) for sub in layer]
        keys = {
            f"{sub.name}.{k}": f"{i}.{v}" for i, (sub, (_, km)) in enumerate(zip(layer, subs)) for k, v in km.items()
        }
        return tnn.Sequential(*[m for m, _ in subs]), keys
    if isinstance(layer, nn.Residual):

        class Res(tnn.Module):
            def __init__(self, body, shortcut):
                super().__init__()
                self.body, self.shortcut = body, shortcut

            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        body, kb = _to_torch(torch, layer.body)
        short, ks = (None, {}) if layer.shortcut is None else _to_torch(torch, layer.shortcut)
        keys = {
            **{f"body.{k}": f"body.{v}" for k, v in kb.items()},
            **{f"shortcut.{k}": f"shortcut.{v}" for k, v in ks.items()},
        }
        return Res(body, short), keys
    if isinstance(layer, nn.Linear):
        m = tnn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        o, cg, kh, kw = layer.weight.shape
        m = tnn.Conv2d(
            cg * layer.groups,
            o,
            (kh, kw),
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.BatchNorm2d):
        m = tnn.BatchNorm2d(layer.weight.shape[0], eps=layer.eps, momentum=layer.momentum)
    elif isinstance(layer, nn.ReLU):
        m = tnn.ReLU()
    elif isinstance(layer, nn.ReLU6):
        m = tnn.ReLU6()
    elif isinstance(layer, nn.MaxPool2d):
        m = tnn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    elif isinstance(layer, nn.AvgPool2d):
        m = tnn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, count_include_pad=layer.count_include_pad)
    elif isinstance(layer, nn.Flatten):
        m = tnn.Flatten()
    else:
        raise TypeError(type(layer))
    return m, {k: k for k in layer.state_dict()}


def _torch_twin(torch, layer, dtype):
    m, keys = _to_torch(torch, layer)
    m.load_state_dict({keys[k]: torch.from_numpy(np.asarray(v)) for k, v in layer.state_dict().items()})
    return m.to(dtype), keys


def _compare_step(torch, model, tmodel, keys, x, dtype, *, grad_y=None, labels=None):
    """One forward and backward pass in both; the relative errors of everything.
    ``grad_y``: a function of the output's shape giving the output gradient."""
    y = model(x)
    xt = torch.from_numpy(x).to(dtype).requires_grad_()
    yt = tmodel(xt)
    errs = {"y": rel_err(y, yt.detach().numpy())}
    if labels is not None:
        loss, g = softmax_cross_entropy(y, labels)
        lt = torch.nn.functional.cross_entropy(yt, torch.from_numpy(labels))
        lt.backward()
        errs["loss"] = abs(loss - lt.item()) / abs(lt.item())
    else:
        g = grad_y(y.shape)
        yt.backward(torch.from_numpy(g).to(dtype))
    gx = model.backward(g)
    errs["grad_x"] = rel_err(gx, xt.grad.numpy())
    tparams = dict(tmodel.named_parameters())
    for k, v in model.grads.items():
        errs[f"grad {k}"] = rel_err(v, tparams[keys[k]].grad.numpy())
    tstate = tmodel.state_dict()
    for k, v in model.state_dict().items():  # BN running statistics after the step
        if k.endswith(("running_mean", "running_var")):
            errs[k] = rel_err(v, tstate[keys[k]].numpy())
        elif k.endswith("num_batches_tracked"):
            assert int(v) == int(tstate[keys[k]]), k
    assert gx.dtype == np.float32 and gx.shape == x.shape
    return errs


@pytest.mark.parametrize("ref_dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_gradients_match_torch(torch, name, ref_dtype):
    dtype = getattr(torch, ref_dtype)
    factory, shape = LAYERS[name]
    rng = _rng(4)
    layer = factory(rng).train()
    tlayer, keys = _torch_twin(torch, layer, dtype)
    tlayer.train()
    for step in range(2):  # two steps: gradients accumulate in both, running stats move twice
        x = _input(name, shape, rng)
        errs = _compare_step(torch, layer, tlayer, keys, x, dtype, grad_y=lambda shape: _f32(rng, *shape))
        assert max(errs.values()) <= TOL, (step, errs)


@pytest.mark.parametrize("ref_dtype", ["float32", "float64"])
def test_maxpool_ties_match_torch(torch, ref_dtype):
    dtype = getattr(torch, ref_dtype)
    rng = _rng(5)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)]:
        pool = nn.MaxPool2d(k, s, p).train()
        x = rng.integers(0, 3, size=(2, 3, 7, 6)).astype(np.float32)  # many ties in every window
        g = _f32(rng, *pool(x).shape)
        xt = torch.from_numpy(x).to(dtype).requires_grad_()
        torch.nn.functional.max_pool2d(xt, k, s, p).backward(torch.from_numpy(g).to(dtype))
        assert rel_err(pool.backward(g), xt.grad.numpy()) <= TOL


@pytest.mark.parametrize("ref_dtype", ["float32", "float64"])
def test_frozen_and_eval_batchnorm_match_torch(torch, ref_dtype):
    """A frozen BN in a model being trained is PyTorch's ``bn.eval()`` under autograd; an
    eval-mode BN gives the eval output."""
    dtype = getattr(torch, ref_dtype)
    rng = _rng(6)
    bn = _bn(4)(rng)
    x = _f32(rng, 3, 4, 5, 6)
    tbn, keys = _torch_twin(torch, bn, dtype)
    assert rel_err(bn(x), tbn.eval()(torch.from_numpy(x).to(dtype)).detach().numpy()) <= TOL
    bn.train()
    bn.frozen = True
    before = bn.state_dict()
    np.testing.assert_array_equal(bn(x), bn.eval()(x))  # frozen training forward = eval forward
    bn.train()
    errs = _compare_step(torch, bn, tbn, keys, x, dtype, grad_y=lambda shape: _f32(rng, *shape))
    assert max(errs.values()) <= TOL, errs
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # running statistics untouched


@pytest.mark.parametrize("ref_dtype", ["float32", "float64"])
def test_loss_matches_torch(torch, ref_dtype):
    dtype = getattr(torch, ref_dtype)
    rng = _rng(7)
    logits = _f32(rng, 9, 10, scale=5)
    labels = rng.integers(0, 10, size=9)
    for reduction in ("mean", "sum"):
        lt = torch.from_numpy(logits).to(dtype).requires_grad_()
        ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels), reduction=reduction)
        ref.backward()
        loss, g = softmax_cross_entropy(logits, labels, reduction=reduction)
        assert abs(loss - ref.item()) <= TOL * abs(ref.item())
        assert rel_err(g, lt.grad.numpy()) <= TOL
    lt = torch.from_numpy(logits).to(dtype)
    assert rel_err(log_softmax(logits), torch.log_softmax(lt, 1).numpy()) <= TOL
    assert rel_err(softmax(logits, axis=0), torch.softmax(lt, 0).numpy()) <= TOL


@pytest.mark.parametrize("ref_dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_reference_model_gradients_match_torch(torch, name, ref_dtype):
    """Whole models in training mode: logits, loss, every parameter gradient, the input
    gradient and the BN running statistics after two steps, on batches of 32."""
    dtype = getattr(torch, ref_dtype)
    path = demo.default_models_dir() / f"{name}.npz"
    ref = io.load_reference(path)
    model = io.load_model(path).train()
    tmodel, keys = _torch_twin(torch, model, dtype)
    tmodel.train()
    assert set(keys) == set(ref.state)
    x, labels = ref.arrays["test_inputs"], ref.arrays["test_labels"]
    for step in range(2):
        errs = _compare_step(
            torch,
            model,
            tmodel,
            keys,
            x[32 * step : 32 * (step + 1)],
            dtype,
            labels=labels[32 * step : 32 * (step + 1)],
        )
        if ref_dtype == "float32":
            # PyTorch's float32 loss rounds 1 + r inside its log-sum-exp: on the CNN's second,
            # confidently classified batch (mean loss ~2e-3) its own error is ~1e-5 of the
            # loss (npquant's is 8e-7 against float64 PyTorch, asserted with TOL there)
            assert errs.pop("loss") <= 5 * TOL, (step, errs)
        assert max(errs.values()) <= TOL, (step, errs)


# ---------------------------------------------------------------------------------------
# the contract: modes, accumulation, parameters and state dicts


def _cnn():
    return io.load_model(demo.default_models_dir() / "cnn.npz")


def test_build_model_gives_an_eval_model_that_keeps_nothing():
    model = _cnn()
    x = io.load_reference(demo.default_models_dir() / "cnn.npz").arrays["test_inputs"][:8]
    assert model.training is False and all(layer.training is False for layer in model)
    model(x)
    assert all(layer._cache is None for layer in model)
    assert model.train() is model and model.training and all(layer.training for layer in model)
    model(x)
    assert all(layer._cache is not None for layer in model)
    assert model.eval() is model and all(layer._cache is None for layer in model)  # eval drops them
    assert [layer.name for layer in model] == [
        "conv1",
        "bn1",
        "relu1",
        "pool1",
        "conv2",
        "bn2",
        "relu2",
        "pool2",
        "flatten",
        "fc",
    ]
    assert model[1].momentum == 0.1 and int(_cnn()[1].num_batches_tracked) == int(
        io.load_reference(demo.default_models_dir() / "cnn.npz").state["bn1.num_batches_tracked"]
    )


def test_gradients_accumulate_and_zero_grad_resets():
    rng = _rng(8)
    model = _small_cnn(rng).train()
    x = _f32(rng, 3, 3, 6, 6)
    g = _f32(rng, *model(x).shape)
    gx1 = model.backward(g)
    once = {k: v.copy() for k, v in model.grads.items()}
    gx2 = model.backward(g)  # a second backward through the same forward pass adds
    np.testing.assert_array_equal(gx1, gx2)
    for k, v in model.named_grads().items():
        np.testing.assert_array_equal(v, 2 * once[k])
    model.zero_grad()
    assert all(not v.any() for v in model.grads.values())
    assert set(model.grads) == set(model.named_parameters()) == set(once)
    assert "res1.body.dw.weight" in once and "fc.bias" in once
    for k, p in model.parameters().items():
        assert model.grads[k].shape == p.shape and model.grads[k].dtype == np.float32


def test_parameters_are_live_and_state_dict_round_trips():
    path = demo.default_models_dir() / "cnn.npz"
    ref = io.load_reference(path)
    model = io.load_model(path)
    params = model.parameters()
    assert params["conv1.weight"] is model[0].weight and params["bn1.bias"] is model[1].bias
    assert set(params) == {k for k in ref.state if "running" not in k and "num_batches" not in k}
    sd = model.state_dict()
    assert set(sd) == set(ref.state)
    for k, v in ref.state.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape
        np.testing.assert_array_equal(sd[k], v)
        assert sd[k] is not model.parameters().get(k)  # copies
    x, y = ref.arrays["test_inputs"][:32], ref.arrays["test_labels"][:32]
    model.train()
    _, g = softmax_cross_entropy(model(x), y)
    model.backward(g)
    for k, p in model.parameters().items():
        p -= np.float32(0.1) * model.grads[k]  # an optimizer step, in place
    model.eval()
    sd = model.state_dict()
    assert int(sd["bn1.num_batches_tracked"]) == int(ref.state["bn1.num_batches_tracked"]) + 1
    rebuilt = nn.build_model(ref.arch, sd)
    np.testing.assert_array_equal(rebuilt(x), model(x))
    fresh = io.load_model(path)
    arrays = fresh.parameters()
    fresh.load_state_dict(sd)
    np.testing.assert_array_equal(fresh(x), model(x))
    assert all(fresh.parameters()[k] is v for k, v in arrays.items())  # loaded in place
    with pytest.raises(ValueError, match="missing 'fc.bias'"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "fc.bias"})
    with pytest.raises(ValueError, match="unexpected key 'fc.scale'"):
        fresh.load_state_dict({**sd, "fc.scale": np.ones(1)})
    with pytest.raises(ValueError, match="unexpected key 'head.weight'"):
        fresh.load_state_dict({**sd, "head.weight": np.ones(1)})
    with pytest.raises(ValueError, match=r"fc.weight has shape \(64, 10\), expected \(10, 64\)"):
        fresh.load_state_dict({**sd, "fc.weight": sd["fc.weight"].T})
    fresh.load_state_dict({k: v for k, v in sd.items() if "num_batches" not in k})  # optional, as in build_model


def test_batchnorm_running_statistics_without_torch():
    rng = _rng(9)
    bn = nn.BatchNorm2d(np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), momentum=0.25).train()
    x = _f32(rng, 4, 3, 5, 5) * 2 + 1
    y = bn(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(
        y, (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-5), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(bn.running_mean, 0.25 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 1
    cma = nn.BatchNorm2d(np.ones(3), np.zeros(3), np.full(3, 9.0), np.ones(3), momentum=None).train()
    xs = [_f32(rng, 4, 3, 2, 2) for _ in range(3)]
    for xi in xs:
        cma(xi)
    np.testing.assert_allclose(cma.running_mean, np.mean([xi.mean(axis=(0, 2, 3)) for xi in xs], axis=0), rtol=1e-5)
    arch = {"layers": [{"type": "batchnorm2d", "name": "bn", "num_features": 3, "momentum": 0.3, "eps": 1e-3}]}
    built = nn.build_model(arch, {f"bn.{k}": v for k, v in bn.state_dict().items()})
    assert built[0].momentum == 0.3 and built[0].eps == 1e-3 and int(built[0].num_batches_tracked) == 1


def test_astype_float64_is_an_independent_copy():
    model = _cnn()
    m64 = model.astype(np.float64)
    assert all(v.dtype == np.float64 for v in m64.parameters().values())
    assert all(v.dtype == np.float32 for v in model.parameters().values())
    assert not any(np.shares_memory(a, b) for a, b in zip(m64.parameters().values(), model.parameters().values()))
    assert m64.state_dict()["bn1.num_batches_tracked"].dtype == np.int64
    x = io.load_reference(demo.default_models_dir() / "cnn.npz").arrays["test_inputs"][:4]
    assert m64(x).dtype == np.float64 and model(x).dtype == np.float32
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        model.astype(np.float16)


# ---------------------------------------------------------------------------------------
# errors


def test_backward_errors_name_the_layer():
    rng = _rng(10)
    fc = _linear()(rng)
    x = _f32(rng, 5, 7)
    with pytest.raises(RuntimeError, match=r"fc \(Linear\): backward in eval mode"):
        fc.backward(np.ones((5, 6), np.float32))
    fc(x)  # eval-mode forward keeps nothing
    with pytest.raises(RuntimeError, match=r"fc \(Linear\): backward in eval mode"):
        fc.backward(np.ones((5, 6), np.float32))
    fc.train()
    with pytest.raises(RuntimeError, match=r"fc \(Linear\): backward called before a training-mode forward"):
        fc.backward(np.ones((5, 6), np.float32))
    fc(x)
    with pytest.raises(ValueError, match=r"fc \(Linear\): grad_y has shape \(5, 7\), expected \(5, 6\)"):
        fc.backward(np.ones((5, 7), np.float32))
    with pytest.raises(TypeError, match=r"fc \(Linear\): grad_y must be a floating-point array"):
        fc.backward(np.ones((5, 6), np.int32))
    fc.eval().train()  # eval drops what the forward pass kept
    with pytest.raises(RuntimeError, match="before a training-mode forward"):
        fc.backward(np.ones((5, 6), np.float32))
    model = _cnn().train()
    with pytest.raises(RuntimeError, match=r"conv1 \(Conv2d\): backward called before"):
        model.backward(np.ones((2, 10), np.float32))
    x = io.load_reference(demo.default_models_dir() / "cnn.npz").arrays["test_inputs"][:2]
    model(x)
    with pytest.raises(ValueError, match=r"fc \(Linear\): grad_y has shape \(2, 9\), expected \(2, 10\)"):
        model.backward(np.ones((2, 9), np.float32))
    model[4].eval()
    with pytest.raises(RuntimeError, match=r"conv2 \(Conv2d\): backward in eval mode"):
        model.backward(np.ones((2, 10), np.float32))
    assert all(not g.any() for g in model.grads.values())  # nothing half-accumulated
    nested = _small_cnn(_rng(12)).train()
    nested(_f32(rng, 3, 3, 6, 6))
    nested[3].body[0].eval()  # a conv inside the residual block
    with pytest.raises(RuntimeError, match=r"dw \(Conv2d\): backward in eval mode"):
        nested.backward(np.ones((3, 5), np.float32))
    assert all(not g.any() for g in nested.grads.values())
    res = nn.Residual(nn.ReLU(), name="res").train()
    with pytest.raises(RuntimeError, match=r"res \(Residual\): backward called before"):
        res.backward(np.ones(3, np.float32))


def test_training_errors():
    from npquant.models.convert import dynamic_quantize

    dyn = dynamic_quantize(_cnn())
    dyn.eval()  # fine: inference only
    with pytest.raises(TypeError, match=r"layers\[0\] \(_DynamicLayer\) has no backward pass"):
        dyn.train()
    with pytest.raises(TypeError, match=r"layers\[0\] \(_DynamicLayer\) has no backward pass"):
        dyn.backward(np.ones((1, 10), np.float32))
    with pytest.raises(TypeError, match="mode must be True or False"):
        _cnn().train("yes")
    rng = _rng(11)
    twice = nn.Sequential([nn.Linear(_f32(rng, 3, 3)), nn.ReLU(), nn.Linear(_f32(rng, 3, 3))])
    with pytest.raises(ValueError, match=r"layers\[0\] and layers\[2\] are both named 'linear'"):
        twice.parameters()
    bn = _bn(3)(rng).train()
    with pytest.raises(ValueError, match="bn: training needs more than one value per channel"):
        bn(np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="momentum must be None or a number in"):
        nn.BatchNorm2d(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), momentum=1.5)
    with pytest.raises(ValueError, match="x contains NaN"):
        nn.ReLU().train()(np.array([np.nan], np.float32))


def test_loss_errors_and_accuracy():
    logits = np.array([[1.0, 2.0, 0.5], [3.0, 3.0, 0.0]], np.float32)
    assert accuracy(logits, np.array([1, 0])) == 1.0 and accuracy(logits, np.array([1, 1])) == 0.5
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, C\)"):
        softmax_cross_entropy(logits[0], np.array([1]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        softmax_cross_entropy(logits, np.array([1, 0, 2]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\], got 3"):
        softmax_cross_entropy(logits, np.array([1, 3]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\], got -1"):
        softmax_cross_entropy(logits, np.array([-1, 0]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        softmax_cross_entropy(logits, np.array([1.0, 0.0]))
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        softmax_cross_entropy(logits.astype(np.int64), np.array([1, 0]))
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="logits contains NaN or infinity"):
            softmax_cross_entropy(np.array([[0.0, bad]], np.float32), np.array([0]))
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum'"):
        softmax_cross_entropy(logits, np.array([1, 0]), reduction="none")
    # a confident prediction: the loss log(1 + 2 exp(-20)) ~ 4e-9 and p - 1 keep their precision
    loss, g = softmax_cross_entropy(np.array([[20.0, 0.0, 0.0]], np.float32), np.array([0]))
    exact = np.log1p(2 * np.exp(-20.0))
    assert abs(loss - exact) <= 1e-6 * exact and abs(g[0, 0] + exact) <= 1e-6 * exact
    # stable for huge logits: no overflow, exact one-hot limit
    loss, g = softmax_cross_entropy(np.array([[1e30, 0.0, -1e30]], np.float32), np.array([0]))
    assert loss == 0.0 and np.array_equal(g, [[0.0, 0.0, 0.0]])
    loss, g = softmax_cross_entropy(np.array([[1e30, 0.0]], np.float32), np.array([1]))
    assert loss == pytest.approx(1e30, rel=1e-6) and np.array_equal(g, [[1.0, -1.0]])
