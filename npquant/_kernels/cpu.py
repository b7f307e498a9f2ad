"""The host CPU's features, as LLVM (which compiles the kernels) sees them."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_features() -> frozenset:
    """Feature names the host CPU has, as LLVM names them (``"avx2"``, ``"avx512vnni"``,
    ``"avxvnni"``, ...); empty if they cannot be read (then no ISA-specific kernel runs)."""
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
    except Exception:  # an unknown host: assume nothing
        return frozenset()
    return frozenset(k for k, v in feats.items() if v)
