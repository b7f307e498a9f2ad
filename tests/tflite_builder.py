"""A small writer of int8 ``.tflite`` flatbuffers for the tests of :mod:`npquant.importers.tflite`.

TensorFlow's converter is not installed here, so the tests build the models themselves
with the ``flatbuffers`` builder and the generated functions of the ``tflite`` package
(the schema's Python bindings), following the converter's conventions: int8 activations
with zero points, int8 symmetric (narrow-range) weights, per-channel along the output
channels (axis 0 of OHWI conv and (out, in) fully connected weights, axis 3 of 1HWO
depthwise weights), int32 biases at scale ``S_x S_w`` with zero point 0, buffer 0 empty.

:class:`TFLiteBuilder` collects tensors and operators, :meth:`TFLiteBuilder.build` returns
the model's bytes. :func:`act_qparams`, :func:`weights` and :func:`bias` make the
quantized constants as the converter would.
"""

from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
import tflite

_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int8": 9, "int16": 7}
_ACT = {None: 0, "none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}
_PAD = {"same": 0, "valid": 1}


class TFLiteBuilder:
    """Tensors and operators of one subgraph; :meth:`build` writes the flatbuffer."""

    def __init__(self):
        self.tensors = []  # dicts
        self.buffers = [b""]
        self.ops = []  # (opcode index, inputs, outputs, options type name, fields)
        self.opcodes = []  # builtin codes

    def tensor(self, name, shape, dtype="int8", *, scale=None, zero_point=None, axis=0, data=None) -> int:
        """Add a tensor (a constant when ``data`` is given); returns its index."""
        buf = 0
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data).astype(dtype).reshape(shape))
            self.buffers.append(arr.tobytes())
            buf = len(self.buffers) - 1
        q = None
        if scale is not None:
            q = (
                np.atleast_1d(np.asarray(scale, np.float32)),
                np.atleast_1d(np.asarray(0 if zero_point is None else zero_point, np.int64)),
                int(axis),
            )
        self.tensors.append(dict(name=name, shape=[int(d) for d in shape], type=_TYPES[dtype], buffer=buf, q=q))
        return len(self.tensors) - 1

    def op(self, name, inputs, outputs, options=None, **fields) -> None:
        """Add operator ``name`` (a ``tflite.BuiltinOperator`` name) with builtin
        ``options`` (an options table name such as ``"Conv2DOptions"``) and its fields
        (schema names in CamelCase: ``Padding=``, ``StrideW=``, ...). ``activation=`` and
        ``padding=`` accept names."""
        code = getattr(tflite.BuiltinOperator, name)
        if code not in self.opcodes:
            self.opcodes.append(code)
        if "activation" in fields:
            fields["FusedActivationFunction"] = _ACT[fields.pop("activation")]
        if isinstance(fields.get("Padding"), str):
            fields["Padding"] = _PAD[fields["Padding"]]
        self.ops.append((self.opcodes.index(code), list(inputs), list(outputs), options, fields))

    # -- writing

    @staticmethod
    def _vector(b, start, values, prepend):
        start(b, len(values))
        for v in reversed(values):
            prepend(v)
        return b.EndVector()

    def _int_vector(self, b, values):
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    def build(self, inputs, outputs, *, description="npquant test model") -> bytes:
        b = flatbuffers.Builder(1024)
        # buffers: data vectors 16-byte aligned
        buf_offs = []
        for data in self.buffers:
            d = None
            if data:
                b.StartVector(1, len(data), 16)
                b.head = b.head - len(data)
                b.Bytes[b.head : b.head + len(data)] = data
                b.vectorNumElems = len(data)
                d = b.EndVector()
            tflite.BufferStart(b)
            if d is not None:
                tflite.BufferAddData(b, d)
            buf_offs.append(tflite.BufferEnd(b))
        tensor_offs = []
        for t in self.tensors:
            name = b.CreateString(t["name"])
            shape = self._int_vector(b, t["shape"])
            q = None
            if t["q"] is not None:
                scale = b.CreateNumpyVector(t["q"][0])
                zp = b.CreateNumpyVector(t["q"][1])
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scale)
                tflite.QuantizationParametersAddZeroPoint(b, zp)
                tflite.QuantizationParametersAddQuantizedDimension(b, t["q"][2])
                q = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            tflite.TensorAddType(b, t["type"])
            tflite.TensorAddBuffer(b, t["buffer"])
            tflite.TensorAddName(b, name)
            if q is not None:
                tflite.TensorAddQuantization(b, q)
            tensor_offs.append(tflite.TensorEnd(b))
        op_offs = []
        for idx, ins, outs, opt_name, fields in self.ops:
            opt = None
            if opt_name is not None:
                mod = importlib.import_module(f"tflite.{opt_name}")
                vecs = {k: self._int_vector(b, v) for k, v in fields.items() if isinstance(v, (list, tuple))}
                getattr(mod, f"{opt_name}Start")(b)
                for k, v in fields.items():
                    getattr(mod, f"{opt_name}Add{k}")(b, vecs.get(k, v))
                opt = getattr(mod, f"{opt_name}End")(b)
            iv = self._int_vector(b, ins)
            ov = self._int_vector(b, outs)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, idx)
            tflite.OperatorAddInputs(b, iv)
            tflite.OperatorAddOutputs(b, ov)
            if opt is not None:
                tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, opt_name))
                tflite.OperatorAddBuiltinOptions(b, opt)
            op_offs.append(tflite.OperatorEnd(b))
        tv = self._vector(b, tflite.SubGraphStartTensorsVector, tensor_offs, b.PrependUOffsetTRelative)
        ov = self._vector(b, tflite.SubGraphStartOperatorsVector, op_offs, b.PrependUOffsetTRelative)
        iv = self._int_vector(b, inputs)
        outv = self._int_vector(b, outputs)
        sg_name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tv)
        tflite.SubGraphAddInputs(b, iv)
        tflite.SubGraphAddOutputs(b, outv)
        tflite.SubGraphAddOperators(b, ov)
        tflite.SubGraphAddName(b, sg_name)
        sg = tflite.SubGraphEnd(b)
        code_offs = []
        for code in self.opcodes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, 1)
            code_offs.append(tflite.OperatorCodeEnd(b))
        cv = self._vector(b, tflite.ModelStartOperatorCodesVector, code_offs, b.PrependUOffsetTRelative)
        sgv = self._vector(b, tflite.ModelStartSubgraphsVector, [sg], b.PrependUOffsetTRelative)
        bv = self._vector(b, tflite.ModelStartBuffersVector, buf_offs, b.PrependUOffsetTRelative)
        desc = b.CreateString(description)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, cv)
        tflite.ModelAddSubgraphs(b, sgv)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, bv)
        m = tflite.ModelEnd(b)
        b.Finish(m, file_identifier=b"TFL3")
        return bytes(b.Output())


# ---- quantized constants, as the converter makes them


def act_qparams(lo: float, hi: float) -> tuple[np.float32, int]:
    """int8 scale and zero point of the real range ``[lo, hi]`` widened to include 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255.0)
    zp = int(np.clip(np.round(-128 - lo / float(scale)), -128, 127))
    return scale, zp


def weights(rng, shape, axis: int):
    """Float weights quantized int8 symmetric narrow-range per channel along ``axis``:
    ``(codes, scales)``."""
    w = rng.normal(0, 1, shape).astype(np.float32) * rng.uniform(0.5, 2, shape[axis]).astype(np.float32).reshape(
        [-1 if i == axis else 1 for i in range(len(shape))]
    )
    red = tuple(i for i in range(len(shape)) if i != axis)
    scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
    bshape = [-1 if i == axis else 1 for i in range(len(shape))]
    q = np.clip(np.round(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
    return q, scale


def bias(rng, n: int, s_x, s_w, magnitude: float = 300.0):
    """int32 bias codes at scale ``float32(S_x S_w)`` (about ``magnitude`` codes)."""
    s = (np.float32(s_x) * np.asarray(s_w, np.float32)).astype(np.float32)
    return np.round(rng.normal(0, magnitude, n)).astype(np.int32), s
