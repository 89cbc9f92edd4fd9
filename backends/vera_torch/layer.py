"""VeraLayer: one adapted nn.Linear or GPT-2 style Conv1D (spec 3), and the head wrapper.

A VeraLayer holds the frozen base layer and, per adapter, lambda_d (r) and
lambda_b (out) as parameters; the projections come by reference from the model's
ProjectionStore and never enter the state_dict (unless the generator is ``stored``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from vera_ref.peft_mt19937 import peft_projection

from .functional import choose_path, project_in, vera_delta, vera_linear
from .philox import projection as philox_projection


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style Conv1D (transformers.pytorch_utils.Conv1D), recognised without importing transformers:
    a module named Conv1D with ``nf`` and a 2-D weight stored as (in, out)."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and getattr(module, "weight", None) is not None and module.weight.ndim == 2)


def adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def layer_dims(module: nn.Module) -> tuple[int, int, str]:
    """(in_features, out_features, layout) of an adaptable layer (spec 3.7)."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1], "conv1d"
    return module.in_features, module.out_features, "linear"


class ProjSpec(NamedTuple):
    """Identity of one projection pair: equal specs share tensors (spec 2.1, 2.4)."""

    generator: str
    seed: int | None
    r: int
    n_in: int
    n_out: int
    group: int
    owner: str = ""  # adapter name, for stored projections only


@dataclass
class State:
    """What every VeraLayer of one model reads at forward time."""

    active: str | None = None
    disabled: bool = False
    groups: dict[str | None, torch.Tensor] | None = None  # mixed batch: adapter -> row indices
    batch: int | None = None
    h_cache: dict | None = None  # shared x A^T within one forward (no dropout)


class ProjectionStore:
    """Projections by spec and device: generated on the device with torch integer ops
    (philox4x32-10), by NumPy (peft-mt19937), or read from ``stored`` buffers."""

    def __init__(self, holder: nn.Module) -> None:
        self._holder = holder  # an nn.Module whose buffers are the stored projections
        self._cache: dict[tuple[ProjSpec, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def buffer_names(spec: ProjSpec) -> tuple[str, str]:
        return f"{spec.owner}__A__{spec.group}", f"{spec.owner}__B__{spec.group}"

    def put_stored(self, spec: ProjSpec, A: torch.Tensor, B: torch.Tensor) -> None:
        na, nb = self.buffer_names(spec)
        self._holder.register_buffer(na, A.to(torch.float32).contiguous())
        self._holder.register_buffer(nb, B.to(torch.float32).contiguous())

    def drop(self, owner: str) -> None:
        for name in [n for n, _ in self._holder.named_buffers() if n.startswith(owner + "__")]:
            delattr(self._holder, name)

    def get(self, spec: ProjSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if spec.generator == "stored":
            na, nb = self.buffer_names(spec)
            A, B = getattr(self._holder, na), getattr(self._holder, nb)
            return A.to(device), B.to(device)
        key = (spec, str(device))
        if key not in self._cache:
            if spec.generator == "philox4x32-10":
                self._cache[key] = philox_projection(spec.seed, spec.r, spec.n_in, spec.n_out, spec.group, device)
            else:  # peft-mt19937: bit-identical to PEFT's torch.Generator("cpu") draws (spec 2.5.3)
                A, B = peft_projection(spec.seed, spec.r, spec.n_in, spec.n_out)
                self._cache[key] = (torch.from_numpy(A).to(device), torch.from_numpy(B).to(device))
        return self._cache[key]


class VeraLayer(nn.Module):
    """An adapted layer: y = base(x) + lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T) (spec 3.2)."""

    def __init__(self, base_layer: nn.Module, state: State, store: ProjectionStore) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features, self.layout = layer_dims(base_layer)
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_lambda_b = nn.ParameterDict()
        self.proj: dict[str, ProjSpec] = {}
        self.dropout: dict[str, float] = {}
        self.merged: list[str] = []
        self.fused: bool | None = None  # None: choose by cost; True/False: force (tests, benchmarks)
        object.__setattr__(self, "_state", state)  # plain references, not submodules
        object.__setattr__(self, "_store", store)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def add_adapter(self, name: str, spec: ProjSpec, r: int, d_initial: float, dropout: float,
                    dtype: torch.dtype) -> None:
        dev = self.base_layer.weight.device
        # spec 3.9: lambda_b = 0, lambda_d = d_initial: an exact no-op until trained
        self.vera_lambda_d[name] = nn.Parameter(torch.full((r,), d_initial, dtype=dtype, device=dev))
        self.vera_lambda_b[name] = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=dev))
        self.proj[name] = spec
        self.dropout[name] = dropout

    def remove_adapter(self, name: str) -> None:
        for d in (self.vera_lambda_d, self.vera_lambda_b):
            if name in d:
                del d[name]
        self.proj.pop(name, None)
        self.dropout.pop(name, None)

    def projection(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The full pair of ``name``'s group (spec 2.1): A float32 (r, n_in), B float32 (n_out, r)."""
        return self._store.get(self.proj[name], torch.device(device))

    def sliced_projection(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = self._store.get(self.proj[name], device)
        return A[:, : self.in_features], B[: self.out_features, :]  # spec 2.3: (r, in), (out, r)

    def delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The adapter term for input x (..., in), in the vectors' dtype: (..., out)."""
        ld, lb = self.vera_lambda_d[name], self.vera_lambda_b[name]
        A_l, B_l = self.sliced_projection(name, x.device)
        xa = x.to(ld.dtype)
        A_l, B_l = A_l.to(ld.dtype), B_l.to(ld.dtype)
        p = self.dropout[name]
        if p > 0 and self.training:
            h = project_in(nn.functional.dropout(xa, p, True), A_l)  # spec 3.3: adapter input only
        else:
            h = self._shared_h(x, xa, A_l, name)
        return vera_delta(h, ld, lb, B_l)

    def _shared_h(self, x: torch.Tensor, xa: torch.Tensor, A_l: torch.Tensor, name: str) -> torch.Tensor:
        """x A_l^T, computed once per forward for every layer that reads the same x with the same A_l."""
        cache = self._state.h_cache
        if cache is None or torch.compiler.is_compiling():
            return project_in(xa, A_l)
        key = (id(x), x._version, self.proj[name], self.in_features, xa.dtype)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = (x, project_in(xa, A_l))  # holding x keeps id(x) unique
        return hit[1]

    def delta_weight(self, name: str) -> torch.Tensor:
        """spec 3.5: Delta W in float32 at least, in the base weight's layout."""
        ld, lb = self.vera_lambda_d[name], self.vera_lambda_b[name]
        dt = torch.promote_types(ld.dtype, torch.float32)
        A_l, B_l = self.sliced_projection(name, ld.device)
        dW = (lb.to(dt)[:, None] * B_l.to(dt)) @ (ld.to(dt)[:, None] * A_l.to(dt))  # (out, in)
        return dW if self.layout == "linear" else dW.t()

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if name in self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.to(torch.promote_types(w.dtype, torch.float32)) + self.delta_weight(name).to(w.device)).to(w.dtype))
        self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w = self.base_layer.weight
        while self.merged:
            name = self.merged.pop()
            w.copy_((w.to(torch.promote_types(w.dtype, torch.float32)) - self.delta_weight(name).to(w.device))
                    .to(w.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        st = self._state
        name = st.active
        if (not st.disabled and st.groups is None and name is not None and name in self.proj
                and name not in self.merged and not args and not kwargs and self._fused_ok(x, name)):
            return self._fused(x, name)
        result = self.base_layer(x, *args, **kwargs)
        if st.disabled:
            return result
        if st.groups is not None:
            return self._mixed(x, result)
        if name is None or name not in self.proj or name in self.merged:
            return result
        return result + self.delta(x, name).to(result.dtype)

    def _fused_ok(self, x: torch.Tensor, name: str) -> bool:
        """The fused path (one matmul with W0 + Delta W) when it is cheaper and exact enough:
        a float32/float64 base weight, no dropout while training (spec 3.3)."""
        w = self.base_layer.weight
        if self.fused is False or w.dtype not in (torch.float32, torch.float64) or x.dtype != w.dtype:
            return False
        if self.dropout[name] > 0 and self.training:
            return False
        if self.fused is True:
            return True
        training = torch.is_grad_enabled() and (x.requires_grad or self.vera_lambda_b[name].requires_grad)
        return choose_path(x.numel() // self.in_features, self.proj[name].r, self.in_features,
                           self.out_features, training) == "fused"

    def _fused(self, x: torch.Tensor, name: str) -> torch.Tensor:
        ld, lb = self.vera_lambda_d[name], self.vera_lambda_b[name]
        A_l, B_l = self.sliced_projection(name, x.device)
        dt = torch.promote_types(ld.dtype, x.dtype)
        return vera_linear(x, self.base_layer.weight, self.base_layer.bias, ld.to(dt), lb.to(dt), A_l.to(dt),
                           B_l.to(dt), self.layout == "conv1d")

    def _mixed(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """One adapter per row of the batch (dim 0); rows of other adapters are untouched."""
        if self.merged:
            raise RuntimeError("a model with merged adapters cannot serve mixed-adapter batches; call unmerge() first")
        if x.shape[0] != self._state.batch:
            raise ValueError(f"adapter_ids has {self._state.batch} entries but this layer's input has "
                             f"{x.shape[0]} rows (dim 0)")
        for name, rows in self._state.groups.items():
            if name is None or name not in self.proj:
                continue
            rows = rows.to(x.device)
            d = self.delta(x.index_select(0, rows), name)
            result = result.index_add(0, rows, d.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, layout={self.layout}, adapters={list(self.proj)}"


class ModulesToSave(nn.Module):
    """A fully trained module (a task head): one copy per adapter, the original for none."""

    def __init__(self, original: nn.Module, state: State) -> None:
        super().__init__()
        self.original_module = original
        self.copies = nn.ModuleDict()
        object.__setattr__(self, "_state", state)

    def add_adapter(self, name: str) -> None:
        c = copy.deepcopy(self.original_module)
        for p in c.parameters():
            p.requires_grad_(True)
        self.copies[name] = c

    def module_for(self, name: str | None) -> nn.Module:
        return self.copies[name] if name is not None and name in self.copies else self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        st = self._state
        if st.disabled:
            return self.original_module(*args, **kwargs)
        if st.groups is None:
            return self.module_for(st.active)(*args, **kwargs)
        x, rest = args[0], args[1:]
        out = None
        for name, rows in st.groups.items():
            rows = rows.to(x.device)
            y = self.module_for(name)(x.index_select(0, rows), *rest, **kwargs)
            if out is None:
                out = y.new_zeros((x.shape[0],) + tuple(y.shape[1:]))
            out = out.index_copy(0, rows, y)
        return out
