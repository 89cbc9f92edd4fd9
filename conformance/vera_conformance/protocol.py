"""The door an implementation comes through (DESIGN 6): NumPy arrays at the boundary.

An implementation is an object with a ``name``, the ``capabilities`` it claims, and
``supports(device, dtype)``. The kit calls only the methods of the capabilities
claimed; a missing capability or an unsupported (device, dtype) skips those checks
with the reason. Subclass ``Implementation`` and override what you have:

    capability   method                                   returns
    generator    projection(seed, r, n_in, n_out, group, device)  (A float32 (r, n_in), B float32 (n_out, r))
                 philox(counters uint32 (N, 4), key uint32 (2,), device)  uint32 (N, 4)   [optional]
    forward      forward(case)                            y (..., out)
    backward     backward(case)                           (dx, d_lambda_d, d_lambda_b)
    merge        merge(case)                              W + Delta W, in case.layout
    unmerge      unmerge(case, W_merged)                  W_merged - Delta W
    files        load_adapter(path)                       LoadedAdapter, or raise on an invalid file
                 save_adapter(adapter, path)              writes a spec file for a LoadedAdapter

Plug one in with ``--impl module:factory`` (factory() returns the object) or the
environment variable VERA_IMPL=module:factory.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import numpy as np

CAPABILITIES = ("generator", "forward", "backward", "merge", "unmerge", "files")
DTYPES = ("float32", "float16", "bfloat16", "float64")
DEVICES = ("cpu", "cuda")


@dataclass
class LayerCase:
    """One adapted layer and its inputs (spec 3.1). Values are float64 arrays whose values are
    exactly representable in ``dtype``; A and B are the spec's float32 projections of
    (seed, r, n_in, n_out, group). An implementation that claims ``generator`` should make its
    own projections from the seed (the check then covers slicing and bounds); one without may
    use A and B as given."""

    seed: int
    r: int
    n_in: int
    n_out: int
    group: int
    layout: str  # "linear": W (out, in); "conv1d": W (in, out)
    x: np.ndarray  # (N, in)
    W: np.ndarray
    bias: np.ndarray | None  # (out,)
    lambda_d: np.ndarray  # (r,)
    lambda_b: np.ndarray  # (out,)
    dy: np.ndarray  # (N, out)
    A: np.ndarray  # (r, n_in) float32
    B: np.ndarray  # (n_out, r) float32
    dtype: str = "float32"
    device: str = "cpu"
    dropout: float = 0.0
    dropout_mask: np.ndarray | None = None  # (N, in) of 0/1: dropout(x) = x * mask / (1 - p)

    @property
    def in_features(self) -> int:
        return self.x.shape[-1]

    @property
    def out_features(self) -> int:
        return self.lambda_b.shape[0]

    def describe(self) -> dict:
        return {"seed": str(self.seed), "r": self.r, "n_in": self.n_in, "n_out": self.n_out, "group": self.group,
                "layout": self.layout, "N": self.x.shape[0], "in_features": self.in_features,
                "out_features": self.out_features, "dtype": self.dtype, "device": self.device,
                "dropout": self.dropout, "bias": self.bias is not None}


@dataclass
class LoadedAdapter:
    """What a files-capable implementation returns from load_adapter: the config fields the
    checks compare and the vectors as float64 arrays."""

    r: int
    generator: str
    seed: int | None
    modules: list[tuple[str, int, int, str]]  # (name, in_features, out_features, layout), in file order
    lambda_d: dict[str, np.ndarray]
    lambda_b: dict[str, np.ndarray]
    vector_dtype: str = "float32"
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, ad) -> "LoadedAdapter":
        """The LoadedAdapter of a vera_ref.Adapter (what the reference reads from a file)."""
        cfg = ad.config
        return cls(cfg.r, cfg.generator, cfg.seed,
                   [(m.name, m.in_features, m.out_features, m.layout) for m in cfg.modules],
                   {k: np.asarray(v, np.float64) for k, v in ad.lambda_d.items()},
                   {k: np.asarray(v, np.float64) for k, v in ad.lambda_b.items()}, cfg.vector_dtype)


class Implementation:
    """Base class: claims nothing. Override ``capabilities`` and the matching methods."""

    name = "unnamed"
    capabilities: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset({"cpu"})
    dtypes: frozenset[str] = frozenset({"float32"})
    dropout = True  # False: an inference-only implementation; cases with a dropout mask are not drawn

    def supports(self, device: str, dtype: str) -> bool:
        return device in self.devices and dtype in self.dtypes

    def projection(self, seed, r, n_in, n_out, group, device):  # pragma: no cover - interface
        raise NotImplementedError

    philox = None  # optional: philox(counters, key, device) -> uint32 (N, 4)

    def forward(self, case: LayerCase):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, case: LayerCase):  # pragma: no cover - interface
        raise NotImplementedError

    def merge(self, case: LayerCase):  # pragma: no cover - interface
        raise NotImplementedError

    def unmerge(self, case: LayerCase, W_merged):  # pragma: no cover - interface
        raise NotImplementedError

    def load_adapter(self, path) -> LoadedAdapter:  # pragma: no cover - interface
        raise NotImplementedError

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def load_implementation(spec: str | None = None) -> Implementation:
    """``module:factory`` (or $VERA_IMPL) -> the implementation object."""
    spec = spec or os.environ.get("VERA_IMPL")
    if not spec or ":" not in spec:
        raise ValueError("name an implementation as module:factory (--impl or VERA_IMPL), "
                         "e.g. vera_conformance.impls.reference:make")
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    impl = obj() if callable(obj) and not isinstance(obj, Implementation) else obj
    unknown = set(impl.capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{impl.name}: unknown capabilities {sorted(unknown)} (known: {', '.join(CAPABILITIES)})")
    return impl
