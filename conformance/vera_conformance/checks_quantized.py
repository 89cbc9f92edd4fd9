"""The ``quantized`` capability: an adapter on a quantized base (bitsandbytes-style 4/8-bit)
compared with the reference applied to the dequantized W0 (spec 5.2 on the adapter term).

An implementation with this capability has

    quantized(case, base) -> (y (N, out), dx (N, in), d_lambda_d (r,), d_lambda_b (out,))

``base`` is a bitsandbytes layer (``Linear4bit`` nf4/fp4 with or without double quantization
and a float32/bfloat16/float16 compute dtype, or ``Linear8bitLt``) the kit quantized from
``case.W`` (linear layout, float32 x and vectors, evaluation mode, one projection pair of the
layer's own shape: n_in = in, n_out = out). The implementation adapts ``base`` (it may wrap it,
never change its weight), puts ``case.lambda_d`` / ``case.lambda_b`` (and ``case.A`` / ``case.B``
when it has no generator of its own) in place, and returns the forward of ``case.x`` and the
gradients of ``sum(case.dy * y)``.

What is compared (spec 7.7): the base term is whatever the quantized layer computes, so the
kit calls the implementation twice, with the case and with ``lambda_b = 0`` (the adapter term
is then exactly zero: spec 3.2 multiplies by lambda_b last):

- ``y(lambda_b = 0)`` and ``dx(lambda_b = 0)`` must be the quantized layer's own output and input
  gradient bit for bit (the kit runs the same layer on the same float32 input): an
  implementation that replaces the base by its dequantized weight, or feeds it another dtype,
  is caught here;
- the adapter term ``y - y(lambda_b = 0)`` and the adapter part of ``dx`` must meet spec 5.2
  against the binary64 reference with ``W0 = 0`` (5.2.1), widened only by the one binary32
  rounding of the final addition: ``2^-24 |y|`` (spec 7.7);
- ``d_lambda_d`` and ``d_lambda_b`` do not depend on W0: spec 5.2 against the reference.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.tolerance import PRECISION_EPS, backward_magnitude, forward_magnitude

from .check_base import _C, Check, Mismatch, Outcome, _build, _expect, _property, _tol, _USED_C
from .checks_math import _gradients
from .protocol import LayerCase

SCHEMES = ("nf4", "fp4", "int8")
COMPUTE = ("float32", "bfloat16", "float16")
U32 = 2.0 ** -24  # unit roundoff of binary32: the final addition y = base + term (spec 7.7)

# edge shapes: a rank above the sizes, one row, in = 1 block, out not a multiple of 32
EXPLICIT = [
    {"seed": 0, "r": 4, "in_features": 64, "out_features": 32, "N": 3, "bias": True, "values_seed": 1,
     "quant": "nf4", "nested": False, "compute": "float32"},
    {"seed": 2**64 - 1, "r": 65, "in_features": 96, "out_features": 48, "N": 1, "bias": False, "values_seed": 2,
     "quant": "nf4", "nested": True, "compute": "bfloat16"},
    {"seed": 7, "r": 16, "in_features": 130, "out_features": 40, "N": 5, "bias": True, "values_seed": 3,
     "quant": "fp4", "nested": True, "compute": "float16"},
    {"seed": 11, "r": 8, "in_features": 72, "out_features": 24, "N": 4, "bias": True, "values_seed": 4,
     "quant": "int8", "nested": False, "compute": "float32"},
]
CASE_KEYS = tuple(EXPLICIT[0])


def _spec(d: dict) -> dict:
    """A kit case spec (strategies.build_case) of a quantized case: linear, unpadded, eval mode."""
    return {**d, "n_in": d["in_features"], "n_out": d["out_features"], "group": 0, "layout": "linear",
            "scale": 1.0, "dropout": 0.0}


quantized_specs = st.fixed_dictionaries({
    "seed": st.integers(0, 2**64 - 1), "r": st.sampled_from([1, 2, 8, 32, 64, 65]),
    # sizes bitsandbytes itself runs: its 4-bit backward fails on a (1, 2) weight (a shape RuntimeError)
    "in_features": st.sampled_from([16, 64, 66, 130, 256]), "out_features": st.sampled_from([2, 8, 33, 64]),
    "N": st.integers(1, 6), "bias": st.booleans(), "values_seed": st.integers(0, 2**32 - 1),
    "quant": st.sampled_from(SCHEMES), "nested": st.booleans(), "compute": st.sampled_from(COMPUTE)})


def bnb_available() -> str | None:
    """None, or why bitsandbytes cannot be used here."""
    try:
        import bitsandbytes  # noqa: F401
        import torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken native library raises more than ImportError
        return f"bitsandbytes cannot load here ({type(exc).__name__}: {str(exc)[:150]})"
    return None


def quantized_base(c: LayerCase, quant: str, nested: bool, compute: str):
    """The bitsandbytes layer of ``c.W`` (out, in) and ``c.bias``: Linear4bit (``quant`` nf4/fp4) or
    Linear8bitLt (int8), quantized on the CPU; its canonical 4-bit layout kept (spec 7.2)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    out_f, in_f = c.W.shape
    lin = nn.Linear(in_f, out_f, bias=c.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(c.W))
        if c.bias is not None:
            lin.bias.copy_(torch.from_numpy(c.bias))
    if quant == "int8":
        q = bnb.nn.Linear8bitLt(in_f, out_f, bias=c.bias is not None, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(in_f, out_f, bias=c.bias is not None, compute_dtype=getattr(torch, compute),
                              compress_statistics=nested, quant_type=quant)
    q.load_state_dict(lin.state_dict())
    q = q.to("cpu")
    if hasattr(q, "support_avx512bf16_for_cpu"):
        q.support_avx512bf16_for_cpu = False  # bitsandbytes' CPU eval repack rewrites the bytes (spec 7.2)
    return q


def _dequantized(q) -> np.ndarray:
    """W0 of the quantized layer, (out, in) float64 of its float32 dequantized values (spec 7.1)."""
    import bitsandbytes.functional as F
    w = q.weight
    if type(w).__name__ == "Params4bit":
        return F.dequantize_4bit(w.data, w.quant_state).float().double().numpy()
    scb = w.SCB if w.SCB is not None else q.state.SCB
    return F.int8_vectorwise_dequant(w.data, scb).float().double().numpy()


def _base_run(q, c: LayerCase) -> tuple[np.ndarray, np.ndarray]:
    """The quantized layer's own y and dx for float32 x and dy (on a copy: nothing of it changes)."""
    import torch
    q = copy.deepcopy(q).eval()  # evaluation mode, as the case (bitsandbytes' int8 path differs in training)
    x = torch.tensor(c.x, dtype=torch.float32, requires_grad=True)
    y = q(x)
    y.backward(torch.tensor(c.dy, dtype=y.dtype))
    return y.detach().double().numpy(), x.grad.double().numpy()


def _bitwise(got, want, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {got.shape}, expected {want.shape}")
    ne = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
    if ne.size:
        i = tuple(int(v) for v in np.unravel_index(ne[0], want.shape))
        raise Mismatch(f"{what}: {ne.size} of {want.size} values differ from the quantized layer's own; first at {i}: "
                       f"{float(got[i])!r} vs {float(want[i])!r} (the base term must be what the quantized layer "
                       f"computes: its weight replaced by a dequantized copy, or its input cast to another dtype?)")


def _widened(S_: np.ndarray, total: np.ndarray, c: float) -> np.ndarray:
    """S with the final binary32 addition's rounding folded in: C eps S' = C eps S + 2^-24 (1 + 2^-22) |y|."""
    return S_ + np.abs(total) * U32 * (1 + 2.0 ** -22) / (c * PRECISION_EPS["float32"])


def _call(impl, c: LayerCase, base):
    got = impl.quantized(c, base)
    try:
        y, dx, dld, dlb = got
    except (TypeError, ValueError):
        raise Mismatch(f"quantized returned {type(got).__name__}, expected (y, dx, d_lambda_d, d_lambda_b)") from None
    dx, dld, dlb = _gradients((dx, dld, dlb))
    return tuple(np.asarray(a, np.float64) for a in (y, dx, dld, dlb))


def check_quantized(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 7.7: forward and backward on a bitsandbytes base; the adapter term and the vector gradients
    within spec 5.2 of the reference, the base term the quantized layer's own, bit for bit."""
    why = bnb_available()
    if why is not None:
        return Outcome("skipped", why)

    def body(d: dict):
        d = dict(d)
        scheme = {k: d[k] for k in ("quant", "nested", "compute")}
        c = _build(impl, _spec(d), "float32", device)
        q = quantized_base(c, scheme["quant"], bool(scheme["nested"]), scheme["compute"])
        c = dataclasses.replace(c, W=_dequantized(q))  # the reference applied to the dequantized W0
        label = f"({scheme['quant']}{', nested' if scheme['nested'] else ''}, compute {scheme['compute']})"
        y0, dx0 = _base_run(q, c)
        zero = dataclasses.replace(c, lambda_b=np.zeros_like(c.lambda_b))
        gy0, gdx0, _, _ = _call(impl, zero, copy.deepcopy(q))
        _bitwise(gy0, y0, f"y with lambda_b = 0 {label}")
        _bitwise(gdx0, dx0, f"dx with lambda_b = 0 {label}")
        y, dx, dld, dlb = _call(impl, c, copy.deepcopy(q))
        s = impl.scale(c.r)
        t = dataclasses.replace(c, W=np.zeros_like(c.W), bias=None)  # the twin (spec 5.2.1): the adapter term alone
        kf, kx = _C("forward", c, "float32"), _C("dx", c, "float32")
        ref_t = vera_ref.forward(t.x, t.W, None, t.A, t.B, t.lambda_d, t.lambda_b * s)
        S_t = forward_magnitude(t.x, t.W, None, t.A, t.B, t.lambda_d, t.lambda_b * s)
        worst = _expect(y - gy0, ref_t, _widened(S_t, y, kf), "float32",
                        f"adapter term y - y(lambda_b = 0) {label}", kf)
        g = vera_ref.backward(t.x, t.W, t.A, t.B, t.lambda_d, t.lambda_b * s, t.dy)
        m = backward_magnitude(t.x, t.W, t.A, t.B, t.lambda_d, t.lambda_b * s, t.dy)
        worst = max(worst, _expect(dx - gdx0, g.x, _widened(m.x, dx, kx), "float32",
                                   f"adapter part of dx {label}", kx))
        for got, ref, mag, what, sc in ((dld, g.lambda_d, m.lambda_d, "d_lambda_d", 1.0),
                                        (dlb, g.lambda_b, m.lambda_b, "d_lambda_b", s)):
            worst = max(worst, _expect(got, ref * sc, mag * sc, "float32", f"{what} {label}",
                                       _C(what, c, "float32")))
        return worst

    _USED_C.clear()
    out = _property(quantized_specs, body, max(4, max_examples // 4), case, EXPLICIT)
    out.tolerance = _tol("float32")
    return out


def _needs(impl) -> str | None:
    if "linear" not in getattr(impl, "layouts", ("linear",)):
        return f"{impl.name} declares no linear layout: bitsandbytes layers are linear"
    return None


CHECKS: list = [
    Check("quantized", "quantized", "M", True, check_quantized,
          "spec 7.7: forward/backward on a bitsandbytes 4-bit/8-bit base: the base term the quantized layer's "
          "own, the adapter term and vector gradients within 5.2", dtypes=("float32",), needs=_needs,
          case_keys=CASE_KEYS),
]
