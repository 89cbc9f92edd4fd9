"""Tolerance policy for floating results (spec 5.2).

A result is compared element by element with the float64 reference computed from
the same (dtype-rounded) inputs:

    |got - ref| <= C * eps(precision) * S + TINY(precision)

where S is the same computation run on the absolute values of every input (the
classic magnitude of a sum of products, |x| |W|^T for a matmul). Every VeRA
quantity of spec 3 is a sum of products without subtraction, so S is the
function itself evaluated at |inputs|; unmerge uses merge's magnitude.

C is not calibrated: it follows from the error analysis written in spec 5.2 for the
quantity (forward, merge, dx, d_lambda_d, d_lambda_b, train) and the lengths of its
sums, and holds for every summation order and any use of fused multiply-add.

Precisions are the four dtypes of spec 4.5 plus ``tf32`` (spec 5.2.2): binary32
storage whose matmuls round their inputs to 10 significant bits, with its own eps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import EPS, TINY
from .layer import backward, forward, merge

# spec 5.2.2: reduced-precision float32 matmuls (TF32) are their own precision
PRECISION_EPS = {**EPS, "tf32": 2.0**-10}
PRECISION_TINY = {**TINY, "tf32": 2.0**-126}
PRECISIONS = tuple(PRECISION_EPS)

# spec 5.2: the constant of a caller that names no quantity (small sums only: it is the derived
# constant of no quantity; the kit always derives C with ``constant``)
C = 16.0

# spec 5.2.3: unit roundoff of the narrowest accumulation format allowed: binary64 sums for float64,
# binary32 (or wider) sums for every other precision
U_ACC = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-24, "bfloat16": 2.0**-24, "tf32": 2.0**-24}
U64 = 2.0**-53  # the reference, its magnitude S and the comparison run in binary64

# spec 5.2.3, the table: quantity -> (its sums, named by their lengths; k, the other operations on
# one term's way to the result; the term's leaf factors)
OPERATIONS = {
    "forward": (("in", "r"), 10, 5),
    "dx": (("out", "r"), 9, 5),
    "d_lambda_d": (("N", "out", "in"), 8, 5),
    "d_lambda_b": (("N", "in", "r"), 8, 5),
    "merge": (("r",), 6, 4),
}
TRAIN_STEP_OPS = 2  # spec 5.2.3: lr * g and lambda - lr * g, per SGD step


def _wide(dtype: str, leaves: int) -> int:
    """spec 5.2.3: leaf factors an implementation may round to the dtype: A and B (binary32) in
    float16/bfloat16, every leaf in tf32, none in float32/float64."""
    return {"float64": 0, "float32": 0, "float16": 2, "bfloat16": 2, "tf32": leaves}[dtype]


def operations(quantity: str, dtype: str, *, N: int = 1, in_features: int = 1, out_features: int = 1,
               r: int = 1, steps: int = 1) -> tuple[int, int]:
    """spec 5.2.3: (a, d) for the worst term of ``quantity``: a operations in the accumulation
    format, d roundings to the dtype. ``unmerge`` counts as ``merge``; ``train`` is ``steps`` SGD
    steps, each a gradient of lambda_d or lambda_b and its update."""
    dtype = precision_name(dtype)
    lengths = {"N": N, "in": in_features, "out": out_features, "r": r}
    if min(lengths.values()) < 1 or steps < 1:
        raise ValueError(f"sizes must be >= 1, got {lengths} and steps {steps}")
    if quantity == "train":
        ops = [operations(q, dtype, **{"N": N, "in_features": in_features, "out_features": out_features, "r": r})
               for q in ("d_lambda_d", "d_lambda_b")]
        return (steps * (max(a for a, _ in ops) + TRAIN_STEP_OPS), steps * (max(d for _, d in ops) + TRAIN_STEP_OPS))
    sums, k, leaves = OPERATIONS["merge" if quantity == "unmerge" else quantity]
    a = sum(lengths[s] - 1 for s in sums) + k
    d = k + len(sums) + _wide(dtype, leaves)
    return a, d


def constant(quantity: str, dtype: str, **sizes: int) -> float:
    """spec 5.2.3: C for ``quantity`` with the given sizes (N, in_features, out_features, r, steps):
    (E + E_ref) (1 + u64)^(a + 3) / eps, with E = (1 + u_acc)^a (1 + u)^d - 1 the implementation's
    relative error bound and E_ref = (1 + u64)^a - 1 the binary64 reference's. Rounded up."""
    dtype = precision_name(dtype)
    a, d = operations(quantity, dtype, **sizes)
    u = PRECISION_EPS[dtype] / 2
    e = math.expm1(a * math.log1p(U_ACC[dtype]) + d * math.log1p(u))
    e_ref = math.expm1(a * math.log1p(U64))
    return (e + e_ref) * math.exp((a + 3) * math.log1p(U64)) / PRECISION_EPS[dtype] * (1 + 2.0**-40)


def precision_name(dtype: str) -> str:
    """``dtype`` checked against the precisions of spec 5.2 (the four dtypes and tf32)."""
    name = str(dtype)
    if name not in PRECISION_EPS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {dtype!r}")
    return name


@dataclass(frozen=True)
class Check:
    """Outcome of one comparison: ``ok``, the worst ``ratio`` of error to bound
    (<= 1 passes), where it was worst, the values there, and two diagnoses of a
    failure: ``factor`` when got is a constant multiple of ref (an unexpected scale)."""

    ok: bool
    ratio: float
    worst_index: tuple[int, ...]
    dtype: str
    c: float = C
    got: float | None = None
    ref: float | None = None
    factor: float | None = None

    def describe(self) -> str:
        text = (f"max |got - ref| / (C*eps*S + tiny) = {self.ratio:.3g} at {self.worst_index} "
                f"(dtype {self.dtype}, C={self.c:.5g}, eps={PRECISION_EPS[self.dtype]:.3g})")
        if self.got is not None:
            text += f"; there got {self.got!r}, reference {self.ref!r}"
        if self.factor is not None:
            text += f"; got is x{self.factor:.4g} the reference everywhere: a scale such as alpha/r?"
        return text


def bound(magnitude: np.ndarray, dtype: str, c: float = C) -> np.ndarray:
    """spec 5.2: the allowed absolute error of each element."""
    dtype = precision_name(dtype)
    return c * PRECISION_EPS[dtype] * np.asarray(magnitude, dtype=np.float64) + PRECISION_TINY[dtype]


def _ratio(got: np.ndarray, ref: np.ndarray, magnitude, dtype: str, c: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(got - ref) / bound(magnitude, dtype, c)
    return np.where(np.isnan(ratio), np.inf, ratio)


def constant_factor(got: np.ndarray, ref: np.ndarray) -> float | None:
    """The factor f when ``got == f * ref`` to 1% on every element that matters (|ref| above
    1e-3 of the largest) and f is not 1 -- the signature of an extra scale -- else None."""
    got, ref = np.asarray(got, dtype=np.float64).reshape(-1), np.asarray(ref, dtype=np.float64).reshape(-1)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return None
    big = np.abs(ref) > 1e-3 * np.max(np.abs(ref), initial=0.0)
    if big.sum() < 2:
        return None
    q = got[big] / ref[big]
    f = float(np.median(q))
    if f == 0.0 or abs(f - 1.0) < 0.01 or np.max(np.abs(q - f)) > 0.01 * abs(f):
        return None
    return f


def compare(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, dtype: str, c: float | None = None) -> Check:
    """Compare ``got`` with the float64 reference under the bound (spec 5.2) with the constant
    ``c`` (``constant(quantity, dtype, ...)``; without it the small-sum constant ``C``).

    Shapes must agree exactly; a NaN or infinity in ``got`` where ``ref`` is finite fails.
    """
    dtype = precision_name(dtype)
    c = C if c is None else float(c)
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return Check(False, float("inf"), (), dtype, c)
    if got.size == 0:
        return Check(True, 0.0, (), dtype, c)
    ratio = _ratio(got, ref, magnitude, dtype, c)
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = float(ratio[idx])
    if worst <= 1.0:
        return Check(True, worst, tuple(int(i) for i in idx), dtype, c)
    return Check(False, worst, tuple(int(i) for i in idx), dtype, c, float(got[idx]), float(ref[idx]),
                 constant_factor(got, ref))


def _abs(*arrays):
    return [None if a is None else np.abs(np.asarray(a, dtype=np.float64)) for a in arrays]


def forward_magnitude(x, W, bias, A, B, lambda_d, lambda_b, *, layout="linear", dropout_mask=None, dropout=0.0):
    """S for spec 3.2."""
    return forward(*_abs(x, W, bias, A, B, lambda_d, lambda_b), layout=layout,
                   dropout_mask=dropout_mask, dropout=dropout)


def backward_magnitude(x, W, A, B, lambda_d, lambda_b, dy, *, layout="linear", dropout_mask=None, dropout=0.0):
    """S for each gradient of spec 3.4."""
    return backward(*_abs(x, W, A, B, lambda_d, lambda_b, dy), layout=layout,
                    dropout_mask=dropout_mask, dropout=dropout)


def merge_magnitude(W, A, B, lambda_d, lambda_b, *, layout="linear"):
    """S for spec 3.5 and 3.6: |W| + |Delta W| magnitudes."""
    return merge(*_abs(W, A, B, lambda_d, lambda_b), layout=layout)
