"""Level F (spec 5.3): every valid file vector read with every field, every invalid one refused for its
rule (code and field), and written adapters read back by the reference with every field equal."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import round_to

from . import check_base as _K
from .check_base import Mismatch, Outcome, _bits_equal, _crash, _layouts, _property
from .protocol import LoadedAdapter


# --- level F: files ------------------------------------------------------------------------------

def _file_tests(valid: bool, case) -> list[dict]:
    env = json.loads((_K.VECTORS / "files.json").read_text())
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
        path = _K.VECTORS / "files" / c["file"]
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
            impl.load_adapter(_K.VECTORS / "files" / c["file"])
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
