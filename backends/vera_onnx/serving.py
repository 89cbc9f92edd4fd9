"""One ONNX Runtime session serving many VeRA adapters (README "ONNX and ONNX Runtime").
Needs onnx, onnxruntime and NumPy only (no torch).

Hot-swap models (``export(..., mode="hotswap")``): adapters are loaded with
``onnxruntime.LoraAdapter`` and the one a call asks for is activated with
``RunOptions.add_active_adapter``; one adapter per run. The session refuses what ONNX
Runtime silently gets wrong: two active adapters that set the same parameter (ORT applies
one of them), and adapters under IOBinding (ORT ignores them there).

Multi models (``export(..., mode="multi", capacity=K)``): the graph takes a per-row adapter
index and holds every lambda (and task-head) table with K + 1 rows; row 0 is the base
model, rows 1..K are slots. Loading an adapter writes its values into a free slot of the
session's tables, removing it writes the base values back; the tables are fed with every
run, so adapters come and go by name without re-export or a new session, and one batch
mixes any of them row by row (``run(..., adapter_ids=[...])``).
"""
from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from vera_ref.adapter import Adapter

from .adapters import (adapter_parameters, check_parameters, fit_adapter, onnx_adapter, read_adapter_bytes,
                       read_checked, write_adapter_file)
from .description import BASE_SLOT, describe, overridable_inputs, parameter_shapes
from .errors import OnnxAdapterError, OnnxError

__all__ = ["VeraOnnxSession", "onnx_adapter", "adapter_parameters"]


class VeraOnnxSession:
    """One ONNX Runtime session of a hot-swap or multi model, serving many VeRA adapters."""

    def __init__(self, model_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 sess_options: ort.SessionOptions | None = None) -> None:
        self.model_path = os.fspath(model_path)
        with open(self.model_path, "rb") as f:  # read once: the description and the session see the same model
            blob = f.read()
        model = onnx.load_from_string(blob)
        self.description = describe(model)
        self.mode: str = self.description["mode"]
        so = sess_options or ort.SessionOptions()
        so.log_severity_level = 3  # the lambda inputs are overridable initializers by design; ORT warns about each
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        # a model with external data needs its path for ONNX Runtime to find the data files next to it
        self.session = ort.InferenceSession(self.model_path if external else blob, so,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        del blob
        self._inputs = overridable_inputs(model)
        self._shapes = parameter_shapes(model, self.description)
        self.adapters: dict[str, tuple[ort.LoraAdapter, frozenset[str]]] = {}  # hot-swap mode
        self.slots: dict[str, int] = {}  # multi mode: adapter name -> table row
        self._tmp = tempfile.TemporaryDirectory(prefix="vera-onnx-")  # private: the files ONNX Runtime maps
        self._files: dict[str, str] = {}  # hot-swap mode: adapter name -> its private file
        self._count = itertools.count()
        if self.mode == "multi":
            self.capacity: int = int(self.description["capacity"])
            self._index_name: str = self.description["index_input"]
            inits = {t.name: t for t in model.graph.initializer}
            # the tables as fed with every run; row BASE_SLOT (and every free row) holds the base values
            self._tables = {k: np.array(numpy_helper.to_array(inits[k]), order="C") for k in self.description["tables"]}
            self._base_rows = {k: t[BASE_SLOT].copy() for k, t in self._tables.items()}
            self._data_inputs = [i.name for i in self.session.get_inputs()
                                 if i.name not in self._inputs and i.name != self._index_name]

    # -- loading ------------------------------------------------------------------------------------------
    def _parameters(self, path: str | os.PathLike | Adapter) -> dict[str, np.ndarray]:
        if isinstance(path, Adapter) or str(path).endswith(".safetensors"):
            return fit_adapter(path, self.description, self._shapes)
        return read_checked(path, self._shapes)

    def load_adapter(self, name: str, path: str | os.PathLike | Adapter, *, replace: bool = False) -> None:
        """Load a VeRA file (.safetensors or an in-memory Adapter, checked against the model) or an
        .onnx_adapter file (names, dtype, shape and finiteness checked) as ``name``.

        ``replace=True`` swaps the values of an adapter already loaded under ``name``. Nothing
        changes when the load is refused. Errors: ``OnnxAdapterError`` (the adapter does not fit the
        model, its values, an ``.onnx_adapter`` file that is malformed, too large or has trailing
        bytes), ``OnnxError`` (names), and ``vera_ref.AdapterFileError`` (with its spec 4.6 code) for
        a VeRA file that breaks a rule of spec 4.

        An ``.onnx_adapter`` file is read once (bounded by the model, ``adapter_file``) and ONNX
        Runtime maps a private copy of the bytes that were checked: the path may change meanwhile."""
        if name is None or not isinstance(name, str):
            raise OnnxError(f"adapter names are strings, got {name!r}")
        if not isinstance(path, (str, os.PathLike, Adapter)):
            raise OnnxAdapterError("path", f"expected a file path or a vera_ref.Adapter, got {type(path).__name__}")
        loaded = name in (self.slots if self.mode == "multi" else self.adapters)
        if loaded and not replace:
            raise OnnxError(f"an adapter named {name!r} is already loaded (load_adapter(..., replace=True) swaps it)")
        if self.mode == "multi":
            self._load_slot(name, self._parameters(path))
            return
        # ONNX Runtime loads adapters from a path only: it gets a private file holding exactly what was
        # checked (issue 23, 11: never the user's path again, which may have been replaced since)
        file = os.path.join(self._tmp.name, f"{next(self._count)}.onnx_adapter")
        if isinstance(path, Adapter) or str(path).endswith(".safetensors"):
            params = self._parameters(path)  # checked against the model
            write_adapter_file(params, file)
        else:
            data, raw = read_adapter_bytes(path, self._shapes)  # one read, bounded by the model
            params = check_parameters(raw, self._shapes)
            with open(file, "xb") as f:
                f.write(data)
        try:
            self._same_as_checked(file, params)
            la = ort.LoraAdapter()
            la.Load(file)
        except BaseException:
            os.unlink(file)
            raise
        old = self._files.get(name)
        self.adapters[name] = (la, frozenset(params))
        self._files[name] = file
        if old is not None:
            os.unlink(old)  # the replaced adapter's mapping stays valid after the unlink (POSIX)

    @staticmethod
    def _same_as_checked(file: str, params: dict[str, np.ndarray]) -> None:
        """ONNX Runtime's own reading of the private file must give the checked values, bit for bit."""
        try:
            fmt = ort.AdapterFormat.read_adapter(file)
            got = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
            del fmt
        except Exception as exc:  # ORT raises RuntimeError/Fail for anything it cannot parse
            raise OnnxAdapterError("file", f"ONNX Runtime cannot read the checked adapter ({type(exc).__name__})"
                                   ) from None
        if sorted(got) != sorted(params) or any(
                got[k].dtype != params[k].dtype or got[k].shape != params[k].shape
                or got[k].tobytes() != params[k].tobytes() for k in params):
            raise OnnxAdapterError("file", "ONNX Runtime reads other values from this adapter than the checks did; "
                                           "refused")

    def set_adapter_values(self, name: str, values: dict[str, np.ndarray], *, replace: bool = False) -> None:
        """Load in-memory values ({input name: one adapter's array}) as adapter ``name`` (multi mode);
        checked like a file: known names, the model's dtype and row shape, finite values."""
        if self.mode != "multi":
            raise OnnxError("set_adapter_values needs a model exported with mode='multi'")
        if name in self.slots and not replace:
            raise OnnxError(f"an adapter named {name!r} is already loaded (replace=True swaps it)")
        self._load_slot(name, check_parameters(values, self._shapes))

    def _load_slot(self, name: str, params: dict[str, np.ndarray]) -> None:
        slot = self.slots.get(name)
        if slot is None:
            used = set(self.slots.values())
            free = [s for s in range(1, self.capacity + 1) if s not in used]
            if not free:
                raise OnnxError(f"all {self.capacity} adapter slots are in use; remove_adapter() one first "
                                "(the capacity is fixed at export)")
            slot = free[0]
        for k, table in self._tables.items():  # parameters the adapter leaves out stay the base model's
            table[slot] = params[k] if k in params else self._base_rows[k]
        self.slots[name] = slot

    def remove_adapter(self, name: str) -> None:
        """Unload ``name``; a multi model's slot returns to the base values and is free again."""
        if self.mode == "multi":
            if name not in self.slots:
                raise OnnxError(f"no adapter named {name!r} is loaded")
            slot = self.slots.pop(name)
            for k, table in self._tables.items():
                table[slot] = self._base_rows[k]
            return
        if name not in self.adapters:
            raise OnnxError(f"no adapter named {name!r} is loaded")
        del self.adapters[name]
        file = self._files.pop(name, None)
        if file is not None:
            os.unlink(file)

    @property
    def loaded(self) -> list[str]:
        return list(self.slots if self.mode == "multi" else self.adapters)

    # -- running ------------------------------------------------------------------------------------------
    def _unknown(self, n: Any) -> OnnxError:
        return OnnxError(f"no adapter named {n!r} is loaded (loaded: {', '.join(self.loaded) or 'none'})")

    @staticmethod
    def _ids(value: Any, what: str, allow_none: bool) -> list:
        """A list or tuple (or NumPy array) of adapter names (and None where ``allow_none``), or OnnxError."""
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise OnnxError(f"{what} is a list with one adapter name (or None) per row, got a {type(value).__name__}")
        for i, n in enumerate(value):
            if not (isinstance(n, str) or (allow_none and n is None)):
                raise OnnxError(f"{what}[{i}]: adapter names are strings{' or None' if allow_none else ''}, "
                                f"got a {type(n).__name__}")
        return list(value)

    def _run_options(self, adapter: str | Sequence[str] | None) -> ort.RunOptions:
        names = [] if adapter is None else [adapter] if isinstance(adapter, str) else self._ids(adapter, "adapter",
                                                                                                 False)
        ro = ort.RunOptions()
        seen: dict[str, str] = {}
        for n in names:
            if n not in self.adapters:
                raise self._unknown(n)
            la, params = self.adapters[n]
            for p in sorted(params):
                if p in seen:
                    raise OnnxError(f"adapters {seen[p]!r} and {n!r} both set {p!r}; ONNX Runtime would apply one "
                                    "of them silently")
                seen[p] = n
            ro.add_active_adapter(la)
        return ro

    def adapter_index(self, adapter_ids: Sequence[str | None]) -> np.ndarray:
        """The per-row index input for ``adapter_ids`` (None: the base model); multi mode."""
        if isinstance(adapter_ids, str):
            raise OnnxError("adapter_ids is a list with one adapter name (or None) per row, got a string")
        adapter_ids = self._ids(adapter_ids, "adapter_ids", True)
        idx = np.empty(len(adapter_ids), np.int64)
        for i, n in enumerate(adapter_ids):
            if n is None:
                idx[i] = BASE_SLOT
            elif n in self.slots:
                idx[i] = self.slots[n]
            else:
                raise self._unknown(n)
        return idx

    def _batch(self, feeds: dict[str, Any]) -> int:
        for n in self._data_inputs:
            if n in feeds:
                return int(np.shape(feeds[n])[0])
        raise OnnxError(f"feeds name none of the model's inputs ({', '.join(self._data_inputs)})")

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any],
            adapter: str | Sequence[str] | None = None, *, adapter_ids: Sequence[str | None] | None = None) -> list:
        """``session.run`` with ``adapter`` active on every row (None: the base model), or, for a multi
        model, ``adapter_ids``: one loaded adapter name (or None) per row of the batch."""
        if self.mode != "multi":
            if adapter_ids is not None:
                if isinstance(adapter_ids, str):
                    raise OnnxError("adapter_ids is a list with one adapter name (or None) per row, got a string")
                ids = set(self._ids(adapter_ids, "adapter_ids", True))
                if len(ids) > 1:
                    raise OnnxError("this model serves one adapter per run (exported with mode='hotswap'); export "
                                    "it with mode='multi' to mix adapters in one batch")
                adapter = next(iter(ids), None)
            return self.session.run(output_names, feeds, self._run_options(adapter))
        own = sorted(set(feeds) & (set(self._tables) | {self._index_name}))
        if own:
            raise OnnxError(f"{own[0]}: set by the session from its loaded adapters; do not feed it")
        if adapter_ids is None:
            if adapter is not None and not isinstance(adapter, str):
                raise OnnxError("a multi model takes one adapter per row: pass adapter_ids=[...]")
            adapter_ids = [adapter] * self._batch(feeds)
        elif adapter is not None:
            raise OnnxError("pass adapter or adapter_ids, not both")
        idx = self.adapter_index(adapter_ids)
        batch = self._batch(feeds)
        if len(idx) != batch:
            raise OnnxError(f"adapter_ids has {len(idx)} entries but the batch has {batch} rows")
        return self.session.run(output_names, {**feeds, self._index_name: idx, **self._tables})

    def run_with_iobinding(self, binding: ort.IOBinding, adapter: str | Sequence[str] | None = None) -> None:
        if adapter:
            raise OnnxError("ONNX Runtime ignores adapters under IOBinding; call run() with feeds instead")
        if self.mode == "multi":
            raise OnnxError("a multi model's tables are fed by run(); call run() with feeds instead")
        self.session.run_with_iobinding(binding)
