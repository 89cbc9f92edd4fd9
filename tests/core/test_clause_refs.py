"""Clause references name clauses and rules that exist in spec/ (DEVELOPERS: "# spec 2.3").

Scanned: error messages, comments and docstrings of the code (vera_ref, conformance, backends,
tools, ports/c, tests) and the docs (README.md, conformance/README.md, spec/*.md). Checked:
``spec N.M`` and ``clause N.M`` name a heading of spec/ (or a version of the spec's history when
the number is a version, as in "spec 1.0 files"); ``spec 4.6 step N`` a step with rules; every
rule code ``E4.6.S.N`` a rule of the table (vera_ref.rules, the same table as spec 4.6.3).
"""
import re

from conftest import ROOT
from vera_ref.rules import CODES

SPEC = ROOT / "spec"
CODE_DIRS = ("vera_ref", "conformance", "backends", "tools", "ports/c", "tests", "bench", ".ci")
DOCS = ("README.md", "conformance/README.md")
SUFFIXES = (".py", ".c", ".h")

CLAUSE = re.compile(r"\b(?:spec|clause|clauses)\s+(\d+(?:\.\d+)*)")
STEP = re.compile(r"\bspec\s+4\.6,?\s+steps?\s+(\d+)(?:\.(\d+))?")
CODE = re.compile(r"\bE4\.6\.(\d+)\.(\d+)")


def clauses() -> set[str]:
    out = set()
    for p in SPEC.glob("*.md"):
        for line in p.read_text().splitlines():
            m = re.match(r"#{1,4} (\d+(?:\.\d+)*)\.?\s", line)
            if m:
                out.add(m.group(1))
    return out


def versions() -> set[str]:
    """The versions of the spec's history table (spec/README.md)."""
    return set(re.findall(r"^\| (\d+\.\d+) \| \d{4}-\d\d-\d\d \|", (SPEC / "README.md").read_text(), re.M))


def sources():
    for d in CODE_DIRS:
        root = ROOT / d
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if (p.suffix in SUFFIXES and p.is_file() and ".venv" not in p.parts and "mutants" not in p.parts
                        and p.name != "test_clause_refs.py"):  # this file writes wrong references on purpose
                    yield p
    for d in DOCS:
        if (ROOT / d).is_file():
            yield ROOT / d
    yield from sorted(SPEC.glob("*.md"))


def bad_refs() -> list[str]:
    known, vers, codes = clauses(), versions(), set(CODES)
    steps = {c.split(".")[2] for c in codes}
    bad = []
    for p in sources():
        text = p.read_text(errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{p.relative_to(ROOT)}:{lineno}"
            for m in CLAUSE.finditer(line):
                n = m.group(1)
                if n not in known and n not in vers:
                    bad.append(f"{where}: {m.group(0)!r} names no clause of spec/")
            for m in STEP.finditer(line):
                if m.group(1) not in steps:
                    bad.append(f"{where}: {m.group(0)!r} names no step of spec 4.6")
                elif m.group(2) and f"E4.6.{m.group(1)}.{m.group(2)}" not in codes:
                    bad.append(f"{where}: {m.group(0)!r} names no rule of spec 4.6")
            for m in CODE.finditer(line):
                if m.group(0) not in codes:
                    bad.append(f"{where}: {m.group(0)!r} is no rule code of spec 4.6")
    return bad


def test_clause_references_name_clauses_that_exist():
    assert clauses() >= {"0", "4", "4.6", "4.6.3", "4.1.1", "5.2.3", "6.5"}
    assert bad_refs() == []


def test_the_scanner_sees_a_wrong_reference(tmp_path, monkeypatch):
    """The check fails on a reference to a clause, a step or a rule that does not exist."""
    import test_clause_refs as me
    fake = tmp_path / "fake.py"
    fake.write_text("x = 1  # spec 4.9\n# spec 4.6 step 27\nraise E('E4.6.20.7')\ny = 2  # spec 4.6 step 20.4\n")
    monkeypatch.setattr(me, "sources", lambda: iter([fake]))
    monkeypatch.setattr(me, "ROOT", tmp_path)
    found = me.bad_refs()
    assert len(found) == 3 and all(s.startswith("fake.py:") for s in found), found
