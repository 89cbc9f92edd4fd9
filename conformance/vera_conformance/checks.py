"""The conformance checks (spec 5.3 levels G, F, M, T), each a property over hypothesis cases
or a walk over spec/vectors. A check returns an Outcome; it never raises for a wrong answer."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import EPS
from vera_ref.tolerance import C, backward_magnitude, compare, forward_magnitude, merge_magnitude
from vera_ref.vectors import VECTORS_DIR as VECTORS

from .protocol import Implementation, LayerCase, LoadedAdapter
from .strategies import build_case, case_specs, projection_args



class Mismatch(AssertionError):
    def __init__(self, message: str, ratio: float = float("inf")) -> None:
        super().__init__(message)
        self.ratio = ratio


@dataclass
class Outcome:
    status: str  # passed | failed | skipped
    reason: str = ""
    examples: int = 0
    worst_ratio: float | None = None  # max |got - ref| / bound over the examples (spec 5.2)
    case: dict | None = None  # the failing case spec, replayable with --case
    tolerance: dict | None = None


@dataclass
class Check:
    name: str
    capability: str
    level: str  # spec 5.3
    per_dtype: bool
    run: Callable[..., Outcome]
    doc: str = ""
    dtypes: tuple[str, ...] = field(default=())  # empty: any


def _tol(dtype: str) -> dict:
    return {"policy": "spec 5.2", "C": C, "eps": EPS[dtype], "dtype": dtype}


def _property(strategy, body: Callable[[object], float], max_examples: int) -> Outcome:
    """Run ``body`` on hypothesis examples; body returns the worst tolerance ratio or raises Mismatch."""
    state = {"n": 0, "worst": None, "last": None}

    @settings(max_examples=max_examples, database=None, derandomize=True, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(example):
        state["n"] += 1
        state["last"] = example
        ratio = body(example)
        if ratio is not None:
            state["worst"] = max(state["worst"] or 0.0, ratio)

    try:
        prop()
    except Mismatch as exc:  # hypothesis re-raises the minimal failing example last
        return Outcome("failed", str(exc), state["n"], exc.ratio, _jsonable(state["last"]))
    except Exception as exc:  # an implementation that crashes fails the check, with the case
        return Outcome("failed", f"{type(exc).__name__}: {exc}", state["n"], None, _jsonable(state["last"]))
    return Outcome("passed", "", state["n"], state["worst"])


def _jsonable(example):
    if isinstance(example, dict):
        return example
    return {"args": [str(a) if isinstance(a, int) and a > 2**53 else a for a in example]}


def _expect(got, ref, S, dtype: str, what: str) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != np.shape(ref):
        raise Mismatch(f"{what}: shape {got.shape}, expected {np.shape(ref)}")
    chk = compare(got, ref, S, dtype)
    if not chk.ok:
        raise Mismatch(f"{what}: {chk.describe()}", chk.ratio)
    return chk.ratio


# --- level G: generator -------------------------------------------------------------------

def check_philox_kat(impl: Implementation, device: str, dtype: str, max_examples: int) -> Outcome:
    if impl.philox is None:
        return Outcome("skipped", f"{impl.name} has no philox() (optional within the generator capability)")
    env = json.loads((VECTORS / "philox4x32_10.json").read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"]]
    counters = np.array([[int(w, 16) for w in t["counter"]] for t in tests], dtype=np.uint32)
    bad = []
    for t, c in zip(tests, counters):
        out = np.asarray(impl.philox(c[None, :], np.array([int(w, 16) for w in t["key"]], dtype=np.uint32), device))
        if [int(v) for v in out.reshape(-1)] != [int(w, 16) for w in t["expected"]]:
            bad.append(t["tcId"])
    if bad:
        return Outcome("failed", f"Random123 vectors tcId {bad[:5]} differ ({len(bad)} of {len(tests)})", len(tests))
    return Outcome("passed", "", len(tests))


def check_projection_vectors(impl, device, dtype, max_examples) -> Outcome:
    env = json.loads((VECTORS / "projections.json").read_text())
    cases = env["testGroups"][0]["tests"]
    for c in cases:
        A, B = impl.projection(int(c["seed"]), c["r"], c["n_in"], c["n_out"], c["group"], device)
        for name, M in (("A", A), ("B", B)):
            digest = vera_ref.adapter.sha256_hex(np.asarray(M, dtype=np.float32))
            if digest != c[f"sha256_{name}"]:
                return Outcome("failed", f"projections.json tcId {c['tcId']} ({c['comment']}): sha256 of {name} is "
                                         f"{digest[:16]}..., expected {c[f'sha256_{name}'][:16]}...", len(cases),
                               case={"seed": c["seed"], "r": c["r"], "n_in": c["n_in"], "n_out": c["n_out"],
                                     "group": c["group"]})
    return Outcome("passed", "", len(cases))


def check_projection(impl, device, dtype, max_examples) -> Outcome:
    def body(args):
        seed, r, n_in, n_out, group = args
        A, B = impl.projection(seed, r, n_in, n_out, group, device)
        a, b = vera_ref.projection(seed, r, n_in, n_out, group)
        for name, got, want in (("A", A, a), ("B", B, b)):
            got = np.asarray(got)
            if got.dtype != np.float32 or got.shape != want.shape:
                raise Mismatch(f"{name}: {got.dtype} {got.shape}, expected float32 {want.shape}")
            diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
            if diff.size:
                i = np.unravel_index(diff[0], want.shape)
                raise Mismatch(f"{name}: {diff.size} of {want.size} elements differ in bits; first at {tuple(map(int, i))}: "
                               f"{float(got[i])!r} vs {float(want[i])!r}")
        return None
    return _property(projection_args, body, max_examples)


# --- levels M and T: math ---------------------------------------------------------------------

def _layer_property(impl, device, dtype, max_examples, body, dropout=True) -> Outcome:
    dropout = dropout and getattr(impl, "dropout", True)
    out = _property(case_specs(dropout=dropout), lambda spec: body(build_case(spec, dtype, device)), max_examples)
    out.tolerance = _tol(dtype)
    return out


def _kw(case: LayerCase) -> dict:
    return dict(layout=case.layout, dropout_mask=case.dropout_mask, dropout=case.dropout)


def check_forward(impl, device, dtype, max_examples) -> Outcome:
    def body(c: LayerCase):
        ref = vera_ref.forward(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, c.lambda_b, **_kw(c))
        S = forward_magnitude(c.x, c.W, c.bias, c.A, c.B, c.lambda_d, c.lambda_b, **_kw(c))
        return _expect(impl.forward(c), ref, S, dtype, "y")
    return _layer_property(impl, device, dtype, max_examples, body)


def check_backward(impl, device, dtype, max_examples) -> Outcome:
    def body(c: LayerCase):
        ref = vera_ref.backward(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b, c.dy, **_kw(c))
        S = backward_magnitude(c.x, c.W, c.A, c.B, c.lambda_d, c.lambda_b, c.dy, **_kw(c))
        got = impl.backward(c)
        return max(_expect(g, r, s, dtype, what) for g, r, s, what in
                   zip(got, ref, S, ("dx", "d_lambda_d", "d_lambda_b")))
    return _layer_property(impl, device, dtype, max_examples, body)


def check_merge(impl, device, dtype, max_examples) -> Outcome:
    def body(c: LayerCase):
        ref = vera_ref.merge(c.W, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout)
        S = merge_magnitude(c.W, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout)
        return _expect(impl.merge(c), ref, S, dtype, "W + Delta W")
    return _layer_property(impl, device, dtype, max_examples, body, dropout=False)


def check_unmerge(impl, device, dtype, max_examples) -> Outcome:
    from vera_ref.dtypes import round_to

    def body(c: LayerCase):
        Wm = round_to(vera_ref.merge(c.W, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout), dtype).astype(np.float64)
        ref = vera_ref.unmerge(Wm, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout)
        S = merge_magnitude(Wm, c.A, c.B, c.lambda_d, c.lambda_b, layout=c.layout)
        return _expect(impl.unmerge(c, Wm), ref, S, dtype, "W - Delta W")
    return _layer_property(impl, device, dtype, max_examples, body, dropout=False)


def check_math_vectors(impl, device, dtype, max_examples) -> Outcome:
    """spec/vectors/math.json: the cases of the check's dtype, through forward/backward/merge as claimed."""
    from .vectors_runner import math_case
    env = json.loads((VECTORS / "math.json").read_text())
    cases = [c for c in env["testGroups"][0]["tests"] if c["dtype"] == dtype
             and (c["dropout"] == 0 or getattr(impl, "dropout", True))]
    if not cases:
        return Outcome("skipped", f"math.json has no {dtype} cases (it has float32 and float64)")
    worst = 0.0
    for c in cases:
        case = math_case(c, device)
        outs = {}
        if "forward" in impl.capabilities:
            outs["y"] = impl.forward(case)
        if "backward" in impl.capabilities:
            outs["dx"], outs["dlambda_d"], outs["dlambda_b"] = impl.backward(case)
        if "merge" in impl.capabilities:
            outs["W_merged"] = impl.merge(case)
        from .vectors_runner import unbits
        for k, got in outs.items():
            ref = unbits(c["expected"][k]).reshape(c["expected"][k]["shape"])
            S = unbits(c["magnitude"][k]).reshape(c["magnitude"][k]["shape"])
            try:
                worst = max(worst, _expect(got, ref, S, dtype, f"tcId {c['tcId']} {k}"))
            except Mismatch as exc:
                return Outcome("failed", str(exc), len(cases), exc.ratio, {"tcId": c["tcId"]}, _tol(dtype))
    return Outcome("passed", "", len(cases), worst, tolerance=_tol(dtype))


# --- level F: files ------------------------------------------------------------------------------

def check_files_valid(impl, device, dtype, max_examples) -> Outcome:
    env = json.loads((VECTORS / "files.json").read_text())
    cases = env["testGroups"][0]["tests"]
    for c in cases:
        path = VECTORS / "files" / c["file"]
        want = LoadedAdapter.of(vera_ref.load_adapter(path))
        try:
            got = impl.load_adapter(path)
        except Exception as exc:
            return Outcome("failed", f"valid file {c['file']} ({c['comment']}) rejected: {exc}", len(cases),
                           case={"file": c["file"]})
        problems = [f for f in ("r", "generator", "seed", "modules") if getattr(got, f) != getattr(want, f)]
        for m in want.lambda_d:
            for what in ("lambda_d", "lambda_b"):
                if not np.array_equal(np.asarray(getattr(got, what).get(m), np.float64), getattr(want, what)[m]):
                    problems.append(f"{m}.{what}")
        if problems:
            return Outcome("failed", f"{c['file']} ({c['comment']}): {', '.join(problems[:4])} differ", len(cases),
                           case={"file": c["file"]})
    return Outcome("passed", "", len(cases))


def check_files_invalid(impl, device, dtype, max_examples) -> Outcome:
    env = json.loads((VECTORS / "files.json").read_text())
    cases = env["testGroups"][1]["tests"]
    accepted = []
    for c in cases:
        try:
            impl.load_adapter(VECTORS / "files" / c["file"])
        except Exception:
            continue
        accepted.append(f"{c['file']} ({c['comment']}; the reference says: {c['error']['message']})")
    if accepted:
        return Outcome("failed", f"{len(accepted)} invalid file(s) accepted, first: {accepted[0]}", len(cases))
    return Outcome("passed", "", len(cases))


def check_files_roundtrip(impl, device, dtype, max_examples) -> Outcome:
    @st.composite
    def adapters(draw):
        r = draw(st.integers(1, 9))
        n = draw(st.integers(1, 4))
        layouts = draw(st.lists(st.sampled_from(["linear", "conv1d"]), min_size=n, max_size=n))
        mods = [(f"model.layers.{i}.proj", draw(st.integers(1, 20)), draw(st.integers(1, 20)), layouts[i])
                for i in range(n)]
        return {"r": r, "seed": str(draw(st.integers(0, 2**64 - 1))), "modules": mods,
                "values_seed": draw(st.integers(0, 2**32 - 1))}

    def body(spec):
        rng = np.random.default_rng(spec["values_seed"])
        ad = vera_ref.new_adapter(spec["modules"], r=spec["r"], seed=int(spec["seed"]))
        for m in ad.config.modules:
            ad.lambda_d[m.name] = rng.normal(size=spec["r"]).astype(np.float32)
            ad.lambda_b[m.name] = rng.normal(size=m.out_features).astype(np.float32)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "a.safetensors"
            impl.save_adapter(LoadedAdapter.of(ad), path)
            try:
                back = vera_ref.validate_adapter(path)
            except vera_ref.AdapterFileError as exc:
                raise Mismatch(f"the reference rejects the written file: {exc}") from None
        for m in ad.config.modules:
            if not (np.array_equal(back.lambda_d[m.name], ad.lambda_d[m.name])
                    and np.array_equal(back.lambda_b[m.name], ad.lambda_b[m.name])):
                raise Mismatch(f"{m.name}: vectors changed on the way through the file")
        if [m.name for m in back.config.modules] != [m.name for m in ad.config.modules]:
            raise Mismatch("module order or names changed")
        return None
    return _property(adapters(), body, max(5, max_examples // 4))


CHECKS = [
    Check("philox_kat", "generator", "G", False, check_philox_kat, "the 55 Random123 philox4x32-10 vectors"),
    Check("projection_vectors", "generator", "G", False, check_projection_vectors, "spec/vectors/projections.json"),
    Check("projection", "generator", "G", False, check_projection, "random (seed, r, n_in, n_out, group): bit-exact"),
    Check("forward", "forward", "M", True, check_forward, "spec 3.2-3.3 against the float64 reference"),
    Check("backward", "backward", "T", True, check_backward, "spec 3.4 against the float64 reference"),
    Check("merge", "merge", "M", True, check_merge, "spec 3.5"),
    Check("unmerge", "unmerge", "M", True, check_unmerge, "spec 3.6"),
    Check("math_vectors", "forward", "M", True, check_math_vectors, "spec/vectors/math.json",
          dtypes=("float32", "float64")),
    Check("files_valid", "files", "F", False, check_files_valid, "every valid file vector reads right"),
    Check("files_invalid", "files", "F", False, check_files_invalid, "every invalid file vector is refused"),
    Check("files_roundtrip", "files", "F", False, check_files_roundtrip, "written files pass the reference"),
]
