"""``njit`` for npquant's kernels: numba's own, whose ``cache=True`` is dropped (with one
warning) where numba has nowhere to write its cache.

Where compiled kernels are cached (numba's rules, first that works): the folder named by
``NUMBA_CACHE_DIR``, if set; else ``__pycache__/`` next to the kernel's source
(``npquant/_kernels/__pycache__/``) if numba can write there; else the user-wide cache
folder, ``$XDG_CACHE_HOME/numba/`` or ``~/.cache/numba/`` on Linux. A read-only install
therefore caches in the user's folder. If none of these is writable (a read-only install
run by an account without a writable home), numba refuses to decorate a ``cache=True``
function, which would make ``import npquant`` fail; this wrapper compiles without the
on-disk cache instead (each process compiles again, results are the same).
"""

from __future__ import annotations

import warnings

import numba

_warned = False


def njit(*args, **kwargs):
    """``numba.njit(**kwargs)`` as a decorator; ``cache=True`` falls back to no on-disk cache
    when numba finds no writable cache location."""
    if args:  # bare @njit or njit(signature): not used by npquant, passed through as is
        return numba.njit(*args, **kwargs)

    def decorate(func):
        if not kwargs.get("cache"):
            return numba.njit(**kwargs)(func)
        try:
            return numba.njit(**kwargs)(func)
        except RuntimeError as exc:  # numba.core.caching: "cannot cache function ...: no locator available"
            if "no locator available" not in str(exc):
                raise
            _warn_no_cache(func)
            return numba.njit(**{**kwargs, "cache": False})(func)

    return decorate


def _warn_no_cache(func) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"npquant: numba has no writable cache location for {func.__code__.co_filename} (not its "
        "__pycache__, not the user-wide cache folder): kernels are compiled in every process. "
        "Set NUMBA_CACHE_DIR to a writable folder to cache them.",
        RuntimeWarning,
        stacklevel=3,
    )
