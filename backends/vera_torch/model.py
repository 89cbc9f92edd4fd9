"""VeraModel: VeRA adapters on any nn.Module (DESIGN 4; spec 2-4).

    model = get_vera_model(base, VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    model(**batch)                        # every argument goes to the wrapped model
    model(**batch, adapter_ids=ids)       # one adapter per row (serving)
    model.save_adapter("a.safetensors")   # the spec's file: vectors only, A and B from the seed
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import vera_ref
from vera_ref.adapter import Adapter, base_fingerprint
from vera_ref.errors import ModelMismatchError
from vera_ref.metadata import AdapterConfig, ModuleSpec

from .config import DTYPE_NAMES, VeraConfig
from .layer import ModulesToSave, ProjectionStore, ProjSpec, State, VeraLayer, adaptable, layer_dims
from .views import AdapterView, HeadView, LayerView


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
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
        self._fingerprints: dict[str, str] = {}  # per adapter, taken before the first merge
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        if config is not None:
            self.add_adapter(adapter_name, config)
            self.set_adapter(adapter_name)

    @classmethod
    def from_adapter(cls, model: nn.Module, path: str | os.PathLike | Adapter, name: str = "default",
                     **kwargs: Any) -> "VeraModel":
        """Wrap ``model`` with the adapter in a spec file (checked against the model first)."""
        vm = cls(model)
        vm.load_adapter(path, name, **kwargs)
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
        found = []
        for path, module in self.base_model.named_modules():
            # a layer adapted before, or an adaptable one not already inside a wrapper
            if not isinstance(module, VeraLayer) and (
                    ".base_layer" in path or _inside_head_wrapper(path) or not adaptable(module)):
                continue
            if (path in exact) if exact is not None else config.targets(path):
                found.append((path, module))
        if exact is not None:
            missing = sorted(set(exact) - {p for p, _ in found})
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

    _set_module = replace_module

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

    def add_adapter(self, name: str, config: VeraConfig, *, modules: Sequence[str] | None = None,
                    stored: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Add adapter ``name`` on every module ``config`` targets (or exactly ``modules``, in that order).

        Adapters may differ in r, seed and generator; each gets its own projections.
        """
        if name in self.vera_configs:
            raise ValueError(f"adapter {name!r} already exists")
        targets = self._targets(config, modules)
        if not targets:
            raise ValueError(f"no nn.Linear or Conv1D module matches target_modules={config.target_modules!r}")
        dims = [layer_dims(m.base_layer if isinstance(m, VeraLayer) else m) for _, m in targets]
        n_in, n_out = max(d[0] for d in dims), max(d[1] for d in dims)  # spec 2.2: PEFT's rule
        seed = None if config.generator == "stored" else config.seed
        for i, ((path, module), (fi, fo, _)) in enumerate(zip(targets, dims)):
            if config.sharing == "shared":
                spec = ProjSpec(config.generator, seed, config.r, n_in, n_out, 0, name if seed is None else "")
            else:
                spec = ProjSpec(config.generator, seed, config.r, fi, fo, i + 1, name if seed is None else "")
            if config.generator == "stored" and spec.group in (0, i + 1) and not hasattr(
                    self.vera_projections, self._store.buffer_names(spec)[0]):
                if stored is not None:
                    A, B = stored[spec.group]
                else:  # a fresh stored adapter: draw its pair with the spec's generator, then keep it
                    from .philox import projection
                    A, B = projection(config.seed, spec.r, spec.n_in, spec.n_out, spec.group)
                self._store.put_stored(spec, torch.as_tensor(A), torch.as_tensor(B))
            if not isinstance(module, VeraLayer):
                module = VeraLayer(module, self._state, self._store)
                self.replace_module(path, module)
            module.add_adapter(name, spec, config.r, config.d_initial, config.dropout, config.vector_dtype)
        if config.modules_to_save:
            for path, module in list(self.base_model.named_modules()):
                if isinstance(module, ModulesToSave) and config.saves(path):
                    module.add_adapter(name)
                elif (config.saves(path) and not isinstance(module, (VeraLayer, ModulesToSave))
                      and not _inside_head_wrapper(path)):
                    wrapper = ModulesToSave(module, self._state)
                    self.replace_module(path, wrapper)
                    wrapper.add_adapter(name)
        self.vera_configs[name] = config
        self.vera_modules[name] = [p for p, _ in targets]

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if any(name in layer.merged for layer in self.vera_layers()):
            raise RuntimeError(f"adapter {name!r} is merged; unmerge() first")
        for layer in self.vera_layers():
            layer.remove_adapter(name)
        for w in self.modules_to_save():
            if name in w.copies:
                del w.copies[name]
        self._store.drop(name)
        del self.vera_configs[name], self.vera_modules[name]
        if self._state.active == name:
            self._state.active = None

    def _require(self, name: str) -> None:
        if name not in self.vera_configs:
            raise KeyError(f"no adapter named {name!r} (have: {', '.join(self.vera_configs) or 'none'})")

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
            raise RuntimeError("another adapter is merged; unmerge() before switching")
        self._state.active = name
        for layer in self.vera_layers():
            for n, p in list(layer.vera_lambda_d.items()) + list(layer.vera_lambda_b.items()):
                p.requires_grad_(n == name)
        for w in self.modules_to_save():
            for n, c in w.copies.items():
                for p in c.parameters():
                    p.requires_grad_(n == name)

    def vera_layers(self) -> Iterator[VeraLayer]:
        return (m for m in self.base_model.modules() if isinstance(m, VeraLayer))

    def modules_to_save(self) -> Iterator[ModulesToSave]:
        return (m for m in self.base_model.modules() if isinstance(m, ModulesToSave))

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model: merged adapters are unmerged for the block and merged back after."""
        merged = {layer: list(layer.merged) for layer in self.vera_layers() if layer.merged}
        for layer in merged:
            layer.unmerge()
        self._state.disabled = True
        try:
            yield
        finally:
            self._state.disabled = False
            for layer, names in merged.items():
                for n in names:
                    layer.merge(n)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_ids: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        st = self._state
        if adapter_ids is not None:
            ids = list(adapter_ids)
            for n in set(ids) - {None}:
                self._require(n)
            st.groups = {n: torch.tensor([i for i, a in enumerate(ids) if a == n], dtype=torch.long)
                         for n in dict.fromkeys(ids)}
            st.batch = len(ids)
        st.h_cache = {}
        try:
            return self.base_model(*args, **kwargs)
        finally:
            st.h_cache = None
            st.groups = None
            st.batch = None

    # -- merging -----------------------------------------------------------------------------------
    def base_fingerprint(self, name: str | None = None) -> str:
        """spec 4.3: sha256 of the adapted modules' base weights, in ``name``'s module order."""
        name = name or self._state.active
        self._require(name)
        if any(layer.merged for layer in self.vera_layers()):
            if name not in self._fingerprints:
                raise RuntimeError("the fingerprint of a merged model is unknown; unmerge() first")
            return self._fingerprints[name]
        layers = {p: self.base_model.get_submodule(p) for p in self.vera_modules[name]}
        mods = [ModuleSpec(p, l.in_features, l.out_features, l.layout) for p, l in layers.items()]
        return base_fingerprint({p: _np(l.base_layer.weight) for p, l in layers.items()}, mods)

    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base weights (spec 3.5)."""
        name = name or self._state.active
        self._require(name)
        if not any(layer.merged for layer in self.vera_layers()):
            self._fingerprints = {n: self.base_fingerprint(n) for n in self.vera_configs}
        for layer in self.vera_layers():
            if name in layer.proj:
                layer.merge(name)

    def unmerge(self) -> None:
        """Subtract every merged adapter from the base weights (spec 3.6)."""
        for layer in self.vera_layers():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapter and return the plain model, task-head copies included."""
        self.merge()
        return self.unwrapped(self._state.active)

    # -- files ------------------------------------------------------------------------------------
    def to_adapter(self, name: str | None = None, *, fingerprint: bool = True, packed: bool = False,
                   vector_dtype: str | None = None, base_model_name: str | None = None,
                   provenance: dict | None = None) -> Adapter:
        """The spec's in-memory adapter (vera_ref.Adapter) for ``name``; ``packed`` selects the packed
        tensor layout of spec 4.4 (two tensors instead of two per module: the smallest file)."""
        name = name or self._state.active
        self._require(name)
        cfg = self.vera_configs[name]
        layers = [(p, self.base_model.get_submodule(p)) for p in self.vera_modules[name]]
        base = {}
        if base_model_name:
            base["name"] = base_model_name
        if fingerprint:
            base["fingerprint"] = self.base_fingerprint(name)
        acfg = AdapterConfig(
            r=cfg.r, modules=[ModuleSpec(p, l.in_features, l.out_features, l.layout) for p, l in layers],
            generator=cfg.generator, seed=None if cfg.generator == "stored" else cfg.seed, sharing=cfg.sharing,
            vector_dtype=DTYPE_NAMES[cfg.vector_dtype], tensor_layout="packed" if packed else "per-module",
            d_initial=cfg.d_initial, dropout=cfg.dropout,
            base_model=base or None, provenance=dict(provenance or {}))
        ad = Adapter(acfg, {p: _np(l.vera_lambda_d[name]) for p, l in layers},
                     {p: _np(l.vera_lambda_b[name]) for p, l in layers})
        if vector_dtype is not None and vector_dtype != acfg.vector_dtype:  # store the vectors rounded (spec 4.5)
            from vera_ref.dtypes import compute_dtype, round_to
            acfg.vector_dtype = vector_dtype
            for d in (ad.lambda_d, ad.lambda_b):
                for k in d:
                    d[k] = round_to(d[k], vector_dtype).astype(compute_dtype(vector_dtype))
        if cfg.generator == "stored":
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
        """Write adapter ``name`` as a spec file (spec 4), atomically; A and B only if ``stored``."""
        vera_ref.save_adapter(self.to_adapter(name, **kwargs), path)

    def load_adapter(self, path: str | os.PathLike | Adapter, name: str = "default", *,
                     check_fingerprint: bool = True, activate: bool = True, vector_dtype: str | None = None) -> str:
        """Load a spec file (or a vera_ref.Adapter) as adapter ``name``, after checking that every module
        exists with the same dimensions and layout (and the base fingerprint, when the file has one).

        ``vector_dtype``: hold the vectors in this dtype instead of the file's (e.g. "float32" for a
        file stored in bfloat16: exact, and the adapter math then runs in float32)."""
        ad = path if isinstance(path, Adapter) else vera_ref.load_adapter(path)
        cfg = ad.config
        for m in cfg.modules:
            try:
                mod = self.base_model.get_submodule(m.name)
            except AttributeError:
                raise ModelMismatchError(f"modules: {m.name!r} is not in this model") from None
            base = mod.base_layer if isinstance(mod, VeraLayer) else mod
            if not adaptable(base):
                raise ModelMismatchError(f"modules: {m.name!r} is a {type(base).__name__}, not an nn.Linear or Conv1D")
            got = layer_dims(base)
            if got != (m.in_features, m.out_features, m.layout):
                raise ModelMismatchError(
                    f"modules: {m.name!r} is (in={got[0]}, out={got[1]}, {got[2]}) in this model but "
                    f"(in={m.in_features}, out={m.out_features}, {m.layout}) in the adapter")
        heads = self._head_targets(ad)
        if check_fingerprint and cfg.base_model and "fingerprint" in cfg.base_model:
            layers = {m.name: self.base_model.get_submodule(m.name) for m in cfg.modules}
            weights = {n: _np((l.base_layer if isinstance(l, VeraLayer) else l).weight) for n, l in layers.items()}
            if any(isinstance(l, VeraLayer) and l.merged for l in layers.values()):
                raise ModelMismatchError("base_model.fingerprint: cannot check against merged weights; unmerge() first")
            mine = base_fingerprint(weights, cfg.modules)
            if mine != cfg.base_model["fingerprint"]:
                raise ModelMismatchError(f"base_model.fingerprint: this model's weights give {mine[:16]}..., the "
                                         f"adapter was trained on {cfg.base_model['fingerprint'][:16]}...")
        # the vectors are held in the file's dtype unless asked otherwise (float32 holds float16/bfloat16 exactly)
        held = vector_dtype or cfg.vector_dtype
        config = VeraConfig(r=cfg.r, target_modules=[m.name for m in cfg.modules], seed=cfg.seed or 0,
                            d_initial=cfg.d_initial, dropout=cfg.dropout, sharing=cfg.sharing,
                            generator=cfg.generator, vector_dtype=held,
                            modules_to_save=sorted(heads) or None)
        stored = {g: (torch.from_numpy(np.ascontiguousarray(A)), torch.from_numpy(np.ascontiguousarray(B)))
                  for g, (A, B) in ad.stored.items()} if cfg.generator == "stored" else None
        self.add_adapter(name, config, modules=[m.name for m in cfg.modules], stored=stored)
        with torch.no_grad():
            for m in cfg.modules:
                layer = self.base_model.get_submodule(m.name)
                layer.vera_lambda_d[name].copy_(torch.from_numpy(np.asarray(ad.lambda_d[m.name], dtype=np.float64)))
                layer.vera_lambda_b[name].copy_(torch.from_numpy(np.asarray(ad.lambda_b[m.name], dtype=np.float64)))
            for head, params in heads.items():
                copy = self.base_model.get_submodule(head).copies[name]
                sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).to(copy.state_dict()[k].dtype)
                      for k, v in params.items()}
                copy.load_state_dict(sd)
        if activate:
            self.set_adapter(name)
        return name

    def _head_targets(self, ad: Adapter) -> dict[str, dict[str, np.ndarray]]:
        """Extra tensors grouped by the module that owns them, checked against the model."""
        heads: dict[str, dict[str, np.ndarray]] = {}
        for key, (arr, _) in ad.extra.items():
            owner, _, pname = key.rpartition(".")
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
            heads.setdefault(owner, {})[pname] = arr
        return heads


def _inside_head_wrapper(path: str) -> bool:
    """Is ``path`` inside a ModulesToSave (its original or one of its per-adapter copies)?"""
    return "original_module" in path or ".copies." in path


def get_vera_model(model: nn.Module, config: VeraConfig, adapter_name: str = "default") -> VeraModel:
    """Wrap ``model``: freeze it, adapt every module ``config`` targets, return the VeraModel."""
    return VeraModel(model, config, adapter_name)
