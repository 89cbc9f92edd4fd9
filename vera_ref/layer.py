"""The VeRA layer math: forward, backward, merge, unmerge (spec 3).

Notation (spec 3.1): x (N, in), base weight W0 (out, in) for the ``linear`` layout
or (in, out) for the transposed ``conv1d`` layout, bias (out,) or None, the shared
projections A (r, n_in) and B (n_out, r) with the layer's leading slices
A_l = A[:, :in], B_l = B[:out, :] (spec 2.3), and the trained vectors
lambda_d (r,), lambda_b (out,).

``dtype="float64"`` is the reference. Other dtypes run the low-precision path of
spec 3.8: inputs and every intermediate rounded to the dtype, products accumulated
in float32 -- what a typical kernel does; its results are *not* the reference.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .dtypes import check_name, round_to
from .errors import ShapeError

LAYOUTS = ("linear", "conv1d")  # spec 3.7


class Grads(NamedTuple):
    """Gradients of spec 3.4: x (N, in), lambda_d (r,), lambda_b (out,)."""

    x: np.ndarray
    lambda_d: np.ndarray
    lambda_b: np.ndarray


def _in_out(W: np.ndarray, layout: str) -> tuple[int, int]:
    if layout not in LAYOUTS:
        raise ShapeError(f"layout must be 'linear' or 'conv1d', got {layout!r}")
    if np.ndim(W) != 2:
        raise ShapeError(f"W must be 2-D, got shape {np.shape(W)}")
    out_f, in_f = W.shape if layout == "linear" else W.shape[::-1]
    return in_f, out_f


def _check(W, A, B, lambda_d, lambda_b, layout, x=None, bias=None):
    in_f, out_f = _in_out(W, layout)
    if np.ndim(A) != 2 or np.ndim(B) != 2:
        raise ShapeError(f"A and B must be 2-D, got shapes {np.shape(A)} and {np.shape(B)}")
    r = A.shape[0]
    if B.shape[1] != r:
        raise ShapeError(f"A is (r={r}, n_in) but B is {B.shape}: B must be (n_out, r={r})")
    if A.shape[1] < in_f or B.shape[0] < out_f:
        raise ShapeError(
            f"layer (in={in_f}, out={out_f}) is larger than the projection (n_in={A.shape[1]}, n_out={B.shape[0]})"
        )
    if np.shape(lambda_d) != (r,):
        raise ShapeError(f"lambda_d must have shape ({r},), got {np.shape(lambda_d)}")
    if np.shape(lambda_b) != (out_f,):
        raise ShapeError(f"lambda_b must have shape ({out_f},), got {np.shape(lambda_b)}")
    if x is not None and (np.ndim(x) < 1 or np.shape(x)[-1] != in_f):
        raise ShapeError(f"x must have shape (..., {in_f}), got {np.shape(x)}")
    if bias is not None and np.shape(bias) != (out_f,):
        raise ShapeError(f"bias must have shape ({out_f},), got {np.shape(bias)}")
    return in_f, out_f


def _dropped(x: np.ndarray, mask, dropout: float) -> np.ndarray:
    """spec 3.3: dropout(x) = x * mask / (1 - p) on the adapter input only."""
    if mask is None:
        return x
    if not 0.0 <= dropout < 1.0:
        raise ShapeError(f"dropout must be in [0, 1), got {dropout}")
    if np.shape(mask) != np.shape(x):
        raise ShapeError(f"dropout_mask must have the shape of x {np.shape(x)}, got {np.shape(mask)}")
    return x * (np.asarray(mask, dtype=x.dtype) / x.dtype.type(1.0 - dropout))


class _Ops:
    """Array arithmetic in the reference (float64) or a low-precision path (spec 3.8)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = check_name(dtype)
        self.exact = self.dtype == "float64"

    def cast(self, a):
        if a is None:
            return None
        if self.exact:
            return np.asarray(a, dtype=np.float64)
        return round_to(np.asarray(a, dtype=np.float64), self.dtype)

    def mm(self, a, b):  # products accumulated in float32, result rounded to the dtype
        if self.exact:
            return a @ b
        return self.cast(a.astype(np.float32) @ b.astype(np.float32))

    def mul(self, a, b):
        return a * b if self.exact else self.cast(a.astype(np.float32) * b.astype(np.float32))

    def add(self, a, b):
        return a + b if self.exact else self.cast(a.astype(np.float32) + b.astype(np.float32))


def _weight_t(W: np.ndarray, layout: str) -> np.ndarray:
    """W0^T as (in, out) whatever the layout."""
    return W.T if layout == "linear" else W


def forward(
    x: np.ndarray,
    W: np.ndarray,
    bias: np.ndarray | None,
    A: np.ndarray,
    B: np.ndarray,
    lambda_d: np.ndarray,
    lambda_b: np.ndarray,
    *,
    layout: str = "linear",
    dropout_mask: np.ndarray | None = None,
    dropout: float = 0.0,
    dtype: str = "float64",
) -> np.ndarray:
    """spec 3.2: y = x W0^T + bias + lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T); (..., out)."""
    in_f, out_f = _check(W, A, B, lambda_d, lambda_b, layout, x, bias)
    op = _Ops(dtype)
    x, W, bias = op.cast(x), op.cast(W), op.cast(bias)
    A_l, B_l = op.cast(A[:, :in_f]), op.cast(B[:out_f, :])  # (r, in), (out, r)
    ld, lb = op.cast(lambda_d), op.cast(lambda_b)
    base = op.mm(x, _weight_t(W, layout))  # (..., out)
    if bias is not None:
        base = op.add(base, bias)
    h = op.mm(op.cast(_dropped(x, dropout_mask, dropout)), A_l.T)  # (..., r)
    v = op.mm(op.mul(h, ld), B_l.T)  # (..., out)
    return op.add(base, op.mul(v, lb))


def backward(
    x: np.ndarray,
    W: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    lambda_d: np.ndarray,
    lambda_b: np.ndarray,
    dy: np.ndarray,
    *,
    layout: str = "linear",
    dropout_mask: np.ndarray | None = None,
    dropout: float = 0.0,
    dtype: str = "float64",
) -> Grads:
    """spec 3.4: gradients of sum(dy * y) for x, lambda_d and lambda_b (W0, A, B, bias frozen).

    With h = dropout(x) A_l^T (N, r), u = lambda_d * h, v = u B_l^T (N, out), g = dy * lambda_b:
      d lambda_b = sum_N dy * v;   d lambda_d = sum_N (g B_l) * h;
      d x = dy W0 + dropout'((g B_l * lambda_d) A_l).
    Leading batch dimensions of x and dy are summed over for the vectors.
    """
    in_f, out_f = _check(W, A, B, lambda_d, lambda_b, layout, x)
    if np.shape(dy) != np.shape(x)[:-1] + (out_f,):
        raise ShapeError(f"dy must have shape {np.shape(x)[:-1] + (out_f,)}, got {np.shape(dy)}")
    op = _Ops(dtype)
    x, W, dy = op.cast(x), op.cast(W), op.cast(dy)
    A_l, B_l = op.cast(A[:, :in_f]), op.cast(B[:out_f, :])
    ld, lb = op.cast(lambda_d), op.cast(lambda_b)
    dy2 = dy.reshape(-1, out_f)  # (N, out)
    xd = op.cast(_dropped(x, dropout_mask, dropout)).reshape(-1, in_f)  # (N, in)
    h = op.mm(xd, A_l.T)  # (N, r)
    v = op.mm(op.mul(h, ld), B_l.T)  # (N, out)
    g = op.mul(dy2, lb)  # (N, out)
    gB = op.mm(g, B_l)  # (N, r)
    d_lambda_b = op.cast(np.sum(op.mul(dy2, v), axis=0, dtype=np.float64 if op.exact else np.float32))
    d_lambda_d = op.cast(np.sum(op.mul(gB, h), axis=0, dtype=np.float64 if op.exact else np.float32))
    dxd = op.mm(op.mul(gB, ld), A_l)  # (N, in): gradient w.r.t. dropout(x)
    if dropout_mask is not None:
        mask = np.asarray(dropout_mask, dtype=np.float64).reshape(-1, in_f) / (1.0 - dropout)
        dxd = op.cast(dxd * mask)
    W_t = _weight_t(W, layout)  # (in, out)
    dx = op.add(op.mm(dy2, W_t.T), dxd)
    return Grads(dx.reshape(np.shape(x)), d_lambda_d, d_lambda_b)


def delta_weight(
    A: np.ndarray, B: np.ndarray, lambda_d: np.ndarray, lambda_b: np.ndarray,
    in_features: int, out_features: int, *, layout: str = "linear", dtype: str = "float64",
) -> np.ndarray:
    """spec 3.5: Delta W = (lambda_b[:, None] * B_l) @ (lambda_d[:, None] * A_l), (out, in) or (in, out) for conv1d."""
    op = _Ops(dtype)
    A_l, B_l = op.cast(A[:, :in_features]), op.cast(B[:out_features, :])
    dW = op.mm(op.mul(op.cast(lambda_b)[:, None], B_l), op.mul(op.cast(lambda_d)[:, None], A_l))  # (out, in)
    return dW if layout == "linear" else dW.T


def merge(
    W: np.ndarray, A: np.ndarray, B: np.ndarray, lambda_d: np.ndarray, lambda_b: np.ndarray,
    *, layout: str = "linear", dtype: str = "float64",
) -> np.ndarray:
    """spec 3.5: W = W0 + Delta W, in W0's layout."""
    in_f, out_f = _check(W, A, B, lambda_d, lambda_b, layout)
    op = _Ops(dtype)
    return op.add(op.cast(W), delta_weight(A, B, lambda_d, lambda_b, in_f, out_f, layout=layout, dtype=dtype))


def unmerge(
    W: np.ndarray, A: np.ndarray, B: np.ndarray, lambda_d: np.ndarray, lambda_b: np.ndarray,
    *, layout: str = "linear", dtype: str = "float64",
) -> np.ndarray:
    """spec 3.6: W0 = W - Delta W, in W's layout."""
    in_f, out_f = _check(W, A, B, lambda_d, lambda_b, layout)
    op = _Ops(dtype)
    dW = delta_weight(A, B, lambda_d, lambda_b, in_f, out_f, layout=layout, dtype=dtype)
    return op.add(op.cast(W), -dW)
