"""spec 5.2.3: the bound holds for every summation order and any use of fma a BLAS may choose.

The reference math of spec 3 is evaluated as a low-precision kernel would (spec 5.2.3's model:
sums accumulated in binary64 for float64 and in binary32 otherwise, A and B and every
intermediate rounded to the dtype) with adversarial orders: every sum forward, reversed,
pairwise, or in blocks of 8, 16 or 64 (blocks accumulated side by side, then their partial sums
in order), each with and without fused multiply-add. fma is emulated exactly: binary32 from the
exact binary64 product and an exact two-sum rounded to odd then to binary32; binary64 with
Dekker/Veltkamp's exact two-product and Boldo-Melquiond's rounding to odd. Every result is
compared with the binary64 reference under the C of ``vera_ref.tolerance.constant`` and its
margin (worst |got - ref| / bound) printed (``pytest -s``) and named in any failure. The float64
merge case of issue 21 (r = 1024, 768 -> 129, which failed C = 16 on an AVX-512 CPU) is included
with the kit's own values.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import vera_ref
from vera_ref.dtypes import round_to
from vera_ref.tolerance import PRECISION_EPS, PRECISION_TINY, backward_magnitude, constant, forward_magnitude, \
    merge_magnitude

ORDERS = ("forward", "reversed", "pairwise", "block8", "block16", "block64")
DTYPES = ("float64", "float32", "float16", "bfloat16")
MARGINS: dict[tuple, float] = {}


# --- exact arithmetic of one format, vectorized ----------------------------------------------------

def _two_sum(a, b):
    """s + e == a + b exactly (Knuth), s = fl64(a + b)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _odd(s, e):
    """Round to odd of the exact s + e, where s = RN(s + e): s itself when exact or odd, else its
    neighbour toward e (whose last bit is odd)."""
    even = (np.asarray(s, np.float64).view(np.int64) & 1) == 0
    return np.where((e != 0) & even, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)


def _split(a):
    c = 134217729.0 * a  # Veltkamp: 2^27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    """p + e == a * b exactly (Dekker), p = fl64(a * b)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _f32(x):
    return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


class Fmt:
    """Arithmetic of the accumulation format on float64 arrays holding its values."""

    def __init__(self, name: str) -> None:
        self.name = name

    def mul(self, a, b):
        return a * b if self.name == "f64" else _f32(a * b)  # a binary32 product is exact in binary64

    def add(self, a, b):
        if self.name == "f64":
            return a + b
        return _f32(_odd(*_two_sum(a, b)))  # round to odd in binary64, then to binary32: one rounding

    def fma(self, a, b, c):
        if self.name == "f32":
            return _f32(_odd(*_two_sum(a * b, c)))
        uh, ul = _two_prod(a, b)  # Boldo-Melquiond: RN(th + RO(tl + ul)) == RN(a * b + c)
        th, tl = _two_sum(c, uh)
        return th + _odd(*_two_sum(tl, ul))


def sumprod(fmt: Fmt, a, b, order: str, fma: bool, init=None):
    """sum over axis 0 of a[k] * b[k] in ``fmt`` in the given order (init: a first addend)."""
    a, b = np.broadcast_arrays(a, b)
    n = a.shape[0]
    if order in ("forward", "reversed"):
        s = init
        for k in (range(n) if order == "forward" else range(n - 1, -1, -1)):
            s = fmt.mul(a[k], b[k]) if s is None else (fmt.fma(a[k], b[k], s) if fma else fmt.add(s, fmt.mul(a[k], b[k])))
        return s
    if order == "pairwise":
        if n % 2:
            a = np.concatenate([a, np.zeros_like(a[:1])])
            b = np.concatenate([b, np.zeros_like(b[:1])])
        t = (fmt.fma(a[0::2], b[0::2], fmt.mul(a[1::2], b[1::2])) if fma
             else fmt.add(fmt.mul(a[0::2], b[0::2]), fmt.mul(a[1::2], b[1::2])))
        while t.shape[0] > 1:
            if t.shape[0] % 2:
                t = np.concatenate([t, np.zeros_like(t[:1])])
            t = fmt.add(t[0::2], t[1::2])
        return t[0] if init is None else fmt.add(init, t[0])
    bs = int(order[5:])
    pad = (-n) % bs
    if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:])])
        b = np.concatenate([b, np.zeros((pad,) + b.shape[1:])])
    a = a.reshape((-1, bs) + a.shape[1:])
    b = b.reshape((-1, bs) + b.shape[1:])
    s = fmt.mul(a[:, 0], b[:, 0])  # every block at once, its terms in order
    for j in range(1, bs):
        s = fmt.fma(a[:, j], b[:, j], s) if fma else fmt.add(s, fmt.mul(a[:, j], b[:, j]))
    total = init
    for p in s:
        total = p if total is None else fmt.add(total, p)
    return total


class Kernel:
    """The VeRA math of spec 3 in one dtype, one order, fma or not (spec 5.2.3's model)."""

    def __init__(self, dtype: str, order: str, fma: bool) -> None:
        self.dtype, self.order, self.use_fma = dtype, order, fma
        self.fmt = Fmt("f64" if dtype == "float64" else "f32")

    def rd(self, x):  # the dtype's rounding of a binary32 (or binary64 for float64) value
        if self.dtype == "float64":
            return x
        x = _f32(x)
        return x if self.dtype == "float32" else round_to(x.astype(np.float32), self.dtype).astype(np.float64)

    def mm(self, P, Q, init=None):  # P (m, n) @ Q (n, p)
        return sumprod(self.fmt, P.T[:, :, None], Q[:, None, :], self.order, self.use_fma, init)

    def mul(self, a, b):
        return self.rd(self.fmt.mul(a, b))

    def add(self, a, b):
        return self.rd(self.fmt.add(a, b))

    def forward(self, x, W, bias, A, B, ld, lb):
        A, B = self.rd(A), self.rd(B)
        h = self.rd(self.mm(x, A.T))  # (N, r)
        v = self.rd(self.mm(self.mul(h, ld), B.T))  # (N, out)
        base = self.add(self.rd(self.mm(x, W.T)), bias)
        return self.add(base, self.mul(v, lb))

    def forward_merged(self, x, W, bias, A, B, ld, lb):  # x (W0 + Delta W)^T + bias
        return self.add(self.rd(self.mm(x, self.merge(W, A, B, ld, lb).T)), bias)

    def merge(self, W, A, B, ld, lb, w0_first=False):
        P, Q = self.mul(lb[:, None], self.rd(B)), self.mul(ld[:, None], self.rd(A))  # (out, r), (r, in)
        if w0_first:  # W0 as the first addend of the sum (addmm)
            return self.rd(self.mm(P, Q, init=W))
        return self.add(W, self.rd(self.mm(P, Q)))

    def backward(self, x, W, A, B, ld, lb, dy):
        A, B = self.rd(A), self.rd(B)
        h = self.rd(self.mm(x, A.T))  # (N, r)
        v = self.rd(self.mm(self.mul(h, ld), B.T))  # (N, out)
        gB = self.rd(self.mm(self.mul(dy, lb), B))  # (N, r)
        d_lb = self.rd(sumprod(self.fmt, dy, v, self.order, self.use_fma))
        d_ld = self.rd(sumprod(self.fmt, gB, h, self.order, self.use_fma))
        dx = self.add(self.rd(self.mm(dy, W)), self.rd(self.mm(self.mul(gB, ld), A)))
        return dx, d_ld, d_lb


# --- the exact emulation itself ---------------------------------------------------------------------

def test_emulated_fma_and_sums_are_correctly_rounded():
    rng = np.random.default_rng(5)
    a, b, c = (rng.normal(size=400) * 2.0 ** rng.integers(-30, 30, 400) for _ in range(3))
    c[:50] = -a[:50] * b[:50]  # heavy cancellation
    for name, rn in (("f32", lambda q: float(np.float32(q))), ("f64", float)):
        fmt = Fmt(name)
        a_, b_, c_ = (_f32(v) if name == "f32" else v for v in (a, b, c))
        for got, want in ((fmt.fma(a_, b_, c_), [Fraction(p) * Fraction(q) + Fraction(s) for p, q, s in zip(a_, b_, c_)]),
                          (fmt.add(a_, c_), [Fraction(p) + Fraction(s) for p, s in zip(a_, c_)]),
                          (fmt.mul(a_, b_), [Fraction(p) * Fraction(q) for p, q in zip(a_, b_)])):
            # correctly rounded: no value of the format lies closer to the exact result
            for g, w in zip(got, want):
                assert abs(Fraction(g) - w) <= abs(Fraction(rn(w)) - w), (name, g, float(w))
                assert g == rn(w) or abs(Fraction(g) - w) == abs(Fraction(rn(w)) - w)


# --- the bound under every order --------------------------------------------------------------------

def _case(dtype, N=9, in_f=65, out_f=33, r=64, seed=3):
    rng = np.random.default_rng(seed)
    sdt = dtype

    def vals(*shape, s=1.0):
        return round_to(rng.normal(size=shape) * s, sdt).astype(np.float64)
    x, W = vals(N, in_f), vals(out_f, in_f, s=1 / np.sqrt(in_f))
    bias, ld, lb, dy = vals(out_f), vals(r), vals(out_f), vals(N, out_f)
    A, B = vera_ref.projection(seed, r, in_f + 2, out_f + 1)
    return x, W, bias, A[:, :in_f].astype(np.float64), B[:out_f].astype(np.float64), ld, lb, dy


def _margin(key, got, ref, S, dtype, c):
    err = np.abs(np.asarray(got, np.float64) - ref)
    bound = c * PRECISION_EPS[dtype] * np.asarray(S) + PRECISION_TINY[dtype]
    m = float(np.max(err / bound))
    MARGINS[key] = max(m, MARGINS.get(key, 0.0))
    return m


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_bound_holds_for_every_order(dtype):
    x, W, bias, A, B, ld, lb, dy = _case(dtype)
    N, in_f = x.shape
    out_f, r = W.shape[0], A.shape[0]
    sizes = dict(N=N, in_features=in_f, out_features=out_f, r=r)
    y_ref = vera_ref.forward(x, W, bias, A, B, ld, lb)
    S_y = forward_magnitude(x, W, bias, A, B, ld, lb)
    g_ref = vera_ref.backward(x, W, A, B, ld, lb, dy)
    S_g = backward_magnitude(x, W, A, B, ld, lb, dy)
    m_ref = vera_ref.merge(W, A, B, ld, lb)
    S_m = merge_magnitude(W, A, B, ld, lb)
    bad, rows = [], []
    for order in ORDERS:
        for fma in (False, True):
            k = Kernel(dtype, order, fma)
            dx, d_ld, d_lb = k.backward(x, W, A, B, ld, lb, dy)
            results = [("forward", k.forward(x, W, bias, A, B, ld, lb), y_ref, S_y, "forward"),
                       ("forward (W0 + Delta W)", k.forward_merged(x, W, bias, A, B, ld, lb), y_ref, S_y, "forward"),
                       ("dx", dx, g_ref.x, S_g.x, "dx"),
                       ("d_lambda_d", d_ld, g_ref.lambda_d, S_g.lambda_d, "d_lambda_d"),
                       ("d_lambda_b", d_lb, g_ref.lambda_b, S_g.lambda_b, "d_lambda_b"),
                       ("merge", k.merge(W, A, B, ld, lb), m_ref, S_m, "merge"),
                       ("merge (W0 first)", k.merge(W, A, B, ld, lb, True), m_ref, S_m, "merge")]
            for what, got, ref, S, q in results:
                c = constant(q, dtype, **sizes)
                m = _margin((dtype, what), got, ref, S, dtype, c)
                rows.append(f"{dtype:8} {what:24} {order:8} fma={fma!s:5} C={c:8.4g} margin {m:.3g}")
                if not m <= 1:
                    bad.append(rows[-1])
    print("\n" + "\n".join(rows))
    print("worst over the orders: " + ", ".join(f"{w} {v:.3g}" for (d, w), v in MARGINS.items() if d == dtype))
    assert not bad, "bound of spec 5.2.3 exceeded:\n" + "\n".join(bad)
    # the emulation is not vacuous: it does round (a margin of 0 would compare the reference with itself)
    assert all(MARGINS[(dtype, w)] > 0 for w in ("forward", "dx", "merge"))


def test_the_float64_merge_of_issue_21_under_every_order():
    """r = 1024, 768 -> 129 (the kit's fixed boundary case, seed 99, values_seed 4): C = 16 failed
    it on an AVX-512 CPU (1.04 of 16 eps S at (91, 15)); the derived C holds for every order."""
    from vera_conformance import strategies as St
    spec = next(s for s in St.EXPLICIT if s["r"] == 1024)
    c = St.build_case(spec, "float64", "cpu")
    rows, cols = slice(84, 100), slice(0, 48)  # a block around (91, 15), every term of its sums
    A_l, B_l = c.A[:, :c.in_features].astype(np.float64), c.B[:c.out_features].astype(np.float64)
    ref = vera_ref.merge(c.W, c.A, c.B, c.lambda_d, c.lambda_b)[rows, cols]
    S = merge_magnitude(c.W, c.A, c.B, c.lambda_d, c.lambda_b)[rows, cols]
    C = constant("merge", "float64", r=c.r)
    out = []
    for order in ORDERS:
        for fma in (False, True):
            for first in (False, True):
                k = Kernel("float64", order, fma)
                got = k.merge(c.W[rows][:, cols], A_l[:, cols], B_l[rows], c.lambda_d, c.lambda_b[rows], first)
                m = _margin(("float64", "merge r=1024"), got, ref, S, "float64", C)
                old = _margin(("float64", "merge r=1024 under C=16"), got, ref, S, "float64", 16.0)
                out.append(f"float64 merge r=1024 {order:8} fma={fma!s:5} W0 first={first!s:5} C={C:.5g} "
                           f"margin {m:.3g} (under C=16: {old:.3g})")
    print("\n" + "\n".join(out))
    assert MARGINS[("float64", "merge r=1024")] <= 1, "\n".join(out)
    assert MARGINS[("float64", "merge r=1024")] > 0


def test_o_s_bugs_still_exceed_the_derived_bound():
    """A wrong slice, a missing lambda_b and an alpha/r scale stay far outside the bound in every dtype."""
    for dtype in DTYPES:
        x, W, bias, A, B, ld, lb, dy = _case(dtype, seed=4)
        sizes = dict(N=x.shape[0], in_features=x.shape[1], out_features=W.shape[0], r=A.shape[0])
        Wz = np.zeros_like(W)
        ref, S = vera_ref.forward(x, Wz, None, A, B, ld, lb), forward_magnitude(x, Wz, None, A, B, ld, lb)
        c = constant("forward", dtype, **sizes)
        for what, got in (("B rows shifted", vera_ref.forward(x, Wz, None, A, np.roll(B, 1, 0), ld, lb)),
                          ("lambda_b missing", vera_ref.forward(x, Wz, None, A, B, ld, np.ones_like(lb))),
                          ("alpha/r = 8/64", vera_ref.forward(x, Wz, None, A, B, ld, lb * 8 / 64))):
            m = float(np.max(np.abs(got - ref) / (c * PRECISION_EPS[dtype] * S + PRECISION_TINY[dtype])))
            print(f"{dtype:8} {what:18} C={c:.4g} ratio {m:.3g}")
            assert m > 1, f"{dtype} {what}: only {m:.3g} of the bound: not caught"
