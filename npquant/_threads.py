"""How npquant's parallel kernels use threads, and how they stay good neighbours.

npquant's parallel kernels (``parallel=True`` numba functions: the int8 GEMM, conv's
im2col, pooling, fbgemm-style requantization) run on numba's thread pool, numba's
*threading layer*. Where Intel TBB is not installed, numba picks its OpenMP layer
(``omp``): the extension ``numba.np.ufunc.omppool``, linked against the system's GNU
OpenMP runtime (``libgomp.so.1.0.0``). That layer is loaded lazily, the first time a
parallel kernel is compiled or run, and libgomp reads its wait policy from the
environment once, when it is loaded.

GNU OpenMP's default policy keeps idle worker threads spinning (about 300,000 busy
polls) after every parallel region before they sleep. When another library in the same
process has its *own* OpenMP runtime -- PyTorch's wheels bundle ``torch/lib/libgomp.so.1``,
scikit-learn's bundle ``libgomp-<hash>.so``; numba's omppool asks for
``libgomp.so.1.0.0`` by file name and so gets a second copy -- the two pools fight
over the cores: after each npquant kernel numba's workers spin on a core that PyTorch's
threads wait for, and PyTorch's barriers stall (most on a machine with few cores).

The fix here: when numba loads its OpenMP layer and another OpenMP runtime is already in
the process, npquant sets ``OMP_WAIT_POLICY=PASSIVE`` in the environment only for the
duration of that load, then restores the environment exactly. numba's fresh copy of
libgomp reads the policy in its constructor, so only *numba's* workers sleep when idle;
the other runtime (PyTorch's) keeps the policy it read itself. When no other OpenMP
runtime is loaded yet, nothing is changed: a PyTorch imported later then finds the same
``libgomp.so.1`` (by its soname) and shares numba's runtime and its worker threads, so
there is no second pool to fight with, and a passive policy would only slow PyTorch.

Nothing happens at ``import npquant`` except that :func:`install` puts a small finder on
``sys.meta_path`` that waits for ``numba.np.ufunc.omppool``; numba's threading layer
and its threads are still created lazily, by numba. The user's choice always wins: if
``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` or ``KMP_LIBRARY`` is set,
npquant leaves the environment alone, and it never changes numba's threading layer
(``NUMBA_THREADING_LAYER``) or thread count (``NUMBA_NUM_THREADS``,
``numba.set_num_threads``). ``NPQUANT_NUMBA_WAIT_POLICY`` chooses npquant's behaviour:
``auto`` (the default, as above), ``passive`` (make numba's OpenMP pool passive even when
it may be shared later) or ``unchanged`` (never touch it; the behaviour before this
module). :func:`threading_info` reports what happened.
"""

from __future__ import annotations

import os
import re
import sys
import threading

__all__ = ["ENV_VAR", "USER_VARS", "install", "threading_info", "openmp_runtimes"]

#: npquant's own switch: ``auto`` (default), ``passive`` or ``unchanged``.
ENV_VAR = "NPQUANT_NUMBA_WAIT_POLICY"
_MODES = ("auto", "passive", "unchanged")
#: A user's settings of the OpenMP wait policy; if any is set, npquant changes nothing.
USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")
_OMPPOOL = "numba.np.ufunc.omppool"
_OPENMP_RE = re.compile(r"/lib(?:g|i)?omp[0-9]*(?:[-.][^/]*)?\.(?:so|dylib)[^/]*$")

_lock = threading.Lock()
_finder = None
# What happened when numba's OpenMP layer was loaded (filled in by the finder).
_state: dict = {
    "hooked": False,
    "loaded_by_npquant_hook": False,
    "decision": None,
    "runtimes_before": None,
    "numba_runtime": None,
}


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes (libgomp, libiomp, LLVM libomp) mapped in this
    process, read from ``/proc/self/maps`` (an empty list where that file is missing)."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if _OPENMP_RE.search(path) and path not in found:
                        found.append(path)
    except OSError:
        pass
    return found


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return mode if mode in _MODES else "auto"


def _user_setting():
    for var in USER_VARS:
        if var in os.environ:
            return var
    return None


def _decide(before: list[str]) -> tuple[bool, str]:
    """Whether to load numba's OpenMP runtime with a passive wait policy, and why."""
    mode = _mode()
    user = _user_setting()
    if user is not None:
        return False, f"user's {user}={os.environ[user]} kept"
    if mode == "unchanged":
        return False, f"{ENV_VAR}=unchanged: OpenMP default policy"
    if mode == "passive":
        return True, f"{ENV_VAR}=passive"
    if before:
        return True, "another OpenMP runtime was loaded: numba's own copy made passive"
    return False, "no other OpenMP runtime loaded: default policy (a later PyTorch shares it)"


class _PassiveLoader:
    """Wraps the extension loader of numba's omppool: the environment is set while the
    extension (and with it libgomp, whose constructor reads the policy) is loaded."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        before = openmp_runtimes()
        passive, why = _decide(before)
        saved = os.environ.get("OMP_WAIT_POLICY")
        if passive:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            module = self._loader.create_module(spec)
        finally:
            if passive:
                if saved is None:
                    os.environ.pop("OMP_WAIT_POLICY", None)
                else:  # unreachable: a user's setting means passive is False
                    os.environ["OMP_WAIT_POLICY"] = saved
        after = openmp_runtimes()
        new = [p for p in after if p not in before]
        if passive and not new:
            why += " (no effect: numba's runtime was already loaded and initialised)"
            passive = False
        _state.update(
            loaded_by_npquant_hook=True,
            decision=why,
            passive=passive,
            runtimes_before=before,
            numba_runtime=(new[0] if new else None),
        )
        return module

    def exec_module(self, module):
        return self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _OmpPoolFinder:
    """A ``sys.meta_path`` finder for ``numba.np.ufunc.omppool`` only; it removes itself
    once used."""

    def find_spec(self, name, path=None, target=None):
        if name != _OMPPOOL:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        _uninstall()
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PassiveLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def _uninstall():
    global _finder
    with _lock:
        if _finder is not None:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass
            _finder = None


def install() -> bool:
    """Watch for numba's OpenMP threading layer being loaded (see the module docstring).

    Cheap and idempotent: it imports nothing and only adds a finder to
    ``sys.meta_path``. Returns whether the finder is (now) installed; it is not when
    numba's OpenMP layer is already loaded.
    """
    global _finder
    with _lock:
        if _finder is not None:
            return True
        if _OMPPOOL in sys.modules:
            _state.setdefault("decision", None)
            if _state["decision"] is None:
                _state["decision"] = "numba's OpenMP layer was loaded before npquant: not changed"
            return False
        _finder = _OmpPoolFinder()
        sys.meta_path.insert(0, _finder)
        _state["hooked"] = True
        return True


def _wait_policy(layer) -> str:
    if layer is None:
        return "not loaded yet"
    if _state.get("passive"):
        return "passive (numba's OpenMP pool only, set by npquant)"
    for var in USER_VARS:
        if var in os.environ:
            return f"{var}={os.environ[var]} (user's setting)"
    return "OpenMP default (spin, then sleep)"


def threading_info() -> dict:
    """How npquant's parallel kernels use threads in this process.

    Returns a dict with:

    * ``layer`` -- numba's threading layer (``"omp"``, ``"tbb"``, ``"workqueue"``), or
      ``None`` while no parallel kernel has been compiled or run (numba loads it lazily);
    * ``num_threads`` -- the threads numba's parallel kernels use (``numba.get_num_threads()``
      once the layer is loaded, else ``NUMBA_NUM_THREADS``);
    * ``wait_policy`` -- how numba's idle OpenMP workers wait (only meaningful when
      ``layer == "omp"``);
    * ``decision`` -- what npquant did when numba's OpenMP layer was loaded, and why;
    * ``numba_openmp_runtime`` -- the OpenMP library numba's layer loaded (``None`` if it
      was already in the process, shared with another library, or not loaded);
    * ``openmp_runtimes`` -- every OpenMP runtime now mapped in the process.

    It never loads the threading layer or starts threads.
    """
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # not loaded yet
        layer = None
    if layer is not None:
        num_threads = numba.get_num_threads()
    else:
        num_threads = numba.config.NUMBA_NUM_THREADS
    return {
        "layer": layer,
        "num_threads": num_threads,
        "wait_policy": _wait_policy(layer) if layer in ("omp", None) else "n/a (not OpenMP)",
        "decision": _state.get("decision"),
        "numba_openmp_runtime": _state.get("numba_runtime"),
        "openmp_runtimes": openmp_runtimes(),
    }
