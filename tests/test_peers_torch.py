"""Bit-exact cross-checks of linear quantization against PyTorch (CPU, fbgemm kernels).

Skipped when torch is not installed; CI installs it (``pip install -e ".[test,peers]"``).
Established facts, each pinned by a test below:

* ``torch.quantize_per_tensor`` = ``method="fma"``: ``rint(fma(x, float32(1/S), Z))``;
* ``torch.quantize_per_channel`` = ``method="mul_add"``: ``rint(float32(x * R) + Z)``;
* ``torch.fake_quantize_per_*_affine`` = ``method="mul"``: ``rint(x * R) + Z``;
* ``Tensor.dequantize`` = :func:`npquant.dequantize`: ``float32(q - Z) * S``.
"""

import numpy as np
import pytest
from conftest import skip_torch_threads_without_jit

from npquant import QParams, QuantSpec, dequantize, fake_quantize, quantize

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning")

DTYPES = {torch.quint8: QuantSpec(signed=False), torch.qint8: QuantSpec(signed=True)}


def _data(rng, n, scale):
    """Gaussian values with half of them on exact ties of x / S, and some far outside."""
    x = (rng.normal(size=n) * rng.uniform(0.01, 10)).astype(np.float32)
    k = rng.integers(-200, 200, size=n)
    x[: n // 2] = ((k[: n // 2] + 0.5) * scale).astype(np.float32)
    x[-1] = 1e6
    return x


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    skip_torch_threads_without_jit(request.param)
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("tdtype", list(DTYPES), ids=str)
def test_quantize_per_tensor(tdtype, threads):
    rng = np.random.default_rng(10 + threads)
    spec = DTYPES[tdtype]
    # sizes cover the 8-wide vector body, the scalar tail and several thread chunks
    for n in (1, 7, 8, 9, 1000, 70001):
        scale = np.float32(rng.uniform(1e-3, 0.1))
        zp = int(rng.integers(spec.qmin, spec.qmax + 1))
        x = _data(rng, n, scale)
        t = torch.quantize_per_tensor(torch.from_numpy(x), float(scale), zp, tdtype)
        qp = QParams(scale, zp, spec)
        q = quantize(x, qp, method="torch")
        np.testing.assert_array_equal(q, t.int_repr().numpy())
        np.testing.assert_array_equal(quantize(x, qp, method="torch", backend="numpy"), q)
        # float32 bits of the dequantized values
        np.testing.assert_array_equal(dequantize(q, qp).view(np.uint32), t.dequantize().numpy().view(np.uint32))


def test_other_methods_do_not_match_per_tensor():
    # the distinction is real: with ties in the data, divide and mul_add disagree with torch
    rng = np.random.default_rng(0)
    scale = np.float32(0.062544405)
    x = _data(rng, 20000, scale)
    t = torch.quantize_per_tensor(torch.from_numpy(x), float(scale), 134, torch.quint8)
    qp = QParams(scale, 134, QuantSpec(signed=False))
    ref = t.int_repr().numpy()
    for m in ("divide", "mul", "mul_add"):
        assert np.any(quantize(x, qp, method=m) != ref), m


@pytest.mark.parametrize("tdtype", list(DTYPES), ids=str)
def test_quantize_per_channel(tdtype, threads):
    rng = np.random.default_rng(20 + threads)
    spec0 = DTYPES[tdtype]
    for shape in [(5,), (3, 17), (4, 3, 9), (2, 3, 4, 5), (64, 300)]:
        for axis in range(len(shape)):
            x = (rng.normal(size=shape) * rng.uniform(0.01, 10)).astype(np.float32)
            c = shape[axis]
            scale = rng.uniform(1e-3, 0.1, size=c).astype(np.float32)
            zp = rng.integers(spec0.qmin, spec0.qmax + 1, size=c)
            bshape = [1] * len(shape)
            bshape[axis] = c
            k = rng.integers(-200, 200, size=shape)
            ties = ((k + 0.5) * scale.reshape(bshape)).astype(np.float32)
            x = np.where(rng.random(shape) < 0.5, ties, x).astype(np.float32)
            t = torch.quantize_per_channel(
                torch.from_numpy(x), torch.from_numpy(scale.astype(np.float64)), torch.from_numpy(zp), axis, tdtype
            )
            qp = QParams(scale, zp, spec0.replace(axis=axis))
            q = quantize(x, qp, method="torch")
            np.testing.assert_array_equal(q, t.int_repr().numpy(), err_msg=f"{shape} axis={axis}")
            np.testing.assert_array_equal(dequantize(q, qp).view(np.uint32), t.dequantize().numpy().view(np.uint32))


def test_fake_quantize_per_tensor_and_per_channel():
    rng = np.random.default_rng(30)
    for _ in range(20):
        scale = np.float32(rng.uniform(1e-3, 0.1))
        zp = int(rng.integers(0, 256))
        x = _data(rng, 3000, scale)
        t = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(scale), zp, 0, 255)
        qp = QParams(scale, zp, QuantSpec(signed=False))
        np.testing.assert_array_equal(fake_quantize(x, qp, method="torch").view(np.uint32), t.numpy().view(np.uint32))
    sc = rng.uniform(1e-3, 0.1, 6).astype(np.float32)
    z = rng.integers(-128, 128, 6)
    k = rng.integers(-200, 200, size=(6, 500))
    x = ((k + 0.5) * sc[:, None]).astype(np.float32)
    t = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(z).int(), 0, -128, 127
    )
    qp = QParams(sc, z, QuantSpec(axis=0))
    np.testing.assert_array_equal(fake_quantize(x, qp, method="torch").view(np.uint32), t.numpy().view(np.uint32))
