"""PEFT VeRA checkpoints to and from a VeraModel (README "PyTorch"; conversion rules in vera_ref.peft_interop).

Both directions hand ``vera_ref.peft_interop`` every module path of the bare model, so PEFT's
``target_modules`` rule is checked against the real model: an export that PEFT would apply to
more or fewer modules, or an import whose projections PEFT would regenerate at other dimensions,
is refused or converted with the projections PEFT uses, never silently changed.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Iterator

from torch import nn

from .heads import ModulesToSave
from .layer import VeraLayer, adaptable, layer_dims


# VeraModel -> {adapter: provenance of the PEFT checkpoint it came from}, so that save_peft writes the
# projection_prng_key of kept projections back (VeraModel.to_adapter starts a fresh provenance)
_PROVENANCE: "weakref.WeakKeyDictionary[Any, dict[str, dict]]" = weakref.WeakKeyDictionary()


def plain_modules(vm) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of ``vm``'s base model as it is without adapters: a VeRA layer is its base
    layer, a task-head wrapper its original module (PEFT matches these paths)."""
    def walk(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        if isinstance(module, VeraLayer):
            module = module.base_layer
        elif isinstance(module, ModulesToSave):
            module = module.original_module
        yield prefix, module
        for name, child in module.named_children():
            yield from walk(f"{prefix}.{name}" if prefix else name, child)
    yield from walk("", vm.base_model)


def model_modules(vm) -> dict[str, tuple[int, int] | None]:
    """Every module path of the bare model -> (in_features, out_features) if nn.Linear / Conv1D, else None."""
    return {p: (layer_dims(m)[:2] if adaptable(m) else None) for p, m in plain_modules(vm) if p}


def load_peft(vm, directory: str | os.PathLike, name: str = "default", *, keep_projections: bool = False,
              **kwargs: Any) -> str:
    """Load a PEFT VeRA checkpoint directory into ``vm`` as adapter ``name``.

    Dimensions, and the projections PEFT would use, come from the model (``peft_to_adapter`` with
    ``model_modules``). ``keep_projections``: stored projections stay stored even when they are
    PEFT's own draws. Other keywords go to ``VeraModel.load_adapter`` (e.g. ``vector_dtype``).
    """
    from vera_ref.peft_interop import peft_to_adapter
    ad = peft_to_adapter(directory, keep_projections=keep_projections, model_modules=model_modules(vm))
    name = vm.load_adapter(ad, name, **kwargs)
    _PROVENANCE.setdefault(vm, {})[name] = dict(ad.config.provenance)
    return name


def save_peft(vm, directory: str | os.PathLike, name: str | None = None, *, keep_projections: bool = False,
              base_model_name_or_path: str | None = None) -> None:
    """Write adapter ``name`` of ``vm`` in PEFT's layout, after checking PEFT selects exactly its modules
    on this model. Projections are stored unless the generator is peft-mt19937 (and not ``keep_projections``)."""
    from vera_ref.peft_interop import adapter_to_peft
    name = name or vm.active_adapter
    prov = _PROVENANCE.get(vm, {}).get(name)
    adapter_to_peft(vm.to_adapter(name, fingerprint=False, provenance=prov), directory, keep_projections=keep_projections,
                    base_model_name_or_path=base_model_name_or_path, model_modules=list(model_modules(vm)))
