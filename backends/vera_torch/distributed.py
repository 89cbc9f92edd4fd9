"""VeRA past one process: torch.distributed (torchrun, DDP, FSDP2 ``fully_shard``) (README "Training on
several machines").

A and B are a pure function of (generator, seed, r, n_in, n_out, group) (spec 2.1): every rank builds
them locally from the seed, so they are never parameters or buffers, never broadcast, never
reduce-scattered and never in a state dict or checkpoint. Only the vectors lambda_d, lambda_b (and
the copies of ``modules_to_save`` heads) are trainable, so only their gradients travel.

    fully_shard(layer) for each block; fully_shard(model)   # or DDP(model)
    ... train ...
    save_adapter(model, "a.safetensors")     # every rank calls it; rank 0 writes, atomically
    save_checkpoint(model, "ckpt/")          # torch.distributed.checkpoint, vectors only
    load_checkpoint(model, "ckpt/")          # any world size, sharded or not

Under FSDP2 the vectors are DTensors (each rank holds a shard): reading them for a file needs every
rank (``DTensor.full_tensor()`` is a collective), so ``save_adapter``/``to_adapter`` on a sharded
model are collectives every rank must call in the same order. Without sharding (DDP, one process)
the vectors are plain tensors and any single rank may save alone.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

import vera_ref

try:  # torch.distributed may be absent from a build (some macOS / mobile wheels)
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - depends on the torch build
    dist = None  # type: ignore[assignment]
    DTensor = ()  # type: ignore[assignment,misc]

VECTOR_MARKS = (".vera_lambda_d.", ".vera_lambda_b.")


def is_sharded(t: torch.Tensor) -> bool:
    """Is ``t`` a DTensor (a parameter FSDP2 sharded over ranks)?"""
    return bool(DTensor) and isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``t`` itself, or for a DTensor its all-gathered value (a collective)."""
    return t.full_tensor() if is_sharded(t) else t


def initialized() -> bool:
    return dist is not None and dist.is_available() and dist.is_initialized()


def _unwrap(model: nn.Module) -> nn.Module:
    """The VeraModel inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) else model


def has_sharded_vectors(model: nn.Module) -> bool:
    return any(is_sharded(p) for n, p in _unwrap(model).named_parameters() if "vera_lambda_" in n)


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str | None = None, *, writer: int = 0,
                 **kwargs: Any) -> None:
    """Write the spec file of adapter ``name`` from a model trained on several ranks.

    A collective: every rank calls it. Each rank assembles the adapter (gathering sharded vectors,
    the base weights for the fingerprint and the head copies with ``DTensor.full_tensor()``, in the
    same module order on every rank); rank ``writer`` writes it atomically (vera_ref.atomic, the
    one-process path, so the bytes equal a one-process save of the same vectors); the others wait
    until the write is done and raise the writer's error if it failed. Without an initialised
    process group it is ``model.save_adapter``."""
    vm = _unwrap(model)
    if not initialized():
        vera_ref.save_adapter(vm.to_adapter(name, **kwargs), path)
        return
    ad = vm.to_adapter(name, **kwargs)  # collective when the vectors are sharded
    error = [None]
    if dist.get_rank() == writer:
        try:
            vera_ref.save_adapter(ad, path)
        except Exception as e:  # noqa: BLE001 - sent to every rank, raised there
            error = [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(error, src=writer)  # also the barrier: the file exists when this returns
    if error[0] is not None:
        raise OSError(f"{os.fspath(path)}: rank {writer} could not write the adapter: {error[0]}")


def _is_vector_key(key: str) -> bool:
    return any(m in key for m in VECTOR_MARKS) or ".copies." in key


def vector_state_dict(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors only (lambda_d, lambda_b and the ``modules_to_save`` head copies
    of ``name``, default: every adapter), as ``torch.distributed.checkpoint.state_dict`` returns them
    (DTensors under FSDP2, plain tensors otherwise; fully qualified names without a DDP prefix).
    No base weight and no A or B: those come from the base checkpoint and from the seed."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    sd = get_model_state_dict(model)
    keep = {k: v for k, v in sd.items() if _is_vector_key(k)}
    if name is not None:
        keep = {k: v for k, v in keep.items() if k.endswith(f".{name}") or f".copies.{name}." in k}
    return keep


def load_vector_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy vectors (full tensors or DTensors of any sharding) into ``model``'s vectors, sharded or
    not; every key must be a vector (or head copy) of ``model``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    have = vector_state_dict(model)
    unknown = sorted(set(state) - set(have))
    if unknown:
        raise KeyError(f"{unknown[0]}: not a vector of this model")
    if not any(is_sharded(v) for v in have.values()):  # plain tensors (one process, DDP): no collective
        with torch.no_grad():
            for k, v in state.items():
                have[k].copy_(full(v))
        return
    full_sd = any(not is_sharded(v) for v in state.values())
    set_model_state_dict(model, state, options=StateDictOptions(strict=False, full_state_dict=full_sd))


def save_checkpoint(model: nn.Module, directory: str | os.PathLike) -> None:
    """``torch.distributed.checkpoint.save`` of the vectors only (every rank calls it; each writes its
    shards). Resume with ``load_checkpoint`` on any world size."""
    import torch.distributed.checkpoint as dcp
    dcp.save(vector_state_dict(model), checkpoint_id=os.fspath(directory))


def load_checkpoint(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load vectors written by ``save_checkpoint`` (on any world size, resharded as needed)."""
    import torch.distributed.checkpoint as dcp
    state = vector_state_dict(model)
    dcp.load(state, checkpoint_id=os.fspath(directory))
    load_vector_state_dict(model, state)


def load_vectors(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> None:
    """Resume a model whose adapter ``name`` already exists (e.g. after ``fully_shard``) from a spec
    file: the file's vectors replace the model's, sharded as the model's are, and for the ``stored``
    generator the file's A and B replace the model's stored projections (e.g. after a meta-device start).
    The file's r, modules, dimensions and generator must equal the adapter's. Every rank calls it (each
    reads the file)."""
    from .values import vector_tensor as _vector
    vm = _unwrap(model)
    name = name or vm.active_adapter
    vm._require(name)
    ad = vera_ref.load_adapter(path)
    cfg, mine = ad.config, vm.vera_configs[name]
    if [m.name for m in cfg.modules] != vm.vera_modules[name] or cfg.r != mine.r:
        raise vera_ref.errors.ModelMismatchError(
            f"{os.fspath(path)}: adapter modules or r differ from adapter {name!r} of this model")
    state = {}
    for m in cfg.modules:
        state[f"base_model.{m.name}.vera_lambda_d.{name}"] = _vector(ad.lambda_d, m.name, "lambda_d", (cfg.r,),
                                                                     mine.vector_dtype)
        state[f"base_model.{m.name}.vera_lambda_b.{name}"] = _vector(ad.lambda_b, m.name, "lambda_b",
                                                                     (m.out_features,), mine.vector_dtype)
    have = vector_state_dict(vm, name)
    wrappers = [p for p, _ in vm.base_model.named_modules() if f"base_model.{p}.copies.{name}." in " ".join(have)]
    for key, (arr, _) in ad.extra.items():  # extra_tensors: modules_to_save heads, saved whole (spec 4.3)
        owner = next((w for w in wrappers if key.startswith(w + ".")), None)
        full_key = f"base_model.{owner}.copies.{name}.{key[len(owner) + 1:]}" if owner is not None else key
        if full_key not in have:
            raise vera_ref.errors.ModelMismatchError(f"{os.fspath(path)}: {key}: no such head tensor in this model")
        state[full_key] = torch.from_numpy(np.array(arr)).to(have[full_key].dtype)
    missing = sorted(set(have) - set(state))
    if missing:
        raise vera_ref.errors.ModelMismatchError(f"{os.fspath(path)}: has no value for {missing[0]}")
    if cfg.generator != mine.generator:
        raise vera_ref.errors.ModelMismatchError(
            f"{os.fspath(path)}: generator {cfg.generator!r}, adapter {name!r} of this model uses {mine.generator!r}")
    load_vector_state_dict(model, state)
    for spec in _stored_specs(vm, name) if ad.stored else []:  # stored A, B (spec 2.5.2): the file's
        if spec.group not in ad.stored:
            raise vera_ref.errors.ModelMismatchError(f"{os.fspath(path)}: no stored projection for group {spec.group}")
        A, B = ad.stored[spec.group]
        _put_stored(vm, spec, torch.from_numpy(np.array(A)), torch.from_numpy(np.array(B)))


@torch.no_grad()
def init_vectors(model: nn.Module, name: str | None = None) -> None:
    """After a meta-device start (``init_empty_weights``-style: built on the meta device, adapter
    attached, ``to_empty``, base weights loaded), give adapter ``name`` (default: every adapter) what
    ``to_empty`` left uninitialised, in place, sharded or not: spec 3.9's initial vectors (lambda_d =
    d_initial, lambda_b = 0) and, for the ``stored`` generator, the projections drawn again from the
    seed (spec 2.5.2), on each rank, on the buffers' device. Projections of the other generators are
    never stored: each rank builds them from the seed when the materialised model first runs.
    Stored projections that were given (read from a file) cannot be drawn again: ``ModelMismatchError``
    naming the adapter; ``load_vectors(model, that_file)`` restores them (and the vectors)."""
    from vera_ref import generators
    vm = _unwrap(model)
    names = [n for n in vm.vera_configs if name is None or n == name]
    given = [n for n in names if n in vm._stored_given]
    if given:
        raise vera_ref.errors.ModelMismatchError(
            f"adapter {given[0]!r}: its stored projections were read from a file, not drawn from the seed; "
            f"restore them with load_vectors(model, that file)")
    for layer in vm.vera_layers():
        for n in layer.vera_lambda_d:
            if n in names:
                layer.vera_lambda_d[n].fill_(vm.vera_configs[n].d_initial)
                layer.vera_lambda_b[n].zero_()
    for n in names:
        cfg = vm.vera_configs[n]
        if generators.get(cfg.generator).generates:
            continue
        draw = generators.get(generators.DEFAULT).device("torch")
        for spec in _stored_specs(vm, n):
            _put_stored(vm, spec, *draw(cfg.seed, spec.r, spec.n_in, spec.n_out, spec.group))


def _stored_specs(vm: nn.Module, name: str) -> list:
    """The projection specs (one per group) of adapter ``name``'s stored projections."""
    specs = {}
    for layer in vm.vera_layers():
        if name in layer.proj:
            specs.setdefault(layer.proj[name].group, layer.proj[name])
    return list(specs.values())


@torch.no_grad()
def _put_stored(vm: nn.Module, spec: Any, A: torch.Tensor, B: torch.Tensor) -> None:
    """Copy A, B (float32) into the stored-projection buffers of ``spec``, in place (their device kept)."""
    na, nb = vm._store.buffer_names(spec)
    for buf_name, t in ((na, A), (nb, B)):
        buf = getattr(vm.vera_projections, buf_name)
        if tuple(buf.shape) != tuple(t.shape):
            raise vera_ref.errors.ModelMismatchError(
                f"stored projection {buf_name}: {list(t.shape)} given, this model holds {list(buf.shape)}")
        buf.copy_(torch.as_tensor(t, dtype=torch.float32))
