import os

from hypothesis import HealthCheck, settings

# JIT compilation makes first calls slow, and with NUMBA_DISABLE_JIT=1 kernels run as plain
# Python: time limits per example would only measure that.
settings.register_profile(
    "npquant",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    max_examples=int(os.environ.get("NPQUANT_HYPOTHESIS_EXAMPLES", "100")),
)
settings.load_profile("npquant")


import pytest  # noqa: E402


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def fbgemm_threads(request):
    """torch with the fbgemm quantized engine pinned, on 1 and then 2 threads."""
    torch = pytest.importorskip("torch")
    old_t, old_e = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(request.param)
    torch.backends.quantized.engine = "fbgemm"
    yield request.param
    torch.set_num_threads(old_t)
    torch.backends.quantized.engine = old_e
