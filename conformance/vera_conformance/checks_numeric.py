"""Adversarial numeric cases at real sizes (spec 5.2.3): the ``numerics`` check.

Random normal values hide a wrong accumulator: their products have random signs, so a sum of
n terms stays near sqrt(n) of its magnitude S and a float16/bfloat16 accumulator's error stays
under the bound. Here the values are chosen against the spec's own projections so that chosen
elements are sums of products of ONE sign (|sum| = S), over the long sums of clause 3:

    long_in    x[n] = sign(A[k_n]) * m: h[n, k_n] = sum over in (16384) of non-negative products;
               W0[o] has the signs of x[o mod N]: the base term y[n, n] is one-sign over in too,
               and y[0, 0]'s base a sum of equal terms (|x[0]| = 1, |W0[0]| = 2^-j)
    long_r     lambda_d = sign(h[0] * B[0]) * m: y[0, 0]'s adapter term is one-sign over r (1024);
               merge gets lambda_d = sign(B[0] * A[:, 0]) * m: Delta W[0, 0] one-sign over r
    long_out   dy[0] = sign(W0[:, 0]) (|W0[:, 0]| = 2^-j) and dy[1] = sign(lambda_b * B[:, 0]) * m: dx[0, 0] and
               (dy lambda_b) B_l [1, 0] (inside dx and d lambda_d) are one-sign over out (16384)
    near_max   long_in values scaled by a power of two so that the magnitude of every intermediate
               of clause 3 lies in (max/16, max/8] of the dtype: no conforming implementation
               overflows (every partial sum is at most S), one that computes bfloat16 in float16 does
    long_batch N = 2048 rows: d lambda_b[o] = sum over N of dy * v and d lambda_d[0] = sum over N of
               (dy lambda_b B_l)[:, 0] * h[:, 0] are one-sign over the batch (x[n] = sign(A[0]) * m,
               lambda_d[k > 0] small so that v has the sign of lambda_d[0] B[:, 0], dy = sign(v) * m);
               in, out and r are small, the batch is the long sum

Recursive summation in the storage dtype stagnates on such sums (2048 + 1 = 2048 in float16) and
fails by orders of magnitude; binary32 accumulation passes with the margin printed. The bounds are
those of vera_ref.tolerance (spec 5.2.3, derived C), never fitted here.

Why N = 2048 for long_batch (spec 5.2.3). Its bound allows |error| <= C eps S with C eps = E + E_ref,
E ~ d u + a u_a: d = 13 roundings to the dtype, a = (N - 1) + (in - 1) + (r - 1) + 8 additions in
binary32, so C eps ~ 13 u + N 2^-24, about 0.0065 (float16) and 0.051 (bfloat16) at N = 2048.
A running sum in the dtype of N one-sign terms t (within a factor 4 of each other here) errs by up
to u |partial sum| per addition: about u sqrt(N) S while those errors are random, and, once the
partial sum reaches 2^(p-1) t (p = 11 significant bits in float16, 8 in bfloat16; its ulp is then
t, a term's size), by a fixed fraction of every later term: relative error growing like N u, no longer
sqrt(N) u. bfloat16 gets there after about 2^7-2^8 terms, float16 after about 2^10-2^11 terms: N = 2048
= 2^11 is the smallest power of two at which either batch sum in either dtype is wrong by about 10 %,
several times the bound (tests/conformance/test_numeric_cases.py; the same case at other N, ratio
|error| / bound of d lambda_b, d lambda_d summed in the dtype: N 512: float16 0.84 (passes), 1.14;
N 1024: float16 2.2, 1.4; N 2048: float16 9.2, 8.3, bfloat16 14.7, 14.0). The N - 1 binary32
additions add N 2^-24 = 2^-13 to C eps: binary32 accumulation stays far inside (the reference's d
lambda_b in float16: 0.09).

``--thorough`` adds real layers with random values (in = out = 4096, r = 1024, n_in = n_out = 16384
and the long sums at r = 1024).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vera_ref.dtypes import round_to

from . import strategies as S
from .check_base import _C, _USED_C, Check, Mismatch, Outcome, _build, _crash, _expect, _layouts, _tol
from .checks_math import _backward_ref, _forward_ref, _gradients, _merge_ref, _twin
from .protocol import LayerCase, NoGradient

# the largest finite value of each storage dtype
DTYPE_MAX = {"float64": float(np.finfo(np.float64).max), "float32": float(np.finfo(np.float32).max),
             "float16": 65504.0, "bfloat16": float.fromhex("0x1.fep127")}


def _spec(kind: str, r: int, in_f: int, out_f: int, N: int, *, n_in: int | None = None, n_out: int | None = None,
          seed: int = 2**64 - 1, values_seed: int = 1) -> dict:
    s = S._spec(S._size(r, in_f, out_f, N), seed=seed, n_in_pad=(n_in or in_f) - in_f,
                n_out_pad=(n_out or out_f) - out_f, bias=True, values_seed=values_seed)
    return {"kind": kind, **s}


# default level: a few large cases (sizes of real models: 16384 rows and columns, r 1024)
CASES = [
    _spec("long_in", 64, 16384, 48, 4, values_seed=1),
    _spec("long_r", 1024, 96, 256, 2, n_in=97, n_out=260, seed=7, values_seed=2),
    _spec("long_out", 32, 64, 16384, 2, seed=2**32, values_seed=3),
    _spec("near_max", 16, 512, 32, 2, n_in=515, seed=5, values_seed=4),
    _spec("long_batch", 4, 16, 16, 2048, n_in=19, n_out=21, seed=2**48 + 3, values_seed=10),
]
# --thorough: more and larger (random values at real layer sizes, long sums at r 1024)
THOROUGH = [
    _spec("long_in", 1024, 16384, 64, 4, n_out=16384, seed=3, values_seed=5),
    _spec("long_r", 1024, 1024, 4096, 4, n_in=16384, n_out=16384, seed=11, values_seed=6),
    _spec("random", 1024, 4096, 4096, 8, n_in=16384, n_out=16384, seed=12345, values_seed=7),
    _spec("random", 256, 16384, 1024, 4, n_out=4096, seed=2**63, values_seed=8),
    _spec("near_max", 1024, 4096, 256, 4, n_in=16384, seed=9, values_seed=9),
]
KINDS = ("long_in", "long_r", "long_out", "near_max", "long_batch", "random")
LONG_BATCH_MAX = 2.0**10  # long_batch: the largest magnitude of any intermediate (far below float16's 65504)


def cases() -> list[dict]:
    return CASES + (THOROUGH if S.thorough() else [])


def _sign(a) -> np.ndarray:
    return np.where(np.asarray(a) < 0, -1.0, 1.0)


def _weight(c: LayerCase, W_lin: np.ndarray) -> np.ndarray:
    return W_lin if c.layout == "linear" else W_lin.T


def _w_lin(c: LayerCase) -> np.ndarray:
    return c.W if c.layout == "linear" else c.W.T  # (out, in)


def _scale_to(mags, limit: float) -> int:
    """The exponent e for which 2^e puts the largest of ``mags`` in (limit/2, limit] (np.ldexp
    applies it exactly: 2^e alone may not be a float64)."""
    m = max(float(np.max(a)) for a in mags if a is not None and np.size(a))
    return int(np.floor(np.log2(limit) - np.log2(m)))


def adversarial(c: LayerCase, kind: str, values_seed: int) -> tuple[LayerCase, LayerCase]:
    """(the case for forward and backward, the case for merge) with the values of ``kind``."""
    if kind == "random":
        return c, c
    sdt = S.storage(c.dtype)
    rng = np.random.default_rng(values_seed + 2**32)
    N, r, in_f, out_f = c.x.shape[0], c.r, c.in_features, c.out_features

    def m(*shape, lo=0.5, hi=1.0):  # positive magnitudes, values of the dtype
        return round_to(rng.uniform(lo, hi, size=shape), sdt).astype(np.float64)
    A_l, B_l = c.A[:, :in_f].astype(np.float64), c.B[:out_f].astype(np.float64)  # (r, in), (out, r)
    if kind == "long_batch":
        out = _long_batch(c, m, A_l, B_l)
        return out, out
    x = _sign(A_l[np.arange(N) % r]) * m(N, in_f)  # (N, in): x[n] A[k_n] one-sign
    x[0] = _sign(A_l[0])  # |x[0]| = 1: with W0's row 0 below, y[0, 0]'s base is in equal terms
    w0 = 2.0 ** -round(np.log2(np.sqrt(in_f)))  # a power of two near 1/sqrt(in)
    W_mag = round_to(m(out_f, in_f) / np.sqrt(in_f), sdt).astype(np.float64)
    W_mag[0], W_mag[:, 0] = w0, w0  # equal products: a sum in the storage dtype stagnates on them
    W_lin = _sign(x[np.arange(out_f) % N]) * W_mag
    ld, lb = m(r), m(out_f)
    lb[0] = 2.0**-8  # y[:, 0] mostly its base: an error of the base sum is not hidden in the adapter's S
    dy = m(N, out_f) * _sign(rng.normal(size=(N, out_f)))
    ld_merge = ld
    if kind == "long_r":
        h0 = x[0] @ A_l.T  # (r,)
        ld = _sign(h0 * B_l[0]) * m(r)
        ld_merge = _sign(B_l[0] * A_l[:, 0]) * m(r)
    if kind == "long_out":
        dy[0] = _sign(W_lin[:, 0])  # dx[0, 0]'s base: out equal terms
        if N > 1:
            dy[1] = _sign(lb * B_l[:, 0]) * m(out_f)
    out = dataclasses.replace(c, x=x, W=_weight(c, W_lin), lambda_d=ld, lambda_b=lb, dy=dy)
    merge_case = dataclasses.replace(out, lambda_d=ld_merge)
    if kind == "near_max":
        out, merge_case = _near_max(out, sdt)
    return out, merge_case


def _long_batch(c: LayerCase, m, A_l: np.ndarray, B_l: np.ndarray) -> LayerCase:
    """One-sign sums over the batch N (spec 3.4): d lambda_b[o] = sum_n dy[n, o] v[n, o] for every o
    and d lambda_d[0] = sum_n (g B_l)[n, 0] h[n, 0] (g = dy lambda_b), so |sum| = S and a batch sum
    in the dtype shows its full error. dy is scaled by a power of two (exact) so that every
    intermediate's magnitude lies in (LONG_BATCH_MAX/2, LONG_BATCH_MAX]: no dtype overflows."""
    N, r, in_f, out_f = c.x.shape[0], c.r, c.in_features, c.out_features
    x = _sign(A_l[0]) * m(N, in_f)  # (N, in): h[n, 0] one-sign over in, > 0
    ld = m(r) * 2.0**-6  # (r,): v dominated by its k = 0 term ...
    ld[0] = m(1)[0]
    lb = m(out_f)  # (out,) > 0
    h = x @ A_l.T  # (N, r), exact in binary64 for these few terms
    v = (h * ld) @ B_l.T  # (N, out): the sign of lambda_d[0] B[o, 0] (where B[o, 0] is not tiny)
    dy = _sign(v) * m(N, out_f)  # (N, out): dy * v >= 0, and (dy lambda_b) B_l [n, 0] > 0
    ax, aW, aA, aB = np.abs(x), np.abs(_w_lin(c)), np.abs(A_l), np.abs(B_l)
    ady = np.abs(dy)
    ah = ax @ aA.T
    av = (ah * ld) @ aB.T
    gB = (ady * lb) @ aB  # (N, r)
    e = _scale_to([ady, ady * lb, gB, gB * ld, ady @ aW, (gB * ld) @ aA, ady @ aW + (gB * ld) @ aA,
                   (ady * av).sum(0), (gB * ah).sum(0), ady.T @ ah], LONG_BATCH_MAX)
    return dataclasses.replace(c, x=x, lambda_d=ld, lambda_b=lb, dy=np.ldexp(dy, e))


def _near_max(c: LayerCase, sdt: str) -> tuple[LayerCase, LayerCase]:
    """Scale x (then dy, then W0 and lambda_d for merge) by powers of two so that the magnitude of
    every intermediate of clause 3 is in (max/16, max/8]: partial sums, in any order, stay finite."""
    lim = DTYPE_MAX[sdt] / 8
    A_l, B_l = np.abs(c.A[:, :c.in_features]).astype(np.float64), np.abs(c.B[:c.out_features]).astype(np.float64)
    ax, aW = np.abs(c.x), np.abs(_w_lin(c))
    ld, lb = np.abs(c.lambda_d), np.abs(c.lambda_b)
    h = ax @ A_l.T
    v = (h * ld) @ B_l.T
    sx = _scale_to([ax, ax @ aW.T, h, h * ld, v, v * lb, ax @ aW.T + v * lb], lim)
    x = np.ldexp(c.x, sx)
    ady = np.abs(c.dy)
    g = ady * lb
    gB = g @ B_l
    h, v = np.ldexp(h, sx), np.ldexp(v, sx)  # as scaled
    sdy = _scale_to([ady, g, gB, gB * ld, ady @ aW, (gB * ld) @ A_l, ady @ aW + (gB * ld) @ A_l,
                     (h * gB).sum(0), (ady * v).sum(0)], lim)
    out = dataclasses.replace(c, x=x, dy=np.ldexp(c.dy, sdy))
    sW = _scale_to([aW], lim / 2)
    dW = (lb[:, None] * B_l * ld) @ A_l
    sld = _scale_to([ld, ld[:, None] * A_l, dW], lim / 2)
    return out, dataclasses.replace(c, W=np.ldexp(c.W, sW), lambda_d=np.ldexp(c.lambda_d, sld))


def _vec(got, n: int):
    """A vector gradient with unit axes squeezed ((1, n) -> (n,)); other shapes as returned."""
    a = np.asarray(got, dtype=np.float64)
    sq = a.reshape([d for d in a.shape if d != 1]) if a.size == n else a
    return sq.reshape(n) if sq.size == n and sq.ndim <= 1 else a


def _run_case(impl, spec: dict, dtype: str, device: str) -> float:
    c0 = _build(impl, spec, dtype, device)
    c, cm = adversarial(c0, spec["kind"], spec["values_seed"])
    s = impl.scale(c.r)
    tag = f"{spec['kind']} (r {c.r}, in {c.in_features}, out {c.out_features}, N {c.x.shape[0]})"
    worst = 0.0
    k = _C("forward", c, dtype)
    for what, case_ in (("adapter term (W0 = 0, no bias)", _twin(c)), ("y", c)):
        got = impl.forward(case_)
        if not np.all(np.isfinite(np.asarray(got, np.float64))):
            raise Mismatch(f"{tag} {what}: {int(np.sum(~np.isfinite(np.asarray(got, np.float64))))} non-finite "
                           f"outputs where every intermediate is below {S.storage(dtype)} max/8 (an overflow: "
                           "computed in a narrower format?)")
        worst = max(worst, _expect(got, *_forward_ref(case_, s), dtype, f"{tag} {what}", k))
    # backward and merge once each (no twins): the one-sign elements are built into the case itself
    if "backward" in impl.capabilities:
        ref, mag = _backward_ref(c, s)
        dx, dld, dlb = _gradients(impl.backward(c))
        got = (dx, _vec(dld, c.r), _vec(dlb, c.out_features))
        for g, r_, m_, what in zip(got, ref, mag, ("dx", "d_lambda_d", "d_lambda_b")):
            worst = max(worst, _expect(g, r_, m_, dtype, f"{tag} {what}", _C(what, c, dtype)))
    if "merge" in impl.capabilities:
        worst = max(worst, _expect(impl.merge(cm), *_merge_ref(cm, s), dtype, f"{tag} W0 + Delta W",
                                   _C("merge", cm, dtype)))
    return worst


def check_numerics(impl, device, dtype, max_examples, case=None) -> Outcome:
    """One-sign long sums over in, r, out and the batch at real sizes, and values near the dtype's largest,
    through forward (and backward and merge when claimed), each against the derived bound."""
    _USED_C.clear()
    lay = _layouts(impl)
    todo = [case] if case is not None else [dict(s, layout=s["layout"] if s["layout"] in lay else lay[0])
                                            for s in cases()]
    margins, worst = [], 0.0
    for n, spec in enumerate(todo):
        if spec.get("kind") not in KINDS:
            raise KeyError(f"kind must be one of {', '.join(KINDS)}")
        try:
            ratio = _run_case(impl, spec, dtype, device)
        except (Mismatch, NoGradient) as exc:
            return Outcome("failed", str(exc), n + 1, getattr(exc, "ratio", None), spec, _tol(dtype))
        except Exception as exc:
            return Outcome("failed", f"{spec['kind']}: {_crash(exc)}", n + 1, None, spec, _tol(dtype))
        worst = max(worst, ratio)
        rows = f" N {spec['N']}" if spec["kind"] == "long_batch" else ""
        margins.append(f"{spec['kind']} r {spec['r']} in {spec['in_features']} out {spec['out_features']}{rows}: "
                       f"{ratio:.3g}")
    return Outcome("passed", "", len(todo), worst, tolerance=_tol(dtype),
                   note="worst error / bound per case: " + "; ".join(margins))


CHECKS = [
    Check("numerics", "forward", "M", True, check_numerics,
          "one-sign long sums (in, r, out up to 16384; a batch of 2048) and values near the dtype's max (5.2.3)",
          case_keys=("kind", "seed", "r", "in_features", "out_features", "n_in", "n_out", "group", "layout", "N",
                     "bias", "values_seed")),
]
