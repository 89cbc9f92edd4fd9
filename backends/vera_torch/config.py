"""VeraConfig: what to adapt and how, in PEFT's words (spec 2, 3.3, 3.9, 4.3)."""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field

import torch

from vera_ref import generators
from vera_ref.errors import ProjectionError

from .errors import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
SHARING = ("shared", "per-module")  # spec 2.4
ALL_LINEAR = "all-linear"  # PEFT's shorthand (INCLUDE_LINEAR_LAYERS_SHORTHAND)


@dataclass
class VeraConfig:
    """Configuration of one VeRA adapter; every field is checked on construction (``ConfigError``).

    r: rank, an integer >= 1; target_modules: module-name suffixes (``["query", "value"]``
    matches ``...attention.self.query``), one regex matched against the full dotted name
    (``re.fullmatch``, as PEFT), or ``"all-linear"`` (every nn.Linear / Conv1D but the model's
    output embeddings and modules_to_save, as PEFT); every entry, and the regex, must match
    at least one layer of the model it is applied to (``ConfigError`` naming the entry and the
    model's linear-layer name endings) unless ``allow_unmatched`` is true;
    seed: the projection seed, an integer (not a bool) in [0, 2^64) (spec 1.3); d_initial:
    initial lambda_d, finite also in ``vector_dtype`` (spec 3.9); dropout: in [0, 1), on the
    adapter input only (spec 3.3); sharing: ``shared`` or ``per-module`` (spec 2.4);
    generator: a name of the ``vera_ref.generators`` registry (spec 2.5; ``stored`` draws a
    fresh pair with Philox from ``seed`` and then keeps it); vector_dtype: dtype of the
    trained vectors (float32 by default, also for float16/bfloat16 base models);
    modules_to_save: module-name suffixes (or one regex) of fully trained extra modules
    (a task head), saved with the adapter, each of which must match a module (as target_modules);
    allow_unmatched: accept entries that match nothing (a list shared by several architectures).
    """

    r: int = 256
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "value"])
    seed: int = 0
    d_initial: float = 0.1
    dropout: float = 0.0
    sharing: str = "shared"
    generator: str = "philox4x32-10"
    vector_dtype: torch.dtype | str = torch.float32
    modules_to_save: list[str] | str | None = None
    allow_unmatched: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vector_dtype, str) and self.vector_dtype in _DTYPES:
            self.vector_dtype = _DTYPES[self.vector_dtype]
        if not isinstance(self.vector_dtype, torch.dtype) or self.vector_dtype not in DTYPE_NAMES:
            raise ConfigError("vector_dtype", f"must be one of {', '.join(_DTYPES)}, got {self.vector_dtype!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, numbers.Integral) or self.r < 1:
            raise ConfigError("r", f"must be an integer >= 1, got {self.r!r}")
        self.r = int(self.r)
        try:
            gen = generators.get(self.generator)
            # stored: the seed draws the first pair with the default generator, then the pair is kept
            self.seed = (gen if gen.has_seed else generators.get(generators.DEFAULT)).check_seed(self.seed)
        except ProjectionError as e:
            name = "seed" if isinstance(self.generator, str) and self.generator in generators.names() else "generator"
            raise ConfigError(name, _problem(name, e)) from None
        if self.sharing not in SHARING:
            raise ConfigError("sharing", f"must be one of {', '.join(SHARING)}, got {self.sharing!r}")
        try:
            gen.check_sharing(self.sharing)
        except ProjectionError as e:
            raise ConfigError("sharing", _problem("sharing", e)) from None
        self.d_initial = _real("d_initial", self.d_initial)
        if not math.isfinite(self.d_initial):
            raise ConfigError("d_initial", f"must be a finite number, got {self.d_initial!r}")
        if not torch.isfinite(torch.tensor(self.d_initial, dtype=torch.float64, device="cpu").to(self.vector_dtype)):
            raise ConfigError("d_initial", f"{self.d_initial!r} overflows vector_dtype {self.vector_dtype_name}")
        self.dropout = _real("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        self.target_modules = _patterns("target_modules", self.target_modules)
        if isinstance(self.target_modules, str) and self.target_modules.lower() == ALL_LINEAR:
            self.target_modules = ALL_LINEAR
        if self.modules_to_save is not None:
            self.modules_to_save = _patterns("modules_to_save", self.modules_to_save)
        if not isinstance(self.allow_unmatched, bool):
            raise ConfigError("allow_unmatched", f"must be True or False, got {self.allow_unmatched!r}")

    @property
    def vector_dtype_name(self) -> str:
        return DTYPE_NAMES[self.vector_dtype]

    @property
    def all_linear(self) -> bool:
        return self.target_modules == ALL_LINEAR

    def targets(self, name: str) -> bool:
        """Does the dotted module ``name`` match target_modules? (``all-linear``: every name; the
        model excludes its output embeddings and modules_to_save.)"""
        return self.all_linear or _matches(name, self.target_modules)

    def saves(self, name: str) -> bool:
        return bool(self.modules_to_save) and _matches(name, self.modules_to_save)


def _problem(name: str, e: Exception) -> str:
    """The registry's message without its leading field name (``"seed must be ..."`` -> ``"must be ..."``)."""
    msg = str(e)
    return msg[len(name) + 1:] if msg.startswith(name + " ") else msg


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, f"must be a number, got {value!r}")
    return float(value)


def _patterns(name: str, value: object) -> list[str] | str:
    """A regex string (checked to compile) or a non-empty list of non-empty module-name suffixes."""
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            raise ConfigError(name, f"is not a valid regular expression ({e})") from None
        return value
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(name, f"must be a regex string or a non-empty list of module names, got {value!r}")
    return list(value)


def entry_matches(name: str, entry: str) -> bool:
    """Does one list entry of target_modules / modules_to_save name ``name`` (equal or a dot-suffix)?"""
    return name == entry or name.endswith("." + entry)


def _matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(entry_matches(name, p) for p in patterns)
