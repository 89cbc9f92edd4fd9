"""spec 5.2: the bound passes correct low-precision results and fails O(S) bugs."""
import numpy as np

from vera_ref.layer import forward
from vera_ref.projection import projection
from vera_ref.tolerance import C, bound, compare, constant_factor, forward_magnitude


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    A, B = projection(seed, 8, 40, 30)
    x = rng.normal(size=(6, 32)).astype(np.float32).astype(np.float64)
    W = rng.normal(size=(24, 32)).astype(np.float32).astype(np.float64)
    b, ld, lb = rng.normal(size=24), rng.normal(size=8), rng.normal(size=24)
    return x, W, b, A, B, ld, lb


def test_constants_are_the_spec_values():
    assert C == 16.0
    assert bound(np.array([0.0]), "float16")[0] == 2.0**-14
    assert bound(np.array([1.0]), "float32")[0] == 16 * 2.0**-23 + 2.0**-126


def test_correct_float32_passes_and_o_s_bugs_fail():
    x, W, b, A, B, ld, lb = _inputs()
    ref, S = forward(x, W, b, A, B, ld, lb), forward_magnitude(x, W, b, A, B, ld, lb)
    assert compare(forward(x, W, b, A, B, ld, lb, dtype="float32"), ref, S, "float32").ok
    # a wrong slice (B's rows shifted by one) and lambda_b dropped: both must fail
    assert not compare(forward(x, W, b, A, B[1:], ld, lb), ref, S, "float32").ok
    assert not compare(forward(x, W, b, A, B, ld, np.ones_like(lb)), ref, S, "bfloat16").ok


def test_nan_and_shape_mismatch_fail():
    x, W, b, A, B, ld, lb = _inputs(1)
    ref, S = forward(x, W, b, A, B, ld, lb), forward_magnitude(x, W, b, A, B, ld, lb)
    bad = ref.copy(); bad[0, 0] = np.nan
    chk = compare(bad, ref, S, "float32")
    assert not chk.ok and chk.worst_index == (0, 0)
    assert not compare(ref[:, :3], ref, S, "float32").ok
    assert "C=16" in compare(ref, ref, S, "float32").describe()


def test_tf32_is_its_own_precision():
    # spec 5.2.2: binary32 storage, eps 2^-10, tiny 2^-126
    assert bound(np.array([1.0]), "tf32")[0] == 16 * 2.0**-10 + 2.0**-126
    x, W, b, A, B, ld, lb = _inputs(2)
    ref, S = forward(x, W, b, A, B, ld, lb), forward_magnitude(x, W, b, A, B, ld, lb)
    tf32 = lambda a: np.round(np.asarray(a) * 2.0**10 / 2.0**np.floor(np.log2(np.abs(a) + 1e-300))) \
        * 2.0**np.floor(np.log2(np.abs(a) + 1e-300)) / 2.0**10  # noqa: E731  (11 significant bits)
    got = forward(tf32(x), tf32(W), b, tf32(A), tf32(B), ld, lb)
    assert not compare(got, ref, S, "float32").ok and compare(got, ref, S, "tf32").ok


def test_failure_names_values_and_a_constant_factor():
    x, W, b, A, B, ld, lb = _inputs(3)
    Wz = np.zeros_like(W)
    ref, S = forward(x, Wz, None, A, B, ld, lb), forward_magnitude(x, Wz, None, A, B, ld, lb)
    chk = compare(forward(x, Wz, None, A, B, ld, lb * 8.0), ref, S, "bfloat16")
    assert not chk.ok and chk.factor == 8.0 and "x8 the reference everywhere" in chk.describe()
    i = chk.worst_index
    assert chk.got == 8.0 * ref[i] and chk.ref == ref[i]
    assert constant_factor(ref, ref) is None and constant_factor(ref + 1.0, ref) is None
