"""Time npquant's ``quantize`` and ``dequantize`` against NumPy and the peer libraries.

Run from the repository root as ``python -m benchmarks`` or ``python benchmarks/run.py``
(``--help`` lists the options). For each kernel, granularity and size, one run times:

* ``numpy``  -- npquant with ``backend="numpy"`` (the readable NumPy twin),
* ``numba``  -- npquant with ``backend="numba"`` (the compiled kernel),
* ``torch``  -- ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` and
  ``Tensor.dequantize()``, when PyTorch is installed,
* ``onnxruntime`` -- a one-node ``QuantizeLinear`` / ``DequantizeLinear`` model built with
  ``onnx.helper`` (opset 21), when onnx and onnxruntime are installed.

npquant is timed through its public functions, so its times include the argument checks
(a finite-values pass over ``x``; a range pass over ``q``). Every callable is run twice
before timing (numba compiles on first call; no compile time is timed), the number of
calls per sample is raised until a sample lasts ``--min-time``, and ``--repeats`` samples
are taken with the garbage collector off. Each peer's output is compared bit for bit with
npquant's (outside the timed region) and the result is reported.

Thread counts are pinned before the libraries are imported: OMP/MKL/OPENBLAS/NUMBA env
vars, then ``numba.set_num_threads``, ``torch.set_num_threads`` and onnxruntime's
``intra_op_num_threads``. Results go to ``<out>/latest.md`` and ``<out>/latest.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings

KERNELS = ("quantize", "dequantize")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
PEERS = ("torch", "onnxruntime")
# npquant method whose arithmetic each peer's quantize reproduces (see npquant/linear.py)
PEER_METHOD = {"torch": "torch", "onnxruntime": "divide"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
HERE = os.path.dirname(os.path.abspath(__file__))
README_START = "<!-- benchmark-results:start -->"
README_END = "<!-- benchmark-results:end -->"
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
             "neon", "asimd", "sve")


def _list(choices=None, conv=str):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        out = []
        for t in items:
            try:
                v = conv(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{t!r} is not valid here") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"{t!r} is not one of {', '.join(choices)}")
            out.append(v)
        return out

    return parse


def _size(text: str) -> int:
    v = float(text)  # accepts 1e6
    if not (v >= 1 and v == int(v)):
        raise ValueError(text)
    return int(v)


def _positive(conv):
    def parse(text):
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0 and not (conv is float and v == 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return v

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time npquant quantize/dequantize (NumPy twin, numba) against torch and "
                    "onnxruntime, and write a Markdown and a JSON report.")
    p.add_argument("--kernels", type=_list(KERNELS), default=list(KERNELS),
                   help=f"comma-separated, from {','.join(KERNELS)} (default: both)")
    p.add_argument("--granularities", type=_list(GRANULARITIES), default=["per_tensor", "per_channel"],
                   help="comma-separated, from per_tensor,per_channel,per_group "
                        "(default: per_tensor,per_channel)")
    p.add_argument("--sizes", type=_list(conv=_size), default=[10_000, 1_000_000],
                   help="element counts, e.g. 1e4,1e6 (default); the tensor is a 2-D (rows, cols) "
                        "weight, rows the largest divisor of n up to sqrt(n)")
    p.add_argument("--methods", type=_list(), default=["divide", "torch"],
                   help="npquant quantize methods to time, from npquant.METHODS "
                        "(default: divide,torch; 'torch' is skipped for per_group)")
    p.add_argument("--dtype", choices=("uint8", "int8"), default="uint8",
                   help="8-bit asymmetric codes, unsigned or signed (default: uint8)")
    p.add_argument("--block-size", type=_positive(int), default=32,
                   help="per_group block length along axis 1 (default: 32)")
    p.add_argument("--repeats", type=_positive(int), default=7, help="timed samples (default: 7)")
    p.add_argument("--min-time", type=_positive(float), default=0.02,
                   help="seconds a sample lasts at least; 0 = one call per sample (default: 0.02)")
    p.add_argument("--threads", type=_positive(int), default=1,
                   help="threads for numba, torch, onnxruntime and BLAS (default: 1)")
    p.add_argument("--peers", type=_list(PEERS), default=list(PEERS),
                   help="peer libraries to time when installed (default: torch,onnxruntime)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for latest.md and latest.json (default: benchmarks/results)")
    p.add_argument("--update-readme", action="store_true",
                   help="also copy the table into benchmarks/README.md between its markers")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default: 0)")
    return p.parse_args(argv)


def pin_thread_env(n: int) -> bool:
    """Set the thread env vars; return whether numpy was still unimported (so they bite)."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    return "numpy" not in sys.modules


# ------------------------------------------------------------------------- machine info


def machine_info(threads: int, peers: dict) -> dict:
    import llvmlite.binding as llvm
    import numba
    import numpy as np

    import npquant

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu in ("", platform.machine(), platform.processor()):
                    cpu = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    import llvmlite

    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__, "llvmlite": llvmlite.__version__,
                "npquant": npquant.__version__}
    for name, mod in peers.items():
        if mod is not None:
            versions[name] = mod.__version__
    if peers.get("onnxruntime") is not None:
        import onnx

        versions["onnx"] = onnx.__version__
    threads_info = {"requested": threads, "numba": numba.get_num_threads(),
                    "env": {v: os.environ.get(v) for v in THREAD_ENV}}
    if peers.get("torch") is not None:
        threads_info["torch"] = peers["torch"].get_num_threads()
        threads_info["torch_quantized_engine"] = peers["torch"].backends.quantized.engine
    if peers.get("onnxruntime") is not None:
        threads_info["onnxruntime_intra_op"] = threads
    return {
        "cpu": cpu,
        "llvm_host_cpu": llvm.get_host_cpu_name(),
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "platform": platform.platform(),
        "versions": versions,
        "threads": threads_info,
        "git_commit": _git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _git_commit():
    try:
        root = os.path.dirname(HERE)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


# -------------------------------------------------------------------------------- peers


def load_peers(wanted, threads: int) -> tuple[dict, dict]:
    """Import the wanted peers; return ``(modules, missing reasons)``."""
    mods, missing = {}, {}
    if "torch" in wanted:
        try:
            import torch

            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
            mods["torch"] = torch
        except ImportError as exc:
            missing["torch"] = f"not installed ({exc})"
    if "onnxruntime" in wanted:
        try:
            import onnx  # noqa: F401  (needed to build the models)
            import onnxruntime

            mods["onnxruntime"] = onnxruntime
        except ImportError as exc:
            missing["onnxruntime"] = f"not installed ({exc})"
    return mods, missing


def _ort_session(ort, op, shape, qp, dtype, threads):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = qp.spec
    qtype = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    if op == "QuantizeLinear":
        tin, tout = TensorProto.FLOAT, qtype
    else:
        tin, tout = qtype, TensorProto.FLOAT
    attrs = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size is not None:
        attrs["block_size"] = spec.block_size
    inits = [numpy_helper.from_array(np.asarray(qp.scale, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(qp.zero_point).astype(dtype), "zero_point")]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "scale", "zero_point"], ["y"], **attrs)], "bench",
        [helper.make_tensor_value_info("x", tin, list(shape))],
        [helper.make_tensor_value_info("y", tout, list(shape))], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess


# ------------------------------------------------------------------------------- timing


def time_callable(fn, repeats: int, min_time: float) -> dict:
    """Seconds per call: ``repeats`` samples of ``number`` calls each, after two warm-up calls."""
    fn()
    fn()
    number = 1
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if min_time > 0:
            while True:
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                dt = time.perf_counter() - t0
                if dt >= min_time or number >= 1 << 20:
                    break
                number = max(number * 2, int(number * min_time / max(dt, 1e-9) * 1.2))
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    samples.sort()
    med = samples[len(samples) // 2] if len(samples) % 2 else 0.5 * (
        samples[len(samples) // 2 - 1] + samples[len(samples) // 2])
    return {"median_s": med, "min_s": samples[0], "max_s": samples[-1], "number": number,
            "repeats": repeats, "samples_s": samples}


# -------------------------------------------------------------------------------- cases


def tensor_shape(n: int) -> tuple[int, int]:
    """``(rows, n // rows)`` with ``rows`` the largest divisor of ``n`` up to ``sqrt(n)``."""
    rows = next(r for r in range(math.isqrt(n), 0, -1) if n % r == 0)
    return rows, n // rows


def build_cases(args, peers: dict, missing: dict):
    """Yield ``dict(kernel, granularity, shape, impl, method, fn | None, status, exact)``."""
    import numpy as np

    import npquant as nq

    dtype = np.uint8 if args.dtype == "uint8" else np.int8
    rng = np.random.default_rng(args.seed)
    for gran in args.granularities:
        for n in args.sizes:
            shape = tensor_shape(n)
            x = rng.standard_normal(shape, dtype=np.float32)
            kw = {"per_tensor": {}, "per_channel": {"axis": 0},
                  "per_group": {"axis": 1, "block_size": args.block_size}}[gran]
            spec = nq.QuantSpec(bits=8, signed=dtype == np.int8, symmetric=False, **kw)
            qp = nq.fit_qparams(x, spec)
            methods = [m for m in args.methods if not (m == "torch" and gran == "per_group")]
            ref_q = {m: nq.quantize(x, qp, method=m) for m in set(methods) | {"divide"}}
            if gran != "per_group":
                ref_q.setdefault("torch", nq.quantize(x, qp, method="torch"))
            q = ref_q["divide"]
            ref_dq = nq.dequantize(q, qp)
            base = {"granularity": gran, "shape": shape, "n": shape[0] * shape[1]}
            for kernel in args.kernels:
                row = dict(base, kernel=kernel)
                if kernel == "quantize":
                    for m in methods:
                        for be in ("numpy", "numba"):
                            yield dict(row, impl=be, method=m, status="ok", exact=None,
                                       fn=lambda be=be, m=m: nq.quantize(x, qp, method=m, backend=be))
                else:
                    for be in ("numpy", "numba"):
                        yield dict(row, impl=be, method=None, status="ok", exact=None,
                                   fn=lambda be=be: nq.dequantize(q, qp, backend=be))
                for peer in args.peers:
                    yield _peer_case(row, peer, kernel, peers, missing, x, q, qp, dtype,
                                     ref_q, ref_dq, args.threads)


def _peer_case(row, peer, kernel, peers, missing, x, q, qp, dtype, ref_q, ref_dq, threads):
    import numpy as np

    import npquant as nq

    method = PEER_METHOD[peer] if kernel == "quantize" else None
    row = dict(row, impl=peer, method=method, fn=None, exact=None)
    if peer in missing:
        return dict(row, status=f"missing: {missing[peer]}")
    spec = qp.spec
    if peer == "torch":
        torch = peers["torch"]
        if spec.block_size is not None:
            return dict(row, status="n/a: torch has no blocked quantize")
        xt = torch.from_numpy(x)
        tdt = torch.quint8 if dtype == np.uint8 else torch.qint8
        if spec.axis is None:
            s, z = float(qp.scale), int(qp.zero_point)

            def tq():
                return torch.quantize_per_tensor(xt, s, z, tdt)
        else:
            s = torch.from_numpy(qp.scale.astype(np.float64))
            z = torch.from_numpy(qp.zero_point.astype(np.int64))

            def tq():
                return torch.quantize_per_channel(xt, s, z, spec.axis, tdt)
        if kernel == "quantize":
            exact = bool(np.array_equal(tq().int_repr().numpy(), ref_q["torch"]))
            return dict(row, fn=tq, status="ok", exact=exact)
        # dequantize torch's own codes; npquant dequantizes the same codes for the check
        qt = tq()
        ref = nq.dequantize(qt.int_repr().numpy(), qp)
        exact = bool(np.array_equal(qt.dequantize().numpy(), ref))
        return dict(row, fn=qt.dequantize, status="ok", exact=exact)
    ort = peers["onnxruntime"]
    op = "QuantizeLinear" if kernel == "quantize" else "DequantizeLinear"
    try:
        sess = _ort_session(ort, op, x.shape, qp, dtype, threads)
    except Exception as exc:  # an unsupported op form is a result, not a crash
        return dict(row, status=f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    feed = {"x": x if kernel == "quantize" else q}
    ref = ref_q["divide"] if kernel == "quantize" else ref_dq

    def run():
        return sess.run(["y"], feed)

    exact = bool(np.array_equal(run()[0], ref))
    return dict(row, fn=run, status="ok", exact=exact)


# ------------------------------------------------------------------------------ reports


def run_benchmarks(args, peers, missing) -> list[dict]:
    results = []
    for case in build_cases(args, peers, missing):
        fn = case.pop("fn")
        label = (f"{case['kernel']:<10} {case['granularity']:<11} n={case['n']:<9} "
                 f"{case['impl']}{'/' + case['method'] if case['method'] else ''}")
        if fn is not None:
            case.update(time_callable(fn, args.repeats, args.min_time))
            case["values_per_s"] = case["n"] / case["median_s"]
            print(f"  {label:<56} {case['median_s'] * 1e6:12.1f} us", file=sys.stderr, flush=True)
        else:
            print(f"  {label:<56} {case['status']}", file=sys.stderr, flush=True)
        results.append(case)
    _add_ratios(results)
    return results


def _add_ratios(results):
    """``speedup_numba``: time of this row / time of the matching numba row (>1: numba faster)."""
    numba_t = {(r["kernel"], r["granularity"], r["n"], r["method"]): r["median_s"]
               for r in results if r["impl"] == "numba" and "median_s" in r}
    for r in results:
        if "median_s" not in r or r["impl"] == "numba":
            continue
        key = (r["kernel"], r["granularity"], r["n"], r["method"])
        if key not in numba_t and r["kernel"] == "quantize":  # peer method not timed: nearest one
            alts = [k for k in numba_t if k[:3] == key[:3]]
            key = alts[0] if alts else key
            r["ratio_against_method"] = key[3]
        if key in numba_t:
            r["speedup_numba"] = r["median_s"] / numba_t[key]


def _fmt_time(s: float) -> str:
    us = s * 1e6
    return f"{us:,.1f}" if us < 1000 else f"{us:,.0f}"


def markdown_report(results, info, args) -> str:
    th = info["threads"]
    ver = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        "## npquant benchmark: quantize / dequantize",
        "",
        f"- Machine: {info['cpu']} (LLVM host CPU `{info['llvm_host_cpu']}`), "
        f"{info['logical_cores']} logical cores ({info['cores_available']} available), "
        f"ISA: {' '.join(info['isa_flags']) or 'n/a'}",
        f"- Platform: {info['platform']}",
        f"- Versions: {ver}",
        f"- Threads: {args.threads} requested; numba {th['numba']}"
        + (f", torch {th['torch']} (quantized engine {th['torch_quantized_engine']})" if "torch" in th else "")
        + (f", onnxruntime intra-op {th['onnxruntime_intra_op']}" if "onnxruntime_intra_op" in th else "")
        + "; npquant's kernels are serial loops whatever the count",
        f"- Date: {info['date_utc']}; commit {info['git_commit'] or 'unknown'}",
        f"- Input: float32 N(0, 1), shape (rows, cols), 8-bit asymmetric {args.dtype}, min-max "
        f"qparams; per_channel: axis=0; per_group: axis=1, block_size={args.block_size}",
        f"- Timing: median of {args.repeats} samples, each >= {args.min_time} s of back-to-back "
        "calls, after 2 warm-up calls (no JIT compile time); spread = (max - min) / median",
        "",
        "| kernel | granularity | elements | implementation | median us | spread | Mvalues/s "
        "| numba speed-up | bit-exact |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        impl = r["impl"] + (f" (`{r['method']}`)" if r["method"] and r["impl"] in ("numpy", "numba") else "")
        size = f"{r['n']:,} ({r['shape'][0]}x{r['shape'][1]})"
        if "median_s" not in r:
            lines.append(f"| {r['kernel']} | {r['granularity']} | {size} | {impl} | {r['status']} | | | | |")
            continue
        spread = (r["max_s"] - r["min_s"]) / r["median_s"] * 100
        sp = r.get("speedup_numba")
        sp_s = "" if sp is None else f"{sp:.2f}x"
        if sp is not None and r.get("ratio_against_method"):
            sp_s += f" (vs `{r['ratio_against_method']}`)"
        if r["impl"] in PEERS:
            exact = "yes" if r["exact"] else "**no**"
            exact += f" (vs `{r['method']}`)" if r["method"] else ""
        else:
            exact = ""
        lines.append(f"| {r['kernel']} | {r['granularity']} | {size} | {impl} | "
                     f"{_fmt_time(r['median_s'])} | {spread:.0f}% | {r['values_per_s'] / 1e6:,.1f} | "
                     f"{sp_s} | {exact} |")
    lines += [
        "",
        "numba speed-up = time of the row / time of npquant numba with the same method "
        "(> 1: numba is faster). bit-exact = the peer's output equals npquant's (codes of the "
        "named method, or dequantized floats) on this input. npquant rows include argument "
        "checks; onnxruntime rows include its `InferenceSession.run` call overhead.",
    ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def update_readme(md: str, readme: str) -> None:
    with open(readme) as f:
        text = f.read()
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers")
    body = md.replace("## npquant benchmark: quantize / dequantize\n\n", "", 1)
    _write_atomic(readme, text[: i + len(README_START)] + "\n" + body + text[j:])


def main(argv=None) -> int:
    args = parse_args(argv)
    env_pinned = pin_thread_env(args.threads)
    # torch 2.13 warns that its quantized tensors are deprecated; the timing is still valid
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    import numba

    from npquant.linear import METHODS

    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        print(f"python -m benchmarks: error: --methods: {bad[0]!r} is not one of "
              f"{', '.join(METHODS)}", file=sys.stderr)
        return 2
    numba.set_num_threads(args.threads)
    peers, missing = load_peers(args.peers, args.threads)
    info = machine_info(args.threads, {p: peers.get(p) for p in args.peers})
    info["thread_env_set_before_numpy_import"] = env_pinned
    for p, why in missing.items():
        print(f"peer {p}: {why}", file=sys.stderr)
    print(f"benchmarking on {info['cpu']}, {args.threads} thread(s) ...", file=sys.stderr, flush=True)
    results = run_benchmarks(args, peers, missing)
    md = markdown_report(results, info, args)
    os.makedirs(args.out, exist_ok=True)
    payload = {"machine": info, "settings": {k: v for k, v in vars(args).items()},
               "missing_peers": missing, "results": results}
    _write_atomic(os.path.join(args.out, "latest.json"), json.dumps(payload, indent=1) + "\n")
    _write_atomic(os.path.join(args.out, "latest.md"), md)
    if args.update_readme:
        update_readme(md, os.path.join(HERE, "README.md"))
    print(md)
    print(f"wrote {os.path.join(args.out, 'latest.md')} and latest.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
