"""Is npquant a good neighbour? PyTorch and NumPy speed before and after npquant's kernels.

Run from the repository root: ``python benchmarks/neighbour.py`` (``--help`` for options).

Every measurement runs in a fresh process (an OpenMP runtime reads its wait policy once,
when it is loaded), for each configuration and import order, ``--repeats`` times in
turns; the table shows medians. In each process:

* ``torch train``: a small MLP (256-512-512-10, batch 256, SGD) trained for ``--steps``
  steps on 2 PyTorch threads;
* ``numpy matmul``: ``--matmuls`` float32 512x512 matmuls (OpenBLAS threads);
* ``npquant gemm``: one call of ``QLinear.accumulate`` (512x512x512 uint8 x int8, one of
  npquant's parallel numba kernels), the median of 50 back-to-back calls;
* ``interleaved``: ``--steps`` training steps, each followed by one npquant gemm call
  (PyTorch and npquant taking turns, as in a loop that evaluates a quantized copy);
"before" is measured before npquant's first parallel kernel in the process, "after"
after it. Import orders: ``torch first`` (PyTorch imported and used before npquant's first
kernel: two OpenMP runtimes in the process, the case of the bug report) and ``npquant
first`` (npquant's kernel runs before PyTorch is imported: PyTorch then finds numba's
``libgomp.so.1`` already loaded and shares it; no "before" for PyTorch).

Configurations: ``unchanged`` (numba's OpenMP pool as before npquant/_threads.py:
``NPQUANT_NUMBA_WAIT_POLICY=unchanged``), ``fix`` (the library default),
``workqueue`` (``NUMBA_THREADING_LAYER=workqueue``) and ``global passive``
(``OMP_WAIT_POLICY=PASSIVE`` for the whole process, the bug report's workaround, which
also makes PyTorch's runtime passive).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFIGS = {
    "unchanged": {"NPQUANT_NUMBA_WAIT_POLICY": "unchanged"},
    "fix": {},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "global passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
ORDERS = ("torch first", "npquant first")
# variables that would change what is measured; removed from the children's environment
CLEARED = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "KMP_LIBRARY",
    "NUMBA_THREADING_LAYER",
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NPQUANT_NUMBA_WAIT_POLICY",
    "NUMBA_DISABLE_JIT",
)


# ------------------------------------------------------------------------------ the child


def _tids():
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def child(order: str, steps: int, matmuls: int, threads: int) -> dict:
    import numpy as np

    if order == "torch first":
        import torch

    import npquant
    from npquant import QParams, QuantSpec
    from npquant._threads import threading_info
    from npquant.qnn.layers import QLinear

    rng = np.random.default_rng(0)
    m = n = k = 512
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x_qp = QParams(np.float32(0.02), 3, QuantSpec(bits=8, signed=False))
    w_qp = QParams(
        rng.uniform(0.001, 0.01, n).astype(np.float32),
        np.zeros(n, np.int32),
        QuantSpec(bits=8, signed=True, symmetric=True, axis=0),
    )
    y_qp = QParams(np.float32(0.5), 128, QuantSpec(bits=8, signed=False))
    a = rng.standard_normal((512, 512)).astype(np.float32)

    def mm():
        for _ in range(matmuls):
            a @ a

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    out = {"order": order}

    def setup_torch():
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(256, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 10),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        xb, yb = torch.randn(256, 256), torch.randint(0, 10, (256,))

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()

        def train():
            for _ in range(steps):
                step()

        for _ in range(10):  # warm-up: PyTorch's threads exist, first-call costs paid
            step()
        return step, train

    if order == "torch first":
        step, train = setup_torch()
        mm()
        out["torch_before"] = timed(train)
        out["numpy_before"] = timed(mm)
    else:
        mm()
        out["torch_before"] = None
        out["numpy_before"] = timed(mm)

    tids0 = _tids()  # npquant's layers may pack weights with a parallel kernel: build them here
    lin = QLinear(w, w_qp, None, x_qp, y_qp)
    twin = QLinear(w, w_qp, None, x_qp, y_qp, backend="numpy")
    ref = lin.accumulate(x)  # npquant's first parallel kernel in this process (compiled or cached)
    out["correct"] = bool(np.array_equal(ref, twin.accumulate(x)))
    out["new_threads"] = len(_tids() - tids0)
    if order == "npquant first":
        step, train = setup_torch()
    lin.accumulate(x)
    out["torch_after"] = timed(train)
    out["numpy_after"] = timed(mm)
    calls = []
    for _ in range(50):
        t0 = time.perf_counter()
        lin.accumulate(x)
        calls.append(time.perf_counter() - t0)
    out["gemm"] = statistics.median(calls)

    def inter():
        for _ in range(steps):
            step()
            lin.accumulate(x)

    out["interleaved"] = timed(inter)
    info = threading_info()
    out["layer"] = info["layer"]
    out["wait_policy"] = info["wait_policy"]
    out["openmp_runtimes"] = [os.path.basename(p) for p in info["openmp_runtimes"]]
    out["numba_threads"] = info["num_threads"]
    import torch

    out["torch_threads"] = torch.get_num_threads()
    out["npquant"] = npquant.__version__
    return out


# ----------------------------------------------------------------------------- the parent


def run_one(config: str, order: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(CONFIGS[config])
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        order,
        "--steps",
        str(args.steps),
        "--matmuls",
        str(args.matmuls),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _fmt(v, unit="s", scale=1.0, digits=2):
    return "n/a" if v is None else f"{v * scale:.{digits}f}{unit}"


def table(results: dict, args) -> str:
    lines = [
        f"npquant neighbour benchmark: {args.threads} threads each (PyTorch, numba, OpenBLAS), "
        f"{os.cpu_count()} logical cores; medians of {args.repeats} fresh processes per row",
        f"torch train = {args.steps} MLP steps; numpy matmul = {args.matmuls} x 512^3 float32; "
        "npquant gemm = one 512x512x512 QLinear.accumulate; interleaved = steps each followed by one gemm",
        "",
        "| order | config | layer | torch train before | after | numpy matmul before | after "
        "| npquant gemm | interleaved | numba wait policy | OpenMP runtimes | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (order, config), rs in results.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"| {order} | {config} | error: {rs[0]['error']} |")
            continue
        r0 = ok[-1]
        lines.append(
            f"| {order} | {config} | {r0['layer']} | {_fmt(_med(ok, 'torch_before'))} | "
            f"{_fmt(_med(ok, 'torch_after'))} | {_fmt(_med(ok, 'numpy_before'))} | {_fmt(_med(ok, 'numpy_after'))} | "
            f"{_fmt(_med(ok, 'gemm'), ' ms', 1e3)} | {_fmt(_med(ok, 'interleaved'))} | "
            f" {r0['wait_policy']} | {', '.join(r0['openmp_runtimes'])} | "
            f"{'yes' if all(r['correct'] for r in ok) else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per row (default: 3)")
    p.add_argument("--steps", type=int, default=100, help="PyTorch training steps (default: 100)")
    p.add_argument("--matmuls", type=int, default=100, help="NumPy matmuls (default: 100)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    p.add_argument("--orders", default=",".join(ORDERS), help="comma-separated, from: " + ", ".join(ORDERS))
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.matmuls, args.threads)))
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"--configs: {c!r} is not one of {', '.join(CONFIGS)}")
    for o in orders:
        if o not in ORDERS:
            p.error(f"--orders: {o!r} is not one of {', '.join(ORDERS)}")
    results = {(o, c): [] for o in orders for c in configs}
    for rep in range(args.repeats):  # in turns, so a slow spell of the machine hits every row
        for key in results:
            print(f"round {rep + 1}/{args.repeats}: {key[0]}, {key[1]} ...", file=sys.stderr, flush=True)
            results[key].append(run_one(key[1], key[0], args))
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"order": o, "config": c, "runs": rs} for (o, c), rs in results.items()], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
