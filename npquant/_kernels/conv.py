"""numba kernel of the integer convolution's im2col step (the product is ``_kernels.gemm``).

Twin: ``npquant.qnn.conv._im2col_numpy``.
"""

import numpy as np
from numba import prange

from ._jit import njit


@njit(cache=True, parallel=True)
def im2col(x, pad, off, groups, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n, tap_major, out):
    """Patches of NCHW codes ``x`` (any strides), written straight in the form the GEMM
    kernel reads: no padded copy of ``x`` and no second pass.

    ``out`` has shape (groups, N * OH * OW, Kp), Kp >= K = Cg * kh * kw, and any integer
    dtype that holds ``x + off``. Row ``(n * OH + oh) * OW + ow`` of group ``g`` holds at
    column ``(c * kh + i) * kw + j`` (``tap_major``: ``(i * kw + j) * Cg + c``, the (kh, kw,
    c) order of the pair-saturating product) the tap
    ``x[n, g * Cg + c, oh * sh - pt + i * dh, ow * sw - pl + j * dw] + off``, or
    ``pad + off`` where the tap falls outside the image (``pad``: the input zero point),
    and 0 in columns K .. Kp-1. ``off`` is 128 to turn int8 codes into the uint8 the 8-bit
    GEMM kernels take (``out`` uint8), else 0.
    """
    n_b, n_c, h, w = x.shape
    cg = n_c // groups
    k = cg * kh * kw
    kp = out.shape[2]
    padv = np.int32(pad) + np.int32(off)
    for t in prange(n_b * oh_n):  # (image, output row) pairs in parallel
        n = t // oh_n
        oh = t % oh_n
        r0 = t * ow_n
        for g in range(groups):
            for c in range(cg):
                plane = x[n, g * cg + c]
                for i in range(kh):
                    r = oh * sh - pt + i * dh
                    for j in range(kw):
                        col = (i * kw + j) * cg + c if tap_major else (c * kh + i) * kw + j
                        if r < 0 or r >= h:
                            for ow in range(ow_n):
                                out[g, r0 + ow, col] = padv
                            continue
                        row = plane[r]
                        q0 = j * dw - pl  # the input column of ow = 0
                        # ow in [lo, hi) reads inside the row: q0 + ow * sw in [0, w)
                        lo = min(ow_n, max(0, (-q0 + sw - 1) // sw))
                        hi = min(ow_n, max(lo, (w - q0 + sw - 1) // sw))
                        for ow in range(lo):
                            out[g, r0 + ow, col] = padv
                        for ow in range(lo, hi):
                            out[g, r0 + ow, col] = np.int32(row[q0 + ow * sw]) + np.int32(off)
                        for ow in range(hi, ow_n):
                            out[g, r0 + ow, col] = padv
            for ow in range(ow_n):
                for col in range(k, kp):
                    out[g, r0 + ow, col] = 0
