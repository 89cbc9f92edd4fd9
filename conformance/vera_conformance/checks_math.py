"""Levels M and T (spec 5.3): forward, backward, merge, unmerge, training, evaluation-mode
dropout, state between calls and the math vectors, against the float64 reference under the bound
of spec 5.2. Registered in checks.CHECKS."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import round_to
from vera_ref.tolerance import backward_magnitude, forward_magnitude, merge_magnitude

from . import check_base as _K
from . import strategies as S
from .check_base import (_C, _USED_C, Mismatch, Outcome, _build, _crash, _expect, _gen_name, _layouts, _property,
                         _specs, _tol, _bits_equal)
from .checks_generator import _projection_equal
from .protocol import LayerCase, NoGradient

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


def _pair(got, what: str):
    """(y_merged, y_after_unmerge) as returned by merged_forward."""
    try:
        y_m, y_u = got
    except (TypeError, ValueError):
        raise Mismatch(f"merged_forward returned {type(got).__name__}, expected (y_merged, y_after_unmerge) "
                       f"({what})") from None
    return y_m, y_u


def check_merged_forward(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 3.5: the forward of a merged layer is x (W0 + Delta W)^T + bias, the forward of 3.2
    without dropout; spec 3.6: after unmerge the forward is the unmerged layer's again. The merged
    forward has the sums and counts of the forward (spec 5.2.3 names it), so C and S are the
    forward's. After merge and unmerge the weight is W0 + Delta W1 - Delta W2 (two Delta W formed
    apart, equal in exact arithmetic): spec 5.2.3 follows each term, and a Delta W term meets its 3
    products, the sum over r, the addition of W0, the subtraction of Delta W2, the product with x,
    the sum over in, the bias and the adapter-term (or a fused Delta W3) addition: 8 operations, 2
    for a declared scale: the forward's k = 10 and sums (in, r); but S holds |term| of every term,
    the two that cancel too: S + 2 S_adapter (S_adapter: the twin's S, spec 5.2.1). An exact restore
    of W0 (spec 3.6 MAY) meets fewer operations. Each on the case and on its twin (spec 5.2.1)."""
    unmerge = "unmerge" in impl.capabilities

    def body(c: LayerCase):
        s, k = impl.scale(c.r), _C("forward", c, dtype)
        worst = 0.0
        for t, what in ((_twin(c), "adapter term (W0 = 0, no bias)"), (c, "y")):
            ref, S_ = _forward_ref(t, s)
            y_m, y_u = _pair(impl.merged_forward(t), what)
            worst = max(worst, _expect(y_m, ref, S_, dtype, f"merged layer's {what} (spec 3.5: x (W0 + Delta W)^T "
                                                            "+ bias and nothing more)", k))
            if not unmerge:
                continue
            if y_u is None:
                raise Mismatch(f"claims unmerge but merged_forward returned no forward after unmerge ({what})")
            S_u = S_ + 2 * _forward_ref(_twin(t), s)[1]  # the two Delta W that cancel (docstring)
            worst = max(worst, _expect(y_u, ref, S_u, dtype, f"{what} after merge and unmerge (spec 3.6: the "
                                                             "unmerged forward again)", k))
        return worst
    # the fixed boundary cases first, then a fifth of the examples: two merged forwards and two after
    # unmerge per case, each a fresh layer (a JAX layer compiles per shape), and the merge check's own
    # examples already vary the weight (seconds, not minutes, per kit run)
    out = _layer_property(impl, device, dtype, max(1, max_examples // 5), body, case, dropout=False)
    if out.status == "passed" and not unmerge:
        out.note = f"{impl.name} does not claim unmerge: only the merged layer's forward was checked"
    return out


def check_eval_dropout_backward(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 3.3: in evaluation mode dropout is the identity for the forward and so for its gradients:
    dx, d lambda_d and d lambda_b of a case with p > 0 and no mask equal the backward without dropout,
    under the backward's bound (spec 5.2), dx also on the twin (5.2.1)."""
    if case is not None and not float(case.get("dropout") or 0) > 0:  # a runner error, not the implementation's
        raise ValueError("dropout must be the p > 0 the case ran at (its repro JSON carries it)")

    def body(c: LayerCase):
        c = dataclasses.replace(c, dropout_mask=None)
        s = impl.scale(c.r)
        mode = f" in evaluation mode with dropout p = {c.dropout} (must equal the backward without dropout)"
        ref, mag = _backward_ref(dataclasses.replace(c, dropout=0.0), s)
        got = _gradients(impl.backward(c))
        worst = max(_expect(g, r, m, dtype, what + mode, _C(what, c, dtype)) for g, r, m, what in
                    zip(got, ref, mag, ("dx", "d_lambda_d", "d_lambda_b")))
        t = _twin(c)
        ref, mag = _backward_ref(dataclasses.replace(t, dropout=0.0), s)
        return max(worst, _expect(_gradients(impl.backward(t))[0], ref[0], mag[0], dtype,
                                  "adapter part of dx (W0 = 0)" + mode, _C("dx", c, dtype)))
    strategy = _specs(impl, dropout=False, dropout_p=0.5)
    # the fixed boundary cases first, then a fifth of the examples (two backwards a case)
    return _layer_property(impl, device, dtype, max(1, max_examples // 5), body, case, strategy=strategy,
                           dropout_p=0.5)


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
        # the implementation gets its own copy: one that steps the case's arrays in place (a tensor
        # sharing their memory) must not move the reference's starting point
        got = impl.train_steps(copy.deepcopy(c), lr, steps)
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
    env = json.loads((_K.VECTORS / "math.json").read_text())
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
