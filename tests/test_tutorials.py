"""The tutorials (``tutorials/NN_*.py``): each runs as a script, asserts the numbers it
shows, and has an exercise whose answer is checked here against an independent
computation.

The tutorials are repository files, not part of the package: CI's wheel stage runs a copy
of ``tests/`` against the installed wheel, without them, so there these tests skip (the
JIT pass of ``.ci/run`` runs them from the checkout). ``NPQUANT_TUTORIALS_DIR`` points
the tests at a tutorials folder elsewhere.

Each tutorial runs once, in this process (``runpy``, as ``__main__``) from an empty
temporary working directory, with ``NPQUANT_TUTORIAL_OUTPUT`` unset: it must write no
file, and it must not print its exercise's answer. One tutorial also runs as a script in
a subprocess, with an output folder for its figure. The tutorials that take more than
about 10 s with ``NUMBA_DISABLE_JIT=1`` are marked slow (the JIT-off pass skips them; the
JIT pass runs all nine).
"""

from __future__ import annotations

import math
import os
import re
import runpy
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# name -> (needs matplotlib, slow with NUMBA_DISABLE_JIT=1)
TUTORIALS = {
    "01_linear_quantization": (True, False),
    "02_packing": (False, False),
    "03_observers_calibration": (True, False),
    "04_integer_inference": (False, False),
    "05_where_stacks_disagree": (True, False),
    "06_post_training_quantization": (True, True),
    "07_kmeans_quantization": (True, True),
    "08_deep_compression": (True, True),
    "09_quantization_aware_training": (False, True),
}


def _tutorials_dir() -> Path | None:
    env = os.environ.get("NPQUANT_TUTORIALS_DIR")
    d = Path(env) if env else ROOT / "tutorials"
    return d if (d / "README.md").is_file() else None


TUTORIALS_DIR = _tutorials_dir()
pytestmark = pytest.mark.skipif(
    TUTORIALS_DIR is None,
    reason=(
        "no tutorials/ folder beside tests/: the tutorials are repository files, not in the wheel "
        "(CI's wheel stage runs a copy of tests/ without them; its JIT pass runs them from the "
        "checkout); set NPQUANT_TUTORIALS_DIR to a tutorials folder to run them here"
    ),
)


def _path(name: str) -> Path:
    return TUTORIALS_DIR / f"{name}.py"


# ------------------------------------------------------------------ independent answers
def _answer_01(ns):
    x = [-0.5, 0.0, 0.25, 1.5]
    s = (1.5 - (-0.5)) / 255  # unsigned 8 bits: qmin 0, qmax 255
    z = 0 - round(-0.5 / s)
    codes = [min(max(round(v / s) + z, 0), 255) for v in x]
    return s, z, codes


def _check_01(got, ns):
    s, z, codes = _answer_01(ns)
    assert math.isclose(got[0], s, rel_tol=1e-6)
    assert (got[1], list(got[2])) == (z, codes) == (64, [0, 64, 96, 255])


def _check_02(got, ns):
    nibbles = [c & 0xF for c in (-1, 7, -8, 2)]  # two's complement, 4 bits
    want = [nibbles[0] | nibbles[1] << 4, nibbles[2] | nibbles[3] << 4]
    assert got == want == [127, 40]


def _check_03(got, ns):
    h_cal, h_test = np.asarray(ns["h_cal"], np.float64), np.asarray(ns["h_test"], np.float64)
    step = h_cal.max() / 15  # 4-bit unsigned min-max, zero point 0
    frac = float(np.mean(h_test / step <= 0.5))  # round half to even: 0.5 -> 0
    assert abs(got - frac) <= 2 / h_test.size  # float32 against float64 near a tie
    assert 0.95 < got < 0.97


def _srdhm(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul (no saturation case here)."""
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _trunc_div(ab + nudge, 1 << 31)  # C's division truncates toward zero


def _trunc_div(n: int, d: int) -> int:
    q = abs(n) // d
    return q if n >= 0 else -q


def _rdbpot(x: int, e: int) -> int:
    """gemmlowp's RoundingDivideByPOT: x / 2^e, ties away from zero."""
    mask = (1 << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)


def _check_04(got, ns):
    ex = ns["ex"]
    xq, wq = ex["x_q"][1].astype(int).tolist(), ex["w_q"][2].astype(int).tolist()
    zx, zw, zy = int(ex["x_qp"].zero_point), int(ex["w_qp"].zero_point), int(ex["y_qp"].zero_point)
    a = sum((p - zx) * (q - zw) for p, q in zip(xq, wq)) + int(ex["bias_q"][2])
    m = float(ex["x_qp"].scale) * float(ex["w_qp"].scale) / float(ex["y_qp"].scale)
    mant, exp = math.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    m0 = round(Fraction(mant) * 2**31)  # exact; no tie at this m
    assert m0 < 2**31 and exp < 0
    code = min(max(_rdbpot(_srdhm(a, m0), -exp) + zy, 0), 255)
    assert tuple(got) == (a, code)
    assert abs(code - (a * m + zy)) <= 0.5 + 1e-6  # and the code is the rounded real value


def _check_05(got, ns):
    x, w = [200, 255, 10, 3], [127, 100, -128, 5]
    exact = sum(p * q for p, q in zip(x, w))
    pairs = [x[0] * w[0] + x[1] * w[1], x[2] * w[2] + x[3] * w[3]]
    saturated = sum(min(max(p, -32768), 32767) for p in pairs)
    assert tuple(got) == (exact, saturated) == (49635, 31502)


def _check_06(got, ns):
    total = 0
    for layer in ns["model"]:
        w = getattr(layer, "weight", None)
        if w is None:
            continue
        out, k = w.shape
        total += math.ceil(w.size * 4 / 8)  # packed 4-bit codes
        total += 4 * out * math.ceil(k / 16)  # a float32 scale per group of 16 inputs
        total += 4 * layer.bias.size  # float32 biases
    assert got == total == 13576


def _check_07(got, ns):
    v = [-1.2, -1.0, -0.1, 0.1, 0.9, 1.1, 2.0, 2.2]
    want = [(v[i] + v[i + 1]) / 2 for i in range(0, 8, 2)]  # one cluster per pair
    assert np.allclose(got, want, atol=1e-6) and np.allclose(want, [-1.1, 0.0, 1.0, 2.1])


def _check_08(got, ns):
    positions, top = [2, 3, 12, 19], 2**3 - 1
    gaps, fillers, prev = [], 0, 0
    for p in positions:
        jump = p - prev
        while jump > top:  # a filler entry every top positions
            gaps.append(top)
            fillers += 1
            jump -= top
        gaps.append(jump)
        prev = p
    assert (list(got[0]), got[1]) == (gaps, fillers) == ([2, 1, 7, 2, 7], 1)


def _check_09(got, ns):
    s, qmin, qmax = 0.1, -8, 7
    total = 0.0
    for x in (0.26, -0.9, 0.5):
        v = x / s
        q = round(v)
        total += qmin if q < qmin else qmax if q > qmax else q - v
    assert abs(got - total) < 1e-5 and abs(total - (-7.6)) < 1e-9


CHECKS = {name: globals()[f"_check_{name[:2]}"] for name in TUTORIALS}


# ------------------------------------------------------------------ the files themselves
def test_tutorials_are_numbered_and_listed():
    found = sorted(p.stem for p in TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
    assert found == list(TUTORIALS)
    readme = (TUTORIALS_DIR / "README.md").read_text()
    for name in TUTORIALS:
        assert f"{name}.py" in readme, f"tutorials/README.md does not list {name}.py"


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_tutorial_is_a_percent_notebook(name):
    """jupytext's percent format: code cells ``# %%``, markdown cells ``# %% [markdown]``
    whose lines are comments; it opens with what the student learns and ends with an
    exercise and its guarded answer."""
    text = _path(name).read_text()
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n#     formats: py:percent\n")
    cells = re.split(r"^# %%", text, flags=re.M)[1:]
    assert len(cells) >= 6
    kinds = [c.split("\n", 1)[0].strip() for c in cells]
    assert set(kinds) <= {"", "[markdown]"}, kinds
    for c, kind in zip(cells, kinds):
        if kind == "[markdown]":
            body = [ln for ln in c.split("\n")[1:] if ln.strip()]
            assert body and all(ln.startswith("#") for ln in body), c[:80]
    assert kinds[0] == "[markdown]" and "**What you will learn**" in cells[0]
    assert cells[0].split("\n")[1].startswith(f"# # {int(name[:2])}. ")
    assert kinds[-2] == "[markdown]" and "## Exercise" in cells[-2]
    assert "def exercise_answer():" in cells[-1] and "my_answer = None" in cells[-1]


# ------------------------------------------------------------------ running them
def _params():
    for name, (_plots, slow) in TUTORIALS.items():
        yield pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_tutorial_runs_and_its_exercise_is_right(name, tmp_path, monkeypatch, capsys):
    if TUTORIALS[name][0]:
        pytest.importorskip("matplotlib", reason="the tutorial draws with npquant.app.plot (the plot or test extra)")
    monkeypatch.delenv("NPQUANT_TUTORIAL_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    before = sorted(p.name for p in TUTORIALS_DIR.iterdir())
    ns = runpy.run_path(str(_path(name)), run_name="__main__")
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [], "a tutorial wrote a file without NPQUANT_TUTORIAL_OUTPUT"
    assert sorted(p.name for p in TUTORIALS_DIR.iterdir()) == before
    assert ns["my_answer"] is None
    answer = ns["exercise_answer"]()
    CHECKS[name](answer, ns)
    # the answer is not printed unless asked for
    assert not re.search(r"^(right|not yet)$", out, flags=re.M)
    assert str(answer) not in out


def test_a_tutorial_runs_as_a_script_and_writes_figures_when_asked(tmp_path):
    """``python tutorials/05_....py`` from another folder, as a user runs it; with
    ``NPQUANT_TUTORIAL_OUTPUT`` its figure is written there, the folder made if need be
    (and nothing elsewhere)."""
    pytest.importorskip("matplotlib", reason="the tutorial draws with npquant.app.plot (the plot or test extra)")
    cwd, figs = tmp_path / "cwd", tmp_path / "figs" / "new"  # the tutorial makes the folder
    cwd.mkdir()
    env = {**os.environ, "NPQUANT_TUTORIAL_OUTPUT": str(figs)}
    r = subprocess.run(
        [sys.executable, str(_path("05_where_stacks_disagree"))],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "acc = -421: exact -126.3" in r.stdout
    assert list(cwd.iterdir()) == []
    png = figs / "05_tie_map.png"
    assert sorted(p.name for p in figs.iterdir()) == [png.name]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
