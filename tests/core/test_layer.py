"""spec 3: forward, backward, merge, unmerge, layouts, low-precision path."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import VECTORS
from vera_ref.errors import ShapeError
from vera_ref.layer import backward, forward, merge, unmerge
from vera_ref.projection import projection
from vera_ref.tolerance import backward_magnitude, compare, constant, forward_magnitude, merge_magnitude
from vera_ref.vectors import unbits


def _case(seed, N, in_f, out_f, r, extra=(0, 0), dropout=0.0):
    rng = np.random.default_rng(seed)
    A, B = projection(seed, r, in_f + extra[0], out_f + extra[1])
    x = rng.normal(size=(N, in_f)); W = rng.normal(size=(out_f, in_f)); b = rng.normal(size=out_f)
    ld = rng.normal(size=r); lb = rng.normal(size=out_f); dy = rng.normal(size=(N, out_f))
    mask = (rng.random((N, in_f)) >= dropout).astype(float) if dropout else None
    return x, W, b, A, B, ld, lb, dy, mask


dims = dict(seed=st.integers(0, 10**6), N=st.integers(1, 5), in_f=st.integers(1, 9), out_f=st.integers(1, 9),
            r=st.integers(1, 7), extra=st.tuples(st.integers(0, 3), st.integers(0, 3)),
            dropout=st.sampled_from([0.0, 0.3]), layout=st.sampled_from(["linear", "conv1d"]))


@given(**dims)
def test_backward_equals_central_differences(seed, N, in_f, out_f, r, extra, dropout, layout):
    x, W, b, A, B, ld, lb, dy, mask = _case(seed, N, in_f, out_f, r, extra, dropout)
    W = W if layout == "linear" else W.T.copy()
    kw = dict(layout=layout, dropout_mask=mask, dropout=dropout)
    g = backward(x, W, A, B, ld, lb, dy, **kw)

    def loss(**over):
        args = {"x": x, "lambda_d": ld, "lambda_b": lb, **over}
        return float(np.sum(dy * forward(args["x"], W, b, A, B, args["lambda_d"], args["lambda_b"], **kw)))

    # the loss is linear in each of x, lambda_d and lambda_b (spec 3.2): the central difference is exact for
    # any h, and h = 1 keeps its rounding error (~ n 2^-53 S_loss / h, n < 60, S_loss < 1e4) under 1e-10 on
    # any machine, far inside the tolerance below (h = 1e-6 would make it up to ~1e-6)
    h = 1.0
    for name, arr, grad in (("x", x, g.x), ("lambda_d", ld, g.lambda_d), ("lambda_b", lb, g.lambda_b)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[i] += h
            minus[i] -= h
            num[i] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * h)
        assert np.allclose(grad, num, rtol=1e-6, atol=1e-7), name


@given(**dims)
def test_merged_weight_reproduces_forward(seed, N, in_f, out_f, r, extra, dropout, layout):
    x, W, b, A, B, ld, lb, _, _ = _case(seed, N, in_f, out_f, r, extra)
    W = W if layout == "linear" else W.T.copy()
    Wm = merge(W, A, B, ld, lb, layout=layout)
    y_merged = x @ (Wm.T if layout == "linear" else Wm) + b
    y = forward(x, W, b, A, B, ld, lb, layout=layout)
    S = forward_magnitude(x, W, b, A, B, ld, lb, layout=layout)
    sizes = dict(N=N, in_features=in_f, out_features=out_f, r=r)
    # spec 5.2.3: the merged-weight forward has the forward's sums and counts
    chk = compare(y_merged, y, S, "float64", constant("forward", "float64", **sizes))
    assert chk.ok, chk.describe()
    back = unmerge(Wm, A, B, ld, lb, layout=layout)
    # merge then unmerge: two merges' errors, each within the merge bound of the same magnitude
    chk = compare(back, W, merge_magnitude(W, A, B, ld, lb, layout=layout), "float64",
                  2 * constant("merge", "float64", **sizes))
    assert chk.ok, chk.describe()


def test_conv1d_layout_is_the_transposed_linear():
    x, W, b, A, B, ld, lb, dy, _ = _case(5, 4, 6, 7, 3, (2, 1))
    assert np.array_equal(forward(x, W.T.copy(), b, A, B, ld, lb, layout="conv1d"), forward(x, W, b, A, B, ld, lb))
    assert np.array_equal(merge(W.T.copy(), A, B, ld, lb, layout="conv1d"), merge(W, A, B, ld, lb).T)
    g1 = backward(x, W.T.copy(), A, B, ld, lb, dy, layout="conv1d")
    g2 = backward(x, W, A, B, ld, lb, dy)
    assert all(np.array_equal(a, c) for a, c in zip(g1, g2))


def test_fresh_adapter_is_an_exact_no_op():
    """spec 3.9: lambda_b = 0 gives the base output and base weight bit for bit."""
    x, W, b, A, B, _, _, _, _ = _case(9, 3, 5, 4, 2)
    ld, lb = np.full(2, 0.1), np.zeros(4)
    assert np.array_equal(forward(x, W, b, A, B, ld, lb), x @ W.T + b)
    assert np.array_equal(merge(W, A, B, ld, lb), W)
    for dt in ("float32", "float16", "bfloat16"):
        assert np.array_equal(merge(W, A, B, ld, lb, dtype=dt), merge(W, A, B, ld, np.zeros(4), dtype=dt))


def test_dropout_applies_to_the_adapter_input_only():
    x, W, b, A, B, ld, lb, _, _ = _case(2, 3, 5, 4, 2)
    zero_mask = np.zeros_like(x)
    # with every adapter input dropped, only the base path remains: the adapter term is exactly 0, so the
    # output is the base's x @ W.T + b bit for bit (the same ops on the same arrays, as spec 3.9's no-op)
    assert np.array_equal(forward(x, W, b, A, B, ld, lb, dropout_mask=zero_mask, dropout=0.5), x @ W.T + b)
    ones = np.ones_like(x)
    scaled = forward(x, W, b, A, B, ld, lb, dropout_mask=ones, dropout=0.5)
    # no input dropped at p = 0.5: the adapter term is scaled by 1 / (1 - p) = 2, the same function as
    # lambda_b doubled; within spec 5.2's float64 forward bound of it (a missing or misplaced 1 / (1 - p)
    # is off by the adapter term, O(S))
    twice = (x, W, b, A, B, ld, 2 * lb)
    chk = compare(scaled, forward(*twice), forward_magnitude(*twice), "float64",
                  constant("forward", "float64", N=3, in_features=5, out_features=4, r=2))
    assert chk.ok, chk.describe()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_path_within_tolerance(dtype):
    from vera_ref.dtypes import round_to
    x, W, b, A, B, ld, lb, dy, _ = _case(11, 8, 64, 48, 16, (4, 4))
    x, W, b, ld, lb, dy = (round_to(a, dtype).astype(np.float64) for a in (x, W, b, ld, lb, dy))
    sizes = dict(N=8, in_features=64, out_features=48, r=16)  # spec 5.2.3: C from this case's sums
    got = forward(x, W, b, A, B, ld, lb, dtype=dtype)
    chk = compare(got, forward(x, W, b, A, B, ld, lb), forward_magnitude(x, W, b, A, B, ld, lb), dtype,
                  constant("forward", dtype, **sizes))
    assert chk.ok, chk.describe()
    g = backward(x, W, A, B, ld, lb, dy, dtype=dtype)
    ref, S = backward(x, W, A, B, ld, lb, dy), backward_magnitude(x, W, A, B, ld, lb, dy)
    for q, got_i, ref_i, S_i in zip(("dx", "d_lambda_d", "d_lambda_b"), g, ref, S):
        chk = compare(got_i, ref_i, S_i, dtype, constant(q, dtype, **sizes))
        assert chk.ok, (q, chk.describe())


def test_math_vectors():
    env = json.loads((VECTORS / "math.json").read_text())
    for c in env["testGroups"][0]["tests"]:
        dt = c["dtype"]
        inp = {k: unbits(v["bits"], dt).astype(np.float64).reshape(v["shape"]) for k, v in c["inputs"].items()}
        A, B = projection(int(c["seed"]), c["r"], c["n_in"], c["n_out"])
        kw = dict(layout=c["layout"], dropout_mask=inp.get("dropout_mask"), dropout=c["dropout"])
        y = forward(inp["x"], inp["W"], inp["bias"], A, B, inp["lambda_d"], inp["lambda_b"], **kw)
        g = backward(inp["x"], inp["W"], A, B, inp["lambda_d"], inp["lambda_b"], inp["dy"], **kw)
        Wm = merge(inp["W"], A, B, inp["lambda_d"], inp["lambda_b"], layout=c["layout"])
        for name, got in (("y", y), ("dx", g.x), ("dlambda_d", g.lambda_d), ("dlambda_b", g.lambda_b),
                          ("W_merged", Wm)):
            ref = unbits(c["expected"][name]["bits"], "float64").reshape(c["expected"][name]["shape"])
            S = unbits(c["magnitude"][name]["bits"], "float64").reshape(c["magnitude"][name]["shape"])
            assert np.array_equal(got, ref), (c["tcId"], name)  # same reference code: bit-exact
            # got is ref (asserted): rounding it to binary32 errs by <= 2^-24 |ref| <= 2^-24 S, inside C = 16
            # on any machine; checks that the stored magnitude S is at least |ref|
            assert compare(got.astype(np.float32), ref, S, "float32").ok or dt == "float64"


@pytest.mark.parametrize("call,message", [
    (lambda a: forward(np.ones((2, 3)), np.ones((4, 3)), None, *a, np.ones(2), np.ones(5)),
     r"lambda_b must have shape \(4,\), got \(5,\)"),
    (lambda a: forward(np.ones((2, 3)), np.ones((4, 3)), None, *a, np.ones(3), np.ones(4)),
     r"lambda_d must have shape \(2,\), got \(3,\)"),
    (lambda a: forward(np.ones((2, 9)), np.ones((4, 9)), None, *a, np.ones(2), np.ones(4)),
     r"layer \(in=9, out=4\) is larger than the projection \(n_in=5, n_out=6\)"),
    (lambda a: forward(np.ones((2, 4)), np.ones((4, 3)), None, *a, np.ones(2), np.ones(4)),
     r"x must have shape \(\.\.\., 3\), got \(2, 4\)"),
    (lambda a: merge(np.ones((4, 3)), *a, np.ones(2), np.ones(4), layout="conv2d"),
     r"layout must be 'linear' or 'conv1d', got 'conv2d'"),
])
def test_shape_errors_are_named(call, message):
    with pytest.raises(ShapeError, match="^" + message + "$"):
        call(projection(0, 2, 5, 6))


@pytest.mark.parametrize("vector_dtype, want", [
    # 1 + 2^-8 + 2^-30 (binary64), by hand: binary32 keeps 1 + 2^-8 (2^-30 is under half its ulp 2^-23),
    # a tie in bfloat16 (ulp 2^-7) that goes to even: 1.0. One direct rounding would give 1 + 2^-7.
    ("bfloat16", 1.0),
    ("float32", 1 + 2**-8),  # 2^-30 < half of binary32's ulp at 1
    ("float64", 1 + 2**-8 + 2**-30),
])
def test_d_initial_rounds_through_binary32_into_bfloat16(vector_dtype, want):
    """spec 3.9: d_initial rounded into vector_dtype; into bfloat16 through binary32 (PyTorch's casts)."""
    from vera_ref import ModuleSpec, new_adapter
    from vera_ref.dtypes import round_to
    d = 1 + 2**-8 + 2**-30
    assert round_to(np.array([d]), vector_dtype).astype(np.float64).tolist() == [want]
    ad = new_adapter([ModuleSpec("q", 4, 4)], 2, seed=1, d_initial=d, vector_dtype=vector_dtype)
    assert ad.lambda_d["q"].astype(np.float64).tolist() == [want, want]
