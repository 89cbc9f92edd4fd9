"""Human- and machine-readable descriptions of an adapter file (what ``vera-ref inspect``
and ``vera-ref validate`` print; README "Command line"). Every function checks the file fully
first (spec 4.6, checksums included), so nothing is described that would not load."""
from __future__ import annotations

import json
import os
from typing import Any

from .adapter import load_adapter
from .container import read_metadata
from .metadata import DEFAULT_MAX_PROJECTION_ELEMENTS


def describe_json(path: str | os.PathLike, *,
                  max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS) -> dict[str, Any]:
    """{"file", "bytes", "metadata", "tensors": {name: {dtype, shape, bytes}}} of a valid file; the
    metadata document ``vera_config`` (JSON text inside the header, spec 4.2) is given as the object it
    holds, not as an escaped string."""
    load_adapter(path, max_projection_elements=max_projection_elements)
    meta, entries = read_metadata(path)
    meta = dict(meta)
    if isinstance(meta.get("vera_config"), str):  # the file loaded, so this is the document spec 4.2 describes
        meta["vera_config"] = json.loads(meta["vera_config"])
    return {"file": os.fspath(path), "bytes": os.path.getsize(path), "metadata": meta,
            "tensors": {k: {"dtype": v[0], "shape": list(v[1]), "bytes": v[3] - v[2]}
                        for k, v in sorted(entries.items())}}


def describe(path: str | os.PathLike, *, max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS) -> str:
    """A table of a valid file: config, modules, tensors, verified projection checksums."""
    cfg = load_adapter(path, max_projection_elements=max_projection_elements).config
    meta, entries = read_metadata(path)
    seed = "" if cfg.seed is None else f", seed {cfg.seed}"
    out = [f"{os.fspath(path)}: VeRA adapter, spec {meta.get('vera_spec_version')}, {os.path.getsize(path)} bytes",
           f"  r {cfg.r}, generator {cfg.generator}{seed}, sharing {cfg.sharing}, n_in {cfg.n_in}, n_out {cfg.n_out}",
           f"  vectors {cfg.vector_dtype}, d_initial {cfg.d_initial:g}, dropout {cfg.dropout:g}"]
    if cfg.base_model:
        out.append("  base model: " + ", ".join(f"{k} {v}" for k, v in sorted(cfg.base_model.items())))
    if cfg.provenance:
        out.append("  provenance: " + json.dumps(cfg.provenance, sort_keys=True))
    out.append(f"  modules ({len(cfg.modules)}):")
    width = max(len(m.name) for m in cfg.modules)
    out += [f"    {m.name:<{width}}  in {m.in_features:>6}  out {m.out_features:>6}  {m.layout}" for m in cfg.modules]
    out.append(f"  tensors ({len(entries)}):")
    width = max((len(k) for k in entries), default=0)
    out += [f"    {k:<{width}}  {dtype:<4}  {str(list(shape)):<14} {e - b:>10} bytes"
            for k, (dtype, shape, b, e) in sorted(entries.items())]
    out.append("  projection checksums (sha256 of float32 LE bytes, verified):")
    out += [f"    group {c['group']}: A {c['A']}  B {c['B']}" for c in cfg.projection_sha256]
    return "\n".join(out)


def validity(path: str | os.PathLike, *, max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS) -> str:
    """The one line ``vera-ref validate`` prints for a valid file (raises AdapterFileError otherwise)."""
    cfg = load_adapter(path, max_projection_elements=max_projection_elements).config
    return (f"valid: {os.fspath(path)} (r {cfg.r}, {len(cfg.modules)} modules, generator {cfg.generator}, "
            f"checksums verified)")
