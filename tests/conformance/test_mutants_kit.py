"""Fast kill-tests of the kit's checks (issue 15): every check of
``vera_conformance.checks`` is run directly on small, replayable cases, with the NumPy
reference as the good implementation and small deliberately wrong ones as the bad ones,
and its Outcome (status, reason, examples, worst ratio, case, tolerance) is compared
exactly. Each test takes well under a second, so a mutation campaign of checks.py runs
in minutes (tools/mutate.py --tests tests/conformance/test_mutants_kit.py)."""
import dataclasses
import json
import math
import re

import numpy as np
import pytest
from hypothesis import strategies as st

import vera_ref
from vera_conformance import check_base
from vera_conformance import checks as K
from vera_conformance import strategies as S
from vera_conformance.impls import broken as Bk
from vera_conformance.impls.reference import Reference
from vera_conformance.protocol import LoadedAdapter, Trained
from vera_ref.resources import vectors_dir

VEC = vectors_dir()
EPS = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}  # spec 5.2: unit roundoff
BY_NAME = {c.name: c for c in K.CHECKS}


def nowhere(reason: str) -> str:
    """A failure's reason without the frame a crash names (' (at file:line in f; wrapper ...)')."""
    return re.sub(r" \(at [^()]*\)$", "", reason)


def run(name, impl, dtype="float32", mx=2, case=None):
    return BY_NAME[name].run(impl, "cpu", dtype, mx, case)


def spec(r=3, i=5, o=4, n=2, *, seed=7, n_in_pad=1, n_out_pad=2, group=1, layout="linear", bias=True, scale=1.0,
         values_seed=3, dropout=0.0):
    return {"seed": str(seed), "r": r, "in_features": i, "out_features": o, "n_in": i + n_in_pad,
            "n_out": o + n_out_pad, "group": group, "layout": layout, "N": n, "bias": bias, "scale": scale,
            "values_seed": values_seed, "dropout": dropout}


def env(name):
    return [t for g in json.loads((VEC / name).read_text())["testGroups"] for t in g["tests"]]


def tol(dtype):  # spec 5.2: the dtype's machine epsilon (2 u) and the accumulation format of spec 5.2.3
    return {"policy": "spec 5.2", "eps": 2 * EPS[dtype], "dtype": dtype,
            "accumulation": "binary64" if dtype == "float64" else "binary32"}


def notc(t):
    """A recorded tolerance without its C, which is derived per case (spec 5.2.3) and must be there."""
    assert isinstance(t["C"], float) and t["C"] > 1, t
    return {k: v for k, v in t.items() if k != "C"}


# --- the _property driver ------------------------------------------------------------------------

def test_property_counts_examples_to_the_first_failure_and_not_the_shrinking():
    calls = []

    def body(x):
        calls.append(x[0])
        if x[0] >= 1000:
            raise K.Mismatch(f"too big: {x[0]}", 3.5)
        return 0.25
    out = K._property(st.tuples(st.integers(0, 10**6)), body, 50, explicit=[(1,), (2,)])
    first = next(n for n, x in enumerate(calls) if x >= 1000)
    assert (out.status, out.reason, out.worst_ratio, out.case) == ("failed", "too big: 1000", 3.5, {"args": [1000]})
    assert out.examples == first + 1 and len(calls) > first + 1  # shrinking ran, not counted


def test_property_passes_with_every_example_counted_and_the_worst_ratio():
    seen = []

    def body(x):
        seen.append(x)
        return {1: 0.5, 2: 0.125}.get(x, 0.0625)
    out = K._property(st.integers(10, 10**9), body, 7, explicit=[2, 1])
    assert (out.status, out.reason, out.examples, out.worst_ratio) == ("passed", "", 9, 0.5)
    assert seen[:2] == [2, 1] and len(seen) == 9
    again = []
    K._property(st.integers(10, 10**9), lambda x: again.append(x), 7, explicit=[2, 1])
    assert again == seen  # derandomized: the same examples every run
    out = K._property(st.integers(10, 10**9), lambda x: None, 3, explicit=[5])
    assert (out.status, out.examples, out.worst_ratio) == ("passed", 4, None)
    out = K._property(st.integers(10, 10**9), lambda x: 0.0, 3)
    assert (out.status, out.examples, out.worst_ratio) == ("passed", 3, 0.0)


def test_property_explicit_failures_and_crashes():
    def body(x):
        if x[0] == 2:
            raise K.Mismatch("explicit two", 7.0)
        if x[0] == 3:
            raise RuntimeError("x" * 400)
        return 0.5
    out = K._property(st.just((1,)), body, 5, explicit=[(1,), (2,), (3,)])
    assert (out.status, out.reason, out.examples, out.worst_ratio, out.case) == (
        "failed", "explicit two", 2, 7.0, {"args": [2]})
    out = K._property(st.just((1,)), body, 5, explicit=[(1,), (3,)])
    assert out.reason.endswith(" in body)") and f"(at {__file__}:" in out.reason  # where it was raised
    assert (out.status, nowhere(out.reason), out.examples, out.worst_ratio, out.case) == (
        "failed", "RuntimeError: " + "x" * 300, 2, None, {"args": [3]})
    # hypothesis examples that crash: the crash is the message, no ratio
    out = K._property(st.just((3,)), body, 5, explicit=[(1,)])
    assert (out.status, nowhere(out.reason), out.examples, out.worst_ratio, out.case) == (
        "failed", "RuntimeError: " + "x" * 300, 2, None, {"args": [3]})
    out = K._property(st.just((2,)), body, 5, explicit=[(1,)])
    assert (out.status, out.reason, out.examples, out.worst_ratio) == ("failed", "explicit two", 2, 7.0)


def test_property_replays_only_the_case():
    seen = []
    out = K._property(st.integers(), lambda x: seen.append(x) or 0.75, 20, case={"k": 9}, explicit=[1, 2])
    assert (out.status, out.reason, out.examples, out.worst_ratio) == ("passed", "", 1, 0.75) and seen == [{"k": 9}]

    def fail(x):
        raise K.Mismatch("no", 2.0)
    out = K._property(st.integers(), fail, 20, case={"k": 9})
    assert (out.status, out.reason, out.examples, out.worst_ratio, out.case) == ("failed", "no", 1, 2.0, {"k": 9})


def test_two_bugs_give_one_message():
    def body(x):
        if x[0] > 3:
            raise ValueError("shape not supported")
        if x[0] > 0:
            raise K.Mismatch("wrong", 2.0)
    out = K._property(st.tuples(st.integers(0, 100)), body, 30)
    assert out.status == "failed" and nowhere(out.reason) in ("wrong", "ValueError: shape not supported")


def test_jsonable_keeps_dicts_and_stringifies_big_ints():
    d = {"seed": "1"}
    assert K._jsonable(d) is d
    assert K._jsonable((2**53, 2**53 + 1, 5, "a")) == {"args": [2**53, str(2**53 + 1), 5, "a"]}


def test_crash_message_is_type_and_300_characters():
    assert K._crash(ValueError("y" * 301)) == "ValueError: " + "y" * 300
    assert K._crash(KeyError("k")) == "KeyError: 'k'"


def test_expect_shapes_ratio_and_message():
    ref = np.array([1.0, 2.0])
    with pytest.raises(K.Mismatch, match=r"^what: shape \(3,\), expected \(2,\)$") as e:
        K._expect(np.zeros(3), ref, np.ones(2), "float64", "what", 16.0)
    assert e.value.ratio == math.inf
    # within the bound: the ratio |got - ref| / (C eps S) (spec 5.2), S = 1
    r = K._expect(ref + [0.0, 8 * 2.0**-52], ref, np.ones(2), "float64", "w", 16.0)
    assert 0 < r <= 1
    with pytest.raises(K.Mismatch) as e:
        K._expect(ref + [0.0, 2.0**-30], ref, np.ones(2), "float64", "w", 16.0)
    assert e.value.ratio > 1 and str(e.value).startswith("w: ")


def test_bits_equal():
    assert K._bits_equal([1.0, np.nan], [1.0, np.nan])
    assert not K._bits_equal([1.0, np.nan], [1.0, 2.0])
    assert not K._bits_equal([1.0, 2.0], [1.0, 3.0])
    assert not K._bits_equal([1.0], [1.0, 1.0])
    assert not K._bits_equal([[1.0, 1.0]], [1.0, 1.0])


# --- declarations ---------------------------------------------------------------------------------

class _Decl:
    name = "d"


def _decl(**kw):
    d = _Decl()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_declarations_give_skip_reasons():
    assert K._philox_generator(_decl()) is None
    assert K._philox_generator(_decl(generator="own")) == \
        "d declares the generator 'own'; these are philox4x32-10 vectors"
    assert K._own_generator(_decl(generator="own")) is None
    assert K._own_generator(_decl()) == \
        "d declares the generator 'philox4x32-10', checked bit-exactly (this check is for 'own')"
    assert K._not_own(_decl()) is None and K._not_own(_decl(generator="peft-mt19937")) is None
    assert K._not_own(_decl(generator="own")) == "d declares its own generator: only its distribution is checked"
    assert K._with_dropout(_decl()) is None and K._with_dropout(_decl(dropout=True)) is None
    assert K._with_dropout(_decl(dropout=False)) == "d declares no dropout (inference only)"
    assert K._no_scale(_decl()) is None and K._no_scale(_decl(adapter_scale=None)) is None
    assert K._no_scale(_decl(adapter_scale=2.0)) == \
        "d declares adapter_scale: a scaled product is not one rounding, the probe needs none"
    assert K._unscaled(_decl()) is None and K._unscaled(_decl(generator="philox4x32-10")) is None
    assert K._unscaled(_decl(adapter_scale=2.0)) == "d declares adapter_scale: the vectors hold unscaled results"
    assert K._unscaled(_decl(generator="peft-mt19937")) == \
        "d declares the peft-mt19937 generator: the vectors use philox4x32-10 projections"
    assert K._gen_name(_decl()) == "philox4x32-10" and K._gen_name(_decl(generator="own")) == "philox4x32-10"
    assert K._gen_name(_decl(generator="peft-mt19937")) == "peft-mt19937"
    assert K._layouts(_decl()) == ("conv1d", "linear") and K._layouts(_decl(layouts={"linear"})) == ("linear",)


# spec 5.3: the levels, capabilities and per-dtype runs of the kit's checks (conformance/README.md table)
TABLE = {
    "philox_kat": ("generator", "G", False, ()), "projection_vectors": ("generator", "G", False, ()),
    "projection": ("generator", "G", False, ()), "projection_distribution": ("generator", "G", False, ()),
    "forward": ("forward", "M", True, ()), "generator_probe": ("forward", "G", True, ("float32", "float64")),
    "stateless": ("forward", "M", True, ()), "adapter_scale": ("forward", "M", False, ()),
    "backward": ("backward", "T", True, ()), "eval_dropout": ("forward", "T", True, ()),
    "eval_dropout_backward": ("backward", "T", True, ()), "merged_forward": ("merged_forward", "M", True, ()),
    "train": ("train", "T", True, ()), "merge": ("merge", "M", True, ()), "unmerge": ("unmerge", "M", True, ()),
    "math_vectors": ("forward", "M", True, ("float32", "float64")), "files_valid": ("files", "F", False, ()),
    "files_invalid": ("files", "F", False, ()), "files_roundtrip": ("files", "F", False, ()),
    "numerics": ("forward", "M", True, ()),
}


# the modules of these checks; checks_own, checks_writer and checks_quantized have tests of their own
BASE_MODULES = {"vera_conformance.checks", "vera_conformance.checks_files", "vera_conformance.checks_generator",
                "vera_conformance.checks_math", "vera_conformance.checks_numeric"}


def test_check_table():
    base = [c for c in K.CHECKS if c.run.__module__ in BASE_MODULES]
    assert [c.name for c in base] == [c.name for c in K.CHECKS][:len(base)]  # the base checks come first
    assert {c.name: (c.capability, c.level, c.per_dtype, c.dtypes) for c in base} == TABLE
    needs = {c.name: c.needs for c in base}
    assert needs["philox_kat"] is K._philox_generator and needs["projection_vectors"] is K._philox_generator
    assert needs["projection"] is K._not_own and needs["projection_distribution"] is K._own_generator
    assert needs["generator_probe"] is K._no_scale and needs["eval_dropout"] is K._with_dropout
    assert needs["math_vectors"] is K._unscaled and needs["eval_dropout_backward"] is K._with_dropout
    assert [c.name for c in base if c.needs is None] == [
        "forward", "stateless", "adapter_scale", "backward", "train", "merge", "unmerge", "merged_forward", "files_valid",
        "files_invalid", "files_roundtrip", "numerics"]


# --- level G ------------------------------------------------------------------------------------

class _PhiloxFlip(Reference):
    """philox() wrong in the last word for some vectors."""
    def __init__(self, bad=(), crash=None):
        self.bad, self.crash, self.calls = set(bad), crash, 0

    def philox(self, counters, key, device):
        out = vera_ref.philox4x32(counters, key).copy()
        self.calls += 1
        if self.calls == self.crash:
            raise RuntimeError("no kernel")
        if self.calls in self.bad:
            out[0, 3] ^= 1
        return out


def test_philox_kat():
    out = run("philox_kat", Reference())
    assert (out.status, out.reason, out.examples, out.case) == ("passed", "", 55, None)
    out = run("philox_kat", Reference(), case={"tcId": 3})
    assert (out.status, out.examples) == ("passed", 1)
    ids = [t["tcId"] for t in env("philox4x32_10.json")]
    bad = [2, 5, 9, 11, 30, 31, 55]
    out = run("philox_kat", _PhiloxFlip(bad))
    assert (out.status, out.examples, out.case) == ("failed", 55, {"tcId": ids[1]})
    assert out.reason == f"Random123 vectors tcId {[ids[i - 1] for i in bad[:5]]} differ (7 of 55)"
    out = run("philox_kat", _PhiloxFlip([1]), case={"tcId": ids[0]})
    assert (out.status, out.reason, out.examples) == ("failed", f"Random123 vectors tcId [{ids[0]}] differ (1 of 1)", 1)
    out = run("philox_kat", _PhiloxFlip(crash=4))
    assert (out.status, nowhere(out.reason), out.examples, out.case) == (
        "failed", f"tcId {ids[3]}: RuntimeError: no kernel", 55, {"tcId": ids[3]})

    class NoPhilox(Reference):
        philox = None
    out = run("philox_kat", NoPhilox())
    assert (out.status, out.reason, out.examples, out.worst_ratio, out.case) == (
        "skipped", f"{NoPhilox.name} has no philox() (optional within the generator capability)", 0, None, None)


class _ProjFlip(Reference):
    """projection() with one bit of A or B wrong on the k-th call (or a crash, or a float64 result)."""
    def __init__(self, which="A", k=1, crash=False, dtype=None, shape=False):
        self.which, self.k, self.crash, self.dtype, self.shape, self.calls = which, k, crash, dtype, shape, 0

    def projection(self, seed, r, n_in, n_out, group, device):
        A, B = vera_ref.projection(seed, r, n_in, n_out, group)
        self.calls += 1
        if self.calls == self.k:
            if self.crash:
                raise RuntimeError("out of memory")
            M = A if self.which == "A" else B
            M = M.copy()
            M.reshape(-1).view(np.uint32)[-1] ^= 1
            if self.dtype:
                M = M.astype(self.dtype)
            if self.shape:
                M = M[..., :-1] if M.shape[-1] > 1 else M[:-1]
            A, B = (M, B) if self.which == "A" else (A, M)
        return A, B


def test_projection_vectors():
    tests = env("projections.json")[:len(json.loads((VEC / "projections.json").read_text())["testGroups"][0]["tests"])]
    n = len(tests)
    out = run("projection_vectors", Reference())
    assert (out.status, out.reason, out.examples) == ("passed", "", n) and n >= 2
    for which in ("A", "B"):
        t = tests[1]
        A, B = vera_ref.projection(int(t["seed"]), t["r"], t["n_in"], t["n_out"], t["group"])
        M = (A if which == "A" else B).copy()
        M.reshape(-1).view(np.uint32)[-1] ^= 1
        digest = vera_ref.adapter.sha256_hex(M)
        out = run("projection_vectors", _ProjFlip(which, 2))
        assert (out.status, out.examples, out.case) == ("failed", n, {"tcId": t["tcId"]})
        assert out.reason == (f"projections.json tcId {t['tcId']} ({t['comment']}): sha256 of {which} is "
                              f"{digest[:16]}..., expected {t[f'sha256_{which}'][:16]}...")
    out = run("projection_vectors", _ProjFlip(crash=True, k=3))
    assert (out.status, nowhere(out.reason), out.examples, out.case) == (
        "failed", f"projections.json tcId {tests[2]['tcId']}: RuntimeError: out of memory", n, {"tcId": tests[2]["tcId"]})
    out = run("projection_vectors", _ProjFlip("B", 1), case={"tcId": tests[1]["tcId"]})
    assert (out.status, out.examples) == ("failed", 1)
    out = run("projection_vectors", Reference(), case={"tcId": tests[1]["tcId"]})
    assert (out.status, out.examples) == ("passed", 1)
    out = run("projection_vectors", Bk.PeftGeneratorClaimedAsPhilox())
    assert out.status == "failed"


def test_projection_equal_messages():
    with pytest.raises(K.Mismatch, match=r"^pre: A: float64 \(3, 6\), expected float32 \(3, 6\)$"):
        K._projection_equal(_ProjFlip("A", dtype=np.float64), 7, 3, 6, 5, 1, "cpu", "pre: ")
    with pytest.raises(K.Mismatch, match=r"^B: float32 \(5, 2\), expected float32 \(5, 3\)$"):
        K._projection_equal(_ProjFlip("B", shape=True), 7, 3, 6, 5, 1, "cpu")
    A, B = vera_ref.projection(7, 3, 6, 5, 1)
    with pytest.raises(K.Mismatch) as e:
        K._projection_equal(_ProjFlip("B"), 7, 3, 6, 5, 1, "cpu")
    got = B.copy()
    got.reshape(-1).view(np.uint32)[-1] ^= 1
    assert str(e.value) == (f"B of (seed 7, r 3, n_in 6, n_out 5, group 1): 1 of 15 elements differ in bits; "
                            f"first at (4, 2): {float(got[4, 2])!r} vs {float(B[4, 2])!r}")
    with pytest.raises(K.Mismatch, match=r"^A of \(seed 7, r 3, n_in 6, n_out 5, group 1\): 1 of 18 elements"):
        K._projection_equal(_ProjFlip("A"), 7, 3, 6, 5, 1, "cpu")
    K._projection_equal(Reference(), 7, 3, 6, 5, 1, "cpu")
    K._projection_equal(Bk.PeftGenerator(), 7, 3, 6, 5, 0, "cpu")
    with pytest.raises(K.Mismatch):
        K._projection_equal(Bk.PeftGeneratorClaimedAsPhilox(), 7, 3, 6, 5, 0, "cpu")


class _GroupsSeen(Bk.PeftGenerator):
    def __init__(self):
        self.groups = []

    def projection(self, seed, r, n_in, n_out, group, device):
        self.groups.append(group)
        return super().projection(seed, r, n_in, n_out, group, device)


def test_projection():
    out = run("projection", Reference(), mx=3)
    assert (out.status, out.examples) == ("passed", 3)
    out = run("projection", Reference(), case={"args": [str(2**64 - 1), "3", 6, 5, 2]})
    assert (out.status, out.examples) == ("passed", 1)
    out = run("projection", _ProjFlip("A", 1), case={"args": [str(2**64 - 1), 3, 6, 5, 2]})
    assert out.status == "failed" and out.reason.startswith(
        f"A of (seed {2**64 - 1}, r 3, n_in 6, n_out 5, group 2): 1 of 18 elements differ in bits")
    out = run("projection", Bk.TransposedA(), mx=5)
    assert out.status == "failed" and out.case["args"][1] >= 2 and len(out.case["args"]) == 5
    p = _GroupsSeen()
    out = run("projection", p, mx=6)
    assert out.status == "passed" and p.groups and set(p.groups) == {0}  # spec 2.5.3: no groups
    assert run("projection", Bk.PeftGeneratorClaimedAsPhilox(), mx=3).status == "failed"


class _Shapes(Bk.OwnGeneratorUniform):
    def __init__(self, dtype=None, scale=1.0, shape=False):
        self.seen, self.dtype, self.scale, self.shape = [], dtype, scale, shape

    def projection(self, seed, r, n_in, n_out, group, device):
        self.seen.append((r, n_in, n_out, group))
        A, B = super().projection(seed, r, n_in, n_out, group, device)
        if self.dtype:
            B = B.astype(self.dtype)
        if self.shape:
            B = B.T
        return A * np.float32(self.scale), B


def test_projection_distribution():
    p = _Shapes()
    out = run("projection_distribution", p, mx=40)
    assert (out.status, out.examples) == ("passed", 4)
    assert {s[0] for s in p.seen} <= {16, 32, 64, 256} and {s[1] for s in p.seen} | {s[2] for s in p.seen} <= {
        64, 128, 768} and {s[3] for s in p.seen} == {0}
    assert (run("projection_distribution", _Shapes(), mx=5).examples, run("projection_distribution", _Shapes(),
                                                                           mx=39).examples) == (3, 3)
    out = run("projection_distribution", _Shapes(), case={"args": ["5", 16, 64, 128]})
    assert (out.status, out.examples) == ("passed", 1)
    out = run("projection_distribution", _Shapes(dtype=np.float64), case={"args": [5, 16, 64, 128]})
    assert out.reason == "B: float64 (128, 16), expected float32 (128, 16)"
    out = run("projection_distribution", _Shapes(shape=True), case={"args": [5, 16, 64, 128]})
    assert out.reason == "B: float32 (16, 128), expected float32 (128, 16)"
    out = run("projection_distribution", _Shapes(scale=1.01), case={"args": [5, 16, 64, 128]})
    assert out.status == "failed" and out.reason.startswith("A: max |value| ") and out.reason.endswith(
        f"exceeds sqrt(6/64) = {float(vera_ref.kaiming_bound(64))!r}")
    # shrunk into the bounds: not uniform; D is the Kolmogorov-Smirnov statistic (scipy), p = 2 exp(-2 n D^2)
    scipy_stats = pytest.importorskip("scipy.stats")
    out = run("projection_distribution", _Shapes(scale=0.7), case={"args": [5, 16, 64, 128]})
    A = Bk.OwnGeneratorUniform().projection(5, 16, 64, 128, 0, "cpu")[0] * np.float32(0.7)
    bnd = float(vera_ref.kaiming_bound(64))
    d = scipy_stats.kstest(A.reshape(-1).astype(np.float64), "uniform", args=(-bnd, 2 * bnd)).statistic
    m = re.fullmatch(r"A: not uniform on \(-sqrt\(6/64\), sqrt\(6/64\)\): Kolmogorov-Smirnov D = ([\d.]+) on 1024 "
                     r"values \(p ~ ([\d.e+-]+)\); sample std ([\d.]+) against the spec's sqrt\(2/64\) = ([\d.]+); "
                     r"mean (\S+), max \|value\| / bound ([\d.]+)", out.reason)
    assert m, out.reason
    # uniform on (-b, b) has std b / sqrt(3) = sqrt(2 / fan) (spec 1.6); the sample's std, from NumPy
    assert float(m[3]) == pytest.approx(float(np.std(A, dtype=np.float64)), rel=1e-4)
    assert float(m[4]) == pytest.approx(math.sqrt(2 / 64), rel=1e-4)
    m = [None, m[1], m[2], m[5], m[6]]
    assert float(m[1]) == pytest.approx(d, abs=6e-5)
    assert float(m[2]) == pytest.approx(2 * math.exp(-2 * 1024 * d * d), rel=0.06, abs=0)
    assert float(m[3]) == pytest.approx(float(np.mean(A)), rel=1e-3)
    assert float(m[4]) == pytest.approx(float(np.max(np.abs(A))) / bnd, abs=1e-4)
    # a sample just uniform enough passes: the threshold is p >= 1e-6, not stricter
    out = run("projection_distribution", _Shapes(scale=0.985), case={"args": [5, 16, 64, 128]})
    assert out.status == "passed" and "sample std" in out.note and "against the spec's sqrt(2/64)" in out.note
    assert run("projection_distribution", Bk.OwnGeneratorNormal(), mx=3).status == "failed"


# --- levels M and T --------------------------------------------------------------------------------

SPECS = [spec(), spec(2, 3, 6, 3, layout="conv1d", group=0, seed=2**64 - 1, bias=False, values_seed=11),
         spec(1, 7, 2, 1, n_in_pad=0, n_out_pad=0, values_seed=5, scale=30.0)]


class _Tf32Everywhere(Bk.TF32Matmuls):
    dtypes = frozenset({"float64"})

    def forward(self, c):
        return super().forward(dataclasses.replace(c, dtype="float32"))


class _Off(Reference):
    """Reference with the adapter term off by a factor in one place."""
    def __init__(self, where, factor=1.5):
        self.where, self.factor = where, factor

    def _twin(self, c):
        return not np.any(c.W) and c.bias is None

    def forward(self, c):
        y = super().forward(c)
        if self.where == "twin" and self._twin(c) or self.where == "full" and not self._twin(c):
            return y * self.factor
        if self.where == "bias" and c.bias is not None:
            return y - c.bias
        return y


def test_forward_reference_passes_replays_and_records_tolerance():
    for dtype in ("float32", "float64", "bfloat16"):
        for s in SPECS:
            out = run("forward", Reference(), dtype, case=s)
            assert (out.status, out.examples, notc(out.tolerance)) == ("passed", 1, tol(dtype))
            assert 0 <= out.worst_ratio <= 1 and (out.worst_ratio == 0) == (dtype == "float64")
    out = run("forward", Reference(), "float32", mx=3)
    assert (out.status, out.examples) == ("passed", len(S.EXPLICIT) + 3) and 0 < out.worst_ratio <= 1


def test_forward_worst_ratio_is_the_larger_of_both_comparisons():
    for where in ("twin", "full"):
        out = run("forward", _Off(where, 1 + 2.0**-50), "float64", case=SPECS[0])
        assert out.status == "passed" and 0 < out.worst_ratio <= 1, where


def test_forward_failures():
    out = run("forward", _Off("twin"), "float32", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("adapter term (W0 = 0, no bias): ") and 1 < \
        out.worst_ratio < math.inf and notc(out.tolerance) == tol("float32") and out.case == SPECS[0] and out.examples == 1
    assert "TF32" not in out.reason
    out = run("forward", _Off("full"), "float32", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("y: ") and 1 < out.worst_ratio < math.inf
    out = run("forward", _Off("bias"), "float64", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("y: ")
    out = run("forward", Bk.ShiftedAInHalf(), "bfloat16", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("adapter term (W0 = 0, no bias)")
    note = ("; the forward rounds float32 matmul inputs to 11 bits (W0 = I gives x in TF32): float32 computed "
            "with TF32, a named non-conformance (spec 5.2.2): declare precision tf32 or turn TF32 off")
    out = run("forward", Bk.TF32Matmuls(), "float32", case=spec(3, 40, 30, 6, values_seed=9))
    assert out.status == "failed" and out.reason.endswith(note)
    out = run("forward", _Tf32Everywhere(), "float64", case=spec(3, 40, 30, 6, values_seed=9))
    assert out.status == "failed" and "TF32" not in out.reason
    for s in SPECS:
        assert run("forward", Bk.DeclaredTF32(), "tf32", case=s).status == "passed"
    out = run("forward", Bk.AlphaOverR(), "float32", mx=2)
    assert out.status == "failed" and out.examples == 1 and out.case == S.EXPLICIT[0]


def test_tf32_probe_directly():
    c = S.build_case(spec(3, 40, 30, 6, values_seed=9), "float32", "cpu")
    note = K.tf32_probe(Bk.TF32Matmuls(), c)
    assert note.startswith("; the forward rounds float32 matmul inputs to 11 bits")
    assert K.tf32_probe(Reference(), c) == "" and K.tf32_probe(Bk.AlphaOverR(), c) == ""
    for small in (spec(1, 2, 3, 1), spec(2, 3, 2, 1, group=0)):  # the probe needs n_in, n_out >= 8
        assert K.tf32_probe(Bk.TF32Matmuls(), S.build_case(small, "float32", "cpu")).startswith("; the forward")

    class Raises(Bk.TF32Matmuls):
        def forward(self, c):
            raise RuntimeError("no")
    assert K.tf32_probe(Raises(), c) == ""

    class Peft(Bk.PeftGenerator, Bk.TF32Matmuls):
        pass
    seen = []

    class PeftRec(Peft):
        def forward(self, p):
            seen.append((p.A.copy(), p.B.copy()))
            return super().forward(p)
    assert K.tf32_probe(PeftRec(), c).startswith("; the forward")
    A, B = vera_ref.peft_projection(c.seed, c.r, 40 + 1, 30 + 2)
    assert np.array_equal(seen[0][0], A) and np.array_equal(seen[0][1], B)


class _NoDropoutSeen(Reference):
    dropout = False

    def __init__(self):
        self.masks = 0

    def forward(self, c):
        self.masks += c.dropout_mask is not None or c.dropout > 0
        return super().forward(c)


def test_layer_checks_draw_no_dropout_for_an_inference_only_impl():
    p = _NoDropoutSeen()
    for name in ("forward", "backward", "train"):
        assert run(name, p, "float64", mx=6).status == "passed"
    assert p.masks == 0
    assert run("eval_dropout", p, "float64", mx=6).status == "passed"


def test_eval_dropout():
    out = run("eval_dropout", Reference(), "float32", mx=30)
    assert (out.status, out.examples, notc(out.tolerance)) == ("passed", len(S.EXPLICIT) + 6, tol("float32"))
    assert run("eval_dropout", Reference(), "float32", mx=3).examples == len(S.EXPLICIT) + 5
    out = run("eval_dropout", Bk.DropoutInEval(), "float64", case=dict(SPECS[0], dropout=0.5))
    assert out.status == "failed" and out.reason.startswith(
        "y in evaluation mode with dropout p = 0.5 (must equal the forward without dropout): ")
    out = run("eval_dropout", Bk.DropoutInEval(), "float64", mx=3)  # the repro JSON carries the p it ran at
    assert out.status == "failed" and out.case["dropout"] == 0.5 and "p = 0.5 " in out.reason
    with pytest.raises(ValueError, match="dropout must be the p > 0 the case ran at"):
        run("eval_dropout", Bk.DropoutInEval(), "float64", case=SPECS[0])  # p = 0: not a case of this check
    out = run("eval_dropout", Bk.DropoutInEval(), "float64", case=dict(SPECS[0], dropout=0.25))
    assert out.reason.startswith("y in evaluation mode with dropout p = 0.25 ")


class _Grad(Reference):
    """backward() wrong in one output (k), or only in dx of the adapter twin (k = 3)."""
    def __init__(self, k):
        self.k = k

    def backward(self, c):
        g = list(super().backward(c))
        if self.k < 3:
            g[self.k] = g[self.k] * 1.5
        elif not np.any(c.W):
            g[0] = g[0] * 1.5
        return tuple(g)


def test_backward():
    for dtype in ("float64", "float32"):
        out = run("backward", Reference(), dtype, case=SPECS[1])
        assert (out.status, out.examples, notc(out.tolerance)) == ("passed", 1, tol(dtype))
    for k, what in enumerate(("dx: ", "d_lambda_d: ", "d_lambda_b: ", "adapter part of dx (W0 = 0): ")):
        out = run("backward", _Grad(k), "float64", case=SPECS[0])
        assert out.status == "failed" and out.reason.startswith(what), (k, out.reason)
    out = run("backward", _Off("twin", 1 + 2.0**-50), "float64", case=SPECS[0])
    assert out.status == "passed"
    assert run("backward", Reference(), "float64", mx=2).examples == len(S.EXPLICIT) + 2


class _Scaled(Reference):
    """Declares alpha/r (8/r) and applies it everywhere: the math checks fold it in (spec 3.2)."""
    adapter_scale = staticmethod(lambda r: 8 / r)

    def __init__(self, apply=True):
        self.apply = apply

    def _s(self, c):
        return dataclasses.replace(c, lambda_b=c.lambda_b * (8 / c.r if self.apply else 1.0))

    def forward(self, c):
        return super().forward(self._s(c))

    def backward(self, c):
        dx, dld, dlb = super().backward(self._s(c))
        return dx, dld, dlb * (8 / c.r if self.apply else 1.0)

    def merge(self, c):
        return super().merge(self._s(c))

    def unmerge(self, c, W):
        return super().unmerge(self._s(c), W)

    def train_steps(self, c, lr, steps):
        A, B = self._proj(c)
        s = 8 / c.r if self.apply else 1.0
        ld, lb = c.lambda_d.copy(), c.lambda_b.copy()
        for _ in range(steps):
            g = vera_ref.backward(c.x, c.W, A, B, ld, lb * s, c.dy, layout=c.layout, dropout_mask=c.dropout_mask,
                                  dropout=c.dropout)
            ld, lb = ld - lr * g.lambda_d, lb - lr * s * g.lambda_b
        return Trained(ld, lb, {"lambda_d": ld, "lambda_b": lb}, c.W, A[:, :c.in_features], B[:c.out_features],
                       c.bias)


@pytest.mark.parametrize("name", ["forward", "backward", "merge", "unmerge", "train", "eval_dropout", "stateless",
                                  "merged_forward", "eval_dropout_backward"])
def test_a_declared_scale_is_folded_in(name):
    case = (None if name == "stateless" else dict(SPECS[0], dropout=0.5) if name.startswith("eval_dropout")
            else SPECS[0])
    assert run(name, _Scaled(), "float64", mx=2, case=case).status == "passed"
    assert run(name, _Scaled(apply=False), "float64", mx=2, case=case).status == "failed"


def test_adapter_scale():
    out = run("adapter_scale", Reference())  # nothing declared, nothing called: never a pass
    assert (out.status, out.reason, out.examples) == (
        "skipped", f"{Reference().name} declares no adapter_scale: the forward check compares the adapter term "
                   "without one", 0)
    out = run("adapter_scale", _Scaled())
    assert (out.status, out.examples) == ("failed", 1)
    assert out.reason == ("declared deviation: adapter_scale (LoRA-style alpha/r) multiplies the adapter term by "
                          "8 at r=1, 1 at r=8, 0.125 at r=64, 0.03125 at r=256; spec 3.2 has none (the math checks "
                          "fold it in)")


class _MergeOff(Reference):
    def __init__(self, twin_only=False, unmerge_bad=False):
        self.twin_only, self.unmerge_bad = twin_only, unmerge_bad

    def merge(self, c):
        W = super().merge(c)
        return W * 1.5 if (not np.any(c.W)) or not self.twin_only else W

    def unmerge(self, c, W):
        return W if self.unmerge_bad else super().unmerge(c, W)


def test_merge_and_unmerge():
    for dtype in ("float64", "float32", "float16"):
        for name in ("merge", "unmerge"):
            out = run(name, Reference(), dtype, case=SPECS[1])
            assert (out.status, out.examples, notc(out.tolerance)) == ("passed", 1, tol(dtype))
            assert (out.worst_ratio == 0) == (dtype == "float64") and out.worst_ratio <= 1
    out = run("merge", _MergeOff(twin_only=True), "float64", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("Delta W (W0 = 0): ")
    out = run("merge", Bk.MergeWithoutLambdaB(), "float64", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("W0 + Delta W: ")
    out = run("unmerge", _MergeOff(unmerge_bad=True), "float64", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith("W - Delta W: ")
    out = run("merge", Reference(), "float32", mx=2)
    assert (out.status, out.examples) == ("passed", len(S.EXPLICIT) + 2)
    assert run("unmerge", Reference(), "float32", mx=2).examples == len(S.EXPLICIT) + 2


class _UnmergeSeen(Reference):
    def __init__(self):
        self.W = []

    def unmerge(self, c, W):
        self.W.append(np.array(W))
        return super().unmerge(c, W)


def test_unmerge_gets_the_merged_weight_rounded_to_the_dtype():
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        p = _UnmergeSeen()
        s = SPECS[0]
        assert run("unmerge", p, dtype, case=s).status == "passed"
        c = S.build_case(s, dtype, "cpu")
        want = vera_ref.merge(c.W, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout)
        from vera_ref.dtypes import round_to
        assert p.W[0].dtype == np.float64 and np.array_equal(p.W[0], round_to(want, dtype).astype(np.float64))


class _LastRowOff(Reference):
    """The layer's own copy of A has its last row (k = r - 1) off by one ulp."""
    def _proj(self, c):
        A, B = super()._proj(c)
        A = A.copy()
        A[-1].view(np.uint32)[:] ^= 1
        return A, B


def test_generator_probe():
    for dtype in ("float32", "float64"):
        out = run("generator_probe", Reference(), dtype, mx=5)
        assert (out.status, out.examples) == ("passed", len(S.EXPLICIT) + 5)
    assert run("generator_probe", Reference(), "float32", mx=30).examples == len(S.EXPLICIT) + 6
    assert run("generator_probe", Bk.PeftGenerator(), "float32", mx=5).status == "passed"
    out = run("generator_probe", Bk.BoundInFloat32(), "float32", case=spec(3, 41, 5, 1, n_in_pad=0))
    assert out.status == "failed" and out.reason.startswith(
        "bit-exact probe (x = one-hot rows, W0 = 0, lambda_d = e_0, lambda_b = 1): ") and re.search(
        r"\): \d+ of 205 outputs are not the rounded product A\[0, i\] \* B\[o, 0\]; first y\[0, 0\] = ", out.reason)
    assert out.reason.endswith("the projection inside the forward differs from the spec's (bounds, slices, tiling?)")
    out = run("generator_probe", _LastRowOff(), "float64", case=spec(4, 5, 3, 1, values_seed=8))
    assert out.status == "failed" and "lambda_d = e_3," in out.reason and "15 of 15 outputs" in out.reason
    out = run("generator_probe", _LastRowOff(), "float64", case=spec(4, 5, 3, 1, values_seed=9))
    assert out.status == "failed" and "lambda_d = e_3," in out.reason
    out = run("generator_probe", Bk.BoundInFloat32(), "float32", case=spec(3, 41, 5, 1, n_in_pad=0))
    c = S.build_case(spec(3, 41, 5, 1, n_in_pad=0), "float32", "cpu")
    y = Bk.BoundInFloat32().forward(dataclasses.replace(c, x=np.eye(41), W=np.zeros_like(c.W), bias=None,
                                                         lambda_d=np.eye(3)[0], lambda_b=np.ones(5)))
    want = (c.A[0, :, None].astype(np.float64) * c.B[None, :5, 0]).astype(np.float32)
    bad = np.argwhere(y != want)
    i, o = bad[0]
    assert f"{len(bad)} of 205 outputs" in out.reason
    plain = re.sub(r"np\.float64\(([^)]*)\)", r"\1", out.reason)  # NumPy 2 scalar reprs
    assert f"first y[{i}, {o}] = {float(y[i, o])!r}, expected {float(want[i, o])!r} (A[0, {i}] = " \
        f"{float(c.A[0, i])!r}, B[{o}, 0] = {float(c.B[o, 0])!r}): the projection" in plain


class _WrongShapeProbe(Reference):
    def forward(self, c):
        return super().forward(c)[:, :-1]


def test_generator_probe_shape_and_case_replay():
    out = run("generator_probe", _WrongShapeProbe(), "float64", case=spec(2, 3, 4, 1))
    assert out.reason == "probe y: shape (3, 3), expected (3, 4)"
    out = run("generator_probe", Reference(), "float64", case=spec(2, 3, 4, 1))
    assert (out.status, out.examples) == ("passed", 1)


def test_stateless():
    for dtype in ("float32", "float64"):
        out = run("stateless", Reference(), dtype, mx=5)
        assert (out.status, out.examples, notc(out.tolerance)) == ("passed", 5, tol(dtype))
        assert out.worst_ratio is not None and (out.worst_ratio == 0) == (dtype == "float64")
    assert run("stateless", Reference(), "float32", mx=30).examples == 6
    out = run("stateless", Bk.CachedProjection(), "float32", mx=5)
    assert out.status == "failed" and re.match(r"^call [12] of [23] \(after .*\): A of \(seed ", out.reason)
    assert len(out.case["sequence"]) in (2, 3)
    seq = {"sequence": [spec(3, 9, 8, 2, n_in_pad=0, n_out_pad=0), spec(3, 4, 3, 1, n_in_pad=1, n_out_pad=1)]}
    out = run("stateless", Bk.CachedProjection(), "float32", case=seq)
    assert (out.status, out.examples) == ("failed", 1) and out.reason.startswith(
        "call 2 of 2 (after a larger shape with the same seed and r): A of (seed 7, r 3, n_in 5, n_out 4, group 1): ")

    class CachedNoForward(Bk.CachedProjection):
        capabilities = frozenset({"generator"})
    out = run("stateless", CachedNoForward(), "float32", mx=5)
    assert out.status == "failed" and re.match(r"^call [12] of [23] \(after .*\): A of \(seed ", out.reason)
    out = run("stateless", CachedNoForward(), "float32", case=seq)
    assert (out.status, out.examples) == ("failed", 1) and out.reason.startswith("call 2 of 2 (after a larger")

    class OnlyForward(Bk.CachedProjection):  # a cache in projection() only: not the generator's check
        capabilities = frozenset({"forward"})

        def _proj(self, c):
            return vera_ref.projection(c.seed, c.r, c.n_in, c.n_out, c.group)
    assert run("stateless", OnlyForward(), "float32", mx=5).status == "passed"

    class StatefulForward(Reference):
        def __init__(self):
            self.n = 0

        def forward(self, c):
            self.n += 1
            return super().forward(c) * (1.5 if self.n > 1 else 1.0)
    out = run("stateless", StatefulForward(), "float64", case=seq)
    assert out.status == "failed" and out.reason.startswith(
        "call 2 of 2 (after a larger shape with the same seed and r): y: "), out.reason
    assert run("stateless", StatefulForward(), "float64", mx=5).status == "failed"
    out = run("stateless", Bk.OwnGeneratorUniform(), "float64", mx=5)
    assert out.status == "passed"

    class FirstCallWrong(Reference):
        def __init__(self):
            self.n = 0

        def forward(self, c):
            self.n += 1
            return super().forward(c) * (1.5 if self.n == 1 else 1.0)
    out = run("stateless", FirstCallWrong(), "float64", case=seq)
    assert out.reason.startswith("call 1 of 2 (after earlier checks' calls): y: ")


class _Seq(Reference):
    def __init__(self):
        self.seen = []

    def forward(self, c):
        self.seen.append((c.seed, c.r, c.group, c.n_in - c.in_features, c.n_out - c.out_features, c.in_features,
                          c.out_features))
        return super().forward(c)


def test_stateless_sequences_share_seed_r_and_group_largest_first():
    p = _Seq()
    assert run("stateless", p, "float64", mx=5).status == "passed"
    seqs = []
    # every sequence: 2-3 calls, the same seed, r and group, pads 0, 1, 3, sizes decreasing
    k = 0
    while k < len(p.seen):
        seq = [p.seen[k]]
        k += 1
        while k < len(p.seen) and p.seen[k][3] != 0:
            seq.append(p.seen[k])
            k += 1
        seqs.append(seq)
    assert len(seqs) == 5 and {s[2] for s in p.seen} == {0, 1}  # groups 0 (twice as often) and 1
    for seq in seqs:
        assert 2 <= len(seq) <= 3
        assert len({s[:3] for s in seq}) == 1
        assert [s[3] for s in seq] == [0, 1, 3][:len(seq)] and [s[4] for s in seq] == [0, 1, 3][:len(seq)]
        tot = [s[5] + s[6] for s in seq]
        assert tot == sorted(tot, reverse=True)
        assert all(1 <= s[5] <= 48 and 1 <= s[6] <= 48 for s in seq)


class _Train(Reference):
    def __init__(self, fault):
        self.fault, self.lrs = fault, []

    def train_steps(self, c, lr, steps):
        self.lrs.append((lr, steps))
        t = super().train_steps(c, lr * (2 if self.fault == "lr" else 1), steps + (self.fault == "steps"))
        f = self.fault
        if f == "ld_not_trainable":
            return dataclasses.replace(t, trainable={"lambda_d": t.lambda_d * 2, "lambda_b": t.lambda_b})
        if f == "lb_not_trainable":
            return dataclasses.replace(t, trainable={"lambda_d": t.lambda_d, "lambda_b": t.lambda_b + 1})
        if f == "bias":
            return dataclasses.replace(t, bias=None if c.bias is not None else np.zeros(c.out_features))
        if f == "bias_changed":
            return dataclasses.replace(t, bias=c.bias + 1)
        if f == "W":
            return dataclasses.replace(t, W=c.W * 2)
        if f == "A":
            return dataclasses.replace(t, A=t.A * 2)
        if f == "B":
            return dataclasses.replace(t, B=t.B * 2)
        if f == "A_full":
            return dataclasses.replace(t, A=c.A, B=c.B)
        if f == "A_short":
            return dataclasses.replace(t, A=t.A[:, :-1])
        if f == "B_short":
            return dataclasses.replace(t, B=t.B[:-1])
        if f == "A_long":
            return dataclasses.replace(t, A=np.concatenate([c.A, c.A[:, :1]], axis=1))
        if f == "A_1d":
            return dataclasses.replace(t, A=t.A[0])
        if f == "A_rounded":
            from vera_ref.dtypes import round_to
            return dataclasses.replace(t, A=round_to(t.A, c.dtype).astype(np.float64),
                                       B=round_to(t.B, c.dtype).astype(np.float64))
        if f == "ld":
            return dataclasses.replace(t, lambda_d=t.lambda_d * 1.5, trainable={"lambda_d": t.lambda_d * 1.5,
                                                                                 "lambda_b": t.lambda_b})
        if f == "lb":
            return dataclasses.replace(t, lambda_b=t.lambda_b * 1.5, trainable={"lambda_d": t.lambda_d,
                                                                                 "lambda_b": t.lambda_b * 1.5})
        return t


TRAIN_FAULTS = {
    "ld_not_trainable": "the returned lambda_d is none of the trainable parameters",
    "lb_not_trainable": "the returned lambda_b is none of the trainable parameters",
    "bias": "bias changed during training: it is frozen (spec 3.4)",
    "bias_changed": "bias changed during training: it is frozen (spec 3.4)",
    "W": "W0 changed during training: it is frozen (spec 3.4)",
    "A": "A after training ((3, 5)) is not an unchanged leading slice of the projection (3, 6): it is frozen",
    "B": "B after training ((4, 3)) is not an unchanged leading slice of the projection (6, 3): it is frozen",
    "A_short": "A after training ((3, 4)) is not",
    "B_short": "B after training ((3, 3)) is not",
    "A_long": "A after training ((3, 7)) is not",
    "A_1d": "A after training ((5,)) is not",
    "ld": "lambda_d after 3 SGD steps (lr ",
    "lb": "lambda_b after 3 SGD steps (lr ",
    "lr": "lambda_",
    "steps": "lambda_",
}


@pytest.mark.parametrize("fault", sorted(TRAIN_FAULTS))
def test_train_catches(fault):
    out = run("train", _Train(fault), "float64", case=SPECS[0])
    assert out.status == "failed" and out.reason.startswith(TRAIN_FAULTS[fault]), out.reason


def test_train_passes_and_uses_a_power_of_two_step():
    for dtype in ("float64", "float32", "bfloat16"):
        for fault in ("none", "A_full", "A_rounded"):
            for s in SPECS:
                p = _Train(fault)
                out = run("train", p, dtype, case=s)
                assert (out.status, out.examples, notc(out.tolerance)) == ("passed", 1, tol(dtype)), (dtype, fault, out.reason)
                assert (out.worst_ratio == 0) == (dtype == "float64") and out.worst_ratio <= 1
                (lr, steps), = p.lrs
                assert steps == 3 and lr <= 1 and math.log2(lr) == int(math.log2(lr))
                c = S.build_case(s, dtype, "cpu")
                g = vera_ref.backward(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b, c.dy, layout=c.layout)
                lmax = max(np.max(np.abs(c.lambda_d)), np.max(np.abs(c.lambda_b)))
                gmax = max(np.max(np.abs(g.lambda_d)), np.max(np.abs(g.lambda_b)))
                assert lr == 1 or 0.25 * lmax / gmax < lr <= 0.5 * lmax / gmax
    out = run("train", Reference(), "float32", mx=2)
    assert (out.status, out.examples) == ("passed", len(S.EXPLICIT) + 5)
    assert run("train", Reference(), "float32", mx=14).examples == len(S.EXPLICIT) + 7
    assert run("train", Bk.FullMatrixTraining(), "float32", case=SPECS[0]).reason.startswith(
        "trainable parameters {'vera_lambda_d': (3, 3), 'vera_lambda_b': (4, 4)}: VeRA trains exactly one lambda_d "
        "(3,) and one lambda_b (4,) per layer (spec 3.4)")


# --- math vectors --------------------------------------------------------------------------------

class _Caps(Reference):
    def __init__(self, caps, fault=None, dropout=True, layouts=("linear", "conv1d")):
        self.capabilities = frozenset(caps)
        self.fault, self.dropout, self.layouts, self.calls = fault, dropout, frozenset(layouts), []

    def forward(self, c):
        self.calls.append("forward")
        if self.fault == "crash":
            raise RuntimeError("kernel launch failed")
        y = super().forward(c)
        return y * 1.5 if self.fault == "forward" else y

    def backward(self, c):
        self.calls.append("backward")
        g = super().backward(c)
        return (g[0], g[1], g[2] * 1.5) if self.fault == "backward" else g

    def merge(self, c):
        self.calls.append("merge")
        W = super().merge(c)
        return W + 1 if self.fault == "merge" else W


MATH = env("math.json")


def test_math_vectors_filter_and_pass():
    for dtype in ("float32", "float64"):
        ids = [t["tcId"] for t in MATH if t["dtype"] == dtype]
        out = run("math_vectors", Reference(), dtype)
        assert (out.status, out.examples, notc(out.tolerance), out.reason) == ("passed", len(ids), tol(dtype), "")
        assert (out.worst_ratio == 0) == (dtype == "float64") and out.worst_ratio <= 1
    nodrop = [t for t in MATH if t["dtype"] == "float64" and t["dropout"] == 0]
    assert len(nodrop) < len([t for t in MATH if t["dtype"] == "float64"])
    assert run("math_vectors", _Caps({"forward"}, dropout=False), "float64").examples == len(nodrop)
    lin = [t for t in MATH if t["dtype"] == "float32" and t["layout"] == "linear"]
    assert run("math_vectors", _Caps({"forward"}, layouts=("linear",)), "float32").examples == len(lin)
    out = run("math_vectors", Reference(), "float16")
    assert (out.status, out.reason, out.examples, out.tolerance, out.note) == (
        "skipped", "math.json has no float16 cases this implementation can run", 0, None, "")
    t = MATH[0]
    out = run("math_vectors", Reference(), t["dtype"], case={"tcId": t["tcId"]})
    assert (out.status, out.examples) == ("passed", 1)
    p = _Caps({"forward", "merge"})
    assert run("math_vectors", p, "float32").status == "passed"
    assert sorted(set(p.calls)) == ["forward", "merge"]
    p = _Caps({"backward"})
    assert run("math_vectors", p, "float32").status == "passed" and set(p.calls) == {"backward"}


@pytest.mark.parametrize("fault, key", [("forward", "y"), ("backward", "dlambda_b"), ("merge", "W_merged")])
def test_math_vectors_fail(fault, key):
    t = next(t for t in MATH if t["dtype"] == "float64")
    out = run("math_vectors", _Caps({"forward", "backward", "merge"}, fault), "float64")
    assert (out.status, out.case, notc(out.tolerance), out.examples) == ("failed", {"tcId": t["tcId"]}, tol("float64"),
                                                                  len([u for u in MATH if u["dtype"] == "float64"]))
    assert out.reason.startswith(f"tcId {t['tcId']} {key}: ") and 1 < out.worst_ratio


def test_math_vectors_crash():
    t = next(t for t in MATH if t["dtype"] == "float32")
    out = run("math_vectors", _Caps({"forward"}, "crash"), "float32")
    assert (out.status, nowhere(out.reason), out.case, out.tolerance, out.worst_ratio) == (  # no comparison ran: no C
        "failed", f"tcId {t['tcId']}: RuntimeError: kernel launch failed", {"tcId": t["tcId"]},
        {**tol("float32"), "C": None}, None)


# --- level F -------------------------------------------------------------------------------------

FILES = env("files.json")
VALID = [t for t in FILES if t["result"] == "valid"]
INVALID = [t for t in FILES if t["result"] != "valid"]


class _Reader(Reference):
    def __init__(self, change, only=None):
        self.change, self.only = change, only

    def load_adapter(self, path):
        a = super().load_adapter(path)
        if self.only is not None and path.name != self.only:
            return a
        return self.change(a)


def _first(ad):
    return ad.modules[0][0]


READER_FAULTS = [
    (lambda a: dataclasses.replace(a, r=a.r + 1), "valid-01.safetensors", "r 5 (expected 4)"),
    (lambda a: dataclasses.replace(a, generator="own"), "valid-01.safetensors",
     "generator 'own' (expected 'philox4x32-10')"),
    (lambda a: dataclasses.replace(a, seed=1), "valid-01.safetensors", "seed 1 (expected 0)"),
    (lambda a: dataclasses.replace(a, sharing="per-module"), "valid-01.safetensors",
     "sharing 'per-module' (expected 'shared')"),
    (lambda a: dataclasses.replace(a, vector_dtype="float64"), "valid-01.safetensors",
     "vector_dtype 'float64' (expected 'float32')"),
    (lambda a: dataclasses.replace(a, modules=a.modules[::-1]), "valid-01.safetensors", "modules "),
    (lambda a: dataclasses.replace(a, modules=[(n, i, o, "linear") for n, i, o, _ in a.modules]),
     "valid-01.safetensors", "modules "),
    (lambda a: dataclasses.replace(a, lambda_d={**a.lambda_d, _first(a): a.lambda_d[_first(a)] * 2}),
     "valid-01.safetensors", "encoder.layer.0.attention.query.lambda_d"),
    (lambda a: dataclasses.replace(a, lambda_b={k: v for k, v in a.lambda_b.items() if k != "h.0.attn.c_attn"}),
     "valid-01.safetensors", "h.0.attn.c_attn.lambda_b"),
    (lambda a: dataclasses.replace(a, extra={}), "valid-06.safetensors",
     "extra tensors [] (expected ['classifier.bias', 'classifier.weight'])"),
    (lambda a: dataclasses.replace(a, extra={**a.extra, "classifier.bias": a.extra["classifier.bias"] + 1}),
     "valid-06.safetensors", "extra tensor classifier.bias"),
    (lambda a: dataclasses.replace(a, extra={**a.extra, "x": np.zeros(1)}), "valid-01.safetensors",
     "extra tensors ['x'] (expected [])"),
]


@pytest.mark.parametrize("change, file, problem", READER_FAULTS)
def test_files_valid_catches_every_field(change, file, problem):
    t = next(t for t in VALID if t["file"] == file)
    out = run("files_valid", _Reader(change, file))
    assert (out.status, out.examples, out.case) == ("failed", len(VALID), {"tcId": t["tcId"]})
    assert out.reason.startswith(f"files.json tcId {t['tcId']} {file} ({t['comment']}): {problem}")
    assert out.reason.endswith(" differ")


def test_files_valid_message_lists_four_problems():
    def many(a):
        return dataclasses.replace(a, r=9, generator="g", seed=2, sharing="s", vector_dtype="v")
    out = run("files_valid", _Reader(many))
    assert out.reason == (f"files.json tcId 1 valid-01.safetensors ({VALID[0]['comment']}): r 9 (expected 4); "
                          "generator 'g' (expected 'philox4x32-10'); seed 2 (expected 0); sharing 's' (expected "
                          "'shared') differ")
    a = LoadedAdapter.of(vera_ref.load_adapter(VEC / "files" / "valid-01.safetensors"))
    b = dataclasses.replace(a, modules=[("z", 1, 1, "linear")])
    assert K._adapter_diff(b, a)[0] == (f"modules [('z', 1, 1, 'linear')]... (expected {a.modules[:3]}..., "
                                        "name/in/out/layout in file order)")
    assert K._adapter_diff(a, a) == []


def test_files_valid_pass_crash_and_replay():
    out = run("files_valid", Reference())
    assert (out.status, out.reason, out.examples) == ("passed", "", len(VALID))
    out = run("files_valid", Reference(), case={"tcId": 6})
    assert (out.status, out.examples) == ("passed", 1)

    class Crash(Reference):
        def load_adapter(self, path):
            if path.name == "valid-03.safetensors":
                raise ValueError("no float16 here")
            return super().load_adapter(path)
    out = run("files_valid", Crash())
    t = VALID[2]
    assert (out.status, out.examples, out.case) == ("failed", len(VALID), {"tcId": t["tcId"]})
    assert nowhere(out.reason) == (f"files.json tcId {t['tcId']} {t['file']} ({t['comment']}): valid file "
                                   "rejected: ValueError: no float16 here")
    assert run("files_valid", Bk.IgnoresVectorDtype()).status == "failed"
    assert run("files_valid", Bk.DropsExtraTensors()).status == "failed"


class _Rejecter(Reference):
    def __init__(self, mode, target):
        self.mode, self.target = mode, target

    def load_adapter(self, path):
        try:
            return super().load_adapter(path)
        except vera_ref.AdapterFileError as exc:
            if path.name != self.target:
                raise
            if self.mode == "accept":
                return LoadedAdapter.of(vera_ref.load_adapter(VEC / "files" / "valid-01.safetensors"))
            if self.mode == "field":
                raise vera_ref.AdapterFileError("nofield", "x", code=exc.code) from None
            if self.mode == "code":
                raise vera_ref.AdapterFileError(exc.field, "x", code="E0") from None
            raise ValueError("plain") from None


def test_files_invalid():
    out = run("files_invalid", Reference())
    assert (out.status, out.reason, out.examples, out.note) == ("passed", "", len(INVALID), "")
    t = INVALID[5]
    tag = f"tcId {t['tcId']} {t['file']} ({t['comment']}; rule {t['error']['code']}, field {t['error']['field']!r})"
    for mode, msg in [("accept", f"{tag}: accepted (the reference says: {t['error']['message']})"),
                      ("field", f"{tag}: rejected with field 'nofield': AdapterFileError: "),
                      ("code", f"{tag}: rejected with code 'E0': AdapterFileError: "),
                      ("plain", f"{tag}: rejected with field None: ValueError: plain")]:
        out = run("files_invalid", _Rejecter(mode, t["file"]))
        assert (out.status, out.examples, out.case) == ("failed", len(INVALID), {"tcId": t["tcId"]}), mode
        assert out.reason.startswith(f"1 of {len(INVALID)} invalid files not rejected for their rule; first: {msg}")
    out = run("files_invalid", Bk.AnyRejection())
    assert out.status == "failed" and out.reason.startswith(f"{len(INVALID)} of {len(INVALID)} invalid files not ")
    out = run("files_invalid", Reference(), case={"tcId": t["tcId"]})
    assert (out.status, out.examples) == ("passed", 1)


def test_files_invalid_uncoded_vectors_compare_the_field_only(tmp_path, monkeypatch):
    doc = json.loads((VEC / "files.json").read_text())
    keep = INVALID[:3]
    uncoded = [dict(t, error={k: v for k, v in t["error"].items() if k != "code"}) for t in keep[:2]] + [keep[2]]
    doc["testGroups"] = [{"tests": uncoded + VALID[:1]}]
    (tmp_path / "files.json").write_text(json.dumps(doc))
    (tmp_path / "files").symlink_to(VEC / "files")
    monkeypatch.setattr(check_base, "VECTORS", tmp_path)  # read by every check module
    note = "2 of 3 invalid vectors carry no rule code yet: field compared only"
    out = run("files_invalid", Reference())
    assert (out.status, out.examples, out.note) == ("passed", 3, note)
    out = run("files_invalid", _Rejecter("code", keep[0]["file"]))
    assert (out.status, out.note) == ("passed", note)  # no code to compare
    out = run("files_invalid", _Rejecter("code", keep[2]["file"]))
    assert (out.status, out.note) == ("failed", note)
    assert run("files_valid", Reference()).examples == 1


class _Writer(Reference):
    def __init__(self, fault):
        self.fault = fault

    def save_adapter(self, adapter, path):
        if self.fault == "garbage":
            path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
            return
        if self.fault == "values":
            m = adapter.modules[-1][0]
            adapter = dataclasses.replace(adapter, lambda_b={**adapter.lambda_b, m: -adapter.lambda_b[m]})
        super().save_adapter(adapter, path)


def test_files_roundtrip():
    out = run("files_roundtrip", Reference(), mx=2)
    assert (out.status, out.reason, out.examples) == ("passed", "", 4 + 5)
    assert run("files_roundtrip", Reference(), mx=28).examples == 4 + 7
    out = run("files_roundtrip", _Writer("garbage"), mx=2)
    assert out.status == "failed" and out.reason.startswith("the reference rejects the written file: ") and \
        out.examples == 1 and out.case["r"] == 4
    out = run("files_roundtrip", _Writer("values"), mx=2)
    assert out.status == "failed" and out.reason == (
        "written and read back by the reference: model.layers.0.attn.v.lambda_b differ") and out.examples == 1
    case = {"r": 3, "generator": "philox4x32-10", "seed": str(2**53 + 1), "sharing": "per-module",
            "vector_dtype": "bfloat16", "modules": [["a.q", 4, 5, "conv1d"]], "values_seed": 7}
    for impl, status in ((Reference(), "passed"), (Bk.WriterSeedThroughFloat(), "failed"),
                         (Bk.WriterFloat32Vectors(), "failed"), (Bk.WriterAllLinear(), "failed")):
        assert run("files_roundtrip", impl, case=case).status == status, impl.name
    for impl in (Bk.WriterSeedThroughFloat(), Bk.WriterFloat32Vectors(), Bk.WriterAllLinear()):
        assert run("files_roundtrip", impl, mx=2).status == "failed", impl.name


class _WriterSeen(Reference):
    layouts = frozenset({"linear"})

    def __init__(self):
        self.seen = []

    def save_adapter(self, adapter, path):
        self.seen.append(adapter)
        super().save_adapter(adapter, path)


def test_files_roundtrip_covers_the_fields_and_values_of_their_dtype():
    from vera_ref.dtypes import round_to
    p = _WriterSeen()
    assert run("files_roundtrip", p, mx=40).status == "passed"
    first = p.seen[:4]
    assert [(a.r, a.generator, a.seed, a.sharing, a.vector_dtype) for a in first] == [
        (4, "philox4x32-10", 2**64 - 1, "shared", "float32"), (5, "philox4x32-10", 2**53 + 1, "per-module", "float16"),
        (3, "peft-mt19937", 1, "shared", "bfloat16"), (1, "philox4x32-10", 0, "shared", "float64")]
    assert [tuple(m) for m in first[0].modules] == [("model.layers.0.attn.q", 7, 5, "linear"),
                                                    ("model.layers.0.attn.v", 3, 9, "linear")]
    for a in p.seen:
        assert {m[3] for m in a.modules} == {"linear"} and 1 <= len(a.modules) <= 4 and 1 <= a.r <= 9
        assert all(1 <= m[1] <= 20 and 1 <= m[2] <= 20 for m in a.modules)
        assert a.sharing == "shared" or a.generator == "philox4x32-10"
        for m in a.modules:
            assert a.lambda_d[m[0]].shape == (a.r,) and a.lambda_b[m[0]].shape == (m[2],)
            for v in (a.lambda_d[m[0]], a.lambda_b[m[0]]):
                assert np.array_equal(v, round_to(v, a.vector_dtype).astype(np.float64)) and np.any(v != 0)
    assert {a.generator for a in p.seen} >= {"philox4x32-10", "peft-mt19937"}
    drawn = p.seen[4:]  # after the explicit cases: hypothesis draws every kind
    assert {a.vector_dtype for a in drawn} >= {"float32", "float16", "bfloat16"}
    assert {a.generator for a in drawn} == {"philox4x32-10", "peft-mt19937"}
    assert {a.sharing for a in drawn} == {"shared", "per-module"}
    assert {a.vector_dtype for a in p.seen} == {"float32", "float16", "bfloat16", "float64"}
    # values: normal draws rounded to the vector dtype, from values_seed
    a = first[1]
    rng = np.random.default_rng(1)
    want = round_to(rng.normal(size=5), "float16").astype(np.float64)
    assert np.array_equal(a.lambda_d["model.layers.0.attn.q"], want)


class _Duck:
    """A duck-typed implementation (no Implementation base class, no declarations beyond the
    required ones): the checks' defaults apply, dropout cases and both layouts included."""
    name = "duck"
    capabilities = Reference.capabilities

    def __init__(self):
        self.ref, self.masks, self.layouts_seen = Reference(), 0, set()

    def scale(self, r):
        return 1.0

    def projection(self, *a):
        return self.ref.projection(*a)

    def forward(self, c):
        self.masks += c.dropout_mask is not None
        self.layouts_seen.add(c.layout)
        return self.ref.forward(c)

    def backward(self, c):
        return self.ref.backward(c)

    def train_steps(self, c, lr, steps):
        return self.ref.train_steps(c, lr, steps)


def test_a_duck_typed_implementation_gets_the_default_declarations():
    p = _Duck()
    assert not hasattr(p, "dropout") and not hasattr(p, "layouts") and not hasattr(p, "generator")
    out = run("forward", p, "float64", mx=12)
    assert out.status == "passed" and p.masks > 0 and p.layouts_seen == {"linear", "conv1d"}
    assert K._with_dropout(p) is None and K._philox_generator(p) is None and K._not_own(p) is None
    assert K._own_generator(p) == "duck declares the generator 'philox4x32-10', checked bit-exactly (this check is " \
                                  "for 'own')"
    assert K._layouts(p) == ("conv1d", "linear") and K._gen_name(p) == "philox4x32-10"
    for name in ("backward", "train", "stateless"):
        p.masks = 0
        assert run(name, p, "float64", mx=12).status == "passed"
    out = run("eval_dropout", p, "float64", mx=2)
    assert out.status == "passed"


class _MergeCases(Reference):
    def __init__(self):
        self.dropout_cases = self.merges = 0

    def merge(self, c):
        self.merges += 1
        self.dropout_cases += c.dropout > 0 or c.dropout_mask is not None
        return super().merge(c)

    def unmerge(self, c, W):
        self.merges += 1
        self.dropout_cases += c.dropout > 0 or c.dropout_mask is not None
        return super().unmerge(c, W)


def test_merge_cases_are_drawn_without_dropout():
    p = _MergeCases()
    assert run("merge", p, "float64", mx=25).status == "passed"
    assert run("unmerge", p, "float64", mx=25).status == "passed"
    assert p.merges >= 60 and p.dropout_cases == 0
    d = _Duck()
    assert run("forward", d, "float64", mx=25).status == "passed" and d.masks > 0


class _PeftSeen(_GroupsSeen):
    """Records the groups of projections and of forward cases."""

    def forward(self, c):
        self.groups.append(c.group)
        return super().forward(c)


def test_peft_generator_cases_have_no_groups():
    p = _PeftSeen()  # spec 2.5.3: one shared pair, no groups, whatever group the case drew
    for name in ("stateless", "forward", "generator_probe"):
        assert run(name, p, "float32", mx=10).status == "passed"
    assert len(p.groups) > 20 and set(p.groups) == {0}


class _Skewed(Bk.OwnGeneratorUniform):
    """A and B inside the bounds but on one side only (|x| or -|x|), or with a value on the bound."""
    def __init__(self, mode):
        self.mode = mode

    def projection(self, seed, r, n_in, n_out, group, device):
        A, B = super().projection(seed, r, n_in, n_out, group, device)
        if self.mode == "up":
            return np.abs(A), np.abs(B)
        if self.mode == "down":
            return -np.abs(A), -np.abs(B)
        A = A.copy()
        A[0, 0], A[0, 1] = vera_ref.kaiming_bound(n_in), -vera_ref.kaiming_bound(n_in)  # closed interval (spec 1.6)
        return A, B


@pytest.mark.parametrize("mode", ["up", "down"])
def test_projection_distribution_sees_a_one_sided_sample(mode):
    scipy_stats = pytest.importorskip("scipy.stats")
    out = run("projection_distribution", _Skewed(mode), case={"args": [5, 16, 64, 128]})
    A = _Skewed(mode).projection(5, 16, 64, 128, 0, "cpu")[0]
    bnd = float(vera_ref.kaiming_bound(64))
    d = scipy_stats.kstest(A.reshape(-1).astype(np.float64), "uniform", args=(-bnd, 2 * bnd)).statistic
    m = re.search(r"Kolmogorov-Smirnov D = ([\d.]+) on 1024 values", out.reason)
    assert out.status == "failed" and out.reason.startswith("A: not uniform") and float(m[1]) == pytest.approx(d, abs=6e-5)


def test_projection_distribution_allows_values_on_the_bound():
    out = run("projection_distribution", _Skewed("edge"), case={"args": [5, 16, 64, 128]})
    assert (out.status, out.reason) == ("passed", "")


class _Drawn(Bk.OwnGeneratorUniform):
    def __init__(self):
        self.seen = []

    def projection(self, seed, r, n_in, n_out, group, device):
        self.seen.append((seed, r, n_in, n_out))
        return super().projection(seed, r, n_in, n_out, group, device)


def test_projection_distribution_draws_ranks_16_to_256_and_fans_64_to_768():
    p = _Drawn()
    out = run("projection_distribution", p, mx=100)
    assert (out.status, out.examples) == ("passed", 10)
    seeds, ranks, fans = zip(*[(s, r, (i, o)) for s, r, i, o in p.seen])
    assert set(ranks) == {16, 32, 64, 256} and {f for io in fans for f in io} == {64, 128, 768}
    assert min(seeds) == 0 and max(seeds) < 2**32 and max(seeds) > 2**16


class _ScaledOff(_Scaled):
    """_Scaled with every output moved by k times its spec 5.2 bound (C eps S with the derived C of
    spec 5.2.3, S from vera_ref's
    magnitudes with the declared scale folded into lambda_b)."""
    def __init__(self, k):
        super().__init__()
        self.k = k

    def _bound(self, S, q, c):
        return self.k * K._C(q, c, "float64") * 2.0**-52 * np.asarray(S)

    def forward(self, c):
        from vera_ref.tolerance import forward_magnitude
        S = forward_magnitude(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, c.lambda_b * 8 / c.r, layout=c.layout)
        return super().forward(c) + self._bound(S, "forward", c)

    def backward(self, c):
        from vera_ref.tolerance import backward_magnitude
        s = 8 / c.r
        m = backward_magnitude(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b * s, c.dy, layout=c.layout)
        dx, dld, dlb = super().backward(c)
        return (dx + self._bound(m.x, "dx", c), dld + self._bound(m.lambda_d, "d_lambda_d", c),
                dlb + self._bound(m.lambda_b * s, "d_lambda_b", c))

    def merge(self, c):
        from vera_ref.tolerance import merge_magnitude
        S = merge_magnitude(c.W, c.A, c.B, c.lambda_d, c.lambda_b * 8 / c.r, layout=c.layout)
        return super().merge(c) + self._bound(S, "merge", c)


@pytest.mark.parametrize("name", ["forward", "backward", "merge"])
def test_the_bound_folds_in_a_declared_scale(name):
    """Half the bound passes, one and a half fails, with S computed for lambda_b times the scale."""
    for s in (SPECS[0], SPECS[1]):
        out = run(name, _ScaledOff(0.5), "float64", case=s)
        assert out.status == "passed" and 0.4 < out.worst_ratio <= 0.6, (s, out.reason)
        assert run(name, _ScaledOff(1.5), "float64", case=s).status == "failed"


def test_eval_dropout_draws_p_one_half():
    seen = []

    class Rec(Reference):
        def forward(self, c):
            seen.append((c.dropout, c.dropout_mask is None))
            return super().forward(c)
    assert run("eval_dropout", Rec(), "float64", mx=30).status == "passed"
    assert set(seen) == {(0.5, True)} and len(seen) == len(S.EXPLICIT) + 6
