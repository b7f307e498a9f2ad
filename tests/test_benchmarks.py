"""The benchmark runner runs end to end on tiny sizes and writes a consistent report.

No timing is asserted: only that every suite runs, that every timed row has its ratio,
and that the outputs the suites compare are bit-exact where they must be.
"""

import json
import os
import subprocess
import sys

import pytest

from npquant.qnn.accumulation import host_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    "gemm": "7x70x100",
    "cnn": "9",
    "quantize": "1e3,1e3:per_group",
    "dequantize": "1e3",
    "training": "mlp:64",
    "requantize": "2x8x4x4,16x8",
    "unpack": "1e3",
    "huffman": "lenet,2e3",
    "kmeans": "2e3",
    "conv": "1x4x6x6x5x3",
}


@pytest.mark.slow
def test_runner_writes_markdown_and_json(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--kernels",
        ",".join(SIZES),
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--out",
        str(tmp_path),
    ]
    for k, v in SIZES.items():
        cmd += ["--sizes", f"{k}={v}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "latest.json").read_text())
    md = (tmp_path / "latest.md").read_text()
    rows = payload["results"]
    assert {r["suite"] for r in rows} == set(SIZES)
    assert payload["machine"]["versions"]["numpy"]
    for r in rows:
        if r["status"] == "ok":
            assert r["median_s"] > 0 and r["ratio"] > 0 and len(r["samples_s"]) == 1
        else:
            assert r["status"].startswith(("missing", "n/a")) and "median_s" not in r
        if r["suite"] == "training":  # float training: the weights after an epoch, to rounding
            if r["impl"] == "torch" and r["status"] == "ok":
                assert r["check"].startswith("weights after"), r
        elif r["impl"] in ("numpy", "torch", "numpy-int32", "numpy.unpackbits") and r["check"]:
            assert r["check"].startswith("bit-exact"), r
        if r["status"] != "ok":  # a peer that is not installed has no output to check
            continue
        if r["impl"] == "onnxruntime" and r["suite"] == "gemm":  # MLAS saturates int16 pairs without VNNI
            assert r["check"].startswith("bit-exact" if host_path("mlas") == "vnni" else "int16 pairs"), r
        if r["impl"] == "numba-int16-pairs":
            assert r["check"].startswith("int16 pairs"), r
        if r["impl"] == "torch-qlinear":  # npquant's accumulation="fbgemm" follows torch's path
            assert r["check"].startswith("bit-exact"), r
    for suite in SIZES:
        assert f"### {suite}" in md
    assert "### Targets" in md


def test_bad_options_are_refused():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--kernels", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "nope" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--kernels", "gemm,cnn", "--sizes", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "KERNEL=" in done.stderr


def test_script_help():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--threads" in done.stdout


@pytest.mark.slow
def test_thread_counts_run_apart_and_report_scaling(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--kernels",
        "gemm,unpack",
        "--sizes",
        "gemm=13x70x100",
        "--sizes",
        "unpack=1e3",
        "--threads",
        "1,2",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "latest.json").read_text())
    assert {r["threads"] for r in payload["results"]} == {1, 2}
    assert [m["threads"]["requested"] for m in payload["machines_per_thread_count"]] == [1, 2]
    one = [r for r in payload["results"] if r["impl"] == "numba@1thread"]
    # one row per gemm case (exact and int16 pairs); unpack is serial
    assert [(r["threads"], r["suite"]) for r in one] == [(2, "gemm"), (2, "gemm")]
    assert [(s["suite"], s["to_threads"]) for s in payload["scaling"]] == [("gemm", 2), ("gemm", 2)]
    assert [s["scaling"] for s in payload["scaling"]] == [r["ratio"] for r in one]
    assert "### Thread scaling" in (tmp_path / "latest.md").read_text()
