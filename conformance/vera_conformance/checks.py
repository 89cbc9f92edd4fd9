"""The conformance checks (spec 5.3 levels G, F, M, T), each a property over hypothesis cases
or a walk over spec/vectors. A check returns an Outcome; it never raises for a wrong answer.

Every check is ``run(impl, device, dtype, max_examples, case=None)``: with ``case`` (the JSON a
failure printed) it replays exactly that case instead of searching.
"""
from __future__ import annotations

import dataclasses
import json
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
from vera_ref.tolerance import PRECISION_EPS, U_ACC, compare, constant
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


# the generator and math checks live in checks_generator and checks_math (one level a file);
# their names are re-exported here for the other check modules and the tests
from .checks_generator import (_projection_equal, check_philox_kat, check_projection,  # noqa: E402,F401
                               check_projection_distribution, check_projection_vectors)
from .checks_math import (_backward_ref, _forward_ref, _gradients, _kw, _layer_property,  # noqa: E402,F401
                          _merge_ref, _sequences, _twin, check_adapter_scale, check_backward,
                          check_eval_dropout, check_forward, check_generator_probe, check_math_vectors,
                          check_merge, check_stateless, check_train, check_unmerge, tf32_probe)


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
