"""Model and input files for the commands that run models (``npquant run``, ``npquant vectors``).

A model file is told by its content: a graph file (``__graph__``), a PyTorch PTQ
reference (``__arch__`` and ``<layer>.weight_int`` arrays) or a reference model
(``__arch__`` and float weights). Every file goes through :mod:`npquant._fileio`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from .._fileio import FileFormatError, _read_npy_header, check_path, parse_npz, read_bytes
from ..models.io import sniff_format

#: What each kind of model file is, for messages.
KIND_NAMES = {"graph": "a graph file", "ptq": "a PyTorch PTQ reference", "reference": "a reference model"}


@dataclass
class ModelFile:
    """A loaded model file: ``kind`` (``"graph"``, ``"ptq"``, ``"reference"``), ``model``
    (a Graph, an IntegerModel or an nn.Sequential), a one-line ``description`` and the
    file's ``test_inputs`` (batch first: float images of a reference model, input codes of
    a PTQ reference; None for a graph)."""

    path: str
    kind: str
    model: object
    description: str
    test_inputs: np.ndarray | None


def sniff_model_file(path, option: str = "MODEL") -> tuple:
    """``(path, kind, arrays)`` of a model file npquant runs; anything else is a
    :class:`FileFormatError` saying what the file is."""
    p = check_path(path, option)
    data = read_bytes(p)
    fmt = sniff_format(data)
    runs = "npquant runs reference models, PyTorch PTQ references (*_ptq.npz) and graph files"
    if fmt != "npz":
        what = {
            "npqz": "a Deep Compression file (weights without an architecture)",
            "safetensors": "a .safetensors state dict (weights without an architecture)",
        }.get(fmt, f"not an .npz file (it starts with {data[:8]!r})")
        raise FileFormatError(p, f"{what}: {runs}")
    arrays = parse_npz(data, p)
    if "__graph__" in arrays:
        return p, "graph", arrays
    if "__arch__" in arrays:
        ptq = any(k.endswith(".weight_int") for k in arrays)
        return p, "ptq" if ptq else "reference", arrays
    what = (
        "a quantized checkpoint (weights without an architecture)"
        if "__format__" in arrays
        else "a state dict (weights without an architecture)"
    )
    raise FileFormatError(p, f"{what}: {runs}")


def calibration_images(path: str, test_inputs) -> np.ndarray:
    """The calibration images of the fixed digits split (``digits_split.npz`` beside the
    model file, else the bundled one), shaped like one sample of ``test_inputs``."""
    from pathlib import Path

    from sklearn.datasets import load_digits

    from ..models.io import load_state_dict
    from .demo import default_models_dir

    beside = Path(os.path.dirname(os.path.abspath(path))) / "digits_split.npz"
    split = beside if beside.is_file() else default_models_dir() / "digits_split.npz"
    index = load_state_dict(split)["calibration_index"]
    x = (load_digits().data / 16).astype(np.float32)[index]
    if test_inputs is None or int(np.prod(test_inputs.shape[1:])) != x.shape[1]:
        shape = None if test_inputs is None else tuple(test_inputs.shape[1:])
        raise ValueError(
            f"{path}: the calibration split holds 8x8 digits images (64 values), but this model's test "
            f"inputs have shape {shape}: quantize it in Python with npquant.models.convert.quantize_model and "
            "your own calibration data"
        )
    return x.reshape((-1,) + tuple(test_inputs.shape[1:]))


def load_model_file(
    path, kind: str, arrays: dict, *, mode: str | None = None, accumulation: str | None = None
) -> ModelFile:
    """The model of a file :func:`sniff_model_file` told: a graph as it is; a PTQ reference
    through :func:`~npquant.models.convert.from_pytorch_ptq`; a reference model in float, or
    with ``mode`` quantized by :func:`~npquant.models.convert.quantize_model` (per-channel int8
    weights, uint8 activations, min-max ranges on the calibration split)."""
    from ..models.convert import from_pytorch_ptq, quantize_model

    acc = accumulation or "exact"
    if kind == "graph":
        from ..models.graph import graph_from_arrays

        g = graph_from_arrays(arrays, path)
        return ModelFile(path, kind, g, f"graph {g.name!r} ({g.kind}, {len(g.nodes)} nodes)", None)
    if kind == "ptq":
        q = from_pytorch_ptq(path, accumulation=acc)  # re-read: its messages name the file
        return ModelFile(
            path,
            kind,
            q,
            f"PyTorch PTQ reference: integer model, mode fp32 with fbgemm's float bias, accumulation {acc}",
            arrays.get("input_int"),
        )
    from ..models.io import _reference
    from ..models.nn import build_model

    ref = _reference(arrays, path)
    try:
        model = build_model(ref.arch, ref.state)
    except (KeyError, IndexError, AttributeError) as e:
        raise FileFormatError(path, f"not a valid reference model ({type(e).__name__}: {e})") from None
    x = ref.arrays.get("test_inputs")
    if mode is None:
        return ModelFile(path, kind, model, "reference model, float", x)
    calib = calibration_images(path, x)
    q = quantize_model(model, calib, mode=mode, accumulation=acc)
    return ModelFile(
        path,
        kind,
        q,
        f"reference model quantized by quantize_model: mode {mode}, accumulation {acc}, "
        f"per-channel int8 weights, uint8 activations, min-max ranges of "
        f"{len(calib)} calibration images",
        x,
    )


def _read_npy(data: bytes, where) -> np.ndarray:
    f = io.BytesIO(data)
    dtype, shape, fortran, hlen = _read_npy_header(f, "array", where)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=object))
    if hlen + nbytes != len(data):
        raise FileFormatError(
            where,
            f"the .npy header declares {dtype.str} of shape {shape} ({nbytes} bytes), but "
            f"the file holds {len(data) - hlen} bytes of data",
        )
    arr = np.frombuffer(data, dtype, offset=hlen, count=nbytes // dtype.itemsize if dtype.itemsize else 0)
    return arr.reshape(shape, order="F" if fortran else "C")


def read_input_file(path, option: str = "--input"):
    """The array of an ``.npy`` file, or ``{name: array}`` of an ``.npz`` (one array:
    that array), read through :mod:`npquant._fileio`."""
    p = check_path(path, option)
    data = read_bytes(p)
    if data[:6] == b"\x93NUMPY":
        arr = _read_npy(data, p)
    elif sniff_format(data) == "npz":
        arrays = parse_npz(data, p)
        if not arrays:
            raise FileFormatError(p, "the .npz holds no array")
        arr = next(iter(arrays.values())) if len(arrays) == 1 else arrays
    else:
        raise FileFormatError(p, f"expected an .npy or .npz file, it starts with {data[:8]!r}")
    for a in arr.values() if isinstance(arr, dict) else [arr]:
        if a.dtype.kind not in "iuf" or a.ndim == 0 or a.size == 0:
            raise ValueError(
                f"{option} {p}: expected a non-empty array of numbers with the batch first, got "
                f"{a.dtype} of shape {a.shape}"
            )
    return arr


def select_sample(x, index: int, option: str = "--index"):
    """Sample ``index`` of ``x`` (each array of a dict), keeping the batch axis."""
    if isinstance(x, dict):
        return {k: select_sample(v, index, option) for k, v in x.items()}
    if index >= x.shape[0]:
        raise ValueError(f"{option} {index} is out of range: the input has {x.shape[0]} samples")
    return np.ascontiguousarray(x[index : index + 1])


def _graph_input_qparams(g, t: str):
    if t in g.input_qparams:
        return g.input_qparams[t]
    readers = [n for n in g.nodes if t in n.inputs and n.op == "quantize"]
    return g.qparams[readers[0].outputs[0]] if readers else None


def _graph_input_shape(g, t: str):
    """``(1, in_features)`` when input ``t`` reaches a qlinear through quantize nodes only."""
    from ..qnn.layers import QLinear

    frontier = {t}
    for n in g.nodes:
        if n.inputs and n.inputs[0] in frontier:
            if n.op == "quantize":
                frontier.add(n.outputs[0])
            elif isinstance(g.layer(n.name), QLinear):
                return (1, g.layer(n.name).in_features)
    return None


def random_input(mf: ModelFile, seed: int, shape=None):
    """Seeded uniform random integer codes of the model's input qparams: ``shape`` (batch
    first), or one sample shaped as the file's test inputs, or for a graph, inferred from
    a first linear layer."""
    from ..models.convert import IntegerModel

    rng = np.random.default_rng(seed)

    def codes(qp, shp):
        return rng.integers(qp.spec.qmin, qp.spec.qmax + 1, size=shp, endpoint=False).astype(qp.spec.dtype)

    model = mf.model
    if isinstance(model, IntegerModel):
        if shape is None:
            if mf.test_inputs is None:
                raise ValueError("pass --shape for a random input (the file has no test inputs to copy the shape of)")
            shape = (1,) + tuple(mf.test_inputs.shape[1:])
        return codes(model.input_qp, tuple(shape))
    if mf.kind != "graph":
        raise ValueError("a random input needs an integer model")
    out = {}
    for t in model.inputs:
        qp = _graph_input_qparams(model, t)
        if qp is None:
            raise ValueError(f"graph input {t!r} is float and no quantize node reads it: pass --input")
        shp = tuple(shape) if shape is not None else _graph_input_shape(model, t)
        if shp is None:
            raise ValueError(f"cannot tell the shape of graph input {t!r}: pass --shape N,C,H,W (or --input)")
        out[t] = codes(qp, shp)
    return out[model.inputs[0]] if len(out) == 1 else out


def run_outputs(mf: ModelFile, x) -> list:
    """``[(name, array, qparams or None)]`` of the model's outputs on ``x``."""
    from ..models.convert import IntegerModel
    from ..vectors import _codes_in, _graph_feeds

    model = mf.model
    if mf.kind == "graph":
        feeds = _graph_feeds(model, x)[0] if model.kind == "integer" else x
        out = model.run(feeds)
        return [(t, out[t], model.qparams.get(t)) for t in model.outputs]
    if isinstance(x, dict):
        raise ValueError(f"the input file holds several arrays ({', '.join(x)}); this model takes one")
    if isinstance(model, IntegerModel):
        a = np.asarray(x)
        codes = model.quantize_input(a) if a.dtype.kind == "f" else _codes_in(a, model.input_qp, "the input")
        return [("output", model.run(codes), model.output_qp)]
    return [("output", np.asarray(model(x)), None)]
