"""VeRA on quantized base layers (spec 7; README "Quantized bases"): bitsandbytes ``Linear4bit``
(nf4, fp4, with or without double quantization) and ``Linear8bitLt`` (int8 weights).

The base stays quantized and frozen; the adapter term (spec 3.2) is computed from the layer's
input in the vectors' dtype, exactly as on a full-precision base. This module holds what
differs: recognising the layer (and refusing the quantized layers it does not support with
one clear ``QuantizedLayerError``), W0 as the dequantized weight, the base fingerprint of the
quantized bytes (spec 7.2), the reader's rule across kinds (spec 7.4), merging into the
quantized weight with a checked output change (spec 7.5) and the full-precision merged model
(spec 7.6). bitsandbytes is imported only here, and only when such a layer is met.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from vera_ref.adapter import hash_c_order
from vera_ref.errors import VeraError

from .errors import ConfigError, MergeError

PROVENANCE_KEY = "vera_base_quantization"  # spec 7.3
PROBE_ROWS = 64  # spec 7.5: the default probe batch, (PROBE_ROWS, in) standard normal
PROBE_SEED = 0


class QuantizedLayerError(VeraError, TypeError):
    """A targeted layer is a quantized layer type VeRA does not support (GPTQ, AWQ, HQQ, torchao
    tensor subclasses, ...), or a bitsandbytes layer whose weight is not quantized yet."""


class RequantizationError(MergeError):
    """Merging into a quantized weight would change the layer's output on the probe batch by more
    than the bound (spec 7.5); the weights are unchanged."""


class QuantizedBaseWarning(UserWarning):
    """An adapter file trained on a base of another kind (quantized vs full precision, or another
    scheme) was loaded: its fingerprint cannot be compared (spec 7.4)."""


SUPPORTED = ("bitsandbytes Linear4bit (nf4/fp4, double quantization on or off) and Linear8bitLt "
             "(int8 weights), besides nn.Linear and Conv1D")

# class-name / module markers of quantized layers we refuse, recognised without importing them
_FOREIGN = (
    ("GPTQ", lambda n, m: "QuantLinear" in n or "gptq" in m or "exllama" in m or "marlin" in m),
    ("AWQ", lambda n, m: n.startswith("WQLinear") or "awq" in m),
    ("HQQ", lambda n, m: n.startswith("HQQLinear") or "hqq" in m),
    ("optimum-quanto", lambda n, m: "quanto" in m),
)


def _base(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module) if type(module).__name__ == "VeraLayer" else module


def kind(module: nn.Module) -> str | None:
    """``"bnb-4bit"``, ``"bnb-int8"`` or None (a full-precision layer) for ``module`` (a VeraLayer: its
    base layer). Assumes ``foreign(module)`` is None."""
    w = getattr(_base(module), "weight", None)
    cls = type(w).__name__
    if cls == "Params4bit" and getattr(w, "quant_state", None) is not None:
        return "bnb-4bit"
    if cls == "Int8Params" and w.dtype == torch.int8:
        return "bnb-int8"
    return None


def foreign(module: nn.Module) -> str | None:
    """Why ``module`` cannot be adapted, when it is a quantized layer VeRA does not support; else None."""
    base = _base(module)
    cls, mod = type(base).__name__, type(base).__module__.lower()
    label = f"{type(base).__module__}.{cls}"
    for family, hit in _FOREIGN:
        if "linear" in cls.lower() and hit(cls, mod):  # a layer, never a block of a model in such a package
            return f"a {family} quantized layer ({label})"
    w = getattr(base, "weight", None)
    if isinstance(w, torch.Tensor):
        wcls, wmod = type(w).__name__, type(w).__module__
        if wmod.startswith("torchao") or "quanto" in wmod:
            return f"a {label} whose weight is a {wmod}.{wcls} tensor subclass (torchao / quanto quantization)"
        if wcls == "Params4bit" and getattr(w, "quant_state", None) is None:
            return (f"a bitsandbytes {cls} whose weight is not quantized yet (bitsandbytes quantizes on "
                    f".to(device)/.cuda(): move the model first)")
        if wcls not in ("Params4bit", "Int8Params") and not (w.is_floating_point() or w.is_complex()):
            return f"a {label} with a {str(w.dtype).replace('torch.', '')} weight (an unknown quantized layer)"
    return None


def check_targets(targets: Iterable[tuple[str, nn.Module]]) -> None:
    """``QuantizedLayerError`` naming the first target VeRA cannot adapt (before the model is changed)."""
    for path, module in targets:
        why = foreign(module)
        if why is not None:
            raise QuantizedLayerError(f"{path}: VeRA cannot adapt {why}; supported: {SUPPORTED}")


@torch.no_grad()
def prepare(module: nn.Module) -> None:
    """Keep a 4-bit weight in bitsandbytes' canonical layout (spec 7.2). On CPUs with AVX512-BF16,
    bitsandbytes' Linear4bit rewrites its weight in place at its first eval forward without gradients
    into a CPU kernel layout (and requires out_features % 32 == 0 for it): the bytes change and, with
    double quantization, the absmax statistics are requantized, not restored. An adapted layer keeps
    the canonical layout (the CPU inference kernel is not used); a weight already rewritten is
    converted back (exact without double quantization; with it, bitsandbytes' own best effort)."""
    base = _base(module)
    w = getattr(base, "weight", None)
    if type(w).__name__ != "Params4bit" or getattr(w, "quant_state", None) is None:
        return
    if hasattr(base, "support_avx512bf16_for_cpu"):
        base.support_avx512bf16_for_cpu = False
    if getattr(w.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)


def scheme(module: nn.Module) -> str | None:
    """spec 7.3: ``bnb-nf4``, ``bnb-fp4``, ``bnb-int8`` or None (full precision)."""
    k = kind(module)
    if k == "bnb-4bit":
        return "bnb-" + _base(module).weight.quant_state.quant_type
    return k


def schemes(layers: Iterable[nn.Module]) -> list[str]:
    """spec 7.3: the sorted distinct schemes of the adapted layers ([] for a full-precision base)."""
    return sorted({s for s in (scheme(m) for m in layers) if s is not None})


# -- the quantized weight: what the layer holds, W0 from it, and back ------------------------------
def _held(base: nn.Module) -> dict:
    """Everything that makes up the quantized weight of ``base``, by reference (no copies): putting
    these objects back restores the weight bit for bit (spec 7.5, unmerge)."""
    w = base.weight
    if type(w).__name__ == "Params4bit":
        return {"weight": w}
    st = base.state
    return {"weight": w, "CB": w.CB, "SCB": w.SCB, "state.CB": st.CB, "state.SCB": st.SCB}


def _put(base: nn.Module, held: dict) -> None:
    base.weight = held["weight"]
    if "CB" in held:
        held["weight"].CB, held["weight"].SCB = held["CB"], held["SCB"]
        base.state.CB, base.state.SCB = held["state.CB"], held["state.SCB"]


def _int8(held: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(CB int8 (out, in), SCB float32 (out,)) of an 8-bit weight, wherever bitsandbytes keeps them."""
    scb = held["SCB"] if held["SCB"] is not None else held["state.SCB"]
    return held["weight"].data, scb


@torch.no_grad()
def dequantize(module: nn.Module, held: dict | None = None) -> torch.Tensor:
    """spec 7.1: W0 of a quantized layer, float32 (out, in): bitsandbytes' own dequantization of the
    quantized weight (``held``: a kept original; default: what the layer holds now)."""
    import bitsandbytes.functional as F
    held = _held(_base(module)) if held is None else held
    w = held["weight"]
    if "CB" not in held:
        return F.dequantize_4bit(w.data, w.quant_state).to(torch.float32)
    return F.int8_vectorwise_dequant(*_int8(held)).to(torch.float32)


@torch.no_grad()
def _quantize_like(held: dict, W: torch.Tensor, base: nn.Module) -> dict:
    """A new quantized weight for float32 ``W`` (out, in), in the scheme of ``held`` (spec 7.5)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    w = held["weight"]
    if "CB" not in held:
        qs = w.quant_state
        packed, nqs = F.quantize_4bit(W, blocksize=qs.blocksize, compress_statistics=qs.nested,
                                      quant_type=qs.quant_type, quant_storage=w.quant_storage)
        nqs.dtype = qs.dtype  # the dtype bitsandbytes dequantizes to, as before
        p = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=nqs, blocksize=w.blocksize,
                              compress_statistics=w.compress_statistics, quant_type=w.quant_type,
                              quant_storage=w.quant_storage, module=base, bnb_quantized=True)
        return {"weight": p}
    CB, SCB, _ = F.int8_vectorwise_quant(W.contiguous())
    p = bnb.nn.Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB)
    return {"weight": p, "CB": CB, "SCB": SCB, "state.CB": None, "state.SCB": None}


# -- spec 7.2: the base fingerprint ---------------------------------------------------------------
def _le(t: torch.Tensor) -> bytes:
    """The tensor's values, C order, little-endian, as stored (its own dtype)."""
    a = t.detach().cpu().contiguous()
    if a.dtype == torch.bfloat16:
        a = a.view(torch.int16)
    arr = a.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def fingerprint_segment(module: nn.Module, held: dict | None = None) -> bytes:
    """spec 7.2: the bytes a quantized module contributes after its name and NUL."""
    base = _base(module)
    held = _held(base) if held is None else held
    w = held["weight"]
    if "CB" not in held:
        qs = w.quant_state
        out, inn = tuple(qs.shape)
        desc = (f"bnb-{qs.quant_type};blocksize={qs.blocksize};shape={out}x{inn};"
                f"storage={str(w.quant_storage).replace('torch.', '')};nested={int(qs.nested)}")
        parts = [w.data, qs.absmax, qs.code.to(torch.float32)]
        if qs.nested:
            desc += f";nested_blocksize={qs.state2.blocksize}"
            parts += [qs.offset.reshape(1).to(torch.float32), qs.state2.absmax.to(torch.float32),
                      qs.state2.code.to(torch.float32)]
    else:
        CB, SCB = _int8(held)
        desc = f"bnb-int8;shape={CB.shape[0]}x{CB.shape[1]}"
        parts = [CB, SCB.to(torch.float32)]
    return desc.encode("ascii") + b"\0" + b"".join(_le(p) for p in parts)


def fingerprint(layers: Mapping[str, nn.Module], modules: Iterable[Any],
                to_np: Callable[[torch.Tensor], np.ndarray]) -> str:
    """spec 4.3 with spec 7.2: sha256 over each module in order of its UTF-8 name, a NUL byte, and
    W0 as float32 (full-precision layers, exactly spec 4.3) or the quantized segment (spec 7.2).
    ``layers``: path -> VeraLayer or plain layer; ``to_np``: a float tensor to NumPy."""
    from vera_ref.adapter import base_fingerprint
    from vera_ref.errors import AdapterFileError
    modules = list(modules)
    if not any(kind(layers[m.name]) for m in modules):
        return base_fingerprint({m.name: to_np(_w0(layers[m.name])) for m in modules}, modules)
    h = hashlib.sha256()
    for m in modules:
        layer = layers[m.name]
        h.update(m.name.encode("utf-8") + b"\0")
        if kind(layer):
            prepare(layer)
            h.update(fingerprint_segment(layer, getattr(layer, "_quant_orig", None)))
            continue
        W = to_np(_w0(layer))
        W = W if m.layout == "linear" else W.T  # (out, in)
        if W.shape != (m.out_features, m.in_features):
            raise AdapterFileError("base_model.fingerprint",
                                   f"weight of {m.name!r} has shape {W.shape}, expected {(m.out_features, m.in_features)}")
        hash_c_order(h, W)
    return h.hexdigest()


def _w0(layer: nn.Module) -> torch.Tensor:
    return layer.original_weight if type(layer).__name__ == "VeraLayer" else layer.weight


def provenance(given: Mapping | None, layers: Iterable[nn.Module]) -> dict:
    """spec 7.3: the file's provenance: ``given``, plus the adapted layers' schemes when any is quantized."""
    out = dict(given or {})
    found = schemes(layers)
    if found:
        out[PROVENANCE_KEY] = found
    return out


def fingerprint_comparable(file_provenance: Mapping | None, layers: Iterable[nn.Module]) -> bool:
    """spec 7.4: True when the file's base was of the model's kind (the same schemes, spec 7.3), so
    the fingerprints compare; otherwise warn (QuantizedBaseWarning) and return False."""
    theirs = (file_provenance or {}).get(PROVENANCE_KEY, [])
    theirs = sorted(theirs) if isinstance(theirs, list) else theirs
    mine = schemes(layers)
    if theirs == mine:
        return True
    def say(s):
        return ", ".join(s) if isinstance(s, list) and s else ("full precision" if s == [] else repr(s))
    warnings.warn(f"this adapter was trained on a {say(theirs)} base and this model's adapted layers are "
                  f"{say(mine)}: the base fingerprint cannot be compared (spec 7.4); loaded. Outputs differ "
                  f"from the trained model's by the base term's quantization difference; the adapter term is "
                  f"the trained one", QuantizedBaseWarning, stacklevel=3)
    return False


# -- spec 7.5: merging into the quantized weight ----------------------------------------------------
def _probe(layer: nn.Module, device: torch.device) -> torch.Tensor:
    x = getattr(layer, "quant_probe", None)
    if x is None:
        g = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
        x = torch.randn(PROBE_ROWS, layer.in_features, generator=g, dtype=torch.float32)
    return x.to(device)


@torch.no_grad()
def _adapter_term(layer: nn.Module, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """sum over ``names`` of lambda_b * ((lambda_d * (x A_l^T)) B_l^T), float32 (n, out) (spec 3.2, no dropout)."""
    acc = torch.zeros(x.shape[0], layer.out_features, dtype=torch.float32, device=x.device)
    for n in names:
        ld, lb = layer.vera_lambda_d[n], layer.vera_lambda_b[n]
        dt = torch.promote_types(ld.dtype, torch.float32)
        A_l, B_l = layer.sliced_projection(n, x.device)
        acc += ((((x.to(dt) @ A_l.to(dt).t()) * ld.to(dt)) @ B_l.to(dt).t()) * lb.to(dt)).to(torch.float32)
    return acc


@torch.no_grad()
def merge(layer: nn.Module, name: str, restore: str | None = None, max_output_change: float | None = None) -> None:
    """spec 7.5: fold ``name`` (with the adapters already merged) into the quantized weight:
    W = requantize(dequantize(W0q) + Delta W), Delta W in binary32. The largest change of the
    layer's output this introduces on the probe batch, against the unmerged adapter layer, is kept
    in ``layer.merge_report``; above the bound ``RequantizationError``, the weights unchanged. The
    bound: ``max_output_change`` when given, which also becomes the layer's bound for later merges
    (``layer.max_output_change``: the re-merge after ``disable_adapter`` must not refuse what was
    accepted); else the layer's; else the largest magnitude of the adapter term on the probe."""
    if name in layer.merged:
        return
    mode = layer.restore if restore is None else restore
    if mode not in layer.RESTORE_MODES:
        raise ConfigError("restore", f"{mode!r} is not one of {', '.join(layer.RESTORE_MODES)}")
    if max_output_change is not None and not (max_output_change >= 0):
        raise ConfigError("max_output_change", f"must be a number >= 0, got {max_output_change!r}")
    if max_output_change is not None:
        layer.max_output_change = float(max_output_change)
    base = layer.base_layer
    now = _held(base)
    orig = getattr(layer, "_quant_orig", None)
    # nothing kept (restore="none"): the merged weight is the base now, only ``name`` is added to it
    names = layer.merged + [name] if orig is not None else [name]
    orig = now if orig is None else orig
    new, report = _requantized(layer, orig, names, getattr(layer, "max_output_change", None))
    _put(base, new)
    if mode == "none":
        object.__setattr__(layer, "_quant_orig", None)
        layer._kept_mode = "none"
    else:
        object.__setattr__(layer, "_quant_orig", orig if mode != "cpu" else _to_cpu(orig))
        layer._kept_mode = mode
    layer.merged.append(name)
    layer.merge_report = report


def _to_cpu(held: dict) -> dict:
    return {k: (None if v is None else v.to("cpu")) for k, v in held.items()}


def _on(held: dict, device: torch.device) -> dict:
    if held["weight"].device == device:
        return held
    return {k: (None if v is None else v.to(device)) for k, v in held.items()}


@torch.no_grad()
def _requantized(layer: nn.Module, orig: dict, names: list[str], bound: float | None) -> tuple[dict, dict]:
    """The requantized weight for ``names`` merged and its report; RequantizationError above the bound
    (the layer's weight is as it was on return either way)."""
    base = layer.base_layer
    dev = base.weight.device
    orig = _on(orig, dev)
    dW = sum(layer.delta_weight(n).to(device=dev, dtype=torch.float32) for n in names)  # (out, in)
    if not bool(torch.any(dW != 0)):  # nothing to add: the weight stays the same bytes
        return orig, {"max_output_change": 0.0, "bound": 0.0 if bound is None else float(bound),
                      "adapter_max": 0.0, "probe_rows": 0, "requantized": False}
    W = dequantize(layer, orig) + dW  # binary32
    if not bool(torch.isfinite(W).all()):
        raise RequantizationError(f"merging {names[-1]!r} would make the dequantized weight non-finite; "
                                  f"the weights are unchanged")
    new = _quantize_like(orig, W, base)
    x = _probe(layer, dev)
    now = _held(base)
    try:
        _put(base, orig)
        term = _adapter_term(layer, names, x)
        want = base(x).to(torch.float32) + term  # the unmerged adapter layer
        _put(base, new)
        got = base(x).to(torch.float32)
    finally:
        _put(base, now)
    change = float((got - want).abs().max())
    scale = float(term.abs().max())
    limit = scale if bound is None else float(bound)
    report = {"max_output_change": change, "bound": limit, "adapter_max": scale, "probe_rows": x.shape[0],
              "requantized": True}
    if not math.isfinite(change) or change > limit:
        how = ("the largest magnitude of the adapter term there" if bound is None else "max_output_change")
        raise RequantizationError(
            f"requantizing the {scheme(layer)} weight with {names[-1]!r} merged changes the layer's output by up "
            f"to {change:.4g} on the probe batch ({x.shape[0]} rows), above the bound {limit:.4g} ({how}); the "
            f"weights are unchanged. Pass max_output_change= to accept more, or use "
            f"merge_and_unload(dtype=torch.float32) for a full-precision merged model")
    return new, report


def merge_reports(model: nn.Module) -> dict[str, dict]:
    """spec 7.5: the report of the last merge of every merged quantized layer of ``model``, by path:
    ``max_output_change`` (on the probe batch), ``bound``, ``adapter_max``, ``probe_rows``, ``requantized``.
    A layer's probe batch is ``layer.quant_probe`` ((n, in) tensor) when set, else the default."""
    return {p: m.merge_report for p, m in model.named_modules()
            if type(m).__name__ == "VeraLayer" and m.merged and getattr(m, "merge_report", None) is not None}


@torch.no_grad()
def unmerge(layer: nn.Module, name: str | None = None) -> None:
    """spec 7.5: put back the original quantized weight (the same bytes and state); with ``name``
    and others merged, merge those again from it. ``MergeError`` when nothing was kept."""
    if not layer.merged:
        return
    orig = getattr(layer, "_quant_orig", None)
    if orig is None:
        raise MergeError("this quantized layer was merged with restore='none' (merge_and_unload): its "
                         "original quantized weight was not kept, it cannot be unmerged")
    rest = [n for n in layer.merged if name is not None and n != name]
    _put(layer.base_layer, _on(orig, layer.base_layer.weight.device))
    object.__setattr__(layer, "_quant_orig", None)
    layer.merged = []
    mode = layer._kept_mode
    for n in rest:
        merge(layer, n, mode, math.inf)  # what was merged before, again (accepted then)


def original(layer: nn.Module) -> torch.Tensor:
    """W0 of a quantized VeraLayer, dequantized float32 (out, in), also while merged."""
    return dequantize(layer, getattr(layer, "_quant_orig", None) if layer.merged else None)


# -- spec 7.6: a full-precision merged model -------------------------------------------------------
@torch.no_grad()
def full_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The VeraModel ``model``'s active adapter merged into a full-precision copy of every adapted
    layer: nn.Linear(W0 + Delta W rounded once from binary32 to ``dtype``), W0 dequantized from the
    original quantized weight; every other bitsandbytes layer dequantized; the model cast to ``dtype``.
    Changes the VeraModel in place (as merge_and_unload does) and returns the plain model."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtype", f"must be a floating torch.dtype, got {dtype!r}")
    name = model.active_adapter
    for layer in model.vera_layers():
        todo = [name] if name in layer.proj and name not in layer.merged else []
        if kind(layer) is None:
            if todo:
                layer.merge(name, restore="none")
            continue
        if layer.merged and getattr(layer, "_quant_orig", None) is not None:
            todo, W = layer.merged + todo, original(layer)  # from W0: one rounding of W0 + Delta W
        else:
            W = dequantize(layer)  # nothing merged, or merged with nothing kept: add what is not in it yet
        for n in todo:
            W = W + layer.delta_weight(n).to(W.device, torch.float32)
        layer.base_layer = _linear(layer.base_layer, W, dtype)
        layer.merged = []
        object.__setattr__(layer, "_quant_orig", None)
    out = model.unwrapped(name)
    for path, m in list(out.named_modules()):
        if kind(m) is not None:
            _replace(out, path, _linear(m, dequantize(m), dtype))
    return out.to(dtype)


def _linear(base: nn.Module, W: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=W.device, dtype=dtype)
    lin.weight.copy_(W.to(dtype))
    if base.bias is not None:
        lin.bias.copy_(base.bias.detach().to(dtype))
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False) if base.bias is not None else None
    return lin


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
