"""The conformance checks (spec 5.3 levels G, F, M, T), each a property over hypothesis cases
or a walk over spec/vectors. A check returns an Outcome; it never raises for a wrong answer.

Every check is ``run(impl, device, dtype, max_examples, case=None)``: with ``case`` (the JSON a
failure printed) it replays exactly that case instead of searching.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sysconfig
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hypothesis
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import round_to
from vera_ref.tolerance import (PRECISION_EPS, U_ACC, backward_magnitude, compare, constant, forward_magnitude,
                                merge_magnitude)
from vera_ref.resources import vectors_dir

VECTORS = vectors_dir()

from . import strategies as S
from .protocol import Implementation, LayerCase, LoadedAdapter, NoGradient


class Mismatch(AssertionError):
    def __init__(self, message: str, ratio: float = float("inf")) -> None:
        super().__init__(message)
        self.ratio = ratio


@dataclass
class Outcome:
    status: str  # passed | failed | skipped
    reason: str = ""
    examples: int = 0  # examples run up to the first failure (shrinking not counted)
    worst_ratio: float | None = None  # max |got - ref| / bound over the examples (spec 5.2)
    case: dict | None = None  # the failing case, replayable with --case
    tolerance: dict | None = None
    note: str = ""  # what a pass leaves open (e.g. vectors without a rule code)


@dataclass
class Check:
    name: str
    capability: str
    level: str  # spec 5.3
    per_dtype: bool
    run: Callable[..., Outcome]
    doc: str = ""
    dtypes: tuple[str, ...] = field(default=())  # empty: any
    needs: Callable[[Implementation], str | None] | None = None  # a skip reason from the declarations, or None
    case_keys: tuple[str, ...] = ("seed", "r", "in_features", "out_features", "n_in", "n_out", "group", "layout",
                                  "N", "bias", "scale", "values_seed", "dropout")  # what a --case must hold


_USED_C: list[float] = []  # the constants of the comparisons of the running check (spec 5.2.3)


def _tol(dtype: str) -> dict:
    """What a report records (spec 5.2): the largest derived C the check used, eps, the dtype and
    the accumulation format the bound assumes (spec 5.2.3)."""
    c = max(_USED_C, default=None)
    _USED_C.clear()
    return {"policy": "spec 5.2", "C": c, "eps": PRECISION_EPS[dtype], "dtype": dtype,
            "accumulation": "binary64" if U_ACC[dtype] == 2.0**-53 else "binary32"}


def _C(quantity: str, case: LayerCase, dtype: str, steps: int = 1) -> float:
    """spec 5.2.3: the constant of ``quantity`` for the sizes of ``case``."""
    return constant(quantity, dtype, N=max(1, int(np.prod(np.shape(case.x)[:-1]))), in_features=case.in_features,
                    out_features=case.out_features, r=case.r, steps=steps)


_KIT = Path(__file__).resolve().parent  # the kit's machinery; impls/ are wrappers like anyone's
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_HYPOTHESIS = Path(hypothesis.__file__).resolve().parent  # the kit's search loop, not the code under test


def _where(exc: BaseException) -> str:
    """' (at file:line in function)': the innermost frame of the traceback outside the kit's own
    files and the standard library (the library or wrapper code that raised), and, when it is
    another frame, the wrapper's: the first frame the kit called into."""
    frames = []
    for fs in traceback.extract_tb(exc.__traceback__):
        path = Path(fs.filename)
        try:
            path = path.resolve()
            kit = (path.is_relative_to(_KIT) and not path.is_relative_to(_KIT / "impls")) or path.is_relative_to(
                _HYPOTHESIS)
            std = path.is_relative_to(_STDLIB) and "site-packages" not in path.parts
        except (OSError, ValueError):
            kit = std = False
        if not kit and not std and not fs.filename.startswith("<frozen"):
            frames.append(f"{fs.filename}:{fs.lineno} in {fs.name}")
    if not frames:
        return ""
    return f" (at {frames[-1]}" + (f"; wrapper {frames[0]})" if frames[0] != frames[-1] else ")")


def _crash(exc: BaseException) -> str:
    """One line for a failure caused by an exception: its type, message and where it was raised."""
    return f"{type(exc).__name__}: {str(exc)[:300]}{_where(exc)}"


def _jsonable(example):
    if isinstance(example, dict):
        return example
    return {"args": [str(a) if isinstance(a, int) and a > 2**53 else a for a in example]}


def _property(strategy, body: Callable[[object], float | None], max_examples: int, case=None,
              explicit=()) -> Outcome:
    """Run ``body`` on the explicit examples, then on hypothesis examples (or on ``case`` alone);
    body returns the worst tolerance ratio or raises Mismatch. One failure, one message: the
    minimal failing example of the first bug found (report_multiple_bugs off)."""
    state = {"n": 0, "worst": None, "last": None, "failing": False}

    def one(example):
        if not state["failing"]:
            state["n"] += 1
        state["last"] = example
        try:
            ratio = body(example)
        except BaseException:
            state["failing"] = True
            raise
        if ratio is not None:
            state["worst"] = max(state["worst"] or 0.0, ratio)

    def failed(exc) -> Outcome:
        if isinstance(exc, Mismatch):
            return Outcome("failed", str(exc), state["n"], exc.ratio, _jsonable(state["last"]))
        if isinstance(exc, NoGradient):
            return Outcome("failed", str(exc), state["n"], None, _jsonable(state["last"]))
        return Outcome("failed", _crash(exc), state["n"], None, _jsonable(state["last"]))

    try:
        for example in ([case] if case is not None else list(explicit)):
            one(example)
    except Exception as exc:
        return failed(exc)
    if case is not None:
        return Outcome("passed", "", 1, state["worst"])

    @settings(max_examples=max_examples, database=None, derandomize=True, deadline=None, print_blob=False,
              report_multiple_bugs=False, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(example):
        one(example)

    try:
        prop()
    except Exception as exc:  # hypothesis re-raises the minimal failing example last
        return failed(exc)
    return Outcome("passed", "", state["n"], state["worst"])


def _expect(got, ref, S_, dtype: str, what: str, c: float) -> float:
    """The worst ratio of |got - ref| to the bound of spec 5.2 with the constant ``c``, or Mismatch."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != np.shape(ref):
        raise Mismatch(f"{what}: shape {got.shape}, expected {np.shape(ref)}")
    _USED_C.append(c)
    chk = compare(got, ref, S_, dtype, c)
    if not chk.ok:
        raise Mismatch(f"{what}: {chk.describe()}", chk.ratio)
    return chk.ratio


def _bits_equal(got, want) -> bool:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return got.shape == want.shape and bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))


# --- declarations -------------------------------------------------------------------------------

def _philox_generator(impl) -> str | None:
    g = getattr(impl, "generator", "philox4x32-10")
    if g != "philox4x32-10":
        return f"{impl.name} declares the generator {g!r}; these are philox4x32-10 vectors"
    return None


def _own_generator(impl) -> str | None:
    g = getattr(impl, "generator", "philox4x32-10")
    if g != "own":
        return f"{impl.name} declares the generator {g!r}, checked bit-exactly (this check is for 'own')"
    return None


def _not_own(impl) -> str | None:
    g = getattr(impl, "generator", "philox4x32-10")
    return f"{impl.name} declares its own generator: only its distribution is checked" if g == "own" else None


def _with_dropout(impl) -> str | None:
    return None if getattr(impl, "dropout", True) else f"{impl.name} declares no dropout (inference only)"


def _no_scale(impl) -> str | None:
    if getattr(impl, "adapter_scale", None) is not None:
        return f"{impl.name} declares adapter_scale: a scaled product is not one rounding, the probe needs none"
    return None


def _unscaled(impl) -> str | None:
    if getattr(impl, "adapter_scale", None) is not None:
        return f"{impl.name} declares adapter_scale: the vectors hold unscaled results"
    if getattr(impl, "generator", "") == "peft-mt19937":
        return f"{impl.name} declares the peft-mt19937 generator: the vectors use philox4x32-10 projections"
    return None


def _layouts(impl):
    return tuple(sorted(getattr(impl, "layouts", S.LAYOUTS)))


def _specs(impl, dropout=True, dropout_p=None):
    return S.case_specs(dropout=dropout and getattr(impl, "dropout", True), layouts=_layouts(impl),
                        dropout_p=dropout_p)


def _gen_name(impl) -> str:
    g = getattr(impl, "generator", "philox4x32-10")
    return g if g in ("philox4x32-10", "peft-mt19937") else "philox4x32-10"


def _build(impl, spec: dict, dtype: str, device: str) -> LayerCase:
    c = S.build_case(spec, dtype, device)
    if _gen_name(impl) == "peft-mt19937":  # spec 2.5.3: one shared pair, no groups
        A, B = vera_ref.peft_projection(c.seed, c.r, c.n_in, c.n_out)
        c = dataclasses.replace(c, A=A, B=B, group=0)
    return c


# --- level G: generator -------------------------------------------------------------------

def check_philox_kat(impl: Implementation, device: str, dtype: str, max_examples: int, case=None) -> Outcome:
    if impl.philox is None:
        return Outcome("skipped", f"{impl.name} has no philox() (optional within the generator capability)")
    env = json.loads((VECTORS / "philox4x32_10.json").read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"]]
    if case is not None:
        tests = [t for t in tests if t["tcId"] == case.get("tcId")]
    bad = []
    for t in tests:
        c = np.array([[int(w, 16) for w in t["counter"]]], dtype=np.uint32)
        try:
            out = np.asarray(impl.philox(c, np.array([int(w, 16) for w in t["key"]], dtype=np.uint32), device))
        except Exception as exc:
            return Outcome("failed", f"tcId {t['tcId']}: {_crash(exc)}", len(tests), case={"tcId": t["tcId"]})
        if [int(v) for v in out.reshape(-1)] != [int(w, 16) for w in t["expected"]]:
            bad.append(t["tcId"])
    if bad:
        return Outcome("failed", f"Random123 vectors tcId {bad[:5]} differ ({len(bad)} of {len(tests)})", len(tests),
                       case={"tcId": bad[0]})
    return Outcome("passed", "", len(tests))


def check_projection_vectors(impl, device, dtype, max_examples, case=None) -> Outcome:
    env = json.loads((VECTORS / "projections.json").read_text())
    cases = env["testGroups"][0]["tests"]
    if case is not None:
        cases = [c for c in cases if c["tcId"] == case.get("tcId")]
    for c in cases:
        try:
            A, B = impl.projection(int(c["seed"]), c["r"], c["n_in"], c["n_out"], c["group"], device)
        except Exception as exc:
            return Outcome("failed", f"projections.json tcId {c['tcId']}: {_crash(exc)}", len(cases),
                           case={"tcId": c["tcId"]})
        for name, M in (("A", A), ("B", B)):
            digest = vera_ref.adapter.sha256_hex(np.asarray(M, dtype=np.float32))
            if digest != c[f"sha256_{name}"]:
                return Outcome("failed", f"projections.json tcId {c['tcId']} ({c['comment']}): sha256 of {name} is "
                                         f"{digest[:16]}..., expected {c[f'sha256_{name}'][:16]}...", len(cases),
                               case={"tcId": c["tcId"]})
    return Outcome("passed", "", len(cases))


def _projection_equal(impl, seed, r, n_in, n_out, group, device, what="") -> None:
    A, B = impl.projection(seed, r, n_in, n_out, group, device)
    if _gen_name(impl) == "peft-mt19937":
        a, b = vera_ref.peft_projection(seed, r, n_in, n_out)
    else:
        a, b = vera_ref.projection(seed, r, n_in, n_out, group)
    for name, got, want in (("A", A, a), ("B", B, b)):
        got = np.asarray(got)
        if got.dtype != np.float32 or got.shape != want.shape:
            raise Mismatch(f"{what}{name}: {got.dtype} {got.shape}, expected float32 {want.shape}")
        diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        if diff.size:
            i = np.unravel_index(diff[0], want.shape)
            raise Mismatch(f"{what}{name} of (seed {seed}, r {r}, n_in {n_in}, n_out {n_out}, group {group}): "
                           f"{diff.size} of {want.size} elements differ in bits; first at {tuple(map(int, i))}: "
                           f"{float(got[i])!r} vs {float(want[i])!r}")


def check_projection(impl, device, dtype, max_examples, case=None) -> Outcome:
    peft = _gen_name(impl) == "peft-mt19937"

    def body(args):
        seed, r, n_in, n_out, group = (int(a) for a in (args["args"] if isinstance(args, dict) else args))
        _projection_equal(impl, seed, r, n_in, n_out, 0 if peft else group, device)
    strategy = S.projection_args.map(lambda a: (*a[:4], 0)) if peft else S.projection_args
    return _property(strategy, body, max_examples, case)


def check_projection_distribution(impl, device, dtype, max_examples, case=None) -> Outcome:
    """An own generator (torch's, NumPy's): A and B float32, inside the Kaiming bounds of spec 1.6
    (A from n_in, B from r), and uniform (Kolmogorov-Smirnov, p > 1e-6 on 1024+ values)."""
    def body(args):
        seed, r, n_in, n_out = (int(a) for a in (args["args"] if isinstance(args, dict) else args))
        A, B = impl.projection(seed, r, n_in, n_out, 0, device)
        for name, M, shape, fan in (("A", A, (r, n_in), n_in), ("B", B, (n_out, r), r)):
            M = np.asarray(M)
            if M.dtype != np.float32 or M.shape != shape:
                raise Mismatch(f"{name}: {M.dtype} {M.shape}, expected float32 {shape}")
            bnd = float(vera_ref.kaiming_bound(fan))
            if not np.all(np.abs(M) <= bnd):
                raise Mismatch(f"{name}: max |value| {float(np.max(np.abs(M)))!r} exceeds sqrt(6/{fan}) = {bnd!r}")
            u = np.sort((M.reshape(-1).astype(np.float64) / bnd + 1) / 2)
            n = u.size
            d = float(np.max(np.maximum(np.arange(1, n + 1) / n - u, u - np.arange(n) / n)))
            p = 2 * math.exp(-2 * n * d * d)
            std = f"sample std {float(np.std(M, dtype=np.float64)):.5g} against the spec's sqrt(2/{fan}) = " \
                  f"{math.sqrt(2 / fan):.5g}"  # uniform on (-b, b): std b / sqrt(3), b = sqrt(6/fan) (spec 1.6)
            stds.append(f"{name} {std}")
            if p < 1e-6:
                raise Mismatch(f"{name}: not uniform on (-sqrt(6/{fan}), sqrt(6/{fan})): Kolmogorov-Smirnov D = "
                               f"{d:.4f} on {n} values (p ~ {p:.1e}); {std}; mean {float(np.mean(M)):.4g}, "
                               f"max |value| / bound {float(np.max(np.abs(M))) / bnd:.4f}")
    stds: list[str] = []
    strategy = st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([16, 32, 64, 256]),
                         st.sampled_from([64, 128, 768]), st.sampled_from([64, 128, 768]))
    out = _property(strategy, body, max(3, max_examples // 10), case)
    if out.status == "passed" and stds:
        out.note = "last case: " + "; ".join(stds[-2:])
    return out


# --- levels M and T: math ---------------------------------------------------------------------

def _kw(case: LayerCase) -> dict:
    return dict(layout=case.layout, dropout_mask=case.dropout_mask, dropout=case.dropout)


def _twin(c: LayerCase) -> LayerCase:
    """spec 5.2.1: the same case with W0 = 0 and no bias, so y is the adapter term, merge gives
    Delta W and dx the adapter's part, each compared against its own magnitude."""
    return dataclasses.replace(c, W=np.zeros_like(c.W), bias=None)


def _layer_property(impl, device, dtype, max_examples, body, case=None, dropout=True, strategy=None,
                    dropout_p=None) -> Outcome:
    dropout = dropout and getattr(impl, "dropout", True)
    explicit = S.explicit(_layouts(impl))
    if dropout_p is not None:
        explicit = [dict(s, dropout=dropout_p) for s in explicit]
    _USED_C.clear()
    out = _property(_specs(impl, dropout) if strategy is None else strategy, lambda spec: body(_build(impl, spec, dtype, device)),
                    max_examples, case, explicit)
    out.tolerance = _tol(dtype)
    return out


def _forward_ref(c: LayerCase, s: float):
    lb = c.lambda_b * s  # a declared adapter_scale folded into lambda_b
    return (vera_ref.forward(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, lb, **_kw(c)),
            forward_magnitude(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, lb, **_kw(c)))


def tf32_probe(impl, c: LayerCase) -> str:
    """spec 5.2.2: does the forward round float32 matmul inputs to TF32? With W0 = I, no bias and
    lambda_b = 0, y must be x exactly; TF32 gives x rounded to 11 significant bits."""
    n = 8
    x = (1.0 + np.arange(1, 4 * n + 1).reshape(4, n) * 2.0**-20)  # binary32 values with low bits set
    p = dataclasses.replace(c, x=x, W=np.eye(n), bias=None, layout="linear", lambda_d=np.ones(c.r),
                            lambda_b=np.zeros(n), dy=np.zeros((4, n)), dropout=0.0, dropout_mask=None,
                            n_in=max(c.n_in, n), n_out=max(c.n_out, n))
    if _gen_name(impl) == "peft-mt19937":
        A, B = vera_ref.peft_projection(c.seed, c.r, p.n_in, p.n_out)
    else:
        A, B = vera_ref.projection(c.seed, c.r, p.n_in, p.n_out, c.group)
    try:
        got = np.asarray(impl.forward(dataclasses.replace(p, A=A, B=B)), np.float64)
    except Exception:
        return ""
    tf32 = np.round(x * 2.0**10) / 2.0**10  # RNE to 11 significant bits for values in [1, 2)
    if got.shape == x.shape and not np.array_equal(got, x) and np.array_equal(got, tf32):
        return ("; the forward rounds float32 matmul inputs to 11 bits (W0 = I gives x in TF32): "
                "float32 computed with TF32, a named non-conformance (spec 5.2.2): declare precision tf32 "
                "or turn TF32 off")
    return ""


def check_forward(impl, device, dtype, max_examples, case=None) -> Outcome:
    def body(c: LayerCase):
        s = impl.scale(c.r)
        try:
            t = _twin(c)  # the adapter term first: its message names a scale or a missing term directly
            k = _C("forward", c, dtype)
            worst = _expect(impl.forward(t), *_forward_ref(t, s), dtype, "adapter term (W0 = 0, no bias)", k)
            return max(worst, _expect(impl.forward(c), *_forward_ref(c, s), dtype, "y", k))
        except Mismatch as exc:
            note = tf32_probe(impl, c) if dtype == "float32" else ""
            raise Mismatch(str(exc) + note, exc.ratio) from None
    return _layer_property(impl, device, dtype, max_examples, body, case)


def check_eval_dropout(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 3.3: in evaluation mode (dropout p > 0, no mask) the adapter input is not dropped."""
    if case is not None and not float(case.get("dropout") or 0) > 0:  # a runner error, not the implementation's
        raise ValueError("dropout must be the p > 0 the case ran at (its repro JSON carries it)")

    def body(c: LayerCase):
        c = dataclasses.replace(c, dropout_mask=None)
        ref, S_ = _forward_ref(c, impl.scale(c.r))
        return _expect(impl.forward(c), ref, S_, dtype, f"y in evaluation mode with dropout p = {c.dropout} "
                                                        "(must equal the forward without dropout)",
                       _C("forward", c, dtype))
    strategy = _specs(impl, dropout=False, dropout_p=0.5)
    # the repro JSON carries the p each case ran at (the explicit cases too), so a replay runs at it
    return _layer_property(impl, device, dtype, max(5, max_examples // 5), body, case, strategy=strategy,
                           dropout_p=0.5)


def _backward_ref(c: LayerCase, s: float):
    g = vera_ref.backward(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b * s, c.dy, **_kw(c))
    m = backward_magnitude(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b * s, c.dy, **_kw(c))
    return (g.x, g.lambda_d, g.lambda_b * s), (m.x, m.lambda_d, m.lambda_b * s)


def _gradients(got):
    """(dx, d_lambda_d, d_lambda_b) as returned; a vector gradient that is None names its vector."""
    try:
        dx, dld, dlb = got
    except (TypeError, ValueError):
        raise Mismatch(f"backward returned {type(got).__name__}, expected (dx, d_lambda_d, d_lambda_b)") from None
    for name, g in (("x", dx), ("lambda_d", dld), ("lambda_b", dlb)):
        if g is None:
            raise NoGradient(name)
    return dx, dld, dlb


def check_backward(impl, device, dtype, max_examples, case=None) -> Outcome:
    def body(c: LayerCase):
        s = impl.scale(c.r)
        ref, mag = _backward_ref(c, s)
        got = _gradients(impl.backward(c))
        worst = max(_expect(g, r, m, dtype, what, _C(what, c, dtype)) for g, r, m, what in
                    zip(got, ref, mag, ("dx", "d_lambda_d", "d_lambda_b")))
        t = _twin(c)
        ref, mag = _backward_ref(t, s)
        return max(worst, _expect(_gradients(impl.backward(t))[0], ref[0], mag[0], dtype, "adapter part of dx (W0 = 0)",
                                  _C("dx", c, dtype)))
    return _layer_property(impl, device, dtype, max_examples, body, case)


def _merge_ref(c: LayerCase, s: float, W=None):
    W = c.W if W is None else W
    return (vera_ref.merge(W, c.A, c.B, c.lambda_d, c.lambda_b * s, layout=c.layout),
            merge_magnitude(W, c.A, c.B, c.lambda_d, c.lambda_b * s, layout=c.layout))


def check_merge(impl, device, dtype, max_examples, case=None) -> Outcome:
    def body(c: LayerCase):
        s = impl.scale(c.r)
        k = _C("merge", c, dtype)
        worst = _expect(impl.merge(c), *_merge_ref(c, s), dtype, "W0 + Delta W", k)
        t = _twin(c)
        return max(worst, _expect(impl.merge(t), *_merge_ref(t, s), dtype, "Delta W (W0 = 0)", k))
    return _layer_property(impl, device, dtype, max_examples, body, case, dropout=False)


def check_unmerge(impl, device, dtype, max_examples, case=None) -> Outcome:
    def body(c: LayerCase):
        s = impl.scale(c.r)
        Wm = round_to(_merge_ref(c, s)[0], S.storage(dtype)).astype(np.float64)
        ref = vera_ref.unmerge(Wm, c.A, c.B, c.lambda_d, c.lambda_b * s, layout=c.layout)
        return _expect(impl.unmerge(c, Wm), ref, _merge_ref(c, s, Wm)[1], dtype, "W - Delta W",
                       _C("unmerge", c, dtype))
    return _layer_property(impl, device, dtype, max_examples, body, case, dropout=False)


def check_generator_probe(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 5.1: with one-hot x, W0 = 0, lambda_d = e_k and lambda_b = 1 each output is one rounded
    product A[k, i] * B[o, k], so the projection the forward really uses is checked bit-exactly."""
    def body(spec):
        c = _build(impl, spec, dtype, device)
        in_f, out_f, r = c.in_features, c.out_features, c.r
        A_l, B_l = c.A[:, :in_f].astype(np.float64), c.B[:out_f].astype(np.float64)
        for k in sorted({spec["values_seed"] % r, r - 1}):
            ld = np.zeros(r)
            ld[k] = 1.0
            p = dataclasses.replace(c, x=np.eye(in_f), W=np.zeros_like(c.W), bias=None, lambda_d=ld,
                                    lambda_b=np.ones(out_f), dy=np.zeros((in_f, out_f)), dropout=0.0,
                                    dropout_mask=None)
            want = round_to(A_l[k][:, None] * B_l[:, k][None, :], S.storage(dtype)).astype(np.float64)  # (in, out)
            got = np.asarray(impl.forward(p), dtype=np.float64)
            if got.shape != want.shape:
                raise Mismatch(f"probe y: shape {got.shape}, expected {want.shape}")
            bad = np.argwhere(got != want)
            if bad.size:
                i, o = (int(v) for v in bad[0])
                raise Mismatch(f"bit-exact probe (x = one-hot rows, W0 = 0, lambda_d = e_{k}, lambda_b = 1): "
                               f"{len(bad)} of {want.size} outputs are not the rounded product A[{k}, i] * B[o, {k}]; "
                               f"first y[{i}, {o}] = {float(got[i, o])!r}, expected {float(want[i, o])!r} "
                               f"(A[{k}, {i}] = {float(A_l[k, i])!r}, B[{o}, {k}] = {float(B_l[o, k])!r}): the "
                               "projection inside "
                               "the forward differs from the spec's (bounds, slices, tiling?)")
        return None
    strategy = _specs(impl, dropout=False)
    explicit = S.explicit(_layouts(impl))
    return _property(strategy, body, max(5, max_examples // 5), case, explicit)


@st.composite
def _sequences(draw, layouts):
    """2-3 cases sharing seed, r and group, the largest first (spec 5.4: no state between calls)."""
    seed, r, group = draw(S.seeds), draw(S.ranks), draw(st.sampled_from([0, 0, 1]))
    sizes = draw(st.lists(st.tuples(st.integers(1, 48), st.integers(1, 48), st.integers(1, 6)), min_size=2,
                          max_size=3, unique=True))
    sizes.sort(key=lambda s: -(s[0] + s[1]))
    return {"sequence": [S._spec(S._size(r, i, o, n), seed=seed, group=group, n_in_pad=pad, n_out_pad=pad,
                                 layout=draw(st.sampled_from(sorted(layouts))), values_seed=draw(st.integers(0, 999)))
                         for (i, o, n), pad in zip(sizes, (0, 1, 3))]}


def check_stateless(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 5.4: results do not depend on earlier calls: a projection or forward of a smaller shape
    after a larger one with the same seed and r equals its result in a fresh process."""
    gen = "generator" in impl.capabilities and getattr(impl, "generator", "") != "own"
    fwd = "forward" in impl.capabilities

    def body(seq):
        worst = 0.0
        for n, spec in enumerate(seq["sequence"]):
            after = f"call {n + 1} of {len(seq['sequence'])}" + (
                " (after a larger shape with the same seed and r): " if n else " (after earlier checks' calls): ")
            c = _build(impl, spec, dtype, device)
            if gen:
                _projection_equal(impl, c.seed, c.r, c.n_in, c.n_out, c.group, device, after)
            if fwd:
                worst = max(worst, _expect(impl.forward(c), *_forward_ref(c, impl.scale(c.r)), dtype, after + "y",
                                           _C("forward", c, dtype)))
        return worst
    _USED_C.clear()
    out = _property(_sequences(_layouts(impl)), body, max(5, max_examples // 5), case)
    out.tolerance = _tol(dtype)
    return out


def check_train(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 5.3 level T: ``steps`` SGD steps on sum(dy * y) by the implementation's own optimizer
    equal the reference's; exactly lambda_d (r,) and lambda_b (out,) are trained; W0, bias, A and
    B are unchanged."""
    steps = 3

    def body(c: LayerCase):
        s, kw = impl.scale(c.r), _kw(c)
        g0 = vera_ref.backward(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b * s, c.dy, **kw)
        gmax = max(float(np.max(np.abs(g0.lambda_d))), float(np.max(np.abs(g0.lambda_b))) * s)
        lmax = max(float(np.max(np.abs(c.lambda_d))), float(np.max(np.abs(c.lambda_b))))
        # a power of two (exact) making a step about half of lambda's size, at most 1
        lr = 2.0 ** min(0, math.floor(math.log2(0.5 * lmax / gmax))) if gmax > 0 and lmax > 0 else 1.0
        got = impl.train_steps(c, lr, steps)
        shapes = {k: tuple(np.shape(v)) for k, v in got.trainable.items()}
        # the number of trained values first, unit axes squeezed: a (1, n) row vector is a vector,
        # an (n, n) matrix is not
        sizes = sorted(int(np.prod(v)) for v in shapes.values())
        vectors = all(sum(d != 1 for d in v) <= 1 for v in shapes.values())
        if sizes != sorted([c.r, c.out_features]) or not vectors:
            raise Mismatch(f"trainable parameters {shapes}: VeRA trains exactly one lambda_d ({c.r},) and one "
                           f"lambda_b ({c.out_features},) per layer (spec 3.4); got {sum(sizes)} trained values, "
                           f"expected {c.r + c.out_features}")
        flat = [np.reshape(v, -1) for v in got.trainable.values()]
        got = dataclasses.replace(got, lambda_d=np.reshape(got.lambda_d, -1), lambda_b=np.reshape(got.lambda_b, -1))
        for what, arr in (("lambda_d", got.lambda_d), ("lambda_b", got.lambda_b)):
            if not any(_bits_equal(arr, v) for v in flat):
                raise Mismatch(f"the returned {what} is none of the trainable parameters {sorted(shapes)}")
        for what, arr, want in (("W0", got.W, c.W), ("bias", got.bias, c.bias)):
            if (want is None) != (arr is None) or (want is not None and not _bits_equal(arr, want)):
                raise Mismatch(f"{what} changed during training: it is frozen (spec 3.4)")
        for what, arr, full, axis in (("A", got.A, c.A, 1), ("B", got.B, c.B, 0)):
            arr = np.asarray(arr, np.float64)
            k = arr.shape[axis] if arr.ndim == 2 else -1
            lo = c.in_features if axis else c.out_features
            sl = full[:, :k] if axis else full[:k]
            ok = arr.ndim == 2 and lo <= k <= full.shape[axis] and arr.shape == sl.shape and (
                _bits_equal(arr, sl) or _bits_equal(arr, round_to(sl, S.storage(dtype))))
            if not ok:
                raise Mismatch(f"{what} after training ({arr.shape}) is not an unchanged leading slice of the "
                               f"projection {full.shape}: it is frozen (spec 3.4)")
        ld, lb = c.lambda_d.copy(), c.lambda_b.copy()
        Sd, Sb = np.abs(ld), np.abs(lb)
        for _ in range(steps):
            g = vera_ref.backward(c.x, c.W, c.A, c.B, ld, lb * s, c.dy, **kw)
            m = backward_magnitude(c.x, c.W, c.A, c.B, Sd, Sb * s, c.dy, **kw)
            ld, lb = ld - lr * g.lambda_d, lb - lr * s * g.lambda_b
            Sd, Sb = Sd + lr * m.lambda_d, Sb + lr * s * m.lambda_b
        # spec 5.2.3: the operations of every step lie on one term's way to the result
        k = _C("train", c, dtype, steps)
        return max(_expect(got.lambda_d, ld, Sd, dtype, f"lambda_d after {steps} SGD steps (lr {lr:g})", k),
                   _expect(got.lambda_b, lb, Sb, dtype, f"lambda_b after {steps} SGD steps (lr {lr:g})", k))
    return _layer_property(impl, device, dtype, max(5, max_examples // 2), body, case)


def check_adapter_scale(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 3.2 has no scale on the adapter term; a declared one is a named deviation. Without a
    declared scale there is nothing to report here: the forward check compares the adapter term
    with no scale (a constant factor fails it, named "a scale such as alpha/r?")."""
    if getattr(impl, "adapter_scale", None) is None:
        return Outcome("skipped", f"{impl.name} declares no adapter_scale: the forward check compares the "
                                  "adapter term without one")
    scales = {r: impl.scale(r) for r in (1, 8, 64, 256)}
    return Outcome("failed", "declared deviation: adapter_scale (LoRA-style alpha/r) multiplies the adapter term by "
                             + ", ".join(f"{v:g} at r={r}" for r, v in scales.items())
                             + "; spec 3.2 has none (the math checks fold it in)", 1)


def check_math_vectors(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec/vectors/math.json: the cases of the check's dtype, through forward/backward/merge as claimed."""
    from .vectors_runner import math_case, math_constant, unbits
    _USED_C.clear()
    env = json.loads((VECTORS / "math.json").read_text())
    cases = [c for c in env["testGroups"][0]["tests"] if c["dtype"] == dtype
             and (c["dropout"] == 0 or getattr(impl, "dropout", True))
             and c["layout"] in _layouts(impl)]
    if case is not None:
        cases = [c for c in cases if c["tcId"] == case.get("tcId")]
    if not cases:
        return Outcome("skipped", f"math.json has no {dtype} cases this implementation can run")
    worst = 0.0
    for c in cases:
        try:
            mc = math_case(c, device)
            outs = {}
            if "forward" in impl.capabilities:
                outs["y"] = impl.forward(mc)
            if "backward" in impl.capabilities:
                outs["dx"], outs["dlambda_d"], outs["dlambda_b"] = impl.backward(mc)
            if "merge" in impl.capabilities:
                outs["W_merged"] = impl.merge(mc)
            for k, got in outs.items():
                ref = unbits(c["expected"][k]).reshape(c["expected"][k]["shape"])
                S_ = unbits(c["magnitude"][k]).reshape(c["magnitude"][k]["shape"])
                worst = max(worst, _expect(got, ref, S_, dtype, f"tcId {c['tcId']} {k}", math_constant(c, k)))
        except Mismatch as exc:
            return Outcome("failed", str(exc), len(cases), exc.ratio, {"tcId": c["tcId"]}, _tol(dtype))
        except Exception as exc:
            return Outcome("failed", f"tcId {c['tcId']}: {_crash(exc)}", len(cases), None, {"tcId": c["tcId"]},
                           _tol(dtype))
    return Outcome("passed", "", len(cases), worst, tolerance=_tol(dtype))


# --- level F: files ------------------------------------------------------------------------------

def _file_tests(valid: bool, case) -> list[dict]:
    env = json.loads((VECTORS / "files.json").read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"] if (t["result"] == "valid") == valid]
    if case is not None:
        tests = [t for t in tests if t["tcId"] == case.get("tcId")]
    return tests


def _adapter_diff(got: LoadedAdapter, want: LoadedAdapter) -> list[str]:
    """Every field of a LoadedAdapter that differs; vectors and extra tensors bit-exactly."""
    problems = []
    for f in ("r", "generator", "seed", "sharing", "vector_dtype"):
        if getattr(got, f, None) != getattr(want, f):
            problems.append(f"{f} {getattr(got, f, None)!r} (expected {getattr(want, f)!r})")
    gm = [tuple(m) for m in got.modules]
    if gm != [tuple(m) for m in want.modules]:
        problems.append(f"modules {gm[:3]}... (expected {want.modules[:3]}..., name/in/out/layout in file order)")
    for m, *_ in want.modules:
        for what in ("lambda_d", "lambda_b"):
            g = getattr(got, what).get(m)
            if g is None or not _bits_equal(g, getattr(want, what)[m]):
                problems.append(f"{m}.{what}")
    extra = getattr(got, "extra", {}) or {}
    if sorted(extra) != sorted(want.extra):
        problems.append(f"extra tensors {sorted(extra)} (expected {sorted(want.extra)})")
    else:
        problems += [f"extra tensor {k}" for k in want.extra if not _bits_equal(extra[k], want.extra[k])]
    return problems


def check_files_valid(impl, device, dtype, max_examples, case=None) -> Outcome:
    cases = _file_tests(True, case)
    for c in cases:
        path = VECTORS / "files" / c["file"]
        want = LoadedAdapter.of(vera_ref.load_adapter(path))
        try:
            got = impl.load_adapter(path)
        except Exception as exc:
            return Outcome("failed", f"files.json tcId {c['tcId']} {c['file']} ({c['comment']}): valid file "
                                     f"rejected: {_crash(exc)}", len(cases), case={"tcId": c["tcId"]})
        problems = _adapter_diff(got, want)
        if problems:
            return Outcome("failed", f"files.json tcId {c['tcId']} {c['file']} ({c['comment']}): "
                                     f"{'; '.join(problems[:4])} differ", len(cases), case={"tcId": c["tcId"]})
    return Outcome("passed", "", len(cases))


def check_files_invalid(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 5.3 level F: every invalid vector is rejected naming its field and the rule's code
    (the exception's ``field`` and ``code``, as vera_ref.AdapterFileError has them)."""
    cases = _file_tests(False, case)
    wrong, uncoded = [], 0
    for c in cases:
        err = c["error"]
        tag = f"tcId {c['tcId']} {c['file']} ({c['comment']}; rule {err.get('code', '?')}, field {err['field']!r})"
        try:
            impl.load_adapter(VECTORS / "files" / c["file"])
        except Exception as exc:
            field_, code = getattr(exc, "field", None), getattr(exc, "code", None)
            if field_ != err["field"]:
                wrong.append((c, f"{tag}: rejected with field {field_!r}: {_crash(exc)}"))
            elif "code" in err and code != err["code"]:
                wrong.append((c, f"{tag}: rejected with code {code!r}: {_crash(exc)}"))
            uncoded += "code" not in err
            continue
        wrong.append((c, f"{tag}: accepted (the reference says: {err['message']})"))
    note = f"{uncoded} of {len(cases)} invalid vectors carry no rule code yet: field compared only" if uncoded else ""
    if wrong:
        return Outcome("failed", f"{len(wrong)} of {len(cases)} invalid files not rejected for their rule; first: "
                                 f"{wrong[0][1]}", len(cases), case={"tcId": wrong[0][0]["tcId"]}, note=note)
    return Outcome("passed", "", len(cases), note=note)


@st.composite
def _adapters(draw, layouts):
    gen = draw(st.sampled_from(["philox4x32-10", "philox4x32-10", "peft-mt19937"]))
    n = draw(st.integers(1, 4))
    mods = [[f"model.layers.{i}.proj", draw(st.integers(1, 20)), draw(st.integers(1, 20)),
             draw(st.sampled_from(sorted(layouts)))] for i in range(n)]
    return {"r": draw(st.integers(1, 9)), "generator": gen,
            "seed": str(draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**53 + 1, 2**64 - 1])))),
            "sharing": "shared" if gen == "peft-mt19937" else draw(st.sampled_from(["shared", "per-module"])),
            "vector_dtype": draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"])),
            "modules": mods, "values_seed": draw(st.integers(0, 2**32 - 1))}


def check_files_roundtrip(impl, device, dtype, max_examples, case=None) -> Outcome:
    """A LoadedAdapter written by the implementation reads back through the reference with every
    field equal: r, generator, seed, sharing, modules with dims and layout, vector dtype, vectors."""
    def body(spec):
        rng = np.random.default_rng(spec["values_seed"])
        vdt = spec["vector_dtype"]
        mods = [tuple(m) for m in spec["modules"]]
        want = LoadedAdapter(spec["r"], spec["generator"], int(spec["seed"]), mods,
                             {m[0]: round_to(rng.normal(size=spec["r"]), vdt).astype(np.float64) for m in mods},
                             {m[0]: round_to(rng.normal(size=m[2]), vdt).astype(np.float64) for m in mods},
                             vdt, {}, spec["sharing"])
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "a.safetensors"
            impl.save_adapter(want, path)
            try:
                back = LoadedAdapter.of(vera_ref.validate_adapter(path))
            except vera_ref.AdapterFileError as exc:
                raise Mismatch(f"the reference rejects the written file: {exc}") from None
        problems = _adapter_diff(back, want)
        if problems:
            raise Mismatch(f"written and read back by the reference: {'; '.join(problems[:4])} differ")
        return None
    lay = _layouts(impl)
    explicit = [{"r": r, "generator": gen, "seed": seed, "sharing": sharing, "vector_dtype": vdt,
                 "modules": [["model.layers.0.attn.q", 7, 5, lay[0]], ["model.layers.0.attn.v", 3, 9, lay[-1]]],
                 "values_seed": n}
                for n, (r, gen, seed, sharing, vdt) in enumerate([
                    (4, "philox4x32-10", str(2**64 - 1), "shared", "float32"),
                    (5, "philox4x32-10", str(2**53 + 1), "per-module", "float16"),
                    (3, "peft-mt19937", "1", "shared", "bfloat16"),
                    (1, "philox4x32-10", "0", "shared", "float64")])]
    return _property(_adapters(lay), body, max(5, max_examples // 4), case, explicit)


CHECKS = [
    Check("philox_kat", "generator", "G", False, check_philox_kat, "the 55 Random123 philox4x32-10 vectors",
          needs=_philox_generator, case_keys=("tcId",)),
    Check("projection_vectors", "generator", "G", False, check_projection_vectors, "spec/vectors/projections.json",
          needs=_philox_generator, case_keys=("tcId",)),
    Check("projection", "generator", "G", False, check_projection, "random (seed, r, n_in, n_out, group): bit-exact",
          needs=_not_own, case_keys=("args",)),
    Check("projection_distribution", "generator", "G", False, check_projection_distribution,
          "an own generator: bounds and uniformity of A and B", needs=_own_generator,
          case_keys=("args",)),
    Check("forward", "forward", "M", True, check_forward, "spec 3.2-3.3, whole output and adapter term (5.2.1)"),
    Check("generator_probe", "forward", "G", True, check_generator_probe,
          "one-hot forward: the projection inside the layer, bit-exact (5.1)", dtypes=("float32", "float64"),
          needs=_no_scale),
    Check("stateless", "forward", "M", True, check_stateless, "no state between calls (5.4)",
          case_keys=("sequence",)),
    Check("adapter_scale", "forward", "M", False, check_adapter_scale, "no scale on the adapter term (3.2)",
          case_keys=()),
    Check("backward", "backward", "T", True, check_backward, "spec 3.4 against the float64 reference"),
    Check("eval_dropout", "forward", "T", True, check_eval_dropout, "evaluation mode drops nothing (3.3)",
          needs=_with_dropout),
    Check("train", "train", "T", True, check_train, "SGD steps, trainable parameters, frozen tensors (5.3)"),
    Check("merge", "merge", "M", True, check_merge, "spec 3.5, merged weight and Delta W"),
    Check("unmerge", "unmerge", "M", True, check_unmerge, "spec 3.6"),
    Check("math_vectors", "forward", "M", True, check_math_vectors, "spec/vectors/math.json",
          dtypes=("float32", "float64"), needs=_unscaled, case_keys=("tcId",)),
    Check("files_valid", "files", "F", False, check_files_valid, "every valid file vector reads right, every field",
          case_keys=("tcId",)),
    Check("files_invalid", "files", "F", False, check_files_invalid,
          "every invalid file vector is refused for its rule (code and field)", case_keys=("tcId",)),
    Check("files_roundtrip", "files", "F", False, check_files_roundtrip,
          "written files pass the reference with every field equal",
          case_keys=("r", "generator", "seed", "sharing", "vector_dtype", "modules", "values_seed")),
]

from .checks_numeric import CHECKS as _NUMERIC_CHECKS  # noqa: E402  (adversarial numerics at real sizes)

CHECKS += _NUMERIC_CHECKS

# Checks kept in modules of their own (one concept a file); they import the base names above, so
# they are imported here, after them.
from .checks_own import CHECKS as _OWN_CHECKS  # noqa: E402  (own generators: determinism, reload)
from .checks_writer import CHECKS as _WRITER_CHECKS  # noqa: E402  (writers: bytes and fields)
from .checks_quantized import CHECKS as _QUANTIZED_CHECKS  # noqa: E402  (quantized bases)

CHECKS += _OWN_CHECKS + _WRITER_CHECKS + _QUANTIZED_CHECKS
