"""Planted bugs stay caught (issue 24; README "How many planted bugs the kit catches").

The full tally (every bug of tools/planted through the whole kit) is ``tools/planted_tally.py``, a
script of minutes. Here, in seconds: every planted module still plants (its edits match the shipped
code exactly once, so no bug silently stops being a bug), and a handful of bugs, one per area, is
caught by the check meant for it on a few examples, while the same check passes the unmodified
baseline built the same way (so the catch is the bug's, not the kit's or the copy's)."""
import sys

import pytest

from conftest import ROOT
from vera_conformance.checks import CHECKS
from vera_conformance.runner import run

PLANTED = ROOT / "tools" / "planted"
sys.path.insert(0, str(PLANTED))

from _plant import StalePlant, apply, load_bug  # noqa: E402

MODULES = sorted(PLANTED.glob("p[0-9]*.py")) + sorted(PLANTED.glob("b_*.py"))
NAMES = {c.name for c in CHECKS}
EXAMPLES = 3

# (bug, check, dtype or None): one bug per area, the check meant for it. vera_torch bugs are left
# to the tally: a copy of vera_torch registers its torch projections in vera_ref's generator registry.
FAST = [
    ("p01_alpha_over_r", "forward", "float32"),
    ("p06_dropout_in_eval_mode", "eval_dropout", "float32"),
    ("p07_grad_lambda_d_without_lambda_b", "backward", "float64"),
    ("p10_unmerge_stale_lambda_d", "unmerge", "float32"),
    ("p16_key_words_swapped", "projection", None),
    ("p21_own_seed_ignored", "own_determinism", None),
    ("p24_checksum_of_b_skipped", "files_invalid", None),
    ("p34_json_not_canonical", "writer_bytes", None),
    ("p38_provenance_dropped", "writer_fields", None),
]


def _run(impl, check, dtype):
    return [r for r in run(impl, "x:y", ["cpu"], [dtype or "float32"], EXAMPLES, only=[check], echo=lambda s: None)
            if r.check == check]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_every_planted_module_still_plants(path):
    mod = load_bug(path)
    assert (mod.__doc__ or "").strip(), "a planted bug says what it gets wrong"
    assert mod.EXPECT in ("caught", "pass") and mod.CLAUSE and mod.AREA
    assert getattr(mod, "BASE", "b_reference") in {p.stem for p in MODULES}
    impl = mod.make()  # StalePlant if an edit no longer matches the shipped code exactly once
    assert impl.capabilities


def test_a_stale_edit_is_refused():
    with pytest.raises(StalePlant, match="occurs 0 times"):
        apply("y = a + b\n", "y = a - b", "y = a * b", "x.py")
    with pytest.raises(StalePlant, match="occurs 2 times"):
        apply("a\na\n", "a", "b", "x.py")


@pytest.mark.parametrize("bug, check, dtype", FAST, ids=[b for b, _, _ in FAST])
def test_planted_bug_is_caught_by_its_check(bug, check, dtype):
    if check not in NAMES:
        pytest.fail(f"the kit has no check {check!r} any more")
    mod = load_bug(PLANTED / f"{bug}.py")
    base = load_bug(PLANTED / f"{getattr(mod, 'BASE', 'b_reference')}.py")
    got = _run(base.make(), check, dtype)
    assert got and all(r.status == "passed" for r in got), [(r.id, r.status, r.reason) for r in got]
    got = _run(mod.make(), check, dtype)
    assert any(r.status == "failed" for r in got), [(r.id, r.status, r.reason) for r in got]


def test_conforming_control_passes_training():
    """(1, n) trainable vectors are r + out values: the kit must not flag them (issue 24)."""
    got = _run(load_bug(PLANTED / "p44_row_vector_shapes_control.py").make(), "train", "float32")
    assert got and all(r.status == "passed" for r in got), [(r.id, r.reason) for r in got]
