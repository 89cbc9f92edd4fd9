"""VeraLayer: one adapted nn.Linear or GPT-2 style Conv1D (spec 3); the head wrapper is in heads.py.

A VeraLayer holds the frozen base layer and, per adapter, lambda_d (r) and
lambda_b (out) as parameters; the projections come by reference from the model's
ProjectionStore and never enter the state_dict (unless the generator is ``stored``).

Mixed batches (README "Many adapters in one batch"): rows whose adapters share a
projection (one ``class``: the same ProjSpec on this layer) go through ONE x A_l^T and
ONE B_l^T product; the per-row lambda_d / lambda_b are gathered from stacked tables.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple

import torch
from torch import nn

from vera_ref import generators

from .errors import BatchError, ConfigError, MergeError
from . import quantized, restore  # restore: the merge residual's codec
from .functional import (choose_path, dropout_min, project_in, vera_delta, vera_delta_min, vera_linear, vera_linear_h,
                         vera_linear_min)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style Conv1D (transformers.pytorch_utils.Conv1D), recognised without importing transformers:
    a module named Conv1D with ``nf`` and a 2-D weight stored as (in, out)."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and getattr(module, "weight", None) is not None and module.weight.ndim == 2)


def adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module) or quantized.foreign(module) is not None  # spec 7.1


def layer_dims(module: nn.Module) -> tuple[int, int, str]:
    """(in_features, out_features, layout) of an adaptable layer (spec 3.7)."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1], "conv1d"
    return module.in_features, module.out_features, "linear"


def peft_projection(seed: int, r: int, n_in: int, n_out: int, group: int = 0,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """spec 2.5.3 with torch itself: PEFT's ``torch.Generator("cpu")`` draws and Kaiming-uniform bounds,
    A first then B from one stream; float32 (r, n_in), (n_out, r) on ``device``.

    Registered as the ``torch`` implementation of ``peft-mt19937`` in ``vera_ref.generators``."""
    seed = generators.PEFT_MT19937.check_seed(seed)
    if group:
        generators.PEFT_MT19937.projection(seed, r, n_in, n_out, group)  # raises the registry's message
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for shape, fan_in in (((r, n_in), n_in), ((n_out, r), r)):
        bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(fan_in))  # PEFT's _kaiming_init, in float64
        out.append(torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen).to(device))
    return out[0], out[1]


generators.register_device(generators.PEFT_MT19937.name, "torch", peft_projection)


def resident_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Tensors ``module`` holds anyway: parameters, buffers and the projections its VeraLayers have
    made (for ``functional.saved_tensor_bytes``: what autograd keeps of these costs nothing)."""
    out = list(module.parameters()) + list(module.buffers())
    for m in module.modules():
        if isinstance(m, VeraLayer):
            out += [t for pair in m._store._cache.values() for t in pair]
    return out


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
class RowGroup:
    """The rows of one projection class in a mixed batch (built once per forward by the model)."""

    names: list[str]  # the class's adapters present in the batch
    slots: list[int]  # their slots in the class's tables (aligned with names)
    rows: torch.Tensor | None  # (n,) row indices of dim 0; None when the class has every row
    local: torch.Tensor  # (n,) per row: 1 + index into names (0 is never used: every row has an adapter)
    slot_rows: torch.Tensor  # (n,) per row: its adapter's slot
    _moved: dict = field(default_factory=dict)

    def on(self, what: str, device: torch.device) -> torch.Tensor:
        """``rows``/``local``/``slot_rows`` on ``device``, moved once per forward."""
        if torch.compiler.is_compiling():
            return getattr(self, what).to(device)
        key = (what, str(device))
        if key not in self._moved:
            self._moved[key] = getattr(self, what).to(device)
        return self._moved[key]


@dataclass
class MixedBatch:
    """One adapter (or None: the base model) per row of dim 0."""

    ids: list[str | None]
    classes: dict[Hashable, RowGroup]
    _moved: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.ids)

    def check_rows(self, x: torch.Tensor, what: str) -> None:
        """``BatchError`` unless ``x`` has one row (dim 0) per entry of adapter_ids."""
        if x.shape[0] != self.batch:
            raise BatchError(f"adapter_ids has {self.batch} entries but this {what}'s input has "
                             f"{x.shape[0]} rows (dim 0)")


@dataclass
class State:
    """What every VeraLayer of one model reads at forward time."""

    active: str | None = None
    disabled: bool = False
    mixed: MixedBatch | None = None
    h_cache: dict | None = None  # shared x A^T within one forward (no dropout)


class SlotTable:
    """A cached stack of per-adapter tensors: row s holds the tensor of the adapter in slot s
    (row 0: ``fill``, zeros when None). A row is rewritten only when the tensor in its slot
    changes (another tensor, or an in-place update such as an optimiser step); the stack
    grows by doubling. Changes made through ``.data`` bypass the version counter: call
    ``VeraModel.refresh_tables()`` after them."""

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None  # (capacity, *shape)
        self.marks: list = []
        self.writes = 0  # rows written so far (tests check that adding an adapter writes only its rows)

    def clear(self) -> None:
        self.data, self.marks = None, []

    def __getstate__(self) -> dict:  # pickled models (torch.save) rebuild their tables on first use
        return {"data": None, "marks": [], "writes": self.writes}

    def get(self, entries: list[tuple[int, torch.Tensor | None]], shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        need = max(s for s, _ in entries) + 1
        d = self.data
        if d is None or d.shape[1:] != shape or d.dtype != dtype or d.device != device:
            d, self.marks = None, []
        if d is None or d.shape[0] < need:
            cap = max(need, 2 * (0 if d is None else d.shape[0]), 2)
            new = torch.zeros((cap, *shape), dtype=dtype, device=device)
            if d is not None:
                new[: d.shape[0]] = d
            self.marks += [False] * (cap - len(self.marks))
            self.data = d = new
        with torch.no_grad():
            for s, t in entries:
                mark = None if t is None else (t._version, weakref.ref(t))
                old = self.marks[s]
                if old is False or (mark is None) != (old is None) or (
                        mark is not None and (old[0] != mark[0] or old[1]() is not t)):
                    if t is None:
                        d[s].zero_()
                    else:
                        d[s].copy_(t.detach())
                    self.marks[s] = mark
                    self.writes += 1
        return d


class ProjectionStore:
    """Projections by spec and device: generated on the device by the generator's registered torch
    implementation (``vera_ref.generators``), or read from ``stored`` buffers."""

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
        gen = generators.get(spec.generator)
        if not gen.generates:  # stored (spec 2.5.2)
            na, nb = self.buffer_names(spec)
            A, B = getattr(self._holder, na), getattr(self._holder, nb)
            return A.to(device), B.to(device)
        key = (spec, str(device))
        if key not in self._cache:
            self._cache[key] = gen.device("torch")(spec.seed, spec.r, spec.n_in, spec.n_out, spec.group, device)
        return self._cache[key]


class VeraLayer(nn.Module):
    """An adapted layer: y = base(x) + lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T) (spec 3.2).

    Merging keeps what unmerge needs to restore W0 bit for bit in every dtype (spec 3.6 allows
    drift; this implementation has none): by default (``restore="auto"``) a compact residual
    (restore.py: a correction of 1 to 8 bits, in ulps, for each element where the merge lost
    information, found again from W and Delta W, so no index; index + value for the rare rest),
    or a full copy of W0 (the non-persistent buffer ``vera_w0``) when the residual would take more
    than half its bytes; see ``RESTORE_MODES`` and README "Merging".

    Training keeps, by default (``save_for_backward="minimal"``), only h = x A_l^T (factored
    path, shared by the layers reading the same x) or x (fused path) for the backward, and
    recomputes v or W0 + Delta W there; ``"activations"`` keeps them (functional.py)."""

    def __init__(self, base_layer: nn.Module, state: State, store: ProjectionStore) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features, self.layout = layer_dims(base_layer)
        quantized.prepare(base_layer)  # spec 7.2: a 4-bit base keeps bitsandbytes' canonical layout
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_lambda_b = nn.ParameterDict()
        self.proj: dict[str, ProjSpec] = {}
        self.dropout: dict[str, float] = {}
        self.klass: dict[str, Hashable] = {}  # adapter -> its projection class (the model's grouping key)
        self.merged: list[str] = []
        self.fused: bool | str | None = None  # None: by cost; False: factored; True: a fused path by cost; "x" / "h": that fused path
        # what autograd keeps (issue 25): "minimal" keeps h or x only and recomputes v / W0 + Delta W in
        # backward; "activations" keeps v / the merged weight too (less backward work, more memory)
        self.save_for_backward = "minimal"
        self.register_buffer("vera_w0", None, persistent=False)  # W0 while merged with a full copy
        self.restore = "auto"  # what merge keeps to restore W0 (RESTORE_MODES)
        self._kept_mode = "auto"  # the mode of the current merge
        self._last_delta: torch.Tensor | None = None  # Delta W of the last _write_merged, until _keep_w0 reads it
        self._restore: dict | None = None  # what it kept, when not the full copy in vera_w0
        self._tables: dict[tuple[Hashable, str], SlotTable] = {}  # (class, "d" | "b") -> cached stack
        object.__setattr__(self, "_state", state)  # plain references, not submodules
        object.__setattr__(self, "_store", store)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def original_weight(self) -> torch.Tensor:
        """W0: the base weight as it was before any merge (rebuilt from what the merge kept); on a
        quantized base the dequantized original quantized weight, float32 (spec 7.1)."""
        return quantized.original(self) if quantized.kind(self.base_layer) else self._original()

    def add_adapter(self, name: str, spec: ProjSpec, r: int, d_initial: float, dropout: float,
                    dtype: torch.dtype, klass: Hashable | None = None) -> None:
        dev = self.base_layer.weight.device
        # spec 3.9: lambda_b = 0, lambda_d = d_initial: an exact no-op until trained
        self.vera_lambda_d[name] = nn.Parameter(torch.full((r,), d_initial, dtype=dtype, device=dev))
        self.vera_lambda_b[name] = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=dev))
        self.proj[name] = spec
        self.dropout[name] = dropout
        self.klass[name] = spec if klass is None else klass

    def remove_adapter(self, name: str) -> None:
        for d in (self.vera_lambda_d, self.vera_lambda_b):
            if name in d:
                del d[name]
        self.proj.pop(name, None)
        self.dropout.pop(name, None)
        self.klass.pop(name, None)

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
            xd = dropout_min(xa, p) if self._minimal() else nn.functional.dropout(xa, p, True)
            h = project_in(xd, A_l)  # spec 3.3: adapter input only
        else:
            # once per forward for every layer that reads the same x with the same A_l
            h = self._once(x, ("h", self.proj[name], xa.dtype), lambda: project_in(xa, A_l))
        return self._delta_fn()(h, ld, lb, B_l)

    def _delta_fn(self):
        return vera_delta_min if self._minimal() else vera_delta

    def _minimal(self) -> bool:
        mode = self.save_for_backward
        if mode not in ("minimal", "activations"):
            raise ConfigError("save_for_backward", f"{mode!r} is not 'minimal' or 'activations'")
        return mode == "minimal"

    def _once(self, x: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()``, computed once per model forward for every layer that reads the same x (the same
        tensor, unmodified) and asks with the same ``key``; computed each time outside a model's
        forward or while compiling. Serves the h = x A_l^T shared by query, key and value."""
        cache = self._state.h_cache
        if cache is None or torch.compiler.is_compiling():
            return make()
        key = (id(x), x._version, self.in_features) + key
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = (x, make())  # holding x keeps id(x) unique
        return hit[1]

    # -- merging (spec 3.5, 3.6) ------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """spec 3.5: Delta W in float32 at least, in the base weight's layout."""
        ld, lb = self.vera_lambda_d[name], self.vera_lambda_b[name]
        dt = torch.promote_types(ld.dtype, torch.float32)
        A_l, B_l = self.sliced_projection(name, ld.device)
        dW = (lb.to(dt)[:, None] * B_l.to(dt)) @ (ld.to(dt)[:, None] * A_l.to(dt))  # (out, in)
        return dW if self.layout == "linear" else dW.t()

    @torch.no_grad()
    def _write_merged(self, names: list[str], w0: torch.Tensor) -> bool:
        """weight = ``w0`` + Delta W, Delta W the sum over ``names`` formed first (float32 or wider, by
        ``_delta_sum``, the same product unmerge forms again), the sum rounded once to the weight's
        dtype (float16/bfloat16: once from float32); True when every value is finite in that dtype."""
        w = self.base_layer.weight
        if not names:
            w.copy_(w0)
            return True
        dW = self._delta_sum({n: (self.vera_lambda_d[n], self.vera_lambda_b[n]) for n in names})
        if w.dtype == dW.dtype:
            torch.add(w0, dW, out=w)
        else:
            w.copy_(dW + w0)
        self._last_delta = dW  # for _keep_w0 right after (the same product: no second one)
        # a finite sum means every value is finite (inf and NaN propagate); only a sum that overflows
        # or is not finite needs the element-wise check
        return bool(torch.isfinite(w.sum())) or bool(torch.isfinite(w).all())

    # How unmerge gets W0 back (README "Merging"): "auto" (default) keeps the residual that brings
    # fl(W - Delta W) back to W0 (restore.py, checked per element at merge time) and a full copy when
    # it would take more than RESIDUAL_LIMIT of the weight's bytes; "sparse" refuses the merge then; "copy"
    # keeps a full copy on the weight's device, "cpu" on the CPU; "none" keeps nothing (no unmerge).
    RESTORE_MODES = ("auto", "sparse", "copy", "cpu", "none")
    RESIDUAL_LIMIT = 0.5

    @torch.no_grad()
    def _delta_sum(self, vectors: dict) -> torch.Tensor:
        """Sum of Delta W over ``vectors`` (name -> (lambda_d, lambda_b)), in the weight's layout and
        float32 or wider: merge and unmerge form it with the same ops, so with the same bits."""
        w = self.base_layer.weight
        dt = torch.promote_types(w.dtype, torch.float32)
        acc = None
        for n, (ld, lb) in vectors.items():
            A_l, B_l = self.sliced_projection(n, w.device)
            P, Q = lb.to(dt)[:, None] * B_l.to(dt), ld.to(dt)[:, None] * A_l.to(dt)  # (out, r), (r, in)
            if self.layout == "conv1d":
                P, Q = Q.t(), P.t()
            acc = P @ Q if acc is None else acc.addmm_(P, Q)
        return acc

    _CHECKSUM_CHUNK = 1 << 22  # elements per step: the int64 temporaries stay at 32 MiB whatever the weight

    @classmethod
    def _checksum(cls, t: torch.Tensor) -> tuple[int, int]:
        """Two int64 sums (wrapping) of the bit patterns: plain, and each weighted by its position (2i + 1).
        A changed element changes both; changes that cancel in the plain sum (one element +1 ulp, another
        -1 ulp, as a merge rounded elsewhere gives in float16) do not cancel in the weighted one."""
        bits = t.reshape(-1).view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])
        plain = weighted = 0
        for s in range(0, bits.numel(), cls._CHECKSUM_CHUNK):
            b = bits[s:s + cls._CHECKSUM_CHUNK].to(torch.int64)
            pos = torch.arange(2 * s + 1, 2 * (s + b.numel()) + 1, 2, dtype=torch.int64, device=b.device)
            plain += int(b.sum())
            weighted += int((b * pos).sum())
        return plain & (2**64 - 1), weighted & (2**64 - 1)

    @torch.no_grad()
    def _keep_w0(self, w0: torch.Tensor, mode: str) -> None:
        """Record how to get ``w0`` back from the weight just merged (``self.merged`` names)."""
        w = self.base_layer.weight
        self.vera_w0, self._restore, self._kept_mode = None, None, mode
        if mode in ("copy", "cpu", "none"):
            self._last_delta = None
        if mode == "copy":
            self.vera_w0 = w0
            return
        if mode == "cpu":
            self._restore = {"mode": mode, "w0": w0.to("cpu", copy=True)}
            return
        if mode == "none":
            self._restore = {"mode": mode}
            return
        rec = {"mode": mode, "vectors": {n: (self.vera_lambda_d[n].detach().clone(),
                                              self.vera_lambda_b[n].detach().clone()) for n in self.merged}}
        dW, self._last_delta = self._last_delta, None
        if dW is None:
            dW = self._delta_sum(rec["vectors"])
        res = restore.encode(w.detach(), dW, w0)  # checked: decodes to w0 bit for bit, or None
        del dW
        rec["residual"] = res
        rec["merged_sum"], rec["w0_sum"] = self._checksum(w), self._checksum(w0)
        size = None if res is None else res.nbytes
        if size is None or size > self.RESIDUAL_LIMIT * w.numel() * w.element_size():
            if mode == "sparse":
                what = ("no residual restores W0 bit for bit" if res is None else
                        f"the residual to restore W0 would take {size} of the weight's "
                        f"{w.numel() * w.element_size()} bytes")
                raise MergeError(f"{what} (restore='sparse' keeps at most {self.RESIDUAL_LIMIT:.0%} of them)")
            self.vera_w0 = w0
            return
        self._restore = rec

    @torch.no_grad()
    def _original(self) -> torch.Tensor:
        """W0 from what the merge kept (the weight itself when nothing is merged)."""
        w = self.base_layer.weight
        if not self.merged or self.vera_w0 is not None:
            return w if not self.merged else self.vera_w0
        rec = self._restore
        if rec is None or rec["mode"] == "none":
            raise MergeError("this layer was merged with restore='none': W0 was not kept, it cannot be unmerged")
        if rec["mode"] == "cpu":
            return rec["w0"].to(w.device, copy=True)
        dW = self._delta_sum(rec["vectors"])
        if self._checksum(w) != rec["merged_sum"]:  # the weight was changed while merged: spec 3.6, W - Delta W
            return restore.subtract(w.detach(), dW)
        try:
            back = restore.decode(w.detach(), dW, rec["residual"])
        except restore.ResidualMismatch:
            back = None
        if back is None or self._checksum(back) != rec["w0_sum"]:
            raise MergeError("unmerge cannot restore W0 bit for bit here (Delta W came out with other bits "
                             "than at merge time: another BLAS or thread count?); the weight stays merged. "
                             "Merge with restore='copy' or 'cpu' on such machines")
        return back

    @torch.no_grad()
    def merge(self, name: str, restore: str | None = None, max_output_change: float | None = None) -> None:
        """Fold ``name`` into the weight: W0 + Delta W, the sum in float32 or wider, rounded once to the
        weight's dtype. ``MergeError``, the weight unchanged, when a value would not be finite.
        ``restore`` (default: this layer's ``restore``, "auto"): what is kept to undo it (RESTORE_MODES).
        On a quantized base: dequantize, add, requantize, within ``max_output_change`` (spec 7.5)."""
        if quantized.kind(self.base_layer):
            return quantized.merge(self, name, restore, max_output_change)
        if name in self.merged:
            return
        mode = self.restore if restore is None else restore
        if mode not in self.RESTORE_MODES:
            raise ConfigError("restore", f"{mode!r} is not one of {', '.join(self.RESTORE_MODES)}")
        w = self.base_layer.weight
        w0 = self._original().clone() if self.merged else w.detach().clone()
        old, old_mode = list(self.merged), self._kept_mode
        if not self._write_merged(old + [name], w0):
            self._write_merged(old, w0)  # the same bits as before (the same computation)
            self._last_delta = None
            raise MergeError(f"merging {name!r} would make the {tuple(w.shape)} weight non-finite in "
                             f"{str(w.dtype).replace('torch.', '')}; the weights are unchanged")
        self.merged.append(name)
        try:
            self._keep_w0(w0, mode)
        except MergeError:
            self.merged = old
            self._write_merged(old, w0)
            if old:
                self._keep_w0(w0, old_mode)  # what was kept before, again (the same weight, the same bits)
            raise

    @torch.no_grad()
    def unmerge(self, name: str | None = None) -> None:
        """Remove adapter ``name`` (default: every merged adapter) from the weight; with none left
        merged the weight is W0 again, bit for bit, and what was kept of W0 is freed."""
        if quantized.kind(self.base_layer):
            return quantized.unmerge(self, name)  # spec 7.5: the original quantized weight
        names = [n for n in self.merged if name is not None and n != name]
        if not self.merged:
            return
        w0 = self._original()
        w0 = w0.clone() if w0 is self.vera_w0 else w0
        mode = self._kept_mode
        self._write_merged(names, w0)
        self.merged = names
        if names:
            self._keep_w0(w0, mode)
        else:
            self.vera_w0, self._restore = None, None

    def _apply(self, fn, recurse=True):
        """Casts and moves (``.to``, ``.half()``, ...) while merged: unmerged first (bit for bit), then
        merged again in the new dtype / on the new device, so unmerge still restores the cast W0."""
        names = list(self.merged)
        if not names or (self._restore is not None and self._restore["mode"] == "none"):
            return super()._apply(fn, recurse)
        mode = self._kept_mode
        self.unmerge()
        out = super()._apply(fn, recurse)
        for n in names:
            self.merge(n, mode)
        return out

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        st = self._state
        name = st.active
        if (not st.disabled and st.mixed is None and name is not None and name in self.proj
                and name not in self.merged and not args and not kwargs
                and (path := self._fused_path(x, name)) is not None):
            return self._fused(x, name, path)
        result = self.base_layer(x, *args, **kwargs)
        if st.disabled:
            return result
        if st.mixed is not None:
            return self._mixed(x, result, st.mixed)
        if name is None or name not in self.proj or name in self.merged:
            return result
        return result + self.delta(x, name).to(result.dtype)

    def _fused_path(self, x: torch.Tensor, name: str) -> str | None:
        """'fused' (keeps x) or 'fused_h' (keeps h) when a path with one matmul with W0 + Delta W is
        cheaper (functional.choose_path) and exact enough: a float32/float64 base weight, no dropout
        while training (spec 3.3); None for the factored path. ``self.fused``: None chooses by cost,
        False forces the factored path, True a fused one (which by cost), "x" / "h" that one."""
        w = self.base_layer.weight
        if self.fused is False or w.dtype not in (torch.float32, torch.float64) or x.dtype != w.dtype:
            return None
        if self.dropout[name] > 0 and self.training:
            return None
        training = torch.is_grad_enabled() and (x.requires_grad or self.vera_lambda_b[name].requires_grad)
        if self.fused in ("x", "h"):
            return "fused" if self.fused == "x" or not training else "fused_h"
        path = choose_path(x.numel() // self.in_features, self.proj[name].r, self.in_features, self.out_features,
                           training, self._minimal(), fused_only=self.fused is True)
        return None if path == "factored" else path

    def _fused(self, x: torch.Tensor, name: str, path: str) -> torch.Tensor:
        ld, lb = self.vera_lambda_d[name], self.vera_lambda_b[name]
        A_l, B_l = self.sliced_projection(name, x.device)
        dt = torch.promote_types(ld.dtype, x.dtype)
        A_l = A_l.to(dt)
        args = (x, self.base_layer.weight, self.base_layer.bias, ld.to(dt), lb.to(dt), A_l, B_l.to(dt))
        conv1d = self.layout == "conv1d"
        if path == "fused_h":  # h without gradient: its gradient reaches x through the merged weight
            h = self._once(x, ("plain", self.proj[name], dt), lambda: x.detach().to(dt) @ A_l.t())  # (..., r)
            return vera_linear_h(*args, h, conv1d, keep_weight=not self._minimal())
        return (vera_linear_min if self._minimal() else vera_linear)(*args, conv1d)

    def _vectors(self, key: Hashable, g: RowGroup, dt: torch.dtype, device: torch.device, r: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row lambda_d (n, r) and lambda_b (n, out) of class ``key``: gathered from the cached
        tables when no gradient is needed, else from a stack of the present adapters' parameters
        (so each row's gradient reaches its own adapter's vectors only)."""
        vd, vb = self.vera_lambda_d, self.vera_lambda_b
        here = [n in self.proj for n in g.names]
        grad = torch.is_grad_enabled() and any(vd[n].requires_grad or vb[n].requires_grad
                                               for n, h in zip(g.names, here) if h)
        if grad or torch.compiler.is_compiling():
            zd, zb = torch.zeros(r, dtype=dt, device=device), torch.zeros(self.out_features, dtype=dt, device=device)
            LD = torch.stack([zd] + [vd[n].to(dt) if h else zd for n, h in zip(g.names, here)])  # (k + 1, r)
            LB = torch.stack([zb] + [vb[n].to(dt) if h else zb for n, h in zip(g.names, here)])  # (k + 1, out)
            idx = g.on("local", device)
        else:
            td = self._tables.setdefault((key, "d"), SlotTable())
            tb = self._tables.setdefault((key, "b"), SlotTable())
            LD = td.get([(s, vd[n] if h else None) for n, s, h in zip(g.names, g.slots, here)], (r,), dt, device)
            LB = tb.get([(s, vb[n] if h else None) for n, s, h in zip(g.names, g.slots, here)],
                        (self.out_features,), dt, device)
            idx = g.on("slot_rows", device)
        return LD.index_select(0, idx), LB.index_select(0, idx)

    def _mixed(self, x: torch.Tensor, result: torch.Tensor, mb: MixedBatch) -> torch.Tensor:
        """One adapter per row of dim 0: per projection class present in the batch and adapted here,
        one x A_l^T and one B_l^T product over the class's rows (spec 3.2 row by row)."""
        if self.merged:
            raise MergeError("a model with merged adapters cannot serve mixed-adapter batches; call unmerge() first")
        mb.check_rows(x, "layer")
        for key, g in mb.classes.items():
            first = next((n for n in g.names if n in self.proj), None)
            if first is None:
                continue
            spec = self.proj[first]
            dt = torch.float32
            for n in g.names:
                if n in self.proj:
                    dt = torch.promote_types(dt, self.vera_lambda_d[n].dtype)
            A_l, B_l = self.sliced_projection(first, x.device)
            A_l, B_l = A_l.to(dt), B_l.to(dt)  # (r, in), (out, r)
            rows = None if g.rows is None else g.on("rows", x.device)
            ps = [self.dropout[n] for n in g.names if n in self.proj]
            if self.training and max(ps) > 0:  # spec 3.3, with each row's own p
                xa = (x if rows is None else x.index_select(0, rows)).to(dt)  # (n, ..., in)
                p = torch.tensor([0.0] + [self.dropout.get(n, 0.0) for n in g.names], dtype=dt,
                                 device=x.device).index_select(0, g.on("local", x.device))
                p = p.reshape((-1,) + (1,) * (xa.dim() - 1))  # (n, 1, ..., 1)
                keep = torch.rand_like(xa) >= p  # bool: the mask autograd keeps is one byte per element
                h = project_in(xa * keep / (1 - p), A_l)
            else:
                # once per forward for every layer that reads the same x with the same projection and rows
                h = self._once(x, ("rows", (key, spec), dt), lambda: project_in(
                    (x if rows is None else x.index_select(0, rows)).to(dt), A_l))  # (n, ..., r)
            ld, lb = self._vectors(key, g, dt, x.device, spec.r)  # (n, r), (n, out)
            bshape = (ld.shape[0],) + (1,) * (h.dim() - 2)
            ld, lb = ld.reshape(bshape + (ld.shape[-1],)), lb.reshape(bshape + (lb.shape[-1],))  # (n, 1, ..., r), (n, 1, ..., out)
            if self._minimal():  # the same ops as below, keeping h only (functional.vera_delta_min)
                if rows is None and h.dtype != result.dtype:
                    result = result + vera_delta_min(h, ld, lb, B_l).to(result.dtype)
                else:
                    result = vera_delta_min(h, ld, lb, B_l, result, rows)
                continue
            v = (h * ld) @ B_l.t()  # (n, ..., out)
            if rows is None and v.dtype == result.dtype:
                result = torch.addcmul(result, v, lb)  # result + v * lambda_b in one pass
            else:
                d = (v * lb).to(result.dtype)
                result = result + d if rows is None else result.index_add(0, rows, d)
        return result

    def refresh_tables(self) -> None:
        """Drop the cached mixed-batch tables (they are rebuilt on the next mixed batch)."""
        self._tables.clear()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, layout={self.layout}, adapters={list(self.proj)}"
