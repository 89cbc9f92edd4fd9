"""The VeRA adapter path as autograd functions (spec 3.2, 3.4).

Three ways to compute one layer, chosen per call by their multiply-adds (``path_costs``, ``choose_path``):

Factored (small r, or few rows N): y = base(x) + lambda_b * ((lambda_d * (x A_l^T)) B_l^T)
  ``project_in``  h = x A_l^T, saving nothing but the frozen A_l; backward dx = dh A_l.
    Layers that read the same x (query, key, value) share one h, so autograd sums their
    dh before one multiply by A_l.
  ``vera_delta``  out = lambda_b * v with v = (lambda_d * h) B_l^T; saves h and v only.
    du = (dY * lambda_b) B_l;  d lambda_b = sum_N dY * v;  d lambda_d = sum_N du * h;
    dh = du * lambda_d.   Per layer this keeps what PEFT's chain of ops keeps (h, v);
    per model less, since layers that read the same x keep one h between them.
  FLOPs, forward + backward: 2 N r (in + out) (the in-terms shared between layers).

Fused (large r): y = x (W0 + Delta W)^T + bias with Delta W = (lambda_b B_l)(lambda_d A_l)
  ``vera_linear``  one matmul with the merged weight; the base layer's dx is the fused
    dx. Keeps x (which the base layer keeps anyway) and the merged weight, no (N, r) h. With D = dY^T x (out, in) and E = D A_l^T (out, r):
    d lambda_b = (B_l * E) lambda_d,  d lambda_d = lambda_b^T (B_l * E).
  FLOPs beyond the base layer: 2 r in out + N in out.

Fused keeping h (training, r well below in and out, many rows: RoBERTa-base q/v at r=256):
  ``vera_linear_h``  the fused forward, and h = x A_l^T formed beside it without gradient (one per
    group of layers reading the same x). With P = dY^T h (out, r), the same product as E above
    reassociated (dY^T x A_l^T):  d lambda_b = (B_l * P) lambda_d,  d lambda_d = lambda_b^T (B_l * P);
    dx = dY (W0 + Delta W) as on the fused path. Keeps h (N, r) and nothing (N, in) or (N, out).
  FLOPs beyond the base layer: 2 r in out (Delta W in forward and again in backward) + N r in (h)
    + N r out (P); per RoBERTa-base q/v pair at r=256 and 1024 rows 1207M multiply-adds against the
    factored path's 1608M (PEFT's chain: 1608M, no h shared). ``keep_weight`` (the "activations"
    mode) keeps the merged weight instead of forming it again.

Minimal saving (``VeraLayer.save_for_backward = "minimal"``, the default; issue 25):
  ``vera_delta_min``  as ``vera_delta`` but keeps h only; v = (lambda_d * h) B_l^T is recomputed
    in backward (the same ops on the same values, so the same bits) for d lambda_b. Layers
    that share h keep one h between them. Mixed batches (per-row lambda_d (n, 1.., r) and
    lambda_b (n, 1.., out)) use the same function; with ``base`` it returns
    addcmul(base, v, lambda_b) in one pass, as the plain chain of ops did.
    FLOPs: + N r out per layer (the recomputed v).
  ``vera_linear_min``  as ``vera_linear`` but keeps x only (no merged weight): W0 + Delta W is
    formed again in backward for dx. FLOPs: + r in out per layer.
  ``vera_linear_h`` keeps h and forms the merged weight again in backward (+ r in out per layer).
  What is kept is then either h (N, r) or x (N, in) per group of layers that read the same x,
    whichever the chosen path needs; a frozen nn.Linear keeps neither (its mm saves x only
    when the weight needs a gradient), so one of the two is the floor for the vector gradients.
  Dropout (``dropout_min``): h is formed from the dropped x, so the vector gradients need no mask;
    dx needs it, and instead of the mask (a float per element of x in PyTorch's CPU dropout, a
    bool on CUDA) the generator's state before the draw is kept and the mask drawn again from it
    in backward (the same draw: the same mask, bit for bit). Mixed batches keep a bool mask.
"""
from __future__ import annotations

import torch


class _ProjectIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, A_l: torch.Tensor) -> torch.Tensor:  # x (..., in), A_l (r, in)
        ctx.save_for_backward(A_l)
        return x @ A_l.t()  # (..., r)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        (A_l,) = ctx.saved_tensors
        dx = dh @ A_l if ctx.needs_input_grad[0] else None  # (..., in)
        return dx, None


class _VeraDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, lambda_d: torch.Tensor, lambda_b: torch.Tensor,
                B_l: torch.Tensor) -> torch.Tensor:  # h (..., r), lambda_d (r), lambda_b (out), B_l (out, r)
        v = (h * lambda_d) @ B_l.t()  # (..., out)
        ctx.save_for_backward(h, v, lambda_d, lambda_b, B_l)
        return v * lambda_b

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, v, lambda_d, lambda_b, B_l = ctx.saved_tensors
        need_h, need_d, need_b = ctx.needs_input_grad[:3]
        out, r = dy.shape[-1], h.shape[-1]
        d_lb = (dy * v).reshape(-1, out).sum(0) if need_b else None  # (out)
        dh = d_ld = None
        if need_h or need_d:
            du = (dy * lambda_b) @ B_l  # (..., r)
            d_ld = (du * h).reshape(-1, r).sum(0) if need_d else None  # (r)
            dh = du * lambda_d if need_h else None  # (..., r)
        return dh, d_ld, d_lb, None


class _VeraDeltaMin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, lambda_d, lambda_b, B_l, base, rows):
        # h (..., r); lambda_d (r) or (n, 1.., r); lambda_b (out) or (n, 1.., out); B_l (out, r);
        # base None or (N, ..., out); rows None or (n,): the rows of base that h's rows are added to
        v = (h * lambda_d) @ B_l.t()  # (..., out)
        ctx.save_for_backward(h, lambda_d, lambda_b, B_l, rows)
        ctx.per_row = lambda_b.dim() > 1
        if base is None:
            return v * lambda_b
        if rows is not None:  # as base.index_add(0, rows, (v * lambda_b).to(base.dtype)), which keeps its source
            return base.index_add(0, rows, (v * lambda_b).to(base.dtype))
        return torch.addcmul(base, v, lambda_b)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, lambda_d, lambda_b, B_l, rows = ctx.saved_tensors
        need_h, need_d, need_b, _, need_base, _ = ctx.needs_input_grad
        d_base = dy if need_base else None
        if rows is not None:
            dy = dy.index_select(0, rows).to(h.dtype)  # (n, ..., out)
        out, r = dy.shape[-1], h.shape[-1]
        d_lb = dh = d_ld = None
        if need_b:
            v = (h * lambda_d) @ B_l.t()  # (..., out): the forward's v, bit for bit
            d_lb = (dy * v).sum_to_size(lambda_b.shape) if ctx.per_row else (dy * v).reshape(-1, out).sum(0)
            del v
        if need_h or need_d:
            du = (dy * lambda_b) @ B_l  # (..., r)
            if need_d:
                d_ld = (du * h).sum_to_size(lambda_d.shape) if ctx.per_row else (du * h).reshape(-1, r).sum(0)
            dh = du * lambda_d if need_h else None  # (..., r)
        return dh, d_ld, d_lb, None, d_base, None


def _merged_weight(W0, lambda_d, lambda_b, A_l, B_l, conv1d: bool) -> torch.Tensor:
    """(out, in) W0 + Delta W, as the fused forward uses it (the same ops in forward and recompute)."""
    dW = (lambda_b[:, None] * B_l) @ (lambda_d[:, None] * A_l)  # (out, in)
    W = W0 + (dW.t() if conv1d else dW).to(W0.dtype)
    return W.t() if conv1d else W


def _vector_grads(dy: torch.Tensor, kept: torch.Tensor, A_l: torch.Tensor | None, lambda_d, lambda_b, B_l):
    """(d lambda_d, d lambda_b) of the fused paths from E = dY^T x A_l^T (out, r): formed as
    (dY^T x) A_l^T when ``kept`` is x (``A_l`` given), as dY^T h when ``kept`` is h (``A_l`` None)."""
    dy2 = dy.reshape(-1, dy.shape[-1]).t().to(B_l.dtype)  # (out, N)
    if A_l is None:
        E = dy2 @ kept.reshape(-1, kept.shape[-1])  # (out, r)
    else:
        D = dy2 @ kept.reshape(-1, kept.shape[-1]).to(B_l.dtype)  # (out, in)
        E = D @ A_l.t()  # (out, r)
        del D
    BE = B_l * E  # (out, r)
    return lambda_b @ BE, BE @ lambda_d  # (r), (out)


class _VeraLinear(torch.autograd.Function):
    """The fused paths: y = x (W0 + Delta W)^T + bias, keeping x (``kept`` is x) or h (``kept_h``:
    ``kept`` is h = x A_l^T, computed without gradient), and the merged weight (``keep_weight``) or W0."""

    @staticmethod
    def forward(ctx, x, W0, bias, lambda_d, lambda_b, A_l, B_l, kept, kept_h: bool, conv1d: bool, keep_weight: bool):
        # x (..., in); W0 (out, in) or (in, out) for conv1d; A_l (r, in); B_l (out, r); kept (..., in) or (..., r)
        W_lin = _merged_weight(W0, lambda_d, lambda_b, A_l, B_l, conv1d)  # (out, in)
        y = torch.nn.functional.linear(x, W_lin, bias)
        ctx.save_for_backward(kept, W_lin if keep_weight else W0, lambda_d, lambda_b, A_l, B_l)
        ctx.conv1d, ctx.keep_weight, ctx.kept_h = conv1d, keep_weight, kept_h
        return y

    @staticmethod
    def backward(ctx, dy):
        kept, W, lambda_d, lambda_b, A_l, B_l = ctx.saved_tensors
        dx = d_ld = d_lb = None
        if ctx.needs_input_grad[0]:
            W_lin = W if ctx.keep_weight else _merged_weight(W, lambda_d, lambda_b, A_l, B_l, ctx.conv1d)
            dx = dy @ W_lin  # (..., in)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            d_ld, d_lb = _vector_grads(dy, kept, None if ctx.kept_h else A_l, lambda_d, lambda_b, B_l)
        return dx, None, None, d_ld, d_lb, None, None, None, None, None, None


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        cuda = x.device.type == "cuda"
        state = torch.cuda.get_rng_state(x.device) if cuda else torch.get_rng_state()  # uint8, CPU
        ctx.save_for_backward(state)
        # the function in effect now draws again in backward (a test harness may have replaced it by
        # one that applies a fixed mask: that one then applies the same mask again)
        ctx.p, ctx.device, ctx.fn = p, x.device, torch.nn.functional.dropout
        return ctx.fn(x, p, True)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (state,) = ctx.saved_tensors
        cuda = ctx.device.type == "cuda"
        with torch.random.fork_rng(devices=[ctx.device] if cuda else []):  # the caller's stream is not moved
            if cuda:
                torch.cuda.set_rng_state(state, ctx.device)
            else:
                torch.set_rng_state(state)
            noise = ctx.fn(torch.ones_like(dy), ctx.p, True)  # mask / (1 - p), as drawn
        return dy * noise, None


def dropout_min(x: torch.Tensor, p: float) -> torch.Tensor:
    """``nn.functional.dropout(x, p, training=True)`` (the same draw, the same values) keeping the
    generator state instead of the mask; the backward draws the mask again."""
    return _Dropout.apply(x, p)


def project_in(x: torch.Tensor, A_l: torch.Tensor) -> torch.Tensor:
    """h = x A_l^T with a backward that keeps only A_l."""
    return _ProjectIn.apply(x, A_l)


def vera_delta(h: torch.Tensor, lambda_d: torch.Tensor, lambda_b: torch.Tensor, B_l: torch.Tensor) -> torch.Tensor:
    """lambda_b * ((lambda_d * h) B_l^T), keeping h and v for the backward of spec 3.4."""
    return _VeraDelta.apply(h, lambda_d, lambda_b, B_l)


def vera_linear(x, W0, bias, lambda_d, lambda_b, A_l, B_l, conv1d: bool = False) -> torch.Tensor:
    """x (W0 + Delta W)^T + bias in one matmul, with the vector gradients of spec 3.4; keeps x and the
    merged weight."""
    return _VeraLinear.apply(x, W0, bias, lambda_d, lambda_b, A_l, B_l, x, False, conv1d, True)


def vera_delta_min(h: torch.Tensor, lambda_d: torch.Tensor, lambda_b: torch.Tensor, B_l: torch.Tensor,
                   base: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """lambda_b * ((lambda_d * h) B_l^T), added to ``base`` (at ``rows`` of dim 0 when given), keeping
    h only: v is recomputed in backward."""
    return _VeraDeltaMin.apply(h, lambda_d, lambda_b, B_l, base, rows)


def vera_linear_min(x, W0, bias, lambda_d, lambda_b, A_l, B_l, conv1d: bool = False) -> torch.Tensor:
    """``vera_linear`` keeping x only: the merged weight is formed again in backward."""
    return _VeraLinear.apply(x, W0, bias, lambda_d, lambda_b, A_l, B_l, x, False, conv1d, False)


def vera_linear_h(x, W0, bias, lambda_d, lambda_b, A_l, B_l, h, conv1d: bool = False,
                  keep_weight: bool = False) -> torch.Tensor:
    """``vera_linear`` keeping h = x A_l^T (given, computed without gradient; shared by the layers that
    read the same x) instead of x: the vector gradients come from P = dY^T h, dx from the merged weight,
    formed again in backward unless ``keep_weight``."""
    return _VeraLinear.apply(x, W0, bias, lambda_d, lambda_b, A_l, B_l, h, True, conv1d, keep_weight)


def saved_tensor_bytes(fn, resident=()) -> tuple[int, object]:
    """(bytes, fn()): the unique storages autograd saves for backward while ``fn`` runs, not counting
    the storages of ``resident`` tensors (parameters, buffers, cached projections: memory that
    exists anyway). Deterministic on CPU; the bench and the memory tests both count with this."""
    skip = {t.untyped_storage().data_ptr() for t in resident}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s  # held until the count is done: no address is reused meanwhile
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(s.nbytes() for s in seen.values()), out


def path_costs(rows: int, r: int, in_f: int, out_f: int, training: bool, minimal: bool = False) -> dict[str, int]:
    """Multiply-adds of each path for one layer (the module docstring's counts; the shared h of layers
    reading the same x counted in full). ``minimal``: the recomputing functions' costs."""
    if not training:
        return {"factored": rows * r * (in_f + out_f), "fused": r * in_f * out_f}
    again = 1 if minimal else 0  # Delta W (fused paths) or v (factored) formed again in backward
    return {"factored": rows * r * (2 * in_f + (2 + again) * out_f),
            "fused": (2 + again) * r * in_f * out_f + rows * in_f * out_f,
            "fused_h": (1 + again) * r * in_f * out_f + rows * r * (in_f + out_f)}


def choose_path(rows: int, r: int, in_f: int, out_f: int, training: bool, minimal: bool = False,
                fused_only: bool = False) -> str:
    """The path of fewest multiply-adds (``path_costs``): 'factored', 'fused' (keeps x; the only fused
    one without training) or 'fused_h' (keeps h); ``fused_only``: one of the fused ones. Ties go to
    the factored path, then to 'fused'."""
    costs = path_costs(rows, r, in_f, out_f, training, minimal)
    if fused_only:
        costs.pop("factored")
    return min(costs, key=lambda k: (costs[k], list(costs).index(k)))
