"""Sphinx configuration for npquant's API reference.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

# npquant is normally installed (editable) in the environment; the repository root on the
# path lets a plain checkout build too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npquant._version import __version__

project = "npquant"
version = release = __version__

# (The docstrings write their formulas as inline literals, ``acc * M``; no math extension.)
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",  # the highlighted source of each module, linked from its members
]

exclude_patterns = ["_build"]

# autodoc: each page documents the members its module defines (or, where the module has an
# __all__, the names listed there), in the order of the source file, members without a
# docstring too (the forward/backward methods of the layers, constants). A name imported
# from another module is documented there, once; the pages of the packages npquant,
# npquant.qnn and npquant.training, whose __all__ only re-exports, use :no-members:.
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"

# napoleon: the docstrings are NumPy style.
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True
# An "Attributes" section becomes a field list of its class, not one attribute entry per
# name: the members of a dataclass are documented already (undoc-members above).
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"npquant {release}"
