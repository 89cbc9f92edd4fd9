"""ONNX Runtime adapters from VeRA files (README "ONNX and ONNX Runtime"). Needs onnx,
onnxruntime and NumPy only.

A hot-swap model has ``{module}.lambda_d`` and ``{module}.lambda_b`` as overridable
initializers; a multi model has them as tables with one row per adapter slot.
``adapter_parameters`` turns a VeRA file into one adapter's values for those inputs after
checking that the adapter fits the model; ``onnx_adapter`` writes them as an ONNX Runtime
adapter (``onnxruntime.AdapterFormat``, ORT >= 1.20) with the name mapping in
``<file>.json``, both written atomically; ``read_parameters`` reads such a file back and
refuses values the model must not run with: unknown names, another dtype or shape, NaN/Inf.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

import vera_ref
from vera_ref import generators
from vera_ref.adapter import Adapter
from vera_ref.atomic import atomic_file, atomic_write_bytes
from vera_ref.values import checked_values

from .adapter_file import parse, read_bytes, size_bound
from .description import describe, parameter_shapes
from .errors import OnnxAdapterError

MAP_FORMAT = "vera-onnx-adapter-map-1"


def _load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))


def check_values(name: str, value: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One adapter value against the model's input ``name``: same dtype, same shape, then the value checks
    every backend shares (``vera_ref.values.checked_values``: finite, spec 4.6 rule 25)."""
    value = np.asarray(value)
    if value.dtype != dtype:
        raise OnnxAdapterError(name, f"dtype {value.dtype} in the adapter, {np.dtype(dtype)} in the model")
    if tuple(value.shape) != tuple(shape):
        raise OnnxAdapterError(name, f"shape {list(value.shape)} in the adapter, {list(shape)} in the model")
    return _checked(name, value, dtype, shape)


def _checked(name: str, value, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``vera_ref.values.checked_values`` in the model's dtype, raising ``OnnxAdapterError``."""
    out = checked_values(name, value, tuple(shape), dtype, error=OnnxAdapterError)
    return np.ascontiguousarray(out.astype(dtype, copy=False))


def check_parameters(params: dict[str, np.ndarray], shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]
                     ) -> dict[str, np.ndarray]:
    """Every value of ``params`` checked (``check_values``) against ``shapes`` (``parameter_shapes``)."""
    out = {}
    for k in sorted(params):
        if k not in shapes:
            raise OnnxAdapterError(k, "the adapter sets a parameter this model does not have")
        out[k] = check_values(k, params[k], *shapes[k])
    return out


def _cast(name: str, values, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A VeRA file's vector in the model's dtype; values that overflow it are refused, not served as inf."""
    arr = np.asarray(values)
    if arr.size != int(np.prod(shape)):
        raise OnnxAdapterError(name, f"shape {list(arr.shape)} in the adapter, {list(shape)} in the model")
    return _checked(name, arr.reshape(shape), dtype, shape)


def adapter_parameters(adapter: str | os.PathLike | Adapter, model: str | os.PathLike | onnx.ModelProto
                       ) -> dict[str, np.ndarray]:
    """{model input name: one adapter's value} for ``adapter``, after checking it fits the model.

    For a multi model the values are one row of each table (see ``parameter_shapes``)."""
    model = _load_model(model)
    desc = describe(model)
    return fit_adapter(adapter, desc, parameter_shapes(model, desc))


def fit_adapter(adapter: str | os.PathLike | Adapter, desc: dict, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]
                ) -> dict[str, np.ndarray]:
    """``adapter_parameters`` given the model's ``describe()`` and ``parameter_shapes()`` (no model load)."""
    ad = adapter if isinstance(adapter, Adapter) else vera_ref.load_adapter(adapter)
    classes = desc.get("classes") or [dict(desc, suffix="")]
    refusals = []
    for cl in classes:  # multi mode: the first projection class the adapter fits
        try:
            return _fit_class(ad, cl, desc, shapes)
        except OnnxAdapterError as exc:
            refusals.append(exc)
    if len(refusals) == 1:
        raise refusals[0]
    raise OnnxAdapterError("projection", f"the adapter fits none of the model's {len(classes)} projection classes: "
                                         + "; ".join(f"class {i}: {e}" for i, e in enumerate(refusals)))


def _fit_class(ad: Adapter, cl: dict, desc: dict, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]
               ) -> dict[str, np.ndarray]:
    """One adapter's values for the inputs of projection class ``cl`` (its r, generator, seed, sharing, modules)."""
    cfg = ad.config
    gen = generators.get(cfg.generator)
    seed = str(cfg.seed) if gen.has_seed else None
    for field, got, want in (("r", cfg.r, cl["r"]), ("generator", cfg.generator, cl["generator"]),
                             ("seed", seed, cl["seed"]), ("sharing", cfg.sharing, cl["sharing"])):
        if got != want:
            raise OnnxAdapterError(field, f"the adapter has {got!r} but the model was exported with {want!r} "
                                          "(a hot-swap model swaps vectors only; A and B are fixed)")
    if not gen.generates:
        raise OnnxAdapterError("generator", "stored projections cannot be swapped in; export a model for this "
                                            "adapter")
    if cfg.sharing == "shared" and (cl["groups"]["0"] != [cfg.n_in, cfg.n_out]):
        raise OnnxAdapterError("n_in/n_out", f"the adapter's projection is ({cfg.n_in}, {cfg.n_out}) but the "
                                             f"model's is {tuple(cl['groups']['0'])}")
    mods = {m["name"]: m for m in cl["modules"]}
    suffix = cl.get("suffix", "")
    params = {}
    for m in cfg.modules:
        em = mods.get(m.name)
        if em is None:
            raise OnnxAdapterError("modules", f"{m.name!r} is not adapted in the exported model")
        if (em["in_features"], em["out_features"], em["layout"]) != (m.in_features, m.out_features, m.layout):
            raise OnnxAdapterError("modules", f"{m.name!r} is (in={em['in_features']}, out={em['out_features']}) "
                                              f"in the model but (in={m.in_features}, out={m.out_features}) in "
                                              "the adapter")
        if not em.get("in_graph", True):
            continue  # the exported forward never calls this module
        for v, arr in (("d", ad.lambda_d[m.name]), ("b", ad.lambda_b[m.name])):
            key = f"{m.name}.lambda_{v}{suffix}"
            params[key] = _cast(key, arr, *shapes[key])
    for key in desc.get("extra", []):  # the adapter's trained head, where the model lets it be swapped
        if key in ad.extra:
            dt, shape = shapes[key]
            arr = np.asarray(ad.extra[key][0])
            if tuple(arr.shape) != tuple(shape):
                raise OnnxAdapterError(key, f"shape {list(arr.shape)} in the adapter, {list(shape)} in the model")
            params[key] = _cast(key, arr, dt, shape)
    return params


def read_parameters(path: str | os.PathLike, model: str | os.PathLike | onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of an ``.onnx_adapter`` file, checked against ``model`` (names, dtype, shape, finite)."""
    return read_checked(path, parameter_shapes(_load_model(model)))


def read_checked(path: str | os.PathLike, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """``read_parameters`` given the model's ``parameter_shapes()``: the file read once and bounded by what
    the model needs (``adapter_file``), its parameters checked."""
    return check_parameters(read_adapter_bytes(path, shapes)[1], shapes)


def read_adapter_bytes(path: str | os.PathLike, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]
                       ) -> tuple[bytes, dict[str, np.ndarray]]:
    """(the file's bytes, its parameters parsed from those bytes), unchecked against ``shapes`` but
    bounded by them: a file larger than ``adapter_file.size_bound(shapes)`` is refused unread."""
    data = read_bytes(path, size_bound(shapes))
    return data, parse(data, os.fspath(path))


def _export_adapter_into(fmt: "ort.AdapterFormat", f) -> None:
    """ORT writes adapters to a path only: point it at the open temporary (Linux /proc), else copy."""
    proc = f"/proc/self/fd/{f.fileno()}"
    if os.path.exists(proc):
        fmt.export_adapter(proc)
        return
    scratch = tempfile.mkdtemp(prefix="vera-onnx-")
    try:
        fmt.export_adapter(os.path.join(scratch, "a"))
        with open(os.path.join(scratch, "a"), "rb") as g:
            shutil.copyfileobj(g, f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def onnx_adapter(adapter: str | os.PathLike | Adapter, model: str | os.PathLike | onnx.ModelProto,
                 out: str | os.PathLike) -> dict[str, str]:
    """Write ``adapter`` as an ONNX Runtime adapter file for the hot-swap (or multi) ``model``.

    Returns and records (in ``<out>.json``) the mapping from the VeRA file's tensor names to
    the model's input names (the same names: spec 4.4 keys are the exported input names).
    Both files are replaced atomically (``vera_ref.atomic``): a reader sees the old file or
    the new one, concurrent writers never collide, a killed writer leaves no temporary."""
    return write_onnx_adapter(adapter_parameters(adapter, model), out,
                              adapter if not isinstance(adapter, Adapter) else None)


def write_adapter_file(params: dict[str, np.ndarray], out: str | os.PathLike) -> None:
    """Write checked ``params`` as an ONNX Runtime adapter file (atomically), without a sidecar."""
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    # OrtValues from NumPy borrow the arrays' memory: ``params`` keeps them alive until the file is written
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    with atomic_file(os.fspath(out)) as f:
        _export_adapter_into(fmt, f)


def write_onnx_adapter(params: dict[str, np.ndarray], out: str | os.PathLike,
                       source: str | os.PathLike | None = None) -> dict[str, str]:
    """Write checked ``params`` as an ONNX Runtime adapter file plus its ``.json`` sidecar (atomically)."""
    out = os.fspath(out)
    write_adapter_file(params, out)
    mapping = {k: k for k in params}
    sidecar = {"format": MAP_FORMAT, "source": os.fspath(source) if source else None, "inputs": mapping}
    atomic_write_bytes(out + ".json", json.dumps(sidecar, indent=1, sort_keys=True).encode())
    return mapping
