"""The public API is typed (PEP 484) and says so (PEP 561).

Every public module of npquant, every public function, public class (its ``__init__``)
and public method defined in that module (not imported into it) annotates each parameter
but ``self``/``cls``/``*args``/``**kwargs``, and its return (``__init__`` may omit it).
A failure lists every missing hint as ``module.qualname(param)`` (``(return)`` for the
return annotation).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import npquant

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(npquant.__file__).resolve().parent


def _public_modules() -> list[str]:
    """Names of npquant's modules with no underscore-led component (``npquant`` included)."""
    names = ["npquant"]
    for info in pkgutil.walk_packages(npquant.__path__, prefix="npquant.", onerror=lambda name: None):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names)


def _missing_in_callable(func, label: str, *, need_return: bool) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return []
    missing = []
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if i == 0 and p.name in ("self", "cls"):
            continue
        if p.annotation is inspect.Parameter.empty:
            missing.append(f"{label}({p.name})")
    if need_return and sig.return_annotation is inspect.Signature.empty:
        missing.append(f"{label}(return)")
    return missing


def _unwrap_member(member):
    """The function behind a class attribute (plain, static or class method), or None."""
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    return member if inspect.isfunction(member) else None


def missing_hints(modname: str) -> list[str]:
    """Every missing annotation of the public API defined in module ``modname``."""
    module = importlib.import_module(modname)
    missing: list[str] = []
    seen: set[int] = set()
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or id(obj) in seen or getattr(obj, "__module__", None) != modname:
            continue
        seen.add(id(obj))
        if inspect.isfunction(obj):
            missing += _missing_in_callable(obj, f"{modname}.{obj.__qualname__}", need_return=True)
        elif inspect.isclass(obj):
            for owner in _owners(obj):
                for attr, member in vars(owner).items():
                    if attr != "__init__" and attr.startswith("_"):
                        continue
                    func = _unwrap_member(member)
                    if func is None or id(func) in seen or not _reported_here(func, modname):
                        continue
                    seen.add(id(func))
                    missing += _missing_in_callable(
                        func, f"{func.__module__}.{owner.__qualname__}.{attr}", need_return=attr != "__init__"
                    )
    return missing


def _owners(cls: type) -> list[type]:
    """``cls`` and its private npquant base classes: their public methods (and ``__init__``)
    are ``cls``'s public API too, and no public class of theirs is checked."""
    return [cls] + [b for b in cls.__mro__[1:] if b.__module__.startswith("npquant") and b.__name__.startswith("_")]


def _reported_here(func, modname: str) -> bool:
    """Report a method in the module that defines it, or, if that module is private, here."""
    return func.__module__ == modname or (
        func.__module__.startswith("npquant.") and any(p.startswith("_") for p in func.__module__.split(".")[1:])
    )


MODULES = _public_modules()


def test_the_walk_finds_the_public_modules():
    assert {
        "npquant",
        "npquant.qparams",
        "npquant.compression.huffman",
        "npquant.training.qat",
        "npquant.models.graph",
    } <= set(MODULES)
    assert not [m for m in MODULES if m.startswith(("npquant._kernels", "npquant._"))]


def test_the_check_reports_each_missing_hint():
    """The walk finds a missing parameter hint, a missing return, and a public method a
    public class inherits from a private base."""
    src = (
        "from __future__ import annotations\n"
        "def f(a: int, b, *args, **kw): pass\n"
        "def g(a: int) -> int: return a\n"
        "class C:\n"
        "    def __init__(self, x): pass\n"
        "    def m(self, y: int): pass\n"
        "    @classmethod\n"
        "    def k(cls) -> C: return cls(1)\n"
        "    def _private(self, z): pass\n"
        "class _Base:\n"
        "    def __init__(self, w: int): pass\n"
        "    def shared(self, v): pass\n"
        "class D(_Base):\n"
        "    pass\n"
    )
    import sys
    import types

    mod = types.ModuleType("npquant_typing_probe")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(src, "<probe>", "exec"), mod.__dict__)
        assert missing_hints(mod.__name__) == [
            "npquant_typing_probe.C.__init__(x)",
            "npquant_typing_probe.C.m(return)",
            "npquant_typing_probe._Base.shared(v)",
            "npquant_typing_probe._Base.shared(return)",
            "npquant_typing_probe.f(b)",
            "npquant_typing_probe.f(return)",
        ]
    finally:
        del sys.modules[mod.__name__]


@pytest.mark.parametrize("modname", MODULES)
def test_public_api_is_annotated(modname):
    missing = missing_hints(modname)
    assert not missing, f"{len(missing)} missing type hint(s):\n" + "\n".join(missing)


def test_py_typed_marker_is_shipped():
    """npquant/py.typed exists (PEP 561) and pyproject.toml's package data carries it."""
    assert (PACKAGE / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml beside the tests")
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["npquant"]
    assert any(Path("py.typed").match(g) for g in globs), globs
