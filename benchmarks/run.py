"""Time npquant's kernels against NumPy and the peer libraries, side by side in one run.

Run from the repository root as ``python -m benchmarks`` or ``python benchmarks/run.py``
(``--help`` lists the options, ``--list`` the kernels and their default sizes). Each
kernel is a suite in ``benchmarks/suites/`` (the interface is in ``benchmarks/common.py``):
it yields cases, each with the implementations to time (npquant's compiled kernel, its
NumPy twin, the peers) and the ratios the project aims for.

For every implementation of a case the runner calls it twice (numba compiles on the
first call; no compile time is ever timed) and raises the number of calls per sample
until a sample lasts ``--min-time``. Then it takes ``--repeats`` rounds of samples, one
sample of each implementation a round, in turns, with the garbage collector off (3
rounds when one call takes over a second), and reports the median, the spread
``(max - min) / median``, the throughput, the peak memory of one call (Linux: the rise of
the resident set's high-water mark, reset before the call) and the ratio
``time(implementation) / time(npquant)`` (above 1: npquant is faster).

Threads are pinned before numpy is imported (OMP/MKL/OPENBLAS/NUMBA env vars), then
``numba.set_num_threads``, ``torch.set_num_threads`` and onnxruntime's
``intra_op_num_threads``. With several counts (``--threads 1,2``) each count runs in its
own process; in a run on N > 1 threads, npquant's parallel kernels are also timed on one
numba thread, in turns with the N-thread calls, which gives their scaling. Results go to
``<out>/latest.md`` and ``<out>/latest.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # ``python benchmarks/run.py`` from anywhere
    sys.path.insert(0, ROOT)

SUITES = ("gemm", "conv", "cnn", "requantize", "unpack", "huffman", "kmeans", "quantize", "dequantize", "training")
PEERS = ("torch", "onnxruntime")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
# --isa avx2: every library on its AVX2 code path, where it has a switch (onnxruntime has none)
ISA_ENV = {
    "avx2": {
        "NPQUANT_GEMM_KERNEL": "avx2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "portable": {"NPQUANT_GEMM_KERNEL": "portable"},
    "auto": {},
}
ENV_REPORTED = THREAD_ENV + ("OMP_WAIT_POLICY",) + tuple(ISA_ENV["avx2"])
README_START = "<!-- benchmark-results:start -->"
README_END = "<!-- benchmark-results:end -->"
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "neon",
    "asimd",
    "sve",
)
SLOW_CALL_S = 1.0  # one call slower than this: 3 samples of one call
ONE_THREAD = "numba@1thread"  # npquant's kernel on one numba thread, timed in a multi-thread run


def suite_module(name: str):
    return importlib.import_module(f"benchmarks.suites.{name}")


# ------------------------------------------------------------------------------ options


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


def _sizes(text: str):
    kernel, sep, labels = text.partition("=")
    if not sep:
        kernel, labels = None, text
    elif kernel not in SUITES:
        raise argparse.ArgumentTypeError(f"{kernel!r} is not one of {', '.join(SUITES)}")
    return kernel, _list()(labels)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time npquant's kernels (compiled and NumPy twin) against NumPy, PyTorch, "
        "onnxruntime, zlib and scikit-learn; write a Markdown and a JSON report.",
    )
    p.add_argument(
        "--kernels",
        type=_list(SUITES),
        default=list(SUITES),
        help=f"comma-separated, from {','.join(SUITES)} (default: all)",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        action="append",
        default=[],
        help="KERNEL=LABEL,LABEL (repeatable), or LABEL,... when one kernel is chosen; "
        "labels are the kernel's own (see --list), e.g. gemm=512x512x512,1x4096x4096",
    )
    p.add_argument(
        "--threads",
        type=_list(conv=_positive(int)),
        default=[1],
        help="thread counts, e.g. 1 or 1,2 (each count runs in its own process; default: 1)",
    )
    p.add_argument("--repeats", type=_positive(int), default=7, help="timed samples (default: 7)")
    p.add_argument(
        "--min-time",
        type=_positive(float),
        default=0.05,
        help="seconds a sample lasts at least; 0 = one call per sample (default: 0.05)",
    )
    p.add_argument(
        "--peers",
        type=_list(PEERS),
        default=list(PEERS),
        help="peer libraries to time when installed (default: torch,onnxruntime; "
        "numpy, zlib and scikit-learn always run)",
    )
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="directory for latest.md and latest.json (default: benchmarks/results)",
    )
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="also copy the report into benchmarks/README.md between its markers",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument(
        "--isa",
        choices=tuple(ISA_ENV),
        default="auto",
        help="code path: auto (the fastest each library picks), avx2 (npquant's AVX2 kernels "
        "and fbgemm, ATen and OpenBLAS forced to AVX2; onnxruntime cannot be forced) or "
        "portable (npquant's portable kernels)",
    )
    p.add_argument("--list", action="store_true", help="list the kernels and their default sizes, then exit")
    p.add_argument("--child-json", help=argparse.SUPPRESS)  # internal: one thread count, results here
    args = p.parse_args(argv)
    sizes = {}
    for kernel, labels in args.sizes:
        if kernel is None:
            if len(args.kernels) != 1:
                p.error("--sizes without KERNEL= needs exactly one --kernels")
            kernel = args.kernels[0]
        sizes[kernel] = labels
    args.sizes = sizes
    return args


def pin_thread_env(n: int, isa: str = "auto") -> bool:
    """Set the thread env vars (and those of ``--isa``); return whether numpy was still
    unimported (so they bite).

    On more than one thread, OpenMP's idle threads (numba's and PyTorch's) are told to
    sleep (``OMP_WAIT_POLICY=PASSIVE``, unless set already), as onnxruntime's are by its
    session option: the implementations of a case are timed in turns, and one library's
    threads spinning after its call would slow the next library's call.
    """
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    os.environ.update(ISA_ENV[isa])
    if n > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "numpy" not in sys.modules


# ------------------------------------------------------------------------- machine info


def machine_info(threads: int, peers: dict) -> dict:
    import llvmlite
    import llvmlite.binding as llvm
    import numba
    import numpy as np

    import npquant
    from npquant.qnn.accumulation import host_path
    from npquant.qnn.gemm import gemm_kernel

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
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "npquant": npquant.__version__,
    }
    for name in ("scipy", "sklearn"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    for name, mod in peers.items():
        versions[name] = mod.__version__
    if "onnxruntime" in peers:
        import onnx

        versions["onnx"] = onnx.__version__
    import zlib

    versions["zlib"] = zlib.ZLIB_RUNTIME_VERSION
    threads_info = {
        "requested": threads,
        "numba": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
        "env": {v: os.environ.get(v) for v in ENV_REPORTED},
    }
    if "torch" in peers:
        threads_info["torch"] = peers["torch"].get_num_threads()
        threads_info["torch_quantized_engine"] = peers["torch"].backends.quantized.engine
    if "onnxruntime" in peers:
        threads_info["onnxruntime_intra_op"] = threads
    return {
        "cpu": cpu,
        "llvm_host_cpu": llvm.get_host_cpu_name(),
        "npquant_gemm_kernel": gemm_kernel(),
        "peer_paths": {"fbgemm": host_path("fbgemm"), "mlas": host_path("mlas"), "openblas": _openblas_core()},
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "platform": platform.platform(),
        "versions": versions,
        "threads": threads_info,
        "git_commit": _git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _openblas_core():
    """The kernel family NumPy's OpenBLAS runs (threadpoolctl), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas":
            return lib.get("architecture")
    return None


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def _git_commit():
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


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
            importlib.import_module("onnx")  # the suites build their models with it
            import onnxruntime

            mods["onnxruntime"] = onnxruntime
        except ImportError as exc:
            missing["onnxruntime"] = f"not installed ({exc})"
    return mods, missing


# ------------------------------------------------------------------------------- timing


def calibrate(fn, min_time: float) -> tuple[int, float]:
    """Two warm-up calls, then ``(number, seconds of one call)``: how many back-to-back
    calls make a sample last ``min_time``."""
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    number = 1
    if min_time > 0 and first < min_time:
        number = max(1, int(min_time / max(first, 1e-9)))
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            dt = time.perf_counter() - t0
            if dt >= min_time or number >= 1 << 20:
                break
            number = max(number * 2, int(number * min_time / max(dt, 1e-9) * 1.2))
    return number, first


def sample(fn, number: int) -> float:
    """Seconds per call over ``number`` back-to-back calls, the garbage collector off."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if gc_was:
            gc.enable()


def time_interleaved(fns: dict, repeats: int, min_time: float) -> dict:
    """Time several callables of one case in turns: each round takes one sample of each,
    so a slow spell of the machine falls on all of them alike (their ratios hold).
    Returns ``{name: stats}``; 3 rounds when some call takes over ``SLOW_CALL_S``."""
    setup = {name: calibrate(fn, min_time) for name, fn in fns.items()}
    if any(first > SLOW_CALL_S for _, first in setup.values()):
        repeats = min(repeats, 3)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(sample(fn, setup[name][0]))
    out = {}
    for name, ss in samples.items():
        ss.sort()
        mid = len(ss) // 2
        med = ss[mid] if len(ss) % 2 else 0.5 * (ss[mid - 1] + ss[mid])
        out[name] = {
            "median_s": med,
            "min_s": ss[0],
            "max_s": ss[-1],
            "number": setup[name][0],
            "repeats": repeats,
            "samples_s": ss,
        }
    return out


def _status_kb(field: str):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_memory_bytes(fn):
    """Rise of the resident set's high-water mark during one call, or None off Linux."""
    try:
        gc.collect()
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        fn()
        peak = _status_kb("VmHWM")
    except OSError:
        return None
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


# ------------------------------------------------------------------------------- running


def run_suites(args, threads: int, peers: dict, missing: dict) -> list[dict]:
    from benchmarks.common import UNITS, Context, Impl

    rows = []
    for name in args.kernels:
        mod = suite_module(name)
        ctx = Context(
            sizes=args.sizes.get(name, list(mod.DEFAULT_SIZES)),
            threads=threads,
            seed=args.seed,
            peers=peers,
            missing=missing,
        )
        parallel = getattr(mod, "PARALLEL", False)
        for case in mod.cases(ctx):
            if parallel and threads > 1:
                base = next(i for i in case.impls if i.name == case.baseline)
                if base.fn is not None:
                    case.impls.append(Impl(ONE_THREAD, _on_one_thread(base.fn, threads)))
            timed = time_interleaved(
                {i.name: i.fn for i in case.impls if i.fn is not None}, args.repeats, args.min_time
            )
            times = {}
            case_rows = []
            for impl in case.impls:
                row = {
                    "suite": case.suite,
                    "case": case.label,
                    "impl": impl.name,
                    "threads": threads,
                    "status": impl.status,
                    "check": impl.check,
                    "unit": case.unit,
                    "work": case.work,
                    "baseline": case.baseline,
                    "target": case.targets.get(impl.name),
                    "info": case.info,
                }
                tag = f"{case.suite} {case.label} {impl.name} [{threads}t]"
                if impl.fn is None:
                    print(f"  {tag:<64} {impl.status}", file=sys.stderr, flush=True)
                else:
                    row.update(timed[impl.name])
                    row["peak_bytes"] = peak_memory_bytes(impl.fn)
                    row["throughput"] = case.work / row["median_s"] / UNITS[case.unit]
                    times[impl.name] = row["median_s"]
                    print(
                        f"  {tag:<64} {row['median_s'] * 1e3:11.3f} ms  {row['throughput']:10.2f} {case.unit}",
                        file=sys.stderr,
                        flush=True,
                    )
                case_rows.append(row)
            base = times.get(case.baseline)
            for row in case_rows:
                if base and row["impl"] in times:
                    row["ratio"] = times[row["impl"]] / base
                    if row["target"] is not None:
                        row["met"] = row["ratio"] >= row["target"]
            rows += case_rows
            del case
    return rows


def _on_one_thread(fn, threads: int):
    """``fn`` run with numba limited to one thread (restored to ``threads`` after)."""
    import numba

    def run():
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(threads)

    return run


def scaling_rows(rows: list[dict]) -> list[dict]:
    """npquant's speed-up on N threads: the ratio of its ``ONE_THREAD`` row, which the
    N-thread process times in turns with the N-thread kernel (same process, same spell)."""
    out = []
    for r in rows:
        if r["impl"] == ONE_THREAD and "ratio" in r:
            aim = getattr(suite_module(r["suite"]), "SCALING_AIM", None)
            out.append(
                {
                    "suite": r["suite"],
                    "case": r["case"],
                    "impl": r["baseline"],
                    "from_threads": 1,
                    "to_threads": r["threads"],
                    "scaling": r["ratio"],
                    "aim": aim,
                }
            )
    return out


# ------------------------------------------------------------------------------ reports


def _fmt_time(s: float) -> str:
    ms = s * 1e3
    return f"{ms:,.4f}" if ms < 0.1 else f"{ms:,.3f}" if ms < 10 else f"{ms:,.1f}"


def _fmt_num(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:,.1f}" if v >= 10 else f"{v:.3g}"


def _fmt_info(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def markdown_report(rows, scaling, info, args) -> str:
    th = info["threads"]
    ver = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        "## npquant benchmarks",
        "",
        f"- Machine: {info['cpu']} (LLVM host CPU `{info['llvm_host_cpu']}`), "
        f"{info['logical_cores']} logical cores ({info['cores_available']} available), "
        f"ISA: {' '.join(info['isa_flags']) or 'n/a'}; npquant's 8-bit GEMM kernel: "
        f"`{info['npquant_gemm_kernel']}`; peers' paths: fbgemm `{info['peer_paths']['fbgemm']}`, "
        f"onnxruntime MLAS `{info['peer_paths']['mlas']}`, NumPy's OpenBLAS `{info['peer_paths']['openblas']}`"
        + (f" (`--isa {args.isa}`)" if args.isa != "auto" else ""),
        f"- Platform: {info['platform']}",
        f"- Versions: {ver}",
        f"- Threads: {', '.join(map(str, args.threads))} (each count in its own process); "
        f"numba threading layer {th.get('numba_threading_layer')}"
        + (f"; torch quantized engine {th['torch_quantized_engine']}" if "torch_quantized_engine" in th else "")
        + "; onnxruntime intra-op threads = the count, inter-op 1; on more than one thread, idle "
        "threads sleep (`OMP_WAIT_POLICY=PASSIVE`, onnxruntime `allow_spinning=0`)",
        f"- Date: {info['date_utc']}; commit {info['git_commit'] or 'unknown'}",
        f"- Timing: median of {args.repeats} samples (3 when one call exceeds {SLOW_CALL_S:g} s), "
        f"each >= {args.min_time} s of back-to-back calls, after 2 warm-up calls (no JIT compile "
        "time); spread = (max - min) / median; peak = rise of the resident set during one call",
        "- ratio = time(implementation) / time(npquant's compiled kernel), same case, same run: "
        "above 1, npquant is faster",
        "",
    ]
    targeted = [r for r in rows if r.get("target") is not None]
    if targeted:
        lines += [
            "### Targets",
            "",
            "| kernel | case | threads | against | ratio | target | met |",
            "|---|---|---:|---|---:|---:|---|",
        ]
        for r in targeted:
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else r["status"]
            met = "" if "met" not in r else ("yes" if r["met"] else "**no**")
            lines.append(
                f"| {r['suite']} | {r['case']} | {r['threads']} | {r['impl']} | {ratio} | >= {r['target']:g}x | {met} |"
            )
        lines.append("")
    if scaling:
        serial = [m for m in dict.fromkeys(r["suite"] for r in rows) if not getattr(suite_module(m), "PARALLEL", False)]
        lines += [
            "### Thread scaling of npquant's kernels",
            "",
            "npquant's parallel kernels (numba `prange`): time on one numba thread / time on N, "
            f"both timed in turns in the N-thread run (the `{ONE_THREAD}` rows). "
            + (
                f"The kernels of {', '.join(serial)} are serial: their rows on more threads "
                "differ only by noise (the peers may use the threads)."
                if serial
                else ""
            ),
            "",
            "| kernel | case | threads | speed-up | aim |",
            "|---|---|---|---:|---:|",
        ]
        for s in scaling:
            aim = f">= {s['aim']:g}x" if s["aim"] else ""
            lines.append(
                f"| {s['suite']} | {s['case']} | {s['from_threads']} -> {s['to_threads']} | "
                f"{s['scaling']:.2f}x | {aim} |"
            )
        lines.append("")
    for suite in dict.fromkeys(r["suite"] for r in rows):
        srows = [r for r in rows if r["suite"] == suite]
        doc = (suite_module(suite).__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [
            f"### {suite}",
            "",
            doc,
            "",
            f"| case | implementation | threads | median ms | spread | {srows[0]['unit']} | peak MiB "
            "| ratio | output |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in srows:
            if "median_s" not in r:
                lines.append(f"| {r['case']} | {r['impl']} | {r['threads']} | {r['status']} | | | | | |")
                continue
            spread = (r["max_s"] - r["min_s"]) / r["median_s"] * 100
            peak = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:,.1f}"
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
            lines.append(
                f"| {r['case']} | {r['impl']} | {r['threads']} | {_fmt_time(r['median_s'])} | "
                f"{spread:.0f}% | {_fmt_num(r['throughput'])} | {peak} | {ratio} | {r['check'] or ''} |"
            )
        infos = {}
        for r in srows:
            if r["info"]:
                infos.setdefault(r["case"], r["info"])
        if infos:
            lines.append("")
            for case, inf in infos.items():
                lines.append(f"- {case}: " + "; ".join(f"{k} {_fmt_info(v)}" for k, v in inf.items()))
        lines.append("")
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def update_readme(md: str, readme: str, isa: str = "auto") -> None:
    """Put the report between the README's markers: ``benchmark-results`` for the default
    code path, ``benchmark-results-<isa>`` for an ``--isa`` run."""
    with open(readme) as f:
        text = f.read()
    start, end = README_START, README_END
    if isa != "auto":
        start, end = (m.replace("benchmark-results", f"benchmark-results-{isa}") for m in (start, end))
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    body = md.replace("## npquant benchmarks\n\n", "", 1)
    _write_atomic(readme, text[: i + len(start)] + "\n" + body + text[j:])


def _child(args, threads: int) -> dict:
    """Run every suite on ``threads`` threads in this process."""
    env_pinned = pin_thread_env(threads, args.isa)
    # torch 2.13 warns that its quantized tensors are deprecated; the timing is still valid
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import numba

    numba.set_num_threads(threads)
    peers, missing = load_peers(args.peers, threads)
    for p, why in missing.items():
        print(f"peer {p}: {why}", file=sys.stderr)
    print(f"benchmarking on {threads} thread(s) ...", file=sys.stderr, flush=True)
    rows = run_suites(args, threads, peers, missing)
    info = machine_info(threads, peers)
    info["thread_env_set_before_numpy_import"] = env_pinned
    return {"machine": info, "missing_peers": missing, "rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in SUITES:
            mod = suite_module(name)
            print(f"{name:<11} default sizes: {','.join(mod.DEFAULT_SIZES)}")
        return 0
    if args.child_json:
        res = _child(args, args.threads[0])
        _write_atomic(args.child_json, json.dumps(res))
        return 0
    if len(args.threads) == 1:
        res = [_child(args, args.threads[0])]
    else:
        res = []
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        for n in args.threads:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "res.json")
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks",
                    *_without_threads(passthrough),
                    "--threads",
                    str(n),
                    "--child-json",
                    path,
                ]
                done = subprocess.run(cmd, cwd=ROOT)
                if done.returncode:
                    print(f"the run on {n} threads failed (exit {done.returncode})", file=sys.stderr)
                    return done.returncode
                with open(path) as f:
                    res.append(json.load(f))
    rows = [r for x in res for r in x["rows"]]
    info = res[0]["machine"]
    scaling = scaling_rows(rows)
    md = markdown_report(rows, scaling, info, args)
    os.makedirs(args.out, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("child_json", "list")}
    payload = {
        "machine": info,
        "machines_per_thread_count": [x["machine"] for x in res],
        "settings": settings,
        "missing_peers": res[0]["missing_peers"],
        "results": rows,
        "scaling": scaling,
    }
    _write_atomic(os.path.join(args.out, "latest.json"), json.dumps(payload, indent=1) + "\n")
    _write_atomic(os.path.join(args.out, "latest.md"), md)
    if args.update_readme:
        update_readme(md, os.path.join(HERE, "README.md"), args.isa)
    print(md)
    print(f"wrote {os.path.join(args.out, 'latest.md')} and latest.json", file=sys.stderr)
    return 0


def _without_threads(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--threads":
            skip = True
            continue
        if a.startswith("--threads="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
