"""The VeRA layer math as pure JAX functions (spec 3): forward, merge, unmerge.

Notation of spec 3.1: x (..., in); W0 (out, in) in the ``linear`` layout, (in, out) in the
``conv1d`` layout (also the orientation of a Flax ``nnx.Linear`` kernel); bias (out,) or
None; the shared projections A (r, n_in), B (n_out, r), of which a layer uses the leading
slices A_l = A[:, :in], B_l = B[:out, :] (spec 2.3); lambda_d (r,), lambda_b (out,).

Gradients come from ``jax.grad`` / ``jax.vjp`` of these functions; they match spec 3.4
(tests/jax/test_jax_layer.py). Every product accumulates in at least float32
(``preferred_element_type``) at ``Precision.HIGHEST`` (no TF32 on GPUs) and is rounded to
the inputs' dtype, the low-precision path of spec 3.8. All functions are jittable; shapes
are checked at trace time and raise ``vera_ref.ShapeError``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from vera_ref.errors import ShapeError

LAYOUTS = ("linear", "conv1d")  # spec 3.7


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b, accumulated in float32 or wider, rounded to the operands' dtype."""
    out = jnp.result_type(a, b)
    acc = jnp.promote_types(out, jnp.float32)
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST, preferred_element_type=acc).astype(out)


def _slices(A, B, lambda_d, lambda_b, in_f: int, out_f: int):
    """spec 2.3 leading slices, after the shape rules of spec 3.1."""
    if jnp.ndim(A) != 2 or jnp.ndim(B) != 2:
        raise ShapeError(f"A and B must be 2-D, got shapes {jnp.shape(A)} and {jnp.shape(B)}")
    r = A.shape[0]
    if B.shape[1] != r:
        raise ShapeError(f"A is (r={r}, n_in) but B is {tuple(B.shape)}: B must be (n_out, r={r})")
    if A.shape[1] < in_f or B.shape[0] < out_f:
        raise ShapeError(f"layer (in={in_f}, out={out_f}) is larger than the projection "
                         f"(n_in={A.shape[1]}, n_out={B.shape[0]})")
    if jnp.shape(lambda_d) != (r,):
        raise ShapeError(f"lambda_d must have shape ({r},), got {tuple(jnp.shape(lambda_d))}")
    if jnp.shape(lambda_b) != (out_f,):
        raise ShapeError(f"lambda_b must have shape ({out_f},), got {tuple(jnp.shape(lambda_b))}")
    return A[:, :in_f], B[:out_f, :]  # (r, in), (out, r)


def _in_out(W, layout: str) -> tuple[int, int]:
    if layout not in LAYOUTS:
        raise ShapeError(f"layout must be 'linear' or 'conv1d', got {layout!r}")
    if jnp.ndim(W) != 2:
        raise ShapeError(f"W must be 2-D, got shape {tuple(jnp.shape(W))}")
    out_f, in_f = W.shape if layout == "linear" else W.shape[::-1]
    return in_f, out_f


def _branch(in_f: int, out_f: int, p: float, mask_kind: str | None, x: jax.Array, A: jax.Array, B: jax.Array,
            lambda_d: jax.Array, lambda_b: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The adapter branch of spec 3.2 from the branch's own inputs: x (..., in), the whole A (r, n_in) and
    B (n_out, r), lambda_d (r,), lambda_b (out,), and a 0/1 mask (shape of x) or a dropout key."""
    dt = x.dtype
    A_l, B_l = A[:, :in_f], B[:out_f, :]  # spec 2.3: (r, in), (out, r)
    if mask_kind == "mask":
        x = x * (jnp.asarray(mask, dt) / jnp.asarray(1.0 - p, dt))  # spec 3.3
    elif mask_kind == "key":  # the same key draws the same mask in forward and in the recompute
        keep = jax.random.bernoulli(mask, 1.0 - p, jnp.shape(x))
        x = x * (keep.astype(dt) / jnp.asarray(1.0 - p, dt))  # spec 3.3
    h = _mm(x, A_l.T.astype(dt))  # (..., r)
    v = _mm(h * lambda_d.astype(dt), B_l.T.astype(dt))  # (..., out)
    return v * lambda_b.astype(dt)


def adapter_out(x: jax.Array, A: jax.Array, B: jax.Array, lambda_d: jax.Array, lambda_b: jax.Array, *,
                dropout_mask: jax.Array | None = None, dropout: float = 0.0, dropout_key: jax.Array | None = None,
                remat: bool = True) -> jax.Array:
    """spec 3.2 without the base path: lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T), (..., out).

    Computed in x's dtype: A, B and the vectors are cast to it (float32 parameters train
    through the cast). ``dropout_mask`` (shape of x, 0/1) applies spec 3.3: x * mask / (1 - p);
    ``dropout_key`` (a ``jax.random`` key) draws the mask (keep with probability 1 - p) instead.

    ``remat=True`` (the default): the branch is a ``jax.checkpoint`` that saves nothing of its own
    for backward (``checkpoint_policies.nothing_saveable``): JAX keeps only the branch's inputs
    (x, which the frozen base layer keeps anyway, the parameters, the mask or key) and recomputes
    ``x A_l^T``, ``h``, the lambda-scaled intermediates and the dropped-out x in backward, from the
    same inputs with the same operations: the gradients are those of ``remat=False`` (bit for bit
    on one machine), which keeps every intermediate instead (more memory, no recompute).
    """
    in_f, out_f = jnp.shape(x)[-1], jnp.shape(lambda_b)[0]
    _slices(A, B, lambda_d, lambda_b, in_f, out_f)  # the shape rules of spec 3.1
    if dropout_mask is not None and dropout_key is not None:
        raise ShapeError("pass dropout_mask or dropout_key, not both")
    kind = "mask" if dropout_mask is not None else "key" if dropout_key is not None else None
    if kind is not None and not 0.0 <= dropout < 1.0:
        raise ShapeError(f"dropout must be in [0, 1), got {dropout}")
    if kind == "mask" and jnp.shape(dropout_mask) != jnp.shape(x):
        raise ShapeError(f"dropout_mask must have the shape of x {tuple(jnp.shape(x))}, "
                         f"got {tuple(jnp.shape(dropout_mask))}")
    fn = functools.partial(_branch, in_f, out_f, float(dropout), kind)
    if remat:
        fn = jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    return fn(x, A, B, lambda_d, lambda_b, dropout_mask if kind == "mask" else dropout_key)


def forward(x: jax.Array, W: jax.Array, bias: jax.Array | None, A: jax.Array, B: jax.Array,
            lambda_d: jax.Array, lambda_b: jax.Array, *, layout: str = "linear",
            dropout_mask: jax.Array | None = None, dropout: float = 0.0, dropout_key: jax.Array | None = None,
            remat: bool = True) -> jax.Array:
    """spec 3.2: y = x W0^T + bias + lambda_b * ((lambda_d * (dropout(x) A_l^T)) B_l^T); (..., out).
    ``dropout_key`` and ``remat``: see ``adapter_out``."""
    in_f, out_f = _in_out(W, layout)
    if jnp.shape(x)[-1] != in_f:
        raise ShapeError(f"x must have shape (..., {in_f}), got {tuple(jnp.shape(x))}")
    if bias is not None and jnp.shape(bias) != (out_f,):
        raise ShapeError(f"bias must have shape ({out_f},), got {tuple(jnp.shape(bias))}")
    y = _mm(x, (W.T if layout == "linear" else W).astype(x.dtype))  # (..., out)
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y + adapter_out(x, A, B, lambda_d, lambda_b, dropout_mask=dropout_mask, dropout=dropout,
                           dropout_key=dropout_key, remat=remat)


def delta_weight(A: jax.Array, B: jax.Array, lambda_d: jax.Array, lambda_b: jax.Array, in_features: int,
                 out_features: int, *, layout: str = "linear", dtype=jnp.float32) -> jax.Array:
    """spec 3.5: Delta W = (lambda_b * B_l) @ (lambda_d * A_l), (out, in); (in, out) for ``conv1d``."""
    if layout not in LAYOUTS:
        raise ShapeError(f"layout must be 'linear' or 'conv1d', got {layout!r}")
    A_l, B_l = _slices(A, B, lambda_d, lambda_b, in_features, out_features)
    lbB = lambda_b.astype(dtype)[:, None] * B_l.astype(dtype)  # (out, r)
    ldA = lambda_d.astype(dtype)[:, None] * A_l.astype(dtype)  # (r, in)
    return _mm(lbB, ldA) if layout == "linear" else _mm(ldA.T, lbB.T)  # (out, in) / (in, out)


def _wide(dtype) -> jnp.dtype:
    """The dtype Delta W is formed and added in: ``dtype`` promoted to binary32 at least (spec 3.6 SHOULD)."""
    return jnp.promote_types(dtype, jnp.float32)


def merge(W: jax.Array, A: jax.Array, B: jax.Array, lambda_d: jax.Array, lambda_b: jax.Array, *,
          layout: str = "linear") -> jax.Array:
    """spec 3.5: W0 + Delta W in W0's layout and dtype; Delta W formed and added in float32 or wider
    and rounded once (spec 3.6). Pure and jittable, so it cannot refuse: a value that overflows W0's
    dtype comes back infinite; ``vera_jax.nnx.merge_and_unload`` checks and refuses (spec 3.6 MUST)."""
    in_f, out_f = _in_out(W, layout)
    acc = _wide(W.dtype)
    dW = delta_weight(A, B, lambda_d, lambda_b, in_f, out_f, layout=layout, dtype=acc)
    return (W.astype(acc) + dW).astype(W.dtype)


def unmerge(W: jax.Array, A: jax.Array, B: jax.Array, lambda_d: jax.Array, lambda_b: jax.Array, *,
            layout: str = "linear") -> jax.Array:
    """spec 3.6: W - Delta W in W's layout and dtype, Delta W formed and subtracted in float32 or wider."""
    in_f, out_f = _in_out(W, layout)
    acc = _wide(W.dtype)
    dW = delta_weight(A, B, lambda_d, lambda_b, in_f, out_f, layout=layout, dtype=acc)
    return (W.astype(acc) - dW).astype(W.dtype)
