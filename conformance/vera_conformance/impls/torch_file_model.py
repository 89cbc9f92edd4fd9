"""A written adapter file run in a real model: vera_torch loads it onto a model holding the base
weights (fingerprint checked) and each adapted module runs in evaluation mode. Used by the
``written_file_runs`` check (checks_writer.py), which imports no backend itself."""
from __future__ import annotations

from pathlib import Path

from ..protocol import LoadedAdapter


def module_outputs(path: Path, content: LoadedAdapter, xs: dict, biases: dict) -> dict:
    """name -> the module's float64 output for ``xs[name]``: the file at ``path`` loaded with vera_torch
    onto modules of ``content`` holding ``content.base_weights`` and ``biases``; whatever vera_torch
    raises on the file propagates."""
    import torch
    from torch import nn

    from vera_torch import VeraModel

    from ..torch_helpers import Conv1D
    root = nn.Module()
    for name, fi, fo, layout in sorted(content.modules, key=lambda m: m[0].count(".")):  # parents first
        *owner, leaf = name.split(".")
        node = root
        for p in owner:
            if not hasattr(node, p):
                node.add_module(p, nn.Module())
            node = getattr(node, p)
        layer = nn.Linear(fi, fo) if layout == "linear" else Conv1D(fi, fo, True)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(content.base_weights[name]))
            layer.bias.copy_(torch.from_numpy(biases[name]))
        node.add_module(leaf, layer)
    vm = VeraModel.from_adapter(root, str(path), vector_dtype="float32")  # held exactly; a float32 model
    vm.eval()
    with torch.no_grad():
        return {n: vm.base_model.get_submodule(n)(torch.from_numpy(xs[n]).float()).double().numpy()
                for n, *_ in content.modules}
