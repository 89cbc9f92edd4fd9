"""The VeRA metadata document inside an adapter file (spec 4.2-4.4, 4.6 steps 8-21).

``parse_config`` applies the document rules of spec 4.6 in their order, raising the
``AdapterFileError`` of the first broken rule (with its code, ``vera_ref.rules``);
``config_json`` writes the canonical form (spec 4.3); ``AdapterConfig.expected_tensors``
is the one list of the tensors a file of a config holds (spec 4.4), used by the reader
and the writer alike. Everything that depends on the generator's name asks
``vera_ref.generators``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import generators, jsontext
from .dtypes import EPS, SAFETENSORS_CODE
from .errors import ProjectionError
from .rules import fail

FORMAT_KEY = "vera_format"  # spec 4.2: the magic
FORMAT_NAME = "vera-adapter"
VERSION_KEY = "vera_spec_version"
CONFIG_KEY = "vera_config"
SPEC_VERSION = "1.1"  # spec 4.2, 4.8: the file profile writers write (spec 1.2 changed no field)
SPEC_MAJOR, SPEC_MINOR = 1, 1  # spec 4.8: the file profile this reader knows
SPEC_TEXT_VERSION = "1.2"  # the version of the spec text this reader follows (spec/README.md)
GENERATORS = generators.names()  # spec 2.5 (the registry's names)
SHARING = ("shared", "per-module")  # spec 2.4
LAYOUTS = ("linear", "conv1d")  # spec 3.7
TENSOR_LAYOUTS = ("per-module", "packed")  # spec 4.4
DEFAULT_MAX_PROJECTION_ELEMENTS = 1 << 28  # spec 4.6 step 22: 1 GiB of float32 for A and B together
_SEED_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_PREFIX_RE = re.compile(r"([A-Za-z0-9_\-]+\.)*")
_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
KNOWN_FIELDS = ("r", "generator", "seed", "n_in", "n_out", "sharing", "projection_sha256", "modules",
                "module_prefix", "tensor_layout", "vector_dtype", "d_initial", "dropout", "extra_tensors",
                "base_model", "provenance")
PACKED_D, PACKED_B = "lambda_d", "lambda_b"  # spec 4.4: the packed layout's two tensors


def lambda_d_key(module: str) -> str:
    return f"{module}.lambda_d"  # spec 4.4


def lambda_b_key(module: str) -> str:
    return f"{module}.lambda_b"  # spec 4.4


def stored_keys(group: int, sharing: str) -> tuple[str, str]:
    """spec 4.4: tensor names of a stored projection pair."""
    return ("A", "B") if sharing == "shared" else (f"A.{group}", f"B.{group}")


class TensorSpec(NamedTuple):
    """One tensor a file must hold (spec 4.4): name, role, safetensors dtype and shape.

    role: ``vector`` (lambda_d/lambda_b), ``projection`` (stored A/B) or ``extra``;
    dtype and shape are None where spec 4.4/4.5 allow any (extra tensors).
    """

    name: str
    role: str
    dtype: str | None
    shape: tuple[int, ...] | None


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
        """spec 4.6 step 22: r * sum(n_in_g + n_out_g) over the projection pairs."""
        return sum(self.r * (n_in + n_out) for _, n_in, n_out in self.groups())

    def expected_tensors(self) -> list[TensorSpec]:
        """spec 4.4: every tensor a file of this config holds, in the order of spec 4.6 step 23:
        module vectors in module order (lambda_d before lambda_b), stored projections in group
        order (A before B), then extra tensors in list order."""
        vcode = SAFETENSORS_CODE[self.vector_dtype]
        out: list[TensorSpec] = []
        if self.tensor_layout == "packed":
            out.append(TensorSpec(PACKED_D, "vector", vcode, (len(self.modules), self.r)))  # (M, r)
            out.append(TensorSpec(PACKED_B, "vector", vcode, (sum(m.out_features for m in self.modules),)))
        else:
            for m in self.modules:
                out.append(TensorSpec(lambda_d_key(m.name), "vector", vcode, (self.r,)))
                out.append(TensorSpec(lambda_b_key(m.name), "vector", vcode, (m.out_features,)))
        if not generators.get(self.generator).generates:  # spec 2.5.2: stored projections
            for g, n_in, n_out in self.groups():
                ka, kb = stored_keys(g, self.sharing)
                out.append(TensorSpec(ka, "projection", "F32", (self.r, n_in)))  # A (r, n_in)
                out.append(TensorSpec(kb, "projection", "F32", (n_out, self.r)))  # B (n_out, r)
        out.extend(TensorSpec(name, "extra", None, None) for name in self.extra_tensors)
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(doc: dict, key: str, missing: str, bad: str) -> int:
    if key not in doc:  # spec 4.3: null is a value (of no field's type), not absence
        fail(missing)
    v = doc[key]
    if not _is_int(v) or v < 1:
        fail(bad, json=v)
    return v


def _choice(doc: dict, key: str, allowed: tuple[str, ...], missing: str | None, bad: str,
            default: str | None = None) -> str:
    if key not in doc and missing is not None:  # spec 4.3: null is a value, not absence
        fail(missing)
    v = doc.get(key, default)
    if not isinstance(v, str) or v not in allowed:
        fail(bad, json=v, allowed=", ".join(allowed))
    return v


def _modules(doc: dict) -> list[ModuleSpec]:
    """spec 4.6 step 16: modules as [name, in_features, out_features] or [..., layout], after module_prefix."""
    prefix = doc.get("module_prefix", "")
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        fail("E4.6.16.1", json=prefix)
    if "modules" not in doc:
        fail("E4.6.16.2")
    mods = doc["modules"]
    if not isinstance(mods, list) or not mods:
        fail("E4.6.16.3")
    out, seen = [], set()
    for i, m in enumerate(mods):
        where = f"modules[{i}]"
        if not isinstance(m, list) or len(m) not in (3, 4):
            fail("E4.6.16.4", where)
        name = m[0]
        if not isinstance(name, str) or not _NAME_RE.fullmatch(prefix + name):
            fail("E4.6.16.5", where, json=name)
        full = prefix + name
        if full in seen:
            fail("E4.6.16.6", json=full)
        seen.add(full)
        for j, code in ((1, "E4.6.16.7"), (2, "E4.6.16.8")):
            if not _is_int(m[j]) or m[j] < 1:
                fail(code, where, json=m[j])
        layout = m[3] if len(m) == 4 else "linear"
        if not isinstance(layout, str) or layout not in LAYOUTS:
            fail("E4.6.16.9", where, json=layout)
        out.append(ModuleSpec(full, m[1], m[2], layout))
    return out


def _seed(doc: dict, gen: generators.Generator) -> int | None:
    """spec 4.6 step 14 (spec 1.3 range), asked of the generator registry."""
    if not gen.has_seed:
        if "seed" in doc:  # spec 4.3: even as null
            fail("E4.6.14.1")
        return None
    if "seed" not in doc:
        fail("E4.6.14.2")
    v = doc["seed"]
    if not isinstance(v, str) or not _SEED_RE.fullmatch(v):
        fail("E4.6.14.3", json=v)
    try:
        return gen.check_seed(int(v))
    except ProjectionError:
        fail("E4.6.14.3", json=v)


def _number(doc: dict, key: str, default: float, code: str, unit_interval: bool) -> float:
    v = doc.get(key, default)
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if ok and unit_interval:
        ok = 0.0 <= v < 1.0
    if not ok:
        fail(code, json=v)
    return float(v)


def _checksums(doc: dict, groups: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    if "projection_sha256" not in doc:
        fail("E4.6.21.1")
    v = doc["projection_sha256"]
    want = [g for g, _, _ in groups]
    # spec 4.6 step 21: the list as a whole (21.2: one entry per group, each exactly {group, A, B},
    # group an integer of 4.3: 1.0 and true are not 1) before the digits of any entry (21.3)
    if (not isinstance(v, list) or len(v) != len(want)
            or not all(isinstance(e, dict) and set(e) == {"group", "A", "B"} and _is_int(e["group"])
                       and e["group"] == g for e, g in zip(v, want))):
        fail("E4.6.21.2", groups=want)
    for e in v:  # group order, A before B
        for k in ("A", "B"):
            if not isinstance(e[k], str) or not _HEX_RE.fullmatch(e[k]):
                fail("E4.6.21.3", k=k, g=e["group"])
    return v


def _names(doc: dict) -> list[str]:
    v = doc.get("extra_tensors", [])
    if not isinstance(v, list) or not all(isinstance(s, str) and _NAME_RE.fullmatch(s) for s in v):
        fail("E4.6.20.1")
    if len(set(v)) != len(v):
        fail("E4.6.20.2")
    return v


def _base_model(doc: dict) -> dict[str, str] | None:
    if "base_model" not in doc:
        return None
    v = doc["base_model"]  # null is not an object (spec 4.3): E4.6.20.3
    if not isinstance(v, dict) or not all(isinstance(s, str) for s in v.values()):
        fail("E4.6.20.3")
    unknown = sorted(set(v) - {"name", "revision", "fingerprint"})
    if unknown:
        fail("E4.6.20.4", "base_model." + unknown[0])
    if "fingerprint" in v and not _HEX_RE.fullmatch(v["fingerprint"]):
        fail("E4.6.20.5")
    return v


def check_version(version: str | None) -> tuple[int, int]:
    """spec 4.6 step 9, 4.8: same major accepted; returns (major, minor)."""
    if version is None:
        fail("E4.6.9.1")
    m = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if not m or int(m.group(1)) != SPEC_MAJOR:
        fail("E4.6.9.2", json=version)
    return int(m.group(1)), int(m.group(2))


def parse_document(text: str) -> dict[str, Any]:
    """spec 4.6 step 10: the document's JSON text under the dialect of spec 4.1.1, an object.

    Rule E4.6.10.2 counts the document's own characters, always: a header's escapes
    (``\\u005b``, ``\\u002c``, ``\\u0022``) become characters of the document that the header's
    count (E4.6.4.2, on its bytes) does not see (spec 4.1.1 rule 2, 1.2).
    """
    try:
        doc = jsontext.loads(text)
    except jsontext.JsonRuleError as exc:
        if exc.rule == "count":
            fail("E4.6.10.2")
        if exc.rule == "number":
            fail("E4.6.10.5", literal=exc.value)
        if exc.rule == "duplicate":
            fail("E4.6.10.6", json=exc.value)
        fail({"syntax": "E4.6.10.3", "depth": "E4.6.10.4"}[exc.rule])
    if not isinstance(doc, dict):
        fail("E4.6.10.7")
    return doc


def _unknown_fields(doc: dict, minor: int) -> None:
    """spec 4.6 step 11: the first unknown field in ascending order of code points (spec 4.6), only
    in a file whose minor version is at most the profile's (spec 4.8: a newer minor may add fields)."""
    unknown = sorted(set(doc) - set(KNOWN_FIELDS))
    if unknown and minor <= SPEC_MINOR:
        fail("E4.6.11.1", unknown[0])


def _dims(doc: dict, modules: list[ModuleSpec]) -> tuple[int, int]:
    """spec 4.6 step 17, in the order of its codes: n_in then n_out (missing, type), then both
    against the modules (17.5, 17.6), so a wrong n_in with a missing n_out is E4.6.17.3."""
    n_in = _int(doc, "n_in", "E4.6.17.1", "E4.6.17.2")
    n_out = _int(doc, "n_out", "E4.6.17.3", "E4.6.17.4")
    if n_in != max(m.in_features for m in modules):
        fail("E4.6.17.5", n=max(m.in_features for m in modules), v=n_in)
    if n_out != max(m.out_features for m in modules):
        fail("E4.6.17.6", n=max(m.out_features for m in modules), v=n_out)
    return n_in, n_out


def parse_config(text: str, version: str = SPEC_VERSION) -> AdapterConfig:
    """Parse and check the metadata document (spec 4.3, steps 9-21 of 4.6)."""
    _, minor = check_version(version)
    doc = parse_document(text)
    _unknown_fields(doc, minor)
    r = _int(doc, "r", "E4.6.12.1", "E4.6.12.2")
    generator = _choice(doc, "generator", generators.names(), "E4.6.13.1", "E4.6.13.2")
    gen = generators.get(generator)
    seed = _seed(doc, gen)
    sharing = _choice(doc, "sharing", SHARING, "E4.6.15.1", "E4.6.15.2")
    if sharing not in gen.sharing:
        fail("E4.6.15.3", generator=generator, allowed=" or ".join(repr(s) for s in gen.sharing))
    modules = _modules(doc)
    n_in, n_out = _dims(doc, modules)
    vector_dtype = _choice(doc, "vector_dtype", tuple(EPS), "E4.6.18.1", "E4.6.18.2")
    tensor_layout = _choice(doc, "tensor_layout", TENSOR_LAYOUTS, None, "E4.6.18.3", default="per-module")
    d_initial = _number(doc, "d_initial", 0.1, "E4.6.19.1", unit_interval=False)
    dropout = _number(doc, "dropout", 0.0, "E4.6.19.2", unit_interval=True)
    extra = _names(doc)
    base_model = _base_model(doc)
    prov = doc.get("provenance", {})
    if not isinstance(prov, dict):
        fail("E4.6.20.6")
    cfg = AdapterConfig(r=r, modules=modules, generator=generator, seed=seed, n_in=n_in, n_out=n_out,
                        sharing=sharing, vector_dtype=vector_dtype, tensor_layout=tensor_layout,
                        d_initial=d_initial, dropout=dropout, extra_tensors=extra, base_model=base_model,
                        provenance=prov)
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
