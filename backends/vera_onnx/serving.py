"""ONNX Runtime adapters from VeRA files, and one session serving many adapters (DESIGN 4).

A hot-swap model (``export(..., mode="hotswap")``) has ``{module}.lambda_d`` and
``{module}.lambda_b`` as overridable initializers. ``onnx_adapter`` writes a VeRA file's
vectors as an ONNX Runtime adapter (``onnxruntime.AdapterFormat``, ORT >= 1.20), named
after those inputs, with the mapping recorded beside it in ``<file>.json``.
``VeraOnnxSession`` loads adapters with ``onnxruntime.LoraAdapter`` and activates the one a
call asks for with ``RunOptions.add_active_adapter``. It refuses what ONNX Runtime silently
gets wrong: two active adapters that set the same parameter (ORT applies one of them), and
adapters under IOBinding (ORT ignores them there).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

import vera_ref
from vera_ref.adapter import Adapter
from vera_ref.errors import OnnxError

from .export import describe

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}


def _model_inputs(model: onnx.ModelProto) -> dict[str, tuple[type, tuple[int, ...]]]:
    """The overridable initializers: lambdas and extra tensors (a task head)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            t = inits[i.name]
            out[i.name] = (_NP[t.data_type], tuple(t.dims))
    return out


def adapter_parameters(adapter: str | os.PathLike | Adapter, model: str | os.PathLike | onnx.ModelProto
                       ) -> dict[str, np.ndarray]:
    """{model input name: array} for ``adapter``, after checking it fits the hot-swap model."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    desc = describe(model)
    ad = adapter if isinstance(adapter, Adapter) else vera_ref.load_adapter(adapter)
    cfg = ad.config
    seed = None if cfg.generator == "stored" else str(cfg.seed)
    for field, got, want in (("r", cfg.r, desc["r"]), ("generator", cfg.generator, desc["generator"]),
                             ("seed", seed, desc["seed"]), ("sharing", cfg.sharing, desc["sharing"])):
        if got != want:
            raise OnnxError(f"{field}: the adapter has {got!r} but the model was exported with {want!r} "
                            "(a hot-swap model swaps vectors only; A and B are fixed)")
    if cfg.generator == "stored":
        raise OnnxError("generator: stored projections cannot be swapped in; export a model for this adapter")
    if cfg.sharing == "shared" and (desc["groups"]["0"] != [cfg.n_in, cfg.n_out]):
        raise OnnxError(f"n_in/n_out: the adapter's projection is ({cfg.n_in}, {cfg.n_out}) but the model's is "
                        f"{tuple(desc['groups']['0'])}")
    mods = {m["name"]: m for m in desc["modules"]}
    inputs = _model_inputs(model)
    params = {}
    for m in cfg.modules:
        em = mods.get(m.name)
        if em is None:
            raise OnnxError(f"modules: {m.name!r} is not adapted in the exported model")
        if (em["in_features"], em["out_features"], em["layout"]) != (m.in_features, m.out_features, m.layout):
            raise OnnxError(f"modules: {m.name!r} is (in={em['in_features']}, out={em['out_features']}) in the model "
                            f"but (in={m.in_features}, out={m.out_features}) in the adapter")
        if not em.get("in_graph", True):
            continue  # the exported forward never calls this module
        for key, arr in ((f"{m.name}.lambda_d", ad.lambda_d[m.name]), (f"{m.name}.lambda_b", ad.lambda_b[m.name])):
            dt, shape = inputs[key]
            params[key] = np.ascontiguousarray(np.asarray(arr, dtype=np.float64).astype(dt).reshape(shape))
    for key in desc.get("extra", []):  # the adapter's trained head, where the model lets it be swapped
        if key in ad.extra:
            dt, shape = inputs[key]
            arr = np.asarray(ad.extra[key][0], dtype=np.float64)
            if arr.shape != shape:
                raise OnnxError(f"{key}: shape {list(arr.shape)} in the adapter, {list(shape)} in the model")
            params[key] = np.ascontiguousarray(arr.astype(dt))
    return params


def onnx_adapter(adapter: str | os.PathLike | Adapter, model: str | os.PathLike | onnx.ModelProto,
                 out: str | os.PathLike) -> dict[str, str]:
    """Write ``adapter`` as an ONNX Runtime adapter file for the hot-swap ``model``.

    Returns and records (in ``<out>.json``) the mapping from the VeRA file's tensor names to
    the model's input names (the same names: spec 4.4 keys are the exported input names)."""
    params = adapter_parameters(adapter, model)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    out = os.fspath(out)
    tmp = out + ".tmp"
    fmt.export_adapter(tmp)
    os.replace(tmp, out)
    mapping = {k: k for k in params}
    src = adapter if not isinstance(adapter, Adapter) else None
    with open(out + ".json", "w") as f:
        json.dump({"format": "vera-onnx-adapter-map-1", "source": os.fspath(src) if src else None,
                   "inputs": mapping}, f, indent=1, sort_keys=True)
    return mapping


class VeraOnnxSession:
    """One ONNX Runtime session of a hot-swap model, serving many VeRA adapters."""

    def __init__(self, model_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 sess_options: ort.SessionOptions | None = None) -> None:
        self.model_path = os.fspath(model_path)
        self._model = onnx.load(self.model_path)
        self.description = describe(self._model)
        so = sess_options or ort.SessionOptions()
        so.log_severity_level = 3  # the lambda inputs are overridable initializers by design; ORT warns about each
        self.session = ort.InferenceSession(self.model_path, so, providers=list(providers or ["CPUExecutionProvider"]))
        self._inputs = _model_inputs(self._model)
        self.adapters: dict[str, tuple[ort.LoraAdapter, frozenset[str]]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="vera-onnx-")

    def load_adapter(self, name: str, path: str | os.PathLike | Adapter) -> None:
        """Load a VeRA file (.safetensors, checked against the model) or an .onnx_adapter file."""
        if name in self.adapters:
            raise OnnxError(f"an adapter named {name!r} is already loaded")
        if isinstance(path, Adapter) or str(path).endswith(".safetensors"):
            file = os.path.join(self._tmp.name, f"{len(self.adapters)}.onnx_adapter")
            params = onnx_adapter(path, self._model, file)  # checked against the model while written
        else:
            file = os.fspath(path)
            params = ort.AdapterFormat.read_adapter(file).get_parameters()
            for k, v in params.items():
                if k not in self._inputs:
                    raise OnnxError(f"{k}: the adapter sets a parameter this model does not have")
                if tuple(v.shape()) != self._inputs[k][1]:
                    raise OnnxError(f"{k}: shape {list(v.shape())} in the adapter, {list(self._inputs[k][1])} in the model")
        la = ort.LoraAdapter()
        la.Load(file)
        self.adapters[name] = (la, frozenset(params))

    def _run_options(self, adapter: str | Sequence[str] | None) -> ort.RunOptions:
        names = [] if adapter is None else [adapter] if isinstance(adapter, str) else list(adapter)
        ro = ort.RunOptions()
        seen: dict[str, str] = {}
        for n in names:
            if n not in self.adapters:
                raise OnnxError(f"no adapter named {n!r} is loaded (loaded: {', '.join(self.adapters) or 'none'})")
            la, params = self.adapters[n]
            for p in sorted(params):
                if p in seen:
                    raise OnnxError(f"adapters {seen[p]!r} and {n!r} both set {p!r}; ONNX Runtime would apply one "
                                    "of them silently")
                seen[p] = n
            ro.add_active_adapter(la)
        return ro

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any],
            adapter: str | Sequence[str] | None = None) -> list:
        """``session.run`` with ``adapter`` active (None: the base model)."""
        return self.session.run(output_names, feeds, self._run_options(adapter))

    def run_with_iobinding(self, binding: ort.IOBinding, adapter: str | Sequence[str] | None = None) -> None:
        if adapter:
            raise OnnxError("ONNX Runtime ignores adapters under IOBinding; call run() with feeds instead")
        self.session.run_with_iobinding(binding)
