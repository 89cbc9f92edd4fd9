"""The conformance kit: it passes correct implementations, catches broken ones, and its
plumbing (skips, xfails, reports, repros, pytest plugin, vectors runner) works."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from vera_conformance.impls.broken import BROKEN
from vera_conformance.impls.reference import Reference
from vera_conformance.runner import final_line, run, summary

EXAMPLES = 20


def _quiet(impl, dtypes=("float32",), **kw):
    return run(impl, "x:y", ["cpu"], list(dtypes), EXAMPLES, echo=lambda s: None, **kw)


@pytest.mark.parametrize("cls", BROKEN, ids=lambda c: c.__name__)
def test_every_broken_implementation_fails_a_check(cls):
    results = _quiet(cls())
    failed = [r for r in results if r.status == "failed"]
    assert failed, f"{cls.name} passed every check"
    assert all(r.repro and r.repro.startswith("vera-ref conformance --impl x:y --only") for r in failed)


def test_reference_passes_everything_it_claims():
    s = summary(_quiet(Reference(), ("float32", "float64")))
    assert s["failed"] == 0 and s["passed"] == 16


@pytest.mark.parametrize("factory", ["make_factored", "make_fused"])
def test_torch_backend_passes_both_paths_in_three_dtypes(factory):
    pytest.importorskip("torch")
    from vera_conformance.impls import torch_impl
    results = _quiet(getattr(torch_impl, factory)(), ("float32", "float16", "bfloat16"))
    bad = [(r.id, r.reason) for r in results if r.status == "failed"]
    assert not bad
    assert sum(r.status == "passed" for r in results) >= 18
    for r in results:  # every float check records its tolerance (spec 5.2)
        if r.status == "passed" and r.check in ("forward", "backward", "merge", "unmerge"):
            assert r.tolerance["C"] == 16 and r.worst_ratio is not None and r.worst_ratio <= 1


def test_peft_layer_passes_through_the_same_door():
    pytest.importorskip("peft")
    from vera_conformance.impls.peft_impl import PeftImpl
    results = _quiet(PeftImpl())
    assert summary(results)["failed"] == 0
    assert {r.check for r in results if r.status == "passed"} == {"forward", "backward", "merge", "unmerge",
                                                                   "math_vectors"}
    assert all("does not claim" in r.reason for r in results if r.status == "skipped")


def test_onnx_backend_passes_what_ort_can_do():
    pytest.importorskip("onnxruntime")
    from vera_conformance.impls.onnx_impl import OnnxImpl
    results = run(OnnxImpl(), "x:y", ["cpu"], ["float32", "float16"], 10, echo=lambda s: None)
    assert summary(results)["failed"] == 0
    assert {r.check for r in results if r.status == "passed"} == {"philox_kat", "projection_vectors", "projection",
                                                                   "forward", "merge", "math_vectors"}


def test_skips_xfails_report_and_replay(tmp_path):
    from vera_conformance.impls.broken import MergeWithoutLambdaB
    (tmp_path / "skips").write_text("files_*  # not today\n")
    (tmp_path / "xfails").write_text("merge[float32]_cpu  # known bug 123\n")
    impl = MergeWithoutLambdaB()
    results = _quiet(impl, skips=str(tmp_path / "skips"), xfails=str(tmp_path / "xfails"))
    by_id = {r.id: r for r in results}
    assert by_id["files_valid_cpu"].status == "skipped" and by_id["files_valid_cpu"].reason == "skips file: not today"
    assert by_id["merge[float32]_cpu"].status == "xfailed"
    assert by_id["math_vectors[float32]_cpu"].status == "failed"  # not listed, still a failure
    assert final_line(results) == "6 passed, 1 failed, 3 skipped, 1 xfailed"
    # the failing case replays from its repro JSON alone
    merge_case = by_id["merge[float32]_cpu"].case
    replay = run(impl, "x:y", ["cpu"], ["float32"], 1, only=["merge"], case=merge_case, echo=lambda s: None)
    assert replay[0].status == "failed"
    assert run(Reference(), "x:y", ["cpu"], ["float32"], 1, only=["merge"], case=merge_case,
               echo=lambda s: None)[0].status == "passed"


def test_cli_conformance_and_json_report(tmp_path):
    rep = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "vera_ref.cli", "conformance", "--impl",
                          "vera_conformance.impls.broken:OffByOneSlice", "--max-examples", "10",
                          "--device", "cpu,cuda", "--json-report", str(rep)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, [1-9]\d* failed, \d+ skipped", last), last
    assert "repro: vera-ref conformance --impl vera_conformance.impls.broken:OffByOneSlice --only forward" in res.stdout
    doc = json.loads(rep.read_text())
    assert doc["summary"]["failed"] >= 1 and doc["spec_version"] == "1.0"
    cuda = [r for r in doc["results"] if r["device"] == "cuda"]
    assert cuda and all(r["status"] == "skipped" for r in cuda) or __import__("torch").cuda.is_available()
    fwd = next(r for r in doc["results"] if r["id"] == "forward[float32]_cpu")
    assert fwd["status"] == "failed" and fwd["tolerance"]["C"] == 16 and fwd["case"]["in_features"] >= 1


def test_pytest_plugin(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "vera_conformance.pytest_plugin", "--pyargs",
                          "vera_conformance", "--vera-impl", "vera_conformance.impls.reference:make",
                          "--vera-max-examples", "5", "--vera-device", "cpu,cuda", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:]
    assert re.search(r"11 passed, 11 skipped", res.stdout), res.stdout[-500:]  # float32: 11 checks a device


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
        except vera_ref.AdapterFileError:
            results["files"][str(t["tcId"])] = "rejected"
    rows = V.check_results(results)
    assert not [r for r in rows if r[1] == "failed"]
    assert sum(r[1] == "passed" for r in rows) == 55 + 6 + len(env("files.json"))
    results["philox4x32_10"]["1"] = ["00000000"] * 4
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = subprocess.run([sys.executable, "-m", "vera_ref.cli", "conformance-vectors", "--results",
                          str(tmp_path / "res.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "FAILED   philox4x32_10/1" in out.stdout
    assert re.search(r": \d+ passed, 1 failed, \d+ skipped$", out.stdout.strip())


def test_readme_table_is_the_kits_output():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from vera_conformance.table import table
    assert table() in (ROOT / "README.md").read_text()
