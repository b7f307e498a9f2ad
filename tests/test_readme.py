"""The README's glossary and learning path name things that exist.

The glossary maps each source's notation to npquant's names; a renamed function or a
moved tutorial must not leave it pointing at nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# Where a bare name of the glossary's npquant column is looked up, in order.
NAMESPACES = (
    "npquant",
    "npquant.qnn",
    "npquant.models.convert",
    "npquant.training",
    "npquant.requant.fixedpoint",
    "npquant.compression.kmeans",
    "npquant.compression.prune",
)
# Tokens of the npquant column that are variables or parameter names in the text, not API.
NOT_API = {
    "w_q",
    "x_q",
    "y_q",
    "qp",
    "spec",
    "m0",
    "shift",
    "codebook",
    "indices",
    "out_range",
    "narrow_range",
    "float_bias",
    "reduce_range",
    "sparsity",
    "axis",
    "form",
    "mode",
    "activation",
    "accumulation",
    "init",
    "symmetric",
    "HistogramObserver",
    "Z_x",
    "Z_y",
    "Z_w",
    "max",
    "float32",
}


def _readme() -> str:
    if not README.is_file():
        pytest.skip("README.md is a repository file (not beside an installed wheel's tests)")
    return README.read_text(encoding="utf-8")


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _glossary_tokens() -> set[str]:
    glossary = _section(_readme(), "## Glossary", "## Who it is for")
    tokens = set()
    for line in glossary.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            npquant_cell = line.strip().strip("|").split("|")[-1]
            tokens.update(re.findall(r"`([^`]+)`", npquant_cell))
    return tokens


def _resolve(dotted: str):
    head, *rest = dotted.split(".")
    if head == "npquant":
        obj, mod = importlib.import_module("npquant"), "npquant"
        for part in rest:  # submodules are imported as the dotted path goes
            try:
                obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(f"{mod}.{part}")
            except ImportError:
                raise AttributeError(f"{mod}.{part}") from None
            mod = f"{mod}.{part}"
        return obj
    for ns in NAMESPACES:
        obj = importlib.import_module(ns)
        if hasattr(obj, head):
            obj = getattr(obj, head)
            for part in rest:
                fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
                if part in fields:
                    break
                obj = getattr(obj, part)
            return obj
    raise AttributeError(dotted)


def test_glossary_names_exist():
    tokens = _glossary_tokens()
    assert len(tokens) > 60, "the glossary's tables were not found"
    checked, missing = 0, []
    for token in sorted(tokens):
        m = re.match(r"(?:npquant )?([A-Za-z_][\w.]*)", token)
        if not m or token.startswith("npquant ") or m.group(1).split(".")[0] in NOT_API:
            continue
        name = m.group(1)
        if not (name.startswith("npquant.") or "_" in name or name[0].isupper() or token[len(name) :].startswith("(")):
            continue
        checked += 1
        try:
            _resolve(name)
        except AttributeError:
            missing.append(token)
    assert checked > 40
    assert not missing, f"the README's glossary names what npquant does not have: {missing}"


def test_glossary_keyword_arguments_exist():
    """``f(..., kw=...)`` in the glossary: ``f`` takes ``kw``."""
    import inspect

    bad = []
    for token in _glossary_tokens():
        m = re.match(r"([A-Za-z_][\w.]*)\((.*)\)$", token)
        if not m or m.group(1).split(".")[0] in NOT_API:
            continue
        target = _resolve(m.group(1))
        if not callable(target):
            continue
        params = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        depth, top = 0, []  # the argument text outside nested parentheses
        for ch in m.group(2):
            depth += (ch == "(") - (ch == ")")
            top.append(ch if depth == 0 and ch != ")" else " ")
        for kw in re.findall(r"(?:^|,)\s*(\w+)=", "".join(top)):
            if kw not in params and not (m.group(1) == "QuantSpec"):
                bad.append(f"{token}: no parameter {kw!r}")
            if m.group(1) == "QuantSpec" and kw not in {f.name for f in dataclasses.fields(target)}:
                bad.append(f"{token}: no field {kw!r}")
    assert not bad, bad


def test_learning_path_links_every_tutorial():
    text = _readme()
    learn = _section(text, "## Learn quantization with npquant", "## Glossary")
    tutorials = README.parent / "tutorials"
    names = sorted(p.name for p in tutorials.glob("[0-9][0-9]_*.py"))
    assert len(names) == 9
    for name in names:
        assert f"(tutorials/{name})" in learn, f"the README's learning path does not link {name}"
    for target in re.findall(r"\]\(([^)#]+)\)", learn):
        assert (README.parent / target).exists(), f"the README links {target}, which does not exist"


def test_internal_links_resolve():
    """Every ``](#anchor)`` of the README names one of its headings (GitHub's anchor rule)."""
    text = _readme()

    def anchor(heading: str) -> str:
        h = heading.strip().lower()
        h = re.sub(r"[^\w\- ]", "", h)
        return h.replace(" ", "-")

    anchors = {anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "no internal links found"
    assert not sorted(links - anchors), f"links to no heading: {sorted(links - anchors)}"
