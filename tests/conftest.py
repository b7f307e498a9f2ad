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


def skip_torch_threads_without_jit(n_threads: int) -> None:
    """With ``NUMBA_DISABLE_JIT=1``, run a peer comparison on torch's 1-thread path only.

    The number of torch threads changes what torch computes, not what npquant computes:
    the JIT pass compares npquant with torch on 1 and 2 threads, and the JIT-off pass checks
    npquant's interpreted kernels against the same torch results on 1 thread.
    """
    from numba import config

    if n_threads != 1 and config.DISABLE_JIT:
        pytest.skip("torch on 2 threads is compared in the JIT pass; npquant's JIT-off kernels on 1")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def fbgemm_threads(request):
    """torch with the fbgemm quantized engine pinned, on 1 and then 2 threads."""
    skip_torch_threads_without_jit(request.param)
    torch = pytest.importorskip("torch")
    old_t, old_e = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(request.param)
    torch.backends.quantized.engine = "fbgemm"
    yield request.param
    torch.set_num_threads(old_t)
    torch.backends.quantized.engine = old_e


def slow_after(cases, n_fast: int) -> list:
    """Parametrize cases: the first ``n_fast`` run in every pass; the rest are marked slow
    (the JIT pass runs them; the JIT-off pass, where the kernels run as plain Python under
    coverage, skips them)."""
    return [c if i < n_fast else pytest.param(*c, marks=pytest.mark.slow) for i, c in enumerate(cases)]
