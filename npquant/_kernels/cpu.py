"""The CPU features: the host's (what a peer library sees and dispatches on) and the
compile target's (what npquant's kernels may use), as LLVM names them."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_features() -> frozenset:
    """Feature names the host CPU has, as LLVM names them (``"avx2"``, ``"avx512vnni"``,
    ``"avxvnni"``, ...); empty if they cannot be read."""
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - an unknown host: assume nothing
        return frozenset()
    return frozenset(k for k, v in feats.items() if v)


@lru_cache(maxsize=1)
def target_features() -> frozenset:
    """Features the compiled kernels may use: the host's, or, where numba is told to
    compile for another CPU, ``NUMBA_CPU_FEATURES`` (LLVM's ``+feat,-feat`` list; with
    ``NUMBA_CPU_NAME`` and no feature list, none, so only the portable kernels run).
    ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2,...`` makes a CPU with AVX-512 run
    the kernel choice of an AVX2-only CPU."""
    from numba.core import config

    if config.CPU_FEATURES:
        return frozenset(f[1:] for f in str(config.CPU_FEATURES).split(",") if f.startswith("+"))
    if config.CPU_NAME and config.CPU_NAME != "host":
        return frozenset()
    return cpu_features()
