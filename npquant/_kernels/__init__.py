"""numba kernels (private). Kernels never validate; the public wrappers do.

Each kernel has a readable NumPy twin in the module of its concept, and the tests check
that both give identical bits with the JIT on and with ``NUMBA_DISABLE_JIT=1``.
"""

# --- threads (npquant/_threads.py): make numba's own OpenMP pool sleep when idle if it is
# a second OpenMP runtime in the process, so it does not slow PyTorch's. Cheap: adds an
# import hook only; numba still loads its threading layer lazily.
from .. import _threads

_threads.install()
del _threads
# --- end threads
