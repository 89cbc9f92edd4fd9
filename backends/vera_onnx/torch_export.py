"""Export a vera_torch model to ONNX (README "ONNX and ONNX Runtime"). The one module of
vera_onnx that imports torch; ``vera_onnx.export`` loads it on first use.

``mode="merged"``: the active adapter folded into the weights; the graph has exactly the
base model's operators (no extra cost at inference).
``mode="hotswap"``: the adapter path kept; every ``{module}.lambda_d`` / ``{module}.lambda_b``
is a graph input with an initializer default (an overridable initializer), lambda_b = 0 and
lambda_d = d_initial by default, so that no adapter means the base model. ONNX Runtime
adapters (``onnx_adapter``) set them per run.
``mode="multi"``: as hot-swap, but each lambda input is a table of ``capacity + 1`` rows
(row 0 the base model, rows 1..K adapter slots) and the graph takes ``adapter_index``, an
int64 per row of the batch: every row gets its own adapter's vectors while ``x A^T`` and
the product with ``B^T`` stay one matmul each for the whole batch per projection class.
A projection class is what adapters must share to share A and B: generator, seed, r,
sharing and adapted modules (spec 2.1, 2.4). The graph serves the classes of the model's
adapters at export (``adapters=``): the exported adapter's class has the hot-swap input
names ``{module}.lambda_d``; class c > 0 has ``{module}.lambda_d@c``. A slot's rows in the
tables of the other classes hold lambda_b = 0, so each row pays one product pair per class.
A task head in ``modules_to_save`` that is an ``nn.Linear`` becomes a weight and a bias
table applied per row by one batched product.
With ``projections="generator"`` (hot-swap and multi) the model carries the seed and the
generator graph instead of A and B initializers.

Every mode wraps the model: only the given inputs are graph inputs (by name when the
example inputs are a dict), forward keywords such as ``use_cache`` and ``logits_to_keep``
are fixed where the forward has them, and a dict output (a Hugging Face ``ModelOutput``)
becomes one graph output per tensor, named by its keys. The TorchScript exporter of
torch.onnx is used (opset 18; ``aten::diff`` is added to it, process-wide, and
``aten::cumsum`` made bool-safe for the export); ``exporter="dynamo"`` uses the
dynamo exporter (needs onnxscript), and ``exporter="auto"`` (the default) falls back to it
when the TorchScript exporter lacks an operator. Dynamic axes default to ``batch`` on dim 0
of every input and ``sequence`` on dim 1 of integer (token) inputs of rank 2 and float
inputs of rank 3.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from vera_ref import generators
from vera_ref.errors import ProjectionError
from vera_ref.metadata import SPEC_VERSION

from .description import BASE_SLOT, META_KEY, describe
from .errors import ExportError, OnnxError
from .generator import OPSET

MODES = ("merged", "hotswap", "multi")
EXPORTERS = ("auto", "torchscript", "dynamo")
INDEX_INPUT = "adapter_index"
# forward keywords fixed where the wrapped model's forward names them and the caller gives no value:
# no key/value cache in the graph, logits for every position (not an extra graph input)
FIXED_KEYWORDS = {"use_cache": False, "logits_to_keep": 0}
ONNXSCRIPT_PIN = "onnxscript==0.7.2"

__all__ = ["export", "describe", "MODES", "EXPORTERS", "FIXED_KEYWORDS", "INDEX_INPUT"]


class _Projections(nn.Module):
    """The shared projection pairs as buffers ``A_{key}``, ``B_{key}``: one initializer each in the graph.
    key: the group (spec 2.4) for the first projection class, ``c{class}_{group}`` for the others."""

    def __init__(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        for key, (A, B) in pairs.items():
            self.register_buffer(f"A_{key}", A.clone())
            self.register_buffer(f"B_{key}", B.clone())
        object.__setattr__(self, "h_cache", {})

    def project_in(self, x: torch.Tensor, key: str, in_f: int, dt: torch.dtype) -> torch.Tensor:
        """x A^T (..., r) for projection ``key`` sliced to ``in_f`` (spec 2.3), once per forward for every
        layer that reads the same x (query and value of one block): one MatMul node in the graph."""
        ck = (id(x), key, in_f, dt)
        hit = self.h_cache.get(ck)
        if hit is None:
            A = getattr(self, f"A_{key}")[:, :in_f].to(dt)  # (r, in)
            hit = self.h_cache[ck] = (x, torch.matmul(x.to(dt), A.t()))  # holding x keeps id(x) unique
        return hit[1]


def _pkey(c: int, group: int) -> str:
    return str(group) if c == 0 else f"c{c}_{group}"


def _suffix(c: int) -> str:
    """Input-name suffix of projection class ``c``: none for the first (the hot-swap names), ``@c`` after."""
    return "" if c == 0 else f"@{c}"


def _class_key(view) -> tuple:
    """Projection identity of an adapter (spec 2.1, 2.4): adapters with equal keys share A, B and modules."""
    cfg = view.config
    return (cfg.generator, cfg.seed, cfg.r, cfg.sharing,
            tuple((lv.path, lv.in_features, lv.out_features, lv.group) for lv in view.layers),
            tuple(sorted((g, tuple(A.shape), tuple(B.shape)) for g, (A, B) in view.projections.items())))


class _Index:
    """The per-row adapter index of the current forward (multi mode), shared by every layer.

    Issue 23 (12): ONNX's Gather reads index -1 as the last row (slot K, another tenant's adapter)
    and -(K+1) as row 0 (the base). The graph never lets that happen: an index outside 0..K is
    routed to row K+1, out of every table's bounds, so ONNX Runtime's Gather raises ("indices
    element out of data bounds") for the whole run; and where a Gather does not check bounds
    (an execution provider that reads zeros) the row's lambda_d and head output are NaN, never
    another row's values."""

    rows: int = 1  # K + 1: table rows (the base model and K slots)
    value: torch.Tensor | None = None  # (batch,) int64, out-of-range entries replaced by ``rows``
    bad: torch.Tensor | None = None  # (batch,) bool: the entry was outside 0..K

    def set(self, idx: torch.Tensor | None) -> None:
        if idx is None:
            self.value = self.bad = None
            return
        self.bad = (idx < 0) | (idx >= self.rows)  # (batch,)
        self.value = torch.where(self.bad, torch.full_like(idx, self.rows), idx)


def _poison(rows: torch.Tensor, index: _Index) -> torch.Tensor:
    """rows (batch, n) with NaN where the row's adapter index was out of range (see ``_Index``)."""
    return torch.where(index.bad[:, None], torch.full_like(rows, float("nan")), rows)


class _ExportRoot(nn.Module):
    """The model, its shared projections, and the calling convention of the exported graph:
    graph inputs -> the model's positional or keyword arguments plus fixed keywords; the
    model's output -> a flat tuple of tensors."""

    def __init__(self, model: nn.Module, projections: nn.Module | None, call: "_Call",
                 index: _Index | None = None) -> None:
        super().__init__()
        self.model = model
        if projections is not None:
            self.vera_projections = projections
        object.__setattr__(self, "_call", call)
        object.__setattr__(self, "_index", index)

    def forward(self, *tensors: torch.Tensor):
        if self._index is not None:
            self._index.set(tensors[-1])
            tensors = tensors[:-1]
        return _flatten(self.call(tensors))

    def call(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The model on ``tensors`` (the index already set), with a fresh x A^T cache."""
        proj = getattr(self, "vera_projections", None)
        if proj is not None:
            proj.h_cache.clear()
        try:
            return self._call(self.model, tensors)
        finally:
            if proj is not None:
                proj.h_cache.clear()


class _Call:
    """How graph inputs map onto the model's forward (positional template or keyword names)."""

    def __init__(self, template: list[tuple[str, Any]], keywords: list[str] | None, fixed: dict[str, Any]) -> None:
        self.template, self.keywords, self.fixed = template, keywords, fixed

    def __call__(self, model: nn.Module, tensors: Sequence[torch.Tensor]) -> Any:
        if self.keywords is not None:
            return model(**dict(zip(self.keywords, tensors)), **self.fixed)
        it = iter(tensors)
        args = [next(it) if kind == "input" else value for kind, value in self.template]
        return model(*args, **self.fixed)


def _flatten(out: Any) -> Any:
    if torch.is_tensor(out):
        return out
    if isinstance(out, Mapping):
        return tuple(v for v in out.values() if torch.is_tensor(v))
    if isinstance(out, (tuple, list)):
        return tuple(v for v in out if torch.is_tensor(v))
    raise ExportError(f"the model returned {type(out).__name__}; the exporter needs tensors, a tuple of tensors or a "
                      "dict of tensors")


def _output_names(out: Any) -> list[str]:
    if torch.is_tensor(out):
        return ["output"]
    if isinstance(out, Mapping):
        return [str(k) for k, v in out.items() if torch.is_tensor(v)]
    n = sum(torch.is_tensor(v) for v in out)
    return ["output"] + [f"output_{i}" for i in range(1, n)]


def _explicit_parameters(model: nn.Module) -> list[str]:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _calling_convention(model: nn.Module, example: tuple | Mapping, input_names: Sequence[str] | None,
                        forward_kwargs: Mapping[str, Any] | None) -> tuple[_Call, list[str], list[torch.Tensor]]:
    """(call, graph input names, example tensors): only the given inputs, by name for a dict."""
    params = _explicit_parameters(model)
    fixed = dict(forward_kwargs or {})
    if isinstance(example, Mapping):
        names = [k for k, v in example.items() if torch.is_tensor(v)]
        fixed.update({k: v for k, v in example.items() if not torch.is_tensor(v)})
        if input_names is not None and list(input_names) != names:
            raise ExportError(f"input_names {list(input_names)} differ from the example dict's tensor keys {names}; "
                              "leave input_names out (the keys name the inputs)")
        tensors = [example[k] for k in names]
        covered = set(example)
        call_names: list[str] | None = names
        template: list[tuple[str, Any]] = []
    else:
        template = [("input", None) if torch.is_tensor(a) else ("const", a) for a in example]
        tensors = [a for a in example if torch.is_tensor(a)]
        names = list(input_names or [f"input_{i}" for i in range(len(tensors))])
        if len(names) != len(tensors):
            raise ExportError(f"input_names has {len(names)} names for {len(tensors)} tensor inputs")
        covered = set(params[: len(example)])
        call_names = None
    clash = sorted(covered & set(forward_kwargs or {}))
    if clash:
        raise ExportError(f"forward_kwargs fixes {clash[0]!r}, which the example inputs give too")
    for k, v in FIXED_KEYWORDS.items():
        if k in params and k not in covered and k not in fixed:
            fixed[k] = v
    return _Call(template, call_names, fixed), names, tensors


class _ExportLayer(nn.Module):
    """spec 3.2 written with plain ops (no autograd functions) for tracing; one adapter."""

    def __init__(self, base: nn.Module, projections: _Projections, group: int, in_f: int, out_f: int,
                 lambda_d: torch.Tensor, lambda_b: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base
        self.lambda_d = nn.Parameter(lambda_d.detach().clone(), requires_grad=False)
        self.lambda_b = nn.Parameter(lambda_b.detach().clone(), requires_grad=False)
        object.__setattr__(self, "_proj", projections)  # registered once, at the root
        self.group, self.in_f, self.out_f = group, in_f, out_f

    def _h(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self.lambda_d.dtype
        B = getattr(self._proj, f"B_{_pkey(0, self.group)}")[: self.out_f, :]  # (out, r), spec 2.3
        return self._proj.project_in(x, _pkey(0, self.group), self.in_f, dt), B.to(dt)  # (..., r), (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, B = self._h(x)
        v = torch.matmul(h * self.lambda_d, B.t())  # (..., out)
        y = self.base_layer(x)
        return y + (v * self.lambda_b).to(y.dtype)


def _check_rows(x: torch.Tensor, index: _Index, what: str) -> torch.Tensor:
    """The adapter index, after checking that ``x`` has the batch on dim 0 (as torch's mixed batches do)."""
    idx = index.value
    if x.dim() < 2 or x.shape[0] != idx.shape[0]:
        raise ExportError(f"{what}: its input has shape {list(x.shape)}, not (batch, ..., features) with the batch of "
                          f"the adapter index ({idx.shape[0]} rows); multi mode needs the batch on dim 0")
    return idx


def _per_row(table: torch.Tensor, index: _Index, x: torch.Tensor, what: str, poison: bool = False) -> torch.Tensor:
    """table (K+1, n) gathered by the batch's adapter index -> (batch, 1, ..., 1, n) broadcasting over x;
    ``poison``: NaN rows where the index was out of range (``_Index``)."""
    rows = table.index_select(0, _check_rows(x, index, what))  # (batch, n)
    if poison:
        rows = _poison(rows, index)
    for _ in range(x.dim() - 2):
        rows = rows.unsqueeze(1)
    return rows


class _MultiLayer(nn.Module):
    """spec 3.2 with per-row vectors: for each projection class adapting this layer, one x A^T and one
    B^T product for the whole batch, lambda_d and lambda_b gathered from (K+1, r) and (K+1, out) tables by
    the row's adapter index (rows of adapters of other classes hold lambda_b = 0 there)."""

    def __init__(self, path: str, index: _Index, base: nn.Module, projections: _Projections,
                 entries: list[tuple[int, int, int, int, torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.base_layer = base
        self.path = path
        self.entries = []  # (lambda_d attribute, lambda_b attribute, projection key, in, out)
        for c, group, in_f, out_f, ld, lb in entries:
            ad, ab = ("lambda_d", "lambda_b") if c == 0 else (f"lambda_d_c{c}", f"lambda_b_c{c}")
            self.register_parameter(ad, nn.Parameter(ld.detach().clone(), requires_grad=False))
            self.register_parameter(ab, nn.Parameter(lb.detach().clone(), requires_grad=False))
            self.entries.append((ad, ab, _pkey(c, group), in_f, out_f))
        object.__setattr__(self, "_proj", projections)
        object.__setattr__(self, "_index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for ad, ab, key, in_f, out_f in self.entries:
            ld_t, lb_t = getattr(self, ad), getattr(self, ab)
            dt = ld_t.dtype
            B = getattr(self._proj, f"B_{key}")[:out_f, :].to(dt)  # (out, r), spec 2.3
            h = self._proj.project_in(x, key, in_f, dt)  # (batch, ..., r)
            ld = _per_row(ld_t, self._index, x, self.path, poison=True)  # (batch, 1.., r)
            lb = _per_row(lb_t, self._index, x, self.path)  # (batch, 1.., out)
            v = torch.matmul(h * ld, B.t())  # (batch, ..., out)
            y = y + (v * lb).to(y.dtype)
        return y


class _MultiHead(nn.Module):
    """An nn.Linear task head with one weight and bias per slot: y_row = x_row W[s]^T + b[s]."""

    def __init__(self, path: str, index: _Index, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.path = path
        self.weight = nn.Parameter(weight, requires_grad=False)  # (K+1, out, in)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # (K+1, out)
        object.__setattr__(self, "_index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = _check_rows(x, self._index, self.path)
        W = self.weight.index_select(0, idx)  # (batch, out, in)
        squeeze = x.dim() == 2
        xs = x.unsqueeze(1) if squeeze else x.flatten(1, -2)  # (batch, m, in)
        y = torch.matmul(xs.to(W.dtype), W.transpose(1, 2))  # (batch, m, out)
        if self.bias is not None:
            y = y + self.bias.index_select(0, idx).unsqueeze(1)
        y = _poison(y.flatten(1), self._index).reshape(y.shape)  # (batch, m, out); NaN rows: index out of range
        y = y.squeeze(1) if squeeze else y.reshape(x.shape[:-1] + (W.shape[1],))
        return y.to(x.dtype)


def _default_axes(names: list[str], tensors: Sequence[torch.Tensor]) -> dict[str, dict[int, str]]:
    axes = {}
    for name, a in zip(names, tensors):
        ax = {0: "batch"}
        if (a.ndim == 2 and not a.is_floating_point()) or (a.ndim == 3 and a.is_floating_point()):
            ax[1] = "sequence"
        axes[name] = ax
    return axes


def _diff_symbolic(g, x, n, dim, prepend, append):
    """aten::diff (n = 1) for the TorchScript exporter, which lacks it (transformers' masks use it)."""
    from torch.onnx import symbolic_helper as sh
    n, dim = sh._get_const(n, "i", "n"), sh._get_const(dim, "i", "dim")
    if n != 1:
        return sh._unimplemented("diff", "n != 1", x)
    parts = [p for p in (prepend, x, append) if not sh._is_none(p)]
    x = g.op("Concat", *parts, axis_i=dim) if len(parts) > 1 else x
    c = lambda v: g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))  # noqa: E731
    hi = g.op("Slice", x, c(1), c(2**62), c(dim))
    lo = g.op("Slice", x, c(0), c(-1), c(dim))
    return g.op("Sub", hi, lo)


def _cumsum_symbolic(g, x, dim, dtype):
    """aten::cumsum that casts a bool input to int64 first, as torch does (ONNX CumSum has no bool)."""
    from torch.onnx import symbolic_helper as sh
    dim = sh._get_const(dim, "i", "dim")
    if not sh._is_none(dtype) and dtype.node().kind() == "onnx::Constant":
        to = sh._get_const(dtype, "i", "dtype")
        x = g.op("Cast", x, to_i=sh._type_utils.JitScalarType(to).onnx_type())
    elif x.type().scalarType() == "Bool":
        x = g.op("Cast", x, to_i=onnx.TensorProto.INT64)
    return g.op("CumSum", x, g.op("Constant", value_t=torch.tensor(dim, dtype=torch.int64)))


# aten::cumsum: the exporter's own, overridden for the duration of an export (unregistering restores it);
# aten::diff: the exporter has none, so it is added once for the process (unregistering an operator the
# exporter never had leaves an empty entry that breaks its "unsupported operator" message)
_SCOPED = {"aten::cumsum": _cumsum_symbolic}
_ADDED: set[str] = set()


def _torchscript(model: nn.Module, args: tuple, path: str, input_names, output_names, dynamic_axes,
                 fold: bool) -> None:
    """TorchScript export. A hot-swap export is not constant-folded: folding would bake the sliced,
    transposed projections into anonymous per-layer initializers (ONNX Runtime folds at load anyway)."""
    if "aten::diff" not in _ADDED:
        torch.onnx.register_custom_op_symbolic("aten::diff", _diff_symbolic, OPSET)
        _ADDED.add("aten::diff")
    for op, fn in _SCOPED.items():
        torch.onnx.register_custom_op_symbolic(op, fn, OPSET)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, dynamo=False, opset_version=OPSET, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=fold)
    finally:
        for op in _SCOPED:
            torch.onnx.unregister_custom_op_symbolic(op, OPSET)


def _dynamo(model: nn.Module, args: tuple, path: str, input_names, output_names, dynamic_axes) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError(f"the dynamo exporter needs onnxscript ({ONNXSCRIPT_PIN}), which is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                 output_names=output_names, dynamic_axes=dynamic_axes, external_data=False)
    prog.save(path)


def _run_exporter(exporter: str, model: nn.Module, args: tuple, path: str, input_names, output_names, axes,
                  fold: bool) -> str:
    """Export with the chosen exporter; returns the one that wrote ``path``."""
    model.eval()
    if exporter == "dynamo":
        _dynamo(model, args, path, input_names, output_names, axes)
        return "dynamo"
    try:
        _torchscript(model, args, path, input_names, output_names, axes, fold)
        return "torchscript"
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if exporter == "auto" and importlib.util.find_spec("onnxscript") is not None:
            _dynamo(model, args, path, input_names, output_names, axes)
            return "dynamo"
        hint = (f"; exporter='dynamo' might (it needs {ONNXSCRIPT_PIN}, not installed)"
                if importlib.util.find_spec("onnxscript") is None else "; try exporter='dynamo'")
        raise ExportError(f"the TorchScript exporter cannot export this model: {reason}{hint}") from None


def export(vera_model, example_args: tuple | torch.Tensor | Mapping[str, Any], path: str | os.PathLike, *,
           mode: str = "merged", adapter: str | None = None, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, dynamic_axes: dict | None = None,
           projections: str = "initializers", dtype: torch.dtype | None = None, capacity: int | None = None,
           exporter: str = "auto", forward_kwargs: Mapping[str, Any] | None = None,
           adapters: Sequence[str] | None = None) -> onnx.ModelProto:
    """Export adapter ``adapter`` (default: the active one) of a VeraModel to ``path``; returns the model.

    The VeraModel is not changed (a copy is exported).
    ``example_args``: a tensor or tuple (positional arguments of the wrapped model's forward,
    inputs named ``input_names``, default ``input_0``...), or a dict name -> tensor (keyword
    arguments; the keys name the graph inputs; non-tensor values are fixed keywords).
    ``mode``: "merged", "hotswap" or "multi" (module docstring). ``capacity``: multi mode's
    number of adapter slots K. ``adapters``: multi mode: the adapters whose projection classes
    (generator, seed, r, sharing, modules) the graph serves (default: every adapter of the model;
    ``adapter`` is the first). ``dtype``: cast the copy (e.g. torch.float16).
    ``exporter``: "auto" (TorchScript, dynamo where it lacks an operator), "torchscript", "dynamo".
    ``forward_kwargs``: keywords fixed in the graph (``use_cache=False`` and ``logits_to_keep=0``
    are added where the forward has them). ``output_names``: default ``output`` for a tensor,
    the keys of a dict output, ``output``, ``output_1``... for a tuple.
    """
    if mode not in MODES:
        raise OnnxError(f"mode must be 'merged', 'hotswap' or 'multi', got {mode!r}")
    if projections not in ("initializers", "generator"):
        raise OnnxError(f"projections must be 'initializers' or 'generator', got {projections!r}")
    if exporter not in EXPORTERS:
        raise OnnxError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if mode == "merged" and projections == "generator":
        raise OnnxError("a merged model has no projections to generate; use mode='hotswap'")
    if mode == "multi":
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise OnnxError("capacity: multi mode needs the number of adapter slots, an integer >= 1, got "
                            f"{capacity!r}")
    elif capacity is not None or adapters is not None:
        raise OnnxError(f"{'capacity' if capacity is not None else 'adapters'} applies to mode='multi' only")
    example = example_args if isinstance(example_args, (tuple, Mapping)) else (example_args,)
    name = adapter or vera_model.active_adapter
    if name not in vera_model.vera_configs:
        raise OnnxError(f"no adapter named {name!r}")
    vm = copy.deepcopy(vera_model).eval()
    if mode != "merged":
        vm.unmerge()  # the graph's base layers hold W0 and its adapter path adds Delta W (merged, it would count twice)
    if dtype is not None:
        vm = vm.to(dtype)
    call, input_names, tensors = _calling_convention(vm.base_model, example, input_names, forward_kwargs)
    path = os.fspath(path)
    view = vm.adapter_view(name)
    cfg = view.config
    gen = generators.get(cfg.generator)
    if mode == "merged":
        vm.set_adapter(name)
        vm.merge(name)
        root = _ExportRoot(vm.unwrapped(keep=name), None, call)
        names_out, axes = _names_and_axes(root, tensors, input_names, output_names, dynamic_axes)
        _run_exporter(exporter, root, tuple(tensors), path, input_names, names_out, axes, fold=True)
        return onnx.load(path)
    index = _Index() if mode == "multi" else None
    if index is not None:
        index.rows = (capacity or 0) + 1
    views = [view]  # one per projection class; multi mode serves every class of the model's adapters
    if index is not None:
        if not gen.generates:
            raise OnnxError("the stored generator's projections belong to one adapter; multi mode needs a "
                            "generator (export mode='hotswap' or 'merged')")
        keys = {_class_key(view)}
        for other in (adapters if adapters is not None else list(vm.vera_configs)):
            if other not in vm.vera_configs:
                raise OnnxError(f"no adapter named {other!r}")
            ov = vm.adapter_view(other)
            if generators.get(ov.config.generator).generates and _class_key(ov) not in keys:
                keys.add(_class_key(ov))
                views.append(ov)
    if projections == "generator":
        for v in views:
            g_ = generators.get(v.config.generator)
            if not g_.has_seed:
                raise OnnxError("the stored generator has no seed to put in the graph; use projections='initializers'")
            try:
                g_.device("onnx")
            except ProjectionError:
                raise OnnxError(f"the {g_.name} generator has no ONNX graph; use projections='initializers'") from None
    holder = _Projections({_pkey(c, g): AB for c, v in enumerate(views) for g, AB in v.projections.items()})
    K1 = (capacity or 0) + 1  # table rows: the base model and K slots
    by_path: dict[str, list] = {}
    for c, v in enumerate(views):
        for lv in v.layers:
            by_path.setdefault(lv.path, []).append((c, lv))
    modules: list[list[dict]] = [[] for _ in views]
    i = 0
    for path_, entries in by_path.items():
        # distinct placeholder values: the exporter merges equal initializers (two untouched lambda_d
        # would become one input); the defaults are written after export (_make_overridable)
        specs = []
        for c, lv in entries:
            shape_d, shape_b = ((K1, lv.lambda_d.numel()), (K1, lv.lambda_b.numel())) if index else \
                (tuple(lv.lambda_d.shape), tuple(lv.lambda_b.shape))
            specs.append((c, lv.group, lv.in_features, lv.out_features,
                          _placeholder(shape_d, 2 * i + 1, lv.lambda_d.dtype),
                          _placeholder(shape_b, 2 * i + 2, lv.lambda_b.dtype)))
            i += 1
            modules[c].append({"name": lv.path, "in_features": lv.in_features, "out_features": lv.out_features,
                               "layout": lv.layout, "group": lv.group})
        base = entries[0][1].base_layer
        if index is not None:
            vm.replace_module(path_, _MultiLayer(path_, index, base, holder, specs))
        else:
            _, group, in_f, out_f, ld, lb = specs[0]
            vm.replace_module(path_, _ExportLayer(base, holder, group, in_f, out_f, ld, lb))
    extra = {}  # trained extra tensors (a task head): overridable too, defaulting to the base model's module
    for hv in view.heads:
        base_state = {f"{hv.path}.{k}": t.detach().cpu() for k, t in hv.original.state_dict().items()}
        if index is not None:
            if type(hv.original) is not nn.Linear:
                raise OnnxError(f"{hv.path}: multi mode swaps task heads that are one nn.Linear per adapter; this "
                                f"one is a {type(hv.original).__name__} (export mode='hotswap' per adapter)")
            w, b = hv.original.weight.detach(), hv.original.bias
            wt = w.unsqueeze(0).repeat(K1, 1, 1) + torch.arange(K1, dtype=w.dtype)[:, None, None]
            bt = None if b is None else b.detach().unsqueeze(0).repeat(K1, 1) + torch.arange(K1, dtype=b.dtype)[:, None]
            vm.replace_module(hv.path, _MultiHead(hv.path, index, wt, bt))
            base_state = {k: v.unsqueeze(0).repeat((K1,) + (1,) * v.dim()) for k, v in base_state.items()}
        extra.update({k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in base_state.items()})
    root = _ExportRoot(vm.unwrapped(keep=name), holder, call, index)
    example_all = list(tensors)
    names_in = list(input_names)
    if index is not None:
        batch = int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1
        example_all.append(torch.arange(batch, dtype=torch.int64) % K1)
        names_in.append(INDEX_INPUT)
    names_out, axes = _names_and_axes(root, example_all, names_in, output_names, dynamic_axes)
    if index is not None:  # one index per row: its batch axis is dynamic whatever axes were given
        axes.setdefault(INDEX_INPUT, {0: "batch"})
    used = _run_exporter(exporter, root, tuple(example_all), path, names_in, names_out, axes, fold=False)
    model = onnx.load(path)
    renames = {f"model.{k}": k for k in extra}
    for c, mods in enumerate(modules):
        for m in mods:
            for v in "db":
                renames[f"model.{m['name']}.lambda_{v}" + ("" if c == 0 else f"_c{c}")] = \
                    f"{m['name']}.lambda_{v}{_suffix(c)}"
    _rename(model, renames)
    extra_inputs = _make_extra_overridable(model, extra)
    classes = []
    for c, v in enumerate(views):
        _make_overridable(model, modules[c], v.config, _suffix(c))
        g_ = generators.get(v.config.generator)
        classes.append({"suffix": _suffix(c), "r": v.config.r, "generator": v.config.generator,
                        "seed": str(v.config.seed) if g_.has_seed else None, "sharing": v.config.sharing,
                        "d_initial": v.config.d_initial, "modules": modules[c],
                        "groups": {str(g): [int(A.shape[1]), int(B.shape[0])] for g, (A, B) in v.projections.items()}})
    desc = {"spec_version": SPEC_VERSION, "adapter_format": "vera-hotswap-1" if index is None else "vera-multi-1",
            "mode": mode, "exporter": used, "projections": projections, "extra": extra_inputs,
            **{k: classes[0][k] for k in ("r", "generator", "seed", "sharing", "d_initial", "modules", "groups")}}
    if index is not None:
        desc.update(capacity=capacity, index_input=INDEX_INPUT, base_slot=BASE_SLOT, classes=classes,
                    tables=[f"{m['name']}.lambda_{v}{cl['suffix']}" for cl in classes for m in cl["modules"]
                            if m["in_graph"] for v in "db"] + extra_inputs)
    if projections == "generator":
        for c, v in enumerate(views):
            _projections_to_generator(model, v.projections, v.config, generators.get(v.config.generator), c)
    del model.metadata_props[:]
    model.metadata_props.add(key=META_KEY, value=json.dumps(desc, sort_keys=True))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def _placeholder(shape: tuple[int, ...], offset: int, dtype: torch.dtype) -> torch.Tensor:
    """Distinct values of ``shape`` (0, 1, 2, ... + offset), so the exporter keeps every initializer apart."""
    return (torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape) + offset).to(dtype)


def _names_and_axes(root: _ExportRoot, tensors: list[torch.Tensor], input_names: list[str],
                    output_names: Sequence[str] | None, dynamic_axes: dict | None) -> tuple[list[str], dict]:
    """Output names (from one torch forward when not given) and dynamic axes (defaults on every input)."""
    if output_names is None:
        with torch.no_grad():
            output_names = _output_names(root.call(tensors) if root._index is None else _probe(root, tensors))
    axes = dynamic_axes if dynamic_axes is not None else _default_axes(input_names, tensors)
    return list(output_names), dict(axes)


def _probe(root: _ExportRoot, tensors: list[torch.Tensor]) -> Any:
    """One forward of a multi root outside tracing (the index is the last tensor)."""
    root._index.set(tensors[-1])
    try:
        return root.call(tensors[:-1])
    finally:
        root._index.set(None)


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


def _make_overridable(model: onnx.ModelProto, modules: list[dict], cfg, suffix: str = "") -> None:
    """lambda initializers -> graph inputs with defaults: lambda_b = 0, lambda_d = d_initial (every row)."""
    inits = {t.name: t for t in model.graph.initializer}
    used = {i for n in model.graph.node for i in n.input}
    for m in modules:
        # an adapted module the forward never calls leaves nothing in the graph to override
        m["in_graph"] = any(m["name"] + s + suffix in used for s in (".lambda_d", ".lambda_b"))
        if not m["in_graph"]:
            continue
        for what, fill in ((".lambda_d", cfg.d_initial), (".lambda_b", 0.0)):
            key = m["name"] + what + suffix
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


def _projections_to_generator(model: onnx.ModelProto, pairs: dict, cfg, gen: generators.Generator, c: int = 0
                              ) -> None:
    """Replace projection class ``c``'s A / B initializers by the generator subgraph (spec 1-2), same names."""
    nodes_of = gen.device("onnx")
    g = model.graph
    names = {t.name for t in g.initializer}
    for group, (A, B) in pairs.items():
        a_name, b_name = f"vera_projections.A_{_pkey(c, group)}", f"vera_projections.B_{_pkey(c, group)}"
        # a projection equal to another class's (one seed and r on fewer modules) is read through an Identity of
        # that one (the exporter merges equal initializers): generate only what is still an initializer
        if a_name not in names and b_name not in names:
            continue
        outs = [nm if nm in names else nm + "/unread" for nm in (a_name, b_name)]
        keep = [t for t in g.initializer if t.name not in (a_name, b_name)]
        del g.initializer[:]
        g.initializer.extend(keep)
        nodes, inits = nodes_of(cfg.seed, cfg.r, int(A.shape[1]), int(B.shape[0]), group, *outs,
                                prefix=f"vera_generator_{_pkey(c, group)}")
        old = list(g.node)
        del g.node[:]
        g.node.extend(nodes + old)  # the generator first: its outputs feed the adapter layers
        g.initializer.extend(inits)
