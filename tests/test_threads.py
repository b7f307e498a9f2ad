"""npquant/_threads.py: numba's OpenMP pool is made passive only when it is a second
OpenMP runtime, only while it loads, and never against the user's settings. No timings:
the effect is read from libgomp itself (``omp_display_env`` prints its GOMP_SPINCOUNT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npquant
from npquant import _threads

CLEARED = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "KMP_LIBRARY",
    "NUMBA_THREADING_LAYER",
    "NPQUANT_NUMBA_WAIT_POLICY",
    "NUMBA_DISABLE_JIT",
)


def run_child(code: str, **env_extra) -> dict:
    """Run ``code`` in a fresh interpreter with a controlled environment; it prints one JSON
    line last. Returns it, with libgomp's ``omp_display_env`` output under ``"stderr"``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["stderr"] = done.stderr
    return out


PRELUDE = """
import ctypes, json, os, sys
import numpy as np
"""

# import torch (or load another libgomp), import npquant, run a parallel kernel, report
KERNEL = """
env_before = dict(os.environ)
import npquant
from npquant._threads import threading_info, openmp_runtimes
from npquant.qnn.layers import QLinear
from npquant import QParams, QuantSpec
env_after_import = dict(os.environ)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (96, 200), dtype=np.uint8)
w = rng.integers(-127, 128, (40, 200), dtype=np.int8)
x_qp = QParams(np.float32(0.02), 3, QuantSpec(bits=8, signed=False))
w_qp = QParams(rng.uniform(0.001, 0.01, 40).astype(np.float32), np.zeros(40, np.int32),
               QuantSpec(bits=8, signed=True, symmetric=True, axis=0))
y_qp = QParams(np.float32(0.5), 128, QuantSpec(bits=8, signed=False))
fast = QLinear(w, w_qp, None, x_qp, y_qp).accumulate(x)
twin = QLinear(w, w_qp, None, x_qp, y_qp, backend="numpy").accumulate(x)
info = threading_info()
if info["numba_openmp_runtime"]:
    sys.stderr.flush()
    ctypes.CDLL(info["numba_openmp_runtime"]).omp_display_env(1)  # numba's copy, already loaded
print(json.dumps({"info": info, "equal": bool(np.array_equal(fast, twin)),
                  "env_same_import": env_before == env_after_import,
                  "env_same_end": env_before == dict(os.environ)}))
"""


def other_runtime_code() -> str:
    """Load another OpenMP runtime first, as ``import torch`` does (without torch when it is
    missing: scikit-learn's bundled libgomp, else skip)."""
    return """
try:
    import torch
    torch.set_num_threads(2)
    (torch.ones(256, 256) @ torch.ones(256, 256)).sum()
except ImportError:
    import sklearn.cluster
"""


def spincount(stderr: str):
    for line in stderr.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=")[1].strip().strip("'")
    return None


def test_import_does_not_change_environment_or_load_peers():
    out = run_child(
        PRELUDE
        + """
env = dict(os.environ)
before = set(sys.modules)
import npquant
new = set(sys.modules) - before
print(json.dumps({"env_same": env == dict(os.environ),
                  "torch": "torch" in sys.modules,
                  "omppool": "numba.np.ufunc.omppool" in sys.modules,
                  "runtimes": npquant._threads.openmp_runtimes()}))
"""
    )
    assert out["env_same"]
    assert not out["torch"]
    assert not out["omppool"]  # numba's threading layer is still loaded lazily, by numba
    assert out["runtimes"] == []


def test_install_is_idempotent_and_info_does_not_load_layer():
    assert _threads.install() in (True, False)
    assert _threads.install() in (True, False)
    info = _threads.threading_info()
    assert set(info) == {"layer", "num_threads", "wait_policy", "decision", "numba_openmp_runtime", "openmp_runtimes"}
    assert info["num_threads"] >= 1


def test_openmp_runtime_regex():
    rx = _threads._OPENMP_RE
    for p in (
        "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
        "/x/torch/lib/libgomp.so.1",
        "/x/scikit_learn.libs/libgomp-e985bcbb.so.1.0.0",
        "/opt/lib/libiomp5.so",
        "/opt/lib/libomp.so",
    ):
        assert rx.search(p), p
    for p in ("/usr/lib/libm.so.6", "/x/libgompish/libc.so", "/x/libtorch_cpu.so"):
        assert not rx.search(p), p


@pytest.mark.slow
def test_second_runtime_made_passive_only_for_numba():
    out = run_child(PRELUDE + other_runtime_code() + KERNEL)
    info = out["info"]
    assert out["equal"]
    assert out["env_same_import"] and out["env_same_end"]
    if info["layer"] != "omp":
        pytest.skip(f"numba's threading layer here is {info['layer']}")
    if info["numba_openmp_runtime"] is None:
        pytest.skip("numba shares the OpenMP runtime already loaded: nothing to make passive")
    assert "made passive" in info["decision"]
    assert info["wait_policy"].startswith("passive")
    assert len(info["openmp_runtimes"]) >= 2
    assert spincount(out["stderr"]) == "0"  # what numba's libgomp actually runs with


@pytest.mark.slow
def test_other_runtime_is_not_numbas():
    """The passive policy goes to numba's own copy of libgomp, not to PyTorch's (whose
    settings cannot be displayed: it has no omp_display_env), and the environment that
    PyTorch's runtime could read later is left as it was."""
    torch = pytest.importorskip("torch")
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    out = run_child(PRELUDE + other_runtime_code() + KERNEL)
    assert out["equal"] and out["env_same_end"]
    assert out["info"]["numba_openmp_runtime"] != path


@pytest.mark.slow
@pytest.mark.parametrize(
    "var,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "12345"), ("KMP_BLOCKTIME", "200")]
)
def test_user_setting_is_respected(var, value):
    out = run_child(PRELUDE + other_runtime_code() + KERNEL, **{var: value})
    info = out["info"]
    assert out["equal"]
    assert out["env_same_end"]
    if info["layer"] != "omp" or info["numba_openmp_runtime"] is None:
        pytest.skip("numba's OpenMP layer is not a separate runtime here")
    assert f"user's {var}={value} kept" == info["decision"]
    sc = spincount(out["stderr"])
    if var == "GOMP_SPINCOUNT":
        assert sc == "12345"
    elif var == "OMP_WAIT_POLICY":
        assert sc not in (None, "0", "300000")  # libgomp's ACTIVE spin count
    else:
        assert sc != "0"


@pytest.mark.slow
def test_user_threading_layer_is_respected():
    out = run_child(PRELUDE + other_runtime_code() + KERNEL, NUMBA_THREADING_LAYER="workqueue")
    assert out["equal"]
    assert out["info"]["layer"] == "workqueue"
    assert out["info"]["numba_openmp_runtime"] is None
    assert out["env_same_end"]


@pytest.mark.slow
def test_alone_default_policy_and_opt_out_and_force():
    # no other OpenMP runtime: numba's is left as it is (a later PyTorch would share it)
    out = run_child(PRELUDE + KERNEL)
    assert out["equal"] and out["env_same_end"]
    if out["info"]["layer"] != "omp":
        pytest.skip("numba's layer is not OpenMP here")
    assert "no other OpenMP runtime" in out["info"]["decision"]
    if out["info"]["numba_openmp_runtime"]:
        assert spincount(out["stderr"]) not in (None, "0")
    # forced passive, and the opt-out with another runtime loaded
    out = run_child(PRELUDE + KERNEL, NPQUANT_NUMBA_WAIT_POLICY="passive")
    assert out["equal"] and out["env_same_end"]
    if out["info"]["numba_openmp_runtime"]:
        assert spincount(out["stderr"]) == "0"
    out = run_child(PRELUDE + other_runtime_code() + KERNEL, NPQUANT_NUMBA_WAIT_POLICY="unchanged")
    assert out["equal"] and out["env_same_end"]
    assert "unchanged" in out["info"]["decision"]
    if out["info"]["numba_openmp_runtime"]:
        assert spincount(out["stderr"]) not in (None, "0")


def test_kernels_exact_in_this_process():
    """npquant's parallel kernels give the NumPy twin's integers whatever the threads."""
    from npquant import QParams, QuantSpec
    from npquant.qnn.layers import QLinear

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (70, 130), dtype=np.uint8)
    w = rng.integers(-127, 128, (33, 130), dtype=np.int8)
    x_qp = QParams(np.float32(0.02), 3, QuantSpec(bits=8, signed=False))
    w_qp = QParams(
        rng.uniform(0.001, 0.01, 33).astype(np.float32),
        np.zeros(33, np.int32),
        QuantSpec(bits=8, signed=True, symmetric=True, axis=0),
    )
    y_qp = QParams(np.float32(0.5), 128, QuantSpec(bits=8, signed=False))
    fast = QLinear(w, w_qp, None, x_qp, y_qp)
    twin = QLinear(w, w_qp, None, x_qp, y_qp, backend="numpy")
    np.testing.assert_array_equal(fast.accumulate(x), twin.accumulate(x))
    np.testing.assert_array_equal(fast(x), twin(x))
    assert npquant.__version__
