"""Planted bugs stay caught (issue 24; README "How many planted bugs the kit catches").

The full tally (every bug of tools/planted through the whole kit) is ``tools/planted_tally.py``, a
script of minutes. Here, in seconds: every planted module still plants (its edits match the shipped
code exactly once, so no bug silently stops being a bug), and a handful of bugs, one per area, is
caught by the check meant for it on a few examples, while the same check passes the unmodified
baseline built the same way (so the catch is the bug's, not the kit's or the copy's)."""
import importlib.util
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

# (bug, check, dtype or None): bugs of every area, each with the check meant for it. vera_torch bugs are left
# to the tally: a copy of vera_torch registers its torch projections in vera_ref's generator registry.
FAST = [
    ("p01_alpha_over_r", "forward", "float32"),
    ("p06_dropout_in_eval_mode", "eval_dropout", "float32"),
    ("p07_grad_lambda_d_without_lambda_b", "backward", "float64"),
    ("p10_unmerge_stale_lambda_d", "unmerge", "float32"),
    ("p11_lowprec_tile_accumulation", "numerics", "bfloat16"),
    ("p12_lowprec_batch_reduction", "numerics", "bfloat16"),
    ("p13_k_tile_past_4096", "numerics", "float32"),
    ("p16_key_words_swapped", "projection", None),
    ("p20_projection_cache_by_seed", "stateless", "float32"),
    ("p21_own_seed_ignored", "own_determinism", None),
    ("p24_checksum_of_b_skipped", "files_invalid", None),
    ("p26_modules_before_sharing", "files_invalid", None),
    ("p34_json_not_canonical", "writer_bytes", None),
    ("p38_provenance_dropped", "writer_fields", None),
    ("p57_lambda_d_frozen", "train", "float32"),
]



@pytest.fixture(autouse=True)
def _generator_registry_restored():
    """A planted copy of vera_torch registers its torch projections in vera_ref's generator registry when it
    is imported: the real backends' registrations are put back after each test, so the tests that run later
    in this process (tests/torch) see vera_torch's own functions."""
    from vera_ref import generators
    try:
        import vera_torch  # noqa: F401  (registered before the snapshot, whatever ran first)
    except ImportError:
        pass
    saved = {n: dict(generators.get(n).devices) for n in generators.names()}
    yield
    for n, devices in saved.items():
        generators.get(n).devices.clear()
        generators.get(n).devices.update(devices)

def _tally():
    """tools/planted_tally.py as a module, without putting tools/ on sys.path."""
    spec = importlib.util.spec_from_file_location("planted_tally", ROOT / "tools" / "planted_tally.py")
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


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


def test_tally_counts_only_failures_the_baseline_does_not_have():
    """The figure's arithmetic: baselines and controls are not planted bugs; a bug's failing ids that
    also fail on its baseline catch nothing (run_one removes them before classifying)."""
    T = _tally()
    rows = [T.Tally("b_reference", "-", "baseline", "pass", "fails", caught_by=["writer_bytes_cpu"]),
            T.Tally("p01", "3.2", "math", "caught", "caught", caught_by=["forward[float32]_cpu", "merge[float16]_cpu"]),
            T.Tally("p02", "3.3", "math", "caught", "escaped", also_on_base=["writer_bytes_cpu"]),
            T.Tally("p03", "4.3", "writer", "caught", "timeout"),
            T.Tally("p44", "3.4", "control", "pass", "passed")]
    assert T.totals(rows) == {"caught": 1, "escaped": 1, "timeout": 1, "error": 0, "planted": 3, "controls": 1,
                              "controls_passed": 1, "false_alarms": 0}
    assert T.checks_of(rows[1].caught_by) == ["forward", "merge"]
    table = T.area_table(rows)
    assert "| math | 2 | 1 | forward | 1 | 0 |" in table and "| writer | 1 | 0 |  | 0 | p03 timeout |" in table
    assert "(fails only writer_bytes, which fail on b_reference too)" in T.table(rows)


def test_tally_classifies_a_kit_run(monkeypatch):
    """run_one on a stand-in for the kit's output: baseline failures removed, the first other
    failure catches (and ends the run), a silent exit 2 is an error, a run past its time a timeout."""
    T = _tally()
    bug = PLANTED / "p01_alpha_over_r.py"

    def kit(*lines, code=0, sleep=0):
        script = f"import sys, time; print({chr(10).join(lines)!r}, flush=True); time.sleep({sleep}); sys.exit({code})"
        monkeypatch.setattr(T, "kit_command", lambda *a: [sys.executable, "-c", script])

    kit("PASSED   forward[float32]_cpu", "FAILED   writer_bytes_cpu  x", "FAILED   merge[float32]_cpu  y", code=1)
    t = T.run_one(bug, 1, 60, [], {"writer_bytes_cpu"})
    assert (t.result, t.caught_by, t.also_on_base, t.first_reason) == ("caught", ["merge[float32]_cpu"],
                                                                         ["writer_bytes_cpu"], "y")
    t = T.run_one(bug, 1, 60, [], {"writer_bytes_cpu", "merge[float32]_cpu"})
    assert (t.result, t.checks_run) == ("escaped", 3)
    kit("vera-conformance: --impl x: the factory raised StalePlant: ...", code=2)
    assert T.run_one(bug, 1, 60, [], set()).result == "error"
    kit("PASSED   forward[float32]_cpu", sleep=30)
    assert T.run_one(bug, 1, 1, [], set()).result == "timeout"
