"""The API reference (``docs/api/*.rst``, built by Sphinx) names every public module.

A plain scan of the files, without importing Sphinx or building anything: every module
file of the package whose dotted name has no part starting with an underscore (so not
``npquant/_kernels/`` nor ``npquant/_fileio.py``), and every such package (its
``__init__.py``), must be the target of an ``.. automodule::`` directive in some
``docs/api/*.rst`` page; ``npquant/__main__.py`` is the one exception. The reverse holds
too: every ``automodule`` names a module file that exists.

``docs/`` is a repository folder, not part of the wheel or the sdist: where it is absent
(CI's wheel stage runs a copy of ``tests/`` against the installed package) these tests skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "npquant"
API = ROOT / "docs" / "api"

AUTOMODULE = re.compile(r"^\s*\.\.\s+automodule::\s+(\S+)\s*$", re.MULTILINE)

pytestmark = pytest.mark.skipif(
    not (PACKAGE.is_dir() and API.is_dir()), reason="needs the source tree (npquant/ and docs/api/)"
)


def public_modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        elif parts[-1] == "__main__":
            continue
        if any(p.startswith("_") for p in parts):
            continue
        names.add(".".join(parts))
    return names


def documented_modules() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in sorted(API.glob("*.rst")):
        for name in AUTOMODULE.findall(page.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(page.name)
    return found


def test_scan_sees_the_package():
    mods = public_modules()
    assert {
        "npquant",
        "npquant.affine",
        "npquant.qnn",
        "npquant.qnn.gemm",
        "npquant.training",
        "npquant.training.trainer",
    } <= mods
    assert not any(m.split(".")[-1].startswith("_") for m in mods)
    assert "npquant.__main__" not in mods


def test_every_public_module_has_an_automodule():
    missing = sorted(public_modules() - set(documented_modules()))
    assert not missing, (
        f"public modules with no '.. automodule::' in docs/api/*.rst: {missing}; add a page "
        f"docs/api/<module>.rst and list it in the toctree of docs/api/index.rst"
    )


def test_every_automodule_names_a_public_module_once():
    found = documented_modules()
    unknown = sorted(set(found) - public_modules())
    assert not unknown, f"automodule of a module that is not a public module file: {unknown}"
    twice = {name: pages for name, pages in found.items() if len(pages) > 1}
    assert not twice, f"modules documented by more than one automodule: {twice}"
