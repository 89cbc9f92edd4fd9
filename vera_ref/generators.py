"""The registry of projection generators a file may name (spec 2.5).

One home for everything that depends on the generator's name: whether it takes a
seed and which seeds are valid (spec 1.3), which sharing modes it allows (spec 2.4),
whether a slice of a larger projection equals the smaller one, and the NumPy
projection itself. Metadata, files, configs, the torch projection store, ONNX export
and serving all ask this registry instead of comparing strings.

Backends register their device implementation under the same name (in the spirit of
NumPy's ``BitGenerator``)::

    from vera_ref import generators
    generators.register_device("philox4x32-10", "torch", my_torch_projection)
    fn = generators.get("philox4x32-10").device("torch")   # -> my_torch_projection

A device implementation takes the same arguments as ``Generator.projection`` plus
whatever its framework needs (a device, a dtype); the registry only stores it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import ProjectionError
from .peft_mt19937 import peft_projection
from .projection import projection
from .seed import SEED_LIMIT, check_seed  # noqa: F401  (SEED_LIMIT re-exported)

Projection = Callable[[int, int, int, int, int], "tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class Generator:
    """One named generator (spec 2.5).

    name: the string a file's ``generator`` field holds; clause: where the spec defines it;
    has_seed: whether files name a seed (``stored`` has none); sharing: the sharing modes
    of spec 2.4 it allows; slices: whether A[:, :in], B[:out] of a larger projection equal
    the smaller projection (spec 1.2, true for Philox, false for PEFT's MT19937 stream).
    """

    name: str
    clause: str
    has_seed: bool
    sharing: tuple[str, ...]
    slices: bool
    numpy_projection: Projection | None = None
    devices: dict[str, Callable[..., Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def generates(self) -> bool:
        """True when A and B can be rebuilt (every generator but ``stored``)."""
        return self.numpy_projection is not None

    def check_seed(self, seed: Any) -> int | None:
        """spec 1.3: an integer (not a bool) in [0, 2^64) for seeded generators, None otherwise.

        Returns the seed as a Python int; raises ``ProjectionError`` naming the problem.
        """
        if not self.has_seed:
            if seed is not None:
                raise ProjectionError(f"the {self.name} generator takes no seed, got {seed!r}")
            return None
        return check_seed(seed)

    def check_sharing(self, sharing: str) -> None:
        if sharing not in self.sharing:
            raise ProjectionError(f"the {self.name} generator supports sharing "
                                  f"{' or '.join(repr(s) for s in self.sharing)} only, got {sharing!r}")

    def projection(self, seed: int, r: int, n_in: int, n_out: int, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A (r, n_in) and B (n_out, r) as float32 NumPy arrays (spec 2.1)."""
        if self.numpy_projection is None:
            raise ProjectionError(f"the {self.name} generator has no rule to generate from: A and B are stored")
        return self.numpy_projection(self.check_seed(seed), r, n_in, n_out, group)

    def device(self, framework: str) -> Callable[..., Any]:
        """The implementation a backend registered for ``framework`` (e.g. ``"torch"``)."""
        try:
            return self.devices[framework]
        except KeyError:
            raise ProjectionError(f"no {framework} implementation of the {self.name} generator is registered "
                                  f"(import the backend that provides it)") from None


_REGISTRY: dict[str, Generator] = {}


def register(gen: Generator) -> Generator:
    """Add a generator; a name can be registered once."""
    if gen.name in _REGISTRY:
        raise ProjectionError(f"generator {gen.name!r} is already registered")
    _REGISTRY[gen.name] = gen
    return gen


def get(name: Any) -> Generator:
    """The generator called ``name``; ``ProjectionError`` for an unknown name."""
    gen = _REGISTRY.get(name) if isinstance(name, str) else None
    if gen is None:
        raise ProjectionError(f"generator must be one of {', '.join(names())}, got {name!r}")
    return gen


def names() -> tuple[str, ...]:
    """Registered names, in registration order (spec 2.5 order for the built-ins)."""
    return tuple(_REGISTRY)


def register_device(name: str, framework: str, fn: Callable[..., Any]) -> None:
    """Register ``fn`` as the ``framework`` implementation of generator ``name`` (idempotent per fn)."""
    get(name).devices[framework] = fn


def _philox(seed: int, r: int, n_in: int, n_out: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    return projection(seed, r, n_in, n_out, group)


def _peft(seed: int, r: int, n_in: int, n_out: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    if group:
        raise ProjectionError("group applies to philox4x32-10 only: peft-mt19937 has one shared pair (spec 2.5.3)")
    return peft_projection(seed, r, n_in, n_out)


PHILOX = register(Generator("philox4x32-10", "2.5.1", has_seed=True, sharing=("shared", "per-module"),
                            slices=True, numpy_projection=_philox))
STORED = register(Generator("stored", "2.5.2", has_seed=False, sharing=("shared", "per-module"), slices=True))
PEFT_MT19937 = register(Generator("peft-mt19937", "2.5.3", has_seed=True, sharing=("shared",), slices=False,
                                  numpy_projection=_peft))
DEFAULT = PHILOX.name
