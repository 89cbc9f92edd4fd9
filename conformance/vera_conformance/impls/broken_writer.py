"""Deliberately wrong implementations for checks_writer.py: each must fail the
check named in ``CAUGHT_BY`` (tests/conformance/test_conformance.py asserts it).

Each is the reference writer (``LoadedAdapter.to_adapter`` then ``vera_ref.save_adapter``) with one
bug of the kind found in real writers: a document that is valid JSON but not canonical, a module
prefix left out, defaults written, the profile version confused with the spec text's, a field
dropped, a fingerprint of the wrong bytes or of weights the writer made up, packed vectors in the
wrong order, a write in place, a temporary left behind, no validation before writing, a header
laid out differently from safetensors'; and generators that reduce an out-of-range seed or group
instead of refusing it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

import vera_ref
from vera_ref import container
from vera_ref.adapter import read_adapter, tensor_plan
from vera_ref.metadata import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, config_document

from ..protocol import LoadedAdapter
from .reference import Reference


class FullWriter(Reference):
    """The reference writing every field of the LoadedAdapter (the base of the broken writers)."""
    name = "vera_ref writing every field"

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        vera_ref.save_adapter(adapter.to_adapter(), path)


def _parts(adapter: LoadedAdapter):
    """The reference's document (as a dict), metadata and tensor plan for ``adapter``."""
    ad = adapter.to_adapter()
    cfg = ad.config
    cfg.extra_tensors = sorted(ad.extra)
    cfg.projection_sha256 = ad.checksums()
    return ad, config_document(cfg), tensor_plan(ad)


def _canonical(doc: dict, **kw) -> str:
    return json.dumps(doc, **{"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True, **kw})


def _payload(doc_text: str, plan: dict, version: str = SPEC_VERSION) -> bytes:
    return container.to_bytes({FORMAT_KEY: FORMAT_NAME, VERSION_KEY: version, CONFIG_KEY: doc_text}, plan)


def _write_checked(path, payload: bytes) -> None:
    """The reference's own last steps: a full read of the bytes, then an atomic write."""
    read_adapter(io.BytesIO(payload), len(payload), verify_checksums=False)
    container.write_atomic(path, [payload])


class _DocumentWriter(FullWriter):
    """Writes the document ``text(doc)`` returns (a valid document, checked, written atomically)."""

    def text(self, doc: dict) -> str:  # pragma: no cover - overridden
        return _canonical(doc)

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        _, doc, plan = _parts(adapter)
        _write_checked(path, _payload(self.text(doc), plan))


# --- writer_bytes: the document ----------------------------------------------------------------------

class WriterPrettyDocument(_DocumentWriter):
    """json.dumps(doc, indent=2, sort_keys=True): valid, readable, and not canonical."""
    name = "broken writer: document pretty-printed"

    def text(self, doc):
        return json.dumps(doc, indent=2, sort_keys=True)


class WriterUnsortedKeys(_DocumentWriter):
    """Keys in the order the writer built the dict, not sorted."""
    name = "broken writer: document keys unsorted"

    def text(self, doc):
        return json.dumps(doc, separators=(",", ":"))


def _utf16_sorted(v):
    if isinstance(v, dict):
        return {k: _utf16_sorted(v[k]) for k in sorted(v, key=lambda k: k.encode("utf-16-be"))}
    return [_utf16_sorted(x) for x in v] if isinstance(v, list) else v


class WriterUTF16KeyOrder(_DocumentWriter):
    """Sorts keys by UTF-16 code units (RFC 8785 / JavaScript), not by code point: a key above
    U+FFFF comes before U+E000-U+FFFF."""
    name = "broken writer: keys sorted by UTF-16 code units"

    def text(self, doc):
        return json.dumps(_utf16_sorted(doc), separators=(",", ":"))


class WriterUnescapedUnicode(_DocumentWriter):
    """ensure_ascii=False: non-ASCII text (a provenance note, a model name) written raw."""
    name = "broken writer: non-ASCII characters not escaped"

    def text(self, doc):
        return _canonical(doc, ensure_ascii=False)


class WriterNoPrefix(_DocumentWriter):
    """Always writes module_prefix "" and the full names (valid, but not the longest prefix)."""
    name = "broken writer: module_prefix left empty"

    def text(self, doc):
        prefix = doc["module_prefix"]
        return _canonical({**doc, "module_prefix": "", "modules": [[prefix + m[0], *m[1:]] for m in doc["modules"]]})


class WriterLayoutAlways(_DocumentWriter):
    """Writes every module's layout, 'linear' included (the default writers omit)."""
    name = "broken writer: layout 'linear' written"

    def text(self, doc):
        return _canonical({**doc, "modules": [m if len(m) == 4 else [*m, "linear"] for m in doc["modules"]]})


class WriterSpecTextVersion(FullWriter):
    """Writes vera_spec_version "1.2" (the spec text's version, not the file profile's 1.1)."""
    name = "broken writer: vera_spec_version 1.2"

    def save_adapter(self, adapter, path):
        _, doc, plan = _parts(adapter)
        _write_checked(path, _payload(_canonical(doc), plan, version="1.2"))


# --- writer_fields: fields dropped --------------------------------------------------------------------

class WriterDropsProvenance(FullWriter):
    name = "broken writer: provenance dropped"

    def save_adapter(self, adapter, path):
        super().save_adapter(dataclasses.replace(adapter, provenance={}), path)


class WriterDropsDInitial(FullWriter):
    name = "broken writer: d_initial written as the default 0.1"

    def save_adapter(self, adapter, path):
        super().save_adapter(dataclasses.replace(adapter, d_initial=0.1), path)


class WriterDropsDropout(FullWriter):
    name = "broken writer: dropout dropped"

    def save_adapter(self, adapter, path):
        super().save_adapter(dataclasses.replace(adapter, dropout=0.0), path)


class WriterIgnoresPacked(FullWriter):
    name = "broken writer: tensor_layout packed ignored (always per-module)"

    def save_adapter(self, adapter, path):
        super().save_adapter(dataclasses.replace(adapter, tensor_layout="per-module"), path)


class WriterDropsBaseModelName(FullWriter):
    """Keeps only the fingerprint of base_model: its name and revision are lost."""
    name = "broken writer: base_model name and revision dropped"

    def save_adapter(self, adapter, path):
        bm = {k: v for k, v in (adapter.base_model or {}).items() if k == "fingerprint"} or None
        super().save_adapter(dataclasses.replace(adapter, base_model=bm), path)


class WriterExtraAsFloat32(FullWriter):
    """Writes every extra tensor (a task head) as float32, whatever its dtype."""
    name = "broken writer: extra tensors always float32"

    def save_adapter(self, adapter, path):
        super().save_adapter(dataclasses.replace(adapter, extra_dtypes={}), path)


class WriterStoredRegenerated(FullWriter):
    """Knows only seeded generators: a ``stored`` adapter is written as philox4x32-10 with seed 0,
    its projections dropped."""
    name = "broken writer: stored projections replaced by a seed"

    def save_adapter(self, adapter, path):
        if adapter.generator == "stored":
            adapter = dataclasses.replace(adapter, generator="philox4x32-10", seed=0, stored={})
        super().save_adapter(adapter, path)


# --- writer_fingerprint and written_file_runs ------------------------------------------------------------

class WriterFingerprintUntransposed(FullWriter):
    """Hashes a conv1d weight as the layer holds it, (in, out), not in (out, in) orientation."""
    name = "broken writer: conv1d fingerprinted untransposed"

    def save_adapter(self, adapter, path):
        w = adapter.base_weights
        if w is None:
            return super().save_adapter(adapter, path)
        h = hashlib.sha256()
        for name, *_ in adapter.modules:  # W0 as held: (in, out) for conv1d
            h.update(name.encode("utf-8") + b"\0" + np.ascontiguousarray(w[name], dtype="<f4").tobytes())
        bm = {**(adapter.base_model or {}), "fingerprint": h.hexdigest()}
        super().save_adapter(dataclasses.replace(adapter, base_weights=None, base_model=bm), path)


def _init_weights(adapter: LoadedAdapter) -> dict:
    """The weights of a freshly initialised model of the adapter's shapes (not the base model's)."""
    rng = np.random.default_rng(0)
    return {n: rng.uniform(-1, 1, (o, i) if lay == "linear" else (i, o)).astype(np.float32).astype(np.float64)
            for n, i, o, lay in adapter.modules}


class WriterFingerprintsAnyModel(FullWriter):
    """Fingerprints the model it builds to write, also when the base model is unknown: a fresh
    initialisation's fingerprint, which no real base model matches."""
    name = "broken writer: fingerprint made up for an unknown base model"

    def save_adapter(self, adapter, path):
        w = adapter.base_weights if adapter.base_weights is not None else _init_weights(adapter)
        given = (adapter.base_model or {}).get("fingerprint")
        super().save_adapter(dataclasses.replace(adapter, base_weights=None if given else w), path)


class WriterFingerprintsInitWeights(FullWriter):
    """Builds a fresh model to write and fingerprints it without loading the base weights into it
    first: the file names a base model that is not the one it was trained on."""
    name = "broken writer: fingerprint of a freshly initialised model"

    def save_adapter(self, adapter, path):
        if adapter.base_weights is not None:
            adapter = dataclasses.replace(adapter, base_weights=_init_weights(adapter))
        super().save_adapter(adapter, path)


class WriterPackedInNameOrder(FullWriter):
    """Packs the vectors of the modules in name order while listing the modules in their order."""
    name = "broken writer: packed vectors in name order"

    def save_adapter(self, adapter, path):
        if adapter.tensor_layout == "packed":
            names = [m[0] for m in adapter.modules]
            by_name = sorted(names)
            if by_name != names and all(len(adapter.lambda_b[a]) == len(adapter.lambda_b[b])
                                        for a, b in zip(names, by_name)):
                adapter = dataclasses.replace(adapter, lambda_d={a: adapter.lambda_d[b] for a, b in zip(names, by_name)},
                                              lambda_b={a: adapter.lambda_b[b] for a, b in zip(names, by_name)})
            elif by_name != names:  # unequal sizes: packed in name order, the offsets are then shifted
                ad, doc, plan = _parts(adapter)
                plan["lambda_d"] = (np.stack([np.asarray(ad.lambda_d[n]) for n in by_name]), plan["lambda_d"][1])
                plan["lambda_b"] = (np.concatenate([np.asarray(ad.lambda_b[n]) for n in by_name]), plan["lambda_b"][1])
                _write_checked(path, _payload(_canonical(doc), plan))
                return
        super().save_adapter(adapter, path)


# --- writer_atomic -----------------------------------------------------------------------------------

class WriterInPlace(FullWriter):
    """Checks the bytes, then opens the target with "wb" and writes them: a reader (or a crash)
    in between sees a partial file."""
    name = "broken writer: target rewritten in place"

    def save_adapter(self, adapter, path):
        _, doc, plan = _parts(adapter)
        payload = _payload(_canonical(doc), plan)
        read_adapter(io.BytesIO(payload), len(payload), verify_checksums=False)
        with open(path, "wb") as f:
            f.write(payload)


class WriterLeavesTemporary(FullWriter):
    """Writes ``<target>.tmp``, validates it, renames it; a refused file stays behind as the .tmp."""
    name = "broken writer: temporary left behind on error"

    def save_adapter(self, adapter, path):
        _, doc, plan = _parts(adapter)
        payload = _payload(_canonical(doc), plan)
        tmp = Path(str(path) + ".tmp")
        tmp.write_bytes(payload)
        vera_ref.validate_adapter(tmp)
        os.replace(tmp, path)


class WriterNoValidation(FullWriter):
    """Writes atomically without reading its bytes back first: NaN vectors reach the disk."""
    name = "broken writer: writes what 4.6 refuses (no validation)"

    def save_adapter(self, adapter, path):
        _, doc, plan = _parts(adapter)
        container.write_atomic(path, [_payload(_canonical(doc), plan)])


# --- writer_header: the SHOULDs of 4.7 ------------------------------------------------------------------

def _container(metadata: dict, plan: dict, order, pad: bool) -> bytes:
    header: dict = {"__metadata__": dict(metadata)}
    chunks, pos = [], 0
    for name in order(plan):
        array, dtype = plan[name]
        buf = container.encode(array, dtype)
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [pos, pos + len(buf)]}
        chunks.append(buf)
        pos += len(buf)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


class _ContainerWriter(FullWriter):
    order = staticmethod(sorted)
    pad = True

    def save_adapter(self, adapter, path):
        _, doc, plan = _parts(adapter)
        meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION, CONFIG_KEY: _canonical(doc)}
        _write_checked(path, _container(meta, plan, self.order, self.pad))


class WriterUnpaddedHeader(_ContainerWriter):
    name = "broken writer: header not padded to 8 bytes"
    pad = False


class WriterTensorsInPlanOrder(_ContainerWriter):
    """Tensors in the order of spec 4.4 (module order) instead of by name."""
    name = "broken writer: tensors not ordered by name"
    order = staticmethod(lambda plan: list(plan))


# --- refuses_bad_arguments (spec 1.3, 1.4) ---------------------------------------------------------

class SeedModulo(Reference):
    """Takes the seed mod 2^64 (a uint64 cast): seed -1 silently becomes 2^64 - 1."""
    name = "broken: seed reduced mod 2^64"

    def projection(self, seed, r, n_in, n_out, group, device):
        return vera_ref.projection(int(seed) % 2**64, r, n_in, n_out, group)


class GroupWraps(Reference):
    """Puts the group in a 32-bit counter word without a check: group 2^32 becomes group 0."""
    name = "broken: group reduced mod 2^32"

    def projection(self, seed, r, n_in, n_out, group, device):
        return vera_ref.projection(seed, r, n_in, n_out, int(group) % 2**32)


CAUGHT_BY: dict = {
    WriterPrettyDocument: "writer_bytes", WriterUnsortedKeys: "writer_bytes", WriterUnescapedUnicode: "writer_bytes",
    WriterUTF16KeyOrder: "writer_bytes",
    WriterNoPrefix: "writer_bytes", WriterLayoutAlways: "writer_bytes", WriterSpecTextVersion: "writer_bytes",
    WriterDropsProvenance: "writer_fields", WriterDropsDInitial: "writer_fields", WriterDropsDropout: "writer_fields",
    WriterIgnoresPacked: "writer_fields", WriterDropsBaseModelName: "writer_fields",
    WriterExtraAsFloat32: "writer_fields", WriterStoredRegenerated: "writer_fields",
    WriterFingerprintUntransposed: "writer_fingerprint", WriterFingerprintsAnyModel: "writer_fingerprint",
    WriterFingerprintsInitWeights: "written_file_runs", WriterPackedInNameOrder: "written_file_runs",
    WriterInPlace: "writer_atomic", WriterLeavesTemporary: "writer_atomic", WriterNoValidation: "writer_atomic",
    WriterUnpaddedHeader: "writer_header", WriterTensorsInPlanOrder: "writer_header",
    SeedModulo: "refuses_bad_arguments", GroupWraps: "refuses_bad_arguments",
}
