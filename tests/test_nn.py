"""Float NumPy layers against PyTorch (skipped without torch) and their errors."""

import numpy as np
import pytest

from npquant.models import nn

torch = pytest.importorskip("torch")
F = torch.nn.functional
RTOL = ATOL = 1e-5


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize(
    "stride, padding, dilation, groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (2, 1, 1, 4), (3, 0, 2, 1)],
)
def test_conv2d(stride, padding, dilation, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    got = nn.Conv2d(w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)(x)
    ref = F.conv2d(_t(x), _t(w), _t(b), stride=stride, padding=padding, dilation=dilation, groups=groups).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_linear_bn_pools_activations():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    w, b = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    np.testing.assert_allclose(nn.Linear(w, b)(x), F.linear(_t(x), _t(w), _t(b)).numpy(), rtol=RTOL, atol=ATOL)
    x4 = rng.normal(size=(2, 3, 7, 6)).astype(np.float32) * 4
    g, be, m, v = (rng.normal(size=3).astype(np.float32) for _ in range(4))
    v = np.abs(v) + 0.1
    ref = F.batch_norm(_t(x4), _t(m), _t(v), _t(g), _t(be), training=False, eps=1e-5).numpy()
    np.testing.assert_allclose(nn.BatchNorm2d(g, be, m, v)(x4), ref, rtol=RTOL, atol=ATOL)
    scale, shift = nn.BatchNorm2d(g, be, m, v).scale_shift()
    np.testing.assert_allclose(x4 * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), ref, rtol=1e-5, atol=1e-5)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1)]:
        np.testing.assert_array_equal(nn.MaxPool2d(k, s, p)(x4), F.max_pool2d(_t(x4), k, s, p).numpy())
        for cip in (True, False):
            np.testing.assert_allclose(
                nn.AvgPool2d(k, s, p, count_include_pad=cip)(x4),
                F.avg_pool2d(_t(x4), k, s, p, count_include_pad=cip).numpy(),
                rtol=RTOL,
                atol=ATOL,
            )
    np.testing.assert_array_equal(nn.ReLU()(x4), F.relu(_t(x4)).numpy())
    np.testing.assert_array_equal(nn.ReLU6()(x4), F.relu6(_t(x4)).numpy())
    np.testing.assert_array_equal(nn.Flatten()(x4), torch.flatten(_t(x4), 1).numpy())
    res = nn.Residual(nn.Sequential([nn.ReLU()]))
    np.testing.assert_array_equal(res(x4), np.maximum(x4, 0) + x4)


def test_build_model_checks_keys():
    arch = {
        "layers": [
            {"type": "linear", "name": "fc1", "in_features": 4, "out_features": 3},
            {"type": "relu"},
            {"type": "linear", "name": "fc2", "in_features": 3, "out_features": 2},
        ]
    }
    state = {
        "fc1.weight": np.ones((3, 4), np.float32),
        "fc1.bias": np.zeros(3, np.float32),
        "fc2.weight": np.ones((2, 3), np.float32),
    }
    m = nn.build_model(arch, state)
    np.testing.assert_array_equal(m(np.ones((1, 4), np.float32)), [[12.0, 12.0]])
    with pytest.raises(ValueError, match="missing 'fc2.weight'"):
        nn.build_model(arch, {k: v for k, v in state.items() if k != "fc2.weight"})
    with pytest.raises(ValueError, match="unexpected key 'fc3.weight'"):
        nn.build_model(arch, {**state, "fc3.weight": np.ones(1)})
    with pytest.raises(ValueError, match=r"fc1.weight has shape \(4, 4\), expected \(3, 4\)"):
        nn.build_model(arch, {**state, "fc1.weight": np.ones((4, 4))})
    with pytest.raises(ValueError, match="unknown layer type 'gelu'"):
        nn.build_model({"layers": [{"type": "gelu"}]}, {})
    with pytest.raises(ValueError, match="x has 5 features"):
        m(np.ones((1, 5), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        m(np.ones((1, 4), np.int64))
