"""Tolerance policy for floating results (spec 5.2).

A result is compared element by element with the float64 reference computed from
the same (dtype-rounded) inputs:

    |got - ref| <= C * eps(dtype) * S + TINY(dtype)

where S is the same computation run on the absolute values of every input (the
classic magnitude of a sum of products, |x| |W|^T for a matmul). Every VeRA
quantity of spec 3 is a sum of products without subtraction, so S is the
function itself evaluated at |inputs|; unmerge uses merge's magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dtypes import EPS, TINY, check_name
from .layer import backward, forward, merge

# spec 5.2: C = 16. Calibrated on PyTorch 2.13 CPU (float32, float16, bfloat16; 180
# random VeRA forward/backward cases, K up to 2048): the worst error was 2.6 eps*S
# (float32 forward), so 16 leaves a 6x margin and still catches a wrong rank
# slice or a missing factor, which are O(S) errors.
C = 16.0


@dataclass(frozen=True)
class Check:
    """Outcome of one comparison: ``ok``, the worst ``ratio`` of error to bound
    (<= 1 passes), and where it was worst."""

    ok: bool
    ratio: float
    worst_index: tuple[int, ...]
    dtype: str
    c: float = C

    def describe(self) -> str:
        return (f"max |got - ref| / (C*eps*S + tiny) = {self.ratio:.3g} at {self.worst_index} "
                f"(dtype {self.dtype}, C={self.c:g}, eps={EPS[self.dtype]:.3g})")


def bound(magnitude: np.ndarray, dtype: str) -> np.ndarray:
    """spec 5.2: the allowed absolute error of each element."""
    dtype = check_name(dtype)
    return C * EPS[dtype] * np.asarray(magnitude, dtype=np.float64) + TINY[dtype]


def compare(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, dtype: str) -> Check:
    """Compare ``got`` with the float64 reference under the bound (spec 5.2).

    Shapes must agree exactly; a NaN or infinity in ``got`` where ``ref`` is finite fails.
    """
    dtype = check_name(dtype)
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return Check(False, float("inf"), (), dtype)
    if got.size == 0:
        return Check(True, 0.0, (), dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(got - ref) / bound(magnitude, dtype)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = float(ratio[idx])
    return Check(worst <= 1.0, worst, tuple(int(i) for i in idx), dtype)


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
