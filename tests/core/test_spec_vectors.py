"""spec 6.1, 6.5: a vector per rule per variant, the envelope's version, the spec's own tables."""
import json
import re

from conftest import ROOT, VECTORS
from vera_ref.metadata import SPEC_TEXT_VERSION, SPEC_VERSION
from vera_ref.rules import CODES
from vera_ref.vectors import UNREACHABLE_FROM_FILES

SPEC = ROOT / "spec"
FILES = json.loads((VECTORS / "files.json").read_text())
INVALID = FILES["testGroups"][1]["tests"]


def variant_table() -> dict[str, list[str]]:
    """{code: [variant, ...]} from the table of spec 6.5 "Variants"."""
    text = (SPEC / "6-vectors.md").read_text()
    section = text.split("### Variants", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\| (E4\.6\.\d+\.\d+) \| (.+) \|", line.strip())
        if m:
            assert m.group(1) not in table, f"{m.group(1)} listed twice"
            table[m.group(1)] = re.findall(r"`([^`]+)`", m.group(2))
    return table


def _single_fault(t) -> bool:
    return not t["comment"].startswith(("multi-fault", "order"))


def test_the_variant_table_names_rules_that_exist():
    table = variant_table()
    assert len(table) >= 15
    assert set(table) <= set(CODES) - set(UNREACHABLE_FROM_FILES)
    assert all(table.values())


def test_every_rule_in_every_variant_is_broken_on_its_own():
    """spec 6.5: each (rule, variant) of the table has a single-fault vector; every other rule a file
    can reach has at least one single-fault vector."""
    table = variant_table()
    have = {(t["error"]["code"], v) for t in INVALID if _single_fault(t) for v in t.get("variants", ())}
    missing = [(code, v) for code, vs in table.items() for v in vs if (code, v) not in have]
    assert not missing, f"no single-fault vector for {missing}"
    codes = {t["error"]["code"] for t in INVALID if _single_fault(t)}
    assert set(CODES) - set(UNREACHABLE_FROM_FILES) - codes == set()


def test_vectors_name_only_variants_of_the_table():
    table = variant_table()
    stray = [(t["file"], t["error"]["code"], v) for t in INVALID for v in t.get("variants", ())
             if v not in table.get(t["error"]["code"], ())]
    assert not stray
    assert all(_single_fault(t) for t in INVALID if t.get("variants"))


def test_the_schema_and_envelopes_name_the_spec_version():
    """spec 6.1: the envelopes carry the text's version, the schema's title and id name it."""
    schema = json.loads((SPEC / "schema" / "vectors.schema.json").read_text())
    assert f"spec {SPEC_TEXT_VERSION} " in schema["title"]
    assert f"/spec/{SPEC_TEXT_VERSION}/" in schema["$id"]
    for name in ("philox4x32_10.json", "projections.json", "math.json", "files.json"):
        assert json.loads((VECTORS / name).read_text())["specVersion"] == SPEC_TEXT_VERSION
    readme = (SPEC / "README.md").read_text()
    assert readme.startswith(f"# VeRA kit specification, version {SPEC_TEXT_VERSION}\n")
    assert f"| {SPEC_TEXT_VERSION} |" in readme and f"## Changes in {SPEC_TEXT_VERSION}" in readme
    config_schema = json.loads((SPEC / "schema" / "adapter-config.schema.json").read_text())
    assert f"file profile {SPEC_VERSION} (spec {SPEC_TEXT_VERSION} " in config_schema["title"]


def test_valid_vectors_carry_their_files_version():
    """spec 6.5: a valid test's specVersion is the vera_spec_version of its file; 1.10 is a minor above 1.1."""
    from vera_ref import container
    valid = FILES["testGroups"][0]["tests"]
    for t in valid:
        meta, _ = container.read_metadata(VECTORS / "files" / t["file"])
        assert t["specVersion"] == meta["vera_spec_version"]
    assert {"1.0", "1.1", "1.9", "1.10"} <= {t["specVersion"] for t in valid}


def test_effective_is_the_writers_document_of_what_is_read():
    """spec 6.5 ``effective``: valid-09 stores modules enc.q, enc.v without a prefix; the effective
    document has the writer's prefix 'enc.' and every default written out."""
    t = next(t for t in FILES["testGroups"][0]["tests"] if t["file"] == "valid-09.safetensors")
    assert "module_prefix" not in t["config"] and t["config"]["modules"][0][0] == "enc.q"
    eff = t["effective"]
    assert eff["module_prefix"] == "enc." and [m[0] for m in eff["modules"]] == ["q", "v"]
    assert (eff["tensor_layout"], eff["d_initial"], eff["dropout"], eff["extra_tensors"], eff["provenance"]) == (
        "per-module", 0.1, 0.0, [], {})


def test_every_pair_of_adjacent_steps_has_a_vector():
    """spec 4.6 (the rules in the order of the table), 6.5: for each pair of adjacent steps s, s + 1
    that one file can break together, a vector breaks both and gets step s's code (steps 1 and 2
    cannot both fail: step 2 reads the length step 1 finds missing)."""
    earlier = {2: "header length of 2^40 bytes", 11: "multi-fault: unknown field and r missing",
               24: "multi-fault: NaN in the first vector, a wrong shape in a later one",
               25: "multi-fault: NaN in a vector and a wrong checksum"}
    for s in range(2, 26):
        found = [t for t in INVALID if f"step {s} before step {s + 1}" in t["comment"]
                 or (s in earlier and t["comment"].startswith(earlier[s]))]
        assert found, f"no vector breaks steps {s} and {s + 1}"
        assert all(t["error"]["code"].split(".")[2] == str(s) for t in found), found
