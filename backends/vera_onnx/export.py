"""Export a vera_torch model to ONNX (DESIGN 4).

``mode="merged"``: the active adapter folded into the weights; the graph has exactly the
base model's operators (no extra cost at inference).
``mode="hotswap"``: the adapter path kept; every ``{module}.lambda_d`` / ``{module}.lambda_b``
is a graph input with an initializer default (an overridable initializer), lambda_b = 0 and
lambda_d = d_initial by default, so that no adapter means the base model. ONNX Runtime
adapters (``onnx_adapter``) set them per run. With ``projections="generator"`` the model
carries the seed and the generator graph instead of A and B initializers.

The TorchScript exporter of torch.onnx is used (opset 18); dynamic axes default to
``batch`` on dim 0 of every input and ``sequence`` on dim 1 of integer (token) inputs of
rank 2 and float inputs of rank 3.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from vera_ref.errors import OnnxError
from vera_ref.metadata import SPEC_VERSION

from .generator import OPSET, projection_nodes

META_KEY = "vera"  # metadata_props key holding the JSON description of a hot-swap model


class _Projections(nn.Module):
    """The shared projection pairs as buffers: one initializer each in the exported graph."""

    def __init__(self, pairs: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        for g, (A, B) in pairs.items():
            self.register_buffer(f"A_{g}", A.clone())
            self.register_buffer(f"B_{g}", B.clone())


class _ExportRoot(nn.Module):
    """The model plus the shared projections, so the projections are registered once without
    touching the model's own children (an nn.Sequential runs every child)."""

    def __init__(self, model: nn.Module, projections: _Projections) -> None:
        super().__init__()
        self.model = model
        self.vera_projections = projections

    def forward(self, *args):
        return self.model(*args)


class _ExportLayer(nn.Module):
    """spec 3.2 written with plain ops (no autograd functions) for tracing."""

    def __init__(self, base: nn.Module, projections: _Projections, group: int, in_f: int, out_f: int,
                 lambda_d: torch.Tensor, lambda_b: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base
        self.lambda_d = nn.Parameter(lambda_d.detach().clone(), requires_grad=False)
        self.lambda_b = nn.Parameter(lambda_b.detach().clone(), requires_grad=False)
        object.__setattr__(self, "_proj", projections)  # registered once, at the root
        self.group, self.in_f, self.out_f = group, in_f, out_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A = getattr(self._proj, f"A_{self.group}")[:, : self.in_f]  # (r, in), spec 2.3
        B = getattr(self._proj, f"B_{self.group}")[: self.out_f, :]  # (out, r)
        h = torch.matmul(x.to(self.lambda_d.dtype), A.to(self.lambda_d.dtype).t())  # (..., r)
        v = torch.matmul(h * self.lambda_d, B.to(self.lambda_d.dtype).t())  # (..., out)
        y = self.base_layer(x)
        return y + (v * self.lambda_b).to(y.dtype)


def _default_axes(names: list[str], args: Sequence[Any]) -> dict[str, dict[int, str]]:
    axes = {}
    for name, a in zip(names, args):
        if not torch.is_tensor(a):
            continue
        ax = {0: "batch"}
        if (a.ndim == 2 and not a.is_floating_point()) or (a.ndim == 3 and a.is_floating_point()):
            ax[1] = "sequence"
        axes[name] = ax
    return axes


def _torch_export(model: nn.Module, args: tuple, path: str, input_names, output_names, dynamic_axes,
                  fold: bool) -> None:
    """TorchScript export. A hot-swap export is not constant-folded: folding would bake the sliced,
    transposed projections into anonymous per-layer initializers (ONNX Runtime folds at load anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=fold)


def export(vera_model, example_args: tuple | torch.Tensor, path: str | os.PathLike, *, mode: str = "merged",
           adapter: str | None = None, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, dynamic_axes: dict | None = None,
           projections: str = "initializers", dtype: torch.dtype | None = None) -> onnx.ModelProto:
    """Export adapter ``adapter`` (default: the active one) of a VeraModel to ``path``; returns the model.

    The VeraModel is not changed (a copy is exported). ``example_args``: positional
    arguments of the wrapped model's forward. ``dtype``: cast the copy (e.g. torch.float16).
    """
    if mode not in ("merged", "hotswap"):
        raise OnnxError(f"mode must be 'merged' or 'hotswap', got {mode!r}")
    if projections not in ("initializers", "generator"):
        raise OnnxError(f"projections must be 'initializers' or 'generator', got {projections!r}")
    if mode == "merged" and projections == "generator":
        raise OnnxError("a merged model has no projections to generate; use mode='hotswap'")
    args = example_args if isinstance(example_args, tuple) else (example_args,)
    name = adapter or vera_model.active_adapter
    if name not in vera_model.vera_configs:
        raise OnnxError(f"no adapter named {name!r}")
    vm = copy.deepcopy(vera_model).eval()
    if dtype is not None:
        vm = vm.to(dtype)
    input_names = list(input_names or [f"input_{i}" for i in range(len(args))])
    output_names = list(output_names or ["output"])
    axes = dynamic_axes if dynamic_axes is not None else _default_axes(input_names, args)
    path = os.fspath(path)
    cfg = vm.vera_configs[name]
    if mode == "merged":
        vm.set_adapter(name)
        plain = vm.merge_and_unload()
        _torch_export(plain, args, path, input_names, output_names, axes, fold=True)
        return onnx.load(path)
    if cfg.generator == "stored" and projections == "generator":
        raise OnnxError("the stored generator has no seed to put in the graph; use projections='initializers'")
    from vera_torch.layer import ModulesToSave, VeraLayer
    root = vm.base_model
    layers = [(p, root.get_submodule(p)) for p in vm.vera_modules[name]]
    pairs = {}
    for _, layer in layers:
        spec = layer.proj[name]
        if spec.group not in pairs:
            A, B = layer._store.get(spec, torch.device("cpu"))
            pairs[spec.group] = (A, B)
    holder = _Projections(pairs)
    modules = []
    for i, (path_, layer) in enumerate(layers):
        spec = layer.proj[name]
        # distinct placeholder values: the exporter merges equal initializers (two untouched lambda_d
        # would become one input); the defaults are written after export (_make_overridable)
        ld, lb = layer.vera_lambda_d[name], layer.vera_lambda_b[name]
        ld = torch.arange(ld.numel(), dtype=torch.float64).to(ld.dtype) + 2 * i + 1
        lb = torch.arange(lb.numel(), dtype=torch.float64).to(lb.dtype) + 2 * i + 2
        new = _ExportLayer(layer.base_layer, holder, spec.group, layer.in_features, layer.out_features,
                           ld, lb)
        vm._set_module(path_, new)
        modules.append({"name": path_, "in_features": layer.in_features, "out_features": layer.out_features,
                        "layout": layer.layout, "group": spec.group})
    extra = {}  # trained extra tensors (a task head): overridable too, defaulting to the base model's module
    for p, m in list(root.named_modules()):  # other adapters and wrappers: back to plain modules
        if isinstance(m, VeraLayer):
            vm._set_module(p, m.base_layer)
        elif isinstance(m, ModulesToSave):
            if name in m.copies:
                for k, t in m.original_module.state_dict().items():
                    extra[f"{p}.{k}"] = t.detach().cpu().float().numpy()
            vm._set_module(p, m.module_for(name))
    _torch_export(_ExportRoot(root, holder), args, path, input_names, output_names, axes, fold=False)
    model = onnx.load(path)
    _rename(model, {f"model.{m['name']}.lambda_{v}": f"{m['name']}.lambda_{v}" for m in modules for v in "db"}
            | {f"model.{k}": k for k in extra})
    extra_inputs = _make_extra_overridable(model, extra)
    _make_overridable(model, modules, cfg)
    desc = {"spec_version": SPEC_VERSION, "adapter_format": "vera-hotswap-1", "r": cfg.r,
            "generator": cfg.generator, "seed": None if cfg.generator == "stored" else str(cfg.seed),
            "sharing": cfg.sharing, "d_initial": cfg.d_initial,
            "projections": projections, "modules": modules, "extra": extra_inputs,
            "groups": {str(g): [int(A.shape[1]), int(B.shape[0])] for g, (A, B) in pairs.items()}}
    if projections == "generator":
        _projections_to_generator(model, pairs, cfg)
    del model.metadata_props[:]
    model.metadata_props.add(key=META_KEY, value=json.dumps(desc, sort_keys=True))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename initializers (and every node input that reads them)."""
    for t in model.graph.initializer:
        if t.name in names:
            t.name = names[t.name]
    for node in model.graph.node:
        for i, n in enumerate(node.input):
            if n in names:
                node.input[i] = names[n]


def _override(model: onnx.ModelProto, t: onnx.TensorProto, default: np.ndarray) -> None:
    """Initializer ``t`` becomes a graph input (an overridable initializer) whose default is ``default``."""
    shape = list(t.dims)
    t.CopyFrom(numpy_helper.from_array(np.asarray(default).astype(numpy_helper.to_array(t).dtype).reshape(shape),
                                       t.name))
    model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, shape))


def _make_overridable(model: onnx.ModelProto, modules: list[dict], cfg) -> None:
    """lambda initializers -> graph inputs with defaults: lambda_b = 0, lambda_d = d_initial."""
    inits = {t.name: t for t in model.graph.initializer}
    used = {i for n in model.graph.node for i in n.input}
    for m in modules:
        # an adapted module the forward never calls leaves nothing in the graph to override
        m["in_graph"] = any(m["name"] + s in used for s in (".lambda_d", ".lambda_b"))
        if not m["in_graph"]:
            continue
        for suffix, fill in ((".lambda_d", cfg.d_initial), (".lambda_b", 0.0)):
            key = m["name"] + suffix
            if key not in inits:
                raise OnnxError(f"{key}: not an initializer of the exported graph (the exporter renamed or "
                                f"folded it)")
            _override(model, inits[key], np.full(tuple(inits[key].dims), fill))


def _make_extra_overridable(model: onnx.ModelProto, extra: dict[str, np.ndarray]) -> list[str]:
    """Extra tensors become inputs with the base model's values as defaults (no adapter = base model);
    returns the keys that could be made overridable."""
    inits = {t.name: t for t in model.graph.initializer}
    done = []
    for key, base_value in sorted(extra.items()):
        if key in inits:  # else folded or unused by the exported forward: nothing to override
            _override(model, inits[key], base_value)
            done.append(key)
    return done


def _projections_to_generator(model: onnx.ModelProto, pairs: dict, cfg) -> None:
    """Replace the A_g / B_g initializers by the generator subgraph (spec 1-2) under the same names."""
    g = model.graph
    names = {t.name for t in g.initializer}
    for group, (A, B) in pairs.items():
        a_name, b_name = f"vera_projections.A_{group}", f"vera_projections.B_{group}"
        if a_name not in names or b_name not in names:
            raise OnnxError(f"{a_name}: not an initializer of the exported graph")
        keep = [t for t in g.initializer if t.name not in (a_name, b_name)]
        del g.initializer[:]
        g.initializer.extend(keep)
        nodes, inits = projection_nodes(cfg.seed, cfg.r, int(A.shape[1]), int(B.shape[0]), group, a_name, b_name,
                                        prefix=f"vera_generator_{group}")
        old = list(g.node)
        del g.node[:]
        g.node.extend(nodes + old)  # the generator first: its outputs feed the adapter layers
        g.initializer.extend(inits)


def describe(model: onnx.ModelProto | str | os.PathLike) -> dict:
    """The VeRA description a hot-swap export stores in metadata_props."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    for p in model.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise OnnxError("not a VeRA hot-swap model (no 'vera' metadata); export it with mode='hotswap'")
