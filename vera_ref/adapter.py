"""Adapters in memory and on disk: the VeRA profile of safetensors (spec 4).

``load_adapter`` applies every rule of spec 4.6 (path, header, magic, version, document,
projection size limit, tensors, values, checksums) in its order and raises the
``AdapterFileError`` of the first broken rule (``.code``, ``.field``); ``save_adapter``
writes atomically (spec 4.7) what a reader accepts. The tensors a config implies come from
one function, ``AdapterConfig.expected_tensors`` (spec 4.4), for reading and writing alike.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Mapping

import numpy as np

from . import container, generators
from .dtypes import FROM_CODE, SAFETENSORS_CODE, round_to
from .errors import AdapterFileError
from .metadata import (CONFIG_KEY, DEFAULT_MAX_PROJECTION_ELEMENTS, FORMAT_KEY, FORMAT_NAME, PACKED_B, PACKED_D,
                       SPEC_VERSION, VERSION_KEY, AdapterConfig, ModuleSpec, TensorSpec, check_version, config_json,
                       lambda_b_key, lambda_d_key, parse_config, stored_keys)
from .rules import fail

PEFT_MARKERS = ("base_model.model.", "vera_lambda_")  # spec 4.6 step 8: tensor names of a PEFT adapter


HASH_CHUNK_BYTES = 1 << 20  # rows hashed per step: a strided or non-float32 array is copied this much at a time


def hash_c_order(h: "hashlib._Hash", array: np.ndarray) -> None:
    """Feed ``h`` the float32 little-endian C-order bytes of ``array``, a block of rows at a
    time, so a Fortran-ordered B or a float64 W0 never needs a whole row-major copy (spec 4.3's
    fingerprint; public: backends hashing a W0 of their own, e.g. a dequantized one, use it)."""
    a = np.asarray(array)
    if a.ndim < 2:
        h.update(np.ascontiguousarray(a, dtype="<f4"))
        return
    rows = max(1, HASH_CHUNK_BYTES // max(1, 4 * (a.size // max(1, a.shape[0]))))
    for i in range(0, a.shape[0], rows):
        h.update(np.ascontiguousarray(a[i:i + rows], dtype="<f4"))


def sha256_hex(array: np.ndarray) -> str:
    """spec 2.6: sha256 of the float32 little-endian C-order bytes."""
    h = hashlib.sha256()
    hash_c_order(h, array)
    return h.hexdigest()


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
        hash_c_order(h, W)
    return h.hexdigest()


def generate_projection(cfg: AdapterConfig, group: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A and B of one group from the named generator (spec 2.5); not for ``stored``."""
    gen = generators.get(cfg.generator)
    if not gen.generates:
        raise AdapterFileError("generator", f"the {gen.name} generator has no rule to generate from")
    return gen.projection(cfg.seed, cfg.r, n_in, n_out, group)


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
        if not generators.get(self.config.generator).generates:
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
    """A fresh adapter (spec 3.9): lambda_b = 0 and lambda_d = d_initial, an exact no-op.

    The generator and seed are checked by ``vera_ref.generators`` (``ProjectionError``); every
    other field by the document rules of spec 4.6 (``AdapterFileError``).
    """
    mods = [m if isinstance(m, ModuleSpec) else ModuleSpec(*m) for m in modules]
    gen = generators.get(generator)
    seed = gen.check_seed(seed if gen.has_seed else None)
    for key, v in (("d_initial", d_initial), ("dropout", dropout)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            fail("E4.6.19.1" if key == "d_initial" else "E4.6.19.2", json=v)
    cfg = AdapterConfig(r=r, modules=mods, generator=generator, seed=seed,
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


def _tensor_plan(ad: Adapter) -> dict[str, tuple[np.ndarray, str]]:
    """The tensors to write, {name: (array, dtype code)}, from ``AdapterConfig.expected_tensors``."""
    cfg = ad.config
    plan: dict[str, tuple[np.ndarray, str]] = {}
    for t in cfg.expected_tensors():
        if t.name == PACKED_D and cfg.tensor_layout == "packed":
            plan[t.name] = (np.stack([np.asarray(ad.lambda_d[m.name]) for m in cfg.modules]), t.dtype)  # (M, r)
        elif t.name == PACKED_B and cfg.tensor_layout == "packed":
            plan[t.name] = (np.concatenate([np.asarray(ad.lambda_b[m.name]) for m in cfg.modules]), t.dtype)
        elif t.role == "vector":
            module, which = t.name.rsplit(".", 1)
            plan[t.name] = ((ad.lambda_d if which == "lambda_d" else ad.lambda_b)[module], t.dtype)
        elif t.role == "projection":
            group = 0 if cfg.sharing == "shared" else int(t.name.split(".", 1)[1])
            plan[t.name] = (ad.stored[group][0 if t.name[0] == "A" else 1], t.dtype)
        else:
            array, dtype = ad.extra[t.name]
            plan[t.name] = (array, SAFETENSORS_CODE[dtype])
    return plan


def tensor_plan(adapter: Adapter) -> dict[str, tuple[np.ndarray, str]]:
    """The tensors ``save_adapter`` writes for ``adapter``: {name: (array, safetensors dtype code)}."""
    adapter.config.extra_tensors = sorted(adapter.extra)
    return _tensor_plan(adapter)


def save_adapter(adapter: Adapter, path: str | os.PathLike) -> None:
    """Write ``adapter`` as a VeRA file (spec 4), atomically (spec 4.7, ``vera_ref.atomic``).

    The checksums are recomputed from the projections, and the written bytes are
    checked by a full read (spec 4.6, checksums aside) before they replace anything at ``path``.
    """
    cfg = adapter.config
    cfg.extra_tensors = sorted(adapter.extra)
    cfg.projection_sha256 = adapter.checksums()
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION, CONFIG_KEY: config_json(cfg)}
    payload = container.to_bytes(meta, _tensor_plan(adapter))
    read_adapter(io.BytesIO(payload), len(payload), max_projection_elements=DEFAULT_MAX_PROJECTION_ELEMENTS,
                 verify_checksums=False)  # spec 4.6 applies to writers too: the reader's own path
    container.write_atomic(path, [payload])


def _check_kind(meta: Mapping[str, str], tensors: Iterable[str]) -> None:
    """spec 4.6 step 8: the magic; a file without it is named if it is a PEFT adapter."""
    fmt = meta.get(FORMAT_KEY)
    if fmt is None:
        if any(n.startswith(PEFT_MARKERS[0]) or PEFT_MARKERS[1] in n for n in tensors):
            fail("E4.6.8.1")
        fail("E4.6.8.2")
    if fmt != FORMAT_NAME:
        fail("E4.6.8.3", json=fmt)


def check_layout(meta: Mapping[str, str], entries: Mapping[str, tuple], *,
                 max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS
                 ) -> tuple[AdapterConfig, list[TensorSpec]]:
    """spec 4.6 steps 8-24: every rule that needs no tensor bytes, on the header's metadata and
    entries ({name: (dtype code, shape, ...)}). Returns the config and the expected tensors
    (spec 4.4 order), which a reader then reads, checks (step 25) and assembles (spec 4.1: no
    tensor byte is read before these rules pass)."""
    _check_kind(meta, entries)
    version = meta.get(VERSION_KEY)
    check_version(version)
    text = meta.get(CONFIG_KEY)
    if text is None:
        fail("E4.6.10.1")
    cfg = parse_config(text, version)  # counts the document's own characters (E4.6.10.2, spec 4.1.1)
    # spec 4.6 step 22: the size limit is checked before anything is generated or compared
    if cfg.projection_elements() > max_projection_elements:
        fail("E4.6.22.1", n=cfg.projection_elements(), max=max_projection_elements)
    expected: list[TensorSpec] = cfg.expected_tensors()
    check_names(expected, entries)
    check_types(cfg, expected, entries)
    return cfg, expected


def check_names(expected: list[TensorSpec], entries: Mapping[str, tuple]) -> None:
    """spec 4.6 step 23: every extra name in list order (23.1), then each expected tensor in the
    order of spec 4.4 (23.2), then the present tensors in ascending name order (23.3)."""
    vera_names = {t.name for t in expected if t.role != "extra"}
    for t in expected:
        if t.role == "extra" and t.name in vera_names:
            fail("E4.6.23.1", t.name)
    for t in expected:
        if t.name not in entries:
            fail("E4.6.23.2", t.name)
    names = {t.name for t in expected}
    for name in sorted(entries):
        if name not in names:
            fail("E4.6.23.3", name)


def check_types(cfg: AdapterConfig, expected: list[TensorSpec], entries: Mapping[str, tuple]) -> None:
    """spec 4.6 step 24, tensor by tensor in the order of spec 4.4: all of one tensor's rules (its
    shape, 24.1, then its dtype, 24.2 or 24.3) before the next tensor."""
    for t in expected:
        dtype, shape = entries[t.name][:2]
        if t.shape is not None and tuple(shape) != t.shape:
            fail("E4.6.24.1", t.name, shape=list(shape), expected=list(t.shape))
        if t.role == "vector" and dtype != t.dtype:
            fail("E4.6.24.2", t.name, d=dtype, dtype=cfg.vector_dtype)
        if t.role == "projection" and dtype != t.dtype:
            fail("E4.6.24.3", t.name, d=dtype)


FINITE_CHUNK = 1 << 16  # elements checked per step: no temporary of the tensor's size


def all_finite(data: np.ndarray) -> bool:
    """spec 4.6 step 25 for one tensor, a chunk at a time."""
    flat = data.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + FINITE_CHUNK]).all()) for i in range(0, flat.size, FINITE_CHUNK))


def _assemble(cfg: AdapterConfig, tensors: Mapping[str, container.RawTensor], verify_checksums: bool) -> Adapter:
    """The adapter from tensors that passed steps 23-25; step 26 (checksums) if asked."""
    if cfg.tensor_layout == "packed":
        ends = np.cumsum([m.out_features for m in cfg.modules])
        lds = {m.name: tensors[PACKED_D].data[i] for i, m in enumerate(cfg.modules)}
        lbs = {m.name: tensors[PACKED_B].data[e - m.out_features: e] for m, e in zip(cfg.modules, ends)}
    else:
        lds = {m.name: tensors[lambda_d_key(m.name)].data for m in cfg.modules}
        lbs = {m.name: tensors[lambda_b_key(m.name)].data for m in cfg.modules}
    stored = {}
    if not generators.get(cfg.generator).generates:
        for g, _, _ in cfg.groups():
            ka, kb = stored_keys(g, cfg.sharing)
            stored[g] = (tensors[ka].data, tensors[kb].data)
    ad = Adapter(cfg, lds, lbs, stored=stored,
                 extra={n: (tensors[n].data, FROM_CODE[tensors[n].dtype]) for n in cfg.extra_tensors})
    if verify_checksums:  # step 26
        for want, got in zip(cfg.projection_sha256, ad.checksums()):
            for k in ("A", "B"):
                if want[k] != got[k]:
                    fail("E4.6.26.1", k=k, g=want["group"], want=want[k][:16], generator=cfg.generator,
                         got=got[k][:16])
    return ad


def build_adapter(meta: Mapping[str, str], tensors: Mapping[str, container.RawTensor], *,
                  max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS,
                  verify_checksums: bool = True) -> Adapter:
    """spec 4.6 steps 8-26 on a container already read by ``container.read``/``container.parse``
    (which applied steps 0-7). ``load_adapter`` reads a file's tensors only after steps 8-24."""
    cfg, expected = check_layout(meta, {n: (t.dtype, t.shape) for n, t in tensors.items()},
                                 max_projection_elements=max_projection_elements)
    for t in expected:  # step 25
        if not all_finite(tensors[t.name].data):
            fail("E4.6.25.1", t.name)
    return _assemble(cfg, tensors, verify_checksums)


def read_adapter(f: BinaryIO, size: int, *, max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS,
                 verify_checksums: bool = True) -> Adapter:
    """spec 4.6 steps 1-26 on an open file (or ``io.BytesIO``) of ``size`` bytes, positioned at 0.

    Steps 1-24 run on the header alone; only then is each expected tensor read, once, into
    its final array, and checked (step 25) before the next is read (spec 4.1). A file refused
    before step 25 costs its header to read, whatever its size.
    """
    meta, entries, start = container.read_header(f, size)
    cfg, expected = check_layout(meta, entries, max_projection_elements=max_projection_elements)
    tensors: dict[str, container.RawTensor] = {}
    for name, raw in container.iter_tensors(f, entries, start, [t.name for t in expected]):
        if not all_finite(raw.data):  # step 25, in the order of spec 4.4
            fail("E4.6.25.1", name)
        tensors[name] = raw
    return _assemble(cfg, tensors, verify_checksums)


def load_adapter(path: str | os.PathLike, *, max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS,
                 verify_checksums: bool = True) -> Adapter:
    """Read and check a VeRA adapter file (spec 4.6); raises AdapterFileError (``.code``, ``.field``).

    Step 0 (a regular file, opened without blocking), then ``read_adapter``: no tensor byte is
    read before every rule that needs none has passed (spec 4.1).
    """
    with container.open_regular(path) as f:
        return read_adapter(f, os.fstat(f.fileno()).st_size, max_projection_elements=max_projection_elements,
                            verify_checksums=verify_checksums)


def validate_adapter(path: str | os.PathLike, *,
                     max_projection_elements: int = DEFAULT_MAX_PROJECTION_ELEMENTS) -> Adapter:
    """Every check of spec 4.6, checksums included; returns the adapter or raises AdapterFileError."""
    return load_adapter(path, max_projection_elements=max_projection_elements, verify_checksums=True)


__all__ = ["Adapter", "new_adapter", "save_adapter", "load_adapter", "read_adapter", "validate_adapter",
           "build_adapter", "check_layout", "all_finite",
           "tensor_plan", "generate_projection", "sha256_hex", "base_fingerprint", "lambda_d_key", "lambda_b_key",
           "stored_keys", "PACKED_D", "PACKED_B"]
