"""Adapters in memory and on disk: the VeRA profile of safetensors (spec 4).

``load_adapter`` applies every rule of spec 4.6 (header, magic, version, document,
projection size limit, tensors, values, checksums) and raises ``AdapterFileError``
naming the field; ``save_adapter`` writes atomically (spec 4.7).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from . import container
from .dtypes import FROM_CODE, SAFETENSORS_CODE, round_to
from .errors import AdapterFileError
from .metadata import (CONFIG_KEY, DEFAULT_MAX_PROJECTION_ELEMENTS, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION,
                       VERSION_KEY, AdapterConfig, ModuleSpec, check_version, config_json, parse_config)
from .peft_mt19937 import peft_projection
from .projection import projection


def lambda_d_key(module: str) -> str:
    return f"{module}.lambda_d"  # spec 4.4


def lambda_b_key(module: str) -> str:
    return f"{module}.lambda_b"  # spec 4.4


def stored_keys(group: int, sharing: str) -> tuple[str, str]:
    """spec 4.4: tensor names of a stored projection pair."""
    return ("A", "B") if sharing == "shared" else (f"A.{group}", f"B.{group}")


def sha256_hex(array: np.ndarray) -> str:
    """spec 2.6: sha256 of the float32 little-endian C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def base_fingerprint(weights: Mapping[str, np.ndarray], modules: Iterable[ModuleSpec]) -> str:
    """spec 4.3: sha256 over each module in order of name, a NUL byte, and W0 as float32
    little-endian in (out, in) orientation (a conv1d weight is transposed first)."""
    h = hashlib.sha256()
    for m in modules:
        W = np.asarray(weights[m.name], dtype=np.float32)
        W = W if m.layout == "linear" else W.T  # (out, in)
        if W.shape != (m.out_features, m.in_features):
            raise AdapterFileError("base_model.fingerprint",
                                   f"weight of {m.name!r} has shape {W.shape}, expected {(m.out_features, m.in_features)}")
        h.update(m.name.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(W, dtype="<f4").tobytes())
    return h.hexdigest()


def generate_projection(cfg: AdapterConfig, group: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A and B of one group from the named generator (spec 2.5); not for ``stored``."""
    if cfg.generator == "philox4x32-10":
        return projection(cfg.seed, cfg.r, n_in, n_out, group)
    if cfg.generator == "peft-mt19937":
        return peft_projection(cfg.seed, cfg.r, n_in, n_out)
    raise AdapterFileError("generator", "the stored generator has no rule to generate from")


@dataclass
class Adapter:
    """A VeRA adapter: its config, trained vectors per module, and optional tensors.

    lambda_d[name] (r,), lambda_b[name] (out,) hold values of ``config.vector_dtype``
    (bfloat16 as float32); ``stored`` maps group -> (A, B) for the stored generator;
    ``extra`` holds fully trained extra tensors (a task head) as (array, dtype name).
    """

    config: AdapterConfig
    lambda_d: dict[str, np.ndarray]
    lambda_b: dict[str, np.ndarray]
    stored: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    extra: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    _cache: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def projection(self, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The (A, B) pair of a group: stored, or generated once and cached."""
        if self.config.generator == "stored":
            return self.stored[group]
        if group not in self._cache:
            dims = {g: (i, o) for g, i, o in self.config.groups()}
            self._cache[group] = generate_projection(self.config, group, *dims[group])
        return self._cache[group]

    def module_projection(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The leading slices (A_l, B_l) a module uses (spec 2.3)."""
        for i, m in enumerate(self.config.modules):
            if m.name == name:
                A, B = self.projection(self.config.group_of(i))
                return A[:, : m.in_features], B[: m.out_features, :]
        raise KeyError(name)

    def checksums(self) -> list[dict[str, object]]:
        return [{"group": g, "A": sha256_hex(self.projection(g)[0]), "B": sha256_hex(self.projection(g)[1])}
                for g, _, _ in self.config.groups()]


def new_adapter(
    modules: Iterable[ModuleSpec | tuple],
    r: int,
    *,
    seed: int | None = 0,
    generator: str = "philox4x32-10",
    sharing: str = "shared",
    d_initial: float = 0.1,
    dropout: float = 0.0,
    vector_dtype: str = "float32",
    tensor_layout: str = "per-module",
    stored: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    base_model: dict[str, str] | None = None,
    provenance: dict | None = None,
) -> Adapter:
    """A fresh adapter (spec 3.9): lambda_b = 0 and lambda_d = d_initial, an exact no-op."""
    mods = [m if isinstance(m, ModuleSpec) else ModuleSpec(*m) for m in modules]
    cfg = AdapterConfig(r=r, modules=mods, generator=generator, seed=None if generator == "stored" else seed,
                        sharing=sharing, vector_dtype=vector_dtype, tensor_layout=tensor_layout,
                        d_initial=float(d_initial),
                        dropout=float(dropout), base_model=base_model, provenance=dict(provenance or {}))
    dt = np.float32 if vector_dtype == "bfloat16" else np.dtype(vector_dtype)
    ad = Adapter(cfg,
                 {m.name: round_to(np.full(r, d_initial), vector_dtype).astype(dt) for m in mods},
                 {m.name: np.zeros(m.out_features, dtype=dt) for m in mods},
                 stored=dict(stored or {}))
    # the document's own rules (spec 4.6) apply to what we build, too
    cfg.projection_sha256 = [{"group": g, "A": "0" * 64, "B": "0" * 64} for g, _, _ in cfg.groups()]
    parse_config(config_json(cfg))
    return ad


PACKED_D, PACKED_B = "lambda_d", "lambda_b"  # spec 4.4: the packed layout's two tensors


def _tensor_plan(ad: Adapter) -> dict[str, tuple[np.ndarray, str]]:
    cfg = ad.config
    vcode = SAFETENSORS_CODE[cfg.vector_dtype]
    plan: dict[str, tuple[np.ndarray, str]] = {}
    if cfg.tensor_layout == "packed":
        plan[PACKED_D] = (np.stack([np.asarray(ad.lambda_d[m.name]) for m in cfg.modules]), vcode)  # (M, r)
        plan[PACKED_B] = (np.concatenate([np.asarray(ad.lambda_b[m.name]) for m in cfg.modules]), vcode)  # (sum out)
    else:
        for m in cfg.modules:
            plan[lambda_d_key(m.name)] = (ad.lambda_d[m.name], vcode)
            plan[lambda_b_key(m.name)] = (ad.lambda_b[m.name], vcode)
    if cfg.generator == "stored":
        for g, _, _ in cfg.groups():
            ka, kb = stored_keys(g, cfg.sharing)
            plan[ka], plan[kb] = (ad.stored[g][0], "F32"), (ad.stored[g][1], "F32")
    for name, (array, dtype) in ad.extra.items():
        plan[name] = (array, SAFETENSORS_CODE[dtype])
    return plan


def save_adapter(adapter: Adapter, path: str | os.PathLike) -> None:
    """Write ``adapter`` as a VeRA file (spec 4), atomically (spec 4.7).

    The checksums are recomputed from the projections, and the written bytes are
    checked by a full load before they replace anything at ``path``.
    """
    cfg = adapter.config
    cfg.extra_tensors = sorted(adapter.extra)
    cfg.projection_sha256 = adapter.checksums()
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION, CONFIG_KEY: config_json(cfg)}
    payload = container.to_bytes(meta, _tensor_plan(adapter))
    _check_payload(payload, cfg)
    container.write_atomic(path, [payload])


def _check_payload(payload: bytes, cfg: AdapterConfig) -> None:
    """Refuse to write what a reader would reject (spec 4.6 applies to writers too)."""
    import io

    f = io.BytesIO(payload)
    meta, entries, start = container.read_header(f, len(payload))
    tensors = {}
    for name, (dtype, shape, b, e) in entries.items():
        tensors[name] = container.RawTensor(dtype, shape, container._decode(payload[start + b: start + e], dtype, shape))
    _build(meta, tensors, DEFAULT_MAX_PROJECTION_ELEMENTS, verify_checksums=False)


def _build(meta: Mapping[str, str], tensors: Mapping[str, container.RawTensor], max_elements: int,
           verify_checksums: bool) -> Adapter:
    fmt = meta.get(FORMAT_KEY)
    if fmt != FORMAT_NAME:
        raise AdapterFileError(FORMAT_KEY, f"expected {FORMAT_NAME!r}, got {fmt!r}")
    version = meta.get(VERSION_KEY)
    check_version(version)
    text = meta.get(CONFIG_KEY)
    if text is None:
        raise AdapterFileError(CONFIG_KEY, "missing")
    cfg = parse_config(text, version)
    # spec 4.6: the size limit is checked before anything is generated or compared
    if cfg.projection_elements() > max_elements:
        raise AdapterFileError("projection", f"{cfg.projection_elements()} elements exceed the limit of "
                                             f"{max_elements} (raise max_projection_elements to allow it)")
    expected: dict[str, tuple[int, ...]] = {}
    vectors = set()
    if cfg.tensor_layout == "packed":
        expected[PACKED_D] = (len(cfg.modules), cfg.r)
        expected[PACKED_B] = (sum(m.out_features for m in cfg.modules),)
        vectors = {PACKED_D, PACKED_B}
    else:
        for m in cfg.modules:
            expected[lambda_d_key(m.name)] = (cfg.r,)
            expected[lambda_b_key(m.name)] = (m.out_features,)
            vectors |= {lambda_d_key(m.name), lambda_b_key(m.name)}
    if cfg.generator == "stored":
        for g, n_in, n_out in cfg.groups():
            ka, kb = stored_keys(g, cfg.sharing)
            expected[ka], expected[kb] = (cfg.r, n_in), (n_out, cfg.r)
    for name in cfg.extra_tensors:
        if name in expected:
            raise AdapterFileError(name, "extra tensor has the name of a VeRA tensor")
        expected[name] = None  # any shape
    for name in expected:
        if name not in tensors:
            raise AdapterFileError(name, "missing")
    for name in sorted(tensors):
        if name not in expected:
            raise AdapterFileError(name, "unexpected tensor (not a module vector, projection or listed extra tensor)")
    vcode = SAFETENSORS_CODE[cfg.vector_dtype]
    for name, shape in expected.items():
        t = tensors[name]
        if shape is not None and t.shape != shape:
            raise AdapterFileError(name, f"shape {list(t.shape)} must be {list(shape)}")
        is_vector = name in vectors
        if is_vector and t.dtype != vcode:
            raise AdapterFileError(name, f"dtype {t.dtype} differs from vector_dtype {cfg.vector_dtype}")
        if shape is not None and not is_vector and t.dtype != "F32":
            raise AdapterFileError(name, f"dtype {t.dtype} must be F32 for a stored projection")
        if not np.all(np.isfinite(t.data)):
            raise AdapterFileError(name, "contains non-finite values (NaN or infinity)")
    if cfg.tensor_layout == "packed":
        ends = np.cumsum([m.out_features for m in cfg.modules])
        lds = {m.name: tensors[PACKED_D].data[i] for i, m in enumerate(cfg.modules)}
        lbs = {m.name: tensors[PACKED_B].data[e - m.out_features: e] for m, e in zip(cfg.modules, ends)}
    else:
        lds = {m.name: tensors[lambda_d_key(m.name)].data for m in cfg.modules}
        lbs = {m.name: tensors[lambda_b_key(m.name)].data for m in cfg.modules}
    ad = Adapter(
        cfg, lds, lbs,
        stored={g: (tensors[stored_keys(g, cfg.sharing)[0]].data, tensors[stored_keys(g, cfg.sharing)[1]].data)
                for g, _, _ in cfg.groups()} if cfg.generator == "stored" else {},
        extra={n: (tensors[n].data, FROM_CODE[tensors[n].dtype]) for n in cfg.extra_tensors},
    )
    if verify_checksums:
        for want, got in zip(cfg.projection_sha256, ad.checksums()):
            for k in ("A", "B"):
                if want[k] != got[k]:
                    raise AdapterFileError("projection_sha256", f"{k} of group {want['group']} is {want[k][:16]}..., "
                                                                f"the {cfg.generator} generator gives {got[k][:16]}...")
    return ad


def load_adapter(path: str | os.PathLike, *, max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS,
                 verify_checksums: bool = True) -> Adapter:
    """Read and check a VeRA adapter file (spec 4.6); raises AdapterFileError naming the field."""
    meta, tensors = _read(path)
    return _build(meta, tensors, max_projection_elements, verify_checksums)


def _read(path):
    try:
        return container.read(path)
    except FileNotFoundError:
        raise AdapterFileError("path", f"no such file: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise AdapterFileError("path", f"is a directory: {os.fspath(path)}") from None


def validate_adapter(path: str | os.PathLike, *,
                     max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS) -> Adapter:
    """Every check of spec 4.6, checksums included; returns the adapter or raises AdapterFileError."""
    return load_adapter(path, max_projection_elements=max_projection_elements, verify_checksums=True)
