"""numba kernels (private). Kernels never validate; the public wrappers do.

Each kernel has a readable NumPy twin in the module of its concept, and the tests check
that both give identical bits with the JIT on and with ``NUMBA_DISABLE_JIT=1``.
"""
