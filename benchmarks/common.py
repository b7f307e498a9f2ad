"""What a benchmark suite hands to the runner: cases, each with the implementations to time.

A suite is a module in ``benchmarks/suites/`` with

* ``NAME`` -- the kernel name used by ``--kernels``,
* ``DEFAULT_SIZES`` -- a list of size labels (strings) run when ``--sizes`` is not given,
* ``cases(ctx)`` -- a generator of :class:`Case` objects for ``ctx.sizes``.

The runner times every :class:`Impl` of a case in the same process, one after the other,
and reports each one's ratio to the case's ``baseline`` (npquant's compiled kernel):
``ratio = time(impl) / time(baseline)``, so a ratio above 1 means npquant is faster.
Outputs are compared by the suite, outside any timed region, and the verdict is put in
``Impl.check``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# throughput unit -> the number of work items in one unit
UNITS = {"GOP/s": 1e9, "Gvalues/s": 1e9, "Mvalues/s": 1e6, "Msymbols/s": 1e6, "images/s": 1.0, "Mweights/s": 1e6}


@dataclass
class Impl:
    """One implementation of a case's computation.

    ``fn`` is called with no arguments and is what gets timed; ``None`` means it is not
    timed and ``status`` says why (``"missing: <peer> not installed"`` or ``"n/a: ..."``).
    ``check`` is the suite's verdict on its output against the baseline's, e.g.
    ``"bit-exact"`` or ``"differs: 3 of 1024 codes"``; ``None`` when not compared.
    """

    name: str
    fn: Callable[[], Any] | None = None
    status: str = "ok"
    check: str | None = None


@dataclass
class Case:
    """One shape or input of one kernel, and the implementations to time on it.

    ``work`` is the number of work items of one call in the unit's terms (operations for
    GOP/s: ``2*M*N*K`` for a GEMM; values, symbols or images otherwise). ``targets`` maps an
    implementation name to the ratio ``time(impl) / time(baseline)`` the issue asks for;
    the report marks each as met or not. ``info`` carries extra figures for the report
    (bits per symbol, inertia, ...), as ``{name: number or string}``.
    """

    suite: str
    label: str
    work: float
    unit: str
    impls: list[Impl]
    baseline: str = "numba"
    targets: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {sorted(UNITS)}, got {self.unit!r}")
        names = [i.name for i in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"implementation names repeat in {self.suite} {self.label}: {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not among {names}")


@dataclass
class Context:
    """What a suite may use: sizes to run, thread count, seed, and the peer modules.

    ``peers`` maps a peer name (``"torch"``, ``"onnxruntime"``, ``"sklearn"``) to its
    imported module; ``missing`` maps the names that could not be imported to the reason.
    """

    sizes: list[str]
    threads: int
    seed: int
    peers: dict[str, Any]
    missing: dict[str, str]

    def peer_impl(self, name: str) -> Impl | None:
        """An un-timed Impl saying that peer ``name`` is missing, or None if it is present."""
        if name in self.peers:
            return None
        return Impl(name, None, status=f"missing: {self.missing.get(name, 'not requested')}")


def compare(a, b) -> str:
    """``"bit-exact"`` if arrays ``a`` and ``b`` have equal shape and values, else what differs."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"differs: shape {a.shape} vs {b.shape}"
    n = int(np.count_nonzero(a != b))
    return "bit-exact" if n == 0 else f"differs: {n} of {a.size} values"


def parse_count(label: str, suite: str, example: str, options=(), minimum: int = 1) -> tuple[int, str]:
    """``(n, option)`` of a size label ``N`` or ``N:option`` (``N`` like ``1e6``, a whole
    number >= ``minimum``; ``option`` one of ``options``, or ``""`` when absent)."""
    n_text, sep, opt = label.partition(":")
    try:
        v = float(n_text)
    except ValueError:
        v = -1.0
    if not (v >= minimum and v == int(v)) or (sep and not options):
        raise ValueError(f"{suite} sizes are labels like {example}, got {label!r}")
    if sep and opt not in options:
        raise ValueError(f"{opt!r} in {label!r} is not one of {', '.join(options)}")
    return int(v), opt


def parse_shape(label: str, suite: str, example: str, ndim: tuple[int, int]) -> tuple[int, ...]:
    """The positive dimensions of a label like ``16x64x32x32``, ``ndim[0]`` to ``ndim[1]`` of them."""
    try:
        shape = tuple(int(d) for d in label.lower().split("x"))
    except ValueError:
        shape = ()
    if not ndim[0] <= len(shape) <= ndim[1] or min(shape) < 1:
        raise ValueError(f"{suite} sizes are labels like {example}, got {label!r}")
    return shape


def ort_session(ort, model, threads: int):
    """An onnxruntime CPU session of the ONNX ``model`` on ``threads`` intra-op threads
    (inter-op 1, sequential). Its idle threads sleep instead of spinning, so that they do
    not slow the implementation timed next (the runner takes samples in turns)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
