"""The im2col kernel against its NumPy twin, bit for bit (JIT on and NUMBA_DISABLE_JIT=1).

The kernel writes the patches straight in the form the 8-bit GEMM kernels read (uint8
``x + 128`` for int8 codes, K zero-padded, padding taps ``Z_x + off``), without a padded
copy of the input; the twin pads with ``np.pad`` and slices.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npquant.qnn.conv import _im2col, _im2col_numpy, conv_geometry


def _both(x, zx, geo, kh, kw, **kw_):
    got, (oh, ow) = _im2col(x, zx, geo, kh, kw, "numba", **kw_)
    want = _im2col_numpy(x, zx, geo, kh, kw, oh, ow, **kw_)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got, (oh, ow)


@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    cg=st.integers(1, 3),
    h=st.integers(1, 7),
    wd=st.integers(1, 7),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 4)] * 4),
    signed=st.booleans(),
    u8=st.booleans(),
    extra=st.integers(0, 70),
    tap_major=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_im2col_kernel_equals_twin(
    n, groups, cg, h, wd, kh, kw, stride, dilation, pads, signed, u8, extra, tap_major, seed
):
    geo = conv_geometry(stride, pads, dilation, groups)
    oh, ow = geo.output_size(h, wd, kh, kw)
    assume(oh >= 1 and ow >= 1)
    rng = np.random.default_rng(seed)
    dt = np.int8 if signed else np.uint8
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max + 1, (n, groups * cg, h, wd)).astype(dt)
    zx = int(rng.integers(info.min, info.max + 1))
    k = cg * kh * kw
    if u8:  # the 8-bit GEMM's form: uint8 x + off, K padded
        off = 128 if signed else 0
        got, _ = _both(x, zx, geo, kh, kw, off=off, kp=k + extra, tap_major=tap_major, dtype=np.uint8)
        assert not got[:, :, k:].any()
        plain, _ = _both(x, zx, geo, kh, kw, tap_major=tap_major)  # the codes' own dtype
        np.testing.assert_array_equal(got[:, :, :k].astype(np.int32), plain.astype(np.int32) + off)
    else:
        _both(x, zx, geo, kh, kw, tap_major=tap_major)


@pytest.mark.parametrize("signed", [False, True])
def test_im2col_padding_reads_zero_point_and_views(signed):
    """Asymmetric padding larger than the kernel, a non-contiguous input (NHWC storage
    seen as NCHW), int16 codes, and the tap-major order against the (c, kh, kw) one."""
    rng = np.random.default_rng(int(signed))
    dt = np.int8 if signed else np.uint8
    x = rng.integers(0, 100, (2, 4, 5, 6)).astype(dt)
    geo = conv_geometry((2, 1), (3, 0, 1, 4), (1, 2), 2)
    zx = 7
    cols, (oh, ow) = _both(x, zx, geo, 2, 3, off=128 if signed else 0, kp=16, dtype=np.uint8)
    assert cols.shape == (2, 2 * oh * ow, 16)
    # the first output row of every image lies in the top padding (3 rows, dilation 1, 2 taps)
    first = cols.reshape(2, 2, oh, ow, 16)[:, :, 0, :, :12]
    assert (first == zx + (128 if signed else 0)).all()
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not nhwc.flags.c_contiguous
    np.testing.assert_array_equal(_both(nhwc, zx, geo, 2, 3, off=128 if signed else 0, kp=16, dtype=np.uint8)[0], cols)
    _both(x.astype(np.int16) * 300, -1000, geo, 2, 3)
    a, _ = _both(x, zx, geo, 2, 3)
    b, _ = _both(x, zx, geo, 2, 3, tap_major=True)
    # (c, i, j) -> (i, j, c) within each group
    np.testing.assert_array_equal(b, a.reshape(2, -1, 2, 6).transpose(0, 1, 3, 2).reshape(a.shape))
