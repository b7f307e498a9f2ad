"""Outputs of PyTorch's fbgemm and onnxruntime's MLAS recorded on an AVX2 CPU without VNNI.

The files in ``tests/data/x86_avx2`` (copied from the project's shared fixtures; their
README says how they were made, on an AMD EPYC Zen 3 with torch 2.13 and onnxruntime
1.32) hold each library's output ``y`` and the exact result ``exact``. On every CPU,
npquant's library accumulations (``"fbgemm_avx2"``, ``"mlas_avx2"``) must reproduce ``y``
bit for bit and ``"exact"`` must reproduce ``exact``. The mismatch counts of the exact
model against the libraries (what npquant got wrong before the accumulation modes) and
of the named mode are printed with ``pytest -s``.
"""

from pathlib import Path

import numpy as np
import pytest

from npquant import QParams, QuantSpec
from npquant.qnn.accumulation import resolve
from npquant.qnn.add import add, torch_add_vector_width
from npquant.qnn.conv import conv2d_accumulate, qconv2d
from npquant.qnn.linear import linear_accumulate, qlinear

DATA = Path(__file__).parent / "data" / "x86_avx2"
FILES = sorted(p.name for p in DATA.glob("*.npz"))
COUNTS = {}


def _load(name):
    with np.load(DATA / name) as z:
        return {k: z[k] for k in z.files}


def _u8(scale, zp):
    return QParams(np.float32(scale), int(zp), QuantSpec(signed=False))


def _w_qp(scale, zp):
    scale, zp = np.asarray(scale, np.float32).ravel(), np.asarray(zp).astype(np.int32).ravel()
    if scale.size == 1 and zp.size == 1:
        return QParams(scale[0], int(zp[0]), QuantSpec())
    scale = np.broadcast_to(scale, max(scale.shape, zp.shape)).copy()
    return QParams(scale, np.broadcast_to(zp, scale.shape).copy(), QuantSpec(axis=0))


def _record(name, mode, got, want):
    COUNTS[(name, mode)] = (int(np.sum(got != want)), want.size)
    np.testing.assert_array_equal(got, want, err_msg=f"{name} with accumulation={mode!r}")


def test_every_file_is_covered():
    assert len(FILES) == 39
    kinds = {f.split("_")[0] + "_" + f.split("_")[1] for f in FILES}
    assert kinds == {
        "torch_linear",
        "torch_conv",
        "torch_add",
        "ort_matmulinteger",
        "ort_qlinearmatmul",
        "ort_qlinearconv",
        "ort_convinteger",
    }


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("torch_linear")])
def test_torch_linear(name):
    d = _load(name)
    x_qp, y_qp = _u8(d["x_scale"], d["x_zero_point"]), _u8(d["y_scale"], d["y_zero_point"])
    w_qp = _w_qp(d["w_scale"], d["w_zero_point"])
    act = "relu" if d["relu"] else None
    for mode, want, acc_want in (("fbgemm_avx2", d["y"], d["acc"]), ("exact", d["exact"], d["acc_exact"])):
        acc = linear_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation=mode)
        np.testing.assert_array_equal(acc, acc_want)
        got = qlinear(d["x"], x_qp, d["w"], w_qp, d["bias"], y_qp, mode="fbgemm", activation=act, accumulation=mode)
        _record(name, mode, got, want)
    COUNTS[(name, "exact vs library")] = (int(np.sum(d["exact"] != d["y"])), d["y"].size)


def _torch_conv_kw(d):
    (ph, pw) = (int(v) for v in d["padding"])
    return dict(
        stride=tuple(int(v) for v in d["stride"]),
        padding=(ph, ph, pw, pw),
        dilation=tuple(int(v) for v in d["dilation"]),
        groups=int(d["groups"]),
    )


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("torch_conv")])
def test_torch_conv2d(name):
    d = _load(name)
    x_qp, y_qp = _u8(d["x_scale"], d["x_zero_point"]), _u8(d["y_scale"], d["y_zero_point"])
    w_qp = _w_qp(d["w_scale"], d["w_zero_point"])
    kw = _torch_conv_kw(d)
    act = "relu" if d["relu"] else None
    for mode, want, acc_want in (("fbgemm_avx2", d["y"], d["acc"]), ("exact", d["exact"], d["acc_exact"])):
        for backend in ("numba", "numpy"):
            acc = conv2d_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation=mode, backend=backend, **kw)
            np.testing.assert_array_equal(acc, acc_want, err_msg=f"{name} {mode} {backend}")
        got = qconv2d(
            d["x"], x_qp, d["w"], w_qp, d["bias"], y_qp, mode="fbgemm", activation=act, accumulation=mode, **kw
        )
        _record(name, mode, got, want)
    COUNTS[(name, "exact vs library")] = (int(np.sum(d["exact"] != d["y"])), d["y"].size)


def test_fbgemm_vnni_saturates_only_the_depthwise_recording():
    """On a VNNI CPU fbgemm keeps pair saturation in its depthwise kernel only."""
    for name in [f for f in FILES if f.startswith("torch_conv")]:
        d = _load(name)
        o, cg, kh, kw_ = d["w"].shape
        k = _torch_conv_kw(d)
        geo = (cg * k["groups"], o, k["groups"], (kh, kw_), k["stride"], k["padding"], k["dilation"])
        want = "int16_pairs" if str(d["fbgemm_path"]) == "depthwise" else "exact"
        assert resolve("fbgemm_vnni", "conv2d", conv=geo) == want, name
        assert resolve("fbgemm_avx2", "conv2d", conv=geo) == "int16_pairs", name


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("ort_matmulinteger")])
def test_ort_matmulinteger(name):
    d = _load(name)
    za = int(d.get("a_zero_point", 0))
    zb = d.get("b_zero_point", np.int8(0))
    a_qp = _u8(1.0, za)
    b_qp = _w_qp(np.ones(np.shape(zb) or (), np.float32), zb)
    w = np.ascontiguousarray(d["B"].T)
    for mode, want in (("mlas_avx2", d["y"]), ("int16_pairs", d["y"]), ("exact", d["exact"])):
        got = linear_accumulate(d["A"], a_qp, w, b_qp, accumulation=mode)
        _record(name, mode, got, want)
    COUNTS[(name, "exact vs library")] = (int(np.sum(d["exact"] != d["y"])), d["y"].size)


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("ort_qlinearmatmul")])
def test_ort_qlinearmatmul(name):
    d = _load(name)
    a_qp, y_qp = _u8(d["a_scale"], d["a_zero_point"]), _u8(d["y_scale"], d["y_zero_point"])
    b_qp = _w_qp(d["b_scale"], d["b_zero_point"])
    w = np.ascontiguousarray(d["b"].T)
    for mode, want in (("mlas_avx2", d["y"]), ("exact", d["exact"])):
        got = qlinear(d["a"], a_qp, w, b_qp, None, y_qp, mode="fp32", accumulation=mode)
        _record(name, mode, got, want)
    COUNTS[(name, "exact vs library")] = (int(np.sum(d["exact"] != d["y"])), d["y"].size)


def _onnx_conv_kw(d):
    t, l, b, r = (int(v) for v in d["pads"])  # ONNX: h_begin, w_begin, h_end, w_end
    return dict(
        stride=tuple(int(v) for v in d["strides"]),
        padding=(t, b, l, r),
        dilation=tuple(int(v) for v in d["dilations"]),
        groups=int(d["group"]),
    )


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("ort_qlinearconv")])
def test_ort_qlinearconv(name):
    d = _load(name)
    x_qp, y_qp = _u8(d["x_scale"], d["x_zero_point"]), _u8(d["y_scale"], d["y_zero_point"])
    w_qp = _w_qp(d["w_scale"], d["w_zero_point"])
    kw = _onnx_conv_kw(d)
    for mode, want, acc_want in (("mlas_avx2", d["y"], d["acc"]), ("exact", d["exact"], d["acc_exact"])):
        np.testing.assert_array_equal(conv2d_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation=mode, **kw), acc_want)
        got = qconv2d(d["x"], x_qp, d["w"], w_qp, d["B"], y_qp, mode="fp32", accumulation=mode, **kw)
        _record(name, mode, got, want)
    if "depthwise" in str(d["mlas_path"]):  # MLAS's depthwise kernels are exact; pairs would not be
        got = conv2d_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation="int16_pairs", **kw)
        assert np.sum(got != d["acc"]) > 0
    COUNTS[(name, "exact vs library")] = (int(np.sum(d["exact"] != d["y"])), d["y"].size)


def test_ort_convinteger_is_exact():
    d = _load("ort_convinteger_3x3_c5o6.npz")
    x_qp = _u8(1.0, d["x_zero_point"])
    w_qp = _w_qp(np.float32(1.0), d["w_zero_point"])
    got = conv2d_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation="exact", **_onnx_conv_kw(d))
    _record("ort_convinteger_3x3_c5o6.npz", "exact", got, d["y"])
    pairs = conv2d_accumulate(d["x"], x_qp, d["w"], w_qp, accumulation="int16_pairs", **_onnx_conv_kw(d))
    assert np.sum(pairs != d["y"]) > 0  # no pair model: ConvInteger does not saturate


@pytest.mark.parametrize("name", [f for f in FILES if f.startswith("torch_add")])
def test_torch_add(name):
    d = _load(name)

    def args(a, b):
        return (
            a,
            d["a_scale"],
            int(d["a_zero_point"]),
            b,
            d["b_scale"],
            int(d["b_zero_point"]),
            d["y_scale"],
            int(d["y_zero_point"]),
        )

    width = torch_add_vector_width("AVX2")
    zy = int(d["y_zero_point"])
    if "allpairs" in name:
        a, b = d["a"], d["b"]
        for relu in (False, True):
            sfx = "_relu" if relu else ""
            vec = add(*args(a, b), qmin=0, qmax=255, mode="torch", act_min=zy if relu else None, vector_width=width)
            _record(name, "torch vector" + sfx, vec, d[f"y{sfx}_vector"])
            sc = np.concatenate(
                [
                    add(
                        *args(a[i : i + 63], b[i : i + 63]),
                        qmin=0,
                        qmax=255,
                        mode="torch",
                        act_min=zy if relu else None,
                        vector_width=width,
                    )
                    for i in range(0, a.size, 63)
                ]
            )
            _record(name, "torch scalar" + sfx, sc, d[f"y{sfx}_scalar"])
        return
    assert int(d["vector_part"]) == d["a"].size - d["a"].size % width
    got = add(
        *args(d["a"], d["b"]), qmin=0, qmax=255, mode="torch", act_min=zy if d["relu"] else None, vector_width=width
    )
    _record(name, "torch", got, d["y"])


def test_report_counts():
    # runs last in this module: print what each mode matched (pytest -s)
    for (name, mode), (bad, n) in sorted(COUNTS.items()):
        print(f"{name:45s} {mode:18s} {bad:6d} of {n} differ")
    assert any(mode == "exact vs library" and bad > 0 for (_, mode), (bad, _) in COUNTS.items())
