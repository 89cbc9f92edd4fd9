"""Tolerance policy for floating results (spec 5.2).

A result is compared element by element with the float64 reference computed from
the same (dtype-rounded) inputs:

    |got - ref| <= C * eps(precision) * S + TINY(precision)

where S is the same computation run on the absolute values of every input (the
classic magnitude of a sum of products, |x| |W|^T for a matmul). Every VeRA
quantity of spec 3 is a sum of products without subtraction, so S is the
function itself evaluated at |inputs|; unmerge uses merge's magnitude.

Precisions are the four dtypes of spec 4.5 plus ``tf32`` (spec 5.2.2): binary32
storage whose matmuls round their inputs to 10 significant bits, with its own eps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dtypes import EPS, TINY
from .layer import backward, forward, merge

# spec 5.2: C = 16. Calibrated on PyTorch 2.13 CPU (float32, float16, bfloat16; 180
# random VeRA forward/backward cases, K up to 2048): the worst error was 2.6 eps*S
# (float32 forward), so 16 leaves a 6x margin and still catches a wrong rank
# slice or a missing factor, which are O(S) errors.
C = 16.0

# spec 5.2.2: reduced-precision float32 matmuls (TF32) are their own precision
PRECISION_EPS = {**EPS, "tf32": 2.0**-10}
PRECISION_TINY = {**TINY, "tf32": 2.0**-126}
PRECISIONS = tuple(PRECISION_EPS)


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
                f"(dtype {self.dtype}, C={self.c:g}, eps={PRECISION_EPS[self.dtype]:.3g})")
        if self.got is not None:
            text += f"; there got {self.got!r}, reference {self.ref!r}"
        if self.factor is not None:
            text += f"; got is x{self.factor:.4g} the reference everywhere: a scale such as alpha/r?"
        return text


def bound(magnitude: np.ndarray, dtype: str) -> np.ndarray:
    """spec 5.2: the allowed absolute error of each element."""
    dtype = precision_name(dtype)
    return C * PRECISION_EPS[dtype] * np.asarray(magnitude, dtype=np.float64) + PRECISION_TINY[dtype]


def _ratio(got: np.ndarray, ref: np.ndarray, magnitude, dtype: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(got - ref) / bound(magnitude, dtype)
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


def compare(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, dtype: str) -> Check:
    """Compare ``got`` with the float64 reference under the bound (spec 5.2).

    Shapes must agree exactly; a NaN or infinity in ``got`` where ``ref`` is finite fails.
    """
    dtype = precision_name(dtype)
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return Check(False, float("inf"), (), dtype)
    if got.size == 0:
        return Check(True, 0.0, (), dtype)
    ratio = _ratio(got, ref, magnitude, dtype)
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = float(ratio[idx])
    if worst <= 1.0:
        return Check(True, worst, tuple(int(i) for i in idx), dtype)
    return Check(False, worst, tuple(int(i) for i in idx), dtype, C, float(got[idx]), float(ref[idx]),
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
