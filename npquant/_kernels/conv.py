"""numba kernel of the integer convolution's im2col step (the product is ``_kernels.gemm``).

Twin: ``npquant.qnn.conv._im2col_numpy``.
"""

from numba import prange

from ._jit import njit


@njit(cache=True, parallel=True)
def im2col(xp, groups, kh, kw, sh, sw, dh, dw, oh_n, ow_n, out):
    """Patches of NCHW codes ``xp``, already padded with the zero point (so every tap is
    in range and the loops have no branches).

    ``out`` has shape (groups, N * OH * OW, Cg * kh * kw) and ``xp``'s dtype. Row
    ``(n * OH + oh) * OW + ow`` of group ``g`` holds, in (c, i, j) C order,
    ``xp[n, g * Cg + c, oh * sh + i * dh, ow * sw + j * dw]``.
    """
    n_b, n_c = xp.shape[0], xp.shape[1]
    cg = n_c // groups
    for n in prange(n_b):  # images in parallel
        for g in range(groups):
            for oh in range(oh_n):
                r0 = (n * oh_n + oh) * ow_n
                for c in range(cg):
                    plane = xp[n, g * cg + c]
                    for i in range(kh):
                        row = plane[oh * sh + i * dh]
                        col0 = (c * kh + i) * kw
                        for ow in range(ow_n):
                            base = ow * sw
                            for j in range(kw):
                                out[g, r0 + ow, col0 + j] = row[base + j * dw]
