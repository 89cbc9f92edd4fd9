"""Sharper tests for the layer math and dtypes (spec 3, 3.8, 5.2), written to kill surviving
mutants of vera_ref/layer.py and vera_ref/dtypes.py (tools/mutate.py, issue 15).

Expected values: spec 3.2/3.4/3.5 written out in float64 with plain NumPy, spec 3.8's
low-precision rule recomputed step by step in float32, np.finfo for the machine constants,
and hand-picked numbers whose rounding is known.
"""
import numpy as np
import pytest

from vera_ref.dtypes import EPS, NAMES, TINY, check_name, compute_dtype, round_to
from vera_ref.errors import ShapeError
from vera_ref.layer import backward, delta_weight, forward, merge, unmerge
from vera_ref.projection import projection


def case(seed=0, N=4, in_f=5, out_f=3, r=4, extra=(2, 1)):
    rng = np.random.default_rng(seed)
    A, B = projection(seed, r, in_f + extra[0], out_f + extra[1])
    x = rng.normal(size=(N, in_f))
    W = rng.normal(size=(out_f, in_f))
    b = rng.normal(size=out_f)
    ld, lb = rng.normal(size=r), rng.normal(size=out_f)
    return x, W, b, A, B, ld, lb


# -- dtypes (spec 5.2) -------------------------------------------------------------------------------

def test_machine_constants_are_ieee_and_bfloat16():
    for name in ("float64", "float32", "float16"):
        assert EPS[name] == float(np.finfo(name).eps)
        assert TINY[name] == float(np.finfo(name).smallest_normal)
    assert EPS["bfloat16"] == 2.0**-7  # 8 significant bits
    assert TINY["bfloat16"] == float(np.finfo(np.float32).smallest_normal)  # float32's exponent range
    assert NAMES == ("float64", "float32", "float16", "bfloat16")


@pytest.mark.parametrize("given,name", [("float16", "float16"), ("bfloat16", "bfloat16"), (np.float32, "float32"),
                                        (np.dtype("float64"), "float64"), (np.float16, "float16")])
def test_check_name_accepts_names_and_numpy_dtypes(given, name):
    assert check_name(given) == name
    assert compute_dtype(given) == np.dtype(np.float32 if name == "bfloat16" else name)


@pytest.mark.parametrize("bad", ["int8", np.int32, "bf16", "float128"])
def test_check_name_refuses_other_dtypes(bad):
    with pytest.raises(ValueError, match=r"^dtype must be one of float64, float32, float16, bfloat16, got "):
        check_name(bad)


# -- shape checks (spec 3.1): one clear message each --------------------------------------------------

def test_shape_errors_are_named():
    x, W, b, A, B, ld, lb = case()
    bad = {
        r"^layout must be 'linear' or 'conv1d', got 'Linear'$": dict(layout="Linear"),
        r"^W must be 2-D, got shape \(15,\)$": dict(W=W.ravel()),
        r"^A and B must be 2-D, got shapes \(28,\) and \(4, 4\)$": dict(A=A.ravel()),
        r"^A and B must be 2-D, got shapes \(4, 7\) and \(16,\)$": dict(B=B.ravel()),
        r"^A is \(r=4, n_in\) but B is \(4, 3\): B must be \(n_out, r=4\)$": dict(B=B[:, :3]),
        r"^layer \(in=5, out=3\) is larger than the projection \(n_in=4, n_out=4\)$": dict(A=A[:, :4]),
        r"^layer \(in=5, out=3\) is larger than the projection \(n_in=7, n_out=2\)$": dict(B=B[:2]),
        r"^lambda_d must have shape \(4,\), got \(3,\)$": dict(ld=ld[:3]),
        r"^lambda_b must have shape \(3,\), got \(4,\)$": dict(lb=np.ones(4)),
        r"^x must have shape \(\.\.\., 5\), got \(4, 6\)$": dict(x=np.ones((4, 6))),
        r"^x must have shape \(\.\.\., 5\), got \(\)$": dict(x=np.float64(1.0)),
        r"^bias must have shape \(3,\), got \(1, 3\)$": dict(b=b[None, :]),
    }
    for msg, over in bad.items():
        a = {**dict(x=x, W=W, b=b, A=A, B=B, ld=ld, lb=lb, layout="linear"), **over}
        with pytest.raises(ShapeError, match=msg):
            forward(a["x"], a["W"], a["b"], a["A"], a["B"], a["ld"], a["lb"], layout=a["layout"])
    # the checks shared by backward and merge
    with pytest.raises(ShapeError, match=r"^W must be 2-D"):
        merge(W[None], A, B, ld, lb)
    with pytest.raises(ShapeError, match=r"^lambda_b must have shape \(3,\)"):
        unmerge(W, A, B, ld, lb[:2])
    with pytest.raises(ShapeError, match=r"^dy must have shape \(4, 3\), got \(4, 2\)$"):
        backward(x, W, A, B, ld, lb, np.ones((4, 2)))


def test_a_one_dimensional_x_is_one_row():
    x, W, b, A, B, ld, lb = case()
    np.testing.assert_allclose(forward(x[0], W, b, A, B, ld, lb), forward(x[:1], W, b, A, B, ld, lb)[0], rtol=1e-13)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_outside_0_1_is_refused(p):
    x, W, b, A, B, ld, lb = case()
    with pytest.raises(ShapeError, match=rf"^dropout must be in \[0, 1\), got {p}$"):
        forward(x, W, b, A, B, ld, lb, dropout_mask=np.ones_like(x), dropout=p)


def test_dropout_mask_shape_is_checked():
    x, W, b, A, B, ld, lb = case()
    with pytest.raises(ShapeError, match=r"^dropout_mask must have the shape of x \(4, 5\), got \(4, 4\)$"):
        forward(x, W, b, A, B, ld, lb, dropout_mask=np.ones((4, 4)), dropout=0.5)
    with pytest.raises(ShapeError, match=r"^dropout_mask must have the shape of x"):
        backward(x, W, A, B, ld, lb, np.ones((4, 3)), dropout_mask=np.ones((4, 4)), dropout=0.5)


def test_a_mask_without_a_rate_is_applied_unscaled():
    """spec 3.3 with p = 0 (the default): dropout(x) = x * mask."""
    x, W, b, A, B, ld, lb = case()
    mask = (np.arange(x.size).reshape(x.shape) % 3 != 0).astype(float)
    A_l, B_l = A[:, :5], B[:3, :]
    want = x @ W.T + b + lb * (((x * mask) @ A_l.T * ld) @ B_l.T)
    np.testing.assert_allclose(forward(x, W, b, A, B, ld, lb, dropout_mask=mask), want, rtol=1e-12, atol=1e-12)
    g = backward(x, W, A, B, ld, lb, np.ones((4, 3)), dropout_mask=mask)
    want_dx = np.ones((4, 3)) @ W + ((np.ones((4, 3)) * lb) @ B_l * ld) @ A_l * mask
    np.testing.assert_allclose(g.x, want_dx, rtol=1e-12, atol=1e-12)


# -- defaults of delta_weight / merge / unmerge --------------------------------------------------------

def test_delta_weight_and_unmerge_defaults_are_linear_float64():
    x, W, b, A, B, ld, lb = case(in_f=5, out_f=3)
    A_l, B_l = A[:, :5], B[:3, :]
    want = (lb[:, None] * B_l) @ (ld[:, None] * A_l)  # spec 3.5, (out, in)
    dW = delta_weight(A, B, ld, lb, 5, 3)
    assert dW.shape == (3, 5) and dW.dtype == np.float64
    np.testing.assert_allclose(dW, want, rtol=1e-13, atol=1e-15)
    W1 = merge(W, A, B, ld, lb)
    np.testing.assert_allclose(W1, W + want, rtol=1e-13, atol=1e-15)
    back = unmerge(W1, A, B, ld, lb)
    assert back.dtype == np.float64 and back.shape == W.shape
    np.testing.assert_allclose(back, W1 - want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(unmerge(W1.T.copy(), A, B, ld, lb, layout="conv1d"), (W1 - want).T, rtol=1e-13,
                               atol=1e-15)


# -- the low-precision path (spec 3.8) ------------------------------------------------------------------

def f32_forward(x, W, b, A, B, ld, lb):
    """spec 3.8 for dtype float32, step by step: every value float32, products in float32."""
    f = np.float32
    in_f, out_f = W.shape[1], W.shape[0]
    x, W, b = x.astype(f), W.astype(f), b.astype(f)
    A_l, B_l, ld, lb = A[:, :in_f].astype(f), B[:out_f, :].astype(f), ld.astype(f), lb.astype(f)
    base = x @ W.T.astype(f) + b
    h = x @ A_l.T.astype(f)
    v = (h * ld) @ B_l.T.astype(f)
    return base + v * lb


def test_float32_path_accumulates_in_float32():
    x, W, b, A, B, ld, lb = case(seed=3, N=6, in_f=300, out_f=40, r=64, extra=(0, 0))
    got = forward(x, W, b, A, B, ld, lb, dtype="float32")
    assert got.dtype == np.float32
    want = f32_forward(x, W, b, A, B, ld, lb)
    assert np.array_equal(got, want), np.max(np.abs(got - want))
    ref = forward(x, W, b, A, B, ld, lb)  # float64: differs from the float32 path (the check can fail)
    assert not np.array_equal(got.astype(np.float64), ref)


def test_float32_path_gradients_sum_in_float32():
    x, W, b, A, B, ld, lb = case(seed=4, N=200, in_f=30, out_f=20, r=16, extra=(0, 0))
    dy = np.random.default_rng(9).normal(size=(200, 20))
    g = backward(x, W, A, B, ld, lb, dy, dtype="float32")
    f = np.float32
    x32, W32, dy32 = x.astype(f), W.astype(f), dy.astype(f)
    A32, B32, ld32, lb32 = A.astype(f), B.astype(f), ld.astype(f), lb.astype(f)
    h = x32 @ A32.T.astype(f)
    v = (h * ld32) @ B32.T.astype(f)
    gB = (dy32 * lb32) @ B32
    assert np.array_equal(g.lambda_b, np.sum(dy32 * v, axis=0, dtype=f))
    assert np.array_equal(g.lambda_d, np.sum(gB * h, axis=0, dtype=f))
    assert g.lambda_b.dtype == g.lambda_d.dtype == np.float32


def test_low_precision_inputs_are_rounded_once_from_float64():
    """1 + 2^-11 + 2^-30 is above the float16 midpoint 1 + 2^-11: it rounds up to 1 + 2^-10.
    Rounding through float32 first would land on the midpoint and round to even (1.0)."""
    v = 1 + 2.0**-11 + 2.0**-30
    A, B = projection(0, 1, 1, 1)
    got = forward(np.array([[v]]), np.array([[1.0]]), None, A, B, np.zeros(1), np.zeros(1), dtype="float16")
    assert got.dtype == np.float16 and float(got[0, 0]) == 1 + 2.0**-10
    assert float(round_to(np.array([v]), "float16")[0]) == 1 + 2.0**-10


# -- bfloat16 rounding (spec 4.5): nearest even, written out with exact fractions --------------------

def nearest_bf16_bits(f32: np.float32) -> int:
    """The bfloat16 pattern nearest to a finite float32 (ties to an even pattern), by exact comparison."""
    from fractions import Fraction
    u = int(np.array([f32], dtype=np.float32).view(np.uint32)[0])
    lo = u >> 16
    hi = lo + 1
    val = lambda bits: Fraction(float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0]))  # noqa: E731
    if (hi & 0x7F80) == 0x7F80 and (hi & 0x7F) == 0:  # the next pattern is infinity: compare with 2^128
        sign = -1 if u >> 31 else 1
        hi_val = Fraction(sign * 2**128)
    else:
        hi_val = val(hi)
    x = Fraction(float(f32))
    d_lo, d_hi = abs(x - val(lo)), abs(hi_val - x)
    if d_lo != d_hi:
        return lo if d_lo < d_hi else hi
    return lo if lo % 2 == 0 else hi


def test_bf16_rounding_is_nearest_even():
    from vera_ref.dtypes import bf16_bits, bf16_from_bits
    rng = np.random.default_rng(5)
    patterns = np.concatenate([
        rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32),
        np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF808000, 0xBF818000,  # ties both ways, +-
                  0x00008000, 0x00018000, 0x7F7F8000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x80000001, 0],
                 dtype=np.uint32)])
    x = patterns.view(np.float32)
    x = x[np.isfinite(x)]
    got = bf16_bits(x)
    assert got.dtype == np.uint16
    want = [nearest_bf16_bits(v) for v in x]
    assert [int(g) for g in got] == want
    back = bf16_from_bits(got)
    assert back.dtype == np.float32
    assert np.array_equal(back.view(np.uint32), got.astype(np.uint32) << 16)
    np.testing.assert_array_equal(round_to(x, "bfloat16").view(np.uint32), got.astype(np.uint32) << 16)


def test_bf16_nans_stay_quiet_nans_with_their_sign():
    from vera_ref.dtypes import bf16_bits
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7FA00000],
                    dtype=np.uint32).view(np.float32)
    got = [int(b) for b in bf16_bits(nans)]
    assert got == [0x7FC0, 0xFFC0, 0x7FC0, 0xFFC0, 0x7FFF, 0x7FE0]
    assert [int(b) for b in bf16_bits(np.array([np.inf, -np.inf], np.float32))] == [0x7F80, 0xFF80]
