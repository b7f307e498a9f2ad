"""Tests of npquant.app.plot: each figure holds what it claims (labels, grid lines, heatmap
data, line data), the PNG files are valid and of the stated size, matplotlib is never
imported by ``import npquant``, and a missing matplotlib is a clear error."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from npquant import (  # noqa: E402
    REQUANT_MODES,
    QuantSpec,
    dequantize,
    fake_quantize,
    fit_qparams,
    kmeans_quantize,
    quantization_error,
    requantize,
)
from npquant.app import plot as P  # noqa: E402


def _by_gid(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, (gid, [a.get_gid() for a in ax.get_children()])
    return found[0]


def _data_axes(fig):
    """The axes of a figure that are not colour bars."""
    return [a for a in fig.axes if a.get_label() != "<colorbar>"]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 24)).astype(np.float32) * 0.1
    w[0] *= 10  # an outlier channel
    return w


# ---------------------------------------------------------------------------- imports


def test_import_npquant_does_not_import_matplotlib():
    code = (
        "import sys, npquant, npquant.app.plot, npquant.models.cases, npquant.app.cli; "
        "print(any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ModuleNotFoundError, match=r"npquant\[plot\]"):
        P.plot_histogram(np.ones(3, np.float32))
    with pytest.raises(ModuleNotFoundError, match=r"npquant\[plot\]"):
        P.write_demo_plots(tmp_path / "figs")
    assert not (tmp_path / "figs").exists()
    from npquant.app.cli import main

    assert main(["demo", "--plots", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npquant demo: error: ") and "install npquant[plot]" in err
    assert not (tmp_path / "figs").exists()


# -------------------------------------------------------------------------- histogram


@pytest.mark.parametrize(
    "spec, n_levels",
    [
        (QuantSpec(bits=3), 8),
        (QuantSpec(bits=4, symmetric=True, narrow_range=True), 15),
        (QuantSpec(bits=2, signed=False), 4),
    ],
)
def test_histogram_grid_clip_range_and_codebook(weights, spec, n_levels):
    qp = fit_qparams(weights, spec)
    km = kmeans_quantize(weights, 2)
    fig = P.plot_histogram(weights, qp, codebook=km, bins=30, title="w")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("value", "count", "w")
    # one vertical line per level, at the dequantized codes
    grid = _by_gid(ax, "quantization_grid")
    segs = grid.get_segments()
    assert len(segs) == n_levels == spec.qmax - spec.qmin + 1
    xs = np.array([s[0, 0] for s in segs])
    np.testing.assert_array_equal(xs, dequantize(np.arange(spec.qmin, spec.qmax + 1).astype(spec.dtype), qp))
    np.testing.assert_array_equal(xs, P.grid_levels(qp))
    # the clipping range: S (qmin - Z) and S (qmax - Z)
    s, z = np.float32(qp.scale), int(qp.zero_point)
    assert _by_gid(ax, "clip_min").get_xdata()[0] == np.float32(spec.qmin - z) * s
    assert _by_gid(ax, "clip_max").get_xdata()[0] == np.float32(spec.qmax - z) * s
    # the k-means codebook
    cb = _by_gid(ax, "codebook").get_segments()
    np.testing.assert_array_equal([c[0, 0] for c in cb], km.codebook)
    # the histogram counts every value once
    counts, edges, _ = _by_gid(ax, "histogram").get_data()
    assert counts.sum() == weights.size and len(counts) == 30
    assert edges[0] <= min(weights.min(), xs[0]) and edges[-1] >= max(weights.max(), xs[-1])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"({n_levels} levels)" in labels[1] and "k-means codebook (4 centroids)" in labels[-1]


def test_histogram_into_given_axes_and_log_scale(weights):
    fig = Figure()
    ax = fig.add_subplot()
    out = P.plot_histogram(weights, log=True, ax=ax)
    assert out is fig and ax.get_yscale() == "log"
    gids = {a.get_gid() for a in ax.get_children()}
    assert "histogram" in gids and "quantization_grid" not in gids and "codebook" not in gids


def test_histogram_errors(weights):
    with pytest.raises(ValueError, match="qparams must be per-tensor"):
        P.plot_histogram(weights, fit_qparams(weights, QuantSpec(axis=0)))
    with pytest.raises(TypeError, match="qparams"):
        P.plot_histogram(weights, "minmax")
    with pytest.raises(TypeError, match="ax"):
        P.plot_histogram(weights, ax="axes")
    with pytest.raises(ValueError, match="codebook"):
        P.plot_histogram(weights, codebook=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="bins"):
        P.plot_histogram(weights, bins=0)
    with pytest.raises(ValueError, match="x contains NaN"):
        P.plot_histogram(np.array([1.0, np.nan]))


# --------------------------------------------------------------------- error heatmaps


def test_error_heatmaps_show_the_errors(weights):
    options = P.error_options(bits=3, group_size=8)
    assert list(options) == [
        "per-tensor symmetric",
        "per-tensor asymmetric",
        "per-channel symmetric",
        "per-group(8) symmetric",
    ]
    fig = P.plot_error_heatmaps(weights, options, title="fc")
    axes = _data_axes(fig)
    assert len(axes) == 4 and fig._suptitle.get_text() == "fc"
    vmax = 0.0
    for ax, (label, spec) in zip(axes, options.items()):
        fq = fake_quantize(weights, fit_qparams(weights, spec))
        err = np.abs(weights - fq)
        (im,) = ax.images
        np.testing.assert_array_equal(im.get_array(), err)
        q = quantization_error(weights, fq)
        assert ax.get_title() == f"{label}\nMSE {q.mse:.3g}, SQNR {q.sqnr_db:.1f} dB"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("input index", "output channel")
        vmax = max(vmax, float(err.max()))
    # one colour scale for all, and one colour bar
    assert all(ax.images[0].get_clim() == (0.0, vmax) for ax in axes)
    (cbar,) = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert cbar.get_ylabel() == "|w - fq(w)|"
    # per-channel beats per-tensor on the rows other than the outlier channel
    e = {lab: ax.images[0].get_array()[1:] for lab, ax in zip(options, axes)}
    assert np.mean(e["per-channel symmetric"] ** 2) < np.mean(e["per-tensor symmetric"] ** 2) / 10


def test_error_heatmaps_of_a_conv_kernel_and_errors():
    w = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
    opts = {"per-channel": QuantSpec(bits=4, symmetric=True, axis=0)}
    fig = P.plot_error_heatmaps(w, opts)
    (ax,) = _data_axes(fig)
    err = np.abs(w - fake_quantize(w, fit_qparams(w, opts["per-channel"])))
    np.testing.assert_array_equal(ax.images[0].get_array(), err.reshape(4, 18))
    with pytest.raises(ValueError, match="w must have 2 or more"):
        P.plot_error_heatmaps(np.ones(5, np.float32))
    with pytest.raises(TypeError, match="options"):
        P.plot_error_heatmaps(w, {"a": "per-tensor"})
    with pytest.raises(TypeError, match="options"):
        P.plot_error_heatmaps(w, {})


# ----------------------------------------------------------------------- SQNR vs bits


def test_sqnr_lines_hold_the_sqnr(weights):
    options = {"per-tensor": QuantSpec(symmetric=True), "per-channel": QuantSpec(symmetric=True, axis=0)}
    bits = [2, 4, 8]
    fig = P.plot_sqnr_vs_bits(weights, options, bits)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("bits", "SQNR (dB)")
    for label, spec in options.items():
        line = _by_gid(ax, f"sqnr:{label}")
        expect = [
            quantization_error(weights, fake_quantize(weights, fit_qparams(weights, spec.replace(bits=b)))).sqnr_db
            for b in bits
        ]
        np.testing.assert_array_equal(line.get_xdata(), bits)
        np.testing.assert_array_equal(line.get_ydata(), expect)
        assert line.get_label() == label
    np.testing.assert_array_equal(
        P.sqnr_vs_bits(weights, options, bits)["per-channel"], _by_gid(ax, "sqnr:per-channel").get_ydata()
    )
    # about 6 dB per bit
    y = _by_gid(ax, "sqnr:per-tensor").get_ydata()
    assert 4 * 5 < y[2] - y[1] < 4 * 7


def test_sqnr_with_accuracy_panel(weights):
    acc = {"model A": [0.5, 0.9, 0.97], "model B": [0.1, 0.8, 0.96]}
    fig = P.plot_sqnr_vs_bits(weights, None, (2, 4, 8), accuracy=acc, float_accuracy=0.975, title="t")
    ax_s, ax_a = fig.axes
    assert len([a for a in ax_s.get_children() if str(a.get_gid()).startswith("sqnr:")]) == 4
    assert ax_a.get_ylabel() == "accuracy (%)"
    for label, vals in acc.items():
        np.testing.assert_array_equal(_by_gid(ax_a, f"accuracy:{label}").get_ydata(), 100 * np.array(vals))
    np.testing.assert_array_equal(_by_gid(ax_a, "float_accuracy").get_ydata(), [97.5, 97.5])


def test_sqnr_errors(weights):
    with pytest.raises(ValueError, match=r"accuracy\['a'\] has 1 values; bits has 2"):
        P.plot_sqnr_vs_bits(weights, bits=(4, 8), accuracy={"a": [0.9]})
    with pytest.raises(ValueError, match=r"accuracy\['a'\] must be in \[0, 1\]"):
        P.plot_sqnr_vs_bits(weights, bits=(4, 8), accuracy={"a": [90, 97]})
    with pytest.raises(ValueError, match="ax must be None"):
        P.plot_sqnr_vs_bits(weights, bits=(4, 8), accuracy={"a": [0.9, 0.9]}, ax=Figure().add_subplot())
    with pytest.raises(ValueError, match="float_accuracy needs accuracy"):
        P.plot_sqnr_vs_bits(weights, float_accuracy=0.9)
    with pytest.raises(ValueError, match="bits"):
        P.plot_sqnr_vs_bits(weights, bits=(1, 8))
    with pytest.raises(ValueError, match="bits is empty"):
        P.sqnr_vs_bits(weights, bits=())


# ----------------------------------------------------------------------------- tie map


def test_tie_map_marks_where_the_modes_disagree():
    mults = (0.5, 1 / 3, 0.0123)
    t = P.tie_map(mults, -40, 40)
    acc = np.arange(-40, 41)
    assert t.modes == REQUANT_MODES
    np.testing.assert_array_equal(t.acc, acc)
    for i, m in enumerate(mults):
        codes = np.stack([requantize(acc, m, 0, -(2**31), 2**31 - 1, mode=mode) for mode in REQUANT_MODES])
        np.testing.assert_array_equal(t.codes[:, i], codes)
        differ = np.any(codes != codes[0], axis=0)
        np.testing.assert_array_equal(t.pattern[i] > 0, differ)
        for j in np.flatnonzero(differ):  # the pattern names the codes, relative to the lowest
            assert t.patterns[t.pattern[i, j] - 1] == tuple(codes[:, j] - codes[:, j].min())
    # M = 0.5: modes disagree only at exact ties (odd accumulators), on half of them
    assert np.all(t.acc[t.pattern[0] > 0] % 2 == 1) and (t.pattern[0] > 0).sum() == 20
    # M = 1/3 has no exact tie, yet TFLite's double rounding differs from the others
    assert (t.pattern[1] > 0).sum() > 0
    assert "tflite < tflite_single = fp32 = onnx" in t.labels
    assert not np.any(t.pattern[2])
    fig = P.plot_tie_map(mults, -40, 40)
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), t.pattern)
    assert [x.get_text() for x in ax.get_yticklabels()] == [
        f"M={m:.6g} ({int((t.pattern[i] > 0).sum())})" for i, m in enumerate(mults)
    ]
    assert [x.get_text() for x in ax.get_legend().get_texts()] == list(t.labels)
    assert ax.get_xlabel() == "accumulator"


def test_tie_map_saturation_and_errors():
    t = P.tie_map([0.5], 300, 400, qmin=-128, qmax=127)  # every code saturates: all agree
    assert not np.any(t.pattern) and t.patterns == () and np.all(t.codes == 127)
    with pytest.raises(ValueError, match="multipliers must be positive"):
        P.tie_map([0.5, -1.0])
    with pytest.raises(ValueError, match="acc_max"):
        P.tie_map(acc_min=0, acc_max=1 << 21)
    with pytest.raises(ValueError, match="modes"):
        P.tie_map(modes=("tflite", "tensorrt"))
    with pytest.raises(ValueError, match="at least two"):
        P.tie_map(modes=("tflite",))


# ------------------------------------------------------------------ compression trade-off


def test_compression_tradeoff_points():
    points = [(3.7, 0.9778, "k-means 8 bits"), (7.5, 0.9756, "k-means 4 bits"), (14.2, 0.9644, "k-means 2 bits")]
    fig = P.plot_compression_tradeoff(points, float_accuracy=0.9778, title="lenet")
    (ax,) = fig.axes
    off = _by_gid(ax, "tradeoff").get_offsets()
    np.testing.assert_allclose(off, [[3.7, 97.78], [7.5, 97.56], [14.2, 96.44]], rtol=1e-12)
    assert [t.get_text() for t in ax.texts] == [p[2] for p in points]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "accuracy (%)"
    assert ax.get_xlabel().startswith("compression ratio")
    np.testing.assert_array_equal(_by_gid(ax, "float_accuracy").get_ydata(), [97.78, 97.78])


def test_compression_tradeoff_errors():
    with pytest.raises(ValueError, match="points is empty"):
        P.plot_compression_tradeoff([])
    with pytest.raises(ValueError, match=r"points\[0\] ratio"):
        P.plot_compression_tradeoff([(0, 0.9, "a")])
    with pytest.raises(ValueError, match=r"points\[1\] accuracy must be in \[0, 1\]"):
        P.plot_compression_tradeoff([(2, 0.9, "a"), (4, 97.0, "b")])
    with pytest.raises(TypeError, match=r"points\[0\] must be a \(ratio, accuracy, label\)"):
        P.plot_compression_tradeoff([(2, 0.9)])
    with pytest.raises(TypeError, match="label"):
        P.plot_compression_tradeoff([(2, 0.9, 3)])


# ------------------------------------------------------------------------------- files


def test_save_figure_writes_a_png_of_figsize_times_dpi(tmp_path, weights):
    fig = P.plot_histogram(weights)
    path = P.save_figure(fig, tmp_path / "h.png", dpi=50)
    assert path == tmp_path / "h.png"
    assert _png_size(path) == (350, 200)  # 7 x 4 inches
    img = matplotlib.image.imread(path)
    assert img.shape == (200, 350, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]  # no temporary left
    with pytest.raises(TypeError, match="fig"):
        P.save_figure(Figure().add_subplot(), tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        P.save_figure(fig, tmp_path / "missing" / "x.png")


def test_write_demo_plots_subset(tmp_path):
    names = ["requant_tie_map.png", "case_fc1_error_heatmaps.png"]
    out = tmp_path / "a" / "b"
    msgs = []
    paths = P.write_demo_plots(out, names=reversed(names), dpi=40, progress=msgs.append)
    assert paths == [out / n for n in names]  # in DEMO_PLOTS' order
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for path in paths:  # figure size (inches) x dpi
        size = P._DEMO_BUILDERS[path.name](P._DemoData(None)).get_size_inches() * 40
        assert _png_size(path) == tuple(int(round(v)) for v in size)
        assert matplotlib.image.imread(path).ndim == 3
    assert msgs[0] == "plot 1/2: requant_tie_map.png ..." and msgs[-1].startswith("wrote 2 figures")


def test_write_demo_plots_errors(tmp_path):
    with pytest.raises(ValueError, match="names must be a non-empty subset"):
        P.write_demo_plots(tmp_path, names=["nope.png"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        P.write_demo_plots(tmp_path / "file", names=["requant_tie_map.png"])
    with pytest.raises(FileNotFoundError, match="lenet_300_100.npz"):
        P.write_demo_plots(tmp_path / "o", names=["lenet_fc1_histogram.png"], models_dir=tmp_path)
    assert not (tmp_path / "o").exists()


def test_cli_demo_plots(tmp_path, monkeypatch, capsys):
    from npquant.app.cli import main

    real = P.write_demo_plots
    calls = []

    def one_figure(directory, **kw):  # the CLI's path, with one cheap figure
        calls.append(kw)
        return real(directory, names=["requant_tie_map.png"], **kw)

    monkeypatch.setattr(P, "write_demo_plots", one_figure)
    assert main(["demo", "--plots", str(tmp_path / "figs")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "figs" / "requant_tie_map.png")]
    assert "plot 1/1" in err
    assert calls[0]["models_dir"] is None
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--plots", str(tmp_path), "--bits", "4"])
    assert exc.value.code == 2
    assert "--plots takes only --models, not --bits" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_plots_writes_every_figure(tmp_path, capsys):
    from npquant.app.cli import main

    assert main(["demo", "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(tmp_path / n) for n in P.DEMO_PLOTS]
    for name in P.DEMO_PLOTS:
        w, h = _png_size(tmp_path / name)
        assert 400 <= w <= 2000 and 300 <= h <= 1000
        assert matplotlib.image.imread(tmp_path / name).shape == (h, w, 4)
