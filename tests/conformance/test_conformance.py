"""The conformance kit: it passes correct implementations, catches broken ones (each with the
check meant to catch it), and its plumbing (skips, xfails, reports, repros, CLI mistakes,
pytest plugin, vectors runner) works. Heavy meta-tests run few examples."""
import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from vera_conformance.checks import CHECKS
from vera_conformance.checks_quantized import bnb_available
from vera_conformance.impls import broken as Bk
from vera_conformance.impls.reference import Reference
from vera_conformance.protocol import CAPABILITIES, DTYPES, ConformanceError, Implementation, load_implementation
from vera_conformance.runner import PROTOCOL_METHODS, _state_note, final_line, run, summary

EXAMPLES = 8


def _quiet(impl, dtypes=None, examples=EXAMPLES, **kw):
    dtypes = dtypes or [d for d in DTYPES if d in impl.dtypes]
    return run(impl, "x:y", ["cpu"], list(dtypes), examples, echo=lambda s: None, **kw)


def _runner(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "vera_conformance.runner", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("cls", Bk.BROKEN, ids=lambda c: c.__name__)
def test_every_broken_implementation_fails_its_check(cls):
    check = Bk.CAUGHT_BY[cls]
    if check == "quantized" and (why := bnb_available()):
        pytest.skip(why)
    impl = cls()
    results = _quiet(impl, [d for d in ("float32", "bfloat16", "tf32") if d in impl.dtypes], only=[check])
    failed = [r for r in results if r.status == "failed"]
    assert failed, f"{cls.name} passed {check}"
    for r in failed:  # one failure, one message, one repro that names the check
        assert r.repro.startswith(f"vera-ref conformance --impl x:y --only {check}")
        assert "ExceptionGroup" not in r.reason and "distinct failures" not in r.reason
        assert r.case is not None or not next(c for c in CHECKS if c.name == check).case_keys


@pytest.mark.parametrize("cls", Bk.CONFORMING_DECLARED, ids=lambda c: c.__name__)
def test_declared_deviations_that_conform_pass(cls):
    impl = cls()
    results = _quiet(impl, [d for d in ("float32", "tf32") if d in impl.dtypes])
    assert summary(results)["failed"] == 0, [(r.id, r.reason) for r in results if r.status == "failed"]
    assert summary(results)["passed"] >= 2


def test_reference_passes_everything_it_claims_in_every_dtype():
    results = _quiet(Reference())
    s = summary(results)
    assert s["failed"] == 0, [(r.id, r.reason) for r in results if r.status == "failed"]
    checked = {(r.check, r.dtype) for r in results if r.status == "passed"}
    for dtype in ("float32", "float16", "bfloat16", "float64"):  # every declared dtype by default
        assert {("forward", dtype), ("train", dtype), ("eval_dropout", dtype), ("numerics", dtype)} <= checked
    assert {("generator_probe", "float32"), ("files_invalid", None), ("stateless", "bfloat16")} <= checked


def test_failure_messages_name_the_diagnosis():
    # an undeclared alpha/r: the adapter term is compared first and its factor is named
    r = _quiet(Bk.AlphaOverR(), ["float32"], only=["forward"])[0]
    assert r.reason.startswith("adapter term (W0 = 0, no bias)") and "a scale such as alpha/r?" in r.reason
    assert re.search(r"there got -?[\d.e+-]+, reference -?[\d.e+-]+", r.reason)
    # TF32 matmuls are named as such (spec 5.2.2); declared as tf32 they pass
    r = _quiet(Bk.TF32Matmuls(), ["float32"], only=["forward"])[0]
    assert "float32 computed with TF32, a named non-conformance (spec 5.2.2)" in r.reason
    # a low-precision adapter bug is seen through the adapter term (spec 5.2.1)
    r = _quiet(Bk.ShiftedAInHalf(), ["bfloat16"], only=["forward"])[0]
    assert r.status == "failed"
    # files: the rule's field (and code) is compared, not "some exception"
    r = _quiet(Bk.AnyRejection(), only=["files_invalid"])[0]
    assert "rejected with field 'file'" in r.reason and r.case["tcId"] >= 1
    # training: the trainable parameters are named with their shapes
    r = _quiet(Bk.FullMatrixTraining(), ["float32"], only=["train"])[0]
    assert "VeRA trains exactly one lambda_d" in r.reason and "(41, 41)" in r.reason


def test_example_counts_exclude_shrinking_and_crashes_keep_their_tcid():
    r = _quiet(Bk.TileTailDropped(), ["float32"], 30, only=["forward"])[0]
    assert r.status == "failed" and 1 <= r.examples <= 30 + 5

    class Crashing(Reference):
        def forward(self, c):
            raise RuntimeError("kernel launch failed")
    r = _quiet(Crashing(), ["float32"], only=["math_vectors"])[0]
    assert r.status == "failed" and r.reason.startswith("tcId ") and "RuntimeError: kernel launch failed" in r.reason


def test_two_bugs_give_one_message():
    class TwoBugs(Reference):
        def forward(self, c):
            if c.in_features > 3:
                raise ValueError("shape not supported")
            return super().forward(c) * 2
    r = _quiet(TwoBugs(), ["float32"], 30, only=["forward"])[0]
    assert r.status == "failed" and "ExceptionGroup" not in r.reason and "\n" not in r.reason


def test_state_dependent_failures_say_so():
    impl = Bk.CachedProjection()
    impl.projection(5, 4, 200, 200, 0, "cpu")  # a larger shape first: the cache now answers wrongly
    chk = next(c for c in CHECKS if c.name == "projection")
    out = chk.run(impl, "cpu", "float32", 1, case={"args": [5, 4, 10, 10, 0]})
    assert out.status == "failed"
    assert "state-dependent" in _state_note(impl, "x:y", chk, "cpu", None, out)
    assert _state_note(Bk.TransposedA(), "x:y", chk, "cpu", None, out) == ""  # a plain bug is not


@pytest.mark.parametrize("factory", ["make_factored", "make_fused", "make_fused_h"])
def test_torch_backend_passes_every_path_in_every_dtype(factory):
    pytest.importorskip("torch")
    from vera_conformance.impls import torch_impl
    results = _quiet(getattr(torch_impl, factory)(), examples=4)
    bad = [(r.id, r.reason) for r in results if r.status == "failed"]
    assert not bad
    assert sum(r.status == "passed" for r in results) >= 36
    for r in results:  # every float check records its tolerance (spec 5.2)
        if r.status == "passed" and r.check in ("forward", "backward", "merge", "unmerge", "train"):
            assert r.tolerance["C"] > 1 and r.worst_ratio is not None and r.worst_ratio <= 1


def test_peft_layer_passes_through_the_same_door():
    pytest.importorskip("peft")
    from vera_conformance.impls.peft_impl import PeftImpl
    results = _quiet(PeftImpl(), examples=5)
    assert summary(results)["failed"] == 0, [(r.id, r.reason) for r in results if r.status == "failed"]
    assert {r.check for r in results if r.status == "passed"} == {
        "forward", "backward", "merge", "unmerge", "train", "eval_dropout", "generator_probe", "stateless",
        "math_vectors", "numerics", "merged_forward", "eval_dropout_backward"}
    assert all("does not claim" in r.reason or r.check == "adapter_scale" for r in results if r.status == "skipped")


def test_onnx_backend_passes_what_ort_can_do():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from vera_conformance.impls.onnx_impl import OnnxImpl
    results = run(OnnxImpl(), "x:y", ["cpu"], ["float32", "float16"], 3, echo=lambda s: None,
                  only=["philox_kat", "projection", "forward", "generator_probe", "merge", "math_vectors",
                        "merged_forward"])
    assert summary(results)["failed"] == 0, [(r.id, r.reason) for r in results if r.status == "failed"]
    assert {r.check for r in results if r.status == "passed"} == {"philox_kat", "projection", "forward",
                                                                   "generator_probe", "merge", "math_vectors",
                                                                   "merged_forward"}
    # no unmerge in an ONNX export: the merged export's forward is checked, and the pass says so
    assert all("does not claim unmerge" in r.note for r in results if r.check == "merged_forward")


def test_skips_xfails_report_and_replay(tmp_path):
    (tmp_path / "skips").write_text("files_*  # not today\n")
    (tmp_path / "xfails").write_text("merge[float32]_cpu  # known bug 123\n")
    impl = Bk.MergeWithoutLambdaB()
    results = _quiet(impl, ["float32"], skips=str(tmp_path / "skips"), xfails=str(tmp_path / "xfails"))
    by_id = {r.id: r for r in results}
    assert by_id["files_valid_cpu"].status == "skipped" and by_id["files_valid_cpu"].reason == "skips file: not today"
    assert by_id["merge[float32]_cpu"].status == "xfailed"
    assert by_id["math_vectors[float32]_cpu"].status == "failed"  # not listed, still a failure
    assert by_id["numerics[float32]_cpu"].status == "failed"  # its merge part: the same bug
    assert by_id["merged_forward[float32]_cpu"].status == "failed"  # the merged layer's forward: the same bug
    s = summary(results)
    assert final_line(results) == f"{s['passed']} passed, 3 failed, {s['skipped']} skipped, 1 xfailed"
    # the failing case replays from its repro JSON alone
    merge_case = by_id["merge[float32]_cpu"].case
    replay = run(impl, "x:y", ["cpu"], ["float32"], 1, only=["merge"], case=merge_case, echo=lambda s: None)
    assert replay[0].status == "failed"
    assert run(Reference(), "x:y", ["cpu"], ["float32"], 1, only=["merge"], case=merge_case,
               echo=lambda s: None)[0].status == "passed"


def test_files_roundtrip_replays_its_case():
    case = {"r": 3, "generator": "philox4x32-10", "seed": str(2**53 + 1), "sharing": "per-module",
            "vector_dtype": "bfloat16", "modules": [["a.q", 4, 5, "conv1d"]], "values_seed": 7}
    for impl, status in ((Reference(), "passed"), (Bk.WriterSeedThroughFloat(), "failed"),
                         (Bk.WriterFloat32Vectors(), "failed"), (Bk.WriterAllLinear(), "failed")):
        assert run(impl, "x:y", ["cpu"], ["float32"], 1, only=["files_roundtrip"], case=case,
                   echo=lambda s: None)[0].status == status, impl.name


def test_cli_run_and_json_report(tmp_path):
    rep = tmp_path / "r.json"
    res = _runner("--impl", "vera_conformance.impls.broken:OffByOneSlice", "--max-examples", "5", "--only",
                  "forward,files_valid", "--device", "cpu,cuda", "--json-report", str(rep))
    assert res.returncode == 1, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, [1-9]\d* failed, \d+ skipped", last), last
    assert "repro: vera-ref conformance --impl vera_conformance.impls.broken:OffByOneSlice --only forward" in res.stdout
    doc = json.loads(rep.read_text())
    assert doc["summary"]["failed"] >= 1 and doc["spec_version"] == __import__("vera_ref.metadata").metadata.SPEC_TEXT_VERSION
    assert doc["file_profile"] == __import__("vera_ref").SPEC_VERSION
    assert doc["dtypes"] == ["bfloat16", "float16", "float32", "float64"]  # every declared dtype by default
    fwd = next(r for r in doc["results"] if r["id"] == "forward[bfloat16]_cpu")
    assert fwd["status"] == "failed" and fwd["tolerance"]["C"] > 1 and fwd["case"]["in_features"] >= 1


@pytest.mark.parametrize("args, message", [
    (["--impl", "no_such_module_h5:make"], "cannot import module 'no_such_module_h5'"),
    (["--impl", "vera_conformance.impls.reference"], "must be MODULE:NAME"),
    (["--impl", "vera_conformance.impls.reference:nope"], "has no attribute 'nope'"),
    (["--impl", "vera_conformance.impls.reference:make", "--only", "forwrd"], "unknown check 'forwrd'"),
    (["--impl", "vera_conformance.impls.reference:make", "--only", ","], "--only names no check"),
    (["--impl", "vera_conformance.impls.reference:make", "--only", "forward", "--case", "{notjson"],
     "--case is not JSON"),
    (["--impl", "vera_conformance.impls.reference:make", "--only", "forward", "--case", '{"r": 1}'],
     "--case does not describe a case of the check 'forward'"),
    (["--impl", "vera_conformance.impls.reference:make", "--json-report", "/nonexistent-h5/r.json"],
     "the folder /nonexistent-h5 does not exist"),
    (["--impl", "vera_conformance.impls.reference:make", "--dtype", "float8"], "unknown dtype 'float8'"),
    (["--impl", "vera_conformance.impls.broken:DeclaredTF32", "--only", "files_valid"], "nothing was checked"),
])
def test_cli_mistakes_are_one_line(args, message):
    res = _runner(*args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    assert message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_impl_module_is_found_in_the_current_folder(tmp_path):
    (tmp_path / "myvera_h5.py").write_text(
        "from vera_conformance.impls.reference import Reference\n"
        "class Mine(Reference):\n    name = 'mine'\n    dtypes = frozenset({'float32'})\n"
        "def make():\n    return Mine()\n")
    res = _runner("--impl", "myvera_h5:make", "--only", "files_valid", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("1 passed, 0 failed, 0 skipped")
    (tmp_path / "failing_h5.py").write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    res = _runner("--impl", "failing_h5:make", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "the factory raised RuntimeError: no GPU here" in res.stderr
    with pytest.raises(ConformanceError, match="unknown capabilities"):
        (tmp_path / "badcap_h5.py").write_text("class X:\n    name = 'x'\n    capabilities = {'gen'}\n"
                                               "    def supports(self, d, t):\n        return True\n")
        sys.path.insert(0, str(tmp_path))
        try:
            load_implementation("badcap_h5:X")
        finally:
            sys.path.remove(str(tmp_path))


def test_pytest_plugin(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "vera_conformance.pytest_plugin", "--pyargs",
                          "vera_conformance", "--vera-impl", "vera_conformance.impls.reference:make",
                          "--vera-max-examples", "3", "--vera-device", "cpu,cuda", "--vera-dtype", "float32",
                          "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:]
    n = len(CHECKS)  # float32 only: one item per check and device; cuda absent or claimed not
    from vera_conformance.runner import plan
    runs = sum(it[4] is None for it in plan(Reference(), ["cpu", "cuda"], ["float32"]))  # not skipped by the plan
    m = re.search(r"(\d+) passed, (\d+) skipped", res.stdout)
    assert m and int(m[1]) + int(m[2]) == 2 * n and int(m[1]) >= runs - 2, res.stdout[-500:]


def test_vectors_runner_for_other_languages(tmp_path):
    import vera_ref
    from vera_conformance import vectors_runner as V
    results = V.template()
    env = lambda n: [t for g in json.loads((ROOT / "spec/vectors" / n).read_text())["testGroups"] for t in g["tests"]]  # noqa: E731
    for t in env("philox4x32_10.json"):
        c = np.array([[int(w, 16) for w in t["counter"]]], np.uint32)
        k = np.array([int(w, 16) for w in t["key"]], np.uint32)
        results["philox4x32_10"][str(t["tcId"])] = [f"{int(w):08x}" for w in vera_ref.philox4x32(c, k)[0]]
    for t in env("projections.json"):
        if "seed" in t and "group" in t:
            A, B = vera_ref.projection(int(t["seed"]), t["r"], t["n_in"], t["n_out"], t["group"])
            results["projections"][str(t["tcId"])] = {"sha256_A": vera_ref.adapter.sha256_hex(A),
                                                      "sha256_B": vera_ref.adapter.sha256_hex(B)}
        else:
            del results["projections"][str(t["tcId"])]
    del results["math"]
    for t in env("files.json"):
        try:
            vera_ref.load_adapter(ROOT / "spec/vectors/files" / t["file"])
            results["files"][str(t["tcId"])] = "accepted"
        except vera_ref.AdapterFileError as exc:
            results["files"][str(t["tcId"])] = {"rejected": {"code": exc.code, "field": exc.field}}
    bad_file = next(t for t in env("files.json") if t["result"] == "invalid")["tcId"]
    rows = V.check_results(results)
    assert not [r for r in rows if r[1] == "failed"]
    assert sum(r[1] == "passed" for r in rows) == 55 + len(results["projections"]) + len(env("files.json"))
    results["philox4x32_10"]["1"] = ["00000000"] * 4
    results["files"][str(bad_file)] = "rejected"  # a rejection that names no rule fails (spec 6.5)
    bad = [r for r in V.check_results(results) if r[1] == "failed"]
    assert [r[0] for r in bad] == ["philox4x32_10/1", f"files/{bad_file}"]
    assert all(r[1] == "skipped" for r in V.check_results(V.template()))  # an unfilled template checks nothing


def test_readme_table_is_the_kits_output():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax")
    from vera_conformance.table import table
    # 2 examples a property (plus the fixed boundary cases): the cells are pass/skip/-, which the
    # other tests here check with more examples; this one keeps the README in step with the kit
    assert table(max_examples=2) in (ROOT / "README.md").read_text()


def _readme_wrapper() -> str:
    readme = (ROOT / "conformance/README.md").read_text()
    return readme.split("## Wrapping a torch layer")[1].split("```python\n")[1].split("```")[0]


def test_readme_wrapper_is_a_complete_file_under_30_lines_that_passes(tmp_path):
    """conformance/README.md's wrapper, as written there (imports and all), is the example file,
    has under 30 lines of code as the README says, and passes the kit from a folder of its own."""
    pytest.importorskip("torch")
    block = _readme_wrapper()
    assert block == (ROOT / "conformance/examples/wrap_torch_layer.py").read_text()
    code = [ln for ln in block.splitlines() if ln.strip()]
    n = len(code)
    assert n < 30 and f"in {n} lines (blank lines not counted" in (ROOT / "conformance/README.md").read_text()
    assert "leading_slices" in block and block.startswith("from ")  # imports and the slice helper are there
    (tmp_path / "wrap_torch_layer.py").write_text(block)
    (tmp_path / "plain_vera.py").write_text((ROOT / "conformance/examples/plain_vera.py").read_text())
    res = _runner("--impl", "wrap_torch_layer:make", "--max-examples", "3", "--only",
                  "forward,backward,train,eval_dropout,generator_probe", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr
    # declared float32 only: float16, bfloat16 and float64 probed and checked too (generator_probe has
    # binary32 and binary64 cases only)
    assert res.stdout.strip().endswith("18 passed, 0 failed, 2 skipped")
    assert "(float16, bfloat16, float64 not declared: probed)" in res.stdout
    # asked for tf32, a precision it does not declare (never probed): nothing ran, so the run is an
    # error, not a pass
    res = _runner("--impl", "wrap_torch_layer:make", "--max-examples", "3", "--dtype", "tf32", "--only",
                  "forward", cwd=tmp_path)
    assert res.returncode != 0 and "PASSED" not in res.stdout, res.stdout
    assert "nothing was checked" in res.stderr and "Traceback" not in res.stderr


def test_a_vector_without_gradient_is_named(tmp_path):
    """A trained vector that does not reach the output: the kit names it, not an AttributeError."""
    r = _quiet(Bk.LambdaBNoGradient(), ["float32"], only=["backward"])[0]
    assert (r.status, r.reason) == ("failed", "lambda_b got no gradient: it does not reach the output")
    torch = pytest.importorskip("torch")
    (tmp_path / "plain_vera.py").write_text((ROOT / "conformance/examples/plain_vera.py").read_text()
                                            .replace("self.lambda_b * (", "self.lambda_b.detach() * ("))
    (tmp_path / "wrap_torch_layer.py").write_text(_readme_wrapper())
    sys.path.insert(0, str(tmp_path))
    try:
        impl = load_implementation("wrap_torch_layer:make")
        r = _quiet(impl, ["float32"], 2, only=["backward"])[0]
    finally:
        sys.path.remove(str(tmp_path))
        for m in ("wrap_torch_layer", "plain_vera"):
            sys.modules.pop(m, None)
    assert (r.status, r.reason) == ("failed", "lambda_b got no gradient: it does not reach the output")
    assert torch.is_grad_enabled()


class _NoUnmergeReply(Reference):
    """Claims unmerge but gives no forward after it."""
    def merged_forward(self, c):
        return super().merged_forward(c)[0], None


class _MergedOnly(Reference):
    """Claims merge but not unmerge (an ONNX export): only the merged forward is asked for."""
    capabilities = Reference.capabilities - {"unmerge"}

    def merged_forward(self, c):
        return super().merged_forward(c)[0], None


def test_merged_forward_and_eval_dropout_backward_report_what_they_checked():
    """merged_forward: skipped unless claimed, never passed; a missing after-unmerge forward is named when
    unmerge is claimed and noted when it is not; eval_dropout_backward names the p and replays at it."""
    from vera_conformance.impls import broken_merged as BM
    plain = type("P", (Reference,), {"capabilities": Reference.capabilities - {"merged_forward"}})()
    r = _quiet(plain, ["float32"], only=["merged_forward"])[0]
    assert (r.status, r.reason) == ("skipped", f"{plain.name} does not claim the 'merged_forward' capability")
    r = _quiet(_NoUnmergeReply(), ["float32"], only=["merged_forward"])[0]
    assert r.status == "failed" and "claims unmerge but merged_forward returned no forward after unmerge" in r.reason
    r = _quiet(_MergedOnly(), ["float32"], only=["merged_forward"])[0]
    assert r.status == "passed" and "does not claim unmerge" in r.note and r.tolerance["C"] > 1
    r = _quiet(BM.MergedLayerAddsAgain(), ["float64"], only=["merged_forward"])[0]
    assert r.reason.startswith("merged layer's adapter term (W0 = 0, no bias)") and "x2 the reference" in r.reason
    r = _quiet(BM.UnmergeKeepsDelta(), ["float64"], only=["merged_forward"])[0]
    assert r.reason.startswith("adapter term (W0 = 0, no bias) after merge and unmerge")
    r = _quiet(BM.EvalDropoutWithGrad(), ["float64"], only=["eval_dropout_backward"])[0]
    assert r.status == "failed" and r.case["dropout"] == 0.5 and "in evaluation mode with dropout p = 0.5" in r.reason
    assert run(Reference(), "x:y", ["cpu"], ["float64"], 1, only=["eval_dropout_backward"], case=r.case,
               echo=lambda s: None)[0].status == "passed"
    with pytest.raises(ConformanceError, match="dropout must be the p > 0"):
        run(Reference(), "x:y", ["cpu"], ["float64"], 1, only=["eval_dropout_backward"],
            case=dict(r.case, dropout=0.0), echo=lambda s: None)


class _Raises(Implementation):
    """Claims everything and raises on any call of any method."""
    name = "raises on every call"
    capabilities = frozenset(CAPABILITIES)
    dtypes = frozenset(DTYPES)

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name in PROTOCOL_METHODS or name == "philox":
            def raising(*a, **k):
                raise RuntimeError(f"{name} called")
            return raising
        return attr


GENERATOR_CHECKS = ["philox_kat", "projection_vectors", "projection", "projection_distribution", "own_determinism"]


@pytest.mark.parametrize("decl, only", [
    ({}, None),  # every check
    ({"generator": "own"}, GENERATOR_CHECKS), ({"generator": "peft-mt19937"}, GENERATOR_CHECKS),
    ({"adapter_scale": 0.5, "dropout": False, "layouts": frozenset({"linear"})},
     ["adapter_scale", "eval_dropout", "generator_probe", "math_vectors", "forward"])], ids=str)
def test_no_check_passes_an_implementation_that_raises_or_declares_nothing(decl, only):
    """Structural (issue 21): every check, against an implementation whose every method raises,
    reports failed or skipped; against one that declares nothing, skipped; never passed. The
    declarations that change what a check does get a run of those checks each."""
    impl = type("R", (_Raises,), dict(decl))()
    results = run(impl, "x:y", ["cpu"], ["float32"], 1, only=only, echo=lambda s: None)
    assert {r.check for r in results} == set(only or [c.name for c in CHECKS])
    assert not [r.id for r in results if r.status == "passed"]
    assert any(r.status == "failed" for r in results)
    nothing = run(Implementation(), "x:y", ["cpu"], list(DTYPES), 1, only=only, echo=lambda s: None)
    assert {r.status for r in nothing} == {"skipped"}


def test_a_pass_that_called_nothing_is_a_failure():
    """The runner's own guard: a check (here a kit bug) that returns passed without calling any
    method of the implementation is reported failed."""
    from vera_conformance.checks import Check, Outcome
    from vera_conformance.runner import run_check
    lazy = Check("lazy", "forward", "M", False, lambda impl, device, dtype, n, case=None: Outcome("passed", "", 1))
    out = run_check(Reference(), lazy, "cpu", None, 2)
    assert out.status == "failed" and f"called no method of {Reference().name} (projection, " in out.reason
    busy = Check("busy", "forward", "M", False,
                 lambda impl, device, dtype, n, case=None: Outcome("passed", "", impl.projection(1, 2, 3, 4, 0, device)
                                                                   and 1))
    assert run_check(Reference(), busy, "cpu", None, 2).status == "passed"


# --- dtypes probed, not only declared (runner.probe_dtype) -----------------------------------------

class _Float32Declared(Reference):
    """Computes in the case's dtype like the reference, but declares float32 only (the default)."""
    dtypes = frozenset({"float32"})


class _AlwaysFloat32(_Float32Declared):
    """A wrapper that ignores case.dtype: it computes every case in float32."""
    def forward(self, c):
        return Reference.forward(self, dataclasses.replace(c, dtype="float32"))


class _Refuses(_Float32Declared):
    def forward(self, c):
        if c.dtype != "float32":
            raise TypeError(f"dtype {c.dtype} is not supported by this layer")
        return super().forward(c)


class _HalfBugUndeclared(Bk.NoAdapterInHalf):
    dtypes = frozenset({"float32"})


def test_undeclared_dtypes_are_probed_then_checked():
    from vera_conformance.runner import default_dtypes, probe_dtype
    assert default_dtypes(_Float32Declared()) == ["float32", "float16", "bfloat16", "float64"]
    assert default_dtypes(Bk.DeclaredTF32()) == ["float32", "float16", "bfloat16", "float64", "tf32"]
    dts = default_dtypes(_Float32Declared())
    res = {r.id: r for r in _quiet(_Float32Declared(), dts, 2, only=["forward"])}
    assert all(res[f"forward[{d}]_cpu"].status == "passed" for d in dts)  # declared nothing: tested in all four
    # a bug in an undeclared dtype is found, not skipped
    res = {r.id: r for r in _quiet(_HalfBugUndeclared(), dts, 2, only=["forward"])}
    assert res["forward[bfloat16]_cpu"].status == "failed" and res["forward[float32]_cpu"].status == "passed"
    # "not supported" only after trying: values of another dtype, or an error saying so
    for d in ("float16", "bfloat16", "float64"):
        why = probe_dtype(_AlwaysFloat32(), "cpu", d)
        assert why.startswith(f"{_AlwaysFloat32.name} does not support {d} (not declared; probed: its forward ")
        assert "returned" in why
        why = probe_dtype(_Refuses(), "cpu", d)
        assert f"raised TypeError: dtype {d} is not supported by this layer (at " in why
    res = {r.id: r for r in _quiet(_Refuses(), dts, 2, only=["forward", "numerics"])}
    assert res["numerics[float16]_cpu"].status == "skipped" and res["numerics[float32]_cpu"].status == "passed"
    assert probe_dtype(_Float32Declared(), "cpu", "bfloat16") is None

    class _Crashes(_Float32Declared):  # an error that does not say "unsupported" is a failure with its frame
        def forward(self, c):
            if c.dtype == "bfloat16":
                raise RuntimeError("expected scalar type BFloat16 but found Float")
            return super().forward(c)
    r = _quiet(_Crashes(), ["bfloat16"], 2, only=["forward"])[0]
    assert r.status == "failed" and r.reason.startswith("RuntimeError: expected scalar type BFloat16 but found Float")
    assert f"{__file__}:" in r.reason


def test_crash_names_the_innermost_frame_outside_the_kit_and_the_wrapper(tmp_path, monkeypatch):
    (tmp_path / "mlib_k24.py").write_text("def forward(x):\n    return helper(x)\n\n\ndef helper(x):\n"
                                         "    raise TypeError('unsupported operand')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mlib_k24

    class Wrapped(Reference):
        def forward(self, c):
            return mlib_k24.forward(c.x)
    r = _quiet(Wrapped(), ["float32"], 2, only=["forward"])[0]
    lib = tmp_path / "mlib_k24.py"
    assert r.reason.startswith(f"TypeError: unsupported operand (at {lib}:6 in helper; wrapper {__file__}:")
    assert r.reason.endswith(" in forward)")
