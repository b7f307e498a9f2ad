"""The old module paths of npquant._compat.MOVED: each still imports, as the very module
object of its new path, with a DeprecationWarning naming the new path; ``npquant.<old leaf>``
likewise; names import from the old path; unknown names still fail as before.

The warnings are checked in a fresh interpreter: once an old path is imported it stays in
``sys.modules`` (and as an attribute of ``npquant``), and later imports do not warn again.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings

import pytest

import npquant
from npquant._compat import MOVED

# Run in a fresh interpreter; prints one JSON object: for each old path, what getattr(npquant,
# leaf), `import <old>` and `from <old> import <name>` did (warnings recorded, none filtered).
_PROBE = r'''
import importlib, inspect, json, sys, warnings

import npquant
from npquant._compat import MOVED

def public_name(module):
    names = getattr(module, "__all__", None) or sorted(
        n for n, v in vars(module).items()
        if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == module.__name__)
    return names[0]

def record(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    return value, [{"category": w.category.__name__, "message": str(w.message), "filename": w.filename}
                   for w in caught]

def run(line, filename, scope):
    """Run one line of code as if it were line 1 of a user's file ``filename``."""
    return record(lambda: exec(compile(line, filename, "exec"), scope))

out = {}
for old, new in MOVED.items():
    leaf = old.rsplit(".", 1)[1]
    r = {"preloaded": old in sys.modules}
    scope = {"npquant": npquant}
    _, r["getattr_warnings"] = run(f"attr = npquant.{leaf}", "user_getattr.py", scope)
    new_module = importlib.import_module(new)
    r["getattr_same"] = scope["attr"] is new_module
    _, r["import_warnings"] = run(f"import {old} as mod", "user_import.py", scope)
    r["import_same"] = scope["mod"] is new_module and sys.modules[old] is new_module
    r["spec_name"] = new_module.__spec__.name
    name = public_name(new_module)
    r["name"] = name
    _, r["from_warnings"] = run(f"from {old} import {name} as obj", "user_from.py", scope)
    r["from_same"] = scope["obj"] is getattr(new_module, name)
    out[old] = r
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    script = tmp_path_factory.mktemp("compat") / "probe.py"
    script.write_text(_PROBE)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _one_deprecation(warns, old, new, filename):
    assert [w["category"] for w in warns] == ["DeprecationWarning"], warns
    assert warns[0]["message"].startswith(f"{old} moved to {new};"), warns
    assert warns[0]["filename"] == filename, warns  # the warning points at the importing line


def test_every_old_path_is_probed(probe):
    assert set(probe) == set(MOVED)
    assert all(not new.startswith(old + ".") for old, new in MOVED.items())


@pytest.mark.parametrize("old", sorted(MOVED))
def test_getattr_of_the_old_leaf_warns_and_gives_the_new_module(probe, old):
    r = probe[old]
    assert not r["preloaded"]  # `import npquant` alone imports no old path
    _one_deprecation(r["getattr_warnings"], old, MOVED[old], "user_getattr.py")
    assert r["getattr_same"]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_import_of_the_old_path_warns_and_gives_the_new_module(probe, old):
    r = probe[old]
    _one_deprecation(r["import_warnings"], old, MOVED[old], "user_import.py")
    assert r["import_same"]
    assert r["spec_name"] == MOVED[old]  # the alias leaves the module's own spec (reload, pickle) alone


@pytest.mark.parametrize("old", sorted(MOVED))
def test_from_the_old_path_import_a_public_name(probe, old):
    r = probe[old]
    assert r["from_same"], r["name"]
    assert r["from_warnings"] == []  # the old path is in sys.modules by now: no second warning


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_new_path_imports_without_a_warning(old):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importlib.import_module(MOVED[old]).__name__ == MOVED[old]


def test_unknown_attributes_and_modules_still_fail():
    with pytest.raises(AttributeError, match="module 'npquant' has no attribute 'no_such_name'"):
        npquant.no_such_name
    assert not hasattr(npquant, "linear_quantize")
    with pytest.raises(ModuleNotFoundError, match="npquant.no_such_module"):
        importlib.import_module("npquant.no_such_module")
    with pytest.raises(ImportError, match="no_such_name"):
        exec("from npquant.affine import no_such_name", {})


def test_the_warning_in_this_process_too():
    """pytest turns these warnings into errors; pytest.warns sees one where the old path is new."""
    old = "npquant.cases"
    leaf = old.rsplit(".", 1)[1]
    saved_module, saved_attr = sys.modules.pop(old, None), vars(npquant).pop(leaf, None)
    try:
        with pytest.warns(DeprecationWarning, match=f"^{old} moved to {MOVED[old]};"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(MOVED[old])
    finally:
        sys.modules.pop(old, None)
        vars(npquant).pop(leaf, None)
        if saved_module is not None:
            sys.modules[old] = saved_module
        if saved_attr is not None:
            setattr(npquant, leaf, saved_attr)
