"""The writer checks (checks_writer.py): each document rule of spec 4.3 named on hand-written
texts, the fingerprint of spec 4.3 computed independently, what spec 4.3 leaves open reported as
a note and not a failure, every field of a valid file vector carried through LoadedAdapter, and
the reference writer passing every writer check with bytes identical to vera_ref's."""
import hashlib
import json

import numpy as np
import pytest

import vera_ref
from vera_conformance.checks import CHECKS
from vera_conformance.checks_writer import (_content, _explicit, document_rule, field_diff, fingerprint_problem)
from vera_conformance.impls import broken_writer as BW
from vera_conformance.protocol import LoadedAdapter
from vera_conformance.runner import run
from vera_ref.resources import vectors_dir

WRITER_CHECKS = ["writer_fields", "writer_bytes", "writer_header", "writer_fingerprint", "writer_atomic",
                 "written_file_runs"]
META = {"vera_format": "vera-adapter", "vera_spec_version": "1.1"}


def _content_of(modules, **kw):
    mods = [(n, i, o, lay) for n, i, o, lay in modules]
    return LoadedAdapter(2, "philox4x32-10", 1, mods, {m[0]: np.zeros(2) for m in mods},
                         {m[0]: np.zeros(m[2]) for m in mods}, **kw)


TWO = [("model.layers.0.q", 3, 4, "linear"), ("model.layers.1.q", 3, 4, "conv1d")]


def test_writer_checks_are_registered_with_the_files_capability():
    names = {c.name: c for c in CHECKS}
    for n in WRITER_CHECKS:
        assert names[n].capability == "files" and names[n].level == "F"


@pytest.mark.parametrize("meta, text, rule", [
    ({**META, "vera_spec_version": "1.2"}, '{"r":1}', "vera_spec_version: writes '1.2'"),
    (META, '{"name":"caf\u00e9"}', "ASCII only: character 'é' (U+00E9) at offset 12"),
    (META, '{"a": 1}', "no insignificant whitespace: ' ' at offset 5"),
    (META, '{"a":1,\n"b":2}', "no insignificant whitespace: '\\n' at offset 7"),
    (META, '{"b":1,"a":2}', "key order of the document: key 'a' after 'b'"),
    (META, '{"p":{"z":1,"y":2}}', "key order of the document: key 'y' after 'z'"),  # nested objects too
    (META, '{"module_prefix":"model.","modules":[["layers.0.q",3,4],["layers.1.q",3,4,"conv1d"]]}',
     "module_prefix: writes 'model.', the longest common prefix of whole parts that leaves each name "
     "non-empty is 'model.layers.'"),
    (META, '{"modules":[["model.layers.0.q",3,4],["model.layers.1.q",3,4,"conv1d"]]}',
     "module_prefix: writes ''"),
    (META, '{"module_prefix":"model.layers.","modules":[["0.q",3,4,"linear"],["1.q",3,4,"conv1d"]]}',
     "default value written: modules[0] carries layout 'linear'"),
])
def test_each_document_rule_is_named(meta, text, rule):
    got = document_rule(meta, text, _content_of(TWO))
    assert got is not None and rule in got


def test_a_canonical_document_breaks_no_rule():
    # whitespace and non-sorted-looking text inside strings is content, not layout
    text = '{"module_prefix":"model.layers.","modules":[["0.q",3,4],["1.q",3,4,"conv1d"]],"z":"b a\\n"}'
    assert document_rule(META, text, _content_of(TWO)) is None
    # one module: the prefix leaves its last part (spec 4.3: each name non-empty)
    assert "is 'a.b.'" in document_rule(META, '{"module_prefix":"","modules":[["a.b.c",1,1]]}',
                                        _content_of([("a.b.c", 1, 1, "linear")]))
    # whole parts, not characters: "x.h" is no prefix of x.hh.0
    mods = [("x.h.1", 1, 1, "linear"), ("x.hh.0", 1, 1, "linear")]
    assert document_rule(META, '{"module_prefix":"x.","modules":[["h.1",1,1],["hh.0",1,1]]}',
                         _content_of(mods)) is None


def test_fingerprint_is_spec_4_3s_computed_independently():
    """sha256 over name, NUL, W0 binary32 little-endian (out, in): a conv1d weight (in, out) transposed."""
    w_lin = np.arange(12, dtype=np.float64).reshape(4, 3) / 8  # (out 4, in 3)
    w_conv = np.arange(12, dtype=np.float64).reshape(3, 4) / 16  # (in 3, out 4)
    h = hashlib.sha256()
    h.update(b"model.layers.0.q\x00" + w_lin.astype("<f4").tobytes())
    h.update(b"model.layers.1.q\x00" + np.ascontiguousarray(w_conv.T).astype("<f4").tobytes())
    want = h.hexdigest()
    content = _content_of(TWO, base_weights={"model.layers.0.q": w_lin, "model.layers.1.q": w_conv})

    class Read:  # what vera_ref.validate_adapter returns, as far as fingerprint_problem looks
        def __init__(self, fp):
            self.config = type("C", (), {"base_model": None if fp is None else {"fingerprint": fp},
                                         "modules": [vera_ref.ModuleSpec(*m) for m in TWO]})()
    assert fingerprint_problem(Read(want), content) is None
    assert "not written though" in fingerprint_problem(Read(None), content)
    untransposed = hashlib.sha256(b"model.layers.0.q\x00" + w_lin.astype("<f4").tobytes()
                                  + b"model.layers.1.q\x00" + w_conv.astype("<f4").tobytes()).hexdigest()
    assert "as the layer holds them, (in, out)" in fingerprint_problem(Read(untransposed), content)
    unknown = _content_of(TWO)
    assert fingerprint_problem(Read(None), unknown) is None
    assert "written for an unknown base model" in fingerprint_problem(Read(want), unknown)
    given = _content_of(TWO, base_model={"fingerprint": "ab" * 32})
    assert fingerprint_problem(Read("ab" * 32), given) is None
    assert "the given one is abab" in fingerprint_problem(Read(want), given)


@pytest.mark.parametrize("name", sorted(p.name for p in (vectors_dir() / "files").iterdir()
                                        if p.name.startswith("valid")))
def test_every_field_of_each_valid_vector_survives_loaded_adapter(name, tmp_path):
    """LoadedAdapter holds every field a file carries: read a valid vector, write its content with
    the reference, and nothing differs (stored projections, extras and their dtypes included)."""
    ad = vera_ref.load_adapter(vectors_dir() / "files" / name)
    content = LoadedAdapter.of(ad)
    vera_ref.save_adapter(content.to_adapter(), tmp_path / "a.safetensors")
    back = vera_ref.validate_adapter(tmp_path / "a.safetensors")
    assert field_diff(back, content) == []
    assert back.config.base_model == ad.config.base_model and back.config.extra_tensors == ad.config.extra_tensors


def test_the_reference_writer_passes_every_writer_check_with_vera_refs_bytes():
    results = run(BW.FullWriter(), "x:y", ["cpu"], ["float32"], 8, only=WRITER_CHECKS, echo=lambda s: None)
    assert {r.check: r.status for r in results} == {c: "passed" for c in WRITER_CHECKS}
    notes = {r.check: r.note for r in results}
    assert notes["writer_bytes"] == ""  # the same bytes as vera_ref's: nothing left open


class _SpellsNumbersAndOmitsDefaults(BW._DocumentWriter):
    """Valid and canonical, different bytes: d_initial as 1e-1 and optional fields at their default
    left out (spec 4.3 fixes neither)."""
    name = "writer choosing what spec 4.3 leaves open"

    def text(self, doc):
        doc = {k: v for k, v in doc.items() if not (k in ("dropout", "extra_tensors", "provenance", "tensor_layout")
                                                    and v in (0.0, [], {}, "per-module"))}
        t = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return t.replace('"d_initial":0.1,', '"d_initial":1e-1,')


def test_what_spec_4_3_leaves_open_is_a_note_not_a_failure():
    out = run(_SpellsNumbersAndOmitsDefaults(), "x:y", ["cpu"], ["float32"], 4, only=["writer_bytes", "writer_fields"],
              echo=lambda s: None)
    assert [r.status for r in out] == ["passed", "passed"], [r.reason for r in out]
    note = next(r.note for r in out if r.check == "writer_bytes")
    assert note.startswith("the document differs from vera_ref's only where spec 4.3 leaves it open")


def test_each_failure_replays_from_its_case():
    """The repro case of a writer failure is the content spec: replayed, it fails the same way."""
    impl = BW.WriterDropsDropout()
    first = run(impl, "x:y", ["cpu"], ["float32"], 8, only=["writer_fields"], echo=lambda s: None)[0]
    assert first.status == "failed" and "dropout" in first.reason
    again = run(impl, "x:y", ["cpu"], ["float32"], 1, only=["writer_fields"], case=first.case, echo=lambda s: None)[0]
    assert again.status == "failed" and again.reason == first.reason
    assert run(BW.FullWriter(), "x:y", ["cpu"], ["float32"], 1, only=["writer_fields"], case=first.case,
               echo=lambda s: None)[0].status == "passed"


def test_contents_cover_every_field():
    """The fixed contents reach what the checks compare: every optional field away from its default,
    non-ASCII text, a conv1d module, packed and stored, known, given and unknown base models."""
    specs = _explicit(("conv1d", "linear"))
    contents = [_content(s) for s in specs]
    assert {c.generator for c in contents} >= {"philox4x32-10", "peft-mt19937", "stored"}
    assert {s["base"] for s in specs} == {"known", "given", "unknown"}
    rich = contents[1]
    assert rich.tensor_layout == "packed" and rich.d_initial != 0.1 and rich.dropout != 0.0
    assert rich.provenance and rich.base_model and rich.extra and set(rich.extra_dtypes.values()) - {"float32"}
    assert any(ord(ch) > 127 for ch in json.dumps(rich.provenance, ensure_ascii=False))
    assert any(m[3] == "conv1d" for m in rich.modules)


def test_refuses_bad_arguments_also_needs_the_edges_inside_accepted():
    from vera_conformance.checks_writer import check_refuses_bad_arguments
    from vera_conformance.impls.reference import Reference

    class RefusesBigSeeds(Reference):  # a uint64 handled as int64: 2^64 - 1 refused
        def projection(self, seed, r, n_in, n_out, group, device):
            if seed >= 2**63:
                raise OverflowError("seed does not fit int64")
            return super().projection(seed, r, n_in, n_out, group, device)
    out = check_refuses_bad_arguments(RefusesBigSeeds(), "cpu", None, 1)
    assert out.status == "failed" and "refused seed 18446744073709551615, group 0, inside the ranges" in out.reason
    ok = check_refuses_bad_arguments(Reference(), "cpu", None, 1)
    assert ok.status == "passed" and ok.examples == 5


def test_written_file_runs_without_torch_uses_the_reference_reader_and_says_so(monkeypatch):
    """Without torch the written file still runs (the reference's reader and forward), noted; a
    writer whose packed vectors are in name order fails there too."""
    import sys

    from vera_conformance.checks_writer import check_written_file_runs
    monkeypatch.setitem(sys.modules, "vera_torch", None)  # import vera_torch raises ImportError
    ok = check_written_file_runs(BW.FullWriter(), "cpu", None, 1)
    assert ok.status == "passed" and ok.note == "torch is absent: the written file was run through the reference's reader"
    bad = check_written_file_runs(BW.WriterPackedInNameOrder(), "cpu", None, 1)
    assert bad.status == "failed" and "run with the written file" in bad.reason
