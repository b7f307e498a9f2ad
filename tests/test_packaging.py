"""npquant as an installed package: the bundled reference models are package data found
through importlib.resources, the version agrees everywhere, the tests import the npquant
they mean to test, and a read-only install still caches its numba kernels.

The wheel itself (what it carries, and the whole suite run against it from a fresh
virtual environment) is checked by the "wheel" stage of ``.ci/run`` (``.ci/wheel``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import npquant
from npquant.app import demo
from npquant.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(npquant.__file__).resolve().parent


# --------------------------------------------------------------------------- package data
def test_models_dir_is_the_package_data():
    data = resources.files("npquant") / "data"
    d = demo.default_models_dir()
    assert isinstance(d, Path) and d.is_dir()
    assert d.resolve() == Path(str(data)).resolve() == PACKAGE / "data"
    assert demo.check_models_dir(d) == d


def test_package_data_is_exactly_what_the_demo_reads():
    """Every file the demo reads is package data, and the data folder holds nothing else
    (so nothing the wheel ships is unused, and nothing the commands read is left out)."""
    data = resources.files("npquant") / "data"
    names = sorted(f.name for f in data.iterdir() if f.is_file())
    assert names == sorted(demo.data_files())
    for name in names:
        with np.load(demo.default_models_dir() / name, allow_pickle=False) as z:
            assert z.files, name


def _npz_literals(module) -> set[str]:
    """String constants of a module's source that name a bare ``.npz`` file."""
    tree = ast.parse(Path(module.__file__).read_text())
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # f"{x}.npz"
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and id(n) not in parts
        and n.value.endswith(".npz")
        and n.value[:-4].replace("_", "").isalnum()
    }


def test_every_model_a_command_names_is_package_data():
    import npquant.app.cli

    named = _npz_literals(npquant.app.cli) | _npz_literals(demo) | set(demo.data_files())
    assert "lenet_300_100.npz" in named  # npquant compress's model
    missing = [n for n in sorted(named) if not (demo.default_models_dir() / n).is_file()]
    assert not missing


def test_pyproject_ships_the_data_files():
    tomllib = pytest.importorskip("tomllib")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml beside the tests")
    cfg = tomllib.loads(pyproject.read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["npquant"]
    for name in demo.data_files():
        assert any(Path("data", name).match(g) for g in globs), (name, globs)


def test_missing_model_file_is_an_error_naming_it(tmp_path):
    for name in demo.data_files(["mlp"]):
        shutil.copy(demo.default_models_dir() / name, tmp_path / name)
    assert demo.check_models_dir(tmp_path, ["mlp"]) == tmp_path
    (tmp_path / "mlp_ptq.npz").unlink()
    with pytest.raises(ValueError, match=r"no reference models in .*: missing mlp_ptq\.npz \(pass --models"):
        demo.check_models_dir(tmp_path, ["mlp"])
    with pytest.raises(ValueError, match=r"missing .*lenet_300_100\.npz"):
        demo.run(tmp_path)


def test_data_from_a_zipped_package_is_extracted(tmp_path):
    """If npquant is imported from a zip, default_models_dir copies the data to a real folder."""
    z = tmp_path / "npquant.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("npquant/data/a.npz", b"abc")
        zf.writestr("npquant/data/b.npz", b"de")
    out = demo._extracted(zipfile.Path(z, "npquant/data/"))
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "b.npz"]
    assert (out / "a.npz").read_bytes() == b"abc"


# --------------------------------------------------------------------------- version
def test_version_agrees(capsys):
    assert importlib.metadata.version("npquant") == npquant.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"npquant {npquant.__version__}"


# --------------------------------------------------------------------------- what is tested
def test_subprocesses_import_the_npquant_under_test():
    """Tests that start ``python -m npquant`` or the benchmarks in ROOT (test_cli,
    test_benchmarks) must import the same npquant as this process: from a checkout, both
    the checkout; in CI's wheel stage, which runs a copy of tests/ without npquant/, both
    the installed package."""
    r = subprocess.run(
        [sys.executable, "-c", "import npquant; print(npquant.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(npquant.__file__).resolve()


@pytest.mark.skipif(
    not os.environ.get("NPQUANT_TEST_INSTALLED"),
    reason="set NPQUANT_TEST_INSTALLED=1 to assert a non-editable install (CI's wheel stage)",
)
def test_npquant_is_the_installed_wheel():
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert PACKAGE.is_relative_to(purelib), (PACKAGE, purelib)
    assert not (PACKAGE.parent / "pyproject.toml").exists()
    assert not (ROOT / "npquant").exists(), "the tests' folder has a source tree beside it"
    dist = importlib.metadata.distribution("npquant")
    assert not dist.read_text("direct_url.json") or '"editable": true' not in dist.read_text("direct_url.json")


# --------------------------------------------------------------------------- read-only install
PROBE = r"""
import json, warnings
warnings.simplefilter("always")
import numpy as np
import npquant
from npquant._kernels import packing as k

codes = np.arange(16, dtype=np.uint8)
assert np.array_equal(npquant.pack_bits(codes, 4), npquant.pack_bits(codes, 4, backend="numpy"))
disp = [k.pack]
print(json.dumps({
    "file": npquant.__file__,
    "hits": sum(sum(d.stats.cache_hits.values()) for d in disp),
    "misses": sum(sum(d.stats.cache_misses.values()) for d in disp),
    "paths": sorted({d._cache._cache_path for d in disp if hasattr(d._cache, "_cache_path")}),
}))
"""


def _read_only_runner(site: Path):
    """How to run a command with ``site/npquant`` read-only: a read-only bind mount in a
    private mount namespace as root (root ignores permission bits), else ``chmod a-w``."""
    pkg = site / "npquant"
    if os.geteuid() != 0:
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return lambda cmd: cmd
    if not shutil.which("unshare"):
        pytest.skip("running as root without unshare: cannot make a folder read-only for root")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and unshare -m fails ({probe.stderr.decode().strip()})")
    mount = f"mount --bind '{pkg}' '{pkg}' && mount -o remount,ro,bind '{pkg}' '{pkg}'"
    return lambda cmd: ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *cmd]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no JIT, no cache")
def test_read_only_install_caches_kernels(tmp_path):
    """A copy of the installed package, made read-only: importing it and running a kernel
    works and caches in the user-wide folder (``$XDG_CACHE_HOME/numba``), the second
    process loads from that cache; ``NUMBA_CACHE_DIR`` takes precedence; and with no
    writable location at all, npquant still imports and runs (compiling, with a warning)."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "npquant", ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    wrap = _read_only_runner(site)
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    base.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")

    def probe(**env):
        r = subprocess.run(
            wrap([sys.executable, "-c", PROBE]),
            env={**base, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert Path(out["file"]).resolve() == (site / "npquant" / "__init__.py").resolve()
        return out, r.stderr

    try:
        user = tmp_path / "xdg"
        first, _ = probe(XDG_CACHE_HOME=str(user))
        second, _ = probe(XDG_CACHE_HOME=str(user))
        assert first["misses"] > 0 and first["hits"] == 0, first
        assert second["hits"] > 0 and second["misses"] == 0, second
        assert all(Path(p).is_relative_to(user / "numba") for p in first["paths"]), first
        assert list((user / "numba").rglob("*.nbi"))

        chosen = tmp_path / "numba-cache"
        third, _ = probe(XDG_CACHE_HOME=str(user), NUMBA_CACHE_DIR=str(chosen))
        assert all(Path(p).is_relative_to(chosen) for p in third["paths"]), third
        assert list(chosen.rglob("*.nbi"))

        nowhere = tmp_path / "not-a-folder"
        nowhere.write_text("a file, so that no cache folder can be made under it")
        fourth, err = probe(XDG_CACHE_HOME=str(nowhere), HOME=str(nowhere))
        assert fourth["paths"] == [] and fourth["hits"] == 0, fourth
        assert "no writable cache location" in err and "NUMBA_CACHE_DIR" in err
    finally:
        for p in [site, *site.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert not [p for p in (site / "npquant").rglob("*") if p.suffix in (".nbi", ".nbc", ".pyc")]
