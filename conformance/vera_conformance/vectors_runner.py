"""Check results of an implementation in any language against spec/vectors (spec 6).

An implementation outside Python runs the vectors itself and writes one JSON file:

    {"implementation": "my-vera 0.3 (Rust)",
     "philox4x32_10": {"<tcId>": ["<w0 hex>", "<w1>", "<w2>", "<w3>"], ...},
     "projections":   {"<tcId>": {"sha256_A": "<hex>", "sha256_B": "<hex>"}, ...},
     "math":          {"<tcId>": {"y": {"shape": [...], "bits": [...]}, "dx": ..., ...}, ...},
     "files":         {"<tcId>": "accepted" | {"rejected": {"code": "E4.6.<step>.<n>", "field": "..."}}, ...}}

Bits are the output's float64 bits in 16-digit hex (or float32 bits in 8 digits), nested
like the shape. A rejected file names the spec 4.6 rule it broke (its code and field, spec
6.5); a bare "rejected" fails. Omit a section you do not implement, or leave the template's
empty values: they are reported as skipped.
``vera-ref conformance-vectors --template FILE`` writes the skeleton with every tcId;
``vera-ref conformance-vectors --results FILE`` checks it and ends with
``N passed, N failed``.
"""
from __future__ import annotations

import json

import numpy as np

import vera_ref
from vera_ref.tolerance import compare, constant
from vera_ref.resources import vectors_dir

VECTORS = vectors_dir()

from .protocol import LayerCase



def unbits(obj) -> np.ndarray:
    """{"bits": nested hex} (16 digits: float64, 8 digits: float32) -> float64 array."""
    bits = obj["bits"] if isinstance(obj, dict) else obj
    flat = np.array(bits, dtype=object).reshape(-1)
    if flat.size == 0:
        return np.zeros(0)
    width = len(flat[0])
    ints = np.array([int(b, 16) for b in flat], dtype=np.uint64)
    vals = ints.view(np.float64) if width == 16 else ints.astype(np.uint32).view(np.float32).astype(np.float64)
    return vals.reshape(np.shape(np.array(bits, dtype=object)))


def math_case(c: dict, device: str = "cpu") -> LayerCase:
    """A LayerCase from a math.json test."""
    inp = {k: unbits(v).reshape(v["shape"]) for k, v in c["inputs"].items()}
    A, B = vera_ref.projection(int(c["seed"]), c["r"], c["n_in"], c["n_out"])
    return LayerCase(int(c["seed"]), c["r"], c["n_in"], c["n_out"], 0, c["layout"], inp["x"], inp["W"],
                     inp["bias"], inp["lambda_d"], inp["lambda_b"], inp["dy"], A, B, c["dtype"], device,
                     c["dropout"], inp.get("dropout_mask"))


def _load(name: str) -> list[dict]:
    env = json.loads((VECTORS / name).read_text())
    return [t for g in env["testGroups"] for t in g["tests"]]


def template() -> dict:
    return {"implementation": "",
            "philox4x32_10": {str(t["tcId"]): [] for t in _load("philox4x32_10.json")},
            "projections": {str(t["tcId"]): {"sha256_A": "", "sha256_B": ""} for t in _load("projections.json")},
            "math": {str(t["tcId"]): {k: {"shape": v["shape"], "bits": []} for k, v in t["expected"].items()}
                     for t in _load("math.json")},
            "files": {str(t["tcId"]): "" for t in _load("files.json")}}


def _empty(v) -> bool:
    """A template value not filled in: "", [], {} or a mapping of such (shapes aside)."""
    if isinstance(v, dict):
        return all(_empty(x) for k, x in v.items() if k != "shape")
    return v is None or v == "" or v == []


def _section(results: dict, name: str, vectors_file: str, judge) -> list[tuple[str, str, str]]:
    """[(id, status, detail)] for one vector file; judge(test, result) -> (ok, detail)."""
    sec = results.get(name)
    if not isinstance(sec, dict):
        sec = None
    out = []
    for t in _load(vectors_file):
        tid = f"{name}/{t['tcId']}"
        if sec is None or str(t["tcId"]) not in sec or _empty(sec[str(t["tcId"])]):
            out.append((tid, "skipped", "no result"))
            continue
        ok, detail = judge(t, sec[str(t["tcId"])])
        out.append((tid, "passed" if ok else "failed", detail))
    return out


def _philox(t, got):
    got = [w.lower().zfill(8) for w in got]
    return got == t["expected"], f"got {got}, expected {t['expected']}"


def _projection(t, got):
    ok = got.get("sha256_A") == t["sha256_A"] and got.get("sha256_B") == t["sha256_B"]
    return ok, f"sha256 differ ({t['comment']})"


QUANTITY = {"y": "forward", "dx": "dx", "dlambda_d": "d_lambda_d", "dlambda_b": "d_lambda_b", "W_merged": "merge"}


def math_constant(t: dict, key: str) -> float:
    """spec 5.2.3: C of the output ``key`` of a math.json case, from its sizes."""
    N, in_f = t["inputs"]["x"]["shape"][-2:]
    return constant(QUANTITY[key], t["dtype"], N=N, in_features=in_f, out_features=t["inputs"]["lambda_b"]["shape"][0],
                    r=t["r"])


def _math(t, got):
    bad = []
    for k, v in got.items():
        ref = unbits(t["expected"][k]).reshape(t["expected"][k]["shape"])
        S = unbits(t["magnitude"][k]).reshape(t["magnitude"][k]["shape"])
        chk = compare(unbits(v).reshape(v["shape"]), ref, S, t["dtype"], math_constant(t, k))
        if not chk.ok:
            bad.append(f"{k}: {chk.describe()}")
    return not bad, "; ".join(bad)


def _file(t, got):
    if t["result"] == "valid":
        return got == "accepted", f"{t['file']}: {got!r}, expected 'accepted'"
    err = t["error"]
    want = {"code": err.get("code"), "field": err["field"]}
    named = got.get("rejected") if isinstance(got, dict) else None
    if not isinstance(named, dict):
        return False, f"{t['file']}: {got!r}, expected {{'rejected': {want}}} (the rule it breaks, spec 6.5)"
    ok = named.get("field") == want["field"] and (want["code"] is None or named.get("code") == want["code"])
    return ok, f"{t['file']}: rejected for {named}, expected {want} ({err['message']})"


def check_results(results: dict) -> list[tuple[str, str, str]]:
    """[(id, status, detail)] for every vector."""
    return (_section(results, "philox4x32_10", "philox4x32_10.json", _philox)
            + _section(results, "projections", "projections.json", _projection)
            + _section(results, "math", "math.json", _math)
            + _section(results, "files", "files.json", _file))
