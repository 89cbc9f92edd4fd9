"""VeraConfig: what to adapt and how, in PEFT's words (DESIGN 4; spec 2, 4.3)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from vera_ref.metadata import GENERATORS, SHARING

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class VeraConfig:
    """Configuration of one VeRA adapter.

    r: rank; target_modules: module-name suffixes (``["query", "value"]`` matches
    ``...attention.self.query``) or one regex matched against the full dotted name;
    seed: the projection seed in [0, 2^64) (spec 1.3); d_initial: initial lambda_d;
    dropout: on the adapter input only (spec 3.3); sharing: ``shared`` or
    ``per-module`` (spec 2.4); generator: ``philox4x32-10``, ``peft-mt19937`` or
    ``stored`` (spec 2.5); vector_dtype: dtype of the trained vectors (float32 by
    default, also for float16/bfloat16 base models); modules_to_save: module-name
    suffixes of fully trained extra modules (a task head), saved with the adapter.
    """

    r: int = 256
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "value"])
    seed: int = 0
    d_initial: float = 0.1
    dropout: float = 0.0
    sharing: str = "shared"
    generator: str = "philox4x32-10"
    vector_dtype: torch.dtype | str = torch.float32
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vector_dtype, str):
            if self.vector_dtype not in _DTYPES:
                raise ValueError(f"vector_dtype must be one of {', '.join(_DTYPES)}, got {self.vector_dtype!r}")
            self.vector_dtype = _DTYPES[self.vector_dtype]
        if self.vector_dtype not in DTYPE_NAMES:
            raise ValueError(f"vector_dtype must be one of {', '.join(_DTYPES)}, got {self.vector_dtype}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an integer >= 1, got {self.r!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        if self.sharing not in SHARING:
            raise ValueError(f"sharing must be one of {', '.join(SHARING)}, got {self.sharing!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")

    @property
    def vector_dtype_name(self) -> str:
        return DTYPE_NAMES[self.vector_dtype]

    def targets(self, name: str) -> bool:
        """Does the dotted module ``name`` match target_modules?"""
        return _matches(name, self.target_modules)

    def saves(self, name: str) -> bool:
        return bool(self.modules_to_save) and _matches(name, self.modules_to_save)


def _matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)
