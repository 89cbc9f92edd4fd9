"""ModulesToSave: a fully trained module (a task head) kept per adapter, and how a mixed batch runs
it (README "Many adapters in one batch"): rows grouped by the copy they use, one batched pass."""
from __future__ import annotations

import copy
import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

from .errors import BatchError
from .layer import MixedBatch, State


class _Groups(NamedTuple):
    """Rows of a mixed batch grouped by the head copy they use, padded to equal groups: group g holds
    ``maxn`` positions, the rows of ``keys[g]`` first, then copies of its first row."""

    keys: list  # the present copies' adapter names, None for the original module
    maxn: int  # positions per group
    src: torch.Tensor  # (G * maxn,) long: the row of the batch at each position
    dest: torch.Tensor  # (N,) long: the position of each row


PAD_LIMIT = 2  # padded positions at most this many times the batch, else the head runs per adapter


class ModulesToSave(nn.Module):
    """A fully trained module (a task head): one copy per adapter, the original for none.

    In a mixed batch the rows are grouped by the copy they use and padded to equal groups
    (padding repeats a group's first row, so it stays finite; it is dropped after), and the
    head runs once over the groups: an nn.Linear head as one batched matmul of the stacked
    weights, any other head without buffers (dense -> tanh -> out_proj, a LayerNorm, dropout)
    as one ``torch.func.vmap`` of ``functional_call`` over the stacked parameters, each group
    with its own dropout draws. Memory and work scale with the copies present, not with the
    rows. The head runs once per adapter present instead when that is the better or the only
    way: the groups are too uneven (more than PAD_LIMIT x the batch in padded positions), the
    head has buffers (a BatchNorm's running statistics), it takes more than one positional
    tensor, its copies differ in dtype, a vmapped head is traced by torch.compile, or vmap
    cannot run it (``.item()``, a Python branch on a value: the first such batch warns once and
    runs it per adapter, as do all later ones)."""

    def __init__(self, original: nn.Module, state: State) -> None:
        super().__init__()
        self.original_module = original
        self.copies = nn.ModuleDict()
        self.slots: dict[str, int] = {}
        self._linear = type(original) is nn.Linear
        self._vmappable = not any(True for _ in original.buffers()) and any(True for _ in original.parameters())
        object.__setattr__(self, "_state", state)

    def add_adapter(self, name: str) -> None:
        c = copy.deepcopy(self.original_module)
        for p in c.parameters():
            p.requires_grad_(True)
        self.copies[name] = c
        self.slots[name] = min(set(range(1, len(self.slots) + 2)) - set(self.slots.values()))

    def remove_adapter(self, name: str) -> None:
        if name in self.copies:
            del self.copies[name]
        self.slots.pop(name, None)

    def module_for(self, name: str | None) -> nn.Module:
        return self.copies[name] if name is not None and name in self.copies else self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        st = self._state
        if st.disabled:
            return self.original_module(*args, **kwargs)
        mb = st.mixed
        if mb is None:
            return self.module_for(st.active)(*args, **kwargs)
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            x = args[0]
            mb.check_rows(x, "module")
            g = self._groups(mb, x.device)
            params = self._stacked(g.keys)
            if params is not None and len(g.keys) * g.maxn <= PAD_LIMIT * mb.batch:
                if self._linear:
                    return self._linear_groups(x, g, params)
                if self._vmappable and not torch.compiler.is_compiling():
                    try:
                        return self._vmap_groups(x, g, params)
                    except RuntimeError as e:  # what vmap cannot run: .item(), data-dependent Python branches
                        self._vmappable = False
                        warnings.warn(f"this {type(self.original_module).__name__} head cannot run under "
                                      f"torch.func.vmap ({str(e).splitlines()[0][:200]}); in mixed batches it "
                                      f"runs once per adapter present from now on", RuntimeWarning)
        return self._loop_rows(args, kwargs, mb)

    def _members(self, mb: MixedBatch) -> dict[str | None, list[int]]:
        """The rows of each head copy present, in order of first appearance; rows with no adapter
        or an adapter without a copy of this head share the original's entry (None)."""
        members: dict[str | None, list[int]] = {}
        for i, n in enumerate(mb.ids):
            members.setdefault(n if n is not None and n in self.copies else None, []).append(i)
        return members

    def _groups(self, mb: MixedBatch, device: torch.device) -> _Groups:
        """The grouping of ``mb``'s rows for this head, made once per batch and device."""
        key = ("head-groups", id(self), str(device))
        got = mb._moved.get(key)
        if got is None:
            members = self._members(mb)
            maxn = max(len(v) for v in members.values())
            src = [v[j] if j < len(v) else v[0] for v in members.values() for j in range(maxn)]
            dest = [0] * mb.batch
            for gi, v in enumerate(members.values()):
                for j, i in enumerate(v):
                    dest[i] = gi * maxn + j
            got = mb._moved[key] = _Groups(list(members), maxn, torch.tensor(src, dtype=torch.long, device=device),
                                           torch.tensor(dest, dtype=torch.long, device=device))
        return got

    def _stacked(self, keys: list) -> dict[str, torch.Tensor] | None:
        """Each parameter of the head stacked over the groups' modules, (G, *shape); None when the
        modules differ in dtype or device. Gradients flow back to each copy's own parameters."""
        mods = [self.module_for(k) for k in keys]
        out = {}
        for name, p in self.original_module.named_parameters():
            ps = [m.get_parameter(name) for m in mods]
            if any(q.dtype != p.dtype or q.device != p.device or q.shape != p.shape for q in ps):
                return None
            out[name] = torch.stack(ps)  # (G, *shape)
        return out

    @staticmethod
    def _combine(ys: list, fn: Any) -> Any:
        """Apply ``fn`` to the list of corresponding tensors of outputs ``ys`` (tensors, or tuples,
        lists and dicts of them, the same structure in each); other outputs are refused."""
        y0 = ys[0]
        if isinstance(y0, torch.Tensor):
            return fn(ys)
        if isinstance(y0, (tuple, list)):
            return type(y0)(ModulesToSave._combine([y[i] for y in ys], fn) for i in range(len(y0)))
        if isinstance(y0, dict):
            return type(y0)((k, ModulesToSave._combine([y[k] for y in ys], fn)) for k in y0)
        raise BatchError(f"a head in a mixed batch returned {type(y0).__name__}; expected tensors")

    def _linear_groups(self, x: torch.Tensor, g: _Groups, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = x W^T + b with each group's W (G, out, in) and b: one batched matmul."""
        G = len(g.keys)
        xg = x.index_select(0, g.src).reshape(G, -1, x.shape[-1])  # (G, maxn * T, in)
        W = params["weight"].to(x.dtype)
        y = torch.bmm(xg, W.transpose(1, 2))  # (G, maxn * T, out)
        if "bias" in params:
            y = y + params["bias"].to(x.dtype)[:, None, :]
        y = y.reshape((G * g.maxn,) + tuple(x.shape[1:-1]) + (W.shape[1],))  # (G * maxn, ..., out)
        return y.index_select(0, g.dest)

    def _vmap_groups(self, x: torch.Tensor, g: _Groups, params: dict[str, torch.Tensor]) -> Any:
        """The original head's forward once, vmapped over the groups with their stacked parameters."""
        from torch.func import functional_call, vmap
        xg = x.index_select(0, g.src).reshape((len(g.keys), g.maxn) + tuple(x.shape[1:]))  # (G, maxn, ...)
        head = self.original_module
        y = vmap(lambda p, xi: functional_call(head, p, (xi,)), randomness="different")(params, xg)
        return self._combine([y], lambda t: t[0].reshape((-1,) + tuple(t[0].shape[2:])).index_select(0, g.dest))

    def _loop_rows(self, args: tuple, kwargs: dict, mb: MixedBatch) -> Any:
        """The head once per copy present, on that copy's rows; outputs back in batch order."""
        x, rest = args[0], args[1:]
        mb.check_rows(x, "module")
        members = self._members(mb)
        ys = []
        for key, rows in members.items():
            ys.append(self.module_for(key)(x.index_select(0, torch.tensor(rows, dtype=torch.long, device=x.device)),
                                           *rest, **kwargs))
        order = [i for rows in members.values() for i in rows]
        dest = torch.empty(len(order), dtype=torch.long)
        dest[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))  # row i sits at dest[i]
        return self._combine(ys, lambda ts: torch.cat(ts).index_select(0, dest.to(ts[0].device)))
