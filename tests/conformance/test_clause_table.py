"""The clause-to-check table of conformance/README.md: every MUST and SHOULD of spec/*.md is in
it, each with checks that exist in the kit or the reason no check reaches it; every vector it
cites exists. The spec's requirements are read from the spec text itself, not from a copy."""
import json
import re

import pytest

from conftest import ROOT
from vera_conformance.checks import CHECKS

KEYWORDS = re.compile(r"\b(MUST NOT|MUST|SHOULD NOT|SHOULD)\b")
HEADING = re.compile(r"^#+\s+(\d+(?:\.\d+)*)\.?\s")
BEGIN, END = "<!-- clause-table:begin -->", "<!-- clause-table:end -->"
README = ROOT / "conformance" / "README.md"


def spec_requirements(root=ROOT) -> dict[str, int]:
    """clause number -> how many MUST / MUST NOT / SHOULD / SHOULD NOT its text holds (outside code
    blocks; 0.1, which defines the key words, left out)."""
    out: dict[str, int] = {}
    for path in sorted((root / "spec").glob("*.md")):
        clause, code = None, False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                code = not code
                continue
            m = HEADING.match(line)
            if m and not code:
                clause = m.group(1)
                continue
            n = len(KEYWORDS.findall(line))
            if n and clause and clause != "0.1" and not code:
                out[clause] = out.get(clause, 0) + n
    return out


def spec_clauses() -> set[str]:
    found = set()
    for path in (ROOT / "spec").glob("*.md"):
        found |= {m.group(1) for m in map(HEADING.match, path.read_text(encoding="utf-8").splitlines()) if m}
    return found


def table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{README} has no clause table between {BEGIN} and {END}"
    rows = []
    for line in text[text.index(BEGIN) + len(BEGIN):text.index(END)].splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] != "clause":
            assert len(cells) == 4, f"a row of the clause table has {len(cells)} cells, not 4: {line}"
            rows.append(cells)
    return rows


def _checks(cell: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", cell)


def test_every_must_and_should_of_the_spec_has_its_rows():
    """As many rows as the clause has key words (one requirement a row), none left out."""
    rows = table_rows()
    counts: dict[str, int] = {}
    for clause, *_ in rows:
        counts[clause] = counts.get(clause, 0) + 1
    short = {c: (n, counts.get(c, 0)) for c, n in spec_requirements().items() if counts.get(c, 0) < n}
    assert not short, ("clauses with fewer rows in the clause table than MUST/SHOULD key words in the spec "
                       f"(clause: (key words, rows)): {short}")


def test_every_row_names_existing_checks_or_a_reason():
    names = {c.name for c in CHECKS}
    clauses = spec_clauses()
    for clause, requirement, checks, note in table_rows():
        assert clause in clauses, f"clause {clause} of the table is no clause of spec/"
        assert KEYWORDS.search(requirement) or "must" in requirement, f"{clause}: {requirement!r} quotes no requirement"
        named = _checks(checks)
        unknown = sorted(set(named) - names)
        assert not unknown, f"{clause}: the table names checks the kit does not have: {unknown}"
        if not named:
            assert checks == "none" and len(note) >= 40, (
                f"{clause} ({requirement}): no check and no reason why none can reach it: {note!r}")


def test_every_check_of_the_kit_is_placed_in_the_section():
    """Each check is in a row, or named with the definitions it checks below the table."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Clause-to-check table")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    missing = sorted(c.name for c in CHECKS if f"`{c.name}`" not in section)
    assert not missing, f"checks the clause-to-check section does not place: {missing}"


def test_cited_vectors_rule_codes_and_tests_exist():
    files = json.loads((ROOT / "spec" / "vectors" / "files.json").read_text())
    present = {t["file"] for g in files["testGroups"] for t in g["tests"]}
    codes = set(re.findall(r"\| (E4\.6\.\d+\.\d+) \|", (ROOT / "spec" / "4-adapter-file.md").read_text()))
    for clause, _, _, note in table_rows():
        for name in re.findall(r"\b((?:valid|invalid)-\d+)\b", note):
            assert f"{name}.safetensors" in present, f"{clause}: the table cites {name}, not in files.json"
        for code in re.findall(r"\bE4\.6\.\d+\.\d+\b", note):
            assert code in codes, f"{clause}: the table cites rule {code}, not in spec 4.6"
        for vec in re.findall(r"\b([a-z0-9_]+\.json)\b", note):
            assert (ROOT / "spec" / "vectors" / vec).exists(), f"{clause}: the table cites {vec}"
        for test in re.findall(r"\b(tests/[\w/]+\.py)\b", note):
            assert (ROOT / test).exists(), f"{clause}: the table cites {test}, which does not exist"


@pytest.mark.parametrize("text, want", [
    ("# 4. The adapter file\n## 4.1 Container\nA reader MUST check. Files SHOULD end.\n"
     "```\nMUST in code\n```\n### 4.1.1 Dialect\nIt MUST NOT guess.\n", {"4.1": 2, "4.1.1": 1}),
])
def test_the_requirement_scanner(text, want, tmp_path):
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "9-x.md").write_text(text)
    assert spec_requirements(tmp_path) == want
