"""VeRA for Flax NNX: adapt the ``nnx.Linear`` modules you name, train only lambda_d/lambda_b,
load and save the spec's adapter files, merge back into plain ``nnx.Linear`` (spec 2-4).

    from flax import nnx
    import optax
    from vera_jax.nnx import VeraParam, apply_vera, save_adapter, merge_and_unload

    apply_vera(model, ["fc1", "fc2"], r=64, seed=0)          # in place; A, B from the seed
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=VeraParam)   # only the VeRA vectors train
    ...
    save_adapter(model, "task.safetensors")                  # the same file vera_torch reads
    merge_and_unload(model)                                  # plain nnx.Linear again

Module names are the dotted paths of ``nnx.iter_modules`` (``layers.0.fc``), the names a
file's ``modules`` hold. An ``nnx.Linear`` computes ``x @ kernel + bias`` with a kernel of
shape (in, out), i.e. ``x W0^T`` with ``W0 = kernel^T`` (out, in): the spec's ``linear``
layer (spec 3.7), written so in files and fingerprinted as ``kernel^T`` (spec 4.3), so a
model trained in PyTorch with ``nn.Linear`` and one in Flax with ``nnx.Linear`` exchange
files. A file that names a module ``conv1d`` (GPT-2's Conv1D, the same math) is served too
and written back with its layout.

A loaded file is written back whole: ``save_adapter(model, path)`` keeps its module order,
tensor layout, ``d_initial``, ``dropout``, ``provenance``, ``base_model``, extra tensors (the
heads' current values, in the file's names and dtypes) and stored projections; the keywords
``packed``, ``provenance``, ``base_model``, ``base_model_name``, ``fingerprint``,
``vector_dtype`` and ``modules_to_save`` set them instead (``to_adapter``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vera_ref
from vera_ref import Adapter, AdapterConfig, ModuleSpec, generators
from vera_ref.adapter import base_fingerprint
from vera_ref.dtypes import compute_dtype, round_to
from vera_ref.errors import AdapterFileError, ModelMismatchError, ProjectionError
from vera_ref.values import checked_table, checked_values

from .errors import MergeError
from .layer import adapter_out, merge
from .files import projections, read_adapter

_JNP = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


class VeraParam(nnx.Param):
    """A trained VeRA vector (lambda_d or lambda_b): the filter for ``nnx.Optimizer(..., wrt=VeraParam)``."""


class VeraProjection(nnx.Variable):
    """A frozen projection (A or B), rebuilt from the seed; never a ``nnx.Param``, so never trained."""


@dataclass(frozen=True)
class VeraSettings:
    """The adapter-wide fields of the file (spec 4.3) that every VeraLinear of a model shares.

    Besides the fields the math needs, it keeps what a loaded file carried so that ``save_adapter``
    writes it back (spec 4.3-4.4): ``tensor_layout``; ``base_model`` (name, revision, fingerprint as
    sorted (key, value) pairs); ``provenance`` (the JSON text of the object, exact); ``extra``
    ((tensor name, file dtype) of each extra tensor, in file order). Hashable, as a static
    attribute of an NNX graph must be."""

    r: int
    generator: str
    seed: int | None
    sharing: str
    d_initial: float
    dropout: float
    vector_dtype: str
    tensor_layout: str = "per-module"
    base_model: tuple[tuple[str, str], ...] = ()
    provenance: str = "{}"
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def provenance_dict(self) -> dict:
        """``provenance`` as the JSON object it holds (a fresh copy)."""
        return json.loads(self.provenance)


class VeraLinear(nnx.Module):
    """An ``nnx.Linear`` with a VeRA adapter (spec 3.2): ``base(x) + lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T)``.

    A (r, n_in) and B (n_out, r) are the shared (or per-module) projections, the same
    VeraProjection objects in every layer that shares them; this layer uses the leading
    slices A[:, :in], B[:out] (spec 2.3). Dropout (spec 3.3) is an ``nnx.Dropout`` on the
    adapter input, active in ``model.train()`` mode. ``index`` is the module's position in the
    adapter's module list (spec 4.3: that order defines the per-module groups); ``to_adapter``
    writes the modules in this order, whatever order the model's attributes iterate in.
    """

    def __init__(self, base: nnx.Linear, A: VeraProjection, B: VeraProjection, lambda_d, lambda_b, *,
                 settings: VeraSettings, group: int, layout: str, rngs: nnx.Rngs | None = None,
                 remat: bool = True, index: int = 0) -> None:
        self.base = base
        self.A, self.B = A, B
        self.lambda_d = VeraParam(jnp.asarray(lambda_d))  # (r,)
        self.lambda_b = VeraParam(jnp.asarray(lambda_b))  # (out,)
        self.settings, self.group, self.layout, self.index = settings, group, layout, index
        self.in_features, self.out_features = base.in_features, base.out_features
        if settings.dropout > 0 and rngs is None:
            raise ModelMismatchError(f"dropout: p={settings.dropout} needs rngs= (an nnx.Rngs with a 'dropout' stream)")
        self.drop = nnx.Dropout(settings.dropout, rngs=rngs) if settings.dropout > 0 else None
        self.remat = remat  # True: backward keeps only the branch's inputs (vera_jax.adapter_out)

    def _dropout_key(self) -> jax.Array | None:
        """A fresh key of the dropout stream in train mode (the mask is drawn inside the branch, so the
        recompute of backward draws the same one); None in eval mode (spec 3.3: identity)."""
        d = self.drop
        if d is None or d.deterministic:
            return None
        return d.rngs[d.rng_collection]() if isinstance(d.rngs, nnx.Rngs) else d.rngs()

    def __call__(self, x: jax.Array, *, dropout_mask: jax.Array | None = None) -> jax.Array:
        """``dropout_mask`` (shape of x, 0/1): this exact mask instead of a random one (spec 3.3)."""
        y = self.base(x)  # (..., out)
        key = self._dropout_key() if dropout_mask is None else None  # spec 3.3: adapter input only
        z = adapter_out(x, self.A[...], self.B[...], self.lambda_d[...], self.lambda_b[...],
                        dropout_mask=dropout_mask, dropout_key=key, dropout=self.settings.dropout,
                        remat=self.remat)
        return y + z.astype(y.dtype)

    def delta_merged_kernel(self) -> jax.Array:
        """The base kernel (in, out) with Delta W^T added (spec 3.5)."""
        return merge(self.base.kernel[...], self.A[...], self.B[...], self.lambda_d[...], self.lambda_b[...],
                     layout="conv1d")


# -- finding and replacing modules ----------------------------------------------------------------

def _name(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _modules(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Module]]:
    """Dotted name -> (path, module) for every module below the root, in graph order."""
    return {_name(p): (tuple(p), m) for p, m in nnx.iter_modules(model) if len(p)}


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = model
    for part in path[:-1]:
        parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    last = path[-1]
    if isinstance(last, int):
        parent[last] = new
    else:
        setattr(parent, last, new)


def _matches(name: str, patterns: Sequence[str] | str) -> bool:
    """PEFT's rule, as vera_torch: suffixes (``["query"]`` matches ``...self.query``) or one regex."""
    import re
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def vera_layers(model: nnx.Module) -> list[tuple[str, VeraLinear]]:
    """(dotted name, VeraLinear) of every adapted module, in graph order."""
    return [(n, m) for n, (_, m) in _modules(model).items() if isinstance(m, VeraLinear)]


# -- building adapters ----------------------------------------------------------------------------

def apply_vera(model: nnx.Module, target_modules: Sequence[str] | str, r: int, *, seed: int = 0,
               d_initial: float = 0.1, dropout: float = 0.0, sharing: str = "shared",
               generator: str = "philox4x32-10", vector_dtype: str = "float32",
               rngs: nnx.Rngs | None = None, remat: bool = True) -> list[str]:
    """Adapt every ``nnx.Linear`` whose dotted name matches ``target_modules``, in place (spec 3.9:
    lambda_b = 0, lambda_d = d_initial, an exact no-op until trained). Returns the adapted names.
    ``remat`` (default True): backward keeps only the adapter branch's inputs and recomputes the
    rest (``vera_jax.adapter_out``); False keeps the intermediates (more memory, no recompute)."""
    if not generators.get(generator).generates:
        raise ProjectionError(f"the {generator} generator has no rule to generate from: load a file that "
                              "stores A and B with load_adapter")
    found = _modules(model)
    inside = tuple(n + "." for n, (_, m) in found.items() if isinstance(m, VeraLinear))  # their .base is not a target
    mods = [ModuleSpec(n, m.in_features, m.out_features) for n, (_, m) in found.items()
            if isinstance(m, nnx.Linear) and not n.startswith(inside) and _matches(n, target_modules)]
    if not mods:
        raise ModelMismatchError(f"modules: no nnx.Linear of this model matches {target_modules!r}")
    ad = vera_ref.new_adapter(mods, r=r, seed=seed, d_initial=d_initial, dropout=dropout, sharing=sharing,
                              generator=generator, vector_dtype=vector_dtype)
    return _attach(model, ad, rngs=rngs, held=None, remat=remat)


def load_adapter(model: nnx.Module, path: str | os.PathLike | Adapter, *, check_fingerprint: bool = True,
                 vector_dtype: str | None = None, rngs: nnx.Rngs | None = None, remat: bool = True) -> list[str]:
    """Load a spec file (or a ``vera_ref.Adapter``) into ``model``, in place; returns the module names.

    A path is read by ``vera_jax.read_adapter``: every check of spec 4.6, the checksums of rule
    26 against this backend's projections. The values of a file and of an in-memory Adapter go
    through ``vera_ref.values.checked_values`` in the dtype they are held in: NaN, infinity or a
    value that overflows it (1e300 held as float32) is an ``AdapterFileError``, nothing changed. Every module must be an ``nnx.Linear`` (or an
    adapted one) of the file's dimensions, and the base weights must match the file's
    fingerprint when it has one (``ModelMismatchError`` otherwise). Extra tensors (a task
    head) load into the ``nnx.Linear`` they name, in PyTorch's names (``head.weight``
    (out, in), ``head.bias``) or Flax's (``head.kernel`` (in, out)).
    ``vector_dtype``: hold the vectors in this dtype instead of the file's. ``remat``: as in ``apply_vera``.
    """
    if not isinstance(path, (Adapter, str, os.PathLike)):
        raise AdapterFileError("path", f"expected a file path or a vera_ref.Adapter, got {type(path).__name__}")
    ad = path if isinstance(path, Adapter) else read_adapter(path)
    return _attach(model, ad, rngs=rngs, held=vector_dtype, check_fingerprint=check_fingerprint, remat=remat)


def _held_dtype(name: str):
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ModelMismatchError("vector_dtype: float64 vectors need jax_enable_x64 (jax.config.update("
                                 "'jax_enable_x64', True)); or load with vector_dtype='float32' to hold them rounded")
    return jnp.float64 if name == "float64" else jnp.float32  # float32 holds float16/bfloat16 exactly


def _attach(model: nnx.Module, ad: Adapter, *, rngs, held: str | None, check_fingerprint: bool = False,
            remat: bool = True) -> list[str]:
    cfg = ad.config
    found = _modules(model)
    bases = {}
    for m in cfg.modules:
        if m.name not in found:
            raise ModelMismatchError(f"modules: {m.name!r} is not in this model")
        mod = found[m.name][1]
        base = mod.base if isinstance(mod, VeraLinear) else mod
        if not isinstance(base, nnx.Linear):
            raise ModelMismatchError(f"modules: {m.name!r} is a {type(base).__name__}, not an nnx.Linear")
        if (base.in_features, base.out_features) != (m.in_features, m.out_features):
            raise ModelMismatchError(f"modules: {m.name!r} is (in={base.in_features}, out={base.out_features}) in "
                                     f"this model but (in={m.in_features}, out={m.out_features}) in the adapter")
        bases[m.name] = base
    heads = _head_values(found, ad)
    if check_fingerprint and cfg.base_model and "fingerprint" in cfg.base_model:
        mine = base_fingerprint({m.name: _w0(bases[m.name], m.layout) for m in cfg.modules}, cfg.modules)
        if mine != cfg.base_model["fingerprint"]:
            raise ModelMismatchError(f"base_model.fingerprint: this model's weights give {mine[:16]}..., the "
                                     f"adapter was trained on {cfg.base_model['fingerprint'][:16]}...")
    dt = _held_dtype(held or cfg.vector_dtype)
    settings = VeraSettings(cfg.r, cfg.generator, cfg.seed, cfg.sharing, cfg.d_initial, cfg.dropout,
                            cfg.vector_dtype, cfg.tensor_layout,
                            tuple(sorted((k, v) for k, v in (cfg.base_model or {}).items() if v is not None)),
                            json.dumps(dict(cfg.provenance or {})), tuple((k, d) for k, (_, d) in ad.extra.items()))
    held_name = jnp.dtype(dt).name
    vectors = {m.name: (checked_table(ad.lambda_d, m.name, f"{m.name}.lambda_d", (cfg.r,), held_name),
                        checked_table(ad.lambda_b, m.name, f"{m.name}.lambda_b", (m.out_features,), held_name))
               for m in cfg.modules}  # (r,), (out,): present, finite, finite in the held dtype
    pairs = {g: (VeraProjection(A), VeraProjection(B)) for g, (A, B) in projections(ad).items()}
    # -- checked: change the model --------------------------------------------------------------------
    for i, m in enumerate(cfg.modules):
        A, B = pairs[cfg.group_of(i)]
        ld, lb = vectors[m.name]
        layer = VeraLinear(bases[m.name], A, B, jnp.asarray(ld, dt), jnp.asarray(lb, dt), settings=settings,
                           group=cfg.group_of(i), layout=m.layout, rngs=rngs, remat=remat, index=i)
        _replace(model, found[m.name][0], layer)
    for (lin, attr), value in heads:
        getattr(lin, attr)[...] = jnp.asarray(value, getattr(lin, attr)[...].dtype)
    return [m.name for m in cfg.modules]


def _w0(base: nnx.Linear, layout: str) -> np.ndarray:
    """W0 as the file's layout stores it: (out, in) for linear, (in, out) for conv1d (spec 3.7)."""
    k = np.asarray(base.kernel[...], dtype=np.float32)  # (in, out)
    return k.T if layout == "linear" else k


def _head_values(found, ad: Adapter) -> list[tuple[tuple[nnx.Linear, str], np.ndarray]]:
    """Extra tensors (spec 4.3 extra_tensors) as (nnx.Linear, 'kernel' or 'bias') -> value, checked."""
    out = []
    for key, (arr, _) in ad.extra.items():
        owner, _, pname = key.rpartition(".")
        mod = found.get(owner, (None, None))[1]
        if not isinstance(mod, nnx.Linear):
            raise ModelMismatchError(f"{key}: the model has no nnx.Linear {owner!r} for this extra tensor")
        arr = np.asarray(arr)
        if pname == "weight":  # PyTorch's name and orientation (out, in)
            attr, arr = "kernel", arr.T
        elif pname in ("kernel", "bias"):
            attr = pname
        else:
            raise ModelMismatchError(f"{key}: an nnx.Linear has no tensor {pname!r} (weight, kernel or bias)")
        have = getattr(mod, attr, None)
        if have is None or tuple(have[...].shape) != arr.shape:
            raise ModelMismatchError(f"{key}: shape {list(arr.shape)} in the adapter but "
                                     f"{list(have[...].shape) if have is not None else 'none'} in the model")
        arr = checked_values(key, arr, arr.shape, jnp.dtype(have[...].dtype).name)  # finite in the model's dtype
        out.append(((mod, attr), arr))
    return out


# -- files ----------------------------------------------------------------------------------------

def to_adapter(model: nnx.Module, *, fingerprint: bool = True, packed: bool | None = None,
               vector_dtype: str | None = None, modules_to_save: Iterable[str] | None = None,
               base_model_name: str | None = None, provenance: dict | None = None,
               base_model: dict | None = None) -> Adapter:
    """The spec's in-memory adapter (``vera_ref.Adapter``) of ``model``'s VeRA layers: everything the
    model holds, so a loaded file is written back whole (spec 4.3-4.5).

    The modules in the adapter's order (``VeraLinear.index``: the loaded file's, or graph order
    after ``apply_vera``), r, generator, seed, sharing, ``d_initial``, ``dropout``, the vectors, and
    the stored projections of the ``stored`` generator (spec 2.5.2) always; the rest as loaded
    unless given:

    ``packed``: the packed tensor layout of spec 4.4 (True) or per-module (False); default: the
    loaded file's layout (per-module after ``apply_vera``).
    ``vector_dtype``: store the vectors rounded to this dtype (default: the dtype the adapter was
    created or loaded with).
    ``modules_to_save``: dotted names of ``nnx.Linear`` task heads to store as extra tensors, in
    PyTorch's names (``head.weight`` (out, in), ``head.bias``), each in the dtype the loaded file
    gave that tensor, else the head's; default: the extra tensors the loaded file had, under
    their names and in their dtypes, with the heads' current values (rounded to that dtype).
    ``provenance``: the free-form JSON object to write (default: the loaded file's).
    ``base_model``: the ``base_model`` fields (``name``, ``revision``, ``fingerprint``) to write
    as given (default: the loaded file's); ``base_model_name`` overrides its name.
    ``fingerprint``: True writes the fingerprint of this model's base weights (spec 4.3) when
    ``base_model`` (given or loaded) holds none; one it holds is written as it is (as vera_torch
    does with a given one: spec 4.3 wants the weights the adapter was trained on, which a file
    loaded with ``check_fingerprint=False`` onto other weights still names; pass ``base_model={}``
    to fingerprint this model's weights instead). False computes none.
    """
    layers = vera_layers(model)
    if not layers:
        raise ModelMismatchError("modules: this model has no VeRA layers (apply_vera or load_adapter first)")
    s = layers[0][1].settings
    if any(layer.settings != s for _, layer in layers):
        raise ModelMismatchError("modules: the VeRA layers of this model come from different adapters")
    layers = sorted(layers, key=lambda nl: nl[1].index)  # spec 4.3: the adapter's order (stable: ties keep graph order)
    vd = vector_dtype or s.vector_dtype
    base = {k: v for k, v in (dict(s.base_model) if base_model is None else dict(base_model)).items()
            if v is not None}
    if base_model_name:
        base["name"] = base_model_name
    mods = [ModuleSpec(n, layer.in_features, layer.out_features, layer.layout) for n, layer in layers]
    if fingerprint and "fingerprint" not in base:
        base["fingerprint"] = base_fingerprint({n: _w0(layer.base, layer.layout) for n, layer in layers}, mods)
    layout = s.tensor_layout if packed is None else ("packed" if packed else "per-module")
    cfg = AdapterConfig(r=s.r, modules=mods, generator=s.generator, seed=s.seed, sharing=s.sharing,
                        vector_dtype=vd, tensor_layout=layout, d_initial=s.d_initial, dropout=s.dropout,
                        base_model=base or None,
                        provenance=s.provenance_dict if provenance is None else dict(provenance))

    def held(v):  # spec 4.5: the vectors rounded to the file's dtype
        return round_to(np.asarray(v, dtype=np.float64), vd).astype(compute_dtype(vd))

    ad = Adapter(cfg, {n: held(layer.lambda_d[...]) for n, layer in layers},
                 {n: held(layer.lambda_b[...]) for n, layer in layers})
    if not generators.get(s.generator).generates:  # spec 2.5.2: A and B travel in the file
        for n, layer in layers:
            ad.stored[layer.group] = (np.asarray(layer.A[...], np.float32), np.asarray(layer.B[...], np.float32))
    found = _modules(model)
    loaded = dict(s.extra)
    if modules_to_save is None:
        keys = list(loaded)
    else:
        keys = []
        for head in modules_to_save:
            mod = found.get(head, (None, None))[1]
            if not isinstance(mod, nnx.Linear):
                raise ModelMismatchError(f"modules_to_save: {head!r} is not an nnx.Linear of this model")
            keys += [f"{head}.weight"] + ([f"{head}.bias"] if mod.bias is not None else [])
    for key in keys:
        ad.extra[key] = _extra(found, key, loaded.get(key))
    return ad


def _extra(found, key: str, dtype: str | None) -> tuple[np.ndarray, str]:
    """The extra tensor ``key`` (``head.weight`` (out, in), ``head.kernel`` (in, out) or ``head.bias``)
    from the ``nnx.Linear`` it names, rounded to ``dtype`` (default: the head's dtype, spec 4.5)."""
    owner, _, pname = key.rpartition(".")
    mod = found.get(owner, (None, None))[1]
    attr = "kernel" if pname in ("weight", "kernel") else pname
    var = getattr(mod, attr, None) if isinstance(mod, nnx.Linear) and pname in ("weight", "kernel", "bias") else None
    if var is None:
        raise ModelMismatchError(f"{key}: the model has no nnx.Linear {owner!r} holding this extra tensor")
    a = var[...]
    name = dtype or {jnp.dtype(v): k for k, v in _JNP.items()}.get(jnp.dtype(a.dtype), "float32")
    v = np.asarray(a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a)
    v = v.T if pname == "weight" else v
    return round_to(v, name).astype(compute_dtype(name)), name


def save_adapter(model: nnx.Module, path: str | os.PathLike, **kwargs) -> None:
    """Write the model's adapter as a spec file (spec 4), atomically (``vera_ref.save_adapter``):
    everything ``to_adapter`` gives, whose keywords (``fingerprint``, ``packed``, ``vector_dtype``,
    ``modules_to_save``, ``base_model_name``, ``provenance``, ``base_model``) it takes; by default a
    loaded file is written back with every field it carried."""
    vera_ref.save_adapter(to_adapter(model, **kwargs), path)


# -- merging --------------------------------------------------------------------------------------

def merge_and_unload(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base kernel (spec 3.5) and put the plain ``nnx.Linear`` back; returns model.

    Delta W is formed and added in float32 or wider and rounded once to the kernel's dtype (spec
    3.6). ``MergeError``, every kernel and every adapter left as they were, when a merged kernel
    would hold a non-finite value where its base kernel was finite (spec 3.6 MUST): e.g. lambdas
    that push a float16 kernel past 65504."""
    layers = vera_layers(model)
    for name, layer in layers:  # every kernel checked before any is written; one merged kernel alive at a time
        k0 = layer.base.kernel[...]  # (in, out)
        k = layer.delta_merged_kernel()
        bad = int(jnp.count_nonzero(jnp.isfinite(k0) & ~jnp.isfinite(k)))
        if bad:
            raise MergeError(f"{name}: merging would make {bad} of the {k.size} values of the {tuple(k.shape)} "
                             f"{jnp.dtype(k.dtype).name} kernel non-finite; the weights are unchanged")
        del k
    for name, layer in layers:  # the same computation again (deterministic): what was checked is written
        layer.base.kernel[...] = layer.delta_merged_kernel()
        _replace(model, _modules(model)[name][0], layer.base)
    return model


def unload(model: nnx.Module) -> nnx.Module:
    """Drop every adapter without merging: the plain base model again; returns model."""
    for name, layer in vera_layers(model):
        _replace(model, _modules(model)[name][0], layer.base)
    return model
