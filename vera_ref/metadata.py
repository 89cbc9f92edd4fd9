"""The VeRA metadata document inside an adapter file (spec 4.2-4.4, 4.6).

``parse_config`` applies the document rules of spec 4.6 in the order of its table,
raising ``AdapterFileError(field, problem)`` on the first broken rule;
``config_json`` writes the canonical form (spec 4.3).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .dtypes import EPS
from .errors import AdapterFileError

FORMAT_KEY = "vera_format"  # spec 4.2: the magic
FORMAT_NAME = "vera-adapter"
VERSION_KEY = "vera_spec_version"
CONFIG_KEY = "vera_config"
SPEC_VERSION = "1.0"  # spec 4.8
SPEC_MAJOR, SPEC_MINOR = 1, 0
GENERATORS = ("philox4x32-10", "stored", "peft-mt19937")  # spec 2.5
SHARING = ("shared", "per-module")  # spec 2.4
LAYOUTS = ("linear", "conv1d")  # spec 3.7
TENSOR_LAYOUTS = ("per-module", "packed")  # spec 4.4
DEFAULT_MAX_PROJECTION_ELEMENTS = 1 << 28  # spec 4.6: 1 GiB of float32 for A and B together
_SEED_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_PREFIX_RE = re.compile(r"([A-Za-z0-9_\-]+\.)*")
KNOWN_FIELDS = ("r", "generator", "seed", "n_in", "n_out", "sharing", "projection_sha256", "modules",
                "module_prefix", "tensor_layout", "vector_dtype", "d_initial", "dropout", "extra_tensors",
                "base_model", "provenance")


@dataclass(frozen=True)
class ModuleSpec:
    """One adapted layer (spec 4.3): dotted path from the model root, dims, layout."""

    name: str
    in_features: int
    out_features: int
    layout: str = "linear"


@dataclass
class AdapterConfig:
    """The metadata document of spec 4.3, parsed."""

    r: int
    modules: list[ModuleSpec]
    generator: str = "philox4x32-10"
    seed: int | None = 0
    n_in: int = 0  # 0: the largest in_features of the modules
    n_out: int = 0
    sharing: str = "shared"
    tensor_layout: str = "per-module"
    vector_dtype: str = "float32"
    d_initial: float = 0.1
    dropout: float = 0.0
    extra_tensors: list[str] = field(default_factory=list)
    base_model: dict[str, str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    projection_sha256: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.modules and not self.n_in:
            self.n_in = max(m.in_features for m in self.modules)
        if self.modules and not self.n_out:
            self.n_out = max(m.out_features for m in self.modules)

    def groups(self) -> list[tuple[int, int, int]]:
        """spec 2.4: (group, n_in, n_out) of each projection pair the adapter uses."""
        if self.sharing == "shared":
            return [(0, self.n_in, self.n_out)]
        return [(i + 1, m.in_features, m.out_features) for i, m in enumerate(self.modules)]

    def group_of(self, index: int) -> int:
        return 0 if self.sharing == "shared" else index + 1

    def projection_elements(self) -> int:
        return sum(self.r * (n_in + n_out) for _, n_in, n_out in self.groups())


def _int(doc: dict, key: str, where: str = "", minimum: int = 1) -> int:
    v = doc.get(key)
    name = where + key
    if v is None:
        raise AdapterFileError(name, "missing")
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise AdapterFileError(name, f"must be an integer >= {minimum}, got {json.dumps(v)}")
    return v


def _choice(doc: dict, key: str, allowed: tuple[str, ...], where: str = "", default: str | None = None) -> str:
    v = doc.get(key, default)
    name = where + key
    if v is None:
        raise AdapterFileError(name, "missing")
    if v not in allowed:
        raise AdapterFileError(name, f"must be one of {', '.join(allowed)}, got {json.dumps(v)}")
    return v


def _number(doc: dict, key: str, default: float, unit_interval: bool) -> float:
    v = doc.get(key, default)
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    if unit_interval and (bad or not 0.0 <= v < 1.0):
        raise AdapterFileError(key, f"must be a number in [0, 1), got {json.dumps(v)}")
    if bad:
        raise AdapterFileError(key, f"must be a finite number, got {json.dumps(v)}")
    return float(v)


def _modules(doc: dict) -> list[ModuleSpec]:
    """spec 4.3: modules as [name, in_features, out_features] or [..., layout], names after module_prefix."""
    prefix = doc.get("module_prefix", "")
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise AdapterFileError("module_prefix", f"must be empty or dotted path parts each ending in '.', "
                                                f"got {json.dumps(prefix)}")
    mods = doc.get("modules")
    if mods is None:
        raise AdapterFileError("modules", "missing")
    if not isinstance(mods, list) or not mods:
        raise AdapterFileError("modules", "must be a non-empty list")
    out, seen = [], set()
    for i, m in enumerate(mods):
        where = f"modules[{i}]"
        if not isinstance(m, list) or len(m) not in (3, 4):
            raise AdapterFileError(where, "must be [name, in_features, out_features] or "
                                          "[name, in_features, out_features, layout]")
        name = m[0]
        if not isinstance(name, str) or not _NAME_RE.fullmatch(prefix + name):
            raise AdapterFileError(where, f"name must make a dotted module path, got {json.dumps(name)}")
        full = prefix + name
        if full in seen:
            raise AdapterFileError("modules", f"duplicate module {full!r}")
        seen.add(full)
        for j, what in ((1, "in_features"), (2, "out_features")):
            v = m[j]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AdapterFileError(where, f"{what} must be an integer >= 1, got {json.dumps(v)}")
        layout = m[3] if len(m) == 4 else "linear"
        if layout not in LAYOUTS:
            raise AdapterFileError(where, f"layout must be one of {', '.join(LAYOUTS)}, got {json.dumps(layout)}")
        out.append(ModuleSpec(full, m[1], m[2], layout))
    return out


def _seed(doc: dict, generator: str) -> int | None:
    v = doc.get("seed")
    if generator == "stored":
        if v is not None:
            raise AdapterFileError("seed", "must be absent for the stored generator")
        return None
    if v is None:
        raise AdapterFileError("seed", "missing")
    if not isinstance(v, str) or not _SEED_RE.fullmatch(v) or int(v) >= 1 << 64:
        raise AdapterFileError("seed", f"must be a decimal string in [0, 2^64), got {json.dumps(v)}")
    return int(v)


def _checksums(doc: dict, groups: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    v = doc.get("projection_sha256")
    if v is None:
        raise AdapterFileError("projection_sha256", "missing")
    want = [g for g, _, _ in groups]
    if (not isinstance(v, list) or [e.get("group") if isinstance(e, dict) else None for e in v] != want
            or not all(set(e) == {"group", "A", "B"} for e in v)):
        raise AdapterFileError("projection_sha256", f"must list {{group, A, B}} for groups {want} in order")
    for e in v:
        for k in ("A", "B"):
            if not isinstance(e[k], str) or not _HEX_RE.fullmatch(e[k]):
                raise AdapterFileError("projection_sha256", f"{k} of group {e['group']} must be 64 lowercase hex digits")
    return v


def _names(doc: dict) -> list[str]:
    v = doc.get("extra_tensors", [])
    if not isinstance(v, list) or not all(isinstance(s, str) and _NAME_RE.fullmatch(s) for s in v):
        raise AdapterFileError("extra_tensors", "must be a list of tensor names")
    if len(set(v)) != len(v):
        raise AdapterFileError("extra_tensors", "lists a name twice")
    return v


def _base_model(doc: dict) -> dict[str, str] | None:
    v = doc.get("base_model")
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(s, str) for k, s in v.items()):
        raise AdapterFileError("base_model", "must map strings to strings")
    unknown = sorted(set(v) - {"name", "revision", "fingerprint"})
    if unknown:
        raise AdapterFileError("base_model." + unknown[0], "unknown field")
    if "fingerprint" in v and not _HEX_RE.fullmatch(v["fingerprint"]):
        raise AdapterFileError("base_model.fingerprint", "must be 64 lowercase hex digits")
    return v


def check_version(version: str | None) -> tuple[int, int]:
    """spec 4.8: same major accepted; returns (major, minor)."""
    if version is None:
        raise AdapterFileError(VERSION_KEY, "missing")
    m = re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", version)
    if not m or int(m.group(1)) != SPEC_MAJOR:
        raise AdapterFileError(VERSION_KEY, f"unsupported version {version!r} (this reader supports {SPEC_MAJOR}.x)")
    return int(m.group(1)), int(m.group(2))


def parse_config(text: str, version: str = SPEC_VERSION) -> AdapterConfig:
    """Parse and check the metadata document (spec 4.3, rules of 4.6)."""
    _, minor = check_version(version)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AdapterFileError(CONFIG_KEY, f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise AdapterFileError(CONFIG_KEY, "must be a JSON object")
    unknown = sorted(set(doc) - set(KNOWN_FIELDS))
    if unknown and minor <= SPEC_MINOR:  # spec 4.8: a newer minor may add fields we skip
        raise AdapterFileError(unknown[0], "unknown field")
    r = _int(doc, "r")
    generator = _choice(doc, "generator", GENERATORS)
    seed = _seed(doc, generator)
    sharing = _choice(doc, "sharing", SHARING)
    if generator == "peft-mt19937" and sharing != "shared":
        raise AdapterFileError("sharing", "the peft-mt19937 generator supports only 'shared'")
    modules = _modules(doc)
    n_in, n_out = _int(doc, "n_in"), _int(doc, "n_out")
    if n_in != max(m.in_features for m in modules):
        raise AdapterFileError("n_in", f"must equal the largest in_features of the modules "
                                       f"({max(m.in_features for m in modules)}), got {n_in}")
    if n_out != max(m.out_features for m in modules):
        raise AdapterFileError("n_out", f"must equal the largest out_features of the modules "
                                        f"({max(m.out_features for m in modules)}), got {n_out}")
    cfg = AdapterConfig(
        r=r, modules=modules, generator=generator, seed=seed, n_in=n_in, n_out=n_out, sharing=sharing,
        vector_dtype=_choice(doc, "vector_dtype", tuple(EPS)),
        tensor_layout=_choice(doc, "tensor_layout", TENSOR_LAYOUTS, default="per-module"),
        d_initial=_number(doc, "d_initial", 0.1, unit_interval=False),
        dropout=_number(doc, "dropout", 0.0, unit_interval=True),
        extra_tensors=_names(doc), base_model=_base_model(doc),
    )
    prov = doc.get("provenance", {})
    if not isinstance(prov, dict):
        raise AdapterFileError("provenance", "must be a JSON object")
    cfg.provenance = prov
    cfg.projection_sha256 = _checksums(doc, cfg.groups())
    return cfg


def common_prefix(names: list[str]) -> str:
    """The longest run of whole dotted parts, each with its '.', that starts every name and leaves
    a non-empty rest (spec 4.3 module_prefix)."""
    parts = [n.split(".")[:-1] for n in names]
    prefix = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return "".join(p + "." for p in prefix)


def config_document(cfg: AdapterConfig) -> dict[str, Any]:
    prefix = common_prefix([m.name for m in cfg.modules])
    doc: dict[str, Any] = {
        "r": cfg.r,
        "generator": cfg.generator,
        "n_in": cfg.n_in,
        "n_out": cfg.n_out,
        "sharing": cfg.sharing,
        "projection_sha256": cfg.projection_sha256,
        "module_prefix": prefix,
        "modules": [[m.name[len(prefix):], m.in_features, m.out_features] + ([m.layout] if m.layout != "linear" else [])
                    for m in cfg.modules],
        "tensor_layout": cfg.tensor_layout,
        "vector_dtype": cfg.vector_dtype,
        "d_initial": cfg.d_initial,
        "dropout": cfg.dropout,
        "extra_tensors": list(cfg.extra_tensors),
        "provenance": cfg.provenance,
    }
    if cfg.seed is not None:
        doc["seed"] = str(cfg.seed)  # spec 4.3: decimal string, JSON readers lose ints above 2^53
    if cfg.base_model is not None:
        doc["base_model"] = dict(cfg.base_model)
    return doc


def config_json(cfg: AdapterConfig) -> str:
    """spec 4.3 canonical form: keys sorted, no spaces, ASCII only."""
    return json.dumps(config_document(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
