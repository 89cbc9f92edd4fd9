"""The VeRA description an exported model carries in ``metadata_props`` (README "ONNX and
ONNX Runtime"). Needs onnx only.

Keys: ``mode`` ("hotswap" or "multi"; absent in files of 1.0, which are hot-swap),
``r``, ``generator``, ``seed`` (a decimal string, or None), ``sharing``, ``d_initial``,
``projections`` ("initializers" or "generator"), ``modules`` (name, in/out features,
layout, group, in_graph), ``extra`` (overridable task-head tensors), ``groups``
(projection group -> [n_in, n_out]); multi mode adds ``capacity`` (K adapters),
``index_input`` (the per-row adapter index input) and ``tables`` (the table inputs: one
row per slot, slot 0 the base model).
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx

from vera_ref.errors import OnnxError

META_KEY = "vera"  # metadata_props key holding the JSON description
BASE_SLOT = 0  # multi mode: table row 0 is the base model (lambda_b = 0, the original head)

_NP = {onnx.TensorProto.FLOAT: np.dtype(np.float32), onnx.TensorProto.FLOAT16: np.dtype(np.float16),
       onnx.TensorProto.DOUBLE: np.dtype(np.float64)}


def describe(model: onnx.ModelProto | str | os.PathLike) -> dict:
    """The VeRA description a hot-swap or multi export stores in metadata_props."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    for p in model.metadata_props:
        if p.key == META_KEY:
            desc = json.loads(p.value)
            desc.setdefault("mode", "hotswap")
            return desc
    raise OnnxError("not a VeRA hot-swap model (no 'vera' metadata); export it with mode='hotswap'")


def overridable_inputs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of the graph inputs that have an initializer (lambdas, tables, heads)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            t = inits[i.name]
            if t.data_type in _NP:
                out[i.name] = (_NP[t.data_type], tuple(t.dims))
    return out


def parameter_shapes(model: onnx.ModelProto, desc: dict | None = None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of ONE adapter's value for each swappable parameter: the input's own
    shape in hot-swap mode, one row of the table (its leading slot axis dropped) in multi mode."""
    desc = desc or describe(model)
    inputs = overridable_inputs(model)
    if desc["mode"] != "multi":
        return inputs
    return {k: (dt, shape[1:]) for k, (dt, shape) in inputs.items() if k in set(desc["tables"])}
