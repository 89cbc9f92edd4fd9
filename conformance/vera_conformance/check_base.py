"""What every check module is built on: ``Check``, ``Outcome``, ``Mismatch``, the hypothesis loop
(``_property``), the spec 5.2 comparison (``_expect``, ``_C``), how a crash is reported (the innermost
frame outside the kit), the skip reasons read from an implementation's declarations, and the case
builder. The checks themselves are in checks_generator, checks_math, checks_files, checks_numeric,
checks_own, checks_writer and checks_quantized; ``checks.CHECKS`` lists them all."""
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
