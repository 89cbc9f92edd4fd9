"""PEFT VeRA checkpoints to and from a VeraModel (README "PyTorch"; conversion rules in vera_ref.peft_interop)."""
from __future__ import annotations

import os

from vera_ref.errors import ModelMismatchError

from .layer import VeraLayer, layer_dims


def load_peft(vm, directory: str | os.PathLike, name: str = "default") -> str:
    """Load a PEFT VeRA checkpoint directory into ``vm`` as adapter ``name`` (dimensions from the model)."""
    from vera_ref.peft_interop import PREFIX, peft_to_adapter, read_peft
    _, tensors = read_peft(directory)
    dims = {}
    for k in tensors:
        if k.startswith(PREFIX) and k.endswith(".vera_lambda_d"):
            path = k[len(PREFIX):-len(".vera_lambda_d")]
            try:
                mod = vm.base_model.get_submodule(path)
            except AttributeError:
                raise ModelMismatchError(f"modules: {path!r} is not in this model") from None
            fi, fo, _ = layer_dims(mod.base_layer if isinstance(mod, VeraLayer) else mod)
            dims[path] = (fi, fo)
    return vm.load_adapter(peft_to_adapter(directory, dims=dims), name)


def save_peft(vm, directory: str | os.PathLike, name: str | None = None) -> None:
    """Write adapter ``name`` of ``vm`` in PEFT's checkpoint layout (projections stored unless peft-mt19937)."""
    from vera_ref.peft_interop import adapter_to_peft
    adapter_to_peft(vm.to_adapter(name, fingerprint=False), directory)
