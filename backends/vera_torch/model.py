"""VeraModel: VeRA adapters on any nn.Module (spec 2-4; README "PyTorch").

    model = get_vera_model(base, VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    model(**batch)                        # every argument goes to the wrapped model
    model(**batch, adapter_ids=ids)       # one adapter per row (serving)
    model.save_adapter("a.safetensors")   # the spec's file: vectors only, A and B from the seed
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import vera_ref
from vera_ref import generators
from vera_ref.adapter import Adapter, stored_keys
from vera_ref.errors import AdapterFileError, ModelMismatchError
from vera_ref.metadata import AdapterConfig, ModuleSpec

from . import quantized
from .config import DTYPE_NAMES, VeraConfig
from .errors import AdapterNameError, BatchError, ConfigError, MergeError
from .heads import ModulesToSave
from .layer import MixedBatch, ProjectionStore, ProjSpec, RowGroup, State, VeraLayer, adaptable, layer_dims
from .values import vector_tensor as _vector
from .views import AdapterView, HeadView, LayerView


def _np(t: torch.Tensor) -> np.ndarray:
    """``t`` as a NumPy array; a DTensor (FSDP2 shard) is gathered whole first: a collective."""
    from .distributed import full
    t = full(t.detach()).cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()  # bf16 values are exact in float32


class VeraModel(nn.Module):
    """A model with VeRA adapters. ``forward`` passes every argument to the wrapped model;
    ``adapter_ids`` (one adapter name, or None for the base model, per row of dim 0)
    serves several adapters in one batch."""

    def __init__(self, model: nn.Module, config: VeraConfig | None = None, adapter_name: str = "default") -> None:
        super().__init__()
        self.base_model = model
        self.vera_projections = nn.Module()  # buffers of ``stored`` projections only
        object.__setattr__(self, "_state", State())
        object.__setattr__(self, "_store", ProjectionStore(self.vera_projections))
        self.vera_configs: dict[str, VeraConfig] = {}
        self.vera_modules: dict[str, list[str]] = {}  # adapter -> module paths, in file order
        self._slots: dict[Hashable, dict[str, int]] = {}  # projection class -> adapter -> table slot (>= 1)
        self._class_of: dict[str, Hashable] = {}
        self._stored_given: set[str] = set()  # adapters whose stored projections were given, not drawn from the seed
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        if config is not None:
            self.add_adapter(adapter_name, config)
            self.set_adapter(adapter_name)

    @classmethod
    def from_adapter(cls, model: nn.Module, path: str | os.PathLike | Adapter, name: str = "default",
                     **kwargs: Any) -> "VeraModel":
        """Wrap ``model`` with the adapter in a spec file (checked against the model first)."""
        flags = [(p, p.requires_grad) for p in model.parameters()]
        vm = cls(model)
        try:
            vm.load_adapter(path, name, **kwargs)
        except BaseException:
            for p, flag in flags:  # a failed load leaves the model as it was
                p.requires_grad_(flag)
            raise
        return vm

    @classmethod
    def from_peft(cls, model: nn.Module, directory: str | os.PathLike, name: str = "default",
                  **kwargs: Any) -> "VeraModel":
        """Wrap ``model`` with a PEFT VeRA checkpoint (dimensions taken from the model)."""
        vm = cls(model)
        vm.load_peft(directory, name, **kwargs)
        return vm

    def load_peft(self, directory: str | os.PathLike, name: str = "default", **kwargs: Any) -> str:
        """Load a PEFT VeRA checkpoint directory as adapter ``name`` (see ``vera_torch.peft``)."""
        from .peft import load_peft
        return load_peft(self, directory, name, **kwargs)

    def save_peft(self, directory: str | os.PathLike, name: str | None = None, **kwargs: Any) -> None:
        """Write adapter ``name`` in PEFT's checkpoint layout (see ``vera_torch.peft``)."""
        from .peft import save_peft
        save_peft(self, directory, name, **kwargs)

    # -- attribute pass-through (model.config, model.device, ...) ---------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- adapters ------------------------------------------------------------------------------
    def _targets(self, config: VeraConfig, exact: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
        layers = list(_layers(self.base_model))
        if exact is None:
            check_targets(self.base_model, config)
            skip = _all_linear_skips(self.base_model, config, layers) if config.all_linear else set()
            return [(p, m) for p, m in layers if p not in skip and config.targets(p)]
        wanted = set(exact)
        found = [(p, m) for p, m in layers if p in wanted]
        missing = sorted(wanted - {p for p, _ in found})
        if missing:
            raise ModelMismatchError(f"modules: {missing[0]!r} is not an nn.Linear or Conv1D of this model")
        order = {p: i for i, p in enumerate(exact)}
        found.sort(key=lambda pm: order[pm[0]])
        return found

    def replace_module(self, path: str, module: nn.Module) -> None:
        """Put ``module`` at the dotted ``path`` of the base model (replacing what is there)."""
        parent_path, _, child = path.rpartition(".")
        parent = self.base_model.get_submodule(parent_path) if parent_path else self.base_model
        setattr(parent, child, module)

    def _head_paths(self, config: VeraConfig, adapted: Sequence[str]) -> list[str]:
        """Modules ``config.modules_to_save`` names: never an adapted layer, inside one, or holding one."""
        if not config.modules_to_save:
            return []
        layers = set(adapted) | {p for p, m in self.base_model.named_modules() if isinstance(m, VeraLayer)}
        found = []
        for path, module in self.base_model.named_modules():
            if not path or _inside_head_wrapper(path) or ".base_layer" in path or not config.saves(path):
                continue
            clash = next((lp for lp in sorted(layers) if lp == path or lp.startswith(path + ".")
                          or path.startswith(lp + ".")), None)
            if clash is not None:
                raise ModelMismatchError(f"modules_to_save: {path!r} {'is' if clash == path else 'overlaps'} the "
                                         f"adapted layer {clash!r}; a saved module cannot hold adapted layers")
            found.append(path)
        return found

    def _class_key(self, name: str, config: VeraConfig, specs: list[ProjSpec]) -> Hashable:
        """Projection identity for mixed batches: adapters with equal keys use equal A_l, B_l on every
        layer they share (shared: the one ProjSpec; per-module: the generator, seed, r and module list)."""
        if config.sharing == "shared":
            return specs[0]
        return ("per-module",) + tuple(specs)

    def add_adapter(self, name: str, config: VeraConfig, *, modules: Sequence[str] | None = None,
                    stored: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Add adapter ``name`` on every module ``config`` targets (or exactly ``modules``, in that order).

        Adapters may differ in r, seed and generator; each gets its own projections. Everything is
        checked before the model is changed: on an error the model is as it was."""
        if not isinstance(name, str) or not name or "." in name:
            raise AdapterNameError(f"an adapter name must be a non-empty string without '.', got {name!r}")
        if name in self.vera_configs:
            raise AdapterNameError(f"adapter {name!r} already exists")
        if not isinstance(config, VeraConfig):
            raise ConfigError("config", f"must be a VeraConfig, got {type(config).__name__}")
        targets = self._targets(config, modules)
        quantized.check_targets(targets)  # spec 7.1: one clear error for a quantized layer VeRA cannot adapt
        if not targets:
            raise ConfigError("target_modules", f"{_entry(str(config.target_modules), config.target_modules)} "
                              f"selects no nn.Linear or Conv1D layer of this model; "
                              f"{_endings(linear_name_endings(self.base_model))}")
        heads = self._head_paths(config, [p for p, _ in targets])
        dims = [layer_dims(m.base_layer if isinstance(m, VeraLayer) else m) for _, m in targets]
        n_in, n_out = max(d[0] for d in dims), max(d[1] for d in dims)  # spec 2.2: PEFT's rule
        gen = generators.get(config.generator)
        seed = config.seed if gen.has_seed else None
        owner = "" if gen.has_seed else name
        specs = [ProjSpec(config.generator, seed, config.r, n_in, n_out, 0, owner) if config.sharing == "shared"
                 else ProjSpec(config.generator, seed, config.r, fi, fo, i + 1, owner)
                 for i, (fi, fo, _) in enumerate(dims)]
        pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if not gen.generates:  # stored (spec 2.5.2): given, or drawn once with the default generator and kept
            for spec in {s.group: s for s in specs}.values():
                if stored is not None:
                    A, B = (torch.as_tensor(t, dtype=torch.float32) for t in stored[spec.group])
                    if tuple(A.shape) != (spec.r, spec.n_in) or tuple(B.shape) != (spec.n_out, spec.r):
                        raise ModelMismatchError(
                            f"stored projection of group {spec.group}: A {list(A.shape)}, B {list(B.shape)}, this "
                            f"model needs A {[spec.r, spec.n_in]}, B {[spec.n_out, spec.r]}")
                else:
                    A, B = generators.get(generators.DEFAULT).device("torch")(
                        config.seed, spec.r, spec.n_in, spec.n_out, spec.group)
                pairs[spec.group] = (A, B)
        # -- checked: change the model ----------------------------------------------------------
        key = self._class_key(name, config, specs)
        for spec, (A, B) in zip({s.group: s for s in specs}.values(), pairs.values()):
            self._store.put_stored(spec, A, B)
        if pairs and stored is not None:
            self._stored_given.add(name)
        for (path, module), spec in zip(targets, specs):
            if not isinstance(module, VeraLayer):
                module = VeraLayer(module, self._state, self._store)
                self.replace_module(path, module)
            module.add_adapter(name, spec, config.r, config.d_initial, config.dropout, config.vector_dtype, key)
        for path in heads:
            module = self.base_model.get_submodule(path)
            if not isinstance(module, ModulesToSave):
                module = ModulesToSave(module, self._state)
                self.replace_module(path, module)
            module.add_adapter(name)
        slots = self._slots.setdefault(key, {})
        slots[name] = min(set(range(1, len(slots) + 2)) - set(slots.values()))  # reuse a freed slot
        self._class_of[name] = key
        self.vera_configs[name] = config
        self.vera_modules[name] = [p for p, _ in targets]

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if any(name in layer.merged for layer in self.vera_layers()):
            raise MergeError(f"adapter {name!r} is merged; unmerge() first")
        self._discard(name)

    def _discard(self, name: str) -> None:
        for layer in self.vera_layers():
            layer.remove_adapter(name)
        for w in self.modules_to_save():
            w.remove_adapter(name)
        self._store.drop(name)
        self._stored_given.discard(name)
        key = self._class_of.pop(name, None)
        if key is not None:
            self._slots[key].pop(name, None)
            if not self._slots[key]:
                del self._slots[key]
        self.vera_configs.pop(name, None)
        self.vera_modules.pop(name, None)
        if self._state.active == name:
            self._state.active = None

    def _require(self, name: str) -> None:
        if name not in self.vera_configs:
            raise AdapterNameError(f"no adapter named {name!r} (have: {', '.join(self.vera_configs) or 'none'})")

    @property
    def active_adapter(self) -> str | None:
        return self._state.active

    @property
    def adapters(self) -> list[str]:
        return list(self.vera_configs)

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the active adapter; only its vectors (and head copies) are trainable."""
        self._require(name)
        if any(layer.merged and layer.merged != [name] for layer in self.vera_layers()):
            raise MergeError("another adapter is merged; unmerge() before switching")
        self._state.active = name
        self.set_trainable([name])

    def set_trainable(self, names: Sequence[str]) -> None:
        """Make exactly the vectors (and head copies) of ``names`` trainable, e.g. every adapter of a
        multi-task mixed batch; the active adapter does not change."""
        names = list(names)
        for n in names:
            self._require(n)
        for layer in self.vera_layers():
            for n, p in list(layer.vera_lambda_d.items()) + list(layer.vera_lambda_b.items()):
                p.requires_grad_(n in names)
        for w in self.modules_to_save():
            for n, c in w.copies.items():
                for p in c.parameters():
                    p.requires_grad_(n in names)

    def vera_layers(self) -> Iterator[VeraLayer]:
        return (m for m in self.base_model.modules() if isinstance(m, VeraLayer))

    def set_save_for_backward(self, mode: str) -> None:
        """What every adapted layer keeps for backward: "minimal" (the default: h = x A^T, or x on
        the fused path; the rest is recomputed) or "activations" (faster, more memory; README "PyTorch")."""
        if mode not in ("minimal", "activations"):
            raise ConfigError("save_for_backward", f"{mode!r} is not 'minimal' or 'activations'")
        for layer in self.vera_layers():
            layer.save_for_backward = mode

    def modules_to_save(self) -> Iterator[ModulesToSave]:
        return (m for m in self.base_model.modules() if isinstance(m, ModulesToSave))

    def refresh_tables(self) -> None:
        """Drop the cached mixed-batch tables. Needed only after changing vectors through ``.data``
        (in-place updates and optimiser steps are seen without it)."""
        for m in self.vera_layers():
            m.refresh_tables()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model: merged adapters are unmerged for the block (the weights are W0 bit for
        bit) and merged back after."""
        merged = {layer: list(layer.merged) for layer in self.vera_layers() if layer.merged}
        for layer in merged:
            layer.unmerge()
        outer, self._state.disabled = self._state.disabled, True
        try:
            yield
        finally:
            self._state.disabled = outer  # nested blocks keep the outer block disabled
            for layer, names in merged.items():
                for n in names:
                    layer.merge(n)

    # -- forward ---------------------------------------------------------------------------------
    @torch.compiler.disable
    def _mixed_batch(self, adapter_ids: Sequence[str | None]) -> MixedBatch:
        """Group the rows by projection class (one x A^T and one B^T product per class and layer)."""
        if isinstance(adapter_ids, (str, bytes)):
            raise BatchError("adapter_ids must be a sequence with one adapter name (or None) per row, got a string")
        ids = list(adapter_ids)
        for n in dict.fromkeys(ids):
            if n is not None:
                self._require(n)
        by_class: dict[Hashable, tuple[list[str], list[int], list[int], list[int]]] = {}
        pos: dict[str, tuple[Hashable, int]] = {}
        for i, n in enumerate(ids):
            if n is None:
                continue
            if n not in pos:
                key = self._class_of[n]
                names, slots, _, _ = by_class.setdefault(key, ([], [], [], []))
                names.append(n)
                slots.append(self._slots[key][n])
                pos[n] = (key, len(names))
            key, local = pos[n]
            _, slots, rows, locs = by_class[key]
            rows.append(i)
            locs.append(local)
        if torch.is_grad_enabled():
            # every trainable adapter joins the graph, with no rows where this batch has none: a zero gradient,
            # not None, so data-parallel ranks whose rows use different adapters reduce the same gradients
            for n in self.vera_configs:
                if n not in pos and any(p.requires_grad for layer in self.vera_layers() if n in layer.vera_lambda_d
                                        for p in (layer.vera_lambda_d[n], layer.vera_lambda_b[n])):
                    key = self._class_of[n]
                    names, slots, _, _ = by_class.setdefault(key, ([], [], [], []))
                    names.append(n)
                    slots.append(self._slots[key][n])
                    pos[n] = (key, len(names))
        classes = {}
        for key, (names, slots, rows, locs) in by_class.items():
            classes[key] = RowGroup(
                names, slots, None if len(rows) == len(ids) else torch.tensor(rows, dtype=torch.long),
                torch.tensor(locs, dtype=torch.long), torch.tensor([slots[j - 1] for j in locs], dtype=torch.long))
        return MixedBatch(ids, classes)

    def forward(self, *args: Any, adapter_ids: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model; ``adapter_ids``: one adapter name (or None) per row of dim 0."""
        st = self._state
        if adapter_ids is not None:
            st.mixed = self._mixed_batch(adapter_ids)
        st.h_cache = {}
        try:
            return self.base_model(*args, **kwargs)
        finally:
            st.h_cache = None
            st.mixed = None

    # -- merging -----------------------------------------------------------------------------------
    def base_fingerprint(self, name: str | None = None) -> str:
        """spec 4.3: sha256 of the adapted modules' original base weights (W0, also while merged),
        in ``name``'s module order."""
        name = name or self._state.active
        self._require(name)
        layers = {p: self.base_model.get_submodule(p) for p in self.vera_modules[name]}
        mods = [ModuleSpec(p, l.in_features, l.out_features, l.layout) for p, l in layers.items()]
        return quantized.fingerprint(layers, mods, _np)  # spec 4.3; a quantized layer: spec 7.2

    def merge(self, name: str | None = None, restore: str | None = None, max_output_change: float | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base weights (spec 3.5).

        Delta W is computed in float32 or wider and added to W0 before one rounding to the weight's
        dtype. ``MergeError`` (every weight unchanged) when a merged weight would not be finite.
        ``restore`` (default: each layer's ``restore``, "auto"): what each merged layer keeps so that
        unmerge() restores W0 bit for bit (README "Merging"): the elements fl(W - Delta W) misses, or a
        full copy when those would take more than half the weight's bytes; "none" keeps nothing."""
        name = name or self._state.active
        self._require(name)
        done = []
        for path, layer in self.base_model.named_modules():
            if isinstance(layer, VeraLayer) and name in layer.proj and name not in layer.merged:
                try:
                    layer.merge(name, restore, max_output_change)  # the bound: quantized bases (spec 7.5)
                except MergeError as e:
                    for other in done:
                        other.unmerge(name)
                    raise type(e)(f"{path}: {e}") from None  # the same type (RequantizationError, spec 7.5)
                done.append(layer)

    def unmerge(self) -> None:
        """Restore every merged layer's original weight W0, bit for bit (spec 3.6)."""
        for layer in self.vera_layers():
            layer.unmerge()

    def merge_and_unload(self, dtype: torch.dtype | None = None, max_output_change: float | None = None) -> nn.Module:
        """Merge the active adapter and return the plain model, task-head copies included; nothing is
        kept to unmerge. ``dtype``: a full-precision model in that dtype, quantized layers dequantized
        first (spec 7.6); ``max_output_change``: the bound for merging into quantized weights (spec 7.5)."""
        if dtype is not None:
            return quantized.full_precision(self, dtype)
        self.merge(restore="none", max_output_change=max_output_change)
        return self.unwrapped(self._state.active)

    def adapter_view(self, name: str | None = None) -> AdapterView:
        """A read-only view of adapter ``name`` (default: the active one) for exporters (see ``views``)."""
        name = name or self._state.active
        self._require(name)
        layers, projections = [], {}
        for path in self.vera_modules[name]:
            layer = self.base_model.get_submodule(path)
            group = layer.proj[name].group
            if group not in projections:
                projections[group] = layer.projection(name, "cpu")
            layers.append(LayerView(path, layer.base_layer, layer.in_features, layer.out_features, layer.layout,
                                    group, layer.vera_lambda_d[name].detach(), layer.vera_lambda_b[name].detach()))
        heads = [HeadView(path, w.copies[name], w.original_module)
                 for path, w in self.base_model.named_modules()
                 if isinstance(w, ModulesToSave) and name in w.copies]
        return AdapterView(name, self.vera_configs[name], layers, heads, projections)

    def unwrapped(self, keep: str | None = None) -> nn.Module:
        """The base model with every VeraLayer replaced by its base layer and every ModulesToSave by
        ``keep``'s copy (or the original module when ``keep`` is None or has no copy there).

        Changes this VeraModel's own modules in place (no copy): use it on a copy, or last."""
        if keep is not None:
            self._require(keep)
        for path, module in list(self.base_model.named_modules()):
            if isinstance(module, VeraLayer):
                self.replace_module(path, module.base_layer)
            elif isinstance(module, ModulesToSave):
                self.replace_module(path, module.module_for(keep))
        return self.base_model

    # -- files ------------------------------------------------------------------------------------
    def to_adapter(self, name: str | None = None, *, fingerprint: bool = True, packed: bool = False,
                   vector_dtype: str | None = None, base_model_name: str | None = None,
                   provenance: dict | None = None, base_model: dict | None = None) -> Adapter:
        """The spec's in-memory adapter (vera_ref.Adapter) for ``name``; ``packed`` selects the packed
        tensor layout of spec 4.4 (two tensors instead of two per module: the smallest file).
        ``base_model``: the file's ``base_model`` fields to write as given (``name``, ``revision``,
        ``fingerprint``, spec 4.3; e.g. those of a loaded file, kept through a resave); a fingerprint given
        there is written instead of the one computed from this model's weights (``fingerprint=True``),
        ``base_model_name`` overrides its name.
        On an FSDP2-sharded model every rank must call it (sharded tensors are gathered whole)."""
        name = name or self._state.active
        self._require(name)
        cfg = self.vera_configs[name]
        layers = [(p, self.base_model.get_submodule(p)) for p in self.vera_modules[name]]
        base = {k: v for k, v in (base_model or {}).items() if v is not None}
        if base_model_name:
            base["name"] = base_model_name
        if fingerprint and "fingerprint" not in base:
            base["fingerprint"] = self.base_fingerprint(name)
        gen = generators.get(cfg.generator)
        acfg = AdapterConfig(
            r=cfg.r, modules=[ModuleSpec(p, l.in_features, l.out_features, l.layout) for p, l in layers],
            generator=cfg.generator, seed=cfg.seed if gen.has_seed else None, sharing=cfg.sharing,
            vector_dtype=DTYPE_NAMES[cfg.vector_dtype], tensor_layout="packed" if packed else "per-module",
            d_initial=cfg.d_initial, dropout=cfg.dropout,
            base_model=base or None, provenance=quantized.provenance(provenance, [l for _, l in layers]))
        ad = Adapter(acfg, {p: _np(l.vera_lambda_d[name]) for p, l in layers},
                     {p: _np(l.vera_lambda_b[name]) for p, l in layers})
        if vector_dtype is not None and vector_dtype != acfg.vector_dtype:  # store the vectors rounded (spec 4.5)
            from vera_ref.dtypes import compute_dtype, round_to
            acfg.vector_dtype = vector_dtype
            for d in (ad.lambda_d, ad.lambda_b):
                for k in d:
                    d[k] = round_to(d[k], vector_dtype).astype(compute_dtype(vector_dtype))
        if not gen.generates:
            for g, _, _ in acfg.groups():
                spec = next(l.proj[name] for _, l in layers if l.proj[name].group == g)
                A, B = self._store.get(spec, torch.device("cpu"))
                ad.stored[g] = (_np(A), _np(B))
        for wpath, w in ((p, m) for p, m in self.base_model.named_modules() if isinstance(m, ModulesToSave)):
            if name in w.copies:
                for pname, t in w.copies[name].state_dict().items():
                    ad.extra[f"{wpath}.{pname}"] = (_np(t), DTYPE_NAMES.get(t.dtype, "float32"))
        return ad

    def save_adapter(self, path: str | os.PathLike, name: str | None = None, **kwargs: Any) -> None:
        """Write adapter ``name`` as a spec file (spec 4), atomically; A and B only if ``stored``.

        On a model sharded with FSDP2 (DTensor vectors) this is a collective every rank calls: rank 0
        writes the same bytes one process writes for the same vectors (``distributed.save_adapter``)."""
        from . import distributed
        if distributed.initialized() and distributed.has_sharded_vectors(self):
            distributed.save_adapter(self, path, name, **kwargs)
            return
        vera_ref.save_adapter(self.to_adapter(name, **kwargs), path)

    def load_adapter(self, path: str | os.PathLike | Adapter, name: str = "default", *,
                     check_fingerprint: bool = True, activate: bool = True, vector_dtype: str | None = None) -> str:
        """Load a spec file (or a vera_ref.Adapter) as adapter ``name``, after checking that every module
        exists with the same dimensions and layout (and the base fingerprint, when the file has one).

        Every problem is an ``AdapterFileError`` (the file) or a ``ModelMismatchError`` (the file and
        this model disagree), raised before anything changes: a failed load leaves the model as it was.
        Extra tensors are accepted only as whole modules the adapter saves (a task head), never for
        an adapted layer or a module holding one.

        ``vector_dtype``: hold the vectors in this dtype instead of the file's (e.g. "float32" for a
        file stored in bfloat16: exact, and the adapter math then runs in float32)."""
        if not isinstance(path, (Adapter, str, os.PathLike)):
            raise AdapterFileError("path", f"expected a file path or a vera_ref.Adapter, got {type(path).__name__}")
        ad = path if isinstance(path, Adapter) else vera_ref.load_adapter(path)
        if name in self.vera_configs:
            raise AdapterNameError(f"adapter {name!r} already exists")
        if activate and any(layer.merged for layer in self.vera_layers()):
            raise MergeError("another adapter is merged; unmerge() before loading an adapter to activate "
                             "(or load with activate=False)")
        cfg = ad.config
        for m in cfg.modules:
            try:
                mod = self.base_model.get_submodule(m.name)
            except AttributeError:
                raise ModelMismatchError(f"modules: {m.name!r} is not in this model") from None
            if _inside_head_wrapper(m.name) or ".base_layer" in m.name or isinstance(mod, ModulesToSave):
                raise ModelMismatchError(f"modules: {m.name!r} is a module saved whole (modules_to_save) or part "
                                         f"of an adapted layer, not a layer VeRA can adapt")
            base = mod.base_layer if isinstance(mod, VeraLayer) else mod
            quantized.check_targets([(m.name, base)])  # spec 7.1
            if not adaptable(base):
                raise ModelMismatchError(f"modules: {m.name!r} is a {type(base).__name__}, not an nn.Linear or Conv1D")
            got = layer_dims(base)
            if got != (m.in_features, m.out_features, m.layout):
                raise ModelMismatchError(
                    f"modules: {m.name!r} is (in={got[0]}, out={got[1]}, {got[2]}) in this model but "
                    f"(in={m.in_features}, out={m.out_features}, {m.layout}) in the adapter")
        heads = self._head_targets(ad)
        if check_fingerprint and cfg.base_model and "fingerprint" in cfg.base_model:
            self._check_fingerprint(cfg)
        held = vector_dtype or cfg.vector_dtype
        head_re = "|".join(re.escape(h) for h in sorted(heads))
        try:
            config = VeraConfig(r=cfg.r, target_modules=[m.name for m in cfg.modules],
                                seed=cfg.seed if cfg.seed is not None else 0, d_initial=cfg.d_initial,
                                dropout=cfg.dropout, sharing=cfg.sharing, generator=cfg.generator,
                                vector_dtype=held, modules_to_save=head_re or None)
        except ConfigError as e:
            if vector_dtype is not None and e.field == "vector_dtype":
                raise
            raise AdapterFileError(e.field, e.problem) from None
        vectors = {m.name: (_vector(ad.lambda_d, m.name, "lambda_d", (cfg.r,), config.vector_dtype),
                            _vector(ad.lambda_b, m.name, "lambda_b", (m.out_features,), config.vector_dtype))
                   for m in cfg.modules}
        stored = None
        if not generators.get(cfg.generator).generates:
            stored = {}
            for g, n_in, n_out in cfg.groups():
                if g not in ad.stored:
                    raise AdapterFileError(stored_keys(g, cfg.sharing)[0], "missing")
                ka, kb = stored_keys(g, cfg.sharing)
                A, B = ad.stored[g]
                stored[g] = (_vector({ka: A}, ka, "", (cfg.r, n_in), torch.float32),
                             _vector({kb: B}, kb, "", (n_out, cfg.r), torch.float32))
        head_values = self._head_values(heads)
        self._head_paths(config, [m.name for m in cfg.modules])  # raises on a head that holds an adapted layer
        # -- checked: change the model ----------------------------------------------------------
        try:
            self.add_adapter(name, config, modules=[m.name for m in cfg.modules], stored=stored)
            with torch.no_grad():
                for m in cfg.modules:
                    layer = self.base_model.get_submodule(m.name)
                    layer.vera_lambda_d[name].copy_(vectors[m.name][0])
                    layer.vera_lambda_b[name].copy_(vectors[m.name][1])
                for head, sd in head_values.items():
                    self.base_model.get_submodule(head).copies[name].load_state_dict(sd)
            if activate:
                self.set_adapter(name)
        except BaseException:
            if name in self.vera_configs:  # not reached by any checked problem: a last line of defence
                self._discard(name)
            raise
        return name

    def _check_fingerprint(self, cfg: AdapterConfig) -> None:
        """spec 4.3: the adapted modules' original weights must give the file's fingerprint."""
        layers = {m.name: self.base_model.get_submodule(m.name) for m in cfg.modules}
        weights = {n: (l.original_weight if isinstance(l, VeraLayer) else l.weight) for n, l in layers.items()}
        if not quantized.fingerprint_comparable(cfg.provenance, layers.values()):
            return  # spec 7.4: trained on another kind of base (quantized / full precision): warned, loaded
        mine = quantized.fingerprint(layers, cfg.modules, _np)  # spec 4.3; a quantized layer: spec 7.2
        want = cfg.base_model["fingerprint"]
        if mine == want:
            return
        msg = f"base_model.fingerprint: this model's weights give {mine[:16]}..., the adapter was trained on {want[:16]}..."
        cast = sorted({str(w.dtype).replace("torch.", "") for w in weights.values()} - {"float32"})
        if cast:
            msg += (f" (this model's adapted weights are {', '.join(cast)}; the fingerprint is of the float32 "
                    f"weights as trained, so a cast model never matches: load before casting, or pass "
                    f"check_fingerprint=False)")
        raise ModelMismatchError(msg)

    def _head_targets(self, ad: Adapter) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
        """Extra tensors grouped by the module that owns them, checked against the model: each owner is
        a module saved whole (every tensor of its state_dict), not the root, not an adapted layer, not
        inside one and not holding one."""
        wrappers = {p for p, m in self.base_model.named_modules() if isinstance(m, ModulesToSave)}
        adapted = {m.name for m in ad.config.modules} | {
            p for p, m in self.base_model.named_modules() if isinstance(m, VeraLayer)}
        heads: dict[str, dict[str, tuple[np.ndarray, str]]] = {}
        for key, (arr, dtype) in ad.extra.items():
            owner = next((w for w in wrappers if key.startswith(w + ".")), None)
            owner, pname = (owner, key[len(owner) + 1:]) if owner is not None else key.rpartition(".")[::2]
            if not owner:
                raise ModelMismatchError(f"{key}: an extra tensor must belong to a submodule, not the model root")
            if _inside_head_wrapper(owner) or ".base_layer" in owner:
                raise ModelMismatchError(f"{key}: names the inside of a wrapper, not a module of the base model")
            clash = next((a for a in sorted(adapted) if a == owner or a.startswith(owner + ".")
                          or owner.startswith(a + ".")), None)
            if clash is not None:
                raise ModelMismatchError(f"{key}: {clash!r} is a layer VeRA adapts; extra tensors cannot replace "
                                         f"an adapted layer's weights")
            try:
                mod = self.base_model.get_submodule(owner)
            except AttributeError:
                raise ModelMismatchError(f"{key}: the model has no module {owner!r} for this extra tensor") from None
            ref = mod.original_module if isinstance(mod, ModulesToSave) else mod
            sd = ref.state_dict()
            if pname not in sd:
                raise ModelMismatchError(f"{key}: module {owner!r} has no tensor {pname!r}")
            if tuple(sd[pname].shape) != tuple(np.shape(arr)):
                raise ModelMismatchError(f"{key}: shape {list(np.shape(arr))} in the adapter but "
                                         f"{list(sd[pname].shape)} in the model")
            heads.setdefault(owner, {})[pname] = (arr, dtype)
        for owner, params in heads.items():
            mod = self.base_model.get_submodule(owner)
            missing = sorted(set((mod.original_module if isinstance(mod, ModulesToSave) else mod).state_dict())
                             - set(params))
            if missing:
                raise ModelMismatchError(f"{owner}.{missing[0]}: missing; the adapter saves part of module {owner!r} "
                                         f"but a saved module (modules_to_save) must be saved whole")
        return heads

    def _head_values(self, heads: dict[str, dict[str, tuple[np.ndarray, str]]]) -> dict[str, dict[str, torch.Tensor]]:
        """The extra tensors as tensors of the model's dtypes, refusing values that do not fit them."""
        out = {}
        for owner, params in heads.items():
            mod = self.base_model.get_submodule(owner)
            sd = (mod.original_module if isinstance(mod, ModulesToSave) else mod).state_dict()
            out[owner] = {}
            for pname, (arr, _) in params.items():
                ref = sd[pname]
                t = torch.from_numpy(np.array(arr, dtype=np.float64 if ref.is_floating_point() else None))
                t = t.to(ref.dtype)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ModelMismatchError(f"{owner}.{pname}: values are not finite in "
                                             f"{str(ref.dtype).replace('torch.', '')}, this model's dtype for it")
                out[owner][pname] = t
        return out


def _layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) of every nn.Linear / Conv1D VeRA can adapt: an adapted one by its VeraLayer's
    path, none inside a VeraLayer or a modules_to_save wrapper."""
    for path, module in model.named_modules():
        if isinstance(module, VeraLayer) or (
                adaptable(module) and ".base_layer" not in path and not _inside_head_wrapper(path)):
            yield path, module


def linear_layers(model: nn.Module) -> list[str]:
    """Dotted paths of the nn.Linear / Conv1D layers of ``model`` (a VeraModel: of its base model)
    that ``target_modules`` can select."""
    return [p for p, _ in _layers(model.base_model if isinstance(model, VeraModel) else model)]


def linear_name_endings(model: nn.Module) -> list[str]:
    """The last dotted segments of ``linear_layers(model)``, sorted, each once: what a
    ``target_modules`` entry can name (``["query", "value", ...]``)."""
    return sorted({p.rpartition(".")[2] for p in linear_layers(model)})


def unmatched_targets(model: nn.Module, patterns: Sequence[str] | str) -> list[str]:
    """The entries of ``patterns`` (a target_modules list, or one regex, or ``"all-linear"``) that
    select no layer of ``linear_layers(model)``, in the given order."""
    from .config import ALL_LINEAR, entry_matches
    paths = linear_layers(model)
    if isinstance(patterns, str):
        if patterns.lower() == ALL_LINEAR:
            return [] if paths else [patterns]
        return [] if any(re.fullmatch(patterns, p) for p in paths) else [patterns]
    return [e for e in patterns if not any(entry_matches(p, e) for p in paths)]


def check_targets(model: nn.Module, config: VeraConfig) -> None:
    """ConfigError unless every target_modules entry (or the regex) selects a layer of ``model`` and
    every modules_to_save entry a module; skipped for ``config.allow_unmatched``."""
    from .config import entry_matches
    if config.allow_unmatched:
        return
    base = model.base_model if isinstance(model, VeraModel) else model
    bad = unmatched_targets(base, config.target_modules)
    if bad:
        raise ConfigError("target_modules", f"{_entry(bad[0], config.target_modules)} matches no nn.Linear or Conv1D "
                          f"layer of this model; {_endings(linear_name_endings(base))}")
    if config.modules_to_save:
        paths = [p for p, _ in base.named_modules() if p and not _inside_head_wrapper(p) and ".base_layer" not in p]
        saves = config.modules_to_save
        if isinstance(saves, str):
            bad = [] if any(re.fullmatch(saves, p) for p in paths) else [saves]
        else:
            bad = [e for e in saves if not any(entry_matches(p, e) for p in paths)]
        if bad:
            raise ConfigError("modules_to_save", f"{_entry(bad[0], saves)} matches no module of this model; its "
                              f"modules' names end in: {_names(sorted({p.rpartition('.')[2] for p in paths}))}")


def _entry(entry: str, patterns: Sequence[str] | str) -> str:
    if isinstance(patterns, str) and entry.lower() != "all-linear":
        return f"the regular expression {entry!r} (full-matched against each dotted path)"
    return repr(entry)


def _endings(names: list[str]) -> str:
    return f"its linear layers' names end in: {_names(names)}" if names else "it has no nn.Linear or Conv1D layer"


def _names(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _all_linear_skips(model: nn.Module, config: VeraConfig, layers: list[tuple[str, nn.Module]]) -> set[str]:
    """PEFT's "all-linear" leaves out the output embeddings (``get_output_embeddings()``) and
    every layer in or holding a modules_to_save module."""
    skip = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = None
    if callable(get_out):
        try:
            out = get_out()
        except Exception:  # noqa: BLE001 - a model without output embeddings may raise anything
            out = None
    for p, m in layers:
        base = m.base_layer if isinstance(m, VeraLayer) else m
        if out is not None and (m is out or base is out):
            skip.add(p)
        if config.modules_to_save and any(config.saves(q) for q in _prefixes(p)):
            skip.add(p)
    return skip


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _inside_head_wrapper(path: str) -> bool:
    """Is ``path`` inside a ModulesToSave (its original or one of its per-adapter copies)?"""
    return "original_module" in path or ".copies." in path


def get_vera_model(model: nn.Module, config: VeraConfig, adapter_name: str = "default") -> VeraModel:
    """Wrap ``model``: freeze it, adapt every module ``config`` targets, return the VeraModel."""
    return VeraModel(model, config, adapter_name)
