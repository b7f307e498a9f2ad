"""numba kernel of the integer convolution's im2col step (the product is ``_kernels.gemm``).

Twin: ``npquant.qnn.conv._im2col_numpy``.
"""

from numba import njit


@njit(cache=True)
def im2col(x, zx, groups, kh, kw, sh, sw, pad_t, pad_l, dh, dw, oh_n, ow_n, out):
    """Patches of NCHW codes ``x``, padded with the zero point ``zx``.

    ``out`` has shape (groups, N * OH * OW, Cg * kh * kw) and ``x``'s dtype (``zx``
    fits it). Row ``(n * OH + oh) * OW + ow`` of group ``g`` holds, in (c, i, j) C order, the input
    ``x[n, g * Cg + c, oh * sh - pad_t + i * dh, ow * sw - pad_l + j * dw]`` or ``zx``
    where that lies outside the image.
    """
    n_b, n_c, h, wd = x.shape
    cg = n_c // groups
    for g in range(groups):
        for n in range(n_b):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    r = (n * oh_n + oh) * ow_n + ow
                    col = 0
                    for c in range(cg):
                        ci = g * cg + c
                        for i in range(kh):
                            ih = oh * sh - pad_t + i * dh
                            for j in range(kw):
                                iw = ow * sw - pad_l + j * dw
                                if 0 <= ih < h and 0 <= iw < wd:
                                    out[g, r, col] = x[n, ci, ih, iw]
                                else:
                                    out[g, r, col] = zx
                                col += 1
