"""Convert between PEFT VeRA checkpoints and spec files, with NumPy alone (DESIGN 5).

A PEFT checkpoint is a directory with ``adapter_config.json`` and
``adapter_model.safetensors`` whose keys are

    base_model.model.<module path>.vera_lambda_d | .vera_lambda_b     trained vectors
    base_model.vera_A, base_model.vera_B                              projections (save_projection=True)
    base_model.model.<module path>.<param>                            modules_to_save (a task head)

PEFT records neither the adapted layers' in_features nor, for seed-only checkpoints,
n_in; these come from ``dims`` ({module: (in, out)}), or ``in_features`` for every
module, or from the stored vera_A when it settles them. Stored projections that
equal PEFT's own MT19937 draws are recorded as generator ``peft-mt19937`` (seed
only, spec 2.5.3); others as ``stored``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from . import container
from .adapter import Adapter
from .dtypes import FROM_CODE, SAFETENSORS_CODE
from .errors import AdapterFileError, ConversionError
from .metadata import AdapterConfig, ModuleSpec
from .peft_mt19937 import peft_projection

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_LD, _LB = ".vera_lambda_d", ".vera_lambda_b"


def read_peft(directory: str | os.PathLike) -> tuple[dict, dict[str, container.RawTensor]]:
    d = Path(directory)
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ConversionError(f"{d}: no {CONFIG_FILE} (not a PEFT checkpoint directory)") from None
    except ValueError as exc:
        raise ConversionError(f"{d / CONFIG_FILE}: not valid JSON ({exc.__class__.__name__})") from None
    if cfg.get("peft_type") != "VERA":
        raise ConversionError(f"{d / CONFIG_FILE}: peft_type is {cfg.get('peft_type')!r}, not 'VERA'")
    if not (d / WEIGHTS_FILE).exists():
        raise ConversionError(f"{d}: no {WEIGHTS_FILE} (only the safetensors format is read)")
    try:
        _, tensors = container.read(d / WEIGHTS_FILE)
    except AdapterFileError as exc:
        raise ConversionError(f"{d / WEIGHTS_FILE}: {exc}") from None
    return cfg, tensors


def peft_to_adapter(directory: str | os.PathLike, *, dims: Mapping[str, tuple[int, int]] | None = None,
                    in_features: int | None = None, base_model_name: str | None = None) -> Adapter:
    """A spec adapter from a PEFT VeRA checkpoint directory."""
    cfg, tensors = read_peft(directory)
    if cfg.get("bias", "none") != "none":
        raise ConversionError(f"bias={cfg['bias']!r} is not VeRA's adapter; only bias='none' converts")
    r = int(cfg["r"])
    key = int(cfg.get("projection_prng_key", 0))
    layout = "conv1d" if cfg.get("fan_in_fan_out") else "linear"
    names = [k[len(PREFIX):-len(_LD)] for k in tensors if k.startswith(PREFIX) and k.endswith(_LD)]
    if not names:
        raise ConversionError(f"{directory}: no '*.vera_lambda_d' tensors")
    names.sort(key=_natural)
    A = tensors.get("base_model.vera_A")
    B = tensors.get("base_model.vera_B")
    modules = []
    for n in names:
        lb = tensors.get(PREFIX + n + _LB)
        if lb is None:
            raise ConversionError(f"{n}: vera_lambda_d without vera_lambda_b")
        out_f = lb.shape[0]
        if dims and n in dims:
            fi, fo = dims[n]
            if fo != out_f:
                raise ConversionError(f"{n}: dims give out_features {fo} but vera_lambda_b has {out_f}")
        elif in_features is not None:
            fi = in_features
        elif A is not None and B is not None and out_f == B.shape[0]:
            fi = A.shape[1]  # largest layer: PEFT's n_in is its in_features (spec 2.2)
        else:
            raise ConversionError(f"{n}: in_features unknown; give dims or in_features (PEFT does not record it)")
        modules.append(ModuleSpec(n, int(fi), int(out_f), layout))
    vdt = {t.dtype for n in names for t in (tensors[PREFIX + n + _LD], tensors[PREFIX + n + _LB])}
    if len(vdt) != 1:
        raise ConversionError(f"vectors have mixed dtypes {sorted(vdt)}")
    vector_dtype = FROM_CODE[vdt.pop()]
    acfg = AdapterConfig(r=r, modules=modules, d_initial=float(cfg.get("d_initial", 0.1)),
                         dropout=float(cfg.get("vera_dropout", 0.0)),
                         vector_dtype=vector_dtype, provenance={"converted_from": "peft",
                                                               "peft_version": str(cfg.get("peft_version", ""))})
    if base_model_name or cfg.get("base_model_name_or_path"):
        acfg.base_model = {"name": base_model_name or cfg["base_model_name_or_path"]}
    stored = {}
    if A is not None and B is not None:
        if A.shape != (r, acfg.n_in) or B.shape != (acfg.n_out, r):
            raise ConversionError(f"vera_A {list(A.shape)} / vera_B {list(B.shape)} do not match r={r}, "
                                  f"n_in={acfg.n_in}, n_out={acfg.n_out} of the modules")
        pa, pb = peft_projection(key, r, acfg.n_in, acfg.n_out)
        if np.array_equal(pa, A.data.astype(np.float32)) and np.array_equal(pb, B.data.astype(np.float32)):
            acfg.generator, acfg.seed = "peft-mt19937", key
        else:
            acfg.generator, acfg.seed = "stored", None
            stored = {0: (A.data.astype(np.float32), B.data.astype(np.float32))}
    else:
        acfg.generator, acfg.seed = "peft-mt19937", key
    known = {PREFIX + n + s for n in names for s in (_LD, _LB)} | {"base_model.vera_A", "base_model.vera_B"}
    extra = {k[len(PREFIX):]: (t.data, FROM_CODE[t.dtype]) for k, t in tensors.items() if k not in known}
    bad = [k for k in extra if not (PREFIX + k) in tensors]
    if bad:
        raise ConversionError(f"unexpected tensor {bad[0]!r}")
    ad = Adapter(acfg, {n: tensors[PREFIX + n + _LD].data for n in names},
                 {n: tensors[PREFIX + n + _LB].data for n in names}, stored=stored, extra=extra)
    return ad


def adapter_to_peft(adapter: Adapter, directory: str | os.PathLike, *,
                    base_model_name_or_path: str | None = None) -> None:
    """Write ``adapter`` as a PEFT VeRA checkpoint directory (PEFT 0.21 layout).

    Projections are stored (save_projection=True) unless the generator is
    ``peft-mt19937``, which PEFT rebuilds itself from the key.
    """
    cfg = adapter.config
    if cfg.sharing != "shared":
        raise ConversionError("PEFT supports only shared projections; this adapter is per-module")
    layouts = {m.layout for m in cfg.modules}
    if len(layouts) != 1:
        raise ConversionError("PEFT's fan_in_fan_out is one flag; this adapter mixes linear and conv1d modules")
    A, B = adapter.projection(0)
    seed_only = cfg.generator == "peft-mt19937"
    pcfg = {
        "peft_type": "VERA", "task_type": None, "r": cfg.r,
        "target_modules": sorted({m.name.rpartition(".")[2] for m in cfg.modules}),
        "projection_prng_key": int(cfg.seed) if seed_only else 0,
        "save_projection": not seed_only, "vera_dropout": cfg.dropout, "d_initial": cfg.d_initial,
        "fan_in_fan_out": layouts == {"conv1d"}, "bias": "none",
        "modules_to_save": sorted({k.rpartition(".")[0] for k in adapter.extra}) or None,  # full paths
        "init_weights": True, "layers_to_transform": None, "layers_pattern": None,
        "base_model_name_or_path": base_model_name_or_path or (cfg.base_model or {}).get("name"),
        "revision": None, "inference_mode": True,
    }
    vcode = SAFETENSORS_CODE[cfg.vector_dtype]
    tensors = {}
    for m in cfg.modules:
        tensors[PREFIX + m.name + _LD] = (adapter.lambda_d[m.name], vcode)
        tensors[PREFIX + m.name + _LB] = (adapter.lambda_b[m.name], vcode)
    if not seed_only:
        tensors["base_model.vera_A"], tensors["base_model.vera_B"] = (A, "F32"), (B, "F32")
    for k, (arr, dt) in adapter.extra.items():
        tensors[PREFIX + k] = (arr, SAFETENSORS_CODE[dt])
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    container.write(d / WEIGHTS_FILE, {"format": "pt"}, tensors)
    container.write_atomic(d / CONFIG_FILE, [(json.dumps(pcfg, indent=2) + "\n").encode()])


def _natural(name: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
