"""Convert between PEFT VeRA checkpoints and spec files, with NumPy alone (spec 2.7; README "PEFT compatibility").

A PEFT checkpoint is a directory with ``adapter_config.json`` and
``adapter_model.safetensors`` whose keys are

    base_model.model.<module path>.vera_lambda_d | .vera_lambda_b     trained vectors
    base_model.vera_A, base_model.vera_B                              projections (save_projection=True)
    base_model.model.<module path>.<param>                            modules_to_save (a task head)

Neither direction may change the model without saying so:

* export writes ``target_modules`` as one regular expression of the adapted modules' full
  paths (PEFT full-matches a string, so it cannot select anything else) and checks, with
  PEFT's own rule (``peft_selects``), that exactly those modules are selected before a byte
  is written;
* import applies the same rule to the checkpoint's ``target_modules``: a module whose
  vectors PEFT would not load, or projections PEFT would regenerate at other dimensions
  (spec 2.2) than the checkpoint's modules give, are refused or converted with the
  projections PEFT would use stored (generator ``stored``);
* stored projections that equal PEFT's own MT19937 draws become generator ``peft-mt19937``
  (seed only, spec 2.5.3) unless ``keep_projections=True`` keeps them stored;
* export puts the spec's metadata document (``CARRIED_CONFIG``, with its version) in the
  safetensors metadata of adapter_model.safetensors, which PEFT ignores; import adopts that
  document (generator, seed, module order, base_model fingerprint, provenance) only when it
  describes the checkpoint and its generator regenerates, bit for bit, the projections PEFT
  uses; then the stored A/B are dropped and spec -> PEFT -> spec returns the same bytes.
  Otherwise the checkpoint converts as above, with the reason in provenance.

Everything read is untrusted: adapter_config.json and --dims files are parsed with
``vera_ref.jsontext``'s bounds, regular expressions run on ``vera_ref.peft_regex``'s
linear-time automaton, and every refusal is one ``ConversionError`` line
(``ModelMismatchError`` for a module the given model lacks).

PEFT records neither the adapted layers' in_features nor, for seed-only checkpoints,
n_in; these come from ``model_modules`` (every module of the model), ``dims``
({module: (in, out)}), ``in_features`` for every module, or the stored vera_A.
"""
from __future__ import annotations

import functools
import json
import math
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from . import container, generators, jsontext
from .adapter import Adapter, generate_projection
from .dtypes import FROM_CODE, SAFETENSORS_CODE, round_to
from .errors import AdapterFileError, ConversionError, ModelMismatchError
from .metadata import SPEC_VERSION, AdapterConfig, ModuleSpec, config_json, parse_config
from .peft_mt19937 import peft_projection
from .values import checked_values
from .peft_rule import (_is_int, _natural, _near_names, _show, check_selection, exact_target_modules,  # noqa: F401
                        peft_selects, regex_budget)

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is a few hundred bytes; refuse anything absurd
MAX_DIMS_BYTES = 1 << 24  # --dims: a few dozen bytes per module
_LD, _LB = ".vera_lambda_d", ".vera_lambda_b"
CARRIED_CONFIG = "vera_ref.vera_config"  # safetensors metadata: the spec document (spec 2.7 item 4)
CARRIED_VERSION = "vera_ref.vera_spec_version"
_IGNORED_NOTE = "carried_vera_config_ignored"
_KEY_NOTE = "peft_projection_prng_key"  # provenance: the PEFT key stored projections were drawn with


# -- reading ----------------------------------------------------------------------------------
def _read_json(path: Path, what: str, limit: int) -> object:
    """A JSON file read once with bounded work: size, then vera_ref.jsontext's rules (structure
    count, syntax, depth <= 64, finite numbers, integers in [-2^63, 2^64), no repeated keys)
    before any value is built. Every failure is ConversionError naming the file and the rule."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConversionError(f"{path}: {what} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            raise ConversionError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > limit:
        raise ConversionError(f"{path}: {what} is larger than {limit} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{path}: {what} is not UTF-8 text") from None
    try:
        return jsontext.loads(text)
    except jsontext.JsonRuleError as exc:
        why = {"count": f"more than {jsontext.MAX_STRUCTURAL} structural characters",
               "syntax": "not valid JSON (NaN, Infinity and comments are not JSON)",
               "depth": f"nested deeper than {jsontext.MAX_DEPTH} levels",
               "number": f"the number {str(exc.value)[:40]!s} is out of range (integers in [-2^63, 2^64), "
                         f"finite numbers of at most {jsontext.MAX_NUMBER_CHARS} characters)",
               "duplicate": f"the key {str(exc.value)[:80]!r} appears twice in one object"}[exc.rule]
        raise ConversionError(f"{path}: {what}: {why}") from None


def read_dims(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``--dims``: a JSON file {"module path": [in_features, out_features], ...}, read with bounded
    work (as adapter_config.json); ConversionError on anything else."""
    doc = _read_json(Path(path), "the --dims file", MAX_DIMS_BYTES)
    if not isinstance(doc, dict) or not doc:
        raise ConversionError(f'{path}: must be a JSON object {{"module path": [in_features, out_features], ...}}')
    return _check_dims(doc, str(path))


def _check_dims(dims: Mapping, where: str = "dims") -> dict[str, tuple[int, int]]:
    if not isinstance(dims, Mapping):
        raise ConversionError(f"{where}: must be a mapping of module path -> (in_features, out_features)")
    out = {}
    for k, v in dims.items():
        if not isinstance(k, str) or not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
                _is_int(n) and 0 < n < 1 << 63 for n in v):
            raise ConversionError(f"{where}: {str(k)[:80]!r} must map to [in_features, out_features], two positive "
                                  f"integers, got {_show(v, 80)}")
        out[k] = (int(v[0]), int(v[1]))
    return out


def read_peft(directory: str | os.PathLike) -> tuple[dict, dict[str, container.RawTensor]]:
    """adapter_config.json (bounded JSON, peft_type VERA) and the tensors of adapter_model.safetensors."""
    cfg, _, tensors = _read_peft(directory)
    return cfg, tensors


def _read_peft(directory: str | os.PathLike) -> tuple[dict, dict[str, str], dict[str, container.RawTensor]]:
    d = Path(directory)
    if not d.exists():
        raise ConversionError(f"{d}: no such folder (a PEFT checkpoint is a folder with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE})")
    if not d.is_dir():
        raise ConversionError(f"{d}: not a folder (a PEFT checkpoint is a folder with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE})")
    if not (d / CONFIG_FILE).exists():
        raise ConversionError(f"{d}: no {CONFIG_FILE} in this folder (not a PEFT checkpoint folder)")
    cfg = _read_json(d / CONFIG_FILE, CONFIG_FILE, MAX_CONFIG_BYTES)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "VERA":
        got = cfg.get("peft_type") if isinstance(cfg, dict) else None
        raise ConversionError(f"{d / CONFIG_FILE}: peft_type is {_show(got, 80)}, not 'VERA'")
    if not (d / WEIGHTS_FILE).exists():
        raise ConversionError(f"{d}: no {WEIGHTS_FILE} (only the safetensors format is read)")
    try:
        meta, tensors = container.read(d / WEIGHTS_FILE)
    except AdapterFileError as exc:
        raise ConversionError(f"{d / WEIGHTS_FILE}: {exc}") from None
    return cfg, meta, tensors


# -- the spec document carried through a PEFT file ---------------------------------------------
def _carried(meta: Mapping[str, str], where: Path) -> AdapterConfig | None:
    """The spec metadata document ``adapter_to_peft`` put in the safetensors metadata (README "PEFT
    compatibility", spec 2.7 item 4), parsed with the spec's own rules (spec 4.6 steps 9-21); None if absent."""
    text = meta.get(CARRIED_CONFIG)
    if text is None:
        return None
    try:
        return parse_config(text, meta.get(CARRIED_VERSION))
    except AdapterFileError as exc:
        raise ConversionError(f"{where}: metadata {CARRIED_CONFIG}: {exc}") from None


def _adopt(carried: AdapterConfig, acfg: AdapterConfig, used: tuple[np.ndarray, np.ndarray],
           extra: Iterable[str]) -> str | None:
    """Why the carried document cannot describe this checkpoint (None: it can). It can only if it
    names the same modules, r, dtype and initial values, and its projections, regenerated from its
    generator and seed (spec 2.5), equal bit for bit the ones PEFT uses for this checkpoint."""
    mods = sorted((m.name, m.in_features, m.out_features, m.layout) for m in carried.modules)
    if mods != sorted((m.name, m.in_features, m.out_features, m.layout) for m in acfg.modules):
        return "its modules differ from the checkpoint's"
    if (carried.r, carried.vector_dtype, carried.sharing) != (acfg.r, acfg.vector_dtype, "shared"):
        return "its r, vector_dtype or sharing differ from the checkpoint's"
    if (carried.d_initial, carried.dropout) != (acfg.d_initial, acfg.dropout):
        return "its d_initial or dropout differ from adapter_config.json's"
    if sorted(carried.extra_tensors) != sorted(extra):
        return "its extra tensors differ from the checkpoint's"
    if generators.get(carried.generator).generates:
        A, B = generate_projection(carried, 0, carried.n_in, carried.n_out)
        if not (np.array_equal(np.asarray(A, np.float32), used[0]) and np.array_equal(np.asarray(B, np.float32), used[1])):
            return (f"its generator {carried.generator} with seed {carried.seed} does not give the projections "
                    "PEFT uses for this checkpoint")
    return None


def _bounded(fn):
    """Run ``fn`` with one regex step budget for all its pattern matches (peft_regex.MAX_TOTAL_STEPS)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with regex_budget():
            return fn(*args, **kwargs)
    return run


@_bounded
def peft_to_adapter(directory: str | os.PathLike, *, dims: Mapping[str, tuple[int, int]] | None = None,
                    in_features: int | None = None, base_model_name: str | None = None,
                    keep_projections: bool = False,
                    model_modules: Mapping[str, tuple[int, int] | None] | None = None) -> Adapter:
    """A spec adapter from a PEFT VeRA checkpoint directory, computing what PEFT computes.

    ``model_modules``: every module path of the bare model -> (in_features, out_features) for
    nn.Linear / Conv1D, None for other modules. With it, PEFT's selection on that model is
    reproduced exactly (dimensions of the regenerated projections included); without it, the
    checkpoint's modules are taken to be all PEFT selects (true of every checkpoint PEFT writes).
    ``keep_projections``: stored projections stay stored even when they are PEFT's own draws.
    """
    if dims is not None:
        dims = _check_dims(dims)
    if in_features is not None and not (_is_int(in_features) and 0 < in_features < 1 << 63):
        raise ConversionError(f"in_features must be a positive integer, got {_show(in_features, 80)}")
    cfg, meta, tensors = _read_peft(directory)
    carried = _carried(meta, Path(directory) / WEIGHTS_FILE)
    carried_in = {m.name: m.in_features for m in carried.modules} if carried is not None else {}
    if cfg.get("bias", "none") != "none":
        raise ConversionError(f"bias={_show(cfg['bias'], 120)} is not VeRA's adapter; only bias='none' converts")
    r, key = cfg.get("r"), cfg.get("projection_prng_key", 0)
    if not _is_int(r) or r < 1:
        raise ConversionError(f"r must be a positive integer, got {_show(r, 80)}")
    if not _is_int(key) or not 0 <= key < 1 << 64:
        raise ConversionError(f"projection_prng_key must be an integer in [0, 2^64), got {_show(key, 80)}")
    layout = "conv1d" if cfg.get("fan_in_fan_out") else "linear"
    names = [k[len(PREFIX):-len(_LD)] for k in tensors if k.startswith(PREFIX) and k.endswith(_LD)]
    if not names:
        raise ConversionError(f"{directory}: no '*.vera_lambda_d' tensors")
    names.sort(key=_natural)
    for n in names:  # PEFT loads a module's vectors only if its target_modules select the module
        if not peft_selects(cfg, n):
            raise ConversionError(f"{n:.120}: target_modules {_show(cfg.get('target_modules'), 80)} do not select this module, "
                                  "so PEFT would not load its vectors")
    peft_dims = None  # (n_in, n_out) PEFT gives its projections on the model (spec 2.2), if known
    if model_modules is not None:
        missing = [n for n in names if n not in model_modules]
        if missing:
            raise ModelMismatchError(f"modules: {_show(missing[0], 120)} is not in this model")
        selected = [k for k in model_modules if k and peft_selects(cfg, k)]
        bad = [k for k in selected if model_modules[k] is None]
        if bad:
            raise ConversionError(f"target_modules {_show(cfg.get('target_modules'), 80)} select {_show(bad[0], 120)}, which is not an "
                                  "nn.Linear or Conv1D: PEFT would refuse this checkpoint on this model")
        unloaded = sorted(set(selected) - set(names), key=_natural)
        if unloaded and cfg.get("init_weights", True) is False:
            raise ConversionError(f"target_modules also select {_show(unloaded[0], 120)}, which has no vectors in the "
                                  "checkpoint, and init_weights=false gives it random ones in PEFT")
        peft_dims = (max(model_modules[k][0] for k in selected), max(model_modules[k][1] for k in selected))
        dims = {n: model_modules[n] for n in names}
    A = tensors.get("base_model.vera_A")
    B = tensors.get("base_model.vera_B")
    modules = []
    for n in names:
        lb = tensors.get(PREFIX + n + _LB)
        if lb is None:
            raise ConversionError(f"{n:.120}: vera_lambda_d without vera_lambda_b")
        ld = tensors[PREFIX + n + _LD]
        if ld.shape != (r,) or len(lb.shape) != 1 or lb.shape[0] < 1:
            raise ConversionError(f"{n:.120}: vera_lambda_d {list(ld.shape)} / vera_lambda_b {list(lb.shape)} must be "
                                  f"[{r}] / [out_features]")
        out_f = lb.shape[0]
        if dims and n in dims:
            fi, fo = dims[n]
            if fo != out_f:
                raise ConversionError(f"{n:.120}: the model gives out_features {fo} but vera_lambda_b has {out_f}")
        elif in_features is not None:
            fi = in_features
        elif n in carried_in:
            fi = carried_in[n]  # the spec document adapter_to_peft carried
        elif A is not None and B is not None and out_f == B.shape[0]:
            fi = A.shape[1]  # largest layer: PEFT's n_in is its in_features (spec 2.2)
        else:
            raise ConversionError(f"{n:.120}: in_features unknown; give dims or in_features (PEFT does not record it)")
        modules.append(ModuleSpec(n, int(fi), int(out_f), layout))
    vdt = {t.dtype for n in names for t in (tensors[PREFIX + n + _LD], tensors[PREFIX + n + _LB])}
    if len(vdt) != 1:
        raise ConversionError(f"vectors have mixed dtypes {sorted(vdt)}")
    code = vdt.pop()
    if code not in FROM_CODE:
        raise ConversionError(f"vectors are {code}; only F64, F32, F16 and BF16 convert")
    vector_dtype = FROM_CODE[code]
    d_initial, dropout = cfg.get("d_initial", 0.1), cfg.get("vera_dropout", 0.0)
    for k, v in (("d_initial", d_initial), ("vera_dropout", dropout)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConversionError(f"{k} must be a finite number, got {_show(v, 80)}")
    with np.errstate(over="ignore", invalid="ignore"):
        d_fits = bool(np.all(np.isfinite(round_to(np.array([float(d_initial)]), vector_dtype))))
    if not d_fits:
        raise ConversionError(f"d_initial {_show(d_initial, 80)} is not finite in the vectors' dtype {vector_dtype} "
                              "(spec 3.9)")
    if not 0.0 <= dropout < 1.0:
        raise ConversionError(f"vera_dropout must be in [0, 1), got {_show(dropout, 80)}")
    acfg = AdapterConfig(r=r, modules=modules, d_initial=float(d_initial), dropout=float(dropout),
                         vector_dtype=vector_dtype, provenance={"converted_from": "peft",
                                                               "peft_version": str(cfg.get("peft_version", ""))})
    if base_model_name or cfg.get("base_model_name_or_path"):
        acfg.base_model = {"name": base_model_name or cfg["base_model_name_or_path"]}
    n_in, n_out = acfg.n_in, acfg.n_out
    p_in, p_out = peft_dims or (n_in, n_out)
    if p_in < n_in or p_out < n_out:
        raise ConversionError(f"the model's modules give projections ({p_out}, {p_in}) smaller than the "
                              f"checkpoint's ({n_out}, {n_in})")
    save_projection = bool(cfg.get("save_projection", True))
    has_stored = A is not None or B is not None
    if has_stored and (A is None or B is None):
        raise ConversionError("the checkpoint has only one of base_model.vera_A / base_model.vera_B")
    if save_projection and not has_stored:
        raise ConversionError("save_projection is true but base_model.vera_A / vera_B are missing: "
                              "PEFT refuses this checkpoint")
    if has_stored and save_projection:
        # PEFT loads the stored pair into buffers of its own shape (float32): the shapes must be PEFT's
        if A.shape != (r, p_in) or B.shape != (p_out, r):
            raise ConversionError(f"vera_A {list(A.shape)} / vera_B {list(B.shape)} do not match r={r}, "
                                  f"n_in={p_in}, n_out={p_out} that PEFT gives the selected modules (spec 2.2)")
        used = (A.data.astype(np.float32)[:, :n_in], B.data.astype(np.float32)[:n_out, :])
        origin = "the checkpoint's vera_A / vera_B"
        own = None
    else:
        used = peft_projection(key, r, p_in, p_out)  # what PEFT regenerates from the key
        own = used if (p_in, p_out) == (n_in, n_out) else None
        if has_stored and not (np.array_equal(used[0], A.data.astype(np.float32)) and
                               np.array_equal(used[1], B.data.astype(np.float32))):
            raise ConversionError("save_projection is false, so PEFT ignores the stored vera_A / vera_B and "
                                  f"regenerates them from projection_prng_key={key}, and they differ: refusing "
                                  "to guess which projections the model was trained with")
        used = (used[0][:, :n_in], used[1][:n_out, :])
        origin = f"PEFT's draws for projection_prng_key={key} at n_in={p_in}, n_out={p_out}"
    if own is None:
        own = peft_projection(key, r, n_in, n_out)  # PEFT's draws at the checkpoint's own dimensions
    if np.array_equal(own[0], used[0]) and np.array_equal(own[1], used[1]) and not (keep_projections and has_stored):
        acfg.generator, acfg.seed = "peft-mt19937", key  # spec 2.5.3
        stored = {}
    else:
        acfg.generator, acfg.seed = "stored", None  # spec 2.5.2
        stored = {0: (np.ascontiguousarray(used[0]), np.ascontiguousarray(used[1]))}
        acfg.provenance["projections"] = origin
        if np.array_equal(own[0], used[0]) and np.array_equal(own[1], used[1]):
            acfg.provenance[_KEY_NOTE] = str(key)
    known = {PREFIX + n + s for n in names for s in (_LD, _LB)} | {"base_model.vera_A", "base_model.vera_B"}
    extra = {}
    for k, t in tensors.items():
        if k in known:
            continue
        if not k.startswith(PREFIX):
            raise ConversionError(f"unexpected tensor {_show(k, 120)}")
        if t.dtype not in FROM_CODE:
            raise ConversionError(f"{k:.120}: dtype {t.dtype}; only floating tensors convert")
        extra[k[len(PREFIX):]] = (t.data, FROM_CODE[t.dtype])
    if carried is not None and not (keep_projections and has_stored):
        why = _adopt(carried, acfg, used, extra)
        if why is None:  # verified: the spec file's own document, projections from its generator again
            stored = {} if generators.get(carried.generator).generates else {
                0: (np.ascontiguousarray(used[0]), np.ascontiguousarray(used[1]))}
            acfg = carried  # its module order, provenance and base_model (fingerprint) included
            if base_model_name:
                acfg.base_model = {**(acfg.base_model or {}), "name": base_model_name}
        else:
            acfg.provenance[_IGNORED_NOTE] = why
    lambda_d = {n: tensors[PREFIX + n + _LD].data for n in names}
    lambda_b = {n: tensors[PREFIX + n + _LB].data for n in names}
    _check_finite(lambda_d, lambda_b, stored, extra, f"{directory}: ")
    return Adapter(acfg, lambda_d, lambda_b, stored=stored, extra=extra)


def _check_finite(lambda_d: Mapping, lambda_b: Mapping, stored: Mapping, extra: Mapping, where: str = "") -> None:
    """Every value of a converted adapter is finite (spec 4.6 rule 25, through the value checks
    every backend shares: vera_ref.values), or ConversionError naming the tensor."""
    def error(field: str, problem: str) -> ConversionError:
        return ConversionError(f"{where}{field}: {problem}")
    for what, table in (("vera_lambda_d", lambda_d), ("vera_lambda_b", lambda_b)):
        for n, v in table.items():
            checked_values(f"{_show(n, 120)}.{what}", v, np.shape(v), "float64", error=error)
    for g, pair in stored.items():
        for what, m in zip(("vera_A", "vera_B"), pair):
            checked_values(f"projection group {g} {what}", m, np.shape(m), "float64", error=error)
    for k, (arr, _) in extra.items():
        checked_values(_show(k, 120), arr, np.shape(arr), "float64", error=error)


# -- writing ----------------------------------------------------------------------------------
@_bounded
def adapter_to_peft(adapter: Adapter, directory: str | os.PathLike, *,
                    base_model_name_or_path: str | None = None, keep_projections: bool = False,
                    model_modules: Iterable[str] | None = None) -> None:
    """Write ``adapter`` as a PEFT VeRA checkpoint directory (PEFT 0.21 layout).

    ``target_modules`` is an anchored regular expression of the adapted modules' full paths;
    before anything is written, PEFT's rule (``peft_selects``) must select exactly those modules
    among ``model_modules`` (every module path of the model, when known) or, without them, among
    the modules' ancestors and dot-suffixes. Projections are stored (save_projection=True) unless
    the generator is ``peft-mt19937`` and ``keep_projections`` is false: PEFT then rebuilds them
    from the key, at the same dimensions because it selects the same modules. The spec document
    travels in the safetensors metadata (``CARRIED_CONFIG``) for ``peft_to_adapter`` to restore.
    """
    cfg = adapter.config
    _check_finite(adapter.lambda_d, adapter.lambda_b, adapter.stored, adapter.extra)
    if cfg.sharing != "shared":
        raise ConversionError("PEFT supports only shared projections; this adapter is per-module")
    layouts = {m.layout for m in cfg.modules}
    if len(layouts) != 1:
        raise ConversionError("PEFT's fan_in_fan_out is one flag; this adapter mixes linear and conv1d modules")
    A, B = adapter.projection(0)
    seed_only = cfg.generator == "peft-mt19937" and not keep_projections
    if cfg.generator == "peft-mt19937":
        key = int(cfg.seed)
    else:
        key = int(cfg.provenance.get(_KEY_NOTE, 0)) if str(cfg.provenance.get(_KEY_NOTE, "")).isdigit() else 0
    names = [m.name for m in cfg.modules]
    heads = sorted({k.rpartition(".")[0] for k in adapter.extra}, key=_natural)
    pcfg = {
        "peft_type": "VERA", "task_type": None, "r": cfg.r,
        "target_modules": exact_target_modules(names),
        "projection_prng_key": key,
        "save_projection": not seed_only, "vera_dropout": cfg.dropout, "d_initial": cfg.d_initial,
        "fan_in_fan_out": layouts == {"conv1d"}, "bias": "none",
        "modules_to_save": heads or None,  # full paths
        "init_weights": True, "layers_to_transform": None, "layers_pattern": None,
        "base_model_name_or_path": base_model_name_or_path or (cfg.base_model or {}).get("name"),
        "revision": None, "inference_mode": True,
    }
    text = json.dumps(pcfg, indent=2) + "\n"
    others = set(model_modules) if model_modules is not None else _near_names(names + heads)
    check_selection(json.loads(text), names, others)  # the exact bytes written, read back
    vcode = SAFETENSORS_CODE[cfg.vector_dtype]
    tensors = {}
    for m in cfg.modules:
        tensors[PREFIX + m.name + _LD] = (adapter.lambda_d[m.name], vcode)
        tensors[PREFIX + m.name + _LB] = (adapter.lambda_b[m.name], vcode)
    if not seed_only:
        tensors["base_model.vera_A"], tensors["base_model.vera_B"] = (A, "F32"), (B, "F32")
    for k, (arr, dt) in adapter.extra.items():
        tensors[PREFIX + k] = (arr, SAFETENSORS_CODE[dt])
    cfg.extra_tensors = sorted(adapter.extra)
    cfg.projection_sha256 = adapter.checksums()
    meta = {"format": "pt", CARRIED_VERSION: SPEC_VERSION, CARRIED_CONFIG: config_json(cfg)}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    container.write(d / WEIGHTS_FILE, meta, tensors)
    container.write_atomic(d / CONFIG_FILE, [text.encode()])
