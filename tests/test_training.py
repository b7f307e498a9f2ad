"""npquant.training.optim and npquant.training.trainer: optimizers and schedules against
torch.optim, masks, the training loop, and from-scratch training of the reference models.

Tolerances against PyTorch 2.13 (float32 parameters and gradients, ``foreach=False``):

- SGD (momentum, dampening, Nesterov, weight decay): bit for bit, every step.
- Adam, AdamW, AMSGrad: the moments bit for bit; the parameters bit for bit once PyTorch's
  float32 ``sqrt`` (MKL vsSqrt, not always correctly rounded) is replaced by a correctly
  rounded one, and within ``ADAM_ULPS`` float32 ulps with PyTorch's own ``sqrt``.
- Schedules: the closed forms equal PyTorch's ``_get_closed_form_lr`` exactly and its
  recursive ``step()`` to 1e-12 relative.

The fused multiply-add mode is the one PyTorch's CPU kernels use in this process (fused on
its AVX2/AVX-512 paths, separate on ``ATEN_CPU_CAPABILITY=default``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npquant.training import optim as O
from npquant.training import trainer as T

ADAM_ULPS = 32  # measured: at most 8 after 20 steps of the configurations below


# ---------------------------------------------------------------------------------------
# a tiny model that follows the contract of npquant.training (independent of npquant.models.nn)
# ---------------------------------------------------------------------------------------
class ToyLinear:
    def __init__(self, w, b):
        self.weight, self.bias = w, b
        self.grads = {"weight": np.zeros_like(w), "bias": np.zeros_like(b)}
        self.training = True

    def parameters(self):
        return {"weight": self.weight, "bias": self.bias}

    def __call__(self, x):
        if self.training:
            self._x = x
        return x @ self.weight.T + self.bias

    def backward(self, gy):
        self.grads["weight"] += gy.T @ self._x
        self.grads["bias"] += gy.sum(axis=0)
        return gy @ self.weight


class ToyReLU:
    training = True

    def parameters(self):
        return {}

    def __call__(self, x):
        if self.training:
            self._pos = x > 0
        return np.maximum(x, np.float32(0))

    def backward(self, gy):
        return np.where(self._pos, gy, np.float32(0))


class ToyModel:
    """fc1 -> relu -> fc2, the contract's Sequential in miniature."""

    def __init__(self, n_in=6, n_hidden=16, n_out=3, seed=0):
        rng = np.random.default_rng(seed)
        b1, b2 = 1 / math.sqrt(n_in), 1 / math.sqrt(n_hidden)
        self.layers = {
            "fc1": ToyLinear(
                rng.uniform(-b1, b1, (n_hidden, n_in)).astype(np.float32),
                rng.uniform(-b1, b1, n_hidden).astype(np.float32),
            ),
            "relu": ToyReLU(),
            "fc2": ToyLinear(
                rng.uniform(-b2, b2, (n_out, n_hidden)).astype(np.float32),
                rng.uniform(-b2, b2, n_out).astype(np.float32),
            ),
        }
        self.training = True

    def __call__(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x

    def backward(self, g):
        for layer in reversed(list(self.layers.values())):
            g = layer.backward(g)
        return g

    def train(self):
        self.training = True
        for layer in self.layers.values():
            layer.training = True

    def eval(self):
        self.training = False
        for layer in self.layers.values():
            layer.training = False

    def zero_grad(self):
        for layer in self.layers.values():
            for g in getattr(layer, "grads", {}).values():
                g[...] = 0

    def named_parameters(self):
        return {f"{n}.{k}": v for n, layer in self.layers.items() for k, v in layer.parameters().items()}

    def named_grads(self):
        return {f"{n}.{k}": v for n, layer in self.layers.items() for k, v in getattr(layer, "grads", {}).items()}

    def state_dict(self):
        return self.named_parameters()


def toy_loss(logits, labels):
    """Softmax cross-entropy, batch mean, float32: (loss, grad_logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    n = len(labels)
    loss = (np.log(total[:, 0]) - z[np.arange(n), labels]).mean()
    g = p.copy()
    g[np.arange(n), labels] -= 1
    return np.float32(loss), (g / np.float32(n)).astype(np.float32)


def toy_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, 6))
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(0, 1, (n, 6))).astype(np.float32)
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------------------
# the fused multiply-add the optimizers rely on
# ---------------------------------------------------------------------------------------
def test_fused_multiply_add_rounds_once_where_float64_rounds_twice():
    from npquant._kernels.quantize import fma32
    from npquant.rounding import fma32 as _fma32_numpy

    # a*b + c = 1 + 2**-24 + 2**-70: float64 rounds it to the float32 midpoint 1 + 2**-24,
    # which then ties to 1.0; the exact value is above the midpoint: 1 + 2**-23.
    a = np.float32(1 + 2.0**-23)
    b = np.float32(-(1 - 2.0**-23) * 2.0**-24)
    c = np.float32(1 + 2.0**-23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1.0)
    assert O._muladd(a, b, c, True) == np.float32(1 + 2.0**-23)
    assert fma32(a, b, c) == np.float32(1 + 2.0**-23)
    assert _fma32_numpy(-a, b, -c) == -np.float32(1 + 2.0**-23)
    assert O._muladd(a, b, c, False) == np.float32(1.0)
    from npquant._kernels import optim as K

    assert K.fma32(a, b, c) == np.float32(1 + 2.0**-23)
    # float32 subnormals: c = (2**23 - 1) * 2**-149, the largest; c + 2**-150 - 2**-196
    # rounds in float64 to the midpoint between c and 2**-126, which ties to 2**-126
    a = np.float32(2.0**-75 * (1 + 2.0**-23))
    b = np.float32(2.0**-75 * (1 - 2.0**-23))
    c = np.float32((2**23 - 1) * 2.0**-149)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(2.0**-126)
    for fma in (K.fma32, fma32, _fma32_numpy):
        assert fma(a, b, c) == c


def test_optimizer_fma32_kernel_equals_the_numpy_twin():
    from npquant._kernels import optim as K
    from npquant.rounding import fma32 as _fma32_numpy

    rng = np.random.default_rng(4)
    n = 3000
    # random, and near-ties: c on a fine grid, a * b close to half a float32 ulp of c
    a = np.concatenate([rng.standard_normal(n), 1 + rng.integers(-99, 99, n) * 2.0**-23]).astype(np.float32)
    b = np.concatenate([rng.standard_normal(n) * 1e-3, -(1 + rng.integers(-99, 99, n) * 2.0**-23) * 2.0**-24]).astype(
        np.float32
    )
    c = np.concatenate([rng.standard_normal(n), 1 + rng.integers(1, 1 << 20, n) * 2.0**-23]).astype(np.float32)
    want = _fma32_numpy(a, b, c)
    got = np.array([K.fma32(x, y, z) for x, y, z in zip(a, b, c)], np.float32)
    np.testing.assert_array_equal(got, want)
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert np.count_nonzero(naive != want) > 0  # the near-ties do exercise the fix


# ---------------------------------------------------------------------------------------
# optimizers against torch.optim
# ---------------------------------------------------------------------------------------
SHAPES = {"fc.weight": (37, 13), "fc.bias": (37,), "conv.weight": (8, 3, 3, 3), "big": (1000,)}


def _problem(steps, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()} for _ in range(steps)]
    return p0, grads


def _torch_fused(torch):
    """Whether ATen's CPU kernels fuse multiply-adds in this process (AVX2/AVX-512 paths)."""
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def _ulps(a, b):
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)  # monotonic integer order of floats
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int(np.abs(ia - ib).max())


class _CorrectSqrt:
    """Within the block, torch.Tensor.sqrt is NumPy's correctly rounded sqrt."""

    def __init__(self, torch, on=True):
        self.torch, self.on = torch, on

    def __enter__(self):
        self.orig = self.torch.Tensor.sqrt
        if self.on:
            self.torch.Tensor.sqrt = lambda t: self.torch.from_numpy(np.sqrt(t.detach().numpy()))

    def __exit__(self, *exc):
        self.torch.Tensor.sqrt = self.orig


def _run_both(
    torch,
    make_np,
    make_torch,
    steps=20,
    *,
    masks=None,
    lr_changes=None,
    correct_sqrt=False,
    fused=None,
    backend="numba",
):
    """Run our optimizer and torch's on the same start and gradients; return
    (our params, torch params, our optimizer, torch optimizer, worst ulps over all steps)."""
    p0, grads = _problem(steps)
    if masks is not None:  # torch's reference: the pruned weights start at 0, their grads are 0
        p0 = {k: np.where(masks.get(k, True), v, np.float32(0)) for k, v in p0.items()}
    ours = {k: v.copy() for k, v in p0.items()}
    opt = make_np(ours, _torch_fused(torch) if fused is None else fused)
    opt.backend = backend
    if masks is not None:
        opt.set_masks(masks)
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    topt = make_torch(list(tp.values()))
    worst = 0
    with _CorrectSqrt(torch, correct_sqrt):
        for i, g in enumerate(grads):
            if lr_changes and i in lr_changes:
                opt.lr = lr_changes[i]
                for group in topt.param_groups:
                    group["lr"] = lr_changes[i]
            opt.step(g)
            for k, t in tp.items():
                gk = g[k] if masks is None or k not in masks else np.where(masks[k], g[k], np.float32(0))
                t.grad = torch.from_numpy(gk.copy())
            topt.step()
            for k in tp:
                worst = max(worst, _ulps(ours[k], tp[k].detach().numpy()))
    return ours, {k: v.detach().numpy() for k, v in tp.items()}, opt, topt, worst


SGD_CASES = {
    "plain": ({}, {}),
    "momentum": ({"momentum": 0.9}, {"momentum": 0.9}),
    "momentum_dampening_wd": (
        {"momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3},
        {"momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3},
    ),
    "nesterov_wd": (
        {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-2},
    ),
}


@pytest.mark.parametrize("backend", O.BACKENDS)
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_equals_torch_bit_for_bit(case, backend):
    torch = pytest.importorskip("torch")
    ours_kw, torch_kw = SGD_CASES[case]
    ours, theirs, _, _, worst = _run_both(
        torch,
        lambda P, f: O.SGD(P, 0.05, fused_multiply_add=f, **ours_kw),
        lambda t: torch.optim.SGD(t, 0.05, foreach=False, **torch_kw),
        lr_changes={10: 0.02},
        backend=backend,
    )
    assert worst == 0
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_sgd_in_the_other_multiply_add_mode_differs_from_torch():
    """The mode matters: the wrong one is off in the last bit somewhere (so the bit-exact
    test above does test the fused multiply-add)."""
    torch = pytest.importorskip("torch")
    _, _, _, _, worst = _run_both(
        torch,
        lambda P, f: O.SGD(P, 0.05, momentum=0.9, fused_multiply_add=not f),
        lambda t: torch.optim.SGD(t, 0.05, momentum=0.9, foreach=False),
    )
    assert worst >= 1


ADAM_CASES = {
    "adam": (O.Adam, {}, "Adam", {}),
    "adam_wd_amsgrad": (
        O.Adam,
        {"weight_decay": 1e-2, "amsgrad": True, "betas": (0.8, 0.99)},
        "Adam",
        {"weight_decay": 1e-2, "amsgrad": True, "betas": (0.8, 0.99)},
    ),
    "adam_beta1_small": (
        O.Adam,
        {"betas": (0.3, 0.9), "eps": 1e-6},  # lerp weight 0.7 >= 0.5
        "Adam",
        {"betas": (0.3, 0.9), "eps": 1e-6},
    ),
    "adamw": (O.AdamW, {}, "AdamW", {}),
    "adamw_amsgrad": (O.AdamW, {"weight_decay": 0.1, "amsgrad": True}, "AdamW", {"weight_decay": 0.1, "amsgrad": True}),
}


@pytest.mark.parametrize("backend", O.BACKENDS)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_equals_torch_given_a_correctly_rounded_sqrt(case, backend):
    torch = pytest.importorskip("torch")
    cls, kw, tname, tkw = ADAM_CASES[case]
    ours, theirs, opt, topt, worst = _run_both(
        torch,
        lambda P, f: cls(P, 3e-3, fused_multiply_add=f, **kw),
        lambda t: getattr(torch.optim, tname)(t, 3e-3, foreach=False, **tkw),
        lr_changes={7: 1e-3},
        correct_sqrt=True,
        backend=backend,
    )
    assert worst == 0
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])
    tstate = list(topt.state.values())
    for (name, st_), ts in zip(opt.state.items(), tstate):
        for key in st_:
            np.testing.assert_array_equal(st_[key], ts[key].numpy(), err_msg=f"{name} {key}")
        assert float(ts["step"]) == opt.step_count == 20


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_within_a_few_ulps_of_torch_as_it_is(case):
    torch = pytest.importorskip("torch")
    cls, kw, tname, tkw = ADAM_CASES[case]
    ours, theirs, opt, topt, worst = _run_both(
        torch,
        lambda P, f: cls(P, 3e-3, fused_multiply_add=f, **kw),
        lambda t: getattr(torch.optim, tname)(t, 3e-3, foreach=False, **tkw),
    )
    assert worst <= ADAM_ULPS
    if not (kw.get("weight_decay") and cls is O.Adam):  # moments do not depend on sqrt here
        for st_, ts in zip(opt.state.values(), topt.state.values()):
            np.testing.assert_array_equal(st_["exp_avg"], ts["exp_avg"].numpy())
            np.testing.assert_array_equal(st_["exp_avg_sq"], ts["exp_avg_sq"].numpy())


TWIN_CASES = {
    "sgd": lambda P, f: O.SGD(P, 0.05, fused_multiply_add=f),
    "sgd_momentum_dampening_wd": lambda P, f: O.SGD(
        P, 0.05, momentum=0.9, dampening=0.25, weight_decay=1e-2, fused_multiply_add=f
    ),
    "sgd_nesterov": lambda P, f: O.SGD(P, 0.05, momentum=0.9, nesterov=True, fused_multiply_add=f),
    "adam": lambda P, f: O.Adam(P, 3e-3, fused_multiply_add=f),
    "adam_wd_amsgrad_small_beta1": lambda P, f: O.Adam(
        P, 3e-3, betas=(0.2, 0.9), weight_decay=0.1, amsgrad=True, fused_multiply_add=f
    ),
    "adamw": lambda P, f: O.AdamW(P, 1e-2, weight_decay=0.5, fused_multiply_add=f),
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", list(TWIN_CASES))
def test_numba_kernels_equal_their_numpy_twins(case, fused):
    """Same bits from the compiled loop and the vectorized twin, on values of every size
    (zeros, subnormals, large), also when a step is not contiguous (the twin runs)."""
    rng = np.random.default_rng(11)
    shape = (300,)
    special = np.array([0, -0.0, 1e-42, -1e-40, 1e-30, 3e4, -7e5, 1], np.float32)

    def values(scale):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        a[: special.size] = special
        return a

    p0 = values(1.0)
    grads = [{"w": values(0.1)} for _ in range(12)]
    outs = []
    for backend in O.BACKENDS:
        P = {"w": p0.copy()}
        opt = TWIN_CASES[case](P, fused)
        opt.backend = backend
        for i, g in enumerate(grads):
            opt.lr = 0.01 if i == 6 else opt.lr
            opt.step(g)
        outs.append((P["w"], opt.state_dict()["state"]["w"]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for key in outs[0][1]:
        np.testing.assert_array_equal(outs[0][1][key], outs[1][1][key], err_msg=key)
    # a strided (non-contiguous) parameter is updated by the twin, in place
    base = np.zeros(600, np.float32)
    base[::2] = p0
    Q = {"w": base[::2]}
    opt = TWIN_CASES[case](Q, fused)
    for i, g in enumerate(grads):
        opt.lr = 0.01 if i == 6 else opt.lr
        opt.step(g)
    np.testing.assert_array_equal(base[::2], outs[0][0])
    assert not base[1::2].any()


def test_backend_is_checked():
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'numpy'"):
        O.SGD(_params(), 0.1, backend="torch")


# ---------------------------------------------------------------------------------------
# masks: pruned weights stay exactly zero
# ---------------------------------------------------------------------------------------
def _masks(seed=5):
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.random(SHAPES["fc.weight"]) > 0.5,
        "conv.weight": (rng.random(SHAPES["conv.weight"]) > 0.3).astype(np.uint8),
    }


MASK_CASES = {
    "sgd_momentum": lambda P, f: O.SGD(P, 0.05, momentum=0.9, fused_multiply_add=f),
    "sgd_nesterov_wd": lambda P, f: O.SGD(
        P, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, fused_multiply_add=f
    ),
    "adam_wd": lambda P, f: O.Adam(P, 1e-2, weight_decay=1e-2, fused_multiply_add=f),
    "adamw_amsgrad": lambda P, f: O.AdamW(P, 1e-2, amsgrad=True, fused_multiply_add=f),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_persistent_masks_keep_pruned_weights_and_state_exactly_zero(case):
    make = MASK_CASES[case]
    masks = _masks()
    p0, grads = _problem(15, seed=2)
    P = {k: v.copy() for k, v in p0.items()}
    opt = make(P, True)
    opt.set_masks(masks)
    for g in grads:
        g_before = {k: v.copy() for k, v in g.items()}
        opt.step(g)
        for k, m in masks.items():
            pruned = ~np.asarray(m, bool)
            assert np.all(P[k][pruned] == 0) and not np.signbit(P[k][pruned]).any()
            for buf in opt.state[k].values():
                assert np.all(buf[pruned] == 0)
            assert np.all(P[k][~pruned] != 0)  # the others train
        for k in g:  # the caller's gradients are untouched
            np.testing.assert_array_equal(g[k], g_before[k])


@pytest.mark.parametrize("case", ["sgd_momentum", "sgd_nesterov_wd", "adam_wd", "adamw_amsgrad"])
def test_masked_optimizer_equals_torch_with_masked_gradients(case):
    """The unpruned weights train exactly as in PyTorch with the gradients masked."""
    torch = pytest.importorskip("torch")
    tmake = {
        "sgd_momentum": lambda t: torch.optim.SGD(t, 0.05, momentum=0.9, foreach=False),
        "sgd_nesterov_wd": lambda t: torch.optim.SGD(
            t, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, foreach=False
        ),
        "adam_wd": lambda t: torch.optim.Adam(t, 1e-2, weight_decay=1e-2, foreach=False),
        "adamw_amsgrad": lambda t: torch.optim.AdamW(t, 1e-2, amsgrad=True, foreach=False),
    }[case]
    masks = {k: np.asarray(v, bool) for k, v in _masks().items()}
    ours, theirs, _, _, worst = _run_both(torch, MASK_CASES[case], tmake, steps=12, masks=masks, correct_sqrt=True)
    assert worst == 0


def test_apply_mask_zeroes_parameters_and_state_once():
    p0, grads = _problem(3)
    P = {k: v.copy() for k, v in p0.items()}
    opt = O.SGD(P, 0.1, momentum=0.9)
    opt.step(grads[0])
    m = _masks()
    opt.apply_mask(m)
    pruned = ~m["fc.weight"]
    assert np.all(P["fc.weight"][pruned] == 0)
    assert np.all(opt.state["fc.weight"]["momentum_buffer"][pruned] == 0)
    assert opt.masks is None
    opt.step(grads[1])  # not persistent: the momentum-free gradient revives them
    assert np.any(P["fc.weight"][pruned] != 0)
    opt.set_masks(m)
    opt.set_masks(None)
    assert opt.masks is None


def test_masks_bad_input():
    P = {k: v.copy() for k, v in _problem(1)[0].items()}
    opt = O.Adam(P)
    with pytest.raises(ValueError, match="masks has unexpected key 'nope'"):
        opt.set_masks({"nope": np.ones(3, bool)})
    with pytest.raises(ValueError, match=r"masks\['fc.bias'\] has shape"):
        opt.apply_mask({"fc.bias": np.ones(3, bool)})
    with pytest.raises(ValueError, match=r"masks\['fc.bias'\] must be boolean"):
        opt.apply_mask({"fc.bias": np.full(37, 0.5)})
    with pytest.raises(TypeError, match="masks must be a dict"):
        opt.apply_mask([np.ones(37, bool)])


# ---------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda P: O.SGD(P, 0.1, momentum=0.9, nesterov=True),
        lambda P: O.Adam(P, 1e-2, amsgrad=True),
        lambda P: O.AdamW(P, 1e-2),
    ],
)
def test_state_dict_round_trip_resumes_bit_for_bit(make):
    p0, grads = _problem(8)
    A = {k: v.copy() for k, v in p0.items()}
    a = make(A)
    for g in grads[:4]:
        a.step(g)
    saved_params = {k: v.copy() for k, v in A.items()}
    saved = a.state_dict()
    for g in grads[4:]:
        a.step(g)
    B = {k: v.copy() for k, v in saved_params.items()}
    b = make(B)
    b.load_state_dict(saved)
    assert b.step_count == 4
    for g in grads[4:]:
        b.step(g)
    for k in A:
        np.testing.assert_array_equal(A[k], B[k])
    # the state dict is a copy: later steps did not change it
    c = make({k: v.copy() for k, v in saved_params.items()})
    c.load_state_dict(saved)
    assert c.state_dict()["step_count"] == 4


def test_zero_state_restarts_the_optimizer():
    p0, grads = _problem(2)
    A = {k: v.copy() for k, v in p0.items()}
    a = O.Adam(A, 1e-2)
    a.step(grads[0])
    a.zero_state()
    assert a.step_count == 0 and not a.state["big"]["exp_avg"].any()
    B = {k: v.copy() for k, v in A.items()}
    b = O.Adam(B, 1e-2)
    a.step(grads[1])
    b.step(grads[1])
    for k in A:
        np.testing.assert_array_equal(A[k], B[k])


def test_load_state_dict_refuses_other_optimizers_and_shapes():
    P = {k: v.copy() for k, v in _problem(1)[0].items()}
    sgd, adam = O.SGD(P, 0.1, momentum=0.5), O.Adam(P)
    with pytest.raises(ValueError, match="Adam.state_dict"):
        adam.load_state_dict(sgd.state_dict())
    sd = adam.state_dict()
    sd["state"]["big"]["exp_avg"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="has shape"):
        adam.load_state_dict(sd)
    sd = adam.state_dict()
    del sd["state"]["big"]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\['big'\] has no 'exp_avg_sq'"):
        adam.load_state_dict(sd)
    del sd["state"]["big"]
    with pytest.raises(ValueError, match=r"state_dict\['state'\] is missing 'big'"):
        adam.load_state_dict(sd)


def test_state_dict_carries_the_masks():
    P = {k: v.copy() for k, v in _problem(1)[0].items()}
    a = O.SGD(P, 0.1, momentum=0.9)
    a.set_masks(_masks())
    b = O.SGD({k: v.copy() for k, v in P.items()}, 0.1, momentum=0.9)
    b.load_state_dict(a.state_dict())
    assert set(b.masks) == {"fc.weight", "conv.weight"} and b.masks["conv.weight"].dtype == bool
    np.testing.assert_array_equal(b.masks["fc.weight"], a.masks["fc.weight"])


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def _params():
    return {"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)}


@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf")])
def test_lr_must_be_positive_and_finite(lr):
    with pytest.raises(ValueError, match="lr must be positive and finite"):
        O.SGD(_params(), lr)
    with pytest.raises(ValueError, match="lr must be positive and finite"):
        O.Adam(_params(), lr)
    opt = O.AdamW(_params())
    with pytest.raises(ValueError, match="lr must be positive and finite"):
        opt.lr = lr


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum": -0.1}, "momentum must be >= 0"),
        ({"momentum": float("nan")}, "momentum must be >= 0"),
        ({"dampening": 1.5}, r"dampening must be in \[0, 1\]"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov=True needs momentum > 0 and dampening == 0"),
    ],
)
def test_sgd_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        O.SGD(_params(), 0.1, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
        ({"betas": (0.9,)}, "betas must be a pair"),
        ({"eps": 0.0}, "eps must be positive"),
        ({"eps": float("inf")}, "eps must be positive"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_adam_bad_hyperparameters(kwargs, match):
    for cls in (O.Adam, O.AdamW):
        with pytest.raises(ValueError, match=match):
            cls(_params(), 1e-3, **kwargs)


def test_hyperparameter_types():
    with pytest.raises(TypeError, match="lr must be a real number"):
        O.SGD(_params(), "0.1")
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        O.SGD(_params(), 0.1, momentum=0.9, nesterov=1)
    with pytest.raises(TypeError, match="amsgrad must be True or False"):
        O.Adam(_params(), amsgrad="yes")


def test_params_must_be_live_float32_arrays():
    with pytest.raises(TypeError, match="params must be a dict"):
        O.SGD([np.ones(3, np.float32)], 0.1)
    with pytest.raises(ValueError, match="params is empty"):
        O.SGD({}, 0.1)
    with pytest.raises(TypeError, match=r"params\['w'\] must be a float32 NumPy array"):
        O.SGD({"w": np.ones(3)}, 0.1)
    with pytest.raises(TypeError, match=r"params\['w'\] must be a float32 NumPy array"):
        O.SGD({"w": [1.0, 2.0]}, 0.1)
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['w'\] is read-only"):
        O.SGD({"w": ro}, 0.1)


def test_grads_are_checked():
    opt = O.SGD(_params(), 0.1)
    g = {"w": np.ones((2, 3), np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="grads is missing 'b'"):
        opt.step({"w": g["w"]})
    with pytest.raises(ValueError, match="grads has unexpected key 'c'"):
        opt.step({**g, "c": g["b"]})
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(3, 2\), the parameter has shape \(2, 3\)"):
        opt.step({**g, "w": np.ones((3, 2), np.float32)})
    with pytest.raises(TypeError, match=r"grads\['b'\] must be a floating-point array"):
        opt.step({**g, "b": np.ones(2, np.int32)})
    with pytest.raises(ValueError, match=r"grads\['b'\] contains NaN or infinity"):
        opt.step({**g, "b": np.array([1, np.nan], np.float32)})
    with pytest.raises(TypeError, match="grads must be a dict"):
        opt.step([g["w"], g["b"]])
    assert opt.step_count == 0 and np.all(opt.params["w"] == 1)  # nothing was applied
    opt.step({k: v.astype(np.float64) for k, v in g.items()})  # float64 is converted
    assert opt.step_count == 1 and np.allclose(opt.params["w"], 0.9)


# ---------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------
def _torch_lrs(torch, make_sched, epochs, base_lr=0.1):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], base_lr)
    sched = make_sched(opt)
    lrs, closed = [], []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if hasattr(sched, "_get_closed_form_lr"):
            closed.append(sched._get_closed_form_lr()[0])
        opt.step()
        sched.step()
    return lrs, closed


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: O.StepLR(7, 0.1), lambda torch, o: torch.optim.lr_scheduler.StepLR(o, 7, 0.1)),
        (lambda: O.StepLR(3, 0.5), lambda torch, o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        (lambda: O.CosineAnnealingLR(20), lambda torch, o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20)),
        (
            lambda: O.CosineAnnealingLR(10, 1e-3),
            lambda torch, o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 1e-3),
        ),  # past T_max: rises again
    ],
)
def test_schedules_equal_torch(ours, theirs):
    torch = pytest.importorskip("torch")
    sched = ours()
    lrs, closed = _torch_lrs(torch, lambda o: theirs(torch, o), 30)
    mine = [sched(e, 0.1) for e in range(30)]
    assert mine == closed  # closed forms: exactly
    np.testing.assert_allclose(mine, lrs, rtol=1e-12, atol=1e-18)  # torch's recursive step()


def test_warmup_then_cosine_equals_torch_sequential_lr():
    torch = pytest.importorskip("torch")
    import warnings

    def theirs(o):
        lr_s = torch.optim.lr_scheduler
        return lr_s.SequentialLR(
            o,
            [lr_s.LinearLR(o, start_factor=0.25, total_iters=5), lr_s.CosineAnnealingLR(o, T_max=15, eta_min=1e-4)],
            milestones=[5],
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lrs, _ = _torch_lrs(torch, theirs, 25)
    sched = O.LinearWarmup(5, O.CosineAnnealingLR(15, 1e-4), start_factor=0.25)
    np.testing.assert_allclose([sched(e, 0.1) for e in range(25)], lrs, rtol=1e-12)
    assert O.LinearWarmup(4)(10, 0.1) == 0.1


def test_schedules_bad_input():
    with pytest.raises(ValueError, match=r"step_size must be in \[1, inf\]"):
        O.StepLR(0)
    with pytest.raises(ValueError, match="gamma must be positive"):
        O.StepLR(3, 0.0)
    with pytest.raises(ValueError, match=r"T_max must be in \[1, inf\]"):
        O.CosineAnnealingLR(0)
    with pytest.raises(ValueError, match="eta_min must be >= 0"):
        O.CosineAnnealingLR(5, -1.0)
    with pytest.raises(ValueError, match=r"start_factor must be in \(0, 1\]"):
        O.LinearWarmup(3, start_factor=0)
    with pytest.raises(TypeError, match="after must be a schedule"):
        O.LinearWarmup(3, after=5)
    with pytest.raises(ValueError, match=r"epoch must be in \[0, inf\]"):
        O.StepLR(3)(-1, 0.1)
    with pytest.raises(ValueError, match="base_lr must be positive"):
        O.CosineAnnealingLR(3)(1, 0.0)


# ---------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------
def _fit(seed=0, epochs=4, **kw):
    x, y = toy_data()
    model = ToyModel(seed=1)
    opt = kw.pop("opt", None) or O.SGD(model.named_parameters(), 0.1, momentum=0.9)
    h = T.fit(
        model,
        toy_loss,
        opt,
        x[:90],
        y[:90],
        epochs=epochs,
        batch_size=16,
        seed=seed,
        x_val=x[90:],
        y_val=y[90:],
        progress=False,
        **kw,
    )
    return model, h


def test_fit_learns_and_records_history():
    model, h = _fit(epochs=6)
    assert len(h) == 6 and h["epoch"] == [1, 2, 3, 4, 5, 6]
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["val_accuracy"][-1] >= 0.9
    assert all(r["time_s"] > 0 and r["lr"] == 0.1 for r in h.rows)
    assert model.training is False  # left in eval mode
    assert "train loss" in h.table() and h.best_epoch is None and not h.stopped_early
    with pytest.raises(KeyError, match="not a history column"):
        h["loss"]


def test_fit_is_reproducible_bit_for_bit():
    m1, h1 = _fit(seed=3)
    m2, h2 = _fit(seed=3)
    m3, _ = _fit(seed=4)
    for k, v in m1.named_parameters().items():
        np.testing.assert_array_equal(v, m2.named_parameters()[k])
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in h1.rows] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in h2.rows
    ]
    assert any(not np.array_equal(v, m3.named_parameters()[k]) for k, v in m1.named_parameters().items())


def test_fit_equals_a_hand_written_loop():
    """fit is exactly: permutation per epoch from default_rng(seed), zero_grad, forward,
    loss, backward, step."""
    x, y = toy_data()
    model, _ = _fit(seed=7, epochs=3)
    ref = ToyModel(seed=1)
    opt = O.SGD(ref.named_parameters(), 0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    for _ in range(3):
        order = rng.permutation(90)
        ref.train()
        for s in range(0, 90, 16):
            i = order[s : s + 16]
            ref.zero_grad()
            _, g = toy_loss(ref(x[:90][i]), y[:90][i])
            ref.backward(g)
            opt.step(ref.named_grads())
    for k, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, ref.named_parameters()[k])


def test_fit_applies_the_schedule_per_epoch():
    _, h = _fit(epochs=5, schedule=O.StepLR(2, 0.5))
    assert h["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_hooks_are_called_in_order_with_the_state():
    events = []

    class Recorder:
        def on_epoch_start(self, s):
            events.append(("start", s.epoch, s.batch, s.model.training, s.optimizer.lr))

        def on_batch_start(self, s):
            events.append(("batch", s.epoch, s.batch, s.step, len(s.x)))

        def on_step_end(self, s):
            events.append(("step", s.epoch, s.batch, s.step, np.isfinite(s.loss)))

        def on_epoch_end(self, s):
            events.append(("epoch", s.epoch, len(s.history)))

    _fit(
        epochs=2,
        schedule=O.StepLR(1, 0.5),
        hooks=[Recorder(), T.Hook(on_epoch_end=lambda s: events.append(("fn", s.epoch)))],
    )
    batches = math.ceil(90 / 16)
    per_epoch = 2 * batches + 3
    assert len(events) == 2 * per_epoch
    assert events[0] == ("start", 1, 0, True, 0.1)
    assert events[1] == ("batch", 1, 1, 0, 16)
    assert events[2] == ("step", 1, 1, 1, True)
    assert events[2 * batches - 1][4] == 90 - 16 * (batches - 1)  # the short last batch
    assert events[2 * batches + 1 : per_epoch] == [("epoch", 1, 1), ("fn", 1)]
    assert events[per_epoch] == ("start", 2, 0, True, 0.05)
    assert events[-2:] == [("epoch", 2, 2), ("fn", 2)]


def test_a_hook_can_stop_the_run():
    _, h = _fit(epochs=10, hooks=T.Hook(on_epoch_end=lambda s: setattr(s, "stop", s.epoch == 3)))
    assert len(h) == 3


def test_mask_hook_keeps_pruned_weights_zero_through_fit():
    x, y = toy_data()
    model = ToyModel(seed=1)
    opt = O.Adam(model.named_parameters(), 1e-2)
    mask = np.random.default_rng(0).random((16, 6)) > 0.5
    opt.set_masks({"fc1.weight": mask})
    seen = []
    T.fit(
        model,
        toy_loss,
        opt,
        x,
        y,
        epochs=3,
        batch_size=16,
        seed=0,
        progress=False,
        hooks=T.Hook(on_step_end=lambda s: seen.append(bool(np.all(s.model.layers["fc1"].weight[~mask] == 0)))),
    )
    assert seen and all(seen)


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_early_stopping_restores_the_best_weights(monitor):
    # validation labels that cannot be learnt: the validation loss rises as the model
    # grows confident, the accuracy wanders; the run stops and the best weights return
    x, y = toy_data()
    y_val = np.random.default_rng(1).integers(0, 3, 30)
    model = ToyModel(seed=1)
    snapshots = {}
    h = T.fit(
        model,
        toy_loss,
        O.SGD(model.named_parameters(), 0.1, momentum=0.9),
        x[:90],
        y[:90],
        epochs=30,
        batch_size=16,
        seed=0,
        x_val=x[90:],
        y_val=y_val,
        progress=False,
        early_stopping=T.EarlyStopping(monitor, patience=2),
        hooks=T.Hook(
            on_epoch_end=lambda s: snapshots.__setitem__(
                s.epoch, {k: v.copy() for k, v in s.model.named_parameters().items()}
            )
        ),
    )
    col = h[monitor]
    best = (int(np.argmin(col)) if monitor == "val_loss" else int(np.argmax(col))) + 1
    assert h.stopped_early and h.best_epoch == best and len(h) == best + 2
    assert not np.array_equal(snapshots[len(h)]["fc1.weight"], snapshots[best]["fc1.weight"])
    for k, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, snapshots[best][k])


def test_nan_loss_stops_with_epoch_and_step():
    x, y = toy_data()
    model = ToyModel()
    calls = []

    def loss_fn(logits, labels):
        calls.append(1)
        loss, g = toy_loss(logits, labels)
        return (np.float32(np.nan) if len(calls) == 9 else loss), g

    before = None

    def remember(s):
        nonlocal before
        before = {k: v.copy() for k, v in s.model.named_parameters().items()}

    opt = O.SGD(model.named_parameters(), 0.1)
    with pytest.raises(FloatingPointError, match=r"the loss is nan at epoch 2 of 3, step 3 of 6 \(optimizer step 9\)"):
        T.fit(
            model,
            loss_fn,
            opt,
            x[:90],
            y[:90],
            epochs=3,
            batch_size=16,
            seed=0,
            progress=False,
            hooks=T.Hook(on_step_end=remember),
        )
    assert opt.step_count == 8
    for k, v in model.named_parameters().items():  # the bad step changed nothing
        np.testing.assert_array_equal(v, before[k])


def test_nan_gradient_stops_with_epoch_and_step():
    x, y = toy_data()
    model = ToyModel()

    def loss_fn(logits, labels):
        loss, g = toy_loss(logits, labels)
        g[0, 0] = np.inf
        return loss, g

    with (
        np.errstate(invalid="ignore"),
        pytest.raises(
            FloatingPointError,
            match=r"diverged at epoch 1 of 2, step 1 of .*grads\['fc1.weight'\] "
            r"contains NaN or infinity",
        ),
    ):
        T.fit(
            model, loss_fn, O.SGD(model.named_parameters(), 0.1), x, y, epochs=2, batch_size=16, seed=0, progress=False
        )


def test_divergence_with_npquant_loss_names_epoch_and_step():
    """npquant's loss refuses non-finite logits with a ValueError; fit reports where."""
    from npquant.training.losses import softmax_cross_entropy

    x, y = toy_data()
    model = ToyModel()
    with (
        np.errstate(all="ignore"),
        pytest.raises(
            FloatingPointError,
            match=r"training diverged at epoch \d+ of 50, step \d+ of 8 "
            r"\(optimizer step \d+\) \(lr=1e\+30\): logits contains NaN",
        ),
    ):
        T.fit(
            model,
            softmax_cross_entropy,
            O.SGD(model.named_parameters(), 1e30),
            x,
            y,
            epochs=50,
            batch_size=16,
            seed=0,
            progress=False,
        )


def test_fit_bad_input():
    x, y = toy_data()
    model = ToyModel()
    opt = O.SGD(model.named_parameters(), 0.1)
    kw = dict(epochs=1, batch_size=8, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"epochs must be in \[1, inf\]"):
        T.fit(model, toy_loss, opt, x, y, **{**kw, "epochs": 0})
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, inf\]"):
        T.fit(model, toy_loss, opt, x, y, **{**kw, "batch_size": 0})
    with pytest.raises(TypeError, match="seed must be an integer"):
        T.fit(model, toy_loss, opt, x, y, **{**kw, "seed": 1.5})
    with pytest.raises(ValueError, match=r"y_train must be integer class labels of shape \(120,\)"):
        T.fit(model, toy_loss, opt, x, y[:-1], **kw)
    with pytest.raises(TypeError, match="x_train must be a floating-point array"):
        T.fit(model, toy_loss, opt, x.astype(int), y, **kw)
    with pytest.raises(ValueError, match="x_train contains NaN"):
        T.fit(model, toy_loss, opt, np.full_like(x, np.nan), y, **kw)
    with pytest.raises(ValueError, match="x_val and y_val must be given together"):
        T.fit(model, toy_loss, opt, x, y, x_val=x, **kw)
    with pytest.raises(ValueError, match="early_stopping needs a validation set"):
        T.fit(model, toy_loss, opt, x, y, early_stopping=T.EarlyStopping(), **kw)
    with pytest.raises(TypeError, match=r"hooks\[0\] has none of the methods"):
        T.fit(model, toy_loss, opt, x, y, hooks=[object()], **kw)
    with pytest.raises(TypeError, match="model has no train"):
        T.fit(lambda x: x, toy_loss, opt, x, y, **kw)
    with pytest.raises(TypeError, match="model has no backward"):
        T.fit(type("NoBackward", (), {"train": print, "eval": print, "zero_grad": print})(), toy_loss, opt, x, y, **kw)
    with pytest.raises(TypeError, match="schedule must be callable"):
        T.fit(model, toy_loss, opt, x, y, schedule=0.1, **kw)
    with pytest.raises(ValueError, match="monitor must be one of 'val_loss', 'val_accuracy'"):
        T.EarlyStopping("train_loss")
    with pytest.raises(ValueError, match=r"patience must be in \[1, inf\]"):
        T.EarlyStopping(patience=0)


def test_evaluate_matches_a_direct_computation_and_keeps_the_mode():
    x, y = toy_data()
    model = ToyModel()
    model.train()
    loss, acc = T.evaluate(model, x, y, batch_size=7, loss_fn=toy_loss)
    assert model.training is True
    model.eval()
    logits = model(x)
    l_all, _ = toy_loss(logits, y)
    assert acc == np.mean(np.argmax(logits, 1) == y)
    assert loss == pytest.approx(float(l_all), rel=1e-6)


def test_progress_bar_goes_to_stderr_only_when_asked(capsys):
    import time

    _fit(epochs=1)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    slow = T.Hook(on_batch_start=lambda s: time.sleep(1.1) if s.step == 0 else None)
    x, y = toy_data()
    model = ToyModel()
    T.fit(
        model, toy_loss, O.SGD(model.named_parameters(), 0.1), x, y, epochs=2, batch_size=16, seed=0, hooks=slow
    )  # progress=True: a bar once a second has passed
    out = capsys.readouterr()
    assert out.out == "" and "fit: 100%" in out.err and "16/16" in out.err


# ---------------------------------------------------------------------------------------
# from scratch: initialization, data, and (slow) training a reference model
# ---------------------------------------------------------------------------------------
def test_torch_default_init_bounds_and_keys():
    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference
    from npquant.models.nn import expected_keys

    ref = load_reference(default_models_dir() / "cnn.npz")
    s = T.torch_default_init(ref.arch, 0)
    keys = expected_keys(ref.arch)
    assert {k for k, required in keys.items() if required} <= set(s) <= set(keys)
    assert "conv1.bias" not in s and s["bn1.num_batches_tracked"].dtype == np.int64
    assert s["conv1.weight"].shape == (8, 1, 3, 3) and s["conv1.weight"].dtype == np.float32
    assert np.abs(s["conv2.weight"]).max() <= 1 / math.sqrt(8 * 9)
    assert np.abs(s["fc.weight"]).max() <= 1 / math.sqrt(64)
    assert np.abs(s["fc.weight"]).max() > 0.9 / math.sqrt(64)
    assert np.all(s["bn1.weight"] == 1) and np.all(s["bn1.running_var"] == 1) and not s["bn1.bias"].any()
    s2 = T.torch_default_init(ref.arch, 0)
    for k in s:
        np.testing.assert_array_equal(s[k], s2[k])


def test_digits_data_is_the_reference_split():
    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference

    ref = load_reference(default_models_dir() / "cnn.npz")
    d = T.digits_data(ref.arch)
    assert d["x_train"].shape == (1078, 1, 8, 8) and d["x_calibration"].shape == (269, 1, 8, 8)
    np.testing.assert_array_equal(d["x_test"], ref.arrays["test_inputs"])
    np.testing.assert_array_equal(d["y_test"], ref.arrays["test_labels"])


def test_early_stopping_restores_batch_norm_statistics_too():
    """On the CNN (npquant.models.nn): the best epoch's running statistics come back with its weights."""
    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference
    from npquant.models.nn import build_model
    from npquant.training.losses import softmax_cross_entropy

    ref = load_reference(default_models_dir() / "cnn.npz")
    d = T.digits_data(ref.arch)
    model = build_model(ref.arch, T.torch_default_init(ref.arch, 0))
    snapshots = {}
    y_val = np.random.default_rng(0).integers(0, 10, 100)  # unlearnable: stops soon
    h = T.fit(
        model,
        softmax_cross_entropy,
        O.Adam(model.named_parameters(), 3e-3),
        d["x_train"][:256],
        d["y_train"][:256],
        epochs=20,
        batch_size=32,
        seed=0,
        x_val=d["x_calibration"][:100],
        y_val=y_val,
        early_stopping=T.EarlyStopping("val_loss", patience=2),
        progress=False,
        hooks=T.Hook(on_epoch_end=lambda s: snapshots.__setitem__(s.epoch, s.model.state_dict())),
    )
    assert h.stopped_early and len(h) == h.best_epoch + 2
    state = model.state_dict()
    assert "bn1.running_mean" in state
    for k, v in snapshots[h.best_epoch].items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    assert not np.array_equal(snapshots[len(h)]["bn1.running_mean"], state["bn1.running_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "lenet_300_100", "cnn"])
def test_reference_models_from_scratch_within_one_point_of_pytorch(name):
    """The issue's aim, seed 0: 60 epochs of Adam in NumPy reach PyTorch's test accuracy
    (reference_models/README.md) within 1 percentage point. Measured with seeds 0, 1, 2:
    mlp 97.33 / 97.11 / 97.78 % (PyTorch 97.11 %), lenet_300_100 97.33 / 97.56 / 97.56 %
    (97.78 %), cnn 98.67 / 98.00 / 98.89 % (98.44 %)."""
    r = T.train_reference(name, seed=0, progress=False)
    assert len(r.history) == 60
    assert r.history["train_loss"][-1] < 0.05 < r.history["train_loss"][0]
    assert abs(r.test_accuracy - r.torch_test_accuracy) <= 0.01
