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
