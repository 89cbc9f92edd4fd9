"""The numerics check (checks_numeric): its cases are what they claim (one-sign sums over in, r,
out and the batch at real sizes; intermediates near but below the dtype's max), a wrong accumulator is caught in
float16 and bfloat16 while binary32 accumulation passes with its margin, and --thorough grows it.
The bounds are vera_ref.tolerance's (spec 5.2.3); nothing here is fitted."""
import numpy as np
import pytest

import vera_ref
from vera_ref.dtypes import round_to
from vera_ref.tolerance import backward_magnitude
from vera_conformance import checks as K
from vera_conformance import checks_numeric as N
from vera_conformance import strategies as S
from vera_conformance.impls import broken as Bk
from vera_conformance.impls import broken_numeric as Bn
from vera_conformance.impls.reference import Reference
from vera_conformance.runner import run

BY_KIND = {s["kind"]: s for s in N.CASES}


def _case(kind, dtype="float32"):
    spec = BY_KIND[kind]
    return N.adversarial(K._build(Reference(), spec, dtype, "cpu"), kind, spec["values_seed"])


def _one_sign(terms) -> bool:
    terms = np.asarray(terms)
    return bool(np.all(terms >= 0) or np.all(terms <= 0)) and np.count_nonzero(terms) == terms.size


def test_default_cases_reach_real_sizes():
    assert max(s["n_in"] for s in N.CASES) == 16384 and max(s["n_out"] for s in N.CASES) == 16384
    assert max(s["r"] for s in N.CASES) == 1024
    assert max(s["in_features"] for s in N.CASES) == 16384 and max(s["out_features"] for s in N.CASES) == 16384
    assert {s["kind"] for s in N.CASES} == {"long_in", "long_r", "long_out", "near_max", "long_batch"}
    assert max(s["N"] for s in N.CASES) == BY_KIND["long_batch"]["N"] == 2048  # spec 3.4's sums over the batch


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_sums_are_one_sign_and_in_the_dtype(dtype):
    c, cm = _case("long_in", dtype)
    A_l = c.A[:, :c.in_features].astype(np.float64)
    W = c.W if c.layout == "linear" else c.W.T
    for n in range(c.x.shape[0]):  # h[n, k_n]: in (16384) products of one sign
        assert _one_sign(c.x[n] * A_l[n % c.r])
    assert _one_sign(c.x[0] * W[0]) and len(set(np.abs(c.x[0] * W[0]))) == 1  # y[0, 0]'s base: equal terms
    for arr in (c.x, c.W, c.lambda_d, c.lambda_b, c.dy):  # every value is one of the dtype (no hidden rounding)
        assert np.array_equal(round_to(arr, dtype).astype(np.float64), arr)
    c, cm = _case("long_r", dtype)
    A_l, B_l = c.A[:, :c.in_features].astype(np.float64), c.B[:c.out_features].astype(np.float64)
    h0 = c.x[0] @ A_l.T
    assert _one_sign(c.lambda_d * h0 * B_l[0])  # y[0, 0]'s adapter term: r (1024) terms of one sign
    assert _one_sign(cm.lambda_d * B_l[0] * A_l[:, 0])  # Delta W[0, 0] likewise
    c, _ = _case("long_out", dtype)
    W = c.W if c.layout == "linear" else c.W.T
    B_l = c.B[:c.out_features].astype(np.float64)
    assert _one_sign(c.dy[0] * W[:, 0]) and c.out_features == 16384  # dx[0, 0]'s base: out terms
    assert _one_sign(c.dy[1] * c.lambda_b * B_l[:, 0])  # (dy lambda_b) B_l [1, 0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_long_batch_sums_are_one_sign_over_the_batch(dtype):
    c, cm = _case("long_batch", dtype)
    assert cm is c and c.x.shape[0] == 2048 and max(c.r, c.in_features, c.out_features) <= 16  # the batch is long
    A_l, B_l = c.A[:, :c.in_features].astype(np.float64), c.B[:c.out_features].astype(np.float64)
    h = c.x @ A_l.T  # (N, r), exact: the values' products and short sums
    v = (h * c.lambda_d) @ B_l.T  # (N, out)
    gB = (c.dy * c.lambda_b) @ B_l  # (N, r)
    for o in range(c.out_features):  # d lambda_b[o]: N terms of one sign, for every o
        assert _one_sign(c.dy[:, o] * v[:, o])
    assert _one_sign(gB[:, 0] * h[:, 0])  # d lambda_d[0]: N terms of one sign
    for arr in (c.x, c.lambda_d, c.lambda_b, c.dy):  # values of the dtype (no hidden rounding)
        assert np.array_equal(round_to(arr, S.storage(dtype)).astype(np.float64), arr)
    g = vera_ref.backward(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b, c.dy, layout=c.layout)
    mag = backward_magnitude(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b, c.dy, layout=c.layout)
    assert abs(g.lambda_d[0]) == pytest.approx(mag.lambda_d[0], rel=1e-12)  # |sum| = S
    assert np.allclose(np.abs(g.lambda_b), mag.lambda_b, rtol=0.8)  # v is mostly its one-sign k = 0 term
    # every intermediate within (max/2, max] of LONG_BATCH_MAX = 2^10: far below float16's 65504
    biggest = max(float(np.max(np.abs(a))) for a in (mag.lambda_d, mag.lambda_b, mag.x, c.dy.T @ np.abs(h)))
    assert N.LONG_BATCH_MAX / 2 < biggest <= N.LONG_BATCH_MAX


class _BatchSumLambdaB(Bn.BatchSumInStorage):
    sums = ("lambda_b",)  # only d lambda_b's batch sum in the dtype (tools/planted/p12)


class _BatchSumLambdaD(Bn.BatchSumInStorage):
    sums = ("lambda_d",)


@pytest.mark.parametrize("cls,what", [(Bn.BatchSumInStorage, "d_lambda_d"), (_BatchSumLambdaB, "d_lambda_b"),
                                      (_BatchSumLambdaD, "d_lambda_d")])
def test_a_batch_sum_in_the_dtype_is_caught_where_random_signs_hide_it(cls, what):
    for dtype in ("float16", "bfloat16"):
        # the layer cases (N <= 128, random signs) pass it: its error stays inside the bound there
        res = run(cls(), "x:y", ["cpu"], [dtype], 6, only=["backward", "numerics"], echo=lambda s: None)
        assert [r.status for r in res] == ["passed", "failed"], [r.reason for r in res]
        assert res[1].case["kind"] == "long_batch" and res[1].worst_ratio > 5
        assert res[1].reason.startswith(f"long_batch (r 4, in 16, out 16, N 2048) {what}: ")
    for dtype in ("float32", "float64"):  # a float32 sum in float32 is binary32 accumulation: conforming
        res = run(cls(), "x:y", ["cpu"], [dtype], 1, only=["numerics"], echo=lambda s: None)[0]
        assert res.status == "passed", res.reason


def test_long_batch_passes_a_binary32_batch_sum_with_margin():
    # the reference sums over the batch in binary32 after rounding each product to the dtype
    for dtype in ("float16", "bfloat16", "float32"):
        res = run(Reference(), "x:y", ["cpu"], [dtype], 1, only=["numerics"], case=BY_KIND["long_batch"],
                  echo=lambda s: None)[0]
        assert res.status == "passed" and res.worst_ratio < 0.5, (dtype, res.reason)
        assert "long_batch r 4 in 16 out 16 N 2048: " in res.note


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_near_max_keeps_every_intermediate_in_range(dtype):
    c, cm = _case("near_max", dtype)
    top = N.DTYPE_MAX[S.storage(dtype)]
    ax, A_l = np.abs(c.x), np.abs(c.A[:, :c.in_features]).astype(np.float64)
    W = np.abs(c.W if c.layout == "linear" else c.W.T)
    h = ax @ A_l.T
    v = (h * np.abs(c.lambda_d)) @ np.abs(c.B[:c.out_features]).astype(np.float64).T
    S_y = ax @ W.T + v * np.abs(c.lambda_b)
    biggest = max(float(np.max(a)) for a in (h, v, S_y))
    assert top / 16 < biggest <= top / 8  # near the limit, and every partial sum (<= S) stays finite
    assert np.all(np.isfinite(vera_ref.forward(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout,
                                               dtype=dtype)))


def test_the_reference_passes_in_every_dtype_with_its_margin():
    for dtype in ("float32", "float16", "bfloat16", "float64"):
        res = run(Reference(), "x:y", ["cpu"], [dtype], 1, only=["numerics"], echo=lambda s: None)[0]
        assert res.status == "passed", res.reason
        assert 0 <= res.worst_ratio < 1 and res.examples == len(N.CASES)
        assert res.note.startswith("worst error / bound per case: long_in r 64 in 16384 out 48: ")
        assert res.tolerance["accumulation"] == ("binary64" if dtype == "float64" else "binary32")


class _NaiveKernel(Bk.AccumulateInStorage):
    block = 1  # every product added to a float16 partial sum


def test_a_wrong_accumulator_is_caught_where_random_signs_hide_it():
    # a naive kernel accumulating in float16: the random-sign forward check passes it, numerics does not
    fwd = run(_NaiveKernel(), "x:y", ["cpu"], ["float16"], 4, only=["forward", "numerics"], echo=lambda s: None)
    assert [r.status for r in fwd] == ["passed", "failed"]
    assert fwd[1].worst_ratio > 2 and fwd[1].reason.startswith("long_in (r 64, in 16384, out 48, N 4) ")
    assert fwd[1].case["kind"] == "long_in"
    # split-K with bfloat16 reductions (the shipped broken implementation): caught in bfloat16
    res = run(Bk.AccumulateInStorage(), "x:y", ["cpu"], ["bfloat16"], 1, only=["numerics"], echo=lambda s: None)[0]
    assert res.status == "failed" and res.worst_ratio > 4
    # its repro replays that case alone
    again = run(Bk.AccumulateInStorage(), "x:y", ["cpu"], ["bfloat16"], 1, only=["numerics"], case=res.case,
                echo=lambda s: None)[0]
    assert again.status == "failed" and again.worst_ratio == res.worst_ratio


def test_bfloat16_computed_in_float16_overflows_near_max():
    res = run(Bk.BFloat16ThroughFloat16(), "x:y", ["cpu"], ["bfloat16", "float16"], 1, only=["numerics"],
              echo=lambda s: None)
    assert [r.status for r in res] == ["failed", "passed"]
    assert res[0].case["kind"] == "near_max" and "non-finite outputs" in res[0].reason


def test_vector_gradients_as_rows_are_squeezed():
    assert N._vec(np.ones((1, 5)), 5).shape == (5,) and N._vec(np.ones((5, 5)), 5).shape == (5, 5)
    assert N._vec(np.ones((1, 1)), 1).shape == (1,)


def test_a_case_must_name_its_kind():
    chk = next(c for c in K.CHECKS if c.name == "numerics")
    with pytest.raises(KeyError, match="kind must be one of"):
        chk.run(Reference(), "cpu", "float32", 1, case=dict(BY_KIND["near_max"], kind="bogus"))


def test_thorough_adds_real_layers_everywhere():
    assert N.cases() == N.CASES and len(S.explicit()) == len(S.EXPLICIT)
    with S.level(True):
        assert N.cases() == N.CASES + N.THOROUGH and len(S.explicit()) == len(S.EXPLICIT + S.THOROUGH_EXPLICIT)
        assert max(s["r"] for s in N.THOROUGH) == 1024 and any(s["kind"] == "random" for s in N.THOROUGH)
        assert max(s["in_features"] * s["out_features"] for s in S.THOROUGH_EXPLICIT) == 4096 * 4096
    assert not S.thorough()  # the level is restored


def test_thorough_reaches_the_runner(monkeypatch):
    monkeypatch.setattr(N, "THOROUGH", [N._spec("random", 3, 9, 5, 2, n_in=12, values_seed=3)])
    out = run(Reference(), "x:y", ["cpu"], ["float32"], 1, only=["numerics"], echo=lambda s: None, thorough=True)[0]
    assert out.status == "passed" and out.examples == len(N.CASES) + 1 and "random r 3 in 9 out 5" in out.note
    out = run(Reference(), "x:y", ["cpu"], ["float32"], 1, only=["numerics"], echo=lambda s: None)[0]
    assert out.examples == len(N.CASES)
