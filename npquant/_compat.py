"""Old import paths of the modules that moved when the package was grouped by pipeline
stage (release 0.x to the next): ``import npquant.kmeans`` and ``nq.kmeans`` still work
for one release, and warn with a :class:`DeprecationWarning` naming the new path.

The old path is an alias of the new module (the same module object, so private names,
``monkeypatch`` and ``isinstance`` behave as before), not a copy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module name -> new module name
MOVED = {
    "npquant.linear": "npquant.affine",
    "npquant.fixedpoint": "npquant.requant.fixedpoint",
    "npquant.prune": "npquant.compression.prune",
    "npquant.kmeans": "npquant.compression.kmeans",
    "npquant.huffman": "npquant.compression.huffman",
    "npquant.packing": "npquant.compression.packing",
    "npquant.compress": "npquant.compression.pipeline",
    "npquant.nn": "npquant.models.nn",
    "npquant.convert": "npquant.models.convert",
    "npquant.io": "npquant.models.io",
    "npquant.checkpoint": "npquant.models.checkpoint",
    "npquant.graph": "npquant.models.graph",
    "npquant.sklearn_mlp": "npquant.models.sklearn_mlp",
    "npquant.cases": "npquant.models.cases",
    "npquant.cli": "npquant.app.cli",
    "npquant.demo": "npquant.app.demo",
    "npquant.plot": "npquant.app.plot",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old name will be removed in the next release",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        # The new module is already executed; importlib has just set the old name's spec on
        # it: give it back its own (its __name__, __package__ and __loader__ are untouched).
        module.__spec__ = self.spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of moved modules, and loads them as their new module."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        _warn(fullname, new, stacklevel=3)  # the line of the import statement
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder of old module names on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def moved_attribute(name: str):
    """``npquant.<name>`` for a moved module's old name (the package's ``__getattr__``)."""
    new = MOVED.get(f"npquant.{name}")
    if new is None:
        raise AttributeError(f"module 'npquant' has no attribute {name!r}")
    _warn(f"npquant.{name}", new, stacklevel=4)  # the line that reads npquant.<name>
    return importlib.import_module(new)
