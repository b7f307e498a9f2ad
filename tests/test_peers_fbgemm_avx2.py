"""The live PyTorch tests again, with fbgemm and ATen forced to their AVX2 kernels.

fbgemm honours ``FBGEMM_ENABLE_INSTRUCTIONS`` (read once, at its first GEMM) and ATen
``ATEN_CPU_CAPABILITY``, so a CPU with AVX-512 VNNI can run PyTorch's AVX2 path, where
uint8 x int8 products saturate in int16 pairs. The modules below then run in a fresh
process in which ``accumulation="fbgemm"`` resolves to ``"int16_pairs"``
(:func:`npquant.qnn.accumulation.host_path` reads the same variable): the integers
PyTorch computes on an AVX2-only CPU, checked live on any x86 CPU with AVX2.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from npquant._kernels.cpu import cpu_features

pytest.importorskip("torch")
MODULES = ["tests/test_qnn_torch.py", "tests/test_qnn_fbgemm.py", "tests/test_qnn_add.py"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the modules are slow with the JIT off; the JIT pass runs them
@pytest.mark.skipif("avx2" not in cpu_features(), reason="fbgemm needs AVX2")
def test_torch_peer_tests_pass_on_fbgemm_avx2_kernels():
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "fbgemm path here: avx2" in done.stdout  # the forced path took effect
    assert " failed" not in done.stdout and " passed" in done.stdout
