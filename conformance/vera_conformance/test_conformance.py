"""Collected by ``pytest -p vera_conformance.pytest_plugin --pyargs vera_conformance``."""
import pytest

from vera_conformance.runner import _repro, probe_dtype, probed, run_check


def test_vera(vera_item, vera_max_examples):
    impl, spec, tid, chk, device, dtype, reason = vera_item
    if reason:
        pytest.skip(reason)
    if probed(impl, dtype):  # not declared: checked only if the implementation computes in it
        why = probe_dtype(impl, device, dtype)
        if why:
            pytest.skip(why)
    out = run_check(impl, chk, device, dtype, vera_max_examples)
    if out.status == "skipped":
        pytest.skip(out.reason)
    if out.status == "failed":
        pytest.fail(f"{out.reason}\nrepro: {_repro(spec, chk, device, dtype, out.case)}", pytrace=False)
