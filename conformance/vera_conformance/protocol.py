"""The door an implementation comes through (spec 5.3): NumPy arrays at the boundary.

An implementation is an object with a ``name``, the ``capabilities`` it claims, and
``supports(device, dtype)``. The kit calls only the methods of the capabilities
claimed; a missing capability or an unsupported (device, dtype) skips those checks
with the reason. By default float32, float16, bfloat16 and float64 are checked: those in
``dtypes`` as claimed, the others after a probe finds the implementation computes in them
(runner.probe_dtype: "not supported" only when it says so or returns another dtype). Subclass
``Implementation`` and override what you have:

    capability   method                                   returns
    generator    projection(seed, r, n_in, n_out, group, device)  (A float32 (r, n_in), B float32 (n_out, r))
                 philox(counters uint32 (N, 4), key uint32 (2,), device)  uint32 (N, 4)   [optional]
    forward      forward(case)                            y (N, out)
    backward     backward(case)                           (dx (N, in), d_lambda_d (r,), d_lambda_b (out,))
    merge        merge(case)                              W0 + Delta W, in case.layout
    unmerge      unmerge(case, W_merged)                  W_merged - Delta W (the layer was not merged by you)
    merged_forward merged_forward(case)                   (y_merged (N, out), y_after_unmerge (N, out) or None):
                                                          the layer of ``case`` merged, its forward of case.x
                                                          (evaluation mode); then unmerged, its forward again
                                                          (None when ``unmerge`` is not claimed)
    train        train_steps(case, lr, steps)             Trained: ``steps`` plain SGD steps on sum(dy * y)
    files        load_adapter(path)                       LoadedAdapter; on an invalid file raise an exception
                                                          with ``.field`` and ``.code`` of the spec 4.6 rule
                                                          (vera_ref.AdapterFileError has both)
                 save_adapter(adapter, path)              writes a spec file for a LoadedAdapter
    reload       save_layer(case, folder)                 y (N, out): builds the layer of ``case`` (an own
                                                          generator draws A and B from case.seed), returns
                                                          its forward of case.x and saves the adapter into
                                                          ``folder`` with the implementation's own save
                 load_layer(case, folder)                 y (N, out): a fresh layer (base W0 and bias from
                                                          the case) with the adapter loaded from ``folder``
                                                          by its own load, its forward of case.x; the case's
                                                          lambda_d, lambda_b, A and B are NaN here: they
                                                          must come from what was saved
    quantized    quantized(case, base)                    (y (N, out), dx (N, in), d_lambda_d (r,), d_lambda_b
                                                          (out,)) on ``base``, a bitsandbytes layer the kit
                                                          quantized from case.W (checks_quantized.py, spec 7.7)

The leading-slice rule (spec 2.3): A is (r, n_in) and B is (n_out, r) for the whole
group, with n_in >= in_features and n_out >= out_features; a layer uses A[:, :in] and
B[:out]. Each case gives seed, r, n_in, n_out and group: an implementation with its own
generator makes (A, B) from them and slices; one without uses ``case.A``/``case.B``.

A case with ``dropout > 0`` and a ``dropout_mask`` is training mode: dropout(x) = x *
mask / (1 - p) on the adapter input (spec 3.3); ``dropout > 0`` without a mask is
evaluation mode, where dropout is the identity. ``vera_conformance.torch_helpers`` puts
a fixed mask in place of torch's random dropout.

Declarations instead of faking (README of the kit):
    layouts        the layouts of spec 3.7 it has; cases of other layouts are not drawn
    dropout        False: inference only; cases with a dropout mask are not drawn
    adapter_scale  a constant s (or a function of r) the adapter term is multiplied by
                   (LoRA-style alpha/r): a named deviation from spec 3.2; the math
                   checks fold s into lambda_b so the rest is still checked
    generator      "philox4x32-10" (the spec's), "peft-mt19937" (bit-exact PEFT), or
                   "own" (a framework's uniform sampler: the distribution of A and B is
                   checked, and that one seed gives the same A and B bit for bit whatever the
                   global RNGs of torch, NumPy and Python's random did in between, another
                   seed others; the generator level is not claimed). With the ``reload``
                   capability, a layer saved and loaded back computes the same forward bit
                   for bit, the global RNGs moved between the two (cases with n_in = in,
                   n_out = out and group 0, so a framework's layer draws its own shapes)

Plug one in with ``--impl module:factory`` (factory() returns the object; the module is
looked up in the current folder first, as pytest does) or VERA_IMPL=module:factory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vera_ref.errors import VeraError

CAPABILITIES = ("generator", "forward", "backward", "merge", "unmerge", "train", "files", "reload", "quantized",
                "merged_forward")
DTYPES = ("float32", "float16", "bfloat16", "float64", "tf32")  # tf32: spec 5.2.2
DEVICES = ("cpu", "cuda")
LAYOUTS = ("linear", "conv1d")
GENERATOR_KINDS = ("philox4x32-10", "peft-mt19937", "own")


class NoGradient(AssertionError):
    """A trained vector got no gradient in a backward: it does not reach the output. Raised by
    ``torch_helpers.backward_arrays``; the kit reports its message as the failure."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} got no gradient: it does not reach the output")
        self.name = name


class ConformanceError(VeraError, ValueError):
    """The kit cannot run as asked: a bad implementation name or declaration, a bad ``--case``,
    ``--only`` naming no check, an unwritable report path, a run that would check nothing."""


@dataclass
class LayerCase:
    """One adapted layer and its inputs (spec 3.1). Values are float64 arrays whose values are
    exactly representable in ``dtype`` (binary32 for tf32); A and B are the spec's float32
    projections of (seed, r, n_in, n_out, group). An implementation that claims ``generator``
    should make its own projections from the seed (the check then covers slicing and bounds);
    one without may use A and B as given."""

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
    dropout_mask: np.ndarray | None = None  # (N, in) of 0/1: dropout(x) = x * mask / (1 - p); None: eval mode

    @property
    def in_features(self) -> int:
        return self.x.shape[-1]

    @property
    def out_features(self) -> int:
        return self.lambda_b.shape[0]

    @property
    def training(self) -> bool:
        return self.dropout_mask is not None

    def describe(self) -> dict:
        return {"seed": str(self.seed), "r": self.r, "n_in": self.n_in, "n_out": self.n_out, "group": self.group,
                "layout": self.layout, "N": self.x.shape[0], "in_features": self.in_features,
                "out_features": self.out_features, "dtype": self.dtype, "device": self.device,
                "dropout": self.dropout, "bias": self.bias is not None}


@dataclass
class Trained:
    """What ``train_steps`` returns: the layer after its steps.

    ``trainable`` is every parameter the optimizer updated, by the implementation's own
    names (VeRA: exactly one lambda_d (r,) and one lambda_b (out,) per layer, spec 3.4);
    ``W``, ``bias``, ``A`` and ``B`` are the frozen tensors as the layer holds them after
    training (A (r, k) with in <= k <= n_in, B (k, r) with out <= k <= n_out)."""

    lambda_d: np.ndarray
    lambda_b: np.ndarray
    trainable: dict[str, np.ndarray]
    W: np.ndarray
    A: np.ndarray
    B: np.ndarray
    bias: np.ndarray | None = None


@dataclass
class LoadedAdapter:
    """An adapter file's content (spec 4.3-4.5): what a files-capable implementation returns from
    load_adapter and what save_adapter writes. Vectors are float64 arrays (values of ``vector_dtype``).

    A writer writes every field (the writer checks compare each one, and the bytes spec 4.3 fixes):
    the module names in full (the writer picks ``module_prefix``), ``tensor_layout``, ``d_initial``,
    ``dropout``, ``provenance``, ``extra`` in ``extra_dtypes``, ``stored`` projections, and ``base_model``
    as given.
    ``base_weights`` says whether the base model is known: when given (W0 of each module as its
    layer holds it: (out, in) for linear, (in, out) for conv1d), the writer writes
    ``base_model.fingerprint`` of these weights (spec 4.3); when None it writes only a fingerprint
    ``base_model`` already holds, never one of weights it made up. A reader may leave
    ``base_weights`` None and fill the other fields it keeps (the defaults are spec 4.3's)."""

    r: int
    generator: str
    seed: int | None
    modules: list[tuple[str, int, int, str]]  # (full name, in_features, out_features, layout), in file order
    lambda_d: dict[str, np.ndarray]
    lambda_b: dict[str, np.ndarray]
    vector_dtype: str = "float32"
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # extra tensors (spec 4.4) by name
    sharing: str = "shared"
    tensor_layout: str = "per-module"  # or "packed" (spec 4.4)
    d_initial: float = 0.1  # spec 3.9
    dropout: float = 0.0  # spec 3.3
    provenance: dict = field(default_factory=dict)  # free-form JSON object (spec 4.3)
    base_model: dict[str, str] | None = None  # name / revision / fingerprint strings (spec 4.3)
    extra_dtypes: dict[str, str] = field(default_factory=dict)  # dtype of each extra tensor (spec 4.5); absent: float32
    base_weights: dict[str, np.ndarray] | None = None  # W0 by module name: the base model is known (see above)
    stored: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # generator "stored": group ->
    #   (A (r, n_in_g), B (n_out_g, r)) float32 (spec 2.5.2, 4.4)

    @classmethod
    def of(cls, ad) -> "LoadedAdapter":
        """The LoadedAdapter of a vera_ref.Adapter (what the reference reads from a file)."""
        cfg = ad.config
        return cls(cfg.r, cfg.generator, cfg.seed,
                   [(m.name, m.in_features, m.out_features, m.layout) for m in cfg.modules],
                   {k: np.asarray(v, np.float64) for k, v in ad.lambda_d.items()},
                   {k: np.asarray(v, np.float64) for k, v in ad.lambda_b.items()}, cfg.vector_dtype,
                   {k: np.asarray(v, np.float64) for k, (v, _) in ad.extra.items()}, cfg.sharing,
                   cfg.tensor_layout, cfg.d_initial, cfg.dropout, dict(cfg.provenance),
                   None if cfg.base_model is None else dict(cfg.base_model),
                   {k: d for k, (_, d) in ad.extra.items()}, None,
                   {g: (np.asarray(A, np.float32), np.asarray(B, np.float32)) for g, (A, B) in ad.stored.items()})

    def to_adapter(self):
        """The vera_ref.Adapter of this content: what the reference writes for it (with
        ``base_model.fingerprint`` of ``base_weights`` when they are given, spec 4.3)."""
        import vera_ref
        from vera_ref.adapter import base_fingerprint
        from vera_ref.dtypes import compute_dtype
        mods = [vera_ref.ModuleSpec(*m) for m in self.modules]
        base = None if self.base_model is None else dict(self.base_model)
        if self.base_weights is not None:
            base = {**(base or {}), "fingerprint": base_fingerprint(self.base_weights, mods)}
        ad = vera_ref.new_adapter(mods, r=self.r, seed=self.seed, generator=self.generator, sharing=self.sharing,
                                  d_initial=self.d_initial, dropout=self.dropout, vector_dtype=self.vector_dtype,
                                  tensor_layout=self.tensor_layout, base_model=base, provenance=self.provenance,
                                  stored={g: (np.asarray(A, np.float32), np.asarray(B, np.float32))
                                          for g, (A, B) in self.stored.items()})
        for name in ad.lambda_d:
            ad.lambda_d[name] = np.asarray(self.lambda_d[name]).astype(ad.lambda_d[name].dtype)
            ad.lambda_b[name] = np.asarray(self.lambda_b[name]).astype(ad.lambda_b[name].dtype)
        for name, v in self.extra.items():
            dt = self.extra_dtypes.get(name, "float32")
            ad.extra[name] = (np.asarray(v).astype(compute_dtype(dt)), dt)
        return ad


class Implementation:
    """Base class: claims nothing. Override ``capabilities`` and the matching methods."""

    name = "unnamed"
    capabilities: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset({"cpu"})
    dtypes: frozenset[str] = frozenset({"float32"})
    layouts: frozenset[str] = frozenset(LAYOUTS)
    dropout = True  # False: an inference-only implementation; cases with a dropout mask are not drawn
    adapter_scale: float | Callable[[int], float] | None = None  # a declared deviation (see the module doc)
    generator = "philox4x32-10"

    def supports(self, device: str, dtype: str) -> bool:
        return device in self.devices and dtype in self.dtypes

    def scale(self, r: int) -> float:
        """The declared adapter scale for rank r (1.0: none, as spec 3.2)."""
        s = self.adapter_scale
        return 1.0 if s is None else float(s(r) if callable(s) else s)

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

    def merged_forward(self, case: LayerCase):  # pragma: no cover - interface
        """``merged_forward``: build the layer of ``case``, merge its adapter, return its forward of
        case.x; then unmerge and return the forward again: (y_merged, y_after_unmerge), each (N, out);
        y_after_unmerge None when the implementation cannot unmerge (it does not claim ``unmerge``)."""
        raise NotImplementedError

    def train_steps(self, case: LayerCase, lr: float, steps: int) -> Trained:  # pragma: no cover - interface
        raise NotImplementedError

    def load_adapter(self, path) -> LoadedAdapter:  # pragma: no cover - interface
        raise NotImplementedError

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def save_layer(self, case: LayerCase, folder) -> np.ndarray:  # pragma: no cover - interface
        """``reload``: build the layer of ``case``, save its adapter into ``folder`` (a directory
        that exists) with your own save, and return its forward of case.x (N, out)."""
        raise NotImplementedError

    def load_layer(self, case: LayerCase, folder) -> np.ndarray:  # pragma: no cover - interface
        """``reload``: a fresh layer (W0, bias from ``case``) with the adapter your own load reads
        from ``folder``; its forward of case.x (N, out). lambda_d, lambda_b, A, B of ``case`` are NaN."""
        raise NotImplementedError


def check_declarations(impl) -> None:
    """Refuse declarations the kit cannot honour, with one line naming what is wrong."""
    name = getattr(impl, "name", type(impl).__name__)
    for attr, known in (("capabilities", CAPABILITIES), ("dtypes", DTYPES), ("devices", DEVICES),
                        ("layouts", LAYOUTS)):
        unknown = set(getattr(impl, attr, ())) - set(known)
        if unknown:
            raise ConformanceError(f"{name}: unknown {attr} {sorted(unknown)} (known: {', '.join(known)})")
    if getattr(impl, "generator", "philox4x32-10") not in GENERATOR_KINDS:
        raise ConformanceError(f"{name}: generator must be one of {', '.join(GENERATOR_KINDS)}, "
                               f"got {impl.generator!r}")
    if not getattr(impl, "layouts", LAYOUTS):
        raise ConformanceError(f"{name}: layouts is empty (declare linear and/or conv1d)")


def load_implementation(spec: str | None = None) -> Implementation:
    """``module:factory`` (or $VERA_IMPL) -> the implementation object. The module is found
    in the current folder first (as pytest does); every mistake is one ConformanceError line."""
    from vera_ref.resolve import UsageError, resolve_object
    spec = spec or os.environ.get("VERA_IMPL")
    if not spec:
        raise ConformanceError("name an implementation as module:factory (--impl or VERA_IMPL), "
                               "e.g. vera_conformance.impls.reference:make")
    try:
        obj = resolve_object(spec, "--impl")
    except UsageError as exc:
        raise ConformanceError(str(exc)) from None
    if callable(obj) and not isinstance(obj, Implementation):
        try:
            impl = obj()
        except ImportError as exc:  # the factory needs an optional package
            raise ConformanceError(f"--impl {spec}: needs the optional package {exc.name!r} "
                                   f"({type(exc).__name__}: {exc})") from None
        except Exception as exc:  # the user's factory failed: one line, never a traceback
            raise ConformanceError(f"--impl {spec}: the factory raised {type(exc).__name__}: "
                                   f"{str(exc)[:300]}") from None
    else:
        impl = obj
    if not hasattr(impl, "capabilities") or not hasattr(impl, "supports"):
        raise ConformanceError(f"--impl {spec}: returned {type(impl).__name__}, not an implementation "
                               "(subclass vera_conformance.Implementation)")
    check_declarations(impl)
    return impl
