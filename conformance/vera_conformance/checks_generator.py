"""Level G checks (spec 5.3): the generator against the Random123 and projection vectors and
random arguments bit-exactly, or an ``own`` generator's distribution. Registered in checks.CHECKS."""
from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import strategies as st

import vera_ref

from . import check_base as _K
from . import strategies as S
from .check_base import Mismatch, Outcome, _crash, _gen_name, _property
from .protocol import Implementation

# --- level G: generator -------------------------------------------------------------------

def check_philox_kat(impl: Implementation, device: str, dtype: str, max_examples: int, case=None) -> Outcome:
    if impl.philox is None:
        return Outcome("skipped", f"{impl.name} has no philox() (optional within the generator capability)")
    env = json.loads((_K.VECTORS / "philox4x32_10.json").read_text())
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
    env = json.loads((_K.VECTORS / "projections.json").read_text())
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
