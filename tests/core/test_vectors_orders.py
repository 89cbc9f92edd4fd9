"""spec 4.6, 6.5: every order the text fixes is pinned by a vector.

A reader variant with one order permuted (the reference with one step replaced by a version
that checks in another order, as a 1.0-era reader or another language's natural order would)
must fail at least one vector of spec/vectors/files.json, while the reference itself reads every
vector right.
"""
import io
import json

import pytest

from conftest import VECTORS
from vera_ref import adapter, metadata
from vera_ref.adapter import read_adapter
from vera_ref.errors import AdapterFileError
from vera_ref.metadata import _HEX_RE, _NAME_RE, _PREFIX_RE, LAYOUTS, AdapterConfig, ModuleSpec, _int, _is_int
from vera_ref.rules import fail

FILES = json.loads((VECTORS / "files.json").read_text())
TESTS = [t for g in FILES["testGroups"] for t in g["tests"]]


def _verdict(t):
    data = (VECTORS / "files" / t["file"]).read_bytes()
    try:
        read_adapter(io.BytesIO(data), len(data))
    except AdapterFileError as exc:
        return exc.code, exc.field
    return "accepted"


def _want(t):
    return "accepted" if t["result"] == "valid" else (t["error"]["code"], t["error"]["field"])


def _failed():
    return [(t["file"], t["comment"][:80], _verdict(t), _want(t)) for t in TESTS if _verdict(t) != _want(t)]


def test_the_reference_reads_every_vector_right():
    assert _failed() == []


# --- reader variants, each with one order of spec 4.6 changed ---------------------------------------

def _modules_rule_by_rule(doc):
    """step 16 rule by rule across the entries (all forms, then all names, ...)."""
    prefix = doc.get("module_prefix", "")
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        fail("E4.6.16.1", json=prefix)
    if "modules" not in doc:
        fail("E4.6.16.2")
    mods = doc["modules"]
    if not isinstance(mods, list) or not mods:
        fail("E4.6.16.3")
    for i, m in enumerate(mods):
        if not isinstance(m, list) or len(m) not in (3, 4):
            fail("E4.6.16.4", f"modules[{i}]")
    for i, m in enumerate(mods):
        if not isinstance(m[0], str) or not _NAME_RE.fullmatch(prefix + m[0]):
            fail("E4.6.16.5", f"modules[{i}]", json=m[0])
    seen = set()
    for m in mods:
        if prefix + m[0] in seen:
            fail("E4.6.16.6", json=prefix + m[0])
        seen.add(prefix + m[0])
    for j, code in ((1, "E4.6.16.7"), (2, "E4.6.16.8")):
        for i, m in enumerate(mods):
            if not _is_int(m[j]) or m[j] < 1:
                fail(code, f"modules[{i}]", json=m[j])
    for i, m in enumerate(mods):
        if len(m) == 4 and m[3] not in LAYOUTS:
            fail("E4.6.16.9", f"modules[{i}]", json=m[3])
    return [ModuleSpec(prefix + m[0], m[1], m[2], m[3] if len(m) == 4 else "linear") for m in mods]


def _modules_list_first(doc):
    """step 16 with the list checked before module_prefix."""
    if "modules" not in doc:
        fail("E4.6.16.2")
    return ORIGINAL["_modules"](doc)


def _modules_numbers_first(doc):
    """step 16 entry by entry, but an entry's numbers (16.7, 16.8) before its name (16.5, 16.6)."""
    for i, m in enumerate(doc.get("modules") or []):
        if isinstance(m, list) and len(m) in (3, 4):
            for j, code in ((1, "E4.6.16.7"), (2, "E4.6.16.8")):
                if not _is_int(m[j]) or m[j] < 1:
                    fail(code, f"modules[{i}]", json=m[j])
    return ORIGINAL["_modules"](doc)


def _dims_missing_first(doc, modules):
    """step 17 rule by rule: both 'missing', then both types, then both maxima (as 1.0's row reads)."""
    for key, code in (("n_in", "E4.6.17.1"), ("n_out", "E4.6.17.3")):
        if key not in doc:
            fail(code)
    return ORIGINAL["_dims"](doc, modules)


def _dims_field_by_field(doc, modules):
    """step 17 field by field: n_in's three rules, then n_out's."""
    n_in = _int(doc, "n_in", "E4.6.17.1", "E4.6.17.2")
    if n_in != max(m.in_features for m in modules):
        fail("E4.6.17.5", n=max(m.in_features for m in modules), v=n_in)
    return ORIGINAL["_dims"](doc, modules)


def _dims_n_out_first(doc, modules):
    """step 17 with n_out checked before n_in."""
    n_out = _int(doc, "n_out", "E4.6.17.3", "E4.6.17.4")
    if n_out != max(m.out_features for m in modules):
        fail("E4.6.17.6", n=max(m.out_features for m in modules), v=n_out)
    return ORIGINAL["_dims"](doc, modules)


def _checksums_entry_by_entry(doc, groups):
    """step 21 entry by entry: an entry's digits (21.3) before the next entry's form (21.2)."""
    v = doc.get("projection_sha256")
    if isinstance(v, list):
        for e in v:
            if isinstance(e, dict):
                for k in ("A", "B"):
                    if k in e and not (isinstance(e[k], str) and _HEX_RE.fullmatch(e[k])):
                        fail("E4.6.21.3", k=k, g=e.get("group"))
    return ORIGINAL["_checksums"](doc, groups)


def _base_model_named(key):
    def check(doc):
        v = doc.get("base_model")
        if isinstance(v, dict) and all(isinstance(s, str) for s in v.values()):
            unknown = [k for k in v if k not in ("name", "revision", "fingerprint")]
            if unknown:
                fail("E4.6.20.4", "base_model." + (min(unknown, key=key) if key else unknown[0]))
        return ORIGINAL["_base_model"](doc)
    return check


def _base_model_keys_first(doc):
    """step 20 naming an unknown base_model key (20.4) before checking the values (20.3)."""
    v = doc.get("base_model")
    if isinstance(v, dict):
        unknown = sorted(k for k in v if k not in ("name", "revision", "fingerprint"))
        if unknown:
            fail("E4.6.20.4", "base_model." + unknown[0])
    return ORIGINAL["_base_model"](doc)


def _base_model_fingerprint_first(doc):
    """step 20 checking the fingerprint (20.5) before naming unknown keys (20.4)."""
    v = doc.get("base_model")
    if isinstance(v, dict) and isinstance(v.get("fingerprint"), str) and not _HEX_RE.fullmatch(v["fingerprint"]):
        fail("E4.6.20.5")
    return ORIGINAL["_base_model"](doc)


def _read_header_text_order(f, size):
    """The header's entries in the order of its text (the reference sorts them)."""
    meta, entries, start = ORIGINAL["read_header"](f, size)
    here = f.tell()
    f.seek(8)
    order = [k for k in json.loads(f.read(start - 8).decode("utf-8")) if k != "__metadata__"]
    f.seek(here)
    return meta, {k: entries[k] for k in order}, start


def _names_unexpected_in_header_order(expected, entries):
    """step 23.3 walking the present tensors in the header's order, not by name."""
    names = {t.name for t in expected}
    first = next((n for n in entries if n not in names), None)
    ORIGINAL["check_names"](expected, {n: e for n, e in entries.items() if n in names or n == first})


def _utf16(s):
    return s.encode("utf-16-be", "surrogatepass")


def _unknown_fields_utf16(doc, minor):
    unknown = sorted(set(doc) - set(metadata.KNOWN_FIELDS), key=_utf16)
    if unknown and minor <= metadata.SPEC_MINOR:
        fail("E4.6.11.1", unknown[0])


def _expected_reordered(order):
    def expected(self):
        return order(ORIGINAL["expected_tensors"](self))
    return expected


def _d_then_b(ts):
    vec = [t for t in ts if t.role == "vector"]
    return ([t for t in vec if t.name.endswith("lambda_d")] + [t for t in vec if t.name.endswith("lambda_b")]
            + [t for t in ts if t.role != "vector"])


def _a_then_b(ts):
    proj = [t for t in ts if t.role == "projection"]
    return ([t for t in ts if t.role == "vector"] + [t for t in proj if t.name[0] == "A"]
            + [t for t in proj if t.name[0] == "B"] + [t for t in ts if t.role == "extra"])


def _extras_sorted(ts):
    return [t for t in ts if t.role != "extra"] + sorted((t for t in ts if t.role == "extra"), key=lambda t: t.name)


def _types_rule_by_rule(cfg, expected, entries):
    """step 24 rule by rule: every shape (24.1), then every dtype."""
    for t in expected:
        if t.shape is not None and tuple(entries[t.name][1]) != t.shape:
            fail("E4.6.24.1", t.name, shape=list(entries[t.name][1]), expected=list(t.shape))
    ORIGINAL["check_types"](cfg, expected, entries)


def _names_extras_sorted(expected, entries):
    """step 23.1 in name order instead of the order of extra_tensors."""
    vera = {t.name for t in expected if t.role != "extra"}
    for name in sorted(t.name for t in expected if t.role == "extra"):
        if name in vera:
            fail("E4.6.23.1", name)
    ORIGINAL["check_names"](expected, entries)


# --- reader variants that check a step of 4.6 before the one the table puts before it -------------
# (one pair of adjacent steps each: the later step, or its first rules, run first; step_pair_files)

def _lenient_header(f):
    """The header as Python's own JSON parser reads it (duplicates, huge numbers accepted), or None."""
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def _header_then(codes, later):
    """read_header that, where it fails with one of ``codes``, first runs ``later(f, size, header)``
    (a later step of 4.6, on what can be read) and names that step's fault if it finds one."""
    def read_header(f, size):
        try:
            return ORIGINAL["read_header"](f, size)
        except AdapterFileError as exc:
            if exc.code in codes:
                later(f, size, _lenient_header(f))
            raise
    return read_header


def _first_byte(f, size, header):  # step 4.1 on the bytes present
    f.seek(8)
    b = f.read(1)
    if b and b != b"{":
        fail("E4.6.4.1")


def _metadata_present(f, size, header):  # step 5.1
    if header is not None and "__metadata__" not in header:
        fail("E4.6.5.1")


def _entries(f, size, header):  # step 6 on every entry
    if header is not None:
        f.seek(0)
        data_size = size - 8 - int.from_bytes(f.read(8), "little")
        for name in sorted(k for k in header if k != "__metadata__"):
            adapter.container._header_entry(name, header[name], data_size)


def _no_gap(f, size, header):  # step 7.1 on the entries whose offsets are two integers
    spans = sorted(tuple(e["data_offsets"]) for k, e in (header or {}).items() if k != "__metadata__"
                   and isinstance(e, dict) and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
                   and all(_is_int(v) for v in e["data_offsets"]))
    pos = 0
    for begin, end in spans:
        if begin != pos:
            fail("E4.6.7.1", n=min(begin, pos))
        pos = end


def _kind(f, size, header):  # step 8
    if header is not None and isinstance(header.get("__metadata__"), dict):
        ORIGINAL["_check_kind"](header["__metadata__"], [k for k in header if k != "__metadata__"])


def _version_before_kind(meta, tensors):
    """step 9 (a given version's form) before step 8 (the magic)."""
    if metadata.VERSION_KEY in meta:
        metadata.check_version(meta[metadata.VERSION_KEY])
    ORIGINAL["_check_kind"](meta, tensors)


def _config_before_version(meta, tensors):
    """step 10.1 (vera_config present) right after step 8, before step 9."""
    ORIGINAL["_check_kind"](meta, tensors)
    if metadata.CONFIG_KEY not in meta:
        fail("E4.6.10.1")


_MINOR = {}


def _check_version_kept(version):
    out = ORIGINAL["check_version"](version)
    _MINOR["minor"] = out[1]
    return out


def _unknown_fields_on_lenient_parse(text):
    """step 11 on Python's own JSON parse (duplicates and huge numbers accepted) before step 10's
    dialect rules, as a reader that validates the dialect last would."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        ORIGINAL["_unknown_fields"](doc, _MINOR["minor"])
    return ORIGINAL["parse_document"](text)


def _r_before_unknown(doc, minor):
    """step 12 before step 11."""
    ORIGINAL["_int"](doc, "r", "E4.6.12.1", "E4.6.12.2")
    ORIGINAL["_unknown_fields"](doc, minor)


def _int_with(before):
    def _int(doc, key, missing, bad):
        if key == "r":
            before(doc)
        return ORIGINAL["_int"](doc, key, missing, bad)
    return _int


def _choice_with(field, before=None, after=None):
    def _choice(doc, key, *args, **kw):
        if key == field and before:
            before(doc)
        v = ORIGINAL["_choice"](doc, key, *args, **kw)
        if key == field and after:
            after(doc)
        return v
    return _choice


def _generator(doc):  # step 13
    ORIGINAL["_choice"](doc, "generator", metadata.generators.names(), "E4.6.13.1", "E4.6.13.2")


def _seed_form(doc):  # step 14.3 as a seeded generator's reader checks a given seed (null aside)
    v = doc.get("seed")
    if v is not None and not (isinstance(v, str) and metadata._SEED_RE.fullmatch(v)):
        fail("E4.6.14.3", json=v)


def _sharing(doc):  # step 15.1, 15.2
    ORIGINAL["_choice"](doc, "sharing", metadata.SHARING, "E4.6.15.1", "E4.6.15.2")


def _seed_after_sharing(doc, gen):
    """step 15 before step 14."""
    _sharing(doc)
    return ORIGINAL["_seed"](doc, gen)


def _dims_present_first(doc):
    """step 17's n_in and n_out present integers (17.1-17.4) before step 16."""
    ORIGINAL["_int"](doc, "n_in", "E4.6.17.1", "E4.6.17.2")
    ORIGINAL["_int"](doc, "n_out", "E4.6.17.3", "E4.6.17.4")
    return ORIGINAL["_modules"](doc)


def _dtype_layout_before_dims(doc, modules):
    """step 18 before step 17."""
    ORIGINAL["_choice"](doc, "vector_dtype", tuple(metadata.EPS), "E4.6.18.1", "E4.6.18.2")
    ORIGINAL["_choice"](doc, "tensor_layout", metadata.TENSOR_LAYOUTS, None, "E4.6.18.3", default="per-module")
    return ORIGINAL["_dims"](doc, modules)


def _numbers(doc):  # step 19
    ORIGINAL["_number"](doc, "d_initial", 0.1, "E4.6.19.1", False)
    ORIGINAL["_number"](doc, "dropout", 0.0, "E4.6.19.2", True)


def _step20_before_numbers(doc, key, default, code, unit_interval):
    """step 20 before step 19."""
    if key == "d_initial":
        ORIGINAL["_names"](doc)
        ORIGINAL["_base_model"](doc)
        if not isinstance(doc.get("provenance", {}), dict):
            fail("E4.6.20.6")
    return ORIGINAL["_number"](doc, key, default, code, unit_interval)


def _checksums_present_first(doc):
    """step 21.1 before step 20."""
    if "projection_sha256" not in doc:
        fail("E4.6.21.1")
    return ORIGINAL["_names"](doc)


def _limit_before_checksums(doc, groups):
    """step 22 (the projection's size) before step 21."""
    n = sum(doc["r"] * (n_in + n_out) for _, n_in, n_out in groups)
    if n > metadata.DEFAULT_MAX_PROJECTION_ELEMENTS:
        fail("E4.6.22.1", n=n, max=metadata.DEFAULT_MAX_PROJECTION_ELEMENTS)
    return ORIGINAL["_checksums"](doc, groups)


def _names_before_limit(meta, entries, *, max_projection_elements=metadata.DEFAULT_MAX_PROJECTION_ELEMENTS):
    """step 23 before step 22 (the names against a document whose projection is over the limit)."""
    ORIGINAL["_check_kind"](meta, entries)
    metadata.check_version(meta.get(metadata.VERSION_KEY))
    if metadata.CONFIG_KEY in meta:
        cfg = metadata.parse_config(meta[metadata.CONFIG_KEY], meta[metadata.VERSION_KEY])
        adapter.check_names(cfg.expected_tensors(), entries)
    return ORIGINAL["check_layout"](meta, entries, max_projection_elements=max_projection_elements)


ORIGINAL = {"_modules": metadata._modules, "_dims": metadata._dims, "_checksums": metadata._checksums,
            "_base_model": metadata._base_model, "expected_tensors": AdapterConfig.expected_tensors,
            "check_types": adapter.check_types, "check_names": adapter.check_names,
            "read_header": adapter.container.read_header, "_check_kind": adapter._check_kind,
            "check_version": metadata.check_version, "parse_document": metadata.parse_document,
            "_unknown_fields": metadata._unknown_fields, "_int": metadata._int, "_choice": metadata._choice,
            "_seed": metadata._seed, "_number": metadata._number, "_names": metadata._names,
            "check_layout": adapter.check_layout}

# (name, target object, attribute, replacement)
VARIANTS = [
    ("step 16 rule by rule across entries (a 1.0-era reading of its row)", metadata, "_modules",
     _modules_rule_by_rule),
    ("step 16 list before module_prefix", metadata, "_modules", _modules_list_first),
    ("step 16 an entry's numbers before its name", metadata, "_modules", _modules_numbers_first),
    ("step 17 'missing' for both first (a 1.0-era reading of its row)", metadata, "_dims", _dims_missing_first),
    ("step 17 field by field (n_in's rules, then n_out's)", metadata, "_dims", _dims_field_by_field),
    ("step 17 n_out before n_in", metadata, "_dims", _dims_n_out_first),
    ("step 21 entry by entry", metadata, "_checksums", _checksums_entry_by_entry),
    ("step 20.4 names the first unknown key in text order", metadata, "_base_model", _base_model_named(None)),
    ("step 20.4 names the first unknown key in UTF-16 order", metadata, "_base_model", _base_model_named(_utf16)),
    ("step 20.4 before 20.3 (keys named before the values are checked)", metadata, "_base_model",
     _base_model_keys_first),
    ("step 20.5 before 20.4", metadata, "_base_model", _base_model_fingerprint_first),
    ("step 11 names the first unknown field in UTF-16 order", metadata, "_unknown_fields", _unknown_fields_utf16),
    ("steps 23-25: every lambda_d, then every lambda_b", AdapterConfig, "expected_tensors",
     _expected_reordered(_d_then_b)),
    ("steps 23-25: expected tensors in name order", AdapterConfig, "expected_tensors",
     _expected_reordered(lambda ts: sorted(ts, key=lambda t: t.name))),
    ("steps 23-25: every A, then every B", AdapterConfig, "expected_tensors", _expected_reordered(_a_then_b)),
    ("steps 23-25: extra tensors in name order", AdapterConfig, "expected_tensors",
     _expected_reordered(_extras_sorted)),
    ("step 24 rule by rule (every shape, then every dtype)", adapter, "check_types", _types_rule_by_rule),
    ("step 23.1 in name order", adapter, "check_names", _names_extras_sorted),
    # adjacent steps (spec 4.6: the order of the table), the later one first
    ("step 4.1 (the bytes present) before step 3", adapter.container, "read_header",
     _header_then({"E4.6.3.1"}, _first_byte)),
    ("step 5 before step 4's dialect rules", adapter.container, "read_header",
     _header_then({"E4.6.4.5", "E4.6.4.6", "E4.6.4.7"}, _metadata_present)),
    ("step 6 before step 5", adapter.container, "read_header", _header_then({"E4.6.5.2"}, _entries)),
    ("step 7.1 (the well-formed offsets) before step 6", adapter.container, "read_header",
     _header_then({f"E4.6.6.{i}" for i in range(1, 8)}, _no_gap)),  # 6.8 (past the end) breaks step 7 too
    ("step 8 before step 7", adapter.container, "read_header", _header_then({"E4.6.7.1", "E4.6.7.2"}, _kind)),
    ("step 9 before step 8", adapter, "_check_kind", _version_before_kind),
    ("step 10.1 before step 9", adapter, "_check_kind", _config_before_version),
    ("step 12 before step 11", metadata, "_unknown_fields", _r_before_unknown),
    ("step 13 before step 12", metadata, "_int", _int_with(_generator)),
    ("step 14 (a given seed's form) before step 13", metadata, "_choice", _choice_with("generator", before=_seed_form)),
    ("step 15 before step 14", metadata, "_seed", _seed_after_sharing),
    ("step 16 before step 15", metadata, "_choice", _choice_with("sharing", before=lambda d: ORIGINAL["_modules"](d))),
    ("step 16 before 15.3 (the generator's sharing checked after the modules)", metadata, "_choice",
     _choice_with("sharing", after=lambda d: ORIGINAL["_modules"](d))),
    ("step 17 (n_in, n_out present integers) before step 16", metadata, "_modules", _dims_present_first),
    ("step 18 before step 17", metadata, "_dims", _dtype_layout_before_dims),
    ("step 19 before step 18", metadata, "_choice", _choice_with("vector_dtype", before=_numbers)),
    ("step 20 before step 19", metadata, "_number", _step20_before_numbers),
    ("step 21.1 before step 20", metadata, "_names", _checksums_present_first),
    ("step 22 before step 21", metadata, "_checksums", _limit_before_checksums),
    ("step 23 before step 22", adapter, "check_layout", _names_before_limit),
]


# a variant may replace several functions: (name, [(target, attribute, replacement), ...])
VARIANTS = [(name, [(target, attr, repl)]) for name, target, attr, repl in VARIANTS] + [
    ("step 23.3 in the header's text order", [(adapter.container, "read_header", _read_header_text_order),
                                              (adapter, "check_names", _names_unexpected_in_header_order)]),
    ("step 11 on a lenient JSON parse before step 10's dialect rules",
     [(metadata, "check_version", _check_version_kept), (metadata, "parse_document", _unknown_fields_on_lenient_parse)]),
]


@pytest.mark.parametrize("name,patches", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_reader_with_another_order_fails_a_vector(monkeypatch, name, patches):
    for target, attr, replacement in patches:
        monkeypatch.setattr(target, attr, replacement)
    failed = _failed()
    assert failed, f"no vector tells the reader '{name}' from the reference"
    # the vectors that catch it are multi-fault ones: a single-fault vector must not depend on an order
    assert any(c.startswith(("order", "multi-fault")) for _, c, _, _ in failed), failed
    assert all(c.startswith(("order", "multi-fault")) for _, c, _, _ in failed), failed
